"""Method ttp as sans-I/O machines: the device-server proof, intents, the channel from SK."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing import wire
from pairkit.pairing.crypto import hkdf, unseal, x25519
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    ErrorCode,
    PairingError,
    ProtocolError,
    RemoteError,
    UnsupportedError,
)
from pairkit.pairing.machine import Machine
from pairkit.pairing.messages import Accept, Announce, Offer
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method, methods_mask
from pairkit.pairing.ttp import (
    BadTokenError,
    DeviceRecord,
    EnrolAsked,
    EnrolDone,
    EnrolRequest,
    IntentAsked,
    IntentRequest,
    IntentRole,
    ServerConfig,
    SessionKeyAck,
    SessionKeyOffer,
    SkDelivery,
    TtpChallenge,
    TtpClient,
    TtpHello,
    TtpKeyNeeded,
    TtpLinkConfig,
    TtpLinkGuest,
    TtpLinkHost,
    TtpProof,
    TtpServerConn,
    _OfferBody,
    is_ttp_offer,
    parse_device_id,
)
from tests.ttp_harness import flip, seeded

CERT = b"\xc5" * 32


def record(me: LocalIdentity) -> DeviceRecord:
    return DeviceRecord(me.device_id, me.name, me.static_public, me.signing_public)


def exchange(a: Machine, b: Machine, answer, *, rounds: int = 20, tamper=None) -> None:
    """Move messages between two machines, answering questions with ``answer(question)``."""
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for data in src.outgoing():
                moved = True
                if tamper is not None:
                    data = tamper(src, data)
                    if data is None:
                        continue
                if dst.done or dst.failed:
                    continue
                try:
                    dst.receive(data, 0.0)
                except PairingError:
                    pass
            for event in src.events():
                moved = True
                try:
                    src.answer(event, answer(event), 0.0)
                except PairingError:
                    pass
        if not moved:
            return
    raise AssertionError("too many round trips!")


# -- device and server ------------------------------------------------------------------------


def client_server(request, expect, *, cert=CERT, token=None, rng_seed=1):
    me = LocalIdentity.generate("dev", rng=seeded(rng_seed))
    client = TtpClient(me, cert=cert, request=request, expect=expect, rng=seeded(rng_seed + 1))
    server = TtpServerConn(ServerConfig(cert=CERT, enrol_token=token, max_wait=10),
                           rng=seeded(rng_seed + 2))
    server.start(0.0)
    client.start(0.0)
    return me, client, server


def test_enrolment_proves_the_identity_key() -> None:
    me, client, server = client_server(EnrolRequest(signing=b"\x05" * 32, eukey=b"\x06" * 32),
                                       EnrolDone)
    asked: list[EnrolAsked] = []

    def answer(q):
        asked.append(q)
        return EnrolDone(q.device.device_id, False, True)

    exchange(client, server, answer)
    assert client.done and server.done
    assert asked[0].device == DeviceRecord(me.device_id, "dev", me.static_public, b"\x05" * 32)
    assert asked[0].eukey == b"\x06" * 32
    assert "eukey" not in repr(asked[0]) or b"\x06" * 32 not in repr(asked[0]).encode()
    assert client.result == EnrolDone(me.device_id, False, True)


def test_a_proof_made_for_another_server_certificate_fails() -> None:
    _, client, server = client_server(EnrolRequest(signing=b"\x05" * 32), EnrolDone,
                                      cert=b"\x01" * 32)
    exchange(client, server, lambda q: pytest.fail("no question may be asked"))
    assert isinstance(server.error, AuthenticationError)
    assert isinstance(client.error, RemoteError)
    assert client.error.code == ErrorCode.AUTH_FAILED


def test_a_device_without_the_private_key_cannot_prove() -> None:
    victim = LocalIdentity.generate("victim")
    server = TtpServerConn(ServerConfig(cert=CERT))
    server.start(0.0)
    server.receive(TtpHello(victim.static_public, b"\x00" * 16, "victim").encode(), 0.0)
    wire.decode(server.outgoing()[0], TtpChallenge)
    with pytest.raises(AuthenticationError):
        server.receive(TtpProof(os.urandom(32)).encode(), 0.0)


@pytest.mark.parametrize("token", [None, b"wrong-token-wrong-token"])
def test_closed_enrolment_needs_the_token(token: bytes | None) -> None:
    _, client, server = client_server(EnrolRequest(signing=b"\x05" * 32, token=token), EnrolDone,
                                      token=b"the-right-token-0123")
    exchange(client, server, lambda q: pytest.fail("no question may be asked"))
    assert isinstance(server.error, BadTokenError)
    assert client.error.code == ErrorCode.REFUSED


def test_intent_without_match_tells_the_device_it_timed_out() -> None:
    peer = os.urandom(16)
    _, client, server = client_server(
        IntentRequest(peer_id=peer, context=b"\x01" * 32, role=IntentRole.HOST, wait=999),
        SkDelivery,
    )
    asked: list[IntentAsked] = []

    def answer(q):
        asked.append(q)
        return None  # nobody matched within the window

    exchange(client, server, answer)
    assert asked[0].wait == 10  # capped by the server
    assert asked[0].peer_id == peer and asked[0].role is IntentRole.HOST
    assert isinstance(client.error, RemoteError)
    assert client.error.code == ErrorCode.TIMEOUT
    assert "no matching intent" in str(client.error)


def test_intent_to_oneself_is_refused() -> None:
    me = LocalIdentity.generate("dev", rng=seeded(1))
    _, client, server = client_server(
        IntentRequest(peer_id=me.device_id, context=b"\x01" * 32, role=IntentRole.HOST, wait=5),
        SkDelivery,
    )
    exchange(client, server, lambda q: pytest.fail("no question"))
    assert isinstance(server.error, ProtocolError)


def test_client_checks_the_vouched_record() -> None:
    other = LocalIdentity.generate("other")
    wrong = LocalIdentity.generate("wrong")
    _, client, server = client_server(
        IntentRequest(peer_id=other.device_id, context=b"\x01" * 32, role=IntentRole.HOST,
                      wait=5),
        SkDelivery,
    )
    exchange(client, server, lambda q: SkDelivery(b"\x00" * 16, b"\x07" * 32, record(wrong)))
    assert isinstance(client.error, AuthenticationError)


def test_a_server_answer_of_the_wrong_kind_is_refused() -> None:
    _, client, server = client_server(EnrolRequest(signing=b"\x05" * 32), EnrolDone)
    exchange(client, server, lambda q: SkDelivery(b"\x00" * 16, b"\x07" * 32,
                                                   record(LocalIdentity.generate("x"))))
    assert server.failed


# -- two devices on their link --------------------------------------------------------------


class FakeKeyServer:
    """Answers both devices' TtpKeyNeeded as the key server would (same SK when they match)."""

    def __init__(self, host: LocalIdentity, guest: LocalIdentity, *, split: bool = False):
        self.by_id = {host.device_id: host, guest.device_id: guest}
        self.asked: list[TtpKeyNeeded] = []
        self.split = split
        self.sk = os.urandom(32)

    def answer(self, q: TtpKeyNeeded) -> SkDelivery:
        self.asked.append(q)
        sk = os.urandom(32) if self.split else self.sk
        return SkDelivery(b"\x11" * 16, sk, record(self.by_id[q.peer_id]))


def link_pair(
    config: TtpLinkConfig | None = None,
    host_config: TtpLinkConfig | None = None,
    *,
    guest_context: bytes = b"",
    host_context: bytes = b"",
):
    host_id = LocalIdentity.generate("host")
    guest_id = LocalIdentity.generate("guest")
    guest = TtpLinkGuest(config or TtpLinkConfig(), guest_id, context=guest_context)
    host = TtpLinkHost(host_config or config or TtpLinkConfig(), host_id,
                       context=host_context)
    host.start(0.0)
    guest.start(0.0)
    return host_id, guest_id, host, guest


def test_link_session_from_sk() -> None:
    host_id, guest_id, host, guest = link_pair()
    ks = FakeKeyServer(host_id, guest_id)
    exchange(guest, host, ks.answer)
    assert host.done and guest.done
    hs, gs = host.session, guest.session
    assert hs.method is gs.method is Method.TTP
    assert hs.send_key == gs.recv_key and hs.recv_key == gs.send_key
    assert hs.fingerprint == gs.fingerprint
    assert hs.peer.device_id == guest_id.device_id and gs.peer.device_id == host_id.device_id
    assert hs.peer.authenticated and gs.peer.authenticated
    assert len(hs.new_their_prekeys) == 8 and len(gs.new_our_prekeys) == 8
    # both asked the key server in the same context, each naming the other, in its role
    (q1, q2) = sorted(ks.asked, key=lambda q: q.role)
    assert q1.context == q2.context
    assert (q1.role, q1.peer_id) == (IntentRole.HOST, guest_id.device_id)
    assert (q2.role, q2.peer_id) == (IntentRole.GUEST, host_id.device_id)


def test_the_session_needs_both_identity_keys_not_only_sk() -> None:
    host_id, guest_id, host, guest = link_pair()
    ks = FakeKeyServer(host_id, guest_id)
    offers: list[bytes] = []

    def watch(src, data):
        if wire.peek_type(data) == SessionKeyOffer.TYPE:
            offers.append(data)
        return data

    exchange(guest, host, ks.answer, tamper=watch)
    # Knowing SK (as the key server does), one can open the offer and learn the session key...
    context = host._context
    okm = hkdf(ks.sk, salt=context, info=b"pairkit/1 ttp channel" + b"\x11" * 16, length=64)
    body = unseal(okm[:32], 0, wire.decode(offers[0]).sealed, context, "offer")
    session_key = wire.decode_struct(_OfferBody, body).session_key
    # ... but the keys also need X25519(s_G, s_H), which only the two devices can compute.
    without_dh = hkdf(session_key, salt=context, info=b"pairkit/1 ttp session", length=96)
    assert host.session.send_key not in (without_dh[:32], without_dh[32:64])
    dh = x25519(host_id.static_private, guest_id.static_public)
    with_dh = hkdf(session_key + dh, salt=context, info=b"pairkit/1 ttp session", length=96)
    assert host.session.send_key == with_dh[32:64]  # h2g


def test_different_sks_are_detected() -> None:
    host_id, guest_id, host, guest = link_pair()
    exchange(guest, host, FakeKeyServer(host_id, guest_id, split=True).answer)
    assert isinstance(guest.error, AuthenticationError)
    assert guest.session is None and host.session is None


def test_a_vouched_identity_that_differs_is_refused() -> None:
    host_id, guest_id, host, guest = link_pair()
    impostor = LocalIdentity.generate("host")
    impostor = dataclasses.replace(impostor, device_id=host_id.device_id)  # claims the host's id
    ks = FakeKeyServer(host_id, guest_id)

    def answer(q):
        d = ks.answer(q)
        if q.role is IntentRole.GUEST:
            return dataclasses.replace(d, peer=DeviceRecord(
                host_id.device_id, "host", impostor.static_public, impostor.signing_public))
        return d

    exchange(guest, host, answer)
    assert isinstance(guest.error, AuthenticationError)


def test_peer_hint_stops_before_the_server_is_asked() -> None:
    config = TtpLinkConfig(peer_hint=os.urandom(16))
    host_id, guest_id, host, guest = link_pair(config, host_config=TtpLinkConfig())
    ks = FakeKeyServer(host_id, guest_id)
    exchange(guest, host, ks.answer)
    assert isinstance(guest.error, AuthenticationError)
    assert "not the" in str(guest.error)
    assert all(q.role is IntentRole.HOST for q in ks.asked)  # the guest never asked


@pytest.mark.parametrize("kind", [SessionKeyOffer, SessionKeyAck])
def test_tampered_channel_messages_fail(kind) -> None:
    host_id, guest_id, host, guest = link_pair()

    def tamper(src, data):
        msg = wire.decode(data)
        if isinstance(msg, kind):
            return kind(flip(msg.sealed, 5)).encode()
        return data

    exchange(guest, host, FakeKeyServer(host_id, guest_id).answer, tamper=tamper)
    assert host.session is None
    assert isinstance(host.error or guest.error, AuthenticationError | RemoteError)


@pytest.mark.parametrize("field", ["nonce", "caps", "methods", "name"])
def test_an_offer_changed_on_the_way_changes_the_context(field: str) -> None:
    """The negotiation is bound like every method's: a rewritten announcement gives the two
    sides different contexts, which no key server matches (and no session comes of it)."""
    host_id, guest_id, host, guest = link_pair()
    ks = FakeKeyServer(host_id, guest_id)

    def tamper(src, data):
        msg = wire.decode(data)
        if isinstance(msg, Offer) and src is guest:
            hello = msg.hello
            changed = {"nonce": flip(hello.nonce), "caps": hello.caps ^ 1,
                       "methods": hello.methods | methods_mask({Method.PIN}),
                       "name": hello.name + "!"}[field]
            return dataclasses.replace(
                msg, hello=dataclasses.replace(hello, **{field: changed})
            ).encode()
        return data

    exchange(guest, host, ks.answer, tamper=tamper)
    assert len({q.context for q in ks.asked}) == 2  # a real key server would match nothing
    assert guest.session is None or host.session is None


def test_an_accept_naming_another_method_fails() -> None:
    host_id, guest_id, host, guest = link_pair()

    def tamper(src, data):
        msg = wire.decode(data)
        if isinstance(msg, Accept):
            return dataclasses.replace(
                msg, hello=dataclasses.replace(msg.hello, method=Method.PIN)
            ).encode()
        return data

    exchange(guest, host, FakeKeyServer(host_id, guest_id).answer, tamper=tamper)
    assert isinstance(guest.error, ProtocolError) and "'ttp' was proposed" in str(guest.error)
    assert guest.session is None and host.session is None


def test_a_host_that_does_not_allow_ttp_refuses_it_before_the_key_server() -> None:
    strict = TtpLinkConfig(methods=frozenset({Method.PIN, Method.QR}))
    host_id, guest_id, host, guest = link_pair(host_config=strict)
    ks = FakeKeyServer(host_id, guest_id)
    exchange(guest, host, ks.answer)
    assert isinstance(host.error, UnsupportedError)
    assert "ttp" in str(host.error) and ks.asked == []
    assert isinstance(guest.error, RemoteError)


def test_a_different_pre_pairing_context_on_one_side_fails() -> None:
    """A bit flipped in the cloud step (the context) gives the two sides different keys."""
    host_id, guest_id, host, guest = link_pair(guest_context=b"\x01" * 32,
                                               host_context=b"\x02" * 32)
    ks = FakeKeyServer(host_id, guest_id)
    exchange(guest, host, ks.answer)
    assert len({q.context for q in ks.asked}) == 2
    assert guest.session is None or host.session is None
    same_ctx = link_pair(guest_context=b"\x03" * 32, host_context=b"\x03" * 32)
    exchange(same_ctx[3], same_ctx[2], FakeKeyServer(same_ctx[0], same_ctx[1]).answer)
    assert same_ctx[2].done and same_ctx[3].done


def test_is_ttp_offer_and_device_ids() -> None:
    hello = Announce(caps=0, methods=methods_mask({Method.TTP}), method=Method.TTP, name="x",
                     nonce=b"\x02" * 16)
    assert is_ttp_offer(Offer(hello=hello, guest_id=b"\x01" * 16).encode())
    pin = dataclasses.replace(hello, method=Method.PIN)
    assert not is_ttp_offer(Offer(hello=pin).encode())
    assert not is_ttp_offer(b"garbage")
    assert parse_device_id("0102" * 8) == bytes.fromhex("0102" * 8)
    assert parse_device_id("0102-0304 " * 4) == bytes.fromhex("01020304" * 4)
    with pytest.raises(ConfigError):
        parse_device_id("xyz")
    with pytest.raises(ConfigError):
        TtpLinkConfig(wait=0)
    with pytest.raises(ConfigError):
        ServerConfig(cert=b"\x00" * 31)


ids16 = st.binary(min_size=16, max_size=16)
k32 = st.binary(min_size=32, max_size=32)


@given(
    st.one_of(
        st.builds(TtpHello, k32, ids16, st.text(max_size=20)),
        st.builds(TtpChallenge, ids16, k32),
        st.builds(EnrolRequest, k32, st.none() | k32, st.none() | st.binary(max_size=64)),
        st.builds(IntentRequest, ids16, k32, st.sampled_from(IntentRole),
                  st.integers(0, 2**32)),
        st.builds(SkDelivery, ids16, k32, st.builds(DeviceRecord, ids16, st.text(max_size=20),
                                                     k32, k32)),
    )
)
def test_ttp_messages_round_trip(msg: wire.Message) -> None:
    assert wire.decode(msg.encode()) == msg


@settings(max_examples=150)
@given(st.lists(st.binary(max_size=120), max_size=4))
def test_only_pairing_errors_escape(blobs: list[bytes]) -> None:
    me = LocalIdentity.generate("x")
    machines = [
        TtpServerConn(ServerConfig(cert=CERT)),
        TtpLinkHost(TtpLinkConfig(), me),
    ]
    for machine in machines:
        machine.start(0.0)
    guest = TtpLinkGuest(TtpLinkConfig(), me)
    guest.start(0.0)
    machines.append(guest)
    for data in blobs:
        for m in machines:
            try:
                m.receive(data, 0.0)
            except PairingError:
                pass
