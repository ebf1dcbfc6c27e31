"""Attack review atk19p, finding 4 (fixed in session 20): a stranger's host fished a returning
device's permanent id out of it.

``pairkit join NAME`` of a known BLE host that is not at its last address looks for it nearby
(``cli.flows._nearby_hosts``).  It used to try first the addresses its address key resolves,
then hosts of its clouds, then *every other pairkit host heard*, and joined each in turn as the
known device it is: its ``JoinRequest`` carried its device id in the clear (``4 device_id``,
``5 reconnect``; docs/protocol.md §10; sealed to its known host's key since session 22: a stranger's
host cannot read it), before any pairing (a host that does not know the id
answers "not found"; one that claims to know it gets ``resume``'s ``ResumeMessage``, which
names both devices, §8).  So anyone who advertised a pairkit hello (10 random bytes make a
valid private one) near a device whose host was away, or whose host it could outshout, was
handed that device's permanent id, although the device is a member holding its host's
address key and could tell its host from the stranger before saying anything.  Encrypting the
link layer would not help: this listener is the far end.  Now a device holding its host's
address key asks only the addresses that resolve to it (the no-key case:
tests/test_ble_moved.py).

Over bumble virtual controllers: Paul's phone, then away; Ringo's tablet, a real unmodified
pairkit host, is the only host around; what reaches it is on air.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import NotFoundError
from pairkit.pairing.negotiation import Method
from tests.ble_harness import Person, World, make_keystore, on_air, reopen

pytestmark = pytest.mark.timeout(60)


async def test_a_member_looking_for_its_host_tells_another_host_nothing(
    world: World, paul: Keystore, tv: Keystore, tmp_path: Path
) -> None:
    host = await world.start_host(paul, person=Person(join=Grant(Role.MEMBER)))
    guest = await world.device()
    await world.join(reopen(tv), guest, host, method=Method.PIN)
    assert reopen(tv).get_peer("Paul's phone").irk is not None  # it can recognise its host
    ringo = make_keystore(tmp_path / "ringo" / "keystore.pk", "Ringo's tablet")
    other = await world.start_host(ringo, person=Person(), visible=None)
    host.task.cancel()  # Paul's phone goes away; only Ringo's tablet is around
    air = on_air(world.radio)
    with pytest.raises(NotFoundError) as failed:
        await world.join(reopen(tv), guest, None, method=None, target="Paul's phone")
    assert other.person.questions == []
    # what to do, and that it left hosts out, without a word of whom
    said = str(failed.value)
    assert "is it hosting and in range?" in said and "were not asked" in said, said
    assert other.address not in said and ringo.device_id[:8] not in said, said
    heard = b"".join(air)
    told = [what for what, value in (("the member's device id", bytes.fromhex(tv.device_id)),
                                     ("its host's device id", bytes.fromhex(paul.device_id)))
            if value in heard]
    assert told == [], f"told a host that is not its own: {', '.join(told)}"
