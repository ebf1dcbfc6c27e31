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

import asyncio
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import pairkit
from pairkit import peers as store
from pairkit.keystore import Argon2Params
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method

from ..attack_harness import STEP, evil_join

PAULS_LAPTOP = "Paul's laptop"


class Owner:
    """Paul at his host: makes his own laptop a member, refuses everyone else."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def allow_join(self, q: Any) -> Grant | None:
        self.asked.append(q.name)
        return Grant(Role.MEMBER) if q.name == PAULS_LAPTOP else None

    async def confirm_code(self, q: Any) -> bool:
        return False

    async def join_cloud(self, q: Any) -> bool:
        return False

    async def allow_request(self, q: Any) -> Any:
        from pairkit.pairing.service import Scope

        return Scope.REFUSE

    async def on_warning(self, event: Any) -> None:
        return None

    async def on_event(self, event: Any) -> None:
        return None


def device(tmp_path: Path, name: str) -> pairkit.Device:
    made = pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )
    ks = made.keystore
    ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
    ks.save()
    return made


async def paul_joined_georges_host(paul: pairkit.Device, george: pairkit.Device) -> None:
    """Yesterday: Paul joined George's host by PIN; each now knows the other's key."""
    async with george.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                           delegate=pairkit.delegate.Agree()) as at_george:
        accepting = asyncio.ensure_future(at_george.accept(timeout=STEP))
        try:
            async with await paul.join(f"tcp:{at_george.address.removeprefix('tcp:')}",
                                       pin="246810", step_timeout=STEP):
                pass
            async with await accepting:
                pass
        finally:
            accepting.cancel()
            with contextlib.suppress(BaseException):
                await accepting


def address_of(host: pairkit.Host) -> tuple[str, int]:
    h, p = host.address.removeprefix("tcp:").rsplit(":", 1)
    return h, int(p)


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
                         delegate=owner, visible=600.0, step_timeout=STEP) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=STEP))
        try:
            out = await evil_join(
                address_of(host), lying, Method.KK, says_name=PAULS_LAPTOP, wants=Role.MEMBER,
                says_method=Method.RESUME,
                peer=store.known_peer(george.keystore, bytes.fromhex(paul.device_id)),
            )
            if out.membership is not None:
                async with await accepting:
                    pass
        finally:
            accepting.cancel()
            with contextlib.suppress(BaseException):
                await accepting
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
                         delegate=owner, visible=600.0, step_timeout=STEP) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=STEP))
        try:
            out = await evil_join(
                address_of(host), me, Method.KK, wants=Role.MEMBER, says_method=Method.RESUME,
                peer=store.known_peer(george.keystore, bytes.fromhex(paul.device_id)),
            )
        finally:
            accepting.cancel()
            with contextlib.suppress(BaseException):
                await accepting
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
            accepting = asyncio.ensure_future(at_george.accept(timeout=STEP))
            try:
                async with await paul.join("George", transport=spec, method=method,
                                           step_timeout=STEP) as session:
                    assert session.method == method
                async with await accepting:
                    pass
            finally:
                accepting.cancel()
                with contextlib.suppress(BaseException):
                    await accepting
