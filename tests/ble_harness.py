"""The BLE test harness: keystores, scripted people, and hosts and guests on one virtual radio.

A :class:`World` is one :class:`~transports.ble.virtual.VirtualRadio` and the devices on it:
hosts run ``pairkit host``'s flow (:func:`cli.flows.run_host`) on bumble, guests are a bumble
device or bleak on pairkit's bumble backend (:data:`CENTRALS`, ``world.central(kind)``), and
``world.join`` runs ``pairkit join``'s flow (:func:`cli.flows.run_join`) through either.
Keystores are real, in a temporary folder; :class:`Person` answers every question as scripted
and records it.  Used by tests/test_ble_pairing.py, test_ble_cloud_service.py and
test_ble_moved.py (their fixtures ``world``, ``paul``, ``george`` and ``tv`` are here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.flows import HostOptions, JoinOptions, SessionHandler, run_host, run_join
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.cloud import AllowJoin, Grant, Role
from pairkit.pairing.hello import decode_hello
from pairkit.pairing.methods import ConfirmCode, HostState, InsecureWarning, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.qr import QrCode
from pairkit.pairing.service import AllowRequest, JoinCloud, Membership, Scope
from pairkit.presence import Presence
from pairkit.transports.ble.links import BleLink
from pairkit.transports.bleak import BleakTransport
from pairkit.transports.bumble import BumbleConfig, BumbleTransport, VirtualRadio, open_bumble
from pairkit.transports.registry import open_transport

KEYSTORE_PIN = "246813"
GUEST_HOUR = Grant(Role.GUEST, 3600)
SPEC = "bumble:virtual"
BLEAK_SPEC = "bleak:bumble:virtual"
#: The guests a test can join with: a bumble device, or bleak on pairkit's bumble backend.
CENTRALS = ("bumble", "bleak")

Central = BumbleTransport | BleakTransport
PIN = "482913"


def make_keystore(path: Path, name: str, *, cloud: str | None = None) -> Keystore:
    """A device with its own personal cloud, as ``pairkit init`` makes it (cheapest Argon2id);
    the cloud is named after the device unless ``cloud`` names it."""
    ks = Keystore.create(path, KEYSTORE_PIN, name=name, kdf=Argon2Params.cheapest())
    cloud = f"{name}'s cloud" if cloud is None else cloud
    ks.set_cloud(ks.device_id[:16], os.urandom(32), name=cloud, role="owner")
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
        self.transports: list[Central] = []
        self.hosts: list[HostRun] = []

    async def device(self, **config: Any) -> BumbleTransport:
        """A bumble device on the radio (``config``: :class:`BumbleConfig` fields)."""
        transport = await open_bumble("virtual", radio=self.radio, **config)
        self.transports.append(transport)
        return transport

    async def central(self, kind: str, *, prefer_l2cap: bool = True) -> Central:
        """A guest of one of the :data:`CENTRALS`: a bumble device, or ``bleak:bumble:virtual``
        (GATT only: bleak opens no L2CAP channels, so ``prefer_l2cap`` is bumble's alone)."""
        if kind == "bumble":
            return await self.device(prefer_l2cap=prefer_l2cap)
        if kind != "bleak":
            raise ValueError(f"no central of kind {kind!r} (one of {CENTRALS})")
        transport = await open_transport(BLEAK_SPEC, radio=self.radio)
        self.transports.append(transport)
        return transport  # type: ignore[no-any-return]

    async def start_host(
        self,
        ks: Keystore,
        methods: frozenset[Method] = frozenset({Method.PIN, Method.RESUME}),
        *,
        person: Person | None = None,
        prefer_l2cap: bool = True,
        on_session: SessionHandler | None = None,
        device: dict[str, Any] | None = None,
        **options: Any,
    ) -> HostRun:
        """``run_host`` on a new device (``device``: more :class:`BumbleConfig` fields)."""
        transport = await self.device(prefer_l2cap=prefer_l2cap, **(device or {}))
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
        guest: Central,
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
        known peer), bounded by a deadline; ``-t`` names the guest's transport."""
        if method is Method.PIN and "pin" not in options and host is not None:
            options["pin"] = host.state.pin
        if method is Method.QR and "qr" not in options and host is not None:
            options["qr"] = host.qr
        if target is None and host is not None:
            target = host.address
        assert target is not None
        opts = JoinOptions(
            target=target, transport=spec_of(guest), method=method, json=True,
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


def spec_of(transport: Any) -> str:
    """The ``--transport`` name of a World's device."""
    return BLEAK_SPEC if isinstance(transport, BleakTransport) else SPEC


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


#: opens a BumbleTransport on a test's radio: ``await open_device(seed, **BumbleConfig fields)``
OpenDevice = Callable[..., Awaitable[BumbleTransport]]


@contextlib.asynccontextmanager
async def bumble_devices(radio: VirtualRadio) -> AsyncIterator[OpenDevice]:
    """Open BumbleTransports on ``radio``, each with the randomness of its seed and the
    :class:`BumbleConfig` its keywords give; all are closed afterwards, last first."""
    opened: list[BumbleTransport] = []

    async def factory(seed: int, **config: Any) -> BumbleTransport:
        transport = BumbleTransport(
            "virtual", radio=radio, rng=random.Random(seed).randbytes,
            config=BumbleConfig(**config),
        )
        opened.append(transport)
        return await transport.open()

    try:
        yield factory
    finally:
        for transport in reversed(opened):
            await transport.close()


async def linked_pair(
    open_device: OpenDevice, seed: int, **config: Any
) -> tuple[BleLink, BleLink]:
    """A host (``seed``) advertising and a guest (``seed + 1``) connected to it: (the guest's
    link, the host's)."""
    host = await open_device(seed, **config)
    guest = await open_device(seed + 1, **config)
    await host.start_advertising(b"hello")
    accepting = asyncio.ensure_future(host.accept(timeout=5))
    guest_link = await guest.connect(host.address, timeout=5)
    return guest_link, await accepting


async def gatt_guests(
    host: BumbleTransport, guests: list[BumbleTransport]
) -> list[tuple[BleLink, BleLink]]:
    """Each of ``guests`` connected to ``host`` over GATT, one after another (the host
    advertising again for each): (the guest's link, the host's) per guest, in order."""
    from pairkit.transports.ble.links import GattLink

    pairs: list[tuple[BleLink, BleLink]] = []
    for guest in guests:
        await host.start_advertising(b"hello")
        accepting = asyncio.ensure_future(host.accept(timeout=5))
        guest_link = await guest.connect(host.address, timeout=5)
        host_link = await accepting
        assert isinstance(guest_link, GattLink) and isinstance(host_link, GattLink)
        pairs.append((guest_link, host_link))
    return pairs


def u16(value: int) -> bytes:
    """A 16-bit ATT field (a handle, an offset), little-endian (Core 5.4 Vol 3 Part F §3.3)."""
    return value.to_bytes(2, "little")


def record_att_responses(guest_link: BleLink, sink: Callable[[bytes], object]) -> None:
    """Hand ``sink`` every ATT PDU from the host's server to the guest that answers a request
    (odd opcodes other than notifications and indications), raw as it arrives, before either
    bumble or pairkit reads it."""
    from bumble import att

    manager = guest_link.connection.device.l2cap_channel_manager
    then = manager.fixed_channels[att.ATT_CID]

    def on_att_pdu(connection_handle: int, pdu: bytes) -> None:
        if pdu and pdu[0] & 1 and pdu[0] not in (0x1B, 0x1D):
            sink(bytes(pdu))
        then(connection_handle, pdu)

    manager.register_fixed_channel(att.ATT_CID, on_att_pdu)


def on_air(radio: VirtualRadio) -> list[bytes]:
    """Every L2CAP PDU the radio carries from now on (header included)."""
    seen: list[bytes] = []
    link = radio.link
    original = link.send_acl_data

    def keep(sender: Any, destination: Any, transport: Any, data: bytes) -> None:
        seen.append(bytes(data))
        original(sender, destination, transport, data)

    link.send_acl_data = keep  # type: ignore[method-assign]
    return seen


async def paired_then_private(world: World, host_ks: Keystore, guest_ks: Keystore) -> HostRun:
    """``guest_ks`` pairs by PIN with ``host_ks``'s host while it is visible; then the host's
    window closes: a private host from now on, which ``guest_ks`` knows."""
    host = await world.start_host(host_ks, visible=60.0)
    await world.join(reopen(guest_ks), await world.device(), host, method=Method.PIN)
    await host.presence.open_window(0)
    assert not host.presence.visible
    return host


async def comes_back(
    world: World, guest_ks: Keystore, host: HostRun, host_ks: Keystore
) -> Method:
    """``guest_ks`` comes back to ``host`` (``host_ks``'s) on a new link (resume, or kk when it
    holds no prekey of the host's); the method the session ran."""
    session, _ = await world.join(reopen(guest_ks), await world.device(), host,
                                  method=Method.RESUME, target=host_ks.name,
                                  address=host.address)
    return session.method


def without_prekeys(guest_ks: Keystore, host_ks: Keystore) -> None:
    """``guest_ks`` has used up every prekey of ``host_ks``'s it held (its next come-back
    runs kk)."""
    ks = reopen(guest_ks)
    record = ks.peer_by_id(host_ks.device_id)
    assert record is not None and record.their_prekeys
    ks.add_peer(dataclasses.replace(record, their_prekeys=()))
    ks.save()
