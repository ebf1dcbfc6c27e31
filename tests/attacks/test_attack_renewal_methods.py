"""A member that missed more renewals than its owner keeps, back by each way in (attack review
atk17; docs/security.md rule 3 and "Renewing the cloud secret").

The renewal without the member's proof is reached from the cloud step of every method, and
meets each differently: a known member back by ``resume`` or ``kk`` claims its id and gets its
stored member grant with no question asked (the owner's device sends a new member's
Membership, which the member takes as the renewal); by ``clear`` or ``pin`` it is asked about
once as a stranger.  Either way it ends with the current secret under the same name, role and
owner's id, and comes back after that by its proof, unasked.  A forgotten member that comes
back is asked about, and what the owner answers is all it gets: a guest grant leaves its old
secret as it was, a refusal stores nothing.  A second process of the member, opened before a
renewal was taken, never puts an older epoch back.

Played with the library's host and guest over the in-process loopback link (tests/
renewal_harness.py); Paul renews his cloud 17 times as 17 forgets would.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import PairingError
from pairkit.pairing.keystore.store import MAX_RETIRED_SECRETS
from pairkit.pairing.service import Membership, membership_statement
from pairkit.peers import renew_cloud_secret

from ..attack_harness import evil_host
from ..cli_helpers import KEYSTORE_PIN, Device, run_cli
from ..renewal_harness import Owner, device, pair, paul_and_george

WHERE = "rn1"  #: Paul's loopback endpoint (a known peer resumes at the address stored)


def cloud_of(guest: pairkit.Device, host: pairkit.Device) -> Any:
    """``guest``'s record of ``host``'s cloud, as stored now (None: not held)."""
    (owned,) = [c for c in host.keystore.clouds() if c.role == "owner"]
    guest.keystore.follow()
    return next((c for c in guest.keystore.clouds() if c.cloud_id == owned.cloud_id), None)


def mac_of(guest: pairkit.Device, cloud_id: str) -> bytes:
    return guest.keystore.cloud_mac(cloud_id, b"probe")


async def george_member_then_renewed(tmp_path: Path, renewals: int,
                                     ) -> tuple[pairkit.Device, pairkit.Device, Owner]:
    paul, george, owner = await paul_and_george(tmp_path, WHERE, member=True)
    ks = paul.keystore
    for _ in range(renewals):
        with ks.update():
            assert renew_cloud_secret(ks) is not None
    owner.asked.clear()
    return paul, george, owner


#: how George comes back: the join's arguments, and whether Paul is asked the first time
WAYS: dict[str, tuple[dict[str, Any], bool]] = {
    "resume": ({"target": "Paul", "method": "resume"}, False),
    "kk": ({"target": "Paul", "method": "kk"}, False),
    "clear": ({"method": "clear", "wants": "member"}, True),
    "pin": ({"method": "pin", "pin": "246810", "wants": "member"}, True),
    "pin-by-name": ({"target": "Paul", "method": "pin", "pin": "246810", "wants": "member"},
                    True),
}


@pytest.mark.parametrize("way", list(WAYS))
async def test_a_member_past_the_kept_renewals_is_renewed_by_every_way_in(
    tmp_path: Path, way: str,
) -> None:
    """George missed 17 renewals; he comes back three times by ``way``.  Paul is asked at most
    once (never for a known member's ``resume``/``kk``); then George holds the current secret
    and epoch under the same name, role and owner's id."""
    paul, george, owner = await george_member_then_renewed(tmp_path, MAX_RETIRED_SECRETS + 1)
    joined = cloud_of(george, paul)
    args, asked = WAYS[way]
    for _ in range(3):
        session, error = await pair(paul, owner, george, WHERE, **args)
        assert error is None and session is not None, error
        assert session.role == "member"
        await session.close()
    assert owner.asked == (["George"] if asked else [])
    held = cloud_of(george, paul)
    (owned,) = [c for c in paul.keystore.clouds() if c.role == "owner"]
    assert held.epoch == owned.epoch == MAX_RETIRED_SECRETS + 1
    assert (held.role, held.name, held.owner) == (joined.role, joined.name, joined.owner)
    assert held.owner == paul.keystore.device_id
    # the secret held is Paul's current one: George's proof counts again (asked no more)
    assert mac_of(george, held.cloud_id) == mac_of(paul, held.cloud_id)


@pytest.mark.parametrize("answer", ["guest", "refused"])
async def test_a_forgotten_member_gets_only_what_the_owner_answers(
    tmp_path: Path, answer: str,
) -> None:
    """Paul forgets George (the real ``pairkit forget``: the secret is renewed).  George comes
    back by PIN, asking to be a member; Paul is asked, and gives a guest grant or refuses.
    Either way George's record of the cloud is as it was (the old secret, the old epoch): no
    renewal rides on a guest grant, and a refusal stores nothing."""
    paul, george, owner = await george_member_then_renewed(tmp_path, 0)
    before = cloud_of(george, paul)
    old_mac = mac_of(george, before.cloud_id)
    forgot = (await run_cli(tmp_path / "paul", "forget", "George", "--json")).ok().json()
    assert forgot["cloud_secret_renewed"] is True
    owner.grant = Grant(Role.GUEST, 600) if answer == "guest" else None
    session, error = await pair(paul, owner, george, WHERE, pin="246810", wants="member")
    assert owner.asked == ["George"]
    if answer == "guest":
        assert error is None and session is not None and session.role == "guest", error
        await session.close()
    else:
        assert session is None and error is not None
    after = cloud_of(george, paul)
    assert after == before and mac_of(george, after.cloud_id) == old_mac
    assert mac_of(paul, after.cloud_id) != old_mac


async def test_a_stale_process_of_the_member_never_puts_an_older_epoch_back(
    tmp_path: Path,
) -> None:
    """George's second process opened his keystore at epoch 0; his first then took Paul's
    renewals up to epoch 3.  The stale process joins a host with Paul's keys (his device, or a
    copy of his keystore put back from a backup) that lets it in as a member and sends Paul's
    signed new member's Membership of epoch 2: checked against the stale copy it looks newer,
    but what is stored is never rolled back (epoch 3 and its secret stay)."""
    paul, george, owner = await george_member_then_renewed(tmp_path, 0)
    stale = pairkit.Device.open(tmp_path / "george" / "keystore.pk", KEYSTORE_PIN)
    for epoch in (2, 3):
        with paul.keystore.update():
            while renew_cloud_secret(paul.keystore) != epoch:
                pass
        session, error = await pair(paul, owner, george, WHERE, pin="246810", wants="member")
        assert error is None and session is not None, error
        await session.close()
        assert cloud_of(george, paul).epoch == epoch
    held = cloud_of(george, paul)
    mac = mac_of(george, held.cloud_id)
    assert stale.keystore.cloud(held.cloud_id).epoch == 0  # the stale copy, as opened

    def older(s: Any) -> Membership:
        m = Membership(role=Role.MEMBER, cloud_id=held.cloud_id, cloud_name=held.name,
                       secret=os.urandom(32), epoch=2)
        statement = membership_statement(m, s.peer.device_id, s.fingerprint)
        return dataclasses.replace(m, signature=host.signer.sign(statement))

    host = await evil_host(Grant(Role.MEMBER), older, device=Device(tmp_path / "paul", "Paul"))
    try:
        pin = host.state.new_pin()
        try:
            session = await stale.join(host.target, pin=pin, wants="member", step_timeout=10.0)
            await session.close()
        except PairingError:
            pass  # refused is as good: what matters is what is stored
    finally:
        await host.close()
    assert host.sent, f"the host never got to send its membership: {host.errors}"
    after = cloud_of(george, paul)
    assert after.epoch == 3 and mac_of(george, after.cloud_id) == mac


@pytest.mark.parametrize("way", ["resume", "pin"])
async def test_a_member_joined_before_owners_were_kept_is_not_cut_off(
    tmp_path: Path, way: str,
) -> None:
    """George joined Paul's cloud before a join kept the owner's id (his record of it has
    none), then missed 17 renewals.  He is not renewed without his proof (rule 3), but he
    still reaches Paul: by ``resume`` as the known member he is, by PIN once Paul says yes
    (atk17 finding 3: before, the renewal he could not bind ended each session in an error,
    with nobody asked by resume).  He takes nothing and goes on, on the secret he holds."""
    paul, george, owner = await george_member_then_renewed(tmp_path, 0)
    ks = george.keystore
    with ks.update():
        held = cloud_of(george, paul)
        ks._clouds[held.cloud_id].pop("owner")  # as a join before session 17 stored it
        ks._dirty = True
    assert cloud_of(george, paul).owner is None
    with paul.keystore.update():
        for _ in range(MAX_RETIRED_SECRETS + 1):
            renew_cloud_secret(paul.keystore)
    args, _ = WAYS[way]
    session, error = await pair(paul, owner, george, WHERE, **args)
    assert error is None and session is not None, error
    await session.close()
    assert cloud_of(george, paul).epoch == 0  # not renewed, as rule 3 says


@pytest.mark.parametrize("way", ["resume", "kk", "pin-by-name", "pin"])
async def test_a_member_of_more_than_eight_clouds_still_reaches_each_owner(
    tmp_path: Path, way: str,
) -> None:
    """George holds 8 clouds (his own and 7 others) before he joins Paul's, the ninth: his
    cloud step hints only the first 8 (pairing/cloud.py MAX_HINTS).  Right after joining he
    comes back to Paul, by ``resume`` or ``kk`` as the known member he is, or by PIN.  He must
    reach Paul as a member, holding the same secret and epoch.  Before the fix each way ended
    in an error (the owner's device sent the secret as to a new member, at the epoch held,
    which George refused); now a known host's own cloud is hinted first, and joining by
    address (where the guest cannot know which host it meets), the secret and epoch held sent
    again are nothing to store."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    ks = george.keystore
    with ks.update():
        for i in range(7):
            ks.set_cloud(os.urandom(8).hex(), os.urandom(32), name=f"band {i}", role="member")
    owner = Owner()
    session, error = await pair(paul, owner, george, WHERE, pin="246810", wants="member")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    joined = cloud_of(george, paul)
    assert [c.cloud_id for c in ks.clouds()].index(joined.cloud_id) == 8  # the ninth
    args, _ = WAYS[way]
    session, error = await pair(paul, owner, george, WHERE, **args)
    assert error is None and session is not None, error
    assert session.role == "member"
    await session.close()
    assert cloud_of(george, paul) == joined
