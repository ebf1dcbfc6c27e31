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
import threading
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


def test_a_read_ending_on_one_event_loop_leaves_another_loops_read_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedder with two hosts in one process, each on its own event loop in its own
    thread: each loop shares only its own read of a folder.  Loop A's read ending (here
    failing) must not forget loop B's read still under way, or B's next request walks the
    folder a third time.  Driven directly; the walks are held until each step is reached."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_text("a")
    real = files_module.list_shared
    walks: list[int] = []
    a_walking, a_go = threading.Event(), threading.Event()
    b_walking, b_go, a_done = threading.Event(), threading.Event(), threading.Event()

    def held(root: Path) -> Any:
        walks.append(len(walks))
        if len(walks) == 1:  # loop A's walk: held, then it fails
            a_walking.set()
            assert a_go.wait(STEP)
            raise OSError("the disk went away")
        if len(walks) == 2:  # loop B's walk: held until B asks again
            b_walking.set()
            assert b_go.wait(STEP)
        return real(root)

    monkeypatch.setattr(files_module, "list_shared", held)
    listings = files_module._Listings()
    failed: list[BaseException] = []
    got: list[list[bytes]] = []

    async def on_a() -> None:
        try:
            await listings.encoded(share, time.monotonic)
        except OSError as exc:
            failed.append(exc)

    async def on_b() -> None:
        first = asyncio.ensure_future(listings.encoded(share, time.monotonic))
        assert await asyncio.to_thread(b_walking.wait, STEP)
        assert await asyncio.to_thread(a_done.wait, STEP)  # A's read has ended
        second = asyncio.ensure_future(listings.encoded(share, time.monotonic))
        await asyncio.sleep(0)  # the second request's first step: it finds B's read
        b_go.set()
        got.append(list(await asyncio.gather(first, second)))

    a = threading.Thread(target=asyncio.run, args=(on_a(),))
    b = threading.Thread(target=asyncio.run, args=(on_b(),))
    a.start()
    assert a_walking.wait(STEP)
    b.start()
    assert b_walking.wait(STEP)
    a_go.set()
    a.join(STEP)
    a_done.set()
    b.join(STEP)
    assert not a.is_alive() and not b.is_alive()
    assert [type(e) for e in failed] == [OSError]
    assert len(got) == 1 and got[0][0] == got[0][1] and b"a.txt" in got[0][0]
    assert len(walks) == 2, f"loop B's second request walked the folder again ({len(walks)})"
