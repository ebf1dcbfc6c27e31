"""Known-answer tests for pairing.noise: the cacophony and snow (multi-PSK) Noise vectors.

Each vector fixes both parties' keys (ephemerals included), so every handshake message, every
transport message and the handshake hash must match byte for byte.  The vectors' convention
(cacophony, snow, noiseprotocol): messages alternate initiator/responder across the whole list,
handshake messages first, then transport messages; after a one-way pattern (§7.4) only the
initiator sends.  Where the files come from: tests/vectors/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pairkit.pairing.errors import ConfigError
from pairkit.pairing.noise import CipherState, HandshakeState, parse_protocol_name, public_key

VECTOR_DIR = Path(__file__).parent / "vectors"
SOURCES = {"cacophony": "noise-cacophony.txt", "snow": "noise-snow-multipsk.txt"}


def _load() -> tuple[list[Any], list[tuple[str, str]]]:
    """All vectors as pytest params, and the (id, reason) of any we cannot run."""
    params: list[Any] = []
    unsupported: list[tuple[str, str]] = []
    for source, filename in SOURCES.items():
        vectors = json.loads((VECTOR_DIR / filename).read_text())
        for index, vector in enumerate(vectors):
            # Names may repeat across and within files: the index keeps ids unique.
            vector_id = f"{source}{index:03d}-{vector['protocol_name']}"
            try:
                parse_protocol_name(vector["protocol_name"])
            except ConfigError as exc:
                # Only genuinely out-of-scope features (fallback, hfs) land here.
                unsupported.append((vector_id, str(exc)))
                continue
            params.append(pytest.param(vector, id=vector_id))
    return params, unsupported


VECTORS, UNSUPPORTED = _load()


def test_vector_files_load_and_all_run() -> None:
    assert len(VECTORS) > 500, "the Noise vector files loaded (nearly) empty"
    # cacophony + snow multipsk hold 576 + 104 vectors and pairkit supports all of them.
    assert len(VECTORS) == 680
    assert UNSUPPORTED == []


def _party(vector: dict[str, Any], prefix: str, initiator: bool) -> HandshakeState:
    pattern = parse_protocol_name(vector["protocol_name"]).pattern
    # The files list every key they generated; pass only those the pattern has a use for
    # (HandshakeState refuses keys it would ignore).
    allowed = pattern.allowed_keys(initiator)
    keys = {
        name: bytes.fromhex(vector[f"{prefix}_{field}"])
        for name, field in (
            ("s", "static"),
            ("e", "ephemeral"),
            ("rs", "remote_static"),
            ("re", "remote_ephemeral"),
        )
        if name in allowed and f"{prefix}_{field}" in vector
    }

    def no_rng(size: int) -> bytes:
        raise AssertionError("a vector run must use the injected ephemeral key")

    return HandshakeState(
        vector["protocol_name"],
        initiator,
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        psks=[bytes.fromhex(p) for p in vector.get(f"{prefix}_psks", [])],
        rng=no_rng,
        **keys,
    )


@pytest.mark.parametrize("vector", VECTORS)
def test_vector(vector: dict[str, Any]) -> None:
    initiator = _party(vector, "init", True)
    responder = _party(vector, "resp", False)
    pattern = initiator.protocol.pattern
    messages = vector["messages"]
    handshake_len = len(pattern.messages)
    assert len(messages) >= handshake_len

    for index, message in enumerate(messages[:handshake_len]):
        payload, expected = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        assert sender.my_turn and not receiver.my_turn
        assert sender.write_message(payload) == expected, f"handshake message {index}"
        assert receiver.read_message(expected) == payload, f"handshake message {index}"

    assert initiator.complete and responder.complete
    if "handshake_hash" in vector:
        assert initiator.handshake_hash == bytes.fromhex(vector["handshake_hash"])
    assert responder.handshake_hash == initiator.handshake_hash

    # Both sides' remote keys are now the peer's real public keys.
    if "s" in pattern.required_keys(False) and "resp_static" in vector:
        assert initiator.remote_static == _public(initiator, vector["resp_static"])
    if "s" in pattern.required_keys(True) and "init_static" in vector:
        assert responder.remote_static == _public(initiator, vector["init_static"])
    assert responder.remote_ephemeral == _public(initiator, vector["init_ephemeral"])

    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    pairs: dict[bool, tuple[CipherState, CipherState]] = {
        True: (i_send, r_recv),
        False: (r_send, i_recv),
    }
    for index, message in enumerate(messages[handshake_len:], start=handshake_len):
        payload, expected = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        from_initiator = pattern.one_way or index % 2 == 0
        encrypt, decrypt = pairs[from_initiator]
        assert encrypt.encrypt_with_ad(b"", payload) == expected, f"transport message {index}"
        assert decrypt.decrypt_with_ad(b"", expected) == payload, f"transport message {index}"


def _public(state: HandshakeState, private_hex: str) -> bytes:
    return public_key(state.protocol.dh, bytes.fromhex(private_hex))
