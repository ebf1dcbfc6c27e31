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
    GW  -> PNE_k   PnSetupNotify(pn_id, gw, initiator)   for "All": every other PNE in reach;
    PNE_k -> GW    PnSetupNotifyResponse(..., accept)    for "invited": those named; 1-1: none

Gateway-initiated::

    GW  -> PNE_k   PnSetupNotify(pn_id, gw, setup type)       (1-1, All or invited)
    PNE_k -> GW    PnSetupNotifyResponse(capabilities, contents, rand_PNE, flag, accept)

Registration (both)::

    GW  -> server  PnRegistrationRequest(pn_id, gateway name, capabilities and subscription,
                   setup type, PNE infos with the rands, how long the PNEs have to answer)
    server -> GW -> PNE    AuthenticationRequest(pn_id, pne_id, gw_id, rand_server)
                           (the gateway routes it by its routing table, keyed by pn_id, and
                           tells the PNE how long the server waits, unless it is the default)
    PNE -> GW -> server    AuthenticationResponse(pn_id, pne_id, hash_PNE)
                           (a PNE that has not answered when that wait, or the server's own
                           deadline, ends fails; the others go on)
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

The source's criteria as its R01 compromise states them: a PNE with enough user interface gets a
LocalEUKey *regardless of the security of the PAN*; a PNE without UI uses its pre-assigned key
(``HKDF(EUKey, "pairkit/1 cpns preassigned")``, which the server releases to the gateway wrapped
under the gateway's EUKey).  So every member holds a link key, and can reconnect to its gateway
later with a fresh session from it.  A secure session on the PAN link (:class:`LinkSession`) is
set up from that key unless the PAN secures the link, which pairkit believes only when both ends
say so (:func:`session_needed` says why).  A PNE that declines a setup notify is listed as
declined; one whose link confirmation fails is out of the PN and in the failed list.
"""

from __future__ import annotations

from .gateway import (
    G_COLLECT,
    G_CONFIRM,
    G_IDLE,
    G_REGISTER,
    Gateway,
    GatewayConfig,
    PneDropped,
    PnInventory,
    PnMember,
)
from .keys import (
    RECIPIENT_GW,
    RECIPIENT_PNE,
    RECIPIENT_PRE,
    LinkSession,
    derive_sk,
    hash_pne,
    hash_server,
    preassigned_key,
    unwrap_key,
    wrap_key,
)
from .messages import (
    AUTH_WAIT_MS,
    BELIEVED_AUTH_WAIT_MS,
    DEFAULT_AUTH_WAIT_MS,
    MAX_PNES,
    RAND_LEN,
    SERVER,
    WRAPPED_LEN,
    AuthenticationRequest,
    AuthenticationResponse,
    GatewayCaps,
    KeySource,
    LinkConfirm,
    PnAttach,
    PnData,
    PnDelivery,
    PneCaps,
    PneInfo,
    PneResult,
    PnEstablishmentNotify,
    PnLinkAccept,
    PnLinkResume,
    PnPinAnswer,
    PnPinConfirm,
    PnPinOffer,
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
from .pne import (
    S_ASK,
    S_AUTH,
    S_CONFIRM,
    S_ESTABLISH,
    S_NOTIFY,
    S_START,
    PneConfig,
    PneMachine,
    PnJoinAsked,
    PnMembership,
    outcome_wait,
)
from .server import (
    S_AUTHS,
    S_BEGIN,
    S_KEYS,
    S_STORE,
    CpnsKeys,
    CpnsKeysAsked,
    CpnsRegisterAsked,
    CpnsServer,
    ServerInventory,
    ServerMember,
)

__all__ = [
    "AUTH_WAIT_MS",
    "BELIEVED_AUTH_WAIT_MS",
    "DEFAULT_AUTH_WAIT_MS",
    "G_COLLECT",
    "G_CONFIRM",
    "G_IDLE",
    "G_REGISTER",
    "MAX_PNES",
    "RAND_LEN",
    "RECIPIENT_GW",
    "RECIPIENT_PNE",
    "RECIPIENT_PRE",
    "SERVER",
    "S_ASK",
    "S_AUTH",
    "S_AUTHS",
    "S_BEGIN",
    "S_CONFIRM",
    "S_ESTABLISH",
    "S_KEYS",
    "S_NOTIFY",
    "S_START",
    "S_STORE",
    "WRAPPED_LEN",
    "AuthenticationRequest",
    "AuthenticationResponse",
    "CpnsKeys",
    "CpnsKeysAsked",
    "CpnsRegisterAsked",
    "CpnsServer",
    "Gateway",
    "GatewayCaps",
    "GatewayConfig",
    "KeySource",
    "LinkConfirm",
    "LinkSession",
    "PnAttach",
    "PnData",
    "PnDelivery",
    "PnEstablishmentNotify",
    "PnInventory",
    "PnJoinAsked",
    "PnLinkAccept",
    "PnLinkResume",
    "PnMember",
    "PnMembership",
    "PnPinAnswer",
    "PnPinConfirm",
    "PnPinOffer",
    "PnRegistrationRequest",
    "PnRegistrationResponse",
    "PnSetupNotify",
    "PnSetupNotifyResponse",
    "PnSetupRequest",
    "PneCaps",
    "PneConfig",
    "PneDropped",
    "PneInfo",
    "PneMachine",
    "PneResult",
    "Port",
    "ServerInventory",
    "ServerMember",
    "SetupType",
    "derive_sk",
    "hash_pne",
    "hash_server",
    "key_source_for",
    "outcome_wait",
    "preassigned_key",
    "session_needed",
    "unwrap_key",
    "wants_local_key",
    "wrap_key",
]
