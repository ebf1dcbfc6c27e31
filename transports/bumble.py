"""pairkit over real BLE through bumble's host stack (DESIGN.md "Links", "BLE roles").

One :class:`BumbleTransport` is one bumble ``Device`` on one controller, named as bumble names
its HCI transports (``usb:0``, ``hci-socket:0``, ``serial:/dev/ttyACM0,1000000``,
``tcp-client:127.0.0.1:PORT``), or ``virtual``: a virtual controller on an in-process
:class:`~transports.ble.virtual.VirtualRadio`.  It is every role of ``transports.base``:

* **Advertiser** (host): a connectable advertisement with pairkit's service data carrying the
  hello (layout and exact capacity in :mod:`transports.ble.adv`: 10 bytes legacy, 208 bytes
  with ``extended_advertising``), fast (every ``advertising_interval_ms``, 20 ms by default, so a
  guest connects within a few tens of ms) for ``fast_advertising_seconds`` (30 s) after the
  device opens and after each :meth:`BumbleTransport.advertise_fast`, then slow (every
  ``slow_advertising_interval_ms``, about 1 s), as accessory guidelines do, to spare power and
  Wi-Fi coexistence.  ``rotate_address`` moves to a new random static address (Core 5.4 Vol 6
  Part B §1.3.2.1), or, once given an identity resolving key (``use_identity_key``), to a
  fresh resolvable private address (§1.3.2.2), and keeps advertising.
* **Scanner** (guest): ``scan(timeout)`` yields a :class:`~transports.base.Sighting` per
  advertisement carrying a pairkit hello; others count as ``stats["ignored"]``, malformed ones
  as ``stats["garbage"]``.
* **Listener** (host): serves pairkit's GATT service and, with ``prefer_l2cap``, an L2CAP
  credit-based channel server whose PSM it publishes in a GATT characteristic; ``accept``
  returns one link per guest (a :class:`~transports.ble.links.GattLink` once the guest has
  enabled notifications, or an :class:`~transports.ble.links.L2capLink` once it has opened
  the channel).
* **Connector** (guest): ``connect(address, timeout)`` connects (one attempt at a time per
  device), exchanges the ATT MTU (asks for 517), finds the service, then opens the L2CAP
  channel when both sides prefer it, or else subscribes to notifications.

Every wait has a deadline; every bumble failure becomes a pairkit error
(:mod:`transports.ble.guard`).  Links, flow control and liveness: :mod:`transports.ble.links`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bumble import att, core, gatt_client, gatt_server, hci, l2cap, utils
from bumble.controller import Controller
from bumble.device import (
    Advertisement,
    AdvertisingEventProperties,
    AdvertisingParameters,
    AdvertisingSet,
    AdvertisingType,
    Connection,
    Device,
)
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.host import Host
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, Transport

from pairkit.pairing.errors import (
    ConfigError,
    ErrorCode,
    LinkClosedError,
    PairingError,
    PairingTimeout,
    TransportError,
    UnsupportedError,
)

from .base import ControllerLostError, Sighting, sightings_until
from .ble.adv import (
    PAIRKIT_L2CAP_PSM,
    PAIRKIT_PSM_CHAR_UUID,
    PAIRKIT_RX_CHAR_UUID,
    PAIRKIT_SERVICE_UUID,
    PAIRKIT_TX_CHAR_UUID,
    encode_advertising_data,
    max_payload,
    parse_advertising_data,
    random_static_address,
)
from .ble.guard import (
    abandon,
    connect_failure_status,
    describe_connect_failure,
    describe_reason,
    guarded,
    retry_pause,
)
from .ble.links import (
    ATT_HEADER,
    GATT_MAX_VALUE,
    BleLink,
    GattLink,
    L2capLink,
    LinkOptions,
    SecureConnectionsOnlySession,
    pairing_config,
    tap_pending_channels,
)
from .ble.open_errors import open_failure, port_went_away
from .ble.pace import PaceConfig
from .ble.privacy import IRK_SIZE, resolvable_private_address
from .ble.trace import RedactingSnooper, open_trace
from .ble.virtual import VirtualRadio, default_radio
from .controllers import parse_usb_spec
from .queued import put_latest
from .tracing import claim_trace_path

__all__ = [
    "PAIRKIT_SERVICE_UUID",
    "BumbleConfig",
    "BumbleTransport",
    "VirtualRadio",
    "bumble_transport_spec",
    "open_bumble",
]

logger = logging.getLogger(__name__)

Rng = Callable[[int], bytes]

_SERVICE = core.UUID(str(PAIRKIT_SERVICE_UUID))
_RX = core.UUID(str(PAIRKIT_RX_CHAR_UUID))
_TX = core.UUID(str(PAIRKIT_TX_CHAR_UUID))
_PSM = core.UUID(str(PAIRKIT_PSM_CHAR_UUID))

#: How long a connect may overrun its timeout while the controller cancels the attempt.
_CANCEL_GRACE = 2.0
#: Data a guest writes before it subscribes, kept for the link (bytes).
_EARLY_LIMIT = 64 << 10
_SCAN_QUEUE = 512
_MAX_MPS = 65531  # BLE-NOTES.md: a larger MPS breaks bumble's virtual link


@dataclass(frozen=True)
class BumbleConfig:
    """How a :class:`BumbleTransport` behaves; validated when built."""

    name: str = "pairkit"
    #: Random static address, ``AA:BB:CC:DD:EE:FF``; ``None`` draws one from the rng.
    address: str | None = None
    #: Use an L2CAP CoC for links when the peer offers one (both sides must prefer it).
    prefer_l2cap: bool = True
    l2cap_mtu: int = 2048
    l2cap_mps: int = 2048
    l2cap_credits: int = 256
    #: ATT MTU the guest asks for and the host accepts (Core Vol 3 Part F §3.4.2).
    att_mtu: int = 517
    #: Advertise with extended advertising (longer hello, BT 5 scanners only).
    extended_advertising: bool = False
    #: Fast advertising interval (Core Vol 6 Part B §4.4.2.2), used for
    #: ``fast_advertising_seconds`` after opening and after each ``advertise_fast()``.
    advertising_interval_ms: float = 20.0
    #: Slow advertising interval, used once the fast period is over.
    slow_advertising_interval_ms: float = 1000.0
    #: How long advertising stays fast; ``None``: always fast.
    fast_advertising_seconds: float | None = 30.0
    scan_interval_ms: float = 60.0
    scan_window_ms: float = 60.0
    #: Deadline of each GATT step of a connect (MTU, discovery, subscription).
    gatt_timeout: float = 10.0
    #: Deadline for opening the HCI transport and powering the controller on.
    open_timeout: float = 10.0
    #: Connection attempts when the link layer fails to establish one (the same policy as the
    #: bleak path's bleak-retry-connector: :func:`transports.ble.guard.retry_pause` between).
    connect_attempts: int = 3
    #: The host asks for a short connection interval and the 2M PHY while it sends a lot,
    #: and relaxes after (:mod:`transports.ble.pace`); None: never asks.
    pace: PaceConfig | None = dataclasses.field(default_factory=PaceConfig)
    #: Links: see :class:`transports.ble.links.LinkOptions`.
    idle_timeout: float | None = None
    max_rx_buffer: int = 16 << 20
    send_timeout: float = 30.0
    close_timeout: float = 2.0
    encrypt_timeout: float = 15.0
    #: The host's answer to link-layer pairing (Just Works when ``None``).
    pairing_delegate: PairingDelegate | None = None
    #: Resolvable private addresses once given an identity key (``use_identity_key``);
    #: off: random static addresses, as before.
    private_addresses: bool = True
    #: Write every HCI packet to this btsnoop file (keys blanked: :mod:`transports.tracing`);
    #: ``None``: the process default (``--trace``), if any.
    trace: str | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > 248:
            raise ConfigError("the device name must be 1 to 248 bytes of UTF-8")
        if not 1 <= self.connect_attempts <= 10:
            raise ConfigError("connect_attempts must be 1 to 10")
        if self.address is not None:
            try:
                address = hci.Address(self.address)
            except (ValueError, core.InvalidArgumentError) as exc:
                raise ConfigError(f"{self.address!r} is not a Bluetooth address") from exc
            if not address.is_static:
                raise ConfigError(
                    f"{self.address} is not a random static address (top two bits must be 11)"
                )
        if not 23 <= self.l2cap_mtu <= 65535:
            raise ConfigError("l2cap_mtu must be 23 to 65535")
        if not 23 <= self.l2cap_mps <= _MAX_MPS:
            raise ConfigError(f"l2cap_mps must be 23 to {_MAX_MPS}")
        if not 1 <= self.l2cap_credits <= 65535:
            raise ConfigError("l2cap_credits must be 1 to 65535")
        frames_per_sdu = -(-(self.l2cap_mtu + 2) // self.l2cap_mps)
        if self.l2cap_credits < 2 * frames_per_sdu:
            raise ConfigError(
                f"l2cap_credits must be at least {2 * frames_per_sdu} for an MTU of "
                f"{self.l2cap_mtu} and an MPS of {self.l2cap_mps} (two full messages)"
            )
        if not 23 <= self.att_mtu <= 517:
            raise ConfigError("att_mtu must be 23 to 517")
        if not 20.0 <= self.advertising_interval_ms <= 10240.0:
            raise ConfigError("advertising_interval_ms must be 20 to 10240")
        if not self.advertising_interval_ms <= self.slow_advertising_interval_ms <= 10240.0:
            raise ConfigError(
                "slow_advertising_interval_ms must be from advertising_interval_ms to 10240"
            )
        if self.fast_advertising_seconds is not None and not self.fast_advertising_seconds >= 0:
            raise ConfigError("fast_advertising_seconds must be 0 or more (or None: always fast)")
        if not 2.5 <= self.scan_window_ms <= self.scan_interval_ms <= 10240.0:
            raise ConfigError("need 2.5 <= scan_window_ms <= scan_interval_ms <= 10240")
        for name in ("gatt_timeout", "open_timeout", "send_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.encrypt_timeout <= 0:
            raise ConfigError("encrypt_timeout must be positive")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ConfigError("idle_timeout must be positive (or None for no idle limit)")
        if self.max_rx_buffer < 65535:
            raise ConfigError("max_rx_buffer must hold at least one 64 KiB message")

    @property
    def link_options(self) -> LinkOptions:
        return LinkOptions(
            idle_timeout=self.idle_timeout,
            max_rx_buffer=self.max_rx_buffer,
            send_timeout=self.send_timeout,
            close_timeout=self.close_timeout,
            encrypt_timeout=self.encrypt_timeout,
            pace=self.pace,
        )


#: bumble's serial options (bumble/transport/serial.py): hardware flow control and timing
_SERIAL_OPTIONS = frozenset({"rtscts", "dsrdtr", "delay", "resync"})


def bumble_transport_spec(spec: str) -> str:
    """bumble's HCI transport name for pairkit's: ``serial:PATH:SPEED[:OPTION...]`` becomes
    ``PATH,SPEED[,OPTION...]`` (options ``rtscts``, the RTS/CTS flow control Zephyr's
    ``hci_uart`` needs, ``dsrdtr``, ``delay``, ``resync``); bumble's own comma form passes as it
    is, and so does every other transport (``usb:0``, ``usb:VID:PID``, ``hci-socket:0``)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "serial" and rest and "," not in rest:
        parts = rest.split(":")
        options: list[str] = []
        while parts and parts[-1] in _SERIAL_OPTIONS:
            options.insert(0, parts.pop())
        if len(parts) >= 2 and parts[-1].isdigit():
            speed = parts.pop()
            rest = ",".join([":".join(parts), speed, *options])
        elif options:
            rest = ",".join([":".join(parts), *options])
    return f"{scheme}:{rest}" if rest else scheme


@dataclasses.dataclass
class _HostSide:
    """A guest connected to us (we are the peripheral), before and after its link exists."""

    connection: Connection
    link: BleLink | None = None
    early: list[bytes] = dataclasses.field(default_factory=list)
    early_bytes: int = 0


#: What a held RX write is: the connection, the value, and whether it was a Write Request
#: (answered once delivered); or an Execute Write Request, as bumble's handler's coroutine, or a
#: Prepare Write Request sent behind one, as a coroutine that hands it to bumble's handler.
_HeldWrite = tuple[Connection, bytes, bool] | Coroutine[Any, Any, None]

_WRITE_RESPONSE = bytes([att.Opcode.ATT_WRITE_RESPONSE])  #: Core 5.4 Vol 3 Part F §3.4.5.2
_NEEDS_SECURITY = (
    att.Attribute.WRITE_REQUIRES_ENCRYPTION
    | att.Attribute.WRITE_REQUIRES_AUTHENTICATION
    | att.Attribute.WRITE_REQUIRES_AUTHORIZATION
)


class _RxWrites:
    """pairkit's RX characteristic's writes, handed to the host's link (``on_write``) in the
    order the guest sent them, on the connection's own ATT bearer.

    ATT is sequential on a bearer (Core 5.4 Vol 3 Part F §3.3): a Write Request (§3.4.5.1),
    a Write Command (§3.4.5.3) and an Execute Write Request (§3.4.6.3) on RX are written in
    the order they came, whichever of them skips a bumble task.  Write Requests and Write
    Commands are written at once (:func:`_read_att_at_once`, :func:`_read_rx_writes_at_once`),
    each request then answered with the Write Response bumble's server sends; an Execute
    Write stays bumble's (its queue, its checks, its answers) and runs in a task of its own,
    so the RX writes that come after it on that connection are *held* here, in order, and
    written (requests answered) only once it has run; so are the Prepare Write Requests
    (§3.4.6.1) that come after it, on any handle, which would otherwise join at once the queue
    it is to commit (a client that sends one before the Execute's answer breaks §3.3.2; its
    values are committed in the order sent all the same).
    """

    def __init__(
        self,
        device: Device,
        rx: Characteristic[Any],
        on_write: Callable[[Connection, bytes], None],
    ) -> None:
        self.device = device
        self.rx = rx
        self.on_write = on_write
        #: per connection handle: what waits behind an Execute Write still under way
        self.held: dict[int, collections.deque[_HeldWrite]] = {}

    @property
    def open_to_all(self) -> bool:
        """RX needs no security to be written: bumble's checks (``Attribute.write_value``)
        would let every write through, so skipping them changes nothing."""
        return not self.rx.permissions & _NEEDS_SECURITY

    def hold(self, handle: int, write: _HeldWrite) -> None:
        """Queue ``write`` behind the connection's Execute Write, starting one if it is one."""
        queue = self.held.get(handle)
        if queue is None:
            queue = self.held[handle] = collections.deque()
            utils.AsyncRunner.spawn(self._release(handle, queue))
        queue.append(write)

    async def _release(self, handle: int, queue: collections.deque[_HeldWrite]) -> None:
        try:
            while queue:
                write = queue[0]
                if isinstance(write, tuple):
                    connection, value, request = write
                    if self.device.connections.get(handle) is connection:
                        self.on_write(connection, value)
                        if request:
                            self.device.gatt_server.send_response(
                                connection, att.ATT_Write_Response()
                            )
                else:
                    try:
                        await write
                    except Exception:
                        logger.exception("bumble's Execute or Prepare Write handler failed")
                queue.popleft()
        finally:
            for write in queue:
                if not isinstance(write, tuple):
                    write.close()
            if self.held.get(handle) is queue:
                del self.held[handle]


def _read_rx_writes_at_once(device: Device, writes: _RxWrites) -> None:
    """Write each ATT Write Command and Write Request on pairkit's RX characteristic at once,
    and hold what follows an Execute Write Request (:class:`_RxWrites`).

    bumble's GATT server runs each of these in a task of its own (``AsyncRunner``), a task and
    a turn of the event loop per message a guest sends, and a Write Command sent after a
    request would overtake it; pairkit's RX handler takes the value without waiting, so the
    writes on its handle (over the connection's own ATT bearer, a value of at most 512 bytes:
    Core 5.4 Vol 3 Part F §3.2.9) are written here, in the order they came, each request
    answered with the Write Response bumble would send (§3.4.5.2).  Every other PDU goes on to
    bumble as before (which answers a bad handle or length the way it did).  This is the path
    while bumble's GATT logger is at DEBUG; :func:`_read_att_at_once` the one before it.
    """
    if not writes.open_to_all:
        return
    server = device.gatt_server
    rx = writes.rx
    on_write = writes.on_write
    held = writes.held
    command_in_a_task = server.on_att_write_command
    request_in_a_task = server.on_att_write_request
    execute_in_a_task = server.on_att_execute_write_request
    execute = type(server).on_att_execute_write_request.__wrapped__  # bumble's, no task
    prepare = type(server).on_att_prepare_write_request  # bumble's (it runs no task)

    def on_att_write_command(bearer: att.Bearer, request: att.ATT_Write_Command) -> None:
        if (
            request.attribute_handle == rx.handle
            and isinstance(bearer, Connection)
            and len(request.attribute_value) <= GATT_MAX_VALUE
        ):
            if bearer.handle in held:
                writes.hold(bearer.handle, (bearer, bytes(request.attribute_value), False))
                return
            on_write(bearer, bytes(request.attribute_value))
            return
        command_in_a_task(bearer, request)

    def on_att_write_request(bearer: att.Bearer, request: att.ATT_Write_Request) -> None:
        if (
            request.attribute_handle == rx.handle
            and isinstance(bearer, Connection)
            and len(request.attribute_value) <= GATT_MAX_VALUE
        ):
            if bearer.handle in held:
                writes.hold(bearer.handle, (bearer, bytes(request.attribute_value), True))
                return
            on_write(bearer, bytes(request.attribute_value))
            server.send_response(bearer, att.ATT_Write_Response())
            return
        request_in_a_task(bearer, request)

    def on_att_execute_write_request(
        bearer: att.Bearer, request: att.ATT_Execute_Write_Request
    ) -> None:
        if isinstance(bearer, Connection):
            writes.hold(bearer.handle, execute(server, bearer, request))
            return
        execute_in_a_task(bearer, request)

    async def prepare_in_turn(
        connection: Connection, request: att.ATT_Prepare_Write_Request
    ) -> None:
        if device.connections.get(connection.handle) is connection:  # (not for one gone)
            prepare(server, connection, request)

    def on_att_prepare_write_request(
        bearer: att.Bearer, request: att.ATT_Prepare_Write_Request
    ) -> None:
        # A Prepare Write sent behind an Execute Write before its answer (a client breaking
        # Vol 3 Part F §3.3.2) joins bumble's queue in its turn, after that Execute has taken
        # the queue it commits: at once, it was committed by the Execute it followed, ahead of
        # the writes sent between (attack review atk13).
        if isinstance(bearer, Connection) and bearer.handle in held:
            writes.hold(bearer.handle, prepare_in_turn(bearer, request))
            return
        prepare(server, bearer, request)

    server.on_att_write_command = on_att_write_command  # type: ignore[method-assign]
    server.on_att_write_request = on_att_write_request  # type: ignore[method-assign]
    server.on_att_execute_write_request = (  # type: ignore[method-assign]
        on_att_execute_write_request
    )
    server.on_att_prepare_write_request = (  # type: ignore[method-assign]
        on_att_prepare_write_request
    )


#: A guest link's notifications, by connection handle: (TX value handle, the link's callback).
Notified = dict[int, tuple[int, Callable[[bytes], None]]]


def _read_att_at_once(device: Device, writes: _RxWrites, notified: Notified) -> None:
    """Take pairkit's own ATT PDUs from the connection's ATT channel (Core 5.4 Vol 3 Part F
    §3.2.11's fixed CID 0x0004) as they come, before bumble parses them into objects and
    formats each for a debug line that is then dropped.

    Three PDUs only, each handed where bumble would have handed it, in the order they came:
    a Write Command (opcode 0x52, §3.4.5.3) or a Write Request (0x12, §3.4.5.1) on pairkit's
    RX handle, to the host's link (as :func:`_read_rx_writes_at_once` does a step later; held
    behind an Execute Write the same way), a request then answered with the Write Response
    (0x13, §3.4.5.2) bumble's server sends; and a Handle Value Notification (opcode 0x1B,
    §3.4.7.1) on the TX handle a guest link subscribed to on that connection (``notified``),
    to that link.  Every other PDU, and these whenever bumble's GATT logger would log them at
    DEBUG, go to bumble as before.  (The guest's notifications skip bumble's client-side value
    cache, which pairkit never reads.)
    """
    manager = device.l2cap_channel_manager
    in_bumble = manager.fixed_channels[att.ATT_CID]
    rx = writes.rx
    on_write = writes.on_write
    held = writes.held
    rx_open = writes.open_to_all
    send_l2cap_pdu = device.send_l2cap_pdu
    write_command = int(att.Opcode.ATT_WRITE_COMMAND)
    write_request = int(att.Opcode.ATT_WRITE_REQUEST)
    notification = int(att.Opcode.ATT_HANDLE_VALUE_NOTIFICATION)

    def on_att_pdu(connection_handle: int, pdu: bytes) -> None:
        if len(pdu) >= ATT_HEADER:
            opcode = pdu[0]
            handle = pdu[1] | pdu[2] << 8
            if (
                (opcode == write_command or opcode == write_request)
                and handle == rx.handle
                and rx_open
                and len(pdu) - ATT_HEADER <= GATT_MAX_VALUE
                and not gatt_server.logger.isEnabledFor(logging.DEBUG)
            ):
                connection = device.lookup_connection(connection_handle)
                if connection is not None:
                    request = opcode == write_request
                    value = bytes(pdu[ATT_HEADER:])
                    if held and connection_handle in held:
                        writes.hold(connection_handle, (connection, value, request))
                        return
                    on_write(connection, value)
                    if request:
                        send_l2cap_pdu(connection_handle, att.ATT_CID, _WRITE_RESPONSE)
                    return
            elif (
                opcode == notification
                and not gatt_client.logger.isEnabledFor(logging.DEBUG)
            ):
                target = notified.get(connection_handle)
                if target is not None and target[0] == handle:
                    target[1](bytes(pdu[ATT_HEADER:]))
                    return
        in_bumble(connection_handle, pdu)

    manager.register_fixed_channel(att.ATT_CID, on_att_pdu)


class BumbleTransport:
    """pairkit's BLE transport on one bumble device (module docstring)."""

    def __init__(
        self,
        spec: str = "virtual",
        *,
        config: BumbleConfig | None = None,
        radio: VirtualRadio | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        if not spec:
            raise ConfigError("an empty bumble transport name")
        if radio is not None and spec != "virtual":
            raise ConfigError("a VirtualRadio only goes with the 'virtual' transport")
        scheme, _, rest = spec.partition(":")
        if scheme == "usb":
            parse_usb_spec(rest)  # ConfigError before libusb is touched
        self._spec = spec
        self._config = config or BumbleConfig()
        self._radio = radio
        self._rng = rng
        self._device: Device | None = None
        self._hci: Transport | None = None
        self._controller: Controller | None = None
        self._trace: RedactingSnooper | None = None
        self._irk: bytes | None = None
        self._privacy_fallback: str | None = None
        self._closed = False
        #: Advertisements heard while scanning: pairkit hellos, others, malformed, and
        #: sightings dropped because a scan() consumer fell behind.
        self.stats: dict[str, int] = {"hellos": 0, "ignored": 0, "garbage": 0, "dropped": 0}
        self._scan_queues: set[asyncio.Queue[Sighting | None]] = set()
        self._scan_users = 0
        self._scan_lock = asyncio.Lock()
        self._adv_lock = asyncio.Lock()
        self._adv_data: bytes | None = None
        self._adv_set: AdvertisingSet | None = None
        #: loop time until which advertising is fast (None: always fast)
        self._fast_until: float | None = None
        self._slowdown: asyncio.TimerHandle | None = None
        self._applied_interval: float | None = None
        self._accept_queue: asyncio.Queue[BleLink | None] = asyncio.Queue()
        self._host_sides: dict[int, _HostSide] = {}
        #: how long a guest's connection may stay without opening a pairkit link (None: no limit;
        #: :meth:`drop_linkless_connections_after`)
        self._link_wait: float | None = None
        #: guest links' notifications, read as they come (:func:`_read_att_at_once`)
        self._notified: Notified = {}
        self._pairing_configs: dict[int, PairingConfig] = {}
        self._connect_lock = asyncio.Lock()
        self._expected_peer: hci.Address | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._psm = 0
        self._rx_char: Characteristic[bytes] | None = None
        self._tx_char: Characteristic[bytes] | None = None
        #: why the controller went away (None while it serves), and the same as a future
        #: that waits on it end with (see :meth:`reopen`)
        self._lost: str | None = None
        self._lost_future: asyncio.Future[str] | None = None
        #: the random static address to come back with after a lost controller
        self._static_address: str | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> BumbleTransport:
        """Open the HCI transport (or make the virtual controller) and power the device on."""
        if self._closed:
            raise TransportError("this Bluetooth transport is closed")
        if self._device is not None:
            return self
        config = self._config
        what = f"opening the Bluetooth controller {self._spec!r}"
        address = config.address or self._static_address or random_static_address(self._rng)
        try:
            if self._spec == "virtual":
                radio = self._radio or default_radio()
                self._radio = radio
                controller = radio.create_controller(config.name)
                self._controller = controller
                host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
            else:
                try:
                    self._hci = await guarded(
                        open_transport(bumble_transport_spec(self._spec)),
                        what=what,
                        timeout=config.open_timeout,
                    )
                except PairingError as exc:
                    raise open_failure(exc, self._spec) from exc
                host = Host(controller_source=self._hci.source, controller_sink=self._hci.sink)
            if self._trace is None:  # a reopened controller goes on in the same trace
                trace_path = claim_trace_path(config.trace)
                if trace_path is not None:
                    self._trace = open_trace(trace_path)
            if self._trace is not None:
                host.snooper = self._trace
            device = Device(name=config.name, address=hci.Address(address), host=host)
            self._device = device
            self._setup_device(device)
            try:
                await guarded(device.power_on(), what=what, timeout=config.open_timeout,
                              lost=self._hci_lost())
            except PairingError as exc:
                # A controller that hangs up while it starts (a 'pairkit radio' port another
                # process holds, or a radio that died) or never answers: said in words, with
                # the next step.
                gone = await port_went_away(exc, self._spec)
                if gone is not None:
                    raise TransportError(gone, code=ErrorCode.NOT_FOUND) from exc
                raise open_failure(exc, self._spec) from exc
            self._schedule_fast_period()
            self._watch_controller()
        except BaseException:
            await self._release()
            self._device = None
            self._controller = None
            raise
        logger.debug("bumble device %s up on %s", address, self._spec)
        return self

    def _hci_lost(self) -> asyncio.Future[str] | None:
        """A future that completes when the HCI transport's far end hangs up (None: virtual)."""
        terminated = getattr(getattr(self._hci, "source", None), "terminated", None)
        if not isinstance(terminated, asyncio.Future):
            return None
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_done(_: object) -> None:
            if not lost.done():
                lost.set_result("the controller closed the connection")

        terminated.add_done_callback(on_done)
        return lost

    # -- a lost controller (issue 17, finding 6) ---------------------------------------------

    @property
    def lost(self) -> str | None:
        """Why this device's controller went away (unplugged, reset, a ``pairkit radio`` that
        stopped), or None while it serves.  Then every link on it has ended, ``accept``,
        ``scan`` and ``connect`` raise :class:`~transports.base.ControllerLostError`, and
        :meth:`reopen` tries to open it again."""
        return self._lost

    def _watch_controller(self) -> None:
        """Notice the HCI transport's far end hanging up (a USB dongle unplugged, a serial
        board gone, a ``pairkit radio`` port closed): bumble completes its source's
        ``terminated`` future then, and says nothing else."""
        hci_transport = self._hci
        source = getattr(hci_transport, "source", None)
        terminated = getattr(source, "terminated", None)
        if isinstance(terminated, asyncio.Future):
            watch_socket_source(source)
            terminated.add_done_callback(lambda _: self._on_controller_lost(hci_transport))

    def _on_controller_lost(self, hci_transport: Transport | None) -> None:
        if self._closed or hci_transport is not self._hci or self._lost is not None:
            return  # closed by us, or an earlier controller's late news
        self._lost = f"the Bluetooth controller {self._spec!r} was lost"
        logger.debug("%s", self._lost)
        if self._lost_future is not None and not self._lost_future.done():
            self._lost_future.set_result(self._lost)
        if self._slowdown is not None:
            self._slowdown.cancel()
            self._slowdown = None
        # bumble has already ended every connection (with reason 0: guard.describe_reason),
        # and the command it waited for; wake what waits on the device itself.
        for queue in self._scan_queues:
            put_latest(queue, None)
        self._accept_queue.put_nowait(None)

    def _lost_error(self) -> ControllerLostError:
        return ControllerLostError(
            f"{self._lost}: unplugged, reset or switched off (plug it back in; for "
            "'pairkit radio', start it again on the same ports)"
        )

    def _when_lost(self) -> asyncio.Future[str]:
        """A future completed with :attr:`lost`'s text when the controller goes away."""
        if self._lost_future is None:
            self._lost_future = asyncio.get_running_loop().create_future()
            if self._lost is not None:
                self._lost_future.set_result(self._lost)
        return self._lost_future

    async def reopen(self) -> BumbleTransport:
        """Open the controller again after it was lost (:attr:`lost`), as :meth:`open` does
        (and raising as it does when the controller is still not there).

        The device comes back as it was: the same random static address, or, with an identity
        key (:meth:`use_identity_key`), a fresh resolvable private address from the same key;
        the same GATT service, L2CAP server and advertising rates.  Advertising is not
        restarted: the caller advertises a fresh hello from the new address (an old hello
        sent from a new address would link the two).  A controller that comes back as
        another one (another dongle) is as good.  Does nothing on a controller that serves.
        """
        if self._closed:
            raise TransportError("this Bluetooth transport is closed")
        if self._lost is None and self._device is not None:
            return self
        device, irk = self._device, self._irk
        if device is not None:  # (None: an earlier reopen failed; the address is kept)
            self._static_address = str(device.static_address)
        trace, self._trace = self._trace, None
        await self._release()
        self._trace = trace
        self._device = None
        self._controller = None
        self._host_sides.clear()
        self._pairing_configs.clear()
        self._adv_set = None
        self._adv_data = None
        self._applied_interval = None
        self._scan_users = 0
        self._accept_queue = asyncio.Queue()
        self._lost = None
        self._lost_future = None
        try:
            await self.open()
        except BaseException:
            self._lost = self._lost or f"the Bluetooth controller {self._spec!r} was lost"
            raise
        if irk is not None:
            await self.use_identity_key(irk)
        return self

    async def close(self) -> None:
        """Disconnect every peer, power off and close the HCI transport; idempotent."""
        if self._closed:
            return
        self._closed = True
        for queue in self._scan_queues:
            put_latest(queue, None)
        self._accept_queue.put_nowait(None)
        device = self._device
        if self._lost is not None:
            device = None  # nothing to tell a controller that is gone
        if device is not None and device.powered_on:
            timeout = self._config.close_timeout
            with contextlib.suppress(PairingError):
                await guarded(self._stop_advertising_now(), what="stopping", timeout=timeout)
            disconnects = [
                guarded(c.disconnect(), what="disconnecting", timeout=timeout)
                for c in list(device.connections.values())
            ]
            await asyncio.gather(*disconnects, return_exceptions=True)
            with contextlib.suppress(PairingError):
                await guarded(device.power_off(), what="powering off", timeout=timeout)
        await self._release()

    async def _release(self) -> None:
        if self._slowdown is not None:
            self._slowdown.cancel()
            self._slowdown = None
        for task in list(self._tasks):
            task.cancel()
        if self._controller is not None and self._radio is not None:
            self._radio.unplug(self._controller)
        if self._hci is not None:
            hci_transport, self._hci = self._hci, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hci_transport.close(), self._config.close_timeout)
        if self._trace is not None:
            trace, self._trace = self._trace, None
            trace.close()

    async def __aenter__(self) -> BumbleTransport:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def config(self) -> BumbleConfig:
        return self._config

    @property
    def address(self) -> str:
        """This device's current random address (static, or resolvable private)."""
        return str(self._require_device().random_address)

    @property
    def device(self) -> Device:
        """The bumble device (for diagnostics and tests)."""
        return self._require_device()

    @property
    def controller(self) -> Controller | None:
        """The virtual controller, when the transport is ``virtual``."""
        return self._controller

    @property
    def radio(self) -> VirtualRadio | None:
        return self._radio

    # -- Advertiser ------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """Largest hello this advertiser carries: 10 bytes legacy, 208 extended."""
        return max_payload(self._config.extended_advertising)

    async def start_advertising(self, payload: bytes) -> None:
        """Advertise ``payload`` (connectable) until stopped; replaces a running hello."""
        device = self._require_device()
        extended = self._config.extended_advertising
        data = encode_advertising_data(bytes(payload), extended=extended)
        if extended and not device.supports_le_extended_advertising:
            raise UnsupportedError("this Bluetooth controller has no extended advertising")
        async with self._adv_lock:
            self._adv_data = data
            await self._apply_advertising()

    @property
    def advertising_interval_ms(self) -> float:
        """The interval advertising uses now: fast within the fast period, else slow."""
        config = self._config
        if self._fast_until is None:
            return config.advertising_interval_ms
        if asyncio.get_running_loop().time() < self._fast_until:
            return config.advertising_interval_ms
        return config.slow_advertising_interval_ms

    async def advertise_fast(self) -> None:
        """Advertise fast again for ``fast_advertising_seconds`` (a visibility window opened).

        Restarts a running advertisement at the fast interval when it was slow.
        """
        self._require_device()
        self._schedule_fast_period()
        await self._reapply_if_rate_changed()

    def _schedule_fast_period(self) -> None:
        seconds = self._config.fast_advertising_seconds
        if self._slowdown is not None:
            self._slowdown.cancel()
            self._slowdown = None
        if seconds is None:
            self._fast_until = None
            return
        loop = asyncio.get_running_loop()
        self._fast_until = loop.time() + seconds
        # A little after the end, so the rate read then is already the slow one.
        self._slowdown = loop.call_later(seconds + 0.001, self._on_fast_period_over)

    def _on_fast_period_over(self) -> None:
        self._slowdown = None
        if not self._closed and self._device is not None:
            self._spawn(self._reapply_if_rate_changed())

    async def _reapply_if_rate_changed(self) -> None:
        async with self._adv_lock:
            if self._adv_data is None or self._closed:
                return
            if self._applied_interval == self.advertising_interval_ms:
                return
            try:
                await self._apply_advertising()
            except PairingError as exc:
                logger.warning("changing the advertising rate failed: %s", exc)

    async def stop_advertising(self) -> None:
        self._require_device()
        async with self._adv_lock:
            self._adv_data = None
            await self._stop_advertising()

    @property
    def address_privacy(self) -> str:
        """``resolvable`` once an identity key is in use, else why the address is static."""
        if self._irk is not None:
            return "resolvable"
        return self._privacy_fallback or "static (no identity resolving key given)"

    async def use_identity_key(self, irk: bytes) -> str:
        """Use resolvable private addresses made with ``irk`` from now on (Core 5.4 Vol 6
        Part B §1.3.2.2), starting with a fresh one now; returns :attr:`address_privacy`.

        A controller that refuses a resolvable private address as its random address keeps a
        random static address, rotated as before; :attr:`address_privacy` then says so.
        """
        if len(irk) != IRK_SIZE:
            raise ConfigError(f"an identity resolving key is {IRK_SIZE} bytes")
        self._require_device()
        if not self._config.private_addresses:
            self._privacy_fallback = "static (private_addresses is off)"
            return self.address_privacy
        self._irk = bytes(irk)
        self._privacy_fallback = None
        await self.rotate_address()
        return self.address_privacy

    async def rotate_address(self, rng: Rng | None = None) -> str:
        """Move to a new address and re-advertise; returns the new address.

        With an identity key (:meth:`use_identity_key`) the new address is a resolvable
        private address (Core 5.4 Vol 6 Part B §1.3.2.2); without one, a random static address
        (§1.3.2.1).  Links already open keep working.  Real controllers refuse while this
        device scans or connects (Core Vol 4 Part E §7.8.4), which raises
        :class:`TransportError`.
        """
        device = self._require_device()
        draw = rng or self._rng
        async with self._adv_lock:
            await self._stop_advertising()
            if self._irk is not None:
                rpa = hci.Address(resolvable_private_address(self._irk, draw))
                try:
                    await self._set_random_address(rpa, hint=False)
                    new = rpa
                except TransportError as exc:
                    # Either the controller has no use for RPAs or it is busy: a static
                    # address tells which (a busy controller refuses it too, and the error
                    # goes up with the identity key kept).
                    static = hci.Address(random_static_address(draw))
                    await self._set_random_address(static)
                    self._irk = None
                    self._privacy_fallback = (
                        f"static (this controller refused a resolvable private address: {exc})"
                    )
                    logger.warning("%s", self._privacy_fallback)
                    device.static_address = static
                    new = static
            else:
                new = hci.Address(random_static_address(draw))
                await self._set_random_address(new)
                device.static_address = new
            device.random_address = new
            if self._adv_data is not None:
                await self._apply_advertising()
        return str(new)

    async def _set_random_address(self, address: hci.Address, *, hint: bool = True) -> None:
        try:
            await guarded(
                self._require_device().send_sync_command(
                    hci.HCI_LE_Set_Random_Address_Command(random_address=address)
                ),
                what="changing the Bluetooth address",
                timeout=self._config.open_timeout,
            )
        except TransportError as exc:
            if not hint:
                raise
            raise TransportError(f"{exc} (stop scanning and connecting first)") from exc

    async def _apply_advertising(self) -> None:
        # Called with _adv_lock held.
        device = self._require_device()
        data = self._adv_data
        await self._stop_advertising()
        if data is None:
            return
        interval = self.advertising_interval_ms
        self._applied_interval = interval
        if self._config.extended_advertising:
            parameters = AdvertisingParameters(
                advertising_event_properties=AdvertisingEventProperties(
                    is_connectable=True, is_scannable=False, is_legacy=False
                ),
                primary_advertising_interval_min=interval,
                primary_advertising_interval_max=interval,
                own_address_type=hci.OwnAddressType.RANDOM,
            )
            self._adv_set = await guarded(
                device.create_advertising_set(
                    advertising_parameters=parameters,
                    random_address=device.random_address,
                    advertising_data=data,
                    auto_start=True,
                ),
                what="starting extended advertising",
                timeout=self._config.open_timeout,
            )
        else:
            await guarded(
                device.start_advertising(
                    advertising_type=AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE,
                    own_address_type=hci.OwnAddressType.RANDOM,
                    advertising_data=data,
                    scan_response_data=b"",
                    advertising_interval_min=interval,
                    advertising_interval_max=interval,
                ),
                what="starting advertising",
                timeout=self._config.open_timeout,
            )

    async def _stop_advertising(self) -> None:
        # Called with _adv_lock held.
        device = self._require_device()
        timeout = self._config.open_timeout
        adv_set, self._adv_set = self._adv_set, None
        self._applied_interval = None
        if adv_set is not None:
            if adv_set.enabled:
                await guarded(adv_set.stop(), what="stopping advertising", timeout=timeout)
            await guarded(adv_set.remove(), what="stopping advertising", timeout=timeout)
        if device.legacy_advertising_set is not None or device.legacy_advertiser is not None:
            await guarded(device.stop_advertising(), what="stopping advertising", timeout=timeout)

    async def _stop_advertising_now(self) -> None:
        async with self._adv_lock:
            self._adv_data = None
            await self._stop_advertising()

    async def _readvertise(self) -> None:
        # A connection ends connectable advertising (Core Vol 6 Part B §4.4.2.2); keep
        # advertising while a hello is up so more guests can come.
        async with self._adv_lock:
            device = self._device
            if self._adv_data is None or device is None or device.is_advertising:
                return
            try:
                await self._apply_advertising()
            except PairingError as exc:
                logger.warning("could not advertise again after a connection: %s", exc)

    # -- Scanner ---------------------------------------------------------------------------

    def scan(self, timeout: float) -> AsyncIterator[Sighting]:
        """Yield pairkit hellos heard during ``timeout`` seconds (duplicates allowed)."""
        if timeout < 0:
            raise ConfigError("the scan timeout must not be negative")
        return self._scan(timeout)

    async def _scan(self, timeout: float) -> AsyncIterator[Sighting]:
        self._require_device()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue: asyncio.Queue[Sighting | None] = asyncio.Queue(maxsize=_SCAN_QUEUE)
        self._scan_queues.add(queue)
        try:
            await self._scan_user(+1)
            async for sighting in sightings_until(queue, deadline):
                yield sighting
            if self._lost is not None and not self._closed:
                raise self._lost_error()
        finally:
            self._scan_queues.discard(queue)
            await self._scan_user(-1)

    async def _scan_user(self, delta: int) -> None:
        device = self._device
        if device is None or (delta < 0 and self._lost is not None):
            return
        async with self._scan_lock:
            config = self._config
            if delta > 0:
                if self._scan_users == 0 and not device.is_scanning:
                    await guarded(
                        device.start_scanning(
                            active=False,
                            filter_duplicates=False,
                            scan_interval=config.scan_interval_ms,
                            scan_window=config.scan_window_ms,
                        ),
                        what="starting to scan",
                        timeout=config.open_timeout,
                    )
                self._scan_users += 1
                return
            self._scan_users = max(0, self._scan_users + delta)
            if self._scan_users == 0 and device.is_scanning and not self._closed:
                with contextlib.suppress(PairingError):
                    await guarded(
                        device.stop_scanning(),
                        what="stopping the scan",
                        timeout=config.close_timeout,
                    )

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        parsed = parse_advertising_data(advertisement.data_bytes)
        if parsed.malformed:
            self.stats["garbage"] += 1
            return
        if parsed.payload is None:
            self.stats["ignored"] += 1
            return
        self.stats["hellos"] += 1
        rssi = advertisement.rssi
        sighting = Sighting(
            address=str(advertisement.address),
            payload=parsed.payload,
            rssi=None if rssi == Advertisement.RSSI_NOT_AVAILABLE else rssi,
            name=parsed.name,
        )
        for queue in self._scan_queues:
            try:
                queue.put_nowait(sighting)
            except asyncio.QueueFull:
                self.stats["dropped"] += 1

    # -- Listener (host) -----------------------------------------------------------------

    async def accept(self, timeout: float | None = None) -> BleLink:
        """The next guest's link; :class:`PairingTimeout` when none comes within ``timeout``."""
        self._require_device()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                if deadline is None:
                    link = await self._accept_queue.get()
                else:
                    link = await asyncio.wait_for(
                        self._accept_queue.get(), max(0.0, deadline - loop.time())
                    )
            except TimeoutError:
                raise PairingTimeout(f"no guest connected within {timeout:g} s") from None
            if link is None:
                self._accept_queue.put_nowait(None)  # wake the other acceptors too
                if self._lost is not None and not self._closed:
                    raise self._lost_error()
                raise LinkClosedError("the Bluetooth transport is closed")
            if link.closed and not link.buffered:
                continue  # a guest that came and went, leaving nothing to read
            return link

    def _on_connection(self, connection: Connection) -> None:
        handle = connection.handle

        def forget(_reason: int) -> None:
            self._host_sides.pop(handle, None)
            self._pairing_configs.pop(handle, None)
            self._notified.pop(handle, None)

        connection.on(connection.EVENT_DISCONNECTION, forget)
        if connection.role == hci.Role.PERIPHERAL:
            self._host_sides[handle] = _HostSide(connection)
            self._spawn(self._readvertise())
            if self._link_wait is not None:
                self._spawn(self._drop_if_linkless(connection, self._link_wait))
            if self._controller is None:
                self._spawn(self._request_data_length(connection))
        elif self._expected_peer is None:
            # A connect that was given up on completed after all: nobody wants it.  (Connects
            # are serialised, so while one is under way a new central connection is its own.)
            self._spawn(self._drop(connection))

    def _on_subscription(
        self,
        connection: Connection,
        characteristic: Characteristic[Any],
        notify_enabled: bool,
        _indicate_enabled: bool,
    ) -> None:
        if characteristic is not self._tx_char:
            return
        side = self._host_sides.get(connection.handle)
        if side is None:
            return
        if not notify_enabled:
            if isinstance(side.link, GattLink):
                side.link.on_unsubscribed()
            return
        if side.link is not None:
            return
        link = GattLink(
            connection,
            guest=False,
            options=self._config.link_options,
            tx_characteristic=self._tx_char,
            set_pairing_config=self._set_pairing_config,
        )
        for data in side.early:
            link.feed(data)
        side.early.clear()
        side.link = link
        self._accept_queue.put_nowait(link)

    def _on_rx_write(self, connection: Connection, value: bytes) -> None:
        side = self._host_sides.get(connection.handle)
        if side is None:
            return
        if isinstance(side.link, GattLink):
            side.link.feed(value)
        elif side.link is None and side.early_bytes + len(value) <= _EARLY_LIMIT:
            side.early.append(bytes(value))
            side.early_bytes += len(value)

    def _on_l2cap_channel(self, channel: l2cap.LeCreditBasedChannel) -> None:
        connection = channel.connection
        side = self._host_sides.get(connection.handle)
        if side is None or side.link is not None:
            # One link per connection: a second channel has nothing to carry.
            self._spawn(_quietly(channel.disconnect(), self._config.close_timeout))
            return
        link = L2capLink(
            connection,
            channel,
            guest=False,
            options=self._config.link_options,
            set_pairing_config=self._set_pairing_config,
        )
        side.link = link
        self._accept_queue.put_nowait(link)

    # -- Connector (guest) ---------------------------------------------------------------

    async def connect(self, address: str, timeout: float) -> BleLink:
        """Connect to a host and open a link (L2CAP when both prefer it, else GATT)."""
        device = self._require_device()
        try:
            peer = hci.Address(address)
        except (ValueError, core.InvalidArgumentError) as exc:
            raise ConfigError(f"{address!r} is not a Bluetooth address") from exc
        if timeout <= 0:
            raise ConfigError("the connect timeout must be positive")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._connect_lock.acquire(), timeout)
        except TimeoutError:
            raise PairingTimeout(
                f"connecting to {peer}: this device was busy connecting elsewhere for {timeout:g} s"
            ) from None
        try:
            self._expected_peer = peer
            attempt = 0
            while True:
                attempt += 1
                before = set(device.connections)
                remaining = max(0.001, deadline - loop.time())
                try:
                    connection = await guarded(
                        device.connect(
                            peer,
                            transport=core.PhysicalTransport.LE,
                            own_address_type=hci.OwnAddressType.RANDOM,
                            timeout=remaining,
                        ),
                        what=f"connecting to {peer}",
                        timeout=remaining + _CANCEL_GRACE,
                        lost=self._when_lost(),
                    )
                    break
                except BaseException as exc:
                    if self._lost is not None and isinstance(exc, PairingError):
                        raise self._lost_error() from None
                    # The connection may have completed just as the attempt was cancelled.
                    for handle, orphan in list(device.connections.items()):
                        if handle not in before and orphan.role == hci.Role.CENTRAL:
                            self._spawn(self._drop(orphan))
                    if isinstance(exc, PairingTimeout):
                        raise PairingTimeout(
                            f"{peer} did not answer within {timeout:g} s "
                            "(out of range, or not advertising)"
                        ) from None
                    status = connect_failure_status(exc)
                    if status is None:
                        raise
                    pause = retry_pause(attempt)
                    if attempt >= self.config.connect_attempts or (
                        loop.time() + pause >= deadline
                    ):
                        raise TransportError(
                            f"connecting to {peer} failed {attempt} time(s): "
                            f"{describe_connect_failure(status)}"
                        ) from None
                    await asyncio.sleep(pause)
        finally:
            self._expected_peer = None
            self._connect_lock.release()
        try:
            return await self._open_guest_link(connection, deadline)
        except BaseException as exc:
            if self._lost is not None and isinstance(exc, PairingError):
                raise self._lost_error() from None
            await self._drop(connection)
            raise

    async def _open_guest_link(self, connection: Connection, deadline: float) -> BleLink:
        loop = asyncio.get_running_loop()
        config = self._config
        lost: asyncio.Future[str] = loop.create_future()

        def on_disconnection(reason: int) -> None:
            if not lost.done():
                lost.set_result(describe_reason(reason))

        connection.on(connection.EVENT_DISCONNECTION, on_disconnection)
        peer = connection.peer_address

        def step() -> float:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PairingTimeout(f"setting up the link to {peer} took too long")
            return min(config.gatt_timeout, remaining)

        try:
            if self._controller is None:
                await self._request_data_length(connection)
            client = connection.gatt_client
            await guarded(
                client.request_mtu(config.att_mtu),
                what="exchanging the ATT MTU",
                timeout=step(),
                lost=lost,
            )
            services = await guarded(
                client.discover_service(_SERVICE),
                what="looking for pairkit's GATT service",
                timeout=step(),
                lost=lost,
            )
            if not services:
                raise UnsupportedError(f"{peer} does not offer pairkit's GATT service")
            characteristics = await guarded(
                client.discover_characteristics([], services[0]),
                what="discovering pairkit's GATT characteristics",
                timeout=step(),
                lost=lost,
            )
            by_uuid = {c.uuid: c for c in characteristics}
            rx, tx, psm = by_uuid.get(_RX), by_uuid.get(_TX), by_uuid.get(_PSM)
            if rx is None or tx is None:
                raise UnsupportedError(f"{peer} offers an incomplete pairkit GATT service")
            if config.prefer_l2cap and psm is not None:
                link = await self._try_l2cap(connection, psm, step, lost)
                if link is not None:
                    return link
            gatt_link = GattLink(
                connection,
                guest=True,
                options=config.link_options,
                rx_handle=rx.handle,
                set_pairing_config=self._set_pairing_config,
            )
            await guarded(
                client.subscribe(tx, gatt_link.on_notification),
                what="subscribing to pairkit's notifications",
                timeout=step(),
                lost=lost,
            )
            if connection.handle in self._require_device().connections:
                self._notified[connection.handle] = (tx.handle, gatt_link.on_notification)
            return gatt_link
        finally:
            connection.remove_listener(connection.EVENT_DISCONNECTION, on_disconnection)

    async def _try_l2cap(
        self,
        connection: Connection,
        psm_characteristic: Any,
        step: Callable[[], float],
        lost: asyncio.Future[str],
    ) -> L2capLink | None:
        config = self._config
        raw = await guarded(
            connection.gatt_client.read_value(psm_characteristic),
            what="reading the host's L2CAP PSM",
            timeout=step(),
            lost=lost,
        )
        psm = int.from_bytes(raw[:2], "little") if len(raw) >= 2 else 0
        if psm == 0:
            return None
        spec = l2cap.LeCreditBasedChannelSpec(
            psm=psm, mtu=config.l2cap_mtu, mps=config.l2cap_mps, max_credits=config.l2cap_credits
        )
        opening = asyncio.ensure_future(connection.create_l2cap_channel(spec=spec))
        try:
            # One turn of the loop sends the request; tap the channel before the answer comes.
            await asyncio.sleep(0)
            tap_pending_channels(connection, psm)
        except BaseException:
            # Given up (cancelled) before guarded() owns the open: call it off here, or it runs
            # on until a disconnection ends it, and a channel the host opens is nobody's.
            abandon(opening)
            raise
        try:
            channel = await guarded(
                opening,
                what="opening the L2CAP channel",
                timeout=step(),
                lost=lost,
            )
        except (LinkClosedError, PairingTimeout):
            # Lost, or no answer: the host may yet open the channel, so GATT would be ambiguous.
            raise
        except TransportError as exc:
            logger.info("L2CAP refused (%s); falling back to GATT", exc)
            return None
        return L2capLink(
            connection,
            channel,
            guest=True,
            options=config.link_options,
            set_pairing_config=self._set_pairing_config,
        )

    # -- helpers -------------------------------------------------------------------------

    def _setup_device(self, device: Device) -> None:
        config = self._config
        self._rx_char = Characteristic(
            str(PAIRKIT_RX_CHAR_UUID),
            Characteristic.Properties.WRITE_WITHOUT_RESPONSE | Characteristic.Properties.WRITE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_rx_write),
        )
        self._tx_char = Characteristic(
            str(PAIRKIT_TX_CHAR_UUID),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        psm_char: Characteristic[bytes] = Characteristic(
            str(PAIRKIT_PSM_CHAR_UUID),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            CharacteristicValue(read=lambda _connection: self._psm.to_bytes(2, "little")),
        )
        device.add_service(
            Service(str(PAIRKIT_SERVICE_UUID), [self._rx_char, self._tx_char, psm_char])
        )
        device.gatt_server.max_mtu = config.att_mtu
        rx_writes = _RxWrites(device, self._rx_char, self._on_rx_write)
        _read_rx_writes_at_once(device, rx_writes)
        _read_att_at_once(device, rx_writes, self._notified)
        if config.prefer_l2cap:
            self._psm = self._start_l2cap_server(device)
        device.on(device.EVENT_CONNECTION, self._on_connection)
        device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
        device.on("characteristic_subscription", self._on_subscription)
        device.pairing_config_factory = self._pairing_config_for
        # Secure Connections Only: a legacy Pairing Request or Response is refused (links.py).
        device.smp_session_proxy = SecureConnectionsOnlySession

    def _start_l2cap_server(self, device: Device) -> int:
        config = self._config
        for psm in (PAIRKIT_L2CAP_PSM, None):
            spec = l2cap.LeCreditBasedChannelSpec(
                psm=psm,
                mtu=config.l2cap_mtu,
                mps=config.l2cap_mps,
                max_credits=config.l2cap_credits,
            )
            try:
                server = device.create_l2cap_server(spec=spec, handler=self._on_l2cap_channel)
            except core.BaseBumbleError:
                continue
            return server.psm
        return 0

    def _pairing_config_for(self, connection: Connection) -> PairingConfig:
        chosen = self._pairing_configs.get(connection.handle)
        return chosen or pairing_config(self._config.pairing_delegate)

    def _set_pairing_config(self, connection: Connection, config: PairingConfig) -> None:
        self._pairing_configs[connection.handle] = config

    async def _request_data_length(self, connection: Connection) -> None:
        # LE Data Length Extension (Core Vol 6 Part B §4.5.10): 251-byte ACL payloads are
        # 4-6x faster than 27.  Not every controller agrees; that is no reason to fail.
        with contextlib.suppress(PairingError, core.BaseBumbleError):
            await guarded(
                connection.set_data_length(251, 2120),
                what="asking for longer data packets",
                timeout=self._config.close_timeout,
            )

    def drop_linkless_connections_after(self, seconds: float) -> None:
        """As a host: drop a guest's connection that has opened no pairkit link (subscribed to
        TX, or opened the L2CAP channel) within ``seconds`` of connecting.  Such a connection
        never reaches the host's admission, which bounds every link's first flight
        (runtime/admission.py), yet it holds one of the controller's few connections: a
        stranger with a few addresses kept every guest out (attack review atk13, finding 2;
        docs/security.md, "A pairing host's pending links").  ``accept_loop`` sets it from the
        admission's first flight."""
        if not seconds > 0:
            raise ConfigError("the wait for a guest's link must be positive")
        self._link_wait = seconds

    async def _drop_if_linkless(self, connection: Connection, wait: float) -> None:
        await asyncio.sleep(wait)
        side = self._host_sides.get(connection.handle)
        if side is not None and side.connection is connection and side.link is None:
            logger.info("dropping %s: no pairkit link within %g s of connecting",
                        connection.peer_address, wait)
            await self._drop(connection)

    async def _drop(self, connection: Connection) -> None:
        device = self._device
        if device is not None and connection.handle in device.connections:
            await _quietly(connection.disconnect(), self._config.close_timeout)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require_device(self) -> Device:
        if self._closed:
            raise LinkClosedError("the Bluetooth transport is closed")
        if self._lost is not None:
            raise self._lost_error()
        if self._device is None or not self._device.powered_on:
            raise TransportError("the Bluetooth transport is not open (use 'async with' or open())")
        return self._device

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._device else "new")
        return f"<BumbleTransport {self._spec} {state}>"


def watch_socket_source(source: Any) -> bool:
    """Make a socket-read HCI source (bumble's ``hci-socket``) report the socket's end as a
    lost transport; True if ``source`` is one.

    bumble's HCI-socket reader lets the error of an adapter that went away (Linux answers a
    read with EPIPE or ENODEV once the device is unregistered, net/bluetooth/hci_sock.c) escape
    into the event loop, and would spin on an end of file; it never completes ``terminated``.
    This reader, put in its place, completes it instead (``on_transport_lost``), so the loss
    is noticed as for every other transport.
    """
    sock = getattr(source, "socket", None)
    parser = getattr(source, "parser", None)
    if sock is None or parser is None or not hasattr(source, "on_transport_lost"):
        return False
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        return False
    if fd < 0:
        return False
    loop = asyncio.get_running_loop()

    def gone() -> None:
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)
        source.on_transport_lost()

    def read() -> None:
        while True:
            try:
                packet = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                gone()
                return
            if not packet:
                gone()
                return
            parser.feed_data(packet)

    loop.remove_reader(fd)
    loop.add_reader(fd, read)
    return True


async def _quietly(awaitable: Any, timeout: float) -> None:
    with contextlib.suppress(PairingError):
        await guarded(awaitable, what="cleaning up", timeout=timeout)


async def open_bumble(spec: str, **kwargs: Any) -> BumbleTransport:
    """Entry point for ``bumble:<spec>`` transport names; returns an open transport.

    ``spec`` is ``virtual`` or a bumble HCI transport name (``usb:0``, ``usb:VID:PID`` with
    hexadecimal IDs, ``hci-socket:0``, ``serial:/dev/ttyACM0,1000000`` or
    ``serial:/dev/ttyACM0:1000000``, ``serial:/dev/ttyACM0,1000000,rtscts`` for RTS/CTS flow
    control,
    ``tcp-client:127.0.0.1:PORT``).  Keywords: ``config`` (a :class:`BumbleConfig`),
    ``radio`` (a :class:`VirtualRadio`), ``rng``, or any :class:`BumbleConfig` field.
    """
    config = kwargs.pop("config", None)
    radio = kwargs.pop("radio", None)
    rng = kwargs.pop("rng", os.urandom)
    if kwargs:
        try:
            config = dataclasses.replace(config or BumbleConfig(), **kwargs)
        except TypeError as exc:
            raise ConfigError(f"unknown bumble transport option: {exc}") from exc
    transport = BumbleTransport(spec or "virtual", config=config, radio=radio, rng=rng)
    return await transport.open()
