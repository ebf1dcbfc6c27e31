"""Plugins for pairkit's own tests.

pairkit's pytest plugin (:mod:`transports.pytest_plugin`, the ``virtual_ble`` fixture) is
registered by its ``pytest11`` entry point once pairkit is installed; a checkout whose install
predates the entry point gets it here, under the same name, so it is never registered twice.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("pairkit"):
        from transports import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "pairkit")
