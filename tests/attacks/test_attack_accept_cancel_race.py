"""A link taken off the TCP listener's queue just as the accept that took it is cancelled
(attack review atk15b).

The library host's links' server (``accept_loop``) is cancelled whenever an application's
``accept()`` ends without a guest (its timeout, a cancel) and started again at once.  A
cancel that lands after the TCP listener's ``accept`` has read a link off its queue and before
it returned it dropped that link: never admitted (no first flight, no per-address limit),
never closed until the listener closes; a stranger racing an application that polls
``accept(timeout=...)`` piled up open sockets (1 of 1500 connections in about half of the runs
of /work/notes/s15/atk15b/race.py, on main and on 8a31472).  Fixed (atk15b): the TCP
listener puts such a link back on its queue; ``accept_loop`` stopped just after its
listener's accept returned a link tells that link "busy" and closes it.

Played over real TCP sockets on 127.0.0.1; the cancel is swept over the event loop's turns, so
that one lands in the window whatever the scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pairkit.pairing.errors import PairingTimeout
from pairkit.session import accept_loop
from pairkit.transports.tcp import TcpTransport

#: event-loop turns swept between the guest's connection and the cancel
TURNS = 40


async def test_a_link_taken_as_the_tcp_accept_is_cancelled_is_not_lost() -> None:
    """For each number of turns: a guest connects, an ``accept`` is cancelled that many turns
    later; the guest's link must come out of that ``accept`` or the next one, never vanish."""
    listener = await TcpTransport("127.0.0.1", 0).listen()
    host, port = listener.address.rsplit(":", 1)
    writers: list[asyncio.StreamWriter] = []
    links: list[Any] = []
    lost: list[int] = []
    try:
        for turns in range(TURNS):
            accepting = asyncio.ensure_future(listener.accept())
            _, writer = await asyncio.open_connection(host, int(port))
            writers.append(writer)
            for _ in range(turns):
                await asyncio.sleep(0)
            accepting.cancel()
            link = None
            with contextlib.suppress(asyncio.CancelledError):
                link = await accepting
            if link is None:
                try:
                    link = await listener.accept(timeout=2.0)
                except PairingTimeout:
                    lost.append(turns)
                    continue
            links.append(link)
    finally:
        for writer in writers:
            writer.close()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        await listener.close()
    assert not lost, f"links lost by an accept cancelled after {lost} turns"


async def test_a_link_accepted_as_the_accept_loop_is_cancelled_is_not_lost() -> None:
    """The same one level up, as the library host runs it: for each number of turns, a guest
    connects, the links' server (``accept_loop``) is cancelled that many turns later and
    started again.  The guest's link must reach a handler of one of the two servers (or be
    closed), never stay open and unserved."""
    listener = await TcpTransport("127.0.0.1", 0).listen()
    host, port = listener.address.rsplit(":", 1)
    served: list[Any] = []

    async def handle(link: Any) -> None:
        served.append(link)
        await asyncio.shield(link.close())  # closed even if its server is stopped meanwhile

    lost: list[int] = []
    try:
        for turns in range(TURNS):
            before = len(served)
            server = asyncio.ensure_future(accept_loop(listener, handle))
            await asyncio.sleep(0)
            reader, writer = await asyncio.open_connection(host, int(port))
            for _ in range(turns):
                await asyncio.sleep(0)
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
            again = asyncio.ensure_future(accept_loop(listener, handle))
            try:
                # served (and closed by the handler) or closed unserved: either way an EOF
                await asyncio.wait_for(reader.read(), 2.0)
            except TimeoutError:
                lost.append(turns)
            finally:
                writer.close()
                again.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await again
            assert len(served) <= before + 1
    finally:
        await listener.close()
    assert not lost, f"links left open and unserved by a server cancelled after {lost} turns"

