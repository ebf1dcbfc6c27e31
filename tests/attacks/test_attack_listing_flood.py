"""Attack review atk20c, finding 5 (low): a listing flood walked the shared folder each time.

Every ListRequest of a guest the owner need not ask (a member, or a guest granted listings for
the session) had the host walk the whole shared folder (every entry resolved and stat'ed, in a
thread): a member sending ListRequests back to back over a few sessions kept the host's disk
and a core busy, and an honest guest's resume waited.  Now a folder's listing is kept for
:data:`~pairkit.files.LISTING_TTL` seconds (2) and served again to whoever asks meanwhile,
any session: the folder is walked at most once per window, and a file added is listed at the
latest one window later.

Real code: a library host and guests over TCP on 127.0.0.1; the walks are counted, and the
host's clock is moved past the window (nothing here waits for it).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import pairkit
import pairkit.files as files_module
from pairkit.delegate import Agree

from ..attack_harness import STEP
from ..known_device_harness import accepting, device


class _MovableClock:
    """The machine's clocks, both moved ``ahead`` seconds on demand."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def wall(self) -> float:
        return time.time() + self.ahead


async def _session(host: pairkit.Host, guest: pairkit.Device, share: Path) -> Any:
    """``guest`` joins by PIN as a member (never asked about); the host serves it ``share``."""
    async with accepting(host) as accepted:
        session = await guest.join(f"tcp:{host.address.removeprefix('tcp:')}", pin=host.pin,
                                   wants="member", step_timeout=STEP)
        at_host = await accepted
    return session, asyncio.ensure_future(at_host.serve_files(share))


async def test_listings_within_the_window_walk_the_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[Path] = []
    walk = files_module.list_shared

    def counted(root: Path) -> Any:
        walks.append(root)
        return walk(root)

    monkeypatch.setattr(files_module, "list_shared", counted)
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_text("a")
    clock = _MovableClock()
    paul = pairkit.Device(device(tmp_path, "Paul").keystore, clock=clock)
    george, ringo = device(tmp_path, "George"), device(tmp_path, "Ringo")
    async with paul.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                         delegate=Agree(members=True), step_timeout=STEP) as host:
        g, g_serving = await _session(host, george, share)
        r, r_serving = await _session(host, ringo, share)
        try:
            assert [f.name for f in await g.list_files(timeout=STEP)] == ["a.txt"]
            assert len(walks) == 1
            for _ in range(5):  # a flood, from two sessions: the folder is not walked again
                await g.list_files(timeout=STEP)
                await r.list_files(timeout=STEP)
            assert len(walks) == 1

            (share / "b.txt").write_text("b")
            clock.ahead += files_module.LISTING_TTL + 0.5  # the window has passed
            assert [f.name for f in await r.list_files(timeout=STEP)] == ["a.txt", "b.txt"]
            assert len(walks) == 2
            assert [f.name for f in await g.list_files(timeout=STEP)] == ["a.txt", "b.txt"]
            assert len(walks) == 2
        finally:
            for serving in (g_serving, r_serving):
                serving.cancel()
            await g.close()
            await r.close()


async def test_two_shared_folders_are_listed_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing kept is the folder's own: another host's folder is walked for itself."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "x.txt").write_text("x")
    (two / "y.txt").write_text("y")
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                         delegate=Agree(members=True), step_timeout=STEP) as host:
        g1, s1 = await _session(host, george, one)
        g2, s2 = await _session(host, george, two)
        try:
            assert [f.name for f in await g1.list_files(timeout=STEP)] == ["x.txt"]
            assert [f.name for f in await g2.list_files(timeout=STEP)] == ["y.txt"]
        finally:
            for serving in (s1, s2):
                serving.cancel()
            await g1.close()
            await g2.close()
