"""A :class:`pairkit.clock.Clock` a test moves by hand: a wall clock and a monotonic one, which a
reboot starts anew (set :attr:`Clocks.now_monotonic` alone).  Used by tests/test_lockouts.py
and tests/attacks/test_attack_pn_pin.py."""

from __future__ import annotations


class Clocks:
    """A wall clock and a monotonic one a test moves (a boot starts the monotonic one anew)."""

    def __init__(self, wall: float, monotonic: float) -> None:
        self.now_wall = wall
        self.now_monotonic = monotonic

    def wall(self) -> float:
        return self.now_wall

    def monotonic(self) -> float:
        return self.now_monotonic

    def advance(self, seconds: float) -> None:
        self.now_wall += seconds
        self.now_monotonic += seconds
