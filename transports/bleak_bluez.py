"""BlueZ device entries that pairkit's link-layer pairing leaves behind, removed after use.

bleak's ``pair()`` on BlueZ first sets the device's ``Trusted`` property, then calls
``Device1.Pair`` (bleak 3.1, ``backends/bluezdbus/client.py``: ``_pair``).  A trusted device is
kept: BlueZ writes it under ``/var/lib/bluetooth/ADAPTER/ADDRESS/`` and lists it in
``bluetoothctl devices`` for good, where an untrusted, unpaired device it only saw or connected
to is dropped on its own (``TemporaryTimeout``, 30 s by default in ``main.conf``).  pairkit
hosts change their address (resolvable private addresses, issue 15 item 1) and pairkit's
link-layer pairing (method ``clear``) makes no bond worth keeping (no bonding, docs/security.md
rule 5), so every ``clear`` join would leave one more stale entry.

The rule, here as data so it can be tested without BlueZ (:class:`Leftovers`):

* an entry is pairkit's to remove only if pairkit's pairing made it persistent: the device was
  neither Paired, Bonded nor Trusted when pairkit called ``pair()`` (a device the user paired
  in the system settings is never touched; an entry whose state cannot be read is left alone);
* it is removed once the last of this transport's links to that address has closed (removing a
  device disconnects it), and once only.

The one D-Bus call is :func:`remove_bluez_device`: bleak's own ``BleakClient.unpair()``, which on
BlueZ is ``org.bluez.Adapter1.RemoveDevice`` on the client's adapter with the device's object
path (bleak 3.1, ``backends/bluezdbus/client.py``: ``unpair``); it works after the
disconnection.  A process killed before a link closed leaves its entry: ``bluetoothctl remove
ADDRESS`` clears it.  macOS and Windows keep no such entry for pairkit (CoreBluetooth has no
``pair()``; on Windows pairkit leaves the system's pairing list alone).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BluezCleanup",
    "BluezEntry",
    "Leftovers",
    "entry_from_details",
    "remove_bluez_device",
]

logger = logging.getLogger(__name__)

#: Device1 properties that make BlueZ keep a device (bleak's ``Device1`` type, BlueZ's
#: doc/org.bluez.Device.rst).
PERSISTENT = ("Paired", "Bonded", "Trusted")


@dataclass(frozen=True)
class BluezEntry:
    """What BlueZ said about a device just before pairkit paired with it."""

    path: str | None  #: the D-Bus object path, ``/org/bluez/hci0/dev_AA_BB_...``
    #: Paired, Bonded or Trusted already; None: unknown (not BlueZ, or no properties)
    persistent: bool | None


def entry_from_details(details: Any) -> BluezEntry:
    """The :class:`BluezEntry` in a ``BLEDevice.details`` from bleak's BlueZ backend
    (``{"path": ..., "props": {Device1 properties}}``); unknown for anything else."""
    if not isinstance(details, Mapping):
        return BluezEntry(None, None)
    path = details.get("path")
    props = details.get("props")
    if not isinstance(props, Mapping) or not all(isinstance(props.get(k), bool | None)
                                                 for k in PERSISTENT):
        return BluezEntry(path if isinstance(path, str) else None, None)
    persistent = any(bool(props.get(k)) for k in PERSISTENT)
    return BluezEntry(path if isinstance(path, str) else None, persistent)


@dataclass
class Leftovers:
    """Which BlueZ entries to remove, and when (module docstring); no D-Bus, no I/O.

    The transport reports each link it opens and closes and each pairing it starts, by the
    peer's address; :meth:`closed` answers whether that entry is to be removed now.
    """

    #: addresses whose entry pairkit's pairing made persistent, not removed yet
    made: set[str] = field(default_factory=set)
    #: open links per address
    links: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _key(address: str) -> str:
        return address.upper()

    def opened(self, address: str) -> None:
        key = self._key(address)
        self.links[key] = self.links.get(key, 0) + 1

    def pairing(self, address: str, before: BluezEntry) -> None:
        """pairkit is about to call ``pair()``; ``before`` is the entry as it is now.

        bleak sets Trusted before it pairs, so a pairing that fails also leaves the entry."""
        if before.persistent is False:
            self.made.add(self._key(address))

    def closed(self, address: str) -> bool:
        """A link to ``address`` closed: True if its entry is to be removed now."""
        key = self._key(address)
        left = self.links.get(key, 0) - 1
        if left > 0:
            self.links[key] = left
            return False
        self.links.pop(key, None)
        if key in self.made:
            self.made.discard(key)
            return True
        return False


async def remove_bluez_device(client: Any) -> None:
    """Remove ``client``'s device from BlueZ: ``org.bluez.Adapter1.RemoveDevice(path)``,
    through bleak's ``BleakClient.unpair()`` (bleak 3.1, BlueZ backend)."""
    await client.unpair()


@dataclass(frozen=True)
class BluezCleanup:
    """How a transport reads a device's BlueZ state and removes its entry; replaceable in
    tests, where there is no BlueZ."""

    read: Callable[[Any], BluezEntry] = entry_from_details
    remove: Callable[[Any], Awaitable[None]] = remove_bluez_device
