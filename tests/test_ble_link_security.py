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
from bumble import smp
from bumble.core import ProtocolError
from bumble.pairing import PairingConfig, PairingDelegate

from pairkit.pairing.errors import InsecureLinkError
from pairkit.transports.ble.links import BleLink, pairing_config
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


def stock_bumble_smp(transport: BumbleTransport) -> None:
    """Make a pairkit device's SMP behave as stock bumble does (it falls back to legacy)."""
    transport.device.smp_session_proxy = smp.Session


def offers_only_legacy(transport: BumbleTransport, link: BleLink) -> None:
    """Make ``transport`` a legacy-only device (an old phone) on ``link``'s connection."""
    stock_bumble_smp(transport)
    legacy = PairingConfig(sc=False, mitm=False, bonding=False, delegate=PairingDelegate())
    transport._set_pairing_config(link.connection, legacy)


async def test_a_legacy_only_central_is_refused_by_the_host(open_device: OpenDevice) -> None:
    """A central that offers only legacy pairing (stock bumble SMP, ``sc=False``): the pairkit
    host answers Pairing Failed (Authentication Requirements, SC-only mode), the link stays
    unencrypted, and the host's ``encrypt`` says why."""
    host, guest = await open_device(44), await open_device(45)
    guest_link, host_link = await connect(host, guest)
    offers_only_legacy(guest, guest_link)
    with pytest.raises(ProtocolError) as refused:
        await asyncio.wait_for(guest_link.connection.pair(), 5)
    assert refused.value.error_code == smp.ErrorCode.AUTHENTICATION_REQUIREMENTS
    assert not host_link.connection.is_encrypted and not guest_link.connection.is_encrypted
    assert host_link.encrypted is False and host_link.mitm_protected is False
    with pytest.raises(InsecureLinkError, match="legacy"):
        await host_link.encrypt(timeout=2)


async def test_the_host_asks_and_a_legacy_only_central_answers(open_device: OpenDevice) -> None:
    """The host's ``encrypt`` (a Security Request) meets a legacy-only central: it fails at
    once with InsecureLinkError, not after its timeout."""
    host, guest = await open_device(46), await open_device(47)
    guest_link, host_link = await connect(host, guest)
    offers_only_legacy(guest, guest_link)
    # Not pairkit's answer to a Security Request (pair with SC) but a legacy phone's.
    connection = guest_link.connection
    connection.remove_listener(connection.EVENT_SECURITY_REQUEST, guest_link._on_security_request)
    attempts: list[asyncio.Task[None]] = []
    connection.on(
        connection.EVENT_SECURITY_REQUEST,
        lambda _auth_req: attempts.append(asyncio.ensure_future(connection.pair())),
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(InsecureLinkError, match="legacy"):
        await host_link.encrypt(timeout=5)
    assert asyncio.get_running_loop().time() - started < 2
    assert host_link.encrypted is False
    assert len(attempts) == 1
    with pytest.raises(ProtocolError):
        await attempts[0]


async def test_a_guest_whose_host_forces_legacy_refuses(open_device: OpenDevice) -> None:
    """The peripheral answers with legacy pairing only: the pairkit guest refuses the Pairing
    Response, ``encrypt`` raises InsecureLinkError and the link is not encrypted."""
    host, guest = await open_device(48), await open_device(49)
    guest_link, host_link = await connect(host, guest)
    offers_only_legacy(host, host_link)
    with pytest.raises(InsecureLinkError, match="legacy"):
        await asyncio.wait_for(guest_link.encrypt(), 5)
    assert not guest_link.connection.is_encrypted
    assert guest_link.encrypted is False and host_link.encrypted is False


async def test_a_legacy_encrypted_link_is_not_encrypted_for_pairkit(
    open_device: OpenDevice,
) -> None:
    """Without SC-only mode on either side (stock bumble falls back to legacy), the legacy
    pairing completes and bumble says encrypted (and sets ``connection.sc``/``authenticated``
    on the encryption change): pairkit reports not encrypted on both ends, and refuses."""
    host, guest = await open_device(50), await open_device(51)
    guest_link, host_link = await connect(host, guest)
    stock_bumble_smp(host)
    offers_only_legacy(guest, guest_link)
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


async def test_sc_after_a_refused_legacy_attempt(open_device: OpenDevice) -> None:
    """A refused legacy request leaves no stale SMP session behind: the same central can then
    pair with Secure Connections on the same connection."""
    host, guest = await open_device(52), await open_device(53)
    guest_link, host_link = await connect(host, guest)
    offers_only_legacy(guest, guest_link)
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(guest_link.connection.pair(), 5)
    guest._set_pairing_config(guest_link.connection, pairing_config())
    await asyncio.wait_for(guest_link.connection.pair(), 5)
    await eventually(lambda: host_link.encrypted)
    assert guest_link.encrypted and host_link.mitm_protected is False
