"""The key server hands a key to an intent waiting in its own process in memory (issue 13):
the matching transaction deletes the waiting row, so the intent cannot be matched twice and
its key is never stored; and every race falls back to the store, so no key is lost silently.

A real server on 127.0.0.1 (tests/ttp_harness.py), real devices over TLS; the races are set
up by putting the waiting intent in the state the race would leave it in.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from pairkit.keyserver import server as server_module
from pairkit.keyserver import store as store_module
from pairkit.pairing.errors import PairingError
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


def _count_take_matches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows the store's ``take_match`` is called for from now on (it still runs)."""
    takes: list[int] = []
    original = store_module.Store.take_match

    def counted(self: store_module.Store, row: int) -> Any:
        takes.append(row)
        return original(self, row)

    monkeypatch.setattr(store_module.Store, "take_match", counted)
    return takes


async def test_a_match_in_the_same_process_is_handed_over_and_leaves_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    takes = _count_take_matches(monkeypatch)
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


class _StoreGate:
    """Holds the store's thread in a call of its own until :meth:`open`, and counts the
    intents the devices post meanwhile (queued behind it): the way two intents reach the
    store together under load, both posted before either device's task runs again."""

    def __init__(self, h: ServerHarness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.h = h
        self.gate = threading.Event()
        self.asked = 0
        #: set on the store's thread once ``want`` intents were posted
        self.posted = threading.Event()
        self.want = 0
        self._done = 0
        original_db = h.server.db
        original_post = server_module._post_intent

        async def db(fn: Any, *args: Any, **kw: Any) -> Any:
            if fn is posting:
                self.asked += 1
            return await original_db(fn, *args, **kw)

        def posting(*args: Any, **kw: Any) -> Any:
            try:
                return original_post(*args, **kw)
            finally:
                self._done += 1
                if self._done >= self.want:
                    self.posted.set()

        monkeypatch.setattr(h.server, "db", db)
        monkeypatch.setattr(server_module, "_post_intent", posting)
        self.held = asyncio.ensure_future(original_db(lambda: self.gate.wait(10)))

    async def queued(self, n: int) -> None:
        self.want = n
        for _ in range(500):
            if self.asked >= n:
                # Calls made in one turn of the loop reach the store's thread at the start of
                # the next (``_StoreThreads._hand_over``, scheduled before this task goes on):
                # one more turn, so that a caller that then blocks the loop does not keep them
                # from it (under load the last call came in the very turn this saw it).
                await asyncio.sleep(0)
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} intents were not posted")


async def test_two_intents_that_reach_the_store_together_are_handed_over_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both intents of a pair posted before either device's task ran again (the common case
    under load: bench/RESULTS.md, session 13, 97% of the bench's deliveries): the first is
    waiting once its row is committed, so the second hands it the key in memory; before, the
    key was stored sealed and taken back out with a third transaction."""
    takes = _count_take_matches(monkeypatch)
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        gate = _StoreGate(h, monkeypatch)
        both = asyncio.gather(
            request_key(h.address, h.ca, a, peer_id=b.device_id, context=CTX,
                        role=IntentRole.HOST, wait=5),
            request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                        role=IntentRole.GUEST, wait=5),
        )
        await gate.queued(2)
        gate.gate.set()
        # Hold the event loop until the store's thread has posted both: neither device's
        # task runs in between, as when the loop is busy with other connections.
        assert gate.posted.wait(10)
        ka, kb = await asyncio.wait_for(both, 10)
        await gate.held
        assert ka.sk == kb.sk and ka.match_id == kb.match_id
        assert takes == []  # handed over in memory: never stored, never read back
        assert await h.server.db(h.server.store.pending_count) == 0
        assert h.server._waiters == {}


async def test_an_intent_whose_task_ended_before_it_was_stored_is_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection's task ends (the server closing it) while its intent waits for the
    store's thread: once posted, the intent is withdrawn and no waiter is left for it, so
    no later match is handed a key for a device that is gone."""
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        gate = _StoreGate(h, monkeypatch)
        host = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST,
            wait=5))
        await gate.queued(1)
        for task in list(h.server._tasks):
            task.cancel()
        gate.gate.set()
        await gate.held
        with pytest.raises(PairingError):
            await asyncio.wait_for(host, 10)
        await h.server.db(lambda: None)  # after the posted intent
        assert h.server._waiters == {}
        assert await h.server.db(h.server.store.pending_count) == 0


async def test_store_calls_made_together_run_in_order_each_with_its_own_outcome() -> None:
    """Calls made in one turn of the loop share their hand-off to the store's thread (and
    outcomes their wake-up): each still runs once, in order, and settles only its own
    caller's future, a failure or a cancelled caller included."""
    threads = server_module._StoreThreads(1, "test-store")
    ran: list[object] = []

    def ok(value: int) -> int:
        ran.append(value)
        return value

    def failing() -> int:
        ran.append("failing")
        raise store_module.StoreError("the third call fails")

    try:
        futures = [threads.run(lambda i=i: ok(i)) for i in range(2)]
        futures.append(threads.run(failing))
        gone = threads.run(lambda: ok(3))
        gone.cancel()
        futures.append(threads.run(lambda: ok(4)))
        got = await asyncio.gather(*futures, return_exceptions=True)
        assert got[:2] == [0, 1] and got[3] == 4
        assert isinstance(got[2], store_module.StoreError)
        assert ran == [0, 1, "failing", 3, 4]  # the cancelled caller's call ran, unread
        assert await threads.run(lambda: ok(5)) == 5  # a later turn: a hand-off of its own
    finally:
        threads.shutdown()
