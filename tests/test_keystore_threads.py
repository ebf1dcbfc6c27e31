"""Keystores opened from several threads at once (a library user's worker threads, the group
demo's ``asyncio.to_thread``): every open must end.

With cryptography 50.0.2 two threads that derive Argon2id with more than one lane at the same
time never return (found in session 17: 4 lanes and 2 threads hang; 1 thread with 4 lanes, or
2 threads with 1 lane, end in milliseconds).  pairkit's keystores use 4 lanes by default.  The
two opens run in a child process, killed at its deadline, so a hang leaves nothing behind in
the test run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pairkit.keystore import Argon2Params, Keystore

PIN = "135790"
#: the default's lanes, at a memory cost small enough for a test
FOUR_LANES = Argon2Params(memory_kib=8 * 1024, iterations=1, lanes=4)

TWO_THREADS = """
import sys, threading
from pairkit.keystore import Keystore
start = threading.Barrier(2)
names = {}
def open_one(i):
    start.wait()
    names[i] = Keystore.open(sys.argv[1 + i], sys.argv[3]).name
threads = [threading.Thread(target=open_one, args=(i,)) for i in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(names[0], names[1])
"""


@pytest.mark.xfail(strict=True, reason=(
    "session 17 (medium, liveness; found by helper citime, not fixed): two threads opening "
    "keystores at 4 lanes at once never return (cryptography 50.0.2's Argon2id); a fix needs "
    "the derivations made one at a time, and pairing/ may not take a lock (tests/test_layers.py)"))
def test_keystores_opened_by_two_threads_at_once_both_open(tmp_path: Path) -> None:
    paths = []
    for name in ("Paul", "George"):
        path = tmp_path / f"{name}.pk"
        Keystore.create(path, PIN, name=name, kdf=FOUR_LANES).save()
        paths.append(str(path))
    try:
        done = subprocess.run(
            [sys.executable, "-c", TWO_THREADS, *paths, PIN],
            capture_output=True, text=True, timeout=15,  # each open takes milliseconds
        )
    except subprocess.TimeoutExpired:
        pytest.fail("two keystore opens at once never returned")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Paul", "George"]
