"""A PN gateway (``pairkit pn gateway``, docs/protocol.md §18) against strangers in reach: what
they can do to members that proved their link key.

The gateway is the real ``PnGateway`` behind the real accept loop over TCP on loopback
(tests/pn_harness.py), its PN holding members that come back by resume, as after a setup; the
strangers speak from 127.0.0.2, 127.0.0.3, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from pairkit.admission import Admission, AdmissionLimits
from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.cpns import PnAttach, PnData, PnDelivery
from pairkit.pairing.cpns.pinlink import ElementPin
from pairkit.pairing.errors import ErrorCode
from pairkit.pn import ChannelLink, PinDisplay, pn_receive, pn_send
from pairkit.securelink import SecureLink, confirm
from pairkit.transports.tcp import TcpLink
from tests.flood_harness import attacker_addresses, frame, link_from, wait_until
from tests.pn_harness import gateway_in_process, member_online

#: a small gateway: four links not yet authenticated at once
SMALL = AdmissionLimits(max_pending=4, per_address=4, first_flight=5.0, idle_grace=0.2)


def pin_offer(pin: str) -> bytes:
    """An element's PnPinOffer for ``pin``."""
    element = ElementPin(os.urandom(16), pin)
    element.start(0.0)
    (offer,) = element.outgoing()
    return offer


async def test_strangers_in_reach_cannot_push_an_online_member_off_its_gateway(
    tmp_path: Path,
) -> None:
    """The watch is online (it proved its link key: a resume and its READY records).  Strangers,
    one link each from six addresses, say "in reach, waiting" (``PnAttach``) and stay.  The
    watch is a proven member, not a link waiting for its first proof: it must not be the one
    evicted to make room for them, and the scale's message must reach it."""
    async with gateway_in_process(tmp_path, members=("watch", "scale"),
                                  admission=Admission(SMALL)) as gw:
        watch = await member_online(gw, "watch")
        await wait_until(lambda: any("watch is online" in s for s in gw.said), "watch online")
        strangers: list[TcpLink] = []
        try:
            for source in attacker_addresses(6):
                link = await link_from(source, "127.0.0.1", gw.port)
                strangers.append(link)
                await link.send(frame(PnAttach(os.urandom(16), "in reach", 1).encode())[4:])
                await wait_until(lambda: any("in reach, waiting" in s for s in gw.said),
                                 "attach")
                await asyncio.sleep(2 * SMALL.idle_grace)  # everyone silent a while
            got: list[Any] = []

            async def on_data(msg: Any) -> None:
                got.append(msg)

            receiving = asyncio.create_task(pn_receive(watch, on_data, count=1))
            scale = await member_online(gw, "scale")
            try:
                (record,) = gw.members["scale"].pns("member")
                report = await pn_send(scale, record, bytes.fromhex(gw.members["scale"].device_id),
                                       bytes.fromhex(gw.members["watch"].device_id), b"hello",
                                       timeout=10)
                assert report.delivered, report.reason
                await asyncio.wait_for(asyncio.shield(receiving), 10)
                assert [m.body for m in got] == [b"hello"]
            finally:
                await scale.close()
                receiving.cancel()
                with contextlib.suppress(BaseException):
                    await receiving
        finally:
            for link in strangers:
                with contextlib.suppress(Exception):
                    await link.close()
            await watch.close()


async def test_a_member_speaks_only_as_itself_only_in_its_pn_only_to_members(
    tmp_path: Path,
) -> None:
    """A member (the watch, holding its own link key) that lies in its routed messages: as the
    scale, for another PN, to a device that is no member.  Each gets "not delivered" with the
    reason and nothing reaches the lamp; its honest message reaches the lamp as the watch's."""
    async with gateway_in_process(tmp_path, members=("watch", "scale", "lamp")) as gw:
        ids = {n: bytes.fromhex(ks.device_id) for n, ks in gw.members.items()}
        (record,) = gw.members["watch"].pns("member")
        pn_id = bytes.fromhex(record.pn_id)
        lamp = await member_online(gw, "lamp")
        watch = await member_online(gw, "watch")
        got: list[Any] = []

        async def on_data(msg: Any) -> None:
            got.append(msg)

        receiving = asyncio.create_task(pn_receive(lamp, on_data, count=1))
        try:
            lies = {
                "a member can only send as itself": PnData(pn_id, ids["scale"], ids["lamp"], 1,
                                                           b"open"),
                "not this gateway's PN": PnData(os.urandom(16), ids["watch"], ids["lamp"], 2,
                                                b"open"),
                "no member of this PN has that id": PnData(pn_id, ids["watch"], os.urandom(16),
                                                           3, b"open"),
            }
            for reason, lie in lies.items():
                await watch.send(lie.encode())
                report = wire.decode(await watch.recv(10), PnDelivery)
                assert (report.msg_id, report.delivered, report.reason) == (
                    lie.msg_id, False, reason)
            # the honest one, with a src the gateway sets anyway
            report = await pn_send(watch, record, ids["watch"], ids["lamp"], b"hello", msg_id=4,
                                   timeout=10)
            assert report.delivered
            await asyncio.wait_for(asyncio.shield(receiving), 10)
            assert [(m.src, m.body) for m in got] == [(ids["watch"], b"hello")]
        finally:
            receiving.cancel()
            with contextlib.suppress(BaseException):
                await receiving
            await watch.close()
            await lamp.close()


async def test_only_the_opening_messages_open_a_link_and_never_twice_a_pin(
    tmp_path: Path,
) -> None:
    """A link may open only with a setup request, an attach, a resume, a PIN offer or a hello:
    routed data sent first, in the clear, is refused with an Abort and routes nothing; an
    element that secured its link with the PIN cannot offer a PIN again inside it (each PIN
    try must face a fresh PIN and count)."""
    now = [0.0]
    pins = PinDisplay("482913", show=lambda _pin: None, clock=lambda: now[0])
    async with gateway_in_process(tmp_path, members=("watch", "lamp"), pins=pins) as gw:
        ids = {n: bytes.fromhex(ks.device_id) for n, ks in gw.members.items()}
        (record,) = gw.members["watch"].pns("member")
        (source,) = attacker_addresses(1)
        link = await link_from(source, "127.0.0.1", gw.port)
        pipe = MessagePipe(link, guest=True)
        try:
            await pipe.send(PnData(bytes.fromhex(record.pn_id), ids["watch"], ids["lamp"], 1,
                                   b"open").encode())
            abort = wire.decode(await asyncio.wait_for(pipe.recv(), 10))
            assert isinstance(abort, wire.Abort) and abort.code == ErrorCode.PROTOCOL
        finally:
            await link.close()
        # The PIN channel, then a second PIN offer inside it.
        link = await link_from(source, "127.0.0.1", gw.port)
        pipe = MessagePipe(link, guest=True)
        try:
            element = ElementPin(os.urandom(16), "482913")
            await drive(element, pipe, idle=10)
            assert element.session is not None
            slink = SecureLink(link, element.session, timeout=10)
            await confirm(slink, transcript=pipe.transcript(), first=False)
            inner = MessagePipe(ChannelLink(slink, None), guest=True)
            await inner.send(pin_offer(pins.pin))
            abort = wire.decode(await asyncio.wait_for(inner.recv(), 10))
            assert isinstance(abort, wire.Abort) and abort.code == ErrorCode.PROTOCOL
        finally:
            await link.close()
        assert not any("routed" in s for s in gw.said)
