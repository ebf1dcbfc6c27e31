"""The keystore never writes what it cannot read (issue 17, finding 9): limits on its growth.

Old guests are forgotten at the next save once their grant ended more than
:data:`peers.GUEST_RETENTION` ago (members, open grants and devices a group names are kept),
prekeys are bounded per peer and in all, and a keystore that would still grow past what it can
open again is refused with the next step.  Real keystore files; a save here is the one a host
or a guest makes after each pairing (:func:`peers.save_session`).
``tests/attacks/test_attack_keystore_growth.py`` plays the same through real processes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from pairkit import peers as store
from pairkit.keystore import MAX_FILE_SIZE, Argon2Params, Keystore, Peer
from pairkit.pairing.cloud import Role
from pairkit.pairing.crypto import digest, x25519_keypair
from pairkit.pairing.errors import KeystoreError
from pairkit.pairing.methods import Prekey, Session
from pairkit.pairing.methods.common import PeerInfo
from pairkit.pairing.negotiation import Method

PIN = "246813"
DAY = 24 * 3600.0
NOW = 1_800_000_000.0
LONG_AGO = NOW - store.GUEST_RETENTION - DAY


@pytest.fixture
def ks(tmp_path: Path) -> Keystore:
    return Keystore.create(tmp_path / "keystore.pk", PIN, name="Paul",
                           kdf=Argon2Params.cheapest())


def peer(name: str, *, seen: float = LONG_AGO, **extra: Any) -> Peer:
    _, public = x25519_keypair(os.urandom)
    return Peer(id=digest(public).hex(), name=name, static_public=public,
                signing_public=os.urandom(32), authenticated=True, method="pin",
                first_seen=seen, last_seen=seen, extra=extra)


def session_of(p: Peer, method: Method = Method.PIN, *, prekeys: int = 0) -> Session:
    info = PeerInfo(bytes.fromhex(p.id), p.name, p.static_public, p.signing_public or bytes(32),
                    authenticated=True)
    ours = tuple(Prekey(os.urandom(16), os.urandom(32)) for _ in range(prekeys))
    theirs = tuple(os.urandom(16) for _ in range(prekeys))
    return Session(method=method, initiator=False, peer=info, send_key=bytes(32),
                   recv_key=bytes(32), fingerprint="0000-0000", new_our_prekeys=ours,
                   new_their_prekeys=theirs, replace_prekeys=method.label not in ("resume", "kk"))


def save(ks: Keystore, p: Peer, method: Method = Method.PIN, **kw: Any) -> None:
    store.save_session(ks, session_of(p, method, **kw), address="a", transport="tcp",
                       wall_now=NOW)


def names_on_disk(ks: Keystore) -> set[str]:
    return {p.name for p in Keystore.open(ks.path, PIN).peers()}


# -- old guests ----------------------------------------------------------------------------------


def test_old_guests_are_forgotten_at_the_next_save_and_nothing_else(ks: Keystore) -> None:
    ended = LONG_AGO - DAY
    records = [
        peer("old guest", granted="guest", granted_expires=ended),
        peer("old host we visited", standing="guest", standing_expires=ended),
        peer("old both ways", granted="guest", granted_expires=ended,
             standing="guest", standing_expires=ended),
        # kept:
        peer("recent guest", granted="guest", granted_expires=NOW - DAY, seen=NOW - 2 * DAY),
        peer("seen lately", granted="guest", granted_expires=ended, seen=NOW - DAY),
        peer("member", granted="member"),
        peer("made us a member", standing="member"),
        peer("guest here, member there", granted="guest", granted_expires=ended,
             standing="member"),
        peer("open guest grant", granted="guest", granted_expires=None),
        peer("earlier version", role="guest", expires=ended),
        peer("no grant at all"),
        peer("a group's door", granted="guest", granted_expires=ended),
        peer("a group's relay", granted="guest", granted_expires=ended),
        peer("pinned controller", standing="guest", standing_expires=ended),
    ]
    with ks.update():
        for r in records:
            ks.add_peer(r)
        by_name = {r.name: r for r in records}
        door, relay = by_name["a group's door"], by_name["a group's relay"]
        ks.set_setting("groups.controller", {"doors": {"epoch": 1, "members": {
            door.id: {"name": "door", "via": relay.id, "delivered": 1}}}})
        ks.set_setting("groups.pins", {"lamps": by_name["pinned controller"].id})
    assert len(names_on_disk(ks)) == len(records)  # nothing is dropped until a pairing saves

    george = peer("George", seen=NOW)
    save(ks, george)
    expected = {r.name for r in records[3:]} | {"George"}
    assert names_on_disk(ks) == expected
    assert {p.name for p in ks.peers()} == expected


def test_a_device_a_relay_holds_an_envelope_for_is_kept(ks: Keystore) -> None:
    """A relay's queue keeps encoded envelopes; the member's id is inside their bytes."""
    member = peer("door", granted="guest", granted_expires=LONG_AGO - DAY)
    with ks.update():
        ks.add_peer(member)
        ks.set_setting("groups.relay", [b"\xa5envelope" + bytes.fromhex(member.id) + b"rest"])
    save(ks, peer("George", seen=NOW))
    assert "door" in names_on_disk(ks)


# -- prekeys -------------------------------------------------------------------------------------


def test_a_peer_that_keeps_sending_full_batches_is_kept_to_its_bound(ks: Keystore) -> None:
    """16 prekeys (the most a message carries) at every resume, 10 times: 32 kept each way,
    the newest."""
    george = peer("George", seen=NOW, granted="member")
    save(ks, george, prekeys=16)
    last: Session | None = None
    for _ in range(10):
        last = session_of(george, Method.RESUME, prekeys=16)
        store.save_session(ks, last, address="a", transport="tcp", wall_now=NOW)
    record = Keystore.open(ks.path, PIN).get_peer(george.id)
    assert len(record.their_prekeys) == len(record.our_prekeys) == store.MAX_PREKEYS_PER_PEER
    assert last is not None
    assert set(last.new_their_prekeys) <= set(record.their_prekeys)  # the newest are kept


def test_an_oversized_record_from_elsewhere_is_cut_to_the_bound_at_the_next_save(
    ks: Keystore,
) -> None:
    """A record written by another program (or an earlier version) with 500 prekeys."""
    bloated = dataclasses.replace(
        peer("bloated", granted="member"),
        their_prekeys=[os.urandom(16) for _ in range(500)],
        our_prekeys=[[os.urandom(16), os.urandom(32)] for _ in range(500)],
    )
    with ks.update():
        ks.add_peer(bloated)
    save(ks, peer("George", seen=NOW))
    record = Keystore.open(ks.path, PIN).get_peer(bloated.id)
    assert len(record.their_prekeys) == len(record.our_prekeys) == store.MAX_PREKEYS_PER_PEER
    assert record.their_prekeys == tuple(bloated.their_prekeys[-store.MAX_PREKEYS_PER_PEER:])


def test_prekeys_in_all_are_bounded_and_the_least_recently_seen_lose_theirs(
    ks: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "MAX_PREKEYS_TOTAL", 200)  # 64 per peer: 3 peers fit
    olds = [peer(f"member {i}", seen=NOW - (10 - i) * DAY, granted="member") for i in range(5)]
    for p in olds:
        save(ks, p, prekeys=32)  # each save is bounded as it happens
    on_disk = Keystore.open(ks.path, PIN)
    held = {p.name: len(p.their_prekeys) + len(p.our_prekeys) for p in on_disk.peers()}
    assert sum(held.values()) <= 200
    # Each save's peer keeps its prekeys; the least recently seen lose theirs first.
    assert held["member 4"] == held["member 3"] == held["member 2"] == 64
    assert held["member 0"] == held["member 1"] == 0
    assert {p.name for p in on_disk.peers()} == {p.name for p in olds}  # nobody is forgotten


# -- the limit itself ----------------------------------------------------------------------------


def fill_to(ks: Keystore, size: int) -> None:
    """Pad the keystore (a setting of filler bytes) so that its sealed file is ``size`` bytes."""
    with ks.update():
        ks.set_setting("filler", bytes(size // 2))
    for _ in range(3):  # the CBOR length's own size moves by a few bytes: settle
        missing = size - ks.path.stat().st_size
        with ks.update():
            ks.set_setting("filler", bytes(len(ks.setting("filler")) + missing))
    assert ks.path.stat().st_size == size


def test_a_keystore_near_the_limit_refuses_a_new_peer_with_the_next_step(ks: Keystore) -> None:
    fill_to(ks, MAX_FILE_SIZE - 64)
    before = ks.path.read_bytes()
    with pytest.raises(KeystoreError) as caught:
        save(ks, peer("George", seen=NOW))
    message = str(caught.value)
    assert "nothing was saved" in message
    assert "`pairkit peers`" in message and "`pairkit forget PEER`" in message
    assert ks.path.read_bytes() == before
    # The update that failed changed nothing in memory either, and the keystore opens.
    assert ks.peers() == () and Keystore.open(ks.path, PIN).peers() == ()


# -- the same, save after save (issue 13: the tally kept between saves) --------------------------


def test_a_guest_is_forgotten_once_its_time_comes_though_nothing_else_changed(
    tmp_path: Path,
) -> None:
    """The records' tally is kept between saves; the clock moving on alone must still let an
    old guest go at the next save, as going through every record would."""
    ks = Keystore.create(tmp_path / "k.pk", PIN, name="host", kdf=Argon2Params.cheapest())
    old = peer("visitor", seen=NOW)
    store.save_session(ks, session_of(old), address="a", transport="tcp", wall_now=NOW,
                       granted=Role.GUEST, granted_expires=int(NOW + DAY))
    for i in range(3):  # saves that change nothing for the visitor
        store.save_session(ks, session_of(peer(f"member {i}", seen=NOW)), address="a",
                           transport="tcp", wall_now=NOW + i)
    assert "visitor" in names_on_disk(ks)
    later = NOW + DAY + store.GUEST_RETENTION + 1
    store.save_session(ks, session_of(peer("late", seen=later)), address="a", transport="tcp",
                       wall_now=later)
    assert "visitor" not in names_on_disk(ks)
    assert {"member 0", "member 1", "member 2", "late"} <= names_on_disk(ks)


def test_an_ended_guest_another_process_saved_is_forgotten_at_our_next_save(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.pk"
    ks = Keystore.create(path, PIN, name="host", kdf=Argon2Params.cheapest())
    save(ks, peer("first", seen=NOW))
    other = Keystore.open(path, PIN)
    with other.update():
        other.add_peer(peer("old guest", granted="guest", granted_expires=LONG_AGO - DAY))
    save(ks, peer("second", seen=NOW))
    assert names_on_disk(ks) == {"first", "second"}


def test_prekeys_stay_bounded_save_after_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "MAX_PREKEYS_TOTAL", 40)
    ks = Keystore.create(tmp_path / "k.pk", PIN, name="host", kdf=Argon2Params.cheapest())
    for i in range(8):
        save(ks, peer(f"guest {i}", seen=NOW + i), prekeys=8)  # 16 each, both ways
        on_disk = Keystore.open(ks.path, PIN).peers()
        assert sum(len(p.their_prekeys) + len(p.our_prekeys) for p in on_disk) <= 40
        newest = next(p for p in on_disk if p.name == f"guest {i}")
        assert len(newest.their_prekeys) == len(newest.our_prekeys) == 8  # the one just saved
