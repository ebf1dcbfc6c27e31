"""Attack 7 (rule 7): a shown PIN is good for one attempt, and attempts are limited.

After a failed attempt the host's PIN changed (the old one, now learnt by shoulder-surfing or
guessed right too late, is refused) and the lockout still counts every failure, including the
attempts made with the old PIN.  Played with the machines in memory and with the CLI over TCP.
"""

from __future__ import annotations

import asyncio
import re

from pairkit.pairing.errors import LockedOutError, PairingError, RefusedError
from pairkit.pairing.methods import HostState, PinPolicy
from pairkit.pairing.negotiation import Method
from tests.cli_helpers import Lab
from tests.pair_harness import make_pair

PIN = "482913"


def attempt(state: HostState, pin: str, seed: int, now: float = 0.0) -> PairingError | None:
    pair = make_pair(Method.PIN, seed=seed, state=state, pin=pin, now=now)
    pair.run(now=now)
    if pair.host.session is not None and pair.guest.session is not None:
        return None
    assert pair.host.session is None and pair.guest.session is None
    return pair.host.error or pair.guest.error


def wrong_pin(err: PairingError | None) -> bool:
    return err is not None and "wrong PIN" in str(err)


def test_machines_the_old_pin_is_refused_after_a_failed_attempt() -> None:
    state = HostState(pin_policy=PinPolicy(max_failures=3, window=300))
    state.set_pin(PIN)
    assert wrong_pin(attempt(state, "111290", 1))
    assert state.pin is None, "the PIN survived a failed attempt"
    # Nothing shown: even the right PIN is refused until the host shows a new one.
    assert isinstance(attempt(state, PIN, 2), RefusedError)
    fresh = state.new_pin()
    assert wrong_pin(attempt(state, PIN, 3)) or fresh == PIN
    state.new_pin()
    assert wrong_pin(attempt(state, "111290", 4))
    # Three failures in the window: the shown PIN itself is now refused.
    right = state.new_pin()
    assert isinstance(attempt(state, right, 5), LockedOutError)
    # After the window, the PIN shown works again.
    assert attempt(state, right, 6, now=301.0) is None


def shown(host: object) -> list[str]:
    return [m.group(1) for line in host.lines  # type: ignore[attr-defined]
            if (m := re.match(r"^PIN: (\d{6})", line))]


async def test_cli_the_old_pin_is_refused_and_lockout_counts_it(lab: Lab) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    bad = await george.join(host.target, "-m", "pin", "--pin", "111290")
    assert bad.rc == 3 and "wrong PIN" in bad.err, bad
    await host.wait_count(r"^error: guest ", 1)
    await host.wait_count(r"^PIN: ", 2)
    assert shown(host)[-1] != PIN
    old = await ringo.join(host.target, "-m", "pin", "--pin", PIN)
    assert old.rc != 0, f"the old PIN still worked after a failed attempt:\n{old}"
    await host.wait_count(r"^error: guest ", 2)
    for i in range(3):
        wrong = await george.join(host.target, "-m", "pin", "--pin", f"90817{i}")
        assert wrong.rc == 3, wrong
        await host.wait_count(r"^error: guest ", 3 + i)
    await host.wait_count(r"^PIN: ", 6)
    right = await ringo.join(host.target, "-m", "pin", "--pin", shown(host)[-1])
    assert right.rc == 5 and "locked" in right.err, right
    assert await paul.peers() == [] and await george.peers() == [] and await ringo.peers() == []


async def test_cli_parallel_guesses_share_one_pin(lab: Lab) -> None:
    """Two guests at once: only one can use the shown PIN; the other is refused outright."""
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    results = await asyncio.gather(
        george.join(host.target, "-m", "pin", "--pin", PIN, "--json"),
        ringo.join(host.target, "-m", "pin", "--pin", PIN, "--json"),
    )
    assert sorted(r.rc == 0 for r in results) == [False, True], results
    assert len(await paul.peers()) == 1
