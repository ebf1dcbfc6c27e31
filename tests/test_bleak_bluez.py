"""BlueZ entries left by bleak's pair() are removed after use (issue 15, item 6).

bleak's ``pair()`` on BlueZ marks the host Trusted, so BlueZ keeps an entry for every host
address a ``clear`` join paired with.  The decision (which entries, when) is
:class:`~transports.bleak_bluez.Leftovers`, tested here alone and inside a real
:class:`~transports.bleak.BleakTransport`: a bleak guest on pairkit's bumble backend that really
pairs (LE Secure Connections) with a bumble host on a virtual radio.  This machine has no BlueZ:
the transport is given BlueZ-shaped device properties, and its one D-Bus call
(:func:`~transports.bleak_bluez.remove_bluez_device`, bleak's ``unpair()``) runs on the bumble
backend, where it forgets the keys.  hw-tests/test_hw_bluez.py checks the real thing on a BlueZ
laptop.
"""

from __future__ import annotations

import asyncio
import platform
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bleak.exc import BleakError

from pairkit.transports.bleak import BleakTransport
from pairkit.transports.bleak_bluez import (
    BluezCleanup,
    BluezEntry,
    Leftovers,
    entry_from_details,
    remove_bluez_device,
)
from pairkit.transports.bumble import VirtualRadio, open_bumble
from pairkit.transports.registry import open_transport

HELLO = b"\x40" + bytes(9)
ADDRESS = "C4:5B:BE:01:02:03"
FRESH = BluezEntry("/org/bluez/hci0/dev_C4_5B_BE_01_02_03", False)


# -- the decision, alone ------------------------------------------------------------------------


def bluez_details(**props: Any) -> dict[str, Any]:
    """A BLEDevice.details as bleak's BlueZ backend makes it."""
    base = {"Address": ADDRESS, "Paired": False, "Bonded": False, "Trusted": False,
            "Adapter": "/org/bluez/hci0"}
    return {"path": FRESH.path, "props": {**base, **props}}


def test_reading_the_state_bluez_reported() -> None:
    assert entry_from_details(bluez_details()) == FRESH
    for prop in ("Paired", "Bonded", "Trusted"):
        assert entry_from_details(bluez_details(**{prop: True})).persistent is True
    # Not BlueZ's shape, or no properties: unknown, never removed.
    assert entry_from_details(object()).persistent is None
    assert entry_from_details({"path": FRESH.path}).persistent is None
    assert entry_from_details({"path": FRESH.path, "props": {"Paired": "yes"}}).persistent is None


def test_an_entry_pairkit_made_persistent_is_removed_once_after_its_link_closed() -> None:
    leftovers = Leftovers()
    leftovers.opened(ADDRESS)
    leftovers.pairing(ADDRESS, FRESH)
    assert leftovers.closed(ADDRESS.lower()) is True  # addresses in either case
    leftovers.opened(ADDRESS)
    assert leftovers.closed(ADDRESS) is False  # a later link that did not pair: nothing


def test_a_device_paired_or_trusted_before_is_never_removed() -> None:
    for before in (BluezEntry(FRESH.path, True), BluezEntry(FRESH.path, None)):
        leftovers = Leftovers()
        leftovers.opened(ADDRESS)
        leftovers.pairing(ADDRESS, before)
        assert leftovers.closed(ADDRESS) is False


def test_a_link_that_never_paired_removes_nothing() -> None:
    leftovers = Leftovers()
    leftovers.opened(ADDRESS)
    assert leftovers.closed(ADDRESS) is False


def test_the_entry_waits_for_the_last_link_to_that_address() -> None:
    leftovers = Leftovers()
    leftovers.opened(ADDRESS)
    leftovers.opened(ADDRESS)
    leftovers.pairing(ADDRESS, FRESH)
    assert leftovers.closed(ADDRESS) is False
    assert leftovers.closed(ADDRESS) is True


# -- inside a transport, over a virtual radio ---------------------------------------------------


class Removals:
    """BlueZ as this test sees it: device properties to report, removals to record."""

    def __init__(self, **props: Any) -> None:
        self.props = props
        self.removed: list[tuple[str, bool]] = []  # (address, connected when removed)
        self.fail = False

    def read(self, details: Any) -> BluezEntry:
        return entry_from_details(bluez_details(**self.props))

    async def remove(self, client: Any) -> None:
        self.removed.append((client.address, client.is_connected))
        if self.fail:
            raise BleakError("org.bluez.Error.DoesNotExist")
        await remove_bluez_device(client)

    @property
    def cleanup(self) -> BluezCleanup:
        return BluezCleanup(read=self.read, remove=self.remove)


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def setup(opened: list[Any], bluez: Removals) -> tuple[Any, BleakTransport]:
    radio = VirtualRadio()
    host = await open_bumble("virtual", radio=radio, rng=random.Random(1).randbytes, name="host")
    opened.append(host)
    guest = await open_transport("bleak:bumble:virtual", radio=radio,
                                 rng=random.Random(2).randbytes, bluez_cleanup=bluez.cleanup)
    opened.append(guest)
    await host.start_advertising(HELLO)
    return host, guest


async def join(host: Any, guest: BleakTransport) -> tuple[Any, Any]:
    accepting = asyncio.ensure_future(host.accept(timeout=10))
    guest_link = await guest.connect(host.address, timeout=10)
    return guest_link, await accepting


async def test_a_clear_join_leaves_no_entry(opened: list[Any]) -> None:
    bluez = Removals()
    host, guest = await setup(opened, bluez)
    guest_link, _ = await join(host, guest)
    await asyncio.wait_for(guest_link.encrypt(), 10)  # bleak's pair(): BlueZ would trust it
    assert guest_link.encrypted
    assert bluez.removed == []  # not while the link is in use
    await guest_link.close()
    assert bluez.removed == [(host.address, False)]  # once, after the disconnection
    # The entry is gone: the next join hears the host again, pairs, and is cleaned up too.
    again, _ = await join(host, guest)
    await asyncio.wait_for(again.encrypt(), 10)
    await again.close()
    assert bluez.removed == [(host.address, False)] * 2


async def test_a_join_without_link_pairing_removes_nothing(opened: list[Any]) -> None:
    bluez = Removals()
    host, guest = await setup(opened, bluez)
    guest_link, _ = await join(host, guest)
    await guest_link.send(b"hello")
    await guest_link.close()
    assert bluez.removed == []


async def test_a_host_the_user_trusted_before_is_left_alone(opened: list[Any]) -> None:
    bluez = Removals(Trusted=True)
    host, guest = await setup(opened, bluez)
    guest_link, _ = await join(host, guest)
    await asyncio.wait_for(guest_link.encrypt(), 10)
    await guest_link.close()
    assert bluez.removed == []


async def test_closing_the_transport_removes_what_its_links_left(opened: list[Any]) -> None:
    bluez = Removals()
    host, guest = await setup(opened, bluez)
    guest_link, _ = await join(host, guest)
    await asyncio.wait_for(guest_link.encrypt(), 10)
    await guest.close()
    assert bluez.removed == [(host.address, False)]


async def test_a_failed_removal_does_not_fail_the_close(opened: list[Any]) -> None:
    bluez = Removals()
    bluez.fail = True
    host, guest = await setup(opened, bluez)
    guest_link, _ = await join(host, guest)
    await asyncio.wait_for(guest_link.encrypt(), 10)
    await guest_link.close()  # no error: the entry stays, as it did before
    assert bluez.removed == [(host.address, False)]
    assert guest_link.closed


def test_the_default_is_on_for_bluez_only() -> None:
    on_linux = platform.system() == "Linux"
    assert (BleakTransport("").bluez_cleanup is not None) is on_linux
    assert (BleakTransport("hci1").bluez_cleanup is not None) is on_linux
    assert BleakTransport("bumble:virtual").bluez_cleanup is None
    assert BleakTransport("", bluez_cleanup=None).bluez_cleanup is None
