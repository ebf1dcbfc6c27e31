"""Attack review atk21, finding 1 (medium): a stranger's Abort reason wrote a line of
``pairkit host``'s own output.

Session 20 made a peer's text short on stderr (wire errors name a value's kind, stderr lines
are cut at 500) and names are refused or cleaned.  A peer's *reason* was neither: an Abort's
``reason`` became ``RemoteError("the peer stopped: " + reason)`` as sent, and ``pairkit host``
printed it through ``info()``, which keeps newlines (pairkit's own messages have several
lines).  A stranger that connected and sent one Abort wrote any line it liked on the owner's
screen (here "paired with ... as member"), before anyone was asked anything; a host's
``Refused`` reason reached a guest's screen the same way.

Now every ``reason`` a peer sends is one line when it is decoded (:func:`pairing.wire.one_line`:
control characters, line and paragraph separators and bidirectional controls become spaces),
whichever message carries it.

Real code: a ``pairkit host`` process over TCP on 127.0.0.1 and a stranger's raw link; the
messages that carry a reason, through the wire codec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from pairkit.driver import MessagePipe
from pairkit.pairing import wire
from pairkit.pairing.cpns.messages import PnDelivery
from pairkit.pairing.errors import ErrorCode
from pairkit.pairing.groups import DeliveryResult
from pairkit.pairing.machine import local_error_for
from pairkit.pairing.service import Refused
from pairkit.transports.tcp import tcp_connect

from ..cli_helpers import HostProcess, make_devices

FORGED = "paired with Paul's laptop by pin as member; session 6cc3-6c5c-59a2-6618"
#: what a reason may carry to break or reorder a line: LF, CR, ESC, VT, FF, NEL, U+2028,
#: U+2029, RLO, RLI
BREAKERS = "\n\r\x1b\x0b\x0c\x85\u2028\u2029\u202e\u2067"


async def test_a_strangers_abort_reason_cannot_forge_a_line_of_the_host(tmp_path: Path) -> None:
    paul = make_devices(tmp_path, {"paul": "Paul's phone"})["paul"]
    host = await HostProcess.start(paul.home, "-t", "tcp:127.0.0.1:0", "-m", "pin",
                                   "--pin", "482913")
    try:
        h, p = host.address.rsplit(":", 1)
        link = await tcp_connect(h, int(p), timeout=10)
        try:
            pipe = MessagePipe(link, guest=True)
            await pipe.send(wire.Abort(code=ErrorCode.UNKNOWN, reason=f"bye\n{FORGED}").encode())
            await host.wait_for(r"error: guest .*the peer stopped: bye")
        finally:
            with contextlib.suppress(Exception):
                await link.close()
        forged = [line for line in host.lines if line.startswith("paired with")]
        assert not forged, f"a stranger wrote a line of the host's own: {forged}"
        said = [line for line in host.lines if "the peer stopped: bye" in line]
        assert said and FORGED in said[0]  # the reason is shown, on its one line
    finally:
        await host.stop()


def _messages_in(kind: Any) -> list[type[wire.Message]]:
    """The message classes a field's type holds (itself, or a tuple's or optional's items)."""
    if isinstance(kind, type) and issubclass(kind, wire.Message):
        return [kind]
    return [m for arg in typing.get_args(kind) for m in _messages_in(arg)]


def _all_messages() -> list[type[wire.Message]]:
    """Every registered message class and every message nested in one."""
    out: list[type[wire.Message]] = []
    todo = list(wire.registry().values())
    while todo:
        cls = todo.pop()
        if cls not in out:
            out.append(cls)
            todo += [m for kind in typing.get_type_hints(cls).values()
                     for m in _messages_in(kind)]
    return out


def test_every_reason_a_peer_sends_is_decoded_as_one_line() -> None:
    """Every message's ``reason`` field is declared one line; a message type added later with
    a ``reason`` that is not fails here."""
    reasons = {f"{cls.__name__}.reason": f for cls in _all_messages()
               for f in dataclasses.fields(cls) if f.name == "reason"}
    assert {"Abort.reason", "Refused.reason", "DeliveryResult.reason",
            "PneResult.reason"} <= set(reasons), sorted(reasons)
    missing = sorted(r for r, f in reasons.items() if not f.metadata.get("one_line"))
    assert not missing, f"reasons a peer sends that may break a line: {missing}"


@pytest.mark.parametrize("made", [
    lambda r: wire.Abort(code=ErrorCode.REFUSED, reason=r),
    lambda r: Refused(r),
    lambda r: PnDelivery(7, False, reason=r),
], ids=["Abort", "Refused", "PnDelivery"])
def test_a_reason_with_line_breakers_decodes_to_one_line(made: Any) -> None:
    reason = "no" + BREAKERS + FORGED
    got = wire.decode(made(reason).encode()).reason
    assert not any(ch in got for ch in BREAKERS), repr(got)
    assert got.startswith("no") and got.endswith(FORGED)
    assert len(got) == len(reason)  # each breaker is one space: nothing else is lost
    # a clean reason is untouched, non-ASCII included
    assert wire.decode(made("déjà vu — 断开").encode()).reason == "déjà vu — 断开"


def test_a_nested_reason_decodes_to_one_line() -> None:
    """DeliveryResult travels inside KeyReceipt (a member's refusal, shown to the controller)."""
    from pairkit.pairing.groups import KeyReceipt

    result = DeliveryResult("lights", 3, False, "x\n" + FORGED)
    got = wire.decode(KeyReceipt((result,)).encode()).results[0].reason
    assert "\n" not in got and got.endswith(FORGED)


def test_a_remote_errors_local_class_carries_the_one_line_reason() -> None:
    abort = wire.decode(wire.Abort(code=ErrorCode.AUTH_FAILED, reason="a\nb").encode())
    assert "\n" not in str(local_error_for(abort.code, abort.reason))
