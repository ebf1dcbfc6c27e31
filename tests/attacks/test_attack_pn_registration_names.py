"""The names in a PN registration, against the key server's log and inventory (attack review of
the PN id scoping, session 10; docs/security.md, the PN section).

A ``PnRegistrationRequest`` carries the gateway's name and each element's (``PneInfo.name``),
the gateway's word, and the elements' as they said them on the PAN: text of up to 64
characters that the wire takes with any character in it.  The key server wrote them into its
log ("registered PN ... of NAME: MEMBERS", narrated by ``pairkit ttp serve``) and its store
(``pairkit ttp list``) as sent, so an enrolled gateway, or an element it relays, could end the
line and write one of its own: ``SafeStream`` keeps newlines, a person's multi-line messages
being pairkit's own.  And since a PN is its gateway's (finding 5), two gateways may register
one PN id under one name: the log line named the PN by its id and the gateway by its name only,
so the squatter's registration read as the owner's.

Over TLS to the real key server (tests/pn_registration_harness.py), its log taken as
``pairkit ttp serve`` takes it.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from pairkit.keyserver.server import Limits
from pairkit.pairing.cpns import PneCaps, PneInfo, PnRegistrationRequest, SetupType
from tests.pn_registration_harness import enrolled, play, register, stored
from tests.ttp_harness import running_server

LIMITS = Limits(step_timeout=0.5, max_wait=5.0, handshake_timeout=5.0)


def controls(text: str) -> list[str]:
    return [ch for ch in text if unicodedata.category(ch) == "Cc"]


async def test_names_in_a_registration_cannot_write_lines_of_the_key_servers_log(
    tmp_path: Path,
) -> None:
    """The gateway names itself, and its element, with a newline and what the key server's log
    would say of another PN: neither the log nor the stored inventory holds a control
    character afterwards, and the element is registered all the same (a name is not a reason
    to fail a setup: the capability bits' lesson, finding 1)."""
    lines: list[str] = []
    async with running_server(tmp_path / "srv", limits=LIMITS, log=lines.append) as h:
        gw = await enrolled(h, 1)
        el = gw.elements[0]
        pn_id = os.urandom(16)
        forged = f"\nregistered PN {os.urandom(8).hex()} of Paul's phone: Paul's watch"
        info = PneInfo(el.me.device_id, "watch\x1b[2K\r" + forged[:40], int(PneCaps.UI),
                       el.rand_pne, True)
        req = PnRegistrationRequest(pn_id, "gateway" + forged[:50], SetupType.ALL, (info,),
                                    subscription=gw.me.device_id)
        conn = await register(h, gw, req)
        try:
            resp = await play(conn, gw)
        finally:
            await conn.close()
        assert resp.registered
        row = await stored(h, gw, pn_id)
    said = [line for line in lines if "registered PN" in line]
    assert said, lines
    assert not any(controls(line) for line in lines), said
    assert not controls(row.gw_name) and row.gw_name.startswith("gateway")
    assert [controls(m["name"]) for m in row.members] == [[]]


async def test_two_gateways_registering_one_pn_id_under_one_name_read_apart_in_the_log(
    tmp_path: Path,
) -> None:
    """The owner and a squatter (finding 5: a PN is its gateway's) register one PN id under one
    gateway name: the key server's log tells the two registrations apart by the gateway."""
    lines: list[str] = []
    async with running_server(tmp_path / "srv", limits=LIMITS, log=lines.append) as h:
        owner, squatter = await enrolled(h, 1), await enrolled(h, 1)
        pn_id = os.urandom(16)
        for gw in (owner, squatter):
            req = PnRegistrationRequest(pn_id, "Paul's phone", SetupType.ALL,
                                        tuple(e.info() for e in gw.elements),
                                        subscription=gw.me.device_id)
            conn = await register(h, gw, req)
            try:
                assert (await play(conn, gw)).registered
            finally:
                await conn.close()
    said = [line for line in lines if "registered PN" in line]
    assert len(said) == 2 and said[0] != said[1], said
    for line, gw in zip(said, (owner, squatter), strict=True):
        assert gw.me.device_id.hex()[:16] in line, line
