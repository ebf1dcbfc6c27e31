"""compare with Noise XX message 1 in the host's Reveal (issue 13; docs/security.md, "compare:
what may cross before the people confirmed the code").

The host now sends the first message of the identity handshake beside its nonce N_H, before its
person confirmed the code.  These attacks check that this proves nothing and opens nothing,
played by the real machines under :func:`pairkit.driver.drive` over real links (loopback, and
bumble virtual radios with L2CAP), each side behind a :class:`Wire` that sees, and for the
attacker rewrites, every whole message it sends:

* Mallory substitutes PK_G (a host toward the guest, a guest toward the host, her own keys):
  each side reads a valid message 1 (she holds each side's SK), yet the two screens show two
  codes and the people refuse; nobody has a session.
* One bit flipped in message 1 (in the ephemeral, in the tag): the guest stops before its person
  is asked, with an authentication error, and the host's question is withdrawn.
* A host that sends a message 3 before the guest's person confirmed (a recorded one): nothing
  is taken; a guest whose person says no never reads it, one who says yes fails on it.
* A guest whose message 2 arrives while the host's person is still asked: the host has not read
  it (no session) until its person answers; after a yes the pairing completes, after a no it
  ends refused and the message was never read.
* A person who refuses on either side after message 1 was sent: the real ``pairkit host`` and
  ``pairkit join`` flows over bumble store nothing on either side, and the other side ends with
  ``Abort{6 refused}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pairkit import peers
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Keystore
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest
from pairkit.pairing.errors import (
    AuthenticationError,
    BusyError,
    ErrorCode,
    PairingError,
    RefusedError,
    RemoteError,
)
from pairkit.pairing.framing import Reassembler, fragment
from pairkit.pairing.messages import NoiseMessage, Reveal
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
)
from pairkit.pairing.negotiation import Method
from pairkit.transports.loopback import loopback_pair
from tests.attack_harness import STEP, Yes
from tests.ble_harness import (
    Person,
    World,
    ble_pair,
    eventually,
    george,
    paul,
    reopen,
    world,
)
from tests.pair_harness import make_pair
from tests.turns_harness import BUDGET, Mallory, TakesASecond

__all__ = ["george", "paul", "world"]

LINKS = ["loopback", "bumble"]
CONFIG = PairingConfig(step_timeout=STEP)


# -- links, wires, people -------------------------------------------------------------------------


class Wire:
    """One side's link, seen whole message by whole message as that side sends them.

    ``rewrite`` (an attacker's) turns each message into the messages actually sent: itself,
    changed, several, or none.  ``sent`` holds what went out, decoded.
    """

    def __init__(self, link: Any, rewrite: Callable[[bytes], list[bytes]] | None = None) -> None:
        self.link = link
        self.rewrite = rewrite
        self.sent: list[wire.Message] = []
        self._whole = Reassembler(64 * 1024)

    @property
    def mtu(self) -> int:
        return int(self.link.mtu)

    async def send(self, piece: bytes) -> None:
        message = self._whole.feed(piece)
        if message is None:
            return  # the rest of it comes next (MessagePipe sends a message's pieces in a row)
        for out in self.rewrite(message) if self.rewrite else [message]:
            self.sent.append(wire.decode(out))
            for p in fragment(out, self.link.mtu):
                await self.link.send(p)

    async def recv(self) -> bytes:
        return await self.link.recv()  # type: ignore[no-any-return]

    def of(self, cls: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, cls)]


@contextlib.asynccontextmanager
async def link_pairs(kind: str, n: int = 1) -> AsyncIterator[list[tuple[Any, Any]]]:
    """``n`` (guest link, host link) pairs of ``kind``: loopback, or bumble L2CAP links on
    virtual controllers (every pair its own two devices on one radio)."""
    if kind == "loopback":
        pairs = [loopback_pair(names=(f"guest{i}", f"host{i}")) for i in range(n)]
        try:
            yield [(p.a, p.b) for p in pairs]
        finally:
            for p in pairs:
                await p.aclose()
        return
    w = World()
    try:
        out = []
        for _ in range(n):
            _host, _guest, guest_link, host_link = await ble_pair(w)
            out.append((guest_link, host_link))
        yield out
    finally:
        await w.close()


class Screens:
    """What each device's screen shows, for people who compare them."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}


class Viewer:
    """A person who answers yes only when the other screen shows the same code (waiting for it
    at most a step); ``first`` runs before the answer (a check, or a wait for something)."""

    def __init__(self, side: str, screens: Screens, *, answer: bool | None = None,
                 first: Callable[[], Any] | None = None) -> None:
        self.side, self.screens, self.answer, self.first = side, screens, answer, first
        self.asked: list[str] = []
        self.withdrawn = False

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked.append(q.code)
        self.screens.codes[self.side] = q.code
        try:
            if self.first is not None:
                await self.first()
            if self.answer is not None:
                return self.answer
            other = "host" if self.side == "guest" else "guest"
            await eventually(lambda: other in self.screens.codes, STEP)
            return self.screens.codes[other] == q.code
        except asyncio.CancelledError:
            self.withdrawn = True  # the driver withdrew the question (an Abort came)
            raise


def machines() -> tuple[GuestPairing, HostPairing]:
    george_id = LocalIdentity.generate("George's phone")
    paul_id = LocalIdentity.generate("Paul's phone")
    guest = GuestPairing(CONFIG, george_id, method=Method.COMPARE)
    host = HostPairing(CONFIG, paul_id, HostState())
    return guest, host


async def run_both(*runs: tuple[Any, Any, Any, bool]) -> list[BaseException | None]:
    """Drive each (machine, link, delegate, is guest) at once, over MessagePipes as the product
    does (reading ahead while a person is asked); the error each ended with, or None."""

    async def one(machine: Any, link: Any, delegate: Any, guest: bool) -> None:
        await drive(machine, MessagePipe(link, guest=guest), delegate=delegate)

    loop = asyncio.get_running_loop()
    for machine, *_ in runs:
        if not machine.started:
            machine.start(loop.time())
    results = await asyncio.wait_for(
        asyncio.gather(*(one(*r) for r in runs), return_exceptions=True), 4 * STEP
    )
    return [r if isinstance(r, BaseException) else None for r in results]


def flip(position: int) -> Callable[[bytes], list[bytes]]:
    """Flip one bit of the host's Noise message 1, at ``position`` of its 48 bytes."""

    def rewrite(data: bytes) -> list[bytes]:
        msg = wire.decode(data)
        if isinstance(msg, Reveal) and msg.noise is not None:
            noise = bytearray(msg.noise)
            noise[position] ^= 0x01
            return [dataclasses.replace(msg, noise=bytes(noise)).encode()]
        return [data]

    return rewrite


# -- a man in the middle who substitutes PK_G ----------------------------------------------------


@pytest.mark.parametrize("kind", LINKS)
async def test_mallory_substituting_pk_g_gets_two_codes_and_is_refused(kind: str) -> None:
    guest, host = machines()
    mallory_id = LocalIdentity.generate("Paul's phone")  # she claims the host's name
    toward_guest = HostPairing(CONFIG, mallory_id, HostState())
    toward_host = GuestPairing(CONFIG, mallory_id, method=Method.COMPARE)
    screens = Screens()
    g_person, h_person = Viewer("guest", screens), Viewer("host", screens)
    async with link_pairs(kind, 2) as [(g_link, mh_link), (mg_link, h_link)]:
        g_wire, mh_wire = Wire(g_link), Wire(mh_link)
        mg_wire, h_wire = Wire(mg_link), Wire(h_link)
        errors = await run_both(
            (guest, g_wire, g_person, True), (toward_guest, mh_wire, Yes(), False),
            (toward_host, mg_wire, Yes(), True), (host, h_wire, h_person, False),
        )
    # Each honest side read a valid message 1 (Mallory holds both SKs) and showed a code ...
    assert [r.noise is not None for r in h_wire.of(Reveal)] == [True]
    assert [r.noise is not None for r in mh_wire.of(Reveal)] == [True]
    assert len(g_person.asked) == 1 and len(h_person.asked) == 1
    # ... but not the same one (equal with probability 10^-6), so both people refuse.
    assert g_person.asked != h_person.asked
    g_err, mh_err, mg_err, h_err = errors
    assert isinstance(g_err, RefusedError) and "not confirmed" in str(g_err)
    assert isinstance(h_err, RefusedError) and "not confirmed" in str(h_err)
    assert isinstance(mh_err, RemoteError) and mh_err.code == ErrorCode.REFUSED
    assert isinstance(mg_err, RemoteError) and mg_err.code == ErrorCode.REFUSED
    assert guest.session is host.session is None
    assert toward_guest.session is toward_host.session is None
    # Neither identity left its device: the guest sent no message 2, the host no message 3.
    assert g_wire.of(NoiseMessage) == [] and h_wire.of(NoiseMessage) == []


# -- one bit flipped in message 1 ----------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 31, 32, 47], ids=["e-first", "e-last", "tag-first",
                                                          "tag-last"])
@pytest.mark.parametrize("kind", LINKS)
async def test_a_flipped_bit_in_message_1_stops_the_guest_before_it_asks(
    kind: str, position: int
) -> None:
    guest, host = machines()
    screens = Screens()
    g_person = Viewer("guest", screens)
    # The host's person keeps looking until the guest's Abort withdraws the question.
    h_person = Viewer("host", screens, first=lambda: asyncio.sleep(4 * STEP))
    async with link_pairs(kind) as [(g_link, h_link)]:
        g_wire, h_wire = Wire(g_link), Wire(h_link, rewrite=flip(position))
        g_err, h_err = await run_both((guest, g_wire, g_person, True),
                                      (host, h_wire, h_person, False))
    assert isinstance(g_err, AuthenticationError), g_err
    assert "session key differs" in str(g_err)
    assert g_person.asked == []  # the guest's person was never shown a code
    assert isinstance(h_err, RemoteError) and h_err.code == ErrorCode.AUTH_FAILED
    assert h_person.withdrawn  # the host's question was withdrawn by the guest's Abort
    assert guest.session is host.session is None
    assert g_wire.of(NoiseMessage) == []  # the guest's identity never left it


# -- a host that sends message 3 early -----------------------------------------------------------


def recorded_message_3() -> bytes:
    """The host's message 3 of an honest compare pairing between two other devices."""
    pair = make_pair(Method.COMPARE, seed=13)
    result = pair.run()
    assert pair.guest.done and pair.host.done, result.errors
    return [d for direction, d in result.messages if direction == "h2g"][-1]


@pytest.mark.parametrize("guest_says", [True, False], ids=["guest-yes", "guest-no"])
@pytest.mark.parametrize("kind", LINKS)
async def test_a_host_that_sends_message_3_early_gets_nothing(kind: str, guest_says: bool) -> None:
    guest, host = machines()
    early = recorded_message_3()
    assert isinstance(wire.decode(early), NoiseMessage)

    def and_message_3(data: bytes) -> list[bytes]:
        msg = wire.decode(data)
        return [data, early] if isinstance(msg, Reveal) else [data]

    screens = Screens()
    g_person = Viewer("guest", screens, answer=guest_says)
    async with link_pairs(kind) as [(g_link, h_link)]:
        g_wire, h_wire = Wire(g_link), Wire(h_link, rewrite=and_message_3)
        g_err, _h_err = await run_both((guest, g_wire, g_person, True),
                                       (host, h_wire, Yes(), False))
    assert len(h_wire.of(NoiseMessage)) >= 1  # it did go out, right after the Reveal
    assert len(g_person.asked) == 1
    assert guest.session is None
    if guest_says:
        # Only after its person's yes does the guest send message 2 and read what came next:
        # a message 3 of another handshake, which does not open.
        assert len(g_wire.of(NoiseMessage)) == 1
        assert isinstance(g_err, AuthenticationError), g_err
    else:
        # Refused: the early message was never read, and the guest's identity never sent.
        assert isinstance(g_err, RefusedError) and "not confirmed" in str(g_err)
        assert g_wire.of(NoiseMessage) == []


# -- a guest whose message 2 comes while the host's person is asked ------------------------------


@pytest.mark.parametrize("host_says", [True, False], ids=["host-yes", "host-no"])
@pytest.mark.parametrize("kind", LINKS)
async def test_message_2_before_the_hosts_person_answered_is_read_only_after_a_yes(
    kind: str, host_says: bool
) -> None:
    guest, host = machines()
    screens = Screens()
    seen: dict[str, Any] = {}
    async with link_pairs(kind) as [(g_link, h_link)]:
        g_wire, h_wire = Wire(g_link), Wire(h_link)

        async def message_2_arrived() -> None:
            # The guest's person said yes at once; its message 2 crosses while ours looks.
            await eventually(lambda: len(g_wire.of(NoiseMessage)) == 1, STEP)
            await asyncio.sleep(0.05)  # time for the host's driver to read it (and hold it)
            seen["state"], seen["session"] = host.state, host.session

        g_person = Viewer("guest", screens, answer=True)
        h_person = Viewer("host", screens, answer=host_says, first=message_2_arrived)
        g_err, h_err = await run_both((guest, g_wire, g_person, True),
                                      (host, h_wire, h_person, False))
    # While the host's person was asked, message 2 had arrived and was not read.
    assert seen == {"state": "ask-user", "session": None}
    if host_says:
        assert g_err is None and h_err is None
        assert guest.session is not None and host.session is not None
        assert guest.session.fingerprint == host.session.fingerprint
        assert host.session.peer.device_id == guest.me.device_id
        assert host.session.peer.authenticated and guest.session.peer.authenticated
    else:
        assert isinstance(h_err, RefusedError) and "not confirmed" in str(h_err)
        assert isinstance(g_err, RemoteError) and g_err.code == ErrorCode.REFUSED
        assert guest.session is host.session is None
        assert h_wire.of(NoiseMessage) == []  # no message 3: the host's identity stayed home


# -- a person refuses after message 1 was sent ----------------------------------------------------


@pytest.mark.parametrize("refuser", ["guest", "host"])
@pytest.mark.parametrize("kind", LINKS)
async def test_a_refusal_after_message_1_ends_both_sides_with_nothing(
    kind: str, refuser: str
) -> None:
    guest, host = machines()
    screens = Screens()
    async with link_pairs(kind) as [(g_link, h_link)]:
        g_wire, h_wire = Wire(g_link), Wire(h_link)

        async def message_1_sent() -> None:
            assert [r.noise is not None for r in h_wire.of(Reveal)] == [True]

        g_person = Viewer("guest", screens, answer=refuser != "guest", first=message_1_sent)
        h_person = Viewer("host", screens, answer=refuser != "host", first=message_1_sent)
        g_err, h_err = await run_both((guest, g_wire, g_person, True),
                                      (host, h_wire, h_person, False))
    mine, theirs = (g_err, h_err) if refuser == "guest" else (h_err, g_err)
    assert isinstance(mine, RefusedError) and "not confirmed" in str(mine)
    assert isinstance(theirs, RemoteError) and theirs.code == ErrorCode.REFUSED
    assert guest.session is host.session is None
    assert h_wire.of(NoiseMessage) == []  # the host never sent message 3
    if refuser == "guest":
        assert g_wire.of(NoiseMessage) == []  # nor the guest message 2


@pytest.mark.parametrize("refuser", ["guest", "host"])
async def test_a_refusal_over_ble_stores_nothing_on_either_side(
    world: World, paul: Keystore, george: Keystore, refuser: str
) -> None:
    """The real host and join flows over bumble: nothing is stored, the other side is told."""
    host = await world.start_host(
        paul, frozenset({Method.COMPARE, Method.RESUME}),
        person=Person(confirm=refuser != "host"),
    )
    guest = await world.central("bumble")
    george_person = Person(confirm=refuser != "guest")
    with pytest.raises(PairingError) as info:
        await world.join(george, guest, host, method=Method.COMPARE, person=george_person)
    if refuser == "guest":
        assert isinstance(info.value, RefusedError)
    else:
        assert isinstance(info.value, RemoteError) and info.value.code == ErrorCode.REFUSED
    # Both people were shown the code (message 1 travels before either is asked).
    assert [k for k, _ in george_person.questions] == ["code"]
    # (the host's person was asked to let a stranger in first: the cloud step)
    await eventually(lambda: [k for k, _ in host.person.questions] == ["join", "code"])
    await asyncio.sleep(0.2)  # time for a host that (wrongly) stored to say so
    assert host.results == []
    assert list(reopen(paul).peers()) == [] and list(reopen(george).peers()) == []


# -- Mallory tries the host again and again, leaving each code that does not suit her ------------


#: visits Mallory leaves (the host's default budget is BUDGET, 5: PinPolicy's)
GRINDS = 8


def grinder(paul_id: LocalIdentity, state: HostState, *, suits: bool = False,
            answer: bool | None = None) -> tuple[Mallory, HostPairing, Viewer]:
    """One visit of Mallory's to the host ``paul_id`` (``state`` kept across its guests); the
    host's person looks at the code for a while unless ``answer`` is given."""
    mallory = Mallory(CONFIG, stay=suits)
    person = Viewer("host", Screens(), answer=answer,
                    first=None if answer is not None else (lambda: asyncio.sleep(2 * STEP)))
    return mallory, HostPairing(CONFIG, paul_id, state), person


async def one_visit(kind: str, mallory: GuestPairing, host: HostPairing, person: Viewer
                    ) -> tuple[BaseException | None, BaseException | None]:
    async with link_pairs(kind) as [(m_link, h_link)]:
        m_err, h_err = await run_both((mallory, Wire(m_link), Yes(), True),
                                      (host, Wire(h_link), person, False))
    return m_err, h_err


def locked(err: BaseException | None) -> bool:
    return isinstance(err, RemoteError) and err.code == ErrorCode.LOCKED_OUT


@pytest.mark.parametrize("kind", LINKS)
async def test_mallory_who_leaves_each_code_that_does_not_suit_her_is_held_to_a_budget(
    kind: str,
) -> None:
    paul_id = LocalIdentity.generate("Paul's phone")
    state = HostState()  # the host across guests, as `pairkit host` keeps it
    # A pairing the host's person confirmed is no failed try (not counted).
    mallory, host, person = grinder(paul_id, state, suits=True, answer=True)
    assert (await one_visit(kind, mallory, host, person)) == (None, None)
    # She learns each code as the host shows it, and leaves: the first BUDGET visits get N_H
    # (each a question the host's person saw withdrawn), then compare is locked out.
    visits = [grinder(paul_id, state) for _ in range(GRINDS)]
    errors = [await one_visit(kind, *visit) for visit in visits]
    served = [m for m, _, _ in visits if m.predicted]
    assert len(served) == BUDGET, f"the host showed {len(served)} codes to a guest that left"
    assert all(p.withdrawn for _, _, p in visits[:BUDGET])
    assert all(locked(m_err) for m_err, _ in errors[BUDGET:])
    assert [p.asked for _, _, p in visits[BUDGET:]] == [[]] * (GRINDS - BUDGET)
    assert state.compare_lock.locked_for(asyncio.get_running_loop().time()) > 0


@pytest.mark.parametrize("kind", ["loopback"])
async def test_a_code_the_hosts_person_refused_counts_as_a_failed_try(kind: str) -> None:
    paul_id = LocalIdentity.generate("Paul's phone")
    state = HostState()
    for _ in range(BUDGET):
        mallory, host, person = grinder(paul_id, state, suits=True, answer=False)
        _m_err, h_err = await one_visit(kind, mallory, host, person)
        assert isinstance(h_err, RefusedError)
    mallory, host, person = grinder(paul_id, state, suits=True, answer=True)
    m_err, _h_err = await one_visit(kind, mallory, host, person)
    assert locked(m_err) and mallory.predicted == [] and person.asked == []


async def test_a_returning_guest_trying_the_real_host_again_and_again_is_held_to_the_budget(
    world: World, paul: Keystore, george: Keystore
) -> None:
    """Through the real ``pairkit host`` flow over bumble: a device asks to join, its owner
    says yes each time (a visible host whose owner expects a guest), then it tries the host's
    code and leaves, again and again.  Each try is a code its owner is shown and that is
    withdrawn; after 5 compare is locked, and the next visit is refused before anyone is asked
    (the join request's method is checked first).  (Until session 15 the device claimed the
    grant it had been given, which let it past the join prompt with any method: that path is
    refused now, before any question: tests/attacks/test_attack_api_host_questions.py.)"""
    host = await world.start_host(paul, frozenset({Method.COMPARE, Method.RESUME}),
                                  person=TakesASecond())
    device = await world.central("bumble")
    await world.join(george, device, host, method=Method.COMPARE, person=Person())
    assert [k for k, _ in host.person.questions] == ["join", "code"]
    me = peers.local_identity(george)
    visits: list[Mallory] = []
    errors: list[BaseException | None] = []
    for _ in range(GRINDS):
        link = await device.connect(host.address, STEP)
        try:
            pipe = MessagePipe(link, guest=True)
            cloud = CloudGuest(name=me.name, clouds=(), mac=lambda _c, _d: b"",
                               static=me.static_public, method=int(Method.COMPARE))
            try:
                await asyncio.wait_for(drive(cloud, pipe, delegate=Yes()), STEP)
            except PairingError as exc:  # locked: refused at the join request, nobody asked
                errors.append(exc)
                continue
            mallory = Mallory(CONFIG, me=me, context=pipe.transcript())
            visits.append(mallory)
            try:
                await asyncio.wait_for(drive(mallory, pipe, delegate=Yes()), STEP)
                errors.append(None)
            except PairingError as exc:
                errors.append(exc)
        finally:
            await link.close()
    served = [m for m in visits if m.predicted]
    assert len(served) == BUDGET, f"the host showed {len(served)} codes to a guest that left"
    assert all(locked(e) for e in errors[BUDGET:]), errors
    # A join prompt and a code for each of the first 5, no question after.
    await eventually(lambda: len(host.person.questions) == 2 + 2 * BUDGET)
    assert [k for k, _ in host.person.questions] == ["join", "code"] * (1 + BUDGET)
    assert host.results[1:] == []


@pytest.mark.parametrize("kind", LINKS)
async def test_mallory_visiting_at_once_is_held_to_the_budget_too(kind: str) -> None:
    """Visits made at once: each passes the lock's check at its Offer before any code is
    counted, so the codes out at once are what is bounded (CodeTurns): Mallory learns 5 codes,
    the rest wait their turn and are refused once the fifth failure locks compare."""
    paul_id = LocalIdentity.generate("Paul's phone")
    state = HostState()  # one host serving several links at once, as `pairkit host` does
    visits = [grinder(paul_id, state) for _ in range(GRINDS)]
    async with link_pairs(kind, GRINDS) as pairs:
        await run_both(*(
            run
            for (mallory, host, person), (m_link, h_link) in zip(visits, pairs, strict=True)
            for run in ((mallory, Wire(m_link), Yes(), True), (host, Wire(h_link), person, False))
        ))
    served = [m for m, _, _ in visits if m.predicted]
    assert len(served) <= BUDGET, f"the host showed {len(served)} codes to a guest that left"
    assert state.compare_lock.locked_for(asyncio.get_running_loop().time()) > 0


class Looks:
    """The host's one person, who looks at each code for ``look`` seconds and then says
    ``answer``; ``peak`` is the most codes she had in front of her at once."""

    def __init__(self, *, look: float, answer: bool = True) -> None:
        self.look, self.answer = look, answer
        self.asked = 0
        self.open = 0
        self.peak = 0

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await asyncio.sleep(self.look)
            return self.answer
        finally:
            self.open -= 1


def honest(n: int, paul_id: LocalIdentity, state: HostState, config: PairingConfig = CONFIG
           ) -> list[tuple[GuestPairing, HostPairing, Viewer]]:
    """``n`` honest guests comparing with one host at once (its state shared), each guest's
    person saying yes to the code it is shown."""
    return [
        (GuestPairing(config, LocalIdentity.generate(f"guest {i}"), method=Method.COMPARE),
         HostPairing(config, paul_id, state),
         Viewer("guest", Screens(), answer=True))
        for i in range(n)
    ]


async def pair_at_once(kind: str, visits: list[tuple[GuestPairing, HostPairing, Viewer]],
                       host_person: Any) -> list[tuple[BaseException | None, BaseException | None]]:
    async with link_pairs(kind, len(visits)) as pairs:
        errors = await run_both(*(
            run
            for (guest, host, person), (g_link, h_link) in zip(visits, pairs, strict=True)
            for run in ((guest, Wire(g_link), person, True),
                        (host, Wire(h_link), host_person, False))
        ))
    return list(zip(errors[::2], errors[1::2], strict=True))


@pytest.mark.parametrize("kind", LINKS)
async def test_honest_guests_comparing_at_once_all_pair_with_the_codes_out_held_to_the_budget(
    kind: str,
) -> None:
    """The other side of the bound: three times the budget of honest guests at once all pair;
    no more than 5 codes are ever out at once (the rest wait their turn), and nothing counts
    against the lock."""
    paul_id = LocalIdentity.generate("Paul's phone")
    state = HostState()
    person = Looks(look=0.05)
    visits = honest(3 * BUDGET, paul_id, state)
    errors = await pair_at_once(kind, visits, person)
    assert errors == [(None, None)] * len(visits)
    for guest, host, _ in visits:
        assert guest.session is not None and host.session is not None
        assert guest.session.fingerprint == host.session.fingerprint
    assert person.asked == len(visits)
    assert 1 <= person.peak <= BUDGET
    assert state.compare_lock.failures == [] and state.compare_turns.out == 0


async def test_a_guest_whose_turn_does_not_come_in_time_is_told_the_host_is_busy() -> None:
    """The host's person has 5 codes in front of her and looks at them longer than half a
    step: a sixth guest is not shown a code; it waits half a step, then both sides end with
    ``Abort{18 busy}``.  A wait is no failed try, and it holds no place: the next guest pairs."""
    config = PairingConfig(step_timeout=2.0)
    paul_id = LocalIdentity.generate("Paul's phone")
    state = HostState()
    visits = honest(BUDGET + 1, paul_id, state, config)
    errors = await pair_at_once("loopback", visits, Looks(look=3.0))
    busy = [i for i, (_g, h) in enumerate(errors) if isinstance(h, BusyError)]
    assert len(busy) == 1, errors
    [held] = busy
    g_err, h_err = errors[held]
    assert isinstance(g_err, RemoteError) and g_err.code == ErrorCode.BUSY
    assert "waiting for their confirmation" in str(h_err)
    assert visits[held][2].asked == []  # its guest never saw a code
    assert visits[held][0].session is None and visits[held][1].session is None
    assert [e for i, e in enumerate(errors) if i != held] == [(None, None)] * BUDGET
    assert state.compare_lock.failures == [] and state.compare_turns.out == 0
    [(g_err, h_err)] = await pair_at_once("loopback", honest(1, paul_id, state, config),
                                          Looks(look=0.0))
    assert (g_err, h_err) == (None, None)
