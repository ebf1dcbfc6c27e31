"""A lost Bluetooth controller, noticed and reopened (issue 17, finding 6).

The radio here is a real ``pairkit radio`` served over TCP (in this process, so that it can be
stopped and started again on the same ports); the bumble transports open it as every pairkit
process does, ``tcp-client:127.0.0.1:PORT``.  Stopping the radio is the controller being
unplugged; starting it again on the same ports is the dongle coming back (with the ports
swapped, another controller comes back in its place).  Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from bumble.transport.common import ParserSource

from pairkit.pairing.errors import ErrorCode, LinkClosedError, TransportError
from pairkit.presence import regain_radio
from pairkit.transports.base import ControllerLostError
from pairkit.transports.ble.privacy import resolves
from pairkit.transports.bumble import BumbleTransport, open_bumble, watch_socket_source
from pairkit.transports.radio import RadioServer, start_radio

HELLO = b"radio-host"
DEADLINE = 10.0


@contextlib.asynccontextmanager
async def _transports(ports: list[int]) -> AsyncIterator[tuple[BumbleTransport, BumbleTransport]]:
    host = await open_bumble(f"tcp-client:127.0.0.1:{ports[0]}", open_timeout=5.0)
    guest = await open_bumble(f"tcp-client:127.0.0.1:{ports[1]}", open_timeout=5.0)
    try:
        yield host, guest
    finally:
        await asyncio.gather(host.close(), guest.close())


async def _sees(guest: BumbleTransport, address: str, seconds: float = DEADLINE) -> bool:
    async for sighting in guest.scan(seconds):
        if sighting.address == address and sighting.payload == HELLO:
            return True
    return False


async def _echo_once(host: BumbleTransport, guest: BumbleTransport) -> None:
    connecting = asyncio.ensure_future(guest.connect(host.address, timeout=DEADLINE))
    served = await host.accept(timeout=DEADLINE)
    link = await connecting
    await link.send(b"ping")
    assert await asyncio.wait_for(served.recv(), DEADLINE) == b"ping"
    await link.close()
    await served.close()


async def test_a_lost_controller_ends_every_wait_and_comes_back_with_its_address() -> None:
    radio = await start_radio([0, 0])
    ports = radio.ports
    second: RadioServer | None = None
    async with _transports(ports) as (host, guest):
        try:
            await host.start_advertising(HELLO)
            address = host.address
            assert await _sees(guest, address)
            connecting = asyncio.ensure_future(guest.connect(address, timeout=DEADLINE))
            served = await host.accept(timeout=DEADLINE)
            link = await connecting
            waiting = asyncio.ensure_future(host.accept())  # no deadline of its own
            assert host.lost is None and guest.lost is None

            await radio.close()  # both dongles unplugged

            # The host notices: the accept that would have waited forever ends, saying why.
            with pytest.raises(ControllerLostError) as lost:
                await asyncio.wait_for(waiting, DEADLINE)
            assert "the Bluetooth controller 'tcp-client:127.0.0.1:" in str(lost.value)
            assert "was lost" in str(lost.value) and lost.value.code is ErrorCode.NOT_FOUND
            assert host.lost is not None
            # Links on it end at once (a guest mid-pairing), on both sides.
            for end in (served, link):
                with pytest.raises(LinkClosedError):
                    await asyncio.wait_for(end.recv(), DEADLINE)
            # What a guest does next ends at once too, not at its timeout.
            await asyncio.wait_for(_wait_lost(guest), DEADLINE)
            with pytest.raises(ControllerLostError):
                await asyncio.wait_for(guest.connect(address, timeout=60), DEADLINE)
            with pytest.raises(ControllerLostError):
                await asyncio.wait_for(_sees(guest, address), DEADLINE)
            with pytest.raises(ControllerLostError):
                await host.start_advertising(HELLO)

            # Still unplugged: reopening says so, as opening does (not found: exit code 6).
            with pytest.raises(TransportError) as missing:
                await host.reopen()
            assert missing.value.code is ErrorCode.NOT_FOUND
            assert "nothing listens at 127.0.0.1:" in str(missing.value)
            assert host.lost is not None

            # Plugged in again: the same ports, but each comes back as the other controller.
            second = await start_radio([ports[1], ports[0]])
            await asyncio.wait_for(host.reopen(), DEADLINE)
            await asyncio.wait_for(guest.reopen(), DEADLINE)
            assert host.lost is None and guest.lost is None
            assert host.address == address  # the same random static address as before
            await host.start_advertising(HELLO)
            assert await _sees(guest, address)
            await _echo_once(host, guest)
        finally:
            await radio.close()
            if second is not None:
                await second.close()


async def test_one_unplugged_dongle_ends_its_links_and_is_plugged_back_in() -> None:
    """Only the host's dongle goes: the guest mid-pairing sees its link end (the radio times the
    connection out), the host's side of it ends saying its own controller was lost, and once
    the dongle is back the same guest finds and reaches the host again."""
    radio = await start_radio([0, 0])
    ports = radio.ports
    try:
        async with _transports(ports) as (host, guest):
            await host.start_advertising(HELLO)
            address = host.address
            connecting = asyncio.ensure_future(guest.connect(address, timeout=DEADLINE))
            served = await host.accept(timeout=DEADLINE)
            link = await connecting

            await radio.unplug(0)

            with pytest.raises(LinkClosedError) as mine:
                await asyncio.wait_for(served.recv(), DEADLINE)
            assert str(mine.value) == "this side's Bluetooth controller was lost"
            with pytest.raises(LinkClosedError):
                await asyncio.wait_for(link.recv(), DEADLINE)
            with pytest.raises(ControllerLostError):
                await asyncio.wait_for(host.accept(), DEADLINE)
            assert guest.lost is None  # the guest's own dongle never went
            assert not await _sees(guest, address, 1.0)  # no longer on air

            await radio.plug(0, ports[0])
            await asyncio.wait_for(host.reopen(), DEADLINE)
            await host.start_advertising(HELLO)
            assert await _sees(guest, address)
            await _echo_once(host, guest)
    finally:
        await radio.close()


async def _wait_lost(transport: BumbleTransport) -> None:
    while transport.lost is None:
        await asyncio.sleep(0.01)


async def test_a_private_host_comes_back_with_a_fresh_address_from_the_same_key() -> None:
    """Privacy holds across the loss: a new resolvable private address from the same identity
    resolving key, so members still recognise the host and strangers cannot link the two."""
    irk = bytes(range(16))
    radio = await start_radio([0, 0])
    ports = radio.ports
    second: RadioServer | None = None
    async with _transports(ports) as (host, guest):
        try:
            assert await host.use_identity_key(irk) == "resolvable"
            before = host.address
            assert resolves(before, irk)
            await radio.close()
            await asyncio.wait_for(_wait_lost(host), DEADLINE)
            second = await start_radio(ports)
            await asyncio.wait_for(host.reopen(), DEADLINE)
            await asyncio.wait_for(guest.reopen(), DEADLINE)
            after = host.address
            assert after != before and resolves(after, irk)
            assert host.address_privacy == "resolvable"
            await host.start_advertising(HELLO)
            assert await _sees(guest, after)
            await _echo_once(host, guest)
        finally:
            await radio.close()
            if second is not None:
                await second.close()


async def test_a_controller_that_serves_is_not_reopened() -> None:
    async with RadioServerScope() as ports, _transports(ports) as (host, _guest):
        address = host.address
        assert await host.reopen() is host
        assert host.address == address and host.lost is None


class RadioServerScope:
    """A radio for one test: its ports, stopped on the way out."""

    def __init__(self) -> None:
        self.server: RadioServer | None = None

    async def __aenter__(self) -> list[int]:
        self.server = await start_radio([0, 0])
        return self.server.ports

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.close()


#: an HCI event as the HCI socket hands it over (H4: type 4, Command Complete for HCI_Reset)
RESET_COMPLETE = bytes([0x04, 0x0E, 0x04, 0x01, 0x03, 0x0C, 0x00])


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    return near, far


@pytest.mark.parametrize("ending", ["end of file", "reset"])
async def test_a_socket_source_whose_socket_ends_reports_a_lost_transport(ending: str) -> None:
    """The HCI-socket case (a Raspberry Pi's hci0 taken away): bumble's reader lets the read
    error escape and never says the transport is lost; with :func:`watch_socket_source` the
    packets before still arrive and the socket's end completes ``terminated``."""
    near, far = _tcp_pair()
    near.setblocking(False)
    loop = asyncio.get_running_loop()
    packets: list[bytes] = []

    class Sink:
        def on_packet(self, packet: bytes) -> None:
            packets.append(bytes(packet))

    source = ParserSource()
    source.socket = near  # type: ignore[attr-defined]
    source.set_packet_sink(Sink())
    loop.add_reader(near.fileno(), lambda: None)  # where bumble's own reader sits
    try:
        assert watch_socket_source(source)
        far.sendall(RESET_COMPLETE)
        async with asyncio.timeout(DEADLINE):
            while not packets:
                await asyncio.sleep(0.01)
        assert packets == [RESET_COMPLETE]
        assert not source.terminated.done()
        if ending == "reset":
            far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        far.close()
        await asyncio.wait_for(asyncio.shield(source.terminated), DEADLINE)
    finally:
        loop.remove_reader(near.fileno())
        near.close()
        far.close()


def test_sources_without_a_socket_are_left_as_they_are() -> None:
    assert not watch_socket_source(object())


class _Unplugged:
    """A transport whose controller stays away for ``absent`` reopening attempts (the real
    ones are above; this one lets the schedule be read without waiting it out)."""

    def __init__(self, absent: int) -> None:
        self.absent = absent
        self.attempts = 0
        self.lost: str | None = "the Bluetooth controller 'usb:0' was lost"

    async def reopen(self) -> None:
        self.attempts += 1
        if self.attempts <= self.absent:
            raise TransportError("no Bluetooth controller found at usb:0", code=ErrorCode.NOT_FOUND)
        self.lost = None


async def _regain(transport: _Unplugged, retries: int | None) -> tuple[list[float], list[str]]:
    pauses: list[float] = []
    lines: list[str] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    await regain_radio(transport, ControllerLostError("lost"), retries=retries,
                       say=lines.append, sleep=sleep)
    return pauses, lines


async def test_the_pauses_double_up_to_30_s_and_the_journal_is_spared() -> None:
    transport = _Unplugged(absent=9)
    pauses, lines = await _regain(transport, None)
    assert transport.attempts == 10 and transport.lost is None
    assert pauses == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert lines[0] == "the Bluetooth controller 'usb:0' was lost; retrying in 1 s"
    # then attempts 2, 4 and 8 are announced (the reason stayed the same)
    assert [line.split("attempt ")[1] for line in lines[1:]] == ["2 in 2 s", "4 in 8 s",
                                                               "8 in 30 s"]
    assert all("no Bluetooth controller found at usb:0" in line for line in lines[1:])


@pytest.mark.parametrize(("retries", "attempts", "says"), [
    (0, 0, "was lost; not retrying (--radio-retries 0)"),
    (3, 3, "was lost, and did not come back after 3 attempt(s): no Bluetooth controller"),
])
async def test_a_host_told_how_often_to_retry_gives_up_with_the_reason(
    retries: int, attempts: int, says: str
) -> None:
    transport = _Unplugged(absent=100)
    with pytest.raises(ControllerLostError) as gave_up:
        await _regain(transport, retries)
    assert transport.attempts == attempts
    assert says in str(gave_up.value) and gave_up.value.code is ErrorCode.NOT_FOUND
