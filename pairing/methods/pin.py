"""``pin`` (4 flights, 2 round trips; docs/protocol.md §3).

Offer(CPace Ya) -> Accept(CPace Yb, Noise msg 1) -> Noise msg 2 -> Noise msg 3.
CPACE-X25519-SHA512 (draft-irtf-cfrg-cpace §7, initiator-responder) with the PIN as PRS,
``ci = "pairkit/1 pin"`` and each side's announcement as its AD; its ISK is the PSK of the
identity handshake (``Noise_XXpsk0_25519_ChaChaPoly_SHA256``, Noise rev 34 §9) run host-first
with ``th`` as prologue.  The guest learns of a wrong PIN when it reads Noise message 1 (psk0
encrypts its payload), the host when it reads message 2; the static identities travel in
messages 2 and 3, so they are authenticated by the PIN and confirmed by both sides (Noise §7.7
key confirmation via the psk).  One wrong guess per attempt is all an attacker gets, and a shown
PIN is good for one attempt: the host withdraws it when an attempt starts
(:meth:`HostState.take_pin`) and shows a new one after.
"""

from __future__ import annotations

import math
from typing import Any

from .. import keyschedule, wire
from ..cpace import CPace
from ..errors import DecodeError, LockedOutError, RefusedError
from ..messages import Accept, Announce, Offer
from .common import S_NOISE
from .handshake import GuestSide, HostSide


class PinGuest(GuestSide):
    _cpace: CPace

    def _pin_offer(self, hello: Announce) -> dict[str, Any]:
        assert self._pin is not None
        self._cpace = CPace(
            "initiator",
            self._pin.encode(),
            ci=keyschedule.PIN_CI,
            ad_self=wire.encode_struct(hello),
            rng=self._rng,
        )
        return {"cpace": self._cpace.message()}

    def _pin_accept(self, msg: Accept, now: float) -> None:
        if msg.cpace is None or msg.noise is None:
            raise DecodeError("the host's Accept lacks its CPace share or Noise message")
        self._cpace.receive(msg.cpace, wire.encode_struct(msg.hello))
        self._noise_responder(self._cpace.isk[:32], msg.noise, now)


class PinHost(HostSide):
    def _offer_pin(self, msg: Offer, hello: Announce, now: float) -> None:
        wait = self.host.locked_for(now)
        if wait > 0:
            raise LockedOutError(
                f"too many wrong PINs: PIN pairing is locked for {math.ceil(wait)} more seconds"
            )
        if msg.cpace is None:
            raise DecodeError("the guest's Offer lacks its CPace share")
        # One attempt per shown PIN, won or lost: the host draws a new one after (rule 7).
        pin = self.host.take_pin()
        if pin is None:
            raise RefusedError("no PIN is active on the host; ask its owner to show a new one")
        # Count the attempt as failed as soon as it starts and take it back on success, so that
        # guesses run in parallel (several guests at once) are held to the lockout too; the lock
        # is checked again as the attempt is counted (another host process of the device may
        # have counted one since the check above).
        wait = self.host.pin_failed_unless_locked(now)
        if wait > 0:
            raise LockedOutError(
                f"too many wrong PINs: PIN pairing is locked for {math.ceil(wait)} more seconds"
            )
        self._pin_attempt = now
        cpace = CPace(
            "responder", pin.encode(), ci=keyschedule.PIN_CI,
            ad_self=wire.encode_struct(hello), rng=self._rng,
        )
        cpace.receive(msg.cpace, wire.encode_struct(msg.hello))
        noise = self._noise_initiator(cpace.isk[:32])
        self._send(Accept(hello=hello, cpace=cpace.message(), noise=noise))
        self._expect(now, S_NOISE)
