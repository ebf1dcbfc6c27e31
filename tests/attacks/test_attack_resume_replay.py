"""Attack 4 (rule 4): a recorded resume replayed into the host.

A recording proxy sits between a real ``pairkit join`` and a real ``pairkit host`` while George
resumes with Paul.  Mallory then replays George's messages (cloud step, INIT and everything
after) into the same host process, into a restarted host process, and into a host restored from
a backup taken before the resume (a host that lost its memory).  As recorded, the replay stops
at the JoinRequest: George's sealed id opens on his link only (docs/protocol.md §10, session
22).  So she seals George's id anew for each link of hers, as anyone who knows it and Paul's
key can, and replays the rest.  No replay may give a session,
the host must answer FAIL once the prekey is consumed (durably: it is gone from the keystore
file after the first resume), and the one host that still answers OKAY (the restored one) must
use fresh values, so no (key, nonce) is sealed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from pathlib import Path

from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudHello, CloudReply, JoinRequest, seal_join_id
from pairkit.pairing.errors import ErrorCode
from pairkit.pairing.messages import ResumeKind, ResumeMessage
from tests.attack_harness import (
    Proxy,
    address_of,
    as_frame,
    frame,
    identity_of,
    message_of,
    peer_record,
    read_frame,
)
from tests.cli_helpers import HostProcess, Lab

PIN = "482913"
HOST_ARGS = ("-m", "pin", "-m", "resume", "--yes", "--json")


def resume_messages(pieces: list[bytes]) -> list[ResumeMessage]:
    out = []
    for piece in pieces:
        with contextlib.suppress(Exception):
            msg = message_of(piece)
            if msg is not None and isinstance(m := wire.decode(msg), ResumeMessage):
                out.append(m)
    return out


def decoded(piece: bytes) -> object:
    with contextlib.suppress(Exception):
        msg = message_of(piece)
        return None if msg is None else wire.decode(msg)
    return None


async def replay(host: HostProcess, guest_frames: list[bytes],
                 reseal: tuple[bytes, bytes] | None = None) -> list[bytes]:
    """Send the recorded guest frames one by one, reading the host's answers; what it sent.
    ``reseal`` (the host's static key, the claimed id): the JoinRequest's id sealed anew for
    this link's nonces (docs/protocol.md §10)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address_of(host)), 5)
    answers: list[bytes] = []
    try:
        for piece in guest_frames:
            request = decoded(piece)
            if reseal is not None and isinstance(request, JoinRequest):
                hello, reply = decoded(guest_frames[0]), decoded(answers[0])
                assert isinstance(hello, CloudHello) and isinstance(reply, CloudReply)
                sealed = seal_join_id(*reseal, hello.nonce, reply.nonce)
                piece = as_frame(dataclasses.replace(request, sealed_id=sealed).encode())
            writer.write(frame(piece))
            await writer.drain()
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, OSError):
                answers.append(await asyncio.wait_for(read_frame(reader), 2.0))
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, OSError):
            while True:
                answers.append(await asyncio.wait_for(read_frame(reader), 2.0))
    finally:
        writer.close()
    return answers


async def test_a_recorded_resume_replayed_never_gives_a_session(lab: Lab, tmp_path: Path) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--pin", PIN)
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok()
    await host.next_result()
    backup = tmp_path / "paul-backup"
    shutil.copytree(paul.home, backup)
    proxy = await Proxy(address_of(host)).start()
    try:
        resumed = (await george.join("Paul's phone", "-t", proxy.target, "--json")).ok().json()
        assert resumed["method"] == "resume"
        assert (await host.next_result())["session"] == resumed["session"]
    finally:
        await proxy.close()
    recorded = proxy.messages(0)
    guest_frames = [f for d, f in recorded if d == "g2h"]
    (init,) = [m for m in resume_messages(guest_frames) if m.header.kind is ResumeKind.INIT]
    (okay,) = resume_messages([f for d, f in recorded if d == "h2g"])
    assert okay.header.kind is ResumeKind.OKAY and okay.fresh is not None
    nominated = init.header.dst_key_id
    # Consumed durably: gone from the keystore file, not only from the host's memory.
    ours = [bytes(r[0]) for r in peer_record(paul, "George's phone").our_prekeys]
    assert nominated not in ours, "the used prekey is still in the host's keystore file"
    peers = await paul.peers()
    # 0. As recorded: George's sealed id does not open on Mallory's link (another n_H), and
    #    the host answers as to an unknown returning device, before the INIT.
    mark = host.mark()
    raw = await replay(host, guest_frames)
    assert resume_messages(raw) == []
    answers = [decoded(a) for a in raw]
    refused = [a for a in answers if isinstance(a, wire.Abort)]
    assert [a.code for a in refused] == [ErrorCode.NOT_FOUND], answers
    await host.wait_for(r"^error: guest ", since=mark)
    assert len(host.results) == 2 and await paul.peers() == peers
    reseal = (identity_of(paul).static_public, identity_of(george).device_id)

    async def replay_into(h: HostProcess) -> ResumeMessage:
        mark = h.mark()
        answers = await replay(h, guest_frames, reseal)
        (answer,) = resume_messages(answers)
        await h.wait_for(r"^error: guest ", since=mark)
        return answer

    # 1. The same host process.
    answer = await replay_into(host)
    assert answer.header.kind is ResumeKind.FAIL, answer
    assert len(host.results) == 2, host.results
    assert await paul.peers() == peers
    # 2. The host restarted on the same keystore.
    await host.stop()
    restarted = await lab.host(paul, *HOST_ARGS)
    answer = await replay_into(restarted)
    assert answer.header.kind is ResumeKind.FAIL, answer
    assert restarted.results == []
    assert await paul.peers() == peers
    await restarted.stop()
    # 3. A host restored from before the resume: it still holds the prekey and answers, but
    #    with its own fresh key, so nothing it seals repeats what the first answer sealed.
    shutil.rmtree(paul.home)
    shutil.copytree(backup, paul.home)
    peers_restored = await paul.peers()
    restored = await lab.host(paul, *HOST_ARGS)
    seen = [okay]
    for _ in range(2):
        answer = await replay_into(restored)
        if answer.header.kind is ResumeKind.OKAY:
            seen.append(answer)
    assert len(seen) == 2, "the restored host should answer the replay once, then FAIL"
    assert seen[1].fresh != seen[0].fresh, "the host's fresh key repeated"
    assert seen[1].sealed != seen[0].sealed, "the same (key, nonce) sealed twice"
    assert seen[1].verifier != seen[0].verifier
    assert restored.results == [], "a replayed resume produced a session"
    assert await paul.peers() == peers_restored
