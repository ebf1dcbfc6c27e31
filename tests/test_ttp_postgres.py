"""The key server on a real PostgreSQL 15 (``--db postgresql://...``): the store's contract,
concurrent writers, and real server processes sharing one database, one of them killed -9.

The cluster is started once per session by tests/pg_harness.py (as the ``postgres`` user when
the tests run as root); every test gets its own empty database.  Skipped, with the reason, where
no PostgreSQL can be started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pairkit.keyserver.certs import init_server_dir
from pairkit.keyserver.store import Matched, Pending, Sealer, StoreError, open_store
from pairkit.pairing.cpns import KeySource, ServerInventory, ServerMember, SetupType
from pairkit.pairing.errors import AuthenticationError, NotFoundError, PairingError, RefusedError
from pairkit.pairing.ttp import DeviceRecord, IntentRole
from pairkit.ttp import enrol, request_key
from tests.pg_harness import PgCluster, pg_url, postgres
from tests.pn_store_harness import check_pns_kept_under_their_gateways
from tests.revoke_harness import check_a_revoked_ids_row_is_not_served, check_revoke, revoke_cli
from tests.ttp_harness import ServeProcess, identity

__all__ = ["pg_url", "postgres"]

A, B, C = (bytes([n]) * 16 for n in (1, 2, 3))
CTX = b"\x09" * 32


def rec(device_id: bytes, name: str = "d") -> DeviceRecord:
    # (a signing key of large order: the store refuses the small-order ones)
    return DeviceRecord(device_id, name, device_id * 2, b"\x05" * 32)


def pg_store(url: str, key: bytes):  # type: ignore[no-untyped-def]
    from pairkit.keyserver.pgstore import PostgresStore

    return PostgresStore(url, Sealer(key))


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


# -- the store's contract, on PostgreSQL --------------------------------------------------------


def test_schema_is_migrated_once_and_a_newer_one_refused(pg_url: str, key: bytes) -> None:
    from pairkit.keyserver.pgstore import PG_SCHEMA_VERSION

    stores = [None, None, None]

    def open_one(i: int) -> None:
        stores[i] = pg_store(pg_url, key)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(s is not None for s in stores)  # three processes starting at once: one migrates
    s = stores[0]
    try:
        assert s.schema_version() == PG_SCHEMA_VERSION == 6
        assert s.pn_keys() == [] and s.device_count() == 0
        s._conn.execute("UPDATE pairkit_schema SET version = 99")
    finally:
        for one in stores:
            one.close()
    with pytest.raises(StoreError, match="newer than this pairkit"):
        pg_store(pg_url, key)


def test_enrol_match_replace_and_seal(pg_url: str, key: bytes) -> None:
    one, two = pg_store(pg_url, key), pg_store(pg_url, key)
    try:
        assert one.enrol(rec(A, "first"), b"\x05" * 32, 1.0) is False
        assert two.enrol(rec(A, "second"), None, 2.0) is True  # the EUKey is kept
        assert one.device(A).name == "second" and one.eukeys((A, B)) == {A: b"\x05" * 32}
        two.enrol(rec(B), b"\x06" * 32, 0)
        # an intent posted through one connection is matched through the other
        waiting = one.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=10)
        assert isinstance(waiting, Pending) and one.take_match(waiting.row) is None
        matched = two.post_intent(B, A, CTX, IntentRole.GUEST, now=1, expires=11)
        assert isinstance(matched, Matched) and matched.partner_row == waiting.row
        assert not one.cancel_intent(waiting.row)  # matched meanwhile: take it instead
        assert one.take_match(waiting.row) == (matched.sk, matched.match_id)
        with pytest.raises(RefusedError):  # delivered once: the row is gone
            two.take_match(waiting.row)
        # no match for the same role, another context, or an expired intent
        one.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=1)
        assert isinstance(two.post_intent(B, A, CTX, IntentRole.GUEST, now=2, expires=3), Pending)
        assert isinstance(two.post_intent(A, B, CTX, IntentRole.GUEST, now=2, expires=9), Pending)
        assert two.purge(100) >= 1 and one.pending_count() == 0
        # an identical intent replaces the older
        old = one.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=9)
        new = two.post_intent(A, B, CTX, IntentRole.HOST, now=1, expires=9)
        with pytest.raises(RefusedError, match="replaced"):
            one.take_match(old.row)
        assert one.cancel_intent(new.row) and not two.cancel_intent(new.row)
        # sealed values are bound to their row, and to the sealing key
        one._conn.execute(
            "UPDATE devices SET eukey_sealed = (SELECT eukey_sealed FROM devices "
            "WHERE device_id = %s) WHERE device_id = %s", (A, B),
        )
        with pytest.raises(AuthenticationError, match="did not open"):
            two.eukeys((B,))
    finally:
        one.close()
        two.close()
    other = pg_store(pg_url, os.urandom(32))
    try:
        with pytest.raises(AuthenticationError):
            other.eukeys((A,))
    finally:
        other.close()


def test_pn_inventory(pg_url: str, key: bytes) -> None:
    """As SQLite's: a PN is its gateway's (security finding 5 of the registration's wait
    review): C registering A's PN id, with A's member B, gets a PN of its own, and neither
    reads, changes nor keys the other's."""
    s = pg_store(pg_url, key)
    try:
        for d in (A, B, C):
            s.enrol(rec(d, d.hex()[:2]), None, 0)
        pn = b"\x77" * 16
        s.register_pn(ServerInventory(pn, A, "gw", SetupType.ALL, (
            ServerMember(B, "b", 1, ("music",), KeySource.LOCAL_EUKEY, b"\x0b" * 32),
        )), 1.0)
        assert s.pn_keys() == [(A, pn)] and s.local_eukey(A, pn, B) == b"\x0b" * 32
        raw = s._conn.execute("SELECT local_key_sealed FROM pn_members").fetchone()[0]
        assert b"\x0b" * 32 not in bytes(raw)
        s.register_pn(ServerInventory(pn, C, "thief", SetupType.ONE_TO_ONE, (
            ServerMember(B, "b?", 1, (), KeySource.LOCAL_EUKEY, b"\x0c" * 32),
        )), 2.0)
        s.register_pn(ServerInventory(pn, A, "gw", SetupType.INVITED, (
            ServerMember(C, "c", 0, (), KeySource.PREASSIGNED, None),
            ServerMember(B, "b2", 1, ("music",), KeySource.LOCAL_EUKEY, None),
        )), 3.0)
        row = s.pn(A, pn)
        assert (row.gw_name, row.setup_type) == ("gw", SetupType.INVITED)
        assert sorted(m["name"] for m in row.members) == ["b2", "c"]
        theirs = s.pn(C, pn)
        assert (theirs.gw_name, theirs.setup_type) == ("thief", SetupType.ONE_TO_ONE)
        assert [m["name"] for m in theirs.members] == ["b?"]
        assert s.pn_keys() == [(A, pn), (C, pn)]
        assert s.local_eukey(C, pn, B) == b"\x0c" * 32 and s.local_eukey(A, pn, B) is None
        with pytest.raises(NotFoundError):
            s.pn(B, pn)
    finally:
        s.close()


def test_migration_to_4_keeps_the_pns_under_their_gateways(pg_url: str, key: bytes) -> None:
    """A database of schema version 3 (its DDL, its rows written as the code before wrote
    them): it opens at version 4 with each PN and its members under their gateway, the
    LocalEUKeys sealed before still open, another gateway may register the same id, the owner
    extends its own, and deleting a gateway still deletes its PNs and their members."""
    import psycopg

    from pairkit.keyserver.pgstore import migrate_pg

    one, two = b"\x71" * 16, b"\x72" * 16
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate_pg(conn, upto=3) == 0
        for d in (A, B, C):
            conn.execute("INSERT INTO devices VALUES (%s, 'd', %s, %s, NULL, 1, 1)",
                         (d, d * 2, b"\x00" * 32))
        for pn, gw in ((one, A), (two, C)):
            conn.execute("INSERT INTO pns (pn_id, gw_id, gw_name, setup_type, created, "
                         "updated) VALUES (%s, %s, %s, 1, 1, 1)", (pn, gw, f"gw {gw.hex()[:2]}"))
            sealed = Sealer(key).seal(pn, "local-eukey", pn, B)  # as the code before sealed it
            conn.execute("INSERT INTO pn_members (pn_id, pne_id, name, caps, contents, "
                         "key_source, local_key_sealed, joined) VALUES (%s, %s, 'b', 1, '[]', "
                         "%s, %s, 1)", (pn, B, int(KeySource.LOCAL_EUKEY), sealed))
    s = pg_store(pg_url, key)
    try:
        assert s.schema_version() == 6
        # sealed again to their gateway as the store opened (the PN id scoping's review, 5)
        assert s._conn.execute("SELECT DISTINCT local_key_ad FROM pn_members").fetchall() == [
            (2,)]
        check_pns_kept_under_their_gateways(s, gws=(A, C), member=B, ids=(one, two))
        s._conn.execute("DELETE FROM devices WHERE device_id = %s", (A,))
        assert s.pn_keys() == [(C, two), (C, one)]  # the oldest first
        assert s._conn.execute("SELECT count(*) FROM pn_members WHERE gw_id = %s",
                               (A,)).fetchone()[0] == 0
    finally:
        s.close()


def test_a_match_is_announced_to_every_listening_process(pg_url: str, key: bytes) -> None:
    """Each server process listens; a match made through any connection wakes the waiting
    row's listener, and only once the match commits."""
    one, two = pg_store(pg_url, key), pg_store(pg_url, key)
    heard: list[int] = []
    got = threading.Event()

    def on_match(row: int) -> None:
        heard.append(row)
        got.set()

    halt = one.listen(on_match)
    assert halt is not None
    try:
        for d in (A, B):
            one.enrol(rec(d), None, 0)
        waiting = one.post_intent(A, B, CTX, IntentRole.HOST, now=0, expires=60)
        assert isinstance(two.post_intent(A, C, CTX, IntentRole.HOST, now=0, expires=60),
                          Pending)  # no match: nothing announced
        matched = two.post_intent(B, A, CTX, IntentRole.GUEST, now=1, expires=60)
        assert isinstance(matched, Matched)
        assert got.wait(10) and heard == [waiting.row]  # the unmatched post was not announced
    finally:
        halt()
        one.close()
        two.close()


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(
    pg_url: str, key: bytes, postgres: PgCluster
) -> None:
    import psycopg

    s = pg_store(pg_url, key)
    try:
        s.enrol(rec(A), None, 0)
        pid = s._conn.info.backend_pid
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError) as info:
            s.device(A)
        assert "postgresql://" not in str(info.value) and "PostgreSQL" in str(info.value)
        assert s.device(A) is not None  # connected again
    finally:
        s.close()


def test_a_database_that_cannot_be_reached_is_a_typed_error_without_the_password(
    tmp_path: Path, postgres: PgCluster
) -> None:
    d = init_server_dir(tmp_path / "srv")
    url = f"postgresql://postgres:hunter2@/no_such_db?host={postgres.socket_dir}"
    with pytest.raises(StoreError) as info:
        open_store(d.root, database=url)
    text = str(info.value)
    assert "hunter2" not in text and "no_such_db" in text and "cannot connect" in text
    with pytest.raises(PairingError, match="PostgreSQL URL"):
        open_store(d.root, database="mysql://x")


# -- concurrent writers -------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing_and_match_each_pair_once(
    pg_url: str, key: bytes
) -> None:
    """Four connections enrol 200 devices at once; then two connections post the two sides of
    100 pairs at the same instant, pair by pair (a barrier per pair): each pair is matched
    exactly once, and the waiting side takes the same key."""
    workers, per = 4, 50
    ids = [os.urandom(16) for _ in range(workers * per)]
    errors: list[BaseException] = []

    def enrol_some(part: list[bytes]) -> None:
        s = pg_store(pg_url, key)
        try:
            for i, device_id in enumerate(part):
                s.enrol(rec(device_id, f"n{i}"), os.urandom(32), float(i))
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=enrol_some, args=(ids[w * per:(w + 1) * per],))
               for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    check = pg_store(pg_url, key)
    try:
        assert check.device_count() == len(ids)
        pairs = list(zip(ids[0::2], ids[1::2], strict=True))[:100]
        barrier = threading.Barrier(2)
        outcomes: dict[tuple[int, str], Pending | Matched] = {}

        def post_side(side: str) -> None:
            s = pg_store(pg_url, key)
            try:
                for n, (x, y) in enumerate(pairs):
                    me, peer, role = (x, y, IntentRole.HOST) if side == "h" else (
                        y, x, IntentRole.GUEST)
                    barrier.wait(30)
                    outcomes[n, side] = s.post_intent(me, peer, CTX, role, now=0, expires=60)
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()
            finally:
                s.close()

        threads = [threading.Thread(target=post_side, args=(side,)) for side in "hg"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        keys = set()
        for n in range(len(pairs)):
            h, g = outcomes[n, "h"], outcomes[n, "g"]
            kinds = sorted(type(o).__name__ for o in (h, g))
            assert kinds == ["Matched", "Pending"], (n, kinds)  # never both left waiting
            matched, pending = (h, g) if isinstance(h, Matched) else (g, h)
            assert check.take_match(pending.row) == (matched.sk, matched.match_id)
            keys.add(matched.sk)
        assert len(keys) == len(pairs) and check.pending_count() == 0
    finally:
        check.close()


def test_revoke(pg_url: str, key: bytes) -> None:
    s = pg_store(pg_url, key)
    try:
        check_revoke(s)
    finally:
        s.close()


def test_a_revoked_ids_row_is_not_served(pg_url: str, key: bytes) -> None:
    import psycopg

    def put_row(r: DeviceRecord, sealed: bytes) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, name, static_public, signing_public, "
                "eukey_sealed, enrolled_at, updated_at) VALUES (%s, %s, %s, %s, %s, 3, 3)",
                (r.device_id, r.name, r.static, r.signing, sealed))

    s = pg_store(pg_url, key)
    try:
        check_a_revoked_ids_row_is_not_served(s, put_row)
    finally:
        s.close()


def test_migration_to_5_keeps_the_devices_and_revokes(pg_url: str, key: bytes) -> None:
    """A database of schema version 4 with devices, a PN and an intent: it opens at version 5
    with them, and a device revoked stays revoked for every store on the database."""
    import psycopg

    from pairkit.keyserver.pgstore import migrate_pg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate_pg(conn, upto=4) == 0
        for d in (A, B):
            conn.execute("INSERT INTO devices VALUES (%s, 'd', %s, %s, NULL, 1, 1)",
                         (d, d * 2, b"\x05" * 32))
        conn.execute("INSERT INTO pns (gw_id, pn_id, gw_name, setup_type, created, updated) "
                     "VALUES (%s, %s, 'gw', 1, 1, 1)", (A, b"\x71" * 16))
        conn.execute("INSERT INTO intents (owner, peer, context, role, created, expires) "
                     "VALUES (%s, %s, %s, 1, 1, 1e12)", (B, A, CTX))
    s, other = pg_store(pg_url, key), pg_store(pg_url, key)
    try:
        assert s.schema_version() == 6
        assert [d["id"] for d in s.devices()] == [A.hex(), B.hex()] and s.revoked() == []
        done = s.revoke(A, 9.0)
        assert (done.intents, done.pns) == (1, 1)
        assert other.revoked() == [{"id": A.hex(), "name": "d", "revoked_at": 9.0}]
        with pytest.raises(RefusedError, match="revoked"):
            other.enrol(rec(A), None, 10.0)
        assert other.device(A) is None and other.device(B) is not None
    finally:
        s.close()
        other.close()


def _until(done: Callable[[], bool]) -> None:
    for _ in range(3000):
        if done():
            return
        time.sleep(0.01)
    raise AssertionError("never happened")


def test_an_enrolment_racing_the_revoke_does_not_bring_the_device_back(
    pg_url: str, key: bytes
) -> None:
    """The holder of a device's key enrols it again and again, and posts intents with it,
    through other connections (other server processes) while the administrator revokes it:
    once the revoke is done the device is not enrolled, and no intent of it or toward it is
    left, whatever interleaving READ COMMITTED allowed."""
    setup = pg_store(pg_url, key)
    setup.enrol(rec(A, "lost"), os.urandom(32), 0.0)
    setup.enrol(rec(B, "b"), None, 0.0)
    stop = threading.Event()
    errors: list[BaseException] = []
    refused = [0]

    def hammer(kind: str) -> None:
        s = pg_store(pg_url, key)
        try:
            while not stop.is_set():
                try:
                    if kind == "enrol":
                        s.enrol(rec(A, "lost"), os.urandom(32), 1.0)
                    else:
                        ctx = os.urandom(32)
                        s.post_intent(A, B, ctx, IntentRole.HOST, now=1, expires=60)
                        s.post_intent(B, A, os.urandom(32), IntentRole.GUEST, now=1, expires=60)
                except (RefusedError, NotFoundError):
                    refused[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=hammer, args=(k,)) for k in ("enrol", "enrol", "intent")]
    for t in threads:
        t.start()
    try:
        _until(lambda: setup.pending_count() >= 6 or bool(errors))  # the hammers are going
        setup.revoke(A, 2.0)
        _until(lambda: refused[0] >= 30 or bool(errors))  # and go on, refused, after it
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        assert not errors, errors
        assert setup.device(A) is None and setup.eukeys((A,)) == {}
        assert setup._conn.execute(
            "SELECT count(*) FROM intents WHERE owner = %s OR peer = %s", (A, A)).fetchone()[0] == 0
    finally:
        setup.close()


def test_requests_waiting_on_a_revoke_under_way_see_it_once_committed(
    pg_url: str, key: bytes
) -> None:
    """A revoke under way (its statements as Store.revoke runs them, held before its commit):
    an enrolment of the device, its intent and one naming it, through other connections, wait
    for it, and once it commits all three are refused and nothing of them is stored.  (An
    enrolment that asked ``revoked`` before its insert read nothing there, then inserted the
    device anew once the revoke had deleted it.)"""
    import psycopg

    setup = pg_store(pg_url, key)
    setup.enrol(rec(A, "lost"), os.urandom(32), 0.0)
    setup.enrol(rec(B, "b"), None, 0.0)
    outcomes: dict[str, object] = {}

    def attempt(what: str) -> None:
        s = pg_store(pg_url, key)
        try:
            if what == "enrol":
                outcomes[what] = s.enrol(rec(A, "lost"), os.urandom(32), 1.0)
            elif what == "own":
                outcomes[what] = s.post_intent(A, B, CTX, IntentRole.HOST, now=1, expires=60)
            else:
                outcomes[what] = s.post_intent(B, A, b"\x0f" * 32, IntentRole.GUEST, now=1,
                                               expires=60)
        except BaseException as exc:
            outcomes[what] = exc
        finally:
            s.close()

    revoke = psycopg.connect(pg_url)  # a transaction, open until commit
    try:
        revoke.execute("SELECT name FROM devices WHERE device_id = %s FOR UPDATE", (A,))
        revoke.execute("DELETE FROM intents WHERE owner = %s OR peer = %s", (A, A))
        revoke.execute("DELETE FROM devices WHERE device_id = %s", (A,))
        revoke.execute("INSERT INTO revoked (device_id, name, revoked_at) VALUES (%s, 'lost', 2)",
                       (A,))
        threads = [threading.Thread(target=attempt, args=(w,)) for w in ("enrol", "own", "toward")]
        for t in threads:
            t.start()
        watch = psycopg.connect(pg_url, autocommit=True)
        try:
            _until(lambda: watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone()[0] == 3)
        finally:
            watch.close()
        revoke.commit()
    finally:
        revoke.close()
    for t in threads:
        t.join(30)
    try:
        assert isinstance(outcomes["enrol"], RefusedError), outcomes
        assert isinstance(outcomes["own"], NotFoundError), outcomes
        assert isinstance(outcomes["toward"], NotFoundError), outcomes
        assert setup.device(A) is None and setup.eukeys((A,)) == {}
        assert setup.pending_count() == 0
    finally:
        setup.close()


# -- server processes sharing one database -------------------------------------------------------


async def _pending(url: str, key: bytes, n: int) -> None:
    s = pg_store(url, key)
    try:
        for _ in range(200):
            if s.pending_count() == n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never {n} pending intent(s)")
    finally:
        s.close()


async def test_two_server_processes_on_one_database(tmp_path: Path, pg_url: str) -> None:
    d = init_server_dir(tmp_path / "srv")
    one = await ServeProcess.start(d.root, "--db", pg_url)
    two = await ServeProcess.start(d.root, "--db", pg_url)
    try:
        a, b = identity("a"), identity("b")
        await enrol(one.address, d.ca_cert, a)  # each device enrols through its own server
        await enrol(two.address, d.ca_cert, b)
        # a's intent waits on server one; b's, posted through server two, matches it
        waiting = asyncio.ensure_future(request_key(
            one.address, d.ca_cert, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST,
            wait=20,
        ))
        await _pending(pg_url, d.seal_key.read_bytes(), 1)
        kb = await request_key(two.address, d.ca_cert, b, peer_id=a.device_id, context=CTX,
                               role=IntentRole.GUEST, wait=20)
        ka = await waiting
        assert ka.sk == kb.sk and ka.match_id == kb.match_id
        assert ka.peer.device_id == b.device_id and kb.peer.device_id == a.device_id
    finally:
        logs = [await one.stop(), await two.stop()]
    assert all("database: PostgreSQL" in text for text in logs), logs
    assert not any("postgresql://" in text for text in logs)


async def _rows(url: str, key: bytes) -> set[int]:
    s = pg_store(url, key)
    try:
        return {int(r[0]) for r in s._conn.execute("SELECT id FROM intents").fetchall()}
    finally:
        s.close()


async def test_a_server_killed_mid_way_and_the_other_completes(
    tmp_path: Path, pg_url: str
) -> None:
    d = init_server_dir(tmp_path / "srv")
    seal = d.seal_key.read_bytes()
    one = await ServeProcess.start(d.root, "--db", pg_url)
    two = await ServeProcess.start(d.root, "--db", pg_url)
    try:
        a, b = identity("a"), identity("b")
        await enrol(one.address, d.ca_cert, a)  # enrolled through the server about to die
        await enrol(two.address, d.ca_cert, b)
        waiting = asyncio.ensure_future(request_key(
            one.address, d.ca_cert, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST,
            wait=20,
        ))
        await _pending(pg_url, seal, 1)
        orphan = await _rows(pg_url, seal)
        one.proc.send_signal(signal.SIGKILL)  # mid-way: a's intent is waiting on it
        await asyncio.wait_for(one.proc.wait(), 10)
        with pytest.raises(PairingError):
            await waiting
        # a's enrolment survived the server it was made through; a asks again through the
        # other server (its new intent replaces the one the dead server left), and b answers
        retry = asyncio.ensure_future(request_key(
            two.address, d.ca_cert, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST,
            wait=20,
        ))
        for _ in range(200):
            rows = await _rows(pg_url, seal)
            if rows and not rows & orphan:
                break
            await asyncio.sleep(0.05)
        kb = await request_key(two.address, d.ca_cert, b, peer_id=a.device_id, context=CTX,
                               role=IntentRole.GUEST, wait=20)
        ka = await retry
        assert ka.sk == kb.sk
    finally:
        if one.proc.returncode is None:
            one.proc.kill()
            await one.proc.wait()
        await two.stop()


async def _lease_ran_out(url: str, key: bytes, rows: set[int]) -> None:
    """Wait until the lease of the server process that holds ``rows`` has run out (it was
    killed, so it renews it no more)."""
    s = pg_store(url, key)
    try:
        for _ in range(600):
            found = s._conn.execute(
                "SELECT max(s.expires) FROM servers s JOIN intents i ON i.server = s.id "
                "WHERE i.id = ANY(%s)", (list(rows),),
            ).fetchone()
            if found is not None and found[0] is not None and found[0] < time.time():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the killed server's lease never ran out")
    finally:
        s.close()


async def test_an_intent_left_in_a_killed_server_is_never_matched(
    tmp_path: Path, pg_url: str
) -> None:
    """Server one is killed -9 while a's intent waits in it.  b's intent, posted later through
    server two, must not meet that orphan (b would get a key nobody else has, and the pairing
    would fail): it waits, and a's retry through server two meets it."""
    d = init_server_dir(tmp_path / "srv")
    seal = d.seal_key.read_bytes()
    one = await ServeProcess.start(d.root, "--db", pg_url)
    two = await ServeProcess.start(d.root, "--db", pg_url)
    try:
        a, b = identity("a"), identity("b")
        await enrol(two.address, d.ca_cert, a)
        await enrol(two.address, d.ca_cert, b)
        waiting = asyncio.ensure_future(request_key(
            one.address, d.ca_cert, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST,
            wait=60,
        ))
        await _pending(pg_url, seal, 1)
        orphan = await _rows(pg_url, seal)
        one.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(one.proc.wait(), 10)
        with pytest.raises(PairingError):
            await waiting
        await _lease_ran_out(pg_url, seal, orphan)
        late = asyncio.ensure_future(request_key(
            two.address, d.ca_cert, b, peer_id=a.device_id, context=CTX, role=IntentRole.GUEST,
            wait=30,
        ))
        await _pending(pg_url, seal, 2)  # the orphan and b's own: b did not meet the orphan
        assert not late.done()
        ka = await request_key(two.address, d.ca_cert, a, peer_id=b.device_id, context=CTX,
                               role=IntentRole.HOST, wait=30)
        kb = await late
        assert ka.sk == kb.sk and ka.match_id == kb.match_id
    finally:
        if one.proc.returncode is None:
            one.proc.kill()
            await one.proc.wait()
        await two.stop()


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["cli", "standalone"])
def test_serve_with_a_bad_or_unreachable_database_says_so(
    tmp_path: Path, command: str
) -> None:
    """A URL that is not PostgreSQL's is a usage error; a database that cannot be reached is
    one line on stderr, without a traceback or the password, and the server does not start."""
    import subprocess

    from tests.cli_helpers import ROOT, assert_no_traceback, cli_env
    from tests.ttp_harness import SERVE_CLI, SERVE_STANDALONE

    d = init_server_dir(tmp_path / "srv")
    base = SERVE_CLI if command == "cli" else SERVE_STANDALONE
    empty = tmp_path / "nosocket"
    empty.mkdir()
    for url, code, text in (
        ("mysql://root@db/x", 2, "PostgreSQL URL"),
        (f"postgresql://u:hunter2@/x?host={empty}&connect_timeout=2", 1, "cannot connect"),
    ):
        done = subprocess.run(
            [*base, "--dir", str(d.root), "--listen", "127.0.0.1:0", "--db", url],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=cli_env(None),
            stdin=subprocess.DEVNULL, check=False,
        )
        assert done.returncode == code, (done.returncode, done.stderr)
        assert text in done.stderr and "hunter2" not in done.stderr + done.stdout
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") <= 2, done.stderr
        assert_no_traceback("the key server", done.stderr)


async def test_revoke_through_the_cli_while_two_servers_serve(tmp_path: Path, pg_url: str) -> None:
    """``pairkit ttp revoke --db`` (a process of its own) while b waits in server one for a and
    a's earlier intent toward c waits in server two: both fail at once as for a device that is
    not enrolled, and a's intent through either server is refused from then on."""
    d = init_server_dir(tmp_path / "srv")
    seal = d.seal_key.read_bytes()
    one = await ServeProcess.start(d.root, "--db", pg_url)
    two = await ServeProcess.start(d.root, "--db", pg_url)
    try:
        a, b, c = identity("a"), identity("b"), identity("c")
        for dev in (a, b, c):
            await enrol(one.address, d.ca_cert, dev)
        b_waits = asyncio.ensure_future(request_key(
            one.address, d.ca_cert, b, peer_id=a.device_id, context=CTX, role=IntentRole.HOST,
            wait=30))
        a_waits = asyncio.ensure_future(request_key(
            two.address, d.ca_cert, a, peer_id=c.device_id, context=CTX, role=IntentRole.HOST,
            wait=30))
        await _pending(pg_url, seal, 2)
        rc, out, err = await revoke_cli(d.root, a.device_id.hex(), "--db", pg_url, "--yes",
                                        "--json")
        assert rc == 0, err
        assert json.loads(out)["revoked"]["intents"] == 2
        with pytest.raises(NotFoundError, match="is not enrolled with this key server"):
            await b_waits
        with pytest.raises(NotFoundError, match="this device is not enrolled"):
            await a_waits
        for server in (one, two):
            with pytest.raises(NotFoundError, match="this device is not enrolled"):
                await request_key(server.address, d.ca_cert, a, peer_id=c.device_id,
                                  context=CTX, role=IntentRole.HOST, wait=1)
            with pytest.raises(RefusedError, match="revoked by the key server's administrator"):
                await enrol(server.address, d.ca_cert, a)
    finally:
        logs = [await one.stop(), await two.stop()]
    assert not any("postgresql://" in text for text in logs)
