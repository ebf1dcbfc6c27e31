"""The async roles behind ``pairkit group``: the controller, the relay and the member.

The rules (envelopes, broadcasts, replay windows, membership bookkeeping) are sans-I/O in
:mod:`pairing.groups`; this module moves them over pairkit secure links and radios.

* Hop by hop, every delivery runs over a pairkit secure channel between known peers: the side
  that delivers connects and runs ``resume`` (:func:`with_peer`), the side that is reached
  accepts with :func:`serve` and hands each session to :class:`GroupService`.  Both run the
  one session pipeline (:mod:`pairkit.session`) without its cloud step and prompts: only a
  device paired before can open a session, so there is nobody to ask, and a peer that does not
  answer is simply tried again later (never searched for).
* The **controller** keeps its groups in its keystore (setting ``groups.controller``), a key
  per group and epoch inside the keystore, and pushes envelopes to each member: directly, or in
  a :class:`~pairing.groups.Forward` to the member's relay.  A member it cannot reach stays
  *pending* and gets the current epoch the next time the controller reaches it (``add``,
  ``remove`` and ``sync`` all retry pending members first).  A removal starts a new epoch,
  and so does an ``add`` once the current key left the controller (or it broadcast under
  it): an added member gets no key of an epoch the group may have spoken under before it
  joined.
* A **relay** stores what it is given (setting ``groups.relay``, one envelope per member and
  group, the newest epoch) and delivers it to the member, retrying until the member is reached.
  It can neither open nor forge an envelope.
* A **member** accepts envelopes over the secure channel (checked by
  :func:`pairing.groups.open_group_envelope`; the key goes straight into its keystore) and
  listens for group broadcasts on every radio it has (:class:`~pairing.groups.GroupReceiver`).
* Anyone holding a group's key may **broadcast** a command (:func:`broadcast`): one
  advertisement, legacy size when it fits (it never does: 41 bytes of overhead against 10 bytes
  of room), extended otherwise.
* **Confirmation** (issue 14, docs/protocol.md §15): a member signs a receipt for each
  envelope; a relay keeps the receipts and hands them back when the controller asks; the
  controller marks a member confirmed only on a receipt it checked, and retries the others
  with growing waits (:func:`deliver_pending`, :func:`confirm_all`) until they confirm or are
  unreachable.
* **Trust through the CA** (§16): in a group made with ``trust="ca"`` every envelope carries
  the controller's certificate (:mod:`pairkit.groupcert`), which members enrolled with the same
  key server check; members can be added by their certificate.
* A **group agent** (:class:`Agent`, §17) is a relay and member that broadcasts the commands
  its groups' controller sends it end to end (:func:`send_via_agent`).

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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from . import peers as store
from .clock import SYSTEM_CLOCK, Clock
from .driver import drive
from .files import Records
from .groupcert import own_cert, trusted_ca
from .pairing.delivery import (
    CommandSender,
    DeliveryReceiver,
    DeliverySender,
    GiveReceipts,
    QueueForward,
    ReceiptFetch,
    RunCommand,
    TakeKeys,
)
from .pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ErrorCode,
    LinkClosedError,
    NotFoundError,
    PairingError,
    ReplayError,
    TooLargeError,
)
from .pairing.groupcert import DeviceCert, check_device_cert
from .pairing.groups import (
    ADVERT_OVERHEAD,
    CA,
    CONFIRMED,
    MAX_BATCH,
    PAIRED,
    PENDING,
    TRUSTS,
    AgentCommand,
    AgentResult,
    DeliveryResult,
    ForwardReceipt,
    GroupEnvelope,
    GroupMember,
    GroupMessage,
    GroupReceipt,
    GroupReceiver,
    GroupRecord,
    HeldGroup,
    RelayQueue,
    RelayReceipts,
    RetryPolicy,
    WrongEpochError,
    check_agent_command,
    check_group_name,
    check_receipt,
    envelope_digest,
    fair_batches,
    is_group_advert,
    open_group_envelope,
    receipt_of,
    seal_broadcast,
    seal_group_envelope,
    sender_id,
    sign_agent_command,
    signed_result,
)
from .pairing.keystore import Keystore, Peer
from .pairing.methods import PairingConfig, Session
from .pairing.negotiation import ALL_CAPS, Method
from .pairing.service import Bye
from .securelink import SecureLink
from .session import GuestSide, HostSide, accept_loop, accept_session, open_session

SETTING_CONTROLLER = "groups.controller"
SETTING_HELD = "groups.member"
SETTING_PINS = "groups.pins"
SETTING_SEQ = "groups.seq"
SETTING_WINDOWS = "groups.windows"
SETTING_RELAY = "groups.relay"
SETTING_RELAY_RECEIPTS = "groups.relay.receipts"
SETTING_AGENT_SENT = "groups.agent.sent"  #: a controller's last command number per group
SETTING_AGENT_SEEN = "groups.agent.seen"  #: an agent's last command number per group

#: the pairing methods of a group session: known peers only (resume, and its kk fallback)
GROUP_METHODS = frozenset({Method.RESUME})

Event = dict[str, Any]
EventSink = Callable[[Event], None]


def _ignore(_event: Event) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# What the keystore holds (read from memory; every change under ks.update())


def _per_group(ks: Keystore, key: str) -> dict[str, Any]:
    """The setting ``key``, which holds one value per group under the group's name (empty when
    it was never set)."""
    return dict(ks.setting(key, {}) or {})


def _put_per_group(ks: Keystore, key: str, group: str, value: Any) -> None:
    """Store ``value`` for ``group`` in the setting ``key`` (call inside ``ks.update()``)."""
    stored = _per_group(ks, key)
    stored[group] = value
    ks.set_setting(key, stored)


def controller_groups(ks: Keystore) -> dict[str, GroupRecord]:
    """The groups this device controls."""
    stored = _per_group(ks, SETTING_CONTROLLER)
    return {name: GroupRecord.from_plain(name, data) for name, data in stored.items()}


def _put_record(ks: Keystore, record: GroupRecord) -> None:
    """Record ``record`` in memory (call inside ``ks.update()``)."""
    _put_per_group(ks, SETTING_CONTROLLER, record.name, record.to_plain())


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
    stored = _per_group(ks, SETTING_HELD)
    return {name: HeldGroup.from_plain(name, data) for name, data in stored.items()}


def _put_held(ks: Keystore, held: HeldGroup) -> None:
    _put_per_group(ks, SETTING_HELD, held.name, held.to_plain())


def pin_controller(ks: Keystore, group: str, controller_id: str) -> bool:
    """Accept ``group``'s keys only from ``controller_id``.  A group held already from
    another controller is dropped, its key with it: the owner's word now is who controls it
    (attack review atk19g, finding 6).  Returns whether one was dropped."""
    with ks.update():
        held = held_groups(ks).get(check_group_name(group))
        dropped = held is not None and held.controller != controller_id
        if dropped:
            _drop_held(ks, group)
        _put_per_group(ks, SETTING_PINS, group, controller_id)
    return dropped


def _drop_held(ks: Keystore, group: str) -> None:
    """Stop being a member of ``group``: its record, its keys and its replay windows go
    (call inside ``ks.update()``)."""
    stored = _per_group(ks, SETTING_HELD)
    stored.pop(group, None)
    ks.set_setting(SETTING_HELD, stored)
    ks.forget_group(group)
    windows = [w for w in ks.setting(SETTING_WINDOWS, ()) or () if w[0] != group]
    ks.set_setting(SETTING_WINDOWS, windows)


def drop_groups_of(ks: Keystore, controller_id: str) -> tuple[str, ...]:
    """Drop every group this device holds from ``controller_id`` (a peer being forgotten: its
    say over this device ends, and so does its say over what this device obeys); returns
    their names.  Call inside ``ks.update()``."""
    names = tuple(n for n, h in held_groups(ks).items() if h.controller == controller_id)
    for name in names:
        _drop_held(ks, name)
    return names


def remove_from_groups(ks: Keystore, member_id: str) -> tuple[str, ...]:
    """Take ``member_id`` (a peer being forgotten) out of every group this device controls,
    each at a new epoch with a new key that it is never sealed, as ``group remove`` does;
    the members kept get it at the next delivery round (``group sync``, ``add``, ``remove``).
    Returns the groups' names.  Call inside ``ks.update()`` (attack review atk19g, finding 7:
    a forgotten device kept the current key and its say over every member)."""
    names = []
    for name, record in controller_groups(ks).items():
        if record.member(member_id) is None:
            continue
        _new_epoch(ks, record.without_member(member_id))
        names.append(name)
    return tuple(names)


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


def relay_receipts(ks: Keystore) -> RelayReceipts:
    """The members' signed receipts this relay holds for controllers."""
    return RelayReceipts.from_plain(ks.setting(SETTING_RELAY_RECEIPTS, ()) or ())


def _usable_peer(ks: Keystore, name_or_id: str, what: str) -> Peer:
    peer = ks.get_peer(name_or_id)
    # trusted, not the raw flag: an old 'clear' record nobody vouched for counts as
    # unauthenticated here as everywhere (docs/security.md, rule 5; attack review atk15)
    if not store.trusted(peer):
        raise ConfigError(
            f"{peer.name} was paired without authentication; pair it again by pin, qr or "
            f"compare before making it a {what}"
        )
    if peer.signing_public is None:
        raise ConfigError(f"no signing key is known for {peer.name}; pair with it again")
    return peer


def _controller_key(
    ks: Keystore, env: GroupEnvelope | AgentCommand | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Callable[[bytes], bytes | None]:
    """Whose signature a member believes on an envelope: a controller it paired with
    (authenticated), or, when the envelope carries a certificate and this device enrolled
    with a key server, the key in that certificate if the CA it enrolled with issued it
    (issue 14).  A certificate that does not check is refused outright, pairing or not: a
    member enrolled with another CA refuses.  Nor is a certificate believed over the signing
    key this device paired with the controller by (docs/security.md rule 1: a known device's
    signing key is pinned; attack review atk18c, finding 5)."""

    def lookup(device_id: bytes) -> bytes | None:
        ca = trusted_ca(ks)
        if env is not None and env.cert is not None and ca is not None:
            what = "an envelope" if isinstance(env, GroupEnvelope) else "a command"
            try:
                signing = check_device_cert(env.cert, ca, now=clock.wall(),
                                            device_id=device_id).signing
            except AuthenticationError as exc:
                raise AuthenticationError(
                    f"refused {what} for group {env.group!r}: its controller's "
                    f"certificate: {exc}"
                ) from None
            known = ks.peer_by_id(device_id.hex())
            if known is not None and store.signs_otherwise(known, signing):
                raise AuthenticationError(
                    f"refused {what} for group {env.group!r}: the certificate of its "
                    f"controller {known.name} names another signing key than the one this "
                    "device paired with it by (someone may hold a copy of its device key)"
                )
            return signing
        try:
            peer = ks.get_peer(device_id.hex())
        except NotFoundError:
            return None
        return peer.signing_public if store.trusted(peer) else None

    return lookup


def _own_checked_cert(ks: Keystore, clock: Clock) -> bytes:
    """This device's certificate, checked against its own CA now (a controller in a group
    trusted through the CA sends it in every envelope)."""
    cert, ca = own_cert(ks), trusted_ca(ks)
    if cert is None or ca is None:
        raise ConfigError(
            "this device has no certificate from a key server: run 'pairkit ttp enrol "
            "--server HOST:PORT --ca ca.pem --cert' first"
        )
    try:
        check_device_cert(cert, ca, now=clock.wall(), device_id=bytes.fromhex(ks.device_id))
    except AuthenticationError as exc:
        raise ConfigError(f"this device's certificate is no longer good: {exc}; enrol "
                          "again with --cert") from None
    return cert


def _member_from_cert(
    ks: Keystore, record: GroupRecord, cert: bytes, clock: Clock
) -> DeviceCert:
    if record.trust != CA:
        raise ConfigError(
            f"group {record.name} is trusted by pairing: add members by name (a known peer), "
            "or create a group with --trust ca to add them by certificate"
        )
    ca = trusted_ca(ks)
    if ca is None:
        raise ConfigError("this device enrolled with no key server; it cannot check a "
                          "certificate")
    try:
        found = check_device_cert(cert, ca, now=clock.wall())
    except AuthenticationError as exc:
        raise AuthenticationError(f"refused the member's certificate: {exc}") from None
    _check_cert_key(ks, found.device_id.hex(), found.signing)
    return found


def _check_cert_key(ks: Keystore, device_id: str, signing: bytes) -> None:
    """Refuse a member's certificate that names another signing key than the one this
    controller paired with the device by (docs/security.md rule 1: a known device's signing
    key is pinned; the mirror of a member's check of a controller's certificate in
    :func:`_controller_key`).  The key server certifies the key of a device's first
    enrolment, which the holder of its static key alone may have made; the controller checks
    the member's receipts against the key it adds (session 19)."""
    known = ks.peer_by_id(device_id)
    if known is not None and store.signs_otherwise(known, signing):
        raise AuthenticationError(
            f"refused the member's certificate: it names {known.name} with another signing "
            "key than the one this device paired with it by (someone may hold a copy of its "
            "device key); add it by name (pairkit group add GROUP PEER) instead"
        )


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
    clock: Clock = SYSTEM_CLOCK


SessionWork = Callable[[SecureLink], Awaitable[Any]]


#: pauses before a session is asked for again of a peer that said "busy"
BUSY_PAUSES = (0.2, 0.5, 1.0)


async def with_peer(
    ks: Keystore,
    reach: Reach,
    device_id: str,
    work: SessionWork,
    *,
    transport: str | None = None,
    address: str | None = None,
) -> Any:
    """Connect to the known peer ``device_id``, open a secure session by ``resume`` (kk,
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
    side = GuestSide(
        ks, config, Method.RESUME, transport=spec, peer=peer, cloud_step=False,
        address=spec if spec.startswith("tcp:") else None, step_timeout=reach.step_timeout,
    )
    existing = reach.transport_obj if reach.transport_obj is not None else reach.open.get(spec)
    opened = existing is None
    link_transport = await open_transport(spec) if opened else existing
    try:
        for pause in (*BUSY_PAUSES, None):
            link = await link_transport.connect(address, timeout=reach.connect_timeout)
            try:
                done = await open_session(link, side, delegate=_Quiet(), clock=reach.clock)
                break
            except PairingError as exc:
                # A peer serving as many sessions as it can says "busy" before anything is
                # asked (runtime/admission.py): nothing was done, so try again in a moment.
                with contextlib.suppress(Exception):
                    await link.close()
                if exc.code != ErrorCode.BUSY or pause is None:
                    raise
            await asyncio.sleep(pause)
        try:
            result = await work(done.channel)
            with contextlib.suppress(PairingError, OSError):
                await done.channel.send(Bye().encode())
            await done.channel.close()
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
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Accept secure sessions from known peers on one transport and hand each to ``handler``,
    until cancelled.  On a radio the device broadcasts a private hello (cli/presence.py) so that
    peers can connect; strangers cannot open a session (``resume`` needs a known peer).  A peer
    has one session at a time: its newer one closes its older one.  A peer that fails or
    misbehaves is reported to ``on_error`` and never stops the loop."""
    from .presence import Presence

    config = PairingConfig(methods=GROUP_METHODS, caps=ALL_CAPS, step_timeout=timeout)
    side = HostSide.of(ks, config, transport=spec, cloud_step=False, step_timeout=timeout)
    listener = await transport_obj.listen() if hasattr(transport_obj, "listen") else transport_obj
    presence = Presence(transport_obj, ks, GROUP_METHODS, visible_for=None)
    await presence.start()
    address = str(getattr(listener, "address", None) or getattr(transport_obj, "address", spec))
    if ready is not None:
        ready(address)

    # One session per peer: a peer's newer session replaces its older one, so one known peer
    # cannot hold every place (``concurrent``) with idle sessions (attack review, finding 7).
    current: dict[bytes, SecureLink] = {}

    async def one(link: Any) -> None:
        try:
            done = await accept_session(link, side, delegate=_Quiet(), clock=clock)
            peer = done.session.peer.device_id
            older = current.get(peer)
            current[peer] = done.channel
            if older is not None:
                with contextlib.suppress(Exception):
                    await older.close()
            try:
                await handler(done.channel, done.session)
            finally:
                if current.get(peer) is done.channel:
                    del current[peer]
            await done.channel.close()
        except PairingError as exc:
            if on_error is not None:
                on_error(f"{link.peer}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await link.close()

    def accept_failed(exc: PairingError) -> None:
        if on_error is not None:
            on_error(str(exc))

    try:
        await accept_loop(listener, one, concurrent=concurrent, on_error=accept_failed)
    finally:
        await presence.stop()
        if listener is not transport_obj:
            with contextlib.suppress(Exception):
                await listener.close()


async def _send_envelopes(
    slink: SecureLink, envelopes: tuple[GroupEnvelope, ...], timeout: float
) -> tuple[DeliveryResult, ...]:
    return (await _deliver_batch(slink, envelopes, timeout, forward=False)).results


async def _send_forward(
    slink: SecureLink, envelopes: tuple[GroupEnvelope, ...], timeout: float
) -> tuple[DeliveryResult, ...]:
    return (await _deliver_batch(slink, envelopes, timeout, forward=True)).results


async def _deliver_batch(
    slink: SecureLink, envelopes: tuple[GroupEnvelope, ...], timeout: float, *, forward: bool
) -> DeliverySender:
    """One batch and its receipt (:class:`~pairing.delivery.DeliverySender`)."""
    machine = DeliverySender(envelopes, forward=forward, timeout=timeout)
    machine.start(time.monotonic())
    await drive(machine, Records(slink), clock=time.monotonic)
    return machine


# ---------------------------------------------------------------------------------------------
# The controller


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one member in one delivery round (issue 14: only a verified receipt
    confirms; a relay's "queued" is an attempt that has not confirmed yet)."""

    member: str  #: device id
    name: str
    epoch: int
    via: str | None  #: the relay's name
    ok: bool  #: the attempt went as far as it could: confirmed, or handed to the relay
    status: str  #: "confirmed", "queued at RELAY, awaiting the member's receipt", or why not
    state: str = PENDING  #: confirmed, pending or unreachable, after this attempt
    attempts: int = 0  #: attempts made at this epoch
    next_try: float | None = None  #: when the next attempt is due (Unix s), if pending

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def create_group(
    ks: Keystore, name: str, *, trust: str = PAIRED, clock: Clock = SYSTEM_CLOCK
) -> GroupRecord:
    """Start controlling ``name`` at epoch 1 with a fresh key (kept inside the keystore).

    ``trust`` says how members come to believe this controller: ``paired`` (they paired with
    it) or ``ca`` (its device certificate from the key server's CA travels in every envelope:
    this device must have enrolled with ``pairkit ttp enrol --cert``)."""
    check_group_name(name)
    if trust not in TRUSTS:
        raise ConfigError(f"--trust is one of {', '.join(TRUSTS)}, not {trust!r}")
    if trust == CA:
        _own_checked_cert(ks, clock)
    with ks.update():
        if name in controller_groups(ks):
            raise ConfigError(f"this device already controls a group {name!r}")
        if name in held_groups(ks):
            raise ConfigError(f"this device is a member of another controller's group {name!r}")
        record = GroupRecord(name, trust=trust)
        ks.forget_group(name)
        ks.new_group_key(name, record.epoch)
        _put_record(ks, record)
    return record


async def add_member(
    ks: Keystore,
    name: str,
    peer: str | None,
    *,
    via: str | None = None,
    transport: str | None = None,
    address: str | None = None,
    reach: Reach | None = None,
    policy: RetryPolicy | None = None,
    cert: bytes | None = None,
) -> tuple[GroupRecord, list[Outcome]]:
    """Add the known peer ``peer`` (or the device whose certificate is ``cert``) to ``name``:
    :func:`add_members` with one member."""
    if peer is None and cert is None:
        raise ConfigError("name the member: a known peer, or --cert FILE")
    return await add_members(
        ks, name, (peer,) if peer is not None and cert is None else (),
        certs=() if cert is None else (cert,),
        via=via, transport=transport, address=address, reach=reach, policy=policy,
    )


async def add_members(
    ks: Keystore,
    name: str,
    peers: Sequence[str] = (),
    *,
    certs: Sequence[bytes] = (),
    via: str | None = None,
    transport: str | None = None,
    address: str | None = None,
    reach: Reach | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[GroupRecord, list[Outcome]]:
    """Add the known ``peers`` (and the devices whose certificates are ``certs``) to ``name``
    (:func:`admit_members`) and make one delivery round (through the relay ``via`` if given),
    the other pending members included: when the group moved to a new epoch, every member
    is sent its key.  A member that cannot be reached stays pending."""
    admit_members(ks, name, peers, certs=certs, via=via, transport=transport, address=address,
                  clock=(reach or Reach()).clock)
    return await deliver_pending(ks, name, reach=reach, policy=policy)


def admit_members(
    ks: Keystore,
    name: str,
    peers: Sequence[str] = (),
    *,
    certs: Sequence[bytes] = (),
    via: str | None = None,
    transport: str | None = None,
    address: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> GroupRecord:
    """Record the known ``peers`` (and the devices whose certificates are ``certs``, in a
    group trusted through the CA: the controller need not have paired with them) as members
    of ``name``, reached through the relay ``via`` if given, and deliver nothing yet (the
    next round does: :func:`deliver_pending`, ``pairkit group sync``).  ``transport`` and
    ``address`` say where to reach the first hop (the members, or their relay) when not where
    the keystore last saw it.

    When the group's current key may have protected a broadcast (a member holds it, or this
    controller broadcast under it: :meth:`~pairing.groups.GroupRecord.joined`), the group
    moves to a new epoch with a new key in the same save, as ``remove`` does: the new members
    cannot read what the group said before they joined (attack review atk19g, finding 3).
    All the members admitted in one call share that one new epoch, and so do members admitted
    in several calls before the next round seals anything (members reached by different
    routes, say)."""
    with ks.update():
        record = controlled(ks, name)
        relay = _usable_peer(ks, via, "relay") if via is not None else None
        entries: list[GroupMember] = []
        for peer in peers:
            member = _usable_peer(ks, peer, "group member")
            entries.append(GroupMember(member.id, member.name, relay.id if relay else None,
                                       transport, address))
        for cert in certs:
            found = _member_from_cert(ks, record, cert, clock)
            entries.append(GroupMember(found.device_id.hex(), found.name,
                                       relay.id if relay else None, transport, address,
                                       static=found.static, signing=found.signing))
        if not entries:
            raise ConfigError("name the member: a known peer, or --cert FILE")
        for entry in entries:
            if relay is not None and relay.id == entry.device_id:
                raise ConfigError("a member cannot be its own relay")
            if entry.device_id == ks.device_id:
                raise ConfigError("a controller is not a member of its own group")
        joined = record.joined(entries, key_used=_broadcast_under(ks, record))
        if joined.epoch != record.epoch:
            _new_epoch(ks, joined)
        else:
            _put_record(ks, joined)
    return joined


def _broadcast_under(ks: Keystore, record: GroupRecord) -> bool:
    """Whether this controller broadcast ``record``'s group at its current epoch (a sequence
    number is stored before the broadcast is sealed: :func:`next_seq`)."""
    last_epoch, last = _per_group(ks, SETTING_SEQ).get(record.name, [0, 0])
    return bool(last_epoch == record.epoch and last > 0)


async def remove_member(
    ks: Keystore, name: str, peer: str, *, reach: Reach | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[GroupRecord, list[Outcome]]:
    """Remove ``peer`` from ``name``, start a new epoch with a new key and deliver it to every
    remaining member.  Older keys are forgotten: the removed member cannot read what follows."""
    with ks.update():
        record = controlled(ks, name)
        record = record.without_member(_find_member(ks, record, peer))
        _new_epoch(ks, record)
    return await deliver_pending(ks, name, reach=reach, policy=policy)


async def rekey_group(
    ks: Keystore, name: str, *, reach: Reach | None = None, policy: RetryPolicy | None = None,
) -> tuple[GroupRecord, list[Outcome]]:
    """Start a new epoch of ``name`` with a new key, same members, and deliver it."""
    with ks.update():
        _new_epoch(ks, controlled(ks, name).rekeyed())
    return await deliver_pending(ks, name, reach=reach, policy=policy)


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


def _seal_waiting(
    ks: Keystore, name: str, members: Iterable[GroupMember], clock: Clock = SYSTEM_CLOCK,
) -> tuple[dict[str, GroupEnvelope], dict[str, str]]:
    """The envelope each member must confirm: the one already waiting for it at the current
    epoch (sent again byte for byte, so that its receipt names it), else a fresh one, kept in
    the record before it is sent.  Returns (envelopes by member id, why not by member id)."""
    envelopes: dict[str, GroupEnvelope] = {}
    failed: dict[str, str] = {}
    with ks.update():
        record = controlled(ks, name)
        for m in members:
            current = record.member(m.device_id)
            if current is None:
                continue
            try:
                env = current.waiting()
                if env is None or env.epoch != record.epoch:
                    static = current.static or _usable_peer(
                        ks, m.device_id, "group member").static_public
                    env = seal_group_envelope(ks, group=name, epoch=record.epoch,
                                              member_public=static)
                    if record.trust == CA:
                        env = dataclasses.replace(env, cert=_own_checked_cert(ks, clock))
                    record = record.waiting_for(m.device_id, env.encode_bytes())
            except PairingError as exc:
                failed[m.device_id] = str(exc)
                continue
            envelopes[m.device_id] = env
        _put_record(ks, record)
    return envelopes, failed


def _settle(
    ks: Keystore, name: str, m: GroupMember, env_epoch: int, *, confirmed: bool, ok: bool,
    status: str, via: str | None, policy: RetryPolicy, now: float,
) -> Outcome:
    """Record one attempt's result for ``m`` (only while the group is still at the epoch it
    was made for) and say what it gave."""
    with ks.update():
        record = controlled(ks, name)
        if record.epoch == env_epoch and record.member(m.device_id) is not None:
            if confirmed:
                record = record.delivered_to(m.device_id, env_epoch)
            else:
                record = record.attempted(m.device_id, now, policy, status)
            _put_record(ks, record)
    after = record.member(m.device_id) or m
    state = after.state(record.epoch)
    return Outcome(
        m.device_id, m.name, env_epoch, via, ok, status, state, after.attempts,
        after.next_try if state == PENDING else None,
    )


def _member_signing(ks: Keystore, device_id: str, name: str | None = None) -> bytes:
    if name is not None:
        record = controller_groups(ks).get(name)
        m = record.member(device_id) if record is not None else None
        if m is not None and m.signing is not None:
            # from its certificate, unless this device paired with the member since by
            # another key: then no receipt of it is believed (rule 1)
            _check_cert_key(ks, device_id, m.signing)
            return m.signing
    peer = _usable_peer(ks, device_id, "group member")
    assert peer.signing_public is not None  # _usable_peer checked it
    return peer.signing_public


async def deliver_pending(
    ks: Keystore, name: str, *, reach: Reach | None = None,
    policy: RetryPolicy | None = None, due_only: bool = False,
) -> tuple[GroupRecord, list[Outcome]]:
    """One delivery round: try every pending member (``due_only``: those whose next try is
    due) not given up on, one secure link per direct member and one per relay for all the
    members behind it.  A member is confirmed only by its signed receipt, checked here
    (:func:`pairing.groups.check_receipt`); every other answer counts as an attempt, and the
    member is unreachable when ``policy``'s attempts ran out."""
    reach = reach or Reach()
    policy = policy or RetryPolicy()
    ks.follow()  # the record as another process left it: a member forgotten, a new epoch
    record = controlled(ks, name)
    now = reach.clock.wall()
    targets = record.due(now) if due_only else tuple(
        m for m in record.pending() if not m.unreachable)
    envelopes, failed = _seal_waiting(ks, name, targets, reach.clock)
    # A member taken out since (pairkit forget, group remove in another process) was not
    # sealed for: it is no target any more (attack review atk19y, finding 3).
    targets = tuple(m for m in targets if m.device_id in envelopes or m.device_id in failed)
    outcomes: list[Outcome] = []
    by_relay: dict[str, list[GroupMember]] = {}
    for m in targets:
        if m.device_id in failed:
            outcomes.append(_settle(ks, name, m, record.epoch, confirmed=False, ok=False,
                                    status=f"cannot seal: {failed[m.device_id]}", via=None,
                                    policy=policy, now=now))
        elif m.via is not None:
            by_relay.setdefault(m.via, []).append(m)
        else:
            outcomes.append(await _try_direct(ks, name, m, envelopes[m.device_id], reach,
                                              policy))
    for relay_id, members in by_relay.items():
        outcomes.extend(await _try_relay(
            ks, name, relay_id, [(m, envelopes[m.device_id]) for m in members], reach, policy,
        ))
    return controlled(ks, name), outcomes


async def _try_direct(
    ks: Keystore, name: str, m: GroupMember, env: GroupEnvelope, reach: Reach,
    policy: RetryPolicy,
) -> Outcome:
    def settle(confirmed: bool, ok: bool, status: str) -> Outcome:
        return _settle(ks, name, m, env.epoch, confirmed=confirmed, ok=ok, status=status,
                       via=None, policy=policy, now=reach.clock.wall())

    try:
        (result,) = await with_peer(
            ks, reach, m.device_id,
            lambda s: _send_envelopes(s, (env,), reach.step_timeout),
            transport=m.transport, address=m.address,
        )
    except PairingError as exc:
        return settle(False, False, f"unreachable: {exc}")
    receipt = receipt_of(env, result, env.member)
    if receipt is None:
        return settle(False, False, "the member answered without a signed receipt")
    try:
        took = check_receipt(receipt, expected=env, member_signing=_member_signing(
            ks, m.device_id, name))
    except PairingError as exc:
        return settle(False, False, str(exc))
    if took:
        return settle(True, True, "confirmed")
    return settle(False, False, f"refused by the member: {result.reason}")


async def _try_relay(
    ks: Keystore, name: str, relay_id: str, waiting: list[tuple[GroupMember, GroupEnvelope]],
    reach: Reach, policy: RetryPolicy,
) -> list[Outcome]:
    """One session with a relay: first the receipts it holds for these envelopes, checked one
    by one against the envelope each member must confirm; then the envelopes still
    unconfirmed, forwarded (again)."""
    relay_name = peer_name(ks, relay_id)
    by_digest = {envelope_digest(env): (m, env) for m, env in waiting}
    verdicts: dict[str, tuple[bool, bool, str]] = {}  # member id -> (confirmed, ok, status)

    async def work(slink: SecureLink) -> None:
        digests = list(by_digest)
        for i in range(0, len(digests), MAX_BATCH):
            for receipt in await _fetch_receipts(slink, digests[i:i + MAX_BATCH],
                                                 reach.step_timeout):
                m, env = by_digest[receipt.envelope]
                if verdicts.get(m.device_id, (False,))[0]:
                    continue
                verdicts[m.device_id] = _judge(ks, name, receipt, m, env, relay_name)
        # Forward again whatever is not confirmed by the member's own word: a bad receipt
        # settles nothing, and a refusal is the member's word at one moment (its owner may
        # have named the controller since), as a member reached directly is sent the
        # envelope again (attack review atk19g, finding 5).
        rest = [(m, env) for m, env in waiting
                if not verdicts.get(m.device_id, (False, False, ""))[0]]
        for i in range(0, len(rest), MAX_BATCH):
            batch = rest[i:i + MAX_BATCH]
            results = await _send_forward(slink, tuple(env for _, env in batch),
                                          reach.step_timeout)
            for (m, _), result in zip(batch, results, strict=True):
                before = verdicts.get(m.device_id)
                prefix = f"{before[2]}; " if before else ""
                if result.ok:
                    verdicts[m.device_id] = (False, True, f"{prefix}queued at {relay_name}, "
                                             "awaiting the member's receipt")
                else:
                    verdicts[m.device_id] = (False, False,
                                             f"{prefix}refused by {relay_name}: {result.reason}")

    failure: str | None = None
    try:
        await with_peer(ks, reach, relay_id, work, transport=waiting[0][0].transport,
                        address=waiting[0][0].address)
    except PairingError as exc:
        failure = f"relay unreachable: {exc}"
    outcomes = []
    for m, env in waiting:
        confirmed, ok, status = verdicts.get(
            m.device_id, (False, False, failure or f"{relay_name} did not answer for it"))
        outcomes.append(_settle(ks, name, m, env.epoch, confirmed=confirmed, ok=ok,
                                status=status, via=relay_name, policy=policy,
                                now=reach.clock.wall()))
    return outcomes


def _judge(
    ks: Keystore, name: str, receipt: GroupReceipt, m: GroupMember, env: GroupEnvelope,
    relay_name: str,
) -> tuple[bool, bool, str]:
    """(confirmed, ok, status) from one receipt a relay handed over: the member's signature
    decides, never the relay's word."""
    try:
        took = check_receipt(receipt, expected=env,
                             member_signing=_member_signing(ks, m.device_id, name))
    except PairingError as exc:
        return False, False, f"{relay_name} handed over a bad receipt: {exc}"
    if took:
        return True, True, f"confirmed (receipt through {relay_name})"
    return False, False, f"refused by the member: {receipt.reason}"


async def _fetch_receipts(
    slink: SecureLink, digests: list[bytes], timeout: float
) -> tuple[GroupReceipt, ...]:
    machine = ReceiptFetch(digests, timeout=timeout)
    machine.start(time.monotonic())
    await drive(machine, Records(slink), clock=time.monotonic)
    return machine.receipts


async def confirm_all(
    ks: Keystore, name: str, *, reach: Reach | None = None,
    policy: RetryPolicy | None = None, retry_unreachable: bool = False,
    on_round: Callable[[list[Outcome]], None] | None = None,
) -> tuple[GroupRecord, list[Outcome]]:
    """Deliver until every member confirmed or is unreachable (``pairkit group sync``): a
    round now, then one whenever a pending member's next try is due, each wait at most
    ``policy.cap`` seconds; bounded, since every member is tried at most ``policy.attempts``
    times per epoch.  Returns the record and each member's latest outcome."""
    reach = reach or Reach()
    policy = policy or RetryPolicy()
    if retry_unreachable:
        with ks.update():
            _put_record(ks, controlled(ks, name).try_again())
    record, outcomes = await deliver_pending(ks, name, reach=reach, policy=policy)
    latest = {o.member: o for o in outcomes}
    if on_round is not None and outcomes:
        on_round(outcomes)
    while (due := controlled(ks, name).next_due()) is not None:
        wait = min(max(0.0, due - reach.clock.wall()), policy.cap)
        await asyncio.sleep(wait)
        record, outcomes = await deliver_pending(ks, name, reach=reach, policy=policy,
                                                 due_only=True)
        latest.update((o.member, o) for o in outcomes)
        if on_round is not None and outcomes:
            on_round(outcomes)
    record = controlled(ks, name)
    return record, [latest[m.device_id] for m in record.members if m.device_id in latest]


# ---------------------------------------------------------------------------------------------
# Broadcasts


def next_seq(ks: Keystore, group: str, epoch: int) -> int:
    """The next sequence number this device sends ``group`` at ``epoch``, stored before use
    so that a crash never reuses one."""
    with ks.update():
        last_epoch, last = _per_group(ks, SETTING_SEQ).get(group, [epoch, 0])
        seq = last + 1 if last_epoch == epoch else 1
        _put_per_group(ks, SETTING_SEQ, group, [epoch, seq])
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
        agent: Agent | None = None,
    ) -> None:
        self.ks = ks
        self.member = member
        self.relay = relay
        self.agent = agent
        self.on_event = on_event
        self.on_key = on_key
        self.idle = idle

    async def __call__(self, slink: SecureLink, session: Session) -> None:
        who = session.peer.name
        machine = DeliveryReceiver(relay=self.relay is not None, idle=self.idle,
                                   agent=self.agent is not None)
        machine.start(time.monotonic())
        service = self

        class Work:
            async def take_keys(self, event: TakeKeys) -> None:
                machine.answer_batch(service._take_all(event.envelopes, who), time.monotonic())

            async def queue_forward(self, event: QueueForward) -> None:
                assert service.relay is not None
                receipt = service.relay.take(event.envelopes, who,
                                             sender=session.peer.device_id)
                machine.answer_batch(receipt.results, time.monotonic(), queued=receipt.queued)

            async def run_command(self, event: RunCommand) -> None:
                assert service.agent is not None
                result = await service.agent.run(event.command, who)
                machine.answer_command(result, time.monotonic())

            async def give_receipts(self, event: GiveReceipts) -> None:
                assert service.relay is not None
                held = service.relay.receipts_for(session.peer.device_id, event.envelopes)
                machine.answer_receipts(held, time.monotonic())

        with contextlib.suppress(LinkClosedError):  # the peer left without a Bye
            await drive(machine, Records(slink), delegate=Work(), clock=time.monotonic)

    def _take_all(self, envelopes: Iterable[GroupEnvelope], who: str) -> tuple[DeliveryResult, ...]:
        results = []
        taken: list[HeldGroup] = []
        with self.ks.update():
            for env in envelopes:
                try:
                    if not self.member:
                        raise AuthenticationError("this device takes no group keys")
                    held = take_envelope(self.ks, env)
                except (AuthenticationError, ReplayError, ConfigError, DecodeError,
                        TooLargeError) as exc:
                    self.on_event({"event": "key-refused", "group": env.group,
                                   "epoch": env.epoch, "from": who, "reason": str(exc)})
                    results.append(signed_result(self.ks, env, False, str(exc)))
                    continue
                taken.append(held)
                # The signed receipt: the controller's only proof that this device took it.
                results.append(signed_result(self.ks, env, True))
        for held in taken:  # after the save: what is announced is on disk
            self.on_event({"event": "key", "group": held.name, "epoch": held.epoch,
                           "controller": peer_name(self.ks, held.controller), "from": who})
            if self.on_key is not None:
                self.on_key(held)
        return tuple(results)


def take_envelope(
    ks: Keystore, env: GroupEnvelope, clock: Clock = SYSTEM_CLOCK
) -> HeldGroup:
    """A member's checks of one envelope (:func:`pairing.groups.open_group_envelope`); the key
    is kept inside ``ks`` and the group recorded (call inside ``ks.update()``)."""
    if env.group in controller_groups(ks):
        raise ConfigError(f"this device controls a group called {env.group!r} itself")
    pinned = _per_group(ks, SETTING_PINS).get(env.group)
    believe = _controller_key(ks, env, clock)

    def controller_key(device_id: bytes) -> bytes | None:
        _may_give_keys(ks, env, pinned)
        return believe(device_id)

    holding = held_groups(ks)
    mine = sum(h.controller == env.controller.hex() for h in holding.values())
    try:
        held = open_group_envelope(
            ks, env, controller_key=controller_key,
            held=holding.get(env.group), pinned=pinned, held_from_controller=mine,
        )
    except TooLargeError as exc:  # atk19g finding 4: what the owner can do about it
        raise TooLargeError(f"{exc}; its owner can drop some ('pairkit forget' or 'pairkit "
                            "group listen NAME --controller PEER')") from None
    _put_held(ks, held)
    return held


def _may_give_keys(ks: Keystore, env: GroupEnvelope, pinned: str | None) -> None:
    """Whether this device's owner lets the controller ``env`` names (and signs: its signature
    is checked next) give it group keys (docs/security.md rule 2, and "Group keys: a relay
    carries, it never vouches"; attack review, finding 6).  Only from

    * the controller the owner pinned for that group (``group listen NAME --controller``);
    * a peer the owner granted *member* standing (the ``granted`` side: a guest grant, ended
      or not, is not enough; what the peer granted this device is never read);
    * in a group trusted through the CA (§16), a controller whose certificate this device's
      CA issued (checked with the signature).

    Whoever carried the envelope (a relay) is never the one trusted: this reads the controller
    the envelope names.  Raises :class:`AuthenticationError` otherwise."""
    controller = env.controller.hex()
    if pinned is not None and pinned == controller:
        return
    if env.cert is not None and trusted_ca(ks) is not None:
        return
    record = ks.peer_by_id(controller)
    if record is not None and record.extra.get("granted") == "member":
        return
    raise AuthenticationError(
        f"refused an envelope for group {env.group!r}: this device's owner did not let "
        f"{peer_name(ks, env.controller)} control its groups (grant it member, or name it "
        f"with 'pairkit group listen {env.group} --controller PEER')"
    )


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

    @property
    def receipts(self) -> RelayReceipts:
        return relay_receipts(self.ks)

    def receipts_for(self, controller: bytes, envelopes: Iterable[bytes]) -> list[GroupReceipt]:
        """The members' receipts this relay holds for ``controller``'s envelopes (it hands
        over what members signed; it cannot make one)."""
        found = list(self.receipts.find(controller, envelopes))[:MAX_BATCH]
        for r in found:
            self.on_event({"event": "receipt-returned", "member": peer_name(self.ks, r.member),
                           "group": r.group, "epoch": r.epoch, "ok": r.ok})
        return found

    def take(
        self, envelopes: Iterable[GroupEnvelope], who: str, *, sender: bytes
    ) -> ForwardReceipt:
        """Queue what a controller forwards; an envelope for a member this relay has not
        paired with is refused (it could never be delivered), and so is one that names another
        controller than ``sender``, the device whose session forwarded it: any peer of the
        relay could otherwise queue, in a controller's name, an envelope of a higher epoch that
        displaces the real one, and whose refusal holds the member's receipt slot (attack
        review, finding 2)."""
        results = []
        queued = []
        with self.ks.update():
            queue = self.queue
            # a member's refusal is no reason not to try again: only a receipt that took it
            answered = {r.envelope for r in self.receipts.receipts if r.ok}
            for env in envelopes:
                if env.controller != sender:
                    results.append(DeliveryResult(
                        env.group, env.epoch, False,
                        "a relay takes envelopes only from the controller that signed them"))
                    continue
                if envelope_digest(env) in answered:
                    # Taken already, and the member's receipt is here for the controller:
                    # nothing to deliver again (it was forwarded again before it asked).
                    results.append(DeliveryResult(env.group, env.epoch, True))
                    continue
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
        answered = False
        async with self._round:
            for member in self.queue.members():
                # One batch a member a round, as much as a KeyDelivery holds, each controller's
                # in turn (atk19g), so a member holds a round for one step at most (atk19y);
                # the rest follows in the next round, at once.
                envelopes = fair_batches(self.queue.for_member(member))[0]
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
                    receipts = self.receipts
                    for env, result in zip(envelopes, results, strict=True):
                        queue = queue.without(env)
                        receipt = receipt_of(env, result, member)
                        if receipt is not None:  # kept until the controller asks for it
                            receipts = receipts.add(receipt)
                    self.ks.set_setting(SETTING_RELAY, queue.to_plain())
                    self.ks.set_setting(SETTING_RELAY_RECEIPTS, receipts.to_plain())
                for env, result in zip(envelopes, results, strict=True):
                    handed += result.ok
                    self.on_event({"event": "forwarded" if result.ok else "dropped",
                                   "member": name, "group": env.group, "epoch": env.epoch,
                                   "reason": result.reason})
                answered = True
            if answered and len(self.queue):
                self.kick.set()  # more waits for a member that answers: the next round now
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


class Agent:
    """A group agent (the oneM2M MN-CSE "broadcasting control commands"): a member of the
    groups it serves (it took their keys end to end, like any member) that broadcasts on its
    radio the commands their controller sends it end to end (:class:`AgentCommand`, signed by
    the controller), so that members out of the controller's radio range hear the agent."""

    def __init__(
        self, ks: Keystore, radio: Any, *, on_event: EventSink = _ignore,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not hasattr(radio, "start_advertising"):
            raise ConfigError("a group agent needs a radio to broadcast on (bumble:...)")
        self.ks = ks
        self.radio = radio
        self.on_event = on_event
        self.clock = clock
        self._air = asyncio.Lock()  # one advertisement at a time on one radio

    async def run(self, cmd: AgentCommand, who: str) -> AgentResult:
        """Check one command (:func:`pairing.groups.check_agent_command`) and broadcast it."""
        try:
            with self.ks.update():
                held = held_groups(self.ks).get(cmd.group)
                signing = None
                if held is not None:
                    signing = _controller_key(self.ks, cmd, self.clock)(
                        bytes.fromhex(held.controller))
                seen = _per_group(self.ks, SETTING_AGENT_SEEN)
                check_agent_command(cmd, agent=bytes.fromhex(self.ks.device_id), held=held,
                                    controller_signing=signing,
                                    last_number=int(seen.get(cmd.group, 0)))
                # kept before it is used: a crash never replays
                _put_per_group(self.ks, SETTING_AGENT_SEEN, cmd.group, cmd.number)
        except PairingError as exc:
            self.on_event({"event": "command-refused", "group": cmd.group, "from": who,
                           "number": cmd.number, "reason": str(exc)})
            return AgentResult(cmd.group, cmd.number, False, reason=str(exc)[:200])
        try:
            async with self._air:
                done = await broadcast(self.ks, self.radio, cmd.group, cmd.command,
                                       duration=cmd.air_ms / 1000)
        except PairingError as exc:
            return AgentResult(cmd.group, cmd.number, False, reason=str(exc)[:200])
        self.on_event({"event": "broadcast", "group": cmd.group, "epoch": done["epoch"],
                       "seq": done["seq"], "from": who, "command": _text(cmd.command)})
        return AgentResult(cmd.group, cmd.number, True, seq=done["seq"])


async def send_via_agent(
    ks: Keystore, name: str, agent: str, command: bytes, *, air: float = 2.0,
    reach: Reach | None = None,
) -> AgentResult:
    """Have the group agent ``agent`` (a confirmed member of ``name``, running ``pairkit
    group agent``) broadcast ``command`` to the group: sent end to end, signed by this
    controller, over a secure link to the agent."""
    reach = reach or Reach()
    record = controlled(ks, name)
    device_id = _find_member(ks, record, agent)
    m = record.member(device_id)
    assert m is not None
    if m.state(record.epoch) != CONFIRMED:
        raise ConfigError(
            f"{m.name} has not confirmed epoch {record.epoch} of {name}: it cannot broadcast "
            f"under the current key yet ('pairkit group sync {name}')"
        )
    with ks.update():
        number = int(_per_group(ks, SETTING_AGENT_SENT).get(name, 0)) + 1
        _put_per_group(ks, SETTING_AGENT_SENT, name, number)
    cert = _own_checked_cert(ks, reach.clock) if record.trust == CA else None
    cmd = sign_agent_command(
        ks, agent=bytes.fromhex(device_id), group=name, epoch=record.epoch, number=number,
        command=command, air_ms=max(1, round(air * 1000)), cert=cert,
    )

    async def work(slink: SecureLink) -> AgentResult:
        machine = CommandSender(cmd, timeout=reach.step_timeout)
        machine.start(time.monotonic())
        await drive(machine, Records(slink), clock=time.monotonic)
        assert machine.result is not None
        return machine.result

    result: AgentResult = await with_peer(ks, reach, device_id, work, transport=m.transport,
                                          address=m.address)
    return result


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
        held = {g: h for g, h in held_groups(ks).items() if self._wanted(g)}
        # each group's controller keeps a replay window of its own (atk19y, finding 6)
        self.receiver = GroupReceiver(
            ks, {g: h.epoch for g, h in held.items()}, windows=windows,
            controllers={g: sender_id(h.controller) for g, h in held.items()})
        self._recent: dict[tuple[str | None, bytes], None] = {}
        self.received: list[GroupMessage] = []

    def _wanted(self, group: str) -> bool:
        return self.only is None or group in self.only

    def on_key(self, held: HeldGroup) -> None:
        """A new epoch arrived (from :class:`GroupService`): listen at it."""
        if self._wanted(held.name):
            self.receiver.set_epoch(held.name, held.epoch,
                                    controller=sender_id(held.controller))

    def _follow(self) -> None:
        """Take what another process changed before believing a broadcast: a controller
        forgotten or replaced drops its group (attack review atk19g, finding 6), and a key
        taken by another process moves the group's epoch."""
        if not self.ks.follow():
            return
        held = held_groups(self.ks)
        controllers = self.receiver.controllers
        for group, epoch in self.receiver.epochs.items():
            now = held.get(group)
            if now is None:
                self.receiver.forget(group)
            elif now.epoch != epoch or controllers.get(group) != sender_id(now.controller):
                self.receiver.set_epoch(group, now.epoch, controller=sender_id(now.controller))

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
            self._follow()
            message = self.receiver.receive(payload)
        except (DecodeError, WrongEpochError, AuthenticationError, ReplayError,
                TooLargeError) as exc:
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
    if isinstance(exc, TooLargeError):
        return "too-many-senders"
    if isinstance(exc, AuthenticationError):
        return "not-ours-or-forged"
    return "malformed"


def _text(command: bytes) -> str:
    try:
        return command.decode("utf-8")
    except UnicodeDecodeError:
        return command.hex()


def group_status(ks: Keystore, group: str | None = None) -> dict[str, Any]:
    """What this device knows of groups, as JSON (``pairkit group status``): the groups it
    controls, each member's delivery state (``confirmed``: a verified receipt for the current
    epoch; ``pending``: attempts so far and when the next is due, Unix seconds;
    ``unreachable``: the attempts ran out), the groups it holds keys of, and what it relays
    (envelopes waiting, receipts held for controllers).  ``group`` keeps only that group."""
    if group is not None:
        check_group_name(group)
    queue = relay_queue(ks)
    receipts = relay_receipts(ks)

    def member(r: GroupRecord, m: GroupMember) -> dict[str, Any]:
        state = m.state(r.epoch)
        return {
            "id": m.device_id, "name": m.name, "via": peer_name(ks, m.via) if m.via else None,
            "state": state, "confirmed": m.delivered, "delivered": m.delivered,
            "pending": state != CONFIRMED, "attempts": m.attempts,
            "next_try": m.next_try if state == PENDING else None, "last": m.note,
        }

    controls = [r for r in controller_groups(ks).values() if group in (None, r.name)]
    held = [h for h in held_groups(ks).values() if group in (None, h.name)]
    return {
        "controls": [
            {"group": r.name, "epoch": r.epoch, "trust": r.trust,
             "members": [member(r, m) for m in r.members]}
            for r in controls
        ],
        "member_of": [
            {"group": h.name, "epoch": h.epoch, "controller": peer_name(ks, h.controller)}
            for h in held
        ],
        "relaying": [
            {"member": peer_name(ks, e.member), "group": e.group, "epoch": e.epoch}
            for e in queue.envelopes if group in (None, e.group)
        ],
        "receipts_held": [
            {"member": peer_name(ks, r.member), "controller": peer_name(ks, r.controller),
             "group": r.group, "epoch": r.epoch, "ok": r.ok}
            for r in receipts.receipts if group in (None, r.group)
        ],
    }
