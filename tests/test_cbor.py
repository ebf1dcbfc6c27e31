"""The strict CBOR subset of :mod:`pairing.cbor` (RFC 8949): round trips, refusals, fuzzing.

Every refusal must be a :class:`~pairing.errors.DecodeError`; every accepted encoding must be
the one canonical encoding of its value (RFC 8949 §4.2.1), so re-encoding gives the same bytes.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairkit.pairing import cbor
from pairkit.pairing.errors import DecodeError

BIG = 1 << 20

# -- building raw CBOR by hand (to write what cbor2 never would) ---------------------------------


def head(major: int, arg: int, width: int | None = None) -> bytes:
    """An item head; ``width`` (0, 1, 2, 4, 8) forces the argument's size (non-shortest forms)."""
    if width is None:
        width = 0 if arg < 24 else 1 if arg < 256 else 2 if arg < 65536 else 4 if arg < 2**32 else 8
    if width == 0:
        return bytes([major << 5 | arg])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + arg.to_bytes(width, "big")


def raw_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A map with the given already-encoded keys and values, in this order (duplicates allowed)."""
    return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)


def enc(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 or a tuple with a list."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    return bool(a == b)


# -- strategies ------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = st.one_of(
    ints,
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
keys = st.one_of(st.integers(min_value=-(2**64), max_value=2**64 - 1), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=20,
)


def depth_of(value: Any) -> int:
    """The depth of the deepest item (the top item is at depth 0), as the decoder counts it."""
    children = list(value) + list(value.values()) if isinstance(value, dict) else value
    if isinstance(value, list | dict) and children:
        return 1 + max(depth_of(v) for v in children)
    return 0


# -- round trips -----------------------------------------------------------------------------


@given(values)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(value: Any) -> None:
    data = cbor.encode(value)
    if depth_of(value) > cbor.MAX_DEPTH:
        with pytest.raises(DecodeError):
            cbor.decode(data, max_size=BIG)
        return
    assert strict_equal(cbor.decode(data, max_size=BIG), value)


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65536, "1a00010000"),
        (2**32, "1b0000000100000000"),
        (2**64 - 1, "1bffffffffffffffff"),
        (-1, "20"),
        (-(2**64), "3bffffffffffffffff"),
        (b"", "40"),
        ("a", "6161"),
        ([], "80"),
        ({}, "a0"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        ({1: 2, "a": 3}, "a201026161" + "03"),
    ],
    ids=repr,
)
def test_known_encodings(value: Any, hex_: str) -> None:
    """RFC 8949 Appendix A examples in the subset pairkit uses (deterministic encoding)."""
    assert cbor.encode(value).hex() == hex_
    assert strict_equal(cbor.decode(bytes.fromhex(hex_), max_size=64), value)


def test_map_keys_sorted_length_first() -> None:
    """Canonical order (RFC 7049 §3.9): shorter encoded keys first, then bytewise."""
    value = {"aa": 1, "b": 2, 100: 3, 1: 4, -1: 5, 24: 6}
    data = cbor.encode(value)
    assert cbor.decode(data, max_size=64) == value
    assert list(cbor.decode(data, max_size=64)) == [1, -1, 24, 100, "b", "aa"]


# -- fuzzing: only DecodeError, and what is accepted is canonical ---------------------------


@given(st.binary(max_size=200))
@settings(max_examples=1500)
def test_arbitrary_bytes_only_decode_error(data: bytes) -> None:
    try:
        value = cbor.decode(data, max_size=BIG)
    except DecodeError:
        return
    # Accepted: it must be exactly the canonical encoding of what it decoded to.
    assert cbor.encode(value) == data
    assert strict_equal(cbor2.loads(data), value)


@given(values, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_encodings_only_decode_error(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(cbor.encode(value))
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]))
    pos = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    if op == "flip" and pos < len(encoded):
        encoded[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "set" and pos < len(encoded):
        encoded[pos] = data.draw(st.integers(0, 255))
    elif op == "insert":
        encoded.insert(pos, data.draw(st.integers(0, 255)))
    elif pos < len(encoded):
        del encoded[pos]
    try:
        decoded = cbor.decode(bytes(encoded), max_size=BIG)
    except DecodeError:
        return
    assert cbor.encode(decoded) == bytes(encoded)


@pytest.mark.parametrize(
    "bad", [None, "text", 12, [1], object()],
    ids=lambda v: "object()" if type(v) is object else repr(v),  # the same in every process
)
def test_non_bytes_refused(bad: Any) -> None:
    with pytest.raises(DecodeError, match="bytes"):
        cbor.decode(bad, max_size=64)


def test_bytes_like_accepted() -> None:
    assert cbor.decode(bytearray(b"\x01"), max_size=4) == 1
    assert cbor.decode(memoryview(b"\x01"), max_size=4) == 1


# -- specific refusals -----------------------------------------------------------------------

REFUSALS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "truncated int": (b"\x19\x01", "truncated"),
    "truncated bytes": (b"\x45abc", "truncated"),
    "truncated array": (b"\x83\x01\x02", "truncated"),
    "truncated map": (b"\xa2\x01\x02\x03", "truncated"),
    "huge array claim": (b"\x9b" + b"\xff" * 8, "truncated"),
    "huge map claim": (b"\xbb" + b"\xff" * 8, "truncated"),
    "huge bytes claim": (b"\x5b" + b"\xff" * 8, "truncated"),
    "indefinite bytes": (b"\x5f\x41a\xff", "indefinite"),
    "indefinite text": (b"\x7f\x61a\xff", "indefinite"),
    "indefinite array": (b"\x9f\x01\xff", "indefinite"),
    "indefinite map": (b"\xbf\x01\x02\xff", "indefinite"),
    "break alone": (b"\xff", "indefinite"),
    "reserved info 28": (b"\x1c", "reserved"),
    "reserved info 29": (b"\x3d", "reserved"),
    "reserved info 30": (b"\x5e", "reserved"),
    "tag 0": (b"\xc0\x60", "tags"),
    "tag 24 bignum-ish": (b"\xd8\x18\x41\x00", "tags"),
    "self-describe tag": (b"\xd9\xd9\xf7\x01", "tags"),
    "bignum tag": (b"\xc2\x49\x01" + b"\x00" * 8, "tags"),
    "half float": (b"\xf9\x3c\x00", "floats"),
    "single float": (b"\xfa\x3f\x80\x00\x00", "floats"),
    "double float": (b"\xfb\x3f\xf0" + b"\x00" * 6, "floats"),
    "undefined": (b"\xf7", "simple"),
    "simple 0": (b"\xe0", "simple"),
    "simple 255": (b"\xf8\xff", "simple"),
    "simple 20 in long form": (b"\xf8\x14", "simple"),
    "int 0 in 1 byte": (head(0, 0, 1), "shortest"),
    "int 23 in 1 byte": (head(0, 23, 1), "shortest"),
    "int 255 in 2 bytes": (head(0, 255, 2), "shortest"),
    "int 65535 in 4 bytes": (head(0, 65535, 4), "shortest"),
    "int 2^32-1 in 8 bytes": (head(0, 2**32 - 1, 8), "shortest"),
    "negative in 2 bytes": (head(1, 5, 2), "shortest"),
    "bytes length in 1 byte": (head(2, 1, 1) + b"a", "shortest"),
    "text length in 2 bytes": (head(3, 1, 2) + b"a", "shortest"),
    "array length in 1 byte": (head(4, 1, 1) + b"\x01", "shortest"),
    "map length in 1 byte": (head(5, 1, 1) + b"\x01\x02", "shortest"),
    "duplicate int key": (raw_map([(enc(1), enc(2)), (enc(1), enc(3))]), "duplicate"),
    "duplicate text key": (raw_map([(enc("a"), enc(2)), (enc("a"), enc(3))]), "duplicate"),
    "keys out of order": (raw_map([(enc(2), enc(0)), (enc(1), enc(0))]), "order"),
    "longer key first": (raw_map([(enc(24), enc(0)), (enc(1), enc(0))]), "order"),
    "text before int": (raw_map([(enc("a"), enc(0)), (enc(1), enc(0))]), "order"),
    "bytes key": (raw_map([(enc(b"k"), enc(0))]), "keys"),
    "bool key": (raw_map([(enc(True), enc(0))]), "keys"),
    "null key": (raw_map([(enc(None), enc(0))]), "keys"),
    "array key": (raw_map([(enc([]), enc(0))]), "keys"),
    "trailing byte": (b"\x01\x00", "unexpected bytes"),
    "two items": (enc(1) + enc("x"), "unexpected bytes"),
    "invalid utf-8": (b"\x62\xc3\x28", "UTF-8"),
    "utf-8 surrogate": (b"\x63\xed\xa0\x80", "UTF-8"),
    "overlong utf-8": (b"\x62\xc0\xaf", "UTF-8"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusal(name: str) -> None:
    data, reason = REFUSALS[name]
    with pytest.raises(DecodeError, match=reason):
        cbor.decode(data, max_size=BIG)


def test_refusal_inside_a_structure() -> None:
    """A forbidden item is refused wherever it sits, not only at the top."""
    for inner, _reason in REFUSALS.values():
        if not inner or inner in (b"\xff",):
            continue
        for wrapped in (head(4, 1) + inner, raw_map([(enc(1), inner)])):
            with pytest.raises(DecodeError):
                cbor.decode(wrapped, max_size=BIG)


def test_size_limit() -> None:
    data = enc(b"x" * 100)
    assert cbor.decode(data, max_size=len(data)) == b"x" * 100
    with pytest.raises(DecodeError, match="over its limit"):
        cbor.decode(data, max_size=len(data) - 1)


def test_nesting_limit() -> None:
    ok = b"\x81" * cbor.MAX_DEPTH + b"\x80"  # the innermost array is at depth MAX_DEPTH
    value = cbor.decode(ok, max_size=BIG)
    assert depth_of(value) == cbor.MAX_DEPTH
    with pytest.raises(DecodeError, match="nested too deeply"):
        cbor.decode(b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x80", max_size=BIG)
    with pytest.raises(DecodeError, match="nested too deeply"):
        cbor.decode(b"\xa1\x01" * (cbor.MAX_DEPTH + 1) + b"\x00", max_size=BIG)


def test_very_deep_nesting_is_a_decode_error_not_a_recursion_error() -> None:
    with pytest.raises(DecodeError):
        cbor.decode(b"\x81" * 100_000 + b"\x00", max_size=BIG)
    with pytest.raises(DecodeError):
        cbor.decode(b"\x9f" * 1000, max_size=BIG)


# -- the fast decoder against the plain one it replaced (issue 13) -----------------------------
#
# pairing/cbor.py reads common items inline for speed.  This is the plain decoder it replaced,
# one item per call, kept here as the reference: on every input both must give the same value,
# or refuse with the same reason.


def _ref_head(data: bytes, pos: int) -> tuple[int, int, int, int]:
    if pos >= len(data):
        raise DecodeError("message truncated")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, info, pos
    if info > 27:
        what = "indefinite lengths are not allowed" if info == 31 else "reserved encoding"
        raise DecodeError(f"malformed CBOR: {what}")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise DecodeError("message truncated")
    arg = int.from_bytes(data[pos : pos + size], "big")
    if major != 7:
        smallest = 0 if info == 24 else 1 << (8 * (size // 2))
        if (info == 24 and arg < 24) or (info > 24 and arg < smallest):
            raise DecodeError("malformed CBOR: an integer or length is not in its shortest form")
    return major, info, arg, pos + size


def _ref_item(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > cbor.MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    major, info, arg, pos = _ref_head(data, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise DecodeError("message truncated")
        raw = data[pos:end]
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError("a text field is not valid UTF-8") from None
    if major == 4:
        if arg > len(data) - pos:
            raise DecodeError("message truncated")
        items = []
        for _ in range(arg):
            value, pos = _ref_item(data, pos, depth + 1)
            items.append(value)
        return items, pos
    if major == 5:
        if arg > (len(data) - pos) // 2:
            raise DecodeError("message truncated")
        result: dict[Any, Any] = {}
        previous: tuple[int, bytes] | None = None
        for _ in range(arg):
            key_start = pos
            key, pos = _ref_item(data, pos, depth + 1)
            encoded_key = (pos - key_start, data[key_start:pos])
            if not isinstance(key, int | str) or isinstance(key, bool):
                raise DecodeError("map keys must be integers or text")
            if previous is not None and encoded_key <= previous:
                if encoded_key == previous:
                    raise DecodeError("duplicate key in a map")
                raise DecodeError("map keys are not in canonical order")
            previous = encoded_key
            value, pos = _ref_item(data, pos, depth + 1)
            result[key] = value
        return result, pos
    if major == 6:
        raise DecodeError("CBOR tags are not allowed")
    if info >= 24 or arg not in (20, 21, 22):
        raise DecodeError("floats and unknown simple values are not allowed")
    return {20: False, 21: True, 22: None}[arg], pos


def _outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "value", decode(data)
    except DecodeError as exc:
        return "refused", str(exc)


def _reference(data: bytes) -> Any:
    if not data:
        raise DecodeError("empty message")
    value, pos = _ref_item(data, 0, 0)
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} unexpected bytes after the message")
    return value


def _same(data: bytes) -> None:
    fast = _outcome(lambda d: cbor.decode(d, max_size=BIG), data)
    plain = _outcome(_reference, data)
    assert fast[0] == plain[0], (data.hex(), fast, plain)
    if fast[0] == "value":
        assert strict_equal(fast[1], plain[1]), data.hex()
    else:
        assert fast[1] == plain[1], data.hex()


# Bytes drawn mostly from heads the fast paths read inline (small integers, short byte
# strings, 0x58 lengths, arrays and maps), so that they are exercised at every position.
_HEADS = st.one_of(
    st.integers(0, 255),
    st.sampled_from([0x00, 0x17, 0x18, 0x40, 0x41, 0x50, 0x57, 0x58, 0x59, 0x61, 0x80, 0x81,
                     0x82, 0x88, 0xA0, 0xA1, 0xA2, 0xA5, 0xF4, 0xF5, 0xF6, 0xF7]),
)


@given(st.lists(_HEADS, max_size=60).map(bytes))
@settings(max_examples=3000)
def test_fast_decoder_agrees_with_the_plain_one_on_any_bytes(data: bytes) -> None:
    _same(data)


@given(values, st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_fast_decoder_agrees_on_mutated_encodings(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(cbor.encode(value))
    _same(bytes(encoded))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(min_value=0, max_value=len(encoded)))
        op = data.draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if op == "set" and pos < len(encoded):
            encoded[pos] = data.draw(_HEADS)
        elif op == "insert":
            encoded.insert(pos, data.draw(_HEADS))
        elif op == "delete" and pos < len(encoded):
            del encoded[pos]
        else:
            del encoded[pos:]
        _same(bytes(encoded))


def test_fast_decoder_agrees_on_every_refusal_and_its_nestings() -> None:
    for inner, _reason in REFUSALS.values():
        _same(inner)
        for wrapped in (head(4, 1) + inner, head(4, 2) + b"\x01" + inner,
                        raw_map([(enc(1), inner)]), raw_map([(enc(1), b"\x41a"), (inner, b"\x00")]),
                        raw_map([(inner, b"\x00")])):
            _same(wrapped)
    for depth in (cbor.MAX_DEPTH - 1, cbor.MAX_DEPTH, cbor.MAX_DEPTH + 1):
        for leaf in (b"\x00", b"\x41a", b"\x58\x18" + b"x" * 24, b"\x58\x17", b"\x58", b"\x80"):
            _same(b"\x81" * depth + leaf)
            _same(b"\xa1\x01" * depth + leaf)
            _same(b"\x82\x00" + b"\x81" * depth + leaf)


# -- decode_stored: what pairkit stored with cbor2, without value sharing (session 19) ---------


class _Malformed(Exception):
    pass


def _stored_tags(data: bytes, pos: int) -> tuple[list[int], int]:
    """The reference for :func:`cbor.decode_stored`'s pass: every tag in the item at ``pos``
    and where it ends, one item per call (indefinite lengths too; _Malformed otherwise)."""
    if pos >= len(data):
        raise _Malformed
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info == 31:
        if major not in (2, 3, 4, 5):
            raise _Malformed
        tags: list[int] = []
        while pos < len(data) and data[pos] != 0xFF:
            inner, pos = _stored_tags(data, pos)
            tags += inner
        if pos >= len(data):
            raise _Malformed
        return tags, pos + 1
    if info >= 28:
        raise _Malformed
    arg = info
    if info >= 24:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise _Malformed
        arg = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if major in (2, 3):
        if pos + arg > len(data):
            raise _Malformed
        return [], pos + arg
    if major in (4, 5):
        tags = []
        for _ in range(arg * (1 if major == 4 else 2)):
            inner, pos = _stored_tags(data, pos)
            tags += inner
        return tags, pos
    if major == 6:
        inner, pos = _stored_tags(data, pos)
        return [arg, *inner], pos
    return [], pos


# heads that make tags, strings of every length form, indefinite lengths and breaks likely
_STORED_HEADS = st.one_of(
    st.integers(0, 255),
    st.sampled_from([0x00, 0x18, 0x41, 0x58, 0x5F, 0x61, 0x7F, 0x81, 0x82, 0x9F, 0xA1, 0xBF,
                     0xC1, 0xC2, 0xC3, 0xD8, 0xD9, 0x19, 0x1C, 0x1D, 0xF5, 0xF9, 0xFB, 0xFF]),
)


@given(st.lists(_STORED_HEADS, max_size=40).map(bytes))
@settings(max_examples=3000)
def test_decode_stored_refuses_every_tag_cbor2_would_read_but_a_bignum(data: bytes) -> None:
    try:
        tags, end = _stored_tags(data, 0)
        refused = [tag for tag in tags if tag not in (2, 3)]
    except _Malformed:
        refused = None  # not one whole item: cbor2 refuses it (whatever the pass found)
    if refused == []:
        assert cbor._skip_stored(data, 0, None) == end, data.hex()
        if end != len(data):
            refused = None  # bytes after the item: refused as malformed (atk19z finding 1)
    try:
        value = cbor.decode_stored(data)
    except cbor.StoredTagError as exc:
        assert refused is None or exc.tag in refused, data.hex()
        return
    except DecodeError:  # malformed as the reference finds it (cbor2 < 6 reads a lone break)
        assert refused is None, data.hex()
        return
    except cbor2.CBORDecodeError:
        return
    assert refused == [], data.hex()
    assert repr(value) == repr(cbor2.loads(data))


@given(values)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_decode_stored_reads_plain_data_as_cbor2_does(value: Any) -> None:
    """Plain data (integers beyond 64 bits too: bignums, tags 2 and 3; floats; text and bytes
    of every length form), canonical as pairkit writes it, or not."""
    longer = [value, 0.5, 1 << 70, -(1 << 90), b"x" * 300, "y" * 70_000, [1] * 30]
    for data in (cbor2.dumps(value, canonical=True), cbor2.dumps(longer)):
        assert strict_equal(cbor.decode_stored(data), cbor2.loads(data))


@pytest.mark.parametrize("options", [{"value_sharing": True}, {"string_referencing": True}])
def test_decode_stored_refuses_sharing_and_names_the_member(options: dict[str, bool]) -> None:
    shared = ["a long enough text", "a long enough text"]
    inner = cbor2.dumps({"x": [shared, shared]}, canonical=True, **options)
    data = head(5, 2) + enc("a") + enc([1, 2]) + enc("zz") + inner
    with pytest.raises(cbor.StoredTagError) as refused:
        cbor.decode_stored(data)
    assert refused.value.member == "zz"
    assert refused.value.tag in (28, 256)
    assert str(refused.value).startswith("its member 'zz' holds CBOR tag ")
    # the whole record marked (as cbor2 marks every map): a member's own tag is named first
    assert cbor.decode_stored(enc({"a": 1})) == {"a": 1}
    with pytest.raises(cbor.StoredTagError, match="member 'zz'"):
        cbor.decode_stored(b"\xd8\x1c" + data)
    with pytest.raises(cbor.StoredTagError, match="the record holds CBOR tag 28"):
        cbor.decode_stored(b"\xd8\x1c" + enc({"a": 1}))


@pytest.mark.parametrize("tag", [0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 256, 258, 55799])
def test_decode_stored_refuses_every_other_tag(tag: int) -> None:
    with pytest.raises(cbor.StoredTagError) as refused:
        cbor.decode_stored(head(4, 1) + head(6, tag) + enc("x"))
    assert refused.value.tag == tag and refused.value.member is None


def test_decode_stored_is_one_pass_however_deep() -> None:
    """No recursion in the pass: it goes through 100,000 nested arrays (and indefinite ones),
    and refuses a tag at their bottom before cbor2 reads anything."""
    for opening in (b"\x81", b"\x9f"):
        deep = opening * 100_000 + b"\x00" + (b"\xff" * 100_000 if opening == b"\x9f" else b"")
        assert cbor._skip_stored(deep, 0, None) == len(deep)
    with pytest.raises(cbor.StoredTagError):
        cbor._skip_stored(b"\x81" * 100_000 + b"\xd8\x1c\x00", 0, None)


def test_decode_stored_refuses_a_record_nested_deeper_than_pairkit_writes() -> None:
    """cbor2 5.x (which pyproject allows) recurses once per level: a record of 2,000 nested
    arrays raised a raw RecursionError at open (atk19z finding 2).  The pass refuses nesting
    past :data:`cbor.STORED_DEPTH` (pairkit writes a handful of levels) before cbor2 reads."""
    depth = cbor.STORED_DEPTH
    at_limit = b"\xa1\x61a" + b"\x81" * (depth - 1) + b"\x00"  # {"a": [[...[0]...]]}
    assert cbor.decode_stored(at_limit) == cbor2.loads(at_limit)
    for deeper in (b"\xa1\x61a" + b"\x81" * depth + b"\x00",
                   b"\xc2" * 5_000 + b"\x41\x01",  # bignum tags in front: levels too (atk19y)
                   b"\x81" * 100_000 + b"\xd8\x1c\x00", b"\x9f" * 2_000 + b"\xff" * 2_000):
        with pytest.raises(DecodeError, match="nested deeper"):
            cbor.decode_stored(deeper)


@pytest.mark.parametrize("data", [
    # [ {0: <break>}, h'aaaaaa' ] as the pass reads it, then more; cbor2 5.x reads the break as
    # the map's value and goes on: [ {0: break_marker, h'aaaaaa': 28([0])}, 0 ]
    bytes.fromhex("82" "bf00ff" "43aaaaaa" "d81c8100" "ff" "00"),
    bytes.fromhex("a1616100" "d81c8100"),  # {"a": 0}, then a shared value the pass never read
    bytes.fromhex("a1616100" "00"),        # {"a": 0}, then anything
], ids=["break-as-a-value", "a-tag-after", "bytes-after"])
def test_decode_stored_refuses_bytes_its_pass_did_not_read(data: bytes) -> None:
    """atk19z finding 1 (medium): the pass read one item and did not check it reached the end;
    cbor2 5.x, reading a break as a value, decoded past where the pass stopped, and a shared
    tree there cost 2**depth again.  A record is one item to its last byte, or refused."""
    with pytest.raises(DecodeError):
        cbor.decode_stored(data)
