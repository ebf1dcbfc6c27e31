"""Relays that lie, for the receipt tests (issue 14): each is pairkit's own relay with one
behaviour turned bad, speaking the real protocol over real links.  The controller under test is
never touched; only what travels through the relay changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pairkit import groups as G
from pairkit.pairing import wire
from pairkit.pairing.errors import LinkClosedError
from pairkit.pairing.groups import (
    MAX_BATCH,
    DeliveryResult,
    Forward,
    ForwardReceipt,
    GroupEnvelope,
    GroupReceipt,
    ReceiptBatch,
    ReceiptRequest,
    RelayQueue,
    envelope_digest,
    receipt_statement,
)
from pairkit.pairing.methods import Session
from pairkit.securelink import SecureLink

#: what a lying relay does; "honest" is pairkit's relay unchanged
MODES = (
    "honest",
    "drop",  # says "queued", never delivers
    "forge-self",  # makes up the receipts, signed with its own key
    "forge-zero",  # makes up the receipts, with an all-zero signature
    "relabel-old",  # hands the member's receipt of the previous epoch, relabelled as this one
    "replay-old",  # hands the member's receipt of the previous epoch as it is
    "replay-envelope",  # delivers the previous epoch's envelope in place of the new one
)


class LyingRelay(G.Relay):
    """A relay (the oneM2M MN-CSE) that misbehaves as :attr:`mode` says."""

    def __init__(self, ks: Any, **kw: Any) -> None:
        super().__init__(ks, **kw)
        self.mode = "honest"
        #: every envelope a controller gave it, in order
        self.captured: list[GroupEnvelope] = []
        #: receipt requests answered with something made up
        self.lies = 0

    def take(self, envelopes: Iterable[GroupEnvelope], who: str, *, sender: bytes) -> Any:
        envelopes = tuple(envelopes)
        self.captured.extend(envelopes)
        return super().take(envelopes, who, sender=sender)

    @property
    def queue(self) -> RelayQueue:
        """What waits; in ``replay-envelope`` mode, the oldest envelope it ever took for each
        member and group in place of what waits (read wherever the relay reads its queue, so
        that an envelope forwarded during a delivery round is replaced too)."""
        queue = super().queue
        if self.mode != "replay-envelope":
            return queue
        replayed = RelayQueue()
        for env in queue.envelopes:
            oldest = next(e for e in self.captured
                          if (e.member, e.group) == (env.member, env.group))
            replayed = replayed.add(oldest)
        return replayed

    async def deliver(self) -> int:
        if self.mode in ("honest", "replay-envelope"):
            return await super().deliver()
        # Every other lie: drop what waits, silently.
        with self.ks.update():
            self.ks.set_setting(G.SETTING_RELAY, [])
        return 0

    def receipts_for(self, controller: bytes, envelopes: Iterable[bytes]) -> list[GroupReceipt]:
        asked = list(envelopes)
        honest = super().receipts_for(controller, asked)
        if self.mode in ("honest", "drop", "replay-envelope", "replay-old"):
            return honest
        self.lies += 1
        waiting = {envelope_digest(e): e for e in self.captured}
        old = list(self.receipts.receipts)
        out = []
        for digest in asked:
            env = waiting.get(digest)
            if env is None:  # asked before it was forwarded: nothing to lie about yet
                continue
            if self.mode == "replay-old":
                out.extend(r for r in old if r.member == env.member and r.group == env.group)
                continue
            if self.mode == "relabel-old":
                for r in old:
                    if (r.member, r.group) == (env.member, env.group):
                        out.append(dataclasses.replace(r, epoch=env.epoch, envelope=digest))
                continue
            statement = receipt_statement(env.controller, env.member, env.group, env.epoch,
                                          digest, True)
            signature = self.ks.sign(statement) if self.mode == "forge-self" else bytes(64)
            out.append(GroupReceipt(env.controller, env.member, env.group, env.epoch, digest,
                                    True, signature))
        return out


class LyingService(G.GroupService):
    """The relay's side of a session; in mode ``replay-old`` it bypasses pairkit's receiver
    machine (which answers only for the envelopes asked about) and writes the messages itself:
    every receipt it holds, whatever was asked, and "queued" for every envelope."""

    async def __call__(self, slink: SecureLink, session: Session) -> None:
        relay = self.relay
        assert isinstance(relay, LyingRelay)
        if relay.mode != "replay-old":
            await super().__call__(slink, session)
            return
        while True:
            try:
                msg = wire.decode(await slink.recv(10))
            except LinkClosedError:
                return
            if isinstance(msg, ReceiptRequest):
                relay.lies += 1
                await slink.send(ReceiptBatch(relay.receipts.receipts[:MAX_BATCH]).encode())
            elif isinstance(msg, Forward):
                relay.take(msg.envelopes, session.peer.name, sender=session.peer.device_id)
                taken = tuple(DeliveryResult(e.group, e.epoch, True) for e in msg.envelopes)
                await slink.send(ForwardReceipt(taken, len(relay.queue)).encode())
            else:
                return
