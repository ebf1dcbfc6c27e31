"""Two pairing machines joined in memory, h11 ConnectionPair style (STYLE.md rule 8).

``shuttle`` moves messages between the machines until both are done or one failed, answering
questions from a script.  Its loop is bounded: a protocol that ping-pongs forever fails the test.
A ``tamper`` callable sees every message (direction, bytes) and may rewrite or drop it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pairing.errors import PairingError
from pairing.machine import Machine

MAX_ROUNDS = 20

Tamper = Callable[[str, bytes], bytes | None]


class PairResult:
    def __init__(self) -> None:
        self.guest_error: PairingError | None = None
        self.host_error: PairingError | None = None
        self.flights: list[tuple[str, int]] = []
        self.questions: list[tuple[str, Any]] = []

    @property
    def bytes_total(self) -> int:
        return sum(n for _, n in self.flights)


def shuttle(
    guest: Machine,
    host: Machine,
    *,
    now: float = 0.0,
    answers: dict[str, Any] | None = None,
    tamper: Tamper | None = None,
) -> PairResult:
    answers = answers or {}
    result = PairResult()
    sides = {"guest": guest, "host": host}
    other = {"guest": "host", "host": "guest"}
    for _ in range(MAX_ROUNDS):
        moved = False
        for name, machine in sides.items():
            for event in machine.events():
                result.questions.append((name, event))
                if hasattr(event, "code") and name in answers:
                    try:
                        machine.answer(event, answers[name], now)
                    except PairingError as exc:
                        _record(result, name, exc)
                    moved = True
            out = machine.outgoing()
            for data in out:
                moved = True
                direction = "g2h" if name == "guest" else "h2g"
                if tamper is not None:
                    data = tamper(direction, data)
                    if data is None:
                        continue
                result.flights.append((direction, len(data)))
                target = sides[other[name]]
                if target.failed or target.done:
                    continue
                try:
                    target.receive(data, now)
                except PairingError as exc:
                    _record(result, other[name], exc)
        if not moved:
            return result
    raise AssertionError("too many round trips!")


def _record(result: PairResult, name: str, exc: PairingError) -> None:
    if name == "guest" and result.guest_error is None:
        result.guest_error = exc
    if name == "host" and result.host_error is None:
        result.host_error = exc
