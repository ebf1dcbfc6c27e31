"""Group keys end to end through relays, and encrypted group broadcasts (DESIGN.md, oneM2M seed).

A *group controller* (the oneM2M IN-CSE) groups devices by function, keeps one symmetric key per
group and *epoch*, and delivers it end to end to each member, possibly through *relays* (MN-CSEs)
that forward what they are given but cannot read it.  Members keep the key inside their keystore
(the secure environment), which encrypts and decrypts with it but never hands it out.  The key
then protects commands broadcast to the group in BLE advertisements.

This module is sans-I/O: no sockets, no clock, no hidden randomness.  It holds

* the **envelope** (:class:`GroupEnvelope`) that carries one epoch's key to one member;
* the **wire messages** a controller, a relay and a member exchange over a pairkit secure
  channel (:class:`KeyDelivery`, :class:`KeyReceipt`, :class:`Forward`, :class:`ForwardReceipt`);
* the **encrypted advertisement** codec (:class:`GroupAdvert`, :func:`seal_broadcast`) and the
  receiver with its per-sender sliding **replay window** (:class:`GroupReceiver`,
  :class:`ReplayWindow`), whose state is plain data the caller may persist;
* the controller's **membership and epoch bookkeeping** (:class:`GroupRecord`) and the relay's
  **store-and-forward queue** (:class:`RelayQueue`), as plain frozen data.

Envelope
--------

HPKE base mode (RFC 9180 §6.1; DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to
the member's static X25519 identity key, then an Ed25519 signature (RFC 8032 §5.1.6) by the
controller, as DESIGN.md "envelopes" says::

    info      = CBOR ["pairkit/1 group key", controller id, member id, group, epoch]
    enc, ct   = HPKE-Seal(member's static key, info, group key)        (ct: 32 + 16 bytes)
    signature = Ed25519(controller, CBOR ["pairkit/1 group envelope",
                                          controller id, member id, group, epoch, enc, ct])

The member's id, the group and the epoch are in ``info`` (HPKE's key schedule, §5.1), so an
envelope moved to another member, group or epoch does not open; the signature makes the
controller the only possible author (HPKE base mode alone authenticates nobody: anyone can seal
to a public key), and the controller's id inside ``info`` stops a relay from stripping the
signature and signing the same ``enc || ct`` as if it were a controller.  The relay holds only
``enc``, ``ct`` and public metadata (member id, group name, epoch); opening needs the member's
static private key, which never leaves the member's keystore.

A member accepts an envelope only when it is addressed to it, signed by the controller it
trusts for that group (the first controller it accepted the group from, or the one it was told
to trust), and not older than the epoch it holds; it then forgets older epochs.

Receipts
--------

A member answers each envelope with its Ed25519 signature over
``CBOR ["pairkit/1 group receipt", controller id, member id, group, epoch, SHA-256(envelope),
ok]`` (:func:`signed_result`, in :class:`DeliveryResult` field 6).  A relay keeps it as a
:class:`GroupReceipt` (:class:`RelayReceipts`) and hands it back on :class:`ReceiptRequest`; the
controller believes it only after :func:`check_receipt` against the envelope waiting for that
member, and retries the others (:class:`RetryPolicy`, :class:`GroupRecord`).  docs/protocol.md
§15 specifies it; a relay can drop a receipt, never make, alter or move one.

Encrypted advertisement
-----------------------

In the manner of Bluetooth 5.4 Encrypted Advertising Data (Core Specification Supplement v11
Part A §1.23: Randomizer, encrypted payload, MIC), carried as pairkit service data (the same
128-bit service UUID as the hello, :mod:`transports.ble.adv`)::

    byte  0        0x81: bits 7-6 = 2, a group broadcast (a hello has 1 there, so
                   pairing/hello.py rejects it), bits 5-0 = format 1
    bytes 1-4      the group's epoch (big endian)
    bytes 5-12     randomizer: 8 fresh random bytes per advertisement
    bytes 13-16    the sender's sequence number for this group and epoch, from 1 (big endian)
    bytes 17-      ChaCha20-Poly1305(group key, nonce = randomizer || sequence number,
                   aad = "pairkit/1 group advert" || len(group) || group || bytes 0-16,
                   plaintext = sender id (8 bytes) || command)
    last 16 bytes  the Poly1305 tag (EAD's MIC is 4 bytes; we keep the full 16)

Overhead: 41 bytes per advertisement (:data:`ADVERT_OVERHEAD`), so a command fits in 167 bytes
of an extended advertisement (208 bytes of pairkit service data); a legacy advertisement has
room for 10 bytes of service data and so carries no group broadcast at all.

The nonce never repeats under one key: one sender never reuses a sequence number in an epoch,
and two senders collide only if their 64-bit randomizers do for the same number.  The receiver
tries the key of each group it listens to whose current epoch is the advertisement's (an epoch
no group of it has is refused first, cheaply: an old key of a removed member, a replay from
before a rekey, or a rekey this device missed), then checks the sender's replay window
(RFC 4303 §3.4.3: the highest number seen and a 64-wide bitmap below it), for at most
:data:`MAX_SENDERS` senders per group and epoch (the sender id is what a key holder wrote: a new
one past that is refused, never an older window dropped), one of them kept for the group's
controller.  A forged or altered
advertisement fails the tag.  Anyone holding the group key can send: a group key authenticates
the group, not one member (as with EAD).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature

from . import cbor, keyschedule
from .crypto import Rng, digest, ed25519_public
from .errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ExpiredError,
    NotFoundError,
    ReplayError,
    TooLargeError,
)
from .keystore import MAX_GROUP_EPOCH, device_id_of
from .wire import Message, decode_struct, encode_struct, field, message, struct

__all__ = [
    "ADVERT_MARKER",
    "ADVERT_OVERHEAD",
    "MAX_GROUP_NAME",
    "MAX_HELD_PER_CONTROLLER",
    "MAX_SENDERS",
    "DeliveryResult",
    "Forward",
    "ForwardReceipt",
    "GroupAdvert",
    "GroupEnvelope",
    "GroupMember",
    "GroupMessage",
    "GroupReceipt",
    "GroupReceiver",
    "GroupRecord",
    "HeldGroup",
    "KeyDelivery",
    "KeyReceipt",
    "ReceiptBatch",
    "ReceiptRequest",
    "RelayQueue",
    "RelayReceipts",
    "ReplayWindow",
    "RetryPolicy",
    "WrongEpochError",
    "check_group_name",
    "check_receipt",
    "decode_advert",
    "envelope_digest",
    "envelope_info",
    "is_group_advert",
    "open_group_envelope",
    "receipt_of",
    "receipt_statement",
    "seal_broadcast",
    "seal_group_envelope",
    "sender_id",
    "signed_result",
]

GROUP_KIND: Final = 2  #: bits 7-6 of byte 0 (a hello has HELLO_VERSION = 1 there)
ADVERT_FORMAT: Final = 1
ADVERT_MARKER: Final = (GROUP_KIND << 6) | ADVERT_FORMAT  #: 0x81
EPOCH_SIZE: Final = 4
RANDOMIZER_SIZE: Final = 8
SEQ_SIZE: Final = 4
SENDER_SIZE: Final = 8
TAG_SIZE: Final = 16
HEADER_SIZE: Final = 1 + EPOCH_SIZE + RANDOMIZER_SIZE + SEQ_SIZE  #: 17
ADVERT_OVERHEAD: Final = HEADER_SIZE + SENDER_SIZE + TAG_SIZE  #: 41
#: the last epoch: 4 bytes on the air; the keystore keeps keys up to it and no further
MAX_EPOCH: Final = MAX_GROUP_EPOCH
MAX_SEQ: Final = 2**32 - 1
WINDOW_SIZE: Final = 64
MAX_GROUP_NAME: Final = 32
MAX_MEMBERS: Final = 256
#: the most senders a member keeps replay windows for, per group and epoch: every member and
#: the controller (within an epoch the members only grow: a removal starts a new epoch)
MAX_SENDERS: Final = MAX_MEMBERS + 1
MAX_QUEUE: Final = 1024
MAX_BATCH: Final = 32
#: the most groups a member holds from one controller (attack review atk19g, finding 4: a
#: controller its owner let in made it hold any number).  Each costs the member a key and a
#: record rewritten on every keystore save, and one more key every broadcast heard at that
#: epoch is tried against: measured, 256 groups are 25 KB of keystore and 2.8-3.8 ms per
#: broadcast no key opens (2,048: 200 KB and 28-44 ms).  256, as many as a group has members:
#: a device sits in few groups of one controller, and keeps those it was removed from
#: (nobody tells it), so the bound leaves a long-lived controller room to spare.
MAX_HELD_PER_CONTROLLER: Final = 256

ID_SIZE: Final = 16
ENC_SIZE: Final = 32
SEALED_KEY_SIZE: Final = 32 + 16
SIGNATURE_SIZE: Final = 64
DIGEST_SIZE: Final = 32
CERT_MAX: Final = 1024  #: pairing.groupcert.CERT_MAX

_ENVELOPE_INFO = keyschedule.GROUP_KEY
_ENVELOPE_SIGNED = keyschedule.GROUP_ENVELOPE
_ADVERT_AAD = keyschedule.GROUP_ADVERT
_RECEIPT_SIGNED = keyschedule.GROUP_RECEIPT
_AGENT_SIGNED = keyschedule.GROUP_AGENT
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX_ID_RE = re.compile(r"[0-9a-f]{32}")


class WrongEpochError(ExpiredError):
    """A group broadcast under an epoch that is not the current one of any group listened to."""


# ---------------------------------------------------------------------------------------------
# Names and ids


def check_group_name(name: object) -> str:
    """A group name: 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit
    (it is printed, typed on command lines and bound into envelopes and advertisements)."""
    if not isinstance(name, str) or not name:
        raise ConfigError("a group name must be a non-empty text")
    if len(name) > MAX_GROUP_NAME or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{name[:40]!r} is not a usable group name: use 1 to {MAX_GROUP_NAME} letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _check_epoch(epoch: object, what: str = "a group epoch") -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= MAX_EPOCH:
        raise ConfigError(f"{what} must be a whole number from 1 to {MAX_EPOCH}")
    return epoch


def _check_hex_id(device_id: object, what: str) -> str:
    if not isinstance(device_id, str) or not _HEX_ID_RE.fullmatch(device_id):
        raise ConfigError(f"{what} must be a device id (32 lowercase hex digits)")
    return device_id


def sender_id(device_id: str) -> bytes:
    """The 8 bytes that name a sender inside a broadcast: the start of its device id."""
    return bytes.fromhex(_check_hex_id(device_id, "a sender"))[:SENDER_SIZE]


# ---------------------------------------------------------------------------------------------
# The envelope and the messages that carry it


@struct
class GroupEnvelope(Message):
    """One epoch's group key sealed to one member and signed by the controller (module
    docstring, "Envelope")."""

    controller: bytes = field(2, size=ID_SIZE)
    member: bytes = field(3, size=ID_SIZE)
    group: str = field(4, max_len=MAX_GROUP_NAME)
    epoch: int = field(5)
    enc: bytes = field(6, size=ENC_SIZE)
    ct: bytes = field(7, size=SEALED_KEY_SIZE)
    signature: bytes = field(8, size=SIGNATURE_SIZE)
    #: the controller's device certificate (DER) in a group trusted through the key server's
    #: CA (issue 14; pairing/groupcert.py); optional, outside the signature (it vouches for
    #: itself, and must name ``controller``)
    cert: bytes | None = field(9, max_len=CERT_MAX, default=None)

    def __post_init__(self) -> None:
        try:
            check_group_name(self.group)
            _check_epoch(self.epoch)
        except ConfigError as exc:
            raise DecodeError(f"a group key envelope is malformed: {exc}") from None

    def encode_bytes(self) -> bytes:
        """The envelope on its own (what a relay stores)."""
        return encode_struct(self)

    @classmethod
    def decode_bytes(cls, data: bytes) -> GroupEnvelope:
        """Decode what :meth:`encode_bytes` made, strictly (:class:`DecodeError`)."""
        return decode_struct(cls, data, max_size=512 + CERT_MAX)


@struct
class DeliveryResult(Message):
    """A member's answer about one envelope: taken, or refused and why.

    ``signature`` (field 6, added for issue 14 and optional, so a result without it still
    decodes) is the member's Ed25519 signature over its receipt statement
    (:func:`receipt_statement`): what lets a controller believe an answer that came back
    through a relay.  A relay's own answers (:class:`ForwardReceipt`) carry none.
    """

    group: str = field(2, max_len=MAX_GROUP_NAME)
    epoch: int = field(3)
    ok: bool = field(4)
    reason: str | None = field(5, max_len=200, default=None, one_line=True)
    signature: bytes | None = field(6, size=SIGNATURE_SIZE, default=None)


@message(type_id=90, max_size=48 * 1024)
class KeyDelivery(Message):
    """Controller or relay -> member, on a secure channel: envelopes for this member."""

    envelopes: tuple[GroupEnvelope, ...] = field(2, max_len=MAX_BATCH)


@message(type_id=91, max_size=16 * 1024)
class KeyReceipt(Message):
    """Member -> controller or relay: one result per envelope, in order."""

    results: tuple[DeliveryResult, ...] = field(2, max_len=MAX_BATCH)


@message(type_id=92, max_size=48 * 1024)
class Forward(Message):
    """Controller -> relay, on a secure channel: envelopes to store and deliver."""

    envelopes: tuple[GroupEnvelope, ...] = field(2, max_len=MAX_BATCH)


@message(type_id=93, max_size=16 * 1024)
class ForwardReceipt(Message):
    """Relay -> controller: one result per envelope (``ok``: queued for delivery), in order,
    and how many envelopes the relay now holds in all."""

    results: tuple[DeliveryResult, ...] = field(2, max_len=MAX_BATCH)
    queued: int = field(3)


# ---------------------------------------------------------------------------------------------
# Receipts: the member's signed word that it took (or refused) one envelope (issue 14)


@struct
class GroupReceipt(Message):
    """A member's signed receipt for one envelope, as a relay carries it back to the
    controller (module docstring, "Receipts").  ``envelope`` is :func:`envelope_digest` of the
    envelope answered; ``reason`` is the member's words for a refusal and is not signed."""

    controller: bytes = field(2, size=ID_SIZE)
    member: bytes = field(3, size=ID_SIZE)
    group: str = field(4, max_len=MAX_GROUP_NAME)
    epoch: int = field(5)
    envelope: bytes = field(6, size=DIGEST_SIZE)
    ok: bool = field(7)
    signature: bytes = field(8, size=SIGNATURE_SIZE)
    reason: str | None = field(9, max_len=200, default=None, one_line=True)

    def __post_init__(self) -> None:
        try:
            check_group_name(self.group)
            _check_epoch(self.epoch)
        except ConfigError as exc:
            raise DecodeError(f"a group receipt is malformed: {exc}") from None

    def encode_bytes(self) -> bytes:
        """The receipt on its own (what a relay stores)."""
        return encode_struct(self)

    @classmethod
    def decode_bytes(cls, data: bytes) -> GroupReceipt:
        """Decode what :meth:`encode_bytes` made, strictly (:class:`DecodeError`)."""
        return decode_struct(cls, data, max_size=512)


@message(type_id=110, max_size=2048)
class ReceiptRequest(Message):
    """Controller -> relay, on a secure channel: the receipts members gave for these
    envelopes (their :func:`envelope_digest`), if the relay holds any."""

    envelopes: tuple[bytes, ...] = field(2, size=DIGEST_SIZE, max_len=MAX_BATCH)


@message(type_id=111, max_size=16 * 1024)
class ReceiptBatch(Message):
    """Relay -> controller: the receipts it holds among those asked for (any order; none for
    an envelope not answered yet).  Only receipts naming the asking controller are given."""

    receipts: tuple[GroupReceipt, ...] = field(2, max_len=MAX_BATCH)


# ---------------------------------------------------------------------------------------------
# The group agent: commands end to end from the controller, broadcast by the agent (issue 14)

#: the longest command an agent broadcasts (what fits an extended advertisement)
MAX_COMMAND: Final = 208 - 41
#: the longest an agent keeps one command on the air (milliseconds)
MAX_AIR_MS: Final = 60_000


@message(type_id=114, max_size=2048)
class AgentCommand(Message):
    """Controller -> its group agent, on a secure channel: broadcast this command to the group
    (module docstring, "Group agent").  ``number`` counts the controller's commands to this
    agent for this group, from 1; ``cert`` is the controller's certificate in a group trusted
    through the CA."""

    group: str = field(2, max_len=MAX_GROUP_NAME)
    epoch: int = field(3)
    number: int = field(4)
    command: bytes = field(5, max_len=MAX_COMMAND)
    air_ms: int = field(6)
    signature: bytes = field(7, size=SIGNATURE_SIZE)
    cert: bytes | None = field(8, max_len=CERT_MAX, default=None)

    def __post_init__(self) -> None:
        # Its group is shown and keyed on before its signature is checked (atk22 finding C).
        _check_message_group(self.group, "a group agent's command")


@message(type_id=115, max_size=512)
class AgentResult(Message):
    """Agent -> controller: the command ``number`` was broadcast (with the agent's sequence
    number ``seq``), or refused and why."""

    group: str = field(2, max_len=MAX_GROUP_NAME)
    number: int = field(3)
    ok: bool = field(4)
    seq: int | None = field(5, default=None)
    reason: str | None = field(6, max_len=200, default=None, one_line=True)

    def __post_init__(self) -> None:
        _check_message_group(self.group, "a group agent's answer")


def _check_message_group(group: str, what: str) -> None:
    """A message's group name, held to :func:`check_group_name` when it is read (the
    error does not repeat what the peer sent)."""
    try:
        check_group_name(group)
    except ConfigError:
        raise DecodeError(f"{what} is malformed: its group is not a group name") from None


def agent_statement(
    controller: bytes, agent: bytes, group: str, epoch: int, number: int, command: bytes,
    air_ms: int,
) -> bytes:
    """What a controller signs for its agent."""
    return cbor.encode([_AGENT_SIGNED, controller, agent, group, epoch, number, command, air_ms])


def sign_agent_command(
    ks: ReceiptSigner, *, agent: bytes, group: str, epoch: int, number: int, command: bytes,
    air_ms: int, cert: bytes | None = None,
) -> AgentCommand:
    """A command for ``agent`` to broadcast to ``group`` at ``epoch``, signed by the controller
    ``ks`` (:class:`ConfigError` for a command that cannot be sent)."""
    check_group_name(group)
    _check_epoch(epoch)
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_SEQ:
        raise ConfigError(f"a command number is from 1 to {MAX_SEQ}")
    if not isinstance(command, bytes) or len(command) > MAX_COMMAND:
        raise ConfigError(f"an agent broadcasts a command of at most {MAX_COMMAND} bytes")
    if isinstance(air_ms, bool) or not isinstance(air_ms, int) or not 1 <= air_ms <= MAX_AIR_MS:
        raise ConfigError(f"an agent keeps a command on the air 1 to {MAX_AIR_MS} ms")
    me = bytes.fromhex(ks.device_id)
    signature = ks.sign(agent_statement(me, agent, group, epoch, number, command, air_ms))
    return AgentCommand(group, epoch, number, command, air_ms, signature, cert)


def check_agent_command(
    msg: AgentCommand, *, agent: bytes, held: HeldGroup | None, controller_signing: bytes | None,
    last_number: int,
) -> None:
    """An agent's checks of a command (module docstring, "Group agent"): it holds the group's
    key at that epoch, the command is signed by that group's controller (whose key is
    ``controller_signing``) for this agent, and its number is above ``last_number``.
    :class:`AuthenticationError`, :class:`ReplayError` or :class:`ExpiredError` says which."""
    group = msg.group
    if held is None:
        raise AuthenticationError(f"refused a command for group {group!r}: this agent holds "
                                  "no key of that group")
    if controller_signing is None:
        raise AuthenticationError(f"refused a command for group {group!r}: its controller is "
                                  "not a device this agent can check")
    controller = bytes.fromhex(held.controller)
    statement = agent_statement(controller, agent, group, msg.epoch, msg.number, msg.command,
                                msg.air_ms)
    key = ed25519_public(controller_signing, f"refused a command for group {group!r}: its "
                         "controller's")
    try:
        key.verify(msg.signature, statement)
    except (InvalidSignature, ValueError):
        raise AuthenticationError(
            f"refused a command for group {group!r}: it is not signed by the group's "
            f"controller {held.controller[:8]} for this agent"
        ) from None
    if msg.number <= last_number:
        raise ReplayError(f"refused a command for group {group!r}: number {msg.number} was "
                          f"already seen (the last was {last_number})")
    if msg.epoch != held.epoch:
        raise ExpiredError(f"refused a command for group {group!r}: it is for epoch "
                           f"{msg.epoch}, this agent holds epoch {held.epoch}")
    if not 1 <= msg.air_ms <= MAX_AIR_MS:
        raise ExpiredError(f"refused a command for group {group!r}: {msg.air_ms} ms on the "
                           "air is out of range")


def envelope_digest(env: GroupEnvelope) -> bytes:
    """SHA-256 of the encoded envelope: what a receipt names.  HPKE's fresh ephemeral key
    makes every sealed envelope different, so a receipt answers one envelope, never another of
    the same member, group and epoch (a group deleted and made again starts at epoch 1 again)."""
    return digest(env.encode_bytes(), DIGEST_SIZE)


def receipt_statement(
    controller: bytes, member: bytes, group: str, epoch: int, envelope: bytes, ok: bool
) -> bytes:
    """What a member signs about one envelope (module docstring, "Receipts")."""
    return cbor.encode([_RECEIPT_SIGNED, controller, member, group, epoch, envelope, ok])


class ReceiptSigner(Protocol):
    """What a member's keystore offers to sign receipts (pairing.keystore.Keystore)."""

    @property
    def device_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def signed_result(
    ks: ReceiptSigner, env: GroupEnvelope, ok: bool, reason: str | None = None
) -> DeliveryResult:
    """A member's answer about ``env``, signed: the statement names this member (whoever the
    envelope was addressed to), so a signed refusal of someone else's envelope says nothing
    about that someone."""
    me = bytes.fromhex(ks.device_id)
    statement = receipt_statement(
        env.controller, me, env.group, env.epoch, envelope_digest(env), ok
    )
    short = reason[:200] if reason is not None else None
    return DeliveryResult(env.group, env.epoch, ok, short, ks.sign(statement))


def receipt_of(env: GroupEnvelope, result: DeliveryResult, member: bytes) -> GroupReceipt | None:
    """The receipt that ``member``'s ``result`` about ``env`` amounts to, for a relay to keep
    and a controller to check; ``None`` when the result carries no signature."""
    if result.signature is None:
        return None
    return GroupReceipt(
        env.controller, member, env.group, env.epoch, envelope_digest(env), result.ok,
        result.signature, result.reason,
    )


def check_receipt(
    receipt: GroupReceipt, *, expected: GroupEnvelope, member_signing: bytes
) -> bool:
    """Whether the member took ``expected`` (True) or refused it (False), on its signed word.

    :class:`ReplayError` when ``receipt`` answers another envelope (an older epoch, an earlier
    incarnation of the group, another member's); :class:`AuthenticationError` when its
    signature is not the member's (forged by a relay, or altered).  Nothing else is believed:
    a relay's word that it handed an envelope over is no receipt.
    """
    if (
        receipt.envelope != envelope_digest(expected)
        or receipt.member != expected.member
        or receipt.controller != expected.controller
        or (receipt.group, receipt.epoch) != (expected.group, expected.epoch)
    ):
        raise ReplayError(
            f"a receipt for another envelope than the one waiting ({expected.group} epoch "
            f"{expected.epoch}): refused"
        )
    statement = receipt_statement(
        receipt.controller, receipt.member, receipt.group, receipt.epoch, receipt.envelope,
        receipt.ok,
    )
    key = ed25519_public(member_signing, f"a receipt for {expected.group} epoch "
                         f"{expected.epoch}: its member's")
    try:
        key.verify(receipt.signature, statement)
    except (InvalidSignature, ValueError):
        raise AuthenticationError(
            f"a receipt for {expected.group} epoch {expected.epoch} is not signed by its "
            "member (forged or altered): refused"
        ) from None
    return receipt.ok


def envelope_info(controller: bytes, member: bytes, group: str, epoch: int) -> bytes:
    """HPKE ``info`` of an envelope: the binding of controller, member, group and epoch."""
    return cbor.encode([_ENVELOPE_INFO, controller, member, group, epoch])


def _signed_part(env: GroupEnvelope) -> bytes:
    return cbor.encode(
        [_ENVELOPE_SIGNED, env.controller, env.member, env.group, env.epoch, env.enc, env.ct]
    )


class GroupSealer(Protocol):
    """What a controller's keystore offers to seal envelopes (pairing.keystore.Keystore)."""

    @property
    def device_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...

    def seal_group_key(
        self, group: str, epoch: int, recipient_public: bytes, info: bytes, aad: bytes = b""
    ) -> tuple[bytes, bytes]: ...


class GroupOpener(Protocol):
    """What a member's keystore offers to take envelopes (pairing.keystore.Keystore)."""

    @property
    def device_id(self) -> str: ...

    def accept_group_key(
        self, group: str, epoch: int, enc: bytes, ct: bytes, info: bytes, aad: bytes = b""
    ) -> None: ...

    def group_epochs(self, group: str) -> tuple[int, ...]: ...

    def forget_group(self, group: str, epoch: int | None = None) -> None: ...


class GroupCipher(Protocol):
    """The group AEAD of a keystore (pairing.keystore.Keystore)."""

    def group_encrypt(
        self, group: str, epoch: int, nonce: bytes, plaintext: bytes, aad: bytes = b""
    ) -> bytes: ...

    def group_decrypt(
        self, group: str, epoch: int, nonce: bytes, ciphertext: bytes, aad: bytes = b""
    ) -> bytes: ...


def seal_group_envelope(
    ks: GroupSealer, *, group: str, epoch: int, member_public: bytes
) -> GroupEnvelope:
    """Seal ``group``'s key of ``epoch`` to the member whose static key is ``member_public``
    and sign it (module docstring, "Envelope").  The member id is derived from the key, so the
    binding cannot name one device and seal to another."""
    check_group_name(group)
    _check_epoch(epoch)
    controller = bytes.fromhex(ks.device_id)
    member = bytes.fromhex(device_id_of(member_public))
    if member == controller:
        raise ConfigError("a controller does not send a group key to itself")
    info = envelope_info(controller, member, group, epoch)
    enc, ct = ks.seal_group_key(group, epoch, member_public, info)
    unsigned = GroupEnvelope(controller, member, group, epoch, enc, ct, bytes(SIGNATURE_SIZE))
    return dataclasses.replace(unsigned, signature=ks.sign(_signed_part(unsigned)))


@dataclasses.dataclass(frozen=True)
class HeldGroup:
    """A group as a member knows it: who controls it and the epoch whose key it holds."""

    name: str
    controller: str  #: the controller's device id (hex)
    epoch: int

    def __post_init__(self) -> None:
        check_group_name(self.name)
        _check_hex_id(self.controller, "a group's controller")
        _check_epoch(self.epoch)

    def to_plain(self) -> dict[str, Any]:
        return {"controller": self.controller, "epoch": self.epoch}

    @classmethod
    def from_plain(cls, name: str, data: Mapping[str, Any]) -> HeldGroup:
        try:
            return cls(name, data["controller"], data["epoch"])
        except (KeyError, TypeError, ConfigError):
            raise DecodeError(f"the record of group {name!r} is damaged") from None


def open_group_envelope(
    ks: GroupOpener,
    env: GroupEnvelope,
    *,
    controller_key: Callable[[bytes], bytes | None],
    held: HeldGroup | None = None,
    pinned: str | None = None,
    held_from_controller: int = 0,
) -> HeldGroup:
    """Check ``env`` and keep its key inside ``ks``; returns what the member now holds.

    ``controller_key(device id)`` gives the Ed25519 key of a device this member would accept
    as a group controller (a known, authenticated peer), or ``None``.  ``held`` is the group as
    the member knows it already (then only its controller may send a key, and not an older
    epoch); ``pinned`` (a device id) is the only controller accepted for a group not held yet.
    ``held_from_controller`` is how many groups the member holds from the controller ``env``
    names: a group not held yet is taken only below :data:`MAX_HELD_PER_CONTROLLER`.

    Raises :class:`AuthenticationError` for an envelope addressed to another device, from a
    device that is not the group's controller, with a bad signature, or that does not open;
    :class:`ReplayError` for an epoch older than the one held; :class:`TooLargeError` for a
    group more than a controller may give.  Keys of older epochs are forgotten once the new
    one is in.
    """
    me = bytes.fromhex(ks.device_id)
    group = env.group
    if env.member != me:
        raise AuthenticationError(
            f"refused an envelope for group {group!r}: it is for another device"
        )
    controller = env.controller.hex()
    expected = held.controller if held is not None else pinned
    if expected is not None and controller != expected:
        raise AuthenticationError(
            f"refused an envelope for group {group!r}: it names {controller[:8]} as controller, "
            f"but this device takes that group's keys only from {expected[:8]}"
        )
    signing = controller_key(env.controller)
    if signing is None:
        raise AuthenticationError(
            f"refused an envelope for group {group!r}: its controller {controller[:8]} is not "
            "a device this one has paired with"
        )
    key = ed25519_public(signing, f"refused an envelope for group {group!r}: its controller "
                         f"{controller[:8]}'s")
    try:
        key.verify(env.signature, _signed_part(env))
    except (InvalidSignature, ValueError):
        raise AuthenticationError(
            f"refused an envelope for group {group!r}: it is not signed by its controller "
            f"{controller[:8]} (forged or altered)"
        ) from None
    if held is None and held_from_controller >= MAX_HELD_PER_CONTROLLER:
        # after the signature: only the controller itself learns that it reached the bound
        raise TooLargeError(
            f"this device holds {MAX_HELD_PER_CONTROLLER} groups from controller "
            f"{controller[:8]} already, the most it takes from one controller"
        )
    if held is not None and env.epoch < held.epoch:
        raise ReplayError(
            f"refused an envelope for group {group!r}: epoch {env.epoch} is older than the "
            f"epoch {held.epoch} this device holds"
        )
    ks.accept_group_key(
        group, env.epoch, env.enc, env.ct, envelope_info(env.controller, me, group, env.epoch)
    )
    for old in ks.group_epochs(group):
        if old < env.epoch:
            ks.forget_group(group, old)
    return HeldGroup(group, controller, env.epoch)


# ---------------------------------------------------------------------------------------------
# The encrypted advertisement


def is_group_advert(payload: bytes) -> bool:
    """Whether service data looks like a group broadcast (its kind bits), not a hello."""
    return bool(payload) and payload[0] >> 6 == GROUP_KIND


@dataclasses.dataclass(frozen=True)
class GroupAdvert:
    """A decoded group broadcast, still encrypted (module docstring, "Encrypted
    advertisement")."""

    epoch: int
    randomizer: bytes
    seq: int
    sealed: bytes  #: ciphertext of sender id || command, then the 16-byte tag

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int):
            raise ConfigError("an epoch is a whole number")
        if not 1 <= self.epoch <= MAX_EPOCH:
            raise ConfigError(f"an advertised epoch must be from 1 to {MAX_EPOCH}")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int):
            raise ConfigError("a sequence number is a whole number")
        if not 1 <= self.seq <= MAX_SEQ:
            raise ConfigError(f"a sequence number must be from 1 to {MAX_SEQ}")
        if not isinstance(self.randomizer, bytes) or len(self.randomizer) != RANDOMIZER_SIZE:
            raise ConfigError(f"a randomizer is {RANDOMIZER_SIZE} bytes")
        if not isinstance(self.sealed, bytes) or len(self.sealed) < SENDER_SIZE + TAG_SIZE:
            raise ConfigError("a group broadcast is too short to hold a sender and a tag")

    @property
    def header(self) -> bytes:
        return (
            bytes([ADVERT_MARKER])
            + self.epoch.to_bytes(EPOCH_SIZE, "big")
            + self.randomizer
            + self.seq.to_bytes(SEQ_SIZE, "big")
        )

    @property
    def nonce(self) -> bytes:
        return self.randomizer + self.seq.to_bytes(SEQ_SIZE, "big")

    def encode(self) -> bytes:
        return self.header + self.sealed


def decode_advert(payload: bytes) -> GroupAdvert:
    """Parse a group broadcast strictly; :class:`DecodeError` for anything else (a hello
    included)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DecodeError("a group broadcast is bytes")
    data = bytes(payload)
    if not data or data[0] >> 6 != GROUP_KIND:
        raise DecodeError("not a group broadcast")
    if data[0] != ADVERT_MARKER:
        raise DecodeError(f"unsupported group broadcast format {data[0] & 0x3F}")
    if len(data) < ADVERT_OVERHEAD:
        raise DecodeError(f"a group broadcast is at least {ADVERT_OVERHEAD} bytes, not {len(data)}")
    epoch = int.from_bytes(data[1:5], "big")
    seq = int.from_bytes(data[13:17], "big")
    if epoch == 0 or seq == 0:
        raise DecodeError("a group broadcast with epoch or sequence number 0")
    return GroupAdvert(epoch, data[5:13], seq, data[HEADER_SIZE:])


def _advert_aad(group: str, header: bytes) -> bytes:
    name = group.encode()
    return _ADVERT_AAD + bytes([len(name)]) + name + header


def seal_broadcast(
    ks: GroupCipher,
    *,
    group: str,
    epoch: int,
    sender: bytes,
    seq: int,
    command: bytes,
    rng: Rng,
    max_payload: int | None = None,
) -> bytes:
    """A group broadcast of ``command`` under ``group``'s key of ``epoch`` (the caller keeps
    ``seq`` unique for this sender, group and epoch).  :class:`TooLargeError` if the result
    would exceed ``max_payload``."""
    check_group_name(group)
    if not isinstance(sender, bytes) or len(sender) != SENDER_SIZE:
        raise ConfigError(f"a sender id is {SENDER_SIZE} bytes")
    if not isinstance(command, bytes):
        raise ConfigError("a command is bytes")
    size = ADVERT_OVERHEAD + len(command)
    if max_payload is not None and size > max_payload:
        raise TooLargeError(
            f"a command of {len(command)} bytes makes a {size}-byte broadcast; this radio "
            f"carries {max_payload} bytes, so a command may be {max_payload - ADVERT_OVERHEAD} "
            "bytes at most"
        )
    randomizer = rng(RANDOMIZER_SIZE)
    if not isinstance(randomizer, bytes) or len(randomizer) != RANDOMIZER_SIZE:
        raise ConfigError(f"the random source must return {RANDOMIZER_SIZE} bytes")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise ConfigError(f"a sequence number must be from 1 to {MAX_SEQ}")
    _check_epoch(epoch)
    tail = seq.to_bytes(SEQ_SIZE, "big")
    header = bytes([ADVERT_MARKER]) + epoch.to_bytes(EPOCH_SIZE, "big") + randomizer + tail
    sealed = ks.group_encrypt(
        group, epoch, randomizer + tail, sender + command, _advert_aad(group, header)
    )
    return header + sealed


@dataclasses.dataclass(frozen=True)
class ReplayWindow:
    """One sender's sliding window (RFC 4303 §3.4.3): the highest sequence number accepted
    and a bitmap of the ``size`` numbers up to it (bit i: ``top - i`` was accepted)."""

    top: int = 0
    bitmap: int = 0
    size: int = WINDOW_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 1 <= self.size <= 1024:
            raise ConfigError("a replay window holds 1 to 1024 numbers")
        if not isinstance(self.top, int) or not 0 <= self.top <= MAX_SEQ:
            raise ConfigError("a replay window's top is a sequence number")
        if not isinstance(self.bitmap, int) or not 0 <= self.bitmap < 1 << self.size:
            raise ConfigError("a replay window's bitmap does not fit its size")

    def check(self, seq: int) -> None:
        """Raise :class:`ReplayError` if ``seq`` was seen or is too old to tell."""
        if seq > self.top:
            return
        offset = self.top - seq
        if offset >= self.size:
            raise ReplayError(
                f"sequence number {seq} is too old (the newest is {self.top}); refused"
            )
        if self.bitmap >> offset & 1:
            raise ReplayError(f"sequence number {seq} was already received; replay refused")

    def accept(self, seq: int) -> ReplayWindow:
        """The window after accepting ``seq`` (after :meth:`check`, which it calls)."""
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
            raise DecodeError(f"a sequence number must be from 1 to {MAX_SEQ}")
        self.check(seq)
        mask = (1 << self.size) - 1
        if seq > self.top:
            shift = seq - self.top
            bitmap = ((self.bitmap << shift) | 1) & mask if shift < self.size else 1
            return ReplayWindow(seq, bitmap, self.size)
        return ReplayWindow(self.top, self.bitmap | 1 << (self.top - seq), self.size)


@dataclasses.dataclass(frozen=True)
class GroupMessage:
    """A command received from a group broadcast."""

    group: str
    epoch: int
    sender: bytes  #: the first 8 bytes of the sender's device id
    seq: int
    command: bytes


WindowKey = tuple[str, int, bytes]


class GroupReceiver:
    """Opens group broadcasts for the groups it listens to and rejects replays.

    ``epochs`` maps each group listened to to its current epoch (the keystore must hold that
    epoch's key).  ``controllers`` maps a group to its controller's sender id
    (:func:`sender_id`): of the :data:`MAX_SENDERS` replay windows a group and epoch get, one
    is kept for it, so that members' made-up sender ids never shut the controller out
    (attack review atk19y, finding 6).  ``windows`` is the replay state, keyed by (group,
    epoch, sender); pass a dict restored with :meth:`windows_from_plain` to keep it across
    runs.
    """

    def __init__(
        self,
        ks: GroupCipher,
        epochs: Mapping[str, int],
        *,
        windows: dict[WindowKey, ReplayWindow] | None = None,
        window_size: int = WINDOW_SIZE,
        controllers: Mapping[str, bytes] | None = None,
    ) -> None:
        self._ks = ks
        self._epochs: dict[str, int] = {}
        self._controllers: dict[str, bytes] = {}
        self.windows: dict[WindowKey, ReplayWindow] = windows if windows is not None else {}
        self.window_size = window_size
        for group, epoch in epochs.items():
            self.set_epoch(group, epoch, controller=(controllers or {}).get(group))

    @property
    def epochs(self) -> Mapping[str, int]:
        return dict(self._epochs)

    @property
    def controllers(self) -> Mapping[str, bytes]:
        """The controller's sender id of each group whose controller is known."""
        return dict(self._controllers)

    def set_epoch(self, group: str, epoch: int, *, controller: bytes | None = None) -> None:
        """Listen to ``group`` at ``epoch`` (after a rekey); older windows are dropped.
        ``controller`` (its :func:`sender_id`), when given, is the group's controller from
        now on, whose sender keeps a window of its own."""
        self._epochs[check_group_name(group)] = _check_epoch(epoch)
        stale = [k for k in self.windows if k[0] == group and k[1] != epoch]
        if controller is not None:
            if not isinstance(controller, bytes) or len(controller) != SENDER_SIZE:
                raise ConfigError(f"a controller's sender id is {SENDER_SIZE} bytes")
            if self._controllers.get(group, controller) != controller:
                # another controller's group of that name, another key: what was heard under
                # the old one holds no window of the new one
                stale = [k for k in self.windows if k[0] == group]
            self._controllers[group] = controller
        for key in stale:
            del self.windows[key]

    def forget(self, group: str) -> None:
        self._epochs.pop(group, None)
        self._controllers.pop(group, None)
        for key in [k for k in self.windows if k[0] == group]:
            del self.windows[key]

    def receive(self, payload: bytes) -> GroupMessage:
        """Decode, authenticate and replay-check one broadcast.

        :class:`DecodeError`: not a (well-formed) group broadcast.  :class:`WrongEpochError`:
        no group listened to is at its epoch.  :class:`AuthenticationError`: no key opens it
        (forged, altered, or for a group this device is not in).  :class:`ReplayError`: seen
        before.  :class:`TooLargeError`: a new sender when the group and epoch have
        :data:`MAX_SENDERS` already.  The replay state changes only for an accepted broadcast.
        """
        advert = decode_advert(payload)
        if not self._epochs:
            raise AuthenticationError("a group broadcast, and this device is in no group")
        candidates = [g for g, e in self._epochs.items() if e == advert.epoch]
        if not candidates:
            held = ", ".join(f"{g} at {e}" for g, e in sorted(self._epochs.items())) or "none"
            raise WrongEpochError(
                f"a broadcast under epoch {advert.epoch}, the current epoch of no group this "
                f"device listens to ({held}): refused"
            )
        for group in candidates:
            try:
                plain = self._ks.group_decrypt(
                    group,
                    advert.epoch,
                    advert.nonce,
                    advert.sealed,
                    _advert_aad(group, advert.header),
                )
            except (AuthenticationError, NotFoundError):
                continue
            sender, command = plain[:SENDER_SIZE], plain[SENDER_SIZE:]
            key = (group, advert.epoch, sender)
            window = self.windows.get(key)
            if window is None:
                self._check_room(group, advert.epoch, sender)
                window = ReplayWindow(size=self.window_size)
            self.windows[key] = window.accept(advert.seq)
            return GroupMessage(group, advert.epoch, sender, advert.seq, command)
        raise AuthenticationError(
            "a group broadcast did not authenticate: forged, altered, or for another group"
        )

    def _check_room(self, group: str, epoch: int, sender: bytes) -> None:
        """Refuse (:class:`TooLargeError`) a window to a sender not heard yet at ``epoch``
        when the group has none left for it.  The sender id is
        whatever a key holder wrote: one window per id would let a member grow every other
        member's state without bound (attack review atk19g, finding 1), so a group and epoch
        get :data:`MAX_SENDERS`, as many as it has key holders.  One of them is the
        controller's, always free for it: a member taking every window before the
        controller spoke shut it out until the next epoch (atk19y, finding 6)."""
        controller = self._controllers.get(group)
        if sender == controller:
            return
        others = sum(1 for g, e, s in self.windows
                     if (g, e) == (group, epoch) and s != controller)
        room = MAX_SENDERS if controller is None else MAX_MEMBERS
        if others >= room:
            whose = ("already (as many as a group has members and a controller)"
                     if controller is None else
                     "besides its controller already (as many as a group has members)")
            raise TooLargeError(
                f"a broadcast to {group!r} from a sender this device has not heard at epoch "
                f"{epoch}, which has {room} senders {whose}: refused"
            )

    def windows_to_plain(self) -> list[list[Any]]:
        """The replay state as plain data (for a keystore setting)."""
        return [[g, e, s, w.top, w.bitmap, w.size] for (g, e, s), w in sorted(self.windows.items())]

    @staticmethod
    def windows_from_plain(data: Iterable[Any]) -> dict[WindowKey, ReplayWindow]:
        out: dict[WindowKey, ReplayWindow] = {}
        try:
            for g, e, s, top, bitmap, size in data:
                out[(check_group_name(g), _check_epoch(e), bytes(s))] = ReplayWindow(
                    top, bitmap, size
                )
        except (TypeError, ValueError):
            raise DecodeError("the stored replay state is damaged") from None
        return out


# ---------------------------------------------------------------------------------------------
# The controller's bookkeeping


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a controller retries a member that has not confirmed (issue 14): the first retry
    ``first`` seconds after an attempt, each later one ``factor`` times longer, never more than
    ``cap`` apart, and after ``attempts`` attempts the member is reported unreachable (until
    someone asks again: ``pairkit group sync NAME --retry-unreachable``)."""

    first: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    attempts: int = 6

    def __post_init__(self) -> None:
        for name in ("first", "factor", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"a retry policy's {name} is a number")
        if not 0.01 <= self.first <= 86400 or not 0.01 <= self.cap <= 86400:
            raise ConfigError("retry delays must be from 0.01 to 86400 seconds")
        if self.cap < self.first:
            raise ConfigError("the longest retry delay cannot be shorter than the first")
        if not 1 <= self.factor <= 10:
            raise ConfigError("a retry delay grows by a factor from 1 to 10")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigError("a number of attempts is a whole number")
        if not 1 <= self.attempts <= 1000:
            raise ConfigError("a member is tried 1 to 1000 times before it is unreachable")

    def delay(self, attempts: int) -> float:
        """Seconds from the ``attempts``-th attempt (1 for the first) to the next one."""
        exponent = min(max(attempts - 1, 0), 64)
        return float(min(self.cap, self.first * self.factor**exponent))


#: how members trust a group's controller (``pairkit group create --trust``)
PAIRED: Final = "paired"
CA: Final = "ca"
TRUSTS: Final = (PAIRED, CA)

#: a member's delivery state, as ``pairkit group status`` shows it
CONFIRMED: Final = "confirmed"
PENDING: Final = "pending"
UNREACHABLE: Final = "unreachable"


@dataclasses.dataclass(frozen=True)
class GroupMember:
    """A member as the controller records it.

    ``via`` is the relay's device id when the member is reached through one; ``transport`` and
    ``address`` say where to reach the first hop when not where the keystore last saw it;
    ``delivered`` is the newest epoch whose envelope the member *confirmed* with a verified
    signed receipt (:func:`check_receipt`), 0 if none.  Until then the member is pending:
    ``envelope`` is the sealed envelope of the current epoch waiting for its receipt (sent
    again, byte for byte, on each attempt), ``attempts`` the attempts made at this epoch,
    ``next_try`` when the next is due (Unix seconds), ``note`` what the last attempt gave, and
    ``unreachable`` set once the attempts ran out.
    """

    device_id: str
    name: str
    via: str | None = None
    transport: str | None = None
    address: str | None = None
    delivered: int = 0
    envelope: bytes | None = None
    attempts: int = 0
    next_try: float = 0.0
    note: str | None = None
    unreachable: bool = False
    #: the member's keys from its certificate, when the controller knows it by one (a group
    #: trusted through the CA) rather than by a pairing
    static: bytes | None = None
    signing: bytes | None = None

    def __post_init__(self) -> None:
        _check_hex_id(self.device_id, "a member")
        for what in ("static", "signing"):
            key = getattr(self, what)
            if key is not None and (not isinstance(key, bytes) or len(key) != 32):
                raise ConfigError(f"a member's {what} key is 32 bytes")
        if self.via is not None:
            _check_hex_id(self.via, "a relay")
            if self.via == self.device_id:
                raise ConfigError("a member cannot be its own relay")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("a member needs a name")
        for what in ("delivered", "attempts"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"a member's {what} is a whole number, not negative")
        if isinstance(self.next_try, bool) or not isinstance(self.next_try, int | float):
            raise ConfigError("a member's next try is a time")
        if self.envelope is not None and not isinstance(self.envelope, bytes):
            raise ConfigError("a member's waiting envelope is bytes")
        if self.note is not None and not isinstance(self.note, str):
            raise ConfigError("a member's note is text")
        if not isinstance(self.unreachable, bool):
            raise ConfigError("a member's unreachable flag is true or false")

    def state(self, epoch: int) -> str:
        """:data:`CONFIRMED`, :data:`PENDING` or :data:`UNREACHABLE` at the group's ``epoch``."""
        if self.delivered >= epoch:
            return CONFIRMED
        return UNREACHABLE if self.unreachable else PENDING

    def waiting(self) -> GroupEnvelope | None:
        """The envelope waiting for this member's receipt, if any."""
        if self.envelope is None:
            return None
        return GroupEnvelope.decode_bytes(self.envelope)

    def to_plain(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "via": self.via,
            "transport": self.transport,
            "address": self.address,
            "delivered": self.delivered,
            "envelope": self.envelope,
            "attempts": self.attempts,
            "next_try": self.next_try,
            "note": self.note,
            "unreachable": self.unreachable,
            "static": self.static,
            "signing": self.signing,
        }


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """A group as its controller records it: the current epoch and the members."""

    name: str
    epoch: int = 1
    members: tuple[GroupMember, ...] = ()
    #: how members come to trust the controller: :data:`PAIRED` (a direct pairing with it)
    #: or :data:`CA` (its certificate from the key server's CA, in every envelope)
    trust: str = "paired"

    def __post_init__(self) -> None:
        check_group_name(self.name)
        _check_epoch(self.epoch)
        if self.trust not in TRUSTS:
            raise ConfigError(f"a group's trust is one of {', '.join(TRUSTS)}")
        ids = [m.device_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"group {self.name!r} lists a member twice")
        if len(ids) > MAX_MEMBERS:
            raise TooLargeError(f"a group has at most {MAX_MEMBERS} members")

    def member(self, device_id: str) -> GroupMember | None:
        return next((m for m in self.members if m.device_id == device_id), None)

    def with_member(self, member: GroupMember) -> GroupRecord:
        """The group with ``member`` added (nothing delivered to it yet); ConfigError if it
        is in already."""
        if self.member(member.device_id) is not None:
            raise ConfigError(f"{member.name} is already a member of {self.name}")
        fresh = GroupMember(member.device_id, member.name, member.via, member.transport,
                            member.address, static=member.static, signing=member.signing)
        return dataclasses.replace(self, members=(*self.members, fresh))

    def key_given(self) -> bool:
        """Whether the current epoch's key may be held by a device other than the controller:
        a member confirmed it, or an envelope of it was sealed to a member (it may have been
        opened, whatever its receipt).  Until then nothing can have been broadcast under it
        but by the controller itself."""
        return any(m.delivered >= self.epoch or m.envelope is not None for m in self.members)

    def joined(self, members: Sequence[GroupMember], *, key_used: bool) -> GroupRecord:
        """The group with ``members`` added (:meth:`with_member`), at the next epoch when its
        current key may have protected a broadcast: ``key_used`` (the controller broadcast
        under it) or :meth:`key_given` (a member holds it, and any member may send).  Then
        every member, the earlier ones too, needs the new key, and nothing sealed before the
        new members joined opens under what they are given (attack review atk19g, finding 3:
        an added member read the broadcasts of the epoch it joined at).  Several members
        added together make one new epoch."""
        if not members:
            raise ConfigError("name at least one member to add")
        record = self
        for member in members:
            record = record.with_member(member)
        return record.rekeyed() if key_used or self.key_given() else record

    def without_member(self, device_id: str) -> GroupRecord:
        """The group without that member, at the next epoch: every remaining member needs the
        new key.  :class:`NotFoundError` if it is not a member."""
        if self.member(device_id) is None:
            raise NotFoundError(f"{device_id[:8]} is not a member of {self.name}")
        if self.epoch >= MAX_EPOCH:
            raise ConfigError(f"group {self.name} has used every epoch; create a new group")
        kept = tuple(m for m in self.members if m.device_id != device_id)
        return dataclasses.replace(self, members=kept).rekeyed()

    def rekeyed(self) -> GroupRecord:
        """The group at the next epoch with the same members, none confirmed at it yet."""
        if self.epoch >= MAX_EPOCH:
            raise ConfigError(f"group {self.name} has used every epoch; create a new group")
        members = tuple(
            dataclasses.replace(m, envelope=None, attempts=0, next_try=0.0, note=None,
                                unreachable=False)
            for m in self.members
        )
        return dataclasses.replace(self, epoch=self.epoch + 1, members=members)

    def pending(self) -> tuple[GroupMember, ...]:
        """Members that have not confirmed the current epoch (unreachable ones included)."""
        return tuple(m for m in self.members if m.delivered < self.epoch)

    def due(self, now: float) -> tuple[GroupMember, ...]:
        """Pending members to try at ``now``: not given up on, and their next try is due."""
        return tuple(m for m in self.pending() if not m.unreachable and m.next_try <= now)

    def next_due(self) -> float | None:
        """When the next pending member is due (Unix s), or None if none is left to try."""
        times = [m.next_try for m in self.pending() if not m.unreachable]
        return min(times) if times else None

    def _replace_member(self, device_id: str, **changes: Any) -> GroupRecord:
        members = tuple(
            dataclasses.replace(m, **changes) if m.device_id == device_id else m
            for m in self.members
        )
        return dataclasses.replace(self, members=members)

    def waiting_for(self, device_id: str, envelope: bytes) -> GroupRecord:
        """Record the sealed envelope of the current epoch that ``device_id`` must confirm."""
        return self._replace_member(device_id, envelope=envelope)

    def attempted(
        self, device_id: str, now: float, policy: RetryPolicy, note: str
    ) -> GroupRecord:
        """Count one attempt that did not confirm; the next is due after the policy's delay,
        or the member is unreachable when the attempts ran out."""
        m = self.member(device_id)
        if m is None:
            return self
        attempts = m.attempts + 1
        return self._replace_member(
            device_id, attempts=attempts, next_try=now + policy.delay(attempts),
            note=note[:300], unreachable=attempts >= policy.attempts,
        )

    def delivered_to(self, device_id: str, epoch: int) -> GroupRecord:
        """Record that the member confirmed ``epoch`` (a verified signed receipt)."""
        m = self.member(device_id)
        if m is None:
            return self
        changes: dict[str, Any] = {"delivered": max(m.delivered, epoch)}
        if epoch >= self.epoch:
            changes.update(envelope=None, note=None, unreachable=False)
        return self._replace_member(device_id, **changes)

    def try_again(self) -> GroupRecord:
        """Every unreachable member pending again, with a fresh count of attempts."""
        members = tuple(
            dataclasses.replace(m, attempts=0, next_try=0.0, unreachable=False)
            if m.unreachable else m
            for m in self.members
        )
        return dataclasses.replace(self, members=members)

    def to_plain(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "members": {m.device_id: m.to_plain() for m in self.members},
            "trust": self.trust,
        }

    @classmethod
    def from_plain(cls, name: str, data: Mapping[str, Any]) -> GroupRecord:
        """A record as :meth:`to_plain` wrote it; a record from before receipts (only name,
        via, transport, address, delivered) reads with nothing waiting."""
        try:
            members = tuple(
                GroupMember(
                    device_id,
                    m["name"],
                    m.get("via"),
                    m.get("transport"),
                    m.get("address"),
                    m.get("delivered", 0),
                    m.get("envelope"),
                    m.get("attempts", 0),
                    m.get("next_try", 0.0),
                    m.get("note"),
                    m.get("unreachable", False),
                    m.get("static"),
                    m.get("signing"),
                )
                for device_id, m in data["members"].items()
            )
            return cls(name, data["epoch"], members, data.get("trust", PAIRED))
        except (KeyError, TypeError, AttributeError, ConfigError):
            raise DecodeError(f"the record of group {name!r} is damaged") from None


# ---------------------------------------------------------------------------------------------
# The relay's store-and-forward queue


@dataclasses.dataclass(frozen=True)
class RelayQueue:
    """Envelopes a relay holds for members it has not reached yet: at most one per member and
    group, the newest epoch (an older epoch's key is of no use once a newer one exists), and
    :data:`MAX_QUEUE` per controller: every peer of a relay controls its own groups, so one
    share for all let any of them fill it and the real controller's envelopes were refused
    (attack review atk19g, finding 2).  A relay holds at most its peers' number of shares."""

    envelopes: tuple[GroupEnvelope, ...] = ()

    def add(self, env: GroupEnvelope) -> RelayQueue:
        for queued in self.envelopes:
            same = queued.member == env.member and queued.group == env.group
            if same and queued.controller == env.controller and queued.epoch > env.epoch:
                return self  # a newer one is already waiting
        kept = tuple(
            q
            for q in self.envelopes
            if not (
                q.member == env.member and q.group == env.group and q.controller == env.controller
            )
        )
        if sum(q.controller == env.controller for q in kept) >= MAX_QUEUE:
            raise TooLargeError(
                f"this relay holds {MAX_QUEUE} envelopes from this controller already")
        return RelayQueue((*kept, env))

    def members(self) -> tuple[bytes, ...]:
        """The members something is waiting for, in the order they were first queued."""
        return tuple(dict.fromkeys(e.member for e in self.envelopes))

    def for_member(self, member: bytes) -> tuple[GroupEnvelope, ...]:
        return tuple(e for e in self.envelopes if e.member == member)

    def without(self, env: GroupEnvelope) -> RelayQueue:
        return RelayQueue(tuple(e for e in self.envelopes if e != env))

    def __len__(self) -> int:
        return len(self.envelopes)

    def to_plain(self) -> list[bytes]:
        return [e.encode_bytes() for e in self.envelopes]

    @classmethod
    def from_plain(cls, data: Iterable[Any]) -> RelayQueue:
        try:
            return cls(tuple(GroupEnvelope.decode_bytes(bytes(item)) for item in data))
        except TypeError:
            raise DecodeError("the relay's stored queue is damaged") from None


def fair_batches(envelopes: Sequence[GroupEnvelope]) -> list[tuple[GroupEnvelope, ...]]:
    """``envelopes`` (a relay's, for one member) as the batches it hands them over in: at most
    :data:`MAX_BATCH` each (a :class:`KeyDelivery` holds no more), each controller's in the
    order they were queued, taking the controllers in turn, so that one controller's many
    envelopes do not keep another's waiting behind them (attack review atk19g, finding 2)."""
    by_controller: dict[bytes, list[GroupEnvelope]] = {}
    for env in envelopes:
        by_controller.setdefault(env.controller, []).append(env)
    turns = itertools.zip_longest(*by_controller.values())
    order = [env for turn in turns for env in turn if env is not None]
    return [tuple(order[i:i + MAX_BATCH]) for i in range(0, len(order), MAX_BATCH)]


#: the slot a relay keeps one receipt in: (controller, member, group)
_Slot = tuple[bytes, bytes, str]


def _slot(r: GroupReceipt) -> _Slot:
    return (r.controller, r.member, r.group)


class _ReceiptLog:
    """What the stores of one line of :meth:`RelayReceipts.add` calls share: every receipt
    added, in order, each with the version of the store it left (``dead``; a version is the
    length of the log when it was made), and for the newest store (``head``) an index of its
    receipts by slot and by controller, oldest first.  A store of version v holds the receipts
    ``log[i]`` for i < v whose ``dead[i]`` is above v; an add to the newest store appends to
    the log and updates the index, so it reads a bounded number of receipts whatever the store
    holds (session 20: every add rebuilt the tuple and scanned it).  An add to an older store
    starts a log of its own."""

    __slots__ = ("dead", "head", "log", "slots", "theirs")

    def __init__(self, receipts: Iterable[GroupReceipt]) -> None:
        self.log: list[GroupReceipt] = list(receipts)
        self.dead: list[int] = [_ALIVE] * len(self.log)
        self.slots: dict[_Slot, list[int]] = {}
        self.theirs: dict[bytes, OrderedDict[int, None]] = {}
        for i, r in enumerate(self.log):
            self.slots.setdefault(_slot(r), []).append(i)
            self.theirs.setdefault(r.controller, OrderedDict())[i] = None
        self.head = len(self.log)

    def kill(self, i: int, version: int) -> None:
        """Take ``log[i]`` out of the newest store from ``version`` on."""
        r = self.log[i]
        self.dead[i] = version
        self.theirs[r.controller].pop(i, None)
        held = self.slots[_slot(r)]
        held.remove(i)  # one index, unless a store was built with a slot twice
        if not held:
            del self.slots[_slot(r)]


#: a receipt still in the newest store
_ALIVE: Final = 2**63


class RelayReceipts:
    """Receipts a relay holds for controllers until they ask (:class:`ReceiptRequest`): at
    most one per controller, member and group, the newest epoch, and :data:`MAX_QUEUE` per
    controller (its oldest go first: one controller's receipts never push out another's,
    atk19g finding 2).  A relay keeps what members signed; it cannot make one.

    A value: :meth:`add` gives a new store and leaves this one as it was.  Adds made one after
    another to the newest store read a bounded number of receipts each (:class:`_ReceiptLog`);
    :attr:`receipts` is put together when first read."""

    __slots__ = ("_count", "_log", "_receipts", "_version")

    def __init__(self, receipts: Iterable[GroupReceipt] = ()) -> None:
        log = _ReceiptLog(receipts)
        self._set(log, log.head, log.head, tuple(log.log))

    def _set(self, log: _ReceiptLog, version: int, count: int,
             receipts: tuple[GroupReceipt, ...] | None) -> None:
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_version", version)
        object.__setattr__(self, "_count", count)
        object.__setattr__(self, "_receipts", receipts)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a RelayReceipts is not changed in place (set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a RelayReceipts is not changed in place (del {name!r})")

    @property
    def receipts(self) -> tuple[GroupReceipt, ...]:
        """The receipts held, oldest first."""
        if self._receipts is not None:
            return self._receipts
        log, v = self._log, self._version
        made = tuple(log.log[i] for i in range(v) if log.dead[i] > v)
        if log.head == v and v > 2 * len(made) + 64:
            # Mostly receipts gone: the newest store starts a log of its own.
            fresh = _ReceiptLog(made)
            self._set(fresh, fresh.head, len(made), made)
        else:
            object.__setattr__(self, "_receipts", made)
        return made

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RelayReceipts):
            return NotImplemented
        return self.receipts == other.receipts

    def __hash__(self) -> int:
        return hash(self.receipts)

    def __repr__(self) -> str:
        return f"RelayReceipts(receipts={self.receipts!r})"

    def add(self, receipt: GroupReceipt) -> RelayReceipts:
        log, v = self._log, self._version
        if log.head != v:  # an older store: its own log from here
            log = _ReceiptLog(self.receipts)
            v = log.head
        slot = _slot(receipt)
        held = log.slots.get(slot, ())
        if any(log.log[i].epoch > receipt.epoch for i in held):
            return self
        version = v + 1
        count = self._count - len(held)
        for i in tuple(held):
            log.kill(i, version)
        theirs = log.theirs.setdefault(receipt.controller, OrderedDict())
        while len(theirs) >= MAX_QUEUE:  # room among this controller's own, oldest first
            log.kill(next(iter(theirs)), version)
            count -= 1
        log.log.append(receipt)
        log.dead.append(_ALIVE)
        log.slots.setdefault(slot, []).append(v)
        theirs[v] = None
        log.head = version
        made = RelayReceipts.__new__(RelayReceipts)
        made._set(log, version, count + 1, None)
        return made

    def find(self, controller: bytes, envelopes: Iterable[bytes]) -> tuple[GroupReceipt, ...]:
        """The receipts for these envelope digests that name ``controller``."""
        wanted = set(envelopes)
        return tuple(
            r for r in self.receipts if r.controller == controller and r.envelope in wanted
        )

    def __len__(self) -> int:
        return self._count

    def to_plain(self) -> list[bytes]:
        return [r.encode_bytes() for r in self.receipts]

    @classmethod
    def from_plain(cls, data: Iterable[Any]) -> RelayReceipts:
        try:
            return cls(tuple(GroupReceipt.decode_bytes(bytes(item)) for item in data))
        except TypeError:
            raise DecodeError("the relay's stored receipts are damaged") from None
