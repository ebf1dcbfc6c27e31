"""The key server's store: enrolled devices, pending intents and PN inventories.

:class:`Store` is the one interface the server uses, with the queries written once in the SQL
that both engines share; two implementations supply the transactions:

* :class:`TtpStore` (also :data:`SqliteStore`), the embedded default: one file, ``ttp.sqlite3``
  in the server's directory, in WAL mode (readers never block the writer),
  ``synchronous=NORMAL``, foreign keys on, and a busy timeout so that several server processes
  on one machine may share it.  Every change is one ``BEGIN IMMEDIATE`` transaction: two
  intents that match are paired exactly once even when they arrive at the same instant in two
  processes.  The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` holds one
  script per version, applied in order inside a transaction with the version bump, and only
  on the version it starts from (checked under the lock: processes that start at once migrate
  once), so a server upgraded in place migrates its file on start and a file from a newer
  pairkit is refused, not damaged.
* :class:`pairkit.keyserver.pgstore.PostgresStore` (``--db postgresql://...``): one PostgreSQL
  database shared by any number of server processes on any number of machines, with the same
  guarantees (see that module).

Keys at rest are sealed (:class:`Sealer`): the devices' factory EUKeys, the LocalEUKeys of PN
links and the SK waiting for the second device of a match (unless the caller takes it in memory:
``post_intent``'s ``claim``) are stored as ChaCha20-Poly1305
ciphertexts under the server's 32-byte sealing key (``seal.key``, mode 0600), with the table,
the row and the purpose as associated data, so a ciphertext moved to another row does not open
(a LocalEUKey stored before schema version 4 was sealed to its PN id and PNE only, the PN id
being then the key server's alone, ``pn_members.local_key_ad`` 1: the store seals it again to
its gateway as it opens, and opens every LocalEUKey as sealed to its gateway).

Time is an argument (``now``, wall-clock seconds) of every method that needs it; the store reads
no clock.  The methods are synchronous and short; the server runs them on one worker thread.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pairkit.pairing.cpns import KeySource, ServerInventory, SetupType
from pairkit.pairing.crypto import Rng, check_ed25519_public, same
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    PairingError,
    RefusedError,
)
from pairkit.pairing.ttp import DeviceRecord, IntentRole
from pairkit.smallfile import read_small_file

SEAL_KEY_LEN: Final = 32
#: seconds a lease that ran out is kept (a process that stalled that long renews it again)
LEASE_KEPT: Final = 3600.0
BUSY_TIMEOUT_MS: Final = 5000


class StoreError(PairingError):
    """The key server's database cannot be used."""

    #: a device is told no more (the database's words and where it is are the operator's:
    #: the server's own log has them)
    peer_text = "the key server cannot use its database now; try again later"


#: a device whose own request names it, and the server does not serve it (never enrolled, or
#: revoked: the same words, so that a host relaying them tells its guest nothing more)
NOT_ENROLLED: Final = (
    "this device is not enrolled with the key server; run 'pairkit ttp enrol' first"
)
#: what a revoked device is told when it enrols again (its own key proved: nobody else hears it)
REVOKED: Final = "this device was revoked by the key server's administrator"


def peer_not_enrolled(device_id: bytes) -> str:
    """What a device is told of a peer the server does not serve (never enrolled, or revoked:
    the same words; docs/security.md rule 8 on what "not enrolled" already tells)."""
    return f"device {device_id.hex()[:16]} is not enrolled with this key server"


class SealedValueError(AuthenticationError):
    """A value sealed in the key server's database did not open under its ``seal.key``."""

    #: a device is told no more (which file, and that the database may have been altered, are
    #: the operator's: the server's own log has them)
    peer_text = StoreError.peer_text


MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: enrolled devices and pending intents
    """
    CREATE TABLE devices (
        device_id     BLOB PRIMARY KEY CHECK (length(device_id) = 16),
        name          TEXT NOT NULL,
        static_public BLOB NOT NULL CHECK (length(static_public) = 32),
        signing_public BLOB NOT NULL CHECK (length(signing_public) = 32),
        eukey_sealed  BLOB,
        enrolled_at   REAL NOT NULL,
        updated_at    REAL NOT NULL
    );
    CREATE TABLE intents (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        owner     BLOB NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        peer      BLOB NOT NULL,
        context   BLOB NOT NULL,
        role      INTEGER NOT NULL,
        created   REAL NOT NULL,
        expires   REAL NOT NULL,
        match_id  BLOB,
        sk_sealed BLOB
    );
    CREATE INDEX intents_by_pair ON intents (owner, peer, context, role);
    CREATE INDEX intents_by_expiry ON intents (expires);
    """,
    # 2: CPNS personal networks and their members
    """
    CREATE TABLE pns (
        pn_id      BLOB PRIMARY KEY CHECK (length(pn_id) = 16),
        gw_id      BLOB NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        gw_name    TEXT NOT NULL,
        setup_type INTEGER NOT NULL,
        created    REAL NOT NULL,
        updated    REAL NOT NULL
    );
    CREATE TABLE pn_members (
        pn_id            BLOB NOT NULL REFERENCES pns(pn_id) ON DELETE CASCADE,
        pne_id           BLOB NOT NULL,
        name             TEXT NOT NULL,
        caps             INTEGER NOT NULL,
        contents         TEXT NOT NULL,
        key_source       INTEGER NOT NULL,
        local_key_sealed BLOB,
        joined           REAL NOT NULL,
        PRIMARY KEY (pn_id, pne_id)
    );
    CREATE INDEX pns_by_gateway ON pns (gw_id);
    """,
    # 3: server processes' leases: an intent is matched only while the process it waits in
    # lives (a process killed with an intent open leaves it, and it must not be matched)
    """
    CREATE TABLE servers (
        id      BLOB PRIMARY KEY CHECK (length(id) = 16),
        expires REAL NOT NULL
    );
    ALTER TABLE intents ADD COLUMN server BLOB;
    """,
    # 4: a PN is its gateway's, keyed by (gw_id, pn_id): a PN id crosses the PAN in the clear
    # before its gateway registers it, and another gateway that registers the same id makes a
    # PN of its own instead of taking the id (security finding 5 of the registration's wait
    # review).  SQLite changes no primary key in place: the tables are copied, each member
    # under its PN's gateway.  local_key_ad: what the LocalEUKey was sealed to (1: the PN id
    # and PNE id, before this version; 2: the gateway's id too).
    """
    CREATE TABLE pns_v4 (
        gw_id      BLOB NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        pn_id      BLOB NOT NULL CHECK (length(pn_id) = 16),
        gw_name    TEXT NOT NULL,
        setup_type INTEGER NOT NULL,
        created    REAL NOT NULL,
        updated    REAL NOT NULL,
        PRIMARY KEY (gw_id, pn_id)
    );
    CREATE TABLE pn_members_v4 (
        gw_id            BLOB NOT NULL,
        pn_id            BLOB NOT NULL,
        pne_id           BLOB NOT NULL,
        name             TEXT NOT NULL,
        caps             INTEGER NOT NULL,
        contents         TEXT NOT NULL,
        key_source       INTEGER NOT NULL,
        local_key_sealed BLOB,
        local_key_ad     INTEGER NOT NULL DEFAULT 2,
        joined           REAL NOT NULL,
        PRIMARY KEY (gw_id, pn_id, pne_id),
        FOREIGN KEY (gw_id, pn_id) REFERENCES pns_v4 (gw_id, pn_id) ON DELETE CASCADE
    );
    INSERT INTO pns_v4 (gw_id, pn_id, gw_name, setup_type, created, updated)
        SELECT gw_id, pn_id, gw_name, setup_type, created, updated FROM pns;
    INSERT INTO pn_members_v4 (gw_id, pn_id, pne_id, name, caps, contents, key_source,
                               local_key_sealed, local_key_ad, joined)
        SELECT p.gw_id, m.pn_id, m.pne_id, m.name, m.caps, m.contents, m.key_source,
               m.local_key_sealed, 1, m.joined
        FROM pn_members m JOIN pns p ON p.pn_id = m.pn_id;
    DROP TABLE pn_members;
    DROP TABLE pns;
    ALTER TABLE pns_v4 RENAME TO pns;
    ALTER TABLE pn_members_v4 RENAME TO pn_members;
    """,
    # 5: devices revoked by the administrator (``pairkit ttp revoke``): taken out of devices,
    # and kept here so that the holder of a revoked device's key cannot enrol it again
    """
    CREATE TABLE revoked (
        device_id  BLOB PRIMARY KEY CHECK (length(device_id) = 16),
        name       TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    """,
    # 6: the name a device first enrolled with, never changed by enrolling again: the holder
    # of a device's key may rename it, and the administrator about to revoke it is shown both
    # (atk20r 1).  NULL (a row from before, or from a server of an earlier pairkit): unknown,
    # shown as its name.
    """
    ALTER TABLE devices ADD COLUMN first_name TEXT;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class Sealer:
    """ChaCha20-Poly1305 under the server's sealing key, with a fresh random nonce per value."""

    def __init__(self, key: bytes, *, rng: Rng = os.urandom) -> None:
        if len(key) != SEAL_KEY_LEN:
            raise ConfigError(f"the sealing key must be {SEAL_KEY_LEN} bytes")
        self._aead = ChaCha20Poly1305(key)
        self._rng = rng

    @classmethod
    def from_file(cls, path: Path, *, rng: Rng = os.urandom) -> Sealer:
        # Bounded: a FIFO or a huge file put in its place is refused before it is read.
        key = read_small_file(path, SEAL_KEY_LEN, "a sealing key")
        if len(key) != SEAL_KEY_LEN:
            raise ConfigError(f"{path} is not a sealing key (it must hold {SEAL_KEY_LEN} bytes)")
        return cls(key, rng=rng)

    @staticmethod
    def _ad(purpose: str, *row: bytes | int) -> bytes:
        parts = [b"pairkit-ttp/1", purpose.encode()]
        parts += [p if isinstance(p, bytes) else str(p).encode() for p in row]
        return b"|".join(parts)

    def seal(self, value: bytes, purpose: str, *row: bytes | int) -> bytes:
        nonce = self._rng(12)
        return nonce + self._aead.encrypt(nonce, value, self._ad(purpose, *row))

    def open(self, sealed: bytes, purpose: str, *row: bytes | int) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], self._ad(purpose, *row))
        except Exception:  # InvalidTag: another key, another row, or a damaged value
            raise SealedValueError(
                f"a sealed {purpose} in the key server's database did not open (wrong seal.key, "
                "or the database was altered)"
            ) from None


@dataclasses.dataclass(frozen=True)
class Pending:
    """An intent stored to wait for its match (``row`` is its id)."""

    row: int


@dataclasses.dataclass(frozen=True)
class Matched:
    """The intent met its match: the fresh key and the match's id."""

    sk: bytes = dataclasses.field(repr=False)
    match_id: bytes
    #: the row of the waiting intent that was matched (to wake its waiter)
    partner_row: int
    #: the waiting intent was claimed (``post_intent``'s ``claim``): its row is deleted and its
    #: waiter takes the key from memory; False: the key is stored sealed for it (take_match)
    handed: bool = False


@dataclasses.dataclass(frozen=True)
class Revoked:
    """What :meth:`Store.revoke` took out (no key material)."""

    device_id: bytes
    name: str
    revoked_at: float
    #: intents cancelled: its own and those naming it, waiting or matched and not yet delivered
    intents: int
    #: PNs it was the gateway of, deleted with their members and link keys
    pns: int
    #: its places in other gateways' PNs, deleted with their link keys
    memberships: int
    #: whether a factory key (EUKey) was deleted with it
    eukey: bool


@dataclasses.dataclass(frozen=True)
class PnRow:
    """A registered PN, as ``ttp`` tools list it (no key material)."""

    pn_id: bytes
    gw_id: bytes
    gw_name: str
    setup_type: SetupType
    members: tuple[dict[str, Any], ...]


class Tx(Protocol):
    """One database transaction as :class:`Store` uses it (SQL with ``?`` placeholders)."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def locking(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """:meth:`one` for a row this transaction will change: locked until it ends (FOR
        UPDATE; SQLite's write transaction holds the whole database already)."""
        ...

    def held(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`all` for rows this transaction relies on staying as they are: nobody deletes
        them (nor changes their key) until it ends (FOR KEY SHARE; SQLite's write transaction
        holds the whole database already)."""
        ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        ...

    def insert_id(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute an INSERT into ``intents``; the new row's id."""
        ...


class Store(abc.ABC):
    """The key server's database, whichever engine holds it (see the module docstring).

    The queries are written once, here, in the SQL that SQLite and PostgreSQL share; an engine
    supplies its transactions (:meth:`_write`, :meth:`_read`), row locks (:meth:`Tx.locking`)
    and the lock that serialises the intents of one pair of devices (:meth:`_lock_pair`).
    What every engine guarantees: a change is one transaction, committed or not at all; two
    intents that match are paired exactly once, even when they arrive at the same instant
    through two server processes; a delivered key is handed out once (its row is deleted in
    the transaction that reads it); and what a committed transaction wrote survives the loss
    of any server process.
    """

    #: what the database is, for people (never a password)
    where: str = ""

    def __init__(self, sealer: Sealer, *, rng: Rng = os.urandom) -> None:
        self._sealer = sealer
        self._rng = rng

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (every later call fails)."""

    @abc.abstractmethod
    def _write(self) -> contextlib.AbstractContextManager[Tx]:
        """One write transaction, committed when the block ends, rolled back on an error."""

    @abc.abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Tx]:
        """A read of committed data."""

    def listen(self, matched: Callable[[int], None]) -> Callable[[], None] | None:
        """Call ``matched(row)`` (on another thread) each time any server process sharing the
        database matches the waiting intent ``row``; the function that stops listening, or
        None where the engine cannot tell (the waiters then poll the store)."""
        return None

    def _matched(self, db: Tx, row: int) -> None:
        """The waiting intent ``row`` is matched, in transaction ``db`` (tell the listeners)."""
        del db, row  # nobody listens where the engine cannot tell

    @abc.abstractmethod
    def _lock_pair(self, db: Tx, owner: bytes, peer: bytes, context: bytes) -> None:
        """Serialise, until the transaction ends, every change to the intents between these
        two devices in this context."""

    # -- devices ----------------------------------------------------------------------------

    def enrol(self, record: DeviceRecord, eukey: bytes | None, now: float) -> bool:
        """Add or refresh a device; True when it was enrolled before.  An enrolment without
        an EUKey keeps the one stored.  A signing key that signs nothing (small order) is
        refused, whichever way the record came (the connection's machine refuses it first)."""
        check_ed25519_public(record.signing, "the device's")
        sealed = None
        if eukey is not None:
            sealed = self._sealer.seal(eukey, "eukey", record.device_id)
        with self._write() as db:
            added = db.run(
                "INSERT INTO devices (device_id, name, first_name, static_public, "
                "signing_public, eukey_sealed, enrolled_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO NOTHING",
                (record.device_id, record.name, record.name, record.static, record.signing,
                 sealed, now, now),
            )
            old = None if added else db.locking(
                "SELECT static_public, signing_public FROM devices WHERE device_id = ?",
                (record.device_id,),
            )
            # Revoked: refused, the row just added rolled back.  Asked after the statements
            # above, each of which waits for a revoke under way on this device (its row
            # locked, then deleted), so it sees that revoke once committed (PostgreSQL's
            # READ COMMITTED reads anew at each statement; SQLite's writes are serial).
            if db.one("SELECT 1 FROM revoked WHERE device_id = ?", (record.device_id,)):
                raise RefusedError(REVOKED)
            if added:
                return False
            if old is None:  # pragma: no cover - deleted meanwhile, not revoked: by hand
                raise StoreError("the device's row was deleted meanwhile; enrol it again")
            if old is not None and bytes(old[0]) != record.static:  # pragma: no cover - id = H(key)
                raise AuthenticationError("another key is enrolled under this device id")
            # An enrolment proves the static key only: the signing key it gives is the one
            # the device was first enrolled with, or a holder of the static key alone would
            # have this server vouch for a key of its own, in ttp pairings and certificates
            # (docs/security.md rule 1; attack review atk18c, finding 2).  No pairkit changes
            # one of a device's keys without the other.
            if old is not None and not same(bytes(old[1]), record.signing):
                raise AuthenticationError(
                    "this device is enrolled with another signing key (someone may hold a "
                    "copy of its device key); refused"
                )
            # A row from before schema 6 has no first name: the name it had until now is
            # the first known (the right-hand sides read the row as it was).
            db.run(
                "UPDATE devices SET first_name = coalesce(first_name, name), name = ?, "
                "signing_public = ?, "
                "eukey_sealed = coalesce(?, eukey_sealed), updated_at = ? "
                "WHERE device_id = ?",
                (record.name, record.signing, sealed, now, record.device_id),
            )
        return True

    # The reads of devices below skip a row whose id is in `revoked`, whatever wrote it: a
    # server of an earlier pairkit, on the database during an upgrade, knows no `revoked`
    # table and enrols a revoked device again (atk20r 4).

    def device(self, device_id: bytes) -> DeviceRecord | None:
        with self._read() as db:
            row = db.one(
                "SELECT device_id, name, static_public, signing_public FROM devices "
                "WHERE device_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id)", (device_id,),
            )
        if row is None:
            return None
        return DeviceRecord(bytes(row[0]), row[1], bytes(row[2]), bytes(row[3]))

    def enrolled(self, first: bytes, second: bytes) -> set[bytes]:
        """Those of the two devices the server serves now (enrolled, not revoked), in one
        read."""
        with self._read() as db:
            rows = db.all(
                "SELECT device_id FROM devices WHERE device_id IN (?, ?) AND NOT EXISTS "
                "(SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id)",
                (first, second),
            )
        return {bytes(r[0]) for r in rows}

    def first_name(self, device_id: bytes) -> str | None:
        """The name the device first enrolled with (its name, where that is not known), or
        None when it is not enrolled."""
        with self._read() as db:
            row = db.one(
                "SELECT coalesce(first_name, name) FROM devices WHERE device_id = ? AND "
                "NOT EXISTS (SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id)",
                (device_id,),
            )
        return None if row is None else str(row[0])

    def has_eukey(self, device_id: bytes) -> bool:
        with self._read() as db:
            row = db.one(
                "SELECT eukey_sealed IS NOT NULL FROM devices WHERE device_id = ? AND "
                "NOT EXISTS (SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id)",
                (device_id,),
            )
        return bool(row and row[0])

    def device_count(self) -> int:
        with self._read() as db:
            row = db.one(
                "SELECT count(*) FROM devices WHERE "
                "NOT EXISTS (SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id)"
            )
        return int(row[0]) if row else 0

    def devices(self) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.all(
                "SELECT device_id, name, eukey_sealed IS NOT NULL, enrolled_at, "
                "coalesce(first_name, name) FROM devices WHERE "
                "NOT EXISTS (SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id) "
                "ORDER BY enrolled_at, device_id"
            )
        return [
            {"id": bytes(r[0]).hex(), "name": r[1], "eukey": bool(r[2]), "enrolled_at": r[3],
             "first_name": r[4]}
            for r in rows
        ]

    def eukeys(self, device_ids: tuple[bytes, ...]) -> dict[bytes, bytes]:
        """The factory keys of those devices that have one (unsealed, in memory only)."""
        out: dict[bytes, bytes] = {}
        with self._read() as db:
            for device_id in device_ids:
                row = db.one(
                    "SELECT eukey_sealed FROM devices WHERE device_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM revoked r WHERE r.device_id = devices.device_id)",
                    (device_id,),
                )
                if row is not None and row[0] is not None:
                    out[device_id] = self._sealer.open(bytes(row[0]), "eukey", device_id)
        return out

    def revoked(self) -> list[dict[str, Any]]:
        """The revoked devices, the oldest revoke first (``pairkit ttp list``)."""
        with self._read() as db:
            rows = db.all(
                "SELECT device_id, name, revoked_at FROM revoked ORDER BY revoked_at, device_id"
            )
        return [{"id": bytes(r[0]).hex(), "name": r[1], "revoked_at": r[2]} for r in rows]

    def revoke(self, device_id: bytes, now: float) -> Revoked:
        """Take the enrolled device ``device_id`` out for good (``pairkit ttp revoke``), in one
        transaction: its record and factory key, every intent of it or naming it (waiting, or
        matched and not yet delivered: the waiters find their row gone, and are told as a
        waiter whose peer is not enrolled), the PNs it is the gateway of and its places in
        others' (with their LocalEUKeys); its id is kept in ``revoked``, so that
        :meth:`enrol` refuses it from then on.  :class:`NotFoundError` for a device that is
        not enrolled (revoked already, or never)."""
        with self._write() as db:
            row = db.locking(
                "SELECT name, eukey_sealed IS NOT NULL FROM devices WHERE device_id = ?",
                (device_id,),
            )
            if row is None:
                if db.one("SELECT 1 FROM revoked WHERE device_id = ?", (device_id,)):
                    raise NotFoundError(f"device {device_id.hex()} was revoked already")
                raise NotFoundError(f"no device {device_id.hex()} is enrolled with this key server")
            rows = [int(r[0]) for r in db.all(
                "SELECT id FROM intents WHERE owner = ? OR peer = ?", (device_id, device_id)
            )]
            db.run("DELETE FROM intents WHERE owner = ? OR peer = ?", (device_id, device_id))
            for intent in rows:
                self._matched(db, intent)  # wake its waiter (it finds its row gone)
            memberships = db.run("DELETE FROM pn_members WHERE pne_id = ?", (device_id,))
            pns = db.run("DELETE FROM pns WHERE gw_id = ?", (device_id,))  # members with them
            db.run("DELETE FROM devices WHERE device_id = ?", (device_id,))
            db.run(
                "INSERT INTO revoked (device_id, name, revoked_at) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, "
                "revoked_at = excluded.revoked_at",
                (device_id, row[0], now),
            )
        return Revoked(device_id, row[0], now, len(rows), pns, memberships, bool(row[1]))

    # -- intents ----------------------------------------------------------------------------

    def post_intent(
        self,
        owner: bytes,
        peer: bytes,
        context: bytes,
        role: IntentRole,
        *,
        now: float,
        expires: float,
        server: bytes | None = None,
        claim: Callable[[int], bool] | None = None,
    ) -> Pending | Matched:
        """Match this intent against a waiting one, or store it to wait.

        A waiting intent matches when it names ``owner``, comes from ``peer``, has the same
        context and the opposite role, has not expired, and the server process it waits in
        still holds its lease (:meth:`lease`; an intent stored without ``server`` needs none).
        The key is drawn here, once.  A stored identical intent (same owner, peer, context and
        role) is replaced: its waiter finds its row gone.

        ``claim(row)`` is asked, inside the transaction, whether the waiting intent ``row``
        that matches waits in the caller's process and will take its key from memory: if so,
        its row is deleted in this transaction (the key is never stored, the intent cannot be
        matched again) and the result says ``handed``; the caller gives the key to the waiter
        once this returns, or releases the claim if this raises (nothing was committed).
        """
        with self._write() as db:
            self._lock_pair(db, owner, peer, context)
            # Both devices stay as they are until this transaction ends (a revoke waits for
            # it), and a revoke committed before is seen: no key is drawn for a revoked
            # device, nor about one (the server looked them up before, outside it).
            # `revoked` is what counts, a row in devices or not (atk20r 4).
            found = {bytes(r[0]) for r in db.held(
                "SELECT device_id FROM devices WHERE device_id IN (?, ?)", (owner, peer)
            )}
            revoked = {bytes(r[0]) for r in db.all(
                "SELECT device_id FROM revoked WHERE device_id IN (?, ?)", (owner, peer)
            )}
            if owner not in found or owner in revoked:
                raise NotFoundError(NOT_ENROLLED)
            if peer in revoked:
                raise NotFoundError(peer_not_enrolled(peer))
            row = db.locking(
                "SELECT id FROM intents WHERE owner = ? AND peer = ? AND context = ? "
                "AND role = ? AND match_id IS NULL AND expires > ? AND (server IS NULL OR "
                "server IN (SELECT id FROM servers WHERE expires > ?)) ORDER BY id LIMIT 1",
                (peer, owner, context, int(role.other), now, now),
            )
            if row is not None:
                partner = int(row[0])
                sk, match_id = self._rng(32), self._rng(16)
                if claim is not None and claim(partner):
                    db.run("DELETE FROM intents WHERE id = ?", (partner,))
                    return Matched(sk, match_id, partner, handed=True)
                sealed = self._sealer.seal(sk, "sk", partner, match_id)
                db.run(
                    "UPDATE intents SET match_id = ?, sk_sealed = ? WHERE id = ?",
                    (match_id, sealed, partner),
                )
                self._matched(db, partner)
                return Matched(sk, match_id, partner)
            db.run(
                "DELETE FROM intents WHERE owner = ? AND peer = ? AND context = ? AND role = ? "
                "AND match_id IS NULL",
                (owner, peer, context, int(role)),
            )
            return Pending(db.insert_id(
                "INSERT INTO intents (owner, peer, context, role, created, expires, server) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (owner, peer, context, int(role), now, expires, server),
            ))

    def lease(self, server: bytes, now: float, ttl: float) -> None:
        """Hold (or renew) the lease of server process ``server`` until ``now + ttl``: the
        intents it stores are matched only while it holds it.  A process renews it well
        before it ends; one killed stops, and its intents are ignored once it ran out."""
        with self._write() as db:
            db.run(
                "INSERT INTO servers (id, expires) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET expires = excluded.expires",
                (server, now + ttl),
            )

    def end_lease(self, server: bytes) -> None:
        """Give the lease up (a process that stops): its intents are matched no more."""
        with self._write() as db:
            db.run("DELETE FROM servers WHERE id = ?", (server,))

    def take_match(self, row: int) -> tuple[bytes, bytes] | None:
        """(SK, match id) once the intent ``row`` was matched (the row is then deleted), or
        None while it waits.  :class:`RefusedError` when the row is gone (replaced)."""
        with self._write() as db:
            found = db.locking("SELECT match_id, sk_sealed FROM intents WHERE id = ?", (row,))
            if found is None:
                raise RefusedError("a newer identical intent from this device replaced this one")
            if found[0] is None:
                return None
            match_id, sealed = bytes(found[0]), bytes(found[1])
            db.run("DELETE FROM intents WHERE id = ?", (row,))
        return self._sealer.open(sealed, "sk", row, match_id), match_id

    def cancel_intent(self, row: int) -> bool:
        """Withdraw a waiting intent; False when it was matched meanwhile (take it instead)."""
        with self._write() as db:
            return db.run("DELETE FROM intents WHERE id = ? AND match_id IS NULL", (row,)) > 0

    def purge(self, now: float) -> int:
        """Forget intents that expired, and matched ones never picked up (after their expiry)."""
        with self._write() as db:
            db.run("DELETE FROM servers WHERE expires <= ?", (now - LEASE_KEPT,))
            return db.run("DELETE FROM intents WHERE expires <= ?", (now,))

    def pending_count(self) -> int:
        with self._read() as db:
            row = db.one("SELECT count(*) FROM intents")
        return int(row[0]) if row else 0

    # -- PN inventories ---------------------------------------------------------------------

    def register_pn(self, inventory: ServerInventory, now: float) -> None:
        """Record (or extend) the PN ``inventory.pn_id`` of the gateway ``inventory.gw_id``
        and its members, their LocalEUKeys sealed.

        A PN is its gateway's: the key is (gateway, PN id), so a gateway that names another's
        PN id (it crosses the PAN in the clear in the setup notify, before the registration:
        OMA CPNS "PN Establishment", step 2) registers a PN of its own, and neither reads nor
        changes the other's (security finding 5 of the registration's wait review)."""
        gw_id, pn_id = inventory.gw_id, inventory.pn_id
        with self._write() as db:
            # Its gateway enrolled and no member revoked, each staying so until this commits
            # (a revoke waits for it): a device revoked while its registration was under way
            # is not put back in a PN.
            # `revoked` is what counts, a row in devices or not (atk20r 4).
            for device_id in (gw_id, *(m.pne_id for m in inventory.members)):
                enrolled = bool(db.held("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)))
                revoked = bool(db.one("SELECT 1 FROM revoked WHERE device_id = ?", (device_id,)))
                if enrolled and not revoked:
                    continue
                if device_id == gw_id:
                    raise NotFoundError("this gateway is not enrolled with the key server")
                if revoked:
                    raise NotFoundError(peer_not_enrolled(device_id))
            db.run(
                "INSERT INTO pns (gw_id, pn_id, gw_name, setup_type, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gw_id, pn_id) DO UPDATE SET "
                "gw_name = excluded.gw_name, setup_type = excluded.setup_type, "
                "updated = excluded.updated",
                (gw_id, pn_id, inventory.gw_name, int(inventory.setup_type), now, now),
            )
            for m in inventory.members:
                sealed = None
                if m.local_key is not None:
                    sealed = self._sealer.seal(m.local_key, *_local_key_ad(gw_id, pn_id, m.pne_id))
                db.run(
                    "INSERT INTO pn_members (gw_id, pn_id, pne_id, name, caps, contents, "
                    "key_source, local_key_sealed, local_key_ad, joined) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (gw_id, pn_id, pne_id) DO UPDATE SET name = excluded.name, "
                    "caps = excluded.caps, contents = excluded.contents, "
                    "key_source = excluded.key_source, "
                    "local_key_sealed = excluded.local_key_sealed, "
                    "local_key_ad = excluded.local_key_ad, joined = excluded.joined",
                    (gw_id, pn_id, m.pne_id, m.name, m.caps, json.dumps(list(m.contents)),
                     int(m.key_source), sealed, LOCAL_KEY_AD, now),
                )

    def pn(self, gw_id: bytes, pn_id: bytes) -> PnRow:
        """The gateway ``gw_id``'s PN ``pn_id`` (:class:`NotFoundError` if it has none)."""
        with self._read() as db:
            row = db.one(
                "SELECT pn_id, gw_id, gw_name, setup_type FROM pns "
                "WHERE gw_id = ? AND pn_id = ?", (gw_id, pn_id),
            )
            if row is None:
                raise NotFoundError("no such PN")
            members = db.all(
                "SELECT pne_id, name, caps, contents, key_source, local_key_sealed IS NOT NULL "
                "FROM pn_members WHERE gw_id = ? AND pn_id = ? ORDER BY joined, pne_id",
                (gw_id, pn_id),
            )
        return PnRow(
            bytes(row[0]), bytes(row[1]), row[2], SetupType(row[3]),
            tuple(
                {"pne_id": bytes(m[0]).hex(), "name": m[1], "caps": m[2],
                 "contents": json.loads(m[3]), "key_source": KeySource(m[4]).name.lower(),
                 "local_eukey": bool(m[5])}
                for m in members
            ),
        )

    def pn_keys(self) -> list[tuple[bytes, bytes]]:
        """Every registered PN as (gateway id, PN id), the oldest first (``pairkit ttp list``)."""
        with self._read() as db:
            rows = db.all("SELECT gw_id, pn_id FROM pns ORDER BY created, gw_id, pn_id")
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    def local_eukey(self, gw_id: bytes, pn_id: bytes, pne_id: bytes) -> bytes | None:
        """A stored LocalEUKey of the gateway ``gw_id``'s PN, unsealed (tests check it is
        stored sealed, and opens)."""
        with self._read() as db:
            row = db.one(
                "SELECT local_key_sealed, local_key_ad FROM pn_members "
                "WHERE gw_id = ? AND pn_id = ? AND pne_id = ?",
                (gw_id, pn_id, pne_id),
            )
        if row is None or row[0] is None:
            return None
        # Sealed to its gateway, whatever local_key_ad says: a key sealed before schema 4 was
        # sealed again when the store opened (_reseal_local_keys), so one that still says 1
        # was written by someone else (it opens nowhere).
        return self._sealer.open(bytes(row[0]), *_local_key_ad(gw_id, pn_id, pne_id))

    def _reseal_local_keys(self) -> int:
        """Seal to its gateway every LocalEUKey sealed before schema version 4 (to its PN id
        and PNE only, ``local_key_ad`` 1), as the store opens; how many.  Left sealed the old
        way, such a key moved by someone who can write the database (not read ``seal.key``)
        into another gateway's row of the same PN id and PNE opened there, the column that
        says how it was sealed being no part of the seal (attack review of the PN id scoping,
        item 5).  One that does not open the old way is left as it is, and opens nowhere."""
        with self._read() as db:
            if db.one("SELECT 1 FROM pn_members WHERE local_key_ad <> ? "
                      "AND local_key_sealed IS NOT NULL LIMIT 1", (LOCAL_KEY_AD,)) is None:
                return 0  # nothing to do: no write lock taken (`ttp list`, every start)
        done = 0
        with self._write() as db:
            rows = db.all(
                "SELECT gw_id, pn_id, pne_id, local_key_sealed FROM pn_members "
                "WHERE local_key_ad <> ? AND local_key_sealed IS NOT NULL", (LOCAL_KEY_AD,),
            )
            for gw_id, pn_id, pne_id, sealed in rows:
                ids = bytes(gw_id), bytes(pn_id), bytes(pne_id)
                try:
                    key = self._sealer.open(bytes(sealed), "local-eukey", *ids[1:])
                except SealedValueError:
                    continue
                db.run(
                    "UPDATE pn_members SET local_key_sealed = ?, local_key_ad = ? "
                    "WHERE gw_id = ? AND pn_id = ? AND pne_id = ?",
                    (self._sealer.seal(key, *_local_key_ad(*ids)), LOCAL_KEY_AD, *ids),
                )
                done += 1
        return done


#: ``pn_members.local_key_ad`` of a LocalEUKey sealed to its gateway, PN and PNE (schema 4)
LOCAL_KEY_AD: Final = 2


def _local_key_ad(gw_id: bytes, pn_id: bytes, pne_id: bytes) -> tuple[str, bytes, bytes, bytes]:
    """The purpose and row a LocalEUKey is sealed to: its PN is the gateway's (schema 4), so
    a sealed key moved to the same PN id and PNE of another gateway does not open."""
    return "pn-local-eukey", gw_id, pn_id, pne_id


class _SqliteTx:
    """:class:`Tx` over an SQLite connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.db.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.db.execute(sql, params).fetchall())

    def locking(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.one(sql, params)  # BEGIN IMMEDIATE holds the database

    def held(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.all(sql, params)  # BEGIN IMMEDIATE holds the database

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.db.execute(sql, params).rowcount)

    def insert_id(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.db.execute(sql, params).lastrowid or 0)


class TtpStore(Store):
    """The SQLite store, one file (see the module docstring): the embedded default."""

    def __init__(self, path: Path, sealer: Sealer, *, rng: Rng = os.urandom) -> None:
        super().__init__(sealer, rng=rng)
        self.path = path
        self.where = f"SQLite {path}"
        if not path.exists():
            # Sealed or not, the keys are nobody else's business: 0600 from the start (SQLite
            # gives its -wal and -shm files the same mode).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the database {path} cannot use WAL mode ({mode})")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            migrate(self._db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use the database {path}: {exc}") from None
        self._tx = _SqliteTx(self._db)
        self._reseal_local_keys()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Tx]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so matches never race."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"the database is busy: {exc}") from None
        try:
            yield self._tx
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Tx]:
        yield self._tx

    def _lock_pair(self, db: Tx, owner: bytes, peer: bytes, context: bytes) -> None:
        pass  # BEGIN IMMEDIATE: write transactions are serial already


#: the SQLite store by what it is (``TtpStore`` is its historical name)
SqliteStore = TtpStore


def migrate(db: sqlite3.Connection, *, upto: int = SCHEMA_VERSION) -> int:
    """Bring the schema to version ``upto``; the version it had.  Refuses a newer file."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this pairkit "
            f"({SCHEMA_VERSION}); upgrade pairkit to use it"
        )
    for target in range(version + 1, upto + 1):
        # The script and the version bump commit together, or not at all; and only on the
        # version the script starts from, checked under the write lock (the version read
        # above was read before it): another process that opened the file at the same time
        # may have taken this step first.  Before, the second process ran the step again on
        # the migrated file; version 4's copy of the PN tables runs cleanly twice and joined
        # each member to every gateway's PN of its id (attack review of the PN id scoping).
        script = MIGRATIONS[target - 1]
        try:
            db.executescript(
                f"BEGIN IMMEDIATE;\n{_from_version(target - 1)}\n{script}\n"
                f"PRAGMA user_version = {target};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            now = int(db.execute("PRAGMA user_version").fetchone()[0])
            if now > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {now}, newer than this pairkit "
                    f"({SCHEMA_VERSION}); upgrade pairkit to use it"
                ) from None
            if now >= target:
                continue  # another process took this step first
            raise StoreError(f"migrating the database to version {target} failed: {exc}") from None
    return version


def _from_version(version: int) -> str:
    """SQL that fails, inside a migration step's transaction, unless the file is still at
    ``version`` (a CHECK on a temporary table: SQLite's DDL cannot be run conditionally)."""
    table = f"CREATE TEMP TABLE pairkit_migrating (version INTEGER CHECK (version = {version}));"
    return "\n".join((
        table,
        "INSERT INTO pairkit_migrating SELECT user_version FROM pragma_user_version;",
        "DROP TABLE pairkit_migrating;",
    ))


def is_database_url(text: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database (``postgresql://...``)."""
    return text.startswith(("postgresql://", "postgres://"))


def open_store(
    directory: Path, *, rng: Rng = os.urandom, database: str | None = None
) -> Store:
    """The store of a server directory made by ``pairkit ttp init``: its SQLite file, or the
    PostgreSQL database ``database`` (``postgresql://...``; needs the ``postgres`` extra).
    Either way the keys in it are sealed under the directory's ``seal.key``."""
    sealer = Sealer.from_file(directory / "seal.key", rng=rng)
    if database is None:
        return TtpStore(directory / "ttp.sqlite3", sealer, rng=rng)
    if not is_database_url(database):
        raise ConfigError("--db takes a PostgreSQL URL: postgresql://USER@HOST:PORT/DATABASE")
    from .pgstore import PostgresStore

    return PostgresStore(database, sealer, rng=rng)
