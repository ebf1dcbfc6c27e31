"""A gateway against the key server's wait for its elements (``PnRegistrationRequest``
field 8, ``auth_wait_ms``; docs/protocol.md §18, "The registration's waits").

The gateway tells the key server how long its PNEs have to answer the authentication request;
the key server waits the shorter of that and its own deadline (three of its steps), fails the
silent ones and registers those that proved their key.  The field is the gateway's word only:
here a gateway of the attacker's own making (an enrolled device, its proof made by the real
:class:`~pairing.ttp.TtpClient`, then raw messages) speaks to the real key server over TLS on
127.0.0.1 (tests/ttp_harness.py) and plays its elements itself, each answering with the hash
its factory key gives, late, or never.  None of this may make the key server wait past its own
deadline, register an element that did not prove its key, or fail one that did.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from pairkit.keyserver.server import Limits
from pairkit.pairing import cbor, wire
from pairkit.pairing.cpns import PnRegistrationResponse
from pairkit.pairing.errors import ErrorCode, LinkClosedError, PairingError
from tests.pn_registration_harness import (
    READ,
    Gateway,
    enrolled,
    on_the_wire,
    play,
    register,
    request,
    stored,
    stored_members,
    verdicts,
)
from tests.ttp_harness import running_server

#: the key server's step: its wait for a gateway's elements is three of them (1.5 s)
STEP = 0.5
LIMITS = Limits(step_timeout=STEP, max_wait=5.0, handshake_timeout=5.0)


async def test_a_gateway_cannot_stretch_the_key_servers_wait_past_its_own_deadline(
    tmp_path: Path,
) -> None:
    """The gateway asks for the longest wait the field allows (an hour) and its second element
    never answers: the key server must still end its wait at its own deadline (1.5 s), fail
    the silent element and register the other, not hold the connection and its task for the
    hour the gateway asked."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        gw = await enrolled(h, 2)
        pn_id = os.urandom(16)
        conn = await register(h, gw, request(gw, pn_id, 3_600_000))
        try:
            resp = await play(conn, gw, silent=(1,))
        finally:
            await conn.close()
        assert resp.registered
        assert verdicts(resp, gw) == [(True, None), (False, "did not answer in time")]
        assert await stored_members(h, gw, pn_id) == ["element 0"]


async def test_an_answer_after_the_wait_neither_registers_its_element_nor_undoes_the_others(
    tmp_path: Path,
) -> None:
    """A short wait (300 ms).  The first element answers at once; the second answers 1 s
    later, after the wait ended, and before the gateway reads the key
    server's answer (the key server may be storing the first, or have answered and hung up,
    when it comes).  The first must be registered, the second failed and not registered (its
    answer was right, but late), and the key server's answer must reach the gateway whatever
    the late message met on the way."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        gw = await enrolled(h, 2)
        pn_id = os.urandom(16)
        conn = await register(h, gw, request(gw, pn_id, 300))
        try:
            resp = await play(conn, gw, late={1: 1.0})
        finally:
            await conn.close()
        assert resp.registered
        assert verdicts(resp, gw) == [(True, None), (False, "did not answer in time")]
        assert await stored_members(h, gw, pn_id) == ["element 0"]
        assert h.server.stats["failed"] == 0  # the late answer is no error of the key server's


async def test_gateways_at_once_each_get_the_wait_they_asked_for(tmp_path: Path) -> None:
    """Three gateways register at once.  The first asks for 100 ms and its element is silent;
    the second gives no wait (an older gateway: the key server's own 1.5 s) and the third an
    hour, and each of their elements answers 0.5 s after it is asked.  One gateway's wait is
    not another's: the first's element fails, the others' are registered."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        gws = [await enrolled(h, 1) for _ in range(3)]
        pn_ids = [os.urandom(16) for _ in gws]
        waits = [100, None, 3_600_000]

        async def one(k: int) -> PnRegistrationResponse:
            conn = await register(h, gws[k], request(gws[k], pn_ids[k], waits[k]))
            try:
                if k == 0:
                    return await play(conn, gws[k], silent=(0,))
                return await play(conn, gws[k], late={0: 0.5})
            finally:
                await conn.close()

        first, second, third = await asyncio.gather(*(one(k) for k in range(3)))
        assert verdicts(first, gws[0]) == [(False, "did not answer in time")]
        assert not first.registered
        assert verdicts(second, gws[1]) == verdicts(third, gws[2]) == [(True, None)]
        for k in (1, 2):
            assert await stored_members(h, gws[k], pn_ids[k]) == ["element 0"]


def _body(gw: Gateway, pn_id: bytes) -> dict[int, Any]:
    return cbor.decode(request(gw, pn_id, 1000).encode(), max_size=8192)  # type: ignore[no-any-return]


def _raw_wait(value: Any) -> Any:
    """The request's map with field 8 set to ``value`` (the rest as an honest gateway's)."""

    def make(gw: Gateway, pn_id: bytes) -> bytes:
        body = _body(gw, pn_id)
        body[8] = value
        return cbor.encode(body)

    return make


def _twice(gw: Gateway, pn_id: bytes) -> bytes:
    """Field 8 twice in one map: 100 ms, then an hour (CBOR with a duplicate key, written by
    hand: no encoder makes one)."""
    body = _body(gw, pn_id)
    del body[8]
    raw = cbor.encode(body)
    assert raw[0] == 0xA0 + len(body)  # a map of fewer than 24 pairs: its head is one byte
    return bytes([raw[0] + 2]) + raw[1:] + cbor.encode(8)[:1] + cbor.encode(100) \
        + cbor.encode(8)[:1] + cbor.encode(3_600_000)


@pytest.mark.parametrize(("make", "says"), [
    (_raw_wait(99), "auth_wait_ms"),
    (_raw_wait(3_600_001), "auth_wait_ms"),
    (_raw_wait(0), "auth_wait_ms"),
    (_raw_wait(2**64 - 1), "auth_wait_ms"),
    (_raw_wait(-1), "auth_wait_ms"),
    (_raw_wait(True), "auth_wait_ms"),
    (_raw_wait("3600000"), "auth_wait_ms"),
    (_twice, "duplicate key"),
], ids=["99", "3600001", "0", "2**64-1", "negative", "true", "text", "twice"])
async def test_a_wait_out_of_bounds_or_given_twice_is_refused_before_anything_is_asked(
    tmp_path: Path, make: Any, says: str,
) -> None:
    """Values at and beyond the bounds, of the wrong type, or field 8 given twice: the key
    server refuses the request as it decodes it (an Abort naming the field), before it asks
    any element anything, and registers nothing."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        gw = await enrolled(h, 1)
        pn_id = os.urandom(16)
        raw = make(gw, pn_id)
        conn = await register(h, gw, on_the_wire(request(gw, pn_id, 1000), raw))
        try:
            msg = wire.decode(await asyncio.wait_for(conn.pipe.recv(), READ))
            assert isinstance(msg, wire.Abort), msg  # not an AuthenticationRequest
            assert msg.code == ErrorCode.DECODE and says in msg.reason
            with pytest.raises((LinkClosedError, PairingError, TimeoutError)):
                await asyncio.wait_for(conn.pipe.recv(), READ)
        finally:
            await conn.close()
        assert await h.server.db(h.server.store.pn_keys) == []


async def test_another_gateway_cannot_take_a_pn_id_it_heard_before_its_owner_registers_it(
    tmp_path: Path,
) -> None:
    """Finding 5 (attack review of the registration's wait, several gateways at once; not
    made by the change under review; fixed).  A gateway's PN id travels in the clear on its
    PAN, in the setup notify it sends its elements at the start of the collect window (5 s by
    default), before it registers the PN with the key server.  Another device enrolled with
    the same key server, acting as a gateway with one element of its own, hears the id and
    registers it first.  Before the fix the key server then refused the owner's registration
    ("this PN id belongs to another gateway"), every element of the owner's setup failed, and
    the owner, which keeps no PN after a failed setup, drew a new id for the next, which the
    squatter could take the same way: an enrolled device that hears a gateway's PAN kept that
    gateway from ever setting up its first PN.  What must hold: the owner's registration
    succeeds with the owner's element, and the squatter's PN under the same id holds only its
    own (the key server keeps a PN under its gateway and its id)."""
    async with running_server(tmp_path / "srv", limits=LIMITS) as h:
        owner, squatter = await enrolled(h, 1), await enrolled(h, 1)
        pn_id = os.urandom(16)  # in the owner's setup notify, heard by the squatter
        conn = await register(h, squatter, request(squatter, pn_id, None))
        try:
            assert (await play(conn, squatter)).registered
        finally:
            await conn.close()
        conn = await register(h, owner, request(owner, pn_id, None))
        try:
            resp = await play(conn, owner)
        finally:
            await conn.close()
        assert resp.registered and verdicts(resp, owner) == [(True, None)]
        # the owner's PN holds the owner's element; the squatter's, under the same id, its own
        # only (nothing of the owner's)
        for gw in (owner, squatter):
            row = await stored(h, gw, pn_id)
            assert [m["pne_id"] for m in row.members] == [gw.elements[0].me.device_id.hex()]
