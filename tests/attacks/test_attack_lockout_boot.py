"""Attacks on the lock journal's boot-aware times and on failures it could not keep
(runtime/lockouts.py ``KeystoreLockJournal``, session 9's commit 2fdf119; ``Lockout``'s unsaved
failures, commit e519073; docs/security.md, rule 7, "The lock outlives the host process").

In-process, with the real journal on the real keystore on disk (a full disk is the real
FileStorage's save failing with ``ENOSPC`` after its temporary file was written); two
``Keystore`` objects on one file are two host processes of the device, and a test clock
(tests/clock_harness.py) is the device's clocks, which :meth:`Clocks.reboot` starts anew.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pairkit.clock import SYSTEM_CLOCK
from pairkit.filestore import FileStorage
from pairkit.keystore import Keystore
from pairkit.lockouts import KeystoreLockJournal, forget_lockouts, lock_file
from pairkit.pairing.errors import KeystoreError
from pairkit.pairing.methods import PairingConfig
from pairkit.pairing.methods.common import Lockout
from tests.clock_harness import Clocks
from tests.lockout_harness import KS_PIN, POLICY, DiskFull, host, ks_path
from tests.turns_harness import Answers, Mallory, Visits

__all__ = ["ks_path"]

BUDGET = POLICY.max_failures
DAY = 86400.0
CONFIG = PairingConfig(step_timeout=2.0)
WITHIN = 40.0


def lock_on(path: Path, disk: DiskFull, clock: Clocks, kind: str = "compare") -> Lockout:
    """A host process's lock of ``kind`` on the keystore at ``path``, on ``disk``."""
    ks = Keystore.open(FileStorage(path, before_replace=disk), KS_PIN)
    return Lockout(POLICY, KeystoreLockJournal(ks, kind, clock))


# -- the wall-clock list a boot-aware record keeps beside its monotonic one ---------------------


def test_a_host_started_before_the_networks_time_keeps_its_lock_across_a_reboot(
    ks_path: Path,
) -> None:
    """Finding of the attack review of the boot id (fixed, session 9: with the boot named, the
    wall-clock list is written from the wall clock as it reads at each write).  The Pi without
    a real-time clock of the review's finding: it boots with the time it was
    shut down at (two days ago), ``pairkit host`` starts at boot and reads its offset, and the
    network's time steps the wall clock forward a minute later.  Within the boot the fix reads
    the monotonic times kept, but the record's wall-clock list is still written with the offset
    read at the start: every failure this host keeps, for as long as it runs, is written two
    days behind the wall clock the host could read at that very moment.  The next boot has
    only that list.  Mallory guesses until locked (here the budget and three more: the lock
    is at its backoff, twice the window after the last), then power-cycles the Pi, or waits for
    any reboot: the host of the next boot (its wall clock right) reads them as two days old,
    forgives the streak, and Mallory has five fresh guesses, at once, with no backoff (rule
    7: "the lock outlives the host process", a reboot among its cases)."""
    clock = Clocks(wall=1_800_000_000.0 - 2 * DAY, monotonic=15.0)
    first = host(ks_path, clock)
    clock.advance(60.0)
    clock.now_wall += 2 * DAY  # the network's time arrives
    clock.advance(600.0)
    for _ in range(BUDGET + 3):
        first.state.pin_failed(clock.monotonic())
        clock.advance(1.0)
    assert first.state.locked_for(clock.monotonic()) > 0
    clock.advance(30.0)
    clock.reboot(monotonic=4.0)  # the wall clock goes on (right: the saved time, then NTP)
    again = host(ks_path, clock)
    assert again.state.locked_for(clock.monotonic()) > 0, "the reboot forgave the guesses"


def test_a_record_of_another_boot_is_read_by_its_wall_clock_times(ks_path: Path) -> None:
    """A record of the same boot is read by its monotonic times, one of another boot by its
    wall-clock ones: five failures whose wall list says they are two days old while their
    monotonic list says they are a minute old (a record set down here as such, since pairkit
    now writes both lists from the clocks as they read at the time) are locked in boot 1 and
    forgiven in boot 2.  (Fails if either list is read in the other's place.)"""
    clock = Clocks(wall=1_800_000_000.0, monotonic=75.0)
    ks = Keystore.open(ks_path, KS_PIN)
    with ks.update():
        ks.set_setting("lockout.pin", {
            "failures": [clock.now_wall - 2 * DAY - 60.0] * BUDGET, "streak": BUDGET,
            "boot": clock.boot_id(), "monotonic": [15.0] * BUDGET,
        })
    same_boot = host(ks_path, clock)
    assert same_boot.state.locked_for(clock.monotonic()) == pytest.approx(240, abs=0.01)
    clock.reboot(monotonic=4.0)
    other_boot = host(ks_path, clock)
    assert other_boot.state.locked_for(clock.monotonic()) == 0.0


@pytest.mark.parametrize("monotonic", [[], [1.0], "x", ["t"] * BUDGET])
def test_a_record_whose_monotonic_list_does_not_fit_is_read_by_its_wall_times(
    ks_path: Path, monotonic: object,
) -> None:
    """A record of this boot whose monotonic list is shorter, longer or not numbers (no
    pairkit writes one; the keystore is sealed) is read by its wall-clock times: five failures
    a minute old stay locked, none is dropped, moved to now, or read as a monotonic 1.0 (long
    ago: open)."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=500.0)
    first = host(ks_path, clock)
    for _ in range(BUDGET):
        first.state.pin_failed(clock.monotonic())
    ks = Keystore.open(ks_path, KS_PIN)
    # In the records and in the keystore's floor of them (either alone would be read by the
    # other's fitting list).
    with ks.update() as floor, lock_file(ks).update() as k:
        for kept in (k, floor):
            record = dict(kept.setting("lockout.pin"))
            assert record["boot"] == clock.boot
            kept.set_setting("lockout.pin", record | {"monotonic": monotonic})
    clock.advance(60.0)
    again = host(ks_path, clock)
    assert again.state.locked_for(clock.monotonic()) == pytest.approx(240, abs=0.01)


# -- failures the keystore could not keep ---------------------------------------------------


def test_codes_whose_failures_cannot_be_kept_count_at_the_end_of_their_exchanges(
    ks_path: Path,
) -> None:
    """Five codes are out (their places kept); the disk fills, and their exchanges end
    unconfirmed: their failures cannot be kept (each settle raises).  Nothing is counted in
    memory instead: their places stay kept, hold until their exchanges would have ended (a
    second host process finds no place free), and count as failures then, for a host started
    again once the disk has room (compare locked: five tries, none lost)."""
    disk, clock = DiskFull(), Clocks(wall=1_800_000_000.0, monotonic=50.0)
    side = host(ks_path, clock, disk=disk)
    turns = side.state.compare_turns
    holders = [object() for _ in range(BUDGET)]
    for holder in holders:
        assert turns.take(holder, clock.monotonic(), clock.monotonic() + 130.0)
        clock.advance(1.0)
    disk.full = True
    for holder in holders:
        with pytest.raises(KeystoreError):
            turns.settle(holder, confirmed=False, now=clock.monotonic())
    assert turns.out == 0 and disk.refused == BUDGET
    other = host(ks_path, clock).state.compare_turns
    assert not other.take(object(), clock.monotonic(), clock.monotonic() + 130.0)
    clock.advance(130.0)
    disk.full = False
    restarted = host(ks_path, clock).state.compare_lock
    assert restarted.locked_for(clock.monotonic()) > 0 and restarted.streak == BUDGET


async def test_failures_not_kept_outlive_the_host_once_the_disk_has_room(ks_path: Path) -> None:
    """The Pi's card is full (logs): Mallory reads compare codes, and the lock, which cannot
    keep their failures, counts them in memory and closes at five.  The disk then has room
    again (the logs rotated); the host makes no change (it is locked: a check writes nothing),
    so the five stay in its memory only, and when it is started again (its service restarted
    after the dongle went away, or Mallory waits for any restart) they are gone: five more
    codes in the same window (rule 7: "the lock outlives the host process").  The host had
    three checks in which it could have tried to keep them; it tries only with its next
    change, which a closed lock never makes.  Played by the real host machines (the test
    first attacked ``Lockout.failed`` directly, which a host no longer calls for a code).
    Fixed: a code's try is kept (its place) before the code goes out, and no code goes out
    whose place cannot be kept; nothing is counted in memory only."""
    disk = DiskFull()
    first = host(ks_path, SYSTEM_CLOCK, CONFIG, disk)
    disk.full = True
    visits = Visits(CONFIG, first.state)
    for _ in range(BUDGET + 2):
        visits.start(Mallory(CONFIG), Answers(answer=False))
        await visits.finish(WITHIN)
    disk.full = False
    for _ in range(3):  # the host checks its lock now and then
        first.state.compare_lock.locked_for(time.monotonic())
    restarted = host(ks_path, SYSTEM_CLOCK, CONFIG)
    again = Visits(CONFIG, restarted.state)
    for _ in range(BUDGET + 2):
        again.start(Mallory(CONFIG), Answers(answer=False))
        await again.finish(WITHIN)
    codes = visits.predicted + again.predicted
    assert codes <= BUDGET, f"Mallory read {codes} codes in one window, the restart between"


def test_lock_records_that_cannot_be_read_stop_the_check(ks_path: Path) -> None:
    """A check whose lock records cannot be read (their file damaged after another process
    wrote it, or gone) raises: it does not take the failures as none, and a stranger who can
    delete a file gets no fresh budget by it.  Five failures kept, then the file is damaged
    under the host (``load``, not ``update``, meets the error): the check raises
    ``KeystoreError`` and the host plays nothing, for PIN and compare alike; the file deleted,
    likewise, until the owner resets the locks."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50.0)
    side = host(ks_path, clock)
    for _ in range(BUDGET):
        side.state.pin_failed(clock.monotonic())
        side.state.compare_lock.failed(clock.monotonic())
    records = ks_path.with_name(ks_path.name + ".locks")
    other = lock_file(Keystore.open(ks_path, KS_PIN))  # another process writes (a new nonce)
    with other.update() as k:
        k.set_setting("unrelated", 1)
    data = bytearray(records.read_bytes())
    data[-20] ^= 0x55  # then the file is damaged: it no longer unseals
    records.write_bytes(bytes(data))
    clock.advance(1.0)
    with pytest.raises(KeystoreError, match="do not open"):
        side.state.locked_for(clock.monotonic())
    with pytest.raises(KeystoreError):
        side.state.compare_lock.locked_for(clock.monotonic())
    records.unlink()
    with pytest.raises(KeystoreError, match="are gone"):
        side.state.locked_for(clock.monotonic())
    with pytest.raises(KeystoreError):
        side.state.compare_lock.locked_for(clock.monotonic())
    assert forget_lockouts(Keystore.open(ks_path, KS_PIN))
    assert side.state.locked_for(clock.monotonic()) == 0


def test_a_host_started_after_the_lock_records_were_deleted_plays_no_guess(
    ks_path: Path,
) -> None:
    """Five failures kept; a stranger who can write the owner's files deletes the lock records
    and waits for the host to start again (a Pi's service restarted).  The new host process's
    first PIN attempt, where the check and the count are one step, and its compare check both
    refuse with ``KeystoreError``: a deleted file is no fresh budget."""
    clock = Clocks(wall=1_800_000_000.0, monotonic=50.0)
    first = host(ks_path, clock)
    for _ in range(BUDGET):
        first.state.pin_failed(clock.monotonic())
    ks_path.with_name(ks_path.name + ".locks").unlink()
    clock.advance(1.0)
    again = host(ks_path, clock)
    with pytest.raises(KeystoreError, match="are gone"):
        again.state.pin_failed_unless_locked(clock.monotonic())
    with pytest.raises(KeystoreError, match="are gone"):
        again.state.compare_lock.locked_for(clock.monotonic())
