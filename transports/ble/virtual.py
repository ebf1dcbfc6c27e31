"""Linked virtual BLE controllers in one process: bumble's ``Controller`` on a ``LocalLink``.

bumble's virtual controller (0.0.236) differs from a real one in eight ways that matter to
pairkit, and :class:`VirtualRadio` corrects them so the code above runs unchanged on hardware:

* **Connection cancel.**  A real controller answers HCI LE Create Connection Cancel with a
  Command Complete and then an LE Connection Complete event whose status is Unknown Connection
  Identifier (Core 5.4 Vol 4 Part E §7.8.13).  bumble's virtual controller only says "success"
  and keeps the pending connection, so a timed-out connect never returns and the next one is
  refused.  :class:`VirtualController` clears it and sends the event.
* **Address rotation.**  ``LocalLink`` stamps ACL data with the sender's *current* random
  address, so a device that changes its address cuts every open connection.  Real link layers
  keep the address a connection was made with; :class:`PairkitLocalLink` routes by the
  connection's own address.
* **Data length.**  It refuses LE Set Data Length as unknown; it accepts it here, since its
  ACL packets are already 251 bytes long (:data:`VIRTUAL_ACL_LENGTH`).
* **Disconnecting from a peer that left.**  bumble raises inside the controller, and the host
  waits for a Disconnection Complete that never comes; here the disconnection completes.
* **Disconnecting a connection that has just ended.**  When both ends hang up at once, a host
  can ask to disconnect a handle its controller has already closed (the peer's hang-up is on
  its way up as Disconnection Complete).  bumble answers "pending" and nothing more, so that
  host waits out its own deadline; a real controller refuses the unknown handle at once with
  Unknown Connection Identifier (Core 5.4 Vol 4 Part E §7.1.6, Vol 1 Part F §1.3, 0x02).
* **Reset and power loss.**  The virtual HCI Reset keeps connections, advertising and a pending
  connect.  :meth:`VirtualController.reset_link_state` drops them; a dropped connection is
  reported to the peer as a supervision timeout (Core Vol 6 Part B §4.5.2), which is what a
  peer sees when a radio loses power.
* **PHY update.**  It lists LE Set PHY as supported but never answers it (the host waits
  forever), and LE Read PHY always says 1M.  Here the PHY update procedure runs between the two
  controllers (Core 5.4 Vol 6 Part B §5.1.10): the peer's controller picks the PHY from what
  both want, its host's LE Set Default PHY preferences (Vol 4 Part E §7.8.48) and its features,
  and both hosts hear LE PHY Update Complete as the specification says (§7.7.65.12).
* **Connection parameters asked for by a peripheral.**  bumble applies a peripheral's LE
  Connection Update at once, as if the peripheral were the central.  Here it is the Connection
  Parameters Request procedure (Vol 6 Part B §5.1.7): the central's host is asked (LE Remote
  Connection Parameter Request event, Vol 4 Part E §7.7.65.6) and may accept or refuse (its
  Reply or Negative Reply, §7.8.31-32); a central whose controller lacks the procedure
  answers "unsupported remote feature" (0x1A), after which a peripheral falls back to the L2CAP
  Connection Parameter Update Request (Vol 3 Part A §4.20).

``LocalLink`` never times out a peer that vanishes (:meth:`VirtualRadio.unplug` simulates one):
every wait above needs its own deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import weakref
from typing import Any

from bumble import core, hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink

__all__ = ["PairkitLocalLink", "VirtualController", "VirtualRadio", "default_radio"]

#: ACL payload per packet on virtual controllers: LE Data Length Extension's maximum
#: (Core Vol 6 Part B §4.5.10); bumble's default of 27 bytes is 4-6x slower.
VIRTUAL_ACL_LENGTH = 251


class PairkitLocalLink(LocalLink):
    """A ``LocalLink`` that routes LE ACL data by the address each connection was made with."""

    def send_acl_data(
        self,
        sender_controller: Controller,
        destination_address: hci.Address,
        transport: core.PhysicalTransport,
        data: bytes,
    ) -> None:
        if transport != core.PhysicalTransport.LE:
            super().send_acl_data(sender_controller, destination_address, transport, data)
            return
        connection = sender_controller.le_connections.get(destination_address)
        source = (
            connection.self_address if connection is not None else sender_controller.random_address
        )
        destination = self.find_le_controller(destination_address)
        if destination is None:
            return  # nobody there any more: the packet is lost, as over the air
        asyncio.get_running_loop().call_soon(destination.on_link_acl_data, source, transport, data)


@dataclasses.dataclass
class PhyReq(ll.ControlPdu):
    """LL_PHY_REQ (Core 5.4 Vol 6 Part B §2.4.2.22), one PHY for both directions."""

    opcode = ll.ControlPdu.Opcode.LL_PHY_REQ

    phys: int  #: hci.PhyBit mask the initiator accepts


@dataclasses.dataclass
class PhyUpdateInd(ll.ControlPdu):
    """LL_PHY_UPDATE_IND (§2.4.2.24): the PHY the connection uses from now on."""

    opcode = ll.ControlPdu.Opcode.LL_PHY_UPDATE_IND

    phy: int  #: hci.Phy


@dataclasses.dataclass
class ConnectionParamReq(ll.ControlPdu):
    """LL_CONNECTION_PARAM_REQ (§2.4.2.16), in HCI units (1.25 ms, 10 ms)."""

    opcode = ll.ControlPdu.Opcode.LL_CONNECTION_PARAM_REQ

    interval_min: int
    interval_max: int
    latency: int
    timeout: int


_PHY_BITS = {hci.Phy.LE_1M: hci.PhyBit.LE_1M, hci.Phy.LE_2M: hci.PhyBit.LE_2M}


def _answer(command: Any, status: int) -> hci.HCI_StatusAndConnectionHandleReturnParameters:
    """The return parameters of a command on one connection: ``status`` and its handle."""
    return hci.HCI_StatusAndConnectionHandleReturnParameters(
        status=status, connection_handle=command.connection_handle
    )


class VirtualController(Controller):
    """bumble's virtual controller with a spec-conformant connection cancel and reset."""

    #: the radio it is on (:meth:`VirtualRadio.fail_connections` reads its budget)
    radio: VirtualRadio | None = None

    def on_hci_le_create_connection_command(
        self, command: hci.HCI_LE_Create_Connection_Command
    ) -> None:
        """Core 5.4 Vol 4 Part E §7.8.12; an attempt the radio's interference spoils ends, as
        over the air, in an LE Connection Complete with its failure status (§7.7.65.1)."""
        radio = self.radio
        if radio is None or not radio.connection_failures or self.pending_le_connection:
            return super().on_hci_le_create_connection_command(command)
        status = radio.connection_failures.pop(0)
        self._send_hci_command_status(hci.HCI_COMMAND_STATUS_PENDING, command.op_code)
        event = hci.HCI_LE_Connection_Complete_Event(
            status=status,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=command.peer_address_type,
            peer_address=command.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        asyncio.get_running_loop().call_later(0.01, self.send_hci_packet, event)
        return None

    def on_hci_le_create_connection_cancel_command(
        self, _command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        """Core 5.4 Vol 4 Part E §7.8.13: Command Complete, then a failed LE Connection Complete."""
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # Queued behind the Command Complete that the caller sends when this returns.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def on_hci_le_set_data_length_command(
        self, command: hci.HCI_LE_Set_Data_Length_Command
    ) -> hci.HCI_StatusAndConnectionHandleReturnParameters:
        """Core 5.4 Vol 4 Part E §7.8.33; the link already carries 251-byte packets."""
        status = (
            hci.HCI_ErrorCode.SUCCESS
            if self.find_le_connection_by_handle(command.connection_handle) is not None
            else hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR
        )
        return _answer(command, status)

    # -- PHY update (Core 5.4 Vol 6 Part B §5.1.10) -------------------------------------

    def supported_phys(self) -> int:
        """The PHYs this controller can use for a connection (1M always, 2M if featured)."""
        bits = hci.PhyBit.LE_1M
        if self.le_features & hci.LeFeatureMask.LE_2M_PHY:
            bits |= hci.PhyBit.LE_2M
        return int(bits)

    def _preferred_phys(self) -> int:
        """What this side's host allows (LE Set Default PHY; no preference: everything)."""
        prefs = self.default_phy
        tx = self.supported_phys() if prefs["all_phys"] & 1 or not prefs["tx_phys"] else prefs[
            "tx_phys"]
        rx = self.supported_phys() if prefs["all_phys"] & 2 or not prefs["rx_phys"] else prefs[
            "rx_phys"]
        return tx & rx & self.supported_phys()

    @staticmethod
    def connection_phy(connection: Any) -> int:
        """The PHY a link-layer connection uses (both directions), 1M until updated."""
        return int(getattr(connection, "pairkit_phy", hci.Phy.LE_1M))

    def on_hci_le_set_phy_command(self, command: hci.HCI_LE_Set_PHY_Command) -> None:
        """Vol 4 Part E §7.8.49: Command Status, then the PHY update procedure with the peer."""
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if connection is None:
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code
            )
            return
        self._send_hci_command_status(hci.HCI_COMMAND_STATUS_PENDING, command.op_code)
        tx = self.supported_phys() if command.all_phys & 1 else command.tx_phys
        rx = self.supported_phys() if command.all_phys & 2 else command.rx_phys
        try:
            connection.send_ll_control_pdu(PhyReq(phys=tx & rx & self.supported_phys()))
        except core.InvalidArgumentError:
            pass  # the peer has left: the disconnection will say so

    def on_hci_le_read_phy_command(
        self, command: hci.HCI_LE_Read_PHY_Command
    ) -> hci.HCI_LE_Read_PHY_ReturnParameters:
        """Vol 4 Part E §7.8.47: the PHY the connection really uses."""
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if connection is None:
            return hci.HCI_LE_Read_PHY_ReturnParameters(
                status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
                connection_handle=command.connection_handle,
                tx_phy=hci.Phy.LE_1M,
                rx_phy=hci.Phy.LE_1M,
            )
        phy = self.connection_phy(connection)
        return hci.HCI_LE_Read_PHY_ReturnParameters(
            status=hci.HCI_ErrorCode.SUCCESS,
            connection_handle=command.connection_handle,
            tx_phy=phy,
            rx_phy=phy,
        )

    def _phy_update_complete(self, connection: Any, phy: int) -> None:
        self.send_hci_packet(
            hci.HCI_LE_PHY_Update_Complete_Event(
                status=hci.HCI_ErrorCode.SUCCESS,
                connection_handle=connection.handle,
                tx_phy=phy,
                rx_phy=phy,
            )
        )

    def _on_phy_req(self, connection: Any, packet: PhyReq) -> None:
        # The responder's link layer decides (here for both directions): 2M when both sides
        # want it and can, else 1M.  Its host hears of it only if the PHY changed.
        common = packet.phys & self._preferred_phys()
        phy = hci.Phy.LE_2M if common & hci.PhyBit.LE_2M else hci.Phy.LE_1M
        changed = phy != self.connection_phy(connection)
        connection.pairkit_phy = phy
        connection.send_ll_control_pdu(PhyUpdateInd(phy=phy))
        if changed:
            self._phy_update_complete(connection, phy)

    def _on_phy_update_ind(self, connection: Any, packet: PhyUpdateInd) -> None:
        # The initiator's host always hears the outcome (§7.7.65.12), changed or not.
        connection.pairkit_phy = packet.phy
        self._phy_update_complete(connection, packet.phy)

    # -- connection parameters (Core 5.4 Vol 6 Part B §5.1.7) ------------------------------

    def on_hci_le_connection_update_command(
        self, command: hci.HCI_LE_Connection_Update_Command
    ) -> None:
        """Vol 4 Part E §7.8.18.  A central updates at once (bumble's way); a peripheral asks
        the central with the Connection Parameters Request procedure."""
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if connection is None or connection.role != hci.Role.PERIPHERAL:
            return super().on_hci_le_connection_update_command(command)
        self._send_hci_command_status(hci.HCI_COMMAND_STATUS_PENDING, command.op_code)
        try:
            connection.send_ll_control_pdu(
                ConnectionParamReq(
                    interval_min=command.connection_interval_min,
                    interval_max=command.connection_interval_max,
                    latency=command.max_latency,
                    timeout=command.supervision_timeout,
                )
            )
        except core.InvalidArgumentError:
            pass
        return None

    def _on_connection_param_req(self, connection: Any, packet: ConnectionParamReq) -> None:
        if not self.le_features & hci.LeFeatureMask.CONNECTION_PARAMETERS_REQUEST_PROCEDURE:
            # A link layer without the procedure answers LL_UNKNOWN_RSP (§5.1.7.1).
            connection.send_ll_control_pdu(
                ll.RejectExtInd(
                    reject_opcode=ll.ControlPdu.Opcode.LL_CONNECTION_PARAM_REQ,
                    error_code=hci.HCI_ErrorCode.UNSUPPORTED_REMOTE_FEATURE_ERROR,
                )
            )
            return
        connection.pairkit_param_req = packet
        self.send_hci_packet(
            hci.HCI_LE_Remote_Connection_Parameter_Request_Event(
                connection_handle=connection.handle,
                interval_min=packet.interval_min,
                interval_max=packet.interval_max,
                max_latency=packet.latency,
                timeout=packet.timeout,
            )
        )

    def _take_param_request(self, handle: int) -> Any:
        """The connection on ``handle`` whose peer's parameter request waits for this host's
        answer (no longer waiting once taken), or None."""
        connection = self.find_le_connection_by_handle(handle)
        if connection is None or getattr(connection, "pairkit_param_req", None) is None:
            return None
        connection.pairkit_param_req = None
        return connection

    def on_hci_le_remote_connection_parameter_request_reply_command(
        self, command: hci.HCI_LE_Remote_Connection_Parameter_Request_Reply_Command
    ) -> hci.HCI_StatusAndConnectionHandleReturnParameters:
        """Vol 4 Part E §7.8.31: the central's host accepts; the central updates the link."""
        connection = self._take_param_request(command.connection_handle)
        if connection is None:
            return _answer(command, hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR)
        self.send_hci_packet(
            hci.HCI_LE_Connection_Update_Complete_Event(
                status=hci.HCI_ErrorCode.SUCCESS,
                connection_handle=connection.handle,
                connection_interval=command.interval_max,
                peripheral_latency=command.max_latency,
                supervision_timeout=command.timeout,
            )
        )
        connection.send_ll_control_pdu(
            ll.ConnectionUpdateInd(
                interval=command.interval_max, latency=command.max_latency,
                timeout=command.timeout,
            )
        )
        return _answer(command, hci.HCI_ErrorCode.SUCCESS)

    def on_hci_le_remote_connection_parameter_request_negative_reply_command(
        self, command: hci.HCI_LE_Remote_Connection_Parameter_Request_Negative_Reply_Command
    ) -> hci.HCI_StatusAndConnectionHandleReturnParameters:
        """Vol 4 Part E §7.8.32: the central's host refuses; the peripheral hears why."""
        connection = self._take_param_request(command.connection_handle)
        if connection is None:
            return _answer(command, hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR)
        connection.send_ll_control_pdu(
            ll.RejectExtInd(
                reject_opcode=ll.ControlPdu.Opcode.LL_CONNECTION_PARAM_REQ,
                error_code=command.reason,
            )
        )
        return _answer(command, hci.HCI_ErrorCode.SUCCESS)

    def on_ll_control_pdu(self, sender_address: hci.Address, packet: ll.ControlPdu) -> None:
        """The procedures above; everything else is bumble's."""
        connection = self.le_connections.get(sender_address)
        if connection is None and isinstance(packet, PhyReq | PhyUpdateInd | ConnectionParamReq):
            return None  # the connection ended while it travelled: lost, as over the air
        if connection is not None:
            try:
                match packet:
                    case PhyReq():
                        return self._on_phy_req(connection, packet)
                    case PhyUpdateInd():
                        return self._on_phy_update_ind(connection, packet)
                    case ConnectionParamReq():
                        return self._on_connection_param_req(connection, packet)
                    case ll.RejectExtInd(
                        reject_opcode=ll.ControlPdu.Opcode.LL_CONNECTION_PARAM_REQ
                    ):
                        self.send_hci_packet(
                            hci.HCI_LE_Connection_Update_Complete_Event(
                                status=packet.error_code,
                                connection_handle=connection.handle,
                                connection_interval=0,
                                peripheral_latency=0,
                                supervision_timeout=0,
                            )
                        )
                        return None
            except core.InvalidArgumentError:
                return None  # the peer left mid-procedure
        return super().on_ll_control_pdu(sender_address, packet)

    def on_hci_disconnect_command(self, command: hci.HCI_Disconnect_Command) -> None:
        """Core 5.4 Vol 4 Part E §7.1.6, also when the peer has left the radio.

        bumble raises when the peer's controller is gone, so the host never hears that its
        disconnection completed; a real link layer gives up on the peer and completes it.
        """
        handle = command.connection_handle
        connection = self.find_le_connection_by_handle(handle)
        if connection is None and not self._has_handle(handle):
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code
            )
            return
        try:
            super().on_hci_disconnect_command(command)
        except core.InvalidArgumentError:
            if connection is not None and connection.peer_address in self.le_connections:
                self.on_le_disconnected(connection, command.reason)

    def _has_handle(self, handle: int) -> bool:
        """Whether ``handle`` names a connection this controller still has (LE, classic, SCO
        or CIS: the kinds bumble's own Disconnect looks up)."""
        return bool(
            self.find_le_connection_by_handle(handle)
            or self.find_classic_connection_by_handle(handle)
            or self.find_classic_sco_link_by_handle(handle)
            or self.central_cis_links.get(handle)
            or self.peripheral_cis_links.get(handle)
        )

    def on_hci_reset_command(
        self, command: hci.HCI_Reset_Command
    ) -> hci.HCI_StatusReturnParameters:
        """Core 5.4 Vol 4 Part E §7.3.2: a reset ends the link layer's state."""
        self.reset_link_state()
        return super().on_hci_reset_command(command)

    def reset_link_state(self, reason: int = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR) -> None:
        """Stop advertising, scanning and connecting; tell every peer its connection timed out."""
        self._stop_radio_activity()
        for connection in list(self.le_connections.values()):
            try:
                connection.send_ll_control_pdu(ll.TerminateInd(reason))
            except core.InvalidArgumentError:
                pass  # the peer is gone already
        self.le_connections.clear()

    def _stop_radio_activity(self) -> None:
        self.le_legacy_advertiser.stop()
        for advertising_set in self.advertising_sets.values():
            advertising_set.stop()
        self.advertising_sets.clear()
        self.le_scan_enable = False
        self.pending_le_connection = None


class VirtualRadio:
    """One shared in-process radio medium (a :class:`PairkitLocalLink`) and its controllers.

    Tests make one radio and open several devices on it
    (``BumbleTransport("virtual", radio=radio)``); every advertisement reaches every
    controller on the radio.  A radio is tied to the event loop its controllers were made in.
    """

    def __init__(self) -> None:
        self.link = PairkitLocalLink()
        self._names = itertools.count(1)
        #: the statuses the next connection attempts fail with (see :meth:`fail_connections`)
        self.connection_failures: list[int] = []

    def fail_connections(
        self, count: int,
        status: int = hci.HCI_ErrorCode.CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR,
    ) -> None:
        """The next ``count`` connection attempts on this radio fail with ``status``, as they
        do over the air under interference ("Connection Failed to be Established", 0x3E)."""
        self.connection_failures.extend([int(status)] * count)

    @property
    def controllers(self) -> list[VirtualController]:
        return [c for c in self.link.controllers if isinstance(c, VirtualController)]

    def create_controller(
        self,
        name: str | None = None,
        *,
        host_source: Any = None,
        host_sink: Any = None,
    ) -> VirtualController:
        """A new controller on this radio (call inside the running loop)."""
        controller = VirtualController(
            name or f"virtual-{next(self._names)}",
            host_source=host_source,
            host_sink=host_sink,
            link=self.link,
        )
        # Before the host reads the buffer sizes at power-on (BLE-NOTES.md, ACL data length).
        controller.le_acl_data_packet_length = VIRTUAL_ACL_LENGTH
        controller.radio = self
        return controller

    def unplug(self, controller: Controller) -> None:
        """Take a controller off the radio without telling anyone: its peers see silence."""
        if isinstance(controller, VirtualController):
            controller._stop_radio_activity()
        else:
            controller.le_legacy_advertiser.stop()
            for advertising_set in controller.advertising_sets.values():
                advertising_set.stop()
        if controller in self.link.controllers:
            self.link.remove_controller(controller)


_default_radios: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VirtualRadio] = (
    weakref.WeakKeyDictionary()
)


def default_radio() -> VirtualRadio:
    """The running loop's shared radio, used by ``bumble:virtual`` when no radio is given."""
    loop = asyncio.get_running_loop()
    radio = _default_radios.get(loop)
    if radio is None:
        radio = _default_radios[loop] = VirtualRadio()
    return radio
