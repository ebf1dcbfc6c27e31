"""Attacks on the key server's hand-over in memory (a match made in the server's own process
gives the key to the waiting intent without the store), on SQLite and on a real PostgreSQL
(tests/pg_harness.py): a real server on 127.0.0.1, real devices over TLS, no state forced.

The races are played for real: the partner's intent is sent many times at once (on as many
connections) while the first device waits, and a waiting device hangs up the instant its
partner's intents arrive.  Whatever interleaving happens, an intent is matched at most once,
the key each side holds is the same, and nothing is left behind (no row, no waiter).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pairkit.pairing.errors import PairingError
from pairkit.pairing.ttp import IntentRole, SkDelivery
from pairkit.ttp import enrol, request_key
from tests.pg_harness import PgCluster, pg_url, postgres
from tests.ttp_harness import ServerHarness, identity, running_server

__all__ = ["PgCluster", "pg_url", "postgres"]

CTX = b"\x6b" * 32


async def _waiting(h: ServerHarness) -> None:
    for _ in range(250):
        if h.server._waiters:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no intent is waiting")


async def _many_partners_race_one_waiter(h: ServerHarness, rounds: int = 3) -> None:
    a, b = identity("a"), identity("b")
    await enrol(h.address, h.ca, a)
    await enrol(h.address, h.ca, b)
    for _ in range(rounds):
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=4))
        await _waiting(h)
        guests = await asyncio.gather(*(
            request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                        role=IntentRole.GUEST, wait=1)
            for _ in range(8)
        ), return_exceptions=True)
        ka = await asyncio.wait_for(host, 15)
        delivered = [g for g in guests if isinstance(g, SkDelivery)]
        # Exactly one of b's intents met a's; the others waited for a second a, in vain.
        assert len(delivered) == 1, guests
        assert delivered[0].sk == ka.sk and delivered[0].match_id == ka.match_id
        assert all(isinstance(g, SkDelivery | PairingError) for g in guests), guests
        for _ in range(100):  # the guests that waited withdraw their intents
            if not h.server._waiters and await h.server.db(h.server.store.pending_count) == 0:
                break
            await asyncio.sleep(0.05)
        assert h.server._waiters == {}
        assert await h.server.db(h.server.store.pending_count) == 0


async def _waiter_hangs_up_as_it_is_matched(h: ServerHarness, rounds: int = 6) -> None:
    """The waiting device's connection is cut the instant its partner's intent is sent: the
    partner may get a key (the pairing then fails on the radio and is redone), but the server
    keeps neither the waiter, nor a row, nor a key in memory."""
    a, b = identity("a"), identity("b")
    await enrol(h.address, h.ca, a)
    await enrol(h.address, h.ca, b)
    for i in range(rounds):
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=4))
        await _waiting(h)
        guest = asyncio.ensure_future(request_key(
            h.address, h.ca, b, peer_id=a.device_id, context=CTX, role=IntentRole.GUEST,
            wait=1))
        for _ in range(i):  # a different instant each round
            await asyncio.sleep(0)
        host.cancel()
        with pytest.raises((asyncio.CancelledError, PairingError)):
            await host
        result = await asyncio.gather(guest, return_exceptions=True)
        assert isinstance(result[0], SkDelivery | PairingError), result
        for _ in range(200):
            if not h.server._waiters and await h.server.db(h.server.store.pending_count) == 0:
                break
            await asyncio.sleep(0.05)
        assert h.server._waiters == {}  # no waiter, so no key held in memory for one
        # A match that came between the waiter's leaving and its withdrawal is stored sealed
        # for it (documented); it goes with its row at the intent's expiry (the janitor's
        # purge), and nothing else is left.
        await h.server.db(h.server.store.purge, h.server._clock() + 5)
        assert await h.server.db(h.server.store.pending_count) == 0


async def test_many_partner_intents_at_once_match_the_waiter_once_sqlite(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        await _many_partners_race_one_waiter(h)


async def test_many_partner_intents_at_once_match_the_waiter_once_postgres(
    tmp_path: Path, pg_url: str,
) -> None:
    async with running_server(tmp_path / "srv", database=pg_url) as h:
        await _many_partners_race_one_waiter(h)


async def test_a_waiter_hanging_up_as_it_is_matched_leaves_nothing_sqlite(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        await _waiter_hangs_up_as_it_is_matched(h)


async def test_a_waiter_hanging_up_as_it_is_matched_leaves_nothing_postgres(
    tmp_path: Path, pg_url: str,
) -> None:
    async with running_server(tmp_path / "srv", database=pg_url) as h:
        await _waiter_hangs_up_as_it_is_matched(h)
