"""A hostile cloud-secret renewal: rule 3's one exception, played over TCP against a real guest
(docs/security.md rule 3 and "Renewing the cloud secret"; docs/protocol.md §10, field 10).

After its owner forgets a member, a cloud's secret is renewed and the members kept get the new
one in their next ``Membership`` from the owner: the one case where a device overwrites a cloud
it holds.  It must take a renewal only from the proven owner of that cloud, only for the cloud it
holds (and proved), only with a higher epoch, only signed by the owner.

George holds Paul's cloud as a member at epoch 1.  The host is built from the real machines
(cloud step, PIN pairing, confirm) on a real TCP listener, with the identity and cloud secrets of
a real device's keystore (Paul's, or Ringo's, a member of Paul's cloud), so its cloud step
proves Paul's cloud to George; once the secure link is up it sends a renewal of its choosing.
George is a real ``pairkit join --yes`` process (his user would say yes to anything asked).
Each renewal must end the join with an error and store nothing: no peer, George's clouds (his
own and Paul's: secret and epoch) unchanged.

The same again with George's proof not counted (the host does not prove the cloud; George asks
to join and is let in as a member, as a member that missed more renewals than Paul keeps is: atk16b
finding 2): the new member's Membership is then the renewal, under the same checks, and only
from the owner George joined the cloud from, by its full device id kept at the join: a host with
Paul's keys is refused by a George that joined from another device of the same cloud id (a
second preimage of its 8 bytes, to George).  A George that joined before the owner's id was
kept takes nothing from it and goes on, on the secret he holds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest

from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.methods import Session
from pairkit.pairing.service import Membership, cloud_id_of, membership_statement
from tests.attack_harness import (
    EvilHost,
    evil_host,
    flip_last_bit,
    open_ks,
    owned_cloud,
)
from tests.cli_helpers import Device, Lab

RENEWED = os.urandom(32)  # what each hostile renewal tries to plant


def signed(host: EvilHost, m: Membership, s: Session) -> Membership:
    """``m`` signed by the host's key, for the guest and this session (as the owner signs)."""
    statement = membership_statement(m, s.peer.device_id, s.fingerprint)
    return dataclasses.replace(m, signature=host.signer.sign(statement))


def renewal(cloud_id: str, epoch: int | None) -> Membership:
    return Membership(role=Role.MEMBER, cloud_id=cloud_id, secret=RENEWED, epoch=epoch)


def held(device: Device) -> dict[str, tuple[str, int, bytes]]:
    """Every cloud ``device`` holds: id -> (role, epoch, a MAC standing for the secret)."""
    ks = open_ks(device)
    return {c.cloud_id: (c.role, c.epoch, ks.cloud_mac(c.cloud_id, b"probe"))
            for c in ks.clouds()}


def not_paul(paul_id: str) -> str:
    """Another device id whose cloud id is Paul's: the same first 8 bytes (a second preimage
    of 64 bits, about 2**64 work; made here by hand), every bit after them flipped."""
    return paul_id[:16] + format(int(paul_id[16:], 16) ^ (2**64 - 1), "016x")


#: whom George joined Paul's cloud from: Paul (his full id kept, as a join keeps it now),
#: another owner of the same cloud id, or nobody kept (joined before owners were kept)
JoinedFrom = str


def paul_renewed_once(lab: Lab, joined_from: JoinedFrom = "paul",
                      ) -> tuple[Device, Device, Device, str]:
    """Paul renewed his cloud once (epoch 1); George and Ringo hold it as members, at epoch 1,
    joined from Paul (George: from ``joined_from``).  (Paul, George, Ringo, Paul's cloud id)."""
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    cloud_id, _ = owned_cloud(paul)
    secret = os.urandom(32)
    ks = open_ks(paul)
    paul_id = ks.device_id
    with ks.update():
        assert ks.renew_cloud_secret(cloud_id, secret) == 1
    owners = {"paul": paul_id, "another-owner": not_paul(paul_id), "before-owners-were-kept": None}
    for member in (george, ringo):
        owner = owners[joined_from] if member is george else paul_id
        ks = open_ks(member)
        with ks.update():
            ks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member", epoch=1,
                         owner=owner)
    return paul, george, ringo, cloud_id


#: (who hosts: "paul" or "ringo", the renewal it sends (host, session, Paul's cloud id))
Craft = Callable[[EvilHost, Session, str], Membership]
ATTACKS: dict[str, tuple[str, Craft]] = {
    # Ringo holds Paul's cloud (he proves it), but the cloud is bound to Paul's key, not his.
    "from-a-member-not-the-owner": ("ringo", lambda h, s, c: signed(h, renewal(c, 2), s)),
    # Ringo proves Paul's cloud, then "renews" his own, which George does not hold: a cloud to
    # join that George never asked for, slipped in as a renewal.
    "for-a-cloud-not-held": ("ringo", lambda h, s, c: signed(
        h, renewal(cloud_id_of(h.me.device_id), 1), s)),
    "bit-flipped": ("paul", lambda h, s, c: dataclasses.replace(
        signed(h, renewal(c, 2), s), secret=flip_last_bit(RENEWED))),
    "unsigned": ("paul", lambda h, s, c: renewal(c, 2)),
    "signed-for-another-session": ("paul", lambda h, s, c: dataclasses.replace(
        renewal(c, 2), signature=h.signer.sign(membership_statement(
            renewal(c, 2), s.peer.device_id, "0000-0000-0000-0000")))),
}

#: what George says of each (his own check refused it, not something on the way)
WHY = {
    "from-a-member-not-the-owner": "a cloud that is not its own",
    "for-a-cloud-not-held": "another cloud than the one this device proved",
    "bit-flipped": "signature does not verify",
    "unsigned": "not signed by the cloud's owner",
    "signed-for-another-session": "signature does not verify",
}


async def play(lab: Lab, who: str, craft: Craft, *, proves: bool = True,
               joined_from: JoinedFrom = "paul",
               ) -> tuple[Device, object, EvilHost, dict]:  # type: ignore[type-arg]
    paul, george, ringo, cloud_id = paul_renewed_once(lab, joined_from)
    before = held(george)
    # Not proving the cloud: George asks to join, the host lets him in as a member (as an
    # owner's yes does) and sends its Membership; his proof did not count.
    grant = Grant(Role.GUEST, 3600) if proves else Grant(Role.MEMBER)
    host = await evil_host(grant, lambda s: craft(host, s, cloud_id),
                           device={"paul": paul, "ringo": ringo}[who],
                           proves=(cloud_id,) if proves else ())
    pin = host.state.new_pin()
    try:
        joined = await george.join(host.target, "-m", "pin", "--pin", pin, "--yes", "--json",
                                   "--timeout", "10")
    finally:
        await host.close()
    return george, joined, host, before


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_hostile_renewal_stores_nothing(lab: Lab, attack: str) -> None:
    who, craft = ATTACKS[attack]
    george, joined, host, before = await play(lab, who, craft)
    assert host.sent, f"the hostile host never got to send its renewal: {host.errors}"
    assert joined.rc != 0, f"George took a hostile renewal ({attack}):\n{joined}"  # type: ignore[attr-defined]
    assert joined.err.startswith("error: "), joined  # type: ignore[attr-defined]
    assert WHY[attack] in joined.err, joined  # type: ignore[attr-defined]
    assert await george.peers() == []
    assert held(george) == before, "George's clouds changed"


async def test_control_the_owners_renewal_is_taken(lab: Lab) -> None:
    """The same host as Paul sending a proper renewal (epoch 2, signed for George and this
    session): George takes it, with no question, and keeps everything else, so the refusals
    above are the product's checks, not the harness."""
    george, joined, host, before = await play(
        lab, "paul", lambda h, s, c: signed(h, renewal(c, 2), s))
    assert joined.ok().json()["role"] == "member"  # type: ignore[attr-defined]
    after = held(george)
    (cloud_id,) = [c for c in after if c == cloud_id_of(host.me.device_id)]
    role, epoch, mac = after[cloud_id]
    assert (role, epoch) == ("member", 2) and mac != before[cloud_id][2]
    assert open_ks(george).cloud(cloud_id).owner == host.me.device_id.hex()
    assert {k: v for k, v in after.items() if k != cloud_id} == {
        k: v for k, v in before.items() if k != cloud_id}


# -- George's proof did not count (atk16b finding 2): the new member's Membership is the renewal --


def new_member(cloud_id: str, epoch: int | None, name: str = "Paul's cloud") -> Membership:
    """A new member's Membership, as the owner's device sends when its owner says yes."""
    return Membership(role=Role.MEMBER, cloud_id=cloud_id, cloud_name=name, secret=RENEWED,
                      epoch=epoch)


UNPROVEN: dict[str, tuple[str, Craft, str]] = {
    "from-a-member-not-the-owner": ("ringo", lambda h, s, c: signed(h, new_member(c, 2), s),
                                    "a cloud that is not its own"),
    "renamed": ("paul", lambda h, s, c: signed(h, new_member(c, 2, "Mallory's cloud"), s),
                "names the cloud otherwise"),
    "unsigned": ("paul", lambda h, s, c: new_member(c, 2), "not signed by the cloud's owner"),
    "signed-for-another-session": ("paul", lambda h, s, c: dataclasses.replace(
        new_member(c, 2), signature=h.signer.sign(membership_statement(
            new_member(c, 2), s.peer.device_id, "0000-0000-0000-0000"))),
        "signature does not verify"),
}


@pytest.mark.parametrize("attack", list(UNPROVEN))
async def test_a_hostile_renewal_to_a_member_let_in_unproven_stores_nothing(
    lab: Lab, attack: str,
) -> None:
    who, craft, why = UNPROVEN[attack]
    george, joined, host, before = await play(lab, who, craft, proves=False)
    assert host.sent, f"the hostile host never got to send its membership: {host.errors}"
    assert joined.rc != 0, f"George took a hostile renewal ({attack}):\n{joined}"  # type: ignore[attr-defined]
    assert joined.err.startswith("error: ") and why in joined.err, joined  # type: ignore[attr-defined]
    assert await george.peers() == []
    assert held(george) == before, "George's clouds changed"


@pytest.mark.parametrize("proves", [True, False], ids=["proven", "unproven"])
@pytest.mark.parametrize("form", ["renewal", "new-member"])
@pytest.mark.parametrize("epoch", [None, 1], ids=["lower", "equal"])
async def test_the_owners_membership_not_newer_stores_nothing_and_the_join_goes_on(
    lab: Lab, proves: bool, form: str, epoch: int | None,
) -> None:
    """Paul's own device, signed for George and this session, but at an epoch not newer than
    George holds (Paul's keystore put back from a backup, atk18 finding 1; or the secret held,
    sent to a member let in as new, atk17 finding 4): nothing to store, and the join goes on
    as a member, with George's clouds unchanged (before, it ended in an error)."""
    make = renewal if form == "renewal" else new_member
    george, joined, host, before = await play(
        lab, "paul", lambda h, s, c: signed(h, make(c, epoch), s), proves=proves)
    assert host.sent, f"the host never got to send its membership: {host.errors}"
    assert joined.ok().json()["role"] == "member", joined  # type: ignore[attr-defined]
    assert held(george) == before, "George's clouds changed"


async def test_control_the_owners_yes_renews_a_member_let_in_unproven(lab: Lab) -> None:
    """Paul's host, not proving the cloud (George's proof did not count), lets him in as a
    member and sends a new member's Membership of epoch 2: George takes it as a renewal (secret
    and epoch), keeping everything else, so the refusals above are the product's checks."""
    george, joined, host, before = await play(
        lab, "paul", lambda h, s, c: signed(h, new_member(c, 2), s), proves=False)
    assert joined.ok().json()["role"] == "member"  # type: ignore[attr-defined]
    after = held(george)
    cloud_id = cloud_id_of(host.me.device_id)
    role, epoch, mac = after[cloud_id]
    assert (role, epoch) == ("member", 2) and mac != before[cloud_id][2]
    assert open_ks(george).cloud(cloud_id).name == "Paul's cloud"
    assert open_ks(george).cloud(cloud_id).owner == host.me.device_id.hex()  # kept
    assert {k: v for k, v in after.items() if k != cloud_id} == {
        k: v for k, v in before.items() if k != cloud_id}


async def test_the_owners_yes_renews_only_a_cloud_joined_from_that_very_owner(
    lab: Lab,
) -> None:
    """What binds a renewal when George's proof did not count is the owner's full device id,
    kept when he joined, not the 8 bytes of it the cloud id is.  The host here has Paul's keys
    (its id hashes to the cloud id, it signs as Paul, it proves nothing) and sends the very
    Membership George takes in the control above; but George joined the cloud from another
    device whose id shares those 8 bytes (to George, the host is one with a second preimage
    of the cloud id).  Refused, nothing stored."""
    george, joined, host, before = await play(
        lab, "paul", lambda h, s, c: signed(h, new_member(c, 2), s), proves=False,
        joined_from="another-owner")
    assert host.sent, f"the hostile host never got to send its membership: {host.errors}"
    assert joined.rc != 0, f"George took the renewal:\n{joined}"  # type: ignore[attr-defined]
    assert joined.err.startswith("error: ") and "not the owner" in joined.err, joined  # type: ignore[attr-defined]
    assert await george.peers() == []
    assert held(george) == before, "George's clouds changed"


@pytest.mark.parametrize("epoch", [2, 1, None])
async def test_a_cloud_joined_before_owners_were_kept_takes_nothing_and_goes_on(
    lab: Lab, epoch: int | None,
) -> None:
    """George joined the cloud before a join kept its owner's id: without his proof nothing
    binds the host to the owner but the cloud id's 8 bytes, so he takes nothing, whatever the
    epoch (newer, the one held, older), and the join goes on as a member on the secret he
    holds (atk17 finding 3: refusing it cut such a member off from its owner's device)."""
    george, joined, host, before = await play(
        lab, "paul", lambda h, s, c: signed(h, new_member(c, epoch), s), proves=False,
        joined_from="before-owners-were-kept")
    assert host.sent, f"the host never got to send its membership: {host.errors}"
    assert joined.ok().json()["role"] == "member", joined  # type: ignore[attr-defined]
    assert held(george) == before, "George's clouds changed"


async def test_a_proven_renewal_is_taken_only_from_the_owner_the_cloud_was_joined_from(
    lab: Lab,
) -> None:
    """The host proves the cloud (it knows the secret George holds, as every member does, and
    a forgotten member until George is renewed) and its id shares the cloud id's 8 bytes with
    the owner George joined from, but is not that owner (played, as above, by George having
    joined from another id with Paul's first 8 bytes).  Its renewal would plant a secret of
    its choosing at an epoch the owner's own renewals never pass: refused, nothing stored."""
    george, joined, host, before = await play(
        lab, "paul", lambda h, s, c: signed(h, renewal(c, 2**40), s),
        joined_from="another-owner")
    assert host.sent, f"the hostile host never got to send its renewal: {host.errors}"
    assert joined.rc != 0, f"George took the renewal:\n{joined}"  # type: ignore[attr-defined]
    assert joined.err.startswith("error: ") and "not the owner" in joined.err, joined  # type: ignore[attr-defined]
    assert await george.peers() == []
    assert held(george) == before, "George's clouds changed"
