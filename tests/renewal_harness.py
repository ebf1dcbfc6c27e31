"""Two library devices over the in-process loopback link, for the cloud-renewal attacks
(tests/attacks/test_attack_forget_race.py, tests/attacks/test_attack_renewal_methods.py): Paul
hosts (his owner's answers scripted), George joins.  The link claims link-layer encryption, as
a BLE link after Just Works does, so ``clear`` runs on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pairkit
from pairkit.keystore import Argon2Params
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import PairingError
from pairkit.transports import loopback

from .cli_helpers import KEYSTORE_PIN

STEP = 10.0
#: the methods Paul's host allows
HOST_METHODS = ("pin", "clear", "resume", "kk")


class Owner:
    """Paul: makes George a member once; refuses anyone he is asked about after."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.grant: Grant | None = Grant(Role.MEMBER)

    async def allow_join(self, q: Any) -> Grant | None:
        self.asked.append(q.name)
        return self.grant

    async def confirm_code(self, q: Any) -> bool:
        self.asked.append("code")
        return False

    async def join_cloud(self, q: Any) -> bool:
        return False

    async def on_warning(self, event: Any) -> None:
        return None

    async def on_event(self, event: Any) -> None:
        return None


def device(home: Path, name: str) -> pairkit.Device:
    """A new device named ``name`` that owns a cloud."""
    home.mkdir(parents=True, exist_ok=True)
    made = pairkit.Device.create(home / "keystore.pk", KEYSTORE_PIN, name=name,
                                 kdf=Argon2Params.cheapest())
    ks = made.keystore
    ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
    ks.save()
    return made


async def pair(host_device: pairkit.Device, owner: Any, guest: pairkit.Device, where: str,
               *, target: str | None = None, methods: tuple[str, ...] = HOST_METHODS,
               host_may_fail: bool = True, **join: Any,
               ) -> tuple[pairkit.Session | None, BaseException | None]:
    """``guest`` joins ``host_device`` (its library host offering ``methods``, ``owner`` its
    delegate) on the encrypted loopback ``where`` (or ``target``: a known peer's name, to
    resume); the guest's session, or the PairingError the guest ended with.  The host's session
    is closed; its error, once the guest's session is up, is raised unless ``host_may_fail``."""
    medium = loopback.LoopbackMedium(encrypted=True)  # as a BLE link after Just Works
    host_t = loopback.open(where, medium=medium)
    async with host_device.host(host_t, methods=methods, pin="246810",
                                delegate=owner, step_timeout=STEP) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=STEP))
        try:
            try:
                session = await guest.join(
                    target or f"loopback:{where}", transport=loopback.open(where, medium=medium),
                    delegate=pairkit.delegate.Agree(), step_timeout=STEP, **join,
                )
            except PairingError as exc:
                return None, exc
            with contextlib.suppress(*((PairingError,) if host_may_fail else ())):
                async with await accepting:
                    pass
            return session, None
        finally:
            accepting.cancel()
            with contextlib.suppress(BaseException):
                await accepting


async def paul_and_george(tmp_path: Path, where: str, *, member: bool = False,
                          ) -> tuple[pairkit.Device, pairkit.Device, Owner]:
    """Paul's and George's devices under ``tmp_path``, George paired with Paul by PIN on the
    loopback ``where`` (``member``: asking to be, and made, a member of Paul's cloud); (Paul,
    George, Paul's owner, who let him in)."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    if member:
        session, error = await pair(paul, owner, george, where, pin="246810", wants="member")
        assert error is None and session is not None and session.role == "member", error
    else:
        session, error = await pair(paul, owner, george, where, pin="246810")
        assert error is None and session is not None, error
    await session.close()
    return paul, george, owner
