"""Attack review atk20c, finding 4 (low): what a link held by a library host may buffer.

A library host with no ``accept()`` waiting holds a stranger's admitted link (pending, up to
the step timeout).  Its TCP link read frames into a queue bounded in messages only (16), each
up to 65,535 bytes: a stranger who sent one whole first message and then 15 full frames had a
megabyte buffered per link, 64 links (the pending limit) some 90 MB.  The queue is now bounded
in bytes too (:data:`~transports.tcp.DEFAULT_MAX_BUFFER`, two whole frames): past it the link
stops reading, and TCP holds the sender back.

Real code: a library host on 127.0.0.1 and a stranger's raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from pairkit.pairing.cloud import CloudHello
from pairkit.pairing.errors import LinkClosedError
from pairkit.transports.queued import MessageQueue
from pairkit.transports.tcp import DEFAULT_MAX_BUFFER, TcpTransport

from ..attack_harness import STEP
from ..known_device_harness import device, guest_served_by_pin, share_of

FRAME = 65_535
BOUND = DEFAULT_MAX_BUFFER  #: the byte bound of a TCP link's queue: two whole frames


class _Recording:
    """A listener that keeps each link it hands to the host, to look into its queue."""

    def __init__(self, listener: Any, links: list[Any]) -> None:
        self._listener, self._links = listener, links

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)

    def accept_nowait(self) -> Any:
        link = self._listener.accept_nowait()
        if link is not None:
            self._links.append(link)
        return link

    async def accept(self, timeout: float | None = None) -> Any:
        link = await self._listener.accept(timeout)
        self._links.append(link)
        return link


class _RecordingTcp(TcpTransport):
    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)
        self.links: list[Any] = []

    async def listen(self) -> Any:
        return _Recording(await super().listen(), self.links)


def _queued_bytes(link: Any) -> int:
    queued = sum(len(m) for m in link.peek_buffered())
    assert link.buffered_bytes == queued  # the link's own count agrees with its messages
    return queued


async def _flood(address: tuple[str, int]) -> socket.socket:
    """A stranger: one whole first message (a CloudHello), then 15 full frames and more."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, address)
    first = CloudHello(os.urandom(16), ()).encode()
    await loop.sock_sendall(sock, len(first).to_bytes(4, "big") + first)
    frame = FRAME.to_bytes(4, "big") + bytes(FRAME)
    for _ in range(15):
        await loop.sock_sendall(sock, frame)
    return sock


async def test_a_held_link_buffers_at_most_its_byte_bound(tmp_path: Path) -> None:
    paul = device(tmp_path, "Paul")
    transport = _RecordingTcp()
    async with paul.host(transport, methods=("pin",), pin="246810", step_timeout=STEP) as host:
        h, p = host.address.removeprefix("tcp:").rsplit(":", 1)
        flooding = asyncio.ensure_future(_flood((h, int(p))))
        try:
            # Watch the held link's queue until it has stopped growing for a while (the host's
            # reader runs on this loop between the looks), or has gone past the bound.
            most, still = 0, 0
            for _ in range(int(STEP / 0.05)):
                await asyncio.sleep(0.05)
                if not transport.links:
                    continue
                now = _queued_bytes(transport.links[0])
                still = still + 1 if now == most else 0
                most = max(most, now)
                if most > BOUND or (most >= BOUND - FRAME and still >= 10):
                    break
            assert transport.links, "the host took no link"
            assert most > 0, "the held link read nothing"
            assert most <= BOUND == 2 * FRAME, f"a held link buffered {most} bytes, over {BOUND}"
        finally:
            flooding.cancel()
            with contextlib.suppress(BaseException):
                (await flooding).close()


async def test_control_an_honest_guest_pairs_and_fetches_over_the_bounded_link(
    tmp_path: Path,
) -> None:
    """The bound holds two whole frames: a pairing and a fetch of many chunks go through."""
    data = os.urandom(600_000)
    share = share_of(tmp_path, {"big.bin": data})
    async with guest_served_by_pin(device(tmp_path, "Paul"), device(tmp_path, "George"),
                                   share) as g:
        await g.session.fetch("big.bin", tmp_path / "got.bin", timeout=STEP)
    assert (tmp_path / "got.bin").read_bytes() == data


async def test_a_queue_bounded_in_bytes_holds_back_a_message_past_the_bound() -> None:
    queue = MessageQueue(16, max_bytes=100)
    assert queue.try_put(bytes(60)) and queue.try_put(bytes(40))
    assert not queue.try_put(b"x")  # 101 bytes: held back, though far below 16 messages
    assert (len(queue), queue.bytes) == (2, 100)
    assert await queue.get() == bytes(60) and queue.bytes == 40
    assert queue.try_put(bytes(60)) and queue.bytes == 100
    await queue.get()
    await queue.get()
    assert queue.bytes == 0
    assert queue.try_put(bytes(500))  # an empty queue takes one message over the bound, alone
    assert not queue.try_put(b"y")
    queue.abort(LinkClosedError("gone"))
    assert queue.bytes == 0
