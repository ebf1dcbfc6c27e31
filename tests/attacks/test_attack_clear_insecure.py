"""Attack 5 (rule 5): ``clear`` without link protection, over TCP between processes.

TCP has no link encryption: ``clear`` is refused unless both sides say --allow-insecure; with
it the peer is stored unauthenticated on both sides, and neither resume nor the KK fallback
ever turns it authenticated.  A guest that lies about its link (claims LE Secure Connections
with MITM protection) changes nothing on the host.
"""

from __future__ import annotations

import dataclasses

from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method
from tests.attack_harness import address_of, evil_join, open_ks
from tests.cli_helpers import Lab


async def test_clear_is_refused_then_stored_unauthenticated_and_never_upgraded(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    strict = await lab.host(paul, "-m", "clear", "-m", "resume", "--yes", "--json")
    refused = await george.join(strict.target, "-m", "clear", "--allow-insecure", "--json")
    assert refused.rc != 0 and "--allow-insecure" in refused.err, refused
    plain = await george.join(strict.target, "-m", "clear", "--json")
    assert plain.rc != 0 and "--allow-insecure" in plain.err, plain
    assert await george.peers() == [] and await paul.peers() == []
    await strict.stop()
    lax = await lab.host(paul, "-m", "clear", "-m", "resume", "--allow-insecure", "--yes",
                         "--json")
    joined = (await george.join(lax.target, "-m", "clear", "--allow-insecure", "--json")).ok()
    assert joined.json()["peer"]["authenticated"] is False
    assert (await lax.next_result())["peer"]["authenticated"] is False

    async def both() -> list[bool]:
        return [p["authenticated"] for p in await george.peers() + await paul.peers()]

    assert await both() == [False, False]
    resumed = (await george.join("Paul's phone", "--json")).ok().json()
    assert resumed["method"] == "resume" and resumed["peer"]["authenticated"] is False
    assert (await lax.next_result())["peer"]["authenticated"] is False
    assert await both() == [False, False]
    ks = open_ks(george)
    ks.add_peer(dataclasses.replace(ks.get_peer("Paul's phone"), their_prekeys=[]))
    ks.save()
    kk = (await george.join("Paul's phone", "--json")).ok().json()
    assert kk["method"] == "kk" and kk["peer"]["authenticated"] is False
    assert (await lax.next_result())["peer"]["authenticated"] is False
    assert await both() == [False, False]
    again = (await george.join("Paul's phone", "--json")).ok().json()
    assert again["method"] == "resume" and again["peer"]["authenticated"] is False
    assert await both() == [False, False]


async def test_a_guest_lying_about_its_link_changes_nothing(lab: Lab) -> None:
    """Mallory's guest says its link is LE Secure Connections with MITM protection."""
    paul = lab.device("paul")
    strict = await lab.host(paul, "-m", "clear", "--yes", "--json")
    out = await evil_join(address_of(strict), LocalIdentity.generate("Mallory"), Method.CLEAR,
                          link_encrypted=True, link_mitm=True)
    assert isinstance(out.error, PairingError) and out.session is None, out
    await strict.wait_for(r"^error: guest .*--allow-insecure")
    assert await paul.peers() == []
    await strict.stop()
    lax = await lab.host(paul, "-m", "clear", "--allow-insecure", "--yes", "--json")
    out = await evil_join(address_of(lax), LocalIdentity.generate("Mallory"), Method.CLEAR,
                          link_encrypted=True, link_mitm=True)
    hosted = await lax.next_result()
    assert hosted["peer"]["authenticated"] is False, "the guest's word made it authenticated"
    assert [p["authenticated"] for p in await paul.peers()] == [False]
