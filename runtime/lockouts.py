"""Failed PIN attempts and unconfirmed compare codes kept in the keystore (docs/security.md,
rule 7, "The lock outlives the host process").

A :class:`~pairkit.pairing.methods.common.Lockout` counts a stranger's wrong PINs, and the codes
compare showed that nobody confirmed, against the host's :class:`~pairkit.pairing.methods.
PinPolicy`.  In one process's memory the count ended with the process: a host started again (a
Pi's service restarted, a reboot, a crash), or a second host process of the same device, gave a
stranger a fresh budget.  :class:`KeystoreLockJournal` keeps them in the keystore instead, as
the setting ``lockout.pin``, ``lockout.compare`` or (a PN gateway's PIN) ``lockout.pn-pin``:
``{"failures": [wall-clock seconds, oldest first], "streak": n}``, with ``"boot"`` and
``"monotonic"`` beside them where the clock says which boot it counts from (below), and for
compare the places of its codes out (:class:`~pairkit.pairing.methods.common.CodeTurns`):
``"places": [{"key", "at", "until"}]`` in wall-clock seconds, each with ``"monotonic": [at,
until]`` where the boot is named; a place of another boot is read as ended (its process is
gone), so it counts as a failure at once.  The
keystore is sealed, so only its owner's pairkit writes them.  Each change is made under the
keystore's lock (:meth:`Keystore.update`), and each check reads what another process saved
(:meth:`Keystore.follow`: one short read when nothing changed).  A failure is rare: the policy
itself bounds the failures a stranger can cause (about 12,000 a year); a compare pairing writes
twice (its place taken, then given back).

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

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from .clock import SYSTEM_CLOCK, Clock
from .pairing.keystore import Keystore
from .pairing.methods.common import TIME_SLACK, LockRecord, Place

__all__ = ["HOST_KINDS", "KINDS", "KeystoreLockJournal", "forget_lockouts"]

#: the locks kept, by the setting's suffix: a host's PIN and compare (``pairkit host``), and a
#: PN gateway's PIN for elements (``pairkit pn gateway --pin-link``)
KINDS: Final = ("pin", "compare", "pn-pin")
#: the locks ``pairkit host --reset-lockouts`` lifts
HOST_KINDS: Final = ("pin", "compare")
_PREFIX: Final = "lockout."
#: failures kept per lock: all a policy reads is the last ``max_failures``
_MAX_KEPT: Final = 64


class KeystoreLockJournal:
    """One lock's failures (``kind``: one of :data:`KINDS`) kept in ``ks``."""

    def __init__(self, ks: Keystore, kind: str, clock: Clock = SYSTEM_CLOCK) -> None:
        if kind not in KINDS:
            raise ValueError(f"no host lock {kind!r} (one of {KINDS})")
        self._ks = ks
        self._key = _PREFIX + kind
        self._clock = clock
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
        self._parsed: tuple[Any, LockRecord] = (None, LockRecord([], 0))
        self._clamped = False

    def __repr__(self) -> str:
        return f"KeystoreLockJournal({self._key!r})"

    def load(self, now: float) -> LockRecord:
        self._ks.follow()
        raw = self._ks.setting(self._key)
        # Read as before while the keystore holds the very same record (a check per compare
        # look: the record is parsed again only when some process changed it), unless a time
        # in it was read as this journal's start (later than now then, perhaps not now).
        if raw is not None and raw is self._parsed[0]:
            return self._parsed[1]
        self._clamped = False
        record = self._read(raw)
        self._parsed = (None, record) if self._clamped else (raw, record)
        return record

    def update(self, change: Callable[[LockRecord], LockRecord], now: float) -> None:
        with self._ks.update() as ks:
            kept = change(self._read(ks.setting(self._key)))
            if not kept.failures and not kept.streak and not kept.places:
                ks.delete_setting(self._key)  # nothing to keep (an attempt won, taken back)
                return
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
            if places:
                record["places"] = [_place_record(p, offset, self._boot is not None)
                                    for p in places]
            ks.set_setting(self._key, record)

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
        return LockRecord(failures, max(streak, len(failures)), places)


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


def forget_lockouts(ks: Keystore, kinds: tuple[str, ...] = HOST_KINDS) -> bool:
    """Remove the kept failures of ``kinds`` (``pairkit host --reset-lockouts``, ``pairkit pn
    gateway --reset-lockouts``: the owner lifting a lock their own typos caused), with compare's
    places (codes out: a host process killed holding some holds them until their exchanges'
    end, then they count; the owner starts afresh); whether there were any.  A code out at a
    running host meanwhile is then not counted when it ends."""
    with ks.update() as k:
        present = [key for key in (_PREFIX + kind for kind in kinds)
                   if k.setting(key) is not None]
        for key in present:
            k.delete_setting(key)
    return bool(present)

