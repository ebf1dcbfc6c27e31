"""CPNS key derivations: SK_PNE, the hashes, wrapped link keys and the link session (the
labels are :mod:`pairing.keyschedule`'s; the formulas are in the package docstring)."""

from __future__ import annotations

import dataclasses
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .. import keyschedule as ks
from ..crypto import Rng, hkdf, mac
from ..errors import (
    AuthenticationError,
    DecodeError,
)
from .messages import (
    WRAPPED_LEN,
    KeySource,
)


def _ids(pn_id: bytes, pne_id: bytes, gw_id: bytes) -> bytes:
    return pn_id + pne_id + gw_id


def derive_sk(
    eukey: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, rand_pne: bytes, rand_server: bytes
) -> bytes:
    """``SK_PNE`` (see the module docstring)."""
    return hkdf(
        eukey, salt=rand_pne + rand_server, info=ks.CPNS_SK + _ids(pn_id, pne_id, gw_id)
    )


def hash_pne(
    sk: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, rand_pne: bytes, rand_server: bytes
) -> bytes:
    """``hash_PNE``: a MAC under SK_PNE over the ids and both rands."""
    return mac(sk, ks.CPNS_HASH_PNE, _ids(pn_id, pne_id, gw_id), rand_pne, rand_server)


def hash_server(
    sk: bytes,
    *,
    pn_id: bytes,
    pne_id: bytes,
    gw_id: bytes,
    rand_pne: bytes,
    rand_server: bytes,
    hash_pne: bytes,
    wrapped: bytes | None,
    key_source: KeySource,
    members: tuple[bytes, ...],
) -> bytes:
    """``hash_server``: the server's proof to one PNE (it covers ``hash_PNE`` too)."""
    return mac(
        sk, ks.CPNS_HASH_SERVER, _ids(pn_id, pne_id, gw_id), rand_pne, rand_server,
        hash_pne, wrapped or b"", bytes([int(key_source)]), b"".join(sorted(members)),
    )


def _kek(eukey: bytes) -> bytes:
    return hkdf(eukey, salt=b"", info=ks.CPNS_KEK)


def _wrap_ad(pn_id: bytes, pne_id: bytes, gw_id: bytes, recipient: bytes) -> bytes:
    return ks.CPNS_KEY + _ids(pn_id, pne_id, gw_id) + recipient


def wrap_key(
    eukey: bytes, key: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, recipient: bytes,
    rng: Rng,
) -> bytes:
    """Seal ``key`` for the holder of ``eukey``, bound to this link and recipient."""
    nonce = rng(12)
    ad = _wrap_ad(pn_id, pne_id, gw_id, recipient)
    return nonce + ChaCha20Poly1305(_kek(eukey)).encrypt(nonce, key, ad)


def unwrap_key(
    eukey: bytes, wrapped: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, recipient: bytes
) -> bytes:
    """Open a :func:`wrap_key` copy; :class:`AuthenticationError` if it is not ours or altered."""
    if len(wrapped) != WRAPPED_LEN:
        raise DecodeError("a wrapped key has the wrong length")
    ad = _wrap_ad(pn_id, pne_id, gw_id, recipient)
    try:
        return ChaCha20Poly1305(_kek(eukey)).decrypt(wrapped[:12], wrapped[12:], ad)
    except Exception:  # InvalidTag: wrong key, wrong link, or altered
        raise AuthenticationError("a wrapped link key did not open") from None


def preassigned_key(eukey: bytes) -> bytes:
    """The pre-assigned PAN key of a PNE without UI (known to it and to the server)."""
    return hkdf(eukey, salt=b"", info=ks.CPNS_PREASSIGNED)


RECIPIENT_PNE: Final = b"pne"
RECIPIENT_GW: Final = b"gw"
RECIPIENT_PRE: Final = b"pre"


@dataclasses.dataclass(frozen=True)
class LinkSession:
    """The secure session between a PNE and its gateway (directional keys)."""

    send_key: bytes = dataclasses.field(repr=False)
    recv_key: bytes = dataclasses.field(repr=False)
    #: both sides show the same; never the key
    fingerprint: str


def _link_keys(
    key: bytes, ids: bytes, nonce_gw: bytes, nonce_pne: bytes
) -> tuple[bytes, bytes, bytes, str]:
    """(pne->gw, gw->pne, confirmation key, fingerprint) of the link session."""
    okm = hkdf(key, salt=nonce_gw + nonce_pne, info=ks.CPNS_LINK + ids, length=104)
    fp = okm[96:].hex()
    return okm[:32], okm[32:64], okm[64:96], "-".join(fp[i : i + 4] for i in range(0, 16, 4))


