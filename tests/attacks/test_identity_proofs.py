"""Attacks 1 and 5 (issue 11), machine level: an identity is never taken because it was sent,
and "authenticated" never upgrades on its own (docs/security.md, rules 1 and 5).

Mallory knows only the victim's public static key (it is in every QR code the victim showed and
in every peer list); she announces it as hers and runs each method with her own private key.
The end-to-end versions, over TCP between processes, are in tests/attacks/ beside this file.
"""

from __future__ import annotations

import dataclasses

import pytest

from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.machine import Machine
from pairkit.pairing.methods import KnownPeer, LocalIdentity
from pairkit.pairing.negotiation import Method
from tests.pair_harness import identities, known_pair, make_pair, seeded


def assert_failed(machine: Machine) -> PairingError:
    assert machine.failed, machine.state
    assert isinstance(machine.error, PairingError)
    assert getattr(machine, "session", None) is None
    return machine.error


FULL = [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR]


def posing_as(victim: LocalIdentity, seed: int) -> LocalIdentity:
    """Mallory's identity: the victim's public keys and id, her own private key."""
    mallory = LocalIdentity.generate("Mallory", seeded(seed, "mallory"))
    return dataclasses.replace(
        victim, static_private=mallory.static_private, name=victim.name
    )


@pytest.mark.parametrize("method", FULL, ids=[m.label for m in FULL])
def test_a_guest_claiming_a_public_key_it_does_not_hold_is_refused(method: Method) -> None:
    victim, host_me = identities(200)
    pair = make_pair(method, seed=201, guest_me=posing_as(victim, 202), host_me=host_me)
    pair.run()
    assert pair.host.session is None, "the host took an identity on its word"
    assert pair.guest.session is None
    err = assert_failed(pair.host)
    assert isinstance(err, PairingError)


@pytest.mark.parametrize("method", FULL, ids=[m.label for m in FULL])
def test_a_host_claiming_a_public_key_it_does_not_hold_is_refused(method: Method) -> None:
    guest_me, victim = identities(203)
    pair = make_pair(method, seed=204, guest_me=guest_me, host_me=posing_as(victim, 205))
    pair.run()
    assert pair.guest.session is None, "the guest took an identity on its word"
    assert pair.host.session is None or not pair.guest.done
    assert_failed(pair.guest)


@pytest.mark.parametrize("method", [Method.RESUME, Method.KK], ids=["resume", "kk"])
def test_a_known_peer_cannot_be_impersonated_by_resume(method: Method) -> None:
    """Mallory has the host's record of the victim (all public) but not the victim's keys."""
    known = known_pair(seed=206)
    fake = posing_as(known.guest_me, 207)
    pair = make_pair(method, seed=208, guest_me=fake, host_me=known.host_me, state=known.state,
                     peer=known.guest_record)
    pair.run()
    assert pair.host.session is None or pair.guest.session is None
    if pair.host.session is not None:
        # resume: the host answers (it cannot tell yet) but Mallory cannot derive the keys,
        # so her first record (READY) never verifies; she holds no session
        assert pair.guest.failed and isinstance(pair.guest.error, AuthenticationError)
    else:
        assert_failed(pair.host)


@pytest.mark.parametrize("method", [Method.RESUME, Method.KK], ids=["resume", "kk"])
@pytest.mark.parametrize("trusted", [False, True])
def test_resume_and_kk_never_change_authenticated(method: Method, trusted: bool) -> None:
    known = known_pair(seed=209)
    # Both sides' records say what the first pairing established.
    record = dataclasses.replace(known.guest_record, authenticated=trusted)
    gid = known.guest_me.device_id
    known.host_records[gid] = dataclasses.replace(known.host_records[gid], authenticated=trusted)
    if method is Method.KK:
        record = dataclasses.replace(record, their_prekeys=())  # forces the KK fallback
    pair = make_pair(Method.RESUME, seed=210, guest_me=known.guest_me, host_me=known.host_me,
                     state=known.state, peer=record)
    pair.run()
    assert pair.guest.session is not None and pair.host.session is not None
    assert pair.guest.session.method is method
    assert pair.guest.session.peer.authenticated is trusted
    assert pair.host.session.peer.authenticated is trusted
    stored: KnownPeer = pair.host.session.updated_peer(known.host_records[gid])
    assert stored.authenticated is trusted
