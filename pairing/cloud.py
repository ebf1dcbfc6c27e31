"""Cloud authentication and join permission, before the session key (DESIGN.md step 3).

A personal cloud is a set of devices sharing a cloud secret.  Before pairing, a guest proves
membership (or fails to) with a mutual proof of the cloud secret over fresh nonces from both
sides, in the manner of the OMA CPNS personal-network authentication:

====  =====================  ======================================================================
#     message                content
====  =====================  ======================================================================
1     guest -> CloudHello    ``n_G`` (16 random bytes), and ``hint = MAC(K, "hint" || n_G)[:8]``
                             for the cloud the guest recognised in the host's hello, or for each
                             of its clouds (at most 8) when it heard no hello (TCP); always 8
                             hints, random fillers among them, in a random order
2     host -> CloudReply     ``n_H``, and ``proof_H = MAC(K, "host" || n_G || n_H || S_H)`` when
                             the hint names one of the host's clouds; no proof otherwise.  With
                             a proof, the host's description (name, methods, capabilities)
                             sealed under ``MAC(K, "reply" || n_G || n_H)`` (:func:`seal_host_info`)
3     guest -> CloudProof    ``proof_G = MAC(K, "guest" || n_G || n_H || S_G)``
4     host -> CloudVerdict   ``member = True``: provisional, see below
====  =====================  ======================================================================

``K`` is derived from the cloud secret inside each keystore (``cloud_kdf``); it never leaves
the keystore, and the hint is unlinkable across attempts because ``n_G`` is fresh.  Both proofs
cover both nonces, so neither a replayed proof nor a reflected one verifies.

The host checks a hint against its current secret, then against the secrets it *retired* when
its owner forgot a member (:attr:`CloudHost.retired_epoch` says which); a proof made with a
retired one counts only for a device that is a member now, which the caller checks once the
pairing has proven who the guest is (docs/security.md "Renewing the cloud secret").

Each proof names the prover's static identity key (``S_G``, ``S_H``), which is not sent: the
proof can only be checked once the pairing that follows has *proven* who the peer is (every
method proves both static keys, docs/security.md rule 1).  Both sides then call :meth:`bind`
with the peer's proven key before anything is granted or stored.  So a relay that forwards a
real member's proof and then pairs as itself fails at :meth:`bind`: the proof names the member's
key, not the relay's (docs/security.md, rule 6).  The whole exchange is also hashed into the
pairing's transcript (:meth:`pairkit.driver.MessagePipe.transcript`), so a bit flipped in any
of these messages ends both sides with an error.

A guest that is not a member (no hint, an unknown hint, or a failed proof) asks to join:

5     guest -> JoinRequest   its name, what it asks for (guest or member), and its device id when
                             it has paired with this host before, sealed to the host's static key
                             (HPKE, ``info`` binding ``n_G || n_H``: a listener reads no id, and a
                             sealed id does not open on another link); a claim the pairing that
                             follows must prove, or the host stops; such a returning device is
                             refused without a prompt if the host no longer knows it, or its
                             sealed id does not open (one answer for both)
6     host -> JoinVerdict    the owner's answer: guest access until an expiry, membership, or an
                             ``Abort`` (refused)

The host's owner decides through the :class:`AllowJoin` question.  Sealing the id draws HPKE's
ephemeral key inside `cryptography` (its API takes no rng), as ``compare`` does; the host opens
it with the static key the runtime hands over from the keystore (``static_private``).

The membership itself (the cloud secret and member list) is delivered later, inside the secure
channel, once a session key exists.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Callable
from enum import IntEnum
from hashlib import sha256
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import keyschedule
from .crypto import HPKE_OVERHEAD, Rng, hpke_open, hpke_seal, same, seal, unseal
from .errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    NotFoundError,
    PairingTimeout,
    ProtocolError,
    RefusedError,
)
from .machine import DONE, Event, Machine, Question, Step, step
from .messages import device_name
from .negotiation import (
    ALL_CAPS,
    PROVES_A_KNOWN_KEY,
    Caps,
    Method,
    methods_from_mask,
    methods_mask,
)
from .wire import Abort, Message, decode_struct, encode_struct, field, message, struct

#: why a host not open to strangers refuses one
NOT_OPEN_TEXT = ("this host is not open to new devices now; ask its owner to open a visibility "
                 "window (pairkit host --visible SECONDS)")
#: (cloud id, data) -> MAC under that cloud's auth key (the keystore's cloud_mac)
CloudMac = Callable[[str, bytes], bytes]
#: (cloud id, epoch, data) -> MAC under the auth key of that cloud's *retired* secret of that
#: epoch (docs/security.md "Renewing the cloud secret")
RetiredMac = Callable[[str, int, bytes], bytes]


class Role(IntEnum):
    """What a device is to a host's cloud."""

    STRANGER = 0
    GUEST = 1
    MEMBER = 2


MAX_HINTS = 8
#: the sealed description's plaintext is a multiple of this many bytes (§10): its length tells
#: a listener nothing of a name of up to about 50 bytes (one size for most names)
DESCRIPTION_PAD = 64
#: the largest plaintext a sealed description may have (a 64-character name of 4-byte
#: characters, methods and caps as 9-byte integers, padded)
MAX_DESCRIPTION = 5 * DESCRIPTION_PAD
#: ChaCha20-Poly1305's tag
_TAG = 16


@struct
class HostDescription(Message):
    """The hello response as a host seals it to a member (docs/protocol.md §10): its name,
    methods and capabilities, and zero bytes that pad the encoding to a multiple of
    :data:`DESCRIPTION_PAD` bytes."""

    name: str = field(2, max_len=64)
    methods: int = field(3)
    caps: int = field(4)
    pad: bytes = field(5, max_len=2 * DESCRIPTION_PAD, default=b"")


@message(type_id=30, max_size=256)
class CloudHello(Message):
    nonce: bytes = field(2, size=16)
    hints: tuple[bytes, ...] = field(3, size=8, max_len=MAX_HINTS, default=())


@message(type_id=31, max_size=512)
class CloudReply(Message):
    nonce: bytes = field(2, size=16)
    proof: bytes | None = field(3, size=32, default=None)
    #: which of the guest's hints matched (when there is a proof)
    index: int | None = field(4, default=None)
    #: the hello response (webinos) in the clear: the host's name, methods and capabilities,
    #: sent with no proof while the host is open to strangers; never with a proof (a member's
    #: is sealed, field 8), absent from a private host to a stranger
    name: str | None = field(5, max_len=64, default=None)
    methods: int | None = field(6, default=None)
    caps: int | None = field(7, default=None)
    #: the hello response to a member whose hint matched: a :class:`HostDescription` sealed
    #: under a key of the matched cloud secret and both nonces (:func:`seal_host_info`)
    sealed: bytes | None = field(8, max_len=MAX_DESCRIPTION + _TAG, default=None)


@message(type_id=32, max_size=128)
class CloudProof(Message):
    proof: bytes = field(2, size=32)


@message(type_id=33, max_size=64)
class CloudVerdict(Message):
    member: bool = field(2)


#: the size of a sealed device id: HPKE's ``enc`` and the id's 16 bytes sealed with their tag
SEALED_ID_LEN = 16 + HPKE_OVERHEAD


@message(type_id=34, max_size=256)
class JoinRequest(Message):
    name: str = field(2, max_len=64)
    wants: Role = field(3)
    # field 4 (the device id in the clear, until session 22) is retired: never reuse it
    #: a known device coming back: refuse it rather than ask the owner if the host forgot it
    reconnect: bool = field(5, default=False)
    #: the pairing method the guest will use (:class:`~pairing.negotiation.Method`'s value), so
    #: that the host refuses a method it does not allow, or a locked-out PIN, before its owner
    #: is asked (issue 16); absent from older guests
    method: int | None = field(6, default=None)
    #: a returning device's id sealed to the host's static key (:func:`seal_join_id`), when it
    #: has paired with this host before: never in the clear (atk19p, finding 3)
    sealed_id: bytes | None = field(7, size=SEALED_ID_LEN, default=None)


def _join_id_info(ng: bytes, nh: bytes) -> bytes:
    # The label and both nonces of this link's cloud step (fixed lengths: unambiguous), in
    # HPKE's info: a sealed id opens on this link only (docs/protocol.md §10).
    return keyschedule.JOIN_ID + ng + nh


def seal_join_id(host_static: bytes, device_id: bytes, ng: bytes, nh: bytes) -> bytes:
    """``device_id`` sealed to ``host_static`` for the link whose cloud step has the nonces
    ``ng``, ``nh`` (HPKE base mode, RFC 9180 §6.1: ``enc || ct``)."""
    return hpke_seal(host_static, device_id, _join_id_info(ng, nh))


def open_join_id(
    static_private: X25519PrivateKey, sealed: bytes, ng: bytes, nh: bytes
) -> bytes | None:
    """The device id :func:`seal_join_id` sealed to this host for this link, or None when it
    does not open (another host's key, another link's nonces, a byte changed) or is no id."""
    try:
        opened = hpke_open(static_private, sealed, _join_id_info(ng, nh), "the sealed id")
    except AuthenticationError:
        return None
    return opened if len(opened) == 16 else None


@message(type_id=35, max_size=64)
class JoinVerdict(Message):
    role: Role = field(2)
    #: seconds the grant lasts (guests); absent for members
    seconds: int | None = field(3, default=None)


@dataclasses.dataclass(frozen=True)
class AllowJoin(Question):
    """The host owner's decision: answer a :class:`Grant` or ``None`` to refuse."""

    hook: ClassVar[str] = "allow_join"
    name: str
    wants: Role


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """What a host says of itself in its :class:`CloudReply`, before any join request: the
    webinos "hello response" that lets a person pick a device by name.

    Sealed to a member of the host's cloud (:func:`seal_host_info`), in the clear to a stranger
    while the host is open to strangers (docs/protocol.md §10).  It is a claim, not a proof: it
    is hashed into the transcript like everything of the cloud step (docs/protocol.md §2), so
    the pairing that follows fails if anyone altered it on the way, and the guest checks after
    the pairing that the proven peer carries this name."""

    name: str
    methods: frozenset[Method]
    caps: Caps

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "methods": sorted(m.label for m in self.methods)}


@dataclasses.dataclass(frozen=True)
class CloudChecked(Event):
    """The guest's cloud check has an outcome (DESIGN.md step 3; the webinos steps 9 and 10,
    "try the cloud", "authentication failed").

    ``member`` is True when the host accepted the guest's membership proof (provisional until
    :meth:`CloudGuest.bind`, like everything the cloud step says); False when the host proved
    membership of none of the ``tried`` clouds the guest offered, and the guest now asks the
    host's owner to let it in.  ``host`` is what the host said of itself, when it said it."""

    member: bool
    tried: int
    host: HostInfo | None = None


@dataclasses.dataclass(frozen=True)
class WaitingForOwner(Event):
    """The guest asked to join and waits for the host's owner to decide (at most ``seconds``):
    tell the person, who would otherwise wait in silence (issue 16)."""

    seconds: float


@dataclasses.dataclass(frozen=True)
class OwnerDecided(Event):
    """The host's owner answered the join request (the wait announced by
    :class:`WaitingForOwner` is over)."""


@dataclasses.dataclass(frozen=True)
class Grant:
    """What the owner allowed: a role and, for guests, how long (seconds).

    ``until`` is a stored grant's end (Unix seconds), when it is known: a guest coming back is
    told its role only (``JoinVerdict``, atk22c F1) and the end in its Membership, exactly the
    end its owner gave, however long its pairing takes (attack review atk20c, finding 1: the
    end was made again from the time of the Membership, so a slow return stretched the
    grant)."""

    role: Role
    seconds: int | None = None
    until: int | None = None

    def __post_init__(self) -> None:
        if self.role is Role.STRANGER:
            raise ValueError("a grant gives guest or member access")
        if self.role is Role.GUEST and (self.seconds is None or self.seconds <= 0):
            raise ValueError("a guest grant needs a positive duration")


def _reply_key(mac: CloudMac, cloud_id: str, ng: bytes, nh: bytes) -> bytes:
    """§10: ``K_R = M("pairkit/1 cloud reply" || n_G || n_H)``, fresh with each ``n_H``."""
    return mac(cloud_id, keyschedule.CLOUD_REPLY + ng + nh)


def _padded(info: HostInfo) -> bytes:
    """``enc(HostDescription)`` with ``pad`` the fewest zero bytes that make its length a
    multiple of :data:`DESCRIPTION_PAD` (§10).  Tried one length at a time: a pad's head
    grows a byte at 24 bytes (§1.1), so some lengths are skipped; once per member hello."""
    for n in range(2 * DESCRIPTION_PAD + 1):
        body = HostDescription(
            info.name, methods_mask(info.methods), int(info.caps), pad=bytes(n)
        )
        encoded = encode_struct(body)
        if len(encoded) % DESCRIPTION_PAD == 0:
            return encoded
    raise AssertionError("a pad of at most two blocks always fits")  # pragma: no cover


def seal_host_info(
    mac: CloudMac, cloud_id: str, ng: bytes, reply: CloudReply, info: HostInfo
) -> CloudReply:
    """``reply`` (with its proof and index) carrying ``info`` sealed for the members of
    ``cloud_id`` (docs/protocol.md §10): ``AEAD(K_R, 0, enc(HostDescription), enc(reply
    without field 8))``.  ``mac`` is the MAC of the secret whose hint matched (a retired one
    included).  Nonce 0: ``K_R`` is new with each ``n_H``, so it seals one message."""
    if reply.proof is None or reply.index is None or reply.name is not None or reply.sealed:
        raise ValueError("a description is sealed into a reply with a proof, and only there")
    key = _reply_key(mac, cloud_id, ng, reply.nonce)
    sealed = seal(key, 0, _padded(info), reply.encode())
    return CloudReply(reply.nonce, reply.proof, reply.index, sealed=sealed)


def open_host_info(mac: CloudMac, cloud_id: str, ng: bytes, reply: CloudReply) -> HostInfo:
    """The description :func:`seal_host_info` sealed in ``reply``; :class:`AuthenticationError`
    when it does not open under ``cloud_id``'s secret and these nonces and fields (a bit
    flipped, a description moved from another reply), :class:`DecodeError` for a plaintext
    not padded as §10 says."""
    if reply.sealed is None:
        raise ValueError("the reply carries no sealed description")
    key = _reply_key(mac, cloud_id, ng, reply.nonce)
    ad = dataclasses.replace(reply, sealed=None).encode()
    plain = unseal(key, 0, reply.sealed, ad, "the host's sealed description")
    if len(plain) % DESCRIPTION_PAD:
        raise DecodeError("the host's sealed description is not padded")
    body = decode_struct(HostDescription, plain, max_size=MAX_DESCRIPTION)
    if any(body.pad):
        raise DecodeError("the host's sealed description is padded with other than zeros")
    return HostInfo(
        name=device_name(body.name, "the host's name"),
        methods=methods_from_mask(body.methods),
        caps=Caps(body.caps) & ALL_CAPS,
    )


def _hint(mac: CloudMac, cloud_id: str, nonce: bytes) -> bytes:
    return mac(cloud_id, keyschedule.CLOUD_HINT + nonce)[:8]


def _below(rng: Rng, n: int) -> int:
    """A uniform integer in [0, n) from ``rng`` (rejection sampling over 4 bytes), n < 2^32."""
    limit = (1 << 32) - (1 << 32) % n
    while True:
        value = int.from_bytes(rng(4), "big")
        if value < limit:
            return value % n


def _padded_hints(real: tuple[bytes, ...], rng: Rng) -> tuple[bytes, ...]:
    """Always MAX_HINTS hints (docs/protocol.md §10): the real ones at random places among
    fillers drawn from ``rng``, which match no cloud.  A hello's size and order then tell a
    listener nothing of how many clouds the device holds (atk23 F5)."""
    hints = list(real)
    while len(hints) < MAX_HINTS:
        filler = rng(8)
        if filler not in hints:  # a repeat would tell a filler from a hint (2^-64 a draw)
            hints.append(filler)
    for i in range(len(hints) - 1, 0, -1):  # Fisher-Yates
        j = _below(rng, i + 1)
        hints[i], hints[j] = hints[j], hints[i]
    return tuple(hints)


def _proof(
    mac: CloudMac, cloud_id: str, who: bytes, ng: bytes, nh: bytes, static: bytes
) -> bytes:
    return mac(cloud_id, keyschedule.CLOUD_PROOF + who + ng + nh + static)


def _check_static(static: bytes) -> bytes:
    if len(static) != 32:
        raise ValueError("a static identity key is 32 bytes")
    return static


S_START = "start"
S_REPLY = "await-reply"
S_VERDICT = "await-verdict"
S_JOIN = "await-join-verdict"
S_HELLO = "await-hello"
S_PROOF = "await-proof"
S_JOIN_REQ = "await-join-request"
S_ASK = "ask-owner"


class CloudGuest(Machine):
    """The guest: proves membership of ``cloud_id`` (if any), else asks to join as ``wants``."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_REPLY, CloudReply): step("_on_reply", S_VERDICT, S_JOIN, DONE),
        (S_VERDICT, CloudVerdict): step("_on_verdict", DONE),
        (S_JOIN, JoinVerdict): step("_on_join_verdict", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({S_REPLY})

    def __init__(
        self,
        *,
        name: str,
        clouds: tuple[str, ...],
        mac: CloudMac,
        static: bytes,
        wants: Role = Role.GUEST,
        device_id: bytes | None = None,
        host_static: bytes | None = None,
        timeout: float = 30.0,
        answer_time: float = 180.0,
        expect_name: str | None = None,
        probe: bool = False,
        method: int | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(initial_state=S_START)
        self.method = method
        self.name = name
        #: join only a host that says it is called this (``pairkit join NAME``)
        self.expect_name = expect_name
        #: only ask the host who it is, then stop (``pairkit discover`` filling in names)
        self.probe = probe
        #: what the host said of itself in its reply (None: it said nothing)
        self.host: HostInfo | None = None
        self._static = _check_static(static)
        self._host_proof: bytes | None = None
        self._bound = False
        self.clouds = clouds[:MAX_HINTS]
        self.cloud_id: str | None = None
        self._mac = mac
        self.wants = wants
        if device_id is not None and (host_static is None or len(host_static) != 32):
            raise ValueError("a returning device's id is sealed to the host's static key: "
                             "give host_static")
        self.device_id = device_id
        #: the known host's static key, which a claimed ``device_id`` is sealed to
        self._host_static = host_static
        self.timeout = timeout
        self.answer_time = answer_time
        self._rng = rng
        self.role: Role = Role.STRANGER
        self.seconds: int | None = None
        #: the role the host's JoinVerdict gave (None: no verdict came, as for a member back
        #: by its cloud proof): the Membership that follows must give the same (§10)
        self.verdict: Role | None = None

    def _on_start(self, now: float) -> None:
        """Send the hello with a hint per cloud."""
        self._ng = self._rng(16)
        real = tuple(_hint(self._mac, c, self._ng) for c in self.clouds)
        self._hints = _padded_hints(real, self._rng)
        self._send(CloudHello(self._ng, self._hints))
        self.state = S_REPLY
        self._expect_by(now + self.timeout, "the host did not answer the cloud check")

    def _on_reply(self, msg: CloudReply, now: float) -> None:
        self._nh = msg.nonce  # the join request seals to it (a returning device's id)
        matched = msg.proof is not None and msg.index is not None
        if matched:
            assert msg.index is not None
            offered = self._offered(msg.index)
            if offered is None:
                raise ProtocolError("the host named a cloud the guest did not offer")
            if msg.name is not None or msg.methods is not None or msg.caps is not None:
                raise ProtocolError("the host described itself in the clear to a member")
            self.cloud_id = offered
            # Opened before anything else is done with the reply: a seal that does not open
            # stops the guest here, before it proves anything or asks anyone (§10).
            self.host = (None if msg.sealed is None
                         else open_host_info(self._mac, self.cloud_id, self._ng, msg))
        else:
            if msg.sealed is not None:
                raise ProtocolError("the host sealed its description with no cloud proof")
            self.host = _host_info(msg)
        if self.probe:
            # Looked, and leaves: tell the host so, so that it does not wait nor count a failure.
            self._send(Abort(code=ErrorCode.CLOSED, reason=PROBE_REASON))
            self._finish()
            return
        named = self.host.name if self.host is not None else None
        if self.expect_name is not None and named != self.expect_name:
            said = f"is {self.host.name!r}" if self.host is not None else "did not say its name"
            raise NotFoundError(f"this host {said}, not {self.expect_name!r}")
        if not matched:
            self._emit(CloudChecked(member=False, tried=len(self.clouds), host=self.host))
            self._ask_join(now)
            return
        assert self.cloud_id is not None
        self._host_proof = msg.proof  # checked by bind(), once the host's key is proven
        self._send(CloudProof(
            _proof(self._mac, self.cloud_id, b"guest", self._ng, msg.nonce, self._static)
        ))
        self.state = S_VERDICT
        self._expect_by(now + self.timeout, "the host did not answer the cloud check")

    def _offered(self, index: int) -> str | None:
        """The cloud whose hint the hello carried at ``index`` (None: a filler, or no hint)."""
        if not 0 <= index < len(self._hints):
            return None
        hint = self._hints[index]
        return next((c for c in self.clouds if _hint(self._mac, c, self._ng) == hint), None)

    def _on_verdict(self, msg: CloudVerdict, now: float) -> None:
        if not msg.member:
            raise AuthenticationError("the host did not accept the cloud proof")
        self._emit(CloudChecked(member=True, tried=len(self.clouds), host=self.host))
        self.role = Role.MEMBER
        self._finish()

    def _join_request(self) -> JoinRequest:
        """The request: a returning device's id sealed to the host, for this link only."""
        sealed = None
        if self.device_id is not None:
            assert self._host_static is not None
            sealed = seal_join_id(self._host_static, self.device_id, self._ng, self._nh)
        # A returning device says no name either: nobody is asked about it (§10), and a
        # listener would follow it by its name as by its id; nor the role its person asked
        # for (the host reads the stored grant): guest, as every returning device says.
        returning = sealed is not None
        return JoinRequest(name="" if returning else self.name,
                           wants=Role.GUEST if returning else self.wants,
                           reconnect=returning, method=self.method, sealed_id=sealed)

    def _ask_join(self, now: float) -> None:
        self._send(self._join_request())
        self.state = S_JOIN
        # The owner has to be asked: allow the time a person needs, and say we are waiting.
        self._expect_by(
            now + self.answer_time,
            f"the host's owner did not answer within {self.answer_time:g} s",
        )
        self._emit(WaitingForOwner(self.answer_time))

    def _on_deadline(self, now: float) -> None:
        exc = PairingTimeout(self._deadline_text)
        if self.state == S_JOIN:
            # Our wait is over, not the host's silence: tell it, so its owner's prompt goes.
            self.abort(exc, tell_peer=True)
        raise exc

    def _on_join_verdict(self, msg: JoinVerdict, now: float) -> None:
        if msg.role is Role.STRANGER:
            raise ProtocolError("a join verdict must grant guest or member access")
        self.role = self.verdict = msg.role
        self.seconds = msg.seconds
        self._emit(OwnerDecided())
        self._finish()

    def check_name(self, proven_name: str) -> None:
        """After the pairing: the name the host gave in its reply must be the one its proven
        identity carries (a host cannot show one name to be picked and pair as another)."""
        if self.host is not None and self.host.name != proven_name:
            raise AuthenticationError(
                f"the host said it was {self.host.name!r} but paired as {proven_name!r}"
            )

    def bind(self, host_static: bytes) -> None:
        """Check the host's cloud proof against the key the pairing proved it holds.

        Call after the pairing and before the session is used; raises
        :class:`AuthenticationError` when the host that paired is not the one that proved
        membership of the cloud (a relay).  Nothing to check when no cloud proof was made.
        """
        if self._host_proof is not None:
            assert self.cloud_id is not None
            expected = _proof(self._mac, self.cloud_id, b"host", self._ng, self._nh, host_static)
            if not same(expected, self._host_proof):
                raise AuthenticationError(
                    "the host that paired is not the one that proved membership of the cloud"
                )
        self._bound = True


class CloudHost(Machine):
    """The host: checks a guest's membership proof, or asks its owner about a join."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_HELLO, CloudHello): step("_on_hello", S_PROOF, S_JOIN_REQ),
        (S_PROOF, CloudProof): step("_on_proof", DONE),
        (S_JOIN_REQ, JoinRequest): step("_on_join_request", DONE, S_ASK),
    }
    ANSWERS: ClassVar[dict[str, Step]] = {S_ASK: step("_on_answer", DONE)}
    STARTS: ClassVar[frozenset[str]] = frozenset({S_HELLO})

    def __init__(
        self,
        *,
        clouds: tuple[str, ...],
        mac: CloudMac,
        static: bytes,
        known_grant: Callable[[bytes], Grant | None] = lambda _id: None,
        open_to_strangers: Callable[[], bool] = lambda: True,
        precheck: Callable[[int | None, float], None] = lambda _method, _now: None,
        timeout: float = 30.0,
        info: HostInfo | None = None,
        retired: tuple[tuple[str, int], ...] = (),
        retired_mac: RetiredMac | None = None,
        static_private: X25519PrivateKey | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(initial_state=S_HELLO)
        self._info = info
        #: opens a returning device's sealed id (None: every sealed id counts as unknown)
        self._static_private = static_private
        #: (cloud id, epoch) of each retired secret a proof may still be made with, checked
        #: after the current secrets; such a proof counts only for a device that is a member
        #: now, which the caller checks once the pairing proved who it is (:attr:`retired_epoch`)
        self._retired = retired if retired_mac is not None else ()
        self._retired_mac = retired_mac
        #: the epoch of the retired secret the guest's proof was made with (None: the current
        #: secret, or no proof)
        self.retired_epoch: int | None = None
        self._precheck = precheck
        #: the method a joining guest said it will pair by (None: not said, or a member)
        self.join_method: int | None = None
        self.clouds = clouds
        self._mac = mac
        self._static = _check_static(static)
        self._guest_proof: bytes | None = None
        self._known_grant = known_grant
        self._open = open_to_strangers
        #: a device id the guest claimed; the pairing that follows must prove it
        self.claimed: bytes | None = None
        self.timeout = timeout
        self._rng = rng
        self.role: Role = Role.STRANGER
        self.grant: Grant | None = None
        self.guest_name: str | None = None
        #: the name the owner was asked about (None: the owner was not asked)
        self.asked_about: str | None = None
        self.cloud_id: str | None = None

    def _on_start(self, now: float) -> None:
        """Wait for the guest's hello."""
        self._expect_by(now + self.timeout, "the guest sent nothing")

    def _on_hello(self, msg: CloudHello, now: float) -> None:
        self._ng = msg.nonce
        self._nh = self._rng(16)
        proof = index = None
        # The current secrets first, then the retired ones (a member not renewed yet).
        keys: list[tuple[str, int | None]] = [(c, None) for c in self.clouds]
        keys += [(c, e) for c, e in self._retired if c in self.clouds]
        for cloud_id, epoch in keys:
            mac = self._mac_of(epoch)
            # One MAC per secret held, compared with each hint: a hello always carries
            # MAX_HINTS (fillers among them), and costs the host no more than one hint did.
            expected = _hint(mac, cloud_id, msg.nonce)
            for i, hint in enumerate(msg.hints):
                if hmac.compare_digest(expected, hint):
                    self.cloud_id, index, self.retired_epoch = cloud_id, i, epoch
                    proof = _proof(mac, cloud_id, b"host", self._ng, self._nh, self._static)
                    break
            if proof is not None:
                break
        reply = CloudReply(self._nh, proof, index)
        info = self._info
        if info is not None and proof is not None:
            # The hello response to a member, sealed: only holders of the secret its hint
            # matched read it, so a listener cannot follow a private host by its name (atk19p
            # finding 3; docs/protocol.md §10).
            assert self.cloud_id is not None
            reply = seal_host_info(mac, self.cloud_id, self._ng, reply, info)
        elif info is not None and self._open():
            # To strangers while the host is open (public by choice); a private host says
            # nothing of itself to a device it does not know.
            reply = dataclasses.replace(reply, name=info.name,
                                        methods=methods_mask(info.methods), caps=int(info.caps))
        self._send(reply)
        self.state = S_PROOF if proof is not None else S_JOIN_REQ
        self._expect_by(now + self.timeout, "the guest did not answer the cloud check")

    def _on_proof(self, msg: CloudProof, now: float) -> None:
        assert self.cloud_id is not None
        # Provisional: the proof names the guest's static key, which only the pairing proves.
        self._guest_proof = msg.proof
        self._send(CloudVerdict(True))
        self.role = Role.MEMBER
        self._finish()

    def bind(self, guest_static: bytes) -> None:
        """Check the guest's cloud proof against the key the pairing proved it holds (see
        :meth:`CloudGuest.bind`); a failed check takes the membership back and raises."""
        if self._guest_proof is None:
            return
        assert self.cloud_id is not None
        mac = self._mac_of(self.retired_epoch)
        expected = _proof(mac, self.cloud_id, b"guest", self._ng, self._nh, guest_static)
        if not same(expected, self._guest_proof):
            self.role = Role.STRANGER
            raise AuthenticationError(
                "the guest that paired is not the one that proved membership of the cloud"
            )

    def _mac_of(self, epoch: int | None) -> CloudMac:
        """The MAC under the current secret (``epoch`` None) or the retired one of ``epoch``."""
        if epoch is None:
            return self._mac
        retired, at = self._retired_mac, epoch
        assert retired is not None
        return lambda cloud_id, data: retired(cloud_id, at, data)

    def not_a_member(self, proven_name: str) -> AllowJoin:
        """The guest's proof was made with a retired secret and the proven device is not a
        member now: its proof counts as no proof at all (docs/security.md "Renewing the cloud
        secret").  The question to ask the owner about it, as about a stranger (answered with
        :meth:`take_answer`); :class:`RefusedError` on a host not open to strangers."""
        self.role, self.grant = Role.STRANGER, None
        if not self._open():
            raise RefusedError(NOT_OPEN_TEXT)
        self.asked_about = proven_name
        return AllowJoin(name=proven_name, wants=Role.MEMBER)

    def take_answer(self, value: Any) -> None:
        """The owner's answer to :meth:`not_a_member`'s question, after the pairing (no
        verdict is sent: the guest hears of a refusal by the link closing)."""
        self.grant = _granted(value)
        self.role = self.grant.role

    def check_name(self, proven_name: str) -> None:
        """After the pairing: the device the owner was asked about must be the one that paired,
        by the name its proven identity carries (the host's side of
        :meth:`CloudGuest.check_name`).  A guest that asks under a name its owner trusts and
        pairs as another, by ``resume`` or ``kk`` as a device the host knows under its own
        name, or by a full pairing under a name of its choosing, is refused before anything is
        granted or stored (docs/security.md, rule 6; attack review atk15)."""
        if self.asked_about is not None and self.asked_about != proven_name:
            self.role, self.grant = Role.STRANGER, None
            raise AuthenticationError(
                f"the guest asked to join as {self.asked_about!r} but paired as {proven_name!r}"
            )

    def _on_join_request(self, msg: JoinRequest, now: float) -> None:
        if msg.wants is Role.STRANGER:
            raise ProtocolError("a join request must ask for guest or member access")
        if msg.reconnect or msg.sealed_id is not None:
            if msg.name:  # a returning device names itself only inside the pairing (§10)
                raise DecodeError("a returning device's join request carries no name")
            if msg.wants is not Role.GUEST:  # its grant is stored: it asks for no role
                raise DecodeError("a returning device's join request asks for no role")
        else:
            self.guest_name = device_name(msg.name, "the guest's name")
        claimed = None
        if msg.sealed_id is not None and self._static_private is not None:
            claimed = open_join_id(self._static_private, msg.sealed_id, self._ng, self._nh)
        known = self._known_grant(claimed) if claimed is not None else None
        if known is not None:
            # Granted before and still valid: no prompt, but the claim must be proved, by a
            # method that proves the claimed device's key before anyone is asked anything
            # (resume, kk, ttp).  Anyone who knows the id and the host's key can seal it: a claim
            # made for any other
            # method (or none said) would lead past the window and the owner to the owner's
            # code or a PIN, with the claim found false only after (session 15, hostq doubt 3).
            if msg.method not in PROVES_A_KNOWN_KEY:
                raise ProtocolError(
                    "a known device comes back by resume: the device id it claimed is proven "
                    "only by resume, kk or ttp"
                )
            self.claimed = claimed
            self.join_method = msg.method
            self.grant = known
            self.role = known.role
            # The role only: the seconds left, in the clear, added to the time it was heard,
            # give the grant's fixed end, the same at each return (atk22c finding F1); the end
            # crosses inside the secure channel (the Membership's expires, §10).
            self._send(JoinVerdict(known.role))
            self._finish()
            return
        if msg.reconnect or msg.sealed_id is not None:
            # A returning device this host does not know (any more), or whose sealed id does
            # not open here (another host's key, another link's, a byte changed): one answer
            # for all, and never a bother to the owner, who may not even be the one the guest
            # is looking for.
            raise NotFoundError(
                "this host does not know this device, or its access has ended; pair again "
                "with a PIN or QR code"
            )
        if not self._open():
            raise RefusedError(NOT_OPEN_TEXT)
        # Cheap checks before a person is bothered: a method this host does not allow, or a
        # PIN while PIN pairing is locked out, is refused without a prompt (issue 16).
        self.join_method = msg.method
        self._precheck(msg.method, now)
        self.state = S_ASK
        self._expect_by(None)
        self.asked_about = self.guest_name
        self._emit(AllowJoin(name=msg.name, wants=msg.wants))

    def _on_answer(self, question: Question, value: Any, now: float) -> None:
        self.grant = _granted(value)
        self.role = self.grant.role
        self._send(JoinVerdict(value.role, value.seconds))
        self._finish()


def _granted(value: Any) -> Grant:
    """The owner's answer to a join question as a grant: None refuses."""
    if value is None:
        raise RefusedError("the owner refused the request to join")
    if not isinstance(value, Grant):
        raise ProtocolError("the answer to a join request must be a Grant or None")
    return value


#: the reason a guest that only asked who the host is gives when it leaves
PROBE_REASON = "only asked who the host is"


def is_probe(exc: BaseException) -> bool:
    """Whether ``exc`` (a host's error) is a guest leaving after the hello response."""
    return getattr(exc, "code", None) == ErrorCode.CLOSED and PROBE_REASON in str(exc)


def _host_info(msg: CloudReply) -> HostInfo | None:
    if msg.name is None:
        return None
    return HostInfo(
        name=device_name(msg.name, "the host's name"),
        methods=methods_from_mask(msg.methods or 0),
        caps=Caps(msg.caps or 0) & ALL_CAPS,
    )


def retired_mac_from(cloud_kdf: Callable[[str, int, bytes, int], bytes]) -> RetiredMac:
    """A :data:`RetiredMac` over a keystore's ``cloud_kdf`` with an epoch (cloud id, epoch,
    info, length)."""

    def mac(cloud_id: str, epoch: int, data: bytes) -> bytes:
        key = cloud_kdf(cloud_id, epoch, keyschedule.CLOUD_AUTH, 32)
        return hmac.new(key, data, sha256).digest()

    return mac


def auth_mac_from(cloud_kdf: Callable[[str, bytes, int], bytes]) -> CloudMac:
    """A :data:`CloudMac` over a keystore's ``cloud_kdf`` (the auth key never leaves it)."""

    def mac(cloud_id: str, data: bytes) -> bytes:
        key = cloud_kdf(cloud_id, keyschedule.CLOUD_AUTH, 32)
        return hmac.new(key, data, sha256).digest()

    return mac
