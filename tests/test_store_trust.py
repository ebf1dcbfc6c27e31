"""Records written by earlier versions: what is still trusted (docs/security.md, rules 2, 4, 5).

Keystores keep working; two things stored before the trust rules are no longer taken as they
were: a two-way ``role`` (it could be what the peer granted us, read back as our grant to it) and
a ``clear`` pairing marked authenticated before the link's MITM protection was checked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pairkit import peers as store
from pairkit.keystore import Argon2Params, Keystore, Peer
from pairkit.pairing.cloud import Role
from pairkit.pairing.crypto import digest, x25519_keypair

KEYSTORE_PIN = "246813"


def keystore(tmp_path: Path) -> Keystore:
    cheap = Argon2Params.cheapest()
    return Keystore.create(tmp_path / "k.pk", KEYSTORE_PIN, name="Paul", kdf=cheap)


def legacy_peer(name: str, **fields: object) -> Peer:
    _, public = x25519_keypair(os.urandom)
    return Peer(id=digest(public).hex(), name=name, static_public=public,
                signing_public=os.urandom(32), **fields)  # type: ignore[arg-type]


def test_an_old_two_way_role_is_not_a_grant(tmp_path: Path) -> None:
    """George once made Paul a member of his cloud (stored on Paul's side as role=member):
    that never lets George into Paul's host without a prompt."""
    ks = keystore(tmp_path)
    old = legacy_peer("George", authenticated=True, method="pin",
                      extra={"role": "member", "expires": None})
    soon = legacy_peer("Ringo", authenticated=True, method="pin",
                       extra={"role": "guest", "expires": time.time() + 3600})
    ks.add_peer(old)
    ks.add_peer(soon)
    ks.save()
    ks = Keystore.open(ks.path, KEYSTORE_PIN)
    assert store.peer_grant(ks, bytes.fromhex(old.id), time.time()) is None
    assert store.peer_grant(ks, bytes.fromhex(soon.id), time.time()) is None
    assert [m.name for m in store.cloud_members(ks)] == ["Paul"]
    # the peers themselves are kept and still resume as before
    assert store.known_peer(ks, bytes.fromhex(old.id)) is not None


def test_a_grant_our_owner_gave_is_honoured_until_it_expires(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    guest = legacy_peer("George", authenticated=True, method="pin",
                        extra={"granted": "guest", "granted_expires": 2000})
    member = legacy_peer("TV", authenticated=True, method="pin", extra={"granted": "member"})
    given = legacy_peer("Host", authenticated=True, method="pin",
                        extra={"standing": "member", "standing_expires": None})
    for p in (guest, member, given):
        ks.add_peer(p)
    grant = store.peer_grant(ks, bytes.fromhex(guest.id), 1000)
    assert grant is not None and grant.role is Role.GUEST and grant.seconds == 1000
    assert store.peer_grant(ks, bytes.fromhex(guest.id), 2000) is None
    member_grant = store.peer_grant(ks, bytes.fromhex(member.id), 1000)
    assert member_grant is not None and member_grant.role is Role.MEMBER
    assert store.peer_grant(ks, bytes.fromhex(given.id), 1000) is None  # their grant to us
    assert [m.name for m in store.cloud_members(ks)] == ["Paul", "TV"]


def test_an_old_clear_pairing_is_flagged_and_not_trusted(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    old = legacy_peer("Speaker", authenticated=True, method="clear")
    checked = legacy_peer("Lamp", authenticated=True, method="clear",
                          extra={"link_mitm": True})
    pinned = legacy_peer("TV", authenticated=True, method="pin")
    for p in (old, checked, pinned):
        ks.add_peer(p)
    rows = {r["name"]: r for r in store.peer_rows(ks)}
    assert rows["Speaker"]["authenticated"] is False
    assert "pair again" in rows["Speaker"]["warning"]
    assert rows["Lamp"]["authenticated"] is True and rows["Lamp"]["warning"] is None
    assert rows["TV"]["authenticated"] is True and rows["TV"]["warning"] is None
    known = store.known_peer(ks, bytes.fromhex(old.id))
    assert known is not None and known.authenticated is False  # what resume will carry on


def test_consuming_a_prekey_is_durable_and_happens_once(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    peer = legacy_peer("George", authenticated=True, method="pin",
                       our_prekeys=[[b"d" * 16, b"p" * 32], [b"e" * 16, b"q" * 32]])
    ks.add_peer(peer)
    ks.save()
    device = bytes.fromhex(peer.id)
    assert store.consume_our_prekey(ks, device, b"d" * 16) is True
    assert store.consume_our_prekey(ks, device, b"d" * 16) is False  # a replay
    # on disk, for the next host process
    again = Keystore.open(ks.path, KEYSTORE_PIN)
    assert [bytes(r[0]) for r in again.get_peer(peer.id).our_prekeys] == [b"e" * 16]
    assert store.consume_our_prekey(again, device, b"d" * 16) is False
    assert store.consume_our_prekey(again, b"\x00" * 16, b"e" * 16) is False  # unknown peer


def test_a_peer_named_like_another_devices_id_is_never_taken_for_it(tmp_path: Path) -> None:
    """A guest may pick any name, another device's id included.  A device is looked up by its
    id exactly (issue 13 made these lookups constant time): the one *named* like it lends it
    neither its grant nor its record, though a person's lookup by name still finds it."""
    ks = keystore(tmp_path)
    _, x_public = x25519_keypair(os.urandom)
    x_id = digest(x_public)  # a device this host has never met
    impostor = legacy_peer(x_id.hex(), authenticated=True, method="pin",
                           extra={"granted": "member"},
                           our_prekeys=[(b"d" * 16, b"k" * 32)])
    ks.add_peer(impostor)
    ks.save()
    assert store.peer_grant(ks, x_id, time.time()) is None
    assert store.known_peer(ks, x_id) is None
    assert store.consume_our_prekey(ks, x_id, b"d" * 16) is False
    assert len(ks.get_peer(impostor.id).our_prekeys) == 1  # the impostor's record untouched
    assert ks.peer_by_id(x_id.hex()) is None and ks.peer_by_id(impostor.id) == impostor
    assert ks.get_peer(x_id.hex()).id == impostor.id  # by name, for people, as before
    assert store.peer_grant(ks, bytes.fromhex(impostor.id), time.time()) is not None
