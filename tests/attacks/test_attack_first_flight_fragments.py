"""The first flight against fragments (runtime/admission.py ``Admitted``; docs/security.md, "A
pairing host's pending links"; attack review atk14a, properties checked and found holding).

Since session 14 the first flight lasts until the peer's first *whole* message: the admitted
link reads the LAST flag of each fragment (pairing/framing.py) before the host's pipe has
checked it.  Two ways a stranger could try to use that: keep the first flight open by sending
fragment after fragment of a message that never ends (each one is progress to the
admission), or end it with a fragment that carries LAST but completes nothing.  Played over
TCP on 127.0.0.1 and the in-process loopback against the host's pairing driven as production
drives it (``tests/admission_harness.py``)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from pairkit.admission import AdmissionLimits
from pairkit.pairing.errors import DecodeError, PairingError, PairingTimeout
from pairkit.pairing.framing import FLAG_FIRST, FLAG_LAST, fragment
from tests.admission_harness import DRIVEN_TRANSPORTS, driven_host


@pytest.mark.parametrize("transport", DRIVEN_TRANSPORTS)
async def test_a_stranger_trickling_a_message_that_never_ends_is_dropped_at_the_first_flight(
    transport: str,
) -> None:
    """The stranger sends the fragments of a 4,000-byte message one every 0.05 s, never the
    last, for longer than the first flight (0.5 s).  Each fragment arrives in time for the one
    before, but the first flight counts from the link's admission, not from the last fragment:
    the host's pairing ends with the first flight's timeout ('no whole message') while the
    stranger is still sending, well before the pairing's own step (30 s)."""
    limits = AdmissionLimits(first_flight=0.5)
    async with driven_host(limits, transport) as host:
        pieces = fragment(bytes(4000), 64)[:-1]  # never the last
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            with contextlib.suppress(PairingError, OSError):
                for piece in pieces:
                    await host.stranger.send(piece)
                    sent += 1
                    await asyncio.sleep(0.05)

        trickling = asyncio.ensure_future(trickle())
        try:
            error = await asyncio.wait_for(host.ended.get(), 10 * limits.first_flight)
        finally:
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickling
        assert isinstance(error, PairingTimeout), repr(error)
        assert "no whole message" in str(error)
        # (the scenario is the one claimed: fragments kept coming, and it had more to send)
        assert 3 < sent < len(pieces)


@pytest.mark.parametrize("transport", DRIVEN_TRANSPORTS)
@pytest.mark.parametrize(
    "piece",
    [
        bytes([FLAG_LAST]) + b"junk",  # LAST with no start
        bytes([FLAG_FIRST | FLAG_LAST, 200]) + bytes(10),  # LAST before the announced length
        bytes([FLAG_FIRST | FLAG_LAST | 0x01, 3]) + bytes(3),  # a reserved bit set
    ],
    ids=["last-without-first", "last-too-short", "reserved-bit"],
)
async def test_a_fragment_marked_last_that_completes_nothing_ends_the_stranger_at_once(
    transport: str, piece: bytes
) -> None:
    """The stranger's one fragment carries LAST but makes no message.  The admitted link takes
    it for the end of the first flight before the pipe reads it; the pipe must then refuse it
    (a decode error that ends its pairing), so the stranger is not kept for the pairing's step
    (30 s) as one whose first message came."""
    limits = AdmissionLimits(first_flight=5.0)
    async with driven_host(limits, transport) as host:
        await host.stranger.send(piece)
        error = await asyncio.wait_for(host.ended.get(), 3.0)  # under one first flight
        assert isinstance(error, DecodeError), repr(error)
