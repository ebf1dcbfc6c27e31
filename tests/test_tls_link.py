"""transports/tls.py over real sockets on 127.0.0.1: TLS in memory, whole frames, the peer's
misbehaviour (no TLS, a stalled handshake, a frame cut off, a flood, a frame over the MTU).

The server side here is a bare :class:`TlsProtocol` on ``loop.create_server`` (what the key
server does after admission); the certificates are a key server directory's (made here).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pairkit.keyserver.certs import init_server_dir
from pairkit.keyserver.server import server_context
from pairkit.pairing.errors import DecodeError, LinkClosedError, TransportError
from pairkit.transports.tls import TlsLink, TlsProtocol, tls_connect
from pairkit.ttp import client_context


@asynccontextmanager
async def tls_server(
    tmp_path: Path, *, handshake_timeout: float = 5.0, mtu: int = 1024, queue_size: int = 4,
) -> AsyncIterator[tuple[str, int, ssl.SSLContext, asyncio.Queue[TlsLink | BaseException]]]:
    """A TLS server of TlsProtocol; each accepted link (or its handshake's error) is queued."""
    d = init_server_dir(tmp_path / "srv")
    ctx = server_context(d)
    accepted: asyncio.Queue[TlsLink | BaseException] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def handshake(protocol: TlsProtocol) -> None:
        try:
            await protocol.handshake
        except BaseException as exc:  # handed to the test
            accepted.put_nowait(exc)
            return
        accepted.put_nowait(TlsLink(protocol, peer="device", close_timeout=1.0))

    tasks: set[asyncio.Task[None]] = set()

    def connected(protocol: TlsProtocol) -> None:
        protocol.begin(ctx, server_side=True, timeout=handshake_timeout)
        task = loop.create_task(handshake(protocol))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def factory() -> TlsProtocol:
        protocol = TlsProtocol(mtu=mtu, queue_size=queue_size)
        protocol.on_connection = connected
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port, client_context(d.ca_cert), accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_messages_both_ways_and_a_clean_close(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as (host, port, cctx, accepted):
        client = await tls_connect(host, port, cctx, timeout=5, mtu=1024)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        assert client.protocol.peer_certificate()  # the server's certificate, as TLS checked it
        for size in (0, 1, 1024):
            await client.send(b"c" * size)
            assert await asyncio.wait_for(server.recv(), 5) == b"c" * size
        await server.send(b"answer")
        assert await asyncio.wait_for(client.recv(), 5) == b"answer"
        closing = asyncio.ensure_future(client.close())
        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(server.recv(), 5)
        await server.close()
        await asyncio.wait_for(closing, 5)
        assert client.closed and server.closed
        with pytest.raises(LinkClosedError):
            await client.send(b"late")


def _records(data: bytes) -> int:
    """How many TLS records ``data`` holds (RFC 8446 §5.1: a 5-byte header, the last two
    bytes its length)."""
    count, i = 0, 0
    while i + 5 <= len(data):
        i += 5 + int.from_bytes(data[i + 3:i + 5], "big")
        count += 1
    return count


async def test_a_cut_inside_a_record_is_told_from_a_cut_between_records() -> None:
    # What a FIN without close_notify means depends on where the stream stopped: between TLS
    # records (a clean end at a message boundary) or inside one (a truncation).  Streams of
    # records of every size, read in pieces cut anywhere (inside headers too), stopped anywhere.
    rng = random.Random(13)
    for _ in range(3000):
        sizes = [rng.choice([0, 1, 2, 5, 300, 16401]) for _ in range(rng.randint(1, 5))]
        stream, bounds = b"", {0}
        for size in sizes:
            stream += bytes((23, 3, 3)) + size.to_bytes(2, "big") + bytes(size)
            bounds.add(len(stream))
        stop = rng.randint(0, len(stream))
        protocol = TlsProtocol()
        i = 0
        while i < stop:
            step = min(stop - i, rng.choice([1, 2, 3, 7, 64, 5000]))
            protocol._track_records(stream[i:i + step])
            i += step
        inside = bool(protocol._record_head or protocol._record_left)
        assert inside == (stop not in bounds), (sizes, stop)


async def test_the_clients_last_flight_leaves_with_its_first_message(tmp_path: Path) -> None:
    # The client's last handshake flight is written when the server's flight completes the
    # handshake; it waits for the end of that turn of the event loop, so the first message,
    # sent as soon as TLS is up, leaves in the same write (one send, one wake-up less).
    async with tls_server(tmp_path) as (host, port, cctx, accepted):
        client = await tls_connect(host, port, cctx, timeout=5, mtu=1024)
        transport = client.protocol.transport
        writes: list[bytes] = []
        write = transport.write

        def recording(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = recording  # type: ignore[method-assign]
        await client.send(b"hello")
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        assert await asyncio.wait_for(server.recv(), 5) == b"hello"
        assert len(writes) == 1 and _records(writes[0]) >= 2  # the Finished, and the message
        transport.write = write  # type: ignore[method-assign]
        await client.close()
        await server.close()


async def test_records_dripped_a_byte_at_a_time_arrive_whole_then_a_clean_close(
    tmp_path: Path,
) -> None:
    # The reader asks OpenSSL for plaintext only while some received bytes are not OpenSSL's
    # yet: a record that arrives a byte at a time (OpenSSL holding its first part), two
    # messages, then the close_notify alone, all arrive and end in a clean close, not a cut.
    async with tls_server(tmp_path) as (host, port, cctx, accepted):
        reader, writer = await asyncio.open_connection(host, port)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = cctx.wrap_bio(incoming, outgoing, server_hostname=host)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await asyncio.wait_for(reader.read(65536), 5))
        writer.write(outgoing.read())  # the client's Finished, whole
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)

        async def drip(data: bytes) -> None:
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)  # one byte per segment, one read each

        for message in (b"first", b"second message"):
            tls.write(len(message).to_bytes(4, "big") + message)
            await drip(outgoing.read())
            assert await asyncio.wait_for(server.recv(), 5) == message
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # our close_notify
        await drip(outgoing.read())
        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(server.recv(), 5)
        writer.close()
        await server.close()


async def test_a_connection_that_never_starts_tls_is_cut_at_the_deadline(tmp_path: Path) -> None:
    async with tls_server(tmp_path, handshake_timeout=0.3) as (host, port, _cctx, accepted):
        reader, writer = await asyncio.open_connection(host, port)  # and says nothing
        failed = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(failed, TimeoutError)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hung up
        writer.close()


async def test_a_stalled_handshake_is_cut_at_the_deadline(tmp_path: Path) -> None:
    """Half a ClientHello, then nothing: the deadline holds mid-handshake too."""
    async with tls_server(tmp_path, handshake_timeout=0.3) as (host, port, cctx, accepted):
        hello_in, hello_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = cctx.wrap_bio(hello_in, hello_out, server_hostname=host)
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = hello_out.read()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(hello[: len(hello) // 2])
        failed = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(failed, TimeoutError)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_garbage_instead_of_tls_fails_the_handshake_at_once(tmp_path: Path) -> None:
    async with tls_server(tmp_path, handshake_timeout=30) as (host, port, _cctx, accepted):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        failed = await asyncio.wait_for(accepted.get(), 5)  # long before the 30 s deadline
        assert isinstance(failed, ssl.SSLError)
        await asyncio.wait_for(reader.read(), 5)  # closed (an alert at most)
        writer.close()


async def test_a_server_closing_during_the_handshake_is_a_connection_error(
    tmp_path: Path,
) -> None:
    d = init_server_dir(tmp_path / "srv")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionError):
            await tls_connect("127.0.0.1", port, client_context(d.ca_cert), timeout=5)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_silent_server_runs_into_the_connect_timeout(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "srv")
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await tls_connect("127.0.0.1", port, client_context(d.ca_cert), timeout=0.3)
    finally:
        server.close()
        await server.wait_closed()


async def _raw_tls_client(
    host: str, port: int, cctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS client that frames by hand (asyncio's own TLS), to send what TlsLink never would."""
    return await asyncio.open_connection(host, port, ssl=cctx, server_hostname=host)


async def test_a_frame_cut_off_by_the_peers_fin_is_an_error_not_a_short_message(
    tmp_path: Path,
) -> None:
    async with tls_server(tmp_path) as (host, port, cctx, accepted):
        _reader, writer = await _raw_tls_client(host, port, cctx)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        writer.write((5).to_bytes(4, "big") + b"whole" + (100).to_bytes(4, "big") + b"cut")
        await writer.drain()
        writer.transport.get_extra_info("socket").shutdown(2)  # FIN, no close_notify
        assert await asyncio.wait_for(server.recv(), 5) == b"whole"
        with pytest.raises(TransportError, match="middle of a message"):
            await asyncio.wait_for(server.recv(), 5)
        await server.close()
        writer.transport.abort()


async def test_a_frame_over_the_mtu_closes_the_link(tmp_path: Path) -> None:
    async with tls_server(tmp_path, mtu=1024) as (host, port, cctx, accepted):
        reader, writer = await _raw_tls_client(host, port, cctx)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        writer.write((1 << 20).to_bytes(4, "big") + b"x" * 100)
        await writer.drain()
        with pytest.raises(DecodeError):
            await asyncio.wait_for(server.recv(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hung up
        writer.transport.abort()
        await server.close()


async def test_a_flood_is_held_back_and_arrives_whole_and_in_order(tmp_path: Path) -> None:
    """A peer sending far more than the reader takes: the link stops reading (its queue holds
    at most ``queue_size`` messages, its plaintext at most a read's worth), nothing is lost."""
    async with tls_server(tmp_path, mtu=1024, queue_size=4) as (host, port, cctx, accepted):
        client = await tls_connect(host, port, cctx, timeout=5, mtu=1024)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        count = 2000

        async def flood() -> None:
            for i in range(count):
                await client.send(i.to_bytes(4, "big") + b"f" * 1000)

        sending = asyncio.ensure_future(flood())
        await asyncio.sleep(0.3)  # let the flood fill every buffer on the way
        assert server.buffered <= 4
        assert len(server.protocol._plain) <= (1 << 16) + 1028
        for i in range(count):
            message = await asyncio.wait_for(server.recv(), 10)
            assert message[:4] == i.to_bytes(4, "big") and len(message) == 1004
            assert server.buffered <= 4
        await asyncio.wait_for(sending, 10)
        await client.close()
        await server.close()


async def test_a_close_waits_for_what_is_still_leaving(tmp_path: Path) -> None:
    """Our close, while the transport still holds what we sent (the peer has not read it),
    returns only once all of it has left and the connection has ended, even when the peer's
    FIN comes first."""
    async with tls_server(tmp_path, mtu=1024, queue_size=4) as (host, port, cctx, accepted):
        client = await tls_connect(host, port, cctx, timeout=5, mtu=1024, close_timeout=10)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        count = 0
        while client.protocol.transport.get_write_buffer_size() == 0 and count < 20000:
            assert client.send_nowait(count.to_bytes(4, "big") + b"f" * 1000)  # never waits
            count += 1
        assert client.protocol.transport.get_write_buffer_size() > 0
        closing = asyncio.ensure_future(client.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # the server has not closed yet
        # The server's FIN, then it reads (and drops) what we sent, at its own pace.
        server_closing = asyncio.ensure_future(server.close())
        await asyncio.wait_for(closing, 10)
        assert client.protocol.transport.get_write_buffer_size() == 0
        assert client.protocol.lost.done() and not client.protocol.lost.cancelled()
        await asyncio.wait_for(server_closing, 10)


async def test_a_peer_that_neither_reads_nor_closes_is_let_go(tmp_path: Path) -> None:
    """Our close waits for the peer's FIN at most ``close_timeout``, then aborts."""
    async with tls_server(tmp_path) as (host, port, cctx, accepted):
        _reader, writer = await _raw_tls_client(host, port, cctx)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert isinstance(server, TlsLink)
        await server.send(b"bye")
        await asyncio.wait_for(server.close(), 5)  # close_timeout is 1 s here
        assert server.protocol.lost.done()
        writer.transport.abort()
