"""File sharing over a secure link: the host's request loop and the guest's list and get.

See :mod:`pairing.service` for the messages and the grant policy.  Names a guest asks for are
checked against the shared folder: ``..``, absolute paths, and links leading out of the folder
are refused, and the refusal says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from .pairing import wire
from .pairing.errors import (
    AccessDeniedError,
    AuthenticationError,
    DecodeError,
    ExpiredError,
    LinkClosedError,
    NotFoundError,
    PairingError,
    ProtocolError,
    RefusedError,
)
from .pairing.service import (
    CHUNK,
    MAX_FILES,
    AllowRequest,
    Bye,
    Chunk,
    FileEntry,
    FileHeader,
    GetRequest,
    GrantPolicy,
    Listing,
    ListRequest,
    Membership,
    Refused,
    Scope,
)
from .securelink import SecureLink

Asker = Callable[[AllowRequest], Awaitable[Scope]]


# -- the shared folder ------------------------------------------------------------------------


def resolve_shared(root: Path, name: str) -> Path:
    """The file ``name`` inside ``root``, or :class:`AccessDeniedError` saying why not."""
    if not name or "\x00" in name:
        raise AccessDeniedError("refused: empty or malformed file name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise AccessDeniedError(f"refused: {name!r} is an absolute path; ask for a shared name")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise AccessDeniedError(f"refused: {name!r} leads out of the shared folder ('..')")
    base = root.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise AccessDeniedError(f"refused: {name!r} is a link leading out of the shared folder")
    if not target.is_file():
        raise NotFoundError(f"no shared file called {name!r}")
    return target


def list_shared(root: Path) -> list[FileEntry]:
    """Regular files under ``root`` (links out of it left out), sorted by name."""
    base = root.resolve()
    out = []
    for path in sorted(base.rglob("*")):
        try:
            real = path.resolve()
        except OSError:
            continue
        if not real.is_relative_to(base) or not real.is_file():
            continue
        rel = path.relative_to(base).as_posix()
        kind = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        out.append(FileEntry(name=rel, size=real.stat().st_size, type=kind))
        if len(out) >= MAX_FILES:
            break
    return out


def sha256_file(path: Path, upto: int | None = None) -> bytes:
    h = hashlib.sha256()
    remaining = upto
    with open(path, "rb") as fh:
        while True:
            n = 1 << 20 if remaining is None else min(1 << 20, remaining)
            if n == 0:
                break
            block = fh.read(n)
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h.digest()


# -- host side --------------------------------------------------------------------------------


@dataclass
class ServeStats:
    listings: int = 0
    files: int = 0
    bytes_sent: int = 0
    prompts: int = 0
    refused: int = 0


async def serve_guest(
    slink: SecureLink,
    *,
    peer_name: str,
    policy: GrantPolicy,
    share: Path | None,
    ask: Asker,
    wall_clock: Callable[[], float] = time.time,
    idle: float = 300.0,
    stats: ServeStats | None = None,
) -> ServeStats:
    """Answer one guest's requests until it says Bye, closes, or stays silent ``idle`` s."""
    stats = stats or ServeStats()
    while True:
        try:
            raw = await slink.recv(idle)
        except LinkClosedError:
            return stats
        msg = wire.decode(raw, (ListRequest, GetRequest, Bye))
        if isinstance(msg, Bye):
            return stats
        what = "list" if isinstance(msg, ListRequest) else "get"
        try:
            if share is None:
                raise NotFoundError("this host shares no folder")
            if isinstance(msg, GetRequest):
                resolve_shared(share, msg.name)  # refuse bad names before asking anyone
            if policy.needs_prompt(what, wall_clock()):
                stats.prompts += 1
                name = msg.name if isinstance(msg, GetRequest) else None
                scope = await ask(AllowRequest(peer_name=peer_name, what=what, name=name))
                if not policy.record(what, scope):
                    raise RefusedError("the owner refused the request")
            if isinstance(msg, ListRequest):
                files = await asyncio.to_thread(list_shared, share)
                await slink.send(Listing(tuple(files)).encode())
                stats.listings += 1
            else:
                await _send_file(slink, share, msg, stats)
        except (AccessDeniedError, NotFoundError, RefusedError, ExpiredError) as exc:
            stats.refused += 1
            await slink.send(Refused(str(exc)).encode())


async def _send_file(slink: SecureLink, share: Path, req: GetRequest, stats: ServeStats) -> None:
    path = resolve_shared(share, req.name)
    size = path.stat().st_size
    if req.offset > size:
        raise NotFoundError(f"offset {req.offset} is past the end of {req.name!r}")
    digest = await asyncio.to_thread(sha256_file, path)
    await slink.send(FileHeader(req.name, size, digest, req.offset).encode())
    with open(path, "rb") as fh:
        fh.seek(req.offset)
        offset = req.offset
        while offset < size:
            data = fh.read(CHUNK)
            if not data:
                break
            await slink.send(Chunk(offset, data).encode())
            offset += len(data)
            stats.bytes_sent += len(data)
    stats.files += 1


# -- guest side -------------------------------------------------------------------------------


async def receive_membership(slink: SecureLink) -> Membership:
    return wire.decode(await slink.recv(), Membership)


async def list_files(slink: SecureLink, *, timeout: float = 180.0) -> list[FileEntry]:
    """Ask for the listing (the owner may be prompted: allow the time a person needs)."""
    await slink.send(ListRequest().encode())
    reply = wire.decode(await slink.recv(timeout), (Listing, Refused))
    if isinstance(reply, Refused):
        raise RefusedError(f"the host refused the listing: {reply.reason}")
    return list(reply.files)


ProgressFn = Callable[[int, int], None]


@dataclass
class Fetched:
    name: str
    path: Path
    size: int
    sha256: str
    resumed_from: int
    seconds: float


async def get_file(
    slink: SecureLink,
    name: str,
    dest: Path,
    *,
    progress: ProgressFn | None = None,
    timeout: float = 180.0,
    chunk_timeout: float = 30.0,
) -> Fetched:
    """Fetch ``name`` into ``dest``, resuming from ``dest.part`` if a previous try was cut."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    t0 = time.perf_counter()
    await slink.send(GetRequest(name, offset).encode())
    head = wire.decode(await slink.recv(timeout), (FileHeader, Refused))
    if isinstance(head, Refused):
        raise RefusedError(f"the host refused {name!r}: {head.reason}")
    if head.offset != offset or head.size < offset:
        raise ProtocolError("the host answered with another offset")
    with open(part, "ab") as fh:
        got = offset
        while got < head.size:
            msg = wire.decode(await slink.recv(chunk_timeout), Chunk)
            if msg.offset != got or not msg.data or got + len(msg.data) > head.size:
                raise ProtocolError("a chunk arrived out of place")
            fh.write(msg.data)
            got += len(msg.data)
            if progress is not None:
                progress(got, head.size)
        fh.flush()
        os.fsync(fh.fileno())
    digest = await asyncio.to_thread(sha256_file, part)
    if digest != head.sha256:
        part.unlink(missing_ok=True)
        raise AuthenticationError(f"{name!r} arrived damaged (SHA-256 mismatch); fetch it again")
    os.replace(part, dest)
    return Fetched(name, dest, head.size, digest.hex(), offset, time.perf_counter() - t0)


async def say_bye(slink: SecureLink) -> None:
    with contextlib.suppress(PairingError, OSError):
        await slink.send(Bye().encode())


__all__ = [
    "DecodeError",
    "Fetched",
    "ServeStats",
    "get_file",
    "list_files",
    "list_shared",
    "receive_membership",
    "resolve_shared",
    "say_bye",
    "serve_guest",
]
