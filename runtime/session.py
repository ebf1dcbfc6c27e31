"""One session pipeline for every way two pairkit devices meet (issue 12).

``pairkit host`` and ``join``, the group roles, CPNS and the Python API all open a secure session
the same way, in the order DESIGN.md gives and docs/security.md requires:

1. **the cloud step** (:class:`~pairing.cloud.CloudHost` / :class:`~pairing.cloud.CloudGuest`):
   proof of a shared cloud, or a stranger's request the host's owner answers;
2. **pairing** by the negotiated method (:mod:`pairing.methods`, or ``ttp`` through a hook),
   with everything the two sides exchanged so far bound into the key (rule 6);
3. **confirmation**: both READY records on the secure channel (:func:`~pairkit.securelink.confirm`);
4. **grants**: the host sends the guest its :class:`~pairing.service.Membership` (signed for a
   member of the host's own cloud, rule 3); the guest joins that cloud only if its person agrees;
5. **storing** the peer, each grant in its own direction (rule 2), only after all of the above.

Sessions between known peers only (group delivery) skip steps 1 and 4 (``cloud_step=False``):
``resume`` alone authenticates them and nobody is asked anything.

The person is the :class:`~pairkit.delegate.Delegate`, the time is the
:class:`~pairkit.clock.Clock`: both injected.  Nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from . import peers, prekeys
from .admission import BUSY_TEXT, Admission, AdmissionLimits, Admitted, ClaimBudget
from .clock import SYSTEM_CLOCK, Clock
from .driver import DEFAULT_ANSWER_TIME, MessagePipe, describe_failure, drive, replay_first
from .files import receive_membership
from .lockouts import KeystoreLockJournal
from .pairing.cloud import (
    CloudGuest,
    CloudHost,
    HostInfo,
    Role,
    auth_mac_from,
    retired_mac_from,
)
from .pairing.errors import (
    AuthenticationError,
    BusyError,
    ConfigError,
    ErrorCode,
    InsecureLinkError,
    LinkClosedError,
    LocalError,
    LockedOutError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    UnsupportedError,
)
from .pairing.keystore import Keystore
from .pairing.keystore.records import clean_name
from .pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    InsecureWarning,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    PinPolicy,
    Session,
)
from .pairing.methods.common import _INSECURE_TEXT
from .pairing.negotiation import NO_WAY_BACK, PROVES_A_KNOWN_KEY, Method
from .pairing.qr import QrCode
from .pairing.service import (
    CloudBehind,
    CloudRenewal,
    JoinCloud,
    Membership,
    check_membership,
    cloud_id_of,
    membership_statement,
)
from .presence import irk_for_members, is_ble_address
from .securelink import SecureLink, confirm

__all__ = [
    "Established",
    "GuestSide",
    "HostSide",
    "TtpHook",
    "accept_loop",
    "accept_session",
    "ask_host",
    "name_hosts",
    "open_session",
    "resolve_target",
]

#: the ``ttp`` method's runner: (pipe, context) -> the session agreed through the key server
TtpHook = Callable[[MessagePipe, bytes], Awaitable[Session]]


@dataclasses.dataclass
class Established:
    """A confirmed secure session, the peer stored."""

    channel: SecureLink
    session: Session
    #: what the guest is to the host (None without a cloud step)
    membership: Membership | None
    #: the pairing method that ran
    method: Method


@dataclasses.dataclass
class HostSide:
    """What a host brings to every guest it accepts."""

    keystore: Keystore
    state: HostState
    config: PairingConfig
    #: the transport's name, stored with each peer (where it was reached)
    transport: str
    step_timeout: float = 30.0
    #: False between known peers only (no cloud step, no membership; group delivery)
    cloud_step: bool = True
    #: whether a stranger may ask to join now (a visibility window is open)
    open_to_strangers: Callable[[], bool] = lambda: True
    #: method ttp, when offered: the key server's part (None: ttp is not offered)
    ttp: TtpHook | None = None
    #: how often a ttp claim no one was asked about may make this host ask its key server
    ttp_claims: ClaimBudget = dataclasses.field(default_factory=ClaimBudget)

    @classmethod
    def of(
        cls, keystore: Keystore, config: PairingConfig, *, transport: str,
        pin_policy: PinPolicy | None = None, clock: Clock = SYSTEM_CLOCK, **options: Any,
    ) -> HostSide:
        """A host side whose :class:`~pairing.methods.HostState` reads ``keystore``'s peers,
        consumes its prekeys durably (docs/security.md, rule 4), and keeps its PIN and compare
        failures in it (rule 7, "The lock outlives the host process")."""
        state = HostState(
            pin_policy=pin_policy,
            pin_journal=KeystoreLockJournal(keystore, "pin", clock),
            compare_journal=KeystoreLockJournal(keystore, "compare", clock),
            known_peer=lambda device_id: peers.known_peer(keystore, device_id),
            peer_by_prekey=lambda digest: peers.peer_by_prekey(keystore, digest),
            consume_prekey=lambda device_id, digest: peers.consume_our_prekey(
                keystore, device_id, digest
            ),
        )
        return cls(keystore, state, config, transport, **options)


@dataclasses.dataclass
class GuestSide:
    """What a guest brings to the host it joins."""

    keystore: Keystore
    config: PairingConfig
    method: Method
    #: the transport's name and the address stored with the peer
    transport: str
    address: str | None = None
    pin: str | None = None
    qr: QrCode | None = None
    #: the host, when it is a known peer (resume, kk, and proof of being that device)
    peer: KnownPeer | None = None
    #: what to ask for when the host's cloud does not know us
    wants: Role = Role.GUEST
    #: the clouds to prove membership of (None: every cloud this device is in)
    clouds: tuple[str, ...] | None = None
    #: join only a host that says it has this name (its hello response; checked again once
    #: the pairing proved the host's identity)
    expect_name: str | None = None
    step_timeout: float = 30.0
    allow_insecure: bool = False
    cloud_step: bool = True
    ttp: TtpHook | None = None


async def accept_session(
    link: Any,
    side: HostSide,
    *,
    delegate: Any,
    clock: Clock = SYSTEM_CLOCK,
    tried: list[HostPairing] | None = None,
) -> Established:
    """Run the pipeline as the host over an accepted ``link`` (see the module docstring).

    ``tried`` receives the pairing machine once it is made, so that the caller can tell which
    method a guest tried even when it failed (a QR code is single use too)."""
    ks = side.keystore
    # What another pairkit process on this device saved (a peer forgotten, a grant withdrawn,
    # a cloud left) counts from this guest on; each later lookup follows again (peers.py).
    ks.follow()
    me = peers.local_identity(ks)
    pipe = MessagePipe(link, guest=False)
    cloud: CloudHost | None = None
    known_member = False
    context = b""
    if side.cloud_step:
        # Only this device's own cloud admits members without a prompt: a cloud it joined is
        # its standing there, never a grant to that cloud's members (docs/security.md, rule 2).
        owned = tuple(c.cloud_id for c in ks.clouds() if c.role == "owner")
        cloud = CloudHost(
            clouds=owned, mac=_cloud_mac(ks), static=me.static_public,
            # A member not renewed yet proves a retired secret; it counts only for a device
            # that is a member now (checked below, once the pairing proved who it is).
            retired=tuple((c, e) for c in owned for e in ks.retired_epochs(c)),
            retired_mac=retired_mac_from(
                lambda cloud_id, epoch, info, n: ks.cloud_kdf(cloud_id, info, n, epoch=epoch)
            ),
            known_grant=lambda device_id: peers.peer_grant(ks, device_id, clock.wall()),
            open_to_strangers=side.open_to_strangers, precheck=_precheck(side, link),
            timeout=side.step_timeout,
            info=HostInfo(name=me.name, methods=side.config.methods, caps=side.config.caps),
            static_private=me.static_key(),  # opens a returning device's sealed id
        )
        cloud.start(clock.monotonic())
        await drive(cloud, pipe, delegate=delegate, clock=clock.monotonic,
                    answer_time=_answer_time(side.step_timeout))
        context = pipe.transcript()
    # The method the join request said, checked again as the pairing starts (before a code is
    # shown or a PIN played), not only once it is over (hostq doubt 3).
    said = cloud.join_method if cloud is not None else None
    expected = Method(said) if said is not None else None
    session, method = await _host_pairing(pipe, link, side, me, delegate, clock, context, tried,
                                          expected, cloud.claimed if cloud is not None else None)
    # What another process stored while the guest paired counts from here: a record of the
    # guest (atk18c), and a secret renewed by `pairkit forget` since the hint was checked (a
    # proof made with the secret it retired then fails to bind, and is checked as a retired
    # one, rather than counting as one of the current secret: docs/security.md "Renewing the
    # cloud secret").
    ks.follow()
    peers.check_signing_key(ks, session)  # a known guest signs with the key it is known by
    if cloud is not None:
        if cloud.join_method is not None and Method(cloud.join_method).base is not method.base:
            raise ProtocolError("the guest paired by another method than the one it asked with")
        if cloud.claimed is not None and cloud.claimed != session.peer.device_id:
            raise AuthenticationError("the guest claimed to be a known device but is not")
        cloud.bind(session.peer.static_public)  # its cloud proof names the key it paired with
        cloud.check_name(session.peer.name)  # the device its owner was asked about paired
        if cloud.grant is None and (cloud.role is Role.MEMBER or cloud.retired_epoch is not None):
            # Let in by its cloud proof: whether as a member this host knows now
            held = peers.peer_grant(ks, session.peer.device_id, clock.wall())
            known_member = held is not None and held.role is Role.MEMBER
            if cloud.retired_epoch is not None and not known_member:
                await _retired_proof(cloud, side, session, delegate)
            # A known member is saved like a stored grant: a `pairkit forget` of it before the
            # save below is never undone (issue 17; attack review atk16b, finding 1).  A holder
            # of the secret with no record (made a member by hand, as the demo's TV) is stored
            # as before.
    channel = SecureLink(link, session, timeout=side.step_timeout)
    await confirm(channel, transcript=pipe.transcript(), first=True)
    promote = getattr(link, "authenticated", None)
    if callable(promote):
        # admission control: a paired guest, no longer an unauthenticated link
        promote(session.peer.device_id)
    membership = None
    if cloud is not None:
        membership = _membership_for(ks, cloud, session, clock)
    # Stored before the membership is sent: the save refuses (and the guest is told nothing
    # but a closed link) when another process forgot this peer or withdrew the stored grant
    # it came back with while it paired; what that process did is never undone (issue 17).
    # Sessions that finish together share one write (group commit); this returns only once
    # the peer is stored durably, so nothing is confirmed, to the guest (its membership) or to
    # this host's user (the caller's "paired with"), before it is on disk.
    await peers.store_session(
        ks, session, address=str(link.peer), transport=side.transport,
        granted=membership.role if membership is not None else None,
        granted_expires=membership.expires if membership is not None else None,
        wall_now=clock.wall(),
        stored_grant=cloud is not None and (cloud.claimed is not None or known_member),
        gave_irk=membership is not None and membership.irk is not None,
        gave_secret=membership is not None and membership.secret is not None,
    )
    if membership is not None:
        await channel.send(membership.encode())
    return Established(channel, session, membership, method)


async def _retired_proof(
    cloud: CloudHost, side: HostSide, session: Session, delegate: Any
) -> None:
    """A guest proved this host's cloud with a *retired* secret (one renewed when a member was
    forgotten) and the proven device is not a member in the keystore now (the caller checked):
    its proof counts as no proof, and the owner is asked about it as about a stranger
    (docs/security.md "Renewing the cloud secret"; attack review atk15, finding 2).  A refusal
    raises before anything is confirmed or stored."""
    question = cloud.not_a_member(session.peer.name)
    hook = getattr(delegate, "allow_join", None)
    if hook is None:
        cloud.take_answer(None)  # nobody to ask: refused
    try:
        answer = await asyncio.wait_for(hook(question), _answer_time(side.step_timeout))
    except TimeoutError:
        raise PairingTimeout("the owner did not answer the request to join") from None
    cloud.take_answer(answer)


def _answer_time(step_timeout: float) -> float:
    """The driver's bound on a person's answer: the delegate bounds each question by the
    command's --timeout itself (cli/prompt.py); this leaves room for questions that queue
    behind another guest's, and still ends a delegate that never returns."""
    return max(DEFAULT_ANSWER_TIME, 3 * step_timeout)


def _precheck(side: HostSide, link: Any) -> Callable[[int | None, float], None]:
    """The checks that need no person, run before a joining stranger's request reaches the
    owner (issue 16): the method must be one this host allows, ``clear`` needs an encrypted
    link (or ``--allow-insecure``), and a PIN (a compare) is refused while PIN (compare)
    pairing is locked out.  The pairing that follows checks them all again."""
    # read as the request comes: a BLE guest encrypts its link before it says anything
    # (open_session), so a clear guest's link is encrypted by then or never

    def check(method: int | None, now: float) -> None:
        if method is None:
            return  # an older guest that did not say: the pairing decides
        try:
            chosen = Method(method).base
        except ValueError:
            raise UnsupportedError(
                "the guest asked for a pairing method this host does not know"
            ) from None
        if chosen is Method.RESUME and chosen not in side.config.methods:
            raise UnsupportedError(NO_WAY_BACK)  # no setting of the host's in the clear
        if chosen not in side.config.methods:
            allowed = ", ".join(sorted(m.label for m in side.config.methods))
            raise UnsupportedError(
                f"this host does not allow pairing by {chosen.label}; it allows only: {allowed}"
            )
        if chosen is Method.CLEAR and not link.encrypted and not side.config.allow_insecure:
            # the pairing would refuse it (HostPairing): its owner is not asked first (atk19d)
            raise InsecureLinkError(_INSECURE_TEXT)
        if chosen is Method.PIN:
            wait = side.state.locked_for(now)
            if wait > 0:
                raise LockedOutError(
                    f"too many wrong PINs: PIN pairing is locked for {math.ceil(wait)} more "
                    "seconds"
                )
        if chosen is Method.COMPARE:
            wait = side.state.compare_lock.locked_for(now)
            if wait > 0:
                raise LockedOutError(
                    "too many compare codes were shown and not confirmed: compare is locked "
                    f"for {math.ceil(wait)} more seconds"
                )

    return check


async def _host_pairing(
    pipe: MessagePipe, link: Any, side: HostSide, me: Any, delegate: Any, clock: Clock,
    context: bytes, tried: list[HostPairing] | None, expected: Method | None = None,
    claimed: bytes | None = None,
) -> tuple[Session, Method]:
    """The session key by the method the guest chose: ``ttp`` or one of pairing.methods.

    ``expected``: the method the join request said; ``claimed``: the device id it claimed.  A
    ``ttp`` Offer is held to both at once, as HostPairing holds the other methods' first
    message, before the key server is asked anything for the guest (attack review atk15c)."""
    if side.ttp is not None:
        from .pairing.ttp import is_ttp_offer, ttp_offer_guest

        # The guest's Offer says which machine runs it; both check the proposal against this
        # host's table (ttp is negotiated like every method: docs/security.md, rule 6).
        first = await _first_message(pipe, side.step_timeout)
        pipe = replay_first(pipe, first)
        if is_ttp_offer(first):
            if expected is not None and expected.base is not Method.TTP:
                raise ProtocolError(
                    "the guest paired by another method than the one it asked with"
                )
            if claimed is not None and ttp_offer_guest(first) != claimed:
                raise AuthenticationError("the guest claimed to be a known device but is not")
            if claimed is None:  # the owner said yes to this guest (or it proved a cloud)
                return await side.ttp(pipe, context), Method.TTP
            # A claim no one was asked about: bounded, so that a stranger repeating a known
            # guest's id cannot spend this host's allowance at the key server (ClaimBudget).
            address = str(getattr(link, "admission_key", None) or link.peer)  # as Admission
            if not side.ttp_claims.take(address):
                from .pairing import wire

                # Told as a host too busy tells it (it may try again), then refused.
                with contextlib.suppress(PairingError, OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await pipe.send(wire.Abort(code=ErrorCode.BUSY, reason=BUSY_TEXT).encode())
                raise BusyError(
                    "too many guests claimed to be known devices by ttp just now (the key "
                    "server is not asked for more); try again in a moment"
                )
            session = await side.ttp(pipe, context)
            side.ttp_claims.give_back(address, session.peer.device_id)
            return session, Method.TTP
    machine = HostPairing(
        side.config, me, side.state, link_encrypted=bool(link.encrypted),
        link_mitm=bool(getattr(link, "mitm_protected", False)), wall_now=clock.wall(),
        context=context, prekeys=prekeys.source_for(os.urandom), expected=expected,
    )
    machine.start(clock.monotonic())
    if tried is not None:
        tried.append(machine)
    await drive(machine, pipe, delegate=delegate, clock=clock.monotonic,
                answer_time=_answer_time(side.step_timeout))
    assert machine.session is not None
    return machine.session, machine.session.method


async def _first_message(pipe: MessagePipe, timeout: float) -> bytes:
    from .pairing.errors import PairingTimeout

    try:
        return await asyncio.wait_for(pipe.recv(), timeout)
    except TimeoutError:
        raise PairingTimeout("the guest did not start pairing in time") from None


def _membership_for(ks: Keystore, cloud: CloudHost, session: Session, clock: Clock) -> Membership:
    """What the guest is to this host after the cloud step (sent first on the channel).

    A member (returning by its cloud proof, or made one now) also gets this host's identity
    resolving key, so that its ``discover`` sees one device across the host's rotating
    addresses; a guest never does (docs/security.md "Recognising a host across addresses")."""
    if cloud.role is Role.MEMBER and cloud.grant is None:
        if cloud.retired_epoch is not None and cloud.cloud_id is not None:
            # A member kept, back with a secret renewed since: the current one, signed by the
            # owner as a new member's is (docs/security.md "Renewing the cloud secret").
            renewed = ks.cloud(cloud.cloud_id)
            unsigned = Membership(
                role=Role.MEMBER, cloud_id=renewed.cloud_id,
                secret=ks._cloud_secret_for_new_member(renewed.cloud_id),
                irk=irk_for_members(ks), epoch=renewed.epoch,
            )
            statement = membership_statement(unsigned, session.peer.device_id,
                                             session.fingerprint)
            return dataclasses.replace(unsigned, signature=ks.sign(statement))
        return Membership(role=Role.MEMBER, cloud_id=cloud.cloud_id, irk=irk_for_members(ks))
    grant = cloud.grant
    assert grant is not None
    if grant.role is Role.MEMBER:
        owned = next((c for c in ks.clouds() if c.role == "owner"), None)
        if owned is None:
            raise ConfigError("this host owns no cloud to make members of")
        unsigned = Membership(
            role=Role.MEMBER, cloud_id=owned.cloud_id, cloud_name=owned.name,
            secret=ks._cloud_secret_for_new_member(owned.cloud_id),
            members=peers.cloud_members(ks), irk=irk_for_members(ks),
            epoch=owned.epoch or None,  # absent for a cloud never renewed, as before
        )
        # Signed by the owner for this member and this session (docs/security.md, rule 3).
        statement = membership_statement(unsigned, session.peer.device_id, session.fingerprint)
        return dataclasses.replace(unsigned, signature=ks.sign(statement))
    # A stored grant keeps the end its owner gave (atk20c finding 1); a new one starts now.
    if grant.until is not None:
        return Membership(role=Role.GUEST, expires=grant.until)
    return Membership(role=Role.GUEST, expires=int(clock.wall() + (grant.seconds or 0)))


def _cloud_mac(ks: Keystore) -> Any:
    return auth_mac_from(lambda cloud_id, info, n: ks.cloud_kdf(cloud_id, info, n))


async def open_session(
    link: Any,
    side: GuestSide,
    *,
    delegate: Any,
    clock: Clock = SYSTEM_CLOCK,
) -> Established:
    """Run the pipeline as the guest over a connected ``link`` (see the module docstring)."""
    ks = side.keystore
    method = side.method
    if method is Method.CLEAR and not link.encrypted and hasattr(link, "encrypt"):
        # BLE: turn on LE Secure Connections first, so 'clear' runs over an encrypted link
        # (method b); over links that cannot, 'clear' is refused.
        await link.encrypt()
    if method is Method.CLEAR and not link.encrypted and side.allow_insecure:
        # Forced by the user: say so loudly (DESIGN.md 4b).
        await delegate.on_warning(InsecureWarning(
            "pairing with 'clear' over a link that is not encrypted: anyone listening gets "
            "the session key (--allow-insecure)"
        ))
    me = peers.local_identity(ks)
    if side.qr is not None:
        side.qr.check_fresh(clock.wall())
    # Built before the cloud step: a method this link cannot carry ('clear' without link
    # encryption) is refused before the host's owner is asked anything.
    machine = None if method is Method.TTP else GuestPairing(
        side.config, me, method=method, link_encrypted=bool(link.encrypted),
        link_mitm=bool(getattr(link, "mitm_protected", False)), pin=side.pin,
        qr=side.qr, peer=_unspent(ks, side.peer), wall_now=clock.wall(), rng=os.urandom,
        prekeys=prekeys.source_for(os.urandom),
    )
    # Made while the radio and the peer keep this side waiting (off the critical path).
    prekeys.pool().refill_soon()
    try:
        return await _guest_steps(link, side, me, machine, delegate=delegate, clock=clock)
    except BaseException:
        # A digest sent is spent, whatever ended the attempt (a link lost, a timeout, a FAIL,
        # Ctrl-C, an error): the next attempt, in this process or another, must not nominate
        # it again, or a listener links the two, and the host's two addresses (atk23 F2,
        # docs/security.md rule 4).  A session saved has dropped it already (save_session);
        # only a crash between the send and here leaves it in the keystore.
        if machine is not None and machine.nominated is not None and side.peer is not None:
            _spend(ks, side.peer.device_id, machine.nominated)
        raise


def _unspent(ks: Keystore, peer: KnownPeer | None) -> KnownPeer | None:
    """``peer`` without the digests an earlier attempt of this process sent from ``ks`` (a
    retry may hold ``peer`` as it was read before that attempt)."""
    spent = _SPENT.get(ks)
    if peer is None or not spent or not spent.intersection(peer.their_prekeys):
        return peer
    return dataclasses.replace(
        peer, their_prekeys=tuple(d for d in peer.their_prekeys if d not in spent)
    )


def _spend(ks: Keystore, device_id: bytes, digest: bytes) -> None:
    """Forget the host's prekey ``digest`` this device nominated, durably, after an attempt
    that ended without a saved session.  A failure to write it is not the attempt's error:
    that one goes on, and this process still never nominates it again (a later process may:
    docs/security.md, rule 4)."""
    _SPENT.setdefault(ks, set()).add(digest)
    with contextlib.suppress(PairingError, OSError):
        peers.drop_their_prekey(ks, device_id, digest)


#: the prekey digests each keystore's attempts sent in this process, whatever became of them
_SPENT: weakref.WeakKeyDictionary[Keystore, set[bytes]] = weakref.WeakKeyDictionary()


async def _guest_steps(
    link: Any, side: GuestSide, me: LocalIdentity, machine: GuestPairing | None, *,
    delegate: Any, clock: Clock,
) -> Established:
    """The guest's pipeline after its machine is built: the cloud step, the pairing, READY,
    the membership and the save (:func:`open_session`)."""
    ks = side.keystore
    method = side.method
    pipe = MessagePipe(link, guest=True)
    cloud: CloudGuest | None = None
    if side.cloud_step:
        clouds = side.clouds if side.clouds is not None else tuple(
            c.cloud_id for c in ks.clouds()
        )
        if side.peer is not None:
            # The known host's own cloud, if held, is hinted first: only the first MAX_HINTS
            # are, and a member that does not prove the cloud to its owner is sent its secret
            # as a new member, at the epoch it holds, and refuses it (atk17 finding 4).
            own = cloud_id_of(side.peer.device_id)
            clouds = (*(c for c in clouds if c == own), *(c for c in clouds if c != own))
        # This device's id, said to a host it knows, only for a method that proves it: a known
        # device pairing again by a code asks as anyone does (pairing/cloud.py, CloudHost).
        claims = side.peer is not None and method in PROVES_A_KNOWN_KEY
        cloud = CloudGuest(
            name=me.name, clouds=clouds, mac=_cloud_mac(ks), static=me.static_public,
            wants=side.wants, device_id=me.device_id if claims else None,
            host_static=side.peer.static_public if claims and side.peer is not None else None,
            timeout=side.step_timeout, answer_time=side.step_timeout, method=int(method),
            expect_name=side.expect_name,
        )
        cloud.start(clock.monotonic())
        await drive(cloud, pipe, delegate=delegate, clock=clock.monotonic,
                    answer_time=_answer_time(side.step_timeout))
    if machine is None:
        if side.ttp is None:
            raise ConfigError("method 'ttp' needs the key server: --ttp HOST:PORT --ttp-ca FILE")
        session = await side.ttp(pipe, pipe.transcript())
    else:
        if cloud is not None:
            machine.bind_context(pipe.transcript())  # the cloud step, bound into the key
        machine.start(clock.monotonic())
        await drive(machine, pipe, delegate=delegate, clock=clock.monotonic,
                answer_time=_answer_time(side.step_timeout))
        assert machine.session is not None
        session = machine.session
    ks.follow()  # a record another process stored while we paired counts (atk18c)
    peers.check_signing_key(ks, session)  # a known host signs with the key it is known by
    if cloud is not None:
        cloud.bind(session.peer.static_public)  # the host's cloud proof names its key
        cloud.check_name(session.peer.name)  # and the name it gave is the proven one's
    channel = SecureLink(link, session, timeout=side.step_timeout)
    await confirm(channel, transcript=pipe.transcript(), first=False)
    # The digest a resume nominated goes with the save below: a resume's session consumes it,
    # a kk's (after a FAIL) replaces every prekey; an attempt that ends before the save drops
    # it then (open_session).  No write of its own on the way to a session.
    membership = None
    if cloud is not None:
        membership = await receive_membership(channel)
        proven = cloud.cloud_id if cloud.role is Role.MEMBER else None
        await _take_membership(ks, membership, session, delegate, proven=proven,
                               verdict=cloud.verdict)
    address = side.address or str(link.peer)
    peers.save_session(
        ks, session, address=address, transport=side.transport,
        standing=membership.role if membership is not None else None,
        standing_expires=membership.expires if membership is not None else None,
        wall_now=clock.wall(),
        # The host's word on its address key, each time it gives a membership (a member's,
        # checked by check_membership); sessions without one keep what was stored.
        irk=membership.irk if membership is not None else peers.KEEP,
    )
    return Established(channel, session, membership, session.method)


def _check_membership_on(
    ks: Keystore, membership: Membership, session: Session, proven: str | None,
    verdict: Role | None = None,
) -> JoinCloud | CloudRenewal | CloudBehind | None:
    """:func:`check_membership` of ``membership`` on the clouds ``ks`` holds as it is now."""
    clouds = ks.clouds()
    members = [c for c in clouds if c.role == "member"]
    return check_membership(
        membership, host_id=session.peer.device_id, host_signing=session.peer.signing_public,
        me=bytes.fromhex(ks.device_id), session_fingerprint=session.fingerprint,
        held=[c.cloud_id for c in clouds], proven=proven,
        member_epochs={c.cloud_id: c.epoch for c in members},
        member_names={c.cloud_id: c.name for c in members},
        member_owners={c.cloud_id: bytes.fromhex(c.owner) for c in members
                       if c.owner is not None},
        member_owner_signing={c.cloud_id: c.owner_signing for c in members
                              if c.owner_signing is not None},
        verdict=verdict,
    )


#: seconds this device's person has to say whether to join the cloud a host made it a member of
JOIN_CLOUD_ANSWER_TIME = DEFAULT_ANSWER_TIME


async def _take_membership(
    ks: Keystore, membership: Membership, session: Session, delegate: Any,
    *, proven: str | None = None, verdict: Role | None = None,
) -> None:
    """Join the host's cloud only if it is the host's own, signed, new to this device, and this
    device's person agrees (docs/security.md, rules 2 and 3); a refusal stores nothing.

    ``proven``: the cloud this device came back to as a member by its proof; a secret is then
    only that cloud's renewal, taken without asking (rule 3's one exception).  ``verdict``:
    the role the host's JoinVerdict gave, which the Membership must give too."""
    question = _check_membership_on(ks, membership, session, proven, verdict)
    if question is None:
        return
    if isinstance(question, CloudBehind):
        # Nothing to store; this device's person is told (attack review atk18b, finding 3).
        hook = getattr(delegate, "on_event", None)
        if hook is not None:
            await hook(dataclasses.replace(question, host_name=session.peer.name))
        return
    if isinstance(question, CloudRenewal):
        assert membership.secret is not None
        with ks.update():
            # Checked again on the keystore as reloaded under the lock: a record of the host
            # another process stored since is held to here too, not only at the save after
            # (attack review atk18c, finding 4).
            peers.check_signing_key(ks, session)
            # And the renewal itself, by the same rule on the clouds as reloaded: another
            # process on this device may have left the cloud, taken a newer renewal, or joined
            # the cloud again from another owner or signing key meanwhile (renew19 finding 1).
            # Taken only if that check still gives this very renewal; else nothing is stored,
            # never undone, and the session (checked already) goes on.
            try:
                again = _check_membership_on(ks, membership, session, proven)
            except (AuthenticationError, ProtocolError):
                again = None
            if again == question:
                ks.take_renewed_cloud_secret(question.cloud_id, membership.secret,
                                             question.epoch)
        return
    question = dataclasses.replace(question, host_name=session.peer.name)
    hook = getattr(delegate, "join_cloud", None)
    if hook is None:
        return
    # A person who does not answer says no, as to every question the driver asks (attack
    # review atk20c, finding 6: this one had no deadline).
    deadline = asyncio.timeout(JOIN_CLOUD_ANSWER_TIME)
    try:
        async with deadline:
            agreed = await hook(question)
    except TimeoutError:
        if not deadline.expired():
            raise  # the delegate's own error, not our deadline
        return
    if not agreed:
        return
    assert membership.secret is not None and membership.cloud_id is not None
    with ks.update():
        peers.check_signing_key(ks, session)  # as for a renewal above
        if membership.cloud_id in {c.cloud_id for c in ks.clouds()}:
            return  # another process on this device joined it meanwhile: never overwrite
        ks.set_cloud(
            membership.cloud_id, membership.secret,
            # the host's word, signed as it came: kept one line (atk21b finding B)
            name=clean_name(membership.cloud_name, "a cloud"), role="member",
            epoch=membership.epoch or 0,
            # The owner's full id: what binds a renewal made without this device's proof;
            # and the signing key it showed, which a renewal must be signed by (rule 3).
            owner=session.peer.device_id.hex(),
            owner_signing=session.peer.signing_public,
        )


async def ask_host(link: Any, ks: Keystore, *, timeout: float = 10.0,
                   clock: Clock = SYSTEM_CLOCK,
                   clouds: tuple[str, ...] | None = None) -> HostInfo | None:
    """Ask the host at the other end of ``link`` who it is (its hello response: name,
    methods, capabilities) and leave, without asking to join; ``None`` when it does not say
    (a private host says nothing to a stranger).  The host's owner is not asked anything.
    The link is closed on return.  What the host says is a claim: see :class:`HostInfo`.

    The question hints ``clouds`` (default: every cloud of this device, the first 8), so a
    host of one of them answers as to a member, sealed (docs/protocol.md §10): a member learns
    the name of a private host of its cloud, and a listener does not."""
    me = peers.local_identity(ks)
    if clouds is None:
        clouds = tuple(c.cloud_id for c in ks.clouds())
    probe = CloudGuest(name=me.name, clouds=clouds, mac=_cloud_mac(ks), static=me.static_public,
                       timeout=timeout, probe=True)
    try:
        probe.start(clock.monotonic())
        await drive(probe, MessagePipe(link, guest=True), clock=clock.monotonic)
        return probe.host
    finally:
        with contextlib.suppress(Exception):
            await link.close()


async def name_hosts(
    transport: Any, ks: Keystore, found: list[Any], *, timeout: float = 5.0,
    clock: Clock = SYSTEM_CLOCK,
) -> list[Any]:
    """``found`` (:class:`pairkit.presence.Found`, from a scan) with the names filled in that a
    short connection gets: each host that is open to strangers, or one of this device's clouds,
    is asked who it is (:func:`ask_host`), hinting the cloud its hello tag is of, if any (a
    private host of this device's cloud answers it, sealed).  A host that does not answer keeps
    no name."""
    out = []
    for f in found:
        if f.name is None and (f.hello.visible or f.cloud is not None):
            info = None
            with contextlib.suppress(PairingError):
                link = await transport.connect(f.address, timeout=timeout)
                info = await ask_host(link, ks, timeout=timeout, clock=clock,
                                      clouds=(f.cloud,) if f.cloud is not None else ())
            if info is not None:
                f = dataclasses.replace(f, name=info.name)
        out.append(f)
    return out


async def accept_loop(
    listener: Any,
    handle: Callable[[Any], Awaitable[bool | None]],
    *,
    concurrent: int | None = None,
    stop: asyncio.Event | None = None,
    once: bool = False,
    on_error: Callable[[PairingError], None] | None = None,
    admission: Admission | None = None,
) -> None:
    """Accept links and run ``handle`` on each, as :class:`~pairkit.admission.Admission`
    admits them, until ``stop`` is set, after one link with ``once``, or until cancelled.

    Every link is taken from the listener at once, so that the transport's own queue never
    fills: the admission decides which are served and which are told "busy" (issue 17).
    ``concurrent``, if given, is the number of paired guests served at once (the admission's
    ``max_sessions``).  ``handle`` owns its link (an :class:`~pairkit.admission.Admitted`
    wrapper); whatever it raises ends that link only, never the loop, and is reported to
    ``on_error`` when it is a PairingError.  A handler that returns ``False`` says its link was
    not a guest (a device that only asked who the host is): ``once`` waits for the next.  A
    failed accept is reported to ``on_error`` and the loop goes on; a listener that closed
    (:class:`LinkClosedError`) ends it with that error.  On the way out every running handler
    is cancelled.
    """
    stop = stop or asyncio.Event()
    if admission is None:
        limits = AdmissionLimits()
        if concurrent is not None:
            limits = dataclasses.replace(limits, max_sessions=concurrent)
        admission = Admission(limits)
    # A BLE host's connection that never opens a link never reaches the admission: the
    # listener drops it after two first flights (docs/security.md, "A pairing host's pending
    # links").
    link_wait = getattr(listener, "drop_linkless_connections_after", None)
    if link_wait is not None:
        link_wait(2 * admission.limits.first_flight)
    tasks: set[asyncio.Task[bool | None]] = set()
    # Prekeys for the first guests, made while the host waits for them (issue 13).
    prekeys.pool().refill_soon()

    async def run(admitted: Admitted) -> bool | None:
        try:
            return await handle(admitted)
        except PairingError as exc:
            if on_error is not None:
                on_error(exc)
        except Exception as exc:
            # Contained: one guest's failure ends that guest only, never the loop, and is
            # reported as one line (no traceback, no path: issue 17).
            if on_error is not None:
                on_error(LocalError(
                    f"guest {admitted.peer}: internal failure ({describe_failure(exc)})",
                    code=ErrorCode.INTERNAL,
                ))
            with contextlib.suppress(Exception):
                await admitted.close()
        finally:
            admission.done(admitted)
        return None

    accept: asyncio.Future[Any] | None = None
    stopper: asyncio.Future[Any] | None = None
    try:
        while not stop.is_set():
            accept = asyncio.ensure_future(listener.accept())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({accept, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if accept not in done:
                break
            try:
                link = accept.result()
            except LinkClosedError:
                raise
            except PairingError as exc:
                if on_error is not None:
                    on_error(exc)
                continue
            finally:
                accept = None
            # Every link already waiting is taken in this turn too, so that a flood of
            # connections cannot outpace the loop and fill the transport's queue.
            more = getattr(listener, "accept_nowait", None)
            links = [link]
            while not once and more is not None and (extra := more()) is not None:
                links.append(extra)
            task = None
            for link in links:
                admitted = admission.admit(link)
                if admitted is None:
                    continue
                task = asyncio.create_task(run(admitted))
                admission.started(admitted, task)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if once and task is not None:
                await asyncio.wait({task})
                if task.cancelled() and not stop.is_set():
                    continue  # evicted before it paired: --once waits for a guest that does
                if not task.cancelled() and task.exception() is None and task.result() is False:
                    continue  # that link only asked who this host is: wait for a guest
                break
    finally:
        if stopper is not None:
            stopper.cancel()  # cancelled while waiting: no task left pending (issue 13's bench)
        if accept is not None:
            accept.cancel()
            late = None
            with contextlib.suppress(BaseException):
                late = await accept
            if late is not None:
                # Taken off the listener just as this loop was stopped: told "busy" and
                # closed, not left open and unserved (attack review atk15b).
                admission.refuse(late)
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await admission.close()


def resolve_target(
    ks: Keystore, target: str, transport: str | None = None
) -> tuple[str, str | None, KnownPeer | None]:
    """(transport spec, address on it, known peer or None) for what a guest joins: a transport
    (``tcp:HOST:PORT``, ``loopback[:NAME]``), a BLE address with ``transport`` naming the
    radio, or a known peer's name or id (reached where it was last seen)."""
    if target.startswith(("tcp:", "loopback")):
        return transport or target, None, None
    if target.startswith(("bumble:", "bleak")):
        raise ConfigError(
            f"{target!r} names a radio, not a device: give the host's BLE address from "
            f"'pairkit discover --transport {target}' and --transport {target}"
        )
    if is_ble_address(target):
        if not transport:
            raise ConfigError(
                "to reach a BLE address, say through which radio: --transport bumble:usb:0, "
                "bumble:tcp-client:HOST:PORT or bleak"
            )
        return transport, (target.upper() if ":" in target else target), None
    peer = peers.find_peer(ks, target)
    if peer is None:
        raise NotFoundError(
            f"no known peer or transport called {target!r}; use tcp:HOST:PORT, a BLE address "
            "from 'pairkit discover', or a name from 'pairkit peers'"
        )
    spec, address = peers.peer_contact(ks, peer)
    spec = transport or spec
    if not spec:
        raise NotFoundError(f"no address is known for {peer.name}; give --transport")
    return spec, (address if not spec.startswith(("tcp:", "loopback")) else None), peer
