"""What a library host's delegate is told of a guest that failed, and what that costs the
host's admission (runtime/api.py ``Host._serve``; attack review atk16).

A guest whose pairing fails is told to the delegate (``on_event``, ``GuestFailed``).  An
application's handler may take its time (a dialog, a log written over the network): a link
that failed and was closed must not keep its pending place in the admission (per address, in
all) while the application's handler runs, or a stranger who fails fast keeps the honest
devices behind her address (a NAT) out for as long as the application takes.  Played over TCP
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pairkit
from pairkit.admission import AdmissionLimits
from pairkit.keystore import Argon2Params
from pairkit.pairing.errors import LinkClosedError, PairingError
from pairkit.pairing.framing import fragment
from pairkit.transports.tcp import tcp_connect


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


class SlowToHear(pairkit.Agree):
    """An application that lets guests in, and whose handler of events waits on its UI (here:
    until the test lets it go)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.go_on = asyncio.Event()

    async def on_event(self, event: Any) -> None:
        self.events.append(event)
        await self.go_on.wait()


async def test_a_failed_strangers_link_keeps_no_place_while_the_application_hears_of_it(
    tmp_path: Path,
) -> None:
    """Paul's library host allows two pending links per address.  From George's address (one
    NAT), a stranger sends garbage on two links: each pairing fails at once, is closed, and is
    told to the application, whose handler takes its time.  George then joins by PIN from the
    same address: he must pair, not be told "busy".  Before (attack review atk16, low), the
    host awaited the application's handler inside the failed link's own handler, so the
    closed link kept its pending place meanwhile; and the handler was cancelled if the link
    was evicted."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    app = SlowToHear()
    limits = AdmissionLimits(per_address=2, first_flight=2.0)
    async with paul.host("tcp:127.0.0.1:0", methods=["pin"], delegate=app,
                         admission=limits) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=20))
        address, port = host.address.rsplit(":", 1)
        try:
            for _ in range(limits.per_address):
                link = await tcp_connect(address, int(port), timeout=5)
                try:
                    await link.send(fragment(b"\xff" * 12, 64)[0])  # not a pairkit message
                    with contextlib.suppress(PairingError):
                        async with asyncio.timeout(10):
                            while True:
                                await link.recv()  # its Abort, then the end
                finally:
                    await link.close()
            async with asyncio.timeout(10):
                while len(app.events) < limits.per_address:
                    await asyncio.sleep(0.01)
            try:
                on_george = await george.join(f"tcp:{host.address}", pin=host.pin,
                                              step_timeout=10)
            except PairingError as exc:
                raise AssertionError(f"George was refused: {exc}") from None
            async with on_george, await accepting as on_paul:
                assert on_paul.peer.name == "George"
            assert len(app.events) == limits.per_address
            app.go_on.set()
        finally:
            app.go_on.set()
            accepting.cancel()
            with contextlib.suppress(BaseException, LinkClosedError):
                await accepting
