"""Attack review atk21, finding 5 (low): a session's place was freed before its link closed.

``Session.receive`` frees a closed peer's place "only with the link closed" (atk20c: a peer
that sent CLOSE and kept its link open held more links than the host serves).  But
``Session.close()`` freed the place first, then closed the link: ``SecureLink.close`` sends
the CLOSE record (up to 2 s) and a TCP link waits up to its close timeout (2 s) for the
peer's FIN.  A peer that sent CLOSE and never sent its FIN kept its link open those seconds
while its place was already another's: a known device resuming in a loop held
``max_sessions`` plus as many links as it could pair in 2 to 4 s.  Now the place is freed
once the link is closed.

Real code: a library host and guest over TCP on 127.0.0.1.  What the host's admission counts
is read at the moment the host's session starts closing its link (nothing is timed).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import pairkit
from pairkit.admission import AdmissionLimits
from pairkit.pairing.errors import LinkClosedError

from ..attack_harness import STEP
from ..known_device_harness import accepting, device


async def test_a_peers_place_is_held_until_its_link_is_closed(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                         delegate=pairkit.Agree(), admission=AdmissionLimits(max_sessions=2),
                         step_timeout=STEP) as host, accepting(host) as accepted:
        on_george = await george.join(f"tcp:{host.address.removeprefix('tcp:')}",
                                      pin="246810", step_timeout=STEP)
        on_host = await accepted
        try:
            assert host._admission.sessions == 1
            counted: list[int] = []
            link = on_host._channel.link
            close_link = link.close

            async def close() -> None:
                counted.append(host._admission.sessions)  # as the link starts closing
                await close_link()

            link.close = close  # type: ignore[method-assign]
            # George's CLOSE record, on a link he keeps open
            secure = on_george._channel
            for fragment in secure.channel.seal_close():
                await secure.link.send(fragment)
            with pytest.raises(LinkClosedError):
                await on_host.receive(timeout=STEP)
            assert counted, "the host never closed the link"
            assert counted[0] == 1, "the place was freed before the link was closed"
            assert host._admission.sessions == 0  # and freed once it was
        finally:
            with contextlib.suppress(Exception):
                await on_host.close()
            with contextlib.suppress(Exception):
                await on_george.close()


async def test_a_close_cut_short_still_frees_the_place(tmp_path: Path) -> None:
    """Cancelled while its link closes (the application's task cancelled), the session still
    gives its place back."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                         delegate=pairkit.Agree(), step_timeout=STEP) as host, \
            accepting(host) as accepted:
        on_george = await george.join(f"tcp:{host.address.removeprefix('tcp:')}",
                                      pin="246810", step_timeout=STEP)
        on_host = await accepted
        try:
            link = on_host._channel.link
            close_link = link.close
            closing = asyncio.Event()

            async def close() -> None:
                closing.set()
                await asyncio.sleep(STEP)  # a close that takes its time
                await close_link()

            link.close = close  # type: ignore[method-assign]
            task = asyncio.ensure_future(on_host.close())
            await asyncio.wait_for(closing.wait(), STEP)
            assert host._admission.sessions == 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert host._admission.sessions == 0
        finally:
            with contextlib.suppress(Exception):
                await on_george.close()
            with contextlib.suppress(Exception):
                await close_link()
