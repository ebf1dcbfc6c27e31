"""The asyncio driver and the secure link, over real links (loopback and TCP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from pairkit.driver import HELD_LIMIT, MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ErrorCode,
    LinkClosedError,
    LocalError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RemoteError,
)
from pairkit.pairing.framing import fragment
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
    Session,
)
from pairkit.pairing.negotiation import Method
from pairkit.securelink import READY, SecureLink, confirm
from pairkit.transports.loopback import loopback_pair
from pairkit.transports.tcp import TcpListener, tcp_connect

GEORGE = LocalIdentity.generate("George's phone")
PAUL = LocalIdentity.generate("Paul's phone")


class Yes:
    def __init__(self) -> None:
        self.codes: list[str] = []

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.codes.append(q.code)
        return True


def machines(method: Method, *, encrypted: bool = False, timeout: float = 5.0):
    cfg = PairingConfig(step_timeout=timeout)
    state = HostState()
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {}
    if method is Method.PIN:
        kwargs["pin"] = state.new_pin()
    if method is Method.QR:
        kwargs["qr"] = state.issue_qr(PAUL.static_public, time.time(), ttl=60, hint="")
    host = HostPairing(cfg, PAUL, state, link_encrypted=encrypted,
                       wall_now=time.time())
    host.start(loop.time())
    guest = GuestPairing(cfg, GEORGE, method=method, link_encrypted=encrypted,
                         wall_now=time.time(), **kwargs)
    return guest, host


async def compare_both(
    guest_person: Any, *, pipes: bool = False, step: float = 5.0, guest_answer: float = 60,
    host_answer: float | None = None, within: float = 5,
) -> tuple[list[Any], GuestPairing, HostPairing]:
    """A compare pairing over loopback, both runs driven (over bare links, or over the
    pipeline's MessagePipes: ``pipes``), the guest's person ``guest_person`` and the host's
    ``Yes``: each run's result or error, and the two machines."""
    guest, host = machines(Method.COMPARE, timeout=step)
    host_kwargs = {} if host_answer is None else {"answer_time": host_answer}
    async with loopback_pair() as (a, b):
        ga, hb = (MessagePipe(a, guest=True), MessagePipe(b, guest=False)) if pipes else (a, b)
        guest.start(asyncio.get_running_loop().time())
        results = await asyncio.wait_for(
            asyncio.gather(
                drive(guest, ga, delegate=guest_person, answer_time=guest_answer),
                drive(host, hb, delegate=Yes(), **host_kwargs),
                return_exceptions=True,
            ), within
        )
    return results, guest, host


async def pair_over(a: Any, b: Any, method: Method, *, encrypted: bool = False):
    guest, host = machines(method, encrypted=encrypted)
    guest.start(asyncio.get_running_loop().time())
    gd, hd = Yes(), Yes()
    await asyncio.wait_for(
        asyncio.gather(drive(guest, a, delegate=gd), drive(host, b, delegate=hd)), 10
    )
    assert guest.session is not None and host.session is not None
    if method is Method.COMPARE:
        assert gd.codes == hd.codes and len(gd.codes[0]) == 6
    return guest.session, host.session


@pytest.mark.parametrize("method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR])
@pytest.mark.parametrize("mtu", [20, 512])
async def test_every_method_over_loopback_links(method: Method, mtu: int) -> None:
    """MTU 20 forces every handshake message to be fragmented and reassembled."""
    encrypted = method is Method.CLEAR
    async with loopback_pair(mtu=mtu, encrypted=encrypted) as (a, b):
        g, h = await pair_over(a, b, method, encrypted=encrypted)
        assert g.fingerprint == h.fingerprint
        assert g.send_key == h.recv_key and g.recv_key == h.send_key
        await asyncio.gather(confirm(SecureLink(a, g)), confirm(SecureLink(b, h)))


@pytest.mark.parametrize("method", [Method.PIN, Method.COMPARE])
async def test_methods_over_tcp(method: Method) -> None:
    listener = await TcpListener.bind("127.0.0.1", 0)
    try:
        accept = asyncio.create_task(listener.accept(5))
        a = await tcp_connect("127.0.0.1", listener.port, 5)
        b = await accept
        g, h = await pair_over(a, b, method)
        ga, hb = SecureLink(a, g), SecureLink(b, h)
        await asyncio.gather(confirm(ga), confirm(hb))
        await ga.send(b"x" * 60_000)
        assert await hb.recv() == b"x" * 60_000
        await ga.close()
        with pytest.raises(LinkClosedError):
            await hb.recv()
    finally:
        await listener.close()


async def test_a_silent_peer_ends_in_a_timeout_within_the_deadline() -> None:
    guest, _host = machines(Method.PIN, timeout=0.3)
    async with loopback_pair() as (a, _b):
        guest.start(asyncio.get_running_loop().time())
        t0 = time.perf_counter()
        with pytest.raises(PairingTimeout) as info:
            await drive(guest, a)
        assert time.perf_counter() - t0 < 2.0
        assert isinstance(info.value, TimeoutError)  # also the builtin, for asyncio users
        assert guest.failed


async def test_a_deadline_that_passes_mid_message_keeps_what_was_read() -> None:
    """A machine deadline that does not end the exchange (a phase moving on) falls while a
    message is half received: the read is cancelled and started again (issue 13: no task per
    message), and the fragments already read must still make up the message."""
    guest, host = machines(Method.PIN)
    moved_on: list[float] = []

    def move_on(now: float) -> None:  # the host's first deadline only marks a phase
        moved_on.append(now)
        host._expect_by(now + 5.0)

    host._on_deadline = move_on  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    host._expect_by(loop.time() + 0.2)
    pieces = 0

    async def slow_middle(src: str, dst: str, data: bytes) -> bytes:
        nonlocal pieces
        pieces += 1
        if src == "a" and pieces == 3:  # the guest's first message, a fragment in the middle
            await asyncio.sleep(0.5)
        return data

    async with loopback_pair(mtu=20, tap=slow_middle) as (a, b):
        guest.start(loop.time())
        await asyncio.wait_for(asyncio.gather(
            drive(guest, a, delegate=Yes()), drive(host, b, delegate=Yes())), 10)
    assert moved_on, "the deadline fell before the message was whole"
    assert guest.session is not None and host.session is not None
    assert guest.session.fingerprint == host.session.fingerprint


async def test_a_deadline_that_moved_later_still_ends_a_silent_wait() -> None:
    """The driver keeps one timer for a run's reads (issue 13), armed at the first read's
    deadline; each step gives the peer ``step_timeout`` more.  Once the timer has moved on to
    a later deadline it must still end a wait that goes past that one: the host's final
    message is held 2 s, past the guest's second deadline."""
    guest, host = machines(Method.PIN, timeout=1.0)
    state = {"sent": 0}

    async def tap(src: str, dst: str, data: bytes) -> bytes:
        if src == "b":
            state["sent"] += 1
            await asyncio.sleep(0.3 if state["sent"] == 1 else 2.0)
        return data

    async with loopback_pair(tap=tap) as (a, b):
        guest.start(asyncio.get_running_loop().time())
        results = await asyncio.wait_for(asyncio.gather(
            drive(guest, a, delegate=Yes()), drive(host, b, delegate=Yes()),
            return_exceptions=True), 10)
    assert isinstance(results[0], PairingTimeout)
    assert guest.failed and guest.session is None


async def test_a_run_cancelled_while_it_waits_is_cancelled_not_timed_out() -> None:
    """Cancelling a run that waits for the peer (Ctrl-C) is a cancellation: the run's read
    timer must not turn it into a timeout, nor fire later into what its task does next."""
    guest, _host = machines(Method.PIN, timeout=0.3)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    async with loopback_pair() as (a, _b):
        guest.start(loop.time())
        loop.call_later(0.05, task.cancel)  # while the guest waits for the Accept
        with pytest.raises(asyncio.CancelledError):
            await drive(guest, a)
        task.uncancel()
        await asyncio.sleep(0.6)  # past the guest's deadline: nothing may cancel this
    assert guest.failed


async def test_a_machine_without_a_deadline_still_gets_one() -> None:
    """The driver's idle bound: nothing in pairkit waits forever."""
    _guest, host = machines(Method.PIN)
    host._expect_by(None)  # a machine that (wrongly) sets no deadline
    async with loopback_pair() as (_a, b):
        with pytest.raises(PairingTimeout, match="sent nothing"):
            await drive(host, b, idle=0.2)


async def test_a_peer_that_closes_mid_handshake_is_reported() -> None:
    guest, _host = machines(Method.PIN)
    async with loopback_pair() as (a, b):
        guest.start(asyncio.get_running_loop().time())

        async def hang_up() -> None:
            await b.recv()  # read the offer, then leave
            await b.close()

        with pytest.raises(LinkClosedError, match="before the exchange was complete"):
            await asyncio.gather(drive(guest, a), hang_up())


async def test_a_link_closed_on_this_side_while_the_run_waits_ends_it_at_once() -> None:
    """The driver waits for a queued link's future, not in its recv (issue 13): closing the
    link from elsewhere while the run waits must still end the run at once, as a closed link,
    long before its deadline."""
    guest, _host = machines(Method.PIN, timeout=30.0)
    loop = asyncio.get_running_loop()
    async with loopback_pair() as (a, _b):
        guest.start(loop.time())
        loop.call_later(0.05, a._close)
        t0 = time.perf_counter()
        with pytest.raises(LinkClosedError, match="before the exchange was complete"):
            await asyncio.wait_for(drive(guest, a), 10)
        assert time.perf_counter() - t0 < 5.0
    assert guest.failed


async def test_a_cancel_in_the_turn_a_message_arrives_loses_no_message() -> None:
    """A run cancelled in the same turn as the message it waits for arrives: the run is
    cancelled, not timed out, and the message stays on the link for whoever reads next (the
    driver's wait takes nothing from the link; only its poll does)."""
    guest, _host = machines(Method.PIN, timeout=30.0)
    loop = asyncio.get_running_loop()
    async with loopback_pair() as (a, b):
        guest.start(loop.time())
        run = asyncio.ensure_future(drive(guest, a))
        offer = await asyncio.wait_for(b.recv(), 5)  # the guest now waits for the answer
        assert offer
        await b.send(b"\x03\x01z")  # whatever it is, it must not be read: the cancel wins
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert a.recv_nowait() == b"\x03\x01z"
        assert guest.failed


async def test_garbage_ends_the_host_and_the_guest_hears_why() -> None:
    _guest, host = machines(Method.PIN)
    async with loopback_pair() as (a, b):
        await a.send(b"\x01\x00\xff garbage that is not a fragment")
        with pytest.raises(DecodeError):
            await drive(host, b)


async def test_a_wrong_pin_ends_both_drivers_with_readable_errors() -> None:
    guest, host = machines(Method.PIN)
    guest._pin = "135790" if host.host.pin != "135790" else "246802"
    async with loopback_pair() as (a, b):
        guest.start(asyncio.get_running_loop().time())
        results = await asyncio.wait_for(
            asyncio.gather(drive(guest, a), drive(host, b), return_exceptions=True), 5
        )
    assert all(isinstance(r, PairingError) for r in results)
    assert "wrong PIN" in str(results[0]) and "wrong PIN" in str(results[1])
    assert isinstance(results[0], AuthenticationError)
    assert isinstance(results[1], RemoteError | AuthenticationError)


async def test_a_question_nobody_can_answer_is_a_config_error() -> None:
    guest, host = machines(Method.COMPARE)
    async with loopback_pair() as (a, b):
        guest.start(asyncio.get_running_loop().time())
        results = await asyncio.wait_for(
            asyncio.gather(drive(guest, a, delegate=object()), drive(host, b, delegate=Yes()),
                           return_exceptions=True), 5
        )
    assert isinstance(results[0], ConfigError) and "confirm_code" in str(results[0])
    assert isinstance(results[1], PairingError)


async def test_a_person_who_never_answers_times_out() -> None:
    class Never:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            await asyncio.sleep(3600)
            return True

    results, _, _ = await compare_both(Never(), guest_answer=0.2)
    assert isinstance(results[0], PairingTimeout) and "no answer" in str(results[0])


async def test_a_delegates_own_timeout_is_not_taken_for_the_persons_silence() -> None:
    # The question is awaited in place (nothing reads ahead on a bare link): a TimeoutError
    # the delegate raises itself is its failure, not "no answer within" the answer time.
    class Broken:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            raise TimeoutError

    results, _, _ = await compare_both(Broken())
    assert isinstance(results[0], LocalError) and "TimeoutError" in str(results[0])
    assert not isinstance(results[0], PairingTimeout)
    assert isinstance(results[1], RemoteError)


async def test_a_person_has_the_whole_answer_time_past_the_last_reads_deadline() -> None:
    # On a bare link the question is awaited under the run's one timer (issue 13), armed at
    # the last read's deadline (a 0.3 s step): that must not cut the person short, who has
    # the answer time, and the reads after the answer get their own deadline again.
    class Slow:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            await asyncio.sleep(0.8)
            return True

    _, guest, host = await compare_both(Slow(), step=0.3, guest_answer=5, within=10)
    assert guest.session is not None and host.session is not None


async def test_a_run_cancelled_while_its_person_is_asked_on_a_bare_link_is_cancelled() -> None:
    # Ctrl-C while the person is asked (the question awaited in place, under the run's timer):
    # the run is cancelled, not timed out; the question is withdrawn; the peer hears why.
    class Ponders:
        asked = asyncio.Event()
        withdrawn = False

        async def confirm_code(self, q: ConfirmCode) -> bool:
            self.asked.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                Ponders.withdrawn = True
                raise
            return True

    guest, host = machines(Method.COMPARE)
    async with loopback_pair() as (a, b):
        guest.start(asyncio.get_running_loop().time())
        person = Ponders()
        guest_run = asyncio.ensure_future(drive(guest, a, delegate=person, answer_time=60))
        host_run = asyncio.ensure_future(drive(host, b, delegate=Yes(), answer_time=60))
        await asyncio.wait_for(person.asked.wait(), 10)
        guest_run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await guest_run
        assert Ponders.withdrawn
        with pytest.raises(RemoteError) as caught:
            await asyncio.wait_for(host_run, 10)
    assert str(caught.value) == "the other side cancelled"


async def test_a_pipe_that_polls_its_own_way_is_polled() -> None:
    # A pipe subclass that reads its own way (it overrides recv) is awaited, unless it also
    # says how to take a message already there (poll_unabsorbed): then that is used.
    polled: list[bytes] = []

    class Counting(MessagePipe):
        async def recv(self) -> bytes:
            return await super().recv()

        def poll_unabsorbed(self) -> bytes | None:
            message = super().poll_unabsorbed()
            if message is not None:
                polled.append(message)
            return message

    guest, host = machines(Method.QR)
    async with loopback_pair() as (a, b):
        guest.start(asyncio.get_running_loop().time())
        pg, ph = MessagePipe(a, guest=True), Counting(b, guest=False)
        await asyncio.wait_for(asyncio.gather(drive(guest, pg), drive(host, ph)), 10)
    assert guest.session is not None and host.session is not None
    assert polled  # the guest's messages were there when the host read them
    assert pg.transcript() == ph.transcript()  # and counted as a read counts them


async def test_a_machine_with_its_own_accessors_is_read_through_them() -> None:
    # The driver reads a machine's queues, state and deadline directly only when its class
    # keeps Machine's own accessors; one that overrides them is read through them (fails if
    # the direct reads were taken for every machine).
    calls: dict[str, int] = {"outgoing": 0, "done": 0, "next_deadline": 0}

    class OwnQueues(HostPairing):
        def outgoing(self) -> list[Any]:
            calls["outgoing"] += 1
            return super().outgoing()

        @property
        def done(self) -> bool:
            calls["done"] += 1
            return super().done

        def next_deadline(self) -> float | None:
            calls["next_deadline"] += 1
            return super().next_deadline()

    guest, host = machines(Method.COMPARE)
    own = OwnQueues.__new__(OwnQueues)
    own.__dict__.update(host.__dict__)  # the same host, of a class with its own accessors
    async with loopback_pair() as (a, b):
        guest.start(asyncio.get_running_loop().time())
        await asyncio.wait_for(
            asyncio.gather(drive(guest, a, delegate=Yes()), drive(own, b, delegate=Yes())), 10
        )
    assert guest.session is not None and own.session is not None
    assert all(calls.values()), calls


async def test_a_pipe_made_without_a_transcript_moves_messages_and_refuses_to_give_one() -> None:
    async with loopback_pair(mtu=20) as (a, b):
        pa, pb = MessagePipe(a, guest=True, transcript=False), MessagePipe(b, guest=False)
        payload = bytes(range(256))
        await pa.send(payload)
        assert await pb.recv() == payload
        await pb.send(b"back")
        assert await pa.recv() == b"back"
        with pytest.raises(ConfigError, match="no transcript"):
            pa.transcript()
        assert len(pb.transcript()) == 32  # the other side keeps its own


async def test_message_pipe_round_trips_large_messages_at_mtu_20() -> None:
    class Yielding:
        """A link whose every send lets other tasks run, as a radio's would."""

        def __init__(self, link: Any) -> None:
            self.link, self.mtu = link, link.mtu

        async def send(self, data: bytes) -> None:
            await asyncio.sleep(0)
            await self.link.send(data)

    async with loopback_pair(mtu=20) as (a, b):
        pa, pb = MessagePipe(Yielding(a)), MessagePipe(b)
        payload = bytes(range(256)) * 200

        async def receive_two() -> list[bytes]:
            return [await pb.recv(), await pb.recv()]

        reader = asyncio.create_task(receive_two())
        # two senders at once: the pipe must not interleave their fragments
        await asyncio.gather(pa.send(payload), pa.send(b"second"))
        got = await asyncio.wait_for(reader, 10)
        assert sorted(got, key=len) == [b"second", payload]


async def test_message_pipe_fast_path_falls_back_mid_message_without_interleaving() -> None:
    # A link that takes pieces at once (issue 13): the pipe sends what fits without waiting,
    # and when the peer's queue fills mid-message, sends the rest the ordinary way, holding
    # its lock, so a second sender's message cannot get in between.
    async with loopback_pair(mtu=20, queue_size=2) as (a, b):
        pa, pb = MessagePipe(a, guest=True), MessagePipe(b, guest=False)
        payload = bytes(range(256)) * 4

        async def receive_three() -> list[bytes]:
            return [await pb.recv(), await pb.recv(), await pb.recv()]

        await pa.send(b"fits at once")  # the fast path alone
        reader = asyncio.create_task(receive_three())
        await asyncio.gather(pa.send(payload), pa.send(b"second"))
        got = await asyncio.wait_for(reader, 10)
        assert got[0] == b"fits at once" and sorted(got[1:], key=len) == [b"second", payload]
        # Both ends counted the same messages in the same order.
        assert pa.transcript() == pb.transcript()


# -- the secure link ---------------------------------------------------------------------------


async def _slinks(mtu: int = 64, **kw: Any) -> tuple[SecureLink, SecureLink, Any]:
    pair = loopback_pair(mtu=mtu)
    a, b = pair
    g, h = await pair_over(a, b, Method.PIN)
    return SecureLink(a, g, **kw), SecureLink(b, h, **kw), pair


async def test_secure_link_carries_messages_both_ways_and_rekeys() -> None:
    ga, hb, pair = await _slinks(rekey_after=3)
    await asyncio.gather(confirm(ga), confirm(hb))
    for i in range(10):
        await ga.send(f"to host {i}".encode())
        await hb.send(f"to guest {i}".encode())
    assert [await hb.recv() for _ in range(10)] == [f"to host {i}".encode() for i in range(10)]
    assert [await ga.recv() for _ in range(10)] == [f"to guest {i}".encode() for i in range(10)]
    ga.request_rekey()
    await ga.send(b"after a requested rekey")
    assert await hb.recv() == b"after a requested rekey"
    await pair.aclose()


@pytest.mark.parametrize("cut", ["timeout", "cancel"])
async def test_a_send_cut_part_way_leaves_no_half_record_before_what_follows(cut: str) -> None:
    """A record of many fragments whose send is cut part way (its timeout, as with a peer that
    stopped reading, or the task cancelled) left the fragments sent so far on the link; the
    next record (another message, the CLOSE) then reached the peer inside that half record,
    as a framing error (atk20c, suspected; session 20).  After a cut the link is closed: the
    peer reads the end of the link, not a malformed stream, and nothing more is sent."""
    pair = loopback_pair(mtu=64, queue_size=4)
    a, b = pair
    g, h = await pair_over(a, b, Method.PIN)
    ga, hb = SecureLink(a, g), SecureLink(b, h)
    await asyncio.gather(confirm(ga), confirm(hb))
    big = bytes(4000)  # some 65 fragments at MTU 64; the peer's queue holds 4 of them
    if cut == "timeout":
        with pytest.raises(PairingTimeout):
            await ga.send(big, timeout=0.2)
    else:
        sending = asyncio.create_task(ga.send(big))
        for _ in range(1000):  # until the queue is full and the send waits on it
            if len(a._outbox) == 4:
                break
            await asyncio.sleep(0)
        assert len(a._outbox) == 4
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending

    async def read_to_the_end() -> PairingError:
        while True:
            try:
                await hb.recv(5)
            except PairingError as exc:
                return exc

    reader = asyncio.create_task(read_to_the_end())  # the peer reads again, the half record
    # nothing more goes: a stall is still the stall (what the sender's caller must report),
    # a cancel a closed link
    with pytest.raises(PairingTimeout if cut == "timeout" else LinkClosedError):
        await ga.send(b"after the cut")
    await ga.close()
    ended = await reader
    assert isinstance(ended, LinkClosedError), repr(ended)
    await pair.aclose()


async def test_secure_link_recv_has_a_deadline() -> None:
    _ga, hb, pair = await _slinks()
    t0 = time.perf_counter()
    with pytest.raises(PairingTimeout):
        await hb.recv(0.2)
    assert time.perf_counter() - t0 < 1.5
    await pair.aclose()


async def test_a_forged_record_ends_the_secure_link() -> None:
    _ga, hb, pair = await _slinks(mtu=512)
    a, _b = pair
    await a.send(b"\x80\x19" + bytes(9) + b"forged record with no valid tag")
    with pytest.raises(PairingError):
        await hb.recv(1)
    await pair.aclose()


async def test_confirm_fails_if_the_keys_differ() -> None:
    """The ready exchange catches a session whose last flight was tampered with."""
    async with loopback_pair() as (a, b):
        g, h = await pair_over(a, b, Method.PIN)
        bad = Session(h.method, h.initiator, h.peer, send_key=bytes(32), recv_key=bytes(range(32)),
                      fingerprint=h.fingerprint)
        results = await asyncio.gather(
            confirm(SecureLink(a, g, timeout=1)), confirm(SecureLink(b, bad, timeout=1)),
            return_exceptions=True,
        )
        assert all(isinstance(r, PairingError) for r in results)


async def test_ready_is_not_application_data() -> None:
    assert READY.startswith(b"\x00")


class Ponder:
    """A person who never answers the code: the hook waits until it is withdrawn."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.withdrawn = asyncio.Event()

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.withdrawn.set()
            raise
        return False


class Unsaying:
    """A loopback link end that gives a message already there (``recv_nowait``) but cannot
    say when one arrives (no ``recv_ready``), as BLE links: the driver watches it while a
    person is asked through a read of its own instead of the link's future."""

    def __init__(self, link: Any) -> None:
        self._link = link
        self.mtu = link.mtu

    async def send(self, data: bytes) -> None:
        await self._link.send(data)

    def send_nowait(self, data: bytes) -> bool:
        return self._link.send_nowait(data)  # type: ignore[no-any-return]

    async def recv(self) -> bytes:
        return await self._link.recv()  # type: ignore[no-any-return]

    def recv_nowait(self) -> bytes | None:
        return self._link.recv_nowait()  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._link.close()


#: the two ways the driver watches a link while a person is asked
WATCHED = ["ready", "read"]


async def _both_asked(
    watched: str = "ready",
) -> tuple[Any, Ponder, Ponder, asyncio.Future[None], asyncio.Future[None]]:
    """A compare run over loopback until both people are asked the code (and never answer):
    the guest's link end, both people, and both runs.  ``watched``: "read" drives both over
    :class:`Unsaying` ends (no ``recv_ready``)."""
    a, b = loopback_pair(mtu=512)
    ga, hb = (a, b) if watched == "ready" else (Unsaying(a), Unsaying(b))
    guest, host = machines(Method.COMPARE)
    guest.start(asyncio.get_running_loop().time())
    gp, hp = Ponder(), Ponder()
    guest_run = asyncio.ensure_future(drive(guest, MessagePipe(ga, guest=True), delegate=gp))
    host_run = asyncio.ensure_future(
        drive(host, MessagePipe(hb, guest=False), delegate=hp, answer_time=60)
    )
    await asyncio.wait_for(asyncio.gather(gp.asked.wait(), hp.asked.wait()), 10)
    return a, gp, hp, guest_run, host_run


@pytest.mark.parametrize("watched", WATCHED)
async def test_a_cancelled_side_tells_the_peer_whose_question_is_withdrawn_at_once(
    watched: str,
) -> None:
    """Issue 16: Ctrl-C on the guest (its run cancelled) sends an Abort 'cancelled'; the host,
    whose person is being asked the code, stops asking and reads 'the other side cancelled'
    long before its answer time."""
    _a, gp, hp, guest_run, host_run = await _both_asked(watched)
    guest_run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guest_run
    assert gp.withdrawn.is_set()
    with pytest.raises(RemoteError) as caught:
        await asyncio.wait_for(host_run, 10)
    assert str(caught.value) == "the other side cancelled"
    assert hp.withdrawn.is_set()


@pytest.mark.parametrize("watched", WATCHED)
async def test_a_peer_that_leaves_while_a_person_is_asked_withdraws_the_question(
    watched: str,
) -> None:
    a, gp, hp, guest_run, host_run = await _both_asked(watched)
    await a.close()  # the guest's side goes away without a word
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(host_run, 10)
    assert hp.withdrawn.is_set()
    with pytest.raises(LinkClosedError):  # its own question is withdrawn too
        await asyncio.wait_for(guest_run, 10)
    assert gp.withdrawn.is_set()


@pytest.mark.parametrize("watched", WATCHED)
async def test_a_peer_that_floods_while_a_person_is_asked_is_stopped_not_buffered(
    watched: str,
) -> None:
    """A peer may send while the host's person is asked the code (compare's Noise message 2
    usually arrives then), and what it sends is held until the answer.  An attacker who keeps
    sending gets a bounded hold: past ``HELD_LIMIT`` messages the run stops with a protocol
    error, tells the peer, and withdraws the question; it does not keep buffering."""
    a, gp, hp, guest_run, host_run = await _both_asked(watched)
    # Both people are asked; the attacker, on the guest's end, sends message after message
    # (whole, well-framed messages: held unread, never decoded while the host's person thinks).
    attacker = MessagePipe(a, guest=True)
    sent = 0
    with contextlib.suppress(LinkClosedError, PairingTimeout, TimeoutError):
        for _ in range(HELD_LIMIT * 4):
            if host_run.done():
                break
            # (once the host has stopped, nothing reads its end: the send would wait)
            await asyncio.wait_for(attacker.send(bytes(400)), 2)
            sent += 1
            await asyncio.sleep(0.01)
    with pytest.raises(ProtocolError, match="while this side's person was being asked"):
        await asyncio.wait_for(host_run, 10)
    assert hp.withdrawn.is_set()
    assert sent <= HELD_LIMIT + 2
    with pytest.raises(RemoteError):  # the guest is told why, and its question withdrawn
        await asyncio.wait_for(guest_run, 10)
    assert gp.withdrawn.is_set()


# -- the read-ahead path's questions (issue 13: asked without tasks; issue 16's guarantees) ----


def _abort_fragments(reason: str, mtu: int = 512) -> list[bytes]:
    """An Abort from the peer as the link carries it (the pipe's framing)."""
    return fragment(wire.Abort(code=ErrorCode.INTERNAL, reason=reason).encode(), mtu)


async def test_an_abort_already_there_when_a_quick_delegate_answers_is_seen_first() -> None:
    """A delegate that answers without waiting (Yes, ``--yes``) answers while the peer's Abort
    is already on the link: the Abort ends the run and the answer is never applied (nothing
    more is sent), as when the run read ahead while the question was asked."""
    guest_sent_after_asked: list[int] = []
    host_sent = 0
    asked: list[bool] = []

    def tap(src: str, _dst: str, data: bytes) -> list[bytes]:
        nonlocal host_sent
        if src == "b":
            host_sent += 1
            if host_sent == 2:  # the host's message the guest's question follows
                return [data, *_abort_fragments("the host's side gave up")]
        elif asked:
            guest_sent_after_asked.append(len(data))
        return [data]

    class Quick:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            asked.append(True)
            return True

    a, b = loopback_pair(mtu=512, tap=tap)
    guest, host = machines(Method.COMPARE)
    guest.start(asyncio.get_running_loop().time())
    host_run = asyncio.ensure_future(drive(host, MessagePipe(b, guest=False), delegate=Yes()))
    try:
        with pytest.raises(RemoteError, match="the host's side gave up"):
            await asyncio.wait_for(drive(guest, MessagePipe(a, guest=True), delegate=Quick()), 10)
    finally:
        host_run.cancel()
        with contextlib.suppress(BaseException):
            await host_run
    assert asked  # the question was asked (with the Abort behind the message before it)
    assert guest_sent_after_asked == []  # and its answer never applied


@pytest.mark.parametrize("watched", WATCHED)
async def test_a_held_message_then_an_abort_while_asked_withdraws_the_question(
    watched: str,
) -> None:
    """A message the peer sends while the person is asked is held, and the link is still
    watched after it: an Abort that follows withdraws the question at once."""
    a, _gp, hp, guest_run, host_run = await _both_asked(watched)
    peer = MessagePipe(a, guest=True, transcript=False)
    await peer.send(bytes(40))  # held unread (never decoded while the person thinks)
    await peer.send(wire.Abort(code=ErrorCode.INTERNAL, reason="changed my mind").encode())
    with pytest.raises(RemoteError, match="changed my mind"):
        await asyncio.wait_for(host_run, 10)
    assert hp.withdrawn.is_set()
    guest_run.cancel()
    with contextlib.suppress(BaseException):
        await guest_run


async def test_a_run_cancelled_while_its_person_is_asked_over_a_pipe_is_cancelled() -> None:
    """Ctrl-C while the person is asked on the read-ahead path: a cancel (not a timeout, not
    the peer's error), the question withdrawn, and the peer hears why."""
    a, b = loopback_pair(mtu=512)
    guest, host = machines(Method.COMPARE)
    guest.start(asyncio.get_running_loop().time())
    person = Ponder()
    guest_run = asyncio.ensure_future(
        drive(guest, MessagePipe(a, guest=True), delegate=person, answer_time=60)
    )
    host_run = asyncio.ensure_future(
        drive(host, MessagePipe(b, guest=False), delegate=Yes(), answer_time=60)
    )
    await asyncio.wait_for(person.asked.wait(), 10)
    guest_run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guest_run
    assert person.withdrawn.is_set()
    with pytest.raises(RemoteError) as caught:
        await asyncio.wait_for(host_run, 10)
    assert str(caught.value) == "the other side cancelled"


async def test_a_person_has_the_whole_answer_time_over_a_pipe() -> None:
    """On the read-ahead path too, the person has the answer time, not the last read's
    deadline (a 0.3 s step); the reads after the answer get their own deadline again."""

    class Slow:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            await asyncio.sleep(0.8)
            return True

    _, guest, host = await compare_both(Slow(), pipes=True, step=0.3, guest_answer=5,
                                        within=10)
    assert guest.session is not None and host.session is not None


async def test_a_person_who_never_answers_over_a_pipe_times_out_and_the_peer_hears_it() -> None:
    person = Ponder()
    results, _, _ = await compare_both(person, pipes=True, step=30, guest_answer=0.3,
                                       host_answer=60, within=10)
    assert isinstance(results[0], PairingTimeout) and "no answer" in str(results[0])
    assert person.withdrawn.is_set()
    assert isinstance(results[1], RemoteError)  # told, not left to its own deadline


async def test_a_delegates_own_timeout_over_a_pipe_is_not_taken_for_the_persons_silence() -> None:
    class Broken:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            await asyncio.sleep(0)
            raise TimeoutError

    results, _, _ = await compare_both(Broken(), pipes=True)
    assert isinstance(results[0], LocalError) and "TimeoutError" in str(results[0])
    assert not isinstance(results[0], PairingTimeout)


async def test_a_delegate_that_ignores_the_withdrawal_still_has_its_question_withdrawn() -> None:
    """A hook that swallows the cancel and answers anyway: the peer's Abort still ends the
    run with the peer's error, and the late answer is not applied."""

    class Stubborn:
        def __init__(self) -> None:
            self.asked = asyncio.Event()

        async def confirm_code(self, q: ConfirmCode) -> bool:
            self.asked.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return True

    a, b = loopback_pair(mtu=512)
    guest, host = machines(Method.COMPARE)
    guest.start(asyncio.get_running_loop().time())
    gp, hp = Ponder(), Stubborn()
    guest_run = asyncio.ensure_future(drive(guest, MessagePipe(a, guest=True), delegate=gp))
    host_run = asyncio.ensure_future(
        drive(host, MessagePipe(b, guest=False), delegate=hp, answer_time=60)
    )
    await asyncio.wait_for(asyncio.gather(gp.asked.wait(), hp.asked.wait()), 10)
    guest_run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guest_run
    with pytest.raises(RemoteError, match="the other side cancelled"):
        await asyncio.wait_for(host_run, 10)
    assert host.session is None


@pytest.mark.parametrize("watched", WATCHED)
async def test_a_hook_that_keeps_its_own_time_answers_in_its_own_time(watched: str) -> None:
    """A hook whose first step sets up a timeout of its own (a prompt that takes silence as
    no, the driver's own turn wait) and then waits: the timeout ends the hook's wait, which
    answers; it never cancels the run (the hook's steps all run in one task)."""

    class LooksAway:
        async def confirm_code(self, q: ConfirmCode) -> bool:
            try:
                async with asyncio.timeout(0.2):
                    await asyncio.Event().wait()
            except TimeoutError:
                return False
            return True

    a, b = loopback_pair(mtu=512)
    ga, hb = (a, b) if watched == "ready" else (Unsaying(a), Unsaying(b))
    guest, host = machines(Method.COMPARE)
    guest.start(asyncio.get_running_loop().time())
    results = await asyncio.wait_for(
        asyncio.gather(
            drive(guest, MessagePipe(ga, guest=True), delegate=LooksAway(), answer_time=60),
            drive(host, MessagePipe(hb, guest=False), delegate=Yes(), answer_time=60),
            return_exceptions=True,
        ), 10
    )
    assert isinstance(results[0], PairingError), results  # the person's no, not a cancel
    assert isinstance(results[1], RemoteError), results
