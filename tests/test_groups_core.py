"""pairing/groups.py and the keystore's group key door, without any I/O.

Envelopes: they open only for their member, only from their controller, only unaltered, and
the key never comes out of a keystore.  Broadcasts: the codec is strict and distinct from the
hello, the receiver refuses replays, forgeries, other groups and wrong epochs, and the replay
window matches a model.  The controller's and the relay's bookkeeping is plain data that
survives a keystore round trip.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing import wire
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    NotFoundError,
    PairingError,
    ReplayError,
    TooLargeError,
)
from pairkit.pairing.groups import (
    ADVERT_MARKER,
    ADVERT_OVERHEAD,
    MAX_EPOCH,
    MAX_MEMBERS,
    MAX_QUEUE,
    MAX_SEQ,
    WINDOW_SIZE,
    DeliveryResult,
    Forward,
    ForwardReceipt,
    GroupAdvert,
    GroupEnvelope,
    GroupMember,
    GroupReceiver,
    GroupRecord,
    HeldGroup,
    KeyDelivery,
    KeyReceipt,
    RelayQueue,
    ReplayWindow,
    WrongEpochError,
    check_group_name,
    decode_advert,
    envelope_info,
    fair_batches,
    is_group_advert,
    open_group_envelope,
    seal_broadcast,
    seal_group_envelope,
    sender_id,
)
from pairkit.pairing.hello import Hello, decode_hello
from pairkit.pairing.negotiation import Caps, Method

PIN = "123456"
KNOWN_KEY = bytes(range(100, 132))


def _store(path: Path, name: str) -> Keystore:
    return Keystore.create(path, PIN, name=name, kdf=Argon2Params.cheapest())


@dataclasses.dataclass
class Trio:
    controller: Keystore
    member: Keystore
    other: Keystore  # another member; also plays the relay

    def controller_key(self, device_id: bytes) -> bytes | None:
        # Every peer the member knows: the controller and the relay (which is no controller).
        for ks in (self.controller, self.other):
            if device_id.hex() == ks.device_id:
                return ks.signing_public
        return None


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Trio:
    base = tmp_path_factory.mktemp("groups")
    return Trio(_store(base / "c.pk", "controller"), _store(base / "m.pk", "member"),
                _store(base / "o.pk", "other"))


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Trio]:
    yield Trio(_store(tmp_path / "c.pk", "controller"), _store(tmp_path / "m.pk", "member"),
               _store(tmp_path / "o.pk", "other"))


def _envelope(t: Trio, group: str = "doors", epoch: int = 1, *, to: Keystore | None = None,
              key: bytes | None = None) -> GroupEnvelope:
    if key is not None:
        t.controller.store_group_key(group, epoch, key)
    elif epoch not in t.controller.group_epochs(group):
        t.controller.new_group_key(group, epoch)
    return seal_group_envelope(t.controller, group=group, epoch=epoch,
                               member_public=(to or t.member).static_public)


# -- envelopes ---------------------------------------------------------------------------------


def test_envelope_round_trip_puts_the_key_in_the_member_keystore(fresh: Trio) -> None:
    env = _envelope(fresh, key=KNOWN_KEY)
    again = GroupEnvelope.decode_bytes(env.encode_bytes())
    assert again == env
    held = open_group_envelope(fresh.member, again, controller_key=fresh.controller_key)
    assert held == HeldGroup("doors", fresh.controller.device_id, 1)
    assert fresh.member.group_epochs("doors") == (1,)
    # The member now encrypts what only the same key opens: it is the controller's key.
    nonce = bytes(12)
    sealed = fresh.member.group_encrypt("doors", 1, nonce, b"close", b"ad")
    assert ChaCha20Poly1305(KNOWN_KEY).decrypt(nonce, sealed, b"ad") == b"close"


def test_the_keystore_never_returns_group_key_bytes(fresh: Trio) -> None:
    fresh.controller.store_group_key("doors", 1, KNOWN_KEY)
    env = _envelope(fresh)
    returned = [
        fresh.controller.new_group_key("doors", 2),
        fresh.controller.seal_group_key("doors", 1, fresh.member.static_public, b"i"),
        fresh.member.accept_group_key(
            "doors", 1, env.enc, env.ct,
            envelope_info(env.controller, env.member, "doors", 1),
        ),
        fresh.member.group_epochs("doors"),
    ]
    assert returned[0] is None and returned[2] is None
    flat = repr(returned).encode() + b"".join(returned[1])
    assert KNOWN_KEY not in flat and KNOWN_KEY.hex().encode() not in flat
    # No public method of the keystore hands out group keys by name.
    names = [n for n, _ in inspect.getmembers(Keystore) if "group" in n and not n.startswith("_")]
    assert set(names) == {
        "store_group_key", "new_group_key", "seal_group_key", "accept_group_key",
        "group_epochs", "forget_group", "group_encrypt", "group_decrypt",
    }


def test_envelope_for_another_member_is_refused_and_stores_nothing(fresh: Trio) -> None:
    env = _envelope(fresh, to=fresh.other)
    with pytest.raises(AuthenticationError, match="for another device"):
        open_group_envelope(fresh.member, env, controller_key=fresh.controller_key)
    # Relabelled for the member, it still does not open (and the signature no longer holds).
    moved = dataclasses.replace(env, member=bytes.fromhex(fresh.member.device_id))
    with pytest.raises(AuthenticationError):
        open_group_envelope(fresh.member, moved, controller_key=fresh.controller_key)
    assert fresh.member.group_epochs("doors") == ()


FIELDS = ("controller", "member", "group", "epoch", "enc", "ct", "signature")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), where=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_tampered_field_is_refused(trio: Trio, field: str, where: int, bit: int) -> None:
    env = _envelope(trio, "tamper", 3)
    value = getattr(env, field)
    if isinstance(value, bytes):
        raw = bytearray(value)
        raw[where % len(raw)] ^= 1 << bit
        changed: object = bytes(raw)
    elif isinstance(value, int):
        changed = value + 1 + where % 5
    else:
        changed = value + "x"
    try:
        bad = dataclasses.replace(env, **{field: changed})
    except DecodeError:
        return  # not even a well-formed envelope
    before = trio.member.group_epochs("tamper")
    with pytest.raises((AuthenticationError, ReplayError)):
        open_group_envelope(trio.member, bad, controller_key=trio.controller_key)
    assert trio.member.group_epochs("tamper") == before


def test_tampered_encoding_is_refused_or_undecodable(trio: Trio) -> None:
    raw = _envelope(trio, "bytes", 1).encode_bytes()
    for i in range(len(raw)):
        for bit in (0, 7):
            damaged = bytearray(raw)
            damaged[i] ^= 1 << bit
            try:
                env = GroupEnvelope.decode_bytes(bytes(damaged))
            except DecodeError:
                continue
            with pytest.raises(PairingError):
                open_group_envelope(trio.member, env, controller_key=trio.controller_key,
                                    held=HeldGroup("bytes", trio.controller.device_id, 1))


def test_signatures_from_a_non_controller_are_refused(fresh: Trio) -> None:
    relay, member = fresh.other, fresh.member
    real = _envelope(fresh)
    held = open_group_envelope(member, real, controller_key=fresh.controller_key)

    # 1. The relay signs the controller's enc || ct as itself: the group has a controller.
    as_relay = dataclasses.replace(real, controller=bytes.fromhex(relay.device_id))
    as_relay = dataclasses.replace(as_relay, signature=relay.sign(_signed(as_relay)))
    with pytest.raises(AuthenticationError, match="only from"):
        open_group_envelope(member, as_relay, controller_key=fresh.controller_key, held=held)
    # ... and for a group not held yet, the controller id in HPKE's info stops it.
    with pytest.raises(AuthenticationError, match="did not open"):
        open_group_envelope(member, as_relay, controller_key=fresh.controller_key)

    # 2. The relay makes its own key for the group and signs it: refused by the held
    #    controller, and by a pinned one for a group not held yet.
    relay.new_group_key("doors", 2)
    own = seal_group_envelope(relay, group="doors", epoch=2, member_public=member.static_public)
    with pytest.raises(AuthenticationError, match="only from"):
        open_group_envelope(member, own, controller_key=fresh.controller_key, held=held)
    relay.new_group_key("vents", 1)
    vents = seal_group_envelope(relay, group="vents", epoch=1, member_public=member.static_public)
    with pytest.raises(AuthenticationError, match="only from"):
        open_group_envelope(member, vents, controller_key=fresh.controller_key,
                            pinned=fresh.controller.device_id)

    # 3. Keeping the controller's name but signing with another key: bad signature.
    forged = dataclasses.replace(real, signature=relay.sign(_signed(real)))
    with pytest.raises(AuthenticationError, match="not signed by its controller"):
        open_group_envelope(member, forged, controller_key=fresh.controller_key, held=held)

    # 4. A controller the member never paired with.
    with pytest.raises(AuthenticationError, match="not a device this one has paired with"):
        open_group_envelope(member, real, controller_key=lambda _id: None)
    assert member.group_epochs("doors") == (1,) and member.group_epochs("vents") == ()


def _signed(env: GroupEnvelope) -> bytes:
    from pairkit.pairing.groups import _signed_part

    return _signed_part(env)


def test_epochs_only_move_forward_and_old_keys_are_forgotten(fresh: Trio) -> None:
    first = _envelope(fresh, epoch=1)
    held = open_group_envelope(fresh.member, first, controller_key=fresh.controller_key)
    again = open_group_envelope(fresh.member, first, controller_key=fresh.controller_key,
                                held=held)
    assert again == held  # the same envelope twice is harmless
    second = _envelope(fresh, epoch=2)
    held = open_group_envelope(fresh.member, second, controller_key=fresh.controller_key,
                               held=held)
    assert held.epoch == 2 and fresh.member.group_epochs("doors") == (2,)
    with pytest.raises(ReplayError, match="older than the epoch"):
        open_group_envelope(fresh.member, first, controller_key=fresh.controller_key, held=held)
    assert fresh.member.group_epochs("doors") == (2,)


def test_a_relay_cannot_open_what_it_carries(fresh: Trio) -> None:
    relay = fresh.other
    env = _envelope(fresh, key=KNOWN_KEY)
    info = envelope_info(env.controller, env.member, env.group, env.epoch)
    with pytest.raises(AuthenticationError):
        relay.open_envelope(env.enc, env.ct, info)
    with pytest.raises(AuthenticationError):
        relay.accept_group_key(env.group, env.epoch, env.enc, env.ct, info)
    relay_info = envelope_info(env.controller, bytes.fromhex(relay.device_id), env.group, 1)
    with pytest.raises(AuthenticationError):
        relay.accept_group_key(env.group, env.epoch, env.enc, env.ct, relay_info)
    assert relay.group_epochs("doors") == ()
    assert KNOWN_KEY not in relay._body()


def test_seal_refuses_bad_arguments(fresh: Trio) -> None:
    with pytest.raises(NotFoundError):
        seal_group_envelope(fresh.controller, group="none", epoch=1,
                            member_public=fresh.member.static_public)
    fresh.controller.new_group_key("doors", 1)
    for kwargs in ({"group": "bad name"}, {"group": ""}, {"epoch": 0}, {"epoch": True}):
        args = {"group": "doors", "epoch": 1} | kwargs
        with pytest.raises(ConfigError):
            seal_group_envelope(fresh.controller, member_public=fresh.member.static_public,
                                **args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="itself"):
        seal_group_envelope(fresh.controller, group="doors", epoch=1,
                            member_public=fresh.controller.static_public)


def test_group_names() -> None:
    for good in ("fire-doors", "a", "Zone_3.b", "x" * 32):
        assert check_group_name(good) == good
    for bad in ("", " doors", "-x", "a b", "é", "x" * 33, "a/b", None, 3):
        with pytest.raises(ConfigError):
            check_group_name(bad)


def test_wire_messages_round_trip_with_their_type_ids(fresh: Trio) -> None:
    env = _envelope(fresh)
    messages = [
        KeyDelivery((env, env)),
        KeyReceipt((DeliveryResult("doors", 1, True), DeliveryResult("doors", 1, False, "no"))),
        Forward((env,)),
        ForwardReceipt((DeliveryResult("doors", 1, True),), 3),
        ForwardReceipt((DeliveryResult("doors", 2, False, "this device is not a relay"),), 0),
    ]
    for msg in messages:
        assert wire.decode(msg.encode()) == msg
    assert {type(m).TYPE for m in messages} == {90, 91, 92, 93}
    assert all(90 <= t <= 119 for t in (KeyDelivery.TYPE, ForwardReceipt.TYPE))


# -- the advertisement ---------------------------------------------------------------------------


adverts = st.builds(
    GroupAdvert,
    epoch=st.integers(1, 2**32 - 1),
    randomizer=st.binary(min_size=8, max_size=8),
    seq=st.integers(1, MAX_SEQ),
    sealed=st.binary(min_size=24, max_size=190),
)


@given(adverts)
def test_advert_codec_round_trips(advert: GroupAdvert) -> None:
    data = advert.encode()
    assert data[0] == ADVERT_MARKER and is_group_advert(data)
    assert decode_advert(data) == advert
    with pytest.raises(DecodeError):
        decode_hello(data)  # a hello decoder never takes a group broadcast


@given(st.binary(max_size=260))
def test_advert_decoder_only_raises_decode_error(data: bytes) -> None:
    try:
        advert = decode_advert(data)
    except DecodeError:
        return
    assert advert.encode() == data


@given(visible=st.booleans(), l2cap=st.booleans(), tag=st.binary(min_size=8, max_size=8),
       methods=st.sets(st.sampled_from([Method.PIN, Method.QR, Method.RESUME])))
def test_a_hello_is_never_a_group_broadcast(visible: bool, l2cap: bool, tag: bytes,
                                            methods: set[Method]) -> None:
    hello = Hello(visible, Caps.DISPLAY, frozenset(methods), tag, l2cap).encode()
    assert not is_group_advert(hello)
    with pytest.raises(DecodeError):
        decode_advert(hello)


def test_advert_sizes_and_limits(fresh: Trio) -> None:
    fresh.controller.new_group_key("doors", 1)
    sender = sender_id(fresh.controller.device_id)
    data = seal_broadcast(fresh.controller, group="doors", epoch=1, sender=sender, seq=1,
                          command=b"x" * 20, rng=os.urandom, max_payload=208)
    assert len(data) == ADVERT_OVERHEAD + 20 == 61
    assert seal_broadcast(fresh.controller, group="doors", epoch=1, sender=sender, seq=2,
                          command=b"x" * 167, rng=os.urandom, max_payload=208)
    with pytest.raises(TooLargeError, match="167 bytes at most"):
        seal_broadcast(fresh.controller, group="doors", epoch=1, sender=sender, seq=3,
                       command=b"x" * 168, rng=os.urandom, max_payload=208)
    with pytest.raises(TooLargeError):  # legacy: 10 bytes of service data, nothing fits
        seal_broadcast(fresh.controller, group="doors", epoch=1, sender=sender, seq=4,
                       command=b"", rng=os.urandom, max_payload=10)
    for bad in ({"sender": b"short"}, {"seq": 0}, {"seq": MAX_SEQ + 1}, {"epoch": 0}):
        args = {"group": "doors", "epoch": 1, "sender": sender, "seq": 5} | bad
        with pytest.raises(ConfigError):
            seal_broadcast(fresh.controller, command=b"c", rng=os.urandom,
                           **args)  # type: ignore[arg-type]


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        return self.n.to_bytes(size, "big")


@pytest.fixture
def groups2(fresh: Trio) -> Trio:
    """The controller runs 'doors' (member and other in it) and 'vents' (other only)."""
    for group, members in (("doors", (fresh.member, fresh.other)), ("vents", (fresh.other,))):
        fresh.controller.new_group_key(group, 1)
        for m in members:
            env = seal_group_envelope(fresh.controller, group=group, epoch=1,
                                      member_public=m.static_public)
            open_group_envelope(m, env, controller_key=fresh.controller_key)
    return fresh


def _send(ks: Keystore, group: str, seq: int, command: bytes, epoch: int = 1) -> bytes:
    return seal_broadcast(ks, group=group, epoch=epoch, sender=sender_id(ks.device_id), seq=seq,
                          command=command, rng=os.urandom)


def test_receiver_reads_its_group_and_refuses_replays(groups2: Trio) -> None:
    rx = GroupReceiver(groups2.member, {"doors": 1})
    data = _send(groups2.controller, "doors", 1, b"close all doors")
    got = rx.receive(data)
    assert (got.group, got.epoch, got.seq, got.command) == ("doors", 1, 1, b"close all doors")
    assert got.sender == bytes.fromhex(groups2.controller.device_id)[:8]
    with pytest.raises(ReplayError):
        rx.receive(data)
    # Another member sends too: its own window.
    other = rx.receive(_send(groups2.other, "doors", 1, b"door 4 jammed"))
    assert other.sender == bytes.fromhex(groups2.other.device_id)[:8]


def test_made_up_senders_never_take_the_controllers_window(groups2: Trio) -> None:
    """atk19y finding 6: a member holding the key writes any sender id it likes.  Of the
    MAX_MEMBERS + 1 windows of a group and epoch, one is the controller's: the others fill at
    MAX_MEMBERS, and the controller, heard last, still gets its own.  A group taken from
    another controller starts with no windows (another key)."""
    chief = sender_id(groups2.controller.device_id)
    rx = GroupReceiver(groups2.member, {"doors": 1}, controllers={"doors": chief})

    def made_up(i: int) -> bytes:
        return seal_broadcast(groups2.other, group="doors", epoch=1, sender=i.to_bytes(8, "big"),
                              seq=1, command=b"x", rng=os.urandom)

    for i in range(MAX_MEMBERS):
        rx.receive(made_up(i))
    with pytest.raises(TooLargeError, match="256 senders besides its controller"):
        rx.receive(made_up(MAX_MEMBERS))
    assert rx.receive(_send(groups2.controller, "doors", 1, b"close")).sender == chief
    assert rx.receive(_send(groups2.controller, "doors", 2, b"open")).command == b"open"
    assert len(rx.windows) == MAX_MEMBERS + 1
    # Not knowing the controller, a receiver keeps MAX_MEMBERS + 1 windows for anyone.
    blind = GroupReceiver(groups2.member, {"doors": 1})
    for i in range(MAX_MEMBERS + 1):
        blind.receive(made_up(i))
    with pytest.raises(TooLargeError, match="257 senders already"):
        blind.receive(_send(groups2.controller, "doors", 3, b"shut out"))
    rx.set_epoch("doors", 1, controller=chief)  # the same controller: windows kept
    assert len(rx.windows) == MAX_MEMBERS + 1
    rx.set_epoch("doors", 1, controller=sender_id(groups2.other.device_id))
    assert rx.windows == {} and rx.controllers == {"doors": sender_id(groups2.other.device_id)}


def test_a_member_of_one_group_cannot_read_another(groups2: Trio) -> None:
    rx = GroupReceiver(groups2.member, {"doors": 1})
    with pytest.raises(AuthenticationError, match="did not authenticate"):
        rx.receive(_send(groups2.controller, "vents", 1, b"vent zone 2"))
    # Even listening to 'vents' by name does not help without its key.
    rx.set_epoch("vents", 1)
    with pytest.raises(AuthenticationError):
        rx.receive(_send(groups2.controller, "vents", 1, b"vent zone 2"))
    assert rx.windows == {}


def test_wrong_epochs_are_refused(groups2: Trio) -> None:
    groups2.controller.new_group_key("doors", 2)
    rx = GroupReceiver(groups2.member, {"doors": 1})
    with pytest.raises(WrongEpochError, match="epoch 2"):
        rx.receive(_send(groups2.controller, "doors", 1, b"new epoch", epoch=2))
    old = _send(groups2.controller, "doors", 1, b"old epoch")
    rx.set_epoch("doors", 2)  # after a rekey, epoch 1 traffic is refused
    with pytest.raises(WrongEpochError):
        rx.receive(old)
    # An epoch rewritten in the header fails the tag (it is in the associated data).
    raw = bytearray(_send(groups2.controller, "doors", 5, b"x", epoch=2))
    raw[4] ^= 3
    rx.set_epoch("doors", 1)
    with pytest.raises((AuthenticationError, WrongEpochError)):
        rx.receive(bytes(raw))


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(min_value=0), bit=st.integers(0, 7), cut=st.booleans())
def test_forged_broadcasts_are_never_accepted(trio: Trio, where: int, bit: int, cut: bool) -> None:
    if trio.member.group_epochs("forge") == ():
        trio.controller.new_group_key("forge", 1)
        env = seal_group_envelope(trio.controller, group="forge", epoch=1,
                                  member_public=trio.member.static_public)
        open_group_envelope(trio.member, env, controller_key=trio.controller_key)
    data = bytearray(_send(trio.controller, "forge", 1 + where % 1000, b"genuine command"))
    if cut:
        data = data[: where % len(data)]
    else:
        data[where % len(data)] ^= 1 << bit
    rx = GroupReceiver(trio.member, {"forge": 1})
    with pytest.raises((DecodeError, AuthenticationError, WrongEpochError)):
        rx.receive(bytes(data))
    assert rx.windows == {}


@given(st.lists(st.integers(1, 300), max_size=120), st.integers(1, 80))
def test_replay_window_matches_a_model(seqs: list[int], size: int) -> None:
    window = ReplayWindow(size=size)
    accepted: set[int] = set()
    for seq in seqs:
        top = max(accepted, default=0)
        fresh_enough = seq > top - size
        expect = seq not in accepted and fresh_enough
        try:
            window = window.accept(seq)
        except ReplayError:
            assert not expect, (seq, sorted(accepted))
            continue
        assert expect, (seq, sorted(accepted))
        accepted.add(seq)
    assert window.top == max(accepted, default=0)


def test_replay_window_edges() -> None:
    w = ReplayWindow().accept(100)
    w = w.accept(100 - WINDOW_SIZE + 1)  # the oldest number still in the window
    with pytest.raises(ReplayError, match="too old"):
        w.accept(100 - WINDOW_SIZE)
    w = w.accept(100 + 10 * WINDOW_SIZE)  # a jump far ahead clears the window
    assert w.bitmap == 1
    for bad in (0, -1, MAX_SEQ + 1, True):
        with pytest.raises(DecodeError):
            w.accept(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ReplayWindow(top=1, bitmap=1 << WINDOW_SIZE)


def test_replay_state_survives_a_restart(groups2: Trio) -> None:
    rx = GroupReceiver(groups2.member, {"doors": 1})
    data = [_send(groups2.controller, "doors", seq, b"c%d" % seq) for seq in (1, 2, 3)]
    rx.receive(data[2])
    rx.receive(data[0])
    saved = rx.windows_to_plain()
    restarted = GroupReceiver(groups2.member, {"doors": 1},
                              windows=GroupReceiver.windows_from_plain(saved))
    with pytest.raises(ReplayError):
        restarted.receive(data[0])
    with pytest.raises(ReplayError):
        restarted.receive(data[2])
    assert restarted.receive(data[1]).command == b"c2"
    with pytest.raises(DecodeError):
        GroupReceiver.windows_from_plain([["doors", 1, b"x"]])


def test_the_injected_randomizer_is_the_nonce_prefix(groups2: Trio) -> None:
    rng = _Counter()
    data = seal_broadcast(groups2.controller, group="doors", epoch=1,
                          sender=sender_id(groups2.controller.device_id), seq=7,
                          command=b"c", rng=rng)
    advert = decode_advert(data)
    assert advert.randomizer == (1).to_bytes(8, "big")
    assert advert.nonce == advert.randomizer + (7).to_bytes(4, "big")


# -- bookkeeping -------------------------------------------------------------------------------


def _member(i: int, **kw: object) -> GroupMember:
    return GroupMember(f"{i:032x}", f"m{i}", **kw)  # type: ignore[arg-type]


def test_group_record_membership_and_epochs() -> None:
    rec = GroupRecord("doors").with_member(_member(1)).with_member(_member(2, via=f"{9:032x}"))
    assert rec.epoch == 1 and [m.name for m in rec.pending()] == ["m1", "m2"]
    rec = rec.delivered_to(f"{1:032x}", 1)
    assert [m.name for m in rec.pending()] == ["m2"]
    with pytest.raises(ConfigError, match="already a member"):
        rec.with_member(_member(1))
    after = rec.without_member(f"{2:032x}")
    assert after.epoch == 2 and [m.name for m in after.pending()] == ["m1"]
    with pytest.raises(NotFoundError):
        after.without_member(f"{2:032x}")
    assert GroupRecord.from_plain("doors", after.to_plain()) == after
    assert after.rekeyed().epoch == 3
    with pytest.raises(DecodeError):
        GroupRecord.from_plain("doors", {"epoch": 1, "members": {"zz": {}}})
    with pytest.raises(ConfigError):
        _member(1, via=f"{1:032x}")


def test_adding_members_starts_one_new_epoch_once_the_key_may_have_been_used() -> None:
    """atk19g finding 3: a member added at an epoch whose key protected broadcasts read
    them.  An add moves the group to a new epoch (every member pending at it) when a member
    holds the key, or was sealed it, or the controller broadcast under it; never otherwise,
    and several members added together make one new epoch."""
    rec = GroupRecord("doors")
    fresh = rec.joined([_member(1), _member(2)], key_used=False)
    assert fresh.epoch == 1 and not fresh.key_given()  # nobody but the controller holds it
    assert fresh.joined([_member(3)], key_used=False).epoch == 1
    assert fresh.joined([_member(3)], key_used=True).epoch == 2  # the controller broadcast

    sealed = fresh.waiting_for(f"{1:032x}", b"envelope")  # sealed, not confirmed yet
    assert sealed.key_given()
    confirmed = fresh.delivered_to(f"{1:032x}", 1)
    assert confirmed.key_given() and confirmed.member(f"{1:032x}").envelope is None  # type: ignore[union-attr]
    for shared in (sealed, confirmed):
        after = shared.joined([_member(3), _member(4)], key_used=False)
        assert after.epoch == 2  # one new epoch for both
        assert [m.name for m in after.pending()] == ["m1", "m2", "m3", "m4"]
        assert all(m.envelope is None and m.attempts == 0 for m in after.members)
    # An earlier member keeps what it confirmed (the old epoch) until it confirms the new one.
    after = confirmed.joined([_member(3)], key_used=False)
    assert after.member(f"{1:032x}").delivered == 1  # type: ignore[union-attr]
    assert after.member(f"{1:032x}").state(after.epoch) == "pending"  # type: ignore[union-attr]
    # A new epoch whose key was not given out yet (after a removal, say) needs no other.
    removed = confirmed.without_member(f"{2:032x}")
    assert removed.epoch == 2 and not removed.key_given()
    assert removed.joined([_member(5)], key_used=False).epoch == 2
    with pytest.raises(ConfigError, match="at least one"):
        fresh.joined([], key_used=True)
    with pytest.raises(ConfigError, match="already a member"):
        confirmed.joined([_member(3), _member(1)], key_used=False)
    with pytest.raises(ConfigError, match="every epoch"):
        dataclasses.replace(confirmed, epoch=MAX_EPOCH).joined([_member(3)], key_used=True)
    with pytest.raises(TooLargeError):
        GroupRecord("doors").joined([_member(i) for i in range(1, MAX_MEMBERS + 2)],
                                    key_used=False)


def test_records_survive_the_keystore(fresh: Trio, tmp_path: Path) -> None:
    rec = GroupRecord("doors", 3, (_member(1, delivered=2), _member(2, transport="tcp:h:1")))
    held = HeldGroup("vents", fresh.controller.device_id, 4)
    fresh.member.set_setting("r", rec.to_plain())
    fresh.member.set_setting("h", held.to_plain())
    fresh.member.save()
    again = Keystore.open(fresh.member.path, PIN)
    assert GroupRecord.from_plain("doors", again.setting("r")) == rec
    assert HeldGroup.from_plain("vents", again.setting("h")) == held


def test_relay_queue_gives_each_controller_its_own_share() -> None:
    """atk19g finding 2 (medium, availability): one queue of 1,024 envelopes for every
    controller let any peer of the relay (each is the controller of its own groups) fill it,
    and the real controller's envelopes were refused.  Each controller now has MAX_QUEUE of
    its own: one that filled its share is refused, another is not."""
    mallory, ctl, far = b"\x0a" * 16, b"\x0c" * 16, b"\x0f" * 16

    def envelope(controller: bytes, group: str) -> GroupEnvelope:
        return GroupEnvelope(controller, far, group, 1, os.urandom(32), os.urandom(48),
                             os.urandom(64))

    q = RelayQueue(tuple(envelope(mallory, f"m{i}") for i in range(MAX_QUEUE)))
    with pytest.raises(TooLargeError, match="from this controller"):
        q.add(envelope(mallory, "one-more"))
    q = q.add(envelope(ctl, "doors"))
    assert len(q) == MAX_QUEUE + 1 and q.for_member(far)[-1].controller == ctl
    # a newer epoch of a queued envelope replaces it, a full share or not
    newer = dataclasses.replace(q.envelopes[0], epoch=2)
    assert q.add(newer).envelopes[-1] == newer and len(q.add(newer)) == MAX_QUEUE + 1


def test_a_relay_hands_a_member_its_envelopes_in_batches_fair_to_each_controller() -> None:
    """A batch holds at most MAX_BATCH envelopes (the message's limit): a relay that sent a
    member more at once failed every round, so 33 envelopes from anyone kept the member from
    getting any through it.  The batches take each controller's oldest in turn, so one
    controller's many do not make another's wait behind them (atk19g finding 2)."""
    far = b"\x0f" * 16

    def envelope(controller: bytes, group: str) -> GroupEnvelope:
        return GroupEnvelope(controller, far, group, 1, os.urandom(32), os.urandom(48),
                             os.urandom(64))

    many = [envelope(b"\x0a" * 16, f"m{i}") for i in range(100)]
    real = envelope(b"\x0c" * 16, "doors")
    batches = fair_batches((*many, real))
    assert [len(b) for b in batches] == [32, 32, 32, 5]
    assert batches[0][:2] == (many[0], real)  # one of each controller first
    assert [e for b in batches for e in b] == [many[0], real, *many[1:]]
    assert fair_batches(()) == []


def test_relay_queue_keeps_the_newest_epoch_per_member_and_group(fresh: Trio) -> None:
    e1 = _envelope(fresh, epoch=1)
    e2 = _envelope(fresh, epoch=2)
    other = _envelope(fresh, epoch=1, to=fresh.other)
    q = RelayQueue().add(e1).add(other).add(e2)
    assert q.for_member(e1.member) == (e2,) and len(q) == 2
    assert q.add(e1) == q  # an older epoch never replaces a newer one
    assert q.members() == (other.member, e1.member)
    assert RelayQueue.from_plain(q.to_plain()) == q
    assert len(q.without(e2)) == 1
    with pytest.raises(DecodeError):
        RelayQueue.from_plain([b"not cbor"])
