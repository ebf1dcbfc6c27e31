"""Attack (rule 4): an on-path attacker forges the host's resume FAIL.

A resume FAIL is not authenticated (the host has no session key yet when it sends one), so
anyone on the path can turn the host's OKAY into a FAIL with the same header.  The guest then
falls back to kk (Noise IK), which the attacker cannot complete.  What the forgery buys: no
session, and the one digest the guest nominated, which it forgets as it would after any attempt
that sent it (a digest is spent once sent: atk23 F2, docs/security.md rule 4), and which the host
consumed anyway.  What it must not buy: the guest's other prekeys, or its way back (the next
resume, with no attacker, uses the next digest and gives a session).
"""

from __future__ import annotations

import contextlib
import dataclasses

from pairkit.pairing import wire
from pairkit.pairing.messages import ResumeKind, ResumeMessage
from tests.attack_harness import (
    Proxy,
    address_of,
    as_frame,
    message_of,
    peer_record,
)
from tests.cli_helpers import Lab

PIN = "482913"


def forge_fail(direction: str, index: int, piece: bytes) -> bytes | None:
    """The host's OKAY rewritten as a FAIL with the same header (what an attacker can do)."""
    if direction != "h2g":
        return piece
    with contextlib.suppress(Exception):
        msg = message_of(piece)
        if msg is not None and isinstance(m := wire.decode(msg), ResumeMessage):
            if m.header.kind is ResumeKind.OKAY:
                header = dataclasses.replace(m.header, kind=ResumeKind.FAIL, src_key=None)
                return as_frame(ResumeMessage(header=header, reason="ephemeral key mismatch")
                                .encode())
    return piece


async def test_a_forged_fail_spends_only_the_digest_sent_and_the_next_resume_works(
    lab: Lab,
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--yes", "--json", "--pin", PIN)
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok()
    await host.next_result()
    before = list(peer_record(george, "Paul's phone").their_prekeys)
    assert before, "George holds none of Paul's prekeys to resume with"
    proxy = await Proxy(address_of(host), forge_fail).start()
    try:
        joined = await george.join("Paul's phone", "-t", proxy.target, "--json",
                                   "--timeout", "5")
    finally:
        await proxy.close()
    assert joined.rc != 0, "a session was made through a forged FAIL"
    seen = [f for d, f in proxy.messages(0) if d == "h2g"]  # as the host sent them
    assert any(forge_fail("h2g", 0, f) != f for f in seen), "the host's OKAY never passed"
    after = list(peer_record(george, "Paul's phone").their_prekeys)
    assert after == before[1:], "the guest should forget the digest it sent, and only that one"
    again = (await george.join("Paul's phone", "-t", host.target, "--json")).ok().json()
    assert again["method"] == "resume"
    assert (await host.next_result())["session"] == again["session"]
