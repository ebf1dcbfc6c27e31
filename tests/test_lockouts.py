"""The host's PIN and compare failures kept in the keystore (runtime/lockouts.py; docs/security.md,
rule 7, "The lock outlives the host process"): what two processes, a restart and the clocks do
to them.  The attacks over real processes are in tests/attacks/test_attack_lockout_restart.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pairkit.clock import SYSTEM_CLOCK
from pairkit.keystore import Keystore
from pairkit.lockouts import KeystoreLockJournal, forget_lockouts, lock_file
from pairkit.pairing.errors import KeystoreError
from pairkit.pairing.methods import PairingConfig
from pairkit.pairing.methods.common import CodeTurns, Lockout, LockRecord
from pairkit.session import HostSide
from tests.clock_harness import Clocks
from tests.lockout_harness import KS_PIN, POLICY, host, ks_path

__all__ = ["ks_path"]

BUDGET = POLICY.max_failures

def test_a_restart_after_a_reboot_keeps_the_lock(ks_path: Path) -> None:
    """Five failures, then the device reboots (its monotonic clock starts again near 0) and
    the host starts again: the lock holds for what is left of its window, then ends."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50_000.0)
    first = host(ks_path, clock)
    for _ in range(5):
        first.state.pin_failed(clock.monotonic())
        clock.advance(1)
    # locked until the first of the five is a window old
    assert first.state.locked_for(clock.monotonic()) == pytest.approx(295, abs=0.01)
    clock.advance(60)
    clock.reboot(monotonic=3.0)
    again = host(ks_path, clock)
    assert again.state.locked_for(clock.monotonic()) == pytest.approx(235, abs=0.01)
    clock.advance(235)
    assert again.state.locked_for(clock.monotonic()) == 0.0
    # The streak goes on: the next failure locks for twice the window.
    again.state.pin_failed(clock.monotonic())
    assert again.state.locked_for(clock.monotonic()) == pytest.approx(POLICY.lock_after(6))


def test_compare_failures_are_shared_by_two_host_processes(ks_path: Path) -> None:
    clock = Clocks(wall=1_800_000_000.0, monotonic=10.0)
    one, other = host(ks_path, clock), host(ks_path, clock)
    for _ in range(3):
        one.state.compare_lock.failed(clock.monotonic())
    for _ in range(2):
        other.state.compare_lock.failed(clock.monotonic())
    for side in (one, other):
        assert side.state.compare_lock.locked_for(clock.monotonic()) == pytest.approx(300)
        assert side.state.locked_for(clock.monotonic()) == 0.0  # PIN has a lock of its own


@pytest.mark.parametrize("monotonic", [12_345.678901, 12_345.678599, 12_345.6785])
def test_a_pin_attempt_won_leaves_no_failure(ks_path: Path, monotonic: float) -> None:
    """A PIN attempt is counted as it starts (a guesser who leaves mid-way counts) and taken
    back when it succeeds: an honest pairing leaves nothing, through the keystore's round trip
    of its time as wall-clock milliseconds, rounded down or up (up: the time read back is a
    little later than the attempt's start, and must not be taken for one kept in the
    future)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=monotonic - 5)
    side = host(ks_path, clock)
    clock.advance(5)  # the host started a while before the attempt
    started = clock.monotonic()
    side.state.pin_failed(started)
    clock.advance(0.5)
    side.state.pin_succeeded(started)
    ks = Keystore.open(ks_path, KS_PIN)
    assert lock_file(ks).setting("lockout.pin") is None
    assert ks.setting("lockout.pin") is None  # nor in the keystore's floor


def test_compare_counting_a_code_at_the_time_it_went_out_keeps_the_later_failures(
    ks_path: Path,
) -> None:
    """compare counts a code that ends unconfirmed at the time it went out, which may be before
    failures counted since: those keep their own times (a lock runs from them), and so does
    the new one."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=1_000.0)
    side = host(ks_path, clock)
    lock = side.state.compare_lock
    shown_early = clock.monotonic()
    clock.advance(100)
    for _ in range(4):
        lock.failed(clock.monotonic())
        clock.advance(10)
    lock.failed(shown_early)  # the first code out ends now, counted when it went out
    kept = lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.compare")
    assert [round(t - 1_800_000_000.0 + 1_000.0) for t in kept["failures"]] == [
        1_000, 1_100, 1_110, 1_120, 1_130
    ]
    # Locked until the oldest of the five is a window old.
    assert lock.locked_for(clock.monotonic()) == pytest.approx(300 - 140)


def test_failures_kept_later_than_now_count_as_now(ks_path: Path) -> None:
    """The wall clock set back since the failures were kept (a Pi that booted without the
    network's time): the lock holds, and ends no later than a window after this start."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=100.0)
    first = host(ks_path, clock)
    for _ in range(5):
        first.state.pin_failed(clock.monotonic())
    clock.now_wall -= 30 * 86400  # a month back
    clock.reboot(monotonic=5.0)
    again = host(ks_path, clock)
    assert again.state.locked_for(clock.monotonic()) == pytest.approx(300)
    clock.advance(300)
    assert again.state.locked_for(clock.monotonic()) == 0.0


@pytest.mark.parametrize("record", [
    "garbage", 7, {"failures": "x", "streak": 1}, {"failures": [1.0], "streak": -3},
    {"failures": ["t", None], "streak": 0},
])
def test_a_record_this_pairkit_does_not_read_is_no_failure(ks_path: Path, record: object) -> None:
    """Only the owner's pairkit writes the sealed keystore: a record of another shape (a later
    version's) counts as none, and the next failure replaces it."""
    ks = Keystore.open(ks_path, KS_PIN)
    with ks.update() as k:
        k.set_setting("lockout.pin", record)
    clock = Clocks(wall=1_800_000_000.0, monotonic=10.0)
    side = host(ks_path, clock)
    assert side.state.locked_for(clock.monotonic()) == 0.0
    side.state.pin_failed(clock.monotonic())
    kept = lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.pin")
    assert kept["streak"] == 1 and len(kept["failures"]) == 1


def test_forget_lockouts_lifts_both_locks(ks_path: Path) -> None:
    clock = Clocks(wall=1_800_000_000.0, monotonic=10.0)
    side = host(ks_path, clock)
    # a place held (its code out: it stays, and counts at its end if nobody confirms it)
    assert side.state.compare_turns.take(object(), clock.monotonic(), clock.monotonic() + 130)
    for _ in range(5):
        side.state.pin_failed(clock.monotonic())
        side.state.compare_lock.failed(clock.monotonic())
    ks = Keystore.open(ks_path, KS_PIN)
    assert forget_lockouts(ks, clock=clock) is True
    assert forget_lockouts(ks, clock=clock) is False  # (the place held is no lock to lift)
    again = host(ks_path, clock)
    assert again.state.locked_for(clock.monotonic()) == 0.0
    assert again.state.compare_lock.locked_for(clock.monotonic()) == 0.0
    assert [p.until for p in again.state.compare_lock.places] == [pytest.approx(140)]
    clock.advance(200)
    assert again.state.compare_lock.locked_for(clock.monotonic()) == 0.0
    again.state.compare_lock.failed(clock.monotonic())  # a change: the ended one is written
    assert len(lock_file(ks).setting("lockout.compare")["failures"]) == 2


def test_a_journal_names_no_time_in_its_repr(ks_path: Path) -> None:
    journal = KeystoreLockJournal(Keystore.open(ks_path, KS_PIN), "pin")
    assert repr(journal) == "KeystoreLockJournal('lockout.pin')"
    with pytest.raises(ValueError, match="no host lock"):
        KeystoreLockJournal(Keystore.open(ks_path, KS_PIN), "qr")


class FullDisk:
    """A journal whose writes fail while ``full`` (the keystore cannot be saved)."""

    def __init__(self, inner: KeystoreLockJournal) -> None:
        self.inner = inner
        self.full = False

    def load(self, now: float) -> LockRecord:
        return self.inner.load(now)

    def update(self, change: Any, now: float) -> None:
        if self.full:
            raise KeystoreError("could not save the keystore: no space left on device")
        self.inner.update(change, now)


def test_a_try_the_journal_cannot_keep_is_refused_and_counts_nothing(ks_path: Path) -> None:
    """A failure, a PIN attempt or a compare place the keystore cannot keep raises, and is
    counted nowhere (its caller plays nothing for it: a failure counted in one process's memory
    only would be lost by its restart); the place is not taken, and its holder waits for
    nothing."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=10.0)
    disk = FullDisk(KeystoreLockJournal(Keystore.open(ks_path, KS_PIN), "compare", clock))
    lock = Lockout(POLICY, disk)
    turns = CodeTurns(lock)
    disk.full = True
    holder = object()
    for _ in range(BUDGET + 1):
        with pytest.raises(KeystoreError):
            lock.failed(clock.monotonic())
        with pytest.raises(KeystoreError):
            lock.failed_unless_locked(clock.monotonic())
        with pytest.raises(KeystoreError):
            turns.take(holder, clock.monotonic(), clock.monotonic() + 130)
        clock.advance(1)
    assert lock.locked_for(clock.monotonic()) == 0.0 and lock.streak == 0
    assert turns.out == 0 and lock.places == []
    turns.settle(holder, confirmed=False)
    assert not turns._waiting
    assert lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.compare") is None


# -- compare's places (CodeTurns) kept beside the failures ------------------------------------


def test_places_are_shared_by_two_host_processes_and_count_at_their_end(ks_path: Path) -> None:
    """Places taken by one host process hold in another's count; one given back (confirmed)
    frees its place and counts nothing; one given up unconfirmed counts at the time it was
    taken; one never settled (its process died) holds until its end, then counts, for every
    reader, once (written as a failure by the next change)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=1_000.0)
    one, other = host(ks_path, clock), host(ks_path, clock)
    turns, theirs = one.state.compare_turns, other.state.compare_turns
    holders = [object() for _ in range(BUDGET)]
    for i, holder in enumerate(holders):
        assert turns.take(holder, clock.monotonic(), clock.monotonic() + 100 + i)
    waiting = object()
    assert not theirs.take(waiting, clock.monotonic(), clock.monotonic() + 100)
    assert theirs.poll  # the places are another process's: it looks again now and then
    turns.settle(holders[0], confirmed=True, now=clock.monotonic())
    clock.advance(10)
    turns.settle(holders[1], confirmed=False, now=clock.monotonic())
    assert one.state.compare_lock.streak == 1
    assert one.state.compare_lock.failures == [pytest.approx(1_000, abs=0.002)]
    assert theirs.take(waiting, clock.monotonic(), clock.monotonic() + 300)
    assert not theirs.take(object(), clock.monotonic(), clock.monotonic() + 300)
    clock.advance(100)  # the three left by ``one`` (never settled) end
    lock = host(ks_path, clock).state.compare_lock
    assert lock.locked_for(clock.monotonic()) == 0.0 and lock.streak == 4
    assert len(lock.places) == 1  # ``other``'s, until its end
    clock.advance(200)
    other.state.compare_lock.failed(clock.monotonic())  # a change: the ended ones are written
    kept = lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.compare")
    assert kept["streak"] == 6 and "places" not in kept
    lock = host(ks_path, clock).state.compare_lock
    assert lock.locked_for(clock.monotonic()) == pytest.approx(POLICY.lock_after(6))
    assert lock.streak == 6


class Counting:
    """A journal that counts its writes."""

    def __init__(self, inner: KeystoreLockJournal) -> None:
        self.inner = inner
        self.writes = 0

    def load(self, now: float) -> LockRecord:
        return self.inner.load(now)

    def update(self, change: Any, now: float) -> None:
        self.writes += 1
        self.inner.update(change, now)


def test_a_place_given_back_is_kept_at_once_or_with_the_next_place_taken(ks_path: Path) -> None:
    """A code confirmed gives its place back: kept at once when nobody here waits for one (a
    second process sees it free); while a machine waits, the place is free for it at once and
    kept with the place it takes, in one write (a compare pairing under load costs one write),
    and never counted as a failure meanwhile, not even past its end."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=1_000.0)
    journal = Counting(KeystoreLockJournal(Keystore.open(ks_path, KS_PIN), "compare", clock))
    turns = CodeTurns(Lockout(POLICY, journal))
    other = host(ks_path, clock).state.compare_lock

    def kept() -> set[str]:
        other.locked_for(clock.monotonic())
        return {p.key for p in other.places}

    alone = object()
    assert turns.take(alone, clock.monotonic(), clock.monotonic() + 130)
    turns.settle(alone, confirmed=True, now=clock.monotonic())
    assert journal.writes == 2 and kept() == set()
    holders = [object() for _ in range(BUDGET)]
    for holder in holders:
        assert turns.take(holder, clock.monotonic(), clock.monotonic() + 130)
    waiting, woken = object(), []
    assert not turns.take(waiting, clock.monotonic(), clock.monotonic() + 130)
    turns.subscribe(waiting, lambda: woken.append(True))
    first = turns._mine[holders[0]].key
    writes = journal.writes
    turns.settle(holders[0], confirmed=True, now=clock.monotonic())
    assert woken == [True] and journal.writes == writes and first in kept()
    clock.advance(200)  # past its end, not yet kept: it counts for nobody here
    assert turns.lock.locked_for(clock.monotonic()) == 0.0
    clock.advance(-200)
    assert turns.take(waiting, clock.monotonic(), clock.monotonic() + 130)
    assert journal.writes == writes + 1 and first not in kept() and len(kept()) == BUDGET
    assert turns.lock.streak == 0 and turns.lock.returned == set()


def test_a_place_kept_in_another_boot_counts_at_once(ks_path: Path) -> None:
    """A place whose record names another boot was held by a process that is gone: it holds
    no place and counts as a failure (whatever its end said)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=500.0)
    turns = host(ks_path, clock).state.compare_turns
    assert turns.take(object(), clock.monotonic(), clock.monotonic() + 3600)
    clock.advance(30)
    clock.reboot(monotonic=4.0)
    lock = host(ks_path, clock).state.compare_lock
    assert lock.locked_for(clock.monotonic()) == 0.0
    assert (lock.streak, lock.places) == (1, [])


class NoBoot:
    """A device's clocks that do not name their boot (not Linux): only the wall clock is kept."""

    def __init__(self, clocks: Clocks) -> None:
        self.clocks = clocks

    def wall(self) -> float:
        return self.clocks.wall()

    def monotonic(self) -> float:
        return self.clocks.monotonic()


def test_a_place_kept_before_the_wall_clock_went_back_lasts_as_long_as_it_was_taken_for(
    ks_path: Path,
) -> None:
    """Without a boot id, places are kept in wall-clock seconds.  One taken for 130 s, then the
    wall clock set back a month (a Pi that rebooted without the network's time, on a system
    that does not name its boots): it is read from the host's start (later than now), and
    ends 130 s after that, not a month later (denying compare's place meanwhile)."""
    clocks = Clocks(wall=1_800_000_000.0, monotonic=100.0)
    turns = host(ks_path, NoBoot(clocks)).state.compare_turns
    assert turns.take(object(), clocks.monotonic(), clocks.monotonic() + 130)
    clocks.now_wall -= 30 * 86400
    clocks.reboot(monotonic=5.0)
    lock = host(ks_path, NoBoot(clocks)).state.compare_lock
    assert lock.locked_for(clocks.monotonic()) == 0.0 and len(lock.places) == 1
    clocks.advance(131)
    assert lock.locked_for(clocks.monotonic()) == 0.0
    assert (lock.places, lock.streak) == ([], 1)


@pytest.mark.parametrize("place", [
    "x", {"key": 1, "at": 1.0, "until": 2.0}, {"key": "k", "at": "t", "until": 2.0},
    {"key": "k", "at": 1.0}, {"key": "k", "at": 1.0, "until": True},
])
def test_a_place_this_pairkit_does_not_read_is_none(ks_path: Path, place: object) -> None:
    """A place of another shape (no pairkit writes one; the keystore is sealed) holds no place
    and counts nothing."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=10.0)
    ks = Keystore.open(ks_path, KS_PIN)
    with ks.update() as k:
        k.set_setting("lockout.compare", {"failures": [], "streak": 0, "places": [place]})
    lock = host(ks_path, clock).state.compare_lock
    assert lock.locked_for(clock.monotonic()) == 0.0
    assert (lock.streak, lock.places) == (0, [])


def test_the_system_clock_says_its_boot_and_the_record_keeps_it(ks_path: Path) -> None:
    """On Linux the machine's clock names its boot, and a journal on it keeps the monotonic
    times beside the wall-clock ones, so that hosts of the same boot need no wall clock."""
    boot = SYSTEM_CLOCK.boot_id()
    assert isinstance(boot, str) and len(boot) >= 32 and boot == SYSTEM_CLOCK.boot_id()
    side = HostSide.of(Keystore.open(ks_path, KS_PIN), PairingConfig(), transport="tcp")
    side.state.compare_lock.failed(SYSTEM_CLOCK.monotonic())
    kept = lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.compare")
    assert kept["boot"] == boot and len(kept["monotonic"]) == len(kept["failures"]) == 1


def test_a_place_given_back_for_a_waiter_that_does_not_get_it_is_kept_at_once(
    ks_path: Path,
) -> None:
    """Five places held here, a machine waiting; another host process counts a failure (four
    places now).  A code confirmed here wakes the waiter, whose look finds no place after all:
    the give-back is kept then, not left for its holder's end (another process would count
    the place as a failure past its end)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=1_000.0)
    turns = host(ks_path, clock).state.compare_turns
    other = host(ks_path, clock).state.compare_lock
    holders = [object() for _ in range(BUDGET)]
    for holder in holders:
        assert turns.take(holder, clock.monotonic(), clock.monotonic() + 130)
    waiting, woken = object(), []
    assert not turns.take(waiting, clock.monotonic(), clock.monotonic() + 130)
    turns.subscribe(waiting, lambda: woken.append(True))
    other.failed(clock.monotonic())
    turns.settle(holders[0], confirmed=True, now=clock.monotonic())
    assert woken == [True]
    assert not turns.take(waiting, clock.monotonic(), clock.monotonic() + 130)
    other.locked_for(clock.monotonic())
    assert len(other.places) == BUDGET - 1 and turns.lock.returned == set()


def test_failures_an_earlier_pairkit_kept_in_the_keystore_count_and_stay_there(
    ks_path: Path,
) -> None:
    """An earlier pairkit kept the records among the keystore's settings: a host started on it
    reads them (five failures a minute old: locked for four minutes more), and leaves them
    there, where the keystore keeps each lock's floor (an older host still running reads them;
    docs/security.md, rule 7)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=500.0)
    ks = Keystore.open(ks_path, KS_PIN)
    old = {"failures": [1_800_000_000.0 - 60] * BUDGET, "streak": BUDGET}
    with ks.update() as k:
        k.set_setting("lockout.pin", old)
    side = host(ks_path, clock)
    assert side.state.locked_for(clock.monotonic()) == pytest.approx(240, abs=0.01)
    assert Keystore.open(ks_path, KS_PIN).setting("lockout.pin") == {
        "failures": tuple(old["failures"]), "streak": BUDGET}


def test_a_lock_change_that_counts_nothing_does_not_write_the_keystore(ks_path: Path) -> None:
    """A compare place taken and given back, a success whose failure is not kept, an attempt a
    closed lock refuses: the lock records may change, the keystore's file does not (a save of
    the whole keystore, every peer and prekey, per change was most of a host's memory growth
    at 1,000 guests comparing at once; issue 13).  A failure counted (a PIN attempt is counted
    as it starts), and failures cleared (taken back as it is won), write the keystore's floor
    of the lock too, in the format an older pairkit reads: failures, streak, boot and
    monotonic times; no places."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=500.0)
    side = host(ks_path, clock)
    side.state.pin_failed(clock.monotonic())  # the first change makes the records' key
    before = ks_path.read_bytes()
    turns, holder = side.state.compare_turns, object()
    assert turns.take(holder, clock.monotonic(), clock.monotonic() + 130)
    turns.settle(holder, confirmed=True, now=clock.monotonic())
    side.state.compare_lock.flush(clock.monotonic())
    clock.advance(1.0)
    side.state.pin_succeeded(clock.monotonic())  # no failure kept at that time
    assert ks_path.read_bytes() == before
    assert len(lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.pin")["failures"]) == 1
    for _ in range(BUDGET - 1):
        side.state.pin_failed(clock.monotonic())
    locked = ks_path.read_bytes()
    assert locked != before
    assert side.state.pin_failed_unless_locked(clock.monotonic()) > 0
    assert ks_path.read_bytes() == locked
    floor = Keystore.open(ks_path, KS_PIN).setting("lockout.pin")
    assert set(floor) == {"failures", "streak", "boot", "monotonic"}
    assert floor["streak"] == BUDGET and len(floor["failures"]) == len(floor["monotonic"]) == BUDGET


def test_a_place_counted_at_its_end_elsewhere_is_not_counted_again_by_its_holder(
    ks_path: Path,
) -> None:
    """A place whose exchange outlived its end is counted by the next process that writes the
    lock (here another host process, taking a place of its own), and is gone from the
    records; its holder then leaves unconfirmed: the records keep the key of a place counted
    at its end, so it does not count twice (a place gone without that, older records put
    back, counts: tests/attacks/test_attack_lock_records.py)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=500.0)
    first, second = host(ks_path, clock), host(ks_path, clock)
    holder, other = object(), object()
    assert first.state.compare_turns.take(holder, clock.monotonic(), clock.monotonic() + 130)
    clock.advance(131)
    assert second.state.compare_turns.take(other, clock.monotonic(), clock.monotonic() + 130)
    second.state.compare_turns.settle(other, confirmed=True, now=clock.monotonic())
    first.state.compare_turns.settle(holder, confirmed=False)
    kept = lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.compare")
    assert kept["streak"] == 1 and len(kept["failures"]) == 1


def test_a_place_the_owner_lifted_at_its_end_is_not_counted_by_its_holder(ks_path: Path) -> None:
    """The owner's ``--reset-lockouts`` after a place's end lifts it (no failure); its holder,
    whose exchange outlived that end, then leaves unconfirmed and counts nothing either."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=500.0)
    side = host(ks_path, clock)
    holder = object()
    assert side.state.compare_turns.take(holder, clock.monotonic(), clock.monotonic() + 130)
    clock.advance(131)
    assert forget_lockouts(Keystore.open(ks_path, KS_PIN), clock=clock)
    side.state.compare_turns.settle(holder, confirmed=False)
    assert side.state.compare_lock.locked_for(clock.monotonic()) == 0.0
    assert side.state.compare_lock.streak == 0
