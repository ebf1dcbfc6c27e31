"""A gateway of the attacker's own making against the real key server's PN registration
(docs/protocol.md §18; OMA CPNS "PN Establishment", steps 4 to 12): an enrolled device, its
proof made by the real :class:`~pairing.ttp.TtpClient` over TLS to the key server
(tests/ttp_harness.py), then raw CPNS messages, playing its elements itself (it holds their
factory keys): each answers the key server's authentication request with the hash its key
gives, late, or never.  Shared by tests/attacks/test_attack_pn_auth_wait.py and
tests/attacks/test_attack_pn_id_scope.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from pairkit.driver import drive
from pairkit.keyserver.store import PnRow
from pairkit.pairing import wire
from pairkit.pairing.cpns import (
    AuthenticationRequest,
    AuthenticationResponse,
    PneCaps,
    PneInfo,
    PnRegistrationRequest,
    PnRegistrationResponse,
    SetupType,
)
from pairkit.pairing.cpns.keys import derive_sk, hash_pne
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.ttp import TtpClient
from pairkit.ttp import ServerLink, connect, enrol
from tests.ttp_harness import identity

#: how long a test's gateway waits for the key server's answer: far past the key server's own
#: deadline in these tests, far short of what a gateway could ask for (an hour)
READ = 20.0


@dataclasses.dataclass
class Element:
    """An enrolled PNE the attacker's gateway plays (it holds the element's factory key)."""

    me: LocalIdentity
    eukey: bytes = dataclasses.field(repr=False)
    rand_pne: bytes = dataclasses.field(default_factory=lambda: os.urandom(16))

    def info(self) -> PneInfo:
        return PneInfo(self.me.device_id, self.me.name, int(PneCaps.UI), self.rand_pne, True)

    def answer(self, req: AuthenticationRequest) -> bytes:
        ids = {"pn_id": req.pn_id, "pne_id": req.pne_id, "gw_id": req.gw_id}
        sk = derive_sk(self.eukey, **ids, rand_pne=self.rand_pne, rand_server=req.rand_server)
        proof = hash_pne(sk, **ids, rand_pne=self.rand_pne, rand_server=req.rand_server)
        return AuthenticationResponse(req.pn_id, req.pne_id, proof).encode()


@dataclasses.dataclass
class Gateway:
    me: LocalIdentity
    eukey: bytes = dataclasses.field(repr=False)
    elements: list[Element]


async def enrolled(h: Any, n: int) -> Gateway:
    gw = identity("gateway")
    gw_key = os.urandom(32)
    await enrol(h.address, h.ca, gw, eukey=gw_key)
    elements = []
    for k in range(n):
        el = Element(identity(f"element {k}"), os.urandom(32))
        await enrol(h.address, h.ca, el.me, eukey=el.eukey)
        elements.append(el)
    return Gateway(gw, gw_key, elements)


def request(gw: Gateway, pn_id: bytes, auth_wait_ms: int | None) -> PnRegistrationRequest:
    return PnRegistrationRequest(
        pn_id, "gateway", SetupType.ALL, tuple(e.info() for e in gw.elements),
        subscription=gw.me.device_id, auth_wait_ms=auth_wait_ms,
    )


def on_the_wire(msg: wire.Message, raw: bytes) -> wire.Message:
    """``msg``, whose encoding (what the TtpClient sends) is ``raw``: a request no honest
    gateway could build (a value out of bounds, a key twice)."""
    object.__setattr__(msg, "_wire_encoded", raw)
    return msg


async def register(h: Any, gw: Gateway, req: wire.Message) -> ServerLink:
    """The gateway's connection to the key server, its proof made and ``req`` sent."""
    conn = await connect(h.address, h.ca, timeout=10.0)
    client = TtpClient(gw.me, cert=conn.cert, request=req, expect=None, step_timeout=10.0)
    await drive(client, conn.pipe, idle=10.0)
    return conn


async def play(
    conn: ServerLink, gw: Gateway, *, silent: tuple[int, ...] = (),
    late: dict[int, float] | None = None, forged: dict[int, bytes] | None = None,
    heard: list[bytes] | None = None,
) -> PnRegistrationResponse:
    """Relay the key server's questions to the elements, as the gateway would: each answers at
    once, but those in ``silent`` never, and those in ``late`` after that many seconds (sent
    whether or not the key server still waits; the answer is read after); those in ``forged``
    answer with those bytes instead of their own.  Every answer sent is appended to ``heard``
    (what a device in reach of the PAN hears).  The key server's answer to the
    registration."""
    by_id = {e.me.device_id: k for k, e in enumerate(gw.elements)}
    pending: list[asyncio.Task[None]] = []

    async def later(delay: float, data: bytes) -> None:
        await asyncio.sleep(delay)
        try:
            await conn.pipe.send(data)
        except (PairingError, OSError):
            pass  # the key server answered and hung up meanwhile: nothing to send it to

    try:
        while True:
            msg = wire.decode(await asyncio.wait_for(conn.pipe.recv(), READ))
            if isinstance(msg, PnRegistrationResponse):
                await asyncio.gather(*pending)  # the late answers went (or found it gone)
                return msg
            if isinstance(msg, wire.Abort):
                raise AssertionError(f"the key server refused the registration: {msg.reason}")
            assert isinstance(msg, AuthenticationRequest), msg
            k = by_id[msg.pne_id]
            if k in silent:
                continue
            data = forged[k] if forged and k in forged else gw.elements[k].answer(msg)
            if heard is not None:
                heard.append(data)
            if late and k in late:
                pending.append(asyncio.create_task(later(late[k], data)))
            else:
                await conn.pipe.send(data)
    finally:
        for task in pending:
            task.cancel()


def verdicts(resp: PnRegistrationResponse, gw: Gateway) -> list[tuple[bool, str | None]]:
    by_id = {r.pne_id: (r.ok, r.reason) for r in resp.results}
    return [by_id[e.me.device_id] for e in gw.elements]


async def stored(h: Any, gw: Gateway, pn_id: bytes) -> PnRow:
    """The key server's record of ``gw``'s PN ``pn_id`` (:class:`NotFoundError` if none)."""
    return await h.server.db(h.server.store.pn, gw.me.device_id, pn_id)  # type: ignore[no-any-return]


async def stored_members(h: Any, gw: Gateway, pn_id: bytes) -> list[str]:
    row = await stored(h, gw, pn_id)
    return sorted(m["name"] for m in row.members)
