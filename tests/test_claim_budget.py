"""The host's budget of key server asks for ``ttp`` claims no one was asked about
(runtime/admission.py ``ClaimBudget``; docs/security.md, "The key server")."""

from __future__ import annotations

import pytest

from pairkit.admission import ClaimBudget
from pairkit.pairing.errors import ConfigError


class Hand:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_and_a_proved_claim_given_back() -> None:
    clock = Hand()
    budget = ClaimBudget(burst=3, rate=0.5, clock=clock)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert budget.refused == 1
    budget.give_back()  # that claim was proved
    assert budget.take() and not budget.take()
    clock.now += 2.0  # one more at 0.5 a second
    assert budget.take() and not budget.take()
    clock.now += 3600.0  # never more than the burst
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    for _ in range(10):
        budget.give_back()
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("burst, rate", [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_a_budget_that_allows_nothing_is_refused(burst: int, rate: float) -> None:
    with pytest.raises(ConfigError):
        ClaimBudget(burst=burst, rate=rate)
