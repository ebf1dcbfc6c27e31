"""Transfers always finish or say why (issue 17, finding 8; docs/protocol.md §13), over a real
secure link on the loopback transport: the host's file shrinks before a resumed fetch, grows,
shrinks or changes while it is sent."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pairkit.files import get_file, say_bye, serve_guest
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import AuthenticationError, RefusedError
from pairkit.pairing.methods import PeerInfo, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import AllowRequest, GrantPolicy, Scope
from pairkit.securelink import SecureLink
from pairkit.transports.loopback import loopback_pair

K1, K2 = bytes(range(32)), bytes(range(1, 33))
SIZE = 2_000_000  #: far more than the link buffers, so the host is still sending


async def allow(q: AllowRequest) -> Scope:
    return Scope.SESSION


async def serving(share: Path) -> tuple[SecureLink, asyncio.Task[object]]:
    a, b = loopback_pair(mtu=244)
    peer = PeerInfo(b"i" * 16, "peer", b"s" * 32, b"g" * 32, True)
    sa = Session(Method.PIN, True, peer, send_key=K1, recv_key=K2, fingerprint="x")
    sb = Session(Method.PIN, False, peer, send_key=K2, recv_key=K1, fingerprint="x")
    guest, host = SecureLink(a, sa, timeout=5), SecureLink(b, sb, timeout=5)
    task = asyncio.create_task(serve_guest(host, peer_name="George", policy=GrantPolicy(
        Role.MEMBER), share=share, ask=allow))
    return guest, task  # type: ignore[return-value]


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "f.bin").write_bytes(os.urandom(SIZE))
    return root


def once(action: Callable[[], None]) -> Callable[[int, int], None]:
    """A progress callback that runs ``action`` after the first chunk arrived."""
    done: list[bool] = []

    def progress(got: int, total: int) -> None:
        if not done:
            done.append(True)
            action()

    return progress


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_part_longer_than_the_shrunk_source_restarts_from_zero(
    share: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(os.urandom(SIZE + 1000))  # from a longer version
    guest, task = await serving(share)
    got = await asyncio.wait_for(get_file(guest, "f.bin", dest), 20)
    assert got.restarted_from == SIZE + 1000 and got.resumed_from == 0
    assert dest.read_bytes() == (share / "f.bin").read_bytes()
    assert not dest.with_name("f.bin.part").exists()
    await say_bye(guest)
    await asyncio.wait_for(task, 5)


async def test_a_file_growing_while_sent_arrives_as_announced(share: Path, tmp_path: Path) -> None:
    source = share / "f.bin"
    before = source.read_bytes()

    def grow() -> None:
        with open(source, "ab") as fh:
            fh.write(os.urandom(100_000))

    guest, task = await serving(share)
    got = await asyncio.wait_for(get_file(guest, "f.bin", tmp_path / "f.bin",
                                          progress=once(grow)), 20)
    assert got.size == SIZE and (tmp_path / "f.bin").read_bytes() == before
    assert got.sha256 == digest(before)
    await say_bye(guest)
    await asyncio.wait_for(task, 5)


async def test_a_file_shrinking_while_sent_is_reported_as_changed(
    share: Path, tmp_path: Path
) -> None:
    source = share / "f.bin"

    def shrink() -> None:
        os.truncate(source, SIZE // 4)

    guest, task = await serving(share)
    with pytest.raises(RefusedError, match="changed on the host while it was sent"):
        await asyncio.wait_for(get_file(guest, "f.bin", tmp_path / "f.bin",
                                        progress=once(shrink)), 20)
    # The session goes on: the next fetch gets the file as it is now (from the start, since
    # what was kept is longer than the file).
    got = await asyncio.wait_for(get_file(guest, "f.bin", tmp_path / "f.bin"), 20)
    assert (tmp_path / "f.bin").read_bytes() == source.read_bytes() and got.size == SIZE // 4
    await say_bye(guest)
    await asyncio.wait_for(task, 5)


async def test_a_file_rewritten_while_sent_is_reported_as_changed(
    share: Path, tmp_path: Path
) -> None:
    source = share / "f.bin"

    def rewrite() -> None:
        source.write_bytes(os.urandom(SIZE))

    guest, task = await serving(share)
    with pytest.raises(AuthenticationError, match="changed on the host while it was sent"):
        await asyncio.wait_for(get_file(guest, "f.bin", tmp_path / "f.bin",
                                        progress=once(rewrite)), 20)
    assert not (tmp_path / "f.bin.part").exists()
    got = await asyncio.wait_for(get_file(guest, "f.bin", tmp_path / "f.bin"), 20)
    assert got.sha256 == digest(source.read_bytes())
    await say_bye(guest)
    await asyncio.wait_for(task, 5)
