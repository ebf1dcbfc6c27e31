"""``qr`` (2 flights, 1 round trip; docs/protocol.md §4).

Offer(code id, Noise msg 1) -> Accept(Noise msg 2), ``Noise_IKpsk2_25519_ChaChaPoly_SHA256``:
the guest knows the host's static key from the code (checked by ``es``), and the PSK is HKDF of
the code's one-time secret (:func:`pairing.keyschedule.qr_psk`).  The prologue is the guest's
announcement; the host's announcement is bound by its hash inside the host's encrypted payload.
"""

from __future__ import annotations

from typing import Any

from ..crypto import same
from ..errors import AuthenticationError, DecodeError
from ..messages import Accept, Announce, Offer
from ..noise import HandshakeState
from .common import QR_NOISE, _hello_hash, _qr_psk
from .handshake import GuestSide, HostSide


class QrGuest(GuestSide):
    def _qr_offer(self, hello: Announce) -> dict[str, Any]:
        assert self._qr is not None
        noise = self._noise_1rtt_offer(
            hello, QR_NOISE, self._qr.host_static, [_qr_psk(self._qr)]
        )
        return {"qr_id": self._qr.code_id, "noise": noise}

    def _qr_accept(self, msg: Accept, now: float) -> None:
        if msg.noise is None:
            raise DecodeError("the host's Accept lacks its Noise message")
        self._noise_1rtt_accept(msg.noise, msg.hello)


class QrHost(HostSide):
    _wall_now: float

    def _offer_qr(self, msg: Offer, hello: Announce, now: float) -> None:
        if msg.qr_id is None or msg.noise is None:
            raise DecodeError("the guest's Offer lacks the QR code id or its Noise message")
        code = self.host.take_qr(msg.qr_id, self._wall_now)
        if not same(code.host_static, self.me.static_public):
            raise AuthenticationError("this QR code belongs to another host")
        self._hs = HandshakeState(
            QR_NOISE, False, prologue=_hello_hash(msg.hello, self._context),
            s=self.me.noise_static(), psks=[_qr_psk(code)], rng=self._rng,
        )
        self._noise_1rtt(msg, hello, authenticated=True)
