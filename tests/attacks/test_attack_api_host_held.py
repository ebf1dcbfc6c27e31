"""Links that reach the library host while no ``accept()`` waits (runtime/api.py ``Host``;
session 15, helper hostq, doubt 2).

The host serves no link while no ``accept()`` waits (its application did not ask for a guest).
Before, it did not take them from the listener either (``_WhileWanted``): one link was held,
unserved, with no first flight, until the next ``accept()``, and every other one waited in the
transport: over TCP the listener accepts each connection itself and queues up to 1024 of them,
each an open socket, with no deadline and no limit per address; over BLE a link opened waits
in the accept queue, holding one of the controller's few connections.  ``pairkit host`` takes
every link at once under its admission (per address, at most pending, the first flight).

Here a stranger's links while no ``accept()`` waits must be held to the same admission: a
silent one dropped at the first flight, counted from its arrival; and a guest that spoke
still pairs with the next ``accept()``; nothing is left past ``Host.close()``.  Played over
TCP on 127.0.0.1 and bumble virtual controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pairkit
from pairkit.admission import AdmissionLimits
from pairkit.keystore import Argon2Params
from pairkit.pairing.errors import LinkClosedError, PairingError, PairingTimeout
from pairkit.transports.tcp import tcp_connect
from tests.ble_harness import World, eventually, world  # noqa: F401

#: a short first flight, so that the tests' bounds are many first flights
FIRST_FLIGHT = 0.3


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


class Counts(pairkit.Agree):
    """The owner: lets guests in, and counts every question and event."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def allow_join(self, q: Any) -> Any:
        self.asked += 1
        return await super().allow_join(q)


async def ended(link: Any, within: float) -> bool:
    """Whether the host ended ``link`` (closed it, after "busy" or not) within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            while True:
                await link.recv()  # an Abort{busy} first, for a link refused
    except TimeoutError:
        return False
    except (LinkClosedError, PairingError):
        return True


async def test_strangers_silent_links_are_dropped_while_no_accept_waits_over_tcp(
    tmp_path: Path,
) -> None:
    """The application has not called ``accept()`` (yet, or again).  A stranger opens 12 TCP
    connections to the library host and says nothing: each must be ended by the host (those
    beyond ``per_address`` told busy, the others dropped at the first flight), not kept open
    until the application calls ``accept()``.  Nobody is asked anything."""
    paul = device(tmp_path, "Paul")
    owner = Counts()
    limits = AdmissionLimits(first_flight=FIRST_FLIGHT, per_address=4)
    async with paul.host("tcp:127.0.0.1:0", methods=["pin"], delegate=owner,
                         admission=limits) as host:
        address, port = host.address.rsplit(":", 1)
        links = [await tcp_connect(address, int(port), timeout=5) for _ in range(12)]
        try:
            outcomes = await asyncio.gather(*(ended(link, 40 * FIRST_FLIGHT) for link in links))
            assert all(outcomes), f"{outcomes.count(False)} of 12 silent links still open"
            assert owner.asked == 0
        finally:
            for link in links:
                await link.close()


async def test_a_guest_who_spoke_while_no_accept_waited_pairs_with_the_next_accept(
    tmp_path: Path,
) -> None:
    """George connects and asks to join while the application is not in ``accept()``; it
    calls ``accept()`` only after several first flights: George, whose first message came in
    time, is served then and pairs (a held link's first flight is met by what it sent)."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    limits = AdmissionLimits(first_flight=FIRST_FLIGHT)
    async with paul.host("tcp:127.0.0.1:0", methods=["pin"], delegate=pairkit.Agree(),
                         admission=limits) as host:
        joining = asyncio.ensure_future(george.join(f"tcp:{host.address}", pin=host.pin))
        try:
            await asyncio.sleep(5 * FIRST_FLIGHT)  # no accept() meanwhile
            assert not joining.done(), joining
            async with await host.accept(timeout=15) as on_paul, await joining as on_george:
                assert on_paul.peer.name == "George"
                assert on_paul.fingerprint == on_george.fingerprint
        finally:
            joining.cancel()
            with contextlib.suppress(BaseException):
                await joining


async def test_nothing_held_while_no_accept_waits_outlives_the_host(tmp_path: Path) -> None:
    """George asks to join while no ``accept()`` waits (his link held, unserved); the
    application closes the host: George's link is closed with it (his join fails), not left
    open behind a host that is gone."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("tcp:127.0.0.1:0", methods=["pin"], delegate=pairkit.Agree()) as host:
        joining = asyncio.ensure_future(
            george.join(f"tcp:{host.address}", pin=host.pin, step_timeout=20))
        await asyncio.sleep(0.5)  # George has connected and spoken; no accept() waits
        assert not joining.done()
    try:
        async with asyncio.timeout(10):
            outcome = await asyncio.gather(joining, return_exceptions=True)
        assert isinstance(outcome[0], PairingError), outcome
        assert not isinstance(outcome[0], PairingTimeout), outcome
    finally:
        joining.cancel()
        with contextlib.suppress(BaseException):
            await joining


async def test_a_silent_ble_link_is_dropped_while_no_accept_waits(
    tmp_path: Path, world: World  # noqa: F811
) -> None:
    """Over bumble virtual controllers: a stranger connects and opens its link (subscribes to
    TX) while no ``accept()`` waits, and says nothing.  The host must drop it at the first
    flight (the controller's connection freed), as it drops a link that opens nothing."""
    paul = device(tmp_path, "Paul")
    radio = await world.device(prefer_l2cap=False)
    limits = AdmissionLimits(first_flight=FIRST_FLIGHT)
    async with paul.host(radio, methods=["pin"], delegate=pairkit.Agree(),
                         admission=limits) as host:
        stranger = await world.device(prefer_l2cap=False)
        silent = await stranger.connect(host.address, timeout=5)
        try:
            assert len(radio.device.connections) == 1
            await eventually(lambda: not radio.device.connections, 40 * FIRST_FLIGHT)
        finally:
            await silent.close()


async def test_a_stranger_who_starts_a_message_while_no_accept_waits_is_dropped_at_the_first_flight(
    tmp_path: Path,
) -> None:
    """No ``accept()`` waits.  A stranger connects over TCP and sends one link message, the
    first fragment of a 1,000-byte pairkit message (docs/protocol.md framing), then nothing.
    The first flight is met by a whole message, not by a fragment (attack review atk13): the
    host must drop the link at the first flight from its arrival, not hold it to the host's
    step timeout (30 s).  Before (attack review atk16, low), the held link counted as having
    "spoken" once any fragment was buffered, and was held for the whole step timeout, a
    pending place (per address, in all) each, from a stranger who never sent a message."""
    from pairkit.pairing.framing import fragment

    paul = device(tmp_path, "Paul")
    owner = Counts()
    limits = AdmissionLimits(first_flight=FIRST_FLIGHT)
    async with paul.host("tcp:127.0.0.1:0", methods=["pin"], delegate=owner,
                         admission=limits, step_timeout=30.0) as host:
        address, port = host.address.rsplit(":", 1)
        link = await tcp_connect(address, int(port), timeout=5)
        try:
            pieces = fragment(bytes(1000), 64)
            assert len(pieces) > 1
            await link.send(pieces[0])
            # 20 first flights: ample for the first one, a fifth of the host's step (30 s)
            assert await ended(link, 20 * FIRST_FLIGHT), "a stranger's half message was held"
            assert owner.asked == 0
        finally:
            await link.close()


async def test_a_ble_stranger_who_starts_a_message_while_no_accept_waits_is_dropped(
    tmp_path: Path, world: World  # noqa: F811
) -> None:
    """The same over bumble virtual controllers (GATT at the smallest MTU): a stranger's link
    sends the first 20-byte fragment of a message three MTUs long while no ``accept()`` waits,
    then nothing.  The host must drop it at the first flight, not hold the controller's
    connection for the host's step timeout (attack review atk16)."""
    from pairkit.pairing.framing import fragment

    paul = device(tmp_path, "Paul")
    radio = await world.device(prefer_l2cap=False, att_mtu=23)
    limits = AdmissionLimits(first_flight=FIRST_FLIGHT)
    async with paul.host(radio, methods=["pin"], delegate=pairkit.Agree(),
                         admission=limits, step_timeout=30.0) as host:
        stranger = await world.device(prefer_l2cap=False, att_mtu=23)
        link = await stranger.connect(host.address, timeout=5)
        try:
            pieces = fragment(bytes(3 * link.mtu), link.mtu)
            assert len(pieces) > 1
            await link.send(pieces[0])
            assert len(radio.device.connections) == 1
            await eventually(lambda: not radio.device.connections, 20 * FIRST_FLIGHT)
        finally:
            await link.close()


async def test_a_clear_guest_whose_le_pairing_is_confirmed_slowly_while_no_accept_waits_pairs(
    tmp_path: Path, world: World  # noqa: F811
) -> None:
    """Over bumble virtual controllers: George joins by ``clear`` while no ``accept()`` waits;
    his link is held, and his LE pairing (turned on before his first message) is confirmed by
    the host's person after longer than the first flight.  A served link gives an LE pairing
    under way its bounded extension (``BleLink.first_flight_extension``, attack review atk13);
    a held link must too, and George pairs with the ``accept()`` that comes after.  Before
    (attack review atk16, low), the held link was dropped at the first flight, and George's
    join failed however soon the application called ``accept()``."""
    from pairkit.transports.bumble import PairingDelegate

    class SlowConfirmer(PairingDelegate):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.asked = 0

        async def confirm(self, auto: bool = False) -> bool:
            self.asked += 1
            await asyncio.sleep(3 * FIRST_FLIGHT)
            return True

    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    confirmer = SlowConfirmer()
    radio = await world.device(prefer_l2cap=False, pairing_delegate=confirmer)
    limits = AdmissionLimits(first_flight=FIRST_FLIGHT)
    async with paul.host(radio, methods=["clear"], delegate=pairkit.Agree(),
                         admission=limits, step_timeout=20.0) as host:
        guest_radio = await world.device(prefer_l2cap=False)
        joining = asyncio.ensure_future(george.join(
            host.address, transport=guest_radio, method="clear", step_timeout=20))
        try:
            await eventually(lambda: confirmer.asked >= 1, 20 * FIRST_FLIGHT)
            await asyncio.sleep(5 * FIRST_FLIGHT)  # confirmed, and George has spoken
            assert not joining.done(), joining
            async with await host.accept(timeout=15) as on_paul, await joining as on_george:
                assert on_paul.peer.name == "George"
                assert on_paul.fingerprint == on_george.fingerprint
        finally:
            joining.cancel()
            with contextlib.suppress(BaseException):
                await joining
