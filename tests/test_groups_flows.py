"""Group keys end to end over real pairkit secure links, in one process (loopback transport).

Every device has a real keystore, pairs by PIN, and every delivery is a ``resume`` session
through :func:`cli.flows.run_join` / :func:`cli.flows.run_host` (runtime/groups.py); broadcasts go
out as loopback advertisements.  :class:`cli.groupdemo.GroupLab` is the harness the demo uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab, Node, wait_for
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing import wire
from pairkit.pairing.errors import AuthenticationError, ConfigError, NotFoundError
from pairkit.pairing.groups import (
    GroupEnvelope,
    KeyDelivery,
    KeyReceipt,
    RetryPolicy,
    envelope_info,
    seal_group_envelope,
)
from pairkit.securelink import SecureLink

KNOWN_KEY = bytes(range(7, 39))
#: retries a few hundredths of a second apart (the flows here wait for nothing else)
FAST = RetryPolicy(first=0.05, cap=0.2, attempts=40)


@dataclasses.dataclass
class Net:
    lab: GroupLab
    ctl: Node
    relay: Node
    near: Node  # reached directly
    far1: Node  # reached through the relay
    far2: Node
    outsider: Node  # in the controller's cloud, in no group

    @property
    def reach(self) -> G.Reach:
        return self.lab.reach(self.ctl)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=0.5, step_timeout=5)
    try:
        ctl = await lab.add("controller")
        relay = await lab.add("relay", downlink=True)
        near, far1, far2, outsider = [
            await lab.add(n) for n in ("near", "far-1", "far-2", "outsider")
        ]
        for node in (relay, near, far1, far2, outsider):
            await lab.commission(node, ctl)  # each owner lets the controller in
        for node in (far1, far2):
            await lab.commission(node, relay)
        for node in (near, far1, far2, outsider):
            await lab.start_member(node)
        await lab.start_relay(relay, retry=0.2)
        yield Net(lab, ctl, relay, near, far1, far2, outsider)
    finally:
        await lab.close()


async def _setup_group(net: Net, name: str = "doors") -> None:
    G.create_group(net.ctl.ks, name)
    # near is reached directly, far-1 and far-2 through the relay: admitted first, then one
    # round for all three, so that they start together at epoch 1 (an add once the key left
    # the controller starts a new epoch: atk19g finding 3)
    G.admit_members(net.ctl.ks, name, [net.near.id])
    record, outcomes = await G.add_members(net.ctl.ks, name, ["far-1", net.far2.id],
                                           via="relay", reach=net.reach)
    by_name = {o.name: o for o in outcomes}
    assert record.epoch == 1 and sorted(by_name) == ["far-1", "far-2", "near"]
    assert by_name["near"].status == "confirmed"
    assert by_name["far-1"].status == "queued at relay, awaiting the member's receipt"
    assert all(o.ok for o in outcomes)
    # Queued is not confirmed: the members' receipts come back on a later round.
    assert all(o.state in ("pending", "confirmed") for o in outcomes)
    await wait_for(lambda: all(_epoch(n, name) == 1 for n in (net.near, net.far1, net.far2)), 5)
    record, outcomes = await G.confirm_all(net.ctl.ks, name, reach=net.reach, policy=FAST)
    assert record.pending() == () and all(o.state == "confirmed" for o in outcomes)


def _epoch(node: Node, group: str) -> int | None:
    held = G.held_groups(node.ks).get(group)
    return held.epoch if held else None


async def _broadcast(net: Net, sender: Node, group: str, command: str,
                     readers: list[Node], refusers: list[Node] = ()) -> None:
    marks = {n.name: len(n.events) for n in [*readers, *refusers]}

    def done() -> bool:
        return all(command in n.read() for n in readers) and all(
            any(e["event"] == "rejected" for e in n.events[marks[n.name]:]) for n in refusers
        )

    await net.lab.broadcast(sender, group, command, until=done, timeout=3)
    assert done(), {n.name: n.events[marks[n.name]:] for n in [*readers, *refusers]}


async def test_delivery_through_a_relay_to_every_member(net: Net) -> None:
    await _setup_group(net)
    record = G.controlled(net.ctl.ks, "doors")
    assert record.pending() == ()
    assert sorted(m.name for m in record.members) == ["far-1", "far-2", "near"]
    forwarded = {e["member"] for e in net.relay.events if e["event"] == "forwarded"}
    assert forwarded == {"far-1", "far-2"}
    assert len(net.relay.relay.queue) == 0  # type: ignore[union-attr]
    # Each far member got its key from the relay (once or again, while its receipt was on
    # its way back); the near one from the controller, once.
    assert {e["from"] for e in net.far1.events if e["event"] == "key"} == {"relay"}
    assert [e["from"] for e in net.near.events if e["event"] == "key"] == ["controller"]
    # What is on disk is what a next command sees.
    again = Keystore.open(net.far1.ks.path, "246813")
    assert G.held_groups(again)["doors"].epoch == 1
    await _broadcast(net, net.ctl, "doors", "close all doors",
                     [net.near, net.far1, net.far2], [net.outsider])
    # A member may broadcast too.
    await _broadcast(net, net.far2, "doors", "door 7 jammed", [net.near, net.far1])
    assert net.far1.listener.received[-1].sender == bytes.fromhex(net.far2.id)[:8]  # type: ignore[union-attr]


async def test_the_relay_cannot_open_what_it_forwards(net: Net) -> None:
    G.create_group(net.ctl.ks, "doors")
    with net.ctl.ks.update():  # so the test knows what to look for
        net.ctl.ks.store_group_key("doors", 1, KNOWN_KEY)
    await G.add_members(net.ctl.ks, "doors", ["far-1", "far-2"], via="relay", reach=net.reach)
    await wait_for(lambda: _epoch(net.far1, "doors") == 1 and _epoch(net.far2, "doors") == 1, 5)

    # The relay's whole state, as its owner could read it: its keystore with every secret.
    relay_ks = Keystore.open(net.relay.ks.path, "246813")
    assert KNOWN_KEY not in relay_ks._body() and KNOWN_KEY not in net.relay.ks._body()
    carried = [GroupEnvelope.decode_bytes(bytes.fromhex(e["envelope"]))
               for e in net.relay.events if e["event"] == "queued"]
    assert {env.member for env in carried} == {bytes.fromhex(net.far1.id),
                                               bytes.fromhex(net.far2.id)}
    for env in carried:
        info = envelope_info(env.controller, env.member, env.group, env.epoch)
        for member in (env.member, bytes.fromhex(relay_ks.device_id)):
            attempt = envelope_info(env.controller, member, env.group, env.epoch)
            with pytest.raises(AuthenticationError):
                relay_ks.accept_group_key(env.group, env.epoch, env.enc, env.ct, attempt)
        with pytest.raises(AuthenticationError):
            relay_ks.open_envelope(env.enc, env.ct, info)
        assert KNOWN_KEY not in env.encode_bytes()
    assert relay_ks.group_epochs("doors") == ()
    # The members do hold that very key.
    sealed = net.far1.ks.group_encrypt("doors", 1, bytes(12), b"probe")
    assert ChaCha20Poly1305(KNOWN_KEY).decrypt(bytes(12), sealed, b"") == b"probe"


async def test_removed_member_is_shut_out_and_an_offline_member_catches_up(net: Net) -> None:
    await _setup_group(net)
    await net.lab.power_off(net.far2)
    record, outcomes = await G.remove_member(net.ctl.ks, "doors", "near", reach=net.reach)
    assert record.epoch == 2 and {o.name for o in outcomes} == {"far-1", "far-2"}
    assert all(o.status.startswith("queued at relay") for o in outcomes)
    assert net.ctl.ks.group_epochs("doors") == (2,)  # the old key is gone from the controller
    await wait_for(lambda: _epoch(net.far1, "doors") == 2, 5)
    await wait_for(lambda: any(e["event"] == "unreachable" for e in net.relay.events), 5)
    assert _epoch(net.far2, "doors") == 1

    # The removed member hears the new epoch's command and cannot read it.
    await _broadcast(net, net.ctl, "doors", "epoch two", [net.far1], [net.near])
    assert "epoch two" not in net.near.read()
    assert net.near.events[-1]["reason"] == "wrong-epoch"
    # Nor can it pass its old key off: members at epoch 2 refuse epoch 1 broadcasts.
    await _broadcast(net, net.near, "doors", "old key talking", [], [net.far1])
    assert net.far1.events[-1]["reason"] == "wrong-epoch"

    # far-2 comes back: the relay's next round hands it epoch 2.
    await net.lab.power_on(net.far2)
    await wait_for(lambda: _epoch(net.far2, "doors") == 2, 5)
    await _broadcast(net, net.ctl, "doors", "welcome back", [net.far1, net.far2], [net.near])
    assert net.far2.ks.group_epochs("doors") == (2,)
    await wait_for(lambda: len(net.relay.relay.queue) == 0, 5)  # type: ignore[union-attr]


async def test_offline_direct_member_gets_the_current_epoch_when_next_reached(net: Net) -> None:
    await _setup_group(net)
    await net.lab.power_off(net.near)
    record, outcomes = await G.remove_member(net.ctl.ks, "doors", "far-1", reach=net.reach)
    near_outcome = next(o for o in outcomes if o.name == "near")
    assert not near_outcome.ok and near_outcome.status.startswith("unreachable")
    assert (near_outcome.state, near_outcome.attempts) == ("pending", 1)
    assert G.controlled(net.ctl.ks, "doors").member(net.near.id).delivered == 1  # type: ignore[union-attr]
    # Two more rekeys while it is away: it needs only the newest.
    for _ in range(2):
        await G.rekey_group(net.ctl.ks, "doors", reach=net.reach)
    await net.lab.power_on(net.near)
    record, outcomes = await G.deliver_pending(net.ctl.ks, "doors", reach=net.reach)
    assert [(o.name, o.ok, o.epoch, o.state) for o in outcomes if o.name == "near"] == [
        ("near", True, 4, "confirmed")]
    assert _epoch(net.near, "doors") == 4
    record, _ = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach, policy=FAST)
    assert record.pending() == ()
    await wait_for(lambda: _epoch(net.far2, "doors") == 4, 5)
    await _broadcast(net, net.ctl, "doors", "epoch four", [net.near, net.far2], [net.far1])
    # Nothing pending: a sync reaches nobody.
    _, none = await G.deliver_pending(net.ctl.ks, "doors", reach=net.reach)
    assert none == []


async def test_members_of_one_group_cannot_read_another(net: Net) -> None:
    await _setup_group(net, "doors")
    G.create_group(net.ctl.ks, "vents")
    await G.add_member(net.ctl.ks, "vents", "outsider", reach=net.reach)
    await wait_for(lambda: _epoch(net.outsider, "vents") == 1, 5)
    # Same epoch number (1): the doors members try their key, and it does not authenticate.
    await _broadcast(net, net.ctl, "vents", "open vents", [net.outsider],
                     [net.near, net.far1, net.far2])
    for node in (net.near, net.far1, net.far2):
        assert "open vents" not in node.read()
        assert node.events[-1]["reason"] == "not-ours-or-forged"
    await _broadcast(net, net.ctl, "doors", "close doors", [net.near], [net.outsider])


async def test_replayed_and_forged_broadcasts_are_refused(net: Net) -> None:
    await _setup_group(net)
    attacker = net.outsider
    await attacker.transport.stop_advertising()
    captured = await net.lab.broadcast(net.ctl, "doors", "unlock door 1",
                                       until=lambda: "unlock door 1" in net.near.read())
    reads = len(net.near.read())
    await net.lab.broadcast(attacker, "", "", payload=captured,
                            until=lambda: net.near.events[-1]["event"] == "rejected")
    assert net.near.events[-1]["reason"] == "replay"
    forged = bytearray(captured)
    forged[-5] ^= 0x10
    await net.lab.broadcast(attacker, "", "", payload=bytes(forged),
                            until=lambda: net.near.events[-1].get("address") == "outsider"
                            and net.near.events[-1]["reason"] == "not-ours-or-forged")
    assert len(net.near.read()) == reads


async def test_tampered_and_foreign_envelopes_over_the_wire_are_refused(net: Net) -> None:
    await _setup_group(net)
    # The relay, a known peer of far-1, sends far-1 envelopes itself: one altered on the way,
    # one made and signed by the relay for a group that far-1 takes from the controller.
    G.create_group(net.ctl.ks, "vents")
    genuine = seal_group_envelope(net.ctl.ks, group="vents", epoch=1,
                                  member_public=net.far1.ks.static_public)
    damaged = bytearray(genuine.ct)
    damaged[3] ^= 1
    tampered = dataclasses.replace(genuine, ct=bytes(damaged))
    net.relay.ks.new_group_key("doors", 5)
    foreign = seal_group_envelope(net.relay.ks, group="doors", epoch=5,
                                  member_public=net.far1.ks.static_public)

    async def push(slink: SecureLink) -> tuple:
        await slink.send(KeyDelivery((tampered, foreign, genuine)).encode())
        return wire.decode(await slink.recv(5), KeyReceipt).results

    results = await G.with_peer(net.relay.ks, net.lab.reach(net.relay), net.far1.id, push)
    assert [r.ok for r in results] == [False, False, True]
    assert "not signed by its controller" in (results[0].reason or "")
    assert "only from" in (results[1].reason or "")
    assert _epoch(net.far1, "doors") == 1 and _epoch(net.far1, "vents") == 1
    refused = [e for e in net.far1.events if e["event"] == "key-refused"]
    assert len(refused) == 2 and all(e["from"] == "relay" for e in refused)


async def test_a_relay_refuses_members_it_does_not_know_and_members_refuse_to_relay(
    net: Net,
) -> None:
    G.create_group(net.ctl.ks, "doors")
    _, outcomes = await G.add_member(net.ctl.ks, "doors", "near", via="relay", reach=net.reach)
    assert [(o.name, o.ok) for o in outcomes] == [("near", False)]
    assert outcomes[0].status.startswith("refused by relay: this relay has not paired")
    # The relay takes what it can deliver in the same batch and refuses the rest.  (A new
    # epoch: near's envelope was sealed, and the controller cannot know that the relay,
    # which said it refused it, kept no copy.)
    record, outcomes = await G.add_member(net.ctl.ks, "doors", "far-1", via="relay",
                                          reach=net.reach)
    assert {o.name: o.ok for o in outcomes} == {"near": False, "far-1": True}
    assert record.epoch == 2
    await wait_for(lambda: _epoch(net.far1, "doors") == 2, 5)
    _, outcomes = await G.add_member(net.ctl.ks, "doors", "far-2", via="outsider",
                                     reach=net.reach)
    far2 = next(o for o in outcomes if o.name == "far-2")
    assert not far2.ok and far2.status == "refused by outsider: this device is not a relay"
    states = {m["name"]: m["last"] for m in G.group_status(net.ctl.ks)["controls"][0]["members"]}
    assert states["far-2"] == "refused by outsider: this device is not a relay"
    assert states["near"].startswith("refused by relay: this relay has not paired")
    await wait_for(lambda: len(net.relay.relay.queue) == 0, 5)  # type: ignore[union-attr]
    record, outcomes = await G.confirm_all(net.ctl.ks, "doors", reach=net.reach,
                                           policy=dataclasses.replace(FAST, attempts=3))
    assert {m.name: m.state(record.epoch) for m in record.members} == {
        "near": "unreachable", "far-1": "confirmed", "far-2": "unreachable"}
    assert {o.name for o in outcomes} >= {"near", "far-2"}


async def test_controller_commands_refuse_bad_requests(net: Net) -> None:
    with pytest.raises(NotFoundError, match="controls no group"):
        await G.add_member(net.ctl.ks, "doors", "near", reach=net.reach)
    G.create_group(net.ctl.ks, "doors")
    with pytest.raises(ConfigError, match="already controls"):
        G.create_group(net.ctl.ks, "doors")
    with pytest.raises(NotFoundError):
        await G.add_member(net.ctl.ks, "doors", "nobody", reach=net.reach)
    with pytest.raises(ConfigError, match="its own relay"):
        await G.add_member(net.ctl.ks, "doors", "relay", via="relay", reach=net.reach)
    await G.add_member(net.ctl.ks, "doors", "near", reach=net.reach)
    with pytest.raises(ConfigError, match="already a member"):
        await G.add_member(net.ctl.ks, "doors", "near", reach=net.reach)
    with pytest.raises(NotFoundError, match="not a member"):
        await G.remove_member(net.ctl.ks, "doors", "far-1", reach=net.reach)
    # A member refuses a group name it controls itself.
    G.create_group(net.near.ks, "vents")
    G.create_group(net.ctl.ks, "vents")
    _, outcomes = await G.add_member(net.ctl.ks, "vents", "near", reach=net.reach)
    assert not outcomes[0].ok and "controls a group called" in outcomes[0].status
    with pytest.raises(ConfigError, match="member of another controller"):
        G.create_group(net.near.ks, "doors")


async def test_sequence_numbers_persist_and_never_repeat(net: Net) -> None:
    await _setup_group(net)
    seqs = [G.advert_for(net.ctl.ks, "doors", b"c", max_payload=255)[2] for _ in range(3)]
    again = Keystore.open(net.ctl.ks.path, "246813")
    assert G.advert_for(again, "doors", b"c", max_payload=255)[2] == seqs[-1] + 1
    await G.remove_member(net.ctl.ks, "doors", "near", reach=net.reach)
    assert G.advert_for(net.ctl.ks, "doors", b"c", max_payload=255)[1:] == (2, 1)


def test_status_is_plain_json(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path / "k.pk", "246813", name="solo", kdf=Argon2Params.cheapest())
    G.create_group(ks, "doors")
    status = G.group_status(ks)
    assert status == {"controls": [{"group": "doors", "epoch": 1, "trust": "paired",
                                   "members": []}],
                      "member_of": [], "relaying": [], "receipts_held": []}
    asyncio.run(asyncio.sleep(0))  # nothing async left behind
