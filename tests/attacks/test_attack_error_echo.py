"""Attack review atk20c, finding 2 (low): a stranger's bytes in the host's error text.

A first message whose protocol version, message type or an unknown field's key was a long
text was refused with a DecodeError that quoted it whole (``{value!r}``), and ``pairkit host``
printed that on its stderr: a stranger's 60 KB text became one 60,000-character line, before
anyone was asked anything.  Now a decode error names the field and the kind of value it held
(and, for an integer, the number), never the peer's text or bytes; and the CLI cuts any line
it writes to stderr at :data:`~pairkit.cli.show.MAX_LINE` characters, whatever made it.

Real code: a ``pairkit host`` process on 127.0.0.1, a stranger's raw TCP link.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from pairkit.cli.show import MAX_LINE, SafeStream
from pairkit.pairing import cbor, wire
from pairkit.pairing.errors import DecodeError
from pairkit.pairing.framing import fragment
from pairkit.transports.tcp import tcp_connect

from ..cli_helpers import Lab

#: a text a stranger would like in the owner's log (the marker must never reach it)
MARK = "fake-log-line:George-paired-as-member;"
PAYLOAD = MARK * 1500  # ~57 KB: fits one message (64 KB)

BODIES: dict[str, dict[Any, Any]] = {
    "version": {0: PAYLOAD, 1: 30},
    "type": {0: 1, 1: PAYLOAD},
    "field-key": {0: 1, 1: 30, 2: b"\0" * 16, PAYLOAD: 1},
    "field-key-bytes": {0: 1, 1: 30, 2: b"\0" * 16, PAYLOAD.encode(): 1},
}


@pytest.mark.parametrize("where", sorted(BODIES))
def test_a_decode_error_names_the_kind_never_the_peers_text(where: str) -> None:
    with pytest.raises(DecodeError) as caught:
        wire.decode(cbor.encode(BODIES[where]))
    text = str(caught.value)
    assert MARK not in text
    assert MARK.encode().hex()[:20] not in text
    assert len(text) < 200, text


def test_a_decode_error_names_a_wrong_integer() -> None:
    with pytest.raises(DecodeError, match=r"version 7\b"):
        wire.decode(cbor.encode({0: 7, 1: 30}))
    with pytest.raises(DecodeError, match=r"type 9999\b"):
        wire.decode(cbor.encode({0: 1, 1: 9999}))


async def test_pairkit_host_prints_a_short_line_without_the_strangers_text(lab: Lab) -> None:
    host = await lab.host(lab.device("paul"), "--yes")
    h, p = host.address.rsplit(":", 1)
    for where in ("version", "type", "field-key"):
        mark = host.mark()
        link = await tcp_connect(h, int(p))
        try:
            for frag in fragment(cbor.encode(BODIES[where]), link.mtu, max_message=64 * 1024):
                await link.send(frag)
            line = (await host.wait_for(r"^error: ", since=mark)).string
        finally:
            await link.close()
        assert MARK not in host.stderr, where
        assert len(line) <= MAX_LINE, (where, len(line))
    assert max(len(line) for line in host.lines) <= MAX_LINE


def test_the_cli_cuts_a_long_stderr_line_whatever_made_it() -> None:
    out = io.StringIO()
    stream = SafeStream(out, max_line=MAX_LINE)
    stream.write("error: " + "x" * 10_000)
    stream.write("y" * 10_000 + "\nnext line\n")
    first, second, rest = out.getvalue().split("\n")
    assert len(first) <= MAX_LINE and first.startswith("error: xxx")
    assert "y" not in first  # the cut keeps the start, not the end
    assert first.endswith("characters cut)")
    assert second == "next line" and rest == ""
    # a short line passes as it is, in pieces or whole
    out2 = io.StringIO()
    stream2 = SafeStream(out2, max_line=MAX_LINE)
    stream2.write("error: ")
    stream2.write("short\n")
    assert out2.getvalue() == "error: short\n"
