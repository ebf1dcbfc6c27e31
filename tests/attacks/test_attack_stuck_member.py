"""A member that joined before owners were kept and missed more renewals than its owner keeps:
what it costs its owner and itself, session after session (attack review atk18; docs/security.md
"Renewing the cloud secret", atk17 finding 3).

Since atk17 finding 3 such a member still reaches its owner's device, and takes nothing from
it.  These tests pin down what that means over time: by PIN its owner is asked about it at each
join (its proof never counts again), by ``kk`` nobody is; and nothing its owner can do renews
it, not even forgetting it and letting it in again as a member: the record it holds is never
replaced without its proof, and pairkit has no command that leaves a cloud.

Played with the library's host and guest over the in-process loopback link (tests/
renewal_harness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pairkit
from pairkit.pairing.keystore.store import MAX_RETIRED_SECRETS
from pairkit.peers import forget, renew_cloud_secret

from ..renewal_harness import Owner, device, pair

WHERE = "st1"  #: Paul's loopback endpoint (a known peer resumes at the address stored)
PIN_JOIN: dict[str, Any] = {"method": "pin", "pin": "246810", "wants": "member"}


def cloud_of(guest: pairkit.Device, host: pairkit.Device) -> Any:
    (owned,) = [c for c in host.keystore.clouds() if c.role == "owner"]
    guest.keystore.follow()
    return next(c for c in guest.keystore.clouds() if c.cloud_id == owned.cloud_id)


async def stuck_george(tmp_path: Path) -> tuple[pairkit.Device, pairkit.Device, Owner]:
    """George, Paul's member, joined before owners were kept; Paul renewed 17 times since."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    session, error = await pair(paul, owner, george, WHERE, **PIN_JOIN)
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    ks = george.keystore
    with ks.update():
        ks._clouds[cloud_of(george, paul).cloud_id].pop("owner")  # as before session 17
        ks._dirty = True
    with paul.keystore.update():
        for _ in range(MAX_RETIRED_SECRETS + 1):
            renew_cloud_secret(paul.keystore)
    owner.asked.clear()
    return paul, george, owner


async def test_by_pin_its_owner_is_asked_at_every_join_by_kk_never(tmp_path: Path) -> None:
    """Three joins by PIN: Paul is asked three times (George's proof never counts again); two
    by ``kk`` (his stored member grant): nobody asked.  George's record never changes."""
    paul, george, owner = await stuck_george(tmp_path)
    held = cloud_of(george, paul)
    for _ in range(3):
        session, error = await pair(paul, owner, george, WHERE, **PIN_JOIN)
        assert error is None and session is not None and session.role == "member", error
        await session.close()
    assert owner.asked == ["George"] * 3
    owner.asked.clear()
    for _ in range(2):
        session, error = await pair(paul, owner, george, WHERE, target="Paul", method="kk")
        assert error is None and session is not None and session.role == "member", error
        await session.close()
    assert owner.asked == []
    assert cloud_of(george, paul) == held


async def test_forgetting_it_and_letting_it_in_again_renews_nothing(tmp_path: Path) -> None:
    """Paul forgets George (his secret renewed once more) and lets him in again as a member,
    by PIN: George goes on as a member, still on the secret and epoch he held."""
    paul, george, owner = await stuck_george(tmp_path)
    held = cloud_of(george, paul)
    assert forget(paul.keystore, "George").cloud_secret_renewed
    session, error = await pair(paul, owner, george, WHERE, **PIN_JOIN)
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    assert owner.asked == ["George"]
    assert cloud_of(george, paul) == held
    (owned,) = [c for c in paul.keystore.clouds() if c.role == "owner"]
    assert owned.epoch == MAX_RETIRED_SECRETS + 2 and held.epoch == 0
