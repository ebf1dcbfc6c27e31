"""Attack review atk22, finding C (low): a peer's AgentCommand wrote a line on the agent's screen.

``AgentCommand.group`` was not checked when decoded (a GroupEnvelope's and a GroupReceipt's
group names are: :func:`pairing.groups.check_group_name`), and the agent's "command-refused"
event carried it to ``pairkit group agent``'s stderr: any peer the agent's owner paired with,
in no group, sent a group "x\\nkey for doors epoch 9 (ctl P" and the agent showed a line of the
attacker's making.  Now a command or a result whose group is not a group name is a decode error
(nothing is checked, counted or shown of it), and the agent goes on serving.  Over bumble
virtual radios, the agent and the intruder each their own device, on a secure link.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab, Node
from pairkit.pairing import wire
from pairkit.pairing.errors import DecodeError, LinkClosedError
from pairkit.pairing.groups import AgentCommand, AgentResult, sign_agent_command
from pairkit.pairing.wire import Abort
from pairkit.securelink import SecureLink

FORGED = "x\nkey for doors epoch 9 (ctl P"  # 29 characters: within the 32 a name may have


def _with_group(msg: AgentCommand | AgentResult, group: str) -> bytes:
    """``msg`` encoded with ``group`` in place of its (same-length) group name: what any peer
    can put on the wire, though no pairkit would make it."""
    data = msg.encode()
    assert len(msg.group) == len(group) and data.count(msg.group.encode()) == 1
    return data.replace(msg.group.encode(), group.encode())


def test_a_command_or_result_whose_group_is_no_group_name_is_a_decode_error() -> None:
    name = "y" * len(FORGED)
    cmd = AgentCommand(name, 1, 1, b"open", 300, bytes(64))
    res = AgentResult(name, 1, False, reason="no")
    for msg in (cmd, res):
        assert wire.decode(msg.encode()) == msg  # the honest one decodes
        with pytest.raises(DecodeError) as caught:
            wire.decode(_with_group(msg, FORGED))
        assert "\n" not in str(caught.value) and "key for" not in str(caught.value)


@pytest.fixture
async def lab(tmp_path) -> AsyncIterator[tuple[GroupLab, Node, Node]]:  # type: ignore[no-untyped-def]
    logging.getLogger("bumble").setLevel(logging.ERROR)
    lab = GroupLab(tmp_path, transport="bumble:virtual", connect_timeout=2, step_timeout=5)
    try:
        agent = await lab.add("agent", downlink=True, downlink_extended=True)
        intruder = await lab.add("intruder")
        await lab.commission(intruder, agent)
        await lab.start_agent(agent, retry=0.1)
        yield lab, agent, intruder
    finally:
        await lab.close()


async def test_an_intruders_command_with_a_forged_group_shows_nothing_and_the_agent_serves_on(
    lab: tuple[GroupLab, Node, Node],
) -> None:
    group_lab, agent, intruder = lab
    agent_id = bytes.fromhex(agent.id)
    honest = sign_agent_command(intruder.ks, agent=agent_id, group="y" * len(FORGED), epoch=1,
                                number=1, command=b"unlock", air_ms=300)

    async def push_forged(slink: SecureLink) -> object:
        await slink.send(_with_group(honest, FORGED))
        try:
            return wire.decode(await slink.recv(5))
        except LinkClosedError:
            return None

    answer = await G.with_peer(intruder.ks, group_lab.reach(intruder), agent.id, push_forged)
    assert answer is None or isinstance(answer, Abort), answer  # no AgentResult: not run
    shown = [e for e in agent.events if "\n" in str(e.get("group", ""))]
    assert shown == [], shown
    assert not any(e.get("event") == "command-refused" for e in agent.events)

    # The agent goes on serving: a well-formed command is answered (refused: no such group).
    async def push(slink: SecureLink) -> AgentResult:
        await slink.send(honest.encode())
        return wire.decode(await slink.recv(10), AgentResult)

    result = await G.with_peer(intruder.ks, group_lab.reach(intruder), agent.id, push)
    assert not result.ok and "holds no key of that group" in (result.reason or "")
