"""Rule 5 across frames: a peer the keystore no longer trusts as recorded (a ``clear`` pairing
an older pairkit stored as authenticated before the link's MITM protection was checked:
``peers.suspect``) and the group service (attack review atk15, session 15).

``pairkit peers`` lists such a peer as "pair again to trust it", the library's
``Device.peers`` says ``authenticated=False`` and ``resume``/``kk`` carry it on as
unauthenticated (docs/security.md, rule 5: "treated as unauthenticated").  The group service
read the record's raw flag instead: a member believed a group envelope signed by such a peer as
its controller's, and a controller gave it group keys, as if a person had vouched for it.

Over real pairkit secure links on the loopback transport (the group lab of
tests/attacks/test_attack_group_grants.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit import peers as store
from pairkit.cli.groupdemo import GroupLab, Node
from pairkit.pairing.errors import ConfigError
from pairkit.pairing.groups import RetryPolicy

ONCE = RetryPolicy(first=0.05, cap=0.1, attempts=1)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[GroupLab]:
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=0.5, step_timeout=5)
    try:
        yield lab
    finally:
        await lab.close()


def as_an_old_clear_pairing(node: Node, peer_id: str) -> None:
    """Rewrite ``node``'s record of ``peer_id`` as an older pairkit stored a ``clear`` pairing:
    authenticated, with no word on the link's MITM protection (no ``link_mitm``)."""
    with node.ks.update():
        record = node.ks.get_peer(peer_id)
        extra = {k: v for k, v in record.extra.items() if k != "link_mitm"}
        node.ks.add_peer(dataclasses.replace(record, method="clear", authenticated=True,
                                             extra=extra))
    record = node.ks.get_peer(peer_id)
    assert store.suspect(record) is not None and not store.trusted(record)


async def test_a_member_believes_no_controller_its_keystore_no_longer_trusts(
    lab: GroupLab,
) -> None:
    """The door's owner made the controller a member, by an old ``clear`` pairing that nobody
    vouched for (the door lists it "pair again to trust it").  The controller delivers a
    group's key: the door must refuse it, as every other part of pairkit treats that peer as
    unauthenticated.  (Found holding: the delivery's ``resume`` carries the peer on as
    unauthenticated, ``peers.known_peer`` reading ``trusted``, and stores it so before the
    envelope is read; a resume that copied the raw flag fails this.)"""
    door = await lab.add("door")
    ctl = await lab.add("controller")
    await lab.commission(door, ctl)
    as_an_old_clear_pairing(door, ctl.id)
    assert door.ks.get_peer(ctl.id).extra["granted"] == "member"
    await lab.start_member(door)
    G.create_group(ctl.ks, "doors")
    _, outcomes = await G.add_member(ctl.ks, "doors", door.id, reach=lab.reach(ctl),
                                     policy=ONCE)
    assert "doors" not in G.held_groups(door.ks), outcomes
    assert [o.state for o in outcomes] != ["confirmed"]


async def test_a_controller_gives_no_keys_to_a_peer_its_keystore_no_longer_trusts(
    lab: GroupLab,
) -> None:
    """The other way: the controller's record of the door is such an old ``clear`` pairing.
    Adding it to a group is refused with the same advice as for any unauthenticated peer."""
    door = await lab.add("door")
    ctl = await lab.add("controller")
    await lab.commission(door, ctl)
    as_an_old_clear_pairing(ctl, door.id)
    G.create_group(ctl.ks, "doors")
    with pytest.raises(ConfigError, match="without authentication"):
        await G.add_member(ctl.ks, "doors", door.id, reach=lab.reach(ctl), policy=ONCE)
