"""The async roles behind ``pairkit group``: the controller, the relay and the member.

The rules (envelopes, broadcasts, replay windows, membership bookkeeping) are sans-I/O in
:mod:`pairing.groups`; this module moves them over pairkit secure links and radios.

* Hop by hop, every delivery runs over a pairkit secure channel between known peers: the side
  that delivers connects and runs ``resume`` (:func:`with_peer`), the side that is reached
  accepts with :func:`serve` and hands each session to :class:`GroupService`.  Both are thin
  loops over :func:`pairkit.driver.drive`, :class:`~pairing.methods.GuestPairing` /
  :class:`~pairing.methods.HostPairing` and :class:`~pairkit.securelink.SecureLink`, as
  :mod:`cli.flows` is, without its cloud step and prompts: only a device paired before can
  open a session, so there is nobody to ask, and a peer that does not answer is simply tried
  again later (never searched for).
* The **controller** keeps its groups in its keystore (setting ``groups.controller``), a key
  per group and epoch inside the keystore, and pushes envelopes to each member: directly, or in
  a :class:`~pairing.groups.Forward` to the member's relay.  A member it cannot reach stays
  *pending* and gets the current epoch the next time the controller reaches it (``add``,
  ``remove`` and ``sync`` all retry pending members first).
* A **relay** stores what it is given (setting ``groups.relay``, one envelope per member and
  group, the newest epoch) and delivers it to the member, retrying until the member is reached.
  It can neither open nor forge an envelope.
* A **member** accepts envelopes over the secure channel (checked by
  :func:`pairing.groups.open_group_envelope`; the key goes straight into its keystore) and
  listens for group broadcasts on every radio it has (:class:`~pairing.groups.GroupReceiver`).
* Anyone holding a group's key may **broadcast** a command (:func:`broadcast`): one
  advertisement, legacy size when it fits (it never does: 41 bytes of overhead against 10 bytes
  of room), extended otherwise.

Every keystore change is made under :meth:`~pairing.keystore.Keystore.update` (reloaded under a
file lock, then saved): these roles run as separate processes, and a ``group send`` may run on a
device whose ``group listen`` is running.
"""


from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LinkClosedError,
    NotFoundError,
    PairingError,
    ProtocolError,
    ReplayError,
    TooLargeError,
)
from pairkit.pairing.groups import (
    ADVERT_OVERHEAD,
    DeliveryResult,
    Forward,
    ForwardReceipt,
    GroupEnvelope,
    GroupMember,
    GroupMessage,
    GroupReceiver,
    GroupRecord,
    HeldGroup,
    KeyDelivery,
    KeyReceipt,
    RelayQueue,
    WrongEpochError,
    check_group_name,
    is_group_advert,
    open_group_envelope,
    seal_broadcast,
    seal_group_envelope,
    sender_id,
)
from pairkit.pairing.keystore import Keystore, Peer
from pairkit.pairing.methods import GuestPairing, HostPairing, HostState, PairingConfig, Session
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.pairing.service import Bye
from pairkit.securelink import SecureLink, confirm

from . import store

SETTING_CONTROLLER = "groups.controller"
SETTING_HELD = "groups.member"
SETTING_PINS = "groups.pins"
SETTING_SEQ = "groups.seq"
SETTING_WINDOWS = "groups.windows"
SETTING_RELAY = "groups.relay"

#: the pairing methods of a group session: known peers only (resume, and its Noise KK fallback)
GROUP_METHODS = frozenset({Method.RESUME})

Event = dict[str, Any]
EventSink = Callable[[Event], None]


def _ignore(_event: Event) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# What the keystore holds (read from memory; every change under ks.update())


def controller_groups(ks: Keystore) -> dict[str, GroupRecord]:
    """The groups this device controls."""
    stored = ks.setting(SETTING_CONTROLLER, {}) or {}
    return {name: GroupRecord.from_plain(name, data) for name, data in stored.items()}


def _put_record(ks: Keystore, record: GroupRecord) -> None:
    """Record ``record`` in memory (call inside ``ks.update()``)."""
    stored = {name: dict(data) for name, data in (ks.setting(SETTING_CONTROLLER, {}) or {}).items()}
    stored[record.name] = record.to_plain()
    ks.set_setting(SETTING_CONTROLLER, stored)


def controlled(ks: Keystore, name: str) -> GroupRecord:
    """The group ``name`` this device controls, or :class:`NotFoundError`."""
    record = controller_groups(ks).get(check_group_name(name))
    if record is None:
        raise NotFoundError(
            f"this device controls no group {name!r}; create it with 'pairkit group create'"
        )
    return record


def held_groups(ks: Keystore) -> dict[str, HeldGroup]:
    """The groups whose key this device holds as a member."""
    stored = ks.setting(SETTING_HELD, {}) or {}
    return {name: HeldGroup.from_plain(name, data) for name, data in stored.items()}


def _put_held(ks: Keystore, held: HeldGroup) -> None:
    stored = {name: dict(data) for name, data in (ks.setting(SETTING_HELD, {}) or {}).items()}
    stored[held.name] = held.to_plain()
    ks.set_setting(SETTING_HELD, stored)


def pin_controller(ks: Keystore, group: str, controller_id: str) -> None:
    """Accept ``group``'s keys only from ``controller_id`` (before the first one arrives)."""
    with ks.update():
        pins = dict(ks.setting(SETTING_PINS, {}) or {})
        pins[check_group_name(group)] = controller_id
        ks.set_setting(SETTING_PINS, pins)


def current_epoch(ks: Keystore, group: str) -> int:
    """The epoch this device would broadcast ``group`` under (controller or member)."""
    record = controller_groups(ks).get(group)
    if record is not None:
        return record.epoch
    held = held_groups(ks).get(group)
    if held is None:
        raise NotFoundError(f"this device holds no key for group {group!r}")
    return held.epoch


def relay_queue(ks: Keystore) -> RelayQueue:
    return RelayQueue.from_plain(ks.setting(SETTING_RELAY, ()) or ())


def _usable_peer(ks: Keystore, name_or_id: str, what: str) -> Peer:
    peer = ks.get_peer(name_or_id)
    if not peer.authenticated:
        raise ConfigError(
            f"{peer.name} was paired without authentication; pair it again by pin, qr or "
            f"compare before making it a {what}"
        )
    if peer.signing_public is None:
        raise ConfigError(f"no signing key is known for {peer.name}; pair with it again")
    return peer


def _controller_key(ks: Keystore) -> Callable[[bytes], bytes | None]:
    def lookup(device_id: bytes) -> bytes | None:
        try:
            peer = ks.get_peer(device_id.hex())
        except NotFoundError:
            return None
        return peer.signing_public if peer.authenticated else None

    return lookup


def peer_name(ks: Keystore, device_id: bytes | str) -> str:
    """A readable name for a device id (or its 8-byte prefix)."""
    hexid = device_id.hex() if isinstance(device_id, bytes) else device_id
    if ks.device_id.startswith(hexid):
        return ks.name
    for p in ks.peers():
        if p.id.startswith(hexid):
            return p.name
    return hexid[:16]


# ---------------------------------------------------------------------------------------------
# Secure sessions between known peers


class _Quiet:
    """The delegate of a group session: resume between known peers asks nobody anything."""

    async def on_warning(self, event: Any) -> None:
        return None

    async def on_event(self, event: Any) -> None:
        return None


@dataclasses.dataclass
class Reach:
    """How this device opens secure links to known peers.

    In one process (demo, tests) ``transport_obj`` is an open transport and ``address_of`` maps
    a device id to its address on it; ``spec`` names that transport.  From the command line all
    are ``None``: each peer is reached where the keystore last saw it (``pairkit join`` stores
    that), unless the caller says otherwise.
    """

    transport_obj: Any = None
    spec: str | None = None
    address_of: Callable[[str], str | None] | None = None
    connect_timeout: float = 10.0
    step_timeout: float = 15.0
    #: transports this process has open already, by name: a peer last seen through one of them
    #: is reached through it (a radio serves one host stack at a time)
    open: Mapping[str, Any] = dataclasses.field(default_factory=dict)


SessionWork = Callable[[SecureLink], Awaitable[Any]]


async def with_peer(
    ks: Keystore,
    reach: Reach,
    device_id: str,
    work: SessionWork,
    *,
    transport: str | None = None,
    address: str | None = None,
) -> Any:
    """Connect to the known peer ``device_id``, open a secure session by ``resume`` (Noise KK
    when no prekey is left), run ``work`` on it and return what it returned.

    The session is confirmed (both sides sent "ready") and the peer's prekeys and address are
    stored before ``work`` runs.  :class:`NotFoundError` if the peer is not known or nowhere to
    be reached; a peer that does not answer raises the transport's error (it is not searched
    for: the caller tries again later).
    """
    from pairkit.transports.registry import open_transport

    peer = store.find_peer(ks, device_id)
    if peer is None:
        raise NotFoundError(f"no known peer {device_id!r}; pair with it first")
    stored_spec, stored_address = store.peer_contact(ks, peer)
    spec = transport or reach.spec or stored_spec
    if not spec:
        raise NotFoundError(f"no address is known for {peer.name}; give --transport")
    if address is None and reach.address_of is not None:
        address = reach.address_of(peer.device_id.hex())
    if address is None and not spec.startswith(("tcp:", "loopback")):
        address = stored_address
    config = PairingConfig(methods=GROUP_METHODS, caps=ALL_CAPS, step_timeout=reach.step_timeout)
    me = store.local_identity(ks)
    existing = reach.transport_obj if reach.transport_obj is not None else reach.open.get(spec)
    opened = existing is None
    link_transport = await open_transport(spec) if opened else existing
    try:
        link = await link_transport.connect(address, timeout=reach.connect_timeout)
        try:
            loop = asyncio.get_running_loop()
            machine = GuestPairing(
                config, me, method=Method.RESUME, link_encrypted=bool(link.encrypted),
                peer=peer, wall_now=time.time(),
            )
            machine.start(loop.time())
            pipe = MessagePipe(link, guest=True)
            await drive(machine, pipe, delegate=_Quiet())
            session = machine.session
            assert session is not None
            if machine.stale_prekey is not None:
                store.drop_their_prekey(ks, peer.device_id, machine.stale_prekey)
            slink = SecureLink(link, session, timeout=reach.step_timeout)
            await confirm(slink, transcript=pipe.transcript(), first=False)
            store.save_session(
                ks, session, transport=spec,
                address=spec if spec.startswith("tcp:") else str(link.peer),
            )
            result = await work(slink)
            with contextlib.suppress(PairingError, OSError):
                await slink.send(Bye().encode())
            await slink.close()
            return result
        finally:
            with contextlib.suppress(Exception):
                await link.close()
    finally:
        if opened:
            with contextlib.suppress(Exception):
                await link_transport.close()


Handler = Callable[[SecureLink, Session], Awaitable[None]]


async def serve(
    ks: Keystore,
    spec: str,
    handler: Handler,
    *,
    transport_obj: Any,
    ready: Callable[[str], None] | None = None,
    timeout: float = 15.0,
    concurrent: int = 4,
    on_error: Callable[[str], None] | None = None,
) -> None:
    """Accept secure sessions from known peers on one transport and hand each to ``handler``,
    until cancelled.  On a radio the device broadcasts a private hello (cli/presence.py) so that
    peers can connect; strangers cannot open a session (``resume`` needs a known peer).  A peer
    that fails or misbehaves is reported to ``on_error`` and never stops the loop."""
    from .presence import Presence

    config = PairingConfig(methods=GROUP_METHODS, caps=ALL_CAPS, step_timeout=timeout)
    state = HostState(
        known_peer=lambda device_id: store.known_peer(ks, device_id),
        consume_prekey=lambda device_id, digest: store.consume_our_prekey(ks, device_id, digest),
    )
    listener = await transport_obj.listen() if hasattr(transport_obj, "listen") else transport_obj
    presence = Presence(transport_obj, ks, GROUP_METHODS, visible_for=None)
    await presence.start()
    address = str(getattr(listener, "address", None) or getattr(transport_obj, "address", spec))
    if ready is not None:
        ready(address)
    slots = asyncio.Semaphore(concurrent)
    tasks: set[asyncio.Task[None]] = set()

    async def one(link: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            machine = HostPairing(config, store.local_identity(ks), state,
                                  link_encrypted=bool(link.encrypted), wall_now=time.time())
            machine.start(loop.time())
            pipe = MessagePipe(link, guest=False)
            await drive(machine, pipe, delegate=_Quiet())
            session = machine.session
            assert session is not None
            slink = SecureLink(link, session, timeout=timeout)
            await confirm(slink, transcript=pipe.transcript(), first=True)
            store.save_session(ks, session, address=str(link.peer), transport=spec)
            await handler(slink, session)
            await slink.close()
        except PairingError as exc:
            if on_error is not None:
                on_error(f"{link.peer}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await link.close()
            slots.release()

    try:
        while True:
            await slots.acquire()
            try:
                link = await listener.accept()
            except LinkClosedError:
                raise
            except PairingError as exc:
                slots.release()
                if on_error is not None:
                    on_error(str(exc))
                continue
            task = asyncio.create_task(one(link))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await presence.stop()
        if listener is not transport_obj:
            with contextlib.suppress(Exception):
                await listener.close()


async def _send_envelopes(
    slink: SecureLink, envelopes: tuple[GroupEnvelope, ...], timeout: float
) -> tuple[DeliveryResult, ...]:
    await slink.send(KeyDelivery(envelopes).encode())
    receipt = wire.decode(await slink.recv(timeout), KeyReceipt)
    if len(receipt.results) != len(envelopes):
        raise ProtocolError("the member answered for a different number of envelopes")
    return receipt.results


async def _send_forward(
    slink: SecureLink, envelopes: tuple[GroupEnvelope, ...], timeout: float
) -> tuple[DeliveryResult, ...]:
    await slink.send(Forward(envelopes).encode())
    receipt = wire.decode(await slink.recv(timeout), ForwardReceipt)
    if len(receipt.results) != len(envelopes):
        raise ProtocolError("the relay answered for a different number of envelopes")
    return receipt.results


# ---------------------------------------------------------------------------------------------
# The controller


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one member's envelope."""

    member: str  #: device id
    name: str
    epoch: int
    via: str | None  #: the relay's name
    ok: bool
    status: str  #: "delivered", "queued at RELAY", or why not

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def create_group(ks: Keystore, name: str) -> GroupRecord:
    """Start controlling ``name`` at epoch 1 with a fresh key (kept inside the keystore)."""
    check_group_name(name)
    with ks.update():
        if name in controller_groups(ks):
            raise ConfigError(f"this device already controls a group {name!r}")
        if name in held_groups(ks):
            raise ConfigError(f"this device is a member of another controller's group {name!r}")
        record = GroupRecord(name)
        ks.forget_group(name)
        ks.new_group_key(name, record.epoch)
        _put_record(ks, record)
    return record


async def add_member(
    ks: Keystore,
    name: str,
    peer: str,
    *,
    via: str | None = None,
    transport: str | None = None,
    address: str | None = None,
    reach: Reach | None = None,
) -> tuple[GroupRecord, list[Outcome]]:
    """Add the known peer ``peer`` to ``name`` and deliver the current key to it (through the
    relay ``via`` if given), with any other pending member.  A member that cannot be reached
    stays pending.  ``transport`` and ``address`` say where to reach the first hop (the member,
    or its relay) when not where the keystore last saw it."""
    with ks.update():
        record = controlled(ks, name)
        member = _usable_peer(ks, peer, "group member")
        relay = _usable_peer(ks, via, "relay") if via is not None else None
        if relay is not None and relay.id == member.id:
            raise ConfigError("a member cannot be its own relay")
        record = record.with_member(GroupMember(
            member.id, member.name, relay.id if relay else None, transport, address,
        ))
        _put_record(ks, record)
    return await deliver_pending(ks, name, reach=reach)


async def remove_member(
    ks: Keystore, name: str, peer: str, *, reach: Reach | None = None
) -> tuple[GroupRecord, list[Outcome]]:
    """Remove ``peer`` from ``name``, start a new epoch with a new key and deliver it to every
    remaining member.  Older keys are forgotten: the removed member cannot read what follows."""
    with ks.update():
        record = controlled(ks, name)
        record = record.without_member(_find_member(ks, record, peer))
        _new_epoch(ks, record)
    return await deliver_pending(ks, name, reach=reach)


async def rekey_group(
    ks: Keystore, name: str, *, reach: Reach | None = None
) -> tuple[GroupRecord, list[Outcome]]:
    """Start a new epoch of ``name`` with a new key, same members, and deliver it."""
    with ks.update():
        _new_epoch(ks, controlled(ks, name).rekeyed())
    return await deliver_pending(ks, name, reach=reach)


def _new_epoch(ks: Keystore, record: GroupRecord) -> None:
    ks.new_group_key(record.name, record.epoch)
    for old in ks.group_epochs(record.name):
        if old < record.epoch:
            ks.forget_group(record.name, old)
    _put_record(ks, record)


def _find_member(ks: Keystore, record: GroupRecord, peer: str) -> str:
    for m in record.members:
        if peer in (m.device_id, m.name) or (len(peer) >= 4 and m.device_id.startswith(peer)):
            return m.device_id
    raise NotFoundError(f"{peer!r} is not a member of {record.name}")


def _mark_delivered(ks: Keystore, name: str, members: Iterable[str], epoch: int) -> None:
    with ks.update():
        record = controlled(ks, name)
        for device_id in members:
            if record.member(device_id) is not None:
                record = record.delivered_to(device_id, epoch)
        _put_record(ks, record)


async def deliver_pending(
    ks: Keystore, name: str, *, reach: Reach | None = None
) -> tuple[GroupRecord, list[Outcome]]:
    """Deliver the current epoch to every member that does not have it yet: one secure link per
    direct member, one per relay for all the members behind it."""
    reach = reach or Reach()
    record = controlled(ks, name)
    epoch = record.epoch
    outcomes: list[Outcome] = []
    by_relay: dict[str, list[GroupMember]] = {}
    for m in record.pending():
        if m.via is not None:
            by_relay.setdefault(m.via, []).append(m)

    def seal(m: GroupMember) -> GroupEnvelope:
        peer = _usable_peer(ks, m.device_id, "group member")
        return seal_group_envelope(ks, group=name, epoch=epoch, member_public=peer.static_public)

    for m in record.pending():
        if m.via is not None:
            continue
        try:
            env = seal(m)
            (result,) = await with_peer(
                ks, reach, m.device_id,
                lambda s, env=env: _send_envelopes(s, (env,), reach.step_timeout),
                transport=m.transport, address=m.address,
            )
        except PairingError as exc:
            outcomes.append(Outcome(m.device_id, m.name, epoch, None, False,
                                    f"unreachable: {exc}"))
            continue
        if result.ok:
            _mark_delivered(ks, name, [m.device_id], epoch)
            outcomes.append(Outcome(m.device_id, m.name, epoch, None, True, "delivered"))
        else:
            outcomes.append(Outcome(m.device_id, m.name, epoch, None, False,
                                    f"refused: {result.reason}"))
    for relay_id, members in by_relay.items():
        relay_name = peer_name(ks, relay_id)
        first = members[0]
        try:
            envelopes = tuple(seal(m) for m in members)
            results = await with_peer(
                ks, reach, relay_id,
                lambda s, e=envelopes: _send_forward(s, e, reach.step_timeout),
                transport=first.transport, address=first.address,
            )
        except PairingError as exc:
            for m in members:
                outcomes.append(Outcome(m.device_id, m.name, epoch, relay_name, False,
                                        f"relay unreachable: {exc}"))
            continue
        taken = []
        for m, result in zip(members, results, strict=True):
            if result.ok:
                taken.append(m.device_id)
                outcomes.append(Outcome(m.device_id, m.name, epoch, relay_name, True,
                                        f"queued at {relay_name}"))
            else:
                outcomes.append(Outcome(m.device_id, m.name, epoch, relay_name, False,
                                        f"refused by {relay_name}: {result.reason}"))
        _mark_delivered(ks, name, taken, epoch)
    return controlled(ks, name), outcomes


# ---------------------------------------------------------------------------------------------
# Broadcasts


def next_seq(ks: Keystore, group: str, epoch: int) -> int:
    """The next sequence number this device sends ``group`` at ``epoch``, stored before use
    so that a crash never reuses one."""
    with ks.update():
        stored = {k: list(v) for k, v in (ks.setting(SETTING_SEQ, {}) or {}).items()}
        last_epoch, last = stored.get(group, [epoch, 0])
        seq = last + 1 if last_epoch == epoch else 1
        stored[group] = [epoch, seq]
        ks.set_setting(SETTING_SEQ, stored)
    return seq


def advert_for(
    ks: Keystore, group: str, command: bytes, *, max_payload: int | None,
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, int, int]:
    """A sealed broadcast of ``command`` to ``group``; (payload, epoch, seq)."""
    epoch = current_epoch(ks, group)
    if max_payload is not None and ADVERT_OVERHEAD + len(command) > max_payload:
        raise TooLargeError(
            f"the command is {len(command)} bytes; this radio carries "
            f"{max(0, max_payload - ADVERT_OVERHEAD)} bytes of command in one advertisement"
        )
    seq = next_seq(ks, group, epoch)
    payload = seal_broadcast(
        ks, group=group, epoch=epoch, sender=sender_id(ks.device_id), seq=seq, command=command,
        rng=rng, max_payload=max_payload,
    )
    return payload, epoch, seq


async def broadcast(
    ks: Keystore, transport: Any, group: str, command: bytes, *, duration: float,
    rng: Callable[[int], bytes] = os.urandom,
) -> dict[str, Any]:
    """Advertise one encrypted command to ``group`` on ``transport`` for ``duration`` s."""
    if not hasattr(transport, "start_advertising"):
        raise ConfigError("this transport cannot broadcast; use a BLE radio (bumble:...)")
    max_payload = getattr(transport, "max_payload", None)
    payload, epoch, seq = advert_for(ks, group, command, max_payload=max_payload, rng=rng)
    await transport.start_advertising(payload)
    try:
        await asyncio.sleep(duration)
    finally:
        with contextlib.suppress(PairingError, OSError):
            await transport.stop_advertising()
    return {
        "ok": True, "group": group, "epoch": epoch, "seq": seq, "bytes": len(payload),
        "overhead": ADVERT_OVERHEAD, "extended": len(payload) > _legacy_payload_max(),
    }


def _legacy_payload_max() -> int:
    from pairkit.transports.ble.adv import LEGACY_PAYLOAD_MAX

    return LEGACY_PAYLOAD_MAX


def needs_extended(command: bytes) -> bool:
    """Whether a broadcast of ``command`` needs extended advertising (it always does: see the
    module docstring)."""
    return ADVERT_OVERHEAD + len(command) > _legacy_payload_max()


# ---------------------------------------------------------------------------------------------
# The reached side: member and relay


class GroupService:
    """What a member or a relay does with each secure session it accepts (see :func:`serve`)."""

    def __init__(
        self,
        ks: Keystore,
        *,
        member: bool = True,
        relay: Relay | None = None,
        on_event: EventSink = _ignore,
        on_key: Callable[[HeldGroup], None] | None = None,
        idle: float = 60.0,
    ) -> None:
        self.ks = ks
        self.member = member
        self.relay = relay
        self.on_event = on_event
        self.on_key = on_key
        self.idle = idle

    async def __call__(self, slink: SecureLink, session: Session) -> None:
        who = session.peer.name
        while True:
            try:
                raw = await slink.recv(self.idle)
            except LinkClosedError:
                return
            msg = wire.decode(raw, (KeyDelivery, Forward, Bye))
            if isinstance(msg, Bye):
                return
            if isinstance(msg, KeyDelivery):
                await slink.send(KeyReceipt(self._take_all(msg.envelopes, who)).encode())
            elif self.relay is None:
                no = tuple(DeliveryResult(e.group, e.epoch, False, "this device is not a relay")
                           for e in msg.envelopes)
                await slink.send(ForwardReceipt(no, 0).encode())
            else:
                await slink.send(self.relay.take(msg.envelopes, who).encode())

    def _take_all(self, envelopes: Iterable[GroupEnvelope], who: str) -> tuple[DeliveryResult, ...]:
        results = []
        taken: list[HeldGroup] = []
        with self.ks.update():
            for env in envelopes:
                try:
                    if not self.member:
                        raise AuthenticationError("this device takes no group keys")
                    held = take_envelope(self.ks, env)
                except (AuthenticationError, ReplayError, ConfigError, DecodeError) as exc:
                    self.on_event({"event": "key-refused", "group": env.group,
                                   "epoch": env.epoch, "from": who, "reason": str(exc)})
                    results.append(DeliveryResult(env.group, env.epoch, False, str(exc)[:200]))
                    continue
                taken.append(held)
                results.append(DeliveryResult(env.group, env.epoch, True))
        for held in taken:  # after the save: what is announced is on disk
            self.on_event({"event": "key", "group": held.name, "epoch": held.epoch,
                           "controller": peer_name(self.ks, held.controller), "from": who})
            if self.on_key is not None:
                self.on_key(held)
        return tuple(results)


def take_envelope(ks: Keystore, env: GroupEnvelope) -> HeldGroup:
    """A member's checks of one envelope (:func:`pairing.groups.open_group_envelope`); the key
    is kept inside ``ks`` and the group recorded (call inside ``ks.update()``)."""
    if env.group in controller_groups(ks):
        raise ConfigError(f"this device controls a group called {env.group!r} itself")
    pins = ks.setting(SETTING_PINS, {}) or {}
    held = open_group_envelope(
        ks, env, controller_key=_controller_key(ks), held=held_groups(ks).get(env.group),
        pinned=pins.get(env.group),
    )
    _put_held(ks, held)
    return held


class Relay:
    """A relay's store and forward: what it holds, and its delivery rounds."""

    def __init__(
        self, ks: Keystore, *, reach: Reach | None = None, on_event: EventSink = _ignore
    ) -> None:
        self.ks = ks
        self.reach = reach or Reach()
        self.on_event = on_event
        self.kick = asyncio.Event()
        self._round = asyncio.Lock()

    @property
    def queue(self) -> RelayQueue:
        return relay_queue(self.ks)

    def take(self, envelopes: Iterable[GroupEnvelope], who: str) -> ForwardReceipt:
        """Queue what a controller forwards; an envelope for a member this relay has not
        paired with is refused (it could never be delivered)."""
        results = []
        queued = []
        with self.ks.update():
            queue = self.queue
            for env in envelopes:
                try:
                    self.ks.get_peer(env.member.hex())
                    queue = queue.add(env)
                except NotFoundError:
                    reason = (f"this relay has not paired with member {env.member.hex()[:8]}; "
                              "pair them first")
                    results.append(DeliveryResult(env.group, env.epoch, False, reason))
                    continue
                except TooLargeError as exc:
                    results.append(DeliveryResult(env.group, env.epoch, False, str(exc)))
                    continue
                queued.append(env)
                results.append(DeliveryResult(env.group, env.epoch, True))
            self.ks.set_setting(SETTING_RELAY, queue.to_plain())
        for env in queued:
            self.on_event({"event": "queued", "group": env.group, "epoch": env.epoch,
                           "member": peer_name(self.ks, env.member), "from": who,
                           "bytes": len(env.encode_bytes()),
                           "envelope": env.encode_bytes().hex()})
        self.kick.set()
        return ForwardReceipt(tuple(results), len(queue))

    async def deliver(self) -> int:
        """One delivery round: try every member something waits for; returns how many
        envelopes were handed over.  Unreachable members keep theirs for the next round."""
        handed = 0
        async with self._round:
            for member in self.queue.members():
                envelopes = self.queue.for_member(member)
                name = peer_name(self.ks, member)
                try:
                    results = await with_peer(
                        self.ks, self.reach, member.hex(),
                        lambda s, e=envelopes: _send_envelopes(s, e, self.reach.step_timeout),
                    )
                except PairingError as exc:
                    self.on_event({"event": "unreachable", "member": name, "reason": str(exc)})
                    continue
                with self.ks.update():
                    queue = self.queue
                    for env in envelopes:
                        queue = queue.without(env)
                    self.ks.set_setting(SETTING_RELAY, queue.to_plain())
                for env, result in zip(envelopes, results, strict=True):
                    handed += result.ok
                    self.on_event({"event": "forwarded" if result.ok else "dropped",
                                   "member": name, "group": env.group, "epoch": env.epoch,
                                   "reason": result.reason})
        return handed

    async def run(self, retry: float, stop: asyncio.Event | None = None) -> None:
        """Deliver when something is queued, and again every ``retry`` s while anything waits."""
        stop = stop or asyncio.Event()
        self.kick.set()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), retry)
            self.kick.clear()
            if len(self.queue):
                await self.deliver()


class Listener:
    """A member listening for its groups' broadcasts on one or more radios."""

    def __init__(
        self,
        ks: Keystore,
        *,
        groups: Iterable[str] | None = None,
        on_event: EventSink = _ignore,
        persist: bool = True,
    ) -> None:
        self.ks = ks
        self.only = set(groups) if groups is not None else None
        self.on_event = on_event
        self.persist = persist
        windows = GroupReceiver.windows_from_plain(ks.setting(SETTING_WINDOWS, ()) or ())
        epochs = {g: h.epoch for g, h in held_groups(ks).items() if self._wanted(g)}
        self.receiver = GroupReceiver(ks, epochs, windows=windows)
        self._recent: dict[tuple[str | None, bytes], None] = {}
        self.received: list[GroupMessage] = []

    def _wanted(self, group: str) -> bool:
        return self.only is None or group in self.only

    def on_key(self, held: HeldGroup) -> None:
        """A new epoch arrived (from :class:`GroupService`): listen at it."""
        if self._wanted(held.name):
            self.receiver.set_epoch(held.name, held.epoch)

    def hear(self, payload: bytes, address: str | None = None) -> GroupMessage | None:
        """One advertisement heard; returns the command if it is one for us."""
        if not is_group_advert(payload):
            return None
        seen = (address, bytes(payload))
        if seen in self._recent:
            # The same advertisement from the same advertiser: it repeats until it stops.  The
            # same bytes from another address are a replay and go to the receiver to be refused.
            return None
        self._recent[seen] = None
        if len(self._recent) > 512:
            self._recent.pop(next(iter(self._recent)))
        try:
            message = self.receiver.receive(payload)
        except (DecodeError, WrongEpochError, AuthenticationError, ReplayError) as exc:
            self.on_event({"event": "rejected", "reason": _rejection(exc), "text": str(exc),
                           "address": address})
            return None
        self.received.append(message)
        if self.persist:
            with self.ks.update():
                self.ks.set_setting(SETTING_WINDOWS, self.receiver.windows_to_plain())
        self.on_event({
            "event": "command", "group": message.group, "epoch": message.epoch,
            "sender": peer_name(self.ks, message.sender), "seq": message.seq,
            "command": _text(message.command), "address": address,
        })
        return message

    async def scan(self, transport: Any, stop: asyncio.Event, chunk: float = 30.0) -> None:
        """Hear broadcasts on ``transport`` until ``stop`` is set."""
        while not stop.is_set():
            async for sighting in transport.scan(chunk):
                self.hear(sighting.payload, sighting.address)
                if stop.is_set():
                    return


def _rejection(exc: PairingError) -> str:
    """A short name for why a broadcast was refused (for --json and the demo's tallies)."""
    if isinstance(exc, WrongEpochError):
        return "wrong-epoch"
    if isinstance(exc, ReplayError):
        return "replay"
    if isinstance(exc, AuthenticationError):
        return "not-ours-or-forged"
    return "malformed"


def _text(command: bytes) -> str:
    try:
        return command.decode("utf-8")
    except UnicodeDecodeError:
        return command.hex()


def group_status(ks: Keystore) -> dict[str, Any]:
    """What this device knows of groups, as JSON: controlled, held, and relayed."""
    queue = relay_queue(ks)
    return {
        "controls": [
            {"group": r.name, "epoch": r.epoch, "members": [
                {"id": m.device_id, "name": m.name, "via": peer_name(ks, m.via) if m.via else None,
                 "delivered": m.delivered, "pending": m.delivered < r.epoch}
                for m in r.members
            ]}
            for r in controller_groups(ks).values()
        ],
        "member_of": [
            {"group": h.name, "epoch": h.epoch, "controller": peer_name(ks, h.controller)}
            for h in held_groups(ks).values()
        ],
        "relaying": [
            {"member": peer_name(ks, e.member), "group": e.group, "epoch": e.epoch}
            for e in queue.envelopes
        ],
    }
