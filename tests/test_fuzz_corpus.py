"""The fuzz regression corpus (issue 17): every input a fuzzer ever found, replayed on every run.

``tests/fuzz_corpus/<decoder>/`` holds one file per input (its README says where each came
from).  Each decoder must end every one of them with a typed pairkit error, or decode it: any
other exception is what a user would see as an internal error (exit 70).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairkit.pairing import wire
from pairkit.pairing.errors import PairingError
from pairkit.pairing.hello import decode_hello
from pairkit.pairing.qr import QrCode

CORPUS = Path(__file__).parent / "fuzz_corpus"
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "qr_uri": lambda data: QrCode.parse(data.decode("utf-8", "surrogateescape")),
    "wire": wire.decode,
    "hello": lambda data: decode_hello(data, {"c": bytes(32)}, 1_790_000_000.0),
}
CASES = sorted((d.name, f) for d in CORPUS.iterdir() if d.is_dir() for f in d.iterdir())


def test_every_decoder_has_a_corpus() -> None:
    assert {name for name, _ in CASES} == set(DECODERS)


@pytest.mark.parametrize(("decoder", "path"), CASES, ids=[f"{d}/{p.name}" for d, p in CASES])
def test_a_found_input_ends_in_a_typed_error(decoder: str, path: Path) -> None:
    try:
        DECODERS[decoder](path.read_bytes())
    except PairingError:
        pass  # typed, with a message for a person


# -- fuzzing the same decoders (``make fuzz`` runs these long; ``make test`` briefly) -------------

#: examples per decoder: a few hundred in `make test`, PAIRKIT_FUZZ_EXAMPLES in `make fuzz`
EXAMPLES = int(os.environ.get("PAIRKIT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
URI_PIECES = st.sampled_from(["pairkit:", "qr", "?", "v=1", "&", "k=", "s=", "x=", "h=", "[",
                              "]", "::1", "%", "#", "//", "@", ":", "=", "fe80::1", "\x00"])


def typed_or_decoded(decoder: str, data: bytes) -> None:
    try:
        DECODERS[decoder](data)
    except PairingError:
        pass


@FUZZ
@given(st.lists(URI_PIECES | st.text(max_size=8), max_size=24))
def test_fuzz_qr_uris(pieces: list[str]) -> None:
    typed_or_decoded("qr_uri", "".join(pieces).encode("utf-8", "surrogateescape"))


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_wire_messages(data: bytes) -> None:
    typed_or_decoded("wire", data)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_hellos(data: bytes) -> None:
    typed_or_decoded("hello", data)
