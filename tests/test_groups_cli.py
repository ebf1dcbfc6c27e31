"""``pairkit group`` as a user runs it: a controller, a relay and a member, each a process.

The member and the relay are paired with ``pairkit host`` / ``pairkit join`` over TCP; the
controller's key reaches the member through the relay over TCP, and its broadcast reaches it
over BLE through ``pairkit radio``'s linked virtual controllers (run here in-process).  The
group commands run as ``python -m cli.group_cli`` (cli/main.py registers them as ``pairkit
group``).  Error paths run in-process with click's CliRunner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pairkit.cli.group_cli import group
from pairkit.keystore import Argon2Params, Keystore
from pairkit.transports.radio import start_radio

from .cli_helpers import (
    KEYSTORE_PIN,
    ROOT,
    Device,
    HostProcess,
    assert_no_traceback,
    cli_env,
    free_port,
    make_devices,
    run_cli,
    use_bytecode_cache,
)

GROUP_CMD = (sys.executable, "-m", "pairkit.cli.group_cli")
NAMES = {"ctl": "controller", "relay": "relay", "door": "door-1"}
PINS = ("482913", "507264", "639180")



class Background:
    """A long-running group command: its stdout JSON lines and stderr lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.proc = proc
        self.args = args
        self.events: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        self._pumps = [asyncio.create_task(self._pump(proc.stdout, True)),
                       asyncio.create_task(self._pump(proc.stderr, False))]

    @classmethod
    async def start(cls, device: Device, *args: str) -> Background:
        proc = await asyncio.create_subprocess_exec(
            *GROUP_CMD, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env=cli_env(device.home),
        )
        return cls(proc, args)

    async def _pump(self, stream: asyncio.StreamReader | None, is_out: bool) -> None:
        assert stream is not None
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if is_out:
                self.events.append(json.loads(text))
            else:
                self.err.append(text)
            self._changed.set()

    async def wait(self, what: str, found: Callable[[], bool], timeout: float = 20) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not found():
                    if self.proc.returncode is not None and not found():
                        break
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.5)
        except TimeoutError:
            pass
        assert found(), f"{' '.join(self.args)}: no {what}; stderr:\n" + "\n".join(self.err)

    def event(self, **match: Any) -> dict[str, Any] | None:
        for e in self.events:
            if all(e.get(k) == v for k, v in match.items()):
                return e
        return None

    async def stop(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps), 5)
        assert_no_traceback(" ".join(self.args), "\n".join(self.err))
        return self.proc.returncode or 0


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Device]:
    use_bytecode_cache(tmp_path_factory.mktemp("pycache"))
    return make_devices(tmp_path_factory.mktemp("group-devices"), NAMES)


@pytest.fixture
async def running() -> AsyncIterator[list[Background]]:
    procs: list[Background] = []
    yield procs
    for p in procs:
        await p.stop()


async def _pair(host: Device, guest: Device, port: int, pin: str) -> None:
    """``guest`` joins ``host`` over TCP by PIN (the guest then reaches the host there)."""
    hp = await HostProcess.start(host.home, "-t", f"tcp:127.0.0.1:{port}", "--method", "pin",
                                 "--pin", pin, "--once", "--yes")
    try:
        joined = await guest.join(f"tcp:127.0.0.1:{port}", "--method", "pin", "--pin", pin,
                                  "--json")
        assert joined.ok().json()["peer"]["name"] == host.name
        await asyncio.wait_for(hp.proc.wait(), 15)  # --once: the host ends by itself
    finally:
        assert await hp.stop() == 0


async def test_key_through_a_relay_and_a_broadcast_across_processes(
    homes: dict[str, Device], running: list[Background],
) -> None:
    ctl, relay, door = homes["ctl"], homes["relay"], homes["door"]
    door_port, relay_port = free_port(), free_port()
    await _pair(door, ctl, door_port, PINS[0])
    await _pair(relay, ctl, relay_port, PINS[1])
    await _pair(door, relay, door_port, PINS[2])

    radio = await start_radio([0, 0])
    try:
        ctl_radio, door_radio = (f"bumble:tcp-client:127.0.0.1:{p}" for p in radio.ports)
        listener = await Background.start(
            door, "listen", "doors", "--controller", "controller",  # the door's owner's choice
            "-t", f"tcp:127.0.0.1:{door_port}", "-t", door_radio,
            "--json", "--count", "1", "--timeout", "60")
        running.append(listener)
        relayer = await Background.start(relay, "relay", "-t", f"tcp:127.0.0.1:{relay_port}",
                                         "--retry", "0.5", "--json")
        running.append(relayer)
        await listener.wait("start", lambda: any("listening on" in x for x in listener.err))
        await relayer.wait("start", lambda: any("relaying on" in x for x in relayer.err))

        created = await run_cli(ctl.home, "create", "doors", "--json", cmd=GROUP_CMD)
        assert created.ok().json() == {"ok": True, "group": "doors", "epoch": 1, "trust": "paired"}
        added = (await run_cli(ctl.home, "add", "doors", "door-1", "--via", "relay", "--json",
                               cmd=GROUP_CMD)).ok().json()
        delivery = added["deliveries"][0]
        assert added["ok"] and not added["confirmed"]
        assert (delivery["status"], delivery["state"], delivery["attempts"]) == (
            "queued at relay, awaiting the member's receipt", "pending", 1)

        await listener.wait("key", lambda: listener.event(event="key") is not None)
        assert listener.event(event="key") == {
            "event": "key", "group": "doors", "epoch": 1, "controller": "controller",
            "from": "relay",
        }
        await relayer.wait("forward", lambda: relayer.event(event="forwarded") is not None)
        queued = relayer.event(event="queued")
        assert queued is not None and queued["member"] == "door-1"

        sent = (await run_cli(ctl.home, "send", "doors", "close all doors", "-t", ctl_radio,
                              "--duration", "1.5", "--json", cmd=GROUP_CMD)).ok().json()
        assert sent["extended"] and sent["bytes"] == 41 + len("close all doors")
        await listener.wait("command", lambda: listener.proc.returncode is not None)
        command = listener.event(event="command")
        assert command is not None
        assert (command["group"], command["sender"], command["command"], command["seq"]) == (
            "doors", "controller", "close all doors", sent["seq"])
        assert listener.proc.returncode == 0  # --count 1: done
    finally:
        await radio.close()

    # The controller retries until the door's own signed receipt is back through the relay.
    synced = (await run_cli(ctl.home, "sync", "doors", "--backoff", "0.2", "--json",
                            cmd=GROUP_CMD)).ok().json()
    assert synced["ok"] and synced["confirmed"]
    assert [(d["name"], d["state"]) for d in synced["deliveries"]] == [("door-1", "confirmed")]
    assert synced["deliveries"][0]["status"] == "confirmed (receipt through relay)"

    # The relay's own state, from its keystore file: no group key, nothing left to deliver,
    # and the door's receipt (which it handed over, and could not have made).
    relay_ks = Keystore.open(relay.home / "keystore.pk", KEYSTORE_PIN)
    assert relay_ks.group_epochs("doors") == ()
    status = (await run_cli(relay.home, "status", "--json", cmd=GROUP_CMD)).ok().json()
    assert status == {"controls": [], "member_of": [], "relaying": [], "receipts_held": [
        {"member": "door-1", "controller": "controller", "group": "doors", "epoch": 1,
         "ok": True}]}
    shown = (await run_cli(ctl.home, "status", "--json", cmd=GROUP_CMD)).ok().json()
    member = shown["controls"][0]["members"][0]
    assert (member["name"], member["via"], member["state"], member["confirmed"]) == (
        "door-1", "relay", "confirmed", 1)
    # 'show', the former name, says the same.
    assert (await run_cli(ctl.home, "show", "--json", cmd=GROUP_CMD)).ok().json() == shown
    door_status = (await run_cli(door.home, "status", "--json", cmd=GROUP_CMD)).ok().json()
    assert door_status["member_of"] == [
        {"group": "doors", "epoch": 1, "controller": "controller"}]

    # The relay goes away (it drops everything from now on): a rekey is retried with growing
    # waits, then the door is reported unreachable, never confirmed.
    assert await relayer.stop() == 0
    listener = await Background.start(door, "listen", "doors", "-t",
                                      f"tcp:127.0.0.1:{door_port}", "--json", "--timeout", "90")
    running.append(listener)
    await listener.wait("start", lambda: any("listening on" in x for x in listener.err))
    rekeyed = (await run_cli(ctl.home, "rekey", "doors", "--json", "--connect-timeout", "1",
                             cmd=GROUP_CMD)).ok().json()
    first = rekeyed["deliveries"][0]
    assert (rekeyed["epoch"], first["state"], first["attempts"]) == (2, "pending", 1)
    assert first["status"].startswith("relay unreachable")
    pending = (await run_cli(ctl.home, "status", "doors", "--json", cmd=GROUP_CMD)).ok().json()
    row = pending["controls"][0]["members"][0]
    assert (row["state"], row["attempts"], row["confirmed"]) == ("pending", 1, 1)
    assert row["next_try"] is not None and row["last"].startswith("relay unreachable")
    text = (await run_cli(ctl.home, "status", "doors", cmd=GROUP_CMD)).ok().out
    assert "door-1" in text and "pending (1 attempt, next try" in text
    lost = await run_cli(ctl.home, "sync", "doors", "--attempts", "3", "--backoff", "0.1",
                         "--connect-timeout", "1", "--json", cmd=GROUP_CMD)
    assert lost.rc == 4, lost  # the timeout exit code
    assert "error: not confirmed after 3 attempts: door-1" in lost.err
    gone = lost.json()
    assert not gone["confirmed"] and gone["deliveries"][0]["state"] == "unreachable"
    text = (await run_cli(ctl.home, "status", cmd=GROUP_CMD)).ok().out
    assert "unreachable" in text and "last: relay unreachable" in text

    # The relay is back: asked to try again, the controller gets the door's receipt.
    relayer = await Background.start(relay, "relay", "-t", f"tcp:127.0.0.1:{relay_port}",
                                     "--retry", "0.3", "--json")
    running.append(relayer)
    await relayer.wait("start", lambda: any("relaying on" in x for x in relayer.err))
    back = (await run_cli(ctl.home, "sync", "doors", "--retry-unreachable", "--backoff", "0.3",
                          "--json", cmd=GROUP_CMD)).ok().json()
    assert back["confirmed"] and back["epoch"] == 2
    await listener.wait("key", lambda: listener.event(event="key", epoch=2) is not None)


# -- in-process: usage and errors ---------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    Keystore.create(
        tmp_path / "keystore.pk", KEYSTORE_PIN, name="solo", kdf=Argon2Params.cheapest()
    )
    return {"PAIRKIT_HOME": str(tmp_path), "PAIRKIT_PIN": KEYSTORE_PIN}


def _run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)


def test_every_subcommand_has_help() -> None:
    for sub in ("create", "add", "remove", "rekey", "sync", "send", "listen", "relay", "show",
                "status"):
        result = CliRunner().invoke(group, [sub, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, sub


def test_errors_are_plain_and_mapped_to_exit_codes(home: dict[str, str]) -> None:
    bad = _run(home, "create", "no spaces please")
    assert bad.exit_code == 2 and "is not a usable group name" in bad.output
    missing = _run(home, "add", "doors", "someone")
    assert missing.exit_code == 6 and "controls no group 'doors'" in missing.output
    assert _run(home, "create", "doors", "--json").exit_code == 0
    again = _run(home, "create", "doors")
    assert again.exit_code == 2 and "already controls" in again.output
    nobody = _run(home, "add", "doors", "someone")
    assert nobody.exit_code == 6 and "no known peer" in nobody.output
    tcp = _run(home, "send", "doors", "hi", "-t", "tcp:127.0.0.1:9")
    assert tcp.exit_code == 2 and "cannot broadcast" in tcp.output
    big = _run(home, "send", "doors", "x" * 300, "-t", "loopback")
    assert big.exit_code == 2 and "bytes of command in one advertisement" in big.output
    pinned = _run(home, "listen", "-t", "loopback", "--controller", "someone")
    assert pinned.exit_code == 2 and "needs the group NAMEs" in pinned.output
    assert "Traceback" not in bad.output + missing.output + tcp.output


def test_show_and_sync_with_nothing_pending(home: dict[str, str]) -> None:
    assert _run(home, "create", "doors").exit_code == 0
    shown = _run(home, "status", "--json")
    assert json.loads(shown.output) == {
        "controls": [{"group": "doors", "epoch": 1, "trust": "paired",
                                   "members": []}],
        "member_of": [], "relaying": [], "receipts_held": [],
    }
    synced = _run(home, "sync", "doors", "--json")
    assert json.loads(synced.output) == {"ok": True, "confirmed": True, "group": "doors",
                                         "epoch": 1, "deliveries": []}
    assert json.loads(_run(home, "status", "vents", "--json").output) == {
        "controls": [], "member_of": [], "relaying": [], "receipts_held": []}
    nothing = _run(home, "status", "vents")
    assert nothing.exit_code == 0 and "knows nothing of a group 'vents'" in nothing.output
    rekeyed = _run(home, "rekey", "doors", "--json")
    assert json.loads(rekeyed.output)["epoch"] == 2
    ks = Keystore.open(Path(home["PAIRKIT_HOME"]) / "keystore.pk", KEYSTORE_PIN)
    assert ks.group_epochs("doors") == (2,)


def test_the_retry_options_refuse_what_makes_no_sense(home: dict[str, str]) -> None:
    """Hostile or mistaken input to the new options: a sentence and the usage exit code,
    before anything is tried."""
    assert _run(home, "create", "doors").exit_code == 0
    for args, words in [
        (("sync", "doors", "--attempts", "0"), "0 is not in the range 1<=x<=1000"),
        (("sync", "doors", "--attempts", "many"), "'many' is not a valid integer"),
        (("sync", "doors", "--backoff", "-1"), "--backoff"),
        (("sync", "doors", "--backoff", "nan"), "--backoff"),
        (("sync", "doors", "--max-backoff", "1e9"), "--max-backoff"),
        (("rekey", "doors", "--attempts", "1001"), "1001 is not in the range"),
        (("sync", "doors", "--once", "--retry-unreachable"), "needs the full sync"),
        (("status", "no spaces please"), "is not a usable group name"),
        (("status", "x" * 40), "is not a usable group name"),
        (("sync", "no-such-group"), "controls no group"),
    ]:
        result = _run(home, *args)
        assert result.exit_code in (2, 6), (args, result.output)
        assert words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert _run(home, "sync", "no-such-group").exit_code == 6
    # --max-backoff below --backoff is taken as --backoff (no wait shorter than the first).
    assert _run(home, "sync", "doors", "--backoff", "5", "--max-backoff", "1").exit_code == 0


def test_status_help_teaches_the_three_states() -> None:
    text = CliRunner().invoke(group, ["status", "--help"]).output
    for words in ("confirmed", "pending", "unreachable", "--json", "next_try"):
        assert words in text
    sync_help = CliRunner().invoke(group, ["sync", "--help"]).output
    for words in ("signed receipt", "--attempts", "--backoff", "--retry-unreachable",
                  "unreachable"):
        assert words in sync_help
