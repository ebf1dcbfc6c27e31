"""Attacks on compare's codes out at once (CodeTurns; docs/security.md, "compare: what may cross
before the people confirmed the code", "Codes out at once are held to the same budget").

Mallory (a man in the middle posing as a guest, or a stranger) wants more of the host's codes
than the budget (5) without its person confirming any, or wants compare denied for good by
leaking a place; an unlucky honest guest wants a clear answer in bounded time.  Played by the
real machines under :func:`pairkit.driver.drive` over loopback links (tests/turns_harness.py),
the host's state shared by all its machines as ``pairkit host`` shares it:

* visits in any order (bursts, staggered, Mallory leaving at once, staying until the host's
  person refuses, giving up while she waits, PIN offers mixed in): never more than 5 codes,
  each code shown counted exactly once, nothing left held or queued;
* a host side stopped (cancelled) or a guest leaving at each exact moment: while it waits, right
  after it was given its turn, right after it showed its code: it costs a try exactly when its
  code went out, and its place goes on (the next guest pairs);
* a streak the lock forgave (a quiet day) while guests waited their turn.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from pairkit import peers
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Keystore
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest
from pairkit.pairing.errors import BusyError, DecodeError, ErrorCode, PairingError, RemoteError
from pairkit.pairing.framing import fragment
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
    PinPolicy,
)
from pairkit.pairing.methods.common import S_TURN
from pairkit.pairing.negotiation import Method
from tests.ble_harness import Person, World, george, paul, world
from tests.turns_harness import (
    BUDGET,
    Answers,
    GuestYes,
    Mallory,
    OddStep,
    TakesASecond,
    Visits,
    WatchedHost,
    until,
)

__all__ = ["george", "paul", "world"]

#: a short step: a host waits half of it for its turn, a guest all of it for the host's Reveal
STEP = 2.0
CONFIG = PairingConfig(step_timeout=STEP)
#: how long a whole test's visits may take, at most
WITHIN = 20 * STEP
#: Mallory's links at once through the real host flow (the admission's limit per address)
BURST = 8


# -- any order of visits ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_no_order_of_visits_gets_mallory_more_than_the_budget(seed: int) -> None:
    """Twenty visits in an order drawn from ``seed``: bursts and staggered starts; Mallory
    leaving as soon as she read the code, staying until the host's person refuses, or giving up
    at a random moment (in the wait, or with her code out); PIN offers with a wrong PIN mixed
    in.  Whatever the order: at most 5 codes ever went out, none while the lock would not hold
    were every code out to fail, each code shown counts once against the lock, and nothing is
    left holding a place or queued."""
    rng = random.Random(seed)
    state = HostState()
    state.set_pin("864213")
    visits = Visits(CONFIG, state)
    shown: list[int] = []  #: at each code shown: codes out + failures counted so far

    def on_shown(host: WatchedHost) -> None:
        shown.append(state.compare_turns.out + state.compare_lock.streak)

    quits: list[asyncio.Task[None]] = []
    for _ in range(20):
        await asyncio.sleep(rng.choice([0.0, 0.0, 0.0, 0.05, 0.3, 0.8]))  # bursts and gaps
        kind = rng.choice(["leave", "leave", "refused", "quit", "pin"])
        host = visits.host(on_shown=on_shown)
        if kind == "pin":
            guest = GuestPairing(CONFIG, LocalIdentity.generate("George's phone"),
                                 method=Method.PIN, pin="135790")
            visits.start(guest, Answers(), host=host)
            continue
        mallory = Mallory(CONFIG, stay=kind != "leave")
        person = Answers(answer=False, look=rng.uniform(0.0, 1.5))
        visit = visits.start(mallory, person, host=host)
        if kind == "quit":
            task = visit.guest_task
            assert task is not None
            quits.append(asyncio.get_running_loop().create_task(
                _cancel_after(task, rng.uniform(0.0, 1.5))))
    await visits.finish(WITHIN)
    await asyncio.gather(*quits)
    assert len(shown) <= BUDGET, f"the host showed {len(shown)} codes, none confirmed"
    assert all(n <= BUDGET for n in shown), shown
    assert visits.predicted <= len(shown)
    assert state.compare_lock.streak == len(shown), "a code shown was not counted exactly once"
    assert visits.settled(), "a place is still held, or a machine still queued"
    assert all(v.host.session is None for v in visits.all)


async def _cancel_after(task: asyncio.Task[None], delay: float) -> None:
    await asyncio.sleep(delay)
    task.cancel()


# -- each exact moment -----------------------------------------------------------------------------

MOMENTS = [
    # (who stops, when, whether the code went out)
    ("host", "waiting", 0),
    ("host", "woken", 0),
    ("host", "shown", 1),
    ("guest", "waiting", 0),
    ("guest", "woken", None),  # its Abort and its turn reach the host at once: either
    ("guest", "shown", 1),
]


@pytest.mark.parametrize(("who", "when", "went_out"), MOMENTS)
async def test_a_visit_stopped_at_each_moment_costs_its_code_only_and_frees_its_place(
    who: str, when: str, went_out: int | None,
) -> None:
    """Five honest guests hold every place (the host's person is looking at their codes); a
    sixth waits its turn.  Its host side is cancelled, or its guest leaves (Abort), while it
    waits, right after it was given its turn (one of the five confirmed), or right after it
    showed its code.  It counts as a failed try exactly when its code went out; no place stays
    held, nobody stays queued; the five pair, and a later guest pairs too."""
    visits = Visits(CONFIG)
    state = visits.state
    releases = [asyncio.Event() for _ in range(BUDGET)]
    holders = [visits.start(Mallory(CONFIG, stay=True), Answers(release=r)) for r in releases]
    await until(lambda: state.compare_turns.out == BUDGET, STEP)
    shown = 0
    stopped: list[str] = []

    def stop(host: WatchedHost) -> None:
        stopped.append(when)
        visit = visits.all[-1]
        if who == "host":
            assert visit.host_task is not None
            visit.host_task.cancel()
        else:  # Mallory leaves: her Abort is in the host's link now, and she stops
            assert visit.pair is not None and visit.guest_task is not None
            abort = wire.Abort(code=ErrorCode.CANCELLED, reason="Mallory leaves").encode()
            for piece in fragment(abort, visit.pair.a.mtu):
                assert visit.pair.a.send_nowait(piece)
            visit.guest_task.cancel()

    def on_shown(host: WatchedHost) -> None:
        nonlocal shown
        shown += 1
        if when == "shown":
            stop(host)

    host = visits.host(on_wake=stop if when == "woken" else None, on_shown=on_shown)
    sixth = visits.start(Mallory(CONFIG, stay=True), Answers(answer=False, look=STEP),
                         host=host)
    await until(lambda: host.state == S_TURN and host.waited, STEP)
    if when == "waiting":
        stop(host)
        await until(lambda: sixth.host_task is not None and sixth.host_task.done(), STEP)
    releases[0].set()  # the first code confirmed: its place goes to the sixth
    if when != "waiting":
        await until(lambda: sixth.host_task is not None and sixth.host_task.done(), STEP)
    for r in releases:
        r.set()
    await visits.finish(WITHIN)
    assert stopped == [when], "the moment was never reached"
    assert shown == (went_out if went_out is not None else shown)
    assert state.compare_lock.streak == shown, "the try counted is not the code that went out"
    assert sixth.host.session is None
    assert [v.errors() for v in holders] == [(None, None)] * BUDGET
    assert visits.settled(), "a place is still held, or a machine still queued"
    later = visits.start(Mallory(CONFIG, stay=True), Answers())
    await visits.finish(WITHIN)
    assert later.errors() == (None, None)


# -- how long a stranger holding the places keeps others waiting -------------------------------


async def test_a_stranger_holding_every_place_is_out_of_the_way_once_her_codes_time_out(
) -> None:
    """Mallory holds 5 codes out and never answers; the host's person does not answer either.
    A guest that comes meanwhile is told "busy" after half a step (it saw no code).  Her codes
    end when the host's answer time runs out: each counts against the lock (compare locked),
    no place stays held, and a guest that comes then is refused as locked, before any code."""
    visits = Visits(CONFIG, answer_time=2 * STEP)
    state = visits.state
    mallory = [visits.start(Mallory(CONFIG, stay=True), _Silent(), guest_person=_Silent())
               for _ in range(BUDGET)]
    await until(lambda: state.compare_turns.out == BUDGET, STEP)
    meanwhile = visits.start(Mallory(CONFIG, stay=True), Answers())
    await until(lambda: all(t is not None and t.done()
                            for v in mallory for t in (v.host_task,)), 4 * STEP)
    assert meanwhile.host_task is not None and meanwhile.host_task.done()
    g_err, h_err = meanwhile.errors()
    assert isinstance(h_err, BusyError) and meanwhile.guest.predicted == []
    assert isinstance(g_err, RemoteError) and g_err.code == ErrorCode.BUSY
    assert state.compare_lock.streak == BUDGET and visits.settled()
    later = visits.start(Mallory(CONFIG, stay=True), Answers())
    await visits.finish(WITHIN)
    g_err, _h_err = later.errors()
    assert isinstance(g_err, RemoteError) and g_err.code == ErrorCode.LOCKED_OUT
    assert later.guest.predicted == []


class _Silent:
    """A person who never answers a code (Mallory's side, or an owner away)."""

    async def confirm_code(self, q: ConfirmCode) -> bool:
        await asyncio.Event().wait()
        return False


# -- a streak forgiven while guests wait -----------------------------------------------------------


async def test_places_a_forgiven_streak_frees_go_to_the_guests_waiting() -> None:
    """Finding of the attack review (fixed): places freed by the lock forgiving a streak went to
    nobody waiting (CodeTurns handed places out only as a holder settled, counting the places
    by the streak it knew then, and queued each newcomer behind those waiting), so guests were
    told "busy" with places free.

    The host had 5 codes fail a day ago, less a moment (its streak: one code at a time).  An
    honest guest's code is out (the host's person is looking), two more guests wait their turn;
    then the day since the last failure is over, and the host's person confirms the code.  The
    place goes to the second guest, whose check of the lock forgives the streak (5 places
    again): the third must be shown its code too and pair, not be told the host is busy."""
    config = PairingConfig(step_timeout=2 * STEP)  # a wait of one STEP
    loop = asyncio.get_running_loop()
    state = HostState()
    forgiven_at = loop.time() + STEP / 2
    for _ in range(BUDGET):
        state.compare_lock.failed(forgiven_at - PinPolicy().forgive)
    visits = Visits(config, state)
    release = asyncio.Event()
    first = visits.start(Mallory(config, stay=True), Answers(release=release))
    await until(lambda: state.compare_turns.out == 1, STEP)
    waiters = [visits.host(), visits.host()]
    # The host's person looks at the second's code for longer than the third may wait.
    second = visits.start(Mallory(config, stay=True), Answers(look=2 * STEP), host=waiters[0])
    third = visits.start(Mallory(config, stay=True), Answers(), host=waiters[1])
    await until(lambda: all(h.state == S_TURN for h in waiters), STEP)
    await until(lambda: loop.time() > forgiven_at, STEP)
    release.set()
    await visits.finish(WITHIN)
    assert first.errors() == (None, None)
    busy = [v for v in (second, third) if isinstance(v.errors()[1], BusyError)]
    assert busy == [], "told busy while the forgiven streak left places free"
    assert second.errors() == (None, None) and third.errors() == (None, None)
    assert visits.settled()


# -- the guest's answer when it is not its turn ----------------------------------------------


async def every_place_held(host_config: PairingConfig) -> tuple[Visits, asyncio.Event]:
    """A host (``host_config``) whose five places are held by guests whose codes are out, their
    host's person looking until the event returned is set."""
    visits = Visits(host_config)
    release = asyncio.Event()
    for _ in range(BUDGET):
        visits.start(Mallory(host_config, stay=True), Answers(release=release))
    await until(lambda: visits.state.compare_turns.out == BUDGET, STEP)
    return visits, release


async def test_a_guest_with_a_shorter_step_is_told_busy_too() -> None:
    """A guest whose step is shorter than half the host's (``pairkit join --timeout 30``, the
    default, against ``pairkit host --timeout 90``) is told the host is busy, not that the host
    did not answer in time: its Offer says how long it waits (``step_ms``), and the host's turn
    ends within half of the shorter step (the attack review's finding 3; failed before with
    'the host did not answer in time')."""
    host_config = PairingConfig(step_timeout=4 * STEP)
    visits, release = await every_place_held(host_config)
    late = visits.start(Mallory(PairingConfig(step_timeout=STEP), stay=True), Answers())
    await until(lambda: late.guest_task is not None and late.guest_task.done(), WITHIN)
    release.set()
    await visits.finish(WITHIN)
    g_err, h_err = late.errors()
    assert isinstance(g_err, RemoteError) and g_err.code == ErrorCode.BUSY, repr(g_err)
    assert isinstance(h_err, BusyError), repr(h_err)
    assert late.guest.predicted == [], "the late guest was shown a code"


async def test_a_guest_claiming_a_long_step_does_not_stretch_the_hosts_wait() -> None:
    """A stranger who says she waits an hour (the most ``step_ms`` allows) does not hold a
    host's compare wait past half the host's own step: it still ends with busy, in time for a
    guest that waits one host step, and nothing is left queued."""
    visits, release = await every_place_held(PairingConfig(step_timeout=STEP))
    late = visits.start(Mallory(PairingConfig(step_timeout=3600), stay=True), Answers())
    # The host's half step, and a margin for the loop: far below the hour she claimed.
    await until(lambda: late.host_task is not None and late.host_task.done(), 2 * STEP)
    assert isinstance(late.host_task.exception(), BusyError), repr(late.host_task.exception())
    release.set()
    await visits.finish(WITHIN)
    g_err, _h_err = late.errors()
    assert isinstance(g_err, RemoteError) and g_err.code == ErrorCode.BUSY, repr(g_err)
    assert visits.settled()


@pytest.mark.parametrize("step_ms", [0, 99, 3_600_001, -1])
async def test_an_offer_with_a_step_out_of_bounds_is_refused(step_ms: int) -> None:
    """A bit-flipped or hostile ``step_ms`` (below 100 ms, above an hour) in a compare Offer
    sent over a real link: the host refuses it as a decode error naming the field, shows no
    code, holds no place, and counts no try."""
    visits = Visits(CONFIG)
    guest = OddStep(CONFIG, step_ms=step_ms)
    visit = visits.start(guest, Answers())
    await visits.finish(WITHIN)
    _g_err, h_err = visit.errors()
    assert isinstance(h_err, DecodeError) and "step_ms" in str(h_err), repr(h_err)
    assert guest.predicted == []
    assert visits.state.compare_lock.streak == 0 and visits.settled()


# -- a burst through the real `pairkit host` flow ------------------------------------------------


async def test_a_burst_through_the_real_host_flow_gets_at_most_the_budget(
    world: World, paul: Keystore, george: Keystore
) -> None:
    """Through ``pairkit host``'s flow over bumble (admission, the cloud step, the host's one
    HostState): a device asks to join on eight links at once (eight radios), its owner says
    yes to each request, and on each it leaves as soon as it read the host's code.  5 codes go
    out, its owner is asked no more than that, compare ends locked, and nothing is left holding
    a place or queued.  (Until session 15 the device claimed the grant it had been given,
    which let it past the join prompt with any method; that is refused now before any
    question.)"""
    host = await world.start_host(paul, frozenset({Method.COMPARE, Method.RESUME}),
                                  person=TakesASecond())
    device = await world.central("bumble")
    await world.join(george, device, host, method=Method.COMPARE, person=Person())
    me = peers.local_identity(george)
    # One radio holds one connection to the host: Mallory brings a radio per link (a BLE
    # address costs her nothing), each asking to join.  Each link runs its cloud step as it
    # connects; then all eight offer compare at once.
    visits: list[Mallory] = []
    ready: list[tuple[Any, MessagePipe]] = []
    for _ in range(BURST):
        radio = await world.central("bumble")
        link = await radio.connect(host.address, 5.0)
        pipe = MessagePipe(link, guest=True)
        cloud = CloudGuest(name=me.name, clouds=(), mac=lambda _c, _d: b"",
                           static=me.static_public, method=int(Method.COMPARE))
        await asyncio.wait_for(drive(cloud, pipe, delegate=GuestYes()), 2 * STEP)
        ready.append((link, pipe))

    async def visit(link: Any, pipe: MessagePipe) -> BaseException | None:
        try:
            mallory = Mallory(CONFIG, me=me, context=pipe.transcript())
            visits.append(mallory)
            await asyncio.wait_for(drive(mallory, pipe, delegate=GuestYes()), 4 * STEP)
            return None
        except PairingError as exc:
            return exc
        finally:
            await link.close()

    errors = await asyncio.gather(*(visit(link, pipe) for link, pipe in ready))
    served = sum(len(m.predicted) for m in visits)
    assert served == BUDGET, f"the host showed {served} codes to a guest that left"
    assert all(e is not None for e in errors)
    state = host.state
    await until(lambda: state.compare_turns.out == 0 and not state.compare_turns._waiting,
                2 * STEP)
    asked = [k for k, _ in host.person.questions]
    assert asked.count("code") == 1 + served and asked.count("join") == 1 + BURST
    assert state.compare_lock.streak == served
    assert state.compare_lock.locked_for(asyncio.get_running_loop().time()) > 0
    assert host.results[1:] == []


# -- a code out across the end of a quiet day -----------------------------------------------------


async def test_a_code_out_across_the_end_of_a_quiet_day_still_belongs_to_its_streak() -> None:
    """Finding of the attack review (fixed): a code held out across the end of a streak's quiet
    day was counted in a fresh streak (the lock forgave the old one at the next check, though
    the day held that code), so a next code went out at once and no lock followed.

    Mallory's streak stands at 9 (the lock at its hour), her last failure a day ago less a
    moment; the lock is open.  She takes a code and holds it out (her person never answers,
    the host's person is slow to refuse) across the end of the day since that failure, then
    comes again.  Her held code was a try made within the day, counted at the time it went
    out: the streak goes on (her next visit gets no code beside it: one at a time past the
    budget), and once it failed compare is locked again."""
    loop = asyncio.get_running_loop()
    policy = PinPolicy()
    state = HostState(compare_policy=policy)
    day_ends = loop.time() + 0.5
    for i in range(9):
        state.compare_lock.failed(day_ends - policy.forgive - (8 - i) * policy.max_lock)
    assert state.compare_lock.locked_for(loop.time()) == 0 and state.compare_lock.streak == 9
    visits = Visits(CONFIG, state)
    release = asyncio.Event()
    held = visits.start(Mallory(CONFIG, stay=True), Answers(answer=False, release=release),
                        guest_person=_Silent())
    await until(lambda: state.compare_turns.out == 1 and held.guest.predicted != [], STEP)
    await until(lambda: loop.time() > day_ends, STEP)
    again = visits.start(Mallory(CONFIG), Answers(answer=False))
    await until(lambda: again.host_task is not None and again.host_task.done(), STEP)
    release.set()
    await visits.finish(WITHIN)
    assert again.guest.predicted == [], "a code went out beside one the old streak holds"
    assert state.compare_lock.streak == 10, "the code held out began a fresh streak"
    assert state.compare_lock.locked_for(loop.time()) > 0
    assert visits.settled()



async def test_a_stranger_joining_while_every_place_is_held_waits_its_turn_and_pairs(
    world: World, paul: Keystore, george: Keystore
) -> None:
    """Through ``pairkit host``'s flow over bumble: while every compare place is held (five
    codes out, their people still looking), a stranger asking to join for compare is let in as
    before (the owner is asked) and waits its turn; when a code is confirmed it pairs.  Honest
    strangers arriving at once are queued, not refused: refusing them at the cloud step as
    "busy" (tried this session, so that the owner would not be asked) failed a third of 1,000
    compares at once (bench/concurrent_pairings.py over TCP)."""
    host = await world.start_host(paul, frozenset({Method.COMPARE, Method.RESUME}))
    turns = host.state.compare_turns
    loop = asyncio.get_running_loop()
    held = [object() for _ in range(BUDGET)]
    for holder in held:  # five codes out, shown by other guests' exchanges
        assert turns.take(holder, loop.time(), loop.time() + 600.0)
    device = await world.central("bumble")
    joining = asyncio.ensure_future(
        world.join(george, device, host, method=Method.COMPARE, person=Person())
    )
    await until(lambda: host.person.questions == [("join", "George's phone")], STEP)
    await asyncio.sleep(STEP / 4)  # the stranger, let in, now waits for a place
    assert not joining.done() and turns.out == BUDGET
    turns.settle(held.pop(), confirmed=True)  # a code confirmed: its place goes to her
    await asyncio.wait_for(joining, WITHIN)
    assert [q[0] for q in host.person.questions] == ["join", "code"]
    for holder in held:
        turns.settle(holder, confirmed=True)
    assert turns.out == 0
