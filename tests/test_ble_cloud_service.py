"""Personal cloud over real BLE: join refused or granted, prompts, expiry, members, resume, names.

The host runs :func:`cli.flows.run_host` with its default service loop
(:func:`pairkit.files.serve_guest`) on a bumble virtual controller; guests join with
:func:`cli.flows.run_join` and use :func:`pairkit.files.list_files` / :func:`pairkit.files.get_file`
on the secure link, as ``pairkit ls`` and ``pairkit get`` do.  The owner's answers are scripted
and every question is recorded, so each test says exactly how many times Paul was asked.

The grant-expiry test runs at the ``serve_guest`` level over a real BLE :class:`SecureLink`,
because the flows do not let a test inject the wall clock (``run_host`` calls ``serve_guest``
with ``time.time``): there the clock is injected and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pairkit.driver import drive
from pairkit.files import Fetched, get_file, list_files, serve_guest
from pairkit.keystore import Keystore
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import ErrorCode, LinkClosedError, RefusedError, RemoteError
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
)
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import FileEntry, GrantPolicy, Membership, Scope
from pairkit.presence import discover
from pairkit.securelink import SecureLink, confirm

from .ble_harness import (
    PIN,
    Person,
    World,
    ble_pair,
    eventually,
    reopen,
)

FILES = {"holiday.mp4": 300_000, "birthday.mp4": 120_000}


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """Paul's videos (reproducible bytes), and a secret next to the shared folder."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, (name, size) in enumerate(FILES.items()):
        (folder / name).write_bytes(os.urandom(size) if i else _pattern(size))
    (tmp_path / "secret.txt").write_text("Paul's bank PIN")
    return folder


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


def _pattern(size: int) -> bytes:
    block = hashlib.sha256(b"holiday").digest() * 64
    return (block * (size // len(block) + 1))[:size]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def requests(person: Person) -> list[tuple[str, str | None]]:
    """The owner's answers to service requests (``allow_request`` calls), in order."""
    return [(kind, name) for kind, name in person.questions if kind in ("list", "get")]


# -- join -----------------------------------------------------------------------------------------


async def test_a_stranger_refused_by_the_owner_gets_a_clear_error_and_nothing_is_stored(
    world: World, paul: Keystore, george: Keystore, share: Path
) -> None:
    host = await world.start_host(paul, person=Person(join=None), share=share)
    guest = await world.device()
    with pytest.raises(RemoteError, match="the owner refused the request to join") as caught:
        await world.join(george, guest, host)
    assert caught.value.code == ErrorCode.REFUSED
    assert host.person.questions == [("join", "George's phone")]
    assert host.results == []
    assert reopen(george).peers() == () and reopen(paul).peers() == ()
    assert [c.role for c in reopen(george).clouds()] == ["owner"]  # no cloud secret either
    # The host is still there: when Paul changes his mind, George gets in.
    host.person.join = Grant(Role.GUEST, 600)
    _session, membership = await world.join(george, guest, host)
    assert membership.role is Role.GUEST and membership.expires is not None
    assert [p.name for p in reopen(george).peers()] == ["Paul's phone"]


# -- service prompts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "asked"),
    [
        (Scope.SESSION, [("list", None), ("get", "birthday.mp4")]),
        (Scope.ONCE, [("list", None), ("get", "birthday.mp4"), ("get", "holiday.mp4")]),
    ],
)
async def test_a_guest_lists_and_fetches_two_files(
    world: World, paul: Keystore, george: Keystore, share: Path, downloads: Path,
    scope: Scope, asked: list[tuple[str, str | None]],
) -> None:
    host = await world.start_host(paul, person=Person(scope=scope), share=share)
    guest = await world.device()
    box: dict[str, Any] = {}

    async def use(slink: Any, _session: Any, _m: Membership) -> None:
        box["files"] = await list_files(slink, timeout=5)
        box["fetched"] = [
            await get_file(slink, f.name, downloads / f.name, timeout=5)
            for f in box["files"]
        ]

    await world.join(george, guest, host, on_session=use)
    assert box["files"] == [
        FileEntry("birthday.mp4", FILES["birthday.mp4"], "video/mp4"),
        FileEntry("holiday.mp4", FILES["holiday.mp4"], "video/mp4"),
    ]
    for got in box["fetched"]:
        assert isinstance(got, Fetched) and got.resumed_from == 0
        assert got.sha256 == sha(share / got.name) == sha(downloads / got.name)
    # One join question, then one per kind of request for the session (or one per request).
    assert host.person.questions[0] == ("join", "George's phone")
    assert requests(host.person) == asked


async def test_a_request_the_owner_refuses_is_refused_with_a_reason(
    world: World, paul: Keystore, george: Keystore, share: Path, downloads: Path
) -> None:
    host = await world.start_host(paul, person=Person(scope=Scope.REFUSE), share=share)
    guest = await world.device()
    box: dict[str, Any] = {}

    async def use(slink: Any, _session: Any, _m: Membership) -> None:
        for action in (lambda: list_files(slink, timeout=5),
                       lambda: get_file(slink, "holiday.mp4", downloads / "h.mp4", timeout=5)):
            try:
                await action()
            except RefusedError as exc:
                box.setdefault("errors", []).append(str(exc))

    await world.join(george, guest, host, on_session=use)
    assert box["errors"] == [
        "the host refused the listing: the owner refused the request",
        "the host refused 'holiday.mp4': the owner refused the request",
    ]
    assert requests(host.person) == [("list", None), ("get", "holiday.mp4")]
    assert list(downloads.iterdir()) == []


async def test_a_guest_grant_expires_at_its_time(
    world: World, share: Path, downloads: Path
) -> None:
    """At the serve_guest level, over a real BLE SecureLink, with the wall clock injected."""
    _h, _g, guest_link, host_link = await ble_pair(world)
    loop = asyncio.get_running_loop()
    state = HostState()
    state.set_pin(PIN)
    guest = GuestPairing(PairingConfig(step_timeout=5), LocalIdentity.generate("George"),
                         method=Method.PIN, pin=PIN)
    host = HostPairing(PairingConfig(step_timeout=5), LocalIdentity.generate("Paul"), state)
    host.start(loop.time())
    guest.start(loop.time())
    await asyncio.wait_for(asyncio.gather(drive(guest, guest_link), drive(host, host_link)), 10)
    assert guest.session is not None and host.session is not None
    guest_slink = SecureLink(guest_link, guest.session, timeout=5)
    host_slink = SecureLink(host_link, host.session, timeout=5)
    await asyncio.gather(confirm(guest_slink), confirm(host_slink))

    clock = [9_000.0]
    paul = Person(scope=Scope.SESSION)
    serving = asyncio.ensure_future(serve_guest(
        host_slink, peer_name="George", policy=GrantPolicy(Role.GUEST, expires=10_000.0),
        share=share, ask=paul.allow_request, wall_clock=lambda: clock[0], idle=10,
    ))
    try:
        assert len(await list_files(guest_slink, timeout=5)) == 2
        clock[0] = 9_999.0  # one second left
        got = await get_file(guest_slink, "holiday.mp4", downloads / "holiday.mp4", timeout=5)
        assert got.sha256 == sha(share / "holiday.mp4")
        clock[0] = 10_000.0  # the grant's end
        with pytest.raises(RefusedError, match="your guest access has expired"):
            await get_file(guest_slink, "birthday.mp4", downloads / "birthday.mp4", timeout=5)
        assert not (downloads / "birthday.mp4").exists()
        assert not (downloads / "birthday.mp4.part").exists()
        # the service ends with that refusal; its caller closes the session (atk20c finding 3)
        stats = await asyncio.wait_for(serving, 5)
    finally:
        serving.cancel()
    assert requests(paul) == [("list", None), ("get", "holiday.mp4")]  # never after expiry
    assert (stats.listings, stats.files, stats.refused, stats.expired) == (1, 1, 1, True)


# -- members ---------------------------------------------------------------------------------------


async def test_a_member_reconnects_by_resume_without_any_question(
    world: World, paul: Keystore, george: Keystore, share: Path
) -> None:
    host = await world.start_host(paul, person=Person(join=Grant(Role.MEMBER)), share=share)
    guest = await world.device()
    _first, membership = await world.join(george, guest, host)
    assert membership.role is Role.MEMBER and membership.cloud_name == "Paul's phone's cloud"
    assert host.person.questions == [("join", "George's phone")]
    # George now holds Paul's cloud: he recognises Paul's phone in its hello.
    assert {c.name: c.role for c in reopen(george).clouds()}["Paul's phone's cloud"] == "member"
    found, _ = await discover(guest, reopen(george), 0.3)
    assert [f.cloud_name for f in found if f.address == host.address] == ["Paul's phone's cloud"]

    box: dict[str, Any] = {}

    async def use(slink: Any, _session: Any, _m: Membership) -> None:
        box["files"] = await list_files(slink, timeout=5)

    george_person = Person()
    again, membership = await world.join(
        george, guest, None, method=None, target="Paul's phone", person=george_person,
        on_session=use,
    )
    await eventually(lambda: len(host.results) == 2)
    assert again.method is Method.RESUME and membership.role is Role.MEMBER
    assert host.results[1]["role"] == "member"
    assert len(box["files"]) == 2
    assert host.person.questions == [("join", "George's phone")]  # nothing new: no prompt
    assert george_person.questions == []


# -- transfers -------------------------------------------------------------------------------------


async def test_a_transfer_cut_by_a_dropped_link_resumes_to_the_same_hash(
    world: World, paul: Keystore, george: Keystore, share: Path, downloads: Path
) -> None:
    big = share / "film.mp4"
    big.write_bytes(os.urandom(1_000_000))
    host = await world.start_host(paul, share=share)
    guest = await world.device()
    dest = downloads / "film.mp4"
    part = downloads / "film.mp4.part"
    dropped: list[asyncio.Task[Any]] = []

    def drop_at_a_third(done: int, _total: int) -> None:
        if done >= 300_000 and not dropped:
            # The host's radio loses the connection mid-transfer.
            dropped.extend(
                asyncio.ensure_future(connection.disconnect())
                for connection in list(host.transport.device.connections.values())
            )

    async def fetch_with_drop(slink: Any, _session: Any, _m: Membership) -> None:
        await get_file(slink, "film.mp4", dest, progress=drop_at_a_third, timeout=5,
                       chunk_timeout=5)

    with pytest.raises(LinkClosedError):
        await world.join(george, guest, host, on_session=fetch_with_drop)
    assert dropped and not dest.exists()
    kept = part.stat().st_size
    assert 300_000 <= kept < big.stat().st_size
    assert part.read_bytes() == big.read_bytes()[:kept]  # only verified chunks were kept

    box: dict[str, Fetched] = {}

    async def fetch(slink: Any, _session: Any, _m: Membership) -> None:
        box["got"] = await get_file(slink, "film.mp4", dest, timeout=5)

    again, _ = await world.join(george, guest, None, method=None, target="Paul's phone",
                                on_session=fetch)
    assert again.method is Method.RESUME
    got = box["got"]
    assert got.resumed_from == kept > 0
    assert got.size == big.stat().st_size
    assert got.sha256 == sha(big) == sha(dest)
    assert not part.exists()
    assert not host.task.done()  # the drop did not take the host down


async def test_names_leading_out_of_the_shared_folder_are_refused(
    world: World, paul: Keystore, george: Keystore, share: Path, downloads: Path
) -> None:
    (share / "sub").mkdir()
    (share / "escape.txt").symlink_to(share.parent / "secret.txt")
    host = await world.start_host(paul, share=share)
    guest = await world.device()
    box: dict[str, Any] = {"errors": {}}
    bad = {
        "../secret.txt": "leads out of the shared folder",
        "sub/../../secret.txt": "leads out of the shared folder",
        str(share.parent / "secret.txt"): "is an absolute path",
        "escape.txt": "is a link leading out of the shared folder",
    }

    async def use(slink: Any, _session: Any, _m: Membership) -> None:
        for name in bad:
            try:
                await get_file(slink, name, downloads / "out.txt", timeout=5)
            except RefusedError as exc:
                box["errors"][name] = str(exc)
        box["files"] = [f.name for f in await list_files(slink, timeout=5)]
        box["ok"] = await get_file(slink, "birthday.mp4", downloads / "b.mp4", timeout=5)

    await world.join(george, guest, host, on_session=use)
    assert set(box["errors"]) == set(bad)
    for name, why in bad.items():
        assert box["errors"][name].startswith(f"the host refused {name!r}: refused: ")
        assert why in box["errors"][name]
        assert "Paul's bank PIN" not in box["errors"][name]
    assert not (downloads / "out.txt").exists() and not (downloads / "out.txt.part").exists()
    assert "escape.txt" not in box["files"]  # links out are not even listed
    assert box["ok"].sha256 == sha(share / "birthday.mp4")
    # Refused names were refused before the owner was asked about them.
    assert requests(host.person) == [("list", None), ("get", "birthday.mp4")]
