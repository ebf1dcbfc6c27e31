"""Group keys through relays: attack review atk19g (session 19).

Over real pairkit secure links on the loopback transport (every hop a ``resume`` session between
devices that paired by PIN) and broadcasts on the loopback radio: a controller, pairkit's own
relay, members, and Mallory, a device that paired with the relay or holds a group's key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import Node, wait_for
from pairkit.pairing import wire
from pairkit.pairing.groups import (
    MAX_BATCH,
    MAX_HELD_PER_CONTROLLER,
    MAX_MEMBERS,
    MAX_QUEUE,
    MAX_SENDERS,
    DeliveryResult,
    Forward,
    ForwardReceipt,
    GroupEnvelope,
    KeyDelivery,
    KeyReceipt,
    RetryPolicy,
    seal_broadcast,
    seal_group_envelope,
)
from pairkit.securelink import SecureLink
from tests.group_harness import Net, relay_net

FAST = RetryPolicy(first=0.05, cap=0.2, attempts=4)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    # Mallory lets the controller in too: she is a member (of "doors") in some tests
    async with relay_net(tmp_path, commissioned=("relay", "far", "mallory")) as made:
        yield made


async def test_a_member_cannot_grow_a_members_replay_state_without_bound(net: Net) -> None:
    """Mallory is a member of "doors" (she holds its key, as any member does).  The sender id
    of a broadcast is inside its ciphertext, chosen by whoever holds the key, and each member
    keeps one replay window per (group, epoch, sender), in its keystore.  Mallory sends
    broadcasts under made-up sender ids: a group has at most 256 members and a controller, so
    a member keeps at most that many windows per group and epoch; the rest are refused
    (unbounded, each one grew the keystore, rewritten on every broadcast heard)."""
    G.create_group(net.ctl.ks, "doors")
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    record, outcomes = await G.add_members(net.ctl.ks, "doors", [net.far.id, net.mallory.id],
                                           reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"] * 2 and record.epoch == 1, outcomes
    # The controller speaks once, over the radio: the far member hears it.
    await net.lab.broadcast(net.ctl, "doors", "close",
                            until=lambda: net.far.read() == ["close"])
    listener = net.far.listener
    assert listener is not None
    listener.persist = True  # as `pairkit group listen` keeps its replay state
    heard = 0
    for i in range(MAX_MEMBERS + 1 + 300):
        payload = seal_broadcast(net.mallory.ks, group="doors", epoch=1,
                                 sender=i.to_bytes(8, "big"), seq=1, command=b"x",
                                 rng=os.urandom)
        heard += listener.hear(payload, "mallory") is not None
    assert heard == MAX_MEMBERS  # with the controller's, as many senders as a group can have
    windows = [k for k in listener.receiver.windows if k[:2] == ("doors", 1)]
    assert len(windows) == MAX_MEMBERS + 1
    assert len(net.far.ks.setting(G.SETTING_WINDOWS, ())) == MAX_MEMBERS + 1
    assert listener.received[-1].command == b"x"
    assert net.far.events[-1]["reason"] == "too-many-senders"
    # A sender heard before the flood is heard after it.
    await net.lab.broadcast(net.ctl, "doors", "open",
                            until=lambda: net.far.read()[-1:] == ["open"])


async def test_a_member_cannot_shut_the_controller_out_of_an_epochs_senders(net: Net) -> None:
    """atk19y finding 6 (low): Mallory is a member of "doors" (she holds its key).  Before
    the controller has spoken at this epoch, she broadcasts over the radio under as many
    made-up sender ids as a member keeps replay windows for (257).  The controller's
    broadcasts must still be taken: its slot is its own.  What she can still do: take the
    members' slots, so that a member not heard yet is refused until the next epoch."""
    G.create_group(net.ctl.ks, "doors")
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    record, outcomes = await G.add_members(net.ctl.ks, "doors", [net.far.id, net.mallory.id],
                                           reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"] * 2 and record.epoch == 1, outcomes

    def settled(mark: int) -> Callable[[], bool]:
        # the far member read it or refused it: either way the broadcast was heard
        return lambda: any(e["event"] in ("command", "rejected") for e in net.far.events[mark:])

    async def flood(sender: bytes) -> str:
        payload = seal_broadcast(net.mallory.ks, group="doors", epoch=1, sender=sender, seq=1,
                                 command=b"x", rng=os.urandom)
        mark = len(net.far.events)
        await net.lab.broadcast(net.mallory, "doors", "", payload=payload, until=settled(mark))
        (heard,) = [e for e in net.far.events[mark:] if e["event"] in ("command", "rejected")]
        return str(heard.get("reason", "read"))

    said = [await flood(i.to_bytes(8, "big")) for i in range(MAX_SENDERS)]
    for command in ("close", "open"):  # the controller, heard at last, is read every time
        mark = len(net.far.events)
        await net.lab.broadcast(net.ctl, "doors", command, until=settled(mark))
        assert net.far.read()[-1:] == [command], net.far.events[-1]
    # her 257th sender was the one refused: the members' 256 slots were full
    assert said == ["read"] * MAX_MEMBERS + ["too-many-senders"], said[-3:]
    # what she can still do: a member's sender not heard before gets no slot in this epoch
    assert await flood(b"\xff" * 8) == "too-many-senders"


async def _forward(net: Net, sender: Node, envs: tuple[GroupEnvelope, ...]) -> list[bool]:
    async def work(slink: SecureLink) -> list[bool]:
        await slink.send(Forward(envs).encode())
        return [r.ok for r in wire.decode(await slink.recv(5), ForwardReceipt).results]

    ok: list[bool] = await G.with_peer(sender.ks, net.lab.reach(sender), net.relay.id, work)
    return ok


async def test_a_peer_of_the_relay_cannot_fill_its_queue_for_every_controller(net: Net) -> None:
    """Mallory, a peer of the relay, forwards envelopes of her own groups (she is their
    controller: the relay's check that the forwarder is the envelope's controller passes) for
    the far member, which is switched off, as members behind relays often are.  Then the real
    controller adds the far member through the relay: its envelope must be queued."""
    await net.lab.start_relay(net.relay, retry=0.05)
    me, far = bytes.fromhex(net.mallory.id), bytes.fromhex(net.far.id)
    fake = [GroupEnvelope(me, far, f"m{i}", 1, os.urandom(32), os.urandom(48), os.urandom(64))
            for i in range(MAX_QUEUE)]
    taken = 0
    for i in range(0, len(fake), MAX_BATCH):
        taken += sum(await _forward(net, net.mallory, tuple(fake[i:i + MAX_BATCH])))
    assert taken == MAX_QUEUE  # her groups, her envelopes: the relay took every one
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    (outcome,) = outcomes
    assert outcome.ok and "queued at relay" in outcome.status, outcome.status
    # and once the member is back, it confirms
    await net.lab.start_member(net.far)
    await wait_for(lambda: "doors" in G.held_groups(net.far.ks), 20)


async def test_a_new_member_cannot_read_what_the_group_said_before_it_joined(net: Net) -> None:
    """The controller and the far member share "doors"; the controller broadcasts a command,
    which Mallory's radio records (she is no member yet).  Then the controller adds Mallory.
    Played back to her, the recorded command must not open under the key she was given."""
    G.create_group(net.ctl.ks, "doors")
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"]
    before = await net.lab.broadcast(net.ctl, "doors", "the code is 4711",
                                     until=lambda: net.far.read() == ["the code is 4711"])
    record, outcomes = await G.add_member(net.ctl.ks, "doors", net.mallory.id,
                                          reach=net.lab.reach(net.ctl), policy=FAST)
    # the far member was given the key of epoch 1: adding Mallory starts epoch 2, which the
    # far member gets in the same round (atk19g finding 3, fixed)
    assert record.epoch == 2
    assert sorted((o.name, o.state) for o in outcomes) == [
        ("far", "confirmed"), ("mallory", "confirmed")]
    assert net.mallory.ks.group_epochs("doors") == (2,)
    recorder = await net.lab.add("recorder")
    mark = len(net.mallory.events)  # she heard (and could not read) the original as it went
    await net.lab.broadcast(recorder, "doors", "", payload=before, until=lambda: any(
        e["event"] == "rejected" for e in net.mallory.events[mark:]))  # heard, and refused
    assert net.mallory.read() == [], "a new member read a broadcast from before it was added"
    assert [e["reason"] for e in net.mallory.events[mark:] if e["event"] == "rejected"] == [
        "wrong-epoch"]
    # The group goes on at the new epoch: both members read what is said now.
    await net.lab.broadcast(net.ctl, "doors", "the code is 0815",
                            until=lambda: net.far.read()[-1:] == net.mallory.read() == [
                                "the code is 0815"])


async def test_one_controller_cannot_make_a_member_hold_groups_without_bound(net: Net) -> None:
    """The far member's owner let Mallory in as a member, which lets her control groups on
    it (docs/security.md, "Who may give a device group keys").  She sends it the keys of ever
    more groups of her own, 32 an envelope batch: past 256 groups from her, the far member
    refuses them, each with its signed word saying why, and still takes a new epoch of a
    group it holds.  Its owner drops one (``group listen NAME --controller``) and there is
    room for one more, then forgets her and all hers go.  Through a relay the refusal settles
    nothing either: the controller is told why, and tries again."""
    await net.lab.commission(net.far, net.mallory)
    await net.lab.start_member(net.far)
    static = net.mallory.ks.get_peer(net.far.id).static_public

    async def deliver(names: list[str], epoch: int = 1) -> list[DeliveryResult]:
        envs = []
        for name in names:
            net.mallory.ks.new_group_key(name, epoch)
            envs.append(seal_group_envelope(net.mallory.ks, group=name, epoch=epoch,
                                            member_public=static))

        async def work(slink: SecureLink) -> list[DeliveryResult]:
            await slink.send(KeyDelivery(tuple(envs)).encode())
            return list(wire.decode(await slink.recv(5), KeyReceipt).results)

        done: list[DeliveryResult] = await G.with_peer(
            net.mallory.ks, net.lab.reach(net.mallory), net.far.id, work)
        return done

    results: list[DeliveryResult] = []
    for batch in range(MAX_MEMBERS // MAX_BATCH + 1):  # 288 groups
        results += await deliver([f"m{batch}-{i}" for i in range(MAX_BATCH)])
    taken = sum(r.ok for r in results)
    assert taken == len(G.held_groups(net.far.ks)) == MAX_HELD_PER_CONTROLLER, taken
    refused = [r for r in results if not r.ok]
    assert len(refused) == len(results) - MAX_HELD_PER_CONTROLLER
    assert all(r.signature is not None for r in refused)  # the member's signed word
    why = refused[0].reason or ""
    bound = f"holds {MAX_HELD_PER_CONTROLLER} groups from controller {net.mallory.id[:8]}"
    assert bound in why, why
    assert "'pairkit forget' or 'pairkit group listen" in why, why
    assert net.far.ks.group_epochs(refused[0].group) == ()  # no key of it kept
    # A group held already takes its new epochs, at the bound as before it.
    (again,) = await deliver(["m0-0"], epoch=2)
    assert again.ok and net.far.ks.group_epochs("m0-0") == (2,), again
    # The owner drops one of hers (naming another controller for it): room for one more.
    assert G.pin_controller(net.far.ks, "m0-1", net.ctl.id)
    first, second = await deliver(["n-1", "n-2"])
    assert (first.ok, second.ok) == (True, False), (first, second)
    # Through a relay: the member's signed refusal is kept for her and tells her why; she
    # forwards again until her attempts run out, and once the owner drops one more of hers,
    # her next try (the same envelope) is taken.
    await net.lab.start_relay(net.relay, retry=0.05)
    G.create_group(net.mallory.ks, "one-more")
    _, outcomes = await G.add_member(net.mallory.ks, "one-more", net.far.id, via=net.relay.id,
                                     reach=net.lab.reach(net.mallory), policy=FAST)
    assert [o.ok for o in outcomes] == [True], outcomes  # queued at the relay
    await wait_for(lambda: any(not r.ok for r in G.relay_receipts(net.relay.ks).receipts), 10)
    _, outcomes = await G.confirm_all(net.mallory.ks, "one-more",
                                      reach=net.lab.reach(net.mallory), policy=FAST)
    (outcome,) = outcomes
    assert outcome.state == "unreachable", outcome
    assert f"holds {MAX_HELD_PER_CONTROLLER} groups" in outcome.status, outcome.status
    assert G.pin_controller(net.far.ks, "m1-0", net.ctl.id)
    _, outcomes = await G.confirm_all(net.mallory.ks, "one-more",
                                      reach=net.lab.reach(net.mallory), policy=FAST,
                                      retry_unreachable=True)
    assert [o.state for o in outcomes] == ["confirmed"], outcomes
    # Forgetting her drops every group held from her.
    from pairkit import peers as store

    assert len(store.forget(net.far.ks, net.mallory.id).groups_dropped) == MAX_HELD_PER_CONTROLLER
    assert G.held_groups(net.far.ks) == {}


async def test_a_refusal_the_member_took_back_does_not_bar_it_through_a_relay(net: Net) -> None:
    """The far member's owner first named the wrong controller for "doors" (Mallory; as a
    relay can also bring about once, by attaching to a genuine envelope a certificate the
    member's CA did not issue), so the far member refused the controller's envelope, and
    signed that refusal, which the relay keeps.  Then the owner names the right controller.
    A member reached directly would take the envelope at the next try; through the relay it
    must, too: a refusal is the member's word at one moment, not for the whole epoch (before,
    the controller stopped forwarding on a refusal and the relay answered "queued" for an
    envelope it held a receipt of, so the member stayed unconfirmed until the next epoch,
    however often the controller tried)."""
    G.create_group(net.ctl.ks, "doors")
    G.pin_controller(net.far.ks, "doors", net.mallory.id)
    await net.lab.start_member(net.far)
    await net.lab.start_relay(net.relay, retry=0.05)
    await G.add_member(net.ctl.ks, "doors", net.far.id, via=net.relay.id,
                       reach=net.lab.reach(net.ctl), policy=FAST)
    await wait_for(lambda: len(G.relay_receipts(net.relay.ks)) == 1, 10)
    (refusal,) = G.relay_receipts(net.relay.ks).receipts
    assert not refusal.ok and "takes that group's keys only from" in (refusal.reason or "")
    G.pin_controller(net.far.ks, "doors", net.ctl.id)  # the owner puts it right
    _, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                      policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"], outcomes
    assert G.held_groups(net.far.ks)["doors"].epoch == 1


async def test_forgetting_a_groups_controller_ends_its_say_over_that_group(net: Net) -> None:
    """The far member's owner let Mallory in as a member (a neighbour's phone, say), which
    lets her control groups on it.  She gets there first with a "doors" of her own, and the
    far member obeys her "doors" broadcasts.  Its owner finds out, forgets Mallory and names
    the real controller for "doors".  Then Mallory's "doors" must be gone from the far member,
    and the real controller's key taken."""
    from pairkit import peers as store

    await net.lab.commission(net.far, net.mallory)
    await net.lab.start_member(net.far)
    G.create_group(net.mallory.ks, "doors")
    _, outcomes = await G.add_member(net.mallory.ks, "doors", net.far.id,
                                     reach=net.lab.reach(net.mallory), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"]
    await net.lab.broadcast(net.mallory, "doors", "open", until=lambda: net.far.read() == ["open"])
    store.forget(net.far.ks, net.mallory.id)
    G.pin_controller(net.far.ks, "doors", net.ctl.id)
    held = G.held_groups(net.far.ks).get("doors")
    assert held is None or held.controller == net.ctl.id, "still Mallory's group"
    assert net.far.ks.group_epochs("doors") == ()  # and her key gone
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"], outcomes


async def test_naming_another_controller_drops_a_group_held_from_the_first(net: Net) -> None:
    """As above, but the owner only names the real controller for "doors" (as 'pairkit group
    listen doors --controller controller' does; Mallory may be a controller this device
    believes by its CA, which 'forget' does not reach): Mallory's "doors" goes, and the real
    controller's key is taken."""
    await net.lab.commission(net.far, net.mallory)
    await net.lab.start_member(net.far)
    G.create_group(net.mallory.ks, "doors")
    await G.add_member(net.mallory.ks, "doors", net.far.id, reach=net.lab.reach(net.mallory),
                       policy=FAST)
    assert G.held_groups(net.far.ks)["doors"].controller == net.mallory.id
    assert G.pin_controller(net.far.ks, "doors", net.ctl.id)
    assert "doors" not in G.held_groups(net.far.ks)
    assert not G.pin_controller(net.far.ks, "doors", net.ctl.id)  # the same word: nothing to do
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"], outcomes
    assert G.held_groups(net.far.ks)["doors"].controller == net.ctl.id
    assert not G.pin_controller(net.far.ks, "doors", net.ctl.id)  # held from it: kept
    assert net.far.ks.group_epochs("doors") == (1,)


async def test_a_running_listener_obeys_no_broadcast_of_a_forgotten_controller(net: Net) -> None:
    """As above; the far member listens (``pairkit group listen``) while its owner runs
    ``pairkit forget mallory`` in another process (another handle on the keystore).  Mallory's
    next broadcast to "doors" is not obeyed: the listener reads the keystore again before it
    believes a broadcast, not only after."""
    from pairkit import peers as store
    from pairkit.cli.demo import DEMO_PIN
    from pairkit.keystore import Keystore

    await net.lab.commission(net.far, net.mallory)
    await net.lab.start_member(net.far)
    G.create_group(net.mallory.ks, "doors")
    await G.add_member(net.mallory.ks, "doors", net.far.id, reach=net.lab.reach(net.mallory),
                       policy=FAST)
    await net.lab.broadcast(net.mallory, "doors", "open", until=lambda: net.far.read() == ["open"])
    owner = Keystore.open(net.far.ks.path, DEMO_PIN)  # `pairkit forget`, another process
    assert store.forget(owner, net.mallory.id).groups_dropped == ("doors",)
    await net.lab.broadcast(net.mallory, "doors", "close", timeout=1.0)
    assert net.far.read() == ["open"]
    assert any(e.get("event") == "rejected" for e in net.far.events)


async def test_forgetting_a_member_on_its_controller_takes_it_out_of_the_groups(
    net: Net,
) -> None:
    """The controller's owner forgets the far member (a door stolen, say) as she would
    forget any device she no longer trusts.  Its groups there must not keep it: out of the
    record, at a new epoch whose key the far member is never sealed."""
    from pairkit import peers as store

    G.create_group(net.ctl.ks, "doors")
    await net.lab.start_member(net.far)
    _, outcomes = await G.add_member(net.ctl.ks, "doors", net.far.id,
                                     reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"]
    done = store.forget(net.ctl.ks, net.far.id)
    assert done.groups_left == ("doors",)  # said: pairkit forget prints it, --json has it
    record = G.controlled(net.ctl.ks, "doors")
    assert record.member(net.far.id) is None
    assert record.epoch == 2
    assert tuple(net.ctl.ks.group_epochs("doors")) == (2,)  # the key it holds: kept no more


async def test_a_member_forgotten_by_another_process_during_a_sync_ends_no_round(
    net: Net,
) -> None:
    """atk19y finding 3 (medium): the owner runs ``pairkit forget`` on a member in one shell
    while ``group sync`` in another still has it among the pending: the round read its targets
    from the record as it was, the seal from the record as it is, and ended in a raw KeyError,
    so the members kept got no new key in that run.  The round now goes on without it."""
    from pairkit import peers as store
    from pairkit.cli.groupdemo import DEMO_PIN
    from pairkit.filestore import FileStorage
    from pairkit.keystore import Keystore

    G.create_group(net.ctl.ks, "doors")
    await net.lab.start_member(net.mallory)
    _, outcomes = await G.add_members(net.ctl.ks, "doors", [net.mallory.id, net.far.id],
                                      reach=net.lab.reach(net.ctl), policy=FAST)
    assert {o.name: o.state for o in outcomes} == {"mallory": "confirmed",
                                                   "far": "pending"}  # far is away
    other = Keystore.open(FileStorage(net.ctl.ks.path), DEMO_PIN)
    assert store.forget(other, net.far.id).groups_left == ("doors",)
    record, outcomes = await G.deliver_pending(net.ctl.ks, "doors", reach=net.lab.reach(net.ctl),
                                               policy=FAST)
    assert record.member(net.far.id) is None and record.epoch == 2
    assert [(o.state) for o in outcomes] == ["confirmed"]  # Mallory, at the new epoch


async def test_a_relay_hands_a_member_one_batch_a_round_and_keeps_what_it_handed(
    net: Net,
) -> None:
    """atk19y finding 2 (medium): a relay handed a member every batch it held in one session,
    each allowed a step, so a peer that queued 1,024 envelopes for itself and answered each
    batch slowly held every round for minutes; and a batch that failed threw away what the
    ones before it had handed.  A round now hands each member one batch (each controller's in
    turn), drops it from the queue once answered, and the next round follows at once."""
    from pairkit.groups import SETTING_RELAY, Relay
    from pairkit.pairing.groups import RelayQueue

    me, far = bytes.fromhex(net.mallory.id), bytes.fromhex(net.far.id)
    many = [GroupEnvelope(me, far, f"m{i}", 1, os.urandom(32), os.urandom(48), os.urandom(64))
            for i in range(40)]
    ks = net.relay.ks
    with ks.update():
        ks.set_setting(SETTING_RELAY, RelayQueue(tuple(many)).to_plain())
    await net.lab.start_member(net.far)
    relay = Relay(ks, reach=net.lab.reach(net.relay), on_event=lambda event: None)
    await relay.deliver()
    assert relay.queue.envelopes == tuple(many[32:])  # one batch handed, and dropped
    assert relay.kick.is_set()  # the next round at once: more is waiting, and it moved
    await relay.deliver()
    assert len(relay.queue) == 0
