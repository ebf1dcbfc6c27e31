"""The pairing messages on the wire (see :mod:`pairing.wire` for the encoding rules).

=====  ================  =========================================================================
type   message           sent by, when
=====  ================  =========================================================================
1      Abort             either side, when it stops (error code and reason)
10     Offer             guest, first: its announcement and the first data of its method
11     Accept            host, second: its announcement and its method data
12     NoiseMessage      either: a further Noise handshake message
13     Reveal            either: a nonce revealed after a commitment (``compare``)
14     (retired)         never reused
20     ResumeMessage     either: the known-peer resume flow (Mozilla Sync style header)
=====  ================  =========================================================================
"""

from __future__ import annotations

import unicodedata
from enum import IntEnum

from .errors import DecodeError
from .negotiation import Method
from .wire import Message, field, message, struct

ID_LEN = 16
KEY_LEN = 32
NONCE_LEN = 16
MAC_LEN = 32
MAX_PREKEYS = 16
#: a guest's step when its Offer does not say (:attr:`Offer.step_ms`), in milliseconds
DEFAULT_STEP_MS = 30_000
#: the bounds of :attr:`Offer.step_ms` (0.1 s to an hour, the bounds of a step timeout)
STEP_MS = (100, 3_600_000)


def check_ms(name: str, value: int | None, bounds: tuple[int, int]) -> None:
    """A duration field in milliseconds, when present, within ``bounds``; else a decode error
    naming the field (a message is checked as it is decoded)."""
    low, high = bounds
    if value is not None and not low <= value <= high:
        raise DecodeError(f"{name} should be between {low} and {high} (milliseconds), not {value}")


@struct
class Announce(Message):
    """One side's announcement: capabilities, allowed methods, its choice, a fresh nonce."""

    caps: int = field(2)
    methods: int = field(3)
    method: Method = field(4)
    name: str = field(5, max_len=64)
    nonce: bytes = field(6, size=NONCE_LEN)


@struct
class Identity(Message):
    """Who a device is, sent only inside an encrypted and authenticated payload."""

    device_id: bytes = field(2, size=ID_LEN)
    name: str = field(3, max_len=64)
    static: bytes = field(4, size=KEY_LEN)
    signing: bytes = field(5, size=KEY_LEN)
    #: digests of fresh ephemeral keys the peer may nominate to resume later (prekeys)
    prekeys: tuple[bytes, ...] = field(6, size=ID_LEN, max_len=MAX_PREKEYS, default=())


#: the longest Noise message a pairing sends: its payload's :class:`Identity` holds a name of up
#: to 64 characters (256 bytes of UTF-8) and up to :data:`MAX_PREKEYS` digests, about 760 bytes
#: with Noise's keys and tags at the most (512, the limit before, refused a device named in 64
#: Chinese characters: session 23)
MAX_NOISE = 1024


@message(type_id=10, max_size=2048)
class Offer(Message):
    """Guest -> host: the announcement and the first data of the proposed method."""

    hello: Announce = field(2)
    cpace: bytes | None = field(3, size=KEY_LEN, default=None)  #: CPace Ya (``pin``)
    noise: bytes | None = field(4, max_len=MAX_NOISE, default=None)  #: message 1 (``qr``, ``kk``)
    pk: bytes | None = field(5, size=KEY_LEN, default=None)  #: ephemeral key (``compare``)
    qr_id: bytes | None = field(6, size=8, default=None)  #: which QR code (``qr``)
    #: who calls (``ttp`` only: ``kk``'s guest is known by its Noise IK message, §8)
    guest_id: bytes | None = field(7, size=ID_LEN, default=None)
    #: how long the guest waits for each of the host's messages, in milliseconds, when not
    #: :data:`DEFAULT_STEP_MS` (``compare``: a host waiting its turn to show its code tells the
    #: guest it is busy within half of the shorter of the two steps; docs/protocol.md §5)
    step_ms: int | None = field(8, default=None)

    def __post_init__(self) -> None:
        check_ms("Offer.step_ms", self.step_ms, STEP_MS)


@message(type_id=11, max_size=2048)
class Accept(Message):
    """Host -> guest: the announcement and the host's method data."""

    hello: Announce = field(2)
    cpace: bytes | None = field(3, size=KEY_LEN, default=None)  #: CPace Yb (``pin``)
    noise: bytes | None = field(4, max_len=MAX_NOISE, default=None)  #: (``pin``, ``qr``)
    sealed: bytes | None = field(5, max_len=256, default=None)  #: HPKE enc||ct (``compare``)
    commit: bytes | None = field(6, size=MAC_LEN, default=None)  #: commitment (``compare``)
    key: bytes | None = field(7, size=KEY_LEN, default=None, secret=True)  #: SK (``clear``)
    # field 8 (an identity, once for ``clear``) is retired: never reuse the number
    host_id: bytes | None = field(9, size=ID_LEN, default=None)  #: who answers (``ttp``)


@message(type_id=12, max_size=1536)
class NoiseMessage(Message):
    """A further Noise handshake message (Noise rev 34 §5.3 WriteMessage output)."""

    noise: bytes = field(2, max_len=MAX_NOISE)


#: Noise XX message 1 with an empty payload: the ephemeral key and the payload's tag
NOISE_FIRST_LEN = KEY_LEN + 16


@message(type_id=13, max_size=128)
class Reveal(Message):
    """A nonce revealed after the commitment (``compare``, commit-then-reveal).

    The host's also carries the identity handshake's first message (docs/protocol.md §5): it
    proves only knowledge of the compared key, so it may go before the host's person confirmed
    (docs/security.md, "compare: what may cross before the people confirmed the code").
    """

    nonce: bytes = field(2, size=NONCE_LEN)
    #: the host's Noise XX message 1 (``compare``); never in the guest's Reveal
    noise: bytes | None = field(3, size=NOISE_FIRST_LEN, default=None)


class ResumeKind(IntEnum):
    """The ``type`` of a resume message (Mozilla Sync key exchange)."""

    INIT = 1
    OKAY = 2
    FAIL = 3
    CONFIRM = 4


@struct
class ResumeHeader(Message):
    """The resume header: source and destination key ids, sequence and type.

    It names no device: the host finds the guest by the prekey digest it nominates
    (``dst_key_id``), so a listener on an unencrypted link learns no device id from a resume
    (docs/protocol.md §8; attack review atk19p, finding 3)."""

    # fields 2 (src_id) and 4 (dst_id), the device ids, are retired: never reuse the numbers
    src_key_id: bytes = field(3, size=ID_LEN)
    dst_key_id: bytes = field(5, size=ID_LEN)
    seq: int = field(6)
    kind: ResumeKind = field(7)
    src_key: bytes | None = field(8, size=KEY_LEN, default=None)  #: optional after the first


@message(type_id=20, max_size=1024)
class ResumeMessage(Message):
    """A resume message: header, then a verifier and sealed data, or a failure reason."""

    header: ResumeHeader = field(2)
    verifier: bytes | None = field(3, size=MAC_LEN, default=None)
    sealed: bytes | None = field(4, max_len=512, default=None)
    reason: str | None = field(5, max_len=100, default=None, one_line=True)
    #: the host's fresh ephemeral key in an OKAY (its contribution to the session key)
    fresh: bytes | None = field(6, size=KEY_LEN, default=None)


def device_name(name: str, what: str) -> str:
    """``name`` as a device's name from the wire may be: not blank, and without control
    characters (C0, C1, DEL), which the keystore refuses to store and a terminal would
    interpret (issue 17, finding 5).  A peer that sends one is stopped before anyone is asked
    anything; other unusual characters (bidirectional marks) are shown harmlessly by the CLI."""
    # An ASCII name is printable exactly when it has no C0 control and no DEL, so the common
    # name is checked without a look-up per character (issue 13).
    plain = name.isascii() and name.isprintable()
    if not name.strip() or (not plain and any(unicodedata.category(ch) == "Cc" for ch in name)):
        raise DecodeError(f"{what} must be a name without control characters")
    return name
