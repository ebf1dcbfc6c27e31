"""Floods for the soak and abuse tests (tests/soak/): many connections from many addresses.

Linux routes all of 127.0.0.0/8 to the loopback interface, so an attacker here binds its
sockets to 127.0.0.2, 127.0.0.3, ... and the host sees each as another address.  Every flood
runs until its ``stop`` event is set, reopening each connection the host closes, and counts
what it saw; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Awaitable, Callable

from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest
from pairkit.pairing.errors import ErrorCode, PairingError
from pairkit.pairing.framing import Reassembler, fragment
from pairkit.pairing.methods import LocalIdentity
from pairkit.transports.tcp import TcpLink

STEP = 10.0  #: seconds any single network step of an attacker may take


def attacker_addresses(n: int, first: int = 2) -> list[str]:
    """``n`` loopback source addresses other than 127.0.0.1: 127.0.0.2, 127.0.0.3, ..."""
    return [f"127.0.{(i // 250)}.{(i % 250) + 2}" for i in range(first - 2, first - 2 + n)]


def frame(message: bytes) -> bytes:
    """One whole message as the TCP transport frames it (one fragment, 4-byte length)."""
    (piece,) = fragment(message, 65535)
    return len(piece).to_bytes(4, "big") + piece


@dataclasses.dataclass
class FloodStats:
    connects: int = 0
    #: connections the host closed after telling us "busy"
    busy: int = 0
    #: connections the host closed without a word (reset, or a close)
    dropped: int = 0
    failed_connects: int = 0


async def open_from(source: str, host: str, port: int) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0)), STEP
    )


async def _read_busy(reader: asyncio.StreamReader) -> bool:
    """Whether the first thing the host sent is ``Abort{busy}``."""
    try:
        n = int.from_bytes(await reader.readexactly(4), "big")
        piece = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, OSError):
        return False
    message = Reassembler(1 << 20).feed(piece)
    if message is None:
        return False
    try:
        msg = wire.decode(message)
    except PairingError:
        return False
    return isinstance(msg, wire.Abort) and msg.code == ErrorCode.BUSY


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An idle connection: wait for the host to speak or close."""


async def send_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Random bytes: a frame length that is nonsense, or a frame that is no message."""
    writer.write(os.urandom(64))


async def send_first_flight(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid CloudHello, then nothing."""
    me = LocalIdentity.generate("flood")
    cloud = CloudGuest(name="flood", clouds=(), mac=lambda _c, _d: bytes(32),
                       static=me.static_public, timeout=STEP)
    cloud.start(0.0)
    for message in cloud.outgoing():
        writer.write(frame(message))


async def flood(
    host: str, port: int, sources: list[str], per_source: int, behaviour: Behaviour,
    stop: asyncio.Event, stats: FloodStats,
) -> None:
    """Hold ``per_source`` connections from each of ``sources`` doing ``behaviour``, each
    reopened as soon as the host closes it, until ``stop``."""

    async def one(source: str) -> None:
        while not stop.is_set():
            try:
                reader, writer = await open_from(source, host, port)
            except (OSError, TimeoutError):
                stats.failed_connects += 1
                await asyncio.sleep(0.05)
                continue
            stats.connects += 1
            try:
                with contextlib.suppress(OSError):
                    await behaviour(reader, writer)
                    await writer.drain()
                waiter = asyncio.ensure_future(_read_busy(reader))
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                if waiter in done:
                    if waiter.result():
                        stats.busy += 1
                    else:
                        stats.dropped += 1
                else:
                    waiter.cancel()
            finally:
                writer.transport.abort()

    await asyncio.gather(*(one(s) for s in sources for _ in range(per_source)))


def _retrieve(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


async def join_request_flood(
    host: str, port: int, sources: list[str], per_source: int, stop: asyncio.Event,
    stats: FloodStats,
) -> None:
    """Strangers that run the cloud step to the owner's answer, then say nothing more."""

    async def one(source: str) -> None:
        while not stop.is_set():
            try:
                reader, writer = await open_from(source, host, port)
            except (OSError, TimeoutError):
                stats.failed_connects += 1
                await asyncio.sleep(0.05)
                continue
            stats.connects += 1
            link = TcpLink(reader, writer, peer=f"{source}")
            me = LocalIdentity.generate("flood")
            cloud = CloudGuest(name="flood", clouds=(), mac=lambda _c, _d: bytes(32),
                               static=me.static_public, timeout=STEP)
            cloud.start(asyncio.get_running_loop().time())
            try:
                await drive(cloud, MessagePipe(link, guest=True), delegate=None)
                # Granted (or not): now say nothing, until the host gives up on us.
                stopper = asyncio.ensure_future(stop.wait())
                reading = asyncio.ensure_future(link.recv())
                try:
                    await asyncio.wait({stopper, reading}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when the flood itself is cancelled
                    stopper.cancel()
                    reading.cancel()
                    reading.add_done_callback(_retrieve)  # the host's close is no news
                stats.dropped += 1
            except PairingError as exc:
                if exc.code == ErrorCode.BUSY:
                    stats.busy += 1
                else:
                    stats.dropped += 1
            finally:
                writer.transport.abort()
                with contextlib.suppress(BaseException):
                    await link.close()

    await asyncio.gather(*(one(s) for s in sources for _ in range(per_source)))


async def link_from(source: str, host: str, port: int) -> TcpLink:
    """A pairkit TCP link to ``host:port`` whose source address is ``source`` (127.0.0.2...)."""
    reader, writer = await open_from(source, host, port)
    return TcpLink(reader, writer, peer=source)


async def wait_until(check: Callable[[], bool], what: str, timeout: float = STEP) -> None:
    """Poll ``check`` until it holds (AssertionError naming ``what`` after ``timeout`` s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"no {what} within {timeout:g} s")
        await asyncio.sleep(0.02)
