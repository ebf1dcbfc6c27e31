"""pairkit's bleak backend on bumble (transports/bleak_bumble): bleak's own API, run for real.

Every test drives bleak's public classes (``BleakScanner``, ``BleakClient``, and
bleak-retry-connector's ``establish_connection``) with ``backend=BumbleScanner`` /
``BumbleClient`` against peripherals written with bumble's GATT server, all on one virtual radio
per test (the ``virtual_ble`` fixture of transports/pytest_plugin.py).  Nothing is mocked: the
advertising, the ATT PDUs, SMP and the HCI connection commands all go through bumble's host
stack and virtual controllers.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from bleak_retry_connector import establish_connection
from bumble import hci
from bumble.att import ATT_Error, ErrorCode
from bumble.core import AdvertisingData
from bumble.device import Advertisement
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import TransportInitError
from hypothesis import given
from hypothesis import strategies as st

from pairkit.transports.bleak_bumble import (
    BumbleAdapter,
    BumbleClient,
    close_shared_adapters,
    describe_open_error,
    parse_ad,
    shared_adapter,
    uuid_str,
)
from pairkit.transports.pytest_plugin import VirtualBle, VirtualPeripheral

HEART = "0000180d-0000-1000-8000-00805f9b34fb"
CUSTOM = "12345678-1234-5678-1234-56789abcdef0"
CUSTOM_WRITE = "12345678-1234-5678-1234-56789abcdef1"
CUSTOM_NOTIFY = "12345678-1234-5678-1234-56789abcdef2"
CUSTOM_INDICATE = "12345678-1234-5678-1234-56789abcdef3"
LOCKED = "12345678-1234-5678-1234-56789abcdef4"
SLOW = "12345678-1234-5678-1234-56789abcdef5"
READ_ONLY = "12345678-1234-5678-1234-56789abcdef6"


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def ad(*structures: tuple[int, bytes]) -> bytes:
    return bytes(AdvertisingData(list(structures)))  # type: ignore[arg-type]


class Gatt:
    """A peripheral's GATT server with one characteristic of each kind, recording writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.slow_reads = asyncio.Event()
        self.notify = Characteristic(
            CUSTOM_NOTIFY,
            Characteristic.Properties.NOTIFY | Characteristic.Properties.READ,
            Characteristic.READABLE,
            b"first",
        )
        self.indicate = Characteristic(
            CUSTOM_INDICATE, Characteristic.Properties.INDICATE, Characteristic.READABLE, b""
        )

        def refuse(_connection: Any, _value: bytes) -> None:
            raise ATT_Error(ErrorCode.WRITE_REQUEST_REJECTED)

        async def never(_connection: Any) -> bytes:
            self.slow_reads.set()
            await asyncio.Event().wait()
            return b""

        self.service = Service(
            CUSTOM,
            [
                Characteristic(
                    CUSTOM_WRITE,
                    Characteristic.Properties.WRITE
                    | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
                    Characteristic.WRITEABLE,
                    CharacteristicValue(write=lambda _c, v: self.writes.append(bytes(v))),
                ),
                self.notify,
                self.indicate,
                Characteristic(
                    LOCKED,
                    Characteristic.Properties.WRITE | Characteristic.Properties.READ,
                    Characteristic.READ_REQUIRES_ENCRYPTION | Characteristic.WRITEABLE,
                    CharacteristicValue(read=lambda _c: b"secret", write=refuse),
                ),
                Characteristic(
                    SLOW,
                    Characteristic.Properties.READ,
                    Characteristic.READABLE,
                    CharacteristicValue(read=never),
                ),
                Characteristic(
                    READ_ONLY, Characteristic.Properties.READ, Characteristic.READABLE, b"ro"
                ),
            ],
        )


async def start(virtual_ble: VirtualBle, **kwargs: Any) -> tuple[VirtualPeripheral, Gatt]:
    gatt = Gatt()
    peripheral = await virtual_ble.peripheral(name="thermo", services=[gatt.service], **kwargs)
    return peripheral, gatt


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.005)


# -- scanning -------------------------------------------------------------------------------


async def test_scan_reports_every_field_and_every_service_data_entry(
    virtual_ble: VirtualBle,
) -> None:
    data = ad(
        (AdvertisingData.FLAGS, bytes([0x06])),
        (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, bytes.fromhex("0d180f18")),
        (AdvertisingData.COMPLETE_LOCAL_NAME, b"thermo"),
        (AdvertisingData.TX_POWER_LEVEL, bytes([0xF6])),  # -10 dBm
        (AdvertisingData.MANUFACTURER_SPECIFIC_DATA, bytes.fromhex("ffff") + b"mfr"),
        (AdvertisingData.SERVICE_DATA_16_BIT_UUID, bytes.fromhex("0d18") + b"sd16"),
    )
    second = ad(  # a second advertiser: 32- and 128-bit service data, no name
        (AdvertisingData.SERVICE_DATA_32_BIT_UUID, bytes.fromhex("78563412") + b"sd32"),
        (AdvertisingData.SERVICE_DATA_128_BIT_UUID, bytes.fromhex(CUSTOM.replace("-", ""))[::-1]),
    )
    first = await virtual_ble.peripheral(name="a", advertising_data=data)
    other = await virtual_ble.peripheral(name="b", advertising_data=second)
    heard: dict[str, AdvertisementData] = {}
    async with virtual_ble.scanner(lambda d, a: heard.setdefault(d.address, a)):
        await eventually(lambda: len(heard) == 2)
    one = heard[first.address]
    assert one.local_name == "thermo"
    assert one.service_uuids == [HEART, "0000180f-0000-1000-8000-00805f9b34fb"]
    assert one.tx_power == -10
    assert one.manufacturer_data == {0xFFFF: b"mfr"}
    assert one.service_data == {HEART: b"sd16"}
    assert one.rssi == -50
    two = heard[other.address]
    assert two.local_name is None and two.service_uuids == []
    assert two.service_data == {"12345678-0000-1000-8000-00805f9b34fb": b"sd32", CUSTOM: b""}


async def test_uuid_filter_matches_advertised_lists_not_service_data_keys(
    virtual_ble: VirtualBle,
) -> None:
    listed = await virtual_ble.peripheral(name="listed", services=[Gatt().service])
    data_only = await virtual_ble.peripheral(
        advertising_data=ad(
            (
                AdvertisingData.SERVICE_DATA_128_BIT_UUID,
                bytes.fromhex(CUSTOM.replace("-", ""))[::-1],
            )
        )
    )
    await virtual_ble.peripheral(name="unrelated")
    devices = await BleakScanner.discover(
        0.15, service_uuids=[CUSTOM.upper()], **virtual_ble.scanner_kwargs
    )
    assert {d.address for d in devices} == {listed.address}
    everything = await BleakScanner.discover(0.15, **virtual_ble.scanner_kwargs)
    assert data_only.address in {d.address for d in everything} and len(everything) == 3


async def test_scan_response_is_merged_with_the_advertisement(virtual_ble: VirtualBle) -> None:
    # Virtual controllers never deliver scan responses; feed the adapter two reports as a real
    # controller would (ADV_IND, then its SCAN_RSP).
    heard: list[AdvertisementData] = []
    scanner = virtual_ble.scanner(lambda _d, a: heard.append(a))
    await scanner.start()
    address = hci.Address("C5:00:00:00:00:01")
    advert = ad((AdvertisingData.SHORTENED_LOCAL_NAME, b"th"))
    response = ad(
        (AdvertisingData.COMPLETE_LOCAL_NAME, b"thermometer"),
        (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, bytes.fromhex("0d18")),
    )
    adapter = virtual_ble.adapter
    adapter._on_advertisement(Advertisement(address=address, data_bytes=advert, rssi=-60))
    adapter._on_advertisement(
        Advertisement(address=address, data_bytes=response, rssi=-61, is_scan_response=True)
    )
    await scanner.stop()
    assert [a.local_name for a in heard] == ["th", "thermometer"]
    assert heard[1].service_uuids == [HEART] and heard[1].rssi == -61
    ((device, latest),) = scanner.discovered_devices_and_advertisement_data.values()
    assert device.name == "thermometer" and latest is heard[1]


async def test_two_scanners_share_one_adapter(virtual_ble: VirtualBle) -> None:
    peripheral = await virtual_ble.peripheral()
    first: list[str] = []
    second: list[str] = []
    async with virtual_ble.scanner(lambda d, _a: first.append(d.address)):
        async with virtual_ble.scanner(lambda d, _a: second.append(d.address)):
            await eventually(lambda: bool(first) and bool(second))
        assert virtual_ble.adapter.device.is_scanning  # the first scanner still listens
        count = len(second)
        await asyncio.sleep(0.05)
        assert len(second) == count  # the stopped one hears nothing more
    assert not virtual_ble.adapter.device.is_scanning
    assert set(first) == {peripheral.address}


@given(st.binary(max_size=80))
def test_parse_ad_never_raises(data: bytes) -> None:
    parsed = parse_ad(data)
    assert all(isinstance(k, str) and len(k) == 36 for k in parsed.service_data)


@given(
    st.lists(st.binary(min_size=2, max_size=2), max_size=3),
    st.dictionaries(st.binary(min_size=16, max_size=16), st.binary(max_size=8), max_size=3),
    st.text(max_size=10),
)
def test_parse_ad_reads_what_was_built(
    uuids: list[bytes], service_data: dict[bytes, bytes], name: str
) -> None:
    structures = [(AdvertisingData.COMPLETE_LOCAL_NAME, name.encode())]
    if uuids:
        structures.append(
            (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, b"".join(uuids))
        )
    structures += [
        (AdvertisingData.SERVICE_DATA_128_BIT_UUID, k + v) for k, v in service_data.items()
    ]
    parsed = parse_ad(ad(*structures))
    assert not parsed.malformed
    assert parsed.name == name
    assert parsed.service_uuids == list(dict.fromkeys(uuid_str(u) for u in uuids))
    assert parsed.service_data == {uuid_str(k): v for k, v in service_data.items()}


def test_malformed_ad_keeps_what_came_before() -> None:
    good = ad((AdvertisingData.COMPLETE_LOCAL_NAME, b"ok"))
    for tail in (bytes([0x09, 0xFF, 1]), bytes([0x02, 0x16, 0x0D]), bytes([0x03, 0x0A, 1, 2])):
        parsed = parse_ad(good + tail)
        assert parsed.malformed and parsed.name == "ok"


# -- connecting and GATT ----------------------------------------------------------------------


async def test_connect_by_device_discovers_the_whole_database(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    device = await BleakScanner.find_device_by_name("thermo", 2, **virtual_ble.scanner_kwargs)
    assert isinstance(device, BLEDevice) and device.address == peripheral.address
    async with virtual_ble.client(device) as client:
        assert client.is_connected and client.name == "thermo"
        assert client.mtu_size == 517  # exchanged (Core Vol 3 Part F §3.4.2)
        service = client.services.get_service(CUSTOM)
        assert service is not None
        by_uuid = {c.uuid: c for c in service.characteristics}
        assert by_uuid[CUSTOM_WRITE].properties == ["write-without-response", "write"]
        assert by_uuid[CUSTOM_NOTIFY].properties == ["read", "notify"]
        assert by_uuid[CUSTOM_INDICATE].properties == ["indicate"]
        (cccd,) = by_uuid[CUSTOM_NOTIFY].descriptors
        assert cccd.uuid == "00002902-0000-1000-8000-00805f9b34fb"
        assert client.services.get_descriptor(cccd.handle) is cccd
        assert by_uuid[CUSTOM_WRITE].max_write_without_response_size == 512
        # bumble's own Generic Access service is there too, with the device name
        assert await client.read_gatt_char("2a00") == bytearray(b"thermo")


async def test_connect_by_address_without_scanning(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address, services=[CUSTOM, "1801"]) as client:
        uuids = {s.uuid for s in client.services}  # the service filter, 128- and 16-bit
        assert uuids == {CUSTOM, "00001801-0000-1000-8000-00805f9b34fb"}
        assert await client.read_gatt_char(READ_ONLY) == bytearray(b"ro")
    assert not client.is_connected


async def test_writes_with_and_without_response(virtual_ble: VirtualBle) -> None:
    peripheral, gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address) as client:
        await client.write_gatt_char(CUSTOM_WRITE, b"request", response=True)
        assert gatt.writes == [b"request"]  # a write request is answered after the write
        for i in range(50):
            await client.write_gatt_char(CUSTOM_WRITE, bytes([i]) * 512, response=False)
        await eventually(lambda: len(gatt.writes) == 51)
        assert gatt.writes[1:] == [bytes([i]) * 512 for i in range(50)]  # in order, whole
        with pytest.raises(BleakError, match="max_write_without_response_size"):
            await client.write_gatt_char(CUSTOM_WRITE, bytes(513), response=False)


async def test_mtu_exchange_sets_the_write_size(virtual_ble: VirtualBle) -> None:
    peripheral, gatt = await start(virtual_ble)
    adapter = BumbleAdapter("virtual", radio=virtual_ble.radio, att_mtu=64, rng=seeded(1))
    async with (
        adapter,
        BleakClient(
            peripheral.address, backend=BumbleClient, bumble={"adapter": adapter}
        ) as client,
    ):
        assert client.mtu_size == 64
        characteristic = client.services.get_characteristic(CUSTOM_WRITE)
        assert characteristic is not None
        assert characteristic.max_write_without_response_size == 61
        with pytest.raises(BleakError):
            await client.write_gatt_char(characteristic, bytes(62), response=False)
        # A write request longer than the MTU allows goes as prepared writes (Vol 3 Part G
        # §4.9.4) and arrives whole.
        await client.write_gatt_char(characteristic, bytes(range(200)), response=True)
        assert gatt.writes == [bytes(range(200))]


async def test_att_errors_are_gatt_protocol_errors(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address) as client:
        with pytest.raises(BleakGATTProtocolError) as refused:
            await client.write_gatt_char(LOCKED, b"x", response=True)
        assert refused.value.code == BleakGATTProtocolErrorCode.WRITE_REQUEST_REJECTED
        with pytest.raises(BleakGATTProtocolError) as unreadable:
            await client.read_gatt_char(LOCKED)
        assert unreadable.value.code == BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION
        assert await client.read_gatt_char(READ_ONLY) == bytearray(b"ro")  # still usable
        await client.pair()  # the usual answer to "insufficient encryption"
        assert await client.read_gatt_char(LOCKED) == bytearray(b"secret")


async def test_notifications_and_indications_arrive_in_order(virtual_ble: VirtualBle) -> None:
    peripheral, gatt = await start(virtual_ble)
    notified: list[bytearray] = []
    indicated: list[bytearray] = []
    async with virtual_ble.client(peripheral.address) as client:
        await client.start_notify(CUSTOM_NOTIFY, lambda _c, v: notified.append(v))
        await client.start_notify(CUSTOM_INDICATE, lambda _c, v: indicated.append(v))
        for i in range(100):
            await peripheral.notify(gatt.notify, i.to_bytes(2, "big") * 100)
        await peripheral.indicate(gatt.indicate, b"confirmed")  # returns once confirmed
        await eventually(lambda: len(notified) == 100)
        assert notified == [bytearray(i.to_bytes(2, "big") * 100) for i in range(100)]
        assert indicated == [bytearray(b"confirmed")]
        with pytest.raises(BleakError, match="already"):
            await client.start_notify(CUSTOM_NOTIFY, lambda _c, v: None)
        await client.stop_notify(CUSTOM_NOTIFY)
        await peripheral.notify(gatt.notify, b"unheard")
        await asyncio.sleep(0.05)
        assert len(notified) == 100
        # The last value heard is cached: a cached read needs no round trip.
        assert await client.read_gatt_char(CUSTOM_NOTIFY, use_cached=True) == notified[-1]
        with pytest.raises(BleakError, match="cannot notify"):
            await client.start_notify(READ_ONLY, lambda _c, v: None)


async def test_a_failing_notification_callback_does_not_break_the_link(
    virtual_ble: VirtualBle,
) -> None:
    peripheral, gatt = await start(virtual_ble)
    seen: list[bytes] = []

    def callback(_c: Any, value: bytearray) -> None:
        seen.append(bytes(value))
        raise RuntimeError("a bug in the application")

    async with virtual_ble.client(peripheral.address) as client:
        await client.start_notify(CUSTOM_NOTIFY, callback)
        await peripheral.notify(gatt.notify, b"one")
        await peripheral.notify(gatt.notify, b"two")
        await eventually(lambda: len(seen) == 2)
        assert await client.read_gatt_char(READ_ONLY) == bytearray(b"ro")


async def test_bleak_retry_connector_connects_through_the_backend(
    virtual_ble: VirtualBle,
) -> None:
    peripheral, _gatt = await start(virtual_ble)
    device = await BleakScanner.find_device_by_address(
        peripheral.address, 2, **virtual_ble.scanner_kwargs
    )
    assert device is not None
    client = await establish_connection(
        BleakClient, device, "thermo", max_attempts=2, **virtual_ble.client_kwargs
    )
    try:
        assert client.is_connected
        assert await client.read_gatt_char(READ_ONLY) == bytearray(b"ro")
    finally:
        await client.disconnect()


# -- disconnections -----------------------------------------------------------------------------


async def test_disconnected_callback_once_whoever_hangs_up(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    calls: list[BleakClient] = []
    client = virtual_ble.client(peripheral.address, disconnected_callback=calls.append)
    await client.connect()
    await peripheral.disconnect()  # the peripheral hangs up
    await eventually(lambda: calls == [client])
    assert not client.is_connected
    with pytest.raises(BleakError):  # the services went with the connection, as on BlueZ
        await client.read_gatt_char(READ_ONLY)
    assert client._backend.disconnect_reason == "the peer closed the connection"  # type: ignore[attr-defined]
    await client.disconnect()  # nothing to do, no error
    await client.connect()  # and again, then our side hangs up
    await client.disconnect()
    await eventually(lambda: len(calls) == 2)
    assert calls == [client, client]


async def test_a_pending_read_ends_when_the_connection_does(virtual_ble: VirtualBle) -> None:
    peripheral, gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address) as client:
        reading = asyncio.ensure_future(client.read_gatt_char(SLOW))
        await asyncio.wait_for(gatt.slow_reads.wait(), 2)
        await peripheral.disconnect()
        with pytest.raises(BleakError, match="disconnected"):
            await asyncio.wait_for(reading, 2)


async def test_connect_to_an_absent_device_times_out_then_connecting_works(
    virtual_ble: VirtualBle,
) -> None:
    client = virtual_ble.client("C0:11:22:33:44:55", timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match="out of range"):
        await client.connect()
    assert loop.time() - started < 0.3 + 0.5
    # A caller's own deadline (cancellation) also cancels the pending connection.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(virtual_ble.client("C0:11:22:33:44:56").connect(), 0.2)
    peripheral, _gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address, timeout=2) as reachable:
        assert reachable.is_connected
    assert not virtual_ble.adapter.device.connections


async def test_a_connection_completing_after_the_cancel_is_dropped(
    virtual_ble: VirtualBle,
) -> None:
    # The race a timed-out connect leaves: the peer answers just as we give up.  Cancel right
    # after the controller has the connection, before bumble hands it to the caller.
    peripheral, _gatt = await start(virtual_ble)
    adapter = virtual_ble.adapter
    task = asyncio.ensure_future(adapter.connect(hci.Address(peripheral.address)))
    adapter.device.once("connection", lambda _c: task.cancel())
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not adapter.device.connections and not peripheral.device.connections)
    async with virtual_ble.client(peripheral.address, timeout=2) as client:
        assert client.is_connected


async def test_concurrent_connects_on_one_adapter(virtual_ble: VirtualBle) -> None:
    peripherals = [(await start(virtual_ble))[0] for _ in range(3)]
    clients = [virtual_ble.client(p.address, timeout=5) for p in peripherals]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        for client in clients:
            assert await client.read_gatt_char(READ_ONLY) == bytearray(b"ro")
        assert len(virtual_ble.adapter.device.connections) == 3
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients))


async def test_clients_without_an_adapter_share_one_opened_once(
    virtual_ble: VirtualBle,
) -> None:
    peripherals = [(await start(virtual_ble))[0] for _ in range(2)]
    options = {"transport": "virtual", "radio": virtual_ble.radio}
    clients = [BleakClient(p.address, backend=BumbleClient, bumble=options) for p in peripherals]
    try:
        await asyncio.gather(*(c.connect() for c in clients))  # both create it at once
        adapters = {c._backend.adapter for c in clients}  # type: ignore[attr-defined]
        assert len(adapters) == 1
        assert adapters == {await shared_adapter("virtual", virtual_ble.radio)}
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients))
        await close_shared_adapters()


# -- pairing --------------------------------------------------------------------------------------


class Comparing(PairingDelegate):
    """A person who compares the six digits on both screens and answers ``answer``."""

    def __init__(self, answer: bool) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT)
        self.answer = answer
        self.codes: list[int] = []

    async def compare_numbers(self, number: int, digits: int) -> bool:
        self.codes.append(number)
        return self.answer


def peripheral_pairing(peripheral: VirtualPeripheral, delegate: PairingDelegate) -> None:
    from pairkit.transports.bleak_bumble import smp_config

    peripheral.device.pairing_config_factory = lambda _c: smp_config(delegate, mitm=True)


async def test_pair_just_works_encrypts_and_bonds(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address) as client:
        backend: BumbleClient = client._backend  # type: ignore[assignment]
        assert not backend.is_encrypted
        await client.pair()
        assert backend.is_encrypted
        (connection,) = peripheral.device.connections.values()
        assert connection.is_encrypted and connection.sc
        assert backend.pairing_outcome == (True, False)  # SC, Just Works: not MITM-protected
        keystore = virtual_ble.adapter.device.keystore
        assert keystore is not None and await keystore.get(peripheral.address) is not None
        await client.unpair()  # forgets the keys and hangs up
        assert await keystore.get(peripheral.address) is None
        assert not client.is_connected


async def test_pair_numeric_comparison_and_a_refusal(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    theirs = Comparing(True)
    peripheral_pairing(peripheral, theirs)
    ours = Comparing(True)
    async with virtual_ble.client(peripheral.address) as client:
        await client.pair(delegate=ours, mitm=True)
        assert ours.codes == theirs.codes and len(ours.codes) == 1
        assert client._backend.is_encrypted  # type: ignore[attr-defined]
        assert client._backend.pairing_outcome == (True, True)  # type: ignore[attr-defined]
    refusing = Comparing(False)
    async with virtual_ble.client(peripheral.address) as client:
        with pytest.raises(BleakError, match="pairing failed"):
            await client.pair(delegate=refusing, mitm=True)
        assert not client._backend.is_encrypted  # type: ignore[attr-defined]


async def test_pair_on_connect_and_on_the_peripherals_request(virtual_ble: VirtualBle) -> None:
    peripheral, _gatt = await start(virtual_ble)
    async with virtual_ble.client(peripheral.address, pair=True) as client:
        assert client._backend.is_encrypted  # type: ignore[attr-defined]
    async with virtual_ble.client(peripheral.address) as client:
        (connection,) = peripheral.device.connections.values()
        connection.request_pairing()  # SMP Security Request from the peripheral
        await eventually(lambda: client._backend.is_encrypted)  # type: ignore[attr-defined]


async def test_a_legacy_pairing_is_reported_as_legacy(virtual_ble: VirtualBle) -> None:
    """The backend pairs as an OS stack does: with a peripheral that has no Secure Connections
    it falls back to legacy pairing (bumble's SMP), and ``pairing_outcome`` says so."""
    peripheral, _gatt = await start(virtual_ble)
    peripheral.device.pairing_config_factory = lambda _c: PairingConfig(
        sc=False, mitm=False, bonding=False, delegate=PairingDelegate()
    )
    async with virtual_ble.client(peripheral.address) as client:
        backend: BumbleClient = client._backend  # type: ignore[assignment]
        assert backend.pairing_outcome is None
        await client.pair()
        assert backend.is_encrypted and backend.pairing_outcome == (False, False)


# -- errors opening a controller ------------------------------------------------------------------


async def test_a_radio_port_nobody_serves_is_bluetooth_not_available() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = BumbleAdapter(f"tcp-client:127.0.0.1:{port}")
    with pytest.raises(BleakBluetoothNotAvailableError, match="nothing listens") as caught:
        await adapter.open()
    assert caught.value.reason is BleakBluetoothNotAvailableReason.NO_BLUETOOTH
    with pytest.raises(BleakBluetoothNotAvailableError):  # a failed open may be tried again
        await adapter.open()


class USBErrorAccess(Exception):  # named as libusb1's classes are
    pass


class USBErrorBusy(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "spec", "words", "reason"),
    [
        (
            PermissionError(errno.EPERM, "Operation not permitted"),
            "hci-socket:0",
            "CAP_NET_ADMIN",
            BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM,
        ),
        (
            OSError(errno.EBUSY, "Device or resource busy"),
            "hci-socket:0",
            "hciconfig hci0 down",
            BleakBluetoothNotAvailableReason.UNKNOWN,
        ),
        (
            OSError(errno.ENODEV, "No such device"),
            "hci-socket:1",
            "no Bluetooth controller hci1",
            BleakBluetoothNotAvailableReason.NO_BLUETOOTH,
        ),
        (USBErrorAccess(), "usb:0", "udev rule", BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM),
        (USBErrorBusy(), "usb:0", "busy", BleakBluetoothNotAvailableReason.UNKNOWN),
        (
            Exception("Bluetooth HCI sockets not supported on this platform"),
            "hci-socket:0",
            "no Bluetooth sockets",
            BleakBluetoothNotAvailableReason.NO_BLUETOOTH,
        ),
        (
            TransportInitError("device not found"),
            "usb:1",
            "no Bluetooth controller found at usb:1",
            BleakBluetoothNotAvailableReason.NO_BLUETOOTH,
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "serial:/dev/ttyACM0,1000000",
            "dialout",
            BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM,
        ),
    ],
)
def test_opening_errors_say_what_to_do(
    exc: BaseException, spec: str, words: str, reason: BleakBluetoothNotAvailableReason
) -> None:
    text, got = describe_open_error(exc, spec)
    assert words in text and got is reason


def test_an_unknown_opening_error_is_a_plain_bleak_error() -> None:
    text, reason = describe_open_error(RuntimeError("firmware upload failed"), "usb:0")
    assert reason is None and "usb:0" in text and "firmware upload failed" in text


def test_bad_adapter_arguments() -> None:
    with pytest.raises(ValueError):
        BumbleAdapter("")
    with pytest.raises(ValueError):
        BumbleAdapter("usb:0", radio=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BumbleAdapter("virtual", address="01:02:03:04:05:06")  # not random static
    with pytest.raises(ValueError):
        BumbleAdapter("virtual", att_mtu=600)


def test_uuid_text_is_bleaks() -> None:
    assert uuid_str(struct.pack("<H", 0x180D)) == HEART
    assert uuid_str(struct.pack("<I", 0x12345678)) == "12345678-0000-1000-8000-00805f9b34fb"
    assert uuid_str(bytes.fromhex(CUSTOM.replace("-", ""))[::-1]) == CUSTOM
    with pytest.raises(ValueError):
        uuid_str(b"abc")


# -- the pytest fixture, as a user's project sees it ---------------------------------------------

USER_TEST = """
import pytest
from bleak import BleakClient, BleakScanner
from bumble.gatt import Characteristic, CharacteristicValue, Service

BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"


@pytest.mark.asyncio
async def test_my_app_reads_the_battery(virtual_ble):
    level = Characteristic(
        "2A19", Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
        Characteristic.READABLE, CharacteristicValue(read=lambda _connection: bytes([87])),
    )
    peripheral = await virtual_ble.peripheral(name="thermo", services=[Service("180F", [level])])

    # The code under test builds its own scanner and client: give it the backend's keywords.
    device = await BleakScanner.find_device_by_name(
        "thermo", timeout=2, **virtual_ble.scanner_kwargs
    )
    async with BleakClient(device, **virtual_ble.client_kwargs) as client:
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytearray([87])
        heard = []
        await client.start_notify(BATTERY_LEVEL, lambda _char, data: heard.append(data))
        await peripheral.notify(level, bytes([86]))
        await peripheral.disconnect()
    assert heard == [bytearray([86])]
"""


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    plugin = "pairkit.transports.pytest_plugin"
    return any(ep.value == plugin for ep in entry_points(group="pytest11"))


def test_the_fixture_in_a_users_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    args = ["-p", "no:cacheprovider", "-o", "asyncio_mode=strict"]
    args += ["-o", "asyncio_default_fixture_loop_scope=function"]
    if not _entry_point_installed():  # a checkout installed before the entry point existed
        args += ["-p", "pairkit.transports.pytest_plugin"]
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(passed=1)
