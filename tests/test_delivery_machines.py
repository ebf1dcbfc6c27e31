"""Group-key delivery's sans-I/O machines (pairing/delivery.py) against a peer that answers
for other envelopes, with the other kind of receipt, or out of turn; the same delivery runs
between processes and over bumble radios in test_groups_flows.py and test_groups_ble.py."""

from __future__ import annotations

import pytest

from pairkit.pairing import wire
from pairkit.pairing.delivery import DeliveryReceiver, DeliverySender, QueueForward, TakeKeys
from pairkit.pairing.errors import PairingTimeout, ProtocolError
from pairkit.pairing.groups import (
    ENC_SIZE,
    ID_SIZE,
    SEALED_KEY_SIZE,
    SIGNATURE_SIZE,
    DeliveryResult,
    Forward,
    ForwardReceipt,
    GroupEnvelope,
    KeyDelivery,
    KeyReceipt,
)
from pairkit.pairing.service import Bye

NOW = 500.0


def envelope(group: str = "doors", epoch: int = 1) -> GroupEnvelope:
    return GroupEnvelope(
        controller=b"\x01" * ID_SIZE, member=b"\x02" * ID_SIZE, group=group, epoch=epoch,
        enc=b"\x03" * ENC_SIZE, ct=b"\x04" * SEALED_KEY_SIZE, signature=b"\x05" * SIGNATURE_SIZE,
    )


BATCH = (envelope("doors", 1), envelope("lights", 3))
OK = tuple(DeliveryResult(e.group, e.epoch, True) for e in BATCH)


def sender(forward: bool = False) -> DeliverySender:
    machine = DeliverySender(BATCH, forward=forward, timeout=10)
    machine.start(NOW)
    (sent,) = [wire.decode(m) for m in machine.outgoing()]
    assert sent == (Forward(BATCH) if forward else KeyDelivery(BATCH))
    return machine


def test_a_receipt_for_every_envelope_ends_the_delivery() -> None:
    machine = sender()
    machine.receive(KeyReceipt(OK).encode(), NOW)
    assert machine.done and machine.results == OK


def test_a_relays_receipt_says_how_many_it_holds() -> None:
    machine = sender(forward=True)
    machine.receive(ForwardReceipt(OK, 7).encode(), NOW)
    assert machine.results == OK and machine.queued == 7


@pytest.mark.parametrize("receipt", [
    KeyReceipt(OK[:1]),  # fewer answers than envelopes
    KeyReceipt((OK[1], OK[0])),  # answers out of order
    KeyReceipt((OK[0], DeliveryResult("doors", 2, True))),  # another epoch
    ForwardReceipt(OK, 2),  # the other kind
])
def test_a_receipt_that_answers_for_other_envelopes_is_a_protocol_error(
    receipt: KeyReceipt | ForwardReceipt,
) -> None:
    machine = sender()
    with pytest.raises(ProtocolError):
        machine.receive(receipt.encode(), NOW)
    assert machine.failed and machine.results == ()


def test_a_silent_member_ends_in_a_timeout() -> None:
    machine = sender()
    with pytest.raises(PairingTimeout):
        machine.on_timeout(NOW + 10)


def test_an_empty_delivery_is_refused() -> None:
    with pytest.raises(ProtocolError):
        DeliverySender(())


def receiver(relay: bool) -> DeliveryReceiver:
    machine = DeliveryReceiver(relay=relay, idle=60)
    machine.start(NOW)
    return machine


def test_a_member_takes_a_batch_and_answers_it() -> None:
    machine = receiver(relay=False)
    machine.receive(KeyDelivery(BATCH).encode(), NOW)
    assert machine.events() == [TakeKeys(BATCH)]
    machine.answer_batch(OK, NOW)
    assert [wire.decode(m) for m in machine.outgoing()] == [KeyReceipt(OK)]
    machine.receive(Bye().encode(), NOW)
    assert machine.done


def test_a_device_that_is_no_relay_refuses_a_forward_itself() -> None:
    machine = receiver(relay=False)
    machine.receive(Forward(BATCH).encode(), NOW)
    assert machine.events() == []  # nothing for the runtime to do
    (receipt,) = [wire.decode(m) for m in machine.outgoing()]
    assert isinstance(receipt, ForwardReceipt) and receipt.queued == 0
    assert [r.ok for r in receipt.results] == [False, False]
    assert {r.reason for r in receipt.results} == {"this device is not a relay"}


def test_a_relay_queues_a_forward() -> None:
    machine = receiver(relay=True)
    machine.receive(Forward(BATCH).encode(), NOW)
    assert machine.events() == [QueueForward(BATCH)]
    machine.answer_batch(OK, NOW, queued=2)
    assert [wire.decode(m) for m in machine.outgoing()] == [ForwardReceipt(OK, 2)]


def test_a_batch_before_the_last_is_answered_is_a_protocol_error() -> None:
    machine = receiver(relay=False)
    machine.receive(KeyDelivery(BATCH).encode(), NOW)
    with pytest.raises(ProtocolError):
        machine.receive(KeyDelivery(BATCH).encode(), NOW)


def test_the_runtime_must_answer_every_envelope() -> None:
    machine = receiver(relay=False)
    machine.receive(KeyDelivery(BATCH).encode(), NOW)
    with pytest.raises(ProtocolError):
        machine.answer_batch(OK[:1], NOW)


def test_a_silent_peer_ends_at_the_idle_deadline() -> None:
    machine = receiver(relay=True)
    machine.on_timeout(NOW + 59)
    with pytest.raises(PairingTimeout):
        machine.on_timeout(NOW + 60)
