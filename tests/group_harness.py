"""Group commands as processes, for the group tests across processes (issue 14): a long-running
command with its JSON lines and stderr as they come, pairing two devices over TCP, a free port.
Every wait has a deadline and says what it waited for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from .cli_helpers import ROOT, Device, HostProcess, assert_no_traceback, cli_env

GROUP_CMD = (sys.executable, "-m", "pairkit.cli.group_cli")
TTP_CMD = (sys.executable, "-m", "pairkit.cli.ttp_cli")
NAMES_CA = {"ctl": "controller", "relay": "relay", "door": "door-1", "stranger": "stranger"}



class Running:
    """A long-running group command; its JSON lines and stderr as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.proc, self.args = proc, args
        self.events: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._pumps = [asyncio.create_task(self._pump(proc.stdout, True)),
                       asyncio.create_task(self._pump(proc.stderr, False))]

    @classmethod
    async def start(cls, device: Device, *args: str) -> Running:
        proc = await asyncio.create_subprocess_exec(
            *GROUP_CMD, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env=cli_env(device.home))
        return cls(proc, args)

    async def _pump(self, stream: asyncio.StreamReader | None, out: bool) -> None:
        assert stream is not None
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            (self.events.append(json.loads(text)) if out else self.err.append(text))

    async def wait(self, what: str, found: Callable[[], bool], timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not found() and loop.time() < deadline and self.proc.returncode is None:
            await asyncio.sleep(0.05)
        assert found(), f"{' '.join(self.args)}: no {what}; stderr:\n" + "\n".join(self.err)

    async def stop(self) -> None:
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


async def stop_all(procs: list[Running]) -> None:
    """Stop every command started (each must end without a traceback)."""
    for p in procs:
        await p.stop()


async def pair(host: Device, guest: Device, port: int, pin: str) -> None:
    hp = await HostProcess.start(host.home, "-t", f"tcp:127.0.0.1:{port}", "--method", "pin",
                                 "--pin", pin, "--once", "--yes")
    try:
        (await guest.join(f"tcp:127.0.0.1:{port}", "--method", "pin", "--pin", pin,
                          "--json")).ok()
        await asyncio.wait_for(hp.proc.wait(), 15)
    finally:
        assert await hp.stop() == 0


