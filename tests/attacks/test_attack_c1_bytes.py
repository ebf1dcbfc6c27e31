"""Attack review atk21b, finding C (low): SafeStream wrote C1 bytes on an 8-bit encoding.

On an 8-bit terminal, SafeStream still writes C1 control bytes.

cli/show.py SafeStream._encodable: for a stream whose encoding is not UTF-8/16/32 it encodes
with "replace" and writes what comes out.  safe() let through every character that is not Cc,
Cf, Zl, Zp, Cn, Co, Cs -- but in KOI8-R/KOI8-U (Linux locales) U+2321 encodes to 0x9B, and in
CP1251/CP1252 U+203A does: 0x9B is CSI, which the Linux console (not in UTF-8 mode) and 8-bit
xterm obey as ESC [.  A peer's name may hold U+2321 or U+203A (device_name refuses Cc only), so
"Mallory\u23212J" clears the owner's screen in "... asks to join".  The docstring promises
"never ... bytes some of which an 8-bit terminal takes for C1 controls".
"""
from __future__ import annotations

import io

import pytest

from pairkit.cli.show import SafeStream
from pairkit.pairing.messages import device_name


@pytest.mark.parametrize("encoding,char", [("koi8-r", "\u2321"), ("cp1251", "\u203a"),
                                           ("cp1252", "\u203a")])
def test_no_c1_byte_reaches_an_8bit_stream(encoding: str, char: str) -> None:
    name = device_name(f"Mallory{char}2J{char}1;1H", "a name")  # a name the wire accepts
    raw = io.BytesIO()
    inner = io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True)
    SafeStream(inner).write(f"{name} asks to join\n")
    data = raw.getvalue()
    assert not any(0x80 <= b <= 0x9F for b in data), data


@pytest.mark.parametrize("encoding", ["koi8-r", "cp1251", "cp1252"])
def test_what_the_encoding_carries_outside_c1_is_written_as_it_is(encoding: str) -> None:
    raw = io.BytesIO()
    inner = io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True)
    text = {"koi8-r": "Привет", "cp1251": "Привет", "cp1252": "Café"}[encoding]
    SafeStream(inner).write(f"{text}\u2321\u203a\n")
    assert raw.getvalue().decode(encoding) == f"{text}??\n"
