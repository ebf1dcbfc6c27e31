"""The owner's keystore put back from a backup, behind the epoch its members hold (attack review
atk18; docs/security.md rule 3 and "Renewing the cloud secret").

Paul's keystore is copied; Paul then renews his cloud secret (as a forget does) and George, his
member, takes the renewal at his next session.  Paul's keystore is then put back from the copy
(a restore, as the resume-replay attacks' restored host): Paul holds epoch 0 again, George
epoch 1.  George's proof of the cloud no longer counts at Paul's device, so Paul's device sends
him its secret as to a new member (by his stored member grant, or Paul's yes), at epoch 0.  That
is never taken (rule 3: only newer); but the session should go on, on the secret George holds,
as it does for a member that joined before owners were kept (atk17 finding 3).

Played with the library's host and guest over the in-process loopback link (tests/
renewal_harness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.peers import renew_cloud_secret

from ..renewal_harness import pair, paul_and_george

WHERE = "rb1"  #: Paul's loopback endpoint (a known peer resumes at the address stored)
WAYS: dict[str, dict[str, Any]] = {
    "kk": {"target": "Paul", "method": "kk"},
    "pin": {"method": "pin", "pin": "246810", "wants": "member"},
}


def cloud_of(guest: pairkit.Device, host: pairkit.Device) -> Any:
    """``guest``'s record of ``host``'s cloud, as stored now."""
    (owned,) = [c for c in host.keystore.clouds() if c.role == "owner"]
    guest.keystore.follow()
    return next(c for c in guest.keystore.clouds() if c.cloud_id == owned.cloud_id)


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("renewed_since", [0, 1], ids=["older-epoch", "same-epoch-other-secret"])
@pytest.mark.parametrize("owner_kept", [
    pytest.param(False, id="joined-before-owners-were-kept"),
    pytest.param(True, id="owner-kept"),
])
async def test_a_member_ahead_of_a_restored_owner_still_reaches_it(
    tmp_path: Path, owner_kept: bool, renewed_since: int, way: str,
) -> None:
    """George holds epoch 1; Paul, put back to epoch 0, renews ``renewed_since`` times after
    (once: epoch 1 again, with another secret than George's).  George comes back by ``kk``
    (his stored member grant, nobody asked) or by PIN (Paul says yes).  He reaches Paul as a
    member, and keeps his secret and epoch."""
    paul, george, owner = await paul_and_george(tmp_path, WHERE, member=True)
    if not owner_kept:
        ks = george.keystore
        with ks.update():
            ks._clouds[cloud_of(george, paul).cloud_id].pop("owner")  # as before session 17
            ks._dirty = True
    assert (cloud_of(george, paul).owner is not None) is owner_kept
    backup = (tmp_path / "paul" / "keystore.pk").read_bytes()
    with paul.keystore.update():
        assert renew_cloud_secret(paul.keystore) == 1
    # George takes the renewal by his proof of the retired secret (unasked, by kk).
    session, error = await pair(paul, owner, george, WHERE, target="Paul", method="kk")
    assert error is None and session is not None, error
    await session.close()
    assert cloud_of(george, paul).epoch == 1
    (tmp_path / "paul" / "keystore.pk").write_bytes(backup)  # Paul's keystore put back
    paul.keystore.follow()
    assert cloud_of(george, paul) is not None
    assert [c.epoch for c in paul.keystore.clouds() if c.role == "owner"] == [0]
    with paul.keystore.update():
        for _ in range(renewed_since):
            renew_cloud_secret(paul.keystore)
    held = cloud_of(george, paul)
    mac = george.keystore.cloud_mac(held.cloud_id, b"probe")
    assert mac != paul.keystore.cloud_mac(held.cloud_id, b"probe")
    owner.asked.clear()
    session, error = await pair(paul, owner, george, WHERE, **WAYS[way])
    assert error is None and session is not None, error
    assert session.role == "member"
    await session.close()
    assert owner.asked == ([] if way == "kk" else ["George"])
    # neither Paul's older secret nor his other one at the same epoch is taken
    assert cloud_of(george, paul) == held
    assert george.keystore.cloud_mac(held.cloud_id, b"probe") == mac
