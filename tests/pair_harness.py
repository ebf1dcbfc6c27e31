"""Pairing machines joined in memory, h11 ConnectionPair style (STYLE.md rule 8).

``shuttle`` moves messages between a guest and a host until both are done or one failed,
answering questions from a script.  ``run`` does the same for any machines joined by any links
(a man in the middle is two links through two machines: see ``shuttle_mitm``).  Loops are
bounded: a protocol that ping-pongs forever fails the test ("too many round trips!").  A
machine's wait for its turn (:class:`~pairing.machine.WaitTurn`) is answered as the driver
answers it, whatever the script says: the turn came, or (nothing else running) the wait is over.

A ``tamper`` callable sees every message (direction, bytes) and may rewrite it, drop it
(``None``) or deliver several messages in its place (a list: duplicates, injections).

``make_pair`` builds a deterministic guest and host for any method from a seed (randomness from
``random.Random(seed).randbytes``; only HPKE's internal ephemeral is not seeded).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from pairkit.pairing import wire
from pairkit.pairing.cloud import OwnerDecided, WaitingForOwner
from pairkit.pairing.errors import PairingError
from pairkit.pairing.machine import Machine, Question, WaitTurn
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Session,
    prekey_holder,
)
from pairkit.pairing.negotiation import Method
from pairkit.pairing.qr import QrCode

MAX_ROUNDS = 20

Tamper = Callable[[str, bytes], bytes | list[bytes] | None]
#: an answer is a value, or a callable (side name, question, result) -> value or None (not yet)
Answer = Any


class PairResult:
    def __init__(self) -> None:
        self.errors: dict[str, PairingError] = {}
        #: (direction, length) of every message delivered, in order
        self.flights: list[tuple[str, int]] = []
        #: (direction, bytes) of every message delivered, in order
        self.messages: list[tuple[str, bytes]] = []
        #: (side, event) of every event emitted, in order (but status lines: below)
        self.questions: list[tuple[str, Any]] = []
        #: (side, event) of the status events (a guest waiting for the owner), in order
        self.statuses: list[tuple[str, Any]] = []

    @property
    def asked(self) -> list[tuple[str, Any]]:
        """(side, question) of the events that wait for an answer (``Question``), in order."""
        return [(s, e) for s, e in self.questions if isinstance(e, Question)]

    @property
    def told(self) -> list[tuple[str, Any]]:
        """(side, event) of the events that only inform (not a ``Question``), in order."""
        return [(s, e) for s, e in self.questions if not isinstance(e, Question)]

    @property
    def guest_error(self) -> PairingError | None:
        return self.errors.get("guest")

    @property
    def host_error(self) -> PairingError | None:
        return self.errors.get("host")

    @property
    def bytes_total(self) -> int:
        return sum(n for _, n in self.flights)

    def types(self, direction: str | None = None) -> list[str]:
        """The class names of the delivered messages (optionally of one direction)."""
        return [
            type(wire.decode(data)).__name__
            for d, data in self.messages
            if direction is None or d == direction
        ]

    def codes(self, side: str) -> list[str]:
        """The codes shown on ``side``'s screen (``ConfirmCode`` questions)."""
        return [e.code for s, e in self.questions if s == side and hasattr(e, "code")]


def run(
    machines: dict[str, Machine],
    links: list[tuple[str, str]],
    *,
    now: float = 0.0,
    answers: dict[str, Answer] | None = None,
    tamper: Tamper | None = None,
) -> PairResult:
    """Shuttle messages along ``links`` (pairs of machine names) until nothing moves."""
    answers = answers or {}
    result = PairResult()
    peer_of: dict[str, str] = {}
    for a, b in links:
        peer_of[a], peer_of[b] = b, a
    pending: list[tuple[str, Question]] = []
    for _ in range(MAX_ROUNDS):
        moved = False
        for name, machine in machines.items():
            for event in machine.events():
                if isinstance(event, WaitingForOwner | OwnerDecided):
                    result.statuses.append((name, event))
                    continue
                result.questions.append((name, event))
                if isinstance(event, Question):
                    pending.append((name, event))
        for name, question in list(pending):
            if name not in answers:
                continue
            value = answers[name]
            if isinstance(question, WaitTurn):
                # Answered as the driver does, never by the script: nothing else runs here and
                # no clock moves, so a turn that has not come now never will (the wait is over).
                value = _turn_came(question)
            elif callable(value):
                value = value(name, question, result)
                if value is None:
                    continue  # not yet: asked again next round
            pending.remove((name, question))
            moved = True
            machine = machines[name]
            if machine.failed or machine.done:
                continue
            try:
                machine.answer(question, value, now)
            except PairingError as exc:
                result.errors.setdefault(name, exc)
        for name, machine in machines.items():
            for data in machine.outgoing():
                moved = True
                target_name = peer_of[name]
                direction = _direction(name, target_name)
                delivered: bytes | list[bytes] | None = data
                if tamper is not None:
                    delivered = tamper(direction, data)
                if delivered is None:
                    continue
                for item in delivered if isinstance(delivered, list) else [delivered]:
                    result.flights.append((direction, len(item)))
                    result.messages.append((direction, item))
                    target = machines[target_name]
                    if target.failed or target.done:
                        continue
                    try:
                        target.receive(item, now)
                    except PairingError as exc:
                        result.errors.setdefault(target_name, exc)
        if not moved:
            return result
    raise AssertionError("too many round trips!")


def _turn_came(question: WaitTurn) -> bool:
    woken: list[bool] = []
    question.subscribe(lambda: woken.append(True))
    question.subscribe(None)
    return bool(woken)


def _direction(src: str, dst: str) -> str:
    short = {"guest": "g", "host": "h"}
    if src in short and dst in short:
        return f"{short[src]}2{short[dst]}"
    return f"{src}->{dst}"


def shuttle(
    guest: Machine,
    host: Machine,
    *,
    now: float = 0.0,
    answers: dict[str, Answer] | None = None,
    tamper: Tamper | None = None,
) -> PairResult:
    """Run a guest and a host to the end; directions are ``g2h`` and ``h2g``."""
    return run(
        {"guest": guest, "host": host},
        [("guest", "host")],
        now=now,
        answers=answers,
        tamper=tamper,
    )


def shuttle_mitm(
    guest: Machine,
    mitm_host: Machine,
    mitm_guest: Machine,
    host: Machine,
    *,
    now: float = 0.0,
    answers: dict[str, Answer] | None = None,
    tamper: Tamper | None = None,
) -> PairResult:
    """The guest talks to ``mitm_host``; ``mitm_guest`` talks to the host.

    Directions are ``guest->mitm_host``, ``mitm_host->guest``, ``mitm_guest->host`` and
    ``host->mitm_guest``.  The MITM's own questions are answered from ``answers`` too.
    """
    return run(
        {"guest": guest, "mitm_host": mitm_host, "mitm_guest": mitm_guest, "host": host},
        [("guest", "mitm_host"), ("mitm_guest", "host")],
        now=now,
        answers=answers,
        tamper=tamper,
    )


def compare_codes(name: str, question: Any, result: PairResult) -> bool | None:
    """A person who answers yes only when the code on the other device's screen is the same.

    The guest's screen is compared with the host's (the two ends, whatever is in between).
    """
    other = "host" if name == "guest" else "guest"
    theirs = result.codes(other)
    if not theirs:
        return None
    return theirs[-1] == question.code


# -- building pairs --------------------------------------------------------------------------


def seeded(seed: int, label: str = "run") -> Callable[[int], bytes]:
    """A deterministic ``rng``; each label is an independent stream."""
    return random.Random(f"{label}/{seed}").randbytes


@dataclasses.dataclass
class Pair:
    """A guest and a host ready to run (``guest.start`` already called unless told not to)."""

    guest: GuestPairing
    host: HostPairing
    state: HostState
    guest_me: LocalIdentity
    host_me: LocalIdentity
    pin: str | None = None
    qr: QrCode | None = None

    def run(self, **kwargs: Any) -> PairResult:
        kwargs.setdefault("answers", {"guest": True, "host": True})
        kwargs.setdefault("now", 0.0)
        return shuttle(self.guest, self.host, **kwargs)


def identities(seed: int) -> tuple[LocalIdentity, LocalIdentity]:
    rng = seeded(seed, "identities")
    return LocalIdentity.generate("George", rng), LocalIdentity.generate("Paul", rng)


def make_pair(
    method: Method,
    *,
    seed: int = 0,
    now: float = 0.0,
    wall_now: float = 1000.0,
    guest_me: LocalIdentity | None = None,
    host_me: LocalIdentity | None = None,
    state: HostState | None = None,
    pin: str | None = None,
    qr: QrCode | None = None,
    peer: KnownPeer | None = None,
    link_encrypted: bool | None = None,
    link_mitm: bool = False,
    guest_context: bytes = b"",
    host_context: bytes = b"",
    guest_config: PairingConfig | None = None,
    host_config: PairingConfig | None = None,
    guest_wall_now: float | None = None,
    start: bool = True,
) -> Pair:
    """A guest and a host for ``method``, all randomness from ``seed``."""
    rng = seeded(seed)
    if guest_me is None or host_me is None:
        g, h = identities(seed)
        guest_me = guest_me or g
        host_me = host_me or h
    state = state or HostState(rng=rng)
    if method is Method.PIN and pin is None:
        pin = state.pin or state.new_pin()
    if method is Method.QR and qr is None:
        qr = state.issue_qr(host_me.static_public, wall_now, ttl=60, hint="")
    encrypted = method is Method.CLEAR if link_encrypted is None else link_encrypted
    host = HostPairing(
        host_config or PairingConfig(),
        host_me,
        state,
        link_encrypted=encrypted,
        link_mitm=link_mitm,
        wall_now=wall_now,
        context=host_context,
        rng=rng,
    )
    host.start(now)
    guest = GuestPairing(
        guest_config or PairingConfig(),
        guest_me,
        method=method,
        link_encrypted=encrypted,
        link_mitm=link_mitm,
        context=guest_context,
        pin=pin if method is Method.PIN else None,
        qr=qr if method is Method.QR else None,
        peer=peer,
        wall_now=wall_now if guest_wall_now is None else guest_wall_now,
        rng=rng,
    )
    if start:
        guest.start(now)
    return Pair(guest, host, state, guest_me, host_me, pin, qr)


@dataclasses.dataclass
class Known:
    """Two devices that paired once: each side's stored record of the other."""

    guest_me: LocalIdentity
    host_me: LocalIdentity
    state: HostState
    guest_record: KnownPeer  #: the guest's record of the host
    host_records: dict[bytes, KnownPeer]  #: the host's records by guest id
    first: tuple[Session, Session]  #: (guest session, host session) of the first pairing

    def resume(
        self,
        *,
        seed: int = 1,
        peer: KnownPeer | None = None,
        method: Method = Method.RESUME,
        now: float = 0.0,
    ) -> Pair:
        return make_pair(
            method,
            seed=seed,
            guest_me=self.guest_me,
            host_me=self.host_me,
            state=self.state,
            peer=peer or self.guest_record,
            now=now,
        )

    def store(self, pair: Pair) -> None:
        """Store what a finished pairing changed, on both sides (as the CLI's keystore would)."""
        assert pair.guest.session is not None and pair.host.session is not None
        self.guest_record = pair.guest.session.updated_peer(self.guest_record)
        old = self.host_records.get(self.guest_me.device_id)
        self.host_records[self.guest_me.device_id] = pair.host.session.updated_peer(old)


def known_pair(seed: int = 0) -> Known:
    """Pair two devices with a PIN and return their stored records of each other."""
    pair = make_pair(Method.PIN, seed=seed)
    result = pair.run()
    assert pair.guest.session is not None and pair.host.session is not None, result.errors
    records: dict[bytes, KnownPeer] = {}
    pair.state.known_peer = records.get
    pair.state.peer_by_prekey = lambda d: prekey_holder(records.values(), d)
    known = Known(
        pair.guest_me,
        pair.host_me,
        pair.state,
        pair.guest.session.updated_peer(None),
        records,
        (pair.guest.session, pair.host.session),
    )
    records[pair.guest_me.device_id] = pair.host.session.updated_peer(None)
    return known


# -- stepping one message at a time (for fuzzing) --------------------------------------------


class Stepper:
    """Deliver the honest exchange one message at a time; questions are answered yes."""

    def __init__(
        self, guest: Machine, host: Machine, *, now: float = 0.0, answer: bool = True
    ) -> None:
        self.sides = {"guest": guest, "host": host}
        self.now = now
        self.answer = answer  #: False leaves questions unanswered (the machine waits in its state)
        self.queue: list[tuple[str, bytes]] = []  # (target, message)
        self.delivered: list[tuple[str, bytes]] = []

    def _collect(self) -> None:
        for machine in self.sides.values():
            for event in machine.events():
                if not self.answer:
                    continue
                if isinstance(event, Question) and not (machine.failed or machine.done):
                    machine.answer(event, True, self.now)
        for name, machine in self.sides.items():
            target = "host" if name == "guest" else "guest"
            self.queue.extend((target, data) for data in machine.outgoing())

    def step(self) -> bool:
        """Deliver the next message; ``False`` when there is none."""
        self._collect()
        if not self.queue:
            return False
        target, data = self.queue.pop(0)
        self.delivered.append((target, data))
        self.sides[target].receive(data, self.now)
        self._collect()
        return True

    def drain(self) -> list[PairingError]:
        """Deliver everything left, going on past errors (each side may fail in turn)."""
        errors: list[PairingError] = []
        for _ in range(4 * MAX_ROUNDS):
            try:
                if not self.step():
                    return errors
            except PairingError as exc:
                errors.append(exc)
        raise AssertionError("too many round trips!")


def honest_transcript(method: Method, seed: int = 0) -> list[tuple[str, bytes]]:
    """(receiver, message) of every message of an honest run of ``method``."""
    pair = pair_for(method, seed)
    stepper = Stepper(pair.guest, pair.host)
    while stepper.step():
        pass
    assert pair.guest.done and pair.host.done, (pair.guest.error, pair.host.error)
    return stepper.delivered


def pair_for(method: Method, seed: int = 0, *, start: bool = True) -> Pair:
    """A ready pair for any method, including ``resume`` and ``kk`` (paired first)."""
    if method in (Method.RESUME, Method.KK):
        known = known_pair(seed)
        return make_pair(
            method,
            seed=seed + 1,
            guest_me=known.guest_me,
            host_me=known.host_me,
            state=known.state,
            peer=known.guest_record,
            start=start,
        )
    return make_pair(method, seed=seed, start=start)
