"""What a BLE link reports about its own security, over bumble virtual controllers
(docs/security.md, rule 5): ``encrypted`` only after an LE Secure Connections pairing,
``mitm_protected`` only when that pairing was protected against a man in the middle; a legacy
pairing is refused for ``clear``.

One matrix: every property is checked with each central pairkit has (:data:`CENTRALS`): a
bumble device (:class:`~transports.bumble.BumbleTransport`) and bleak on pairkit's bumble
backend (:class:`~transports.bleak.BleakTransport`, the code path of a laptop's OS stack),
against a pairkit bumble host.  A few cells exist for one central only, and say why.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from pairkit.transports.registry import open_transport
from tests.ble_harness import CENTRALS

HELLO = b"\x40" + bytes(9)
BUMBLE_ONLY = (
    "a legacy-only central is made by configuring bumble's own SMP; an OS stack, and the bleak "
    "backend that pairs as one, offers Secure Connections whenever the peripheral does"
)


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


@dataclasses.dataclass
class Linked:
    """A pairkit host and a guest of one central kind, connected on one virtual radio."""

    central: str
    host: BumbleTransport
    guest: Any  # BumbleTransport or BleakTransport
    guest_link: Any  # BleLink or BleakLink
    host_link: BleLink


Connect = Callable[..., Awaitable[Linked]]


@pytest.fixture(params=CENTRALS)
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """``await connect(seed, **host_config)``: a host and a ``request.param`` guest, linked."""
    central: str = request.param
    radio = VirtualRadio()
    opened: list[Any] = []

    async def factory(seed: int, **host_config: Any) -> Linked:
        host = BumbleTransport("virtual", radio=radio, rng=random.Random(seed).randbytes,
                               config=BumbleConfig(**host_config))
        opened.append(host)
        await host.open()
        rng = random.Random(seed + 1000).randbytes
        if central == "bumble":
            guest: Any = BumbleTransport("virtual", radio=radio, rng=rng)
            opened.append(guest)
            await guest.open()
        else:
            guest = await open_transport("bleak:bumble:virtual", radio=radio, rng=rng)
            opened.append(guest)
        await host.start_advertising(HELLO)
        address = None
        async for sighting in guest.scan(2.0):
            address = sighting.address
            break
        assert address is not None, "no hello"
        accepting = asyncio.ensure_future(host.accept(timeout=5))
        guest_link = await guest.connect(address, timeout=5)
        return Linked(central, host, guest, guest_link, await accepting)

    yield factory
    for thing in reversed(opened):
        await thing.close()


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


#: the cells for a bumble central only (BUMBLE_ONLY says why)
bumble_only = pytest.mark.parametrize("connect", ["bumble"], indirect=True)


def stock_bumble_smp(transport: BumbleTransport) -> None:
    """Make a pairkit device's SMP behave as stock bumble does (it falls back to legacy)."""
    transport.device.smp_session_proxy = smp.Session


def offers_only_legacy(transport: BumbleTransport, link: BleLink) -> None:
    """Make ``transport`` a legacy-only device (an old phone) on ``link``'s connection."""
    stock_bumble_smp(transport)
    legacy = PairingConfig(sc=False, mitm=False, bonding=False, delegate=PairingDelegate())
    transport._set_pairing_config(link.connection, legacy)


# -- both centrals -------------------------------------------------------------------------------


async def test_just_works_is_encrypted_but_not_mitm_protected(connect: Connect) -> None:
    p = await connect(40)
    assert p.guest_link.encrypted is False and p.host_link.encrypted is False
    await asyncio.wait_for(p.guest_link.encrypt(), 5)  # LE Secure Connections, Just Works
    assert p.guest_link.encrypted
    await eventually(lambda: p.host_link.encrypted)
    assert p.host_link.connection.sc
    assert p.guest_link.mitm_protected is False and p.host_link.mitm_protected is False
    await p.guest_link.send(b"still works")
    assert await p.host_link.recv() == b"still works"
    await p.guest_link.encrypt()  # already encrypted: nothing to do
    assert p.guest_link.encrypted


async def test_numeric_comparison_is_mitm_protected(connect: Connect) -> None:
    host_person, guest_person = Comparer(), Comparer()
    p = await connect(42, pairing_delegate=host_person)
    await asyncio.wait_for(p.guest_link.encrypt(guest_person, mitm=True), 5)
    await eventually(lambda: p.host_link.mitm_protected)
    assert p.guest_link.encrypted and p.guest_link.mitm_protected
    assert guest_person.compared == 1 and host_person.compared == 1


async def test_the_host_asks_the_guest_to_encrypt(connect: Connect) -> None:
    """The host's ``encrypt`` is an SMP Security Request; the guest answers with an SC pairing."""
    p = await connect(44)
    await asyncio.wait_for(p.host_link.encrypt(), 5)
    assert p.host_link.encrypted
    await eventually(lambda: p.guest_link.encrypted)
    assert p.guest_link.mitm_protected is False and p.host_link.mitm_protected is False


async def test_a_host_that_forces_legacy_pairing_is_refused(connect: Connect) -> None:
    """The peripheral offers legacy pairing only: ``encrypt`` raises InsecureLinkError and
    neither link counts as encrypted.  The bumble guest refuses the Pairing Response, so nothing
    is encrypted; the bleak backend pairs as an OS stack does (it accepts the legacy pairing)
    and the link reports the truth."""
    p = await connect(48)
    offers_only_legacy(p.host, p.host_link)
    with pytest.raises(InsecureLinkError, match="legacy"):
        await asyncio.wait_for(p.guest_link.encrypt(), 5)
    assert p.guest_link.encrypted is False and p.guest_link.mitm_protected is False
    assert p.host_link.encrypted is False and p.host_link.mitm_protected is False
    if p.central == "bumble":
        assert not p.guest_link.connection.is_encrypted
    else:
        assert p.host_link.connection.is_encrypted  # bumble says encrypted, pairkit does not


# -- a bumble central only (BUMBLE_ONLY says why) ------------------------------------------------


@bumble_only
async def test_a_legacy_only_central_is_refused_by_the_host(connect: Connect) -> None:
    """A central that offers only legacy pairing (stock bumble SMP, ``sc=False``): the pairkit
    host answers Pairing Failed (Authentication Requirements, SC-only mode), the link stays
    unencrypted, and the host's ``encrypt`` says why."""
    p = await connect(50)
    offers_only_legacy(p.guest, p.guest_link)
    with pytest.raises(ProtocolError) as refused:
        await asyncio.wait_for(p.guest_link.connection.pair(), 5)
    assert refused.value.error_code == smp.ErrorCode.AUTHENTICATION_REQUIREMENTS
    assert not p.host_link.connection.is_encrypted and not p.guest_link.connection.is_encrypted
    assert p.host_link.encrypted is False and p.host_link.mitm_protected is False
    with pytest.raises(InsecureLinkError, match="legacy"):
        await p.host_link.encrypt(timeout=2)


@bumble_only
async def test_the_host_asks_and_a_legacy_only_central_answers(connect: Connect) -> None:
    """The host's ``encrypt`` (a Security Request) meets a legacy-only central: it fails at
    once with InsecureLinkError, not after its timeout."""
    p = await connect(52)
    offers_only_legacy(p.guest, p.guest_link)
    # Not pairkit's answer to a Security Request (pair with SC) but a legacy phone's.
    connection = p.guest_link.connection
    connection.remove_listener(connection.EVENT_SECURITY_REQUEST,
                               p.guest_link._on_security_request)
    attempts: list[asyncio.Task[None]] = []
    connection.on(
        connection.EVENT_SECURITY_REQUEST,
        lambda _auth_req: attempts.append(asyncio.ensure_future(connection.pair())),
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(InsecureLinkError, match="legacy"):
        await p.host_link.encrypt(timeout=5)
    assert asyncio.get_running_loop().time() - started < 2
    assert p.host_link.encrypted is False
    assert len(attempts) == 1
    with pytest.raises(ProtocolError):
        await attempts[0]


@bumble_only
async def test_a_legacy_encrypted_link_is_not_encrypted_for_pairkit(connect: Connect) -> None:
    """Without SC-only mode on either side (stock bumble falls back to legacy), the legacy
    pairing completes and bumble says encrypted (and sets ``connection.sc``/``authenticated``
    on the encryption change): pairkit reports not encrypted on both ends, and refuses."""
    p = await connect(54)
    stock_bumble_smp(p.host)
    offers_only_legacy(p.guest, p.guest_link)
    await asyncio.wait_for(p.guest_link.connection.pair(), 5)
    await eventually(lambda: p.host_link.connection.is_encrypted)
    await asyncio.sleep(0.1)  # the pairing's end reaches the host too
    assert p.guest_link.connection.is_encrypted  # bumble says encrypted ...
    assert p.guest_link.encrypted is False and p.host_link.encrypted is False  # ... pairkit not
    assert p.guest_link.mitm_protected is False and p.host_link.mitm_protected is False
    with pytest.raises(InsecureLinkError, match="legacy"):
        await p.guest_link.encrypt()
    with pytest.raises(InsecureLinkError, match="legacy"):
        await p.host_link.encrypt()


@bumble_only
async def test_sc_after_a_refused_legacy_attempt(connect: Connect) -> None:
    """A refused legacy request leaves no stale SMP session behind: the same central can then
    pair with Secure Connections on the same connection."""
    p = await connect(56)
    offers_only_legacy(p.guest, p.guest_link)
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(p.guest_link.connection.pair(), 5)
    p.guest._set_pairing_config(p.guest_link.connection, pairing_config())
    await asyncio.wait_for(p.guest_link.connection.pair(), 5)
    await eventually(lambda: p.host_link.encrypted)
    assert p.guest_link.encrypted and p.host_link.mitm_protected is False
