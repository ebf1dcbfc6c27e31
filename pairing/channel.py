"""The secure channel: AEAD records after any handshake (DESIGN.md step 5).

A :class:`SecureChannel` holds one key per direction, as a handshake's Split() gives them (Noise
rev 34 §5.2), and turns plaintexts into authenticated, encrypted *records*, each cut into link
fragments by :mod:`pairing.framing`.  It is sans-I/O: ``seal`` returns the fragments to send and
``open`` takes one received fragment at a time.

Record layout, byte by byte (before fragmentation)::

    offset  size  field
    0       1     flags    bit 0 (0x01) CLOSE: the sender's last record; its plaintext is empty
                           bit 1 (0x02) REKEY: after this record both ends rekey this direction
                           bits 2-7 reserved, zero
    1       8     sequence unsigned, big-endian; 0 for a direction's first record, then +1
    9       n     ciphertext of the n-byte plaintext (0 <= n <= max_record)
    9+n     16    AEAD tag

The 9-byte header is the AEAD associated data, so flags and sequence are authenticated.  The
nonce is derived from the sequence number as Noise rev 34 §5.1 / §12 encode ``n``: 4 zero
bytes, then the 64-bit number, little-endian for ChaCha20-Poly1305 (RFC 8439), big-endian for
AES-256-GCM.  Sequence 2**64-1 is never used for a record: it is the nonce reserved for REKEY.

Receiving a record, in this order: too short for header and tag -> :class:`DecodeError`; tag does
not verify under the sequence the header states -> :class:`AuthenticationError` (a forged or
corrupted record, a wrong key, or a record from an earlier key); it verifies but its sequence is
lower than expected -> :class:`ReplayError` ("replayed or duplicated record"), higher ->
:class:`ReplayError` ("a record was dropped or reordered").  Authenticating first means a
tampered header reports as the forgery it is, and a replay error is only ever reported for a
record the peer really sent.

Rekeying (Noise rev 34 §4.2 REKEY, §11.3): ``REKEY(k)`` is the first 32 bytes of
``ENCRYPT(k, 2**64-1, b"", 32 zero bytes)``; the sequence numbers run on across a rekey.  The
*sender* decides when a direction rekeys and says so with the REKEY flag: automatically on every
``rekey_after``-th record since the last rekey, and on the next record after
:meth:`SecureChannel.request_rekey`.  The receiver rekeys when it has opened a flagged record, so
the two ends change keys at the same record even if their ``rekey_after`` settings differ.

Closing: :meth:`SecureChannel.seal_close` sends an authenticated CLOSE record.  When ``open``
completes the peer's CLOSE record it raises :class:`PeerClosedError` (a
:class:`LinkClosedError`), and so does every later ``open``, just as ``Link.recv`` does after the
peer closed; ``peer_closed`` is then True.  A link that ends while ``peer_closed`` is False was
truncated.  Each direction closes on its own: after the peer's close this side may still seal
records (and its own close); after this side's close it may still open the peer's records.

Any other error poisons the channel (STYLE.md rule 4): it moves to ``FAILED`` and every later
call raises :class:`LinkClosedError` chained to the first error.
"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass, replace
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import framing
from .errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LinkClosedError,
    PairingError,
    ReplayError,
    TooLargeError,
)

__all__ = [
    "FLAG_CLOSE",
    "FLAG_REKEY",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAX_RECORD_LIMIT",
    "MAX_SEQUENCE",
    "TAG_SIZE",
    "ChannelConfig",
    "ChannelState",
    "PeerClosedError",
    "SecureChannel",
    "SequenceExhaustedError",
    "rekey",
]

Cipher = Literal["chachapoly", "aesgcm"]
_CIPHERS: tuple[str, ...] = ("chachapoly", "aesgcm")

KEY_SIZE = 32
TAG_SIZE = 16
HEADER_SIZE = 9
FLAG_CLOSE = 0x01
FLAG_REKEY = 0x02
_RESERVED = 0xFF & ~(FLAG_CLOSE | FLAG_REKEY)
_HEADER = struct.Struct(">BQ")

_REKEY_NONCE = 2**64 - 1
#: The last sequence number a record may carry; 2**64-1 is REKEY's nonce (Noise rev 34 §5.1).
MAX_SEQUENCE = 2**64 - 2
#: The largest ``max_record`` a configuration may set (1 MiB of plaintext in one record).
MAX_RECORD_LIMIT = 1 << 20


class PeerClosedError(LinkClosedError):
    """The peer closed the channel."""


class SequenceExhaustedError(LinkClosedError):
    """This channel has sent as many records as its sequence numbers allow; open a new one."""


class _Close(enum.Enum):
    """The private marker ``_open_record`` returns for the peer's CLOSE record."""

    CLOSE = "close"


_CLOSE = _Close.CLOSE


class ChannelState(enum.Enum):
    """Where a :class:`SecureChannel` is; each direction closes on its own."""

    OPEN = "open"
    LOCAL_CLOSED = "local-closed"  #: we sent our CLOSE record; we may still open the peer's
    REMOTE_CLOSED = "remote-closed"  #: the peer's CLOSE arrived; we may still seal
    CLOSED = "closed"  #: both directions closed
    FAILED = "failed"  #: an error poisoned the channel


class _Input(enum.Enum):
    SEAL = "seal"
    SEAL_CLOSE = "seal-close"
    OPEN_DATA = "open-data"
    OPEN_CLOSE = "open-close"


# The one place that says which input is legal in which state (STYLE.md rule 2).  An input with
# no entry is refused: seals after our own close and opens after the peer's close raise
# LinkClosedError without changing state (a close is not a failure); everything else fails.
_TRANSITIONS: dict[tuple[ChannelState, _Input], ChannelState] = {
    (ChannelState.OPEN, _Input.SEAL): ChannelState.OPEN,
    (ChannelState.OPEN, _Input.SEAL_CLOSE): ChannelState.LOCAL_CLOSED,
    (ChannelState.OPEN, _Input.OPEN_DATA): ChannelState.OPEN,
    (ChannelState.OPEN, _Input.OPEN_CLOSE): ChannelState.REMOTE_CLOSED,
    (ChannelState.LOCAL_CLOSED, _Input.OPEN_DATA): ChannelState.LOCAL_CLOSED,
    (ChannelState.LOCAL_CLOSED, _Input.OPEN_CLOSE): ChannelState.CLOSED,
    (ChannelState.REMOTE_CLOSED, _Input.SEAL): ChannelState.REMOTE_CLOSED,
    (ChannelState.REMOTE_CLOSED, _Input.SEAL_CLOSE): ChannelState.CLOSED,
}


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """Settings of one secure channel; both ends should agree on ``cipher``.

    * ``mtu``: the link's MTU (20..65535); every fragment ``seal`` returns fits in it.
    * ``cipher``: ``"chachapoly"`` (ChaCha20-Poly1305, RFC 8439) or ``"aesgcm"`` (AES-256-GCM).
    * ``rekey_after``: records this side sends under one key before it rekeys (>= 1).
    * ``max_record``: the largest plaintext of one record, in bytes, enforced when sealing and
      when opening (1..1 MiB).
    """

    mtu: int
    cipher: Cipher = "chachapoly"
    rekey_after: int = 2**20
    max_record: int = 64 * 1024

    def __post_init__(self) -> None:
        framing.check_mtu(self.mtu)
        if self.cipher not in _CIPHERS:
            raise ConfigError(
                f"unknown cipher {self.cipher!r}; choose one of {', '.join(_CIPHERS)}"
            )
        for name, value, low, high in (
            ("rekey_after", self.rekey_after, 1, MAX_SEQUENCE),
            ("max_record", self.max_record, 1, MAX_RECORD_LIMIT),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, not {type(value).__name__}")
            if not low <= value <= high:
                raise ConfigError(f"{name} must be between {low} and {high}, not {value}")

    @property
    def max_wire_record(self) -> int:
        """The largest record on the wire: header, ``max_record`` bytes of ciphertext, tag."""
        return HEADER_SIZE + self.max_record + TAG_SIZE


def _nonce(cipher: str, n: int) -> bytes:
    """Noise rev 34 §12.3 (ChaChaPoly: 4 zero bytes, 64-bit little-endian n) and §12.4 (AESGCM:
    4 zero bytes, 64-bit big-endian n)."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little" if cipher == "chachapoly" else "big")


def _aead(cipher: str, key: bytes) -> ChaCha20Poly1305 | AESGCM:
    return ChaCha20Poly1305(key) if cipher == "chachapoly" else AESGCM(key)


def rekey(cipher: Cipher, key: bytes) -> bytes:
    """Noise rev 34 §4.2 REKEY(k): the first 32 bytes of ENCRYPT(k, 2**64-1, b"", 32 zero bytes).

    A small local copy so that the channel does not depend on the handshake module.
    """
    if cipher not in _CIPHERS:
        raise ConfigError(f"unknown cipher {cipher!r}; choose one of {', '.join(_CIPHERS)}")
    return _rekey(cipher, _aead(cipher, _check_key("key", key)))


def _rekey(cipher: str, aead: ChaCha20Poly1305 | AESGCM) -> bytes:
    return aead.encrypt(_nonce(cipher, _REKEY_NONCE), bytes(KEY_SIZE), b"")[:KEY_SIZE]


def _check_key(name: str, key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise ConfigError(f"the {name} must be bytes, not {type(key).__name__}")
    if len(key) != KEY_SIZE:
        raise ConfigError(f"the {name} must be {KEY_SIZE} bytes long, not {len(key)}")
    return bytes(key)


class _Direction:
    """One direction's key, AEAD object and sequence counter."""

    __slots__ = ("aead", "cipher", "key", "seq", "since_rekey")

    def __init__(self, cipher: str, key: bytes) -> None:
        self.cipher = cipher
        self.key = key
        self.aead = _aead(cipher, key)
        self.seq = 0  # the next sequence number to send, or expected to receive
        self.since_rekey = 0  # records under the current key

    def rekey(self) -> None:
        self.key = _rekey(self.cipher, self.aead)
        self.aead = _aead(self.cipher, self.key)
        self.since_rekey = 0


class SecureChannel:
    """AEAD records over a message link, with replay rejection, rekeying and an authenticated
    close (layout and rules in the module docstring).

    ``send_key`` and ``recv_key`` are the 32-byte keys this side sends and receives with; the
    peer holds the same two keys swapped.  They must differ (one key for both directions would
    let an attacker reflect our own records back to us).
    """

    def __init__(self, config: ChannelConfig, *, send_key: bytes, recv_key: bytes) -> None:
        if not isinstance(config, ChannelConfig):
            raise ConfigError(f"config must be a ChannelConfig, not {type(config).__name__}")
        send_key = _check_key("send key", send_key)
        recv_key = _check_key("receive key", recv_key)
        if hmac.compare_digest(send_key, recv_key):
            raise ConfigError("the send and receive keys must differ")
        self._config = config
        self._send = _Direction(config.cipher, send_key)
        self._recv = _Direction(config.cipher, recv_key)
        self._reassembler = framing.Reassembler(config.max_wire_record)
        self._state = ChannelState.OPEN
        self._rekey_requested = False
        self._error: PairingError | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def config(self) -> ChannelConfig:
        return self._config

    def set_mtu(self, mtu: int) -> None:
        """Fragment the records sealed from now on to ``mtu`` bytes (20..65535).

        A link's MTU can grow after the channel was made (an ATT MTU exchange that completes
        after the connection is up).  The receiver needs no word of it: every fragment says
        where it belongs (:mod:`pairing.framing`), whatever its size.
        """
        self._config = replace(self._config, mtu=framing.check_mtu(mtu))

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def peer_closed(self) -> bool:
        """True once the peer's authenticated CLOSE record has been opened."""
        return self._state in (ChannelState.REMOTE_CLOSED, ChannelState.CLOSED)

    @property
    def closed(self) -> bool:
        """True when neither direction can carry records any more (both closed, or failed)."""
        return self._state in (ChannelState.CLOSED, ChannelState.FAILED)

    @property
    def error(self) -> PairingError | None:
        """The error that poisoned the channel, if any."""
        return self._error

    @property
    def records_sent(self) -> int:
        return self._send.seq

    @property
    def records_received(self) -> int:
        return self._recv.seq

    # -- sending -------------------------------------------------------------------------------

    def request_rekey(self) -> None:
        """Rekey the sending direction after the next record sealed (which carries REKEY, so the
        peer rekeys its receiving key at the same record)."""
        self._check_failed()
        self._rekey_requested = True

    def seal(self, plaintext: bytes) -> list[bytes]:
        """Encrypt ``plaintext`` as one record; return its link fragments, in order.

        Raises :class:`TooLargeError` over ``max_record`` bytes, :class:`LinkClosedError` after
        this side's close, :class:`SequenceExhaustedError` once 2**64-1 records have been sent.
        Every error but the close poisons the channel.
        """
        return self._seal(_Input.SEAL, plaintext)

    def seal_close(self) -> list[bytes]:
        """Seal this side's authenticated CLOSE record; no record can be sealed after it."""
        return self._seal(_Input.SEAL_CLOSE, b"")

    def _seal(self, what: _Input, plaintext: bytes) -> list[bytes]:
        self._check_failed()
        if (self._state, what) not in _TRANSITIONS:
            # Our own close already happened: refuse, but leave the receiving direction usable.
            raise LinkClosedError("this side already closed the channel")
        try:
            return self._seal_record(what, plaintext)
        except PairingError as exc:
            self._fail(exc)
            raise

    def _seal_record(self, what: _Input, plaintext: bytes) -> list[bytes]:
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise ConfigError(f"a plaintext must be bytes, not {type(plaintext).__name__}")
        plaintext = bytes(plaintext)
        if len(plaintext) > self._config.max_record:
            raise TooLargeError(
                f"a record of {len(plaintext)} bytes is over the limit of "
                f"{self._config.max_record} bytes"
            )
        send = self._send
        if send.seq > MAX_SEQUENCE:
            raise SequenceExhaustedError()
        flags = FLAG_CLOSE if what is _Input.SEAL_CLOSE else 0
        if self._rekey_requested or send.since_rekey + 1 >= self._config.rekey_after:
            flags |= FLAG_REKEY
        header = _HEADER.pack(flags, send.seq)
        body = send.aead.encrypt(_nonce(send.cipher, send.seq), plaintext, header)
        send.seq += 1
        send.since_rekey += 1
        if flags & FLAG_REKEY:
            send.rekey()
            self._rekey_requested = False
        self._state = _TRANSITIONS[(self._state, what)]
        return framing.fragment(
            header + body, self._config.mtu, max_message=self._config.max_wire_record
        )

    # -- receiving -----------------------------------------------------------------------------

    def open(self, fragment: bytes) -> bytes | None:
        """Take one link fragment; return a record's plaintext when ``fragment`` completes it.

        Raises :class:`PeerClosedError` when the peer's CLOSE record completes and on every call
        after it; :class:`DecodeError`, :class:`TooLargeError`, :class:`AuthenticationError` or
        :class:`ReplayError` for a bad record, which poisons the channel.
        """
        self._check_failed()
        if (self._state, _Input.OPEN_DATA) not in _TRANSITIONS:
            raise PeerClosedError("the peer closed the channel")
        try:
            result = self._open_record(fragment)
        except PairingError as exc:
            self._fail(exc)
            raise
        if result is _CLOSE:
            raise PeerClosedError("the peer closed the channel")
        return result

    def _open_record(self, fragment: bytes) -> bytes | _Close | None:
        record = self._reassembler.feed(fragment)
        if record is None:
            return None
        if len(record) < HEADER_SIZE + TAG_SIZE:
            raise DecodeError(
                f"a record of {len(record)} bytes is truncated: a record has at least "
                f"{HEADER_SIZE + TAG_SIZE}"
            )
        flags, seq = _HEADER.unpack_from(record)
        recv = self._recv
        try:
            plaintext = recv.aead.decrypt(
                _nonce(recv.cipher, seq), record[HEADER_SIZE:], record[:HEADER_SIZE]
            )
        except InvalidTag:
            raise AuthenticationError(
                "a record failed authentication: it was forged or corrupted, "
                "or the two sides do not share the same key"
            ) from None
        # Only now, with the record known to be the peer's, is its sequence number meaningful.
        if seq < recv.seq:
            raise ReplayError(
                f"replayed or duplicated record (sequence {seq}, expected {recv.seq})"
            )
        if seq > recv.seq:
            raise ReplayError(
                f"a record was dropped or reordered (sequence {seq}, expected {recv.seq})"
            )
        if flags & _RESERVED:
            raise DecodeError(f"a record has reserved flag bits set (0x{flags:02x})")
        what = _Input.OPEN_CLOSE if flags & FLAG_CLOSE else _Input.OPEN_DATA
        if what is _Input.OPEN_CLOSE and plaintext:
            raise DecodeError("the peer's close record carries data")
        recv.seq += 1
        recv.since_rekey += 1
        if flags & FLAG_REKEY:
            recv.rekey()
        self._state = _TRANSITIONS[(self._state, what)]
        return _CLOSE if what is _Input.OPEN_CLOSE else plaintext

    # -- poisoning -----------------------------------------------------------------------------

    def _check_failed(self) -> None:
        if self._error is not None:
            raise LinkClosedError(
                f"the channel failed earlier and is closed: {self._error}"
            ) from self._error

    def _fail(self, exc: PairingError) -> None:
        self._error = exc
        self._state = ChannelState.FAILED
        self._rekey_requested = False
