"""bleak's client interface over a bumble device (bleak 3.x ``BaseBleakClient``).

``connect`` opens an LE connection through the client's :class:`BumbleAdapter` (one connect at a
time per adapter; a connect cut short by its timeout is cancelled in the controller), asks for
longer data packets on real controllers, exchanges the ATT MTU (Core 5.4 Vol 3 Part F §3.4.2;
517 unless the adapter says otherwise), pairs when asked, and discovers every primary service,
characteristic and descriptor (Vol 3 Part G §4.4.1, §4.6.1, §4.7.1) into ``self.services``.

Reads and writes are ATT requests and commands on bumble's GATT client.  A write without
response (ATT Write Command, §3.4.5.3) longer than ``max_write_without_response_size``
(ATT_MTU - 3, at most 512: Vol 3 Part F §3.2.9) is refused rather than silently dropped, and
waits while the host holds more than two controller buffers' worth of ACL packets (HCI flow
control), so a fast writer has bounded memory.  Notifications and indications go to bleak's
callback as ``bytearray`` in order of arrival.  An ATT Error Response raises
:class:`~bleak.exc.BleakGATTProtocolError` with its code.

Pairing is bumble's SMP, LE Secure Connections (Vol 3 Part H §2.3): Just Works unless the
client's ``bumble`` arguments (or ``pair(...)``) give a :class:`~bumble.pairing.PairingDelegate`.
A peripheral's Security Request (§3.6.7) is answered by pairing, as BlueZ does with its agent.
``unpair`` forgets the keys and disconnects.

The disconnected callback runs, from the event loop, once per connection whichever side ended
it (as bleak's BlueZ backend does).  Every wait on the peer ends when the connection does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble import gatt, hci
from bumble.device import Connection
from bumble.gatt_client import CharacteristicProxy, ServiceProxy
from bumble.pairing import PairingDelegate

from ..ble.guard import abandon, consume, describe_reason
from .adapter import BumbleAdapter, BumbleArgs, DeviceDetails, resolve_adapter, smp_config
from .errors import to_bleak_error
from .scanner import uuid_str

__all__ = ["BumbleClient"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

GATT_MAX_VALUE = 512  #: Core 5.4 Vol 3 Part F §3.2.9
_CCCD = gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR
_DISCONNECT_TIMEOUT = 10.0  # as bleak's BlueZ backend waits for a disconnection


def _bumble_uuid_str(value: Any) -> str:
    return uuid_str(value.to_bytes())


def _properties(flags: int) -> list[CharacteristicPropertyName]:
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if flags & bit and bit < 0x100]


class BumbleClient(BaseBleakClient):
    """bleak's client on a :class:`BumbleAdapter` (module docstring).

    ``address_or_ble_device`` is a ``BLEDevice`` from :class:`BumbleScanner` (its adapter is
    used unless ``bumble`` names another) or an address text (``AA:BB:CC:DD:EE:FF``, random;
    ``.../P`` for a public address), connected to directly with no scan.
    """

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        services: set[str] | None = None,
        bumble: BumbleArgs | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._args = dict(bumble or {})
        self._service_filter = set(services) if services else None
        self._peer: hci.Address | None = None
        self._found_by: BumbleAdapter | None = None
        self._device_name: str | None = None
        if isinstance(address_or_ble_device, BLEDevice):
            self._device_name = address_or_ble_device.name
            details = address_or_ble_device.details
            if isinstance(details, DeviceDetails):
                self._peer = details.address
                self._found_by = details.adapter
        self._adapter: BumbleAdapter | None = None
        self._connection: Connection | None = None
        self._lost: asyncio.Future[str] | None = None
        self._notify: dict[int, Callable[[bytes], None]] = {}
        self._pairing: asyncio.Task[None] | None = None
        self._disconnecting: asyncio.Future[None] | None = None
        self._paired = False
        #: (LE Secure Connections, MITM-protected) once an SMP pairing completed on the link
        self.pairing_outcome: tuple[bool, bool] | None = None
        #: Why the last connection ended (plain words), once it has.
        self.disconnect_reason: str | None = None

    # -- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The advertised name when the scanner heard one, else the address with dashes."""
        return self._device_name or self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        """The ATT MTU of the connection (23 before the exchange)."""
        connection = self._connection
        return connection.att_mtu if connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and self._lost is not None and not self._lost.done()

    @property
    def is_encrypted(self) -> bool:
        """Whether the link layer encrypts this connection (bumble knows; bleak has no API)."""
        connection = self._connection
        return bool(connection is not None and self.is_connected and connection.is_encrypted)

    def _on_pairing(self, keys: Any) -> None:
        ltk = getattr(keys, "ltk", None) or getattr(keys, "ltk_central", None)
        connection = self._connection
        sc = bool(connection is not None and connection.sc)
        #: (LE Secure Connections used, MITM-protected) of the SMP pairing on this connection
        self.pairing_outcome = (sc, bool(getattr(ltk, "authenticated", False)))

    @property
    def adapter(self) -> BumbleAdapter | None:
        return self._adapter

    @property
    def connection(self) -> Connection | None:
        """The bumble connection, while connected (for diagnostics and tests)."""
        return self._connection if self.is_connected else None

    def _max_write_without_response(self) -> int:
        return max(20, min(self.mtu_size - 3, GATT_MAX_VALUE))

    # -- connecting ----------------------------------------------------------------------

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange the MTU, pair if ``pair``, discover services (module docstring).

        ``timeout`` (keyword, default the constructor's) bounds all of it: past it the
        attempt is cancelled in the controller and :class:`TimeoutError` is raised.
        """
        if self.is_connected:
            return
        timeout = float(kwargs.get("timeout", self._timeout))
        peer = self._peer_address()
        try:
            async with asyncio.timeout(timeout):
                adapter = await resolve_adapter(self._args, self._found_by)
                self._adapter = adapter
                connection = await adapter.connect(peer)
                self._attach(connection)
                await adapter.request_data_length(connection)
                if adapter.att_mtu > 23:  # 23 is ATT's default: nothing to exchange
                    await self._call(
                        connection.gatt_client.request_mtu(adapter.att_mtu), "MTU"
                    )
                if pair:
                    await self.pair()
                self.services = await self._discover(connection)
        except TimeoutError:
            await self._hang_up()
            raise TimeoutError(
                f"connecting to {peer} took more than {timeout:g} s "
                "(out of range, or not advertising)"
            ) from None
        except BaseException:
            await self._hang_up()
            raise

    def _peer_address(self) -> hci.Address:
        if self._peer is None:
            try:
                self._peer = hci.Address(self.address)
            except ValueError:
                raise BleakError(f"{self.address!r} is not a Bluetooth address") from None
        return self._peer

    def _attach(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        self._connection = connection
        self._lost = lost
        self._notify.clear()
        self._paired = False
        self.pairing_outcome = None
        connection.on(connection.EVENT_PAIRING, self._on_pairing)
        self.disconnect_reason = None

        def on_disconnection(reason: int) -> None:
            if lost.done():
                return
            text = describe_reason(reason)
            lost.set_result(text)
            self.disconnect_reason = text
            self.services = None
            callback = self._disconnected_callback
            if callback is not None:
                # bleak: "scheduled in the event loop"; after the ATT PDUs received before.
                loop.call_soon(callback)

        def on_security_request(_auth_req: int) -> None:
            # SMP Security Request (Core Vol 3 Part H §3.6.7): pair, as an OS stack would.
            if self._pairing is None or self._pairing.done():
                self._pairing = loop.create_task(self._pair(connection))
                self._pairing.add_done_callback(consume)

        connection.on(connection.EVENT_DISCONNECTION, on_disconnection)
        connection.on(connection.EVENT_SECURITY_REQUEST, on_security_request)
        if connection.handle not in connection.device.connections:
            on_disconnection(hci.HCI_ErrorCode.CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR)

    async def _hang_up(self) -> None:
        connection = self._connection
        if connection is not None and self.is_connected:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(connection.disconnect(), _DISCONNECT_TIMEOUT)

    async def disconnect(self) -> None:
        """Disconnect and wait for the controller to confirm (at most 10 s)."""
        connection, lost = self._connection, self._lost
        if connection is None or lost is None or lost.done():
            return
        if self._disconnecting is None or self._disconnecting.done():
            # One HCI Disconnect however many callers: a second one would be refused.
            self._disconnecting = asyncio.ensure_future(
                asyncio.wait_for(connection.disconnect(), _DISCONNECT_TIMEOUT)
            )
            self._disconnecting.add_done_callback(consume)
        try:
            await asyncio.shield(self._disconnecting)
        except Exception as exc:
            if not lost.done():
                raise to_bleak_error(exc, "disconnecting") from exc

    async def _discover(self, connection: Connection) -> BleakGATTServiceCollection:
        client = connection.gatt_client
        services: list[ServiceProxy] = await self._call(
            client.discover_services(), "service discovery"
        )
        if self._adapter is not None:
            # What BleakAdapter.get_connected_devices filters on, as BlueZ knows it.
            self._adapter.note_services(connection, {_bumble_uuid_str(s.uuid) for s in services})
        if self._service_filter:
            # Filtered here rather than with Find By Type Value: that compares raw attribute
            # values, and a 16-bit service declared in 2 bytes never equals its 16-byte form.
            services = [s for s in services if _bumble_uuid_str(s.uuid) in self._service_filter]
        collection = BleakGATTServiceCollection()
        for service in services:
            bleak_service = BleakGATTService(
                service, service.handle, _bumble_uuid_str(service.uuid)
            )
            collection.add_service(bleak_service)
            characteristics = await self._call(
                client.discover_characteristics([], service), "characteristic discovery"
            )
            for characteristic in characteristics:
                await self._call(
                    client.discover_descriptors(characteristic), "descriptor discovery"
                )
                characteristic.descriptors_discovered = True  # spares subscribe() a round trip
                bleak_characteristic = BleakGATTCharacteristic(
                    characteristic,
                    characteristic.handle,
                    _bumble_uuid_str(characteristic.uuid),
                    _properties(int(characteristic.properties)),
                    self._max_write_without_response,
                    bleak_service,
                )
                collection.add_characteristic(bleak_characteristic)
                for descriptor in characteristic.descriptors:
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            descriptor,
                            descriptor.handle,
                            _bumble_uuid_str(descriptor.type),
                            bleak_characteristic,
                        )
                    )
        return collection

    # -- pairing -------------------------------------------------------------------------

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pair with LE Secure Connections (bumble SMP); returns once the link is encrypted.

        Keywords (this backend's): ``delegate`` (a :class:`~bumble.pairing.PairingDelegate`,
        Just Works by default), ``mitm`` and ``bonding`` (defaults from the ``bumble``
        arguments: no MITM, bonding).  Raises :class:`BleakError` when SMP fails.
        """
        connection = self._require()
        delegate: PairingDelegate | None = kwargs.get(
            "delegate", self._args.get("pairing_delegate")
        )
        config = smp_config(
            delegate,
            mitm=bool(kwargs.get("mitm", self._args.get("mitm", False))),
            bonding=bool(kwargs.get("bonding", self._args.get("bonding", True))),
        )
        assert self._adapter is not None  # set by connect
        self._adapter.set_pairing_config(connection, config)
        if self._pairing is not None and not self._pairing.done():
            await self._call(asyncio.shield(self._pairing), "pairing")
            if connection.is_encrypted:
                return
        self._pairing = asyncio.ensure_future(self._pair(connection))
        await self._call(asyncio.shield(self._pairing), "pairing")

    async def _pair(self, connection: Connection) -> None:
        await self._call(connection.pair(), "pairing")
        if not connection.is_encrypted:
            changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_change() -> None:
                if connection.is_encrypted and not changed.done():
                    changed.set_result(None)

            def on_failure(error_code: int) -> None:
                if not changed.done():
                    changed.set_exception(hci.HCI_Error(error_code))

            connection.on(connection.EVENT_CONNECTION_ENCRYPTION_CHANGE, on_change)
            connection.on(connection.EVENT_CONNECTION_ENCRYPTION_FAILURE, on_failure)
            try:
                on_change()
                await self._call(changed, "encryption")
            finally:
                connection.remove_listener(connection.EVENT_CONNECTION_ENCRYPTION_CHANGE, on_change)
                connection.remove_listener(
                    connection.EVENT_CONNECTION_ENCRYPTION_FAILURE, on_failure
                )
        self._paired = True

    async def unpair(self) -> None:
        """Forget the keys of this peer and disconnect (as bleak documents for ``unpair``)."""
        adapter = self._adapter or await resolve_adapter(self._args, self._found_by)
        keystore = adapter.device.keystore
        names = {str(self._peer_address())}
        if self._connection is not None:
            names.add(str(self._connection.peer_address))
        if keystore is not None:
            for name in names:
                await keystore.delete(name)
        await self.disconnect()

    # -- GATT ----------------------------------------------------------------------------

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(characteristic.obj, characteristic.handle, use_cached)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(descriptor.obj, descriptor.handle, use_cached)

    async def _read(self, proxy: Any, handle: int, use_cached: bool) -> bytearray:
        connection = self._require()
        client = connection.gatt_client
        if use_cached and handle in client.cached_values:
            return bytearray(client.cached_values[handle][1])
        value = await self._call(client.read_value(proxy), f"reading handle 0x{handle:04X}")
        return bytearray(value)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        connection = self._require()
        value = bytes(data)
        what = f"writing handle 0x{characteristic.handle:04X}"
        if response:
            await self._call(
                connection.gatt_client.write_value(characteristic.obj, value, with_response=True),
                what,
            )
            return
        limit = self._max_write_without_response()
        if len(value) > limit:
            raise BleakError(
                f"{what}: {len(value)} bytes exceed max_write_without_response_size ({limit})"
            )
        await self._room_to_send(connection)
        await self._call(
            connection.gatt_client.write_value(characteristic.obj, value, with_response=False),
            what,
        )

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        connection = self._require()
        await self._call(
            connection.gatt_client.write_value(descriptor.obj, bytes(data), with_response=True),
            f"writing descriptor 0x{descriptor.handle:04X}",
        )

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Enable notifications (indications when the characteristic only indicates)."""
        connection = self._require()
        proxy: CharacteristicProxy[bytes] = characteristic.obj
        if characteristic.handle in self._notify:
            raise BleakError(f"notifications on {characteristic.uuid} are already on")
        if proxy.get_descriptor(_CCCD) is None:
            raise BleakError(
                f"{characteristic.uuid} has no Client Characteristic Configuration descriptor: "
                "it cannot notify"
            )

        def on_value(value: bytes) -> None:
            # bumble calls this from its packet handling: a failing callback must not break it.
            try:
                callback(bytearray(value))
            except Exception:
                logger.exception("the notification callback of %s failed", characteristic.uuid)

        self._notify[characteristic.handle] = on_value
        try:
            await self._call(
                connection.gatt_client.subscribe(proxy, on_value, prefer_notify=True),
                f"enabling notifications on {characteristic.uuid}",
            )
        except BaseException:
            self._notify.pop(characteristic.handle, None)
            raise

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        connection = self._require()
        on_value = self._notify.pop(characteristic.handle, None)
        if on_value is None:
            return
        await self._call(
            connection.gatt_client.unsubscribe(characteristic.obj, on_value),
            f"disabling notifications on {characteristic.uuid}",
        )

    # -- helpers -------------------------------------------------------------------------

    def _require(self) -> Connection:
        if not self.is_connected or self._connection is None:
            raise BleakError("Not connected")
        return self._connection

    async def _room_to_send(self, connection: Connection) -> None:
        """Wait while the host holds more than two controller buffers of ACL packets."""
        queue = connection.data_packet_queue
        if queue is None:
            return
        loop = asyncio.get_running_loop()
        while queue.pending > 2 * queue.max_in_flight:
            flow: asyncio.Future[None] = loop.create_future()

            def on_flow(flow: asyncio.Future[None] = flow) -> None:
                if not flow.done():
                    flow.set_result(None)

            queue.on("flow", on_flow)
            try:
                await self._call(flow, "sending")
            finally:
                queue.remove_listener("flow", on_flow)

    async def _call(self, awaitable: Awaitable[_T], what: str) -> _T:
        """Await a bumble operation until it ends or the connection does.

        bumble cancels a pending ATT request when the connection drops; that, like the
        connection ending first, is a :class:`BleakError` here, never a stray cancellation.
        Failures are mapped by :func:`~transports.bleak_bumble.errors.to_bleak_error`.
        """
        lost = self._lost
        task = asyncio.ensure_future(awaitable)
        if lost is None:
            abandon(task)
            raise BleakError("Not connected")
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            abandon(task)
            raise
        if task.done():
            if task.cancelled():
                reason = lost.result() if lost.done() else "the connection was lost"
                raise BleakError(f"{what}: disconnected ({reason})")
            exc = task.exception()
            if exc is not None:
                mapped = to_bleak_error(exc, what)
                if mapped is exc:
                    raise exc
                raise mapped from exc
            return task.result()
        abandon(task)
        raise BleakError(f"{what}: disconnected ({lost.result()})")
