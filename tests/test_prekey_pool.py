"""Prekeys made ahead of need (issue 13): the machines take them from a source, the runtime's
pool makes them in idle time, and no prekey is ever handed to two peers.

What an attacker would want from this change: a prekey offered twice (two peers, or two
pairings with one peer), so that one resume's keys could be replayed against another; a pool
that hands a machine something that is not a prekey; or the wire changing under the frozen
transcripts.  Each is checked here over real pairings (machines shuttled in memory, and the
runtime's pipeline over a loopback link).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from pairkit import prekeys as runtime_prekeys
from pairkit.pairing.crypto import digest
from pairkit.pairing.errors import ConfigError
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Prekey,
    prekey_holder,
)
from pairkit.pairing.methods.common import _take_prekeys
from pairkit.pairing.negotiation import Method
from pairkit.prekeys import PrekeyPool
from tests.pair_harness import shuttle


def _public_digest(p: Prekey) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return digest(X25519PrivateKey.from_private_bytes(p.private).public_key().public_bytes_raw())


def _pin_pair(
    guest_source: object = None, host_source: object = None
) -> tuple[GuestPairing, HostPairing]:
    config = PairingConfig()
    state = HostState(known_peer=lambda _id: None)
    host = HostPairing(config, LocalIdentity.generate("host"), state, prekeys=host_source)
    host.start(0.0)
    guest = GuestPairing(config, LocalIdentity.generate("guest"), method=Method.PIN,
                         pin=state.new_pin(), prekeys=guest_source)
    guest.start(0.0)
    return guest, host


def test_a_full_pairing_hands_out_the_pools_prekeys() -> None:
    guest_pool, host_pool = PrekeyPool(capacity=8), PrekeyPool(capacity=8)
    guest_pool.fill()
    host_pool.fill()
    ready_guest, ready_host = tuple(guest_pool._ready), tuple(host_pool._ready)
    guest, host = _pin_pair(guest_pool.take, host_pool.take)
    result = shuttle(guest, host)
    assert result.guest_error is None and result.host_error is None
    assert guest.session is not None and host.session is not None
    # What each side stores is what its pool made, and what the peer received are their digests.
    assert guest.session.new_our_prekeys == ready_guest
    assert host.session.new_our_prekeys == ready_host
    assert host.session.new_their_prekeys == tuple(p.digest for p in ready_guest)
    assert guest.session.new_their_prekeys == tuple(p.digest for p in ready_host)
    assert all(p.digest == _public_digest(p) for p in ready_guest + ready_host)
    # Handed out once: the pools no longer hold them.
    assert len(guest_pool) == len(host_pool) == 0


def test_an_empty_source_means_the_machine_makes_its_own() -> None:
    guest, host = _pin_pair(lambda n: (), lambda n: ())
    shuttle(guest, host)
    assert guest.session is not None and host.session is not None
    assert len(guest.session.new_our_prekeys) == PairingConfig().prekeys
    assert all(p.digest == _public_digest(p) for p in guest.session.new_our_prekeys)


def test_a_short_source_is_topped_up_from_rng() -> None:
    pool = PrekeyPool(capacity=3)
    pool.fill()
    got = _take_prekeys(8, os.urandom, pool.take)
    assert len(got) == 8 and len({p.digest for p in got}) == 8
    assert all(p.digest == _public_digest(p) for p in got)


def test_a_source_that_returns_something_else_is_refused() -> None:
    with pytest.raises(ConfigError):
        _take_prekeys(2, os.urandom, lambda n: [b"\x00" * 32] * n)  # type: ignore[list-item]


def test_no_prekey_is_handed_out_twice() -> None:
    pool = PrekeyPool(capacity=20)
    pool.fill()
    first, second = pool.take(8), pool.take(8)
    assert not {p.digest for p in first} & {p.digest for p in second}
    assert len(pool.take(8)) == 4  # only what is left; the machine makes the rest
    assert pool.take(8) == ()


def test_the_pool_shows_no_key_material() -> None:
    pool = PrekeyPool(capacity=2)
    pool.fill()
    text = repr(pool)
    assert "2/2" in text
    for p in pool._ready:
        assert p.private.hex() not in text and p.digest.hex() not in text


async def test_the_refill_runs_in_idle_time_and_stops_at_capacity() -> None:
    pool = PrekeyPool(capacity=5)
    assert pool.take(3) == ()  # empty, and the refill is asked for
    assert len(pool) == 0  # nothing made on the caller's turn
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(pool) == 5
    await pool.aclose()
    assert len(pool) == 0


def test_a_caller_with_its_own_rng_gets_no_pool() -> None:
    # Deterministic machines (tests, frozen transcripts) keep drawing their prekeys from rng.
    assert runtime_prekeys.source_for(os.urandom) is not None
    assert runtime_prekeys.source_for(lambda n: bytes(n)) is None


def test_the_wire_is_the_same_with_a_source() -> None:
    # Same messages, same sizes: the pool changes when prekeys are made, not what is sent.
    pool = PrekeyPool(capacity=16)
    pool.fill()
    with_pool = shuttle(*_pin_pair(pool.take, pool.take))
    without = shuttle(*_pin_pair())
    assert [n for _, n in with_pool.flights] == [n for _, n in without.flights]


def test_resume_takes_its_replacement_from_the_source() -> None:
    config = PairingConfig()
    guest_id, host_id = LocalIdentity.generate("g"), LocalIdentity.generate("h")
    known: dict[str, KnownPeer] = {}
    state = HostState(known_peer=lambda _id: known.get("host"),
                      peer_by_prekey=lambda d: prekey_holder(known.values(), d))
    host = HostPairing(config, host_id, state)
    host.start(0.0)
    guest = GuestPairing(config, guest_id, method=Method.PIN, pin=state.new_pin())
    guest.start(0.0)
    shuttle(guest, host)
    assert guest.session is not None and host.session is not None
    known["host"] = host.session.updated_peer(None)
    peer = guest.session.updated_peer(None)
    pool = PrekeyPool(capacity=1)
    pool.fill()
    replacement = pool._ready[0]
    host = HostPairing(config, host_id, state, prekeys=pool.take)
    host.start(0.0)
    guest = GuestPairing(config, guest_id, method=Method.RESUME, peer=peer)
    guest.start(0.0)
    result = shuttle(guest, host)
    assert result.guest_error is None and result.host_error is None, result.errors
    assert host.session is not None and guest.session is not None
    assert host.session.method is Method.RESUME
    assert host.session.new_our_prekeys == (replacement,)
    assert guest.session.new_their_prekeys == (replacement.digest,)


async def test_the_pool_grows_with_demand_up_to_its_limit_and_never_repeats_a_key() -> None:
    pool = PrekeyPool(capacity=4, limit=10)
    pool.fill()
    handed: list[bytes] = []
    for _ in range(6):  # a burst: 6 pairings of 3 prekeys each, faster than the refill
        handed += [p.private for p in pool.take(3)]
    assert pool.capacity == 10  # every prekey asked for and not ready raised it, to the limit
    for _ in range(40):
        await asyncio.sleep(0)
    assert len(pool) == 10  # made in the quiet time after the burst
    handed += [p.private for p in pool.take(10)]
    assert len(handed) == len(set(handed)) == 14  # single use: no key handed out twice
    await pool.aclose()


def test_a_pool_without_a_limit_keeps_its_capacity_and_the_process_pool_is_bounded() -> None:
    pool = PrekeyPool(capacity=2, background=False)
    assert pool.take(5) == ()
    assert pool.capacity == 2
    assert runtime_prekeys.pool().limit == runtime_prekeys.MAX_CAPACITY
    with pytest.raises(ValueError):
        PrekeyPool(capacity=8, limit=4)
