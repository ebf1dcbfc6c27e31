"""Attack review atk23, finding F5: a CloudHello's size told how many clouds a device holds.

A returning device hinted each cloud it holds, up to MAX_HINTS, 8 bytes each: the hello's size
said how many, the same at every return, and a listener in radio range followed the device by
it across the host's address rotations.  Now every hello carries MAX_HINTS hints, random
fillers among them (docs/protocol.md §10, docs/security.md rule 8).  Over bumble virtual radios:
the same member comes back holding 1, 4 and more than MAX_HINTS clouds; the listener hears
PDUs of the same sizes each time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pairkit.pairing.cloud import MAX_HINTS
from pairkit.pairing.negotiation import Method
from tests.ble_harness import (
    World,
    comes_back,
    make_keystore,
    make_member,
    on_air,
    paired_then_private,
    reopen,
)

pytestmark = pytest.mark.timeout(90)


async def _sizes_on_air(tmp: Path, extra_clouds: int) -> list[int]:
    """The sizes of the PDUs a listener hears while Paul's TV, a member of Paul's cloud and
    of ``extra_clouds`` others, comes back to Paul's private host."""
    world = World()
    try:
        paul = make_keystore(tmp / "paul" / "keystore.pk", "Paul's phone")
        tv = make_keystore(tmp / "tv" / "keystore.pk", "Paul's TV")
        make_member(paul, tv)
        host = await paired_then_private(world, paul, tv)
        ks = reopen(tv)
        for i in range(extra_clouds):
            ks.set_cloud(os.urandom(8).hex(), os.urandom(32), name=f"other {i}", role="member")
        ks.save()
        air = on_air(world.radio)
        assert await comes_back(world, tv, host, paul) is Method.RESUME
        return [len(pdu) for pdu in air]
    finally:
        await world.close()


async def test_a_listener_hears_the_same_sizes_whatever_the_clouds_held(tmp_path: Path) -> None:
    heard = {n: await _sizes_on_air(tmp_path / str(n), n) for n in (0, 3, MAX_HINTS + 1)}
    assert heard[0], "nothing was heard on air"
    assert heard[3] == heard[0], heard
    assert heard[MAX_HINTS + 1] == heard[0], heard
