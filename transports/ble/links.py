"""pairkit links over one BLE connection: GATT (write + notify) or an L2CAP credit-based channel.

Both carry whole messages, one per ATT PDU or one per L2CAP SDU, so no framing is added here
(fragmenting longer messages is ``pairing.framing``'s job):

* :class:`GattLink`: the guest (central) sends with ATT Write Command (write without response,
  Core 5.4 Vol 3 Part F §3.4.5.3) to pairkit's RX characteristic; the host (peripheral) sends
  with ATT Handle Value Notification (§3.4.7.1) on the TX characteristic, once the guest has
  enabled notifications in its CCCD (Vol 3 Part G §3.3.3.3).  ``mtu`` is at most ATT_MTU - 3,
  and never above 512: the GATT maximum attribute value (Vol 3 Part F §3.2.9); bumble drops
  longer writes and truncates longer notifications without a word.
* :class:`L2capLink`: an LE credit-based connection-oriented channel (Vol 3 Part A §10.2).
  ``mtu`` is at most the peer's channel MTU.  bumble's channel is a byte stream that packs
  queued writes into one SDU, so a message is written only once the previous SDU has left
  (``drain``).

Within those limits ``mtu`` is the message size that fills the controller's ACL packets best
(:mod:`transports.ble.fill`): 495 bytes at ATT MTU 517 and 2,002 on a channel of MTU and MPS
2,048, with 251-byte ACL packets.

Flow control.  Neither ATT command carries an acknowledgement and bumble queues without bound,
so ``send`` waits while the host has more than ``2 * max_in_flight`` ACL packets waiting for
the controller (HCI flow control, Vol 4 Part E §4.1): 1 MiB crosses without loss and with
bounded memory.  Backpressure from the *reading application* exists only on L2CAP: receive
credits go back to the peer as the application reads (:class:`ChannelTap`), so a sender whose
peer stops reading blocks once the credits (``l2cap_credits`` K-frames) are used up.  GATT has
no such mechanism: a GATT receiver's buffer is bounded (``max_rx_buffer``) and a peer that
overruns it loses the link.

Liveness.  A peer that disconnects ends the link: ``recv`` returns what arrived before, then
raises :class:`LinkClosedError`.  A peer that vanishes without disconnecting is timed out by a
real controller's supervision timeout, but never by bumble's virtual one; ``idle_timeout``
(off by default: pairkit's callers put deadlines around their own waits) makes ``recv`` raise
:class:`PairingTimeout` and drop the link after that many silent seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bumble import att, gatt_client, gatt_server, hci, l2cap, smp
from bumble.core import BaseBumbleError, PhysicalTransport
from bumble.device import Connection
from bumble.gatt import Characteristic
from bumble.pairing import PairingConfig, PairingDelegate

from pairkit.pairing.errors import (
    ConfigError,
    InsecureLinkError,
    LinkClosedError,
    PairingTimeout,
    TransportError,
)

from ..queued import BufferedLink
from .fill import L2CAP_HEADER, filling_size
from .guard import describe_reason, guarded, translate
from .pace import PaceConfig, Pacer

__all__ = [
    "LEGACY_REFUSED",
    "BleLink",
    "ChannelTap",
    "GattLink",
    "L2capLink",
    "LinkOptions",
    "SecureConnectionsOnlySession",
    "pairing_config",
    "tap_pending_channels",
]

GATT_MAX_VALUE = 512  #: Core 5.4 Vol 3 Part F §3.2.9
ATT_HEADER = 3  #: opcode + handle of a Write Command or a Notification
SDU_LENGTH = 2  #: the SDU length field of an SDU's first K-frame (Vol 3 Part A §3.4.3)
L2CAP_MIN_MTU = 23  #: an LE credit-based channel's smallest MTU (Vol 3 Part A §4.22)
L2CAP_MIN_MPS = 23  #: and its smallest MPS (the same section)


def _quiet(logger: logging.Logger) -> bool:
    """True when ``logger`` drops DEBUG records: then bumble's per-PDU debug line, which bumble
    formats before the logger drops it, is not made either (the same log, less work)."""
    return not logger.isEnabledFor(logging.DEBUG)

SetPairingConfig = Callable[[Connection, PairingConfig], None]

#: The connection event that :class:`SecureConnectionsOnlySession` emits on refusing legacy.
LEGACY_REFUSED = "pairkit_legacy_pairing_refused"

LEGACY_MESSAGE = (
    "the other device offered only legacy BLE pairing, which a listener can break; "
    "'clear' needs LE Secure Connections (use pin, qr or compare instead)"
)


@dataclass(frozen=True)
class LinkOptions:
    """Knobs shared by both link kinds (validated by :class:`transports.bumble.BumbleConfig`)."""

    idle_timeout: float | None = None
    max_rx_buffer: int = 16 << 20
    send_timeout: float = 30.0
    close_timeout: float = 2.0
    encrypt_timeout: float = 15.0
    #: The host's pace: fast connection parameters and 2M PHY during transfers
    #: (:mod:`transports.ble.pace`); None: never ask.
    pace: PaceConfig | None = None


def pairing_config(delegate: PairingDelegate | None = None, *, mitm: bool = False) -> PairingConfig:
    """LE Secure Connections, no bonding (Core 5.4 Vol 3 Part H §2.3.5.6); Just Works by default."""
    return PairingConfig(
        sc=True,
        mitm=mitm,
        bonding=False,
        delegate=delegate or PairingDelegate(),
        identity_address_type=PairingConfig.AddressType.RANDOM,
    )


class SecureConnectionsOnlySession(smp.Session):
    """bumble's SMP session in Secure Connections Only mode (Core 5.4 Vol 3 Part H §2.3.5.1).

    bumble has no such mode: with ``PairingConfig(sc=True)`` it still falls back to legacy
    pairing when the other side does not set the SC bit (smp.py ANDs both sides' flags), and a
    passive listener can break legacy pairing.  A pairkit device installs this class as its
    ``smp_session_proxy``: a Pairing Request (as responder) or a Pairing Response (as
    initiator) without SC is answered with Pairing Failed, reason Authentication Requirements,
    as the specification asks of an SC-only device, and the connection emits
    :data:`LEGACY_REFUSED` so that a link can say why.
    """

    def _refuses(self, command: smp.SMP_Pairing_Request_Command
                 | smp.SMP_Pairing_Response_Command) -> bool:
        if self.connection.transport != PhysicalTransport.LE:
            return False
        if command.auth_req & smp.AuthReq.SC:
            return False
        self.connection.emit(LEGACY_REFUSED)  # before the failure event, which links await
        self.send_pairing_failed(smp.ErrorCode.AUTHENTICATION_REQUIREMENTS)
        # A failed responder session would otherwise stay in the manager and swallow the
        # next (Secure Connections) request on this connection.
        if self.manager.sessions.get(self.connection.handle) is self:
            self.manager.on_session_end(self)
        return True

    def on_smp_pairing_request_command(self, command: smp.SMP_Pairing_Request_Command) -> None:
        if not self._refuses(command):
            # The responder (a host) distributes no key of its own (Vol 3 Part H §3.6.1):
            # asked for its identity key, bumble's would send the device's random static
            # address, one for the life of the process, which links every resolvable private
            # address the host rotates through for anyone who pairs the link (attack review
            # atk19p, finding 1).  Secure Connections derive the LTK on both sides, nothing
            # bonds, so no key is missing.  (The request's bytes are kept for legacy pairing's
            # c1 only, which this session refuses.)
            super().on_smp_pairing_request_command(dataclasses.replace(
                command, responder_key_distribution=smp.KeyDistribution(0)))

    def on_smp_pairing_response_command(
        self, command: smp.SMP_Pairing_Response_Command
    ) -> None:
        if self.is_responder or not self._refuses(command):
            super().on_smp_pairing_response_command(command)


async def _first(*futures: asyncio.Future[None]) -> None:
    """The outcome of whichever of ``futures`` completes first (the others are left alone)."""
    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    next(iter(done)).result()


class BleLink(BufferedLink):
    """What GATT and L2CAP links share: one BLE connection, bumble's events, encryption.

    The receive buffer, ``recv``, ``send``'s checks and closing are :class:`BufferedLink`'s.
    """

    kind = "ble"

    def __init__(
        self,
        connection: Connection,
        *,
        guest: bool,
        options: LinkOptions,
        set_pairing_config: SetPairingConfig | None = None,
    ) -> None:
        super().__init__(
            peer=str(connection.peer_address),
            idle_timeout=options.idle_timeout,
            max_rx_buffer=options.max_rx_buffer,
        )
        self._connection = connection
        self._guest = guest
        self._options = options
        self._set_pairing_config = set_pairing_config
        #: what this connection's SMP pairing established (None until it completes here):
        #: (LE Secure Connections used, MITM-protected)
        self._pairing: tuple[bool, bool] | None = None
        self._paired: asyncio.Future[None] = self._loop.create_future()
        #: the last pairing attempt on this connection was legacy (refused, or made by a
        #: device that is not SC-only)
        self._legacy = False
        #: when this link was made, and its last LE pairing's start and end (None: under way),
        #: on the loop's clock (:meth:`first_flight_extension`)
        self._opened = self._loop.time()
        self._smp: tuple[float, float | None] | None = None
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        connection.on(connection.EVENT_PAIRING_START, self._on_pairing_start)
        connection.on(connection.EVENT_PAIRING, self._on_pairing)
        connection.on(connection.EVENT_PAIRING_FAILURE, self._on_pairing_end)
        connection.on(LEGACY_REFUSED, self._on_legacy_refused)
        if guest:
            connection.on(connection.EVENT_SECURITY_REQUEST, self._on_security_request)
        #: the host (peripheral) asks for a faster connection while it sends a lot
        self._pacer: Pacer | None = None
        if options.pace is not None and connection.role == hci.Role.PERIPHERAL:
            self._pacer = Pacer(connection, options.pace)
        if connection.handle not in connection.device.connections:
            self._finish("the connection was already closed")

    # -- Link protocol -------------------------------------------------------------------

    @property
    def mtu(self) -> int:
        raise NotImplementedError

    @property
    def encrypted(self) -> bool:
        """True once the link layer encrypts this connection with keys from an LE Secure
        Connections pairing made on it (both sides see it).

        A link encrypted after *legacy* pairing is not encrypted for pairkit's purposes: a
        passive listener can break legacy pairing (Core 5.4 Vol 3 Part H §2.3.5.1), so method
        ``clear`` must not send a key over it (docs/security.md, rule 5).  pairkit's bumble
        devices refuse legacy pairing (:class:`SecureConnectionsOnlySession`); this property
        does not rely on it.  bumble's own ``connection.sc`` is not enough: bumble sets it (and
        ``connection.authenticated``) on every LE encryption change, before the pairing has
        told what it used, so pairkit reads the pairing's outcome itself.  A connection
        encrypted with a stored bond key, without a pairing on it, is not counted either.
        """
        return bool(self._connection.is_encrypted and self._pairing and self._pairing[0])

    @property
    def mitm_protected(self) -> bool:
        """True when that SC pairing was protected against a man in the middle (numeric
        comparison, passkey or OOB: the LTK is "authenticated"); Just Works is not.
        bumble's ``connection.authenticated`` is no guide: it is true after any pairing."""
        return bool(self.encrypted and self._pairing and self._pairing[1])

    @property
    def connection(self) -> Connection:
        """The underlying bumble connection (for diagnostics and tests)."""
        return self._connection

    @property
    def pacer(self) -> Pacer | None:
        """The host's :class:`~transports.ble.pace.Pacer` (None on a guest, or pace off)."""
        return self._pacer

    async def _send_checked(self, data: bytes) -> None:
        # Called by BufferedLink.send under the send lock; waits while the host queue is full.
        try:
            await self._send_one(data)
        except (BaseBumbleError, OSError) as exc:
            raise translate(exc, "sending a message") from exc
        if self._pacer is not None:
            self._pacer.sent(len(data))

    def _finish(self, reason: str) -> None:
        if self._pacer is not None:
            self._pacer.stop()
        super()._finish(reason)

    def send_nowait(self, data: bytes) -> bool:
        """:meth:`send` if it need not wait: True once the message is handed to bumble, False
        (nothing sent) when ``send`` would wait (another send under way, the host's queue past
        its bound, the previous L2CAP SDU still queued, a path bumble only offers awaited);
        raises what ``send`` raises for the same message and state.

        The driver's pipe sends through it without a timer or a lock (issue 13); every
        guarantee of ``send`` holds: one message at a time and in order (never beside a send
        under way), the host queue's bound (:meth:`_backpressure`), the link's errors.
        """
        data = self._outgoing(data)
        if self._send_lock.locked():
            return False
        try:
            if not self._send_now(data):
                return False
        except (BaseBumbleError, OSError) as exc:
            raise translate(exc, "sending a message") from exc
        if self._pacer is not None:
            self._pacer.sent(len(data))
        return True

    def recv_nowait(self) -> bytes | None:
        """:meth:`recv` without waiting: the next message if one has arrived, else None; once
        the link has ended and what arrived is read, LinkClosedError as ``recv`` raises it.
        (The driver reads a message already there without a timer or a task switch.)"""
        return self._buffered_next()

    def _room_for(self, packets: int) -> bool:
        """True when ``packets`` more ACL packets leave the host queue within the bound that
        :meth:`_backpressure` keeps (no more than ``2 * max_in_flight`` waiting)."""
        queue = self._connection.data_packet_queue
        return queue is None or queue.pending + packets <= 2 * queue.max_in_flight

    def _acl_length(self) -> int:
        """The controller's LE ACL data packet length for this connection (0: not known)."""
        queue = self._connection.data_packet_queue
        return queue.max_packet_size if queue is not None else 0

    def _acl_packets(self, pdu_bytes: int) -> int:
        """ACL packets that one L2CAP PDU of ``pdu_bytes`` (header included) is cut into."""
        queue = self._connection.data_packet_queue
        size = queue.max_packet_size if queue is not None else 0
        return -(-pdu_bytes // size) if size > 0 else 1

    # -- link-layer encryption (DESIGN.md method b) -----------------------------------------

    async def encrypt(
        self,
        delegate: PairingDelegate | None = None,
        *,
        mitm: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Encrypt the connection with LE Secure Connections (Core 5.4 Vol 3 Part H §2.3).

        The guest (central) runs SMP pairing with ``delegate`` (Just Works when ``None``); the
        host (peripheral) sends an SMP Security Request (§3.6.7) and waits for the guest to
        pair.  Returns once ``encrypted`` is true; :class:`PairingTimeout` after ``timeout``.
        """
        timeout = self._options.encrypt_timeout if timeout is None else timeout
        if self.encrypted:
            return
        self._check_open()
        self._check_secure_connections()
        async with self._encrypt_lock:
            if self.encrypted:
                return
            if self._guest:
                if self._set_pairing_config is not None:
                    self._set_pairing_config(self._connection, pairing_config(delegate, mitm=mitm))
                deadline = self._loop.time() + timeout
                self._legacy = False
                try:
                    await guarded(
                        self._connection.pair(),
                        what="link-layer pairing",
                        timeout=timeout,
                        lost=self._lost,
                    )
                except TransportError as exc:
                    if self._legacy:
                        raise InsecureLinkError(LEGACY_MESSAGE) from exc
                    raise
                self._check_secure_connections()
                if not self.encrypted:
                    await self._wait_encrypted(max(0.0, deadline - self._loop.time()))
            else:
                self._legacy = False
                self._connection.request_pairing()
                await self._wait_encrypted(timeout)
            self._check_secure_connections()

    async def _wait_encrypted(self, timeout: float) -> None:
        changed: asyncio.Future[None] = self._loop.create_future()

        def on_change() -> None:
            if self._connection.is_encrypted and not changed.done():
                changed.set_result(None)

        def on_failure(error_code: int) -> None:
            if not changed.done():
                changed.set_exception(hci.HCI_Error(error_code))

        failed: asyncio.Future[None] = self._loop.create_future()

        def on_pairing_failure(reason: int) -> None:
            if failed.done():
                return
            if self._legacy:
                failed.set_exception(InsecureLinkError(LEGACY_MESSAGE))
            else:
                try:
                    name = smp.ErrorCode(reason).name.lower().replace("_", " ")
                except ValueError:
                    name = f"code 0x{reason:02X}"
                failed.set_exception(TransportError(f"link-layer pairing failed ({name})"))

        conn = self._connection
        conn.on(conn.EVENT_CONNECTION_ENCRYPTION_CHANGE, on_change)
        conn.on(conn.EVENT_CONNECTION_ENCRYPTION_FAILURE, on_failure)
        conn.on(conn.EVENT_PAIRING_FAILURE, on_pairing_failure)
        deadline = self._loop.time() + timeout
        try:
            if not self._connection.is_encrypted:
                await guarded(
                    _first(changed, failed), what="link-layer encryption", timeout=timeout,
                    lost=self._lost,
                )
            if self._pairing is None:
                # Encryption starts mid-pairing; what the pairing used is known at its end.
                await guarded(
                    _first(asyncio.shield(self._paired), failed), what="link-layer pairing",
                    timeout=max(0.0, deadline - self._loop.time()), lost=self._lost,
                )
        finally:
            conn.remove_listener(conn.EVENT_CONNECTION_ENCRYPTION_CHANGE, on_change)
            conn.remove_listener(conn.EVENT_CONNECTION_ENCRYPTION_FAILURE, on_failure)
            conn.remove_listener(conn.EVENT_PAIRING_FAILURE, on_pairing_failure)
            if failed.done():
                failed.exception()  # retrieved: never "exception was never retrieved"

    def first_flight_extension(self, first_flight: float) -> float:
        """How many seconds more than the admission's ``first_flight`` the peer's first
        message may still take on this link because of an LE pairing on it (runtime/
        admission.py; docs/security.md, "A pairing host's pending links").

        A guest pairing with ``clear`` turns on LE Secure Connections after its link is
        admitted and before it says anything, and that pairing may ask a person (bumble's
        ``PairingDelegate``): it has the link's ``encrypt_timeout`` from its start, and the
        guest a first flight after it ends.  Never more in all than one first flight, one
        ``encrypt_timeout`` and one first flight from the link's making, however often a peer
        starts a pairing again; 0 when no pairing was started."""
        if self._smp is None:
            return 0.0
        started, ended = self._smp
        limit = self._options.encrypt_timeout
        until = (started + limit if ended is None else ended) + first_flight
        until = min(until, self._opened + 2 * first_flight + limit)
        return max(0.0, until - self._loop.time())

    def _on_pairing_start(self) -> None:
        self._smp = (self._loop.time(), None)

    def _on_pairing_end(self, *_reason: Any) -> None:
        if self._smp is not None and self._smp[1] is None:
            self._smp = (self._smp[0], self._loop.time())

    def _on_pairing(self, keys: Any) -> None:
        self._on_pairing_end()
        # Device.on_pairing has set connection.sc to what the SMP session really used.
        ltk = getattr(keys, "ltk", None) or getattr(keys, "ltk_central", None) or getattr(
            keys, "ltk_peripheral", None
        )
        self._pairing = (bool(self._connection.sc), bool(getattr(ltk, "authenticated", False)))
        self._legacy = not self._pairing[0]
        if not self._paired.done():
            self._paired.set_result(None)

    def _on_legacy_refused(self) -> None:
        self._legacy = True

    def _check_secure_connections(self) -> None:
        if self._legacy or (
            self._connection.is_encrypted and self._pairing is not None and not self._pairing[0]
        ):
            raise InsecureLinkError(LEGACY_MESSAGE)

    def _on_security_request(self, _auth_req: int) -> None:
        # The host asks for encryption (SMP Security Request): pair with the defaults.
        self._spawn(self._encrypt_quietly())

    async def _encrypt_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.encrypt()

    # -- for subclasses and the transport ---------------------------------------------------

    async def _send_one(self, data: bytes) -> None:
        raise NotImplementedError

    def _send_now(self, data: bytes) -> bool:
        """Hand ``data`` to bumble if that needs no wait (see :meth:`send_nowait`); False, with
        nothing sent, otherwise.  Called with the link open and no send under way."""
        return False

    async def _flush(self) -> None:
        await self._wait_host_queue(0)

    def _on_disconnection(self, reason: int) -> None:
        # bumble hands a received ATT Write Command to a task of its own; one queued before the
        # disconnection event must still reach the queue, so end the link two turns later.
        text = describe_reason(reason)
        self._loop.call_soon(self._loop.call_soon, self._finish, text)

    async def _hang_up(self) -> None:
        with contextlib.suppress(LinkClosedError, PairingTimeout, Exception):
            await guarded(
                self._flush(),
                what="flushing",
                timeout=self._options.close_timeout,
                lost=self._lost,
            )
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._connection.handle not in self._connection.device.connections:
            return
        with contextlib.suppress(Exception):
            await guarded(
                self._connection.disconnect(),
                what="disconnecting",
                timeout=self._options.close_timeout,
            )

    async def _wait_host_queue(self, limit: int, resume: int | None = None) -> None:
        """Once more than ``limit`` ACL packets wait in the host for the controller, wait until
        at most ``resume`` (default ``limit``) do: with ``resume`` below ``limit`` the sender
        wakes once per burst, not once per packet the controller completes."""
        queue = self._connection.data_packet_queue
        if queue is None or queue.pending <= limit:
            return
        low = limit if resume is None else resume
        while queue.pending > low:
            self._check_open()
            flow: asyncio.Future[None] = self._loop.create_future()

            def on_flow(flow: asyncio.Future[None] = flow) -> None:
                if not flow.done() and queue.pending <= low:
                    flow.set_result(None)

            queue.on("flow", on_flow)
            try:
                await guarded(
                    flow, what="sending", timeout=self._options.send_timeout, lost=self._lost
                )
            finally:
                queue.remove_listener("flow", on_flow)

    async def _backpressure(self) -> None:
        queue = self._connection.data_packet_queue
        if queue is not None:
            # past two controller windows queued, wait until one is left (a full window still
            # in flight: the link never runs dry while the sender sleeps)
            await self._wait_host_queue(2 * queue.max_in_flight, queue.max_in_flight)


class GattLink(BleLink):
    """pairkit messages over GATT: write without response up, notifications down."""

    kind = "gatt"

    def __init__(
        self,
        connection: Connection,
        *,
        guest: bool,
        options: LinkOptions,
        rx_handle: int = 0,
        tx_characteristic: Characteristic[Any] | None = None,
        set_pairing_config: SetPairingConfig | None = None,
    ) -> None:
        if guest and not rx_handle:
            raise ConfigError("a guest GATT link needs the RX characteristic handle")
        if not guest and tx_characteristic is None:
            raise ConfigError("a host GATT link needs the TX characteristic")
        self._rx_handle = rx_handle
        self._tx = tx_characteristic
        self._sized = (0, 0, 0)  # (value limit, ACL length, the size for them)
        super().__init__(
            connection, guest=guest, options=options, set_pairing_config=set_pairing_config
        )

    @property
    def mtu(self) -> int:
        """The largest value that fills its ACL packets best (:mod:`transports.ble.fill`), at
        most the ATT MTU less the Write Command's or Notification's 3-byte header, and at most
        an attribute value's 512 bytes (Core 5.4 Vol 3 Part F §3.2.9, §3.4.2)."""
        limit = max(20, min(self._connection.att_mtu - ATT_HEADER, GATT_MAX_VALUE))
        acl = self._acl_length()
        if self._sized[:2] != (limit, acl):
            self._sized = (limit, acl, filling_size(limit, acl, first_header=ATT_HEADER))
        return self._sized[2]

    def on_notification(self, value: bytes) -> None:
        """Subscriber callback for the TX characteristic (guest side)."""
        self.feed(value)

    def on_unsubscribed(self) -> None:
        """The guest turned notifications off (host side): it can no longer hear us."""
        self._abort("the guest stopped listening (notifications turned off)")

    async def _send_one(self, data: bytes) -> None:
        await self._backpressure()
        self._check_open()
        self._check_connected()
        if self._write_at_once(data):
            return
        if self._guest:
            await self._connection.gatt_client.write_value(
                self._rx_handle, data, with_response=False
            )
        else:
            assert self._tx is not None  # checked in __init__
            await self._connection.device.notify_subscriber(self._connection, self._tx, data)

    def _send_now(self, data: bytes) -> bool:
        if not self._room_for(0):
            return False  # _backpressure would wait before this write
        self._check_connected()
        return self._write_at_once(data)

    def _check_connected(self) -> None:
        connection = self._connection
        if connection.handle not in connection.device.connections:
            # The disconnection event may not have reached this link yet; a notification to a
            # gone connection would "succeed" without ever yielding to the event loop.
            self._finish("the peer disconnected")
            self._check_open()

    def _write_at_once(self, data: bytes) -> bool:
        """The ATT PDU that bumble's ``write_value(with_response=False)`` (guest) or
        ``notify_subscriber`` (host) sends, handed to the same bumble call that sends it,
        without their awaits and their debug line; False (nothing sent) where bumble's own
        path must decide (DEBUG logging on, an enhanced ATT bearer, no subscription).

        Guest: ATT Write Command, opcode 0x52, handle, value (Core 5.4 Vol 3 Part F §3.4.5.3).
        Host: ATT Handle Value Notification, opcode 0x1B, handle, value (§3.4.7.1), sent only
        while the guest's CCCD enables notifications (Vol 3 Part G §3.3.3.3), as bumble checks.
        """
        connection = self._connection
        if self._guest:
            client = connection.gatt_client
            if not _quiet(gatt_client.logger) or att.is_enhanced_bearer(client.bearer):
                return False
            client.send_gatt_pdu(
                _ATT_WRITE_COMMAND + self._rx_handle.to_bytes(2, "little") + data
            )
            return True
        tx = self._tx
        assert tx is not None  # checked in __init__
        server = connection.device.gatt_server
        if not _quiet(gatt_server.logger) or len(data) > connection.att_mtu - ATT_HEADER:
            return False
        cccd = server.subscribers.get(connection, {}).get(tx.handle)
        if not cccd or len(cccd) != 2 or not cccd[0] & 0x01:
            return False  # bumble's path: it decides what an unsubscribed guest gets
        channels = connection.device.l2cap_channel_manager.le_coc_channels.get(
            connection.handle, {}
        )
        if any(channel.psm == att.EATT_PSM for channel in channels.values()):
            return False  # bumble notifies every subscribed bearer of the connection
        server.send_gatt_pdu(
            connection, _ATT_NOTIFICATION + tx.handle.to_bytes(2, "little") + data
        )
        return True


_ATT_WRITE_COMMAND = bytes([att.Opcode.ATT_WRITE_COMMAND])
_ATT_NOTIFICATION = bytes([att.Opcode.ATT_HANDLE_VALUE_NOTIFICATION])


class ChannelTap:
    """Receives on an L2CAP channel from the moment it exists, before its link does.

    bumble drops an SDU that arrives while a channel has no sink, and a host may send as soon
    as it has accepted: the guest's channel is tapped while the connection request is still in
    flight (:func:`tap_pending_channels`), and its link takes over what has arrived.  The tap
    also counts the K-frames of each SDU, to give back exactly the credits it used, and turns
    bumble's automatic credit return off (receive credits are returned as the application
    reads: Core 5.4 Vol 3 Part A §10.1), so a sender that outruns the reader waits.
    """

    def __init__(self, channel: l2cap.LeCreditBasedChannel) -> None:
        self.frames = 0
        self.target: Callable[[bytes, int], None] | None = None
        self.early: list[tuple[bytes, int]] = []
        #: why the peer broke the channel's flow control, once it has (then every frame of
        #: its is dropped), and whom to tell (the link, once there is one)
        self.broken: str | None = None
        self.on_broken: Callable[[str], None] | None = None
        channel.peer_credits_threshold = -1
        on_pdu = channel.on_pdu
        connected = l2cap.LeCreditBasedChannel.State.CONNECTED

        def counting_on_pdu(pdu: bytes) -> None:
            if self.broken is not None:
                return
            if (
                channel.peer_credits <= 0
                and channel.state == connected
                and channel.sink is not None
            ):
                # A K-frame the peer had no credit for: the receiver shall disconnect (Core 5.4
                # Vol 3 Part A §10.1).  bumble only logs it and takes the frame, so a peer that
                # ignores credits would fill a link nobody reads (attack review atk14b).
                self.broken = "the peer sent an L2CAP frame without a credit"
                if self.on_broken is not None:
                    self.on_broken(self.broken)
                return
            self.frames += 1
            # A K-frame that is a whole SDU (the SDU length field, then that many bytes: Core
            # 5.4 Vol 3 Part A §3.4.3), with none begun before it, is given to the sink as
            # bumble's on_pdu gives it, without its debug line: the peer's credit is taken as
            # bumble takes it (none returned here: the threshold is off, the link returns
            # them).  Every other case (a segment, an SDU past the MTU, no credit left, a
            # channel not connected or with no sink, DEBUG logging on) is bumble's own path.
            if (
                channel.in_sdu is None
                and len(pdu) >= SDU_LENGTH
                and len(pdu) - SDU_LENGTH == int.from_bytes(pdu[:SDU_LENGTH], "little")
                <= channel.mtu
                and channel.peer_credits - 1 > channel.peer_credits_threshold
                and channel.state == connected
                and channel.sink is not None
                and _quiet(l2cap.logger)
            ):
                channel.peer_credits -= 1
                channel.sink(pdu[SDU_LENGTH:])
                return
            on_pdu(pdu)

        channel.on_pdu = counting_on_pdu  # type: ignore[method-assign]
        channel.sink = self.on_sdu
        _send_k_frames_at_once(channel)
        _TAPS[channel] = self

    def on_sdu(self, sdu: bytes) -> None:
        frames, self.frames = max(1, self.frames), 0
        if self.target is not None:
            self.target(sdu, frames)
        else:
            self.early.append((sdu, frames))


def _write_sdu(channel: l2cap.LeCreditBasedChannel, data: bytes) -> None:
    """``channel.write(data)``: one SDU, its K-frames sent at once when the channel can take
    them all now, without bumble's debug lines and queue; else bumble's own ``write``.

    The frames are bumble's: the SDU length (2 bytes, little-endian) then the data, cut into
    K-frames of the peer's MPS, one credit each (Core 5.4 Vol 3 Part A §3.4.3, §10.1), each
    sent by the channel's ``send_pdu`` in order, as ``process_output`` sends them.  Taken at
    once only with nothing queued before it, the data within the peer's MTU (bumble would cut
    it into two SDUs), a credit for every frame, the channel connected and DEBUG logging off
    for bumble's L2CAP logger."""
    mps = channel.peer_mps
    if (
        not data
        or mps < 1
        or channel.out_queue
        or channel.out_sdu is not None
        or len(data) > channel.peer_mtu
        or channel.state != l2cap.LeCreditBasedChannel.State.CONNECTED
        or not _quiet(l2cap.logger)
    ):
        channel.write(data)
        return
    sdu = len(data).to_bytes(SDU_LENGTH, "little") + data
    if len(sdu) <= mps:
        if channel.credits < 1:
            channel.write(data)
            return
        channel.credits -= 1
        channel.send_pdu(sdu)
        return
    frames = -(-len(sdu) // mps)
    if channel.credits < frames:
        channel.write(data)
        return
    for i in range(0, len(sdu), mps):
        channel.credits -= 1
        channel.send_pdu(sdu[i:i + mps])


def _send_k_frames_at_once(channel: l2cap.LeCreditBasedChannel) -> None:
    """Hand each K-frame of ``channel`` to bumble's host as bumble's channel manager does, without
    the debug line it formats first (a hex dump of the frame and the peer's address) while that
    log is off; with DEBUG on for bumble's L2CAP logger, bumble's own path.

    The frame is the same L2CAP PDU: length, the peer's channel ID, the K-frame (Core 5.4 Vol 3
    Part A §3.4), sent by the same call (``Host.send_acl_sdu``), in the order the channel sends.
    """
    in_bumble = channel.send_pdu
    host = channel.manager.host
    handle = channel.connection.handle

    def send_pdu(pdu: Any) -> None:
        if l2cap.logger.isEnabledFor(logging.DEBUG):
            in_bumble(pdu)
            return
        frame = bytes(pdu)
        host.send_acl_sdu(
            handle, len(frame).to_bytes(2, "little")
            + channel.destination_cid.to_bytes(2, "little") + frame,
        )

    channel.send_pdu = send_pdu  # type: ignore[method-assign]


_TAPS: weakref.WeakKeyDictionary[l2cap.LeCreditBasedChannel, ChannelTap] = (
    weakref.WeakKeyDictionary()
)


def tap_pending_channels(connection: Connection, psm: int) -> None:
    """Tap the channels to ``psm`` that this side is opening on ``connection`` (see ChannelTap)."""
    manager = connection.device.l2cap_channel_manager
    for channel in list(manager.channels.get(connection.handle, {}).values()):
        if (
            isinstance(channel, l2cap.LeCreditBasedChannel)
            and channel.psm == psm
            and channel not in _TAPS
        ):
            ChannelTap(channel)


class L2capLink(BleLink):
    """pairkit messages over one LE credit-based channel, one SDU per message."""

    kind = "l2cap"

    def __init__(
        self,
        connection: Connection,
        channel: l2cap.LeCreditBasedChannel,
        *,
        guest: bool,
        options: LinkOptions,
        set_pairing_config: SetPairingConfig | None = None,
    ) -> None:
        self._channel = channel
        self._size: int | None = None  # the message size (mtu), once asked
        self._rx_frames: deque[int] = deque()  # K-frames of each queued message
        self._to_return = 0  # credits used by messages already read
        super().__init__(
            connection, guest=guest, options=options, set_pairing_config=set_pairing_config
        )
        tap = _TAPS.get(channel) or ChannelTap(channel)
        tap.target = self._on_sdu
        tap.on_broken = self._abort
        early, tap.early = tap.early, []
        for sdu, frames in early:
            self._on_sdu(sdu, frames)
        if tap.broken is not None:
            self._abort(tap.broken)
        elif channel.peer_mtu < L2CAP_MIN_MTU or channel.peer_mps < L2CAP_MIN_MPS:
            # Out of the specification's range (Core 5.4 Vol 3 Part A §4.22, §4.23); bumble
            # checks only its own side's.  An MPS of 0 made bumble's process_output send an
            # empty K-frame for every credit the peer granted (attack review atk14b).
            self._abort("the peer's L2CAP channel MTU or MPS is below 23")
        channel.on(channel.EVENT_CLOSE, self._on_channel_close)

    @property
    def mtu(self) -> int:
        """The largest message that fills its ACL packets best (:mod:`transports.ble.fill`), at
        most the peer's channel MTU: with bumble's defaults here (MTU and MPS 2,048, 251-byte
        ACL packets), 2,002 bytes, one K-frame in 8 full packets.  The channel's own MTU and
        MPS do not change after it is open (Core 5.4 Vol 3 Part A §10.1), nor the ACL length."""
        if self._size is None:
            channel = self._channel
            limit = max(20, min(channel.peer_mtu, 65535))
            self._size = filling_size(
                limit, self._acl_length(), first_header=SDU_LENGTH, mps=max(1, channel.peer_mps)
            )
        return self._size

    @property
    def channel(self) -> l2cap.LeCreditBasedChannel:
        return self._channel

    def _on_sdu(self, sdu: bytes, frames: int) -> None:
        if self.feed(sdu):
            self._rx_frames.append(frames)
        else:
            self._to_return += frames

    def _consumed(self) -> None:
        channel = self._channel
        if self._rx_frames:
            self._to_return += self._rx_frames.popleft()
        half = max(1, channel.peer_max_credits // 2)
        if self._to_return >= half or (not self._rx and channel.peer_credits <= half):
            self._return_credits()

    def _return_credits(self) -> None:
        channel = self._channel
        count = min(self._to_return, channel.peer_max_credits - channel.peer_credits)
        self._to_return = 0
        if count <= 0 or channel.state != l2cap.LeCreditBasedChannel.State.CONNECTED:
            return
        channel.send_control_frame(
            l2cap.L2CAP_LE_Flow_Control_Credit(
                identifier=channel.manager.next_identifier(channel.connection),
                cid=channel.source_cid,
                credits=count,
            )
        )
        channel.peer_credits += count

    async def send(self, data: bytes) -> None:
        if not data:
            # An L2CAP SDU may be empty, but bumble's channel cannot send one.
            raise ValueError("an L2CAP link cannot send an empty message")
        await super().send(data)

    def send_nowait(self, data: bytes) -> bool:
        if not data:
            raise ValueError("an L2CAP link cannot send an empty message")
        return super().send_nowait(data)

    def _send_now(self, data: bytes) -> bool:
        channel = self._channel
        if not channel.drained.is_set():
            return False  # the previous SDU has not left: send waits for it
        if channel.state != l2cap.LeCreditBasedChannel.State.CONNECTED:
            raise LinkClosedError("the L2CAP channel is closed")
        # At most the K-frames of this SDU reach the host queue now; _send_one would wait
        # after the write if they took it past its bound, so that case waits (returns False).
        mps = max(1, channel.peer_mps)
        full, rest = divmod(len(data) + SDU_LENGTH, mps)
        packets = full * self._acl_packets(mps + L2CAP_HEADER)
        if rest:
            packets += self._acl_packets(rest + L2CAP_HEADER)
        if not self._room_for(packets):
            return False
        _write_sdu(channel, data)
        return True

    async def _send_one(self, data: bytes) -> None:
        # The previous SDU must have left before this one is queued, or bumble merges them.
        # (Already drained, the usual case while credits last: no wait, so no guard to set up.)
        if not self._channel.drained.is_set():
            await guarded(
                self._channel.drain(),
                what="sending",
                timeout=self._options.send_timeout,
                lost=self._lost,
            )
        self._check_open()
        if self._channel.state != l2cap.LeCreditBasedChannel.State.CONNECTED:
            raise LinkClosedError("the L2CAP channel is closed")
        _write_sdu(self._channel, data)
        await self._backpressure()

    async def _flush(self) -> None:
        await self._channel.drain()
        await super()._flush()

    def _on_channel_close(self) -> None:
        # A disconnection closes the channel too, and then the disconnection says why: look
        # once the event that closed the channel has been handled everywhere.
        self._loop.call_soon(self._after_channel_close)

    def _after_channel_close(self) -> None:
        if self._close_task is None and not self._lost.done():
            if self._connection.handle in self._connection.device.connections:
                self._abort("the peer closed the L2CAP channel")
