"""compare's codes out at once (:class:`~pairing.methods.common.CodeTurns`), played over real
loopback links by the real machines under :func:`pairkit.driver.drive` (docs/security.md,
"compare: what may cross before the people confirmed the code", "Codes out at once are held to
the same budget").  Used by tests/attacks/test_attack_compare_turns.py.

* :class:`Mallory` is a guest toward the host that reads the code the host shows (she holds
  every input once its Reveal arrived) and, unless told to stay, leaves at once.
* :class:`WatchedHost` is the real host machine with three hooks for a test's timing (never
  changing what it does): one called right after CodeTurns woke it for its turn (before it took
  its place), one right after it showed its code, one as the guest's Reveal arrives (before the
  host reads it).
* :class:`OddStep` is Mallory whose Offer says she waits any number of milliseconds, in bounds
  or not.
* :class:`TakesASecond` is a host's owner in the real ``pairkit host`` flow who looks at a code
  for a second before saying yes, as a person does.
* :class:`Visits` drives any number of (guest, host) pairs at once, each over its own loopback
  pair and :class:`~pairkit.driver.MessagePipe` (reading ahead while a person is asked, as the
  product does), each side a task a test may cancel at a chosen moment.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from pairkit.driver import DEFAULT_ANSWER_TIME, MessagePipe, drive
from pairkit.pairing import keyschedule
from pairkit.pairing.errors import UserCancelled
from pairkit.pairing.messages import Offer, Reveal
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
)
from pairkit.pairing.methods.common import S_ASK
from pairkit.pairing.negotiation import Method
from pairkit.transports.loopback import LinkPair, loopback_pair
from tests.ble_harness import Person

#: the host's default budget of codes shown and never confirmed (PinPolicy's max_failures)
BUDGET = 5


class Mallory(GuestPairing):
    """A guest who computes the host's code from its Reveal (``predicted``) and leaves at once
    unless ``stay``; a guest that stays is an honest-looking one whose person answers.

    Mallory as the guest toward the host while the real guest shows its code (a man in the
    middle): once the host's Reveal arrived she holds every input of the code the host now
    shows, so she leaves unless it is the code she needs, and comes back.  Each visit is a fresh
    10^-6 chance; the host's person is asked each time, and the question withdrawn when she
    leaves.  The host must count these codes shown and never confirmed (docs/security.md,
    "compare: what may cross before the people confirmed the code")."""

    def __init__(self, config: PairingConfig, *, stay: bool = False, name: str = "George's phone",
                 me: LocalIdentity | None = None, context: bytes = b"") -> None:
        super().__init__(config, me or LocalIdentity.generate(name), method=Method.COMPARE,
                         context=context)
        self.stay = stay
        self.predicted: list[str] = []

    def _on_reveal(self, msg: Reveal, now: float) -> None:
        assert self._offer is not None and self._offer.pk is not None
        self.predicted.append(keyschedule.compare_code(
            self._th, self._offer.pk, self._sealed[:32], self._ng, msg.nonce
        ))
        if not self.stay:
            raise UserCancelled("the code does not suit Mallory")
        super()._on_reveal(msg, now)


class OddStep(Mallory):
    """Mallory whose compare Offer says she waits ``step_ms`` milliseconds, whatever the bounds
    (a bit-flipper, or a hostile guest): the field is set after the message was built, as raw
    bytes on the wire would carry it."""

    def __init__(self, config: PairingConfig, *, step_ms: int) -> None:
        super().__init__(config)
        self.step_ms = step_ms

    def _send(self, msg: Any) -> None:
        if isinstance(msg, Offer):
            object.__setattr__(msg, "step_ms", self.step_ms)
        super()._send(msg)


class TakesASecond(Person):
    """A host's owner who looks at a code for a second before saying yes (a person does)."""

    async def confirm_code(self, q: ConfirmCode) -> bool:
        answer = await super().confirm_code(q)
        await asyncio.sleep(1.0)
        return answer


class WatchedHost(HostPairing):
    """The real host machine; ``on_wake`` runs right after CodeTurns woke it for its turn
    (inside the wake-up call, before its driver looked again and took its place), ``on_shown``
    right after it showed its code (its Reveal queued, its person about to be asked),
    ``on_reveal`` as the guest's Reveal arrives (before the host reads it)."""

    def __init__(self, *args: Any, on_wake: Callable[[WatchedHost], None] | None = None,
                 on_shown: Callable[[WatchedHost], None] | None = None,
                 on_reveal: Callable[[WatchedHost], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_wake = on_wake
        self.on_shown = on_shown
        self.on_reveal = on_reveal
        self.waited = False  #: whether it ever waited for its turn

    def _subscribe_turn(self, wake: Callable[[], None] | None) -> None:
        self.waited = True
        hook = self.on_wake
        if wake is None or hook is None:
            super()._subscribe_turn(wake)
            return
        inner = wake

        def woken() -> None:
            inner()
            hook(self)

        super()._subscribe_turn(woken)

    def _on_reveal(self, msg: Any, now: float) -> None:
        if self.on_reveal is not None:
            self.on_reveal(self)
        super()._on_reveal(msg, now)

    def _show_code_in_turn(self, now: float, *, last: bool = False) -> None:
        super()._show_code_in_turn(now, last=last)
        if self.state == S_ASK and self.on_shown is not None:
            self.on_shown(self)


class Answers:
    """The host's person: answers each code ``answer`` after ``look`` seconds, or when
    ``release`` is set (whichever is given); ``asked`` counts the codes she was shown."""

    def __init__(self, *, answer: bool = True, look: float = 0.0,
                 release: asyncio.Event | None = None) -> None:
        self.answer, self.look, self.release = answer, look, release
        self.asked = 0
        self.seen = asyncio.Event()

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked += 1
        self.seen.set()
        if self.release is not None:
            await self.release.wait()
        else:
            await asyncio.sleep(self.look)
        return self.answer


class GuestYes:
    """A guest's person who says yes to the code shown."""

    async def confirm_code(self, q: ConfirmCode) -> bool:
        return True


@dataclasses.dataclass
class Visit:
    """One guest and the host machine that serves it, each driven over its end of a link."""

    guest: GuestPairing
    host: HostPairing
    guest_person: Any
    host_person: Any
    pair: LinkPair | None = None
    guest_task: asyncio.Task[None] | None = None
    host_task: asyncio.Task[None] | None = None
    closed: bool = False

    def errors(self) -> tuple[BaseException | None, BaseException | None]:
        """What each side ended with (None: it paired); a side still running is an error."""
        out = []
        for task in (self.guest_task, self.host_task):
            assert task is not None and task.done(), "a side is still running"
            out.append(asyncio.CancelledError() if task.cancelled() else task.exception())
        return out[0], out[1]


class Visits:
    """Visits to one host (its ``state`` shared by all its machines), started when a test says
    and awaited together with a deadline."""

    def __init__(self, config: PairingConfig, state: HostState | None = None, *,
                 answer_time: float = DEFAULT_ANSWER_TIME) -> None:
        self.config = config
        #: how long the host's driver waits for its person's answer (the product's bound)
        self.answer_time = answer_time
        self.state = state or HostState()
        self.host_id = LocalIdentity.generate("Paul's phone")
        self.all: list[Visit] = []

    def host(self, **hooks: Any) -> WatchedHost:
        return WatchedHost(self.config, self.host_id, self.state, **hooks)

    def start(self, guest: GuestPairing, host_person: Any, *, host: HostPairing | None = None,
              guest_person: Any = None) -> Visit:
        """Start a visit now: both machines are driven at once over a fresh loopback pair."""
        visit = Visit(guest, host or self.host(), guest_person or GuestYes(), host_person)
        visit.pair = loopback_pair(names=(f"guest{len(self.all)}", f"host{len(self.all)}"))
        loop = asyncio.get_running_loop()
        visit.guest.start(loop.time())
        visit.host.start(loop.time())
        visit.guest_task = asyncio.ensure_future(_guest(visit))
        visit.host_task = asyncio.ensure_future(drive(
            visit.host, MessagePipe(visit.pair.b, guest=False), delegate=visit.host_person,
            answer_time=self.answer_time))
        self.all.append(visit)
        return visit

    async def finish(self, within: float) -> None:
        """Wait for every side of every visit to end (``within`` seconds at most), then close
        the links."""
        tasks = [t for v in self.all for t in (v.guest_task, v.host_task) if t is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), within)
        finally:
            for v in self.all:
                if v.pair is not None and not v.closed:
                    v.closed = True
                    await v.pair.aclose()

    @property
    def predicted(self) -> int:
        """Codes the guests that are :class:`Mallory` computed."""
        return sum(len(v.guest.predicted) for v in self.all if isinstance(v.guest, Mallory))

    def settled(self) -> bool:
        """No place held and nobody waiting: nothing leaked in CodeTurns."""
        turns = self.state.compare_turns
        return turns.out == 0 and not turns._waiting


async def _guest(visit: Visit) -> None:
    """The guest's side; a guest that fails goes away (its link closes), as ``pairkit join``
    does when it exits."""
    assert visit.pair is not None
    try:
        await drive(visit.guest, MessagePipe(visit.pair.a, guest=True),
                    delegate=visit.guest_person)
    except BaseException:
        await visit.pair.a.close()
        raise


async def until(condition: Callable[[], bool], within: float) -> None:
    """Wait (polling the event loop) until ``condition`` holds; AssertionError after
    ``within`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not condition():
        if loop.time() > end:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.005)


async def run_and_look(run: Any) -> tuple[BaseException | None, bool, int]:
    """Await a run in this task; then whether a cancel was left pending for the task's next
    await, and how many cancel requests the task still counts."""
    outcome: BaseException | None = None
    try:
        await run
    except BaseException as exc:  # the outcome is the test's subject
        outcome = exc
    pending = False
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        pending = True
    task = asyncio.current_task()
    assert task is not None
    return outcome, pending, task.cancelling()
