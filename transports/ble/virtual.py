"""Linked virtual BLE controllers in one process: bumble's ``Controller`` on a ``LocalLink``.

bumble's virtual controller (0.0.236) differs from a real one in five ways that matter to
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
* **Reset and power loss.**  The virtual HCI Reset keeps connections, advertising and a pending
  connect.  :meth:`VirtualController.reset_link_state` drops them; a dropped connection is
  reported to the peer as a supervision timeout (Core Vol 6 Part B §4.5.2), which is what a
  peer sees when a radio loses power.

``LocalLink`` never times out a peer that vanishes (:meth:`VirtualRadio.unplug` simulates one):
every wait above needs its own deadline.
"""

from __future__ import annotations

import asyncio
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
        return hci.HCI_StatusAndConnectionHandleReturnParameters(
            status=status, connection_handle=command.connection_handle
        )

    def on_hci_disconnect_command(self, command: hci.HCI_Disconnect_Command) -> None:
        """Core 5.4 Vol 4 Part E §7.1.6, also when the peer has left the radio.

        bumble raises when the peer's controller is gone, so the host never hears that its
        disconnection completed; a real link layer gives up on the peer and completes it.
        """
        connection = self.find_le_connection_by_handle(command.connection_handle)
        try:
            super().on_hci_disconnect_command(command)
        except core.InvalidArgumentError:
            if connection is not None and connection.peer_address in self.le_connections:
                self.on_le_disconnected(connection, command.reason)

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
