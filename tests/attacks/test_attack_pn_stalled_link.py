"""Strangers on a PN gateway's PAN links that take no data, against the key server's wait for
the elements (``PnRegistrationRequest.auth_wait_ms``: half the gateway's step; docs/protocol.md
§18, "The registration's waits").

The gateway (:func:`pairkit.cpns.run_gateway`, one machine and one loop for every link) sent to
its elements one after the other, each send bounded by its step, so a link whose receiver takes
nothing (an L2CAP channel whose receiver grants no credits) held a send for that whole step, and
with it the gateway's relay of everything else; each link now has a sender of its own.  Played
over loopback PAN links (the stranger's takes one message, or two, and the stranger never reads
them), with the real key
server over TLS on 127.0.0.1 (tests/ttp_harness.py).  The strangers claim ids of enrolled
elements that are not in reach (ids cross the PAN in the clear), so the key server asks them
for their proof.  Then the element's side of that wait (finding 4, fixed: the gateway tells its
elements the key server's wait, ``AuthenticationRequest.auth_wait_ms``), and what a gateway can
do with that field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.driver import MessagePipe
from pairkit.pairing import cbor, wire
from pairkit.pairing.cpns import (
    RAND_LEN,
    AuthenticationRequest,
    AuthenticationResponse,
    GatewayConfig,
    PnAttach,
    PneConfig,
    PneMachine,
    PnSetupNotify,
    PnSetupNotifyResponse,
    SetupType,
    derive_sk,
    hash_pne,
)
from pairkit.pairing.errors import DecodeError, ErrorCode, PairingTimeout
from pairkit.pairing.messages import ID_LEN
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.wire import Message, field, struct
from pairkit.transports.loopback import loopback_pair
from pairkit.ttp import enrol
from tests.ttp_harness import identity, make_world, run_cpns_machines, running_server

#: the gateway's step: its elements have half of it to answer the key server (2 s), and it
#: waits at most a step for a send to an element
STEP = 4.0


@dataclasses.dataclass
class Lab:
    h: Any
    gw: LocalIdentity
    eukeys: dict[bytes, bytes]
    honest: list[LocalIdentity]
    #: enrolled elements not in reach, whose ids the strangers claim
    absent: list[LocalIdentity]


async def lab(h: Any, honest: int, absent: int) -> Lab:
    gw = identity("gateway")
    els = [identity(f"element {k}") for k in range(honest)]
    gone = [identity(f"absent {k}") for k in range(absent)]
    eukeys = {d.device_id: os.urandom(32) for d in (gw, *els, *gone)}
    for d in (gw, *els, *gone):
        await enrol(h.address, h.ca, d, eukey=eukeys[d.device_id])
    return Lab(h, gw, eukeys, els, gone)


def accept_notify(pne: LocalIdentity) -> bytes:
    """A stranger's yes to the setup notify under ``pne``'s id: it needs nothing from the
    notify (the answer names no PN), so it can send it without reading a byte."""
    return PnSetupNotifyResponse(pne.device_id, pne.name, 1, os.urandom(16), True, True).encode()


async def run_setup(
    lab: Lab, strangers: dict[str, tuple[Any, Any]], *, element_step: float = 3 * STEP,
) -> tuple[Any, list[Any]]:
    """The gateway's "all" setup with the honest elements (real PNE machines, their step
    ``element_step``) and the strangers' links (``name -> (link, its task)``); the gateway's
    inventory (or error) and each honest element's membership (or error)."""
    pairs = [loopback_pair(names=("gw", f"element {k}")) for k in range(len(lab.honest))]
    pnes = {k: PneLink(p.a, d.device_id) for k, (p, d) in enumerate(zip(pairs, lab.honest,
                                                                          strict=True))}
    for name, (link, _task) in strangers.items():
        pnes[name] = PneLink(link)
    gateway = run_gateway(
        pnes, me=lab.gw, server=lab.h.address, ca_file=lab.h.ca, initiate=(SetupType.ALL, ()),
        config=GatewayConfig(lab.gw.device_id, "gateway", lab.eukeys[lab.gw.device_id],
                             collect_window=1.0, step_timeout=STEP),
    )
    runs = [run_pne(p.b, PneConfig(d.device_id, d.name, lab.eukeys[d.device_id],
                                   step_timeout=element_step), listen=True)
            for p, d in zip(pairs, lab.honest, strict=True)]
    try:
        inventory, *results = await asyncio.gather(gateway, *runs, return_exceptions=True)
    finally:
        for _link, task in strangers.values():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for p in pairs:
            await p.aclose()
    return inventory, results


async def test_a_stranger_whose_link_takes_no_data_does_not_fail_the_setup_for_the_element(
    tmp_path: Path,
) -> None:
    """Finding 2 of the attack review of the registration's wait, fixed (session 9: each
    element's link has a sender of its own in run_gateway).  A stranger in reach under an
    enrolled element's id says yes to the gateway's setup notify without reading it, and from
    then on takes no data on its link (here a link that holds one unread message; over BLE, an
    L2CAP channel whose receiver grants no credits).  The key server asks it for its proof: the
    gateway's send of that question waits, up to its step (4 s), and the gateway relays nothing
    meanwhile.  The key server now waits half that step (2 s) for the elements: the honest
    element's answer, given at once, is still in the gateway's inbox when the wait ends, and
    the key server fails it ("did not answer in time"; until the fix of the next test, the
    gateway, relaying it to a key server that had answered and hung up, then failed the whole
    setup besides).  What the attacker gets:
    finding 4 of the setup retry review again (an honest element in the same setup is not set
    up), with a stranger that withholds flow control instead of one that stays silent; the
    shorter wait made the step-long send decisive (before, the key server waited 15 s and the
    gateway's 8 s deadline ended the setup in either case).  Now the stranger's link holds
    only its own messages, and the honest element is set up."""
    async with running_server(tmp_path / "srv") as h:
        lb = await lab(h, honest=1, absent=1)
        stranger = loopback_pair(names=("gw", "stranger"), queue_size=1)

        async def never_reads() -> None:
            await MessagePipe(stranger.b, guest=True).send(accept_notify(lb.absent[0]))
            await asyncio.Event().wait()

        task = asyncio.create_task(never_reads())
        inventory, (element,) = await run_setup(lb, {"stranger": (stranger.a, task)})
        await stranger.aclose()
        assert not isinstance(element, BaseException), element
        assert not isinstance(inventory, BaseException), inventory
        assert [m.name for m in inventory.members] == ["element 0"]


async def test_a_late_answer_relayed_after_the_key_server_answered_does_not_undo_its_answer(
    tmp_path: Path,
) -> None:
    """Finding (attack review of the registration's wait; fixed).  Two strangers in reach,
    under the ids of two enrolled elements that are not.  The honest element answers the key
    server at once, and the gateway relays it.  Then the first stranger, whose link has taken
    the two messages it was sent and takes no more, speaks out of turn: the gateway drops it,
    and its Abort to it waits, up to the gateway's step (4 s).  Meanwhile the second stranger
    sends an authentication answer (any bytes), which waits in the gateway's inbox, and the key
    server's wait for the elements (2 s) ends: it registers the honest element, answers and
    hangs up.
    When the gateway is free again it relays the waiting answer first, to the connection the
    key server closed, and that error ends the whole setup: the honest element, which the key
    server registered (its LocalEUKey stored), is told the setup failed, and the gateway keeps
    no PN.  What the attacker gets: any element's setup fails although the key server
    registered it (the key server and the gateway then disagree on the PN).  Now a send to
    the key server that finds it gone is let go: its answer, read next, decides."""
    async with running_server(tmp_path / "srv") as h:
        lb = await lab(h, honest=1, absent=2)
        staller = loopback_pair(names=("gw", "staller"), queue_size=2)
        late = loopback_pair(names=("gw", "late"))
        asked = asyncio.Event()

        async def stall() -> None:
            pipe = MessagePipe(staller.b, guest=True)
            await pipe.send(accept_notify(lb.absent[0]))
            await asyncio.wait_for(asked.wait(), 30)
            await asyncio.sleep(0.2)  # the honest element's answer is relayed meanwhile
            # out of turn: dropped, and the gateway's Abort waits on the full link
            await pipe.send(PnAttach(lb.absent[0].device_id, "absent 0", 1).encode())
            await asyncio.Event().wait()

        async def answer_late() -> None:
            pipe = MessagePipe(late.b, guest=True)
            notify = wire.decode(await pipe.recv())
            assert isinstance(notify, PnSetupNotify)
            await pipe.send(accept_notify(lb.absent[1]))
            question = wire.decode(await pipe.recv())
            assert isinstance(question, AuthenticationRequest)
            asked.set()
            await asyncio.sleep(0.5)  # the gateway is busy with the staller's Abort
            await pipe.send(AuthenticationResponse(
                question.pn_id, question.pne_id, os.urandom(32)).encode())
            await asyncio.Event().wait()

        strangers = {
            "staller": (staller.a, asyncio.create_task(stall())),
            "late": (late.a, asyncio.create_task(answer_late())),
        }
        inventory, (element,) = await run_setup(lb, strangers)
        await staller.aclose()
        await late.aclose()
        row = await h.server.db(h.server.store.pn_keys)
        assert len(row) == 1  # the key server registered the PN, with the honest element
        assert not isinstance(element, BaseException), element
        assert not isinstance(inventory, BaseException), inventory
        assert [m.name for m in inventory.members] == ["element 0"]


async def test_a_silent_stranger_does_not_fail_an_element_whose_step_is_shorter_than_the_gateways(
    tmp_path: Path,
) -> None:
    """Finding 4 (attack review of the registration's wait; low: a matter of settings; fixed,
    session 10).  The key
    server waits for the elements half the *gateway's* step (here 2 s of 4); an element, once
    it has answered, waits its *own* step for the outcome (here 1.5 s, as ``pairkit pn join
    --timeout 1.5`` against a gateway's ``--timeout 4``: the defaults are equal, 30 s).  A
    stranger in the setup under an enrolled element's id, which reads what it is sent and
    never answers, holds the key server's answer for the whole wait: the honest element gives
    up first, although the key server then registers it (its LocalEUKey stored) and the
    gateway lists it as failed.  What the attacker gets: with an element set to a step under
    half its gateway's, a silent stranger still fails it (finding 4 of the setup retry review,
    for such elements), and the key server keeps a member neither it nor the gateway has.  Now
    the gateway's relay of the key server's question says how long the key server waits
    (``AuthenticationRequest.auth_wait_ms``, 2 s here), and the element waits for the outcome
    twice that (4 s), so it is set up (the tests below bound what a gateway can claim)."""
    async with running_server(tmp_path / "srv") as h:
        lb = await lab(h, honest=1, absent=1)
        stranger = loopback_pair(names=("gw", "stranger"))

        async def silent() -> None:
            pipe = MessagePipe(stranger.b, guest=True)
            await pipe.send(accept_notify(lb.absent[0]))
            while True:  # reads everything, answers nothing
                await pipe.recv()

        task = asyncio.create_task(silent())
        inventory, (element,) = await run_setup(lb, {"stranger": (stranger.a, task)},
                                                element_step=1.5)
        await stranger.aclose()
        assert not isinstance(element, BaseException), element
        assert not isinstance(inventory, BaseException), inventory
        assert [m.name for m in inventory.members] == ["element 0"]


# -- the wait the gateway tells its elements (AuthenticationRequest field 6) -------------------
#
# The fix of the finding above: the gateway says, on its relay of the key server's question,
# how long the key server waits for the answers (``auth_wait_ms``, its own registration
# request's value; absent: 15 s, the default gateway's), and an element waits for the outcome
# at least twice that (the key server's wait, and as long again for its answer to come back),
# never less than its own step, and never more than a minute (a key server waits no longer than
# its own deadline, 30 s by default).  A gateway is not trusted with the element's time: the
# field is checked for bounds, and what it claims past the cap holds no one.


@pytest.mark.parametrize(("auth_wait_ms", "step", "outcome_wait"), [
    (2000, 1.5, 4.0),  # the finding's settings: the key server waits 2 s; the element 4 s
    (None, 1.5, 30.0),  # a default gateway: the key server may wait 15 s
    (None, 30.0, 30.0),  # the defaults: as before
    (100, 1.5, 1.5),  # a gateway cannot cut the element's own step
    (3_600_000, 1.5, 60.0),  # nor make it wait an hour: a minute at most
    (3_600_000, 3600.0, 3600.0),  # an element's own longer step is its own
])
def test_a_gateway_claiming_a_long_wait_holds_the_element_no_longer_than_a_minute(
    auth_wait_ms: int | None, step: float, outcome_wait: float,
) -> None:
    """A malicious gateway relays the key server's question with the longest wait the field
    allows (an hour), then never says how the setup ended.  The element answers and waits for
    the outcome at most a minute (or its own step, if longer), then fails with a timeout; it
    never waits less than its own step, whatever the gateway says.  The element's machine,
    with the outcome's deadline read from it (the driver honours it: pairkit.driver.drive)."""
    config = PneConfig(b"\x01" * 16, "element", os.urandom(32), step_timeout=step)
    pne = PneMachine(config, listen=True)
    pne.start(0.0)
    pn_id, gw_id = b"\x07" * 16, b"\x09" * 16
    pne.receive(PnSetupNotify(pn_id, gw_id, "gateway", SetupType.ALL).encode(), 0.0)
    assert [type(wire.decode(d)) for d in pne.outgoing()] == [PnSetupNotifyResponse]
    pne.receive(AuthenticationRequest(pn_id, config.pne_id, gw_id, os.urandom(16),
                                      auth_wait_ms=auth_wait_ms).encode(), 10.0)
    assert [type(wire.decode(d)) for d in pne.outgoing()] == [AuthenticationResponse]
    assert pne.next_deadline() == pytest.approx(10.0 + outcome_wait)
    pne.on_timeout(10.0 + outcome_wait - 0.01)
    assert not pne.failed
    with pytest.raises(PairingTimeout, match="did not say whether the PN was established"):
        pne.on_timeout(10.0 + outcome_wait)


@pytest.mark.parametrize("value", [0, 99, 3_600_001, 2**32, "2000"])
def test_a_relayed_question_with_a_wait_out_of_bounds_does_not_decode(value: Any) -> None:
    """A gateway's wait below 100 ms or above an hour (or not a number) is a decode error that
    names the field, whether built or received; an element refuses it before answering."""
    pn_id, pne_id, gw_id = b"\x07" * 16, b"\x01" * 16, b"\x09" * 16
    if isinstance(value, int):
        with pytest.raises(DecodeError, match=r"AuthenticationRequest\.auth_wait_ms"):
            AuthenticationRequest(pn_id, pne_id, gw_id, b"\x02" * 16, auth_wait_ms=value)
    body = cbor.decode(AuthenticationRequest(pn_id, pne_id, gw_id, b"\x02" * 16,
                                             auth_wait_ms=2000).encode(), max_size=256)
    assert body[6] == 2000
    body[6] = value
    data = cbor.encode_ordered(dict(sorted(body.items())))
    with pytest.raises(DecodeError, match="auth_wait_ms"):
        wire.decode(data)
    pne = PneMachine(PneConfig(pne_id, "element", os.urandom(32)), listen=True)
    pne.start(0.0)
    pne.receive(PnSetupNotify(pn_id, gw_id, "gateway", SetupType.ALL).encode(), 0.0)
    pne.outgoing()
    with pytest.raises(DecodeError, match="auth_wait_ms"):
        pne.receive(data, 1.0)
    assert [type(wire.decode(d)) for d in pne.outgoing()] == [wire.Abort]


@pytest.mark.parametrize(("gw_step", "relayed"), [
    (30.0, None),  # the default: the relay is the key server's message, byte for byte
    (4.0, 2000),
    (0.1, 100),
    (3600.0, 1_800_000),
])
def test_the_gateway_tells_its_elements_its_wait_only_when_it_is_not_the_default(
    gw_step: float, relayed: int | None,
) -> None:
    """The gateway's relay of the key server's question carries the wait its registration
    request asked for, only when it is not the default 15 s: with default settings what the
    elements receive is unchanged (no field 6; an element of an earlier version takes it).
    A key server that writes a wait of its own in its question (a later version's, or a
    hostile one's) does not set what the elements are told: the gateway's word replaces it."""
    from_server: list[AuthenticationRequest] = []
    to_pnes: list[bytes] = []

    def spy(src: Any, dst: Any, msg: Any) -> Any:
        if isinstance(msg, AuthenticationRequest) and dst == "gw":
            from_server.append(msg)
            return dataclasses.replace(msg, auth_wait_ms=3_600_000)
        if isinstance(msg, AuthenticationRequest):
            to_pnes.append(msg.encode())
        return None

    world, _, _ = make_world(n=2, initiator=None, gw_step=gw_step)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL), tamper=spy)
    assert world.gw.done and len(world.gw.inventory.members) == 2
    assert len(from_server) == len(to_pnes) == 2
    for sent, data in zip(from_server, to_pnes, strict=True):
        assert wire.decode(data).auth_wait_ms == relayed
        if relayed is None:
            assert 6 not in cbor.decode(data, max_size=256)
            assert data == dataclasses.replace(sent, auth_wait_ms=None).encode()


@pytest.mark.parametrize("element_step", [1.5, 12.0])
async def test_an_element_that_does_not_know_the_field_is_listed_failed_with_the_reason(
    tmp_path: Path, element_step: float,
) -> None:
    """An element of an earlier version (its AuthenticationRequest has fields 2 to 5, and the
    decoder refuses any other key: docs/protocol.md §1.1) in the setup of a gateway whose step
    is not the default.  It refuses the relayed question with an Abort naming the unknown
    field, as its driver does with any decode error; the gateway lists it as failed with that
    reason (``pn ls``) instead of leaving it waiting, and the setup ends for the others within
    the key server's wait: the honest element is a member (with a step under half the
    gateway's, too)."""
    async with running_server(tmp_path / "srv") as h:
        lb = await lab(h, honest=1, absent=1)
        old = lb.absent[0]  # enrolled, in reach, and of the earlier version
        link = loopback_pair(names=("gw", "old element"))

        async def earlier_version() -> None:
            pipe = MessagePipe(link.b, guest=True)
            notify = wire.decode(await pipe.recv())
            assert isinstance(notify, PnSetupNotify)
            rand = os.urandom(16)
            await pipe.send(PnSetupNotifyResponse(old.device_id, old.name, 1, rand, True,
                                                  True).encode())
            data = await pipe.recv()
            try:
                question = decode_as_before(data)
            except DecodeError as exc:
                await pipe.send(wire.Abort(code=ErrorCode.DECODE, reason=str(exc)).encode())
                return
            ids = {"pn_id": question.pn_id, "pne_id": question.pne_id, "gw_id": question.gw_id}
            sk = derive_sk(lb.eukeys[old.device_id], **ids, rand_pne=rand,
                           rand_server=question.rand_server)
            proof = hash_pne(sk, **ids, rand_pne=rand, rand_server=question.rand_server)
            await pipe.send(AuthenticationResponse(question.pn_id, question.pne_id,
                                                   proof).encode())
            await asyncio.Event().wait()

        task = asyncio.create_task(earlier_version())
        inventory, (element,) = await run_setup(lb, {"old": (link.a, task)},
                                                element_step=element_step)
        await link.aclose()
        assert not isinstance(element, BaseException), element
        assert not isinstance(inventory, BaseException), inventory
        assert [m.name for m in inventory.members] == ["element 0"]
        assert "unknown field 6" in inventory.failed[old.device_id], inventory.failed


async def test_an_element_refuses_a_field_it_does_not_know_at_once_and_says_why() -> None:
    """What an element of an earlier version does with field 6, shown on this version's element
    with a field it does not know (7): its decoder refuses the question, it stops at once with a
    decode error naming the field, and tells the gateway in an Abort (code 2, decode) instead of
    waiting out its step.  A hand-played gateway on a loopback link."""
    pair = loopback_pair(names=("gw", "element"))
    me = identity("element")
    config = PneConfig(me.device_id, me.name, os.urandom(32), step_timeout=3600.0)
    pn_id, gw_id = os.urandom(16), os.urandom(16)

    async def gateway() -> wire.Message:
        pipe = MessagePipe(pair.a, guest=False)
        await pipe.send(PnSetupNotify(pn_id, gw_id, "gateway", SetupType.ALL).encode())
        assert isinstance(wire.decode(await pipe.recv()), PnSetupNotifyResponse)
        body = cbor.decode(AuthenticationRequest(pn_id, me.device_id, gw_id,
                                                 os.urandom(16)).encode(), max_size=256)
        body[7] = 2000
        await pipe.send(cbor.encode_ordered(dict(sorted(body.items()))))
        return wire.decode(await pipe.recv())

    try:
        element, answer = await asyncio.gather(run_pne(pair.b, config, listen=True), gateway(),
                                               return_exceptions=True)
    finally:
        await pair.aclose()
    assert isinstance(element, DecodeError) and "unknown field 7" in str(element), element
    assert isinstance(answer, wire.Abort) and answer.code == ErrorCode.DECODE, answer
    assert "unknown field 7" in answer.reason


@struct
class AuthenticationRequestBefore(Message):
    """Type 74 as elements before field 6 decode it: fields 2 to 5, nothing else."""

    pn_id: bytes = field(2, size=ID_LEN)
    pne_id: bytes = field(3, size=ID_LEN)
    gw_id: bytes = field(4, size=ID_LEN)
    rand_server: bytes = field(5, size=RAND_LEN)


def decode_as_before(data: bytes) -> AuthenticationRequestBefore:
    """The earlier version's strict decoding of an AuthenticationRequest (§1.1: every key must be
    known to the type): this version's decoder, on the earlier fields."""
    body = cbor.decode(data, max_size=256)
    if body.pop(0, None) != 1 or body.pop(1, None) != 74:
        raise DecodeError("not an AuthenticationRequest")
    return wire.decode_struct(AuthenticationRequestBefore, cbor.encode_ordered(body))
