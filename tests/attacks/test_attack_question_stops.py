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

import pytest

from pairkit.driver import MessagePipe, drive
from pairkit.pairing.errors import PairingTimeout
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
