"""What a BLE link reports about its own security, over bumble virtual controllers
(docs/security.md, rule 5): ``encrypted`` only after an LE Secure Connections pairing,
``mitm_protected`` only when that pairing was protected against a man in the middle; a legacy
pairing is refused for ``clear``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from bumble.pairing import PairingConfig, PairingDelegate

from pairkit.pairing.errors import InsecureLinkError
from pairkit.transports.ble.links import BleLink
from pairkit.transports.ble.virtual import VirtualRadio
from pairkit.transports.bumble import BumbleConfig, BumbleTransport

OpenDevice = Callable[..., Awaitable[BumbleTransport]]


class Comparer(PairingDelegate):
    """A person who confirms the six digits of BLE numeric comparison."""

    def __init__(self) -> None:
        super().__init__(
            io_capability=PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT
        )
        self.compared = 0

    async def compare_numbers(self, number: int, digits: int) -> bool:
        self.compared += 1
        return True

    async def confirm(self, auto: bool = False) -> bool:
        return True


@pytest.fixture
async def open_device() -> AsyncIterator[OpenDevice]:
    radio = VirtualRadio()
    opened: list[BumbleTransport] = []

    async def factory(seed: int, **config: Any) -> BumbleTransport:
        transport = BumbleTransport("virtual", radio=radio,
                                    rng=random.Random(seed).randbytes,
                                    config=BumbleConfig(**config))
        opened.append(transport)
        return await transport.open()

    yield factory
    for transport in reversed(opened):
        await transport.close()


async def connect(host: BumbleTransport, guest: BumbleTransport) -> tuple[BleLink, BleLink]:
    await host.start_advertising(b"hello")
    address = None
    async for sighting in guest.scan(2.0):
        address = sighting.address
        break
    assert address is not None, "no hello"
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    guest_link = await guest.connect(address, timeout=5)
    return guest_link, await accepting


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_just_works_is_encrypted_but_not_mitm_protected(open_device: OpenDevice) -> None:
    host, guest = await open_device(40), await open_device(41)
    guest_link, host_link = await connect(host, guest)
    await asyncio.wait_for(guest_link.encrypt(), 5)
    await eventually(lambda: host_link.encrypted)
    assert guest_link.encrypted and guest_link.connection.sc
    assert guest_link.mitm_protected is False and host_link.mitm_protected is False


async def test_numeric_comparison_is_mitm_protected(open_device: OpenDevice) -> None:
    host_person, guest_person = Comparer(), Comparer()
    host = await open_device(42, pairing_delegate=host_person)
    guest = await open_device(43)
    guest_link, host_link = await connect(host, guest)
    await asyncio.wait_for(guest_link.encrypt(guest_person, mitm=True), 5)
    await eventually(lambda: host_link.mitm_protected)
    assert guest_link.encrypted and guest_link.mitm_protected
    assert guest_person.compared == 1 and host_person.compared == 1


async def test_a_legacy_pairing_is_not_encrypted_for_pairkit(open_device: OpenDevice) -> None:
    """A central that offers only legacy pairing gets an encrypted connection from bumble (its
    smp.py falls back), which a passive listener can break: pairkit reports it as not encrypted
    on both ends, and refuses to go on with it."""
    host, guest = await open_device(44), await open_device(45)
    guest_link, host_link = await connect(host, guest)
    legacy = PairingConfig(sc=False, mitm=False, bonding=False, delegate=PairingDelegate())
    guest._set_pairing_config(guest_link.connection, legacy)  # what a legacy-only phone does
    await asyncio.wait_for(guest_link.connection.pair(), 5)
    await eventually(lambda: host_link.connection.is_encrypted)
    await asyncio.sleep(0.1)  # the pairing's end reaches the host too
    assert guest_link.connection.is_encrypted  # bumble says encrypted ...
    assert guest_link.encrypted is False and host_link.encrypted is False  # ... pairkit does not
    assert guest_link.mitm_protected is False and host_link.mitm_protected is False
    with pytest.raises(InsecureLinkError, match="legacy"):
        await guest_link.encrypt()
    with pytest.raises(InsecureLinkError, match="legacy"):
        await host_link.encrypt()
