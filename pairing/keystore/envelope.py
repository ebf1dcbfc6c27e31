"""HPKE envelopes sealed to a device's X25519 key (RFC 9180 §6.1, base mode): what a group
controller sends a member, opened by :meth:`Keystore.open_envelope`."""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519

from .. import cbor
from ..crypto import HPKE_SUITE
from ..errors import AuthenticationError, ConfigError, DecodeError
from .records import _check_public_key

__all__ = ["open_envelope", "seal_envelope"]

_HPKE_SUITE = HPKE_SUITE
_HPKE_ENC_SIZE: Final = 32


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




def open_envelope(
    recipient: x25519.X25519PrivateKey, enc: bytes, ct: bytes, info: bytes, aad: bytes = b""
) -> bytes:
    """Open what :func:`seal_envelope` sealed to ``recipient``'s public key (RFC 9180 §6.1).
    Raises :class:`AuthenticationError` if it does not open (wrong recipient, info, associated
    data, or a damaged envelope)."""
    if not isinstance(enc, bytes) or len(enc) != _HPKE_ENC_SIZE:
        raise DecodeError(f"an envelope's encapsulated key must be {_HPKE_ENC_SIZE} bytes")
    if not isinstance(ct, bytes):
        raise DecodeError("an envelope's ciphertext must be bytes")
    try:
        return _HPKE_SUITE.decrypt(enc + ct, recipient, _hpke_info(info, aad))
    except (InvalidTag, ValueError):
        raise AuthenticationError(
            "an envelope did not open: it is not for us or was altered"
        ) from None
