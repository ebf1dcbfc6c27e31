"""What a host gets from a member that joined its cloud before owners were kept, by a secret
this member cannot bind (attack review atk18; docs/security.md rule 3, atk17 finding 3).

George holds Paul's cloud as a member, with no owner's id kept (joined before session 17), and
his proof of it does not count in this session.  A secret-bearing Membership of that cloud is
then nothing to store, and the session goes on; none of it is checked (not the signature, the
epoch, the name, the members, the secret).  The claim in pairing/service.py is that the host
gets nothing from this it could not get from a Membership without a secret.  Played over TCP
against a real ``pairkit join --yes``: the host has Paul's keys (it stands for any host whose id
hashes to the cloud id) and does not prove the cloud.  Whatever it sends, George stores the
same peer record as after a Membership without a secret, and his clouds are unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.service import Member, Membership
from tests.attack_harness import evil_host, open_ks, owned_cloud, peer_record
from tests.cli_helpers import Device, Lab

IRK = bytes(range(16))
EXPIRES = 4_000_000_000


def george_joined_before_owners_were_kept(lab: Lab) -> tuple[Device, Device, str]:
    """Paul renewed his cloud once; George holds it at epoch 1 with no owner's id kept."""
    paul, george = lab.device("paul"), lab.device("george")
    cloud_id, _ = owned_cloud(paul)
    secret = os.urandom(32)
    ks = open_ks(paul)
    with ks.update():
        assert ks.renew_cloud_secret(cloud_id, secret) == 1
    ks = open_ks(george)
    with ks.update():
        ks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member", epoch=1)
    assert open_ks(george).cloud(cloud_id).owner is None
    return paul, george, cloud_id


def clouds(device: Device) -> dict[str, tuple[str, str, int, str | None, bytes]]:
    ks = open_ks(device)
    return {c.cloud_id: (c.role, c.name, c.epoch, c.owner, ks.cloud_mac(c.cloud_id, b"probe"))
            for c in ks.clouds()}


#: the Membership sent: without a secret (the baseline), or with one, unbindable, in any shape
SENT: dict[str, Any] = {
    "no-secret": lambda c: Membership(role=Role.MEMBER, cloud_id=c, irk=IRK, expires=EXPIRES),
    "unsigned-renamed-newer-with-members": lambda c: Membership(
        role=Role.MEMBER, cloud_id=c, irk=IRK, expires=EXPIRES, secret=os.urandom(32),
        cloud_name="Mallory's cloud", epoch=99,
        members=(Member(device_id=os.urandom(16), name="Mallory"),)),
    "bad-signature-older": lambda c: Membership(
        role=Role.MEMBER, cloud_id=c, irk=IRK, expires=EXPIRES, secret=os.urandom(32),
        signature=os.urandom(64)),
}


async def joined_with(lab: Lab, sent: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """George (his own copies) joins the host by PIN and is sent ``SENT[sent]``; (what George
    stored of the host: standing, its expiry, the host's address key; his clouds before,
    after)."""
    paul, george, cloud_id = george_joined_before_owners_were_kept(
        Lab(lab.base / sent, lab.templates))
    before = clouds(george)
    host = await evil_host(Grant(Role.MEMBER), lambda s: SENT[sent](cloud_id), device=paul)
    try:
        joined = await george.join(host.target, "-m", "pin", "--pin", host.state.new_pin(),
                                   "--yes", "--json", "--timeout", "10")
    finally:
        await host.close()
    assert host.sent, f"the host never got to send its membership: {host.errors}"
    assert joined.ok().json()["role"] == "member", joined
    record = peer_record(george, open_ks(paul).device_id)
    stored = (record.extra.get("standing"), record.extra.get("standing_expires"), record.irk)
    return stored, before, clouds(george)


@pytest.mark.parametrize("sent", [s for s in SENT if s != "no-secret"])
async def test_an_unbindable_secret_gets_a_host_what_no_secret_does(lab: Lab, sent: str) -> None:
    """The baseline first (a Membership without a secret: a member's standing, its expiry and
    the host's address key stored); then the unbindable secret in ``sent``'s shape: the join
    goes on as a member, the same stored, George's clouds (secret, epoch, name, owner) as
    they were."""
    baseline, before, after = await joined_with(lab, "no-secret")
    assert baseline == ("member", EXPIRES, IRK) and after == before
    stored, before, after = await joined_with(lab, sent)
    assert stored == baseline
    assert after == before, "George's clouds changed"
