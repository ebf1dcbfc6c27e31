"""A renewal signed by a key the owner never had (attack review atk18b; docs/security.md rule
3 and "Renewing the cloud secret").

A member takes a renewal from the owner it joined the cloud from, by the owner's full device
id, kept at the join, and only "signed by the owner as a Membership is".  But a device id is a
hash of the static (X25519) key alone, and the key a Membership is checked against is the one
the host's identity payload gives in this very session (``session.peer.signing_public``): any
full pairing (PIN, QR, compare, clear, ttp) carries a signing key of the host's choosing.  So
whoever has the owner's static private key but not its signing key (the static key is handed
to every handshake, ``Keystore._static_private_for_handshake``; the signing key never leaves the
keystore) is "the owner" to the member: to George it is Paul's laptop, Paul's fingerprint, and
its renewal, signed with its own key, is taken.  It plants a secret of its choosing at an epoch
as high as it likes, and since atk18 finding 1 (a secret from the owner at the epoch held or an
older one is nothing to store, the session goes on) Paul's own renewals are, from then on,
silently nothing to store: George stays on Mallory's secret with no error, where before every
session with Paul ended in "not newer".

Mallory here: Paul's keystore's identity and static key (read from it, as a thief of the static
key alone would hold them), a signing key of her own; she proves no cloud (she lacks the
secret), so George asks to join, she lets him in as a member and sends a new member's
Membership of Paul's cloud at epoch 2**40.  George is a real ``pairkit join --yes`` over TCP
who knows Paul (his record holds Paul's real signing key).
"""

from __future__ import annotations

import dataclasses
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.methods import Session
from pairkit.pairing.service import Membership, membership_statement
from tests.attack_harness import EvilHost, evil_host, open_ks
from tests.cli_helpers import Device, Lab
from tests.signing_harness import george_member_of_pauls_cloud, held

PLANTED = os.urandom(32)






def new_member(host: EvilHost, s: Session, cloud_id: str, epoch: int, secret: bytes,
               ) -> Membership:
    """A new member's Membership of ``cloud_id``, signed with the host's signing key."""
    m = Membership(role=Role.MEMBER, cloud_id=cloud_id, cloud_name="Paul's cloud",
                   secret=secret, epoch=epoch)
    statement = membership_statement(m, s.peer.device_id, s.fingerprint)
    return dataclasses.replace(m, signature=host.signer.sign(statement))


async def host_joins(george: Device, host: EvilHost) -> object:
    pin = host.state.new_pin()
    try:
        return await george.join(host.target, "-m", "pin", "--pin", pin, "--yes", "--json",
                                 "--timeout", "10")
    finally:
        await host.close()


async def test_the_owners_static_key_alone_does_not_renew_a_members_cloud(lab: Lab) -> None:
    paul, george, cloud_id = george_member_of_pauls_cloud(lab)
    before = held(george)
    mallory = Ed25519PrivateKey.generate()
    host = await evil_host(Grant(Role.MEMBER),
                           lambda s: new_member(host, s, cloud_id, 2**40, PLANTED), device=paul)
    # Paul's identity and static key, Mallory's signing key (in her identity payload too)
    host.signer = mallory
    host.me = dataclasses.replace(
        host.me, signing_public=mallory.public_key().public_bytes_raw())
    joined = await host_joins(george, host)
    # George refuses her before the secure link is confirmed (she never gets to send it), in
    # words that say why, with the exit code of an authentication failure.
    assert joined.rc == 3 and "signs with another key" in joined.err, joined  # type: ignore[attr-defined]
    # Nor does the key George knows Paul by become Mallory's (the group service checks a
    # controller's envelopes against it; a resume takes it from the record).
    pauls = open_ks(paul).signing_public
    assert (held(george), open_ks(george).peer_by_id(open_ks(paul).device_id).signing_public) \
        == (before, pauls), f"George took Mallory's renewal or key:\n{joined}"


async def test_control_pauls_own_renewal_is_taken(lab: Lab) -> None:
    """The same host with Paul's own signing key and the same Membership: taken (epoch 2**40,
    the planted secret), so the refusal the test above wants is about the key, not the
    harness."""
    paul, george, cloud_id = george_member_of_pauls_cloud(lab)
    host = await evil_host(Grant(Role.MEMBER),
                           lambda s: new_member(host, s, cloud_id, 2**40, PLANTED), device=paul)
    joined = await host_joins(george, host)
    assert joined.ok().json()["role"] == "member"  # type: ignore[attr-defined]
    role, epoch, _ = held(george)[cloud_id]
    assert (role, epoch) == ("member", 2**40)


async def test_a_member_ahead_of_its_owner_is_told(lab: Lab) -> None:
    """What a renewal at a planted epoch leaves (the same whoever planted it: Mallory above,
    or a forgotten member with a second preimage of the cloud id and George's proof, for a
    cloud joined before owners were kept): Paul's own next renewal, signed by Paul at epoch 2,
    is nothing to store, and the join goes on as a member; George stays on the planted secret
    (right: nothing a host sends at a lower epoch is taken).  His user should hear of it (a
    warning naming the owner and the two epochs, never a secret): his device holds a secret
    its owner did not give, or the owner's keystore went back to a backup."""
    paul, george, cloud_id = george_member_of_pauls_cloud(lab)
    gks = open_ks(george)
    with gks.update():
        gks.take_renewed_cloud_secret(cloud_id, PLANTED, 2**40)  # as Mallory's was taken
    planted = held(george)
    fresh = os.urandom(32)
    host = await evil_host(Grant(Role.MEMBER),
                           lambda s: new_member(host, s, cloud_id, 2, fresh), device=paul)
    joined = await host_joins(george, host)
    assert host.sent, f"Paul never got to send his renewal: {host.errors}"
    assert joined.ok().json()["role"] == "member"  # type: ignore[attr-defined]
    assert held(george) == planted
    assert "warning: " in joined.err, joined  # type: ignore[attr-defined]
    # the owner and both epochs, never a secret
    told = joined.err  # type: ignore[attr-defined]
    assert "Paul's cloud" in told and str(2**40) in told and "epoch 2" in told, told
    assert PLANTED.hex() not in told and fresh.hex() not in told
