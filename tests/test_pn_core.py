"""Issue 14, the CPNS machines against hostile peers: forged link confirmations, PNEs that
decline, the initiator in the notify, the registration's gateway info, a restarted gateway.

The machines are joined in memory here (tests/ttp_harness.py); tests/test_pn_links.py plays
the same attacks over loopback links with a real key server, and tests/test_pn_cli.py over TCP
between processes.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing import wire
from pairkit.pairing.cpns import (
    SERVER,
    AuthenticationResponse,
    CpnsServer,
    Gateway,
    GatewayCaps,
    GatewayConfig,
    LinkConfirm,
    LinkSession,
    PneConfig,
    PneInfo,
    PneMachine,
    PnJoinAsked,
    PnLinkAccept,
    PnLinkResume,
    PnRegistrationRequest,
    PnSetupNotify,
    SetupType,
)
from pairkit.pairing.cpns.link import GatewayResume, MemberResume, ResumeConfig
from pairkit.pairing.cpns.pinlink import ElementPin, GatewayPin
from pairkit.pairing.errors import (
    AccessDeniedError,
    AuthenticationError,
    NotFoundError,
    PairingError,
    ProtocolError,
    RemoteError,
)
from tests.ttp_harness import flip, make_world, run_cpns_machines, start_initiator


def _forge_confirm(target: int):
    def tamper(src, dst, msg):
        if src == target and dst == "gw" and isinstance(msg, LinkConfirm):
            return dataclasses.replace(msg, mac=flip(msg.mac))
        return None

    return tamper


def test_a_forged_link_confirmation_leaves_the_pne_out_and_in_the_failed_list() -> None:
    world, _, ids = make_world(n=2, initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL),
                      tamper=_forge_confirm(0))
    inv = world.gw.inventory
    assert inv is not None
    assert [m.pne_id for m in inv.members] == [ids[1]]
    assert "link confirmation" in inv.failed[ids[0]]
    # no route to it either: routed traffic cannot reach whoever sits on that link
    assert set(world.gw.routing[inv.pn_id]) == {ids[1]}
    # the PNE was told, and holds no membership
    assert isinstance(world.errors[0], RemoteError)
    assert world.pnes[0].membership is None
    assert world.pnes[1].membership is not None


def test_a_pne_that_never_confirms_is_failed_after_the_deadline() -> None:
    def swallow(src, dst, msg):
        if src == 0 and isinstance(msg, LinkConfirm):
            return PnSetupNotify(b"x" * 16, b"y" * 16, "noise", SetupType.ALL)  # garbled
        return None

    world, _, ids = make_world(n=2, initiator=None)
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL), tamper=swallow)
    if not world.gw.done:
        world.gw.on_timeout(10_000.0)
    inv = world.gw.inventory
    assert [m.pne_id for m in inv.members] == [ids[1]]
    assert ids[0] in inv.failed


def test_a_pne_that_declines_is_listed_as_declined_not_as_failed() -> None:
    world, _, ids = make_world(n=3, initiator=None, pne_kw={1: {"join": "decline"}})
    run_cpns_machines(world, start=lambda w: w.gw.initiate(0.0, SetupType.ALL))
    inv = world.gw.inventory
    assert sorted(m.pne_id for m in inv.members) == sorted([ids[0], ids[2]])
    assert inv.declined == (ids[1],)
    assert ids[1] not in inv.failed
    assert inv.names[ids[1]] == "pne1"
    # declined: the server never hears of it, and the PNE ends quietly
    assert sorted(m.pne_id for m in world.stored[0].members) == sorted([ids[0], ids[2]])
    assert world.pnes[1].done and world.pnes[1].declined and world.pnes[1].membership is None
    assert 1 not in world.errors


def test_the_user_is_asked_with_the_initiator_named() -> None:
    world, _, ids = make_world(n=2, pne_kw={1: {"join": "ask"}})
    pne0 = world.pnes[0]
    pne0.config = dataclasses.replace(pne0.config, setup_type=SetupType.ALL)
    run_cpns_machines(world, start=start_initiator(0))
    (question,) = [e for e in world.pnes[1].events() if isinstance(e, PnJoinAsked)]
    assert question.initiator == ids[0] and question.initiator_name == "pne0"
    assert question.gw_name == "gateway" and question.setup_type is SetupType.ALL
    world.pnes[1].answer(question, False, 0.0)
    run_cpns_machines(world)
    assert world.gw.inventory.declined == (ids[1],)
    assert [m.pne_id for m in world.gw.inventory.members] == [ids[0]]


def test_a_gateway_initiated_notify_names_no_pne_as_initiator() -> None:
    world, _, _ = make_world(n=1, initiator=None, pne_kw={0: {"join": "ask"}})
    world.gw.initiate(0.0, SetupType.ALL)
    for _port, data in world.gw.outgoing():
        note = wire.decode(data)
        assert isinstance(note, PnSetupNotify)
        assert note.initiator is None and note.initiator_name is None
        world.pnes[0].receive(data, 0.0)
    (question,) = world.pnes[0].events()
    assert question.initiator is None


def test_a_notify_naming_the_pne_itself_as_initiator_is_refused() -> None:
    config = PneConfig(b"\x01" * 16, "p", b"\x02" * 32)
    pne = PneMachine(config, listen=True)
    pne.start(0.0)
    with pytest.raises(ProtocolError):
        pne.receive(PnSetupNotify(b"\x03" * 16, b"\x04" * 16, "gw", SetupType.ALL,
                                  b"\x01" * 16, "p").encode(), 0.0)


def test_the_registration_request_carries_the_gateways_capabilities_and_subscription() -> None:
    seen: list[PnRegistrationRequest] = []

    def spy(src, dst, msg):
        if isinstance(msg, PnRegistrationRequest):
            seen.append(msg)
        return None

    world, _, _ = make_world(n=1)
    run_cpns_machines(world, start=start_initiator(0), tamper=spy)
    (request,) = seen
    assert request.subscription == world.gw.config.gw_id
    assert GatewayCaps(request.gw_caps) == GatewayCaps.DISPLAY | GatewayCaps.ROUTER
    assert world.stored[0].gw_caps == request.gw_caps


@pytest.mark.parametrize("subscription", [None, b"\x05" * 16])
def test_the_server_refuses_a_registration_under_another_subscription(subscription) -> None:
    info = PneInfo(b"\x01" * 16, "p", 1, b"\x02" * 16, True)
    server = CpnsServer(b"\x09" * 16)
    request = PnRegistrationRequest(b"\x07" * 16, "g", SetupType.ONE_TO_ONE, (info,),
                                    subscription=subscription)
    with pytest.raises(AccessDeniedError if subscription else ProtocolError):
        server.begin(request, 0.0)


def test_a_restarted_gateway_aborts_a_pne_mid_flow_and_stays_usable() -> None:
    """The gateway process restarted after relaying the server's authentication request: the
    new one knows nothing of the flow.  The PNE's answer is refused with an Abort (the PNE
    stops with the gateway's reason), and the new gateway can still run a setup."""
    fresh = Gateway(GatewayConfig(b"\x03" * 16, "gw", b"\x04" * 32))
    fresh.start(0.0)
    fresh.attach("a")
    fresh.attach("b")
    fresh.receive(AuthenticationResponse(b"\x07" * 16, b"\x01" * 16, b"\x00" * 32).encode(),
                  0.0, port="a")
    out = fresh.outgoing()
    assert [(p, type(wire.decode(d)).__name__) for p, d in out] == [("a", "Abort")]
    (dropped,) = fresh.events()
    assert "not expected" in dropped.reason or "unexpected" in dropped.reason
    assert not fresh.failed
    fresh.initiate(0.0, SetupType.ONE_TO_ONE, ())
    assert [p for p, _ in fresh.outgoing()] == ["b"]
    assert SERVER not in fresh.routing


# -- a member back on its gateway (pairing.cpns.link) -----------------------------------------


PN, PNE, GW = b"\x07" * 16, b"\x01" * 16, b"\x03" * 16
KEY = b"\x55" * 32


def _resume(member_key: bytes = KEY, gw_key: bytes | None = KEY, rng_seed: int = 1):
    from tests.ttp_harness import seeded

    member = MemberResume(ResumeConfig(PN, PNE, GW, member_key), rng=seeded(rng_seed))
    gateway = GatewayResume(
        GW, lambda pn, pne: gw_key if (pn, pne) == (PN, PNE) else None, rng=seeded(rng_seed + 1)
    )
    member.start(0.0)
    gateway.start(0.0)
    return member, gateway


def _pump(a, b, rounds: int = 4) -> None:
    """Move messages both ways; errors stay in the machines (each is poisoned by its own)."""
    for _ in range(rounds):
        for src, dst in ((a, b), (b, a)):
            for data in src.outgoing():
                if not (dst.done or dst.failed):
                    with contextlib.suppress(PairingError):
                        dst.receive(data, 0.0)


def test_a_member_resumes_with_fresh_keys_each_time() -> None:
    member, gateway = _resume()
    _pump(member, gateway)
    assert member.done and gateway.done and gateway.pne_id == PNE
    assert isinstance(member.session, LinkSession)
    assert member.session.send_key == gateway.session.recv_key
    assert member.session.fingerprint == gateway.session.fingerprint
    again, gateway2 = _resume(rng_seed=5)
    _pump(again, gateway2)
    assert again.session.send_key != member.session.send_key  # fresh nonces, fresh keys


def test_a_stranger_without_the_link_key_cannot_confirm() -> None:
    member, gateway = _resume(member_key=b"\x66" * 32)
    _pump(member, gateway)
    # the gateway proves first; the stranger's side sees a proof it cannot check and stops
    assert member.failed and isinstance(member.error, AuthenticationError)
    assert not gateway.done and gateway.session is None


def test_a_gateway_without_the_link_key_is_refused_by_the_member() -> None:
    member, gateway = _resume(gw_key=b"\x77" * 32)
    _pump(member, gateway)
    assert member.failed and "not this PN's gateway" in str(member.error)
    assert gateway.session is None


def test_a_resume_for_an_unknown_member_is_not_found() -> None:
    gateway = GatewayResume(GW, lambda pn, pne: None)
    gateway.start(0.0)
    with pytest.raises(NotFoundError):
        gateway.receive(PnLinkResume(PN, PNE, b"\x02" * 16).encode(), 0.0)


def test_a_replayed_resume_meets_a_new_nonce_and_cannot_confirm() -> None:
    member, gateway = _resume()
    first = member.outgoing()
    gateway.receive(first[0], 0.0)
    (accept,) = gateway.outgoing()
    member.receive(accept, 0.0)
    (confirm,) = member.outgoing()
    # replay the same resume and confirmation to another run of the gateway
    from tests.ttp_harness import seeded

    replayed = GatewayResume(GW, lambda pn, pne: KEY, rng=seeded(99))
    replayed.start(0.0)
    replayed.receive(first[0], 0.0)
    assert wire.decode(replayed.outgoing()[0]).nonce != wire.decode(accept).nonce
    with pytest.raises(AuthenticationError):
        replayed.receive(confirm, 0.0)
    assert isinstance(wire.decode(accept), PnLinkAccept)


# -- an element's link secured by the gateway's PIN (pairing.cpns.pinlink) ---------------------


def test_a_typed_pin_secures_the_link_both_ways() -> None:
    element = ElementPin(PNE, "482913")
    gateway = GatewayPin(GW, "482913")
    element.start(0.0)
    gateway.start(0.0)
    _pump(element, gateway)
    assert element.done and gateway.done
    assert element.gw_id == GW and gateway.pne_id == PNE
    assert element.session.send_key == gateway.session.recv_key
    assert element.session.fingerprint == gateway.session.fingerprint


def test_a_wrong_pin_fails_on_both_sides_and_opens_nothing() -> None:
    element = ElementPin(PNE, "482914")
    gateway = GatewayPin(GW, "482913")
    element.start(0.0)
    gateway.start(0.0)
    _pump(element, gateway)
    assert element.failed and "did not match" in str(element.error)
    assert element.session is None and gateway.session is None and not gateway.done


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=4), st.integers(0, 3))
def test_only_pairing_errors_escape_the_new_machines(blobs: list[bytes], which: int) -> None:
    """Garbage, or valid messages out of turn, fed to the resume and PIN machines."""
    make = [
        lambda: MemberResume(ResumeConfig(PN, PNE, GW, KEY)),
        lambda: GatewayResume(GW, lambda pn, pne: KEY),
        lambda: ElementPin(PNE, "482913"),
        lambda: GatewayPin(GW, "482913"),
    ][which]
    machine = make()
    machine.start(0.0)
    valid = [PnLinkResume(PN, PNE, b"\x02" * 16).encode(),
             PnLinkAccept(b"\x02" * 16, b"\x00" * 32).encode(),
             LinkConfirm(b"\x00" * 32).encode()]
    for data in [*blobs, *valid]:
        try:
            machine.receive(data, 0.0)
        except PairingError:
            pass
    with contextlib.suppress(PairingError):
        machine.on_timeout(1e12)
