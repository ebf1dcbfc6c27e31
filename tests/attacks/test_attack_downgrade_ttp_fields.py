"""Attack review atk19d, finding 3 (low): ttp's Offer and Accept carry ttp's fields only.

docs/security.md ("An Offer or Accept carries its own method's fields only"): a field another
method reads (clear's secret ``key``, pin's ``cpace``) beside a method's own is a decode error
that names the field, never its value, before anything is computed or anyone asked.  The rule
was kept by the five methods of :mod:`pairing.methods`, not by ``ttp``, whose machines
(:mod:`pairing.ttp`) read the same Offer and Accept: a value meant for another method crossed,
unread, in ttp's exchange, and the guest went on to ask the key server for a key.  Over a
loopback link under the driver, a man in the middle adds the field on the way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.errors import DecodeError
from pairkit.pairing.framing import Reassembler, fragment
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.ttp import TtpLinkConfig, TtpLinkGuest, TtpLinkHost
from pairkit.transports.loopback import loopback_pair

SECRET = bytes(range(32))

CASES = [
    ("h2g", Accept, {"key": SECRET}),  # clear's session key in ttp's Accept
    ("g2h", Offer, {"cpace": SECRET}),  # pin's CPace share in ttp's Offer
    ("g2h", Offer, {"pk": SECRET}),  # compare's ephemeral key in ttp's Offer
]


class AsksTheKeyServer:
    """The runtime's part: asked for the key server's SK (it never comes here)."""

    def __init__(self, asked: asyncio.Event) -> None:
        self.asked: list[Any] = []
        self._told = asked

    async def ttp_key(self, q: Any) -> Any:
        self.asked.append(q)
        self._told.set()
        await asyncio.sleep(3600)  # the key server never answers: the test ends it first


@pytest.mark.parametrize(("direction", "cls", "fields"), CASES,
                         ids=["accept-key", "offer-cpace", "offer-pk"])
async def test_a_field_of_another_method_in_ttp_is_refused_unread(
    direction: str, cls: type, fields: dict[str, Any]
) -> None:
    config = TtpLinkConfig(step_timeout=5.0)
    guest = TtpLinkGuest(config, LocalIdentity.generate("George"))
    host = TtpLinkHost(config, LocalIdentity.generate("Paul"))
    link = loopback_pair(names=("guest", "host"))
    ends = {"g2h": link.a, "h2g": link.b}
    mine = ends[direction]

    class Rewriting:
        """The sender's side of the link, adding the field on the way."""

        mtu = mine.mtu
        whole = Reassembler(64 * 1024)

        async def send(self, piece: bytes) -> None:
            message = self.whole.feed(piece)
            if message is not None:
                msg = wire.decode(message)
                if isinstance(msg, cls):
                    message = dataclasses.replace(msg, **fields).encode()
                for p in fragment(message, self.mtu):
                    await mine.send(p)

        async def recv(self) -> bytes:
            return await mine.recv()  # type: ignore[no-any-return]

    g_link = Rewriting() if direction == "g2h" else link.a
    h_link = Rewriting() if direction == "h2g" else link.b
    asked = asyncio.Event()  # the receiver asked the key server (the sender may, legitimately)
    g_ask = AsksTheKeyServer(asked if direction == "h2g" else asyncio.Event())
    h_ask = AsksTheKeyServer(asked if direction == "g2h" else asyncio.Event())
    now = asyncio.get_running_loop().time()
    guest.start(now)
    host.start(now)
    runs = [
        asyncio.ensure_future(drive(guest, MessagePipe(g_link, guest=True), delegate=g_ask)),
        asyncio.ensure_future(drive(host, MessagePipe(h_link, guest=False), delegate=h_ask)),
    ]
    receiving = runs[0] if direction == "h2g" else runs[1]
    key = asyncio.ensure_future(asked.wait())
    try:
        # Either the receiver ends (it refuses the message), or it asks the key server for a
        # key: whichever comes first (the deadline only bounds a test that would otherwise
        # hang).
        await asyncio.wait([receiving, key], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    finally:
        key.cancel()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await link.aclose()
    receiver = receiving
    who = g_ask if direction == "h2g" else h_ask
    assert who.asked == [], "the key server was asked for a key on a tampered message"
    assert receiver.done() and not receiver.cancelled(), "the receiver went on"
    err = receiver.exception()
    name = next(iter(fields))
    assert isinstance(err, DecodeError) and f"({name})" in str(err), err
    assert SECRET.hex() not in str(err)
    assert guest.session is None and host.session is None
