"""Real-radio tests: skipped unless devices are named in the environment.

Run them on a laptop with a USB dongle or on a Raspberry Pi, for example::

    PAIRKIT_HW_HOST=bumble:usb:0 PAIRKIT_HW_GUEST=bumble:usb:1 make test
    PAIRKIT_HW_HOST=bumble:hci-socket:0 PAIRKIT_HW_GUEST=bleak make test

``PAIRKIT_HW_HOST`` is the transport the host (peripheral) uses and ``PAIRKIT_HW_GUEST`` the
guest's (central).  With two radios on one machine, give both; with one radio per machine, run
the host side with ``pairkit host`` on the other machine and give ``PAIRKIT_HW_PEER`` (its BLE
address) instead of ``PAIRKIT_HW_HOST``.  See README.md, "Real radios".
"""

from __future__ import annotations

import os

import pytest

HOW = (
    "no radio named: set PAIRKIT_HW_HOST and PAIRKIT_HW_GUEST (e.g. bumble:usb:0 and "
    "bumble:usb:1, or bumble:hci-socket:0 and bleak) to run the real-radio tests"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PAIRKIT_HW_HOST") and os.environ.get("PAIRKIT_HW_GUEST"):
        return
    skip = pytest.mark.skip(reason=HOW)
    for item in items:
        if "hw-tests" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def hw_host() -> str:
    return os.environ["PAIRKIT_HW_HOST"]


@pytest.fixture
def hw_guest() -> str:
    return os.environ["PAIRKIT_HW_GUEST"]
