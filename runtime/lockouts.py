"""Failed PIN attempts and unconfirmed compare codes kept beside the keystore (docs/security.md,
rule 7, "The lock outlives the host process").

A :class:`~pairkit.pairing.methods.common.Lockout` counts a stranger's wrong PINs, and the
codes compare showed that nobody confirmed, against the host's
:class:`~pairkit.pairing.methods.PinPolicy`.  In one process's memory the count ended with the
process: a host started again (a Pi's service restarted, a reboot, a crash), or a second host
process of the same device, gave a stranger a fresh budget.  :class:`KeystoreLockJournal` keeps
them in the keystore's lock records instead (:class:`LockFile`: the sealed file
``KEYSTORE.locks``), as the record ``lockout.pin``, ``lockout.compare`` or (a PN gateway's PIN)
``lockout.pn-pin``: ``{"failures": [wall-clock seconds, oldest first], "streak": n}``, with
``"boot"`` and ``"monotonic"`` beside them where the clock says which boot it counts from
(below), and for compare the places of its codes out
(:class:`~pairkit.pairing.methods.common.CodeTurns`): ``"places": [{"key", "at", "until"}]`` in
wall-clock seconds, each with ``"monotonic": [at, until]`` where the boot is named; a place of
another boot is read as ended (its process is gone), so it counts as a failure at once; and
``"counted": [key]``, the last places counted, at their end or as their holders settled them
(their holders, if still running, count them no more).  The records are sealed under a key kept
in the sealed keystore, so only its owner's pairkit writes them.  Each change is made under the
lock file's lock (:meth:`LockFile.update`), and each check reads what another process saved (one
short read of a small file when nothing changed).  A failure is rare: the policy itself bounds
the failures a stranger can cause (about 12,000 a year); a compare pairing writes twice (its
place taken, then given back), a few hundred bytes each (the whole keystore before session 10).

The keystore keeps each lock's *floor*: its counted part (failures, streak, and their boot and
monotonic times; no places), as the setting of the same name, in the format pairkit kept the
whole record in before session 10.  A check reads the records and the floor as one (each
failure either holds, the same one in both counted once; the longer streak), so that an older
copy of the records' file put back counts no fewer failures than the keystore holds, and an
older pairkit's host still running (which reads and writes the keystore's settings) and an
upgraded one count each other's failures (attack review of the lock records, findings 4 and 5).
The floor is written, with the records, only by a change of what it holds: a failure counted,
failures cleared (an attempt won, a quiet day, the owner's reset); a compare place taken or
given back writes the records alone.  Such a change is made under the keystore's lock and then
the records' (the order every process takes them in), and either write lost to a crash leaves
the failure counted in the other.

Times: the machines count on the monotonic clock, which starts again at each boot; the keystore
holds wall-clock seconds.  A journal converts with one offset, read when it is made, so that the
times one process writes and reads again are the same (to a millisecond, within
:data:`~pairkit.pairing.methods.common.TIME_SLACK`).  A time kept later than now (the wall clock
was set back since, as on a Pi that booted without the network's time) counts as the journal's
start: the lock it belongs to is kept, and ends at the latest one ``max_lock`` after the host
started.  Within one boot the wall clock is not needed: the record also keeps the monotonic
times and the boot they count from (Linux's ``boot_id``, :meth:`SystemClock.boot_id`), and a
journal of the same boot reads those, so a wall clock stepped between two hosts' starts (a Pi
whose network time arrived after the first started) shifts nothing.  Across a reboot the wall
clock is all there is: a host then reads the times kept shifted by whatever step its clock made.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .clock import SYSTEM_CLOCK, Clock
from .filestore import FileStorage
from .pairing import cbor
from .pairing.errors import KeystoreError
from .pairing.keystore import Keystore
from .pairing.keystore.records import thaw
from .pairing.keystore.storage import Storage
from .pairing.methods.common import COUNTED_KEPT, TIME_SLACK, LockRecord, Place

__all__ = ["HOST_KINDS", "KINDS", "KeystoreLockJournal", "LockFile", "forget_lockouts"]

#: the locks kept, by the setting's suffix: a host's PIN and compare (``pairkit host``), and a
#: PN gateway's PIN for elements (``pairkit pn gateway --pin-link``)
KINDS: Final = ("pin", "compare", "pn-pin")
#: the locks ``pairkit host --reset-lockouts`` lifts
HOST_KINDS: Final = ("pin", "compare")
_PREFIX: Final = "lockout."
#: failures kept per lock: all a policy reads is the last ``max_failures``
_MAX_KEPT: Final = 64

#: the keystore setting holding the lock file's key (made once, kept sealed in the keystore)
_KEY_SETTING: Final = "lockouts.key"
#: the lock file's first bytes, and what its seal is bound to
_MAGIC: Final = b"PKL1"
_AD: Final = b"pairkit lock records v1"
_NONCE: Final = 12
#: a lock file larger than this is not read (three locks' records are a few KiB)
_MAX_FILE: Final = 256 * 1024
#: what a lock file has read before its first read
_UNREAD: Final = object()
#: the keystore setting holding the sealed records beside a keystore that is not a file
_RECORDS_SETTING: Final = "lockouts.records"


def _companion(ks: Keystore) -> Storage:
    """Where the lock records of ``ks`` are: the file ``NAME.locks`` beside a keystore file
    (same disk, same test hooks), or, beside a keystore kept another way (``MemoryStorage``:
    an application that stores the sealed bytes its own way), inside the keystore itself."""
    storage = ks.storage
    if isinstance(storage, FileStorage):
        return FileStorage(storage.path.with_name(storage.path.name + ".locks"),
                           before_replace=storage.before_replace, what="keystore's lock records")
    return _InKeystore(ks)


class _InKeystore:
    """The sealed records kept in the keystore's setting ``lockouts.records``, for a keystore
    not kept in a file: they go wherever its application stores its sealed bytes, and outlive
    the process with them (attack review of the lock records, finding 6: kept in this process's
    memory, a restart refused every check, and the reset gave a fresh budget).  Each change
    saves the whole keystore, as before session 10.  The lock is :meth:`Keystore.update`
    (the records written are saved as it ends); :meth:`inside` marks one taken already."""

    def __init__(self, ks: Keystore) -> None:
        self._ks = ks
        self._held = False

    @property
    def where(self) -> str:
        return f"{self._ks.storage.where} (its lock records)"

    def exists(self) -> bool:
        return self.read(_MAX_FILE) is not None

    def read(self, limit: int) -> bytes | None:
        self._ks.follow()  # nothing to read inside its update
        data = self._ks.setting(_RECORDS_SETTING)
        return bytes(data[:limit + 1]) if isinstance(data, bytes) else None

    def replace(self, data: bytes) -> None:
        if not self._held:
            raise KeystoreError(f"the lock records at {self.where} are written under its lock")
        self._ks.set_setting(_RECORDS_SETTING, bytes(data))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        if self._held:  # inside the keystore's update already (see inside)
            yield
            return
        with self._ks.update(), self.inside():
            yield

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The keystore's update is under way: :meth:`lock` is that update."""
        held, self._held = self._held, True
        try:
            yield
        finally:
            self._held = held


class LockFile:
    """The locks' records of one keystore, in a small file of their own beside it.

    A lock's record changes at every compare pairing (its place taken, then given back) and at
    every PIN attempt.  Kept among the keystore's settings, each change sealed and wrote the
    whole keystore, every peer and prekey with it: at 1,000 guests comparing at once that was
    1,200 saves of the whole keystore, most of the host's memory growth and a third of its CPU
    per pairing (issue 13; docs/security.md, rule 7).  Here each change writes a few hundred
    bytes, with the same guarantees: sealed (ChaCha20-Poly1305, RFC 8439) under a random key
    kept in the sealed keystore (so only the owner's pairkit writes records it reads back),
    written whole and atomically under a lock of its own (:class:`FileStorage`: a temporary
    file, fsync, rename), read again at each check when another process changed it.

    The interface is the keystore's part a journal uses: :meth:`follow`, :meth:`setting`, and
    :meth:`update` giving an object with ``setting``, ``set_setting`` and ``delete_setting``.
    The keystore keeps each lock's floor beside it (:class:`KeystoreLockJournal`), where an
    older pairkit kept the whole record.  Beside a keystore not kept in a file the sealed
    records are kept inside it (:class:`_InKeystore`), with no floor, and records an older
    pairkit kept among its settings are moved into them (:meth:`take_from_keystore`).  The key
    is made, under the keystore's lock, after the file is written (:meth:`_cipher`); the
    keystore's lock is never taken under the file's.
    """

    def __init__(self, ks: Keystore) -> None:
        self._ks = ks
        self._storage = _companion(ks)
        #: marks the keystore's update as the records' lock too, when they are kept in it
        self._within: Callable[[], contextlib.AbstractContextManager[None]] = getattr(
            self._storage, "inside", contextlib.nullcontext)
        self._aead: ChaCha20Poly1305 | None = None
        #: the bytes last read or written (``_UNREAD`` before the first read), and the records
        #: they hold
        self._seen: object = _UNREAD
        self._records: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<LockFile {self._storage.where}>"

    @property
    def floored(self) -> bool:
        """Whether the records are kept outside the keystore (a file beside it), so that the
        keystore keeps a floor of each lock (:class:`KeystoreLockJournal`); beside a keystore
        not kept in a file they are inside it already."""
        return not isinstance(self._storage, _InKeystore)

    def _cipher(self) -> ChaCha20Poly1305:
        if self._aead is None:
            key = self._ks.setting(_KEY_SETTING)
            if not (isinstance(key, bytes) and len(key) == 32):
                self._ks.follow()
                with self._ks.update() as k, self._within():  # one process makes it
                    key = k.setting(_KEY_SETTING)
                    if not (isinstance(key, bytes) and len(key) == 32):
                        key = os.urandom(32)
                        # The file first, then the key (saved as this update ends): a keystore
                        # holding the key always has its file beside it (see follow), even if
                        # the disk fills or the process dies between the two writes, and no
                        # other process reads the key before the file is there (attack review
                        # of the lock records, finding 2).  A file there now is sealed under
                        # no key this keystore holds (a keystore made again, or put back from
                        # before its key; a first use that died before its key was saved):
                        # nobody can read it, and it is replaced.
                        with self._storage.lock():
                            self._storage.replace(self._seal({}, ChaCha20Poly1305(key)))
                        k.set_setting(_KEY_SETTING, key)
            self._aead = ChaCha20Poly1305(key)
        return self._aead

    def take_key(self) -> None:
        """Make sure the records' key is read (or made): before the keystore's lock is taken
        around the records' (:meth:`_cipher` takes it when it makes the key)."""
        self._cipher()

    def follow(self) -> None:
        """Read the records again if another process (or this one's other journals) changed
        them: one short read of a small file when nothing changed."""
        data = self._storage.read(_MAX_FILE)
        if data is not None and data == self._seen:
            return
        if data is not None and self._aead is None:
            # The key first (never under the file's lock: update and reset have it before), and
            # the file again: making the key replaces a file no key here opens (see _cipher).
            self._cipher()
            data = self._storage.read(_MAX_FILE)
        # No file is never "nothing changed": read as no records only while the keystore
        # holds no key (a process that read no file before another made the key must not take
        # the file deleted since for the clean slate it read then; attack review of the lock
        # records, finding 1).  update() reads the key from the keystore first.
        if data is None and self._ks.setting(_KEY_SETTING) is not None:
            # Records were kept here: their file gone is no clean slate (a stranger who can
            # delete a file must not get a fresh budget by it); the owner resets on purpose.
            raise KeystoreError(
                f"the lock records at {self._storage.where} are gone; `pairkit host "
                "--reset-lockouts` starts them afresh"
            )
        self._records = self._open(data)
        self._seen = data

    def setting(self, key: str) -> Any:
        """The record kept under ``key`` as stored now (read again only if it changed since:
        the same object while nothing changed), or None."""
        self.follow()
        return self._records.get(key)

    @contextlib.contextmanager
    def update(self) -> Iterator[_Records]:
        """Change the records under the lock file's lock: read again, changed, written whole
        (or, if the block raises, nothing written)."""
        self._cipher()  # its key first: the keystore's lock is never taken under this one
        with self._storage.lock():
            self.follow()
            records = _Records(dict(self._records))
            yield records
            if records.changed:
                data = self._seal(records.values)
                self._storage.replace(data)
                self._seen, self._records = data, records.values

    def take_from_keystore(self, keys: tuple[str, ...]) -> None:
        """Records an older pairkit kept among the settings of a keystore not kept in a file:
        moved into its lock records (a record already there wins), in one save of the
        keystore.  Beside a keystore file nothing is moved: the keystore's settings of the
        same names are the locks' floors, which every check reads (and an older pairkit's host
        still running goes on reading and writing; :class:`KeystoreLockJournal`)."""
        if self.floored or all(self._ks.setting(key) is None for key in keys):
            return
        self._cipher()  # (the keystore's lock is not taken again inside its update)
        with self._ks.update() as k, self._within(), self.update() as mine:
            for key in keys:
                old = k.setting(key)
                if old is None:
                    continue
                if mine.setting(key) is None:
                    mine.set_setting(key, thaw(old))
                k.delete_setting(key)

    def _open(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            return {}
        try:
            if len(data) > _MAX_FILE or not data.startswith(_MAGIC):
                raise ValueError("not a lock file")
            nonce = data[len(_MAGIC):len(_MAGIC) + _NONCE]
            body = self._cipher().decrypt(nonce, data[len(_MAGIC) + _NONCE:], _AD)
            # sealed by this keystore's pairkit, as its body, and read as it (no value
            # sharing: a record of 2**depth nodes; session 19, kvtree)
            records = cbor.decode_stored(body)
            if not isinstance(records, dict) or not all(isinstance(k, str) for k in records):
                raise ValueError("not a map of records")
        except (InvalidTag, ValueError, cbor2.CBORDecodeError):
            raise KeystoreError(
                f"the lock records at {self._storage.where} do not open (damaged, or made for "
                "another keystore); `pairkit host --reset-lockouts` starts them afresh"
            ) from None
        return records

    def _seal(self, records: Mapping[str, Any], aead: ChaCha20Poly1305 | None = None) -> bytes:
        nonce = os.urandom(_NONCE)
        body = cbor2.dumps(dict(records), canonical=True)
        return _MAGIC + nonce + (aead or self._cipher()).encrypt(nonce, body, _AD)

    def reset(self, keys: tuple[str, ...]) -> bool:
        """Remove the records of ``keys``, or every record when the file does not open; whether
        there were any."""
        self._cipher()
        with self._storage.lock():
            try:
                self.follow()
            except KeystoreError:  # damaged or gone: every record starts afresh
                self._storage.replace(self._seal({}))
                self._seen, self._records = _UNREAD, {}
                return True
        with self.update() as records:
            present = [key for key in keys if records.setting(key) is not None]
            for key in present:
                records.delete_setting(key)
        return bool(present)


class _Records:
    """The records inside :meth:`LockFile.update`."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.changed = False

    def setting(self, key: str) -> Any:
        return self.values.get(key)

    def set_setting(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.changed = True

    def delete_setting(self, key: str) -> None:
        if key in self.values:
            del self.values[key]
            self.changed = True


#: each keystore's lock file, shared by its journals in this process
_FILES: weakref.WeakKeyDictionary[Keystore, LockFile] = weakref.WeakKeyDictionary()


def lock_file(ks: Keystore) -> LockFile:
    """The :class:`LockFile` of ``ks`` (one per keystore object in a process)."""
    found = _FILES.get(ks)
    if found is None:
        found = _FILES[ks] = LockFile(ks)
    return found


class KeystoreLockJournal:
    """One lock's failures (``kind``: one of :data:`KINDS`) kept beside ``ks`` (its
    :class:`LockFile`) with their floor in it (the module docstring; docs/security.md, rule 7,
    "The lock records' own file")."""

    def __init__(self, ks: Keystore, kind: str, clock: Clock = SYSTEM_CLOCK) -> None:
        if kind not in KINDS:
            raise ValueError(f"no host lock {kind!r} (one of {KINDS})")
        self._ks = ks
        self._key = _PREFIX + kind
        self._clock = clock
        #: where the records are kept (the floor: in the keystore, beside a records' file)
        self._file = lock_file(ks)
        self._file.take_from_keystore((self._key,))
        #: wall-clock seconds less the machines' clock, read once (see the module docstring)
        self._offset = clock.wall() - clock.monotonic()
        #: when this journal was made, on the machines' clock: a time kept later than now
        #: counts as this (see the module docstring)
        self._start = clock.monotonic()
        #: the boot the machines' clock counts from, when the clock says (see the module
        #: docstring): within it, the monotonic times kept are read as they are
        boot = getattr(clock, "boot_id", None)
        self._boot: str | None = boot() if callable(boot) else None
        #: the record last parsed by :meth:`load` and what it read as (see there)
        self._parsed: tuple[tuple[Any, Any], LockRecord] = ((None, None), LockRecord([], 0))
        self._clamped = False
        #: whether a save of the keystore failed since its floor was last written (_together)
        self._floor_behind = False

    def __repr__(self) -> str:
        return f"KeystoreLockJournal({self._key!r})"

    def _floor(self, follow: bool = True) -> Any:
        """The floor the keystore keeps of this lock, as stored now (read again only if some
        process saved the keystore since: never under the records' lock, as that may take the
        keystore's), or as the keystore was last read (``follow`` false), or None (none kept,
        or a keystore not kept in a file, whose records are inside it)."""
        if not self._file.floored:
            return None
        if follow:
            self._ks.follow()
        return self._ks.setting(self._key)

    def load(self, now: float) -> LockRecord:
        raw, floor = self._file.setting(self._key), self._floor()
        # Read as before while the records and the floor are the very same (a check per
        # compare look: parsed again only when some process changed one), unless a time in
        # them was read as this journal's start (later than now then, perhaps not now).
        seen = self._parsed[0]
        if (raw is not None or floor is not None) and raw is seen[0] and floor is seen[1]:
            return self._parsed[1]
        self._clamped = False
        record = self._merged(raw, floor)
        self._parsed = ((None, None), record) if self._clamped else ((raw, floor), record)
        return record

    def update(self, change: Callable[[LockRecord], LockRecord], now: float) -> None:
        if not self._file.floored:
            with self._file.update() as records:
                self._keep(records, change(self._read(records.setting(self._key))))
            return
        if self._floor_behind:  # (see _together)
            self._together(change)
            return
        # Under the records' lock alone while nothing counted changes (a compare place taken
        # or given back, a PIN attempt refused by a closed lock): the keystore is not written.
        # Its floor is read first: following the keystore may take its lock, never under the
        # records' (another process holds it around them).
        # The floor read may be older than the records (another process changed both since,
        # the owner's reset cleared both): written alone, the records take nothing from it
        # (attack review of the lock records' floor, finding 3); when it adds a failure to them
        # (older records put back, an older pairkit's count), the two are written together.
        self._floor()
        with self._file.update() as records:
            raw = records.setting(self._key)
            merged = self._merged(raw, self._floor(follow=False))
            kept = change(_copy(merged))
            if _same_count(kept, merged) and _same_count(merged, self._read(raw)):
                self._keep(records, kept)
                return
        # A failure counted, or failures cleared: again, under the keystore's lock and then the
        # records' (the order every process takes them in), and the floor written with the
        # records.  ``change`` is given the record as kept then; what it decided above is
        # dropped.  The records are written first, the keystore as its update ends: a crash
        # between leaves a failure counted in one of the two, which the next read merges.
        self._together(change)

    def _together(self, change: Callable[[LockRecord], LockRecord]) -> None:
        """``change`` made under the keystore's lock and then the records', the floor written
        with the records (:meth:`update`).  A keystore that could not be saved (a full disk)
        leaves the floor behind the records, which an older copy of them put back would undo
        (attack review of the lock records' floor, finding 5): until a save succeeds, every
        change of this journal first writes the floor again, and is not made (it raises) while
        that cannot be kept, so no place is taken and no guess played on records alone.  The
        floor written again is the records as they are then (an older copy put back meanwhile
        holds less): a compare code whose count was not kept is counted again by its
        :class:`~pairkit.pairing.methods.common.Lockout` (``unkept``) with the next change
        (attack review of the journal's faults, finding 1)."""
        self._file.take_key()  # (the keystore's lock is not taken again inside its update)
        if self._floor_behind:
            self._write_both(_copy)  # the floor as the records and it hold now, nothing else
            self._floor_behind = False
        self._write_both(change)

    def _write_both(self, change: Callable[[LockRecord], LockRecord]) -> None:
        try:
            with self._ks.update() as k, self._file.update() as records:
                kept = change(self._merged(records.setting(self._key), k.setting(self._key)))
                floor = self._keep(records, kept)
                if floor is None:
                    k.delete_setting(self._key)
                else:
                    k.set_setting(self._key, floor)
        except KeystoreError:
            self._floor_behind = True
            raise

    def _merged(self, raw: Any, floor: Any) -> LockRecord:
        """The records' ``raw`` record and the keystore's ``floor`` of it, read as one: every
        failure either keeps, the same failure in both counted once (see :func:`_union`), the
        longer streak, and the records' places (the floor keeps none)."""
        record = self._read(raw)
        if floor is None:
            return record
        kept = self._read(floor)
        failures = _union(record.failures, kept.failures)
        return LockRecord(failures, max(record.streak, kept.streak, len(failures)),
                          record.places, record.counted,
                          [(record.failures, record.streak), (kept.failures, kept.streak)])

    def _keep(self, records: _Records, kept: LockRecord) -> dict[str, Any] | None:
        """Write ``kept`` to the records; the floor the keystore keeps of it (None: none)."""
        if not kept.failures and not kept.streak and not kept.places and not kept.counted:
            records.delete_setting(self._key)  # nothing to keep (an attempt won, taken back)
            return None
        last = kept.failures[-_MAX_KEPT:]
        places = kept.places[-_MAX_KEPT:]
        # With the boot named, this boot's readers take the monotonic times, and the wall
        # times serve the next boot only: they come from the wall clock as it reads now,
        # which a network time that arrived after this host started has set right (the
        # offset read at the start would keep them a clock step behind for good).
        offset = (self._clock.wall() - self._clock.monotonic() if self._boot is not None
                  else self._offset)
        record: dict[str, Any] = {
            "failures": [round(t + offset, 3) for t in last], "streak": kept.streak,
        }
        if self._boot is not None:
            record |= {"boot": self._boot, "monotonic": [round(t, 3) for t in last]}
        floor = dict(record) if last or kept.streak else None
        if places:
            record["places"] = [_place_record(p, offset, self._boot is not None)
                                for p in places]
        if kept.counted:
            record["counted"] = kept.counted[-COUNTED_KEPT:]
        records.set_setting(self._key, record)
        return floor

    def _read(self, record: Any) -> LockRecord:
        """What ``record`` keeps, on the machines' clock; nothing for a record this pairkit
        does not read (the keystore is sealed: only the owner's pairkit wrote it)."""
        if not isinstance(record, Mapping):
            return LockRecord([], 0)
        raw, streak = record.get("failures"), record.get("streak")
        if not isinstance(raw, tuple | list) or not isinstance(streak, int) or streak < 0:
            return LockRecord([], 0)
        times = [t for t in raw if _is_time(t)]
        mono = record.get("monotonic")
        this_boot = self._boot is not None and record.get("boot") == self._boot
        if this_boot and isinstance(mono, tuple | list) and len(mono) == len(times) \
                and all(_is_time(t) for t in mono):
            # Kept in this boot: the machines' clock as it read then, whatever the wall clock
            # did since (a Pi's network time arriving after the host started).
            times, offset = list(mono), 0.0
        else:
            offset = self._offset
        # Later than now (the wall clock went back since they were kept): this journal's
        # start, so that such a lock ends, at the latest, one max_lock after the host started.
        # Now is the clock's, not the caller's ``now``, which may be an earlier time (compare
        # counts a code at the time it went out; a PIN attempt is taken back at its start);
        # the slack covers the millisecond a time kept may have been rounded up by.
        limit = self._clock.monotonic() + TIME_SLACK

        def when(t: float) -> float:
            if t <= limit:
                return t
            self._clamped = True
            return self._start

        failures = sorted(when(t - offset) for t in times)
        places = []
        raw_places = record.get("places")
        for p in raw_places if isinstance(raw_places, tuple | list) else ():
            if not (isinstance(p, Mapping) and isinstance(p.get("key"), str)
                    and _is_time(p.get("at")) and _is_time(p.get("until"))):
                continue  # not a place this pairkit wrote: no place, no failure
            pair = p.get("monotonic")
            if this_boot and isinstance(pair, tuple | list) and len(pair) == 2 \
                    and all(_is_time(t) for t in pair):
                at, until = pair
            elif self._boot is not None and not this_boot and isinstance(record.get("boot"), str):
                # Held in another boot: its process is gone, its exchange over (it counts).
                at, until = p["at"] - self._offset, -math.inf
            else:
                at, until = p["at"] - self._offset, p["until"] - self._offset
            # A place lasts as long as it was written to (a wall clock set back since must not
            # make it hold for days): its end is read from its start as read.
            places.append(Place(p["key"], when(at), when(at) + max(0.0, until - at)))
        raw_counted = record.get("counted")
        counted = [k for k in raw_counted if isinstance(k, str)] \
            if isinstance(raw_counted, tuple | list) else []
        return LockRecord(failures, max(streak, len(failures)), places, counted)


def _copy(record: LockRecord) -> LockRecord:
    return LockRecord(list(record.failures), record.streak, list(record.places),
                      list(record.counted), list(record.copies))


def _union(mine: list[float], floor: list[float]) -> list[float]:
    """The failures of two sorted lists as one: each time as often as the list that holds it
    more often, a time in both (within :data:`TIME_SLACK`: each list keeps the same rounded
    times, written by one change) counted once.  Every change of an upgraded host writes the
    same failures to both; an older host's changes write the floor from the floor as it read
    it; so a failure is in one list, or in both at the same time.  Distinct failures at one
    time (a test's clock, compare's codes counted at the time they went out) stay distinct: a
    list holding two keeps two."""
    out: list[float] = []
    i = j = 0
    while i < len(mine) or j < len(floor):
        if j == len(floor) or (i < len(mine) and mine[i] < floor[j] - TIME_SLACK):
            out.append(mine[i])
            i += 1
        elif i == len(mine) or floor[j] < mine[i] - TIME_SLACK:
            out.append(floor[j])
            j += 1
        else:  # the same failure in both
            out.append(max(mine[i], floor[j]))
            i += 1
            j += 1
    return out


def _same_count(kept: LockRecord, read: LockRecord) -> bool:
    """Whether ``kept`` keeps the failures and streak ``read`` did (what the floor holds)."""
    a, b = kept.failures[-_MAX_KEPT:], read.failures[-_MAX_KEPT:]
    return kept.streak == read.streak and len(a) == len(b) and all(
        abs(x - y) <= TIME_SLACK for x, y in zip(sorted(a), sorted(b), strict=True))


def _is_time(t: object) -> bool:
    return isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)


def _place_record(place: Place, offset: float, boot: bool) -> dict[str, Any]:
    """A place as the keystore keeps it: wall-clock seconds, and this boot's monotonic ones
    when the boot is named (read as the failures are)."""
    kept: dict[str, Any] = {
        "key": place.key, "at": round(place.at + offset, 3),
        "until": round(place.until + offset, 3),
    }
    if boot:
        kept["monotonic"] = [round(place.at, 3), round(place.until, 3)]
    return kept


def forget_lockouts(ks: Keystore, kinds: tuple[str, ...] = HOST_KINDS,
                    clock: Clock = SYSTEM_CLOCK) -> bool:
    """Remove the kept failures of ``kinds`` (``pairkit host --reset-lockouts``, ``pairkit pn
    gateway --reset-lockouts``: the owner lifting a lock their own typos caused), from the
    records and from the keystore's floors (or an older pairkit's records) of them; whether
    there were any.  compare's places still held are kept: their codes are out now, at a host
    process of the device that may still run, and count when they end if nobody confirms them
    (a reset must not give a man in the middle a fresh budget beside the codes she holds:
    docs/security.md, "Codes out at once are held to the same budget").  A place of a process
    that died holds only until its exchange's end.  Records that do not open all go."""
    keys = tuple(_PREFIX + kind for kind in kinds)
    records = lock_file(ks)
    records.take_key()  # (the keystore's lock is not taken again inside its update)
    # The floors (where an older pairkit kept the records) and the records of the locks with no
    # places in one step, under the keystore's lock and then the records' (the order every
    # process takes them in): a failure counted between two steps wrote the records still
    # there back into the floor (attack review of the lock records' floor, finding 4).
    with ks.update() as k, records._within():
        present = [key for key in keys if k.setting(key) is not None]
        for key in present:
            k.delete_setting(key)
        forgot = records.reset(tuple(k for k in keys if k != _PREFIX + "compare")) \
            or bool(present)
    if "compare" in kinds:
        journal = KeystoreLockJournal(ks, "compare", clock)

        def keep_held(record: LockRecord) -> LockRecord:
            nonlocal forgot
            now = clock.monotonic()
            held = [p for p in record.places if p.until > now]
            forgot |= bool(record.failures or record.streak or len(held) < len(record.places))
            # The places ended are lifted: their holders, still running, count nothing.
            lifted = [p.key for p in record.places if p.until <= now]
            return LockRecord([], 0, held, [*record.counted, *lifted][-COUNTED_KEPT:])

        try:  # in one step under the lock: a place given back meanwhile stays given back
            journal.update(keep_held, clock.monotonic())
        except KeystoreError:
            # The records do not open: they all go.
            forgot = records.reset(()) or forgot
    return forgot
