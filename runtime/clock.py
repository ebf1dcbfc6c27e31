"""The clock the runtime reads, injected (issue 12): tests and embedding applications pass their
own, nothing in the runtime calls ``time.time()`` behind their back.

Two readings: :meth:`Clock.monotonic` for deadlines (the machines' ``now``, the driver's waits;
the same clock as asyncio's loop by default) and :meth:`Clock.wall` for what is compared with
other devices or kept on disk (grant expiry, QR codes' validity, hello epochs).  A clock may
also say which boot its monotonic readings count from (``boot_id()``, as :class:`SystemClock`
does on Linux): the host's lock records then compare monotonic readings within one boot
(:mod:`pairkit.lockouts`); a clock without it is read by its wall clock only.
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

    _boot: str | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def boot_id(self) -> str | None:
        """Which boot the monotonic clock counts from (Linux's ``boot_id``), or ``None`` where
        the system does not say: readings of two processes compare only within one boot.  A
        clock without this method is taken as one that does not say."""
        if self._boot is None:
            try:
                with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                    self._boot = f.read(64).strip() or ""
            except OSError:
                self._boot = ""
        return self._boot or None

    def __repr__(self) -> str:
        return "SystemClock()"


#: the clock used when none is given
SYSTEM_CLOCK: Clock = SystemClock()
