"""Method ``ttp``: session keys from a trusted third party (DESIGN.md step 4d, webinos option d).

Two devices that both enrolled with the same key server get a fresh key ``SK`` from it when
each has stated the will to connect to the other; they then open a channel on their own link
(BLE or TCP) from ``SK``, and the host sends the session key, acknowledged by the guest.  Three
exchanges, each a machine here (sans-I/O: no socket, no clock, randomness injected):

**1. Device and key server** (:class:`TtpClient`, :class:`TtpServerConn`), inside TLS 1.3 whose
server certificate must chain to the CA certificate the device pins (the file a manufacturer
installs).  TLS authenticates the server; the device proves it holds its X25519 identity key::

    device -> server  TtpHello(static, nonce_c, name)
    server -> device  TtpChallenge(nonce_s, eph)              eph: a fresh X25519 key
    device -> server  TtpProof(proof) and, at once, one request
        K     = HKDF-SHA256(X25519(static, eph), salt = nonce_c || nonce_s, "pairkit/1 ttp auth")
        proof = HMAC(K, "client" || static || eph || nonce_c || nonce_s || cert)
    server -> device  the answer: EnrolDone, SkDelivery, or an Abort with a reason

``cert`` is SHA-256 of the server certificate as the TLS layer saw it, so a proof made for one
server is worthless to another.  The requests are :class:`EnrolRequest` (register the identity
key and, for CPNS, the factory EUKey; allowed for any key its holder proves, optionally only
with the server's enrolment token), :class:`IntentRequest` (below) and the CPNS
``PnRegistrationRequest`` (:mod:`pairing.cpns`), after which the connection is handed over.

**2. Intent.**  On their own link the two devices first negotiate like every method
(:mod:`pairing.methods`): the guest's :class:`~pairing.messages.Offer` announces method ``ttp``
and carries its device id (``guest_id``); the host checks the proposal against its own table
(:func:`pairing.negotiation.choose`) and answers an :class:`~pairing.messages.Accept` with its
device id (``host_id``).  ``context = HKDF(th || guest id || host id, "pairkit/1 ttp context")``
where ``th`` is the negotiation transcript of both announcements, salted with what the two sides
exchanged on the link before (the cloud step, docs/security.md rule 6).  Each then
states to the server ``IntentRequest(peer id, context, role, wait)``.  The server answers both
with the same fresh ``SK`` and the *other* device's enrolled record (:class:`SkDelivery`) once
it holds two intents that name each other, carry the same context and opposite roles, within
the window; otherwise it stops with a timeout.  The context ties the key to this one meeting on
this one link: two pairings between the same devices never share an SK.

**3. Channel from SK** (:class:`TtpLinkGuest`, :class:`TtpLinkHost`)::

    k_h2g || k_g2h   = HKDF(SK, salt = context, "pairkit/1 ttp channel" || match id)
    host  -> guest   SessionKeyOffer = AEAD(k_h2g, {session key, host identity})
    guest -> host    SessionKeyAck   = AEAD(k_g2h, {MAC(kc, "guest" || context), guest identity})
    g2h || h2g || kc = HKDF(session key || X25519(s_G, s_H), salt = context,
                            "pairkit/1 ttp session")

``AEAD`` is ChaCha20-Poly1305 with nonce 0 (each key seals one message) and ``context`` as
associated data.

Each side checks that the identity inside the channel is the enrolled record the server vouched
for.  The static-static Diffie-Hellman mixed into the final keys binds the session to those two
identity keys: only their holders can compute the keys, so the server, which made ``SK``, cannot
read the session either (it could at most stop it).  The guest finishes after its ``Ack``; the
secure link's READY exchange (:func:`pairkit.securelink.confirm`) then confirms the keys both
ways, as after every method.
"""

from __future__ import annotations

import dataclasses
import os
from enum import IntEnum
from hashlib import sha256
from typing import Any, ClassVar

from . import keyschedule, wire
from .crypto import (
    Rng,
    check_ed25519_public,
    digest,
    hkdf,
    mac,
    same,
    seal,
    unseal,
    x25519,
    x25519_loaded,
)
from .errors import (
    AuthenticationError,
    ConfigError,
    ErrorCode,
    LocalError,
    PairingError,
    ProtocolError,
    RefusedError,
)
from .keystore.records import clean_name
from .machine import DONE, Machine, Question, Step, step
from .messages import (
    ID_LEN,
    KEY_LEN,
    MAC_LEN,
    NONCE_LEN,
    Accept,
    Announce,
    Identity,
    Offer,
    device_name,
)
from .methods import LocalIdentity, PeerInfo, Session, _check_context, _th
from .methods.base import _ACCEPT_FIELDS, _OFFER_FIELDS, _only_fields
from .methods.common import PrekeySource, _take_prekeys
from .negotiation import ALL_CAPS, Caps, Method, choose, methods_from_mask, methods_mask
from .wire import Message, field, message, struct

#: the longest a device may ask the server to wait for the other device's intent (seconds)
MAX_WAIT = 300
#: extra time a client allows the server beyond the wait it asked for
WAIT_MARGIN = 5.0
TOKEN_MAX = 64


class IntentTimeout(LocalError):
    """No matching intent arrived in time (told to the device, unlike a silent peer)."""

    code = ErrorCode.TIMEOUT


class BadTokenError(RefusedError):
    """Enrolment needs this server's enrolment token, and the one given was missing or wrong."""


class IntentRole(IntEnum):
    """Which side of the pairing a device plays (an intent matches only the opposite role)."""

    HOST = 1
    GUEST = 2

    @property
    def other(self) -> IntentRole:
        return IntentRole.GUEST if self is IntentRole.HOST else IntentRole.HOST


# --------------------------------------------------------------------------------------------
# Messages (type ids 60 to 69)
# --------------------------------------------------------------------------------------------


@struct
class DeviceRecord(Message):
    """An enrolled device as the server vouches for it."""

    device_id: bytes = field(2, size=ID_LEN)
    name: str = field(3, max_len=64)
    static: bytes = field(4, size=KEY_LEN)
    signing: bytes = field(5, size=KEY_LEN)


@message(type_id=60, max_size=256)
class TtpHello(Message):
    """Device -> server: its identity key, a fresh nonce and its name."""

    static: bytes = field(2, size=KEY_LEN)
    nonce: bytes = field(3, size=NONCE_LEN)
    name: str = field(4, max_len=64)


@message(type_id=61, max_size=128)
class TtpChallenge(Message):
    """Server -> device: a fresh nonce and a fresh X25519 key to prove the identity key against."""

    nonce: bytes = field(2, size=NONCE_LEN)
    eph: bytes = field(3, size=KEY_LEN)


@message(type_id=62, max_size=128)
class TtpProof(Message):
    """Device -> server: the proof of possession of the identity key (see the module docstring)."""

    proof: bytes = field(2, size=MAC_LEN)


@message(type_id=63, max_size=512)
class EnrolRequest(Message):
    """Device -> server: register (or refresh) this device, with its factory EUKey for CPNS."""

    signing: bytes = field(2, size=KEY_LEN)
    eukey: bytes | None = field(3, size=KEY_LEN, default=None, secret=True)
    token: bytes | None = field(4, max_len=TOKEN_MAX, default=None)


@message(type_id=64, max_size=128)
class EnrolDone(Message):
    """Server -> device: enrolled; ``updated`` when the device was enrolled before."""

    device_id: bytes = field(2, size=ID_LEN)
    updated: bool = field(3)
    has_eukey: bool = field(4)


@message(type_id=65, max_size=256)
class IntentRequest(Message):
    """Device -> server: "I want to connect to ``peer_id`` in this ``context``, as ``role``"."""

    peer_id: bytes = field(2, size=ID_LEN)
    context: bytes = field(3, size=32)
    role: IntentRole = field(4)
    #: seconds the device will wait for the other intent (the server may cap it)
    wait: int = field(5)


@message(type_id=66, max_size=512)
class SkDelivery(Message):
    """Server -> device: the shared key and the other device's enrolled record."""

    match_id: bytes = field(2, size=16)
    sk: bytes = field(3, size=KEY_LEN, secret=True)
    peer: DeviceRecord = field(4)


@message(type_id=68, max_size=1024)
class SessionKeyOffer(Message):
    """Host -> guest, sealed under the SK channel: the session key and the host's identity."""

    sealed: bytes = field(2, max_len=900)


@message(type_id=69, max_size=1024)
class SessionKeyAck(Message):
    """Guest -> host, sealed under the SK channel: key confirmation and the guest's identity."""

    sealed: bytes = field(2, max_len=900)


@struct
class _OfferBody(Message):
    session_key: bytes = field(2, size=KEY_LEN, secret=True)
    identity: Identity = field(3)


@struct
class _AckBody(Message):
    mac: bytes = field(2, size=MAC_LEN)
    identity: Identity = field(3)


# --------------------------------------------------------------------------------------------
# The proof of possession (shared by both sides, the tests and the bench)
# --------------------------------------------------------------------------------------------


def auth_proof(
    shared: bytes, *, static: bytes, eph: bytes, nonce_c: bytes, nonce_s: bytes, cert: bytes
) -> bytes:
    """``proof`` of the module docstring from the X25519 result ``shared``."""
    key = hkdf(shared, salt=nonce_c + nonce_s, info=keyschedule.TTP_AUTH)
    return mac(key, b"client", static, eph, nonce_c, nonce_s, cert)


def cert_digest(der: bytes) -> bytes:
    """SHA-256 of a DER certificate: what the proof binds the server by."""
    return sha256(der).digest()


def link_context(offer: Offer, accept: Accept, context: bytes = b"") -> bytes:
    """The intent context: the negotiation of this meeting (both announcements, both device
    ids, and the pre-pairing ``context``), so one meeting gives one key."""
    assert offer.guest_id is not None and accept.host_id is not None
    th = _th(offer.hello, accept.hello, context)
    return hkdf(th + offer.guest_id + accept.host_id, salt=b"", info=keyschedule.TTP_CONTEXT)


def _fingerprint(secret: bytes, context: bytes) -> str:
    return keyschedule.fingerprint(secret, context)


def _check_record(record: DeviceRecord, expected_id: bytes, who: str) -> None:
    if record.device_id != expected_id:
        raise AuthenticationError(f"the key server vouched for another device than {who}")
    if record.device_id != digest(record.static):
        raise AuthenticationError(f"the key server's record of {who} does not match its key")
    # enrolled before the key server refused them: the peer's identity payload must show the
    # same key, which the pairing would then refuse; refused here first, in as many words
    check_ed25519_public(record.signing, f"the key server's record of {who}: its")


# --------------------------------------------------------------------------------------------
# 1. Device and server
# --------------------------------------------------------------------------------------------

S_START = "start"
S_CHALLENGE = "await-challenge"
S_RESPONSE = "await-response"
S_HELLO = "await-hello"
S_PROOF = "await-proof"
S_REQUEST = "await-request"
S_ASK = "ask"


class TtpClient(Machine):
    """The device's side of one connection to the key server: prove, ask, get the answer.

    ``request`` is sent right after the proof.  With ``expect`` (``EnrolDone`` or
    ``SkDelivery``) the machine waits for that answer (in :attr:`result`); without, it is done
    once the request is sent and the caller carries on with the connection (CPNS).
    """

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_CHALLENGE, TtpChallenge): step("_on_challenge", S_RESPONSE, DONE),
        (S_RESPONSE, EnrolDone): step("_on_response", DONE),
        (S_RESPONSE, SkDelivery): step("_on_response", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({S_CHALLENGE})

    def __init__(
        self,
        me: LocalIdentity,
        *,
        cert: bytes,
        request: wire.Message,
        expect: type[wire.Message] | None,
        step_timeout: float = 10.0,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(initial_state=S_START)
        if len(cert) != 32:
            raise ConfigError("the server certificate digest must be 32 bytes")
        if not 0.1 <= step_timeout <= 600:
            raise ConfigError("the timeout (seconds per step) must be between 0.1 and 600 seconds")
        self.me = me
        self._cert = cert
        self._request = request
        self._expect = expect
        self._timeout = step_timeout
        self._rng = rng
        self.result: wire.Message | None = None
        #: the request has gone out (before it, a connection lost cost the server nothing and
        #: the request can be made again on another)
        self.asked = False

    def _on_start(self, now: float) -> None:
        """Send the hello."""
        self._nonce = self._rng(NONCE_LEN)
        self._send(TtpHello(self.me.static_public, self._nonce, self.me.name))
        self.state = S_CHALLENGE
        self._expect_by(now + self._timeout, "the key server did not answer")

    def _on_challenge(self, msg: TtpChallenge, now: float) -> None:
        shared = x25519(self.me.static_key(), msg.eph)
        proof = auth_proof(
            shared, static=self.me.static_public, eph=msg.eph, nonce_c=self._nonce,
            nonce_s=msg.nonce, cert=self._cert,
        )
        self._send(TtpProof(proof))
        self._send(self._request)
        self.asked = True
        if self._expect is None:
            self._finish()
            return
        wait = self._timeout
        if isinstance(self._request, IntentRequest):
            wait = self._request.wait + WAIT_MARGIN
        self.state = S_RESPONSE
        self._expect_by(now + wait, "the key server did not answer the request in time")

    def _on_response(self, msg: wire.Message, now: float) -> None:
        if self._expect is None or not isinstance(msg, self._expect):
            raise ProtocolError(f"the key server answered with {type(msg).__name__}")
        if isinstance(msg, SkDelivery):
            if not isinstance(self._request, IntentRequest):
                raise ProtocolError("the key server sent a key that no intent asked for")
            _check_record(msg.peer, self._request.peer_id, "the other device")
        if isinstance(msg, EnrolDone) and msg.device_id != self.me.device_id:
            raise ProtocolError("the key server enrolled another device id than ours")
        self.result = msg
        self._finish()


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What the server side of a connection needs to know; validated when built."""

    #: SHA-256 of this server's certificate (the proof binds it)
    cert: bytes
    #: when set, enrolment needs this token (compared in constant time)
    enrol_token: bytes | None = dataclasses.field(default=None, repr=False)
    #: the longest wait for the other intent the server grants
    max_wait: float = 60.0
    #: seconds to wait for each message from the device
    step_timeout: float = 10.0

    def __post_init__(self) -> None:
        if len(self.cert) != 32:
            raise ConfigError("the certificate digest must be 32 bytes")
        if self.enrol_token is not None and not 16 <= len(self.enrol_token) <= TOKEN_MAX:
            raise ConfigError(f"an enrolment token is 16 to {TOKEN_MAX} bytes")
        if not 1 <= self.max_wait <= MAX_WAIT:
            raise ConfigError(f"max_wait must be between 1 and {MAX_WAIT} seconds")
        if not 0.1 <= self.step_timeout <= 600:
            raise ConfigError("the timeout (seconds per step) must be between 0.1 and 600 seconds")


@dataclasses.dataclass(frozen=True)
class EnrolAsked(Question):
    """Store this device (the delegate answers an :class:`EnrolDone`)."""

    hook: ClassVar[str] = "ttp_enrol"
    device: DeviceRecord
    eukey: bytes | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class IntentAsked(Question):
    """Wait for the matching intent (the delegate answers a :class:`SkDelivery`, or ``None``
    when none came within ``wait`` seconds)."""

    hook: ClassVar[str] = "ttp_intent"
    device_id: bytes
    static: bytes
    peer_id: bytes
    context: bytes
    role: IntentRole
    wait: float


class TtpServerConn(Machine):
    """The server's side of one device connection: check the proof, then serve one request.

    After a CPNS ``PnRegistrationRequest`` the machine is done with :attr:`handover` set; the
    caller continues the connection with :class:`pairing.cpns.CpnsServer`.
    """

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_HELLO, TtpHello): step("_on_hello", S_PROOF),
        (S_PROOF, TtpProof): step("_on_proof", S_REQUEST),
        (S_REQUEST, EnrolRequest): step("_on_enrol", S_ASK),
        (S_REQUEST, IntentRequest): step("_on_intent", S_ASK),
    }
    ANSWERS: ClassVar[dict[str, Step]] = {S_ASK: step("_on_answer", DONE)}
    STARTS: ClassVar[frozenset[str]] = frozenset({S_HELLO})

    def __init__(
        self,
        config: ServerConfig,
        *,
        handover: tuple[type[wire.Message], ...] = (),
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(initial_state=S_HELLO)
        # Requests of other protocols that may follow the proof (CPNS registration): they end
        # this machine, and the caller hands the connection to that protocol's machine.
        self._table = {
            **type(self).TABLE, **{(S_REQUEST, t): step("_on_handover", DONE) for t in handover}
        }
        self.config = config
        self._rng = rng
        #: the device, once its proof checked
        self.device_id: bytes | None = None
        self.static: bytes | None = None
        self.name: str | None = None
        #: a request for another protocol on this connection (CPNS)
        self.handover: wire.Message | None = None
        self.answer_value: Any = None

    def table(self) -> dict[tuple[str, type], Step]:
        return self._table

    def _on_start(self, now: float) -> None:
        """Wait for the device's hello."""
        self._expect_by(now + self.config.step_timeout, "the device sent nothing")

    def _on_hello(self, msg: TtpHello, now: float) -> None:
        self._hello = msg
        self._eph, eph_public = x25519_loaded(self._rng)
        self._challenge = TtpChallenge(self._rng(NONCE_LEN), eph_public)
        self._send(self._challenge)
        self.state = S_PROOF
        self._expect_by(now + self.config.step_timeout, "the device did not answer the challenge")

    def _on_proof(self, msg: TtpProof, now: float) -> None:
        h, c = self._hello, self._challenge
        shared = x25519(self._eph, h.static)
        expected = auth_proof(
            shared, static=h.static, eph=c.eph, nonce_c=h.nonce, nonce_s=c.nonce,
            cert=self.config.cert,
        )
        if not same(expected, msg.proof):
            raise AuthenticationError(
                "the device did not prove it holds its identity key (or it checked another "
                "server certificate)"
            )
        self.device_id = digest(h.static)
        self.static = h.static
        # Cleaned as it is taken: the server stores it, lists it one device a line and logs it
        # (atk20r 1: "kitchen tv\n<its id>  lost phone" forged a line of `ttp list`).
        self.name = clean_name(h.name)
        self.state = S_REQUEST
        self._expect_by(now + self.config.step_timeout, "the device sent no request")

    def _on_enrol(self, msg: EnrolRequest, now: float) -> None:
        token = self.config.enrol_token
        if token is not None and (msg.token is None or not same(msg.token, token)):
            raise BadTokenError(
                "enrolment needs this server's enrolment token, and it was missing or wrong"
            )
        assert self.device_id is not None and self.static is not None and self.name is not None
        # The server vouches for this key in ttp pairings and certificates: never for one that
        # signs nothing (docs/security.md rule 1).
        check_ed25519_public(msg.signing, "the device's")
        record = DeviceRecord(self.device_id, self.name, self.static, msg.signing)
        self._ask(EnrolAsked(record, msg.eukey))

    def _on_intent(self, msg: IntentRequest, now: float) -> None:
        assert self.device_id is not None and self.static is not None
        if msg.peer_id == self.device_id:
            raise ProtocolError("a device cannot state the will to connect to itself")
        wait = float(min(max(msg.wait, 1), self.config.max_wait))
        self._ask(
            IntentAsked(self.device_id, self.static, msg.peer_id, msg.context, msg.role, wait)
        )

    def _on_handover(self, msg: wire.Message, now: float) -> None:
        self.handover = msg
        self._finish()

    def _ask(self, question: Question) -> None:
        self._question = question
        self.state = S_ASK
        self._expect_by(None)
        self._emit(question)

    def _on_answer(self, question: Question, value: Any, now: float) -> None:
        if isinstance(question, EnrolAsked):
            if not isinstance(value, EnrolDone):
                raise ProtocolError("the answer to an enrolment must be an EnrolDone")
        elif isinstance(question, IntentAsked):
            if value is None:
                raise IntentTimeout(
                    f"no matching intent from device {question.peer_id.hex()[:16]} within "
                    f"{question.wait:g} s (it must name this device, in the same pairing, "
                    "in the other role)"
                )
            if not isinstance(value, SkDelivery):
                raise ProtocolError("the answer to an intent must be an SkDelivery or None")
        self.answer_value = value
        self._send(value)
        self._finish()


# --------------------------------------------------------------------------------------------
# 2 and 3. The two devices on their own link
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TtpLinkConfig:
    """One device's settings for method ``ttp``; validated when built."""

    #: seconds to wait for each message from the other device on the link
    step_timeout: float = 30.0
    #: seconds the key server is asked to wait for the other device's intent
    wait: int = 60
    #: prekeys given to the peer for later resumes
    prekeys: int = 8
    #: when set, the other device must have this id (else the pairing stops before the server)
    peer_hint: bytes | None = None
    #: the methods this side announces as allowed (the host checks ``ttp`` is among them)
    methods: frozenset[Method] = frozenset({Method.TTP})
    caps: Caps = ALL_CAPS

    def __post_init__(self) -> None:
        if not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("the timeout (seconds per step) must be between 0.1 and 3600 seconds")
        if not 1 <= self.wait <= MAX_WAIT:
            raise ConfigError(f"wait must be between 1 and {MAX_WAIT} seconds")
        if not 0 <= self.prekeys <= 16:
            raise ConfigError("prekeys must be between 0 and 16")
        if self.peer_hint is not None and len(self.peer_hint) != ID_LEN:
            raise ConfigError(f"a device id is {ID_LEN} bytes ({2 * ID_LEN} hex digits)")
        if not self.methods:
            raise ConfigError("at least one pairing method must be allowed")


@dataclasses.dataclass(frozen=True)
class TtpKeyNeeded(Question):
    """Ask the key server for SK (the delegate states the intent and answers the
    :class:`SkDelivery`)."""

    hook: ClassVar[str] = "ttp_key"
    role: IntentRole
    peer_id: bytes
    peer_name: str
    context: bytes
    wait: int


S_ACCEPT = "await-accept"
S_TTP_OFFER = "await-offer"
S_KEY = "ask-key-server"
S_OFFER = "await-session-key"
S_ACK = "await-ack"


class _TtpLink(Machine):
    """What the two link machines share."""

    ROLE: ClassVar[IntentRole]
    #: after the key: the guest waits for the session key, the host for the ack
    ANSWERS: ClassVar[dict[str, Step]] = {S_KEY: step("_on_key", S_OFFER, S_ACK)}

    def __init__(
        self, config: TtpLinkConfig, me: LocalIdentity, *, initial: str, rng: Rng,
        context: bytes = b"", prekeys: PrekeySource | None = None,
    ) -> None:
        super().__init__(initial_state=initial)
        self.config = config
        self.me = me
        self._rng = rng
        self._pre = _check_context(context)
        self.session: Session | None = None
        self.delivery: SkDelivery | None = None
        # Taken from the runtime's pool when it has them ready (made ahead of need, off the
        # critical path), else made here, in the order the frozen transcripts expect.
        self._prekeys = _take_prekeys(config.prekeys, rng, prekeys)

    def _announce(self) -> Announce:
        return Announce(
            caps=int(self.config.caps), methods=methods_mask(self.config.methods),
            method=Method.TTP, name=self.me.name, nonce=self._rng(NONCE_LEN),
        )

    def _check_peer_id(self, device_id: bytes, who: str) -> None:
        hint = self.config.peer_hint
        if hint is not None and device_id != hint:
            raise AuthenticationError(
                f"the {who} on this link is device {device_id.hex()[:16]}, not the "
                f"{hint.hex()[:16]} you named"
            )
        if device_id == self.me.device_id:
            raise ProtocolError(f"the {who} claims this device's own id")

    def _ask_key(self, peer_id: bytes, peer_name: str, now: float) -> None:
        self._peer_id = peer_id
        self.state = S_KEY
        self._expect_by(None)
        self._emit(
            TtpKeyNeeded(self.ROLE, peer_id, peer_name, self._context, self.config.wait)
        )

    def _on_key(self, question: Question, value: Any, now: float) -> None:
        if not isinstance(value, SkDelivery):
            raise ProtocolError("the answer to TtpKeyNeeded must be an SkDelivery")
        who = "the host" if self.ROLE is IntentRole.GUEST else "the guest"
        _check_record(value.peer, self._peer_id, who)
        self.delivery = value
        okm = hkdf(
            value.sk, salt=self._context, info=keyschedule.TTP_CHANNEL + value.match_id,
            length=64,
        )
        self._k_h2g, self._k_g2h = okm[:32], okm[32:]
        self._after_key(now)

    def _after_key(self, now: float) -> None:
        raise NotImplementedError

    def _identity(self) -> Identity:
        return Identity(
            device_id=self.me.device_id, name=self.me.name, static=self.me.static_public,
            signing=self.me.signing_public, prekeys=tuple(p.digest for p in self._prekeys),
        )

    def _check_identity(self, ident: Identity, who: str) -> None:
        assert self.delivery is not None
        vouched = self.delivery.peer
        if (
            ident.device_id != vouched.device_id
            or not same(ident.static, vouched.static)
            or ident.signing != vouched.signing
        ):
            raise AuthenticationError(
                f"{who} is not the enrolled device the key server vouched for"
            )

    def _final(self, session_key: bytes) -> tuple[bytes, bytes, bytes, str]:
        assert self.delivery is not None
        dh = x25519(self.me.static_key(), self.delivery.peer.static)
        okm = hkdf(session_key + dh, salt=self._context, info=keyschedule.TTP_SESSION, length=96)
        return okm[:32], okm[32:64], okm[64:], _fingerprint(session_key + dh, self._context)

    def _session(self, ident: Identity, send: bytes, recv: bytes, fp: str) -> Session:
        return Session(
            method=Method.TTP, initiator=self.ROLE is IntentRole.GUEST,
            peer=PeerInfo(ident.device_id, device_name(ident.name, "the peer's name"),
                          ident.static, ident.signing, True),
            send_key=send, recv_key=recv, fingerprint=fp, new_our_prekeys=self._prekeys,
            new_their_prekeys=ident.prekeys, replace_prekeys=True,
        )


class TtpLinkGuest(_TtpLink):
    """The guest (the side that connected): hello, key from the server, the host's session key."""

    ROLE = IntentRole.GUEST
    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_ACCEPT, Accept): step("_on_accept", S_KEY),
        (S_OFFER, SessionKeyOffer): step("_on_offer", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({S_ACCEPT})

    def __init__(
        self, config: TtpLinkConfig, me: LocalIdentity, *, rng: Rng = os.urandom,
        context: bytes = b"", prekeys: PrekeySource | None = None,
    ) -> None:
        super().__init__(config, me, initial=S_START, rng=rng, context=context, prekeys=prekeys)

    def _on_start(self, now: float) -> None:
        """Send the guest's Offer for method ``ttp``."""
        self._offer = Offer(hello=self._announce(), guest_id=self.me.device_id)
        self._send(self._offer)
        self.state = S_ACCEPT
        self._expect_by(now + self.config.step_timeout, "the host did not answer")

    def _on_accept(self, msg: Accept, now: float) -> None:
        if msg.hello.method is not Method.TTP:
            raise ProtocolError(
                f"the host answered with method '{Method(msg.hello.method).label}' "
                "but 'ttp' was proposed"
            )
        choose(
            self.config.caps, self.config.methods, Caps(msg.hello.caps),
            methods_from_mask(msg.hello.methods), proposed=Method.TTP,
        )
        # ttp's fields only, as every method's (docs/security.md; attack review atk19d)
        _only_fields(msg, Method.TTP, _ACCEPT_FIELDS)
        if msg.host_id is None:
            raise ProtocolError("the host's Accept for method 'ttp' lacks its device id")
        self._check_peer_id(msg.host_id, "host")
        self._context = link_context(self._offer, msg, self._pre)
        self._ask_key(msg.host_id, msg.hello.name, now)

    def _after_key(self, now: float) -> None:
        self.state = S_OFFER
        self._expect_by(now + self.config.step_timeout, "the host did not send the session key")

    def _on_offer(self, msg: SessionKeyOffer, now: float) -> None:
        body = wire.decode_struct(
            _OfferBody,
            unseal(self._k_h2g, 0, msg.sealed, self._context, "the host's session key"),
            max_size=900,
        )
        self._check_identity(body.identity, "the host")
        g2h, h2g, kc, fp = self._final(body.session_key)
        ack = _AckBody(mac(kc, b"guest", self._context), self._identity())
        self._send(SessionKeyAck(seal(self._k_g2h, 0, wire.encode_struct(ack), self._context)))
        self.session = self._session(body.identity, g2h, h2g, fp)
        self._finish()


class TtpLinkHost(_TtpLink):
    """The host (the side that accepted): hello, key from the server, sends the session key."""

    ROLE = IntentRole.HOST
    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_TTP_OFFER, Offer): step("_on_offer_msg", S_KEY),
        (S_ACK, SessionKeyAck): step("_on_ack", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({S_TTP_OFFER})

    def __init__(
        self, config: TtpLinkConfig, me: LocalIdentity, *, rng: Rng = os.urandom,
        context: bytes = b"", prekeys: PrekeySource | None = None,
    ) -> None:
        super().__init__(
            config, me, initial=S_TTP_OFFER, rng=rng, context=context, prekeys=prekeys
        )

    def _on_start(self, now: float) -> None:
        """Wait for the guest's Offer."""
        self._expect_by(now + self.config.step_timeout, "the guest sent nothing")

    def _on_offer_msg(self, msg: Offer, now: float) -> None:
        # The same table as every method: a host that does not allow ttp refuses it here,
        # before any key server is contacted.
        choose(
            Caps(msg.hello.caps), methods_from_mask(msg.hello.methods), self.config.caps,
            self.config.methods, proposed=msg.hello.method,
        )
        if msg.hello.method is not Method.TTP:
            raise ProtocolError("this exchange runs method 'ttp' only")
        _only_fields(msg, Method.TTP, _OFFER_FIELDS)  # ttp's fields only (atk19d)
        if msg.guest_id is None:
            raise ProtocolError("the guest's Offer for method 'ttp' lacks its device id")
        self._check_peer_id(msg.guest_id, "guest")
        accept = Accept(hello=self._announce(), host_id=self.me.device_id)
        self._send(accept)
        self._context = link_context(msg, accept, self._pre)
        self._ask_key(msg.guest_id, msg.hello.name, now)

    def _after_key(self, now: float) -> None:
        self._session_key = self._rng(KEY_LEN)
        body = _OfferBody(self._session_key, self._identity())
        sealed = seal(self._k_h2g, 0, wire.encode_struct(body), self._context)
        self._send(SessionKeyOffer(sealed))
        self.state = S_ACK
        self._expect_by(now + self.config.step_timeout, "the guest did not acknowledge the key")

    def _on_ack(self, msg: SessionKeyAck, now: float) -> None:
        body = wire.decode_struct(
            _AckBody,
            unseal(self._k_g2h, 0, msg.sealed, self._context, "the guest's acknowledgement"),
            max_size=900,
        )
        self._check_identity(body.identity, "the guest")
        g2h, h2g, kc, fp = self._final(self._session_key)
        if not same(body.mac, mac(kc, b"guest", self._context)):
            raise AuthenticationError("the guest's key confirmation failed")
        self.session = self._session(body.identity, h2g, g2h, fp)
        self._finish()


def is_ttp_offer(data: bytes) -> bool:
    """Whether a guest's first message on the link is an Offer proposing method ``ttp`` (a
    host that allows several methods hands it to :class:`TtpLinkHost`, every other first
    message to :class:`pairing.methods.HostPairing`; both check the proposal)."""
    if wire.peek_type(data) != Offer.TYPE:
        return False
    try:
        offer = wire.decode(data, Offer)
    except PairingError:
        return False
    return offer.hello.method is Method.TTP


def ttp_offer_guest(data: bytes) -> bytes | None:
    """The device id a guest's ``ttp`` Offer (``data``, for which :func:`is_ttp_offer` holds)
    pairs as: a host holds it to the id the join request claimed before it states any intent
    to the key server (docs/security.md, "The key server")."""
    return wire.decode(data, Offer).guest_id


def parse_device_id(text: str) -> bytes:
    """A device id as people type it: 32 hex digits (dashes and spaces ignored)."""
    cleaned = text.strip().lower().replace("-", "").replace(" ", "")
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise ConfigError(f"{text!r} is not a device id (32 hex digits)") from None
    if len(raw) != ID_LEN:
        raise ConfigError(f"{text!r} is not a device id (32 hex digits)")
    return raw


__all__ = [
    "MAX_WAIT",
    "BadTokenError",
    "DeviceRecord",
    "EnrolAsked",
    "EnrolDone",
    "EnrolRequest",
    "IntentAsked",
    "IntentRequest",
    "IntentRole",
    "IntentTimeout",
    "ServerConfig",
    "SessionKeyAck",
    "SessionKeyOffer",
    "SkDelivery",
    "TtpChallenge",
    "TtpClient",
    "TtpHello",
    "TtpKeyNeeded",
    "TtpLinkConfig",
    "TtpLinkGuest",
    "TtpLinkHost",
    "TtpProof",
    "TtpServerConn",
    "auth_proof",
    "cert_digest",
    "is_ttp_offer",
    "link_context",
    "parse_device_id",
    "ttp_offer_guest",
]
