"""Attack review atk19d: which method runs, and what each side then believes.

Over TCP against real ``pairkit host`` processes:

* A host's ``--method`` list is the methods it runs.  ``pairkit host -m pin`` advertises pin
  only, and refuses ``kk`` ("the host allows only: pin"), but before this review it answered a
  known guest's resume INIT all the same: the guest resumed by a method the host never
  offered, and the host consumed one of its prekeys for it (finding 1).
* A resume FAIL leaves the host waiting for the guest's Noise KK Offer (docs/protocol.md §8).
  Before this review it waited in the state that takes a first message, so a guest (here a
  hand-driven one claiming a known device's public id) could send INIT after INIT, each
  answered FAIL and each granting another full step timeout, holding the link, and its
  place among the unauthenticated links, without end (finding 2).
* A ``clear`` guest on a link that is not encrypted, at a host without ``--allow-insecure``,
  is one the pairing refuses: before this review its owner was asked about it first
  (finding 4; README: "nobody is asked about a guest the host would refuse anyway").
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest
from pairkit.pairing.crypto import digest, x25519_keypair
from pairkit.pairing.messages import ResumeHeader, ResumeKind, ResumeMessage
from pairkit.pairing.negotiation import Method
from pairkit.transports.tcp import tcp_connect
from tests.attack_harness import STEP, Yes, address_of, identity_of, open_ks, peer_record
from tests.cli_helpers import Lab

PIN = "482913"


def our_prekeys(device: object, peer: str) -> list[bytes]:
    """The digests of the prekeys ``device`` holds for ``peer`` (what a resume consumes)."""
    return [bytes(p[0]) for p in peer_record(device, peer).our_prekeys]  # type: ignore[arg-type]


async def test_a_pin_only_host_runs_neither_resume_nor_kk(lab: Lab) -> None:
    """Finding 1 (medium): the host's method list is honoured for ``resume`` as for ``kk``.

    Paul hosts with ``-m pin`` (the owner wants a PIN for every pairing).  George paired by
    PIN once, so he holds Paul's prekeys and a grant still valid.  His ``pairkit join "Paul's
    phone"`` (resume) must be refused as his kk is, before Paul's host consumes a prekey."""
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "--yes", "--json", "--pin", PIN)
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok()
    await host.next_result()
    held = our_prekeys(paul, "George's phone")
    assert held, "Paul holds no prekey for George: no resume to try"

    resumed = await george.join("Paul's phone", "--json", "--timeout", "5")
    assert resumed.rc != 0, f"George resumed with a host that allows only pin:\n{resumed}"
    # refused without the host's settings: the refusal crosses in the clear, to a device
    # whose return a listener hears (session 23, reported by helper kkann)
    assert "does not let known devices back" in resumed.err, resumed.err
    assert "allows only" not in resumed.err and "pin" not in resumed.err, resumed.err
    assert our_prekeys(paul, "George's phone") == held, "a refused method consumed a prekey"

    # kk, the same stored keys without a prekey: refused alike (as it was before the review)
    ks = open_ks(george)
    with ks.update():
        ks.add_peer(dataclasses.replace(ks.get_peer("Paul's phone"), their_prekeys=[]))
    by_kk = await george.join("Paul's phone", "--json", "--timeout", "5")
    assert by_kk.rc != 0 and "does not let known devices back" in by_kk.err, str(by_kk)
    assert "allows only" not in by_kk.err and "pin" not in by_kk.err, str(by_kk)


async def test_after_a_resume_fail_the_host_waits_for_kk_only(lab: Lab) -> None:
    """Finding 2 (low): one FAIL per link.  A guest that claims George's id (sealed to Paul's
    key: anyone who knows both can) passes Paul's cloud step without a prompt, then sends
    resume INITs naming prekeys Paul never made.  The first is answered FAIL, as the protocol
    says; the second must end the link (the host waits for kk's Offer only), not be answered
    FAIL again with a fresh step timeout."""
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--yes", "--json", "--pin", PIN)
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok()
    await host.next_result()
    g, p = identity_of(george), identity_of(paul)

    link = await tcp_connect(*address_of(host), timeout=STEP)
    try:
        pipe = MessagePipe(link, guest=True)
        loop = asyncio.get_running_loop()
        cloud = CloudGuest(
            name=g.name, clouds=(), mac=lambda _c, _d: bytes(32), static=g.static_public,
            device_id=g.device_id, host_static=p.static_public, timeout=STEP,
            method=int(Method.RESUME),
        )
        cloud.start(loop.time())
        await drive(cloud, pipe, delegate=Yes())  # a known grant: no prompt

        answers = []
        for _ in range(3):
            _, public = x25519_keypair(os.urandom)
            init = ResumeHeader(
                src_key_id=digest(public), dst_key_id=os.urandom(16), seq=0,
                kind=ResumeKind.INIT, src_key=public,
            )
            await pipe.send(ResumeMessage(header=init).encode())
            try:
                answer = wire.decode(await asyncio.wait_for(pipe.recv(), STEP))
            except Exception as exc:  # the link closed: the host stopped
                answers.append(type(exc).__name__)
                break
            answers.append(answer)
            if not isinstance(answer, ResumeMessage):
                break
    finally:
        await link.close()

    first = answers[0]
    assert isinstance(first, ResumeMessage) and first.header.kind is ResumeKind.FAIL, first
    said = [a.header.kind.name if isinstance(a, ResumeMessage) else str(a) for a in answers]
    assert said.count("FAIL") == 1, f"the host answered INIT after INIT on one link: {said}"


async def test_a_clear_guest_on_a_plain_link_is_refused_before_the_owner_is_asked(
    lab: Lab,
) -> None:
    """Finding 4 (low): "nobody is asked about a guest the host would refuse anyway" (README).

    Paul hosts ``-m clear`` over TCP without ``--allow-insecure``: every ``clear`` pairing on
    this link is refused (the key would cross in the clear).  George's join request says
    ``clear`` (his own ``--allow-insecure`` forces it on his side); Paul's owner must not be
    asked about him first, as for a method the host does not allow."""
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "clear", "--yes", "--json")
    mark = host.mark()
    refused = await george.join(host.target, "-m", "clear", "--allow-insecure", "--json")
    assert refused.rc != 0 and "--allow-insecure" in refused.err, refused
    await host.wait_for(r"^error: guest .*--allow-insecure", since=mark)
    later = "\n".join(host.lines[mark:])
    assert "asks to join" not in later, later
    assert await paul.peers() == [] and await george.peers() == []
