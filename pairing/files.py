"""The file service as sans-I/O machines (DESIGN.md step 6; the messages are
:mod:`pairing.service`'s; docs/protocol.md §13).

* :class:`FileServer`, the host's side: one guest's requests, in order, under its
  :class:`~pairing.service.GrantPolicy`.  It decides everything that is policy (an expired
  guest, a name that leads out of the folder, whether the owner is asked, what the owner's
  answer allows) and says what to serve with an event; the runtime reads the folder and sends
  the listing or the file, asking :meth:`FileServer.still_allowed` before each chunk (the
  grant may end while a file is sent), then tells the machine :meth:`FileServer.served` (or
  :meth:`FileServer.refuse` if the file could not be read).
* :class:`FileList` and :class:`FileFetch`, the guest's side of one request each: they check
  what arrives (the header's offset and size, every chunk in place and within the size) and
  say what to write with events; the runtime writes, hashes the result and gives the digest to
  :meth:`FileFetch.verify`.

Time here is wall-clock seconds (a guest's grant expires at a wall time), passed in as ``now``
like every machine's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from . import wire
from .crypto import same
from .errors import (
    AuthenticationError,
    BusyError,
    ErrorCode,
    ExpiredError,
    GrownFileError,
    NotFoundError,
    ProtocolError,
    RefusedError,
    TooLargeError,
)
from .machine import DONE, Event, Machine, Step, step
from .service import (
    MAX_FILES,
    MAX_NAME,
    MAX_NAME_BYTES,
    AllowRequest,
    Bye,
    Chunk,
    FileEntry,
    FileHeader,
    GetRequest,
    GrantPolicy,
    Listing,
    ListRequest,
    Refused,
    Scope,
    name_fits,
)

#: how long a host waits for a guest's next request
SERVE_IDLE = 300.0
#: how long a guest waits for an answer that may need a person (the owner is asked)
ANSWER_TIME = 180.0
#: how long a guest waits for each chunk once the file comes
CHUNK_TIME = 30.0

WAITING = "waiting"
ASKING = "asking"
SERVING = "serving"


#: the most a Refused reason may take in UTF-8 (its message is 512 bytes at most, §13)
REASON_BYTES = 400


def build_listing(entries: list[FileEntry] | tuple[FileEntry, ...]) -> Listing:
    """The listing a host sends for ``entries`` (docs/protocol.md §13), within every limit the
    guest checks: names over :data:`MAX_NAME` characters are left out and counted in
    ``long_names``; the first entries that fit in :data:`MAX_FILES` and in the message's size
    limit are listed, the rest counted in ``more``."""
    fitting = [e for e in entries if name_fits(e.name) and len(e.type) <= 64]
    long_names = len(entries) - len(fitting)
    budget = Listing.MAX_SIZE - 64  # type: ignore[attr-defined]  # head, counts, margin
    kept: list[FileEntry] = []
    used = 0
    for entry in fitting[:MAX_FILES]:
        cost = len(wire.encode_struct(entry)) + 1
        if used + cost > budget:
            break
        kept.append(entry)
        used += cost
    listing = Listing(tuple(kept), more=len(fitting) - len(kept), long_names=long_names)
    while len(listing.encode()) > Listing.MAX_SIZE:  # type: ignore[attr-defined]  # never, but
        kept.pop()  # the estimate must never be what decides
        listing = Listing(tuple(kept), more=len(fitting) - len(kept), long_names=long_names)
    return listing


def short_reason(reason: str) -> str:
    """``reason`` cut to :data:`REASON_BYTES` in UTF-8 (and 200 characters), on a character
    boundary, so a refusal always fits its message whatever the name it quotes."""
    reason = reason[:200]
    while len(reason.encode("utf-8")) > REASON_BYTES:
        reason = reason[:-1]
    return reason


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a shared file, or None: empty, a NUL, an absolute path, or a
    ``..`` step out of the folder.  (Links out of the folder are the runtime's to refuse: it
    alone can look.)"""
    if not name or "\x00" in name:
        return "refused: empty or malformed file name"
    if not name_fits(name):
        return (f"refused: file names are at most {MAX_NAME} characters and {MAX_NAME_BYTES} "
                f"bytes in UTF-8; this one has {len(name)} characters")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"refused: {name!r} is an absolute path; ask for a shared name"
    if ".." in name.replace("\\", "/").split("/"):
        return f"refused: {name!r} leads out of the shared folder ('..')"
    return None


@dataclasses.dataclass(frozen=True)
class ServeListing(Event):
    """Send the guest the listing of the shared folder (then :meth:`FileServer.served`)."""

    hook: ClassVar[str] = "serve_listing"


@dataclasses.dataclass(frozen=True)
class ServeFile(Event):
    """Send the guest ``name`` from ``offset``, asking :meth:`FileServer.still_allowed` before
    each chunk (then :meth:`FileServer.served`, unless it said no)."""

    hook: ClassVar[str] = "serve_file"
    name: str
    offset: int


class FileServer(Machine):
    """The host's side of the file service for one guest, until it says :class:`Bye`.

    ``find(name)`` is the runtime's look into the shared folder: None if ``name`` is a file
    there, else why not (not found, a link out of the folder).  ``find`` None: nothing is
    shared, and every request is refused without asking anyone.  ``size_of`` is accepted and
    unused: a request to resume past a file's end is not refused (the file shrank since the
    guest's ``.part``), the host answers from offset 0 (issue 17, finding 8).
    """

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (WAITING, ListRequest): step("_on_list", WAITING, ASKING, SERVING, DONE),
        (WAITING, GetRequest): step("_on_get", WAITING, ASKING, SERVING, DONE),
        (WAITING, Bye): step("_on_bye", DONE),
    }
    ANSWERS: ClassVar[dict[str, Step]] = {ASKING: step("_on_answer", WAITING, SERVING, DONE)}
    STARTS: ClassVar[frozenset[str]] = frozenset({WAITING})

    def __init__(
        self,
        policy: GrantPolicy,
        *,
        peer_name: str,
        find: Callable[[str], str | NotFoundError | None] | None,
        size_of: Callable[[str], int | None] | None = None,
        idle: float = SERVE_IDLE,
    ) -> None:
        super().__init__(initial_state=WAITING)
        self._size_of = size_of
        self.policy = policy
        self.peer_name = peer_name
        self._find = find
        self._idle = idle
        self._pending: ServeListing | ServeFile | None = None
        #: counts for the owner's summary
        self.listings = 0
        self.files = 0
        self.prompts = 0
        self.refused = 0
        #: the service ended because the guest's grant did (:meth:`_end_expired`)
        self.expired = False

    def _on_start(self, now: float) -> None:
        """Wait for the guest's first request."""
        self._wait(now)

    # -- the runtime's reports --------------------------------------------------------------

    def served(self, now: float) -> None:
        """What the last :class:`ServeListing` or :class:`ServeFile` asked for is sent."""
        self._check_usable()
        if self.state != SERVING or self._pending is None:
            raise ProtocolError("nothing is being served")
        if isinstance(self._pending, ServeListing):
            self.listings += 1
        else:
            self.files += 1
        self._wait(now)

    def still_allowed(self, now: float) -> bool:
        """While a file is sent: True if the guest's grant still holds at ``now``.  If it has
        ended, the transfer stops there: a Refused (code 11, expired) goes in place of the next
        chunk and the service ends, as for a request after the end.  A transfer under way ran
        to the file's end before, each chunk taking up to the idle time (attack review atk21,
        finding 4)."""
        self._check_usable()
        if self.state != SERVING or not isinstance(self._pending, ServeFile):
            raise ProtocolError("no file is being sent")
        try:
            self.policy.check_access(now)
        except ExpiredError as exc:
            self._end_expired(exc)
            return False
        return True

    def refuse(self, reason: str, now: float, code: ErrorCode | None = None) -> None:
        """What was to be served could not be (the file vanished, could not be read; ``code``
        BUSY: the host will not hash more for this guest now)."""
        self._check_usable()
        if self.state != SERVING:
            raise ProtocolError("nothing is being served")
        self._refuse(reason, now, code=code)

    # -- handlers ---------------------------------------------------------------------------

    def _on_list(self, msg: ListRequest, now: float) -> None:
        self._request(ServeListing(), None, now)

    def _on_get(self, msg: GetRequest, now: float) -> None:
        problem = name_problem(msg.name)
        if problem is None and self._find is not None:
            problem = self._find(msg.name)  # bad names are refused before anyone is asked
        if isinstance(problem, NotFoundError):  # said as such: the guest reports "not found"
            self._refuse(str(problem), now, code=ErrorCode.NOT_FOUND)
            return
        # An offset past the end (the file shrank since the guest's .part) is not refused: the
        # host answers from offset 0 and the guest starts again (issue 17, finding 8).
        if problem is not None:
            self._refuse(problem, now)
            return
        self._request(ServeFile(msg.name, msg.offset), msg.name, now)

    def _on_bye(self, msg: Bye, now: float) -> None:
        self._finish()

    def _request(self, serve: ServeListing | ServeFile, name: str | None, now: float) -> None:
        if self._find is None:
            self._refuse("this host shares no folder", now)
            return
        what = "list" if isinstance(serve, ServeListing) else "get"
        try:
            ask = self.policy.needs_prompt(what, now)
        except ExpiredError as exc:
            self._end_expired(exc)
            return
        self._pending = serve
        if ask:
            self.prompts += 1
            self.state = ASKING
            self._expect_by(None)  # a person's time is the runtime's to bound
            self._emit(AllowRequest(peer_name=self.peer_name, what=what, name=name))
        else:
            self._serve()

    def _on_answer(self, question: AllowRequest, scope: Scope, now: float) -> None:
        if not isinstance(scope, Scope):
            raise ProtocolError(f"the answer to a request is a Scope, not {scope!r}")
        try:  # the guest's access may have ended while the owner was asked (atk19f)
            self.policy.check_access(now)
        except ExpiredError as exc:
            self._end_expired(exc)
            return
        if self.policy.record(question.what, scope):
            self._serve()
        else:
            self._refuse("the owner refused the request", now)

    def _serve(self) -> None:
        assert self._pending is not None
        self.state = SERVING
        self._expect_by(None)
        self._emit(self._pending)

    def _refuse(self, reason: str, now: float, code: ErrorCode | None = None) -> None:
        self.refused += 1
        self._send(Refused(short_reason(reason), None if code is None else int(code)))
        self._wait(now)

    def _end_expired(self, exc: ExpiredError) -> None:
        """The guest's grant has ended: refuse this request saying so, and end the service.
        Waiting for its next request would keep its session, and its place among the host's
        sessions, for as long as it kept asking (attack review atk20c, finding 3)."""
        self.refused += 1
        self.expired = True
        self._send(Refused(short_reason(str(exc)), int(ErrorCode.EXPIRED)))
        self._finish()

    def _wait(self, now: float) -> None:
        self._pending = None
        self.state = WAITING
        self._expect_by(now + self._idle, f"the guest sent nothing for {self._idle:.0f} s")


# -- the guest's side ------------------------------------------------------------------------


class FileList(Machine):
    """Ask for the listing; :attr:`files` once done."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (WAITING, Listing): step("_on_listing", DONE),
        (WAITING, Refused): step("_on_refused", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({WAITING})

    def __init__(self, *, timeout: float = ANSWER_TIME) -> None:
        super().__init__(initial_state="new")
        self._timeout = timeout
        self.files: tuple[FileEntry, ...] = ()
        #: files the host left out of the listing (its limits), and those with over-long names
        self.more = 0
        self.long_names = 0
        #: why the fetch gave nothing: the host refused, or the file arrived damaged (the
        #: machine is done and the session goes on)
        self.refusal: RefusedError | AuthenticationError | None = None

    def _on_start(self, now: float) -> None:
        self._send(ListRequest())
        self.state = WAITING
        self._expect_by(now + self._timeout, "the host did not answer the listing request")

    def _on_listing(self, msg: Listing, now: float) -> None:
        self.files = msg.files
        self.more, self.long_names = msg.more, msg.long_names
        self._finish()

    def _on_refused(self, msg: Refused, now: float) -> None:
        # A refusal is an answer, not a failure: the session goes on (no Abort to the host).
        self.refusal = RefusedError(f"the host refused the listing: {msg.reason}")
        self._finish()


@dataclasses.dataclass(frozen=True)
class Restart(Event):
    """The host's file is shorter than what the guest kept: empty the partial file (§13)."""

    hook: ClassVar[str] = "restart"
    kept: int


@dataclasses.dataclass(frozen=True)
class Write(Event):
    """Append ``data`` to the partial file (it belongs at ``offset``)."""

    hook: ClassVar[str] = "write"
    offset: int
    data: bytes

    def __repr__(self) -> str:
        return f"Write(offset={self.offset}, {len(self.data)} bytes)"


@dataclasses.dataclass(frozen=True)
class Check(Event):
    """Everything arrived: hash the partial file and give the digest to :meth:`FileFetch.verify`."""

    hook: ClassVar[str] = "check"
    size: int


HEADER = "header"
BODY = "body"
CHECKING = "checking"


class FileFetch(Machine):
    """Fetch one file from ``offset`` (what the guest already holds of it)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (HEADER, FileHeader): step("_on_header", BODY, CHECKING),
        (HEADER, Refused): step("_on_refused", DONE),
        (BODY, Chunk): step("_on_chunk", BODY, CHECKING),
        (BODY, Refused): step("_on_refused", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({HEADER})

    def __init__(
        self, name: str, offset: int = 0, *, timeout: float = ANSWER_TIME,
        chunk_timeout: float = CHUNK_TIME, listed: int | None = None, room: int | None = None,
    ) -> None:
        """``listed``: the size the host's listing gave (``get --all`` fetches what was
        listed): a header announcing more is refused.  ``room``: the bytes free where the file
        is saved, the ``offset`` bytes kept so far not counted: a file that would not fit is
        refused.  Both at the header, before anything is written (attack review atk19f)."""
        super().__init__(initial_state="new")
        if offset < 0:
            raise ProtocolError("a fetch starts at offset 0 or later")
        self.name = name
        self.offset = offset
        self._listed = listed
        self._room = room
        self._timeout = timeout
        self._chunk_timeout = chunk_timeout
        #: the host's header, once it came
        self.header: FileHeader | None = None
        #: bytes held so far (offset included)
        self.received = offset
        #: why the fetch gave nothing: the host refused, or the file arrived damaged (the
        #: machine is done and the session goes on)
        self.refusal: (
            RefusedError | AuthenticationError | NotFoundError | BusyError | None) = None
        #: what the guest had kept when the host said the file is now shorter (restarted at 0)
        self.restarted_from: int | None = None

    def _on_start(self, now: float) -> None:
        self._send(GetRequest(self.name, self.offset))
        self.state = HEADER
        self._expect_by(now + self._timeout, f"the host did not answer the request for "
                                             f"{self.name!r}")

    def verify(self, digest: bytes, now: float) -> None:
        """The SHA-256 of the whole partial file, as the runtime computed it."""
        self._check_usable()
        if self.state != CHECKING or self.header is None:
            raise ProtocolError("the file is not complete yet")
        if not same(digest, self.header.sha256):
            # The channel authenticated every chunk: the file changed on the host while it was
            # sent.  The guest may ask again, so the session goes on (no Abort).
            self.refusal = AuthenticationError(
                f"{self.name!r} changed on the host while it was sent, or arrived damaged "
                "(SHA-256 mismatch); fetch it again"
            )
        self._finish()

    def _on_header(self, msg: FileHeader, now: float) -> None:
        if msg.name != self.name:
            raise ProtocolError("the host answered with another file")
        if self._listed is not None and msg.size > self._listed:
            raise GrownFileError(
                f"the host announced {msg.size} bytes for {self.name!r} and listed it as "
                f"{self._listed} bytes; not fetched (fetch it by name if it grew)"
            )
        # The file shrank on the host since the partial copy was made: start again (§13).
        again = msg.offset == 0 and msg.size < self.offset
        if self._room is not None:
            # Started again at 0, the bytes kept so far are freed first.
            needed = msg.size if again else msg.size - self.offset
            free = self._room + (self.offset if again else 0)
            if needed > free:
                too_large = TooLargeError(
                    f"{self.name!r} needs {needed} more bytes and {free} are free where it is "
                    "saved; not fetched"
                )
                # the host is told no number: the free space tells one device from another
                # across hosts and identities (attack review atk19y, finding 1)
                too_large.peer_text = "the guest has no room for this file"
                raise too_large
        if again:
            self.restarted_from = self.offset
            self.offset = self.received = 0
            self._emit(Restart(self.restarted_from))
        elif msg.offset != self.offset or msg.size < self.offset:
            raise ProtocolError("the host answered with another file or offset")
        self.header = msg
        self._next(now)

    def _on_refused(self, msg: Refused, now: float) -> None:
        if msg.code == ErrorCode.NOT_FOUND:
            self.refusal = NotFoundError(f"the host has no shared file called {self.name!r}")
        elif msg.code == ErrorCode.BUSY:  # "busy hashing ...; try again in N s"
            self.refusal = BusyError(f"the host refused {self.name!r}: {msg.reason}")
        else:
            self.refusal = RefusedError(f"the host refused {self.name!r}: {msg.reason}")
        self._finish()

    def _on_chunk(self, msg: Chunk, now: float) -> None:
        assert self.header is not None
        end = msg.offset + len(msg.data)
        if msg.offset != self.received or not msg.data or end > self.header.size:
            raise ProtocolError("a chunk arrived out of place")
        self._emit(Write(msg.offset, msg.data))
        self.received = end
        self._next(now)

    def _next(self, now: float) -> None:
        assert self.header is not None
        if self.received < self.header.size:
            self.state = BODY
            self._expect_by(now + self._chunk_timeout, f"the host stopped sending {self.name!r}")
        else:
            self.state = CHECKING
            self._expect_by(None)
            self._emit(Check(self.header.size))

    @property
    def complete(self) -> bool:
        return self.state == DONE
