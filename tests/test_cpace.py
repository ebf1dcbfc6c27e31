"""Behaviour of pairing.cpace: two parties, wrong PINs, misuse, and fuzzed peer input."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing import cpace
from pairkit.pairing.cpace import CPace, CPaceState
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    PairingError,
    ProtocolError,
)

CI = cpace.channel_identifier(b"guest-id", b"host-id", b"pairkit-v1", b"pin")


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def pair(
    pin_a: bytes = b"123456",
    pin_b: bytes = b"123456",
    *,
    ci_a: bytes = CI,
    ci_b: bytes = CI,
    sid: bytes = b"",
    ad_a: bytes = b"caps-a",
    ad_b: bytes = b"caps-b",
    seed: int = 1,
) -> tuple[CPace, CPace]:
    """Run the CPace flow between an initiator and a responder, in memory."""
    a = CPace("initiator", pin_a, ci=ci_a, sid=sid, ad_self=ad_a, rng=seeded(seed))
    b = CPace("responder", pin_b, ci=ci_b, sid=sid, ad_self=ad_b, rng=seeded(seed + 1))
    b.receive(a.message(), a.ad_self)
    a.receive(b.message(), b.ad_self)
    return a, b


def confirm_both(a: CPace, b: CPace) -> None:
    ta, tb = a.confirmation(), b.confirmation()
    a.verify_confirmation(tb)
    b.verify_confirmation(ta)


# --- agreement -------------------------------------------------------------------------------


def test_same_pin_agrees_and_confirms() -> None:
    a, b = pair()
    assert a.isk == b.isk
    assert len(a.isk) == cpace.ISK_SIZE
    assert a.sid_output == b.sid_output
    confirm_both(a, b)
    assert a.state is b.state is CPaceState.CONFIRMED
    assert a.isk == b.isk  # still readable once confirmed


def test_runs_with_different_scalars_give_different_keys() -> None:
    a1, _ = pair(seed=1)
    a2, _ = pair(seed=3)
    assert a1.message() != a2.message()
    assert a1.isk != a2.isk
    assert a1.sid_output != a2.sid_output


def test_message_is_32_bytes_and_stable() -> None:
    a = CPace("initiator", b"1234", rng=seeded(5))
    first = a.message()
    assert len(first) == 32
    assert a.message() == first
    assert a.state is CPaceState.STARTED


def test_responder_may_answer_after_receiving() -> None:
    a = CPace("initiator", b"1234", rng=seeded(5))
    b = CPace("responder", b"1234", rng=seeded(6))
    b.receive(a.message(), b"")  # the responder has not produced its share yet
    a.receive(b.message(), b"")
    assert a.isk == b.isk


def test_the_scalar_comes_from_rng() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes(range(n))

    a = CPace("initiator", b"1234", rng=rng)
    assert calls == [32]
    expected = cpace.scalar_mult(bytes(range(32)), cpace.calculate_generator(b"1234"))
    assert a.message() == expected


def test_sid_changes_the_key() -> None:
    a1, _ = pair(sid=b"session-1")
    a2, _ = pair(sid=b"session-2")
    assert a1.isk != a2.isk


# --- failures that key confirmation catches ---------------------------------------------------


def _assert_confirmation_fails_both_ways(a: CPace, b: CPace) -> None:
    assert a.isk != b.isk
    ta, tb = a.confirmation(), b.confirmation()
    with pytest.raises(AuthenticationError):
        a.verify_confirmation(tb)
    with pytest.raises(AuthenticationError):
        b.verify_confirmation(ta)
    for party in (a, b):
        assert party.state is CPaceState.FAILED
        with pytest.raises(ProtocolError):
            _ = party.isk


def test_wrong_pin_fails_confirmation_on_both_sides() -> None:
    _assert_confirmation_fails_both_ways(*pair(b"123456", b"123457"))


def test_different_channel_identifier_fails() -> None:
    other = cpace.channel_identifier(b"guest-id", b"mallory-id", b"pairkit-v1", b"pin")
    _assert_confirmation_fails_both_ways(*pair(ci_b=other))


def test_swapped_roles_in_ci_fail() -> None:
    swapped = cpace.channel_identifier(b"host-id", b"guest-id", b"pairkit-v1", b"pin")
    _assert_confirmation_fails_both_ways(*pair(ci_b=swapped))


def test_tampered_associated_data_fails() -> None:
    a = CPace("initiator", b"1234", ci=CI, ad_self=b"caps: pin,qr", rng=seeded(1))
    b = CPace("responder", b"1234", ci=CI, ad_self=b"caps-b", rng=seeded(2))
    b.receive(a.message(), b"caps: pin")  # a man in the middle strips a capability
    a.receive(b.message(), b.ad_self)
    _assert_confirmation_fails_both_ways(a, b)


def test_a_reflected_tag_is_rejected() -> None:
    a, _ = pair()
    with pytest.raises(AuthenticationError):
        a.verify_confirmation(a.confirmation())


def test_auth_error_text_holds_no_secret() -> None:
    a, b = pair(b"123456", b"654321")
    isk = a.isk
    with pytest.raises(AuthenticationError) as info:
        a.verify_confirmation(b.confirmation())
    text = str(info.value)
    assert "123456" not in text and "654321" not in text
    assert isk.hex() not in text


# --- decoding and misuse --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_message_is_a_decode_error(length: int) -> None:
    a = CPace("initiator", b"1234", rng=seeded(1))
    with pytest.raises(DecodeError):
        a.receive(b"\x09" * length, b"")
    assert a.state is CPaceState.FAILED
    with pytest.raises(ProtocolError):
        a.message()


@pytest.mark.parametrize("length", [0, 63, 65])
def test_wrong_length_tag_is_a_decode_error(length: int) -> None:
    a, _ = pair()
    with pytest.raises(DecodeError):
        a.verify_confirmation(bytes(length))
    assert a.state is CPaceState.FAILED


def test_receive_twice_is_a_protocol_error_and_poisons() -> None:
    a, b = pair()
    with pytest.raises(ProtocolError):
        a.receive(b.message(), b.ad_self)
    assert a.state is CPaceState.FAILED
    for call in (a.message, a.confirmation, lambda: a.isk, lambda: a.sid_output):
        with pytest.raises(ProtocolError):
            call()


def test_verify_twice_is_a_protocol_error() -> None:
    a, b = pair()
    confirm_both(a, b)
    with pytest.raises(ProtocolError):
        a.verify_confirmation(b.confirmation())
    assert a.state is CPaceState.FAILED


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.isk,
        lambda p: p.sid_output,
        lambda p: p.confirmation(),
        lambda p: p.verify_confirmation(bytes(64)),
    ],
    ids=["isk", "sid_output", "confirmation", "verify_confirmation"],
)
def test_outputs_before_receive_are_protocol_errors(call: Callable[[CPace], object]) -> None:
    a = CPace("initiator", b"1234", rng=seeded(1))
    with pytest.raises(ProtocolError):
        call(a)
    assert a.state is CPaceState.FAILED


def test_a_low_order_share_poisons() -> None:
    a = CPace("responder", b"1234", rng=seeded(1))
    with pytest.raises(AuthenticationError):
        a.receive(bytes(32), b"")
    with pytest.raises(ProtocolError):
        a.receive(bytes(31) + b"\x09", b"")


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"role": "server", "prs": b"1"}, "role"),
        ({"role": "initiator", "prs": b""}, "empty"),
        ({"role": "initiator", "prs": "1234"}, "bytes"),
        ({"role": "initiator", "prs": b"1", "ci": "x"}, "ci"),
        ({"role": "initiator", "prs": b"1", "rng": lambda n: b"short"}, "random"),
    ],
    ids=["role", "empty-prs", "str-prs", "str-ci", "short-rng"],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, object], what: str) -> None:
    with pytest.raises(ConfigError, match=what) as info:
        CPace(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_scalar_mult_vfy_argument_lengths() -> None:
    with pytest.raises(DecodeError):
        cpace.scalar_mult_vfy(bytes(32), bytes(31))
    with pytest.raises(ConfigError):
        cpace.scalar_mult_vfy(bytes(31), cpace.calculate_generator(b"1"))


# --- string helpers and the map ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "prefix"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16384, b"\x80\x80\x01"),
    ],
)
def test_prepend_len_is_leb128(length: int, prefix: bytes) -> None:
    assert cpace.prepend_len(bytes(length)) == prefix + bytes(length)


def test_generator_string_pads_the_first_block() -> None:
    # §8.1: DSI and a short PRS with their lengths and the padding's length byte fill the
    # 128-byte SHA-512 block, whatever the PRS length.
    for prs in (b"1", b"1234", b"a" * 100):
        gs = cpace.generator_string(cpace.DSI, prs, b"", b"", cpace.S_IN_BYTES)
        assert len(gs) == cpace.S_IN_BYTES + 2  # plus the empty CI's and sid's length bytes
    long = b"a" * 200
    gs = cpace.generator_string(cpace.DSI, long, b"", b"", cpace.S_IN_BYTES)
    assert gs == cpace.lv_cat(cpace.DSI, long, b"", b"", b"")


def test_decode_u_coordinate_clears_bit_255() -> None:
    assert cpace.decode_u_coordinate(b"\xff" * 32) == 2**255 - 1
    with pytest.raises(DecodeError):
        cpace.decode_u_coordinate(bytes(31))


def _on_curve(u: int) -> bool:
    rhs = (u**3 + cpace.A * u * u + u) % cpace.P
    return pow(rhs, (cpace.P - 1) // 2, cpace.P) in (0, 1)


@given(st.integers(min_value=0, max_value=2**255 - 1))
def test_elligator2_lands_on_the_curve(r: int) -> None:
    u = cpace.map_to_curve_elligator2_curve25519(r)
    assert 0 <= u < cpace.P
    assert _on_curve(u)
    # RFC 9380 §6.7.1: the output is x1 = -A / (1 + 2 r^2) or x2 = -x1 - A.
    x1 = (-cpace.A * pow(1 + 2 * r * r, -1, cpace.P)) % cpace.P
    assert u in (x1, (-x1 - cpace.A) % cpace.P)
    # The map is even in r (it depends on r^2 only).
    assert cpace.map_to_curve_elligator2_curve25519(cpace.P - r) == u


def test_elligator2_takes_both_branches() -> None:
    branches = set()
    for r in range(1, 40):
        x1 = (-cpace.A * pow(1 + 2 * r * r, -1, cpace.P)) % cpace.P
        branches.add(cpace.map_to_curve_elligator2_curve25519(r) == x1)
    assert branches == {True, False}


# --- properties -----------------------------------------------------------------------------------

_bytes = st.binary(max_size=200)

#: Some low-order encodings (draft-21 B.1.10): 0, 1, p - 1, p, p + 1.
LOW_ORDER = [(n % 2**256).to_bytes(32, "little") for n in (0, 1, cpace.P - 1, cpace.P, cpace.P + 1)]


@settings(max_examples=60, deadline=None)
@given(
    prs=st.binary(min_size=1, max_size=300),
    ci=_bytes,
    sid=st.binary(max_size=64),
    ad_a=_bytes,
    ad_b=_bytes,
    seed=st.integers(0, 2**32),
)
def test_same_inputs_always_agree(
    prs: bytes, ci: bytes, sid: bytes, ad_a: bytes, ad_b: bytes, seed: int
) -> None:
    a, b = pair(prs, prs, ci_a=ci, ci_b=ci, sid=sid, ad_a=ad_a, ad_b=ad_b, seed=seed)
    assert a.isk == b.isk
    assert a.sid_output == b.sid_output
    confirm_both(a, b)


@settings(max_examples=200, deadline=None)
@given(
    role=st.sampled_from(["initiator", "responder"]),
    garbage=st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(LOW_ORDER)),
    tag=st.binary(min_size=64, max_size=64),
)
def test_garbage_peer_messages_raise_only_pairing_errors(
    role: cpace.Role, garbage: bytes, tag: bytes
) -> None:
    party = CPace(role, b"1234", rng=seeded(7))
    try:
        party.receive(garbage, b"")
    except PairingError:
        assert party.state is CPaceState.FAILED
        return
    # Accepted as a share: nobody knows its discrete log, so no tag can confirm it.
    with pytest.raises(AuthenticationError):
        party.verify_confirmation(tag)


_OPS = st.lists(
    st.one_of(
        st.just(("message",)),
        st.tuples(st.just("receive"), st.binary(max_size=40), st.binary(max_size=8)),
        st.just(("isk",)),
        st.just(("sid_output",)),
        st.just(("confirmation",)),
        st.tuples(st.just("verify"), st.binary(max_size=70)),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(role=st.sampled_from(["initiator", "responder"]), ops=_OPS)
def test_any_call_sequence_raises_only_pairing_errors(role: cpace.Role, ops: list[tuple]) -> None:
    party = CPace(role, b"1234", rng=seeded(9))
    failed = False
    for op in ops:
        try:
            match op:
                case ("message",):
                    party.message()
                case ("receive", msg, ad):
                    party.receive(msg, ad)
                case ("isk",):
                    _ = party.isk
                case ("sid_output",):
                    _ = party.sid_output
                case ("confirmation",):
                    party.confirmation()
                case ("verify", tag):
                    party.verify_confirmation(tag)
        except PairingError as exc:
            if failed:  # once failed, every call is a ProtocolError
                assert isinstance(exc, ProtocolError)
            failed = True
            assert party.state is CPaceState.FAILED
        else:
            assert not failed


def _map_by_fermat(u: int) -> int:
    """RFC 9380 §6.7.1 with inv0 as Fermat's exponentiation, as the map was first written."""
    p, a, z = cpace.P, cpace.A, cpace.Z
    u %= p
    x1 = (-a * pow((1 + z * u * u) % p, p - 2, p)) % p
    gx1 = (x1 * x1 * x1 + a * x1 * x1 + x1) % p
    x2 = (-x1 - a) % p
    return x1 if pow(gx1, (p - 1) // 2, p) != p - 1 else x2


@settings(max_examples=200, deadline=None)
@given(u=st.integers(min_value=0, max_value=2**256), blind=st.integers(min_value=1))
def test_the_blinded_map_is_the_map(u: int, blind: int) -> None:
    # Blinding the inversion and the square test (pow(x, -1, p) on x * r) changes no output.
    if blind % cpace.P == 0:
        blind = 1
    want = _map_by_fermat(u)
    assert cpace.map_to_curve_elligator2_curve25519(u) == want
    assert cpace.map_to_curve_elligator2_curve25519(u, blind) == want


def test_a_zero_blind_is_refused() -> None:
    with pytest.raises(ConfigError):
        cpace.map_to_curve_elligator2_curve25519(5, cpace.P)


def test_the_generator_does_not_depend_on_the_blind() -> None:
    g = cpace.calculate_generator(b"402913", b"ci", b"sid")
    for blind in (2, 3, cpace.P - 1, 2**200 + 7):
        assert cpace.calculate_generator(b"402913", b"ci", b"sid", blind=blind) == g
