"""Fuzzing the pairing machines: only pairkit's own errors may escape (STYLE.md rule 9).

For each method, the honest exchange is driven to a random step; then one side is fed what an
attacker or a broken peer could send — arbitrary bytes, valid messages of any type, honest
messages out of order (replays, reflections, other methods' messages), mutated honest messages —
or a timeout or a stray answer.  The invariant: the machine either advances (no exception) or
raises a :class:`~pairing.errors.PairingError` and is then failed (or was already done), and every
later call raises.  No ``KeyError``, ``TypeError``, ``AttributeError``, ``AssertionError`` or
``ValueError`` ever escapes.  Messages are fed whole, in one chunk (fragmentation is
:mod:`tests.test_framing`'s).
"""

from __future__ import annotations

import dataclasses
import typing
from enum import IntEnum
from functools import cache
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairkit.pairing import cbor, wire
from pairkit.pairing.errors import DecodeError, ErrorCode, PairingError, TooLargeError
from pairkit.pairing.machine import Machine
from pairkit.pairing.methods import ConfirmCode, GuestPairing, HostState, prekey_holder
from pairkit.pairing.negotiation import Method
from tests.pair_harness import (
    Known,
    Pair,
    Stepper,
    honest_transcript,
    known_pair,
    make_pair,
    seeded,
)
from tests.test_wire import field_kind, message_strategy, value_strategy

METHODS = [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME, Method.KK]


@cache
def transcript(method: Method) -> tuple[bytes, ...]:
    """An honest run's messages (another seed than the fuzzed run's)."""
    return tuple(data for _, data in honest_transcript(method, seed=1000))


@cache
def all_honest() -> tuple[bytes, ...]:
    return tuple(data for m in METHODS for data in transcript(m))


#: X25519 points of small order (and non-canonical encodings of them): DH with them gives zero
LOW_ORDER = (
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    b"\xec" + b"\xff" * 30 + b"\x7f",
    b"\xed" + b"\xff" * 30 + b"\x7f",
    b"\xee" + b"\xff" * 30 + b"\x7f",
)


def _special(kind: Any, size: int | None, max_len: int | None) -> Any:
    """Values a careless decoder trips on, for a field of this kind."""
    if kind is bytes:
        n = size if size is not None else (max_len or 64)
        values = [b"", bytes(n), b"\xff" * n]
        return st.sampled_from([*values, *LOW_ORDER] if n == 32 else values)
    if kind is str:
        n = max_len or 64
        return st.sampled_from(["", "\U0001f600" * n, "\x00" * n, "\u202e" * n])
    if kind is int:
        return st.sampled_from([0, 1, 2**63, 2**64 - 1])
    return st.nothing()


def field_variant(draw: Any, base: bytes) -> bytes:
    """``base`` with one field (maybe nested) replaced: still well-formed, so it gets past the
    decoder and into the handlers."""
    msg = wire.decode(base)

    def replace(obj: Any) -> Any:
        f = draw(st.sampled_from(dataclasses.fields(obj)))
        kind, optional = field_kind(type(obj), f)
        current = getattr(obj, f.name)
        if isinstance(current, wire.Message) and draw(st.booleans()):
            return dataclasses.replace(obj, **{f.name: replace(current)})
        size, max_len = f.metadata["size"], f.metadata["max_len"]
        strat = _special(kind, size, max_len) | value_strategy(kind, size, max_len, item=False)
        if optional:
            strat = strat | st.none()
        return dataclasses.replace(obj, **{f.name: draw(strat)})

    try:
        return replace(msg).encode()
    except (TooLargeError, DecodeError):  # too long, or out of a field's bounds: not well-formed
        return base


LONG_KEYS = ("\U0001f600" * 190, "\u00e9" * 190, "x" * 190)


def extra_key(draw: Any, base: bytes) -> bytes:
    """``base`` with one more (unknown) key, maybe a long text key the error text echoes."""
    body = cbor.decode(base, max_size=wire.MAX_MESSAGE)
    key = draw(st.integers(2, 40) | st.text(min_size=1, max_size=20) | st.sampled_from(LONG_KEYS))
    body[key] = draw(st.integers(0, 3) | st.binary(max_size=8))
    return cbor2.dumps(body, canonical=True)


def mutated(draw: Any, base: bytes) -> bytes:
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = draw(st.integers(0, len(raw)))
        if op == "insert":
            raw.insert(pos, draw(st.integers(0, 255)))
        elif pos < len(raw):
            if op == "flip":
                raw[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                del raw[pos]
    return bytes(raw)


KINDS = [
    *["variant-next"] * 5,
    *["mutated-next"] * 2,
    "extra-next",
    "variant",
    "bytes",
    "message",
    "honest",
    "own",
    "abort",
    "timeout",
    "answer",
]


def draw_input(draw: Any, method: Method, expected: bytes | None, seen: list[bytes]) -> Any:
    """One thing to feed: ("bytes", data), ("timeout", now) or ("answer", value).

    ``expected`` is the message the honest peer would send next (most inputs are built from it,
    so that they reach the handler of the machine's current state); ``seen`` are the messages of
    this run so far (replays, reflections).
    """
    kind = draw(st.sampled_from(KINDS))
    if kind.endswith("-next"):
        base = expected if expected is not None else draw(st.sampled_from(transcript(method)))
        build = {"variant-next": field_variant, "mutated-next": mutated, "extra-next": extra_key}
        return "bytes", build[kind](draw, base)
    if kind == "variant":
        return "bytes", field_variant(draw, draw(st.sampled_from(all_honest())))
    if kind == "bytes":
        return "bytes", draw(st.binary(max_size=600))
    if kind == "message":
        return "bytes", draw(message_strategy()).encode()
    if kind == "honest":  # a valid message from any method, out of place here
        return "bytes", draw(st.sampled_from(all_honest()))
    if kind == "own" and seen:  # a message of this run again: replay or reflection
        return "bytes", draw(st.sampled_from(seen))
    if kind == "abort":
        code = draw(st.sampled_from(list(ErrorCode)))
        return "bytes", wire.Abort(code=code, reason=draw(st.text(max_size=200))).encode()
    if kind == "timeout":
        return "timeout", draw(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
    return "answer", draw(st.one_of(st.booleans(), st.none(), st.integers(), st.text()))


def _feed(machine: Machine, item: tuple[str, Any]) -> None:
    kind, value = item
    if kind == "bytes":
        machine.receive(value, 0.0)
    elif kind == "timeout":
        machine.on_timeout(value)
    else:
        machine.answer(ConfirmCode(code="123456", peer_name="x"), value, 0.0)


def _assert_poisoned(machine: Machine, exc: PairingError) -> None:
    """After an error the machine is failed (or was already done) and every call raises."""
    assert machine.failed or machine.done, machine.state
    if machine.failed:
        assert machine.error is not None
        assert machine.next_deadline() is None
    # what it queued for the peer decodes, and fits its limit (an Abort, 512 bytes)
    for data in machine.outgoing():
        wire.decode(data)
    calls = [
        lambda: machine.receive(transcript(Method.PIN)[0], 0.0),
        lambda: machine.receive(b"\x00", 0.0),
        lambda: machine.on_timeout(1e12),
        lambda: machine.answer(ConfirmCode(code="123456", peer_name="x"), True, 0.0),
    ]
    if isinstance(machine, GuestPairing):
        calls.append(lambda: machine.start(0.0))
    for call in calls:
        with pytest.raises(PairingError) as info:
            call()
        if machine.failed:
            assert info.value is machine.error
    if machine.failed:
        assert getattr(machine, "session", None) is None


@cache
def _known() -> Known:
    return known_pair(seed=7)


def _fresh_pair(method: Method) -> Pair:
    """The same pair every time (seeded); resume and kk reuse one first pairing."""
    if method in (Method.RESUME, Method.KK):
        known = _known()
        records = dict(known.host_records)
        state = HostState(rng=seeded(7, "state"), known_peer=records.get,
                          peer_by_prekey=lambda d: prekey_holder(records.values(), d))
        return make_pair(
            method,
            seed=8,
            guest_me=known.guest_me,
            host_me=known.host_me,
            state=state,
            peer=known.guest_record,
        )
    return make_pair(method, seed=7)


def _run_to(method: Method, steps: int, answer: bool = True) -> tuple[Pair, Stepper]:
    pair = _fresh_pair(method)
    stepper = Stepper(pair.guest, pair.host, answer=answer)
    for _ in range(steps):
        if not stepper.step():
            break
    stepper._collect()
    return pair, stepper


def _feed_all(machine: Machine, items: list[Any]) -> None:
    for item in items:
        try:
            _feed(machine, item)
        except PairingError as exc:
            _assert_poisoned(machine, exc)
            return
        # advanced, or stayed where it was: still a consistent machine
        assert not machine.failed
        if machine.done:
            assert getattr(machine, "session", None) is not None


@pytest.mark.parametrize("method", METHODS, ids=[m.label for m in METHODS])
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_only_pairing_errors_escape(method: Method, data: st.DataObject) -> None:
    steps = data.draw(st.integers(0, len(transcript(method))), label="steps")
    answer = data.draw(st.booleans(), label="answer questions")
    pair, stepper = _run_to(method, steps, answer)
    target, expected = stepper.queue[0] if stepper.queue else (None, None)
    side = data.draw(st.sampled_from(["next", "next", "guest", "host"]), label="side")
    if side == "next":
        side = target or "host"
    machine: Machine = pair.guest if side == "guest" else pair.host
    seen = [d for _, d in stepper.delivered] + [d for _, d in stepper.queue]
    items = [
        draw_input(data.draw, method, expected, seen)
        for _ in range(data.draw(st.integers(1, 3), label="how many"))
    ]
    _feed_all(machine, items)


@cache
def one_of_each_type() -> tuple[bytes, ...]:
    by_type: dict[int, bytes] = {}
    for data in all_honest():
        by_type.setdefault(wire.peek_type(data) or 0, data)
    return tuple(by_type.values())


@pytest.mark.parametrize("method", METHODS, ids=[m.label for m in METHODS])
def test_out_of_order_messages_at_every_step(method: Method) -> None:
    """Exhaustively: each of the method's own messages and one message of every type, fed to
    each side at each step (replays, reflections, skipped and repeated flights)."""
    candidates = (*transcript(method), *one_of_each_type())
    for steps in range(len(transcript(method)) + 1):
        for side in ("guest", "host"):
            for data in candidates:
                pair, _ = _run_to(method, steps)
                machine = pair.guest if side == "guest" else pair.host
                _feed_all(machine, [("bytes", data)])


def _edge_values(kind: Any, size: int | None, max_len: int | None, optional: bool) -> list[Any]:
    values: list[Any] = [None] if optional else []
    if kind is bytes:
        n = size if size is not None else (max_len or 64)
        values += [b"", bytes(n), b"\xff" * n, *(LOW_ORDER if n == 32 else ())]
    elif kind is str:
        values += ["", "\U0001f600" * (max_len or 64)]
    elif kind is int:
        values += [0, 2**64 - 1]
    elif isinstance(kind, type) and issubclass(kind, IntEnum):
        values += list(kind)
    elif typing.get_origin(kind) is tuple:
        values += [(), (bytes(size or 16),) * (max_len or 1)]
    return values


def _edge_variants(base: bytes) -> list[bytes]:
    """``base`` with each field (and each field of a nested struct) set to each edge value."""
    out: set[bytes] = set()

    def walk(obj: Any, rebuild: Any) -> None:
        for f in dataclasses.fields(obj):
            kind, optional = field_kind(type(obj), f)
            current = getattr(obj, f.name)
            if isinstance(current, wire.Message):
                walk(
                    current,
                    lambda new, f=f: rebuild(dataclasses.replace(obj, **{f.name: new})),
                )
                continue
            for value in _edge_values(kind, f.metadata["size"], f.metadata["max_len"], optional):
                try:
                    out.add(rebuild(dataclasses.replace(obj, **{f.name: value})).encode())
                except (TooLargeError, DecodeError):  # not well-formed (its decode test's)
                    pass

    walk(wire.decode(base), lambda new: new)
    out.discard(base)
    return sorted(out)


@pytest.mark.parametrize("method", METHODS, ids=[m.label for m in METHODS])
def test_edge_values_in_every_field_of_every_message(method: Method) -> None:
    """Exhaustively: each message of the run, as its receiver expects it, with one field set to
    an edge value (empty, zero, all ones, a small-order X25519 point, the longest non-ASCII text,
    each enum value, null)."""
    for steps in range(len(transcript(method))):
        _, stepper = _run_to(method, steps)
        target, expected = stepper.queue[0]
        for variant in _edge_variants(expected):
            pair, _ = _run_to(method, steps)
            machine = pair.guest if target == "guest" else pair.host
            _feed_all(machine, [("bytes", variant)])
