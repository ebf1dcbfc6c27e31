"""A field of another method in an Offer or an Accept (attack review of compare, session 7).

Each method's Offer and Accept carry the fields that method reads (docs/protocol.md §3); a
man in the middle, or a confused peer, that adds another method's field (compare's commitment
beside pin, clear's key in a compare Accept) must meet a decode error naming the field, never
its value, before anything is computed or anyone asked; before, the field was read as absent.
Played on the real machines with the in-memory shuttle (tests/pair_harness.py) and over a
loopback link under the driver.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.errors import DecodeError, ErrorCode, RemoteError
from pairkit.pairing.framing import Reassembler, fragment
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
)
from pairkit.pairing.negotiation import Method
from pairkit.transports.loopback import loopback_pair
from tests.attack_harness import Yes
from tests.pair_harness import make_pair

CASES = [
    (Method.PIN, Offer, {"pk": bytes(range(32))}),
    (Method.CLEAR, Offer, {"pk": bytes(range(32))}),
    (Method.COMPARE, Offer, {"cpace": bytes(range(32))}),
    (Method.QR, Offer, {"step_ms": 5000}),
    (Method.QR, Accept, {"commit": bytes(32)}),
    (Method.COMPARE, Accept, {"key": bytes(range(32))}),
    (Method.COMPARE, Accept, {"noise": bytes(48)}),
]
IDS = ["pin-offer-pk", "clear-offer-pk", "compare-offer-cpace", "qr-offer-step", "qr-accept-commit",
       "compare-accept-key", "compare-accept-noise"]


def adding(cls: type, **fields: Any) -> Callable[[str, bytes], bytes]:
    def tamper(_direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        return dataclasses.replace(msg, **fields).encode() if isinstance(msg, cls) else data

    return tamper


@pytest.mark.parametrize(("method", "cls", "fields"), CASES, ids=IDS)
def test_a_field_of_another_method_is_a_decode_error(
    method: Method, cls: type, fields: dict[str, Any]
) -> None:
    pair = make_pair(method, seed=21)
    result = pair.run(tamper=adding(cls, **fields))
    receiver = result.host_error if cls is Offer else result.guest_error
    assert isinstance(receiver, DecodeError), receiver
    assert f"({next(iter(fields))})" in str(receiver)  # the field's name ...
    assert bytes(range(32)).hex() not in str(receiver)  # ... never its value
    # The receiver has nothing (in qr the host is done once its Accept left; its session is
    # never confirmed: READY comes from the guest only after the Accept was read).
    assert (pair.host if cls is Offer else pair.guest).session is None
    assert result.asked == []  # nobody was asked anything


async def test_clears_key_in_a_compare_accept_over_a_link_is_refused_unread() -> None:
    """Over a loopback link under the driver: the guest stops with a decode error that names
    the field, the host hears it as one, and neither has a session."""
    config = PairingConfig(step_timeout=5.0)
    guest = GuestPairing(config, LocalIdentity.generate("George"), method=Method.COMPARE)
    host = HostPairing(config, LocalIdentity.generate("Paul"), HostState())
    link = loopback_pair(names=("guest", "host"))
    tamper = adding(Accept, key=bytes(range(32)))

    class Rewriting:
        """The host's side of the link, adding clear's key to its Accept on the way."""

        mtu = link.b.mtu
        whole = Reassembler(64 * 1024)

        async def send(self, piece: bytes) -> None:
            message = self.whole.feed(piece)
            if message is not None:
                for p in fragment(tamper("h2g", message), self.mtu):
                    await link.b.send(p)

        async def recv(self) -> bytes:
            return await link.b.recv()  # type: ignore[no-any-return]

    now = asyncio.get_running_loop().time()
    guest.start(now)
    host.start(now)
    try:
        guest_err, host_err = await asyncio.wait_for(asyncio.gather(
            drive(guest, MessagePipe(link.a, guest=True), delegate=Yes()),
            drive(host, MessagePipe(Rewriting(), guest=False), delegate=Yes()),
            return_exceptions=True,
        ), 10)
    finally:
        await link.aclose()
    assert isinstance(guest_err, DecodeError) and "(key)" in str(guest_err)
    assert bytes(range(32)).hex() not in str(guest_err)
    assert isinstance(host_err, RemoteError) and host_err.code == ErrorCode.DECODE
    assert guest.session is None and host.session is None
