"""The hello: what a host broadcasts so guests can find it (``docs/hello.md`` is the spec).

Ten bytes, so that it fits a legacy BLE advertisement (31 bytes) beside the flags and pairkit's
128-bit service UUID as service data::

    byte 0     bits 7-6  version (1)
               bit 5     visible: strangers may ask to pair now (a visibility window is open)
               bit 4     l2cap: the host accepts an L2CAP credit-based channel for bulk data
               bits 3-0  capabilities: display, keypad, confirm, scan-qr (Caps bits 0-3)
    byte 1     methods the host allows: bit 0 pin, 1 qr, 2 compare, 3 clear, 4 resume, 5 ttp
    bytes 2-9  tag: r (4 random bytes) || MAC (4 bytes)

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
    """A decoded hello."""

    visible: bool
    caps: Caps
    methods: frozenset[Method]
    tag: bytes
    l2cap: bool = False

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


def decode_hello(data: bytes) -> Hello:
    """Parse a hello strictly; :class:`DecodeError` for anything else."""
    if len(data) != HELLO_LEN:
        raise DecodeError(f"a hello is {HELLO_LEN} bytes, not {len(data)}")
    b0, b1 = data[0], data[1]
    if b0 >> 6 != HELLO_VERSION:
        raise DecodeError(f"unsupported hello version {b0 >> 6}")
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


def epoch_of(wall_now: float) -> int:
    """The tag epoch of a Unix time (15-minute periods)."""
    return int(wall_now // EPOCH_SECONDS)


def _mac(tag_key: bytes, epoch: int, r: bytes) -> bytes:
    msg = b"pairkit/1 hello" + epoch.to_bytes(8, "big") + r
    return hmac.new(tag_key, msg, sha256).digest()[:4]


def make_tag(tag_key: bytes | None, wall_now: float, rng: Rng = os.urandom) -> bytes:
    """A fresh tag: recognisable by the cloud whose ``tag_key`` it is, random without one."""
    r = rng(4)
    if tag_key is None:
        return r + rng(4)
    return r + _mac(tag_key, epoch_of(wall_now), r)


def match_tag(tag: bytes, tag_keys: Mapping[str, bytes], wall_now: float) -> str | None:
    """The cloud id whose key made ``tag`` (this epoch or a neighbour), or ``None``."""
    if len(tag) != 8:
        return None
    r, got = tag[:4], tag[4:]
    epoch = epoch_of(wall_now)
    for cloud_id, key in tag_keys.items():
        for e in (epoch, epoch - 1, epoch + 1):
            if hmac.compare_digest(_mac(key, e, r), got):
                return cloud_id
    return None
