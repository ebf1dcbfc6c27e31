"""The link conformance suite: what every :class:`transports.base.Link` must do (DESIGN.md "Links").

Reusing it for a transport is one line plus a fixture.  Subclass :class:`LinkConformance` in a
``tests/test_*.py`` module and give the class an async fixture ``link_pair`` that yields two
fresh, connected, open links ``(a, b)`` and closes them afterwards (a check may leave them open,
closed or half-closed; closing twice must be harmless)::

    import pytest
    from tests.transport_conformance import LinkConformance

    class TestMyLink(LinkConformance):
        @pytest.fixture
        async def link_pair(self):
            a, b = await open_my_two_links()
            yield a, b
            await a.close()
            await b.close()

Every check below then runs as a test method of ``TestMyLink`` with a fresh pair.  A transport
that is slower or smaller than loopback overrides the class attributes (``step``, ``quiet``,
``bulk_bytes``, ``backpressure_max_bytes``, ``expect_encrypted``, ``expect_mitm_protected``);
one that cannot honour a check yet sets the method to ``None`` in its subclass
(``test_backpressure = None``) with a comment saying why, so the gap is visible.  The checks
are also plain coroutines, ``await check_ordered_both_ways(a, b)``, listed in :data:`CHECKS`,
for use outside pytest (hw-tests, bench).

Each check bounds its waits: ``step`` (default 10 s) for what must happen, ``quiet`` (0.05 s)
for "nothing happens", ``block_wait`` (0.1 s) for "this send is blocked"; none sleeps longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from pairkit.pairing.errors import LinkClosedError
from pairkit.transports.base import Link

__all__ = [
    "BLOCK_WAIT",
    "CHECKS",
    "QUIET",
    "STEP",
    "LinkConformance",
    "check_backpressure",
    "check_bulk_both_ways",
    "check_close_drains_then_raises",
    "check_close_is_idempotent",
    "check_close_wakes_pending_recv",
    "check_concurrent_senders",
    "check_every_size",
    "check_ordered_both_ways",
    "check_oversize_rejected",
    "check_peer_close_releases_blocked_sender",
    "check_properties",
    "check_recv_waits",
    "sizes_for",
]

STEP = 10.0  #: seconds within which something that must happen has to happen
QUIET = 0.05  #: seconds of watching to conclude that nothing arrives
BLOCK_WAIT = 0.1  #: seconds a send may take before it counts as blocked
MIN_MTU, MAX_MTU = 20, 65535

T = TypeVar("T")


async def _within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"{what} did not finish within {seconds:g} s") from None


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _tagged(index: int, size: int) -> bytes:
    """A message of ``size`` >= 4 bytes: its index, then a filler byte that depends on it."""
    return index.to_bytes(4, "big") + bytes([index * 37 & 0xFF]) * (size - 4)


def sizes_for(mtu: int) -> list[int]:
    """Message sizes the size check sends: every size up to ``mtu`` when that is cheap (<= 4096).

    Above 4096 every size would be gigabytes, so: every size to 1024, the last 64 below and at
    the MTU, and every 1021st between (a prime stride, to cross every alignment).
    """
    if mtu <= 4096:
        return list(range(1, mtu + 1))
    sizes = set(range(1, 1025)) | set(range(mtu - 63, mtu + 1)) | set(range(1025, mtu, 1021))
    return sorted(sizes)


async def check_properties(
    a: Link,
    b: Link,
    *,
    expect_encrypted: bool | None = None,
    expect_mitm_protected: bool | None = None,
) -> None:
    """Both ends have the Link shape: an MTU in 20..65535, a peer name, bools ``encrypted``
    and ``mitm_protected``, and no MITM protection without encryption (docs/security.md,
    rule 5: ``clear`` authenticates only over an MITM-protected LE Secure Connections link)."""
    for link in (a, b):
        assert isinstance(link, Link), f"{link!r} does not have the Link shape"
        assert isinstance(link.mtu, int) and MIN_MTU <= link.mtu <= MAX_MTU, link.mtu
        assert isinstance(link.peer, str) and link.peer, f"peer is {link.peer!r}"
        assert isinstance(link.encrypted, bool)
        assert isinstance(link.mitm_protected, bool)
        assert link.encrypted or not link.mitm_protected, "MITM-protected but not encrypted"
        assert link.closed is False
        if expect_encrypted is not None:
            assert link.encrypted is expect_encrypted
        if expect_mitm_protected is not None:
            assert link.mitm_protected is expect_mitm_protected


async def check_ordered_both_ways(
    a: Link, b: Link, *, count: int = 500, step: float = STEP
) -> None:
    """``count`` messages each way, sent and read at the same time, arrive in order, intact."""

    def message(side: int, i: int, mtu: int) -> bytes:
        size = 4 + (i * 7 + side) % (min(mtu, 64) - 3)
        return _tagged(i, size)

    async def send_all(link: Link, side: int) -> None:
        for i in range(count):
            await link.send(message(side, i, link.mtu))

    async def recv_all(link: Link, side: int, mtu: int) -> None:
        for i in range(count):
            got = await link.recv()
            assert got == message(side, i, mtu), f"message {i} arrived as {got[:8].hex()}..."

    await _within(
        asyncio.gather(
            send_all(a, 0), send_all(b, 1), recv_all(b, 0, a.mtu), recv_all(a, 1, b.mtu)
        ),
        step,
        f"{count} messages each way",
    )


async def check_every_size(a: Link, b: Link, *, step: float = STEP) -> None:
    """Every message size from 1 to the MTU (see :func:`sizes_for`) arrives intact, both ways.

    The bound is three ``step``: it guards against a hang, not a speed, and hundreds of
    messages both ways (an L2CAP MTU of 2048) took over 10 s on bumble's virtual radio on a
    loaded 2-core machine.
    """

    async def one_way(src: Link, dst: Link, seed: int) -> None:
        sizes = sizes_for(src.mtu)
        pattern = _blob(seed, src.mtu + 256)

        def message(size: int) -> bytes:
            offset = size % 251  # so equal-length prefixes differ between messages
            return pattern[offset : offset + size]

        async def send_all() -> None:
            for size in sizes:
                await src.send(message(size))

        async def recv_all() -> None:
            for size in sizes:
                got = await dst.recv()
                assert len(got) == size, f"expected a {size}-byte message, got {len(got)} bytes"
                assert got == message(size), f"the {size}-byte message was corrupted"

        await asyncio.gather(send_all(), recv_all())

    await _within(
        asyncio.gather(one_way(a, b, 1), one_way(b, a, 2)), 3 * step, "every size both ways"
    )


async def check_oversize_rejected(a: Link, b: Link, *, step: float = STEP) -> None:
    """``send`` of more than ``mtu`` bytes raises ValueError and leaves the link usable."""
    for src, dst in ((a, b), (b, a)):
        for size in (src.mtu + 1, 2 * src.mtu, 1 << 20):
            with pytest.raises(ValueError):
                await _within(src.send(bytes(size)), step, "an oversize send")
        await _within(src.send(b"still fine"), step, "a send after an oversize one")
        assert await _within(dst.recv(), step, "recv after an oversize send") == b"still fine"


async def check_close_drains_then_raises(closer: Link, other: Link, *, step: float = STEP) -> None:
    """What was sent before a close is read, then LinkClosedError; sends fail on both sides.

    Three messages are sent and the link closed before the other side reads anything (they must
    not be lost), then the other side's ``recv`` raises, again and again.  Afterwards both ends
    say ``closed`` and every ``send`` and ``recv`` raises LinkClosedError.
    """
    sent = [b"first", b"second" * 3, _blob(3, closer.mtu)]
    for message in sent:
        await _within(closer.send(message), step, "a send before close")
    await _within(closer.close(), step, "close()")
    assert closer.closed
    for message in sent:
        assert await _within(other.recv(), step, "draining after the peer closed") == message
    for _ in range(2):
        with pytest.raises(LinkClosedError):
            await _within(other.recv(), step, "recv after the peer closed")
    assert other.closed
    with pytest.raises(LinkClosedError):
        await _within(other.send(b"too late"), step, "send after the peer closed")
    with pytest.raises(LinkClosedError):
        await _within(closer.send(b"too late"), step, "send after close")
    with pytest.raises(LinkClosedError):
        await _within(closer.recv(), step, "recv after close")


async def check_close_wakes_pending_recv(a: Link, b: Link, *, step: float = STEP) -> None:
    """A ``recv`` already waiting on either side ends with LinkClosedError when ``a`` closes."""
    waiting_a = asyncio.ensure_future(a.recv())
    waiting_b = asyncio.ensure_future(b.recv())
    try:
        await asyncio.sleep(0.01)  # let both recv calls start waiting
        assert not waiting_a.done() and not waiting_b.done(), "recv returned with nothing sent"
        await _within(a.close(), step, "close()")
        for task, side in ((waiting_b, "the peer's"), (waiting_a, "the closer's own")):
            with pytest.raises(LinkClosedError):
                await _within(asyncio.shield(task), step, f"{side} pending recv after close")
    finally:
        await _cancel(waiting_a, waiting_b)


async def check_close_is_idempotent(a: Link, b: Link, *, step: float = STEP) -> None:
    """``close`` may be called again, at once, and from both sides, without an error."""
    await _within(asyncio.gather(a.close(), a.close()), step, "two concurrent close() calls")
    await _within(a.close(), step, "a third close()")
    await _within(b.close(), step, "the peer's close() after ours")
    await _within(b.close(), step, "the peer's second close()")
    assert a.closed and b.closed


async def check_recv_waits(a: Link, b: Link, *, quiet: float = QUIET, step: float = STEP) -> None:
    """``recv`` with nothing sent waits (returns nothing); a cancelled ``recv`` loses nothing."""
    for src, dst in ((a, b), (b, a)):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(dst.recv(), quiet)
        await _within(src.send(b"after the wait"), step, "send")
        assert await _within(dst.recv(), step, "recv after a cancelled recv") == b"after the wait"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(dst.recv(), quiet)  # and nothing extra after it


async def check_concurrent_senders(
    a: Link, b: Link, *, tasks: int = 4, count: int = 50, step: float = STEP
) -> None:
    """Tasks sending on one link at once: every message arrives whole, each task's in order."""

    async def sender(task: int) -> None:
        for i in range(count):
            await a.send(_tagged(task * 1_000_000 + i, min(a.mtu, 4 + (i % 16) * 3)))

    async def receiver() -> None:
        next_index = [0] * tasks
        for _ in range(tasks * count):
            got = await b.recv()
            tag = int.from_bytes(got[:4], "big")
            task, i = divmod(tag, 1_000_000)
            assert 0 <= task < tasks and i == next_index[task], f"out of order: task {task} #{i}"
            assert got == _tagged(tag, len(got)), "a message was mixed with another"
            next_index[task] += 1

    await _within(
        asyncio.gather(receiver(), *(sender(t) for t in range(tasks))), step, "concurrent senders"
    )


async def _flood_until_blocked(
    a: Link, *, max_bytes: int, block_wait: float
) -> tuple[int, asyncio.Task[None]]:
    """Send tagged MTU-sized messages until one blocks; return how many completed and the task."""
    limit = max(max_bytes // a.mtu, 64)
    filler = bytes(a.mtu - 4)
    for sent in range(limit):
        task = asyncio.ensure_future(a.send(sent.to_bytes(4, "big") + filler))
        done, _ = await asyncio.wait({task}, timeout=block_wait)
        if not done:
            return sent, task
        task.result()
    raise AssertionError(
        f"{limit} sends of {a.mtu} bytes ({limit * a.mtu} bytes) to a peer that reads nothing "
        "all completed: no backpressure"
    )


async def check_backpressure(
    a: Link,
    b: Link,
    *,
    max_bytes: int = 64 << 20,
    block_wait: float = BLOCK_WAIT,
    quiet: float = QUIET,
    step: float = STEP,
) -> None:
    """A sender whose peer reads nothing blocks (within ``max_bytes``), and nothing is lost.

    Then the peer reads: the blocked send completes, every message arrives exactly once and in
    order, and the link works both ways afterwards.
    """
    sent, blocked = await _flood_until_blocked(a, max_bytes=max_bytes, block_wait=block_wait)
    try:
        for i in range(sent + 1):
            got = await _within(b.recv(), step, f"reading message {i} of {sent + 1}")
            assert int.from_bytes(got[:4], "big") == i and len(got) == a.mtu, f"message {i}"
        await _within(blocked, step, "the blocked send once the peer read")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.recv(), quiet)  # exactly once: no extra message
        await _within(b.send(b"pong"), step, "send the other way")
        assert await _within(a.recv(), step, "recv the other way") == b"pong"
    finally:
        await _cancel(blocked)


async def check_peer_close_releases_blocked_sender(
    a: Link,
    b: Link,
    *,
    max_bytes: int = 64 << 20,
    block_wait: float = BLOCK_WAIT,
    step: float = STEP,
) -> None:
    """A send blocked by backpressure does not stay blocked when the peer closes.

    It completes or raises LinkClosedError, and before ``step`` seconds pass ``send`` raises
    LinkClosedError.
    """
    _, blocked = await _flood_until_blocked(a, max_bytes=max_bytes, block_wait=block_wait)
    try:
        await _within(b.close(), step, "the peer's close()")
        with contextlib.suppress(LinkClosedError):
            await _within(blocked, step, "a blocked send after the peer closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + step
        while True:
            try:
                await _within(a.send(b"x"), step, "a send after the peer closed")
            except LinkClosedError:
                break
            assert loop.time() < deadline, f"send still succeeds {step:g} s after the peer closed"
            await asyncio.sleep(0.01)
    finally:
        await _cancel(blocked)


async def check_bulk_both_ways(
    a: Link, b: Link, *, total: int = 1 << 20, step: float = STEP
) -> None:
    """``total`` bytes each way at the same time, cut into MTU-sized messages, arrive intact.

    Not a speed test: each message must come within ``step`` (progress), and the whole within
    ``step`` per 64 KiB (a bound on a hang, not on throughput: a loaded machine is slow)."""
    data_ab, data_ba = _blob(10, total), _blob(11, total)

    async def send_all(link: Link, data: bytes) -> None:
        for offset in range(0, len(data), link.mtu):
            await link.send(data[offset : offset + link.mtu])

    async def recv_all(link: Link, size: int) -> bytes:
        parts: list[bytes] = []
        received = 0
        while received < size:
            part = await asyncio.wait_for(link.recv(), step)
            parts.append(part)
            received += len(part)
        return b"".join(parts)

    _, _, got_ab, got_ba = await _within(
        asyncio.gather(
            send_all(a, data_ab), send_all(b, data_ba), recv_all(b, total), recv_all(a, total)
        ),
        step * (1 + total // (64 * 1024)),
        f"{total} bytes each way",
    )
    assert got_ab == data_ab, "a->b bulk data differs"
    assert got_ba == data_ba, "b->a bulk data differs"


#: Every check, by name, as ``check(a, b)`` coroutine functions (keyword options defaulted).
CHECKS: dict[str, Callable[..., Awaitable[None]]] = {
    "properties": check_properties,
    "ordered_both_ways": check_ordered_both_ways,
    "every_size": check_every_size,
    "oversize_rejected": check_oversize_rejected,
    "close_drains_then_raises": check_close_drains_then_raises,
    "close_wakes_pending_recv": check_close_wakes_pending_recv,
    "close_is_idempotent": check_close_is_idempotent,
    "recv_waits": check_recv_waits,
    "concurrent_senders": check_concurrent_senders,
    "backpressure": check_backpressure,
    "peer_close_releases_blocked_sender": check_peer_close_releases_blocked_sender,
    "bulk_both_ways": check_bulk_both_ways,
}


def _sides(pair: tuple[Link, Link], first: str) -> tuple[Link, Link]:
    a, b = pair
    return (a, b) if first == "a" else (b, a)


class LinkConformance:
    """Every check as a test method; subclass it and provide the ``link_pair`` fixture.

    Checks that treat the two ends differently run twice, once with each end as the actor
    (``[a]`` and ``[b]`` in the test id), since the two ends of a transport are often built
    differently (connector and acceptor, GATT client and server).
    """

    step: float = STEP
    quiet: float = QUIET
    block_wait: float = BLOCK_WAIT
    bulk_bytes: int = 1 << 20
    backpressure_max_bytes: int = 64 << 20
    expect_encrypted: bool | None = None
    expect_mitm_protected: bool | None = None

    @pytest.fixture
    async def link_pair(self) -> Any:  # pragma: no cover - each subclass provides its own
        raise NotImplementedError("a LinkConformance subclass must provide a link_pair fixture")

    async def test_properties(self, link_pair: tuple[Link, Link]) -> None:
        await check_properties(
            *link_pair,
            expect_encrypted=self.expect_encrypted,
            expect_mitm_protected=self.expect_mitm_protected,
        )

    async def test_ordered_both_ways(self, link_pair: tuple[Link, Link]) -> None:
        await check_ordered_both_ways(*link_pair, step=self.step)

    async def test_every_size(self, link_pair: tuple[Link, Link]) -> None:
        await check_every_size(*link_pair, step=self.step)

    async def test_oversize_rejected(self, link_pair: tuple[Link, Link]) -> None:
        await check_oversize_rejected(*link_pair, step=self.step)

    @pytest.mark.parametrize("side", ["a", "b"])
    async def test_close_drains_then_raises(self, link_pair: tuple[Link, Link], side: str) -> None:
        await check_close_drains_then_raises(*_sides(link_pair, side), step=self.step)

    @pytest.mark.parametrize("side", ["a", "b"])
    async def test_close_wakes_pending_recv(self, link_pair: tuple[Link, Link], side: str) -> None:
        await check_close_wakes_pending_recv(*_sides(link_pair, side), step=self.step)

    @pytest.mark.parametrize("side", ["a", "b"])
    async def test_close_is_idempotent(self, link_pair: tuple[Link, Link], side: str) -> None:
        await check_close_is_idempotent(*_sides(link_pair, side), step=self.step)

    async def test_recv_waits(self, link_pair: tuple[Link, Link]) -> None:
        await check_recv_waits(*link_pair, quiet=self.quiet, step=self.step)

    @pytest.mark.parametrize("side", ["a", "b"])
    async def test_concurrent_senders(self, link_pair: tuple[Link, Link], side: str) -> None:
        await check_concurrent_senders(*_sides(link_pair, side), step=self.step)

    @pytest.mark.parametrize("side", ["a", "b"])
    async def test_backpressure(self, link_pair: tuple[Link, Link], side: str) -> None:
        await check_backpressure(
            *_sides(link_pair, side),
            max_bytes=self.backpressure_max_bytes,
            block_wait=self.block_wait,
            quiet=self.quiet,
            step=self.step,
        )

    @pytest.mark.parametrize("side", ["a", "b"])
    async def test_peer_close_releases_blocked_sender(
        self, link_pair: tuple[Link, Link], side: str
    ) -> None:
        await check_peer_close_releases_blocked_sender(
            *_sides(link_pair, side),
            max_bytes=self.backpressure_max_bytes,
            block_wait=self.block_wait,
            step=self.step,
        )

    async def test_bulk_both_ways(self, link_pair: tuple[Link, Link]) -> None:
        await check_bulk_both_ways(*link_pair, total=self.bulk_bytes, step=self.step)
