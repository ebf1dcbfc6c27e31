"""Group keys through a relay (docs/protocol.md §15): what a device that merely paired with the
relay can make the relay do.

Over real pairkit secure links on the loopback transport (every hop a ``resume`` session between
devices that paired by PIN): a controller, pairkit's own relay, a far member behind it, and
Mallory, a device that paired with the relay (as any member of any group the relay serves
does) and is no controller of the group.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import Node, wait_for
from pairkit.pairing import wire
from pairkit.pairing.groups import (
    MAX_EPOCH,
    Forward,
    ForwardReceipt,
    GroupEnvelope,
    ReceiptBatch,
    ReceiptRequest,
    RetryPolicy,
)
from pairkit.securelink import SecureLink
from tests.group_harness import Net, relay_net

FAST = RetryPolicy(first=0.05, cap=0.2, attempts=8)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with relay_net(tmp_path) as made:
        await made.lab.commission(made.far, made.mallory)  # Mallory is one of the far member's
        await made.lab.start_member(made.far)
        await made.lab.start_relay(made.relay, retry=0.05)
        yield made


async def _forward(net: Net, sender: Node, env: GroupEnvelope) -> bool:
    """``sender`` forwards ``env`` to the relay; whether the relay said it queued it."""

    async def work(slink: SecureLink) -> bool:
        await slink.send(Forward((env,)).encode())
        (result,) = wire.decode(await slink.recv(5), ForwardReceipt).results
        return result.ok

    ok: bool = await G.with_peer(sender.ks, net.lab.reach(sender), net.relay.id, work)
    return ok


async def test_a_peer_of_the_relay_cannot_queue_envelopes_in_a_controllers_name(
    net: Net,
) -> None:
    """Mallory forwards a made-up envelope naming the real controller, the far member, the
    group and the highest epoch.  Were it queued, it would stand as "the newest" for that
    member and group: the controller's real envelope would be dropped behind it (with
    "queued" said), and once delivered and refused, the member's signed refusal of the fake
    epoch would hold the receipt slot, so the member's real receipt would never be kept and
    the controller could never confirm it.  The relay takes envelopes only from the controller
    that signs them (the device its session proved)."""
    G.create_group(net.ctl.ks, "doors")
    fake = GroupEnvelope(
        bytes.fromhex(net.ctl.id), bytes.fromhex(net.far.id), "doors", MAX_EPOCH,
        os.urandom(32), os.urandom(48), os.urandom(64),
    )
    queued = await _forward(net, net.mallory, fake)
    # Whatever the relay answered, give it the time to deliver what it took.
    await wait_for(lambda: not G.relay_queue(net.relay.ks).envelopes, 5, quiet=True)
    # The controller's own delivery through the relay confirms the member.
    await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                       reach=net.lab.reach(net.ctl), policy=FAST)
    record, _ = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                    policy=FAST)
    assert record.member(net.far.id).state(1) == "confirmed"
    assert G.held_groups(net.far.ks)["doors"].epoch == 1
    assert not queued, "the relay queued an envelope Mallory forwarded in the controller's name"
    assert not any(r.epoch == MAX_EPOCH for r in G.relay_receipts(net.relay.ks).receipts)


async def test_one_peer_cannot_hold_every_session_of_a_member(net: Net) -> None:
    """A member serves a few group sessions at once (4).  Mallory, a peer of the far member
    (paired with it, as a neighbour's device may be), opens four sessions and says nothing in
    them: the controller's delivery must still get through (a peer holds one session at a time;
    its newer one replaces the older), not be told "busy" until Mallory's idle sessions end."""
    G.create_group(net.ctl.ks, "doors")
    hold = asyncio.Event()
    opened: list[int] = []

    async def idle(_slink: SecureLink) -> None:
        opened.append(1)
        await hold.wait()

    mallory = [asyncio.create_task(G.with_peer(net.mallory.ks, net.lab.reach(net.mallory),
                                               net.far.id, idle)) for _ in range(4)]
    try:
        await wait_for(lambda: len(opened) == 4, 10, quiet=True)
        _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id,
                                         reach=net.lab.reach(net.ctl),
                                         policy=RetryPolicy(first=0.05, cap=0.1, attempts=1))
        assert [o.state for o in outcomes] == ["confirmed"], outcomes
    finally:
        hold.set()
        for task in mallory:
            task.cancel()
        await asyncio.gather(*mallory, return_exceptions=True)


async def test_a_relay_hands_a_controllers_receipts_to_that_controller_only(net: Net) -> None:
    """The far member confirmed through the relay; Mallory asks the relay for the receipts of
    the very envelopes the controller sent (she learnt their digests: say she saw them pass).
    The relay answers an empty batch: it gives receipts only to the controller they name (the
    device its session proved)."""
    G.create_group(net.ctl.ks, "doors")
    await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                       reach=net.lab.reach(net.ctl), policy=FAST)
    record, _ = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                    policy=FAST)
    assert record.member(net.far.id).state(1) == "confirmed"
    digests = [r.envelope for r in G.relay_receipts(net.relay.ks).receipts]
    assert digests

    async def ask(slink: SecureLink) -> tuple:
        await slink.send(ReceiptRequest(tuple(digests)).encode())
        return wire.decode(await slink.recv(5), ReceiptBatch).receipts

    assert await G.with_peer(net.mallory.ks, net.lab.reach(net.mallory), net.relay.id,
                             ask) == ()
