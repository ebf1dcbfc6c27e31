"""Real-radio tests: skipped unless devices are named in the environment.

Run them on a laptop with USB dongles or on a Raspberry Pi, for example::

    PAIRKIT_HW_HOST=bumble:usb:0 PAIRKIT_HW_GUEST=bumble:usb:1 make test
    PAIRKIT_HW_HOST=bumble:usb:0a12:0001 PAIRKIT_HW_GUEST=bleak make test   # guest on the OS stack
    PAIRKIT_HW_HOST=bumble:hci-socket:0 PAIRKIT_HW_GUEST=bleak:bumble:usb:0 make test

``PAIRKIT_HW_HOST`` is the transport the host (peripheral) uses and ``PAIRKIT_HW_GUEST`` the
guest's (central): ``bumble:...``, ``bleak`` (the OS stack: BlueZ, CoreBluetooth, WinRT) or
``bleak:bumble:...``.  With two radios on one machine, give both, and name a dongle by its IDs
(``pairkit radio --list``): ``usb:0`` is often the laptop's built-in controller, the one BlueZ
(``bleak``) needs.  With one radio per machine,
run ``pairkit host`` on the other machine (the Raspberry Pi of README.md, "Real radios") and
give ``PAIRKIT_HW_PEER`` (its BLE address, from ``pairkit discover``) and ``PAIRKIT_HW_PIN``
(the PIN it shows) instead of ``PAIRKIT_HW_HOST``; ``PAIRKIT_HW_FILE`` names a file it shares
to fetch.  See README.md, "Real radios".

Each test needs some of these; a test whose variables are unset is skipped with a reason that
says which to set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # hw-tests use tests/ helpers (conformance checks, keystores)
    sys.path.insert(0, str(ROOT))

HOW = (
    "no radio named: set PAIRKIT_HW_HOST and PAIRKIT_HW_GUEST to two controllers (e.g. two "
    "dongles as bumble:usb:VID:PID, or bumble:hci-socket:0 and bleak:hci1; 'pairkit radio "
    "--list' names them) to run the real-radio tests"
)
HOW_PEER = (
    "no remote host named: run 'pairkit host -t bumble:hci-socket:0 --method pin --visible 600 "
    "--yes --share DIR' on the other machine (no one is at its keyboard to answer), then set "
    "PAIRKIT_HW_GUEST (e.g. bleak), PAIRKIT_HW_PEER (its address from 'pairkit discover') and "
    "PAIRKIT_HW_PIN (the PIN it shows); PAIRKIT_HW_FILE names a file in DIR to fetch"
)

#: fixture name -> (environment variables it needs, the skip reason when one is unset)
NEEDS = {
    "hw_host": (("PAIRKIT_HW_HOST", "PAIRKIT_HW_GUEST"), HOW),
    "hw_guest": (("PAIRKIT_HW_GUEST",), HOW),
    "hw_peer": (("PAIRKIT_HW_GUEST", "PAIRKIT_HW_PEER", "PAIRKIT_HW_PIN"), HOW_PEER),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "hw-tests" not in str(item.fspath):
            continue
        names = getattr(item, "fixturenames", ())
        if "hw_peer" in names:
            needed = [NEEDS["hw_peer"]]  # the most specific reason: a host on another machine
        else:
            needed = [NEEDS[n] for n in names if n in NEEDS] or [NEEDS["hw_host"]]
        for variables, reason in needed:
            if not all(os.environ.get(v) for v in variables):
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.fixture
def hw_host() -> str:
    return os.environ["PAIRKIT_HW_HOST"]


@pytest.fixture
def hw_guest() -> str:
    return os.environ["PAIRKIT_HW_GUEST"]


@pytest.fixture
def hw_peer() -> tuple[str, str]:
    """The remote host's BLE address and the PIN it shows."""
    return os.environ["PAIRKIT_HW_PEER"].upper(), os.environ["PAIRKIT_HW_PIN"]
