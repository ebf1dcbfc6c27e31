"""The pairing methods as two sans-I/O machines: :class:`GuestPairing` and :class:`HostPairing`.

One module per method (:mod:`.pin`, :mod:`.qr`, :mod:`.compare`, :mod:`.clear`, :mod:`.resume`
with its ``kk`` fallback), behind the shared negotiation in :mod:`.base`; what they share is in
:mod:`.common` and :mod:`.handshake`, and every label and key derivation is in
:mod:`pairing.keyschedule`.  docs/protocol.md gives every flight, label and field.

Every method takes ``context``: the hash of what the two sides exchanged on the link before
pairing (the cloud step and join request, :meth:`pairkit.driver.MessagePipe.transcript`).  It
salts ``th`` and the Noise prologues, so a byte changed before the key makes the key differ.

These modules draw randomness only from the ``rng`` they are given, except inside HPKE
encryption (``cryptography`` draws HPKE's ephemeral itself).
"""

from ..negotiation import Caps, Method
from .base import GuestPairing, HostPairing
from .common import (
    DEFAULT_METHODS,
    HPKE_SUITE,
    KK_NOISE,
    PIN_NOISE,
    QR_NOISE,
    TRIVIAL_PINS,
    ConfirmCode,
    HostState,
    InsecureWarning,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    PeerInfo,
    PinPolicy,
    Prekey,
    PrekeySource,
    Session,
    _check_context,
    _hello_hash,
    _identity_psk,
    _Payload,
    _Prekeys,
    _qr_psk,
    _th,
    check_pin_strength,
    prekey_holder,
)
from .resume import _resume_th

__all__ = [
    "DEFAULT_METHODS",
    "HPKE_SUITE",
    "KK_NOISE",
    "PIN_NOISE",
    "QR_NOISE",
    "TRIVIAL_PINS",
    "Caps",
    "ConfirmCode",
    "GuestPairing",
    "HostPairing",
    "HostState",
    "InsecureWarning",
    "KnownPeer",
    "LocalIdentity",
    "Method",
    "PairingConfig",
    "PeerInfo",
    "PinPolicy",
    "Prekey",
    "PrekeySource",
    "Session",
    "_Payload",
    "_Prekeys",
    "_check_context",
    "_hello_hash",
    "_identity_psk",
    "_qr_psk",
    "_resume_th",
    "_th",
    "check_pin_strength",
    "prekey_holder",
]
