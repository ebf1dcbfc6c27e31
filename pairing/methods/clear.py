"""``clear`` (4 flights; docs/protocol.md §6).

Offer -> Accept(SK, identity handshake message 1) -> message 2 -> message 3: SK is sent as is,
then the identity handshake (PSK label ``pairkit/1 identity psk clear``) proves both static
keys.  Only over a link whose ``encrypted`` is true on both sides (BLE LE Secure Connections;
legacy pairing does not count); otherwise refused unless forced.  The peer is recorded as
authenticated only when the link's own pairing was MITM-protected (``link_mitm``: numeric
comparison, passkey or OOB); Just Works and forced runs vouch for no one (docs/security.md,
rule 5).
"""

from __future__ import annotations

from ..errors import DecodeError
from ..messages import Accept, Announce, Offer
from ..negotiation import Method
from .common import S_NOISE, _identity_psk
from .handshake import GuestSide, HostSide


class ClearGuest(GuestSide):
    def _clear_accept(self, msg: Accept, now: float) -> None:
        if msg.key is None or msg.noise is None:
            raise DecodeError("the host's Accept lacks the key or its Noise message")
        self._noise_responder(_identity_psk(msg.key, self._th, Method.CLEAR), msg.noise, now)


class ClearHost(HostSide):
    _sk: bytes

    def _offer_clear(self, msg: Offer, hello: Announce, now: float) -> None:
        self._sk = self._rng(32)
        noise = self._noise_initiator(_identity_psk(self._sk, self._th, Method.CLEAR))
        self._send(Accept(hello=hello, key=self._sk, noise=noise))
        self._expect(now, S_NOISE)
