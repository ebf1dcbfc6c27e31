"""A PN gateway's setup that fails as a whole, with a stranger on a PAN link that takes no data
(run_gateway's per-link senders, docs/protocol.md §18).

Each element's link has a sender of its own, so that a link whose receiver takes nothing holds
its own messages only; the setup's failure is told to the elements afterwards, one link after
the other.  Played over loopback PAN links (the stranger's takes one message and is never read),
with a key server that cannot be reached (its port closed) so that the setup fails.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.driver import MessagePipe
from pairkit.pairing.cpns import GatewayConfig, PneConfig, PnSetupNotifyResponse, SetupType
from pairkit.pairing.errors import PairingTimeout, RemoteError
from pairkit.transports.loopback import loopback_pair
from tests.cli_helpers import free_port
from tests.ttp_harness import identity, running_server

#: the gateway's step; the honest element waits three
STEP = 2.0


async def test_a_stranger_whose_link_takes_no_data_does_not_hold_the_failure_from_the_element(
    tmp_path: Path,
) -> None:
    """Finding of this review (fixed).  The stranger says yes to the setup notify under an element's
    id without reading it, and takes no data from then on; the key server cannot be reached, so
    the setup fails.  The honest element is told why by the gateway's Abort, at once, not left
    waiting its own step for an outcome that never comes.  The stranger's link is first in the
    gateway's order: the gateway's aborts went one link after the other, directly on the pipes,
    within 2 s in all, and the stranger's held the element's for all of them; the element heard
    nothing and gave up after its own step (here 6 s; 30 s by default), with "the gateway did
    not relay the server's authentication request" instead of the reason."""
    async with running_server(tmp_path / "srv") as h:
        gw, element, absent = identity("gateway"), identity("element"), identity("absent")
        eukeys = {d.device_id: os.urandom(32) for d in (gw, element, absent)}
        stranger = loopback_pair(names=("gw", "stranger"), queue_size=1)
        honest = loopback_pair(names=("gw", "element"))

        async def never_reads() -> None:
            await MessagePipe(stranger.b, guest=True).send(PnSetupNotifyResponse(
                absent.device_id, absent.name, 1, os.urandom(16), True, True).encode())
            await asyncio.Event().wait()

        task = asyncio.create_task(never_reads())
        gateway = run_gateway(
            {"stranger": PneLink(stranger.a), "element": PneLink(honest.a, element.device_id)},
            me=gw, server=f"127.0.0.1:{free_port()}", ca_file=h.ca,
            initiate=(SetupType.ALL, ()),
            config=GatewayConfig(gw.device_id, "gateway", eukeys[gw.device_id],
                                 collect_window=0.5, step_timeout=STEP),
        )
        pne = run_pne(honest.b, PneConfig(element.device_id, element.name,
                                          eukeys[element.device_id], step_timeout=3 * STEP),
                      listen=True)
        try:
            outcome, heard = await asyncio.gather(gateway, pne, return_exceptions=True)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stranger.aclose()
            await honest.aclose()
    assert isinstance(outcome, BaseException), outcome
    assert not isinstance(heard, PairingTimeout), f"the element was not told: {heard!r}"
    assert isinstance(heard, RemoteError), repr(heard)
