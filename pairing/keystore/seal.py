"""The keystore's sealed format: the header, the PIN-derived keys, sealing and unsealing.

DESIGN.md "Identification".  The format is documented in :mod:`pairkit.pairing.keystore`'s
docstring: ``magic | header length | header | check | body``, the body ChaCha20-Poly1305 (RFC 8439)
under keys expanded (RFC 5869 §2.3) from Argon2id (RFC 9106 §3) or, for an earlier keystore,
scrypt (RFC 7914 §6) of the PIN.  Nothing here reads a file: the bytes come and go through a
:class:`~pairkit.pairing.keystore.storage.Storage`.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .. import cbor
from ..errors import ConfigError, DecodeError, KeystoreCorruptError, WrongPinError

__all__ = [
    "DEFAULT_SCRYPT_N",
    "FORMAT_VERSION",
    "MAX_FILE_SIZE",
    "MIN_PIN_LENGTH",
    "Argon2Params",
    "Kdf",
    "ScryptParams",
]

FORMAT_VERSION: Final = 1
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

_KDF_SCRYPT = "scrypt"
_KDF_ARGON2ID = "argon2id"
_CHECK_INFO = b"pairkit keystore v1 check"
_BODY_INFO = b"pairkit keystore v1 body"


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




def unseal(data: bytes, keys: _Keys, where: str) -> tuple[_Header, bytes]:
    """Check and open a sealed keystore with ``keys``: its header and its plaintext body.

    :class:`WrongPinError` when the key-check value does not match (a wrong PIN, or a damaged
    header: nobody can tell which without the key); :class:`KeystoreCorruptError` when the body
    fails authentication under the right keys, or the file is too large to be a keystore."""
    if len(data) > MAX_FILE_SIZE:
        raise KeystoreCorruptError(f"the keystore at {where} is too large to be one")
    header, end = _parse_header(data, where)
    check = hmac.new(keys.check, data[:end], hashlib.sha256).digest()
    if not hmac.compare_digest(check, data[end : end + CHECK_SIZE]):
        raise WrongPinError("wrong PIN or passphrase")
    aad = data[: end + CHECK_SIZE]
    try:
        body = ChaCha20Poly1305(keys.body).decrypt(header.nonce, data[len(aad) :], aad)
    except InvalidTag:
        raise KeystoreCorruptError(
            f"the keystore at {where} is damaged or has been tampered with"
        ) from None
    return header, body
