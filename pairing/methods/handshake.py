"""What the methods share once negotiated: the identity handshake and the 1-RTT Noise flights.

``pin``, ``compare`` and ``clear`` end in the same *identity handshake*:
``Noise_XXpsk0_25519_ChaChaPoly_SHA256`` run host-first with ``th`` as prologue and the method's
secret as PSK.  Its ``es`` and ``se`` tokens make each side prove the static key it announces, so
no identity is taken on its word (docs/security.md, rule 1; Noise rev 34 §7.4).  ``qr`` and ``kk``
are one round trip of Noise guest-first, whose payloads carry the identities.

:class:`GuestSide` and :class:`HostSide` hold these pieces and the state every method reads; the
method modules extend them and :mod:`.base` puts them together behind the negotiation.
"""

from __future__ import annotations

from ..crypto import Rng, same
from ..errors import AuthenticationError, ProtocolError
from ..machine import Machine
from ..messages import Accept, Announce, Identity, NoiseMessage, Offer
from ..negotiation import Caps, Method
from ..noise import HandshakeState
from ..qr import QrCode
from .common import (
    _HOST_FIRST,
    _WRONG_SECRET,
    PIN_NOISE,
    S_NOISE,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    PeerInfo,
    Session,
    _hello_hash,
    _identity,
    _kk_payload_bytes,
    _LazyPrekeys,
    _noise_keys,
    _Payload,
    _payload_bytes,
    _peer_from_identity,
    _read_kk_payload,
    _read_payload,
)
from .common import (
    _th as _negotiation_th,
)

#: the members as module names, for the checks every pairing runs (see .base)
_CLEAR, _RESUME, _KK = Method.CLEAR, Method.RESUME, Method.KK


class _Transcript:
    """``th``, the negotiation transcript (:func:`pairing.keyschedule.negotiation_hash`),
    worked out when a method first asks for it: pin, compare and clear bind it; qr and kk bind
    the announcements through ``hello_hash`` instead and never need it (issue 13)."""

    _context: bytes
    #: (the guest's Announce, the host's Announce), set by the negotiation
    _th_hellos: tuple[Announce, Announce]
    _th_value: bytes | None = None

    @property
    def _th(self) -> bytes:
        th = self._th_value
        if th is None:
            th = self._th_value = _negotiation_th(*self._th_hellos, self._context)
        return th


class GuestSide(_LazyPrekeys, _Transcript, Machine):
    """The guest's state and the flights its methods share."""

    config: PairingConfig
    me: LocalIdentity
    method: Method
    session: Session | None
    _rng: Rng
    _pin: str | None
    _qr: QrCode | None
    _peer: KnownPeer | None
    _context: bytes
    _caps: Caps
    _link_mitm: bool
    _offer: Offer | None
    _hs: HandshakeState

    def _expect(self, now: float, state: str) -> None:
        self.state = state
        self._expect_by(now + self.config.step_timeout, "the host did not answer in time")

    def _send_offer(self, now: float) -> None:  # pragma: no cover - defined by the machine
        raise NotImplementedError

    # -- qr and kk: one round trip, guest first --------------------------------------------

    def _noise_1rtt_offer(
        self, hello: Announce, name: str, rs: bytes, psks: list[bytes]
    ) -> bytes:
        """The guest's Noise message in its Offer, its identity as payload."""
        self._hs = HandshakeState(
            name, True, prologue=_hello_hash(hello, self._context),
            s=self.me.noise_static(), rs=rs, psks=psks, rng=self._rng,
        )
        ident = _identity(self.me, self._prekeys)
        if self.method is _KK:  # no name, padded: kk's Offer is as long from every device
            return self._hs.write_message(_kk_payload_bytes(ident))
        return self._hs.write_message(_payload_bytes(ident))

    def _noise_1rtt_accept(self, noise: bytes, host_hello: Announce) -> None:
        plain = self._hs.read_message(noise)
        kk = self.method is _KK
        payload = _read_kk_payload(plain, hosts=True) if kk else _read_payload(plain)
        expected = _hello_hash(host_hello, self._context)
        if payload.hello_hash is None or not same(payload.hello_hash, expected):
            raise AuthenticationError("the host's announcement was changed on the way")
        self._finish_noise(payload.identity)

    # -- the identity handshake (pin, compare, clear) --------------------------------------

    def _noise_responder(self, psk: bytes, first: bytes, now: float) -> None:
        """The guest's half of the host-first identity handshake (``pin``, ``compare``,
        ``clear``): Noise_XXpsk0 keyed by the method's secret, prologue ``th``; both static
        keys are proven by ``es``/``se`` (Noise rev 34 §7.4), so no identity is taken on
        its word (docs/security.md, rule 1)."""
        self._noise_read_first(psk, first)
        self._noise_send_second()
        self._expect(now, S_NOISE)

    def _noise_read_first(self, psk: bytes, first: bytes) -> None:
        """Read the host's message 1 (``psk, e``, empty payload): it proves the host holds the
        method's secret, and nothing about who the host is (it carries no static key)."""
        self._hs = HandshakeState(
            PIN_NOISE, False, prologue=self._th, s=self.me.noise_static(),
            psks=[psk], rng=self._rng,
        )
        try:
            self._hs.read_message(first)
        except AuthenticationError:
            raise AuthenticationError(_WRONG_SECRET[self.method]) from None

    def _noise_send_second(self) -> None:
        """Send message 2: the guest's identity (``e, ee, s, es``)."""
        ident = _identity(self.me, self._prekeys)
        self._send(NoiseMessage(self._hs.write_message(_payload_bytes(ident))))

    def _on_noise(self, msg: NoiseMessage, now: float) -> None:
        payload = _read_payload(self._hs.read_message(msg.noise))
        self._finish_noise(payload.identity)

    def _authenticated(self) -> bool:
        """Whether a person or a key vouched for the host (docs/security.md, rule 5)."""
        if self.method in (_KK, _RESUME):
            assert self._peer is not None
            return self._peer.authenticated  # never upgraded by a resume
        if self.method is _CLEAR:
            return self._link_mitm
        return True

    def _finish_noise(self, ident: Identity) -> None:
        if not self._hs.complete:
            raise ProtocolError("the Noise handshake is not complete")
        rs = self._hs.remote_static
        if rs is None or not same(rs, ident.static):
            raise AuthenticationError("the host's identity does not match its handshake key")
        # kk proves the stored record, its name included, as resume does: its identity payload
        # carries no name (docs/protocol.md §8; docs/security.md, rule 6; atk15b, atk23 F1).
        known_name = None
        if self.method is _KK:
            assert self._peer is not None
            known_name = self._peer.name
        peer = _peer_from_identity(
            ident, authenticated=self._authenticated(), known_name=known_name
        )
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


class HostSide(_LazyPrekeys, _Transcript, Machine):
    """The host's state and the flights its methods share."""

    config: PairingConfig
    me: LocalIdentity
    host: HostState
    method: Method | None
    session: Session | None
    _rng: Rng
    _context: bytes
    _link_mitm: bool
    _offer: Offer
    _hs: HandshakeState
    _known: KnownPeer
    _pin_attempt: float | None

    def _expect(self, now: float, state: str) -> None:
        self.state = state
        self._expect_by(now + self.config.step_timeout, "the guest did not answer in time")

    # -- qr and kk: one round trip, guest first --------------------------------------------

    def _noise_1rtt(
        self, msg: Offer, hello: Announce, *, authenticated: bool, payload: _Payload | None = None
    ) -> None:
        """Read the guest's message (or take ``payload``, read already: kk), answer it."""
        assert msg.noise is not None
        if payload is None:
            payload = _read_payload(self._hs.read_message(msg.noise))
        kk = self.method is Method.KK
        # kk proves the stored record, its name included, as resume does: a known device
        # cannot pair under a name of its choosing and pass the join request's name check
        # with it, nor rename its record (docs/security.md, rule 6; attack review atk15b); its
        # identity payload carries no name (docs/protocol.md §8; atk23 F1).
        guest = self._check_noise_identity(
            payload.identity, authenticated, known_name=self._known.name if kk else None
        )
        if kk and guest.device_id != self._known.device_id:
            raise AuthenticationError("the guest is not the known peer it claims to be")
        ident = _identity(self.me, self._prekeys)
        write = _kk_payload_bytes if kk else _payload_bytes
        noise = self._hs.write_message(write(ident, _hello_hash(hello, self._context)))
        self._send(Accept(hello=hello, noise=noise))
        i2r, r2i, fp = _noise_keys(self._hs)
        self._done(guest, payload.identity.prekeys, r2i, i2r, fp)

    def _check_noise_identity(
        self, ident: Identity, authenticated: bool, known_name: str | None = None
    ) -> PeerInfo:
        rs = self._hs.remote_static
        if rs is None or not same(rs, ident.static):
            raise AuthenticationError("the guest's identity does not match its handshake key")
        return _peer_from_identity(ident, authenticated=authenticated, known_name=known_name)

    # -- the identity handshake (pin, compare, clear) --------------------------------------

    def _noise_initiator(self, psk: bytes) -> bytes:
        """The host's first message of the identity handshake (see GuestSide)."""
        self._hs = HandshakeState(
            PIN_NOISE, True, prologue=self._th, s=self.me.noise_static(),
            psks=[psk], rng=self._rng,
        )
        return self._hs.write_message(b"")

    def _on_noise(self, msg: NoiseMessage, now: float) -> None:
        assert self.method is not None
        try:
            payload = _read_payload(self._hs.read_message(msg.noise))
        except AuthenticationError:
            raise AuthenticationError(_WRONG_SECRET[self.method]) from None
        authenticated = self._link_mitm if self.method is _CLEAR else True
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
