"""pytest fixtures for BLE code written with bleak: a virtual peripheral and a bleak client.

Installed with pairkit as a pytest plugin (entry point ``pairkit`` in the ``pytest11`` group), so
any project that depends on pairkit gets the ``virtual_ble`` fixture with no import.  It gives a
test one in-process virtual radio (bumble's controllers on a
:class:`~transports.ble.virtual.VirtualRadio`), peripherals on it whose GATT services the test
writes with bumble's API, and bleak scanners and clients on pairkit's bleak backend
(:mod:`transports.bleak_bumble`), so the code under test runs bleak's real API against a real
host stack, with no radio and no OS Bluetooth service::

    from bleak import BleakClient
    from bumble.gatt import Characteristic, Service

    async def test_reads_the_battery_level(virtual_ble):
        level = Characteristic(
            "2A19", Characteristic.Properties.READ, Characteristic.READABLE, bytes([87])
        )
        battery = Service("180F", [level])
        peripheral = await virtual_ble.peripheral(name="thermo", services=[battery])
        async with virtual_ble.client(peripheral.address) as client:
            assert await client.read_gatt_char("2a19") == bytearray([87])

Code that builds its own ``BleakClient``/``BleakScanner`` takes ``**virtual_ble.client_kwargs``
(``backend=...`` and ``bumble={"adapter": ...}``) and ``**virtual_ble.scanner_kwargs``.

Code that cannot be changed, an application that calls ``BleakScanner.find_device_by_name``,
``BleakScanner.discover`` or ``BleakClient(address)`` inside, uses the ``virtual_bleak`` fixture
instead: the same radio, with bleak's own defaults pointing at it for the test's duration
(:mod:`transports.bleak_bumble.defaults`), ``BleakAdapter.get()`` included::

    async def test_the_app_reads_the_battery(virtual_bleak):
        await virtual_bleak.peripheral(name="thermo", services=[battery])
        assert await my_app.battery_level("thermo") == 87      # no change to my_app

The fixtures need pytest-asyncio (any mode); everything they made is closed after the test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from bleak import BleakClient, BleakScanner
    from bumble.device import Device
    from bumble.gatt import Characteristic, Service

    from .ble.virtual import VirtualRadio
    from .bleak_bumble import BumbleAdapter

__all__ = ["VirtualBle", "VirtualPeripheral", "virtual_ble", "virtual_bleak"]

_LEGACY_ADV_MAX = 31  # Core 5.4 Vol 6 Part B §2.3.1.1


@dataclass
class VirtualPeripheral:
    """A bumble device advertising on the virtual radio: the "device under test" of a test.

    ``device`` is bumble's :class:`~bumble.device.Device` (its GATT server, connections...);
    ``address`` is what bleak sees.
    """

    device: Device
    address: str
    controller: Any = None

    async def notify(self, characteristic: Characteristic[Any], value: bytes) -> None:
        """Notify every subscribed client of ``value`` (ATT Handle Value Notification)."""
        await self.device.notify_subscribers(characteristic, value)

    async def indicate(self, characteristic: Characteristic[Any], value: bytes) -> None:
        """Indicate ``value`` to every subscribed client and wait for the confirmations."""
        await self.device.indicate_subscribers(characteristic, value)

    async def disconnect(self) -> None:
        """Hang up on every client (they see "the peer closed the connection")."""
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def stop_advertising(self) -> None:
        await self.device.stop_advertising()

    def vanish(self, radio: VirtualRadio) -> None:
        """Leave the radio without a word, as a device out of range: clients hear nothing
        more (a virtual link never times out, so their own deadlines must end their waits)."""
        if self.controller is not None:
            radio.unplug(self.controller)


@dataclass
class VirtualBle:
    """One virtual radio, a bleak-side adapter on it, and the peripherals a test adds."""

    radio: VirtualRadio
    adapter: BumbleAdapter
    peripherals: list[VirtualPeripheral] = field(default_factory=list)
    _rng: Callable[[int], bytes] = os.urandom

    @classmethod
    async def create(cls, rng: Callable[[int], bytes] = os.urandom) -> VirtualBle:
        """A fresh radio and an open adapter for the central side (call in the test's loop)."""
        from .ble.virtual import VirtualRadio
        from .bleak_bumble import BumbleAdapter

        radio = VirtualRadio()
        adapter = await BumbleAdapter("virtual", radio=radio, name="bleak-central", rng=rng).open()
        return cls(radio, adapter, _rng=rng)

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """Keywords that put a ``BleakClient`` on this radio."""
        from .bleak_bumble import BumbleClient

        return {"backend": BumbleClient, "bumble": {"adapter": self.adapter}}

    @property
    def scanner_kwargs(self) -> dict[str, Any]:
        """Keywords that put a ``BleakScanner`` on this radio."""
        from .bleak_bumble import BumbleScanner

        return {"backend": BumbleScanner, "bumble": {"adapter": self.adapter}}

    @contextlib.contextmanager
    def as_bleak_default(self) -> Iterator[None]:
        """While active, bleak code that names no backend runs on this radio (what the
        ``virtual_bleak`` fixture does for a whole test)."""
        from .bleak_bumble.defaults import bleak_defaults

        with bleak_defaults(self.adapter):
            yield

    def client(self, address_or_device: Any, **kwargs: Any) -> BleakClient:
        """A ``BleakClient`` on this radio (not connected yet: ``async with`` or ``connect``)."""
        from bleak import BleakClient

        return BleakClient(address_or_device, **self.client_kwargs, **kwargs)

    def scanner(
        self, detection_callback: Any = None, service_uuids: list[str] | None = None, **kwargs: Any
    ) -> BleakScanner:
        """A ``BleakScanner`` on this radio."""
        from bleak import BleakScanner

        return BleakScanner(detection_callback, service_uuids, **self.scanner_kwargs, **kwargs)

    async def peripheral(
        self,
        *,
        name: str = "peripheral",
        services: Sequence[Service] = (),
        advertising_data: bytes | None = None,
        address: str | None = None,
        advertise: bool = True,
    ) -> VirtualPeripheral:
        """A powered-on bumble device serving ``services``, advertising (connectable) every
        20 ms, again after each disconnection: by default its flags, its name and the UUIDs of
        its services that fit."""
        from bumble import hci
        from bumble.device import Device
        from bumble.host import Host
        from bumble.transport.common import AsyncPipeSink

        from .ble.adv import random_static_address

        controller = self.radio.create_controller(name)
        host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
        address = address or random_static_address(self._rng)
        device = Device(name=name, address=hci.Address(address), host=host)
        for service in services:
            device.add_service(service)
        await device.power_on()
        peripheral = VirtualPeripheral(device, str(device.random_address), controller)
        self.peripherals.append(peripheral)
        if advertise:
            data = advertising_data
            if data is None:
                data = _default_advertising_data(name, services)
            await device.start_advertising(
                own_address_type=hci.OwnAddressType.RANDOM,
                auto_restart=True,  # again after each disconnection, as most peripherals do
                advertising_data=data,
                advertising_interval_min=20,
                advertising_interval_max=20,
            )
        return peripheral

    async def close(self) -> None:
        """Power everything off (the fixture does this after the test)."""
        for peripheral in self.peripherals:
            with contextlib.suppress(Exception):
                await peripheral.device.power_off()
            peripheral.vanish(self.radio)
        await self.adapter.close()


def _default_advertising_data(name: str, services: Sequence[Service]) -> bytes:
    """Flags, complete local name, and the service UUIDs that still fit in 31 bytes."""
    from bumble.core import AdvertisingData

    structures: list[tuple[int, bytes]] = [
        (AdvertisingData.FLAGS, bytes([0x06])),
        (AdvertisingData.COMPLETE_LOCAL_NAME, name.encode()),
    ]
    by_size: dict[int, list[bytes]] = {2: [], 4: [], 16: []}
    for service in services:
        raw = service.uuid.to_bytes()
        by_size[len(raw)].append(raw)
    kinds = {
        2: AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        4: AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
        16: AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    }
    for size, uuids in by_size.items():
        if uuids:
            candidate = [*structures, (kinds[size], b"".join(uuids))]
            if len(bytes(AdvertisingData(candidate))) <= _LEGACY_ADV_MAX:  # type: ignore[arg-type]
                structures = candidate
    return bytes(AdvertisingData(structures))  # type: ignore[arg-type]


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is a test dependency of pairkit

    @pytest.fixture
    def virtual_ble() -> VirtualBle:
        """Needs pytest-asyncio."""
        pytest.skip("the virtual_ble fixture needs pytest-asyncio: pip install pytest-asyncio")

else:

    @pytest_asyncio.fixture
    async def virtual_ble() -> AsyncIterator[VirtualBle]:
        """A virtual radio with a bleak-side adapter; add peripherals with ``.peripheral()``."""
        ble = await VirtualBle.create()
        try:
            yield ble
        finally:
            await ble.close()

    @pytest_asyncio.fixture
    async def virtual_bleak(virtual_ble: VirtualBle) -> AsyncIterator[VirtualBle]:
        """``virtual_ble``, with bleak's default backends pointing at its radio for the whole
        test: unmodified bleak code (``BleakScanner.discover()``, ``BleakClient(address)``,
        ``BleakAdapter.get()``) finds and talks to the test's peripherals."""
        with virtual_ble.as_bleak_default():
            yield virtual_ble
