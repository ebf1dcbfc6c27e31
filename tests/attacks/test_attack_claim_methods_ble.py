"""A known device's claim held to the method its join request said, over BLE (attack review
atk16; runtime/session.py ``accept_session``, pairing/methods/base.py
``HostPairing._check_expected``, pairing/cloud.py ``CloudHost``; docs/security.md, "A pairing
host's pending links", the join request's claim).

A join request that names a known device's id passes the cloud step with no question (on a
private host too), for ``resume``, ``kk`` or ``ttp`` only: the methods that prove the claimed
key before anything else happens.  The pairing that follows must be the one the request said
from its first message.  Over BLE the host may offer ``clear`` (the link's LE Secure
Connections encrypt it), whose host answers the Offer with the session key itself and asks no
one: a claimer saying ``resume`` and then offering ``clear`` would have the host's key and
Noise message sent to her, the claim found false only at the end.  Played over bumble virtual
controllers (the library host, a stranger's own link, LE-encrypted as a ``clear`` guest's is).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit import peers
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Argon2Params
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest, auth_mac_from
from pairkit.pairing.errors import PairingError
from pairkit.pairing.framing import Reassembler
from pairkit.pairing.messages import Accept
from pairkit.pairing.methods import GuestPairing, PairingConfig
from pairkit.pairing.negotiation import ALL_CAPS, Method
from tests.ble_harness import World, world  # noqa: F401


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


class Owner(pairkit.Agree):
    """Paul at his host: lets guests in, and records every question."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def allow_join(self, q: Any) -> Any:
        self.asked.append(q.name)
        return await super().allow_join(q)

    async def confirm_code(self, q: Any) -> bool:
        self.asked.append("code")
        return False


class Heard:
    """A stranger's end of a real link that keeps every whole message the host sent."""

    def __init__(self, link: Any) -> None:
        self._link = link
        self._joiner = Reassembler()
        self.messages: list[int | None] = []

    def __getattr__(self, name: str) -> Any:
        if name in ("recv_nowait", "recv_ready"):  # every read goes through recv (noted)
            raise AttributeError(name)
        return getattr(self._link, name)

    async def recv(self) -> bytes:
        data: bytes = await self._link.recv()
        whole = self._joiner.feed(data)
        if whole is not None:
            self.messages.append(wire.peek_type(whole))
        return data


@pytest.mark.parametrize("said", [Method.RESUME, Method.KK, Method.TTP],
                         ids=["saying-resume", "saying-kk", "saying-ttp"])
async def test_a_claim_said_for_resume_cannot_pair_by_clear_over_ble(
    tmp_path: Path, world: World, said: Method  # noqa: F811
) -> None:
    """George paired with Paul earlier (a guest for an hour).  Paul's library host offers PIN
    and ``clear`` over BLE, privately (no visibility window).  Mallory connects, turns on LE
    encryption as a ``clear`` guest does, repeats George's id in her join request saying
    ``said`` (no question: the claim is to be proved), then offers ``clear`` with her own key.
    Paul's host must answer her Offer with an Abort, never with its Accept (the session key
    and its Noise message); nobody is asked anything and nothing is stored."""
    paul, george, mallory = (device(tmp_path, n) for n in ("Paul", "George", "Mallory"))
    async with paul.host("loopback:claim-ble", methods=["pin"], delegate=Owner()) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=15))
        async with await george.join("loopback:claim-ble", pin=host.pin), await accepting:
            pass
    known = {p.device_id for p in paul.peers()}
    owner = Owner()
    radio = await world.device(prefer_l2cap=False)
    async with paul.host(radio, methods=["pin", "clear"], delegate=owner, visible=None) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=20))
        stranger = await world.device(prefer_l2cap=False)
        link = Heard(await stranger.connect(host.address, timeout=5))
        try:
            await link.encrypt()
            assert link.encrypted
            ks = mallory.keystore
            me = peers.local_identity(ks)
            pipe = MessagePipe(link, guest=True)
            cloud = CloudGuest(
                name="George", clouds=(), static=me.static_public,
                mac=auth_mac_from(lambda cid, info, n: ks.cloud_kdf(cid, info, n)),
                device_id=bytes.fromhex(george.device_id), timeout=5, answer_time=5,
                host_static=paul.keystore.static_public,
                method=int(said),
            )
            loop = asyncio.get_running_loop()
            cloud.start(loop.time())
            await drive(cloud, pipe, delegate=pairkit.Agree(), clock=loop.time)
            heard_in_cloud_step = len(link.messages)
            machine = GuestPairing(
                PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS,
                              step_timeout=5),
                me, method=Method.CLEAR, link_encrypted=True,
            )
            machine.bind_context(pipe.transcript())
            machine.start(loop.time())
            with pytest.raises(PairingError):
                await drive(machine, pipe, delegate=pairkit.Agree(), clock=loop.time)
            answers = link.messages[heard_in_cloud_step:]
            assert Accept.TYPE not in answers, "Paul's host sent its clear key to a claimer"
            assert answers == [wire.Abort.TYPE], answers
            assert owner.asked == []
            assert not accepting.done()
        finally:
            accepting.cancel()
            await link.close()
    assert {p.device_id for p in paul.peers()} == known
