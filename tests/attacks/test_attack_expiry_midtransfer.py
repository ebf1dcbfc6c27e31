"""Attack review atk21, finding 4 (low): a transfer under way when a guest's grant ended ran on.

A guest's grant was checked at each request and when the owner's answer came, never while a
file was sent: a guest that asked for a big file just before its grant ended was sent the whole
of it after the end (63 of 64 MiB in the review), and held its session, and its place among the
host's sessions, for as long as it made the transfer last (each chunk may take the idle time,
300 s).  Now the grant is checked again before each chunk: once it has ended, the host sends
``Refused`` (code 11, expired) in place of the next chunk and ends the service, as a request
after the end does, and the host closes the session.

Real code: a library host and guest over TCP on 127.0.0.1; the host's wall clock is moved past
the grant's end once the first chunk came (the grant is an hour: nothing here waits for it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

import pairkit
from pairkit.pairing.errors import RefusedError

from ..attack_harness import STEP
from ..known_device_harness import MovableWall, device, guest_served_by_pin, share_of

GRANT = 3600
SIZE = 64 * 1024 * 1024  # far more than the loopback's socket buffers and the link's queue hold
#: what may still arrive after the end: what the buffers on the way held when it came
IN_FLIGHT = 16 * 1024 * 1024


async def test_a_grant_that_ends_mid_transfer_stops_the_transfer(tmp_path: Path) -> None:
    share = share_of(tmp_path, {"big.bin": bytes(SIZE)})
    clock = MovableWall()
    paul = pairkit.Device(device(tmp_path, "Paul").keystore, clock=clock)
    async with guest_served_by_pin(paul, device(tmp_path, "George"), share,
                                   guest_seconds=GRANT) as g:
        held: list[int] = []  # what George holds after each chunk

        def progress(done: int, size: int) -> None:
            if not held:
                clock.ahead = GRANT + 1  # the first chunk came: George's hour is over
            held.append(done)

        dest = tmp_path / "big.bin"
        with pytest.raises(RefusedError, match="guest access has expired"):
            await g.session.fetch("big.bin", dest, progress=progress, timeout=STEP)
        after = held[-1] - held[0]
        assert after < IN_FLIGHT, f"{after} bytes came after the grant ended"
        # the host stopped there, and ended the service as a request after the end does
        stats = await asyncio.wait_for(g.serving, STEP)
        assert stats.expired and stats.files == 0 and stats.refused == 1
        assert stats.bytes_sent < IN_FLIGHT
        assert g.host._admission.sessions == 0  # its place is free
        # what came is kept for a resume, should the owner let George in again
        assert not dest.exists()
        assert (tmp_path / "big.bin.part").stat().st_size == held[-1]


async def test_control_a_transfer_within_the_grant_runs_to_its_end(tmp_path: Path) -> None:
    """The same transfer, the grant not over: the whole file, and the service goes on."""
    data = os.urandom(4 * 1024 * 1024)
    share = share_of(tmp_path, {"big.bin": data})
    clock = MovableWall()
    paul = pairkit.Device(device(tmp_path, "Paul").keystore, clock=clock)
    async with guest_served_by_pin(paul, device(tmp_path, "George"), share,
                                   guest_seconds=GRANT) as g:
        def progress(done: int, size: int) -> None:
            clock.ahead = GRANT - 60  # a minute before the end, at each chunk

        fetched = await g.session.fetch("big.bin", tmp_path / "got", progress=progress,
                                        timeout=STEP)
        assert fetched.sha256 == hashlib.sha256(data).hexdigest()
        assert (tmp_path / "got").read_bytes() == data
        assert not g.serving.done() and g.host._admission.sessions == 1
