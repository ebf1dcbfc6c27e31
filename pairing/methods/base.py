"""The shared negotiation, and the two machines: :class:`GuestPairing` and :class:`HostPairing`.

The guest (BLE central, the side that connects) speaks first.  Every method starts with the
guest's :class:`~pairing.messages.Offer` and the host's :class:`~pairing.messages.Accept`, each
carrying an :class:`~pairing.messages.Announce` (capabilities, allowed methods, the choice, a
fresh nonce; in ``kk`` fixed fields and the nonce, :func:`_hello`).  ``th``, the hash of both
announcements and the pre-pairing context
(:func:`pairing.keyschedule.negotiation_hash`), is bound into every method, so rewriting either
announcement (downgrade, method confusion) makes the exchange fail.  Both sides check the
proposal against the same table (:func:`pairing.negotiation.choose`); the method's own flights
then run from its module (:mod:`.pin`, :mod:`.qr`, :mod:`.compare`, :mod:`.clear`,
:mod:`.resume`).
"""

from __future__ import annotations

import dataclasses
import operator
import os
from typing import Any, ClassVar

from ..crypto import Rng
from ..errors import (
    ConfigError,
    DecodeError,
    InsecureLinkError,
    ProtocolError,
    UnsupportedError,
)
from ..machine import DONE, Step, step
from ..messages import Accept, Announce, NoiseMessage, Offer, ResumeMessage, Reveal, device_name
from ..negotiation import KK_CAPS, KK_METHODS, Caps, Method, choose, methods_from_mask
from ..qr import QrCode
from .clear import ClearGuest, ClearHost
from .common import (
    _INSECURE_TEXT,
    S_ACCEPT,
    S_ASK,
    S_KK,
    S_NOISE,
    S_OFFER,
    S_RESUME,
    S_REVEAL,
    S_START,
    S_TURN,
    HostState,
    InsecureWarning,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    PrekeySource,
    Session,
    _announce,
    _check_context,
)
from .compare import CompareGuest, CompareHost
from .pin import PinGuest, PinHost
from .qr import QrGuest, QrHost
from .resume import ResumeGuest, ResumeHost

#: method -> the fields its Offer and its Accept carry beside ``hello`` (docs/protocol.md §3-§8);
#: any other field is refused as a decode error, so a value meant for one method is never read,
#: or silently dropped, by another
_OFFER_FIELDS: dict[Method, frozenset[str]] = {
    Method.PIN: frozenset({"cpace"}),
    Method.QR: frozenset({"qr_id", "noise"}),
    Method.COMPARE: frozenset({"pk", "step_ms"}),
    Method.CLEAR: frozenset(),
    Method.KK: frozenset({"noise"}),  # the guest's id only inside Noise IK's message 1
    Method.TTP: frozenset({"guest_id"}),  # read by pairing.ttp's machines
}
_ACCEPT_FIELDS: dict[Method, frozenset[str]] = {
    Method.PIN: frozenset({"cpace", "noise"}),
    Method.QR: frozenset({"noise"}),
    Method.COMPARE: frozenset({"sealed", "commit"}),
    Method.CLEAR: frozenset({"key", "noise"}),
    Method.KK: frozenset({"noise"}),
    Method.TTP: frozenset({"host_id"}),
}


#: (message class, a method's fields) -> the class's other fields but ``hello``, sorted, and a
#: getter of their values
_OTHER_FIELDS: dict[tuple[type, frozenset[str]], tuple[tuple[str, ...], Any]] = {}


def _only_fields(
    msg: Offer | Accept, method: Method, allowed: dict[Method, frozenset[str]]
) -> None:
    """Refuse a field ``method`` does not use (named, never its value: clear's key is secret)."""
    expected = allowed.get(method)
    if expected is None:
        return  # a method this machine does not run: refused by its caller
    plan = _OTHER_FIELDS.get((type(msg), expected))
    if plan is None:  # worked out once per class and method (issue 13)
        others = tuple(sorted(
            f.name for f in dataclasses.fields(msg) if f.name != "hello" and f.name not in expected
        ))
        plan = _OTHER_FIELDS[(type(msg), expected)] = (others, _getter(others))
    others, values = plan
    got = values(msg)
    if got.count(None) != len(got):
        extra = [name for name in others if getattr(msg, name) is not None]
        raise DecodeError(
            f"the {type(msg).__name__} for '{method.label}' carries a field of another method "
            f"({', '.join(extra)})"
        )


def _getter(names: tuple[str, ...]) -> Any:
    """The values of the attributes ``names`` of an object, as a tuple (read at once)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda obj: tuple(getattr(obj, name) for name in names)


def _link_caps(caps: Caps, link_encrypted: bool) -> Caps:
    """A side's capabilities on this link: ``caps``, and ENCRYPTED_LINK when it is encrypted
    (made once per pair of values: an operation on an IntFlag goes through the enum)."""
    key = (caps, link_encrypted)
    got = _LINK_CAPS.get(key)
    if got is None:
        got = _LINK_CAPS[key] = caps | (Caps.ENCRYPTED_LINK if link_encrypted else Caps.NONE)
    return got


_LINK_CAPS: dict[tuple[Caps, bool], Caps] = {}

#: the members as module names, for the checks every pairing runs: a member read through its
#: class costs about 80 ns more (EnumType's __getattr__ hook, Python 3.11; issue 13)
_PIN, _QR, _CLEAR, _RESUME, _KK, _TTP = (
    Method.PIN, Method.QR, Method.CLEAR, Method.RESUME, Method.KK, Method.TTP
)


class GuestPairing(PinGuest, QrGuest, CompareGuest, ClearGuest, ResumeGuest):
    """The guest side (initiator): proposes a method and runs it.

    Call :meth:`start` once, then feed messages with :meth:`~Machine.receive`; questions
    (:class:`ConfirmCode`) are answered with :meth:`~Machine.answer`.  When :attr:`done`,
    :attr:`session` holds the result.
    """

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        # pin and clear go on to the identity handshake, qr and kk are done, compare reveals
        (S_ACCEPT, Accept): step("_on_accept", S_NOISE, DONE, S_REVEAL),
        (S_NOISE, NoiseMessage): step("_on_noise", DONE),
        # compare: N_H and the host's Noise message 1, then the people look at the code
        (S_REVEAL, Reveal): step("_on_reveal", S_ASK),
        # done, or the host refused the prekey: the KK fallback's Offer
        (S_RESUME, ResumeMessage): step("_on_resume", DONE, S_ACCEPT),
    }
    #: compare: the guest sends its identity (Noise message 2) only after its person's yes
    ANSWERS: ClassVar[dict[str, Step]] = {S_ASK: step("_on_answer", S_NOISE)}
    STARTS: ClassVar[frozenset[str]] = frozenset({S_ACCEPT, S_RESUME})

    #: method -> the fields it adds to the Offer (drawn in this order)
    _OFFERS: ClassVar[dict[Method, str]] = {
        Method.PIN: "_pin_offer",
        Method.QR: "_qr_offer",
        Method.KK: "_kk_offer",
        Method.COMPARE: "_compare_offer",
    }
    #: method -> what it does with the host's Accept
    _ACCEPTS: ClassVar[dict[Method, str]] = {
        Method.PIN: "_pin_accept",
        Method.QR: "_qr_accept",
        Method.KK: "_kk_accept",
        Method.COMPARE: "_compare_accept",
        Method.CLEAR: "_clear_accept",
    }

    def __init__(
        self,
        config: PairingConfig,
        me: LocalIdentity,
        *,
        method: Method,
        link_encrypted: bool = False,
        link_mitm: bool = False,
        pin: str | None = None,
        qr: QrCode | None = None,
        peer: KnownPeer | None = None,
        wall_now: float | None = None,
        context: bytes = b"",
        rng: Rng = os.urandom,
        prekeys: PrekeySource | None = None,
    ) -> None:
        super().__init__(initial_state=S_START)
        self.config = config
        self.me = me
        self.method = method
        self._rng = rng
        self._prekey_source = prekeys
        self._pin = pin
        self._qr = qr
        self._peer = peer
        self._wall_now = wall_now
        self._link_encrypted = link_encrypted
        # A link pairing protected against a man in the middle counts only on an SC link.
        self._link_mitm = link_encrypted and link_mitm
        self._context = _check_context(context)
        caps = _link_caps(config.caps, link_encrypted)
        if method is _CLEAR and not link_encrypted:
            if not config.allow_insecure:
                raise InsecureLinkError(_INSECURE_TEXT)
            caps |= Caps.ENCRYPTED_LINK  # forced: the user accepted the risk
        self._caps = caps
        self._check_inputs()
        self.session: Session | None = None
        self._offer: Offer | None = None

    def bind_context(self, context: bytes) -> None:
        """Set the pre-pairing transcript hash (the cloud step) before :meth:`start`."""
        if self.state != S_START:
            raise ProtocolError("the context must be bound before the pairing starts")
        self._context = _check_context(context)

    def _check_inputs(self) -> None:
        m = self.method
        if m is _PIN and not self._pin:
            raise ConfigError("method 'pin' needs the PIN shown on the host")
        pin = self._pin or ""
        if m is _PIN and (len(pin) != 6 or not (pin.isascii() and pin.isdigit())):
            raise ConfigError("a PIN is exactly 6 digits")
        if m is _QR:
            if self._qr is None:
                raise ConfigError("method 'qr' needs the host's QR code (--qr or --qr-image)")
            if self._wall_now is not None:
                self._qr.check_fresh(self._wall_now)
        if m in (_RESUME, _KK) and self._peer is None:
            raise ConfigError(f"method '{m.label}' needs a known peer; pair first")
        if m is _TTP:
            raise UnsupportedError("method 'ttp' is run by pairing.ttp, not by this machine")

    # -- start ----------------------------------------------------------------------------

    def _on_start(self, now: float) -> None:
        """Send the first message."""
        if self.method is _RESUME:
            assert self._peer is not None
            if self._peer.their_prekeys:
                self._send_resume_init()
                self._expect(now, S_RESUME)
                return
            self.method = Method.KK  # no prekey left: the KK fallback
        self._send_offer(now)

    # -- the negotiation ------------------------------------------------------------------

    def _send_offer(self, now: float) -> None:
        hello = _hello(self.config, self.me.name, self.method, self._caps, self._rng)
        fields: dict[str, Any] = {}
        offer = self._OFFERS.get(self.method)
        if offer is not None:
            fields = getattr(self, offer)(hello)
        self._offer = Offer(hello=hello, **fields)
        self._send(self._offer)
        self._expect(now, S_ACCEPT)

    def _on_accept(self, msg: Accept, now: float) -> None:
        assert self._offer is not None
        # The host's name may be shown to this side's person (compare's question): held to
        # what a device's name may be before anything else is read (atk22 finding B); a kk
        # announcement to its fixed fields (atk22c finding 2).
        _check_announced(msg.hello, "the host's")
        if msg.hello.method != self.method:
            raise ProtocolError(
                f"the host answered with method '{Method(msg.hello.method).label}' "
                f"but '{self.method.label}' was proposed"
            )
        # Check the host's announcement against the same table the host used.  The host's
        # capabilities go in as the integer they came as: an IntFlag made from a peer's value
        # is kept by the enum for good, one per value (a peer could grow it without bound),
        # and the table reads bits only.
        choose(
            self._caps,
            self.config.methods,
            msg.hello.caps,
            methods_from_mask(msg.hello.methods),
            proposed=self.method,
            knows_peer=self._peer is not None,
        )
        _only_fields(msg, self.method, _ACCEPT_FIELDS)
        self._th_hellos = (self._offer.hello, msg.hello)  # th when a method asks for it
        self._host_name = msg.hello.name
        accept = self._ACCEPTS.get(self.method)
        if accept is None:  # pragma: no cover - excluded by _check_inputs
            raise ProtocolError(f"method {self.method.label} cannot run here")
        getattr(self, accept)(msg, now)


class HostPairing(PinHost, QrHost, CompareHost, ClearHost, ResumeHost):
    """The host side (responder): checks the guest's proposal and runs the method."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_OFFER, Offer): step("_on_offer", S_NOISE, DONE, S_REVEAL),
        # done, or the prekey is gone: wait for the guest's KK fallback, and for it only (one
        # FAIL per link: another INIT there would be answered again, each time with a new
        # step timeout, and hold the link without end; attack review atk19d, finding 2)
        (S_OFFER, ResumeMessage): step("_on_resume_init", DONE, S_KK),
        (S_KK, Offer): step("_on_kk_offer", DONE),
        (S_NOISE, NoiseMessage): step("_on_noise", DONE),
        # compare: the guest's N_G; answered with N_H and Noise message 1, then the question
        # (a NoiseMessage while the person is asked is not in the table: the driver holds it)
        (S_REVEAL, Reveal): step("_on_reveal", S_ASK, S_TURN),
    }
    #: compare: the host reads the guest's identity (message 2) only after its person's yes;
    #: before it shows its code, it may wait its turn (docs/security.md, CodeTurns)
    ANSWERS: ClassVar[dict[str, Step]] = {
        S_ASK: step("_on_answer", S_NOISE),
        S_TURN: step("_on_turn", S_ASK, S_TURN),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({S_OFFER})

    #: method -> its host side's answer to the Offer
    _OFFERS: ClassVar[dict[Method, str]] = {
        Method.PIN: "_offer_pin",
        Method.QR: "_offer_qr",
        Method.KK: "_offer_kk",
        Method.COMPARE: "_offer_compare",
        Method.CLEAR: "_offer_clear",
    }

    def __init__(
        self,
        config: PairingConfig,
        me: LocalIdentity,
        state: HostState,
        *,
        link_encrypted: bool = False,
        link_mitm: bool = False,
        wall_now: float = 0.0,
        context: bytes = b"",
        rng: Rng = os.urandom,
        prekeys: PrekeySource | None = None,
        expected: Method | None = None,
    ) -> None:
        super().__init__(initial_state=S_OFFER)
        self.config = config
        self.me = me
        self.host = state
        #: the method the guest's join request said it pairs by (the cloud step, bound into the
        #: key): any other is refused before it runs, before a code is shown or a PIN played
        #: (docs/security.md rule 6; None: no join request said one)
        self._expected = expected
        self._rng = rng
        self._prekey_source = prekeys
        self._wall_now = wall_now
        self._link_encrypted = link_encrypted
        self._link_mitm = link_encrypted and link_mitm
        self._context = _check_context(context)
        self._caps = _link_caps(config.caps, link_encrypted)
        self.method: Method | None = None
        self.session: Session | None = None
        self._pin_attempt: float | None = None  #: when the PIN attempt under way started

    def _on_start(self, now: float) -> None:
        """Wait for the guest's Offer (or a resume INIT)."""
        self._expect_by(now + self.config.step_timeout, "the guest sent nothing")

    # -- the negotiation ------------------------------------------------------------------

    def _check_expected(self, proposed: Method) -> None:
        # kk is resume's fallback (the same stored keys): either said allows either
        if self._expected is not None and proposed.base is not self._expected.base:
            raise ProtocolError(
                "the guest paired by another method than the one it asked with"
            )

    def _on_resume_init(self, msg: ResumeMessage, now: float) -> None:
        self._check_expected(Method.RESUME)
        # The host's own methods hold for resume as for every method (kk included): a host
        # that does not allow it runs it for no one, known or not, and consumes no prekey
        # (attack review atk19d, finding 1).  The INIT carries no announcement: the table is
        # read for this host's side only.
        choose(0, frozenset({_RESUME}), self._caps, self.config.methods, proposed=_RESUME,
               knows_peer=True)
        super()._on_resume_init(msg, now)

    def _on_kk_offer(self, msg: Offer, now: float) -> None:
        """The guest's Offer after this host's resume FAIL: its kk fallback (docs/protocol.md
        §8), no other method."""
        if msg.hello.method is not _KK:
            raise ProtocolError(
                f"after a resume FAIL the guest must fall back to 'kk', not "
                f"'{Method(msg.hello.method).label}'"
            )
        self._on_offer(msg, now)

    def _on_offer(self, msg: Offer, now: float) -> None:
        _check_announced(msg.hello, "the guest's")  # as the Accept's
        proposed = msg.hello.method
        self._check_expected(proposed)
        caps = self._caps
        if proposed is _CLEAR and not self._link_encrypted:
            if not self.config.allow_insecure:
                raise InsecureLinkError(_INSECURE_TEXT)
            caps |= Caps.ENCRYPTED_LINK
            self._emit(InsecureWarning("pairing with 'clear' over a link that is not encrypted"))
        # kk: the guest's Noise IK message, sealed to this host's static key, says it knows
        # this host; whom the host knows is found once that message is read (_offer_kk).
        knows = proposed is _KK and msg.noise is not None
        # The guest's capabilities as the integer they came as (see GuestPairing._on_accept).
        choose(
            msg.hello.caps, methods_from_mask(msg.hello.methods), caps,
            self.config.methods, proposed=proposed, knows_peer=knows,
        )
        _only_fields(msg, proposed, _OFFER_FIELDS)
        self.method = proposed
        hello = _hello(self.config, self.me.name, proposed, caps, self._rng)
        self._offer = msg
        self._hello = hello
        self._th_hellos = (msg.hello, hello)  # th when a method asks for it
        handler = self._OFFERS.get(proposed)
        if handler is None:
            raise UnsupportedError(f"method '{proposed.label}' is not available on this host")
        getattr(self, handler)(msg, hello, now)


def _hello(config: PairingConfig, name: str, method: Method, caps: Caps, rng: Rng) -> Announce:
    """The Announce a side sends for ``method``.  For kk, the same from every device but for
    its nonce: no name, no capability, kk's bit as its methods (:data:`KK_METHODS`).  kk's
    peers know each other, their names travel inside Noise IK's encrypted payloads, and
    nothing reads their settings, so that a listener learns neither who comes back (session
    22) nor a device's settings, the same at each return (docs/protocol.md §8; atk22c
    finding 2)."""
    if method is _KK:
        return Announce(caps=KK_CAPS, methods=KK_METHODS, method=method, name="", nonce=rng(16))
    return _announce(config, name, method, caps, rng)


def _check_announced(hello: Announce, whose: str) -> None:
    """A peer's Announce: its name a device's name (:func:`device_name`, atk22 finding B); a
    kk announcement exactly what :func:`_hello` makes (its name, capabilities and methods are
    checked, never shown)."""
    if hello.method is _KK:
        if hello.name or hello.caps != KK_CAPS or hello.methods != KK_METHODS:
            raise DecodeError(
                f"{whose} kk announcement must carry no name, no capability and kk's method only"
            )
    else:
        device_name(hello.name, f"{whose} announced name")
