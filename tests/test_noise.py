"""Behaviour tests for pairing.noise beyond the known-answer vectors (Noise rev 34)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    ExpiredError,
    PairingError,
    ProtocolError,
    TooLargeError,
)
from pairkit.pairing.noise import (
    MAX_MESSAGE_LEN,
    PATTERNS,
    CipherState,
    HandshakeState,
    KeyPair,
    NonceExhaustedError,
    SymmetricState,
    generate_keypair,
    parse_protocol_name,
    public_key,
)

SUITE = "25519_ChaChaPoly_BLAKE2s"
MAX_NONCE = 2**64 - 1


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def static_keys(dh: str, seed: int) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """The initiator's and the responder's static key pairs that make_pair uses."""
    keys = random.Random(seed)
    return generate_keypair(dh, keys.randbytes), generate_keypair(dh, keys.randbytes)


def make_pair(
    protocol: str,
    *,
    seed: int = 1,
    prologue: bytes = b"prologue",
) -> tuple[HandshakeState, HandshakeState]:
    """An initiator and a responder with the keys and PSKs their pattern needs."""
    parsed = parse_protocol_name(protocol)
    pattern, dh = parsed.pattern, parsed.dh
    (init_s, init_s_pub), (resp_s, resp_s_pub) = static_keys(dh, seed)
    psks = [random.Random(-seed).randbytes(32) for _ in range(pattern.psk_count)]
    states = []
    for initiator in (True, False):
        own_s, peer_pub = (init_s, resp_s_pub) if initiator else (resp_s, init_s_pub)
        needed = pattern.required_keys(initiator)
        kwargs: dict[str, object] = {
            "prologue": prologue,
            "psks": psks,
            "rng": seeded_rng(seed * 2 + initiator),
        }
        if "s" in needed:
            kwargs["s"] = own_s
        if "rs" in needed:
            kwargs["rs"] = peer_pub
        states.append(HandshakeState(protocol, initiator, **kwargs))  # type: ignore[arg-type]
    return states[0], states[1]


def run_handshake(
    initiator: HandshakeState, responder: HandshakeState, payloads: list[bytes] | None = None
) -> list[bytes]:
    """Run the handshake to the end (bounded); return the payloads each reader got."""
    received = []
    for index in range(len(initiator.protocol.pattern.messages) + 1):
        if initiator.complete and responder.complete:
            return received
        assert index < len(initiator.protocol.pattern.messages), "too many round trips!"
        sender, receiver = (initiator, responder) if initiator.my_turn else (responder, initiator)
        payload = payloads[index] if payloads else b"hello %d" % index
        received.append(receiver.read_message(sender.write_message(payload)))
    raise AssertionError("too many round trips!")


# -- the pattern table (§7) ----------------------------------------------------------------

ONE_WAY = {"N", "K", "X"}
FUNDAMENTAL = {"NN", "NK", "NX", "KN", "KK", "KX", "XN", "XK", "XX", "IN", "IK", "IX"}
DEFERRED = {
    "NK1", "NX1", "X1N", "X1K", "XK1", "X1K1", "X1X", "XX1", "X1X1", "K1N", "K1K", "KK1",
    "K1K1", "K1X", "KX1", "K1X1", "I1N", "I1K", "IK1", "I1K1", "I1X", "IX1", "I1X1",
}  # fmt: skip


def test_table_holds_every_pattern_of_the_spec() -> None:
    assert len(DEFERRED) == 23
    assert set(PATTERNS) == ONE_WAY | FUNDAMENTAL | DEFERRED
    assert {name for name, p in PATTERNS.items() if p.one_way} == ONE_WAY


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_patterns_are_valid(name: str) -> None:
    """§7.3 rules 1 to 3 and the §7.1 naming: catches a typo in the table."""
    pattern = PATTERNS[name]
    has = {
        True: set(pattern.initiator_premessage),
        False: set(pattern.responder_premessage),
    }
    dhs: list[str] = []
    for index, tokens in enumerate(pattern.messages):
        sender = index % 2 == 0
        for token in tokens:
            if token in ("e", "s"):
                assert token not in has[sender], f"{name}: {token} sent twice"  # rule 2
                has[sender].add(token)
            else:
                assert token not in dhs, f"{name}: {token} twice"  # rule 3
                dhs.append(token)
                assert token[0] in has[True] and token[1] in has[False], (
                    f"{name}: {token}"
                )  # rule 1
    # The name says what happens to each static key (§7.4, §7.5): N none, K pre-message,
    # X or I transmitted (I in the first message).
    letters = name.replace("1", "")
    for initiator, letter in zip((True, False), letters, strict=False):
        pre = pattern.premessage(initiator)
        sent = [t for m in pattern.sent_by(initiator) for t in m]
        assert ("s" in pre) == (letter == "K"), name
        assert ("s" in sent) == (letter in "XI"), name
        if letter == "I":
            assert "s" in pattern.messages[0]


def test_psk_modifiers_place_tokens() -> None:
    pattern = parse_protocol_name("Noise_XXpsk0+psk3_25519_AESGCM_SHA256").pattern
    assert pattern.messages == (
        ("psk", "e"),
        ("e", "ee", "s", "es"),
        ("s", "se", "psk"),
    )
    assert pattern.psk_count == 2
    assert parse_protocol_name("Noise_NK1psk2_448_AESGCM_SHA256").pattern.messages[1] == (
        "e", "ee", "es", "psk",
    )  # fmt: skip
    assert PATTERNS["XX"].messages[0] == ("e",)  # the table itself is not modified


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Noise_XXfallback_25519_AESGCM_SHA256", "fallback"),
        ("Noise_XXfallback+psk0_25519_AESGCM_SHA256", "fallback"),
        ("Noise_XXhfs_25519+Kyber1024_AESGCM_SHA256", "hfs"),
        ("Noise_XXpsk3+psk0_25519_AESGCM_SHA256", "increasing"),
        ("Noise_XXpsk0+psk0_25519_AESGCM_SHA256", "distinct"),
        ("Noise_NNpsk3_25519_AESGCM_SHA256", "only 2"),
        ("Noise_XXfoo_25519_AESGCM_SHA256", "unknown"),
        ("Noise_ZZ_25519_AESGCM_SHA256", "pattern"),
        ("Noise_XX_25519_AESGCM", "Noise_<pattern>"),
        ("Nois_XX_25519_AESGCM_SHA256", "Noise_<pattern>"),
        ("Noise_XX_P256_AESGCM_SHA256", "DH"),
        ("Noise_XX_25519_AES_SHA256", "cipher"),
        ("Noise_XX_25519_AESGCM_MD5", "hash"),
        ("Noise_XX_25519_AESGCM_SHA-256", "letters"),
        ("Noise_XX_25519_AESGCM_SHA256" + "0" * 250, "255"),
        ("Noise_XX_25519_AESGCM_SHA256é", "ASCII"),
    ],
)
def test_bad_protocol_names_are_config_errors(name: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        HandshakeState(name, True)


# -- round trips --------------------------------------------------------------------------


def _variants() -> list[str]:
    names = []
    for name, pattern in sorted(PATTERNS.items()):
        names.append(name)
        names.append(f"{name}psk0")
        names.append(f"{name}psk{len(pattern.messages)}")
    return names


@pytest.mark.parametrize("pattern", _variants())
def test_every_pattern_completes_and_agrees(pattern: str) -> None:
    initiator, responder = make_pair(f"Noise_{pattern}_{SUITE}")
    payloads = [b"payload %d" % i for i in range(len(initiator.protocol.pattern.messages))]
    assert run_handshake(initiator, responder, payloads) == payloads
    assert initiator.handshake_hash == responder.handshake_hash
    (_, init_pub), (_, resp_pub) = static_keys("25519", 1)
    has_static = {
        role: "s" in initiator.protocol.pattern.required_keys(role) for role in (True, False)
    }
    assert initiator.remote_static == (resp_pub if has_static[False] else None)
    assert responder.remote_static == (init_pub if has_static[True] else None)
    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", b"to responder")) == (
        b"to responder"
    )
    if initiator.protocol.pattern.one_way:
        # §7.4: the second cipher state of a one-way pattern must not be used.
        with pytest.raises(ProtocolError):
            r_send.encrypt_with_ad(b"", b"back")
        with pytest.raises(ProtocolError):
            i_recv.decrypt_with_ad(b"", bytes(16))
    else:
        assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"back")) == b"back"


def test_remote_keys_are_the_peers_public_keys() -> None:
    initiator, responder = make_pair(f"Noise_XX_{SUITE}")
    run_handshake(initiator, responder)
    (init_s, _), (resp_s, _) = static_keys("25519", 1)
    assert initiator.remote_static == public_key("25519", resp_s)
    assert responder.remote_static == public_key("25519", init_s)
    assert initiator.remote_ephemeral is not None
    assert responder.remote_ephemeral is not None
    assert initiator.remote_ephemeral != responder.remote_ephemeral


def test_prologue_mismatch_fails_authentication() -> None:
    initiator, _ = make_pair(f"Noise_NK_{SUITE}", prologue=b"one")
    _, responder = make_pair(f"Noise_NK_{SUITE}", prologue=b"two")
    with pytest.raises(AuthenticationError):
        responder.read_message(initiator.write_message(b"zero-RTT"))


def test_psk_mismatch_fails_authentication() -> None:
    initiator, _ = make_pair(f"Noise_NNpsk0_{SUITE}", seed=1)
    _, responder = make_pair(f"Noise_NNpsk0_{SUITE}", seed=2)
    with pytest.raises(AuthenticationError):
        responder.read_message(initiator.write_message())


PROTOCOLS = [
    f"Noise_{pattern}_{dh}_{crypto}"
    for pattern in ("XX", "IK", "KK")
    for dh in ("25519", "448")
    for crypto in ("ChaChaPoly_BLAKE2s", "AESGCM_SHA256", "ChaChaPoly_SHA512", "AESGCM_BLAKE2b")
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    protocol=st.sampled_from(PROTOCOLS),
    seed=st.integers(0, 2**32),
    prologue=st.binary(max_size=64),
    handshake_payloads=st.lists(st.binary(max_size=300), min_size=3, max_size=3),
    transport=st.lists(st.tuples(st.booleans(), st.binary(max_size=2000)), max_size=8),
)
def test_random_payloads_round_trip(
    protocol: str,
    seed: int,
    prologue: bytes,
    handshake_payloads: list[bytes],
    transport: list[tuple[bool, bytes]],
) -> None:
    initiator, responder = make_pair(protocol, seed=seed, prologue=prologue)
    count = len(initiator.protocol.pattern.messages)
    assert run_handshake(initiator, responder, handshake_payloads) == handshake_payloads[:count]
    assert initiator.handshake_hash == responder.handshake_hash
    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    for from_initiator, payload in transport:
        encrypt, decrypt = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        ciphertext = encrypt.encrypt_with_ad(b"", payload)
        assert len(ciphertext) == len(payload) + 16
        assert decrypt.decrypt_with_ad(b"", ciphertext) == payload


# -- randomness -----------------------------------------------------------------------------


def test_ephemeral_comes_from_the_rng_and_is_deterministic() -> None:
    calls: list[int] = []

    def rng(size: int) -> bytes:
        calls.append(size)
        return bytes([7]) * size

    first = HandshakeState(f"Noise_NN_{SUITE}", True, rng=rng).write_message()
    second = HandshakeState(f"Noise_NN_{SUITE}", True, rng=rng).write_message()
    assert calls == [32, 32]
    assert first == second == public_key("25519", bytes([7]) * 32)
    assert HandshakeState("Noise_NN_448_AESGCM_SHA256", True, rng=rng).write_message() == (
        public_key("448", bytes([7]) * 56)
    )
    assert calls[-1] == 56


def test_injected_ephemeral_is_used_and_rng_is_not() -> None:
    def rng(size: int) -> bytes:
        raise AssertionError("rng must not be called")

    private = bytes(range(32))
    message = HandshakeState(f"Noise_NN_{SUITE}", True, e=private, rng=rng).write_message()
    assert message == public_key("25519", private)


def test_a_key_pair_is_the_same_static_key_as_its_private_bytes() -> None:
    """A KeyPair passed as ``s`` gives the handshake its private key's own public key, the same
    bytes as the raw private key gives; a KeyPair of another DH function is refused."""
    static, ephemeral = bytes(range(32)), bytes(range(1, 33))
    peer = bytes([9]) * 32
    name = "Noise_XX_25519_ChaChaPoly_SHA256"
    pair = KeyPair("25519", static)
    assert pair.public == public_key("25519", static) and repr(pair) == "<key pair>"
    messages = []
    for s in (static, pair, pair):
        initiator = HandshakeState(name, True, s=peer, e=ephemeral)
        responder = HandshakeState(name, False, s=s, e=peer)
        responder.read_message(initiator.write_message(b"one"))
        messages.append(responder.write_message(b"two"))
        initiator.read_message(messages[-1])
        assert initiator.remote_static == public_key("25519", static)
    assert messages[0] == messages[1] == messages[2]
    with pytest.raises(ConfigError, match="56 bytes for DH 448"):
        HandshakeState("Noise_XX_448_ChaChaPoly_SHA256", True, s=pair)
    with pytest.raises(ConfigError, match="unknown Noise DH"):
        KeyPair("1024", static)


def test_rng_returning_the_wrong_length_is_refused() -> None:
    state = HandshakeState(f"Noise_NN_{SUITE}", True, rng=lambda n: b"short")
    with pytest.raises(ConfigError, match="rng"):
        state.write_message()


# -- validation and errors -----------------------------------------------------------------


def test_missing_static_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"static private key \(s\)"):
        HandshakeState(f"Noise_XX_{SUITE}", True)
    with pytest.raises(ConfigError, match=r"remote static public key \(rs\)"):
        HandshakeState(f"Noise_IK_{SUITE}", True, s=bytes(32))


def test_unused_keys_are_config_errors() -> None:
    # In XX the peer's static key arrives in the handshake; passing rs would not check it.
    with pytest.raises(ConfigError, match="no use"):
        HandshakeState(f"Noise_XX_{SUITE}", True, s=bytes(32), rs=bytes(32))
    with pytest.raises(ConfigError, match="no use"):
        HandshakeState(f"Noise_NN_{SUITE}", True, s=bytes(32))
    with pytest.raises(ConfigError, match="no use"):
        HandshakeState(f"Noise_N_{SUITE}", False, s=bytes(32), e=bytes(32))


def test_key_lengths_are_checked() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        HandshakeState(f"Noise_XX_{SUITE}", True, s=bytes(31))
    with pytest.raises(ConfigError, match="56 bytes"):
        HandshakeState("Noise_XX_448_AESGCM_SHA256", True, s=bytes(32))
    with pytest.raises(ConfigError, match="32 bytes"):
        HandshakeState(f"Noise_NK_{SUITE}", True, rs=bytes(33))


@pytest.mark.parametrize(
    ("pattern", "psks"),
    [
        ("NNpsk0", []),
        ("NNpsk0+psk2", [bytes(32)]),
        ("NN", [bytes(32)]),
        ("NNpsk2", [bytes(32)] * 2),
    ],
)
def test_psk_count_must_match(pattern: str, psks: list[bytes]) -> None:
    with pytest.raises(ConfigError, match="pre-shared key"):
        HandshakeState(f"Noise_{pattern}_{SUITE}", True, psks=psks)


def test_psk_length_is_checked() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        HandshakeState(f"Noise_NNpsk0_{SUITE}", True, psks=[bytes(16)])


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        HandshakeState(f"Noise_XX_{SUITE}", True)


def _assert_poisoned(state: HandshakeState) -> None:
    with pytest.raises(ProtocolError, match="failed earlier"):
        state.write_message(b"")
    with pytest.raises(ProtocolError, match="failed earlier"):
        state.read_message(b"")
    with pytest.raises(ProtocolError, match="failed earlier"):
        state.split()
    with pytest.raises(ProtocolError, match="failed earlier"):
        _ = state.handshake_hash


def test_write_on_the_peers_turn_is_a_protocol_error_and_poisons() -> None:
    _, responder = make_pair(f"Noise_XX_{SUITE}")
    assert not responder.my_turn
    with pytest.raises(ProtocolError, match="peer's turn"):
        responder.write_message(b"too early")
    _assert_poisoned(responder)


def test_read_on_our_turn_is_a_protocol_error() -> None:
    initiator, responder = make_pair(f"Noise_XX_{SUITE}")
    with pytest.raises(ProtocolError, match="our turn"):
        initiator.read_message(responder.remote_ephemeral or bytes(32))
    _assert_poisoned(initiator)


def test_calls_after_completion_are_protocol_errors() -> None:
    initiator, responder = make_pair(f"Noise_NN_{SUITE}")
    with pytest.raises(ProtocolError, match="not complete"):
        initiator.split()
    with pytest.raises(ProtocolError, match="only once the handshake is complete"):
        _ = initiator.handshake_hash
    run_handshake(initiator, responder)
    assert not initiator.my_turn and not responder.my_turn
    initiator.split()
    with pytest.raises(ProtocolError, match="already taken"):
        initiator.split()
    with pytest.raises(ProtocolError, match="already complete"):
        responder.write_message(b"more")
    _assert_poisoned(responder)


@settings(max_examples=40, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_tampered_message_fails_authentication_and_poisons(position: int, bit: int) -> None:
    initiator, responder = make_pair(f"Noise_XX_{SUITE}")
    responder.read_message(initiator.write_message(b"one"))
    message = bytearray(responder.write_message(b"two"))
    # Every byte of XX's second message (e, encrypted s, encrypted payload) is authenticated.
    message[position % len(message)] ^= 1 << bit
    with pytest.raises(AuthenticationError):
        initiator.read_message(bytes(message))
    _assert_poisoned(initiator)


def test_truncated_message_is_refused() -> None:
    initiator, responder = make_pair(f"Noise_XX_{SUITE}")
    with pytest.raises(PairingError):
        responder.read_message(initiator.write_message()[:31])
    _assert_poisoned(responder)


LOW_ORDER = {
    "25519": [
        bytes(32),
        b"\x01" + bytes(31),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ],
    "448": [bytes(56), b"\x01" + bytes(55)],
}


@pytest.mark.parametrize(
    ("dh", "point"),
    [
        pytest.param(dh, p, id=f"{dh}-{p[:4].hex()}")
        for dh, points in LOW_ORDER.items()
        for p in points
    ],
)
def test_low_order_ephemeral_is_an_authentication_error(dh: str, point: bytes) -> None:
    # NK: the responder reads "e, es" and so computes DH(s, re) with the peer's bad point.
    _, responder = make_pair(f"Noise_NK_{dh}_ChaChaPoly_BLAKE2s")
    with pytest.raises(AuthenticationError, match="low-order point"):
        responder.read_message(point + bytes(16))
    _assert_poisoned(responder)


def test_low_order_remote_static_fails_at_the_first_dh() -> None:
    state = HandshakeState(f"Noise_NK_{SUITE}", True, rs=bytes(32))
    with pytest.raises(AuthenticationError):
        state.write_message()


def test_oversized_messages_are_refused() -> None:
    initiator, responder = make_pair(f"Noise_NN_{SUITE}")
    with pytest.raises(TooLargeError):
        responder.read_message(bytes(MAX_MESSAGE_LEN + 1))
    _assert_poisoned(responder)
    with pytest.raises(TooLargeError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN + 1))
    # 32 bytes of ephemeral key leave room for exactly 65503 bytes of cleartext payload.
    initiator, responder = make_pair(f"Noise_NN_{SUITE}")
    assert len(initiator.write_message(bytes(MAX_MESSAGE_LEN - 32))) == MAX_MESSAGE_LEN
    initiator, _ = make_pair(f"Noise_NN_{SUITE}")
    with pytest.raises(TooLargeError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN - 31))
    _assert_poisoned(initiator)


@settings(max_examples=150, deadline=None)
@given(
    protocol=st.sampled_from(
        [f"Noise_{p}_{SUITE}" for p in ("XX", "IK", "NK", "NNpsk0", "KK", "X", "XXpsk0+psk3")]
        + ["Noise_IK_448_AESGCM_SHA512"]
    ),
    stage=st.integers(0, 1),
    data=st.binary(max_size=400),
)
def test_arbitrary_bytes_raise_only_pairing_errors(protocol: str, stage: int, data: bytes) -> None:
    initiator, responder = make_pair(protocol)
    if stage == 1 and not initiator.protocol.pattern.one_way:
        responder.read_message(initiator.write_message(b"first"))
        receiver = initiator
    else:
        receiver = responder
    try:
        receiver.read_message(data)
    except PairingError:
        _assert_poisoned(receiver)


# -- CipherState (§5.1) ---------------------------------------------------------------------

KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("cipher", "aead", "order"),
    [("ChaChaPoly", ChaCha20Poly1305, "little"), ("AESGCM", AESGCM, "big")],
)
def test_nonce_encoding(cipher: str, aead: type, order: str) -> None:
    """§12.3, §12.4: 4 zero bytes, then n as 8 bytes, little-endian (ChaChaPoly) or big (AESGCM)."""
    state = CipherState(cipher, KEY)
    state.set_nonce(0x0102030405060708)
    nonce = bytes(4) + (0x0102030405060708).to_bytes(8, order)  # type: ignore[arg-type]
    assert state.encrypt_with_ad(b"ad", b"text") == aead(KEY).encrypt(nonce, b"text", b"ad")
    assert state.n == 0x0102030405060709


@pytest.mark.parametrize(
    ("cipher", "aead", "maxnonce"),
    [
        ("ChaChaPoly", ChaCha20Poly1305, bytes(4) + b"\xff" * 8),
        ("AESGCM", AESGCM, bytes(4) + b"\xff" * 8),
    ],
)
def test_rekey_follows_the_default_rekey(cipher: str, aead: type, maxnonce: bytes) -> None:
    """§4.2: REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, zerolen, zeros); n unchanged."""
    state = CipherState(cipher, KEY)
    state.encrypt_with_ad(b"", b"x")
    state.rekey()
    assert state.n == 1
    new_key = aead(KEY).encrypt(maxnonce, bytes(32), b"")[:32]
    expected = aead(new_key).encrypt(
        bytes(4) + (1).to_bytes(8, "little" if cipher == "ChaChaPoly" else "big"), b"y", b""
    )
    assert state.encrypt_with_ad(b"", b"y") == expected


@pytest.mark.parametrize("cipher", ["ChaChaPoly", "AESGCM"])
def test_rekey_interoperates(cipher: str) -> None:
    sender, receiver = CipherState(cipher, KEY), CipherState(cipher, KEY)
    for round_ in range(4):
        for i in range(3):
            message = b"round %d message %d" % (round_, i)
            assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", message)) == message
        sender.rekey()
        receiver.rekey()
    # A rekey on one side only: the other can no longer read, and its nonce does not move.
    sender.rekey()
    ciphertext = sender.encrypt_with_ad(b"", b"lost")
    before = receiver.n
    with pytest.raises(AuthenticationError):
        receiver.decrypt_with_ad(b"", ciphertext)
    assert receiver.n == before


def test_nonce_is_exhausted_at_2_64_minus_1() -> None:
    sender, receiver = CipherState("ChaChaPoly", KEY), CipherState("ChaChaPoly", KEY)
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    assert sender.n == MAX_NONCE
    with pytest.raises(NonceExhaustedError):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(ExpiredError):
        receiver.decrypt_with_ad(b"", bytes(32))
    # Rekey does not reset n (§11.3).
    sender.rekey()
    with pytest.raises(NonceExhaustedError):
        sender.encrypt_with_ad(b"", b"still too many")


@pytest.mark.parametrize("nonce", [-1, 2**64, 1.0, True, "1"])
def test_set_nonce_validates(nonce: object) -> None:
    with pytest.raises(ConfigError):
        CipherState("AESGCM", KEY).set_nonce(nonce)  # type: ignore[arg-type]


def test_cipher_state_without_key_passes_through_and_cannot_rekey() -> None:
    state = CipherState("AESGCM")
    assert not state.has_key()
    assert state.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.decrypt_with_ad(b"ad", b"plain") == b"plain"
    with pytest.raises(ProtocolError):
        state.rekey()
    state.initialize_key(KEY)
    assert state.has_key() and state.n == 0


def test_cipher_state_limits() -> None:
    state = CipherState("ChaChaPoly", KEY)
    assert len(state.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - 16))) == MAX_MESSAGE_LEN
    with pytest.raises(TooLargeError):
        state.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - 15))
    with pytest.raises(TooLargeError):
        state.decrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN + 1))
    with pytest.raises(AuthenticationError):
        state.decrypt_with_ad(b"", bytes(15))
    with pytest.raises(ConfigError):
        CipherState("ChaChaPoly", bytes(16))
    with pytest.raises(ConfigError, match="unknown Noise cipher"):
        CipherState("DES")


def test_reprs_do_not_show_keys() -> None:
    private = bytes([0xAB]) * 32
    state = HandshakeState(f"Noise_XX_{SUITE}", True, s=private)
    cipher = CipherState("ChaChaPoly", private)
    for text in (repr(state), repr(cipher), repr(vars(state))):
        assert "ab" * 8 not in text.lower() and "\\xab" not in text


# -- SymmetricState (§5.2) and HKDF (§4.3) ----------------------------------------------------


@pytest.mark.parametrize(
    ("hash_name", "algorithm"),
    [
        ("SHA256", hashes.SHA256()),
        ("SHA512", hashes.SHA512()),
        ("BLAKE2s", hashes.BLAKE2s(32)),
        ("BLAKE2b", hashes.BLAKE2b(64)),
    ],
)
def test_mix_key_is_rfc5869_hkdf(hash_name: str, algorithm: hashes.HashAlgorithm) -> None:
    """§4.3: HKDF is RFC 5869 with ck as salt and empty info; MixKey keeps output 2's first 32."""
    name = f"Noise_NN_448_AESGCM_{hash_name}"  # at most 32 bytes: h starts as the name
    state = SymmetricState(name)
    hashlen = algorithm.digest_size
    assert state.h == name.encode().ljust(hashlen, b"\x00")  # InitializeSymmetric, short name
    ikm = bytes(range(32))
    state.mix_key(ikm)
    okm = HKDF(algorithm, 2 * hashlen, name.encode().ljust(hashlen, b"\x00"), b"").derive(ikm)
    expected_key = okm[hashlen : hashlen + 32]
    assert state.cipher_state.encrypt_with_ad(b"", b"x") == CipherState(
        "AESGCM", expected_key
    ).encrypt_with_ad(b"", b"x")


@pytest.mark.parametrize("hash_name", ["SHA256", "SHA512"])
@pytest.mark.parametrize("num_outputs", [2, 3])
@pytest.mark.parametrize("ikm_len", [0, 1, 32, 64, 200])
def test_hkdf_in_one_call_is_section_4_3_hkdf(
    hash_name: str, num_outputs: int, ikm_len: int
) -> None:
    """Where cryptography has the hash, Noise's HKDF is one RFC 5869 call (issue 13); it must
    give §4.3's three or four HMACs byte for byte, Split's empty input key material included."""
    from pairkit.pairing.noise import _HASHES

    funcs = _HASHES[hash_name]
    assert funcs.rfc5869 is not None
    rng = seeded_rng(ikm_len * 10 + num_outputs)
    ck, ikm = rng(funcs.hashlen), rng(ikm_len) if ikm_len else b""
    fast = funcs.hkdf(ck, ikm, num_outputs)
    assert fast == funcs.hkdf_hmac(ck, ikm, num_outputs)
    assert len(fast) == num_outputs and all(len(o) == funcs.hashlen for o in fast)


def test_blake2_hkdf_follows_section_4_3_line_by_line() -> None:
    from pairkit.pairing.noise import _HASHES

    for name in ("BLAKE2s", "BLAKE2b"):
        assert _HASHES[name].rfc5869 is None  # the HMAC form is the one in use


def test_long_protocol_names_are_hashed() -> None:
    import hashlib

    name = "Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2s"
    assert len(name) > 32
    assert SymmetricState(name).h == hashlib.blake2s(name.encode()).digest()


def test_public_helpers() -> None:
    private, public = generate_keypair("448", seeded_rng(3))
    assert len(private) == 56 and public == public_key("448", private)
    with pytest.raises(ConfigError, match="unknown Noise DH"):
        generate_keypair("P256")
    with pytest.raises(ConfigError, match="32 bytes"):
        public_key("25519", bytes(5))


def test_hmac_block_size_is_noise_blocklen() -> None:
    """§4.3, §12.5-§12.8: HMAC pads keys to BLOCKLEN; hashlib's block_size must agree."""
    from pairkit.pairing.noise import _HASHES

    expected = {"SHA256": 64, "SHA512": 128, "BLAKE2s": 64, "BLAKE2b": 128}
    assert {name: h.blocklen for name, h in _HASHES.items()} == expected
    assert {name: h.new().block_size for name, h in _HASHES.items()} == expected


def test_non_bytes_arguments_are_config_errors() -> None:
    initiator, _ = make_pair(f"Noise_NN_{SUITE}")
    with pytest.raises(ConfigError, match="must be bytes"):
        initiator.write_message(5)  # type: ignore[arg-type]
    _assert_poisoned(initiator)
    with pytest.raises(ConfigError, match="must be bytes"):
        CipherState("AESGCM", KEY).encrypt_with_ad(b"", 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be bytes"):
        HandshakeState(f"Noise_NN_{SUITE}", True, prologue="text")  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_message_functions_come_from_the_pattern_alone(pattern: str) -> None:
    # Each message a role writes or reads runs as a function generated from the pattern's
    # tokens (issue 13): its source is the same whatever the protocol is called, and it
    # holds a step for every token of the message, in order, then the payload (§5.3).
    from pairkit.pairing import noise

    for dh, cipher, hash_name in (("25519", "ChaChaPoly", "SHA256"), ("448", "AESGCM", "BLAKE2b")):
        name = f"Noise_{pattern}_{dh}_{cipher}_{hash_name}"
        for initiator in (True, False):
            role = noise._role(name, initiator)
            for index, tokens in enumerate(PATTERNS[pattern].messages):
                write = (index % 2 == 0) == initiator
                fns = role.writers if write else role.readers
                other = role.readers if write else role.writers
                assert fns[index] is not None and other[index] is None
                source = noise._message_source(role, index, write)
                assert name not in source  # no input in the code: the name is only its label
                steps = [line.strip()[2:] for line in source.splitlines()
                         if line.strip().startswith("# ")]
                assert steps == [*tokens, "payload"]
