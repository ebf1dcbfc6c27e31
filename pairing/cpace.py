"""CPace, suite CPACE-X25519-SHA512, as specified by draft-irtf-cfrg-cpace-21.

CPace is a balanced PAKE: two parties who share a low-entropy secret (here a short PIN, the
"password related string" PRS) derive a strong shared key, and an active attacker gets one
guess per run.  Section numbers below are those of draft-irtf-cfrg-cpace-21 (tag
``draft-irtf-cfrg-cpace-21`` = commit 8fb4056 of github.com/cfrg/draft-irtf-cfrg-cpace) as
numbered from its markdown source, where "Status of This Memo" is §1.

Two layers:

* **Pure functions** named as in the draft: :func:`prepend_len`, :func:`lv_cat`, :func:`o_cat`,
  :func:`transcript_ir`, :func:`transcript_oc`, :func:`generator_string`,
  :func:`calculate_generator` (with :func:`decode_u_coordinate` and
  :func:`map_to_curve_elligator2_curve25519`), :func:`sample_scalar`, :func:`scalar_mult`,
  :func:`scalar_mult_vfy`, :func:`derive_isk`, :func:`sid_output` and the key-confirmation
  helpers :func:`mac_key` and :func:`confirmation_tag`.
* **A sans-I/O two-party object**, :class:`CPace`, for the initiator-responder setting
  (``transcript_ir``, §6.3): it never touches a socket; the caller moves :meth:`CPace.message`
  to the peer and feeds the peer's message to :meth:`CPace.receive`.

How pairkit binds identities (§10.1.1).  In initiator-responder mode the draft asks that party
identities known to both sides at the start go into CI, with the roles tied to the identities
and the initiator's first.  pairkit builds CI with :func:`channel_identifier`::

    ci = channel_identifier(initiator_id, responder_id, b"pairkit-v1", method)

i.e. ``lv_cat(initiator_id, responder_id, b"pairkit-v1", method)``: length-prefixed, so no two
different tuples give the same CI, and CI never travels on the wire.  Each side's capabilities
go into its associated data (ADa for the initiator, ADb for the responder), which the
transcript authenticates, so a downgrade of the advertised capabilities changes ISK.

The draft defines no network encoding for (Y, AD) (an earlier ``network_encode`` was removed),
so :meth:`CPace.message` is the bare 32-byte public share and pairkit carries the AD next to it
in its own wire message; :meth:`CPace.receive` takes both.

Limitations: the Elligator 2 map uses Python integers, which are not constant-time (§10.10 asks
for a constant-time map); the map is written without secret-dependent branches, but bignum
timing still depends on the values.  So the map's two costly steps, the inversion (Python's
``pow(x, -1, p)``, a gcd whose running time depends on ``x``) and the square test, run on
*blinded* values: ``x * r`` and ``gx1 * r^2`` for a secret random ``r`` (derived from this
party's scalar, see :func:`map_to_curve_elligator2_curve25519`); the result is unchanged.  With
``r`` uniform in F_p* and independent of the PIN, ``x * r`` is uniform in F_p* whatever the PIN;
``gx1 * r^2`` is uniform among the squares or among the non-squares, so its distribution tells
at most whether ``gx1`` is a square (which candidate the map picks), and the two halves of the
field are alike in what a fixed-exponent ``pow``'s timing depends on (the values' sizes).  What
is left: the unblinded multiplications around them, whose bignum timing differs only for values
with leading zero digits (about 2^-30 per value with CPython's 30-bit digits).  Python cannot
wipe secrets from memory; a finished or failed :class:`CPace` only drops its references.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from enum import Enum
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import AuthenticationError, ConfigError, DecodeError, ProtocolError
from .framing import encode_leb128

__all__ = [
    "DSI",
    "FIELD_SIZE_BYTES",
    "IDENTITY",
    "ISK_SIZE",
    "S_IN_BYTES",
    "TAG_SIZE",
    "CPace",
    "CPaceState",
    "Role",
    "calculate_generator",
    "channel_identifier",
    "confirmation_tag",
    "decode_u_coordinate",
    "derive_isk",
    "encode_u_coordinate",
    "generator_string",
    "lexiographically_larger",
    "lv_cat",
    "mac_key",
    "map_to_curve_elligator2_curve25519",
    "o_cat",
    "prepend_len",
    "sample_scalar",
    "scalar_mult",
    "scalar_mult_vfy",
    "sid_output",
    "transcript_ir",
    "transcript_oc",
]

Role = Literal["initiator", "responder"]

#: G_X25519.DSI (§8.2).
DSI: Final = b"CPace255"
#: G_X25519.field_size_bytes (§8.2); also the size of a scalar and of a public share.
FIELD_SIZE_BYTES: Final = 32
FIELD_SIZE_BITS: Final = 255
#: G_X25519.I, the neutral element's encoding (§8.2).
IDENTITY: Final = bytes(FIELD_SIZE_BYTES)
#: H.s_in_bytes for SHA-512, the input block size used for the zero padding (§6.2, §8.1).
S_IN_BYTES: Final = 128
#: Size of ISK and sid_output: H.b_in_bytes for SHA-512 (§6.2).
ISK_SIZE: Final = 64
#: Size of a key-confirmation tag (HMAC-SHA-512).
TAG_SIZE: Final = 64

# Curve25519 (RFC 7748 §4.1) and the Elligator 2 constants of RFC 9380 §6.7.1 / §4 of the
# suite curve25519_XMD:SHA-512_ELL2_NU_: J = A = 486662, K = 1, Z = 2.
P: Final = 2**255 - 19
A: Final = 486662
Z: Final = 2

_ISK_LABEL: Final = DSI + b"_ISK"
_SID_OUTPUT_LABEL: Final = b"CPaceSidOutput"
_MAC_LABEL: Final = b"CPaceMac"


# --- string utilities (§6.3, Appendix A.1 and A.3) ------------------------------------------


def prepend_len(data: bytes) -> bytes:
    """``prepend_len``: the LEB128 encoding of ``len(data)`` followed by ``data`` (§6.3, A.1.1)."""
    return encode_leb128(len(data)) + bytes(data)


def lv_cat(*args: bytes) -> bytes:
    """``lv_cat``: each argument with its length prepended, concatenated (§6.3, A.1.3)."""
    return b"".join(prepend_len(arg) for arg in args)


def lexiographically_larger(bytes1: bytes, bytes2: bytes) -> bool:
    """True if ``bytes1 > bytes2`` in the draft's lexicographic order (A.3.1).

    (The draft spells it "lexiographically"; the name follows the draft.)  A proper prefix is
    smaller than the longer string, which is exactly Python's ordering of ``bytes``.
    """
    return bytes(bytes1) > bytes(bytes2)


def o_cat(bytes1: bytes, bytes2: bytes) -> bytes:
    """``o_cat``: ``b"oc"`` then the larger string then the other one (§6.3, A.3.2)."""
    if lexiographically_larger(bytes1, bytes2):
        return b"oc" + bytes1 + bytes2
    return b"oc" + bytes2 + bytes1


def transcript_ir(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """``transcript_ir``, the initiator-responder transcript (§6.3, A.3.4)."""
    return lv_cat(ya, ada) + lv_cat(yb, adb)


def transcript_oc(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """``transcript_oc``, the symmetric (ordered-concatenation) transcript (§6.3, A.3.6)."""
    return o_cat(lv_cat(ya, ada), lv_cat(yb, adb))


def channel_identifier(initiator_id: bytes, responder_id: bytes, *context: bytes) -> bytes:
    """The CI pairkit uses: ``lv_cat(initiator_id, responder_id, *context)`` (§10.1.1).

    The initiator's identity comes first and the responder's second, as the draft recommends,
    so the encoding ties each identity to its role; ``context`` carries further strings both
    sides know (pairkit: ``b"pairkit-v1"`` and the negotiated method).  With no context this
    is the CI of the draft's test vectors, ``lv_cat(b"A_initiator", b"B_responder")``.
    """
    return lv_cat(initiator_id, responder_id, *context)


# --- generator (§8.1, §8.2, Appendix A.2, A.4, A.5) -----------------------------------------


def generator_string(dsi: bytes, prs: bytes, ci: bytes, sid: bytes, s_in_bytes: int) -> bytes:
    """``generator_string(DSI, PRS, CI, sid, s_in_bytes)`` (§8.1, A.2).

    ``lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid)``, where the zero padding makes DSI and
    PRS fill the hash's first input block, so how long the PIN is does not show in how much is
    hashed.
    """
    len_zpad = max(0, s_in_bytes - 1 - len(prepend_len(prs)) - len(prepend_len(dsi)))
    return lv_cat(dsi, prs, bytes(len_zpad), ci, sid)


def decode_u_coordinate(u: bytes, bits: int = FIELD_SIZE_BITS) -> int:
    """RFC 7748 ``decodeUCoordinate`` (A.4): little-endian, the unused top bit cleared.

    The result is not reduced modulo p (RFC 7748 §5: non-canonical values are accepted and
    reduced by the field arithmetic that follows).
    """
    if len(u) != (bits + 7) // 8:
        raise DecodeError(f"a u-coordinate must be {(bits + 7) // 8} bytes, not {len(u)}")
    return int.from_bytes(u, "little") & ((1 << bits) - 1)


def encode_u_coordinate(u: int, bits: int = FIELD_SIZE_BITS) -> bytes:
    """RFC 7748 ``encodeUCoordinate`` (A.4) of a field element, reduced modulo p first."""
    return (u % P).to_bytes((bits + 7) // 8, "little")


def map_to_curve_elligator2_curve25519(u: int, blind: int = 1) -> int:
    """Elligator 2 for Curve25519 (RFC 9380 §6.7.1, A.5); returns the Montgomery u-coordinate.

    CPace keeps only the u-coordinate and does not clear the cofactor: X25519's clamped
    scalars are multiples of the cofactor 8 (§8.2, §10.8).  The two candidates are chosen by
    arithmetic, not by a branch on the (secret) square test.  The draft's A.5 form
    ``x = eps*v - (1-eps)*A/2`` agrees with RFC 9380's: ``eps`` is never 0 on Curve25519 since
    ``x^2 + A*x + 1`` has no root (A^2 - 4 is not a square), and ``1 + Z*u^2`` never vanishes
    since ``-1/2`` is not a square modulo p (p = 5 mod 8).

    ``blind`` (a non-zero field element, secret and random; 1 for none) does not change the
    result: ``inv0(tv) = blind * inv0(tv * blind)`` and ``gx1 * blind^2`` is a square exactly
    when ``gx1`` is, so the inversion (``pow(x, -1, p)``: an extended gcd, about 8 times
    faster than Fermat's ``pow(x, p - 2, p)`` but with a running time that depends on ``x``)
    and the Euler criterion see values that are uniform and independent of ``u``.
    """
    u %= P
    blind %= P
    if blind == 0:
        raise ConfigError("the map's blinding factor must not be 0 modulo p")
    tv = (1 + Z * u * u) % P
    # inv0(tv): never 0 here (see above), kept as in RFC 9380 for clarity.
    x1 = (-A * blind * pow(tv * blind % P, -1, P)) % P
    if x1 == 0:  # pragma: no cover - unreachable for Z = 2, step 2 of RFC 9380 §6.7.1
        x1 = (-A) % P
    gx1 = (x1 * x1 * x1 + A * x1 * x1 + x1) % P
    x2 = (-x1 - A) % P
    # Euler's criterion: 1 for a non-zero square, 0 for 0, p-1 for a non-square.
    legendre = pow(gx1 * blind * blind % P, (P - 1) // 2, P)
    is_square = 1 - (legendre == P - 1)
    return (x2 + is_square * (x1 - x2)) % P


def _hash(data: bytes, length: int = ISK_SIZE) -> bytes:
    """``H.hash(m, l)`` for H = SHA-512: the first ``length`` bytes of SHA-512(m) (§6.2)."""
    return hashlib.sha512(data).digest()[:length]


def calculate_generator(
    prs: bytes, ci: bytes = b"", sid: bytes = b"", *, blind: int = 1
) -> bytes:
    """``G_X25519.calculate_generator(H, PRS, CI, sid)`` (§8.2): the 32-byte generator g.

    Hash the generator string to 32 bytes, decode it as a u-coordinate (bit 255 cleared),
    map it with Elligator 2 and encode the result.  ``blind`` blinds the map's field
    operations without changing g (see :func:`map_to_curve_elligator2_curve25519`).
    """
    gen_str = generator_string(DSI, prs, ci, sid, S_IN_BYTES)
    gen_str_hash = _hash(gen_str, FIELD_SIZE_BYTES)
    u = decode_u_coordinate(gen_str_hash, FIELD_SIZE_BITS)
    return encode_u_coordinate(map_to_curve_elligator2_curve25519(u, blind), FIELD_SIZE_BITS)


_BLIND_LABEL = b"pairkit CPace map blinding"


def _map_blind(y: bytes) -> int:
    """A secret non-zero field element for blinding the map, from this party's scalar ``y``.

    Derived (SHA-512 with a label of its own) rather than drawn, so the random source is read
    exactly as before (one scalar per party; the frozen transcripts stay valid).  ``y`` is
    secret and uniform, so the blind is too, and it reveals nothing about ``y``.
    """
    return int.from_bytes(hashlib.sha512(_BLIND_LABEL + y).digest(), "little") % P or 1


# --- group operations (§8.2) -----------------------------------------------------------------


def sample_scalar(rng: Callable[[int], bytes]) -> bytes:
    """``G_X25519.sample_scalar()`` (§8.2, §10.7): 32 uniformly random bytes from ``rng``.

    X25519 clamps them when used (RFC 7748 §5), which makes the scalar a multiple of the
    cofactor, as §10.8 requires.
    """
    y = rng(FIELD_SIZE_BYTES)
    if not isinstance(y, bytes | bytearray) or len(y) != FIELD_SIZE_BYTES:
        raise ConfigError(f"the random source must return {FIELD_SIZE_BYTES} bytes")
    return bytes(y)


def _x25519(y: bytes | X25519PrivateKey, g: bytes) -> bytes:
    # y: the scalar's bytes, or the scalar already loaded (loading computes a public key, a
    # fixed-base multiplication CPace does not need: a party loads its scalar once).
    if not isinstance(y, X25519PrivateKey) and len(y) != FIELD_SIZE_BYTES:
        raise ConfigError(f"a CPace scalar must be {FIELD_SIZE_BYTES} bytes, not {len(y)}")
    if len(g) != FIELD_SIZE_BYTES:
        raise DecodeError(f"a CPace public share must be {FIELD_SIZE_BYTES} bytes, not {len(g)}")
    key = y if isinstance(y, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(bytes(y))
    try:
        result = key.exchange(X25519PublicKey.from_public_bytes(bytes(g)))
    except ValueError:
        # cryptography refuses an all-zero X25519 output, i.e. G.I: g was a low-order point
        # on the curve or its twist (or a non-canonical encoding of one).
        result = IDENTITY
    if hmac.compare_digest(result, IDENTITY):
        raise AuthenticationError(
            "the peer's CPace message is not a valid public share (a low-order point); "
            "the exchange was stopped"
        )
    return result


def scalar_mult(y: bytes | X25519PrivateKey, g: bytes) -> bytes:
    """``G_X25519.scalar_mult(y, g) = X25519(y, g)`` (§8.2).

    Raises :class:`AuthenticationError` if the result is G.I, which for a generator from
    :func:`calculate_generator` happens with negligible probability.
    """
    return _x25519(y, g)


def scalar_mult_vfy(y: bytes | X25519PrivateKey, g: bytes) -> bytes:
    """``G_X25519.scalar_mult_vfy(y, g) = X25519(y, g)`` with the abort of §7.2.

    Where the draft returns G.I (all zeros) for a low-order ``g`` on the curve or the twist
    and asks the caller to abort, this raises :class:`AuthenticationError`, so no caller can
    forget the check.  ``g`` is decoded as RFC 7748 asks (bit 255 cleared, values >= p
    accepted and reduced), so the non-canonical encodings of B.1.10 give the draft's results.
    A ``g`` of the wrong length raises :class:`DecodeError`.
    """
    return _x25519(y, g)


# --- outputs (§7.2, §10.4, §10.6) ------------------------------------------------------------


def derive_isk(sid: bytes, k: bytes, transcript: bytes) -> bytes:
    """``ISK = H.hash(lv_cat(G.DSI || b"_ISK", sid, K) || transcript)`` (§7.2)."""
    return _hash(lv_cat(_ISK_LABEL, sid, k) + transcript)


def sid_output(transcript: bytes) -> bytes:
    """``sid_output = H.hash(b"CPaceSidOutput" || transcript)`` (§10.6).

    A public session identifier, unique for honest parties, for runs without a pre-agreed sid.
    """
    return _hash(_SID_OUTPUT_LABEL + transcript)


def mac_key(sid: bytes, isk: bytes) -> bytes:
    """``mac_key = H.hash(b"CPaceMac" || sid || ISK)`` (§10.4)."""
    return _hash(_MAC_LABEL + sid + isk)


def confirmation_tag(key: bytes, y: bytes, ad: bytes) -> bytes:
    """``T = MAC(mac_key, lv_cat(Y, AD))`` with MAC = HMAC-SHA-512 (§10.4).

    Each party tags the message it sent: the initiator ``lv_cat(Ya, ADa)``, the responder
    ``lv_cat(Yb, ADb)``, so the two tags differ and cannot be reflected.
    """
    mac = crypto_hmac.HMAC(key, hashes.SHA512())
    mac.update(lv_cat(y, ad))
    return mac.finalize()


# --- the two-party object ----------------------------------------------------------------------


class CPaceState(Enum):
    """Where a :class:`CPace` exchange stands."""

    STARTED = "started"  #: our share is ready; the peer's has not arrived
    KEYED = "keyed"  #: the peer's share was accepted; ISK exists, not yet confirmed
    CONFIRMED = "confirmed"  #: the peer's confirmation tag verified
    FAILED = "failed"  #: an error happened; every later call raises ProtocolError


class _Input(Enum):
    MESSAGE = "message"
    RECEIVE = "receive"
    ISK = "isk"
    SID_OUTPUT = "sid_output"
    CONFIRMATION = "confirmation"
    VERIFY = "verify_confirmation"


_S = CPaceState
_I = _Input

#: (state, input) -> next state.  A pair not listed is illegal: the machine fails.
_TRANSITIONS: Final[dict[tuple[CPaceState, _Input], CPaceState]] = {
    (_S.STARTED, _I.MESSAGE): _S.STARTED,
    (_S.STARTED, _I.RECEIVE): _S.KEYED,
    (_S.KEYED, _I.MESSAGE): _S.KEYED,
    (_S.KEYED, _I.ISK): _S.KEYED,
    (_S.KEYED, _I.SID_OUTPUT): _S.KEYED,
    (_S.KEYED, _I.CONFIRMATION): _S.KEYED,
    (_S.KEYED, _I.VERIFY): _S.CONFIRMED,
    (_S.CONFIRMED, _I.MESSAGE): _S.CONFIRMED,
    (_S.CONFIRMED, _I.ISK): _S.CONFIRMED,
    (_S.CONFIRMED, _I.SID_OUTPUT): _S.CONFIRMED,
    (_S.CONFIRMED, _I.CONFIRMATION): _S.CONFIRMED,
}

_WHY_ILLEGAL: Final[dict[_Input, str]] = {
    _I.MESSAGE: "its message is no longer available",
    _I.RECEIVE: "it has already received the peer's message",
    _I.ISK: "it has no session key before the peer's message arrives",
    _I.SID_OUTPUT: "it has no session id before the peer's message arrives",
    _I.CONFIRMATION: "it cannot confirm the key before the peer's message arrives",
    _I.VERIFY: "the peer's confirmation cannot be checked now",
}


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ConfigError(f"{what} must be bytes, not {type(value).__name__}")


class CPace:
    """One party of a CPACE-X25519-SHA512 exchange, initiator-responder setting (§7).

    The initiator is the draft's A and the responder its B; the transcript is
    ``transcript_ir(Ya, ADa, Yb, ADb)``.  Usage (both sides alike)::

        me = CPace("initiator", pin, ci=ci, ad_self=my_caps)
        send(me.message(), my_caps)
        me.receive(peer_msg, peer_caps)      # AuthenticationError on an invalid share
        send(me.confirmation())
        me.verify_confirmation(peer_tag)     # AuthenticationError on a wrong PIN
        key = me.isk

    Inputs: ``prs`` the shared secret (a PIN's bytes, not empty), ``ci`` the channel
    identifier (see :func:`channel_identifier` for how pairkit puts both party ids, the
    protocol version and the method in it), ``sid`` a session id both sides already share
    (empty if none; then use :attr:`sid_output`), ``ad_self`` this side's associated data
    (pairkit: its capabilities), sent in the clear by the caller next to :meth:`message`.
    ``rng`` supplies the scalar; tests pass a fixed one.

    Any exception poisons the object: later calls raise :class:`ProtocolError`.  ISK is
    available once the peer's message is accepted (CPace's implicit authentication, §7.2);
    pairkit uses it only after :meth:`verify_confirmation` succeeded (§10.4, §10.5).
    """

    def __init__(
        self,
        role: Role,
        prs: bytes,
        *,
        ci: bytes = b"",
        sid: bytes = b"",
        ad_self: bytes = b"",
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if role not in ("initiator", "responder"):
            raise ConfigError(f'role must be "initiator" or "responder", not {role!r}')
        prs = _as_bytes(prs, "the PIN or password (prs)")
        if not prs:
            raise ConfigError("the PIN or password (prs) must not be empty")
        self._role: Role = role
        self._sid = _as_bytes(sid, "sid")
        self._ad_self = _as_bytes(ad_self, "ad_self")
        ci = _as_bytes(ci, "ci")
        y = sample_scalar(rng)
        g = calculate_generator(prs, ci, self._sid, blind=_map_blind(y))
        self._y: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(y)
        self._share = scalar_mult(self._y, g)
        self._state = CPaceState.STARTED
        self._isk: bytes | None = None
        self._transcript = b""
        self._peer_share = b""
        self._ad_peer = b""

    # -- read-only facts ----------------------------------------------------------------------

    @property
    def role(self) -> Role:
        """``"initiator"`` (the draft's A) or ``"responder"`` (B)."""
        return self._role

    @property
    def state(self) -> CPaceState:
        """The current state (see :class:`CPaceState`)."""
        return self._state

    @property
    def ad_self(self) -> bytes:
        """This side's associated data, to send next to :meth:`message`."""
        return self._ad_self

    # -- the machine ------------------------------------------------------------------------------

    def _step(self, what: _Input) -> CPaceState:
        """Check that ``what`` is legal now; an illegal input fails the machine."""
        if self._state is CPaceState.FAILED:
            raise ProtocolError("this CPace exchange has already failed; start a new one")
        nxt = _TRANSITIONS.get((self._state, what))
        if nxt is None:
            self._fail()
            raise ProtocolError(f"CPace {what.value}() called out of order: {_WHY_ILLEGAL[what]}")
        return nxt

    def _fail(self) -> None:
        self._state = CPaceState.FAILED
        self._y = None
        self._isk = None

    def message(self) -> bytes:
        """This side's public share, Ya for the initiator or Yb for the responder (§7.2).

        32 bytes; the same value on every call.  The caller sends it with :attr:`ad_self`.
        """
        self._state = self._step(_I.MESSAGE)
        return self._share

    def receive(self, msg: bytes, ad_peer: bytes) -> None:
        """Take the peer's share and associated data and derive ISK (§7.2).

        Raises :class:`DecodeError` if ``msg`` is not 32 bytes and
        :class:`AuthenticationError` if it is a low-order point (K = G.I); either poisons
        the object.  A second call raises :class:`ProtocolError`.
        """
        nxt = self._step(_I.RECEIVE)
        try:
            msg = _as_bytes(msg, "the peer's CPace message")
            ad_peer = _as_bytes(ad_peer, "the peer's associated data")
            if len(msg) != FIELD_SIZE_BYTES:
                raise DecodeError(
                    f"the peer's CPace message must be {FIELD_SIZE_BYTES} bytes, not {len(msg)}"
                )
            assert self._y is not None  # set until the machine fails
            k = scalar_mult_vfy(self._y, msg)
            if self._role == "initiator":
                transcript = transcript_ir(self._share, self._ad_self, msg, ad_peer)
            else:
                transcript = transcript_ir(msg, ad_peer, self._share, self._ad_self)
            self._isk = derive_isk(self._sid, k, transcript)
        except BaseException:
            self._fail()
            raise
        # The scalar must not outlive its use (§10.9: never reuse ya, yb).
        self._y = None
        self._transcript = transcript
        self._peer_share = msg
        self._ad_peer = ad_peer
        self._state = nxt

    @property
    def isk(self) -> bytes:
        """The 64-byte intermediate session key (§7.2); feed it to a KDF before use (§10.3)."""
        self._state = self._step(_I.ISK)
        assert self._isk is not None
        return self._isk

    @property
    def sid_output(self) -> bytes:
        """``sid_output`` (§10.6): a public 64-byte session id derived from the transcript.

        The draft defines it for runs without a pre-agreed ``sid``; it is computed the same
        way whatever ``sid`` was (the draft's vectors use a non-empty sid).
        """
        self._state = self._step(_I.SID_OUTPUT)
        return sid_output(self._transcript)

    def _tag(self, *, ours: bool) -> bytes:
        assert self._isk is not None
        key = mac_key(self._sid, self._isk)
        if ours:
            return confirmation_tag(key, self._share, self._ad_self)
        return confirmation_tag(key, self._peer_share, self._ad_peer)

    def confirmation(self) -> bytes:
        """This side's key-confirmation tag (§10.4): HMAC over the message it sent.

        64 bytes, to send to the peer; the same value on every call.
        """
        self._state = self._step(_I.CONFIRMATION)
        return self._tag(ours=True)

    def verify_confirmation(self, tag: bytes) -> None:
        """Check the peer's key-confirmation tag in constant time (§10.4).

        Raises :class:`AuthenticationError` if it does not match (a wrong PIN, different CI or
        sid, or a tampered message or AD) and :class:`DecodeError` if it is not 64 bytes; both
        poison the object.  Calling it twice raises :class:`ProtocolError`.
        """
        nxt = self._step(_I.VERIFY)
        try:
            tag = _as_bytes(tag, "the peer's confirmation tag")
            if len(tag) != TAG_SIZE:
                raise DecodeError(
                    f"the peer's confirmation tag must be {TAG_SIZE} bytes, not {len(tag)}"
                )
            if not hmac.compare_digest(tag, self._tag(ours=False)):
                raise AuthenticationError(
                    "key confirmation failed: the two sides did not agree on a key "
                    "(most likely the PIN was wrong)"
                )
        except BaseException:
            self._fail()
            raise
        self._state = nxt
