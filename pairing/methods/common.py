"""What every pairing method shares: who the sides are, what they know and end with, the host's
state across guests, the events, the machine states and the identity payloads.

The methods themselves live one per module beside this one (:mod:`.pin`, :mod:`.qr`,
:mod:`.compare`, :mod:`.clear`, :mod:`.resume`); the negotiation that picks one is in
:mod:`.base`, and every label and derivation is in :mod:`pairing.keyschedule`.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import math
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import crypto, keyschedule, wire
from ..crypto import Rng, check_ed25519_public, digest, x25519_keypair
from ..errors import AuthenticationError, ConfigError, DecodeError, PairingError, RefusedError
from ..machine import Event, Question
from ..messages import ID_LEN, KEY_LEN, MAX_NOISE, MAX_PREKEYS, Announce, Identity, device_name
from ..negotiation import ALL_CAPS, Caps, Method, methods_mask
from ..noise import HandshakeState, KeyPair
from ..qr import QrCode

PIN_NOISE = "Noise_XXpsk0_25519_ChaChaPoly_SHA256"
QR_NOISE = "Noise_IKpsk2_25519_ChaChaPoly_SHA256"
#: ``kk`` runs Noise IK: the guest's static key travels encrypted under ``es`` (it named itself
#: in the clear under Noise KK until session 22; docs/security.md "kk runs Noise IK")
KK_NOISE = "Noise_IK_25519_ChaChaPoly_SHA256"
HPKE_SUITE = crypto.HPKE_SUITE  # re-exported: compare seals SK with it
DEFAULT_METHODS = frozenset({Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME})


# --------------------------------------------------------------------------------------------
# Who the sides are, what they know, what they end with
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalIdentity:
    """This device, as the handshake needs it (built from the keystore)."""

    device_id: bytes
    name: str
    static_public: bytes
    signing_public: bytes
    static_private: bytes = dataclasses.field(repr=False)

    def static_key(self) -> X25519PrivateKey:
        """The static private key loaded once (loading computes the public key: a fixed-base
        scalar multiplication), for every handshake and DH this identity takes part in."""
        key = self.__dict__.get("_static_key")
        if key is None:
            key = X25519PrivateKey.from_private_bytes(self.static_private)
            object.__setattr__(self, "_static_key", key)
        return key

    def noise_static(self) -> KeyPair:
        """The static key as a Noise key pair, made once: each handshake takes it as it is,
        with no public key to work out again (Noise rev 34 §5.3; issue 13)."""
        pair = self.__dict__.get("_noise_static")
        if pair is None:
            pair = KeyPair("25519", self.static_key())
            object.__setattr__(self, "_noise_static", pair)
        return pair

    @classmethod
    def generate(cls, name: str, rng: Rng = os.urandom) -> LocalIdentity:
        """A throwaway identity (tests, demos); real ones come from the keystore."""
        private, public = x25519_keypair(rng)
        return cls(
            device_id=digest(public),
            name=name,
            static_public=public,
            signing_public=rng(32),
            static_private=private,
        )


@wire.stores_fields_directly
@dataclasses.dataclass(frozen=True)
class Prekey:
    """One of our ephemeral keys offered to a peer for a later resume."""

    digest: bytes
    private: bytes = dataclasses.field(repr=False)


@wire.stores_fields_directly
@dataclasses.dataclass(frozen=True)
class KnownPeer:
    """A peer we paired with before (from the keystore)."""

    device_id: bytes
    name: str
    static_public: bytes
    signing_public: bytes
    their_prekeys: tuple[bytes, ...] = ()
    our_prekeys: tuple[Prekey, ...] = ()
    authenticated: bool = True


def prekey_holder(peers: Iterable[KnownPeer], digest_: bytes) -> KnownPeer | None:
    """The one peer in ``peers`` holding our prekey ``digest_``, or None when none does, or
    when two records do (each digest is drawn at random and given to one peer; a host that
    finds it twice refuses rather than guess: docs/protocol.md §8).  A scan of every record,
    for a few peers (tests, benches); the runtime keeps an index (runtime/peers.py)."""
    found: KnownPeer | None = None
    for peer in peers:
        if any(p.digest == digest_ for p in peer.our_prekeys):
            if found is not None and found.device_id != peer.device_id:
                return None
            found = peer
    return found


@wire.stores_fields_directly
@dataclasses.dataclass(frozen=True)
class PeerInfo:
    """Who the peer turned out to be."""

    device_id: bytes
    name: str
    static_public: bytes
    signing_public: bytes
    authenticated: bool


@wire.stores_fields_directly
@dataclasses.dataclass(frozen=True)
class Session:
    """What a pairing produces: directional keys, the peer, and prekey bookkeeping."""

    method: Method
    initiator: bool
    peer: PeerInfo
    send_key: bytes = dataclasses.field(repr=False)
    recv_key: bytes = dataclasses.field(repr=False)
    #: a public fingerprint of this session (both sides show the same); never the key
    fingerprint: str
    #: prekeys we gave the peer in this exchange (add to the store)
    new_our_prekeys: tuple[Prekey, ...] = ()
    #: prekey digests the peer gave us in this exchange (add to the store)
    new_their_prekeys: tuple[bytes, ...] = ()
    #: whether the new prekeys replace the stored ones (a full pairing) or add to them
    replace_prekeys: bool = True
    consumed_ours: bytes | None = None
    consumed_theirs: bytes | None = None

    def updated_peer(self, old: KnownPeer | None) -> KnownPeer:
        """The stored peer record after this session (prekeys used, added or replaced)."""
        ours: tuple[Prekey, ...] = ()
        theirs: tuple[bytes, ...] = ()
        if old is not None and not self.replace_prekeys:
            ours = tuple(p for p in old.our_prekeys if p.digest != self.consumed_ours)
            theirs = tuple(d for d in old.their_prekeys if d != self.consumed_theirs)
        return KnownPeer(
            device_id=self.peer.device_id,
            name=self.peer.name,
            static_public=self.peer.static_public,
            signing_public=self.peer.signing_public,
            their_prekeys=(theirs + self.new_their_prekeys)[-32:],
            our_prekeys=(ours + self.new_our_prekeys)[-32:],
            authenticated=self.peer.authenticated,
        )


@dataclasses.dataclass(frozen=True)
class PairingConfig:
    """What one side allows and can do; validated when built."""

    methods: frozenset[Method] = DEFAULT_METHODS
    caps: Caps = ALL_CAPS
    #: seconds to wait for each message from the peer
    step_timeout: float = 30.0
    #: prekeys given to a new peer for later resumes
    prekeys: int = 8
    #: let ``clear`` run over an unencrypted link (the key can then be read by anyone listening)
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("at least one pairing method must be allowed")
        if not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("the timeout (seconds per step) must be between 0.1 and 3600 seconds")
        if not 1 <= self.prekeys <= 16:
            raise ConfigError("prekeys must be between 1 and 16")


# --------------------------------------------------------------------------------------------
# The host's state across guests: the PIN, lockout, issued QR codes, known peers
# --------------------------------------------------------------------------------------------

TRIVIAL_PINS = frozenset({"123456", "654321", "123123", "121212", "012345", "112233"})


def check_pin_strength(pin: str) -> None:
    """Refuse a host-chosen PIN an attacker would guess first."""
    # isascii(): str.isdigit() also takes digits such as "²" or "٣" that no keypad types.
    if len(pin) != 6 or not (pin.isascii() and pin.isdigit()):
        raise ConfigError("a PIN is exactly 6 digits")
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
    # one digit repeated, a run up or down (234567, 987654), or a well-known choice
    if len(set(pin)) == 1 or steps in ({1}, {9}) or pin in TRIVIAL_PINS:
        raise ConfigError(
            "that PIN is too easy to guess (one digit, a run, or a common choice); "
            "choose another or let pairkit pick one"
        )


@dataclasses.dataclass(frozen=True)
class PinPolicy:
    """The host's one PIN lockout, global to the host (docs/security.md, rule 7); compare's
    lock on codes shown and never confirmed (:attr:`HostState.compare_lock`) follows the same
    policy.

    ``max_failures`` failed PIN attempts within ``window`` seconds lock PIN pairing until the
    oldest of them is ``window`` old.  Each failure beyond those, in the same *streak*, locks it
    again from that failure for twice as long as the one before (``window``, then 2, 4, 8 times
    ``window``), never longer than ``max_lock``: a persistent guesser gets one guess per
    ``max_lock``, and a stranger who stops denies PIN pairing for ``max_lock`` at most.  A
    streak ends after ``forgive`` seconds without a failure.
    """

    max_failures: int = 5
    window: float = 300.0
    #: the longest lock one failure buys (the bound on the denial)
    max_lock: float = 3600.0
    #: seconds without a failure that end a streak (and its backoff)
    forgive: float = 86400.0

    def __post_init__(self) -> None:
        if self.max_failures < 1 or not 0 < self.window < math.inf:
            raise ConfigError("max_failures must be 1 or more and window positive")
        if not self.window <= self.max_lock <= self.forgive < math.inf:
            raise ConfigError("the PIN lockout needs window <= max_lock <= forgive (finite)")

    def lock_after(self, streak: int) -> float:
        """Seconds PIN pairing stays locked after the ``streak``-th failure of a streak, for
        ``streak`` above ``max_failures``: ``window`` doubled each time, up to ``max_lock``."""
        doublings = min(streak - self.max_failures - 1, 60)
        return min(self.window * 2.0**doublings, self.max_lock)


@dataclasses.dataclass
class _IssuedQr:
    code: QrCode
    used: bool = False


#: how far apart two times a :class:`Lockout` compares may be and still be one (a journal keeps
#: them as wall-clock seconds; the round trip may round the last digits)
TIME_SLACK = 0.001
#: how long a compare host waits for its person's answer to a code at the least (the driver's
#: bound, :data:`pairkit.driver.DEFAULT_ANSWER_TIME`); a code's place holds until then
CODE_ANSWER_TIME = 120.0
#: how often a compare host waiting for a place looks at the places other host processes of
#: the device hold (they cannot wake it; :attr:`CodeTurns.poll`)
TURN_POLL = 0.25


@dataclasses.dataclass(frozen=True)
class Place:
    """One of compare's codes out, or about to go out (:class:`CodeTurns`): a try pending until
    its person confirms it, kept with the lock's failures so that every host process of the
    device counts it (docs/security.md, "Codes out at once are held to the same budget")."""

    #: who holds it (unique among the places kept; no secret)
    key: str
    #: when it was taken, right before the code went out: the time its try counts at
    at: float
    #: when its exchange ends at the latest (the host's bound on its person's answer): from
    #: then on it holds no place, and counts as a failure at :attr:`at`, whoever reads it
    until: float


#: keys of places counted that a lock keeps (:attr:`LockRecord.counted`): more than the places
#: a process holds at once (the budget, one past it)
COUNTED_KEPT = 64


@dataclasses.dataclass
class LockRecord:
    """What a :class:`LockJournal` keeps of one lock: the failures (times, oldest first), the
    streak, the places held (:class:`Place`), times on the machines' clock, and the keys of
    the last places counted, at their end by whichever process read them ended or as their
    holder settled them (oldest first: their holders, if still running, count them no more)."""

    failures: list[float]
    streak: int
    places: list[Place] = dataclasses.field(default_factory=list)
    counted: list[str] = dataclasses.field(default_factory=list)
    #: when the journal read two copies of the record as one (the runtime's: the lock records'
    #: file and the keystore's floor), each copy's own failures (oldest first) and streak, on
    #: the same clock as :attr:`failures`; empty when there was one copy (its streak is
    #: :attr:`streak`).  Read by :meth:`Lockout._end_quiet_streaks` only.
    copies: list[tuple[list[float], int]] = dataclasses.field(default_factory=list)


class LockJournal(Protocol):
    """Where a :class:`Lockout`'s failures and places are kept beyond one object: the runtime
    keeps them in the keystore, so that the host started again, or another host process of the
    device, counts them too (docs/security.md, "The lock outlives the host process").  Times
    are on the machines' clock (``now``); what the journal stores, and how it maps times, is
    its own."""

    def load(self, now: float) -> LockRecord:
        """What is kept now."""
        ...

    def update(self, change: Callable[[LockRecord], LockRecord], now: float) -> None:
        """Apply ``change`` to what is kept now, and keep its result, as one step that no
        other writer interleaves with; raises, and keeps nothing, when it cannot be kept.
        ``change`` may be applied more than once (the runtime's journal takes a second lock
        when the result counts a failure, and applies it again to what is kept then): only
        the last application's result is kept, so a change decides anew each time."""
        ...


class _MemoryJournal:
    """A lock's record in this object only (a :class:`Lockout` given no journal).

    The record kept is handed out as is, not copied (as the runtime's journal hands out the
    record it parsed last): a :class:`Lockout` reads a record and never changes it (it takes
    copies of its lists, :meth:`Lockout._adopt`) and keeps what ``change`` returns, lists of
    its own (:meth:`Lockout._record`); issue 13, session 14: four copies of every list less
    per compare pairing."""

    def __init__(self) -> None:
        self._record = LockRecord([], 0, [])

    def load(self, now: float) -> LockRecord:
        return self._record

    def update(self, change: Callable[[LockRecord], LockRecord], now: float) -> None:
        self._record = change(self._record)


class Lockout:
    """Failed attempts of one kind against a :class:`PinPolicy` (the same arithmetic for PIN
    guesses, rule 7, and for the codes compare showed and nobody confirmed, docs/security.md
    "compare: what may cross before the people confirmed the code").

    Every check reads the record kept in the ``journal`` and every change is made to it there
    (by default in this object only), so that with the runtime's journal they outlive this
    object and its process.  A change that cannot be kept raises and counts nothing: the
    callers count a try before they play it (a PIN guess, a compare code's place), so a try
    whose count cannot be kept is not played; the count of a compare code that ended, played
    already, is kept here and counted again with the next change (:attr:`unkept`)."""

    def __init__(self, policy: PinPolicy, journal: LockJournal | None = None) -> None:
        self.policy = policy
        self.journal: LockJournal = journal if journal is not None else _MemoryJournal()
        #: the times of the last ``max_failures`` failures (all the rule reads), as last read
        self.failures: list[float] = []
        self.streak = 0  # failures in the current streak (PinPolicy)
        #: compare's places held, by every process, as last read (:class:`CodeTurns`): tries
        #: under way, counted only when they end (at the time they began); a day that holds one
        #: is not quiet, so it forgives no streak
        self.places: list[Place] = []
        #: the keys of the last places counted (at their end, or settled), as last read
        #: (:meth:`_adopt`): a holder leaving finds its place there, not gone
        #: (:meth:`CodeTurns.settle`)
        self.counted: list[str] = []
        #: the keys of places given back here (their codes confirmed) that the journal still
        #: holds: free here at once, written with this lock's next change (:meth:`flush`)
        self.returned: set[str] = set()
        #: places of codes that ended here unconfirmed whose count the journal could not keep
        #: (:meth:`CodeTurns.settle` raised: a full disk): counted again with this lock's next
        #: change, which a rollback of what the journal did keep cannot undo
        self.unkept: list[Place] = []
        #: whether a change is worth a read before it (:meth:`CodeTurns.take`): a journal
        #: given keeps the record elsewhere, where a write costs more than a read (the
        #: runtime's: a file lock, a sealed file written whole); a lock kept in this object
        #: alone decides within the change itself, the same step with the same checks, at the
        #: cost of no write (issue 13, session 14)
        self.reads_first = journal is not None

    def locked_for(self, now: float) -> float:
        """Seconds until attempts are accepted again (0 when they are), by :class:`PinPolicy`:
        the first ``max_failures`` of a streak within ``window``, then a backoff from the last
        failure that doubles up to ``max_lock``."""
        self._adopt(self.journal.load(now), now)
        return self._locked_for(now)

    def _adopt(self, record: LockRecord, now: float) -> None:
        """Take ``record`` as read at ``now``: a place whose exchange has ended by ``now``
        holds no place and counts as a failure, at the time it was taken."""
        self.failures, self.streak = sorted(record.failures), record.streak
        self.counted = list(record.counted)
        if not record.places:  # no code out anywhere (the commonest read; issue 13)
            if len(self.failures) > 1:  # (no quiet day lies within fewer)
                self._end_quiet_streaks(record)
            self.places = []
            del self.counted[:-COUNTED_KEPT]
            return
        held = [p for p in record.places if p.key not in self.returned]
        self._end_quiet_streaks(record)
        self.places = [p for p in held if p.until > now]
        if len(self.places) < len(held):  # places whose exchange has ended: each counts
            for ended in sorted((p for p in held if p.until <= now), key=lambda p: p.at):
                self._count(ended.at)
                self.counted.append(ended.key)
        del self.counted[:-COUNTED_KEPT]

    def _end_quiet_streaks(self, record: LockRecord) -> None:
        """A streak that a quiet day ended (``forgive`` seconds between two failures, and no
        place taken between them) is over, whichever copy of the record still holds it: a
        journal that reads two copies as one (the runtime's: the lock records' file and the
        keystore's floor, either of which may have missed the other's last change: an older
        pairkit's host writes the floor alone, a save may fail between the two) may hold a
        streak the quiet day ended beside the one after it (attack review of the lock records'
        floor, finding 1).  The failures before the last such day go; the streak is those
        after it, unless they fill the failures kept and some copy's streak holds more than
        the failures it keeps after the day (failures it no longer keeps, which may lie within
        the day, so that it was not quiet): then the streak as read, the longest of the copies'
        (attack review atk14c: with ``max_failures`` 1, the one failure after the day always
        filled the failures kept, and the streak the day ended came back from the copy that
        missed it).  A copy's streak counts failures no later than the last it keeps (a lock
        keeps the latest): a copy whose last failure is before the day holds a streak the day
        ended, and one all of whose streak it keeps after the day holds none before it; a
        record of one copy (:attr:`LockRecord.copies` empty) is read as before."""
        f = self.failures
        for i in range(len(f) - 1, 0, -1):
            if f[i] - f[i - 1] >= self.policy.forgive and not any(
                    f[i - 1] < p.at < f[i] for p in record.places):
                day = f[i - 1]
                del f[:i]
                if len(f) < self.policy.max_failures or (record.copies and all(
                        (kept and kept[-1] <= day) or streak <= sum(1 for t in kept if t > day)
                        for kept, streak in record.copies)):
                    self.streak = len(f)
                return

    def _record(self) -> LockRecord:
        return LockRecord(list(self.failures), self.streak, list(self.places),
                          list(self.counted))

    def _locked_for(self, now: float) -> float:
        p = self.policy
        last = self.failures[-1] if self.failures else None
        under_way = max([place.at for place in self.places]) if self.places else None
        if last is not None and under_way is not None:
            last = max(last, under_way)
        if last is None or now - last >= p.forgive:
            self.failures.clear()  # a quiet day: the streak is over
            self.streak = 0
        n = self.streak
        if n < p.max_failures:
            return 0.0
        if n == p.max_failures:
            until = self.failures[-p.max_failures:][0] + p.window
        else:
            until = self.failures[-1] + p.lock_after(n)
        return max(0.0, until - now)

    def failed(self, now: float) -> None:
        """Count a failure at ``now`` (raises, counting nothing, if it cannot be kept)."""
        self._change(lambda: self._count(now), now)

    def failed_unless_locked(self, now: float) -> float:
        """Count an attempt that starts at ``now`` as failed, unless the lock is closed: 0
        when it was counted, else the seconds until attempts are accepted again.  The check
        and the count are one step of the journal, so that no other process counts between
        them (call :meth:`locked_for` first: a closed lock is seen without a write)."""
        wait = 0.0

        def check_and_count() -> None:
            nonlocal wait
            wait = self._locked_for(now)
            if wait <= 0:
                self._count(now)

        self._change(check_and_count, now)
        return wait

    def succeeded(self, started: float) -> None:
        """Take back the failure counted when an attempt started at ``started``."""
        self._change(lambda: self._take_back(started), started)

    def _change(self, change: Callable[[], None], now: float) -> None:
        """Run ``change`` on the record as kept now, and keep the result, in one step of the
        journal; if it cannot be kept, it raises and what is in memory is read again at the
        next check."""

        def on_kept(record: LockRecord) -> LockRecord:
            self._adopt(record, now)
            for place in self.unkept:
                self._ended_unconfirmed(place)
            change()
            return self._record()  # without the places given back here

        self.journal.update(on_kept, now)
        self.returned.clear()  # kept with this change
        self.unkept.clear()

    def _ended_unconfirmed(self, place: Place) -> None:
        """Count ``place``'s code, out and not confirmed, as a failed try at the time it went
        out, and give its place up, unless it is counted already (its key is in
        :attr:`counted`: by its end's count, by this change kept before, or lifted by the
        owner's reset).  A place neither held nor counted (older lock records were put back,
        or records that did not open were reset) counts: its code was out all the same."""
        held = [p for p in self.places if p.key != place.key]
        if len(held) < len(self.places) or place.key not in self.counted:
            self.places = held
            self._count(place.at)
            # Kept with the count: a change made again (its first write lost the keystore's
            # save, :attr:`unkept`) sees it done if the lock records kept it.
            self.counted.append(place.key)
            del self.counted[:-COUNTED_KEPT]

    def flush(self, now: float) -> None:
        """Keep the places given back here (:attr:`returned`) now, unless none is left."""
        if self.returned:
            self._change(lambda: None, now)

    def _count(self, now: float) -> None:
        self._locked_for(now)  # ends a streak that is over
        # In order of time (compare counts a visit when it ends, at the time it started).
        bisect.insort(self.failures, now)
        self.streak += 1
        # The times of the last max_failures are all the rule reads; the streak counts the rest.
        del self.failures[: -self.policy.max_failures]

    def _take_back(self, started: float) -> None:
        # A time kept by a journal may come back a rounding away from the one counted.
        for i, when in enumerate(self.failures):
            if abs(when - started) <= TIME_SLACK:
                del self.failures[i]
                self.streak = max(0, self.streak - 1)
                return


class CodeTurns:
    """compare's codes out at once, held to the budget of its :class:`Lockout`
    (docs/security.md, "compare: what may cross before the people confirmed the code", "Codes
    out at once are held to the same budget").

    A code is *out* from the host's Reveal (N_H: from then on a man in the middle can compute
    it) until its person's yes, or until its exchange ends without one, which the lock counts
    as a failed try.  Counting only at the end let visits made at once each get a code before
    any was counted; counting at the Reveal would lock out honest guests comparing at once.
    So a code goes out only while the lock would still be open were every code out to fail:
    at most ``max_failures`` less the streak's failures at once (one, past the budget).

    Each code out holds a :class:`Place` kept in the lock's journal beside its failures, so
    that every host process of the device counts every other's (the runtime: the keystore).
    A place is checked and taken in one step of the journal (:meth:`take`), right before the
    code goes out; one that cannot be kept is not taken (the code does not go out).  It is
    given back when its person confirms (:meth:`settle`), and otherwise becomes a failure at
    the time it was taken; a place whose holder never settles it (its process died) holds
    until its exchange would have ended (:attr:`Place.until`), and counts as a failure then.
    A place given back while a machine of this process waits for one is free for it at once
    and kept with the place it takes (one write for both), or as it leaves without one (its
    guest left, or the lock closed as it looked); at once when no machine waits
    (:meth:`Lockout.flush`): within the place's time, not at the holder's end.

    The machines of this process that find no place free wait their turn, first come first
    served, and are woken as places free up here (a code settled, or a streak the lock forgave,
    seen at the next ``take``); a host that is locked wakes them in turn (each then refuses).
    Places held by other processes free up without a word to this one: while there are any,
    a machine waiting looks again every :data:`TURN_POLL` seconds (:attr:`poll`).

    Pure: a turn is given by a callback the driver registered (:class:`~pairing.machine.
    WaitTurn`), no clock or event loop here; the keys of places come from ``rng`` (its own,
    not the host's: a place's key is in no message, and a recorded host replays its stream).
    """

    def __init__(self, lock: Lockout, rng: Rng = os.urandom) -> None:
        self.lock = lock
        self._rng = rng
        self._taken = itertools.count()
        #: this process's holders of a place, with it
        self._mine: dict[object, Place] = {}
        #: the machines waiting for a place, in order of arrival, with their wake-up call
        self._waiting: dict[object, Callable[[], None] | None] = {}
        #: when a place was last given back here (its give-back's time, for :meth:`settle`)
        self._returned_at = 0.0

    @property
    def out(self) -> int:
        """How many places this process's machines hold (their codes out)."""
        return len(self._mine)

    @property
    def poll(self) -> bool:
        """Whether other host processes held places when the lock was last read: a machine
        waiting for one of them is not woken when it frees up, and looks again now and then."""
        mine = {p.key for p in self._mine.values()}
        return any(p.key not in mine for p in self.lock.places)

    def _places(self) -> int:
        return max(1, self.lock.policy.max_failures - self.lock.streak)

    def _held(self) -> int:
        """How many places are held (as the lock was last read): every process's kept, and
        this one's own whether or not kept (older lock records put back lose them; attack
        review of the lock records' floor)."""
        if not self._mine:  # (the commonest: no code of this process out)
            return len({p.key for p in self.lock.places})
        return len({p.key for p in self.lock.places} | {p.key for p in self._mine.values()})

    def _first(self, holder: object) -> bool:
        """Whether a place is free for ``holder`` after those waiting before it (as the lock
        was last read)."""
        free = self._places() - self._held()
        return free > 0 and holder in itertools.islice(self._waiting, free)

    def take(self, holder: object, now: float, until: float) -> bool:
        """Whether ``holder`` has a place, taken now (a :class:`Place` from ``now`` to ``until``,
        kept in the journal: raises, taking none, when it cannot be kept) when one is free for
        it after those waiting before it and the lock is open; ``False`` puts it in the queue
        (check the lock again: it may have closed as the place was looked for).  Places the
        lock's read freed (a streak it forgave, places ended or given back elsewhere) go to
        those waiting, in order (``holder`` among them, in its turn)."""
        if holder in self._mine:
            return True
        self._waiting.setdefault(holder, None)
        got: Place | None = None
        try:
            # A read first (a journal kept elsewhere): nothing is written while no place is
            # free for it.  The change below checks the same again, in its own step.
            if self.lock.reads_first and (
                    self.lock.locked_for(now) > 0 or not self._first(holder)):
                return False
            place = Place(f"{self._rng(8).hex()}.{next(self._taken)}", now, until)

            def check_and_take() -> None:
                nonlocal got
                got = None  # (applied again, it decides anew: LockJournal.update)
                if self.lock._locked_for(now) <= 0 and self._first(holder):
                    self.lock.places.append(place)
                    got = place

            self.lock._change(check_and_take, now)
            if got is not None:
                self._waiting.pop(holder, None)
                self._mine[holder] = got
            return got is not None
        finally:
            if got is None and self.lock.returned:
                # The place given back for us was not ours after all (another process took
                # the last one): keep the give-back now, not at its holder's end.
                self.lock.flush(now)
            self._hand_out()

    def subscribe(self, holder: object, wake: Callable[[], None] | None) -> None:
        """Call ``wake`` (once) when ``holder`` should look again: at once if its turn has
        come already.  ``None`` stops the call."""
        if holder in self._mine or (wake is not None and holder in self._waiting
                                    and self._first(holder)):
            if wake is not None:
                wake()
        elif holder in self._waiting:
            self._waiting[holder] = wake

    def settle(self, holder: object, *, confirmed: bool, now: float | None = None) -> None:
        """``holder`` leaves: its person said yes (``confirmed``: its place is given back), or
        its exchange ended (at ``now``, when known).  A code that was out and not confirmed
        counts as a failed try, at the time its place was taken, in the same step of the
        journal as its place is given up; if that step cannot be kept (it raises), the place
        stays kept and counts when its exchange would have ended, and this process counts it
        with the lock's next change (:attr:`Lockout.unkept`: the place kept may be dropped by
        older lock records put back meanwhile).  A place the journal no
        longer holds changes nothing if it was counted at its end (by any process: its key is
        kept, :attr:`Lockout.counted`) or lifted by the owner; gone otherwise (older records
        put back), it counts.  The places freed go to the machines waiting, in order."""
        self._waiting.pop(holder, None)
        place = self._mine.pop(holder, None)
        when = (place.at if place is not None else 0.0) if now is None else now
        if place is not None and confirmed:
            # Free here at once; kept by the next change, which a machine woken for the place
            # makes as it takes it (one write for both), else now.
            self.lock.returned.add(place.key)
            self._returned_at = when
            self.lock.places = [p for p in self.lock.places if p.key != place.key]
            if not self._hand_out():
                self.lock.flush(when)
            return
        try:
            if place is None:
                return
            try:
                self.lock._change(lambda: self.lock._ended_unconfirmed(place), when)
            except PairingError:
                # Not kept (the keystore could not be saved): counted again with this lock's
                # next change, here, whatever the lock records hold by then (an older copy put
                # back drops what they kept of it: attack review of the lock journal's faults,
                # finding 1).
                self.lock.unkept.append(place)
                raise
        finally:
            if not self._hand_out() and place is None and self.lock.returned:
                # A machine woken for a place given back here left without taking it (its
                # guest left, or the lock closed as it looked): the give-back is kept now, not
                # at its holder's end, which may be past the place's own (the holder's guest's
                # person still looking), when every other process would count it.
                with contextlib.suppress(PairingError):
                    self.lock.flush(self._returned_at)

    def _hand_out(self) -> int:
        """Wake the machines waiting that a place is free for, in order; how many."""
        if not self._waiting:
            return 0  # (nobody to wake: the places free need not be counted)
        free = self._places() - self._held()
        woken: list[Callable[[], None]] = []
        # A streak at or past the budget leaves one place, and the next failure locks: the
        # machine woken refuses if the lock is closed now, and its place goes on to the next.
        for holder in list(itertools.islice(self._waiting, max(0, free))):
            wake = self._waiting[holder]
            if wake is not None:
                self._waiting[holder] = None
                woken.append(wake)
        for wake in woken:
            wake()
        return len(woken)


class HostState:
    """What a host keeps across guests (in memory; the CLI's host process owns one), but for
    the locks' failures and compare's places, which the journals given keep (the runtime: in
    the keystore, shared by every host process of the device)."""

    def __init__(
        self,
        *,
        rng: Rng = os.urandom,
        pin_policy: PinPolicy | None = None,
        compare_policy: PinPolicy | None = None,
        known_peer: Callable[[bytes], KnownPeer | None] = lambda _id: None,
        peer_by_prekey: Callable[[bytes], KnownPeer | None] = lambda _digest: None,
        consume_prekey: Callable[[bytes, bytes], bool] | None = None,
        pin_journal: LockJournal | None = None,
        compare_journal: LockJournal | None = None,
    ) -> None:
        self._rng = rng
        self.pin_policy = pin_policy or PinPolicy()
        #: wrong PINs (rule 7), kept in ``pin_journal`` too when given (the runtime's keystore)
        self._pin_lock = Lockout(self.pin_policy, pin_journal)
        #: the codes compare showed that ended unconfirmed (the guest left, or our person said
        #: no): each a try at matching another screen's code (docs/security.md, "compare: what
        #: may cross before the people confirmed the code")
        self.compare_lock = Lockout(compare_policy or PinPolicy(), compare_journal)
        #: compare's codes out at once, within the lock's budget (:class:`CodeTurns`)
        self.compare_turns = CodeTurns(self.compare_lock)
        self.known_peer = known_peer
        #: the one known peer we gave the prekey with this digest to, or None (none holds
        #: it, or more than one record does: :func:`prekey_holder`); a resume finds its guest
        #: by it alone (docs/protocol.md §8)
        self.peer_by_prekey = peer_by_prekey
        self._consume = consume_prekey
        self._consumed: set[tuple[bytes, bytes]] = set()
        self._pin: str | None = None
        self._qr: dict[bytes, _IssuedQr] = {}
        #: the QR code issued last (what the host's screen shows now)
        self.last_qr: QrCode | None = None

    # PIN ------------------------------------------------------------------------------------

    @property
    def pin(self) -> str | None:
        """The PIN to show, or ``None`` when none is active."""
        return self._pin

    @property
    def _failures(self) -> list[float]:
        return self._pin_lock.failures

    def new_pin(self) -> str:
        """Draw a fresh 6-digit PIN (single use)."""
        while True:
            pin = f"{int.from_bytes(self._rng(8), 'big') % 1_000_000:06d}"
            try:
                check_pin_strength(pin)
            except ConfigError:
                continue
            self._pin = pin
            return pin

    def set_pin(self, pin: str) -> None:
        """Use a PIN the owner chose (``--pin``); trivial ones are refused."""
        check_pin_strength(pin)
        self._pin = pin

    def locked_for(self, now: float) -> float:
        """Seconds until PIN attempts are accepted again (0 when they are): :class:`Lockout`."""
        return self._pin_lock.locked_for(now)

    def pin_failed(self, now: float) -> None:
        self._pin_lock.failed(now)

    def pin_failed_unless_locked(self, now: float) -> float:
        """Count a PIN attempt starting at ``now`` unless PIN pairing is locked: 0, or the
        seconds the lock holds (:meth:`Lockout.failed_unless_locked`)."""
        return self._pin_lock.failed_unless_locked(now)

    def pin_succeeded(self, started: float) -> None:
        """Take back the failure counted when a PIN attempt started at ``started``."""
        self._pin_lock.succeeded(started)

    def pin_used(self) -> None:
        self._pin = None

    def take_pin(self) -> str | None:
        """The active PIN, withdrawn: a shown PIN is good for one attempt, won or lost
        (docs/security.md, rule 7).  The host draws and shows a new one afterwards."""
        pin, self._pin = self._pin, None
        return pin

    # Prekeys --------------------------------------------------------------------------------

    def consume_prekey(self, device_id: bytes, digest_: bytes) -> bool:
        """Delete one of our prekeys for ``device_id`` before it is answered (rule 4).

        True when this call consumed it; False when it was already used (a replay) or the
        durable store no longer holds it.  The store's callback must have deleted the prekey
        durably when it returns True.
        """
        key = (device_id, digest_)
        if key in self._consumed:
            return False
        if self._consume is not None and not self._consume(device_id, digest_):
            return False
        self._consumed.add(key)
        return True

    # QR -------------------------------------------------------------------------------------

    def issue_qr(self, static_public: bytes, wall_now: float, *, ttl: float, hint: str) -> QrCode:
        """A new single-use QR code valid for ``ttl`` seconds."""
        code = QrCode(static_public, self._rng(16), math.ceil(wall_now + ttl), hint)
        self._qr[code.code_id] = _IssuedQr(code)
        self.last_qr = code
        return code

    def take_qr(self, code_id: bytes, wall_now: float) -> QrCode:
        """The code with this id, marked used; refuses unknown, used and expired codes."""
        issued = self._qr.get(code_id)
        if issued is None:
            raise AuthenticationError("this QR code was not issued by this host")
        if issued.used:
            raise RefusedError("this QR code was already used; ask the host to show a new one")
        issued.code.check_fresh(wall_now)
        issued.used = True
        return issued.code


# --------------------------------------------------------------------------------------------
# Events and questions
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfirmCode(Question):
    """Both screens show this 6-digit code; answer True only if the other screen shows it too."""

    hook: ClassVar[str] = "confirm_code"
    code: str
    peer_name: str


@dataclasses.dataclass(frozen=True)
class InsecureWarning(Event):
    """``clear`` is running over a link that is not encrypted, because the user forced it."""

    hook: ClassVar[str] = "on_warning"
    text: str


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

S_START = "start"
S_ACCEPT = "await-accept"
S_OFFER = "await-offer"
S_NOISE = "await-noise"
S_REVEAL = "await-reveal"
S_ASK = "ask-user"
#: compare's host waits for a place to show its code (CodeTurns)
S_TURN = "await-turn"
S_RESUME = "await-resume"
#: the host answered a resume INIT with FAIL: only the guest's kk Offer may follow (§8)
S_KK = "await-kk"


def _announce(config: PairingConfig, name: str, method: Method, caps: Caps, rng: Rng) -> Announce:
    methods = config.methods
    mask = _MASKS.get(methods) if type(methods) is frozenset else None
    if mask is None:
        mask = methods_mask(methods)
        if type(methods) is frozenset:
            _MASKS[methods] = mask
    return Announce(caps=int(caps), methods=mask, method=method, name=name, nonce=rng(16))


#: a set of methods -> its mask, worked out once per set (issue 13)
_MASKS: dict[frozenset[Method], int] = {}


def _th(offer_hello: Announce, accept_hello: Announce, context: bytes = b"") -> bytes:
    """The negotiation transcript (:func:`pairing.keyschedule.negotiation_hash`)."""
    return keyschedule.negotiation_hash(offer_hello, accept_hello, context)


def _hello_hash(hello: Announce, context: bytes = b"") -> bytes:
    return keyschedule.hello_hash(hello, context)


def _check_context(context: bytes) -> bytes:
    if context and len(context) != 32:
        raise ConfigError("the pre-pairing context is a 32-byte transcript hash")
    return context


def _identity(me: LocalIdentity, prekeys: tuple[Prekey, ...]) -> Identity:
    return Identity(
        device_id=me.device_id,
        name=me.name,
        static=me.static_public,
        signing=me.signing_public,
        prekeys=tuple(map(_DIGEST_OF, prekeys)),
    )


_DIGEST_OF = operator.attrgetter("digest")


def _new_prekeys(n: int, rng: Rng) -> tuple[Prekey, ...]:
    out = []
    for _ in range(n):
        private, public = x25519_keypair(rng)
        out.append(Prekey(digest(public), private))
    return tuple(out)


#: Where a machine takes prekeys made ahead of need: called with how many it needs, it
#: returns up to that many fresh, never-handed-out prekeys (the runtime's pool made them in
#: idle time); the machine makes the rest itself from its ``rng``.
PrekeySource = Callable[[int], Sequence[Prekey]]


def _take_prekeys(n: int, rng: Rng, source: PrekeySource | None) -> tuple[Prekey, ...]:
    """``n`` prekeys: those ``source`` has ready, then fresh ones from ``rng`` (pure)."""
    got: tuple[Prekey, ...] = ()
    if source is not None and n > 0:
        got = tuple(source(n))[:n]
        # the types at once (the commonest answer); a subclass is looked at one by one
        if not {*map(type, got)} <= _PREKEY and not all(isinstance(p, Prekey) for p in got):
            raise ConfigError("the prekey source must return Prekey objects")
    return got + _new_prekeys(n - len(got), rng)


_PREKEY = frozenset({Prekey})


def _peer_from_identity(
    ident: Identity, *, authenticated: bool, known_name: str | None = None
) -> PeerInfo:
    """The peer an identity payload shows, every check made.  ``known_name``: kk's, whose
    identities carry no name (:func:`_read_kk_payload` refused one that does): the peer is
    named as its stored record is (docs/security.md, rule 6)."""
    if ident.device_id != digest(ident.static):
        raise AuthenticationError("the peer's device id does not match its key")
    if known_name is None:
        name = device_name(ident.name, "the peer's name")
    else:
        name = known_name
    # A small-order signing key signs nothing (docs/security.md rule 1): refused before the
    # peer is anyone, on both sides, in every method that shows an identity payload.
    check_ed25519_public(ident.signing, "the peer's")
    return PeerInfo(ident.device_id, name, ident.static, ident.signing, authenticated)


#: The length of kk's identity payloads (docs/protocol.md §8): the guest's in its Offer, with no
#: name, the most prekeys and an empty pad; the host's in its Accept, the same with its
#: ``hello_hash``.  kk's Offer and Accept cross before any link-layer encryption: their lengths
#: said each side's name length and prekey count, the same at every return (attack review
#: atk23, finding 1).  A payload with fewer prekeys pads 17 bytes a prekey fewer, never 24 or
#: 257 bytes, the two lengths a pad's head skips (§1.1), so every one pads exactly.
KK_OFFER_PAYLOAD_LEN = (
    1 + 1  # the map's head; key 2
    + 1 + (1 + 1 + ID_LEN) + (1 + 1) + 2 * (1 + 2 + KEY_LEN)  # the Identity: id, no name, keys
    + (1 + 1 + MAX_PREKEYS * (1 + ID_LEN))  # its prekeys, the most
    + (1 + 1)  # key 4: an empty pad
)
KK_ACCEPT_PAYLOAD_LEN = KK_OFFER_PAYLOAD_LEN + (1 + 2 + 32)  # key 3: hello_hash


@wire.struct
class _Payload(wire.Message):
    """The plaintext of an identity-bearing Noise payload or sealed box."""

    identity: Identity = wire.field(2)
    hello_hash: bytes | None = wire.field(3, size=32, default=None)
    #: kk's only: zero bytes that pad the payload to its length (:data:`KK_OFFER_PAYLOAD_LEN`)
    pad: bytes | None = wire.field(4, max_len=KK_ACCEPT_PAYLOAD_LEN, default=None)


@wire.struct
class _Prekeys(wire.Message):
    digests: tuple[bytes, ...] = wire.field(2, size=16, max_len=16, default=())


def _payload_bytes(ident: Identity, hello_hash: bytes | None = None) -> bytes:
    return wire.encode_struct(_Payload(ident, hello_hash))


def _read_payload(data: bytes) -> _Payload:
    # a payload is never longer than the Noise message that carries it (MAX_NOISE: a name of
    # 256 bytes and 16 prekeys; 512 refused such a device: session 23)
    payload = wire.decode_struct(_Payload, data, max_size=MAX_NOISE)
    if payload.pad is not None:
        raise DecodeError("only a kk identity payload is padded")
    return payload


def _kk_payload_bytes(ident: Identity, hello_hash: bytes | None = None) -> bytes:
    """kk's identity payload (docs/protocol.md §8): ``ident`` with no name (each side names
    the other as its stored record does), padded with zeros to :data:`KK_OFFER_PAYLOAD_LEN`
    bytes (the guest's) or :data:`KK_ACCEPT_PAYLOAD_LEN` (the host's, with ``hello_hash``), so
    that its length says neither the name's length nor how many prekeys it carries."""
    length = KK_OFFER_PAYLOAD_LEN if hello_hash is None else KK_ACCEPT_PAYLOAD_LEN
    body = _Payload(dataclasses.replace(ident, name=""), hello_hash, pad=b"")
    short = length - len(wire.encode_struct(body))
    # n bytes of pad add n and, from 24 bytes on, a byte or two of its head (§1.1): the one n
    # that fits is short, short - 1 or short - 2, tried in turn
    for n in range(max(0, short - 2), short + 1):
        encoded = wire.encode_struct(dataclasses.replace(body, pad=bytes(n)))
        if len(encoded) == length:
            return encoded
    raise AssertionError("every kk payload pads to its length")  # pragma: no cover


def _read_kk_payload(data: bytes, *, hosts: bool) -> _Payload:
    """A kk identity payload as :func:`_kk_payload_bytes` makes it, the host's (``hosts``) or
    the guest's, else a decode error: its length, its pad present and zeros only, a
    ``hello_hash`` in the host's only, its identity with no name."""
    length = KK_ACCEPT_PAYLOAD_LEN if hosts else KK_OFFER_PAYLOAD_LEN
    payload = wire.decode_struct(_Payload, data, max_size=512)
    if (payload.hello_hash is None) == hosts:
        raise DecodeError("a kk identity payload carries a hello_hash in the host's only")
    if len(data) != length or payload.pad is None:
        raise DecodeError(f"a kk identity payload must be padded to {length} bytes")
    if any(payload.pad):
        raise DecodeError("a kk identity payload is padded with other than zeros")
    if payload.identity.name:
        raise DecodeError("a kk identity payload must carry no name")
    return payload


def _noise_keys(hs: HandshakeState) -> tuple[bytes, bytes, str]:
    return keyschedule.noise_keys(hs)


def _identity_psk(sk: bytes, th: bytes, method: Method) -> bytes:
    return keyschedule.identity_psk(sk, th, method.label)


def _qr_psk(code: QrCode) -> bytes:
    return keyschedule.qr_psk(code.secret, code.host_static)


class _LazyPrekeys:
    """Prekeys taken only when an exchange hands them out (a resume never does): from the
    prekey source, made ahead of need (off the critical path), else made here from ``rng``."""

    config: PairingConfig
    _rng: Rng
    _prekey_source: PrekeySource | None = None
    _prekeys_cache: tuple[Prekey, ...] | None = None

    @property
    def _prekeys(self) -> tuple[Prekey, ...]:
        if self._prekeys_cache is None:
            self._prekeys_cache = _take_prekeys(
                self.config.prekeys, self._rng, self._prekey_source
            )
        return self._prekeys_cache



_INSECURE_TEXT = (
    "method 'clear' sends the key as is, so it needs a link already encrypted by BLE "
    "LE Secure Connections, and this one is not; --allow-insecure forces it (then anyone "
    "listening gets the key)"
)
assert len(_INSECURE_TEXT) <= 200  # it travels whole in an Abort

#: the methods whose identity handshake the host opens (Noise_XXpsk0, host as initiator)
_HOST_FIRST = frozenset({Method.PIN, Method.COMPARE, Method.CLEAR})

_WRONG_SECRET = {
    Method.PIN: "wrong PIN: the PINs on the two devices differ",
    Method.COMPARE: "the identity handshake failed: the session key differs (a man in the middle?)",
    Method.CLEAR: "the identity handshake failed: the key was changed on the way",
}

