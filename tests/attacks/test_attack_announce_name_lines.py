"""Attack review atk22, finding B (low-medium): a peer's Announce name reached a person raw.

The name in an Offer's or an Accept's Announce was only bounded (64 characters), and compare
put it in the question its person answers (``ConfirmCode.peer_name``: "Does NAME show the same
code?"): a name holding newlines wrote lines of its own on the other side's terminal ("...
[y/N] y", "  confirmed") above the real question, before anything was proven, in both
directions (a stranger the owner let in, or any host a guest joins).  Every other name a peer
sends is held to :func:`pairing.messages.device_name` when it is read (the JoinRequest's, the
CloudReply's, the identity's); the Announce's now is too, before anything is computed or anyone
asked.  Played on the real machines (tests/pair_harness.py) for every method's Offer and Accept.
"""

from __future__ import annotations

import dataclasses

import pytest

from pairkit.pairing import wire
from pairkit.pairing.errors import DecodeError
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method
from tests.pair_harness import make_pair, pair_for, seeded

HOSTILE = "George's laptop show the same code? [y/N] y\n  confirmed\nDoes G"
METHODS = [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.KK]


def renaming(cls: type, name: str):  # type: ignore[no-untyped-def]
    def tamper(_direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, cls):
            return data
        return dataclasses.replace(msg, hello=dataclasses.replace(msg.hello, name=name)).encode()

    return tamper


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.label)
@pytest.mark.parametrize("cls", [Offer, Accept], ids=["offer", "accept"])
@pytest.mark.parametrize("name", [HOSTILE, "Paul\x1b[2J", "Paul\x00", "   "],
                         ids=["newlines", "escape", "nul", "blank"])
def test_an_announce_name_with_a_control_character_stops_the_reader_before_any_question(
    method: Method, cls: type, name: str
) -> None:
    pair = pair_for(method, seed=22)
    result = pair.run(tamper=renaming(cls, name))
    reader = result.host_error if cls is Offer else result.guest_error
    assert isinstance(reader, DecodeError), reader
    assert "name" in str(reader) and "\n" not in str(reader) and "\x1b" not in str(reader)
    assert (pair.host if cls is Offer else pair.guest).session is None
    asked = [q for side, q in result.questions
             if side == ("host" if cls is Offer else "guest")]
    assert asked == [], asked  # the reader asked its person nothing


@pytest.mark.parametrize("method", METHODS[:4], ids=lambda m: m.label)
def test_an_unusual_but_printable_announce_name_still_pairs(method: Method) -> None:
    """Not every odd name is refused: an accent, CJK, an emoji pair as before (each side's
    own name, announced as it is)."""
    guest_me = LocalIdentity.generate("Zoë's 电脑 📺", seeded(23, "guest"))
    host_me = LocalIdentity.generate("Ünal's ‮TV", seeded(23, "host"))  # a bidi control: Cf
    pair = make_pair(method, seed=23, guest_me=guest_me, host_me=host_me)
    result = pair.run()
    assert result.host_error is None and result.guest_error is None
    assert pair.host.session is not None and pair.guest.session is not None
