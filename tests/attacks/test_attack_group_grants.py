"""Rule 2 (grants are one-way) and group keys: which of a device's peers may make themselves
the controller of a group on it (docs/protocol.md §15, docs/security.md rule 2).

Over real pairkit secure links on the loopback transport: the door runs its group service (as
``pairkit group listen`` without ``--controller``); George is a peer the door's owner only let
in as a temporary guest (George joined the door's host with a guest grant).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab
from pairkit.pairing.groups import RetryPolicy
from tests.group_harness import commission_guest

ONCE = RetryPolicy(first=0.05, cap=0.1, attempts=1)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[GroupLab]:
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=0.5, step_timeout=5)
    try:
        yield lab
    finally:
        await lab.close()


@pytest.mark.xfail(strict=True, reason="finding 6: a member takes group keys from any "
                   "authenticated known peer, a guest of its own host included")
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
