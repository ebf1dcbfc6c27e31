"""Attacks on compare's lock kept in memory (attack review atk14c, session 14: merge b6c28f5).

A host given no journal (:class:`~pairing.methods.common.HostState`'s default, the library's)
keeps its compare lock in a :class:`~pairing.methods.common._MemoryJournal`, which since
session 14 hands out the record it keeps uncopied, and :meth:`CodeTurns.take` no longer reads
the lock before the change that takes a place (``Lockout.reads_first``): that change checks the
lock and the free places itself.  :meth:`Lockout._adopt` skips its quiet-day scan when fewer
than two failures are kept.  Played by the real machines under :func:`pairkit.driver.drive`
over loopback links (tests/turns_harness.py), the host's state shared by all its machines:

* a lock closed by this host's own codes between a visit's Offer and its Reveal shows that
  visit no code (the take's change checks the lock, and compare says it is locked);
* a burst of honest guests, then of Mallory's visits: no record the journal handed out is ever
  changed afterwards, and the lock's own lists are never the record's (who mutates what);
* a streak kept as one failure (a policy of one code at a time) across the end of a quiet day,
  a code held out across it: the day is judged by the times, not by the scan skipped.

Each held on main at 3459a77 (no finding); each fails against the cut named in its docstring.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from pairkit.pairing.errors import LockedOutError
from pairkit.pairing.methods import ConfirmCode, HostState, PairingConfig, PinPolicy
from pairkit.pairing.methods.common import LockRecord
from tests.turns_harness import BUDGET, Answers, GuestYes, Mallory, Visits, WatchedHost, until

STEP = 2.0
CONFIG = PairingConfig(step_timeout=STEP)
WITHIN = 20 * STEP


class _Silent:
    """A person who never answers a code (Mallory's side)."""

    async def confirm_code(self, q: ConfirmCode) -> bool:
        await asyncio.Event().wait()
        return False


async def test_a_lock_closed_here_between_an_offer_and_its_reveal_shows_no_code_in_memory(
) -> None:
    """Mallory's visit passes the host's check at its Offer (compare open).  Before her Reveal
    is read, five codes of this host (other holders of its CodeTurns) end unconfirmed: compare
    is locked.  The host keeps its lock in memory, so its take makes no read first: the change
    that would take her place must find the lock closed, show her no code and say locked (not
    busy).  Fails if the change's own check is dropped with the read (a sixth code in the
    window)."""
    loop = asyncio.get_running_loop()
    state = HostState()
    assert not state.compare_lock.reads_first
    turns = state.compare_turns

    def close_here(_host: WatchedHost) -> None:
        holders = [object() for _ in range(BUDGET)]
        t = loop.time()
        for h in holders:
            assert turns.take(h, t, t + 130.0)
        for h in holders:
            turns.settle(h, confirmed=False)

    visits = Visits(CONFIG, state)
    visit = visits.start(Mallory(CONFIG), Answers(answer=False),
                         host=visits.host(on_reveal=close_here))
    await visits.finish(WITHIN)
    assert visits.predicted == 0, "a code went out after the lock closed"
    _, host_error = visit.errors()
    assert isinstance(host_error, LockedOutError), repr(host_error)
    assert state.compare_lock.streak == BUDGET
    assert visits.settled()


def _lists(r: LockRecord) -> tuple[list[Any], ...]:
    return (r.failures, r.places, r.counted)


async def test_records_the_memory_journal_hands_out_are_never_changed_after() -> None:
    """Six honest guests at once (five codes out at a time, all confirmed), then eight of
    Mallory's visits at once (each leaves as she reads her code).  At every moment a host
    machine looks (a guest's Reveal arriving, a code shown, a turn given) the record the
    in-memory journal hands out is kept aside with a deep copy: at the end none differs from
    its copy, and at no moment does the lock's own copy (failures, places, counted) share a
    list with it.  Fails if a cut lets the lock change the record it read (its places cleared
    by a quiet day, a place appended, a counted key added), which the journal, handing the
    record out uncopied since session 14, would keep as if written."""
    loop = asyncio.get_running_loop()
    state = HostState()
    lock = state.compare_lock
    seen: list[tuple[LockRecord, LockRecord]] = []
    shared: list[str] = []

    def look(_host: WatchedHost) -> None:
        record = lock.journal.load(loop.time())
        seen.append((record, copy.deepcopy(record)))
        for mine in (lock.failures, lock.places, lock.counted):
            if any(mine is theirs for theirs in _lists(record)):
                shared.append(repr(mine))

    hooks = {"on_reveal": look, "on_shown": look, "on_wake": look}
    visits = Visits(CONFIG, state)
    for _ in range(BUDGET + 1):
        visits.start(Mallory(CONFIG, stay=True), Answers(answer=True, look=0.2),
                     host=visits.host(**hooks), guest_person=GuestYes())
    await visits.finish(WITHIN)
    honest = list(visits.all)
    assert all(v.errors() == (None, None) for v in honest), [v.errors() for v in honest]
    assert lock.streak == 0
    burst = Visits(CONFIG, state)
    for _ in range(8):
        burst.start(Mallory(CONFIG), Answers(answer=False), host=burst.host(**hooks))
    await burst.finish(WITHIN)
    assert burst.predicted == BUDGET
    assert lock.streak == BUDGET and lock.locked_for(loop.time()) > 0
    assert burst.settled()
    assert len(seen) > 2 * (BUDGET + 1)
    assert not shared, f"the lock's lists were the record's: {shared}"
    changed = [i for i, (record, before) in enumerate(seen) if record != before]
    assert not changed, f"records handed out were changed after: {changed}"


async def test_a_streak_kept_as_one_failure_is_not_forgiven_under_a_code_held_out() -> None:
    """A policy of one code at a time (``max_failures=1``) keeps one failure, so the lock never
    scans for quiet days inside its failures (``_adopt`` skips the scan below two): the day is
    judged by the time since the last failure or code out.  Mallory's streak is 5, her last
    failure a day ago less half a second; the lock is open.  She holds a code out across the
    end of that day, then comes again: the code held was a try within the day, so her next
    visit gets no code beside it (one at a time), and once the held code failed the streak is 6
    and compare locked.  Fails if the skipped scan's case is judged otherwise (the streak
    forgiven under the code out: a second code at once, and no lock after)."""
    loop = asyncio.get_running_loop()
    policy = PinPolicy(max_failures=1)
    state = HostState(compare_policy=policy)
    lock = state.compare_lock
    day_ends = loop.time() + 0.5
    for i in range(5):
        lock.failed(day_ends - policy.forgive - (4 - i) * policy.max_lock)
    assert len(lock.failures) == 1 and lock.streak == 5
    assert lock.locked_for(loop.time()) == 0
    visits = Visits(CONFIG, state)
    release = asyncio.Event()
    held = visits.start(Mallory(CONFIG, stay=True), Answers(answer=False, release=release),
                        guest_person=_Silent())
    await until(lambda: state.compare_turns.out == 1 and held.guest.predicted != [], STEP)
    await until(lambda: loop.time() > day_ends + 0.05, STEP)
    again = visits.start(Mallory(CONFIG), Answers(answer=False))
    await until(lambda: again.host_task is not None and again.host_task.done(), 2 * STEP)
    release.set()
    await visits.finish(WITHIN)
    assert again.guest.predicted == [], "a second code went out beside the one held"
    assert lock.streak == 6, "the code held out began a fresh streak"
    assert lock.locked_for(loop.time()) > 0
    assert visits.settled()
