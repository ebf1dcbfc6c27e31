"""The pairing methods as two sans-I/O machines: :class:`GuestPairing` and :class:`HostPairing`.

The guest (BLE central, the side that connects) speaks first.  Every method starts with the
guest's :class:`~pairing.messages.Offer` and the host's :class:`~pairing.messages.Accept`, each
carrying an :class:`~pairing.messages.Announce` (capabilities, allowed methods, the choice, a
fresh nonce).  ``th``, the hash of both announcements, is bound into every method as described
below, so rewriting either announcement (downgrade, method confusion) makes the exchange fail.

``pin`` (4 flights, 2 round trips)
    Offer(CPace Ya) -> Accept(CPace Yb, Noise msg 1) -> Noise msg 2 -> Noise msg 3.
    CPACE-X25519-SHA512 (draft-irtf-cfrg-cpace §7, initiator-responder) with the PIN as PRS,
    ``ci = "pairkit/1 pin"`` and each side's announcement as its AD; its ISK is the PSK of
    ``Noise_XXpsk0_25519_ChaChaPoly_SHA256`` (Noise rev 34 §9) run host-first with ``th`` as
    prologue.  The guest learns of a wrong PIN when it reads Noise message 1 (psk0 encrypts its
    payload), the host when it reads message 2; the static identities travel in messages 2 and 3,
    so they are authenticated by the PIN and confirmed by both sides (Noise §7.7 key
    confirmation via the psk).  One wrong guess per attempt is all an attacker gets, and a shown
    PIN is good for one attempt: the host withdraws it when an attempt starts
    (:meth:`HostState.take_pin`) and shows a new one after.

``qr`` (2 flights, 1 round trip)
    Offer(code id, Noise msg 1) -> Accept(Noise msg 2), ``Noise_IKpsk2_25519_ChaChaPoly_SHA256``:
    the guest knows the host's static key from the code (checked by ``es``), and the PSK is
    HKDF of the code's one-time secret.  The prologue is the guest's announcement; the host's
    announcement is bound by its hash inside the host's encrypted payload.

``compare`` (7 flights)
    Offer(PK_G) -> Accept(HPKE(PK_G, SK) = enc||ct, C = HMAC(N_H, "commit"||PK_G||enc||th)) ->
    Reveal(N_G) -> Reveal(N_H) -> [both users compare the code] -> the identity handshake.
    The host commits to its key share (enc) and nonce before it sees the guest's nonce, as in
    BLE LE Secure Connections numeric comparison (Core spec Vol 3 Part H §2.3.5.6.2): a man in
    the middle must fix one side's values before learning the other's nonce, so the six digits
    ``HMAC(th, "code"||PK_G||enc||N_G||N_H) mod 10^6`` match with probability 10^-6 per attempt.
    SK comes from HPKE base mode (RFC 9180 §5.1; X25519, HKDF-SHA256, ChaCha20-Poly1305) with
    ``th`` in ``info``.  Once its person confirmed, the host opens the *identity handshake*:
    ``Noise_XXpsk0_25519_ChaChaPoly_SHA256`` host-first, prologue ``th``, PSK =
    HKDF(SK, salt=th, "pairkit/1 identity psk compare") (3 NoiseMessages).  Its ``es`` and
    ``se`` tokens make each side prove the static key it announces (a key merely sent is
    never taken: docs/security.md, rule 1), and the PSK ties it to the compared SK.

``clear`` (4 flights)
    Offer -> Accept(SK, identity handshake message 1) -> message 2 -> message 3: SK is sent as
    is, then the same identity handshake as ``compare`` (PSK label ``... clear``) proves both
    static keys.  Only over a link whose ``encrypted`` is true on both sides (BLE LE Secure
    Connections; legacy pairing does not count); otherwise refused unless forced.  The peer is
    recorded as authenticated only when the link's own pairing was MITM-protected
    (``link_mitm``: numeric comparison, passkey or OOB); Just Works and forced runs vouch for no
    one (docs/security.md, rule 5).

``resume`` (2 messages) and ``kk``
    The Mozilla Sync style key exchange for known peers: during any pairing each side gave the
    other digests of fresh ephemeral keys (prekeys).  The guest nominates one of the host's
    digests and sends its own ephemeral key E_G (INIT); the host *consumes* that prekey P_H
    (deletes it durably, through :meth:`HostState.consume_prekey`) before answering, draws a
    fresh key F_H of its own, and answers ``okay`` with P_H, F_H, a verifier and one new prekey
    digest sealed under the confirmation key, or ``fail`` ("ephemeral key mismatch").
    SK = HKDF(DH(P_H, S_G) || DH(S_H, E_G) || DH(P_H, E_G) || DH(F_H, E_G)), salted with the
    transcript of INIT, P_H, F_H and the pre-pairing context.  F_H makes every answer fresh: a
    replayed INIT finds its prekey gone (``fail``), and even a host that lost its memory derives
    new keys, so no AEAD key seals twice under one nonce (rule 4).  The guest's first record on
    the secure link (READY) confirms its keys.  When the nomination fails or no digest is left,
    the guest falls back to ``Noise_KK_25519_ChaChaPoly_SHA256`` (both static keys known), which
    also renews the prekeys.  Neither ever changes whether the peer counts as authenticated.

Every method takes ``context``: the hash of what the two sides exchanged on the link before
pairing (the cloud step and join request, :meth:`pairkit.driver.MessagePipe.transcript`).  It
salts ``th`` and the Noise prologues, so a byte changed before the key makes the key differ;
docs/protocol.md gives every label and field.

This module draws randomness only from the ``rng`` it is given, except inside HPKE encryption
(``cryptography`` draws HPKE's ephemeral itself).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable
from typing import Any, ClassVar

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import wire
from .cpace import CPace
from .crypto import Rng, digest, hkdf, mac, same, seal, unseal, x25519, x25519_keypair
from .errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    InsecureLinkError,
    LockedOutError,
    NotFoundError,
    PairingError,
    ProtocolError,
    RefusedError,
    UnsupportedError,
)
from .machine import Event, Machine, Question
from .messages import (
    Accept,
    Announce,
    Identity,
    NoiseMessage,
    Offer,
    ResumeHeader,
    ResumeKind,
    ResumeMessage,
    Reveal,
)
from .negotiation import ALL_CAPS, Caps, Method, choose, methods_from_mask, methods_mask
from .noise import HandshakeState
from .qr import QrCode

PIN_NOISE = "Noise_XXpsk0_25519_ChaChaPoly_SHA256"
QR_NOISE = "Noise_IKpsk2_25519_ChaChaPoly_SHA256"
KK_NOISE = "Noise_KK_25519_ChaChaPoly_SHA256"
HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
DEFAULT_METHODS = frozenset({Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME})


# --------------------------------------------------------------------------------------------
# Who the sides are, what they know, what they end with
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalIdentity:
    """This device, as the handshake needs it (built from the keystore)."""

    device_id: bytes
    name: str
    static_public: bytes
    signing_public: bytes
    static_private: bytes = dataclasses.field(repr=False)

    @classmethod
    def generate(cls, name: str, rng: Rng = os.urandom) -> LocalIdentity:
        """A throwaway identity (tests, demos); real ones come from the keystore."""
        private, public = x25519_keypair(rng)
        return cls(
            device_id=digest(public),
            name=name,
            static_public=public,
            signing_public=rng(32),
            static_private=private,
        )


@dataclasses.dataclass(frozen=True)
class Prekey:
    """One of our ephemeral keys offered to a peer for a later resume."""

    digest: bytes
    private: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class KnownPeer:
    """A peer we paired with before (from the keystore)."""

    device_id: bytes
    name: str
    static_public: bytes
    signing_public: bytes
    their_prekeys: tuple[bytes, ...] = ()
    our_prekeys: tuple[Prekey, ...] = ()
    authenticated: bool = True


@dataclasses.dataclass(frozen=True)
class PeerInfo:
    """Who the peer turned out to be."""

    device_id: bytes
    name: str
    static_public: bytes
    signing_public: bytes
    authenticated: bool


@dataclasses.dataclass(frozen=True)
class Session:
    """What a pairing produces: directional keys, the peer, and prekey bookkeeping."""

    method: Method
    initiator: bool
    peer: PeerInfo
    send_key: bytes = dataclasses.field(repr=False)
    recv_key: bytes = dataclasses.field(repr=False)
    #: a public fingerprint of this session (both sides show the same); never the key
    fingerprint: str
    #: prekeys we gave the peer in this exchange (add to the store)
    new_our_prekeys: tuple[Prekey, ...] = ()
    #: prekey digests the peer gave us in this exchange (add to the store)
    new_their_prekeys: tuple[bytes, ...] = ()
    #: whether the new prekeys replace the stored ones (a full pairing) or add to them
    replace_prekeys: bool = True
    consumed_ours: bytes | None = None
    consumed_theirs: bytes | None = None

    def updated_peer(self, old: KnownPeer | None) -> KnownPeer:
        """The stored peer record after this session (prekeys used, added or replaced)."""
        ours: tuple[Prekey, ...] = ()
        theirs: tuple[bytes, ...] = ()
        if old is not None and not self.replace_prekeys:
            ours = tuple(p for p in old.our_prekeys if p.digest != self.consumed_ours)
            theirs = tuple(d for d in old.their_prekeys if d != self.consumed_theirs)
        return KnownPeer(
            device_id=self.peer.device_id,
            name=self.peer.name,
            static_public=self.peer.static_public,
            signing_public=self.peer.signing_public,
            their_prekeys=(theirs + self.new_their_prekeys)[-32:],
            our_prekeys=(ours + self.new_our_prekeys)[-32:],
            authenticated=self.peer.authenticated,
        )


@dataclasses.dataclass(frozen=True)
class PairingConfig:
    """What one side allows and can do; validated when built."""

    methods: frozenset[Method] = DEFAULT_METHODS
    caps: Caps = ALL_CAPS
    #: seconds to wait for each message from the peer
    step_timeout: float = 30.0
    #: prekeys given to a new peer for later resumes
    prekeys: int = 8
    #: let ``clear`` run over an unencrypted link (the key can then be read by anyone listening)
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("at least one pairing method must be allowed")
        if not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("step_timeout must be between 0.1 and 3600 seconds")
        if not 1 <= self.prekeys <= 16:
            raise ConfigError("prekeys must be between 1 and 16")


# --------------------------------------------------------------------------------------------
# The host's state across guests: the PIN, lockout, issued QR codes, known peers
# --------------------------------------------------------------------------------------------

TRIVIAL_PINS = frozenset({"123456", "654321", "123123", "121212", "012345", "112233"})


def check_pin_strength(pin: str) -> None:
    """Refuse a host-chosen PIN an attacker would guess first."""
    # isascii(): str.isdigit() also takes digits such as "²" or "٣" that no keypad types.
    if len(pin) != 6 or not (pin.isascii() and pin.isdigit()):
        raise ConfigError("a PIN is exactly 6 digits")
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
    # one digit repeated, a run up or down (234567, 987654), or a well-known choice
    if len(set(pin)) == 1 or steps in ({1}, {9}) or pin in TRIVIAL_PINS:
        raise ConfigError(
            "that PIN is too easy to guess (one digit, a run, or a common choice); "
            "choose another or let pairkit pick one"
        )


@dataclasses.dataclass(frozen=True)
class PinPolicy:
    """After ``max_failures`` failed PIN attempts within ``window`` seconds, refuse PINs."""

    max_failures: int = 5
    window: float = 300.0

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window <= 0:
            raise ConfigError("max_failures must be 1 or more and window positive")


@dataclasses.dataclass
class _IssuedQr:
    code: QrCode
    used: bool = False


class HostState:
    """What a host keeps across guests (in memory; the CLI's host process owns one)."""

    def __init__(
        self,
        *,
        rng: Rng = os.urandom,
        pin_policy: PinPolicy | None = None,
        known_peer: Callable[[bytes], KnownPeer | None] = lambda _id: None,
        consume_prekey: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        self._rng = rng
        self.pin_policy = pin_policy or PinPolicy()
        self.known_peer = known_peer
        self._consume = consume_prekey
        self._consumed: set[tuple[bytes, bytes]] = set()
        self._pin: str | None = None
        self._failures: list[float] = []
        self._qr: dict[bytes, _IssuedQr] = {}
        #: the QR code issued last (what the host's screen shows now)
        self.last_qr: QrCode | None = None

    # PIN ------------------------------------------------------------------------------------

    @property
    def pin(self) -> str | None:
        """The PIN to show, or ``None`` when none is active."""
        return self._pin

    def new_pin(self) -> str:
        """Draw a fresh 6-digit PIN (single use)."""
        while True:
            pin = f"{int.from_bytes(self._rng(8), 'big') % 1_000_000:06d}"
            try:
                check_pin_strength(pin)
            except ConfigError:
                continue
            self._pin = pin
            return pin

    def set_pin(self, pin: str) -> None:
        """Use a PIN the owner chose (``--pin``); trivial ones are refused."""
        check_pin_strength(pin)
        self._pin = pin

    def locked_for(self, now: float) -> float:
        """Seconds until PIN attempts are accepted again (0 when they are)."""
        recent = [t for t in self._failures if now - t < self.pin_policy.window]
        self._failures = recent
        if len(recent) < self.pin_policy.max_failures:
            return 0.0
        return recent[-self.pin_policy.max_failures] + self.pin_policy.window - now

    def pin_failed(self, now: float) -> None:
        self._failures.append(now)

    def pin_succeeded(self, started: float) -> None:
        """Take back the failure counted when a PIN attempt started at ``started``."""
        if started in self._failures:
            self._failures.remove(started)

    def pin_used(self) -> None:
        self._pin = None

    def take_pin(self) -> str | None:
        """The active PIN, withdrawn: a shown PIN is good for one attempt, won or lost
        (docs/security.md, rule 7).  The host draws and shows a new one afterwards."""
        pin, self._pin = self._pin, None
        return pin

    # Prekeys --------------------------------------------------------------------------------

    def consume_prekey(self, device_id: bytes, digest_: bytes) -> bool:
        """Delete one of our prekeys for ``device_id`` before it is answered (rule 4).

        True when this call consumed it; False when it was already used (a replay) or the
        durable store no longer holds it.  The store's callback must have deleted the prekey
        durably when it returns True.
        """
        key = (device_id, digest_)
        if key in self._consumed:
            return False
        if self._consume is not None and not self._consume(device_id, digest_):
            return False
        self._consumed.add(key)
        return True

    # QR -------------------------------------------------------------------------------------

    def issue_qr(self, static_public: bytes, wall_now: float, *, ttl: float, hint: str) -> QrCode:
        """A new single-use QR code valid for ``ttl`` seconds."""
        code = QrCode(static_public, self._rng(16), math.ceil(wall_now + ttl), hint)
        self._qr[code.code_id] = _IssuedQr(code)
        self.last_qr = code
        return code

    def take_qr(self, code_id: bytes, wall_now: float) -> QrCode:
        """The code with this id, marked used; refuses unknown, used and expired codes."""
        issued = self._qr.get(code_id)
        if issued is None:
            raise AuthenticationError("this QR code was not issued by this host")
        if issued.used:
            raise RefusedError("this QR code was already used; ask the host to show a new one")
        issued.code.check_fresh(wall_now)
        issued.used = True
        return issued.code


# --------------------------------------------------------------------------------------------
# Events and questions
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfirmCode(Question):
    """Both screens show this 6-digit code; answer True only if the other screen shows it too."""

    hook: ClassVar[str] = "confirm_code"
    code: str
    peer_name: str


@dataclasses.dataclass(frozen=True)
class InsecureWarning(Event):
    """``clear`` is running over a link that is not encrypted, because the user forced it."""

    hook: ClassVar[str] = "on_warning"
    text: str


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

S_START = "start"
S_ACCEPT = "await-accept"
S_OFFER = "await-offer"
S_NOISE = "await-noise"
S_NOISE1 = "await-noise-1"
S_REVEAL = "await-reveal"
S_ASK = "ask-user"
S_RESUME = "await-resume"


def _announce(config: PairingConfig, name: str, method: Method, caps: Caps, rng: Rng) -> Announce:
    return Announce(
        caps=int(caps),
        methods=methods_mask(config.methods),
        method=method,
        name=name,
        nonce=rng(16),
    )


def _th(offer_hello: Announce, accept_hello: Announce, context: bytes = b"") -> bytes:
    """The negotiation transcript: both announcements and ``context`` (what the two sides
    exchanged on the link before pairing, e.g. the cloud step; docs/protocol.md §2)."""
    return hkdf(
        wire.encode_struct(offer_hello) + wire.encode_struct(accept_hello),
        salt=context,
        info=b"pairkit/1 negotiation",
    )


def _hello_hash(hello: Announce, context: bytes = b"") -> bytes:
    return hkdf(wire.encode_struct(hello), salt=context, info=b"pairkit/1 hello")


def _check_context(context: bytes) -> bytes:
    if context and len(context) != 32:
        raise ConfigError("the pre-pairing context is a 32-byte transcript hash")
    return context


def _identity(me: LocalIdentity, prekeys: tuple[Prekey, ...]) -> Identity:
    return Identity(
        device_id=me.device_id,
        name=me.name,
        static=me.static_public,
        signing=me.signing_public,
        prekeys=tuple(p.digest for p in prekeys),
    )


def _new_prekeys(n: int, rng: Rng) -> tuple[Prekey, ...]:
    out = []
    for _ in range(n):
        private, public = x25519_keypair(rng)
        out.append(Prekey(digest(public), private))
    return tuple(out)


def _peer_from_identity(ident: Identity, *, authenticated: bool) -> PeerInfo:
    if ident.device_id != digest(ident.static):
        raise AuthenticationError("the peer's device id does not match its key")
    return PeerInfo(ident.device_id, ident.name, ident.static, ident.signing, authenticated)


@wire.struct
class _Payload(wire.Message):
    """The plaintext of an identity-bearing Noise payload or sealed box."""

    identity: Identity = wire.field(2)
    hello_hash: bytes | None = wire.field(3, size=32, default=None)


@wire.struct
class _Prekeys(wire.Message):
    digests: tuple[bytes, ...] = wire.field(2, size=16, max_len=16, default=())


def _payload_bytes(ident: Identity, hello_hash: bytes | None = None) -> bytes:
    return wire.encode_struct(_Payload(ident, hello_hash))


def _read_payload(data: bytes) -> _Payload:
    return wire.decode_struct(_Payload, data, max_size=512)


def _keys_from_sk(sk: bytes, th: bytes) -> tuple[bytes, bytes, bytes]:
    """(guest->host key, host->guest key, confirmation key) from a session key and transcript."""
    okm = hkdf(sk, salt=th, info=b"pairkit/1 keys", length=96)
    return okm[:32], okm[32:64], okm[64:]


def _fingerprint(secret: bytes, th: bytes) -> str:
    """The session fingerprint both sides print: an exporter value, not the key."""
    fp = hkdf(secret, salt=th, info=b"pairkit/1 session fingerprint", length=8).hex()
    return "-".join(fp[i : i + 4] for i in range(0, 16, 4))


def _noise_keys(hs: HandshakeState) -> tuple[bytes, bytes, str]:
    """(initiator->responder key, responder->initiator key, fingerprint) after a handshake.

    The keys are the Noise Split() outputs (Noise rev 34 §5.2); the fingerprint is an exporter
    of the handshake hash (§11.2 channel binding).
    """
    c1, c2 = hs.split()
    if c1.key is None or c2.key is None:
        raise ProtocolError("the Noise handshake produced no transport keys")
    return c1.key, c2.key, _fingerprint(hs.handshake_hash, b"noise")


def _identity_psk(sk: bytes, th: bytes, method: Method) -> bytes:
    """The PSK of the identity handshake that follows ``compare`` and ``clear``: their
    session key, bound to the transcript and the method (docs/protocol.md §5, §6)."""
    return hkdf(sk, salt=th, info=b"pairkit/1 identity psk " + method.label.encode())


def _code(th: bytes, pk: bytes, enc: bytes, ng: bytes, nh: bytes) -> str:
    value = int.from_bytes(mac(th, b"pairkit/1 code", pk, enc, ng, nh)[:8], "big")
    return f"{value % 1_000_000:06d}"


# --------------------------------------------------------------------------------------------
# The guest
# --------------------------------------------------------------------------------------------


class _LazyPrekeys:
    """Prekeys made only when an exchange hands them out (a resume never does)."""

    config: PairingConfig
    _rng: Rng
    _prekeys_cache: tuple[Prekey, ...] | None = None

    @property
    def _prekeys(self) -> tuple[Prekey, ...]:
        if self._prekeys_cache is None:
            self._prekeys_cache = _new_prekeys(self.config.prekeys, self._rng)
        return self._prekeys_cache


class GuestPairing(_LazyPrekeys, Machine):
    """The guest side (initiator): proposes a method and runs it.

    Call :meth:`start` once, then feed messages with :meth:`~Machine.receive`; questions
    (:class:`ConfirmCode`) are answered with :meth:`~Machine.answer`.  When :attr:`done`,
    :attr:`session` holds the result.
    """

    TABLE: ClassVar[dict[tuple[str, type], str]] = {
        (S_ACCEPT, Accept): "_on_accept",
        (S_NOISE1, NoiseMessage): "_on_noise1",
        (S_NOISE, NoiseMessage): "_on_noise",
        (S_REVEAL, Reveal): "_on_reveal",
        (S_RESUME, ResumeMessage): "_on_resume",
    }
    ANSWERS: ClassVar[dict[str, str]] = {S_ASK: "_on_answer"}

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
    ) -> None:
        super().__init__(initial_state=S_START)
        self.config = config
        self.me = me
        self.method = method
        self._rng = rng
        self._pin = pin
        self._qr = qr
        self._peer = peer
        self._wall_now = wall_now
        self._link_encrypted = link_encrypted
        # A link pairing protected against a man in the middle counts only on an SC link.
        self._link_mitm = link_encrypted and link_mitm
        self._context = _check_context(context)
        caps = config.caps | (Caps.ENCRYPTED_LINK if link_encrypted else Caps.NONE)
        if method is Method.CLEAR and not link_encrypted:
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
        if m is Method.PIN and not self._pin:
            raise ConfigError("method 'pin' needs the PIN shown on the host")
        pin = self._pin or ""
        if m is Method.PIN and (len(pin) != 6 or not (pin.isascii() and pin.isdigit())):
            raise ConfigError("a PIN is exactly 6 digits")
        if m is Method.QR:
            if self._qr is None:
                raise ConfigError("method 'qr' needs the host's QR code (--qr or --qr-image)")
            if self._wall_now is not None:
                self._qr.check_fresh(self._wall_now)
        if m in (Method.RESUME, Method.KK) and self._peer is None:
            raise ConfigError(f"method '{m.label}' needs a known peer; pair first")
        if m is Method.TTP:
            raise UnsupportedError("method 'ttp' is run by pairing.ttp, not by this machine")

    # -- start ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send the first message."""
        self._check_usable()
        if self.state != S_START:
            raise ProtocolError("start() was already called")
        try:
            if self.method is Method.RESUME:
                assert self._peer is not None
                if self._peer.their_prekeys:
                    self._send_resume_init()
                    self._expect(now, S_RESUME)
                    return
                self.method = Method.KK  # no prekey left: the KK fallback
            self._send_offer(now)
        except PairingError as exc:
            self._fail(exc)
            raise

    def _expect(self, now: float, state: str) -> None:
        self.state = state
        self._expect_by(now + self.config.step_timeout, "the host did not answer in time")

    def _send_offer(self, now: float) -> None:
        hello = _announce(self.config, self.me.name, self.method, self._caps, self._rng)
        fields: dict[str, Any] = {}
        if self.method is Method.PIN:
            assert self._pin is not None
            self._cpace = CPace(
                "initiator",
                self._pin.encode(),
                ci=b"pairkit/1 pin",
                ad_self=wire.encode_struct(hello),
                rng=self._rng,
            )
            fields["cpace"] = self._cpace.message()
        elif self.method in (Method.QR, Method.KK):
            if self.method is Method.QR:
                assert self._qr is not None
                name, rs, psks = QR_NOISE, self._qr.host_static, [_qr_psk(self._qr)]
                fields["qr_id"] = self._qr.code_id
            else:
                assert self._peer is not None
                name, rs, psks = KK_NOISE, self._peer.static_public, []
                fields["guest_id"] = self.me.device_id
            self._hs = HandshakeState(
                name, True, prologue=_hello_hash(hello, self._context),
                s=self.me.static_private, rs=rs, psks=psks, rng=self._rng,
            )
            ident = _identity(self.me, self._prekeys)
            fields["noise"] = self._hs.write_message(_payload_bytes(ident))
        elif self.method is Method.COMPARE:
            self._eph, public = x25519_keypair(self._rng)
            fields["pk"] = public
        self._offer = Offer(hello=hello, **fields)
        self._send(self._offer)
        self._expect(now, S_ACCEPT)

    # -- flights --------------------------------------------------------------------------

    def _on_accept(self, msg: Accept, now: float) -> None:
        assert self._offer is not None
        offer = self._offer
        if msg.hello.method != self.method:
            raise ProtocolError(
                f"the host answered with method '{Method(msg.hello.method).label}' "
                f"but '{self.method.label}' was proposed"
            )
        # Check the host's announcement against the same table the host used.
        choose(
            Caps(self._caps),
            self.config.methods,
            Caps(msg.hello.caps),
            methods_from_mask(msg.hello.methods),
            proposed=self.method,
            knows_peer=self._peer is not None,
        )
        self._th = _th(offer.hello, msg.hello, self._context)
        self._host_name = msg.hello.name
        m = self.method
        if m is Method.PIN:
            if msg.cpace is None or msg.noise is None:
                raise DecodeError("the host's Accept lacks its CPace share or Noise message")
            self._cpace.receive(msg.cpace, wire.encode_struct(msg.hello))
            self._noise_responder(self._cpace.isk[:32], msg.noise, now)
        elif m in (Method.QR, Method.KK):
            if msg.noise is None:
                raise DecodeError("the host's Accept lacks its Noise message")
            payload = _read_payload(self._hs.read_message(msg.noise))
            expected = _hello_hash(msg.hello, self._context)
            if payload.hello_hash is None or not same(payload.hello_hash, expected):
                raise AuthenticationError("the host's announcement was changed on the way")
            self._finish_noise(payload.identity)
        elif m is Method.COMPARE:
            if msg.sealed is None or msg.commit is None:
                raise DecodeError("the host's Accept lacks its sealed key or commitment")
            self._sealed = msg.sealed
            self._commit = msg.commit
            self._ng = self._rng(16)
            self._send(Reveal(self._ng))
            self._expect(now, S_REVEAL)
        elif m is Method.CLEAR:
            if msg.key is None or msg.noise is None:
                raise DecodeError("the host's Accept lacks the key or its Noise message")
            self._noise_responder(_identity_psk(msg.key, self._th, m), msg.noise, now)
        else:  # pragma: no cover - excluded by _check_inputs
            raise ProtocolError(f"method {m.label} cannot run here")

    def _noise_responder(self, psk: bytes, first: bytes, now: float) -> None:
        """The guest's half of the host-first identity handshake (``pin``, ``compare``,
        ``clear``): Noise_XXpsk0 keyed by the method's secret, prologue ``th``; both static
        keys are proven by ``es``/``se`` (Noise rev 34 §7.4), so no identity is taken on
        its word (docs/security.md, rule 1)."""
        self._hs = HandshakeState(
            PIN_NOISE, False, prologue=self._th, s=self.me.static_private,
            psks=[psk], rng=self._rng,
        )
        try:
            self._hs.read_message(first)
        except AuthenticationError:
            raise AuthenticationError(_WRONG_SECRET[self.method]) from None
        ident = _identity(self.me, self._prekeys)
        self._send(NoiseMessage(self._hs.write_message(_payload_bytes(ident))))
        self._expect(now, S_NOISE)

    def _on_noise1(self, msg: NoiseMessage, now: float) -> None:
        self._noise_responder(_identity_psk(self._sk, self._th, self.method), msg.noise, now)

    def _on_noise(self, msg: NoiseMessage, now: float) -> None:
        payload = _read_payload(self._hs.read_message(msg.noise))
        self._finish_noise(payload.identity)

    def _authenticated(self) -> bool:
        """Whether a person or a key vouched for the host (docs/security.md, rule 5)."""
        if self.method in (Method.KK, Method.RESUME):
            assert self._peer is not None
            return self._peer.authenticated  # never upgraded by a resume
        if self.method is Method.CLEAR:
            return self._link_mitm
        return True

    def _finish_noise(self, ident: Identity) -> None:
        if not self._hs.complete:
            raise ProtocolError("the Noise handshake is not complete")
        rs = self._hs.remote_static
        if rs is None or not same(rs, ident.static):
            raise AuthenticationError("the host's identity does not match its handshake key")
        peer = _peer_from_identity(ident, authenticated=self._authenticated())
        if self._peer is not None and self._peer.device_id != peer.device_id:
            raise AuthenticationError("the host is not the known peer it claims to be")
        i2r, r2i, fp = _noise_keys(self._hs)
        # pin, compare and clear run host-first (the host is the Noise initiator);
        # qr and kk run guest-first.
        host_first = self.method in _HOST_FIRST
        send, recv = (r2i, i2r) if host_first else (i2r, r2i)
        self.session = Session(
            method=self.method, initiator=True, peer=peer, send_key=send, recv_key=recv,
            fingerprint=fp, new_our_prekeys=self._prekeys, new_their_prekeys=ident.prekeys,
            replace_prekeys=True,
        )
        self._finish()

    def _on_reveal(self, msg: Reveal, now: float) -> None:
        assert self._offer is not None and self._offer.pk is not None
        enc = self._sealed[:32]
        expected = mac(msg.nonce, b"pairkit/1 commit", self._offer.pk, enc, self._th)
        if not same(expected, self._commit):
            raise AuthenticationError("the host's commitment does not match: a man in the middle?")
        try:
            self._sk = HPKE_SUITE.decrypt(
                self._sealed,
                X25519PrivateKey.from_private_bytes(self._eph),
                info=b"pairkit/1 compare" + self._th,
            )
        except Exception:  # InvalidTag or a malformed enc: both mean the same here
            raise AuthenticationError("the host's sealed key could not be opened") from None
        if len(self._sk) != 32:
            raise DecodeError("the session key must be 32 bytes")
        code = _code(self._th, self._offer.pk, enc, self._ng, msg.nonce)
        self.state = S_ASK
        self._expect_by(None)
        self._emit(ConfirmCode(code=code, peer_name=self._host_name))

    def _on_answer(self, question: Question, value: Any, now: float) -> None:
        if value is not True:
            raise RefusedError("the codes were not confirmed; pairing cancelled")
        # The host opens the identity handshake once its own person has confirmed too.
        self.state = S_NOISE1
        self._expect_by(
            now + max(self.config.step_timeout, 120.0),
            "the host's owner did not confirm the code in time",
        )

    # -- resume -----------------------------------------------------------------------------

    def _send_resume_init(self) -> None:
        assert self._peer is not None
        self._nominated = self._peer.their_prekeys[0]
        self._eph, public = x25519_keypair(self._rng)
        self._init = ResumeHeader(
            src_id=self.me.device_id, src_key_id=digest(public), dst_id=self._peer.device_id,
            dst_key_id=self._nominated, seq=0, kind=ResumeKind.INIT, src_key=public,
        )
        self._send(ResumeMessage(header=self._init))

    def _on_resume(self, msg: ResumeMessage, now: float) -> None:
        assert self._peer is not None
        h = msg.header
        if (
            h.dst_id != self.me.device_id
            or h.src_id != self._peer.device_id
            or h.dst_key_id != self._init.src_key_id
            or h.src_key_id != self._nominated
            or h.seq != 1
        ):
            raise ProtocolError("the host's resume answer has the wrong header")
        if h.kind is ResumeKind.FAIL:
            # The nominated prekey is stale or used: forget it and fall back to Noise KK.
            self._stale = self._nominated
            self.method = Method.KK
            self._send_offer(now)
            return
        if (
            h.kind is not ResumeKind.OKAY or h.src_key is None or msg.verifier is None
            or msg.fresh is None
        ):
            raise ProtocolError("the host's resume answer is malformed")
        if not same(digest(h.src_key), self._nominated):
            raise AuthenticationError("ephemeral key mismatch: the host answered with another key")
        th = _resume_th(self._init, h.src_key, msg.fresh, self._context)
        ikm = (
            x25519(self.me.static_private, h.src_key)
            + x25519(self._eph, self._peer.static_public)
            + x25519(self._eph, h.src_key)
            + x25519(self._eph, msg.fresh)
        )
        sk = hkdf(ikm, salt=th, info=b"pairkit/1 resume")
        g2h, h2g, kc = _keys_from_sk(sk, th)
        if not same(msg.verifier, mac(kc, b"host", th)):
            raise AuthenticationError("the host's resume verifier is wrong")
        new: tuple[bytes, ...] = ()
        if msg.sealed is not None:
            new = wire.decode_struct(
                _Prekeys, unseal(kc, 1, msg.sealed, th, "the host's new prekeys")
            ).digests
        p = self._peer
        self.session = Session(
            method=Method.RESUME, initiator=True,
            peer=PeerInfo(p.device_id, p.name, p.static_public, p.signing_public, p.authenticated),
            send_key=g2h, recv_key=h2g, fingerprint=_fingerprint(sk, th),
            new_their_prekeys=new, replace_prekeys=False, consumed_theirs=self._nominated,
        )
        self._finish()

    @property
    def stale_prekey(self) -> bytes | None:
        """The prekey digest the host refused (to delete from the store), if any."""
        return getattr(self, "_stale", None)


def _resume_th(init: ResumeHeader, prekey: bytes, fresh: bytes, context: bytes = b"") -> bytes:
    """The resume transcript: the guest's whole INIT, the host's prekey and fresh key, and the
    pre-pairing context (docs/protocol.md §8)."""
    return hkdf(
        wire.encode_struct(init) + prekey + fresh, salt=context, info=b"pairkit/1 resume th"
    )


def _qr_psk(code: QrCode) -> bytes:
    return hkdf(code.secret, salt=code.host_static, info=b"pairkit/1 qr psk")


_INSECURE_TEXT = (
    "method 'clear' sends the key as is, so it needs a link already encrypted by BLE "
    "LE Secure Connections, and this one is not; --allow-insecure forces it (then anyone "
    "listening gets the key)"
)
assert len(_INSECURE_TEXT) <= 200  # it travels whole in an Abort

#: the methods whose identity handshake the host opens (Noise_XXpsk0, host as initiator)
_HOST_FIRST = frozenset({Method.PIN, Method.COMPARE, Method.CLEAR})

_WRONG_SECRET = {
    Method.PIN: "wrong PIN: the PINs on the two devices differ",
    Method.COMPARE: "the identity handshake failed: the session key differs (a man in the middle?)",
    Method.CLEAR: "the identity handshake failed: the key was changed on the way",
}


# --------------------------------------------------------------------------------------------
# The host
# --------------------------------------------------------------------------------------------


class HostPairing(_LazyPrekeys, Machine):
    """The host side (responder): checks the guest's proposal and runs the method."""

    TABLE: ClassVar[dict[tuple[str, type], str]] = {
        (S_OFFER, Offer): "_on_offer",
        (S_OFFER, ResumeMessage): "_on_resume_init",
        (S_NOISE, NoiseMessage): "_on_noise",
        (S_REVEAL, Reveal): "_on_reveal",
    }
    ANSWERS: ClassVar[dict[str, str]] = {S_ASK: "_on_answer"}

    def __init__(
        self,
        config: PairingConfig,
        me: LocalIdentity,
        state: HostState,
        *,
        now: float,
        link_encrypted: bool = False,
        link_mitm: bool = False,
        wall_now: float = 0.0,
        context: bytes = b"",
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(initial_state=S_OFFER)
        self.config = config
        self.me = me
        self.host = state
        self._rng = rng
        self._wall_now = wall_now
        self._link_encrypted = link_encrypted
        self._link_mitm = link_encrypted and link_mitm
        self._context = _check_context(context)
        self._caps = config.caps | (Caps.ENCRYPTED_LINK if link_encrypted else Caps.NONE)
        self.method: Method | None = None
        self.session: Session | None = None
        self._pin_attempt: float | None = None  #: when the PIN attempt under way started
        self._expect_by(now + config.step_timeout, "the guest sent nothing")

    def _expect(self, now: float, state: str) -> None:
        self.state = state
        self._expect_by(now + self.config.step_timeout, "the guest did not answer in time")

    # -- the offer ------------------------------------------------------------------------

    def _on_offer(self, msg: Offer, now: float) -> None:
        proposed = msg.hello.method
        caps = self._caps
        if proposed is Method.CLEAR and not self._link_encrypted:
            if not self.config.allow_insecure:
                raise InsecureLinkError(_INSECURE_TEXT)
            caps |= Caps.ENCRYPTED_LINK
            self._emit(InsecureWarning("pairing with 'clear' over a link that is not encrypted"))
        knows = proposed is Method.KK and msg.guest_id is not None
        choose(
            Caps(msg.hello.caps), methods_from_mask(msg.hello.methods), Caps(caps),
            self.config.methods, proposed=proposed, knows_peer=knows,
        )
        self.method = proposed
        hello = _announce(self.config, self.me.name, proposed, Caps(caps), self._rng)
        self._offer = msg
        self._hello = hello
        self._th = _th(msg.hello, hello, self._context)
        handler = {
            Method.PIN: self._offer_pin,
            Method.QR: self._offer_qr,
            Method.KK: self._offer_kk,
            Method.COMPARE: self._offer_compare,
            Method.CLEAR: self._offer_clear,
        }.get(proposed)
        if handler is None:
            raise UnsupportedError(f"method '{proposed.label}' is not available on this host")
        handler(msg, hello, now)

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
        # guesses run in parallel (several guests at once) are held to the lockout too.
        self.host.pin_failed(now)
        self._pin_attempt = now
        cpace = CPace(
            "responder", pin.encode(), ci=b"pairkit/1 pin",
            ad_self=wire.encode_struct(hello), rng=self._rng,
        )
        cpace.receive(msg.cpace, wire.encode_struct(msg.hello))
        noise = self._noise_initiator(cpace.isk[:32])
        self._send(Accept(hello=hello, cpace=cpace.message(), noise=noise))
        self._expect(now, S_NOISE)

    def _noise_initiator(self, psk: bytes) -> bytes:
        """The host's first message of the identity handshake (see GuestPairing)."""
        self._hs = HandshakeState(
            PIN_NOISE, True, prologue=self._th, s=self.me.static_private,
            psks=[psk], rng=self._rng,
        )
        return self._hs.write_message(b"")

    def _offer_qr(self, msg: Offer, hello: Announce, now: float) -> None:
        if msg.qr_id is None or msg.noise is None:
            raise DecodeError("the guest's Offer lacks the QR code id or its Noise message")
        code = self.host.take_qr(msg.qr_id, self._wall_now)
        if not same(code.host_static, self.me.static_public):
            raise AuthenticationError("this QR code belongs to another host")
        self._hs = HandshakeState(
            QR_NOISE, False, prologue=_hello_hash(msg.hello, self._context),
            s=self.me.static_private, psks=[_qr_psk(code)], rng=self._rng,
        )
        self._noise_1rtt(msg, hello, authenticated=True)

    def _offer_kk(self, msg: Offer, hello: Announce, now: float) -> None:
        if msg.guest_id is None or msg.noise is None:
            raise DecodeError("the guest's Offer lacks its id or its Noise message")
        known = self.host.known_peer(msg.guest_id)
        if known is None:
            raise NotFoundError("this host does not know the guest; pair with a PIN or QR code")
        self._known = known
        self._hs = HandshakeState(
            KK_NOISE, False, prologue=_hello_hash(msg.hello, self._context),
            s=self.me.static_private, rs=known.static_public, rng=self._rng,
        )
        # KK renews prekeys but never upgrades trust (docs/security.md, rule 5).
        self._noise_1rtt(msg, hello, authenticated=known.authenticated)

    def _noise_1rtt(self, msg: Offer, hello: Announce, *, authenticated: bool) -> None:
        assert msg.noise is not None
        payload = _read_payload(self._hs.read_message(msg.noise))
        guest = self._check_noise_identity(payload.identity, authenticated)
        if self.method is Method.KK and guest.device_id != self._known.device_id:
            raise AuthenticationError("the guest is not the known peer it claims to be")
        ident = _identity(self.me, self._prekeys)
        noise = self._hs.write_message(
            _payload_bytes(ident, _hello_hash(hello, self._context))
        )
        self._send(Accept(hello=hello, noise=noise))
        i2r, r2i, fp = _noise_keys(self._hs)
        self._done(guest, payload.identity.prekeys, r2i, i2r, fp)

    def _check_noise_identity(self, ident: Identity, authenticated: bool) -> PeerInfo:
        rs = self._hs.remote_static
        if rs is None or not same(rs, ident.static):
            raise AuthenticationError("the guest's identity does not match its handshake key")
        return _peer_from_identity(ident, authenticated=authenticated)

    def _on_noise(self, msg: NoiseMessage, now: float) -> None:
        assert self.method is not None
        try:
            payload = _read_payload(self._hs.read_message(msg.noise))
        except AuthenticationError:
            raise AuthenticationError(_WRONG_SECRET[self.method]) from None
        authenticated = self._link_mitm if self.method is Method.CLEAR else True
        guest = self._check_noise_identity(payload.identity, authenticated)
        ident = _identity(self.me, self._prekeys)
        self._send(NoiseMessage(self._hs.write_message(_payload_bytes(ident))))
        i2r, r2i, fp = _noise_keys(self._hs)
        if self._pin_attempt is not None:
            self.host.pin_succeeded(self._pin_attempt)
        self._pin_attempt = None
        self._done(guest, payload.identity.prekeys, i2r, r2i, fp)

    def _done(
        self, peer: PeerInfo, their: tuple[bytes, ...], send: bytes, recv: bytes, fp: str
    ) -> None:
        assert self.method is not None
        self.session = Session(
            method=self.method, initiator=False, peer=peer, send_key=send, recv_key=recv,
            fingerprint=fp, new_our_prekeys=self._prekeys, new_their_prekeys=their,
            replace_prekeys=True,
        )
        self._finish()

    # -- compare --------------------------------------------------------------------------

    def _offer_compare(self, msg: Offer, hello: Announce, now: float) -> None:
        if msg.pk is None:
            raise DecodeError("the guest's Offer lacks its public key")
        try:
            guest_key = X25519PublicKey.from_public_bytes(msg.pk)
        except ValueError:
            raise DecodeError("the guest's public key is malformed") from None
        self._sk = self._rng(32)
        try:
            sealed = HPKE_SUITE.encrypt(self._sk, guest_key, info=b"pairkit/1 compare" + self._th)
        except ValueError:  # a low-order key: X25519 gives the all-zero secret (RFC 7748 §6.1)
            raise AuthenticationError("the guest's public key is not acceptable") from None
        self._enc = sealed[:32]
        self._nh = self._rng(16)
        commit = mac(self._nh, b"pairkit/1 commit", msg.pk, self._enc, self._th)
        self._send(Accept(hello=hello, sealed=sealed, commit=commit))
        self._expect(now, S_REVEAL)

    def _on_reveal(self, msg: Reveal, now: float) -> None:
        assert self._offer.pk is not None
        self._send(Reveal(self._nh))
        code = _code(self._th, self._offer.pk, self._enc, msg.nonce, self._nh)
        self.state = S_ASK
        self._expect_by(None)
        self._emit(ConfirmCode(code=code, peer_name=self._offer.hello.name))

    def _on_answer(self, question: Question, value: Any, now: float) -> None:
        if value is not True:
            raise RefusedError("the codes were not confirmed; pairing cancelled")
        assert self.method is not None
        self._send(NoiseMessage(self._noise_initiator(_identity_psk(self._sk, self._th,
                                                                     self.method))))
        # The guest's person may still be looking at the code.
        self.state = S_NOISE
        self._expect_by(
            now + max(self.config.step_timeout, 120.0),
            "the guest's owner did not confirm the code in time",
        )

    # -- clear ----------------------------------------------------------------------------

    def _offer_clear(self, msg: Offer, hello: Announce, now: float) -> None:
        self._sk = self._rng(32)
        noise = self._noise_initiator(_identity_psk(self._sk, self._th, Method.CLEAR))
        self._send(Accept(hello=hello, key=self._sk, noise=noise))
        self._expect(now, S_NOISE)

    # -- resume ---------------------------------------------------------------------------

    def _on_resume_init(self, msg: ResumeMessage, now: float) -> None:
        h = msg.header
        if h.kind is not ResumeKind.INIT or h.seq != 0 or h.src_key is None:
            raise ProtocolError("a resume must start with an INIT carrying the guest's key")
        if h.dst_id != self.me.device_id:
            raise NotFoundError("this resume is meant for another device")
        if not same(digest(h.src_key), h.src_key_id):
            raise AuthenticationError("the guest's key does not match its key id")
        known = self.host.known_peer(h.src_id)
        prekey = None
        if known is not None:
            prekey = next((p for p in known.our_prekeys if p.digest == h.dst_key_id), None)
        reply = ResumeHeader(
            src_id=self.me.device_id, src_key_id=h.dst_key_id, dst_id=h.src_id,
            dst_key_id=h.src_key_id, seq=1, kind=ResumeKind.FAIL,
        )
        # The prekey is consumed (deleted durably) before anything is answered with it, so
        # a recorded INIT replayed later finds it gone (docs/security.md, rule 4).
        if known is None or prekey is None or not self.host.consume_prekey(
            known.device_id, prekey.digest
        ):
            # Stay in S_OFFER: the guest falls back to Noise KK on the same link.
            self._send(ResumeMessage(header=reply, reason="ephemeral key mismatch"))
            self._expect_by(now + self.config.step_timeout, "the guest did not answer in time")
            return
        e_pub = X25519PrivateKey.from_private_bytes(prekey.private).public_key().public_bytes_raw()
        # The host's own fresh value: without it a replayed INIT would give the same keys.
        fresh_private, fresh = x25519_keypair(self._rng)
        th = _resume_th(h, e_pub, fresh, self._context)
        ikm = (
            x25519(prekey.private, known.static_public)
            + x25519(self.me.static_private, h.src_key)
            + x25519(prekey.private, h.src_key)
            + x25519(fresh_private, h.src_key)
        )
        sk = hkdf(ikm, salt=th, info=b"pairkit/1 resume")
        g2h, h2g, kc = _keys_from_sk(sk, th)
        self.method = Method.RESUME
        replacement = _new_prekeys(1, self._rng)
        sealed = seal(
            kc, 1, wire.encode_struct(_Prekeys(tuple(p.digest for p in replacement))), th
        )
        self._send(
            ResumeMessage(
                header=dataclasses.replace(reply, kind=ResumeKind.OKAY, src_key=e_pub),
                verifier=mac(kc, b"host", th),
                sealed=sealed,
                fresh=fresh,
            )
        )
        # Two messages: the guest's first record on the secure link (READY) confirms its keys.
        self.session = Session(
            method=Method.RESUME, initiator=False,
            peer=PeerInfo(
                known.device_id, known.name, known.static_public, known.signing_public,
                known.authenticated,
            ),
            send_key=h2g, recv_key=g2h, fingerprint=_fingerprint(sk, th),
            new_our_prekeys=replacement, replace_prekeys=False, consumed_ours=prekey.digest,
        )
        self._finish()
