"""Unmodified bleak applications against virtual peripherals (issue 15, item 8).

``tests/sample_apps/thermo_app.py`` is written the way bleak's examples are: it builds its own
``BleakScanner`` and ``BleakClient`` with no backend argument, as most applications do.  The
``virtual_bleak`` fixture (pairkit's pytest plugin) points bleak's own defaults at a virtual
radio for the test, so the application finds, reads, writes, subscribes and sees the
disconnection on a bumble peripheral with no change to its code.  Without the fixture the same
call goes to the OS stack (here: no D-Bus, so it fails), which shows the redirection is real and
is undone after the test.
"""

from __future__ import annotations

import asyncio

import bleak
import pytest
from bumble.gatt import Characteristic, Service

from pairkit.transports.bleak_bumble.defaults import BACKEND_ID, bleak_defaults
from tests.sample_apps import thermo_app


def thermometer() -> tuple[list[Service], Characteristic, list[bytes]]:
    """A battery service, an alert level the app writes, and a temperature it is notified of."""
    written: list[bytes] = []
    battery = Characteristic("2A19", Characteristic.Properties.READ, Characteristic.READABLE,
                             bytes([87]))
    alert = Characteristic(
        "2A06", Characteristic.Properties.WRITE, Characteristic.WRITEABLE,
        bytes([0]),
    )
    alert.on("write", lambda _connection, value: written.append(bytes(value)))
    temperature = Characteristic("2A1C", Characteristic.Properties.NOTIFY, 0, b"")
    services = [Service("180F", [battery]), Service("1802", [alert]),
                Service("1809", [temperature])]
    return services, temperature, written


async def test_an_unmodified_bleak_app_runs_against_a_virtual_peripheral(virtual_bleak) -> None:  # type: ignore[no-untyped-def]
    services, temperature, written = thermometer()
    thermo = await virtual_bleak.peripheral(name="thermo", services=services)
    await virtual_bleak.peripheral(name="kettle")

    assert await thermo_app.names_around(1.0) == ["kettle", "thermo"]

    def subscribed() -> bool:
        cccds = thermo.device.gatt_server.subscribers.values()
        return any(c.get(temperature.handle, b"\x00\x00") != b"\x00\x00" for c in cccds)

    async def hang_up_after_the_first_temperature() -> None:
        # as a thermometer would: notify the subscriber, and hang up once it unsubscribed
        while not subscribed():
            await asyncio.sleep(0.02)
        assert await thermo_app.connected_thermometers() == [thermo.address]
        await thermo.notify(temperature, b"\x00\x25\x01")
        while subscribed():
            await asyncio.sleep(0.02)
        await thermo.disconnect()

    player = asyncio.create_task(hang_up_after_the_first_temperature())
    result = await asyncio.wait_for(thermo_app.check_thermometer("thermo"), 20)
    await player
    assert result == {"battery": 87, "temperature": b"\x00\x25\x01", "hung_up": True}
    assert written == [b"\x02"]
    assert await thermo_app.connected_thermometers() == []  # it hung up


async def test_an_unknown_name_is_the_apps_own_error(virtual_bleak) -> None:  # type: ignore[no-untyped-def]
    await virtual_bleak.peripheral(name="kettle")
    with pytest.raises(LookupError, match="no device called 'thermo'"):
        await thermo_app.check_thermometer("thermo", timeout=1.0)


async def test_the_defaults_are_bleaks_own_again_afterwards(virtual_ble) -> None:  # type: ignore[no-untyped-def]
    before = bleak.get_platform_scanner_backend_type
    with bleak_defaults(virtual_ble.adapter):
        assert bleak.BleakScanner().backend_id == BACKEND_ID
        assert bleak.BleakClient("AA:BB:CC:DD:EE:FF").backend_id == BACKEND_ID
    assert bleak.get_platform_scanner_backend_type is before
    assert bleak.BleakScanner().backend_id != BACKEND_ID  # the OS backend (BlueZ here)
