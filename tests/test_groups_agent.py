"""The group agent (issue 14): the relay holds the group key (delivered end to end, like any
member), takes commands end to end from the controller and broadcasts them in encrypted
adverts; the doors, out of the controller's reach, hear the agent.  Over bumble virtual radios
(the controller never broadcasts); the agent's refusals (a command not signed by the group's
controller, a replayed one, one for a group it does not hold, an old epoch) over the same
secure links."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab, Node, wait_for
from pairkit.pairing import wire
from pairkit.pairing.errors import ConfigError
from pairkit.pairing.groups import (
    AgentCommand,
    AgentResult,
    RetryPolicy,
    sign_agent_command,
)
from pairkit.securelink import SecureLink

FAST = RetryPolicy(first=0.1, cap=0.5, attempts=40)


@pytest.fixture(autouse=True)
def _quiet_bumble() -> None:
    logging.getLogger("bumble").setLevel(logging.ERROR)


@dataclasses.dataclass
class Site:
    lab: GroupLab
    ctl: Node
    agent: Node
    doors: list[Node]
    other: Node  # a door paired with the agent, in no group; plays the forger
    epoch: int  # the group's epoch once every member confirmed


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    lab = GroupLab(tmp_path, transport="bumble:virtual", connect_timeout=2, step_timeout=5)
    try:
        ctl = await lab.add("controller")
        agent = await lab.add("agent", downlink=True, downlink_extended=True)
        doors = [await lab.add(f"door-{i}") for i in (1, 2)]
        other = await lab.add("intruder")
        for node in (agent, *doors):
            await lab.commission(ctl, node)
        for node in (*doors, other):
            await lab.commission(node, agent)
        for node in (agent, *doors):  # each owner names the controller of "doors"
            G.pin_controller(node.ks, "doors", ctl.id)
        for node in (*doors, other):
            await lab.start_member(node)
        await lab.start_agent(agent, retry=0.1)
        G.create_group(ctl.ks, "doors")
        await G.add_member(ctl.ks, "doors", "agent", reach=lab.reach(ctl), policy=FAST)
        # the doors together, through the agent: the agent holds the key of epoch 1 by then,
        # so adding them starts epoch 2, which the agent gets too (atk19g finding 3)
        await G.add_members(ctl.ks, "doors", [node.id for node in doors], via="agent",
                            reach=lab.reach(ctl), policy=FAST)
        record, _ = await G.confirm_all(ctl.ks, "doors", reach=lab.reach(ctl), policy=FAST)
        assert record.epoch == 2 and {m.state(2) for m in record.members} == {"confirmed"}
        yield Site(lab, ctl, agent, doors, other, record.epoch)
    finally:
        await lab.close()


async def test_the_doors_hear_the_agent_broadcast_the_controllers_command(site: Site) -> None:
    result = await G.send_via_agent(site.ctl.ks, "doors", "agent", b"close all doors",
                                    air=1.0, reach=site.lab.reach(site.ctl))
    assert result.ok and result.seq == 1
    await wait_for(lambda: all("close all doors" in d.read() for d in site.doors), 5)
    for door in site.doors:
        got = door.listener.received[-1]  # type: ignore[union-attr]
        # The sender inside the broadcast is the agent, and its advertiser the agent's radio.
        assert got.sender == bytes.fromhex(site.agent.id)[:8]
        heard = next(e for e in door.events if e["event"] == "command")
        assert heard["sender"] == "agent" and heard["address"] == site.agent.downlink.address
    assert "close all doors" not in site.other.read()  # in no group: it cannot read it
    assert any(e["event"] == "broadcast" and e["from"] == "controller"
               for e in site.agent.events)
    # Every command the doors read came from the agent's radio: the controller never spoke.
    for door in site.doors:
        assert {e["address"] for e in door.events if e["event"] == "command"} == {
            site.agent.downlink.address}
    # A second command: numbers go on, the agent's sequence number too.
    again = await G.send_via_agent(site.ctl.ks, "doors", "agent", b"open door 4",
                                   air=1.0, reach=site.lab.reach(site.ctl))
    assert again.ok and again.seq == 2


async def _push(site: Site, sender: Node, cmd: AgentCommand) -> AgentResult:
    async def work(slink: SecureLink) -> AgentResult:
        await slink.send(cmd.encode())
        return wire.decode(await slink.recv(10), AgentResult)

    result: AgentResult = await G.with_peer(sender.ks, site.lab.reach(sender), site.agent.id,
                                            work)
    return result


async def test_the_agent_refuses_what_its_controller_did_not_send(site: Site) -> None:
    agent_id = bytes.fromhex(site.agent.id)
    genuine = sign_agent_command(site.ctl.ks, agent=agent_id, group="doors", epoch=site.epoch,
                                 number=7, command=b"unlock", air_ms=300)
    first = await _push(site, site.ctl, genuine)
    assert first.ok
    cases = {
        # the intruder (paired with the agent) signs a command as if it controlled the group
        "forged": (site.other, sign_agent_command(
            site.other.ks, agent=agent_id, group="doors", epoch=site.epoch, number=99,
            command=b"unlock", air_ms=300), "not signed by the group's controller"),
        # the controller's genuine command again (replayed by anyone who saw it)
        "replayed": (site.ctl, genuine, "already seen"),
        # altered on the way: the command text changed
        "altered": (site.ctl, dataclasses.replace(
            sign_agent_command(site.ctl.ks, agent=agent_id, group="doors", epoch=site.epoch,
                               number=8, command=b"close", air_ms=300), command=b"open"),
            "not signed by the group's controller"),
        # a group the agent holds no key of
        "other group": (site.ctl, sign_agent_command(
            site.ctl.ks, agent=agent_id, group="vents", epoch=site.epoch, number=1,
            command=b"x", air_ms=300), "holds no key of that group"),
        # made for another agent
        "other agent": (site.ctl, sign_agent_command(
            site.ctl.ks, agent=bytes.fromhex(site.other.id), group="doors", epoch=site.epoch,
            number=9, command=b"x", air_ms=300), "for this agent"),
        # a future epoch's command, or an old one (the epoch before the doors were added)
        "wrong epoch": (site.ctl, sign_agent_command(
            site.ctl.ks, agent=agent_id, group="doors", epoch=site.epoch + 1, number=10,
            command=b"x", air_ms=300), f"holds epoch {site.epoch}"),
        "old epoch": (site.ctl, sign_agent_command(
            site.ctl.ks, agent=agent_id, group="doors", epoch=site.epoch - 1, number=11,
            command=b"x", air_ms=300), f"it is for epoch {site.epoch - 1}"),
    }
    for case, (sender, cmd, words) in cases.items():
        result = await _push(site, sender, cmd)
        assert not result.ok and words in (result.reason or ""), (case, result)
    refused = [e for e in site.agent.events if e["event"] == "command-refused"]
    assert len(refused) == len(cases)
    broadcasts = [e for e in site.agent.events if e["event"] == "broadcast"]
    assert [b["command"] for b in broadcasts] == ["unlock"]
    # A member that is not an agent refuses commands itself.
    door = site.doors[0]

    async def to_door(slink: SecureLink) -> AgentResult:
        await slink.send(genuine.encode())
        return wire.decode(await slink.recv(10), AgentResult)

    answer = await G.with_peer(site.agent.ks, site.lab.reach(site.agent), door.id, to_door)
    assert not answer.ok and answer.reason == "this device is not a group agent"


async def test_a_controller_sends_only_through_a_confirmed_agent(site: Site) -> None:
    # The agent's service is down during a rekey: it has not confirmed the new epoch, so the
    # controller does not ask it to broadcast (it would under a key the doors no longer use).
    await site.lab._stop_tasks(site.agent)
    await G.rekey_group(site.ctl.ks, "doors", reach=site.lab.reach(site.ctl),
                        policy=RetryPolicy(first=60, attempts=3))
    agent = G.controlled(site.ctl.ks, "doors").member(site.agent.id)
    assert agent is not None and agent.state(site.epoch + 1) == "pending"
    with pytest.raises(ConfigError, match=f"has not confirmed epoch {site.epoch + 1}"):
        await G.send_via_agent(site.ctl.ks, "doors", "agent", b"x",
                               reach=site.lab.reach(site.ctl))
    await site.lab.start_agent(site.agent, retry=0.1)
    await G.confirm_all(site.ctl.ks, "doors", reach=site.lab.reach(site.ctl), policy=FAST)
    result = await G.send_via_agent(site.ctl.ks, "doors", "agent", b"epoch two", air=1.0,
                                    reach=site.lab.reach(site.ctl))
    assert result.ok
    await wait_for(lambda: all("epoch two" in d.read() for d in site.doors), 5)
    with pytest.raises(ConfigError, match="at most"):
        await G.send_via_agent(site.ctl.ks, "doors", "agent", b"x" * 500,
                               reach=site.lab.reach(site.ctl))
