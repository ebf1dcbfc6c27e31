"""Strangers against a PN gateway's setups (``pairkit pn gateway``): one setup runs at a time,
so whoever holds the gateway's setup must not keep the real elements' setups out.

A stranger in reach needs no key to start a setup: a ``PnSetupRequest`` under an element's id
(ids cross the PAN in the clear; any enrolled device's id will do) makes a ``--yes`` gateway
register it with the key server, which then asks that element to prove its factory key.  The
stranger never answers: the setup holds the gateway until a deadline ends it (the key server's
wait for the answer, or twice the gateway's step timeout, whichever comes first), then the
stranger asks again.  Played against real ``pairkit`` processes over TCP with a key server
process (tests/pn_harness.py); the strangers speak from 127.0.0.2, 127.0.0.3, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from pairkit.driver import MessagePipe
from pairkit.pairing import wire
from pairkit.pairing.cpns import (
    PnAttach,
    PnSetupNotify,
    PnSetupNotifyResponse,
    PnSetupRequest,
    SetupType,
)
from pairkit.pairing.errors import PairingError
from tests.flood_harness import attacker_addresses, frame, link_from
from tests.pn_harness import pn_lab

NAMES = {"gw": "Paul's phone", "watch": "Paul's watch", "scale": "Paul's scale"}


def setup_request(pne_id: str, setup: SetupType = SetupType.ONE_TO_ONE) -> bytes:
    """A ``PnSetupRequest`` (1-1 unless told) under ``pne_id`` (an enrolled element's: the
    stranger copied it off the air), as the TCP transport frames it after its length."""
    request = PnSetupRequest(
        pne_id=bytes.fromhex(pne_id), name="Paul's scale", caps=1,
        setup_type=setup, rand_pne=os.urandom(16), local_key_request=True,
    )
    return frame(request.encode())[4:]


@contextlib.asynccontextmanager
async def until_hung_up(link: Any) -> AsyncIterator[None]:
    """A stranger's link: the gateway hanging up, or a read timing out, ends the block quietly,
    and the link is closed after it."""
    try:
        yield
    except (PairingError, OSError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await link.close()

async def hold_setups(port: int, pne_id: str, sources: list[str], stop: asyncio.Event,
                      counts: dict[str, int], *, chatter: bool = False) -> None:
    """From each of ``sources``, back to back until ``stop``: a setup request, then silence
    until the gateway closes the link (the setup ended, or it was refused).  With ``chatter``,
    a message of no use right after the request and every half second (the gateway drops the
    stranger from its setup at once; the key server still waits for its proof)."""

    async def one(source: str) -> None:
        while not stop.is_set():
            try:
                link = await link_from(source, "127.0.0.1", port)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            counts["requests"] += 1
            async with until_hung_up(link):
                await link.send(setup_request(pne_id))
                while not stop.is_set():  # read (and ignore) until the gateway hangs up
                    if chatter:
                        await link.send(frame(PnAttach(os.urandom(16), "", 1).encode())[4:])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(link.recv(), 0.5 if chatter else 60.0)
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one(s) for s in sources))


@contextlib.asynccontextmanager
async def running(attack: Coroutine[Any, Any, Any], stop: asyncio.Event) -> AsyncIterator[None]:
    """Run ``attack`` in the background while the block runs; then tell it to stop and end it
    (a stranger mid-way may not look at ``stop``)."""
    task = asyncio.ensure_future(attack)
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_an_element_in_reach_while_a_strangers_setup_runs_is_still_set_up(
    tmp_path: Path,
) -> None:
    """The gateway sets up "all" on its own once one element is in reach.  Before any element
    comes, a stranger starts a 1-1 setup under the scale's id and stays silent: it holds the
    gateway's setup.  The watch comes in reach meanwhile: once the stranger's setup ends, the
    gateway's own setup must run and make the watch a member (before, the gateway looked for
    the elements it waits for only when one came in reach, and the watch came while the
    stranger held the setup: it was never asked, and its wait ran out)."""
    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, gw_addr = await lab.gateway("--yes", "--setup", "all", "--wait-for", "1",
                                              "--collect", "1", "--timeout", "3")
        (source,) = attacker_addresses(1)
        stranger = await link_from(source, "127.0.0.1", port)
        try:
            await stranger.send(setup_request(lab.ids["scale"]))
            await gw.narration(r"setting up the PN \(1-1\)")
            joined = await lab.run("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                                   "--timeout", "20")
        finally:
            with contextlib.suppress(Exception):
                await stranger.close()
        assert joined.ok().json()["ok"] is True
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        await gw.stop()


async def test_strangers_setup_requests_back_to_back_do_not_keep_an_element_out(
    tmp_path: Path,
) -> None:
    """Two stranger addresses send 1-1 setup requests under the scale's id back to back, each
    staying silent once the key server asks it for its proof.  The watch then starts its own
    1-1 setup: it must become a member (waiting its turn), not be told the gateway is busy
    for as long as the strangers keep asking.  (The watch waits at most twice the gateway's
    step for its turn, and each stranger ahead of it holds the setup for its key server round
    trip and AUTH_GRACE: a step of 6 s leaves that wait room on a loaded CI machine, where 4 s
    once did not; a queue that let the strangers go first would keep the watch out however
    long it waits.)"""
    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, gw_addr = await lab.gateway("--yes", "--collect", "1", "--timeout", "6")
        stop = asyncio.Event()
        counts = {"requests": 0}
        attack = hold_setups(port, lab.ids["scale"], attacker_addresses(2), stop, counts)
        async with running(attack, stop):
            await gw.narration(r"setting up the PN \(1-1\)")
            joined = await lab.run("watch", "pn", "join", gw_addr, "--setup", "1-1", "--json",
                                   "--timeout", "15")
        assert joined.ok().json()["ok"] is True, joined.err
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        assert counts["requests"] >= 2  # the strangers did ask, and kept asking
        await gw.stop()


async def attach_again_and_again(port: int, pne_id: str, stop: asyncio.Event,
                                 counts: dict[str, int]) -> None:
    """A stranger in reach under ``pne_id`` (``PnAttach``, then silence), back in reach as
    soon as the gateway drops it, until ``stop``."""
    (source,) = attacker_addresses(1, first=5)
    while not stop.is_set():
        try:
            link = await link_from(source, "127.0.0.1", port)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        counts["attached"] += 1
        async with until_hung_up(link):
            await link.send(frame(PnAttach(bytes.fromhex(pne_id), "Paul's watch", 1).encode())[4:])
            while not stop.is_set():  # never answer; read until the gateway hangs up
                await asyncio.wait_for(link.recv(), 60.0)


async def test_a_stranger_under_the_invited_id_does_not_keep_the_element_out_of_every_retry(
    tmp_path: Path,
) -> None:
    """The gateway sets up 1-1 with the watch (``--setup 1-1 --invite WATCH``).  A stranger
    says it is the watch, stays silent, and comes back in reach each time it is dropped.  The
    watch comes in reach too: two links now claim its id.  The gateway cannot tell which is
    the watch before the key server's proof, but it must not drop both at every retry: one
    link per id takes part in a setup, the others stay in reach for the next, and the watch
    must end a member."""
    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, gw_addr = await lab.gateway("--setup", "1-1", "--invite", lab.ids["watch"],
                                              "--collect", "1", "--timeout", "3")
        stop = asyncio.Event()
        counts = {"attached": 0}
        async with running(attach_again_and_again(port, lab.ids["watch"], stop, counts), stop):
            await gw.narration(r"setting up the PN \(1-1\)")
            joined = await lab.run("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                                   "--timeout", "20")
        assert joined.ok().json()["ok"] is True
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        assert counts["attached"] >= 2  # the stranger was dropped, and came back
        await gw.stop()


async def test_a_stranger_left_in_reach_under_an_id_does_not_shadow_the_element_later(
    tmp_path: Path,
) -> None:
    """One link per id takes part in a setup, the first to come in reach: the stranger that
    came first under the watch's id must not stay first for ever.  It is in reach (silent,
    its link kept open) when the gateway sets up "all" with the scale; it fails that setup and
    is let go.  The watch then comes in reach, and the scale's next "all" setup must ask it."""
    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, gw_addr = await lab.gateway("--yes", "--setup", "all", "--wait-for", "2",
                                              "--collect", "1", "--timeout", "3")
        (source,) = attacker_addresses(1)
        stranger = await link_from(source, "127.0.0.1", port)
        try:
            claim = PnAttach(bytes.fromhex(lab.ids["watch"]), "Paul's watch", 1).encode()
            await stranger.send(frame(claim)[4:])
            await gw.narration("Paul's watch .* is in reach")
            (await lab.run("scale", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                           "--timeout", "20")).ok()
            watch = await lab.start("watch", "pn", "join", gw_addr, "--wait", "--yes",
                                    "--json", "--timeout", "20")
            await gw.wait_for(lambda: sum("Paul's watch" in e and "in reach" in e
                                          for e in gw.err) == 2, "the watch in reach")
            (await lab.run("scale", "pn", "join", gw_addr, "--setup", "all", "--json",
                           "--timeout", "20")).ok()
            assert await watch.finish() == 0, "\n".join(watch.err)
        finally:
            with contextlib.suppress(Exception):
                await stranger.close()
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert sorted(m["id"] for m in pn["members"]) == sorted(
            [lab.ids["watch"], lab.ids["scale"]])
        await gw.stop()


async def asked_and_silent(port: int, pne_id: str) -> None:
    """A stranger in reach under ``pne_id`` that takes part when asked (it accepts the setup
    notify), then never answers the key server's authentication request."""
    (source,) = attacker_addresses(1, first=7)
    link = await link_from(source, "127.0.0.1", port)
    pipe = MessagePipe(link, guest=True)
    async with until_hung_up(link):
        await pipe.send(PnAttach(bytes.fromhex(pne_id), "Paul's scale", 1).encode())
        while True:
            message = wire.decode(await asyncio.wait_for(pipe.recv(), 60.0))
            if isinstance(message, PnSetupNotify):
                await pipe.send(PnSetupNotifyResponse(
                    pne_id=bytes.fromhex(pne_id), name="Paul's scale", caps=1,
                    rand_pne=os.urandom(16), local_key_request=True, accept=True).encode())


async def test_a_stranger_asked_in_a_setup_does_not_make_it_fail_for_the_element(
    tmp_path: Path,
) -> None:
    """The gateway sets up "all" once two elements are in reach.  A stranger is in reach under
    the scale's id (enrolled, not here), accepts the notify, and never answers the key server's
    authentication request.  The watch, asked in the same setup, answers at once: it must end a
    member, whatever the stranger does (attack review of the setup retry, finding 4: the key
    server waited its own 30 s for the stranger, the gateway's registration deadline, twice its
    6 s step, passed first, and the setup failed for the watch too; now the gateway tells the
    key server its elements have 6 s to answer, and the key server answers for the watch and
    the silent stranger within them)."""
    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, gw_addr = await lab.gateway("--setup", "all", "--wait-for", "2", "--collect", "2",
                                              "--timeout", "6")
        stranger = asyncio.create_task(asked_and_silent(port, lab.ids["scale"]))
        try:
            await gw.narration("Paul's scale .* is in reach")
            joined = await lab.run("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                                   "--timeout", "40", timeout=60)
        finally:
            stranger.cancel()
            with contextlib.suppress(BaseException):
                await stranger
        assert joined.ok().json()["ok"] is True
        await gw.stop()


async def test_a_stranger_that_speaks_out_of_turn_does_not_hold_the_gateway(
    tmp_path: Path,
) -> None:
    """A stranger sends a setup request under the scale's id, then a message of no use, and
    another every half second: the gateway drops it from its own setup at once (so it never
    owes the authentication answer), while the key server, asked to register it, waits for
    its proof until a deadline (here the gateway's, twice its 4 s step).  The watch then
    starts its 1-1 setup and waits 5 s for the key server's question, as an element does: the
    stranger's setup must give way to it, not hold the gateway to its deadline."""
    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, gw_addr = await lab.gateway("--yes", "--collect", "1", "--timeout", "4")
        stop = asyncio.Event()
        counts = {"requests": 0}
        attack = hold_setups(port, lab.ids["scale"], attacker_addresses(1), stop, counts,
                             chatter=True)
        async with running(attack, stop):
            await gw.narration("left the setup: a PNE sent PnAttach")
            joined = await lab.run("watch", "pn", "join", gw_addr, "--setup", "1-1", "--json",
                                   "--timeout", "5")
        assert joined.ok().json()["ok"] is True, joined.err
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        await gw.stop()


async def test_a_setup_with_an_element_whose_person_decides_is_not_cut(tmp_path: Path) -> None:
    """The other side of the rule above: a setup gives way only when every element in it holds
    it up.  A stranger starts an "all" setup and speaks out of turn at once (dropped); the
    watch, in reach, is asked to join it, and its person takes 3 s to say yes; another
    stranger's setup request waits meanwhile.  The watch owes nothing while its person decides:
    the setup must not be cut under it, and the watch must end a member."""
    from pairkit.cli.ttp_cli import SETTING_EUKEY
    from pairkit.keystore import Keystore
    from pairkit.pairing.cpns import PneConfig
    from pairkit.pn import pne_setup
    from pairkit.transports.tcp import tcp_connect
    from tests.cli_helpers import KEYSTORE_PIN

    class SlowPerson:
        async def allow_pn_join(self, question: object) -> bool:
            await asyncio.sleep(3.0)
            return True

    async with pn_lab(tmp_path, NAMES) as lab:
        gw, port, _ = await lab.gateway("--yes", "--collect", "10", "--timeout", "4")
        ks = Keystore.open(lab.homes["watch"] / "keystore.pk", KEYSTORE_PIN)
        config = PneConfig(bytes.fromhex(ks.device_id), ks.name, ks.setting(SETTING_EUKEY),
                           join="ask", step_timeout=15.0)
        link = await tcp_connect("127.0.0.1", port, 10.0)
        watch = asyncio.create_task(pne_setup(link, config, listen=True, delegate=SlowPerson()))
        first, second = attacker_addresses(2)
        strangers = []
        try:
            await gw.narration("Paul's watch .* is in reach")
            strangers.append(await link_from(first, "127.0.0.1", port))
            await strangers[0].send(setup_request(lab.ids["scale"], SetupType.ALL))
            await strangers[0].send(frame(PnAttach(os.urandom(16), "", 1).encode())[4:])
            await gw.narration("left the setup: a PNE sent PnAttach")
            strangers.append(await link_from(second, "127.0.0.1", port))
            await strangers[1].send(setup_request(lab.ids["scale"]))
            machine, channel = await asyncio.wait_for(watch, 30.0)
        finally:
            watch.cancel()
            for stranger in strangers:
                with contextlib.suppress(Exception):
                    await stranger.close()
            with contextlib.suppress(Exception):
                await link.close()
        assert machine.membership is not None and channel is not None
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["id"] for m in pn["members"]] == [lab.ids["watch"]]
        await gw.stop()
