"""A :class:`pairkit.clock.Clock` a test moves by hand: a wall clock and a monotonic one, which a
reboot starts anew (:meth:`Clocks.reboot`: a new boot id too); and the system's clocks run
ahead (:class:`Ahead`).  Used by tests/test_lockouts.py
and tests/attacks/test_attack_pn_pin.py."""

from __future__ import annotations

import time

from pairkit.clock import SYSTEM_CLOCK


class Clocks:
    """A wall clock and a monotonic one a test moves (a boot starts the monotonic one anew)."""

    def __init__(self, wall: float, monotonic: float) -> None:
        self.now_wall = wall
        self.now_monotonic = monotonic
        #: the boot the monotonic clock counts from (:meth:`reboot` starts another)
        self.boot = "boot-1"

    def wall(self) -> float:
        return self.now_wall

    def monotonic(self) -> float:
        return self.now_monotonic

    def boot_id(self) -> str:
        return self.boot

    def reboot(self, monotonic: float) -> None:
        """The device started again: its monotonic clock counts from ``monotonic``, anew."""
        self.now_monotonic = monotonic
        self.boot = f"boot-{int(self.boot.split('-')[1]) + 1}"

    def advance(self, seconds: float) -> None:
        self.now_wall += seconds
        self.now_monotonic += seconds


class Ahead:
    """The system's clocks ``seconds`` ahead, in the same boot: a host process of the device
    that looks at its lock records that much later."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def wall(self) -> float:
        return time.time() + self.seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.seconds

    def boot_id(self) -> str | None:
        return SYSTEM_CLOCK.boot_id()
