"""What the keystore remembers, as values: known peers, what may be shown of a cloud, device ids
and fingerprints (DESIGN.md "Identification", "Known peers reconnect").

Every record is checked when it is made and deep-frozen, so what is stored is what a CBOR round
trip gives back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from .. import cbor
from ..crypto import check_ed25519_public
from ..errors import ConfigError, DecodeError, NotFoundError, UnusableKeyError
from ..wire import has_control, one_line

__all__ = [
    "MAX_NAME_LENGTH",
    "CloudInfo",
    "Peer",
    "PnEntry",
    "PnRecord",
    "clean_name",
    "device_id_of",
    "fingerprint_of",
    "thaw",
]

MAX_NAME_LENGTH: Final = 64


def device_id_of(static_public: bytes) -> str:
    """A device's id: the first 16 bytes of SHA-256 of its X25519 public key, in lowercase hex."""
    _check_public_key(static_public, "X25519")
    return hashlib.sha256(static_public).digest()[:16].hex()


def fingerprint_of(static_public: bytes) -> str:
    """A device's fingerprint for people to compare: all of SHA-256 of its X25519 public key, as
    16 groups of 4 hex digits (``ab12-cd34-...``).  Its first 8 groups are the device id."""
    _check_public_key(static_public, "X25519")
    digest = hashlib.sha256(static_public).hexdigest()
    return "-".join(digest[i : i + 4] for i in range(0, len(digest), 4))


# ---------------------------------------------------------------------------------------------
# CBOR-able values, frozen


def _freeze(value: Any, what: str, depth: int = 0) -> Any:
    """Check that ``value`` is plain CBOR data and return a read-only copy (tuples, read-only
    mappings).  Only types that survive a CBOR round trip are allowed, so what is stored is what
    comes back."""
    if depth > 32:
        raise ConfigError(f"{what} is nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{what} must not contain NaN or infinity")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item, what, depth + 1) for item in value)
    if isinstance(value, Mapping):
        frozen: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise ConfigError(f"{what} may only have text or integer map keys")
            frozen[key] = _freeze(item, what, depth + 1)
        return MappingProxyType(frozen)
    raise ConfigError(f"{what} must be plain CBOR data, not {type(value).__name__}")


def thaw(value: Any) -> Any:
    """A stored value as plain data again (tuples to lists, read-only maps to dicts): the
    inverse of :func:`_freeze`, for encoding (the keystore's body, the lock records)."""
    if isinstance(value, tuple | list):
        return [thaw(item) for item in value]
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    return value


def _check_public_key(key: object, kind: str) -> None:
    if not isinstance(key, bytes) or len(key) != 32:
        raise DecodeError(f"an {kind} public key must be 32 bytes")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} must be a non-empty text")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if has_control(name):
        raise ConfigError(f"{what} must not contain control characters")
    return name


def _check_time(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite, non-negative number of seconds")


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Peer:
    """A device we know (DESIGN.md "Identification", "Known peers reconnect").

    ``id`` is the peer's device id and must match ``static_public`` (see :func:`device_id_of`).
    ``first_seen``/``last_seen`` are seconds as the caller's clock gives them (the keystore reads
    no clock).  ``their_prekeys`` are prekey records the peer gave us, ``our_prekeys`` the ones we
    gave the peer; both are opaque CBOR records for the resume protocol to define, as is ``extra``.
    Every CBOR-able field is deep-frozen (lists become tuples, maps read-only mappings).
    ``our_prekeys`` is left out of ``repr`` since it may hold private prekey material.
    ``irk`` is the peer's BLE identity resolving key, when the peer gave it to us (a host
    gives it to the members of its cloud: docs/security.md "Recognising a host across its
    addresses"); with it this device can tell that two of the peer's resolvable private
    addresses are one device.  Left out of ``repr``: it lets whoever holds it follow the peer.
    """

    id: str
    name: str
    static_public: bytes
    signing_public: bytes | None = None
    authenticated: bool = False
    method: str = ""
    first_seen: float = 0
    last_seen: float = 0
    their_prekeys: tuple[Any, ...] = ()
    our_prekeys: tuple[Any, ...] = field(default=(), repr=False)
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    irk: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_public_key(self.static_public, "X25519")
        if self.irk is not None and (not isinstance(self.irk, bytes) or len(self.irk) != 16):
            raise ConfigError("a peer's identity resolving key must be 16 bytes")
        if self.signing_public is not None:
            _check_public_key(self.signing_public, "Ed25519")
            check_ed25519_public(self.signing_public, "a peer's")
        if not isinstance(self.id, str) or self.id != device_id_of(self.static_public):
            raise ConfigError("the peer's id does not match its X25519 public key")
        _check_name(self.name, "a peer's name")
        if not isinstance(self.authenticated, bool):
            raise ConfigError("'authenticated' must be true or false")
        if not isinstance(self.method, str):
            raise ConfigError("a peer's pairing method must be text")
        _check_time(self.first_seen, "first_seen")
        _check_time(self.last_seen, "last_seen")
        for name in ("their_prekeys", "our_prekeys"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{name} must be a list of records")
            object.__setattr__(self, name, _freeze(value, name))
        if not isinstance(self.extra, Mapping) or not all(isinstance(k, str) for k in self.extra):
            raise ConfigError("a peer's 'extra' must be a map with text keys")
        object.__setattr__(self, "extra", _freeze(self.extra, "extra"))

    @classmethod
    def new(
        cls,
        name: str,
        static_public: bytes,
        *,
        signing_public: bytes | None = None,
        authenticated: bool = False,
        method: str = "",
        now: float = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> Peer:
        """A peer first seen at ``now``, its id computed from ``static_public``."""
        return cls(
            id=device_id_of(static_public),
            name=name,
            static_public=static_public,
            signing_public=signing_public,
            authenticated=authenticated,
            method=method,
            first_seen=now,
            last_seen=now,
            extra=extra if extra is not None else {},
        )

    @property
    def fingerprint(self) -> str:
        """The peer's fingerprint (see :func:`fingerprint_of`)."""
        return fingerprint_of(self.static_public)

    def _to_cbor(self) -> dict[str, Any]:
        # The record is immutable, so its CBOR map is made once: a host that saves its
        # keystore after every pairing re-encodes every peer it knows (issue 13).  Only
        # Keystore._body reads it, and it does not change it.
        cached: dict[str, Any] | None = self.__dict__.get("_cbor")
        if cached is None:
            cached = self._make_cbor()
            object.__setattr__(self, "_cbor", cached)
        return cached

    def _encoded(self) -> bytes:
        """:meth:`_to_cbor` in canonical CBOR, made once per record."""
        cached: bytes | None = self.__dict__.get("_cbor_bytes")
        if cached is None:
            cached = cbor.encode(self._to_cbor())
            object.__setattr__(self, "_cbor_bytes", cached)
        return cached

    def _make_cbor(self) -> dict[str, Any]:
        # "irk" only when there is one: a record without it encodes as before (and an
        # earlier pairkit, which reads only the keys it knows, still opens the keystore).
        irk = {} if self.irk is None else {"irk": self.irk}
        return irk | {
            "id": self.id,
            "name": self.name,
            "x25519": self.static_public,
            "ed25519": self.signing_public,
            "auth": self.authenticated,
            "method": self.method,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "their_prekeys": thaw(self.their_prekeys),
            "our_prekeys": thaw(self.our_prekeys),
            "extra": thaw(self.extra),
        }

    @classmethod
    def _from_cbor(cls, data: Any) -> Peer:
        signing = data["ed25519"]
        if isinstance(signing, bytes) and len(signing) == 32:
            try:
                check_ed25519_public(signing, "a peer's")
            except UnusableKeyError:
                # A key of small order an older pairkit stored (a resume's all-zero
                # stand-in: attack review atk18c, finding 1) pins nothing and verifies
                # nothing: read as no key, so the keystore still opens and the device's next
                # full pairing gives its own (docs/security.md rule 1).
                signing = None
        return cls(
            id=data["id"],
            name=data["name"],
            static_public=data["x25519"],
            signing_public=signing,
            authenticated=data["auth"],
            method=data["method"],
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            their_prekeys=data["their_prekeys"],
            our_prekeys=data["our_prekeys"],
            extra=data["extra"],
            irk=data.get("irk"),
        )


@dataclass(frozen=True)
class CloudInfo:
    """What may be shown about a personal cloud we belong to; the secret itself stays inside the
    keystore (use :meth:`Keystore.cloud_mac` and :meth:`Keystore.cloud_kdf`)."""

    cloud_id: str
    name: str
    role: str
    expires: float | None = None
    #: how many times the cloud's secret was renewed (docs/security.md "Renewing the cloud
    #: secret"); 0 for the secret it was made with
    epoch: int = 0
    #: the full device id (hex) of the owner a cloud held as a member was joined from: what
    #: binds a renewal made without this device's proof (docs/security.md, rule 3); None when
    #: not kept (owned clouds, clouds joined before it was kept)
    owner: str | None = None
    #: that owner's Ed25519 signing key, as it showed it at the join: the one key a renewal
    #: must be signed by (docs/security.md, rules 1 and 3); None when not kept
    owner_signing: bytes | None = None


# ---------------------------------------------------------------------------------------------
# Personal networks (OMA CPNS PN establishment; issue 14)

PN_ROLES: Final = ("gateway", "member")
PN_SETUPS: Final = ("1-1", "all", "invited")
PN_KEY_SOURCES: Final = ("local_eukey", "preassigned")
_MAX_PN_ENTRIES: Final = 64


def clean_name(name: object, fallback: str = "(no name)") -> str:
    """A name a peer gave, made fit to store and to print on one line: control characters,
    line separators and bidirectional controls become spaces, it is cut to
    :data:`MAX_NAME_LENGTH` characters, and an empty one becomes ``fallback`` (atk20r 1: a
    name with a line break forged a line of ``pairkit ttp list``)."""
    text = one_line(str(name)).strip()[:MAX_NAME_LENGTH].strip()
    return text or fallback


def _check_hex_id(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 32 or not all(
        c in "0123456789abcdef" for c in value
    ):
        raise ConfigError(f"{what} must be 32 lowercase hex digits")
    return value


def _check_optional_text(value: object, what: str, limit: int = 200) -> None:
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise ConfigError(f"{what} must be a text of at most {limit} characters")


@dataclass(frozen=True)
class PnEntry:
    """One PNE in a stored PN: a member (with its link key and route, on the gateway), or one
    that failed (``reason``) or declined.  ``link_key`` is left out of ``repr``."""

    pne_id: str
    name: str
    caps: int = 0
    key_source: str | None = None
    link_key: bytes | None = field(default=None, repr=False)
    #: the gateway's routing table: where this member's link was last up (a transport address)
    route: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_hex_id(self.pne_id, "a PNE id")
        _check_name(self.name, "a PNE's name")
        caps = self.caps
        if isinstance(caps, bool) or not isinstance(caps, int) or not 0 <= caps < 256:
            raise ConfigError("a PNE's capabilities must be a small non-negative integer")
        if self.key_source is not None and self.key_source not in PN_KEY_SOURCES:
            raise ConfigError(f"a link key source is one of {', '.join(PN_KEY_SOURCES)}")
        if self.link_key is not None and (not isinstance(self.link_key, bytes)
                                          or len(self.link_key) != 32):
            raise ConfigError("a link key must be 32 bytes")
        _check_optional_text(self.route, "a route")
        _check_optional_text(self.reason, "a reason")

    def _to_cbor(self) -> dict[str, Any]:
        return {"id": self.pne_id, "name": self.name, "caps": self.caps,
                "source": self.key_source, "key": self.link_key, "route": self.route,
                "reason": self.reason}

    @classmethod
    def _from_cbor(cls, data: Any) -> PnEntry:
        return cls(data["id"], data["name"], data["caps"], data["source"], data["key"],
                   data["route"], data["reason"])


@dataclass(frozen=True)
class PnRecord:
    """A personal network as one device keeps it (DESIGN.md: OMA CPNS PN inventory and
    routing).

    On the gateway (``role="gateway"``): the PN inventory, its members with their link keys and
    routes (the routing table, ``pn_id -> pne_id -> route``), and the PNEs that failed or
    declined.  On a PNE (``role="member"``): the PN it belongs to, the gateway's address, the
    members the gateway listed and its own link key.  ``link_key`` is left out of ``repr``.
    """

    pn_id: str
    role: str
    gw_id: str
    gw_name: str
    setup: str
    members: tuple[PnEntry, ...] = ()
    failed: tuple[PnEntry, ...] = ()
    declined: tuple[PnEntry, ...] = ()
    #: a member's own link key and its source
    link_key: bytes | None = field(default=None, repr=False)
    key_source: str | None = None
    #: a member's way to its gateway (the transport address it joined through)
    gateway: str | None = None
    updated: float = 0

    def __post_init__(self) -> None:
        _check_hex_id(self.pn_id, "a PN id")
        _check_hex_id(self.gw_id, "a gateway id")
        if self.role not in PN_ROLES:
            raise ConfigError("a PN record's role is 'gateway' or 'member'")
        _check_name(self.gw_name, "a gateway's name")
        if self.setup not in PN_SETUPS:
            raise ConfigError(f"a PN setup type is one of {', '.join(PN_SETUPS)}")
        for name in ("members", "failed", "declined"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(e, PnEntry) for e in value):
                raise ConfigError(f"a PN record's {name} must be a tuple of PnEntry")
            if len(value) > _MAX_PN_ENTRIES:
                raise ConfigError(f"a PN record holds at most {_MAX_PN_ENTRIES} {name}")
        if self.link_key is not None and (not isinstance(self.link_key, bytes)
                                          or len(self.link_key) != 32):
            raise ConfigError("a link key must be 32 bytes")
        if self.key_source is not None and self.key_source not in PN_KEY_SOURCES:
            raise ConfigError(f"a link key source is one of {', '.join(PN_KEY_SOURCES)}")
        _check_optional_text(self.gateway, "a gateway's address")
        _check_time(self.updated, "updated")

    def member(self, id_or_name: str) -> PnEntry:
        """The member with this id (or unique id prefix of 8+ digits) or name."""
        key = id_or_name.strip()
        found = [m for m in self.members if m.pne_id == key.lower()]
        if not found:
            found = [m for m in self.members if m.name == key]
        if not found and len(key) >= 8:
            found = [m for m in self.members if m.pne_id.startswith(key.lower())]
        if len(found) != 1:
            raise NotFoundError(
                f"{'several members match' if found else 'no member of this PN is'} "
                f"{key!r}; see 'pairkit pn ls'"
            )
        return found[0]

    def _to_cbor(self) -> dict[str, Any]:
        return {
            "v": 1, "pn": self.pn_id, "role": self.role, "gw": self.gw_id,
            "gw_name": self.gw_name, "setup": self.setup,
            "members": [e._to_cbor() for e in self.members],
            "failed": [e._to_cbor() for e in self.failed],
            "declined": [e._to_cbor() for e in self.declined],
            "key": self.link_key, "source": self.key_source, "gateway": self.gateway,
            "updated": self.updated,
        }

    @classmethod
    def _from_cbor(cls, data: Any) -> PnRecord:
        try:
            if data["v"] != 1:
                raise DecodeError("a PN record of an unknown version")
            return cls(
                data["pn"], data["role"], data["gw"], data["gw_name"], data["setup"],
                tuple(PnEntry._from_cbor(e) for e in data["members"]),
                tuple(PnEntry._from_cbor(e) for e in data["failed"]),
                tuple(PnEntry._from_cbor(e) for e in data["declined"]),
                data["key"], data["source"], data["gateway"], data["updated"],
            )
        except (KeyError, TypeError) as exc:
            raise DecodeError(f"a stored PN record is malformed ({type(exc).__name__})") from None
