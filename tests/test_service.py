"""File service over a real secure link on the loopback transport (cli/service.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from pairkit.files import get_file, list_files, resolve_shared, say_bye, serve_guest
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import AccessDeniedError, LinkClosedError, NotFoundError, RefusedError
from pairkit.pairing.methods import PeerInfo, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import AllowRequest, GrantPolicy, Scope
from pairkit.securelink import SecureLink
from pairkit.transports.loopback import loopback_pair

K1, K2 = bytes(range(32)), bytes(range(1, 33))


def _sessions() -> tuple[Session, Session]:
    peer = PeerInfo(b"i" * 16, "peer", b"s" * 32, b"g" * 32, True)
    a = Session(Method.PIN, True, peer, send_key=K1, recv_key=K2, fingerprint="x")
    b = Session(Method.PIN, False, peer, send_key=K2, recv_key=K1, fingerprint="x")
    return a, b


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    root.mkdir()
    (root / "holiday.mp4").write_bytes(os.urandom(300_000))
    (root / "birthday.mp4").write_bytes(os.urandom(70_000))
    (tmp_path / "secret.txt").write_text("not shared")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


class Owner:
    """The host owner's scripted answers; records every prompt."""

    def __init__(self, answer: Scope = Scope.SESSION) -> None:
        self.answer = answer
        self.asked: list[AllowRequest] = []

    async def __call__(self, q: AllowRequest) -> Scope:
        self.asked.append(q)
        return self.answer


async def _serve(share: Path, policy: GrantPolicy, owner: Owner, mtu: int = 244, **kw):
    a, b = loopback_pair(mtu=mtu)
    sa, sb = _sessions()
    guest, host = SecureLink(a, sa, timeout=5), SecureLink(b, sb, timeout=5)
    task = asyncio.create_task(
        serve_guest(host, peer_name="George", policy=policy, share=share, ask=owner, **kw)
    )
    return guest, task


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_guest_lists_and_fetches_two_files_with_one_prompt_each(
    share: Path, tmp_path: Path
) -> None:
    owner = Owner(Scope.SESSION)
    guest, task = await _serve(share, GrantPolicy(Role.GUEST, expires=None), owner)
    files = await list_files(guest)
    assert [f.name for f in files] == ["birthday.mp4", "holiday.mp4"]  # the link is left out
    assert {f.type for f in files} == {"video/mp4"}
    out = tmp_path / "out"
    out.mkdir()
    for name in ("holiday.mp4", "birthday.mp4"):
        fetched = await get_file(guest, name, out / name)
        assert fetched.sha256 == sha(share / name)
        assert sha(out / name) == sha(share / name)
    await say_bye(guest)
    stats = await asyncio.wait_for(task, 5)
    # one prompt for the listing, one for the first file; the session grant covers the second
    assert [q.what for q in owner.asked] == ["list", "get"]
    assert stats.files == 2 and stats.bytes_sent == 370_000


async def test_allow_once_prompts_for_every_file(share: Path, tmp_path: Path) -> None:
    owner = Owner(Scope.ONCE)
    guest, task = await _serve(share, GrantPolicy(Role.GUEST), owner)
    for name in ("holiday.mp4", "birthday.mp4"):
        await get_file(guest, name, tmp_path / name)
    await say_bye(guest)
    await task
    assert len(owner.asked) == 2


async def test_a_member_is_never_prompted(share: Path, tmp_path: Path) -> None:
    owner = Owner(Scope.REFUSE)
    guest, task = await _serve(share, GrantPolicy(Role.MEMBER), owner)
    await list_files(guest)
    await get_file(guest, "birthday.mp4", tmp_path / "b.mp4")
    await say_bye(guest)
    await task
    assert owner.asked == []


async def test_a_refusal_is_reported_and_the_session_goes_on(share: Path) -> None:
    owner = Owner(Scope.REFUSE)
    guest, task = await _serve(share, GrantPolicy(Role.GUEST), owner)
    with pytest.raises(RefusedError, match="refused"):
        await list_files(guest)
    owner.answer = Scope.ONCE
    assert len(await list_files(guest)) == 2
    await say_bye(guest)
    await task


async def test_the_grant_expires_with_injected_time(share: Path, tmp_path: Path) -> None:
    clock = {"now": 1000.0}
    owner = Owner(Scope.SESSION)
    guest, task = await _serve(
        share, GrantPolicy(Role.GUEST, expires=1060.0), owner, wall_clock=lambda: clock["now"]
    )
    await get_file(guest, "birthday.mp4", tmp_path / "b.mp4")
    clock["now"] = 1061.0  # a minute later, no sleeping
    with pytest.raises(RefusedError, match="expired"):
        await get_file(guest, "holiday.mp4", tmp_path / "h.mp4")
    await say_bye(guest)
    await task


@pytest.mark.parametrize(
    "name, why",
    [
        ("../secret.txt", "leads out"),
        ("sub/../../secret.txt", "leads out"),
        ("/etc/passwd", "absolute"),
        ("escape.txt", "link leading out"),
        ("", "malformed"),
    ],
)
async def test_path_traversal_is_refused_and_says_so(
    share: Path, tmp_path: Path, name: str, why: str
) -> None:
    with pytest.raises(AccessDeniedError, match=why):
        resolve_shared(share, name)
    owner = Owner(Scope.SESSION)
    guest, task = await _serve(share, GrantPolicy(Role.GUEST), owner)
    with pytest.raises(RefusedError, match=why):
        await get_file(guest, name, tmp_path / "x")
    assert owner.asked == []  # refused before anyone is asked
    await say_bye(guest)
    await task


def test_a_missing_file_is_not_found(share: Path) -> None:
    with pytest.raises(NotFoundError):
        resolve_shared(share, "nope.mp4")


async def test_a_transfer_cut_by_a_dropped_link_resumes_to_a_matching_hash(
    share: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "holiday.mp4"
    owner = Owner(Scope.SESSION)
    guest, task = await _serve(share, GrantPolicy(Role.GUEST), owner)
    cut = {}

    def progress(done: int, total: int) -> None:
        if done > total // 3 and "at" not in cut:
            cut["at"] = done
            task.cancel()  # the host vanishes mid-transfer ...
            guest.link._close()  # ... and the link drops

    with pytest.raises(LinkClosedError):
        await get_file(guest, "holiday.mp4", dest, progress=progress)
    part = dest.with_name("holiday.mp4.part")
    assert part.exists() and 0 < part.stat().st_size < 300_000
    assert not dest.exists()
    # a new link (the guest reconnected): the transfer goes on from the verified part
    guest2, task2 = await _serve(share, GrantPolicy(Role.GUEST), Owner(Scope.SESSION))
    fetched = await get_file(guest2, "holiday.mp4", dest)
    assert fetched.resumed_from == part_size_or(cut["at"], fetched.resumed_from)
    assert fetched.resumed_from > 0
    assert sha(dest) == sha(share / "holiday.mp4")
    assert not part.exists()
    await say_bye(guest2)
    await task2


def part_size_or(expected: int, got: int) -> int:
    # the guest writes each verified chunk before asking for the next: at most the cut point
    assert got <= expected
    return got


async def test_a_corrupt_partial_file_is_detected_and_discarded(
    share: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "birthday.mp4"
    dest.with_name("birthday.mp4.part").write_bytes(b"\x00" * 1000)  # not the file's start
    guest, task = await _serve(share, GrantPolicy(Role.MEMBER), Owner())
    with pytest.raises(Exception, match="SHA-256 mismatch"):
        await get_file(guest, "birthday.mp4", dest)
    assert not dest.exists() and not dest.with_name("birthday.mp4.part").exists()
    await say_bye(guest)
    await task
