"""Attack review atk20c, finding 3 (low): a guest whose grant ended kept its session.

After a guest's grant ended, the host's file service answered each of its requests with
``Refused`` ("expired") and waited the idle time (300 s) for the next: a guest that kept asking
kept its session, and its place among the host's paired sessions, for as long as it liked.
Now the first request after the end is refused with that reason and the service ends: the host
closes the session and its place is free.

Real code: a library host and guest over TCP on 127.0.0.1; the host's wall clock is moved past
the grant's end (the grant is an hour: nothing here waits for it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import pairkit
from pairkit.pairing.errors import PairingError, RefusedError

from ..attack_harness import STEP
from ..known_device_harness import MovableWall, device, guest_served_by_pin, share_of

GRANT = 3600


async def test_a_guest_whose_grant_ended_is_disconnected_and_its_place_freed(
    tmp_path: Path,
) -> None:
    clock = MovableWall()
    paul = pairkit.Device(device(tmp_path, "Paul").keystore, clock=clock)
    share = share_of(tmp_path, {"a.txt": b"hello"})
    async with guest_served_by_pin(paul, device(tmp_path, "George"), share,
                                   guest_seconds=GRANT) as g:
        names = [f.name for f in await g.session.list_files(timeout=STEP)]
        assert names == ["a.txt"]  # within the grant: served
        assert g.host._admission.sessions == 1

        clock.ahead = GRANT + 1  # George's hour is over
        with pytest.raises(RefusedError, match="guest access has expired"):
            await g.session.list_files(timeout=STEP)
        # the service ends at once (it waited 300 s for the next request before)
        stats = await asyncio.wait_for(g.serving, STEP)
        assert stats.refused == 1 and stats.listings == 1
        assert g.host._admission.sessions == 0  # its place is free
        # and George's session is over: a next request finds the link closed
        with pytest.raises(PairingError):
            await g.session.list_files(timeout=STEP)


async def test_control_a_guest_within_its_grant_keeps_its_session_after_a_refusal(
    tmp_path: Path,
) -> None:
    """A request refused for another reason (no such file) does not end the service."""
    share = share_of(tmp_path, {"a.txt": b"hello"})
    async with guest_served_by_pin(device(tmp_path, "Paul"), device(tmp_path, "George"), share,
                                   guest_seconds=GRANT) as g:
        with pytest.raises(PairingError):
            await g.session.fetch("missing.txt", tmp_path / "got", timeout=STEP)
        names = [f.name for f in await g.session.list_files(timeout=STEP)]
        assert names == ["a.txt"]
        assert not g.serving.done() and g.host._admission.sessions == 1
