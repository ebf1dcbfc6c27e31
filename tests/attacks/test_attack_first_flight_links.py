"""The admission's first-flight deadline against an honest guest that is slow for a reason the
protocol gives it (runtime/admission.py, runtime/driver.py; docs/security.md, "A pairing host's
pending links"): session 13 made the driver end a run on a link's own ``PairingTimeout`` and
made ``Admitted.recv_ready`` say nothing until the first message, so the 5 s first flight now
holds over every link.  Over BLE, a guest pairing with ``clear`` turns on LE Secure Connections
*after* the host admitted its link (the link is admitted when the guest subscribes to TX) and
*before* its first message (``open_session``); the BLE pairing's own deadline is the link's
``encrypt_timeout``, 15 s, during which a person may be asked to confirm (bumble asks the
host's ``PairingDelegate.confirm``).

Played with ``run_host`` and ``run_join`` on bumble virtual radios.
"""

from __future__ import annotations

import asyncio

import pytest
from bumble.pairing import PairingDelegate

from pairkit.keystore import Keystore
from pairkit.pairing.negotiation import Method
from tests.ble_harness import World, eventually, george, paul, world  # noqa: F401

#: longer than the admission's 5 s first flight, well inside the link's 15 s encrypt_timeout
CONFIRM_TIME = 6.0


class SlowConfirmer(PairingDelegate):
    """The host's owner, asked by the BLE stack to confirm a pairing: says yes after
    :data:`CONFIRM_TIME` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def confirm(self, auto: bool = False) -> bool:
        self.asked += 1
        await asyncio.sleep(CONFIRM_TIME)
        return True


@pytest.mark.xfail(
    strict=True,
    reason="finding (atk13): the first flight (5 s) counts from admission, which over BLE is "
    "before the guest's LE pairing (up to encrypt_timeout, 15 s); since session 13 the driver "
    "ends the run on it, so a 'clear' guest whose BLE pairing a person confirmed in 6 s is "
    "dropped (before: served, the first message came within the pairing's 30 s step)",
)
async def test_a_clear_guest_whose_ble_pairing_is_confirmed_slowly_still_pairs(
    world: World, paul: Keystore, george: Keystore  # noqa: F811
) -> None:
    confirmer = SlowConfirmer()
    host = await world.start_host(
        paul, frozenset({Method.CLEAR, Method.RESUME}), prefer_l2cap=False,
        device={"pairing_delegate": confirmer},
    )
    guest = await world.central("bumble", prefer_l2cap=False)
    try:
        session, _ = await world.join(george, guest, host, method=Method.CLEAR)
    finally:
        # (the scenario is the one claimed: the host's person was asked, and took the time)
        assert confirmer.asked >= 1
    assert session.method is Method.CLEAR
    await eventually(lambda: len(host.results) == 1)
