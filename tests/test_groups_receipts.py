"""Confirmed group keys (issue 14): a member's signed receipt comes back through the relay, and
a relay that lies cannot make the controller believe a member has a key it has not.

Over real pairkit secure links on the loopback transport (every hop a ``resume`` session
between devices that paired by PIN), with :class:`tests.group_adversary.LyingRelay` in the
relay's place: it forges receipts (with its own key, or none), hands over the previous epoch's
receipt (as it is, or relabelled as the new one), drops envelopes, or delivers the previous
epoch's envelope in place of the new one.  The controller under test is pairkit's own.  The
same flow runs between processes over TCP in test_groups_cli.py and over bumble virtual radios
in test_groups_ble.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab, Node, wait_for
from pairkit.keystore import Keystore
from pairkit.pairing import wire
from pairkit.pairing.groups import Forward, ForwardReceipt, RetryPolicy
from pairkit.securelink import SecureLink

from .group_adversary import LyingRelay, LyingService

FAST = RetryPolicy(first=0.05, cap=0.2, attempts=40)
#: three tries, then the member is reported unreachable
SHORT = RetryPolicy(first=0.05, cap=0.1, attempts=3)


@dataclasses.dataclass
class Net:
    lab: GroupLab
    ctl: Node
    relay: Node
    far1: Node
    far2: Node

    @property
    def reach(self) -> G.Reach:
        return self.lab.reach(self.ctl)

    @property
    def liar(self) -> LyingRelay:
        assert isinstance(self.relay.relay, LyingRelay)
        return self.relay.relay


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=0.5, step_timeout=5)
    try:
        ctl = await lab.add("controller")
        relay = await lab.add("relay", downlink=True)
        far1, far2 = [await lab.add(n) for n in ("far-1", "far-2")]
        for node in (relay, far1, far2):
            await lab.commission(node, ctl)  # each owner lets the controller in
        for node in (far1, far2):
            await lab.commission(node, relay)
            await lab.start_member(node)
        await lab.start_relay(relay, retry=0.05, relay_type=LyingRelay,
                              service_type=LyingService)
        yield Net(lab, ctl, relay, far1, far2)
    finally:
        await lab.close()


def _epoch(node: Node) -> int | None:
    held = G.held_groups(node.ks).get("doors")
    return held.epoch if held else None


def _member(net: Net, node: Node) -> G.GroupMember:
    m = G.controlled(net.ctl.ks, "doors").member(node.id)
    assert m is not None
    return m


async def _confirmed_group(net: Net) -> None:
    """doors at epoch 1, both far members (added together) confirmed through the honest
    relay."""
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_members(net.ctl.ks, "doors", [net.far1.id, net.far2.id],
                                      via=net.relay.id, reach=net.reach, policy=FAST)
    for node in (net.far1, net.far2):
        mine = next(o for o in outcomes if o.name == node.name)
        # The relay queued it: that is an attempt, not a confirmation.
        assert mine.ok and mine.state == "pending" and "awaiting the member's receipt" in (
            mine.status)
        assert _member(net, node).delivered == 0
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach, policy=FAST)
    assert {m.state(1) for m in record.members} == {"confirmed"}
    assert all("receipt through relay" in o.status for o in outcomes)


async def test_a_members_receipt_comes_back_through_the_relay(net: Net) -> None:
    await _confirmed_group(net)
    assert _epoch(net.far1) == _epoch(net.far2) == 1
    # The relay held the receipts and handed them over; it kept them (they are no secret and
    # answer nothing else), one per member and group.
    assert {e["member"] for e in net.relay.events if e["event"] == "receipt-returned"} == {
        "far-1", "far-2"}
    assert len(net.liar.receipts) == 2
    # What the controller knows is in its keystore, for the next command.
    again = Keystore.open(net.ctl.ks.path, "246813")
    status = G.group_status(again, "doors")
    assert {m["name"]: (m["state"], m["confirmed"], m["next_try"])
            for m in status["controls"][0]["members"]} == {
        "far-1": ("confirmed", 1, None), "far-2": ("confirmed", 1, None)}
    # Forwarded again (as a controller does when it asked before the receipt came back): the
    # relay, holding the member's receipt for that very envelope, does not deliver it again.
    waiting = net.liar.captured[-1]
    forwarded = sum(e["event"] == "forwarded" for e in net.relay.events)

    async def again_(slink: SecureLink) -> tuple:
        await slink.send(Forward((waiting,)).encode())
        return wire.decode(await slink.recv(5), ForwardReceipt).results

    (result,) = await G.with_peer(net.ctl.ks, net.reach, net.relay.id, again_)
    assert result.ok and len(net.liar.queue) == 0
    await asyncio.sleep(0.3)  # a few of the relay's rounds
    assert sum(e["event"] == "forwarded" for e in net.relay.events) == forwarded
    # Nothing pending: a further sync reaches nobody.
    _, none = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach, policy=FAST)
    assert none == []


@pytest.mark.parametrize(("mode", "why"), [
    ("drop", "queued at relay, awaiting the member's receipt"),
    ("forge-self", "relay handed over a bad receipt: a receipt for doors epoch 2 is not signed "
                   "by its member"),
    ("forge-zero", "not signed by its member"),
    ("relabel-old", "not signed by its member"),
    ("replay-old", "relay unreachable: the relay answered with receipts for envelopes not "
                   "asked about"),
    ("replay-envelope", "queued at relay, awaiting the member's receipt"),
])
async def test_a_lying_relay_confirms_nobody(net: Net, mode: str, why: str) -> None:
    await _confirmed_group(net)
    net.liar.mode = mode
    record, outcomes = await G.rekey_group(net.ctl.ks, "doors", reach=net.reach, policy=SHORT)
    assert record.epoch == 2
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach, policy=SHORT)
    # Every attempt ran out: reported unreachable, never confirmed, and the lie is named.
    assert {o.name: o.state for o in outcomes} == {"far-1": "unreachable", "far-2": "unreachable"}
    assert all(why in o.status for o in outcomes), [o.status for o in outcomes]
    for node in (net.far1, net.far2):
        m = _member(net, node)
        assert (m.delivered, m.attempts, m.state(2)) == (1, 3, "unreachable")
        assert _epoch(node) == 1  # and indeed the member never got epoch 2
    if mode.startswith(("forge", "relabel", "replay-old")):
        assert net.liar.lies >= 3
    if mode == "replay-envelope":
        # The members took the old envelope again (the epoch they hold) and signed for it;
        # that receipt names the old envelope, so it confirms nothing.
        await wait_for(lambda: sum(e["event"] == "key" for e in net.far1.events) >= 2, 5)

    # An honest relay again, and the controller asked to try once more: both confirm epoch 2.
    net.liar.mode = "honest"
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach, policy=FAST,
                                           retry_unreachable=True)
    assert {m.state(2) for m in record.members} == {"confirmed"}
    assert _epoch(net.far1) == _epoch(net.far2) == 2


async def test_a_receipt_from_an_earlier_incarnation_of_the_group_confirms_nothing(
    net: Net,
) -> None:
    """A group deleted and made again starts at epoch 1 again: the old receipt names the same
    member, group and epoch, but another envelope."""
    await _confirmed_group(net)
    old = list(net.liar.receipts.receipts)
    with net.ctl.ks.update():
        net.ctl.ks.set_setting(G.SETTING_CONTROLLER, {})
        net.ctl.ks.forget_group("doors")
    G.create_group(net.ctl.ks, "doors")
    net.liar.mode = "relabel-old"  # hands the old receipts, their digests changed to the new
    await G.add_members(net.ctl.ks, "doors", [net.far1.id, net.far2.id], via=net.relay.id,
                        reach=net.reach, policy=SHORT)
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach, policy=SHORT)
    assert {o.state for o in outcomes} == {"unreachable"}
    assert all(m.delivered == 0 for m in record.members)
    assert old and all(r.epoch == 1 for r in old)


async def test_an_unreachable_relay_counts_attempts_and_status_says_when_next(net: Net) -> None:
    await _confirmed_group(net)
    await net.lab.power_off(net.relay)
    _, outcomes = await G.rekey_group(net.ctl.ks, "doors", reach=net.reach,
                                      policy=RetryPolicy(first=60, attempts=5))
    assert all(o.status.startswith("relay unreachable") and o.state == "pending"
               for o in outcomes)
    member = G.group_status(net.ctl.ks)["controls"][0]["members"][0]
    now = net.reach.clock.wall()
    assert member["state"] == "pending" and member["attempts"] == 1
    assert now < member["next_try"] <= now + 60
    assert member["last"].startswith("relay unreachable")
