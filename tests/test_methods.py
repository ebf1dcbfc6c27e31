"""The pairing methods at machine level (:mod:`pairing.methods`), run in memory.

Randomness comes from seeded streams (``tests.pair_harness.seeded``), so every run but
``compare``'s (HPKE draws its own ephemeral) is the same byte for byte.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import cbor2
import pytest

from pairkit.pairing import wire
from pairkit.pairing.errors import (
    AuthenticationError,
    BusyError,
    ConfigError,
    DecodeError,
    ErrorCode,
    ExpiredError,
    InsecureLinkError,
    LockedOutError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RefusedError,
    RemoteError,
    UnsupportedError,
)
from pairkit.pairing.machine import Machine
from pairkit.pairing.messages import (
    MAX_PREKEYS,
    Accept,
    Identity,
    NoiseMessage,
    Offer,
    ResumeKind,
    ResumeMessage,
    Reveal,
)
from pairkit.pairing.methods import (
    KK_NOISE,
    QR_NOISE,
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    InsecureWarning,
    LocalIdentity,
    PairingConfig,
    PinPolicy,
    _hello_hash,
    _Payload,
    _qr_psk,
    _th,
    check_pin_strength,
    prekey_holder,
)
from pairkit.pairing.methods.common import (
    KK_ACCEPT_PAYLOAD_LEN,
    KK_OFFER_PAYLOAD_LEN,
    _identity,
    _kk_payload_bytes,
    _new_prekeys,
    _read_kk_payload,
    _read_payload,
)
from pairkit.pairing.negotiation import (
    ALL_CAPS,
    KK_CAPS,
    KK_METHODS,
    Caps,
    Method,
    choose,
    methods_mask,
)
from pairkit.pairing.noise import HandshakeState
from tests.pair_harness import (
    Known,
    Pair,
    PairResult,
    Stepper,
    compare_codes,
    honest_transcript,
    identities,
    known_pair,
    make_pair,
    pair_for,
    seeded,
    shuttle,
    shuttle_mitm,
)

YES = {"guest": True, "host": True}
USERS_COMPARE = {"guest": compare_codes, "host": compare_codes}
FULL = [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR]
ALL = [*FULL, Method.RESUME, Method.KK]
FLIGHTS = {
    Method.PIN: ["Offer", "Accept", "NoiseMessage", "NoiseMessage"],
    Method.QR: ["Offer", "Accept"],
    Method.COMPARE: ["Offer", "Accept", "Reveal", "Reveal", "NoiseMessage", "NoiseMessage"],
    Method.CLEAR: ["Offer", "Accept", "NoiseMessage", "NoiseMessage"],
    Method.RESUME: ["ResumeMessage"] * 2,
    Method.KK: ["Offer", "Accept"],
}
#: every method alternates (compare's host opens the identity handshake in its Reveal)
DIRECTIONS: dict[Method, list[str]] = {}
ids = [m.label for m in ALL]


# -- helpers ---------------------------------------------------------------------------------


def assert_paired(pair: Pair, method: Method) -> None:
    g, h = pair.guest.session, pair.host.session
    assert pair.guest.done and pair.host.done, (pair.guest.error, pair.host.error)
    assert g is not None and h is not None
    assert g.method is h.method is method
    assert g.initiator and not h.initiator
    assert g.fingerprint == h.fingerprint
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}", g.fingerprint)
    assert g.send_key == h.recv_key and g.recv_key == h.send_key
    assert g.send_key != g.recv_key and len(g.send_key) == 32
    # each side identified the other
    assert g.peer.device_id == pair.host_me.device_id
    assert g.peer.name == pair.host_me.name
    assert g.peer.static_public == pair.host_me.static_public
    assert g.peer.signing_public == pair.host_me.signing_public
    assert h.peer.device_id == pair.guest_me.device_id
    assert h.peer.name == pair.guest_me.name
    assert h.peer.static_public == pair.guest_me.static_public
    assert h.peer.signing_public == pair.guest_me.signing_public
    # the prekeys one side gave are the ones the other received
    assert g.new_their_prekeys == tuple(p.digest for p in h.new_our_prekeys)
    assert h.new_their_prekeys == tuple(p.digest for p in g.new_our_prekeys)
    # nothing left to send, no deadline left
    assert pair.guest.outgoing() == [] and pair.host.outgoing() == []
    assert pair.guest.next_deadline() is None and pair.host.next_deadline() is None


def assert_failed(machine: Machine, cls: type[PairingError] = PairingError) -> PairingError:
    """``machine`` failed with a ``cls`` and is poisoned: every later call raises that error."""
    assert machine.failed, machine.state
    err = machine.error
    assert isinstance(err, cls), repr(err)
    assert getattr(machine, "session", None) is None
    with pytest.raises(PairingError) as info:
        machine.receive(wire.Abort(code=ErrorCode.UNKNOWN, reason="x").encode(), 0.0)
    assert info.value is err
    with pytest.raises(PairingError) as info:
        machine.on_timeout(1e9)
    assert info.value is err
    assert machine.next_deadline() is None
    return err


def assert_remote(machine: Machine, code: ErrorCode, text: str) -> RemoteError:
    err = assert_failed(machine, RemoteError)
    assert isinstance(err, RemoteError)
    assert err.code == code
    assert text in str(err)
    assert str(err).startswith("the peer stopped: ")
    return err


def other_pin(pin: str) -> str:
    return f"{(int(pin) + 1) % 1_000_000:06d}"


def rewrite(data: bytes, **changes: Any) -> bytes:
    return dataclasses.replace(wire.decode(data), **changes).encode()


# -- every method pairs ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL, ids=ids)
def test_every_method_pairs(method: Method) -> None:
    pair = pair_for(method, seed=1)
    result = pair.run()
    assert result.errors == {}
    assert_paired(pair, method)
    assert result.types() == FLIGHTS[method]
    directions = [d for d, _ in result.flights]
    assert directions == DIRECTIONS.get(
        method, ["g2h", "h2g"] * (len(directions) // 2) + ["g2h"] * (len(directions) % 2)
    )
    assert result.bytes_total == sum(n for _, n in result.flights) > 0
    # every message fits one GATT write (DESIGN.md: writes over 512 bytes are dropped)
    assert max(n for _, n in result.flights) <= 512


@pytest.mark.parametrize("method", [m for m in ALL if m is not Method.COMPARE], ids=str)
def test_seeded_runs_are_reproducible(method: Method) -> None:
    first, second = pair_for(method, seed=7), pair_for(method, seed=7)
    r1, r2 = first.run(), second.run()
    assert r1.messages == r2.messages
    assert first.guest.session == second.guest.session
    third = pair_for(method, seed=8)
    third.run()
    assert third.guest.session is not None and first.guest.session is not None
    assert third.guest.session.fingerprint != first.guest.session.fingerprint


def test_compare_users_see_the_same_code() -> None:
    pair = make_pair(Method.COMPARE, seed=2)
    result = pair.run(answers=USERS_COMPARE)
    assert_paired(pair, Method.COMPARE)
    (gq,) = [q for s, q in result.questions if s == "guest"]
    (hq,) = [q for s, q in result.questions if s == "host"]
    assert isinstance(gq, ConfirmCode) and isinstance(hq, ConfirmCode)
    assert gq.code == hq.code and re.fullmatch(r"\d{6}", gq.code)
    assert gq.peer_name == "Paul" and hq.peer_name == "George"


def test_compare_in_the_shuttle_with_every_place_held_ends_busy() -> None:
    """The in-memory shuttle answers a host's wait for its turn as the driver would when no
    other exchange can free a place (nothing else runs, no clock moves): the wait is over, the
    host ends busy having revealed nothing, and the guest hears it; before, the shuttle said
    "look again" each round until it gave up with "too many round trips"."""
    state = HostState()
    held = [object() for _ in range(5)]
    for holder in held:
        assert state.compare_turns.take(holder, 0.0, 600.0)
    pair = make_pair(Method.COMPARE, seed=2, state=state)
    result = pair.run()
    assert isinstance(result.host_error, BusyError), repr(result.host_error)
    assert isinstance(result.guest_error, RemoteError)
    assert result.guest_error.code == ErrorCode.BUSY
    assert result.codes("guest") == [] and result.codes("host") == []
    assert "Reveal" not in result.types("h2g")
    assert state.compare_turns.out == 5 and state.compare_lock.streak == 0


def test_deadlines() -> None:
    pair = make_pair(Method.PIN, seed=3, now=100.0, start=False)
    assert pair.host.next_deadline() == 100.0 + 30.0
    assert pair.guest.next_deadline() is None  # not started
    pair.guest.start(105.0)
    assert pair.guest.next_deadline() == 105.0 + 30.0
    pair.guest.on_timeout(134.9)  # not yet: nothing happens
    assert not pair.guest.failed


# -- PIN -------------------------------------------------------------------------------------


def test_wrong_pin_fails_on_both_sides() -> None:
    state = HostState(rng=seeded(4))
    pin = state.new_pin()
    pair = make_pair(Method.PIN, seed=4, state=state, pin=other_pin(pin))
    result = pair.run()
    g = assert_failed(pair.guest, AuthenticationError)
    assert "wrong PIN" in str(g)
    assert result.guest_error is g
    h = assert_remote(pair.host, ErrorCode.AUTH_FAILED, "wrong PIN")
    assert isinstance(h.local, AuthenticationError)  # type: ignore[attr-defined]
    assert pin not in str(g) and pin not in str(h)  # never a PIN in a message
    # A shown PIN is good for one attempt: after a failure it is gone, and the host shows a
    # new one (docs/security.md, rule 7); the same guess never works twice.
    assert state.pin is None
    again = make_pair(Method.PIN, seed=5, state=state, pin=pin)
    again.run()
    assert "no PIN is active" in str(assert_failed(again.host, RefusedError))


def test_wrong_pin_detected_by_host_when_guest_noise_is_forged() -> None:
    """The host sees a wrong PIN as such when the guest's Noise message does not decrypt."""
    pair = make_pair(Method.PIN, seed=5)

    def forge(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, NoiseMessage) and direction == "g2h":
            return NoiseMessage(seeded(99, "forge")(len(msg.noise))).encode()
        return data

    pair.run(tamper=forge)
    err = assert_failed(pair.host, AuthenticationError)
    assert "wrong PIN" in str(err)
    assert_remote(pair.guest, ErrorCode.AUTH_FAILED, "wrong PIN")


def test_lockout_after_five_failures_then_the_window_passes() -> None:
    state = HostState(rng=seeded(6))
    for i in range(5):
        pin = state.new_pin()  # the host shows a new PIN after each failure
        bad = make_pair(Method.PIN, seed=10 + i, state=state, pin=other_pin(pin), now=i * 10.0)
        bad.run(now=i * 10.0)
        assert_failed(bad.host, RemoteError)
    # the sixth attempt is refused before any PIN is tried, even with the right PIN
    pin = state.new_pin()
    locked = make_pair(Method.PIN, seed=20, state=state, pin=pin, now=60.0)
    locked.run(now=60.0)
    err = assert_failed(locked.host, LockedOutError)
    assert re.search(r"locked for 240 more seconds", str(err)), str(err)
    remote = assert_remote(locked.guest, ErrorCode.LOCKED_OUT, "240 more seconds")
    assert isinstance(remote.local, LockedOutError)  # type: ignore[attr-defined]
    assert state.locked_for(299.0) == pytest.approx(1.0)
    # at t=300 the first failure leaves the window; the refused attempt did not count
    again = make_pair(Method.PIN, seed=21, state=state, pin=pin, now=300.0)
    again.run(now=300.0)
    assert_paired(again, Method.PIN)


def test_lockout_policy_is_configurable() -> None:
    state = HostState(rng=seeded(7), pin_policy=PinPolicy(max_failures=1, window=60))
    pin = state.new_pin()
    make_pair(Method.PIN, seed=7, state=state, pin=other_pin(pin)).run()
    assert state.locked_for(0.0) == pytest.approx(60.0)
    with pytest.raises(ConfigError):
        PinPolicy(max_failures=0)
    with pytest.raises(ConfigError):
        PinPolicy(window=0)


def test_the_pin_lockout_backs_off_up_to_its_cap_then_forgives() -> None:
    """Rule 7: beyond five failures each one locks PIN pairing from it for twice as long as
    the last (5, 10, 20, 40 min), never more than an hour; a quiet day ends the streak."""
    state = HostState(rng=seeded(12))

    def fail(now: float) -> None:
        pin = state.new_pin()
        bad = make_pair(Method.PIN, seed=int(now) % 997, state=state, pin=other_pin(pin), now=now)
        bad.run(now=now)
        assert_failed(bad.host, RemoteError)

    for i in range(5):
        fail(i * 10.0)
    t = 300.0
    for lock in (300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0):
        assert state.locked_for(t) == 0.0
        fail(t)
        assert state.locked_for(t) == pytest.approx(lock)
        pin = state.new_pin()  # even the right PIN is refused while locked
        locked = make_pair(Method.PIN, seed=31, state=state, pin=pin, now=t + lock - 1)
        locked.run(now=t + lock - 1)
        assert_failed(locked.host, LockedOutError)
        t += lock
    pin = state.new_pin()
    right = make_pair(Method.PIN, seed=32, state=state, pin=pin, now=t)
    right.run(now=t)
    assert_paired(right, Method.PIN)
    fail(t + 10)  # the streak goes on: one more failure locks for the hour
    assert state.locked_for(t + 10) == pytest.approx(3600.0)
    t += 10 + 86400  # a day without a failure ends the streak
    for i in range(4):
        fail(t + i)
        assert state.locked_for(t + i) == 0.0


def _guess_for_a_year(state: HostState, *, rest_after: int | None = None) -> tuple[int, float]:
    """An attacker who guesses whenever PIN pairing is open (one guess a second at most); with
    ``rest_after``, it stops after that many guesses of a streak until the streak is forgiven.
    The guesses it made and the longest lock any one of them bought."""
    year, t, guesses, streak, longest = 365 * 86400.0, 0.0, 0, 0, 0.0
    forgive = state.pin_policy.forgive
    while t < year:
        wait = state.locked_for(t)
        if wait > 0:
            t += wait
            continue
        state.pin_failed(t)
        guesses += 1
        streak += 1
        lock = state.locked_for(t)
        longest = max(longest, lock)
        assert state.locked_for(t + state.pin_policy.max_lock) == 0.0  # the denial ends
        t += 1.0
        if rest_after is not None and streak == rest_after:
            t += lock + forgive
            streak = 0
    return guesses, longest


def test_a_year_of_guessing_is_bounded_and_so_is_each_denial() -> None:
    """The arithmetic of docs/security.md, rule 7: at most 12,045 guesses a year against the
    default policy (a 6-digit PIN: under 1.3 % to guess one), whatever the attacker's rhythm,
    and no failure locks PIN pairing for more than an hour."""
    policy = PinPolicy()
    sustained, longest = _guess_for_a_year(HostState(pin_policy=policy))
    assert 8700 <= sustained <= 8770 and longest == policy.max_lock
    for rest in (5, 6, 9, 12):
        cycling, longest = _guess_for_a_year(HostState(pin_policy=policy), rest_after=rest)
        assert cycling <= 12_045 and longest <= policy.max_lock
    worst = max(sustained, 12_045)
    assert 1 - (1 - 1e-6) ** worst < 0.013


def test_the_lockout_policy_refuses_an_unbounded_or_inverted_configuration() -> None:
    for bad in ({"max_lock": 100.0}, {"forgive": 1000.0}, {"forgive": float("inf")},
                {"window": float("nan")}, {"max_lock": float("nan")}):
        with pytest.raises(ConfigError):
            PinPolicy(**bad)  # type: ignore[arg-type]
    assert PinPolicy().lock_after(10_000) == 3600.0


def test_parallel_guesses_are_held_to_the_lockout() -> None:
    """Guesses started at once (several guests) count before their outcome is known."""
    state = HostState(rng=seeded(8))
    pins = []
    pairs = []
    steppers = []
    for i in range(6):
        # every guess is made against the PIN on show when it starts; the next is shown at once
        pins.append(state.new_pin())
        pairs.append(make_pair(Method.PIN, seed=30 + i, state=state, pin=other_pin(pins[-1])))
        steppers.append(Stepper(pairs[-1].guest, pairs[-1].host))
        if i < 5:
            assert steppers[-1].step()  # the host got the Offer and answered
    with pytest.raises(LockedOutError):
        steppers[5].step()
    for stepper in steppers[:5]:
        assert stepper.drain()
    for p in pairs[:5]:
        assert p.guest.failed and p.host.failed
    assert state.locked_for(1.0) > 0


def test_success_takes_back_the_counted_attempt() -> None:
    state = HostState(rng=seeded(9), pin_policy=PinPolicy(max_failures=1))
    make_pair(Method.PIN, seed=9, state=state).run()
    assert state.locked_for(0.0) == 0.0


def test_success_consumes_the_pin() -> None:
    state = HostState(rng=seeded(10))
    pin = state.new_pin()
    first = make_pair(Method.PIN, seed=40, state=state, pin=pin)
    first.run()
    assert_paired(first, Method.PIN)
    assert state.pin is None
    second = make_pair(Method.PIN, seed=41, state=state, pin=pin)
    second.run()
    err = assert_failed(second.host, RefusedError)
    assert "no PIN is active" in str(err)
    assert_remote(second.guest, ErrorCode.REFUSED, "no PIN is active")


def test_a_pin_pairs_only_one_of_two_parallel_guests() -> None:
    state = HostState(rng=seeded(11))
    pin = state.new_pin()
    a = make_pair(Method.PIN, seed=50, state=state, pin=pin)
    b = make_pair(Method.PIN, seed=51, state=state, pin=pin)
    sa, sb = Stepper(a.guest, a.host), Stepper(b.guest, b.host)
    assert sa.step()  # the first offer takes the PIN for its one attempt
    with pytest.raises(RefusedError, match="no PIN is active"):
        sb.step()
    while sa.step():
        pass
    assert_paired(a, Method.PIN)
    assert sb.drain()
    assert_failed(b.host, RefusedError)
    assert_remote(b.guest, ErrorCode.REFUSED, "no PIN is active")
    assert b.guest.session is None


TRIVIAL = [d * 6 for d in "0123456789"] + ["123456", "654321", "123123", "121212", "012345"]


@pytest.mark.parametrize("pin", TRIVIAL)
def test_trivial_host_pins_refused(pin: str) -> None:
    state = HostState()
    with pytest.raises(ConfigError, match="too easy"):
        state.set_pin(pin)
    assert state.pin is None


@pytest.mark.parametrize(
    "pin", ["12345", "1234567", "12a456", "", " 48291", "¹²³⁴⁵⁶", "٤٨٢٩١٥", "４８２９１５"]
)
def test_malformed_pins_refused(pin: str) -> None:
    with pytest.raises(ConfigError, match="6 digits"):
        HostState().set_pin(pin)
    with pytest.raises(ConfigError):
        GuestPairing(PairingConfig(), LocalIdentity.generate("g"), method=Method.PIN, pin=pin)


def test_good_pins() -> None:
    state = HostState()
    state.set_pin("482915")
    assert state.pin == "482915"
    for seed in range(200):
        pin = HostState(rng=seeded(seed, "pins")).new_pin()
        check_pin_strength(pin)
        assert len(pin) == 6 and pin.isascii() and pin.isdigit()
    with pytest.raises(ConfigError, match="needs the PIN"):
        GuestPairing(PairingConfig(), LocalIdentity.generate("g"), method=Method.PIN)


def test_no_pin_active_on_the_host() -> None:
    state = HostState(rng=seeded(12))
    pair = make_pair(Method.PIN, seed=12, state=state, pin="482915")
    pair.run()
    assert_failed(pair.host, RefusedError)
    assert_remote(pair.guest, ErrorCode.REFUSED, "no PIN")


# -- QR --------------------------------------------------------------------------------------


def test_qr_expired_guest_side() -> None:
    state = HostState(rng=seeded(13))
    g, h = LocalIdentity.generate("g", seeded(13, "g")), LocalIdentity.generate("h", seeded(13))
    code = state.issue_qr(h.static_public, 1000, ttl=60, hint="")
    assert code.expires == 1060
    GuestPairing(PairingConfig(), g, method=Method.QR, qr=code, wall_now=1059)
    with pytest.raises(ExpiredError, match="expired"):
        GuestPairing(PairingConfig(), g, method=Method.QR, qr=code, wall_now=1060)
    with pytest.raises(ConfigError, match="QR code"):
        GuestPairing(PairingConfig(), g, method=Method.QR)


def test_qr_expired_host_side() -> None:
    """The host checks expiry with its own clock even when the guest's is behind."""
    state = HostState(rng=seeded(14))
    pair = make_pair(Method.QR, seed=14, state=state, wall_now=1000.0, start=False)
    late = HostPairing(
        PairingConfig(), pair.host_me, state, wall_now=1060.0, rng=seeded(14, "late")
    )
    late.start(0.0)
    pair.guest.start(0.0)
    shuttle(pair.guest, late)
    assert_failed(late, ExpiredError)
    assert_remote(pair.guest, ErrorCode.EXPIRED, "expired")


def test_qr_used_twice_refused() -> None:
    state = HostState(rng=seeded(15))
    first = make_pair(Method.QR, seed=15, state=state)
    first.run()
    assert_paired(first, Method.QR)
    assert first.qr is not None
    again = make_pair(Method.QR, seed=16, state=state, qr=first.qr)
    again.run()
    err = assert_failed(again.host, RefusedError)
    assert "already used" in str(err)
    assert_remote(again.guest, ErrorCode.REFUSED, "already used")


def test_qr_of_another_host_refused() -> None:
    other_state = HostState(rng=seeded(17, "other"))
    other = LocalIdentity.generate("Ringo", seeded(17, "ringo"))
    foreign = other_state.issue_qr(other.static_public, 1000, ttl=60, hint="")
    pair = make_pair(Method.QR, seed=17, qr=foreign)
    pair.run()
    err = assert_failed(pair.host, AuthenticationError)
    assert "not issued by this host" in str(err)
    assert_remote(pair.guest, ErrorCode.AUTH_FAILED, "not issued")


def test_qr_carrying_another_hosts_key_refused() -> None:
    state = HostState(rng=seeded(18))
    other = LocalIdentity.generate("Ringo", seeded(18, "ringo"))
    wrong = state.issue_qr(other.static_public, 1000, ttl=60, hint="")
    pair = make_pair(Method.QR, seed=18, state=state, qr=wrong)
    pair.run()
    err = assert_failed(pair.host, AuthenticationError)
    assert "another host" in str(err)
    assert_remote(pair.guest, ErrorCode.AUTH_FAILED, "another host")


# -- a man in the middle ---------------------------------------------------------------------


@dataclasses.dataclass
class Mitm:
    """Mallory: a host toward the guest and a guest toward the real host, with her own key."""

    me: LocalIdentity
    toward_guest: HostPairing
    toward_host: GuestPairing
    state: HostState


def mallory(method: Method, *, pin: str | None = None, qr: Any = None, seed: int = 666) -> Mitm:
    rng = seeded(seed, "mallory")
    me = LocalIdentity.generate("Paul", rng)  # she claims the host's name
    state = HostState(rng=rng)
    if pin is not None:
        state.set_pin(pin)
    toward_guest = HostPairing(PairingConfig(), me, state, wall_now=1000.0, rng=rng)
    toward_guest.start(0.0)
    toward_host = GuestPairing(
        PairingConfig(), me, method=method, pin=pin, qr=qr, wall_now=1000.0, rng=rng
    )
    toward_host.start(0.0)
    return Mitm(me, toward_guest, toward_host, state)


def run_mitm(pair: Pair, m: Mitm, answers: dict[str, Any] | None = None, **kw: Any) -> PairResult:
    answers = answers or {"guest": True, "host": True}
    answers = {"mitm_host": True, "mitm_guest": True, **answers}
    return shuttle_mitm(pair.guest, m.toward_guest, m.toward_host, pair.host, answers=answers, **kw)


def test_mitm_pin_without_the_pin() -> None:
    pair = make_pair(Method.PIN, seed=60)
    assert pair.pin is not None
    m = mallory(Method.PIN, pin="482915" if pair.pin != "482915" else "591826")
    run_mitm(pair, m)
    assert "wrong PIN" in str(assert_failed(pair.guest, AuthenticationError))
    # Mallory's guest side learns the PIN was wrong and says so: she cannot go on either
    assert "wrong PIN" in str(assert_failed(m.toward_host, AuthenticationError))
    assert "wrong PIN" in str(assert_failed(pair.host, RemoteError))
    assert pair.state.pin is None  # the attempt used the PIN up, and the failure is counted
    assert pair.state.locked_for(0.0) == 0.0 and len(pair.state._failures) == 1
    assert m.toward_guest.session is None and m.toward_host.session is None


def test_mitm_relaying_cpace_cannot_replace_the_hosts_noise() -> None:
    """Mallory relays the CPace shares but puts her own key in the Noise message."""
    pair = make_pair(Method.PIN, seed=61)
    offers: list[Offer] = []

    def swap(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, Offer):
            offers.append(msg)
        if isinstance(msg, Accept):
            hs = HandshakeState(
                "Noise_XXpsk0_25519_ChaChaPoly_SHA256",
                True,
                prologue=_th(offers[0].hello, msg.hello),
                s=LocalIdentity.generate("m", seeded(1, "m")).static_private,
                psks=[seeded(2, "guess")(32)],  # she cannot compute CPace's ISK
                rng=seeded(3, "m"),
            )
            return dataclasses.replace(msg, noise=hs.write_message(b"")).encode()
        return data

    pair.run(tamper=swap)
    assert "wrong PIN" in str(assert_failed(pair.guest, AuthenticationError))
    assert_remote(pair.host, ErrorCode.AUTH_FAILED, "wrong PIN")


def test_mitm_pure_relay_learns_nothing() -> None:
    """Relaying every byte unchanged is not a man in the middle: the ends see each other."""
    pair = make_pair(Method.PIN, seed=62)
    seen: list[bytes] = []
    pair.run(tamper=lambda d, data: seen.append(data) or data)
    assert_paired(pair, Method.PIN)
    g = pair.guest.session
    assert g is not None
    for data in seen:
        assert g.send_key not in data and g.recv_key not in data


def test_mitm_qr_without_the_code() -> None:
    pair = make_pair(Method.QR, seed=63)
    fake = dataclasses.replace(pair.qr, secret=seeded(5, "fake")(16))  # she never saw the code
    m = mallory(Method.QR, qr=fake)
    run_mitm(pair, m)
    assert "not issued" in str(assert_failed(m.toward_guest, AuthenticationError))
    assert_remote(pair.guest, ErrorCode.AUTH_FAILED, "not issued")
    assert "not issued" in str(assert_failed(pair.host, AuthenticationError))
    assert pair.guest.session is None


def test_mitm_qr_with_the_code_lacks_the_hosts_key() -> None:
    """Even having seen the code, Mallory cannot read the guest's first message (Noise IK es)."""
    pair = make_pair(Method.QR, seed=64)
    assert pair.qr is not None
    offer = wire.decode(pair.guest.outgoing()[0])
    assert isinstance(offer, Offer) and offer.noise is not None
    mitm = LocalIdentity.generate("Paul", seeded(64, "mallory"))
    hs = HandshakeState(
        QR_NOISE,
        False,
        prologue=_hello_hash(offer.hello),
        s=mitm.static_private,
        psks=[_qr_psk(pair.qr)],
        rng=seeded(64, "m"),
    )
    with pytest.raises(AuthenticationError):
        hs.read_message(offer.noise)
    # and whatever she answers does not open on the guest's side
    forged = Accept(hello=offer.hello, noise=seeded(64, "x")(len(offer.noise))).encode()
    with pytest.raises(PairingError):
        pair.guest.receive(forged, 0.0)
    assert_failed(pair.guest)


def test_mitm_compare_codes_differ_so_users_refuse() -> None:
    pair = make_pair(Method.COMPARE, seed=65)
    m = mallory(Method.COMPARE)
    result = run_mitm(pair, m, answers=USERS_COMPARE)
    (guest_code,) = result.codes("guest")
    (host_code,) = result.codes("host")
    assert guest_code != host_code  # equal with probability 10^-6 per attempt
    assert "not confirmed" in str(assert_failed(pair.guest, RefusedError))
    assert "not confirmed" in str(assert_failed(pair.host, RefusedError))
    assert_remote(m.toward_guest, ErrorCode.REFUSED, "not confirmed")
    assert_remote(m.toward_host, ErrorCode.REFUSED, "not confirmed")


def test_mitm_compare_cannot_change_its_nonce_after_committing() -> None:
    """To steer the guest's code toward the host's, Mallory must change a committed value."""
    pair = make_pair(Method.COMPARE, seed=66)
    m = mallory(Method.COMPARE)

    def steer(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if direction == "mitm_host->guest" and isinstance(msg, Reveal):
            return dataclasses.replace(msg, nonce=bytes(b ^ 1 for b in msg.nonce)).encode()
        return data

    result = run_mitm(pair, m, answers=USERS_COMPARE, tamper=steer)
    assert result.codes("guest") == []  # no code is ever shown on the guest's screen
    err = assert_failed(pair.guest, AuthenticationError)
    assert "commitment" in str(err)
    assert pair.host.session is None


# -- rewritten announcements (downgrade, method confusion) -----------------------------------


def _tamper_hello(cls: type, field: str) -> Any:
    def tamper(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, cls):
            hello = msg.hello
            if field == "caps":
                hello = dataclasses.replace(hello, caps=hello.caps ^ (1 << 12))
            elif field == "caps-drop":
                hello = dataclasses.replace(hello, caps=hello.caps & ~int(Caps.KEYPAD))
            else:
                hello = dataclasses.replace(hello, methods=hello.methods ^ (1 << int(Method.TTP)))
            return dataclasses.replace(msg, hello=hello).encode()
        return data

    return tamper


@pytest.mark.parametrize("field", ["caps", "caps-drop", "methods"])
@pytest.mark.parametrize("cls", [Offer, Accept], ids=["offer", "accept"])
@pytest.mark.parametrize("method", FULL, ids=[m.label for m in FULL])
def test_rewritten_announcement_fails(method: Method, cls: type, field: str) -> None:
    if field == "caps-drop" and method is Method.PIN and cls is Offer:
        field = "caps"  # dropping KEYPAD from a PIN guest is refused by the table: see below
    pair = make_pair(method, seed=70)
    result = pair.run(tamper=_tamper_hello(cls, field))
    assert pair.guest.session is None
    assert_failed(pair.guest)
    if method is Method.QR and cls is Accept:
        # One round trip: the host finished when it sent its Accept.  The guest refuses it and
        # the host's session is never confirmed (SecureLink's first exchange fails).
        assert pair.host.done and "changed on the way" in str(pair.guest.error)
        return
    assert_failed(pair.host)
    assert pair.host.session is None
    assert result.errors


def test_downgraded_guest_caps_refused_by_the_table() -> None:
    pair = make_pair(Method.PIN, seed=71)
    pair.run(tamper=_tamper_hello(Offer, "caps-drop"))
    assert "cannot type a PIN" in str(assert_failed(pair.host, UnsupportedError))
    assert_remote(pair.guest, ErrorCode.UNSUPPORTED, "cannot type")


def test_host_answering_another_method_refused() -> None:
    pair = make_pair(Method.PIN, seed=72)

    def confuse(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, Accept):
            return dataclasses.replace(
                msg, hello=dataclasses.replace(msg.hello, method=Method.CLEAR)
            ).encode()
        return data

    pair.run(tamper=confuse)
    assert "'clear' but 'pin'" in str(assert_failed(pair.guest, ProtocolError))
    assert_remote(pair.host, ErrorCode.PROTOCOL, "'clear'")


# -- tampered, replayed, dropped, duplicated messages ----------------------------------------


def _outcome_is_consistent(pair: Pair) -> None:
    """No pairing ends with the two sides disagreeing."""
    g, h = pair.guest, pair.host
    if g.done and h.done:
        assert g.session is not None and h.session is not None
        assert g.session.fingerprint == h.session.fingerprint
        assert g.session.send_key == h.session.recv_key
    for machine in (g, h):
        if not machine.done:
            assert_failed(machine)


def _positions(n: int, seed: int) -> list[int]:
    """About 30 byte positions spread over a message, its first and last bytes included."""
    rng = seeded(seed, "positions")
    extra = [int.from_bytes(rng(2), "big") % n for _ in range(8)]
    return sorted({0, 1, 2, n - 2, n - 1, *range(0, n, max(1, n // 20)), *extra})


CASES = [(m, k) for m in ALL for k in range(len(FLIGHTS[m]))]
case_ids = [f"{m.label}-{k}" for m, k in CASES]
REPLAY_CASES = [(m, k) for m, k in CASES if k >= 2]
replay_ids = [f"{m.label}-{k}" for m, k in REPLAY_CASES]


@pytest.mark.parametrize(("method", "index"), CASES, ids=case_ids)
def test_bit_flips_in_every_message(method: Method, index: int) -> None:
    size = len(honest_transcript(method, seed=80)[index][1])
    for pos in _positions(size, index):
        for bit in (pos % 8,):
            pair = pair_for(method, seed=80)
            count = [0]

            def flip(
                direction: str,
                data: bytes,
                pos: int = pos,
                bit: int = bit,
                count: list[int] = count,
            ) -> bytes:
                count[0] += 1
                if count[0] - 1 != index:
                    return data
                raw = bytearray(data)
                raw[pos] ^= 1 << bit
                return bytes(raw)

            pair.run(answers=USERS_COMPARE if method is Method.COMPARE else YES, tamper=flip)
            _outcome_is_consistent(pair)
            receiver, sender = _ends(pair, method, index)
            if method is Method.RESUME and index < 2 and pair.guest.done:
                # A flipped INIT or FAIL can only make the host answer FAIL: the guest then
                # falls back to Noise KK, which authenticates both sides again.
                assert pair.guest.session is not None
                assert pair.guest.session.method is Method.KK
                continue
            assert receiver.failed, (method, index, pos, bit)
            if not sender.done:
                assert sender.failed


def _ends(pair: Pair, method: Method, index: int) -> tuple[Machine, Machine]:
    """(receiver, sender) of the ``index``-th message of an honest run (compare's identity
    handshake is host-first, so the directions do not simply alternate)."""
    target = honest_transcript(method, seed=80)[index][0]
    return (pair.host, pair.guest) if target == "host" else (pair.guest, pair.host)


def _nth(index: int, action: str) -> Any:
    count = [0]
    first: dict[str, bytes] = {}

    def tamper(direction: str, data: bytes) -> bytes | list[bytes] | None:
        count[0] += 1
        first.setdefault(direction, data)
        if count[0] - 1 != index:
            return data
        if action == "drop":
            return None
        if action == "duplicate":
            return [data, data]
        return [data, first[direction]]  # replay: this direction's first message again

    return tamper


@pytest.mark.parametrize(("method", "index"), CASES, ids=case_ids)
def test_duplicated_message(method: Method, index: int) -> None:
    pair = pair_for(method, seed=81)
    pair.run(tamper=_nth(index, "duplicate"))
    receiver, sender = _ends(pair, method, index)
    if receiver.done:
        # The receiver finished with the first copy (the driver would have stopped reading);
        # the second finds it done and changes nothing.
        assert_paired(pair, method)
        with pytest.raises(ProtocolError, match="already complete"):
            receiver.receive(honest_transcript(method, seed=81)[index][1], 0.0)
        assert_paired(pair, method)
        return
    # A second copy of a Noise message reads as the next Noise message and fails to decrypt.
    err = assert_failed(receiver)
    assert isinstance(err, ProtocolError | AuthenticationError), err
    if not sender.done:
        assert_failed(sender, RemoteError)


@pytest.mark.parametrize(("method", "index"), REPLAY_CASES, ids=replay_ids)
def test_replayed_message(method: Method, index: int) -> None:
    pair = pair_for(method, seed=82)
    pair.run(tamper=_nth(index, "replay"))
    receiver, sender = _ends(pair, method, index)
    if receiver.done:
        # a replay after the last message finds the receiver done; nothing is accepted twice
        assert_paired(pair, method)
        return
    assert_failed(receiver, ProtocolError)
    if not sender.done:
        assert_failed(sender, RemoteError)


@pytest.mark.parametrize(("method", "index"), CASES, ids=case_ids)
def test_dropped_message_times_out(method: Method, index: int) -> None:
    pair = pair_for(method, seed=83)
    result = pair.run(tamper=_nth(index, "drop"))
    transcript = honest_transcript(method, seed=83)
    if index + 1 < len(transcript) and transcript[index + 1][0] == transcript[index][0]:
        # The same side sends again before hearing back (compare's host opens the identity
        # handshake after its Reveal): the next message arrives out of turn and is refused.
        assert isinstance(result.errors.get(transcript[index][0]), ProtocolError)
        return
    assert result.errors == {}
    waiting = [m for m in (pair.guest, pair.host) if not m.done]
    assert waiting, "someone must be waiting for the dropped message"
    for machine in waiting:
        deadline = machine.next_deadline()
        assert deadline is not None, "a waiting machine always has a deadline"
        machine.on_timeout(deadline - 0.001)
        assert not machine.failed
        with pytest.raises(PairingTimeout):
            machine.on_timeout(deadline)
        err = assert_failed(machine, PairingTimeout)
        assert isinstance(err, TimeoutError)
        assert machine.outgoing() == []  # a timeout sends no Abort: the link is presumed gone


@pytest.mark.parametrize(("method", "index"), CASES, ids=case_ids)
@pytest.mark.parametrize("side", ["guest", "host"])
def test_abort_from_the_peer(method: Method, index: int, side: str) -> None:
    pair = pair_for(method, seed=84)
    stepper = Stepper(pair.guest, pair.host)
    for _ in range(index):
        stepper.step()
    machine = pair.guest if side == "guest" else pair.host
    if machine.done:
        return
    machine.outgoing()  # what it sent before (the Abort comes in reply)
    abort = wire.Abort(code=ErrorCode.REFUSED, reason="the owner said no").encode()
    with pytest.raises(RemoteError) as info:
        machine.receive(abort, 0.0)
    assert str(info.value) == "the peer stopped: the owner said no"
    assert info.value.code == ErrorCode.REFUSED
    assert isinstance(info.value.local, RefusedError)  # type: ignore[attr-defined]
    assert_failed(machine, RemoteError)
    assert machine.outgoing() == []  # no Abort in answer to an Abort


# -- resume and kk ---------------------------------------------------------------------------


def test_resume_consumes_the_prekey_and_replaces_it() -> None:
    known = known_pair(seed=90)
    before_guest = known.guest_record
    before_host = known.host_records[known.guest_me.device_id]
    assert len(before_guest.their_prekeys) == PairingConfig().prekeys
    nominated = before_guest.their_prekeys[0]
    assert nominated in {p.digest for p in before_host.our_prekeys}

    pair = known.resume(seed=91)
    result = pair.run()
    assert_paired(pair, Method.RESUME)
    assert result.types() == FLIGHTS[Method.RESUME]
    g, h = pair.guest.session, pair.host.session
    assert g is not None and h is not None
    assert pair.guest.stale_prekey is None
    assert g.consumed_theirs == nominated and h.consumed_ours == nominated
    assert len(h.new_our_prekeys) == 1
    assert g.new_their_prekeys == (h.new_our_prekeys[0].digest,)
    assert not g.replace_prekeys and not h.replace_prekeys

    known.store(pair)
    after_guest = known.guest_record
    after_host = known.host_records[known.guest_me.device_id]
    assert nominated not in after_guest.their_prekeys
    assert after_guest.their_prekeys == (
        *before_guest.their_prekeys[1:],
        h.new_our_prekeys[0].digest,
    )
    assert nominated not in {p.digest for p in after_host.our_prekeys}
    assert [p.digest for p in after_host.our_prekeys] == [
        *(p.digest for p in before_host.our_prekeys if p.digest != nominated),
        h.new_our_prekeys[0].digest,
    ]
    # the peers are still who they were
    assert after_guest.device_id == known.host_me.device_id and after_guest.authenticated

    # and the next resume uses the next prekey
    nxt = known.resume(seed=92)
    nxt.run()
    assert_paired(nxt, Method.RESUME)
    assert nxt.guest.session is not None
    assert nxt.guest.session.consumed_theirs == before_guest.their_prekeys[1]


def test_resume_with_a_stale_digest_falls_back_to_kk() -> None:
    known = known_pair(seed=93)
    stale = b"\x5a" * 16
    peer = dataclasses.replace(
        known.guest_record, their_prekeys=(stale, *known.guest_record.their_prekeys)
    )
    pair = known.resume(seed=94, peer=peer)
    result = pair.run()
    assert result.types() == ["ResumeMessage", "ResumeMessage", "Offer", "Accept"]
    fail = wire.decode(result.messages[1][1])
    assert isinstance(fail, ResumeMessage) and fail.reason == "ephemeral key mismatch"
    assert_paired(pair, Method.KK)
    assert pair.guest.stale_prekey == stale
    g = pair.guest.session
    assert g is not None and g.replace_prekeys  # KK renews every prekey
    assert g.updated_peer(peer).their_prekeys == g.new_their_prekeys


def test_resume_with_no_prekeys_left_goes_to_kk() -> None:
    known = known_pair(seed=95)
    peer = dataclasses.replace(known.guest_record, their_prekeys=())
    pair = known.resume(seed=96, peer=peer)
    result = pair.run()
    assert result.types() == FLIGHTS[Method.KK]
    assert_paired(pair, Method.KK)
    assert pair.guest.stale_prekey is None


def _kk(seed: int, **kwargs: Any) -> tuple[Known, Pair]:
    known = known_pair(seed=seed)
    peer = dataclasses.replace(known.guest_record, their_prekeys=())
    return known, make_pair(Method.KK, seed=seed + 1, guest_me=kwargs.pop("guest_me",
                            known.guest_me), host_me=known.host_me, state=known.state,
                            peer=peer, **kwargs)


def test_kk_names_the_guest_nowhere_in_the_clear() -> None:
    """kk runs Noise IK (docs/protocol.md §8): its Offer has no ``guest_id``, and neither the
    guest's id nor its static key is in any byte it sends (atk19p, finding 3)."""
    known, pair = _kk(120)
    result = pair.run()
    assert_paired(pair, Method.KK)
    offer = wire.decode(result.messages[0][1])
    assert isinstance(offer, Offer) and offer.guest_id is None
    for _, data in result.messages:
        assert known.guest_me.device_id not in data
        assert known.guest_me.static_public not in data


def test_kk_from_a_static_key_the_host_does_not_know_is_refused_unanswered() -> None:
    """A stranger who holds the host's static key runs kk with its own: the host reads Noise
    IK's message 1, finds no peer by the key's id, and refuses (not found) before answering."""
    stranger = LocalIdentity.generate("Mallory", rng=seeded(122, "mallory"))
    _, pair = _kk(121, guest_me=stranger)
    result = pair.run()
    assert isinstance(result.host_error, NotFoundError), result.errors
    assert result.types() == ["Offer", "Abort"]  # no Accept
    assert pair.host.session is None and pair.guest.session is None and result.asked == []


def test_a_kk_offer_from_another_link_does_not_authenticate() -> None:
    """A kk Offer recorded on one link (its context: that link's cloud step) and put on
    another: Noise IK's message 1 does not open, and nothing is answered."""
    _, recorded = _kk(123, guest_context=b"1" * 32, host_context=b"1" * 32)
    offer = recorded.run().messages[0][1]
    _, pair = _kk(123, guest_context=b"2" * 32, host_context=b"2" * 32)

    def replayed(direction: str, data: bytes) -> bytes:
        return offer if isinstance(wire.decode(data), Offer) else data

    result = pair.run(tamper=replayed)
    assert isinstance(result.host_error, AuthenticationError), result.errors
    assert result.types() == ["Offer", "Abort"]  # no Accept
    assert pair.host.session is None


def test_a_kk_offer_naming_its_guest_is_a_decode_error() -> None:
    """``guest_id`` is ttp's field only: a kk Offer carrying one is refused unread."""
    _, pair = _kk(124)

    def naming(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, Offer):
            return data
        return dataclasses.replace(msg, guest_id=bytes(range(16))).encode()

    result = pair.run(tamper=naming)
    assert isinstance(result.host_error, DecodeError) and "(guest_id)" in str(result.host_error)
    assert pair.host.session is None


def test_kks_announcements_say_kk_and_nothing_of_either_device() -> None:
    """A kk Offer and Accept go in the clear before Noise IK's encryption: each announcement
    carries kk's bit as its methods and no capability, whatever the device allows and can do,
    and on an encrypted link too (atk22c, finding 2; docs/protocol.md §8)."""
    _, pair = _kk(125, link_encrypted=True)
    result = pair.run()
    assert_paired(pair, Method.KK)
    offer, accept = (wire.decode(data) for _, data in result.messages)
    assert isinstance(offer, Offer) and isinstance(accept, Accept)
    for hello in (offer.hello, accept.hello):
        assert (hello.caps, hello.methods, hello.method, hello.name) == (
            KK_CAPS, KK_METHODS, Method.KK, ""
        )
    assert (KK_CAPS, KK_METHODS) == (0, 1 << 6)
    # the devices' own settings, which the announcements would have said
    assert pair.guest.config.methods == pair.host.config.methods != {Method.KK}
    assert pair.guest.config.caps == pair.host.config.caps == ALL_CAPS


#: what a device's own settings would put in a kk announcement
_SAYS = {
    "name": {"name": "George"},
    "caps": {"caps": int(ALL_CAPS)},
    "link": {"caps": int(Caps.ENCRYPTED_LINK)},
    "methods": {"methods": methods_mask({Method.PIN, Method.RESUME})},
    "resume's bit": {"methods": KK_METHODS | methods_mask({Method.RESUME})},
}


@pytest.mark.parametrize("says", list(_SAYS))
@pytest.mark.parametrize("cls", [Offer, Accept], ids=["offer", "accept"])
def test_a_kk_announcement_saying_more_is_refused_unread(cls: type, says: str) -> None:
    """A kk announcement with a name, a capability or a method bit but kk's is a decode error
    at the side that reads it, before the table or the Noise message is read: the host answers
    no such Offer, the guest finishes on no such Accept."""
    _, pair = _kk(126)

    def saying(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, cls):
            return data
        hello = dataclasses.replace(msg.hello, **_SAYS[says])
        return dataclasses.replace(msg, hello=hello).encode()

    result = pair.run(tamper=saying)
    reader = pair.host if cls is Offer else pair.guest
    err = assert_failed(reader, DecodeError)
    assert "kk announcement must carry no name, no capability and kk's method only" in str(err)
    assert pair.guest.session is None
    if cls is Offer:
        assert result.types() == ["Offer", "Abort"]  # no Accept
        assert pair.host.session is None


def test_kk_is_allowed_by_a_side_allowing_resume_or_kk() -> None:
    """kk is resume's fallback on the same stored keys: a kk announcement's kk bit meets a host
    that allows resume (or kk); a host allowing neither refuses it (docs/protocol.md §8)."""
    def kk_with(host_methods: set[Method]) -> Method:
        return choose(KK_CAPS, frozenset({Method.KK}), ALL_CAPS, frozenset(host_methods),
                      proposed=Method.KK, knows_peer=True)

    assert kk_with({Method.PIN, Method.RESUME}) is Method.KK
    assert kk_with({Method.KK}) is Method.KK
    with pytest.raises(UnsupportedError):
        kk_with({Method.PIN, Method.QR})
    with pytest.raises(UnsupportedError):  # the same from the guest's side of the table
        choose(ALL_CAPS, frozenset({Method.PIN}), KK_CAPS, frozenset({Method.KK}),
               proposed=Method.KK, knows_peer=True)


#: a one-byte name and the longest, 64 characters of 4 bytes each in UTF-8
_NAMES = ("G", "\U0001f4fa" * 64)


def _kk_named(seed: int, guest_name: str, host_name: str, prekeys: int) -> tuple[Known, Pair]:
    """A kk return of two devices renamed since they paired, each giving ``prekeys``."""
    known = known_pair(seed=seed)
    peer = dataclasses.replace(known.guest_record, their_prekeys=())
    config = PairingConfig(prekeys=prekeys)
    return known, make_pair(
        Method.KK, seed=seed + 1, state=known.state, peer=peer,
        guest_me=dataclasses.replace(known.guest_me, name=guest_name),
        host_me=dataclasses.replace(known.host_me, name=host_name),
        guest_config=config, host_config=config,
    )


def test_kks_offer_and_accept_are_as_long_whatever_the_names_and_prekeys() -> None:
    """atk23, finding 1: kk's identity payloads carry no name and are padded (docs/protocol.md
    §8), so a listener reads neither side's name length nor prekey count from the lengths of
    the Offer and Accept: names of 1 and 256 bytes, 1 and 16 prekeys, on either side, give one
    Offer length and one Accept length.  Each side still names the other as its stored record
    does, and takes the prekeys the other sent."""
    lengths = set()
    for guest_name, host_name, prekeys in itertools.product(_NAMES, _NAMES, (1, 16)):
        known, pair = _kk_named(130, guest_name, host_name, prekeys)
        result = pair.run()
        assert result.errors == {}
        guest, host = pair.guest.session, pair.host.session
        assert guest is not None and host is not None and guest.method is Method.KK
        assert guest.send_key == host.recv_key and guest.recv_key == host.send_key
        # the names the devices had when they paired: the stored records'
        assert pair.guest.session.peer.name == known.guest_record.name
        assert pair.host.session.peer.name == known.host_records[known.guest_me.device_id].name
        assert len(pair.guest.session.new_their_prekeys) == prekeys
        assert len(pair.host.session.new_their_prekeys) == prekeys
        lengths.add(tuple(len(data) for _, data in result.messages))
        assert max(len(data) for _, data in result.messages) <= 512  # one GATT write each
    assert len(lengths) == 1, f"kk's (Offer, Accept) lengths: {sorted(lengths)}"


def test_every_kk_payload_pads_to_its_length() -> None:
    """Every prekey count, the guest's payload and the host's: exactly its length, its pad
    zeros, no name; and read back so."""
    me = identities(131)[0]
    for count in range(MAX_PREKEYS + 1):
        ident = _identity(me, tuple(_new_prekeys(count, seeded(131))))
        for hosts, length in ((False, KK_OFFER_PAYLOAD_LEN), (True, KK_ACCEPT_PAYLOAD_LEN)):
            data = _kk_payload_bytes(ident, bytes(32) if hosts else None)
            assert len(data) == length
            payload = _read_kk_payload(data, hosts=hosts)
            assert payload.identity == dataclasses.replace(ident, name="")
            assert payload.pad is not None and not any(payload.pad)


def _padded_to(body: _Payload, length: int) -> bytes:
    """``body`` with the zero pad that makes it ``length`` bytes (as the spec pads)."""
    for n in range(length):
        data = wire.encode_struct(dataclasses.replace(body, pad=bytes(n)))
        if len(data) == length:
            return data
    raise AssertionError(f"no pad makes it {length} bytes")


def _bad_kk_payload(how: str, ident: Identity, hello_hash: bytes | None) -> bytes:
    """A kk identity payload not as docs/protocol.md §8 says, ``how``."""
    length = KK_OFFER_PAYLOAD_LEN if hello_hash is None else KK_ACCEPT_PAYLOAD_LEN
    good = _kk_payload_bytes(ident, hello_hash)
    nameless = _Payload(dataclasses.replace(ident, name=""), hello_hash, pad=b"")
    return {
        "named": lambda: _padded_to(dataclasses.replace(nameless, identity=ident), length),
        "padded with a one": lambda: good[:-1] + b"\x01",  # the pad is the last field
        "unpadded": lambda: wire.encode_struct(_Payload(ident, hello_hash)),
        "unpadded, no name": lambda: wire.encode_struct(dataclasses.replace(nameless, pad=None)),
        "a byte long": lambda: _padded_to(nameless, length + 1),
        "a byte short": lambda: _padded_to(nameless, length - 1),
        "hashed the other way": lambda: _padded_to(
            dataclasses.replace(nameless, hello_hash=None if hello_hash else bytes(32)), length
        ),
    }[how]()


_BAD_PAYLOADS = [
    "named", "padded with a one", "unpadded", "unpadded, no name", "a byte long", "a byte short",
    "hashed the other way",
]


@pytest.mark.parametrize("how", _BAD_PAYLOADS)
def test_a_kk_offer_whose_payload_is_not_padded_as_said_is_refused(how: str) -> None:
    """The guest's Noise IK message 1 made by the guest's own keys, its payload not as §8 says
    (a name in it, a pad not zeros, no pad, a length off by one, a hello_hash): the host's
    decode error, before it answers; nothing paired."""
    known, pair = _kk(132)
    host_static = known.host_me.static_public

    def forged(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, Offer):
            return data
        hs = HandshakeState(KK_NOISE, True, prologue=_hello_hash(msg.hello, b""),
                            s=known.guest_me.noise_static(), rs=host_static,
                            rng=seeded(132, "forger"))
        ident = _identity(known.guest_me, _new_prekeys(8, seeded(132, "prekeys")))
        return dataclasses.replace(msg, noise=hs.write_message(
            _bad_kk_payload(how, ident, None))).encode()

    result = pair.run(tamper=forged)
    err = assert_failed(pair.host, DecodeError)
    assert "kk identity payload" in str(err)
    assert result.types() == ["Offer", "Abort"]  # no Accept
    assert pair.guest.session is None


@pytest.mark.parametrize("how", _BAD_PAYLOADS)
def test_a_kk_accept_whose_payload_is_not_padded_as_said_is_refused(how: str) -> None:
    """The host's Noise IK message 2 made by the host's own keys (read from the guest's Offer),
    its payload not as §8 says: the guest's decode error; it ends with no session."""
    known, pair = _kk(133)
    offers: list[Offer] = []

    def forged(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, Offer):
            offers.append(msg)
        if not isinstance(msg, Accept):
            return data
        offer, = offers
        assert offer.noise is not None
        hs = HandshakeState(KK_NOISE, False, prologue=_hello_hash(offer.hello, b""),
                            s=known.host_me.noise_static(), rng=seeded(133, "forger"))
        hs.read_message(offer.noise)
        ident = _identity(known.host_me, _new_prekeys(8, seeded(133, "prekeys")))
        payload = _bad_kk_payload(how, ident, _hello_hash(msg.hello, b""))
        return dataclasses.replace(msg, noise=hs.write_message(payload)).encode()

    pair.run(tamper=forged)
    err = assert_failed(pair.guest, DecodeError)
    assert "kk identity payload" in str(err)


def test_only_a_kk_payload_is_padded() -> None:
    """Every other method's identity payload carries no pad (field 4): one that does is a
    decode error, even of zeros."""
    ident = _identity(identities(134)[0], ())
    assert _read_payload(wire.encode_struct(_Payload(ident))).identity == ident
    with pytest.raises(DecodeError, match="only a kk identity payload is padded"):
        _read_payload(wire.encode_struct(_Payload(ident, pad=bytes(8))))


def test_resume_twice_with_the_same_digest() -> None:
    known = known_pair(seed=97)
    old_guest_record = known.guest_record
    first = known.resume(seed=98)
    first.run()
    assert_paired(first, Method.RESUME)
    known.store(first)
    # the guest did not store the result (it crashed, or an attacker replays its old state)
    again = known.resume(seed=99, peer=old_guest_record)
    result = again.run()
    assert result.types()[:2] == ["ResumeMessage", "ResumeMessage"]
    assert_paired(again, Method.KK)
    assert again.guest.stale_prekey == old_guest_record.their_prekeys[0]


def test_resume_replayed_init_cannot_resume() -> None:
    """A recorded INIT replayed into the host finds its prekey consumed: FAIL, no session."""
    known = known_pair(seed=100)
    pair = known.resume(seed=101)
    init = pair.guest.outgoing()[0]
    first_host = HostPairing(
        PairingConfig(), known.host_me, known.state, rng=seeded(101, "h")
    )
    first_host.start(0.0)
    first_host.receive(init, 0.0)
    okay = wire.decode(first_host.outgoing()[0])
    assert isinstance(okay, ResumeMessage) and okay.header.kind is ResumeKind.OKAY
    replay_host = HostPairing(
        PairingConfig(), known.host_me, known.state, rng=seeded(101, "h2")
    )
    replay_host.start(0.0)
    replay_host.receive(init, 0.0)
    fail = wire.decode(replay_host.outgoing()[0])
    assert isinstance(fail, ResumeMessage) and fail.header.kind is ResumeKind.FAIL
    assert replay_host.session is None and not replay_host.done


def test_resume_replay_into_a_host_that_lost_its_memory_gets_fresh_keys() -> None:
    """Even a host whose consumption did not persist (a worst case) answers a replayed INIT
    with a fresh key of its own: new session keys, and no (key, nonce) sealed twice (rule 4)."""
    known = known_pair(seed=105)
    init = known.resume(seed=106).guest.outgoing()[0]
    sessions = []
    sealed = []
    for i in range(3):
        state = HostState(rng=seeded(107, f"s{i}"), known_peer=known.host_records.get,
                          peer_by_prekey=known.state.peer_by_prekey)
        host = HostPairing(PairingConfig(), known.host_me, state,
                           rng=seeded(107, f"h{i}"))
        host.start(0.0)
        host.receive(init, 0.0)
        okay = wire.decode(host.outgoing()[0])
        assert isinstance(okay, ResumeMessage) and okay.header.kind is ResumeKind.OKAY
        assert host.session is not None
        sessions.append(host.session.send_key)
        sealed.append(okay.sealed)
    assert len(set(sessions)) == 3 and len(set(sealed)) == 3


def test_kk_with_an_unknown_guest() -> None:
    known = known_pair(seed=102)
    known.host_records.clear()
    pair = known.resume(seed=103, method=Method.KK)
    pair.run()
    assert "does not know" in str(assert_failed(pair.host, NotFoundError))
    assert_remote(pair.guest, ErrorCode.NOT_FOUND, "does not know")


def test_resume_with_an_unknown_guest_fails_then_kk_refused() -> None:
    known = known_pair(seed=104)
    known.host_records.clear()
    pair = known.resume(seed=105)
    result = pair.run()
    assert result.types() == ["ResumeMessage", "ResumeMessage", "Offer", "Abort"]
    assert_failed(pair.host, NotFoundError)
    assert_remote(pair.guest, ErrorCode.NOT_FOUND, "does not know")


def test_a_resume_at_another_host_gets_fail_then_kk_proves_who_is_who() -> None:
    """The INIT names no device (docs/protocol.md §8): at a host that did not give the
    nominated digest (here one that also knows the guest, from a pairing of its own) it finds
    no prekey and gets FAIL, where it was refused as "meant for another device" before; the
    guest's kk then fails, its Noise message being for the host it meant.  Nothing is
    consumed or forgotten on either side."""
    paul = known_pair(seed=108)  # the guest, and its record of Paul
    ringo = make_pair(Method.PIN, seed=110, guest_me=paul.guest_me)  # it paired with Ringo too
    ringo.run()
    assert ringo.host.session is not None
    records = {paul.guest_me.device_id: ringo.host.session.updated_peer(None)}
    before = dict(records)
    state = HostState(rng=seeded(110, "state"), known_peer=records.get,
                      peer_by_prekey=lambda d: prekey_holder(records.values(), d))
    pair = make_pair(Method.RESUME, seed=111, guest_me=paul.guest_me, host_me=ringo.host_me,
                     state=state, peer=paul.guest_record)
    result = pair.run()
    assert result.types()[:3] == ["ResumeMessage", "ResumeMessage", "Offer"]
    fail = wire.decode(result.messages[1][1])
    assert isinstance(fail, ResumeMessage) and fail.header.kind is ResumeKind.FAIL
    assert pair.guest.session is None and pair.host.session is None
    assert_failed(pair.host)
    assert records == before  # Ringo consumed nothing
    assert pair.guest.stale_prekey is not None  # the guest's run names it; it is forgotten
    # only once a kk fallback is confirmed (rule 4): this one was not, so nothing is stored


def test_kk_with_the_wrong_host() -> None:
    """A device answering for a known peer without its static key fails the KK handshake."""
    known = known_pair(seed=106)
    impostor = LocalIdentity.generate("Paul", seeded(106, "impostor"))
    records = {known.guest_me.device_id: known.host_records[known.guest_me.device_id]}
    state = HostState(rng=seeded(106), known_peer=records.get,
                      peer_by_prekey=lambda d: prekey_holder(records.values(), d))
    pair = make_pair(
        Method.KK,
        seed=107,
        guest_me=known.guest_me,
        host_me=impostor,
        state=state,
        peer=known.guest_record,
    )
    pair.run()
    assert_failed(pair.host, AuthenticationError)
    assert pair.guest.session is None
    assert_failed(pair.guest)


def test_resume_needs_a_known_peer() -> None:
    g = LocalIdentity.generate("g")
    for method in (Method.RESUME, Method.KK):
        with pytest.raises(ConfigError, match="known peer"):
            GuestPairing(PairingConfig(), g, method=method)


# -- clear -----------------------------------------------------------------------------------


def test_clear_refused_over_an_unencrypted_link_guest_side() -> None:
    g = LocalIdentity.generate("g")
    with pytest.raises(InsecureLinkError, match="--allow-insecure"):
        GuestPairing(PairingConfig(), g, method=Method.CLEAR, link_encrypted=False)


def test_clear_refused_over_an_unencrypted_link_host_side() -> None:
    """The guest's link is encrypted (it says so); the host's is not: the host refuses."""
    pair = make_pair(Method.CLEAR, seed=110, start=False)
    host = HostPairing(
        PairingConfig(),
        pair.host_me,
        pair.state,
        link_encrypted=False,
        rng=seeded(110, "h"),
    )
    host.start(0.0)
    pair.guest.start(0.0)
    shuttle(pair.guest, host)
    err = assert_failed(host, InsecureLinkError)
    assert "--allow-insecure" in str(err)
    assert_remote(pair.guest, ErrorCode.INSECURE, "--allow-insecure")


def test_clear_over_an_unencrypted_link_when_forced() -> None:
    forced = PairingConfig(allow_insecure=True)
    pair = make_pair(
        Method.CLEAR, seed=111, link_encrypted=False, guest_config=forced, host_config=forced
    )
    result = pair.run()
    g, h = pair.guest.session, pair.host.session
    assert g is not None and h is not None, result.errors
    assert g.fingerprint == h.fingerprint and g.send_key == h.recv_key
    assert g.peer.authenticated is False and h.peer.authenticated is False
    assert g.updated_peer(None).authenticated is False
    assert h.updated_peer(None).authenticated is False
    warnings = [e for s, e in result.questions if s == "host" and isinstance(e, InsecureWarning)]
    assert len(warnings) == 1 and "not encrypted" in warnings[0].text


@pytest.mark.parametrize("allow_insecure", [False, True])
@pytest.mark.parametrize("mitm", [False, True])
def test_clear_is_authenticated_only_over_a_mitm_protected_link(
    allow_insecure: bool, mitm: bool
) -> None:
    """An LE SC link paired by Just Works is encrypted but vouches for no one (rule 5)."""
    config = PairingConfig(allow_insecure=allow_insecure)
    pair = make_pair(
        Method.CLEAR, seed=112, guest_config=config, host_config=config, link_mitm=mitm
    )
    pair.run()
    assert_paired(pair, Method.CLEAR)
    assert pair.guest.session is not None and pair.host.session is not None
    assert pair.guest.session.peer.authenticated is mitm
    assert pair.host.session.peer.authenticated is mitm


def test_clear_key_swapped_on_the_way_fails_the_identity_handshake() -> None:
    """Another key in the Accept (or another host's Noise message) cannot be used: the identity
    handshake is keyed by the key the host chose and proves both static keys."""
    pair = make_pair(Method.CLEAR, seed=113)
    theirs = wire.decode(honest_transcript(Method.CLEAR, seed=114)[1][1])
    assert isinstance(theirs, Accept)

    def swap(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, Accept):
            return dataclasses.replace(msg, key=theirs.key).encode()
        return data

    pair.run(tamper=swap)
    assert_failed(pair.guest, AuthenticationError)
    assert pair.guest.session is None and pair.host.session is None


# -- compare refused -------------------------------------------------------------------------


@pytest.mark.parametrize("refuser", ["guest", "host"])
def test_compare_refused_by_a_user(refuser: str) -> None:
    pair = make_pair(Method.COMPARE, seed=120)
    answers = {"guest": True, "host": True, refuser: False}
    result = pair.run(answers=answers)
    me = pair.guest if refuser == "guest" else pair.host
    peer = pair.host if refuser == "guest" else pair.guest
    assert "not confirmed" in str(assert_failed(me, RefusedError))
    assert_remote(peer, ErrorCode.REFUSED, "not confirmed")
    direction = "g2h" if refuser == "guest" else "h2g"
    assert "Abort" in result.types(direction)


def _compare_to_the_question() -> tuple[Pair, bytes]:
    """A compare pair stepped until both people are asked; (the pair, the host's Reveal)."""
    pair = make_pair(Method.COMPARE, seed=140)
    stepper = Stepper(pair.guest, pair.host, answer=False)
    for _ in range(4):  # Offer, Accept, Reveal(N_G), Reveal(N_H + XX message 1)
        assert stepper.step()
    assert pair.guest.state == pair.host.state == "ask-user"
    reveal = wire.decode(stepper.delivered[-1][1])
    assert isinstance(reveal, Reveal) and reveal.noise is not None and len(reveal.noise) == 48
    return pair, stepper.delivered[-1][1]


def test_compare_host_sends_noise_message_1_with_its_reveal_and_nothing_more() -> None:
    pair, _ = _compare_to_the_question()
    # Nothing else left either side while the people look at the code: no identity moved.
    assert pair.guest.outgoing() == [] and pair.host.outgoing() == []
    assert pair.guest.session is None and pair.host.session is None


def test_compare_message_2_while_the_host_asks_is_refused_by_the_machine() -> None:
    """The driver holds a message that arrives during a question; fed to the machine anyway it
    is a protocol error, never read as the guest's identity."""
    pair, _ = _compare_to_the_question()
    pair.guest.answer(ConfirmCode(code="000000", peer_name="Paul"), True, 0.0)
    (message_2,) = pair.guest.outgoing()
    assert isinstance(wire.decode(message_2), NoiseMessage)
    with pytest.raises(ProtocolError, match="not expected"):
        pair.host.receive(message_2, 0.0)
    assert_failed(pair.host, ProtocolError)


def test_compare_message_2_held_until_the_host_confirms() -> None:
    pair, _ = _compare_to_the_question()
    question = ConfirmCode(code="000000", peer_name="x")  # (the Stepper took the events)
    pair.guest.answer(question, True, 0.0)
    (message_2,) = pair.guest.outgoing()
    # the guest now waits for the host's person as long as a person may take
    assert pair.guest.next_deadline() == 120.0
    pair.host.answer(question, True, 0.0)
    assert pair.host.outgoing() == []  # no message 3 before message 2 is read
    pair.host.receive(message_2, 0.0)
    (message_3,) = pair.host.outgoing()
    pair.guest.receive(message_3, 0.0)
    assert_paired(pair, Method.COMPARE)


@pytest.mark.parametrize("who", ["guest", "host"])
def test_compare_reveal_with_the_wrong_fields_is_a_decode_error(who: str) -> None:
    """The host's Reveal must carry XX message 1 (an older host's does not), the guest's must
    not: both are refused before anything is shown."""
    pair = make_pair(Method.COMPARE, seed=141)
    stepper = Stepper(pair.guest, pair.host, answer=False)
    for _ in range(2):  # Offer, Accept
        stepper.step()
    target, guest_reveal = stepper.queue.pop(0)  # the guest's Reveal, not yet delivered
    assert target == "host"
    if who == "host":
        with pytest.raises(DecodeError, match="Noise"):
            pair.host.receive(rewrite(guest_reveal, noise=bytes(48)), 0.0)
        assert_failed(pair.host, DecodeError)
        return
    pair.host.receive(guest_reveal, 0.0)
    (host_reveal,) = pair.host.outgoing()
    with pytest.raises(DecodeError, match="Noise"):
        pair.guest.receive(rewrite(host_reveal, noise=None), 0.0)
    assert_failed(pair.guest, DecodeError)
    assert pair.guest.events() == []  # no code was shown


@pytest.mark.parametrize("position", [0, 31, 32, 47])
def test_compare_a_flipped_message_1_stops_the_guest_before_it_asks(position: int) -> None:
    pair = make_pair(Method.COMPARE, seed=142)
    stepper = Stepper(pair.guest, pair.host, answer=False)
    for _ in range(3):  # Offer, Accept, Reveal(N_G)
        stepper.step()
    target, host_reveal = stepper.queue.pop(0)  # the host's Reveal, not yet delivered
    assert target == "guest"
    noise = bytearray(wire.decode(host_reveal).noise)
    noise[position] ^= 0x80
    with pytest.raises(AuthenticationError, match="session key differs"):
        pair.guest.receive(rewrite(host_reveal, noise=bytes(noise)), 0.0)
    assert_failed(pair.guest, AuthenticationError)
    assert [e for e in pair.guest.events() if isinstance(e, ConfirmCode)] == []


def test_compare_message_1_of_another_exchange_fails() -> None:
    """A message 1 recorded from another compare exchange (another th and SK) is refused."""
    _, recorded = _compare_to_the_question()
    old = wire.decode(recorded).noise
    pair = make_pair(Method.COMPARE, seed=143)
    stepper = Stepper(pair.guest, pair.host, answer=False)
    for _ in range(3):
        stepper.step()
    _, host_reveal = stepper.queue.pop(0)
    with pytest.raises(AuthenticationError):
        pair.guest.receive(rewrite(host_reveal, noise=old), 0.0)
    assert_failed(pair.guest, AuthenticationError)


# -- local misuse and configuration ----------------------------------------------------------


def test_answer_without_a_question() -> None:
    pair = make_pair(Method.COMPARE, seed=121)
    with pytest.raises(ProtocolError, match="no question"):
        pair.guest.answer(ConfirmCode(code="000000", peer_name="x"), True, 0.0)
    assert_failed(pair.guest, ProtocolError)  # a caller's bug poisons the machine too


def test_start_twice_and_use_after_done() -> None:
    pair = make_pair(Method.QR, seed=122)
    with pytest.raises(ProtocolError, match="already called"):
        pair.guest.start(0.0)
    pair.run()
    assert_paired(pair, Method.QR)
    for machine in (pair.guest, pair.host):
        with pytest.raises(ProtocolError, match="already complete"):
            machine.receive(Reveal(b"n" * 16).encode(), 0.0)
        with pytest.raises(ProtocolError, match="already complete"):
            machine.on_timeout(1e9)
    assert pair.guest.session is not None  # a stray message does not undo a finished pairing


def test_ttp_not_available() -> None:
    with pytest.raises(UnsupportedError, match="ttp"):
        GuestPairing(PairingConfig(), LocalIdentity.generate("g"), method=Method.TTP)


def test_method_the_host_does_not_allow() -> None:
    only_pin = PairingConfig(methods=frozenset({Method.PIN}))
    pair = make_pair(Method.COMPARE, seed=123, host_config=only_pin)
    pair.run()
    assert "allows only: pin" in str(assert_failed(pair.host, UnsupportedError))
    assert_remote(pair.guest, ErrorCode.UNSUPPORTED, "allows only: pin")


@pytest.mark.parametrize("method", [Method.RESUME, Method.KK])
def test_a_refused_return_names_none_of_the_hosts_methods(method: Method) -> None:
    """A host that lets no known device back refuses resume and kk without listing what it
    allows: the refusal crosses in the clear, when a known device comes back (a listener
    would read a private host's settings, the same at each return: session 23)."""
    with pytest.raises(UnsupportedError) as refused:
        choose(0, frozenset({method}), 0, frozenset({Method.PIN, Method.QR}), proposed=method)
    assert "does not let known devices back" in str(refused.value)
    assert "pin" not in str(refused.value) and "qr" not in str(refused.value)


def test_host_without_the_capability() -> None:
    blind = PairingConfig(caps=Caps.KEYPAD | Caps.CONFIRM)  # a host that cannot display
    pair = make_pair(Method.COMPARE, seed=124, host_config=blind)
    pair.run()
    assert "display" in str(assert_failed(pair.host, UnsupportedError))
    assert_remote(pair.guest, ErrorCode.UNSUPPORTED, "display")


def test_guest_checks_the_hosts_announcement_against_the_table() -> None:
    pair = make_pair(Method.PIN, seed=124)

    def blind(direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if isinstance(msg, Accept):
            hello = dataclasses.replace(msg.hello, caps=msg.hello.caps & ~int(Caps.DISPLAY))
            return dataclasses.replace(msg, hello=hello).encode()
        return data

    pair.run(tamper=blind)
    assert "cannot display" in str(assert_failed(pair.guest, UnsupportedError))
    assert_remote(pair.host, ErrorCode.UNSUPPORTED, "cannot display")


def test_unexpected_message_types() -> None:
    pair = make_pair(Method.PIN, seed=125)
    with pytest.raises(ProtocolError, match="not expected"):
        pair.host.receive(Reveal(b"n" * 16).encode(), 0.0)
    assert_failed(pair.host, ProtocolError)
    assert wire.decode(pair.host.outgoing()[0]) == wire.Abort(
        code=ErrorCode.PROTOCOL, reason=str(pair.host.error)
    )


def test_garbage_from_the_peer_is_a_decode_error() -> None:
    pair = make_pair(Method.PIN, seed=126)
    with pytest.raises(DecodeError):
        pair.host.receive(b"\xff\x00garbage", 0.0)
    assert_failed(pair.host, DecodeError)


def test_low_order_compare_key_refused() -> None:
    pair = make_pair(Method.COMPARE, seed=127)
    offer = pair.guest.outgoing()[0]
    with pytest.raises(AuthenticationError, match="not acceptable"):
        pair.host.receive(rewrite(offer, pk=bytes(32)), 0.0)
    assert_failed(pair.host, AuthenticationError)


def test_an_abort_reason_from_the_peer_that_is_not_ascii_still_fits() -> None:
    """Error texts that echo the peer's bytes must still fit an Abort (512 bytes)."""
    pair = make_pair(Method.PIN, seed=128)
    body = {0: 1, 1: Offer.TYPE, "\U0001f600" * 190: 1}
    with pytest.raises(DecodeError):
        pair.host.receive(cbor2.dumps(body, canonical=True), 0.0)
    (abort,) = pair.host.outgoing()
    assert len(abort) <= wire.Abort.MAX_SIZE
    assert isinstance(wire.decode(abort), wire.Abort)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"methods": frozenset()},
        {"step_timeout": 0.0},
        {"step_timeout": 1e6},
        {"prekeys": 0},
        {"prekeys": 17},
    ],
    ids=str,
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PairingConfig(**kwargs)


@pytest.mark.parametrize("method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR])
@pytest.mark.parametrize(("name", "prekeys"), [
    ("\U0001f4fa" * 64, 16),  # the longest name a device may have (64 characters, 256 bytes)
    ("\u7535" * 64, 8),  # 64 Chinese characters (192 bytes), the default prekeys
    ("L" * 50, 16),
], ids=["emoji-64-16", "cjk-64-8", "latin-50-16"])
def test_the_longest_name_and_the_most_prekeys_a_device_may_have_pair(
    method: Method, name: str, prekeys: int
) -> None:
    """Helper kkpad's finding (session 23): the identity a Noise message carries grew with the
    device's name (up to 256 bytes of UTF-8) and its prekeys (up to 16 digests), past the 512
    bytes a Noise message field took: a device named with 64 Chinese characters could pair
    with nobody ("NoiseMessage.noise is 528 long, over its limit of 512")."""
    g, h = identities(5)
    g, h = dataclasses.replace(g, name=name), dataclasses.replace(h, name=name)
    config = PairingConfig(prekeys=prekeys)
    pair = make_pair(method, seed=6, guest_me=g, host_me=h, guest_config=config,
                     host_config=config)
    result = pair.run()
    assert not result.errors, result.errors
    assert pair.guest.session is not None and pair.host.session is not None
    assert pair.guest.session.peer.name == name == pair.host.session.peer.name
    assert len(pair.host.session.new_their_prekeys) == prekeys
