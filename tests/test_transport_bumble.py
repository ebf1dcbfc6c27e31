"""The bumble BLE transport on virtual controllers: conformance of GATT and L2CAP links, hellos,
scanning hygiene, link-layer encryption, disconnects, vanished peers, timeouts, address
rotation, and the pure advertisement codec.

Everything runs bumble's real host stack on virtual controllers (``VirtualRadio``), built inside
the test's event loop.  Addresses come from seeded random sources, so runs are repeatable.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bumble import hci
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.transport.common import AsyncPipeSink
from hypothesis import given
from hypothesis import strategies as st

from pairkit.pairing.errors import (
    ConfigError,
    LinkClosedError,
    PairingTimeout,
    TooLargeError,
    TransportError,
    UnsupportedError,
)
from pairkit.transports.base import Advertiser, Connector, Listener, Scanner, Sighting
from pairkit.transports.ble.adv import (
    EXTENDED_PAYLOAD_MAX,
    LEGACY_ADV_DATA_MAX,
    LEGACY_PAYLOAD_MAX,
    PAIRKIT_SERVICE_UUID,
    encode_advertising_data,
    parse_advertising_data,
    random_static_address,
)
from pairkit.transports.ble.links import BleLink, GattLink, L2capLink
from pairkit.transports.bumble import (
    BumbleConfig,
    BumbleTransport,
    VirtualRadio,
    bumble_transport_spec,
    open_bumble,
)
from tests.ble_harness import OpenDevice, bumble_devices
from tests.transport_conformance import LinkConformance, check_properties


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@pytest.fixture
def radio() -> VirtualRadio:
    return VirtualRadio()


@pytest.fixture
async def open_device(radio: VirtualRadio) -> AsyncIterator[OpenDevice]:
    """Open BumbleTransports on the test's radio; all are closed afterwards."""
    async with bumble_devices(radio) as factory:
        yield factory


async def first_hello(scanner: BumbleTransport, timeout: float = 2.0) -> Sighting:
    async for sighting in scanner.scan(timeout):
        return sighting
    raise AssertionError(f"no hello within {timeout} s")


async def connect_pair(
    host: BumbleTransport, guest: BumbleTransport, payload: bytes = b"hello"
) -> tuple[BleLink, BleLink]:
    await host.start_advertising(payload)
    sighting = await first_hello(guest)
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    guest_link = await guest.connect(sighting.address, timeout=5)
    return guest_link, await accepting


async def raw_device(radio: VirtualRadio, address: str) -> Device:
    """A plain bumble device on the radio, without pairkit's service."""
    controller = radio.create_controller("raw")
    host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
    device = Device(name="raw", address=address, host=host)  # type: ignore[arg-type]
    await device.power_on()
    return device


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- link conformance --------------------------------------------------------------------------


class TestGattLink(LinkConformance):
    """Guest writes without response, host notifies; ATT MTU 517, messages of 495 bytes (an
    ATT PDU of 498 bytes fills two 251-byte ACL packets: transports/ble/fill.py)."""

    # GATT has no end-to-end flow control: write-without-response and notifications are never
    # acknowledged by the reading application, so a sender does not block when the peer stops
    # reading (the receiver's buffer is bounded instead: test_gatt_receive_buffer_is_bounded).
    test_backpressure = None
    test_peer_close_releases_blocked_sender = None
    expect_encrypted = False  # no link-layer pairing yet
    expect_mitm_protected = False

    @pytest.fixture
    async def link_pair(self, open_device: OpenDevice) -> Any:
        host = await open_device(1, prefer_l2cap=False)
        guest = await open_device(2, prefer_l2cap=False)
        guest_link, host_link = await connect_pair(host, guest)
        assert isinstance(guest_link, GattLink) and isinstance(host_link, GattLink)
        assert guest_link.mtu == host_link.mtu == 495
        yield guest_link, host_link
        await guest_link.close()
        await host_link.close()


class TestL2capLink(LinkConformance):
    """One LE credit-based channel per connection, channel MTU/MPS 2048, credits returned on
    read; messages of 2,002 bytes (an SDU in one K-frame that fills 8 ACL packets)."""

    expect_encrypted = False  # no link-layer pairing yet
    expect_mitm_protected = False

    @pytest.fixture
    async def link_pair(self, open_device: OpenDevice) -> Any:
        host = await open_device(3)
        guest = await open_device(4)
        guest_link, host_link = await connect_pair(host, guest)
        assert isinstance(guest_link, L2capLink) and isinstance(host_link, L2capLink)
        assert guest_link.mtu == host_link.mtu == 2002
        yield host_link, guest_link
        await guest_link.close()
        await host_link.close()


# -- roles, hellos and scanning ----------------------------------------------------------------


async def test_transport_has_every_role(open_device: OpenDevice) -> None:
    transport = await open_device(5)
    for role in (Advertiser, Scanner, Listener, Connector):
        assert isinstance(transport, role), role.__name__
    address = transport.address
    assert int(address[:2], 16) >> 6 == 0b11, "a random static address"


async def test_hello_is_found_quickly(open_device: OpenDevice) -> None:
    host, guest = await open_device(6), await open_device(7)
    await host.start_advertising(b"0123456789")
    loop = asyncio.get_running_loop()
    started = loop.time()
    sighting = await first_hello(guest, timeout=1.0)
    assert loop.time() - started < 0.5
    assert sighting.address == host.address
    assert sighting.payload == b"0123456789"
    assert isinstance(sighting.rssi, int)
    assert sighting.name is None  # a name would be a static identifier


async def test_legacy_hello_capacity(open_device: OpenDevice) -> None:
    host = await open_device(8)
    assert host.max_payload == LEGACY_PAYLOAD_MAX == 10
    assert len(encode_advertising_data(bytes(10))) == LEGACY_ADV_DATA_MAX
    with pytest.raises(TooLargeError):
        await host.start_advertising(bytes(11))
    with pytest.raises(ConfigError):
        await host.start_advertising(b"")


async def test_extended_advertising_carries_a_long_hello(open_device: OpenDevice) -> None:
    host = await open_device(9, extended_advertising=True)
    guest = await open_device(10)
    assert host.max_payload == EXTENDED_PAYLOAD_MAX == 208
    payload = random.Random(1).randbytes(208)
    await host.start_advertising(payload)
    sighting = await first_hello(guest)
    assert sighting.payload == payload
    with pytest.raises(TooLargeError):
        await host.start_advertising(payload + b"!")
    # And it is connectable.
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    link = await guest.connect(sighting.address, timeout=5)
    await link.send(b"over extended")
    assert await (await accepting).recv() == b"over extended"


async def test_stop_advertising_silences_the_hello(open_device: OpenDevice) -> None:
    host, guest = await open_device(11), await open_device(12)
    await host.start_advertising(b"soon gone")
    await first_hello(guest)
    await host.stop_advertising()
    await asyncio.sleep(0.05)  # an advertisement already on the air may still arrive
    assert [s async for s in guest.scan(0.1)] == []


async def test_garbage_service_data_is_counted_not_fatal(
    radio: VirtualRadio, open_device: OpenDevice
) -> None:
    host, guest = await open_device(13), await open_device(14)
    uuid_le = PAIRKIT_SERVICE_UUID.bytes[::-1]
    garbage = [
        bytes([0x1F, 0x21]) + bytes(4),  # a length running past the end
        bytes([0x05, 0x21]) + bytes(4),  # 128-bit service data shorter than its UUID
        bytes([0x11, 0x21]) + uuid_le,  # pairkit's UUID with no hello
    ]
    liars = []
    for i, data in enumerate(garbage):
        liar = await raw_device(radio, f"C2:00:00:00:00:0{i}")
        await liar.start_advertising(advertising_data=data, advertising_interval_min=20)
        liars.append(liar)
    await host.start_advertising(b"real")
    sightings = [s async for s in guest.scan(0.15)]
    assert sightings, "the real hello is still heard"
    assert {s.address for s in sightings} == {host.address}
    assert all(s.payload == b"real" for s in sightings)
    assert guest.stats["garbage"] >= len(garbage)
    for liar in liars:
        await liar.stop_advertising()


async def test_other_advertisers_are_ignored(radio: VirtualRadio, open_device: OpenDevice) -> None:
    guest = await open_device(15)
    other = await raw_device(radio, "C3:00:00:00:00:01")
    other_uuid = bytes(range(16))
    data = bytes([0x02, 0x01, 0x06, 0x15, 0x21, *other_uuid, 1, 2, 3, 4, 0x05, 0x09, *b"lamp"])
    await other.start_advertising(advertising_data=data, advertising_interval_min=20)
    assert [s async for s in guest.scan(0.1)] == []
    assert guest.stats["ignored"] >= 1 and guest.stats["garbage"] == 0
    await other.stop_advertising()


async def test_scan_ends_when_the_transport_closes(open_device: OpenDevice) -> None:
    guest = await open_device(16)
    scan = guest.scan(30.0)
    pending = asyncio.ensure_future(scan.__anext__())
    await asyncio.sleep(0.02)
    await guest.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 2)


# -- connecting -------------------------------------------------------------------------------


async def test_connect_to_an_absent_address_times_out_then_connecting_works(
    open_device: OpenDevice,
) -> None:
    host, guest = await open_device(17), await open_device(18)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PairingTimeout, match=r"did not answer within 0\.3 s"):
        await guest.connect("C0:11:22:33:44:55", timeout=0.3)
    assert loop.time() - started < 0.3 + 0.5
    # The pending connection was cancelled in the controller: the next connect goes through.
    await host.start_advertising(b"here")
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    link = await guest.connect(host.address, timeout=2)
    await link.send(b"after a timeout")
    assert await (await accepting).recv() == b"after a timeout"


async def test_connects_are_serialised_on_one_device(open_device: OpenDevice) -> None:
    hosts = [await open_device(19), await open_device(20)]
    guest = await open_device(21)
    for host in hosts:
        await host.start_advertising(b"h")
    links = await asyncio.gather(*(guest.connect(h.address, timeout=5) for h in hosts))
    accepted = [await h.accept(timeout=5) for h in hosts]
    for i, (link, other) in enumerate(zip(links, accepted, strict=True)):
        await link.send(bytes([i]))
        assert await other.recv() == bytes([i])


async def test_accept_times_out(open_device: OpenDevice) -> None:
    host = await open_device(22)
    with pytest.raises(PairingTimeout):
        await host.accept(timeout=0.05)


async def test_one_host_serves_two_guests_at_once(open_device: OpenDevice) -> None:
    host = await open_device(23)
    guests = [await open_device(24), await open_device(25)]
    await host.start_advertising(b"many")
    links = []
    for guest in guests:  # the host advertises again after each connection
        links.append(await guest.connect(host.address, timeout=2))
    accepted = [await host.accept(timeout=2), await host.accept(timeout=2)]
    by_peer = {link.peer: link for link in accepted}
    for guest, link in zip(guests, links, strict=True):
        await link.send(guest.address.encode())
        host_side = by_peer[guest.address]
        assert await host_side.recv() == guest.address.encode()
        await host_side.send(b"to " + guest.address.encode())
        assert await link.recv() == b"to " + guest.address.encode()


@pytest.mark.parametrize("prefer_l2cap", [False, True], ids=["gatt", "l2cap"])
async def test_host_may_speak_first(open_device: OpenDevice, prefer_l2cap: bool) -> None:
    host = await open_device(47, prefer_l2cap=prefer_l2cap)
    guest = await open_device(48, prefer_l2cap=prefer_l2cap)
    await host.start_advertising(b"eager")

    async def eager_host() -> BleLink:
        link = await host.accept(timeout=5)
        await link.send(b"host speaks first")  # before the guest's connect() has returned
        await link.send(b"and second")
        return link

    hosting = asyncio.ensure_future(eager_host())
    link = await guest.connect(host.address, timeout=5)
    assert await asyncio.wait_for(link.recv(), 2) == b"host speaks first"
    assert await asyncio.wait_for(link.recv(), 2) == b"and second"
    await hosting


async def test_l2cap_data_right_behind_the_channel_answer_is_kept(open_device: OpenDevice) -> None:
    # The most eager host possible writes in the same turn as it accepts the channel, so the
    # data reaches the guest right behind the connection response, before connect() returns.
    host, guest = await open_device(49), await open_device(50)
    server = host.device.l2cap_channel_manager.le_coc_servers[host._psm]
    server.on("connection", lambda channel: channel.write(b"immediately"))
    await host.start_advertising(b"eager")
    link = await guest.connect(host.address, timeout=5)
    assert isinstance(link, L2capLink)
    assert await asyncio.wait_for(link.recv(), 2) == b"immediately"


async def test_a_connect_given_up_as_the_l2cap_channel_is_asked_for_calls_the_open_off(
    radio: VirtualRadio, open_device: OpenDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guest gives up (Ctrl-C, a caller's own deadline) in the very turn its L2CAP channel
    # request goes out, and the host never answers.  The open it started must be called off
    # with it, not left running behind connect()'s back until a disconnection happens to end
    # it: here the guest's controller never confirms the hang-up (bumble would otherwise abort
    # the open on disconnection), so nothing but the guest itself can call it off.
    host, guest = await open_device(51), await open_device(52, close_timeout=0.2)
    await host.start_advertising(b"given up")
    controller = guest.controller
    assert controller is not None and host.controller is not None

    def never_confirms(command: hci.HCI_Disconnect_Command) -> None:
        controller._send_hci_command_status(hci.HCI_COMMAND_STATUS_PENDING, command.op_code)

    real = Connection.create_l2cap_channel
    opens: list[asyncio.Task[Any]] = []

    def give_up_as_it_asks(self: Connection, spec: Any) -> Any:
        asked = real(self, spec)

        async def watched() -> Any:
            opens.append(asyncio.current_task())  # type: ignore[arg-type]
            return await asked

        radio.unplug(host.controller)  # type: ignore[arg-type]
        monkeypatch.setattr(controller, "on_hci_disconnect_command", never_confirms)
        connecting.cancel()
        return watched()

    monkeypatch.setattr(Connection, "create_l2cap_channel", give_up_as_it_asks)
    connecting = asyncio.ensure_future(guest.connect(host.address, timeout=5))
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert len(opens) == 1, "the guest never asked for the L2CAP channel"
    await asyncio.wait(opens, timeout=1)
    assert opens[0].cancelled(), f"the L2CAP open was left behind: {opens[0]!r}"


async def test_gatt_is_used_when_the_host_offers_no_l2cap(open_device: OpenDevice) -> None:
    host = await open_device(26, prefer_l2cap=False)
    guest = await open_device(27, prefer_l2cap=True)
    guest_link, host_link = await connect_pair(host, guest)
    assert isinstance(guest_link, GattLink) and isinstance(host_link, GattLink)
    await guest_link.send(b"gatt")
    assert await host_link.recv() == b"gatt"


async def test_connecting_to_a_device_without_pairkit_fails_cleanly(
    radio: VirtualRadio, open_device: OpenDevice
) -> None:
    guest = await open_device(28)
    stranger = await raw_device(radio, "C4:00:00:00:00:01")
    await stranger.start_advertising(advertising_interval_min=20)
    with pytest.raises(UnsupportedError, match="does not offer pairkit"):
        await guest.connect("C4:00:00:00:00:01", timeout=2)
    await eventually(lambda: not guest.device.connections)  # and it hung up


async def test_bad_address_is_a_config_error(open_device: OpenDevice) -> None:
    guest = await open_device(29)
    with pytest.raises(ConfigError):
        await guest.connect("not an address", timeout=1)


# -- encryption -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefer_l2cap", [False, True], ids=["gatt", "l2cap"])
async def test_encrypt_turns_encrypted_on_both_sides(
    open_device: OpenDevice, prefer_l2cap: bool
) -> None:
    host = await open_device(30, prefer_l2cap=prefer_l2cap)
    guest = await open_device(31, prefer_l2cap=prefer_l2cap)
    guest_link, host_link = await connect_pair(host, guest)
    assert guest_link.encrypted is False and host_link.encrypted is False
    await asyncio.wait_for(guest_link.encrypt(), 5)  # LE Secure Connections, Just Works
    assert guest_link.encrypted is True
    await eventually(lambda: host_link.encrypted)
    assert guest_link.connection.sc
    # Just Works: encrypted with LE Secure Connections, but nobody vouched against a MITM.
    await check_properties(
        guest_link, host_link, expect_encrypted=True, expect_mitm_protected=False
    )
    await guest_link.send(b"still works")
    assert await host_link.recv() == b"still works"
    await guest_link.encrypt()  # already encrypted: nothing to do


async def test_host_asks_the_guest_to_encrypt(open_device: OpenDevice) -> None:
    host, guest = await open_device(32), await open_device(33)
    guest_link, host_link = await connect_pair(host, guest)
    await asyncio.wait_for(host_link.encrypt(), 5)  # SMP Security Request
    assert host_link.encrypted
    await eventually(lambda: guest_link.encrypted)
    assert host_link.mitm_protected is False and guest_link.mitm_protected is False


# -- ending links ---------------------------------------------------------------------------


async def test_peer_that_disconnects_mid_stream_ends_the_link(open_device: OpenDevice) -> None:
    host, guest = await open_device(34), await open_device(35)
    guest_link, host_link = await connect_pair(host, guest)

    async def stream() -> int:
        sent = 0
        try:
            while True:
                await host_link.send(sent.to_bytes(4, "big") * 64)
                sent += 1
        except LinkClosedError:
            return sent

    streaming = asyncio.ensure_future(stream())
    for expected in range(20):
        assert await asyncio.wait_for(guest_link.recv(), 2) == expected.to_bytes(4, "big") * 64
    await host.close()  # the host goes away in the middle of the stream
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 20
    with pytest.raises(LinkClosedError, match="peer"):
        while True:
            message = await asyncio.wait_for(guest_link.recv(), 2)
            assert message == received.to_bytes(4, "big") * 64, "in order and intact"
            received += 1
    assert loop.time() - started < 2.0
    assert guest_link.closed
    assert await asyncio.wait_for(streaming, 2) >= received
    with pytest.raises(LinkClosedError):
        await guest_link.send(b"too late")


async def test_vanished_peer_is_caught_by_the_idle_timeout(
    radio: VirtualRadio, open_device: OpenDevice
) -> None:
    host = await open_device(36)
    guest = await open_device(37, idle_timeout=0.3)
    guest_link, _ = await connect_pair(host, guest)
    assert host.controller is not None
    radio.unplug(host.controller)  # no disconnection: the virtual link never times it out
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PairingTimeout, match="nothing heard"):
        await asyncio.wait_for(guest_link.recv(), 3)
    assert 0.25 <= loop.time() - started < 1.5
    assert guest_link.closed
    with pytest.raises(LinkClosedError):
        await guest_link.send(b"anyone?")
    # Giving up on the peer completes locally, though the peer cannot be told.
    await eventually(lambda: not guest.device.connections, within=1.0)


async def test_gatt_receive_buffer_is_bounded(open_device: OpenDevice) -> None:
    host = await open_device(38, prefer_l2cap=False)
    guest = await open_device(39, prefer_l2cap=False, max_rx_buffer=65536)
    guest_link, host_link = await connect_pair(host, guest)
    with pytest.raises(LinkClosedError):
        for _ in range(1000):  # 495 KB to a guest that reads nothing and keeps 64 KiB
            await asyncio.wait_for(host_link.send(bytes(host_link.mtu)), 2)
    drained = 0
    with pytest.raises(LinkClosedError, match="not read"):
        while True:
            drained += len(await asyncio.wait_for(guest_link.recv(), 2))
    assert 0 < drained <= 65536


async def test_a_disconnect_for_a_handle_no_longer_open_is_refused_at_once(
    radio: VirtualRadio,
) -> None:
    # Both ends hanging up at once: one host may ask to disconnect a handle its controller
    # closed a moment ago (the peer's hang-up still on its way up).  A real controller answers
    # Unknown Connection Identifier (Core 5.4 Vol 4 Part E §7.1.6); a bare "pending" would
    # leave that host waiting for a Disconnection Complete until its close_timeout.
    device = await raw_device(radio, "C4:00:00:00:00:02")
    status = await device.host.send_async_command(
        hci.HCI_Disconnect_Command(
            connection_handle=0x0123, reason=hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR
        ),
        check_status=False,
    )
    assert status == hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR


async def test_closing_the_transport_closes_its_links(open_device: OpenDevice) -> None:
    host, guest = await open_device(40), await open_device(41)
    guest_link, host_link = await connect_pair(host, guest)
    await guest.close()
    assert guest_link.closed
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(host_link.recv(), 2)
    with pytest.raises(LinkClosedError):
        await guest.connect(host.address, timeout=1)
    await guest.close()  # idempotent


# -- address rotation -------------------------------------------------------------------------


async def test_rotation_moves_the_host_and_keeps_open_links(open_device: OpenDevice) -> None:
    host = await open_device(42)
    guest, latecomer = await open_device(43), await open_device(44)
    guest_link, host_link = await connect_pair(host, guest)
    old = host.address
    new = await host.rotate_address(seeded(99))
    assert new == host.address != old
    assert int(new[:2], 16) >> 6 == 0b11
    # The link made before the rotation still works both ways.
    await guest_link.send(b"before rotation")
    assert await host_link.recv() == b"before rotation"
    await host_link.send(b"after rotation")
    assert await guest_link.recv() == b"after rotation"
    # Newcomers hear and reach only the new address.
    await asyncio.sleep(0.03)  # let an advertisement already in flight land
    sightings = [s async for s in latecomer.scan(0.1)]
    assert sightings and {s.address for s in sightings} == {new}
    with pytest.raises(PairingTimeout):
        await latecomer.connect(old, timeout=0.2)
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    link = await latecomer.connect(new, timeout=2)
    await link.send(b"found you")
    assert await (await accepting).recv() == b"found you"


# -- opening ----------------------------------------------------------------------------------


async def test_open_bumble_entry_point(radio: VirtualRadio) -> None:
    transport = await open_bumble("virtual", radio=radio, prefer_l2cap=False, rng=seeded(45))
    try:
        assert transport.config.prefer_l2cap is False
        assert transport.radio is radio
    finally:
        await transport.close()
    with pytest.raises(ConfigError):
        await open_bumble("virtual", radio=radio, no_such_option=1)


async def test_registry_opens_bumble_virtual(radio: VirtualRadio) -> None:
    from pairkit.transports.registry import open_transport

    transport = await open_transport("bumble:virtual", radio=radio, rng=seeded(46))
    try:
        assert isinstance(transport, BumbleTransport)
    finally:
        await transport.close()


async def test_unreachable_hci_transport_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportError):
        await open_bumble(f"tcp-client:127.0.0.1:{port}", open_timeout=2)


async def test_unopened_transport_says_so() -> None:
    transport = BumbleTransport("virtual")
    with pytest.raises(TransportError, match="not open"):
        await transport.accept(timeout=0.1)


def test_serial_spec_accepts_both_spellings() -> None:
    assert bumble_transport_spec("serial:/dev/ttyACM0:1000000") == "serial:/dev/ttyACM0,1000000"
    assert bumble_transport_spec("serial:/dev/ttyACM0,1000000") == "serial:/dev/ttyACM0,1000000"
    assert bumble_transport_spec("serial:/dev/ttyACM0") == "serial:/dev/ttyACM0"
    assert bumble_transport_spec("tcp-client:127.0.0.1:9000") == "tcp-client:127.0.0.1:9000"
    assert bumble_transport_spec("usb:0") == "usb:0"


@pytest.mark.parametrize(
    "options",
    [
        {"address": "01:02:03:04:05:06"},  # not static random
        {"address": "nonsense"},
        {"l2cap_mps": 65532},
        {"l2cap_credits": 1},
        {"att_mtu": 600},
        {"advertising_interval_ms": 10},
        {"idle_timeout": 0},
        {"scan_window_ms": 100, "scan_interval_ms": 50},
        {"name": ""},
    ],
)
def test_config_is_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        BumbleConfig(**options)


# -- the advertisement codec (pure) -----------------------------------------------------------


@given(st.binary(max_size=300))
def test_parse_never_raises(data: bytes) -> None:
    parsed = parse_advertising_data(data)
    assert parsed.payload is None or (parsed.payload and not parsed.malformed)


@given(st.binary(min_size=1, max_size=EXTENDED_PAYLOAD_MAX), st.booleans())
def test_encode_then_parse_round_trips(payload: bytes, extended: bool) -> None:
    if len(payload) > (EXTENDED_PAYLOAD_MAX if extended else LEGACY_PAYLOAD_MAX):
        with pytest.raises(TooLargeError):
            encode_advertising_data(payload, extended=extended)
        return
    data = encode_advertising_data(payload, extended=extended)
    assert data[:3] == bytes([0x02, 0x01, 0x06])
    assert parse_advertising_data(data) == parse_advertising_data(data + bytes(5))
    parsed = parse_advertising_data(data)
    assert parsed.payload == payload and not parsed.malformed and parsed.name is None


@given(st.binary(min_size=1, max_size=10), st.integers(min_value=1, max_value=20))
def test_truncated_advertisement_is_malformed(payload: bytes, cut: int) -> None:
    data = encode_advertising_data(payload)
    cut = min(cut, len(data) - 4)  # keep the flags and a piece of the service data
    assert parse_advertising_data(data[:-cut]).malformed


@given(st.binary(min_size=6, max_size=6))
def test_random_static_addresses_are_valid(block: bytes) -> None:
    mask = (1 << 46) - 1
    drawn = int.from_bytes(block, "big")
    if drawn & mask in (0, mask):
        with pytest.raises(ConfigError):  # it keeps drawing the same invalid value
            random_static_address(lambda n: block)
        return
    address = random_static_address(lambda n: block)
    value = int(address.replace(":", ""), 16)
    assert value == drawn | (0b11 << 46), "the top two bits set, the rest as drawn"


def test_a_broken_random_source_is_refused() -> None:
    with pytest.raises(ConfigError):
        random_static_address(lambda n: bytes(n))
    with pytest.raises(ConfigError):
        random_static_address(lambda n: b"\x01")


# -- controller names (issue 15, item 4) ---------------------------------------------------------


@pytest.mark.parametrize(("given", "bumble_name"), [
    ("usb:0", "usb:0"),
    ("usb:0d28:0204", "usb:0d28:0204"),  # a dongle by vendor and product id
    ("usb:0d28:0204#1", "usb:0d28:0204#1"),  # the second of two alike
    ("hci-socket:0", "hci-socket:0"),
    ("serial:/dev/ttyACM0:1000000", "serial:/dev/ttyACM0,1000000"),
    ("serial:/dev/ttyACM0:1000000:rtscts", "serial:/dev/ttyACM0,1000000,rtscts"),
    ("serial:/dev/ttyACM0:rtscts", "serial:/dev/ttyACM0,rtscts"),
    ("serial:/dev/ttyACM0,115200,rtscts,delay", "serial:/dev/ttyACM0,115200,rtscts,delay"),
    ("tcp-client:127.0.0.1:7001", "tcp-client:127.0.0.1:7001"),
])
def test_controller_names_reach_bumble_as_it_spells_them(given: str, bumble_name: str) -> None:
    from pairkit.transports.bumble import bumble_transport_spec
    from pairkit.transports.registry import parse_transport

    parsed = parse_transport(f"bumble:{given}")
    assert (parsed.kind, parsed.args) == ("bumble", given)
    assert bumble_transport_spec(parsed.args) == bumble_name


async def test_a_write_on_the_rx_characteristic_is_read_at_once_and_others_go_to_bumble(
    open_device: OpenDevice,
) -> None:
    """The host takes a guest's ATT Write Command on pairkit's RX characteristic as it is
    handled, in order, without a task per write (bumble's server runs one per Write Command);
    a Write Command on any other handle still goes through bumble's server as before."""
    from bumble import att
    from bumble.gatt import Characteristic, CharacteristicValue, Service

    host = await open_device(46, prefer_l2cap=False)
    guest = await open_device(47, prefer_l2cap=False)
    written: list[bytes] = []
    other = Characteristic(
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
        Characteristic.WRITEABLE,
        CharacteristicValue(write=lambda _connection, value: written.append(bytes(value))),
    )
    host.device.add_service(Service("1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", [other]))
    guest_link, host_link = await connect_pair(host, guest)
    assert isinstance(host_link, GattLink)
    connection = host_link.connection
    server = host.device.gatt_server
    rx = host._rx_char  # the handle the guest writes to
    for i in range(3):
        server.on_gatt_pdu(connection, att.ATT_Write_Command(
            attribute_handle=rx.handle, attribute_value=bytes([i]) * 8))
        server.on_gatt_pdu(connection, att.ATT_Write_Command(
            attribute_handle=other.handle, attribute_value=bytes([i])))
    # Read as handled, before the event loop turned; the other handle's writes are bumble's.
    assert host_link.buffered == 3
    assert written == []
    assert [await host_link.recv() for _ in range(3)] == [bytes([i]) * 8 for i in range(3)]
    await eventually(lambda: written == [b"\x00", b"\x01", b"\x02"])
    # And a real guest's messages, back to back, arrive whole and in order.
    for i in range(50):
        await guest_link.send(i.to_bytes(2, "big") * 100)
    got = [await asyncio.wait_for(host_link.recv(), 2) for _ in range(50)]
    assert got == [i.to_bytes(2, "big") * 100 for i in range(50)]
