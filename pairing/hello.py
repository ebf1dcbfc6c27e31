"""The hello: what a host broadcasts so guests can find it (``docs/hello.md`` is the spec).

Ten bytes, so that it fits a legacy BLE advertisement (31 bytes) beside the flags and pairkit's
128-bit service UUID as service data::

    byte 0     bits 7-6  version (1)
               bit 5     visible: strangers may ask to pair now (a visibility window is open)
               bit 4     l2cap: the host accepts an L2CAP credit-based channel for bulk data
               bits 3-0  capabilities: display, keypad, confirm, scan-qr (Caps bits 0-3)
    byte 1     methods the host allows: bit 0 pin, 1 qr, 2 compare, 3 clear, 4 resume, 5 ttp
    bytes 2-9  tag: r (4 random bytes) || MAC (4 bytes)

That is the *clear* form, sent only while a visibility window is open.  A private host (outside
a window) sends the *private* form instead, in which a stranger can read nothing but that it is
not a clear hello (docs/hello.md, docs/security.md rule 8)::

    bytes 0-1  (byte 0 and byte 1 of the clear form) XOR HMAC-SHA256(K_tag, "pairkit/1 hello
               body" || epoch || r)[:2]; r is redrawn until byte 0's top bits are not 01
    bytes 2-9  tag, as below

So every bit of it is uniformly random to a stranger (but for the two top bits of byte 0, which
only say "not a clear hello", and are the same for every private host), nothing in it survives a
rotation, and members decrypt the capabilities and methods with the tag's key.

The tag carries no static identifier.  A host in a personal cloud computes
``MAC = HMAC-SHA256(K_tag, "pairkit/1 hello" || epoch || r)[:4]`` with ``K_tag`` derived from the
cloud secret and ``epoch = floor(unix time / 900)``; a member recognises it by recomputing the MAC
for each cloud it belongs to, for the current epoch and its neighbours (clock skew).  A host in
no cloud sends 4 random bytes as MAC.  A stranger sees 8 random-looking bytes either way and
cannot link two tags of one device: ``r`` is fresh at every rotation (every 15 minutes, with the
BLE address, and at each visibility window).
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Mapping
from hashlib import sha256

from . import keyschedule
from .crypto import Rng
from .errors import DecodeError
from .negotiation import Caps, Method

HELLO_VERSION = 1
HELLO_LEN = 10
EPOCH_SECONDS = 900
_METHOD_BITS = {
    Method.PIN: 0,
    Method.QR: 1,
    Method.COMPARE: 2,
    Method.CLEAR: 3,
    Method.RESUME: 4,
    Method.TTP: 5,
}
_CAPS_MASK = int(Caps.DISPLAY | Caps.KEYPAD | Caps.CONFIRM | Caps.SCAN_QR)


@dataclasses.dataclass(frozen=True)
class Hello:
    """A decoded hello.  A private hello decoded by a stranger has no caps and no methods:
    ``private`` is then True and the rest is unknown."""

    visible: bool
    caps: Caps
    methods: frozenset[Method]
    tag: bytes
    l2cap: bool = False
    #: sent in the private form (a member decrypted caps and methods, a stranger did not)
    private: bool = False
    #: the member's cloud whose key opened a private hello
    cloud: str | None = None

    def __post_init__(self) -> None:
        if len(self.tag) != 8:
            raise ValueError("a hello tag is 8 bytes")

    def encode(self) -> bytes:
        b0 = (HELLO_VERSION << 6) | (0x20 if self.visible else 0) | (0x10 if self.l2cap else 0)
        b0 |= int(self.caps) & _CAPS_MASK
        b1 = 0
        for m in self.methods:
            if m in _METHOD_BITS:
                b1 |= 1 << _METHOD_BITS[m]
        return bytes([b0, b1]) + self.tag


def _body_pad(tag_key: bytes, epoch: int, r: bytes) -> bytes:
    msg = keyschedule.HELLO_BODY + epoch.to_bytes(8, "big") + r
    return hmac.new(tag_key, msg, sha256).digest()[:2]


def encode_private(
    hello: Hello, tag_key: bytes | None, wall_now: float, rng: Rng = os.urandom
) -> bytes:
    """The private form of ``hello`` (module docstring): caps, methods and flags readable only
    with ``tag_key``; a host in no cloud sends 10 random bytes (but for the form's two bits)."""
    clear = dataclasses.replace(hello, visible=False).encode()[:2]
    for _ in range(64):
        if tag_key is None:
            out = rng(HELLO_LEN)
        else:
            r = rng(4)
            epoch = epoch_of(wall_now)
            pad = _body_pad(tag_key, epoch, r)
            out = bytes(a ^ b for a, b in zip(clear, pad, strict=True)) + r + _mac(
                tag_key, epoch, r
            )
        if out[0] >> 6 != HELLO_VERSION:
            return out
    raise ValueError("the random source keeps drawing the clear form's version")  # 4**-64


def decode_hello(
    data: bytes, tag_keys: Mapping[str, bytes] | None = None, wall_now: float | None = None
) -> Hello:
    """Parse a hello strictly; :class:`DecodeError` for anything that is not one.

    A clear hello decodes for anyone.  A private one decodes, for a member (``tag_keys`` of its
    clouds and the time), to its caps and methods, and for anyone else to a :class:`Hello` with
    ``private`` set and nothing else known.
    """
    if len(data) != HELLO_LEN:
        raise DecodeError(f"a hello is {HELLO_LEN} bytes, not {len(data)}")
    b0, b1 = data[0], data[1]
    if b0 >> 6 != HELLO_VERSION:
        return _decode_private(bytes(data), tag_keys or {}, wall_now)
    if b1 & 0xC0:
        raise DecodeError("a hello uses reserved method bits")
    methods = frozenset(m for m, bit in _METHOD_BITS.items() if b1 & (1 << bit))
    return Hello(
        visible=bool(b0 & 0x20),
        caps=Caps(b0 & _CAPS_MASK),
        methods=methods,
        tag=bytes(data[2:10]),
        l2cap=bool(b0 & 0x10),
    )


def _decode_private(
    data: bytes, tag_keys: Mapping[str, bytes], wall_now: float | None
) -> Hello:
    tag = data[2:10]
    found = _match(tag, tag_keys, wall_now) if wall_now is not None else None
    if found is None:  # a stranger's view: nothing but "private"
        return Hello(visible=False, caps=Caps.NONE, methods=frozenset(), tag=tag, private=True)
    cloud_id, key, epoch = found
    pad = _body_pad(key, epoch, tag[:4])
    b0, b1 = data[0] ^ pad[0], data[1] ^ pad[1]
    methods = frozenset(m for m, bit in _METHOD_BITS.items() if b1 & (1 << bit))
    return Hello(visible=False, caps=Caps(b0 & _CAPS_MASK), methods=methods, tag=tag,
                 l2cap=bool(b0 & 0x10), private=True, cloud=cloud_id)


def epoch_of(wall_now: float) -> int:
    """The tag epoch of a Unix time (15-minute periods)."""
    return int(wall_now // EPOCH_SECONDS)


def _mac(tag_key: bytes, epoch: int, r: bytes) -> bytes:
    msg = keyschedule.HELLO_TAG_MAC + epoch.to_bytes(8, "big") + r
    return hmac.new(tag_key, msg, sha256).digest()[:4]


def make_tag(tag_key: bytes | None, wall_now: float, rng: Rng = os.urandom) -> bytes:
    """A fresh tag: recognisable by the cloud whose ``tag_key`` it is, random without one."""
    r = rng(4)
    if tag_key is None:
        return r + rng(4)
    return r + _mac(tag_key, epoch_of(wall_now), r)


def match_tag(tag: bytes, tag_keys: Mapping[str, bytes], wall_now: float) -> str | None:
    """The cloud id whose key made ``tag`` (this epoch or a neighbour), or ``None``."""
    found = _match(tag, tag_keys, wall_now)
    return found[0] if found is not None else None


def _match(
    tag: bytes, tag_keys: Mapping[str, bytes], wall_now: float
) -> tuple[str, bytes, int] | None:
    """(cloud id, its tag key, the epoch) that made ``tag``, or ``None``."""
    if len(tag) != 8:
        return None
    r, got = tag[:4], tag[4:]
    epoch = epoch_of(wall_now)
    for cloud_id, key in tag_keys.items():
        for e in (epoch, epoch - 1, epoch + 1):
            if hmac.compare_digest(_mac(key, e, r), got):
                return cloud_id, key, e
    return None
