"""The base of pairkit's sans-I/O protocol machines (STYLE.md rules 1 to 4).

A machine takes whole messages and answers in, and gives messages, events and a deadline out.
It reads no clock (``now`` is an argument), draws no randomness (an ``rng`` is passed to its
constructor) and opens no socket.  Every machine is built without a clock and begins with
:meth:`Machine.start` ``(now)``.  One table per machine, ``(state, message class) ->
step(handler, next states...)``, says which message is legal in which state and which states the
handler may move to; a message anywhere else is a :class:`ProtocolError`, a move to a state the
table does not name a :class:`~pairing.errors.TransitionError` (a bug of ours).  Any error
poisons the machine: it moves to ``FAILED``, queues an :class:`~pairing.wire.Abort` for the peer
when the error is ours, and every later call raises the same error.

Events that need a person's answer (confirm a code, type a PIN, allow a join) are
:class:`Question` subclasses; the driver asks the delegate and feeds the answer back with
:meth:`Machine.answer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, NamedTuple

from . import wire
from .errors import (
    OTHER_SIDE_CANCELLED,
    ErrorCode,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RemoteError,
    TransitionError,
    local_error_for,
)

FAILED = "failed"
DONE = "done"


@dataclasses.dataclass(frozen=True)
class Event:
    """Something a machine tells its user (show a PIN, progress...)."""

    hook: ClassVar[str] = "on_event"


@dataclasses.dataclass(frozen=True)
class Question(Event):
    """An event that needs an answer from the user's delegate before the machine goes on."""


@dataclasses.dataclass(frozen=True)
class WaitTurn(Question):
    """The machine waits for its turn at something that machines of one host share (compare's
    places for codes out at once, :class:`~pairing.methods.common.CodeTurns`), not for a
    person: the driver answers it itself, never a delegate.

    The driver calls ``subscribe`` with a callback, which is called once when the machine
    should look again; it then answers ``True``, or ``False`` when ``deadline`` (on the
    machine's clock) comes first, and calls ``subscribe(None)`` when it stops waiting.
    """

    hook: ClassVar[str] = "wait_turn"
    subscribe: Callable[[Callable[[], None] | None], None] = dataclasses.field(repr=False)
    deadline: float


Handler = Callable[[Any, float], None]


class Step(NamedTuple):
    """One row of a transition table: the handler's name and the states it may move to."""

    handler: str
    next: frozenset[str]


def step(handler: str, *next_states: str) -> Step:
    """A table row: ``handler`` runs, and afterwards the machine must be in one of
    ``next_states`` (or ``FAILED``, which any error reaches)."""
    return Step(handler, frozenset(next_states))


class Machine:
    """Base class: owns the state, the output queues, the deadline and the poison rule."""

    #: (state, message class) -> the handler and the states it may move to
    TABLE: ClassVar[dict[tuple[str, type], Step]] = {}
    #: state -> the answer method for the question asked in that state, and its next states
    ANSWERS: ClassVar[dict[str, Step]] = {}
    #: the states :meth:`start` may move to (from the initial state)
    STARTS: ClassVar[frozenset[str]] = frozenset()
    #: several peers, each on a port (CPNS's gateway): :meth:`receive` takes the port, the
    #: handlers get it first, :meth:`outgoing` gives ``(port, bytes)`` pairs, and a peer that
    #: fails may be dropped alone (:meth:`_peer_failed`)
    PORTED: ClassVar[bool] = False

    def __init__(self, *, initial_state: str) -> None:
        self.state = initial_state
        self._started = False
        self._out: list[Any] = []  # bytes, or (port, bytes) when PORTED
        self._events: list[Event] = []
        self._deadline: float | None = None
        self._deadline_text = "the peer did not answer in time"
        self._error: PairingError | None = None

    # -- what the driver reads ------------------------------------------------------------

    def outgoing(self) -> list[Any]:
        """Messages to send to the peer, in order (the queue is emptied); ``(port, bytes)``
        pairs for a machine with several peers."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """Events for the user, in order (the queue is emptied)."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """The time by which the machine must hear from the peer, or ``None``."""
        return None if self.state in (DONE, FAILED) else self._deadline

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    @property
    def error(self) -> PairingError | None:
        return self._error

    @property
    def started(self) -> bool:
        return self._started

    # -- what the driver feeds ------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: send the first message (a side that speaks first) or start waiting for the
        peer (a side that answers).  Called once, before anything else is fed."""
        if self._error is not None:
            raise self._error
        if self._started:
            raise ProtocolError("start() was already called")
        self._started = True
        try:
            self._on_start(now)
            self._check_transition(self.STARTS, "start")
        except PairingError as exc:
            self._fail(exc)
            raise

    def receive(self, data: bytes, now: float, port: Hashable | None = None) -> None:
        """Feed one whole message from the peer (from ``port``, for a machine with several
        peers: :attr:`PORTED`)."""
        if self.PORTED and not self._admits(port):
            return
        if self._error is not None or not self._started or self.state == DONE:
            self._check_usable()  # raises (checked inline first: issue 13, one call less)
        try:
            msg = wire.decode(data)
            if isinstance(msg, wire.Abort):
                raise _remote(msg)
            row = self.table().get((self.state, type(msg)))
            if row is None or not self._from_the_right_peer(port, msg):
                who = "the peer" if port is None else self._peer_name(port)
                raise ProtocolError(
                    f"{who} sent {type(msg).__name__} when it was not expected "
                    f"(state {self.state})"
                )
            if self.PORTED:
                getattr(self, row.handler)(port, msg, now)
            else:
                getattr(self, row.handler)(msg, now)
            if self.state not in row.next:  # (FAILED too: _check_transition says which)
                self._check_transition(row.next, row.handler)
        except PairingError as exc:
            self._peer_failed(exc, port, now)

    def answer(self, question: Question, value: Any, now: float) -> None:
        """Give the user's answer to ``question``."""
        self._check_usable()
        try:
            row = self.ANSWERS.get(self.state)
            if row is None:  # a caller's bug; it poisons the machine like any other error
                raise ProtocolError(f"no question is pending (state {self.state})")
            getattr(self, row.handler)(question, value, now)
            self._check_transition(row.next, row.handler)
        except PairingError as exc:
            self._fail(exc)
            raise

    def on_timeout(self, now: float) -> None:
        """Tell the machine that ``now`` has come; it fails if its deadline passed."""
        self._check_usable()
        if self._deadline is not None and now >= self._deadline:
            try:
                self._on_deadline(now)
            except PairingError as exc:
                self._fail(exc)
                raise

    def abort(self, exc: PairingError, *, tell_peer: bool = False) -> None:
        """Stop from outside (the link broke, the user cancelled): the machine is poisoned.

        ``tell_peer`` queues an ``Abort`` even for a timeout (one that is ours, such as a person
        who did not answer, rather than the peer's silence).
        """
        if self.state not in (DONE, FAILED):
            self._fail(exc)
            if tell_peer and isinstance(exc, PairingTimeout):
                self._out.append(wire.Abort(code=_code(exc), reason=_short(str(exc))).encode())

    # -- for subclasses -------------------------------------------------------------------

    def table(self) -> dict[tuple[str, type], Step]:
        """The transition table in force (a machine may extend its class's per instance)."""
        return self.TABLE

    def _on_start(self, now: float) -> None:
        """What :meth:`start` does; the default only arms the first deadline, if any."""

    def _on_deadline(self, now: float) -> None:
        """The deadline passed: the default fails with its text (a machine with phases may
        move on instead)."""
        raise PairingTimeout(self._deadline_text)

    # -- several peers (PORTED) ---------------------------------------------------------------

    def _admits(self, port: Hashable | None) -> bool:
        """Whether a message from ``port`` is still read (a dropped peer's are not)."""
        return True

    def _from_the_right_peer(self, port: Hashable | None, msg: wire.Message) -> bool:
        """Whether ``msg`` may come from ``port`` (a machine with several peers checks who)."""
        return True

    def _peer_name(self, port: Hashable) -> str:
        return f"peer {port!r}"

    def _peer_failed(self, exc: PairingError, port: Hashable | None, now: float) -> None:
        """A message failed: by default the whole machine fails (STYLE.md rule 4); a machine
        with several peers may drop the one peer instead."""
        self._fail(exc)
        raise exc

    def _check_transition(self, allowed: frozenset[str], where: str) -> None:
        if self.state != FAILED and self.state not in allowed:
            raise TransitionError(
                f"{type(self).__name__}.{where} moved to state {self.state!r}, which its "
                f"transition table does not allow ({', '.join(sorted(allowed)) or 'none'})"
            )

    def _send(self, msg: wire.Message) -> None:
        self._out.append(msg.encode())

    def _send_to(self, port: Hashable, msg: wire.Message | bytes) -> None:
        """A message for one of several peers (:attr:`PORTED`): ``outgoing`` gives
        ``(port, bytes)`` pairs."""
        self._out.append((port, msg if isinstance(msg, bytes) else msg.encode()))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _expect_by(self, deadline: float | None, text: str | None = None) -> None:
        self._deadline = deadline
        if text:
            self._deadline_text = text

    def _finish(self) -> None:
        self.state = DONE
        self._deadline = None

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._started:
            raise ProtocolError("the machine was not started: call start(now) first")
        if self.state == DONE:
            raise ProtocolError("the exchange is already complete")

    def _fail(self, exc: PairingError) -> None:
        if self._error is not None:
            return
        self._error = exc
        self.state = FAILED
        self._deadline = None
        self._tell_failure(exc)

    def _tell_failure(self, exc: PairingError) -> None:
        """Queue the Abort that tells the peer why we stop, so it stops at once instead of
        waiting for its deadline (also for errors outside LocalError that we raised, e.g.
        NotFoundError); not for the peer's own error or its silence."""
        if not isinstance(exc, RemoteError | PairingTimeout):
            self._out.append(abort_for(exc).encode())


def abort_for(exc: PairingError) -> wire.Abort:
    """The ``Abort`` that tells the peer why we stop: ``exc``'s code and its text, or the text
    meant for peers when it has one (:attr:`PairingError.peer_text`)."""
    reason = exc.peer_text if exc.peer_text is not None else str(exc)
    return wire.Abort(code=_code(exc), reason=_short(reason))


def _code(exc: PairingError) -> ErrorCode:
    try:
        return ErrorCode(exc.code)
    except ValueError:
        return ErrorCode.UNKNOWN


def _short(text: str) -> str:
    """Fit a reason into an Abort: 200 characters and, as it may echo text from the peer that is
    not ASCII, few enough UTF-8 bytes to keep the Abort under its 512-byte limit."""
    if len(text) > 200:
        text = text[:197] + "..."
    raw = text.encode("utf-8")
    if len(raw) > 400:
        text = raw[:397].decode("utf-8", "ignore") + "..."
    return text


def _remote(msg: wire.Abort) -> RemoteError:
    if msg.code == ErrorCode.CANCELLED:
        # The peer's person pressed Ctrl-C: say so in our words, not the peer's.
        err = RemoteError(msg.reason, code=msg.code)
        err.args = (OTHER_SIDE_CANCELLED,)
    else:
        err = RemoteError(msg.reason, code=msg.code)
    # Keep the local class visible too, so callers can catch e.g. AuthenticationError
    # whichever side detected it.
    err.local = local_error_for(msg.code, msg.reason)  # type: ignore[attr-defined]
    return err
