"""``pairkit group agent`` as a user runs it (issue 14): a controller, an agent and a door, each
a process; keys over TCP, the broadcast over BLE through ``pairkit radio``'s linked virtual
controllers.  The controller has no radio at all: the door hears the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pairkit.cli.group_cli import group
from pairkit.keystore import Argon2Params, Keystore
from pairkit.transports.radio import start_radio

from .cli_helpers import KEYSTORE_PIN, free_port, make_devices, run_cli, use_bytecode_cache
from .group_harness import GROUP_CMD, Running, pair, stop_all

NAMES = {"ctl": "controller", "agent": "agent", "door": "door-1"}


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    await stop_all(procs)


async def test_the_door_hears_the_agent_broadcast_the_controllers_command(
    tmp_path: Path, running: list[Running],
) -> None:
    use_bytecode_cache(tmp_path / "pycache")
    dev = make_devices(tmp_path, NAMES)
    agent_port, door_port = free_port(), free_port()
    await pair(dev["agent"], dev["ctl"], agent_port, "482913")
    await pair(dev["door"], dev["ctl"], door_port, "507264")
    await pair(dev["door"], dev["agent"], door_port, "639180")

    radio = await start_radio([0, 0])
    try:
        agent_radio, door_radio = (f"bumble:tcp-client:127.0.0.1:{p}" for p in radio.ports)
        # The controller joined the door and the agent as a guest (--yes): each owner names it
        # the controller of "doors" (a guest gives no group keys otherwise).
        door = await Running.start(dev["door"], "listen", "doors", "--controller", "controller",
                                   "-t", f"tcp:127.0.0.1:{door_port}", "-t", door_radio, "--json",
                                   "--timeout", "90")
        running.append(door)
        agent = await Running.start(dev["agent"], "agent", "doors", "--controller", "controller",
                                    "-t", f"tcp:127.0.0.1:{agent_port}",
                                    "--radio", agent_radio, "--retry", "0.3", "--json")
        running.append(agent)
        await door.wait("start", lambda: any("listening on" in x for x in door.err))
        await agent.wait("start", lambda: any("is a group agent" in x for x in agent.err))

        ctl = dev["ctl"].home
        (await run_cli(ctl, "create", "doors", cmd=GROUP_CMD)).ok()
        first = (await run_cli(ctl, "add", "doors", "agent", "--json", cmd=GROUP_CMD)).ok()
        assert (first.json()["epoch"], first.json()["new_epoch"]) == (1, False)
        # The agent holds the key of epoch 1 now: adding the door starts epoch 2, and the
        # agent gets its key too, in the same round (atk19g finding 3).
        added = (await run_cli(ctl, "add", "doors", "door-1", "--via", "agent", "--json",
                               cmd=GROUP_CMD)).ok().json()
        assert (added["epoch"], added["new_epoch"], added["added"]) == (2, True, ["door-1"])
        assert {d["name"]: d["epoch"] for d in added["deliveries"]} == {
            "agent": 2, "door-1": 2}
        synced = (await run_cli(ctl, "sync", "doors", "--backoff", "0.3", "--json",
                                cmd=GROUP_CMD)).ok().json()
        assert synced["confirmed"]
        sent = (await run_cli(ctl, "send", "doors", "close all doors", "--agent", "agent",
                              "--duration", "1.5", "--json", cmd=GROUP_CMD)).ok().json()
        assert sent == {"ok": True, "group": "doors", "agent": "agent", "number": 1, "seq": 1}
        await door.wait("command", lambda: any(e["event"] == "command" for e in door.events))
        command = next(e for e in door.events if e["event"] == "command")
        assert (command["group"], command["sender"], command["command"]) == (
            "doors", "agent", "close all doors")
        broadcast = next(e for e in agent.events if e["event"] == "broadcast")
        assert (broadcast["from"], broadcast["seq"]) == ("controller", 1)
        # The agent took the group key end to end, like a member; it reads its own group too.
        agent_status = (await run_cli(dev["agent"].home, "status", "--json",
                                      cmd=GROUP_CMD)).ok().json()
        assert agent_status["member_of"] == [
            {"group": "doors", "epoch": 2, "controller": "controller"}]
        # Not an agent: the door refuses to broadcast for the controller.
        refused = await run_cli(ctl, "send", "doors", "x", "--agent", "door-1", cmd=GROUP_CMD)
        assert refused.rc == 5 and "the agent refused: this device is not a group agent" in (
            refused.err)
    finally:
        await radio.close()


def test_agent_and_send_refuse_bad_input(tmp_path: Path) -> None:
    Keystore.create(tmp_path / "keystore.pk", KEYSTORE_PIN, name="solo",
                    kdf=Argon2Params.cheapest())
    env = {"PAIRKIT_HOME": str(tmp_path), "PAIRKIT_PIN": KEYSTORE_PIN}

    def run(*args: str) -> Any:
        return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)

    assert run("create", "doors").exit_code == 0
    for args, code, words in [
        (("agent", "-t", "tcp:127.0.0.1:0", "--radio", "tcp:127.0.0.1:1"), 2,
         "must be a BLE radio"),
        (("agent", "-t", "tcp:127.0.0.1:0"), 2, "Missing option '--radio'"),
        (("agent", "--controller", "x", "-t", "tcp:127.0.0.1:0", "--radio", "bumble:x"), 2,
         "--controller needs the group NAMEs"),
        (("send", "doors", "x", "--agent", "nobody"), 6, "not a member of doors"),
        (("send", "doors", "x" * 200, "--agent", "nobody"), 2, "at most 167 bytes"),
        (("send", "doors", "x", "--agent", "a", "--duration", "61"), 2, "--duration"),
        (("send", "nogroup", "x", "--agent", "a"), 6, "controls no group"),
    ]:
        result = run(*args)
        assert result.exit_code == code and words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    help_text = CliRunner().invoke(group, ["agent", "--help"]).output
    for words in ("group agent", "--radio", "signed by the group's", "replay", "--controller",
                  "never a guest"):
        assert words in help_text
    listen_help = " ".join(CliRunner().invoke(group, ["listen", "--help"]).output.split())
    for words in ("with --controller PEER, only PEER's", "let in as a member",
                  "A guest (its grant running or ended) is refused", "--trust ca"):
        assert words in listen_help


