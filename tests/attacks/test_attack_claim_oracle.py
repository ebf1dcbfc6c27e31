"""What a private host tells a stranger who claims another device's id in its join request
(attack review atk15, session 15; docs/security.md rule 8 and "A private host gives no hello
response to a stranger").

The cloud step lets a device that paired before come back without a prompt: its
``JoinRequest`` names its device id, the host looks up the grant its owner gave that device
and answers with a ``JoinVerdict`` (the role, and a guest's seconds left) before the pairing
that follows proves the claim; a device it does not know, or whose grant ended, gets
``NotFoundError``.  Two frames meet: the cloud step reads the keystore's grants on a claim,
the pairing proves the claim only afterwards.  So anyone in reach of a private host who knows
a device's id (its fingerprint is what people read aloud; every device it paired with holds
it) learns, with no key and without the owner being asked, whether the host's owner let that
device in, as what, and until when.

Played against the library's host, private (no visibility window), on the in-process loopback
transport, which broadcasts a hello as BLE does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.delegate import Agree
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Argon2Params
from pairkit.pairing.cloud import CloudGuest, Grant
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method
from pairkit.transports import loopback

STEP = 10.0


class Owner(Agree):
    """Paul: lets George in as a guest for an hour; counts what he is asked."""

    def __init__(self) -> None:
        super().__init__(guest_seconds=3600)
        self.asked = 0

    async def allow_join(self, q: Any) -> Grant | None:
        self.asked += 1
        return await super().allow_join(q)

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


async def claim(
    where: str, device_id: bytes, method: Method | None, host_static: bytes
) -> tuple[Any, ...]:
    """A stranger's cloud step that claims ``device_id`` (sealed to ``host_static``, the host's
    key, which she knows as every device it paired with does) and says it pairs by
    ``method``: what the host's answer told her (a verdict, or an error's kind, code and
    text)."""
    mallory = LocalIdentity.generate("Mallory")
    link = await loopback.open(where).connect(None, timeout=STEP)
    try:
        pipe = MessagePipe(link, guest=True)
        cloud = CloudGuest(name="Mallory", clouds=(), mac=lambda _c, _d: bytes(32),
                           static=mallory.static_public, device_id=device_id,
                           host_static=host_static, timeout=STEP,
                           method=None if method is None else int(method))
        cloud.start(asyncio.get_running_loop().time())
        try:
            await drive(cloud, pipe, delegate=Owner())
        except PairingError as exc:
            return ("error", type(exc).__name__, exc.code, str(exc))
        return ("verdict", cloud.role.name, cloud.seconds)
    finally:
        with contextlib.suppress(Exception):
            await link.close()


@pytest.mark.xfail(strict=True, reason=(
    "low: a private host answers a stranger's claim of a known device's id with that "
    "device's grant (role, seconds left), or another error than for an unknown id, before "
    "any proof"))
@pytest.mark.parametrize("method", [Method.RESUME, None], ids=["says-resume", "says-nothing"])
async def test_a_private_host_tells_a_stranger_nothing_of_the_grants_its_owner_gave(
    tmp_path: Path, method: Method | None
) -> None:
    """George joined Paul's host by PIN during a visibility window and was let in as a guest
    for an hour.  Later, Paul's host is private.  Mallory, a stranger who knows George's device
    id, claims it in her join request, and then claims an id nobody has, each time saying she
    pairs by resume (as a returning device does) or saying nothing: the host's two answers must
    not tell her which id Paul let in (nor as what, nor until when).  Since hostq doubt 3 a
    claim that says no proving method is refused, but only when the id is known: the refusal
    differs from an unknown id's, and tells the same."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    owner = Owner()
    async with paul.host(loopback.open("oracle-open"), methods=("pin",), pin="246810",
                         delegate=owner, visible=60.0, step_timeout=STEP) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=STEP))
        async with await george.join("loopback:oracle-open", pin="246810", step_timeout=STEP):
            pass
        async with await accepting:
            pass
    assert owner.asked == 1
    async with paul.host(loopback.open("oracle-private"), methods=("pin", "resume"),
                         delegate=owner, visible=None, step_timeout=STEP) as host:
        serving = asyncio.ensure_future(host.accept(timeout=3 * STEP))
        try:
            to = paul.keystore.static_public
            known = await claim("oracle-private", bytes.fromhex(george.device_id), method, to)
            unknown = await claim("oracle-private", os.urandom(16), method, to)
        finally:
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving
    assert owner.asked == 1  # the owner was asked nothing either time
    assert known == unknown, (known, unknown)
