"""A known host that rotated its BLE address is still reached by name (docs/hello.md), and a
returning device tells its id only to a host it recognises as its own (docs/security.md
"Recognising a host across addresses"; attack review atk19p, finding 4: the member holding the
host's address key is tests/attacks/test_attack_privacy_fishing_host.py).

Looking for it nearby, a device asks only the hosts whose address resolves to the host's
address key when it holds one (a member; an address no key can judge, a static one, goes by
the tag), else only the hosts of its own clouds (their hello tag), and every other host only
when the person typed ``--ask-any-host``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import NotFoundError, RefusedError, RemoteError
from pairkit.pairing.methods import Method
from tests.ble_harness import Person, World, make_keystore, on_air, reopen


async def test_a_member_finds_its_host_by_its_address_key_after_it_rotates(
    world: World, paul: Keystore, tv: Keystore, tmp_path: Path
) -> None:
    host = await world.start_host(paul, person=Person(join=Grant(Role.MEMBER)))
    guest = await world.device()
    await world.join(reopen(tv), guest, host, method=Method.PIN)
    assert reopen(tv).get_peer("Paul's phone").irk is not None
    ringo = make_keystore(tmp_path / "ringo" / "keystore.pk", "Ringo's tablet")
    other = await world.start_host(ringo, person=Person())  # a stranger host, also around
    old = host.address
    await host.presence.open_window(60)  # a new window: new tag, new address
    assert host.address != old
    questions_before = len(host.person.questions)
    session, _ = await world.join(reopen(tv), guest, None, method=None, target="Paul's phone")
    assert session.method is Method.RESUME
    assert len(host.person.questions) == questions_before  # no prompt for a known device
    assert other.person.questions == []
    # the new address is remembered for next time
    record = reopen(tv).get_peer("Paul's phone")
    assert record.extra["address"] == host.address


async def test_a_member_finds_a_host_on_static_addresses_by_its_clouds_tag(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    """A host whose controller keeps random static addresses (no RPA: "static (...)") gives its
    members the key all the same, and no key resolves a static address: the member goes by
    its cloud's tag there, as a member without the key does."""
    host = await world.start_host(paul, person=Person(join=Grant(Role.MEMBER)),
                                  device={"private_addresses": False})
    assert host.transport.address_privacy.startswith("static")
    guest = await world.device()
    await world.join(reopen(tv), guest, host, method=Method.PIN)
    assert reopen(tv).get_peer("Paul's phone").irk is not None
    old = host.address
    await host.presence.open_window(60)  # a new window: a new static address
    assert host.address != old
    session, _ = await world.join(reopen(tv), guest, None, method=None, target="Paul's phone")
    assert session.method is Method.RESUME
    assert reopen(tv).get_peer("Paul's phone").extra["address"] == host.address


async def test_a_guest_asks_no_host_it_cannot_recognise_unless_told_to(
    world: World, paul: Keystore, george: Keystore
) -> None:
    """A guest holds no address key and shares no cloud with its host: by default it looks, asks
    nobody, and says what to do; with ``--ask-any-host`` it asks every host heard."""
    host = await world.start_host(paul)
    guest = await world.device()
    await world.join(george, guest, host, method=Method.PIN)
    assert reopen(george).get_peer("Paul's phone").irk is None
    await host.presence.open_window(60)  # a new window: new tag, new address
    questions_before = len(host.person.questions)
    air = on_air(world.radio)
    with pytest.raises(NotFoundError) as failed:
        await world.join(reopen(george), guest, None, method=None, target="Paul's phone")
    said = str(failed.value)
    assert "is it hosting and in range?" in said and "--ask-any-host" in said, said
    assert host.address not in said, said
    assert bytes.fromhex(george.device_id) not in b"".join(air)  # told nobody
    session, _ = await world.join(reopen(george), guest, None, method=None,
                                  target="Paul's phone", ask_any_host=True)
    assert session.method is Method.RESUME
    assert len(host.person.questions) == questions_before  # no prompt for a known device
    assert reopen(george).get_peer("Paul's phone").extra["address"] == host.address


async def test_a_member_without_the_key_asks_only_hosts_of_its_clouds(
    world: World, paul: Keystore, tv: Keystore, tmp_path: Path
) -> None:
    """A record older than the address key: the member finds its host by its cloud's hello
    tag, and tells a stranger host nothing when its host is away."""
    host = await world.start_host(paul, person=Person(join=Grant(Role.MEMBER)))
    guest = await world.device()
    await world.join(reopen(tv), guest, host, method=Method.PIN)
    ks = reopen(tv)
    ks.add_peer(dataclasses.replace(ks.get_peer("Paul's phone"), irk=None))
    ks.save()
    ringo = make_keystore(tmp_path / "ringo" / "keystore.pk", "Ringo's tablet")
    other = await world.start_host(ringo, person=Person(), visible=None)
    await host.presence.open_window(60)  # a new window: new tag, new address
    session, _ = await world.join(reopen(tv), guest, None, method=None, target="Paul's phone")
    assert session.method is Method.RESUME
    host.task.cancel()  # Paul's phone goes away; only Ringo's tablet is around
    air = on_air(world.radio)
    with pytest.raises(NotFoundError) as failed:
        await world.join(reopen(tv), guest, None, method=None, target="Paul's phone")
    assert bytes.fromhex(tv.device_id) not in b"".join(air)
    assert other.person.questions == []
    assert "were not asked" in str(failed.value)


async def test_another_host_nearby_is_not_taken_for_the_known_one(
    world: World, paul: Keystore, george: Keystore, tmp_path: Path
) -> None:
    """A returning guest told to ask every host never makes a stranger host ask its owner
    anything."""
    host = await world.start_host(paul)
    guest = await world.device()
    await world.join(george, guest, host, method=Method.PIN)
    ringo = make_keystore(tmp_path / "ringo" / "keystore.pk", "Ringo's tablet")
    other = await world.start_host(ringo, person=Person())
    host.task.cancel()  # Paul's phone goes away; only Ringo's tablet is around
    with pytest.raises((NotFoundError, RefusedError, RemoteError)):
        await world.join(reopen(george), guest, None, method=None, target="Paul's phone",
                         ask_any_host=True)
    assert other.person.questions == []
