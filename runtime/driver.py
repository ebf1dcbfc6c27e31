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
import types
from collections.abc import Callable
from typing import Any, Protocol

from .pairing import keyschedule, wire
from .pairing.errors import (
    ConfigError,
    ErrorCode,
    LinkClosedError,
    LocalError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    UserCancelled,
)
from .pairing.framing import Reassembler, fragment
from .pairing.machine import DONE, FAILED, Machine, Question, WaitTurn

#: a machine that sets no deadline still gets one: nothing in pairkit waits forever
DEFAULT_IDLE = 60.0
#: messages a run holds unread while its person is asked (compare's host usually holds one, the
#: guest's Noise message 2); a peer that sends more is stopped, not buffered without end
HELD_LIMIT = 8
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
    messages in each direction.  A pipe whose exchange binds nothing of what it moved (a
    device's connection to the key server, which has TLS's own transcript) is made with
    ``transcript=False`` and hashes nothing; its :meth:`transcript` raises ConfigError.
    """

    def __init__(
        self,
        link: LinkLike,
        *,
        max_message: int = MAX_HANDSHAKE_MESSAGE,
        guest: bool | None = None,
        send_timeout: float = DEFAULT_IDLE,
        transcript: bool = True,
    ) -> None:
        self.link = link
        #: how long one message may wait for the peer to take it (flow control)
        self.send_timeout = send_timeout
        self._reassembler = Reassembler(max_message)
        # The fragments of one message must not interleave with another's: a lock, made when
        # a message first has to wait (most are taken at once, see send_at_once).
        self._send_lock: asyncio.Lock | None = None
        self._sent: Any = None
        self._received: Any = None
        if transcript:
            self._sent = hashlib.sha256(keyschedule.TRANSCRIPT_DIRECTION)
            self._received = hashlib.sha256(keyschedule.TRANSCRIPT_DIRECTION)
        #: which side this pipe is on (orders the two directions in :meth:`transcript`)
        self.guest = guest
        self._unread: list[bytes] = []
        # Links that can take or give a message at once without waiting (the loopback link
        # and the other queued links) let the pipe skip the timer and the task switch of a
        # wait that would not wait (issue 13); any other link is always awaited.
        self._send_nowait: Callable[[bytes], bool] | None = getattr(link, "send_nowait", None)
        self._recv_nowait: Callable[[], bytes | None] | None = getattr(
            link, "recv_nowait", None
        )
        # ... and links that can say when something may have arrived (a future: the queued
        # links) let the driver wait for that itself, not through recv's coroutines.
        self._recv_ready: Callable[[], asyncio.Future[None] | None] | None = getattr(
            link, "recv_ready", None
        )

    async def send(self, message: bytes) -> None:
        """Send one whole message; :class:`PairingTimeout` if the peer does not take it within
        :attr:`send_timeout` seconds (every send has a deadline, like every receive)."""
        pieces = self.send_at_once(message)
        if pieces:
            await self.send_rest(message, pieces)

    def send_at_once(self, message: bytes) -> list[bytes]:
        """The part of :meth:`send` that need not wait: the message's fragments are sent
        while the link takes them at once, and the message is counted once all have gone.
        Gives the fragments still to send (none: the message is sent), which
        :meth:`send_rest` sends; nothing else may be sent on the pipe in between."""
        pieces = fragment(message, self.link.mtu)
        send_nowait = self._send_nowait
        lock = self._send_lock
        if send_nowait is not None and (lock is None or not lock.locked()):
            # No other message is being sent, and nothing below awaits until a piece does
            # not fit: the pieces sent at once cannot interleave with another message's.
            while pieces and send_nowait(pieces[0]):
                del pieces[0]
            if not pieces and (sent := self._sent) is not None:
                sent.update(len(message).to_bytes(4, "big"))  # as _absorb, one call less
                sent.update(message)
        return pieces

    async def send_rest(self, message: bytes, pieces: list[bytes]) -> None:
        """Send ``pieces``, the rest of ``message`` that :meth:`send_at_once` left, with
        :meth:`send`'s deadline; then count the message."""
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        try:
            async with asyncio.timeout(self.send_timeout):
                async with self._send_lock:
                    for piece in pieces:
                        await self.link.send(piece)
                    if self._sent is not None:
                        _absorb(self._sent, message)
        except TimeoutError:
            raise PairingTimeout(
                f"the peer stopped reading for {self.send_timeout:.0f} s"
            ) from None

    async def recv(self) -> bytes:
        message = await self.recv_unabsorbed()
        self.absorb(message)
        return message

    async def recv_unabsorbed(self) -> bytes:
        """The next whole message, not yet counted in the transcript: :func:`drive` reads
        ahead while a person is asked, and a message it did not use must count only in the
        exchange that uses it (:meth:`unread`)."""
        if self._unread:
            return self._unread.pop(0)
        while True:
            message = self._reassembler.feed(await self.link.recv())
            if message is not None:
                return message

    def poll_unabsorbed(self) -> bytes | None:
        """:meth:`recv_unabsorbed` if a whole message is already there, else None (fragments
        that arrived stay reassembling; nothing waits)."""
        if self._unread:
            return self._unread.pop(0)
        recv_nowait = self._recv_nowait
        if recv_nowait is None:
            return None
        while (piece := recv_nowait()) is not None:
            message = self._reassembler.feed(piece)
            if message is not None:
                return message
        return None

    def recv_ready(self) -> asyncio.Future[None] | None:
        """After :meth:`poll_unabsorbed` gave None: a future that is done once it may give
        something (a fragment arrived, or the link ended), or None when the link cannot say
        so (then :meth:`recv_unabsorbed` is awaited).  Whoever stops waiting cancels it."""
        recv_ready = self._recv_ready
        if recv_ready is None or self._recv_nowait is None:
            return None
        return recv_ready()

    def absorb(self, message: bytes) -> None:
        """Count a message read by :meth:`recv_unabsorbed` in the transcript."""
        received = self._received
        if received is not None:
            received.update(len(message).to_bytes(4, "big"))  # as _absorb, one call less
            received.update(message)

    def unread(self, messages: list[bytes]) -> None:
        """Put messages read ahead (and not absorbed) back in front, in order."""
        self._unread[:0] = messages

    def transcript(self) -> bytes:
        """SHA-256 over both directions' hashes, guest->host first (docs/protocol.md §2)."""
        if self._sent is None:
            raise ConfigError("this pipe keeps no transcript")
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

    async def recv_unabsorbed(self) -> bytes:
        if self._first is not None:
            return self._first
        return await self._inner.recv_unabsorbed()

    def absorb(self, message: bytes) -> None:
        if self._first is not None and message is self._first:
            self._first = None  # the inner pipe counted it when it read it
            return
        self._inner.absorb(message)

    def unread(self, messages: list[bytes]) -> None:
        self._inner.unread(messages)

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

    While a person is asked, the link is still read (issue 16): an ``Abort`` from the peer, or
    the link closing, withdraws the question at once (the delegate's hook is cancelled) and ends
    the run with the peer's error; any other message waits until the answer is given.  A run
    that is cancelled (Ctrl-C) tells the peer with an ``Abort`` of code ``cancelled``.

    A question's hook (a coroutine function) is usually run in the run's own task rather than
    in a task of its own (issue 13: a bare link, or a pipe that can be polled): a hook must not
    rely on ``asyncio.current_task()`` or on context variables being its own; a withdrawn
    question reaches it as a cancel either way.  A hook that swallows that cancel (or a
    Ctrl-C's, or the answer time's) and answers has its answer refused: the stop stands
    (docs/security.md, compare, item 4).  One that swallows every cancel holds the run, as
    any coroutine awaited in a task would: a hook must let a cancel through.
    """
    loop = asyncio.get_running_loop()
    now = clock or loop.time
    # Reading ahead needs a pipe that outlives this run (a message read and not used is put
    # back in it) over a link whose recv may be cancelled: the pairing pipeline's pipes and
    # files.Records over a secure link.  (A pipe that overrides recv itself is read as
    # before: with nothing read ahead.)
    read_ahead = isinstance(link, MessagePipe) and type(link).recv is MessagePipe.recv
    # A pipe made here for a bare link lives only as long as this run and nobody can ask it
    # for its transcript (a caller that binds one passes its own pipe): it hashes nothing
    # (issue 13: two SHA-256 states per run and two updates per message, never read).
    pipe = link if isinstance(link, MessagePipe) else MessagePipe(link, transcript=False)
    # ... so a message read from it need not be counted (absorb would do nothing).
    absorb = pipe.absorb if pipe is link else None
    # A machine that keeps its queues, state and deadline as Machine does (every pairing
    # machine) is read without its accessors' calls: six a message on each side (issue 13).
    plain = _PLAIN.get(type(machine))
    if plain is None:
        plain = _PLAIN[type(machine)] = _reads_as_machine(type(machine))
    read = pipe.recv_unabsorbed if read_ahead else pipe.recv
    # A message already there is taken without a timer (a pipe of another kind, which may
    # read its own way, is always awaited, unless it says how to poll it too).
    poll = (pipe.poll_unabsorbed if type(pipe) is MessagePipe
            or type(pipe).poll_unabsorbed is not MessagePipe.poll_unabsorbed else None)

    def take(message: bytes) -> None:
        if read_ahead:
            pipe.absorb(message)
    # A message not there yet is waited for as the link's own future (recv_ready), under the
    # run's one timer, when the pipe is a plain MessagePipe and it can poll: no coroutine of
    # the pipe's, the link's and its queue's per message (issue 13).  Every other pipe and
    # link is awaited through its recv, as before.
    ready = (pipe._recv_ready if type(pipe) is MessagePipe and pipe._recv_nowait is not None
             else None)
    inbox: asyncio.Task[bytes] | None = None  # the pending read, kept across a question
    reads = _ReadDeadline(loop, asyncio.current_task())
    held: list[bytes] = []  # messages read while a person was asked, fed after the answer

    async def flush() -> None:
        for message in machine.outgoing():
            await pipe.send(message)

    async def flush_briefly() -> None:
        """Best effort: ``flush`` for at most a second, its errors dropped; a cancel of the
        run's own meanwhile (Ctrl-C) goes through.  Not ``asyncio.wait_for``: on Python 3.11
        it returns the flush's result when a cancel comes as the flush ends, and the run
        ended as if no one had pressed Ctrl-C (attack review atk14b)."""
        with contextlib.suppress(PairingError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await flush()

    send = pipe.send
    # A plain pipe's send in two steps, so that a message the link takes at once is sent
    # without a coroutine (a pipe of another kind sends its own way).
    send_at_once = pipe.send_at_once if type(pipe).send is MessagePipe.send else None

    async def next_message(wait: float) -> bytes:
        """The next message when it cannot be polled: read through the pipe (absorbed when
        the run does not read ahead, as ``pipe.recv`` absorbs)."""
        nonlocal inbox
        if inbox is None and wait > 0:
            # No read under way (the common case): await it here, no task of its own, under
            # the run's one timer (_ReadDeadline).  A timeout cancels the read, which links
            # and pipes allow (a partial message stays reassembling); a deadline already
            # passed is left to the path below, as before.
            return await reads.read(read, loop.time() + wait)
        if inbox is None:
            inbox = asyncio.ensure_future(read())
        done, _ = await asyncio.wait({inbox}, timeout=wait)
        if not done:
            raise TimeoutError
        task, inbox = inbox, None
        return task.result()

    async def wait_turn(event: WaitTurn) -> bool:
        # Answered here, never by the delegate: True when woken, False at the deadline.
        woken = asyncio.Event()
        event.subscribe(woken.set)
        try:
            async with asyncio.timeout(max(0.0, event.deadline - now())):
                await woken.wait()
            return True
        except TimeoutError:
            return False
        finally:
            event.subscribe(None)

    async def ask(event: Any) -> None:
        nonlocal inbox
        if isinstance(event, WaitTurn):
            # Our own wait, no person asked: it ends at its deadline (False), which the
            # answer time must not cut short (a "no answer" for a wait that ends busy).
            hook, limit = wait_turn, answer_time + max(0.0, event.deadline - now())
        else:
            hook, limit = _hook(delegate, event), answer_time
        if not read_ahead:
            # Nothing to read meanwhile: the answer is awaited here, no task of its own, under
            # the run's one timer (issue 13: as the reads, no timeout context per question).
            cancelling = reads.owner.cancelling() if reads.owner is not None else 0
            try:
                value = await reads.wait(hook(event), loop.time() + limit)
            except TimeoutError:
                if not reads.took_too_long():
                    raise  # the delegate's own error, not our deadline
                # Our side did not answer: the peer is waiting, so tell it why.
                exc = PairingTimeout(f"no answer within {limit:.0f} s")
                machine.abort(exc, tell_peer=True)
                raise exc from None
            answer_stands(cancelling, limit)
            machine.answer(event, value, now())
            return
        asked = hook(event)
        task = reads.owner
        if poll is not None and inbox is None and task is not None and asyncio.iscoroutine(asked):
            # The hook's first step is run here (issue 13): a delegate that answers without
            # waiting (Yes, ``pairkit host --yes``) is answered with no task and no read
            # ahead.  What the peer sent before the answer is still looked at first, as the
            # read ahead would have: an Abort ends the run unanswered, the rest is held.
            try:
                pending = asked.send(None)
            except StopIteration as stop:
                hold_queued()
                machine.answer(event, stop.value, now())
                return
            # A person who takes time: the rest of the hook is awaited here, in the run's own
            # task (what its first step set up, such as a timeout, belongs to this task),
            # under the run's one timer, while the link is watched (watch).
            value = await watch(_resume(asked, pending), task, limit)
            machine.answer(event, value, now())
            return
        answer = asyncio.ensure_future(asked)
        try:
            deadline = now() + limit
            while not answer.done():
                if inbox is None and read_ahead:
                    inbox = asyncio.ensure_future(pipe.recv_unabsorbed())
                left = max(0.0, deadline - now())
                waiting = {answer} if inbox is None else {answer, inbox}
                done, _ = await asyncio.wait(
                    waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    # Our side's person did not answer: the peer is waiting, so tell it why.
                    exc = PairingTimeout(f"no answer within {limit:.0f} s")
                    machine.abort(exc, tell_peer=True)
                    raise exc
                if inbox is not None and inbox in done:
                    reading, inbox = inbox, None
                    message = reading.result()  # LinkClosedError: the peer left; stop asking
                    if _is_abort(message):
                        take(message)
                        machine.receive(message, now())  # raises the peer's error
                    hold(message)
            value = answer.result()
        finally:
            if not answer.done():
                answer.cancel()
                # Its end, not its outcome (withdrawn, it is not ours): a cancel of the run's
                # own meanwhile (Ctrl-C while the answer cleans up) goes through.
                await asyncio.wait({answer})
                if not answer.cancelled():
                    answer.exception()
        machine.answer(event, value, now())

    def answer_stands(cancelling: int, limit: float) -> None:
        """A hook run in the run's own task answered: not an answer if the run was stopped
        meanwhile and the hook swallowed the stop (attack review atk13b).  The answer time
        passed: PairingTimeout, the peer told.  The run was cancelled (Ctrl-C) beyond the
        ``cancelling`` requests it had before: CancelledError, as the cancel would have."""
        if reads.took_too_long():
            # Our side's person did not answer in time: the peer is waiting, so tell it.
            exc = PairingTimeout(f"no answer within {limit:.0f} s")
            machine.abort(exc, tell_peer=True)
            raise exc
        task = reads.owner
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError

    def hold(message: bytes) -> None:
        """A message read while a person is asked: held until the answer, or, past
        HELD_LIMIT, a ProtocolError."""
        if len(held) >= HELD_LIMIT:
            raise ProtocolError(
                f"the peer sent more than {HELD_LIMIT} messages while this side's "
                "person was being asked"
            )
        held.append(message)

    def hold_queued() -> None:
        """Before an answer given at once: every message already there is looked at as the
        read ahead looks at it (an Abort raises the peer's error, the rest is held)."""
        assert poll is not None
        while (message := poll()) is not None:
            if _is_abort(message):
                take(message)
                machine.receive(message, now())  # raises the peer's error
            hold(message)

    async def watch(answer: Any, task: asyncio.Task[Any], limit: float) -> Any:
        """``await answer`` in the run's own task for ``limit`` seconds, while the
        link is watched: through its ``recv_ready`` future and a poll when it has one (no
        task), else through a read of the pipe in a task of its own.  A message that arrives
        is held (past HELD_LIMIT, a ProtocolError); an Abort, the link's end or the flood
        withdraws the question by cancelling the run's task (the hook sees the cancel, as it
        saw its own task's before), and that cancel is taken back and the reason raised,
        unless someone else cancelled the run too (Ctrl-C), which stays a cancel."""
        nonlocal asking, inbox
        assert poll is not None
        withdrawn: list[Any] = []  # the Abort message or the error that ends the question
        watching: list[asyncio.Future[Any]] = []  # the link's future, or the read's task

        def withdraw(reason: Any) -> None:
            withdrawn.append(reason)
            task.cancel()

        def look(_: Any = None) -> None:
            watching.clear()
            if withdrawn or asking is not answer:
                return
            try:
                while (message := poll()) is not None:
                    if _is_abort(message):
                        withdraw(message)
                        return
                    hold(message)
            except Exception as exc:  # the link's end, the flood: the run's error
                withdraw(exc)
                return
            changed = ready() if ready is not None else None
            if changed is not None:
                changed.add_done_callback(look)
            else:  # a link that cannot say when: read, in a task of its own
                changed = asyncio.ensure_future(pipe.recv_unabsorbed())
                changed.add_done_callback(took)
            watching.append(changed)

        def took(reading: asyncio.Future[bytes]) -> None:
            watching.clear()
            if withdrawn or asking is not answer or reading.cancelled():
                return
            if (exc := reading.exception()) is not None:
                withdraw(exc)
                return
            message = reading.result()
            if _is_abort(message):
                withdraw(message)
                return
            try:
                hold(message)
            except ProtocolError as err:
                withdraw(err)
                return
            look()

        cancelling = task.cancelling()
        asking = answer
        try:
            look()
            try:
                value = await reads.wait(answer, loop.time() + limit)
            except BaseException as exc:
                if not withdrawn:
                    if isinstance(exc, TimeoutError) and reads.took_too_long():
                        # Our side's person did not answer: the peer is waiting, so tell it.
                        err = PairingTimeout(f"no answer within {limit:.0f} s")
                        machine.abort(err, tell_peer=True)
                        raise err from None
                    raise  # the delegate's own error, or a cancel that is not ours
                if task.uncancel() > cancelling:
                    raise  # cancelled by someone else as well (Ctrl-C): a cancel
            else:
                if not withdrawn:
                    answer_stands(cancelling, limit)
                    return value
                # The hook swallowed the cancel; the question is withdrawn, and a cancel by
                # someone else as well (Ctrl-C) stays a cancel, as when the hook lets it through.
                if task.uncancel() > cancelling:
                    raise asyncio.CancelledError
        finally:
            asking = None
            for changed in watching:
                if isinstance(changed, asyncio.Task):
                    changed.remove_done_callback(took)
                    inbox = changed  # a read under way (or done, not taken) is the run's next
                else:
                    changed.remove_done_callback(look)
                    changed.cancel()
        reason = withdrawn[0]
        if isinstance(reason, bytes):
            take(reason)
            machine.receive(reason, now())  # raises the peer's error
            raise ProtocolError("the peer's Abort did not end the exchange")
        raise reason

    asking: Any = None  # the answer watch() awaits, while it does

    try:
        if not machine.started:
            machine.start(now())
        while True:
            if plain:
                out = machine._out  # what outgoing() gives, without its call
                if out:
                    machine._out = []
            else:
                out = machine.outgoing()
            for message in out:
                if send_at_once is None:
                    await send(message)
                elif rest := send_at_once(message):
                    await pipe.send_rest(message, rest)
            if plain:
                events = machine._events  # as events()
                if events:
                    machine._events = []
            else:
                events = machine.events()
            for event in events:
                if isinstance(event, Question):
                    await ask(event)
                else:
                    hook = getattr(delegate, event.hook, None) if delegate is not None else None
                    if hook is not None:
                        await hook(event)
            if events:
                continue  # an answer may have produced output or more events
            if held and not (machine.done or machine.failed):
                message = held.pop(0)
                take(message)
                machine.receive(message, now())
                continue
            if plain:
                state = machine.state  # done, failed and next_deadline() read at once
                if state == DONE:
                    return
                if state == FAILED:
                    assert machine.error is not None
                    raise machine.error
                deadline = machine._deadline
            else:
                if machine.done:
                    return
                if machine.failed:
                    assert machine.error is not None
                    raise machine.error
                deadline = machine.next_deadline()
            wait = idle if deadline is None else max(0.0, deadline - now())
            try:
                message = None
                if poll is not None and inbox is None and wait > 0:
                    # A message already there is taken without a timer; one not there yet
                    # is waited for as the link's future (see ``ready`` above): nothing is
                    # taken from the link until poll() takes it, so a wait cut short (the
                    # deadline, a cancel) loses nothing.
                    message = poll()
                    if message is None and ready is not None:
                        when = loop.time() + wait
                        while message is None and (changed := ready()) is not None:
                            await reads.wait(changed, when)
                            message = poll()
                    if message is not None and absorb is not None:
                        absorb(message)  # as pipe.recv would have, or take()
                if message is None:
                    message = await next_message(wait)
                    if read_ahead:
                        pipe.absorb(message)
            except TimeoutError as exc:
                if isinstance(exc, PairingError):
                    # The link's own deadline (an admitted link's first flight, a BLE link's
                    # idle limit), not this run's: it ends the run as it says.  Taken for the
                    # run's, it was read again at once, past its deadline, until the
                    # machine's own (a silent guest spun the host for 30 s).
                    raise
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
        await flush_briefly()
        raise
    except asyncio.CancelledError:
        # Ctrl-C (or our caller gave up): the peer hears "cancelled" instead of silence.
        machine.abort(UserCancelled("cancelled"))
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(flush(), 1.0)
        raise
    except Exception as exc:
        # Not pairkit's own kind of error (the file system failed, or a bug): the peer is
        # told, so it does not wait for a deadline, and the caller gets a typed error that
        # names the kind of failure only, never a path (issue 17).
        err = LocalError(f"internal failure ({describe_failure(exc)})", code=ErrorCode.INTERNAL)
        machine.abort(err)
        await flush_briefly()
        raise err from exc
    except BaseException as exc:
        machine.abort(PairingError(f"stopped: {type(exc).__name__}"))
        # Nothing may be awaited now (the process is stopping, or the run's coroutine is
        # being closed): the peer is told if the link takes the Abort at once.
        if send_at_once is not None:
            with contextlib.suppress(Exception):
                for message in machine.outgoing():
                    send_at_once(message)
        raise
    finally:
        reads.close()
        # What was read ahead and not used belongs to the next exchange on this pipe.
        try:
            if inbox is not None and not inbox.done():
                inbox.cancel()  # links' recv is cancel-safe; a partial message stays reassembling
                # Its end, not its outcome (a cancelled read): a cancel of the run's own
                # meanwhile (Ctrl-C) goes through (attack review atk14b).
                await asyncio.wait({inbox})
        finally:
            if (inbox is not None and inbox.done() and not inbox.cancelled()
                    and inbox.exception() is None):
                held.append(inbox.result())
            if read_ahead:
                pipe.unread(held)


#: machine classes -> whether they read as Machine does (see _reads_as_machine)
_PLAIN: dict[type, bool] = {}
_ACCESSORS = ("outgoing", "events", "done", "failed", "next_deadline")


def _reads_as_machine(cls: type) -> bool:
    """Whether ``cls`` keeps Machine's own accessors of its queues, state and deadline, so
    that the driver may read ``_out``, ``_events``, ``state`` and ``_deadline`` as they do."""
    return isinstance(cls, type) and issubclass(cls, Machine) and all(
        getattr(cls, name) is getattr(Machine, name) for name in _ACCESSORS
    )


class _ReadDeadline:
    """The deadline of a run's reads, kept by one timer for the whole run (issue 13).

    ``asyncio.timeout`` around each read makes a context, a timer and a cancelled timer per
    message (about 16 us here, against 14 us for the wait itself).  A run's deadline moves
    later at almost every step (each step gives the peer ``step_timeout`` more), so one timer
    serves every read: it is armed at a read's deadline when none is armed or the armed one
    would fire too late; when it fires early (the deadline moved later since) it re-arms at
    the current one, and when no read is waiting it does nothing.  At the deadline it cancels
    the waiting read exactly as ``asyncio.timeout`` does (the task's ``cancel``, and
    ``TimeoutError`` only if nobody else cancelled the task meanwhile), so a read cut short
    loses nothing: links' reads are cancel-safe and a partial message stays reassembling.
    """

    __slots__ = ("_armed", "_expired", "_handle", "_loop", "_owner", "_task", "_timed_out",
                 "_when")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, owner: asyncio.Task[Any] | None = None
    ) -> None:
        self._loop = loop
        self._owner = owner  # the task the run's reads are awaited in (the run's own)
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when the handle fires
        self._when = 0.0  # the deadline of the read under way
        self._task: asyncio.Task[Any] | None = None  # set while a read waits
        self._expired = False
        self._timed_out = False  # the last wait ended by this deadline

    async def read(self, read: Callable[[], Any], when: float) -> bytes:
        """``await read()``, or TimeoutError once the loop's clock reaches ``when``."""
        return await self.wait(read(), when)  # type: ignore[no-any-return]

    async def wait(self, awaitable: Any, when: float) -> Any:
        """``await awaitable``, or TimeoutError once the loop's clock reaches ``when``."""
        task = self._owner
        if task is None:  # not in a task: asyncio.timeout raises its RuntimeError
            async with asyncio.timeout_at(when):
                return await awaitable
        self._when = when
        if self._handle is None or self._armed > when:
            self._arm(when)
        cancelling = task.cancelling()
        self._expired = False
        self._timed_out = False
        self._task = task
        try:
            result = await awaitable
        except BaseException as exc:
            if isinstance(awaitable, asyncio.Future) and not awaitable.done():
                awaitable.cancel()  # not awaited any more (a coroutine was closed by its await)
            if self._expired:  # as asyncio.timeout's exit: our cancel request is taken back
                self._expired = False
                if task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                    self._timed_out = True
                    raise TimeoutError from None  # our deadline, and no one else's cancel
            raise
        finally:
            self._task = None
        if self._expired:  # the read ended after all, in the same turn as the deadline
            self._expired = False
            self._timed_out = True  # (a read's value stands; a question's answer does not)
            task.uncancel()
        return result

    @property
    def owner(self) -> asyncio.Task[Any] | None:
        """The task the run's reads (and a question's hook) are awaited in."""
        return self._owner

    def took_too_long(self) -> bool:
        """Whether the last wait's TimeoutError was this deadline's (not the awaited's own)."""
        return self._timed_out

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        task = self._task
        if task is None:
            return  # no read waits: the next one arms the timer again
        if self._when > self._armed:
            self._arm(self._when)  # the deadline moved later since the timer was armed
            return
        self._expired = True
        task.cancel()

    def close(self) -> None:
        """The run is over: the timer goes."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def describe_failure(exc: BaseException) -> str:
    """What went wrong, for a person and for the peer: the OS's reason for an OSError (without
    the file name), else the exception's kind."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return type(exc).__name__


def _hook(delegate: Any, event: Question) -> Callable[[Any], Any]:
    hook = getattr(delegate, event.hook, None) if delegate is not None else None
    if hook is None:
        raise ConfigError(
            f"no one to answer {type(event).__name__}: the delegate lacks {event.hook}"
        )
    return hook  # type: ignore[no-any-return]


@types.coroutine
def _resume(coro: Any, pending: Any) -> Any:
    """The rest of ``coro``, whose first step was run and gave ``pending`` (what it waits
    for): awaitable in place or as a task, as ``coro`` itself would have been."""
    while True:
        try:
            yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancel (or another error) thrown into the wait
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                return stop.value


def _is_abort(message: bytes) -> bool:
    try:
        return isinstance(wire.decode(message), wire.Abort)
    except PairingError:
        return False
