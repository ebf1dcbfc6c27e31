"""The clock the runtime reads, injected (issue 12): tests and embedding applications pass their
own, nothing in the runtime calls ``time.time()`` behind their back.

Two readings: :meth:`Clock.monotonic` for deadlines (the machines' ``now``, the driver's waits;
the same clock as asyncio's loop by default) and :meth:`Clock.wall` for what is compared with
other devices or kept on disk (grant expiry, QR codes' validity, hello epochs).
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the runtime asks the time of."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (expiry times kept or sent)."""
        ...


class SystemClock:
    """The machine's clocks: ``time.monotonic`` (asyncio's own) and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


#: the clock used when none is given
SYSTEM_CLOCK: Clock = SystemClock()
