"""The key server's SQLite store: schema versions, intents across processes, sealed keys."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest

from pairkit.keyserver.store import (
    SCHEMA_VERSION,
    Matched,
    Pending,
    Sealer,
    StoreError,
    TtpStore,
    migrate,
)
from pairkit.pairing.cpns import KeySource, ServerInventory, ServerMember, SetupType
from pairkit.pairing.errors import (
    AuthenticationError,
    NotFoundError,
    RefusedError,
    UnusableKeyError,
)
from pairkit.pairing.ttp import DeviceRecord, IntentRole
from tests.pn_store_harness import check_pns_kept_under_their_gateways
from tests.revoke_harness import check_a_revoked_ids_row_is_not_served, check_revoke

A, B, C, D = (bytes([n]) * 16 for n in (1, 2, 3, 4))
CTX = b"\x09" * 32


def rec(device_id: bytes, name: str = "d") -> DeviceRecord:
    # the store does not recompute ids (the server did when it checked the proof)
    # (a signing key of large order: the store refuses the small-order ones)
    return DeviceRecord(device_id, name, device_id * 2, b"\x05" * 32)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def store_at(path: Path, key: bytes) -> TtpStore:
    return TtpStore(path, Sealer(key))


def test_fresh_database_is_at_the_latest_version_in_wal_mode(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        s.close()


def test_migration_keeps_data(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, upto=1) == 0
    db.execute("INSERT INTO devices VALUES (?, 'old', ?, ?, NULL, 1, 1)",
               (A, b"\x01" * 32, b"\x00" * 32))
    db.close()
    s = store_at(path, key)
    try:
        assert s.device(A).name == "old"
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.pn_keys() == []  # the later versions' tables exist
    finally:
        s.close()


def test_a_newer_database_is_refused(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer than this pairkit"):
        store_at(path, key)


def test_enrol_refresh_keeps_the_eukey(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        assert s.enrol(rec(A, "first"), b"\x05" * 32, 1.0) is False
        assert s.enrol(rec(A, "second"), None, 2.0) is True
        assert s.device(A).name == "second"
        assert s.eukeys((A, B)) == {A: b"\x05" * 32}
    finally:
        s.close()


def test_intents_match_across_two_processes_sharing_the_file(tmp_path: Path, key: bytes) -> None:
    one, two = store_at(tmp_path / "db", key), store_at(tmp_path / "db", key)
    try:
        for s in (one,):
            s.enrol(rec(A), None, 0)
            s.enrol(rec(B), None, 0)
        waiting = one.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=10)
        assert isinstance(waiting, Pending)
        assert one.take_match(waiting.row) is None
        matched = two.post_intent(B, A, CTX, IntentRole.GUEST, now=1, expires=11)
        assert isinstance(matched, Matched) and matched.partner_row == waiting.row
        sk, match_id = one.take_match(waiting.row)
        assert (sk, match_id) == (matched.sk, matched.match_id)
        assert one.pending_count() == 0
    finally:
        one.close()
        two.close()


def test_an_intent_left_by_a_process_that_died_is_not_matched(tmp_path: Path, key: bytes) -> None:
    """Server process one stores A's intent and dies (it stops renewing its lease); B's
    intent, through process two once one's lease ran out, waits instead of taking a key that
    A would never receive, and A's retry through process two meets it."""
    path = tmp_path / "db"
    one, two = store_at(path, key), store_at(path, key)
    p1, p2 = b"\x01" * 16, b"\x02" * 16
    try:
        for s in (one, two):
            s.enrol(rec(A), None, 0)
            s.enrol(rec(B), None, 0)
        one.lease(p1, 0, 15)
        two.lease(p2, 0, 15)
        # the control: while one holds its lease, its intents are matched as ever
        assert isinstance(one.post_intent(A, C, CTX, IntentRole.HOST, now=1, expires=60,
                                          server=p1), Pending)
        two.enrol(rec(C), None, 0)
        assert isinstance(two.post_intent(C, A, CTX, IntentRole.GUEST, now=2, expires=60,
                                          server=p2), Matched)
        stale = one.post_intent(A, B, CTX, IntentRole.HOST, now=3, expires=60, server=p1)
        assert isinstance(stale, Pending)
        two.lease(p2, 20, 15)  # one was killed at 3: it renews no more; two does
        waiting = two.post_intent(B, A, CTX, IntentRole.GUEST, now=20, expires=60, server=p2)
        assert isinstance(waiting, Pending)
        retry = two.post_intent(A, B, CTX, IntentRole.HOST, now=21, expires=60, server=p2)
        assert isinstance(retry, Matched) and retry.partner_row == waiting.row
        taken = two.take_match(waiting.row)
        assert taken is not None and taken == (retry.sk, retry.match_id)
        # a process that stops cleanly gives its lease up at once
        two.end_lease(p2)
        left = two.post_intent(A, B, CTX, IntentRole.HOST, now=22, expires=60, server=p2)
        assert isinstance(left, Pending)
        assert isinstance(one.post_intent(B, A, CTX, IntentRole.GUEST, now=22, expires=60),
                          Pending)
    finally:
        one.close()
        two.close()


def test_no_match_for_expired_same_role_or_other_context(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        for d in (A, B):
            s.enrol(rec(d), None, 0)
        s.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=1)
        assert isinstance(s.post_intent(B, A, CTX, IntentRole.GUEST, now=2, expires=3), Pending)
        assert isinstance(s.post_intent(A, B, CTX, IntentRole.GUEST, now=2, expires=9), Pending)
        assert isinstance(
            s.post_intent(B, A, b"\x08" * 32, IntentRole.HOST, now=2, expires=9), Pending
        )
        assert s.purge(100) >= 1 and s.pending_count() == 0
    finally:
        s.close()


def test_an_identical_intent_replaces_the_older(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        for d in (A, B):
            s.enrol(rec(d), None, 0)
        old = s.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=9)
        new = s.post_intent(A, B, CTX, IntentRole.HOST, now=1, expires=9)
        assert isinstance(old, Pending) and isinstance(new, Pending)
        with pytest.raises(RefusedError, match="replaced"):
            s.take_match(old.row)
        assert s.cancel_intent(new.row) and not s.cancel_intent(new.row)
    finally:
        s.close()


def test_sealed_values_are_bound_to_their_row(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        s.enrol(rec(A), b"\x05" * 32, 0)
        s.enrol(rec(B), b"\x06" * 32, 0)
        s._db.execute(
            "UPDATE devices SET eukey_sealed = (SELECT eukey_sealed FROM devices "
            "WHERE device_id = ?) WHERE device_id = ?", (A, B),
        )
        with pytest.raises(AuthenticationError, match="did not open"):
            s.eukeys((B,))
    finally:
        s.close()
    other = store_at(tmp_path / "db", os.urandom(32))  # a wrong seal.key
    try:
        with pytest.raises(AuthenticationError):
            other.eukeys((A,))
    finally:
        other.close()


def test_pn_inventory(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        for d in (A, B, C):
            s.enrol(rec(d, d.hex()[:2]), None, 0)
        pn = b"\x77" * 16
        inv = ServerInventory(pn, A, "gw", SetupType.ALL, (
            ServerMember(B, "b", 1, ("music",), KeySource.LOCAL_EUKEY, b"\x0b" * 32),
        ))
        s.register_pn(inv, 1.0)
        assert s.pn_keys() == [(A, pn)]
        assert s.local_eukey(A, pn, B) == b"\x0b" * 32
        raw = s._db.execute("SELECT local_key_sealed FROM pn_members").fetchone()[0]
        assert b"\x0b" * 32 not in raw
        s.register_pn(ServerInventory(pn, A, "gw", SetupType.INVITED, (
            ServerMember(C, "c", 0, (), KeySource.PREASSIGNED, None),
        )), 2.0)
        row = s.pn(A, pn)
        assert row.setup_type is SetupType.INVITED
        assert [m["name"] for m in row.members] == ["b", "c"]
        with pytest.raises(NotFoundError):
            s.pn(B, pn)
    finally:
        s.close()


def test_a_pn_is_its_gateways(tmp_path: Path, key: bytes) -> None:
    """Gateway C registers A's PN id, with A's member B among its own (security finding 5 of
    the registration's wait review): C gets a PN of its own; A's keeps its name, setup type,
    members and keys; each reads, extends and keys its own.  A LocalEUKey moved to the other
    gateway's row of the same PN id and PNE does not open."""
    s = store_at(tmp_path / "db", key)
    try:
        for d in (A, B, C):
            s.enrol(rec(d, d.hex()[:2]), None, 0)
        pn = b"\x77" * 16
        s.register_pn(ServerInventory(pn, A, "gw", SetupType.ALL, (
            ServerMember(B, "b", 1, (), KeySource.LOCAL_EUKEY, b"\x0a" * 32),
        )), 1.0)
        s.register_pn(ServerInventory(pn, C, "thief", SetupType.ONE_TO_ONE, (
            ServerMember(B, "b?", 1, (), KeySource.LOCAL_EUKEY, b"\x0c" * 32),
        )), 2.0)
        s.register_pn(ServerInventory(pn, A, "gw", SetupType.ALL, (
            ServerMember(D, "d", 0, (), KeySource.PREASSIGNED, None),
        )), 3.0)
        assert s.pn_keys() == [(A, pn), (C, pn)]
        mine, theirs = s.pn(A, pn), s.pn(C, pn)
        assert (mine.gw_id, mine.gw_name, mine.setup_type) == (A, "gw", SetupType.ALL)
        assert [m["name"] for m in mine.members] == ["b", "d"]
        assert (theirs.gw_id, theirs.gw_name, theirs.setup_type) == (
            C, "thief", SetupType.ONE_TO_ONE)
        assert [m["name"] for m in theirs.members] == ["b?"]
        assert s.local_eukey(A, pn, B) == b"\x0a" * 32
        assert s.local_eukey(C, pn, B) == b"\x0c" * 32
        assert s.local_eukey(C, pn, D) is None
        s._db.execute(
            "UPDATE pn_members SET local_key_sealed = (SELECT local_key_sealed FROM pn_members "
            "WHERE gw_id = ? AND pn_id = ? AND pne_id = ?) WHERE gw_id = ? AND pn_id = ? "
            "AND pne_id = ?", (A, pn, B, C, pn, B),
        )
        with pytest.raises(AuthenticationError, match="did not open"):
            s.local_eukey(C, pn, B)
    finally:
        s.close()


def _sealed_before_4(key: bytes, value: bytes, pn_id: bytes, pne_id: bytes) -> bytes:
    """A LocalEUKey as the code before schema version 4 sealed it (to the PN id and PNE)."""
    return Sealer(key).seal(value, "local-eukey", pn_id, pne_id)


def test_migration_to_4_keeps_the_pns_under_their_gateways(tmp_path: Path, key: bytes) -> None:
    """A file of schema version 3 (its DDL, its rows written as the code before wrote them):
    it opens at version 4 with each PN and its members under their gateway, the LocalEUKeys
    sealed before still open, another gateway may register the same id, the owner extends
    its own, and deleting a gateway still deletes its PNs and their members (the foreign
    keys point at the renamed tables)."""
    path = tmp_path / "db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, upto=3) == 0
    for d in (A, B, C):
        db.execute("INSERT INTO devices VALUES (?, 'd', ?, ?, NULL, 1, 1)",
                   (d, d * 2, b"\x00" * 32))
    one, two = b"\x71" * 16, b"\x72" * 16
    for pn, gw in ((one, A), (two, C)):
        db.execute("INSERT INTO pns (pn_id, gw_id, gw_name, setup_type, created, updated) "
                   "VALUES (?, ?, ?, ?, 1, 1)", (pn, gw, f"gw {gw.hex()[:2]}", 1))
        db.execute("INSERT INTO pn_members (pn_id, pne_id, name, caps, contents, key_source, "
                   "local_key_sealed, joined) VALUES (?, ?, 'b', 1, '[]', ?, ?, 1)",
                   (pn, B, int(KeySource.LOCAL_EUKEY), _sealed_before_4(key, pn, pn, B)))
    db.close()
    s = store_at(path, key)
    try:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        check_pns_kept_under_their_gateways(s, gws=(A, C), member=B, ids=(one, two))
        assert s._db.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = " ".join(r[0] for r in s._db.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
        assert "_v4" not in tables
        s._db.execute("DELETE FROM devices WHERE device_id = ?", (A,))
        assert s.pn_keys() == [(C, two), (C, one)]  # the oldest first
        assert s._db.execute("SELECT count(*) FROM pn_members WHERE gw_id = ?",
                             (A,)).fetchone()[0] == 0
    finally:
        s.close()


@pytest.mark.parametrize("signing", [bytes(32), bytes([1]) + bytes(31)], ids=["zero", "neutral"])
def test_the_store_enrols_no_small_order_signing_key(
    tmp_path: Path, key: bytes, signing: bytes,
) -> None:
    """Whichever way a record comes (the connection's machine refuses it first): the server
    vouches for an enrolled key in ttp pairings and certificates (docs/security.md rule 1)."""
    s = store_at(tmp_path / "db", key)
    try:
        with pytest.raises(UnusableKeyError, match="signing key"):
            s.enrol(dataclasses.replace(rec(A), signing=signing), None, 0)
        assert s.device(A) is None
    finally:
        s.close()


def test_revoke(tmp_path: Path, key: bytes) -> None:
    s = store_at(tmp_path / "db", key)
    try:
        check_revoke(s)
    finally:
        s.close()


def test_a_revoked_ids_row_is_not_served(tmp_path: Path, key: bytes) -> None:
    def put_row(r: DeviceRecord, sealed: bytes) -> None:
        db = sqlite3.connect(tmp_path / "db")
        try:
            db.execute(
                "INSERT INTO devices (device_id, name, static_public, signing_public, "
                "eukey_sealed, enrolled_at, updated_at) VALUES (?, ?, ?, ?, ?, 3, 3)",
                (r.device_id, r.name, r.static, r.signing, sealed))
            db.commit()
        finally:
            db.close()

    s = store_at(tmp_path / "db", key)
    try:
        check_a_revoked_ids_row_is_not_served(s, put_row)
    finally:
        s.close()


def test_migration_to_5_keeps_the_devices_and_revokes(tmp_path: Path, key: bytes) -> None:
    """A file of schema version 4 with devices, a PN and an intent: it opens at version 5 with
    them all, a device can be revoked and stays revoked in the file (another store, a new
    process, refuses its enrolment)."""
    path = tmp_path / "db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, upto=4) == 0
    db.execute("PRAGMA foreign_keys = ON")
    for d in (A, B):
        db.execute("INSERT INTO devices VALUES (?, 'd', ?, ?, NULL, 1, 1)",
                   (d, d * 2, b"\x05" * 32))
    db.execute("INSERT INTO pns (gw_id, pn_id, gw_name, setup_type, created, updated) "
               "VALUES (?, ?, 'gw', 1, 1, 1)", (A, b"\x71" * 16))
    db.execute("INSERT INTO intents (owner, peer, context, role, created, expires) "
               "VALUES (?, ?, ?, 1, 1, 1e12)", (B, A, CTX))
    db.close()
    s = store_at(path, key)
    try:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert [d["id"] for d in s.devices()] == [A.hex(), B.hex()] and s.revoked() == []
        done = s.revoke(A, 9.0)
        assert (done.intents, done.pns) == (1, 1)
    finally:
        s.close()
    again = store_at(path, key)
    try:
        assert again.revoked() == [{"id": A.hex(), "name": "d", "revoked_at": 9.0}]
        with pytest.raises(RefusedError, match="revoked"):
            again.enrol(rec(A), None, 10.0)
        assert again.device(A) is None and again.device(B) is not None
    finally:
        again.close()


def test_migration_to_6_keeps_the_name_a_device_had_as_its_first(
    tmp_path: Path, key: bytes,
) -> None:
    """A device enrolled before schema version 6 has no first name stored: it is shown as
    its name, and the name it had when it first enrols again under another is kept as its
    first (atk20r 1: the administrator sees the rename)."""
    path = tmp_path / "db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, upto=5) == 0
    db.execute("INSERT INTO devices VALUES (?, 'scale', ?, ?, NULL, 1, 1)",
               (A, A * 2, b"\x05" * 32))
    db.close()
    s = store_at(path, key)
    try:
        assert [(d["name"], d["first_name"]) for d in s.devices()] == [("scale", "scale")]
        assert s.enrol(rec(A, "kitchen tv"), None, 2.0) is True
        assert s.enrol(rec(A, "hall tv"), None, 3.0) is True
        assert [(d["name"], d["first_name"]) for d in s.devices()] == [("hall tv", "scale")]
        assert s.first_name(A) == "scale" and s.first_name(B) is None
    finally:
        s.close()
