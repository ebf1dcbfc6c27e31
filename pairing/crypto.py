"""Small compositions of `cryptography` primitives shared by pairkit's protocols."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AuthenticationError, DecodeError, UnusableKeyError

Rng = Callable[[int], bytes]


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(ikm)


#: the hash of every HKDF here (an instance holds no state: made once)
_SHA256 = hashes.SHA256()


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over the length-prefixed ``parts`` (unambiguous concatenation)."""
    # one-shot (the C HMAC of hashlib's OpenSSL), over the parts joined: the same bytes hashed
    # as by one update per length and part (issue 13)
    return hmac.digest(key, b"".join([len(p).to_bytes(4, "big") + p for p in parts]), "sha256")


def same(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two secrets or MACs."""
    return hmac.compare_digest(a, b)


def x25519_keypair(rng: Rng) -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair from ``rng`` (RFC 7748 §5: clamping is X25519's)."""
    private = rng(32)
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    return private, public


def x25519_loaded(rng: Rng) -> tuple[X25519PrivateKey, bytes]:
    """As :func:`x25519_keypair` (the same draw from ``rng``), keeping the loaded key object:
    loading a private key computes its public key (a fixed-base scalar multiplication), so a
    key used again (a DH, an HPKE open) is not loaded twice."""
    key = X25519PrivateKey.from_private_bytes(rng(32))
    return key, key.public_key().public_bytes_raw()


def x25519(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """X25519 with the all-zero check of RFC 7748 §6.1 (a low-order peer key fails).

    ``private`` is raw bytes or a key already loaded (no second fixed-base multiplication).
    """
    if len(public) != 32:
        raise DecodeError("a public key must be 32 bytes")
    key = (private if isinstance(private, X25519PrivateKey)
           else X25519PrivateKey.from_private_bytes(private))
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise AuthenticationError("the peer's public key is not acceptable") from None
    if not any(shared):
        raise AuthenticationError("the peer's public key is not acceptable")
    return shared


#: p = 2^255 - 19, the field of edwards25519 (RFC 8032 §5.1)
_P: Final = 2**255 - 19
#: an order-8 point's y (the other three order-8 points have y or p - y: ±x, ±y)
_Y8: Final = 2707385501144840649318225287225658788936804267575313519463743609750303402022
#: the y coordinates of the 8 points of small order (order 1, 2, 4 and 8: 8·A = 0):
#: 1 (the neutral point), p - 1 (order 2), 0 (the two of order 4), and ±_Y8 (order 8).  A
#: point and its negative share y, so a y names small-order points only.
#: tests/attacks/test_attack_small_order_signing_key.py works them out from the curve.
SMALL_ORDER_Y: Final = frozenset({1, _P - 1, 0, _Y8, _P - _Y8})

#: the signing key a machine is given for a peer whose record holds none (a record the
#: library's ``Keystore.add_peer`` made; ``runtime/peers._known``): a point of small order
#: (y = 0), which :func:`check_ed25519_public` refuses, so it verifies nothing.  Where it
#: would be checked, the person is told no key is known and to pair again (session 20).
NO_SIGNING_KEY: Final = bytes(32)


def check_ed25519_public(public: bytes, whose: str) -> bytes:
    """``public`` if it is a usable Ed25519 public key; else :class:`UnusableKeyError`.

    Refused: a key whose y is not below p (a non-canonical encoding, RFC 8032 §5.1.3 step 1,
    which OpenSSL takes as y - p), and a key of small order, whatever its sign bit (x = 0 with
    the sign bit set is another non-canonical encoding).  Cofactorless verification (OpenSSL's,
    so `cryptography`'s) takes R = a small-order point, S = 0 as a signature under a
    small-order key for about one message in eight per R, and for every message under the
    neutral point: a device showing such a key signs nothing.  ``whose`` names the key for a
    person ("the peer's"); the key itself is never in the text."""
    if len(public) != 32:
        raise DecodeError(f"{whose} signing key must be 32 bytes")
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if y >= _P or y in SMALL_ORDER_Y:
        raise UnusableKeyError(
            f"{whose} signing key is one that signatures made with no key at all pass for (an "
            "Ed25519 key of small order, or not in canonical form); refused"
        )
    return public


def ed25519_public(public: bytes, whose: str) -> Ed25519PublicKey:
    """``public`` loaded for verifying, once :func:`check_ed25519_public` has passed it."""
    return Ed25519PublicKey.from_public_bytes(check_ed25519_public(public, whose))


def seal(key: bytes, nonce: int, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 with a counter nonce (one key, few messages)."""
    return ChaCha20Poly1305(key).encrypt(nonce.to_bytes(12, "little"), plaintext, ad)


def unseal(key: bytes, nonce: int, ciphertext: bytes, ad: bytes, what: str) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce.to_bytes(12, "little"), ciphertext, ad)
    except Exception:  # cryptography raises InvalidTag; any failure means the same to us
        raise AuthenticationError(f"{what} did not verify") from None


#: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 (RFC 9180 §7):
#: pairkit's one suite (compare's SK, the keystore's envelopes, a returning device's id)
HPKE_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
#: HPKE's encapsulated key (X25519's ephemeral public key) and ChaCha20-Poly1305's tag
HPKE_OVERHEAD: Final = 32 + 16


def hpke_seal(public: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode single-shot seal to the X25519 key ``public`` (RFC 9180 §6.1): ``enc ||
    ct``, :data:`HPKE_OVERHEAD` bytes longer than ``plaintext``.  What must be bound beside the
    key schedule's ``info`` goes into ``info`` (§8.1: `cryptography` 50's single-shot call has
    no aad).  The ephemeral key is drawn inside `cryptography` (its API takes no rng)."""
    if len(public) != 32:
        raise DecodeError("a public key must be 32 bytes")
    return HPKE_SUITE.encrypt(plaintext, X25519PublicKey.from_public_bytes(public), info)


def hpke_open(private: X25519PrivateKey, sealed: bytes, info: bytes, what: str) -> bytes:
    """Open what :func:`hpke_seal` sealed to ``private``'s public key; :class:`AuthenticationError`
    (naming ``what``, never a byte of it) when it does not open: another recipient, another
    ``info``, or a byte changed."""
    try:
        return HPKE_SUITE.decrypt(sealed, private, info)
    except (InvalidTag, ValueError):
        raise AuthenticationError(f"{what} did not open") from None


def digest(data: bytes, length: int = 16) -> bytes:
    """A SHA-256 digest truncated to ``length`` bytes (key ids, prekey digests)."""
    return hashlib.sha256(data).digest()[:length]


def fingerprint(data: bytes, groups: int = 4) -> str:
    """A human-readable fingerprint: SHA-256, first ``groups`` x 2 bytes, as 'ab12-cd34-...'."""
    h = hashlib.sha256(data).hexdigest()
    return "-".join(h[i * 4 : i * 4 + 4] for i in range(groups))
