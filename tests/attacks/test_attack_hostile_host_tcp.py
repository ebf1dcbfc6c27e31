"""Attack 3 over TCP: a malicious host plants or steals clouds through its Membership.

The host is built from the real machines (cloud step, pairing, confirm) on a real TCP listener;
once the secure link is up it sends a Membership of its choosing.  The guest is a real
``pairkit join`` process run with --yes (its user would say yes to joining a cloud), so only
the product's checks stand between it and a planted cloud.  Each attack must end the join with
an error, store no peer and no cloud, and leave the guest owning its own cloud, unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.methods import Session
from pairkit.pairing.service import Membership, cloud_id_of, membership_statement
from tests.attack_harness import (
    EvilHost,
    clouds_of,
    evil_host,
    owned_cloud,
)
from tests.cli_helpers import Lab

SECRET = os.urandom(32)


def sign(host: EvilHost, m: Membership, s: Session, *, key: Ed25519PrivateKey | None = None,
         member: bytes | None = None, fingerprint: str | None = None) -> Membership:
    statement = membership_statement(m, member or s.peer.device_id, fingerprint or s.fingerprint)
    return dataclasses.replace(m, signature=(key or host.signer).sign(statement))


def member_of(cloud_id: str) -> Membership:
    return Membership(role=Role.MEMBER, cloud_id=cloud_id, cloud_name="Totally legit",
                      secret=SECRET)


Craft = Callable[[EvilHost, Session, dict[str, str]], Membership]

ATTACKS: dict[str, tuple[Grant, Craft]] = {
    "secret-with-guest-grant": (Grant(Role.GUEST, 3600), lambda h, s, ids: sign(h, Membership(
        role=Role.GUEST, expires=int(time.time()) + 3600, cloud_id=cloud_id_of(h.me.device_id),
        cloud_name="guest cloud", secret=SECRET), s)),
    "the-guests-own-cloud": (Grant(Role.MEMBER), lambda h, s, ids: sign(
        h, member_of(ids["george"]), s)),
    "a-third-partys-cloud": (Grant(Role.MEMBER), lambda h, s, ids: sign(
        h, member_of(ids["ringo"]), s)),
    "unsigned": (Grant(Role.MEMBER), lambda h, s, ids: member_of(cloud_id_of(h.me.device_id))),
    "signed-by-another-key": (Grant(Role.MEMBER), lambda h, s, ids: sign(
        h, member_of(cloud_id_of(h.me.device_id)), s, key=Ed25519PrivateKey.generate())),
    "signed-for-another-member": (Grant(Role.MEMBER), lambda h, s, ids: sign(
        h, member_of(cloud_id_of(h.me.device_id)), s, member=os.urandom(16))),
    "signed-for-another-session": (Grant(Role.MEMBER), lambda h, s, ids: sign(
        h, member_of(cloud_id_of(h.me.device_id)), s, fingerprint="0000-0000-0000-0000")),
    "guest-grant-naming-the-guests-cloud": (Grant(Role.GUEST, 3600), lambda h, s, ids: Membership(
        role=Role.GUEST, expires=int(time.time()) + 3600, cloud_id=ids["george"])),
    # atk20c (suspected): the verdict George's person is shown says "guest for an hour", then
    # the Membership makes him a member of the host's own cloud, properly signed: with --yes
    # (or pairkit.Agree()) he joined a cloud he was told he would not.  And the reverse: told
    # "member", made a guest.  The Membership's role must be the verdict's.
    "member-membership-after-a-guest-verdict": (Grant(Role.GUEST, 3600), lambda h, s, ids: sign(
        h, member_of(cloud_id_of(h.me.device_id)), s)),
    "guest-membership-after-a-member-verdict": (Grant(Role.MEMBER), lambda h, s, ids: Membership(
        role=Role.GUEST, expires=int(time.time()) + 3600)),
}


async def play(lab: Lab, grant: Grant, craft: Craft) -> tuple[object, object, EvilHost]:
    george, ringo = lab.device("george"), lab.device("ringo")
    ids = {"george": owned_cloud(george)[0], "ringo": owned_cloud(ringo)[0]}
    host = await evil_host(grant, lambda s: craft(host, s, ids))
    pin = host.state.new_pin()
    try:
        joined = await george.join(host.target, "-m", "pin", "--pin", pin, "--yes", "--json",
                                   "--timeout", "10")
    finally:
        await host.close()
    return george, joined, host


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_hostile_membership_stores_nothing(lab: Lab, attack: str) -> None:
    george_before = clouds_of(lab.templates["george"])
    grant, craft = ATTACKS[attack]
    george, joined, host = await play(lab, grant, craft)
    assert host.sent, f"the hostile host never got to send its membership: {host.errors}"
    assert joined.rc != 0, f"George accepted a hostile membership ({attack}):\n{joined}"  # type: ignore[attr-defined]
    assert joined.err.startswith("error: "), joined  # type: ignore[attr-defined]
    assert joined.out == ""  # type: ignore[attr-defined]
    assert await george.peers() == []  # type: ignore[attr-defined]
    assert clouds_of(george) == george_before, "George's clouds changed"  # type: ignore[arg-type]


async def test_control_an_honest_membership_is_joined(lab: Lab) -> None:
    """The same hostile host sending a proper membership of its own cloud: George joins it
    (his user said yes), so the refusals above are the product's checks, not the harness."""
    george_before = clouds_of(lab.templates["george"])
    george, joined, host = await play(lab, Grant(Role.MEMBER), lambda h, s, ids: sign(
        h, member_of(cloud_id_of(h.me.device_id)), s))
    data = joined.ok().json()  # type: ignore[attr-defined]
    assert data["role"] == "member"
    after = clouds_of(george)  # type: ignore[arg-type]
    assert set(after) - set(george_before) == {cloud_id_of(host.me.device_id)}
    assert {k: after[k] for k in george_before} == george_before
