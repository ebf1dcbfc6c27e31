"""CPNS messages (type ids 70 to 79, and 100 to 109 for the PN's life after its setup), their
enums and constants (see the package docstring)."""

from __future__ import annotations

from collections.abc import Hashable
from enum import CONFORM, IntEnum, IntFlag
from typing import Final

from ..messages import ID_LEN, KEY_LEN, MAC_LEN, check_ms
from ..wire import Message, field, message, struct

RAND_LEN: Final = 16
MAX_PNES: Final = 16
WRAPPED_LEN: Final = 12 + KEY_LEN + 16
#: the port of the gateway's connection to the CPNS server
SERVER: Final = "server"
#: the bounds of :attr:`PnRegistrationRequest.auth_wait_ms` (0.1 s to an hour, the bounds of
#: a gateway's step timeout)
AUTH_WAIT_MS: Final = (100, 3_600_000)
#: the server's wait an :class:`AuthenticationRequest` relayed to a PNE stands for when it does
#: not say (:attr:`AuthenticationRequest.auth_wait_ms`): half the default 30 s step of a gateway
DEFAULT_AUTH_WAIT_MS: Final = 15_000
#: the longest server's wait a PNE believes of its gateway: a key server waits no longer than its
#: own deadline (three times its 10 s step by default), so a gateway that claims more holds no
#: PNE for it (:func:`pairing.cpns.pne.outcome_wait`)
BELIEVED_AUTH_WAIT_MS: Final = 30_000

Port = Hashable


class SetupType(IntEnum):
    """Which PNEs a PN setup includes."""

    ONE_TO_ONE = 1  #: one PNE and the gateway
    ALL = 2  #: every PNE the gateway can reach
    INVITED = 3  #: the PNEs named in the request

    @property
    def label(self) -> str:
        return {1: "1-1", 2: "all", 3: "invited"}[int(self)]


class PneCaps(IntFlag, boundary=CONFORM):
    """A PNE's capabilities as they matter for the link key (bits it does not name are
    dropped, so a peer's values cannot grow the enum's table: :class:`~pairing.negotiation.
    Caps`)."""

    NONE = 0
    UI = 1  #: enough user interface to take part in a key set-up (display, keys)
    PAN_SECURED = 2  #: the PAN already secures the link to the gateway (e.g. BLE LE SC)


class KeySource(IntEnum):
    """Where the key of a PNE-gateway link comes from."""

    LOCAL_EUKEY = 1  #: a LocalEUKey the server made for this link (a PNE with enough UI)
    PREASSIGNED = 2  #: the PNE's pre-assigned key (no UI)
    #: none (pairkit before R01 withheld the LocalEUKey on a secured PAN): never chosen now,
    #: kept so that old server inventories still read; a machine that is offered it refuses
    PAN = 3


class GatewayCaps(IntFlag, boundary=CONFORM):
    """The capabilities of the device the PN gateway is deployed on (PN Registration Request,
    "PN GW Info: capability information"); bits it does not name are dropped, as in
    :class:`PneCaps`."""

    NONE = 0
    DISPLAY = 1  #: it shows its owner what happens and asks before a PN is set up
    KEYPAD = 2  #: its owner can type (a PIN, a name)
    ROUTER = 4  #: it routes traffic between the PN's members


def wants_local_key(caps: PneCaps) -> bool:
    """The source's R01 criterion: a PNE with enough UI asks for a LocalEUKey, *regardless of
    the security of the PAN* between it and the gateway (OMA CPNS CR, R01 note); one without UI
    uses its pre-assigned key."""
    return bool(caps & PneCaps.UI)


def key_source_for(caps: PneCaps) -> KeySource:
    """The link key a PNE with ``caps`` gets (R01): LocalEUKey with UI, pre-assigned without."""
    return KeySource.LOCAL_EUKEY if wants_local_key(caps) else KeySource.PREASSIGNED


def session_needed(pne_caps: PneCaps, gateway_link_secured: bool) -> bool:
    """Whether the PNE and the gateway set up a secure session on their link (R01's second
    criterion: "unless the underlying PAN provides enough security").

    pairkit's rule is stronger than the source's: the PAN counts as securing the link only when
    *both* ends say so, the PNE in its capabilities and the gateway from its own link
    (``Link.encrypted``).  Each end knows only its own side, and the PNE's capabilities cross
    the PAN before anything authenticates them, so a device on an open link could claim a
    secured one to keep the session off; two ends that agree cannot be talked out of it by
    either claim alone.
    """
    return not (pne_caps & PneCaps.PAN_SECURED and gateway_link_secured)


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
    #: who started this setup (source step 2, "the initiator of PN Setup"): a PNE's id and
    #: name, or None when the gateway itself initiated it
    initiator: bytes | None = field(6, size=ID_LEN, default=None)
    initiator_name: str | None = field(7, max_len=64, default=None)


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
    #: "PN GW Info": the capabilities of the gateway's device (:class:`GatewayCaps`) ...
    gw_caps: int = field(6, default=0)
    #: ... and its subscription: the device id under which it is enrolled with this server
    #: (the server checks it against the gateway it authenticated)
    subscription: bytes | None = field(7, size=ID_LEN, default=None)
    #: how long, in milliseconds, the PNEs have to answer the server's authentication request
    #: (:data:`AUTH_WAIT_MS`); the server waits the shorter of this and its own deadline, so
    #: that its answer reaches the gateway before the gateway gives up on the registration
    #: (absent: the server's own deadline; attack review of the setup retry, finding 4)
    auth_wait_ms: int | None = field(8, default=None)

    def __post_init__(self) -> None:
        check_ms("PnRegistrationRequest.auth_wait_ms", self.auth_wait_ms, AUTH_WAIT_MS)


@message(type_id=74, max_size=256)
class AuthenticationRequest(Message):
    """Server -> gateway -> PNE: prove your EUKey against this fresh ``rand_server``."""

    pn_id: bytes = field(2, size=ID_LEN)
    pne_id: bytes = field(3, size=ID_LEN)
    gw_id: bytes = field(4, size=ID_LEN)
    rand_server: bytes = field(5, size=RAND_LEN)
    #: on the gateway's relay to the PNE: how long the server waits for the PNEs' answers (the
    #: gateway's :attr:`PnRegistrationRequest.auth_wait_ms`, within :data:`AUTH_WAIT_MS`), so
    #: that the PNE waits for the outcome past it; sent only when it is not
    #: :data:`DEFAULT_AUTH_WAIT_MS` (absent: the default), so a default gateway's relay is the
    #: server's message as before.  The gateway's word: the server does not set it, and the
    #: gateway replaces what a server wrote (PN finding 4 of the registration's wait review)
    auth_wait_ms: int | None = field(6, default=None)

    def __post_init__(self) -> None:
        check_ms("AuthenticationRequest.auth_wait_ms", self.auth_wait_ms, AUTH_WAIT_MS)


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
    reason: str | None = field(8, max_len=120, default=None, one_line=True)


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
    reason: str | None = field(10, max_len=120, default=None, one_line=True)
    #: the members' names, in the order of ``members`` (the PN inventory a PNE shows; the
    #: server's proof covers the ids, the names are the gateway's word)
    member_names: tuple[str, ...] = field(11, max_len=MAX_PNES, default=())
    #: the gateway's name (a PNE that started the setup has not heard it yet)
    gw_name: str | None = field(12, max_len=64, default=None)


@message(type_id=78, max_size=128)
class LinkConfirm(Message):
    """PNE <-> gateway: key confirmation of the link session."""

    mac: bytes = field(2, size=MAC_LEN)
    nonce: bytes | None = field(3, size=RAND_LEN, default=None)




# -- after the setup: a PN's life (type ids 100 to 109, issue 14) ------------------------------

#: the largest routed body (one secure-channel record carries the whole PnData)
MAX_BODY: Final = 16 * 1024


@message(type_id=100, max_size=512)
class PnAttach(Message):
    """PNE -> gateway, first on a link: this PNE is in reach and waits to be asked to join a
    PN (the gateway's :class:`PnSetupNotify`, for a setup it or another PNE starts).  Unproven
    (as every word before the server's proof): it only makes the PNE one to notify."""

    pne_id: bytes = field(2, size=ID_LEN)
    name: str = field(3, max_len=64)
    caps: int = field(4)


@message(type_id=101, max_size=128)
class PnLinkResume(Message):
    """Member -> gateway, first on a link: open a new link session from the link key this
    member holds for ``pn_id`` (its LocalEUKey or pre-assigned key), with a fresh nonce."""

    pn_id: bytes = field(2, size=ID_LEN)
    pne_id: bytes = field(3, size=ID_LEN)
    nonce: bytes = field(4, size=RAND_LEN)


@message(type_id=102, max_size=128)
class PnLinkAccept(Message):
    """Gateway -> member: its fresh nonce and its key confirmation; the member answers with a
    :class:`LinkConfirm` (its own)."""

    nonce: bytes = field(2, size=RAND_LEN)
    mac: bytes = field(3, size=MAC_LEN)


@message(type_id=103, max_size=MAX_BODY + 256)
class PnData(Message):
    """Routed traffic, inside a link's secure channel: member -> gateway -> member.  The
    gateway sets ``src`` to the member whose channel it came from (a member cannot speak for
    another)."""

    pn_id: bytes = field(2, size=ID_LEN)
    src: bytes = field(3, size=ID_LEN)
    dst: bytes = field(4, size=ID_LEN)
    msg_id: int = field(5)
    body: bytes = field(6, max_len=MAX_BODY)


@message(type_id=104, max_size=256)
class PnDelivery(Message):
    """Gateway -> sending member: what became of its :class:`PnData` ``msg_id``."""

    msg_id: int = field(2)
    delivered: bool = field(3)
    reason: str | None = field(4, max_len=120, default=None, one_line=True)


@message(type_id=105, max_size=256)
class PnPinOffer(Message):
    """Element -> gateway, first on a link: secure this PAN link with the PIN the gateway
    shows (CPace, :mod:`pairing.cpns.pinlink`): the element's CPace share and its id."""

    pne_id: bytes = field(2, size=ID_LEN)
    share: bytes = field(3, size=32)


@message(type_id=106, max_size=256)
class PnPinAnswer(Message):
    """Gateway -> element: its CPace share, its id and its key confirmation."""

    gw_id: bytes = field(2, size=ID_LEN)
    share: bytes = field(3, size=32)
    tag: bytes = field(4, size=64)


@message(type_id=107, max_size=128)
class PnPinConfirm(Message):
    """Element -> gateway: the element's key confirmation."""

    tag: bytes = field(2, size=64)
