"""One step on a host's lock records taken by another process of the device, at a moment a test
chooses (runtime/lockouts.py; docs/security.md, rule 7): :class:`Actor` starts it, says
:meth:`Actor.go`, and may stop it (SIGSTOP) while it waits for a lock, so that another process
takes the lock first, and let it go on (SIGCONT).  Used by tests/attacks/test_attack_lock_floor.py
and tests/attacks/test_attack_lock_reads.py.

Run as ``python -m tests.lock_actor_harness PATH STEP`` it is that process: it opens the keystore
at ``PATH`` (a host side on it, the system's clocks), prints ``ready``, waits for a line, takes
``STEP`` and prints ``done RESULT``:

* ``pin-attempt``: a PIN attempt starts (``pin_failed_unless_locked``: 0 when counted, else the
  seconds the lock holds);
* ``reset``: the owner's ``--reset-lockouts`` (``forget_lockouts``: whether there was any);
* ``compare-failures``: compare codes shown and not confirmed, one more than the budget, each
  counted as a failure (``Lockout.failed``) unless the lock is closed; the count it played.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.lockout_harness import LineProcess

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("pin-attempt", "reset", "compare-failures")


class Actor(LineProcess):
    """The other process (see the module docstring)."""

    @classmethod
    async def start(cls, path: Path, step: str, within: float = 30.0) -> Actor:
        if step not in STEPS:
            raise ValueError(step)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.lock_actor_harness", str(path), step, cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        actor = cls(proc)
        try:
            assert await actor._line(within) == "ready"
        except BaseException:
            await actor.kill()
            raise
        return actor

    def pause(self) -> None:
        """SIGSTOP: it stops where it is (waiting for a lock: it does not take it when freed)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    async def result(self, within: float = 30.0) -> str:
        line = await self._line(within)
        if not line.startswith("done "):
            raise AssertionError(f"the other process said {line!r}")
        await asyncio.wait_for(self.proc.wait(), within)
        return line.split(" ", 1)[1]

    async def stopped(self, within: float = 20.0) -> None:
        """Once :meth:`pause` took hold (Linux: its state in /proc), so that a lock it waited
        for and is freed now is not its."""
        stat = Path(f"/proc/{self.proc.pid}/stat")
        await until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "T", within)


def waiters(lock_path: Path) -> int:
    """How many wait for the lock at ``lock_path`` now (Linux: /proc/locks)."""
    ino = lock_path.stat().st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and line.split()[-3].endswith(f":{ino}"))


async def until(condition: Callable[[], bool], within: float) -> None:
    """Wait until ``condition()`` holds, looking every hundredth of a second (fails after
    ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


def _act(path: Path, step: str) -> str:
    from pairkit.clock import SYSTEM_CLOCK
    from pairkit.keystore import Keystore
    from pairkit.lockouts import forget_lockouts
    from tests.lockout_harness import KS_PIN, host

    if step == "reset":
        ks = Keystore.open(path, KS_PIN)
        print("ready", flush=True)
        sys.stdin.readline()
        return str(forget_lockouts(ks))
    side = host(path, SYSTEM_CLOCK)
    side.state.locked_for(SYSTEM_CLOCK.monotonic())  # its lock read once, as a host does
    print("ready", flush=True)
    sys.stdin.readline()
    if step == "compare-failures":
        lock = side.state.compare_lock
        played = sum(lock.failed_unless_locked(SYSTEM_CLOCK.monotonic()) <= 0
                     for _ in range(lock.policy.max_failures + 1))
        return str(played)
    return str(side.state.pin_failed_unless_locked(SYSTEM_CLOCK.monotonic()))


if __name__ == "__main__":
    print(f"done {_act(Path(sys.argv[1]), sys.argv[2])}", flush=True)
