"""The key server hands a key to an intent waiting in its own process in memory (issue 13):
the matching transaction deletes the waiting row, so the intent cannot be matched twice and
its key is never stored; and every race falls back to the store, so no key is lost silently.

A real server on 127.0.0.1 (tests/ttp_harness.py), real devices over TLS; the races are set
up by putting the waiting intent in the state the race would leave it in.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pairkit.keyserver import server as server_module
from pairkit.keyserver import store as store_module
from pairkit.pairing.ttp import IntentAsked, IntentRole, SkDelivery
from pairkit.ttp import enrol, request_key
from tests.ttp_harness import ServerHarness, identity, running_server

CTX = b"\x5a" * 32


async def _waiting_row(h: ServerHarness) -> int:
    """The row of the one intent waiting in the server (once its device has stated it)."""
    for _ in range(200):
        if h.server._waiters:
            return next(iter(h.server._waiters))
        await asyncio.sleep(0.02)
    raise AssertionError("no intent is waiting")


def _asked(device: Any, peer: Any, role: IntentRole) -> IntentAsked:
    return IntentAsked(device.device_id, device.static_public, peer.device_id, CTX, role, 5.0)


async def test_a_match_in_the_same_process_is_handed_over_and_leaves_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    takes: list[int] = []
    original = store_module.Store.take_match

    def counted(self: store_module.Store, row: int) -> Any:
        takes.append(row)
        return original(self, row)

    monkeypatch.setattr(store_module.Store, "take_match", counted)
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=5))
        await _waiting_row(h)
        takes.clear()  # a poll of the store before the match is not the hand-over
        kb = await request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                               role=IntentRole.GUEST, wait=5)
        ka = await asyncio.wait_for(host, 10)
        assert ka.sk == kb.sk and ka.match_id == kb.match_id
        assert ka.peer.device_id == b.device_id and kb.peer.device_id == a.device_id
        assert await h.server.db(h.server.store.pending_count) == 0  # no row, no stored key
        assert h.server._waiters == {}


async def test_a_match_while_the_waiter_asks_the_store_is_stored_for_it(tmp_path: Path) -> None:
    """The waiter is asking the store (``taking``): the match cannot claim it, so the key is
    stored sealed, and the waiter's next look at the store finds it."""
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=5))
        row = await _waiting_row(h)
        waiting = h.server._waiters[row]
        with h.server._hand_lock:
            waiting.state = server_module._TAKING
        _, _, outcome = await h.server.db(
            server_module._post_intent, h.server, _asked(b, a, IntentRole.GUEST), h.server._clock())
        assert isinstance(outcome, store_module.Matched) and not outcome.handed
        with h.server._hand_lock:
            waiting.state = server_module._WAITING
        h.server._wake(row)
        ka = await asyncio.wait_for(host, 10)
        assert isinstance(ka, SkDelivery) and ka.sk == outcome.sk
        assert ka.match_id == outcome.match_id
        assert await h.server.db(h.server.store.pending_count) == 0


async def test_a_matching_transaction_that_fails_releases_its_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The match claimed the waiting intent, then its transaction failed (nothing committed):
    the claim is released, the intent still waits and a later match gives it its key."""
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=5))
        row = await _waiting_row(h)
        original = store_module._SqliteTx.run

        def failing(self: Any, sql: str, params: Any = ()) -> int:
            if sql.startswith("DELETE FROM intents WHERE id = ?"):
                raise OSError("disk gone")
            return original(self, sql, params)

        monkeypatch.setattr(store_module._SqliteTx, "run", failing)
        with pytest.raises(store_module.StoreError):  # as the server reports a store's failure
            await h.server.db(server_module._post_intent, h.server,
                              _asked(b, a, IntentRole.GUEST), h.server._clock())
        assert h.server._waiters[row].state == server_module._WAITING
        assert h.server._waiters[row].sk is None
        assert await h.server.db(h.server.store.pending_count) == 1  # rolled back: still waits
        monkeypatch.setattr(store_module._SqliteTx, "run", original)
        kb = await request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                               role=IntentRole.GUEST, wait=5)
        ka = await asyncio.wait_for(host, 10)
        assert ka.sk == kb.sk


async def test_a_waiter_that_gave_up_is_not_claimed(tmp_path: Path) -> None:
    """A waiter whose time ran out (``gone``) is withdrawn from the store; a match arriving
    then is not handed to it but waits as an intent of its own."""
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=5))
        row = await _waiting_row(h)
        with h.server._hand_lock:
            h.server._waiters[row].state = server_module._GONE
        assert not h.server._claim(row)
        host.cancel()
        with pytest.raises(asyncio.CancelledError):
            await host
