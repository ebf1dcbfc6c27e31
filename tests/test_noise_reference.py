"""pairing/noise.py's generated messages against the specification's own loop (attack review
atk14a: a property checked and found holding).

Since session 14 each Noise message runs as one function that ``_message_source`` generates
from the pattern's steps.  Here a second ReadMessage/WriteMessage, written from Noise rev 34
§5.3 token by token on the module's :class:`SymmetricState` (§5.2, which the generator does not
touch) and ``cryptography``'s DH, runs beside it: for every pattern of the table, with a PSK
at the start and at the end, in pairkit's three protocols and in the other suites, the messages,
payloads, handshake hash and transport keys must be byte for byte the same; and a message with
any one byte flipped must be refused by the one exactly when it is by the other, the refused
state answering nothing more.  A step lost or reordered, a nonce reused, a key not mixed or a tag
not checked in the generated code makes them differ.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x448, x25519

from pairkit.pairing.errors import PairingError, ProtocolError
from pairkit.pairing.noise import (
    PATTERNS,
    HandshakeState,
    SymmetricState,
    generate_keypair,
    parse_protocol_name,
)

_PRIVATE = {"25519": x25519.X25519PrivateKey, "448": x448.X448PrivateKey}
_PUBLIC = {"25519": x25519.X25519PublicKey, "448": x448.X448PublicKey}


class Reference:
    """HandshakeState of Noise rev 34 §5.3 (with §9.2's PSK rules), token by token."""

    def __init__(self, name: str, initiator: bool, *, prologue: bytes, s: bytes | None,
                 e: bytes | None, rs: bytes | None, psks: list[bytes]) -> None:
        self.protocol = parse_protocol_name(name)
        self.pattern = self.protocol.pattern
        self.dh = self.protocol.dh
        self.initiator = initiator
        self.sym = SymmetricState(self.protocol)
        self.s, self.e, self.rs, self.re = s, e, rs, None
        self.psks = list(psks)
        self.index = 0
        self.sym.mix_hash(prologue)
        for own, tokens in ((True, self.pattern.initiator_premessage),
                            (False, self.pattern.responder_premessage)):
            for token in tokens:  # pre-messages: the initiator's first (§7.1)
                mine = own == initiator
                key = (self._public(self.s) if mine else self.rs) if token == "s" else None
                assert token == "s", "no pattern of the table has an 'e' pre-message"
                self.sym.mix_hash(key)  # type: ignore[arg-type]

    def _public(self, private: bytes | None) -> bytes:
        assert private is not None
        return _PRIVATE[self.dh].from_private_bytes(private).public_key().public_bytes_raw()

    def _dh(self, private: bytes | None, public: bytes | None) -> bytes:
        assert private is not None and public is not None
        key = _PRIVATE[self.dh].from_private_bytes(private)
        return key.exchange(_PUBLIC[self.dh].from_public_bytes(public))

    def _token_dh(self, token: str) -> bytes:
        # a DH token's first letter is the initiator's key, its second the responder's
        first, second = token
        mine, theirs = (first, second) if self.initiator else (second, first)
        private = self.e if mine == "e" else self.s
        public = self.re if theirs == "e" else self.rs
        return self._dh(private, public)

    def write(self, payload: bytes) -> bytes:
        out = b""
        for token in self.pattern.messages[self.index]:
            if token == "e":
                public = self._public(self.e)
                out += public
                self.sym.mix_hash(public)
                if self.pattern.has_psk:
                    self.sym.mix_key(public)
            elif token == "s":
                out += self.sym.encrypt_and_hash(self._public(self.s))
            elif token == "psk":
                self.sym.mix_key_and_hash(self.psks.pop(0))
            else:
                self.sym.mix_key(self._token_dh(token))
        out += self.sym.encrypt_and_hash(payload)
        self.index += 1
        return out

    def read(self, message: bytes) -> bytes:
        dhlen = self.protocol.dhlen
        for token in self.pattern.messages[self.index]:
            if token == "e":
                if len(message) < dhlen:
                    raise ValueError("too short")
                self.re, message = message[:dhlen], message[dhlen:]
                self.sym.mix_hash(self.re)
                if self.pattern.has_psk:
                    self.sym.mix_key(self.re)
            elif token == "s":
                size = dhlen + (16 if self.sym.cipher_state.has_key() else 0)
                if len(message) < size:
                    raise ValueError("too short")
                self.rs = self.sym.decrypt_and_hash(message[:size])
                message = message[size:]
            elif token == "psk":
                self.sym.mix_key_and_hash(self.psks.pop(0))
            else:
                self.sym.mix_key(self._token_dh(token))
        payload = self.sym.decrypt_and_hash(message)
        self.index += 1
        return payload


def _names() -> list[str]:
    names = []
    for base, pattern in PATTERNS.items():
        names.append(f"Noise_{base}_25519_ChaChaPoly_SHA256")
        names.append(f"Noise_{base}psk0_25519_ChaChaPoly_SHA256")
        names.append(f"Noise_{base}psk{len(pattern.messages)}_25519_AESGCM_BLAKE2s")
    names += [
        # pairkit's own (pin/compare/clear, qr, resume)
        "Noise_XXpsk0_25519_ChaChaPoly_SHA256",
        "Noise_IKpsk2_25519_ChaChaPoly_SHA256",
        "Noise_KK_25519_ChaChaPoly_SHA256",
        # the other DH, ciphers and hashes, and PSKs in the middle and twice
        "Noise_XX_448_AESGCM_SHA512",
        "Noise_XXpsk3_448_ChaChaPoly_BLAKE2b",
        "Noise_IKpsk1+psk2_25519_AESGCM_SHA512",
        "Noise_XXpsk0+psk2_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk0+psk2_448_AESGCM_BLAKE2s",
    ]
    return sorted(set(names))


def _parties(name: str, seed: int) -> dict[bool, tuple[HandshakeState, Reference]]:
    """The initiator and the responder, each as the module and as the reference, with the
    same keys, ephemerals and PSKs."""
    protocol = parse_protocol_name(name)
    pattern, dh = protocol.pattern, protocol.dh
    draw = random.Random(seed).randbytes
    statics = {True: generate_keypair(dh, draw), False: generate_keypair(dh, draw)}
    ephemerals = {True: draw(protocol.dhlen), False: draw(protocol.dhlen)}
    psks = [draw(32) for _ in range(pattern.psk_count)]
    out = {}
    for initiator in (True, False):
        needed = pattern.required_keys(initiator)
        allowed = pattern.allowed_keys(initiator)
        s = statics[initiator][0] if "s" in needed else None
        rs = statics[not initiator][1] if "rs" in needed else None
        e = ephemerals[initiator] if "e" in allowed else None
        kwargs: dict[str, Any] = {"prologue": b"atk14a", "psks": psks}
        if s is not None:
            kwargs["s"] = s
        if rs is not None:
            kwargs["rs"] = rs
        if e is not None:
            kwargs["e"] = e
        module = HandshakeState(name, initiator, **kwargs)
        reference = Reference(name, initiator, prologue=b"atk14a", s=s, e=e, rs=rs, psks=psks)
        out[initiator] = (module, reference)
    return out


def _transport_bytes(states: tuple[Any, Any], one_way: bool) -> tuple[bytes, ...]:
    first, second = states
    out = (first.encrypt_with_ad(b"ad", b"to the responder"),)
    if one_way:  # §7.4: no responder-to-initiator channel
        return out
    return (*out, second.encrypt_with_ad(b"ad", b"to the initiator"))


@pytest.mark.parametrize("name", _names())
def test_generated_messages_are_the_specifications_loop(name: str) -> None:
    """Every message, payload, the handshake hash and both transport keys, byte for byte."""
    parties = _parties(name, seed=len(name))
    count = len(parties[True][1].pattern.messages)
    for index in range(count):
        writer = index % 2 == 0
        (w_mod, w_ref), (r_mod, r_ref) = parties[writer], parties[not writer]
        payload = b"payload %d" % index
        sent = w_mod.write_message(payload)
        assert sent == w_ref.write(payload), f"message {index} differs"
        assert r_mod.read_message(sent) == r_ref.read(sent) == payload
    for initiator in (True, False):
        module, reference = parties[initiator]
        assert module.complete
        assert module.handshake_hash == reference.sym.h
        one_way = count == 1
        assert _transport_bytes(module.split(), one_way) == _transport_bytes(
            reference.sym.split(), one_way)


@pytest.mark.parametrize("name", [
    "Noise_XXpsk0_25519_ChaChaPoly_SHA256",
    "Noise_IKpsk2_25519_ChaChaPoly_SHA256",
    "Noise_KK_25519_ChaChaPoly_SHA256",
    "Noise_X1X1psk3_25519_AESGCM_BLAKE2s",
    "Noise_IXpsk0+psk2_448_ChaChaPoly_SHA512",
    "Noise_NK1_25519_ChaChaPoly_SHA256",
])
def test_a_flipped_byte_is_refused_exactly_when_the_specifications_loop_refuses_it(
    name: str,
) -> None:
    """Each message of the handshake, with each of its bytes flipped in turn: the module's read
    fails exactly when the reference's does (a tag that does not check, a key the DH refuses,
    a message cut short), with a PairingError, and its state then refuses anything more; when
    neither fails (an unauthenticated field), the payload read and the next message written
    are the same in both."""
    count = len(parse_protocol_name(name).pattern.messages)
    for index in range(count):
        probe = _parties(name, seed=7)
        messages = []
        for i in range(index + 1):  # the messages up to this one, untampered
            writer = i % 2 == 0
            sent = probe[writer][0].write_message(b"payload %d" % i)
            probe[writer][1].write(b"payload %d" % i)
            messages.append(sent)
            if i < index:
                probe[not writer][0].read_message(sent)
                probe[not writer][1].read(sent)
        sent = messages[index]
        for position in range(len(sent)):
            parties = _parties(name, seed=7)
            for i in range(index):
                writer = i % 2 == 0
                parties[writer][0].write_message(b"payload %d" % i)
                parties[writer][1].write(b"payload %d" % i)
                parties[not writer][0].read_message(messages[i])
                parties[not writer][1].read(messages[i])
            reader = index % 2 == 1
            module, reference = parties[reader]
            tampered = bytearray(sent)
            tampered[position] ^= 0x01
            try:
                expected: Any = reference.read(bytes(tampered))
            except Exception as exc:
                expected = exc
            try:
                got: Any = module.read_message(bytes(tampered))
            except PairingError as exc:
                got = exc
            where = f"message {index}, byte {position}"
            if isinstance(expected, Exception):
                assert isinstance(got, PairingError), f"{where}: accepted, reference refused"
                with pytest.raises(ProtocolError):
                    module.read_message(bytes(tampered))
                with pytest.raises(ProtocolError):
                    module.write_message(b"")
                continue
            assert not isinstance(got, PairingError), f"{where}: refused ({got!r})"
            assert got == expected, where
            if index + 1 < count:
                assert module.write_message(b"next") == reference.write(b"next"), where
            else:
                assert module.handshake_hash == reference.sym.h, where
