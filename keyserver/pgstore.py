"""The key server's store in PostgreSQL (``pairkit ttp serve --db postgresql://...``).

Any number of server processes, on any number of machines, share one PostgreSQL database
(psycopg 3, the ``postgres`` extra: ``pip install 'pairkit[postgres]'``).  The queries are
:class:`pairkit.keyserver.store.Store`'s, the same as SQLite's; this module supplies what
differs:

* each change is one transaction at PostgreSQL's default isolation (READ COMMITTED), and the
  rows it will change are read ``FOR UPDATE``, so a waiting intent is matched, withdrawn or
  delivered by one transaction only: a withdrawal that races a match finds the row matched
  and hands the key over instead, and a delivery deletes the row it reads;
* the intents of one pair of devices in one context are serialised by a transaction-scoped
  advisory lock on a hash of the unordered pair and the context: two matching intents that
  arrive at the same instant through two processes are paired, never left both waiting;
* the schema is versioned in the table ``pairkit_schema`` and migrated on start under an
  advisory lock (several processes starting at once migrate once); a database of a newer
  pairkit is refused, not damaged;
* a match is announced with ``NOTIFY`` (sent when its transaction commits), and each server
  process LISTENs on a connection of its own, so an intent waiting in one process learns at
  once of a match made in another (a slow poll of the store remains, in case a notification
  is lost while the listener reconnects);
* a connection lost (the database restarted, a network cut) fails the call under way with
  :class:`StoreError`, and the next call connects again.

The keys are sealed exactly as in SQLite, under the server directory's ``seal.key``: every
process serving one database needs the same directory (copy it, ``seal.key`` included, to each
server machine).  Nothing here logs; no error text carries the URL, whose password stays out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from pairkit.pairing.crypto import Rng
from pairkit.pairing.errors import ConfigError, PairingError, RefusedError

from .store import Sealer, Store, StoreError, Tx

try:
    import psycopg
    from psycopg import conninfo
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

#: the advisory lock key that serialises migrations (any fixed 64-bit number)
MIGRATION_LOCK: Final = 0x7061_6972_6B69_7431  # "pairkit1"
#: the channel on which a match is announced to every server process (payload: the row)
NOTIFY_CHANNEL: Final = "pairkit_ttp_match"
#: seconds to connect, and the longest any statement may run
CONNECT_TIMEOUT: Final = 10
STATEMENT_TIMEOUT_MS: Final = 10_000

PG_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: enrolled devices and pending intents (as SQLite's version 1)
    """
    CREATE TABLE devices (
        device_id      BYTEA PRIMARY KEY CHECK (length(device_id) = 16),
        name           TEXT NOT NULL,
        static_public  BYTEA NOT NULL CHECK (length(static_public) = 32),
        signing_public BYTEA NOT NULL CHECK (length(signing_public) = 32),
        eukey_sealed   BYTEA,
        enrolled_at    DOUBLE PRECISION NOT NULL,
        updated_at     DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE intents (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        owner     BYTEA NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        peer      BYTEA NOT NULL,
        context   BYTEA NOT NULL,
        role      INTEGER NOT NULL,
        created   DOUBLE PRECISION NOT NULL,
        expires   DOUBLE PRECISION NOT NULL,
        match_id  BYTEA,
        sk_sealed BYTEA
    );
    CREATE INDEX intents_by_pair ON intents (owner, peer, context, role);
    CREATE INDEX intents_by_expiry ON intents (expires);
    """,
    # 2: CPNS personal networks and their members (as SQLite's version 2)
    """
    CREATE TABLE pns (
        pn_id      BYTEA PRIMARY KEY CHECK (length(pn_id) = 16),
        gw_id      BYTEA NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        gw_name    TEXT NOT NULL,
        setup_type INTEGER NOT NULL,
        created    DOUBLE PRECISION NOT NULL,
        updated    DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE pn_members (
        pn_id            BYTEA NOT NULL REFERENCES pns(pn_id) ON DELETE CASCADE,
        pne_id           BYTEA NOT NULL,
        name             TEXT NOT NULL,
        caps             INTEGER NOT NULL,
        contents         TEXT NOT NULL,
        key_source       INTEGER NOT NULL,
        local_key_sealed BYTEA,
        joined           DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (pn_id, pne_id)
    );
    CREATE INDEX pns_by_gateway ON pns (gw_id);
    """,
    # 3: server processes' leases (as SQLite's version 3)
    """
    CREATE TABLE servers (
        id      BYTEA PRIMARY KEY CHECK (length(id) = 16),
        expires DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE intents ADD COLUMN server BYTEA;
    """,
    # 4: a PN is its gateway's, keyed by (gw_id, pn_id) (as SQLite's version 4): each member
    # is moved under its PN's gateway, and the keys (named as version 2 made them) change in
    # place.  local_key_ad: 1 for the LocalEUKeys sealed before, 2 for those sealed after.
    """
    ALTER TABLE pn_members DROP CONSTRAINT pn_members_pn_id_fkey;
    ALTER TABLE pn_members DROP CONSTRAINT pn_members_pkey;
    ALTER TABLE pn_members ADD COLUMN gw_id BYTEA;
    UPDATE pn_members m SET gw_id = p.gw_id FROM pns p WHERE p.pn_id = m.pn_id;
    ALTER TABLE pn_members ALTER COLUMN gw_id SET NOT NULL;
    ALTER TABLE pn_members ADD COLUMN local_key_ad INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE pn_members ALTER COLUMN local_key_ad SET DEFAULT 2;
    ALTER TABLE pns DROP CONSTRAINT pns_pkey;
    ALTER TABLE pns ADD PRIMARY KEY (gw_id, pn_id);
    ALTER TABLE pn_members ADD PRIMARY KEY (gw_id, pn_id, pne_id);
    ALTER TABLE pn_members ADD FOREIGN KEY (gw_id, pn_id) REFERENCES pns (gw_id, pn_id)
        ON DELETE CASCADE;
    DROP INDEX pns_by_gateway;
    """,
    # 5: devices revoked by the administrator (as SQLite's version 5)
    """
    CREATE TABLE revoked (
        device_id  BYTEA PRIMARY KEY CHECK (length(device_id) = 16),
        name       TEXT NOT NULL,
        revoked_at DOUBLE PRECISION NOT NULL
    );
    """,
    # 6: the name a device first enrolled with (as SQLite's version 6)
    """
    ALTER TABLE devices ADD COLUMN first_name TEXT;
    """,
)
PG_SCHEMA_VERSION: Final = len(PG_MIGRATIONS)


def describe(url: str) -> str:
    """``HOST:PORT/DATABASE`` of a PostgreSQL URL, for messages (never the password)."""
    try:
        parts = conninfo.conninfo_to_dict(url) if psycopg is not None else {}
    except Exception:  # psycopg.ProgrammingError: not a URL it understands
        return "the database given to --db"
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or 5432)
    return f"{host}:{port}/{parts.get('dbname') or parts.get('user') or '?'}"


def pair_key(owner: bytes, peer: bytes, context: bytes) -> int:
    """The advisory lock of the intents between two devices in one context (either order)."""
    lo, hi = sorted((owner, peer))
    digest = hashlib.sha256(b"pairkit-ttp-pair|" + lo + hi + context).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _sql(text: str) -> str:
    # Store's queries use "?" (SQLite's style); psycopg's is "%s".  No query has a literal ?.
    return text.replace("?", "%s")


class _PgTx:
    """:class:`Tx` over a psycopg connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(_sql(sql), params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(_sql(sql), params).fetchall())

    def locking(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.one(sql + " FOR UPDATE", params)

    def held(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # KEY SHARE: a revoke (which locks the row FOR UPDATE, then deletes it) waits, and so
        # is waited for; other intents and an enrolment's update of the name do not.
        return self.all(sql + " FOR KEY SHARE", params)

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn.execute(_sql(sql), params).rowcount)

    def insert_id(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self.conn.execute(_sql(sql) + " RETURNING id", params).fetchone()
        return int(row[0])


class PostgresStore(Store):
    """The store in one PostgreSQL database shared by any number of server processes."""

    def __init__(self, url: str, sealer: Sealer, *, rng: Rng = os.urandom) -> None:
        if psycopg is None:
            raise ConfigError(
                "--db postgresql://... needs psycopg: pip install 'pairkit[postgres]'"
            )
        super().__init__(sealer, rng=rng)
        self.url = url
        self.where = f"PostgreSQL {describe(url)}"
        # One connection per thread that uses the store (the server runs several), so
        # that their round trips to the database overlap; every one is closed by close().
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        with self._guard("migrating"):
            migrate_pg(self._live())
        self._reseal_local_keys()

    @property
    def _conn(self) -> Any:
        """This thread's connection (made on first use)."""
        return self._live()

    def _connect(self) -> Any:
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                application_name="pairkit-keyserver",
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the {self.where} database ({_reason(exc)}): is it "
                "running, does the database exist, and may this user connect?"
            ) from None
        except ValueError:  # psycopg.conninfo: a malformed URL
            raise ConfigError("--db: that is not a PostgreSQL URL") from None
        with self._lock:
            self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except PairingError:
            raise
        except psycopg.Error as exc:
            raise StoreError(
                f"the {self.where} database failed while {doing} ({_reason(exc)})"
            ) from None

    def _live(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
                with self._lock:
                    self._all = [c for c in self._all if c is not conn]
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Tx]:
        conn = self._live()
        with self._guard("writing"), conn.transaction():
            yield _PgTx(conn)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Tx]:
        conn = self._live()
        with self._guard("reading"):
            yield _PgTx(conn)

    def take_match(self, row: int) -> tuple[bytes, bytes] | None:
        """As :meth:`Store.take_match`, in one statement where the match is there (a waiting
        intent asks this at each poll): the row is read and deleted by one statement, its own
        transaction, so it is delivered once."""
        with self._read() as db:
            found = db.one(
                "DELETE FROM intents WHERE id = ? AND match_id IS NOT NULL "
                "RETURNING match_id, sk_sealed", (row,),
            )
            if found is None:
                if db.one("SELECT 1 FROM intents WHERE id = ?", (row,)) is None:
                    raise RefusedError(
                        "a newer identical intent from this device replaced this one"
                    )
                return None
        match_id = bytes(found[0])
        return self._sealer.open(bytes(found[1]), "sk", row, match_id), match_id

    def _matched(self, db: Tx, row: int) -> None:
        # Delivered to every listener when (and only if) the match commits.
        db.one("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, str(row)))

    def listen(self, matched: Callable[[int], None]) -> Callable[[], None] | None:
        """LISTEN on a connection of its own (subscribed when this returns, if the database
        answers), read on a thread; reconnects after a lost connection (meanwhile the waiters'
        slow poll of the store still finds their match)."""
        stop = threading.Event()

        def subscribe() -> Any:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return conn

        first: list[Any] = []
        with contextlib.suppress(psycopg.Error):
            first.append(subscribe())

        def run() -> None:
            while not stop.is_set():
                try:
                    with first.pop() if first else subscribe() as conn:
                        while not stop.is_set():
                            for note in conn.notifies(timeout=0.5):
                                # ValueError: not a row id; RuntimeError: the server's loop
                                # closed meanwhile.  Neither may end the listener.
                                with contextlib.suppress(ValueError, RuntimeError):
                                    matched(int(note.payload))
                except Exception:  # psycopg.Error, OSError: connect again in a second
                    stop.wait(1.0)

        thread = threading.Thread(target=run, name="ttp-pg-listen", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(5)

        return halt

    def _lock_pair(self, db: Tx, owner: bytes, peer: bytes, context: bytes) -> None:
        db.one("SELECT pg_advisory_xact_lock(?)", (pair_key(owner, peer, context),))

    def schema_version(self) -> int:
        with self._read() as db:
            row = db.one("SELECT version FROM pairkit_schema")
        return int(row[0]) if row else 0


def _reason(exc: Exception) -> str:
    """A short, URL-free reason: the SQLSTATE's name where there is one."""
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return f"{primary}" + (f", SQLSTATE {state}" if state else "")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return "no connection: refused, unreachable, or the login was rejected"
    return type(exc).__name__


def migrate_pg(conn: Any, *, upto: int = PG_SCHEMA_VERSION) -> int:
    """Bring the schema to version ``upto`` (each step and its version bump in one
    transaction, under an advisory lock); the version it had.  Refuses a newer database."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pairkit_schema (version INTEGER NOT NULL, "
            "one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one))"
        )
        row = conn.execute("SELECT version FROM pairkit_schema").fetchone()
        version = int(row[0]) if row else 0
        if row is None:
            conn.execute("INSERT INTO pairkit_schema (version) VALUES (0)")
        if version > PG_SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this pairkit "
                f"({PG_SCHEMA_VERSION}); upgrade pairkit to use it"
            )
        for target in range(version + 1, upto + 1):
            conn.execute(PG_MIGRATIONS[target - 1])
            conn.execute("UPDATE pairkit_schema SET version = %s", (target,))
    return version
