"""Group-key delivery as sans-I/O machines (DESIGN.md "Group keys"; the messages are
:mod:`pairing.groups`'s, types 90-93, 110-111; README "How group keys are built").

On a secure channel between known peers:

* :class:`DeliverySender` (a controller to a member or a relay, a relay to a member) sends one
  batch of envelopes, :class:`~pairing.groups.KeyDelivery` or :class:`~pairing.groups.Forward`,
  and takes the receipt, which must answer every envelope, in order.
* :class:`DeliveryReceiver` (a member, a relay) answers batches until :class:`Bye`: it says with
  an event what to take or queue; the runtime opens the envelopes into the keystore or queues
  them, and gives the machine the results to send back.  A device that is not a relay refuses
  a ``Forward`` envelope by envelope, without the runtime, and holds no receipts.
* :class:`ReceiptFetch` (a controller to a relay, issue 14) asks for the members' signed
  receipts of envelopes the relay was given; the relay answers with those it holds
  (:class:`GiveReceipts`), and the controller checks each signature itself
  (:func:`pairing.groups.check_receipt`).
* :class:`CommandSender` (a controller to its group agent) sends one signed
  :class:`~pairing.groups.AgentCommand` and takes the :class:`~pairing.groups.AgentResult`;
  an agent's :class:`DeliveryReceiver` asks the runtime to check and broadcast it
  (:class:`RunCommand`), any other device refuses it itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from .errors import ProtocolError
from .groups import (
    MAX_BATCH,
    AgentCommand,
    AgentResult,
    DeliveryResult,
    Forward,
    ForwardReceipt,
    GroupEnvelope,
    GroupReceipt,
    KeyDelivery,
    KeyReceipt,
    ReceiptBatch,
    ReceiptRequest,
)
from .machine import DONE, Event, Machine, Step, step
from .service import Bye

#: how long a receiver waits for the next batch
RECEIVE_IDLE = 60.0

WAITING = "waiting"
WORKING = "working"


class DeliverySender(Machine):
    """Send one batch and take its receipt: :attr:`results` (and, from a relay,
    :attr:`queued`, how many envelopes it now holds in all)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (WAITING, KeyReceipt): step("_on_receipt", DONE),
        (WAITING, ForwardReceipt): step("_on_receipt", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({WAITING})

    def __init__(
        self, envelopes: Sequence[GroupEnvelope], *, forward: bool = False, timeout: float = 15.0
    ) -> None:
        super().__init__(initial_state="new")
        if not envelopes:
            raise ProtocolError("a delivery needs at least one envelope")
        self.envelopes = tuple(envelopes)
        self.forward = forward
        self._timeout = timeout
        self.results: tuple[DeliveryResult, ...] = ()
        self.queued: int | None = None

    def _on_start(self, now: float) -> None:
        batch = Forward(self.envelopes) if self.forward else KeyDelivery(self.envelopes)
        self._send(batch)
        self.state = WAITING
        who = "relay" if self.forward else "member"
        self._expect_by(now + self._timeout, f"the {who} did not answer the delivery")

    def _on_receipt(self, msg: KeyReceipt | ForwardReceipt, now: float) -> None:
        who = "relay" if self.forward else "member"
        if isinstance(msg, ForwardReceipt) != self.forward:
            raise ProtocolError(f"the {who} answered with a receipt of the other kind")
        if len(msg.results) != len(self.envelopes):
            raise ProtocolError(f"the {who} answered for a different number of envelopes")
        for env, result in zip(self.envelopes, msg.results, strict=True):
            if (result.group, result.epoch) != (env.group, env.epoch):
                raise ProtocolError(f"the {who} answered for another group or epoch")
        self.results = msg.results
        if isinstance(msg, ForwardReceipt):
            self.queued = msg.queued
        self._finish()


class ReceiptFetch(Machine):
    """Ask a relay for the receipts of these envelopes (their digests) and take its answer:
    :attr:`receipts`, unchecked (the caller checks each against the envelope it waits for).
    A relay that answers for envelopes not asked about is misbehaving and is stopped."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (WAITING, ReceiptBatch): step("_on_batch", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({WAITING})

    def __init__(self, envelopes: Sequence[bytes], *, timeout: float = 15.0) -> None:
        super().__init__(initial_state="new")
        if not envelopes or len(envelopes) > MAX_BATCH:
            raise ProtocolError(f"ask for the receipts of 1 to {MAX_BATCH} envelopes at once")
        self.envelopes = tuple(envelopes)
        self._timeout = timeout
        self.receipts: tuple[GroupReceipt, ...] = ()

    def _on_start(self, now: float) -> None:
        self._send(ReceiptRequest(self.envelopes))
        self.state = WAITING
        self._expect_by(now + self._timeout, "the relay did not answer the receipt request")

    def _on_batch(self, msg: ReceiptBatch, now: float) -> None:
        asked = set(self.envelopes)
        if any(r.envelope not in asked for r in msg.receipts):
            raise ProtocolError("the relay answered with receipts for envelopes not asked about")
        self.receipts = msg.receipts
        self._finish()


class CommandSender(Machine):
    """Send one command to a group agent and take its result (:attr:`result`); the agent
    has ``air`` seconds of broadcasting on top of the usual wait."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (WAITING, AgentResult): step("_on_result", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({WAITING})

    def __init__(self, command: AgentCommand, *, timeout: float = 15.0) -> None:
        super().__init__(initial_state="new")
        self.command = command
        self._timeout = timeout + command.air_ms / 1000
        self.result: AgentResult | None = None

    def _on_start(self, now: float) -> None:
        self._send(self.command)
        self.state = WAITING
        self._expect_by(now + self._timeout, "the agent did not answer the command")

    def _on_result(self, msg: AgentResult, now: float) -> None:
        if (msg.group, msg.number) != (self.command.group, self.command.number):
            raise ProtocolError("the agent answered for another command")
        self.result = msg
        self._finish()


@dataclasses.dataclass(frozen=True)
class RunCommand(Event):
    """Check this command and broadcast it (then :meth:`DeliveryReceiver.answer_command`)."""

    hook: ClassVar[str] = "run_command"
    command: AgentCommand


@dataclasses.dataclass(frozen=True)
class GiveReceipts(Event):
    """Find the receipts held for these envelope digests (then
    :meth:`DeliveryReceiver.answer_receipts`)."""

    hook: ClassVar[str] = "give_receipts"
    envelopes: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class TakeKeys(Event):
    """Open these envelopes into the keystore (then :meth:`DeliveryReceiver.answer_batch`)."""

    hook: ClassVar[str] = "take_keys"
    envelopes: tuple[GroupEnvelope, ...]


@dataclasses.dataclass(frozen=True)
class QueueForward(Event):
    """Queue these envelopes for their members (then :meth:`DeliveryReceiver.answer_batch`
    with the results and the queue's new length)."""

    hook: ClassVar[str] = "queue_forward"
    envelopes: tuple[GroupEnvelope, ...]


class DeliveryReceiver(Machine):
    """A member's or a relay's side: answer batches until the peer says :class:`Bye`."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (WAITING, KeyDelivery): step("_on_delivery", WORKING),
        (WAITING, Forward): step("_on_forward", WAITING, WORKING),
        (WAITING, ReceiptRequest): step("_on_receipt_request", WAITING, WORKING),
        (WAITING, AgentCommand): step("_on_command", WAITING, WORKING),
        (WAITING, Bye): step("_on_bye", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({WAITING})

    def __init__(self, *, relay: bool, idle: float = RECEIVE_IDLE, agent: bool = False) -> None:
        super().__init__(initial_state="new")
        self.relay = relay
        self.agent = agent
        self._idle = idle
        self._batch: TakeKeys | QueueForward | GiveReceipts | RunCommand | None = None

    def _on_start(self, now: float) -> None:
        self._wait(now)

    def answer_batch(
        self, results: Sequence[DeliveryResult], now: float, *, queued: int = 0
    ) -> None:
        """The runtime's results for the batch of the last event, one per envelope, in order."""
        self._check_usable()
        batch = self._batch
        if self.state != WORKING or not isinstance(batch, TakeKeys | QueueForward):
            raise ProtocolError("no batch is being taken")
        if len(results) != len(batch.envelopes):
            raise ProtocolError("one result per envelope, in order")
        if isinstance(batch, TakeKeys):
            self._send(KeyReceipt(tuple(results)))
        else:
            self._send(ForwardReceipt(tuple(results), queued))
        self._wait(now)

    def answer_receipts(self, receipts: Sequence[GroupReceipt], now: float) -> None:
        """The runtime's receipts for the last :class:`GiveReceipts` (those it holds)."""
        self._check_usable()
        batch = self._batch
        if self.state != WORKING or not isinstance(batch, GiveReceipts):
            raise ProtocolError("no receipt request is being answered")
        asked = set(batch.envelopes)
        if len(receipts) > MAX_BATCH or any(r.envelope not in asked for r in receipts):
            raise ProtocolError("answer only with receipts of the envelopes asked about")
        self._send(ReceiptBatch(tuple(receipts)))
        self._wait(now)

    def answer_command(self, result: AgentResult, now: float) -> None:
        """The runtime's result for the last :class:`RunCommand`."""
        self._check_usable()
        batch = self._batch
        if self.state != WORKING or not isinstance(batch, RunCommand):
            raise ProtocolError("no command is being run")
        if (result.group, result.number) != (batch.command.group, batch.command.number):
            raise ProtocolError("answer the command that was asked")
        self._send(result)
        self._wait(now)

    def _on_command(self, msg: AgentCommand, now: float) -> None:
        if not self.agent:
            self._send(AgentResult(msg.group, msg.number, False,
                                   reason="this device is not a group agent"))
            self._wait(now)
            return
        self._work(RunCommand(msg))

    def _on_receipt_request(self, msg: ReceiptRequest, now: float) -> None:
        if not self.relay:
            self._send(ReceiptBatch(()))
            self._wait(now)
            return
        self._work(GiveReceipts(msg.envelopes))

    def _on_delivery(self, msg: KeyDelivery, now: float) -> None:
        self._work(TakeKeys(msg.envelopes))

    def _on_forward(self, msg: Forward, now: float) -> None:
        if not self.relay:
            refused = tuple(DeliveryResult(e.group, e.epoch, False, "this device is not a relay")
                            for e in msg.envelopes)
            self._send(ForwardReceipt(refused, 0))
            self._wait(now)
            return
        self._work(QueueForward(msg.envelopes))

    def _on_bye(self, msg: Bye, now: float) -> None:
        self._finish()

    def _work(self, batch: TakeKeys | QueueForward | GiveReceipts | RunCommand) -> None:
        self._batch = batch
        self.state = WORKING
        self._expect_by(None)
        self._emit(batch)

    def _wait(self, now: float) -> None:
        self._batch = None
        self.state = WAITING
        self._expect_by(now + self._idle, f"the peer sent nothing for {self._idle:.0f} s")
