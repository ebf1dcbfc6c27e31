"""The gateway: one machine on the common base with several ports (the server and one link
per PNE)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

from .. import wire
from ..crypto import Rng, mac, same
from ..errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LinkClosedError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RefusedError,
    RemoteError,
)
from ..machine import (
    DONE,
    Event,
    Machine,
    Step,
    _code,
    _short,
    step,
)
from ..messages import ID_LEN, KEY_LEN
from .keys import (
    RECIPIENT_GW,
    RECIPIENT_PRE,
    LinkSession,
    _ids,
    _link_keys,
    unwrap_key,
)
from .messages import (
    AUTH_WAIT_MS,
    DEFAULT_AUTH_WAIT_MS,
    RAND_LEN,
    SERVER,
    AuthenticationRequest,
    AuthenticationResponse,
    GatewayCaps,
    KeySource,
    LinkConfirm,
    PneCaps,
    PneInfo,
    PnEstablishmentNotify,
    PnRegistrationRequest,
    PnRegistrationResponse,
    PnSetupNotify,
    PnSetupNotifyResponse,
    PnSetupRequest,
    Port,
    SetupType,
    key_source_for,
    session_needed,
    wants_local_key,
)


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """The gateway; validated when built."""

    gw_id: bytes
    name: str
    eukey: bytes = dataclasses.field(repr=False)
    #: the PN to set up (None: a new one, drawn from the rng)
    pn_id: bytes | None = None
    #: seconds to wait for PNEs' answers to a setup notify
    collect_window: float = 5.0
    #: seconds to wait for each other step (a PNE's request, the server, a confirmation)
    step_timeout: float = 30.0
    #: what the registration request says of the gateway's device ("PN GW Info")
    caps: GatewayCaps = GatewayCaps.DISPLAY | GatewayCaps.ROUTER

    def __post_init__(self) -> None:
        if len(self.gw_id) != ID_LEN:
            raise ConfigError(f"a gateway id is {ID_LEN} bytes")
        if len(self.eukey) != KEY_LEN:
            raise ConfigError(f"an EUKey is {KEY_LEN} bytes")
        if self.pn_id is not None and len(self.pn_id) != ID_LEN:
            raise ConfigError(f"a PN id is {ID_LEN} bytes")
        if not 0.01 <= self.collect_window <= 600 or not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("the collection window or the timeout (seconds per step) is out "
                              "of range")


@dataclasses.dataclass(frozen=True)
class PnMember:
    """One member in the gateway's PN inventory."""

    pne_id: bytes
    name: str
    caps: PneCaps
    contents: tuple[str, ...]
    key_source: KeySource
    link_key: bytes | None = dataclasses.field(repr=False)
    session: LinkSession | None = None


@dataclasses.dataclass(frozen=True)
class PnInventory:
    """The gateway's record of its PN."""

    pn_id: bytes
    gw_id: bytes
    setup_type: SetupType
    members: tuple[PnMember, ...]
    #: PNEs that took part but are not members, with the reason
    failed: Mapping[bytes, str]
    #: PNEs that were asked and declined
    declined: tuple[bytes, ...] = ()
    #: the name each PNE gave (members, failed and declined)
    names: Mapping[bytes, str] = dataclasses.field(default_factory=dict)
    #: the routing table: each member's port, the link on which it proved its key (ids travel
    #: in the clear, so several links may claim one; only this one is the member's)
    ports: Mapping[bytes, Hashable] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PneDropped(Event):
    """A PNE left the setup (it failed, or misbehaved); the others go on."""

    hook: ClassVar[str] = "on_pne_dropped"
    port: Any
    pne_id: bytes | None
    reason: str


@dataclasses.dataclass
class _Link:
    port: Port
    pne_id: bytes | None
    pan_secured: bool
    state: str = "attached"
    info: PneInfo | None = None
    member: PnMember | None = None
    nonce: bytes | None = None
    reason: str | None = None
    #: named in the registration request (the server answers for it)
    registered: bool = False
    #: the name the PNE gave in its request or answer
    name: str | None = None


#: link states of PNEs that are not (or no longer) part of the setup
_OUT = ("failed", "idle", "declined")

G_IDLE = "idle"
G_COLLECT = "collect"
G_REGISTER = "register"
G_CONFIRM = "confirm"

_PNE_MESSAGES = (PnSetupRequest, PnSetupNotifyResponse, AuthenticationResponse, LinkConfirm)


class Gateway(Machine):
    """The PN gateway: PNE links and the server connection in one sans-I/O machine, on the
    common base with several peers (:attr:`Machine.PORTED`).

    The I/O layer calls :meth:`attach` for each PNE link (any hashable ``port``), :meth:`start`,
    feeds every message with :meth:`receive` ``(data, now, port=port)``, sends what
    :meth:`outgoing` gives to each port (:data:`SERVER` is the server connection, opened when
    the first message for it appears), and honours :meth:`next_deadline`.  A gateway-initiated
    setup begins with :meth:`initiate`.  A PNE that fails or misbehaves is dropped (an ``Abort``
    goes to it, a :class:`PneDropped` event to the user) and the others go on; an error on the
    server side poisons the whole machine (STYLE.md rule 4).
    """

    PORTED: ClassVar[bool] = True
    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (G_IDLE, PnSetupRequest): step("_on_setup_request", G_COLLECT, G_REGISTER),
        (G_COLLECT, PnSetupNotifyResponse): step("_on_notify_response", G_COLLECT, G_REGISTER),
        (G_REGISTER, AuthenticationRequest): step("_on_auth_request", G_REGISTER),
        (G_REGISTER, AuthenticationResponse): step("_on_auth_response", G_REGISTER),
        (G_REGISTER, PnRegistrationResponse): step("_on_registration", G_CONFIRM, DONE),
        (G_CONFIRM, LinkConfirm): step("_on_link_confirm", G_CONFIRM, DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({G_IDLE})

    def __init__(self, config: GatewayConfig, *, rng: Rng = os.urandom) -> None:
        super().__init__(initial_state=G_IDLE)
        self.config = config
        self._rng = rng
        self.pn_id = config.pn_id or rng(ID_LEN)
        self._links: dict[Port, _Link] = {}
        self.setup_type: SetupType | None = None
        #: pn_id -> pne_id -> port: where the gateway relays the server's messages
        self.routing: dict[bytes, dict[bytes, Port]] = {}
        self.inventory: PnInventory | None = None
        #: the PNE that started this setup (None: the gateway did)
        self._initiator: tuple[bytes, str] | None = None
        #: how long the server waits for the PNEs' answers, as the registration request asks
        self._auth_wait_ms = DEFAULT_AUTH_WAIT_MS

    # -- the driver's side ----------------------------------------------------------------

    def attach(self, port: Port, *, pne_id: bytes | None = None, pan_secured: bool = False) -> None:
        """A PNE link is up (``pne_id`` when the PAN told who is there)."""
        if port == SERVER or port in self._links:
            raise ConfigError(f"port {port!r} is already in use")
        self._links[port] = _Link(port, pne_id, pan_secured)

    @property
    def server_done(self) -> bool:
        """Whether the server has answered the registration (it may hang up from then on)."""
        return self.state in (G_CONFIRM, DONE) or self.inventory is not None

    def _on_start(self, now: float) -> None:
        self._expect_by(now + self.config.step_timeout, "no PNE asked to set up a PN")

    def initiate(
        self, now: float, setup_type: SetupType, invited: tuple[bytes, ...] = ()
    ) -> None:
        """Gateway-initiated: notify the PNEs that ``setup_type`` includes."""
        self._check_usable()
        if self.state != G_IDLE:
            raise ProtocolError("this gateway's setup has already started")
        if setup_type is SetupType.INVITED and not invited:
            raise ConfigError("setup type 'invited' needs the invited PNE ids")
        # A PNE dropped before the setup (it spoke out of turn: a flow cut by a restart, say)
        # is not asked again on this link.
        links = [k for k in self._links.values() if k.state == "attached"]
        if setup_type is SetupType.INVITED:
            links = [k for k in links if k.pne_id in invited]
        elif setup_type is SetupType.ONE_TO_ONE:
            if len(invited) == 1:
                links = [k for k in links if k.pne_id == invited[0]]
            if len(links) != 1:
                raise ConfigError("a 1-1 setup needs exactly one PNE (name it)")
        if not links:
            raise NotFoundError("no PNE in reach for this setup")
        self.setup_type = setup_type
        for k in self._links.values():
            if k not in links:
                k.state = "idle"  # not part of this setup
        self._notify(links, now)

    def receive(self, data: bytes, now: float, port: Port | None = None) -> None:
        """Feed one whole message that arrived on ``port``."""
        if port != SERVER and port not in self._links:
            raise ConfigError(f"unknown port {port!r}")
        super().receive(data, now, port)
        if self._error is not None:  # the setup as a whole failed (no PNE left, say)
            raise self._error

    def link_closed(self, port: Port, now: float) -> None:
        """A PNE link went away."""
        link = self._links.get(port)
        if link is not None and link.state not in (*_OUT, "member"):
            self._drop(link, LinkClosedError("the link to the PNE closed"), now)

    def on_timeout(self, now: float) -> None:
        """Tell the machine that ``now`` has come."""
        super().on_timeout(now)
        if self._error is not None:
            raise self._error

    # -- the base's hooks for several peers ---------------------------------------------------

    def _admits(self, port: Hashable | None) -> bool:
        # A PNE already dropped (its Abort after a failure notice, say), or one left out of
        # this setup: nothing it says matters any more.
        link = self._links.get(port)
        return link is None or link.state not in _OUT

    def _from_the_right_peer(self, port: Hashable | None, msg: wire.Message) -> bool:
        return isinstance(msg, _PNE_MESSAGES) == (port != SERVER)

    def _peer_name(self, port: Hashable) -> str:
        return "the server" if port == SERVER else "a PNE"

    def _peer_failed(self, exc: PairingError, port: Hashable | None, now: float) -> None:
        if port == SERVER:
            self._fail(exc)
            raise exc
        self._drop(self._links[port], exc, now)

    def _on_deadline(self, now: float) -> None:
        if self.state == G_COLLECT:
            for link in self._links.values():
                if link.state == "notified":
                    self._drop(
                        link, PairingTimeout("did not answer the setup notify"), now,
                        settle=False,
                    )
            self._register(now)
        elif self.state == G_CONFIRM:
            for link in self._links.values():
                if link.state == "confirming":
                    self._drop(
                        link, PairingTimeout("did not confirm the link session"), now,
                        settle=False,
                    )
            self._settle(now)
        else:
            raise PairingTimeout(self._deadline_text)

    def _tell_failure(self, exc: PairingError) -> None:
        reason = str(getattr(exc, "local", exc))  # a server's reason without "the peer stopped"
        abort = wire.Abort(code=_code(exc), reason=_short(reason)).encode()
        if not isinstance(exc, RemoteError | PairingTimeout):
            self._send_to(SERVER, abort)
        # The PNEs are told in every case: they wait on this gateway, not on the server.
        for link in self._links.values():
            if link.state not in _OUT:
                self._send_to(link.port, abort)

    # -- setup ----------------------------------------------------------------------------

    def _on_setup_request(self, port: Port, msg: PnSetupRequest, now: float) -> None:
        link = self._links[port]
        self._check_link_id(link, msg.pne_id)
        self._check_flag(msg.caps, msg.local_key_request)
        link.info = PneInfo(
            msg.pne_id, msg.name, msg.caps, msg.rand_pne, msg.local_key_request, msg.contents
        )
        link.state = "joined"
        link.name = msg.name
        self.setup_type = msg.setup_type
        self._initiator = (msg.pne_id, msg.name)
        others = [k for k in self._links.values() if k is not link]
        if msg.setup_type is SetupType.INVITED:
            others = [k for k in others if k.pne_id in msg.invited]
        elif msg.setup_type is SetupType.ONE_TO_ONE:
            others = []
        for k in self._links.values():
            if k is not link and k not in others:
                k.state = "idle"  # not part of this setup
        if others:
            self._notify(others, now)
        else:
            self._register(now)

    def _notify(self, links: list[_Link], now: float) -> None:
        assert self.setup_type is not None
        initiator, initiator_name = self._initiator or (None, None)
        note = PnSetupNotify(
            self.pn_id, self.config.gw_id, self.config.name, self.setup_type,
            initiator, initiator_name,
        )
        for link in links:
            link.state = "notified"
            self._send_to(link.port, note.encode())
        self.state = G_COLLECT
        self._expect_by(now + self.config.collect_window, "no PNE answered the setup notify")

    def _on_notify_response(self, port: Port, msg: PnSetupNotifyResponse, now: float) -> None:
        link = self._links[port]
        if link.state != "notified":
            raise ProtocolError("a setup notify response that was not asked for")
        self._check_link_id(link, msg.pne_id)
        link.name = msg.name
        if not msg.accept:
            # The source's step 3: the answer says whether it takes part.  A PNE that declines
            # is told nothing more and listed as declined (not as failed).
            link.state = "declined"
            link.reason = "declined"
        else:
            self._check_flag(msg.caps, msg.local_key_request)
            link.info = PneInfo(
                msg.pne_id, msg.name, msg.caps, msg.rand_pne, msg.local_key_request, msg.contents
            )
            link.state = "joined"
        if not any(k.state == "notified" for k in self._links.values()):
            self._register(now)

    def _check_link_id(self, link: _Link, pne_id: bytes) -> None:
        if link.pne_id is not None and link.pne_id != pne_id:
            raise AuthenticationError("the PNE on this link gave another id than the PAN's")
        if pne_id == self.config.gw_id:
            raise ProtocolError("a PNE claims the gateway's own id")
        for other in self._links.values():
            if other is not link and other.info is not None and other.info.pne_id == pne_id:
                raise ProtocolError("two links claim the same PNE id")
        link.pne_id = pne_id

    @staticmethod
    def _check_flag(caps: int, flag: bool) -> None:
        if flag != wants_local_key(PneCaps(caps)):
            raise ProtocolError(
                "the PNE's LocalEUKey request does not follow from its capabilities"
            )

    def _register(self, now: float) -> None:
        joined = [k for k in self._links.values() if k.state == "joined"]
        if not joined:
            # Fatal for the whole setup, whichever PNE's message led here.
            self._fail(RefusedError("no PNE took part in the PN setup"))
            return
        assert self.setup_type is not None
        infos = tuple(k.info for k in joined if k.info is not None)
        route = self.routing.setdefault(self.pn_id, {})
        for k in joined:
            assert k.info is not None
            route[k.info.pne_id] = k.port
            k.state = "registering"
            k.registered = True
        # The PNEs have half a step to answer the server's authentication request (one hash,
        # no person asked): the server waits no longer for them (nor longer than its own
        # deadline), then answers for those that proved themselves and those that did not
        # ("did not answer in time", failed here in _on_registration).  That leaves a step and
        # a half of this gateway's deadline for the server connection, the relay and the
        # server's store, and a PNE that answered at once, told this wait on the relay and
        # waiting twice it for the outcome (a step of this gateway's; never less than its own),
        # half a step for the server's answer to come back (finding 4 of the setup retry
        # review: a silent PNE must not make the registration miss these deadlines).
        self._auth_wait_ms = max(AUTH_WAIT_MS[0], round(self.config.step_timeout * 500))
        self._send_to(SERVER, PnRegistrationRequest(
            self.pn_id, self.config.name, self.setup_type, infos,
            gw_caps=int(self.config.caps), subscription=self.config.gw_id,
            auth_wait_ms=self._auth_wait_ms,
        ).encode())
        self.state = G_REGISTER
        self._expect_by(now + 2 * self.config.step_timeout,
                        "the CPNS server did not answer the registration")

    # -- relay ------------------------------------------------------------------------------

    def _on_auth_request(self, port: Port, msg: AuthenticationRequest, now: float) -> None:
        if msg.gw_id != self.config.gw_id:
            raise ProtocolError("the server addressed another gateway")
        target = self.routing.get(msg.pn_id, {}).get(msg.pne_id)
        if target is None:
            raise ProtocolError("the server asked to authenticate a PNE that is not in this PN")
        link = self._links[target]
        if link.state == "registering":
            link.state = "authenticating"
            # The PNE is told how long the server waits for the answers (when that is not the
            # default), so that it waits for the outcome past it: a PNE whose step is under
            # half this gateway's would otherwise give up while the server waits for a silent
            # one, and the server registers it all the same (PN finding 4 of the attack review
            # of the registration's wait).  The source's gateway relays the request as a message
            # of its own (step 6: the PNE's copy of its key and rand_server); this one relays
            # the server's fields and its own wait, never one the server wrote.
            wait = None if self._auth_wait_ms == DEFAULT_AUTH_WAIT_MS else self._auth_wait_ms
            self._send_to(target, dataclasses.replace(msg, auth_wait_ms=wait).encode())
        elif link.state != "failed":
            raise ProtocolError("the server asked the same PNE twice")

    def _on_auth_response(self, port: Port, msg: AuthenticationResponse, now: float) -> None:
        link = self._links[port]
        if link.state != "authenticating":
            raise ProtocolError("an authentication response that was not asked for")
        if msg.pn_id != self.pn_id or msg.pne_id != link.pne_id:
            raise ProtocolError("the authentication response names another PN or PNE")
        link.state = "authenticated"
        self._send_to(SERVER, msg.encode())

    def _on_registration(self, port: Port, msg: PnRegistrationResponse, now: float) -> None:
        if msg.pn_id != self.pn_id:
            raise ProtocolError("the server answered for another PN")
        by_id = {k.pne_id: k for k in self._links.values() if k.registered}
        results = {r.pne_id: r for r in msg.results}
        if len(results) != len(msg.results) or any(i not in by_id for i in results):
            raise ProtocolError("the server's answer names PNEs that were not registered")
        members = tuple(sorted(i for i, r in results.items() if r.ok))
        if msg.registered != bool(members):
            raise ProtocolError("the server's answer contradicts itself")
        ids = {"pn_id": self.pn_id, "gw_id": self.config.gw_id}
        names = {i: (k.name or "") for i, k in by_id.items()}
        for pne_id, link in by_id.items():
            if link.state in _OUT or pne_id is None:
                continue
            r = results.get(pne_id)
            if r is None or not r.ok:
                reason = (r.reason if r is not None else None) or "not registered"
                self._send_to(link.port, PnEstablishmentNotify(
                    self.pn_id, self.config.gw_id, False, reason=reason
                ).encode())
                link.state, link.reason = "failed", reason
                self._emit(PneDropped(link.port, pne_id, reason))
                continue
            assert link.info is not None
            source = r.key_source
            if source is None or r.hash_server is None:
                raise ProtocolError("the server's verdict on a member lacks its proof")
            if source is not key_source_for(PneCaps(link.info.caps)):
                raise ProtocolError("the server chose a link key against the criteria")
            if r.key_for_gw is None:
                raise ProtocolError("the server sent no link key for the gateway")
            recipient = RECIPIENT_GW if source is KeySource.LOCAL_EUKEY else RECIPIENT_PRE
            try:
                key = unwrap_key(
                    self.config.eukey, r.key_for_gw, **ids, pne_id=pne_id, recipient=recipient
                )
            except AuthenticationError:
                raise AuthenticationError(
                    "the server's link key did not open with this gateway's factory key: is "
                    "the gateway enrolled with another EUKey?"
                ) from None
            # R01: a secure session unless the PAN secures the link, by both ends' word
            # (messages.session_needed): the gateway's own link, and the PNE's claim.
            with_session = session_needed(PneCaps(link.info.caps), link.pan_secured)
            link.nonce = self._rng(RAND_LEN) if with_session else None
            link.member = PnMember(
                pne_id, link.info.name, PneCaps(link.info.caps), link.info.contents, source, key
            )
            self._send_to(link.port, PnEstablishmentNotify(
                self.pn_id, self.config.gw_id, True, source, r.hash_server, r.key_for_pne,
                members, link.nonce, member_names=tuple(names.get(i, "") for i in members),
                gw_name=self.config.name,
            ).encode())
            link.state = "confirming" if with_session else "member"
        self.state = G_CONFIRM
        self._expect_by(now + self.config.step_timeout, "a PNE did not confirm the link session")
        self._settle(now)

    def _on_link_confirm(self, port: Port, msg: LinkConfirm, now: float) -> None:
        link = self._links[port]
        if link.state != "confirming":
            raise ProtocolError("a link confirmation that was not expected")
        member = link.member
        assert member is not None and member.link_key is not None and link.nonce is not None
        if msg.nonce is None:
            raise DecodeError("the PNE's link confirmation lacks its nonce")
        ids = _ids(self.pn_id, member.pne_id, self.config.gw_id)
        p2g, g2p, kc, fp = _link_keys(member.link_key, ids, link.nonce, msg.nonce)
        if not same(msg.mac, mac(kc, b"pne", link.nonce, msg.nonce)):
            raise AuthenticationError("the PNE's link confirmation failed")
        self._send_to(port, LinkConfirm(mac(kc, b"gw", link.nonce, msg.nonce)).encode())
        link.member = dataclasses.replace(member, session=LinkSession(g2p, p2g, fp))
        link.state = "member"
        self._settle(now)

    def _settle(self, now: float) -> None:
        """In the confirm phase: done once no PNE is left to confirm."""
        if self.state != G_CONFIRM or any(k.state == "confirming" for k in self._links.values()):
            return
        assert self.setup_type is not None
        members = tuple(
            k.member for k in self._links.values() if k.member is not None and k.state == "member"
        )
        failed = {
            k.pne_id: k.reason or "failed"
            for k in self._links.values()
            if k.state == "failed" and k.pne_id is not None
        }
        declined = tuple(
            k.pne_id for k in self._links.values() if k.state == "declined" and k.pne_id
        )
        names = {k.pne_id: k.name or "" for k in self._links.values()
                 if k.pne_id is not None and k.name is not None}
        # The routing table reaches members only: a PNE that failed has no route.
        self.routing[self.pn_id] = {
            k.pne_id: k.port for k in self._links.values()
            if k.pne_id is not None and k.state == "member" and k.member is not None
        }
        self.inventory = PnInventory(
            self.pn_id, self.config.gw_id, self.setup_type, members, failed, declined, names,
            dict(self.routing[self.pn_id]),
        )
        self._finish()

    # -- errors ---------------------------------------------------------------------------

    def _drop(self, link: _Link, exc: PairingError, now: float, *, settle: bool = True) -> None:
        was = link.state
        link.state = "failed"
        link.reason = _short(str(exc))
        if isinstance(exc, RemoteError):
            link.reason = _short(str(getattr(exc, "local", exc)))
        elif not isinstance(exc, LinkClosedError):
            reason = _short(str(exc))
            self._send_to(link.port, wire.Abort(code=_code(exc), reason=reason).encode())
        if was == "confirming":
            # The server registered it, but the link session it needs did not confirm: whoever
            # is on that link does not hold the link key.  It is out of the PN (no route, no
            # member entry) and in the failed list (issue 14).
            link.member = None
        self._emit(PneDropped(link.port, link.pne_id, link.reason))
        if not settle:
            return
        if self.state == G_COLLECT and not any(
            k.state == "notified" for k in self._links.values()
        ):
            self._register(now)
        elif self.state == G_CONFIRM:
            self._settle(now)
