"""pairkit's own protocols against their frozen transcripts (tests/vectors/pairkit-methods.json).

Each side is rebuilt from the vector's inputs and fed the other side's recorded messages: what it
sends must be the recorded bytes, and its keys and fingerprint the recorded ones.  A change to a
label, a field, the encoding or the key schedule therefore fails here (docs/protocol.md is the
written form of the same protocols).  One exception, by necessity: ``compare``'s host seals SK
with HPKE, whose ephemeral key ``cryptography`` draws itself, so the host's Accept (and only it)
cannot be reproduced; the guest replay checks that recorded Accept instead.
"""

from __future__ import annotations

import json

import pytest

from pairkit.pairing import wire
from tests.vector_harness import CASES, VECTORS, make, replay, transcript_of

DATA = json.loads(VECTORS.read_text())
VECTORS_BY_ID = {v["id"]: v for v in DATA["vectors"]}


def test_every_case_has_a_frozen_vector() -> None:
    assert sorted(VECTORS_BY_ID) == sorted(c["id"] for c in CASES)
    methods = {v["method"] for v in DATA["vectors"]}
    assert methods == {"pin", "qr", "compare", "clear", "resume", "kk"}


@pytest.mark.parametrize("vector", DATA["vectors"], ids=lambda v: v["id"])
def test_the_guest_reproduces_its_messages_and_keys(vector: dict) -> None:
    sent, session = replay(vector, "guest")
    assert [d.hex() for d in sent] == [d for who, d in vector["messages"] if who == "guest"]
    assert session.send_key.hex() == vector["guest_send_key"]
    assert session.recv_key.hex() == vector["guest_recv_key"]
    assert session.fingerprint == vector["fingerprint"]
    assert session.peer.authenticated is vector["guest_authenticated_host"]


@pytest.mark.parametrize("vector", DATA["vectors"], ids=lambda v: v["id"])
def test_the_host_reproduces_its_messages_and_keys(vector: dict) -> None:
    sent, session = replay(vector, "host")
    recorded = [d for who, d in vector["messages"] if who == "host"]
    got = [d.hex() for d in sent]
    if vector["method"] == "compare":
        # the Accept holds HPKE's own ephemeral (see the module docstring)
        assert len(got) == len(recorded)
        assert wire.decode(bytes.fromhex(got[0])).hello.method.label == "compare"
        got, recorded = got[1:], recorded[1:]
    assert got == recorded
    assert session.send_key.hex() == vector["host_send_key"]
    assert session.recv_key.hex() == vector["host_recv_key"]
    assert session.fingerprint == vector["fingerprint"]
    assert session.peer.authenticated is vector["host_authenticated_guest"]


@pytest.mark.parametrize("vector", DATA["vectors"], ids=lambda v: v["id"])
def test_a_vector_is_consistent(vector: dict) -> None:
    assert vector["guest_send_key"] == vector["host_recv_key"]
    assert vector["guest_recv_key"] == vector["host_send_key"]
    for _, data in vector["messages"] + vector["cloud_step"]:
        wire.decode(bytes.fromhex(data))  # every message is strict CBOR pairkit knows
    if vector["cloud_step"]:
        cloud = [(who, bytes.fromhex(d)) for who, d in vector["cloud_step"]]
        assert transcript_of(cloud).hex() == vector["inputs"]["context"]


def test_regenerating_gives_the_same_bytes_but_compare_s_accept() -> None:
    """The generator itself is deterministic (so --write changes the file only when the
    protocol changed)."""
    for case in CASES:
        if case["method"] == "compare":
            continue
        assert make(case) == VECTORS_BY_ID[case["id"]], case["id"]


def test_a_changed_label_would_be_caught() -> None:
    """The check can fail: one flipped byte in a recorded host message breaks the guest's
    replay (or changes what it sends)."""
    vector = json.loads(json.dumps(VECTORS_BY_ID["pin"]))
    who, data = vector["messages"][1]
    raw = bytearray(bytes.fromhex(data))
    raw[-1] ^= 1
    vector["messages"][1] = [who, raw.hex()]
    with pytest.raises(Exception):  # noqa: B017 - any failure to reproduce is the point
        test_the_guest_reproduces_its_messages_and_keys(vector)
