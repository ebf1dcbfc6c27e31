"""Resolvable private addresses (issue 15 item 1; Core 5.4 Vol 6 Part B §1.3.2.2).

The host's BLE address is an RPA made with the identity resolving key (IRK) in its keystore,
rotating with its tag; only the IRK ties two of them together.  On virtual controllers: the
controller really uses the RPA (its own state, and what a scanner hears), two rotations give
two RPAs that both resolve, members still recognise the host and reach it by name, and a
controller that refuses RPAs leaves the host on static addresses with a message saying so.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from bumble import crypto, hci
from hypothesis import given
from hypothesis import strategies as st

from pairkit.pairing.errors import ConfigError
from pairkit.pairing.keystore import Keystore
from pairkit.pairing.methods import Method
from pairkit.presence import IRK_SETTING, Presence, discover, identity_resolving_key
from pairkit.transports.ble.privacy import (
    ah,
    is_resolvable,
    resolvable_private_address,
    resolves,
)

from .ble_harness import World, reopen

pytestmark = pytest.mark.timeout(60)


def seeded(seed: int) -> Any:
    draw = random.Random(seed)
    return lambda n: bytes(draw.getrandbits(8) for _ in range(n))


# -- the address (pure) -----------------------------------------------------------------------


def test_ah_matches_the_spec_sample() -> None:
    """Core 5.4 Vol 3 Part H Appendix D.7 (ah sample data)."""
    irk = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
    assert ah(irk, bytes.fromhex("708194")) == bytes.fromhex("0dfbaa")


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=3, max_size=3))
def test_ah_agrees_with_bumble(irk: bytes, prand: bytes) -> None:
    # bumble keeps keys and values little-endian.
    assert ah(irk, prand) == crypto.ah(irk[::-1], prand[::-1])[::-1]


@given(st.binary(min_size=16, max_size=16), st.integers(0, 2**32))
def test_an_rpa_has_the_spec_form_and_resolves_only_under_its_key(irk: bytes, seed: int) -> None:
    address = resolvable_private_address(irk, seeded(seed))
    raw = bytes.fromhex(address.replace(":", ""))
    assert raw[0] >> 6 == 0b01 and is_resolvable(address)
    assert int.from_bytes(raw[:3], "big") & ((1 << 22) - 1) not in (0, (1 << 22) - 1)
    assert resolves(address, irk)
    other = bytes([irk[0] ^ 1]) + irk[1:]
    assert not resolves(address, other)
    # A stranger's forgery: the right form, the hash of another prand.
    forged = raw[:2] + bytes([raw[2] ^ 1]) + raw[3:]
    assert not resolves(":".join(f"{b:02X}" for b in forged), irk)
    # bumble resolves it too (its resolver is what a bumble peer with the IRK would use).
    assert hci.Address(address).is_resolvable


def test_static_and_malformed_addresses_never_resolve() -> None:
    irk = os.urandom(16)
    for address in ("C0:11:22:33:44:55", "00:11:22:33:44:55", "nonsense", "40:11:22"):
        assert not resolves(address, irk)
    with pytest.raises(ConfigError):
        resolvable_private_address(irk, lambda n: bytes(n - 1))
    with pytest.raises(ConfigError):  # prand's random part all 0s, every time
        resolvable_private_address(irk, lambda n: bytes(n))


# -- the keystore's key -----------------------------------------------------------------------


def test_the_irk_is_made_once_and_kept(paul: Keystore) -> None:
    assert paul.setting(IRK_SETTING) is None
    irk = identity_resolving_key(paul)
    assert len(irk) == 16
    assert identity_resolving_key(reopen(paul)) == irk  # saved, and the same next time
    assert irk.hex() not in repr(paul) and irk.hex().upper() not in repr(paul)


# -- on virtual controllers -------------------------------------------------------------------


async def test_two_rotations_give_two_rpas_that_both_resolve(world: World) -> None:
    irk = os.urandom(16)
    host = await world.device()
    scanner = await world.device()
    static = host.address
    assert await host.use_identity_key(irk) == "resolvable"
    first = host.address
    await host.start_advertising(b"hello")
    second = await host.rotate_address()
    assert first != second and first != static
    for address in (first, second):
        assert is_resolvable(address) and resolves(address, irk)
    # The controller itself uses it: its random address, and what a scanner hears.
    assert host.controller is not None and str(host.controller.random_address) == second
    heard = {s.address async for s in scanner.scan(0.2)}
    assert heard == {second}
    # A guest reaches the host at its RPA.
    accepting = host.accept(timeout=5)
    link = await scanner.connect(second, timeout=5)
    await link.send(b"found you")
    assert await (await accepting).recv() == b"found you"


async def test_a_member_recognises_the_host_across_rotations(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await world.start_host(paul)
    irk = identity_resolving_key(reopen(paul))
    assert host.transport.address_privacy == "resolvable"
    member = await world.device()
    seen = []
    for _ in range(2):
        found, _garbage = await discover(member, tv, 0.3)
        (entry,) = [f for f in found if f.address == host.address]
        assert entry.cloud is not None  # recognised by its tag
        seen.append(entry.address)
        await host.presence.open_window(60)  # a new window: new tag, new address
    assert seen[0] != seen[1]
    assert all(resolves(a, irk) for a in seen)
    # And pairs with it at its current RPA (by name after a rotation: tests/test_ble_moved.py).
    guest = await world.device()
    session, _ = await world.join(reopen(tv), guest, host, method=Method.PIN)
    assert session.peer.name == "Paul's phone"


async def test_a_controller_refusing_rpas_keeps_static_addresses_and_says_so(
    world: World, paul: Keystore
) -> None:
    host = await world.device()
    assert host.controller is not None
    refuse = host.controller.on_hci_le_set_random_address_command

    def picky(command: hci.HCI_LE_Set_Random_Address_Command) -> Any:
        if command.random_address.is_resolvable:
            return hci.HCI_StatusReturnParameters(
                hci.HCI_ErrorCode.UNSUPPORTED_FEATURE_OR_PARAMETER_VALUE_ERROR
            )
        return refuse(command)

    host.controller.on_hci_le_set_random_address_command = picky  # type: ignore[method-assign]
    said: list[str] = []
    presence = Presence(host, paul, frozenset({Method.PIN}), visible_for=None,
                        on_change=said.append)
    await presence.start()
    try:
        assert host.address_privacy.startswith("static (this controller refused")
        assert "stop scanning" not in host.address_privacy  # it was not busy
        assert said and "refused a resolvable private address" in said[0]
        address = host.address
        assert int(address[:2], 16) >> 6 == 0b11  # random static
        await presence.open_window(60)
        assert host.address != address and int(host.address[:2], 16) >> 6 == 0b11
    finally:
        await presence.stop()


async def test_without_privacy_the_old_static_rotation_stays(world: World) -> None:
    host = await world.device(private_addresses=False)
    assert host.address_privacy.startswith("static (no identity")
    assert await host.use_identity_key(os.urandom(16)) == "static (private_addresses is off)"
    new = await host.rotate_address()
    assert int(new[:2], 16) >> 6 == 0b11
    with pytest.raises(ConfigError):
        await host.use_identity_key(b"short")


async def test_a_keystore_that_cannot_keep_the_key_leaves_static_addresses(
    world: World, paul: Keystore
) -> None:
    """The host still starts (on static addresses) and says why, rather than failing."""
    host = await world.device()
    paul.path.unlink()  # gone from under the running host
    said: list[str] = []
    presence = Presence(host, paul, frozenset({Method.PIN}), visible_for=None,
                        on_change=said.append)
    await presence.start()
    try:
        assert said and "no identity resolving key could be kept" in said[0]
        assert int(host.address[:2], 16) >> 6 == 0b11
    finally:
        await presence.stop()
