"""A bleak application, written as bleak's own examples are: it knows nothing of pairkit or of
tests.  It finds a thermometer by name, reads its battery, writes an alert level, takes one
temperature notification, and watches for the thermometer going away."""

from __future__ import annotations

import asyncio

from bleak import BleakClient, BleakScanner

BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"
ALERT_LEVEL = "00002a06-0000-1000-8000-00805f9b34fb"
TEMPERATURE = "00002a1c-0000-1000-8000-00805f9b34fb"
BATTERY_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"


async def names_around(seconds: float = 1.0) -> list[str]:
    """The names of the devices heard advertising."""
    devices = await BleakScanner.discover(timeout=seconds)
    return sorted(d.name for d in devices if d.name)


async def check_thermometer(name: str, timeout: float = 5.0) -> dict[str, object]:
    """Battery level, the first temperature notified, and whether the thermometer hung up."""
    device = await BleakScanner.find_device_by_name(name, timeout=timeout)
    if device is None:
        raise LookupError(f"no device called {name!r}")
    gone = asyncio.Event()
    temperatures: asyncio.Queue[bytes] = asyncio.Queue()

    def on_disconnect(client: BleakClient) -> None:
        gone.set()

    def on_temperature(_characteristic: object, data: bytearray) -> None:
        temperatures.put_nowait(bytes(data))

    async with BleakClient(device, disconnected_callback=on_disconnect) as client:
        battery = (await client.read_gatt_char(BATTERY_LEVEL))[0]
        await client.write_gatt_char(ALERT_LEVEL, b"\x02", response=True)
        await client.start_notify(TEMPERATURE, on_temperature)
        first = await asyncio.wait_for(temperatures.get(), timeout)
        await client.stop_notify(TEMPERATURE)
        await asyncio.wait_for(gone.wait(), timeout)  # the thermometer hangs up when done
    return {"battery": battery, "temperature": first, "hung_up": gone.is_set()}


async def connected_thermometers() -> list[str]:
    """The addresses of the battery-serving devices this machine is connected to
    (bleak 3.1's BleakAdapter)."""
    from bleak import BleakAdapter

    adapter = await BleakAdapter.get()
    return [d.address for d in await adapter.get_connected_devices([BATTERY_SERVICE])]
