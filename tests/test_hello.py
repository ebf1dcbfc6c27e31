"""The hello codec and its rotating tag (docs/hello.md)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairkit.pairing.errors import DecodeError, PairingError
from pairkit.pairing.hello import EPOCH_SECONDS, HELLO_LEN, Hello, decode_hello, make_tag, match_tag
from pairkit.pairing.negotiation import Caps, Method

HELLO_METHODS = [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME, Method.TTP]
KEY = bytes(range(32))


@given(
    visible=st.booleans(),
    l2cap=st.booleans(),
    caps=st.integers(0, 15),
    methods=st.sets(st.sampled_from(HELLO_METHODS)),
    tag=st.binary(min_size=8, max_size=8),
)
def test_round_trip(
    visible: bool, l2cap: bool, caps: int, methods: set[Method], tag: bytes
) -> None:
    hello = Hello(visible, Caps(caps), frozenset(methods), tag, l2cap)
    data = hello.encode()
    assert len(data) == HELLO_LEN
    assert decode_hello(data) == hello


@given(st.binary(max_size=40))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    try:
        decode_hello(data)
    except DecodeError:
        pass


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "10 bytes"),
        (bytes(11), "10 bytes"),
        (bytes([0x40, 0x80]) + bytes(8), "reserved"),
    ],
)
def test_refusals(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_hello(data)
    assert issubclass(DecodeError, PairingError)


def test_member_recognises_the_tag_and_strangers_do_not() -> None:
    rng = random.Random(1).randbytes
    now = 1_800_000_000.0
    tag = make_tag(KEY, now, rng)
    assert match_tag(tag, {"pauls-cloud": KEY}, now) == "pauls-cloud"
    assert match_tag(tag, {"other": bytes(32)}, now) is None
    # neighbouring epochs are tolerated (clock skew); far ones are not
    assert match_tag(tag, {"c": KEY}, now + EPOCH_SECONDS) == "c"
    assert match_tag(tag, {"c": KEY}, now - EPOCH_SECONDS) == "c"
    assert match_tag(tag, {"c": KEY}, now + 3 * EPOCH_SECONDS) is None


def test_tags_rotate_and_share_nothing() -> None:
    rng = random.Random(2).randbytes
    now = 1_800_000_000.0
    tags = [make_tag(KEY, now, rng) for _ in range(50)]
    assert len(set(tags)) == 50
    # no byte position is constant across rotations of one device's tag
    for i in range(8):
        assert len({t[i] for t in tags}) > 1


def test_a_host_in_no_cloud_sends_a_random_tag() -> None:
    rng = random.Random(3).randbytes
    tag = make_tag(None, 1_800_000_000.0, rng)
    assert match_tag(tag, {"c": KEY}, 1_800_000_000.0) is None


def test_wrong_length_tag_never_matches() -> None:
    assert match_tag(b"short", {"c": KEY}, 0.0) is None
