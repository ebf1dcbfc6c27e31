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
import contextlib
from typing import Any

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


@pytest.mark.parametrize("transport", ["tcp", "loopback"])
async def test_a_stranger_who_starts_a_message_and_stops_is_dropped_at_the_first_flight(
    transport: str,
) -> None:
    """Over TCP on loopback (and the in-process loopback), the host's pairing driven as
    production drives it (MessagePipe, drive) over an admitted link with a 0.3 s first flight;
    the stranger sends one link message: the first fragment of a 1,000-byte pairkit message
    (docs/protocol.md framing), then nothing.  Its pairing must end with the first flight's
    PairingTimeout, not the step's.  Before (attack review atk13, low; not new in session 13),
    the first flight was kept until the link's first *fragment*: the stranger had 'spoken' and
    the host's pairing waited the machine's 30 s step."""
    import dataclasses

    from pairkit.admission import AdmissionLimits
    from pairkit.pairing.errors import PairingTimeout
    from pairkit.pairing.framing import fragment
    from tests.admission_harness import driven_host

    limits = dataclasses.replace(AdmissionLimits(), first_flight=0.3)
    async with driven_host(limits, transport) as host:
        pieces = fragment(bytes(1000), 64)
        assert len(pieces) > 1
        await host.stranger.send(pieces[0])
        # 10 first flights: ample for the first one, a tenth of the pairing's own step (30 s)
        error = await asyncio.wait_for(host.ended.get(), 10 * limits.first_flight)
        assert isinstance(error, PairingTimeout), repr(error)
        assert "of connecting" in str(error)


class Dribbling:
    """A guest's end of a real link that sends as a slow radio of the smallest MTU would: 20
    bytes at a time, a pause before each (the link itself, and the host, are real)."""

    mtu = 20

    def __init__(self, link: Any, pause: float) -> None:
        self._link, self._pause = link, pause
        #: every link message sent, in order
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        await asyncio.sleep(self._pause)
        self.sent.append(data)
        await self._link.send(data)

    async def recv(self) -> bytes:
        return await self._link.recv()  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["tcp", "loopback"])
async def test_a_guest_whose_first_message_comes_in_slow_fragments_within_the_first_flight_pairs(
    transport: str,
) -> None:
    """The honest case beside the stranger's: a guest whose first message is cut into several
    fragments that arrive one by one, all within the first flight (2 s; 0.1 s apart here), then
    the rest of its pairing at the same pace, beyond the first flight.  The whole PIN pairing
    completes on both sides."""
    from pairkit.admission import AdmissionLimits
    from pairkit.driver import MessagePipe, drive
    from pairkit.pairing.framing import FLAG_LAST
    from pairkit.pairing.methods import (
        GuestPairing,
        HostPairing,
        HostState,
        LocalIdentity,
        PairingConfig,
    )
    from tests.admission_harness import driven_host

    pin = "482913"

    def host_machine() -> HostPairing:
        state = HostState()
        state.set_pin(pin)
        return HostPairing(PairingConfig(), LocalIdentity.generate("host"), state)

    limits, pause = AdmissionLimits(first_flight=2.0), 0.1
    async with driven_host(limits, transport, machine=host_machine) as host:
        guest = GuestPairing(PairingConfig(), LocalIdentity.generate("guest"),
                             method=Method.PIN, pin=pin)
        guest.start(asyncio.get_running_loop().time())
        link = Dribbling(host.stranger, pause)
        await asyncio.wait_for(drive(guest, MessagePipe(link, guest=True)), 20)
        assert await asyncio.wait_for(host.ended.get(), 5) is None
        assert guest.session is not None
    # (the scenario is the one claimed: the first message took several fragments, the whole
    # pairing longer than a first flight)
    first = next(i for i, piece in enumerate(link.sent) if piece[0] & FLAG_LAST) + 1
    assert first > 1 and len(link.sent) * pause > limits.first_flight


async def test_a_guest_whose_first_message_comes_in_gatt_fragments_pairs(
    world: World, paul: Keystore, george: Keystore  # noqa: F811
) -> None:
    """The same over BLE GATT at the smallest MTU (20 bytes: no MTU exchange above 23), where
    every message of more than 18 bytes comes in several writes: the PIN pairing completes."""
    host = await world.start_host(
        paul, frozenset({Method.PIN, Method.RESUME}), prefer_l2cap=False,
        device={"att_mtu": 23},
    )
    guest = await world.device(prefer_l2cap=False, att_mtu=23)
    session, _ = await world.join(george, guest, host, method=Method.PIN)
    assert session.method is Method.PIN
    await eventually(lambda: len(host.results) == 1)


@pytest.mark.parametrize("prefer_l2cap", [False, True], ids=["gatt", "l2cap"])
async def test_a_ble_stranger_who_starts_a_message_and_stops_is_dropped_at_the_first_flight(
    world: World, paul: Keystore, prefer_l2cap: bool  # noqa: F811
) -> None:
    """``run_host`` over BLE (GATT with the smallest MTU, 20 bytes, or L2CAP) with a 0.3 s first
    flight; a stranger opens a link and sends the first fragment of a message three MTUs long, then
    nothing.  The host must drop its connection at the first flight, not keep it for the
    pairing's 30 s step (as it did before: the first fragment met the first flight)."""
    from pairkit.admission import AdmissionLimits
    from pairkit.pairing.framing import fragment

    limits = AdmissionLimits(first_flight=0.3)
    host = await world.start_host(
        paul, frozenset({Method.PIN, Method.RESUME}), prefer_l2cap=prefer_l2cap,
        admission=limits, device={"att_mtu": 23},
    )
    stranger = await world.device(prefer_l2cap=prefer_l2cap, att_mtu=23)
    link = await stranger.connect(host.address, timeout=5)
    assert link.kind == ("l2cap" if prefer_l2cap else "gatt")
    pieces = fragment(bytes(3 * link.mtu), link.mtu)
    assert len(pieces) > 1
    await link.send(pieces[0])
    assert len(host.transport.device.connections) == 1
    # 10 first flights: ample for the first one, a tenth of the pairing's own step (30 s)
    await eventually(lambda: not host.transport.device.connections, 10 * limits.first_flight)


async def test_a_ble_connection_that_never_opens_a_link_is_dropped_at_the_first_flight(
    world: World, paul: Keystore  # noqa: F811
) -> None:
    """``run_host`` over BLE with a 0.3 s first flight; a stranger's device connects (LE, at
    the controller) and does nothing more.  The host must drop that connection as it drops a
    link that says nothing."""
    from pairkit.admission import AdmissionLimits

    limits = AdmissionLimits(first_flight=0.3)
    host = await world.start_host(
        paul, frozenset({Method.PIN, Method.RESUME}), prefer_l2cap=False, admission=limits
    )
    stranger = await world.device(prefer_l2cap=False)
    stranger.device.remove_all_listeners(stranger.device.EVENT_CONNECTION)  # (its own drop)
    connection = await asyncio.wait_for(stranger.device.connect(host.address), 5)
    assert connection.handle is not None
    assert len(host.transport.device.connections) == 1
    # 10 first flights: ample for the first one
    await eventually(lambda: not host.transport.device.connections, 10 * limits.first_flight)


class NeverConfirms(PairingDelegate):
    """A host's LE pairing that never completes: the person asked never answers (or a
    stranger started the pairing and stalls it)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def confirm(self, auto: bool = False) -> bool:
        self.asked += 1
        await asyncio.sleep(3600)
        return False


async def test_an_le_pairing_that_never_ends_holds_the_first_flight_for_a_bounded_time(
    world: World, paul: Keystore, george: Keystore  # noqa: F811
) -> None:
    """The first flight gives way to an LE pairing on the link (the slow 'clear' guest
    above), but only for the link's ``encrypt_timeout`` and one more first flight: a stranger
    who subscribes, starts an LE pairing and stalls it is dropped then, its connection closed,
    not kept for the pairing's 30 s step.  (First flight 0.3 s, encrypt_timeout 1 s: dropped
    by 1.6 s after connecting; the test allows 10 s.)"""
    from pairkit.admission import AdmissionLimits

    stall = NeverConfirms()
    host = await world.start_host(
        paul, frozenset({Method.CLEAR, Method.RESUME}), prefer_l2cap=False,
        device={"pairing_delegate": stall, "encrypt_timeout": 1.0},
        admission=AdmissionLimits(first_flight=0.3),
    )
    guest = await world.central("bumble", prefer_l2cap=False)
    joining = asyncio.ensure_future(world.join(george, guest, host, method=Method.CLEAR))
    try:
        await eventually(lambda: stall.asked >= 1, 10)
        await eventually(lambda: not host.transport.device.connections, 10)
    finally:
        joining.cancel()
        with contextlib.suppress(BaseException):
            await joining
    assert host.results == [] or all("session" not in r for r in host.results)
