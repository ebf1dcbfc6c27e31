"""A peer that announces a new capability value each time must not grow the process's memory.

An announcement's ``caps`` is any unsigned 64-bit integer on the wire.  Python's IntFlag keeps
every value it is asked to make (a pseudo-member in the enum's own table, for good), so a
machine that made ``Caps(peer_value)`` let a stranger add one object to the process per Offer,
without bound; both sides' machines did, the host for each Offer and the guest for each Accept
(found while taking the enum work out of the negotiation, issue 13).  The machines now hand
the peer's value to the method table as the integer it came as.  Played on the real machines
with the in-memory shuttle (tests/pair_harness.py): the table of Caps values must not grow
with the number of values the peer sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.pairing import wire
from pairkit.pairing.cpns import GatewayConfig, PneConfig, PnSetupNotifyResponse, SetupType
from pairkit.pairing.cpns.messages import GatewayCaps, PneCaps
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.negotiation import Caps, Method
from pairkit.transports.loopback import loopback_pair
from pairkit.ttp import enrol
from tests.pair_harness import make_pair, shuttle
from tests.pg_harness import pg_url, postgres
from tests.pn_harness import pn_lab
from tests.ttp_harness import identity, rewrite_tap, running_server

__all__ = ["pg_url", "postgres"]

TRIES = 200
#: values above the real bits, never the same twice in this process
_FRESH = itertools.count(1_000_000)


def _new_caps_each_time(cls: type, counter: list[int]) -> Callable[[str, bytes], bytes]:
    def tamper(_direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, cls):
            return data
        counter[0] += 1
        # the real bits, and above them a value this process has never seen
        caps = msg.hello.caps | next(_FRESH) << 8
        return dataclasses.replace(msg, hello=dataclasses.replace(msg.hello, caps=caps)).encode()

    return tamper


@pytest.mark.parametrize(("cls", "side"), [(Offer, "host"), (Accept, "guest")],
                         ids=["offer-to-host", "accept-to-guest"])
def test_new_capability_values_do_not_pile_up(cls: type, side: str) -> None:
    counter = [0]
    before = len(Caps._value2member_map_)
    for seed in range(TRIES):
        pair = make_pair(Method.COMPARE, seed=seed)
        result = shuttle(pair.guest, pair.host, tamper=_new_caps_each_time(cls, counter),
                         answers={"guest": True, "host": True})
        # the rewritten announcement is bound into the exchange: it never completes
        assert result.guest_error or result.host_error
    assert counter[0] == TRIES  # every run carried a value of its own to the checked side
    assert len(Caps._value2member_map_) - before < 8


@pytest.mark.parametrize("flag", [Caps, PneCaps, GatewayCaps], ids=lambda f: f.__name__)
def test_every_capability_flag_made_from_a_peers_value_stays_bounded(flag: type) -> None:
    """The same hole at the source, for every path: the cloud step's reply (the host's caps),
    ttp's Offer and Accept, a PNE's PneInfo at the gateway and at the key server, a gateway's
    registration at the key server all make a flag from a peer's integer.  Each flag class
    drops bits it does not know (``boundary=CONFORM``), so the enum's table holds at most one
    value per combination of its own bits, whatever a peer sends; the known bits read as
    before."""
    before = len(flag._value2member_map_)
    known = 0
    for member in flag:
        known |= int(member)
    for _ in range(TRIES):
        value = next(_FRESH) << 8 | known
        made = flag(value)
        assert int(made) == known  # the unknown bits are dropped, the known ones kept
    assert len(flag._value2member_map_) - before <= 2 ** len(list(flag))


@pytest.mark.parametrize(("database", "bit", "how"), [
    ("sqlite", 63, "its own"), ("sqlite", 63, "in the middle"), ("postgres", 31, "its own"),
], ids=["sqlite-bit63-own", "sqlite-bit63-mitm", "postgres-bit31-own"])
async def test_a_capability_bit_nobody_names_does_not_fail_the_registration_for_everyone(
    tmp_path: Path, request: pytest.FixtureRequest, database: str, bit: int, how: str,
) -> None:
    """Finding (attack review of the capability flags; fixed).  The gateway and the key server
    drop a PNE's capability bits they do not name when they read them (``PneCaps``, CONFORM),
    but the key server stored the PNE's ``caps`` as the gateway relayed them, every bit as sent,
    in an INTEGER column: SQLite's holds 63 bits and a sign, PostgreSQL's 31.  An element whose
    announcement carries a higher bit (one of its own, a later version's or a malicious
    enrolled element's; or set by someone in the middle of its PAN link, where the caps travel
    in the clear and nothing binds them) proves its key like any other, and then the key
    server's store failed ("the key server's database failed: ... too large"): the whole
    registration failed, and every other element of the setup, each of which proved its key,
    was told it is not a member.  What the attacker gets: one enrolled element (or one PAN link
    in its reach) fails every setup it takes part in, for everyone in it, and each costs the
    key server a failed database transaction.  Now the key server stores the bits it names,
    as it reads them (``PneCaps``)."""
    url = request.getfixturevalue("pg_url") if database == "postgres" else None
    odd_caps = int(PneCaps.UI) | 1 << bit
    async with running_server(tmp_path / "srv", database=url) as h:
        gw = identity("gateway")
        honest, odd = identity("honest"), identity("odd")
        eukeys = {d.device_id: os.urandom(32) for d in (gw, honest, odd)}
        for d in (gw, honest, odd):
            await enrol(h.address, h.ca, d, eukey=eukeys[d.device_id])

        def set_bit(_src: str, dst: str, msg: wire.Message) -> wire.Message | None:
            if dst == "gw" and isinstance(msg, PnSetupNotifyResponse):
                return dataclasses.replace(msg, caps=msg.caps | 1 << bit)
            return None

        tap = rewrite_tap(set_bit) if how == "in the middle" else None
        links = [loopback_pair(names=("gw", "honest")), loopback_pair(names=("gw", "odd"), tap=tap)]
        caps: Any = odd_caps if how == "its own" else PneCaps.UI  # a later version's bits
        configs = [
            PneConfig(honest.device_id, "honest", eukeys[honest.device_id], step_timeout=10.0),
            PneConfig(odd.device_id, "odd", eukeys[odd.device_id], caps=caps, step_timeout=10.0),
        ]
        runs = [run_pne(links[k].b, configs[k], listen=True) for k in range(2)]
        gateway = run_gateway(
            {k: PneLink(links[k].a, d.device_id) for k, d in enumerate((honest, odd))}, me=gw,
            config=GatewayConfig(gw.device_id, "gateway", eukeys[gw.device_id],
                                 collect_window=2.0, step_timeout=5.0),
            server=h.address, ca_file=h.ca, initiate=(SetupType.ALL, ()),
        )
        try:
            inventory, honest_result, _odd_result = await asyncio.gather(
                gateway, *runs, return_exceptions=True)
        finally:
            for pair in links:
                await pair.aclose()
        assert not isinstance(honest_result, BaseException), honest_result
        assert honest_result.members == tuple(sorted((honest.device_id, odd.device_id)))
        assert not isinstance(inventory, BaseException), inventory
        assert sorted(m.name for m in inventory.members) == ["honest", "odd"]
        assert h.server.stats["failed"] == 0
        row = await h.server.db(h.server.store.pn, inventory.gw_id, inventory.pn_id)
        assert sorted(m["caps"] for m in row.members) == [int(PneCaps.UI)] * 2  # bits it names


async def test_an_element_announcing_a_bit_nobody_names_is_kept_by_the_gateway(
    tmp_path: Path,
) -> None:
    """The gateway's side of the same: ``pairkit pn gateway`` (a process, with a key server
    process) sets up a PN with an element whose setup request carries a bit no version names
    (bit 40).  The gateway reads the element's capabilities as ``PneCaps``, which drops it, and
    keeps the member in its keystore (whose record takes capabilities below 256 only): the
    element must be a member, in the gateway's PN as the bits the gateway names.  (Before the
    capability flags dropped unknown bits, the flag kept bit 40 and the gateway could not save
    its PN after the key server had registered it.)"""
    from pairkit.cli.ttp_cli import SETTING_EUKEY
    from pairkit.keystore import Keystore
    from pairkit.pn import pne_setup
    from pairkit.transports.tcp import tcp_connect
    from tests.cli_helpers import KEYSTORE_PIN

    async with pn_lab(tmp_path, {"gw": "Paul's phone", "watch": "Paul's watch"}) as lab:
        gw, port, _ = await lab.gateway("--yes", "--collect", "1", "--timeout", "5")
        ks = Keystore.open(lab.homes["watch"] / "keystore.pk", KEYSTORE_PIN)
        caps: Any = int(PneCaps.UI) | 1 << 40  # a later version's bit, or anyone's
        config = PneConfig(bytes.fromhex(ks.device_id), ks.name, ks.setting(SETTING_EUKEY),
                           caps=caps, step_timeout=15.0)
        link = await tcp_connect("127.0.0.1", port, 10.0)
        try:
            machine, channel = await asyncio.wait_for(pne_setup(link, config, listen=False), 30)
        finally:
            await link.close()
        assert machine.membership is not None and channel is not None
        await gw.narration("Paul's watch")
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        await gw.stop()
        (record,) = Keystore.open(lab.homes["gw"] / "keystore.pk", KEYSTORE_PIN).pns("gateway")
        assert [(m.pne_id, m.caps) for m in record.members] == [(lab.ids["watch"], 1)]


def _new_fields_each_time(counter: list[int]) -> Callable[[str, bytes], bytes]:
    """The guest's Offer with bits above the known ones, never seen before, in its methods
    mask and its caps: every table the decoder or the negotiation keeps sees new peer
    values."""

    def tamper(_direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, Offer):
            return data
        counter[0] += 1
        fresh = next(_FRESH)
        hello = dataclasses.replace(msg.hello, caps=msg.hello.caps | fresh << 8,
                                    methods=msg.hello.methods | fresh << 8)
        return dataclasses.replace(msg, hello=hello).encode()

    return tamper


def test_the_decoders_and_the_negotiations_tables_do_not_grow_with_peer_values() -> None:
    """The other tables keyed on what a peer sends (the brief of the capability flags' review):
    the wire decoder's plans (one per message class), the methods masks' sets (one per low
    byte), the enum tables of every flag.  After one pairing has made what a pairing needs,
    200 more whose Offers carry values never seen before add nothing to any of them."""
    from pairkit.pairing import negotiation

    def sizes() -> tuple[int, ...]:
        return (len(wire._PLANS), len(negotiation._FROM_MASK), len(Caps._value2member_map_),
                len(PneCaps._value2member_map_), len(GatewayCaps._value2member_map_))

    counter = [0]
    pair = make_pair(Method.COMPARE, seed=0)
    shuttle(pair.guest, pair.host, tamper=_new_fields_each_time(counter),
            answers={"guest": True, "host": True})
    before = sizes()
    for seed in range(1, TRIES + 1):
        pair = make_pair(Method.COMPARE, seed=seed)
        result = shuttle(pair.guest, pair.host, tamper=_new_fields_each_time(counter),
                         answers={"guest": True, "host": True})
        assert result.guest_error or result.host_error  # the rewrite is bound: no pairing
    assert counter[0] == TRIES + 1
    assert sizes() == before
