"""Adding members starts a new epoch once the group's key may have been used (attack review
atk19g, finding 3: a member added at the current epoch read what the group had said at it).

Over real pairkit secure links on the loopback transport, through pairkit's own relay
(:func:`tests.group_harness.relay_net`): the controller, a relay, the far member behind it and
a member reached directly (the harness calls it Mallory; here it is simply the newcomer or
the earlier member).  Each test says which rule of docs/protocol.md §15 it holds to across
the new epoch: the earlier members follow and read what is said after the add, an earlier
member away during the add gets the new key from a later ``group sync``, a member ends on the
newest epoch whichever envelope reaches it first, and a relay holds one envelope per member
and group, whatever the number of adds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import Node, wait_for
from pairkit.pairing import wire
from pairkit.pairing.errors import ConfigError
from pairkit.pairing.groups import KeyDelivery, KeyReceipt, RetryPolicy
from pairkit.securelink import SecureLink
from tests.group_harness import Net, relay_net

FAST = RetryPolicy(first=0.05, cap=0.2, attempts=40)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with relay_net(tmp_path, commissioned=("relay", "far", "mallory")) as made:
        yield made


def _held(node: Node) -> int | None:
    held = G.held_groups(node.ks).get("doors")
    return held.epoch if held else None


def _keys(node: Node) -> list[int]:
    """The epochs of "doors" whose key ``node`` took, in the order first taken (a relay may
    hand an envelope over again while its receipt is on the way)."""
    return list(dict.fromkeys(
        e["epoch"] for e in node.events if e["event"] == "key" and e["group"] == "doors"))


def _rejected(node: Node, since: int) -> list[str]:
    return [e["reason"] for e in node.events[since:] if e["event"] == "rejected"]


async def test_members_added_earlier_follow_to_the_new_epoch_and_read_what_follows(
    net: Net,
) -> None:
    """The far member (behind the relay) holds epoch 1 and broadcasts under it; the
    controller never did, so only the far member's receipt tells the controller that the key
    left it.  Adding the newcomer starts epoch 2: the far member gets it through the relay,
    both read what either says at epoch 2, and the newcomer refuses what was said at 1."""
    await net.lab.start_relay(net.relay, retry=0.05)
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    G.create_group(net.ctl.ks, "doors")
    await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                       reach=net.lab.reach(net.ctl), policy=FAST)
    record, _ = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                    policy=FAST)
    assert record.epoch == 1 and record.pending() == ()
    said = await net.lab.broadcast(net.far, "doors", "door 7 jammed",
                                   until=lambda: _rejected(net.mallory, 0) != [])  # unread

    record, outcomes = await G.add_member(net.ctl.ks, "doors", net.mallory.id,
                                          reach=net.lab.reach(net.ctl), policy=FAST)
    assert record.epoch == 2
    by_name = {o.name: o for o in outcomes}
    assert (by_name["mallory"].epoch, by_name["mallory"].state) == (2, "confirmed")
    assert (by_name["far"].epoch, by_name["far"].state) == (2, "pending")
    assert by_name["far"].status == "queued at relay, awaiting the member's receipt"
    assert net.ctl.ks.group_epochs("doors") == (2,)  # the controller forgot the old key
    await wait_for(lambda: _held(net.far) == 2, 10)
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                           policy=FAST)
    assert {m.name: m.state(2) for m in record.members} == {"far": "confirmed",
                                                           "mallory": "confirmed"}
    assert net.far.ks.group_epochs("doors") == (2,) and _keys(net.far) == [1, 2]
    assert _keys(net.mallory) == [2]
    # The relay keeps one receipt per member and group: the newest epoch's.
    assert [(r.epoch, r.ok) for r in G.relay_receipts(net.relay.ks).receipts] == [(2, True)]

    # What the far member said at epoch 1, played back: the newcomer hears it, refuses it.
    recorder = await net.lab.add("recorder")
    mark = len(net.mallory.events)
    await net.lab.broadcast(recorder, "", "", payload=said,
                            until=lambda: _rejected(net.mallory, mark) != [])
    assert _rejected(net.mallory, mark) == ["wrong-epoch"]
    assert "door 7 jammed" not in net.mallory.read()
    # At epoch 2 everyone reads everyone: the controller, the earlier and the new member.
    await net.lab.broadcast(net.ctl, "doors", "close all doors",
                            until=lambda: all("close all doors" in n.read()
                                              for n in (net.far, net.mallory)))
    await net.lab.broadcast(net.far, "doors", "door 7 free",
                            until=lambda: "door 7 free" in net.mallory.read())
    await net.lab.broadcast(net.mallory, "doors", "door 2 open",
                            until=lambda: "door 2 open" in net.far.read())
    # The far member's replay windows are the new epoch's only (senders are counted per
    # group and epoch: at most 257, docs/security.md).
    assert net.far.listener is not None
    assert {k[:2] for k in net.far.listener.receiver.windows} == {("doors", 2)}


async def test_an_earlier_member_away_during_the_add_gets_the_new_epoch_from_a_later_sync(
    net: Net,
) -> None:
    """The newcomer (reached directly) holds epoch 1 and is switched off when the far member
    is added: the round leaves it pending at epoch 2; once it is back, ``group sync``
    (confirm_all) delivers epoch 2 and confirms it."""
    await net.lab.start_relay(net.relay, retry=0.05)
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.mallory.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    assert [(o.name, o.state, o.epoch) for o in outcomes] == [("mallory", "confirmed", 1)]
    await net.lab.power_off(net.mallory)

    record, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                                          reach=net.lab.reach(net.ctl), policy=FAST)
    assert record.epoch == 2
    away = next(o for o in outcomes if o.name == "mallory")
    assert (away.epoch, away.state, away.attempts) == (2, "pending", 1)
    assert away.status.startswith("unreachable")
    member = record.member(net.mallory.id)
    assert member is not None and member.delivered == 1  # confirmed the old epoch only
    assert _held(net.mallory) == 1

    await net.lab.power_on(net.mallory)
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                           policy=FAST)
    assert {m.name: m.state(2) for m in record.members} == {"far": "confirmed",
                                                           "mallory": "confirmed"}
    assert _held(net.mallory) == 2 and net.mallory.ks.group_epochs("doors") == (2,)
    await net.lab.broadcast(net.ctl, "doors", "all clear",
                            until=lambda: all("all clear" in n.read()
                                              for n in (net.far, net.mallory)))


async def test_a_member_ends_on_the_newest_epoch_whichever_envelope_comes_first(
    net: Net,
) -> None:
    """The far member is switched off when it is added: its envelope of epoch 1 waits at the
    relay.  Adding the newcomer starts epoch 2 (the key was sealed to the far member, which
    may have opened it: the controller cannot tell), and the relay keeps only the newest
    envelope for it (a round it began before may still hand over the old one first): the far
    member ends on epoch 2.  An old envelope arriving after the new one (a relay replaying
    what it once held) is refused: the far member stays at epoch 2."""
    await net.lab.start_relay(net.relay, retry=0.05)
    await net.lab.start_member(net.mallory)
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    assert [(o.name, o.epoch, o.ok) for o in outcomes] == [("far", 1, True)]  # queued
    old = G.controlled(net.ctl.ks, "doors").member(net.far.id).waiting()  # type: ignore[union-attr]
    assert old is not None and old.epoch == 1
    assert [e.epoch for e in G.relay_queue(net.relay.ks).envelopes] == [1]

    record, _ = await G.add_member(net.ctl.ks, "doors", net.mallory.id,
                                   reach=net.lab.reach(net.ctl), policy=FAST)
    assert record.epoch == 2
    # One envelope per member and group at the relay, the newest: an add costs the relay's
    # share of this controller nothing more than the members it serves.
    assert [(e.member.hex(), e.epoch) for e in G.relay_queue(net.relay.ks).envelopes] == [
        (net.far.id, 2)]

    await net.lab.start_member(net.far)
    await wait_for(lambda: _held(net.far) == 2, 10)
    record, _ = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                    policy=FAST)
    assert {m.name: m.state(2) for m in record.members} == {"far": "confirmed",
                                                           "mallory": "confirmed"}
    assert _keys(net.far)[-1] == 2 and net.far.ks.group_epochs("doors") == (2,)

    async def replay(slink: SecureLink) -> bool:
        await slink.send(KeyDelivery((old,)).encode())
        (result,) = wire.decode(await slink.recv(5), KeyReceipt).results
        assert "older than the epoch 2" in (result.reason or "")
        return result.ok

    assert not await G.with_peer(net.relay.ks, net.lab.reach(net.relay), net.far.id, replay)
    assert _held(net.far) == 2 and net.far.ks.group_epochs("doors") == (2,)
    # The controller's record is unmoved: the far member confirmed epoch 2.
    assert G.controlled(net.ctl.ks, "doors").member(net.far.id).state(2) == "confirmed"  # type: ignore[union-attr]


async def test_members_added_in_one_call_share_one_new_epoch_and_a_controllers_broadcast_counts(
    net: Net,
) -> None:
    """Members nobody but the controller holds the key of can be added at that epoch; once
    the controller broadcast under it (its own sequence number says so) an add starts a new
    epoch, even though no member holds the key; and members added in one call, or admitted
    before the next round, share one new epoch."""
    await net.lab.start_relay(net.relay, retry=0.05)
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    G.create_group(net.ctl.ks, "doors")
    G.advert_for(net.ctl.ks, "doors", b"anyone there?", max_payload=255)  # said at epoch 1
    record = G.admit_members(net.ctl.ks, "doors", [net.mallory.id])
    assert record.epoch == 2 and not record.key_given()
    # Admitted before any round: nobody holds epoch 2's key yet, so no further epoch.
    record, outcomes = await G.add_members(net.ctl.ks, "doors", [net.far.id],
                                           via=net.relay.id, reach=net.lab.reach(net.ctl),
                                           policy=FAST)
    assert record.epoch == 2 and {o.name for o in outcomes} == {"far", "mallory"}
    await wait_for(lambda: _held(net.far) == _held(net.mallory) == 2, 10)

    G.create_group(net.ctl.ks, "vents")
    record, outcomes = await G.add_members(net.ctl.ks, "vents", [net.mallory.id, "far"],
                                           reach=net.lab.reach(net.ctl), policy=FAST)
    assert record.epoch == 1 and {o.name for o in outcomes} == {"far", "mallory"}
    with pytest.raises(ConfigError, match="already a member"):
        await G.add_members(net.ctl.ks, "vents", [net.far.id, net.mallory.id],
                            reach=net.lab.reach(net.ctl))
    assert G.controlled(net.ctl.ks, "vents").epoch == 1  # a refused add changes nothing
