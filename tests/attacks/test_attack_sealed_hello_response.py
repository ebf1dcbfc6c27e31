"""Attacks on the hello response a host gives a member of its cloud (attack review atk19p,
finding 3, the CloudReply part; docs/protocol.md §10 "The hello response").

A host whose cloud a guest proved (a hint matched: ``3 proof``, ``4 index``) tells that guest
its name, methods and capabilities.  Over BLE the link is not encrypted before the pairing, so
said in the clear the name undid the private host's rotating address and hello tag for anyone in
radio range.  The description now crosses sealed (``8 sealed``) under a key only holders of the
matched cloud secret derive, bound to the exchange's two nonces.  What the seal must not buy an
attacker, each failing cleanly (a typed error, nothing stored, nobody asked):

* a bit flipped in the sealed part, over a real BLE link: the member stops at the reply, before
  the resume uses up a prekey;
* a relay that moves the sealed part of one host's reply (or of another reply of the same host)
  into another reply: it does not open;
* a stranger: a private host gives it no sealed part and no name (a visible host still says its
  name in the clear: it is open to strangers, public by choice);
* a former member holding a retired secret: it reads what a host sealed under that secret (the
  name it could read before too, as long as the host keeps the secret), and nothing of a reply
  sealed under the current one.

And what must keep working for a member: ``discover``'s names (a member's private host is
listed with its name: the member's probe hints its cloud).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from collections.abc import Callable
from typing import Any

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing import wire
from pairkit.pairing.cloud import (
    CloudGuest,
    CloudHello,
    CloudHost,
    CloudReply,
    HostInfo,
    Role,
    open_host_info,
)
from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.negotiation import Caps, Method
from pairkit.presence import discover
from pairkit.session import name_hosts
from tests.ble_harness import (
    World,
    on_air,
    paired_then_private,
    reopen,
)
from tests.pair_harness import shuttle

pytestmark = pytest.mark.timeout(60)

REPLY_HEAD = b"\x00\x01\x01\x18\x1f"  #: a CloudReply's version and type (§1.1), as encoded


def _reply_in(pdu: bytes) -> tuple[int, CloudReply] | None:
    """(offset, message) of the CloudReply a one-fragment L2CAP PDU carries, if it does."""
    at = pdu.find(REPLY_HEAD)
    if at < 1:
        return None
    try:
        return at - 1, wire.decode(pdu[at - 1:], CloudReply)  # type: ignore[return-value]
    except PairingError:
        return None


def _flip_the_description(world: World) -> list[CloudReply]:
    """From now on, flip one bit of the host's description in the first CloudReply on air
    (of the sealed part; of the name, were it in the clear).  Returns the replies as sent."""
    link = world.radio.link
    original = link.send_acl_data
    sent: list[CloudReply] = []

    def tamper(sender: Any, destination: Any, transport: Any, data: bytes) -> None:
        found = _reply_in(bytes(data)) if not sent else None
        if found is not None:
            at, reply = found
            sent.append(reply)
            part = reply.sealed if reply.sealed is not None else (reply.name or "").encode()
            where = bytes(data).find(part, at)
            assert part and where >= 0, "the reply carries no description to flip"
            i = where + len(part) // 2 if reply.sealed is not None else where + len(part) - 1
            data = bytes(data[:i]) + bytes([data[i] ^ 0x01]) + bytes(data[i + 1:])
        original(sender, destination, transport, data)

    link.send_acl_data = tamper  # type: ignore[method-assign]
    return sent


async def test_a_bit_flipped_in_the_sealed_description_stops_the_member_at_the_reply(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await paired_then_private(world, paul, tv)
    before = (reopen(paul).peers(), reopen(tv).peers())
    asked, paired = list(host.person.questions), len(host.results)
    sent = _flip_the_description(world)
    with pytest.raises(AuthenticationError, match="description"):
        await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                         target="Paul's phone", address=host.address)
    assert sent and sent[0].proof is not None, "the host did not recognise its member"
    # stopped at the reply: no resume ran, so no prekey was used up; nothing stored either side
    assert (reopen(paul).peers(), reopen(tv).peers()) == before
    assert host.person.questions == asked and len(host.results) == paired  # no session


async def test_a_private_host_gives_a_stranger_no_sealed_part_and_no_name(
    world: World, paul: Keystore, tv: Keystore, george: Keystore
) -> None:
    host = await paired_then_private(world, paul, tv)
    air = on_air(world.radio)
    with pytest.raises(PairingError):
        await world.join(reopen(george), await world.device(), host, method=Method.PIN)
    replies = [r for _, r in filter(None, map(_reply_in, air))]
    assert len(replies) == 1
    assert replies[0].proof is None and replies[0].sealed is None and replies[0].name is None
    assert paul.name.encode() not in b"".join(air)
    # a visible host still says its name in the clear to a stranger (public by choice)
    await host.presence.open_window(60.0)
    air.clear()
    found, _ = await discover(await world.device(), reopen(george), 0.5)
    named = await name_hosts(await world.device(), reopen(george), found)
    assert [f.name for f in named if f.address == host.address] == [paul.name]
    assert paul.name.encode() in b"".join(air)


async def test_a_member_s_discover_names_its_private_host_and_a_listener_hears_no_name(
    world: World, paul: Keystore, tv: Keystore, george: Keystore
) -> None:
    host = await paired_then_private(world, paul, tv)
    scanner = await world.device()
    asked, paired = list(host.person.questions), len(host.results)
    air = on_air(world.radio)
    found, _ = await discover(scanner, reopen(tv), 0.5)
    named = await name_hosts(scanner, reopen(tv), found)
    mine = [f for f in named if f.address == host.address]
    assert [f.name for f in mine] == [paul.name]
    assert paul.name.encode() not in b"".join(air)
    replies = [r for _, r in filter(None, map(_reply_in, air))]
    assert [r.sealed is not None for r in replies] == [True]  # the member's question, sealed
    # the host asked its owner nothing, and no session came of it
    assert host.person.questions == asked and len(host.results) == paired
    # a stranger's discover of the same private host: no name
    found, _ = await discover(scanner, reopen(george), 0.5)
    named = await name_hosts(scanner, reopen(george), found)
    assert [f.name for f in named if f.address == host.address] in ([None], [])


# -- machine level: relays and former members (the cloud machines of pairing/cloud.py) ----------

PAUL = HostInfo(name="Paul's phone", methods=frozenset({Method.PIN, Method.RESUME}),
                caps=Caps.DISPLAY)
ANN = HostInfo(name="Ann's laptop", methods=frozenset({Method.QR}), caps=Caps.SCAN_QR)
GS, PS, AS = b"G" * 32, b"P" * 32, b"A" * 32


def _mac(secrets: dict[str, bytes]) -> Callable[[str, bytes], bytes]:
    keys = {c: hmac.new(s, b"auth", hashlib.sha256).digest() for c, s in secrets.items()}
    return lambda cloud_id, data: hmac.new(keys[cloud_id], data, hashlib.sha256).digest()


def _rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


SECRETS = {"pauls-cloud": b"p" * 32, "anns-cloud": b"a" * 32}


def _host(cloud: str, info: HostInfo, static: bytes, seed: int, **kw: Any) -> CloudHost:
    host = CloudHost(clouds=(cloud,), mac=_mac(SECRETS), static=static, info=info,
                     open_to_strangers=lambda: False, rng=_rng(seed), **kw)
    host.start(0.0)
    return host


def _reply_to(host: CloudHost, hello: bytes) -> CloudReply:
    host.receive(hello, 0.0)
    return wire.decode(host.outgoing()[0], CloudReply)  # type: ignore[return-value]


def _member(seed: int, clouds: tuple[str, ...] = ("pauls-cloud", "anns-cloud"),
            secrets: dict[str, bytes] = SECRETS) -> tuple[CloudGuest, bytes]:
    guest = CloudGuest(name="Paul's TV", clouds=clouds, mac=_mac(secrets), static=GS,
                       rng=_rng(seed))
    guest.start(0.0)
    return guest, guest.outgoing()[0]


@pytest.mark.parametrize("other", ["another host", "the same host again"])
def test_a_relay_that_moves_a_sealed_description_into_another_reply_fails(other: str) -> None:
    """A relay hands the member's hello to two hosts (or twice to one) and answers with one
    reply whose description is the other's: the description does not open under this reply's
    nonces and fields, and the member stops before it proves anything."""
    guest, hello = _member(1)
    paul = _reply_to(_host("pauls-cloud", PAUL, PS, 2), hello)
    donor = (_reply_to(_host("anns-cloud", ANN, AS, 3), hello) if other == "another host"
             else _reply_to(_host("pauls-cloud", PAUL, PS, 4), hello))
    assert paul.sealed is not None and donor.sealed is not None
    forged = dataclasses.replace(paul, sealed=donor.sealed)
    with pytest.raises(AuthenticationError, match="description"):
        guest.receive(forged.encode(), 0.0)
    assert guest.failed and guest.host is None and guest.role is Role.STRANGER
    # it told the host why (authentication failed) and proved nothing: no CloudProof went out
    sent = [wire.decode(m) for m in guest.outgoing()]
    assert [(type(m), m.code) for m in sent] == [(wire.Abort, 4)]  # type: ignore[attr-defined]


def test_a_description_moved_with_its_nonce_still_fails_on_the_other_fields() -> None:
    """The nonce moved with the sealed part (the key then matches) but the proof and index are
    this host's: they are the seal's associated data."""
    guest, hello = _member(5, clouds=("pauls-cloud",))
    one = _reply_to(_host("pauls-cloud", PAUL, PS, 6), hello)
    two = _reply_to(_host("pauls-cloud", PAUL, b"Q" * 32, 7), hello)  # another key, same cloud
    forged = dataclasses.replace(one, nonce=two.nonce, sealed=two.sealed)
    with pytest.raises(AuthenticationError, match="description"):
        guest.receive(forged.encode(), 0.0)


def test_a_former_member_reads_what_a_retired_secret_sealed_and_nothing_newer() -> None:
    """Paul forgot a member: the cloud's secret was renewed (epoch 1), the old one retired.
    The former member, holding the old secret, still matches a hint (the host tries retired
    secrets for members not renewed yet) and so reads the name sealed under the old secret, as
    it could read it before the seal; a listener holding the old secret reads nothing of a
    current member's reply."""
    old = {"pauls-cloud": b"p" * 32}
    new = {"pauls-cloud": b"n" * 32}
    retired = _mac(old)

    def host(seed: int) -> CloudHost:
        h = CloudHost(clouds=("pauls-cloud",), mac=_mac(new), static=PS, info=PAUL,
                      open_to_strangers=lambda: False, retired=(("pauls-cloud", 0),),
                      retired_mac=lambda c, _e, d: retired(c, d), rng=_rng(seed))
        h.start(0.0)
        return h

    former = CloudGuest(name="Mallory's TV", clouds=("pauls-cloud",), mac=_mac(old), static=GS,
                        rng=_rng(8))
    h = host(9)
    former.start(0.0)
    shuttle(former, h)
    assert former.host == PAUL and h.retired_epoch == 0  # documented: as before the seal
    _current, hello = _member(10, clouds=("pauls-cloud",), secrets=new)
    reply = _reply_to(host(11), hello)
    ng = wire.decode(hello, CloudHello).nonce  # type: ignore[union-attr]
    assert open_host_info(_mac(new), "pauls-cloud", ng, reply) == PAUL
    with pytest.raises(AuthenticationError):
        open_host_info(retired, "pauls-cloud", ng, reply)
    assert b"Paul" not in reply.encode()
