"""Real BLE with bumble: discovery, every pairing method and a vanished peer, on virtual radios.

Each test builds its own :class:`~transports.ble.virtual.VirtualRadio` and runs bumble's real host
stack (advertising, scanning, GATT, L2CAP, SMP) under the command's own flows
(:func:`cli.flows.run_host`, :func:`cli.flows.run_join`, :func:`cli.presence.discover`), with
real keystores in a temporary folder and scripted people (:class:`Person`) who record every
question they are asked.  Where a test needs a step the flows do not expose (a host that vanishes
after its first flight, a host that refuses ``clear``), it drives the pairing machines with
:func:`pairkit.driver.drive` over a BLE link directly.

:class:`World` and :class:`Person` are shared with ``tests/test_ble_cloud_service.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.flows import HostOptions, JoinOptions, SessionHandler, run_host, run_join
from pairkit.cli.presence import Presence, discover, tag_keys
from pairkit.driver import MessagePipe, drive
from pairkit.pairing.cloud import AllowJoin, Grant, Role
from pairkit.pairing.errors import (
    ErrorCode,
    InsecureLinkError,
    LinkClosedError,
    PairingTimeout,
    RemoteError,
)
from pairkit.pairing.hello import decode_hello, match_tag
from pairkit.pairing.keystore import Argon2Params, Keystore
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    InsecureWarning,
    LocalIdentity,
    PairingConfig,
    Session,
)
from pairkit.pairing.negotiation import Method
from pairkit.pairing.qr import QrCode
from pairkit.pairing.service import AllowRequest, JoinCloud, Membership, Scope
from pairkit.transports.ble.links import BleLink, GattLink, L2capLink
from pairkit.transports.bumble import BumbleTransport, VirtualRadio, open_bumble

KEYSTORE_PIN = "246813"
GUEST_HOUR = Grant(Role.GUEST, 3600)
SPEC = "bumble:virtual"
PIN = "482913"


# -- the harness (shared with test_ble_cloud_service.py) ----------------------------------------


def make_keystore(path: Path, name: str) -> Keystore:
    """A device with its own personal cloud, as ``pairkit init`` makes it (cheapest Argon2id)."""
    ks = Keystore.create(path, KEYSTORE_PIN, name=name, kdf=Argon2Params.cheapest())
    ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
    ks.save()
    return ks


def reopen(ks: Keystore) -> Keystore:
    """The keystore as it is on disk (what the next command would see)."""
    return Keystore.open(ks.path, KEYSTORE_PIN)


def make_member(owner: Keystore, member: Keystore) -> None:
    """``member`` joined ``owner``'s cloud earlier (as a member grant delivers the secret)."""
    cloud = next(c for c in owner.clouds() if c.role == "owner")
    member.set_cloud(
        cloud.cloud_id, owner._cloud_secret_for_new_member(cloud.cloud_id),
        name=cloud.name, role="member",
    )
    member.save()


class Person:
    """A device's owner, scripted: the answers are fixed, every question is recorded."""

    def __init__(
        self, *, join: Grant | None = GUEST_HOUR, scope: Scope = Scope.SESSION, confirm: bool = True
    ) -> None:
        self.join = join
        self.scope = scope
        self.confirm = confirm
        self.questions: list[tuple[str, str | None]] = []
        self.warnings: list[str] = []

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        self.questions.append(("join", q.name))
        return self.join

    async def allow_request(self, q: AllowRequest) -> Scope:
        self.questions.append((q.what, q.name))
        return self.scope

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.questions.append(("code", q.code))
        return self.confirm

    async def join_cloud(self, q: JoinCloud) -> bool:
        self.questions.append(("cloud", q.cloud_name))
        return True

    async def on_warning(self, event: InsecureWarning) -> None:
        self.warnings.append(event.text)

    async def on_event(self, event: object) -> None:
        return None


@dataclasses.dataclass
class HostRun:
    """A running ``run_host`` on a virtual controller."""

    task: asyncio.Task[int]
    transport: BumbleTransport
    presence: Presence
    state: HostState
    person: Person
    results: list[dict[str, Any]]

    @property
    def address(self) -> str:
        return self.transport.address

    @property
    def qr(self) -> QrCode:
        assert self.state.last_qr is not None
        return QrCode.parse(self.state.last_qr.to_uri())

    def encrypted_connections(self) -> list[bool]:
        return [c.is_encrypted for c in self.transport.device.connections.values()]


class World:
    """One virtual radio, the devices on it, the hosts running; everything closed at the end."""

    def __init__(self) -> None:
        self.radio = VirtualRadio()
        self.transports: list[BumbleTransport] = []
        self.hosts: list[HostRun] = []

    async def device(self, **config: Any) -> BumbleTransport:
        transport = await open_bumble("virtual", radio=self.radio, **config)
        self.transports.append(transport)
        return transport

    async def start_host(
        self,
        ks: Keystore,
        methods: frozenset[Method] = frozenset({Method.PIN, Method.RESUME}),
        *,
        person: Person | None = None,
        prefer_l2cap: bool = True,
        on_session: SessionHandler | None = None,
        **options: Any,
    ) -> HostRun:
        transport = await self.device(prefer_l2cap=prefer_l2cap)
        person = person or Person()
        options.setdefault("visible", 60.0)
        opts = HostOptions(transport=SPEC, methods=methods, quiet=True, **options)
        started: asyncio.Future[HostState] = asyncio.get_running_loop().create_future()
        presences: list[Presence] = []
        results: list[dict[str, Any]] = []
        task = asyncio.create_task(run_host(
            ks, opts, emit=results.append, ready=lambda _a, s: started.set_result(s),
            transport_obj=transport, delegate=person, presence_out=presences,
            on_session=on_session,
        ))
        done, _ = await asyncio.wait({task, started}, timeout=5, return_when="FIRST_COMPLETED")
        if started not in done:
            task.cancel()
            raise AssertionError(f"the host did not start: {task}")
        host = HostRun(task, transport, presences[0], started.result(), person, results)
        self.hosts.append(host)
        return host

    async def join(
        self,
        ks: Keystore,
        guest: BumbleTransport,
        host: HostRun | None,
        *,
        method: Method | None = Method.PIN,
        person: Person | None = None,
        on_session: SessionHandler | None = None,
        target: str | None = None,
        address: str | None = None,
        **options: Any,
    ) -> tuple[Session, Membership]:
        """``pairkit join`` through ``guest`` (to ``host``'s address unless ``target`` names a
        known peer), bounded by a deadline."""
        if method is Method.PIN and "pin" not in options and host is not None:
            options["pin"] = host.state.pin
        if method is Method.QR and "qr" not in options and host is not None:
            options["qr"] = host.qr
        if target is None and host is not None:
            target = host.address
        assert target is not None
        opts = JoinOptions(
            target=target, transport=SPEC, method=method, json=True,
            connect_timeout=5.0, **options,
        )
        return await asyncio.wait_for(
            run_join(ks, opts, on_session=on_session, transport_obj=guest,
                     delegate=person or Person(), address=address),
            15,
        )

    async def close(self) -> None:
        for host in self.hosts:
            host.task.cancel()
        for host in self.hosts:
            with contextlib.suppress(BaseException):
                await host.task
        for transport in reversed(self.transports):
            await transport.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
def paul(tmp_path: Path) -> Keystore:
    return make_keystore(tmp_path / "paul" / "keystore.pk", "Paul's phone")


@pytest.fixture
def george(tmp_path: Path) -> Keystore:
    return make_keystore(tmp_path / "george" / "keystore.pk", "George's phone")


@pytest.fixture
def tv(tmp_path: Path, paul: Keystore) -> Keystore:
    """Paul's TV: a member of Paul's cloud."""
    ks = make_keystore(tmp_path / "tv" / "keystore.pk", "Paul's TV")
    make_member(paul, ks)
    return ks


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.005)


async def sightings(
    scanner: BumbleTransport, seconds: float, address: Callable[[str], bool] = lambda _a: True
) -> list[tuple[str, bytes, bool]]:
    """(address, hello tag, visible) of every hello heard for ``seconds``, in order."""
    heard = []
    async for s in scanner.scan(seconds):
        if address(s.address):
            hello = decode_hello(s.payload)
            heard.append((s.address, hello.tag, hello.visible))
    return heard


def tags_by_address(heard: list[tuple[str, bytes, bool]]) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for address, tag, _visible in heard:
        out.setdefault(address, set()).add(tag)
    return out


async def ble_pair(
    world: World, *, prefer_l2cap: bool = True
) -> tuple[BumbleTransport, BumbleTransport, BleLink, BleLink]:
    """A host and a guest device and one link between them (no pairkit handshake yet)."""
    host = await world.device(prefer_l2cap=prefer_l2cap)
    guest = await world.device(prefer_l2cap=prefer_l2cap)
    await host.start_advertising(b"\x40" + bytes(9))
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    guest_link = await guest.connect(host.address, timeout=5)
    return host, guest, guest_link, await accepting


# -- discovery -----------------------------------------------------------------------------------


async def test_a_visible_host_is_found_quickly_and_listed_as_joinable(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul, frozenset({Method.PIN, Method.QR, Method.RESUME}))
    scanner = await world.device()
    t0 = time.perf_counter()
    found, garbage = await discover(scanner, george, 0.5)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0
    assert garbage == 0
    (entry,) = [f for f in found if f.address == host.address]
    assert entry.hello.visible is True
    assert entry.as_json() == {
        "address": host.address, "name": None, "rssi": -50,
        "methods": ["pin", "qr", "resume"], "visible": True, "cloud": None,
    }
    # The first hello itself arrives within milliseconds of scanning.
    t0 = time.perf_counter()
    async for s in scanner.scan(2.0):
        if s.address == host.address:
            break
    else:
        raise AssertionError("no hello heard")
    assert time.perf_counter() - t0 < 2.0


async def test_a_private_host_is_listed_not_joinable_and_refuses_a_stranger(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul, visible=None)
    guest = await world.device()
    found, _ = await discover(guest, george, 0.3)
    (entry,) = [f for f in found if f.address == host.address]
    assert entry.hello.visible is False and entry.cloud_name is None
    with pytest.raises(RemoteError, match="not open to new devices") as caught:
        await world.join(george, guest, host)
    assert caught.value.code == ErrorCode.REFUSED
    assert "--visible" in str(caught.value)  # says how the owner opens it
    assert host.person.questions == []  # the owner was not even asked
    assert host.results == []
    assert reopen(george).peers() == () and reopen(paul).peers() == ()
    assert not host.task.done()  # the host keeps serving


async def test_tag_and_address_change_when_a_window_opens_and_closes(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul, visible=None)
    scanner = await world.device()
    private_address = host.address
    before = await sightings(scanner, 0.15, lambda a: a == private_address)
    assert before and all(not visible for _a, _t, visible in before)
    await host.presence.open_window(0.4)  # pairkit host --visible 0.4, opened now
    opened_address = host.address
    assert opened_address != private_address
    during = await sightings(scanner, 0.15, lambda a: a == opened_address)
    assert during and all(visible for _a, _t, visible in during)
    # The window closes on its own: tag and address change again, strangers see "private".
    await eventually(lambda: host.address != opened_address, within=2.0)
    closed_address = host.address
    after = await sightings(scanner, 0.15, lambda a: a == closed_address)
    assert after and all(not visible for _a, _t, visible in after)
    tags = [tags_by_address(h) for h in (before, during, after)]
    assert [len(t) for t in tags] == [1, 1, 1]  # one tag per address...
    all_tags = [next(iter(t.values())) for t in tags]
    assert len(set().union(*all_tags)) == 3  # ...and a new one each time
    assert len({private_address, opened_address, closed_address}) == 3


async def test_tag_and_address_rotate_on_their_own(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    transport = await world.device()
    scanner = await world.device()
    presence = Presence(transport, paul, frozenset({Method.PIN}), visible_for=None,
                        rotate_every=0.25)
    await presence.start()
    try:
        heard = await sightings(scanner, 1.0)
    finally:
        await presence.stop()
    by_address = tags_by_address(heard)
    assert len(by_address) >= 3, by_address  # rotated at least twice in a second
    assert all(len(tags) == 1 for tags in by_address.values()), heard
    tags = [tag for tags in by_address.values() for tag in tags]
    assert len(set(tags)) == len(tags)
    # Every tag, however rotated, still says "Paul's cloud" to a member.
    cloud = next(c.cloud_id for c in paul.clouds() if c.role == "owner")
    assert {match_tag(tag, tag_keys(tv), time.time()) for tag in tags} == {cloud}


async def test_a_member_recognises_the_host_and_a_stranger_does_not(
    world: World, paul: Keystore, george: Keystore, tv: Keystore
) -> None:
    host = await world.start_host(paul, visible=None)  # private: only members know it
    tv_radio, george_radio = await world.device(), await world.device()
    (tv_found, _), (george_found, _) = await asyncio.gather(
        discover(tv_radio, tv, 0.3), discover(george_radio, george, 0.3)
    )
    (seen_by_tv,) = [f for f in tv_found if f.address == host.address]
    (seen_by_george,) = [f for f in george_found if f.address == host.address]
    assert seen_by_tv.cloud_name == "Paul's phone's cloud"
    assert seen_by_tv.as_json()["cloud"] == "Paul's phone's cloud"
    assert seen_by_george.cloud_name is None and seen_by_george.cloud is None
    # The member is let in although the host is private, with no question to Paul.
    _session, membership = await world.join(tv, tv_radio, host)
    assert membership.role is Role.MEMBER
    assert host.person.questions == []


# -- every pairing method over BLE ---------------------------------------------------------------


@pytest.mark.parametrize("link_kind", ["l2cap", "gatt"])
@pytest.mark.parametrize("method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR])
async def test_each_method_pairs_over_ble(
    world: World, paul: Keystore, george: Keystore, method: Method, link_kind: str
) -> None:
    host = await world.start_host(
        paul, frozenset({method, Method.RESUME}), prefer_l2cap=link_kind == "l2cap"
    )
    guest = await world.device(prefer_l2cap=link_kind == "l2cap")
    seen: dict[str, Any] = {}

    async def look(slink: Any, session: Session, membership: Membership) -> None:
        seen["link"] = slink.link
        seen["guest_encrypted"] = slink.link.encrypted
        seen["host_encrypted"] = host.encrypted_connections()

    george_person = Person()
    session, membership = await world.join(
        george, guest, host, method=method, person=george_person, on_session=look
    )
    await eventually(lambda: len(host.results) == 1)
    result = host.results[0]
    assert session.method is method and result["method"] == method.label
    assert result["session"] == session.fingerprint
    assert result["peer"]["name"] == "George's phone" and result["role"] == "guest"
    assert session.peer.name == "Paul's phone"
    # 'clear' over a Just Works link is encrypted but vouched for by no one (rule 5).
    assert session.peer.authenticated is (method is not Method.CLEAR)
    assert membership.role is Role.GUEST
    assert type(seen["link"]) is (L2capLink if link_kind == "l2cap" else GattLink)
    if method is Method.CLEAR:
        # run_join turned on LE Secure Connections first; both controllers encrypt the link.
        assert seen["guest_encrypted"] is True and seen["host_encrypted"] == [True]
        assert result["peer"]["authenticated"] is False
    else:
        assert seen["guest_encrypted"] is False and seen["host_encrypted"] == [False]
    if method is Method.COMPARE:
        (guest_code,) = [c for kind, c in george_person.questions if kind == "code"]
        (host_code,) = [c for kind, c in host.person.questions if kind == "code"]
        assert guest_code == host_code and len(guest_code or "") == 6
    # Both stored each other, with the method.
    (stored_host,) = reopen(george).peers()
    (stored_guest,) = reopen(paul).peers()
    assert stored_host.name == "Paul's phone" and stored_host.method == method.label
    assert stored_guest.name == "George's phone" and stored_guest.method == method.label
    assert stored_host.extra["address"] == host.address


async def test_resume_and_the_kk_fallback_over_ble(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul)
    guest = await world.device()
    first, _ = await world.join(george, guest, host)
    await eventually(lambda: len(host.results) == 1)
    asked = len(host.person.questions)
    assert asked == 1  # the join question

    # A known peer comes back by name: resume, with no question to anyone.
    george_person = Person()
    again, membership = await world.join(george, guest, None, method=None,
                                         target="Paul's phone", person=george_person)
    await eventually(lambda: len(host.results) == 2)
    assert again.method is Method.RESUME and host.results[1]["method"] == "resume"
    assert host.results[1]["session"] == again.fingerprint != first.fingerprint
    assert membership.role is Role.GUEST
    assert len(host.person.questions) == asked and george_person.questions == []

    # No prekey left: Noise KK on the same known keys.
    record = george.get_peer("Paul's phone")
    george.add_peer(dataclasses.replace(record, their_prekeys=[]))
    george.save()
    kk, _ = await world.join(george, guest, None, method=None, target="Paul's phone")
    await eventually(lambda: len(host.results) == 3)
    assert kk.method is Method.KK and host.results[2]["method"] == "kk"
    assert host.results[2]["session"] == kk.fingerprint
    assert reopen(george).get_peer("Paul's phone").their_prekeys  # KK renewed them

    # A prekey the host no longer holds: the host says "ephemeral key mismatch", KK follows,
    # and the stale digest is forgotten.
    stale = os.urandom(16)
    record = george.get_peer("Paul's phone")
    george.add_peer(dataclasses.replace(record, their_prekeys=[stale]))
    george.save()
    kk2, _ = await world.join(george, guest, None, method=None, target="Paul's phone")
    await eventually(lambda: len(host.results) == 4)
    assert kk2.method is Method.KK and host.results[3]["session"] == kk2.fingerprint
    assert stale not in reopen(george).get_peer("Paul's phone").their_prekeys
    assert len(host.person.questions) == asked


# -- clear without link encryption ---------------------------------------------------------------


class _PlainLink:
    """A BLE link seen through a transport that cannot turn link-layer encryption on."""

    def __init__(self, link: BleLink) -> None:
        self._link = link

    mtu = property(lambda self: self._link.mtu)
    peer = property(lambda self: self._link.peer)
    encrypted = property(lambda self: self._link.encrypted)
    closed = property(lambda self: self._link.closed)

    async def send(self, data: bytes) -> None:
        await self._link.send(data)

    async def recv(self) -> bytes:
        return await self._link.recv()

    async def close(self) -> None:
        await self._link.close()


class _NoEncryptTransport:
    def __init__(self, inner: BumbleTransport) -> None:
        self.inner = inner

    async def connect(self, address: str, timeout: float) -> _PlainLink:
        return _PlainLink(await self.inner.connect(address, timeout))

    async def close(self) -> None:
        return None


async def test_clear_is_refused_by_the_guest_on_a_link_that_cannot_encrypt(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul, frozenset({Method.CLEAR, Method.RESUME}))
    guest = _NoEncryptTransport(await world.device())
    opts = JoinOptions(target=host.address, transport=SPEC, method=Method.CLEAR)
    with pytest.raises(InsecureLinkError, match="--allow-insecure") as caught:
        await asyncio.wait_for(
            run_join(george, opts, transport_obj=guest, delegate=Person()), 10
        )
    assert "not" in str(caught.value) and "encrypted" in str(caught.value)
    # Refused before anything was asked of the host's owner, and nothing stored.
    assert host.person.questions == [] and host.results == []
    assert reopen(george).peers() == () and reopen(paul).peers() == ()


async def test_clear_is_refused_by_the_host_before_encryption(world: World) -> None:
    _host_t, _guest_t, guest_link, host_link = await ble_pair(world)
    assert not guest_link.encrypted and not host_link.encrypted
    loop = asyncio.get_running_loop()
    # The guest forces it (--allow-insecure); the host does not.
    guest = GuestPairing(
        PairingConfig(allow_insecure=True, step_timeout=5), LocalIdentity.generate("George"),
        method=Method.CLEAR, link_encrypted=guest_link.encrypted,
    )
    host = HostPairing(
        PairingConfig(step_timeout=5), LocalIdentity.generate("Paul"), HostState(),
        link_encrypted=host_link.encrypted,
    )
    host.start(loop.time())
    guest.start(loop.time())
    guest_error, host_error = await asyncio.wait_for(asyncio.gather(
        drive(guest, guest_link, delegate=Person()), drive(host, host_link, delegate=Person()),
        return_exceptions=True,
    ), 10)
    assert isinstance(host_error, InsecureLinkError)
    assert isinstance(guest_error, RemoteError) and guest_error.code == ErrorCode.INSECURE
    assert "--allow-insecure" in str(guest_error) and "encrypted" in str(guest_error)
    assert guest.session is None and host.session is None


# -- a peer that vanishes mid-handshake ----------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"), [("unplug", PairingTimeout), ("close", LinkClosedError)]
)
async def test_a_host_that_vanishes_after_its_first_flight_ends_the_guest(
    world: World, how: str, expected: type[Exception]
) -> None:
    host_t, _guest_t, guest_link, host_link = await ble_pair(world)
    loop = asyncio.get_running_loop()
    step = 2.0
    state = HostState()
    state.set_pin(PIN)
    guest = GuestPairing(PairingConfig(step_timeout=step), LocalIdentity.generate("George"),
                         method=Method.PIN, pin=PIN)
    guest.start(loop.time())
    t0 = loop.time()
    guest_run = asyncio.ensure_future(drive(guest, guest_link))

    # The host reads the offer, sends its Accept (its first flight), then is gone.
    pipe = MessagePipe(host_link)
    machine = HostPairing(PairingConfig(step_timeout=step), LocalIdentity.generate("Paul"), state)
    machine.start(loop.time())
    machine.receive(await asyncio.wait_for(pipe.recv(), 5), loop.time())
    for message in machine.outgoing():
        await pipe.send(message)
    if how == "unplug":
        assert host_t.controller is not None
        world.radio.unplug(host_t.controller)  # silence: no disconnection reaches the guest
    else:
        await host_t.close()

    with pytest.raises(expected):
        await asyncio.wait_for(guest_run, step + 3)  # never hangs
    elapsed = loop.time() - t0
    assert elapsed < step + 1.0
    if how == "unplug":
        assert elapsed >= step * 0.9  # it waited its step timeout, no less
    assert guest.failed and guest.session is None
