"""The PIN a PN gateway shows for elements that type one (``pn gateway --pin-link``,
docs/protocol.md §18): how many guesses a stranger gets.

The element's side of CPace checks the gateway's confirmation tag before it sends its own, so
each ``PnPinAnswer`` a stranger receives is one guess evaluated (it then hangs up).  The
gateway is the real ``PnGateway`` behind the real accept loop, over TCP on loopback, with its
clock in the test's hands; the stranger speaks from 127.0.0.2 ... 127.0.0.4.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from pairkit.driver import MessagePipe
from pairkit.pairing import wire
from pairkit.pairing.cpns import PnPinAnswer
from pairkit.pairing.cpns.pinlink import ElementPin
from pairkit.pairing.errors import PairingError
from pairkit.pn import PinDisplay
from tests.clock_harness import Clocks
from tests.flood_harness import attacker_addresses, link_from
from tests.pn_harness import gateway_in_process


async def guess(port: int, source: str) -> bool:
    """One PIN offer with a guessed PIN; whether the gateway answered it (a guess evaluated)
    rather than refusing it.  The stranger hangs up after the answer, as one whose guess was
    wrong does."""
    link = await link_from(source, "127.0.0.1", port)
    pipe = MessagePipe(link, guest=True)
    try:
        offer = ElementPin(os.urandom(16), "135790")
        offer.start(0.0)
        for message in offer.outgoing():
            await pipe.send(message)
        try:
            reply = wire.decode(await asyncio.wait_for(pipe.recv(), 10))
        except PairingError:
            return False
        return isinstance(reply, PnPinAnswer)
    finally:
        with contextlib.suppress(Exception):
            await link.close()


async def test_parallel_pin_offers_get_no_more_guesses_than_the_lockout_allows(
    tmp_path: Path,
) -> None:
    """Twelve offers at once, from three addresses: at most five are answered (five failures
    lock PIN offers), however many arrive before the first failure is known."""
    now = [0.0]
    pins = PinDisplay(None, show=lambda _pin: None, clock=lambda: now[0])
    async with gateway_in_process(tmp_path, pins=pins) as gw:
        sources = [s for s in attacker_addresses(3) for _ in range(4)]
        answered = await asyncio.gather(*(guess(gw.port, s) for s in sources))
    assert sum(answered) <= 5, f"{sum(answered)} guesses evaluated at once"


async def test_a_stranger_who_waits_out_the_lock_is_locked_longer_each_time(
    tmp_path: Path,
) -> None:
    """Rule 7 for method pin: after five failures, each further failure of the streak locks
    PIN pairing for twice as long as the last (5, 10, 20, 40 minutes, then an hour).  The
    stranger guesses five times, waits five minutes, guesses once more, and tries again two
    seconds later: it must be refused, else it guesses five times per five minutes for ever
    (about 41 % in a year against fresh 6-digit PINs, docs/security.md rule 7)."""
    now = [0.0]
    pins = PinDisplay(None, show=lambda _pin: None, clock=lambda: now[0])
    (source,) = attacker_addresses(1)
    async with gateway_in_process(tmp_path, pins=pins) as gw:
        for _ in range(5):
            assert await guess(gw.port, source)
        assert not await guess(gw.port, source)  # locked
        now[0] += 301.0  # the five are five minutes old
        assert await guess(gw.port, source)
        now[0] += 2.0
        assert not await guess(gw.port, source), "a sixth failure did not lengthen the lock"


async def test_a_restarted_gateway_keeps_its_pin_lock(tmp_path: Path) -> None:
    """Rule 7 across a restart: five guesses lock the gateway's PIN offers, the gateway stops,
    and the one started again on the same keystore refuses the next guess (the failures are
    kept in the keystore, docs/security.md "The lock outlives the host process"); before, a
    restart gave the stranger five fresh guesses."""
    from pairkit.keystore import Keystore
    from pairkit.lockouts import KeystoreLockJournal
    from pairkit.pairing.keystore import Argon2Params

    path = tmp_path / "owner.pk"
    Keystore.create(path, "246813", name="Paul's phone", kdf=Argon2Params.cheapest())
    clocks = Clocks(wall=1_800_000_000.0, monotonic=1_000.0)
    (source,) = attacker_addresses(1)

    def display() -> PinDisplay:
        journal = KeystoreLockJournal(Keystore.open(path, "246813"), "pn-pin", clocks)
        return PinDisplay(None, show=lambda _pin: None, clock=clocks.monotonic,
                          journal=journal)

    async with gateway_in_process(tmp_path / "first", pins=display()) as gw:
        for _ in range(5):
            assert await guess(gw.port, source)
        assert not await guess(gw.port, source)  # locked
    clocks.advance(60.0)
    clocks.reboot(monotonic=5.0)
    async with gateway_in_process(tmp_path / "again", pins=display()) as gw:
        assert not await guess(gw.port, source), "the restarted gateway forgot the lock"
        clocks.advance(241.0)  # the five are five minutes old
        assert await guess(gw.port, source)
        clocks.advance(2.0)
        assert not await guess(gw.port, source), "the streak did not go on across the restart"


async def test_a_gateway_that_cannot_count_a_guess_answers_none(tmp_path: Path) -> None:
    """The gateway's keystore cannot be written (a full disk): a guess whose failure cannot be
    kept is not played (docs/security.md, rule 7: nothing is counted in one process's memory
    only, where a restart would lose it).  Seven offers, none answered, each refused by a save
    that failed."""
    from pairkit.filestore import FileStorage
    from pairkit.keystore import Keystore
    from pairkit.lockouts import KeystoreLockJournal
    from pairkit.pairing.keystore import Argon2Params
    from tests.lockout_harness import DiskFull

    path = tmp_path / "owner.pk"
    Keystore.create(path, "246813", name="Paul's phone", kdf=Argon2Params.cheapest())
    clocks = Clocks(wall=1_800_000_000.0, monotonic=1_000.0)
    disk = DiskFull()
    journal = KeystoreLockJournal(
        Keystore.open(FileStorage(path, before_replace=disk), "246813"), "pn-pin", clocks)
    pins = PinDisplay(None, show=lambda _pin: None, clock=clocks.monotonic, journal=journal)
    disk.full = True
    (source,) = attacker_addresses(1)
    async with gateway_in_process(tmp_path / "gw", pins=pins) as gw:
        answered = [await guess(gw.port, source) for _ in range(7)]
    assert not any(answered), f"{sum(answered)} guesses played that the gateway could not count"
    assert disk.refused == 7
