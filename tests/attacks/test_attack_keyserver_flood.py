"""Finding 12 of issue 17: floods against the key server, a real server on 127.0.0.1.

Strangers hold as many idle TCP connections as they can, from many source addresses
(127.0.0.2 ... 127.0.0.N on loopback) and from the legitimate device's own address (a NAT), and
reopen each one the server closes; others send garbage instead of a TLS ClientHello.  Meanwhile
a legitimate device must enrol, and two devices must get their key (one of them already waiting
on the server when the flood starts), each within its own client timeout.  The server must have
been full (it evicted connections), and must never evict an authenticated device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

from pairkit.keyserver.server import Admission, Limits, Ticket
from pairkit.pairing.ttp import IntentRole
from pairkit.ttp import enrol, request_key
from tests.ttp_harness import FAST, ServerHarness, identity, running_server

CTX = b"\x17" * 32
#: a small server, so that a flood fills it many times over
POOL = dataclasses.replace(
    FAST, max_connections=48, max_unauth_per_client=4, rate=400.0, burst=400,
    handshake_timeout=4.0,
)


async def _hold(host: str, port: int, source: str, stop: asyncio.Event, garbage: bool) -> None:
    """One attacker connection, reopened each time the server ends it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            if garbage:
                writer.write(os.urandom(64))
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(reader.read(1024), 30)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def flood(
    h: ServerHarness, sources: list[str], per_source: int, *, garbage: bool = False
) -> AsyncIterator[None]:
    """``per_source`` held connections from each of ``sources`` until the block ends; the block
    starts once the server is full."""
    host, port = h.address.rsplit(":", 1)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_hold(host, int(port), src, stop, garbage))
        for src in sources for _ in range(per_source)
    ]
    try:
        for _ in range(500):
            if h.server.admission.total >= h.server.limits.max_connections:
                break
            await asyncio.sleep(0.01)
        assert h.server.admission.total >= h.server.limits.max_connections, "never full"
        yield
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _strangers(n: int) -> list[str]:
    return [f"127.0.0.{i}" for i in range(2, 2 + n)]


async def test_a_device_enrols_and_gets_its_key_through_an_idle_flood(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv", limits=POOL) as h:
        a, b, c = identity("a"), identity("b"), identity("c")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        # a waits on the server, authenticated, before the flood: it must not be evicted.
        waiting = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=30,
        ))
        for _ in range(200):
            if await h.server.db(h.server.store.pending_count) == 1:
                break
            await asyncio.sleep(0.02)
        async with flood(h, _strangers(24), 4):
            done = await enrol(h.address, h.ca, c)  # the client's own 10 s timeout
            assert not done.updated
            kb = await request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                                   role=IntentRole.GUEST, wait=10)
            ka = await waiting
            assert ka.sk == kb.sk
            assert h.server.admission.evicted > 0
        assert h.server.stats["deliveries"] == 1


async def test_a_neighbour_behind_the_same_nat_gets_through(tmp_path: Path) -> None:
    # The flood comes from 127.0.0.1, the legitimate device's own address, and from others.
    async with running_server(tmp_path / "srv", limits=POOL) as h:
        async with flood(h, ["127.0.0.1", *_strangers(12)], 6):
            for i in range(3):
                await enrol(h.address, h.ca, identity(f"n{i}"))
            assert h.server.admission.evicted > 0
        assert await h.server.db(h.server.store.device_count) == 3


async def test_a_garbage_flood_does_not_keep_a_device_out(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv", limits=POOL) as h:
        async with flood(h, _strangers(24), 3, garbage=True):
            await enrol(h.address, h.ca, identity("g"))


def test_eviction_order_with_an_injected_clock() -> None:
    limits = Limits(max_connections=6, max_per_client=4, max_unauth_per_client=2, rate=100,
                    burst=100)
    adm = Admission(limits)
    gone: list[str] = []

    def admit(client: str, name: str) -> Ticket:
        t = adm.admit(client, 0.0, lambda: gone.append(name))
        assert isinstance(t, Ticket), t
        return t

    x1, x2 = admit("x", "x1"), admit("x", "x2")
    admit("x", "x3")  # under half full: one address may handshake more than 2 at once
    assert gone == [] and adm.unauthenticated == 3
    x4 = admit("x", "x4")  # half full: x's oldest unauthenticated connection makes room
    assert gone == ["x1"] and x1.released and not x4.released
    legit = admit("l", "legit")
    adm.authenticated(legit)
    y1 = admit("y", "y1")
    assert adm.total == 5
    admit("z", "z1")
    assert adm.total == 6
    admit("w", "w1")  # full: the oldest of the address holding the most (x: 3)
    assert gone == ["x1", "x2"] and not legit.released
    admit("v", "v1")  # x holds 2, the others 1: x's oldest again
    assert gone == ["x1", "x2", "x3"]
    admit("u", "u1")  # x4, y1, z1, w1, v1 hold 1 each (and x, 1): the oldest of them, x4
    assert gone[-1] == "x4" and not y1.released and not legit.released
    adm.release(x2)  # releasing an evicted ticket again changes nothing
    assert adm.total == 6
    # every connection authenticated: a newcomer is refused, nobody evicted
    for t in list(adm._unauth):
        adm.authenticated(t)
    assert adm.admit("t", 0.0) == "too many connections" and len(gone) == 4
    # an address at its total with authenticated connections only is refused
    full = Admission(Limits(max_per_client=1))
    t = full.admit("n", 0.0)
    assert isinstance(t, Ticket)
    full.authenticated(t)
    assert "connections from one address" in str(full.admit("n", 0.0))


@contextlib.asynccontextmanager
async def gatekeeper(target: str, turn_away: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP relay in front of the key server that closes the first ``turn_away`` connections
    at once (as the server does when it evicts one before the device spoke), then relays."""
    host, port = target.rsplit(":", 1)
    seen: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        if len(seen) <= turn_away:
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()


async def test_a_device_turned_away_before_it_asked_connects_again(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h, gatekeeper(h.address, 2) as (via, seen):
        await enrol(via, h.ca, identity("again"))
        assert len(seen) == 3  # two turned away, the third served
        assert await h.server.db(h.server.store.device_count) == 1


async def test_a_device_turned_away_every_time_stops_after_three(tmp_path: Path) -> None:
    from pairkit.pairing.errors import TransportError

    async with running_server(tmp_path / "srv") as h, gatekeeper(h.address, 99) as (via, seen):
        try:
            await enrol(via, h.ca, identity("never"))
        except TransportError as exc:
            assert "closed the connection" in str(exc), exc
        else:
            raise AssertionError("enrolled through a gate that turns everyone away")
        assert len(seen) == 3


async def test_a_burst_of_connections_reaches_admission_not_the_kernels_floor(
    tmp_path: Path,
) -> None:
    # Admission decides who gets in under load (docs/security.md), but only for connections
    # that reach it: the kernel holds connections for the server until it accepts them, and
    # drops the SYNs beyond its listen backlog (the client retries 1 s later, then 3 s, ...).
    # With a backlog of 100 (asyncio's default), a burst of 200 devices connecting at once
    # lost SYNs (bench/RESULTS.md, session 12: 324 in one run of bench/ttp.py, a second's
    # stall of a whole block), and a flood of 100 connections kept every newcomer's SYN out
    # before admission could evict anyone.  A burst of as many connections as the server
    # admits, made while its event loop is busy (nothing accepted meanwhile), must all be
    # taken by the kernel.
    import select
    import socket
    import time

    limits = dataclasses.replace(FAST, max_connections=300, max_per_client=300, burst=400,
                                 rate=400.0)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        host, port = h.address.rsplit(":", 1)
        socks = []
        try:
            # The loop is blocked from here to the end of the count: the server accepts nothing.
            for _ in range(limits.max_connections):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((host, int(port)))
                socks.append(s)
            pending, connected = set(socks), 0
            until = time.monotonic() + 0.5  # a SYN dropped is retried after 1 s, not before
            while pending and (left := until - time.monotonic()) > 0:
                _, writable, _ = select.select([], list(pending), [], left)
                for s in writable:
                    pending.discard(s)
                    connected += s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            assert connected == limits.max_connections
        finally:
            for s in socks:
                s.close()
