"""Issue 14 over real links: PNEs and a gateway on loopback links, the key server on 127.0.0.1
(TLS, SQLite).  A forged link confirmation, a PNE that declines, a gateway that dies mid-flow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.pairing.cpns import (
    AuthenticationRequest,
    GatewayConfig,
    LinkConfirm,
    PneCaps,
    PneConfig,
    PnJoinAsked,
    SetupType,
)
from pairkit.pairing.errors import LinkClosedError, PairingError, RemoteError
from pairkit.transports.loopback import loopback_pair
from pairkit.ttp import enrol
from tests.ttp_harness import flip, identity, rewrite_tap, running_server


async def _enrolled(h: Any, n: int) -> tuple[Any, list[Any], dict[bytes, bytes]]:
    gw = identity("gateway")
    pnes = [identity(f"pne{k}") for k in range(n)]
    eukeys = {d.device_id: os.urandom(32) for d in (gw, *pnes)}
    for d in (gw, *pnes):
        await enrol(h.address, h.ca, d, eukey=eukeys[d.device_id])
    return gw, pnes, eukeys


class _Decider:
    """A PNE's user: answers the join question, and remembers it."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[PnJoinAsked] = []

    async def allow_pn_join(self, q: PnJoinAsked) -> bool:
        self.asked.append(q)
        return self.answer


async def test_forged_confirmation_and_a_declining_pne_over_loopback(tmp_path: Path) -> None:
    def forge(src, dst, msg):
        if src == "pne0" and isinstance(msg, LinkConfirm):
            return dataclasses.replace(msg, mac=flip(msg.mac))
        return None

    async with running_server(tmp_path / "srv") as h:
        gw, pnes, eukeys = await _enrolled(h, 3)
        links = [loopback_pair(names=("gw", f"pne{k}"), tap=rewrite_tap(forge))
                 for k in range(3)]
        no = _Decider(False)
        configs = [
            PneConfig(p.device_id, p.name, eukeys[p.device_id], caps=PneCaps.UI,
                      step_timeout=5.0, join="ask" if k == 1 else "accept",
                      setup_type=SetupType.ALL if k == 2 else SetupType.ONE_TO_ONE)
            for k, p in enumerate(pnes)
        ]
        gw_cfg = GatewayConfig(gw.device_id, "gateway", eukeys[gw.device_id],
                               collect_window=3.0, step_timeout=5.0)
        inventory, r0, r1, r2 = await asyncio.gather(
            run_gateway({k: PneLink(links[k].a, p.device_id) for k, p in enumerate(pnes)},
                        me=gw, config=gw_cfg, server=h.address, ca_file=h.ca),
            run_pne(links[0].b, configs[0], listen=True),
            run_pne(links[1].b, configs[1], listen=True, delegate=no),
            run_pne(links[2].b, configs[2], listen=False),
            return_exceptions=True,
        )
        for pair in links:
            await pair.aclose()
        assert not isinstance(inventory, BaseException), inventory
        ids = [p.device_id for p in pnes]
        assert [m.pne_id for m in inventory.members] == [ids[2]]
        assert "link confirmation" in inventory.failed[ids[0]]
        assert inventory.declined == (ids[1],)
        assert isinstance(r0, RemoteError) and "link confirmation" in str(r0)
        assert r1 is None  # declined, quietly
        (asked,) = no.asked
        assert asked.initiator == ids[2] and asked.initiator_name == "pne2"
        assert r2.members != ()  # the initiator is in
        # The server registered pne0 (its hash verified) but the gateway keeps it out: no
        # session, no route.
        assert ids[0] not in {m.pne_id for m in inventory.members}


async def test_a_gateway_that_dies_mid_flow_ends_the_pne_and_a_restarted_one_sets_up(
    tmp_path: Path,
) -> None:
    cut = asyncio.Event()

    async with running_server(tmp_path / "srv") as h:
        gw, (pne,), eukeys = await _enrolled(h, 1)
        gw_cfg = GatewayConfig(gw.device_id, "gateway", eukeys[gw.device_id],
                               collect_window=2.0, step_timeout=5.0)
        pne_cfg = PneConfig(pne.device_id, pne.name, eukeys[pne.device_id], step_timeout=5.0)

        def relayed(src, dst, msg):
            if isinstance(msg, AuthenticationRequest):
                cut.set()  # dies right after relaying the server's request
            return None

        relay = rewrite_tap(relayed)

        def die(src, dst, data):
            if cut.is_set():
                return []  # the gateway process is gone: nothing more leaves or arrives
            return relay(src, dst, data)  # sets cut as it lets the request through

        pair = loopback_pair(names=("gw", "pne"), tap=die)
        gw_task = asyncio.create_task(run_gateway(
            {0: PneLink(pair.a, pne.device_id)}, me=gw, config=gw_cfg, server=h.address,
            ca_file=h.ca))
        pne_task = asyncio.create_task(run_pne(pair.b, pne_cfg, listen=False))
        await asyncio.wait_for(cut.wait(), 10)
        gw_task.cancel()
        await asyncio.gather(gw_task, return_exceptions=True)
        await pair.a.close()  # the process's socket closes with it
        result = await asyncio.wait_for(asyncio.gather(pne_task, return_exceptions=True), 10)
        assert isinstance(result[0], LinkClosedError | PairingError)
        await pair.aclose()

        # The restarted gateway, on a new link: the PNE asks again and gets in.
        pair = loopback_pair(names=("gw", "pne"))
        inventory, membership = await asyncio.gather(
            run_gateway({0: PneLink(pair.a, pne.device_id)}, me=gw, config=gw_cfg,
                        server=h.address, ca_file=h.ca),
            run_pne(pair.b, pne_cfg, listen=False),
        )
        await pair.aclose()
        assert [m.pne_id for m in inventory.members] == [pne.device_id]
        assert membership.session is not None


def test_the_gateways_pin_is_good_for_one_try_and_locks_after_five_wrong() -> None:
    from pairkit.pairing.errors import LockedOutError
    from pairkit.pn import PinDisplay

    now = [0.0]
    shown: list[str] = []
    pins = PinDisplay("482913", show=shown.append, clock=lambda: now[0])
    pin, started = pins.take()
    assert pin == "482913" and len(shown) == 2 and shown[1] != "482913"
    pins.succeeded(started)  # the right PIN: no failure
    for _ in range(5):
        pins.take()  # each counts as a failure from its start
    try:
        pins.take()
        raise AssertionError("a sixth try within the window was allowed")
    except LockedOutError:
        pass
    now[0] = 301.0  # the window has passed
    assert len(pins.take()[0]) == 6
    now[0] = 302.0  # that sixth failure locks for twice the window (rule 7)
    try:
        pins.take()
        raise AssertionError("the lock did not grow after a sixth failure")
    except LockedOutError:
        pass
    now[0] = 301.0 + 600.0
    assert len(pins.take()[0]) == 6
