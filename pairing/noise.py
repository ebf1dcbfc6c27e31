"""The Noise Protocol Framework, revision 34 (https://noiseprotocol.org/noise.html).

This module follows the specification section by section:

* §4 and §12: the crypto functions.  DH functions ``25519`` and ``448`` (X25519/X448 from
  ``cryptography``), cipher functions ``ChaChaPoly`` and ``AESGCM`` (``cryptography`` AEADs),
  hash functions ``SHA256``, ``SHA512``, ``BLAKE2s`` and ``BLAKE2b`` with HMAC and HKDF exactly
  as §4.3 defines them.
* §5.1 :class:`CipherState`, §5.2 :class:`SymmetricState`, §5.3 :class:`HandshakeState`.
* §7 every handshake pattern of the specification, as data: the one-way patterns (§7.4), the
  12 fundamental interactive patterns (§7.5) and the 23 deferred ones (§7.6, §18.1).
* §8 protocol names, §9 pre-shared keys: the ``psk`` token and the ``psk0``..``pskN`` modifiers,
  in any combination (``XXpsk0+psk3``).

Not supported, refused with :class:`~pairing.errors.ConfigError`: the ``fallback`` modifier
(§10.2) and the ``hfs`` KEM extension; pairkit uses neither and no published vector set we test
against covers them.

The module is sans-I/O: it draws no randomness of its own.  A :class:`HandshakeState` takes its
ephemeral private key as the ``e=`` argument or draws it from the ``rng`` callable it is given.
Private keys travel as raw bytes (``DHLEN`` bytes, as X25519/X448 encode them) and never appear
in a ``repr`` or an error text.

Typical use::

    alice = HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2s", True, s=alice_private)
    bob = HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2s", False, s=bob_private)
    bob.read_message(alice.write_message())
    alice.read_message(bob.write_message())
    bob.read_message(alice.write_message())
    send, receive = alice.split()  # initiator-to-responder first
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ExpiredError,
    ProtocolError,
    TooLargeError,
)

__all__ = [
    "MAX_MESSAGE_LEN",
    "PATTERNS",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "KeyPair",
    "NoiseProtocol",
    "NonceExhaustedError",
    "SymmetricState",
    "generate_keypair",
    "parse_protocol_name",
    "public_key",
]

#: §3: every Noise message, handshake or transport, is at most 65535 bytes.
MAX_MESSAGE_LEN: Final = 65535
#: §4.2: the AEAD authentication data adds 16 bytes to each encrypted field.
TAG_LEN: Final = 16
#: §5.1: the nonce 2^64-1 is reserved (REKEY uses it), so it is never used for a message.
MAX_NONCE: Final = 2**64 - 1
#: §9.2: a PSK is a 32-byte secret.
PSK_LEN: Final = 32
#: §8: a protocol name is at most 255 bytes.
MAX_NAME_LEN: Final = 255

Rng = Callable[[int], bytes]
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


def _require_bytes(value: object, what: str) -> bytes:
    if type(value) is bytes:  # the common case, returned as bytes() would (issue 13)
        return value
    # bytes(5) would silently be five zero bytes: refuse anything that is not bytes-like.
    if not isinstance(value, _BYTES_LIKE):
        raise ConfigError(f"the {what} must be bytes, not {type(value).__name__}")
    return bytes(value)


class NonceExhaustedError(ExpiredError):
    """This cipher key has used every nonce it may (§5.1); run a new handshake."""


# --------------------------------------------------------------------------------------------
# §4.1, §12.1, §12.2: DH functions


@dataclasses.dataclass(frozen=True)
class _DHFunctions:
    name: str
    dhlen: int
    private_from_bytes: Callable[[bytes], x25519.X25519PrivateKey | x448.X448PrivateKey]
    public_from_bytes: Callable[[bytes], x25519.X25519PublicKey | x448.X448PublicKey]


_DH: Final[dict[str, _DHFunctions]] = {
    "25519": _DHFunctions(
        "25519",
        32,
        x25519.X25519PrivateKey.from_private_bytes,
        x25519.X25519PublicKey.from_public_bytes,
    ),
    "448": _DHFunctions(
        "448", 56, x448.X448PrivateKey.from_private_bytes, x448.X448PublicKey.from_public_bytes
    ),
}


_PRIVATE_TYPES: Final[dict[str, type]] = {
    "25519": x25519.X25519PrivateKey,
    "448": x448.X448PrivateKey,
}


def _dh_functions(dh: str) -> _DHFunctions:
    try:
        return _DH[dh]
    except KeyError:
        raise ConfigError(
            f"unknown Noise DH function {dh!r}; pairkit knows {', '.join(_DH)}"
        ) from None


class KeyPair:
    """A DH key pair (§4.1): the ``cryptography`` private key object and the public key bytes.

    ``private`` is raw bytes (``DHLEN``) or a ``cryptography`` private key object for DH
    function ``dh``; the public key is always worked out from it, never given.  A device passes
    its static key to :class:`HandshakeState` as one of these, made once, so that no handshake
    works the public key out again (issue 13).
    """

    __slots__ = ("dh", "private", "public")

    def __init__(self, dh: str, private: Any) -> None:
        #: the DH function's name (``25519`` or ``448``)
        self.dh = dh
        self._load(_dh_functions(dh), private, "given")

    def _load(self, dh: _DHFunctions, private: Any, what: str) -> None:
        # A key object already loaded (a device's static key it holds) is used as it is:
        # loading raw bytes computes the public key, a fixed-base scalar multiplication.
        if type(private) is bytes and len(private) == dh.dhlen:  # the commonest, first
            self.private = dh.private_from_bytes(private)
        elif isinstance(private, _PRIVATE_TYPES[dh.name]):
            self.private = private
        elif not isinstance(private, _BYTES_LIKE) or len(private) != dh.dhlen:
            raise ConfigError(f"the {what} private key must be {dh.dhlen} bytes for DH {dh.name}")
        else:
            self.private = dh.private_from_bytes(bytes(private))
        self.public: bytes = self.private.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return "<key pair>"


def _key_pair(dh: _DHFunctions, private: Any, what: str) -> KeyPair:
    """A :class:`KeyPair` for DH ``dh``: ``private`` itself if it is one already."""
    if type(private) is KeyPair and private.dh == dh.name:
        return private
    pair = KeyPair.__new__(KeyPair)
    pair.dh = dh.name
    pair._load(dh, private, what)
    return pair


def public_key(dh: str, private: bytes) -> bytes:
    """The public key (``DHLEN`` bytes) of a raw private key for DH function ``dh`` (§12.1/12.2)."""
    return KeyPair(dh, private).public


def generate_keypair(dh: str, rng: Rng = os.urandom) -> tuple[bytes, bytes]:
    """GENERATE_KEYPAIR() (§4.1): ``(private, public)`` with the private key drawn from ``rng``.

    X25519 and X448 clamp any ``DHLEN`` random bytes into a valid scalar (RFC 7748 §5), so the
    private key is simply ``rng(DHLEN)``.
    """
    funcs = _dh_functions(dh)
    private = _draw_private(funcs, rng)
    return private, _key_pair(funcs, private, "generated").public


def _draw_private(funcs: _DHFunctions, rng: Rng) -> bytes:
    private = rng(funcs.dhlen)
    if not isinstance(private, bytes) or len(private) != funcs.dhlen:
        raise ConfigError(f"the rng must return {funcs.dhlen} bytes when asked for {funcs.dhlen}")
    return private


_LOW_ORDER: Final = (
    "the peer's public key is invalid (a low-order point, all-zero DH result); "
    "the handshake is refused"
)


_ZEROS: Final = {32: bytes(32), 56: bytes(56)}


# --------------------------------------------------------------------------------------------
# §4.2, §12.3, §12.4: cipher functions


def _chachapoly_nonce(n: int) -> bytes:
    # §12.3: 32 bits of zeros, then the little-endian encoding of n.
    if n < _FEW:
        return _CHACHAPOLY_NONCES[n]  # a handshake's nonces, made once (issue 13)
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def _aesgcm_nonce(n: int) -> bytes:
    # §12.4: 32 bits of zeros, then the big-endian encoding of n.
    if n < _FEW:
        return _AESGCM_NONCES[n]
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "big")


_FEW: Final = 16
_CHACHAPOLY_NONCES: Final = tuple(bytes(4) + n.to_bytes(8, "little") for n in range(_FEW))
_AESGCM_NONCES: Final = tuple(bytes(4) + n.to_bytes(8, "big") for n in range(_FEW))


_CIPHERS: Final[dict[str, tuple[type[ChaCha20Poly1305] | type[AESGCM], Callable[[int], bytes]]]] = {
    "ChaChaPoly": (ChaCha20Poly1305, _chachapoly_nonce),
    "AESGCM": (AESGCM, _aesgcm_nonce),
}
_NONCE_TABLES: Final[dict[str, tuple[bytes, ...]]] = {
    "ChaChaPoly": _CHACHAPOLY_NONCES,
    "AESGCM": _AESGCM_NONCES,
}
#: §5.1 DECRYPT's failure, as :meth:`CipherState.decrypt_with_ad` reports it
_ALTERED: Final = "a Noise message failed to authenticate: it was altered, or the keys differ"


# --------------------------------------------------------------------------------------------
# §4.3, §12.5 to §12.8: hash functions, HMAC and HKDF


@dataclasses.dataclass(frozen=True)
class _HashFunctions:
    name: str
    new: Callable[..., hashlib._Hash]
    hashlen: int
    blocklen: int
    #: the same hash for ``cryptography``'s HKDF, where it has one (SHA-256, SHA-512)
    rfc5869: hashes.HashAlgorithm | None = None

    def hash(self, data: bytes) -> bytes:
        """HASH(data)."""
        return self.new(data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC-HASH(key, data) (§4.3): RFC 2104 with this hash.

        ``hmac`` pads the key to the hash object's ``block_size``, which for each of these
        hashes is Noise's BLOCKLEN (64 for SHA256 and BLAKE2s, 128 for SHA512 and BLAKE2b).
        """
        return hmac.digest(key, data, self.new)

    def hkdf(self, chaining_key: bytes, ikm: bytes, num_outputs: int) -> tuple[bytes, ...]:
        """HKDF(chaining_key, input_key_material, num_outputs) (§4.3).

        §4.3's HKDF is RFC 5869's with ``salt = chaining_key``, an empty ``info`` and
        ``num_outputs * HASHLEN`` bytes of output: ``temp_key`` is HKDF-Extract's PRK and
        output1, output2, output3 are HKDF-Expand's T(1), T(2), T(3).  Where ``cryptography``
        has the hash, its HKDF computes all of it in one call (issue 13: a third faster than
        three or four ``hmac.digest`` calls); otherwise (BLAKE2) §4.3 is followed line by line.
        Both give the same bytes (tests/test_noise.py, and every vector).
        """
        algorithm = self.rfc5869
        if algorithm is not None:
            hashlen = self.hashlen
            okm = HKDF(algorithm, hashlen * num_outputs, chaining_key, None).derive(ikm)
            if num_outputs == 2:
                return okm[:hashlen], okm[hashlen:]
            return okm[:hashlen], okm[hashlen : 2 * hashlen], okm[2 * hashlen :]
        return self.hkdf_hmac(chaining_key, ikm, num_outputs)

    def hkdf_hmac(self, chaining_key: bytes, ikm: bytes, num_outputs: int) -> tuple[bytes, ...]:
        """HKDF(chaining_key, input_key_material, num_outputs) exactly as §4.3 writes it."""
        temp_key = self.hmac(chaining_key, ikm)
        output1 = self.hmac(temp_key, b"\x01")
        output2 = self.hmac(temp_key, output1 + b"\x02")
        if num_outputs == 2:
            return output1, output2
        output3 = self.hmac(temp_key, output2 + b"\x03")
        return output1, output2, output3


_HASHES: Final[dict[str, _HashFunctions]] = {
    "SHA256": _HashFunctions("SHA256", hashlib.sha256, 32, 64, hashes.SHA256()),
    "SHA512": _HashFunctions("SHA512", hashlib.sha512, 64, 128, hashes.SHA512()),
    "BLAKE2s": _HashFunctions("BLAKE2s", hashlib.blake2s, 32, 64),
    "BLAKE2b": _HashFunctions("BLAKE2b", hashlib.blake2b, 64, 128),
}


# --------------------------------------------------------------------------------------------
# §5.1: CipherState


class CipherState:
    """A cipher key ``k`` and a nonce ``n`` (Noise rev 34 §5.1).

    With no key, :meth:`encrypt_with_ad` and :meth:`decrypt_with_ad` return their input
    unchanged, as §5.1 says; the transport cipher states that :meth:`HandshakeState.split`
    returns always have a key.  Every ciphertext and plaintext is held to the 65535-byte Noise
    message limit (§3).
    """

    __slots__ = ("_aead", "_aead_class", "_cipher", "_k", "_n", "_nonce", "_nonces", "_refusal")

    def __init__(self, cipher: str, key: bytes | None = None) -> None:
        try:
            aead_class, nonce = _CIPHERS[cipher]
        except KeyError:
            raise ConfigError(
                f"unknown Noise cipher {cipher!r}; pairkit knows {', '.join(_CIPHERS)}"
            ) from None
        self._cipher = cipher
        self._aead_class: type[ChaCha20Poly1305] | type[AESGCM] = aead_class
        self._nonce = nonce
        #: the encoded nonces 0 to _FEW - 1, which a handshake uses (issue 13)
        self._nonces = _NONCE_TABLES[cipher]
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self._k: bytes | None = None
        self._n = 0
        # Set on the unused half of a one-way pattern's split (§7.4): it must never be used.
        self._refusal: str | None = None
        self.initialize_key(key)

    def __repr__(self) -> str:
        return f"<CipherState {self._cipher} has_key={self.has_key()} n={self._n}>"

    @property
    def cipher(self) -> str:
        """The cipher function's name (``ChaChaPoly`` or ``AESGCM``)."""
        return self._cipher

    @property
    def key(self) -> bytes | None:
        """The cipher key ``k``, to hand a Split() result to pairkit's record channel.

        Noise rev 34 §5.2: after Split() the transport keys may be used by another record
        layer; pairkit's :mod:`pairing.channel` keeps its own explicit sequence numbers.
        """
        return self._k

    @property
    def n(self) -> int:
        """The nonce the next encryption or decryption will use."""
        return self._n

    def initialize_key(self, key: bytes | None) -> None:
        """InitializeKey(key) (§5.1): set ``k = key`` (``None`` is *empty*) and ``n = 0``."""
        if key is not None:
            key = _require_bytes(key, "cipher key")
            if len(key) != 32:
                raise ConfigError("a Noise cipher key must be 32 bytes")
        # The AEAD object is made at the first encryption or decryption with this key: a
        # handshake replaces its key at every MixKey, most of them never used (issue 13).
        self._aead = None
        self._k = key  # bytes (_require_bytes copies anything else)
        self._n = 0

    def has_key(self) -> bool:
        """HasKey() (§5.1)."""
        return self._k is not None

    def set_nonce(self, nonce: int) -> None:
        """SetNonce(nonce) (§5.1), for out-of-order transport messages (§11.4)."""
        if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= MAX_NONCE:
            raise ConfigError("a Noise nonce is an integer from 0 to 2^64-1")
        self._n = nonce

    def _check_usable(self) -> None:
        if self._refusal is not None:
            raise ProtocolError(self._refusal)
        if self._k is not None and self._n >= MAX_NONCE:
            raise NonceExhaustedError(
                "this Noise cipher key has used all its nonces; run a new handshake"
            )

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd(ad, plaintext) (§5.1): ``ENCRYPT(k, n++, ad, plaintext)``."""
        self._check_usable()
        plaintext = _require_bytes(plaintext, "plaintext")
        if self._k is None:
            if len(plaintext) > MAX_MESSAGE_LEN:
                raise TooLargeError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
            return plaintext
        if len(plaintext) > MAX_MESSAGE_LEN - TAG_LEN:
            raise TooLargeError(
                f"a Noise message is at most {MAX_MESSAGE_LEN} bytes, so a plaintext is at most "
                f"{MAX_MESSAGE_LEN - TAG_LEN} bytes; split it"
            )
        ciphertext = self._cipher_object().encrypt(
            self._nonce(self._n), plaintext, _require_bytes(ad, "associated data")
        )
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DecryptWithAd(ad, ciphertext) (§5.1): ``DECRYPT(k, n++, ad, ciphertext)``.

        On an authentication failure ``n`` is left as it was and
        :class:`~pairing.errors.AuthenticationError` is raised.
        """
        self._check_usable()
        ciphertext = _require_bytes(ciphertext, "ciphertext")
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise TooLargeError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        if self._k is None:
            return ciphertext
        if len(ciphertext) < TAG_LEN:
            raise AuthenticationError("a Noise message failed to authenticate (it is too short)")
        try:
            plaintext = self._cipher_object().decrypt(
                self._nonce(self._n), ciphertext, _require_bytes(ad, "associated data")
            )
        except InvalidTag:
            raise AuthenticationError(_ALTERED) from None
        self._n += 1
        return plaintext

    def rekey(self) -> None:
        """Rekey() (§5.1, §11.3): ``k = REKEY(k)``; ``n`` is left unchanged.

        REKEY is the §4.2 default: the first 32 bytes of ``ENCRYPT(k, 2^64-1, zerolen, zeros)``.
        """
        if self._refusal is not None:
            raise ProtocolError(self._refusal)
        if self._k is None:
            raise ProtocolError("cannot rekey a Noise cipher state that has no key")
        new_key = self._cipher_object().encrypt(self._nonce(MAX_NONCE), bytes(32), b"")[:32]
        self._aead = None
        self._k = new_key

    def _cipher_object(self) -> ChaCha20Poly1305 | AESGCM:
        """The AEAD for key ``k``, made at its first use."""
        aead = self._aead
        if aead is None:
            assert self._k is not None
            aead = self._aead = self._aead_class(self._k)
        return aead


def _keyed(cipher: str, key: bytes) -> CipherState:
    """``CipherState(cipher, key)`` for a key known to be 32 bytes of a known cipher (Split()'s
    outputs), built without InitializeKey's checks (issue 13)."""
    cs = CipherState.__new__(CipherState)
    cs._cipher = cipher
    cs._aead_class, cs._nonce = _CIPHERS[cipher]
    cs._nonces = _NONCE_TABLES[cipher]
    cs._aead = None
    cs._k = key
    cs._n = 0
    cs._refusal = None
    return cs


# --------------------------------------------------------------------------------------------
# §7: handshake patterns, as data, one a line, in the specification's notation with "|" where
# the specification breaks the line: pre-messages, "...", then the message patterns; "->" is
# initiator to responder.  One-way (§7.4), fundamental (§7.5), then deferred (§7.6, §18.1).

_PATTERN_TEXT: Final = """
N:    <- s | ... | -> e, es
K:    -> s | <- s | ... | -> e, es, ss
X:    <- s | ... | -> e, es, s, ss
NN:   -> e | <- e, ee
NK:   <- s | ... | -> e, es | <- e, ee
NX:   -> e | <- e, ee, s, es
KN:   -> s | ... | -> e | <- e, ee, se
KK:   -> s | <- s | ... | -> e, es, ss | <- e, ee, se
KX:   -> s | ... | -> e | <- e, ee, se, s, es
XN:   -> e | <- e, ee | -> s, se
XK:   <- s | ... | -> e, es | <- e, ee | -> s, se
XX:   -> e | <- e, ee, s, es | -> s, se
IN:   -> e, s | <- e, ee, se
IK:   <- s | ... | -> e, es, s, ss | <- e, ee, se
IX:   -> e, s | <- e, ee, se, s, es
NK1:  <- s | ... | -> e | <- e, ee, es
NX1:  -> e | <- e, ee, s | -> es
X1N:  -> e | <- e, ee | -> s | <- se
X1K:  <- s | ... | -> e, es | <- e, ee | -> s | <- se
XK1:  <- s | ... | -> e | <- e, ee, es | -> s, se
X1K1: <- s | ... | -> e | <- e, ee, es | -> s | <- se
X1X:  -> e | <- e, ee, s, es | -> s | <- se
XX1:  -> e | <- e, ee, s | -> es, s, se
X1X1: -> e | <- e, ee, s | -> es, s | <- se
K1N:  -> s | ... | -> e | <- e, ee | -> se
K1K:  -> s | <- s | ... | -> e, es | <- e, ee | -> se
KK1:  -> s | <- s | ... | -> e | <- e, ee, se, es
K1K1: -> s | <- s | ... | -> e | <- e, ee, es | -> se
K1X:  -> s | ... | -> e | <- e, ee, s, es | -> se
KX1:  -> s | ... | -> e | <- e, ee, se, s | -> es
K1X1: -> s | ... | -> e | <- e, ee, s | -> se, es
I1N:  -> e, s | <- e, ee | -> se
I1K:  <- s | ... | -> e, es, s | <- e, ee | -> se
IK1:  <- s | ... | -> e, s | <- e, ee, se, es
I1K1: <- s | ... | -> e, s | <- e, ee, es | -> se
I1X:  -> e, s | <- e, ee, s, es | -> se
IX1:  -> e, s | <- e, ee, se, s | -> es
I1X1: -> e, s | <- e, ee, s | -> se, es
"""

_TOKENS: Final = frozenset({"e", "s", "ee", "es", "se", "ss", "psk"})
#: a token's kind in a pattern's plan (HandshakePattern.plan)
_OP_E: Final = 0
_OP_S: Final = 1
_OP_PSK: Final = 2
_OP_DH: Final = 3


@dataclasses.dataclass(frozen=True)
class HandshakePattern:
    """A handshake pattern (§7.1): two pre-message patterns and the message patterns.

    Messages alternate, the initiator sending the first (§7.1).  Tokens are the strings of §7.1
    and §9.2: ``e``, ``s``, ``ee``, ``es``, ``se``, ``ss``, ``psk``.
    """

    name: str
    initiator_premessage: tuple[str, ...]
    responder_premessage: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for pre in (self.initiator_premessage, self.responder_premessage):
            if pre not in ((), ("e",), ("s",), ("e", "s")):
                raise ConfigError(f"pattern {self.name}: {pre} is not a pre-message pattern")
        if not self.messages:
            raise ConfigError(f"pattern {self.name} has no messages")
        for tokens in self.messages:
            if not set(tokens) <= _TOKENS:
                raise ConfigError(f"pattern {self.name} has an unknown token")

    @property
    def one_way(self) -> bool:
        """A one-way pattern (§7.4): one message, then only the initiator sends."""
        return len(self.messages) == 1

    @functools.cached_property
    def has_psk(self) -> bool:
        """Whether the pattern holds a ``psk`` token (§9.2), which also changes ``e``."""
        return any("psk" in tokens for tokens in self.messages)

    @functools.cached_property
    def psk_count(self) -> int:
        """How many PSKs the pattern consumes, one per ``psk`` token, in order (§9.2)."""
        return sum(tokens.count("psk") for tokens in self.messages)

    def sent_by(self, initiator: bool) -> tuple[tuple[str, ...], ...]:
        """The message patterns one party sends (the initiator sends the even ones)."""
        return self.messages[0 if initiator else 1 :: 2]

    def premessage(self, initiator: bool) -> tuple[str, ...]:
        """The pre-message pattern of one party (its public keys the other knows in advance)."""
        return self.initiator_premessage if initiator else self.responder_premessage

    def required_keys(self, initiator: bool) -> frozenset[str]:
        """The keys (of ``s``, ``e``, ``rs``, ``re``) a party must pass to :class:`HandshakeState`.

        ``s`` if the party sends its static key or has it in a pre-message, ``rs``/``re`` if the
        peer's pre-message lists them, ``e`` if the party's own pre-message lists it.
        """
        return self._keys(initiator)[0]

    def allowed_keys(self, initiator: bool) -> frozenset[str]:
        """The keys a party may pass: the required ones, and ``e`` if it sends an ephemeral."""
        return self._keys(initiator)[1]

    def _keys(self, initiator: bool) -> tuple[frozenset[str], frozenset[str]]:
        # (required, allowed) per role, worked out once per pattern (every handshake asks)
        cache: dict[bool, tuple[frozenset[str], frozenset[str]]] = self.__dict__.setdefault(
            "_keys_cache", {}
        )
        keys = cache.get(initiator)
        if keys is None:
            required = self._required_keys(initiator)
            allowed = set(required)
            if any("e" in tokens for tokens in self.sent_by(initiator)):
                allowed.add("e")
            keys = cache[initiator] = (required, frozenset(allowed))
        return keys

    def plan(self, initiator: bool) -> tuple[tuple[tuple[int, bool, bool, str], ...], ...]:
        """Each message's tokens as one party processes them, worked out once per pattern and
        role (issue 13): ``(op, a, b, token)`` with op :data:`_OP_E`, :data:`_OP_S`,
        :data:`_OP_PSK`, or :data:`_OP_DH` where ``a`` says the local key of the DH is the
        ephemeral and ``b`` that the remote one is (§5.3: a DH token's first letter is the
        initiator's key, its second the responder's)."""
        cache: dict[bool, tuple[tuple[tuple[int, bool, bool, str], ...], ...]] = (
            self.__dict__.setdefault("_plan_cache", {})
        )
        plan = cache.get(initiator)
        if plan is None:
            messages = []
            for tokens in self.messages:
                ops = []
                for token in tokens:
                    if token == "e":
                        ops.append((_OP_E, False, False, token))
                    elif token == "s":
                        ops.append((_OP_S, False, False, token))
                    elif token == "psk":
                        ops.append((_OP_PSK, False, False, token))
                    else:
                        local, remote = (token[0], token[1]) if initiator else (token[1], token[0])
                        ops.append((_OP_DH, local == "e", remote == "e", token))
                messages.append(tuple(ops))
            plan = cache[initiator] = tuple(messages)
        return plan

    def _required_keys(self, initiator: bool) -> frozenset[str]:
        own, peer = self.premessage(initiator), self.premessage(not initiator)
        keys = {"rs" if t == "s" else "re" for t in peer}
        keys.update(t for t in own if t == "e")
        if "s" in own or any("s" in tokens for tokens in self.sent_by(initiator)):
            keys.add("s")
        return frozenset(keys)


def _parse_patterns(text: str) -> dict[str, HandshakePattern]:
    """Read the pattern table, written in the specification's notation one pattern a line."""
    patterns: dict[str, HandshakePattern] = {}
    for row in text.strip().splitlines():
        name, _, rest = row.partition(":")
        items = [item.strip() for item in rest.split("|")]
        pre: dict[str, tuple[str, ...]] = {"->": (), "<-": ()}
        if "..." in items:
            cut = items.index("...")
            for item in items[:cut]:
                pre[item[:2]] = tuple(t.strip() for t in item[2:].split(","))
            items = items[cut + 1 :]
        messages: list[tuple[str, ...]] = []
        for index, item in enumerate(items):
            # Messages alternate, the initiator first (§7.1): the table must say so too.
            if item[:2] != ("->" if index % 2 == 0 else "<-"):
                raise ConfigError(f"pattern table: {name} message {index} has the wrong arrow")
            messages.append(tuple(t.strip() for t in item[2:].split(",")))
        patterns[name] = HandshakePattern(name, pre["->"], pre["<-"], tuple(messages))
    return patterns


#: Every handshake pattern of Noise rev 34 §7.4, §7.5 and §18.1 (38 patterns), by name.
PATTERNS: Final[dict[str, HandshakePattern]] = _parse_patterns(_PATTERN_TEXT)


def _apply_psk_modifiers(
    base: HandshakePattern, name: str, modifiers: list[str]
) -> HandshakePattern:
    """Apply ``psk0``..``pskN`` (§9.4): psk0 opens message 1; pskN closes message N."""
    messages = [list(tokens) for tokens in base.messages]
    numbers: list[int] = []
    for modifier in modifiers:
        match = re.fullmatch(r"psk(0|[1-9][0-9]*)", modifier)
        if match is None:
            if modifier == "fallback" or modifier.startswith("hfs"):
                raise ConfigError(
                    f"the Noise modifier {modifier!r} (in {name}) is not supported by pairkit; "
                    "only psk0..pskN modifiers are"
                )
            raise ConfigError(f"unknown Noise pattern modifier {modifier!r} in {name}")
        number = int(match.group(1))
        if number > len(messages):
            raise ConfigError(
                f"{name}: {modifier} needs message {number}, but {base.name} has only "
                f"{len(messages)}"
            )
        numbers.append(number)
    # §8.1: modifiers whose order does not matter must be sorted, so each protocol has one name.
    if numbers != sorted(set(numbers)):
        raise ConfigError(f"{name}: psk modifiers must be distinct and in increasing order")
    for number in numbers:
        if number == 0:
            messages[0].insert(0, "psk")
        else:
            messages[number - 1].append("psk")
    return HandshakePattern(
        name,
        base.initiator_premessage,
        base.responder_premessage,
        tuple(tuple(tokens) for tokens in messages),
    )


@dataclasses.dataclass(frozen=True)
class NoiseProtocol:
    """A parsed Noise protocol name (§8): pattern (with modifiers applied) and crypto functions."""

    name: str
    pattern: HandshakePattern
    dh: str
    cipher: str
    hash: str

    @property
    def dhlen(self) -> int:
        """DHLEN of the DH functions (§4.1)."""
        return _DH[self.dh].dhlen

    @property
    def hashlen(self) -> int:
        """HASHLEN of the hash function (§4.3)."""
        return _HASHES[self.hash].hashlen


_NAME_SECTION = re.compile(r"[A-Za-z0-9+/]+")
_PATTERN_SECTION = re.compile(r"([A-Z0-9]+)([a-z][a-z0-9]*(?:\+[a-z][a-z0-9]*)*)?")


#: names parsed before (a NoiseProtocol is immutable): each handshake parses its name, and the
#: regular expressions and the PSK modifiers cost more than the rest of Initialize()
_PARSED: dict[str, NoiseProtocol] = {}
_PARSED_MAX = 64


def parse_protocol_name(name: str) -> NoiseProtocol:
    """Parse ``Noise_<pattern><modifiers>_<dh>_<cipher>_<hash>`` (§8, §8.1, §8.2, §9.4).

    Raises :class:`~pairing.errors.ConfigError` for a malformed name, an unknown pattern or
    algorithm, or an unsupported modifier (``fallback``, ``hfs``).
    """
    if type(name) is str and name in _PARSED:
        return _PARSED[name]
    protocol = _parse_protocol_name(name)
    if len(_PARSED) < _PARSED_MAX:
        _PARSED[name] = protocol
    return protocol


def _parse_protocol_name(name: str) -> NoiseProtocol:
    if not isinstance(name, str) or not name.isascii() or len(name) > MAX_NAME_LEN:
        raise ConfigError("a Noise protocol name is an ASCII string of at most 255 characters")
    sections = name.split("_")
    if len(sections) != 5 or sections[0] != "Noise":
        raise ConfigError(
            f"{name!r} is not a Noise protocol name; expected Noise_<pattern>_<dh>_<cipher>_<hash>"
        )
    _, pattern_section, dh, cipher, hash_name = sections
    if not all(_NAME_SECTION.fullmatch(s) for s in sections[1:]):
        raise ConfigError(f"{name!r}: a name section holds only letters, digits, '+' and '/'")
    match = _PATTERN_SECTION.fullmatch(pattern_section)
    if match is None:
        raise ConfigError(f"{name!r}: malformed handshake pattern section {pattern_section!r}")
    base_name, modifier_text = match.group(1), match.group(2)
    try:
        base = PATTERNS[base_name]
    except KeyError:
        raise ConfigError(f"{name!r}: unknown Noise handshake pattern {base_name!r}") from None
    modifiers = modifier_text.split("+") if modifier_text else []
    pattern = _apply_psk_modifiers(base, pattern_section, modifiers) if modifiers else base
    _dh_functions(dh)
    if cipher not in _CIPHERS:
        raise ConfigError(
            f"{name!r}: unknown Noise cipher {cipher!r}; pairkit knows {', '.join(_CIPHERS)}"
        )
    if hash_name not in _HASHES:
        raise ConfigError(
            f"{name!r}: unknown Noise hash {hash_name!r}; pairkit knows {', '.join(_HASHES)}"
        )
    return NoiseProtocol(name, pattern, dh, cipher, hash_name)


def _as_protocol(protocol: NoiseProtocol | str) -> NoiseProtocol:
    return protocol if isinstance(protocol, NoiseProtocol) else parse_protocol_name(protocol)


# --------------------------------------------------------------------------------------------
# §5.2: SymmetricState


class SymmetricState:
    """A :class:`CipherState` plus the chaining key ``ck`` and hash ``h`` (Noise rev 34 §5.2).

    Building one is InitializeSymmetric(protocol_name).
    """

    __slots__ = ("_ck", "_hash", "_hashlen", "_new", "_protocol", "_rfc5869", "cipher_state", "h")

    def __init__(self, protocol: NoiseProtocol | str) -> None:
        self._protocol = _as_protocol(protocol)
        self._hash = _HASHES[self._protocol.hash]
        self._new = self._hash.new
        self._hashlen = self._hash.hashlen
        self._rfc5869 = self._hash.rfc5869
        name = self._protocol.name.encode("ascii")
        # InitializeSymmetric: h = protocol_name zero-padded to HASHLEN, or HASH(protocol_name).
        if len(name) <= self._hash.hashlen:
            self.h: bytes = name.ljust(self._hash.hashlen, b"\x00")
        else:
            self.h = self._hash.hash(name)
        self._ck = self.h
        self.cipher_state = CipherState(self._protocol.cipher)

    def __repr__(self) -> str:
        return f"<SymmetricState {self._protocol.name}>"

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(ikm) (§5.2): ``ck, temp_k = HKDF(ck, ikm, 2)``; InitializeKey(temp_k[:32])."""
        algorithm = self._rfc5869
        if algorithm is None:
            self._ck, temp_k = self._hash.hkdf_hmac(self._ck, input_key_material, 2)
            self.cipher_state.initialize_key(temp_k[:32])
            return
        # _HashFunctions.hkdf's one call, written out (issue 13): it runs at every DH token.
        hashlen = self._hashlen
        okm = HKDF(algorithm, 2 * hashlen, self._ck, None).derive(input_key_material)
        self._ck = okm[:hashlen]
        # InitializeKey(temp_k[:32]) of a key known to be 32 bytes (HASHLEN is 32 or 64)
        cs = self.cipher_state
        cs._aead = None
        cs._k = okm[hashlen : hashlen + 32]
        cs._n = 0

    def mix_hash(self, data: bytes) -> None:
        """MixHash(data) (§5.2): ``h = HASH(h || data)``."""
        self.h = self._new(self.h + data).digest()

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """MixKeyAndHash(ikm) (§5.2, for PSKs §9): three HKDF outputs: ck, a hash input, a key."""
        algorithm = self._rfc5869
        if algorithm is None:
            self._ck, temp_h, temp_k = self._hash.hkdf_hmac(self._ck, input_key_material, 3)
            self.mix_hash(temp_h)
            self.cipher_state.initialize_key(temp_k[:32])
            return
        # _HashFunctions.hkdf's one call, written out as in mix_key (issue 13)
        hashlen = self._hashlen
        okm = HKDF(algorithm, 3 * hashlen, self._ck, None).derive(input_key_material)
        self._ck = okm[:hashlen]
        self.h = self._new(self.h + okm[hashlen : 2 * hashlen]).digest()
        cs = self.cipher_state
        cs._aead = None
        cs._k = okm[2 * hashlen : 2 * hashlen + 32]
        cs._n = 0

    def get_handshake_hash(self) -> bytes:
        """GetHandshakeHash() (§5.2, §11.2): ``h``."""
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash(plaintext) (§5.2): encrypt with ``h`` as the AD, then MixHash."""
        cs = self.cipher_state
        h = self.h
        n = cs._n
        key = cs._k
        if (
            key is not None
            and n < _FEW
            and cs._refusal is None
            and type(plaintext) is bytes
            and len(plaintext) <= MAX_MESSAGE_LEN - TAG_LEN
        ):
            # A handshake's encryption: CipherState.encrypt_with_ad's checks all pass (a key,
            # a nonce far from 2^64-1, no refusal, bytes of a size that fits), written out.
            aead = cs._aead
            if aead is None:
                aead = cs._aead = cs._aead_class(key)
            ciphertext = aead.encrypt(cs._nonces[n], plaintext, h)
            cs._n = n + 1
        else:
            ciphertext = cs.encrypt_with_ad(h, plaintext)
        self.h = self._new(h + ciphertext).digest()
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash(ciphertext) (§5.2): decrypt with ``h`` as the AD, then MixHash."""
        cs = self.cipher_state
        h = self.h
        n = cs._n
        key = cs._k
        if (
            key is not None
            and n < _FEW
            and cs._refusal is None
            and type(ciphertext) is bytes
            and TAG_LEN <= len(ciphertext) <= MAX_MESSAGE_LEN
        ):
            # CipherState.decrypt_with_ad's path for a handshake's field, written out: on an
            # authentication failure n is left as it was.
            aead = cs._aead
            if aead is None:
                aead = cs._aead = cs._aead_class(key)
            try:
                plaintext = aead.decrypt(cs._nonces[n], ciphertext, h)
            except InvalidTag:
                raise AuthenticationError(_ALTERED) from None
            cs._n = n + 1
        else:
            plaintext = cs.decrypt_with_ad(h, ciphertext)
        self.h = self._new(h + ciphertext).digest()
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split() (§5.2): two cipher states from ``HKDF(ck, zerolen, 2)``, keys cut to 32 bytes."""
        temp_k1, temp_k2 = self._hash.hkdf(self._ck, b"", 2)
        cipher = self._protocol.cipher
        return _keyed(cipher, temp_k1[:32]), _keyed(cipher, temp_k2[:32])


# --------------------------------------------------------------------------------------------
# §5.3: HandshakeState


def _check_public(value: bytes | None, dhlen: int, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, _BYTES_LIKE) or len(value) != dhlen:
        raise ConfigError(f"the {what} public key must be {dhlen} bytes")
    return bytes(value)


#: a message step's kind beyond the pattern's tokens: the payload's EncryptAndHash (§5.3)
_OP_PAYLOAD: Final = 4


class _Role:
    """What Initialize() (§5.3) works out from the protocol name and the role alone, worked out
    once per protocol and role instead of at every handshake (issue 13): which keys the caller
    may pass, the pre-message steps, each message's steps and the crypto functions."""

    __slots__ = (
        "aead_class",
        "cipher",
        "dh",
        "dhlen",
        "has_psk",
        "hashfns",
        "hashlen",
        "initiator",
        "keys_ok",
        "messages",
        "name",
        "new",
        "nonces",
        "one_way",
        "padded_name",
        "premessage",
        "protocol",
        "psk_count",
        "readers",
        "rfc5869",
        "steps",
        "writers",
    )

    def __init__(self, protocol: NoiseProtocol, initiator: bool) -> None:
        pattern = protocol.pattern
        self.protocol = protocol
        self.dh = _DH[protocol.dh]
        self.dhlen = self.dh.dhlen
        hashfns = self.hashfns = _HASHES[protocol.hash]
        self.new = hashfns.new
        self.hashlen = hashfns.hashlen
        self.rfc5869 = hashfns.rfc5869
        self.cipher = protocol.cipher
        self.aead_class = _CIPHERS[protocol.cipher][0]
        self.nonces = _NONCE_TABLES[protocol.cipher]
        # InitializeSymmetric (§5.2): a name of at most HASHLEN bytes is h, zero-padded; a
        # longer one is hashed at each handshake, as the specification (and the bench's floor)
        # has it.
        name = self.name = protocol.name.encode("ascii")
        self.padded_name = name.ljust(self.hashlen, b"\x00") if len(name) <= self.hashlen else None
        # The keys the caller passes are right when it passes every required one and no other.
        required, allowed = pattern.required_keys(initiator), pattern.allowed_keys(initiator)
        self.keys_ok = frozenset(
            given for given, names in _GIVEN.items() if required <= names <= allowed
        )
        self.psk_count = pattern.psk_count
        self.has_psk = pattern.has_psk
        # Pre-messages (§5.3): the initiator's public keys first, each in the listed order;
        # (whether the key is this party's own, the token)
        self.premessage = tuple(
            (owner == initiator, token)
            for owner in (True, False)
            for token in pattern.premessage(owner)
        )
        # Each message's tokens (HandshakePattern.plan), then its payload.
        self.steps = tuple(
            (*ops, (_OP_PAYLOAD, False, False, "")) for ops in pattern.plan(initiator)
        )
        self.messages = len(pattern.messages)
        self.one_way = pattern.one_way
        self.initiator = initiator
        # WriteMessage and ReadMessage of each message, generated from the steps (§5.3)
        self.writers = _message_functions(self, write=True)
        self.readers = _message_functions(self, write=False)


class _Symmetric:
    """A handshake's symmetric state (§5.2): ``ck``, ``h`` and its cipher state's ``k`` and
    ``n``, plus the AEAD object of ``k`` once made.  :class:`HandshakeState` keeps these here
    rather than in a :class:`SymmetricState` and a :class:`CipherState`, and works on them as
    local variables during a message (issue 13); the repr shows none of them."""

    __slots__ = ("aead", "ck", "h", "k", "n")

    def __init__(self, ck: bytes, h: bytes, k: bytes | None) -> None:
        self.ck = ck
        self.h = h
        self.k = k
        self.n = 0
        self.aead: Any = None

    def __repr__(self) -> str:
        return "<Noise symmetric state>"


#: (protocol name, initiator) -> its _Role, for the names parsed before (see _PARSED)
_ROLES: dict[tuple[str, bool], _Role] = {}


def _role(protocol_name: str, initiator: bool) -> _Role:
    if type(protocol_name) is str:
        role = _ROLES.get((protocol_name, initiator))
        if role is not None:
            return role
    role = _Role(parse_protocol_name(protocol_name), initiator)
    if len(_ROLES) < 2 * _PARSED_MAX:
        _ROLES[protocol_name, initiator] = role
    return role


def _mix_key(role: _Role, ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """MixKey(ikm) (§5.2): ``ck, temp_k = HKDF(ck, ikm, 2)``; the new ``ck`` and the cipher key
    ``temp_k[:32]`` (as SymmetricState.mix_key, on the handshake's own ``ck``)."""
    algorithm = role.rfc5869
    if algorithm is None:
        ck, temp_k = role.hashfns.hkdf_hmac(ck, ikm, 2)
        return ck, temp_k[:32]
    hashlen = role.hashlen
    okm = HKDF(algorithm, 2 * hashlen, ck, None).derive(ikm)
    return okm[:hashlen], okm[hashlen : hashlen + 32]


def _mix_key_and_hash(role: _Role, ck: bytes, h: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    """MixKeyAndHash(ikm) (§5.2, for PSKs §9): ``ck, temp_h, temp_k = HKDF(ck, ikm, 3)``;
    MixHash(temp_h); the new ``ck``, ``h`` and cipher key ``temp_k[:32]``."""
    algorithm = role.rfc5869
    if algorithm is None:
        ck, temp_h, temp_k = role.hashfns.hkdf_hmac(ck, ikm, 3)
    else:
        hashlen = role.hashlen
        okm = HKDF(algorithm, 3 * hashlen, ck, None).derive(ikm)
        ck, temp_h, temp_k = okm[:hashlen], okm[hashlen : 2 * hashlen], okm[2 * hashlen :]
    return ck, role.new(h + temp_h).digest(), temp_k[:32]


def _aead_by_the_rules(
    role: _Role, encrypt: bool, k: bytes | None, n: int, h: bytes, data: bytes
) -> tuple[bytes, int]:
    """EncryptWithAd or DecryptWithAd (§5.1) by :class:`CipherState` itself, with all its checks
    and error texts, for a field the handshake's own path does not take (no key, a nonce past
    the table, a size out of bounds); the output and the next nonce."""
    cs = CipherState(role.cipher) if k is None else _keyed(role.cipher, k)
    cs._n = n
    out = cs.encrypt_with_ad(h, data) if encrypt else cs.decrypt_with_ad(h, data)
    return out, cs._n


# --------------------------------------------------------------------------------------------
# §5.3 WriteMessage / ReadMessage, one function per message of a pattern and role
#
# Each message's tokens (_Role.steps, from the pattern table through HandshakePattern.plan) are
# turned into the body of one Python function when a protocol is first used: the same steps as
# a loop over the tokens would take, in the same order and with the same checks and error
# texts, without deciding at every token what the token is (issue 13).  The text below is each
# step's code; _message_source puts a message's steps together.

#: MixKey(ikm) (§5.2): ck, temp_k = HKDF(ck, ikm, 2); InitializeKey(temp_k[:32]).  With a hash
#: ``cryptography``'s HKDF has, one RFC 5869 call (as _mix_key); else §4.3 by hmac (_mix_key).
_GEN_MIX_KEY_RFC5869: Final = """\
    okm = HKDF(algorithm, {twice}, ck, None).derive({ikm})
    ck, k = okm[:{hashlen}], okm[{hashlen}:{key_end}]
    n, aead = 0, None
"""
_GEN_MIX_KEY_HMAC: Final = """\
    ck, k = _mix_key(role, ck, {ikm})
    n, aead = 0, None
"""
#: a DH token (§5.3): MixKey(DH(...)), the keys picked by the token and the role
_GEN_DH: Final = """\
    ikm = self._dh({local_e}, {remote_e}, {token!r})
"""
#: psk (§9.2): MixKeyAndHash(psk), the PSKs taken in order
_GEN_PSK: Final = """\
    ck, h, k = _mix_key_and_hash(role, ck, h, self._psks.pop(0))
    n, aead = 0, None
"""
#: writing e (§5.3): GENERATE_KEYPAIR() unless e was given, then MixHash(e.public_key)
_GEN_WRITE_E: Final = """\
    pair = self._e
    if pair is None:  # GENERATE_KEYPAIR(): one draw, loaded once
        pair = self._e = _key_pair(dh, _draw_private(dh, self._rng), "ephemeral")
    {part} = pair.public
    h = new(h + {part}).digest()  # MixHash
"""
#: writing s (§5.3): EncryptAndHash(s.public_key)
_GEN_WRITE_S: Final = """\
    if self._s is None:  # the key checks make this unreachable
        raise ConfigError("this pattern sends a static key and none was given")
    plaintext = self._s.public
"""
#: EncryptAndHash (§5.2): EncryptWithAd(h, plaintext) (§5.1), then MixHash.  A handshake's
#: fields take the first branch or the second; CipherState itself handles anything else, with
#: its checks and texts.
_GEN_ENCRYPT_AND_HASH: Final = """\
    if k is not None and n < _FEW and len(plaintext) <= {max_plaintext}:
        if aead is None:
            aead = aead_class(k)
        {part} = aead.encrypt(nonces[n], plaintext, h)
        n += 1
    elif k is None and len(plaintext) <= MAX_MESSAGE_LEN:
        {part} = plaintext
    else:
        {part}, n = _aead_by_the_rules(role, True, k, n, h, plaintext)
    h = new(h + {part}).digest()
"""
#: reading e (§5.3): re = the next DHLEN bytes; MixHash(re.public_key)
_GEN_READ_E: Final = """\
    if self._re is not None:  # only a pre-message can have set it: a pattern bug
        raise ProtocolError("the peer's ephemeral key was already known")
    if offset + {dhlen} > size:
        raise DecodeError("the Noise handshake message is too short")
    re = self._re = message[offset : offset + {dhlen}]
    offset += {dhlen}
    h = new(h + re).digest()  # MixHash
"""
#: reading s (§5.3): the next DHLEN bytes, plus 16 with a key, are DecryptAndHash'd into rs
_GEN_READ_S: Final = """\
    if self._rs is not None:
        raise ProtocolError("the peer's static key was already known")
    count = {dhlen_tag} if k is not None else {dhlen}
    if offset + count > size:
        raise DecodeError("the Noise handshake message is too short")
    ciphertext = message[offset : offset + count]
    offset += count
"""
#: reading the payload (§5.3): the rest of the message is DecryptAndHash'd
_GEN_READ_PAYLOAD: Final = """\
    ciphertext = message[offset:] if offset else message
"""
#: DecryptAndHash (§5.2): DecryptWithAd(h, ciphertext) (§5.1), then MixHash; as in writing,
#: CipherState itself handles what the first two branches do not.
_GEN_DECRYPT_AND_HASH: Final = """\
    if k is not None and n < _FEW and TAG_LEN <= len(ciphertext):
        if aead is None:
            aead = aead_class(k)
        try:
            plaintext = aead.decrypt(nonces[n], ciphertext, h)
        except InvalidTag:
            raise AuthenticationError(_ALTERED) from None
        n += 1
    elif k is None:
        plaintext = ciphertext
    else:
        plaintext, n = _aead_by_the_rules(role, False, k, n, h, ciphertext)
    h = new(h + ciphertext).digest()
"""
#: after a message: keep the symmetric state, or after the last one Split() (§5.2)
_GEN_KEEP: Final = """\
    self._message_index = {next_index}
    sym.ck, sym.h, sym.k, sym.n, sym.aead = ck, h, k, n, aead
"""
_GEN_SPLIT: Final = """\
    self._message_index = {next_index}
    self._split(ck, h)
"""


def _message_source(role: _Role, index: int, write: bool) -> str:
    """The source of the function that writes (``write``) or reads message ``index`` for
    ``role``: WriteMessage or ReadMessage (§5.3) of that message's tokens, in order, then its
    payload, on the symmetric state (§5.2) held in local variables.  Generated from
    :attr:`_Role.steps` (the pattern table's tokens) only, never from input."""
    hashlen = role.hashlen
    if role.rfc5869 is not None:
        mix_key = _GEN_MIX_KEY_RFC5869.replace("{twice}", str(2 * hashlen))
        mix_key = mix_key.replace("{hashlen}", str(hashlen))
        mix_key = mix_key.replace("{key_end}", str(hashlen + 32))
    else:
        mix_key = _GEN_MIX_KEY_HMAC
    dhlen = str(role.dhlen)
    what = "write" if write else "read"
    lines = [
        f"def {what}(self, {'payload' if write else 'message'}, sym):",
        "    ck, h, k, n, aead = sym.ck, sym.h, sym.k, sym.n, sym.aead",
    ]
    if not write:
        lines.append("    size = len(message)")
        lines.append("    offset = 0")
    parts: list[str] = []
    for op, local_e, remote_e, token in role.steps[index]:
        part = f"part{len(parts)}"
        if op == _OP_DH:
            code = _GEN_DH.format(local_e=local_e, remote_e=remote_e, token=token)
            code += mix_key.replace("{ikm}", "ikm")
        elif op == _OP_PSK:
            code = _GEN_PSK
        elif op == _OP_E and write:
            parts.append(part)
            code = _GEN_WRITE_E.replace("{part}", part)
            if role.has_psk:  # §9.2: MixKey(e.public_key) too
                code += mix_key.replace("{ikm}", part)
        elif op == _OP_E:
            code = _GEN_READ_E.replace("{dhlen}", dhlen)
            if role.has_psk:  # §9.2: MixKey(re) too
                code += mix_key.replace("{ikm}", "re")
        elif write:  # s or the payload: EncryptAndHash
            parts.append(part)
            code = _GEN_WRITE_S if op == _OP_S else "    plaintext = payload\n"
            code += _GEN_ENCRYPT_AND_HASH.replace("{part}", part).replace(
                "{max_plaintext}", str(MAX_MESSAGE_LEN - TAG_LEN)
            )
        else:  # s or the payload: DecryptAndHash
            if op == _OP_S:
                code = _GEN_READ_S.replace("{dhlen_tag}", str(role.dhlen + TAG_LEN))
                code = code.replace("{dhlen}", dhlen)
            else:
                code = _GEN_READ_PAYLOAD
            code += _GEN_DECRYPT_AND_HASH
            code += "    self._rs = plaintext\n" if op == _OP_S else "    payload = plaintext\n"
        lines.append(f"    # {_STEP_NAMES[op] if op != _OP_DH else token}")
        lines += code.rstrip("\n").split("\n")
    if write:
        lines += [
            f"    message = b''.join(({', '.join(parts)},))",
            "    if len(message) > MAX_MESSAGE_LEN:",
            "        raise TooLargeError(_TOO_LARGE)",
        ]
    last = index + 1 == role.messages
    end = (_GEN_SPLIT if last else _GEN_KEEP).replace("{next_index}", str(index + 1))
    lines += end.rstrip("\n").split("\n")
    lines.append("    return message" if write else "    return payload")
    return "\n".join(lines) + "\n"


_STEP_NAMES: Final = {_OP_E: "e", _OP_S: "s", _OP_PSK: "psk", _OP_PAYLOAD: "payload"}
_TOO_LARGE: Final = (
    f"a Noise handshake message is at most {MAX_MESSAGE_LEN} bytes; the payload is too large"
)


def _message_functions(role: _Role, write: bool) -> tuple[Callable[..., bytes] | None, ...]:
    """For each message of the pattern the function that writes it (``write``) or reads it, as
    this role does; ``None`` for the messages the role does not write (or read)."""
    names: dict[str, Any] = {
        "role": role,
        "new": role.new,
        "dh": role.dh,
        "aead_class": role.aead_class,
        "nonces": role.nonces,
        "algorithm": role.rfc5869,
        "HKDF": HKDF,
        "InvalidTag": InvalidTag,
        "AuthenticationError": AuthenticationError,
        "ConfigError": ConfigError,
        "DecodeError": DecodeError,
        "ProtocolError": ProtocolError,
        "TooLargeError": TooLargeError,
        "MAX_MESSAGE_LEN": MAX_MESSAGE_LEN,
        "TAG_LEN": TAG_LEN,
        "_FEW": _FEW,
        "_ALTERED": _ALTERED,
        "_TOO_LARGE": _TOO_LARGE,
        "_aead_by_the_rules": _aead_by_the_rules,
        "_draw_private": _draw_private,
        "_key_pair": _key_pair,
        "_mix_key": _mix_key,
        "_mix_key_and_hash": _mix_key_and_hash,
    }
    functions: list[Callable[..., bytes] | None] = []
    side = "initiator" if role.initiator else "responder"
    for index in range(role.messages):
        if (index % 2 == 0) != (role.initiator == write):
            functions.append(None)
            continue
        source = _message_source(role, index, write)
        what = "write" if write else "read"
        # The protocol's name is in the file name and the docstring, not in the source.
        filename = f"<pairing/noise.py: {what} message {index} of {role.protocol.name}, {side}>"
        exec(compile(source, filename, "exec"), names)  # noqa: S102 - from the pattern table only
        function = names.pop(what)
        function.__doc__ = (
            f"{'WriteMessage' if write else 'ReadMessage'} (Noise rev 34 §5.3) of message "
            f"{index} of {role.protocol.name}, as the {side} (generated by _message_source)."
        )
        functions.append(function)
    return tuple(functions)


class HandshakeState:
    """One party's side of a Noise handshake (Noise rev 34 §5.3, with PSKs §9).

    Building one is Initialize(): ``protocol_name`` (§8) gives the pattern and crypto functions,
    ``initiator`` the role.  ``s`` and ``e`` are this party's private keys as raw bytes, as
    ``cryptography`` key objects already loaded (which spares a fixed-base multiplication), or
    as :class:`KeyPair` objects (which also spare working out the public key);
    ``rs`` and ``re`` are the peer's public keys, passed only when the pattern lists them in a
    pre-message; ``psks`` are the 32-byte PSKs in the order the ``psk`` tokens use them.  A key
    the pattern needs and lacks, or has no use for, is a :class:`~pairing.errors.ConfigError`.
    When the pattern makes this party send ``e`` and ``e`` was not given, the key is
    ``rng(DHLEN)``.

    Call :meth:`write_message` and :meth:`read_message` in turn; once :attr:`complete`,
    :meth:`split` hands out the transport cipher states.  Any exception from a write or a read
    poisons the state: every later call raises :class:`~pairing.errors.ProtocolError`.

    A message works on the symmetric state (§5.2: ``ck``, ``h``, the cipher state's ``k`` and
    ``n``) as local variables and stores them back once it is done (issue 13).  A message that
    fails poisons the state, so a half-processed message leaves nothing that could be used.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: Any = None,
        e: Any = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
        rng: Rng = os.urandom,
    ) -> None:
        initiator = bool(initiator)
        role = self._role = _role(protocol_name, initiator)
        self.protocol: NoiseProtocol = role.protocol
        self.initiator: bool = initiator
        given = (s is not None, e is not None, rs is not None, re is not None)
        if given not in role.keys_ok:
            self._refuse_keys(_GIVEN[given])
        if len(psks) != role.psk_count:
            raise ConfigError(
                f"{self.protocol.name} uses {role.psk_count} pre-shared key(s), "
                f"but {len(psks)} were given"
            )
        for psk in psks:
            if not isinstance(psk, _BYTES_LIKE) or len(psk) != PSK_LEN:
                raise ConfigError(f"a Noise pre-shared key must be {PSK_LEN} bytes")
        prologue = _require_bytes(prologue, "Noise prologue")
        if not callable(rng):
            raise ConfigError("rng must be a callable returning random bytes")

        dh = role.dh
        self._rng = rng
        self._s = None if s is None else _key_pair(dh, s, "static")
        self._e = None if e is None else _key_pair(dh, e, "ephemeral")
        self._rs = None if rs is None else _check_public(rs, dh.dhlen, "remote static")
        self._re = None if re is None else _check_public(re, dh.dhlen, "remote ephemeral")
        # The remote keys as DH takes them, each loaded at its first DH token (issue 13)
        self._rs_key: Any = None
        self._re_key: Any = None
        self._psks = [bytes(p) for p in psks]
        self._message_index = 0
        self._failed = False
        self._complete = False
        self._handshake_hash: bytes | None = None
        self._transport: tuple[CipherState, CipherState] | None = None

        # InitializeSymmetric(protocol_name) (§5.2), then MixHash(prologue) (§5.3)
        new = role.new
        h = role.padded_name or new(role.name).digest()
        ck = h
        k = None
        h = new(h + prologue).digest()
        for own, token in role.premessage:
            if own:
                pair = self._e if token == "e" else self._s
                key = None if pair is None else pair.public
            else:
                key = self._re if token == "e" else self._rs
            if key is None:  # the key checks make this unreachable
                raise ConfigError(f"{self.protocol.name}: a pre-message key is missing")
            h = new(h + key).digest()
            if token == "e" and role.has_psk:
                ck, k = _mix_key(role, ck, key)  # §9.2
        #: None once the handshake is over or failed
        self._sym: _Symmetric | None = _Symmetric(ck, h, k)

    def _refuse_keys(self, given: frozenset[str]) -> None:
        pattern = self.protocol.pattern
        role = "initiator" if self.initiator else "responder"
        missing = pattern.required_keys(self.initiator) - given
        if missing:
            raise ConfigError(
                f"{self.protocol.name} needs the {role}'s "
                + " and ".join(_KEY_NAMES[k] for k in sorted(missing))
            )
        unused = given - pattern.allowed_keys(self.initiator)
        raise ConfigError(
            f"{self.protocol.name} has no use for the {role}'s "
            + " and ".join(_KEY_NAMES[k] for k in sorted(unused))
            + " (a remote key the pattern transmits is checked after the handshake, "
            "through remote_static)"
        )

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        if self._failed:
            state = "failed"
        elif self._complete:
            state = "complete"
        else:
            state = f"message {self._message_index}"
        return f"<HandshakeState {self.protocol.name} {role} {state}>"

    # -- public state ------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._complete

    @property
    def my_turn(self) -> bool:
        """Whether the next handshake call must be :meth:`write_message` (else a read)."""
        return not self._complete and (self._message_index % 2 == 0) == self.initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (a pre-message or a received ``s``)."""
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The peer's ephemeral public key, once received."""
        return self._re

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash() (§5.2, §11.2): ``h`` at the end of the handshake (channel binding)."""
        self._check_alive()
        if self._handshake_hash is None:
            raise ProtocolError("the handshake hash is known only once the handshake is complete")
        return self._handshake_hash

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport cipher states (§5.2 Split()): initiator-to-responder first.

        They can be taken once, so that no two objects ever share a key and a nonce.  For a
        one-way pattern (§7.4) the second one refuses to be used.
        """
        self._check_alive()
        if not self._complete:
            raise ProtocolError("the handshake is not complete yet; no transport keys exist")
        if self._transport is None:
            raise ProtocolError("the transport cipher states were already taken")
        pair, self._transport = self._transport, None
        return pair

    # -- WriteMessage / ReadMessage ----------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage(payload) (§5.3): the next handshake message, carrying ``payload``."""
        if self._failed:
            self._check_alive()
        try:
            return self._write(
                payload if type(payload) is bytes else _require_bytes(payload, "handshake payload")
            )
        except BaseException:
            self._fail()
            raise

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message) (§5.3): process the peer's handshake message; return its payload."""
        if self._failed:
            self._check_alive()
        try:
            return self._read(
                message if type(message) is bytes else _require_bytes(message, "handshake message")
            )
        except BaseException:
            self._fail()
            raise

    def _check_alive(self) -> None:
        if self._failed:
            raise ProtocolError(
                "this Noise handshake failed earlier and cannot go on; start a new one"
            )

    def _fail(self) -> None:
        # Forget every secret: nothing may be derived from a failed handshake (§5).
        self._failed = True
        self._sym = None
        self._s = self._e = None
        self._rs_key = self._re_key = None
        self._psks = []
        self._transport = None

    def _out_of_turn(self, writing: bool) -> None:
        if self._complete:
            raise ProtocolError("the Noise handshake is already complete")
        if writing:
            raise ProtocolError("it is the peer's turn to send a handshake message")
        raise ProtocolError("it is our turn to send a handshake message, not to read one")

    # _write and _read check the turn and the size, then run the message's generated function
    # (_message_functions), which works on the symmetric state held in local variables: ck, h,
    # k, n and the AEAD object of k.

    def _write(self, payload: bytes) -> bytes:
        index = self._message_index
        if self._complete or (index % 2 == 0) != self.initiator:  # not my turn
            self._out_of_turn(writing=True)
        if len(payload) > MAX_MESSAGE_LEN:
            raise TooLargeError(f"a Noise handshake message is at most {MAX_MESSAGE_LEN} bytes")
        sym = self._sym
        if sym is None:  # _complete and _failed make this unreachable
            raise ProtocolError("the Noise handshake is over; its symmetric state is gone")
        return self._role.writers[index](self, payload, sym)  # type: ignore[misc]

    def _read(self, message: bytes) -> bytes:
        index = self._message_index
        if self._complete or (index % 2 == 0) == self.initiator:  # my turn to write
            self._out_of_turn(writing=False)
        if len(message) > MAX_MESSAGE_LEN:
            raise TooLargeError(f"a Noise handshake message is at most {MAX_MESSAGE_LEN} bytes")
        sym = self._sym
        if sym is None:  # _complete and _failed make this unreachable
            raise ProtocolError("the Noise handshake is over; its symmetric state is gone")
        return self._role.readers[index](self, message, sym)  # type: ignore[misc]

    def _dh(self, local_e: bool, remote_e: bool, token: str) -> bytes:
        """DH(key_pair, public_key) (§4.1) of token ``ee``, ``es``, ``se`` or ``ss`` (§5.3),
        its keys picked by the pattern's plan, refusing an all-zero result (§12.1, §12.2).

        Each remote key is loaded once, at its first DH (issue 13).  The spec allows an
        implementation to signal an error instead of returning the all-zero output of a
        low-order public key; ``cryptography`` does so itself (a ``ValueError`` at the load or
        the exchange), and the output is checked as well so that the rule holds whatever the
        backend does.
        """
        pair = self._e if local_e else self._s
        remote = self._re_key if remote_e else self._rs_key
        if remote is None or pair is None:
            remote_public = self._re if remote_e else self._rs
            if pair is None or remote_public is None:
                # Only a malformed pattern can get here; the table's are all valid (§7.3).
                raise ProtocolError(f"the pattern asks for DH {token!r} before both keys are known")
            try:
                remote = self._role.dh.public_from_bytes(remote_public)
            except ValueError:
                raise AuthenticationError(_LOW_ORDER) from None
            if remote_e:
                self._re_key = remote
            else:
                self._rs_key = remote
        try:
            shared: bytes = pair.private.exchange(remote)
        except ValueError:
            raise AuthenticationError(_LOW_ORDER) from None
        if hmac.compare_digest(shared, _ZEROS.get(len(shared)) or bytes(len(shared))):
            raise AuthenticationError(_LOW_ORDER)
        return shared

    def _split(self, ck: bytes, h: bytes) -> None:
        """After the last message: Split() (§5.2) and GetHandshakeHash(); forget the rest."""
        role = self._role
        temp_k1, temp_k2 = role.hashfns.hkdf(ck, b"", 2)
        c1, c2 = _keyed(role.cipher, temp_k1[:32]), _keyed(role.cipher, temp_k2[:32])
        if role.one_way:
            # §7.4: after a one-way handshake only the initiator sends; the second cipher state
            # must never be used, so it is handed out with its key removed and refusing work.
            c2.initialize_key(None)
            c2._refusal = "a one-way Noise pattern has no responder-to-initiator channel"
        self._transport = (c1, c2)
        self._handshake_hash = h
        self._complete = True
        # The handshake's secrets are no longer needed (§5: delete all but h).
        self._sym = None
        self._e = None
        self._s = None


#: (s, e, rs, re given) -> the names of those given, for HandshakeState's checks
_GIVEN: Final[dict[tuple[bool, bool, bool, bool], frozenset[str]]] = {
    (s, e, rs, re): frozenset(
        name for name, there in (("s", s), ("e", e), ("rs", rs), ("re", re)) if there
    )
    for s in (False, True)
    for e in (False, True)
    for rs in (False, True)
    for re in (False, True)
}

_KEY_NAMES: Final = {
    "s": "static private key (s)",
    "e": "ephemeral private key (e)",
    "rs": "remote static public key (rs)",
    "re": "remote ephemeral public key (re)",
}
