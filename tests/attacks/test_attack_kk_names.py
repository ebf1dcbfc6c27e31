"""The name a ``kk`` pairing proves (attack review atk15b, session 15; docs/security.md, rule 6).

``CloudHost.check_name`` holds a guest that the owner was asked about to the name its pairing
proved.  ``resume`` proves the host's stored record (its name included); ``kk`` proves the
stored *key*, but the name its identity payload carries is whatever the guest writes there
(``_peer_from_identity``).  So George, a device Paul's host knows under "George", asks to join
as "Paul's laptop" and pairs by ``kk`` with his own keys and an identity that says "Paul's
laptop": the name check compared two names George chose, the owner's yes made George a member
with no PIN, code or QR, and his record was renamed "Paul's laptop".  Fixed (atk15b): ``kk``
proves the stored record's name, as ``resume`` does, on both sides.

Played over TCP against the library's ``Host``, the guest driven by hand from the real machines
(tests/attack_harness.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pairkit
from pairkit import peers as store
from pairkit.pairing.cloud import Role
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method

from ..attack_harness import STEP, evil_join
from ..known_device_harness import (
    PAULS_LAPTOP,
    accepting,
    address_of,
    device,
    paul_joined_georges_host,
)
from ..known_device_harness import TrustsHisLaptop as Owner


async def test_kk_cannot_borrow_a_trusted_name(tmp_path: Path) -> None:
    """George asks Paul's host to join as "Paul's laptop" and pairs by ``kk`` (his own keys, the
    ones the host stored under "George"), his identity payload saying "Paul's laptop".  The
    owner says member to his own laptop's name; the host must refuse and grant nothing, and
    George's record keeps his name."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    me: LocalIdentity = store.local_identity(george.keystore)
    lying = dataclasses.replace(me, name=PAULS_LAPTOP)  # same keys, another name
    owner = Owner()
    async with paul.host("tcp:127.0.0.1:0", methods=("pin", "resume"), pin="135790",
                         delegate=owner, visible=600.0, step_timeout=STEP) as host, \
            accepting(host) as accepted:
        out = await evil_join(
            address_of(host), lying, Method.KK, says_name=PAULS_LAPTOP, wants=Role.MEMBER,
            says_method=Method.RESUME,
            peer=store.known_peer(george.keystore, bytes.fromhex(paul.device_id)),
        )
        if out.membership is not None:
            async with await accepted:
                pass
    assert owner.asked == [PAULS_LAPTOP]
    ks = paul.keystore
    ks.follow()
    roles = {p.name: p.extra.get("granted") for p in ks.peers()}
    assert out.membership is None or out.membership.role is not Role.MEMBER, (out, roles)
    assert "member" not in roles.values(), roles
    assert set(roles) == {"George"}, roles


async def test_control_kk_under_his_stored_name_is_asked_as_george(tmp_path: Path) -> None:
    """The same kk under George's own name: the owner is asked about "George", refuses, and
    nothing is granted (the grant above came from the borrowed name alone)."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    me = store.local_identity(george.keystore)
    owner = Owner()
    async with paul.host("tcp:127.0.0.1:0", methods=("pin", "resume"), pin="135790",
                         delegate=owner, visible=600.0, step_timeout=STEP) as host, \
            accepting(host):
        out = await evil_join(
            address_of(host), me, Method.KK, wants=Role.MEMBER, says_method=Method.RESUME,
            peer=store.known_peer(george.keystore, bytes.fromhex(paul.device_id)),
        )
    assert owner.asked == ["George"]
    assert out.error is not None and out.membership is None


async def test_an_honest_known_device_joining_by_kk_pairs(tmp_path: Path) -> None:
    """Paul, who joined George's host yesterday (a guest grant), comes back by ``kk``, the
    resume fallback that proves the same stored keys.  He must pair, as by ``resume``.  Refused
    on main before atk15b's fix (finding 2): his join request said kk, and the host's method
    checks held him to kk where it compares resume, kk's base; kk and resume now allow each
    other."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    async with george.host("tcp:127.0.0.1:0", methods=("pin", "resume"), pin="246810",
                           delegate=pairkit.delegate.Agree(), step_timeout=STEP) as at_george:
        spec = "tcp:" + at_george.address.removeprefix("tcp:")
        for method in ("resume", "kk"):
            async with accepting(at_george) as accepted:
                async with await paul.join("George", transport=spec, method=method,
                                           step_timeout=STEP) as session:
                    assert session.method == method
                async with await accepted:
                    pass
