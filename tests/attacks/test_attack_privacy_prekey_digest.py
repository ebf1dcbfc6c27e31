"""Attack review atk23, finding F2: a prekey digest heard twice links two of a host's addresses.

A resume's INIT names no device; the host finds the guest by the digest ``d`` of the prekey it
nominates (docs/protocol.md §8).  The guest used to forget ``d`` only after a confirmed
session, so a link that died after the INIT (a natural loss, or one PDU jammed by an active
attacker) made the next attempt nominate the same ``d``, through the host's next address: a
listener in radio range linked the host's two addresses and the guest's two attempts.  Now a
digest is spent once it has been sent (docs/security.md, rule 4): whatever ended the attempt,
the next nominates another, or runs kk.

Over bumble virtual radios: a jammer drops one PDU (the INIT, or the host's OKAY), the host
rotates its address, the member comes back.  The listener hears every PDU the radio carries,
the jammed one included (it hears before the jammer acts).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import PairingConfig
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.peers import find_peer
from pairkit.session import GuestSide, open_session
from tests.ble_harness import (
    SPEC,
    Person,
    World,
    comes_back,
    on_air,
    paired_then_private,
    reopen,
)

pytestmark = pytest.mark.timeout(60)


def _jam(world: World, digest: bytes, which: int) -> dict[str, int]:
    """Drop the ``which``-th PDU (1: the guest's INIT; 2: the host's answer) that carries
    ``digest``; the count of PDUs dropped so far."""
    link = world.radio.link
    deliver = link.send_acl_data
    seen = {"with_digest": 0, "dropped": 0}

    def jammer(sender: Any, destination: Any, transport: Any, data: bytes) -> None:
        if digest in bytes(data):
            seen["with_digest"] += 1
            if seen["with_digest"] == which:
                seen["dropped"] += 1
                return
        deliver(sender, destination, transport, data)

    link.send_acl_data = jammer  # type: ignore[method-assign]
    return seen


def _held(guest_ks: Keystore, host_ks: Keystore) -> list[bytes]:
    record = reopen(guest_ks).peer_by_id(host_ks.device_id)
    assert record is not None
    return list(record.their_prekeys)


@pytest.mark.parametrize("cut", ["after-init", "after-okay"])
async def test_a_digest_is_never_heard_twice_after_a_link_cut(
    world: World, paul: Keystore, tv: Keystore, cut: str
) -> None:
    host = await paired_then_private(world, paul, tv)
    held = _held(tv, paul)
    assert len(held) >= 2, "the member needs a second prekey to resume with"
    d = held[0]  # the one the next resume nominates (the oldest)
    jammed = _jam(world, d, 1 if cut == "after-init" else 2)
    air = on_air(world.radio)  # the listener, outside the jammer: it hears the jammed PDU too
    with contextlib.suppress(Exception):  # the first attempt dies: its link lost a PDU
        await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                         target=paul.name, address=host.address, step_timeout=2.0)
    assert jammed["dropped"] == 1, "the jammer never dropped the PDU it waited for"
    first = len(air)
    assert any(d in pdu for pdu in air), "the first attempt never sent the digest"
    # Spent once sent, whatever ended the attempt: the keystore says so (a new process too).
    assert d not in _held(tv, paul)
    old_address = host.address
    await host.presence.open_window(0)  # the host rotates between the two attempts
    assert host.address != old_address
    method = await comes_back(world, tv, host, paul)
    again = [pdu for pdu in air[first:] if d in pdu]
    assert again == [], f"the digest was heard again, at {host.address} ({len(again)} PDUs)"
    # The next prekey still resumes: the host holds it (it never saw it nominated).
    assert method is Method.RESUME


async def test_a_member_whose_digests_were_all_spent_comes_back_by_kk_then_resumes(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    """The way back: a jammer that spends every digest costs the member one kk, which gives
    it fresh prekeys; its next come-back resumes again."""
    host = await paired_then_private(world, paul, tv)
    for d in _held(tv, paul):
        jammed = _jam(world, d, 1)
        with contextlib.suppress(Exception):
            await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                             target=paul.name, address=host.address, step_timeout=2.0)
        assert jammed["dropped"] == 1
    assert _held(tv, paul) == []
    assert await comes_back(world, tv, host, paul) is Method.KK
    assert _held(tv, paul), "kk gave no fresh prekeys"
    assert await comes_back(world, tv, host, paul) is Method.RESUME


async def test_a_retry_in_one_process_with_the_peer_read_before_nominates_another_digest(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    """A caller that retries with the same GuestSide (runtime/groups.py's busy pauses) holds the
    peer as read before the first attempt: the digest that attempt sent is skipped anyway."""
    host = await paired_then_private(world, paul, tv)
    ks = reopen(tv)
    peer = find_peer(ks, paul.device_id)
    assert peer is not None and len(peer.their_prekeys) >= 2
    d = peer.their_prekeys[0]
    side = GuestSide(ks, PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS),
                     Method.RESUME, transport=SPEC, peer=peer, step_timeout=2.0)
    guest = await world.device()
    jammed = _jam(world, d, 1)
    link = await guest.connect(host.address, timeout=5.0)
    try:
        with pytest.raises(PairingError):
            await open_session(link, side, delegate=Person())
    finally:
        with contextlib.suppress(PairingError):
            await link.close()
    assert jammed["dropped"] == 1
    air = on_air(world.radio)
    link = await guest.connect(host.address, timeout=5.0)
    try:
        done = await open_session(link, side, delegate=Person())
        assert done.session.method is Method.RESUME
        await done.channel.close()
    finally:
        with contextlib.suppress(PairingError):
            await link.close()
    assert air and not any(d in pdu for pdu in air), "the retry nominated the digest again"
