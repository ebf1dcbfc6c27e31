"""BLE links' ``send_nowait`` and ``recv_nowait`` (issue 13): the driver's pipe sends and reads
through them without a timer, a lock or a task switch.  Each keeps what ``send`` and ``recv``
guarantee: order, whole messages, the L2CAP SDU boundary and credits, the links' errors, and
bumble's own PDUs on the air; with bumble's DEBUG logging on, bumble's path (and its log line)
is taken.  Also the receiving end: pairkit's Write Commands and Notifications are read off the
ATT channel as they come, every other ATT PDU still reaches bumble.  Real bumble stacks on
virtual controllers throughout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from pairkit.pairing.errors import LinkClosedError, TooLargeError
from pairkit.transports.ble.links import BleLink, GattLink, L2capLink, _write_sdu
from pairkit.transports.bumble import VirtualRadio
from tests.ble_harness import OpenDevice, bumble_devices, linked_pair, on_air


@pytest.fixture
def radio() -> VirtualRadio:
    return VirtualRadio()


@pytest.fixture
async def open_device(radio: VirtualRadio) -> AsyncIterator[OpenDevice]:
    async with bumble_devices(radio) as factory:
        yield factory


async def read(link: BleLink, count: int) -> list[bytes]:
    return [await asyncio.wait_for(link.recv(), 2) for _ in range(count)]


@pytest.mark.parametrize("l2cap", [False, True], ids=["gatt", "l2cap"])
async def test_nowait_sends_whole_messages_in_order_both_ways(
    open_device: OpenDevice, l2cap: bool
) -> None:
    guest, host = await linked_pair(open_device, 10, prefer_l2cap=l2cap)
    assert isinstance(guest, L2capLink if l2cap else GattLink)
    assert guest.recv_nowait() is None and host.recv_nowait() is None
    for sender, receiver in ((guest, host), (host, guest)):
        sent = [bytes([i]) * (1 + 37 * i) for i in range(12)]
        assert all(sender.send_nowait(m) for m in sent[:6])
        for m in sent[6:]:
            await sender.send(m)
        got = await read(receiver, 3)
        await asyncio.sleep(0.01)  # the rest has arrived: read without waiting
        while (m := receiver.recv_nowait()) is not None:
            got.append(m)
        assert got == sent
        with pytest.raises(TooLargeError):
            sender.send_nowait(bytes(sender.mtu + 1))
    if l2cap:
        with pytest.raises(ValueError):
            guest.send_nowait(b"")
    assert guest.send_nowait(b"last words")
    await guest.close()
    with pytest.raises(LinkClosedError):
        guest.send_nowait(b"x")
    with pytest.raises(LinkClosedError):
        guest.recv_nowait()
    assert await read(host, 1) == [b"last words"]  # sent before the close: still read
    await asyncio.sleep(0.01)
    with pytest.raises(LinkClosedError):
        host.recv_nowait()


async def test_nowait_puts_bumbles_own_pdus_on_the_air(
    radio: VirtualRadio, open_device: OpenDevice
) -> None:
    """The Write Command and the Notification built without bumble's awaits are, byte for
    byte, the L2CAP PDUs bumble's ``write_value`` and ``notify_subscriber`` send."""
    guest, host = await linked_pair(open_device, 20, prefer_l2cap=False)
    assert isinstance(guest, GattLink) and isinstance(host, GattLink)
    air = on_air(radio)
    message = bytes(range(200))
    assert guest.send_nowait(message)
    assert host.send_nowait(message)
    await read(host, 1), await read(guest, 1)
    fast = list(air)
    air.clear()
    connection = guest.connection
    await connection.gatt_client.write_value(guest._rx_handle, message, with_response=False)
    tx = host._tx
    assert tx is not None
    await host.connection.device.notify_subscriber(host.connection, tx, message)
    await read(host, 1), await read(guest, 1)
    assert len(fast) == 2 and fast == air


async def test_with_bumbles_debug_log_on_bumbles_path_is_taken_and_logs(
    open_device: OpenDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is silenced: with DEBUG on for bumble's GATT client and server, the nowait
    path declines (bumble only offers those paths awaited) and ``send`` goes through bumble,
    which logs each PDU as it always did."""
    guest, host = await linked_pair(open_device, 30, prefer_l2cap=False)
    with caplog.at_level(logging.DEBUG, logger="bumble.gatt_client"), caplog.at_level(
        logging.DEBUG, logger="bumble.gatt_server"
    ):
        assert not guest.send_nowait(b"up") and not host.send_nowait(b"down")
        await guest.send(b"up")
        await host.send(b"down")
        assert await read(host, 1) == [b"up"] and await read(guest, 1) == [b"down"]
    texts = [r.getMessage() for r in caplog.records]
    assert any(t.startswith("GATT Command from client") for t in texts)
    assert any(t.startswith("GATT Notify from server") for t in texts)
    # ... and bumble read them, with its own lines, at the other end.
    assert any(t.startswith("GATT Request to server") and "ATT_WRITE_COMMAND" in t
               for t in texts)
    assert any(t.startswith("GATT Response to client") and "NOTIFICATION" in t for t in texts)


async def test_other_att_pdus_on_the_connection_still_reach_bumble(
    open_device: OpenDevice,
) -> None:
    """Only pairkit's two PDUs are read off the ATT channel: a Write Command and a
    Notification on another characteristic of the same connection reach bumble's server and
    client subscribers, in between pairkit's messages, which stay whole and in order."""
    from bumble.gatt import Characteristic, CharacteristicValue, Service
    from bumble.gatt_client import ServiceProxy

    host_device = await open_device(50, prefer_l2cap=False)
    written: list[bytes] = []
    other_in = Characteristic(
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1",
        Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
        Characteristic.WRITEABLE,
        CharacteristicValue(write=lambda _connection, value: written.append(bytes(value))),
    )
    other_out = Characteristic(
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f2",
        Characteristic.Properties.NOTIFY, Characteristic.READABLE, b"",
    )
    service_uuid = "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1"
    host_device.device.add_service(Service(service_uuid, [other_in, other_out]))
    guest_device = await open_device(51, prefer_l2cap=False)
    await host_device.start_advertising(b"hello")
    accepting = asyncio.ensure_future(host_device.accept(timeout=5))
    guest = await guest_device.connect(host_device.address, timeout=5)
    host = await accepting
    client = guest.connection.gatt_client
    services = await client.discover_service(service_uuid)
    proxies = await client.discover_characteristics([], services[0])
    assert isinstance(services[0], ServiceProxy)
    by_uuid = {str(c.uuid).lower(): c for c in proxies}
    heard: list[bytes] = []
    await client.subscribe(by_uuid[str(other_out.uuid).lower()], heard.append)
    for i in range(5):
        assert guest.send_nowait(bytes([i]) * 20) and host.send_nowait(bytes([i]) * 30)
        await client.write_value(by_uuid[str(other_in.uuid).lower()].handle, bytes([i]))
        await host.connection.device.notify_subscriber(host.connection, other_out, bytes([i]))
    assert await read(host, 5) == [bytes([i]) * 20 for i in range(5)]
    assert await read(guest, 5) == [bytes([i]) * 30 for i in range(5)]
    await asyncio.sleep(0.01)
    assert written == heard == [bytes([i]) for i in range(5)]


@pytest.mark.parametrize(
    ("config", "frames"),
    [({"l2cap_credits": 4}, 1), ({"l2cap_mtu": 298, "l2cap_mps": 100, "l2cap_credits": 6}, 3)],
    ids=["one-k-frame", "three-k-frames"],
)
async def test_l2cap_nowait_declines_while_the_previous_sdu_waits_for_credits(
    open_device: OpenDevice, config: dict[str, int], frames: int
) -> None:
    """A guest that stops reading stops giving credits back: once they are used up the
    channel holds the next SDU, and ``send_nowait`` declines (bumble would merge a second
    SDU into the held one) until the reader's credits let it leave; every message arrives
    whole and in order.  Messages of the link's size: one K-frame each with the default MTU
    and MPS, three with an MPS of 100 and an MTU of 298."""
    guest, host = await linked_pair(open_device, 40, **config)
    assert isinstance(host, L2capLink)
    assert -(-(host.mtu + 2) // host.channel.peer_mps) == frames
    sent: list[bytes] = []
    for i in range(20):
        message = bytes([i]) * host.mtu
        if not host.send_nowait(message):
            break
        sent.append(message)
    else:
        raise AssertionError("the channel never ran out of credits")
    assert not host.channel.drained.is_set()
    assert not host.send_nowait(b"more")  # still held: nothing sent
    rest = [bytes([100 + i]) * (host.mtu // 3) for i in range(5)]
    sending = asyncio.ensure_future(asyncio.gather(*(host.send(m) for m in rest)))
    got = await read(guest, len(sent) + len(rest))
    await asyncio.wait_for(sending, 2)
    assert got == sent + rest


async def test_l2cap_k_frames_are_bumbles_own_and_its_debug_line_stays(
    radio: VirtualRadio, open_device: OpenDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """An L2CAP message's K-frames, handed to bumble's host without the channel manager's
    debug line, are byte for byte the frames bumble's own path sends (DEBUG on for bumble's
    L2CAP logger), and that path still logs each frame."""
    guest, host = await linked_pair(open_device, 60, l2cap_mtu=4000, l2cap_mps=1000,
                                l2cap_credits=64)
    assert isinstance(host, L2capLink)
    air = on_air(radio)
    message = bytes(range(256)) * 10  # three K-frames
    await host.send(message)
    assert await read(guest, 1) == [message]
    quiet = list(air)
    air.clear()
    with caplog.at_level(logging.DEBUG, logger="bumble.l2cap"):
        await host.send(message)
        assert await read(guest, 1) == [message]
    sent = [p for p in quiet if len(p) > 100]
    assert len(sent) == 3 and sent == [p for p in air if len(p) > 100]
    assert sum("Sending L2CAP PDU" in r.getMessage() for r in caplog.records) >= 3



@pytest.mark.parametrize("overflow", ["past-mtu", "longer-than-said"])
@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
async def test_l2cap_frames_received_reach_the_link_as_bumble_gives_them(
    open_device: OpenDevice, caplog: pytest.LogCaptureFixture, debug: bool, overflow: str
) -> None:
    """The receiving side's K-frames, read at once when a frame is a whole SDU (DEBUG off) or
    by bumble (DEBUG on): the same messages reach the link, each frame takes one of the
    peer's credits, an SDU in two frames arrives once whole, and a frame that breaks the SDU
    rules (its length field past the channel's MTU, or saying less than the frame holds) is
    never a message: bumble's overflow ends the channel, and the link."""
    guest, host = await linked_pair(open_device, 80, l2cap_mtu=200, l2cap_mps=100,
                                    l2cap_credits=64)
    assert isinstance(guest, L2capLink) and isinstance(host, L2capLink)
    channel, rx = guest.channel, host.channel

    def frame(payload: bytes) -> None:  # one K-frame from the guest, as it is
        channel.credits -= 1
        channel.send_pdu(payload)

    def sdu(length: int, body: bytes) -> bytes:
        return length.to_bytes(2, "little") + body

    with caplog.at_level(logging.DEBUG if debug else logging.WARNING, logger="bumble.l2cap"):
        credits = rx.peer_credits
        frame(sdu(5, b"whole"))
        frame(sdu(3, b"one"))
        # a 150-byte SDU in two frames, the second looking like a whole SDU of its own
        tail = sdu(50, bytes(range(50)))
        frame(sdu(150, bytes(range(98))))
        frame(tail)
        assert await read(host, 3) == [b"whole", b"one", bytes(range(98)) + tail]
        assert rx.peer_credits == credits - 4
        if overflow == "past-mtu":
            frame(sdu(201, bytes(201)))  # one frame (bumble does not check its size)
        else:
            frame(sdu(3, b"onemore"))
        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(host.recv(), 2)
    assert rx.state != rx.State.CONNECTED


async def test_l2cap_single_frame_messages_take_a_credit_each_and_wait_behind_a_held_sdu(
    open_device: OpenDevice,
) -> None:
    """Messages of one K-frame each, sent at once: each takes one of the channel's credits,
    so with the reader stopped the channel runs out after as many messages as it had credits
    and ``send_nowait`` declines; data written while an SDU is held (straight to the
    channel, as only bumble's own ``write`` would) goes behind it, into it as bumble packs a
    stream, never ahead of it; all arrive in order."""
    guest, host = await linked_pair(open_device, 90, l2cap_credits=8)
    assert isinstance(host, L2capLink)
    channel = host.channel
    credits = channel.credits
    sent: list[bytes] = []
    for i in range(3 * credits):
        message = bytes([i]) * 10
        if not host.send_nowait(message):
            break
        sent.append(message)
    assert len(sent) == credits + 1  # the last one handed over is held for a credit
    assert channel.credits == 0 and not channel.drained.is_set()
    _write_sdu(channel, b"behind")  # as bumble's write: queued with the held one
    assert await read(guest, len(sent)) == [*sent[:-1], sent[-1] + b"behind"]
