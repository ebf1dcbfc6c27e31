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
from collections.abc import Collection, Mapping
from enum import Enum
from typing import ClassVar

from cryptography.exceptions import InvalidSignature

from . import keyschedule
from .cloud import Role
from .crypto import NO_SIGNING_KEY, ed25519_public, same
from .errors import AuthenticationError, ExpiredError, ProtocolError
from .machine import Event, Question
from .wire import Message, field, message, one_line, struct

CHUNK = 16 * 1024
MAX_FILES = 500
#: the longest name a shared file may have, in characters (FileEntry, GetRequest, FileHeader;
#: docs/protocol.md §13): longer ones are left out of listings and cannot be asked for
MAX_NAME = 255
#: ... and at most this many bytes in UTF-8, so that every message quoting it fits (§13)
MAX_NAME_BYTES = 400


def name_fits(name: str) -> bool:
    """Whether ``name`` is within the limits of a shared file's name (docs/protocol.md §13)."""
    return len(name) <= MAX_NAME and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES


@struct
class FileEntry(Message):
    name: str = field(2, max_len=MAX_NAME)
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
    secret: bytes | None = field(6, size=32, default=None, secret=True)
    members: tuple[Member, ...] = field(7, max_len=64, default=())
    #: the owner's Ed25519 signature over :func:`membership_statement` (new members only)
    signature: bytes | None = field(8, size=64, default=None)
    #: the host's BLE identity resolving key (Core 5.4 Vol 3 Part H §2.4.2.1), for members
    #: only: with it a member tells that the host's resolvable private addresses are one
    #: device (docs/protocol.md §10, docs/security.md "Recognising a host across addresses")
    irk: bytes | None = field(9, size=16, default=None, secret=True)
    #: the cloud secret's epoch (how many times its owner renewed it), with a secret only;
    #: absent for 0 (docs/protocol.md §10, docs/security.md "Renewing the cloud secret")
    epoch: int | None = field(10, default=None)


def cloud_id_of(owner_device_id: bytes) -> str:
    """A cloud's id, bound to its owner: the first 8 bytes of the owner's device id (itself
    SHA-256 of the owner's static key), in hex.  Only the device whose proven key hashes to
    it can hand out memberships of that cloud (docs/security.md, rule 3)."""
    return owner_device_id[:8].hex()


def membership_statement(m: Membership, member_id: bytes, session_fingerprint: str) -> bytes:
    """What the owner signs when it makes ``member_id`` a member: the whole membership but its
    signature, the new member's id and the session it was handed out in."""
    body = dataclasses.replace(m, signature=None).encode()
    return (
        keyschedule.MEMBERSHIP + len(body).to_bytes(4, "big") + body + member_id
        + session_fingerprint.encode()
    )


@dataclasses.dataclass(frozen=True)
class CloudRenewal:
    """A checked renewal of a cloud this device holds as a member: store ``epoch``'s secret in
    place of the one held (rule 3's one exception, docs/security.md)."""

    cloud_id: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class CloudBehind(Event):
    """The cloud's owner sent this member an older secret of the cloud than the one it holds
    (its keystore put back from a backup, or a renewal this member took was not its): nothing
    is stored, and the session goes on; its person is told, with the epochs only (attack
    review atk18b, finding 3).  ``host_name`` is filled in by the runtime."""

    cloud_id: str
    cloud_name: str
    held_epoch: int
    offered_epoch: int
    host_name: str = ""

    @property
    def text(self) -> str:
        who = self.host_name or "the cloud's owner"
        return (
            f"{who} sent an older secret of {self.cloud_name!r} (epoch {self.offered_epoch}) "
            f"than this device holds (epoch {self.held_epoch}); this device keeps its own. "
            "Its keystore may have been put back from a backup; if not, this device's copy "
            "may not be its owner's: ask its owner"
        )


@dataclasses.dataclass(frozen=True)
class JoinCloud(Question):
    """A host made this device a member of its cloud: store it?  Answer True to join."""

    hook: ClassVar[str] = "join_cloud"
    cloud_name: str
    host_name: str


def check_membership(
    m: Membership,
    *,
    host_id: bytes,
    host_signing: bytes,
    me: bytes,
    session_fingerprint: str,
    held: Collection[str],
    proven: str | None = None,
    member_epochs: Mapping[str, int] | None = None,
    member_names: Mapping[str, str] | None = None,
    member_owners: Mapping[str, bytes] | None = None,
    member_owner_signing: Mapping[str, bytes] | None = None,
    verdict: Role | None = None,
) -> JoinCloud | CloudRenewal | CloudBehind | None:
    """What a guest may do with a host's :class:`Membership` (docs/security.md, rules 2, 3).

    Returns the question to ask this device's user when the membership carries a cloud to
    join, ``None`` when there is nothing to store.  Raises :class:`AuthenticationError` for a
    membership that tries to plant or take a cloud: a secret with a guest grant, a cloud id
    not bound to the host that pairs, a bad owner signature, or a cloud this device holds (but
    for a renewal, below); and :class:`ProtocolError` for an address key (``irk``) with a guest
    grant (members only: docs/protocol.md §10).

    A secret of a cloud this device holds is a *renewal* (rule 3's one exception), returned as
    a :class:`CloudRenewal` (the secret and the epoch; nothing else is taken): only for a cloud
    held as a member (``member_epochs``: the clouds held as a member, with the epoch held;
    ``member_names``: the names they are held under), bound to the host, with a higher epoch,
    the owner's signature, and no other name than the one held.  So whether or not this
    device's cloud proof counted: a member back with a secret its owner no longer keeps is
    asked about as a stranger, and the owner's yes (a new member's membership) renews it
    (docs/security.md "Renewing the cloud secret"; atk16b finding 2).  The host must also be,
    by its full device id, the owner the cloud was joined from (``member_owners``: the clouds
    held as a member whose owner's id was kept at the join), with the proof or without it: the
    cloud id is only 8 bytes of it, and the secret the proof shows is every member's (atk17
    finding 1).  A cloud joined before that id was kept is renewed only with the proof;
    without it, whatever is sent for it is nothing to store (``None``: atk17 finding 3).
    A secret at the epoch held or an older one is nothing to store either (``None``), once
    every other check of a renewal has passed: the owner's device sends it to a member that did
    not prove its cloud (one past the 8 it hints, let in as a new member: atk17 finding 4) and
    after its keystore was put back from a backup (atk18 finding 1); the secret sent is never
    compared with the one held (no oracle).  An older epoch than the one held is returned as a
    :class:`CloudBehind` for this device's person to be told (atk18b finding 3).

    ``proven``: the cloud this device proved in the cloud step (it came back as a member).  A
    secret is then only that cloud's renewal: anything else with a secret is refused.

    ``verdict``: the role the host's JoinVerdict gave, which this device's person was shown;
    the Membership must give the same, or it is a :class:`ProtocolError` before anything else
    (a host said "guest" and then sent a member's secret, which a guest that says yes to every
    cloud would join; or the reverse: atk20c, fixed in session 20).  None when no verdict came
    (a member back by its cloud proof, whose owner may answer "guest" after the pairing when
    the proof was made with a retired secret).
    """
    if verdict is not None and m.role is not verdict:
        raise ProtocolError(
            f"the host's membership makes this device a {m.role.name.lower()}, but its answer "
            f"to the join request said {verdict.name.lower()}"
        )
    if m.irk is not None and m.role is not Role.MEMBER:
        raise ProtocolError("a guest grant carries no address key (members only)")
    if m.secret is None:
        if m.cloud_name is not None or m.members or m.signature is not None \
                or m.epoch is not None:
            raise ProtocolError("a membership without a cloud secret names no cloud to join")
        if m.role is Role.GUEST and m.cloud_id is not None:
            raise ProtocolError("a guest grant names no cloud")
        return None
    if m.role is not Role.MEMBER:
        raise AuthenticationError("the host sent a cloud secret with a guest grant; refused")
    if m.cloud_id is None or m.cloud_id != cloud_id_of(host_id):
        raise AuthenticationError(
            "the host offered a cloud that is not its own (a cloud's id is bound to its owner)"
        )
    if proven is not None and m.cloud_id != proven:
        # Back as a member of ``proven``: the only secret it may be sent is that cloud's renewed
        # one, never a cloud to join that it did not ask for.
        raise AuthenticationError(
            "the host sent a cloud secret for another cloud than the one this device proved"
        )
    if same(host_signing, NO_SIGNING_KEY):
        # This device's record of the host holds no signing key (a resume shows none): no
        # signature can be checked, so nothing is taken; said as such, not as a bad key
        # (session 20: it read as a small-order key, or as a copy of the owner's device key).
        raise AuthenticationError(
            "this device knows the host by no signing key (its record of the host holds "
            "none), so the cloud secret it sent cannot be checked and is refused; pair with it "
            "again by PIN or QR code, which records the key it shows"
        )
    renewal = proven is not None or m.cloud_id in held
    if renewal:
        epochs = member_epochs or {}
        if m.cloud_id not in epochs:
            raise AuthenticationError(
                "the host offered to renew a cloud this device does not hold as a member"
                if proven is not None else
                "the host offered a cloud this device already holds; it is never overwritten"
            )
        # The owner's full id, kept at the join, binds every renewal (a second preimage of the
        # cloud id's 64 bits would do else).  The host's proof of the cloud does not stand in
        # for it: every member knows the secret, and a forgotten one knows the secret the
        # members not renewed yet hold (attack review atk17, finding 1).
        owner = (member_owners or {}).get(m.cloud_id)
        if owner is None and proven is None:
            # Joined before the owner's id was kept, and no proof counted: only the cloud id's
            # 64 bits bind this host to the owner, so nothing is taken, and the session goes on
            # on the secret held (attack review atk17, finding 3: refusing cut a member that
            # missed more renewals than are kept off from its owner's device).  Nothing sent is
            # looked at, so this tells a host nothing of the secret held; what it gets, a
            # session with no cloud stored, it gets from any membership without a secret.
            return None
        if owner is not None and owner != host_id:
            raise AuthenticationError(
                "the host offered a cloud this device already holds but is not the owner "
                "this device joined it from (only the cloud's id is the same); it is never "
                "overwritten"
            )
        # And by the signing key that owner showed at the join, kept with the cloud: a device
        # id binds the static key alone, so a holder of the owner's static key but not its
        # signing key is refused here even where no peer record pins the key (the member
        # forgot the owner: attack review atk18c, finding 3).
        kept = (member_owner_signing or {}).get(m.cloud_id)
        if kept is not None and not same(kept, host_signing):
            # No pairkit changes a device's signing key without its device key (a new identity
            # is a new device id, so a new cloud): what a person can do is tell the owner.
            # This device has no command that leaves a cloud (renew19 item 4).
            raise AuthenticationError(
                "the host proved the cloud owner's device key but signs with another key than "
                "the owner this device joined the cloud from (someone may hold a copy of the "
                "owner's device key); refused, and the cloud is kept as this device holds it, "
                "renewed by its owner's own device: forgetting the owner here (`pairkit "
                "forget`) does not change that. Tell the cloud's owner: a device whose key was "
                "copied makes a new identity (`pairkit init --force`), with a new cloud to join"
            )
        offered = m.epoch or 0  # absent for a secret never renewed
        if m.cloud_name is not None and m.cloud_name != (member_names or {}).get(m.cloud_id):
            # Only the secret and the epoch change: a renewal is not half taken.
            raise AuthenticationError(
                "the host's cloud renewal names the cloud otherwise than this device holds it"
            )
    if m.signature is None:
        raise AuthenticationError("the host's membership is not signed by the cloud's owner")
    # A small-order key: refused, as no signature by it means anything (docs/security.md
    # rule 1); a host known by no key was refused above.
    key = ed25519_public(host_signing, "the host's")
    try:
        key.verify(
            m.signature, membership_statement(m, me, session_fingerprint)
        )
    except (InvalidSignature, ValueError):
        raise AuthenticationError("the membership's owner signature does not verify") from None
    if renewal:
        # The owner's own secret at the epoch held or an older one, signed for this member and
        # this session: its keystore put back from a backup behind the member (atk18 finding
        # 1), or a member that did not prove its cloud (one of more than the 8 it hints) let in
        # as new and sent what it holds (atk17 finding 4).  Nothing to store and nothing
        # refused: the session goes on.  The secret sent is never looked at, so no host learns
        # whether one it sends is the one held (atk17b).  Behind the member, its person is
        # told (atk18b finding 3).
        if offered < epochs[m.cloud_id]:
            return CloudBehind(cloud_id=m.cloud_id,
                               cloud_name=(member_names or {}).get(m.cloud_id, "a cloud"),
                               held_epoch=epochs[m.cloud_id], offered_epoch=offered)
        if m.epoch is None or offered <= epochs[m.cloud_id]:
            return None
        return CloudRenewal(cloud_id=m.cloud_id, epoch=offered)
    # the host's word, signed as it came: asked about one line (atk21b finding B)
    return JoinCloud(cloud_name=one_line(m.cloud_name or "a cloud"), host_name="")


@message(type_id=41, max_size=64)
class ListRequest(Message):
    pass


@message(type_id=42, max_size=64 * 1024)
class Listing(Message):
    files: tuple[FileEntry, ...] = field(2, max_len=MAX_FILES, default=())
    #: shared files left out: past MAX_FILES or the message's size limit (§13)
    more: int = field(3, default=0)
    #: shared files left out because their names are over MAX_NAME (they cannot be fetched)
    long_names: int = field(4, default=0)


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
    reason: str = field(2, max_len=200, one_line=True)
    #: why, as an :class:`~pairing.errors.ErrorCode` when it is not "the owner said no":
    #: NOT_FOUND for a name the shared folder does not hold (absent: a refusal)
    code: int | None = field(3, default=None)


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
