"""Attack review atk19p, finding 3: what a passive listener in radio range reads in the clear
when a known device comes back over BLE.

A private host rotates its resolvable private address and its hello tag so that a listener in
radio range can follow it across nothing (docs/hello.md "Privacy", docs/security.md rule 8).
But a BLE link is not encrypted at the link layer unless the method is ``clear``
(``runtime/session.open_session``), and the messages before the pairing carried static
identifiers: a ``resume`` opened with ``ResumeMessage {src_id: G, dst_id: H}`` and the host
answered with ``src_id: H`` (docs/protocol.md §8); the host's ``CloudReply`` to a member carried
the host's name (§10); ``kk``'s Offer carries ``guest_id``; a known device's ``JoinRequest`` its
``device_id``.  So a listener who hears one reconnect learns the host's device id, and links every
address the host rotates through at which a known guest reconnects, for as long as the devices
live; and it tracks the guest device (its id is the same in every session), and who meets whom.

One test per message, each of a flow a known device really takes: a member resuming (the usual
reconnect), a member with no prekey left (kk), a guest granted an hour coming back (its
JoinRequest).  Over bumble virtual controllers: every L2CAP PDU the radio carries is what the
listener has.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TypeVar

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing import wire
from pairkit.pairing.cloud import JoinRequest
from pairkit.pairing.errors import PairingError
from pairkit.pairing.framing import Reassembler
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.negotiation import Caps, Method, methods_mask
from tests.ble_harness import (
    World,
    comes_back,
    make_keystore,
    make_member,
    on_air,
    paired_then_private,
    without_prekeys,
)

pytestmark = pytest.mark.timeout(60)

M = TypeVar("M")


def _leaked(air: list[bytes], identifying: dict[str, bytes]) -> list[str]:
    heard = b"".join(air)
    assert heard, "nothing was heard on air"
    return [what for what, value in identifying.items() if value in heard]


def _ids(host_ks: Keystore, guest_ks: Keystore) -> dict[str, bytes]:
    return {
        "the host's device id": bytes.fromhex(host_ks.device_id),
        "the guest's device id": bytes.fromhex(guest_ks.device_id),
    }


async def test_a_listener_hears_no_device_id_when_a_member_resumes(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await paired_then_private(world, paul, tv)
    air = on_air(world.radio)  # the listener, from now on
    for _ in range(2):
        assert await comes_back(world, tv, host, paul) is Method.RESUME
        await host.presence.open_window(0)  # a rotation between the two sessions
    leaked = _leaked(air, _ids(paul, tv))
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


async def test_a_listener_hears_not_the_hosts_name_when_a_member_comes_back(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await paired_then_private(world, paul, tv)
    air = on_air(world.radio)
    assert await comes_back(world, tv, host, paul) is Method.RESUME
    leaked = _leaked(air, {"the host's name": paul.name.encode()})
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


async def test_a_listener_hears_no_device_id_nor_name_when_a_member_without_prekeys_reconnects(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    """kk: the guest's static key travels encrypted (Noise IK), and neither Announce names its
    device (the CloudReply's part is sealed: test_attack_sealed_hello_response.py)."""
    host = await paired_then_private(world, paul, tv)
    without_prekeys(tv, paul)  # none left: kk
    air = on_air(world.radio)
    assert await comes_back(world, tv, host, paul) is Method.KK
    names = {"the host's name": paul.name.encode(), "the member's name": tv.name.encode()}
    leaked = _leaked(air, _ids(paul, tv) | names)
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


def _decoded(air: list[bytes], kind: type[M]) -> list[tuple[bytes, M]]:
    """Each ``kind`` message the listener decodes from what it heard, with the bytes it came
    in: such a message fits one PDU, its fragment last in it (the L2CAP and ATT headers
    before)."""
    found = []
    for pdu in air:
        for start in range(len(pdu)):
            with contextlib.suppress(PairingError):
                message = Reassembler(1 << 16).feed(pdu[start:])
                if message is not None and isinstance(m := wire.decode(message), kind):
                    found.append((message, m))
                    break
    return found


def _join_requests(air: list[bytes]) -> list[tuple[bytes, JoinRequest]]:
    return _decoded(air, JoinRequest)


async def test_a_listener_reads_no_device_id_in_a_returning_guests_join_request(
    world: World, paul: Keystore, george: Keystore
) -> None:
    """George, let in for an hour by PIN, comes back to Paul's host, private by now: his
    JoinRequest says he paired before, and must not say who he is (it seals his id to the
    host, docs/protocol.md §10).  The narrow half of the test below, which waits for the
    resume header too."""
    host = await paired_then_private(world, paul, george)
    air = on_air(world.radio)
    assert await comes_back(world, george, host, paul) is Method.RESUME
    (heard, request), = _join_requests(air)
    assert request.reconnect  # the returning device's request, heard whole
    assert bytes.fromhex(george.device_id) not in heard
    assert bytes.fromhex(paul.device_id) not in heard
    # nor its name (the host asks nobody about a returning device: it has no use for it)
    assert request.name == "" and george.name.encode() not in heard


async def test_a_listener_hears_no_device_id_when_a_guest_comes_back(
    world: World, paul: Keystore, george: Keystore
) -> None:
    """George, let in for an hour, comes back: neither his JoinRequest nor the resume that
    follows names either device."""
    host = await paired_then_private(world, paul, george)
    air = on_air(world.radio)
    assert await comes_back(world, george, host, paul) is Method.RESUME
    leaked = _leaked(air, _ids(paul, george))
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


async def test_a_listener_reads_no_settings_in_kks_announcements(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    """atk22c, finding 2: a member with no prekey left comes back by kk twice, to Paul's host,
    private by now, that rotates its address between the two.  kk's Offer and Accept carry an
    announcement in the clear, before Noise IK's encryption; they carried each side's allowed
    methods and capabilities, a few bits of a private host's settings, the same at each kk
    return: a listener linked the host's addresses by them, and learnt its settings.  Now a kk
    announcement says kk and nothing else (docs/protocol.md §8), on either side."""
    host = await paired_then_private(world, paul, tv)
    air = on_air(world.radio)
    for _ in range(2):
        without_prekeys(tv, paul)  # none left: kk
        assert await comes_back(world, tv, host, paul) is Method.KK
        await host.presence.open_window(0)  # a rotation between the two returns
    offers, accepts = _decoded(air, Offer), _decoded(air, Accept)
    assert len(offers) == len(accepts) == 2, "the listener heard every kk Offer and Accept"
    for side, heard in (("guest", offers), ("host", accepts)):
        for _, msg in heard:
            hello = msg.hello
            assert hello.method is Method.KK
            assert hello.methods == methods_mask({Method.KK}), (
                f"the {side}'s allowed methods in the clear: {hello.methods:#x}"
            )
            assert hello.caps == 0, f"the {side}'s capabilities in the clear: {Caps(hello.caps)!r}"
            assert hello.name == ""
    # Two returns to the host at two addresses: its announcements differ by the nonce only.
    fixed = {(m.hello.caps, m.hello.methods, m.hello.method, m.hello.name) for _, m in accepts}
    assert len(fixed) == 1 and len({m.hello.nonce for _, m in accepts}) == 2


async def _kk_return_on_air(tmp: Path, host_name: str, member_name: str) -> list[bytes]:
    """What a listener hears when a member named ``member_name``, with no prekey left, comes
    back by kk to a private host named ``host_name`` (each in a world of its own)."""
    world = World()
    try:
        host_ks = make_keystore(tmp / "host" / "keystore.pk", host_name, cloud="home")
        member_ks = make_keystore(tmp / "member" / "keystore.pk", member_name, cloud="own")
        make_member(host_ks, member_ks)
        host = await paired_then_private(world, host_ks, member_ks)
        without_prekeys(member_ks, host_ks)  # none left: kk
        air = on_air(world.radio)
        assert await comes_back(world, member_ks, host, host_ks) is Method.KK
        return air
    finally:
        await world.close()


#: a one-byte name and one of the longest (64 characters)
_SHORT, _LONG = "a", "L" * 64


async def test_a_listener_reads_no_name_length_in_kks_offer_and_accept(tmp_path: Path) -> None:
    """Attack review atk23, finding 1: kk's Offer and Accept carry each side's Identity
    (Noise IK's encrypted payloads), whose lengths followed the names': a one-byte name made a
    366-byte Offer, a 29-byte one 395, the same at every return, so a listener linked a private
    host's rotating addresses (and a member's returns) by them.  Two members named 1 and 64
    bytes come back by kk, each to a host named the other way: every kk Offer and Accept the
    listener hears is as long in both."""
    heard = {}
    for host_name, member_name in ((_SHORT, _LONG), (_LONG, _SHORT)):
        air = await _kk_return_on_air(tmp_path / str(len(heard)), host_name, member_name)
        offers, accepts = _decoded(air, Offer), _decoded(air, Accept)
        assert len(offers) == len(accepts) == 1, "the listener heard the kk Offer and Accept"
        (offer, _), (accept, _) = offers[0], accepts[0]
        heard[member_name] = (len(offer), len(accept))
    assert heard[_SHORT] == heard[_LONG], f"kk's (Offer, Accept) lengths by name: {heard}"


async def test_a_listener_hears_kk_returns_of_members_named_apart_alike(
    tmp_path: Path,
) -> None:
    """The same over every PDU of the return: two members of one host's name, named 1 and 64
    bytes, come back by kk; each PDU the listener hears is as long in both returns."""
    lengths = {}
    for i, member_name in enumerate((_SHORT, _LONG)):
        air = await _kk_return_on_air(tmp_path / str(i), "Paul's phone", member_name)
        lengths[member_name] = [len(pdu) for pdu in air]
    assert lengths[_SHORT] == lengths[_LONG]
