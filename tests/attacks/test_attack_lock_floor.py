"""Attacks on the lock records' floor (session 11, branch h-floor: the keystore keeps each
lock's counted part, ``lockout.KIND`` in session 9's format, beside ``KEYSTORE.locks``; a
check reads the two as one; runtime/lockouts.py; docs/security.md, rule 7, "The keystore keeps
each lock's floor").

In-process with the real journals on the real keystore and records files (two ``Keystore``
objects on one file are two host processes of the device; a test clock is the device's
clocks), an older pairkit's host as session 9's journal itself
(:class:`tests.lockout_harness.OlderJournal`), and real host processes
(:class:`tests.lockout_harness.HostProcess`) where a process dies holding compare places.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pairkit.pairing.errors import KeystoreError
from tests.clock_harness import Clocks
from tests.lockout_harness import POLICY, host, ks_path, older_host_lock

__all__ = ["ks_path"]

BUDGET = POLICY.max_failures


def records_of(path: Path) -> Path:
    return path.with_name(path.name + ".locks")


def guesses_played(side: object, clock: Clocks, tries: int = 2 * BUDGET) -> int:
    """How many PIN guesses ``side``'s host plays, one a second, until its lock refuses one."""
    played = 0
    for _ in range(tries):
        if side.state.pin_failed_unless_locked(clock.monotonic()) > 0:  # type: ignore[attr-defined]
            break
        played += 1
        clock.advance(1.0)
    return played


def test_a_streak_a_quiet_day_ended_at_an_older_host_does_not_come_back(ks_path: Path) -> None:
    """Mallory locked PIN pairing at an upgraded host a day ago (five wrong PINs: the records'
    file and the floor hold them).  A day without a failure ends the streak (PinPolicy.forgive).
    Paul mistypes his PIN once at an older pairkit's host still running on the device (session
    9: it reads and writes the floor alone, and its count after the quiet day clears the
    floor's five and keeps the one).  The upgraded host read the file's five and the floor's
    one as six failures of one streak: PIN pairing locked for a window after one typo, and each
    later failure locked twice as long (the next change writes the six to both)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50.0)
    upgraded = host(ks_path, clock)
    assert guesses_played(upgraded, clock) == BUDGET
    clock.advance(POLICY.forgive + 10.0)
    older = older_host_lock(ks_path, clock)
    assert older.locked_for(clock.monotonic()) == 0.0
    older.failed(clock.monotonic())  # Paul's one typo, a day later
    clock.advance(1.0)
    assert older.locked_for(clock.monotonic()) == 0.0
    assert upgraded.state.locked_for(clock.monotonic()) == 0.0, \
        "one typo after a quiet day locked PIN pairing"


class KeystoreDiskFull:
    """The disk full for the keystore's own save only (its temporary file; the records' small
    file still fits): a ``before_replace`` hook, which the records' file shares."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, tmp: Path) -> None:
        if self.full and ".locks." not in tmp.name:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_streak_a_quiet_day_ended_does_not_come_back_after_a_failed_save(
    ks_path: Path,
) -> None:
    """Finding 1 without an older host: the same five a day ago, then Paul's first PIN attempt
    after the quiet day, counted as it starts: the records' file is written (the five cleared,
    the one kept), and the keystore's save fails (its disk full: the records' small file still
    fit; or the host killed between the two writes).  The attempt is not played.  Once the
    disk has room, his next attempt is the only failure of its streak, and must be played;
    the file's one and the floor's five read as six of one streak locked PIN pairing."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50.0)
    disk = KeystoreDiskFull()
    side = host(ks_path, clock, disk=disk)  # type: ignore[arg-type]
    assert guesses_played(side, clock) == BUDGET
    clock.advance(POLICY.forgive + 10.0)
    disk.full = True
    with pytest.raises(KeystoreError):
        side.state.pin_failed_unless_locked(clock.monotonic())
    disk.full = False
    clock.advance(1.0)
    again = host(ks_path, clock)
    assert again.state.pin_failed_unless_locked(clock.monotonic()) == 0.0, \
        "a quiet day's first attempt refused"
