"""Resolvable private addresses (issue 15 item 1; Core 5.4 Vol 6 Part B §1.3.2.2).

The host's BLE address is an RPA made with the identity resolving key (IRK) in its keystore,
rotating with its tag; only the IRK ties two of them together.  On virtual controllers: the
controller really uses the RPA (its own state, and what a scanner hears), two rotations give
two RPAs that both resolve, members still recognise the host and reach it by name, and a
controller that refuses RPAs leaves the host on static addresses with a message saying so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from bumble import crypto, hci
from hypothesis import given
from hypothesis import strategies as st

from pairkit.pairing import wire
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import ConfigError, ProtocolError
from pairkit.pairing.keystore import Keystore, Peer
from pairkit.pairing.methods import Method
from pairkit.pairing.service import Membership, check_membership
from pairkit.presence import (
    IRK_SETTING,
    Found,
    Presence,
    discover,
    identity_resolving_key,
    renew_identity_resolving_key,
)
from pairkit.transports.ble.privacy import (
    ah,
    is_resolvable,
    resolvable_private_address,
    resolves,
)
from pairkit.transports.registry import open_transport

from .ble_harness import KEYSTORE_PIN, HostRun, World, make_keystore, reopen
from .cli_helpers import radio_process, run_cli

pytestmark = pytest.mark.timeout(60)


def seeded(seed: int) -> Any:
    draw = random.Random(seed)
    return lambda n: bytes(draw.getrandbits(8) for _ in range(n))


# -- the address (pure) -----------------------------------------------------------------------


AH_VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "ble-ah.json").read_text(encoding="utf-8"))["vectors"]


@pytest.mark.parametrize("vector", AH_VECTORS, ids=[v["name"] for v in AH_VECTORS])
def test_ah_matches_the_spec_sample(vector: dict[str, str]) -> None:
    """Core 5.4 Vol 3 Part H Appendix D.7 (ah sample data, tests/vectors/ble-ah.json); and the
    address made of it resolves under that key alone."""
    irk, prand = bytes.fromhex(vector["irk"]), bytes.fromhex(vector["prand"])
    assert ah(irk, prand) == bytes.fromhex(vector["hash"])
    address = ":".join(f"{b:02X}" for b in prand + bytes.fromhex(vector["hash"]))
    assert resolves(address, irk) and not resolves(address, bytes(16))


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


# -- recognising a host across its addresses (its address key, handed to members) -------------


def _of(irk: bytes, found: list[Found]) -> list[Found]:
    """The entries whose every address is one of the host's (made with ``irk``)."""
    return [f for f in found if all(resolves(a, irk) for a in f.addresses)]


async def _rotating(host: HostRun, every: float = 0.1) -> None:
    """The host rotates its address (and re-advertises) every ``every`` s from now on."""
    host.presence.rotate_every = every
    await host.presence.open_window(60)


def test_a_membership_carries_an_address_key_to_members_only() -> None:
    """check_membership: a guest grant with an address key is a protocol error (a host gives
    it only to members); a member's key is kept out of repr."""
    irk = os.urandom(16)
    with pytest.raises(ProtocolError, match="members only"):
        check_membership(Membership(role=Role.GUEST, expires=10, irk=irk), host_id=bytes(16),
                         host_signing=bytes(32), me=bytes(16), session_fingerprint="x",
                         held=())
    member = Membership(role=Role.MEMBER, cloud_id="00" * 8, irk=irk)
    assert check_membership(member, host_id=bytes(16), host_signing=bytes(32), me=bytes(16),
                            session_fingerprint="x", held=()) is None
    assert irk.hex() not in repr(member) and repr(irk) not in repr(member)
    assert wire.decode(member.encode(), Membership).irk == irk


async def test_a_member_sees_one_device_across_rotations_a_stranger_and_a_guest_do_not(
    world: World, paul: Keystore, tv: Keystore, george: Keystore, tmp_path: Path
) -> None:
    host = await world.start_host(paul)
    # Paul's TV (a member of Paul's cloud) and George (a stranger, let in as a guest) pair.
    await world.join(reopen(tv), await world.device(), host, method=Method.PIN)
    await world.join(reopen(george), await world.device(), host, method=Method.PIN)
    irk = identity_resolving_key(reopen(paul))
    tv_now, george_now = reopen(tv), reopen(george)
    assert tv_now.get_peer("Paul's phone").irk == irk  # given to the member
    assert george_now.get_peer("Paul's phone").irk is None  # never to a guest
    assert reopen(paul).get_peer("Paul's TV").extra.get("irk_given") is True
    assert reopen(paul).get_peer("George's phone").extra.get("irk_given") is None
    stranger = make_keystore(tmp_path / "eve" / "keystore.pk", "Eve's phone")

    await _rotating(host)
    member_radio, guest_radio, stranger_radio = [await world.device() for _ in range(3)]
    (by_member, _), (by_guest, _), (by_stranger, _) = await asyncio.gather(
        discover(member_radio, tv_now, 1.0), discover(guest_radio, george_now, 1.0),
        discover(stranger_radio, stranger, 1.0),
    )
    # The member: one entry, the device named, every address it was heard at.
    (entry,) = _of(irk, by_member)
    assert entry.device == reopen(paul).device_id and entry.device_name == "Paul's phone"
    assert len(entry.addresses) >= 2, "the host did not rotate during the scan"
    assert entry.address == entry.addresses[-1] and entry.cloud is not None
    as_json = entry.as_json()
    assert as_json["device"] == {"id": entry.device, "name": "Paul's phone"}
    assert as_json["addresses"] == list(entry.addresses)
    # The guest and the stranger: one entry per address, nothing linking them.
    for found in (by_guest, by_stranger):
        rows = _of(irk, found)
        assert len(rows) >= 2, "the host did not rotate during the scan"
        assert all(f.device is None and len(f.addresses) == 1 for f in rows)
        assert len({f.address for f in rows}) == len(rows)
        assert all(r.as_json()["device"] is None for r in rows)


async def test_forged_addresses_are_not_taken_for_the_host(
    world: World, paul: Keystore, tv: Keystore, george: Keystore
) -> None:
    """An advert whose address has the host's prand but a hash under another key, one from an
    RPA under a made-up key, and an address two held keys resolve (a peer that handed over the
    host's key as its own) are never grouped with the host, nor attributed to anyone."""
    host = await world.start_host(paul)
    await world.join(reopen(tv), await world.device(), host, method=Method.PIN)
    irk = identity_resolving_key(reopen(paul))
    prand = bytes.fromhex(host.address.replace(":", ""))[:3]
    # Mallory's two devices advertise a real hello of their own (George's keystore).
    forged_hash = await world.device()
    assert await forged_hash.use_identity_key(os.urandom(16)) == "resolvable"
    copied = await forged_hash.rotate_address(rng=lambda n: prand[:n])
    assert copied[:8] == host.address[:8] and not resolves(copied, irk)
    other_key = await world.device()
    await other_key.use_identity_key(os.urandom(16))
    for device in (forged_hash, other_key):
        presence = Presence(device, george, frozenset({Method.PIN}), visible_for=60)
        await device.start_advertising(presence.payload())
    member = await world.device()
    found, _ = await discover(member, reopen(tv), 0.4)
    by_address = {a: f for f in found for a in f.addresses}
    assert {copied, other_key.address, host.address} <= set(by_address)
    assert by_address[host.address].device is not None
    for address in (copied, other_key.address):
        assert by_address[address].device is None and by_address[address].addresses == (address,)
    # A device that paired with the TV earlier handed it Paul's key as its own: now two held
    # keys resolve Paul's addresses, so neither is named.
    with (tv_now := reopen(tv)).update():
        mallory = Peer.new("Mallory's phone", os.urandom(32), now=1)
        tv_now.add_peer(dataclasses.replace(mallory, irk=irk))
    found, _ = await discover(member, reopen(tv), 0.3)
    assert all(f.device is None for f in _of(irk, found))


async def test_forgetting_a_member_renews_the_key_and_the_running_host_moves_to_it(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    """``pairkit forget`` (another process) renews the key; the host's next rotation uses the
    new one, so the old key (the forgotten member's) resolves none of its new addresses; a
    member kept gets the new key at its next session."""
    host = await world.start_host(paul)
    await world.join(reopen(tv), await world.device(), host, method=Method.PIN)
    old = identity_resolving_key(reopen(paul))
    assert resolves(host.address, old)
    other = reopen(paul)  # another process: what `pairkit forget` does for a key holder
    with other.update():
        renew_identity_resolving_key(other)
    new = identity_resolving_key(reopen(paul))
    assert new != old
    await host.presence.open_window(60)  # its next rotation
    assert resolves(host.address, new) and not resolves(host.address, old)
    found, _ = await discover(await world.device(), reopen(tv), 0.3)
    assert [f.device for f in found] == [None]  # the TV's key is the old one now
    await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                     target="Paul's phone", address=host.address)
    assert reopen(tv).get_peer("Paul's phone").irk == new
    found, _ = await discover(await world.device(), reopen(tv), 0.3)
    assert [f.device for f in found] == [reopen(paul).device_id]


async def test_discover_json_groups_a_known_device_across_rotations(
    paul: Keystore, tv: Keystore, tmp_path: Path
) -> None:
    """``pairkit discover --json`` (a process, on a radio process) of a member holding the
    host's key: one device with its addresses; of a stranger: one row per address."""
    irk = identity_resolving_key(paul)
    with tv.update():  # as a member's pairing leaves it (the delivery is tested above)
        tv.add_peer(dataclasses.replace(Peer.new("Paul's phone", paul.static_public, now=1),
                                        irk=irk))
    stranger = make_keystore(tmp_path / "eve" / "keystore.pk", "Eve's phone")
    async with radio_process(3) as radios:
        transport = await open_transport(radios[0])
        presence = Presence(transport, paul, frozenset({Method.PIN}), visible_for=60,
                            rotate_every=0.15)
        try:
            await presence.start()
            args = ("discover", "--timeout", "1.5", "--no-names", "--json")
            by_member, by_stranger = await asyncio.gather(
                run_cli(tv.path.parent, *args, "-t", radios[1], pin=KEYSTORE_PIN),
                run_cli(stranger.path.parent, *args, "-t", radios[2], pin=KEYSTORE_PIN),
            )
        finally:
            await presence.stop()
            await transport.close()
    member_rows = by_member.ok().json()["devices"]
    (row,) = member_rows
    assert row["device"] == {"id": paul.device_id, "name": "Paul's phone"}
    assert len(row["addresses"]) >= 2 and row["address"] == row["addresses"][-1]
    assert all(resolves(a, irk) for a in row["addresses"])
    stranger_rows = by_stranger.ok().json()["devices"]
    assert len(stranger_rows) >= 2
    assert all(r["device"] is None and r["addresses"] == [r["address"]] for r in stranger_rows)


async def test_pairkit_forget_renews_the_key_only_when_the_peer_held_it(
    paul: Keystore, tmp_path: Path
) -> None:
    """The command's part: forgetting a member that was given the key renews it (and says so);
    forgetting a guest, which never had it, leaves it."""
    old = identity_resolving_key(paul)
    with paul.update():
        for name, given in (("Paul's TV", True), ("George's phone", False)):
            peer = Peer.new(name, os.urandom(32), now=1,
                            extra={"granted": "member" if given else "guest"}
                            | ({"irk_given": True} if given else {}))
            paul.add_peer(peer)
    home = paul.path.parent
    guest = await run_cli(home, "forget", "George's phone", "--json", pin=KEYSTORE_PIN)
    assert guest.ok().json()["address_key_renewed"] is False
    assert identity_resolving_key(reopen(paul)) == old
    member = await run_cli(home, "forget", "Paul's TV", pin=KEYSTORE_PIN)
    assert "address key was renewed" in member.ok().err
    new = identity_resolving_key(reopen(paul))
    assert len(new) == 16 and new != old
    assert new.hex() not in member.err and old.hex() not in member.err + guest.out
