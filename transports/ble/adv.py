"""pairkit's BLE advertisement: layout, capacity, parsing (DESIGN.md "Decisions", BLE discovery).

Core Specification Supplement (CSS) v11 Part A §1 defines the AD structures used here; Core
Specification 5.4 Vol 3 Part C §11 gives their framing (``length | type | data``, where
``length`` counts the type byte and the data).

Layout of a pairkit hello advertisement, byte by byte::

    +----+----+------+    +-----------+----+----------------------+------------+
    | 02 | 01 | 06   |    | 17 + n    | 21 | pairkit UUID (16 B,  | hello      |
    |    |    |flags |    |           |    | little-endian)       | (n bytes)  |
    +----+----+------+    +-----------+----+----------------------+------------+
      Flags AD (CSS A §1.3)     Service Data - 128-bit UUID AD (CSS A §1.11)

* The Flags AD (3 bytes) is mandatory: the advertisement is connectable and a flag bit is set
  (CSS A §1.3.1): LE General Discoverable (0x02) | BR/EDR Not Supported (0x04).
* The service data carries pairkit's 128-bit service UUID, so any scanner (bleak's
  ``service_data`` dict, Android's ``ScanFilter``, CoreBluetooth) recognises pairkit without a
  Bluetooth SIG-assigned 16-bit UUID, followed by the opaque hello.

Capacity, exactly: a legacy advertisement holds 31 bytes (Core Vol 6 Part B §2.3.1.1), so the
hello may be 31 - 3 (flags) - 2 (AD length and type) - 16 (UUID) = **10 bytes**.  A 128-bit
identification and a 20-byte hello cannot share 31 bytes (2 + 16 + 20 = 38 > 31 even without
flags), so a longer hello needs extended advertising: the host reports at most 229 bytes of
advertising data per HCI LE Extended Advertising Report (255 - 26 bytes of event header; bumble
does not reassemble fragmented reports), so the hello may be 229 - 21 = **208 bytes** there.
The local name is never advertised: it would be a static identifier (DESIGN.md, Discovery).

This module is pure: no bumble, no asyncio, no clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pairkit.pairing.errors import ConfigError, TooLargeError

__all__ = [
    "AD_FLAGS",
    "EXTENDED_ADV_DATA_MAX",
    "EXTENDED_PAYLOAD_MAX",
    "LEGACY_ADV_DATA_MAX",
    "LEGACY_PAYLOAD_MAX",
    "PAIRKIT_L2CAP_PSM",
    "PAIRKIT_PSM_CHAR_UUID",
    "PAIRKIT_RX_CHAR_UUID",
    "PAIRKIT_SERVICE_UUID",
    "PAIRKIT_TX_CHAR_UUID",
    "ParsedAdvertisement",
    "encode_advertising_data",
    "max_payload",
    "parse_advertising_data",
    "random_static_address",
]

#: pairkit's GATT service UUID, also the key of the hello's service data (a random UUID v4).
PAIRKIT_SERVICE_UUID = uuid.UUID("0ba1fda5-7736-4b85-a81c-88b4c733b922")
#: Guest -> host messages: the guest writes without response (ATT Write Command).
PAIRKIT_RX_CHAR_UUID = uuid.UUID("0ba1fda5-7736-4b85-a81c-88b4c733b923")
#: Host -> guest messages: the host notifies (the guest enables them through the CCCD).
PAIRKIT_TX_CHAR_UUID = uuid.UUID("0ba1fda5-7736-4b85-a81c-88b4c733b924")
#: Read-only, 2 bytes little-endian: the host's L2CAP CoC PSM, 0 when it offers none.
PAIRKIT_PSM_CHAR_UUID = uuid.UUID("0ba1fda5-7736-4b85-a81c-88b4c733b925")
#: The LE PSM a host asks for first (dynamic range 0x0080-0x00FF, Core Vol 3 Part A §4.22);
#: the PSM characteristic says which one it got.
PAIRKIT_L2CAP_PSM = 0x00A5

AD_TYPE_FLAGS = 0x01
AD_TYPE_SHORTENED_LOCAL_NAME = 0x08
AD_TYPE_COMPLETE_LOCAL_NAME = 0x09
AD_TYPE_SERVICE_DATA_128 = 0x21
#: LE General Discoverable Mode | BR/EDR Not Supported (CSS Part A §1.3).
AD_FLAGS = bytes([0x02, AD_TYPE_FLAGS, 0x06])

LEGACY_ADV_DATA_MAX = 31  #: Core Vol 6 Part B §2.3.1.1 (AdvData of ADV_IND)
EXTENDED_ADV_DATA_MAX = (
    229  #: one HCI LE Extended Advertising Report (Core Vol 4 Part E §7.7.65.13)
)
_OVERHEAD = len(AD_FLAGS) + 2 + 16
LEGACY_PAYLOAD_MAX = LEGACY_ADV_DATA_MAX - _OVERHEAD  #: 10 bytes
EXTENDED_PAYLOAD_MAX = EXTENDED_ADV_DATA_MAX - _OVERHEAD  #: 208 bytes

_UUID_LE = PAIRKIT_SERVICE_UUID.bytes[::-1]


def max_payload(extended: bool) -> int:
    """The largest hello that fits one advertisement (see the module docstring)."""
    return EXTENDED_PAYLOAD_MAX if extended else LEGACY_PAYLOAD_MAX


def encode_advertising_data(payload: bytes, *, extended: bool = False) -> bytes:
    """Flags AD + 128-bit service data AD carrying ``payload`` (CSS Part A §1.3, §1.11).

    Raises :class:`TooLargeError` when ``payload`` does not fit and :class:`ConfigError` when
    it is empty (an empty hello cannot be told apart from a broken one).
    """
    if not payload:
        raise ConfigError("the hello payload is empty")
    limit = max_payload(extended)
    if len(payload) > limit:
        kind = "an extended" if extended else "a legacy"
        raise TooLargeError(
            f"the hello is {len(payload)} bytes; {kind} advertisement carries at most {limit}"
        )
    service_data = bytes([1 + 16 + len(payload), AD_TYPE_SERVICE_DATA_128]) + _UUID_LE + payload
    return AD_FLAGS + service_data


@dataclass(frozen=True)
class ParsedAdvertisement:
    """What a scanner makes of one advertisement's data.

    ``payload`` is pairkit's hello when the data carries one; ``malformed`` is true when the AD
    structures do not parse (a length running past the end, service data shorter than its UUID,
    pairkit service data with no hello); such data never yields a payload.
    """

    payload: bytes | None
    name: str | None
    malformed: bool


def parse_advertising_data(data: bytes) -> ParsedAdvertisement:
    """Parse AD structures (Core Vol 3 Part C §11); never raises on any input."""
    payload: bytes | None = None
    name: str | None = None
    offset = 0
    while offset < len(data):
        length = data[offset]
        if length == 0:
            # Early termination: the rest is padding (Core Vol 3 Part C §11).
            break
        end = offset + 1 + length
        if end > len(data):
            return ParsedAdvertisement(None, name, True)
        ad_type = data[offset + 1]
        value = data[offset + 2 : end]
        offset = end
        if ad_type == AD_TYPE_SERVICE_DATA_128:
            if len(value) < 16:
                return ParsedAdvertisement(None, name, True)
            if value[:16] == _UUID_LE and payload is None:
                if len(value) == 16:
                    return ParsedAdvertisement(None, name, True)
                payload = value[16:]
        elif ad_type in (AD_TYPE_COMPLETE_LOCAL_NAME, AD_TYPE_SHORTENED_LOCAL_NAME):
            if name is None or ad_type == AD_TYPE_COMPLETE_LOCAL_NAME:
                name = value.decode("utf-8", errors="replace")
    return ParsedAdvertisement(payload, name, False)


def random_static_address(rng: Callable[[int], bytes]) -> str:
    """A random static device address (Core Vol 6 Part B §1.3.2.1), as ``AA:BB:CC:DD:EE:FF``.

    The two most significant bits are 1; the other 46 bits are random and neither all 0 nor
    all 1.
    """
    for _ in range(64):
        raw = bytearray(rng(6))
        if len(raw) != 6:
            raise ConfigError("the random source returned the wrong number of bytes")
        raw[0] |= 0xC0
        rest = int.from_bytes(raw, "big") & ((1 << 46) - 1)
        if rest not in (0, (1 << 46) - 1):
            return ":".join(f"{b:02X}" for b in raw)
    raise ConfigError("the random source keeps returning an invalid static address")
