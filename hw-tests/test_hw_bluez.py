"""On a BlueZ laptop: a ``clear`` join leaves no BlueZ entry behind, and a transfer's pace
requests reach BlueZ (issue 15, items 6 and 7).

Run on Linux with BlueZ as the guest and a second controller for the host, e.g. a USB dongle
that bumble drives (BlueZ keeps the built-in one)::

    PAIRKIT_HW_HOST=bumble:usb:VID:PID PAIRKIT_HW_GUEST=bleak \\
        .venv/bin/python -m pytest hw-tests/test_hw_bluez.py -s

(``pairkit radio --list`` names the controllers; ``bleak:hci1`` picks another BlueZ adapter.)
BlueZ pairs Just Works without an agent.  It is skipped elsewhere: the guest must be ``bleak``
or ``bleak:hciN`` on Linux, where bleak's ``pair()`` marks the host Trusted.

What it checks, by asking BlueZ itself over D-Bus (``GetManagedObjects`` on ``org.bluez``):

1. after bleak's ``pair()`` the host's device object is Trusted (what would stay behind);
2. once the link is closed, no device object for that address is Paired, Bonded or Trusted
   (BlueZ may list it again as a temporary device if something is scanning: that one goes away
   on its own);
3. a host the user had trusted before is left as it was (then the test removes it itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from typing import Any

import pytest

from pairkit.transports.bleak import parse_bluez_adapter
from pairkit.transports.registry import open_transport

pytestmark = pytest.mark.timeout(300)

CONNECT_TIMEOUT = 20.0
HELLO = b"\x40" + bytes(9)


def _bluez_guest(spec: str) -> bool:
    kind, _, rest = spec.partition(":")
    return platform.system() == "Linux" and kind == "bleak" and (
        not rest or parse_bluez_adapter(rest) is not None
    )


@pytest.fixture
def bluez_guest(hw_guest: str) -> str:
    if not _bluez_guest(hw_guest):
        pytest.skip(
            "needs BlueZ: on Linux set PAIRKIT_HW_GUEST=bleak (or bleak:hciN) and "
            "PAIRKIT_HW_HOST to a second controller, e.g. bumble:usb:VID:PID"
        )
    return hw_guest


async def bluez_devices(address: str) -> list[dict[str, Any]]:
    """BlueZ's Device1 properties for every device object with ``address``."""
    from dbus_fast import BusType, Message
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(
            destination="org.bluez", path="/",
            interface="org.freedesktop.DBus.ObjectManager", member="GetManagedObjects",
        ))
    finally:
        bus.disconnect()
    found = []
    for path, interfaces in reply.body[0].items():
        device = interfaces.get("org.bluez.Device1")
        if device and device["Address"].value.upper() == address.upper():
            found.append({"path": path, **{k: v.value for k, v in device.items()}})
    return found


async def set_trusted(path: str) -> None:
    from dbus_fast import BusType, Message, Variant
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        await bus.call(Message(
            destination="org.bluez", path=path, interface="org.freedesktop.DBus.Properties",
            member="Set", signature="ssv",
            body=["org.bluez.Device1", "Trusted", Variant("b", True)],
        ))
    finally:
        bus.disconnect()


def persistent(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in devices if d.get("Paired") or d.get("Bonded") or d.get("Trusted")]


async def test_a_clear_join_leaves_no_bluez_entry(hw_host: str, bluez_guest: str) -> None:
    host = await open_transport(hw_host)
    guest = await open_transport(bluez_guest)
    try:
        await host.start_advertising(HELLO)
        accepting = asyncio.ensure_future(host.accept(timeout=CONNECT_TIMEOUT))
        guest_link = await guest.connect(host.address, timeout=CONNECT_TIMEOUT)
        host_link = await accepting
        assert persistent(await bluez_devices(host.address)) == []
        await asyncio.wait_for(guest_link.encrypt(), 30)
        assert persistent(await bluez_devices(host.address)), "pair() did not trust the host"

        # Item 7 on the air: a transfer asks BlueZ for the fast pace; it arrives whole.
        data = bytes(range(256)) * 1024
        started = time.perf_counter()
        receiving = asyncio.ensure_future(_receive(guest_link, len(data)))
        for i in range(0, len(data), host_link.mtu):
            await host_link.send(data[i:i + host_link.mtu])
        assert await asyncio.wait_for(receiving, 120) == data
        spent = time.perf_counter() - started
        stats = host_link.pacer.stats if host_link.pacer is not None else None
        print(f"\n256 KiB to BlueZ in {spent:.2f} s; pace {stats}; interval now "
              f"{host_link.connection.parameters.connection_interval} ms")

        await guest_link.close()
        assert persistent(await bluez_devices(host.address)) == []
    finally:
        await guest.close()
        await host.close()


async def test_a_host_trusted_before_is_left_alone(hw_host: str, bluez_guest: str) -> None:
    host = await open_transport(hw_host)
    guest = await open_transport(bluez_guest)
    try:
        await host.start_advertising(HELLO)
        accepting = asyncio.ensure_future(host.accept(timeout=CONNECT_TIMEOUT))
        await heard(guest)  # BlueZ makes the device object when it hears it
        for device in await bluez_devices(host.address):
            await set_trusted(device["path"])
        # pairkit reads a device's state from the last advertisement it heard (bleak's
        # BLEDevice.details): hear one after the change.
        await heard(guest)
        guest_link = await guest.connect(host.address, timeout=CONNECT_TIMEOUT)
        await accepting
        await asyncio.wait_for(guest_link.encrypt(), 30)
        await guest_link.close()
        kept = persistent(await bluez_devices(host.address))
        assert kept, "a device the user trusted was removed"
    finally:
        await guest.close()
        await host.close()
        from bleak import BleakClient

        client = BleakClient(host.address)  # the user's entry was the test's: remove it
        try:
            await client.unpair()
        except Exception as exc:  # already gone
            print(f"cleanup: {type(exc).__name__}")


async def heard(guest: Any) -> None:
    """Scan until the first hello, then stop the scan."""
    async with contextlib.aclosing(guest.scan(5.0)) as sightings:
        async for _ in sightings:
            return
    raise AssertionError("no hello heard in 5 s")


async def _receive(link: Any, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await link.recv()
    return bytes(got)
