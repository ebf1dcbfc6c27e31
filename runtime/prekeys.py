"""Prekeys made ahead of need, in idle time: the process's pool (issue 13).

Every full pairing hands the peer ``PairingConfig.prekeys`` digests of fresh X25519 keys for
later resumes (docs/protocol.md §8), and a resume hands out one replacement.  Making them is a
fixed-base scalar multiplication and a SHA-256 each (16 per full pairing, both sides: about
1 ms of CPU), and none of it depends on the exchange, so it need not be on its critical path.
The pairing machines (pure, in pairing/) take prekeys from a *source*
(:data:`pairkit.pairing.methods.PrekeySource`); this module is that source for the runtime:

* :meth:`PrekeyPool.take` hands out up to ``n`` ready prekeys, each to one machine only (a
  prekey is removed from the pool when handed out, whether or not the pairing then succeeds,
  so no key is ever offered to two peers), and asks for a refill;
* the refill runs as a background task on the event loop, one key per turn of the loop, so it
  fills the time the pairing spends waiting for the radio or the peer, and it stops at the
  pool's capacity;
* the capacity follows demand, within a bound: every prekey asked for and not ready (a
  burst of pairings, a host with many guests at once) raises it by one, up to ``limit``
  (:data:`MAX_CAPACITY` for the process's pool: 64 full pairings' worth, about 100 KB), so
  that the next burst finds more keys made in the quiet time before it.  It never shrinks
  below what was asked for: a host that was busy once is likely to be busy again.

A machine whose pool is empty (the first pairing of a process that was never idle) makes the
missing prekeys itself, as before: the pool changes when the work is done, never what is sent.
Keys come from ``os.urandom``; nothing is stored, and the pool dies with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable

from .pairing.crypto import Rng, digest, x25519_keypair
from .pairing.methods import Prekey

#: two full pairings' worth, both prekey counts at their maximum (PairingConfig.prekeys <= 16)
DEFAULT_CAPACITY = 32
#: the most the process's pool grows to under demand: 64 full pairings' worth
MAX_CAPACITY = 1024


class PrekeyPool:
    """Fresh prekeys made in idle time (see the module docstring)."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, rng: Rng = os.urandom, *, background: bool = True,
        limit: int | None = None,
    ) -> None:
        """``background``: refill on the event loop after each :meth:`take` (False: only
        :meth:`fill` and :meth:`make_one` make keys, as a bench that fills between runs
        wants).  ``limit``: what the capacity may grow to under demand (default: the
        capacity, which then stays as given)."""
        if capacity < 1:
            raise ValueError("a prekey pool holds at least one key")
        if limit is not None and limit < capacity:
            raise ValueError("a prekey pool's limit is at least its capacity")
        self.capacity = capacity
        self.limit = capacity if limit is None else limit
        self._rng = rng
        self._background = background
        self._ready: deque[Prekey] = deque()
        self._task: asyncio.Task[None] | None = None
        #: prekeys made so far (a bench charges the ones made before its timing started)
        self.made = 0

    def __len__(self) -> int:
        return len(self._ready)

    def __repr__(self) -> str:  # no key material, only the count
        return f"PrekeyPool({len(self._ready)}/{self.capacity} ready)"

    def take(self, n: int) -> tuple[Prekey, ...]:
        """Up to ``n`` ready prekeys, removed from the pool (a :data:`PrekeySource`)."""
        taken: list[Prekey] = []
        append, popleft = taken.append, self._ready.popleft
        try:  # popleft is atomic: a key goes to one taker, even across threads
            for _ in range(n):
                append(popleft())
        except IndexError:
            pass
        got = tuple(taken)
        if len(got) < n and self.capacity < self.limit:  # demand outran the pool: grow
            self.capacity = min(self.limit, self.capacity + n - len(got))
        if self._background:
            self.refill_soon()
        return got

    def make_one(self) -> None:
        """Make one prekey now (the refill's unit of work; tests and benches call it too)."""
        private, public = x25519_keypair(self._rng)
        self._ready.append(Prekey(digest(public), private))
        self.made += 1

    def fill(self) -> None:
        """Fill the pool at once (for a caller with nothing better to do, e.g. a bench)."""
        while len(self._ready) < self.capacity:
            self.make_one()

    def refill_soon(self) -> None:
        """Start the background refill if the pool is short and an event loop is running."""
        if len(self._ready) >= self.capacity or (
            self._task is not None and not self._task.done()
        ):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): machines make their own
        self._task = loop.create_task(self._refill())

    async def _refill(self) -> None:
        # One key per turn of the loop: a turn costs ~50 us, so I/O is never held up long.
        while len(self._ready) < self.capacity:
            await asyncio.sleep(0)
            self.make_one()

    async def aclose(self) -> None:
        """Stop the refill (the keys already made are dropped)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready.clear()


_POOL = PrekeyPool(DEFAULT_CAPACITY, limit=MAX_CAPACITY)


def source_for(rng: Rng) -> Callable[[int], tuple[Prekey, ...]] | None:
    """The process's pool as a prekey source, for machines drawing from ``os.urandom``.

    A caller that passes its own ``rng`` (a test's fixed one) gets None: its machines make
    their prekeys from that ``rng``, as the frozen transcripts expect.
    """
    return _POOL.take if rng is os.urandom else None


def pool() -> PrekeyPool:
    """The process's prekey pool."""
    return _POOL
