"""Group commands as processes, for the group tests across processes (issue 14): a long-running
command with its JSON lines and stderr as they come, pairing two devices over TCP, a free port.
Every wait has a deadline and says what it waited for."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pairkit.cli.groupdemo import GroupLab, Node

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




async def commission_guest(lab: Any, host: Any, guest: Any, seconds: int = 3600) -> None:
    """``guest`` pairs with ``host`` by PIN and is let in as a *guest* for ``seconds`` (as
    ``pairkit host`` does when its owner answers "guest"), on a :class:`GroupLab`."""
    from pairkit.cli.flows import HostOptions, JoinOptions, run_host, run_join
    from pairkit.cli.groupdemo import PAIRING_PIN
    from pairkit.pairing.cloud import Grant, Role
    from pairkit.pairing.negotiation import Method

    class Owner:
        async def allow_join(self, q: Any) -> Grant:
            return Grant(Role.GUEST, seconds)

        async def join_cloud(self, q: Any) -> bool:
            return False

        async def on_warning(self, event: Any) -> None:
            return None

        async def on_event(self, event: Any) -> None:
            return None

    async def nothing(*_args: Any) -> None:
        return None

    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    opts = HostOptions(transport=lab.spec, methods=frozenset({Method.PIN}), pin=PAIRING_PIN,
                       once=True, quiet=True, json=True, step_timeout=lab.step_timeout,
                       visible=60.0)
    task = asyncio.create_task(run_host(
        host.ks, opts, emit=lambda _r: None, ready=lambda a, _s: started.set_result(a),
        transport_obj=host.transport, delegate=Owner(), on_session=nothing,
    ))
    try:
        await asyncio.wait_for(asyncio.shield(started), 10)
        await asyncio.wait_for(run_join(
            guest.ks, JoinOptions(target="loopback", transport=lab.spec, method=Method.PIN,
                                  pin=PAIRING_PIN, json=True, wants=Role.GUEST,
                                  step_timeout=lab.step_timeout),
            on_session=nothing, transport_obj=guest.downlink or guest.transport,
            address=host.address, delegate=Owner(),
        ), 20)
        await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@dataclasses.dataclass
class Net:
    """A controller, a relay, a member far behind the relay, and Mallory, each a device of
    :class:`GroupLab` on the in-process loopback (the attack tests of group keys through
    relays)."""

    lab: GroupLab
    ctl: Node
    relay: Node
    far: Node
    mallory: Node


@contextlib.asynccontextmanager
async def relay_net(
    tmp_path: Path, *, commissioned: tuple[str, ...] = ("relay", "far"),
) -> AsyncIterator[Net]:
    """:class:`Net`, closed on leaving: the nodes named in ``commissioned`` let the controller
    in (as their owners would), the far member lets the relay in, and the relay Mallory."""
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=0.5, step_timeout=5)
    try:
        net = Net(lab, await lab.add("controller"), await lab.add("relay", downlink=True),
                  await lab.add("far"), await lab.add("mallory"))
        for name in commissioned:
            await lab.commission(getattr(net, name), net.ctl)
        await lab.commission(net.far, net.relay)
        await lab.commission(net.relay, net.mallory)  # Mallory is one of the relay's peers
        yield net
    finally:
        await lab.close()
