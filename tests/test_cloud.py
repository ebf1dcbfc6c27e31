"""Cloud authentication and join permission (pairing/cloud.py), machine level."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pairkit.pairing import cbor, wire
from pairkit.pairing.cloud import (
    MAX_HINTS,
    SEALED_ID_LEN,
    AllowJoin,
    CloudChecked,
    CloudGuest,
    CloudHello,
    CloudHost,
    CloudProof,
    CloudReply,
    Grant,
    HostInfo,
    JoinRequest,
    JoinVerdict,
    Role,
    is_probe,
)
from pairkit.pairing.errors import (
    AuthenticationError,
    DecodeError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    ProtocolError,
    RefusedError,
)
from pairkit.pairing.negotiation import Caps, Method
from tests.pair_harness import shuttle

SECRETS = {"pauls-cloud": b"p" * 32, "georges-cloud": b"g" * 32}
GS = b"G" * 32  #: the guest's static key (the pairing proves it; here it is just a value)
HS = b"H" * 32  #: the host's
#: the host's static key pair where a returning device seals its id to it (§10)
HOST_KEY = X25519PrivateKey.from_private_bytes(b"h" * 32)
HOST_PUBLIC = HOST_KEY.public_key().public_bytes_raw()


def mac_for(secrets: dict[str, bytes]):
    return lambda cloud_id, data: hmac.new(secrets[cloud_id], data, hashlib.sha256).digest()


def rng(seed: int = 0):
    return random.Random(seed).randbytes


def test_a_member_proves_membership_in_four_flights() -> None:
    guest = CloudGuest(static=GS, name="Paul's TV", clouds=("georges-cloud", "pauls-cloud"),
                       mac=mac_for(SECRETS), rng=rng(1))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(2))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert guest.done and host.done
    assert guest.role is host.role is Role.MEMBER
    assert guest.cloud_id == host.cloud_id == "pauls-cloud"
    assert len(r.flights) == 4
    assert not r.asked  # no prompt for a member
    # the guest's side is told the outcome (the demo and the CLI narrate it)
    assert r.told == [("guest", CloudChecked(member=True, tried=2))]


def test_a_stranger_asks_to_join_and_the_owner_decides() -> None:
    guest = CloudGuest(static=GS, name="George's phone", clouds=("georges-cloud",),
                       mac=mac_for(SECRETS), rng=rng(3))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(4))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    [(side, question)] = r.asked
    assert side == "host" and isinstance(question, AllowJoin)
    # webinos steps 9-10: the guest learns its cloud proof got nowhere before it asks to join
    assert r.told == [("guest", CloudChecked(member=False, tried=1))]
    assert question.name == "George's phone" and question.wants is Role.GUEST
    host.answer(question, Grant(Role.GUEST, 3600), 1.0)
    shuttle(guest, host)
    assert guest.done and guest.role is Role.GUEST and guest.seconds == 3600


def test_a_refused_stranger_gets_a_clear_error() -> None:
    guest = CloudGuest(static=GS, name="Mallory", clouds=(), mac=mac_for(SECRETS), rng=rng(5))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(6))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    with pytest.raises(RefusedError):
        host.answer(r.questions[0][1], None, 1.0)
    shuttle(guest, host)
    assert guest.failed and "refused" in str(guest.error)


def test_a_wrong_cloud_secret_is_a_stranger_not_a_member() -> None:
    forged = dict(SECRETS, **{"pauls-cloud": b"x" * 32})
    guest = CloudGuest(static=GS, name="Mallory", clouds=("pauls-cloud",), mac=mac_for(forged),
                       rng=rng(7))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(8))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert host.role is Role.STRANGER
    assert isinstance(r.asked[0][1], AllowJoin)
    # a forged secret makes no proof the host accepts: the guest is told it is no member
    assert r.told == [("guest", CloudChecked(member=False, tried=1))]


def test_a_host_without_the_secret_cannot_fake_the_proof() -> None:
    """The guest checks the host's proof before proving anything itself."""
    guest = CloudGuest(static=GS, name="Paul's TV", clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                       rng=rng(9))
    impostor = CloudHost(static=HS, clouds=("pauls-cloud",),
                         mac=mac_for({"pauls-cloud": b"y" * 32}), rng=rng(10))
    impostor.start(0.0)
    guest.start(0.0)
    hello = guest.outgoing()[0]
    # the impostor cannot match the hint, so it answers "not a member": the guest asks to join
    impostor.receive(hello, 0.0)
    guest.receive(impostor.outgoing()[0], 0.0)
    assert guest.state == "await-join-verdict"


def test_a_replayed_proof_does_not_verify() -> None:
    """A proof recorded from one run fails against a host that drew a fresh nonce."""
    mac = mac_for(SECRETS)
    g1 = CloudGuest(static=GS, name="TV", clouds=("pauls-cloud",), mac=mac, rng=rng(11))
    h1 = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac, rng=rng(12))
    h1.start(0.0)
    g1.start(0.0)
    hello = g1.outgoing()[0]
    h1.receive(hello, 0.0)
    g1.receive(h1.outgoing()[0], 0.0)
    recorded_proof = g1.outgoing()[0]
    h2 = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac, rng=rng(13))
    h2.start(0.0)
    h2.receive(hello, 0.0)  # the attacker replays the hello ...
    h2.receive(recorded_proof, 0.0)  # ... and the proof, which covers the old host nonce
    with pytest.raises(AuthenticationError):
        h2.bind(GS)  # checked once the pairing proved the guest's key: it does not verify
    assert h2.role is Role.STRANGER


def test_both_proofs_bind_to_the_proven_keys() -> None:
    guest = CloudGuest(static=GS, name="TV", clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                       rng=rng(16))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                     rng=rng(17))
    host.start(0.0)
    guest.start(0.0)
    shuttle(guest, host)
    guest.bind(HS)
    host.bind(GS)
    assert host.role is Role.MEMBER


@pytest.mark.parametrize("side", ["guest", "host"])
def test_a_relayed_proof_fails_for_whoever_pairs_instead(side: str) -> None:
    """Mallory forwards a real member's cloud step, then pairs as herself: the proof names the
    member's key, not hers, and the side that paired with her refuses (rule 6)."""
    guest = CloudGuest(static=GS, name="TV", clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                       rng=rng(18))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                     rng=rng(19))
    host.start(0.0)
    guest.start(0.0)
    shuttle(guest, host)  # relayed unchanged
    mallory = b"M" * 32
    with pytest.raises(AuthenticationError, match="not the one that proved"):
        (host.bind if side == "host" else guest.bind)(mallory)


def test_a_known_device_comes_back_without_a_prompt_but_must_prove_it() -> None:
    granted = Grant(Role.GUEST, 600)
    guest = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS),
                       device_id=b"d" * 16, host_static=HOST_PUBLIC, rng=rng(14),
                       method=int(Method.RESUME))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                     known_grant=lambda d: granted if d == b"d" * 16 else None, rng=rng(15),
                     static_private=HOST_KEY)
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert not r.asked and guest.role is Role.GUEST
    assert host.claimed == b"d" * 16  # the flow checks it against the pairing's peer


@pytest.mark.parametrize("method", [None, Method.PIN, Method.COMPARE, Method.QR],
                         ids=["unsaid", "pin", "compare", "qr"])
def test_a_known_devices_id_claimed_for_a_method_that_does_not_prove_it_is_refused(
    method: Method | None,
) -> None:
    """Anyone who knows a device's id and the host's key can claim it: a claim honoured for a
    pairing that does not prove that device's key (a PIN, a code) would take a stranger past
    the window and the owner's yes to the owner's code or a PIN (session 15, hostq doubt 3).
    It is refused before anyone is asked; the claim is not recorded."""
    granted = Grant(Role.GUEST, 600)
    guest = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS),
                       device_id=b"d" * 16, host_static=HOST_PUBLIC, rng=rng(14),
                       method=None if method is None else int(method))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                     known_grant=lambda d: granted if d == b"d" * 16 else None, rng=rng(15),
                     static_private=HOST_KEY)
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert not r.asked and host.failed and host.claimed is None
    assert isinstance(host.error, ProtocolError)


def test_a_silent_guest_times_out() -> None:
    host = CloudHost(static=HS, clouds=(), mac=mac_for(SECRETS), timeout=5.0)
    host.start(0.0)
    assert host.next_deadline() == 5.0
    with pytest.raises(PairingTimeout):
        host.on_timeout(5.0)
    assert host.failed


@pytest.mark.parametrize("data", [b"", b"\xff", CloudProof(proof=bytes(32)).encode()])
def test_garbage_or_out_of_order_fails_the_host_cleanly(data: bytes) -> None:
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS))
    host.start(0.0)
    with pytest.raises(PairingError):
        host.receive(data, 0.0)
    assert host.failed
    with pytest.raises(PairingError):
        host.receive(CloudHello(bytes(16)).encode(), 0.0)


def test_grant_validation() -> None:
    with pytest.raises(ValueError):
        Grant(Role.STRANGER)
    with pytest.raises(ValueError):
        Grant(Role.GUEST)
    assert wire.decode(CloudHello(bytes(16), (b"h" * 8,)).encode()).hints == (b"h" * 8,)


# -- a CloudHello's size says nothing of the clouds held (attack review atk23, F5) ----------------

MANY = {f"cloud-{i}": bytes([i]) * 32 for i in range(MAX_HINTS + 2)}


def _hello_of(clouds: tuple[str, ...], seed: int = 0) -> tuple[bytes, CloudHello]:
    guest = CloudGuest(static=GS, name="Paul's TV", clouds=clouds, mac=mac_for(MANY),
                       rng=rng(seed))
    guest.start(0.0)
    (sent,) = guest.outgoing()
    hello = wire.decode(sent)
    assert isinstance(hello, CloudHello)
    return sent, hello


def _real_hint(cloud_id: str, nonce: bytes) -> bytes:
    return mac_for(MANY)(cloud_id, b"pairkit/1 cloud hint" + nonce)[:8]


def test_a_cloud_hello_is_the_same_size_whatever_the_number_of_clouds() -> None:
    sizes = {}
    for n in (0, 1, 2, MAX_HINTS, MAX_HINTS + 2):
        sent, hello = _hello_of(tuple(MANY)[:n])
        assert len(hello.hints) == MAX_HINTS
        assert len(set(hello.hints)) == MAX_HINTS  # no filler repeats another, nor a hint
        sizes[n] = len(sent)
    assert len(set(sizes.values())) == 1, sizes


def test_the_real_hints_sit_at_random_places_among_the_fillers() -> None:
    """The order tells nothing: one real hint lands anywhere among MAX_HINTS (drawn from the
    machine's rng), and the others match nothing a host holds."""
    places = set()
    for seed in range(64):
        _, hello = _hello_of(("cloud-3",), seed)
        real = _real_hint("cloud-3", hello.nonce)
        assert hello.hints.count(real) == 1
        places.add(hello.hints.index(real))
        fillers = [h for h in hello.hints if h != real]
        assert not any(_real_hint(c, hello.nonce) in fillers for c in MANY)
    assert places == set(range(MAX_HINTS))


def test_the_known_hosts_cloud_named_first_is_hinted_among_many() -> None:
    """The guest names the known host's cloud first (runtime/session.py): of more clouds than
    MAX_HINTS it is always hinted, wherever it lands, and the host matches it."""
    clouds = ("cloud-9", *(c for c in MANY if c != "cloud-9"))
    for seed in range(16):
        guest = CloudGuest(static=GS, name="Paul's TV", clouds=clouds, mac=mac_for(MANY),
                           rng=rng(seed))
        host = CloudHost(static=HS, clouds=("cloud-9",), mac=mac_for(MANY), rng=rng(100 + seed))
        host.start(0.0)
        guest.start(0.0)
        shuttle(guest, host)
        assert guest.role is host.role is Role.MEMBER
        assert guest.cloud_id == host.cloud_id == "cloud-9"


def test_a_reply_naming_a_filler_is_refused() -> None:
    """An index that points at a filler names no cloud the guest offered."""
    _, hello = _hello_of(("cloud-3",), 7)
    real = hello.hints.index(_real_hint("cloud-3", hello.nonce))
    guest = CloudGuest(static=GS, name="Paul's TV", clouds=("cloud-3",), mac=mac_for(MANY),
                       rng=rng(7))
    guest.start(0.0)
    guest.outgoing()
    filler = (real + 1) % MAX_HINTS
    with pytest.raises(ProtocolError, match="did not offer"):
        guest.receive(CloudReply(bytes(16), b"p" * 32, filler).encode(), 0.0)


def test_the_hosts_work_per_hello_does_not_grow_with_the_hints() -> None:
    """The host computes one hint per secret it holds, whatever the hello carries, and compares
    it with each: a stranger's hello of MAX_HINTS fillers costs what one of one hint did."""
    calls: list[bytes] = []
    inner = mac_for(MANY)

    def counting(cloud_id: str, data: bytes) -> bytes:
        calls.append(data)
        return inner(cloud_id, data)

    for clouds in ((), ("cloud-0",)):
        calls.clear()
        host = CloudHost(static=HS, clouds=("cloud-1", "cloud-2"), mac=counting, rng=rng(1))
        host.start(0.0)
        _, hello = _hello_of(clouds)
        host.receive(hello.encode(), 0.0)
        hint_macs = [c for c in calls if c.startswith(b"pairkit/1 cloud hint")]
        assert len(hint_macs) == 2  # one per secret the host holds


# -- the hello response (issue 14, item 3: webinos' George picks Paul's phone by name) -----------

PAUL = HostInfo(name="Paul's phone", methods=frozenset({Method.PIN, Method.QR}),
                caps=Caps.DISPLAY | Caps.CONFIRM)


def test_a_visible_host_tells_a_stranger_its_name_before_any_join_request() -> None:
    guest = CloudGuest(static=GS, name="George", clouds=("georges-cloud",),
                       mac=mac_for(SECRETS), rng=rng(20))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), info=PAUL,
                     rng=rng(21))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert guest.host == PAUL
    assert r.told == [("guest", CloudChecked(member=False, tried=1, host=PAUL))]
    assert isinstance(r.asked[0][1], AllowJoin)  # the join request came after


def test_a_private_host_says_nothing_of_itself_to_a_stranger_but_does_to_a_member() -> None:
    private = {"open_to_strangers": lambda: False, "info": PAUL}
    stranger = CloudGuest(static=GS, name="Mallory", clouds=("georges-cloud",),
                          mac=mac_for(SECRETS), rng=rng(22))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(23),
                     **private)
    host.start(0.0)
    stranger.start(0.0)
    r = shuttle(stranger, host)
    assert stranger.host is None and b"Paul" not in b"".join(m for _, m in r.messages)
    assert isinstance(r.errors["host"], RefusedError)  # and the join is refused, as before
    member = CloudGuest(static=GS, name="Paul's TV", clouds=("pauls-cloud",),
                        mac=mac_for(SECRETS), rng=rng(24))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(25),
                     **private)
    host.start(0.0)
    member.start(0.0)
    shuttle(member, host)
    assert member.host == PAUL and member.role is Role.MEMBER


def test_a_probe_asks_who_the_host_is_and_leaves_without_bothering_its_owner() -> None:
    probe = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS), probe=True,
                       rng=rng(26))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), info=PAUL,
                     rng=rng(27))
    host.start(0.0)
    probe.start(0.0)
    r = shuttle(probe, host)
    assert probe.done and probe.host == PAUL and probe.role is Role.STRANGER
    assert not r.asked
    assert host.failed and is_probe(host.error)
    assert not is_probe(RefusedError("the owner refused the request to join"))


def test_a_guest_looking_for_one_name_stops_at_another_host() -> None:
    guest = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS),
                       expect_name="Paul's TV", rng=rng(28))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), info=PAUL,
                     rng=rng(29))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert isinstance(r.errors["guest"], NotFoundError)
    assert "this host is \"Paul's phone\", not \"Paul's TV\"" in str(r.errors["guest"])
    assert not r.asked and host.failed  # told why, nobody asked


def test_a_host_cannot_show_one_name_and_pair_as_another() -> None:
    guest = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS), rng=rng(30))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), info=PAUL,
                     rng=rng(31))
    host.start(0.0)
    guest.start(0.0)
    shuttle(guest, host)
    guest.check_name("Paul's phone")
    with pytest.raises(AuthenticationError, match="said it was \"Paul's phone\" but paired as"):
        guest.check_name("Mallory's phone")


def test_the_checks_that_need_nobody_run_before_the_owner_is_asked() -> None:
    """Issue 16: the guest names its method; the host's precheck refuses it with no question."""
    from pairkit.pairing.errors import UnsupportedError

    seen: list[tuple[int | None, float]] = []

    def precheck(method: int | None, now: float) -> None:
        seen.append((method, now))
        raise UnsupportedError("this host does not allow pairing by pin")

    guest = CloudGuest(static=GS, name="Mallory", clouds=(), mac=mac_for(SECRETS), method=1,
                       rng=rng(7))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                     precheck=precheck, rng=rng(8))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert seen == [(1, 0.0)]
    assert not r.asked  # nobody was asked
    assert host.failed and guest.failed
    assert "does not allow pairing by pin" in str(guest.error)


def test_a_waiting_guest_says_so_and_tells_the_host_when_it_gives_up() -> None:
    from pairkit.pairing.cloud import WaitingForOwner

    guest = CloudGuest(static=GS, name="George's phone", clouds=(), mac=mac_for(SECRETS),
                       answer_time=5.0, rng=rng(9))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), rng=rng(10))
    host.start(0.0)
    guest.start(0.0)
    r = shuttle(guest, host)
    assert [type(e) for _, e in r.statuses] == [WaitingForOwner]
    assert r.statuses[0][1].seconds == 5.0
    assert guest.next_deadline() == 5.0
    with pytest.raises(PairingTimeout, match="did not answer within 5 s"):
        guest.on_timeout(5.0)
    (abort,) = guest.outgoing()  # the host's owner is not left with a question nobody awaits
    with pytest.raises(PairingError):
        host.receive(abort, 5.0)
    assert host.failed


# -- a returning device's sealed id (docs/protocol.md §10; atk19p finding 3, session 22) -------

ID = b"d" * 16  #: the returning device's id, which the host granted an hour


def _come_back(
    seed: int, *, device_id: bytes = ID, host_static: bytes = HOST_PUBLIC,
    tamper: object = None, wants: Role = Role.GUEST,
) -> tuple[object, CloudGuest, CloudHost]:
    """A returning device's cloud step with a host open to strangers (so that a request let
    through would reach the owner): the result, the guest and the host."""
    guest = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS),
                       device_id=device_id, host_static=host_static, rng=rng(seed),
                       method=int(Method.RESUME), wants=wants)
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS),
                     known_grant=lambda d: Grant(Role.GUEST, 3600) if d == ID else None,
                     open_to_strangers=lambda: True, rng=rng(seed + 1), static_private=HOST_KEY)
    host.start(0.0)
    guest.start(0.0)
    return shuttle(guest, host, tamper=tamper), guest, host  # type: ignore[arg-type]


def _join_request(data: bytes) -> JoinRequest | None:
    msg = wire.decode(data)
    return msg if isinstance(msg, JoinRequest) else None


def test_a_returning_devices_id_crosses_only_sealed() -> None:
    r, guest, host = _come_back(40)
    (sent,) = [m for d, m in r.messages if d == "g2h" and _join_request(m) is not None]
    assert ID not in sent  # nor any other message
    assert not any(ID in m for _, m in r.messages)
    request = _join_request(sent)
    assert request is not None and request.reconnect
    assert request.sealed_id is not None and len(request.sealed_id) == SEALED_ID_LEN
    assert not r.asked and guest.role is Role.GUEST and host.claimed == ID


def _replayed_from_another_link() -> Callable[[str, bytes], bytes]:
    first, _, _ = _come_back(50)
    (recorded,) = [m for d, m in first.messages if d == "g2h" and _join_request(m) is not None]
    return lambda d, m: recorded if _join_request(m) is not None else m


def _bit_flipped(d: str, m: bytes) -> bytes:
    request = _join_request(m)
    if request is None or request.sealed_id is None:
        return m
    sealed = bytearray(request.sealed_id)
    sealed[len(sealed) // 2] ^= 0x01
    return dataclasses.replace(request, sealed_id=bytes(sealed)).encode()


@pytest.mark.parametrize("how", ["replayed-from-another-link", "bit-flipped",
                                 "sealed-to-another-host", "an-unknown-id"])
def test_a_sealed_id_that_does_not_open_is_an_unknown_returning_device(how: str) -> None:
    """A sealed id from another link's cloud step, one with a bit flipped, one sealed to
    another host's key: each refused before anyone is asked, by the very answer an unknown
    returning device gets (so the answer tells none of them apart), and nothing claimed."""
    kwargs: dict[str, object] = {}
    if how == "replayed-from-another-link":
        kwargs["tamper"] = _replayed_from_another_link()
    elif how == "bit-flipped":
        kwargs["tamper"] = _bit_flipped
    elif how == "sealed-to-another-host":
        other = X25519PrivateKey.from_private_bytes(b"o" * 32)
        kwargs["host_static"] = other.public_key().public_bytes_raw()
    else:
        kwargs["device_id"] = b"u" * 16
    r, guest, host = _come_back(60, **kwargs)  # type: ignore[arg-type]
    _, _, unknown = _come_back(60, device_id=b"u" * 16)
    assert not r.asked and host.failed and host.claimed is None and host.grant is None
    assert isinstance(host.error, NotFoundError)
    assert isinstance(unknown.error, NotFoundError)
    assert (host.error.code, str(host.error)) == (unknown.error.code, str(unknown.error))
    assert r.guest_error is not None and r.guest_error.code == unknown.error.code
    assert guest.role is Role.STRANGER


def test_the_retired_clear_id_field_is_refused() -> None:
    """Field 4 (the id in the clear) is retired: a request carrying it does not decode."""
    good = JoinRequest(name="George", wants=Role.GUEST).encode()
    body = cbor.decode(good, max_size=256)
    body[4] = ID
    with pytest.raises(PairingError):
        wire.decode(cbor.encode(body))


def test_a_returning_device_needs_the_hosts_key_to_seal_its_id() -> None:
    with pytest.raises(ValueError):
        CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS), device_id=ID)

# -- the hello response to a member is sealed (atk19p finding 3; docs/protocol.md §10) -----------


def _reply_for_member(info: HostInfo, seed: int, **host: object) -> tuple[CloudGuest, bytes]:
    """A member's guest, started, and the host's reply to its hello (as bytes)."""
    member = CloudGuest(static=GS, name="Paul's TV", clouds=("pauls-cloud",),
                        mac=mac_for(SECRETS), rng=rng(seed))
    h = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), info=info,
                  rng=rng(seed + 1), **host)  # type: ignore[arg-type]
    h.start(0.0)
    member.start(0.0)
    h.receive(member.outgoing()[0], 0.0)
    return member, h.outgoing()[0]


def test_a_member_reads_the_hosts_name_that_crossed_sealed_visible_or_private() -> None:
    for open_ in (True, False):
        member, reply = _reply_for_member(PAUL, 40, open_to_strangers=lambda o=open_: o)
        msg = wire.decode(reply, CloudReply)
        assert msg.sealed is not None and msg.proof is not None
        assert (msg.name, msg.methods, msg.caps) == (None, None, None)
        assert b"Paul" not in reply
        member.receive(reply, 0.0)
        assert member.host == PAUL and not member.failed


def test_a_sealed_description_is_one_size_for_names_of_most_lengths() -> None:
    sizes = {
        len(_reply_for_member(dataclasses.replace(PAUL, name=name), 42)[1])
        for name in ("P", "Paul's phone", "Paul's very long named phone in the hall", "é" * 20)
    }
    assert len(sizes) == 1


def test_a_description_in_the_clear_beside_a_proof_or_sealed_without_one_is_refused() -> None:
    member, reply = _reply_for_member(PAUL, 44)
    msg = wire.decode(reply, CloudReply)
    clear = dataclasses.replace(msg, name="Paul's phone")
    with pytest.raises(ProtocolError, match="in the clear to a member"):
        member.receive(clear.encode(), 0.0)
    stranger = CloudGuest(static=GS, name="George", clouds=(), mac=mac_for(SECRETS), rng=rng(46))
    stranger.start(0.0)
    stranger.outgoing()
    with pytest.raises(ProtocolError, match="sealed its description with no cloud proof"):
        stranger.receive(dataclasses.replace(msg, proof=None, index=None).encode(), 0.0)
    assert member.host is None and stranger.host is None


def test_a_member_that_only_asks_opens_the_seal_and_leaves_as_a_probe_does() -> None:
    """Decided (§10): a member's ``discover`` leaves after the sealed reply with the same
    Abort (12 closed, "only asked who the host is"): the host asks nothing, counts nothing."""
    probe = CloudGuest(static=GS, name="Paul's TV", clouds=("pauls-cloud",), probe=True,
                       mac=mac_for(SECRETS), rng=rng(47))
    host = CloudHost(static=HS, clouds=("pauls-cloud",), mac=mac_for(SECRETS), info=PAUL,
                     open_to_strangers=lambda: False, rng=rng(48))
    host.start(0.0)
    probe.start(0.0)
    r = shuttle(probe, host)
    assert probe.done and probe.host == PAUL and probe.role is Role.STRANGER
    assert not r.asked and host.failed and is_probe(host.error)
    assert [type(wire.decode(m)) for _, m in r.messages] == [CloudHello, CloudReply, wire.Abort]


def test_a_returning_devices_request_names_nobody_and_one_that_does_is_refused() -> None:
    """A returning device's JoinRequest carries no name (nobody is asked about it; a listener
    would follow it by its name); one that names itself is refused before anything else."""
    r, _, _ = _come_back(60)
    (sent,) = [m for d, m in r.messages if d == "g2h" and _join_request(m) is not None]
    request = _join_request(sent)
    assert request is not None and request.name == "" and b"George" not in sent

    def named(d: str, m: bytes) -> bytes:
        req = _join_request(m) if d == "g2h" else None
        return m if req is None else dataclasses.replace(req, name="George").encode()

    r2, _, host2 = _come_back(61, tamper=named)
    assert isinstance(r2.host_error, DecodeError) and "no name" in str(r2.host_error)
    assert not r2.asked and host2.claimed is None


def test_a_returning_devices_request_asks_for_no_role_and_one_that_does_is_refused() -> None:
    """Helper kkann's finding (session 23, low): a returning device's request carried the role
    its person asked for (`--as member`) in the clear, the same at each return, though the
    host reads its stored grant and nothing else.  Every returning request says guest; one
    saying more is refused before anything else."""
    as_guest, _, _ = _come_back(63)
    as_member, _, _ = _come_back(63, wants=Role.MEMBER)
    requests = [[m for d, m in r.messages if d == "g2h" and _join_request(m) is not None]
                for r in (as_guest, as_member)]
    (guest_asked,), (member_asked,) = requests
    assert _join_request(member_asked).wants is Role.GUEST  # type: ignore[union-attr]
    assert len(guest_asked) == len(member_asked)

    def member(d: str, m: bytes) -> bytes:
        req = _join_request(m) if d == "g2h" else None
        return m if req is None else dataclasses.replace(req, wants=Role.MEMBER).encode()

    r, _, host = _come_back(64, tamper=member)
    assert isinstance(r.host_error, DecodeError) and "no role" in str(r.host_error)
    assert not r.asked and host.claimed is None


def test_a_returning_devices_verdict_says_no_seconds_left() -> None:
    """atk22c finding F1: the seconds left of a returning guest's grant, in the clear, added to
    the time it was heard, gave the grant's fixed end: the same at every return, another for
    each guest, so a listener linked a guest's returns.  The verdict now says the role only;
    the end crosses inside the secure channel (the Membership's ``expires``)."""
    r, guest, _ = _come_back(62)
    verdicts = [wire.decode(m) for d, m in r.messages if d == "h2g"]
    (verdict,) = [v for v in verdicts if isinstance(v, JoinVerdict)]
    assert verdict.role is Role.GUEST and verdict.seconds is None
    assert guest.role is Role.GUEST
