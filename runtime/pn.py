"""Personal networks as a service (issue 14): the gateway that serves PNEs, and a PNE's side.

:class:`PnGateway` listens on a transport.  Each link opens with one of three messages:

- ``PnSetupRequest``: a PNE starts a setup (PNE-initiated).  The owner is asked
  (``delegate.allow_pn_setup``); if yes, the setup runs (:func:`pairkit.cpns.run_gateway`) with
  that PNE and the PNEs in reach that the setup type includes.
- ``PnAttach``: a PNE in reach, waiting to be asked (``pairkit pn join --wait``).  It stays
  until a setup includes it: the gateway's own (``--setup``), or another PNE's "all"/"invited".
- ``PnLinkResume``: a member back (``pairkit pn send``, ``pairkit pn join`` again): a new link
  session from its stored link key (:mod:`pairing.cpns.link`).

After a setup, each member's link becomes a secure channel (:class:`~pairkit.securelink.
SecureLink`) keyed by its link session, confirmed with the transcript of everything the link
carried before it (docs/security.md rule 6); a member on a link the PAN secures (both ends say
so: :func:`pairing.cpns.session_needed`) keeps the plain link.  On that channel the gateway
routes :class:`~pairing.cpns.PnData` between members of its PN: it sets the sender to the
member whose channel it came from, forwards it on the recipient's channel, and answers the
sender with a :class:`~pairing.cpns.PnDelivery`.  A record that fails to open (bit-flipped,
replayed, forged) ends that member's link; nothing of it is routed.

The PN inventory and the routing table (each member's last route) are kept in the gateway's
keystore (:class:`~pairing.keystore.PnRecord`) after every setup and every change of route,
and read back when the gateway starts again: members reconnect to a restarted gateway by
resume.  A gateway keeps one PN (its id is drawn at the first setup and reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Set
from typing import Any, Literal, Protocol

from .cpns import PneLink, run_gateway
from .driver import MessagePipe, drive
from .pairing import wire
from .pairing.cloud import CloudHello, CloudReply
from .pairing.cpns import (
    AuthenticationRequest,
    AuthenticationResponse,
    GatewayConfig,
    KeySource,
    LinkSession,
    PnAttach,
    PnData,
    PnDelivery,
    PneCaps,
    PneConfig,
    PneDropped,
    PneMachine,
    PnInventory,
    PnLinkResume,
    PnMembership,
    PnPinOffer,
    PnSetupRequest,
    SetupType,
)
from .pairing.cpns.link import GatewayResume, MemberResume, ResumeConfig
from .pairing.cpns.pinlink import ElementPin, GatewayPin
from .pairing.crypto import Rng
from .pairing.errors import (
    ConfigError,
    LinkClosedError,
    LockedOutError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RefusedError,
)
from .pairing.keystore import Keystore, PnEntry, PnRecord
from .pairing.keystore.records import clean_name
from .pairing.machine import Event, _short, abort_for
from .pairing.methods import LocalIdentity
from .pairing.methods.common import HostState, LockJournal, PinPolicy
from .pairing.negotiation import Caps
from .securelink import SecureLink, confirm

#: how long an idle member link waits between two messages before it checks again
IDLE_POLL = 3600.0
#: seconds an element that started a setup may take to answer the key server's
#: authentication request (relayed by the gateway) while another setup waits its turn: the
#: answer needs no person (a hash under its factory key), so a real element gives it at once,
#: and a stranger under a copied id, which cannot, is cut off rather than holding every setup
#: until the key server's deadline (attack review of the setup retry, finding 2)
AUTH_GRACE = 2.0
_SOURCES = {KeySource.LOCAL_EUKEY: "local_eukey", KeySource.PREASSIGNED: "preassigned"}


class PnChannel(Protocol):
    """Whole messages between a member and its gateway: a :class:`SecureLink`, or the plain
    pipe of a link the PAN secures."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, timeout: float | None = None) -> bytes: ...

    async def close(self) -> None: ...


class PlainChannel:
    """The PN traffic of a member whose PAN secures the link (no session of ours on top)."""

    def __init__(self, pipe: MessagePipe, link: Any, timeout: float = 30.0) -> None:
        self.pipe = pipe
        self.link = link
        self.timeout = timeout

    async def send(self, data: bytes) -> None:
        await self.pipe.send(data)

    async def recv(self, timeout: float | None = None) -> bytes:
        wait = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self.pipe.recv(), wait)
        except TimeoutError:
            raise PairingTimeout(f"the peer sent nothing for {wait:.0f} s") from None

    async def close(self) -> None:
        with contextlib.suppress(PairingError, OSError):
            await self.link.close()


class SetupPipe(MessagePipe):
    """The message pipe of an element's link on the gateway, noting since when the element
    holds up the setup it started (:data:`AUTH_GRACE`): it owes the answer to the key server's
    authentication request the gateway relayed to it, or the setup dropped it (it spoke out of
    turn, its link closed) while the key server still waits for its proof."""

    #: when the gateway relayed an authentication request the element has not answered yet
    owes_since: float | None = None
    #: when the setup dropped the element
    dropped_since: float | None = None

    @property
    def stalled_since(self) -> float | None:
        """Since when this element holds up its setup (None: it does not)."""
        times = [t for t in (self.owes_since, self.dropped_since) if t is not None]
        return min(times, default=None)

    async def send(self, message: bytes) -> None:
        await super().send(message)
        if len(message) > AuthenticationRequest.MAX_SIZE:
            return
        try:
            sent = wire.decode(message)
        except PairingError:
            return  # not a message of ours to watch (a record on a channel, say)
        if isinstance(sent, AuthenticationRequest):
            self.owes_since = asyncio.get_running_loop().time()

    async def recv(self) -> bytes:
        message = await super().recv()
        # Only the answer settles what it owes: any other message is out of turn (and gets
        # the element dropped), never a way to look busy.
        if self.owes_since is not None and len(message) <= AuthenticationResponse.MAX_SIZE:
            with contextlib.suppress(PairingError):
                if isinstance(wire.decode(message), AuthenticationResponse):
                    self.owes_since = None
        return message


class ChannelLink:
    """A link inside a secure channel (an element's PAN link secured by the gateway's PIN): the
    CPNS messages run on it as on any link, and it reports itself encrypted, as a PAN that
    secures the link does."""

    mtu = 60_000
    encrypted = True

    def __init__(self, slink: SecureLink, peer: str | None) -> None:
        self.slink = slink
        self.peer = peer

    @property
    def closed(self) -> bool:
        return bool(getattr(self.slink.link, "closed", False))

    async def send(self, data: bytes) -> None:
        await self.slink.send(data)

    async def recv(self) -> bytes:
        return await self.slink.recv(IDLE_POLL)

    async def close(self) -> None:
        await self.slink.close()


class PinDisplay:
    """The PIN the gateway shows for elements that type one: good for one try, then a new one
    (docs/security.md rule 7), under the host's lockout (:class:`~pairing.methods.common.
    PinPolicy`: five failures within ``window`` seconds lock PIN offers until the oldest is
    ``window`` old, each further failure of the streak locks them twice as long as the last,
    up to an hour).  A try counts as failed from the moment it starts (:meth:`take`) until it
    succeeds (:meth:`succeeded`): offers made in parallel cannot outrun the lock (attack review,
    finding 3)."""

    def __init__(self, first: str | None, *, show: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, rng: Rng = os.urandom,
                 policy: PinPolicy | None = None, journal: LockJournal | None = None) -> None:
        self._show = show
        self._clock = clock
        self._rng = rng
        # ``journal``: where the failures are kept beyond this process (the keystore's, by
        # pairkit pn gateway: docs/security.md, "The lock outlives the host process")
        self._lock = HostState(pin_policy=policy or PinPolicy(), pin_journal=journal)
        self.pin = ""
        if first is not None:
            self.pin = first
            self._show(first)
        else:
            self.renew()

    def renew(self) -> None:
        from .pairing.methods.common import check_pin_strength

        while True:
            pin = f"{int.from_bytes(self._rng(8), 'big') % 1_000_000:06d}"
            try:
                check_pin_strength(pin)
            except ConfigError:
                continue
            break
        self.pin = pin
        self._show(pin)

    def take(self) -> tuple[str, float]:
        """The PIN for one try and when the try started (a new PIN is shown for the next); the
        try counts as a failure until :meth:`succeeded` is told."""
        now = self._clock()
        # Checked, then checked again as the try is counted (one step in the keystore: another
        # gateway process of the device may have counted one in between).
        wait = self._lock.locked_for(now) or self._lock.pin_failed_unless_locked(now)
        if wait > 0:
            raise LockedOutError(
                f"too many wrong PINs: PIN offers are locked for {math.ceil(wait / 60)} more "
                "minute(s)"
            )
        pin = self.pin
        self.renew()
        return pin, now

    def succeeded(self, started: float) -> None:
        """The try that started at ``started`` typed the right PIN: it is no failure."""
        self._lock.pin_succeeded(started)


def _authenticated(link: Any) -> None:
    """Tell admission (runtime/admission.py) that the member on ``link`` proved its link key:
    it counts as a session from now on, no longer as a link waiting for its first proof that
    strangers' new links may push out (attack review, finding 4).  A link inside a PIN channel
    is promoted through the link it runs on."""
    if isinstance(link, ChannelLink):
        link = link.slink.link
    promote = getattr(link, "authenticated", None)
    if callable(promote):
        promote()


def _source(link: Any) -> str:
    """Where a link comes from, as admission counts it (runtime/admission.py): its peer's
    address (a link inside a PIN channel: the link it runs on)."""
    if isinstance(link, ChannelLink):
        link = link.slink.link
    return str(getattr(link, "admission_key", None) or getattr(link, "peer", None) or id(link))


def _hex(b: bytes) -> str:
    return b.hex()


# ---------------------------------------------------------------------------------------------
# Records


def member_record(
    membership: PnMembership, *, gw_name: str, setup: SetupType, gateway: str | None,
    now: float,
) -> PnRecord:
    """What a PNE keeps of its membership (its link key included, for later sessions)."""
    names = dict(zip(membership.members, membership.member_names, strict=False))
    return PnRecord(
        pn_id=_hex(membership.pn_id), role="member", gw_id=_hex(membership.gw_id),
        gw_name=clean_name(gw_name), setup=setup.label,
        members=tuple(PnEntry(_hex(i), clean_name(names.get(i, ""))) for i in membership.members),
        link_key=membership.link_key, key_source=_SOURCES.get(membership.key_source),
        gateway=gateway, updated=now,
    )


def merge_gateway_record(
    old: PnRecord | None, inv: PnInventory, *, gw_name: str, routes: dict[bytes, str | None],
    now: float,
) -> PnRecord:
    """The gateway's PN after a setup: earlier members stay (a member set up again gets its new
    key; one that failed or declined this time keeps its place and key, since a link claiming
    its id proves nothing), this setup's other failed and declined PNEs are listed."""
    members = {m.pne_id: m for m in (old.members if old else ())}
    failed = {e.pne_id: e for e in (old.failed if old else ())}
    declined = {e.pne_id: e for e in (old.declined if old else ())}
    for m in inv.members:
        i = _hex(m.pne_id)
        members[i] = PnEntry(i, clean_name(m.name), int(m.caps), _SOURCES[m.key_source],
                             m.link_key, routes.get(m.pne_id))
        failed.pop(i, None)
        declined.pop(i, None)
    for pne_id, reason in inv.failed.items():
        i = _hex(pne_id)
        if i in members:
            # An earlier member keeps its place and key: whoever failed on a link under its id
            # (ids travel in the clear) proved nothing against it (finding 5).  Only a member
            # of this setup, proven again, replaces its entry.
            continue
        failed[i] = PnEntry(i, clean_name(inv.names.get(pne_id, "")),
                            reason=_short(reason))
    for pne_id in inv.declined:
        i = _hex(pne_id)
        if i not in members:
            declined[i] = PnEntry(i, clean_name(inv.names.get(pne_id, "")))
    return PnRecord(
        pn_id=_hex(inv.pn_id), role="gateway", gw_id=_hex(inv.gw_id), gw_name=clean_name(gw_name),
        setup=inv.setup_type.label, members=tuple(members.values())[-64:],
        failed=tuple(failed.values())[-64:], declined=tuple(declined.values())[-64:],
        updated=now,
    )


def with_route(record: PnRecord, pne_id: str, route: str | None, now: float) -> PnRecord:
    members = tuple(dataclasses.replace(m, route=route) if m.pne_id == pne_id else m
                    for m in record.members)
    return dataclasses.replace(record, members=members, updated=now)


# ---------------------------------------------------------------------------------------------
# The gateway


@dataclasses.dataclass(frozen=True)
class GatewayOptions:
    """How ``pairkit pn gateway`` runs."""

    server: str
    ca_file: str
    eukey: bytes = dataclasses.field(repr=False)
    #: gateway-initiated: the setup type to start once the PNEs it needs are in reach
    setup: SetupType | None = None
    invited: tuple[bytes, ...] = ()
    #: for a gateway-initiated "all" or "1-1": how many PNEs to wait for
    wait_for: int = 1
    collect_window: float = 5.0
    step_timeout: float = 30.0
    #: stop after the first setup (and its members' routing) ends
    once: bool = False

    def __post_init__(self) -> None:
        if self.setup is SetupType.INVITED and not self.invited:
            raise ConfigError("--setup invited needs the PNEs: --invite PNE_ID (repeat)")
        if self.setup is not SetupType.INVITED and self.invited and not (
            self.setup is SetupType.ONE_TO_ONE and len(self.invited) == 1
        ):
            raise ConfigError("--invite goes with --setup invited (or one PNE for 1-1)")
        if not 1 <= self.wait_for <= 16:
            raise ConfigError("--wait-for is from 1 to 16 PNEs")


class GatewayDelegate(Protocol):
    async def allow_pn_setup(self, name: str, setup: SetupType, invited: int) -> bool: ...


@dataclasses.dataclass
class _Waiting:
    link: Any
    pipe: MessagePipe
    attach: PnAttach
    #: set by the setup that takes this PNE: its channel (a member), or None
    result: asyncio.Future[PnChannel | None]


class PnGateway:
    """The gateway service (see the module docstring)."""

    def __init__(
        self,
        ks: Keystore,
        me: LocalIdentity,
        opts: GatewayOptions,
        *,
        delegate: GatewayDelegate,
        emit: Callable[[dict[str, Any]], None] | None = None,
        say: Callable[[str], None] | None = None,
        rng: Rng = os.urandom,
        wall: Callable[[], float] = time.time,
        pins: PinDisplay | None = None,
    ) -> None:
        self.ks = ks
        self.pins = pins
        self.me = me
        self.opts = opts
        self.delegate = delegate
        self.emit = emit
        self.say = say or (lambda _text: None)
        self._rng = rng
        self._wall = wall
        records = ks.pns("gateway")
        #: the gateway's PN, reloaded from the keystore (None until the first setup)
        self.record: PnRecord | None = records[-1] if records else None
        self.waiting: dict[int, _Waiting] = {}
        #: the live routing table: pne_id -> the member's channel
        self.live: dict[bytes, PnChannel] = {}
        self._setup_lock = asyncio.Lock()
        #: setups waiting for their turn (the running one's stalled initiator gives way)
        self._queued = 0
        self._wanted = asyncio.Event()
        #: where the PNE-initiated setups running or waiting come from (one each)
        self._asking: set[str] = set()
        self._started_own = False
        self._own_task: asyncio.Task[None] | None = None
        #: the members of the last setup this gateway ran (none when it failed)
        self._last_members: frozenset[bytes] = frozenset()
        self.setups = 0
        self.stop = asyncio.Event()

    # -- keystore ---------------------------------------------------------------------------

    def _save(self, change: Callable[[PnRecord | None], PnRecord]) -> None:
        with self.ks.update():
            found = [r for r in self.ks.pns("gateway")
                     if self.record is None or r.pn_id == self.record.pn_id]
            record = change(found[-1] if found else None)
            self.ks.set_pn(record)
        self.record = record

    def link_key(self, pn_id: bytes, pne_id: bytes) -> bytes | None:
        if self.record is None or self.record.pn_id != pn_id.hex():
            return None
        for m in self.record.members:
            if m.pne_id == pne_id.hex():
                return m.link_key
        return None

    # -- links --------------------------------------------------------------------------------

    async def handle(self, link: Any) -> bool | None:
        """Serve one link (for :func:`pairkit.session.accept_loop`)."""
        pipe = SetupPipe(link, guest=False)
        try:
            return await self._serve(link, pipe)
        except PairingError as exc:
            self.say(f"{getattr(link, 'peer', 'a device')}: {exc}")
            with contextlib.suppress(PairingError, OSError, TimeoutError):
                abort = abort_for(exc)
                await asyncio.wait_for(pipe.send(abort.encode()), 1.0)
        finally:
            with contextlib.suppress(Exception):
                await link.close()
        return None

    async def _serve(self, link: Any, pipe: MessagePipe, *, in_pin: bool = False) -> bool | None:
        try:
            first = await asyncio.wait_for(pipe.recv(), self.opts.step_timeout)
        except TimeoutError:
            raise PairingTimeout("the device said nothing") from None
        msg = wire.decode(first)
        if isinstance(msg, PnPinOffer) and not in_pin:
            inner = await self._pin_link(link, pipe, first)
            inner_pipe = SetupPipe(inner, guest=False)
            try:
                return await self._serve(inner, inner_pipe, in_pin=True)
            except PairingError as exc:
                # told inside the secure channel, the only place the element reads now
                self.say(f"{getattr(link, 'peer', 'an element')}: {exc}")
                with contextlib.suppress(PairingError, OSError, TimeoutError):
                    abort = abort_for(exc)
                    await asyncio.wait_for(inner_pipe.send(abort.encode()), 1.0)
                return None
            finally:
                await inner.close()
        elif isinstance(msg, PnSetupRequest):
            await self._pne_initiated(link, pipe, first, msg)
        elif isinstance(msg, PnAttach):
            await self._attached(link, pipe, msg)
        elif isinstance(msg, PnLinkResume):
            await self._resumed(link, pipe, first)
        elif isinstance(msg, CloudHello):
            # A scanner asking who is here (the hello response, `pairkit discover`): the
            # gateway's name and capabilities, and nothing else; it then leaves.
            await pipe.send(CloudReply(self._rng(16), name=self.ks.name, methods=0,
                                       caps=int(Caps.DISPLAY)).encode())
            with contextlib.suppress(PairingError, TimeoutError):
                await asyncio.wait_for(pipe.recv(), 2.0)
            return False
        else:
            raise ProtocolError(f"{type(msg).__name__} cannot open a link to a PN gateway")
        return None

    async def _pin_link(self, link: Any, pipe: MessagePipe, first: bytes) -> ChannelLink:
        """Secure an element's PAN link with the PIN shown (:mod:`pairing.cpns.pinlink`)."""
        if self.pins is None:
            raise RefusedError("this gateway takes no PIN: ask its owner to run "
                               "'pairkit pn gateway --pin-link'")
        loop = asyncio.get_running_loop()
        pin, started = self.pins.take()  # counted as a failure until the PIN is proven
        machine = GatewayPin(bytes.fromhex(self.ks.device_id), pin,
                             step_timeout=self.opts.step_timeout, rng=self._rng)
        machine.start(loop.time())
        machine.receive(first, loop.time())
        await drive(machine, pipe, idle=self.opts.step_timeout)
        self.pins.succeeded(started)
        assert machine.session is not None
        slink = SecureLink(link, machine.session, timeout=self.opts.step_timeout)
        await confirm(slink, transcript=pipe.transcript(), first=True)
        self.say(f"{getattr(link, 'peer', 'an element')} typed the PIN: its link is secured")
        return ChannelLink(slink, getattr(link, "peer", None))

    async def _attached(self, link: Any, pipe: MessagePipe, msg: PnAttach) -> None:
        slot = _Waiting(link, pipe, msg, asyncio.get_running_loop().create_future())
        key = id(slot)
        self.waiting[key] = slot
        self.say(f"{clean_name(msg.name)} ({msg.pne_id.hex()[:16]}) is in reach, waiting")
        try:
            await self._maybe_start_own()
            channel = await slot.result
        finally:
            self.waiting.pop(key, None)
        if channel is not None:
            await self._route(msg.pne_id, channel, link)

    async def _maybe_start_own(self) -> None:
        """Gateway-initiated: start the setup once the PNEs it needs are in reach."""
        if self.opts.setup is None or self._started_own or not self._wants_met(self._in_reach()):
            return
        # Started even while another setup runs: it waits its turn (a stranger's setup holding
        # the gateway when the element came must not make the gateway forget it; attack review
        # of the setup retry, finding 1).
        self._started_own = True
        self._own_task = asyncio.get_running_loop().create_task(self._own_setup())

    def _in_reach(self) -> set[bytes]:
        """The ids of the elements waiting in reach, not taken by a setup yet."""
        return {w.attach.pne_id for w in self.waiting.values() if not w.result.done()}

    def _wants_met(self, pne_ids: Set[bytes]) -> bool:
        """Whether ``pne_ids`` are the PNEs the gateway's own setup waits for: every invited
        one, else ``wait_for`` of any (checked on those in reach, and on a setup's members)."""
        o = self.opts
        if o.setup is SetupType.INVITED or (o.setup is SetupType.ONE_TO_ONE and o.invited):
            return set(o.invited) <= pne_ids
        return len(pne_ids) >= o.wait_for

    async def _own_setup(self) -> None:
        """The gateway-initiated setup, run again (after a pause of the collect window) while
        it got fewer members than it waited for: strangers in reach first (a made-up id, then
        silence) spend one setup, not the gateway's only one."""
        o = self.opts
        assert o.setup is not None
        ran = await self._run_setup(None, o.setup, o.invited,
                                    ready=lambda: self._wants_met(self._in_reach()))
        if self.stop.is_set():
            return
        if ran is False:
            # Another setup took the elements while this one waited its turn: it starts again
            # when they are in reach.
            self._started_own = False
            await self._maybe_start_own()
            return
        if self._wants_met(self._last_members):
            return
        self.say("the PN setup got fewer members than it waits for: it runs again when they "
                 "are in reach")
        await asyncio.sleep(o.collect_window)  # strangers cannot make it run back to back
        self._started_own = False
        await self._maybe_start_own()

    async def _pne_initiated(
        self, link: Any, pipe: MessagePipe, first: bytes, msg: PnSetupRequest
    ) -> None:
        # One setup at a time runs; the others wait their turn, one per address (a stranger
        # asking again and again from one address holds one place in the queue, not all).
        source = _source(link)
        if source in self._asking:
            raise RefusedError("a PN setup from this device is running or waiting already; "
                               "try again shortly")
        self._asking.add(source)
        try:
            allowed = await self.delegate.allow_pn_setup(
                clean_name(msg.name), msg.setup_type, len(msg.invited)
            )
            if not allowed:
                raise RefusedError("the gateway's owner refused the PN setup")
            result = await self._run_setup((link, pipe, first), msg.setup_type, (),
                                           wait=2 * self.opts.step_timeout)
        finally:
            self._asking.discard(source)
        if result:
            await self._route(msg.pne_id, result, link)

    @contextlib.asynccontextmanager
    async def _turn(self, wait: float | None) -> AsyncIterator[None]:
        """Hold the gateway's one setup, waiting at most ``wait`` seconds for it (None: as long
        as it takes); while waiting, a running setup whose initiator stalls gives way."""
        self._queued += 1
        self._wanted.set()
        try:
            if wait is None:
                await self._setup_lock.acquire()
            else:
                try:
                    await asyncio.wait_for(self._setup_lock.acquire(), wait)
                except TimeoutError:
                    raise RefusedError("this gateway is setting up other PNs; try again "
                                       "shortly") from None
        finally:
            self._queued -= 1
        try:
            yield
        finally:
            self._setup_lock.release()

    async def _unless_stalled(
        self, setup: Awaitable[PnInventory], pipes: list[SetupPipe]
    ) -> PnInventory:
        """``setup``'s inventory; cut short (:class:`PairingTimeout`) once every element of it
        (on ``pipes``; none: never cut) has held it up (:attr:`SetupPipe.stalled_since`: it
        owes its answer to the key server's authentication request, or the setup dropped it)
        for :data:`AUTH_GRACE` seconds while another setup waits its turn.  A real element
        answers at once, with no person asked (one whose person is asked to join owes nothing
        yet); a setup in which one is still under way is never cut."""
        task = asyncio.ensure_future(setup)
        loop = asyncio.get_running_loop()
        grace = min(AUTH_GRACE, self.opts.step_timeout)
        try:
            while True:
                times = [p.stalled_since for p in pipes]
                since = None
                if times and all(t is not None for t in times):
                    since = max(t for t in times if t is not None)
                late = None if since is None else loop.time() - since
                if late is not None and late >= grace and self._queued:
                    raise PairingTimeout(
                        f"the elements of this PN setup held it up for {grace:g} s (the key "
                        "server's authentication request unanswered), and another setup is "
                        "waiting"
                    )
                self._wanted.clear()
                waits: set[asyncio.Future[Any]] = {task}
                if late is not None and late >= grace:
                    waits.add(asyncio.ensure_future(self._wanted.wait()))
                    timeout = None
                else:
                    timeout = grace - late if late is not None else grace
                try:
                    await asyncio.wait(waits, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits - {task}:
                        w.cancel()
                if task.done():
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _run_setup(
        self,
        initiator: tuple[Any, MessagePipe, bytes] | None,
        setup: SetupType,
        invited: tuple[bytes, ...],
        *,
        wait: float | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> PnChannel | Literal[False] | None:
        """One setup, once it is this one's turn (:meth:`_turn`); the initiator's channel (None
        if it is not a member), or False when ``ready`` said, at its turn, that it need not
        run any more."""
        async with self._turn(wait):
            if ready is not None and not ready():
                return False
            self._last_members = frozenset()
            o = self.opts
            pnes: dict[Hashable, PneLink] = {}
            slots: dict[Hashable, _Waiting] = {}
            #: one link per claimed id takes part (ids cross the PAN in the clear: a stranger
            #: may claim an element's); the others stay in reach for the next setup, so that
            #: a stranger in reach first under an element's id fails alone, and the element
            #: is the first under its id the next time (attack review of the setup retry,
            #: finding 3)
            claimed: set[bytes] = set()
            if initiator is not None:
                link, pipe, first = initiator
                pnes["initiator"] = PneLink(link, None, pipe=pipe, first=first)
                claimed.add(wire.decode(first, PnSetupRequest).pne_id)
            for key, w in list(self.waiting.items()):  # in the order they came in reach
                if w.result.done() or getattr(w.link, "closed", False):
                    continue
                if initiator is not None and setup is SetupType.ONE_TO_ONE:
                    break
                if w.attach.pne_id in claimed:
                    continue
                claimed.add(w.attach.pne_id)
                pnes[key] = PneLink(w.link, w.attach.pne_id, pipe=w.pipe)
                slots[key] = w
            pn_id = bytes.fromhex(self.record.pn_id) if self.record else None
            config = GatewayConfig(
                bytes.fromhex(self.ks.device_id), self.ks.name, o.eukey, pn_id=pn_id,
                collect_window=o.collect_window, step_timeout=o.step_timeout,
            )

            # A PNE-initiated setup gives way when all its elements hold it up (the gateway's
            # own is never cut: it runs again by itself).
            watched: list[SetupPipe] = []
            if initiator is not None:
                watched = [pl.pipe for pl in pnes.values() if isinstance(pl.pipe, SetupPipe)]
            for sp in watched:
                sp.owes_since = sp.dropped_since = None

            def on_event(event: Event) -> None:
                if isinstance(event, PneDropped):
                    dropped = pnes.get(event.port)
                    if dropped is not None and isinstance(dropped.pipe, SetupPipe):
                        dropped.pipe.dropped_since = asyncio.get_running_loop().time()
                    who = event.pne_id.hex()[:16] if event.pne_id else "a PNE"
                    self.say(f"{who} left the setup: {event.reason}")

            self.say(f"setting up the PN ({setup.label}) with {len(pnes)} PNE(s) in reach")
            try:
                inventory = await self._unless_stalled(run_gateway(
                    pnes, me=self.me, config=config, server=o.server, ca_file=o.ca_file,
                    initiate=None if initiator is not None else (setup, invited),
                    on_event=on_event, rng=self._rng,
                ), watched)
            except PairingError as exc:
                self.say(f"the PN setup failed: {exc}")
                for w in slots.values():
                    if not w.result.done():
                        w.result.set_result(None)
                if initiator is not None:
                    raise
                return None
            finally:
                self.setups += 1
            self._last_members = frozenset(m.pne_id for m in inventory.members)
            # Members' ports: the link on which each member proved its key (the machine's
            # routing table), never another link that claimed the same id (finding 5)
            port_of = dict(inventory.ports)
            routes = {m.pne_id: getattr(pnes[port_of[m.pne_id]].link, "peer", None)
                      for m in inventory.members if m.pne_id in port_of}
            self._save(lambda old: merge_gateway_record(
                old, inventory, gw_name=self.ks.name, routes=routes, now=self._wall()))
            self._report(inventory)
            channels: dict[Hashable, PnChannel | None] = {}
            for m in inventory.members:
                port = port_of.get(m.pne_id)
                if port is None:
                    continue
                pl = pnes[port]
                assert pl.pipe is not None
                channels[port] = await self._open_channel(pl.link, pl.pipe, m.session)
            # Elements this setup did not include (another's "invited", say) stay in reach; one
            # that took part and failed (a silent one too: it has no name) is let go, so that a
            # stranger's link under an element's id does not stay in reach ahead of the element
            # (one link per id takes part in a setup, the first to come in reach).
            took_part = (set(inventory.names) | set(inventory.failed) | set(inventory.declined)
                         | {m.pne_id for m in inventory.members})
            for key, w in slots.items():
                if not w.result.done() and w.attach.pne_id in took_part:
                    w.result.set_result(channels.get(key))
            if o.once:
                self.stop.set()
            return channels.get("initiator")

    async def _open_channel(
        self, link: Any, pipe: MessagePipe, session: LinkSession | None
    ) -> PnChannel | None:
        if session is None:
            return PlainChannel(pipe, link)
        slink = SecureLink(link, session, timeout=self.opts.step_timeout)
        try:
            await confirm(slink, transcript=pipe.transcript(), first=True)
        except PairingError as exc:
            self.say(f"a member's secure channel did not confirm: {exc}")
            await slink.close()
            return None
        return slink

    def _report(self, inv: PnInventory) -> None:
        names = inv.names
        line = {
            "event": "setup", "pn": inv.pn_id.hex(), "setup": inv.setup_type.label,
            "members": [{"id": m.pne_id.hex(), "name": clean_name(m.name),
                         "key_source": _SOURCES[m.key_source],
                         "session": m.session.fingerprint if m.session else None}
                        for m in inv.members],
            "failed": [{"id": i.hex(), "name": clean_name(names.get(i, "")), "reason": r}
                       for i, r in inv.failed.items()],
            "declined": [{"id": i.hex(), "name": clean_name(names.get(i, ""))}
                         for i in inv.declined],
        }
        if self.emit is not None:
            self.emit(line)
        members = ", ".join(m["name"] for m in line["members"]) or "none"
        self.say(f"PN {line['pn'][:16]} ({line['setup']}): members {members}"
                 + (f"; failed {len(inv.failed)}" if inv.failed else "")
                 + (f"; declined {len(inv.declined)}" if inv.declined else ""))

    async def _resumed(self, link: Any, pipe: MessagePipe, first: bytes) -> None:
        machine = GatewayResume(bytes.fromhex(self.ks.device_id), self.link_key,
                                step_timeout=self.opts.step_timeout, rng=self._rng)
        machine.start(asyncio.get_running_loop().time())
        machine.receive(first, asyncio.get_running_loop().time())
        if machine.failed:
            assert machine.error is not None
            raise machine.error
        await drive(machine, pipe, idle=self.opts.step_timeout)
        assert machine.session is not None and machine.pne_id is not None
        slink = SecureLink(link, machine.session, timeout=self.opts.step_timeout)
        await confirm(slink, transcript=pipe.transcript(), first=True)
        await self._route(machine.pne_id, slink, link)

    # -- routing ------------------------------------------------------------------------------

    async def _route(self, pne_id: bytes, channel: PnChannel, link: Any) -> None:
        """Carry one member's traffic until its link ends."""
        assert self.record is not None
        _authenticated(link)
        address: str | None = getattr(link, "peer", None)
        pn_id = bytes.fromhex(self.record.pn_id)
        name = self._name(pne_id)
        old = self.live.get(pne_id)
        self.live[pne_id] = channel
        if old is not None:
            await old.close()  # the member came back on a new link: the old one is stale
        if address is not None:
            self._save(lambda r: with_route(r or self.record, pne_id.hex(), address, self._wall()))
        self.say(f"{name} is online")
        try:
            while not self.stop.is_set():
                try:
                    data = await channel.recv(IDLE_POLL)
                except PairingTimeout:
                    continue
                msg = wire.decode(data)
                if not isinstance(msg, PnData):
                    raise ProtocolError(f"a member sent {type(msg).__name__} on its PN link")
                await channel.send(await self._forward(pn_id, pne_id, msg))
        except LinkClosedError:
            pass
        except PairingError as exc:
            self.say(f"{name}'s link ended: {exc}")
        finally:
            if self.live.get(pne_id) is channel:
                del self.live[pne_id]
            self.say(f"{name} is offline")
            await channel.close()

    async def _forward(self, pn_id: bytes, src: bytes, msg: PnData) -> bytes:
        def report(ok: bool, reason: str | None = None) -> bytes:
            return PnDelivery(msg.msg_id, ok, reason).encode()

        if msg.pn_id != pn_id:
            return report(False, "not this gateway's PN")
        if msg.src != src:
            return report(False, "a member can only send as itself")
        if self.link_key(pn_id, msg.dst) is None:
            return report(False, "no member of this PN has that id")
        target = self.live.get(msg.dst)
        if target is None:
            return report(False, f"{self._name(msg.dst)} is not connected to the gateway")
        try:
            await asyncio.wait_for(
                target.send(PnData(pn_id, src, msg.dst, msg.msg_id, msg.body).encode()),
                self.opts.step_timeout,
            )
        except (PairingError, TimeoutError):
            return report(False, f"{self._name(msg.dst)}'s link failed")
        self.say(f"routed {len(msg.body)} bytes from {self._name(src)} to {self._name(msg.dst)}")
        return report(True)

    def _name(self, pne_id: bytes) -> str:
        if self.record is not None:
            for m in self.record.members:
                if m.pne_id == pne_id.hex():
                    return m.name
        return pne_id.hex()[:16]


# ---------------------------------------------------------------------------------------------
# The PNE


async def pne_setup(
    link: Any,
    config: PneConfig,
    *,
    listen: bool,
    delegate: Any = None,
    pin: str | None = None,
    rng: Rng = os.urandom,
) -> tuple[PneMachine, PnChannel | None]:
    """Take part in a setup on ``link`` (``listen``: attach and wait to be asked); the machine
    (membership, or declined) and, for a member, its channel to the gateway.  With ``pin``
    (the one the gateway shows) the link is first secured with it (:mod:`pairing.cpns.pinlink`)
    and the setup runs inside that channel."""
    if pin is not None:
        pipe = MessagePipe(link, guest=True)
        secure = ElementPin(config.pne_id, pin, step_timeout=config.step_timeout, rng=rng)
        await drive(secure, pipe, idle=config.step_timeout)
        assert secure.session is not None
        slink = SecureLink(link, secure.session, timeout=config.step_timeout)
        await confirm(slink, transcript=pipe.transcript(), first=False)
        link = ChannelLink(slink, getattr(link, "peer", None))
    pipe = MessagePipe(link, guest=True)
    if listen:
        await pipe.send(PnAttach(config.pne_id, config.name, int(config.caps)).encode())
    machine = PneMachine(config, listen=listen, rng=rng)
    await drive(machine, pipe, delegate=delegate, idle=config.step_timeout)
    membership = machine.membership
    if membership is None:
        return machine, None
    if membership.session is None:
        return machine, PlainChannel(pipe, link, config.step_timeout)
    slink = SecureLink(link, membership.session, timeout=config.step_timeout)
    await confirm(slink, transcript=pipe.transcript(), first=False)
    return machine, slink


async def pne_resume(
    link: Any, record: PnRecord, pne_id: bytes, *, step_timeout: float = 30.0,
    rng: Rng = os.urandom,
) -> SecureLink:
    """A member's new secure channel to its gateway, from its stored link key."""
    if record.role != "member" or record.link_key is None:
        raise NotFoundError("this device holds no link key for that PN")
    pipe = MessagePipe(link, guest=True)
    machine = MemberResume(ResumeConfig(
        bytes.fromhex(record.pn_id), pne_id, bytes.fromhex(record.gw_id), record.link_key,
        step_timeout,
    ), rng=rng)
    await drive(machine, pipe, idle=step_timeout)
    assert machine.session is not None
    slink = SecureLink(link, machine.session, timeout=step_timeout)
    await confirm(slink, transcript=pipe.transcript(), first=False)
    return slink


async def pn_send(
    channel: PnChannel, record: PnRecord, src: bytes, dst: bytes, body: bytes, *,
    msg_id: int = 1, timeout: float = 30.0,
) -> PnDelivery:
    """Send ``body`` to member ``dst`` through the gateway; the gateway's delivery report.
    Routed messages for this member that arrive meanwhile are dropped (``pn join --stay``
    is the way to receive them)."""
    await channel.send(PnData(bytes.fromhex(record.pn_id), src, dst, msg_id, body).encode())
    while True:
        msg = wire.decode(await channel.recv(timeout))
        if isinstance(msg, PnDelivery) and msg.msg_id == msg_id:
            return msg
        if not isinstance(msg, PnData | PnDelivery):
            raise ProtocolError(f"the gateway sent {type(msg).__name__} on the PN link")


async def pn_receive(
    channel: PnChannel, on_data: Callable[[PnData], Awaitable[None]], *, count: int | None = None,
) -> int:
    """Hand each routed message to ``on_data`` until the link ends (or ``count`` arrived)."""
    got = 0
    while count is None or got < count:
        try:
            data = await channel.recv(IDLE_POLL)
        except PairingTimeout:
            continue
        except LinkClosedError:
            break
        msg = wire.decode(data)
        if isinstance(msg, PnData):
            got += 1
            await on_data(msg)
        elif not isinstance(msg, PnDelivery):
            raise ProtocolError(f"the gateway sent {type(msg).__name__} on the PN link")
    return got


def pne_caps(ui: bool, pan_secured: bool) -> PneCaps:
    return (PneCaps.UI if ui else PneCaps.NONE) | (
        PneCaps.PAN_SECURED if pan_secured else PneCaps.NONE)


__all__ = [
    "ChannelLink",
    "GatewayOptions",
    "PinDisplay",
    "PlainChannel",
    "PnChannel",
    "PnGateway",
    "member_record",
    "merge_gateway_record",
    "pn_receive",
    "pn_send",
    "pne_caps",
    "pne_resume",
    "pne_setup",
    "with_route",
]
