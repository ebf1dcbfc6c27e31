"""What pairkit's links have in common, written once (DESIGN.md "Links").

Every link of every transport is one of two kinds, both built on :class:`LinkBase` (the
``peer``, ``mtu`` and security-flag properties, ``closed`` and ``repr``):

* :class:`QueuedLink`: messages arrive through a :class:`MessageQueue`, a bounded FIFO whose
  ``put`` waits when it is full, so the reader's pace holds the sender back.  The loopback
  link (``transports.loopback``) and the TCP link (``transports.tcp``) are queued links.
* :class:`BufferedLink`: messages arrive from a radio stack's callbacks, which cannot wait, into
  a buffer bounded in bytes (``max_rx_buffer``): a peer that overruns it loses the link.  An
  optional ``idle_timeout`` gives up on a silent peer, and ``close`` is one task every caller
  waits on.  pairkit's BLE links on bumble (``transports.ble.links``) and on bleak
  (``transports.bleak``) are buffered links.

Also here: the MTU and message checks every link uses, and :func:`put_latest`, how a closing
scanner wakes its consumers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, TypeVar

from pairkit.pairing.errors import ConfigError, LinkClosedError, PairingTimeout, TooLargeError

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "MAX_MTU",
    "MIN_MTU",
    "BufferedLink",
    "LinkBase",
    "MessageQueue",
    "QueuedLink",
    "Signal",
    "check_message",
    "check_mtu",
    "check_positive",
    "put_latest",
]

MIN_MTU = 20  #: BLE's smallest ATT MTU (23) less its 3-byte header; base.Link allows 20..65535
MAX_MTU = 65535
DEFAULT_QUEUE_SIZE = 16  #: unread messages per direction before ``send`` waits

T = TypeVar("T")


def check_mtu(mtu: int) -> int:
    """``mtu`` if it is an integer from :data:`MIN_MTU` to :data:`MAX_MTU`, else ConfigError."""
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"mtu must be an integer from {MIN_MTU} to {MAX_MTU}, not {mtu!r}")
    return mtu


def check_positive(name: str, value: int) -> int:
    """``value`` if it is a positive integer, else ConfigError naming the setting ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    return value


def check_message(data: bytes, mtu: int) -> bytes:
    """``data`` as bytes; TypeError if it is not bytes-like, TooLargeError over ``mtu`` bytes."""
    if type(data) is bytes and len(data) <= mtu:
        return data  # the common case: what bytes(data) and the checks below would give
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"a link sends bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > mtu:
        raise TooLargeError(
            f"a message of {len(data)} bytes does not fit this link's MTU of {mtu} bytes; "
            "fragment it first"
        )
    return data


def put_latest(queue: asyncio.Queue[T], item: T) -> None:
    """Queue ``item`` now, dropping the oldest items while the queue is full.

    A transport that closes uses it to put the ``None`` that ends each running scan
    (:func:`transports.base.sightings_until`), however far behind its consumer is.
    """
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


class Signal:
    """Wakes every task waiting for "something changed" (a lock-free asyncio.Condition)."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        if not self._waiters:
            return  # nobody waits (the common case: a message put or taken in passing)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            # A waiter left behind by an event loop that has since closed (a medium shared
            # between tests) cannot be woken, and need not be.
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future of the running loop that :meth:`fire` completes: :meth:`wait` without a
        coroutine, for a reader that awaits it itself (the driver, issue 13).  A reader that
        stops waiting cancels it; a cancelled waiter is dropped at the next :meth:`fire` or
        :meth:`waiter`, whichever comes first, so none accumulate."""
        waiters = self._waiters
        if waiters:
            waiters[:] = [w for w in waiters if not w.done()]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        return waiter

    async def wait(self, timeout: float | None = None) -> None:
        """Return when :meth:`fire` is called or ``timeout`` seconds pass, whichever is first."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait({waiter}, timeout=max(timeout, 0.0))
        finally:
            if not waiter.done():
                waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)


class MessageQueue:
    """A bounded FIFO of messages with an end, the inside of one direction of a link.

    ``put`` waits while ``capacity`` messages are unread, or (with ``max_bytes``) while the
    message would take the unread bytes past ``max_bytes``: that is the backpressure a sender
    feels.  An empty queue takes any one message, so a message larger than ``max_bytes`` still
    passes, alone.  ``finish(exc)`` says no more messages will come: ``get`` returns what is queued,
    then raises ``exc``.  ``abort(exc)`` drops what is queued: ``get`` and ``put`` raise ``exc``
    at once (the reading side has gone away).  Cancelling a waiting ``get`` or ``put`` loses
    nothing.
    """

    def __init__(self, capacity: int = DEFAULT_QUEUE_SIZE, *, max_bytes: int | None = None) -> None:
        self.capacity = check_positive("queue_size", capacity)
        self.max_bytes = None if max_bytes is None else check_positive("max_buffer", max_bytes)
        self._items: deque[bytes] = deque()
        self._bytes = 0  # the unread messages' bytes
        self._changed = Signal()
        self._end: BaseException | None = None
        self._aborted: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """The bytes of the messages queued and not read yet."""
        return self._bytes

    def _has_room(self, message: bytes) -> bool:
        if not self._items:
            return True
        if len(self._items) >= self.capacity:
            return False
        return self.max_bytes is None or self._bytes + len(message) <= self.max_bytes

    def peek(self) -> tuple[bytes, ...]:
        """The messages queued and not read yet, left queued."""
        return tuple(self._items)

    @property
    def ended(self) -> bool:
        """True once :meth:`finish` or :meth:`abort` was called."""
        return self._end is not None or self._aborted is not None

    async def put(self, message: bytes) -> None:
        while True:
            if self._aborted is not None:
                raise self._aborted.with_traceback(None)
            if self._end is not None:
                raise LinkClosedError("the link is closed")
            if self._has_room(message):
                self._items.append(message)
                self._bytes += len(message)
                self._changed.fire()
                return
            await self._changed.wait()

    def put_nowait(self, message: bytes) -> None:
        """Queue ``message`` now, even over ``capacity``: for a producer that cannot wait (a
        protocol callback), which bounds itself by checking ``len`` first (it stops reading
        its source while the queue is full).  Dropped when the queue has ended."""
        if self._aborted is None and self._end is None:
            self._items.append(message)
            self._bytes += len(message)
            self._changed.fire()

    async def get(self) -> bytes:
        while True:
            if self._aborted is not None:
                raise self._aborted.with_traceback(None)
            if self._items:
                message = self._items.popleft()
                self._bytes -= len(message)
                self._changed.fire()
                return message
            if self._end is not None:
                raise self._end.with_traceback(None)
            await self._changed.wait()

    def try_put(self, message: bytes) -> bool:
        """:meth:`put` if it need not wait: True once queued, False (nothing done) if full;
        raises as :meth:`put` would on a queue that has ended.  (Unlike :meth:`put_nowait`,
        it never goes over ``capacity`` nor ``max_bytes``.)"""
        if self._aborted is not None:
            raise self._aborted.with_traceback(None)
        if self._end is not None:
            raise LinkClosedError("the link is closed")
        if not self._has_room(message):
            return False
        self._items.append(message)
        self._bytes += len(message)
        self._changed.fire()
        return True

    def get_nowait(self) -> bytes | None:
        """:meth:`get` if it need not wait: the next message, or None when none is queued;
        raises as :meth:`get` would once the queue has ended and is read."""
        if self._aborted is not None:
            raise self._aborted.with_traceback(None)
        if self._items:
            message = self._items.popleft()
            self._bytes -= len(message)
            if self._changed._waiters:  # (as fire's own first test: a reader takes in passing)
                self._changed.fire()
            return message
        if self._end is not None:
            raise self._end.with_traceback(None)
        return None

    def changed(self) -> asyncio.Future[None]:
        """A future that is done once anything changes here (a message put or taken, the end,
        an abort): what :meth:`get` waits for between its looks, for a reader that looks with
        :meth:`get_nowait` and awaits the future itself.  Already done if a message or the end
        is there now.  A reader that stops waiting cancels it."""
        if self._items or self._end is not None or self._aborted is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._changed.waiter()

    def finish(self, exc: BaseException) -> None:
        """No more messages: ``get`` drains the queue, then raises ``exc``.  Idempotent."""
        if self._end is None and self._aborted is None:
            self._end = exc
            self._changed.fire()

    def abort(self, exc: BaseException) -> None:
        """Drop the queue; every ``get`` and ``put`` raises ``exc`` from now on.  Idempotent."""
        if self._aborted is None:
            self._aborted = exc
            self._items.clear()
            self._bytes = 0
            self._changed.fire()


class LinkBase:
    """The properties of a :class:`~transports.base.Link` that every link answers alike.

    A subclass sets ``_peer`` (and ``_mtu``, unless it overrides :attr:`mtu`) and says when it
    is :attr:`closed`.  ``encrypted`` and ``mitm_protected`` are False: a link whose link layer
    can encrypt overrides them.
    """

    _peer: str
    _mtu: int

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def encrypted(self) -> bool:
        return False

    @property
    def mitm_protected(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def _describe(self) -> str:
        """Who the link joins, for ``repr``."""
        return f"peer={self._peer}"

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self._describe()} mtu={self.mtu} {state}>"


class QueuedLink(LinkBase):
    """A link whose received messages wait in a :class:`MessageQueue` (module docstring).

    The subclass sends, and closes: a close sets ``_closed`` and aborts ``_inbox``, a peer's
    close finishes it, with the error ``recv`` is to raise once the queue is read.
    """

    def __init__(self, *, peer: str, mtu: int, inbox: MessageQueue) -> None:
        self._peer = peer
        self._mtu = mtu
        self._inbox = inbox
        self._closed = False

    @property
    def buffered(self) -> int:
        """Messages received and not read yet."""
        return len(self._inbox)

    @property
    def buffered_bytes(self) -> int:
        """The bytes of the messages received and not read yet."""
        return self._inbox.bytes

    def peek_buffered(self) -> tuple[bytes, ...]:
        """The messages received and not read yet, left to be read."""
        return self._inbox.peek()

    def _check_send(self, data: bytes) -> bytes:
        """``data`` as bytes, if it fits the MTU and this side has not closed the link."""
        data = check_message(data, self._mtu)
        if self._closed:
            raise LinkClosedError("the link is closed")
        return data

    async def recv(self) -> bytes:
        if self._closed:
            raise LinkClosedError("the link is closed")
        try:
            return await self._inbox.get()
        except LinkClosedError:
            if self._closed:  # we closed while waiting: say so, not "the peer closed"
                raise LinkClosedError("the link is closed") from None
            raise

    def recv_nowait(self) -> bytes | None:
        """:meth:`recv` without waiting: the next message if one has arrived, else None
        (the driver reads a message already there without a timer or a task switch).

        A subclass whose ``recv`` does more than read the queue (flow control, say) must
        override this too; until it does, this gives None and its readers always await."""
        if type(self).recv is not QueuedLink.recv and (
            type(self).recv_nowait is QueuedLink.recv_nowait
        ):
            return None
        if self._closed:
            raise LinkClosedError("the link is closed")
        return self._inbox.get_nowait()

    def recv_ready(self) -> asyncio.Future[None] | None:
        """A future that is done once :meth:`recv_nowait` may give something new (a message,
        or the error that ends the link): a reader that polls can wait for it instead of
        awaiting :meth:`recv` (the driver, issue 13: one future awaited where ``recv`` awaits
        through the queue's coroutines).  A reader that stops waiting cancels it.

        None when ``recv`` is not this class's (a subclass's ``recv`` may wait on more than
        the queue): such a link's readers await ``recv``."""
        if type(self).recv is not QueuedLink.recv:
            return None
        return self._inbox.changed()


class BufferedLink(LinkBase):
    """A link fed by a radio stack's callbacks, into a buffer bounded in bytes (module doc).

    The subclass calls :meth:`feed` for each message that arrives and :meth:`_finish` when the
    connection is gone, and implements ``_send_checked`` (one message, already checked, under
    the send lock), ``_hang_up`` (flush and disconnect, on a close while connected) and
    ``_disconnect`` (drop the connection, on an abort).  ``_lost`` is done, with the reason,
    once the connection is gone (pass it to waits that must end then); ``recv`` raises
    LinkClosedError once the messages that arrived before are read.
    """

    def __init__(self, *, peer: str, idle_timeout: float | None, max_rx_buffer: int) -> None:
        self._peer = peer
        self._idle_timeout = idle_timeout
        self._max_rx_buffer = max_rx_buffer
        self._loop = asyncio.get_running_loop()
        self._rx: deque[bytes] = deque()
        self._rx_bytes = 0
        self._rx_ready = asyncio.Event()
        self._end_reason: str | None = None  # once set, nothing more arrives
        self._lost: asyncio.Future[str] = self._loop.create_future()  # connection gone, and why
        self._send_lock = asyncio.Lock()
        self._encrypt_lock = asyncio.Lock()
        self._close_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def closed(self) -> bool:
        return self._close_task is not None or self._lost.done()

    @property
    def buffered(self) -> int:
        """Messages received and not read yet."""
        return len(self._rx)

    def peek_buffered(self) -> tuple[bytes, ...]:
        """The messages received and not read yet, left to be read."""
        return tuple(self._rx)

    async def send(self, data: bytes) -> None:
        """Send one message of at most ``mtu`` bytes; one at a time, in order."""
        data = self._outgoing(data)
        async with self._send_lock:
            self._check_open()
            await self._send_checked(data)

    async def recv(self) -> bytes:
        """The next message; :class:`LinkClosedError` once the peer is gone and all is read.

        With an ``idle_timeout``, :class:`PairingTimeout` after that many seconds without a
        message, and the link is dropped.
        """
        while True:
            data = self._buffered_next()
            if data is not None:
                return data
            self._rx_ready.clear()
            idle = self._idle_timeout
            if idle is None:
                await self._rx_ready.wait()
                continue
            try:
                await asyncio.wait_for(self._rx_ready.wait(), idle)
            except TimeoutError:
                if self._rx or self._end_reason is not None:
                    continue  # something came just as the time ran out
                reason = f"nothing heard from {self._peer} for {idle:g} s"
                self._abort(reason)
                raise PairingTimeout(reason) from None

    async def close(self) -> None:
        """Flush what was sent, then disconnect; idempotent (every caller waits for the one
        close)."""
        if self._close_task is None:
            self._close_task = self._loop.create_task(self._do_close())
        await asyncio.shield(self._close_task)

    def feed(self, data: bytes) -> bool:
        """A message arrived (called from the stack's callbacks, in order); False if dropped."""
        if self._end_reason is not None:
            return False
        if self._rx_bytes + len(data) > self._max_rx_buffer:
            self._abort(f"the peer sent more than {self._max_rx_buffer} bytes that were not read")
            return False
        self._rx.append(bytes(data))
        self._rx_bytes += len(data)
        self._rx_ready.set()
        return True

    # -- for subclasses ------------------------------------------------------------------

    def _buffered_next(self) -> bytes | None:
        """The next message received, taken off the buffer; None when none is there yet;
        :class:`LinkClosedError` once the link has ended and all that came is read."""
        if self._rx:
            data = self._rx.popleft()
            self._rx_bytes -= len(data)
            self._consumed()
            return data
        if self._end_reason is not None:
            raise LinkClosedError(self._end_reason)
        return None

    def _outgoing(self, data: bytes) -> bytes:
        """``data`` as bytes, checked as every send of this link checks it (bytes-like, at most
        ``mtu`` bytes, the link open); raises TypeError, TooLargeError or the link's end."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a link sends bytes")
        data = bytes(data)
        mtu = self.mtu
        if len(data) > mtu:
            raise TooLargeError(
                f"a {len(data)}-byte message exceeds this link's MTU of {mtu} bytes"
            )
        self._check_open()
        return data

    async def _send_checked(self, data: bytes) -> None:
        raise NotImplementedError

    async def _hang_up(self) -> None:
        """Make sure what was sent has left, then disconnect (the connection is still up)."""
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    def _consumed(self) -> None:
        """The application read a message (L2CAP gives credits back here)."""

    def _check_open(self) -> None:
        if self._close_task is not None:
            raise LinkClosedError("the link is closed")
        if self._lost.done():
            raise LinkClosedError(self._lost.result())

    def _finish(self, reason: str) -> None:
        """The connection is gone: no more data; what is queued can still be read."""
        if not self._lost.done():
            self._lost.set_result(reason)
        if self._end_reason is None:
            self._end_reason = reason
            self._rx_ready.set()

    def _abort(self, reason: str) -> None:
        """Give up on the link from this side, without waiting: disconnect in the background."""
        self._finish(reason)
        self._spawn(self._disconnect())

    async def _do_close(self) -> None:
        if not self._lost.done():
            await self._hang_up()
        self._rx.clear()
        self._rx_bytes = 0
        self._finish("the link was closed on this side")
        self._end_reason = "the link was closed on this side"

    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
