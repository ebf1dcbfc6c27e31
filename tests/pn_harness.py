"""Helpers for the ``pairkit pn`` process tests: a key server process, devices enrolled with
factory keys, long-running pairkit processes whose JSON lines and narration are read as they
come, and a TCP relay in the test process that can rewrite what passes (issue 14)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pairkit.keyserver.certs import init_server_dir
from pairkit.transports.loopback import relay
from pairkit.transports.tcp import TcpListener, tcp_connect
from tests.cli_helpers import (
    PAIRKIT_CMD,
    ROOT,
    assert_no_traceback,
    cli_env,
    init_devices,
    run_cli,
)
from tests.ttp_harness import ServeProcess

WAIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """One pairkit process running on: its stdout JSON lines and stderr lines, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.proc = proc
        self.args = args
        self.lines: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._read_out()), asyncio.create_task(self._read_err())]

    async def _read_out(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode().strip()
            if text:
                try:
                    self.lines.append(json.loads(text))
                except ValueError:
                    self.lines.append({"_text": text})
                self._changed.set()

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.err.append(line.decode().rstrip("\n"))
            self._changed.set()

    async def wait_for(self, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            found = check()
            if found:
                return found
            if self.proc.returncode is not None and all(t.done() for t in self._tasks):
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.05, min(1.0, end - loop.time())))
            if loop.time() > end:
                break
        raise AssertionError(f"pairkit {' '.join(self.args)}: no {what}\nstderr:\n"
                             + "\n".join(self.err) + f"\nstdout: {self.lines}")

    async def narration(self, pattern: str, timeout: float = WAIT) -> str:
        rx = re.compile(pattern)
        return await self.wait_for(lambda: next((e for e in self.err if rx.search(e)), None),
                                   f"line matching {pattern!r}", timeout)

    async def json_line(self, key: str, value: Any, timeout: float = WAIT) -> dict[str, Any]:
        return await self.wait_for(
            lambda: next((j for j in self.lines if j.get(key) == value), None),
            f"JSON line with {key}={value!r}", timeout)

    async def finish(self, timeout: float = WAIT) -> int:
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"pairkit {' '.join(self.args)} did not end:\n"
                                 + "\n".join(self.err)) from None
        await asyncio.gather(*self._tasks)
        assert_no_traceback(f"pairkit {' '.join(self.args)}", "\n".join(self.err))
        return self.proc.returncode or 0

    async def stop(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
        return await self.finish(10)


@dataclasses.dataclass
class PnLab:
    """A key server process and enrolled devices (``homes``), each with a factory key."""

    server: ServeProcess
    homes: dict[str, Path]
    ids: dict[str, str]
    running: list[Running] = dataclasses.field(default_factory=list)

    async def run(self, who: str, *args: str, timeout: float = WAIT) -> Any:
        return await run_cli(self.homes[who], *args, timeout=timeout)

    async def start(self, who: str, *args: str) -> Running:
        proc = await asyncio.create_subprocess_exec(
            *PAIRKIT_CMD, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env=cli_env(self.homes[who]),
        )
        r = Running(proc, args)
        self.running.append(r)
        return r

    async def gateway(self, *options: str) -> tuple[Running, int, str]:
        """``pairkit pn gateway --json`` on a free TCP port of 127.0.0.1, once it is on:
        (the process, its port, its address)."""
        port = free_port()
        address = f"tcp:127.0.0.1:{port}"
        gw = await self.start("gw", "pn", "gateway", "-t", address, "--json", *options)
        await gw.narration("is the PN gateway on")
        return gw, port, address


@contextlib.asynccontextmanager
async def pn_lab(tmp_path: Path, names: dict[str, str]) -> AsyncIterator[PnLab]:
    d = init_server_dir(tmp_path / "keyserver")
    homes = {k: tmp_path / k for k in names}
    await asyncio.to_thread(init_devices, homes, names)
    server = await ServeProcess.start(d.root, "--quiet")
    lab = PnLab(server, homes, {})
    try:
        enrolled = await asyncio.gather(*(
            run_cli(home, "ttp", "enroll", "--server", server.address, "--ca", str(d.ca_cert),
                    "--new-eukey", "--json") for home in homes.values()))
        for key, result in zip(homes, enrolled, strict=True):
            lab.ids[key] = result.ok().json()["id"]
        yield lab
    finally:
        for r in lab.running:
            if r.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()
                await r.proc.wait()
        await server.stop()


Edit = Callable[[str, str, bytes, int], list[bytes] | bytes | None]


@contextlib.asynccontextmanager
async def tcp_relay(target_port: int, edit: Edit) -> AsyncIterator[int]:
    """A relay on a free port to the gateway at ``target_port``: for each connection, every
    link message passes through ``edit(src, dst, data, n)`` (``n`` counts the messages in that
    direction on that connection, from 1).  It yields the relay's port."""
    listener = await TcpListener.bind("127.0.0.1", 0)
    tasks: set[asyncio.Task[None]] = set()

    async def serve() -> None:
        while True:
            left = await listener.accept()
            right = await tcp_connect("127.0.0.1", target_port, 10.0)
            task = asyncio.create_task(_quiet(relay(left, right, tap=_counting(left, edit))))
            tasks.add(task)

    server = asyncio.create_task(serve())
    try:
        yield listener.port
    finally:
        server.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(server, *tasks, return_exceptions=True)
        await listener.close()


def _counting(left: Any, edit: Edit) -> Callable[[str, str, bytes], Any]:
    counts: dict[tuple[str, str], int] = {}

    def tap(src: str, dst: str, data: bytes) -> Any:
        key = ("pne", "gw") if src == left.peer else ("gw", "pne")
        counts[key] = counts.get(key, 0) + 1
        return edit(key[0], key[1], data, counts[key])

    return tap


async def _quiet(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro


# ---------------------------------------------------------------------------------------------
# A gateway in this process (the real PnGateway and accept loop over TCP), for the attacks


@dataclasses.dataclass
class InProcGateway:
    """A ``PnGateway`` serving on 127.0.0.1:``port`` in this process, its narration in
    ``said``; ``members`` are the keystores of the PNEs it knows (by ``add_member``)."""

    service: Any
    port: int
    admission: Any
    said: list[str]
    members: dict[str, Any] = dataclasses.field(default_factory=dict)


def _keystore(path: Path, name: str) -> Any:
    from pairkit.keystore import Keystore
    from pairkit.pairing.keystore import Argon2Params

    return Keystore.create(path, "246813", name=name, kdf=Argon2Params.cheapest())


@contextlib.asynccontextmanager
async def gateway_in_process(
    tmp_path: Path, *, members: tuple[str, ...] = (), pins: Any = None, admission: Any = None,
) -> AsyncIterator[InProcGateway]:
    """A gateway whose PN already holds ``members`` (each a keystore of its own, with its link
    key, as after a setup), serving in this process.  No key server: members come back by
    resume, and a PIN offer needs none."""
    import os
    import time

    from pairkit.admission import Admission
    from pairkit.pairing.keystore import PnEntry, PnRecord
    from pairkit.peers import local_identity
    from pairkit.pn import GatewayOptions, PnGateway
    from pairkit.session import accept_loop

    ks = _keystore(tmp_path / "gw.pk", "Paul's phone")
    listener = await TcpListener.bind("127.0.0.1", 0)
    pn_id = os.urandom(16).hex()
    stores: dict[str, Any] = {}
    entries = []
    for name in members:
        mks = _keystore(tmp_path / f"{len(stores)}.pk", name)
        key = os.urandom(32)
        entries.append(PnEntry(mks.device_id, name, 1, "local_eukey", key))
        stores[name] = mks
    for mks in stores.values():
        with mks.update():
            mks.set_pn(PnRecord(
                pn_id=pn_id, role="member", gw_id=ks.device_id, gw_name=ks.name, setup="all",
                members=tuple(PnEntry(e.pne_id, e.name) for e in entries),
                link_key=next(e.link_key for e in entries if e.pne_id == mks.device_id),
                key_source="local_eukey", gateway=f"tcp:127.0.0.1:{listener.port}",
                updated=time.time()))
    if entries:
        with ks.update():
            ks.set_pn(PnRecord(pn_id=pn_id, role="gateway", gw_id=ks.device_id,
                               gw_name=ks.name, setup="all", members=tuple(entries),
                               updated=time.time()))
    said: list[str] = []

    class Yes:
        async def allow_pn_setup(self, name: str, setup: Any, invited: int) -> bool:
            return True

    opts = GatewayOptions(server="127.0.0.1:9", ca_file=str(tmp_path / "none.pem"),
                          eukey=os.urandom(32), step_timeout=10.0)
    service = PnGateway(ks, local_identity(ks), opts, delegate=Yes(), say=said.append,
                        pins=pins)
    admission = admission or Admission()
    loop_task = asyncio.create_task(accept_loop(listener, service.handle, admission=admission,
                                                stop=service.stop))
    try:
        yield InProcGateway(service, listener.port, admission, said, stores)
    finally:
        service.stop.set()
        loop_task.cancel()
        with contextlib.suppress(BaseException):
            await loop_task
        await listener.close()


async def member_online(gw: InProcGateway, name: str, source: str = "127.0.0.1") -> Any:
    """Member ``name`` back on its gateway (``pn join --stay``): its secure channel."""
    from pairkit.pn import pne_resume

    mks = gw.members[name]
    (record,) = mks.pns("member")
    if source == "127.0.0.1":
        link = await tcp_connect("127.0.0.1", gw.port, 10.0)
    else:
        from tests.flood_harness import link_from

        link = await link_from(source, "127.0.0.1", gw.port)
    return await pne_resume(link, record, bytes.fromhex(mks.device_id), step_timeout=10.0)
