"""A member forgotten while its session is open is written back by the host (attack review
atk16b, session 16; docs/security.md rule 4 and "Renewing the cloud secret").

George is a member of Paul's cloud (he holds the current secret).  He comes back by ``clear``
over an encrypted link (no person asked: his cloud proof admits him) and, as the attacker he
is, holds his last message (his confirm) back; Paul runs ``pairkit forget George`` meanwhile
(the cloud secret is renewed).  Then George confirms.  Before the fix the host's save after a
full pairing refused only a forgotten peer that came back by ``resume``/``kk`` or a stored
grant: a member admitted by his cloud proof was stored again, ``granted member`` and all, so
``forget`` was undone without anyone asked, and his next session handed him the renewed secret.
A stolen device can keep one such session open (stalled up to its step time) at all times, so
the window was the whole time until the owner forgot it.  Now a member the host knew when his
proof was checked counts as a stored grant: the save refuses once he is forgotten.

Played with the library's host and guest over the in-process loopback link claiming link-layer
encryption (as a BLE link after Just Works) and the real ``pairkit forget`` process.

Also here (finding 2, low, liveness; fixed in session 17): a member that missed more renewals
than the host keeps retired secrets of was asked about every time it came back, and never got the
secret: the owner's yes sent a new member's Membership for a cloud the guest holds, which the
guest refused (never overwritten).  Now the guest takes it as the renewal it is (rule 3's one
exception: the proven owner, a cloud held as a member, a higher epoch, signed, the name held).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit import session as runtime_session
from pairkit.pairing.keystore.store import MAX_RETIRED_SECRETS
from pairkit.peers import renew_cloud_secret

from ..cli_helpers import run_cli
from ..renewal_harness import Owner, device, pair


def george_record(paul: pairkit.Device) -> Any:
    ks = paul.keystore
    ks.follow()
    return next((p for p in ks.peers() if p.name == "George"), None)


async def test_a_member_forgotten_while_his_session_is_open_stays_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    session, error = await pair(paul, owner, george, "fr1", pin="246810", wants="member")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    assert george_record(paul) is not None
    owner.asked.clear()
    owner.grant = None  # Paul would refuse George, were he asked

    real_confirm = runtime_session.confirm
    forgot: list[dict[str, Any]] = []

    async def guest_stalls_then_confirms(channel: Any, *, transcript: bytes, first: bool) -> None:
        # Only the guest's side (George, the attacker) waits before its confirm; the owner
        # forgets him meanwhile, with the real command in another process.
        if not first and not forgot:
            result = await run_cli(tmp_path / "paul", "forget", "George", "--json")
            forgot.append(result.ok().json())
        await real_confirm(channel, transcript=transcript, first=first)

    monkeypatch.setattr(runtime_session, "confirm", guest_stalls_then_confirms)
    session, error = await pair(paul, owner, george, "fr2", method="clear")
    if session is not None:
        await session.close()
    assert forgot and forgot[0]["cloud_secret_renewed"] is True
    back = george_record(paul)
    assert back is None or back.extra.get("granted") != "member", (
        "George, forgotten while his session was open, is a member of Paul's cloud again and "
        "nobody was asked"
    )


async def test_a_member_that_missed_every_kept_renewal_is_asked_once_and_comes_back(
    tmp_path: Path,
) -> None:
    """docs/security.md "Renewing the cloud secret": "a member that missed 16 renewals is
    asked about as a stranger once".  George, a member, misses 17 renewals (as 17 forgets of
    other members given the secret make them); he comes back by PIN and Paul says yes.  Then
    he holds the current secret (same name, still a member) and comes back unasked."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    session, error = await pair(paul, owner, george, "ov1", pin="246810", wants="member")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    # The join kept who George joined the cloud from, by Paul's full id: what binds the
    # renewal below, made without George's proof (rule 3).
    george.keystore.follow()
    (joined,) = [c for c in george.keystore.clouds() if c.role == "member"]
    assert joined.owner == paul.keystore.device_id
    ks = paul.keystore
    for _ in range(MAX_RETIRED_SECRETS + 1):
        with ks.update():
            assert renew_cloud_secret(ks) is not None
    owner.asked.clear()
    for where in ("ov2", "ov3"):
        session, error = await pair(paul, owner, george, where, pin="246810", wants="member")
        if session is not None:
            await session.close()
    assert owner.asked == ["George"], "Paul is asked about his member every time"
    (owned,) = [c for c in paul.keystore.clouds() if c.role == "owner"]
    george.keystore.follow()
    held = next(c for c in george.keystore.clouds() if c.cloud_id == owned.cloud_id)
    assert held.epoch == owned.epoch, "George never gets the renewed secret"
    assert (held.role, held.name, held.owner) == ("member", owned.name, paul.keystore.device_id)
