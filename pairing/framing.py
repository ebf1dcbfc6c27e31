"""Fragmentation of a message to a link MTU, and bounded reassembly (DESIGN.md step 5, "Links").

A :class:`transports.base.Link` carries whole messages of at most ``mtu`` bytes (20 to 65535;
BLE GATT gives 20 to 512).  The secure channel and the handshake driver send messages that may be
longer, so each message is cut into *fragments*, each at most ``mtu`` bytes, and rejoined on the
other side.  The link is reliable and ordered, so fragments need no index; what the format must
catch is a peer (or a bug) that sends fragments which do not make one well-formed message.

Fragment layout, byte by byte::

    first fragment of a message         later fragments of the same message
    +-------+------------+---------+    +-------+---------+
    | flags | total len  | payload |    | flags | payload |
    | 1 B   | 1..4 B     | 0..     |    | 1 B   | 1..     |
    +-------+------------+---------+    +-------+---------+

* ``flags`` bit 7 (``0x80``, FIRST) is set on the first fragment of a message and only there;
  bit 6 (``0x40``, LAST) is set on the last fragment and only there (a message that fits in one
  fragment has both).  Bits 5 to 0 are reserved and must be zero.
* ``total len`` (first fragment only) is the length of the whole message, as an unsigned
  LEB128 varint (7 bits per byte, least significant group first, bit 7 = "more bytes follow"),
  in its shortest form, at most 4 bytes, so a message is at most 2**28 - 1 bytes.  Announcing the
  length up front lets the receiver refuse an oversize message before buffering any of it.
* ``payload`` is the next slice of the message.  A later fragment carries at least one byte, so
  every fragment makes progress; the fragment that completes the message must carry LAST.

The sender fills every fragment to ``mtu`` bytes except the last.  The receiver does not need to
know the sender's MTU.  Anything else (reserved bits, a non-minimal or overlong length, a
continuation with no start, a new start before the previous message ended, more bytes than
announced, LAST before the announced length) raises :class:`~pairing.errors.DecodeError`; an
announced length over the receiver's bound raises :class:`~pairing.errors.TooLargeError`.
"""

from __future__ import annotations

from .errors import ConfigError, DecodeError, LinkClosedError, PairingError, TooLargeError

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "FLAG_FIRST",
    "FLAG_LAST",
    "MAX_MESSAGE_LIMIT",
    "MAX_MTU",
    "MIN_MTU",
    "Reassembler",
    "fragment",
    "fragment_count",
]

FLAG_FIRST = 0x80
FLAG_LAST = 0x40
_RESERVED = 0xFF & ~(FLAG_FIRST | FLAG_LAST)

MIN_MTU = 20  #: the smallest link MTU (BLE's default ATT MTU of 23, less the 3-byte ATT header)
MAX_MTU = 65535
_MAX_VARINT_BYTES = 4
MAX_MESSAGE_LIMIT = (1 << (7 * _MAX_VARINT_BYTES)) - 1  #: what a 4-byte length can announce
#: The default bound: a 1 MiB payload plus room for a record header and tag around it.
DEFAULT_MAX_MESSAGE = (1 << 20) + 64


def check_mtu(mtu: int) -> int:
    """Validate a link MTU (20 to 65535 bytes); raise :class:`ConfigError` otherwise."""
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise ConfigError(f"the link MTU must be an integer, not {type(mtu).__name__}")
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"the link MTU must be between {MIN_MTU} and {MAX_MTU} bytes, not {mtu}")
    return mtu


def _check_max_message(max_message: int) -> int:
    if isinstance(max_message, bool) or not isinstance(max_message, int):
        raise ConfigError(f"max_message must be an integer, not {type(max_message).__name__}")
    if not 0 <= max_message <= MAX_MESSAGE_LIMIT:
        raise ConfigError(
            f"max_message must be between 0 and {MAX_MESSAGE_LIMIT} bytes, not {max_message}"
        )
    return max_message


def encode_leb128(value: int) -> bytes:
    """Unsigned LEB128, shortest form (also CPace's ``prepend_len``, cpace draft A.1.1)."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read a shortest-form LEB128 varint of at most 4 bytes at ``pos``; return (value, new pos)."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise DecodeError("a fragment ends inside its message length")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            # A final group of zero after other groups is a longer spelling of a shorter number.
            if byte == 0 and i > 0:
                raise DecodeError("a fragment's message length is not in its shortest form")
            return value, pos + i + 1
    raise DecodeError(f"a fragment's message length is longer than {_MAX_VARINT_BYTES} bytes")


def fragment(message: bytes, mtu: int, *, max_message: int = DEFAULT_MAX_MESSAGE) -> list[bytes]:
    """Cut ``message`` into fragments of at most ``mtu`` bytes each (layout in the module doc).

    Raises :class:`ConfigError` for an MTU outside 20..65535 and :class:`TooLargeError` for a
    message longer than ``max_message`` (which the peer's :class:`Reassembler` would refuse).
    """
    if (type(message) is bytes and type(mtu) is int and MIN_MTU <= mtu <= MAX_MTU
            and type(max_message) is int and max_message <= MAX_MESSAGE_LIMIT):
        # The common case first (most messages fit one fragment): the same bytes as below,
        # without the general path's checks, which every value here has passed.
        total = len(message)
        if total <= max_message:
            if total < 0x80 and total <= mtu - 2:
                return [bytes((FLAG_FIRST | FLAG_LAST, total)) + message]
            if total < 0x4000 and total <= mtu - 3:
                return [bytes((FLAG_FIRST | FLAG_LAST, total & 0x7F | 0x80, total >> 7))
                        + message]
    check_mtu(mtu)
    _check_max_message(max_message)
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ConfigError(f"a message must be bytes, not {type(message).__name__}")
    view = memoryview(message).cast("B")
    total = len(view)
    if total > max_message:
        raise TooLargeError(f"a message of {total} bytes is over the limit of {max_message} bytes")
    length = encode_leb128(total)
    room = mtu - 1 - len(length)
    if total <= room:
        return [bytes((FLAG_FIRST | FLAG_LAST,)) + length + view]
    out = [bytes((FLAG_FIRST,)) + length + view[:room]]
    pos = room
    step = mtu - 1
    middle = b"\x00"
    while total - pos > step:
        out.append(middle + view[pos : pos + step])
        pos += step
    out.append(bytes((FLAG_LAST,)) + view[pos:])
    return out


def fragment_count(total: int, mtu: int) -> int:
    """How many fragments :func:`fragment` cuts a ``total``-byte message into at ``mtu``."""
    check_mtu(mtu)
    room = mtu - 1 - len(encode_leb128(total))
    if total <= room:
        return 1
    return 1 + -(-(total - room) // (mtu - 1))


class Reassembler:
    """Rejoins fragments made by :func:`fragment` into whole messages, never buffering more
    than ``max_message`` bytes.

    ``feed(fragment)`` returns the whole message when ``fragment`` completes one, else ``None``.
    It raises :class:`DecodeError` for a malformed fragment sequence and :class:`TooLargeError`
    for a message announced longer than ``max_message``.  An error poisons the reassembler
    (STYLE.md rule 4): every later ``feed`` raises :class:`LinkClosedError`.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._max = _check_max_message(max_message)
        self._buffer = bytearray()
        self._expected: int | None = None  # announced length of the message in progress
        self._error: PairingError | None = None

    @property
    def max_message(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held for the message in progress (never more than ``max_message``)."""
        return len(self._buffer)

    @property
    def in_progress(self) -> bool:
        """True between a message's first fragment and its last."""
        return self._expected is not None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, fragment: bytes) -> bytes | None:
        """Take one link message; return the whole message once its last fragment arrives."""
        if self._error is not None:
            raise LinkClosedError(
                f"the fragment stream failed earlier: {self._error}"
            ) from self._error
        if type(fragment) is bytes and self._expected is None and len(fragment) >= 2 and (
            fragment[0] == FLAG_FIRST | FLAG_LAST
        ):
            # The common case first: a whole message in one fragment, its length in one or
            # two bytes in shortest form, within the bound.  Anything else (or any doubt)
            # takes the general path below, which raises what it raises.
            b1 = fragment[1]
            if b1 < 0x80:
                if b1 == len(fragment) - 2 and b1 <= self._max:
                    return fragment[2:]
            elif len(fragment) >= 3 and 0 < fragment[2] < 0x80:
                total = b1 & 0x7F | fragment[2] << 7
                if total == len(fragment) - 3 and total <= self._max:
                    return fragment[3:]
        try:
            return self._feed(fragment)
        except PairingError as exc:
            self._error = exc
            self._buffer = bytearray()
            self._expected = None
            raise

    def _feed(self, fragment: bytes) -> bytes | None:
        if not isinstance(fragment, bytes | bytearray | memoryview):
            raise DecodeError(f"a fragment must be bytes, not {type(fragment).__name__}")
        data = bytes(fragment)
        if not data:
            raise DecodeError("an empty fragment")
        flags = data[0]
        if flags & _RESERVED:
            raise DecodeError(f"a fragment has reserved flag bits set (0x{flags:02x})")
        first, last = bool(flags & FLAG_FIRST), bool(flags & FLAG_LAST)
        if first:
            if self._expected is not None:
                raise DecodeError("a new message started before the previous one was complete")
            total, pos = _decode_varint(data, 1)
            if total > self._max:
                raise TooLargeError(
                    f"the peer announced a message of {total} bytes; the limit is {self._max}"
                )
            self._expected = total
        else:
            if self._expected is None:
                raise DecodeError("a continuation fragment arrived with no message started")
            pos = 1
            if len(data) == pos:
                raise DecodeError("a continuation fragment carries no data")
        chunk = memoryview(data)[pos:]
        if len(self._buffer) + len(chunk) > self._expected:
            raise DecodeError(f"fragments carry more than the announced {self._expected} bytes")
        self._buffer += chunk
        complete = len(self._buffer) == self._expected
        if last != complete:
            if last:
                raise DecodeError(
                    f"the message ended after {len(self._buffer)} of its announced "
                    f"{self._expected} bytes"
                )
            raise DecodeError("the fragment that completes a message is not marked as the last")
        if not complete:
            return None
        message = bytes(self._buffer)
        self._buffer = bytearray()
        self._expected = None
        return message
