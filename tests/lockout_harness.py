"""A host's lock records in a real keystore file (runtime/lockouts.py; docs/security.md, rule 7,
"The lock outlives the host process"): the keystore, a host process's side on it, an older
pairkit's host journal on it (:class:`OlderJournal`), a disk that fills up, and another host
process of the device holding compare places (:class:`HostProcess`).
Used by tests/test_lockouts.py and tests/attacks/test_attack_lockout_*.py.

Run as ``python -m tests.lockout_harness PATH N`` it is that other process: a host side on the
keystore at ``PATH`` (the system's clocks) to which Mallory opens ``N`` compare visits that stay
(the host's person is looking at the codes); once each host machine showed its code, waits its
turn or ended, it prints ``codes K`` (the codes Mallory read) and waits to be killed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pairkit.filestore import FileStorage
from pairkit.keystore import Keystore
from pairkit.pairing.keystore import Argon2Params
from pairkit.pairing.methods import PairingConfig, PinPolicy
from pairkit.pairing.methods.common import TIME_SLACK, Lockout, LockRecord
from pairkit.session import HostSide
from tests.clock_harness import Clocks

KS_PIN = "lockout-test-7391"
POLICY = PinPolicy()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ks_path(tmp_path: Path) -> Path:
    """Paul's keystore file, made cheaply (tests only)."""
    path = tmp_path / "keystore.pk"
    Keystore.create(path, KS_PIN, name="Paul", kdf=Argon2Params.cheapest())
    return path


def host(path: Path, clock: Any, config: PairingConfig | None = None,
         disk: DiskFull | None = None) -> HostSide:
    """A host process's side on the keystore at ``path`` (a keystore object of its own), its
    saves going through ``disk`` when given."""
    storage: Path | FileStorage = path if disk is None else FileStorage(path, before_replace=disk)
    return HostSide.of(Keystore.open(storage, KS_PIN), config or PairingConfig(),
                       transport="tcp", pin_policy=POLICY, clock=clock)


class OlderJournal:
    """An older pairkit's host journal: session 9's ``KeystoreLockJournal`` (3861943:
    runtime/lockouts.py), its records among the keystore's settings (``lockout.pin`` ...:
    ``{"failures": [wall-clock seconds], "streak": n}``, ``"boot"`` and ``"monotonic"`` beside
    them), read with :meth:`Keystore.follow` at each check and changed under the keystore's
    lock; its code as it was but for the record type (session 9's ``Lockout`` took a pair,
    and kept no places in the journal: a :class:`LockRecord`'s places are dropped)."""

    def __init__(self, ks: Keystore, kind: str, clock: Any) -> None:
        self._ks = ks
        self._key = "lockout." + kind
        self._clock = clock
        self._offset = clock.wall() - clock.monotonic()
        self._start = clock.monotonic()
        self._boot: str | None = clock.boot_id()

    def load(self, now: float) -> LockRecord:
        self._ks.follow()
        return LockRecord(*self._read(self._ks.setting(self._key)))

    def update(self, change: Callable[[LockRecord], LockRecord], now: float) -> None:
        with self._ks.update() as ks:
            kept = change(LockRecord(*self._read(ks.setting(self._key))))
            failures, streak = kept.failures, kept.streak
            if not failures and not streak:
                ks.delete_setting(self._key)
                return
            last = failures[-64:]
            offset = (self._clock.wall() - self._clock.monotonic() if self._boot is not None
                      else self._offset)
            record: dict[str, Any] = {
                "failures": [round(t + offset, 3) for t in last], "streak": streak,
            }
            if self._boot is not None:
                record |= {"boot": self._boot, "monotonic": [round(t, 3) for t in last]}
            ks.set_setting(self._key, record)

    def _read(self, record: Any) -> tuple[list[float], int]:
        if not isinstance(record, Mapping):
            return [], 0
        raw, streak = record.get("failures"), record.get("streak")
        if not isinstance(raw, tuple | list) or not isinstance(streak, int) or streak < 0:
            return [], 0
        times = [t for t in raw if isinstance(t, int | float) and math.isfinite(t)]
        mono = record.get("monotonic")
        if (self._boot is not None and record.get("boot") == self._boot
                and isinstance(mono, tuple | list) and len(mono) == len(times)
                and all(isinstance(t, int | float) and math.isfinite(t) for t in mono)):
            times, offset = list(mono), 0.0
        else:
            offset = self._offset
        limit = self._clock.monotonic() + TIME_SLACK
        failures = sorted(
            t if t <= limit else self._start for t in (t - offset for t in times)
        )
        return failures, max(streak, len(failures))


def older_host_lock(path: Path, clock: Any, kind: str = "pin") -> Lockout:
    """The lock ``kind`` of an older pairkit's host (:class:`OlderJournal`), still running on
    the keystore at ``path`` (a keystore object of its own)."""
    return Lockout(POLICY, OlderJournal(Keystore.open(path, KS_PIN), kind, clock))


class DiskFull:
    """The keystore's disk: full while ``full`` (each save fails as ``ENOSPC`` does, in the real
    FileStorage's save, after its temporary file was written); a ``before_replace`` hook."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def __call__(self, tmp: Path) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")


class LineProcess:
    """Another process a test drives by lines: it says one line per step on its stdout
    (:meth:`_line`) and starts when told (:meth:`go`); :meth:`kill` ends it at once."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def _line(self, within: float) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        return line.decode().strip()

    async def go(self) -> None:
        """Start it (a process started to wait for the word)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def kill(self) -> None:
        """SIGKILL: the process ends at once, holding what it held (nothing settled)."""
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()


class HostProcess(LineProcess):
    """Another host process of the device (``python -m tests.lockout_harness``) to which Mallory
    opens ``n`` compare visits that stay; :attr:`codes` is how many codes she read there (once
    it said so).  Started with ``go``, it opens the keystore and waits for :meth:`go`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__(proc)
        self.codes: int | None = None

    @classmethod
    async def start(cls, path: Path, n: int, *, go: bool = False,
                    within: float = 30.0) -> HostProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.lockout_harness", str(path), str(n),
            *(["go"] if go else []), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE if go else asyncio.subprocess.DEVNULL)
        other = cls(proc)
        try:
            if go:
                assert await other._line(within) == "ready"
            else:
                await other.read_codes(within)
        except BaseException:
            await other.kill()
            raise
        return other

    async def read_codes(self, within: float = 30.0) -> int:
        line = await self._line(within)
        if not line.startswith("codes "):
            raise AssertionError(f"the other host process said {line!r}")
        self.codes = int(line.split()[1])
        return self.codes



async def _hold(path: Path, n: int, go: bool) -> None:
    """The other host process's part (see the module docstring)."""
    from pairkit.clock import SYSTEM_CLOCK
    from pairkit.pairing.methods.common import S_ASK, S_TURN
    from tests.turns_harness import Answers, Mallory, Visits, until

    config = PairingConfig(step_timeout=2.0)
    side = host(path, SYSTEM_CLOCK, config)
    visits = Visits(config, side.state)
    never = asyncio.Event()
    if go:  # opened: the test says when to start (it may hold the keystore's lock first)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _ in range(n):
        visits.start(Mallory(config, stay=True), Answers(release=never))

    def settled() -> bool:
        return all((v.host_task is not None and v.host_task.done()) or v.host.state == S_TURN
                   or (v.host.state == S_ASK and v.guest.predicted) for v in visits.all)

    await until(settled, 20.0)
    print(f"codes {visits.predicted}", flush=True)
    await never.wait()


if __name__ == "__main__":
    asyncio.run(_hold(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["go"]))


#: the guesses or codes one window allows
BUDGET = POLICY.max_failures


def records_of(path: Path) -> Path:
    return path.with_name(path.name + ".locks")


def guesses_played(side: object, clock: Clocks, tries: int = 2 * BUDGET) -> int:
    """How many PIN guesses ``side``'s host plays, one a second, until its lock refuses one
    (a guess it cannot count raises: none played)."""
    played = 0
    for _ in range(tries):
        if side.state.pin_failed_unless_locked(clock.monotonic()) > 0:  # type: ignore[attr-defined]
            break
        played += 1
        clock.advance(1.0)
    return played


class KeystoreDiskFull:
    """The disk full for the keystore's own save only (its temporary file, many KiB; the lock
    records' small file, a few hundred bytes, still fits): a ``before_replace`` hook, which the
    records' file shares, raising as the real save's ``ENOSPC`` does (``error``: another
    ``errno``, a read-only file system or an I/O error)."""

    def __init__(self, error: int = errno.ENOSPC) -> None:
        self.full = False
        self.error = error

    def __call__(self, tmp: Path) -> None:
        if self.full and ".locks." not in tmp.name:
            raise OSError(self.error, os.strerror(self.error))


def records_without_failures(path: Path) -> bytes:
    """A copy of the lock records of the keystore at ``path`` made while they held no failure
    and no place (what someone who can write the owner's files keeps, to put back later): a
    first PIN failure makes them, its attempt won takes it back."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=20.0)
    side = host(path, clock)
    side.state.pin_failed(clock.monotonic())
    side.state.pin_succeeded(clock.monotonic())
    return records_of(path).read_bytes()


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` (a small one: :func:`small_disk`) to its last
    byte with a file of its own, as someone who can write there does, then give ``leave``
    bytes back (a tmpfs counts whole pages of 4 KiB); the file, to remove."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 4096, 1):  # what is left, down to the last byte
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    """A real file system of its own (tmpfs of ``size``) mounted at ``where``, for a disk that
    really fills up; skips the test where it cannot be mounted (not root, no mount)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(where)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("a small file system of its own cannot be mounted here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


class Held:
    """A lock file held by the test (``flock``, as pairkit takes it) until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
