"""``resume`` (2 messages) and its fallback ``kk`` (docs/protocol.md §8).

The Mozilla Sync style key exchange for known peers: during any pairing each side gave the
other digests of fresh ephemeral keys (prekeys).  The guest nominates one of the host's digests
and sends its own ephemeral key E_G (INIT), naming no device: the host finds the guest as the
one peer it gave that digest to (:attr:`HostState.peer_by_prekey`).  The host *consumes* that
prekey P_H (deletes it durably, through :meth:`HostState.consume_prekey`) before answering,
draws a fresh key F_H of its own, and answers ``okay`` with P_H, F_H, a verifier and one new
prekey digest sealed under the confirmation key, or ``fail`` ("ephemeral key mismatch").
SK = HKDF(DH(P_H, S_G) || DH(S_H, E_G) || DH(P_H, E_G) || DH(F_H, E_G)), salted with the
transcript of INIT, P_H, F_H and the pre-pairing context.  F_H makes every answer fresh: a
replayed INIT finds its prekey gone (``fail``), and even a host that lost its memory derives new
keys, so no AEAD key seals twice under one nonce (rule 4).  The guest's first record on the
secure link (READY) confirms its keys.  When the nomination fails or no digest is left, the
guest falls back to ``kk``: ``Noise_IK_25519_ChaChaPoly_SHA256`` (the guest knows the host's
static key; its own travels encrypted, and the host finds the guest by the device id of the key
it decrypted, a known peer's or refused), which also renews the prekeys.  Neither ever changes
whether the peer counts as authenticated.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import keyschedule, wire
from ..crypto import digest, same, seal, unseal, x25519, x25519_loaded
from ..errors import AuthenticationError, DecodeError, NotFoundError, ProtocolError
from ..messages import Accept, Announce, Offer, ResumeHeader, ResumeKind, ResumeMessage
from ..negotiation import Method
from ..noise import HandshakeState
from .common import (
    KK_NOISE,
    S_KK,
    PeerInfo,
    Session,
    _hello_hash,
    _Prekeys,
    _read_kk_payload,
    _take_prekeys,
)
from .handshake import GuestSide, HostSide


def _resume_th(init: ResumeHeader, prekey: bytes, fresh: bytes, context: bytes = b"") -> bytes:
    """The resume transcript (:func:`pairing.keyschedule.resume_th`)."""
    return keyschedule.resume_th(init, prekey, fresh, context)


class ResumeGuest(GuestSide):
    _eph: X25519PrivateKey
    _nominated: bytes
    _init: ResumeHeader
    _stale: bytes

    # -- kk -------------------------------------------------------------------------------

    def _kk_offer(self, hello: Announce) -> dict[str, Any]:
        assert self._peer is not None
        # Noise IK: the guest's static key goes encrypted under es, its id nowhere in the clear
        # (atk19p, finding 3); the host finds the guest by the key it decrypts.
        noise = self._noise_1rtt_offer(hello, KK_NOISE, self._peer.static_public, [])
        return {"noise": noise}

    def _kk_accept(self, msg: Accept, now: float) -> None:
        if msg.noise is None:
            raise DecodeError("the host's Accept lacks its Noise message")
        self._noise_1rtt_accept(msg.noise, msg.hello)

    # -- resume -----------------------------------------------------------------------------

    def _send_resume_init(self) -> None:
        assert self._peer is not None
        self._nominated = self._peer.their_prekeys[0]
        self._eph, public = x25519_loaded(self._rng)
        # No device id: the host finds this device by the digest alone (§8), so a listener
        # on an unencrypted link learns neither device (atk19p, finding 3).
        self._init = ResumeHeader(
            src_key_id=digest(public), dst_key_id=self._nominated, seq=0,
            kind=ResumeKind.INIT, src_key=public,
        )
        self._send(ResumeMessage(header=self._init))

    def _on_resume(self, msg: ResumeMessage, now: float) -> None:
        assert self._peer is not None
        h = msg.header
        if (
            h.dst_key_id != self._init.src_key_id
            or h.src_key_id != self._nominated
            or h.seq != 1
        ):
            raise ProtocolError("the host's resume answer has the wrong header")
        if h.kind is ResumeKind.FAIL:
            # The nominated prekey is stale or used: forget it and fall back to kk (Noise IK).
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
            x25519(self.me.static_key(), h.src_key)
            + x25519(self._eph, self._peer.static_public)
            + x25519(self._eph, h.src_key)
            + x25519(self._eph, msg.fresh)
        )
        sk = keyschedule.resume_sk(ikm, th)
        g2h, h2g, kv, ks = keyschedule.resume_keys(sk, th)
        if not same(msg.verifier, keyschedule.resume_verifier(kv, th)):
            raise AuthenticationError("the host's resume verifier is wrong")
        new: tuple[bytes, ...] = ()
        if msg.sealed is not None:
            new = wire.decode_struct(
                _Prekeys, unseal(ks, 1, msg.sealed, th, "the host's new prekeys")
            ).digests
        p = self._peer
        self.session = Session(
            method=Method.RESUME, initiator=True,
            peer=PeerInfo(p.device_id, p.name, p.static_public, p.signing_public, p.authenticated),
            send_key=g2h, recv_key=h2g, fingerprint=keyschedule.fingerprint(sk, th),
            new_their_prekeys=new, replace_prekeys=False, consumed_theirs=self._nominated,
        )
        self._finish()

    @property
    def stale_prekey(self) -> bytes | None:
        """The prekey digest the host refused (to delete from the store), if any."""
        return getattr(self, "_stale", None)

    @property
    def nominated(self) -> bytes | None:
        """The prekey digest this guest's INIT nominated, once the INIT is sent (None before,
        and for every other method).  It is spent from then on, whatever ends the attempt: a
        listener would link two INITs that nominate one digest (docs/security.md, rule 4)."""
        return getattr(self, "_nominated", None)


class ResumeHost(HostSide):
    # -- kk -------------------------------------------------------------------------------

    def _offer_kk(self, msg: Offer, hello: Announce, now: float) -> None:
        if msg.noise is None:
            raise DecodeError("the guest's Offer lacks its Noise message")
        self._hs = HandshakeState(
            KK_NOISE, False, prologue=_hello_hash(msg.hello, self._context),
            s=self.me.noise_static(), rng=self._rng,
        )
        # Noise IK message 1 (-> e, es, s, ss): the guest's static key, decrypted under es, and
        # its payload, authenticated by ss as KK's is.  Who it is follows from that key: a
        # known peer's (its device id, then the whole key, compared), or refused as unknown
        # before anything is answered, stored or asked.
        payload = _read_kk_payload(self._hs.read_message(msg.noise), hosts=False)
        rs = self._hs.remote_static
        known = self.host.known_peer(digest(rs)) if rs is not None else None
        if known is None or rs is None or not same(known.static_public, rs):
            raise NotFoundError("this host does not know the guest; pair with a PIN or QR code")
        self._known = known
        # kk renews prekeys but never upgrades trust (docs/security.md, rule 5).
        self._noise_1rtt(msg, hello, authenticated=known.authenticated, payload=payload)

    # -- resume ---------------------------------------------------------------------------

    def _on_resume_init(self, msg: ResumeMessage, now: float) -> None:
        h = msg.header
        if h.kind is not ResumeKind.INIT or h.seq != 0 or h.src_key is None:
            raise ProtocolError("a resume must start with an INIT carrying the guest's key")
        if not same(digest(h.src_key), h.src_key_id):
            raise AuthenticationError("the guest's key does not match its key id")
        # The guest is the one peer we gave the nominated prekey to (§8): the INIT names no
        # device.  Its identity is proven by DH(p_H, S_G) in SK and then by its READY; a
        # resume meant for another host finds no prekey here and is answered FAIL.
        known = self.host.peer_by_prekey(h.dst_key_id)
        prekey = None
        if known is not None:
            prekey = next((p for p in known.our_prekeys if p.digest == h.dst_key_id), None)
        # The prekey is consumed (deleted durably) before anything is answered with it, so
        # a recorded INIT replayed later finds it gone (docs/security.md, rule 4).
        if known is None or prekey is None or not self.host.consume_prekey(
            known.device_id, prekey.digest
        ):
            # The guest falls back to kk (Noise IK) on the same link: its Offer, and only that, may
            # follow (S_KK: one FAIL per link).
            reply = ResumeHeader(
                src_key_id=h.dst_key_id, dst_key_id=h.src_key_id, seq=1, kind=ResumeKind.FAIL,
            )
            self._send(ResumeMessage(header=reply, reason="ephemeral key mismatch"))
            self.state = S_KK
            self._expect_by(now + self.config.step_timeout, "the guest did not answer in time")
            return
        prekey_key = X25519PrivateKey.from_private_bytes(prekey.private)
        e_pub = prekey_key.public_key().public_bytes_raw()
        # The host's own fresh value: without it a replayed INIT would give the same keys.
        fresh_private, fresh = x25519_loaded(self._rng)
        th = _resume_th(h, e_pub, fresh, self._context)
        ikm = (
            x25519(prekey_key, known.static_public)
            + x25519(self.me.static_key(), h.src_key)
            + x25519(prekey_key, h.src_key)
            + x25519(fresh_private, h.src_key)
        )
        sk = keyschedule.resume_sk(ikm, th)
        g2h, h2g, kv, ks = keyschedule.resume_keys(sk, th)
        self.method = Method.RESUME
        replacement = _take_prekeys(1, self._rng, self._prekey_source)
        sealed = seal(
            ks, 1, wire.encode_struct(_Prekeys(tuple([p.digest for p in replacement]))), th
        )
        self._send(
            ResumeMessage(
                header=ResumeHeader(
                    src_key_id=h.dst_key_id, dst_key_id=h.src_key_id, seq=1,
                    kind=ResumeKind.OKAY, src_key=e_pub,
                ),
                verifier=keyschedule.resume_verifier(kv, th),
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
            send_key=h2g, recv_key=g2h, fingerprint=keyschedule.fingerprint(sk, th),
            new_our_prekeys=replacement, replace_prekeys=False, consumed_ours=prekey.digest,
        )
        self._finish()
