"""Rule 2 (grants are one-way) and group keys: which of a device's peers may make themselves
the controller of a group on it (docs/protocol.md §15, docs/security.md rule 2).

Over real pairkit secure links on the loopback transport: the door runs its group service (as
``pairkit group listen`` without ``--controller``); George is a peer the door's owner only let
in as a temporary guest (George joined the door's host with a guest grant).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab, Node, wait_for
from pairkit.pairing.groups import RetryPolicy
from tests.group_harness import commission_guest

ONCE = RetryPolicy(first=0.05, cap=0.1, attempts=1)
REFUSED = "did not let"


def _refusals(node: Node) -> list[str]:
    return [e["reason"] for e in node.events if e["event"] == "key-refused"]


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[GroupLab]:
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=0.5, step_timeout=5)
    try:
        yield lab
    finally:
        await lab.close()


async def test_a_guest_of_the_door_cannot_make_itself_the_doors_group_controller(
    lab: GroupLab,
) -> None:
    """The door's owner let George in as a guest for an hour (a grant of standing in the
    door's cloud, rule 2).  George creates a group and delivers its key to the door: the door
    must refuse it, for its owner never let George control it; else George broadcasts
    commands the door's listener reports as its group's, now and after the guest grant ends."""
    door = await lab.add("door")
    george = await lab.add("george")
    await commission_guest(lab, host=door, guest=george)
    await lab.start_member(door)
    G.create_group(george.ks, "doors")
    _, outcomes = await G.add_member(george.ks, "doors", door.id, reach=lab.reach(george),
                                     policy=ONCE)
    assert "doors" not in G.held_groups(door.ks), outcomes
    assert [o.state for o in outcomes] != ["confirmed"]
    assert any(REFUSED in r for r in _refusals(door)), door.events


async def test_a_guest_whose_grant_ended_is_refused_too(lab: GroupLab) -> None:
    """George's hour as the door's guest is over (the door's record of his grant says so):
    an ended guest grant lets him control nothing either."""
    door = await lab.add("door")
    george = await lab.add("george")
    await commission_guest(lab, host=door, guest=george)
    with door.ks.update():
        record = door.ks.get_peer(george.id)
        assert record.extra["granted"] == "guest"
        door.ks.add_peer(dataclasses.replace(
            record, extra={**record.extra, "granted_expires": 1}))  # ended long ago
    await lab.start_member(door)
    G.create_group(george.ks, "doors")
    _, outcomes = await G.add_member(george.ks, "doors", door.id, reach=lab.reach(george),
                                     policy=ONCE)
    assert "doors" not in G.held_groups(door.ks)
    assert [o.state for o in outcomes] != ["confirmed"]
    assert any(REFUSED in r for r in _refusals(door)), door.events


async def test_a_peer_the_owner_made_a_member_may_control_without_a_pin(
    lab: GroupLab,
) -> None:
    """The door's owner let the controller in as a *member* (the door hosted, the controller
    joined): it may make groups on the door with no ``--controller`` given."""
    door = await lab.add("door")
    ctl = await lab.add("controller")
    await lab.commission(door, ctl)
    assert door.ks.get_peer(ctl.id).extra["granted"] == "member"
    await lab.start_member(door)
    G.create_group(ctl.ks, "doors")
    _, outcomes = await G.add_member(ctl.ks, "doors", door.id, reach=lab.reach(ctl),
                                     policy=ONCE)
    assert G.held_groups(door.ks)["doors"].controller == ctl.id
    assert [o.state for o in outcomes] == ["confirmed"], outcomes


async def test_the_controller_the_owner_pinned_is_accepted_though_only_a_guest(
    lab: GroupLab,
) -> None:
    """The owner chose George as the controller of "doors" (``group listen doors --controller
    george``): his guest grant does not matter, the owner's pin does.  And only for that
    group: another group George makes on the door is refused."""
    door = await lab.add("door")
    george = await lab.add("george")
    await commission_guest(lab, host=door, guest=george)
    G.pin_controller(door.ks, "doors", george.id)
    await lab.start_member(door)
    for name in ("doors", "locks"):
        G.create_group(george.ks, name)
    _, outcomes = await G.add_member(george.ks, "doors", door.id, reach=lab.reach(george),
                                     policy=ONCE)
    assert [o.state for o in outcomes] == ["confirmed"], outcomes
    assert G.held_groups(door.ks)["doors"].controller == george.id
    _, outcomes = await G.add_member(george.ks, "locks", door.id, reach=lab.reach(george),
                                     policy=ONCE)
    assert "locks" not in G.held_groups(door.ks)
    assert [o.state for o in outcomes] != ["confirmed"]


async def test_a_member_grant_withdrawn_by_forget_gives_no_keys_any_more(
    lab: GroupLab,
) -> None:
    """The door's owner made the controller a member, then forgot it (``pairkit forget``): a
    new epoch of the group the door holds, and a new group, are both refused; the controller
    never sees the door confirmed."""
    door = await lab.add("door")
    ctl = await lab.add("controller")
    await lab.commission(door, ctl)
    await lab.start_member(door)
    G.create_group(ctl.ks, "doors")
    await G.add_member(ctl.ks, "doors", door.id, reach=lab.reach(ctl), policy=ONCE)
    assert G.held_groups(door.ks)["doors"].epoch == 1
    with door.ks.update():
        door.ks.forget_peer(ctl.id)
    _, outcomes = await G.rekey_group(ctl.ks, "doors", reach=lab.reach(ctl), policy=ONCE)
    assert G.held_groups(door.ks)["doors"].epoch == 1
    assert [o.state for o in outcomes] != ["confirmed"]
    G.create_group(ctl.ks, "locks")
    _, outcomes = await G.add_member(ctl.ks, "locks", door.id, reach=lab.reach(ctl),
                                     policy=ONCE)
    assert "locks" not in G.held_groups(door.ks)
    assert [o.state for o in outcomes] != ["confirmed"]


async def test_a_relay_the_door_trusts_does_not_vouch_for_a_guest_controller(
    lab: GroupLab,
) -> None:
    """The door made the relay a member (it delivers the door's keys), and let George in as a
    guest.  George forwards a group's key for the door through the relay: the relay hands it
    over, but the envelope names George as its controller, and George is only a guest, so the
    door refuses it; the receipt George gets back says refused."""
    door = await lab.add("door")
    relay = await lab.add("relay")
    george = await lab.add("george")
    await lab.commission(door, relay)
    await lab.commission(relay, george)  # George is one of the relay's peers
    await commission_guest(lab, host=door, guest=george)
    await lab.start_member(door)
    await lab.start_relay(relay, retry=0.05)
    G.create_group(george.ks, "doors")
    policy = RetryPolicy(first=0.05, cap=0.2, attempts=6)
    await G.add_member(george.ks, "doors", door.id, via=relay.id, reach=lab.reach(george),
                       policy=policy)
    assert await wait_for(lambda: bool(_refusals(door)), 10, quiet=True), door.events
    record, _ = await G.confirm_all(george.ks, "doors", reach=lab.reach(george), policy=policy)
    assert "doors" not in G.held_groups(door.ks)
    assert record.member(door.id).state(1) != "confirmed"
    assert any(REFUSED in r for r in _refusals(door)), door.events
