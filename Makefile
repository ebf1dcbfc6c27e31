# Two commands on a fresh machine with Python 3.11 and make: `make demo`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-deps fuzz lint bench clean venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,qr,postgres]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pairkit demo

# three workers on CI's 2 cores, one test file each at a time: most tests wait on processes,
# links and their deadlines, not on the CPU (with two workers the machine's CPU was busy 25 to
# 50% of the time, session 21), so a third keeps the cores busier and the run within CI's 20
# minutes.  PAIRKIT_TEST_WORKERS sets another number.  With real radios (hw-tests/,
# PAIRKIT_HW_HOST set) one worker: two test files must not share the dongles.
WORKERS := $(if $(PAIRKIT_HW_HOST),0,$(or $(PAIRKIT_TEST_WORKERS),3))

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadfile

# both ends of every dependency range (a few minutes; see .ci/deps-matrix)
test-deps:
	$(PYTHON) .ci/deps-matrix

# the decoders fuzzed for a while (not part of make test); a crash found becomes a file in
# tests/fuzz_corpus/ (see its README)
fuzz: $(STAMP)
	PAIRKIT_FUZZ_EXAMPLES=$${PAIRKIT_FUZZ_EXAMPLES:-200000} $(VENV)/bin/python -m pytest -q \
	  -p no:cacheprovider tests/test_fuzz_corpus.py

bench: $(STAMP)
	$(VENV)/bin/python bench/startup.py
	$(VENV)/bin/python bench/handshake.py
	$(VENV)/bin/python bench/ble.py
	$(VENV)/bin/python bench/ble_bleak.py
	$(VENV)/bin/python bench/ble_guests.py
	$(VENV)/bin/python bench/transfer.py
	$(VENV)/bin/python bench/ttp.py
	$(VENV)/bin/python bench/groupkeys.py
	$(VENV)/bin/python bench/concurrent_pairings.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
