"""A resume names no device (attack review atk19p, finding 3; docs/protocol.md §8): what an
attacker can do with the one thing the INIT still says, the nominated prekey digest ``d``.

The host finds the guest by ``d`` alone (each digest was given to one peer).  Over loopback
links whose every message a listener keeps (the medium's tap), against the library host:

* an INIT heard on air, replayed by someone repeating the member's id, finds its prekey gone
  (FAIL), and nothing is stored;
* another known peer of the host nominating the digest it heard the member use cannot
  complete, nor can it with one of the member's prekeys not used yet (as if it had kept the
  member's INIT from the host): the member's record keeps its keys and grant;
* a digest held by nobody, and one held by two records (which the host will not guess
  between), get FAIL, and the guest falls back to kk;
* the host's index of digests follows another process's save: a peer forgotten there is not
  found here, one added there is;
* a listener reads no device id in any resume message.
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
from pairkit import peers
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest
from pairkit.pairing.crypto import digest, x25519_keypair
from pairkit.pairing.errors import PairingError
from pairkit.pairing.framing import Reassembler
from pairkit.pairing.messages import ResumeHeader, ResumeKind, ResumeMessage
from pairkit.pairing.negotiation import Method
from pairkit.transports.loopback import default_medium

pytestmark = pytest.mark.timeout(60)

PASSPHRASE = "a passphrase"
STEP = 5.0


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", PASSPHRASE, name=name, kdf=Argon2Params.cheapest()
    )


class Owner(pairkit.Agree):
    """Paul: lets guests in for an hour, and notes what the host tells him."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[object] = []

    async def on_event(self, event: object) -> None:
        self.events.append(event)

    def failed(self) -> int:
        return sum(type(e).__name__ == "GuestFailed" for e in self.events)


class Air:
    """What a listener keeps: every whole pairing message each way on every loopback link
    (a direction stops being read once its bytes are no longer pairing messages: the secure
    channel's records)."""

    def __init__(self) -> None:
        self._joiners: dict[tuple[str, str], Reassembler | None] = {}
        self.messages: list[bytes] = []

    def __call__(self, src: str, dst: str, data: bytes) -> bytes:
        joiner = self._joiners.setdefault((src, dst), Reassembler())
        if joiner is not None:
            try:
                whole = joiner.feed(data)
            except PairingError:
                self._joiners[(src, dst)] = None
            else:
                if whole is not None:
                    self.messages.append(whole)
        return data

    def resumes(self) -> list[ResumeMessage]:
        out = []
        for data in self.messages:
            with contextlib.suppress(PairingError):
                msg = wire.decode(data)
                if isinstance(msg, ResumeMessage):
                    out.append(msg)
        return out


@dataclasses.dataclass
class Scene:
    """Paul hosts on ``loopback:<name>``; Tina and George paired with him earlier (each a guest
    for an hour: each comes back with no question, as a member does)."""

    paul: pairkit.Device
    tina: pairkit.Device
    george: pairkit.Device
    host: Any
    target: str
    air: Air
    owner: Owner

    def ours(self, guest: pairkit.Device) -> list[bytes]:
        """The digests of the prekeys Paul holds for ``guest``, as his keystore file says."""
        record = Keystore.open(self.paul.keystore.path, PASSPHRASE).peer_by_id(guest.device_id)
        assert record is not None
        return [bytes(r[0]) for r in record.our_prekeys]

    def record(self, guest: pairkit.Device) -> Any:
        return Keystore.open(self.paul.keystore.path, PASSPHRASE).peer_by_id(guest.device_id)

    async def resume(self, guest: pairkit.Device) -> str:
        """``guest`` comes back (by name): the method the session ran."""
        joining = asyncio.ensure_future(
            guest.join("Paul", transport=self.target, step_timeout=STEP)
        )
        on_paul = await self.host.accept(timeout=15)
        async with on_paul, await joining as on_guest:
            assert on_guest.method == on_paul.method
            return str(on_guest.method)


@pytest.fixture
async def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Scene]:
    air = Air()
    monkeypatch.setattr(default_medium(), "tap", air)
    paul, tina, george = (device(tmp_path, n) for n in ("Paul", "Tina", "George"))
    target = f"loopback:resume-by-prekey-{os.getpid()}-{id(air)}"
    owner = Owner()
    async with paul.host(target, methods=["pin"], delegate=owner) as host:
        for guest in (tina, george):
            joining = asyncio.ensure_future(guest.join(target, pin=host.pin))
            async with await host.accept(timeout=15), await joining:
                pass
        yield Scene(paul, tina, george, host, target, air, owner)


async def claim_then_send(
    scene: Scene, claimed: pairkit.Device, make: Callable[[], bytes]
) -> list[object]:
    """Mallory's link: a join request repeating ``claimed``'s id and saying ``resume`` (a
    known device's claim: nobody is asked), then ``make()``'s bytes; what the host answered
    (messages, or the name of the error that ended the link).  The host gives no session for
    it (its ``accept`` waits on)."""
    failed = scene.owner.failed()
    accepting = asyncio.ensure_future(scene.host.accept(timeout=30))
    link = await default_medium().endpoint(None).connect(
        scene.target.removeprefix("loopback:"), timeout=STEP
    )
    answers: list[object] = []
    try:
        pipe = MessagePipe(link, guest=True)
        loop = asyncio.get_running_loop()
        cloud = CloudGuest(
            name=claimed.name, clouds=(), mac=lambda _c, _d: bytes(32),
            static=claimed.keystore.static_public, device_id=bytes.fromhex(claimed.device_id),
            host_static=scene.paul.keystore.static_public,  # the id sealed to Paul, as a guest does
            timeout=STEP, method=int(Method.RESUME),
        )
        cloud.start(loop.time())
        await drive(cloud, pipe, delegate=pairkit.Agree(), clock=loop.time)
        await pipe.send(make())
        for _ in range(2):
            try:
                answers.append(wire.decode(await asyncio.wait_for(pipe.recv(), STEP)))
            except (PairingError, TimeoutError, OSError) as exc:
                answers.append(type(exc).__name__)
                break
    finally:
        await link.close()
    # The host ends the link with an error of its own (GuestFailed), not with a session.
    async with asyncio.timeout(STEP):
        while scene.owner.failed() == failed:
            await asyncio.sleep(0.01)
    assert not accepting.done(), "the host gave a session"
    accepting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await accepting
    return answers


def init_nominating(d: bytes) -> bytes:
    _, public = x25519_keypair(os.urandom)
    header = ResumeHeader(src_key_id=digest(public), dst_key_id=d, seq=0,
                          kind=ResumeKind.INIT, src_key=public)
    return ResumeMessage(header=header).encode()


def kinds(answers: list[object]) -> list[str]:
    return [a.header.kind.name if isinstance(a, ResumeMessage) else str(a) for a in answers]


async def test_an_init_heard_on_air_replayed_gets_fail_and_stores_nothing(scene: Scene) -> None:
    assert await scene.resume(scene.tina) == "resume"
    (init,) = [m for m in scene.air.resumes() if m.header.kind is ResumeKind.INIT]
    before = scene.record(scene.tina)
    assert init.header.dst_key_id not in scene.ours(scene.tina)  # consumed durably
    answers = await claim_then_send(scene, scene.tina, init.encode)
    assert kinds(answers)[0] == "FAIL", answers
    assert scene.record(scene.tina) == before


async def test_a_known_peer_nominating_the_members_digest_cannot_complete(
    scene: Scene,
) -> None:
    assert await scene.resume(scene.tina) == "resume"
    (init,) = [m for m in scene.air.resumes() if m.header.kind is ResumeKind.INIT]
    tina_before, george_before = scene.record(scene.tina), scene.record(scene.george)
    # George, as himself, nominates the digest he heard Tina use: it is gone.
    answers = await claim_then_send(scene, scene.george,
                                    lambda: init_nominating(init.header.dst_key_id))
    assert kinds(answers)[0] == "FAIL", answers
    assert scene.record(scene.tina) == tina_before
    assert scene.record(scene.george) == george_before
    # The worst case: one of Tina's prekeys not used yet (as if George had kept her INIT
    # from reaching Paul), nominated by George as himself, then by someone repeating Tina's
    # id.  The host consumes it and answers, but neither holds Tina's static key (DH(p_H, S_G)
    # is in SK): no READY, no session; of Tina's record only that prekey goes (as when
    # anyone repeats an INIT of hers), and Tina still comes back.
    for claimed in (scene.george, scene.tina):
        unused = scene.ours(scene.tina)[0]
        answers = await claim_then_send(scene, claimed, lambda d=unused: init_nominating(d))
        assert kinds(answers)[0] == "OKAY", answers
        assert unused not in scene.ours(scene.tina)
    after = scene.record(scene.tina)
    assert dataclasses.replace(after, our_prekeys=()) == dataclasses.replace(
        tina_before, our_prekeys=())
    assert scene.record(scene.george) == george_before
    assert await scene.resume(scene.tina) in ("resume", "kk")


async def test_a_digest_held_by_nobody_gets_fail(scene: Scene) -> None:
    before = [scene.record(g) for g in (scene.tina, scene.george)]
    answers = await claim_then_send(scene, scene.tina, lambda: init_nominating(os.urandom(16)))
    assert kinds(answers)[0] == "FAIL", answers
    assert [scene.record(g) for g in (scene.tina, scene.george)] == before


async def test_a_digest_held_by_two_records_is_refused_not_guessed(scene: Scene) -> None:
    """Digests are random and given to one peer each; a keystore where two records hold the
    same one (damaged, or edited) gets FAIL for it: the guest runs kk, which proves who it is."""
    shared = scene.ours(scene.tina)[0]
    other = Keystore.open(scene.paul.keystore.path, PASSPHRASE)  # another process
    with other.update():
        george = other.peer_by_id(scene.george.device_id)
        assert george is not None
        tina = other.peer_by_id(scene.tina.device_id)
        assert tina is not None
        (tinas,) = [r for r in tina.our_prekeys if bytes(r[0]) == shared]
        other.add_peer(dataclasses.replace(george, our_prekeys=(*george.our_prekeys, tinas)))
    assert peers.peer_by_prekey(scene.paul.keystore, shared) is None
    assert await scene.resume(scene.tina) == "kk"
    assert shared in scene.ours(scene.george)  # nothing was consumed for a guess


async def test_the_index_follows_another_process(scene: Scene) -> None:
    ks = scene.paul.keystore
    d = scene.ours(scene.tina)[0]
    found = peers.peer_by_prekey(ks, d)
    assert found is not None and found.device_id.hex() == scene.tina.device_id
    other = Keystore.open(ks.path, PASSPHRASE)
    record = other.peer_by_id(scene.tina.device_id)
    assert record is not None
    with other.update():
        other.forget_peer(scene.tina.device_id)
    assert peers.peer_by_prekey(ks, d) is None  # forgotten there: not found here
    answers = await claim_then_send(scene, scene.george, lambda: init_nominating(d))
    assert kinds(answers)[0] == "FAIL", answers
    with other.update():
        other.add_peer(record)
    found = peers.peer_by_prekey(ks, d)  # added there: found here
    assert found is not None and found.device_id.hex() == scene.tina.device_id
    assert await scene.resume(scene.tina) == "resume"
    assert d not in scene.ours(scene.tina)


async def test_a_listener_reads_no_device_id_in_a_resume(scene: Scene) -> None:
    """The narrower half of test_attack_privacy_ids_on_air's guest-comes-back test: the
    resume messages themselves (the join request before them is another message's)."""
    for guest in (scene.tina, scene.george):
        assert await scene.resume(guest) == "resume"
    heard = scene.air.resumes()
    assert [m.header.kind for m in heard] == [ResumeKind.INIT, ResumeKind.OKAY] * 2
    ids = [bytes.fromhex(d.device_id) for d in (scene.paul, scene.tina, scene.george)]
    leaked = [m for m in heard for i in ids if i in m.encode()]
    assert leaked == [], leaked
