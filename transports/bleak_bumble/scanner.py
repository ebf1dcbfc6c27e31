"""bleak's scanner interface over a bumble device (bleak 3.x ``BaseBleakScanner``).

Each advertising report becomes bleak's :class:`~bleak.backends.scanner.AdvertisementData`:
the local name, every manufacturer-specific data entry, **every** service-data entry (16-, 32-
and 128-bit UUIDs, keyed by bleak's normalised lower-case 128-bit strings), the advertised
service UUID lists, the TX power level and the RSSI.  As BlueZ does, an advertiser's scan
response is merged with its advertising data (what came later wins for single values).

A ``service_uuids`` filter keeps the advertisements whose service UUID *lists* (Complete or
Incomplete List of 16/32/128-bit Service Class UUIDs, CSS v11 Part A §1.1) name one of them,
which is what BlueZ, CoreBluetooth, WinRT and bleak's own check (``is_allowed_uuid``) do: a UUID
that appears only as the key of service data does not pass such a filter, on this backend as on
a laptop.

Usage::

    scanner = BleakScanner(callback, [uuid], backend=BumbleScanner, bumble={"adapter": adapter})
"""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass, field
from typing import Any, Literal

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bumble.device import Advertisement

from .adapter import BumbleAdapter, BumbleArgs, DeviceDetails, resolve_adapter

__all__ = ["BumbleScanner", "ParsedAd", "parse_ad", "uuid_str"]

#: bleak's value when the controller reports no RSSI (bleak-retry-connector's NO_RSSI_VALUE)
NO_RSSI = -127
_BASE_TAIL = "-0000-1000-8000-00805f9b34fb"

# AD types, Bluetooth Assigned Numbers §2.3 (CSS v11 Part A §1).
_UUID_LISTS = {0x02: 2, 0x03: 2, 0x04: 4, 0x05: 4, 0x06: 16, 0x07: 16}
_SERVICE_DATA = {0x16: 2, 0x20: 4, 0x21: 16}
_SHORT_NAME, _COMPLETE_NAME = 0x08, 0x09
_TX_POWER = 0x0A
_MANUFACTURER = 0xFF


def uuid_str(le_bytes: bytes) -> str:
    """bleak's normalised UUID text for a little-endian 16-, 32- or 128-bit UUID (Core 5.4
    Vol 3 Part B §2.5.1: shorter UUIDs are the Bluetooth Base UUID with a value in front)."""
    if len(le_bytes) == 2:
        return f"0000{int.from_bytes(le_bytes, 'little'):04x}{_BASE_TAIL}"
    if len(le_bytes) == 4:
        return f"{int.from_bytes(le_bytes, 'little'):08x}{_BASE_TAIL}"
    if len(le_bytes) == 16:
        return str(uuid_module.UUID(bytes=le_bytes[::-1]))
    raise ValueError(f"a UUID is 2, 4 or 16 bytes, not {len(le_bytes)}")


@dataclass
class ParsedAd:
    """The fields bleak reports, from one or more advertising data blocks."""

    local_name: str | None = None
    short_name: str | None = None
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    service_uuids: list[str] = field(default_factory=list)
    tx_power: int | None = None
    malformed: bool = False

    @property
    def name(self) -> str | None:
        return self.local_name if self.local_name is not None else self.short_name


def parse_ad(data: bytes, into: ParsedAd | None = None) -> ParsedAd:
    """Parse AD structures (Core 5.4 Vol 3 Part C §11) into ``into`` (or a new one).

    Never raises: a structure running past the end, or one too short for its type, marks the
    result ``malformed`` and parsing stops (or skips that structure) there; what came before
    is kept.
    """
    out = into if into is not None else ParsedAd()
    offset = 0
    while offset < len(data):
        length = data[offset]
        if length == 0:
            break  # early termination: the rest is padding
        end = offset + 1 + length
        if end > len(data):
            out.malformed = True
            break
        ad_type, value = data[offset + 1], data[offset + 2 : end]
        offset = end
        if ad_type in _UUID_LISTS:
            size = _UUID_LISTS[ad_type]
            if len(value) % size:
                out.malformed = True
            for i in range(0, len(value) - size + 1, size):
                text = uuid_str(value[i : i + size])
                if text not in out.service_uuids:
                    out.service_uuids.append(text)
        elif ad_type in _SERVICE_DATA:
            size = _SERVICE_DATA[ad_type]
            if len(value) < size:
                out.malformed = True
                continue
            out.service_data[uuid_str(value[:size])] = bytes(value[size:])
        elif ad_type == _COMPLETE_NAME:
            out.local_name = value.decode("utf-8", errors="replace")
        elif ad_type == _SHORT_NAME:
            out.short_name = value.decode("utf-8", errors="replace")
        elif ad_type == _TX_POWER:
            if len(value) != 1:
                out.malformed = True
                continue
            out.tx_power = int.from_bytes(value, "little", signed=True)
        elif ad_type == _MANUFACTURER:
            if len(value) < 2:
                out.malformed = True
                continue
            out.manufacturer_data[int.from_bytes(value[:2], "little")] = bytes(value[2:])
    return out


class BumbleScanner(BaseBleakScanner):
    """bleak's scanner on a :class:`BumbleAdapter` (module docstring).

    Arguments are bleak's; ``bumble`` is a :class:`BumbleArgs` (``{"adapter": adapter}`` or
    ``{"transport": "usb:0"}``...).  Other keywords (``bluez``, ``cb``...) are accepted and
    ignored, as bleak forwards every keyword to the backend.
    """

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bumble: BumbleArgs | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._args = dict(bumble or {})
        self._active = scanning_mode != "passive"
        self._adapter: BumbleAdapter | None = None
        self._adv: dict[str, bytes] = {}
        self._scan_response: dict[str, bytes] = {}

    @property
    def adapter(self) -> BumbleAdapter | None:
        """The adapter this scanner listens on, once started."""
        return self._adapter

    async def start(self) -> None:
        """Start scanning (clears ``seen_devices``, as bleak requires)."""
        adapter = await resolve_adapter(self._args)
        if self._adapter is not None:
            await self._adapter.remove_scan_listener(self._on_advertisement)
        self._adapter = adapter
        self.seen_devices = {}
        self._adv.clear()
        self._scan_response.clear()
        await adapter.add_scan_listener(self._on_advertisement, active=self._active)

    async def stop(self) -> None:
        """Stop scanning; idempotent."""
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            await adapter.remove_scan_listener(self._on_advertisement)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adapter = self._adapter
        if adapter is None:
            return
        key = str(advertisement.address)
        if advertisement.is_scan_response:
            self._scan_response[key] = advertisement.data_bytes
        else:
            self._adv[key] = advertisement.data_bytes
        parsed = parse_ad(self._adv.get(key, b""))
        parse_ad(self._scan_response.get(key, b""), into=parsed)
        if not self.is_allowed_uuid(parsed.service_uuids):
            return
        rssi = advertisement.rssi
        if rssi == Advertisement.RSSI_NOT_AVAILABLE:
            rssi = NO_RSSI
        data = AdvertisementData(
            local_name=parsed.name,
            manufacturer_data=parsed.manufacturer_data,
            service_data=parsed.service_data,
            service_uuids=parsed.service_uuids,
            tx_power=parsed.tx_power,
            rssi=rssi,
            platform_data=(advertisement,),
        )
        details = DeviceDetails(adapter, advertisement.address)
        device = self.create_or_update_device(key, key, parsed.name, details, data)
        self.call_detection_callbacks(device, data)
