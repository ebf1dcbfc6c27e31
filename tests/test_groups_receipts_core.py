"""Signed receipts, retries and the relay's receipt store, sans I/O (pairing/groups.py,
pairing/delivery.py; issue 14).  The same checks run over real links, with a relay that forges,
replays and drops, in test_groups_receipts.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing import wire
from pairkit.pairing.delivery import DeliveryReceiver, GiveReceipts, ReceiptFetch
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    PairingTimeout,
    ProtocolError,
    ReplayError,
)
from pairkit.pairing.groups import (
    CONFIRMED,
    MAX_QUEUE,
    PENDING,
    UNREACHABLE,
    GroupEnvelope,
    GroupMember,
    GroupReceipt,
    GroupRecord,
    KeyReceipt,
    ReceiptBatch,
    ReceiptRequest,
    RelayReceipts,
    RetryPolicy,
    check_receipt,
    envelope_digest,
    receipt_of,
    seal_group_envelope,
    signed_result,
)

PIN = "123456"
NOW = 1000.0


@dataclasses.dataclass
class Three:
    controller: Keystore
    member: Keystore
    relay: Keystore

    def envelope(self, group: str = "doors", epoch: int = 1) -> GroupEnvelope:
        if epoch not in self.controller.group_epochs(group):
            self.controller.new_group_key(group, epoch)
        return seal_group_envelope(self.controller, group=group, epoch=epoch,
                                   member_public=self.member.static_public)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Three]:
    base = tmp_path_factory.mktemp("receipts")
    yield Three(*(Keystore.create(base / f"{n}.pk", PIN, name=n, kdf=Argon2Params.cheapest())
                  for n in ("controller", "member", "relay")))


def _receipt(t: Three, env: GroupEnvelope, ok: bool = True) -> GroupReceipt:
    receipt = receipt_of(env, signed_result(t.member, env, ok, None if ok else "no"),
                         bytes.fromhex(t.member.device_id))
    assert receipt is not None
    return receipt


def test_a_members_receipt_confirms_exactly_its_envelope(three: Three) -> None:
    env = three.envelope()
    assert check_receipt(_receipt(three, env), expected=env,
                         member_signing=three.member.signing_public) is True
    refused = _receipt(three, env, ok=False)
    assert check_receipt(refused, expected=env, member_signing=three.member.signing_public) is False
    # The same member, group and epoch, sealed again: another envelope, another receipt.
    again = three.envelope()
    assert envelope_digest(again) != envelope_digest(env)
    with pytest.raises(ReplayError, match="another envelope"):
        check_receipt(_receipt(three, env), expected=again,
                      member_signing=three.member.signing_public)
    # An older epoch's receipt does not confirm a newer epoch.
    newer = three.envelope(epoch=2)
    with pytest.raises(ReplayError):
        check_receipt(_receipt(three, env), expected=newer,
                      member_signing=three.member.signing_public)


def test_a_receipt_names_the_envelope_with_its_certificate(three: Three) -> None:
    """The digest a receipt names covers the certificate (field 9) as the member received it
    (docs/protocol.md §15): a relay that strips or swaps it gets no receipt that confirms."""
    env = dataclasses.replace(three.envelope(), cert=b"\x30" * 40)
    for carried in (dataclasses.replace(env, cert=None), dataclasses.replace(env, cert=b"x")):
        assert envelope_digest(carried) != envelope_digest(env)
        with pytest.raises(ReplayError):
            check_receipt(_receipt(three, carried), expected=env,
                          member_signing=three.member.signing_public)
    assert check_receipt(_receipt(three, env), expected=env,
                         member_signing=three.member.signing_public) is True


def test_a_relay_cannot_make_or_alter_a_receipt(three: Three) -> None:
    env = three.envelope()
    genuine = _receipt(three, env, ok=False)
    forged = [
        # signed by the relay, with its own key, as if it were the member
        dataclasses.replace(genuine, ok=True, signature=three.relay.sign(b"anything")),
        # the member's refusal turned into a "taken"
        dataclasses.replace(genuine, ok=True),
        # the member's real signature over another statement
        dataclasses.replace(genuine, signature=three.member.sign(b"another statement")),
        dataclasses.replace(genuine, signature=bytes(64)),
    ]
    for receipt in forged:
        with pytest.raises(AuthenticationError, match="not signed by its member"):
            check_receipt(receipt, expected=env, member_signing=three.member.signing_public)
    # A real receipt checked against someone else's key is no receipt either.
    with pytest.raises(AuthenticationError):
        check_receipt(_receipt(three, env), expected=env,
                      member_signing=three.relay.signing_public)
    # Relabelled to the envelope the controller waits for: the signature covers the digest.
    newer = three.envelope(epoch=3)
    relabelled = dataclasses.replace(_receipt(three, env), epoch=3,
                                     envelope=envelope_digest(newer))
    with pytest.raises(AuthenticationError):
        check_receipt(relabelled, expected=newer, member_signing=three.member.signing_public)


def test_an_unsigned_result_makes_no_receipt_and_reasons_are_cut(three: Three) -> None:
    env = three.envelope()
    from pairkit.pairing.groups import DeliveryResult

    assert receipt_of(env, DeliveryResult("doors", 1, True), b"\x01" * 16) is None
    long = signed_result(three.member, env, False, "x" * 500)
    assert long.reason == "x" * 200 and long.signature is not None
    # A result without field 6 (an older member) still decodes.
    old = KeyReceipt((DeliveryResult("doors", 1, True),))
    assert wire.decode(old.encode(), KeyReceipt).results[0].signature is None


def test_retry_policy_backs_off_to_its_cap_and_checks_itself() -> None:
    policy = RetryPolicy(first=1, factor=2, cap=5, attempts=4)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 5, 5, 5]
    assert RetryPolicy(first=1, cap=1e4).delay(10_000) == 1e4  # no overflow
    for bad in ({"first": 0}, {"cap": 0.5, "first": 1}, {"factor": 0.5}, {"attempts": 0},
                {"attempts": True}, {"first": "1"}):
        with pytest.raises(ConfigError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def _m(i: int, **kw: object) -> GroupMember:
    return GroupMember(f"{i:032x}", f"m{i}", **kw)  # type: ignore[arg-type]


def test_a_record_counts_attempts_and_gives_up_when_they_run_out() -> None:
    policy = RetryPolicy(first=10, factor=3, cap=100, attempts=3)
    rec = GroupRecord("doors").with_member(_m(1)).with_member(_m(2))
    one = f"{1:032x}"
    assert [m.name for m in rec.due(NOW)] == ["m1", "m2"]
    rec = rec.attempted(one, NOW, policy, "queued at relay")
    m1 = rec.member(one)
    assert m1 is not None and (m1.attempts, m1.next_try, m1.state(1)) == (1, NOW + 10, PENDING)
    assert [m.name for m in rec.due(NOW + 9)] == ["m2"] and rec.next_due() == 0.0
    rec = rec.attempted(one, NOW + 10, policy, "again").attempted(one, NOW + 40, policy, "x")
    m1 = rec.member(one)
    assert m1 is not None and m1.state(1) == UNREACHABLE and m1.note == "x"
    assert one not in {m.device_id for m in rec.due(NOW + 10_000)}
    assert rec.try_again().member(one).state(1) == PENDING  # type: ignore[union-attr]
    # Confirmed: nothing waits any more.
    done = rec.waiting_for(f"{2:032x}", b"env").delivered_to(f"{2:032x}", 1)
    m2 = done.member(f"{2:032x}")
    assert m2 is not None and (m2.state(1), m2.envelope) == (CONFIRMED, None)
    # A new epoch: every member pending again, counts reset.
    nxt = done.rekeyed()
    assert {m.state(nxt.epoch) for m in nxt.members} == {PENDING}
    assert all(m.attempts == 0 and not m.unreachable for m in nxt.members)
    assert GroupRecord.from_plain("doors", rec.to_plain()) == rec


def test_a_record_from_before_receipts_still_reads() -> None:
    old = {"epoch": 2, "members": {f"{1:032x}": {"name": "door", "via": None,
                                                 "transport": None, "address": None,
                                                 "delivered": 2}}}
    rec = GroupRecord.from_plain("doors", old)
    m = rec.members[0]
    assert (m.state(2), m.attempts, m.envelope, m.unreachable) == (CONFIRMED, 0, None, False)
    for damaged in ({"attempts": -1}, {"unreachable": "yes"}, {"envelope": "text"},
                    {"next_try": "soon"}):
        bad = {"epoch": 2, "members": {f"{1:032x}": {"name": "d", **damaged}}}
        with pytest.raises(DecodeError):
            GroupRecord.from_plain("doors", bad)


def test_relay_receipts_keep_the_newest_per_member_and_answer_only_their_controller(
    three: Three,
) -> None:
    r1 = _receipt(three, three.envelope(epoch=1))
    r2 = _receipt(three, three.envelope(epoch=2))
    store = RelayReceipts().add(r2).add(r1)
    assert store.receipts == (r2,)  # an older epoch never replaces a newer one
    controller = bytes.fromhex(three.controller.device_id)
    assert store.find(controller, [r2.envelope, r1.envelope]) == (r2,)
    assert store.find(b"\x09" * 16, [r2.envelope]) == ()
    assert RelayReceipts.from_plain(store.to_plain()) == store
    with pytest.raises(DecodeError):
        RelayReceipts.from_plain([b"junk"])


# -- the machines ------------------------------------------------------------------------------


def test_receipt_fetch_takes_only_receipts_it_asked_for(three: Three) -> None:
    env, other = three.envelope(), three.envelope()
    fetch = ReceiptFetch([envelope_digest(env)], timeout=5)
    fetch.start(NOW)
    (sent,) = [wire.decode(m) for m in fetch.outgoing()]
    assert sent == ReceiptRequest((envelope_digest(env),))
    fetch.receive(ReceiptBatch((_receipt(three, env),)).encode(), NOW)
    assert fetch.done and fetch.receipts == (_receipt(three, env),)  # Ed25519 is deterministic

    stray = ReceiptFetch([envelope_digest(env)], timeout=5)
    stray.start(NOW)
    with pytest.raises(ProtocolError, match="not asked about"):
        stray.receive(ReceiptBatch((_receipt(three, other),)).encode(), NOW)

    silent = ReceiptFetch([envelope_digest(env)], timeout=5)
    silent.start(NOW)
    with pytest.raises(PairingTimeout):
        silent.on_timeout(NOW + 6)
    with pytest.raises(ProtocolError):
        ReceiptFetch([], timeout=5)
    with pytest.raises(ProtocolError):
        ReceiptFetch([b"\x00" * 32] * 33, timeout=5)


def test_a_relay_answers_a_receipt_request_and_a_member_holds_none(three: Three) -> None:
    env = three.envelope()
    digest = envelope_digest(env)
    relay = DeliveryReceiver(relay=True, idle=30)
    relay.start(NOW)
    relay.receive(ReceiptRequest((digest,)).encode(), NOW)
    (event,) = relay.events()
    assert event == GiveReceipts((digest,))
    with pytest.raises(ProtocolError, match="asked about"):
        relay.answer_receipts([_receipt(three, three.envelope())], NOW)

    relay = DeliveryReceiver(relay=True, idle=30)
    relay.start(NOW)
    relay.receive(ReceiptRequest((digest,)).encode(), NOW)
    relay.events()
    relay.answer_receipts([_receipt(three, env)], NOW)
    (answer,) = [wire.decode(m) for m in relay.outgoing()]
    assert answer == ReceiptBatch((_receipt(three, env),))

    member = DeliveryReceiver(relay=False, idle=30)
    member.start(NOW)
    member.receive(ReceiptRequest((digest,)).encode(), NOW)
    assert [wire.decode(m) for m in member.outgoing()] == [ReceiptBatch(())]


@given(st.binary(max_size=300))
def test_the_receipt_messages_decode_strictly(data: bytes) -> None:
    for kind in (ReceiptRequest, ReceiptBatch):
        try:
            wire.decode(data, kind)
        except DecodeError:
            pass


def test_receipts_survive_the_wire_and_a_keystore(three: Three, tmp_path: Path) -> None:
    receipt = _receipt(three, three.envelope())
    assert wire.decode(ReceiptBatch((receipt,)).encode(), ReceiptBatch).receipts == (receipt,)
    three.relay.set_setting("held", RelayReceipts((receipt,)).to_plain())
    three.relay.save()
    again = Keystore.open(three.relay.path, PIN)
    assert RelayReceipts.from_plain(again.setting("held")).receipts == (receipt,)
    with pytest.raises(DecodeError):
        GroupReceipt.decode_bytes(receipt.encode_bytes()[:-3])


# -- the group agent ---------------------------------------------------------------------------


def test_an_agent_command_is_checked_end_to_end(three: Three) -> None:
    from pairkit.pairing.errors import ExpiredError
    from pairkit.pairing.groups import HeldGroup, check_agent_command, sign_agent_command

    agent = bytes.fromhex(three.relay.device_id)
    held = HeldGroup("doors", three.controller.device_id, 3)
    cmd = sign_agent_command(three.controller, agent=agent, group="doors", epoch=3, number=5,
                             command=b"close", air_ms=1000)
    signing = three.controller.signing_public
    check_agent_command(cmd, agent=agent, held=held, controller_signing=signing, last_number=4)
    bad = [
        (dict(last_number=5), ReplayError),
        (dict(held=None), AuthenticationError),
        (dict(controller_signing=None), AuthenticationError),
        (dict(controller_signing=three.member.signing_public), AuthenticationError),
        (dict(agent=bytes(16)), AuthenticationError),
        (dict(held=HeldGroup("doors", three.controller.device_id, 4)), ExpiredError),
    ]
    for change, error in bad:
        kw = dict(agent=agent, held=held, controller_signing=signing, last_number=4) | change
        with pytest.raises(error):
            check_agent_command(cmd, **kw)  # type: ignore[arg-type]
    for field_change in ({"command": b"open"}, {"number": 6}, {"air_ms": 60_000},
                         {"epoch": 4}, {"group": "vents"}):
        with pytest.raises(AuthenticationError):
            check_agent_command(dataclasses.replace(cmd, **field_change), agent=agent,
                                held=dataclasses.replace(held, name=cmd.group
                                                         if "group" not in field_change
                                                         else "vents"),
                                controller_signing=signing, last_number=0)
    for bad_args in ({"command": b"x" * 168}, {"air_ms": 0}, {"number": 0}, {"epoch": 0}):
        kw2: dict = dict(agent=agent, group="doors", epoch=3, number=5, command=b"c",
                         air_ms=10) | bad_args
        with pytest.raises(ConfigError):
            sign_agent_command(three.controller, **kw2)


def test_the_command_machines(three: Three) -> None:
    from pairkit.pairing.delivery import CommandSender, RunCommand
    from pairkit.pairing.groups import AgentResult, sign_agent_command

    cmd = sign_agent_command(three.controller, agent=bytes(16), group="doors", epoch=1,
                             number=1, command=b"c", air_ms=2000)
    sender = CommandSender(cmd, timeout=5)
    sender.start(NOW)
    assert [wire.decode(m) for m in sender.outgoing()] == [cmd]
    assert sender.next_deadline() == NOW + 7  # the wait covers the time on the air
    with pytest.raises(ProtocolError, match="another command"):
        sender.receive(AgentResult("doors", 2, True, seq=1).encode(), NOW)
    ok = CommandSender(cmd, timeout=5)
    ok.start(NOW)
    ok.receive(AgentResult("doors", 1, True, seq=9).encode(), NOW)
    assert ok.done and ok.result == AgentResult("doors", 1, True, seq=9)

    agent = DeliveryReceiver(relay=True, agent=True, idle=30)
    agent.start(NOW)
    agent.receive(cmd.encode(), NOW)
    assert agent.events() == [RunCommand(cmd)]
    with pytest.raises(ProtocolError, match="the command that was asked"):
        agent.answer_command(AgentResult("vents", 1, True), NOW)
    plain = DeliveryReceiver(relay=True, idle=30)
    plain.start(NOW)
    plain.receive(cmd.encode(), NOW)
    assert [wire.decode(m) for m in plain.outgoing()] == [
        AgentResult("doors", 1, False, reason="this device is not a group agent")]


def test_relay_receipts_evict_only_the_same_controllers(three: Three) -> None:
    """atk19g finding 2: the receipt store (MAX_QUEUE, oldest first out) was shared by every
    controller, so a peer of the relay pushed the real controller's receipts out with its own.
    Each controller's receipts now make room only among themselves."""
    real = _receipt(three, three.envelope(epoch=1))
    other = b"\x0a" * 16
    store = RelayReceipts().add(real)
    for i in range(MAX_QUEUE + 5):
        store = store.add(dataclasses.replace(real, controller=other, group=f"m{i}"))
    controller = bytes.fromhex(three.controller.device_id)
    assert store.find(controller, [real.envelope]) == (real,)  # kept
    theirs = [r for r in store.receipts if r.controller == other]
    assert len(theirs) == MAX_QUEUE and theirs[0].group == "m5"  # their oldest went first
