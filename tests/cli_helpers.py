"""Run the ``pairkit`` command as a user would: real processes, one home per device, bounded waits.

Every wait here has a deadline and says what it was waiting for when it gives up, with what the
process printed so far, so a hung or crashed process fails a test quickly and readably instead of
hanging it.  Every command's stderr is checked for a Python traceback: the CLI promises
``error: ...`` lines, never a trace (see cli/main.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pairkit.keystore import FILE_NAME, Argon2Params, Keystore

#: the PIN the file-sharing tests' hosts show, and a host's arguments with it: PIN for new
#: guests, resume for known ones (a host runs resume only when allowed: atk19d)
SHARE_PIN = "482913"
SHARE_HOST_ARGS = ("--method", "pin", "--method", "resume", "--pin", SHARE_PIN, "--yes")

ROOT = Path(__file__).resolve().parent.parent
#: the keystore PIN every test device is sealed with (by ``pairkit init``, then re-sealed at
#: :meth:`Argon2Params.cheapest`: see :func:`init_devices`)
KEYSTORE_PIN = "135790"
#: the installed console script when this interpreter has one, else the module
_SCRIPT = Path(sys.executable).with_name("pairkit")
MODULE_CMD: tuple[str, ...] = (sys.executable, "-m", "pairkit.cli.main")
PAIRKIT_CMD: tuple[str, ...] = (str(_SCRIPT),) if _SCRIPT.exists() else MODULE_CMD
#: the devices of the CLI tests: :func:`templates` makes each once, :meth:`Lab.device` copies it
NAMES = {"paul": "Paul's phone", "george": "George's phone", "ringo": "Ringo's tablet"}
#: how long a single command may run before the test gives up on it
RUN_TIMEOUT = 30.0
#: how long to wait for a line from a running host
WAIT_TIMEOUT = 15.0

T = TypeVar("T")

#: where child processes keep compiled bytecode (see :func:`use_bytecode_cache`)
_pycache: Path | None = None


def use_bytecode_cache(path: Path) -> None:
    """Let every pairkit process share compiled bytecode kept under ``path``.

    This machine sets PYTHONDONTWRITEBYTECODE, so each process would compile pairkit's sources
    again (a quarter of its start-up); a prefix outside the repository keeps the tree clean.
    """
    global _pycache
    _pycache = path


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released: nobody races for it here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(home: Path | None, *, pin: str | None = KEYSTORE_PIN) -> dict[str, str]:
    """The environment of one device: our PAIRKIT_* only, never the developer's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAIRKIT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    if _pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(_pycache)
    if home is not None:
        env["PAIRKIT_HOME"] = str(home)
    if pin is not None:
        env["PAIRKIT_PIN"] = pin
    return env


def assert_no_traceback(what: str, stderr: str) -> None:
    assert "Traceback" not in stderr, f"{what} printed a traceback:\n{stderr}"


@dataclasses.dataclass(frozen=True)
class Result:
    """What one finished command did."""

    args: tuple[str, ...]
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        """The one JSON object on stdout."""
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one JSON line from {self.args}, got:\n{self.out}"
        return json.loads(lines[0])

    def ok(self) -> Result:
        assert self.rc == 0, f"{self.args} exited {self.rc}:\n{self.err}"
        return self

    def __str__(self) -> str:
        return f"{' '.join(self.args)} -> {self.rc}\nstdout:\n{self.out}\nstderr:\n{self.err}"


async def run_cli(
    home: Path | None,
    *args: str,
    pin: str | None = KEYSTORE_PIN,
    cmd: tuple[str, ...] = PAIRKIT_CMD,
    timeout: float = RUN_TIMEOUT,
) -> Result:
    """Run ``pairkit ARGS`` to its end (stdin is not a terminal) and return what it did."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(home, pin=pin),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"pairkit {' '.join(args)} did not finish within {timeout:g} s:\n{err.decode()}"
        ) from None
    result = Result(tuple(args), proc.returncode or 0, out.decode(), err.decode())
    assert_no_traceback(f"pairkit {' '.join(args)}", result.err)
    return result


def init_devices(
    homes: dict[str, Path], names: dict[str, str], *, cheap_seal: bool = True
) -> None:
    """``pairkit init`` several devices at once (Argon2id runs in each process in parallel).

    With ``cheap_seal`` (the default) each keystore ``pairkit init`` wrote is then re-sealed
    under the same PIN at :meth:`Argon2Params.cheapest`, as the other tests' keystores are
    made: every later command that opens it would otherwise spend most of its start-up (about
    0.6 s of CPU of 1 s) on the default Argon2id, which no test here is about (the default
    cost is tested in tests/test_keystore.py, ``pairkit init`` itself in tests/test_cli.py).
    """
    procs = {
        key: subprocess.Popen(
            [*PAIRKIT_CMD, "init", "--name", names[key]], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=cli_env(home),
        )
        for key, home in homes.items()
    }
    for key, proc in procs.items():
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, f"init {key} failed:\n{err.decode()}"
    if cheap_seal:
        for home in homes.values():
            ks = Keystore.open(home / FILE_NAME, KEYSTORE_PIN)
            ks.change_pin(KEYSTORE_PIN, kdf=Argon2Params.cheapest())


@dataclasses.dataclass
class Device:
    """One device: a keystore home, used through the CLI."""

    home: Path
    name: str

    async def run(self, *args: str, **kw: Any) -> Result:
        return await run_cli(self.home, *args, **kw)

    async def whoami(self) -> dict[str, Any]:
        return (await self.run("whoami", "--json")).ok().json()  # type: ignore[no-any-return]

    async def peers(self) -> list[dict[str, Any]]:
        return (await self.run("peers", "--json")).ok().json()["peers"]  # type: ignore[no-any-return]

    async def join(self, target: str, *args: str, **kw: Any) -> Result:
        return await self.run("join", target, *args, **kw)


def make_devices(base: Path, names: dict[str, str]) -> dict[str, Device]:
    """``pairkit init`` a device ``base/KEY`` named ``names[KEY]`` for every key, in parallel."""
    homes = {key: base / key for key in names}
    init_devices(homes, names)
    return {key: Device(homes[key], names[key]) for key in names}


class HostProcess:
    """A running ``pairkit host``: its stderr lines and stdout JSON lines as they come.

    Start with :meth:`start`; it returns once the host says where it waits (``address``).
    """

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.proc = proc
        self.args = args
        self.lines: list[str] = []  # stderr
        self.results: list[str] = []  # stdout
        self._eof = {"err": False, "out": False}
        self._cond = asyncio.Condition()
        self._pumps = [
            asyncio.create_task(self._pump(proc.stderr, self.lines, "err")),
            asyncio.create_task(self._pump(proc.stdout, self.results, "out")),
        ]
        self._taken = 0
        self.address = ""

    @classmethod
    async def start(cls, home: Path, *args: str, pin: str | None = KEYSTORE_PIN) -> HostProcess:
        proc = await asyncio.create_subprocess_exec(
            *PAIRKIT_CMD, "host", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env=cli_env(home, pin=pin),
        )
        self = cls(proc, args)
        match = await self.wait_for(r"is waiting on (\S+)")
        self.address = match.group(1)
        return self

    async def _pump(self, stream: asyncio.StreamReader | None, sink: list[str], key: str) -> None:
        assert stream is not None
        try:
            while line := await stream.readline():
                sink.append(line.decode(errors="replace").rstrip("\n"))
                async with self._cond:
                    self._cond.notify_all()
        finally:
            self._eof[key] = True
            async with self._cond:
                self._cond.notify_all()

    @property
    def target(self) -> str:
        """What a guest joins: ``tcp:HOST:PORT``."""
        return f"tcp:{self.address}"

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        """The number of stderr lines so far (pass as ``since`` to wait for a later line)."""
        return len(self.lines)

    async def _wait(self, find: Callable[[], T | None], key: str, what: str, timeout: float) -> T:
        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(lambda: find() is not None or self._eof[key])
        except TimeoutError:
            raise AssertionError(
                f"host: no {what} within {timeout:g} s; stderr so far:\n{self.stderr}"
            ) from None
        found = find()
        if found is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)
            raise AssertionError(
                f"host ended (exit {self.proc.returncode}) before {what}; stderr:\n{self.stderr}"
            )
        return found

    async def wait_for(
        self, pattern: str, *, since: int = 0, timeout: float = WAIT_TIMEOUT
    ) -> re.Match[str]:
        """The first stderr line from index ``since`` on that matches ``pattern``."""
        rx = re.compile(pattern)

        def find() -> re.Match[str] | None:
            for line in self.lines[since:]:
                if m := rx.search(line):
                    return m
            return None

        return await self._wait(find, "err", f"line matching {pattern!r}", timeout)

    async def wait_count(
        self, pattern: str, count: int, *, since: int = 0, timeout: float = WAIT_TIMEOUT
    ) -> list[str]:
        """Wait until ``count`` stderr lines from ``since`` on match ``pattern``; those lines."""
        rx = re.compile(pattern)

        def find() -> list[str] | None:
            hits = [line for line in self.lines[since:] if rx.search(line)]
            return hits if len(hits) >= count else None

        return await self._wait(find, "err", f"{count} lines matching {pattern!r}", timeout)

    async def pin(self, *, since: int = 0) -> str:
        """The PIN the host shows (the first one at or after line ``since``)."""
        return (await self.wait_for(r"^PIN: (\d{6})\b", since=since)).group(1)

    async def qr_uri(self, *, since: int = 0) -> str:
        return (await self.wait_for(r"QR code \(valid \d+ s\): (pairkit:qr\?\S+)", since=since)
                ).group(1)

    async def next_result(self, *, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        """The next JSON line the host printed for a paired guest (``--json``)."""
        n = self._taken

        def find() -> str | None:
            return self.results[n] if len(self.results) > n else None

        line = await self._wait(find, "out", "JSON result line", timeout)
        self._taken += 1
        return json.loads(line)  # type: ignore[no-any-return]

    async def stop(self, *, sig: int = signal.SIGINT, timeout: float = 5.0) -> int:
        """Interrupt the host (Ctrl-C), killing it if it does not end in time; its exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps), timeout)
        return self.proc.returncode if self.proc.returncode is not None else -1


class Lab:
    """Devices copied from initialised templates, and hosts that are always stopped."""

    def __init__(self, base: Path, templates: dict[str, Device]) -> None:
        self.base = base
        self.templates = templates
        self.hosts: list[HostProcess] = []

    def device(self, key: str) -> Device:
        """A fresh copy of template ``key`` (its own home: peers start empty)."""
        template = self.templates[key]
        home = self.base / key
        shutil.copytree(template.home, home)
        return Device(home, template.name)

    async def host(
        self, device: Device, *args: str, transport: str = "tcp:127.0.0.1:0"
    ) -> HostProcess:
        """``pairkit host -t TRANSPORT ARGS``; port 0 by default: the OS picks a free port, and
        the host says which, so no port is guessed and nothing races for it."""
        host = await HostProcess.start(device.home, "-t", transport, *args)
        self.hosts.append(host)
        return host

    async def guest_of_a_share(self, share: Path, files: dict[str, bytes],
                               pin: str = "482913") -> Device:
        """George, paired by PIN with Paul's ``pairkit host`` (pin and resume, ``--yes``) that
        shares the folder ``share``, made holding ``files``: to run ``ls`` and ``get`` against
        "Paul's phone"."""
        paul, george = self.device("paul"), self.device("george")
        share.mkdir()
        for name, data in files.items():
            (share / name).write_bytes(data)
        host = await self.host(paul, "-m", "pin", "-m", "resume", "--yes", "--pin", pin,
                               "--share", str(share))
        (await george.join(host.target, "-m", "pin", "--pin", pin)).ok()
        return george

    async def close(self) -> None:
        await asyncio.gather(*(h.stop() for h in self.hosts))
        for h in self.hosts:
            assert_no_traceback(f"pairkit host {' '.join(h.args)}", h.stderr)


# -- fixtures (tests/conftest.py registers this module as a plugin) ------------------------------


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Device]:
    """The devices of :data:`NAMES`, made once a session by ``pairkit init`` (scrypt is slow;
    copies are not).  Never use one directly: :meth:`Lab.device` gives a test its own copy."""
    use_bytecode_cache(tmp_path_factory.mktemp("pycache"))
    return make_devices(tmp_path_factory.mktemp("pairkit-templates"), NAMES)


@pytest.fixture
async def lab(tmp_path: Path, templates: dict[str, Device]) -> AsyncIterator[Lab]:
    """A :class:`Lab` of copies of :func:`templates`; its hosts are stopped afterwards, and
    none may have printed a traceback."""
    lab = Lab(tmp_path / "devices", templates)
    yield lab
    await lab.close()


@contextlib.asynccontextmanager
async def radio_process(ports: int = 2) -> AsyncIterator[list[str]]:
    """``pairkit radio --ports 0 ...`` (``ports`` linked virtual controllers) in its own
    process; yields the transport names it prints (``bumble:tcp-client:127.0.0.1:PORT``), and
    kills it afterwards."""
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, "radio", "--ports", *["0"] * ports, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=cli_env(None, pin=None),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("radio: "), f"the radio said {line!r}"
        names = line.removeprefix("radio: ").split()
        assert len(names) == ports
        assert all(n.startswith("bumble:tcp-client:127.0.0.1:") for n in names)
        assert all(int(n.rsplit(":", 1)[1]) > 0 for n in names)  # port 0 became a real port
        yield names
    finally:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)


class RadioProcess:
    """``pairkit radio`` in its own process that a test can kill (``kill -9``: every dongle
    pulled out at once) and start again on the same TCP ports (the dongles are back; in
    another order, each port comes back as another controller)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.ports: list[int] = []

    @property
    def names(self) -> list[str]:
        """Each port's transport name, ``bumble:tcp-client:127.0.0.1:PORT``."""
        return [f"bumble:tcp-client:127.0.0.1:{port}" for port in self.ports]

    async def start(self, ports: list[int] | None = None) -> list[str]:
        """Start on ``ports`` (default: two the OS picks, the first time; the same ones after);
        the transport names, in the order of :attr:`ports`."""
        asked = ports if ports is not None else (self.ports or [0, 0])
        self.proc = await asyncio.create_subprocess_exec(
            *PAIRKIT_CMD, "radio", "--ports", *map(str, asked),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(None, pin=None),
        )
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("radio: "), f"the radio said {line!r}"
        bound = [int(n.rsplit(":", 1)[1]) for n in line.removeprefix("radio: ").split()]
        if not self.ports:
            self.ports = bound
        return [f"bumble:tcp-client:127.0.0.1:{port}" for port in bound]

    async def kill(self) -> None:
        """``kill -9``: no goodbye to anyone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)

    async def __aenter__(self) -> RadioProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.kill()
