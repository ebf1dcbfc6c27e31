"""pairkit's guest over bleak: the OS Bluetooth stack, or bumble through pairkit's bleak backend.

Transport names: ``bleak`` (bleak's backend for this OS: BlueZ, CoreBluetooth, WinRT) and
``bleak:bumble:SPEC``, the same bleak code on :mod:`transports.bleak_bumble`, where ``SPEC`` is any
bumble transport (``virtual``, ``tcp-client:HOST:PORT`` for a ``pairkit radio`` port, ``usb:0``,
``hci-socket:0``, ``serial:/dev/ttyACM0:1000000``).  bleak is central only (DESIGN.md "BLE
roles"), so this transport is a **Scanner** and a **Connector** (``transports.base``), never a
host.

* **Scanner**: ``scan(timeout)`` runs a ``BleakScanner`` and yields a
  :class:`~transports.base.Sighting` for each advertisement whose service data carries pairkit's
  service UUID (``docs/hello.md``): the hello is that service data.  With
  ``BleakConfig.uuid_filter`` the scanner also asks the OS for a service-UUID filter; it is off by
  default because OS filters (the Linux kernel's, CoreBluetooth's) match only the advertised
  service UUID *lists*, and a legacy pairkit hello has no room for one: the 31 bytes hold the
  flags and the service data (``transports/ble/adv.py``).
* **Connector**: ``connect(address, timeout)`` finds the ``BLEDevice`` (heard by a scan, or
  scanned for now), connects with bleak-retry-connector's ``establish_connection`` (its retries
  and backoff on transient failures such as BlueZ's ``le-connection-abort-by-local``), finds
  pairkit's GATT service, **subscribes to the TX notifications before anything is written** (data
  sent before the subscription is lost on some platforms), and returns a :class:`BleakLink`.

:class:`BleakLink` is pairkit's GATT link (``transports/ble/links.py``, guest side) over bleak:
messages go up as writes without response to the RX characteristic and come down as
notifications; its MTU is the RX characteristic's ``max_write_without_response_size`` (bleak's
portable figure: ``mtu_size`` says 23 on some Linux setups), at most 512 (Core 5.4 Vol 3 Part F
§3.2.9), read again at every send: bleak says it can grow after connect (BlueZ may finish the
ATT MTU exchange after the connection is up), and a link that kept the first figure would send
20-byte pieces for its whole life.  bleak's disconnected callback ends the link: ``recv``
returns what arrived, then raises :class:`LinkClosedError`.  ``encrypt()`` is bleak's
``pair()`` (LE Secure Connections on bumble; the OS decides elsewhere).

Errors are pairkit's: Bluetooth off or missing, no permission, a busy controller, a peer out of
range, each said in plain words with what to do (:func:`translate`).

BlueZ keeps every device bleak's ``pair()`` touched (bleak marks it Trusted first): on BlueZ the
transport removes the entry of a host it paired with once its last link to that host has
closed, unless the device was paired or trusted before (:mod:`transports.bleak_bluez`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import platform
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)
from bleak_retry_connector import BleakNotFoundError, establish_connection

from pairkit.pairing.errors import (
    ConfigError,
    InsecureLinkError,
    LinkClosedError,
    PairingError,
    PairingTimeout,
    TransportError,
    UnsupportedError,
)

from .base import Sighting, sightings_until
from .ble.adv import PAIRKIT_PSM_CHAR_UUID, PAIRKIT_RX_CHAR_UUID, PAIRKIT_SERVICE_UUID
from .ble.adv import PAIRKIT_TX_CHAR_UUID as _TX_UUID
from .bleak_bluez import BluezCleanup, Leftovers
from .queued import BufferedLink, put_latest

__all__ = ["BleakConfig", "BleakLink", "BleakTransport", "open", "translate"]

logger = logging.getLogger(__name__)

Rng = Callable[[int], bytes]
Hook = Callable[[], None]
AfterUse = Callable[[], Awaitable[None]]

SERVICE = str(PAIRKIT_SERVICE_UUID)  # bleak's keys: lower-case 128-bit text
RX = str(PAIRKIT_RX_CHAR_UUID)
TX = str(_TX_UUID)
PSM = str(PAIRKIT_PSM_CHAR_UUID)

GATT_MAX_VALUE = 512  #: Core 5.4 Vol 3 Part F §3.2.9
NO_RSSI = -127  #: what bleak backends report when the controller gives no RSSI
_SCAN_QUEUE = 512
_KNOWN_DEVICES = 256
_RETRIED = re.compile(r"^.+? - .+?: ((?:F|f)ailed to connect after .*)$", re.DOTALL)
_ADDRESS = re.compile(
    r"^(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}(?:/P)?"  # a MAC (bumble's /P: public)
    r"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"  # macOS
)


_BLUEZ_ADAPTER = re.compile(r"^hci(0|[1-9][0-9]{0,2})$")


def parse_bluez_adapter(backend: str) -> str | None:
    """The BlueZ adapter ``bleak:hciN`` names (``"hci1"`` for ``backend`` ``"hci1"``), or None
    when ``backend`` names none.  bleak reaches it as ``bluez={"adapter": "hciN"}`` (Linux
    only; other systems have one adapter)."""
    return backend if _BLUEZ_ADAPTER.match(backend) else None


def hello_or_patterns() -> list[Any]:
    """BlueZ's advertisement-monitor patterns that match a pairkit hello: the 128-bit service
    data AD structure (type 0x21) whose first 16 bytes are pairkit's service UUID, little-endian
    as it travels (Core 5.4 Vol 3 Part C §11; docs/hello.md).  BlueZ needs them for a passive
    scan (bleak's ``bluez={"or_patterns": ...}``)."""
    from bleak.args.bluez import OrPattern
    from bleak.assigned_numbers import AdvertisementDataType

    return [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID128,
                      PAIRKIT_SERVICE_UUID.bytes[::-1])]


@dataclass(frozen=True)
class BleakConfig:
    """How a :class:`BleakTransport` behaves; validated when built."""

    #: Connection attempts (bleak-retry-connector ``max_attempts``), backoff between them.
    connect_attempts: int = 3
    #: Ask the OS for a service-UUID scan filter (module docstring: off by default).
    uuid_filter: bool = False
    scanning_mode: Literal["active", "passive"] = "active"
    #: Links, as :class:`transports.ble.links.LinkOptions`.
    idle_timeout: float | None = None
    max_rx_buffer: int = 16 << 20
    send_timeout: float = 30.0
    close_timeout: float = 2.0
    encrypt_timeout: float = 15.0
    #: ``bleak:bumble:SPEC`` only: this central's device name, random static address (drawn
    #: from the rng when None), the ATT MTU it asks for, and the deadline to open the radio.
    name: str = "pairkit-bleak"
    address: str | None = None
    att_mtu: int = 517
    open_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.connect_attempts <= 10:
            raise ConfigError("connect_attempts must be 1 to 10")
        if self.scanning_mode not in ("active", "passive"):
            raise ConfigError("scanning_mode must be 'active' or 'passive'")
        for name in ("send_timeout", "close_timeout", "encrypt_timeout", "open_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ConfigError("idle_timeout must be positive (or None for no idle limit)")
        if self.max_rx_buffer < 65535:
            raise ConfigError("max_rx_buffer must hold at least one 64 KiB message")
        if not 23 <= self.att_mtu <= 517:
            raise ConfigError("att_mtu must be 23 to 517")
        if not self.name or len(self.name.encode()) > 248:
            raise ConfigError("the device name must be 1 to 248 bytes of UTF-8")


# -- errors -------------------------------------------------------------------------------------

_UNAVAILABLE_HINTS = {
    BleakBluetoothNotAvailableReason.POWERED_OFF: (
        "Bluetooth is switched off: turn it on (Linux: bluetoothctl power on, or "
        "rfkill unblock bluetooth; elsewhere: the system settings)"
    ),
    BleakBluetoothNotAvailableReason.NO_BLUETOOTH: (
        "no Bluetooth adapter found: plug in a USB dongle (Linux: bluetoothctl list shows "
        "the adapters)"
    ),
    BleakBluetoothNotAvailableReason.NO_BLE_CENTRAL_ROLE: (
        "this Bluetooth adapter cannot act as an LE central: use a Bluetooth 4.0+ dongle"
    ),
    BleakBluetoothNotAvailableReason.DENIED_BY_USER: (
        "this program is not allowed to use Bluetooth: allow it in the system's privacy "
        "settings (macOS: Privacy & Security > Bluetooth, for your terminal)"
    ),
    BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM: (
        "using Bluetooth is denied by the system (an administrator policy)"
    ),
}

_DBUS_HINTS = {
    "org.bluez.Error.NotReady": "Bluetooth is switched off: bluetoothctl power on",
    "org.bluez.Error.InProgress": (
        "the adapter is busy with another operation (another program scanning or "
        "connecting): try again"
    ),
    "org.freedesktop.DBus.Error.ServiceUnknown": (
        "BlueZ is not running: sudo systemctl start bluetooth"
    ),
    "org.bluez.Error.NotPermitted": "BlueZ refused: not permitted",
    "org.freedesktop.DBus.Error.AccessDenied": (
        "no permission to use BlueZ over D-Bus: add your user to the bluetooth group"
    ),
}


def translate(exc: BaseException, what: str, *, os_stack: bool = False) -> PairingError:
    """The pairkit error for a bleak (or OS) failure while doing ``what``.

    ``os_stack``: the failure came from bleak's own backend for this OS (BlueZ...), so a
    missing D-Bus socket means "BlueZ is not reachable".
    """
    if isinstance(exc, PairingError):
        return exc
    if isinstance(exc, BleakBluetoothNotAvailableError):
        text = str(exc.args[0]) if exc.args else "Bluetooth is not available"
        hint = _UNAVAILABLE_HINTS.get(exc.reason) if os_stack else None
        return TransportError(f"{what}: {hint or text}")
    if isinstance(exc, BleakNotFoundError | BleakDeviceNotFoundError):
        return PairingTimeout(
            f"{what}: the device was not found (out of range, or no longer advertising)"
        )
    if isinstance(exc, TimeoutError):
        return PairingTimeout(f"{what}: no answer in time (out of range, or not advertising)")
    if isinstance(exc, BleakGATTProtocolError):
        name = exc.code.name.lower().replace("_", " ")
        return TransportError(f"{what}: the peer's GATT server refused ({name})")
    if isinstance(exc, BleakDBusError):
        hint = _DBUS_HINTS.get(exc.dbus_error)
        return TransportError(f"{what}: {hint or exc}")
    if isinstance(exc, BleakError):
        detail = " ".join(str(a) for a in exc.args) or type(exc).__name__
        # bleak-retry-connector says "NAME - ADDRESS: Failed to connect after N attempt(s): ..."
        retried = _RETRIED.match(detail)
        return TransportError(f"{what}: {retried.group(1) if retried else detail}")
    if isinstance(exc, NotImplementedError):
        return UnsupportedError(
            f"{what}: this platform's Bluetooth stack cannot do that from an application"
        )
    if os_stack and isinstance(exc, FileNotFoundError | ConnectionRefusedError | PermissionError):
        if platform.system() == "Linux":
            return TransportError(
                f"{what}: the system Bluetooth service (BlueZ, over D-Bus) is not reachable: "
                "start it (sudo systemctl start bluetooth), or drive a dongle directly with "
                "-t bleak:bumble:usb:0"
            )
    if isinstance(exc, OSError):
        return TransportError(f"{what}: {exc.strerror or exc}")
    detail = str(exc).strip()
    return TransportError(f"{what} failed: {detail}" if detail else f"{what} failed")


# -- the link -----------------------------------------------------------------------------------


def _backend(client: BleakClient) -> Any:
    """The backend object behind a BleakClient (bleak keeps it private; read-only use)."""
    return getattr(client, "_backend", None)


class BleakLink(BufferedLink):
    """A pairkit GATT link over a connected ``BleakClient`` (module docstring).

    The receive buffer, ``recv``, ``send``'s checks and closing are :class:`BufferedLink`'s.
    """

    kind = "gatt"

    def __init__(
        self,
        client: BleakClient,
        *,
        rx: BleakGATTCharacteristic,
        flush: BleakGATTCharacteristic | None,
        peer: str,
        config: BleakConfig,
        before_pair: Hook | None = None,
        after_use: AfterUse | None = None,
    ) -> None:
        super().__init__(
            peer=peer, idle_timeout=config.idle_timeout, max_rx_buffer=config.max_rx_buffer
        )
        #: the transport's bookkeeping: a pairing is about to start; the link has closed
        self._before_pair = before_pair
        self._after_use = after_use
        self._client = client
        self._rx_char = rx
        self._flush_char = flush
        self._config = config
        self._paired = False

    # -- Link protocol -------------------------------------------------------------------

    @property
    def mtu(self) -> int:
        """The largest message: bleak's ``max_write_without_response_size`` now (it can grow
        after connect; module docstring), 20 to 512 bytes."""
        return max(20, min(self._rx_char.max_write_without_response_size, GATT_MAX_VALUE))

    @property
    def encrypted(self) -> bool:
        """True once the link is encrypted after an LE Secure Connections pairing.

        pairkit's bumble backend reports what the SMP pairing on this connection used
        (``pairing_outcome``): a legacy pairing does not count (docs/security.md, rule 5), and
        neither does an encryption whose pairing has not finished yet (bumble encrypts midway).

        The OS backends (BlueZ, CoreBluetooth, WinRT) have no API that tells Secure Connections
        from legacy pairing.  There the link counts as encrypted once bleak's ``pair()``
        succeeded, and pairkit *trusts the OS stack* to have used Secure Connections.  That
        trust is not a guarantee: BlueZ uses Secure Connections when both controllers support
        it and falls back to legacy pairing otherwise, unless the adapter is put in
        Secure Connections Only mode (``btmgmt sc only``); macOS and Windows decide alone.
        """
        backend = _backend(self._client)
        if hasattr(backend, "pairing_outcome"):  # pairkit's bumble backend: it knows
            outcome = backend.pairing_outcome
            if outcome is None or not outcome[0]:
                return False
            if self.closed:
                return self._paired
            return bool(getattr(backend, "is_encrypted", False))
        if self.closed:
            return self._paired
        return self._paired or bool(getattr(backend, "is_encrypted", False))

    @property
    def mitm_protected(self) -> bool:
        """True only when the backend reports an SC pairing protected against a man in the
        middle (pairkit's bumble backend).  OS stacks do not say whether the pairing was
        Just Works, so there it is False: unknown counts as not authenticated."""
        outcome = getattr(_backend(self._client), "pairing_outcome", None)
        return bool(outcome is not None and outcome[0] and outcome[1] and self.encrypted)

    @property
    def client(self) -> BleakClient:
        """The bleak client (for diagnostics and tests)."""
        return self._client

    async def _send_checked(self, data: bytes) -> None:
        # Called by BufferedLink.send under the send lock: one write without response.
        try:
            await asyncio.wait_for(
                self._client.write_gatt_char(self._rx_char, data, response=False),
                self._config.send_timeout,
            )
        except TimeoutError:
            raise PairingTimeout(
                f"sending to {self._peer}: no progress within {self._config.send_timeout:g} s"
            ) from None
        except (BleakError, OSError) as exc:
            if not self._client.is_connected:
                raise LinkClosedError(self._reason()) from None
            raise translate(exc, "sending a message") from exc

    # -- link-layer encryption (DESIGN.md method b) -------------------------------------------

    async def encrypt(
        self, delegate: Any = None, *, mitm: bool = False, timeout: float | None = None
    ) -> None:
        """Encrypt the link with bleak's ``pair()``; returns once ``encrypted`` is true.

        ``delegate`` and ``mitm`` reach the bumble backend (a bumble ``PairingDelegate``); OS
        stacks pair their own way (BlueZ through its agent; macOS only when a characteristic
        asks, so there this raises :class:`UnsupportedError`).
        """
        timeout = self._config.encrypt_timeout if timeout is None else timeout
        if self.encrypted:
            return
        self._check_open()
        async with self._encrypt_lock:
            if self.encrypted:
                return
            options: dict[str, Any] = {}
            if delegate is not None or mitm:
                options = {"delegate": delegate, "mitm": mitm}
            if self._before_pair is not None:
                self._before_pair()
            try:
                await asyncio.wait_for(self._client.pair(**options), timeout)
            except TimeoutError:
                raise PairingTimeout(
                    f"link-layer pairing: no answer within {timeout:g} s"
                ) from None
            except (BleakError, NotImplementedError, OSError) as exc:
                if not self._client.is_connected:
                    raise LinkClosedError(self._reason()) from None
                raise translate(exc, "link-layer pairing") from exc
            backend = _backend(self._client)
            if hasattr(backend, "pairing_outcome"):
                outcome = backend.pairing_outcome
                if outcome is None:
                    raise InsecureLinkError(
                        "the link was encrypted without a pairing on it, so whether it used "
                        "LE Secure Connections is unknown; 'clear' needs them"
                    )
                if not outcome[0]:
                    raise InsecureLinkError(
                        "the other device offered only legacy BLE pairing, which a listener "
                        "can break; 'clear' needs LE Secure Connections (use pin, qr or "
                        "compare instead)"
                    )
            self._paired = True

    # -- from bleak ------------------------------------------------------------------------

    def on_notification(self, _sender: BleakGATTCharacteristic, data: bytearray) -> None:
        """bleak's notification callback for the TX characteristic."""
        self.feed(bytes(data))

    def on_disconnected(self) -> None:
        """bleak's disconnected callback: the link ends once what arrived before is queued."""
        self._loop.call_soon(self._finish, self._reason())

    # -- internals -------------------------------------------------------------------------

    def _reason(self) -> str:
        if self._lost.done():
            return self._lost.result()
        reason = getattr(_backend(self._client), "disconnect_reason", None)
        return reason or "the connection ended"

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.disconnect(), self._config.close_timeout)

    async def _do_close(self) -> None:
        try:
            await super()._do_close()
        finally:
            after, self._after_use = self._after_use, None
            if after is not None:
                await after()

    async def _hang_up(self) -> None:
        if not self._client.is_connected:
            return
        if self._flush_char is not None:
            # An ATT read is answered after every earlier command was received (ATT is
            # sequential on one bearer, Core Vol 3 Part F §3.3.2): what was written has
            # arrived before the disconnection can cut it off.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._client.read_gatt_char(self._flush_char), self._config.close_timeout
                )
        await self._disconnect()


# -- the transport ------------------------------------------------------------------------------


class BleakTransport:
    """pairkit's guest on bleak (module docstring).  ``backend`` is ``''`` (the OS stack) or
    ``bumble:SPEC``; use ``async with`` or :meth:`open`."""

    def __init__(
        self,
        backend: str = "",
        *,
        config: BleakConfig | None = None,
        radio: Any = None,
        adapter: Any = None,
        rng: Rng = os.urandom,
        bluez_cleanup: BluezCleanup | Literal["auto"] | None = "auto",
    ) -> None:
        kind, _, spec = backend.partition(":")
        self._bluez_adapter = parse_bluez_adapter(backend)
        if backend and self._bluez_adapter is None and (kind != "bumble" or not spec):
            raise ConfigError(
                f"malformed bleak transport 'bleak:{backend}': expected bleak (the system's "
                "Bluetooth), bleak:hciN (a BlueZ adapter, e.g. bleak:hci1) or bleak:bumble:SPEC, "
                "e.g. bleak:bumble:usb:0 or bleak:bumble:virtual"
            )
        if self._bluez_adapter is not None:
            spec = ""
        if (radio is not None or adapter is not None) and not spec:
            raise ConfigError("a radio or an adapter only goes with bleak:bumble:SPEC")
        self._spec = spec
        self._config = config or BleakConfig()
        self._radio = radio
        self._adapter = adapter
        self._owns_adapter = adapter is None
        self._rng = rng
        self._opened = False
        self._closed = False
        self._devices: collections.OrderedDict[str, BLEDevice] = collections.OrderedDict()
        self._links: set[BleakLink] = set()
        #: BlueZ entries to remove after use (module docstring); "auto": on BlueZ only
        if bluez_cleanup == "auto":
            bluez_cleanup = BluezCleanup() if not spec and platform.system() == "Linux" else None
        self._bluez: BluezCleanup | None = bluez_cleanup
        self._leftovers = Leftovers()
        self._scan_queues: set[asyncio.Queue[Sighting | None]] = set()
        #: Advertisements heard while scanning: pairkit hellos, others, malformed, and
        #: sightings dropped because a scan() consumer fell behind.
        self.stats: dict[str, int] = {"hellos": 0, "ignored": 0, "garbage": 0, "dropped": 0}

    @property
    def name(self) -> str:
        """The transport's name, as given to ``--transport``."""
        if self._bluez_adapter is not None:
            return f"bleak:{self._bluez_adapter}"
        return f"bleak:bumble:{self._spec}" if self._spec else "bleak"

    @property
    def config(self) -> BleakConfig:
        return self._config

    @property
    def bluez_cleanup(self) -> BluezCleanup | None:
        """How BlueZ entries are removed after use (None: they are not; :mod:`.bleak_bluez`)."""
        return self._bluez

    @property
    def adapter(self) -> Any:
        """The :class:`~transports.bleak_bumble.BumbleAdapter` of ``bleak:bumble:SPEC``, or None."""
        return self._adapter

    @property
    def address(self) -> str | None:
        """This central's own address on bumble; None on the OS stack (bleak does not say)."""
        adapter = self._adapter
        return adapter.address if adapter is not None and adapter.is_open else None

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> BleakTransport:
        """Open the bumble radio for ``bleak:bumble:SPEC``; the OS stack opens on first use."""
        if self._closed:
            raise TransportError("this Bluetooth transport is closed")
        if self._opened:
            return self
        if self._spec:
            from .bleak_bumble import BumbleAdapter

            if self._adapter is None:
                try:
                    self._adapter = BumbleAdapter(
                        self._spec,
                        radio=self._radio,
                        address=self._config.address,
                        name=self._config.name,
                        att_mtu=self._config.att_mtu,
                        open_timeout=self._config.open_timeout,
                        close_timeout=self._config.close_timeout,
                        rng=self._rng,
                    )
                except ValueError as exc:
                    raise ConfigError(str(exc)) from exc
            try:
                await self._adapter.open()
            except (BleakError, OSError) as exc:
                raise translate(exc, f"opening {self.name}") from exc
        self._opened = True
        return self

    async def close(self) -> None:
        """End scans, close every link, close the bumble radio this transport opened."""
        if self._closed:
            return
        self._closed = True
        for queue in self._scan_queues:
            put_latest(queue, None)
        await asyncio.gather(*(link.close() for link in list(self._links)), return_exceptions=True)
        if self._adapter is not None and self._owns_adapter:
            with contextlib.suppress(Exception):
                await self._adapter.close()

    async def __aenter__(self) -> BleakTransport:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def listen(self) -> Any:
        """bleak is central only: a host needs ``bumble:...`` (DESIGN.md "BLE roles")."""
        raise UnsupportedError(
            "bleak can only join (it is central only): host with a bumble transport instead, "
            "e.g. -t bumble:usb:0 or -t bumble:hci-socket:0"
        )

    # -- Scanner ---------------------------------------------------------------------------

    def scan(self, timeout: float) -> AsyncIterator[Sighting]:
        """Yield pairkit hellos heard during ``timeout`` seconds (duplicates allowed)."""
        if timeout < 0:
            raise ConfigError("the scan timeout must not be negative")
        return self._scan(timeout)

    async def _scan(self, timeout: float) -> AsyncIterator[Sighting]:
        self._require_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue: asyncio.Queue[Sighting | None] = asyncio.Queue(maxsize=_SCAN_QUEUE)

        def on_advertisement(device: BLEDevice, data: AdvertisementData) -> None:
            self._remember(device)
            payload = data.service_data.get(SERVICE)
            if payload is None:
                self.stats["ignored"] += 1
                return
            if not payload:
                self.stats["garbage"] += 1  # pairkit's UUID with no hello (transports/ble/adv.py)
                return
            self.stats["hellos"] += 1
            rssi = None if data.rssi in (None, NO_RSSI) else data.rssi
            try:
                queue.put_nowait(Sighting(device.address, bytes(payload), rssi, data.local_name))
            except asyncio.QueueFull:
                self.stats["dropped"] += 1

        self._scan_queues.add(queue)
        try:
            try:
                # Built inside: on BlueZ the constructor itself may refuse (no such adapter).
                scanner = BleakScanner(
                    on_advertisement,
                    [SERVICE] if self._config.uuid_filter else None,
                    self._scanning_mode(),
                    **self._backend_kwargs("scanner"),
                )
                await scanner.start()
            except (BleakError, OSError) as exc:
                raise translate(exc, "starting to scan", os_stack=not self._spec) from exc
            try:
                async for sighting in sightings_until(queue, deadline):
                    yield sighting
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(scanner.stop(), self._config.close_timeout)
        finally:
            self._scan_queues.discard(queue)

    def _remember(self, device: BLEDevice) -> None:
        key = device.address.upper()
        self._devices[key] = device
        self._devices.move_to_end(key)
        while len(self._devices) > _KNOWN_DEVICES:
            self._devices.popitem(last=False)

    async def _find(self, address: str, deadline: float) -> BLEDevice | None:
        """Scan until ``address`` is heard (bleak connects to devices the OS has seen)."""
        loop = asyncio.get_running_loop()
        found: asyncio.Future[BLEDevice] = loop.create_future()

        def on_advertisement(device: BLEDevice, _data: AdvertisementData) -> None:
            self._remember(device)
            if device.address.upper() == address and not found.done():
                found.set_result(device)

        try:
            scanner = BleakScanner(
                on_advertisement, None, self._scanning_mode(), **self._backend_kwargs("scanner")
            )
            await scanner.start()
        except (BleakError, OSError) as exc:
            raise translate(exc, "starting to scan", os_stack=not self._spec) from exc
        try:
            return await asyncio.wait_for(found, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scanner.stop(), self._config.close_timeout)

    # -- Connector -------------------------------------------------------------------------

    async def connect(self, address: str, timeout: float) -> BleakLink:
        """Connect to a host and open the GATT link, subscribed before anything is written."""
        self._require_open()
        if not isinstance(address, str) or not _ADDRESS.match(address):
            raise ConfigError(f"{address!r} is not a Bluetooth address")
        if timeout <= 0:
            raise ConfigError("the connect timeout must be positive")
        key = address.upper()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        device = self._devices.get(key) or await self._find(key, deadline)
        if device is None:
            raise PairingTimeout(
                f"{address} was not heard within {timeout:g} s (out of range, or not advertising)"
            )
        created: list[BleakClient] = []
        box: dict[str, Any] = {}

        def make_client(*args: Any, **kwargs: Any) -> BleakClient:
            client = BleakClient(*args, **kwargs)
            created.append(client)
            return client

        def on_disconnected(_client: BleakClient) -> None:
            link = box.get("link")
            if link is not None:
                link.on_disconnected()
            else:
                box["lost"] = True

        what = f"connecting to {address}"
        try:
            async with asyncio.timeout(max(0.001, deadline - loop.time())):
                client = await establish_connection(
                    make_client,  # type: ignore[arg-type]
                    device,
                    address,
                    disconnected_callback=on_disconnected,
                    max_attempts=self._config.connect_attempts,
                    use_services_cache=False,  # BlueZ's cache outlives a host's new services
                    **self._backend_kwargs("client"),
                )
                box["device"] = device
                link = await self._open_link(client, device.address, box)
        except TimeoutError:
            await self._hang_up(created)
            raise PairingTimeout(
                f"{address} did not answer within {timeout:g} s (out of range, or not advertising)"
            ) from None
        except BaseException as exc:
            await self._hang_up(created)
            if isinstance(exc, Exception) and not isinstance(exc, PairingError):
                raise translate(exc, what, os_stack=not self._spec) from exc
            raise
        self._links.add(link)
        return link

    async def _open_link(self, client: BleakClient, peer: str, box: dict[str, Any]) -> BleakLink:
        service = client.services.get_service(SERVICE)
        if service is None:
            raise UnsupportedError(f"{peer} does not offer pairkit's GATT service")
        rx, tx = service.get_characteristic(RX), service.get_characteristic(TX)
        if rx is None or tx is None:
            raise UnsupportedError(f"{peer} offers an incomplete pairkit GATT service")
        link = BleakLink(
            client, rx=rx, flush=service.get_characteristic(PSM), peer=peer, config=self._config,
            **self._bluez_hooks(client, box.get("device"), peer),
        )
        box["link"] = link
        if box.get("lost"):
            link.on_disconnected()
        # Subscribe before writing: on some platforms data sent before it is lost.
        await client.start_notify(tx, link.on_notification)
        return link

    async def _hang_up(self, clients: list[BleakClient]) -> None:
        for client in clients:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.disconnect(), self._config.close_timeout)

    def _bluez_hooks(self, client: BleakClient, device: BLEDevice | None,
                     peer: str) -> dict[str, Any]:
        """The link's hooks that keep :class:`~transports.bleak_bluez.Leftovers` (BlueZ)."""
        cleanup = self._bluez
        if cleanup is None:
            return {}
        leftovers = self._leftovers
        leftovers.opened(peer)

        def before_pair() -> None:
            leftovers.pairing(peer, cleanup.read(device.details if device is not None else None))

        async def after_use() -> None:
            if not leftovers.closed(peer):
                return
            # The device object is gone from BlueZ: a later connect must hear it again.
            self._devices.pop(peer.upper(), None)
            try:
                await asyncio.wait_for(cleanup.remove(client), self._config.close_timeout)
            except (BleakError, OSError, TimeoutError, NotImplementedError) as exc:
                # Best effort: the entry stays, as it did before (bluetoothctl remove clears it).
                logger.info("could not remove %s from BlueZ: %s", peer, type(exc).__name__)

        return {"before_pair": before_pair, "after_use": after_use}

    # -- helpers ---------------------------------------------------------------------------

    def _backend_kwargs(self, role: str) -> dict[str, Any]:
        """What bleak's scanner (``role`` "scanner") or client needs for this transport: the
        bumble backend and its adapter, or for the OS stack the BlueZ adapter to use and, for
        a passive scan on BlueZ, the ``or_patterns`` it requires (pairkit's service data)."""
        if not self._spec:
            bluez: dict[str, Any] = {}
            if self._bluez_adapter is not None:
                bluez["adapter"] = self._bluez_adapter
            if role == "scanner" and self._scanning_mode() == "passive":
                bluez["or_patterns"] = hello_or_patterns()
            return {"bluez": bluez} if bluez else {}
        from .bleak_bumble import BumbleClient, BumbleScanner

        backend = BumbleScanner if role == "scanner" else BumbleClient
        return {"backend": backend, "bumble": {"adapter": self._adapter}}

    def _scanning_mode(self) -> Literal["active", "passive"]:
        """Passive where the stack can (BlueZ, with ``or_patterns``; bumble), active where it
        cannot (CoreBluetooth and WinRT refuse passive scanning from an application)."""
        if self._config.scanning_mode == "passive" and not self._spec:
            if platform.system() != "Linux":
                return "active"
        return self._config.scanning_mode

    def _require_open(self) -> None:
        if self._closed:
            raise LinkClosedError("the Bluetooth transport is closed")
        if not self._opened:
            raise TransportError("the Bluetooth transport is not open (use 'async with' or open())")

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._opened else "new")
        return f"<BleakTransport {self.name} {state}>"


async def open(args: str, **kwargs: Any) -> BleakTransport:
    """Entry point for ``bleak`` and ``bleak:bumble:SPEC`` transport names; an open transport.

    Keywords: ``bluez_cleanup`` (a :class:`~transports.bleak_bluez.BluezCleanup`, None: never
    remove BlueZ entries; default: on BlueZ), ``config`` (a :class:`BleakConfig`), ``radio`` (a
    :class:`~transports.ble.virtual.VirtualRadio`, with ``bleak:bumble:virtual``), ``adapter``
    (a :class:`~transports.bleak_bumble.BumbleAdapter` to share; the transport then does not
    close it), ``rng``, or any :class:`BleakConfig` field.
    """
    config = kwargs.pop("config", None)
    radio = kwargs.pop("radio", None)
    adapter = kwargs.pop("adapter", None)
    rng = kwargs.pop("rng", os.urandom)
    bluez_cleanup = kwargs.pop("bluez_cleanup", "auto")
    if kwargs:
        try:
            config = dataclasses.replace(config or BleakConfig(), **kwargs)
        except TypeError as exc:
            raise ConfigError(f"unknown bleak transport option: {exc}") from exc
    transport = BleakTransport(args, config=config, radio=radio, adapter=adapter, rng=rng,
                               bluez_cleanup=bluez_cleanup)
    return await transport.open()
