"""File sharing over a secure link: the host's request loop and the guest's list and get.

See :mod:`pairing.service` for the messages and the grant policy.  Names a guest asks for are
checked against the shared folder: ``..``, absolute paths, and links leading out of the folder
are refused, and the refusal says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import math
import mimetypes
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from .driver import MessagePipe, describe_failure, drive
from .pairing import wire
from .pairing.errors import (
    AccessDeniedError,
    AuthenticationError,
    BusyError,
    ConfigError,
    DecodeError,
    ErrorCode,
    LinkClosedError,
    NotFoundError,
    PairingError,
    RefusedError,
)
from .pairing.files import (
    SERVE_IDLE,
    Check,
    FileFetch,
    FileList,
    FileServer,
    Restart,
    ServeFile,
    ServeListing,
    Write,
    build_listing,
    name_problem,
)
from .pairing.service import (
    CHUNK,
    MAX_NAME,
    MAX_NAME_BYTES,
    AllowRequest,
    Bye,
    Chunk,
    FileEntry,
    FileHeader,
    GetRequest,
    GrantPolicy,
    Membership,
    Scope,
    name_fits,
)
from .securelink import SecureLink

Asker = Callable[[AllowRequest], Awaitable[Scope]]


# -- the shared folder ------------------------------------------------------------------------


def resolve_shared(root: Path, name: str) -> Path:
    """The file ``name`` inside ``root``, or :class:`AccessDeniedError` saying why not."""
    problem = name_problem(name)
    if problem is not None:
        raise AccessDeniedError(problem)
    try:
        base = root.resolve()
        target = (base / name).resolve()
        if not target.is_relative_to(base):
            raise AccessDeniedError(
                f"refused: {name!r} is a link leading out of the shared folder"
            )
        if not target.is_file():
            raise NotFoundError(f"no shared file called {name!r}")
    except OSError as exc:  # a name too long for the host's file system, a folder it cannot read
        raise NotFoundError(
            f"{name!r} cannot be opened on the host: {describe_failure(exc)}"
        ) from None
    except RuntimeError:  # a link loop: Path.resolve raises RuntimeError before Python 3.13
        raise NotFoundError(f"{name!r} is a link loop on the host") from None
    return target


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_checked(root: Path, path: Path, name: str) -> BinaryIO:
    """``path`` (what :func:`resolve_shared` made of ``name``) opened for reading, and what was
    opened checked again: between the check and the open, whoever can write into the shared
    folder may have swapped the file or one of its folders for a link out of it, or the file
    for a FIFO (attack review atk19f).  The last part of the path is not followed if it is a
    link now, the open does not wait (a FIFO), the file opened must be a regular one and,
    where the system says where an open file is (``/proc/self/fd``), inside ``root``."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link now, where the check found a file
            raise RefusedError(f"{name!r} changed on the host; ask again") from None
        raise
    fh = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotFoundError(f"no shared file called {name!r}")
        where = _opened_at(fd)
        if where is not None and not where.is_relative_to(root.resolve()):
            raise AccessDeniedError(
                f"refused: {name!r} is a link leading out of the shared folder"
            )
        os.set_blocking(fd, True)
    except BaseException:
        fh.close()
        raise
    return fh


def _opened_at(fd: int) -> Path | None:
    """Where the open file ``fd`` is, as the system says (Linux), or None."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _finder(root: Path | None) -> Callable[[str], str | NotFoundError | None] | None:
    """The :class:`~pairing.files.FileServer`'s look into the shared folder: None, why not (a
    refusal), or the NotFoundError for a name it does not hold."""
    if root is None:
        return None

    def find(name: str) -> str | NotFoundError | None:
        try:
            resolve_shared(root, name)
        except AccessDeniedError as exc:
            return str(exc)
        except NotFoundError as exc:
            return exc
        except OSError as exc:  # ENAMETOOLONG and the like: the host's file system says no
            return f"refused: the host cannot look that name up ({exc.strerror or 'error'})"
        return None

    return find


def _sizer(root: Path | None) -> Callable[[str], int | None] | None:
    """A shared file's size, for the checks made before the owner is asked."""
    if root is None:
        return None

    def size_of(name: str) -> int | None:
        try:
            return resolve_shared(root, name).stat().st_size
        except (PairingError, OSError):
            return None

    return size_of


def list_shared(root: Path) -> list[FileEntry]:
    """Regular files under ``root`` (links out of it left out), sorted by name."""
    base = root.resolve()
    out = []
    for path in sorted(base.rglob("*")):
        try:
            real = path.resolve()
            if not real.is_relative_to(base) or not real.is_file():
                continue
        except (OSError, RuntimeError):  # RuntimeError: a link loop (Path.resolve, < 3.13)
            continue
        rel = path.relative_to(base).as_posix()
        kind = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        try:
            size = real.stat().st_size
        except OSError:
            continue  # gone, or not ours to read, since the folder was read
        out.append(FileEntry(name=rel, size=size, type=kind))
    return out  # all of them: pairing.files.build_listing keeps what fits (§13)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: what :meth:`_KeptWork.get` runs: the work's coroutine, which returns its value and whether
#: to keep it, and the time the entry is kept from (the caller's ``now`` clock)
Started = tuple[Coroutine[Any, Any, tuple[V, bool]], float]


class _KeptWork(Generic[K, V]):
    """A value per key, kept for ``ttl`` seconds (``entries`` keys at most, the oldest going
    first), and at most one piece of work in flight per key and event loop: shielded (a waiter
    that goes away does not cancel it for the others), shared by every waiter meanwhile, its
    exception each waiter's.  What a value is, and whether it may be kept, is the caller's."""

    def __init__(self, ttl: float, entries: int | None = None) -> None:
        self._ttl = ttl
        self._entries = entries
        self._kept: dict[K, tuple[float, V]] = {}
        self._running: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, now: float, start: Callable[[], Started[V]]) -> V:
        """The value kept for ``key`` at ``now``, or the work under way for it on this loop,
        or what ``start()`` starts: called at once, with no await before it, so that whoever
        asks meanwhile finds the work; it may raise (nothing is started then)."""
        kept = self._kept.get(key)
        if kept is not None and 0 <= now - kept[0] < self._ttl:
            return kept[1]
        loop = asyncio.get_running_loop()
        running = self._running.get(key)
        if running is None or running.get_loop() is not loop:
            work, at = start()
            running = self._running[key] = loop.create_task(self._run(key, work, at))
            running.add_done_callback(functools.partial(_retrieved, work))
        # shielded: a waiter that goes away does not cancel the work the others wait for
        return await asyncio.shield(running)

    async def _run(self, key: K, work: Coroutine[Any, Any, tuple[V, bool]], at: float) -> V:
        try:
            value, keep = await work
            if keep:
                for old, (then, _) in list(self._kept.items()):
                    if not 0 <= at - then < self._ttl:
                        del self._kept[old]
                while self._entries is not None and len(self._kept) >= self._entries:
                    del self._kept[next(iter(self._kept))]
                self._kept[key] = (at, value)
            return value
        finally:
            # Only this loop's own entry: another loop (a second host's, in another thread)
            # may have started its own work for the key since, which is not ours to forget.
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]


def _retrieved(work: Coroutine[Any, Any, Any], task: asyncio.Task[Any]) -> None:
    """A finished work's failure is each waiter's: one nobody waits for any more is not
    "unretrieved".  A work cancelled before it ran (its loop closing) is closed, not left
    "never awaited"."""
    if task.cancelled():
        work.close()
    else:
        task.exception()


#: how long a shared folder's listing is sent again to whoever asks, without reading the
#: folder again (atk20c finding 5): a file added is listed at the latest this much later
LISTING_TTL = 2.0


class _Listings:
    """Each shared folder's listing, read at most once per :data:`LISTING_TTL` seconds.

    Reading a folder walks it whole (every entry resolved and stat'ed, in a thread); a member
    is never asked about a listing, so ListRequests sent back to back, over as many sessions
    as the host admits, walked it each time (attack review atk20c, finding 5).  Kept per
    folder, not limited per session: one guest with several sessions gets nothing more, and
    an honest guest is never refused or slowed for another's requests.  Keyed by the folder's
    absolute path; a read under way is shared by those who ask meanwhile.

    What it trusts: nothing of the folder's; a file added or removed is listed as such at the
    latest :data:`LISTING_TTL` seconds after the walk that missed it began."""

    def __init__(self) -> None:
        self._work: _KeptWork[str, bytes] = _KeptWork(LISTING_TTL)

    async def encoded(self, root: Path, now: Callable[[], float]) -> bytes:
        """The encoded Listing message for the folder ``root``."""

        def start() -> Started[bytes]:
            # the folder as it was when the walk began: kept for the window from then
            return self._read(root), now()

        return await self._work.get(os.path.abspath(root), now(), start)

    @staticmethod
    async def _read(root: Path) -> tuple[bytes, bool]:
        files = await asyncio.to_thread(list_shared, root)
        return build_listing(files).encode(), True


#: the listings of this process's hosts, whichever session asks
_LISTINGS = _Listings()


def _sha256_open(fh: BinaryIO, size: int | None, name: str) -> bytes:
    """SHA-256 of the open file ``fh`` from its start: its first ``size`` bytes (what is
    announced and sent, though the file grows meanwhile), or all of it (``None``)."""
    h = hashlib.sha256()
    fh.seek(0)
    left = size
    while left is None or left > 0:
        block = fh.read(1 << 20 if left is None else min(1 << 20, left))
        if not block:
            if left is None:
                break
            raise RefusedError(f"{name!r} changed on the host while it was sent; fetch it again")
        h.update(block)
        if left is not None:
            left -= len(block)
    return h.digest()


#: a file whose change time is less than this many seconds before its hash began is hashed
#: again at each request: a change within the same tick of the file system's clock (2 s on
#: FAT) would leave its times as they were (git's "racy" files)
DIGEST_SETTLE = 2.0
#: how long a file's digest is kept at most (seconds): the bound on how long a digest made
#: stale by a write that moved none of the file's times (below) fails the guests' fetches
DIGEST_TTL = 600.0
#: how many files' digests are kept (the oldest goes first)
DIGEST_ENTRIES = 1024

#: what a kept digest is of: the open file's device, inode, size, modification and change
#: times in nanoseconds
_Key = tuple[int, int, int, int, int]


class _Digests:
    """The SHA-256 of the shared files the hosts of this process serve, each hashed at most
    once while it stays the same file.

    Every GetRequest hashed its file whole before sending a byte, even one that asked from the
    file's end and got none: a guest sending such requests back to back made the host read and
    hash the file each time, in the executor every guest's open and listing wait in (attack
    review atk21, finding 2).  A digest is kept keyed by the opened file's identity, size,
    modification and change times (``os.fstat`` of the one open the file is sent from), for
    :data:`DIGEST_TTL` seconds, :data:`DIGEST_ENTRIES` files at most; a hash under way is
    shared by whoever asks for the same file meanwhile (one hash, not one per request).

    What it trusts: that a write to a file moves its size, its modification time or its change
    time (no system call sets the change time: only the system's clock moves it). A digest is
    kept only when the file's times did not move while it was hashed and its change time (every
    write sets it to the system's clock; the modification time on Windows) is at least
    :data:`DIGEST_SETTLE` seconds older than the hash's start by the host's wall clock, so that
    a change within the file system's clock tick is not missed. A write that moves none of them
    (through a shared memory map to a page already dirty; on a network file system whose
    server's clock lags) leaves a stale digest: the guest's SHA-256 check then fails ("changed
    on the host"), no other bytes are ever taken for the file's, and the entry goes within
    :data:`DIGEST_TTL`."""

    def __init__(self) -> None:
        self._work: _KeptWork[_Key, bytes] = _KeptWork(DIGEST_TTL, DIGEST_ENTRIES)

    async def digest(
        self, fh: BinaryIO, st: os.stat_result, name: str, *,
        wall: Callable[[], float], monotonic: Callable[[], float],
        admit: Callable[[int], None] | None = None,
    ) -> bytes:
        """The SHA-256 of the first ``st.st_size`` bytes of the open file ``fh`` (``st``: its
        ``os.fstat``).  The hash reads a duplicate of ``fh``'s descriptor and closes it
        itself, so the caller may close ``fh`` meanwhile (a guest gone); the duplicate shares
        ``fh``'s position: seek before reading ``fh`` again.  ``admit(size)`` is called only
        when this call starts a hash, before it does; what it raises is this call's (no hash
        is started then)."""
        key = _key(st)

        def start() -> Started[bytes]:
            if admit is not None:
                admit(key[2])
            # The same open file, not a new open of its name: what is hashed is what is sent.
            own = os.fdopen(os.dup(fh.fileno()), "rb")
            return self._hash(key, own, name, wall()), monotonic()

        return await self._work.get(key, monotonic(), start)

    @staticmethod
    async def _hash(key: _Key, own: BinaryIO, name: str, started: float) -> tuple[bytes, bool]:
        """The digest, and whether it may be kept: ``started``, the hash's start by the host's
        wall clock."""
        digest, after = await asyncio.to_thread(_hash_and_close, own, key[2], name)
        # Every write sets the change time to the system's clock, whatever the modification
        # time is set to after (it may be in the future: an archive's): the change time says
        # when the file last changed.  On Windows st_ctime is its creation time.
        changed = key[3] if os.name == "nt" else key[4]
        settled = changed < (started - DIGEST_SETTLE) * 1e9
        return digest, _key(after) == key and settled


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_and_close(own: BinaryIO, size: int, name: str) -> tuple[bytes, os.stat_result]:
    """In a thread: the SHA-256 of ``own``'s first ``size`` bytes and its ``fstat`` once
    hashed; ``own`` closed here, whoever stopped waiting meanwhile."""
    with own:
        digest = _sha256_open(own, size, name)
        return digest, os.fstat(own.fileno())


#: the digests of this process's hosts' files, whichever session asks
_DIGESTS = _Digests()


#: how many bytes the hosts of this process hash for one guest device beyond what they then
#: send it, at most (atk21b finding D): past it, a request that needs a new hash is refused
#: ("busy", code 18) until enough has drained ...
HASH_ALLOWANCE = 1 << 30
#: ... over this many seconds: what is owed drains at HASH_ALLOWANCE / HASH_WINDOW bytes a
#: second (about 17 MiB/s), the most one guest makes the host hash for nothing, sustained
HASH_WINDOW = 60.0


class _HashBudgets:
    """What each guest owes the hosts of this process in hashing: the bytes of the files
    hashed at its request, less the bytes of those files then sent to it, draining over
    :data:`HASH_WINDOW` (a leaky bucket).

    The digest cache (:class:`_Digests`) does not keep a file that is being written, nor more
    than :data:`DIGEST_ENTRIES` files: a guest asking for such files from their end, sent no
    byte of them, had each hashed whole at each request (attack review atk21b, finding D).  A
    guest that fetches what it asks for pays each hash with the bytes sent, and owes nothing
    when it asks again; one that asks without taking owes what was hashed, and is refused a new
    hash while it owes :data:`HASH_ALLOWANCE` or more.  The check comes before a hash, so one
    hash may take it past that (by at most one file); a digest kept, or a hash under way for
    another's request, costs the host nothing more and is always served.  Kept per guest device
    (its key's fingerprint), across its sessions and this process's hosts: a new session is no
    new allowance.

    One per process, with a lock, not one per event loop: an application may run hosts on
    several loops, one per thread, and what the allowance bounds is the hashing one guest
    device makes this machine do, whichever loop serves it (a budget per loop would give a
    guest that reaches N loops N allowances, as a budget per session gave one per session).
    :meth:`charge` and :meth:`pay` read what the guest owes and write it back: without the
    lock, a charge made by another thread between the two was lost (the guest then owed one
    hash for two), and a charge's sweep could meet the table changing size (RuntimeError).
    Held only for a few dictionary operations, never across an await, so one loop's wait for
    it is no longer than another thread's charge (the sweep of those who owe: one entry per
    guest owing something)."""

    def __init__(self) -> None:
        self._owed: dict[Hashable, tuple[float, float]] = {}  # guest: (bytes owed, at)
        self._lock = threading.Lock()  # hosts on other event loops, in other threads

    def _now_owed(self, guest: Hashable, now: float) -> float:
        owed, at = self._owed.get(guest, (0.0, now))
        return max(0.0, owed - max(0.0, now - at) * HASH_ALLOWANCE / HASH_WINDOW)

    def charge(self, guest: Hashable, size: int, now: float) -> None:
        """Count a hash of ``size`` bytes for ``guest``, or :class:`BusyError` saying when to
        ask again."""
        with self._lock:
            owed = self._now_owed(guest, now)
            if owed >= HASH_ALLOWANCE:
                wait = math.ceil((owed - HASH_ALLOWANCE) * HASH_WINDOW / HASH_ALLOWANCE) or 1
                raise BusyError(f"the host is busy hashing files for you; try again in {wait} s")
            for other in [g for g in self._owed if self._now_owed(g, now) == 0]:
                del self._owed[other]  # those who owe nothing any more: forgotten
            self._owed[guest] = (owed + size, now)

    def pay(self, guest: Hashable, sent: int, now: float) -> None:
        """``sent`` bytes of a file hashed at ``guest``'s request were sent to it."""
        with self._lock:
            owed = self._now_owed(guest, now) - sent
            if owed > 0:
                self._owed[guest] = (owed, now)
            else:
                self._owed.pop(guest, None)


#: the hashing each guest owes this process's hosts, whichever session asks
_HASH_BUDGETS = _HashBudgets()


# -- host side --------------------------------------------------------------------------------


@dataclass
class ServeStats:
    listings: int = 0
    files: int = 0
    bytes_sent: int = 0
    prompts: int = 0
    refused: int = 0
    #: the service ended because the guest's grant did: the caller closes the session
    expired: bool = False


async def serve_guest(
    slink: SecureLink,
    *,
    peer_name: str,
    policy: GrantPolicy,
    share: Path | None,
    ask: Asker,
    wall_clock: Callable[[], float] = time.time,
    idle: float = SERVE_IDLE,
    stats: ServeStats | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    guest: Hashable | None = None,
) -> ServeStats:
    """Answer one guest's requests until it says Bye, closes, stays silent ``idle`` s, or asks
    after its grant ended (refused, and :attr:`ServeStats.expired`: close the session).

    ``guest``: who the hashing this guest makes the host do is counted for (its device key's
    fingerprint: :class:`_HashBudgets`); None: this session alone.

    The decisions are :class:`~pairing.files.FileServer`'s; this reads the folder and sends."""
    stats = stats or ServeStats()
    budget_key: Hashable = object() if guest is None else guest
    machine = FileServer(policy, peer_name=peer_name, find=_finder(share),
                         size_of=_sizer(share), idle=idle)
    machine.start(wall_clock())

    class Work:
        async def allow_request(self, q: AllowRequest) -> Scope:
            return await ask(q)

        async def serve_listing(self, event: ServeListing) -> None:
            assert share is not None
            # read at most once per LISTING_TTL, whoever asks (atk20c finding 5)
            await slink.send(await _LISTINGS.encoded(share, monotonic), idle)
            machine.served(wall_clock())

        async def serve_file(self, event: ServeFile) -> None:
            assert share is not None
            try:
                sent = await _send_file(
                    slink, share, GetRequest(event.name, event.offset), stats, idle,
                    allowed=lambda: machine.still_allowed(wall_clock()),
                    wall=wall_clock, monotonic=monotonic, guest=budget_key,
                )
            except BusyError as exc:  # it owes too much hashing (atk21b finding D)
                machine.refuse(str(exc), wall_clock(), code=ErrorCode.BUSY)
                return
            except (AccessDeniedError, NotFoundError, RefusedError, OSError) as exc:
                machine.refuse(_unreadable(event.name, exc), wall_clock())
                return
            if sent:  # else the grant ended while it was sent: the machine ended the service
                machine.served(wall_clock())

    try:
        # A guest that stops reading is dropped after the idle limit too (issue 17).
        await drive(machine, Records(slink, send_timeout=idle), delegate=Work(),
                    clock=wall_clock)
    except LinkClosedError:
        pass  # the guest left without a Bye: nothing more to serve
    finally:
        stats.listings, stats.files = machine.listings, machine.files
        stats.prompts, stats.refused = machine.prompts, machine.refused
        stats.expired = machine.expired
    return stats


def _unreadable(name: str, exc: BaseException) -> str:
    if isinstance(exc, PairingError):
        return str(exc)
    return f"{name!r} could not be read on the host"


def chunk_size(slink: SecureLink, file_size: int) -> int:
    """How much of a ``file_size``-byte file each Chunk carries: at most CHUNK, sized so that
    its record fills the link's messages (:meth:`SecureLink.fitting`); the CBOR around the
    data is counted with the file's largest offset."""
    around = len(Chunk(file_size, bytes(CHUNK)).encode()) - CHUNK
    return max(1, min(CHUNK, slink.fitting(CHUNK + around) - around))


async def _send_file(
    slink: SecureLink, share: Path, req: GetRequest, stats: ServeStats, idle: float, *,
    allowed: Callable[[], bool], wall: Callable[[], float], monotonic: Callable[[], float],
    guest: Hashable,
) -> bool:
    """Send the file ``req`` asks for: True once sent whole, False if ``allowed()`` said no
    before the header or a chunk (the guest's grant ended meanwhile: attack review atk21,
    finding 4; the caller's machine sent the refusal in place of what would have come)."""
    path = resolve_shared(share, req.name)
    # One open, checked once opened (atk19f): the bytes sent, and the hash when one is made,
    # come from it, no link or FIFO swapped in since the check.  A digest kept from an earlier
    # hash is used only for the same file (device, inode) of the same size and times.
    with await asyncio.to_thread(open_checked, share, path, req.name) as fh:
        st = os.fstat(fh.fileno())
        size = st.st_size
        # Past the end: the file shrank since the guest's partial copy; it starts again (§13).
        start = req.offset if req.offset <= size else 0
        hashed: list[int] = []  # the size hashed at this request, if one was (atk21b D)

        def admit(size: int) -> None:
            _HASH_BUDGETS.charge(guest, size, monotonic())
            hashed.append(size)

        # kept while the file stays the same, shared by requests at once (atk21 finding 2)
        digest = await _DIGESTS.digest(fh, st, req.name, wall=wall, monotonic=monotonic,
                                       admit=admit)
        if not allowed():  # the hash of a big file takes seconds
            return False
        await slink.send(FileHeader(req.name, size, digest, start).encode(), idle)
        chunk = chunk_size(slink, size)
        fh.seek(start)
        offset = start
        while offset < size:  # exactly the bytes announced, never more (§13)
            if not allowed():  # a clock read and a comparison: each chunk, however slow
                return False
            data = fh.read(min(chunk, size - offset))
            if not data:  # shorter than announced: it changed while it was sent
                raise RefusedError(f"{req.name!r} changed on the host while it was sent; "
                                   "fetch it again")
            await slink.send(Chunk(offset, data).encode(), idle)
            offset += len(data)
            stats.bytes_sent += len(data)
            if hashed:  # the hash made for it, paid for by the bytes it takes
                _HASH_BUDGETS.pay(guest, len(data), monotonic())
    return True


class Records(MessagePipe):
    """A secure link as the driver's pipe: its messages are whole already (the channel
    fragments its records itself), and the driver's deadline is the only one.

    It reads ahead as the pairing pipes do (:func:`~pairkit.driver.drive`): while the owner
    is asked "allow this file?", the guest's ``Abort`` (it cancelled) or the link closing
    withdraws the question at once (issue 16).  A secure link's receive is cancel-safe (a
    record is opened only once it has all come), and a message read ahead and not used is
    put back (:meth:`unread`)."""

    def __init__(self, slink: SecureLink, *, send_timeout: float | None = None) -> None:
        super().__init__(slink.link)
        self._slink = slink
        self._send_timeout = send_timeout

    async def send(self, message: bytes) -> None:
        await self._slink.send(message, self._send_timeout)

    async def recv_unabsorbed(self) -> bytes:
        if self._unread:
            return self._unread.pop(0)
        return await self._slink.recv(NO_TIMEOUT)

    def absorb(self, message: bytes) -> None:
        """Nothing to count: the secure channel binds its records itself."""


#: the secure link's own receive deadline, switched off (the driver's machine sets one)
NO_TIMEOUT = 10.0**9


# -- guest side -------------------------------------------------------------------------------


async def receive_membership(slink: SecureLink) -> Membership:
    return wire.decode(await slink.recv(), Membership)


class FileEntries(list[FileEntry]):
    """The files a host listed, and how many it left out (docs/protocol.md §13)."""

    #: files past the listing's limits (the host lists the first ones)
    more: int = 0
    #: files whose names are over the name limits (they cannot be fetched)
    long_names: int = 0


async def list_files(slink: SecureLink, *, timeout: float = 180.0) -> FileEntries:
    """Ask for the listing (the owner may be prompted: allow the time a person needs)."""
    machine = FileList(timeout=timeout)
    machine.start(time.monotonic())
    await drive(machine, Records(slink), clock=time.monotonic)
    if machine.refusal is not None:
        raise machine.refusal
    out = FileEntries(machine.files)
    out.more, out.long_names = machine.more, machine.long_names
    return out


ProgressFn = Callable[[int, int], None]


@dataclass
class Fetched:
    name: str
    path: Path
    size: int
    sha256: str
    resumed_from: int
    seconds: float
    #: what a partial copy held when the host's file turned out shorter (started again at 0)
    restarted_from: int | None = None


def partial_size(part: Path) -> int:
    """How much a previous try kept in ``part`` (0: none).  Only a plain file counts: a link
    (planted by whoever can write into the folder) or anything else there is refused with a
    :class:`ConfigError`, never followed nor resumed into (attack review atk19f)."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    except OSError as exc:  # a name too long for NAME.part here (a 252-byte NAME), no access
        raise ConfigError(f"cannot keep a partial file at {part} ({describe_failure(exc)}); "
                          "-o another name") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{part} is not a partial file left by pairkit (a link or not a "
                          "plain file); remove it, or -o another name")
    return st.st_size


def free_space(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in ``folder``'s file system (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder is gone
        return None
    return st.f_bavail * st.f_frsize


async def get_file(
    slink: SecureLink,
    name: str,
    dest: Path,
    *,
    progress: ProgressFn | None = None,
    timeout: float = 180.0,
    chunk_timeout: float = 30.0,
    replace: bool = True,
    listed: int | None = None,
) -> Fetched:
    """Fetch ``name`` into ``dest``, resuming from ``dest.part`` if a previous try was cut.

    ``replace`` False: a file at ``dest`` is never replaced, not even one that appeared while
    the file came (:class:`ConfigError`; the verified file is kept as ``dest.part``).
    ``listed``: the size the host's listing gave; a file the host then announces larger is
    refused.  A file larger than the free space where ``dest`` is saved is refused too, at its
    header, before anything is written (:class:`~pairing.errors.TooLargeError`).

    :class:`~pairing.files.FileFetch` checks what arrives; this writes it and hashes it."""
    if not name_fits(name):  # the host could not even read such a request (§13)
        raise RefusedError(
            f"file names are at most {MAX_NAME} characters and {MAX_NAME_BYTES} bytes in "
            f"UTF-8; this one has {len(name)} characters"
        )
    part = dest.with_name(dest.name + ".part")
    offset = partial_size(part)
    t0 = time.perf_counter()
    machine = FileFetch(name, offset, timeout=timeout, chunk_timeout=chunk_timeout,
                        listed=listed, room=free_space(dest.parent))
    machine.start(time.monotonic())
    handle: list[Any] = []  # the partial file, opened once something is to be kept
    written: list[tuple[int, int]] = []  # the partial file's (device, inode), once complete

    def partial() -> Any:
        if not handle:
            # Never through a link, even one planted since partial_size looked (atk19f).
            fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC,
                         0o666)
            handle.append(os.fdopen(fd, "ab"))
        return handle[0]

    class Work:
        async def restart(self, event: Restart) -> None:
            for fh in handle:
                fh.close()
            handle.clear()
            part.unlink(missing_ok=True)

        async def write(self, event: Write) -> None:
            partial().write(event.data)
            if progress is not None and machine.header is not None:
                progress(event.offset + len(event.data), machine.header.size)

        async def check(self, event: Check) -> None:
            fh = partial()
            fh.flush()
            os.fsync(fh.fileno())
            st = os.fstat(fh.fileno())
            written.append((st.st_dev, st.st_ino))
            digest = await asyncio.to_thread(_sha256_written, part, written[0], name)
            machine.verify(digest, time.monotonic())

    try:
        await drive(machine, Records(slink), delegate=Work(), clock=time.monotonic)
    finally:
        for fh in handle:
            fh.close()
    if machine.refusal is not None:
        if isinstance(machine.refusal, AuthenticationError):
            part.unlink(missing_ok=True)  # damaged: the next try starts from the beginning
        raise machine.refusal
    assert machine.header is not None
    _same_file(part, written[0], name)  # (Check always comes before a complete fetch)
    _put_in_place(part, dest, replace)
    return Fetched(name, dest, machine.header.size, machine.header.sha256.hex(), machine.offset,
                   time.perf_counter() - t0, restarted_from=machine.restarted_from)


def _swapped(part: Path, name: str) -> AuthenticationError:
    return AuthenticationError(
        f"{part} was replaced while {name!r} came (someone else writes into that folder); "
        "fetch it again into a folder only you can write to"
    )


def _same_file(part: Path, written: tuple[int, int], name: str) -> None:
    """AuthenticationError unless ``part`` is still the file this fetch wrote (atk19f)."""
    try:
        st = os.lstat(part)
    except OSError:
        raise _swapped(part, name) from None
    if (st.st_dev, st.st_ino) != written:
        raise _swapped(part, name)


def _sha256_written(part: Path, written: tuple[int, int], name: str) -> bytes:
    """SHA-256 of the partial file this fetch wrote, read from ``part`` only if it is still
    that file (not a link, not another file renamed there meanwhile: atk19f)."""
    try:
        fd = os.open(part, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        raise _swapped(part, name) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != written:
            raise _swapped(part, name)
        return _sha256_open(fh, None, name)


def _put_in_place(part: Path, dest: Path, replace: bool) -> None:
    if replace:
        os.replace(part, dest)
        return
    appeared = ConfigError(f"{dest} appeared while it was fetched; the file is kept in {part}; "
                           "use --force to replace it, or -o another name")
    try:  # a hard link fails if dest exists, whenever it appeared (a rename would replace it)
        os.link(part, dest, follow_symlinks=False)
    except FileExistsError:
        raise appeared from None
    except OSError:  # no hard links on this file system: look, then rename
        if os.path.lexists(dest):
            raise appeared from None
        os.replace(part, dest)
        return
    part.unlink()


async def say_bye(slink: SecureLink) -> None:
    with contextlib.suppress(PairingError, OSError):
        await slink.send(Bye().encode())


__all__ = [
    "DIGEST_ENTRIES",
    "DIGEST_SETTLE",
    "DIGEST_TTL",
    "HASH_ALLOWANCE",
    "HASH_WINDOW",
    "LISTING_TTL",
    "DecodeError",
    "Fetched",
    "ServeStats",
    "get_file",
    "list_files",
    "list_shared",
    "open_checked",
    "partial_size",
    "receive_membership",
    "resolve_shared",
    "say_bye",
    "serve_guest",
]
