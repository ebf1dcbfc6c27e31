"""The CPNS server's machine (one gateway connection, after the key server's proof)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from ..crypto import Rng, same
from ..errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    PairingError,
    ProtocolError,
)
from ..keystore.records import clean_name
from ..machine import (
    DONE,
    Machine,
    Question,
    Step,
    step,
)
from ..messages import KEY_LEN
from .keys import (
    RECIPIENT_GW,
    RECIPIENT_PNE,
    RECIPIENT_PRE,
    derive_sk,
    hash_pne,
    hash_server,
    preassigned_key,
    wrap_key,
)
from .messages import (
    RAND_LEN,
    AuthenticationRequest,
    AuthenticationResponse,
    KeySource,
    PneCaps,
    PneInfo,
    PneResult,
    PnRegistrationRequest,
    PnRegistrationResponse,
    SetupType,
    key_source_for,
    wants_local_key,
)


@dataclasses.dataclass(frozen=True)
class CpnsKeys:
    """The server store's answer to :class:`CpnsKeysAsked`."""

    #: the gateway's EUKey (None: not enrolled with one)
    gw_eukey: bytes | None = dataclasses.field(repr=False)
    #: the EUKeys of the enrolled PNEs among those asked (others are left out)
    pne_eukeys: Mapping[bytes, bytes] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class CpnsKeysAsked(Question):
    """Look up the factory keys of a gateway and its PNEs."""

    hook: ClassVar[str] = "cpns_keys"
    gw_id: bytes
    pne_ids: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class ServerMember:
    """One PNE of a registered PN, as the server stores it."""

    pne_id: bytes
    name: str
    caps: int
    contents: tuple[str, ...]
    key_source: KeySource
    local_key: bytes | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class ServerInventory:
    """A PN inventory to register (at least one member).  A PN is its gateway's: the store
    keeps it under (``gw_id``, ``pn_id``), ``gw_id`` being the gateway this connection proved
    (a PN id crosses the PAN in the clear before the registration, OMA CPNS "PN
    Establishment" step 2, so another gateway may name it too)."""

    pn_id: bytes
    gw_id: bytes
    gw_name: str
    setup_type: SetupType
    members: tuple[ServerMember, ...]
    #: the gateway's capabilities as its registration request gave them (GatewayCaps bits)
    gw_caps: int = 0


@dataclasses.dataclass(frozen=True)
class CpnsRegisterAsked(Question):
    """Store this PN inventory (answer ``True`` once stored)."""

    hook: ClassVar[str] = "cpns_register"
    inventory: ServerInventory


@dataclasses.dataclass
class _Pending:
    info: PneInfo
    eukey: bytes | None = None
    rand_server: bytes | None = None
    sk: bytes | None = None
    hash_pne: bytes | None = None
    ok: bool = False
    reason: str | None = None


S_BEGIN = "begin"
S_KEYS = "ask-keys"
S_AUTHS = "await-auth-responses"
S_STORE = "ask-store"


class CpnsServer(Machine):
    """The server's side of a PN registration: authenticate each PNE, register, answer."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_BEGIN, PnRegistrationRequest): step("_on_request", S_KEYS),
        (S_AUTHS, AuthenticationResponse): step("_on_auth_response", S_AUTHS, S_STORE, DONE),
    }
    ANSWERS: ClassVar[dict[str, Step]] = {
        S_KEYS: step("_on_keys", S_AUTHS, S_STORE, DONE),
        S_STORE: step("_on_stored", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({S_BEGIN})

    def __init__(self, gw_id: bytes, *, step_timeout: float = 30.0, rng: Rng = os.urandom):
        super().__init__(initial_state=S_BEGIN)
        if not 0.1 <= step_timeout <= 3600:
            raise ConfigError("the timeout (seconds per step) must be between 0.1 and 3600 seconds")
        self.gw_id = gw_id
        self._timeout = step_timeout
        self._rng = rng
        self.response: PnRegistrationResponse | None = None

    def begin(self, request: PnRegistrationRequest, now: float) -> None:
        """Take the gateway's registration request that :class:`pairing.ttp.TtpServerConn`
        already read (starting the machine if it was not)."""
        if not self.started:
            self.start(now)
        self.receive(request.encode(), now)

    def _on_request(self, request: PnRegistrationRequest, now: float) -> None:
        ids = [p.pne_id for p in request.pnes]
        if not ids:
            raise ProtocolError("a PN registration names at least one PNE")
        if len(set(ids)) != len(ids):
            raise ProtocolError("a PN registration names a PNE twice")
        if self.gw_id in ids:
            raise ProtocolError("the gateway cannot be a PNE of its own PN")
        # "PN GW Info: subscription information": the enrolment the gateway registers under
        # must be the one it proved on this connection.
        if request.subscription is None:
            raise ProtocolError("the PN registration lacks the gateway's subscription")
        if not same(request.subscription, self.gw_id):
            raise AccessDeniedError(
                "the PN registration names another subscription than the gateway's enrolment"
            )
        self._request = request
        self._pending = {p.pne_id: _Pending(p) for p in request.pnes}
        self.state = S_KEYS
        self._emit(CpnsKeysAsked(self.gw_id, tuple(ids)))

    def _on_keys(self, question: Question, value: Any, now: float) -> None:
        if not isinstance(value, CpnsKeys):
            raise ProtocolError("the answer to CpnsKeysAsked must be CpnsKeys")
        if value.gw_eukey is None:
            raise NotFoundError(
                "this gateway is not enrolled with a factory key (EUKey): enrol it with one"
            )
        self._gw_eukey = value.gw_eukey
        req = self._request
        for pne_id, p in self._pending.items():
            eukey = value.pne_eukeys.get(pne_id)
            if eukey is None:
                p.reason = "not enrolled with a factory key"
                continue
            if p.info.local_key_request != wants_local_key(PneCaps(p.info.caps)):
                p.reason = "asked for a LocalEUKey against the criteria"
                continue
            p.eukey = eukey
            p.rand_server = self._rng(RAND_LEN)
            ids = {"pn_id": req.pn_id, "pne_id": pne_id, "gw_id": self.gw_id}
            p.sk = derive_sk(eukey, **ids, rand_pne=p.info.rand_pne, rand_server=p.rand_server)
            self._send(AuthenticationRequest(req.pn_id, pne_id, self.gw_id, p.rand_server))
        if not any(p.sk is not None for p in self._pending.values()):
            self._conclude(now)
            return
        self.state = S_AUTHS
        # The PNEs have the shorter of this server's step and the wait the gateway gave them
        # (finding 4 of the setup retry review: a PNE that never answers, a stranger under an
        # enrolled id, must not hold the answer past the gateway's own deadline, failing the
        # registration for the PNEs that proved themselves).  A gateway that sets it short
        # cuts only its own PNEs' time.
        wait = self._timeout
        if req.auth_wait_ms is not None:
            wait = min(wait, req.auth_wait_ms / 1000)
        self._expect_by(now + wait, "the PNEs did not answer the authentication request")

    def _on_auth_response(self, msg: AuthenticationResponse, now: float) -> None:
        p = self._pending.get(msg.pne_id)
        if msg.pn_id != self._request.pn_id or p is None or p.sk is None:
            raise ProtocolError("an authentication response for a PNE that was not asked")
        if p.hash_pne is not None or p.reason is not None:
            raise ProtocolError("a second authentication response for the same PNE")
        assert p.rand_server is not None
        expected = hash_pne(
            p.sk, pn_id=msg.pn_id, pne_id=msg.pne_id, gw_id=self.gw_id,
            rand_pne=p.info.rand_pne, rand_server=p.rand_server,
        )
        p.hash_pne = msg.hash_pne
        if same(expected, msg.hash_pne):
            p.ok = True
        else:
            p.reason = "authentication failed"
        if all(q.sk is None or q.hash_pne is not None for q in self._pending.values()):
            self._conclude(now)

    def on_timeout(self, now: float) -> None:
        """A PNE that has not answered by the deadline fails; the others go on."""
        self._check_usable()
        deadline = self._deadline
        if self.state == S_AUTHS and deadline is not None and now >= deadline:
            try:
                for p in self._pending.values():
                    if p.sk is not None and p.hash_pne is None:
                        p.reason = "did not answer in time"
                self._conclude(now)
            except PairingError as exc:
                self._fail(exc)
                raise
            return
        super().on_timeout(now)

    def _conclude(self, now: float) -> None:
        req = self._request
        members = tuple(sorted(i for i, p in self._pending.items() if p.ok))
        self._results: list[PneResult] = []
        stored: list[ServerMember] = []
        for pne_id, p in self._pending.items():
            if not p.ok:
                self._results.append(PneResult(pne_id, False, reason=p.reason))
                continue
            assert p.eukey is not None and p.sk is not None and p.hash_pne is not None
            assert p.rand_server is not None
            ids = {"pn_id": req.pn_id, "pne_id": pne_id, "gw_id": self.gw_id}
            source = key_source_for(PneCaps(p.info.caps))
            for_pne = for_gw = local = None
            if source is KeySource.LOCAL_EUKEY:
                local = self._rng(KEY_LEN)
                for_pne = wrap_key(p.eukey, local, **ids, recipient=RECIPIENT_PNE, rng=self._rng)
                for_gw = wrap_key(
                    self._gw_eukey, local, **ids, recipient=RECIPIENT_GW, rng=self._rng
                )
            elif source is KeySource.PREASSIGNED:
                for_gw = wrap_key(
                    self._gw_eukey, preassigned_key(p.eukey), **ids, recipient=RECIPIENT_PRE,
                    rng=self._rng,
                )
            proof = hash_server(
                p.sk, **ids, rand_pne=p.info.rand_pne, rand_server=p.rand_server,
                hash_pne=p.hash_pne, wrapped=for_pne, key_source=source, members=members,
            )
            self._results.append(PneResult(pne_id, True, source, proof, for_pne, for_gw))
            # The capabilities as this server read them (PneCaps drops the bits it does not
            # name), not every bit as sent: a store's integer column holds 63 bits (SQLite) or
            # 31 (PostgreSQL), and a bit beyond would fail the store, so the registration, for
            # every element of the setup (attack review of the capability flags).
            # The names without control characters (as the keystores keep a peer's name): the
            # server's log and `pairkit ttp list` print them, and a newline in a name wrote a
            # line of the log's own (attack review of the PN id scoping).
            stored.append(ServerMember(
                pne_id, clean_name(p.info.name), int(PneCaps(p.info.caps)), p.info.contents,
                source, local,
            ))
        if not stored:
            self._answer(registered=False)
            return
        self.state = S_STORE
        self._expect_by(None)
        self._emit(CpnsRegisterAsked(ServerInventory(
            req.pn_id, self.gw_id, clean_name(req.gw_name), req.setup_type, tuple(stored),
            req.gw_caps,
        )))

    def _on_stored(self, question: Question, value: Any, now: float) -> None:
        if value is not True:
            raise ProtocolError("the PN inventory was not stored")
        self._answer(registered=True)

    def _answer(self, *, registered: bool) -> None:
        self.response = PnRegistrationResponse(
            self._request.pn_id, registered, tuple(self._results)
        )
        self._send(self.response)
        self._finish()


