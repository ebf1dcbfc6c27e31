"""CPNS PN establishment as machines joined in memory: flows, criteria, proofs, tampering."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing import cbor, wire
from pairkit.pairing.cpns import (
    RECIPIENT_GW,
    RECIPIENT_PNE,
    SERVER,
    AuthenticationRequest,
    CpnsKeys,
    CpnsServer,
    Gateway,
    GatewayConfig,
    KeySource,
    LinkConfirm,
    PneCaps,
    PneConfig,
    PneInfo,
    PneMachine,
    PneResult,
    PnEstablishmentNotify,
    PnRegistrationRequest,
    PnRegistrationResponse,
    PnSetupNotify,
    PnSetupNotifyResponse,
    PnSetupRequest,
    SetupType,
    derive_sk,
    hash_pne,
    preassigned_key,
    unwrap_key,
    wants_local_key,
)
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RemoteError,
)
from tests.ttp_harness import flip, make_world, run_cpns_machines, start_initiator


def _members(world) -> list[bytes]:
    assert world.gw.inventory is not None
    return sorted(m.pne_id for m in world.gw.inventory.members)


# -- flows and setup types -------------------------------------------------------------------


def test_pne_initiated_all_wrong_eukey_fails_and_pn_registers_with_the_other() -> None:
    world, _, ids = make_world(n=2, wrong=(1,))
    pne0 = world.pnes[0]
    pne0.config = dataclasses.replace(pne0.config, setup_type=SetupType.ALL)
    run_cpns_machines(world, start=start_initiator(0))
    assert world.gw.done and pne0.done
    assert _members(world) == [ids[0]]
    assert ids[1] in world.gw.inventory.failed
    assert isinstance(world.errors[1], AuthenticationError)
    assert "did not accept this PNE" in str(world.errors[1])
    (inv,) = world.stored
    assert [m.pne_id for m in inv.members] == [ids[0]]
    assert pne0.membership.members == (ids[0],)
    # The message sequence of the seed, in order, for the initiator
    names = [n for s, d, n in world.trace if 0 in (s, d)]
    assert names == [
        "PnSetupRequest", "AuthenticationRequest", "AuthenticationResponse",
        "PnEstablishmentNotify", "LinkConfirm", "LinkConfirm",
    ]
    assert ("gw", 1, "PnSetupNotify") in world.trace


def test_one_to_one_notifies_nobody_else() -> None:
    world, _, ids = make_world(n=3)
    run_cpns_machines(world, start=start_initiator(0))
    assert _members(world) == [ids[0]]
    assert not any(d in (1, 2) for _, d, _ in world.trace)
    assert world.stored[0].setup_type is SetupType.ONE_TO_ONE


def test_invited_notifies_only_the_invited() -> None:
    world, _, ids = make_world(n=3, pne_kw={0: {}})
    pne0 = world.pnes[0]
    pne0.config = dataclasses.replace(pne0.config, setup_type=SetupType.INVITED,
                                      invited=(ids[2],))
    run_cpns_machines(world, start=start_initiator(0))
    assert _members(world) == sorted([ids[0], ids[2]])
    assert not any(d == 1 for _, d, _ in world.trace)


@pytest.mark.parametrize("setup", [SetupType.ALL, SetupType.INVITED, SetupType.ONE_TO_ONE])
def test_gateway_initiated(setup: SetupType) -> None:
    world, _, ids = make_world(n=3, initiator=None)
    invited = {SetupType.ALL: (), SetupType.INVITED: (ids[0], ids[2]),
               SetupType.ONE_TO_ONE: (ids[1],)}[setup]
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, setup, invited))
    expected = {SetupType.ALL: ids, SetupType.INVITED: [ids[0], ids[2]],
                SetupType.ONE_TO_ONE: [ids[1]]}[setup]
    assert _members(world) == sorted(expected)
    notified = {d for s, d, n in world.trace if n == "PnSetupNotify"}
    assert notified == {ids.index(i) for i in expected}
    for k, i in enumerate(ids):
        assert world.pnes[k].done == (i in expected)
        if i not in expected:  # left out: the gateway never says a word to it
            assert not any(d == k for _, d, _ in world.trace)
            assert world.pnes[k].error is None


def test_gateway_setup_arguments_are_checked() -> None:
    world, _, _ids = make_world(n=2, initiator=None)
    with pytest.raises(ConfigError):
        world.gw.initiate(0.0, SetupType.ONE_TO_ONE)  # two PNEs in reach, none named
    with pytest.raises(ConfigError):
        world.gw.initiate(0.0, SetupType.INVITED)
    with pytest.raises(NotFoundError):
        world.gw.initiate(0.0, SetupType.INVITED, (b"\x00" * 16,))


# -- the seed's criteria ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "claims", "gw_sees", "source", "session"),
    [
        (PneCaps.UI, False, False, KeySource.LOCAL_EUKEY, True),
        (PneCaps.NONE, False, False, KeySource.PREASSIGNED, True),
        # R01: the LocalEUKey is assigned regardless of the PAN's security ...
        (PneCaps.UI, True, True, KeySource.LOCAL_EUKEY, False),
        (PneCaps.NONE, True, True, KeySource.PREASSIGNED, False),
        # ... and the session is left off only when both ends say the PAN secures the link
        (PneCaps.UI, True, False, KeySource.LOCAL_EUKEY, True),
        (PneCaps.UI, False, True, KeySource.LOCAL_EUKEY, True),
        (PneCaps.NONE, True, False, KeySource.PREASSIGNED, True),
    ],
    ids=["ui-open", "noui-open", "ui-secured", "noui-secured", "ui-only-pne-claims",
         "ui-only-gw-sees", "noui-only-pne-claims"],
)
def test_link_key_criteria(
    caps: PneCaps, claims: bool, gw_sees: bool, source: KeySource, session: bool
) -> None:
    world, eukeys, ids = make_world(
        n=1, caps=(caps,), pne_claims=(0,) if claims else (), link_secured=(0,) if gw_sees else ()
    )
    run_cpns_machines(world, start=start_initiator(0))
    membership = world.pnes[0].membership
    (member,) = world.gw.inventory.members
    assert membership.key_source is member.key_source is source
    request = world.stored[0].members[0]
    assert (request.local_key is not None) == (source is KeySource.LOCAL_EUKEY)
    # Every member holds the link key (it reconnects with it later), whatever the PAN.
    assert membership.link_key == member.link_key is not None
    if source is KeySource.PREASSIGNED:
        assert membership.link_key == preassigned_key(eukeys[ids[0]])
    if session:
        assert membership.session.fingerprint == member.session.fingerprint
        assert membership.session.send_key == member.session.recv_key
        assert membership.session.recv_key == member.session.send_key
    else:
        assert membership.session is None and member.session is None
    assert world.pnes[0].local_key_request == wants_local_key(caps) == bool(caps & PneCaps.UI)


def test_a_gateway_that_drops_the_session_on_an_open_pan_is_refused() -> None:
    def strip(src, dst, msg):
        if isinstance(msg, PnEstablishmentNotify) and msg.ok:
            return dataclasses.replace(msg, nonce=None)
        return None

    world, _, _ = make_world(n=1, link_secured=(0,), pne_claims=())
    run_cpns_machines(world, start=start_initiator(0), tamper=strip)
    assert isinstance(world.errors[0], ProtocolError)
    assert "no secure session" in str(world.errors[0])
    assert world.pnes[0].membership is None


def test_a_server_offering_no_link_key_is_refused_by_the_pne() -> None:
    def pan(src, dst, msg):
        if isinstance(msg, PnEstablishmentNotify) and msg.ok:
            return dataclasses.replace(msg, key_source=KeySource.PAN)
        return None

    world, _, _ = make_world(n=1, pan_secured=(0,))
    run_cpns_machines(world, start=start_initiator(0), tamper=pan)
    assert isinstance(world.errors[0], AuthenticationError)  # hash_server covers the source
    assert world.pnes[0].membership is None


def test_a_flag_against_the_criteria_drops_the_pne() -> None:
    def lie(src, dst, msg):
        if isinstance(msg, PnSetupRequest):
            return dataclasses.replace(msg, local_key_request=False)
        return None

    world, _, _ = make_world(n=1)
    run_cpns_machines(world, start=start_initiator(0), tamper=lie)
    assert isinstance(world.errors[0], RemoteError)
    assert "capabilities" in str(world.errors[0])


# -- what the gateway cannot read ---------------------------------------------------------------


def test_gateway_reads_neither_sk_nor_other_links_keys() -> None:
    world, eukeys, ids = make_world(n=2, initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL))
    gw_id = world.gw.config.gw_id
    gw_key = eukeys[gw_id]
    pn = world.gw.pn_id
    response = next(
        wire.decode(d) for s, d in _server_messages(world) if s == "response"
    )
    assert isinstance(response, PnRegistrationResponse)
    r0, r1 = sorted(response.results, key=lambda r: ids.index(r.pne_id))
    # The PNE's copy is sealed under the PNE's EUKey: the gateway's key does not open it.
    with pytest.raises(AuthenticationError):
        unwrap_key(gw_key, r0.key_for_pne, pn_id=pn, pne_id=ids[0], gw_id=gw_id,
                   recipient=RECIPIENT_PNE)
    # The gateway's copy for link 0 does not pass for link 1 (bound to its link).
    with pytest.raises(AuthenticationError):
        unwrap_key(gw_key, r0.key_for_gw, pn_id=pn, pne_id=ids[1], gw_id=gw_id,
                   recipient=RECIPIENT_GW)
    # ... while each opens where it belongs, to the same LocalEUKey.
    k0 = unwrap_key(gw_key, r0.key_for_gw, pn_id=pn, pne_id=ids[0], gw_id=gw_id,
                    recipient=RECIPIENT_GW)
    assert k0 == unwrap_key(eukeys[ids[0]], r0.key_for_pne, pn_id=pn, pne_id=ids[0],
                            gw_id=gw_id, recipient=RECIPIENT_PNE)
    assert k0 != unwrap_key(gw_key, r1.key_for_gw, pn_id=pn, pne_id=ids[1], gw_id=gw_id,
                            recipient=RECIPIENT_GW)
    # SK_PNE depends on the PNE's EUKey: the gateway's own key gives another one.
    rands = {"rand_pne": b"\x01" * 16, "rand_server": b"\x02" * 16}
    assert derive_sk(gw_key, pn_id=pn, pne_id=ids[0], gw_id=gw_id, **rands) != derive_sk(
        eukeys[ids[0]], pn_id=pn, pne_id=ids[0], gw_id=gw_id, **rands)


def _server_messages(world) -> list[tuple[str, bytes]]:
    # Rerun the registration response from the stored state: the server keeps what it sent.
    assert world.server.response is not None
    return [("response", world.server.response.encode())]


# -- tampering gateways and the server's proof -----------------------------------------------


def _to_pne(target: int, change):
    def tamper(src, dst, msg):
        if src == "gw" and dst == target and isinstance(msg, PnEstablishmentNotify):
            return change(msg)
        return None

    return tamper


@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: dataclasses.replace(m, hash_server=flip(m.hash_server)),
                     id="hash_server"),
        pytest.param(lambda m: dataclasses.replace(m, members=m.members[:1]), id="members"),
        pytest.param(lambda m: dataclasses.replace(m, wrapped_key=flip(m.wrapped_key, 20)),
                     id="wrapped-key"),
        pytest.param(lambda m: dataclasses.replace(m, key_source=KeySource.PAN),
                     id="key-source"),
    ],
)
def test_each_pne_checks_the_servers_proof(target: int, change) -> None:
    world, _, _ids = make_world(n=2, initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL),
                      tamper=_to_pne(target, change))
    other = 1 - target
    assert isinstance(world.errors[target], AuthenticationError)
    assert world.pnes[target].membership is None
    assert world.pnes[other].done  # the untouched PNE is unaffected


def test_swapped_wrapped_keys_are_detected() -> None:
    world, _, _ = make_world(n=2, initiator=None)
    seen: dict[int, bytes] = {}

    def swap(src, dst, msg):
        if isinstance(msg, PnEstablishmentNotify) and src == "gw":
            seen[dst] = msg.wrapped_key
            if dst == 1:
                return dataclasses.replace(msg, wrapped_key=seen[0])
        return None

    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL), tamper=swap)
    assert isinstance(world.errors[1], AuthenticationError)


@pytest.mark.parametrize("what", ["rand_pne", "rand_server", "hash_pne"])
def test_server_detects_a_gateway_changing_the_rands(what: str) -> None:
    def tamper(src, dst, msg):
        if what == "rand_pne" and isinstance(msg, PnRegistrationRequest):
            first = msg.pnes[0]
            return dataclasses.replace(
                msg, pnes=(dataclasses.replace(first, rand_pne=flip(first.rand_pne)),
                           *msg.pnes[1:]))
        if what == "rand_server" and isinstance(msg, AuthenticationRequest) and dst == 0:
            return dataclasses.replace(msg, rand_server=flip(msg.rand_server))
        if what == "hash_pne" and src == "gw" and dst == SERVER and msg.TYPE == 75:
            if msg.pne_id == ids[0]:
                return dataclasses.replace(msg, hash_pne=flip(msg.hash_pne))
        return None

    world, _, ids = make_world(n=2, initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL), tamper=tamper)
    assert _members(world) == [ids[1]]
    assert world.gw.inventory.failed[ids[0]] == "authentication failed"
    assert isinstance(world.errors[0], AuthenticationError)


def test_hash_pne_is_a_mac_under_sk() -> None:
    ids = {"pn_id": b"p" * 16, "pne_id": b"n" * 16, "gw_id": b"g" * 16}
    rands = {"rand_pne": b"r" * 16, "rand_server": b"s" * 16}
    sk = derive_sk(b"e" * 32, **ids, **rands)
    h = hash_pne(sk, **ids, **rands)
    assert h != hash_pne(derive_sk(b"f" * 32, **ids, **rands), **ids, **rands)
    assert h != hash_pne(sk, **{**ids, "gw_id": b"h" * 16}, **rands)
    import hashlib

    assert h != hashlib.sha256(b"r" * 16 + b"s" * 16 + sk).digest()


# -- failures and time ------------------------------------------------------------------------


def test_a_pne_the_server_does_not_know_fails_alone() -> None:
    world, _, ids = make_world(n=2, enrolled=(1,), initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL))
    assert _members(world) == [ids[1]]
    assert world.gw.inventory.failed[ids[0]] == "not enrolled with a factory key"


def test_no_member_means_no_registration() -> None:
    world, _, _ids = make_world(n=1, wrong=(0,))
    run_cpns_machines(world, start=start_initiator(0))
    assert world.stored == []
    assert world.server.response is not None and not world.server.response.registered
    assert world.gw.done and world.gw.inventory.members == ()


def test_gateway_without_eukey_is_refused() -> None:
    world, _, _ = make_world(n=1)
    world.server_keys.pop(world.gw.config.gw_id)
    run_cpns_machines(world, start=start_initiator(0))
    assert isinstance(world.errors[SERVER], NotFoundError) or isinstance(
        world.errors.get("gw"), RemoteError)
    assert world.gw.failed and world.pnes[0].failed


def test_server_registers_those_that_answered_when_time_runs_out() -> None:
    def silence(src, dst, msg):
        if src == "gw" and dst == 1 and isinstance(msg, AuthenticationRequest):
            return PnSetupNotify(b"x" * 16, b"y" * 16, "noise", SetupType.ALL)  # garbled
        return None

    world, _, ids = make_world(n=2, initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL), tamper=silence)
    assert world.server.state == "await-auth-responses"
    world.server.on_timeout(1000.0)  # PNE 1 never answered: it fails, the other goes on
    run_cpns_machines(world)
    response = world.server.response
    assert response is not None and response.registered
    assert [r.pne_id for r in response.results if r.ok] == [ids[0]]
    assert world.stored[0].members[0].pne_id == ids[0]


def test_the_server_answers_within_the_wait_the_gateway_gives_its_pnes() -> None:
    """Attack review of the setup retry, finding 4: a stranger asked under an enrolled id never
    answers.  The gateway gives its PNEs half its step (2.5 s of 5) to answer, in its
    registration request; the server, whose own step is far longer, ends its wait there, fails
    the silent PNE alone and answers before the gateway's registration deadline (twice its
    step), so the one that proved itself is a member, and the gateway's links agree with the
    server's verdicts."""
    requests: list[PnRegistrationRequest] = []

    def silence(src, dst, msg):
        if isinstance(msg, PnRegistrationRequest):
            requests.append(msg)
        if src == "gw" and dst == 1 and isinstance(msg, AuthenticationRequest):
            # PNE 1 goes silent: it stops, and says nothing to the gateway (its link stays up)
            world.pnes[1].abort(PairingTimeout("silent"))
            world.pnes[1].outgoing()
        return None

    world, _, ids = make_world(n=2, initiator=None, gw_step=5.0, server_step=300.0)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL), tamper=silence)
    (request,) = requests
    assert request.auth_wait_ms == 2500
    assert world.server.state == "await-auth-responses"
    assert world.server.next_deadline() == 2.5
    assert world.gw.next_deadline() == 10.0
    world.server.on_timeout(2.4)
    assert world.server.state == "await-auth-responses"
    world.server.on_timeout(2.5)
    run_cpns_machines(world, now=2.5)
    response = world.server.response
    assert response is not None and response.registered
    verdicts = {r.pne_id: (r.ok, r.reason) for r in response.results}
    assert verdicts == {ids[0]: (True, None), ids[1]: (False, "did not answer in time")}
    assert world.gw.done and _members(world) == [ids[0]]
    assert world.gw.inventory.failed[ids[1]] == "did not answer in time"
    assert world.gw.inventory.ports == {ids[0]: 0}
    assert ("gw", 1, "PnEstablishmentNotify") in world.trace  # the silent link is told, too


@pytest.mark.parametrize(("gw_step", "auth_wait_ms"), [
    (30.0, 15_000), (0.1, 100), (0.15, 100), (3600.0, 1_800_000),
])
def test_the_gateway_gives_its_pnes_half_its_step_within_the_bounds(
    gw_step: float, auth_wait_ms: int
) -> None:
    requests: list[PnRegistrationRequest] = []

    def spy(src, dst, msg):
        if isinstance(msg, PnRegistrationRequest):
            requests.append(msg)

    world, _, _ = make_world(n=1, gw_step=gw_step)
    run_cpns_machines(world, start=start_initiator(0), tamper=spy)
    assert [r.auth_wait_ms for r in requests] == [auth_wait_ms]
    assert world.gw.done and len(world.gw.inventory.members) == 1


@pytest.mark.parametrize(("auth_wait_ms", "deadline"), [
    (None, 30.0),  # an older gateway: the server's own step, as before
    (2500, 2.5),  # shorter than the server's step: the gateway's word
    (3_600_000, 30.0),  # longer: never beyond the server's own step
    (100, 0.1),  # a gateway that sets it tiny only cuts its own PNEs short
])
def test_the_servers_wait_for_the_pnes_is_the_shorter_of_its_own_and_the_gateways(
    auth_wait_ms: int | None, deadline: float
) -> None:
    world, eukeys, ids = make_world(n=1)
    info = PneInfo(ids[0], "p", int(PneCaps.UI), b"\x02" * 16, True)
    gw_id = world.gw.config.gw_id
    server = CpnsServer(gw_id, step_timeout=30.0)
    server.begin(PnRegistrationRequest(b"\x07" * 16, "g", SetupType.ONE_TO_ONE, (info,),
                                       subscription=gw_id, auth_wait_ms=auth_wait_ms), 10.0)
    (asked,) = server.events()
    server.answer(asked, CpnsKeys(eukeys[gw_id], {ids[0]: eukeys[ids[0]]}), 10.0)
    assert [type(wire.decode(d)) for d in server.outgoing()] == [AuthenticationRequest]
    assert server.next_deadline() == pytest.approx(10.0 + deadline)
    server.on_timeout(10.0 + deadline)
    (answer,) = [wire.decode(d) for d in server.outgoing()]
    assert isinstance(answer, PnRegistrationResponse) and not answer.registered
    assert [(r.ok, r.reason) for r in answer.results] == [(False, "did not answer in time")]


@pytest.mark.parametrize("value", [0, 99, 3_600_001, 2**32])
def test_a_registration_request_with_a_wait_out_of_bounds_does_not_decode(value: int) -> None:
    info = PneInfo(b"\x01" * 16, "p", 1, b"\x02" * 16, True)
    with pytest.raises(DecodeError, match="auth_wait_ms"):
        PnRegistrationRequest(b"\x07" * 16, "g", SetupType.ALL, (info,), auth_wait_ms=value)
    body = cbor.decode(PnRegistrationRequest(b"\x07" * 16, "g", SetupType.ALL, (info,),
                                             auth_wait_ms=1000).encode(), max_size=8192)
    assert body[8] == 1000
    body[8] = value
    with pytest.raises(DecodeError, match="auth_wait_ms"):
        wire.decode(cbor.encode_ordered(dict(sorted(body.items()))))
    body[8] = "1000"
    with pytest.raises(DecodeError, match="auth_wait_ms"):
        wire.decode(cbor.encode_ordered(dict(sorted(body.items()))))


def test_gateway_collect_window_then_registers_who_answered() -> None:
    world, _, ids = make_world(n=2, initiator=None)
    world.gw.initiate(0.0, SetupType.ALL)
    world.gw.outgoing()
    note = world.pnes[0]
    note.receive(PnSetupNotify(world.gw.pn_id, world.gw.config.gw_id, "gateway",
                               SetupType.ALL).encode(), 0.0)
    for data in note.outgoing():
        world.gw.receive(data, 0.0, port=0)
    assert world.gw.state == "collect"
    world.gw.on_timeout(0.5)  # before the window closes: nothing happens
    assert world.gw.state == "collect"
    world.gw.on_timeout(1.0)
    out = world.gw.outgoing()
    request = next(wire.decode(d) for p, d in out if p == SERVER)
    assert [p.pne_id for p in request.pnes] == [ids[0]]
    assert world.gw.state == "register"


def test_silent_gateway_times_out_the_pne() -> None:
    config = PneConfig(b"\x01" * 16, "p", b"\x02" * 32, step_timeout=5)
    pne = PneMachine(config, listen=True)
    pne.start(0.0)
    assert pne.next_deadline() == 5.0
    with pytest.raises(PairingError):
        pne.on_timeout(5.0)
    assert pne.failed


def test_configs_are_validated() -> None:
    with pytest.raises(ConfigError):
        PneConfig(b"\x01" * 15, "p", b"\x02" * 32)
    with pytest.raises(ConfigError):
        PneConfig(b"\x01" * 16, "p", b"\x02" * 32, setup_type=SetupType.INVITED)
    with pytest.raises(ConfigError):
        PneConfig(b"\x01" * 16, "p", b"\x02" * 32, invited=(b"\x03" * 16,))
    with pytest.raises(ConfigError):
        GatewayConfig(b"\x01" * 16, "g", b"\x02" * 31)


def test_server_refuses_a_malformed_registration() -> None:
    info = PneInfo(b"\x01" * 16, "p", 1, b"\x02" * 16, True)
    server = CpnsServer(b"\x09" * 16)
    with pytest.raises(ProtocolError):
        server.begin(PnRegistrationRequest(b"\x07" * 16, "g", SetupType.ALL, (info, info)), 0.0)
    assert server.failed
    server = CpnsServer(b"\x01" * 16)
    with pytest.raises(ProtocolError, match="own PN"):
        server.begin(PnRegistrationRequest(b"\x07" * 16, "g", SetupType.ALL, (info,)), 0.0)


# -- codecs and fuzz ----------------------------------------------------------------------------

ids16 = st.binary(min_size=16, max_size=16)
names = st.text(max_size=20)


@given(
    st.one_of(
        st.builds(PnSetupRequest, ids16, names, st.integers(0, 3), st.sampled_from(SetupType),
                  ids16, st.booleans(), st.lists(ids16, max_size=3).map(tuple),
                  st.lists(st.text(max_size=10), max_size=3).map(tuple)),
        st.builds(PnSetupNotify, ids16, ids16, names, st.sampled_from(SetupType)),
        st.builds(PnSetupNotifyResponse, ids16, names, st.integers(0, 3), ids16, st.booleans(),
                  st.booleans()),
        st.builds(AuthenticationRequest, ids16, ids16, ids16, ids16,
                  st.none() | st.integers(100, 3_600_000)),
        st.builds(PnRegistrationRequest, ids16, names, st.sampled_from(SetupType),
                  st.lists(st.builds(PneInfo, ids16, names, st.integers(0, 3), ids16,
                                     st.booleans()), max_size=3).map(tuple),
                  st.integers(0, 7), st.none() | ids16,
                  st.none() | st.integers(100, 3_600_000)),
        st.builds(PnRegistrationResponse, ids16, st.booleans(), st.lists(
            st.builds(PneResult, ids16, st.booleans(), st.none() | st.sampled_from(KeySource)),
            max_size=3).map(tuple)),
        st.builds(LinkConfirm, st.binary(min_size=32, max_size=32), st.none() | ids16),
    )
)
def test_messages_round_trip(msg: wire.Message) -> None:
    assert wire.decode(msg.encode()) == msg


@settings(max_examples=150)
@given(st.lists(st.binary(max_size=80), max_size=4), st.booleans())
def test_only_pairing_errors_escape(blobs: list[bytes], listen: bool) -> None:
    pne = PneMachine(PneConfig(b"\x01" * 16, "p", b"\x02" * 32), listen=listen)
    pne.start(0.0)
    gw = Gateway(GatewayConfig(b"\x03" * 16, "g", b"\x04" * 32))
    gw.start(0.0)
    gw.attach("a")
    for data in blobs:
        for feed in (lambda d: pne.receive(d, 0.0), lambda d: gw.receive(d, 0.0, port="a"),
                     lambda d: gw.receive(d, 0.0, port=SERVER)):
            try:
                feed(data)
            except PairingError:
                pass
