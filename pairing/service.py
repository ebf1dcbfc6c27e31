"""Service provision over the secure channel (DESIGN.md step 6): messages and the grant policy.

After pairing, the host first sends a :class:`Membership` saying what the guest is to it (and,
to a new member, the cloud secret and member list); then the guest sends requests and the host
answers each:

====================  =====================================================================
guest sends           host answers
====================  =====================================================================
ListRequest           Listing (name, size, type of each shared file), or Refused
GetRequest(name, o)   FileHeader (size, SHA-256 of the whole file, offset o), Chunk..., or Refused
Bye                   (the host closes the channel)
====================  =====================================================================

Files stream in :class:`Chunk` records from the requested offset, so a transfer cut by a dropped
link resumes from the last chunk the guest verified and stored (each record is authenticated by
the channel; the whole file by its SHA-256 at the end).

:class:`GrantPolicy` decides when the owner is asked: a guest's first listing and each file
request prompt the owner ("allow once / for this session / refuse"); a session grant covers the
following requests of the same kind without a prompt; grants end with the session, and a guest's
access ends at its expiry (time is passed in, never read).  Members are not prompted.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import ClassVar

from .cloud import Role
from .errors import ExpiredError
from .machine import Question
from .wire import Message, field, message, struct

CHUNK = 16 * 1024
MAX_FILES = 500


@struct
class FileEntry(Message):
    name: str = field(2, max_len=255)
    size: int = field(3)
    type: str = field(4, max_len=64)


@struct
class Member(Message):
    device_id: bytes = field(2, size=16)
    name: str = field(3, max_len=64)


@message(type_id=40, max_size=64 * 1024)
class Membership(Message):
    """Host -> guest, first on the channel: the guest's role, and the cloud for a new member."""

    role: Role = field(2)
    expires: int | None = field(3, default=None)  #: Unix seconds, for guests
    cloud_id: str | None = field(4, max_len=64, default=None)
    cloud_name: str | None = field(5, max_len=64, default=None)
    secret: bytes | None = field(6, size=32, default=None)
    members: tuple[Member, ...] = field(7, max_len=64, default=())


@message(type_id=41, max_size=64)
class ListRequest(Message):
    pass


@message(type_id=42, max_size=64 * 1024)
class Listing(Message):
    files: tuple[FileEntry, ...] = field(2, max_len=MAX_FILES, default=())


@message(type_id=43, max_size=512)
class GetRequest(Message):
    name: str = field(2, max_len=255)
    offset: int = field(3, default=0)


@message(type_id=44, max_size=512)
class FileHeader(Message):
    name: str = field(2, max_len=255)
    size: int = field(3)
    sha256: bytes = field(4, size=32)
    offset: int = field(5)


@message(type_id=45, max_size=CHUNK + 64)
class Chunk(Message):
    offset: int = field(2)
    data: bytes = field(3, max_len=CHUNK)


@message(type_id=46, max_size=512)
class Refused(Message):
    reason: str = field(2, max_len=200)


@message(type_id=47, max_size=64)
class Bye(Message):
    pass


class Scope(Enum):
    """The owner's answer to a request."""

    ONCE = "once"
    SESSION = "session"
    REFUSE = "refuse"


@dataclasses.dataclass(frozen=True)
class AllowRequest(Question):
    """Ask the owner about a guest's request: answer a :class:`Scope`."""

    hook: ClassVar[str] = "allow_request"
    peer_name: str
    what: str  #: "list" or "get"
    name: str | None = None


class GrantPolicy:
    """Per-session grants for one guest (see the module docstring)."""

    def __init__(self, role: Role, *, expires: float | None = None) -> None:
        self.role = role
        self.expires = expires
        self._session: set[str] = set()

    def check_access(self, wall_now: float) -> None:
        if self.role is Role.GUEST and self.expires is not None and wall_now >= self.expires:
            raise ExpiredError("your guest access has expired; ask the owner again")

    def needs_prompt(self, what: str, wall_now: float) -> bool:
        """Whether the owner must be asked for this request (after :meth:`check_access`)."""
        self.check_access(wall_now)
        if self.role is Role.MEMBER:
            return False
        return what not in self._session

    def record(self, what: str, scope: Scope) -> bool:
        """Record the owner's answer; True if the request is allowed."""
        if scope is Scope.SESSION:
            self._session.add(what)
        return scope is not Scope.REFUSE
