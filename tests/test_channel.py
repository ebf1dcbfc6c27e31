"""Tests for pairing.channel: AEAD records, replay rejection, rekeying, authenticated close."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pairkit.pairing import framing
from pairkit.pairing.channel import (
    FLAG_CLOSE,
    FLAG_REKEY,
    HEADER_SIZE,
    MAX_RECORD_LIMIT,
    MAX_SEQUENCE,
    TAG_SIZE,
    ChannelConfig,
    ChannelState,
    PeerClosedError,
    SecureChannel,
    SequenceExhaustedError,
    rekey,
)
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LinkClosedError,
    PairingError,
    ReplayError,
    TooLargeError,
)

K_AB = hashlib.sha256(b"key a->b").digest()
K_BA = hashlib.sha256(b"key b->a").digest()
CIPHERS = ["chachapoly", "aesgcm"]
BLE_MTUS = [20, 23, 185, 247, 512]


def make_pair(**config: object) -> tuple[SecureChannel, SecureChannel]:
    config.setdefault("mtu", 64)
    cfg = ChannelConfig(**config)  # type: ignore[arg-type]
    a = SecureChannel(cfg, send_key=K_AB, recv_key=K_BA)
    b = SecureChannel(cfg, send_key=K_BA, recv_key=K_AB)
    return a, b


def deliver(fragments: list[bytes], to: SecureChannel) -> bytes:
    """Feed one record's fragments; exactly the last must complete it."""
    for piece in fragments[:-1]:
        assert to.open(piece) is None
    out = to.open(fragments[-1])
    assert out is not None
    return out


def unframe(fragments: list[bytes]) -> bytes:
    """The record the fragments carry (via an independent reassembler)."""
    r = framing.Reassembler()
    out = [r.feed(p) for p in fragments]
    assert out[-1] is not None
    return out[-1]


def nonce(cipher: str, n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "little" if cipher == "chachapoly" else "big")


def aead(cipher: str, key: bytes) -> ChaCha20Poly1305 | AESGCM:
    return ChaCha20Poly1305(key) if cipher == "chachapoly" else AESGCM(key)


def forge_record(cipher: str, key: bytes, flags: int, seq: int, plaintext: bytes) -> bytes:
    header = bytes([flags]) + seq.to_bytes(8, "big")
    return header + aead(cipher, key).encrypt(nonce(cipher, seq), plaintext, header)


def assert_poisoned(ch: SecureChannel, first: type[PairingError]) -> None:
    assert ch.state is ChannelState.FAILED and ch.closed
    assert isinstance(ch.error, first)
    for call in (lambda: ch.open(b"\xc0\x00"), lambda: ch.seal(b"x"), ch.seal_close):
        with pytest.raises(LinkClosedError, match="failed earlier") as info:
            call()
        assert info.value.__cause__ is ch.error
    with pytest.raises(LinkClosedError):
        ch.request_rekey()


# -- configuration -----------------------------------------------------------------------------


def test_config_defaults_and_frozen() -> None:
    cfg = ChannelConfig(mtu=247)
    assert (cfg.cipher, cfg.rekey_after, cfg.max_record) == ("chachapoly", 2**20, 64 * 1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mtu = 20  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mtu": 19},
        {"mtu": 65536},
        {"mtu": "247"},
        {"mtu": 247, "cipher": "aes"},
        {"mtu": 247, "rekey_after": 0},
        {"mtu": 247, "rekey_after": True},
        {"mtu": 247, "rekey_after": 2**64},
        {"mtu": 247, "max_record": 0},
        {"mtu": 247, "max_record": MAX_RECORD_LIMIT + 1},
        {"mtu": 247, "max_record": 1.5},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        ChannelConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("send", "recv", "words"),
    [
        (K_AB, K_AB, "must differ"),
        (K_AB[:16], K_BA, "32 bytes"),
        (K_AB, K_BA + b"\x00", "32 bytes"),
        ("k" * 32, K_BA, "must be bytes"),
    ],
)
def test_bad_keys(send: bytes, recv: bytes, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        SecureChannel(ChannelConfig(mtu=20), send_key=send, recv_key=recv)


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("mtu", BLE_MTUS)
def test_round_trip_both_directions(cipher: str, mtu: int) -> None:
    a, b = make_pair(mtu=mtu, cipher=cipher)
    for size in (0, 1, mtu - 30, mtu, 3 * mtu + 5, 5000):
        message = bytes(i % 253 for i in range(max(size, 0)))
        pieces = a.seal(message)
        assert all(len(p) <= mtu for p in pieces)
        assert deliver(pieces, b) == message
        reply = message[::-1] + b"!"
        pieces = b.seal(reply)
        assert all(len(p) <= mtu for p in pieces)
        assert deliver(pieces, a) == reply
    assert a.records_sent == b.records_received == 6
    assert b.records_sent == a.records_received == 6


@pytest.mark.parametrize("cipher", CIPHERS)
def test_record_layout_byte_by_byte(cipher: str) -> None:
    a, _ = make_pair(mtu=512, cipher=cipher)
    a.seal(b"first")
    record = unframe(a.seal(b"hello"))  # sequence 1: little- and big-endian nonces differ
    assert len(record) == HEADER_SIZE + 5 + TAG_SIZE
    assert record[0] == 0  # no flags
    assert record[1:9] == (1).to_bytes(8, "big")
    # Decrypt independently: the nonce is Noise's encoding of the sequence, the header is AD.
    plain = aead(cipher, K_AB).decrypt(nonce(cipher, 1), record[9:], record[:9])
    assert plain == b"hello"
    other = "aesgcm" if cipher == "chachapoly" else "chachapoly"
    with pytest.raises(InvalidTag):
        aead(cipher, K_AB).decrypt(nonce(other, 1), record[9:], record[:9])


def test_one_mebibyte_at_mtu_244() -> None:
    # One 1 MiB record and the same 1 MiB as 16 default-size records: no timing assert, but the
    # global pytest timeout catches a quadratic slip.
    message = hashlib.shake_256(b"payload").digest(1 << 20)
    a, b = make_pair(mtu=244, max_record=1 << 20)
    assert deliver(a.seal(message), b) == message
    a, b = make_pair(mtu=244)
    chunk = 64 * 1024
    got = b"".join(
        deliver(a.seal(message[i : i + chunk]), b) for i in range(0, len(message), chunk)
    )
    assert got == message


# -- attacks on the record stream --------------------------------------------------------------


@pytest.fixture(params=CIPHERS)
def three_records(request: pytest.FixtureRequest) -> tuple[SecureChannel, list[list[bytes]]]:
    a, b = make_pair(mtu=20, cipher=request.param)
    return b, [a.seal(f"record {i}".encode() * 3) for i in range(3)]


def test_replayed_record(three_records: tuple[SecureChannel, list[list[bytes]]]) -> None:
    b, (r0, r1, _) = three_records
    deliver(r0, b)
    deliver(r1, b)
    with pytest.raises(ReplayError, match="replayed or duplicated record"):
        deliver(r0, b)
    assert_poisoned(b, ReplayError)


def test_duplicated_record(three_records: tuple[SecureChannel, list[list[bytes]]]) -> None:
    b, (r0, _, _) = three_records
    deliver(r0, b)
    with pytest.raises(ReplayError, match="replayed or duplicated record"):
        deliver(r0, b)
    assert_poisoned(b, ReplayError)


def test_reordered_records(three_records: tuple[SecureChannel, list[list[bytes]]]) -> None:
    b, (_, r1, _) = three_records
    with pytest.raises(ReplayError, match="a record was dropped or reordered"):
        deliver(r1, b)
    assert_poisoned(b, ReplayError)


def test_dropped_record(three_records: tuple[SecureChannel, list[list[bytes]]]) -> None:
    b, (r0, _, r2) = three_records
    deliver(r0, b)
    with pytest.raises(ReplayError, match="dropped or reordered"):
        deliver(r2, b)
    assert_poisoned(b, ReplayError)


def test_truncated_record_then_next_record(
    three_records: tuple[SecureChannel, list[list[bytes]]],
) -> None:
    b, (r0, r1, _) = three_records
    for piece in r0[:-1]:
        assert b.open(piece) is None
    with pytest.raises(DecodeError, match="new message started"):
        b.open(r1[0])
    assert_poisoned(b, DecodeError)


def test_truncated_last_fragment(three_records: tuple[SecureChannel, list[list[bytes]]]) -> None:
    b, (r0, _, _) = three_records
    for piece in r0[:-1]:
        b.open(piece)
    with pytest.raises(DecodeError, match="ended after"):
        b.open(r0[-1][:-1])
    assert_poisoned(b, DecodeError)


@pytest.mark.parametrize("size", [0, 1, HEADER_SIZE + TAG_SIZE - 1])
def test_record_too_short_for_header_and_tag(size: int) -> None:
    _, b = make_pair()
    with pytest.raises(DecodeError, match="truncated"):
        deliver(framing.fragment(bytes(size), 64), b)
    assert_poisoned(b, DecodeError)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_single_bit_flip_in_a_record_fails_authentication(cipher: str) -> None:
    a, _ = make_pair(mtu=512, cipher=cipher)
    a.seal(b"zero")
    (piece,) = a.seal(b"the record under attack")
    start = 2  # the framing header of this one-fragment record: flags and a 1-byte length
    for bit in range(start * 8, len(piece) * 8):
        _, b = make_pair(mtu=512, cipher=cipher)
        b._recv.seq = 1  # as if record 0 had been opened; the forgery targets record 1
        forged = bytearray(piece)
        forged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(AuthenticationError, match="failed authentication"):
            b.open(bytes(forged))
        assert_poisoned(b, AuthenticationError)


def test_every_single_bit_flip_in_any_fragment_is_refused() -> None:
    a, _ = make_pair(mtu=20)
    pieces = a.seal(b"a record over several fragments")
    assert len(pieces) >= 3
    for index, piece in enumerate(pieces):
        for bit in range(len(piece) * 8):
            _, b = make_pair(mtu=20)
            forged = list(pieces)
            flipped = bytearray(piece)
            flipped[bit // 8] ^= 1 << (bit % 8)
            forged[index] = bytes(flipped)
            with pytest.raises((AuthenticationError, DecodeError, TooLargeError)):
                for p in forged:
                    assert b.open(p) is None
            assert b.state is ChannelState.FAILED


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_key_fails(cipher: str) -> None:
    cfg = ChannelConfig(mtu=23, cipher=cipher)
    a = SecureChannel(cfg, send_key=K_AB, recv_key=K_BA)
    b = SecureChannel(cfg, send_key=K_BA, recv_key=hashlib.sha256(b"other").digest())
    with pytest.raises(AuthenticationError):
        deliver(a.seal(b"hello"), b)
    assert_poisoned(b, AuthenticationError)


def test_cipher_mismatch_fails() -> None:
    a, _ = make_pair(cipher="chachapoly")
    _, b = make_pair(cipher="aesgcm")
    with pytest.raises(AuthenticationError):
        deliver(a.seal(b"hello"), b)


def test_reflected_record_fails() -> None:
    a, _ = make_pair()
    with pytest.raises(AuthenticationError):
        deliver(a.seal(b"hello"), a)


def test_authenticated_reserved_flags_are_refused() -> None:
    _, b = make_pair()
    record = forge_record("chachapoly", K_AB, 0x04, 0, b"x")
    with pytest.raises(DecodeError, match="reserved flag"):
        deliver(framing.fragment(record, 64), b)
    assert_poisoned(b, DecodeError)


def test_close_record_with_data_is_refused() -> None:
    _, b = make_pair()
    record = forge_record("chachapoly", K_AB, FLAG_CLOSE, 0, b"bye")
    with pytest.raises(DecodeError, match="close record carries data"):
        deliver(framing.fragment(record, 64), b)
    assert_poisoned(b, DecodeError)


# -- limits ------------------------------------------------------------------------------------


def test_seal_refuses_oversize_plaintext() -> None:
    a, b = make_pair(max_record=100)
    deliver(a.seal(bytes(100)), b)
    with pytest.raises(TooLargeError, match="over the limit of 100"):
        a.seal(bytes(101))
    assert_poisoned(a, TooLargeError)


def test_open_refuses_oversize_record_at_its_first_fragment() -> None:
    big = ChannelConfig(mtu=64, max_record=1000)
    small = ChannelConfig(mtu=64, max_record=100)
    a = SecureChannel(big, send_key=K_AB, recv_key=K_BA)
    b = SecureChannel(small, send_key=K_BA, recv_key=K_AB)
    deliver(a.seal(bytes(100)), b)
    pieces = a.seal(bytes(101))
    with pytest.raises(TooLargeError):
        b.open(pieces[0])
    assert_poisoned(b, TooLargeError)


def test_seal_refuses_non_bytes() -> None:
    a, _ = make_pair()
    with pytest.raises(ConfigError):
        a.seal("text")  # type: ignore[arg-type]


def test_sequence_exhaustion() -> None:
    a, b = make_pair()
    # Jump both ends to the last usable sequence number (2**64 - 1 is REKEY's nonce).
    a._send.seq = MAX_SEQUENCE
    b._recv.seq = MAX_SEQUENCE
    last = unframe(pieces := a.seal(b"last"))
    assert last[1:9] == MAX_SEQUENCE.to_bytes(8, "big")
    assert deliver(pieces, b) == b"last"
    with pytest.raises(SequenceExhaustedError, match="open a new one"):
        a.seal(b"one too many")
    assert_poisoned(a, SequenceExhaustedError)


def test_record_claiming_the_rekey_nonce_is_refused() -> None:
    _, b = make_pair()
    header = bytes([0]) + (2**64 - 1).to_bytes(8, "big")
    with pytest.raises(AuthenticationError):
        deliver(framing.fragment(header + bytes(TAG_SIZE), 64), b)


# -- rekeying ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_rekey_matches_noise_definition_computed_independently(cipher: str) -> None:
    # REKEY(k) = ENCRYPT(k, 2**64-1, b"", zeros)[:32] (Noise rev 34 §4.2); an AEAD's ciphertext
    # is the plaintext XORed with its keystream, so REKEY(k) is the keystream itself: ChaCha20
    # from block counter 1 (RFC 8439 §2.8), or AES-CTR from counter block nonce‖00000002
    # (NIST SP 800-38D, J0 + 1).
    key = K_AB
    if cipher == "chachapoly":
        engine = Cipher(
            algorithms.ChaCha20(key, (1).to_bytes(4, "little") + nonce(cipher, 2**64 - 1)), None
        )
    else:
        engine = Cipher(
            algorithms.AES(key), modes.CTR(nonce(cipher, 2**64 - 1) + b"\x00\x00\x00\x02")
        )
    expected = engine.encryptor().update(bytes(32))
    assert rekey(cipher, key) == expected  # type: ignore[arg-type]
    assert rekey(cipher, key) != key  # type: ignore[arg-type]


def test_rekey_argument_checks() -> None:
    with pytest.raises(ConfigError):
        rekey("rot13", K_AB)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        rekey("chachapoly", b"short")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_automatic_rekey_interoperates_and_old_key_is_retired(cipher: str) -> None:
    a, b = make_pair(mtu=23, cipher=cipher, rekey_after=3)
    records = []
    for i in range(10):
        pieces = a.seal(f"message {i}".encode())
        records.append(unframe(pieces))
        assert deliver(pieces, b) == f"message {i}".encode()
    flagged = [i for i, r in enumerate(records) if r[0] & FLAG_REKEY]
    assert flagged == [2, 5, 8]
    # Records 0-2 are under the handshake key, 3-5 under REKEY(k), 6-8 under REKEY(REKEY(k)).
    keys = [K_AB, rekey(cipher, K_AB)]  # type: ignore[arg-type]
    keys.append(rekey(cipher, keys[1]))  # type: ignore[arg-type]
    for i, record in enumerate(records[:9]):
        right = keys[i // 3]
        plain = aead(cipher, right).decrypt(nonce(cipher, i), record[9:], record[:9])
        assert plain == f"message {i}".encode()
        for wrong in keys:
            if wrong != right:
                with pytest.raises(InvalidTag):
                    aead(cipher, wrong).decrypt(nonce(cipher, i), record[9:], record[:9])


def test_each_direction_rekeys_on_its_own_schedule() -> None:
    cfg_a = ChannelConfig(mtu=40, rekey_after=2)
    cfg_b = ChannelConfig(mtu=40, rekey_after=5)
    a = SecureChannel(cfg_a, send_key=K_AB, recv_key=K_BA)
    b = SecureChannel(cfg_b, send_key=K_BA, recv_key=K_AB)
    a_flags, b_flags = [], []
    for i in range(12):
        pieces = a.seal(bytes([i]) * i)
        a_flags.append(unframe(pieces)[0])
        assert deliver(pieces, b) == bytes([i]) * i
        pieces = b.seal(bytes([i]) * 2 * i)
        b_flags.append(unframe(pieces)[0])
        assert deliver(pieces, a) == bytes([i]) * 2 * i
    assert [i for i, f in enumerate(a_flags) if f & FLAG_REKEY] == [1, 3, 5, 7, 9, 11]
    assert [i for i, f in enumerate(b_flags) if f & FLAG_REKEY] == [4, 9]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_request_rekey_interoperates(cipher: str) -> None:
    a, b = make_pair(mtu=20, cipher=cipher)
    r0 = a.seal(b"before")
    a.request_rekey()
    r1 = a.seal(b"carries the flag")
    r2 = a.seal(b"under the new key")
    assert [unframe(r)[0] for r in (r0, r1, r2)] == [0, FLAG_REKEY, 0]
    for pieces, text in ((r0, b"before"), (r1, b"carries the flag"), (r2, b"under the new key")):
        assert deliver(pieces, b) == text
    new = rekey(cipher, K_AB)  # type: ignore[arg-type]
    record = unframe(r2)
    assert (
        aead(cipher, new).decrypt(nonce(cipher, 2), record[9:], record[:9]) == b"under the new key"
    )
    with pytest.raises(InvalidTag):
        aead(cipher, K_AB).decrypt(nonce(cipher, 2), record[9:], record[:9])
    # The other direction is untouched and still works; and it can rekey on its own.
    assert deliver(b.seal(b"reply"), a) == b"reply"
    b.request_rekey()
    b.request_rekey()  # asking twice still rekeys once
    for i in range(3):
        assert deliver(b.seal(bytes([i])), a) == bytes([i])
    assert deliver(a.seal(b"still fine"), b) == b"still fine"


def test_a_receiver_that_missed_the_rekey_flag_cannot_follow() -> None:
    # A record sealed after a rekey does not open under the old key even at the right sequence.
    a, b = make_pair()
    a.request_rekey()
    a.seal(b"flagged, lost")
    b._recv.seq = 1
    with pytest.raises(AuthenticationError):
        deliver(a.seal(b"new key"), b)


# -- close -------------------------------------------------------------------------------------


def test_clean_close_in_both_directions() -> None:
    a, b = make_pair(mtu=20)
    deliver(a.seal(b"bye soon"), b)
    close = a.seal_close()
    assert unframe(close)[0] & FLAG_CLOSE
    assert a.state is ChannelState.LOCAL_CLOSED
    with pytest.raises(LinkClosedError, match="this side already closed") as info:
        a.seal(b"more")
    assert not isinstance(info.value, PeerClosedError)
    with pytest.raises(LinkClosedError):
        a.seal_close()
    assert a.state is ChannelState.LOCAL_CLOSED  # refusing a send is not a failure
    for piece in close[:-1]:
        assert b.open(piece) is None
    with pytest.raises(PeerClosedError, match=r"^the peer closed the channel$"):
        b.open(close[-1])
    assert b.peer_closed and b.state is ChannelState.REMOTE_CLOSED and not b.closed
    with pytest.raises(PeerClosedError):
        b.open(b"\xc0\x00")  # every later open says the same, whatever it is fed
    # Half-close: b may still send, and a may still receive, then b closes too.
    assert deliver(b.seal(b"last words"), a) == b"last words"
    b_close = b.seal_close()
    with pytest.raises(PeerClosedError):
        deliver(b_close, a)
    assert a.state is ChannelState.CLOSED and b.state is ChannelState.CLOSED
    assert a.closed and b.closed and a.error is None and b.error is None


def test_truncation_is_told_apart_from_close() -> None:
    a, b = make_pair(mtu=20)
    pieces = a.seal(b"something long enough for several fragments")
    for piece in pieces[:-1]:
        b.open(piece)
    # The link ends here: no CLOSE record arrived, so the driver knows this was a truncation.
    assert not b.peer_closed and b.state is ChannelState.OPEN


def test_close_cannot_be_forged_by_flipping_the_flag() -> None:
    a, b = make_pair(mtu=512)
    (piece,) = a.seal(b"")
    forged = bytearray(piece)
    forged[2] ^= FLAG_CLOSE  # framing header is 2 bytes, then the record's flags byte
    with pytest.raises(AuthenticationError):
        b.open(bytes(forged))
    assert not b.peer_closed


# -- property and state-machine tests ----------------------------------------------------------


@settings(max_examples=50)
@given(pieces=st.lists(st.binary(max_size=80), max_size=20), mtu=st.integers(20, 100))
def test_arbitrary_input_raises_only_pairing_errors(pieces: list[bytes], mtu: int) -> None:
    _, b = make_pair(mtu=mtu, max_record=200)
    for piece in pieces:
        try:
            b.open(piece)
        except PairingError:
            assert b.state is ChannelState.FAILED
            return
        assert b._reassembler.buffered <= b.config.max_wire_record


class ChannelPair(RuleBasedStateMachine):
    """Two channels over an in-memory link that may deliver fragments late but never reorders.

    Random interleavings of seal / partial delivery / rekey requests must deliver every
    plaintext, in order, exactly once.
    """

    @initialize(
        cipher=st.sampled_from(CIPHERS),
        mtu=st.sampled_from([20, 23, 57, 185]),
        rekey_a=st.integers(1, 6),
        rekey_b=st.integers(1, 6),
    )
    def setup(self, cipher: str, mtu: int, rekey_a: int, rekey_b: int) -> None:
        self.mtu = mtu
        cfg_a = ChannelConfig(mtu=mtu, cipher=cipher, rekey_after=rekey_a, max_record=600)  # type: ignore[arg-type]
        cfg_b = dataclasses.replace(cfg_a, rekey_after=rekey_b)
        self.ends = {
            "a": SecureChannel(cfg_a, send_key=K_AB, recv_key=K_BA),
            "b": SecureChannel(cfg_b, send_key=K_BA, recv_key=K_AB),
        }
        self.wire: dict[str, deque[bytes]] = {"a": deque(), "b": deque()}  # sender -> fragments
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.received: dict[str, list[bytes]] = {"a": [], "b": []}  # by the sender's name

    @rule(side=st.sampled_from("ab"), data=st.binary(max_size=600))
    def seal(self, side: str, data: bytes) -> None:
        pieces = self.ends[side].seal(data)
        assert all(len(p) <= self.mtu for p in pieces)
        self.wire[side].extend(pieces)
        self.sent[side].append(data)

    @rule(side=st.sampled_from("ab"))
    def request_rekey(self, side: str) -> None:
        self.ends[side].request_rekey()

    @precondition(lambda self: any(self.wire.values()))
    @rule(side=st.sampled_from("ab"), count=st.integers(1, 40))
    def deliver(self, side: str, count: int) -> None:
        peer = self.ends["b" if side == "a" else "a"]
        wire = self.wire[side]
        for _ in range(min(count, len(wire))):
            out = peer.open(wire.popleft())
            if out is not None:
                self.received[side].append(out)

    @invariant()
    def delivered_in_order(self) -> None:
        for side in "ab":
            got = self.received[side]
            assert got == self.sent[side][: len(got)]
            # Everything whose fragments all arrived has been returned.
            if not self.wire[side]:
                assert got == self.sent[side]

    def teardown(self) -> None:
        if not hasattr(self, "ends"):
            return
        for side in "ab":
            self.deliver(side, 10**6)
        for side in "ab":
            assert self.received[side] == self.sent[side]


TestChannelPair = ChannelPair.TestCase
TestChannelPair.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
