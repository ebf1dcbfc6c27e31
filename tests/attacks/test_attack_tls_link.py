"""Attacks on transports/tls.py (TLS done by ssl.SSLObject in memory, the key server's and the
devices' link) over real sockets on 127.0.0.1 with real TLS: an on-path attacker cutting the
stream, a peer ending TLS without ending TCP, a peer that never reads, an old TLS version,
a server of another CA.  tests/test_tls_link.py covers the handshake deadlines, garbage, a
frame cut at the plaintext level, the MTU, the inbound flood; not repeated here.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from pairkit.driver import MessagePipe
from pairkit.keyserver.server import server_context
from pairkit.pairing.errors import (
    LinkClosedError,
    PairingError,
    PairingTimeout,
    TooLargeError,
    TransportError,
)
from pairkit.transports.tls import tls_connect
from tests.tls_attack_harness import Cut, relay, tls_server


async def test_a_stream_cut_inside_a_tls_record_is_an_error_not_the_peers_close(
    tmp_path: Path,
) -> None:
    """On-path attacker: the device's message leaves in one TLS record; the relay forwards
    half of that record, then a FIN.  The server must not report a clean close by the peer
    (the device sent its message whole and never closed): the message was cut."""
    async with tls_server(tmp_path / "srv") as srv:
        cut = Cut()
        async with relay(srv.host, srv.port, cut) as port:
            client = await tls_connect(srv.host, port, srv.client, timeout=5, mtu=8192)
            server = await srv.next_link()  # the device's Finished has gone through
            record_size = 5 + 4 + 10 + 1 + 16  # header, frame, content type, AEAD tag
            cut.budget = record_size // 2
            await client.send(b"0123456789")
            with pytest.raises(TransportError, match="middle of a message"):
                await asyncio.wait_for(server.recv(), 5)
            await server.close()
            client.protocol.transport.abort()


async def test_the_peers_close_notify_ends_the_link_without_waiting_for_its_fin(
    tmp_path: Path,
) -> None:
    """A peer that ends TLS (close_notify) and leaves TCP open: the link ends at once, after
    the messages before it; it is not left waiting for messages TLS can no longer carry
    (until the caller's deadline)."""
    async with tls_server(tmp_path / "srv") as srv:
        client = await tls_connect(srv.host, srv.port, srv.client, timeout=5, mtu=8192)
        server = await srv.next_link()
        await client.send(b"last")
        client.protocol.close_notify()  # TLS ends; no FIN
        assert await asyncio.wait_for(server.recv(), 5) == b"last"
        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(server.recv(), 5)
        await server.close()
        client.protocol.transport.abort()


async def test_a_peer_that_never_reads_holds_back_a_sender_that_never_yields(
    tmp_path: Path,
) -> None:
    """The server stops reading (its queue is full, then the kernel's buffers); the device
    sends 8000-byte messages back to back, each under its own deadline.  Flow control must
    make a send wait: not 24 MB accepted into memory because nothing yielded to the loop."""
    async with tls_server(tmp_path / "srv", queue_size=4) as srv:
        client = await tls_connect(srv.host, srv.port, srv.client, timeout=5, mtu=8192)
        server = await srv.next_link()  # and never reads
        sent = 0
        with pytest.raises(TimeoutError):
            for _ in range(3000):
                async with asyncio.timeout(2):
                    await client.send(b"x" * 8000)
                sent += 1
        held = client.protocol.transport.get_write_buffer_size()
        held += client.protocol._outgoing.pending
        assert sent < 3000
        assert held <= 1 << 20  # the transport's high-water mark and a message or two
        client.protocol.transport.abort()
        await server.close()


async def test_a_pipe_sending_without_waiting_still_meets_flow_control(tmp_path: Path) -> None:
    """The same peer that never reads, the device sending through a MessagePipe, which hands a
    message to the link without waiting while the transport takes it (``send_nowait``): once
    the transport holds back, the pipe waits (and its deadline ends it), it does not go on
    writing into memory."""
    async with tls_server(tmp_path / "srv", queue_size=4) as srv:
        client = await tls_connect(srv.host, srv.port, srv.client, timeout=5, mtu=8192)
        server = await srv.next_link()  # and never reads
        pipe = MessagePipe(client, send_timeout=1.0)
        sent = 0
        with pytest.raises(PairingTimeout):
            for _ in range(3000):
                await pipe.send(b"x" * 8000)
                sent += 1
        assert not client.protocol.can_write and not client.send_nowait(b"y")
        held = client.protocol.transport.get_write_buffer_size()
        held += client.protocol._outgoing.pending
        assert sent < 3000
        assert held <= 1 << 20  # the transport's high-water mark and a message or two
        client.protocol.transport.abort()
        await server.close()


async def test_send_nowait_sends_whole_frames_and_refuses_what_send_refuses(
    tmp_path: Path,
) -> None:
    async with tls_server(tmp_path / "srv") as srv:
        client = await tls_connect(srv.host, srv.port, srv.client, timeout=5, mtu=1024)
        server = await srv.next_link()
        assert client.send_nowait(b"one") and client.send_nowait(bytearray(b"two"))
        assert await asyncio.wait_for(server.recv(), 5) == b"one"
        assert await asyncio.wait_for(server.recv(), 5) == b"two"
        with pytest.raises(TooLargeError):
            client.send_nowait(bytes(1025))
        await server.close()  # the peer's close_notify ends the link
        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(client.recv(), 5)
        with pytest.raises(LinkClosedError):
            client.send_nowait(b"too late")
        await client.close()
        with pytest.raises(LinkClosedError):
            client.send_nowait(b"closed")


async def test_a_device_offering_only_tls_1_2_is_refused(tmp_path: Path) -> None:
    async with tls_server(tmp_path / "srv") as srv:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(srv.dir.ca_cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            await tls_connect(srv.host, srv.port, old, timeout=5)
        failed = await asyncio.wait_for(srv.accepted.get(), 5)
        assert isinstance(failed, ssl.SSLError)
        await asyncio.sleep(0.05)  # the aborted transports' connection_lost runs, and closes


async def test_a_server_speaking_only_tls_1_2_is_refused_by_the_device(tmp_path: Path) -> None:
    async with tls_server(tmp_path / "pinned") as srv:
        ctx = server_context(srv.dir)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        server = await asyncio.start_server(
            lambda r, w: None, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=5)
        port = server.sockets[0].getsockname()[1]
        try:
            # OpenSSL's alert (protocol_version), or the server hanging up after it
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await tls_connect("127.0.0.1", port, srv.client, timeout=5)
        finally:
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)


async def test_a_server_of_another_ca_is_refused_before_any_message(tmp_path: Path) -> None:
    """The device pins one CA: a server with a certificate from another key server's CA (valid
    for 127.0.0.1) fails certificate verification in the handshake; no link is returned."""
    async with tls_server(tmp_path / "pinned") as pinned, \
            tls_server(tmp_path / "other") as other:
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_connect(other.host, other.port, pinned.client, timeout=5)
        failed = await asyncio.wait_for(other.accepted.get(), 5)
        assert isinstance(failed, ssl.SSLError | ConnectionError)
        await asyncio.sleep(0.05)


async def test_recv_cancelled_and_retried_loses_no_message(tmp_path: Path) -> None:
    """Cancel safety: a recv cancelled while waiting, then a new recv, gets every message."""
    async with tls_server(tmp_path / "srv") as srv:
        client = await tls_connect(srv.host, srv.port, srv.client, timeout=5, mtu=8192)
        server = await srv.next_link()
        for i in range(20):
            waiting = asyncio.ensure_future(server.recv())
            await asyncio.sleep(0)
            waiting.cancel()
            await client.send(i.to_bytes(2, "big"))
            got = None
            try:
                got = await waiting
            except asyncio.CancelledError:
                got = await asyncio.wait_for(server.recv(), 5)
            assert got == i.to_bytes(2, "big")
        await client.close()
        with pytest.raises(PairingError):
            await asyncio.wait_for(server.recv(), 5)
        await server.close()


async def test_a_device_tells_a_person_why_tls_failed_in_pairkit_words(tmp_path: Path) -> None:
    """A server that speaks only TLS 1.2 (an old or foreign server, or a downgrade in the
    middle): the device's error says what happened in pairkit's words, never OpenSSL's reason
    codes (TLSV1_ALERT_PROTOCOL_VERSION, WRONG_VERSION_NUMBER ...)."""
    from pairkit import ttp

    async with tls_server(tmp_path / "pinned") as srv:
        ctx = server_context(srv.dir)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        server = await asyncio.start_server(
            lambda r, w: None, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=5)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(PairingError) as info:
                await ttp.connect(f"127.0.0.1:{port}", srv.dir.ca_cert, timeout=5)
        finally:
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)
    text = str(info.value)
    assert "key server at 127.0.0.1" in text
    for word in ("ALERT", "VERSION_NUMBER", "SSL", "_"):
        assert word not in text, (word, text)
