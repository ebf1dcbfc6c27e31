"""pairing.crypto.check_ed25519_public: which Ed25519 public keys are refused (docs/security.md
rule 1).  The list of small-order points is worked out here from the curve
(tests/signing_harness.py), not taken from the helper or from elsewhere."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.pairing.crypto import SMALL_ORDER_Y, check_ed25519_public, ed25519_public
from pairkit.pairing.errors import AuthenticationError, DecodeError, UnusableKeyError

from .signing_harness import P, encode, small_order_encodings, small_order_points, times, x_for

ENCODINGS = small_order_encodings()


def test_the_helper_knows_the_y_of_every_small_order_point_and_no_other() -> None:
    points = small_order_points()
    assert len(points) == 8
    assert SMALL_ORDER_Y == {y for _, y in points}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_encoding_of_a_small_order_point_is_refused(name: str) -> None:
    key = ENCODINGS[name]
    with pytest.raises(UnusableKeyError) as caught:
        check_ed25519_public(key, "the peer's")
    assert isinstance(caught.value, AuthenticationError)
    assert str(caught.value).startswith("the peer's signing key is one that signatures made "
                                        "with no key at all pass for")
    assert key.hex() not in str(caught.value)
    with pytest.raises(UnusableKeyError):
        ed25519_public(key, "the peer's")


@pytest.mark.parametrize("y", [P, P + 1, P + 2, P + 18, 2**255 - 1])
@pytest.mark.parametrize("sign", [0, 1])
def test_every_y_not_below_p_is_refused(y: int, sign: int) -> None:
    """Non-canonical (RFC 8032 §5.1.3 step 1), of small order or not."""
    with pytest.raises(UnusableKeyError):
        check_ed25519_public(encode(y, sign), "the peer's")


def test_real_keys_and_points_of_large_order_pass() -> None:
    for _ in range(200):
        key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert check_ed25519_public(key, "a") == key
    # a point of order 8·L (a small-order part added to a key): not ours to refuse; it
    # verifies only what its holder signs
    y = next(y for y in range(2, 100)
             if x_for(y) is not None and times(8, (x_for(y), y)) != (0, 1))
    assert check_ed25519_public(encode(y, 0), "a") == encode(y, 0)


def test_a_key_of_another_length_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="32 bytes"):
        check_ed25519_public(os.urandom(31), "the peer's")
