"""CPNS PN establishment against a real key server on 127.0.0.1 (TLS, SQLite, PAN links)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.pairing.cpns import (
    AuthenticationRequest,
    GatewayConfig,
    KeySource,
    PneCaps,
    PneConfig,
    PnEstablishmentNotify,
    SetupType,
)
from pairkit.pairing.errors import AuthenticationError, NotFoundError, PairingTimeout
from pairkit.transports.loopback import loopback_pair
from pairkit.ttp import enrol
from tests.ttp_harness import flip, identity, rewrite_tap, running_server


@dataclasses.dataclass
class Setup:
    h: Any
    gw: Any
    pnes: list[Any]
    eukeys: dict[bytes, bytes]


async def _enrolled(h, n: int, *, gw_eukey: bool = True) -> Setup:
    gw = identity("gateway")
    pnes = [identity(f"pne{k}") for k in range(n)]
    eukeys = {d.device_id: os.urandom(32) for d in (gw, *pnes)}
    await enrol(h.address, h.ca, gw, eukey=eukeys[gw.device_id] if gw_eukey else None)
    for p in pnes:
        await enrol(h.address, h.ca, p, eukey=eukeys[p.device_id])
    return Setup(h, gw, pnes, eukeys)


async def _run(
    s: Setup,
    *,
    initiator: int | None,
    setup: SetupType = SetupType.ALL,
    invited: tuple[bytes, ...] = (),
    wrong: tuple[int, ...] = (),
    caps: dict[int, PneCaps] | None = None,
    secured: tuple[int, ...] = (),
    tap: Any = None,
    listen_timeout: float = 5.0,
) -> tuple[Any, list[Any]]:
    links = []
    for k in range(len(s.pnes)):
        links.append(loopback_pair(names=("gw", f"pne{k}"), encrypted=k in secured,
                                   tap=tap))
    gw_cfg = GatewayConfig(s.gw.device_id, "gateway", s.eukeys[s.gw.device_id],
                           collect_window=2.0, step_timeout=5.0)
    runs = []
    for k, p in enumerate(s.pnes):
        cap = (caps or {}).get(k, PneCaps.UI) | (
            PneCaps.PAN_SECURED if k in secured else PneCaps.NONE)
        key = os.urandom(32) if k in wrong else s.eukeys[p.device_id]
        kw: dict[str, Any] = {}
        if k == initiator:
            kw = {"setup_type": setup, "invited": invited}
        timeout = 5.0 if k == initiator else listen_timeout
        config = PneConfig(p.device_id, p.name, key, caps=cap, step_timeout=timeout, **kw)
        runs.append(run_pne(links[k].b, config, listen=k != initiator))
    gw_run = run_gateway(
        {k: PneLink(links[k].a, p.device_id) for k, p in enumerate(s.pnes)}, me=s.gw,
        config=gw_cfg, server=s.h.address, ca_file=s.h.ca,
        initiate=None if initiator is not None else (setup, invited),
    )
    inventory, *results = await asyncio.gather(gw_run, *runs, return_exceptions=True)
    for pair in links:
        await pair.aclose()
    return inventory, results


def _names(inventory) -> list[str]:
    return sorted(m.name for m in inventory.members)


async def test_wrong_eukey_fails_while_the_other_pne_registers(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        s = await _enrolled(h, 2)
        inventory, (ok, bad) = await _run(s, initiator=0, setup=SetupType.ALL, wrong=(1,))
        assert _names(inventory) == ["pne0"]
        assert isinstance(bad, AuthenticationError)
        assert ok.key_source is KeySource.LOCAL_EUKEY and ok.session is not None
        member = inventory.members[0]
        assert member.session.fingerprint == ok.session.fingerprint
        # the server registered the PN with its one member, LocalEUKey sealed in its store
        store = h.server.store
        row = await h.server.db(store.pn, inventory.gw_id, inventory.pn_id)
        assert [m["name"] for m in row.members] == ["pne0"]
        stored_key = await h.server.db(
            store.local_eukey, inventory.gw_id, inventory.pn_id, s.pnes[0].device_id)
        assert stored_key == ok.link_key == member.link_key


@pytest.mark.parametrize(
    ("initiator", "setup", "invite", "expected"),
    [
        (0, SetupType.ONE_TO_ONE, (), ["pne0"]),
        (0, SetupType.ALL, (), ["pne0", "pne1", "pne2"]),
        (0, SetupType.INVITED, (2,), ["pne0", "pne2"]),
        (None, SetupType.ONE_TO_ONE, (1,), ["pne1"]),
        (None, SetupType.ALL, (), ["pne0", "pne1", "pne2"]),
        (None, SetupType.INVITED, (0, 1), ["pne0", "pne1"]),
    ],
    ids=["pne-1-1", "pne-all", "pne-invited", "gw-1-1", "gw-all", "gw-invited"],
)
async def test_setup_types(tmp_path: Path, initiator, setup, invite, expected) -> None:
    async with running_server(tmp_path / "srv") as h:
        s = await _enrolled(h, 3)
        invited = tuple(s.pnes[k].device_id for k in invite)
        if initiator is not None and setup is not SetupType.INVITED:
            invited = ()
        # PNEs left out give up waiting after 1.5 s (for all, the wait is much shorter)
        inventory, results = await _run(s, initiator=initiator, setup=setup, invited=invited,
                                        listen_timeout=1.5)
        assert _names(inventory) == expected
        assert inventory.setup_type is setup
        for k, r in enumerate(results):
            if f"pne{k}" in expected:
                assert r.members == tuple(sorted(m.pne_id for m in inventory.members))
            else:  # left out: never asked, it gave up waiting for a gateway
                assert isinstance(r, PairingTimeout), r
                assert "no gateway asked" in str(r)


async def test_criteria_over_real_links(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        s = await _enrolled(h, 3)
        _inventory, results = await _run(
            s, initiator=None, caps={1: PneCaps.NONE}, secured=(2,),
        )
        # R01: a LocalEUKey whenever the PNE has UI, the PAN secured or not; a session only
        # where the PAN does not secure the link (the link says so, and the PNE)
        sources = [r.key_source for r in results]
        assert sources == [KeySource.LOCAL_EUKEY, KeySource.PREASSIGNED, KeySource.LOCAL_EUKEY]
        assert [r.session is not None for r in results] == [True, True, False]
        assert all(r.link_key is not None for r in results)


@pytest.mark.parametrize("target", [0, 1])
async def test_each_pne_checks_the_server_proof_on_a_tampering_gateway(
    tmp_path: Path, target: int
) -> None:
    def edit(src, dst, msg):
        if dst == f"pne{target}" and isinstance(msg, PnEstablishmentNotify) and msg.ok:
            return dataclasses.replace(msg, hash_server=flip(msg.hash_server))
        return None

    async with running_server(tmp_path / "srv") as h:
        s = await _enrolled(h, 2)
        _inventory, results = await _run(s, initiator=None, tap=rewrite_tap(edit))
        assert isinstance(results[target], AuthenticationError)
        assert "hash_server" in str(results[target])
        assert not isinstance(results[1 - target], Exception)


async def test_a_gateway_changing_rand_server_is_caught_by_the_server(tmp_path: Path) -> None:
    def edit(src, dst, msg):
        if dst == "pne0" and isinstance(msg, AuthenticationRequest):
            return dataclasses.replace(msg, rand_server=flip(msg.rand_server))
        return None

    async with running_server(tmp_path / "srv") as h:
        s = await _enrolled(h, 2)
        inventory, results = await _run(s, initiator=None, tap=rewrite_tap(edit))
        assert _names(inventory) == ["pne1"]
        assert inventory.failed[s.pnes[0].device_id] == "authentication failed"
        assert isinstance(results[0], AuthenticationError)


async def test_a_gateway_without_a_factory_key_is_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        s = await _enrolled(h, 1, gw_eukey=False)
        inventory, results = await _run(s, initiator=0)
        assert isinstance(inventory, NotFoundError)
        assert "factory key" in str(inventory)
        assert isinstance(results[0], Exception)


async def test_two_gateways_at_once(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        a, b = await asyncio.gather(_enrolled(h, 2), _enrolled(h, 2))
        (inv_a, _res_a), (inv_b, _res_b) = await asyncio.gather(
            _run(a, initiator=None), _run(b, initiator=0, setup=SetupType.ALL),
        )
        assert _names(inv_a) == _names(inv_b) == ["pne0", "pne1"]
        assert inv_a.pn_id != inv_b.pn_id
        assert sorted(await h.server.db(h.server.store.pn_keys)) == sorted(
            [(inv_a.gw_id, inv_a.pn_id), (inv_b.gw_id, inv_b.pn_id)])


async def test_cpns_demo_with_a_server_process() -> None:
    from pairkit.cli.cpns_demo import run_cpns_demo

    summary = await run_cpns_demo(quiet=True)
    assert summary["ok"] is True and summary["scenario"] == "cpns"
    first, second = summary["flows"]
    assert first["flow"] == "pne-initiated" and first["setup"] == "all"
    assert [m["name"] for m in first["members"]] == ["Paul's watch"]
    assert first["failed"][0]["name"] == "Paul's scale"
    assert second["flow"] == "gateway-initiated" and second["setup"] == "invited"
    assert {m["name"]: m["key_source"] for m in second["members"]} == {
        "Paul's watch": "local_eukey", "Paul's scale": "preassigned"}
    assert {m["name"]: m["session"] is None for m in second["members"]} == {
        "Paul's watch": True, "Paul's scale": False}
    assert summary["server_exit"] == 0
    (pn,) = summary["server_inventory"]
    assert sorted(pn["members"]) == ["Paul's scale", "Paul's watch"]
