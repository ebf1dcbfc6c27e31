"""Real BLE on virtual radios: discovery, every pairing method, resume, a wrong PIN, a file and
a vanished peer, with the guest on bumble and on bleak.

Each test builds its own :class:`~transports.ble.virtual.VirtualRadio` (``world``, from
tests/ble_harness.py) and runs bumble's real host stack (advertising, scanning, GATT, L2CAP, SMP)
under the command's own flows (:func:`cli.flows.run_host`, :func:`cli.flows.run_join`,
:func:`pairkit.presence.discover`), with real keystores in a temporary folder and scripted people
(:class:`Person`) who record every question they are asked.

The matrix: a test that takes ``central`` runs once per kind of guest in
:data:`~tests.ble_harness.CENTRALS`: a bumble device (``bumble:virtual``), and bleak's API on
pairkit's bumble backend (``bleak:bumble:virtual``, :mod:`transports.bleak`) on the same radio;
the host is always ``pairkit host``'s flow on bumble.  Where a test needs a step the flows do
not expose (a host that vanishes after its first flight, a host that refuses ``clear``), it
drives the pairing machines with :func:`pairkit.driver.drive` over a bumble link directly.  Last,
``pairkit discover`` and ``pairkit join`` run as processes with the guest on
``bleak:bumble:tcp-client:...`` through ``pairkit radio``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.flows import JoinOptions, run_join
from pairkit.driver import MessagePipe, drive
from pairkit.files import get_file
from pairkit.keystore import Keystore
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import (
    ErrorCode,
    InsecureLinkError,
    LinkClosedError,
    PairingError,
    PairingTimeout,
    RemoteError,
)
from pairkit.pairing.hello import match_tag
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
    Session,
)
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import Membership
from pairkit.presence import Presence, discover, tag_keys
from pairkit.transports.base import Link
from pairkit.transports.ble.links import GattLink, L2capLink
from pairkit.transports.bleak import BleakLink
from tests.ble_harness import (
    CENTRALS,
    PIN,
    Central,
    Person,
    World,
    ble_pair,
    eventually,
    reopen,
    sightings,
    spec_of,
    tags_by_address,
)
from tests.cli_helpers import Device, Lab, run_cli


@pytest.fixture(params=CENTRALS)
def central(request: pytest.FixtureRequest) -> str:
    """The kind of guest (the matrix in the module docstring)."""
    return request.param  # type: ignore[no-any-return]


# -- discovery -----------------------------------------------------------------------------------


async def test_a_visible_host_is_found_quickly_and_listed_as_joinable(
    world: World, paul: Keystore, george: Keystore, central: str
) -> None:
    host = await world.start_host(paul, frozenset({Method.PIN, Method.QR, Method.RESUME}))
    scanner = await world.central(central)
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
        # a stranger: one address per entry, no device (tests/test_ble_privacy.py)
        "addresses": [host.address], "device": None,
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
    world: World, paul: Keystore, george: Keystore, central: str
) -> None:
    host = await world.start_host(paul, visible=None)
    guest = await world.central(central)
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
    world: World, paul: Keystore, george: Keystore, tv: Keystore, central: str
) -> None:
    host = await world.start_host(paul, visible=None)  # private: only members know it
    tv_radio, george_radio = await world.central(central), await world.central(central)
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


# -- every pairing method, over every kind of link -------------------------------------------------

#: (central, link the guest prefers, the link class it gets): bleak has GATT only.
LINKS = {
    "bumble-l2cap": ("bumble", True, L2capLink),
    "bumble-gatt": ("bumble", False, GattLink),
    "bleak-gatt": ("bleak", True, BleakLink),
}


@pytest.mark.parametrize("link_kind", list(LINKS))
@pytest.mark.parametrize("method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR])
async def test_each_method_pairs_over_ble(
    world: World, paul: Keystore, george: Keystore, method: Method, link_kind: str
) -> None:
    central, prefer_l2cap, link_class = LINKS[link_kind]
    host = await world.start_host(
        paul, frozenset({method, Method.RESUME}), prefer_l2cap=prefer_l2cap
    )
    guest = await world.central(central, prefer_l2cap=prefer_l2cap)
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
    assert type(seen["link"]) is link_class
    if method is Method.CLEAR:
        # run_join turned on LE Secure Connections first (on bleak through its pair());
        # both controllers encrypt the link.
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
    world: World, paul: Keystore, george: Keystore, central: str
) -> None:
    host = await world.start_host(paul)
    guest = await world.central(central)
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


async def test_a_wrong_pin_fails_on_both_sides(
    world: World, paul: Keystore, george: Keystore, central: str
) -> None:
    host = await world.start_host(paul)
    guest = await world.central(central)
    wrong = "000000" if host.state.pin != "000000" else "111111"
    with pytest.raises(PairingError):
        await world.join(george, guest, host, pin=wrong)
    assert host.results == []
    assert reopen(george).peers() == () and reopen(paul).peers() == ()
    assert not host.task.done()  # the host keeps serving


async def test_a_file_travels_over_the_link(
    world: World, paul: Keystore, george: Keystore, tmp_path: Path, central: str
) -> None:
    share = tmp_path / "videos"
    share.mkdir()
    content = os.urandom(300_000)
    (share / "holiday.mp4").write_bytes(content)
    host = await world.start_host(paul, share=share)
    guest = await world.central(central)
    dest = tmp_path / "got" / "holiday.mp4"
    dest.parent.mkdir()
    fetched: list[Any] = []

    async def fetch(slink: Any, session: Session, membership: Membership) -> None:
        fetched.append(await get_file(slink, "holiday.mp4", dest))

    await world.join(george, guest, host, on_session=fetch)
    (result,) = fetched
    assert result.size == len(content) and dest.read_bytes() == content
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    # Paul was asked to let George in, then for the file (DESIGN.md, service provision).
    assert host.person.questions == [("join", "George's phone"), ("get", "holiday.mp4")]


# -- clear without link encryption ---------------------------------------------------------------


class _PlainLink:
    """A BLE link seen through a transport that cannot turn link-layer encryption on."""

    def __init__(self, link: Link) -> None:
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
    def __init__(self, inner: Central) -> None:
        self.inner = inner

    async def connect(self, address: str, timeout: float) -> _PlainLink:
        return _PlainLink(await self.inner.connect(address, timeout))

    async def close(self) -> None:
        return None


async def test_clear_is_refused_by_the_guest_on_a_link_that_cannot_encrypt(
    world: World, paul: Keystore, george: Keystore, central: str
) -> None:
    host = await world.start_host(paul, frozenset({Method.CLEAR, Method.RESUME}))
    inner = await world.central(central)
    guest = _NoEncryptTransport(inner)
    opts = JoinOptions(target=host.address, transport=spec_of(inner), method=Method.CLEAR)
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


# -- the commands, as processes, through pairkit radio -------------------------------------------


async def test_join_and_discover_on_bleak_through_pairkit_radio(
    tmp_path: Path, templates: dict[str, Device]
) -> None:
    radio = await asyncio.create_subprocess_exec(
        *_module("pairkit.transports.radio"),
        "--ports",
        "0",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    lab = Lab(tmp_path / "devices", templates)
    try:
        assert radio.stdout is not None
        line = (await asyncio.wait_for(radio.stdout.readline(), 20)).decode()
        host_spec, guest_spec = line.split()[1:3]
        guest_spec = "bleak:" + guest_spec  # bleak:bumble:tcp-client:127.0.0.1:P
        paul, george = lab.device("paul"), lab.device("george")
        host = await lab.host(
            paul,
            "--method",
            "pin",
            "--pin",
            "482913",
            "--visible",
            "60",
            "--yes",
            "--json",
            transport=host_spec,
        )
        found = (await george.run("discover", "-t", guest_spec, "--timeout", "1", "--json")).ok()
        (device,) = [d for d in found.json()["devices"] if d["address"] == host.address]
        assert device["visible"] is True and device["methods"] == ["pin"]
        joined = await george.join(
            host.address, "-t", guest_spec, "--method", "pin", "--pin", "482913", "--json"
        )
        result = joined.ok().json()
        assert result["ok"] is True and result["method"] == "pin"
        hosted = await host.next_result()
        assert hosted["session"] == result["session"]
        assert hosted["peer"]["name"] == "George's phone"
        (peer,) = await george.peers()
        assert peer["name"] == "Paul's phone"
        # And what the guest side says when the radio it names is not there.
        dead = await run_cli(george.home, "discover", "-t", "bleak:bumble:tcp-client:127.0.0.1:1")
        assert dead.rc != 0 and "error: " in dead.err and "nothing listens" in dead.err
    finally:
        await lab.close()
        radio.kill()
        await radio.wait()


def _module(name: str) -> tuple[str, ...]:
    return (sys.executable, "-m", name)
