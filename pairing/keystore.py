"""The device's keystore: its identity, known peers, cloud secrets and group keys, sealed at rest.

DESIGN.md "Identification": each device has an identity (an X25519 static key and an Ed25519
signing key) in a local keystore sealed under a key derived from the owner's PIN or passphrase
with Argon2id (RFC 9106); keystores written by earlier versions with scrypt (RFC 7914) still
open, and are re-sealed with Argon2id on their next write.  The keystore plays the device's
*secure environment*: its API uses the private keys (Diffie-Hellman, signatures, HPKE
opening, group AEAD, cloud MACs) but never returns them.  The one deliberate exception is
:meth:`Keystore._static_private_for_handshake`, the internal door through which the Noise
handshake module receives the static private key.

File format (one file, ``keystore.pk``)::

    magic "PKKS" (4) | header length (2, big endian) | header | check (32) | body

* ``header`` is a canonical CBOR map (RFC 8949 §4.2.1) ``{1: format version, 2: "argon2id",
  3: memory (KiB), 4: iterations, 5: lanes, 6: salt (16), 7: nonce (12)}``, or, as earlier
  versions wrote it, ``{..., 2: "scrypt", 3: n, 4: r, 5: p, ...}``.  The parameters live in the
  file so that a later version can raise them (:meth:`Keystore.change_pin` accepts new ones).
* ``master = Argon2id(PIN, salt, memory, iterations, lanes)`` (RFC 9106 §3), or
  ``scrypt(PIN, salt, n, r, p)`` (RFC 7914 §6) for an earlier keystore; two subkeys are
  expanded from it with HKDF-Expand (RFC 5869 §2.3): a *check key* and a *body key*.

The default Argon2id cost is RFC 9106 §4's second recommended setting: 64 MiB of memory, 3
passes, 4 lanes.  It takes about 0.17 s on the machines pairkit is developed on and about 0.5 s
on a Raspberry Pi 4, which bounds an offline search of a stolen keystore file to a few guesses
per second per core and per 64 MiB; with the required 6 characters or more, a passphrase of
letters and digits is out of reach.  An earlier scrypt keystore is re-sealed the first time it
is written after being opened (its new Argon2id keys are derived when it is opened, while the
PIN is at hand; nothing else changes).
* ``check = HMAC-SHA256(check key, magic | length | header)``: a key-check value, so that a
  wrong PIN (check mismatch: :class:`WrongPinError`) is told apart from a damaged body (AEAD
  failure with the right PIN: :class:`KeystoreCorruptError`).  A damaged header reads as a wrong
  PIN, which is the best anyone can tell without the key.
* ``body`` is ChaCha20-Poly1305 (RFC 8439) under the body key and the header's nonce, with
  everything before it (magic to check) as associated data.  The plaintext is canonical CBOR.

Salt and nonce policy: the salt is drawn when the store is created and again on every
:meth:`~Keystore.change_pin`; a plain :meth:`~Keystore.save` keeps the salt (so the PIN need
not be kept in memory and scrypt need not run again) and draws a fresh 96-bit random nonce, which
is safe for far more saves than a keystore will ever see.

Writes are atomic (write a temporary file in the same directory, fsync, ``os.replace``, fsync the
directory); the file is created 0600 and its directory 0700.  Reading or failing to read never
changes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import cbor2
import platformdirs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import cbor
from .errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ExpiredError,
    KeystoreCorruptError,
    KeystoreError,
    NotFoundError,
    WrongPinError,
)

__all__ = [
    "DEFAULT_SCRYPT_N",
    "ENV_HOME",
    "FILE_NAME",
    "FORMAT_VERSION",
    "CloudInfo",
    "Keystore",
    "KeystoreNotFoundError",
    "Peer",
    "ScryptParams",
    "default_path",
    "device_id_of",
    "fingerprint_of",
    "seal_envelope",
]

Rng = Callable[[int], bytes]

FORMAT_VERSION: Final = 1
FILE_NAME: Final = "keystore.pk"
ENV_HOME: Final = "PAIRKIT_HOME"
DEFAULT_SCRYPT_N: Final = 2**15
DEFAULT_SCRYPT_R: Final = 8
DEFAULT_SCRYPT_P: Final = 1
#: RFC 9106 §4, second recommended option (64 MiB, t=3, p=4): about 0.5 s on a Pi 4
DEFAULT_ARGON2_MEMORY_KIB: Final = 64 * 1024
DEFAULT_ARGON2_ITERATIONS: Final = 3
DEFAULT_ARGON2_LANES: Final = 4
#: the cheapest Argon2id a keystore may use (tests and throwaway demo keystores choose it)
MIN_ARGON2_MEMORY_KIB: Final = 1024
MAX_ARGON2_MEMORY_KIB: Final = 1 << 20  # 1 GiB: a damaged header cannot ask for more
MAX_ARGON2_ITERATIONS: Final = 16
MAX_ARGON2_LANES: Final = 16
#: the shortest keystore PIN or passphrase accepted for a new seal (rule 7 of docs/security.md)
MIN_PIN_LENGTH: Final = 6
# Bounds on scrypt parameters.  The lower bound keeps a store from being made trivially weak
# (tests use it for speed); the upper bounds stop a damaged header from asking for gigabytes.
MIN_SCRYPT_N: Final = 2**10
MAX_SCRYPT_N: Final = 2**20
MAX_SCRYPT_R: Final = 32
MAX_SCRYPT_P: Final = 16
MAX_SCRYPT_MEMORY: Final = 1 << 30  # bytes: scrypt uses 128 * r * n
MAX_SCRYPT_WORK: Final = 1 << 26  # n * r * p

MAGIC: Final = b"PKKS"
SALT_SIZE: Final = 16
NONCE_SIZE: Final = 12
CHECK_SIZE: Final = 32
KEY_SIZE: Final = 32
MAX_HEADER_SIZE: Final = 256
MAX_FILE_SIZE: Final = 64 << 20
MAX_NAME_LENGTH: Final = 64

_KDF_SCRYPT = "scrypt"
_KDF_ARGON2ID = "argon2id"
_CHECK_INFO = b"pairkit keystore v1 check"
_BODY_INFO = b"pairkit keystore v1 body"
_TEMP_SUFFIX = ".tmp"
_HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_HPKE_ENC_SIZE: Final = 32
_HEX_RE = re.compile(r"[0-9a-f]+")


class KeystoreNotFoundError(KeystoreError, NotFoundError):
    """There is no keystore yet; run `pairkit init` to create one."""


# ---------------------------------------------------------------------------------------------
# Paths and identifiers


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the keystore lives: ``$PAIRKIT_HOME/keystore.pk`` when ``PAIRKIT_HOME`` is set (and
    not empty), else ``keystore.pk`` in the platform's per-user data directory for "pairkit"."""
    env = os.environ if env is None else env
    home = env.get(ENV_HOME, "")
    if home:
        return Path(home).expanduser() / FILE_NAME
    return Path(platformdirs.user_data_dir("pairkit", appauthor=False)) / FILE_NAME


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


def _thaw(value: Any) -> Any:
    """The inverse of :func:`_freeze`, for encoding."""
    if isinstance(value, tuple | list):
        return [_thaw(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    return value


def _check_public_key(key: object, kind: str) -> None:
    if not isinstance(key, bytes) or len(key) != 32:
        raise DecodeError(f"an {kind} public key must be 32 bytes")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} must be a non-empty text")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
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

    def __post_init__(self) -> None:
        _check_public_key(self.static_public, "X25519")
        if self.signing_public is not None:
            _check_public_key(self.signing_public, "Ed25519")
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
        return {
            "id": self.id,
            "name": self.name,
            "x25519": self.static_public,
            "ed25519": self.signing_public,
            "auth": self.authenticated,
            "method": self.method,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "their_prekeys": _thaw(self.their_prekeys),
            "our_prekeys": _thaw(self.our_prekeys),
            "extra": _thaw(self.extra),
        }

    @classmethod
    def _from_cbor(cls, data: Any) -> Peer:
        return cls(
            id=data["id"],
            name=data["name"],
            static_public=data["x25519"],
            signing_public=data["ed25519"],
            authenticated=data["auth"],
            method=data["method"],
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            their_prekeys=data["their_prekeys"],
            our_prekeys=data["our_prekeys"],
            extra=data["extra"],
        )


@dataclass(frozen=True)
class CloudInfo:
    """What may be shown about a personal cloud we belong to; the secret itself stays inside the
    keystore (use :meth:`Keystore.cloud_mac` and :meth:`Keystore.cloud_kdf`)."""

    cloud_id: str
    name: str
    role: str
    expires: float | None = None


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters (RFC 7914 §2), validated against pairkit's bounds."""

    n: int = DEFAULT_SCRYPT_N
    r: int = DEFAULT_SCRYPT_R
    p: int = DEFAULT_SCRYPT_P

    def __post_init__(self) -> None:
        for name in ("n", "r", "p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"scrypt parameter {name} must be a positive integer")
        if self.n & (self.n - 1) or not MIN_SCRYPT_N <= self.n <= MAX_SCRYPT_N:
            raise ConfigError(
                f"scrypt n must be a power of two from {MIN_SCRYPT_N} to {MAX_SCRYPT_N}"
            )
        if self.r > MAX_SCRYPT_R or self.p > MAX_SCRYPT_P:
            raise ConfigError(f"scrypt r must be at most {MAX_SCRYPT_R} and p {MAX_SCRYPT_P}")
        if 128 * self.r * self.n > MAX_SCRYPT_MEMORY or self.n * self.r * self.p > MAX_SCRYPT_WORK:
            raise ConfigError("these scrypt parameters need too much memory or time")


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters (RFC 9106 §3.1), validated against pairkit's bounds."""

    memory_kib: int = DEFAULT_ARGON2_MEMORY_KIB
    iterations: int = DEFAULT_ARGON2_ITERATIONS
    lanes: int = DEFAULT_ARGON2_LANES

    def __post_init__(self) -> None:
        for name in ("memory_kib", "iterations", "lanes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Argon2id parameter {name} must be a positive integer")
        if not MIN_ARGON2_MEMORY_KIB <= self.memory_kib <= MAX_ARGON2_MEMORY_KIB:
            raise ConfigError(
                f"Argon2id memory must be {MIN_ARGON2_MEMORY_KIB} to {MAX_ARGON2_MEMORY_KIB} KiB"
            )
        if self.iterations > MAX_ARGON2_ITERATIONS or self.lanes > MAX_ARGON2_LANES:
            raise ConfigError(
                f"Argon2id iterations and lanes must be at most {MAX_ARGON2_ITERATIONS}"
            )
        if self.memory_kib < 8 * self.lanes:
            raise ConfigError("Argon2id needs at least 8 KiB of memory per lane")

    @classmethod
    def cheapest(cls) -> Argon2Params:
        """The lowest cost allowed: for tests and throwaway demo keystores only."""
        return cls(MIN_ARGON2_MEMORY_KIB, 1, 1)


Kdf = ScryptParams | Argon2Params


def _upgrade_of(kdf: Kdf) -> Argon2Params:
    """The Argon2id cost an earlier scrypt keystore is re-sealed with: the default, unless its
    owner chose a cost below scrypt's default (tests, demos), which stays the cheapest."""
    if isinstance(kdf, Argon2Params):
        return kdf
    return Argon2Params() if kdf.n >= DEFAULT_SCRYPT_N else Argon2Params.cheapest()


# ---------------------------------------------------------------------------------------------
# Sealing


@dataclass(frozen=True)
class _Header:
    version: int
    kdf: Kdf
    salt: bytes
    nonce: bytes

    def encode(self) -> bytes:
        kdf = self.kdf
        if isinstance(kdf, Argon2Params):
            params: tuple[str, int, int, int] = (
                _KDF_ARGON2ID, kdf.memory_kib, kdf.iterations, kdf.lanes
            )
        else:
            params = (_KDF_SCRYPT, kdf.n, kdf.r, kdf.p)
        header = cbor.encode(
            {
                1: self.version,
                2: params[0],
                3: params[1],
                4: params[2],
                5: params[3],
                6: self.salt,
                7: self.nonce,
            }
        )
        return MAGIC + len(header).to_bytes(2, "big") + header


@dataclass(frozen=True)
class _Keys:
    check: bytes = field(repr=False)
    body: bytes = field(repr=False)


def _pin_bytes(pin: str | bytes) -> bytes:
    if isinstance(pin, str):
        # NFC so that the same passphrase typed on two keyboards gives the same bytes.
        pin = unicodedata.normalize("NFC", pin).encode("utf-8")
    if not isinstance(pin, bytes | bytearray):
        raise ConfigError("the PIN or passphrase must be text")
    if not pin:
        raise ConfigError("the PIN or passphrase must not be empty")
    return bytes(pin)


def _check_new_pin(pin: bytes) -> bytes:
    """A PIN or passphrase for a new seal: at least :data:`MIN_PIN_LENGTH` characters."""
    if len(pin.decode("utf-8", "replace")) < MIN_PIN_LENGTH:
        raise ConfigError(
            f"a keystore PIN or passphrase needs at least {MIN_PIN_LENGTH} characters (a "
            "stolen keystore file is attacked offline, so a short one falls in hours)"
        )
    return pin


def _derive_keys(pin: bytes, salt: bytes, kdf: Kdf) -> _Keys:
    """RFC 9106 Argon2id (or RFC 7914 scrypt for an earlier keystore), then RFC 5869
    HKDF-Expand into independent check and body keys."""
    if isinstance(kdf, Argon2Params):
        master = Argon2id(
            salt=salt, length=KEY_SIZE, iterations=kdf.iterations, lanes=kdf.lanes,
            memory_cost=kdf.memory_kib,
        ).derive(pin)
    else:
        master = Scrypt(salt=salt, length=KEY_SIZE, n=kdf.n, r=kdf.r, p=kdf.p).derive(pin)
    check = HKDFExpand(hashes.SHA256(), KEY_SIZE, _CHECK_INFO).derive(master)
    body = HKDFExpand(hashes.SHA256(), KEY_SIZE, _BODY_INFO).derive(master)
    return _Keys(check=check, body=body)


def _seal(header: _Header, keys: _Keys, body: bytes) -> bytes:
    head = header.encode()
    check = hmac.new(keys.check, head, hashlib.sha256).digest()
    aad = head + check
    return aad + ChaCha20Poly1305(keys.body).encrypt(header.nonce, body, aad)


def _parse_header(data: bytes, where: str) -> tuple[_Header, int]:
    """Parse the unauthenticated header; returns it and the offset where the check starts."""
    damaged = f"the keystore at {where} is damaged or is not a pairkit keystore"
    if len(data) < len(MAGIC) + 2 or data[: len(MAGIC)] != MAGIC:
        raise KeystoreCorruptError(damaged)
    size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 2], "big")
    end = len(MAGIC) + 2 + size
    if size > MAX_HEADER_SIZE or len(data) < end + CHECK_SIZE + 16:
        raise KeystoreCorruptError(damaged)
    try:
        fields = cbor.decode(data[len(MAGIC) + 2 : end], max_size=MAX_HEADER_SIZE)
    except DecodeError:
        raise KeystoreCorruptError(damaged) from None
    if not isinstance(fields, dict) or set(fields) != {1, 2, 3, 4, 5, 6, 7}:
        raise KeystoreCorruptError(damaged)
    version = fields[1]
    if version != FORMAT_VERSION:
        raise KeystoreCorruptError(
            f"the keystore at {where} has format version {version!r}, which this pairkit cannot "
            "read (the file is damaged or was written by a newer pairkit)"
        )
    salt, nonce = fields[6], fields[7]
    if fields[2] not in (_KDF_SCRYPT, _KDF_ARGON2ID):
        raise KeystoreCorruptError(damaged)
    if not isinstance(salt, bytes) or not isinstance(nonce, bytes):
        raise KeystoreCorruptError(damaged)
    if len(salt) != SALT_SIZE or len(nonce) != NONCE_SIZE:
        raise KeystoreCorruptError(damaged)
    try:
        kdf: Kdf = (
            Argon2Params(fields[3], fields[4], fields[5]) if fields[2] == _KDF_ARGON2ID
            else ScryptParams(fields[3], fields[4], fields[5])
        )
    except ConfigError:
        raise KeystoreCorruptError(damaged) from None
    return _Header(version, kdf, salt, nonce), end


# ---------------------------------------------------------------------------------------------
# HPKE envelopes


def _hpke_info(info: bytes, aad: bytes) -> bytes:
    # cryptography 50's single-shot HPKE has no aad argument (pyca/cryptography#15292); as RFC
    # 9180 §8.1 advises for single-shot use, the associated data goes into `info`, which feeds
    # the key schedule (§5.1), so changing either makes opening fail.  A CBOR array keeps the
    # two unambiguous.
    if not isinstance(info, bytes) or not isinstance(aad, bytes):
        raise ConfigError("an envelope's info and associated data must be bytes")
    return cbor.encode([info, aad])


def seal_envelope(
    recipient_public: bytes, plaintext: bytes, info: bytes, aad: bytes = b""
) -> tuple[bytes, bytes]:
    """Seal ``plaintext`` to ``recipient_public`` with HPKE base mode (RFC 9180 §6.1, suite
    DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305); returns ``(enc, ct)``.

    ``aad`` is bound through ``info`` (see :func:`_hpke_info`).  The ephemeral key is drawn by
    cryptography/OpenSSL itself: its API takes no randomness source, so this function has none.
    """
    _check_public_key(recipient_public, "X25519")
    sealed = _HPKE_SUITE.encrypt(
        plaintext,
        x25519.X25519PublicKey.from_public_bytes(recipient_public),
        _hpke_info(info, aad),
    )
    return sealed[:_HPKE_ENC_SIZE], sealed[_HPKE_ENC_SIZE:]


# ---------------------------------------------------------------------------------------------
# The keystore


def _raw_private(key: x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: x25519.X25519PublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_rng_output(data: bytes, size: int) -> bytes:
    if not isinstance(data, bytes) or len(data) != size:
        raise ConfigError(f"the random source must return {size} bytes when asked for {size}")
    return data


class Keystore:
    """The sealed keystore of one device (DESIGN.md "Identification").

    Create one with :meth:`create` or unlock one with :meth:`open`.  Changes (peers, clouds,
    group keys, settings, name) stay in memory until :meth:`save`.  Private keys never leave the
    object, except through :meth:`_static_private_for_handshake`.
    """

    def __init__(
        self,
        path: Path,
        *,
        static_key: x25519.X25519PrivateKey,
        signing_key: ed25519.Ed25519PrivateKey,
        name: str,
        header: _Header,
        keys: _Keys,
        rng: Rng,
    ) -> None:
        # Not for direct use: call Keystore.create or Keystore.open.
        self._path = path
        self._static = static_key
        self._signing = signing_key
        self._static_public = _raw_public(static_key.public_key())
        self._signing_public = _raw_public(signing_key.public_key())
        self._name = _check_name(name, "the device name")
        self._header = header
        self._keys = keys
        self._rng = rng
        self._peers: dict[str, Peer] = {}
        self._clouds: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, dict[int, bytes]] = {}
        self._settings: dict[str, Any] = {}
        #: the Argon2id seal an earlier scrypt keystore takes at its next write
        self._upgrade: tuple[_Header, _Keys] | None = None

    def __repr__(self) -> str:
        return f"<Keystore {self.device_id} {self._name!r} at {self._path}>"

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | None,
        pin: str | bytes,
        *,
        name: str,
        rng: Rng = os.urandom,
        kdf: Argon2Params | None = None,
        scrypt_n: int | None = None,
        scrypt_r: int = DEFAULT_SCRYPT_R,
        scrypt_p: int = DEFAULT_SCRYPT_P,
        overwrite: bool = False,
    ) -> Keystore:
        """Make a new identity, seal it under ``pin`` and write it to ``path`` (``None``: the
        :func:`default_path`).  Refuses to replace an existing keystore unless ``overwrite``.

        The seal is Argon2id at ``kdf`` (default: :class:`Argon2Params`'s defaults).
        ``scrypt_n`` instead writes the earlier versions' scrypt format (the upgrade's tests,
        and cheap test keystores: one with ``scrypt_n`` below the default is re-sealed at
        :meth:`Argon2Params.cheapest`).  The PIN needs :data:`MIN_PIN_LENGTH` characters."""
        target = Path(path) if path is not None else default_path()
        if not overwrite and os.path.lexists(target):
            raise KeystoreError(
                f"a keystore already exists at {target}; refusing to replace it "
                "(that would lose this device's identity and its known peers)"
            )
        chosen: Kdf = (
            ScryptParams(scrypt_n, scrypt_r, scrypt_p) if scrypt_n is not None
            else kdf or Argon2Params()
        )
        pin_bytes = _check_new_pin(_pin_bytes(pin))
        _check_name(name, "the device name")
        salt = _check_rng_output(rng(SALT_SIZE), SALT_SIZE)
        store = cls(
            target,
            static_key=x25519.X25519PrivateKey.from_private_bytes(
                _check_rng_output(rng(KEY_SIZE), KEY_SIZE)
            ),
            signing_key=ed25519.Ed25519PrivateKey.from_private_bytes(
                _check_rng_output(rng(KEY_SIZE), KEY_SIZE)
            ),
            name=name,
            header=_Header(FORMAT_VERSION, chosen, salt, bytes(NONCE_SIZE)),
            keys=_derive_keys(pin_bytes, salt, chosen),
            rng=rng,
        )
        store.save()
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | None, pin: str | bytes, *, rng: Rng = os.urandom
    ) -> Keystore:
        """Unlock the keystore at ``path`` (``None``: the :func:`default_path`) with ``pin``.

        Raises :class:`KeystoreNotFoundError` if there is none, :class:`WrongPinError` for a wrong
        PIN (or a damaged header), :class:`KeystoreCorruptError` for a damaged or truncated file.
        """
        target = Path(path) if path is not None else default_path()
        pin_bytes = _pin_bytes(pin)
        try:
            with open(target, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            raise KeystoreNotFoundError(
                f"there is no keystore at {target}; run `pairkit init` to create one"
            ) from None
        except OSError as e:
            raise KeystoreError(f"could not read the keystore at {target}: {e.strerror}") from None
        if len(data) > MAX_FILE_SIZE:
            raise KeystoreCorruptError(f"the keystore at {target} is too large to be one")
        header, end = _parse_header(data, str(target))
        keys = _derive_keys(pin_bytes, header.salt, header.kdf)
        check = hmac.new(keys.check, data[:end], hashlib.sha256).digest()
        if not hmac.compare_digest(check, data[end : end + CHECK_SIZE]):
            raise WrongPinError("wrong PIN or passphrase")
        aad = data[: end + CHECK_SIZE]
        try:
            body = ChaCha20Poly1305(keys.body).decrypt(header.nonce, data[len(aad) :], aad)
        except InvalidTag:
            raise KeystoreCorruptError(
                f"the keystore at {target} is damaged or has been tampered with"
            ) from None
        try:
            store = cls._from_body(target, body, header, keys, rng)
        except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
            # The body is authenticated, so this is a pairkit bug or an unknown layout.
            raise KeystoreCorruptError(
                f"the keystore at {target} has contents this pairkit cannot read"
            ) from None
        if isinstance(header.kdf, ScryptParams):
            # An earlier version's seal: derive the Argon2id one now, while the PIN is here,
            # and use it at the next write (nothing is written just by opening).
            upgrade = _upgrade_of(header.kdf)
            salt = _check_rng_output(rng(SALT_SIZE), SALT_SIZE)
            store._upgrade = (
                _Header(FORMAT_VERSION, upgrade, salt, header.nonce),
                _derive_keys(pin_bytes, salt, upgrade),
            )
        return store

    @classmethod
    def _from_body(
        cls, path: Path, body: bytes, header: _Header, keys: _Keys, rng: Rng
    ) -> Keystore:
        data = cbor2.loads(body)
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise ValueError("unknown body layout")
        ident = data["identity"]
        store = cls(
            path,
            static_key=x25519.X25519PrivateKey.from_private_bytes(ident["x25519"]),
            signing_key=ed25519.Ed25519PrivateKey.from_private_bytes(ident["ed25519"]),
            name=ident["name"],
            header=header,
            keys=keys,
            rng=rng,
        )
        for item in data["peers"]:
            peer = Peer._from_cbor(item)
            store._peers[peer.id] = peer
        for cloud_id, entry in data["clouds"].items():
            store._clouds[cloud_id] = {
                "secret": bytes(entry["secret"]),
                "name": str(entry["name"]),
                "role": str(entry["role"]),
                "expires": entry["expires"],
            }
        for group, epochs in data["groups"].items():
            store._groups[group] = {int(epoch): bytes(key) for epoch, key in epochs.items()}
        store._settings = {k: _freeze(v, "a setting") for k, v in data["settings"].items()}
        return store

    def _body(self) -> bytes:
        return cbor.encode(
            {
                "v": FORMAT_VERSION,
                "identity": {
                    "x25519": _raw_private(self._static),
                    "ed25519": _raw_private(self._signing),
                    "name": self._name,
                },
                "peers": [peer._to_cbor() for peer in self._peers.values()],
                "clouds": self._clouds,
                "groups": self._groups,
                "settings": {k: _thaw(v) for k, v in self._settings.items()},
            }
        )

    def save(self, *, before_replace: Callable[[Path], None] | None = None) -> None:
        """Seal the current contents under a fresh nonce and replace the file atomically.

        ``before_replace`` is a test hook: it is called with the temporary file's path once that
        file is written and synced, just before it is renamed over the keystore (the crash test
        kills the process there).  Leftover temporary files from an interrupted save are removed
        after a successful one.
        """
        base, keys = self._upgrade or (self._header, self._keys)
        header = _Header(
            base.version,
            base.kdf,
            base.salt,
            _check_rng_output(self._rng(NONCE_SIZE), NONCE_SIZE),
        )
        self._write(_seal(header, keys, self._body()), before_replace)
        self._header, self._keys, self._upgrade = header, keys, None

    @contextlib.contextmanager
    def update(self) -> Iterator[Keystore]:
        """Change the keystore safely while other pairkit processes may use it too.

        Under an exclusive lock on ``<keystore>.lock``, the contents are reloaded from the file
        (another process may have saved since this one opened it), the caller changes them, and
        they are saved before the lock is released: a running ``pairkit host`` and a ``pairkit
        ls`` on the same device never lose each other's changes.  Where ``fcntl`` does not exist
        (Windows) the reload and save still happen, without the lock.
        """
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._reload()
            yield self
            self.save()
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _reload(self) -> None:
        """Read the file again with the keys this store was unlocked with."""
        try:
            with open(self._path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            raise KeystoreNotFoundError(
                f"the keystore at {self._path} is gone; run `pairkit init` to create one"
            ) from None
        header, end = _parse_header(data, str(self._path))
        if header.salt != self._header.salt or header.kdf != self._header.kdf:
            raise KeystoreError(
                "the keystore's PIN was changed by another pairkit command; run this one again"
            )
        check = hmac.new(self._keys.check, data[:end], hashlib.sha256).digest()
        if not hmac.compare_digest(check, data[end : end + CHECK_SIZE]):
            raise KeystoreCorruptError(f"the keystore at {self._path} was damaged meanwhile")
        aad = data[: end + CHECK_SIZE]
        try:
            body = ChaCha20Poly1305(self._keys.body).decrypt(header.nonce, data[len(aad) :], aad)
            fresh = type(self)._from_body(self._path, body, header, self._keys, self._rng)
        except (InvalidTag, ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
            raise KeystoreCorruptError(
                f"the keystore at {self._path} was damaged meanwhile"
            ) from None
        if fresh.static_public != self.static_public:
            raise KeystoreError("the keystore was replaced by another identity meanwhile")
        self._header = header
        self._name = fresh._name
        self._peers = fresh._peers
        self._clouds = fresh._clouds
        self._groups = fresh._groups
        self._settings = fresh._settings

    def change_pin(
        self,
        new_pin: str | bytes,
        *,
        kdf: Argon2Params | None = None,
        scrypt_n: int | None = None,
    ) -> None:
        """Re-seal the keystore under ``new_pin`` with a fresh salt and save it, with Argon2id
        (at ``kdf``, or the upgrade of the current cost); ``scrypt_n`` keeps the earlier scrypt
        format at that cost instead (tests of the upgrade)."""
        current = self._header.kdf
        chosen: Kdf = kdf or _upgrade_of(current)
        if scrypt_n is not None:
            base = current if isinstance(current, ScryptParams) else ScryptParams()
            chosen = ScryptParams(scrypt_n, base.r, base.p)
        kdf_ = chosen
        pin_bytes = _check_new_pin(_pin_bytes(new_pin))
        salt = _check_rng_output(self._rng(SALT_SIZE), SALT_SIZE)
        old_header, old_keys, old_upgrade = self._header, self._keys, self._upgrade
        self._header = _Header(FORMAT_VERSION, kdf_, salt, old_header.nonce)
        self._keys = _derive_keys(pin_bytes, salt, kdf_)
        self._upgrade = None
        try:
            self.save()
        except BaseException:
            self._header, self._keys, self._upgrade = old_header, old_keys, old_upgrade
            raise

    def _write(self, data: bytes, before_replace: Callable[[Path], None] | None) -> None:
        """Atomic replace: temp file (0600, O_EXCL) in the same directory, fsync, rename, fsync
        the directory, so a crash at any point leaves either the old or the new file."""
        directory = self._path.parent
        prefix = f".{self._path.name}."
        try:
            if not directory.is_dir():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                # mkdir's mode is filtered by the umask; the keystore's directory is private.
                os.chmod(directory, 0o700)
            tmp, fd = self._open_temp(directory, prefix)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if before_replace is not None:
                    before_replace(tmp)
                os.replace(tmp, self._path)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_directory(directory)
        except OSError as e:
            raise KeystoreError(
                f"could not save the keystore at {self._path}: {e.strerror or e}"
            ) from None
        # Temporary files left by a save that was killed are garbage: the rename never happened.
        with suppress(OSError):
            for leftover in directory.iterdir():
                middle = leftover.name[len(prefix) : -len(_TEMP_SUFFIX)]
                if (
                    leftover.name.startswith(prefix)
                    and leftover.name.endswith(_TEMP_SUFFIX)
                    and len(middle) == 16
                    and _HEX_RE.fullmatch(middle)
                ):
                    with suppress(OSError):
                        leftover.unlink()

    def _open_temp(self, directory: Path, prefix: str) -> tuple[Path, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(8):
            suffix = _check_rng_output(self._rng(8), 8).hex()
            tmp = directory / f"{prefix}{suffix}{_TEMP_SUFFIX}"
            try:
                return tmp, os.open(tmp, flags, stat.S_IRUSR | stat.S_IWUSR)
            except FileExistsError:
                continue
        raise KeystoreError(f"could not create a temporary file in {directory}")

    # -- identity -------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The keystore file."""
        return self._path

    @property
    def scrypt(self) -> Kdf:
        """The key-derivation parameters the file is sealed with (kept under its old name;
        see :attr:`kdf`)."""
        return self._header.kdf

    @property
    def kdf(self) -> Kdf:
        """The key-derivation parameters the file is sealed with: :class:`Argon2Params`, or
        :class:`ScryptParams` for a keystore of an earlier version not written since."""
        return self._header.kdf

    @property
    def device_id(self) -> str:
        """This device's id (see :func:`device_id_of`)."""
        return device_id_of(self._static_public)

    @property
    def fingerprint(self) -> str:
        """This device's fingerprint (see :func:`fingerprint_of`)."""
        return fingerprint_of(self._static_public)

    @property
    def name(self) -> str:
        """This device's name, as shown to others."""
        return self._name

    def rename(self, name: str) -> None:
        """Change this device's name (saved on the next :meth:`save`)."""
        self._name = _check_name(name, "the device name")

    @property
    def static_public(self) -> bytes:
        """This device's X25519 static public key (32 bytes)."""
        return self._static_public

    @property
    def signing_public(self) -> bytes:
        """This device's Ed25519 public key (32 bytes)."""
        return self._signing_public

    # -- private-key operations -----------------------------------------------------------------

    def dh(self, peer_public: bytes) -> bytes:
        """X25519(static private, ``peer_public``) (RFC 7748 §5).  A result of all zeros (a
        low-order public key, RFC 7748 §6.1) raises :class:`AuthenticationError`."""
        _check_public_key(peer_public, "X25519")
        try:
            shared = self._static.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise AuthenticationError("the peer's public key is not acceptable") from None
        if hmac.compare_digest(shared, bytes(32)):
            raise AuthenticationError("the peer's public key is not acceptable")
        return shared

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature (RFC 8032 §5.1.6) over ``data`` with this device's signing key."""
        return self._signing.sign(data)

    def _static_private_for_handshake(self) -> bytes:
        """The raw X25519 static private key, for ``pairing/noise.py`` only.

        The Noise handshake module takes its static key as bytes; this is the one internal door
        through which a private key leaves the keystore.  Nothing else may call it, and the
        bytes must not be stored, logged or sent.
        """
        return _raw_private(self._static)

    def open_envelope(self, enc: bytes, ct: bytes, info: bytes, aad: bytes = b"") -> bytes:
        """Open an HPKE base-mode envelope sealed to this device's static key by
        :func:`seal_envelope` (RFC 9180 §6.1).  Raises :class:`AuthenticationError` if it does
        not open (wrong recipient, info, associated data, or a damaged envelope)."""
        if not isinstance(enc, bytes) or len(enc) != _HPKE_ENC_SIZE:
            raise DecodeError(f"an envelope's encapsulated key must be {_HPKE_ENC_SIZE} bytes")
        if not isinstance(ct, bytes):
            raise DecodeError("an envelope's ciphertext must be bytes")
        try:
            return _HPKE_SUITE.decrypt(enc + ct, self._static, _hpke_info(info, aad))
        except (InvalidTag, ValueError):
            raise AuthenticationError(
                "an envelope did not open: it is not for us or was altered"
            ) from None

    # -- peers ----------------------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """Remember ``peer``, replacing what was known under the same id."""
        if not isinstance(peer, Peer):
            raise ConfigError("add_peer expects a Peer")
        if peer.id == self.device_id:
            raise ConfigError("that is this device's own key, not a peer")
        self._peers[peer.id] = peer

    def get_peer(self, id_or_name: str) -> Peer:
        """Find a known peer by its id, a unique prefix of it (4 hex digits or more), or its
        exact name.  Raises :class:`NotFoundError`, or :class:`ConfigError` if it is ambiguous."""
        return self._peers[self._find_peer(id_or_name)]

    def peers(self) -> tuple[Peer, ...]:
        """Every known peer, in the order they were first added."""
        return tuple(self._peers.values())

    def forget_peer(self, id_or_name: str) -> Peer:
        """Forget a known peer (found as by :meth:`get_peer`); returns what was forgotten."""
        return self._peers.pop(self._find_peer(id_or_name))

    def _find_peer(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ConfigError("name a peer by its id or name")
        lowered = key.lower()
        if lowered in self._peers:
            return lowered
        candidates: Iterable[str] = ()
        if len(lowered) >= 4 and _HEX_RE.fullmatch(lowered):
            candidates = [pid for pid in self._peers if pid.startswith(lowered)]
        if not candidates:
            candidates = [pid for pid, peer in self._peers.items() if peer.name == key]
        candidates = list(candidates)
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ConfigError(f"more than one known peer matches {key!r}; use its full id")
        raise NotFoundError(f"no known peer {key!r}; `pairkit peers` lists them")

    # -- clouds ---------------------------------------------------------------------------------

    def set_cloud(
        self,
        cloud_id: str,
        secret: bytes,
        *,
        name: str,
        role: str,
        expires: float | None = None,
    ) -> None:
        """Remember a personal cloud we belong to and its shared secret (DESIGN.md "Cloud
        join"); ``role`` is e.g. "owner", "member" or "guest", ``expires`` the caller's seconds."""
        if not isinstance(cloud_id, str) or not cloud_id:
            raise ConfigError("a cloud id must be a non-empty text")
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ConfigError("a cloud secret must be at least 16 bytes")
        _check_name(name, "a cloud's name")
        if not isinstance(role, str) or not role:
            raise ConfigError("a cloud role must be a non-empty text")
        if expires is not None:
            _check_time(expires, "a cloud's expiry")
        self._clouds[cloud_id] = {"secret": secret, "name": name, "role": role, "expires": expires}

    def cloud(self, cloud_id: str) -> CloudInfo:
        """What is known about a cloud (never its secret).  Raises :class:`NotFoundError`."""
        entry = self._cloud_entry(cloud_id, None)
        return CloudInfo(cloud_id, entry["name"], entry["role"], entry["expires"])

    def clouds(self) -> tuple[CloudInfo, ...]:
        """Every cloud we belong to."""
        return tuple(self.cloud(cloud_id) for cloud_id in self._clouds)

    def forget_cloud(self, cloud_id: str) -> None:
        """Forget a cloud and its secret.  Raises :class:`NotFoundError`."""
        self._cloud_entry(cloud_id, None)
        del self._clouds[cloud_id]

    def cloud_mac(self, cloud_id: str, data: bytes, *, now: float | None = None) -> bytes:
        """HMAC-SHA256 (RFC 2104) of ``data`` under the cloud's secret.  With ``now``, an expired
        membership raises :class:`ExpiredError`."""
        secret = self._cloud_entry(cloud_id, now)["secret"]
        return hmac.new(secret, data, hashlib.sha256).digest()

    def cloud_kdf(
        self, cloud_id: str, info: bytes, length: int = 32, *, now: float | None = None
    ) -> bytes:
        """HKDF-SHA256 (RFC 5869) of the cloud's secret with ``info``, ``length`` bytes (rotating
        hello tags, PSKs).  With ``now``, an expired membership raises :class:`ExpiredError`."""
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 255 * 32:
            raise ConfigError("a derived key must be from 1 to 8160 bytes long")
        secret = self._cloud_entry(cloud_id, now)["secret"]
        return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(secret)

    def _cloud_secret_for_new_member(self, cloud_id: str) -> bytes:
        """The cloud secret, to hand to a device the owner just made a member (DESIGN.md step 3:
        "a member is given the cloud secret ... inside the secure channel").  The one door by
        which a cloud secret leaves the keystore; only the cloud's owner may use it."""
        entry = self._cloud_entry(cloud_id, None)
        if entry["role"] != "owner":
            raise ConfigError("only the cloud's owner hands out its secret")
        return bytes(entry["secret"])

    def _cloud_entry(self, cloud_id: str, now: float | None) -> dict[str, Any]:
        try:
            entry = self._clouds[cloud_id]
        except (KeyError, TypeError):
            raise NotFoundError(f"this device is not in a cloud {cloud_id!r}") from None
        if now is not None and entry["expires"] is not None and now >= entry["expires"]:
            raise ExpiredError(f"this device's membership of cloud {entry['name']!r} has expired")
        return entry

    # -- group keys -----------------------------------------------------------------------------

    def store_group_key(self, group: str, epoch: int, key: bytes) -> None:
        """Keep the 32-byte key of ``group`` for ``epoch`` (DESIGN.md: oneM2M group keys)."""
        self._check_group(group, epoch)
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ConfigError(f"a group key must be {KEY_SIZE} bytes")
        self._groups.setdefault(group, {})[epoch] = key

    def group_epochs(self, group: str) -> tuple[int, ...]:
        """The epochs of ``group`` whose keys we hold, oldest first (empty if none)."""
        return tuple(sorted(self._groups.get(group, {})))

    def forget_group(self, group: str, epoch: int | None = None) -> None:
        """Drop one epoch's key of ``group``, or all of them.  Missing keys are not an error."""
        if epoch is None:
            self._groups.pop(group, None)
            return
        epochs = self._groups.get(group, {})
        epochs.pop(epoch, None)
        if not epochs:
            self._groups.pop(group, None)

    def group_encrypt(
        self, group: str, epoch: int, nonce: bytes, plaintext: bytes, aad: bytes = b""
    ) -> bytes:
        """ChaCha20-Poly1305 (RFC 8439) under the group key of ``epoch``; the caller owns nonce
        uniqueness (12 bytes)."""
        return ChaCha20Poly1305(self._group_key(group, epoch)).encrypt(
            self._check_nonce(nonce), plaintext, aad
        )

    def group_decrypt(
        self, group: str, epoch: int, nonce: bytes, ciphertext: bytes, aad: bytes = b""
    ) -> bytes:
        """Open what :meth:`group_encrypt` sealed; raises :class:`AuthenticationError` if it
        does not authenticate."""
        aead = ChaCha20Poly1305(self._group_key(group, epoch))
        try:
            return aead.decrypt(self._check_nonce(nonce), ciphertext, aad)
        except InvalidTag:
            raise AuthenticationError(
                f"a message for group {group!r} did not authenticate"
            ) from None

    def new_group_key(self, group: str, epoch: int) -> None:
        """Draw a fresh 32-byte key for ``group`` at ``epoch`` from this keystore's random
        source and keep it (the group controller's side of DESIGN.md's oneM2M group keys).
        Nothing is returned: the key leaves the keystore only sealed, by
        :meth:`seal_group_key`."""
        self._check_group(group, epoch)
        self._groups.setdefault(group, {})[epoch] = _check_rng_output(self._rng(KEY_SIZE), KEY_SIZE)

    def seal_group_key(
        self, group: str, epoch: int, recipient_public: bytes, info: bytes, aad: bytes = b""
    ) -> tuple[bytes, bytes]:
        """The group key of ``epoch`` sealed to ``recipient_public`` by HPKE base mode, as
        :func:`seal_envelope` seals (RFC 9180 §6.1); returns ``(enc, ct)``.  Raises
        :class:`NotFoundError` if no key is held for that epoch."""
        return seal_envelope(recipient_public, self._group_key(group, epoch), info, aad)

    def accept_group_key(
        self, group: str, epoch: int, enc: bytes, ct: bytes, info: bytes, aad: bytes = b""
    ) -> None:
        """Open an envelope sealed to this device by :meth:`seal_group_key` and keep the key
        it carries as ``group``'s key for ``epoch`` (RFC 9180 §6.1).  The key never comes out:
        the member's side of DESIGN.md's "secure environment".  Raises
        :class:`AuthenticationError` if the envelope does not open (not ours, another binding,
        or altered) and :class:`DecodeError` if what it carries is not a key."""
        self._check_group(group, epoch)
        key = self.open_envelope(enc, ct, info, aad)
        if len(key) != KEY_SIZE:
            raise DecodeError(f"an envelope for group {group!r} does not carry a group key")
        self._groups.setdefault(group, {})[epoch] = key

    @staticmethod
    def _check_group(group: object, epoch: object) -> None:
        if not isinstance(group, str) or not group:
            raise ConfigError("a group name must be a non-empty text")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError("a group epoch must be a non-negative integer")

    @staticmethod
    def _check_nonce(nonce: object) -> bytes:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ConfigError(f"a nonce must be {NONCE_SIZE} bytes")
        return nonce

    def _group_key(self, group: str, epoch: int) -> bytes:
        self._check_group(group, epoch)
        try:
            return self._groups[group][epoch]
        except KeyError:
            raise NotFoundError(f"no key for group {group!r} epoch {epoch}") from None

    # -- settings -------------------------------------------------------------------------------

    def setting(self, key: str, default: Any = None) -> Any:
        """A stored setting (read-only: lists come back as tuples), or ``default``."""
        return self._settings.get(key, default)

    def settings(self) -> Mapping[str, Any]:
        """All settings, read-only."""
        return MappingProxyType(dict(self._settings))

    def set_setting(self, key: str, value: Any) -> None:
        """Store a setting; ``value`` must be plain CBOR data (None, bool, int, float, text,
        bytes, lists, maps with text or integer keys)."""
        if not isinstance(key, str) or not key:
            raise ConfigError("a setting's name must be a non-empty text")
        self._settings[key] = _freeze(value, f"setting {key!r}")

    def delete_setting(self, key: str) -> None:
        """Remove a setting; a missing one is not an error."""
        self._settings.pop(key, None)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); platforms that cannot open a directory skip it.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
