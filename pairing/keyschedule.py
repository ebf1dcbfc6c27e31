"""Every label and key derivation of pairkit/1 in one place (docs/protocol.md §2-§9).

The pairing methods (:mod:`pairing.methods`), the identity handshake that follows ``compare``
and ``clear``, ``resume``, ``ttp``, the cloud step (:mod:`pairing.cloud`), QR codes and the
transcript the runtime's message pipe keeps all derive their keys here, so the whole key
schedule can be read (and audited against docs/protocol.md) in one file.  The byte strings are
part of the protocol: changing one changes every key (tests/test_pairkit_vectors.py).

HKDF is HKDF-SHA256 (RFC 5869) and MAC is HMAC-SHA256 (:mod:`pairing.crypto`).
"""

from __future__ import annotations

from . import wire
from .crypto import hkdf, mac
from .errors import ProtocolError
from .noise import HandshakeState

# -- labels (docs/protocol.md) ------------------------------------------------------------------

#: §2 the negotiation transcript ``th`` over both announcements
NEGOTIATION = b"pairkit/1 negotiation"
#: §2 one announcement's hash (prologue of the 1-RTT Noise methods)
HELLO = b"pairkit/1 hello"
#: §2 the runtime's per-direction message transcript (pairkit.driver.MessagePipe)
TRANSCRIPT_DIRECTION = b"pairkit/1 transcript direction"
#: §2 the two directions' hashes combined
TRANSCRIPT = b"pairkit/1 transcript"
#: §3 CPace channel identifier of ``pin``
PIN_CI = b"pairkit/1 pin"
#: §4 the PSK of ``qr`` from the code's one-time secret
QR_PSK = b"pairkit/1 qr psk"
#: §4 the id of a QR code
QR_ID = b"pairkit/1 qr id"
#: §5 HPKE ``info`` prefix of ``compare``
COMPARE_INFO = b"pairkit/1 compare"
#: §5 the host's commitment in ``compare``
COMMIT = b"pairkit/1 commit"
#: §5 the 6-digit comparison code
CODE = b"pairkit/1 code"
#: §5, §6 the identity handshake PSK (followed by the method's label)
IDENTITY_PSK = b"pairkit/1 identity psk "
#: §8 ``resume``: the transcript, the session key, the directional and confirmation keys
RESUME_TH = b"pairkit/1 resume th"
RESUME = b"pairkit/1 resume"
KEYS = b"pairkit/1 keys"
#: §8 the host's resume verifier (MAC under the confirmation key)
RESUME_VERIFIER = b"host"
#: the public session fingerprint both sides print
FINGERPRINT = b"pairkit/1 session fingerprint"
#: §9 the cloud step: the hint, the two proofs ("host"/"guest" follows) and the auth key
CLOUD_HINT = b"pairkit/1 cloud hint"
CLOUD_PROOF = b"pairkit/1 cloud "
CLOUD_AUTH = b"pairkit/1 cloud auth"
#: HPKE info of a returning device's sealed id in its JoinRequest (docs/protocol.md §10)
JOIN_ID = b"pairkit/1 join id"
#: §10 the key that seals a host's hello response to a member: ``M(CLOUD_REPLY || n_G || n_H)``
CLOUD_REPLY = b"pairkit/1 cloud reply"
#: §7 ``ttp``: the client's authentication, the context, the channel keys and the session
TTP_AUTH = b"pairkit/1 ttp auth"
TTP_CONTEXT = b"pairkit/1 ttp context"
TTP_CHANNEL = b"pairkit/1 ttp channel"
TTP_SESSION = b"pairkit/1 ttp session"
#: the signed membership of the service (pairing.service)
MEMBERSHIP = b"pairkit/1 membership"

#: CPNS (pairing.cpns, its module docstring): SK_PNE, hash_PNE, hash_server, the key-encryption
#: key, a wrapped link key's associated data, the pre-assigned PAN key and the link session
CPNS_SK = b"pairkit/1 cpns sk"
CPNS_HASH_PNE = b"pairkit/1 cpns hash_pne"
CPNS_HASH_SERVER = b"pairkit/1 cpns hash_server"
CPNS_KEK = b"pairkit/1 cpns kek"
CPNS_KEY = b"pairkit/1 cpns key"
CPNS_PREASSIGNED = b"pairkit/1 cpns preassigned"
CPNS_LINK = b"pairkit/1 cpns link"
CPNS_PIN_LINK = b"pairkit/1 cpns pin link"
CPNS_PIN_CI = b"pairkit/1 cpns pin"

#: docs/hello.md: the tag key of a cloud (from the cloud secret), the tag's MAC under it (the
#: same bytes as HELLO, keyed: the two never meet), and the private hello's body padding
HELLO_TAG = b"pairkit/1 hello tag"
HELLO_TAG_MAC = b"pairkit/1 hello"
HELLO_BODY = b"pairkit/1 hello body"
#: pairing.groups: an envelope's HPKE info and signed statement (CBOR texts) and a group
#: broadcast's associated data
GROUP_KEY = "pairkit/1 group key"
GROUP_ENVELOPE = "pairkit/1 group envelope"
GROUP_ADVERT = b"pairkit/1 group advert"
#: pairing.groups: a member's signed receipt for one envelope (CBOR text)
GROUP_RECEIPT = "pairkit/1 group receipt"
#: pairing.groups: a controller's command for its group agent (CBOR text)
GROUP_AGENT = "pairkit/1 group agent command"
#: §11 the READY record's plaintext prefix
READY = b"\x00pairkit/1 ready"

# -- the negotiation ------------------------------------------------------------------------------


def negotiation_hash(
    offer_hello: wire.Message, accept_hello: wire.Message, context: bytes = b""
) -> bytes:
    """``th``: both announcements and ``context`` (what the two sides exchanged on the link
    before pairing, e.g. the cloud step; docs/protocol.md §2)."""
    return hkdf(
        wire.encode_struct(offer_hello) + wire.encode_struct(accept_hello),
        salt=context,
        info=NEGOTIATION,
    )


def hello_hash(hello: wire.Message, context: bytes = b"") -> bytes:
    """One announcement's hash, salted with the pre-pairing context (docs/protocol.md §2)."""
    return hkdf(wire.encode_struct(hello), salt=context, info=HELLO)


# -- session keys ---------------------------------------------------------------------------------


def resume_keys(sk: bytes, th: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(guest->host key, host->guest key, verifier key, sealing key) of a resume (docs/protocol.md
    §8): one key per use, so that the verifier's MAC and the sealed prekeys' AEAD never share a
    key.  (HKDF-Expand's output does not depend on its length: the first three keys are what a
    96-byte expansion gave before the sealing key was split off.)"""
    okm = hkdf(sk, salt=th, info=KEYS, length=128)
    return okm[:32], okm[32:64], okm[64:96], okm[96:]


def fingerprint(secret: bytes, salt: bytes) -> str:
    """The session fingerprint both sides print: an exporter value, not the key."""
    fp = hkdf(secret, salt=salt, info=FINGERPRINT, length=8).hex()
    return f"{fp[:4]}-{fp[4:8]}-{fp[8:12]}-{fp[12:]}"


def noise_keys(hs: HandshakeState) -> tuple[bytes, bytes, str]:
    """(initiator->responder key, responder->initiator key, fingerprint) after a handshake.

    The keys are the Noise Split() outputs (Noise rev 34 §5.2); the fingerprint is an exporter
    of the handshake hash (§11.2 channel binding).
    """
    c1, c2 = hs.split()
    if c1.key is None or c2.key is None:
        raise ProtocolError("the Noise handshake produced no transport keys")
    return c1.key, c2.key, fingerprint(hs.handshake_hash, b"noise")


# -- per method -----------------------------------------------------------------------------------


def identity_psk(sk: bytes, th: bytes, method_label: str) -> bytes:
    """The PSK of the identity handshake that follows ``compare`` and ``clear``: their
    session key, bound to the transcript and the method (docs/protocol.md §5, §6)."""
    return hkdf(sk, salt=th, info=IDENTITY_PSK + method_label.encode())


def qr_psk(secret: bytes, host_static: bytes) -> bytes:
    """The PSK of ``qr`` (docs/protocol.md §4)."""
    return hkdf(secret, salt=host_static, info=QR_PSK)


def compare_info(th: bytes) -> bytes:
    """HPKE ``info`` of ``compare`` (docs/protocol.md §5)."""
    return COMPARE_INFO + th


def compare_commit(nonce: bytes, pk: bytes, enc: bytes, th: bytes) -> bytes:
    """The host's commitment to its key share and nonce (docs/protocol.md §5)."""
    return mac(nonce, COMMIT, pk, enc, th)


def compare_code(th: bytes, pk: bytes, enc: bytes, ng: bytes, nh: bytes) -> str:
    """The 6 digits both people compare (docs/protocol.md §5)."""
    value = int.from_bytes(mac(th, CODE, pk, enc, ng, nh)[:8], "big")
    return f"{value % 1_000_000:06d}"


def resume_th(init: wire.Message, prekey: bytes, fresh: bytes, context: bytes = b"") -> bytes:
    """The resume transcript: the guest's whole INIT, the host's prekey and fresh key, and the
    pre-pairing context (docs/protocol.md §8)."""
    return hkdf(wire.encode_struct(init) + prekey + fresh, salt=context, info=RESUME_TH)


def resume_sk(ikm: bytes, th: bytes) -> bytes:
    """The resume session key from its four DH values (docs/protocol.md §8)."""
    return hkdf(ikm, salt=th, info=RESUME)


def resume_verifier(kv: bytes, th: bytes) -> bytes:
    """The host's proof that it derived the same keys (docs/protocol.md §8)."""
    return mac(kv, RESUME_VERIFIER, th)
