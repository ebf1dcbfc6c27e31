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
    budget = ClaimBudget(burst=3, rate=0.5, per_address=10, clock=clock)
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]
    assert budget.refused == 1
    assert budget.give_back("a", b"george")  # that claim was proved
    assert budget.take("a") and not budget.take("a")
    clock.now += 2.0  # one more at 0.5 a second
    assert budget.take("b") and not budget.take("b")
    clock.now += 3600.0  # never more than the burst
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]
    for n in range(10):
        budget.give_back("a", bytes([n]))
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]


def test_one_address_spends_only_its_own_share() -> None:
    clock = Hand()
    budget = ClaimBudget(burst=10, rate=1.0, per_address=2, per_address_rate=0.1, clock=clock)
    assert [budget.take("mallory") for _ in range(3)] == [True, True, False]
    assert budget.take("george")
    clock.now += 10.0  # one more for her each 10 s
    assert [budget.take("mallory") for _ in range(2)] == [True, False]
    # the addresses' buckets are forgotten once full again, and many addresses stay bounded
    for n in range(5000):
        clock.now += 1.0
        budget.take(f"10.0.{n // 256}.{n % 256}")
    assert len(budget._by_address) <= 4096


@pytest.mark.parametrize("kw", [{"burst": 0}, {"rate": 0.0}, {"per_address": 0},
                                {"per_address_rate": -1.0}])
def test_a_budget_that_allows_nothing_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ClaimBudget(**kw)  # type: ignore[arg-type]


def test_a_flood_of_fresh_addresses_keeps_the_map_bounded_and_cheap() -> None:
    """A stranger who brings a new address for every link (an IPv6 prefix, a BLE random
    address) within one refill time: the addresses kept stay bounded, and the map is not
    rebuilt for each of them (each rebuild reads every address kept: rebuilt per link, a
    flood of fresh addresses costs the host quadratic work)."""
    clock = Hand()
    budget = ClaimBudget(clock=clock)
    rebuilds = 0
    last = budget._by_address
    for i in range(20_000):
        budget.take(f"addr-{i}")
        if budget._by_address is not last:
            rebuilds += 1
            last = budget._by_address
    assert len(budget._by_address) <= 4096
    assert rebuilds <= 20_000 // 1024, f"the map was rebuilt {rebuilds} times"


def test_a_device_gets_its_proved_asks_back_only_as_often_as_a_device_comes_back() -> None:
    """A device's proved asks are given back at most ``per_address`` at once and one each
    ``1 / per_address_rate`` seconds more (attack review atk16): a known device coming back
    again and again spends the budget as a stranger does; one coming back now and then never
    does, and another device's are its own."""
    clock = Hand()
    budget = ClaimBudget(burst=30, rate=0.5, per_address=4, per_address_rate=0.1, clock=clock)
    given = []
    while budget.take("george's address"):  # back at once, again and again
        given.append(budget.give_back("george's address", b"george"))
    # four given back, then his address's own four spent
    assert given == [True] * 4 + [False] * 4, given
    assert budget.take("ringo's address") and budget.give_back("ringo's address", b"ringo")
    for _ in range(20):  # George back once every 10 s: always given back
        clock.now += 10.0
        assert budget.take("george's address")
        assert budget.give_back("george's address", b"george")
