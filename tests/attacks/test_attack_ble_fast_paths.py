"""Attacks on the BLE fast paths (transports/bumble.py ``_read_att_at_once``, links.py
``_write_at_once``): a peer on the same virtual radio sends raw ATT PDUs that bumble's own
GATT path would drop (wrong handle, over 512 bytes, truncated) and checks that the fast path
drops them too, delivers nothing to the link and does not crash the stack.  Real bumble
stacks on virtual controllers; the raw PDUs go through bumble's own send calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from bumble import att

from pairkit.transports.ble.links import BleLink, GattLink
from pairkit.transports.bumble import VirtualRadio
from tests.ble_harness import (
    OpenDevice,
    bumble_devices,
    gatt_guests,
    linked_pair,
    record_att_responses,
    u16,
)


@pytest.fixture
async def open_device() -> AsyncIterator[OpenDevice]:
    """GATT only: every device made without L2CAP."""
    async with bumble_devices(VirtualRadio()) as factory:
        yield functools.partial(factory, prefer_l2cap=False)


async def gatt_pair(open_device: OpenDevice, seed: int) -> tuple[GattLink, GattLink]:
    guest_link, host_link = await linked_pair(open_device, seed)
    assert isinstance(guest_link, GattLink) and isinstance(host_link, GattLink)
    return guest_link, host_link


async def only(link: BleLink, expected: bytes) -> None:
    """The next message is ``expected`` and nothing else is queued."""
    assert await asyncio.wait_for(link.recv(), 2) == expected
    assert link.recv_nowait() is None


async def test_write_commands_off_the_rx_handle_or_oversized_never_reach_the_host(
    open_device: OpenDevice,
) -> None:
    guest_link, host_link = await gatt_pair(open_device, 71)
    client = guest_link.connection.gatt_client
    rx = guest_link._rx_handle
    for pdu in (
        b"\x52" + u16(rx + 1) + b"other handle",  # the TX value handle
        b"\x52" + u16(rx - 1) + b"declaration",
        b"\x52" + u16(rx) + bytes(513),  # over GATT's 512 (Vol 3 Part F §3.2.9)
        b"\x12" + u16(rx + 1) + b"request off rx",  # Write Request, bumble's path
    ):
        client.send_gatt_pdu(pdu)
    client.send_gatt_pdu(b"\x52" + u16(rx) + b"good")
    await only(host_link, b"good")
    assert not host_link.closed


async def test_notifications_off_the_tx_handle_never_reach_the_guest(
    open_device: OpenDevice,
) -> None:
    guest_link, host_link = await gatt_pair(open_device, 81)
    connection = host_link.connection
    server = connection.device.gatt_server
    tx = host_link._tx
    assert tx is not None
    for pdu in (
        b"\x1b" + u16(tx.handle - 2) + b"rx handle",
        b"\x1b" + u16(tx.handle + 1) + b"cccd handle",
        b"\x1d" + u16(tx.handle) + b"indication",  # not the fast path's opcode
    ):
        server.send_gatt_pdu(connection, pdu)
    server.send_gatt_pdu(connection, b"\x1b" + u16(tx.handle) + b"good")
    await only(guest_link, b"good")
    assert not guest_link.closed


@pytest.mark.parametrize("pdu", [b"\x52", b"\x52\x05", b"\x1b", b"\x1b\x05"], ids=repr)
async def test_truncated_att_pdus_leave_both_links_working(
    open_device: OpenDevice, pdu: bytes
) -> None:
    guest_link, host_link = await gatt_pair(open_device, 91)
    if pdu[0] == 0x52:
        guest_link.connection.gatt_client.send_gatt_pdu(pdu)
    else:
        connection = host_link.connection
        connection.device.gatt_server.send_gatt_pdu(connection, pdu)
    await asyncio.sleep(0.05)
    await guest_link.send(b"up")
    await host_link.send(b"down")
    await only(host_link, b"up")
    await only(guest_link, b"down")


@contextlib.contextmanager
def bumble_debug(on: bool) -> Iterator[None]:
    """bumble's GATT loggers at DEBUG (``on``: bumble's own path, the fast paths step aside)
    or as they were."""
    loggers = [logging.getLogger(name) for name in ("bumble.gatt_server", "bumble.gatt_client")]
    levels = [logger.level for logger in loggers]
    if on:
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@pytest.mark.parametrize("debug", [False, True], ids=["fast", "bumble-debug"])
async def test_a_write_request_and_a_write_command_on_rx_arrive_in_the_order_sent(
    open_device: OpenDevice, debug: bool
) -> None:
    guest_link, host_link = await gatt_pair(open_device, 101)
    client = guest_link.connection.gatt_client
    rx = guest_link._rx_handle
    responses: asyncio.Queue[bytes] = asyncio.Queue()
    record_att_responses(guest_link, responses.put_nowait)
    with bumble_debug(debug):
        client.send_gatt_pdu(b"\x12" + u16(rx) + b"first")  # Write Request: RX allows WRITE
        client.send_gatt_pdu(b"\x52" + u16(rx) + b"second")
        got = [await asyncio.wait_for(host_link.recv(), 2) for _ in range(2)]
        assert got == [b"first", b"second"], got
        assert await asyncio.wait_for(responses.get(), 2) == b"\x13"  # Write Response
    assert responses.empty()


@pytest.mark.parametrize("debug", [False, True], ids=["fast", "bumble-debug"])
async def test_a_long_write_and_a_write_command_on_rx_arrive_in_the_order_sent(
    open_device: OpenDevice, debug: bool
) -> None:
    """A queued write (Prepare Write Requests, then Execute Write Request: Vol 3 Part F
    §3.4.6) on RX, then a Write Command without waiting for the Execute Write Response."""
    guest_link, host_link = await gatt_pair(open_device, 141)
    client = guest_link.connection.gatt_client
    rx = guest_link._rx_handle
    responses: asyncio.Queue[bytes] = asyncio.Queue()
    record_att_responses(guest_link, responses.put_nowait)
    with bumble_debug(debug):
        for offset, part in ((0, b"fir"), (3, b"st")):
            client.send_gatt_pdu(b"\x16" + u16(rx) + u16(offset) + part)
            assert await asyncio.wait_for(responses.get(), 2) == b"\x17" + u16(rx) + u16(
                offset
            ) + part
        client.send_gatt_pdu(b"\x18\x01")  # execute
        client.send_gatt_pdu(b"\x52" + u16(rx) + b"second")
        got = [await asyncio.wait_for(host_link.recv(), 2) for _ in range(2)]
        assert got == [b"first", b"second"], got
        assert await asyncio.wait_for(responses.get(), 2) == b"\x19"  # Execute Write Response
    assert responses.empty()


def bumble_only(host_link: GattLink) -> None:
    """The host's device as bumble made it: pairkit's ATT fast paths taken out (its GATT
    server's own handlers, its own ATT channel reader)."""
    device = host_link.connection.device
    server = device.gatt_server
    for name in ("on_att_write_command", "on_att_write_request", "on_att_execute_write_request"):
        server.__dict__.pop(name, None)
    device.l2cap_channel_manager.register_fixed_channel(att.ATT_CID, device.on_gatt_pdu)


#: Requests to the host's server, each with the guest waiting for its answer (Vol 3 Part F
#: §3.3.2), and where each goes: Write Requests (§3.4.5.1) on RX and off it, then queued writes
#: (Prepare Write §3.4.6.1, Execute Write §3.4.6.3): written, with a gap, cancelled.
def _requests(rx: int) -> list[bytes]:
    return [
        b"\x12" + u16(rx) + b"to rx",
        b"\x12" + u16(rx),  # an empty value
        b"\x12" + u16(rx) + bytes(512),  # GATT's largest value
        b"\x12" + u16(rx) + bytes(513),  # over it (§3.2.9)
        b"\x12" + u16(0xFFF0) + b"no such handle",
        b"\x12" + u16(0),  # handle 0 is invalid (§3.2.2)
        b"\x16" + u16(rx) + u16(0) + b"long ",
        b"\x16" + u16(rx) + u16(5) + b"write",
        b"\x18\x01",
        b"\x16" + u16(rx) + u16(3) + b"gap",
        b"\x18\x01",  # invalid offset
        b"\x16" + u16(rx) + u16(0) + b"cancelled",
        b"\x18\x00",
    ]


async def test_write_requests_are_answered_as_bumble_answers_them(
    open_device: OpenDevice,
) -> None:
    """The same requests to pairkit's fast path, to its path while bumble logs at DEBUG, and
    to bumble's server without pairkit's paths: the same answers, byte for byte, and the
    same values written, in the same order."""
    answers: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for seed, mode in enumerate(("fast", "bumble-debug", "bumble-only")):
        guest_link, host_link = await gatt_pair(open_device, 131 + 2 * seed)
        client = guest_link.connection.gatt_client
        rx = guest_link._rx_handle
        responses: asyncio.Queue[bytes] = asyncio.Queue()
        record_att_responses(guest_link, responses.put_nowait)
        if mode == "bumble-only":
            bumble_only(host_link)
        got: list[bytes] = []
        with bumble_debug(mode == "bumble-debug"):
            for pdu in _requests(rx):
                client.send_gatt_pdu(pdu)
                got.append(await asyncio.wait_for(responses.get(), 2))
            client.send_gatt_pdu(b"\x52" + u16(rx) + b"end")
            values = [await asyncio.wait_for(host_link.recv(), 2) for _ in range(5)]
        assert host_link.recv_nowait() is None and responses.empty()
        answers[mode] = (got, values)
    assert answers["fast"] == answers["bumble-only"]
    assert answers["bumble-debug"] == answers["bumble-only"]
    got, values = answers["fast"]
    assert got[:3] == [b"\x13"] * 3
    assert got[3] == b"\x01\x12" + u16(rx) + b"\x0d"  # invalid attribute value length
    assert got[8] == got[12] == b"\x19"
    assert values == [b"to rx", b"", bytes(512), b"long write", b"end"]


async def test_notifications_reach_only_the_link_of_a_reused_connection_handle(
    open_device: OpenDevice,
) -> None:
    host = await open_device(111)
    guest = await open_device(112)
    await host.start_advertising(b"hello")
    links: list[tuple[BleLink, BleLink]] = []
    for _ in range(2):
        accepting = asyncio.ensure_future(host.accept(timeout=5))
        guest_link = await guest.connect(host.address, timeout=5)
        host_link = await accepting
        links.append((guest_link, host_link))
        if len(links) == 1:
            await guest_link.close()
            for _ in range(200):  # the host sees the disconnection
                if host_link.closed:
                    break
                await asyncio.sleep(0.01)
            assert host_link.closed
            await host.start_advertising(b"hello")
    (old_guest, _), (new_guest, new_host) = links
    assert old_guest.connection.handle == new_guest.connection.handle  # the handle reused
    await new_host.send(b"to the new link")
    await only(new_guest, b"to the new link")
    assert old_guest.closed and not old_guest.buffered


async def test_raw_writes_from_a_second_guest_reach_only_its_own_host_link(
    open_device: OpenDevice,
) -> None:
    host = await open_device(121)
    guests = [await open_device(122), await open_device(123)]
    pairs = await gatt_guests(host, guests)
    (victim_guest, victim_host), (attacker, attacker_host) = pairs
    client = attacker.connection.gatt_client
    for index in range(20):
        client.send_gatt_pdu(b"\x52" + u16(attacker._rx_handle) + b"a%d" % index)
        if index == 10:
            victim_guest.send_nowait(b"victim")
    assert [await asyncio.wait_for(attacker_host.recv(), 2) for _ in range(20)] == [
        b"a%d" % index for index in range(20)
    ]
    await only(victim_host, b"victim")
