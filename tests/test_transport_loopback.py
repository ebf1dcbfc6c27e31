"""The loopback transport: conformance at MTU 20 and 512, hellos, connect/accept, taps, relays,
and the transport registry's parsing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing.errors import (
    ConfigError,
    LinkClosedError,
    PairingTimeout,
    TooLargeError,
    TransportError,
)
from pairkit.transports import loopback
from pairkit.transports.base import Advertiser, Connector, Link, Listener, Scanner, Sighting
from pairkit.transports.loopback import (
    LoopbackEndpoint,
    LoopbackMedium,
    MessageQueue,
    loopback_pair,
    relay,
)
from pairkit.transports.registry import TransportSpec, open_transport, parse_transport
from tests.transport_conformance import LinkConformance

# -- the conformance suite -------------------------------------------------------------------


class TestLoopbackMtu20(LinkConformance):
    @pytest.fixture
    async def link_pair(self) -> Any:
        async with loopback_pair(mtu=20) as pair:
            yield pair


class TestLoopbackMtu512(LinkConformance):
    expect_encrypted = False
    expect_mitm_protected = False

    @pytest.fixture
    async def link_pair(self) -> Any:
        async with loopback_pair(mtu=512) as pair:
            yield pair


class TestLoopbackMitmProtected(LinkConformance):
    """What a link after an MITM-protected LE Secure Connections pairing reports."""

    expect_encrypted = True
    expect_mitm_protected = True

    @pytest.fixture
    async def link_pair(self) -> Any:
        async with loopback_pair(mtu=512, encrypted=True, mitm_protected=True) as pair:
            yield pair


class TestLoopbackConnected(LinkConformance):
    """Links made by connect/accept on a medium, not by loopback_pair."""

    @pytest.fixture
    async def link_pair(self) -> Any:
        medium = LoopbackMedium()
        host = medium.endpoint("host")
        listener = await host.listen()
        guest_link = await medium.endpoint("guest").connect("host", timeout=1)
        host_link = await listener.accept(timeout=1)
        yield guest_link, host_link
        await guest_link.close()
        await host_link.close()


class TestLoopbackRelayed(LinkConformance):
    """Two pairs joined by relay(): close, backpressure and order carry through the middle."""

    @pytest.fixture
    async def link_pair(self) -> Any:
        a, middle_a = loopback_pair(mtu=64, names=("a", "mitm"))
        middle_b, b = loopback_pair(mtu=64, names=("mitm", "b"))
        task = asyncio.create_task(relay(middle_a, middle_b))
        yield a, b
        await a.close()
        await b.close()
        await asyncio.wait_for(task, 5)


# -- pairs -----------------------------------------------------------------------------------


async def test_pair_names_flags_and_shape() -> None:
    a, b = loopback_pair(mtu=20, encrypted=True, names=("guest", "host"))
    assert isinstance(a, Link) and isinstance(b, Link)
    assert (a.peer, b.peer, a.local, b.local) == ("host", "guest", "guest", "host")
    assert a.encrypted and b.encrypted and a.mtu == b.mtu == 20
    assert not loopback_pair().a.encrypted
    assert a.mitm_protected is False and b.mitm_protected is False  # the default
    c, d = loopback_pair(encrypted=True, mitm_protected=True)
    assert c.mitm_protected and d.mitm_protected
    # MITM protection is a property of a link-layer pairing: none without encryption.
    assert loopback_pair(mitm_protected=True).a.mitm_protected is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mtu": 19},
        {"mtu": 65536},
        {"mtu": True},
        {"mtu": 20.0},
        {"queue_size": 0},
        {"names": ("x", "x")},
        {"names": ("", "y")},
    ],
)
def test_pair_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        loopback_pair(**kwargs)


async def test_send_takes_bytes_like_only() -> None:
    async with loopback_pair() as (a, b):
        await a.send(bytearray(b"ab"))
        await a.send(memoryview(b"cd"))
        assert [await b.recv(), await b.recv()] == [b"ab", b"cd"]
        with pytest.raises(TypeError):
            await a.send("text")  # type: ignore[arg-type]
        with pytest.raises(TooLargeError, match="513 bytes"):
            await a.send(bytes(513))


async def test_send_blocks_at_exactly_queue_size_unread() -> None:
    async with loopback_pair(queue_size=3) as (a, b):
        for i in range(3):
            await asyncio.wait_for(a.send(bytes([i])), 1)
        fourth = asyncio.ensure_future(a.send(b"\x03"))
        await asyncio.sleep(0)
        assert not fourth.done()
        assert await b.recv() == b"\x00"
        await asyncio.wait_for(fourth, 1)
        assert [await b.recv() for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]


async def test_nowait_send_and_recv_never_wait_and_keep_the_order() -> None:
    # The driver's fast path (issue 13): a message the peer's queue has room for is sent at
    # once, a message already there is read at once; otherwise nothing happens.
    async with loopback_pair(queue_size=2) as (a, b):
        assert b.recv_nowait() is None
        assert a.send_nowait(b"one") and a.send_nowait(bytearray(b"two"))
        assert not a.send_nowait(b"three")  # full: nothing sent
        assert b.recv_nowait() == b"one"
        await a.send(b"three")
        assert [b.recv_nowait(), await b.recv(), b.recv_nowait()] == [b"two", b"three", None]
        with pytest.raises(TooLargeError):
            a.send_nowait(bytes(513))
    a, b = loopback_pair(names=("guest", "host"))
    assert a.send_nowait(b"last words")
    await a.close()
    with pytest.raises(LinkClosedError, match="the link is closed"):
        a.send_nowait(b"x")
    with pytest.raises(LinkClosedError, match="the link is closed"):
        a.recv_nowait()
    assert b.recv_nowait() == b"last words"  # what was sent before the close is still read
    with pytest.raises(LinkClosedError, match=r"the peer \(guest\) closed the link"):
        b.recv_nowait()


async def test_a_link_whose_recv_does_more_gets_no_nowait_read_unless_it_says_how() -> None:
    # A queued link whose recv does more than read the queue (TLS gives flow control back
    # there) must not be read around it: without its own recv_nowait, there is no fast path.
    class Counting(loopback.LoopbackLink):
        taken = 0

        async def recv(self) -> bytes:
            message = await super().recv()
            self.taken += 1
            return message

    a, b = loopback_pair()
    counting = Counting(local="b", peer="a", mtu=b.mtu, encrypted=False,
                        inbox=b._inbox, outbox=b._outbox, tap=None)
    await a.send(b"m")
    assert counting.recv_nowait() is None  # left for recv, which counts it
    assert await counting.recv() == b"m" and counting.taken == 1
    await a.close()


async def test_a_tap_always_takes_the_ordinary_path() -> None:
    seen: list[bytes] = []

    def tap(_src: str, _dst: str, data: bytes) -> bytes:
        seen.append(data)
        return data

    async with loopback_pair(tap=tap) as (a, b):
        assert not a.send_nowait(b"x")  # the tap may wait, drop or inject: never skipped
        assert b.recv_nowait() is None and seen == []
        await a.send(b"x")
        assert b.recv_nowait() == b"x" and seen == [b"x"]


async def test_close_reasons_are_readable() -> None:
    a, b = loopback_pair(names=("guest", "host"))
    await a.close()
    with pytest.raises(LinkClosedError, match=r"the peer \(guest\) closed the link"):
        await b.recv()
    with pytest.raises(LinkClosedError, match=r"^the link is closed$"):
        await a.send(b"x")


# -- taps and relays -------------------------------------------------------------------------


async def test_tap_can_drop_modify_and_inject() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def tap(src: str, dst: str, data: bytes) -> Any:
        seen.append((src, dst, data))
        if data == b"drop":
            return None
        if data == b"twice":
            return [b"one", b"two"]
        if data == b"none-at-all":
            return []
        return data.upper()

    async with loopback_pair(tap=tap, names=("guest", "host")) as (a, b):
        for message in (b"drop", b"hello", b"twice", b"none-at-all", b"end"):
            await a.send(message)
        await b.send(b"back")
        assert [await b.recv() for _ in range(4)] == [b"HELLO", b"one", b"two", b"END"]
        assert await a.recv() == b"BACK"
        assert seen[0] == ("guest", "host", b"drop") and seen[-1] == ("host", "guest", b"back")


async def test_async_tap_can_hold_a_message_back() -> None:
    release = asyncio.Event()

    async def tap(src: str, dst: str, data: bytes) -> bytes:
        if data == b"late":
            await release.wait()
        return data

    async with loopback_pair(tap=tap) as (a, b):
        sending = asyncio.ensure_future(a.send(b"late"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.recv(), 0.05)
        release.set()
        await asyncio.wait_for(sending, 1)
        assert await asyncio.wait_for(b.recv(), 1) == b"late"


async def test_tap_output_is_delivered_even_over_the_mtu() -> None:
    # A tampering test needs to hand a receiver an oversize message to see it rejected.
    async with loopback_pair(mtu=20, tap=lambda s, d, data: data * 10) as (a, b):
        await a.send(b"0123456789")
        assert len(await b.recv()) == 100


async def test_relay_taps_and_carries_close() -> None:
    def tap(src: str, dst: str, data: bytes) -> bytes:
        return data + f"|{src}>{dst}".encode()

    guest, mitm_g = loopback_pair(names=("guest", "mitm"))
    mitm_h, host = loopback_pair(names=("mitm", "host"))
    task = asyncio.create_task(relay(mitm_g, mitm_h, tap=tap))
    await guest.send(b"hi")
    assert await host.recv() == b"hi|guest>host"
    await host.send(b"yo")
    assert await guest.recv() == b"yo|host>guest"
    await guest.send(b"last")
    await guest.close()
    assert await host.recv() == b"last|guest>host"
    with pytest.raises(LinkClosedError):
        await host.recv()
    await asyncio.wait_for(task, 1)


async def test_relay_error_closes_both_sides_and_is_raised() -> None:
    def tap(src: str, dst: str, data: bytes) -> bytes:
        raise RuntimeError("tap failed")

    guest, mitm_g = loopback_pair()
    mitm_h, host = loopback_pair()
    task = asyncio.create_task(relay(mitm_g, mitm_h, tap=tap))
    await guest.send(b"x")
    with pytest.raises(RuntimeError, match="tap failed"):
        await asyncio.wait_for(task, 1)
    for link in (guest, host):
        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(link.recv(), 1)


# -- the message queue -----------------------------------------------------------------------


async def test_queue_finish_drains_then_raises_and_abort_drops() -> None:
    queue = MessageQueue(4)
    await queue.put(b"a")
    await queue.put(b"b")
    queue.finish(LinkClosedError("done"))
    with pytest.raises(LinkClosedError):
        await queue.put(b"c")
    assert [await queue.get(), await queue.get()] == [b"a", b"b"]
    with pytest.raises(LinkClosedError, match="done"):
        await queue.get()

    dropped = MessageQueue(4)
    await dropped.put(b"a")
    dropped.abort(TransportError("gone"))
    assert len(dropped) == 0 and dropped.ended
    for op in (dropped.get(), dropped.put(b"x")):
        with pytest.raises(TransportError, match="gone"):
            await op


async def test_queue_cancelled_get_loses_nothing() -> None:
    queue = MessageQueue(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    await queue.put(b"kept")
    assert await queue.get() == b"kept"


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from("ab"), st.integers(0, 20)),
        st.tuples(st.just("recv"), st.sampled_from("ab"), st.just(0)),
        st.tuples(st.just("close"), st.sampled_from("ab"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, capacity=st.integers(1, 4))
def test_pair_matches_a_model(ops: list[tuple[str, str, int]], capacity: int) -> None:
    """Every send/recv/close sequence behaves as two bounded FIFOs with close rules say."""

    async def run() -> None:
        links = dict(zip("ab", loopback_pair(mtu=20, queue_size=capacity), strict=True))
        other = {"a": "b", "b": "a"}
        queues: dict[str, list[bytes]] = {"a": [], "b": []}  # queues[x]: sent by x, unread
        closed = {"a": False, "b": False}
        counter = 0
        for op, side, size in ops:
            peer = other[side]
            if op == "send":
                counter += 1
                message = counter.to_bytes(2, "big")[: max(size, 2)] + bytes(max(size - 2, 0))
                task = asyncio.ensure_future(links[side].send(message))
                await asyncio.sleep(0)
                if closed[side] or closed[peer]:
                    assert task.done() and isinstance(task.exception(), LinkClosedError)
                elif len(queues[side]) >= capacity:
                    assert not task.done(), "send did not wait on a full queue"
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                else:
                    assert task.done() and task.exception() is None
                    queues[side].append(message)
            elif op == "recv":
                task = asyncio.ensure_future(links[side].recv())
                await asyncio.sleep(0)
                if closed[side]:
                    assert task.done() and isinstance(task.exception(), LinkClosedError)
                elif queues[peer]:
                    assert task.done() and task.result() == queues[peer].pop(0)
                elif closed[peer]:
                    assert task.done() and isinstance(task.exception(), LinkClosedError)
                else:
                    assert not task.done(), "recv returned with nothing sent"
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            else:
                await links[side].close()
                if not closed[side]:
                    closed[side] = True
                    queues[peer].clear()  # what the peer sent us, unread, is dropped
            for name in "ab":
                assert links[name].closed == (closed[name] or closed[other[name]])

    asyncio.run(run())


# -- the medium: hellos, connect and accept --------------------------------------------------


async def test_endpoint_shapes_and_identity() -> None:
    medium = LoopbackMedium()
    host = medium.endpoint("host")
    assert medium.endpoint("host") is host
    assert isinstance(host, Advertiser) and isinstance(host, Scanner)
    assert isinstance(host, Connector)
    assert isinstance(await host.listen(), Listener)
    assert await host.listen() is await host.listen()
    fresh = medium.endpoint()
    assert fresh.address.startswith("loopback-") and fresh.address != host.address
    with pytest.raises(ConfigError):
        medium.endpoint("")


async def test_advertising_payload_limit() -> None:
    endpoint = LoopbackMedium(max_payload=255).endpoint("host")
    await endpoint.start_advertising(bytes(255))
    with pytest.raises(ValueError, match="256 bytes"):
        await endpoint.start_advertising(bytes(256))
    with pytest.raises(TypeError):
        await endpoint.start_advertising("hello")  # type: ignore[arg-type]


async def _collect(scanner: Any, timeout: float) -> list[Sighting]:
    return [sighting async for sighting in scanner.scan(timeout)]


async def test_scan_hears_others_repeatedly_but_not_itself() -> None:
    medium = LoopbackMedium(scan_interval=0.01, rssi=-50)
    host = medium.endpoint("host", name="Paul's phone")
    guest = medium.endpoint("guest")
    await host.start_advertising(b"hello")
    await guest.start_advertising(b"me")
    sightings = await _collect(guest, 0.1)
    assert len(sightings) >= 2  # heard again, not once
    assert set(sightings) == {Sighting("host", b"hello", rssi=-50, name="Paul's phone")}
    assert LoopbackMedium().rssi is None


async def test_scan_stops_hearing_a_stopped_advertiser_and_ends_on_time() -> None:
    medium = LoopbackMedium(scan_interval=0.01)
    host = medium.endpoint("host")
    guest = medium.endpoint("guest")
    await host.start_advertising(b"hello")
    await host.stop_advertising()
    await host.stop_advertising()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _collect(guest, 0.05) == []
    assert loop.time() - started < 1.0


async def test_scan_hears_a_new_advertiser_at_once() -> None:
    medium = LoopbackMedium(scan_interval=60)  # only a wake-up can deliver in time
    host = medium.endpoint("host")
    guest = medium.endpoint("guest")

    async def first() -> Sighting:
        async for sighting in guest.scan(5):
            return sighting
        raise AssertionError("scan ended without a sighting")

    task = asyncio.ensure_future(first())
    await asyncio.sleep(0)
    await host.start_advertising(b"new")
    assert (await asyncio.wait_for(task, 1)).payload == b"new"


async def test_connect_and_accept() -> None:
    medium = LoopbackMedium(encrypted=True)
    host = medium.endpoint("host", mtu=100)
    guest = medium.endpoint("guest")
    listener = await host.listen()
    guest_link = await guest.connect("host", timeout=1)
    host_link = await listener.accept(timeout=1)
    assert (guest_link.peer, host_link.peer) == ("host", "guest")
    assert guest_link.mtu == host_link.mtu == 100  # the smaller of the two ends
    assert guest_link.encrypted and host_link.encrypted
    await guest_link.send(b"ping")
    assert await host_link.recv() == b"ping"
    plain = medium.endpoint("plain", encrypted=False)
    assert not (await plain.connect("host", timeout=1)).encrypted
    assert not guest_link.mitm_protected and not host_link.mitm_protected


async def test_a_medium_can_pretend_mitm_protected_pairing() -> None:
    medium = LoopbackMedium(encrypted=True, mitm_protected=True)
    host = medium.endpoint("host")
    listener = await host.listen()
    guest_link = await medium.endpoint("guest").connect("host", timeout=1)
    host_link = await listener.accept(timeout=1)
    assert guest_link.mitm_protected and host_link.mitm_protected
    just_works = medium.endpoint("just-works", mitm_protected=False)
    link = await just_works.connect("host", timeout=1)
    assert link.encrypted and not link.mitm_protected  # protected only if both ends are
    await listener.accept(timeout=1)
    assert LoopbackMedium(mitm_protected=True).endpoint("x").mitm_protected is True
    target = loopback.open("host", medium=medium, mitm_protected=False)
    assert isinstance(target, loopback.LoopbackTarget)
    link = await target.connect(timeout=1)
    assert link.encrypted and not link.mitm_protected


async def test_connect_waits_for_a_late_listener() -> None:
    medium = LoopbackMedium()
    guest = medium.endpoint("guest")
    connecting = asyncio.ensure_future(guest.connect("host", timeout=2))
    await asyncio.sleep(0)
    host = medium.endpoint("host")
    listener = await host.listen()
    link = await asyncio.wait_for(connecting, 1)
    assert link.peer == "host"
    assert (await listener.accept(timeout=1)).peer == "guest"


async def test_connect_timeout_and_self_connect() -> None:
    medium = LoopbackMedium()
    guest = medium.endpoint("guest")
    with pytest.raises(PairingTimeout, match="cannot reach loopback endpoint 'nobody'"):
        await guest.connect("nobody", timeout=0.02)
    medium.endpoint("deaf")
    with pytest.raises(PairingTimeout, match="nothing is listening"):
        await guest.connect("deaf", timeout=0.02)
    with pytest.raises(ConfigError):
        await guest.connect("guest", timeout=1)


async def test_accept_times_out_then_hands_out_guests_in_order() -> None:
    medium = LoopbackMedium()
    listener = await medium.endpoint("host").listen()
    with pytest.raises(PairingTimeout, match=r"no guest connected to host within 0\.02 s"):
        await listener.accept(timeout=0.02)
    waiting = asyncio.ensure_future(listener.accept())
    await asyncio.sleep(0)
    await medium.endpoint("guest1").connect("host", timeout=1)
    await medium.endpoint("guest2").connect("host", timeout=1)
    assert (await asyncio.wait_for(waiting, 1)).peer == "guest1"
    assert (await listener.accept(timeout=1)).peer == "guest2"


async def test_accept_nowait_takes_every_waiting_link_in_order_then_none() -> None:
    medium = LoopbackMedium()
    listener = await medium.endpoint("host").listen()
    assert listener.accept_nowait() is None
    for i in range(3):
        await medium.endpoint(f"guest{i}").connect("host", timeout=1)
    taken = []
    while (link := listener.accept_nowait()) is not None:
        taken.append(link.peer)
    assert taken == ["guest0", "guest1", "guest2"]
    await medium.endpoint("late").connect("host", timeout=1)
    await listener.close()
    assert listener.accept_nowait() is None  # a closed listener hands out nothing


async def test_listener_close_closes_unaccepted_links_and_wakes_accept() -> None:
    medium = LoopbackMedium()
    host = medium.endpoint("host")
    listener = await host.listen()
    unaccepted = await medium.endpoint("guest").connect("host", timeout=1)
    await listener.close()
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(unaccepted.recv(), 1)
    with pytest.raises(LinkClosedError, match="listener"):
        await listener.accept(timeout=1)
    with pytest.raises(PairingTimeout):
        await medium.endpoint("late").connect("host", timeout=0.02)
    pending = asyncio.ensure_future((await host.listen()).accept())
    await asyncio.sleep(0)
    await host.close()
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(pending, 1)


async def test_closed_endpoint_leaves_the_medium() -> None:
    medium = LoopbackMedium(scan_interval=0.01)
    host = medium.endpoint("host")
    await host.start_advertising(b"hello")
    await host.close()
    await host.close()
    assert "host" not in medium.addresses
    assert await _collect(medium.endpoint("guest"), 0.03) == []
    with pytest.raises(TransportError, match="closed"):
        await host.start_advertising(b"again")
    assert medium.endpoint("host") is not host


# -- registry --------------------------------------------------------------------------------


async def test_registry_loopback_is_a_fresh_endpoint_on_the_default_medium() -> None:
    medium = LoopbackMedium()
    mine = await open_transport("loopback", medium=medium, name="Paul's phone")
    assert isinstance(mine, LoopbackEndpoint) and mine.medium is medium
    assert mine.name == "Paul's phone"
    with pytest.raises(ConfigError, match="address"):
        await mine.connect(timeout=1)
    shared = await open_transport(" loopback ")
    assert shared.medium is loopback.default_medium()
    await shared.close()


async def test_registry_loopback_name_serves_both_sides_as_tcp_does() -> None:
    medium = LoopbackMedium(scan_interval=0.01)
    host_side = await open_transport("loopback:paul", medium=medium)
    guest_side = await open_transport("loopback:paul", medium=medium)
    assert isinstance(host_side, Advertiser) and isinstance(guest_side, Scanner)
    listener = await host_side.listen()
    await host_side.start_advertising(b"hi")
    heard = [s async for s in guest_side.scan(0.03)]
    assert heard and {(s.address, s.payload) for s in heard} == {("paul", b"hi")}
    guest = await guest_side.connect(timeout=1)
    host = await listener.accept(timeout=1)
    assert guest.peer == "paul" and host.peer not in ("", "paul")
    again = await guest_side.connect("loopback:paul", timeout=1)
    assert (await listener.accept(timeout=1)).peer == host.peer  # the same guest endpoint
    await host_side.stop_advertising()
    await host_side.close()
    await guest_side.close()
    assert medium.addresses == []
    for link in (guest, host, again):
        await link.close()


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("loopback", TransportSpec("loopback")),
        ("loopback:host", TransportSpec("loopback", "host")),
        ("tcp:127.0.0.1:8765", TransportSpec("tcp", "127.0.0.1:8765")),
        ("tcp:[::1]:0", TransportSpec("tcp", "[::1]:0")),
        ("bumble:usb:0", TransportSpec("bumble", "usb:0")),
        (
            "bumble:serial:/dev/ttyACM0:1000000",
            TransportSpec("bumble", "serial:/dev/ttyACM0:1000000"),
        ),
        ("bleak", TransportSpec("bleak")),
    ],
)
def test_parse_transport(text: str, spec: TransportSpec) -> None:
    assert parse_transport(text) == spec
    assert str(spec) == text


@pytest.mark.parametrize("text", ["", "x", "ble", "Loopback", "usb:0", ":tcp"])
def test_unknown_transport_names_the_choices(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_transport(text)
    assert str(info.value) == (
        f"unknown transport {text!r}; expected one of: loopback, tcp:HOST:PORT, bumble:SPEC, bleak"
    )


@pytest.mark.parametrize(
    "text", ["tcp", "tcp:", "tcp:9000", "tcp::80", "tcp:h:", "tcp:h:x", "tcp:h:70000", "tcp:a b:1"]
)
def test_malformed_tcp_spec(text: str) -> None:
    with pytest.raises(ConfigError, match=r"malformed tcp transport .*expected tcp:HOST:PORT"):
        parse_transport(text)


def test_bumble_needs_a_spec_and_specs_validate_when_built() -> None:
    with pytest.raises(ConfigError, match="bumble:SPEC"):
        parse_transport("bumble")
    with pytest.raises(ConfigError):
        TransportSpec("wifi")
    with pytest.raises(ConfigError):
        TransportSpec("tcp", "nope")


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        spec = parse_transport(text)
    except ConfigError:
        return
    assert parse_transport(str(spec)) == spec


async def test_recv_ready_is_done_exactly_when_recv_nowait_may_give_something() -> None:
    # The driver's flat wait (issue 13): it polls, and when nothing is there it awaits this
    # future instead of recv; the future must come done for a message, for the peer's close
    # and for this side's close, and not before.
    async with loopback_pair() as (a, b):
        ready = b.recv_ready()
        assert ready is not None
        await asyncio.sleep(0)
        assert not ready.done()
        await a.send(b"m")
        assert ready.done()
        assert b.recv_ready().done()  # a message is there now: done at once
        assert b.recv_nowait() == b"m" and b.recv_nowait() is None
        peer_gone = b.recv_ready()
        mine_gone = a.recv_ready()
        assert not peer_gone.done() and not mine_gone.done()
        await a.close()
        assert peer_gone.done() and mine_gone.done()
        with pytest.raises(LinkClosedError, match=r"the peer \(a\) closed the link"):
            b.recv_nowait()
        with pytest.raises(LinkClosedError, match=r"^the link is closed$"):
            a.recv_nowait()


async def test_recv_ready_waiters_given_up_do_not_pile_up() -> None:
    # A reader whose wait is cut short (a deadline, a cancel) cancels its future and goes:
    # the queue drops it at its next waiter or change, so a link read with many timeouts
    # holds no more than the one waiter that is waiting.
    async with loopback_pair() as (a, b):
        for _ in range(50):
            b.recv_ready().cancel()  # type: ignore[union-attr]
        live = b.recv_ready()
        assert live is not None and len(b._inbox._changed._waiters) == 1
        await a.send(b"m")
        assert live.done() and b._inbox._changed._waiters == []


async def test_a_link_whose_recv_does_more_is_not_waited_for_around_it() -> None:
    # As recv_nowait: a subclass's recv may wait on more than the queue, so its readers
    # await recv, never the queue's future.
    class Counting(loopback.LoopbackLink):
        async def recv(self) -> bytes:
            return await super().recv()

    _a, b = loopback_pair()
    counting = Counting(local="b", peer="a", mtu=b.mtu, encrypted=False,
                        inbox=b._inbox, outbox=b._outbox, tap=None)
    assert counting.recv_ready() is None
    assert b.recv_ready() is not None
