"""Helpers for the attack tests of transports/tls.py and the key server's hand-over: a bare
:class:`~pairkit.transports.tls.TlsProtocol` server on 127.0.0.1 (what the key server runs
after admission) with a key server directory's certificates (made here, never committed), and
an on-path attacker: a TCP relay on 127.0.0.1 that forwards only what the test lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from pairkit.keyserver.certs import ServerDir, init_server_dir
from pairkit.keyserver.server import server_context
from pairkit.transports.tls import TlsLink, TlsProtocol
from pairkit.ttp import client_context


@dataclasses.dataclass
class TlsServer:
    host: str
    port: int
    dir: ServerDir
    #: a device's context: the pinned CA of ``dir``, TLS 1.3, host names checked
    client: ssl.SSLContext
    #: each accepted link, or the error that ended its handshake
    accepted: asyncio.Queue[TlsLink | BaseException]

    async def next_link(self) -> TlsLink:
        link = await asyncio.wait_for(self.accepted.get(), 5)
        assert isinstance(link, TlsLink), link
        return link


@contextlib.asynccontextmanager
async def tls_server(
    root: Path, *, handshake_timeout: float = 5.0, mtu: int = 8192, queue_size: int = 4,
) -> AsyncIterator[TlsServer]:
    d = init_server_dir(root)
    ctx = server_context(d)
    accepted: asyncio.Queue[TlsLink | BaseException] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    protocols: list[TlsProtocol] = []

    async def handshake(protocol: TlsProtocol) -> None:
        try:
            await protocol.handshake
        except BaseException as exc:  # handed to the test
            accepted.put_nowait(exc)
            return
        accepted.put_nowait(TlsLink(protocol, peer="device", close_timeout=1.0))

    def connected(protocol: TlsProtocol) -> None:
        protocol.begin(ctx, server_side=True, timeout=handshake_timeout)
        task = loop.create_task(handshake(protocol))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def factory() -> TlsProtocol:
        protocol = TlsProtocol(mtu=mtu, queue_size=queue_size)
        protocol.on_connection = connected
        protocols.append(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield TlsServer("127.0.0.1", port, d, client_context(d.ca_cert), accepted)
    finally:
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.abort()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # aborted transports close in their connection_lost


@dataclasses.dataclass
class Cut:
    """What the on-path relay does to the device's bytes toward the server."""

    #: forward at most this many more bytes, then send a FIN (None: forward everything)
    budget: int | None = None


@contextlib.asynccontextmanager
async def relay(host: str, port: int, cut: Cut) -> AsyncIterator[int]:
    """A TCP relay on 127.0.0.1 toward ``host:port``; its port.  Server to device: everything.
    Device to server: while ``cut.budget`` allows, then a FIN (what an attacker on the path who
    truncates the stream sends: no TLS close_notify, which it cannot forge)."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[None]] = set()

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limited: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if limited and cut.budget is not None:
                    data, cut.budget = data[: cut.budget], cut.budget - len(data[: cut.budget])
                    if data:
                        dst.write(data)
                    if cut.budget == 0:
                        dst.write_eof()
                        return
                    continue
                dst.write(data)
                await dst.drain()
            dst.write_eof()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        writers.extend((writer, up_writer))
        for task in (
            asyncio.ensure_future(pump(reader, up_writer, True)),
            asyncio.ensure_future(pump(up_reader, writer, False)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in list(tasks):
            task.cancel()
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
