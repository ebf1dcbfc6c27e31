"""What the signing-key refusal tells its user to do, and what that leaves of the pin (attack
review atk18c, finding 3; docs/security.md rules 1 and 3).

Since session 18 a member refuses a host with its owner's static key but another signing key
("... signs with another key than the one this device knows it by ... If its keys were really
replaced, forget it here and pair again").  The pin is the member's *peer record* of the owner.
But a member keeps the owner's cloud when it forgets the owner (``pairkit forget`` removes the
record only), and a renewal of that cloud is then checked against whatever signing key the
host shows in the session again: the holder of the owner's static key, refused once, is the
owner to the same member as soon as its user did what the refusal told it to.

Played as ``tests/attacks/test_attack_owner_signing_key.py`` plays finding 2 of atk18b: Mallory
has Paul's identity and static key and a signing key of her own, and sends a new member's
Membership of Paul's cloud at epoch 2**40; George is a real ``pairkit join --yes`` over TCP.
Since session 18 a member keeps the owner's signing key with the cloud at the join, beside its
id, and a renewal must be signed by that key, whether or not it still knows the owner.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import pairkit
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.methods import Session
from pairkit.pairing.service import Membership, membership_statement
from pairkit.peers import forget
from tests.attack_harness import EvilHost, device_secrets, evil_host, find_secrets, open_ks
from tests.cli_helpers import KEYSTORE_PIN, Device, Lab
from tests.renewal_harness import Owner, device, pair
from tests.signing_harness import george_member_of_pauls_cloud, held

PLANTED = os.urandom(32)






async def mallory_hosts(paul: Device, cloud_id: str) -> EvilHost:
    """Paul's identity and static key, her own signing key; a new member's Membership of
    Paul's cloud at epoch 2**40 with her secret, signed by her."""
    mallory = Ed25519PrivateKey.generate()

    def renewal(s: Session) -> Membership:
        m = Membership(role=Role.MEMBER, cloud_id=cloud_id, cloud_name="Paul's cloud",
                       secret=PLANTED, epoch=2**40)
        statement = membership_statement(m, s.peer.device_id, s.fingerprint)
        return dataclasses.replace(m, signature=mallory.sign(statement))

    host = await evil_host(Grant(Role.MEMBER), renewal, device=paul)
    host.signer = mallory
    host.me = dataclasses.replace(host.me, signing_public=mallory.public_key().public_bytes_raw())
    return host


async def george_joins(george: Device, host: EvilHost) -> object:
    try:
        return await george.join(host.target, "-m", "pin", "--pin", host.state.new_pin(),
                                 "--yes", "--json", "--timeout", "10")
    finally:
        await host.close()


async def test_a_member_that_forgot_its_owner_takes_no_renewal_from_the_owners_static_key(
    lab: Lab,
) -> None:
    paul, george, cloud_id = george_member_of_pauls_cloud(lab)
    before = held(george)
    refused = await george_joins(george, await mallory_hosts(paul, cloud_id))
    assert refused.rc == 3 and "forget it here" in refused.err, refused  # type: ignore[attr-defined]
    # George's user does what the refusal says ...
    (await george.run("forget", open_ks(paul).device_id)).ok()
    assert held(george) == before  # his cloud stays, with its owner's id
    # ... and Mallory comes back.
    joined = await george_joins(george, await mallory_hosts(paul, cloud_id))
    assert held(george) == before, f"George took Mallory's renewal after forgetting Paul:\n{joined}"
    assert joined.rc == 3 and "signs with another key" in joined.err, joined  # type: ignore[attr-defined]
    # and says what a person does now (renew19 item 4): forgetting the owner changed nothing,
    # the cloud is kept, its owner is told and makes a new identity; never a secret
    told = joined.err  # type: ignore[attr-defined]
    assert "cloud is kept" in told and "`pairkit forget`" in told, told
    assert "`pairkit init --force`" in told, told
    secrets = {"planted": PLANTED, **device_secrets(george), **device_secrets(paul)}
    assert find_secrets(told + joined.out, secrets) == [], told  # type: ignore[attr-defined]


async def test_a_join_keeps_the_owners_signing_key_with_the_cloud(tmp_path: Path) -> None:
    """A real join over loopback: George's record of Paul's cloud keeps Paul's id and signing
    key, and both survive George forgetting Paul and opening his keystore again."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    session, error = await pair(paul, Owner(), george, "skf1", pin="246810", wants="member")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    (owned,) = [c for c in paul.keystore.clouds() if c.role == "owner"]
    ks = george.keystore
    ks.follow()
    forget(ks, paul.keystore.device_id)  # saves, as `pairkit forget` does
    again = pairkit.Device.open(tmp_path / "george" / "keystore.pk", KEYSTORE_PIN).keystore
    cloud = again.cloud(owned.cloud_id)
    assert (cloud.owner, cloud.owner_signing) == (paul.keystore.device_id,
                                                  paul.keystore.signing_public)
