"""Between the keystore's records and the pairing machines' types (the runtime's one door to
stored peers: who a device is, what it was granted, where it was reached, its prekeys).

Every change is made under :meth:`~pairing.keystore.Keystore.update` (reloaded under the file
lock, then saved): several pairkit processes may share one keystore (docs/security.md, rule 4).
Every lookup a decision rests on (:func:`known_peer`, :func:`peer_by_prekey`,
:func:`peer_grant`, :func:`cloud_members`, :func:`find_peer`) first takes what another process
saved (:meth:`Keystore.follow`): a peer forgotten or a grant withdrawn there counts here from the
next decision on, and :func:`save_session` never writes back what was forgotten or withdrawn
meanwhile.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import os
import time
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.crypto import NO_SIGNING_KEY, same
from pairkit.pairing.errors import AuthenticationError, NotFoundError, RefusedError
from pairkit.pairing.keystore import Keystore, Peer, fingerprint_of
from pairkit.pairing.methods import KnownPeer, LocalIdentity, Prekey, Session
from pairkit.pairing.service import Member

from .keystore import GroupCommit


def key_fingerprint(static_public: bytes) -> str:
    """A device's fingerprint as people compare it (SHA-256 of its key, grouped)."""
    return fingerprint_of(static_public)


def local_identity(ks: Keystore) -> LocalIdentity:
    """This device as the handshake needs it (the keystore's one door to the static key)."""
    return LocalIdentity(
        device_id=bytes.fromhex(ks.device_id),
        name=ks.name,
        static_public=ks.static_public,
        signing_public=ks.signing_public,
        static_private=ks._static_private_for_handshake(),  # the one internal door
    )


def check_signing_key(ks: Keystore, session: Session) -> None:
    """Refuse a known device that showed another signing key than the one it is known by
    (docs/security.md, rule 1; attack review atk18b, finding 2).

    A device id is a hash of the static key alone, and a full pairing carries the peer's
    signing key in its identity payload: without this check, whoever holds a device's static
    key but not its signing key would, by pairing again, become that device to everything
    checked against its stored signing key (a cloud renewal, a group controller's envelopes).
    No pairkit changes one of a device's keys without the other (a new identity is a new
    device id), so a known device showing another signing key is refused, and nothing of it
    is stored.  A record that holds no signing key takes the one shown."""
    known = ks.peer_by_id(session.peer.device_id.hex())
    if known is not None and signs_otherwise(known, session.peer.signing_public):
        raise AuthenticationError(
            f"{known.name} proved its device key but signs with another key than the one this "
            "device knows it by (someone may hold a copy of its device key); refused. If its "
            "keys were really replaced, forget it here and pair again"
        )


def signs_otherwise(known: Peer, shown: bytes) -> bool:
    """Whether ``shown`` is another signing key than the one ``known`` is recorded with (a
    record without one is not pinned yet: rule 1)."""
    return bool(known.signing_public) and not same(known.signing_public, shown)


def _known(p: Peer) -> KnownPeer:
    ours = []
    for record in p.our_prekeys:
        if isinstance(record, tuple | list) and len(record) == 2:
            ours.append(Prekey(bytes(record[0]), bytes(record[1])))
    return KnownPeer(
        device_id=bytes.fromhex(p.id),
        name=p.name,
        static_public=p.static_public,
        signing_public=p.signing_public or NO_SIGNING_KEY,
        their_prekeys=tuple(bytes(d) for d in p.their_prekeys if isinstance(d, bytes)),
        our_prekeys=tuple(ours),
        authenticated=trusted(p),
    )


def _by_id(ks: Keystore, device_id: bytes) -> Peer:
    """The stored peer with exactly this device id (never one merely *named* like it)."""
    record = ks.peer_by_id(device_id.hex())
    if record is None:
        raise NotFoundError(f"no known peer {device_id.hex()!r}; `pairkit peers` lists them")
    return record


def known_peer(ks: Keystore, device_id: bytes) -> KnownPeer | None:
    """The stored peer ``device_id`` as it is in the keystore now (another process's changes
    included), or None."""
    ks.follow()
    record = ks.peer_by_id(device_id.hex())
    return None if record is None else _known(record)


def peer_by_prekey(ks: Keystore, digest: bytes) -> KnownPeer | None:
    """The stored peer we gave the prekey ``digest`` to, as the keystore is now (another
    process's changes included), or None: when no record holds it, and when two do (digests
    are drawn at random and each given to one peer: the host refuses rather than guess).

    A resume names no device (docs/protocol.md §8): the host finds its guest by this.  The
    index behind it (:class:`_PrekeyIndex`) follows the records: a lookup when nothing
    changed costs a comparison of the record tuple, a change costs a pass over the records
    and the prekeys of those that changed only (issue 13: a host with 1,000 peers)."""
    ks.follow()
    index = _INDEXES.get(ks)
    if index is None:
        index = _INDEXES[ks] = _PrekeyIndex()
    holder = index.holder(ks.peers(), digest)
    record = None if holder is None else ks.peer_by_id(holder)
    return None if record is None else _known(record)


def _digests(p: Peer) -> list[bytes]:
    """The digests of our prekeys stored in ``p`` (records as :func:`_known` reads them)."""
    return [bytes(r[0]) for r in p.our_prekeys if isinstance(r, tuple | list) and len(r) == 2]


class _PrekeyIndex:
    """Our prekey digests -> the ids of the records holding each, kept up to date against the
    keystore's records: records are immutable, so a record that is not the very object
    indexed last changed (or is new), and only its digests are indexed again."""

    def __init__(self) -> None:
        self._records: tuple[Peer, ...] = ()
        self._seen: dict[str, Peer] = {}
        self._holders: dict[bytes, set[str]] = {}

    def holder(self, records: tuple[Peer, ...], digest: bytes) -> str | None:
        """The id of the one record in ``records`` holding ``digest``, or None."""
        if records != self._records:  # the same objects: compared by identity, in C
            self._update(records)
        ids = self._holders.get(digest)
        return next(iter(ids)) if ids is not None and len(ids) == 1 else None

    def _update(self, records: tuple[Peer, ...]) -> None:
        before = self._records
        if len(records) == len(before):
            # The usual change (a prekey consumed, a session stored): records replaced in
            # place, found by identity at C speed rather than by a Python pass over them all.
            moved = list(zip(
                itertools.compress(before, map(operator.is_not, before, records)),
                itertools.compress(records, map(operator.is_not, before, records)),
                strict=True,
            ))
            if all(old.id == new.id for old, new in moved):
                for old, new in moved:
                    self._drop(old)
                    self._add(new)
                    self._seen[new.id] = new
                self._records = records
                return
        # Records added, forgotten or reordered: compared by id.
        current = {p.id: p for p in records}
        for pid, old in self._seen.items():
            if current.get(pid) is not old:
                self._drop(old)
        for pid, p in current.items():
            if self._seen.get(pid) is not p:
                self._add(p)
        self._seen, self._records = current, records

    def _drop(self, p: Peer) -> None:
        for d in _digests(p):
            ids = self._holders.get(d)
            if ids is not None:
                ids.discard(p.id)
                if not ids:
                    del self._holders[d]

    def _add(self, p: Peer) -> None:
        for d in _digests(p):
            self._holders.setdefault(d, set()).add(p.id)


_INDEXES: weakref.WeakKeyDictionary[Keystore, _PrekeyIndex] = weakref.WeakKeyDictionary()


def find_peer(ks: Keystore, name_or_id: str) -> KnownPeer | None:
    ks.follow()
    try:
        return _known(ks.get_peer(name_or_id))
    except NotFoundError:
        return None


def peer_contact(ks: Keystore, peer: KnownPeer) -> tuple[str | None, str | None]:
    """(transport spec, address) where the peer was last reached."""
    record = _by_id(ks, peer.device_id)
    spec = record.extra.get("transport")
    address = record.extra.get("address")
    return (
        spec if isinstance(spec, str) else None,
        address if isinstance(address, str) else None,
    )


class _Keep:
    """The type of :data:`KEEP`."""

    def __repr__(self) -> str:
        return "KEEP"


#: :func:`save_session`'s ``irk``: keep the identity resolving key stored for the peer
KEEP: Final = _Keep()


def save_session(
    ks: Keystore,
    session: Session,
    *,
    address: str,
    transport: str,
    granted: Role | None = None,
    granted_expires: int | None = None,
    standing: Role | None = None,
    standing_expires: int | None = None,
    wall_now: float | None = None,
    stored_grant: bool = False,
    irk: bytes | _Keep | None = KEEP,
    gave_irk: bool = False,
    gave_secret: bool = False,
) -> None:
    """Store the peer after a confirmed session: keys, prekeys, where it was reached, and the
    grant of this session in its own direction (docs/security.md, rule 2):

    * ``granted``: what this device's owner granted the peer (we were the host);
    * ``standing``: what the peer granted us in its cloud (we were the guest).  It is kept for
      display only and never read as a grant to the peer.

    What another pairkit process changed while the session ran is never undone (issue 17,
    finding 4): a ``resume`` or ``kk`` session of a peer that was forgotten meanwhile, or one
    let in by a stored grant (``stored_grant``) that was withdrawn meanwhile, is refused with
    :class:`RefusedError` and nothing is written.

    ``irk``: the peer's identity resolving key as its membership gave it (None: it gave none,
    and what was stored goes); :data:`KEEP` keeps the stored one.  ``gave_irk``: this host gave
    the peer its own (marked, so that forgetting the peer renews it: :func:`forget`).
    ``gave_secret``: this host gave the peer its cloud secret (marked ``secret_given``, so that
    forgetting the peer renews the secret: docs/security.md "Renewing the cloud secret").
    """
    with ks.update():  # reload under a lock: another pairkit process may have saved meanwhile
        saved = _record_session(
            ks, session, address=address, transport=transport, granted=granted,
            granted_expires=granted_expires, standing=standing,
            standing_expires=standing_expires, wall_now=wall_now, stored_grant=stored_grant,
            irk=irk, gave_irk=gave_irk, gave_secret=gave_secret,
        )
        _tidy(ks, [saved])


async def store_session(ks: Keystore, session: Session, **options: Any) -> None:
    """:func:`save_session`, saved together with the other sessions of this keystore that
    finish at the same time (:class:`pairkit.keystore.GroupCommit`: one reload, seal, write
    and fsync for all of them).  Returns once the peer is stored durably, as
    :func:`save_session` does; refuses as it does, this session only."""
    committer = _COMMITTERS.get(ks)
    if committer is None:
        committer = _COMMITTERS[ks] = GroupCommit(ks, _tidy)
    await committer.apply(lambda reloaded: _record_session(reloaded, session, **options))


def committer_of(ks: Keystore) -> GroupCommit[tuple[str, float]] | None:
    """The group commit :func:`store_session` uses for ``ks`` (None before its first use)."""
    return _COMMITTERS.get(ks)


_COMMITTERS: weakref.WeakKeyDictionary[Keystore, GroupCommit[tuple[str, float]]] = (
    weakref.WeakKeyDictionary()
)


def _tidy(ks: Keystore, saved: Sequence[tuple[str, float]]) -> None:
    """What keeps the keystore within what it can open again (issue 17, finding 9), once per
    save, after the sessions ``saved`` ((device id, time) each) were recorded:
    :func:`expire_guests` and :func:`bound_prekeys`, each run when it has something to do.

    Whether it has is known without going through every peer at every save (issue 13: a host
    that met 1,000 guests went through 1,000 records per pairing): :class:`_Tally` keeps, for
    the records as they were at the last save, the earliest time one of them may be expired,
    the prekeys they hold and whether one holds too many; when the records now are those plus
    new ones at the end (a host that met new guests), only the new ones are looked at, and any
    other change (a peer replaced or forgotten, another process's save) counts them all again.
    Either way the two run exactly when going through every record would have found work."""
    if not saved:
        return
    now = max(when for _, when in saved)
    tally = _Tally.of(ks)
    if now - GUEST_RETENTION > tally.eligible:
        expire_guests(ks, now, GUEST_RETENTION)
        tally = _Tally.of(ks)
    if tally.over or tally.total > MAX_PREKEYS_TOTAL:
        bound_prekeys(ks, keep={device_id for device_id, _ in saved})
        _Tally.of(ks)


class _Tally:
    """What :func:`_tidy` needs to know of a keystore's records, kept between saves."""

    __slots__ = ("eligible", "over", "records", "total")

    def __init__(self) -> None:
        self.records: tuple[Peer, ...] = ()
        #: the earliest time past which one of the records may be forgotten as an old guest
        #: (see :func:`_eligible_after`); inf when none ever may
        self.eligible = float("inf")
        #: prekeys the records hold, both ways
        self.total = 0
        #: whether a record holds more than MAX_PREKEYS_PER_PEER one way
        self.over = False

    @classmethod
    def of(cls, ks: Keystore) -> _Tally:
        """The tally of ``ks``'s records now, counted from the last one where it can be."""
        records = ks.peers()
        tally = _TALLIES.get(ks)
        kept = len(tally.records) if tally is not None else 0
        if tally is None or len(records) < kept or records[:kept] != tally.records:
            tally, kept = cls(), 0
            _TALLIES[ks] = tally
        for p in records[kept:]:
            tally.eligible = min(tally.eligible, _eligible_after(p))
            mine, theirs = len(p.our_prekeys), len(p.their_prekeys)
            tally.total += mine + theirs
            tally.over = tally.over or max(mine, theirs) > MAX_PREKEYS_PER_PEER
        tally.records = records
        return tally


_TALLIES: weakref.WeakKeyDictionary[Keystore, _Tally] = weakref.WeakKeyDictionary()


def _eligible_after(p: Peer) -> float:
    """The time past which :func:`expire_guests` would take ``p`` as a candidate (its cutoff
    above it): its last sighting or its grants' ends, whichever is last, when every grant it
    holds is a guest grant with an end; inf otherwise (a member, an open grant, none held)."""
    ends = []
    for role_key, expires_key in (("granted", "granted_expires"),
                                  ("standing", "standing_expires")):
        role = p.extra.get(role_key)
        if role is None:
            continue
        expires = p.extra.get(expires_key)
        if role != "guest" or not isinstance(expires, int | float):
            return float("inf")
        ends.append(expires)
    return max(p.last_seen, *ends) if ends else float("inf")


def _record_session(
    ks: Keystore,
    session: Session,
    *,
    address: str,
    transport: str,
    granted: Role | None = None,
    granted_expires: int | None = None,
    standing: Role | None = None,
    standing_expires: int | None = None,
    wall_now: float | None = None,
    stored_grant: bool = False,
    irk: bytes | _Keep | None = KEEP,
    gave_irk: bool = False,
    gave_secret: bool = False,
) -> tuple[str, float]:
    """The change :func:`save_session` makes, inside ``ks.update()``; (device id, time)."""
    device_id = session.peer.device_id.hex()
    full = session.method.label not in ("resume", "kk")  # a new pairing, not a resume
    old_record: Peer | None = ks.peer_by_id(device_id)
    # Checked again here, under the keystore's lock: another process may have stored the
    # device since the session checked it.
    check_signing_key(ks, session)
    now = time.time() if wall_now is None else wall_now
    if old_record is None and not full:
        raise RefusedError(
            f"{session.peer.name} was forgotten on this device while it reconnected; "
            "it must pair again"
        )
    if stored_grant and granted is not None:
        still = _grant_of(old_record, now) if old_record is not None else None
        if still is None or still.role is not granted:
            raise RefusedError(
                f"the access of {session.peer.name} was withdrawn on this device while "
                "it reconnected; it must ask again"
            )
    old = _known(old_record) if old_record is not None else None
    updated = session.updated_peer(old)
    extra: dict[str, Any] = dict(old_record.extra) if old_record is not None else {}
    extra.update({"address": address, "transport": transport})
    # Records written before grants were one-way kept one "role" for either direction:
    # it is not trusted any more (the owner is asked again, once).
    extra.pop("role", None)
    extra.pop("expires", None)
    if granted is not None:
        if stored_grant and old_record is not None:
            # A grant it came back with ends when its owner said, never later (atk20c, 1).
            before = old_record.extra.get("granted_expires")
            if isinstance(before, int | float) and isinstance(granted_expires, int):
                granted_expires = min(granted_expires, int(before))
        extra["granted"] = granted.name.lower()
        extra["granted_expires"] = granted_expires
    if standing is not None:
        extra["standing"] = standing.name.lower()
        extra["standing_expires"] = standing_expires
    if session.method.label == "clear":
        extra["link_mitm"] = session.peer.authenticated
    if gave_irk:
        extra["irk_given"] = True
    if gave_secret:
        extra["secret_given"] = True
    kept_irk = old_record.irk if old_record is not None else None
    # A resume shows no identity payload: its peer's signing key is the record's, or for a
    # record without one the stand-in of _known (NO_SIGNING_KEY, a small-order point, which
    # takes signatures made with no key).  Only a key the peer showed is stored (atk18c finding 1).
    signing = updated.signing_public
    if session.method.label == "resume" and old_record is not None:
        signing = old_record.signing_public
    ks.add_peer(
        Peer(
            id=device_id,
            name=updated.name,
            static_public=updated.static_public,
            signing_public=signing,
            authenticated=updated.authenticated,
            method=session.method.label if old_record is None or full else old_record.method,
            first_seen=old_record.first_seen if old_record is not None else now,
            last_seen=now,
            their_prekeys=list(updated.their_prekeys),
            our_prekeys=[[p.digest, p.private] for p in updated.our_prekeys],
            extra=extra,
            irk=kept_irk if isinstance(irk, _Keep) else irk,
        )
    )
    return device_id, now


#: how long a device that was only ever a guest is kept once its last grant ended: past it the
#: device is forgotten at the next save (it would have to pair again anyway)
GUEST_RETENTION: Final = 30 * 24 * 3600.0
#: prekeys kept for one peer, each way (the wire carries at most 16 at once: messages.py)
MAX_PREKEYS_PER_PEER: Final = 32
#: prekeys kept for all peers together, both ways; past it the least recently seen peers'
#: prekeys go (they come back by kk, which needs none, and get new ones then)
MAX_PREKEYS_TOTAL: Final = 16384


def _ended_guest(extra: Any, role_key: str, expires_key: str, cutoff: float) -> bool | None:
    """Whether one direction of a record is a guest grant that ended before ``cutoff``; None
    when that direction holds nothing, False for anything else (a member, an open grant)."""
    role = extra.get(role_key)
    if role is None:
        return None
    expires = extra.get(expires_key)
    return role == "guest" and isinstance(expires, int | float) and expires < cutoff


def _named_in_settings(ks: Keystore) -> tuple[set[str], set[bytes]]:
    """Every text and every 16-byte slice of the bytes the settings hold: a device a group
    record, a pin, a relay's queue or a replay window names is found there."""
    texts: set[str] = set()
    raw: set[bytes] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            texts.add(value.lower())
        elif isinstance(value, bytes):
            raw.update(value[i:i + 16] for i in range(max(1, len(value) - 15)))
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(key)
                walk(item)

    walk(dict(ks.settings()))
    return texts, raw


def expire_guests(
    ks: Keystore, now: float, retention: float = GUEST_RETENTION
) -> tuple[Peer, ...]:
    """Forget the devices that were only ever guests (whichever way) and whose every grant
    ended, and that were last seen, more than ``retention`` seconds before ``now``; call it
    inside ``ks.update()``.  Kept: members either way, a grant without an end, records that
    hold no grant (earlier versions', a group's relay), and any device a setting names (a
    group's member, relay or controller).  Returns what was forgotten."""
    cutoff = now - retention
    candidates = []
    for p in ks.peers():
        ends = [_ended_guest(p.extra, "granted", "granted_expires", cutoff),
                _ended_guest(p.extra, "standing", "standing_expires", cutoff)]
        held = [e for e in ends if e is not None]
        if held and all(held) and p.last_seen < cutoff:
            candidates.append(p)
    if not candidates:
        return ()
    texts, raw = _named_in_settings(ks)
    gone = tuple(p for p in candidates if p.id not in texts and bytes.fromhex(p.id) not in raw)
    for p in gone:
        ks.forget_peer(p.id)
    return gone


def bound_prekeys(ks: Keystore, *, keep: str | Collection[str] | None = None) -> int:
    """Keep at most :data:`MAX_PREKEYS_PER_PEER` prekeys a peer, each way, and
    :data:`MAX_PREKEYS_TOTAL` in all: past it the least recently seen peers lose theirs
    (``keep``, the peer just saved, last).  Call it inside ``ks.update()``; returns how many
    were dropped (``keep``: one device id, or several: the peers just saved go last).  A peer
    without prekeys resumes by kk (docs/protocol.md)."""
    dropped = 0
    records = list(ks.peers())
    for i, p in enumerate(records):
        if len(p.their_prekeys) > MAX_PREKEYS_PER_PEER or len(p.our_prekeys) > MAX_PREKEYS_PER_PEER:
            trimmed = _replace(p, their_prekeys=list(p.their_prekeys[-MAX_PREKEYS_PER_PEER:]),
                               our_prekeys=list(p.our_prekeys[-MAX_PREKEYS_PER_PEER:]))
            dropped += len(p.their_prekeys) + len(p.our_prekeys)
            dropped -= len(trimmed.their_prekeys) + len(trimmed.our_prekeys)
            ks.add_peer(trimmed)
            records[i] = trimmed
    total = sum(len(p.their_prekeys) + len(p.our_prekeys) for p in records)
    kept = {keep} if isinstance(keep, str) else set(keep or ())
    for p in sorted(records, key=lambda r: (r.id in kept, r.last_seen)):
        if total <= MAX_PREKEYS_TOTAL:
            break
        held = len(p.their_prekeys) + len(p.our_prekeys)
        if held:
            ks.add_peer(_replace(p, their_prekeys=[], our_prekeys=[]))
            total -= held
            dropped += held
    return dropped


def was_given_cloud_secret(record: Peer) -> bool:
    """Whether this host gave ``record``'s device its cloud secret: marked ``secret_given``
    since session 16, and any record granted ``member`` (older ones: a member was given it)."""
    return bool(record.extra.get("secret_given")) or record.extra.get("granted") == "member"


def renew_cloud_secret(ks: Keystore) -> int | None:
    """Renew the secret of the cloud this device owns (a fresh one from ``os.urandom``, one
    epoch up; the old one kept as retired); the new epoch, or None when it owns no cloud.

    Called inside the ``ks.update()`` that forgets a peer given the secret (``pairkit
    forget``), so that no process sees the peer gone and the secret unchanged: its proof, made
    with the retired secret, counts for members only from then on, and the members kept get the
    new secret at their next session (docs/security.md "Renewing the cloud secret")."""
    owned = next((c for c in ks.clouds() if c.role == "owner"), None)
    if owned is None:
        return None
    return ks.renew_cloud_secret(owned.cloud_id, os.urandom(32))


@dataclasses.dataclass(frozen=True)
class Forgotten:
    """What :func:`forget` did: the record it removed, and what it renewed."""

    record: Peer
    #: this device's address key was renewed (the peer had been given it)
    address_key_renewed: bool
    #: this device's cloud secret was renewed (the peer had been given it)
    cloud_secret_renewed: bool
    #: the groups this device held from the peer as their controller, dropped with their keys
    groups_dropped: tuple[str, ...] = ()
    #: the groups this device controls that the peer was a member of: it is out of them, each
    #: at a new epoch the members kept get at the next delivery round (``group sync``)
    groups_left: tuple[str, ...] = ()


def forget(ks: Keystore, peer: str) -> Forgotten:
    """Forget a known peer (by name or id), as ``pairkit forget`` does: it has to pair again.

    The groups this device holds from the peer as their controller are dropped with their
    keys; the groups this device controls lose the peer as a member, each at a new epoch (the
    members kept get its key at the next delivery round: ``pairkit group sync``).  A peer
    that was given this device's cloud secret: the secret is renewed in the same save
    (docs/security.md "Renewing the cloud secret"), so that its proof of the old one counts for
    members only.  A peer that was given this device's address key as a member: the key is
    renewed, so that it cannot follow this device's new addresses (docs/security.md
    "Recognising a host across addresses").  The members kept get both at their next session.
    Raises :class:`NotFoundError` for an unknown peer."""
    from .groups import drop_groups_of, remove_from_groups
    from .presence import renew_identity_resolving_key

    with ks.update():
        removed = ks.forget_peer(peer)
        secret_renewed = was_given_cloud_secret(removed) and renew_cloud_secret(ks) is not None
        # its groups here go with it: no more of its say over what this device obeys (attack
        # review atk19g, finding 6)
        dropped = drop_groups_of(ks, removed.id)
        # and its membership of the groups this device controls, each at a new epoch (atk19g,
        # finding 7), as a cloud member's secret is renewed
        left = remove_from_groups(ks, removed.id)
        # and the address key it was given, in the same save: a forget that stopped half way
        # must not leave the peer forgotten and the key it holds still in use
        key_renewed = bool(removed.extra.get("irk_given"))
        if key_renewed:
            renew_identity_resolving_key(ks)
    return Forgotten(removed, key_renewed, secret_renewed, dropped, left)


def peer_grant(ks: Keystore, device_id: bytes, wall_now: float) -> Grant | None:
    """The still valid grant this host's owner gave a known device (no prompt when it comes
    back).  Only ``granted`` counts: what the device granted us is never read as its grant.
    Read from the keystore as it is now (another process's changes included)."""
    ks.follow()
    record = ks.peer_by_id(device_id.hex())
    if record is None:
        return None
    return _grant_of(record, wall_now)


def _grant_of(record: Peer, wall_now: float) -> Grant | None:
    role = record.extra.get("granted")
    if role == "member":
        return Grant(Role.MEMBER)
    expires = record.extra.get("granted_expires")
    if role == "guest" and isinstance(expires, int | float) and expires > wall_now:
        return Grant(Role.GUEST, max(1, int(expires - wall_now)), until=int(expires))
    return None


def cloud_members(ks: Keystore) -> tuple[Member, ...]:
    """The devices this host made or knows as members of its cloud, itself first."""
    ks.follow()
    out = [Member(bytes.fromhex(ks.device_id), ks.name)]
    for p in ks.peers():
        if p.extra.get("granted") == "member":
            out.append(Member(bytes.fromhex(p.id), p.name))
    return tuple(out[:64])


def consume_our_prekey(ks: Keystore, device_id: bytes, digest: bytes) -> bool:
    """Delete one of our prekeys for a peer, durably, before a resume is answered with it
    (docs/security.md, rule 4).  False when the keystore no longer holds it (used already,
    perhaps by another host process on this device)."""
    with ks.update():  # reloads under the file lock, saves before returning
        record = ks.peer_by_id(device_id.hex())
        if record is None:
            return False
        kept = [r for r in record.our_prekeys
                if not (isinstance(r, tuple | list) and len(r) == 2 and bytes(r[0]) == digest)]
        if len(kept) == len(record.our_prekeys):
            return False
        ks.add_peer(_replace(record, our_prekeys=kept))
    return True


def suspect(record: Peer) -> str | None:
    """Why a stored peer can no longer be trusted as recorded, or None.

    A ``clear`` pairing stored as authenticated before the link's MITM protection was checked
    may have run over a Just Works link: nobody vouched for it (docs/security.md, rule 5).
    """
    if record.method == "clear" and record.authenticated and "link_mitm" not in record.extra:
        return "paired by 'clear' before link protection was checked; pair again to trust it"
    return None


def trusted(record: Peer) -> bool:
    """Whether a stored peer counts as authenticated (see :func:`suspect`)."""
    return record.authenticated and suspect(record) is None


def drop_their_prekey(ks: Keystore, device_id: bytes, digest: bytes) -> None:
    """Forget a prekey digest the peer refused as stale."""
    with ks.update():
        record = _by_id(ks, device_id)
        kept = [d for d in record.their_prekeys if d != digest]
        ks.add_peer(_replace(record, their_prekeys=kept))


def _replace(record: Peer, **changes: Any) -> Peer:
    import dataclasses

    return dataclasses.replace(record, **changes)


def peer_rows(ks: Keystore) -> list[dict[str, Any]]:
    return [
        {
            "id": p.id,
            "name": p.name,
            "fingerprint": p.fingerprint,
            "method": p.method,
            "authenticated": trusted(p),
            "warning": suspect(p),
            "granted": p.extra.get("granted"),
            "granted_expires": p.extra.get("granted_expires"),
            "standing": p.extra.get("standing"),
            "standing_expires": p.extra.get("standing_expires"),
            "prekeys": len(p.their_prekeys),
            "last_seen": p.last_seen,
            "transport": p.extra.get("transport"),
        }
        for p in ks.peers()
    ]
