"""Attack review 13b: runtime/driver.py runs a question's hook in the run's own task on the
read-ahead path (MessagePipe).  A Ctrl-C (the run's task cancelled) is then thrown into the
hook itself; a hook that swallows that cancel and answers (a delegate that cleans up and says
yes) has its answer applied, and the cancelled run goes on and pairs.  Before the change the
hook ran in a task of its own and the run's cancel stayed a cancel (docs/security.md: a
cancelled run ends, and the peer hears 'cancelled')."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from pairkit.driver import MessagePipe, drive
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


@pytest.mark.xfail(strict=True, reason="atk13b: Ctrl-C is thrown into the hook run in the run's "
                   "task; a hook that swallows it has its answer applied and the run pairs")
async def test_a_ctrl_c_swallowed_by_the_hook_is_still_a_cancel_over_a_pipe() -> None:
    loop = asyncio.get_running_loop()
    cfg = PairingConfig(step_timeout=5.0)
    host = HostPairing(cfg, PAUL, HostState(), link_encrypted=False, wall_now=time.time())
    host.start(loop.time())
    guest = GuestPairing(cfg, GEORGE, method=Method.COMPARE, link_encrypted=False,
                         wall_now=time.time())
    guest.start(loop.time())
    a, b = loopback_pair(mtu=512)
    person = CleansUpAndSaysYes()
    guest_run = asyncio.ensure_future(
        drive(guest, MessagePipe(a, guest=True), delegate=person, answer_time=60)
    )
    host_run = asyncio.ensure_future(
        drive(host, MessagePipe(b, guest=False), delegate=Yes(), answer_time=60)
    )
    await asyncio.wait_for(person.asked.wait(), 10)
    guest_run.cancel()  # Ctrl-C while the guest's person is asked
    done, _ = await asyncio.wait({guest_run, host_run}, timeout=10)
    for run in (guest_run, host_run):
        if run not in done:
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
    paired = (guest.session is not None, host.session is not None)
    assert paired == (False, False), f"a cancelled run paired (guest, host): {paired}"
    assert guest_run.cancelled(), "the cancelled run was not a cancel"
