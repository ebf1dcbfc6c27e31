"""Attack review 14b: a Ctrl-C that lands while a run of :func:`pairkit.driver.drive` is
ending (runtime/driver.py after merge b1f9b5a).

A run that ends with a pairkit error (the peer's refusal, a timeout) first tells the peer,
``await asyncio.wait_for(flush(), 1.0)``; a run that ends any way while a read of the pipe is
under way (a host on a replayed pipe, ``replay_first``: ``pairkit host`` with a key server
configured, whose read ahead runs in a task of its own) cancels that read in its ``finally``
and awaits it under ``contextlib.suppress(BaseException)``.  A Ctrl-C (the run's task
cancelled) that lands in either await is swallowed: on Python 3.11 ``wait_for`` returns the
flush's result when the cancel comes as the flush ends, and the ``suppress`` drops the cancel
with the read's own.  The run then ends with the peer's error, or returns as paired, and its
task has no cancel pending: whoever runs it goes on as if no one had pressed Ctrl-C (the
process keeps running; the person presses again).  Nothing pairs that no one confirmed: the
loss is the stop, not a key.

Each test sweeps the Ctrl-C over the event-loop turns after the deciding answer (as
tests/attacks/test_attack_question_stops.py sweeps its stops); the turns are the same on every
run, so the sweep is deterministic.  Both sides are the real machines over loopback.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pairkit.driver import MessagePipe, drive, replay_first
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
)
from pairkit.pairing.negotiation import Method
from pairkit.transports.loopback import loopback_pair
from tests.turns_harness import run_and_look

GEORGE = LocalIdentity.generate("George's phone")
PAUL = LocalIdentity.generate("Paul's phone")

#: event-loop turns after the deciding answer at which the Ctrl-C lands: from before the run
#: sees the answer to after it has ended (a cancel of a finished task is a no-op, not a stop)
TURNS = range(0, 14)


class Yes:
    async def confirm_code(self, q: ConfirmCode) -> bool:
        return True


class Decides:
    """A person who answers ``say`` once the test lets them (``go``)."""

    def __init__(self, say: bool) -> None:
        self.say = say
        self.asked = asyncio.Event()
        self.go: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked.set()
        await self.go
        return self.say


def _after(turns: int, call: Any) -> None:
    """``call`` ``turns`` event-loop turns from now (0: now)."""
    if turns <= 0:
        call()
    else:
        asyncio.get_running_loop().call_soon(_after, turns - 1, call)


def _machines() -> tuple[GuestPairing, HostPairing]:
    loop = asyncio.get_running_loop()
    cfg = PairingConfig(step_timeout=5.0)
    host = HostPairing(cfg, PAUL, HostState(), link_encrypted=False, wall_now=time.time())
    host.start(loop.time())
    guest = GuestPairing(cfg, GEORGE, method=Method.COMPARE, link_encrypted=False,
                         wall_now=time.time())
    guest.start(loop.time())
    return guest, host


async def _one(turns: int, *, stopped: str, pipe: str, host_says: bool) -> str | None:
    """One pairing (compare) whose host's person answers ``host_says`` (the guest's said yes
    at once); ``turns`` turns after that answer, the ``stopped`` side's run is cancelled
    (Ctrl-C).  What went wrong, or None: a lost Ctrl-C (accepted by the task, yet the run did
    not end as a cancel and left none pending), a pairing no one confirmed, a run not ended."""
    guest, host = _machines()
    a, b = loopback_pair(mtu=512)
    person = Decides(host_says)
    if pipe == "replay":  # the host chose its machine from the guest's first message
        guest_side: Any = MessagePipe(a, guest=True)
        host_pipe = MessagePipe(b, guest=False)
        guest_run = asyncio.ensure_future(run_and_look(drive(guest, guest_side, delegate=Yes())))
        first = await asyncio.wait_for(host_pipe.recv(), 10)
        host_side: Any = replay_first(host_pipe, first)
    else:
        guest_side, host_side = ((MessagePipe(a, guest=True), MessagePipe(b, guest=False))
                                 if pipe == "pipe" else (a, b))
        guest_run = asyncio.ensure_future(run_and_look(drive(guest, guest_side, delegate=Yes())))
    host_run = asyncio.ensure_future(run_and_look(drive(host, host_side, delegate=person)))
    await asyncio.wait_for(person.asked.wait(), 10)
    await asyncio.sleep(0.05)  # the guest's yes and its message are there; the host's read ahead
    target = guest_run if stopped == "guest" else host_run
    accepted: list[bool] = []
    person.go.set_result(None)
    _after(turns, lambda: accepted.append(target.cancel()))
    done, _ = await asyncio.wait({guest_run, host_run}, timeout=10)
    for run in (guest_run, host_run):
        if run not in done:
            run.cancel()
    await a.close()
    await b.close()
    if done != {guest_run, host_run}:
        return f"turn {turns}: a run did not end"
    if not host_says and (guest.session is not None or host.session is not None):
        return f"turn {turns}: a refused pairing paired"
    outcome, pending, _cancelling = target.result()
    if accepted == [True] and not isinstance(outcome, asyncio.CancelledError) and not pending:
        what = "paired" if outcome is None else repr(outcome)
        return f"turn {turns}: the Ctrl-C was lost, the run {what}"
    if outcome is not None and not isinstance(outcome, asyncio.CancelledError | PairingError):
        return f"turn {turns}: the run ended with {outcome!r}"
    return None


@pytest.mark.parametrize(("stopped", "pipe"), [
    ("guest", "bare"), ("guest", "pipe"), ("host", "pipe"), ("host", "replay"),
])
async def test_a_ctrl_c_as_a_refused_run_ends_is_never_lost(stopped: str, pipe: str) -> None:
    """The host's person refuses (the guest said yes): both runs end with a pairkit error
    (the host's RefusedError, the guest's RemoteError), each flushing its Abort first.  A
    Ctrl-C on either side, at any turn while its run ends, ends the run as a cancel or stays
    pending for its task's next await; nothing pairs.  Fails on main b1f9b5a (the guest on a
    bare link or a pipe at turns 3-5, the host on a pipe at turns 1-3:
    ``wait_for(flush(), 1.0)`` returned the flush's result and dropped the cancel; the host
    on a replayed pipe at turns 3-7: that, and the cancelled read ahead awaited under
    ``suppress(BaseException)``): the run ends with the refusal, no cancel pending."""
    found = [f for turns in TURNS
             if (f := await _one(turns, stopped=stopped, pipe=pipe, host_says=False))]
    assert not found, found


async def test_a_ctrl_c_as_a_replayed_run_pairs_is_never_lost() -> None:
    """The author's known gap, made deterministic: a host on a replayed pipe (its question's
    hook and its read ahead each in a task of its own) whose person says yes; the guest's
    message 2 is already there, the host pairs and returns, its read ahead still under way,
    cancelled and awaited in ``drive``'s ``finally``.  A Ctrl-C at any turn meanwhile ends the
    run as a cancel or stays pending for the task's next await.  Fails on main b1f9b5a at
    turns 3-4: the run returns as paired, the Ctrl-C swallowed with the read's cancel."""
    found = [f for turns in TURNS
             if (f := await _one(turns, stopped="host", pipe="replay", host_says=True))]
    assert not found, found


@pytest.mark.parametrize(("stopped", "pipe"), [("guest", "pipe"), ("host", "pipe")])
async def test_a_ctrl_c_as_an_accepted_run_pairs_is_never_lost(stopped: str, pipe: str) -> None:
    """Pinned (holds on main b1f9b5a): both people say yes over pipes watched by polling (no
    read ahead in a task of its own); a Ctrl-C at any turn while either run ends is a cancel
    or stays pending, and the runs end (paired, or one of them cancelled)."""
    found = [f for turns in TURNS
             if (f := await _one(turns, stopped=stopped, pipe=pipe, host_says=True))]
    assert not found, found
