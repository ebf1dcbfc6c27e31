"""The PNE's machine (a device joining a personal network)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Literal

from ..crypto import Rng, mac, same
from ..errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ProtocolError,
)
from ..machine import (
    DONE,
    Machine,
    Question,
    Step,
    step,
)
from ..messages import ID_LEN, KEY_LEN
from ..wire import one_line
from .keys import (
    RECIPIENT_PNE,
    LinkSession,
    _ids,
    _link_keys,
    derive_sk,
    hash_pne,
    hash_server,
    preassigned_key,
    unwrap_key,
)
from .messages import (
    BELIEVED_AUTH_WAIT_MS,
    DEFAULT_AUTH_WAIT_MS,
    MAX_PNES,
    RAND_LEN,
    AuthenticationRequest,
    AuthenticationResponse,
    KeySource,
    LinkConfirm,
    PneCaps,
    PnEstablishmentNotify,
    PnSetupNotify,
    PnSetupNotifyResponse,
    PnSetupRequest,
    SetupType,
    key_source_for,
    session_needed,
    wants_local_key,
)

#: what a listening PNE does with a gateway's PN Setup Notify
JoinPolicy = Literal["accept", "decline", "ask"]


@dataclasses.dataclass(frozen=True)
class PneConfig:
    """One PNE; validated when built."""

    pne_id: bytes
    name: str
    eukey: bytes = dataclasses.field(repr=False)
    caps: PneCaps = PneCaps.UI
    contents: tuple[str, ...] = ()
    #: for a PNE-initiated setup: which PNEs to include
    setup_type: SetupType = SetupType.ONE_TO_ONE
    invited: tuple[bytes, ...] = ()
    #: when set, only this gateway is accepted
    gateway_id: bytes | None = None
    #: seconds to wait for each step (the gateway may be waiting on other PNEs and the server)
    step_timeout: float = 30.0
    #: a listening PNE's answer to a PN Setup Notify: take part, decline, or ask its user
    #: (:class:`PnJoinAsked`; the source's step 3 "to confirm participation in PN")
    join: JoinPolicy = "accept"

    def __post_init__(self) -> None:
        if len(self.pne_id) != ID_LEN:
            raise ConfigError(f"a PNE id is {ID_LEN} bytes")
        if len(self.eukey) != KEY_LEN:
            raise ConfigError(f"an EUKey is {KEY_LEN} bytes")
        if self.setup_type is SetupType.INVITED and not self.invited:
            raise ConfigError("setup type 'invited' needs the invited PNE ids")
        if self.setup_type is not SetupType.INVITED and self.invited:
            raise ConfigError("only setup type 'invited' names PNEs")
        if len(self.invited) > MAX_PNES - 1 or any(len(i) != ID_LEN for i in self.invited):
            raise ConfigError(f"at most {MAX_PNES - 1} invited PNE ids of {ID_LEN} bytes")
        if not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("the timeout (seconds per step) must be between 0.1 and 3600 seconds")
        if self.join not in ("accept", "decline", "ask"):
            raise ConfigError("join must be 'accept', 'decline' or 'ask'")


def outcome_wait(step_timeout: float, auth_wait_ms: int | None) -> float:
    """How long a PNE with ``step_timeout`` waits for the outcome once it has answered the
    server's authentication request that its gateway relayed with ``auth_wait_ms`` (absent:
    :data:`DEFAULT_AUTH_WAIT_MS`), in seconds: twice the server's wait (the wait itself, then
    as long again for the server's answer to come back through the gateway: with equal steps,
    one step, as before), believed up to :data:`BELIEVED_AUTH_WAIT_MS` (a minute at most), and
    never less than its own step.  A gateway's word can lengthen the PNE's wait up to that cap,
    never shorten it (docs/protocol.md §18, "The registration's waits")."""
    wait = DEFAULT_AUTH_WAIT_MS if auth_wait_ms is None else auth_wait_ms
    return max(step_timeout, 2 * min(wait, BELIEVED_AUTH_WAIT_MS) / 1000)


@dataclasses.dataclass(frozen=True)
class PnJoinAsked(Question):
    """A gateway asks this PNE to join a PN: answer ``True`` to take part, ``False`` to
    decline.  ``initiator`` is the PNE that started the setup (None: the gateway did).  The
    names are the gateway's words made one line (:func:`~pairkit.pairing.wire.one_line`)."""

    hook: ClassVar[str] = "allow_pn_join"
    pn_id: bytes
    gw_id: bytes
    gw_name: str
    setup_type: SetupType
    initiator: bytes | None
    initiator_name: str | None


@dataclasses.dataclass(frozen=True)
class PnMembership:
    """What a PNE ends with: its PN, the members, its link key's source and the session."""

    pn_id: bytes
    gw_id: bytes
    members: tuple[bytes, ...]
    key_source: KeySource
    link_key: bytes | None = dataclasses.field(repr=False)
    session: LinkSession | None
    #: the members' names as the gateway gave them (in the order of ``members``)
    member_names: tuple[str, ...] = ()
    #: the gateway's name as it gave it
    gw_name: str | None = None


S_START = "start"
S_NOTIFY = "await-setup-notify"
S_AUTH = "await-authentication"
S_ESTABLISH = "await-establishment"
S_CONFIRM = "await-link-confirm"
S_ASK = "ask-user-to-join"


class PneMachine(Machine):
    """A PNE, PNE-initiated (:meth:`start`) or answering a gateway's notify (``listen=True``)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_NOTIFY, PnSetupNotify): step("_on_notify", S_AUTH, S_ASK, DONE),
        (S_AUTH, AuthenticationRequest): step("_on_auth", S_ESTABLISH),
        (S_ESTABLISH, PnEstablishmentNotify): step("_on_establish", DONE, S_CONFIRM),
        (S_CONFIRM, LinkConfirm): step("_on_confirm", DONE),
    }
    ANSWERS: ClassVar[dict[str, Step]] = {S_ASK: step("_on_join_answer", S_AUTH, DONE)}
    #: a listening PNE waits for the notify; an initiating one for the server's request
    STARTS: ClassVar[frozenset[str]] = frozenset({S_NOTIFY, S_AUTH})

    def __init__(
        self, config: PneConfig, *, listen: bool = False, rng: Rng = os.urandom
    ) -> None:
        super().__init__(initial_state=S_NOTIFY if listen else S_START)
        self.config = config
        self._rng = rng
        self._rand = rng(RAND_LEN)
        self._pn_id: bytes | None = None
        self._gw_id: bytes | None = config.gateway_id
        self.membership: PnMembership | None = None
        self.listen = listen
        #: set when this PNE declined a gateway's setup notify (the machine is done)
        self.declined = False
        #: the notify this PNE answered (its initiator, for the user)
        self.notify: PnSetupNotify | None = None

    @property
    def local_key_request(self) -> bool:
        return wants_local_key(self.config.caps)

    def _on_start(self, now: float) -> None:
        """Send the PN Setup Request (PNE-initiated), or wait for a gateway's notify."""
        if self.listen:
            self._expect_by(
                now + self.config.step_timeout, "no gateway asked this PNE to join a PN"
            )
            return
        c = self.config
        self._send(PnSetupRequest(
            pne_id=c.pne_id, name=c.name, caps=int(c.caps), setup_type=c.setup_type,
            rand_pne=self._rand, local_key_request=self.local_key_request, invited=c.invited,
            contents=c.contents,
        ))
        self._wait(now, S_AUTH, "the gateway did not relay the server's authentication request")

    def _wait(self, now: float, state: str, text: str) -> None:
        self.state = state
        self._expect_by(now + self.config.step_timeout, text)

    def _on_notify(self, msg: PnSetupNotify, now: float) -> None:
        self._check_gateway(msg.gw_id)
        if msg.initiator is not None and msg.initiator == self.config.pne_id:
            raise ProtocolError("the gateway names this PNE as the initiator of a setup it "
                                "did not start")
        self._pn_id, self._gw_id = msg.pn_id, msg.gw_id
        self.notify = msg
        if self.config.join == "ask":
            self.state = S_ASK
            self._expect_by(None)
            # the names a person is asked about, each one line (atk21b finding B)
            initiator_name = None if msg.initiator_name is None else one_line(msg.initiator_name)
            self._emit(PnJoinAsked(msg.pn_id, msg.gw_id, one_line(msg.gw_name), msg.setup_type,
                                   msg.initiator, initiator_name))
            return
        self._answer_notify(self.config.join == "accept", now)

    def _on_join_answer(self, question: Question, value: Any, now: float) -> None:
        self._answer_notify(value is True, now)

    def _answer_notify(self, accept: bool, now: float) -> None:
        c = self.config
        self._send(PnSetupNotifyResponse(
            pne_id=c.pne_id, name=c.name, caps=int(c.caps), rand_pne=self._rand,
            local_key_request=self.local_key_request, accept=accept, contents=c.contents,
        ))
        if not accept:
            self.declined = True
            self._finish()
            return
        self._wait(now, S_AUTH, "the gateway did not relay the server's authentication request")

    def _check_gateway(self, gw_id: bytes) -> None:
        if self._gw_id is not None and gw_id != self._gw_id:
            raise AuthenticationError("a gateway other than this PNE's asked it to join a PN")

    def _on_auth(self, msg: AuthenticationRequest, now: float) -> None:
        if msg.pne_id != self.config.pne_id:
            raise ProtocolError("the authentication request is for another PNE")
        self._check_gateway(msg.gw_id)
        if self._pn_id is not None and msg.pn_id != self._pn_id:
            raise ProtocolError("the authentication request is for another PN")
        self._pn_id, self._gw_id = msg.pn_id, msg.gw_id
        self._rand_server = msg.rand_server
        ids = {"pn_id": msg.pn_id, "pne_id": msg.pne_id, "gw_id": msg.gw_id}
        self._sk = derive_sk(
            self.config.eukey, **ids, rand_pne=self._rand, rand_server=msg.rand_server
        )
        self._hash_pne = hash_pne(self._sk, **ids, rand_pne=self._rand, rand_server=msg.rand_server)
        self._send(AuthenticationResponse(msg.pn_id, msg.pne_id, self._hash_pne))
        # The server may wait for other PNEs (a silent stranger under an enrolled id, say) as
        # long as the gateway gave them, which may be longer than this PNE's step: it waits
        # past that, so that the server does not register a PNE that has given up (PN finding
        # 4 of the attack review of the registration's wait).
        self.state = S_ESTABLISH
        self._expect_by(now + outcome_wait(self.config.step_timeout, msg.auth_wait_ms),
                        "the gateway did not say whether the PN was established")

    def _on_establish(self, msg: PnEstablishmentNotify, now: float) -> None:
        assert self._pn_id is not None and self._gw_id is not None
        if msg.pn_id != self._pn_id or msg.gw_id != self._gw_id:
            raise ProtocolError("the establishment notice is for another PN")
        if not msg.ok:
            raise AuthenticationError(
                "the CPNS server did not accept this PNE"
                + (f" ({msg.reason})" if msg.reason else "")
                + "; is its factory key the one enrolled?"
            )
        if msg.hash_server is None or msg.key_source is None:
            raise DecodeError("the establishment notice lacks the server's proof")
        ids = {"pn_id": self._pn_id, "pne_id": self.config.pne_id, "gw_id": self._gw_id}
        expected = hash_server(
            self._sk, **ids, rand_pne=self._rand, rand_server=self._rand_server,
            hash_pne=self._hash_pne, wrapped=msg.wrapped_key, key_source=msg.key_source,
            members=msg.members,
        )
        if not same(expected, msg.hash_server):
            raise AuthenticationError(
                "the server's proof (hash_server) did not verify: the gateway changed the "
                "server's answer, or this is not the CPNS server"
            )
        if self.config.pne_id not in msg.members:
            raise ProtocolError("the server's member list leaves this PNE out")
        source = msg.key_source
        expected_source = key_source_for(self.config.caps)
        if source is not expected_source:
            raise ProtocolError(
                f"the server chose a {source.name} link key where this PNE needs "
                f"{expected_source.name}"
            )
        if source is KeySource.LOCAL_EUKEY:
            if msg.wrapped_key is None:
                raise DecodeError("the establishment notice lacks this PNE's LocalEUKey")
            key = unwrap_key(self.config.eukey, msg.wrapped_key, **ids, recipient=RECIPIENT_PNE)
        else:
            key = preassigned_key(self.config.eukey)
        self._members = msg.members
        self._member_names = msg.member_names
        self._gw_name = msg.gw_name
        self._key_source = source
        self._link_key = key
        if msg.nonce is None:
            # The gateway sets up no session: only if this PNE, too, says the PAN secures the
            # link (a gateway may add a session this PNE did not need, never drop one).
            if session_needed(self.config.caps, True):
                raise ProtocolError(
                    "the gateway set up no secure session on a link the PAN leaves open"
                )
            self._done(None)
            return
        self._nonce_gw = msg.nonce
        self._nonce_pne = self._rng(RAND_LEN)
        p2g, g2p, kc, fp = _link_keys(key, _ids(**ids), self._nonce_gw, self._nonce_pne)
        self._keys = (p2g, g2p, kc, fp)
        self._send(LinkConfirm(mac(kc, b"pne", self._nonce_gw, self._nonce_pne), self._nonce_pne))
        self._wait(now, S_CONFIRM, "the gateway did not confirm the link session")

    def _on_confirm(self, msg: LinkConfirm, now: float) -> None:
        p2g, g2p, kc, fp = self._keys
        if not same(msg.mac, mac(kc, b"gw", self._nonce_gw, self._nonce_pne)):
            raise AuthenticationError("the gateway's link confirmation failed")
        self._done(LinkSession(p2g, g2p, fp))

    def _done(self, session: LinkSession | None) -> None:
        assert self._pn_id is not None and self._gw_id is not None
        self.membership = PnMembership(
            self._pn_id, self._gw_id, self._members, self._key_source, self._link_key, session,
            self._member_names, self._gw_name,
        )
        self._finish()


