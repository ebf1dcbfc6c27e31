"""Tests for pairing.framing: fragmentation to a link MTU and bounded reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing.errors import (
    ConfigError,
    DecodeError,
    LinkClosedError,
    PairingError,
    TooLargeError,
)
from pairkit.pairing.framing import (
    DEFAULT_MAX_MESSAGE,
    FLAG_FIRST,
    FLAG_LAST,
    MAX_MESSAGE_LIMIT,
    Reassembler,
    fragment,
)


def reassemble(fragments: list[bytes], max_message: int = DEFAULT_MAX_MESSAGE) -> bytes:
    """Feed every fragment; exactly the last one must complete the message."""
    r = Reassembler(max_message)
    for piece in fragments[:-1]:
        assert r.feed(piece) is None
        assert r.in_progress
    out = r.feed(fragments[-1])
    assert out is not None
    assert not r.in_progress and r.buffered == 0
    return out


# -- layout ----------------------------------------------------------------------------------


def test_small_message_is_one_fragment_with_first_and_last() -> None:
    assert fragment(b"abc", 20) == [bytes([FLAG_FIRST | FLAG_LAST, 3]) + b"abc"]


def test_empty_message() -> None:
    assert fragment(b"", 20) == [b"\xc0\x00"]
    assert reassemble(fragment(b"", 20)) == b""


def test_multi_fragment_layout() -> None:
    message = bytes(range(256)) + bytes(44)  # 300 bytes: LEB128 length ac 02
    pieces = fragment(message, 20)
    assert pieces[0] == b"\x80\xac\x02" + message[:17]
    assert all(p[0] == 0x00 for p in pieces[1:-1])
    assert pieces[-1][0] == FLAG_LAST
    assert all(len(p) == 20 for p in pieces[:-1])
    assert b"".join(p[1:] for p in pieces[1:]) == message[17:]
    assert reassemble(pieces) == message


@pytest.mark.parametrize("mtu", [20, 23, 185, 247, 512, 65535])
def test_boundary_sizes(mtu: int) -> None:
    # Sizes around "fits in the first fragment" and around each later fragment boundary.
    for size in {0, 1, mtu - 3, mtu - 2, mtu - 1, mtu, mtu + 1, 2 * mtu - 4, 2 * mtu, 5 * mtu + 7}:
        message = bytes(i % 251 for i in range(size))
        pieces = fragment(message, mtu)
        assert all(len(p) <= mtu for p in pieces)
        assert reassemble(pieces) == message


def test_largest_default_message_round_trips() -> None:
    message = bytes(DEFAULT_MAX_MESSAGE)
    assert reassemble(fragment(message, 512)) == message
    with pytest.raises(TooLargeError):
        fragment(message + b"\x00", 512)


def test_back_to_back_messages_on_one_reassembler() -> None:
    r = Reassembler(1000)
    got = []
    for size in (0, 5, 50, 500, 1000, 17):
        for piece in fragment(bytes([size % 256]) * size, 20, max_message=1000):
            out = r.feed(piece)
            if out is not None:
                got.append(out)
    assert got == [bytes([s % 256]) * s for s in (0, 5, 50, 500, 1000, 17)]


@given(
    message=st.binary(max_size=4000),
    mtu=st.integers(min_value=20, max_value=512),
)
def test_round_trip_property(message: bytes, mtu: int) -> None:
    pieces = fragment(message, mtu)
    assert all(len(p) <= mtu for p in pieces)
    # No wasted fragments: every fragment but the last is full.
    assert all(len(p) == mtu for p in pieces[:-1])
    assert reassemble(pieces) == message


@settings(max_examples=20)
@given(size=st.integers(min_value=4000, max_value=200_000), mtu=st.integers(20, 512))
def test_round_trip_large_sizes(size: int, mtu: int) -> None:
    message = bytes(i & 0xFF for i in range(size))
    assert reassemble(fragment(message, mtu)) == message


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [0, 19, 65536, -1, True, 20.0, "20"])
def test_bad_mtu(mtu: object) -> None:
    with pytest.raises(ConfigError) as info:
        fragment(b"x", mtu)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bound", [-1, MAX_MESSAGE_LIMIT + 1, True, 1.5])
def test_bad_max_message(bound: object) -> None:
    with pytest.raises(ConfigError):
        Reassembler(bound)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        fragment(b"x", 20, max_message=bound)  # type: ignore[arg-type]


def test_fragment_refuses_non_bytes() -> None:
    with pytest.raises(ConfigError):
        fragment("text", 20)  # type: ignore[arg-type]


def test_fragment_accepts_bytes_like() -> None:
    assert reassemble(fragment(bytearray(b"hello" * 10), 20)) == b"hello" * 10
    assert reassemble(fragment(memoryview(b"hello" * 10), 20)) == b"hello" * 10


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "error", "words"),
    [
        ([b""], DecodeError, "empty fragment"),
        ([b"\xc1\x00"], DecodeError, "reserved"),
        ([b"\x20"], DecodeError, "reserved"),
        ([b"\x00abc"], DecodeError, "no message started"),
        ([b"\x40abc"], DecodeError, "no message started"),
        ([b"\x80\x05ab", b"\x80\x01a"], DecodeError, "before the previous one was complete"),
        ([b"\x80\x05ab", b"\xc0\x01a"], DecodeError, "before the previous one was complete"),
        ([b"\x80\x05ab", b"\x00"], DecodeError, "carries no data"),
        ([b"\xc0\x02abc"], DecodeError, "more than the announced"),
        ([b"\x80\x05ab", b"\x00cdef"], DecodeError, "more than the announced"),
        ([b"\xc0\x05ab"], DecodeError, "ended after 2 of its announced 5"),
        ([b"\x80\x05ab", b"\x40c"], DecodeError, "ended after 3"),
        ([b"\x80\x02ab"], DecodeError, "not marked as the last"),
        ([b"\x80\x05ab", b"\x00cde"], DecodeError, "not marked as the last"),
        ([b"\xc0\x81\x00a"], DecodeError, "shortest form"),
        ([b"\xc0\x80\x80\x80\x80\x01"], DecodeError, "longer than 4 bytes"),
        ([b"\xc0"], DecodeError, "ends inside its message length"),
        ([b"\x80\x81"], DecodeError, "ends inside its message length"),
        ([b"\x80\xe9\x07"], TooLargeError, "announced a message of 1001 bytes"),
        ([b"\x80\xff\xff\xff\x7f"], TooLargeError, "268435455"),
    ],
)
def test_malformed_sequences(pieces: list[bytes], error: type[PairingError], words: str) -> None:
    r = Reassembler(1000)
    for piece in pieces[:-1]:
        assert r.feed(piece) is None
    with pytest.raises(error, match=words):
        r.feed(pieces[-1])
    assert r.failed
    assert r.buffered == 0
    # Poisoned (STYLE.md rule 4): even a perfectly good fragment is refused now.
    with pytest.raises(LinkClosedError, match="failed earlier"):
        r.feed(b"\xc0\x01a")


def test_oversize_is_refused_before_any_buffering() -> None:
    r = Reassembler(100)
    with pytest.raises(TooLargeError):
        r.feed(fragment(bytes(101), 20, max_message=101)[0])
    assert r.buffered == 0


def test_non_bytes_fragment_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        Reassembler().feed("\xc0\x00")  # type: ignore[arg-type]


def test_exact_bound_is_accepted() -> None:
    message = bytes(range(200))
    assert reassemble(fragment(message, 20, max_message=200), max_message=200) == message
    with pytest.raises(TooLargeError):
        reassemble(fragment(message, 20, max_message=200), max_message=199)


# -- fuzzing: only pairkit errors escape, and the buffer stays bounded -------------------------


def _feed_all(r: Reassembler, pieces: list[bytes]) -> None:
    for piece in pieces:
        try:
            r.feed(piece)
        except PairingError:
            return
        assert r.buffered <= r.max_message


@given(pieces=st.lists(st.binary(max_size=40), max_size=30), bound=st.integers(0, 300))
def test_arbitrary_fragments_raise_only_pairing_errors(pieces: list[bytes], bound: int) -> None:
    _feed_all(Reassembler(bound), pieces)


@given(
    message=st.binary(max_size=600),
    mtu=st.integers(20, 64),
    data=st.data(),
)
def test_mutated_streams_raise_only_pairing_errors(
    message: bytes, mtu: int, data: st.DataObject
) -> None:
    pieces = fragment(message, mtu)
    stream = b"".join(pieces)
    # Flip, drop or duplicate something, then feed; also feed the joined stream re-cut at random.
    i = data.draw(st.integers(0, len(pieces) - 1))
    choice = data.draw(st.sampled_from(["flip", "drop", "dup", "recut"]))
    if choice == "flip":
        piece = bytearray(pieces[i])
        bit = data.draw(st.integers(0, len(piece) * 8 - 1))
        piece[bit // 8] ^= 1 << (bit % 8)
        pieces[i] = bytes(piece)
    elif choice == "drop":
        del pieces[i]
    elif choice == "dup":
        pieces.insert(i, pieces[i])
    else:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    _feed_all(Reassembler(len(message)), pieces)


def test_byte_by_byte_feeding_is_refused_cleanly() -> None:
    # A transport bug that splits fragments must give a typed error, never a wrong message.
    r = Reassembler(1000)
    stream = b"".join(fragment(bytes(300), 20))
    with pytest.raises(PairingError):
        for i in range(len(stream)):
            assert r.feed(stream[i : i + 1]) is None


@pytest.mark.parametrize("mtu", [20, 21, 22, 23, 129, 130, 131, 132, 8192, 16386, 65535])
def test_the_single_fragment_fast_path_gives_the_general_paths_bytes(mtu: int) -> None:
    # fragment() and Reassembler.feed() take a short cut for bytes that fit one fragment;
    # a bytearray takes the general path: both must give the same fragments and messages.
    for size in (0, 1, 17, 18, 19, 20, 126, 127, 128, 129, 130, 16382, 16383, 16384, 16385):
        message = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        for bound in (DEFAULT_MAX_MESSAGE, size, max(0, size - 1)):
            try:
                fast = fragment(message, mtu, max_message=bound)
            except TooLargeError:
                with pytest.raises(TooLargeError):
                    fragment(bytearray(message), mtu, max_message=bound)
                continue
            assert fast == fragment(bytearray(message), mtu, max_message=bound)
            r = Reassembler(bound)
            got = [r.feed(piece) for piece in fast]
            assert got[-1] == message and all(g is None for g in got[:-1])


@pytest.mark.parametrize("piece", [
    b"\xc0\x00", b"\xc0\x01", b"\xc0\x02ab", b"\xc0\x01ab", b"\xc0\x80\x00", b"\xc0\x80\x01",
    b"\xc0\x80\x01" + bytes(128), b"\xc0\x80\x01" + bytes(127), b"\xc0\x81\x00" + bytes(1),
    b"\xc0\xff\x7f" + bytes(16383), b"\xc0\x80\x80\x01" + bytes(16384), b"\xc0", b"\x80\x01a",
    b"\x40a", b"\xc1\x01a", b"\xc0\x05abcde", b"\xc0\x06abcdef",
])
def test_a_single_fragment_is_read_alike_on_both_paths(piece: bytes) -> None:
    # The same fragment as bytes (which may take the short cut) and as a bytearray (which
    # never does): the same message, or the same kind of error, and both readers poisoned.
    for bound in (0, 5, 127, 128, DEFAULT_MAX_MESSAGE):
        results = []
        for data in (piece, bytearray(piece)):
            r = Reassembler(bound)
            try:
                results.append(("ok", r.feed(data)))
            except PairingError as exc:
                results.append(("error", type(exc)))
                with pytest.raises(LinkClosedError):
                    r.feed(b"\xc0\x00")
        assert results[0] == results[1], bound
