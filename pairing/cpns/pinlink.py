"""An element's PAN link secured by the PIN the gateway shows (issue 14: "a typed PIN").

The source leaves the PAN's security to the PAN ("if PAN between PNE and PN GW does not provide
sufficient security mechanism ..."); a link over TCP or an unpaired BLE connection provides
none.  An element whose user can type secures it first with the PIN the gateway's display
shows, by CPace (draft-irtf-cfrg-cpace, suite CPACE-X25519-SHA512, :mod:`pairing.cpace`), so a
stranger on the link gets one guess per run and learns nothing it can test offline::

    element -> gateway   PnPinOffer(pne_id, Ya)
    gateway -> element   PnPinAnswer(gw_id, Yb, Tb)
    element -> gateway   PnPinConfirm(Ta)

with ``CI = lv_cat("pn element", "pn gateway", "pairkit/1 cpns pin")``, ``ADa = pne_id``,
``ADb = gw_id`` (both ids are in the CPace transcript), the draft's key confirmation (§10.4), and
``okm = HKDF-SHA256(ISK, salt = "", "pairkit/1 cpns pin link" || pne_id || gw_id, 72)``: bytes
0-31 element->gateway, 32-63 gateway->element, 64-71 a public fingerprint.  The CPNS setup then
runs inside the secure channel those keys open: the PAN link is secured at both ends (the
element says PAN_SECURED, the gateway's link reports it), so by the R01 rule the element still
gets its LocalEUKey (it comes back with it later) and no second session is set up.
"""

from __future__ import annotations

import os
from typing import ClassVar

from .. import keyschedule as ks
from ..cpace import CPace, channel_identifier
from ..crypto import Rng, hkdf
from ..errors import AuthenticationError, ConfigError
from ..machine import DONE, Machine, Step, step
from ..messages import ID_LEN
from .keys import LinkSession
from .messages import PnPinAnswer, PnPinConfirm, PnPinOffer

CI = channel_identifier(b"pn element", b"pn gateway", ks.CPNS_PIN_CI)


def _session(isk: bytes, pne_id: bytes, gw_id: bytes, *, element: bool) -> LinkSession:
    okm = hkdf(isk, salt=b"", info=ks.CPNS_PIN_LINK + pne_id + gw_id, length=72)
    fp = okm[64:].hex()
    fingerprint = "-".join(fp[i : i + 4] for i in range(0, 16, 4))
    p2g, g2p = okm[:32], okm[32:64]
    return LinkSession(p2g, g2p, fingerprint) if element else LinkSession(g2p, p2g, fingerprint)


def _check_pin(pin: str) -> bytes:
    if not (len(pin) == 6 and pin.isascii() and pin.isdigit()):
        raise ConfigError("a PIN is exactly 6 digits")
    return pin.encode()


P_START = "start"
P_ANSWER = "await-answer"
P_OFFER = "await-offer"
P_CONFIRM = "await-confirm"


class ElementPin(Machine):
    """The element's side (CPace initiator); done with :attr:`session` and :attr:`gw_id`."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (P_ANSWER, PnPinAnswer): step("_on_answer", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({P_ANSWER})

    def __init__(self, pne_id: bytes, pin: str, *, step_timeout: float = 30.0,
                 rng: Rng = os.urandom) -> None:
        super().__init__(initial_state=P_START)
        if len(pne_id) != ID_LEN:
            raise ConfigError(f"a PNE id is {ID_LEN} bytes")
        self.pne_id = pne_id
        self._cpace = CPace("initiator", _check_pin(pin), ci=CI, ad_self=pne_id, rng=rng)
        self._timeout = step_timeout
        self.session: LinkSession | None = None
        self.gw_id: bytes | None = None

    def _on_start(self, now: float) -> None:
        self._send(PnPinOffer(self.pne_id, self._cpace.message()))
        self.state = P_ANSWER
        self._expect_by(now + self._timeout, "the gateway did not answer the PIN offer")

    def _on_answer(self, msg: PnPinAnswer, now: float) -> None:
        self._cpace.receive(msg.share, msg.gw_id)
        try:
            self._cpace.verify_confirmation(msg.tag)
        except AuthenticationError:
            raise AuthenticationError(
                "the PIN did not match the one the gateway shows (a PIN is good for one try: "
                "read the new one on the gateway)"
            ) from None
        self._send(PnPinConfirm(self._cpace.confirmation()))
        self.gw_id = msg.gw_id
        self.session = _session(self._cpace.isk, self.pne_id, msg.gw_id, element=True)
        self._finish()


class GatewayPin(Machine):
    """The gateway's side (CPace responder) for one offer, with the PIN it shows now."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (P_OFFER, PnPinOffer): step("_on_offer", P_CONFIRM),
        (P_CONFIRM, PnPinConfirm): step("_on_confirm", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({P_OFFER})

    def __init__(self, gw_id: bytes, pin: str, *, step_timeout: float = 30.0,
                 rng: Rng = os.urandom) -> None:
        super().__init__(initial_state=P_START)
        self.gw_id = gw_id
        self._cpace = CPace("responder", _check_pin(pin), ci=CI, ad_self=gw_id, rng=rng)
        self._timeout = step_timeout
        self.session: LinkSession | None = None
        self.pne_id: bytes | None = None

    def _on_start(self, now: float) -> None:
        self.state = P_OFFER
        self._expect_by(now + self._timeout, "the element sent no PIN offer")

    def _on_offer(self, msg: PnPinOffer, now: float) -> None:
        self._cpace.receive(msg.share, msg.pne_id)
        self.pne_id = msg.pne_id
        self._send(PnPinAnswer(self.gw_id, self._cpace.message(), self._cpace.confirmation()))
        self.state = P_CONFIRM
        self._expect_by(now + self._timeout, "the element did not confirm the PIN")

    def _on_confirm(self, msg: PnPinConfirm, now: float) -> None:
        try:
            self._cpace.verify_confirmation(msg.tag)
        except AuthenticationError:
            raise AuthenticationError("the element typed a wrong PIN") from None
        assert self.pne_id is not None
        self.session = _session(self._cpace.isk, self.pne_id, self.gw_id, element=False)
        self._finish()
