"""Admission control: which new links a host takes on, and which it turns away (issue 17).

A host's scarce resource is its unauthenticated links: each costs a socket (or a BLE connection)
and a task until the guest proves something.  A stranger who opens many and says nothing, or
sends garbage, or a first flight and then nothing, must not keep a real guest out.  So, on every
transport alike (docs/protocol.md §12):

* at most :attr:`AdmissionLimits.max_pending` unauthenticated links at once, and at most
  :attr:`AdmissionLimits.per_address` from one address (a TCP peer's IP address; on BLE, the
  link's peer address or connection handle: whatever the link's ``admission_key`` says);
* a new link must send its first message within :attr:`AdmissionLimits.first_flight` seconds;
* when the pending links are full, the one that has made the least progress gives way: a link
  that has sent nothing at all (from the address that holds the most pending links, the oldest
  first; but not one younger than :attr:`AdmissionLimits.idle_grace` from an address holding
  fewer links than the newcomer's would: it has had no time to speak), else the longest silent
  of an address that holds more than the newcomer's would, else the one silent the longest if
  it has been silent for :attr:`AdmissionLimits.idle_grace` seconds, among the links of the
  newcomer's own address and of addresses holding at least as many as the newcomer's would,
  else the newcomer is refused.  A guest that is exchanging messages is never the one evicted
  for a link that says nothing, and a guest's one link gives way only once every other address
  is down to one too;
* while :attr:`AdmissionLimits.max_sessions` paired guests are being served, new links are
  refused; one peer holds at most :attr:`AdmissionLimits.per_peer` of them (and at most half),
  its newest closing its oldest;
* a link refused or evicted is told so, ``Abort{busy}``, within
  :attr:`AdmissionLimits.refusal_time` seconds, then closed (never held for a graceful close);
  beyond :attr:`AdmissionLimits.max_refusing` refusals in flight, new ones are dropped unanswered.

A link becomes authenticated when :func:`pairkit.session.accept_session` has confirmed its
session (both READY records): it then stops counting as pending and counts as a session, until
its handler ends, or, for a session its handler handed on (:meth:`Admitted.keep`: the library
host's ``accept``), until it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from .driver import MessagePipe
from .pairing import wire
from .pairing.errors import ConfigError, ErrorCode, PairingError, PairingTimeout
from .pairing.framing import FLAG_LAST

__all__ = [
    "BUSY_TEXT", "Admission", "AdmissionLimits", "Admitted", "ClaimBudget", "RateLimitedLog",
]

#: what a guest refused for load reads (it may try again)
BUSY_TEXT = "the host is busy with other guests; try again in a moment"


@dataclasses.dataclass(frozen=True)
class AdmissionLimits:
    """The limits of :class:`Admission` (module docstring; docs/protocol.md §12)."""

    #: unauthenticated links at once, from every address
    max_pending: int = 64
    #: unauthenticated links at once from one address
    per_address: int = 8
    #: seconds a new link has to send its first message
    first_flight: float = 5.0
    #: seconds a link that has sent something must have been silent before it can be evicted
    idle_grace: float = 1.0
    #: paired guests served at once; beyond, new links are refused
    max_sessions: int = 32
    #: seconds to tell a refused link "busy" and close it
    refusal_time: float = 1.0
    #: refusals being delivered at once; beyond, a refused link is dropped unanswered
    max_refusing: int = 64
    #: paired sessions of one peer at once (at most half of ``max_sessions``); a newer one
    #: closes that peer's oldest, so one known guest cannot hold every place (attack review,
    #: finding 8)
    per_peer: int = 4


class Admitted:
    """A link admitted by :class:`Admission`: the link itself, plus progress tracking.

    Everything but reading passes through to the link.  ``recv`` notes each link message
    (progress) and, until the peer's first whole pairkit message is in, waits at most the
    first-flight deadline; the driver's cheaper reads (``recv_nowait``, ``recv_ready``: issue
    13) count each message the same way and leave the first flight to ``recv`` (a read that
    went around it, through the link's own ``recv_ready``, waited the pairing's step deadline
    instead of the first flight's).

    A link's messages are the fragments of pairkit messages (pairing/framing.py; every handler
    behind the admission reads them through a ``MessagePipe``): the first whole message is in
    once a fragment marked LAST has arrived.  Until then the first flight holds, from the
    link's admission, however many fragments came before: a stranger whose one fragment starts
    a message it never finishes is dropped at the first flight, not kept for the pairing's
    step (attack review atk13; docs/security.md, "A pairing host's pending links").  What the
    fragments say is the pipe's to check; a malformed one ends the pipe's read.
    """

    def __init__(self, link: Any, admission: Admission, key: str) -> None:
        self._link = link
        self._admission = admission
        self.key = key
        self.since = admission.clock()
        #: when the last message arrived (the link's opening until the first)
        self.last = self.since
        #: link messages (fragments) received
        self.received = 0
        #: whether the peer's first whole message is in (a fragment marked LAST arrived)
        self.first_in = False
        self.pending = True
        self.task: asyncio.Task[Any] | None = None
        #: the device id its session proved, once authenticated (None: not told)
        self.peer_id: bytes | None = None
        #: whether its session outlives its handler (:meth:`keep`)
        self.kept = False
        self._recv_ready: Callable[[], asyncio.Future[None] | None] | None = getattr(
            link, "recv_ready", None
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)

    def __repr__(self) -> str:
        return repr(self._link)

    @property
    def link(self) -> Any:
        """The admitted link itself."""
        return self._link

    async def send(self, data: bytes) -> None:
        await self._link.send(data)

    async def recv(self) -> bytes:
        if not self.first_in and self.pending:
            left = self.since + self._admission.limits.first_flight - self._admission.clock()
            while True:
                try:
                    async with asyncio.timeout(max(left, 0.0)):
                        message: bytes = await self._link.recv()
                    break
                except TimeoutError:
                    left = self.first_flight_more()
                    if left <= 0:
                        raise self.first_flight_missed() from None
            self._first(message)
        else:
            message = await self._link.recv()
        self._heard()
        return message

    def first_flight_more(self) -> float:
        """Seconds more the peer may take for its first message once the first flight is over
        (0: none): a link may give its peer more time for work of its own (BLE: an LE pairing
        under way, bounded: BleLink.first_flight_extension)."""
        extension = getattr(self._link, "first_flight_extension", None)
        return extension(self._admission.limits.first_flight) if extension is not None else 0.0

    def first_flight_missed(self) -> PairingTimeout:
        """The error of a peer whose first whole message did not come within the first flight."""
        said = "no whole message" if self.spoken else "nothing"
        return PairingTimeout(f"{self._link.peer} sent {said} within "
                              f"{self._admission.limits.first_flight:g} s of connecting")

    def _first(self, message: bytes) -> None:
        """Before the first whole message: whether ``message`` (a fragment) ends one."""
        if _ends_a_message(message):
            self.first_in = True

    def _heard(self) -> None:
        """One message read from the peer (however it was read)."""
        self.received += 1
        self.last = self._admission.clock()

    def recv_nowait(self) -> bytes | None:
        """The link's message already there, counted as :meth:`recv` counts it (a pipe that
        reads without waiting must not make a speaking guest look silent to the admission)."""
        inner = getattr(self._link, "recv_nowait", None)
        message: bytes | None = inner() if inner is not None else None
        if message is not None:
            if not self.first_in:
                self._first(message)
            self._heard()
        return message

    def recv_ready(self) -> asyncio.Future[None] | None:
        """The link's own future, done once :meth:`recv_nowait` may give something (a message,
        or the error that ends the link), for the driver to wait on instead of :meth:`recv`
        (``QueuedLink.recv_ready``); what it then reads is counted by :meth:`recv_nowait`.

        None until the first whole message while the link is pending (a fragment that starts
        one is not enough), so that the driver awaits :meth:`recv` and its first-flight
        deadline; None too when the link cannot say.  An
        evicted link is closed and its task cancelled, which ends this wait as it ends
        :meth:`recv`."""
        if not self.first_in and self.pending:
            return None
        recv_ready = self._recv_ready
        return recv_ready() if recv_ready is not None else None

    async def close(self) -> None:
        await self._link.close()

    @property
    def spoken(self) -> bool:
        """Whether the peer has sent anything yet (read, or waiting to be read)."""
        return self.received > 0 or bool(getattr(self._link, "buffered", 0))

    @property
    def first_message_in(self) -> bool:
        """Whether the peer's first whole message is in, read or waiting to be read (a
        fragment marked LAST arrived): what meets the first flight, as :meth:`recv` holds it.
        A link held unread (the library host's links while no ``accept`` waits) is judged by
        what it buffered; a link that cannot show its buffer, by whether it sent anything."""
        if self.first_in:
            return True
        peek = getattr(self._link, "peek_buffered", None)
        if peek is None:
            return self.spoken
        return any(_ends_a_message(message) for message in peek())

    def authenticated(self, peer: bytes | None = None) -> None:
        """The session on this link is confirmed (with the device ``peer``, if known): it
        counts as a session from now on."""
        self._admission._promote(self, peer)

    def over(self) -> None:
        """The link is closed and its handler has only to report how it ended: its place is
        free now, not once the report is done (a library host's delegate may take its time to
        hear of a failed guest: attack review atk16)."""
        self._admission.done(self)

    def keep(self) -> Callable[[], None]:
        """The session on this link is served past its handler's end (the library host hands
        it to its application): it keeps counting as a session, and still gives way to its
        peer's newer ones, until the returned function is called (the session closed, its
        peer gone)."""
        self.kept = True
        return lambda: self._admission.release(self)


class Admission:
    """Decides, for each new link, whether it is served, and whom it displaces (module doc)."""

    def __init__(
        self, limits: AdmissionLimits | None = None, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or AdmissionLimits()
        self.clock = clock
        self._pending: list[Admitted] = []
        #: pending links per address (kept with _pending: counted at every admission)
        self._held: dict[str, int] = {}
        self._sessions: set[Admitted] = set()
        self._refusing: set[asyncio.Task[None]] = set()
        #: links refused or evicted so far (for tests and reports)
        self.refused = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def admit(self, link: Any) -> Admitted | None:
        """The link to serve, or None when it was refused (it is being told "busy")."""
        key = str(getattr(link, "admission_key", None) or link.peer)
        lim = self.limits
        if len(self._sessions) >= lim.max_sessions:
            self.refuse(link)
            return None
        if self._held.get(key, 0) >= lim.per_address:
            self.refuse(link)
            return None
        if len(self._pending) >= lim.max_pending:
            victim = self._victim(key)
            if victim is None:
                self.refuse(link)
                return None
            self._evict(victim)
        admitted = Admitted(link, self, key)
        self._pending.append(admitted)
        self._held[key] = self._held.get(key, 0) + 1
        return admitted

    def _unpend(self, admitted: Admitted) -> None:
        """Take ``admitted`` off the pending links (if it is there)."""
        try:
            self._pending.remove(admitted)
        except ValueError:
            return
        left = self._held[admitted.key] - 1
        if left:
            self._held[admitted.key] = left
        else:
            del self._held[admitted.key]

    def started(self, admitted: Admitted, task: asyncio.Task[Any]) -> None:
        """``task`` serves ``admitted`` (cancelled if the link is evicted)."""
        admitted.task = task

    def done(self, admitted: Admitted) -> None:
        """The link's handler ended (a session it kept counts on: :meth:`Admitted.keep`)."""
        admitted.pending = False
        self._unpend(admitted)
        if not admitted.kept:
            self._sessions.discard(admitted)

    def release(self, admitted: Admitted) -> None:
        """A kept session ended (:meth:`Admitted.keep`): its place is free."""
        admitted.kept = False
        self._sessions.discard(admitted)

    def _promote(self, admitted: Admitted, peer: bytes | None = None) -> None:
        if admitted.pending:
            admitted.pending = False
            self._unpend(admitted)
            admitted.peer_id = peer
            self._sessions.add(admitted)
            if peer is not None:
                self._one_peer_at_most(admitted, peer)

    def _one_peer_at_most(self, newest: Admitted, peer: bytes) -> None:
        """Close ``peer``'s oldest sessions beyond its share (:attr:`AdmissionLimits.per_peer`,
        at most half of the sessions): a known guest idling in many sessions gives way to
        itself, never keeps the others out."""
        cap = max(1, min(self.limits.per_peer, self.limits.max_sessions // 2))
        mine = sorted((a for a in self._sessions if a.peer_id == peer and a is not newest),
                      key=lambda a: a.since)
        while len(mine) + 1 > cap:
            oldest = mine.pop(0)
            self._sessions.discard(oldest)
            if oldest.task is not None:
                oldest.task.cancel()
            task = asyncio.ensure_future(_drop(oldest.link))
            self._refusing.add(task)
            task.add_done_callback(self._refusing.discard)

    def _victim(self, newcomer: str) -> Admitted | None:
        held: dict[str, int] = {}
        for a in self._pending:
            held[a.key] = held.get(a.key, 0) + 1
        floor = held.get(newcomer, 0) + 1
        now = self.clock()
        # A link that has not spoken yet gives way first, unless it is younger than the idle
        # grace and its address holds fewer links than the newcomer's would: a guest that has
        # just connected has had no time to speak, and strangers that spoke once must not push
        # it out (the soak test's guest told busy through a flood of join requests).
        silent = [a for a in self._pending if not a.spoken
                  and (held[a.key] >= floor or now - a.since >= self.limits.idle_grace)]
        if silent:
            # The address holding the most pending links gives way first, so a flood from
            # many addresses evicts its own links before it reaches a guest's one link.
            return min(silent, key=lambda a: (-held[a.key], a.since))
        # All have spoken (strangers that ran their cloud step, then wait): an address that
        # holds more links than the newcomer's would after it gives way, its longest silent
        # first, so that links reopened as fast as they are closed cannot keep a guest's one
        # link out (issue 17, finding 1).
        busiest = max(held, key=lambda k: held[k], default=None)
        if busiest is not None and held[busiest] > held.get(newcomer, 0) + 1:
            return min((a for a in self._pending if a.key == busiest), key=lambda a: a.last)
        # Else the longest silent gives way, but only from the newcomer's own address or one
        # holding at least as many as the newcomer's would: a stranger whose newcomer comes from
        # an address as busy as the busiest cannot push out a guest's one link (finding 1 of the
        # attack review: 4 + 3 links from two addresses evicted a guest typing its PIN).
        candidates = [a for a in self._pending if a.key == newcomer or held[a.key] >= floor]
        stalest = min(candidates, key=lambda a: a.last, default=None)
        if stalest is not None and now - stalest.last >= self.limits.idle_grace:
            return stalest
        return None

    def _evict(self, victim: Admitted) -> None:
        self._unpend(victim)
        victim.pending = False
        if victim.task is not None:
            victim.task.cancel()
        self.refuse(victim.link)

    def refuse(self, link: Any) -> None:
        """Tell ``link`` "busy" and close it, in the background and within the refusal time."""
        self.refused += 1
        if len(self._refusing) >= self.limits.max_refusing:
            task = asyncio.ensure_future(_drop(link))
        else:
            task = asyncio.ensure_future(_tell_busy(link, self.limits.refusal_time))
        self._refusing.add(task)
        task.add_done_callback(self._refusing.discard)

    async def close(self) -> None:
        """Finish the refusals under way (each is bounded by the refusal time)."""
        if self._refusing:
            await asyncio.gather(*self._refusing, return_exceptions=True)


async def _tell_busy(link: Any, within: float) -> None:
    """``Abort{busy}`` as the link's only message, then a close; all within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            with contextlib.suppress(PairingError, OSError):
                await MessagePipe(link).send(
                    wire.Abort(code=ErrorCode.BUSY, reason=BUSY_TEXT).encode()
                )
            await _drop(link)
    except TimeoutError:
        pass
    finally:
        # A close cut short by the deadline still releases the link (TcpLink aborts it).
        with contextlib.suppress(BaseException):
            if not link.closed:
                await asyncio.wait_for(_drop(link), 0.1)


async def _drop(link: Any) -> None:
    with contextlib.suppress(PairingError, OSError):
        await link.close()


class RateLimitedLog:
    """At most one line per ``interval`` seconds (the rest counted and summed up in the next
    line): for conditions that can repeat thousands of times a second, such as running out of
    file descriptors under a flood of connections."""

    def __init__(
        self, write: Callable[[str], None], *, interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._skipped = 0

    def __call__(self, line: str) -> None:
        now = self._clock()
        if now < self._next:
            self._skipped += 1
            return
        self._next = now + self._interval
        if self._skipped:
            line = f"{line} ({self._skipped} similar messages not shown)"
            self._skipped = 0
        self._write(line)


def _ends_a_message(fragment: bytes) -> bool:
    """Whether ``fragment`` (a link message) is the last of a pairkit message (pairing/framing)."""
    return bool(fragment) and bool(fragment[0] & FLAG_LAST)


class _Bucket:
    """A token bucket (``burst`` at once, ``rate`` more each second), read at ``now``."""

    __slots__ = ("at", "tokens")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.at = now

    def level(self, burst: int, rate: float, now: float) -> float:
        self.tokens = min(float(burst), self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        return self.tokens


#: per-address (per-device) buckets a ClaimBudget keeps at most
_ADDRESSES_KEPT = 4096


class ClaimBudget:
    """How often a host asks its key server to prove a claim no one was asked about (helper
    ``ttpflood``, session 15; docs/security.md, "The key server").

    A join request that claims a known device's id and pairs by ``ttp`` passes the cloud step
    with no owner question, on a private host too, and makes the host open TLS to its key
    server and state an intent; a stranger can repeat the claim as fast as her links go round
    (a claimed guest that is not enrolled fails at once, an enrolled one as soon as she
    leaves).  The key server counts the host's connections against the host's address (its
    ``Limits.rate`` and ``burst``: 50 a second, 100 at once), so unbounded, her flood got the
    host's other ``ttp`` pairings, and every device behind its address, refused there.

    Two token buckets: one per guest address (the link's admission key: :attr:`per_address`
    asks at once, :attr:`per_address_rate` more each second), so that one address cannot keep
    a returning device out, and one in all (:attr:`burst`, :attr:`rate`), well under the key
    server's allowance.  An ask whose pairing proved the claim is given back to both, so
    returning devices do not use them up, but only as often as a device comes back: each
    device's proved asks are given back at most :attr:`per_address` at once and
    :attr:`per_address_rate` more each second (a bucket per device id), so that a known device
    coming back again and again (a guest let in for an hour, a device taken over) spends the
    budget as a stranger does (attack review atk16).  Pairings the owner said yes to are not
    counted (the question bounds them).
    """

    def __init__(
        self, *, burst: int = 30, rate: float = 10.0, per_address: int = 4,
        per_address_rate: float = 0.1, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(burst, per_address) < 1 or min(rate, per_address_rate) <= 0:
            raise ConfigError("a claim budget needs bursts of 1 or more and positive rates")
        self.burst, self.rate = burst, rate
        self.per_address, self.per_address_rate = per_address, per_address_rate
        self._clock = clock
        self._all = _Bucket(burst, clock())
        self._by_address: dict[str, _Bucket] = {}
        #: per device id: the proved asks that may still be given back
        self._by_device: dict[bytes, _Bucket] = {}
        #: asks refused so far (for people and tests)
        self.refused = 0

    def _mine(self, address: str, now: float) -> _Bucket:
        self._by_address, mine = self._bucket(self._by_address, address, now)
        return mine

    def _bucket(self, kept: dict[Any, _Bucket], key: Any, now: float
                ) -> tuple[dict[Any, _Bucket], _Bucket]:
        """``key``'s bucket in ``kept`` (a new full one if none), and the map it is now in."""
        mine = kept.get(key)
        if mine is None:
            if len(kept) >= _ADDRESSES_KEPT:
                # Forget the addresses whose bucket is full again (idle long enough); if fresh
                # ones still fill half the map (a stranger with a new address per link), the
                # oldest seen too, so that the map is rebuilt once per thousands of addresses,
                # not per link.  A forgotten address starts full: the bucket in all bounds it.
                full = self.per_address / self.per_address_rate
                fresh = [(a, b) for a, b in kept.items() if now - b.at < full]
                kept = dict(fresh[-(_ADDRESSES_KEPT // 2):])
            mine = kept[key] = _Bucket(self.per_address, now)
        return kept, mine

    def take(self, address: str) -> bool:
        """Whether the key server may be asked for one more claim from ``address`` now (one is
        spent from both buckets if so)."""
        now = self._clock()
        mine = self._mine(address, now)
        if (mine.level(self.per_address, self.per_address_rate, now) < 1
                or self._all.level(self.burst, self.rate, now) < 1):
            self.refused += 1
            return False
        mine.tokens -= 1
        self._all.tokens -= 1
        return True

    def give_back(self, address: str, device: bytes) -> bool:
        """The claim from ``address`` was proved by ``device``: its ask is not counted, unless
        that device has had as many given back as a device coming back gets (then nothing is
        given back).  Whether it was given back."""
        now = self._clock()
        self._by_device, theirs = self._bucket(self._by_device, device, now)
        if theirs.level(self.per_address, self.per_address_rate, now) < 1:
            return False
        theirs.tokens -= 1
        mine = self._mine(address, now)
        mine.level(self.per_address, self.per_address_rate, now)
        mine.tokens = min(float(self.per_address), mine.tokens + 1)
        self._all.level(self.burst, self.rate, now)
        self._all.tokens = min(float(self.burst), self._all.tokens + 1)
        return True
