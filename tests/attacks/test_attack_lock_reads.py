"""Attacks on what a host's compare lock reads again at each check (issue 13, session 13: the
lock's reads made cheaper; docs/security.md, rule 7, "The lock outlives the host process").

A :class:`~pairing.methods.common.Lockout` reads its journal at every check, and a check that
finds nothing changed since the last one may skip work.  Each test here is a host process that
read its lock, then something changes that it must see at its next check although its own
copy looks the same: another host process of the device (a real one, started by
tests/lockout_harness.py or tests/lock_actor_harness.py) takes places or counts failures, the
records' file is put back to the very bytes the host last read, time alone passes the end of
places held with nothing written, or the lock closes between a visit's Offer and its Reveal.
A cut that skips a read, or re-reads on the records' file alone, or keeps what it computed
from a record without the time, lets Mallory play past the budget (docs/security.md, "Codes
out at once are held to the same budget").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pairkit.clock import SYSTEM_CLOCK
from pairkit.pairing.errors import LockedOutError
from pairkit.pairing.methods import PairingConfig
from pairkit.pairing.methods.common import HostState
from tests.clock_harness import Ahead
from tests.lock_actor_harness import ROOT, Actor
from tests.lockout_harness import BUDGET, HostProcess, ks_path, records_of
from tests.lockout_harness import host as host_process_side
from tests.turns_harness import Answers, Mallory, Visits, WatchedHost

__all__ = ["ks_path"]

STEP = 2.0
CONFIG = PairingConfig(step_timeout=STEP)
#: past the end of every place a host took now (its person's two minutes, and a step), within
#: the lock's window of five minutes
LATER = 200.0


def now() -> float:
    return SYSTEM_CLOCK.monotonic()


async def test_places_another_host_process_takes_after_a_read_leave_none_here(
    ks_path: Path,
) -> None:
    """A host process reads its compare lock: open, no place held.  Mallory then opens five
    compare visits to another host process of the device and keeps them (its person is
    looking at the codes): every place is held there.  Her sixth visit, here, must find no
    place free: the places are read again, though nothing this process wrote changed."""
    side = host_process_side(ks_path, SYSTEM_CLOCK, CONFIG)
    lock, turns = side.state.compare_lock, side.state.compare_turns
    assert lock.locked_for(now()) == 0.0 and not lock.places
    other = await HostProcess.start(ks_path, BUDGET)
    try:
        assert other.codes == BUDGET
        t = now()
        assert lock.locked_for(t) == 0.0
        assert not turns.take(object(), t, t + 130.0), \
            f"a code went out here beside the {BUDGET} held at the other host process"
        assert len(lock.places) == BUDGET
    finally:
        await other.kill()


async def test_failures_another_host_process_counts_after_a_read_lock_this_one(
    ks_path: Path,
) -> None:
    """A host process reads its compare lock (open).  Another host process of the device
    counts five codes that were not confirmed (the budget): compare is locked on the device,
    and this process must say so at its next check, with nothing of its own changed."""
    side = host_process_side(ks_path, SYSTEM_CLOCK, CONFIG)
    lock, turns = side.state.compare_lock, side.state.compare_turns
    assert lock.locked_for(now()) == 0.0
    actor = await Actor.start(ks_path, "compare-failures")
    await actor.go()
    assert await actor.result() == str(BUDGET)
    t = now()
    assert lock.locked_for(t) > 0, "five failures elsewhere did not lock this host process"
    assert not turns.take(object(), t, t + 130.0)


async def test_records_put_back_to_the_bytes_a_host_last_read_do_not_reopen_its_lock(
    ks_path: Path,
) -> None:
    """A host process reads its compare lock (open; the records' file holds nothing counted).
    Someone who can write the owner's files keeps a copy of the records' file, lets another
    host process count Mallory's five failures (the lock closes: the records and the keystore's
    floor hold them), and puts the copy back: the very bytes this process read last.  Nothing
    in the records' file looks changed to it; the keystore's floor is, and its lock must stay
    closed (a check that skipped its work on the records' file alone would give a fresh
    budget)."""
    side = host_process_side(ks_path, SYSTEM_CLOCK, CONFIG)
    lock, turns = side.state.compare_lock, side.state.compare_turns
    t = now()
    lock.failed(t)
    lock.succeeded(t)  # the records made, holding nothing counted
    copy = records_of(ks_path).read_bytes()
    assert lock.locked_for(now()) == 0.0
    actor = await Actor.start(ks_path, "compare-failures")
    await actor.go()
    assert await actor.result() == str(BUDGET)
    assert records_of(ks_path).read_bytes() != copy
    records_of(ks_path).write_bytes(copy)
    t = now()
    assert lock.locked_for(t) > 0, "the records put back reopened the lock"
    assert not turns.take(object(), t, t + 130.0)


async def test_places_held_by_a_dead_process_count_when_they_end_with_nothing_written(
    ks_path: Path,
) -> None:
    """Mallory holds all five places at another host process of the device, which then dies
    (SIGKILL: nothing settled).  This host process reads its lock while they hold: open, no
    place free.  Nothing is written after; time alone passes the end of her exchanges.  Her
    five codes were out and never confirmed: at its next check, on the very same records, this
    process must count them as failures and lock compare (a check that kept what it read
    without the time would hold them as places for ever, and never count them)."""
    other = await HostProcess.start(ks_path, BUDGET)
    assert other.codes == BUDGET
    await other.kill()
    clock = Ahead(0.0)
    lock = host_process_side(ks_path, clock, CONFIG).state.compare_lock
    assert lock.locked_for(clock.monotonic()) == 0.0 and len(lock.places) == BUDGET
    before = records_of(ks_path).read_bytes()
    clock.seconds = LATER
    assert lock.locked_for(clock.monotonic()) > 0 and lock.streak == BUDGET, lock.streak
    assert records_of(ks_path).read_bytes() == before  # (the same records read: none written)


async def test_a_lock_closed_elsewhere_between_an_offer_and_its_reveal_shows_no_code(
    ks_path: Path,
) -> None:
    """Mallory's visit passes the host's check at its Offer (compare open).  Before her Reveal
    is read, another host process of the device counts five codes nobody confirmed: compare is
    locked on the device.  The host must read its lock again as her Reveal arrives, show her
    no code (her code would be a sixth try in the window) and tell her compare is locked (not
    busy: she would come back for nothing)."""
    config = PairingConfig(step_timeout=10.0)  # (the other process starts while she waits)
    side = host_process_side(ks_path, SYSTEM_CLOCK, config)
    visits = Visits(config, side.state)
    closed: list[str] = []

    def close_elsewhere(_host: WatchedHost) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "tests.lock_actor_harness", str(ks_path), "compare-failures"],
            input="go\n", capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
        closed.append(done.stdout.split()[-1])

    visit = visits.start(Mallory(config), Answers(answer=False),
                         host=visits.host(on_reveal=close_elsewhere))
    await visits.finish(60.0)
    assert closed == [str(BUDGET)]
    assert visits.predicted == 0, "a code went out after the lock closed"
    _, host_error = visit.errors()
    assert isinstance(host_error, LockedOutError), repr(host_error)


def test_a_host_without_a_journal_keeps_its_places_whatever_its_copy_in_memory_becomes() -> None:
    """A host given no journal keeps its lock in memory (:class:`HostState`'s default), and
    hands the record it keeps out as is, uncopied (issue 13, session 14).  The lock's copy of
    what it read is its own to change (a quiet day clears its failures, a place taken is added
    to it): if a cut let that copy share lists with the record kept, a change made to it in
    memory would free the places of codes out.  Mallory holds the whole budget of codes out;
    whatever becomes of the lock's copy, her next visit finds no place, and the lock still
    counts each of her codes when it ends unconfirmed."""
    state = HostState()
    lock, turns = state.compare_lock, state.compare_turns
    t = 1000.0
    visits = [object() for _ in range(BUDGET)]
    for visit in visits:
        assert turns.take(visit, t, t + 130.0)
    for _ in range(3):
        lock.places.clear()  # the lock's copy, as read: not what is kept
        lock.failures.append(t)
        lock.counted.clear()
        assert not turns.take(object(), t + 1, t + 131.0), \
            "a code went out beside the budget held: the lock's copy was the record kept"
        assert len(lock.places) == BUDGET
    for visit in visits:
        turns.settle(visit, confirmed=False, now=t + 2)
    assert lock.locked_for(t + 3) > 0, "the codes out that ended unconfirmed were not counted"


def test_a_host_without_a_journal_checks_its_lock_and_places_as_it_takes_one() -> None:
    """A host given no journal does not read its lock before taking a place (issue 13,
    session 14: the read a journal kept elsewhere makes to spare a write): the change that
    takes the place checks the lock and the places itself.  Were that check gone too, a
    closed lock, or a budget of codes all out, would let one more code out.  Mallory holds the
    whole budget: her next visit gets no place, and once the codes she left have locked
    compare, none either; a visit refused counts nothing and holds nothing."""
    state = HostState()
    lock, turns = state.compare_lock, state.compare_turns
    t = 1000.0
    visits = [object() for _ in range(BUDGET)]
    for visit in visits:
        assert turns.take(visit, t, t + 130.0)
    late = object()
    assert not turns.take(late, t + 1, t + 131.0), "a code went out past the budget"
    assert len(lock.places) == BUDGET and lock.streak == 0
    for visit in visits:
        turns.settle(visit, confirmed=False, now=t + 2)
    assert lock.locked_for(t + 3) > 0 and lock.streak == BUDGET
    failures = list(lock.failures)
    for _ in range(3):
        assert not turns.take(late, t + 3, t + 133.0), "a code went out with compare locked"
    assert lock.locked_for(t + 3) > 0
    assert lock.streak == BUDGET and lock.failures == failures and not lock.places, \
        "a visit refused counted or held something"
