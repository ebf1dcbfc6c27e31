"""What an attacker does with a returning device's id once it no longer crosses in the clear
(attack review atk19p, finding 3; session 22, docs/protocol.md §8 and §10).

A known device coming back seals its device id to the host's static key in its ``JoinRequest``
(HPKE, bound to this link's cloud-step nonces), and ``kk`` runs Noise IK, whose first message
carries the guest's static key encrypted.  Each test plays an attacker against the library's
host over TCP, recording and rewriting frames with the harness's proxy, and checks the attack
fails cleanly: a typed error, nobody asked, nothing granted, nothing stored:

* a recorded ``JoinRequest`` replayed into another link (its nonces are not this link's);
* a bit flipped in the sealed id on the way;
* another known peer sealing a member's id for its own link, then pairing as itself;
* a recorded kk ``Offer`` put in place of another known peer's on its own link;
* a stranger who gets past the cloud step with a known device's sealed id, then runs kk with
  its own static key (unknown to the host).

Paul joined George's host yesterday by PIN, as a guest for an hour (Ringo too, where a second
known device is needed); George's owner refuses every question, and counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit import peers as store
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudHello, CloudReply, JoinRequest, Role
from pairkit.pairing.errors import ErrorCode, PairingError, PairingTimeout
from pairkit.pairing.messages import Offer
from pairkit.pairing.methods import KnownPeer, LocalIdentity
from pairkit.pairing.negotiation import Method

from ..attack_harness import (
    STEP,
    Proxy,
    as_frame,
    evil_join,
    frame,
    message_of,
    read_frame,
)
from ..known_device_harness import TrustsHisLaptop as Owner
from ..known_device_harness import (
    address_of,
    device,
    paul_joined_georges_host,
)

pytestmark = pytest.mark.timeout(90)

#: the answer an unknown returning device gets (pairing/cloud.py, CloudHost)
UNKNOWN = "this host does not know this device, or its access has ended"


def peers_view(george: pairkit.Device) -> list[tuple[Any, ...]]:
    """Everything George's keystore holds of its peers, as comparable values."""
    ks = george.keystore
    ks.follow()
    return sorted((p.id, p.name, p.static_public, p.signing_public, p.authenticated,
                   p.their_prekeys, p.our_prekeys, dict(p.extra), p.last_seen)
                  for p in ks.peers())


@contextlib.asynccontextmanager
async def georges_host(george: pairkit.Device, owner: Owner) -> AsyncIterator[pairkit.Host]:
    """George's host, open to strangers (a request let through would reach the owner),
    taking every guest that pairs, one after another, while the body runs."""
    async with george.host("tcp:127.0.0.1:0", methods=("pin", "resume"), pin="135790",
                           delegate=owner, visible=600.0, step_timeout=STEP) as host:

        async def keep_accepting() -> None:
            while True:
                async with await host.accept():
                    pass

        serving = asyncio.ensure_future(keep_accepting())
        try:
            yield host
        finally:
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving


def spec_of(host: pairkit.Host) -> str:
    return "tcp:" + host.address.removeprefix("tcp:")


def decoded(piece: bytes) -> Any:
    """The handshake message a frame carries (None: a record of the secure channel, or a
    fragment)."""
    try:
        msg = message_of(piece)
        return None if msg is None else wire.decode(msg)
    except PairingError:
        return None


@contextlib.asynccontextmanager
async def proxied(
    host: pairkit.Host, hook: Callable[[str, int, bytes], bytes | None] | None = None
) -> AsyncIterator[Proxy]:
    proxy = await Proxy(address_of(host), hook).start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def comes_back(paul: pairkit.Device, where: str, method: str) -> PairingError | None:
    """Paul's device joins George by ``method`` at ``where``: the error it ended with."""
    try:
        async with await paul.join("George", transport=where, method=method,
                                   step_timeout=STEP):
            return None
    except PairingError as exc:
        return exc


async def recorded_come_back(paul: pairkit.Device, host: pairkit.Host, method: str
                             ) -> list[bytes]:
    """Paul comes back by ``method`` through a recording proxy: his frames, in order."""
    async with proxied(host) as proxy:
        assert await comes_back(paul, proxy.target, method) is None
        await asyncio.sleep(0)  # the proxy's last frames
        return [piece for d, piece in proxy.messages(0) if d == "g2h"]


async def answer_to(host: pairkit.Host, hello: bytes, request: Callable[[bytes, bytes], bytes]
                    ) -> Any:
    """A raw cloud step: ``hello`` (a CloudHello frame), then ``request(n_G, n_H)``'s frame;
    the host's decoded answer to it."""
    reader, writer = await asyncio.open_connection(*address_of(host))
    try:
        writer.write(frame(hello))
        reply = decoded(await asyncio.wait_for(read_frame(reader), STEP))
        assert isinstance(reply, CloudReply), reply
        ng = decoded(hello).nonce
        writer.write(frame(request(ng, reply.nonce)))
        await writer.drain()
        return decoded(await asyncio.wait_for(read_frame(reader), STEP))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def hello_frame() -> bytes:
    return as_frame(CloudHello(os.urandom(16)).encode())


async def test_a_join_request_replayed_into_another_link_is_an_unknown_device(
    tmp_path: Path,
) -> None:
    """Mallory recorded Paul's come-back (resume) on air; she replays his JoinRequest on a
    link of her own.  The host must answer as to an unknown returning device, before anyone
    is asked, and grant and store nothing: the sealed id opens on Paul's link only."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    owner = Owner()
    async with georges_host(george, owner) as host:
        pieces = await recorded_come_back(paul, host, "resume")
        (recorded,) = [p for p in pieces if isinstance(decoded(p), JoinRequest)]
        before = peers_view(george)
        replayed = await answer_to(host, hello_frame(), lambda _g, _h: recorded)
        unknown = await answer_to(host, hello_frame(), lambda _g, _h: as_frame(JoinRequest(
            name="", wants=Role.GUEST, reconnect=True, method=int(Method.RESUME)
        ).encode()))
    assert isinstance(replayed, wire.Abort), replayed
    assert (replayed.code, replayed.reason) == (unknown.code, unknown.reason)
    assert replayed.code is ErrorCode.NOT_FOUND and UNKNOWN in replayed.reason
    assert owner.asked == []
    assert peers_view(george) == before


async def test_a_bit_flipped_in_the_sealed_id_is_refused_cleanly(tmp_path: Path) -> None:
    """An on-path attacker flips one bit of Paul's sealed id: Paul's come-back ends with the
    unknown-device answer (no oracle), nobody is asked, and neither side stores anything."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)

    def flip(direction: str, index: int, piece: bytes) -> bytes:
        request = decoded(piece) if direction == "g2h" else None
        if not isinstance(request, JoinRequest):
            return piece
        field = "sealed_id" if hasattr(request, "sealed_id") else "device_id"
        value = bytearray(getattr(request, field))
        value[len(value) // 2] ^= 0x10
        flipped = dataclasses.replace(request, **{field: bytes(value)})
        return as_frame(flipped.encode())

    owner = Owner()
    async with georges_host(george, owner) as host:
        before, pauls = peers_view(george), peers_view(paul)
        async with proxied(host, flip) as proxy:
            error = await comes_back(paul, proxy.target, "resume")
    assert error is not None and error.code is ErrorCode.NOT_FOUND, error
    assert UNKNOWN in str(error)
    assert owner.asked == []
    assert peers_view(george) == before and peers_view(paul) == pauls


@pytest.mark.parametrize("method", [Method.KK, Method.RESUME])
async def test_another_known_peer_sealing_a_members_id_gets_nothing(
    tmp_path: Path, method: Method
) -> None:
    """Ringo, another device George's host knows, seals Paul's id (ids are no secret from the
    devices a host paired with) for his own link, is answered Paul's grant without a prompt,
    and pairs by ``method`` as himself: the pairing must fail, grant nothing and store
    nothing (George's records of Paul and Ringo unchanged; by resume the host consumes one of
    Ringo's prekeys before answering, rule 4, and nothing else moves)."""
    paul, george, ringo = (device(tmp_path, n) for n in ("Paul", "George", "Ringo"))
    await paul_joined_georges_host(paul, george)
    await paul_joined_georges_host(ringo, george)
    owner = Owner()
    async with georges_host(george, owner) as host:
        before = peers_view(george)
        ringos_george = store.known_peer(ringo.keystore, bytes.fromhex(george.device_id))
        assert ringos_george is not None
        if method is Method.KK:
            ringos_george = dataclasses.replace(ringos_george, their_prekeys=())
        out = await evil_join(
            address_of(host), store.local_identity(ringo.keystore), method,
            peer=ringos_george, claim=bytes.fromhex(paul.device_id), says_method=method,
        )
    assert out.error is not None and out.membership is None, out
    assert not isinstance(out.error, PairingTimeout), out.error
    assert owner.asked == []
    after = peers_view(george)
    if method is Method.RESUME:
        before = [row[:6] + row[7:] for row in before]
        after = [row[:6] + row[7:] for row in after]
    assert after == before


async def test_a_recorded_kk_offer_in_another_link_is_refused(tmp_path: Path) -> None:
    """Mallory recorded Paul's kk come-back; Ringo, known too, comes back by kk and she puts
    Paul's recorded Offer in place of Ringo's.  Its Noise message is bound to Paul's link (the
    hello hash's context holds that link's nonces): the host refuses it, asks nobody, and
    stores nothing."""
    paul, george, ringo = (device(tmp_path, n) for n in ("Paul", "George", "Ringo"))
    await paul_joined_georges_host(paul, george)
    await paul_joined_georges_host(ringo, george)
    owner = Owner()
    async with georges_host(george, owner) as host:
        pieces = await recorded_come_back(paul, host, "kk")
        (recorded,) = [p for p in pieces if isinstance(decoded(p), Offer)]
        before = peers_view(george)

        def swap(direction: str, index: int, piece: bytes) -> bytes:
            return recorded if isinstance(decoded(piece), Offer) else piece

        async with proxied(host, swap) as proxy:
            error = await comes_back(ringo, proxy.target, "kk")
    assert error is not None and not isinstance(error, PairingTimeout), error
    assert owner.asked == []
    assert peers_view(george) == before


async def test_a_stranger_past_the_cloud_step_with_an_unknown_static_key_is_refused(
    tmp_path: Path,
) -> None:
    """Mallory knows Paul's id and George's static key (both public enough): she seals Paul's
    id, is let past the cloud step (the claim oracle, docs/security.md rule 8), and runs kk
    with her own static key in Noise IK's first message.  The host must refuse her as a
    device it does not know, with no prompt, and store nothing."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    ks = george.keystore
    georges = KnownPeer(bytes.fromhex(george.device_id), "George", ks.static_public,
                        ks.signing_public)
    owner = Owner()
    async with georges_host(george, owner) as host:
        before = peers_view(george)
        out = await evil_join(
            address_of(host), LocalIdentity.generate("Mallory"), Method.KK, peer=georges,
            claim=bytes.fromhex(paul.device_id), says_method=Method.KK,
        )
    assert out.error is not None and out.error.code is ErrorCode.NOT_FOUND, out
    assert "does not know the guest" in str(out.error)
    assert out.session is None and out.membership is None
    assert owner.asked == []
    assert peers_view(george) == before
