"""Attack (rule 4): an on-path attacker forges the host's resume FAIL.

A resume FAIL is not authenticated (the host has no session key yet when it sends one), so
anyone on the path can turn the host's OKAY into a FAIL with the same header.  The guest then
falls back to Noise KK, which the attacker cannot complete.  What the forgery must not buy: the
guest forgetting the prekey it nominated.  A guest drops a prekey as stale only once a session
with the host is confirmed (READY), never on the FAIL's word alone.
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


async def test_a_forged_fail_does_not_make_the_guest_forget_its_prekey(lab: Lab) -> None:
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
    assert after == before, "the guest forgot a prekey on an unauthenticated FAIL"
