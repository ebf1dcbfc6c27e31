"""Plugins for pairkit's own tests.

pairkit's pytest plugin (:mod:`transports.pytest_plugin`, the ``virtual_ble`` fixture) is
registered by its ``pytest11`` entry point once pairkit is installed; a checkout whose install
predates the entry point gets it here, under the same name, so it is never registered twice.
"""

from __future__ import annotations

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
    if not config.pluginmanager.has_plugin("pairkit"):
        from pairkit.transports import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "pairkit")
