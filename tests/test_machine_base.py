"""The machine base (pairing/machine.py): every machine begins with ``start(now)``, and the
transition table's next states are checked after every handler."""

from __future__ import annotations

from typing import ClassVar

import pytest

from pairkit.pairing import wire
from pairkit.pairing.errors import ProtocolError, TransitionError
from pairkit.pairing.machine import DONE, Machine, Step, step
from pairkit.pairing.messages import Reveal


class Toy(Machine):
    """Waits for one Reveal; ``jump_to`` says where the handler goes (a bug when unlisted)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        ("wait", Reveal): step("_on_reveal", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({"wait"})

    def __init__(self, jump_to: str = DONE) -> None:
        super().__init__(initial_state="start")
        self.jump_to = jump_to

    def _on_start(self, now: float) -> None:
        self.state = "wait"
        self._expect_by(now + 5)

    def _on_reveal(self, msg: Reveal, now: float) -> None:
        if self.jump_to == DONE:
            self._finish()
        else:
            self.state = self.jump_to


REVEAL = Reveal(b"\x01" * 16).encode()


def test_a_machine_takes_nothing_before_start() -> None:
    toy = Toy()
    with pytest.raises(ProtocolError, match="start"):
        toy.receive(REVEAL, 0.0)
    toy.start(1.0)
    assert toy.started and toy.next_deadline() == 6.0
    toy.receive(REVEAL, 1.0)
    assert toy.done


def test_start_twice_is_refused() -> None:
    toy = Toy()
    toy.start(0.0)
    with pytest.raises(ProtocolError, match="already"):
        toy.start(0.0)


def test_a_transition_the_table_does_not_name_poisons_the_machine() -> None:
    toy = Toy(jump_to="somewhere-else")
    toy.start(0.0)
    with pytest.raises(TransitionError) as info:
        toy.receive(REVEAL, 0.0)
    assert isinstance(info.value, AssertionError)  # a bug of ours, typed as such
    assert toy.failed and toy.error is info.value
    [abort] = toy.outgoing()
    assert isinstance(wire.decode(abort), wire.Abort)  # the peer is told we stop
    with pytest.raises(TransitionError):
        toy.receive(REVEAL, 0.0)
