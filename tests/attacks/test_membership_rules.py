"""Attack 3 (issue 11): a malicious host plants or steals clouds through its Membership.

The checks a guest makes on what a host sends first on the channel (pairing/service.py
``check_membership``), machine level; the same attacks over real links are in
tests/attacks/test_hostile_host.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import AuthenticationError, ProtocolError
from pairkit.pairing.service import (
    JoinCloud,
    Membership,
    check_membership,
    cloud_id_of,
    membership_statement,
)

HOST_ID = bytes.fromhex("11" * 16)
ME = bytes.fromhex("22" * 16)
FP = "aaaa-bbbb-cccc-dddd"
SECRET = bytes.fromhex("a5" * 32)
OWNER = Ed25519PrivateKey.from_private_bytes(b"o" * 32)
OWNER_PUB = OWNER.public_key().public_bytes_raw()


def signed(m: Membership, key: Ed25519PrivateKey = OWNER, member: bytes = ME) -> Membership:
    return dataclasses.replace(m, signature=key.sign(membership_statement(m, member, FP)))


def new_member(**changes: object) -> Membership:
    m = Membership(role=Role.MEMBER, cloud_id=cloud_id_of(HOST_ID), cloud_name="Paul's cloud",
                   secret=SECRET)
    return signed(dataclasses.replace(m, **changes))


def check(m: Membership, held: tuple[str, ...] = ()) -> JoinCloud | None:
    return check_membership(m, host_id=HOST_ID, host_signing=OWNER_PUB, me=ME,
                            session_fingerprint=FP, held=held)


def test_an_owner_signed_membership_asks_the_user() -> None:
    q = check(new_member())
    assert isinstance(q, JoinCloud) and q.cloud_name == "Paul's cloud"


def test_guest_grants_and_proven_members_store_nothing() -> None:
    assert check(Membership(role=Role.GUEST, expires=10)) is None
    assert check(Membership(role=Role.MEMBER, cloud_id="whatever")) is None


def test_a_secret_with_a_guest_grant_is_refused() -> None:
    """A host cannot slip a cloud to a device that asked for (and got) guest access."""
    with pytest.raises(AuthenticationError, match="guest grant"):
        check(new_member(role=Role.GUEST))


def test_a_cloud_that_is_not_the_hosts_own_is_refused() -> None:
    """Planting: the host hands out a cloud id bound to another owner (e.g. the guest's own)."""
    with pytest.raises(AuthenticationError, match="not its own"):
        check(new_member(cloud_id=cloud_id_of(ME)))


def test_a_cloud_the_device_holds_is_never_overwritten() -> None:
    """Stealing: even the right owner cannot replace a cloud this device already holds."""
    with pytest.raises(AuthenticationError, match="already holds"):
        check(new_member(), held=(cloud_id_of(HOST_ID),))


@pytest.mark.parametrize("how", ["unsigned", "other-key", "other-member", "changed"])
def test_the_owner_signature_is_checked(how: str) -> None:
    m = new_member()
    if how == "unsigned":
        m = dataclasses.replace(m, signature=None)
    elif how == "other-key":
        m = signed(dataclasses.replace(m, signature=None), Ed25519PrivateKey.generate())
    elif how == "other-member":
        m = signed(dataclasses.replace(m, signature=None), member=b"\x33" * 16)
    else:
        m = dataclasses.replace(m, cloud_name="Mallory's cloud")
    with pytest.raises(AuthenticationError):
        check(m)


def test_a_membership_without_a_secret_names_no_cloud_to_join() -> None:
    with pytest.raises(ProtocolError):
        check(Membership(role=Role.MEMBER, cloud_id="x", cloud_name="n"))
    with pytest.raises(ProtocolError):
        check(Membership(role=Role.GUEST, cloud_id="x"))


def test_the_secret_never_shows_in_a_repr() -> None:
    assert SECRET.hex() not in repr(new_member()) and repr(SECRET) not in repr(new_member())
