"""A peer that announces a new capability value each time must not grow the process's memory.

An announcement's ``caps`` is any unsigned 64-bit integer on the wire.  Python's IntFlag keeps
every value it is asked to make (a pseudo-member in the enum's own table, for good), so a
machine that made ``Caps(peer_value)`` let a stranger add one object to the process per Offer,
without bound; both sides' machines did, the host for each Offer and the guest for each Accept
(found while taking the enum work out of the negotiation, issue 13).  The machines now hand
the peer's value to the method table as the integer it came as.  Played on the real machines
with the in-memory shuttle (tests/pair_harness.py): the table of Caps values must not grow
with the number of values the peer sends.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pytest

from pairkit.pairing import wire
from pairkit.pairing.cpns.messages import GatewayCaps, PneCaps
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.negotiation import Caps, Method
from tests.pair_harness import make_pair, shuttle

TRIES = 200
#: values above the real bits, never the same twice in this process
_FRESH = itertools.count(1_000_000)


def _new_caps_each_time(cls: type, counter: list[int]) -> Callable[[str, bytes], bytes]:
    def tamper(_direction: str, data: bytes) -> bytes:
        msg = wire.decode(data)
        if not isinstance(msg, cls):
            return data
        counter[0] += 1
        # the real bits, and above them a value this process has never seen
        caps = msg.hello.caps | next(_FRESH) << 8
        return dataclasses.replace(msg, hello=dataclasses.replace(msg.hello, caps=caps)).encode()

    return tamper


@pytest.mark.parametrize(("cls", "side"), [(Offer, "host"), (Accept, "guest")],
                         ids=["offer-to-host", "accept-to-guest"])
def test_new_capability_values_do_not_pile_up(cls: type, side: str) -> None:
    counter = [0]
    before = len(Caps._value2member_map_)
    for seed in range(TRIES):
        pair = make_pair(Method.COMPARE, seed=seed)
        result = shuttle(pair.guest, pair.host, tamper=_new_caps_each_time(cls, counter),
                         answers={"guest": True, "host": True})
        # the rewritten announcement is bound into the exchange: it never completes
        assert result.guest_error or result.host_error
    assert counter[0] == TRIES  # every run carried a value of its own to the checked side
    assert len(Caps._value2member_map_) - before < 8


@pytest.mark.parametrize("flag", [Caps, PneCaps, GatewayCaps], ids=lambda f: f.__name__)
def test_every_capability_flag_made_from_a_peers_value_stays_bounded(flag: type) -> None:
    """The same hole at the source, for every path: the cloud step's reply (the host's caps),
    ttp's Offer and Accept, a PNE's PneInfo at the gateway and at the key server, a gateway's
    registration at the key server all make a flag from a peer's integer.  Each flag class
    drops bits it does not know (``boundary=CONFORM``), so the enum's table holds at most one
    value per combination of its own bits, whatever a peer sends; the known bits read as
    before."""
    before = len(flag._value2member_map_)
    known = 0
    for member in flag:
        known |= int(member)
    for _ in range(TRIES):
        value = next(_FRESH) << 8 | known
        made = flag(value)
        assert int(made) == known  # the unknown bits are dropped, the known ones kept
    assert len(flag._value2member_map_) - before <= 2 ** len(list(flag))
