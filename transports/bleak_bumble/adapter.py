"""One bumble device shared by bleak scanners and clients: the "adapter" of this backend.

A :class:`BumbleAdapter` is what ``hci0`` is to BlueZ: one controller (a real one through a bumble
HCI transport such as ``usb:0`` or ``hci-socket:0``, a ``pairkit radio`` port through
``tcp-client:HOST:PORT``, or an in-process virtual controller on a
:class:`~transports.ble.virtual.VirtualRadio`) with one bumble ``Device`` on it, in the central
role.  Every :class:`~transports.bleak_bumble.BumbleScanner` and
:class:`~transports.bleak_bumble.BumbleClient` given the same adapter shares it:

* **Opening** happens once, however many callers ask at the same time (the opening task is
  cached: two clients creating the device at once was a bug of an earlier prototype).
* **Scanning** is reference-counted: the controller scans while at least one scanner listens,
  and every advertisement goes to every listener.
* **Connecting** is serialised by a lock per adapter (a controller has one LE Create
  Connection pending at a time, Core 5.4 Vol 4 Part E §7.8.12; bumble asserts otherwise).  A
  connect that is cancelled (a caller's timeout) sends LE Create Connection Cancel (§7.8.13) and
  hangs up on a connection that completes anyway, so the next connect finds a clean controller.
* **Pairing** goes through bumble's SMP with a :class:`~bumble.pairing.PairingConfig` chosen per
  connection (LE Secure Connections, Just Works unless a client gives a delegate).

Without an explicit adapter, scanners and clients use :func:`shared_adapter`: one per bumble
transport name and event loop (``virtual`` by default, on the loop's default radio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from bumble import core, hci
from bumble.device import Advertisement, Connection, Device
from bumble.host import Host
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, Transport

from ..ble.adv import random_static_address
from ..ble.trace import RedactingSnooper, open_trace
from ..ble.virtual import VirtualController, VirtualRadio, default_radio
from ..tracing import claim_trace_path
from .errors import open_error, to_bleak_error

__all__ = [
    "BumbleAdapter",
    "BumbleArgs",
    "close_shared_adapters",
    "resolve_adapter",
    "shared_adapter",
]

logger = logging.getLogger(__name__)

Rng = Callable[[int], bytes]
AdvertisementListener = Callable[[Advertisement], None]


class BumbleArgs(TypedDict, total=False):
    """Backend arguments, passed to bleak as ``bumble={...}`` (like bleak's ``bluez={...}``).

    ``adapter``: the :class:`BumbleAdapter` to use.  Without one, ``transport`` (a bumble HCI
    transport name, default ``virtual``) and ``radio`` (for ``virtual``) pick a shared adapter.
    ``pairing_delegate``, ``mitm`` and ``bonding`` shape a client's SMP pairing (Just Works,
    no MITM, bonding by default, as an OS stack's ``pair()`` bonds).
    """

    adapter: BumbleAdapter
    transport: str
    radio: VirtualRadio
    pairing_delegate: PairingDelegate
    mitm: bool
    bonding: bool


def smp_config(
    delegate: PairingDelegate | None = None, *, mitm: bool = False, bonding: bool = True
) -> PairingConfig:
    """LE Secure Connections (Core 5.4 Vol 3 Part H §2.3.5.6) with a random identity address."""
    return PairingConfig(
        sc=True,
        mitm=mitm,
        bonding=bonding,
        delegate=delegate or PairingDelegate(),
        identity_address_type=PairingConfig.AddressType.RANDOM,
    )


@dataclass(frozen=True)
class DeviceDetails:
    """``BLEDevice.details`` for devices this backend found: where, and through which adapter."""

    adapter: BumbleAdapter
    address: hci.Address


class BumbleAdapter:
    """One bumble device on one controller, shared by bleak scanners and clients (module doc)."""

    def __init__(
        self,
        transport: str = "virtual",
        *,
        radio: VirtualRadio | None = None,
        address: str | None = None,
        name: str = "bleak-bumble",
        att_mtu: int = 517,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        rng: Rng = os.urandom,
    ) -> None:
        if not transport:
            raise ValueError("an empty bumble transport name")
        if radio is not None and transport != "virtual":
            raise ValueError("a VirtualRadio only goes with the 'virtual' transport")
        if not 23 <= att_mtu <= 517:
            raise ValueError("att_mtu must be 23 to 517")
        if address is not None and not hci.Address(address).is_static:
            raise ValueError(f"{address} is not a random static address")
        self.transport = transport
        self.att_mtu = att_mtu
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self._radio = radio
        self._address = address
        self._name = name
        self._rng = rng
        self._opening: asyncio.Task[Device] | None = None
        self._device: Device | None = None
        self._hci: Transport | None = None
        self._trace: RedactingSnooper | None = None
        self._controller: VirtualController | None = None
        self._closed = False
        self._scan_listeners: dict[AdvertisementListener, bool] = {}
        self._scan_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._connecting: hci.Address | None = None
        self._pairing_configs: dict[int, PairingConfig] = {}
        #: connection handle -> the service UUIDs a client discovered on that peer
        self._services: dict[int, frozenset[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle ----------------------------------------------------------------------

    @property
    def device(self) -> Device:
        """The bumble device (open the adapter first)."""
        if self._device is None:
            raise BleakError("the bumble adapter is not open")
        return self._device

    @property
    def address(self) -> str:
        """This adapter's own random static address."""
        return str(self.device.random_address)

    @property
    def radio(self) -> VirtualRadio | None:
        return self._radio

    @property
    def controller(self) -> VirtualController | None:
        """The virtual controller, for ``virtual`` adapters (tests unplug it)."""
        return self._controller

    @property
    def is_open(self) -> bool:
        return self._device is not None and not self._closed

    async def open(self) -> BumbleAdapter:
        """Open the HCI transport and power the device on; concurrent callers share one open.

        Failures are bleak's: :class:`~bleak.exc.BleakBluetoothNotAvailableError` when there
        is no controller, no permission or the controller is busy (the text says which and
        what to do), :class:`~bleak.exc.BleakError` otherwise.
        """
        if self._closed:
            raise BleakError("the bumble adapter is closed")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        try:
            await asyncio.shield(self._opening)
        except BaseException:
            if self._opening.done():
                self._opening = None  # a failed open may be tried again
            raise
        return self

    async def _open(self) -> Device:
        address = self._address or random_static_address(self._rng)
        trace_path = claim_trace_path()  # --trace (transports.tracing); ConfigError as it is
        if trace_path is not None:
            self._trace = open_trace(trace_path)
        try:
            if self.transport == "virtual":
                radio = self._radio or default_radio()
                self._radio = radio
                controller = radio.create_controller(self._name)
                self._controller = controller
                host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
            else:
                self._hci = await asyncio.wait_for(
                    open_transport(_bumble_spec(self.transport)), self.open_timeout
                )
                host = Host(controller_source=self._hci.source, controller_sink=self._hci.sink)
            host.snooper = self._trace
            device = Device(name=self._name, address=hci.Address(address), host=host)
            device.pairing_config_factory = self._pairing_config_for
            device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
            device.on(device.EVENT_CONNECTION, self._on_connection)
            await asyncio.wait_for(device.power_on(), self.open_timeout)
        except BaseException as exc:
            await self._release()
            if isinstance(exc, Exception):
                raise open_error(exc, self.transport) from exc
            raise
        self._device = device
        logger.debug("bumble adapter %s up on %s", address, self.transport)
        return device

    async def close(self) -> None:
        """Disconnect, power off, close the HCI transport; idempotent."""
        if self._closed:
            return
        self._closed = True
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
        device = self._device
        if device is not None and device.powered_on:
            disconnects = [
                asyncio.wait_for(c.disconnect(), self.close_timeout)
                for c in list(device.connections.values())
            ]
            await asyncio.gather(*disconnects, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.power_off(), self.close_timeout)
        await self._release()
        _forget(self)

    async def _release(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._controller is not None and self._radio is not None:
            self._radio.unplug(self._controller)
        if self._hci is not None:
            hci_transport, self._hci = self._hci, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hci_transport.close(), self.close_timeout)
        if self._trace is not None:
            trace, self._trace = self._trace, None
            trace.close()

    async def __aenter__(self) -> BumbleAdapter:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scanning ------------------------------------------------------------------------

    async def add_scan_listener(self, listener: AdvertisementListener, *, active: bool) -> None:
        """Deliver every advertisement to ``listener``; the controller scans while any listens.

        ``active`` asks for scan requests (Core 5.4 Vol 6 Part B §4.4.3.2) so that scan
        responses arrive too; the first listener decides the mode of a running scan.
        """
        device = self._require()
        async with self._scan_lock:
            if not self._scan_listeners and not device.is_scanning:
                try:
                    await asyncio.wait_for(
                        device.start_scanning(active=active, filter_duplicates=False),
                        self.open_timeout,
                    )
                except Exception as exc:
                    raise to_bleak_error(exc, "starting to scan") from exc
            self._scan_listeners[listener] = active

    async def remove_scan_listener(self, listener: AdvertisementListener) -> None:
        """Stop delivering to ``listener``; the scan stops with the last one."""
        device = self._device
        async with self._scan_lock:
            if self._scan_listeners.pop(listener, None) is None:
                return
            if self._scan_listeners or device is None or self._closed or not device.is_scanning:
                return
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.stop_scanning(), self.close_timeout)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for listener in list(self._scan_listeners):
            listener(advertisement)

    # -- connecting ----------------------------------------------------------------------

    async def connect(self, peer: hci.Address) -> Connection:
        """An LE connection to ``peer`` as central; one connect at a time per adapter.

        No deadline of its own: the caller bounds it (``asyncio.timeout``).  When the caller
        gives up, the pending connection is cancelled in the controller and a connection that
        completes anyway is dropped.
        """
        device = self._require()
        async with self._connect_lock:
            before = set(device.connections)
            self._connecting = peer
            try:
                return await device.connect(
                    peer,
                    transport=core.PhysicalTransport.LE,
                    own_address_type=hci.OwnAddressType.RANDOM,
                    timeout=None,
                )
            except asyncio.CancelledError:
                self._connecting = None
                await self._abandon_connect(device, before)
                raise
            except Exception as exc:
                raise to_bleak_error(exc, f"connecting to {peer}") from exc
            finally:
                self._connecting = None

    async def _abandon_connect(self, device: Device, before: set[int]) -> None:
        # Core 5.4 Vol 4 Part E §7.8.13: cancel the pending LE Create Connection.  With no
        # connection pending (it just completed) the controller says Command Disallowed.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(
                device.send_sync_command(hci.HCI_LE_Create_Connection_Cancel_Command()),
                self.close_timeout,
            )
        for handle, connection in list(device.connections.items()):
            if handle not in before and connection.role == hci.Role.CENTRAL:
                self._spawn(self._drop(connection))

    def _on_connection(self, connection: Connection) -> None:
        handle = connection.handle

        def forget(_reason: int) -> None:
            self._pairing_configs.pop(handle, None)
            self._services.pop(handle, None)

        connection.on(connection.EVENT_DISCONNECTION, forget)
        if connection.role == hci.Role.CENTRAL and self._connecting is None:
            # A connect that was given up on completed after all: nobody wants it.
            self._spawn(self._drop(connection))

    def note_services(self, connection: Connection, uuids: set[str]) -> None:
        """Remember the services a client discovered on ``connection`` (for
        :meth:`connected_devices`), until it disconnects."""
        self._services[connection.handle] = frozenset(uuids)

    def connected_devices(self, service_uuids: frozenset[str]) -> list[BLEDevice]:
        """The peers this adapter is connected to as central that serve one of
        ``service_uuids`` (as a client discovered them): bleak 3.1's
        ``BleakAdapter.get_connected_devices``."""
        device = self._device
        if device is None:
            return []
        found = []
        for handle, connection in list(device.connections.items()):
            if connection.role != hci.Role.CENTRAL:
                continue
            if self._services.get(handle, frozenset()) & service_uuids:
                address = connection.peer_address
                found.append(BLEDevice(str(address), None, DeviceDetails(self, address)))
        return found

    async def _drop(self, connection: Connection) -> None:
        device = self._device
        if device is not None and connection.handle in device.connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.disconnect(), self.close_timeout)

    async def request_data_length(self, connection: Connection) -> None:
        """Ask for 251-byte ACL payloads (LE Data Length Extension, Core Vol 6 Part B §4.5.10).

        4 to 6 times the throughput of 27-byte packets; a controller that refuses is no reason
        to fail.  Virtual controllers already carry 251 bytes.
        """
        if self._controller is not None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.set_data_length(251, 2120), self.close_timeout)

    # -- pairing -------------------------------------------------------------------------

    def set_pairing_config(self, connection: Connection, config: PairingConfig) -> None:
        """The SMP configuration for the next pairing on ``connection``."""
        self._pairing_configs[connection.handle] = config

    def _pairing_config_for(self, connection: Connection) -> PairingConfig:
        return self._pairing_configs.get(connection.handle) or smp_config()

    # -- helpers -------------------------------------------------------------------------

    def _require(self) -> Device:
        if self._closed:
            raise BleakError("the bumble adapter is closed")
        if self._device is None:
            raise BleakError("the bumble adapter is not open")
        return self._device

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._device else "new")
        return f"<BumbleAdapter {self.transport} {state}>"


def _bumble_spec(spec: str) -> str:
    """bumble's name for a serial transport given as ``serial:PATH:SPEED`` (pairkit's way)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "serial" and rest and "," not in rest:
        path, sep, speed = rest.rpartition(":")
        if sep and path and speed.isdigit():
            rest = f"{path},{speed}"
    return f"{scheme}:{rest}" if rest else scheme


# -- shared adapters -----------------------------------------------------------------------

_shared: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Task[BumbleAdapter]]
] = weakref.WeakKeyDictionary()


async def shared_adapter(
    transport: str = "virtual", radio: VirtualRadio | None = None
) -> BumbleAdapter:
    """The running loop's adapter for ``transport`` (and ``radio``), opened once.

    Concurrent first callers share the same opening (the creation task is cached); a failed
    open is forgotten so a later call tries again.
    """
    loop = asyncio.get_running_loop()
    if transport == "virtual" and radio is None:
        radio = default_radio()
    adapters = _shared.setdefault(loop, {})
    key = (transport, id(radio) if radio is not None else 0)
    task = adapters.get(key)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        adapter = BumbleAdapter(transport, radio=radio)
        task = adapters[key] = loop.create_task(adapter.open())
    try:
        return await asyncio.shield(task)
    except BaseException:
        if task.done() and adapters.get(key) is task:
            del adapters[key]
        raise


def _forget(adapter: BumbleAdapter) -> None:
    for adapters in list(_shared.values()):
        for key, task in list(adapters.items()):
            if task.done() and not task.cancelled() and task.exception() is None:
                if task.result() is adapter:
                    del adapters[key]


async def close_shared_adapters() -> None:
    """Close every shared adapter of the running loop (tests call this in teardown)."""
    adapters = _shared.pop(asyncio.get_running_loop(), {})
    for task in adapters.values():
        with contextlib.suppress(BaseException):
            adapter = await task
            await adapter.close()


async def resolve_adapter(args: Mapping[str, Any] | None, default: Any = None) -> BumbleAdapter:
    """The adapter a scanner or client uses: ``args["adapter"]``, else ``default`` (an adapter
    from a ``BLEDevice``'s details), else the shared one for ``args["transport"]``."""
    args = args or {}
    adapter = args.get("adapter") or default
    if adapter is not None:
        if not isinstance(adapter, BumbleAdapter):
            raise BleakError(f"bumble={{'adapter': ...}} must be a BumbleAdapter, not {adapter!r}")
        return await adapter.open()
    return await shared_adapter(args.get("transport", "virtual"), args.get("radio"))
