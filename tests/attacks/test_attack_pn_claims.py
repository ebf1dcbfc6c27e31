"""A stranger in reach of a PN gateway that claims a member's id (``PnAttach`` carries ids in
the clear: anyone in reach learns them), played against real ``pairkit pn`` processes over TCP
with a key server process (tests/pn_harness.py).  Claiming an id proves nothing, so it must
take nothing from the device that owns it: neither its place in the PN nor its link."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pairkit.pairing.cpns import PnAttach
from tests.flood_harness import attacker_addresses, frame, link_from
from tests.pn_harness import free_port, pn_lab

NAMES = {"gw": "Paul's phone", "watch": "Paul's watch", "scale": "Paul's scale"}


async def test_a_stranger_claiming_a_waiting_elements_id_takes_neither_its_place_nor_link(
    tmp_path: Path,
) -> None:
    """The gateway sets up "all" once two elements are in reach.  The watch waits; a stranger
    then says it is the watch (same id, same name) and stays silent; the scale comes in reach.
    The stranger's link is dropped as failed; the watch must end a member on its own link (not
    the gateway's secure channel opened on the stranger's), and come back later with the key
    it stored."""
    async with pn_lab(tmp_path, NAMES) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--json", "--setup", "all",
                             "--wait-for", "2", "--collect", "2", "--timeout", "8")
        await gw.narration("is the PN gateway on")
        watch = await lab.start("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                                "--timeout", "8")
        await gw.narration("Paul's watch .* is in reach")
        (source,) = attacker_addresses(1)
        stranger = await link_from(source, "127.0.0.1", port)
        try:
            claim = PnAttach(bytes.fromhex(lab.ids["watch"]), "Paul's watch", 1).encode()
            await stranger.send(frame(claim)[4:])
            await gw.wait_for(lambda: sum("Paul's watch" in e and "in reach" in e
                                          for e in gw.err) == 2, "the stranger's claim")
            scale = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes",
                                    "--json", "--timeout", "8")
            setup = await gw.json_line("event", "setup")
            assert await watch.finish() == 0, "\n".join(watch.err)
            assert await scale.finish() == 0, "\n".join(scale.err)
        finally:
            with contextlib.suppress(Exception):
                await stranger.close()
        members = sorted([lab.ids["watch"], lab.ids["scale"]])
        assert sorted(m["id"] for m in setup["members"]) == members
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert sorted(m["id"] for m in pn["members"]) == members
        # The watch comes back with the key it stored: the gateway holds the same one.
        back = await lab.run("watch", "pn", "join", gw_addr, "--json", "--timeout", "8")
        assert back.ok().json()["resumed"] is True
        await gw.stop()


async def test_a_stranger_claiming_a_members_id_in_a_later_setup_does_not_remove_it(
    tmp_path: Path,
) -> None:
    """The watch is a member.  In a later "all" setup (the scale's), a stranger in reach says it
    is the watch and never answers the notify: it fails, and the watch, which proved its key
    in an earlier setup and took no part in this one, must stay a member."""
    async with pn_lab(tmp_path, NAMES) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--json", "--yes",
                             "--collect", "2", "--timeout", "8")
        await gw.narration("is the PN gateway on")
        (await lab.run("watch", "pn", "join", gw_addr, "--setup", "1-1", "--json")).ok()
        (source,) = attacker_addresses(1)
        stranger = await link_from(source, "127.0.0.1", port)
        try:
            claim = PnAttach(bytes.fromhex(lab.ids["watch"]), "Paul's watch", 1).encode()
            await stranger.send(frame(claim)[4:])
            await gw.narration("Paul's watch .* is in reach")
            (await lab.run("scale", "pn", "join", gw_addr, "--setup", "all", "--json")).ok()
        finally:
            with contextlib.suppress(Exception):
                await stranger.close()
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert sorted(m["id"] for m in pn["members"]) == sorted(
            [lab.ids["watch"], lab.ids["scale"]])
        back = await lab.run("watch", "pn", "join", gw_addr, "--json", "--timeout", "8")
        assert back.ok().json()["resumed"] is True
        await gw.stop()


async def test_strangers_in_reach_first_do_not_spend_the_gateways_own_setup(
    tmp_path: Path,
) -> None:
    """The gateway sets up "all" on its own once one element is in reach (``--setup all
    --wait-for 1``).  A stranger comes in reach first, with a made-up id, and stays silent:
    the setup starts with it and ends without a member.  The watch, coming in reach after,
    must still be set up: a setup that got fewer members than it waited for runs again, not
    never."""
    async with pn_lab(tmp_path, {k: NAMES[k] for k in ("gw", "watch")}) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--json", "--setup", "all",
                             "--wait-for", "1", "--collect", "1", "--timeout", "3")
        await gw.narration("is the PN gateway on")
        (source,) = attacker_addresses(1)
        stranger = await link_from(source, "127.0.0.1", port)
        try:
            await stranger.send(frame(PnAttach(bytes(range(16)), "Lamp", 1).encode())[4:])
            await gw.narration("setting up the PN")
            await gw.wait_for(lambda: any("the PN setup failed" in e or "left the setup" in e
                                          for e in gw.err), "the stranger's setup to end")
        finally:
            with contextlib.suppress(Exception):
                await stranger.close()
        joined = await lab.run("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                               "--timeout", "20")
        assert joined.ok().json()["ok"] is True
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        await gw.stop()
