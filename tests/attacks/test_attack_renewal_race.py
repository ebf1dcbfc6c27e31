"""A renewal checked on a cloud record another process changed before it was taken (session 19,
renew19 finding 1, low; docs/security.md rule 3).

A member checks the owner's renewal (``check_membership``) on the clouds as it read them, then
takes it under the keystore's lock.  A second process of the same member may, in between, have
left the cloud and joined it again: from another owner of the same cloud id, or from the owner's
id with another signing key.  The renewal, checked against the owner and signing key the cloud
*had*, must not replace the secret of the cloud as it is *now*: nothing is stored, and the join
goes on as a member (the session itself was checked).

George holds Paul's cloud at epoch 1 (joined from Paul, his id and signing key kept) and knows
Paul.  The host has Paul's keys and sends a new member's ``Membership`` of Paul's cloud at epoch
2, signed by Paul, which George takes as a renewal (``test_attack_owner_signing_key.py``'s
control).  Its ``craft`` runs after the secure link is confirmed, so after George read his
keystore and before its ``Membership`` reaches him: there a second ``Keystore`` on George's
files writes what the second process leaves.  George is a real ``pairkit join --yes`` over TCP.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.keystore import Keystore
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.methods import Session
from pairkit.pairing.service import Membership, membership_statement
from tests.attack_harness import EvilHost, evil_host, open_ks
from tests.cli_helpers import Lab
from tests.signing_harness import george_member_of_pauls_cloud, held

RENEWED = os.urandom(32)  # Paul's renewal, at epoch 2
REJOINED = os.urandom(32)  # the secret the second process joined the cloud again with
OTHER_KEY = Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def another_owner(paul_id: str) -> str:
    """Another device id with Paul's cloud id (the same first 8 bytes: a second preimage of
    64 bits, made here by hand)."""
    return paul_id[:16] + format(int(paul_id[16:], 16) ^ (2**64 - 1), "016x")


def rejoined_from_another_owner(ks: Keystore, cloud_id: str, paul_id: str) -> None:
    ks.forget_cloud(cloud_id)
    ks.set_cloud(cloud_id, REJOINED, name="Paul's cloud", role="member", epoch=1,
                 owner=another_owner(paul_id), owner_signing=OTHER_KEY)


def rejoined_from_another_signing_key(ks: Keystore, cloud_id: str, paul_id: str) -> None:
    # `pairkit forget` of Paul (his record, which pins his signing key, is gone), and the cloud
    # joined again from a host with Paul's id that signs with another key
    ks.forget_peer(paul_id)
    ks.forget_cloud(cloud_id)
    ks.set_cloud(cloud_id, REJOINED, name="Paul's cloud", role="member", epoch=1,
                 owner=paul_id, owner_signing=OTHER_KEY)


def left(ks: Keystore, cloud_id: str, paul_id: str) -> None:
    ks.forget_cloud(cloud_id)


#: what George's second process does between the check and the lock
SECOND: dict[str, Callable[[Keystore, str, str], None]] = {
    "rejoined-from-another-owner": rejoined_from_another_owner,
    "rejoined-from-another-signing-key": rejoined_from_another_signing_key,
    "left-the-cloud": left,
}


def pauls_renewal(host: EvilHost, s: Session, cloud_id: str) -> Membership:
    m = Membership(role=Role.MEMBER, cloud_id=cloud_id, cloud_name="Paul's cloud",
                   secret=RENEWED, epoch=2)
    statement = membership_statement(m, s.peer.device_id, s.fingerprint)
    return dataclasses.replace(m, signature=host.signer.sign(statement))


async def play(lab: Lab, second: Callable[[Keystore, str, str], None] | None,
               ) -> tuple[object, dict, dict]:  # type: ignore[type-arg]
    """George joins Paul's host; ``second`` runs on his keystore while the host crafts.  (The
    join's result, George's clouds as the second process left them, and after the join.)"""
    paul, george, cloud_id = george_member_of_pauls_cloud(lab)
    paul_id = open_ks(paul).device_id
    between: dict = {}  # type: ignore[type-arg]

    def craft(s: Session) -> Membership:
        ks = open_ks(george)  # a second process of George's, on the same files
        with ks.update():
            if second is not None:
                second(ks, cloud_id, paul_id)
            else:
                ks.set_setting("second_process", True)  # it saves, changing no cloud
        between.update(held(george))
        return pauls_renewal(host, s, cloud_id)

    host = await evil_host(Grant(Role.MEMBER), craft, device=paul)
    try:
        joined = await george.join(host.target, "-m", "pin", "--pin", host.state.new_pin(),
                                   "--yes", "--json", "--timeout", "10")
    finally:
        await host.close()
    assert host.sent, f"the host never got to send its renewal: {host.errors}"
    return joined, between, held(george)


@pytest.mark.parametrize("case", sorted(SECOND))
async def test_a_renewal_is_not_taken_for_a_cloud_changed_since_its_check(
    lab: Lab, case: str,
) -> None:
    joined, between, after = await play(lab, SECOND[case])
    assert after == between, f"George took Paul's renewal into the cloud as {case} left it"
    # the session itself was checked: it goes on, as a member
    assert joined.ok().json()["role"] == "member"  # type: ignore[attr-defined]


async def test_control_the_renewal_is_taken_when_no_cloud_changed(lab: Lab) -> None:
    """The second process saves but changes no cloud: Paul's renewal is taken, so what the test
    above refuses is the change, not the harness's timing."""
    joined, between, after = await play(lab, None)
    assert joined.ok().json()["role"] == "member"  # type: ignore[attr-defined]
    ((cloud_id, (role, epoch, _)),) = [(c, v) for c, v in after.items() if v[0] == "member"]
    assert (role, epoch) == ("member", 2) and between[cloud_id][1] == 1
