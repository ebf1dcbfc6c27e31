"""A :class:`pairkit.clock.Clock` a test moves by hand: a wall clock and a monotonic one, which a
reboot starts anew (:meth:`Clocks.reboot`: a new boot id too).  Used by tests/test_lockouts.py
and tests/attacks/test_attack_pn_pin.py."""

from __future__ import annotations


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
