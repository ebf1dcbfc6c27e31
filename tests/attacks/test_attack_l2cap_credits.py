"""Attack review 14b: a peer that sends L2CAP K-frames past the credits it was given, against
pairkit's L2CAP link (transports/ble/links.py: ``ChannelTap`` and its fast path of merge
d8b0cb6, bumble's ``LeCreditBasedChannel.on_pdu`` otherwise), and what the fast paths do with
crafted K-frames compared with bumble's own path.

LE credit-based flow control (Core 5.4 Vol 3 Part A §10.1): each K-frame takes one of the
sender's credits, and a device that receives a K-frame while the sender has no credit left
shall disconnect the channel.  bumble only logs a warning ("received LE frame when peer out of
credits") and delivers the frame; pairkit's link, which turns bumble's credit return off so
that credits go back only as the application reads (the module's "a sender whose peer stops
reading blocks once the credits are used up"), takes it too, on either path.  A peer that
ignores credits is therefore held back by nothing but ``max_rx_buffer``, which counts bytes:
an empty SDU (a 2-byte K-frame, the SDU length 0) counts nothing, so a link nobody reads
buffers empty messages without bound (each a deque entry, and a frame count).

Real bumble stacks on a virtual radio; the attacker is the guest's own bumble channel, its
K-frames sent by the channel's ``send_pdu`` without taking credits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from bumble import l2cap

from pairkit.pairing.errors import LinkClosedError, PairingTimeout
from pairkit.transports.ble.links import L2capLink
from pairkit.transports.bumble import BumbleTransport, VirtualRadio
from tests.ble_harness import OpenDevice, bumble_devices, linked_pair


@pytest.fixture
async def open_device() -> AsyncIterator[OpenDevice]:
    async with bumble_devices(VirtualRadio()) as factory:
        yield factory


def sdu(body: bytes) -> bytes:
    """A K-frame that is a whole SDU: the SDU length (2 bytes, little-endian), then the SDU
    (Core 5.4 Vol 3 Part A §3.4.3)."""
    return len(body).to_bytes(2, "little") + body


async def settle(link: L2capLink, count: int) -> None:
    """Until ``link`` has ended or holds ``count`` unread messages (at most 3 s)."""
    for _ in range(300):
        if link.closed or link.buffered >= count:
            return
        await asyncio.sleep(0.01)


async def l2cap_pair(open_device: OpenDevice, seed: int, **config: object
                     ) -> tuple[L2capLink, L2capLink]:
    guest, host = await linked_pair(open_device, seed, **config)
    assert isinstance(guest, L2capLink) and isinstance(host, L2capLink)
    return guest, host


@pytest.mark.parametrize("body", [b"", b"abc"], ids=["empty", "3-bytes"])
@pytest.mark.parametrize("debug", [False, True], ids=["fast-path", "bumble-path"])
async def test_k_frames_past_the_credits_given_end_the_link(
    open_device: OpenDevice, body: bytes, debug: bool
) -> None:
    """The host gives the guest 8 credits and never reads; the guest sends 40 one-frame SDUs
    regardless.  The 9th frame has no credit: the host ends the link (the spec's disconnect)
    and never holds more than 8 messages.  Fails on main d8b0cb6 on both paths (DEBUG off:
    the tap's fast path hands frames with a credit to the sink and the rest to bumble; DEBUG
    on: bumble's own on_pdu): all 40 are buffered and the link stays up, empty ones counting
    nothing against ``max_rx_buffer``."""
    guest, host = await l2cap_pair(open_device, 120, l2cap_credits=8)
    rx = host.channel
    assert rx.peer_credits == 8
    logger = logging.getLogger("bumble.l2cap")
    level = logger.level
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        for _ in range(40):
            guest.channel.send_pdu(sdu(body))  # no credit taken: the peer ignores them
        await settle(host, 40)
    finally:
        logger.setLevel(level)
    assert host.buffered <= 8, f"the host holds {host.buffered} messages past 8 credits"
    assert host.closed, "a peer past its credits keeps its link"


async def test_frames_within_the_credits_given_never_end_the_link(
    open_device: OpenDevice,
) -> None:
    """Pinned (holds on main): the guest's own sends (credits taken, one-frame and
    three-frame SDUs, the fast path and bumble's queue when the credits run short) against a
    host that reads slowly: credits come back as it reads, no frame is ever past them, every
    message arrives whole and in order and the link stays up."""
    guest, host = await l2cap_pair(open_device, 130, l2cap_mtu=200, l2cap_mps=100,
                                   l2cap_credits=6)
    sent = [bytes([i]) * (1 + (i * 53) % 198) for i in range(60)]

    async def sending() -> None:
        for message in sent:
            await guest.send(message)

    sender = asyncio.ensure_future(sending())
    got: list[bytes] = []
    for _ in sent:
        got.append(await asyncio.wait_for(host.recv(), 5))
        assert host.channel.peer_credits >= 0 and guest.channel.credits >= 0
        await asyncio.sleep(0)
    await asyncio.wait_for(sender, 5)
    assert got == sent
    assert not host.closed and not guest.closed


@pytest.mark.parametrize("debug", [False, True], ids=["fast-path", "bumble-path"])
async def test_crafted_k_frames_reach_the_link_as_bumble_gives_them(
    open_device: OpenDevice, debug: bool
) -> None:
    """Pinned (holds on main): frames the fast path might read differently from bumble, each
    sent with a credit: an empty SDU (delivered, as bumble does, an empty message), a 1-byte
    frame (no SDU length yet: bumble's path) completed by the next, a frame larger than the
    host's MPS (bumble does not check the MPS; neither path does), a whole-SDU-looking frame
    while an SDU is under way (appended to it).  The same messages on both paths."""
    guest, host = await l2cap_pair(open_device, 140, l2cap_mtu=200, l2cap_mps=100,
                                   l2cap_credits=64)
    channel = guest.channel

    def frame(pdu: bytes) -> None:
        channel.credits -= 1
        channel.send_pdu(pdu)

    logger = logging.getLogger("bumble.l2cap")
    level = logger.level
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        frame(sdu(b""))
        frame(b"\x04")  # half the SDU length field
        frame(b"\x00four")
        frame(sdu(bytes(150)))  # 152 bytes in one frame, past the host's MPS of 100
        inner = sdu(b"xy")
        frame((len(inner) + 3).to_bytes(2, "little") + b"abc")  # an SDU of 7, 3 so far
        frame(inner)  # looks whole, is the SDU's tail
        got = [await asyncio.wait_for(host.recv(), 2) for _ in range(4)]
    finally:
        logger.setLevel(level)
    assert got == [b"", b"four", bytes(150), b"abc" + inner]
    assert not host.closed
    await guest.close()
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(host.recv(), 2)


@contextlib.contextmanager
def says_mps(transport: BumbleTransport, mps: int) -> Iterator[None]:
    """The attacker's own bumble stack puts ``mps`` in the LE Credit Based Connection Request
    it sends (its channel's receive MPS, Core 5.4 Vol 3 Part A §4.22), whatever its spec says."""
    device = transport._device
    assert device is not None
    manager = device.l2cap_channel_manager
    send = manager.send_control_frame

    def rewrite(connection: Any, cid: int, frame: Any) -> None:
        if isinstance(frame, l2cap.L2CAP_LE_Credit_Based_Connection_Request):
            frame.mps = mps
        send(connection, cid, frame)

    manager.send_control_frame = rewrite  # type: ignore[method-assign]
    try:
        yield
    finally:
        manager.send_control_frame = send  # type: ignore[method-assign]


async def test_a_peer_mps_of_zero_never_makes_the_link_send_a_frame_per_credit(
    open_device: OpenDevice,
) -> None:
    """A guest whose connection request says MPS 0 (the specification's range is 23 to 65533,
    Core 5.4 Vol 3 Part A §4.22; bumble checks its own spec's, never the peer's).  On main
    d8b0cb6 the host takes the channel; once it has sent one message (``_write_sdu`` leaves
    an MPS below 1 to bumble's ``write``), bumble's ``process_output`` cuts the SDU into
    empty K-frames that never shorten it, one per credit: the guest's first credits, then
    65535 for each 14-byte credit frame the guest sends, in one synchronous loop (here 0.49 s
    of the host's event loop and 65535 ACL packets queued per frame: every other guest of
    that host waits).  The host must refuse the channel (or at least never send more K-frames
    than its message needs).  Fixed: the link ends at once when the peer's MTU or MPS is
    below 23; the host accepts no link from that guest."""
    host_transport = await open_device(170)
    guest_transport = await open_device(171)
    device = host_transport._device
    assert device is not None
    sent: list[int] = []  # every ACL SDU the host's device sends from now on
    hci_host = device.host
    send_acl_sdu = hci_host.send_acl_sdu

    def counting(handle: int, pdu: bytes) -> None:
        sent.append(len(pdu))
        send_acl_sdu(handle, pdu)

    hci_host.send_acl_sdu = counting  # type: ignore[method-assign]
    await host_transport.start_advertising(b"hello")
    accepting = asyncio.ensure_future(host_transport.accept(timeout=2))
    with says_mps(guest_transport, 0):
        guest = await guest_transport.connect(host_transport.address, timeout=5)
    assert isinstance(guest, L2capLink)
    host: L2capLink | None = None
    with contextlib.suppress(PairingTimeout):  # a host that refused the channel accepts none
        accepted = await accepting
        assert isinstance(accepted, L2capLink)
        host = accepted
    if host is not None:
        with contextlib.suppress(LinkClosedError):
            host.send_nowait(b"0123456789")
    before = len(sent)
    channel = guest.channel
    with contextlib.suppress(Exception):  # the connection may be gone already
        channel.send_control_frame(l2cap.L2CAP_LE_Flow_Control_Credit(
            identifier=channel.manager.next_identifier(channel.connection),
            cid=channel.source_cid, credits=65535))
    await asyncio.sleep(0.1)
    assert len(sent) - before <= 12, f"{len(sent) - before} ACL packets for one credit frame"
    assert host is None or host.closed, "the host kept a channel whose MPS is out of range"


async def test_a_host_answering_mps_zero_never_gets_a_guest_link(open_device: OpenDevice) -> None:
    """The other side of the test above: a host whose LE Credit Based Connection Response says
    MPS 0 (Core 5.4 Vol 3 Part A §4.23).  The guest's link ends at once (its connect fails or
    gives a link already closed) and nothing it sends is cut into empty K-frames.  Fails on
    main b1f9b5a (the guest's link open with the host's MPS 0); passes with the MTU/MPS check."""
    host_transport = await open_device(180)
    guest_transport = await open_device(181)
    device = host_transport._device
    assert device is not None
    manager = device.l2cap_channel_manager
    send = manager.send_control_frame

    def rewrite(connection: Any, cid: int, frame: Any) -> None:
        if isinstance(frame, l2cap.L2CAP_LE_Credit_Based_Connection_Response):
            frame.mps = 0
        send(connection, cid, frame)

    manager.send_control_frame = rewrite  # type: ignore[method-assign]
    await host_transport.start_advertising(b"hello")
    accepting = asyncio.ensure_future(host_transport.accept(timeout=2))
    guest = None
    with contextlib.suppress(Exception):  # a refused channel may fail the connect
        guest = await guest_transport.connect(host_transport.address, timeout=5)
    with contextlib.suppress(BaseException):
        await accepting
    if guest is not None:
        await asyncio.sleep(0.05)
        assert guest.closed, "the guest kept a channel whose MPS is out of range"
        with pytest.raises(LinkClosedError):
            await guest.send(b"0123456789")
