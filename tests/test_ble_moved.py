"""A known host that rotated its BLE address is still reached by name (docs/hello.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.errors import NotFoundError, RefusedError, RemoteError
from pairkit.pairing.methods import Method
from tests.ble_harness import Person, World, make_keystore, reopen


async def test_a_known_host_is_found_again_after_its_address_rotates(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul)
    guest = await world.device()
    await world.join(george, guest, host, method=Method.PIN)
    old = host.address
    await host.presence.open_window(60)  # a new window: new tag, new address
    assert host.address != old
    questions_before = len(host.person.questions)
    session, _ = await world.join(reopen(george), guest, None, method=None,
                                  target="Paul's phone")
    assert session.method is Method.RESUME
    assert len(host.person.questions) == questions_before  # no prompt for a known device
    # the new address is remembered for next time
    record = reopen(george).get_peer("Paul's phone")
    assert record.extra["address"] == host.address


async def test_another_host_nearby_is_not_taken_for_the_known_one(
    world: World, paul: Keystore, george: Keystore, tmp_path: Path
) -> None:
    """A returning guest never makes a stranger host ask its owner anything."""
    host = await world.start_host(paul)
    guest = await world.device()
    await world.join(george, guest, host, method=Method.PIN)
    ringo = make_keystore(tmp_path / "ringo" / "keystore.pk", "Ringo's tablet")
    other = await world.start_host(ringo, person=Person())
    host.task.cancel()  # Paul's phone goes away; only Ringo's tablet is around
    with pytest.raises((NotFoundError, RefusedError, RemoteError)):
        await world.join(reopen(george), guest, None, method=None, target="Paul's phone")
    assert other.person.questions == []
