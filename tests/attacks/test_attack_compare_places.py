"""Attacks on compare's places kept in the keystore journal (session 10's review of the merge
1123c2b: :class:`~pairing.methods.common.CodeTurns` over runtime/lockouts.py's
``KeystoreLockJournal``; docs/security.md, rule 7, "Codes out at once are held to the same
budget").

Played by the real host machines under :func:`pairkit.driver.drive` over loopback links
(tests/turns_harness.py) with the real keystore on disk; two ``Keystore`` objects on one file
are two host processes of the device.  A host process that looks at the keystore later is one
whose clocks run ahead (:class:`tests.clock_harness.Ahead`): what it reads then, in the same boot.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from pairkit.clock import SYSTEM_CLOCK
from pairkit.keystore import Keystore
from pairkit.lockouts import forget_lockouts, lock_file
from pairkit.pairing.methods import ConfirmCode, GuestPairing, LocalIdentity, PairingConfig
from pairkit.pairing.methods.common import S_ASK, S_NOISE, S_TURN
from pairkit.pairing.negotiation import Method
from tests.clock_harness import Ahead
from tests.lockout_harness import KS_PIN, HostProcess, ks_path
from tests.lockout_harness import host as host_process_side
from tests.turns_harness import BUDGET, Answers, Mallory, Visits, WatchedHost, until

__all__ = ["ks_path"]

STEP = 2.0
CONFIG = PairingConfig(step_timeout=STEP)
WITHIN = 20 * STEP
#: past the end of every place a host took now (its person's two minutes, and a step), within
#: the lock's window of five minutes
LATER = 200.0




class SlowYes:
    """A guest's person who says yes once ``release`` is set (she is still looking)."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release

    async def confirm_code(self, q: ConfirmCode) -> bool:
        await self.release.wait()
        return True


def places_kept(path: Path) -> int:
    """The compare places the keystore holds now."""
    record: Any = lock_file(Keystore.open(path, KS_PIN)).setting("lockout.compare") or {}
    return len(record.get("places", ()))


async def test_a_give_back_left_to_a_waiter_that_leaves_is_kept(ks_path: Path) -> None:
    """Finding of this review (fixed).  Four codes of Mallory's failed (one place left, the
    lock open).  An honest guest holds the last place at one host process; a visit of Mallory's
    waits for a turn there.  The host's person says yes: the place is free here at once, and
    its give-back is left to the waiter woken for it (one write for both).  The waiter never
    takes it: it leaves as it is woken (here its task is cancelled; as well, the lock closed
    meanwhile by a failure elsewhere makes it refuse before it looks).  Nothing keeps the
    give-back until the honest guest's message 2, which comes when *its* person said yes, up to
    two minutes later; meanwhile the keystore still holds the place, past its end (a step after
    the host's person's two minutes).  Every other host process of the device then counts it
    as the fifth failure, and compare is locked there for the honest guest's code, confirmed
    in time (docs/security.md: "given back on the person's yes")."""
    side = host_process_side(ks_path, SYSTEM_CLOCK, CONFIG)
    visits = Visits(CONFIG, side.state)
    for _ in range(BUDGET - 1):
        visits.start(Mallory(CONFIG), Answers(answer=False))  # she leaves at the Reveal
    await visits.finish(WITHIN)
    assert visits.predicted == BUDGET - 1
    yes, guest_yes = asyncio.Event(), asyncio.Event()
    honest = visits.start(
        GuestPairing(CONFIG, LocalIdentity.generate("Ringo's phone"), method=Method.COMPARE),
        Answers(release=yes), guest_person=SlowYes(guest_yes))
    await until(lambda: honest.host.state == S_ASK, WITHIN)
    waiter: dict[str, Any] = {}

    def leaves(host: WatchedHost) -> None:
        task = waiter["visit"].host_task
        assert task is not None
        task.cancel()

    host = visits.host(on_wake=leaves)
    waiter["visit"] = visits.start(Mallory(CONFIG, stay=True), Answers(answer=False), host=host)
    await until(lambda: host.state == S_TURN, WITHIN)
    yes.set()
    await until(lambda: honest.host.state == S_NOISE and waiter["visit"].host_task.done(),
                WITHIN)
    try:
        later = Ahead(LATER)
        other = host_process_side(ks_path, later, CONFIG).state.compare_lock
        kept = places_kept(ks_path)
        wait = other.locked_for(later.monotonic())
    finally:
        guest_yes.set()
        await visits.finish(WITHIN)
    assert honest.errors() == (None, None), honest.errors()
    assert wait == 0.0, f"locked for {wait:.0f} s by an honest code confirmed in time"
    assert kept == 0, f"the keystore still holds {kept} place(s) after the host's person's yes"


async def _cancel_after(task: asyncio.Task[None], delay: float) -> None:
    await asyncio.sleep(delay)
    task.cancel()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_no_order_of_visits_to_two_host_processes_gets_mallory_more_than_the_budget(
    ks_path: Path, seed: int,
) -> None:
    """Two host processes of the device on one keystore; twenty-four visits in an order drawn
    from ``seed``, each to either: Mallory leaving as she read her code, staying until the
    host's person refuses, or giving up at a random moment; a host machine stopped at a random
    moment; honest guests whose people both say yes after a look (their give-backs, kept at once
    or with a waiter's place).  Whatever the order: at most the budget of codes shown that
    nobody confirmed, each counted once in the keystore, no honest code counted, and no place
    left held."""
    rng = random.Random(seed)
    sides = [host_process_side(ks_path, SYSTEM_CLOCK, CONFIG) for _ in range(2)]
    all_visits = [Visits(CONFIG, side.state) for side in sides]
    unconfirmed: list[str] = []  #: the kind of each code shown to a visit nobody confirms
    quits: list[asyncio.Task[None]] = []
    for _ in range(24):
        await asyncio.sleep(rng.choice([0.0, 0.0, 0.0, 0.05, 0.3, 0.6]))
        visits = rng.choice(all_visits)
        kind = rng.choice(["leave", "refused", "quit", "stopped", "honest", "honest"])

        def on_shown(host: WatchedHost, kind: str = kind) -> None:
            if kind != "honest":
                unconfirmed.append(kind)

        host = visits.host(on_shown=on_shown)
        if kind == "honest":
            guest: GuestPairing = GuestPairing(CONFIG, LocalIdentity.generate("Ringo's phone"),
                                               method=Method.COMPARE)
            visits.start(guest, Answers(look=rng.uniform(0.0, 0.8)), host=host)
            continue
        visit = visits.start(Mallory(CONFIG, stay=kind != "leave"),
                             Answers(answer=False, look=rng.uniform(0.0, 1.5)), host=host)
        task = visit.guest_task if kind == "quit" else visit.host_task
        if kind in ("quit", "stopped"):
            assert task is not None
            quits.append(asyncio.get_running_loop().create_task(
                _cancel_after(task, rng.uniform(0.0, 1.5))))
    for visits in all_visits:
        await visits.finish(WITHIN)
    await asyncio.gather(*quits)
    lock = host_process_side(ks_path, SYSTEM_CLOCK, CONFIG).state.compare_lock
    lock.locked_for(time.monotonic())
    assert len(unconfirmed) <= BUDGET, f"{len(unconfirmed)} codes shown, none confirmed"
    assert lock.streak == len(unconfirmed), (lock.streak, unconfirmed)
    assert places_kept(ks_path) == 0
    assert all(visits.settled() for visits in all_visits)


async def test_a_reset_while_another_host_runs_keeps_its_codes_out_in_the_budget(
    ks_path: Path,
) -> None:
    """Finding 2 of the places review (fixed: a reset keeps the places still held).  Mallory
    holds the budget of codes out at one ``pairkit host`` process of the device (its person
    looking at them; the owner sees compare "busy" or "locked" at the other).  The owner starts
    a second host process with ``--reset-lockouts`` (:func:`forget_lockouts`), as the help text
    suggests after a crash.  The reset dropped the running host's places with the failures:
    its five codes were still out and would never count, and the second process had a fresh
    budget of five.  Mallory reads ten codes, none confirmed, none counted (docs/security.md,
    "Codes out at once are held to the same budget": "across every host process of the
    device")."""
    running = await HostProcess.start(ks_path, BUDGET)
    try:
        assert running.codes == BUDGET
        forget_lockouts(Keystore.open(ks_path, KS_PIN))  # (no failure yet: nothing it lifts)
        side = host_process_side(ks_path, SYSTEM_CLOCK, CONFIG)
        visits = Visits(CONFIG, side.state)
        release = asyncio.Event()
        for _ in range(BUDGET):
            visits.start(Mallory(CONFIG, stay=True), Answers(answer=False, release=release))
        await until(lambda: all(v.host.state in (S_ASK, S_TURN) or
                                (v.host_task is not None and v.host_task.done())
                                for v in visits.all), WITHIN)
        release.set()
        await visits.finish(WITHIN)
    finally:
        await running.kill()
    codes = running.codes + visits.predicted
    assert codes <= BUDGET, f"Mallory read {codes} codes before any counted"


async def test_honest_guests_comparing_at_once_at_two_host_processes_all_pair(
    ks_path: Path,
) -> None:
    """Honest guests at two host processes of the device at once, eight at each (the places
    are shared now: five for both, where each process had five before).  A process's own
    waiters are woken as its places free up; the other's look every quarter second.  With
    people who look at each code for half a second, every guest must still pair within its
    wait for a place, and no failure be left (docs/security.md, "honest guests comparing at
    once all pair")."""
    config = PairingConfig(step_timeout=12.0)  # a wait of six seconds for a place
    sides = [host_process_side(ks_path, SYSTEM_CLOCK, config) for _ in range(2)]
    all_visits = [Visits(config, side.state) for side in sides]
    for _ in range(8):
        for visits in all_visits:
            guest = GuestPairing(config, LocalIdentity.generate("Ringo's phone"),
                                 method=Method.COMPARE)
            visits.start(guest, Answers(look=0.5))
    for visits in all_visits:
        await visits.finish(60.0)
    errors = [v.errors() for visits in all_visits for v in visits.all]
    assert errors == [(None, None)] * 16, [e for e in errors if e != (None, None)]
    assert lock_file(Keystore.open(ks_path, KS_PIN)).setting("lockout.compare") is None
