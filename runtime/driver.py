"""The thin asyncio driver that runs any :class:`~pairing.machine.Machine` over any link.

The machine decides everything; the driver only moves bytes, asks the delegate the machine's
questions, and turns the machine's deadline into a wait with a timeout.  A silent peer therefore
ends in :class:`~pairing.errors.PairingTimeout` when the machine's deadline passes, never a hang.
Messages larger than the link's MTU are fragmented with :mod:`pairing.framing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import Any, Protocol

from .pairing import keyschedule
from .pairing.errors import (
    ConfigError,
    ErrorCode,
    LinkClosedError,
    LocalError,
    PairingError,
    PairingTimeout,
)
from .pairing.framing import Reassembler, fragment
from .pairing.machine import Machine, Question

#: a machine that sets no deadline still gets one: nothing in pairkit waits forever
DEFAULT_IDLE = 60.0
#: how long a person has to answer a question (confirm a code, allow a join)
DEFAULT_ANSWER_TIME = 120.0
#: the largest handshake message the driver reassembles
MAX_HANDSHAKE_MESSAGE = 64 * 1024


class LinkLike(Protocol):
    """The part of :class:`transports.base.Link` the driver uses (pairing/ imports no transport)."""

    @property
    def mtu(self) -> int: ...

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...


class MessagePipe:
    """Whole messages over a link of bounded MTU (fragmenting and reassembling).

    The pipe also keeps the transcript of every whole message it moved, one running hash per
    direction, so that what the two sides exchanged before the session key (the cloud step,
    the join request, the negotiation) can be bound into it (docs/security.md, rule 6):
    :meth:`transcript` gives the same 32 bytes on both sides exactly when both saw the same
    messages in each direction.
    """

    def __init__(
        self,
        link: LinkLike,
        *,
        max_message: int = MAX_HANDSHAKE_MESSAGE,
        guest: bool | None = None,
        send_timeout: float = DEFAULT_IDLE,
    ) -> None:
        self.link = link
        #: how long one message may wait for the peer to take it (flow control)
        self.send_timeout = send_timeout
        self._reassembler = Reassembler(max_message)
        # The fragments of one message must not interleave with another's.
        self._send_lock = asyncio.Lock()
        self._sent = hashlib.sha256(keyschedule.TRANSCRIPT_DIRECTION)
        self._received = hashlib.sha256(keyschedule.TRANSCRIPT_DIRECTION)
        #: which side this pipe is on (orders the two directions in :meth:`transcript`)
        self.guest = guest

    async def send(self, message: bytes) -> None:
        """Send one whole message; :class:`PairingTimeout` if the peer does not take it within
        :attr:`send_timeout` seconds (every send has a deadline, like every receive)."""
        try:
            async with asyncio.timeout(self.send_timeout):
                async with self._send_lock:
                    for piece in fragment(message, self.link.mtu):
                        await self.link.send(piece)
                    _absorb(self._sent, message)
        except TimeoutError:
            raise PairingTimeout(
                f"the peer stopped reading for {self.send_timeout:.0f} s"
            ) from None

    async def recv(self) -> bytes:
        while True:
            message = self._reassembler.feed(await self.link.recv())
            if message is not None:
                _absorb(self._received, message)
                return message

    def transcript(self) -> bytes:
        """SHA-256 over both directions' hashes, guest->host first (docs/protocol.md §2)."""
        if self.guest is None:
            raise ConfigError("a transcript needs to know which side the pipe is on")
        sent, received = self._sent.digest(), self._received.digest()
        g2h, h2g = (sent, received) if self.guest else (received, sent)
        return hashlib.sha256(keyschedule.TRANSCRIPT + g2h + h2g).digest()



class _Replay(MessagePipe):
    """A pipe that gives back a message already read, then reads on (see :func:`replay_first`).
    Its transcript is the inner pipe's, which counted ``first`` when it read it."""

    def __init__(self, inner: MessagePipe, first: bytes) -> None:
        super().__init__(inner.link, guest=inner.guest)
        self._inner = inner
        self._first: bytes | None = first

    async def send(self, message: bytes) -> None:
        await self._inner.send(message)

    async def recv(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._inner.recv()

    def transcript(self) -> bytes:
        return self._inner.transcript()


def replay_first(pipe: MessagePipe, first: bytes) -> MessagePipe:
    """``pipe`` with ``first`` put back in front: a host reads the guest's first message to
    choose the machine (:func:`pairing.ttp.is_ttp_offer`), then drives that machine on this."""
    return _Replay(pipe, first)

def _absorb(h: Any, message: bytes) -> None:
    h.update(len(message).to_bytes(4, "big"))
    h.update(message)


async def drive(
    machine: Machine,
    link: LinkLike | MessagePipe,
    *,
    delegate: Any = None,
    clock: Callable[[], float] | None = None,
    idle: float = DEFAULT_IDLE,
    answer_time: float = DEFAULT_ANSWER_TIME,
) -> None:
    """Run ``machine`` over ``link`` until it is done; raise its error if it fails.

    ``delegate`` receives events by hook name (``await delegate.<event.hook>(event)``); for a
    :class:`Question` the hook's return value is the answer.  ``clock`` defaults to the event
    loop's monotonic clock.  A machine not yet started is started here (``start(now)``).
    """
    loop = asyncio.get_running_loop()
    now = clock or loop.time
    pipe = link if isinstance(link, MessagePipe) else MessagePipe(link)

    async def flush() -> None:
        for message in machine.outgoing():
            await pipe.send(message)

    try:
        if not machine.started:
            machine.start(now())
        while True:
            await flush()
            events = machine.events()
            for event in events:
                await _deliver(machine, event, delegate, now, answer_time)
            if events:
                continue  # an answer may have produced output or more events
            if machine.done:
                return
            if machine.failed:
                assert machine.error is not None
                raise machine.error
            deadline = machine.next_deadline()
            wait = idle if deadline is None else max(0.0, deadline - now())
            try:
                message = await asyncio.wait_for(pipe.recv(), wait)
            except TimeoutError:
                if deadline is None:
                    raise PairingTimeout(f"the peer sent nothing for {idle:.0f} s") from None
                machine.on_timeout(now())
                continue
            machine.receive(message, now())
    except LinkClosedError as exc:
        machine.abort(exc)
        raise LinkClosedError("the link closed before the exchange was complete") from exc
    except PairingError as exc:
        machine.abort(exc)
        # Best effort: tell the peer why we stop (the machine queued an Abort).
        with contextlib.suppress(PairingError, OSError, TimeoutError):
            await asyncio.wait_for(flush(), 1.0)
        raise
    except Exception as exc:
        # Not pairkit's own kind of error (the file system failed, or a bug): the peer is
        # told, so it does not wait for a deadline, and the caller gets a typed error that
        # names the kind of failure only, never a path (issue 17).
        err = LocalError(f"internal failure ({describe_failure(exc)})", code=ErrorCode.INTERNAL)
        machine.abort(err)
        with contextlib.suppress(PairingError, OSError, TimeoutError):
            await asyncio.wait_for(flush(), 1.0)
        raise err from exc
    except BaseException as exc:
        machine.abort(PairingError(f"stopped: {type(exc).__name__}"))
        raise


def describe_failure(exc: BaseException) -> str:
    """What went wrong, for a person and for the peer: the OS's reason for an OSError (without
    the file name), else the exception's kind."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return type(exc).__name__


async def _deliver(
    machine: Machine,
    event: Any,
    delegate: Any,
    now: Callable[[], float],
    answer_time: float,
) -> None:
    hook = getattr(delegate, event.hook, None) if delegate is not None else None
    if not isinstance(event, Question):
        if hook is not None:
            await hook(event)
        return
    if hook is None:
        raise ConfigError(
            f"no one to answer {type(event).__name__}: the delegate lacks {event.hook}"
        )
    try:
        value = await asyncio.wait_for(hook(event), answer_time)
    except TimeoutError:
        # Our side's person did not answer: the peer is waiting, so tell it why we stop.
        exc = PairingTimeout(f"no answer within {answer_time:.0f} s")
        machine.abort(exc, tell_peer=True)
        raise exc from None
    machine.answer(event, value, now())
