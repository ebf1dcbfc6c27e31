"""Attack 3 (issue 11): a malicious host plants or steals clouds through its Membership.

The checks a guest makes on what a host sends first on the channel (pairing/service.py
``check_membership``), machine level; the same attacks over real links are in
tests/attacks/test_attack_hostile_host_tcp.py and tests/attacks/test_attack_cloud_renewal.py.

Also here: rule 3's one exception (a renewal of a cloud held as a member) when the device's
cloud proof did not count, e.g. a member that missed more renewals than its owner keeps retired
secrets of, asked about and let in again by the owner (atk16b finding 2).  The owner's new
member's ``Membership`` is then the renewal; everything else naming a held cloud stays refused.
With no proof from the host, what binds the renewal to the owner is the owner's full device id,
kept when the cloud was joined, not the 8 bytes of it that are the cloud id (a second preimage
of those is about 2**64 work); a cloud joined before that id was kept is renewed only with a
proof.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import AuthenticationError, ProtocolError
from pairkit.pairing.service import (
    CloudBehind,
    CloudRenewal,
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


def check(m: Membership, held: tuple[str, ...] = ()) -> JoinCloud | CloudRenewal | None:
    return check_membership(m, host_id=HOST_ID, host_signing=OWNER_PUB, me=ME,
                            session_fingerprint=FP, held=held)


#: Paul's cloud, held by this device as a member at epoch 3 (under the name Paul gave it)
PAULS = cloud_id_of(HOST_ID)
HELD_EPOCH = 3


#: the device id of another owner whose cloud id is Paul's: a second preimage of the first 8
#: bytes of Paul's id (about 2**64 work; here made by hand), differing from Paul's after them
NOT_PAUL = HOST_ID[:8] + bytes.fromhex("99" * 8)


def check_held(
    m: Membership, *, proven: str | None = None, owner: bool = False,
    cloud_id: str = PAULS, name: str = "Paul's cloud", joined_from: bytes | None = HOST_ID,
) -> JoinCloud | CloudRenewal | None:
    """``m`` checked by a device that holds ``cloud_id`` (as a member at :data:`HELD_EPOCH`,
    joined from the owner ``joined_from``, ``None``: joined before owners were kept; or as its
    owner), its proof counted (``proven``) or not."""
    return check_membership(
        m, host_id=HOST_ID, host_signing=OWNER_PUB, me=ME, session_fingerprint=FP,
        held=(cloud_id,), proven=proven,
        member_epochs={} if owner else {cloud_id: HELD_EPOCH},
        member_names={} if owner else {cloud_id: name},
        member_owners={} if owner or joined_from is None else {cloud_id: joined_from},
    )


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


# -- a held cloud's renewal when the device's proof did not count (atk16b finding 2) ----------

WHETHER_PROVEN = pytest.mark.parametrize("proven", [None, PAULS], ids=["unproven", "proven"])


@WHETHER_PROVEN
def test_the_owners_new_member_membership_renews_a_cloud_held_as_a_member(
    proven: str | None,
) -> None:
    """The owner let its member back in (asked about it as a stranger: its proof was made with a
    secret no longer kept) and sends a new member's Membership, signed, a higher epoch: a
    renewal (secret and epoch only), asking no one, whether the proof counted or not."""
    got = check_held(new_member(epoch=HELD_EPOCH + 2), proven=proven)
    assert got == CloudRenewal(cloud_id=PAULS, epoch=HELD_EPOCH + 2)
    # the owner's renewal form (no name, no members) as well
    bare = signed(Membership(role=Role.MEMBER, cloud_id=PAULS, secret=SECRET, epoch=4))
    assert check_held(bare, proven=proven) == CloudRenewal(cloud_id=PAULS, epoch=4)


@WHETHER_PROVEN
@pytest.mark.parametrize("epoch", [HELD_EPOCH, HELD_EPOCH - 1, None],
                         ids=["equal", "lower", "missing"])
@pytest.mark.parametrize("secret", [SECRET, bytes.fromhex("5a" * 32)], ids=["held", "other"])
def test_the_owners_membership_not_newer_than_held_stores_nothing(
    proven: str | None, epoch: int | None, secret: bytes,
) -> None:
    """The owner's own Membership of the cloud, signed for this member and session, with the
    epoch held or an older one (or none: a cloud never renewed), and the secret held or any
    other: nothing to store, and nothing refused, so the session goes on.  The owner's device
    sends it to a member that did not prove the cloud (one of more than the 8 it hints, let in
    as new: atk17 finding 4), and after its keystore was put back from a backup behind the
    member (atk18 finding 1: refusing it cut the member off).  The held cloud is never
    overwritten, and the secret sent is never looked at (no oracle on the one held)."""
    m = signed(dataclasses.replace(new_member(epoch=epoch), secret=secret, signature=None))
    got = check_held(m, proven=proven)
    if epoch == HELD_EPOCH:
        assert got is None
    else:
        # behind the member: nothing to store, and the member's person is told (atk18b
        # finding 3), with the epochs only
        assert got == CloudBehind(cloud_id=PAULS, cloud_name="Paul's cloud",
                                  held_epoch=HELD_EPOCH, offered_epoch=epoch or 0)
        assert SECRET.hex() not in repr(got) and secret.hex() not in repr(got)


@WHETHER_PROVEN
@pytest.mark.parametrize("epoch", [HELD_EPOCH, HELD_EPOCH - 1], ids=["equal", "lower"])
@pytest.mark.parametrize("how", ["unsigned", "other-key", "other-member", "other-session",
                                 "renamed"])
def test_a_membership_not_newer_is_still_checked_whole(proven: str | None, epoch: int,
                                                       how: str) -> None:
    """Nothing to store is no reason to believe the rest: the owner's signature over this
    member and this session, and the cloud's name, are checked as for any secret."""
    m = new_member(epoch=epoch)
    if how == "unsigned":
        m = dataclasses.replace(m, signature=None)
    elif how == "other-key":
        m = signed(m, key=Ed25519PrivateKey.from_private_bytes(b"x" * 32))
    elif how == "other-member":
        m = signed(m, member=bytes(16))
    elif how == "other-session":
        m = dataclasses.replace(m, signature=OWNER.sign(membership_statement(m, ME, "zzzz")))
    else:
        m = new_member(epoch=epoch, cloud_name="Mallory's cloud")
    with pytest.raises(AuthenticationError, match=r"sign|otherwise"):
        check_held(m, proven=proven)


def test_the_secret_held_sent_again_is_bound_as_a_renewal_is() -> None:
    """Without the device's proof, the same owner binding as a renewal's: from a host that is
    not the owner the cloud was joined from it is refused; with no owner kept it is nothing to
    take (atk17 finding 3)."""
    with pytest.raises(AuthenticationError, match="owner"):
        check_held(new_member(epoch=HELD_EPOCH), joined_from=NOT_PAUL)
    assert check_held(new_member(epoch=HELD_EPOCH), joined_from=None) is None


def test_a_cloud_held_as_its_owner_is_never_renewed() -> None:
    """Taking: a cloud this device owns (its id bound to the host: only a host with this
    device's key, or a collision, gets here) is never overwritten, whatever the epoch."""
    with pytest.raises(AuthenticationError, match="already holds"):
        check_held(new_member(epoch=HELD_EPOCH + 100), owner=True)
    with pytest.raises(AuthenticationError, match="does not hold as a member"):
        check_held(new_member(epoch=HELD_EPOCH + 100), owner=True, proven=PAULS)


@WHETHER_PROVEN
def test_a_held_cloud_not_bound_to_the_host_is_not_renewed(proven: str | None) -> None:
    """Planting over a held cloud: a host renews a cloud this device holds as a member (at a
    lower epoch than offered, signed by the host) whose id is bound to another owner."""
    other = cloud_id_of(bytes.fromhex("33" * 16))
    m = new_member(cloud_id=other, epoch=HELD_EPOCH + 1)
    with pytest.raises(AuthenticationError, match="not its own"):
        check_held(m, cloud_id=other, proven=proven and other)


@WHETHER_PROVEN
@pytest.mark.parametrize("how", ["unsigned", "other-key", "other-member", "bit-flipped",
                                 "epoch-raised"])
def test_a_held_clouds_renewal_must_be_signed_by_its_owner(proven: str | None, how: str) -> None:
    m = new_member(epoch=HELD_EPOCH + 1)
    if how == "unsigned":
        m = dataclasses.replace(m, signature=None)
    elif how == "other-key":
        m = signed(dataclasses.replace(m, signature=None), Ed25519PrivateKey.generate())
    elif how == "other-member":
        m = signed(dataclasses.replace(m, signature=None), member=b"\x33" * 16)
    elif how == "bit-flipped":
        m = dataclasses.replace(m, secret=SECRET[:-1] + bytes([SECRET[-1] ^ 1]))
    else:  # a relay raises the epoch of a renewal the owner signed
        m = dataclasses.replace(m, epoch=HELD_EPOCH + 50)
    with pytest.raises(AuthenticationError, match=r"signed|signature"):
        check_held(m, proven=proven)


@WHETHER_PROVEN
def test_the_renewal_of_an_earlier_session_is_not_replayed(proven: str | None) -> None:
    """The owner's signature binds the session fingerprint: a Membership recorded in another
    session (the owner's real one, epoch and all) is refused in this one."""
    earlier = dataclasses.replace(new_member(epoch=HELD_EPOCH + 1), signature=None)
    replayed = dataclasses.replace(
        earlier, signature=OWNER.sign(membership_statement(earlier, ME, "0000-1111-2222-3333"))
    )
    with pytest.raises(AuthenticationError, match="signature does not verify"):
        check_held(replayed, proven=proven)


@WHETHER_PROVEN
def test_a_renewal_never_renames_the_cloud(proven: str | None) -> None:
    """Only the secret and the epoch may change: a renewal that names the cloud otherwise than
    this device holds it (even signed by the owner) is refused, not half taken."""
    with pytest.raises(AuthenticationError, match="name"):
        check_held(new_member(cloud_name="Mallory's cloud", epoch=HELD_EPOCH + 1),
                   proven=proven)
    # the name held is what counts, not the one the owner would give a new member
    with pytest.raises(AuthenticationError, match="name"):
        check_held(new_member(epoch=HELD_EPOCH + 1), name="our band's cloud", proven=proven)


@WHETHER_PROVEN
def test_a_renewal_is_a_member_grant(proven: str | None) -> None:
    """A held cloud's secret with a guest grant (a demotion, or a relay's relabel) is refused."""
    with pytest.raises(AuthenticationError, match="guest grant"):
        check_held(new_member(role=Role.GUEST, epoch=HELD_EPOCH + 1), proven=proven)


def test_a_device_that_proved_one_cloud_is_not_renewed_another() -> None:
    """Back by its proof of one cloud, the device takes no secret of another it holds."""
    m = new_member(epoch=HELD_EPOCH + 1)
    with pytest.raises(AuthenticationError, match="another cloud"):
        check_held(m, proven="0123456789abcdef")


# -- what binds a renewal when the device's proof did not count: the owner's full id ----------


def bare_renewal(epoch: int) -> Membership:
    """The owner's renewal form: no name, no members."""
    return signed(Membership(role=Role.MEMBER, cloud_id=PAULS, secret=SECRET, epoch=epoch))


RENEWAL_FORMS = pytest.mark.parametrize(
    "m", [new_member(epoch=HELD_EPOCH + 1), bare_renewal(HELD_EPOCH + 1)],
    ids=["new-member", "renewal"],
)


@RENEWAL_FORMS
@pytest.mark.parametrize("owner_id", [
    NOT_PAUL,
    HOST_ID[:-1] + bytes([HOST_ID[-1] ^ 1]),  # the last bit only
    HOST_ID[:8] + bytes([HOST_ID[8] ^ 0x80]) + HOST_ID[9:],  # the first bit after the cloud id
], ids=["second-half", "last-bit", "ninth-byte"])
def test_a_no_proof_renewal_from_another_owner_of_the_same_cloud_id_is_refused(
    m: Membership, owner_id: bytes,
) -> None:
    """Taking over a member with a second preimage of 64 bits: this device joined the cloud
    from ``owner_id``; the host's id shares its first 8 bytes (so the cloud id is bound to the
    host), differs after them, and the host signs with its own key.  With no proof of the
    cloud from the host, only the owner the cloud was joined from renews it."""
    assert cloud_id_of(owner_id) == PAULS and owner_id != HOST_ID
    with pytest.raises(AuthenticationError, match="not the owner"):
        check_held(m, joined_from=owner_id)


@RENEWAL_FORMS
def test_a_cloud_joined_before_owners_were_kept_is_renewed_only_with_a_proof(
    m: Membership,
) -> None:
    """A cloud joined before this device kept its owner's id: nothing binds a renewal to the
    owner but the 64-bit cloud id, so without the device's proof nothing is taken (the
    session goes on, on the secret held: atk17 finding 3; it was refused before, which cut
    such a member off from its owner); with it, renewed as before."""
    assert check_held(m, joined_from=None) is None
    assert check_held(m, joined_from=None, proven=PAULS) == CloudRenewal(
        cloud_id=PAULS, epoch=HELD_EPOCH + 1)


@RENEWAL_FORMS
def test_with_the_devices_proof_the_owner_kept_renews_as_before(m: Membership) -> None:
    """The proven path from the owner the cloud was joined from (or joined before owners were
    kept) renews as before; from another owner of the same cloud id it is refused (below)."""
    for joined_from in (HOST_ID, None):
        assert check_held(m, joined_from=joined_from, proven=PAULS) == CloudRenewal(
            cloud_id=PAULS, epoch=HELD_EPOCH + 1)


def test_the_owner_kept_for_one_cloud_does_not_bind_another() -> None:
    """The owner's id is looked up by the cloud renewed, not taken from any cloud held: Paul's
    cloud, joined before owners were kept, is not renewed without the proof (nothing taken)."""
    assert None is check_membership(
        new_member(epoch=HELD_EPOCH + 1), host_id=HOST_ID, host_signing=OWNER_PUB, me=ME,
        session_fingerprint=FP, held=(PAULS, "0123456789abcdef"),
        member_epochs={PAULS: HELD_EPOCH, "0123456789abcdef": 0},
        member_names={PAULS: "Paul's cloud", "0123456789abcdef": "Ringo's cloud"},
        member_owners={"0123456789abcdef": HOST_ID},
    )


# -- the owner's signing key kept with the cloud (atk18c finding 3) ---------------------------


@WHETHER_PROVEN
def test_a_renewal_is_signed_by_the_owners_key_kept_at_the_join(proven: str | None) -> None:
    """A member keeps, with the cloud, the signing key of the owner it joined from: a renewal
    signed by another key the host shows (it holds the owner's static key, not its signing
    key) is refused, though it verifies under that key; by the kept key it is taken."""
    mallory = Ed25519PrivateKey.from_private_bytes(b"m" * 32)
    mallorys = mallory.public_key().public_bytes_raw()
    m = signed(new_member(epoch=HELD_EPOCH + 1), key=mallory)
    with pytest.raises(AuthenticationError, match="signs with another key"):
        check_membership(
            m, host_id=HOST_ID, host_signing=mallorys, me=ME, session_fingerprint=FP,
            held=(PAULS,), proven=proven, member_epochs={PAULS: HELD_EPOCH},
            member_names={PAULS: "Paul's cloud"}, member_owners={PAULS: HOST_ID},
            member_owner_signing={PAULS: OWNER_PUB},
        )
    assert check_membership(
        new_member(epoch=HELD_EPOCH + 1), host_id=HOST_ID, host_signing=OWNER_PUB, me=ME,
        session_fingerprint=FP, held=(PAULS,), proven=proven,
        member_epochs={PAULS: HELD_EPOCH}, member_names={PAULS: "Paul's cloud"},
        member_owners={PAULS: HOST_ID}, member_owner_signing={PAULS: OWNER_PUB},
    ) == CloudRenewal(cloud_id=PAULS, epoch=HELD_EPOCH + 1)


# -- attack review atk17: the owner's id kept binds the proven path too ------------------------


@RENEWAL_FORMS
@pytest.mark.parametrize("owner_id", [NOT_PAUL, HOST_ID[:-1] + bytes([HOST_ID[-1] ^ 1])],
                         ids=["second-half", "last-bit"])
def test_a_proven_renewal_from_another_owner_of_the_same_cloud_id_is_refused(
    m: Membership, owner_id: bytes,
) -> None:
    """docs/security.md rule 3: "A host whose id merely shares the cloud id ... never replaces
    a held one."  The device joined the cloud from ``owner_id``; the host's id shares its first
    8 bytes and the host proved the cloud's secret, which every member holds, and a forgotten
    member too until the others are renewed.  Knowing the secret is no proof of being the
    owner: the owner's id, kept at the join, is the one that renews the cloud."""
    assert cloud_id_of(owner_id) == PAULS and owner_id != HOST_ID
    with pytest.raises(AuthenticationError, match="not the owner"):
        check_held(m, joined_from=owner_id, proven=PAULS)
