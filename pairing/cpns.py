"""CPNS personal-network establishment: a gateway enrols factory-keyed devices through the server.

Roles (OMA Converged Personal Network Service, "PN establishment", in our words): a **PNE**
(personal network element) is a device with a factory key ``EUKey`` that it shares with the
**CPNS server** (the pairkit key server, :mod:`pairing.ttp`); the **PN GW** (gateway, usually a
phone) reaches the PNEs over their own links (the PAN: BLE, TCP) and the server over TLS.  The
gateway is enrolled with an EUKey of its own.  A PN (personal network) is named by a 16-byte
``pn_id``; the gateway keeps a routing table ``pn_id -> pne_id -> link``.

Two ways to start, then one registration:

PNE-initiated::

    PNE -> GW      PnSetupRequest(capabilities, contents, setup type, [invited ids], rand_PNE,
                   LocalEUKey request flag)
    GW  -> PNE_k   PnSetupNotify(pn_id, gw)          for "All": every other PNE in reach;
    PNE_k -> GW    PnSetupNotifyResponse(...)        for "invited": those named; for 1-1: none

Gateway-initiated::

    GW  -> PNE_k   PnSetupNotify(pn_id, gw, setup type)       (1-1, All or invited)
    PNE_k -> GW    PnSetupNotifyResponse(capabilities, contents, rand_PNE, flag, accept)

Registration (both)::

    GW  -> server  PnRegistrationRequest(pn_id, gateway, setup type, PNE infos with the rands)
    server -> GW -> PNE    AuthenticationRequest(pn_id, pne_id, gw_id, rand_server)
                           (the gateway routes it by its routing table, keyed by pn_id)
    PNE -> GW -> server    AuthenticationResponse(pn_id, pne_id, hash_PNE)
    server -> GW   PnRegistrationResponse(per PNE: ok, hash_server, LocalEUKey wrapped twice)
    GW  -> PNE     PnEstablishmentNotify(ok, hash_server, the PNE's wrapped LocalEUKey, members)
    PNE <-> GW     LinkConfirm x2: the secure session on the PAN link, unless the PAN secures it

with, for each PNE (``ids = pn_id || pne_id || gw_id``)::

    SK_PNE      = HKDF(EUKey_PNE, salt = rand_PNE || rand_server, "pairkit/1 cpns sk" || ids)
    hash_PNE    = HMAC(SK_PNE, "pairkit/1 cpns hash_pne" || ids || rand_PNE || rand_server)
    hash_server = HMAC(SK_PNE, "pairkit/1 cpns hash_server" || ids || rand_PNE || rand_server
                       || hash_PNE || wrapped copy for the PNE || key source || member ids)
    wrap(E, k)  = nonce || ChaCha20-Poly1305(HKDF(E, "pairkit/1 cpns kek"), nonce, k,
                  ad = "pairkit/1 cpns key" || ids || recipient)

``hash_PNE`` and ``hash_server`` are MACs keyed by ``SK_PNE``, which only the PNE and the server
can compute: the server authenticates each PNE (a wrong EUKey, or rands changed on the way,
fail), and each PNE authenticates the server's verdict, its LocalEUKey copy and the member list
(a gateway that tampers with any of them is detected).  The server registers the PN inventory
when at least one PNE authenticated, and creates one LocalEUKey per PNE-gateway link that asked
for one, wrapped under the PNE's EUKey and under the gateway's; the associated data binds each
copy to its link and recipient, so the gateway can read neither ``SK_PNE`` nor a LocalEUKey (or
a PNE's copy) meant for another link.

The seed's criteria: a PNE requests a LocalEUKey when it has enough user interface and the PAN
does not already secure its link; a PNE without UI uses its pre-assigned key
(``HKDF(EUKey, "pairkit/1 cpns preassigned")``, which the server releases to the gateway wrapped
under the gateway's EUKey); a secure session between PNE and gateway (:class:`LinkSession`) is
set up from that key unless the PAN already provides one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Hashable, Mapping
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import wire
from .crypto import Rng, hkdf, mac, same
from .errors import (
    AccessDeniedError,
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
from .machine import (
    DONE,
    FAILED,
    Event,
    Machine,
    Question,
    Step,
    _code,
    _remote,
    _short,
    step,
)
from .messages import ID_LEN, KEY_LEN, MAC_LEN
from .wire import Message, field, message, struct

RAND_LEN: Final = 16
MAX_PNES: Final = 16
WRAPPED_LEN: Final = 12 + KEY_LEN + 16
#: the port of the gateway's connection to the CPNS server
SERVER: Final = "server"

Port = Hashable


class SetupType(IntEnum):
    """Which PNEs a PN setup includes."""

    ONE_TO_ONE = 1  #: one PNE and the gateway
    ALL = 2  #: every PNE the gateway can reach
    INVITED = 3  #: the PNEs named in the request

    @property
    def label(self) -> str:
        return {1: "1-1", 2: "all", 3: "invited"}[int(self)]


class PneCaps(IntFlag):
    """A PNE's capabilities as they matter for the link key."""

    NONE = 0
    UI = 1  #: enough user interface to take part in a key set-up (display, keys)
    PAN_SECURED = 2  #: the PAN already secures the link to the gateway (e.g. BLE LE SC)


class KeySource(IntEnum):
    """Where the key of a PNE-gateway link comes from."""

    LOCAL_EUKEY = 1  #: a LocalEUKey the server made for this link
    PREASSIGNED = 2  #: the PNE's pre-assigned key (no UI)
    PAN = 3  #: none: the PAN secures the link


def wants_local_key(caps: PneCaps) -> bool:
    """The seed's criterion: enough UI, and a link the PAN does not already secure."""
    return bool(caps & PneCaps.UI) and not caps & PneCaps.PAN_SECURED


def key_source_for(caps: PneCaps) -> KeySource:
    if wants_local_key(caps):
        return KeySource.LOCAL_EUKEY
    return KeySource.PAN if caps & PneCaps.PAN_SECURED else KeySource.PREASSIGNED


# --------------------------------------------------------------------------------------------
# Messages (type ids 70 to 79)
# --------------------------------------------------------------------------------------------


@struct
class PneInfo(Message):
    """What the gateway tells the server about one PNE."""

    pne_id: bytes = field(2, size=ID_LEN)
    name: str = field(3, max_len=64)
    caps: int = field(4)
    rand_pne: bytes = field(5, size=RAND_LEN)
    local_key_request: bool = field(6)
    contents: tuple[str, ...] = field(7, max_len=32, default=())


@message(type_id=70, max_size=1024)
class PnSetupRequest(Message):
    """PNE -> gateway: set up a PN (PNE-initiated)."""

    pne_id: bytes = field(2, size=ID_LEN)
    name: str = field(3, max_len=64)
    caps: int = field(4)
    setup_type: SetupType = field(5)
    rand_pne: bytes = field(6, size=RAND_LEN)
    local_key_request: bool = field(7)
    invited: tuple[bytes, ...] = field(8, size=ID_LEN, max_len=MAX_PNES, default=())
    contents: tuple[str, ...] = field(9, max_len=32, default=())


@message(type_id=71, max_size=256)
class PnSetupNotify(Message):
    """Gateway -> PNE: join the PN ``pn_id`` that this gateway is setting up."""

    pn_id: bytes = field(2, size=ID_LEN)
    gw_id: bytes = field(3, size=ID_LEN)
    gw_name: str = field(4, max_len=64)
    setup_type: SetupType = field(5)


@message(type_id=72, max_size=1024)
class PnSetupNotifyResponse(Message):
    """PNE -> gateway: the answer to a :class:`PnSetupNotify`."""

    pne_id: bytes = field(2, size=ID_LEN)
    name: str = field(3, max_len=64)
    caps: int = field(4)
    rand_pne: bytes = field(5, size=RAND_LEN)
    local_key_request: bool = field(6)
    accept: bool = field(7)
    contents: tuple[str, ...] = field(8, max_len=32, default=())


@message(type_id=73, max_size=8192)
class PnRegistrationRequest(Message):
    """Gateway -> server: register these PNEs in the PN ``pn_id``."""

    pn_id: bytes = field(2, size=ID_LEN)
    gw_name: str = field(3, max_len=64)
    setup_type: SetupType = field(4)
    pnes: tuple[PneInfo, ...] = field(5, max_len=MAX_PNES)


@message(type_id=74, max_size=256)
class AuthenticationRequest(Message):
    """Server -> gateway -> PNE: prove your EUKey against this fresh ``rand_server``."""

    pn_id: bytes = field(2, size=ID_LEN)
    pne_id: bytes = field(3, size=ID_LEN)
    gw_id: bytes = field(4, size=ID_LEN)
    rand_server: bytes = field(5, size=RAND_LEN)


@message(type_id=75, max_size=256)
class AuthenticationResponse(Message):
    """PNE -> gateway -> server: ``hash_PNE``."""

    pn_id: bytes = field(2, size=ID_LEN)
    pne_id: bytes = field(3, size=ID_LEN)
    hash_pne: bytes = field(4, size=MAC_LEN)


@struct
class PneResult(Message):
    """The server's verdict on one PNE, with its keys."""

    pne_id: bytes = field(2, size=ID_LEN)
    ok: bool = field(3)
    key_source: KeySource | None = field(4, default=None)
    hash_server: bytes | None = field(5, size=MAC_LEN, default=None)
    key_for_pne: bytes | None = field(6, size=WRAPPED_LEN, default=None)
    key_for_gw: bytes | None = field(7, size=WRAPPED_LEN, default=None)
    reason: str | None = field(8, max_len=120, default=None)


@message(type_id=76, max_size=8192)
class PnRegistrationResponse(Message):
    """Server -> gateway: the PN is registered (with at least one member) or not."""

    pn_id: bytes = field(2, size=ID_LEN)
    registered: bool = field(3)
    results: tuple[PneResult, ...] = field(4, max_len=MAX_PNES)


@message(type_id=77, max_size=1024)
class PnEstablishmentNotify(Message):
    """Gateway -> PNE: the outcome, with what the PNE checks the server's word by."""

    pn_id: bytes = field(2, size=ID_LEN)
    gw_id: bytes = field(3, size=ID_LEN)
    ok: bool = field(4)
    key_source: KeySource | None = field(5, default=None)
    hash_server: bytes | None = field(6, size=MAC_LEN, default=None)
    wrapped_key: bytes | None = field(7, size=WRAPPED_LEN, default=None)
    members: tuple[bytes, ...] = field(8, size=ID_LEN, max_len=MAX_PNES, default=())
    #: the gateway's nonce for the link session (absent when the PAN secures the link)
    nonce: bytes | None = field(9, size=RAND_LEN, default=None)
    reason: str | None = field(10, max_len=120, default=None)


@message(type_id=78, max_size=128)
class LinkConfirm(Message):
    """PNE <-> gateway: key confirmation of the link session."""

    mac: bytes = field(2, size=MAC_LEN)
    nonce: bytes | None = field(3, size=RAND_LEN, default=None)


# --------------------------------------------------------------------------------------------
# The cryptography (shared by the three roles, the tests and the bench)
# --------------------------------------------------------------------------------------------


def _ids(pn_id: bytes, pne_id: bytes, gw_id: bytes) -> bytes:
    return pn_id + pne_id + gw_id


def derive_sk(
    eukey: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, rand_pne: bytes, rand_server: bytes
) -> bytes:
    """``SK_PNE`` (see the module docstring)."""
    return hkdf(
        eukey, salt=rand_pne + rand_server, info=b"pairkit/1 cpns sk" + _ids(pn_id, pne_id, gw_id)
    )


def hash_pne(
    sk: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, rand_pne: bytes, rand_server: bytes
) -> bytes:
    """``hash_PNE``: a MAC under SK_PNE over the ids and both rands."""
    return mac(sk, b"pairkit/1 cpns hash_pne", _ids(pn_id, pne_id, gw_id), rand_pne, rand_server)


def hash_server(
    sk: bytes,
    *,
    pn_id: bytes,
    pne_id: bytes,
    gw_id: bytes,
    rand_pne: bytes,
    rand_server: bytes,
    hash_pne: bytes,
    wrapped: bytes | None,
    key_source: KeySource,
    members: tuple[bytes, ...],
) -> bytes:
    """``hash_server``: the server's proof to one PNE (it covers ``hash_PNE`` too)."""
    return mac(
        sk, b"pairkit/1 cpns hash_server", _ids(pn_id, pne_id, gw_id), rand_pne, rand_server,
        hash_pne, wrapped or b"", bytes([int(key_source)]), b"".join(sorted(members)),
    )


def _kek(eukey: bytes) -> bytes:
    return hkdf(eukey, salt=b"", info=b"pairkit/1 cpns kek")


def _wrap_ad(pn_id: bytes, pne_id: bytes, gw_id: bytes, recipient: bytes) -> bytes:
    return b"pairkit/1 cpns key" + _ids(pn_id, pne_id, gw_id) + recipient


def wrap_key(
    eukey: bytes, key: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, recipient: bytes,
    rng: Rng,
) -> bytes:
    """Seal ``key`` for the holder of ``eukey``, bound to this link and recipient."""
    nonce = rng(12)
    ad = _wrap_ad(pn_id, pne_id, gw_id, recipient)
    return nonce + ChaCha20Poly1305(_kek(eukey)).encrypt(nonce, key, ad)


def unwrap_key(
    eukey: bytes, wrapped: bytes, *, pn_id: bytes, pne_id: bytes, gw_id: bytes, recipient: bytes
) -> bytes:
    """Open a :func:`wrap_key` copy; :class:`AuthenticationError` if it is not ours or altered."""
    if len(wrapped) != WRAPPED_LEN:
        raise DecodeError("a wrapped key has the wrong length")
    ad = _wrap_ad(pn_id, pne_id, gw_id, recipient)
    try:
        return ChaCha20Poly1305(_kek(eukey)).decrypt(wrapped[:12], wrapped[12:], ad)
    except Exception:  # InvalidTag: wrong key, wrong link, or altered
        raise AuthenticationError("a wrapped link key did not open") from None


def preassigned_key(eukey: bytes) -> bytes:
    """The pre-assigned PAN key of a PNE without UI (known to it and to the server)."""
    return hkdf(eukey, salt=b"", info=b"pairkit/1 cpns preassigned")


RECIPIENT_PNE: Final = b"pne"
RECIPIENT_GW: Final = b"gw"
RECIPIENT_PRE: Final = b"pre"


@dataclasses.dataclass(frozen=True)
class LinkSession:
    """The secure session between a PNE and its gateway (directional keys)."""

    send_key: bytes = dataclasses.field(repr=False)
    recv_key: bytes = dataclasses.field(repr=False)
    #: both sides show the same; never the key
    fingerprint: str


def _link_keys(
    key: bytes, ids: bytes, nonce_gw: bytes, nonce_pne: bytes
) -> tuple[bytes, bytes, bytes, str]:
    """(pne->gw, gw->pne, confirmation key, fingerprint) of the link session."""
    okm = hkdf(key, salt=nonce_gw + nonce_pne, info=b"pairkit/1 cpns link" + ids, length=104)
    fp = okm[96:].hex()
    return okm[:32], okm[32:64], okm[64:96], "-".join(fp[i : i + 4] for i in range(0, 16, 4))


# --------------------------------------------------------------------------------------------
# The PNE
# --------------------------------------------------------------------------------------------


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
            raise ConfigError("step_timeout must be between 0.1 and 3600 seconds")


@dataclasses.dataclass(frozen=True)
class PnMembership:
    """What a PNE ends with: its PN, the members, its link key's source and the session."""

    pn_id: bytes
    gw_id: bytes
    members: tuple[bytes, ...]
    key_source: KeySource
    link_key: bytes | None = dataclasses.field(repr=False)
    session: LinkSession | None


S_START = "start"
S_NOTIFY = "await-setup-notify"
S_AUTH = "await-authentication"
S_ESTABLISH = "await-establishment"
S_CONFIRM = "await-link-confirm"


class PneMachine(Machine):
    """A PNE, PNE-initiated (:meth:`start`) or answering a gateway's notify (``listen=True``)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_NOTIFY, PnSetupNotify): step("_on_notify", S_AUTH),
        (S_AUTH, AuthenticationRequest): step("_on_auth", S_ESTABLISH),
        (S_ESTABLISH, PnEstablishmentNotify): step("_on_establish", DONE, S_CONFIRM),
        (S_CONFIRM, LinkConfirm): step("_on_confirm", DONE),
    }
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
        self._pn_id, self._gw_id = msg.pn_id, msg.gw_id
        c = self.config
        self._send(PnSetupNotifyResponse(
            pne_id=c.pne_id, name=c.name, caps=int(c.caps), rand_pne=self._rand,
            local_key_request=self.local_key_request, accept=True, contents=c.contents,
        ))
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
        self._wait(now, S_ESTABLISH, "the gateway did not say whether the PN was established")

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
        key: bytes | None = None
        if source is KeySource.LOCAL_EUKEY:
            if msg.wrapped_key is None:
                raise DecodeError("the establishment notice lacks this PNE's LocalEUKey")
            key = unwrap_key(self.config.eukey, msg.wrapped_key, **ids, recipient=RECIPIENT_PNE)
        elif source is KeySource.PREASSIGNED:
            key = preassigned_key(self.config.eukey)
        self._members = msg.members
        self._key_source = source
        self._link_key = key
        if key is None:
            # The PAN secures the link: no session of ours on top of it.
            self._done(None)
            return
        if msg.nonce is None:
            raise ProtocolError(
                "the gateway set up no secure session on a link the PAN leaves open"
            )
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
            self._pn_id, self._gw_id, self._members, self._key_source, self._link_key, session
        )
        self._finish()


# --------------------------------------------------------------------------------------------
# The CPNS server (one gateway connection, after the key server's proof)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpnsKeys:
    """The server store's answer to :class:`CpnsKeysAsked`."""

    #: the gateway's EUKey (None: not enrolled with one)
    gw_eukey: bytes | None = dataclasses.field(repr=False)
    #: the EUKeys of the enrolled PNEs among those asked (others are left out)
    pne_eukeys: Mapping[bytes, bytes] = dataclasses.field(repr=False)
    #: the gateway that registered this PN before, if any
    pn_owner: bytes | None = None


@dataclasses.dataclass(frozen=True)
class CpnsKeysAsked(Question):
    """Look up the factory keys of a gateway and its PNEs."""

    hook: ClassVar[str] = "cpns_keys"
    gw_id: bytes
    pn_id: bytes
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
    """A PN inventory to register (at least one member)."""

    pn_id: bytes
    gw_id: bytes
    gw_name: str
    setup_type: SetupType
    members: tuple[ServerMember, ...]


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
            raise ConfigError("step_timeout must be between 0.1 and 3600 seconds")
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
        self._request = request
        self._pending = {p.pne_id: _Pending(p) for p in request.pnes}
        self.state = S_KEYS
        self._emit(CpnsKeysAsked(self.gw_id, request.pn_id, tuple(ids)))

    def _on_keys(self, question: Question, value: Any, now: float) -> None:
        if not isinstance(value, CpnsKeys):
            raise ProtocolError("the answer to CpnsKeysAsked must be CpnsKeys")
        if value.gw_eukey is None:
            raise NotFoundError(
                "this gateway is not enrolled with a factory key (EUKey): enrol it with one"
            )
        if value.pn_owner is not None and value.pn_owner != self.gw_id:
            raise AccessDeniedError("this PN id belongs to another gateway")
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
        self._expect_by(now + self._timeout, "the PNEs did not answer the authentication request")

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
            stored.append(ServerMember(
                pne_id, p.info.name, p.info.caps, p.info.contents, source, local
            ))
        if not stored:
            self._answer(registered=False)
            return
        self.state = S_STORE
        self._expect_by(None)
        self._emit(CpnsRegisterAsked(ServerInventory(
            req.pn_id, self.gw_id, req.gw_name, req.setup_type, tuple(stored)
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


# --------------------------------------------------------------------------------------------
# The gateway: one machine, several ports (the server and one link per PNE)
# --------------------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if len(self.gw_id) != ID_LEN:
            raise ConfigError(f"a gateway id is {ID_LEN} bytes")
        if len(self.eukey) != KEY_LEN:
            raise ConfigError(f"an EUKey is {KEY_LEN} bytes")
        if self.pn_id is not None and len(self.pn_id) != ID_LEN:
            raise ConfigError(f"a PN id is {ID_LEN} bytes")
        if not 0.01 <= self.collect_window <= 600 or not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("collect_window or step_timeout out of range")


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


G_IDLE = "idle"
G_COLLECT = "collect"
G_REGISTER = "register"
G_CONFIRM = "confirm"

_PNE_MESSAGES = (PnSetupRequest, PnSetupNotifyResponse, AuthenticationResponse, LinkConfirm)


class Gateway:
    """The PN gateway: PNE links and the server connection in one sans-I/O machine.

    The I/O layer calls :meth:`attach` for each PNE link (any hashable ``port``), feeds every
    message with :meth:`receive` ``(port, data, now)``, sends what :meth:`outgoing` gives to
    each port (:data:`SERVER` is the server connection, opened when the first message for it
    appears), and honours :meth:`next_deadline`.  A PNE that fails or misbehaves is dropped (an
    ``Abort`` goes to it, a :class:`PneDropped` event to the user) and the others go on; an
    error on the server side poisons the whole machine (STYLE.md rule 4).
    """

    TABLE: ClassVar[dict[tuple[str, type], str]] = {
        (G_IDLE, PnSetupRequest): "_on_setup_request",
        (G_COLLECT, PnSetupNotifyResponse): "_on_notify_response",
        (G_REGISTER, AuthenticationRequest): "_on_auth_request",
        (G_REGISTER, AuthenticationResponse): "_on_auth_response",
        (G_REGISTER, PnRegistrationResponse): "_on_registration",
        (G_CONFIRM, LinkConfirm): "_on_link_confirm",
    }

    def __init__(self, config: GatewayConfig, *, now: float, rng: Rng = os.urandom) -> None:
        self.config = config
        self._rng = rng
        self.pn_id = config.pn_id or rng(ID_LEN)
        self.state = G_IDLE
        self._links: dict[Port, _Link] = {}
        self._out: list[tuple[Port, bytes]] = []
        self._events: list[Event] = []
        self._error: PairingError | None = None
        self._deadline: float | None = now + config.step_timeout
        self._deadline_text = "no PNE asked to set up a PN"
        self.setup_type: SetupType | None = None
        #: pn_id -> pne_id -> port: where the gateway relays the server's messages
        self.routing: dict[bytes, dict[bytes, Port]] = {}
        self.inventory: PnInventory | None = None

    # -- the driver's side ----------------------------------------------------------------

    def attach(self, port: Port, *, pne_id: bytes | None = None, pan_secured: bool = False) -> None:
        """A PNE link is up (``pne_id`` when the PAN told who is there)."""
        if port == SERVER or port in self._links:
            raise ConfigError(f"port {port!r} is already in use")
        self._links[port] = _Link(port, pne_id, pan_secured)

    def outgoing(self) -> list[tuple[Port, bytes]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        return None if self.state in (DONE, FAILED) else self._deadline

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    @property
    def error(self) -> PairingError | None:
        return self._error

    @property
    def server_done(self) -> bool:
        """Whether the server has answered the registration (it may hang up from then on)."""
        return self.state in (G_CONFIRM, DONE) or self.inventory is not None

    def start(self, now: float, setup_type: SetupType, invited: tuple[bytes, ...] = ()) -> None:
        """Gateway-initiated: notify the PNEs that ``setup_type`` includes."""
        self._check_usable()
        if self.state != G_IDLE:
            raise ProtocolError("this gateway's setup has already started")
        if setup_type is SetupType.INVITED and not invited:
            raise ConfigError("setup type 'invited' needs the invited PNE ids")
        links = list(self._links.values())
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

    def receive(self, port: Port, data: bytes, now: float) -> None:
        """Feed one whole message that arrived on ``port``."""
        link = self._links.get(port)
        if port != SERVER and link is None:
            raise ConfigError(f"unknown port {port!r}")
        if link is not None and link.state in ("failed", "idle"):
            # A PNE already dropped (its Abort after a failure notice, say), or one left out
            # of this setup: nothing it says matters any more.
            return
        self._check_usable()
        try:
            msg = wire.decode(data)
            if isinstance(msg, wire.Abort):
                raise _remote(msg)
            from_pne = isinstance(msg, _PNE_MESSAGES)
            name = self.TABLE.get((self.state, type(msg)))
            if name is None or from_pne != (port != SERVER):
                who = "the server" if port == SERVER else "a PNE"
                raise ProtocolError(
                    f"{who} sent {type(msg).__name__} when it was not expected "
                    f"(state {self.state})"
                )
            getattr(self, name)(port, msg, now)
        except PairingError as exc:
            if port == SERVER:
                self._fail(exc)
                raise
            assert link is not None
            self._drop(link, exc, now)
        if self._error is not None:  # the setup as a whole failed (no PNE left, say)
            raise self._error

    def link_closed(self, port: Port, now: float) -> None:
        """A PNE link went away."""
        link = self._links.get(port)
        if link is not None and link.state not in ("failed", "idle", "member"):
            self._drop(link, LinkClosedError("the link to the PNE closed"), now)

    def on_timeout(self, now: float) -> None:
        """Tell the machine that ``now`` has come."""
        self._check_usable()
        if self._deadline is None or now < self._deadline:
            return
        try:
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
        except PairingError as exc:
            self._fail(exc)
            raise
        if self._error is not None:
            raise self._error

    def abort(self, exc: PairingError) -> None:
        """Stop from outside (the server link broke, the user cancelled)."""
        if self.state not in (DONE, FAILED):
            self._fail(exc)

    # -- setup ----------------------------------------------------------------------------

    def _on_setup_request(self, port: Port, msg: PnSetupRequest, now: float) -> None:
        link = self._links[port]
        self._check_link_id(link, msg.pne_id)
        self._check_flag(msg.caps, msg.local_key_request)
        link.info = PneInfo(
            msg.pne_id, msg.name, msg.caps, msg.rand_pne, msg.local_key_request, msg.contents
        )
        link.state = "joined"
        self.setup_type = msg.setup_type
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
        note = PnSetupNotify(self.pn_id, self.config.gw_id, self.config.name, self.setup_type)
        for link in links:
            link.state = "notified"
            self._out.append((link.port, note.encode()))
        self.state = G_COLLECT
        self._deadline = now + self.config.collect_window
        self._deadline_text = "no PNE answered the setup notify"

    def _on_notify_response(self, port: Port, msg: PnSetupNotifyResponse, now: float) -> None:
        link = self._links[port]
        if link.state != "notified":
            raise ProtocolError("a setup notify response that was not asked for")
        self._check_link_id(link, msg.pne_id)
        if not msg.accept:
            link.state = "idle"
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
        self._out.append((SERVER, PnRegistrationRequest(
            self.pn_id, self.config.name, self.setup_type, infos
        ).encode()))
        self.state = G_REGISTER
        # The server waits for every PNE's answer, each within its own step timeout.
        self._deadline = now + 2 * self.config.step_timeout
        self._deadline_text = "the CPNS server did not answer the registration"

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
            self._out.append((target, msg.encode()))
        elif link.state != "failed":
            raise ProtocolError("the server asked the same PNE twice")

    def _on_auth_response(self, port: Port, msg: AuthenticationResponse, now: float) -> None:
        link = self._links[port]
        if link.state != "authenticating":
            raise ProtocolError("an authentication response that was not asked for")
        if msg.pn_id != self.pn_id or msg.pne_id != link.pne_id:
            raise ProtocolError("the authentication response names another PN or PNE")
        link.state = "authenticated"
        self._out.append((SERVER, msg.encode()))

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
        for pne_id, link in by_id.items():
            if link.state in ("failed", "idle") or pne_id is None:
                continue
            r = results.get(pne_id)
            if r is None or not r.ok:
                reason = (r.reason if r is not None else None) or "not registered"
                self._out.append((link.port, PnEstablishmentNotify(
                    self.pn_id, self.config.gw_id, False, reason=reason
                ).encode()))
                link.state, link.reason = "failed", reason
                self._events.append(PneDropped(link.port, pne_id, reason))
                continue
            assert link.info is not None
            source = r.key_source
            if source is None or r.hash_server is None:
                raise ProtocolError("the server's verdict on a member lacks its proof")
            if source is not key_source_for(PneCaps(link.info.caps)):
                raise ProtocolError("the server chose a link key against the criteria")
            key: bytes | None = None
            if source is not KeySource.PAN:
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
            session_needed = key is not None
            link.nonce = self._rng(RAND_LEN) if session_needed else None
            link.member = PnMember(
                pne_id, link.info.name, PneCaps(link.info.caps), link.info.contents, source, key
            )
            self._out.append((link.port, PnEstablishmentNotify(
                self.pn_id, self.config.gw_id, True, source, r.hash_server, r.key_for_pne,
                members, link.nonce,
            ).encode()))
            link.state = "confirming" if session_needed else "member"
        self.state = G_CONFIRM
        self._deadline = now + self.config.step_timeout
        self._deadline_text = "a PNE did not confirm the link session"
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
        self._out.append((port, LinkConfirm(mac(kc, b"gw", link.nonce, msg.nonce)).encode()))
        link.member = dataclasses.replace(member, session=LinkSession(g2p, p2g, fp))
        link.state = "member"
        self._settle(now)

    def _settle(self, now: float) -> None:
        """In the confirm phase: done once no PNE is left to confirm."""
        if self.state != G_CONFIRM or any(k.state == "confirming" for k in self._links.values()):
            return
        assert self.setup_type is not None
        members = tuple(k.member for k in self._links.values() if k.member is not None)
        failed = {
            k.pne_id: k.reason or "failed"
            for k in self._links.values()
            if k.state == "failed" and k.pne_id is not None
        }
        self.inventory = PnInventory(
            self.pn_id, self.config.gw_id, self.setup_type, members, failed
        )
        self.state = DONE
        self._deadline = None

    # -- errors ---------------------------------------------------------------------------

    def _drop(self, link: _Link, exc: PairingError, now: float, *, settle: bool = True) -> None:
        was = link.state
        link.state = "failed"
        link.reason = _short(str(exc))
        if isinstance(exc, RemoteError):
            link.reason = _short(str(getattr(exc, "local", exc)))
        elif not isinstance(exc, LinkClosedError):
            reason = _short(str(exc))
            self._out.append((link.port, wire.Abort(code=_code(exc), reason=reason).encode()))
        if was == "confirming" and link.member is not None:
            # The server registered it; it stays a member, with no session of ours.
            link.state = "member"
        self._events.append(PneDropped(link.port, link.pne_id, link.reason))
        if not settle:
            return
        if self.state == G_COLLECT and not any(
            k.state == "notified" for k in self._links.values()
        ):
            self._register(now)
        elif self.state == G_CONFIRM:
            self._settle(now)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self.state == DONE:
            raise ProtocolError("the PN setup is already complete")

    def _fail(self, exc: PairingError) -> None:
        if self._error is not None:
            return
        self._error = exc
        self.state = FAILED
        self._deadline = None
        reason = str(getattr(exc, "local", exc))  # a server's reason without "the peer stopped"
        abort = wire.Abort(code=_code(exc), reason=_short(reason)).encode()
        if not isinstance(exc, RemoteError | PairingTimeout):
            self._out.append((SERVER, abort))
        # The PNEs are told in every case: they wait on this gateway, not on the server.
        for link in self._links.values():
            if link.state not in ("failed", "idle"):
                self._out.append((link.port, abort))
