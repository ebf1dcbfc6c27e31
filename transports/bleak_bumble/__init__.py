"""A bleak backend on bumble: the same bleak code on a virtual controller, a USB dongle or a
``pairkit radio`` port.

bleak (3.x) lets a program pass its own backend classes: ``BleakScanner(..., backend=Cls)`` and
``BleakClient(..., backend=Cls)``, forwarding every other keyword to them.  This package gives
bleak a :class:`BumbleScanner` and a :class:`BumbleClient` that run on bumble's host stack
through a :class:`BumbleAdapter` (one bumble device on one controller, shared by all the scanners
and clients given it)::

    from bleak import BleakClient, BleakScanner
    from pairkit.transports.bleak_bumble import BumbleAdapter, BumbleClient, BumbleScanner

    async with BumbleAdapter("usb:0") as adapter:      # or "virtual", "tcp-client:127.0.0.1:P"
        extra = {"bumble": {"adapter": adapter}}
        device = await BleakScanner.find_device_by_name(
            "thermo", backend=BumbleScanner, **extra
        )
        async with BleakClient(device, backend=BumbleClient, **extra) as client:
            print(await client.read_gatt_char("2a19"))

What bleak promises, this backend keeps: ATT errors are
:class:`~bleak.exc.BleakGATTProtocolError`, a radio that cannot be used is
:class:`~bleak.exc.BleakBluetoothNotAvailableError` with a text saying why and what to do,
timeouts are :class:`TimeoutError`, other failures :class:`~bleak.exc.BleakError`; nothing of
bumble's leaks out.  bleak-retry-connector's ``establish_connection`` works with it unchanged.

:mod:`transports.pytest_plugin` gives tests a virtual peripheral and a bleak client on this
backend; :mod:`transports.bleak` runs pairkit's guest over bleak, on this backend with
``bleak:bumble:SPEC``.
"""

from __future__ import annotations

from .adapter import (
    BumbleAdapter,
    BumbleArgs,
    DeviceDetails,
    close_shared_adapters,
    resolve_adapter,
    shared_adapter,
    smp_config,
)
from .client import BumbleClient
from .errors import describe_open_error, open_error, to_bleak_error
from .scanner import BumbleScanner, ParsedAd, parse_ad, uuid_str

__all__ = [
    "BumbleAdapter",
    "BumbleArgs",
    "BumbleClient",
    "BumbleScanner",
    "DeviceDetails",
    "ParsedAd",
    "close_shared_adapters",
    "describe_open_error",
    "open_error",
    "parse_ad",
    "resolve_adapter",
    "shared_adapter",
    "smp_config",
    "to_bleak_error",
    "uuid_str",
]
