"""Attack review atk21, finding 2 (low): every GetRequest hashed the whole file.

The host hashed the file it serves from its start for each GetRequest, before sending a byte,
even one that asked from the file's end and got no byte of it: 8 such requests of ~40 bytes
each, pipelined over one session, had the host read and hash 64 MiB of an 8 MiB file (on a
4 GiB file, about 3 s of a core each, in the executor every guest's open and listing wait in).
Now a file's digest is kept, keyed by the opened file's identity, size, modification and
change times, and one hash in flight is shared by whoever asks for the same file meanwhile; a
file changed less than :data:`~pairkit.files.DIGEST_SETTLE` seconds before its hash began is
hashed again at each request (its times may not move at the next change: racy timestamps).

Real code: a library host and a PIN guest over TCP on 127.0.0.1; the host's hashing passes are
counted, and its wall clock moved ahead so that a file just written looks settled (nothing here
waits or times anything).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import pairkit
import pairkit.files as files_module
from pairkit.pairing import wire
from pairkit.pairing.service import FileHeader, GetRequest

from ..attack_harness import STEP
from ..known_device_harness import (
    MovableWall,
    count_hash_passes,
    device,
    guest_served_by_pin,
    share_of,
)

SIZE = 4 * 1024 * 1024
ASKS = 8
#: the host's wall clock an hour ahead: every file written by the test looks settled
AN_HOUR = 3600.0


async def _headers(slink: Any, requests: list[GetRequest]) -> list[FileHeader]:
    """Send ``requests`` back to back (pipelined, as the attacker did), then read one header
    each; every request here asks from the file's end, so no Chunk comes."""
    for req in requests:
        await slink.send(req.encode())
    return [wire.decode(await slink.recv(STEP), FileHeader) for _ in requests]


def _served_an_hour_ahead(tmp_path: Path, share: Path, clock: MovableWall | None = None) -> Any:
    """Paul's library host serving ``share`` to George (a guest for two hours), its wall clock
    (``clock``, a :class:`MovableWall` by default) an hour ahead: every file the test wrote
    looks settled."""
    clock = clock or MovableWall()
    clock.ahead = AN_HOUR
    paul = pairkit.Device(device(tmp_path, "Paul").keystore, clock=clock)
    return guest_served_by_pin(paul, device(tmp_path, "George"), share,
                               guest_seconds=2 * int(AN_HOUR))


async def test_requests_that_carry_no_byte_do_not_each_hash_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = count_hash_passes(monkeypatch)
    data = os.urandom(SIZE)
    share = share_of(tmp_path, {"big.bin": data})
    async with _served_an_hour_ahead(tmp_path, share) as g:
        headers = await _headers(g.session._channel, [GetRequest("big.bin", SIZE)] * ASKS)
        assert all(h.offset == SIZE and h.size == SIZE for h in headers)
        # each header still carries the file's digest, of the bytes a fetch would get
        assert {h.sha256 for h in headers} == {hashlib.sha256(data).digest()}
        assert not g.serving.done()  # nothing refused: the service goes on
        # and a real fetch of the file is served and checked with the digest kept
        fetched = await g.session.fetch("big.bin", tmp_path / "got", timeout=STEP)
        assert (tmp_path / "got").read_bytes() == data
        assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert passes == [SIZE], (
        f"{ASKS} requests carrying no byte and one fetch made the host hash the "
        f"{SIZE >> 20} MiB file {len(passes)} times"
    )


async def test_a_file_rewritten_in_place_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, its modification time put back (as ``cp -p`` or ``touch -r`` do): its change
    time moved, so the digest kept is not used, and the new bytes arrive and check."""
    passes = count_hash_passes(monkeypatch)
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    share = share_of(tmp_path, {"doc.bin": old})
    async with _served_an_hour_ahead(tmp_path, share) as g:
        await g.session.fetch("doc.bin", tmp_path / "one", timeout=STEP)
        assert (tmp_path / "one").read_bytes() == old
        path = share / "doc.bin"
        before = path.stat()
        with open(path, "r+b") as fh:  # rewritten in place: same inode, same size
            fh.write(new)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino, before.st_size, before.st_mtime_ns)
        fetched = await g.session.fetch("doc.bin", tmp_path / "two", timeout=STEP)
        assert (tmp_path / "two").read_bytes() == new
        assert fetched.sha256 == hashlib.sha256(new).hexdigest()
    assert passes == [SIZE, SIZE]


class _StoppedWall(MovableWall):
    """The host's wall clock stopped at ``at`` (seconds)."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def wall(self) -> float:
        return self.at


async def test_a_file_changed_just_before_its_hash_is_hashed_at_each_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose times are within DIGEST_SETTLE of the hash's start is not kept: a change
    in the same tick of the file system's clock would leave its times as they were."""
    passes = count_hash_passes(monkeypatch)
    share = share_of(tmp_path, {"new.bin": os.urandom(SIZE)})
    changed = (share / "new.bin").stat().st_ctime_ns / 1e9
    paul = pairkit.Device(device(tmp_path, "Paul").keystore, clock=_StoppedWall(changed))
    async with guest_served_by_pin(paul, device(tmp_path, "George"), share) as g:
        await _headers(g.session._channel, [GetRequest("new.bin", SIZE)] * 3)
    assert passes == [SIZE] * 3


async def test_requests_for_a_file_at_once_share_one_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two opens of one file (two guests' requests) while its hash is under way: one pass,
    both get its digest.  Driven directly: the first hash is held until the second asks."""
    passes = count_hash_passes(monkeypatch)
    counted = files_module._sha256_open
    started, go = threading.Event(), threading.Event()

    def held(fh: BinaryIO, size: int | None, name: str) -> bytes:
        started.set()
        assert go.wait(STEP)
        return counted(fh, size, name)

    monkeypatch.setattr(files_module, "_sha256_open", held)
    data = os.urandom(SIZE)
    share = share_of(tmp_path, {"big.bin": data})
    path = files_module.resolve_shared(share, "big.bin")
    digests = files_module._Digests()
    clock = MovableWall()
    clock.ahead = AN_HOUR

    async def digest_of(fh: BinaryIO) -> bytes:
        return await digests.digest(fh, os.fstat(fh.fileno()), "big.bin", wall=clock.wall,
                                    monotonic=clock.monotonic)

    with files_module.open_checked(share, path, "big.bin") as one, \
            files_module.open_checked(share, path, "big.bin") as two:
        first = asyncio.ensure_future(digest_of(one))
        assert await asyncio.to_thread(started.wait, STEP)  # its hash is under way
        second = asyncio.ensure_future(digest_of(two))
        await asyncio.sleep(0)  # the second request's first step: it finds the hash
        go.set()
        got = await asyncio.wait_for(asyncio.gather(first, second), STEP)
    assert got == [hashlib.sha256(data).digest()] * 2
    assert passes == [SIZE]


class _Later(MovableWall):
    """The host's clocks, the monotonic one moved ``later`` seconds on demand too."""

    def __init__(self) -> None:
        super().__init__()
        self.later = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.later


async def test_a_digest_is_kept_for_digest_ttl_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that moved none of the file's times leaves a stale digest: it goes within
    DIGEST_TTL (the guests' fetches of that file fail their SHA-256 check until then)."""
    passes = count_hash_passes(monkeypatch)
    share = share_of(tmp_path, {"big.bin": os.urandom(SIZE)})
    clock = _Later()
    async with _served_an_hour_ahead(tmp_path, share, clock) as g:
        ask = [GetRequest("big.bin", SIZE)]
        await _headers(g.session._channel, ask * 2)
        assert passes == [SIZE]
        clock.later = files_module.DIGEST_TTL - 1
        await _headers(g.session._channel, ask)
        assert passes == [SIZE]
        clock.later = files_module.DIGEST_TTL + 1
        await _headers(g.session._channel, ask * 2)
        assert passes == [SIZE] * 2


async def test_the_digests_kept_are_bounded_in_number_the_oldest_going_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Driven directly, with room for two files' digests."""
    passes = count_hash_passes(monkeypatch)
    monkeypatch.setattr(files_module, "DIGEST_ENTRIES", 2)
    share = share_of(tmp_path, {n: n.encode() * 1000 for n in ("a", "b", "c")})
    digests = files_module._Digests()
    clock = MovableWall()
    clock.ahead = AN_HOUR

    async def digest_of(name: str) -> bytes:
        path = files_module.resolve_shared(share, name)
        with files_module.open_checked(share, path, name) as fh:
            return await digests.digest(fh, os.fstat(fh.fileno()), name, wall=clock.wall,
                                        monotonic=clock.monotonic)

    hashed = []
    for name in ("a", "b", "c", "c", "a", "c"):  # c pushed a out; a back pushed b out
        assert await digest_of(name) == hashlib.sha256(name.encode() * 1000).digest()
        hashed.append(len(passes))
    assert hashed == [1, 2, 3, 3, 4, 4]
    assert await digest_of("b") == hashlib.sha256(b"b" * 1000).digest()
    assert len(passes) == 5


async def test_a_file_dated_in_the_future_is_kept_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A modification time in the future (an archive's, a skewed clock's) does not make a
    file look changed for ever: when it changed is its change time, which every write sets."""
    passes = count_hash_passes(monkeypatch)
    share = share_of(tmp_path, {"from.tar": os.urandom(SIZE)})
    a_day = 86400 * 10**9
    st = (share / "from.tar").stat()
    os.utime(share / "from.tar", ns=(st.st_atime_ns + a_day, st.st_mtime_ns + a_day))
    # the change time an hour old, the modification time a day ahead
    async with _served_an_hour_ahead(tmp_path, share) as g:
        await _headers(g.session._channel, [GetRequest("from.tar", SIZE)] * 3)
    assert passes == [SIZE]
