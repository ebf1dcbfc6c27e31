"""Which of the host owner's questions a stranger can cause, and how many he can queue
(runtime/api.py ``_OneQuestionAtATime``, runtime/session.py ``accept_session``,
pairing/cloud.py ``CloudHost``; session 15, helper hostq, doubt 3).

The library host asks its delegate one question at a time, first come first asked, each for
at most the step timeout, as ``pairkit host``'s Terminal asks (cli/prompt.py): so every
question a stranger queues delays an honest guest's by up to one step.  A stranger without a
code can ask to join (``allow_join``) while the host is visible, once per link: one address
queues at most ``per_address`` questions at once (the admission), whichever host it is.  The
other questions need more: ``confirm_code`` the owner's yes to the join request (or a cloud
proof), ``allow_request`` a paired session; ``join_cloud`` is a guest's question only.

A device that pairs again while its grant holds says its device id in the join request (in
the clear: anyone who saw it once can repeat it) and is let through the cloud step with no
prompt, "the claim to be proved by the pairing".  Before (session 15, fixed), that pairing
could be any method the host offers: a stranger naming a known guest's id reached the
owner's ``confirm_code`` (a code for "George" the owner never let in) and played a PIN
guess, on a private host too (its visibility window closed), and only after the pairing was
the claim found false.  A claim is now honoured only for ``resume``, ``kk`` or ``ttp``, the
methods that prove the claimed key, and refused before anyone is asked for any other (an honest
known device says its id only for those); the pairing runs the method the join request said.

Played over the in-process loopback, real links end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit import peers
from pairkit.admission import AdmissionLimits
from pairkit.delegate import Grant, Role
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Argon2Params
from pairkit.pairing.cloud import CloudGuest, auth_mac_from
from pairkit.pairing.errors import ErrorCode, PairingError
from pairkit.pairing.methods import GuestPairing, PairingConfig
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.transports import loopback


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


class Owner(pairkit.Agree):
    """The host's person: records each question in the order asked; join requests wait for
    the test's answer (``joins``), codes are refused."""

    def __init__(self, *, joins: asyncio.Queue[Grant | None] | None = None) -> None:
        super().__init__()
        self.asked: list[tuple[str, str]] = []
        self.joins = joins

    async def allow_join(self, q: Any) -> Grant | None:
        self.asked.append(("join", q.name))
        if self.joins is None:
            return Grant(Role.GUEST, 3600)
        return await self.joins.get()

    async def confirm_code(self, q: Any) -> bool:
        self.asked.append(("code", ""))
        return False


async def _stop(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _until(condition: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def _answered(owner: Owner, joins: asyncio.Queue[Grant | None], answer: Grant | None,
                    tries: list[asyncio.Future[Any]]) -> None:
    """The owner answers the question on the screen; returns once the next is asked (or
    every one of Mallory's tries has ended)."""
    seen = len(owner.asked)
    joins.put_nowait(answer)
    await _until(lambda: len(owner.asked) > seen or all(t.done() for t in tries))


async def test_one_stranger_address_queues_at_most_per_address_questions(
    tmp_path: Path,
) -> None:
    """Mallory asks to join six times at once from one address (``per_address=3``), and
    nobody answers yet; George asks after her.  Three of hers are told busy; the owner is
    asked at most three of hers, and George's question comes after at most those three
    (first come, first asked: the bound ``pairkit host`` has too)."""
    paul, mallory, george = (device(tmp_path, n) for n in ("Paul", "Mallory", "George"))
    joins: asyncio.Queue[Grant | None] = asyncio.Queue()
    owner = Owner(joins=joins)
    spec = "loopback:api-questions"
    async with paul.host(spec, methods=["pin"], delegate=owner,
                         admission=AdmissionLimits(per_address=3)) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        from_mallory = loopback.open("api-questions")  # one endpoint: one address
        tries = [asyncio.ensure_future(mallory.join(spec, transport=from_mallory, pin="000000"))
                 for _ in range(6)]
        george_joins: asyncio.Future[Any] | None = None
        try:
            await _until(lambda: sum(t.done() for t in tries) >= 3 and owner.asked)
            busy = [t for t in tries if t.done()]
            for t in busy:
                assert isinstance(t.exception(), PairingError)
                assert t.exception().code is ErrorCode.BUSY  # type: ignore[union-attr]
            await asyncio.sleep(0.2)  # Mallory's admitted links have queued their questions
            george_joins = asyncio.ensure_future(george.join(spec, pin=host.pin))
            await asyncio.sleep(0.2)  # George's question is queued behind them
            # The owner comes back: refuses Mallory's requests, one at a time, until George's.
            while not any(name == "George" for _, name in owner.asked):
                await _answered(owner, joins, None, tries)
            joins.put_nowait(Grant(Role.GUEST, 3600))
            async with await accepting as on_paul, await george_joins as on_george:
                assert (on_paul.peer.name, on_george.peer.name) == ("George", "Paul")
            mallorys = [q for q in owner.asked if q[1] == "Mallory"]
            assert len(mallorys) <= 3, owner.asked
            assert owner.asked.index(("join", "George")) <= 3, owner.asked
        finally:
            await _stop(accepting, *tries, *([george_joins] if george_joins else []))


async def _claim(host_spec: str, claimer: pairkit.Device, claimed_id: str, method: Method,
                 *, pin: str | None = None, said: Method | None = None,
                 to: bytes = b"") -> BaseException | None:
    """``claimer`` joins ``host_spec`` saying it is the device ``claimed_id`` (the join request
    of a known device pairing again, its id copied and sealed to ``to``, the host's key, as
    anyone who knows both can) and that it pairs by ``said`` (default:
    ``method``), then pairs by ``method`` with its own key, as a stranger who overheard that
    id would.  What the claimer's side ended with."""
    link = await loopback.open(host_spec.removeprefix("loopback:")).connect(None, timeout=5)
    ks = claimer.keystore
    me = peers.local_identity(ks)
    config = PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS,
                           step_timeout=5)
    machine = GuestPairing(config, me, method=method, link_encrypted=False, pin=pin)
    pipe = MessagePipe(link, guest=True)
    cloud = CloudGuest(
        name="George", clouds=(), static=me.static_public,
        mac=auth_mac_from(lambda cid, info, n: ks.cloud_kdf(cid, info, n)),
        device_id=bytes.fromhex(claimed_id), host_static=to, timeout=5, answer_time=5,
        method=int(said or method),
    )
    loop = asyncio.get_running_loop()
    try:
        cloud.start(loop.time())
        await drive(cloud, pipe, delegate=pairkit.Agree(confirm_codes=True), clock=loop.time)
        machine.bind_context(pipe.transcript())
        machine.start(loop.time())
        await drive(machine, pipe, delegate=pairkit.Agree(confirm_codes=True), clock=loop.time)
    except PairingError as exc:
        return exc
    finally:
        await link.close()
    return None


@pytest.mark.parametrize("visible", [600.0, None], ids=["visible", "private"])
@pytest.mark.parametrize("said", [None, Method.RESUME], ids=["saying-it", "saying-resume"])
@pytest.mark.parametrize("method", [Method.COMPARE, Method.PIN], ids=["compare", "pin"])
async def test_a_stranger_claiming_a_known_guests_id_reaches_no_question_and_no_pin(
    tmp_path: Path, visible: float | None, said: Method | None, method: Method
) -> None:
    """George paired with Paul by PIN earlier (a guest for an hour).  Mallory repeats George's
    device id in her join request, saying she pairs by ``method`` (or by resume, which passes
    the cloud step with no prompt), and pairs by ``method`` with her own key.  Paul's owner
    must be asked nothing that his yes to a join request did not open (no code for
    "George"), no PIN of Paul's is played, and Mallory does not pair; on a private host as on
    a visible one."""
    paul, george, mallory = (device(tmp_path, n) for n in ("Paul", "George", "Mallory"))
    async with paul.host("loopback:api-claim0", methods=["pin"],
                         delegate=Owner()) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=15))
        async with await george.join("loopback:api-claim0", pin=host.pin), await accepting:
            pass
    refuse: asyncio.Queue[Grant | None] = asyncio.Queue()
    for _ in range(4):
        refuse.put_nowait(None)  # a join request is refused
    owner = Owner(joins=refuse)
    spec = "loopback:api-claim1"
    async with paul.host(spec, methods=["pin", "compare"], delegate=owner,
                         visible=visible) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=15))
        try:
            pin = host.pin
            ended = await _claim(spec, mallory, george.device_id, method, pin="000000",
                                 said=said, to=paul.keystore.static_public)
            assert isinstance(ended, PairingError), ended
            assert ("code", "") not in owner.asked, owner.asked
            assert host.pin == pin, "a PIN of Paul's was played by a claimer"
            assert not accepting.done()
        finally:
            await _stop(accepting)
    # George himself still comes back by resume, asking nobody.
    owner.asked.clear()
    async with paul.host(spec, methods=["pin"], delegate=owner, visible=None) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=15))
        async with await george.join("Paul", transport=spec), await accepting as on_paul:
            assert on_paul.peer.name == "George"
        assert owner.asked == []
