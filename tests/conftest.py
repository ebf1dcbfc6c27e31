"""Plugins for pairkit's own tests.

pairkit's pytest plugin (:mod:`transports.pytest_plugin`, the ``virtual_ble`` fixture) is
registered by its ``pytest11`` entry point once pairkit is installed; a checkout whose install
predates the entry point gets it here, under the same name, so it is never registered twice.
"""

from __future__ import annotations

import signal

import pytest
from hypothesis import HealthCheck, settings

# tests/cli_helpers.py: the fixtures of the tests that run the pairkit command (templates, lab);
# tests/ble_harness.py: the fixtures of the BLE tests (world, paul, george, tv).
pytest_plugins = ["pytester", "tests.cli_helpers", "tests.ble_harness"]

# CI runs on a shared 2-core machine: a per-example deadline would fail tests on load, not on
# behaviour (pytest-timeout bounds every test instead), and "too slow" says the same.
settings.register_profile(
    "pairkit", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("pairkit")


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`cmd &` without job control: CI runners, nohup) with
    # SIGINT ignored, and an ignored signal stays ignored across exec: every pairkit process a
    # test starts would then ignore the Ctrl-C the tests send it, and Python installs no
    # KeyboardInterrupt handler.  Handled here, it is back to the default in each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not config.pluginmanager.has_plugin("pairkit"):
        from pairkit.transports import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "pairkit")
    # pytest-xdist (3.8 and later: pyproject.toml) hands out the files with the most tests
    # first, which undid _SLOW_FIRST: the slowest files have a few tests each and came last (a
    # run ended with one worker alone on tests/test_hw_rehearsal.py for 45 s); 3.8 lets it be
    # turned off.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


#: test files that take longest (processes, radios, key servers, databases), slowest first, as
#: measured on the 2-core CI machine (``--durations`` and per-file sums, session 17):
#: ``make test`` hands whole files to two workers (``-n 2 --dist loadfile``) in collection
#: order, so these start first and the run does not end with one worker alone on one of them
_SLOW_FIRST = (
    "tests/test_pn_cli.py",
    "tests/test_cli.py",
    "tests/attacks/test_attack_privacy_prekey_digest.py",  # session 23: 81 s in 4 tests
    "tests/test_radio_lost_cli.py",
    "tests/attacks/test_attack_pn_setup_retry.py",
    "tests/test_readme_commands.py",
    "tests/test_ble_moved.py",  # session 23: 58 s in 5 tests
    "tests/test_machine_fuzz.py",
    "tests/attacks/test_attack_pn_id_scope.py",
    "tests/test_hw_rehearsal.py",
    "tests/attacks/test_attack_quiet_day_search.py",
    "tests/attacks/test_attack_compare_places.py",
    "tests/test_demo.py",
    "tests/attacks/test_attack_relay_and_bitflips.py",
    "tests/test_exit_codes.py",
    "tests/attacks/test_attack_compare_turns.py",
    "tests/test_wire.py",
    "tests/attacks/test_attack_keystore_growth.py",
    "tests/test_noise_vectors.py",
    "tests/test_groups_cli.py",
    "tests/test_noise.py",
    "tests/attacks/test_attack_question_stops.py",
    "tests/attacks/test_attack_pn_claims.py",
    "tests/test_ttp_postgres.py",
    "tests/test_bench_concurrent_smoke.py",
    "tests/soak/",
    "tests/test_prompts.py",
    "tests/attacks/test_attack_forget_reaches_host.py",
    "tests/attacks/test_attack_lockout_restart.py",
    "tests/test_cli_files.py",
    "tests/test_radio_cli.py",
    "tests/attacks/test_attack_api_host_lifecycle.py",
    "tests/test_bench_ble_smoke.py",
    "tests/test_groups_agent.py",
)


def _rank(nodeid: str) -> int:
    path = nodeid.split("::", 1)[0]
    for i, prefix in enumerate(_SLOW_FIRST):
        if path.startswith(prefix):
            return i
    return len(_SLOW_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: a file's own order is kept
