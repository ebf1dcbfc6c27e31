"""Another gateway that knows a PN's id, against the key server's PN inventory (security
finding 5 of the registration's wait review; docs/security.md, "The registration's wait,
attacked"; OMA CPNS "PN Establishment", steps 2 and 4 to 11).

A PN id is no secret: the gateway sends it in the clear in its setup notify (the source's
step 2), a collect window before it registers the PN (step 4), and in every later setup.  The
key server keeps a PN under the gateway that registered it and its id, so another device
enrolled with the same key server, acting as a gateway (tests/pn_registration_harness.py: its
proof made by the real ``TtpClient`` over TLS, then raw CPNS messages), that names the same id
registers a PN of its own.  Here it tries, with everything a device in reach of the owner's
PAN hears (the id, the element ids, their ``rand_PNE`` and their answers to the key server), to
add members to the owner's PN, change or replace it, learn who is in it, or get the owner's
element into its own PN.  The key server has no way to delete a PN (no message, no command),
so there is no deletion to attack.

On the code before the fix each of these failed at the squatter's first registration, which
the key server refused ("this PN id belongs to another gateway"): the owner's PN was safe
because every other gateway was kept off its id, which is what let a squatter that came first
keep the owner off it for good (tests/attacks/test_attack_pn_auth_wait.py,
``test_another_gateway_cannot_take_a_pn_id_it_heard_before_its_owner_registers_it``).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pairkit.keyserver.server import Limits
from pairkit.pairing.cpns import PnRegistrationRequest, PnRegistrationResponse, SetupType
from pairkit.pairing.cpns.keys import RECIPIENT_GW, unwrap_key
from pairkit.pairing.errors import NotFoundError
from tests.cli_helpers import KEYSTORE_PIN
from tests.pn_harness import free_port, pn_lab
from tests.pn_registration_harness import (
    Element,
    Gateway,
    enrolled,
    play,
    register,
    stored,
    verdicts,
)
from tests.ttp_harness import running_server

#: the key server's step: its wait for a gateway's elements is three of them (1.5 s)
LIMITS = Limits(step_timeout=0.5, max_wait=5.0, handshake_timeout=5.0)


def request(
    gw: Gateway, pn_id: bytes, *, name: str = "gateway", setup: SetupType = SetupType.ALL,
) -> PnRegistrationRequest:
    return PnRegistrationRequest(
        pn_id, name, setup, tuple(e.info() for e in gw.elements), subscription=gw.me.device_id,
    )


async def registered(
    h: Any, gw: Gateway, req: PnRegistrationRequest, **how: Any,
) -> PnRegistrationResponse:
    conn = await register(h, gw, req)
    try:
        return await play(conn, gw, **how)
    finally:
        await conn.close()


def ids(gw: Gateway) -> list[str]:
    return sorted(e.me.device_id.hex() for e in gw.elements)


async def members(h: Any, gw: Gateway, pn_id: bytes) -> list[str]:
    return sorted(m["pne_id"] for m in (await stored(h, gw, pn_id)).members)


def given(resp: PnRegistrationResponse, gw: Gateway) -> list[bytes]:
    """The LocalEUKeys the key server gave ``gw`` for its elements (their copies wrapped under
    its EUKey, opened as the gateway opens them)."""
    by_id = {r.pne_id: r for r in resp.results}
    out = []
    for e in gw.elements:
        r = by_id[e.me.device_id]
        assert r.ok and r.key_for_gw is not None
        out.append(unwrap_key(gw.eukey, r.key_for_gw, pn_id=resp.pn_id, pne_id=r.pne_id,
                              gw_id=gw.me.device_id, recipient=RECIPIENT_GW))
    return out


async def local_keys(h: Any, gw: Gateway, pn_id: bytes) -> list[bytes | None]:
    """The LocalEUKeys the key server keeps for ``gw``'s elements in its PN ``pn_id``."""
    store = h.server.store
    return [await h.server.db(store.local_eukey, gw.me.device_id, pn_id, e.me.device_id)
            for e in gw.elements]


async def test_a_gateway_that_names_anothers_pn_id_registers_a_pn_of_its_own(
    tmp_path: Path,
) -> None:
    """The owner registers its PN.  The squatter registers the same id, under another name and
    setup type, with an element of its own, then again with a second one: each time it is
    answered about its own element only (nothing of who is in the owner's PN), and the owner's
    PN keeps its name, setup type, members and their LocalEUKeys.  The owner's next
    registration under its id extends its own PN, not the squatter's."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        owner, squatter = await enrolled(h, 2), await enrolled(h, 2)
        pn_id = os.urandom(16)
        first = Gateway(owner.me, owner.eukey, owner.elements[:1])
        resp = await registered(h, first, request(first, pn_id))
        assert resp.registered
        keys = given(resp, first)

        for k in (1, 2):
            some = Gateway(squatter.me, squatter.eukey, squatter.elements[:k])
            resp = await registered(
                h, some, request(some, pn_id, name="squatter", setup=SetupType.ONE_TO_ONE))
            assert resp.registered and verdicts(resp, some) == [(True, None)] * k
            assert sorted(r.pne_id.hex() for r in resp.results) == ids(some)
            row = await stored(h, owner, pn_id)
            assert (row.gw_name, row.setup_type) == ("gateway", SetupType.ALL)
            assert await members(h, owner, pn_id) == ids(first)
            assert await local_keys(h, first, pn_id) == keys
        assert await members(h, squatter, pn_id) == ids(squatter)
        assert (await stored(h, squatter, pn_id)).gw_name == "squatter"

        again = Gateway(owner.me, owner.eukey, owner.elements[1:])
        assert (await registered(h, again, request(again, pn_id))).registered
        assert await members(h, owner, pn_id) == ids(owner)
        assert await local_keys(h, first, pn_id) == keys
        assert await members(h, squatter, pn_id) == ids(squatter)


@pytest.mark.parametrize("with_own", [True, False], ids=["with-own-element", "alone"])
async def test_a_gateway_cannot_get_the_owners_element_into_its_pn_with_what_it_heard(
    tmp_path: Path, with_own: bool,
) -> None:
    """The owner registers its element.  The squatter heard all of it on the owner's PAN: the
    PN id, the element's id and ``rand_PNE``, and the element's answer to the key server.  It
    registers the same id naming the owner's element (its id, that ``rand_PNE``) and relays
    the answer it heard as the element's: the key server's question to it was another (its own
    ``rand_server``, the squatter's id in the hash), so the element fails ("authentication
    failed") and is in no PN of the squatter's; alone, the squatter has no PN at all.  The
    owner's PN keeps the element, with its LocalEUKey."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        owner, squatter = await enrolled(h, 1), await enrolled(h, 1)
        pn_id = os.urandom(16)
        heard: list[bytes] = []
        resp = await registered(h, owner, request(owner, pn_id), heard=heard)
        assert resp.registered and len(heard) == 1
        keys = given(resp, owner)

        theirs = owner.elements[0]
        posing = Element(theirs.me, os.urandom(32), theirs.rand_pne)  # not the element's key
        mine = squatter.elements if with_own else []
        gw = Gateway(squatter.me, squatter.eukey, [*mine, posing])
        resp = await registered(h, gw, request(gw, pn_id), forged={len(mine): heard[0]})
        assert verdicts(resp, gw) == [(True, None)] * len(mine) + [
            (False, "authentication failed")]
        assert resp.registered is with_own
        if with_own:
            assert await members(h, squatter, pn_id) == ids(squatter)
        else:
            with pytest.raises(NotFoundError):
                await stored(h, squatter, pn_id)
        assert await members(h, owner, pn_id) == ids(owner)
        assert await local_keys(h, owner, pn_id) == keys


async def test_two_gateways_registering_one_pn_id_at_once_each_get_their_own(
    tmp_path: Path,
) -> None:
    """The owner and the squatter register the same id at the same instant, three times over:
    neither is refused, whoever comes first, and each PN holds only its gateway's element."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        owner, squatter = await enrolled(h, 1), await enrolled(h, 1)
        for _ in range(3):
            pn_id = os.urandom(16)
            both = await asyncio.gather(*(
                registered(h, gw, request(gw, pn_id)) for gw in (owner, squatter)))
            assert [r.registered for r in both] == [True, True]
            assert await members(h, owner, pn_id) == ids(owner)
            assert await members(h, squatter, pn_id) == ids(squatter)


# -- the element's side: its memberships under one PN id -----------------------------------------


def _take_pn_id(home: Path, pn_id: str) -> None:
    """Give the gateway of keystore ``home`` the PN id ``pn_id`` (as a gateway that heard it
    would: its own PN record under that id, no member yet), before its ``pn gateway`` starts."""
    from pairkit.keystore import Keystore
    from pairkit.pairing.keystore import PnRecord

    ks = Keystore.open(home / "keystore.pk", KEYSTORE_PIN)
    with ks.update():
        ks.set_pn(PnRecord(pn_id=pn_id, role="gateway", gw_id=ks.device_id, gw_name=ks.name,
                           setup="1-1", updated=time.time()))


async def test_an_element_that_joins_a_squatters_pn_under_its_gateways_id_keeps_its_own(
    tmp_path: Path,
) -> None:
    """The watch is a member of Paul's phone's PN.  Mallory's phone, enrolled with the same key
    server, runs its gateway under that PN id (heard on the PAN), and the watch joins it (its
    person said yes to a gateway it reached; the key server now registers it, the PN being
    Mallory's own).  The watch must keep both memberships, each with its gateway, and come
    back on Paul's phone with its link key: joining one gateway's PN must not wipe the
    membership of another gateway's PN that happens to carry the same id."""
    names = {"gw": "Paul's phone", "sq": "Mallory's phone", "watch": "Paul's watch"}
    async with pn_lab(tmp_path, names) as lab:
        pn_id, gw_addr, _, _ = await _member_of_both(lab, names)
        pns = (await lab.run("watch", "pn", "ls", "--json")).ok().json()["pns"]
        assert sorted((p["pn"], p["gateway"]["id"]) for p in pns) == sorted(
            [(pn_id, lab.ids["gw"]), (pn_id, lab.ids["sq"])])
        back = (await lab.run("watch", "pn", "join", gw_addr, "--json")).ok().json()
        assert back["resumed"] and back["gateway"]["id"] == lab.ids["gw"]

        # `pn send --pn ID` cannot tell the two apart: the owner is told how to name one, and
        # `--pn ID@GATEWAY` (a prefix of the gateway's id, or its name) picks one, past which
        # the watch is told it is sending to itself (its PNs' one member); a gateway it is in no
        # PN of is named nowhere.
        both = await lab.run("watch", "pn", "send", names["watch"], "hi", "--pn", pn_id[:16])
        assert both.rc == 2, both
        for who in ("gw", "sq"):
            assert f"{pn_id[:16]}@{lab.ids[who][:8]} ({names[who]})" in both.err, both
        for pick in (f"{pn_id[:16]}@{lab.ids['sq'][:8]}", f"{pn_id[:16]}@{names['gw']}"):
            one = await lab.run("watch", "pn", "send", names["watch"], "hi", "--pn", pick)
            assert one.rc == 2 and "that is this device" in one.err, one
        other = await lab.run("watch", "pn", "send", names["watch"], "hi",
                              "--pn", f"{pn_id[:16]}@{lab.ids['watch'][:8]}")
        assert other.rc == 6 and "in no PN that --pn" in other.err, other


async def _member_of_both(lab: Any, names: dict[str, str]) -> tuple[str, str, str, Any]:
    """The watch joins Paul's phone's PN, then the squatter's under the same PN id (its person
    said yes to a gateway it reached): (the PN id, the owner's address, the squatter's, the
    owner's gateway process)."""
    gw_addr = f"tcp:127.0.0.1:{free_port()}"
    gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--yes", "--json")
    await gw.narration("is the PN gateway on")
    pn_id = (await lab.run("watch", "pn", "join", gw_addr, "--setup", "1-1", "--json")
             ).ok().json()["pn"]
    _take_pn_id(lab.homes["sq"], pn_id)
    sq_addr = f"tcp:127.0.0.1:{free_port()}"
    sq = await lab.start("sq", "pn", "gateway", "-t", sq_addr, "--yes", "--json")
    await sq.narration("is the PN gateway on")
    joined = (await lab.run("watch", "pn", "join", sq_addr, "--setup", "1-1", "--json")
              ).ok().json()
    assert joined["pn"] == pn_id and joined["gateway"]["id"] == lab.ids["sq"]
    return pn_id, gw_addr, sq_addr, gw


async def test_pn_ls_tells_apart_two_memberships_under_one_pn_id_and_one_gateway_name(
    tmp_path: Path,
) -> None:
    """The squatter also calls itself "Paul's phone".  `pn send --pn ID` then lists the two
    memberships as ID@GATEWAY-ID (name), and `--pn ID@Paul's phone` names both: the owner picks
    one by the gateway's id.  Before, `pn ls` showed each membership by its PN id, gateway name
    and address only, so the id `--pn` asks for was nowhere in its text (attack review of the
    PN id scoping)."""
    names = {"gw": "Paul's phone", "sq": "Paul's phone", "watch": "Paul's watch"}
    async with pn_lab(tmp_path, names) as lab:
        pn_id, gw_addr, sq_addr, _ = await _member_of_both(lab, names)
        both = await lab.run("watch", "pn", "send", names["watch"], "hi",
                             "--pn", f"{pn_id[:16]}@Paul's phone")
        assert both.rc == 2 and both.err.count("(Paul's phone)") == 2, both
        shown = (await lab.run("watch", "pn", "ls")).ok().out.splitlines()
        for who, addr in (("gw", gw_addr), ("sq", sq_addr)):
            line = next(x for x in shown if x.startswith(f"PN {pn_id}") and addr in x)
            assert lab.ids[who][:16] in line, shown


async def test_an_element_resumes_its_gateways_pn_after_the_gateway_moved(
    tmp_path: Path,
) -> None:
    """The watch is a member of Paul's phone's PN and (later) of the squatter's under the same
    id.  Paul's phone comes back on another address (a restart on another port; on a radio, a
    rotated address): `pn join NEW-ADDRESS` joined no PN there, and does not guess: it names
    the two, and `--pn ID@GATEWAY` resumes Paul's phone's PN.  Before, it took the newest
    membership, the squatter's, and failed against Paul's phone ("the gateway did not prove
    the link key: it is not this PN's gateway"; a strict xfail until fixed)."""
    names = {"gw": "Paul's phone", "sq": "Mallory's phone", "watch": "Paul's watch"}
    async with pn_lab(tmp_path, names) as lab:
        pn_id, _, _, gw = await _member_of_both(lab, names)
        await gw.stop()
        new_addr = f"tcp:127.0.0.1:{free_port()}"
        moved = await lab.start("gw", "pn", "gateway", "-t", new_addr, "--yes", "--json")
        await moved.narration("is the PN gateway on")
        guess = await lab.run("watch", "pn", "join", new_addr, "--json")
        assert guess.rc == 2 and "several PNs" in guess.err, guess
        for who in ("gw", "sq"):
            assert f"{pn_id[:16]}@{lab.ids[who][:8]} ({names[who]})" in guess.err, guess
        back = await lab.run("watch", "pn", "join", new_addr, "--json",
                             "--pn", f"{pn_id[:16]}@{lab.ids['gw'][:8]}")
        assert back.rc == 0, back
        assert back.json()["resumed"] and back.json()["gateway"]["id"] == lab.ids["gw"]


async def test_a_squatter_named_after_the_owners_id_does_not_shadow_it_in_pn_send(
    tmp_path: Path,
) -> None:
    """The squatter calls itself by the first 8 digits of the owner gateway's id, as `pn send`
    shows it in the choices (ID@GATEWAY-ID): `--pn ID@THOSE-DIGITS` names the owner's PN by
    its gateway's id, and a gateway whose name happens to be those digits does not make it
    ambiguous (before, it matched both, and the owner was asked to name one again)."""
    names = {"gw": "Paul's phone", "sq": "Mallory's phone", "watch": "Paul's watch"}
    async with pn_lab(tmp_path, names) as lab:
        from pairkit.keystore import Keystore

        ks = Keystore.open(lab.homes["sq"] / "keystore.pk", KEYSTORE_PIN)
        with ks.update():
            ks.rename(lab.ids["gw"][:8])
        pn_id, _, _, _ = await _member_of_both(lab, names)
        pick = f"{pn_id[:16]}@{lab.ids['gw'][:8]}"
        one = await lab.run("watch", "pn", "send", names["watch"], "hi", "--pn", pick)
        assert one.rc == 2 and "that is this device" in one.err, one
