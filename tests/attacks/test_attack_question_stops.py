"""Attack review 13b: runtime/driver.py awaits a question's hook in the run's own task (on a
bare link since before e223589; on the read-ahead path, MessagePipe, since today's change).
A Ctrl-C (the run's task cancelled) or the answer time's expiry (the run's one timer, also a
cancel of the run's task) is then thrown into the hook itself; a hook that swallows that
cancel and answers (a delegate that cleans up and says yes) has its answer applied, and the
cancelled or timed-out run goes on and both sides pair.  With the hook in a task of its own
(e223589's read-ahead path) the cancel stays a cancel and the timeout a PairingTimeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from pairkit.driver import MessagePipe, drive
from pairkit.pairing.errors import PairingTimeout, RefusedError
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

GEORGE = LocalIdentity.generate("George's phone")
PAUL = LocalIdentity.generate("Paul's phone")


class Yes:
    async def confirm_code(self, q: ConfirmCode) -> bool:
        return True


class CleansUpAndSaysYes:
    """A person's hook that takes time and, when cancelled, swallows it and answers yes."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return True


@pytest.mark.parametrize("pipes", [False, True], ids=["bare-link", "pipe"])
@pytest.mark.parametrize("stop", ["ctrl-c", "answer-time"])
async def test_a_stop_swallowed_by_the_hook_still_ends_the_run(pipes: bool, stop: str) -> None:
    loop = asyncio.get_running_loop()
    cfg = PairingConfig(step_timeout=5.0)
    host = HostPairing(cfg, PAUL, HostState(), link_encrypted=False, wall_now=time.time())
    host.start(loop.time())
    guest = GuestPairing(cfg, GEORGE, method=Method.COMPARE, link_encrypted=False,
                         wall_now=time.time())
    guest.start(loop.time())
    a, b = loopback_pair(mtu=512)
    ga, hb = (MessagePipe(a, guest=True), MessagePipe(b, guest=False)) if pipes else (a, b)
    person = CleansUpAndSaysYes()
    answer_time = 60 if stop == "ctrl-c" else 0.3
    guest_run = asyncio.ensure_future(
        drive(guest, ga, delegate=person, answer_time=answer_time)
    )
    host_run = asyncio.ensure_future(drive(host, hb, delegate=Yes(), answer_time=60))
    await asyncio.wait_for(person.asked.wait(), 10)
    if stop == "ctrl-c":
        guest_run.cancel()  # Ctrl-C while the guest's person is asked
    done, _ = await asyncio.wait({guest_run, host_run}, timeout=10)
    for run in (guest_run, host_run):
        if run not in done:
            run.cancel()
        with contextlib.suppress(BaseException):
            await run
    paired = (guest.session is not None, host.session is not None)
    assert paired == (False, False), f"a stopped run paired (guest, host): {paired}"
    if stop == "ctrl-c":
        assert guest_run.cancelled(), "the cancelled run was not a cancel"
    else:
        assert isinstance(guest_run.exception(), PairingTimeout)


# -- doubt (a): the peer's Abort and a Ctrl-C at once, the hook swallowing the cancel ------------


class RefusesWith:
    """The host's person, who says no once the guest's person is looking at the code; ``then``
    runs as the refusal goes out (the host's Abort is sent in the same step), to put a Ctrl-C
    of the guest's run in the same event-loop turns as the Abort's arrival."""

    def __init__(self, asked: asyncio.Event, then: Any) -> None:
        self.asked = asked
        self.then = then

    async def confirm_code(self, q: ConfirmCode) -> bool:
        await self.asked.wait()
        self.then()
        return False


class Counts:
    """A guest's person who counts the cancel requests on the run's task when a cancel reaches
    the hook (``seen``), and then swallows it and says yes (``swallow``) or lets it through."""

    def __init__(self, *, swallow: bool) -> None:
        self.asked = asyncio.Event()
        self.swallow = swallow
        self.seen: list[int] = []

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            self.seen.append(task.cancelling())
            if not self.swallow:
                raise
        return True


def _machines(cfg: PairingConfig) -> tuple[GuestPairing, HostPairing]:
    loop = asyncio.get_running_loop()
    host = HostPairing(cfg, PAUL, HostState(), link_encrypted=False, wall_now=time.time())
    host.start(loop.time())
    guest = GuestPairing(cfg, GEORGE, method=Method.COMPARE, link_encrypted=False,
                         wall_now=time.time())
    guest.start(loop.time())
    return guest, host


@pytest.mark.parametrize("hook", ["swallows", "honest"])
async def test_a_ctrl_c_with_the_peers_abort_stays_a_cancel(hook: str) -> None:
    """The host's person refuses (its Abort reaches the guest) and, in the next event-loop
    turn, the guest's run is cancelled (Ctrl-C), while the guest's person is asked over a pipe
    (the link watched: the Abort withdraws the question by a cancel of the run's task too).
    Both cancels reach the hook as one CancelledError.  Whatever the hook does with it, nothing
    pairs and the guest's run ends as a cancel, as with an honest hook: a swallowed cancel must
    not turn the Ctrl-C into the peer's error (the run's caller would go on, its task still
    counting a cancel nobody took back).  Failed on main 30dc344 (swallows: the peer's
    RemoteError)."""
    loop = asyncio.get_running_loop()
    guest, host = _machines(PairingConfig(step_timeout=5.0))
    a, b = loopback_pair(mtu=512)
    person = Counts(swallow=hook == "swallows")
    runs: list[asyncio.Future[None]] = []

    def ctrl_c() -> None:  # the Abort's look runs first, then the cancel
        loop.call_soon(lambda: loop.call_soon(runs[0].cancel))

    runs.append(asyncio.ensure_future(
        drive(guest, MessagePipe(a, guest=True), delegate=person, answer_time=60)))
    runs.append(asyncio.ensure_future(drive(
        host, MessagePipe(b, guest=False), delegate=RefusesWith(person.asked, ctrl_c),
        answer_time=60)))
    guest_run, host_run = runs
    done, _ = await asyncio.wait(runs, timeout=10)
    assert done == set(runs), "a run did not end"
    assert person.seen == [2], "the hook did not see the Abort's and the Ctrl-C's cancels at once"
    assert (guest.session, host.session) == (None, None), "a refused pairing paired"
    assert isinstance(host_run.exception(), RefusedError)
    assert guest_run.cancelled(), (
        f"the Ctrl-C became {guest_run.exception()!r}" if not guest_run.cancelled() else "")
