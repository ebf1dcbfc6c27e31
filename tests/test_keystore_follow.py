"""A host follows its keystore (issue 17, finding 4; docs/security.md, rule 4).

Two :class:`Keystore` objects opened on one file stand for two pairkit processes on one device
(the file, its lock and its atomic replace are the real ones): a running host, and a ``pairkit
forget`` or another host.  ``tests/attacks/test_attack_forget_reaches_host.py`` plays the same
with real processes; here the races that a test between processes cannot time are played
step by step: another process saves between the host's decision and the host's own save.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from pairkit import peers as store
from pairkit.keystore import Argon2Params, Keystore, Peer
from pairkit.pairing.cloud import Role
from pairkit.pairing.crypto import digest, x25519_keypair
from pairkit.pairing.errors import KeystoreError, NotFoundError, RefusedError
from pairkit.pairing.methods import Session
from pairkit.pairing.methods.common import PeerInfo
from pairkit.pairing.negotiation import Method

PIN = "246813"
HOUR = 3600.0
NOW = 1_800_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "keystore.pk"
    Keystore.create(p, PIN, name="Paul", kdf=Argon2Params.cheapest())
    return p


def george(**extra: object) -> Peer:
    _, public = x25519_keypair(os.urandom)
    return Peer(id=digest(public).hex(), name="George", static_public=public,
                signing_public=os.urandom(32), authenticated=True, method="pin",
                extra=dict(extra))


def add(ks: Keystore, peer: Peer) -> None:
    with ks.update():
        ks.add_peer(peer)


def session_of(peer: Peer, method: Method) -> Session:
    """What a confirmed session with ``peer`` hands to save_session (keys are not used)."""
    info = PeerInfo(bytes.fromhex(peer.id), peer.name, peer.static_public, peer.signing_public,
                    authenticated=True)
    return Session(method=method, initiator=False, peer=info, send_key=bytes(32),
                   recv_key=bytes(32), fingerprint="0000-0000", replace_prekeys=False)


def on_disk(path: Path) -> set[str]:
    return {p.name for p in Keystore.open(path, PIN).peers()}


def test_follow_takes_what_another_process_saved_and_nothing_else(path: Path) -> None:
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    assert host.follow() is False  # nothing changed: one short read
    peer = george(granted="guest", granted_expires=NOW + HOUR)
    add(other, peer)
    assert host.follow() is True
    assert host.get_peer(peer.id) == peer
    assert host.follow() is False
    with other.update():
        other.forget_peer("George")
    assert store.known_peer(host, bytes.fromhex(peer.id)) is None  # the lookup follows
    # the host's own saves are not news to it
    add(host, george())
    assert host.follow() is False


def test_a_keystore_put_back_to_bytes_followed_before_a_later_save_is_read_again(
    path: Path,
) -> None:
    """A host followed its keystore (nothing changed: its header's bytes as last seen); another
    process saves (a peer added), the host follows it; then an older copy, the very bytes the
    host had followed, is put back.  The host must read it again (its nonce is not the one the
    host holds now): a follow that skipped its header's parse on bytes seen before, without the
    header they were seen against (issue 13, session 13), would keep the peer the file no
    longer holds, and write it back with the host's next save."""
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    assert host.follow() is False
    older = path.read_bytes()
    peer = george()
    add(other, peer)
    assert host.follow() is True and host.get_peer(peer.id) == peer
    path.write_bytes(older)
    assert host.follow() is True
    assert all(p.id != peer.id for p in host.peers())
    assert host.follow() is False


def test_every_lookup_a_decision_rests_on_follows(path: Path) -> None:
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    member = george(granted="member")
    add(other, member)
    device = bytes.fromhex(member.id)
    assert store.known_peer(host, device) is not None
    with other.update():
        other.add_peer(dataclasses.replace(member, extra={}))  # the grant withdrawn
    assert store.peer_grant(host, device, NOW) is None
    assert [m.name for m in store.cloud_members(host)] == ["Paul"]
    with other.update():
        other.add_peer(member)  # given again
    grant = store.peer_grant(host, device, NOW)
    assert grant is not None and grant.role is Role.MEMBER
    assert [m.name for m in store.cloud_members(Keystore.open(path, PIN))] == ["Paul", "George"]
    with other.update():
        other.forget_peer("George")
    assert store.find_peer(host, "George") is None
    assert [m.name for m in store.cloud_members(host)] == ["Paul"]


@pytest.mark.parametrize("method", [Method.RESUME, Method.KK])
def test_a_peer_forgotten_while_it_resumed_is_not_written_back(path: Path, method: Method) -> None:
    """The host decided on George (known, granted), then ``pairkit forget George`` ran, then the
    host stores the session: it refuses, and George stays forgotten."""
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    peer = george(granted="guest", granted_expires=NOW + HOUR)
    add(host, peer)
    assert store.known_peer(host, bytes.fromhex(peer.id)) is not None  # the decision
    with other.update():
        other.forget_peer("George")
    with pytest.raises(RefusedError, match="forgotten on this device"):
        store.save_session(host, session_of(peer, method), address="a", transport="tcp",
                           granted=Role.GUEST, granted_expires=int(NOW + HOUR), wall_now=NOW,
                           stored_grant=True)
    assert on_disk(path) == set()
    with pytest.raises(NotFoundError):
        host.get_peer(peer.id)  # nor kept in the host's memory


def test_a_grant_withdrawn_while_the_guest_came_back_is_not_written_back(path: Path) -> None:
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    peer = george(granted="member")
    add(host, peer)
    assert store.peer_grant(host, bytes.fromhex(peer.id), NOW) is not None  # the decision
    with other.update():
        other.add_peer(dataclasses.replace(peer, extra={"granted": "guest",
                                                        "granted_expires": NOW + 60}))
    with pytest.raises(RefusedError, match="withdrawn"):
        store.save_session(host, session_of(peer, Method.RESUME), address="a", transport="tcp",
                           granted=Role.MEMBER, wall_now=NOW, stored_grant=True)
    assert Keystore.open(path, PIN).get_peer(peer.id).extra["granted"] == "guest"


def test_a_new_pairing_or_an_owners_answer_is_stored_as_decided(path: Path) -> None:
    """A full pairing, or an owner who was asked just now, is a newer decision than the other
    process's: it is stored (a forgotten peer that pairs again by PIN is known again)."""
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    peer = george(granted="guest", granted_expires=NOW + HOUR)
    add(host, peer)
    with other.update():
        other.forget_peer("George")
    store.save_session(host, session_of(peer, Method.PIN), address="a", transport="tcp",
                       granted=Role.MEMBER, wall_now=NOW)
    assert Keystore.open(path, PIN).get_peer(peer.id).extra["granted"] == "member"


def test_the_hosts_save_after_a_forget_does_not_bring_the_peer_back(path: Path) -> None:
    """The host saves (another guest, a prekey used) between the forget and any lookup of
    its own: the save reads the file again under the lock first."""
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    gone = george()
    add(host, gone)
    with other.update():
        other.forget_peer("George")
    ringo = dataclasses.replace(george(), name="Ringo")
    store.save_session(host, session_of(ringo, Method.PIN), address="a", transport="tcp",
                       wall_now=NOW)
    assert on_disk(path) == {"Ringo"}


def test_changes_not_saved_are_never_dropped_by_follow(path: Path) -> None:
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    host.rename("Paul's laptop")  # in memory only
    assert host.follow() is False  # the file did not change: nothing to decide
    add(other, george())
    with pytest.raises(KeystoreError, match="changes not saved"):
        host.follow()
    assert host.name == "Paul's laptop"
    host.reload()  # said explicitly: the stored keystore wins
    assert host.name == "Paul" and [p.name for p in host.peers()] == ["George"]
    assert host.follow() is False


def test_a_failed_update_changes_nothing(path: Path) -> None:
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    with pytest.raises(RuntimeError), host.update():
        host.add_peer(george())
        raise RuntimeError("a bug halfway")
    assert host.peers() == () and on_disk(path) == set()
    add(other, george())
    assert host.follow() is True  # not stuck on the dropped change


def test_follow_inside_an_update_reads_nothing_and_does_not_wait_for_its_own_lock(
    path: Path,
) -> None:
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    add(other, george())
    with host.update():
        assert host.follow() is False  # the lock is held: a second flock would wait forever
        assert [p.name for p in host.peers()] == ["George"]


def test_a_keystore_replaced_meanwhile_stops_every_decision(path: Path) -> None:
    host = Keystore.open(path, PIN)
    Keystore.create(path, PIN, name="Mallory", kdf=Argon2Params.cheapest(), overwrite=True)
    with pytest.raises(KeystoreError, match=r"PIN was changed|another identity"):
        store.known_peer(host, bytes(16))
    path.unlink()
    with pytest.raises(KeystoreError, match="gone"):
        store.peer_grant(host, bytes(16), NOW)


def test_the_prekey_index_matches_a_scan_of_the_records_after_every_change(path: Path) -> None:
    """``peers.peer_by_prekey`` (a resume's guest, docs/protocol.md §8) keeps an index that it
    updates record by record; after each change, made here or by another process (prekeys
    consumed or given, a record replaced, added, forgotten, a digest put in two records), it
    finds what a scan of every record finds: the one holder, or nobody for a digest held twice
    or by no one."""
    host, other = Keystore.open(path, PIN), Keystore.open(path, PIN)
    rng = random.Random(22)
    made: list[bytes] = []

    def prekeys(n: int) -> list[tuple[bytes, bytes]]:
        out = [(os.urandom(16), os.urandom(32)) for _ in range(n)]
        made.extend(d for d, _ in out)
        return out

    for step in range(60):
        ks = host if step % 3 else other  # a third of the changes by the other process
        with ks.update():
            records = ks.peers()
            move = rng.choice(["add", "consume", "give", "forget", "share"] if records else ["add"])
            if move == "add":
                ks.add_peer(dataclasses.replace(george(), our_prekeys=prekeys(rng.randint(0, 4))))
            else:
                record = rng.choice(records)
                ours = list(record.our_prekeys)
                if move == "consume" and ours:
                    ours.pop(rng.randrange(len(ours)))
                elif move == "give":
                    ours += prekeys(1)
                elif move == "share":  # a digest another record holds (damaged, edited)
                    donor = rng.choice(records)
                    ours += list(donor.our_prekeys[:1])
                if move == "forget":
                    ks.forget_peer(record.id)
                else:
                    ks.add_peer(dataclasses.replace(record, our_prekeys=ours))
        host.follow()
        known = [store.known_peer(host, bytes.fromhex(p.id)) for p in host.peers()]
        for d in made:
            holders = {k.device_id for k in known
                       if k is not None and any(p.digest == d for p in k.our_prekeys)}
            found = store.peer_by_prekey(host, d)
            expected = next(iter(holders)) if len(holders) == 1 else None
            assert (found.device_id if found else None) == expected, (step, move)
