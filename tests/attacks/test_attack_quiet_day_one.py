"""The quiet day of a lock whose policy keeps one failure (attack review atk14c, session 14).

Finding 1 of the floor's review (docs/security.md, rule 7, "The keystore keeps each lock's
floor"; tests/attacks/test_attack_lock_floor.py) was fixed by ``Lockout._end_quiet_streaks``:
a streak a quiet day ended, still held by one copy of the record (the records' file or the
keystore's floor), goes, and "the streak is those after it (or, when they fill the failures
kept, the streak as read)".  With a policy that keeps one failure (``PinPolicy(max_failures=1)``,
which a library host may pass as ``pin_policy``; ``pairkit host`` uses 5), the one failure
after the quiet day always fills the failures kept, so the streak as read, the old one, stays:
one typo after a quiet day locks PIN pairing for the old streak's backoff, not the window.
Real journals on a real keystore and records file (two ``Keystore`` objects on one file are
two host processes), an older pairkit's host as session 9's journal
(tests/lockout_harness.py), a test clock.

Not from session 14's change (``_adopt`` skips the scan below two failures, which does not
touch this case: here the scan runs, on two); found while checking it.  Fixed (session 15): the
journal hands the lock each copy's failures and streak (``LockRecord.copies``), and the streak
after the day is the failures after it when every copy either ended before the day or keeps
all of its streak after it; otherwise (a copy counts failures it no longer keeps, which may lie
within the day) the streak as read stays, which the second test holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pairkit.filestore import FileStorage
from pairkit.keystore import Keystore
from pairkit.pairing.errors import KeystoreError
from pairkit.pairing.methods import PairingConfig, PinPolicy
from pairkit.pairing.methods.common import Lockout
from pairkit.session import HostSide
from tests.clock_harness import Clocks
from tests.lockout_harness import KS_PIN, KeystoreDiskFull, OlderJournal, ks_path

__all__ = ["ks_path"]

ONE = PinPolicy(max_failures=1)


def test_a_streak_a_quiet_day_ended_does_not_come_back_with_a_policy_of_one(
    ks_path: Path,
) -> None:
    """Mallory locked PIN pairing at an upgraded host a day ago (three wrong PINs past the
    first lock, each refused guess waiting out its backoff: streak 3).  A day without a failure
    ends the streak.  Paul mistypes once at an older pairkit's host still running on the device
    (it reads and writes the floor alone: its count after the quiet day keeps the one).  The
    upgraded host reads the file's old failure and the floor's new one: the scan drops the old,
    but keeps the old streak (3) since the one left fills the failures kept, and locks for its
    backoff (twice the window, 599 s), where the policy's first lock is a window (299 s)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50.0)
    upgraded = HostSide.of(Keystore.open(ks_path, KS_PIN), PairingConfig(), transport="tcp",
                           pin_policy=ONE, clock=clock)
    for _ in range(3):
        wait = upgraded.state.pin_failed_unless_locked(clock.monotonic())
        assert wait == 0.0
        clock.advance(upgraded.state.locked_for(clock.monotonic()) + 1.0)
    clock.advance(ONE.forgive + 10.0)
    older = Lockout(ONE, OlderJournal(Keystore.open(ks_path, KS_PIN), "pin", clock))
    assert older.locked_for(clock.monotonic()) == 0.0
    older.failed(clock.monotonic())  # Paul's one typo, a day later
    clock.advance(1.0)
    # A policy of one: the first failure of a streak locks for a window (the older host's).
    first = older.locked_for(clock.monotonic())
    assert 0.0 < first <= ONE.window and older.streak == 1
    assert upgraded.state.locked_for(clock.monotonic()) <= first, \
        "one typo after a quiet day locked PIN pairing for the old streak's backoff"


def test_a_day_bridged_by_failures_a_copy_no_longer_keeps_does_not_forgive_the_streak(
    ks_path: Path,
) -> None:
    """What the fix above must not forgive.  Mallory's streak at an upgraded host (four wrong
    PINs, each past its backoff); the fourth, half a day after the third, reaches the records'
    file only (the keystore's save failed: its disk full; the records' small file fit), so the
    floor still ends with the third.  Mallory goes on at an older pairkit's host, which reads
    the floor alone: its first guess, a day after the third, starts a streak of its own there,
    and its second, a day after the fourth, keeps only itself (a policy of one: the first is no
    longer kept).  The union reads the fourth and the older host's second a day apart, with
    nothing between, but the older host's first was between, within a day of the fourth: the
    day was not quiet, and the streak (six) goes on.  The floor's streak (two) counts a failure
    it no longer keeps: the lock must hold at least the records' streak (four), not the
    floor's."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50.0)
    disk = KeystoreDiskFull()
    storage = FileStorage(ks_path, before_replace=disk)
    upgraded = HostSide.of(Keystore.open(storage, KS_PIN), PairingConfig(), transport="tcp",
                           pin_policy=ONE, clock=clock)
    for _ in range(3):
        assert upgraded.state.pin_failed_unless_locked(clock.monotonic()) == 0.0
        clock.advance(upgraded.state.locked_for(clock.monotonic()) + 1.0)
    clock.advance(ONE.forgive / 2)
    disk.full = True
    with pytest.raises(KeystoreError):  # the fourth: counted in the records' file only
        upgraded.state.pin_failed_unless_locked(clock.monotonic())
    disk.full = False
    older = Lockout(ONE, OlderJournal(Keystore.open(ks_path, KS_PIN), "pin", clock))
    clock.advance(ONE.forgive * 0.7)  # a day and a fifth after the third
    assert older.locked_for(clock.monotonic()) == 0.0  # its floor ends with the third
    older.failed(clock.monotonic())
    clock.advance(ONE.forgive * 0.4)  # a day and a tenth after the fourth
    older.failed(clock.monotonic())
    assert older.streak == 2
    clock.advance(1.0)
    again = HostSide.of(Keystore.open(ks_path, KS_PIN), PairingConfig(), transport="tcp",
                        pin_policy=ONE, clock=clock)
    assert again.state.locked_for(clock.monotonic()) >= ONE.lock_after(4) - 1.0, \
        "a day that failures not kept bridged forgave the records' streak"
