"""Admission under load (runtime/admission.py): who a stranger with a handful of addresses can
push out of a host's pending links.

Played over real TCP on loopback with the real accept loop: the attackers bind 127.0.0.2,
127.0.0.3 (Linux routes all of 127/8 to lo), the guest connects from 127.0.0.1.  The limits are
scaled down (8 pending links, 4 per address) so that a few connections fill them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pairkit.admission import Admission, AdmissionLimits
from pairkit.pairing.errors import PairingError
from pairkit.session import accept_loop
from pairkit.transports.tcp import TcpLink, TcpListener, tcp_connect
from tests.flood_harness import attacker_addresses, link_from, wait_until

LIMITS = AdmissionLimits(max_pending=8, per_address=4, first_flight=5.0, idle_grace=0.2)


async def two_steps(link: Any) -> None:
    """A stand-in for a pairing that needs two messages from the guest (a first flight, then,
    after the guest's person typed the PIN, a second): it is paired after the second."""
    try:
        await link.send(b"ack:" + await link.recv())
        second = await link.recv()
        link.authenticated()
        await link.send(b"paired:" + second)
    except PairingError:
        pass
    finally:
        with contextlib.suppress(PairingError):
            await link.close()


class Host:
    """A host's accept loop on 127.0.0.1 under ``limits``, serving :func:`two_steps`; the links
    a test opens to it are closed with it."""

    def __init__(self, listener: TcpListener, admission: Admission) -> None:
        self.listener, self.admission = listener, admission
        self.links: list[TcpLink] = []

    async def link_from(self, source: str) -> TcpLink:
        link = await link_from(source, "127.0.0.1", self.listener.port)
        self.links.append(link)
        return link

    async def guest(self) -> TcpLink:
        link = await tcp_connect("127.0.0.1", self.listener.port, timeout=5)
        self.links.append(link)
        return link

    async def spoken_once(self, sources: list[str], each: int) -> None:
        """``each`` links from every source, each past its first flight."""
        for source in sources:
            for _ in range(each):
                link = await self.link_from(source)
                await link.send(b"x")
                assert await asyncio.wait_for(link.recv(), 5) == b"ack:x"


@contextlib.asynccontextmanager
async def serving(limits: AdmissionLimits = LIMITS) -> AsyncIterator[Host]:
    listener = await TcpListener.bind("127.0.0.1", 0)
    host = Host(listener, Admission(limits))
    loop_task = asyncio.create_task(accept_loop(listener, two_steps, admission=host.admission))
    try:
        yield host
    finally:
        for link in host.links:
            with contextlib.suppress(Exception):
                await link.close()
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        await listener.close()


async def paired(guest: TcpLink) -> None:
    """The guest's first flight, then its second (the PIN typed), pair it."""
    await guest.send(b"hello")
    assert await asyncio.wait_for(guest.recv(), 5) == b"ack:hello"
    await guest.send(b"pin")
    assert await asyncio.wait_for(guest.recv(), 5) == b"paired:pin"


async def test_a_guest_typing_its_pin_is_not_evicted_by_a_few_busy_addresses() -> None:
    """The guest has one link and is silent while its person types the PIN.  A stranger with
    two addresses fills the pending links (4 from one, 3 from the other, each having said
    something), then opens one more from the address holding 3.  The newcomer's address would
    hold as many as the busiest then, so the rule that evicts the busiest address's links does
    not fire; the guest's one link must not be the one that gives way (the module's promise: a
    guest's one link gives way only once every other address is down to one)."""
    async with serving() as host:
        a, b = attacker_addresses(2)
        guest = await host.guest()
        await guest.send(b"hello")
        assert await asyncio.wait_for(guest.recv(), 5) == b"ack:hello"
        # The stranger's links, each past its first flight (spoken, so not the first to go).
        await host.spoken_once([a], 4)
        await host.spoken_once([b], 3)
        assert host.admission.pending == 8
        await asyncio.sleep(2 * LIMITS.idle_grace)  # everyone has been silent a while
        newcomer = await host.link_from(b)
        await newcomer.send(b"x")
        await wait_until(lambda: host.admission.refused >= 1, "refusal or eviction")
        # The person has typed the PIN: the guest's second flight.
        await guest.send(b"pin")
        assert await asyncio.wait_for(guest.recv(), 5) == b"paired:pin"


async def test_a_guest_whose_messages_are_read_at_once_counts_as_speaking() -> None:
    """The pipe reads a message already there without waiting (``recv_nowait``, issue 13): a
    guest read that way has spoken, and is as recent as its last message, to the admission
    deciding whom a flood evicts; else a busy guest looks silent from the start and is the
    first to go."""
    from pairkit.driver import MessagePipe

    admission = Admission(AdmissionLimits())
    listener = await TcpListener.bind("127.0.0.1", 0)
    accepted: asyncio.Queue[Any] = asyncio.Queue()
    server = asyncio.create_task(accept_loop(listener, accepted.put, admission=admission))
    try:
        guest = await tcp_connect("127.0.0.1", listener.port, timeout=5)
        admitted = await asyncio.wait_for(accepted.get(), 5)
        pipe = MessagePipe(admitted, guest=False)
        await MessagePipe(guest, guest=True).send(b"hello")
        await wait_until(lambda: pipe.poll_unabsorbed() is not None or admitted.received, 5)
        assert admitted.received == 1 and admitted.spoken
        await guest.close()
    finally:
        server.cancel()
        with contextlib.suppress(BaseException):
            await server
        await listener.close()


async def test_a_guest_just_connected_is_not_evicted_by_strangers_who_spoke_once() -> None:
    """The soak test's failure (a guest told "busy" through a flood of join requests): the
    strangers each said something once (their cloud step) and then wait, 4 links from each of
    two addresses, filling the pending links; they reopen a link the moment one is closed.  The
    guest connects and, before its first message arrives, is the only link that has sent
    nothing, so "silent first" picked it as the victim of the next stranger's newcomer.  A link
    younger than the idle grace, from an address holding fewer links than the newcomer's would,
    must not give way for it."""
    async with serving() as host:
        a, b = attacker_addresses(2)
        await host.spoken_once([a, b], 4)
        assert host.admission.pending == 8
        await asyncio.sleep(2 * LIMITS.idle_grace)  # they have been silent a while
        # The guest connects (a stranger's link gives way for it) and has not spoken yet ...
        guest = await host.guest()
        await wait_until(lambda: host.admission.refused >= 1, "the first eviction")
        # ... when the evicted stranger reopens at once, from its address (now holding 3).
        await host.link_from(a)
        await wait_until(lambda: host.admission.refused >= 2, "the second eviction or refusal")
        await paired(guest)  # the guest's link is still there


async def test_silent_links_from_as_many_addresses_as_places_still_give_way_to_a_guest() -> None:
    """The other side of the grace above: a stranger with one address per place (8 here) holds
    every place with links that say nothing, each younger than the idle grace (a stranger can
    reopen them faster than that).  Their addresses hold as many links as the guest's would, so
    the oldest of them gives way to the guest: a grace for every young silent link would have
    let such a flood keep every guest out."""
    limits = dataclasses.replace(LIMITS, idle_grace=30.0)  # every stranger's link is young
    async with serving(limits) as host:
        for source in attacker_addresses(limits.max_pending):
            await host.link_from(source)
        await wait_until(lambda: host.admission.pending == limits.max_pending, "every place held")
        guest = await host.guest()
        await wait_until(lambda: host.admission.refused >= 1, "a stranger's link giving way")
        await paired(guest)


async def test_a_link_that_says_nothing_is_dropped_at_the_first_flight_deadline_when_driven(
) -> None:
    """The host's pairing is driven over the admitted link as production drives it (a
    MessagePipe, :func:`pairkit.driver.drive`), and the guest sends nothing.  The admission's
    first-flight deadline must end the pairing, not the pairing's own step deadline (30 s): the
    driver's cheaper wait (the link's ``recv_ready``, issue 13) went around ``Admitted.recv``,
    the one place that deadline is kept, because ``Admitted`` passed ``recv_ready`` through to
    the link it wraps."""
    from pairkit.pairing.errors import PairingTimeout
    from tests.admission_harness import driven_tcp_host

    limits = dataclasses.replace(LIMITS, first_flight=0.3)
    async with driven_tcp_host(limits) as host:
        error = await asyncio.wait_for(host.ended.get(), 10)
        assert isinstance(error, PairingTimeout), repr(error)
        assert "sent nothing within 0.3 s of connecting" in str(error)


async def test_a_silent_ble_link_is_dropped_at_the_first_flight_deadline_when_driven() -> None:
    """The same over BLE, whose links cannot offer the driver a future (no ``recv_ready``):
    the driver reads through ``Admitted.recv``, whose first-flight deadline raised a
    PairingTimeout that the driver took for its own read deadline; it read again at once, past
    the deadline, again and again until the pairing's own 30 s step (a busy loop: a stranger
    who connects and says nothing held a core of the host)."""
    from pairkit.driver import MessagePipe, drive
    from pairkit.pairing.errors import PairingTimeout
    from pairkit.pairing.methods import HostPairing, HostState, LocalIdentity, PairingConfig
    from pairkit.transports.bumble import VirtualRadio
    from tests.ble_harness import bumble_devices, linked_pair

    admission = Admission(dataclasses.replace(LIMITS, first_flight=0.3))
    async with bumble_devices(VirtualRadio()) as open_device:
        _guest_link, host_link = await linked_pair(open_device, 151)
        admitted = admission.admit(host_link)
        assert admitted is not None
        machine = HostPairing(PairingConfig(), LocalIdentity.generate("host"), HostState())
        machine.start(asyncio.get_running_loop().time())
        with pytest.raises(PairingTimeout, match=r"sent nothing within 0\.3 s of connecting"):
            await asyncio.wait_for(drive(machine, MessagePipe(admitted, guest=False)), 10)
