"""A cloud's record rewritten by a pairkit that does not know all its fields (attack review
atk18; docs/security.md rule 3).

Several pairkit processes share one keystore, an older pairkit's host running through an
upgrade among them (docs/security.md, the lockouts' floor).  A session-16 pairkit (before owners
were kept) reads a cloud's record field by field and saves what it read: every member cloud's
``owner`` is gone after its first save (measured with commit e95f6af's code, atk18 report), and
the member is from then on one "joined before owners were kept": renewed only with its proof
(to any host whose id shares the cloud id's 8 bytes), and, since atk17 finding 3, taking
nothing from its owner's unproven renewal without a word.  This version does the same to a
field a later one adds: the test stands for that, with this version as the older process.
Since session 18 a field this version does not know is kept and written back (the session-16
code already shipped still drops the owner: docs/security.md rule 3 says what that leaves).
"""

from __future__ import annotations

from pathlib import Path

from pairkit.keystore import Argon2Params, Keystore

PIN = "482913-atk18"
CLOUD = "0011223344556677"
PAUL = CLOUD + "8899aabbccddeeff"


def test_a_cloud_field_this_version_does_not_know_survives_its_save(tmp_path: Path) -> None:
    path = tmp_path / "keystore.pk"
    newer = Keystore.create(path, PIN, name="George", kdf=Argon2Params.cheapest())
    with newer.update():
        newer.set_cloud(CLOUD, b"m" * 32, name="Paul's cloud", role="member", epoch=2,
                        owner=PAUL)
        newer._clouds[CLOUD]["joined_from_key"] = b"k" * 32  # as a later version may write it
        newer._dirty = True
    older = Keystore.open(path, PIN)  # this version, as the older process
    with older.update():
        older._dirty = True  # any save: a pairing stored, a peer forgotten
    assert Keystore.open(path, PIN)._clouds[CLOUD].get("joined_from_key") == b"k" * 32
    assert Keystore.open(path, PIN).cloud(CLOUD).owner == PAUL


def test_a_later_versions_cloud_field_survives_a_renewal_and_not_a_new_join(
    tmp_path: Path,
) -> None:
    """The field stays with the cloud through a renewal this version takes (only the secret
    and the epoch change), and goes with it when the cloud is forgotten and joined again."""
    path = tmp_path / "keystore.pk"
    ks = Keystore.create(path, PIN, name="George", kdf=Argon2Params.cheapest())
    with ks.update():
        ks.set_cloud(CLOUD, b"m" * 32, name="Paul's cloud", role="member", epoch=2, owner=PAUL)
        ks._clouds[CLOUD]["joined_from_key"] = b"k" * 32
        ks._dirty = True
    ks = Keystore.open(path, PIN)
    with ks.update():
        ks.take_renewed_cloud_secret(CLOUD, b"n" * 32, 3)
    ks = Keystore.open(path, PIN)
    assert ks.cloud(CLOUD).epoch == 3
    assert ks._clouds[CLOUD].get("joined_from_key") == b"k" * 32
    with ks.update():
        ks.forget_cloud(CLOUD)
        ks.set_cloud(CLOUD, b"o" * 32, name="Paul's cloud", role="member", owner=PAUL)
    assert "joined_from_key" not in Keystore.open(path, PIN)._clouds[CLOUD]
