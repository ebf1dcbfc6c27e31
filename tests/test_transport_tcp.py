"""The TCP transport: conformance on 127.0.0.1, the wire framing, garbage and failures, the
registry's ``tcp:HOST:PORT``, and an echo host in a second OS process."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairkit.pairing.errors import (
    ConfigError,
    DecodeError,
    LinkClosedError,
    PairingTimeout,
    TransportError,
)
from pairkit.transports.base import Link, Listener
from pairkit.transports.registry import open_transport
from pairkit.transports.tcp import (
    TcpListener,
    TcpTransport,
    format_host_port,
    parse_host_port,
    tcp_connect,
)
from tests.transport_conformance import (
    LinkConformance,
    _flood_until_blocked,
    check_bulk_both_ways,
)

ROOT = Path(__file__).resolve().parent.parent


async def _connected_pair(mtu: int) -> tuple[TcpListener, Link, Link]:
    listener = await TcpListener.bind("127.0.0.1", 0, mtu=mtu)
    guest = await tcp_connect("127.0.0.1", listener.port, timeout=5, mtu=mtu)
    host = await listener.accept(timeout=5)
    return listener, guest, host


class TestTcpLink(LinkConformance):
    @pytest.fixture
    async def link_pair(self) -> Any:
        listener, guest, host = await _connected_pair(65535)
        yield guest, host
        await guest.close()
        await host.close()
        await listener.close()


class TestTcpLinkMtu512(LinkConformance):
    @pytest.fixture
    async def link_pair(self) -> Any:
        listener, guest, host = await _connected_pair(512)
        yield guest, host
        await guest.close()
        await host.close()
        await listener.close()


# -- framing on the wire ---------------------------------------------------------------------


async def _raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_wire_format_is_a_four_byte_big_endian_length() -> None:
    listener = await TcpListener.bind(mtu=100)
    reader, writer = await _raw_client(listener.port)
    link = await listener.accept(timeout=5)
    writer.write(b"\x00\x00\x00\x05hello" + b"\x00\x00\x00\x00")
    assert await link.recv() == b"hello"
    assert await link.recv() == b""  # an empty message is a message
    await link.send(b"abc")
    assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x00\x00\x00\x03abc"
    writer.close()
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(link.recv(), 5)
    await link.close()
    await listener.close()


async def test_garbage_length_closes_that_link_and_the_listener_goes_on() -> None:
    listener = await TcpListener.bind(mtu=512)
    reader, writer = await _raw_client(listener.port)
    writer.write(b"\x00\x00\x00\x02ok" + b"\xff\xff\xff\xff" + b"junk" * 100)
    bad = await listener.accept(timeout=5)
    assert await asyncio.wait_for(bad.recv(), 5) == b"ok"  # what came before is still read
    with pytest.raises(DecodeError, match="4294967295 bytes where this link allows at most 512"):
        await asyncio.wait_for(bad.recv(), 5)
    assert bad.closed
    with pytest.raises(LinkClosedError):
        await bad.send(b"x")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # we hung up on it
    writer.close()
    await bad.close()

    guest = await tcp_connect("127.0.0.1", listener.port, timeout=5, mtu=512)
    host = await listener.accept(timeout=5)
    await guest.send(b"still serving")
    assert await asyncio.wait_for(host.recv(), 5) == b"still serving"
    for link in (guest, host):
        await link.close()
    await listener.close()


async def test_close_in_the_middle_of_a_message_is_a_transport_error() -> None:
    listener = await TcpListener.bind()
    _, writer = await _raw_client(listener.port)
    writer.write(b"\x00\x00\x01\x00" + b"only ten b")
    await writer.drain()
    writer.close()
    link = await listener.accept(timeout=5)
    with pytest.raises(TransportError, match="in the middle of a message"):
        await asyncio.wait_for(link.recv(), 5)
    await link.close()
    await listener.close()


_frames = st.lists(
    st.one_of(
        st.binary(max_size=24).map(lambda b: len(b).to_bytes(4, "big") + b),  # a good frame
        st.binary(max_size=12),  # anything at all
    ),
    max_size=6,
).map(b"".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_frames)
def test_any_bytes_from_a_peer_end_in_messages_and_one_of_our_errors(data: bytes) -> None:
    """The fuzz invariant: only messages within the MTU come out, then a PairingError."""

    async def run() -> None:
        listener = await TcpListener.bind(mtu=20)
        try:
            _, writer = await _raw_client(listener.port)
            writer.write(data)
            await writer.drain()
            writer.close()
            link = await listener.accept(timeout=5)
            try:
                for _ in range(len(data) + 1):
                    message = await asyncio.wait_for(link.recv(), 5)
                    assert len(message) <= 20
                raise AssertionError("more messages than bytes")
            except (LinkClosedError, DecodeError, TransportError):
                pass
            await link.close()
        finally:
            await listener.close()

    asyncio.run(run())


# -- listener, connect and their failures ----------------------------------------------------


async def test_listener_exposes_its_port_and_links_name_their_peers() -> None:
    listener = await TcpListener.bind("127.0.0.1", 0)
    assert isinstance(listener, Listener)
    assert listener.port > 0 and listener.address == f"127.0.0.1:{listener.port}"
    guest = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    host = await listener.accept(timeout=5)
    assert guest.peer == listener.address
    assert host.peer.startswith("127.0.0.1:") and host.peer != listener.address
    assert guest.mtu == host.mtu == 65535
    assert not guest.encrypted and not host.encrypted
    for link in (guest, host):
        await link.close()
    await listener.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_is_readable() -> None:
    port = _free_port()
    with pytest.raises(TransportError) as info:
        await tcp_connect("127.0.0.1", port, timeout=5)
    assert str(info.value) == f"cannot reach 127.0.0.1:{port}: connection refused"


async def test_connect_timeout_is_a_pairing_timeout() -> None:
    listener = await TcpListener.bind()
    with pytest.raises(
        PairingTimeout, match=rf"cannot reach 127\.0\.0\.1:{listener.port}: no answer"
    ):
        await tcp_connect("127.0.0.1", listener.port, timeout=0)
    await listener.close()


async def test_busy_port() -> None:
    listener = await TcpListener.bind()
    with pytest.raises(TransportError, match=r"cannot listen on 127\.0\.0\.1"):
        await TcpListener.bind("127.0.0.1", listener.port)
    await listener.close()


async def _until_queued(listener: TcpListener) -> None:
    """Wait (bounded) until the listener has taken in a connection nobody accepted yet."""
    for _ in range(500):
        if listener._waiting.qsize():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the listener never saw the connection")


async def test_accept_timeout_and_close() -> None:
    listener = await TcpListener.bind()
    with pytest.raises(PairingTimeout, match="no guest connected"):
        await listener.accept(timeout=0.02)
    waiting = asyncio.ensure_future(listener.accept())
    guest = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    host = await asyncio.wait_for(waiting, 5)
    waiting = asyncio.ensure_future(listener.accept())
    await asyncio.sleep(0)
    await listener.close()
    with pytest.raises(LinkClosedError, match="listener"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(LinkClosedError, match="listener"):
        await listener.accept(timeout=1)
    await listener.close()
    # Links already accepted outlive the listener.
    await guest.send(b"after close")
    assert await asyncio.wait_for(host.recv(), 5) == b"after close"
    for link in (guest, host):
        await link.close()


async def test_listener_close_hangs_up_on_guests_nobody_accepted() -> None:
    listener = await TcpListener.bind()
    guest = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    await _until_queued(listener)
    await listener.close()
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(guest.recv(), 5)
    await guest.close()


async def test_backlog_turns_away_guests_beyond_it() -> None:
    listener = await TcpListener.bind(backlog=1)
    first = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    await _until_queued(listener)
    second = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(second.recv(), 5)
    host = await listener.accept(timeout=5)
    await first.send(b"first is served")
    assert await asyncio.wait_for(host.recv(), 5) == b"first is served"
    for link in (first, second, host):
        await link.close()
    await listener.close()


async def test_close_gives_up_on_a_peer_that_never_reads_nor_closes() -> None:
    listener = await TcpListener.bind(close_timeout=0.2)
    _, writer = await _raw_client(listener.port)
    link = await listener.accept(timeout=5)
    # Fill the socket buffers so that a graceful close cannot finish.
    _, blocked = await _flood_until_blocked(link, max_bytes=64 << 20, block_wait=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await link.close()
    assert loop.time() - started < 2
    with pytest.raises(LinkClosedError, match="before the message went out"):
        await asyncio.wait_for(blocked, 5)
    writer.close()
    await listener.close()


@pytest.mark.parametrize("mtu", [19, 65536, 0])
async def test_mtu_is_validated(mtu: int) -> None:
    with pytest.raises(ConfigError):
        await TcpListener.bind(mtu=mtu)
    with pytest.raises(ConfigError):
        await tcp_connect("127.0.0.1", 1, timeout=1, mtu=mtu)


# -- host:port and the registry --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:65535", ("::1", 65535)),
        ("::1:80", ("::1", 80)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected
    assert parse_host_port(format_host_port(*expected)) == expected


@pytest.mark.parametrize("text", ["", "8765", ":80", "host:", "host:-1", "host:65536", "h st:1"])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(text)


async def test_registry_tcp_listen_and_connect() -> None:
    host_side = await open_transport("tcp:127.0.0.1:0", mtu=1000)
    assert isinstance(host_side, TcpTransport) and host_side.mtu == 1000
    assert not hasattr(host_side, "start_advertising")  # TCP targets are explicit
    listener = await host_side.listen()
    guest_side = await open_transport(f"tcp:127.0.0.1:{listener.port}", mtu=1000)
    guest = await guest_side.connect(timeout=5)
    host = await listener.accept(timeout=5)
    assert guest.mtu == host.mtu == 1000
    await guest.send(b"via the registry")
    assert await host.recv() == b"via the registry"
    other = await host_side.connect(f"tcp:127.0.0.1:{listener.port}", timeout=5)
    other_host = await listener.accept(timeout=5)
    await other.send(b"by address")
    assert await other_host.recv() == b"by address"
    with pytest.raises(ConfigError, match="port 0"):
        await host_side.connect(timeout=1)
    await host_side.close()
    assert listener.closed
    for link in (guest, host, other, other_host):
        await link.close()


# -- two OS processes ------------------------------------------------------------------------

ECHO_HOST = """
import asyncio, sys
from pairkit.pairing.errors import LinkClosedError
from pairkit.transports.registry import open_transport

async def main():
    transport = await open_transport("tcp:127.0.0.1:0")
    listener = await transport.listen()
    print(listener.port, flush=True)
    link = await listener.accept(timeout=30)
    count = 0
    try:
        while True:
            await link.send(await link.recv())
            count += 1
    except LinkClosedError:
        pass
    await link.close()
    await transport.close()
    print(count, flush=True)

asyncio.run(main())
"""


async def test_echo_host_in_another_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ECHO_HOST,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        port = int(await asyncio.wait_for(child.stdout.readline(), 30))
        link = await tcp_connect("127.0.0.1", port, timeout=10)

        sizes = [*range(1, 300), *range(65000, 65536, 37)]
        messages = [bytes([n % 251]) * n for n in sizes]

        async def send_all() -> None:
            for message in messages:
                await link.send(message)

        async def recv_all() -> None:
            for i, message in enumerate(messages):
                assert await link.recv() == message, f"echo {i} differs"

        await asyncio.wait_for(asyncio.gather(send_all(), recv_all()), 30)

        # 1 MiB out and the same 1 MiB back, at the same time.
        blob = os.urandom(1 << 20)
        chunks = [blob[i : i + link.mtu] for i in range(0, len(blob), link.mtu)]

        async def send_blob() -> None:
            for chunk in chunks:
                await link.send(chunk)

        async def recv_blob() -> bytes:
            parts = [await link.recv() for _ in chunks]
            return b"".join(parts)

        _, echoed = await asyncio.wait_for(asyncio.gather(send_blob(), recv_blob()), 30)
        assert echoed == blob
        await link.close()
        out, err = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode == 0, err.decode()
        assert int(out) == len(messages) + len(chunks)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_check_functions_work_outside_the_class() -> None:
    listener, guest, host = await _connected_pair(4096)
    await check_bulk_both_ways(guest, host, total=200_000)
    for link in (guest, host):
        await link.close()
    await listener.close()
