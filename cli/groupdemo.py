"""``pairkit demo --scenario groupkeys``: group keys end to end through a relay, and encrypted
group broadcasts, narrated (the oneM2M seed).

A controller (IN-CSE) groups six devices by function (fire sensors, fire doors, extinguishers),
makes one key per group, and delivers each key to its members: directly to the sensors and the
extinguisher, through a relay (MN-CSE) to the doors, which are out of its reach.  The relay
stores and forwards envelopes it cannot open.  The controller then broadcasts a command to each
group in an encrypted BLE advertisement; every device hears every broadcast and only members
read it.  A replayed and a forged broadcast are refused.  A door is removed: a new epoch and a
new key go to the remaining doors (one of them switched off, which gets it from the relay when
it is back), and the removed door cannot read what follows.

Everything is real but the people: keystores in a temporary folder, every pairing and delivery a
pairkit secure channel over BLE frames through bumble's host stack on virtual controllers (or
the in-memory loopback), broadcasts in extended advertisements.

:class:`GroupLab` is the same machinery for tests: nodes with keystores and transports on one
radio, commissioning by PIN, member and relay services, broadcasts and waits with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pairkit import groups as G
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.cloud import AllowJoin, Grant, Role
from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.groups import ADVERT_OVERHEAD, GroupEnvelope, RetryPolicy, envelope_info
from pairkit.pairing.methods import Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import Membership
from pairkit.securelink import SecureLink

from .flows import HostOptions, JoinOptions, run_host, run_join
from .show import Narrator

DEMO_PIN = "246813"  # the throwaway keystores' own PIN
PAIRING_PIN = "135790"  # the PIN each commissioning host shows (scripted)
GROUPS = {
    "fire-sensors": ("sensor-1", "sensor-2"),
    "fire-doors": ("door-1", "door-2", "door-3"),
    "extinguishers": ("extinguisher-1",),
}
FAR = ("door-1", "door-2", "door-3")  #: reached only through the relay
COMMANDS = {
    "fire-sensors": "self-test now",
    "fire-doors": "close all doors",
    "extinguishers": "arm zone 3",
}


class _Commissioner:
    """The commissioning host's owner: lets each device in as a member of its cloud."""

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        return Grant(Role.MEMBER)

    async def join_cloud(self, q: Any) -> bool:
        return True  # the lab's devices are commissioned into its cloud on purpose

    async def on_warning(self, event: Any) -> None:
        return None

    async def on_event(self, event: Any) -> None:
        return None


@dataclasses.dataclass
class Node:
    """One device of the lab."""

    name: str
    ks: Keystore
    transport: Any
    address: str
    #: a second radio to reach peers through (the relay's, facing the members)
    downlink: Any = None
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    listener: G.Listener | None = None
    relay: G.Relay | None = None
    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    stop: asyncio.Event | None = None

    @property
    def id(self) -> str:
        return self.ks.device_id

    def read(self) -> list[str]:
        """The commands this node has read, in order."""
        return [m.command.decode() for m in self.listener.received] if self.listener else []


class GroupLab:
    """Devices on one radio (``loopback`` or ``bumble:virtual``), for the demo and tests."""

    def __init__(
        self, root: Path, *, transport: str = "loopback",
        connect_timeout: float = 2.0, step_timeout: float = 10.0,
    ) -> None:
        if transport not in ("loopback", "bumble:virtual"):
            raise click.UsageError(f"the lab runs on loopback or bumble:virtual, not {transport!r}")
        self.root = root
        self.spec = transport
        self.connect_timeout = connect_timeout
        self.step_timeout = step_timeout
        self.nodes: dict[str, Node] = {}
        self._medium: Any = None
        self._radio: Any = None

    # -- devices ---------------------------------------------------------------------------

    async def _open_transport(self, name: str, *, extended: bool, address: str | None) -> Any:
        if self.spec == "loopback":
            from pairkit.transports.loopback import LoopbackMedium

            if self._medium is None:
                self._medium = LoopbackMedium(scan_interval=0.02)
            return self._medium.endpoint(address or name, name=name)
        from pairkit.transports.ble.virtual import VirtualRadio
        from pairkit.transports.bumble import open_bumble

        if self._radio is None:
            self._radio = VirtualRadio()
        # Every device advertises (a hello) and most scan: at bumble's default 20 ms interval
        # that is thousands of reports a second for one Python process to parse.  100 ms
        # still connects within a tenth of a second (all along: no slow advertising here).
        # The demo keeps an address book and switches devices back on at the same address:
        # random static addresses, not resolvable private ones.
        return await open_bumble(
            "virtual", radio=self._radio, extended_advertising=extended, address=address,
            name=name, advertising_interval_ms=100.0, fast_advertising_seconds=None,
            private_addresses=False,
        )

    async def add(self, name: str, *, extended: bool = False, downlink: bool = False,
                  downlink_extended: bool = False) -> Node:
        """A new device with its own keystore and personal cloud, as ``pairkit init`` makes;
        ``downlink`` gives it a second radio to reach peers through (``downlink_extended``:
        with extended advertising, for a group agent's broadcasts)."""
        path = self.root / name / "keystore.pk"
        ks = await asyncio.to_thread(
            Keystore.create, path, DEMO_PIN, name=name, kdf=Argon2Params.cheapest()
        )
        ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
        ks.save()
        transport = await self._open_transport(name, extended=extended, address=None)
        node = Node(name, ks, transport, str(transport.address))
        if downlink:
            node.downlink = await self._open_transport(f"{name}-down",
                                                       extended=downlink_extended,
                                                       address=None)
        self.nodes[name] = node
        return node

    def address_of(self, device_id: str) -> str | None:
        for node in self.nodes.values():
            if node.id == device_id:
                return node.address
        return None

    def reach(self, node: Node) -> G.Reach:
        return G.Reach(
            transport_obj=node.downlink or node.transport, spec=self.spec,
            address_of=self.address_of,
            connect_timeout=self.connect_timeout, step_timeout=self.step_timeout,
        )

    def name_of(self, device_id: str) -> str:
        for node in self.nodes.values():
            if node.id.startswith(device_id):
                return node.name
        return device_id[:8]

    # -- commissioning -----------------------------------------------------------------------

    async def commission(self, host: Node, guest: Node) -> Session:
        """``guest`` pairs with ``host`` by PIN and joins its cloud as a member (as ``pairkit
        host`` and ``pairkit join`` do with the owner answering "member")."""
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        opts = HostOptions(
            transport=self.spec, methods=frozenset({Method.PIN}), pin=PAIRING_PIN, once=True,
            quiet=True, json=True, step_timeout=self.step_timeout, visible=60.0,
        )

        async def nothing(_s: SecureLink, _session: Session, _m: Membership) -> None:
            return None

        task = asyncio.create_task(run_host(
            host.ks, opts, emit=lambda _r: None, ready=lambda a, _s: started.set_result(a),
            transport_obj=host.transport, delegate=_Commissioner(), on_session=nothing,
        ))
        try:
            await asyncio.wait_for(asyncio.shield(started), 10)
            target = host.address if self.spec != "loopback" else "loopback"
            session, _ = await asyncio.wait_for(run_join(
                guest.ks, JoinOptions(
                    target=target, transport=self.spec, method=Method.PIN, pin=PAIRING_PIN,
                    json=True, wants=Role.MEMBER, step_timeout=self.step_timeout,
                ),
                on_session=nothing, transport_obj=guest.downlink or guest.transport,
                address=host.address,
                delegate=_Commissioner(),
            ), 20)
            await asyncio.wait_for(task, 10)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        return session

    # -- services -----------------------------------------------------------------------------

    def _sink(self, node: Node, say: Callable[[Node, dict[str, Any]], None] | None) -> Any:
        def sink(event: dict[str, Any]) -> None:
            node.events.append(event)
            if say is not None:
                say(node, event)

        return sink

    async def start_member(
        self, node: Node, *, say: Callable[[Node, dict[str, Any]], None] | None = None,
    ) -> None:
        """Accept envelopes (a group service) and listen for broadcasts on the node's radio."""
        sink = self._sink(node, say)
        node.listener = G.Listener(node.ks, on_event=sink, persist=False)
        service = G.GroupService(node.ks, on_event=sink, on_key=node.listener.on_key)
        node.stop = asyncio.Event()
        await self._serve(node, service)
        node.tasks.append(asyncio.create_task(node.listener.scan(node.transport, node.stop)))

    async def start_relay(
        self, node: Node, *, retry: float = 0.5,
        say: Callable[[Node, dict[str, Any]], None] | None = None,
        relay_type: type[G.Relay] = G.Relay,
        service_type: type[G.GroupService] = G.GroupService,
    ) -> None:
        """Store and forward envelopes for members (a group service with a relay);
        ``relay_type`` and ``service_type`` let a test put a relay that misbehaves in its
        place."""
        sink = self._sink(node, say)
        node.relay = relay_type(node.ks, reach=self.reach(node), on_event=sink)
        service = service_type(node.ks, member=False, relay=node.relay, on_event=sink)
        node.stop = asyncio.Event()
        await self._serve(node, service)
        node.tasks.append(asyncio.create_task(node.relay.run(retry, node.stop)))

    async def start_agent(
        self, node: Node, *, retry: float = 0.5,
        say: Callable[[Node, dict[str, Any]], None] | None = None,
    ) -> None:
        """A relay that is also a member and its groups' agent: it broadcasts, on its downlink
        radio, the commands its controllers send it (``pairkit group agent``)."""
        sink = self._sink(node, say)
        node.relay = G.Relay(node.ks, reach=self.reach(node), on_event=sink)
        agent = G.Agent(node.ks, node.downlink or node.transport, on_event=sink)
        service = G.GroupService(node.ks, relay=node.relay, agent=agent, on_event=sink)
        node.stop = asyncio.Event()
        await self._serve(node, service)
        node.tasks.append(asyncio.create_task(node.relay.run(retry, node.stop)))

    async def _serve(self, node: Node, service: G.GroupService) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ready(_address: str) -> None:
            if not started.done():
                started.set_result(None)

        def on_error(text: str) -> None:
            node.events.append({"event": "session-error", "text": text})

        task = asyncio.create_task(G.serve(
            node.ks, self.spec, service, transport_obj=node.transport, ready=ready,
            timeout=self.step_timeout, on_error=on_error,
        ))
        node.tasks.append(task)
        done, _ = await asyncio.wait({task, started}, timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)
        if started not in done:
            raise PairingError(f"{node.name} could not start its group service: {task}")

    async def power_off(self, node: Node) -> None:
        """Switch a device off: its services stop and its radio goes away."""
        await self._stop_tasks(node)
        with contextlib.suppress(Exception):
            await node.transport.close()

    async def power_on(self, node: Node, **service: Any) -> None:
        """Switch a device back on at the same address and restart its member service."""
        node.transport = await self._open_transport(node.name, extended=False,
                                                    address=node.address)
        await self.start_member(node, **service)

    async def _stop_tasks(self, node: Node) -> None:
        if node.stop is not None:
            node.stop.set()
        for task in node.tasks:
            task.cancel()
        for task in node.tasks:
            with contextlib.suppress(BaseException):
                await task
        node.tasks.clear()

    async def close(self) -> None:
        for node in reversed(list(self.nodes.values())):
            await self._stop_tasks(node)
            for transport in (node.transport, node.downlink):
                if transport is not None:
                    with contextlib.suppress(Exception):
                        await transport.close()

    # -- broadcasts and waits ------------------------------------------------------------------

    async def broadcast(
        self, node: Node, group: str, command: str, *, until: Callable[[], bool] | None = None,
        timeout: float = 5.0, payload: bytes | None = None,
    ) -> bytes:
        """Advertise a command (or a given payload) from ``node`` until ``until()`` holds or
        ``timeout`` s pass; returns the payload."""
        if payload is None:
            payload, _, _ = G.advert_for(
                node.ks, group, command.encode(), max_payload=node.transport.max_payload
            )
        await node.transport.start_advertising(payload)
        try:
            await wait_for(until or (lambda: False), timeout, quiet=until is None)
        finally:
            with contextlib.suppress(PairingError):
                await node.transport.stop_advertising()
        return payload


async def wait_for(cond: Callable[[], bool], timeout: float, *, quiet: bool = False) -> bool:
    """Poll ``cond`` until it holds; False (or a PairingError unless ``quiet``) at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() >= deadline:
            if quiet:
                return False
            raise PairingError(f"timed out after {timeout:g} s waiting for the group demo")
        await asyncio.sleep(0.01)
    return True


# ---------------------------------------------------------------------------------------------
# The narrated scenario


async def run_groupkeys_demo(*, transport: str, quiet: bool) -> dict[str, Any]:
    """The group keys scenario (module docstring); returns the ``--json`` summary."""
    n = Narrator(quiet)
    summary: dict[str, Any] = {"ok": True, "scenario": "groupkeys", "transport": transport}
    # bumble logs a warning for each frame of a connection that just ended (devices here come
    # and go on purpose); the story is told on stderr, so keep those out of it.
    bumble_log = logging.getLogger("bumble")
    level = bumble_log.level
    bumble_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="pairkit-groups-") as tmp:
            lab = GroupLab(Path(tmp), transport=transport, connect_timeout=1.5)
            try:
                await _scenario(lab, n, summary)
            finally:
                await lab.close()
    finally:
        bumble_log.setLevel(level)
    summary["timings"] = n.timings
    n.say("\nDone: every group read its own commands, and only its own.")
    return summary


async def _scenario(lab: GroupLab, n: Narrator, summary: dict[str, Any]) -> None:
    members = [m for names in GROUPS.values() for m in names]
    radio = "BLE frames on bumble virtual controllers" if lab.spec != "loopback" else (
        "the in-memory loopback")
    n.say(f"pairkit group keys: a controller (IN-CSE), a relay (MN-CSE) and {len(members)} "
          f"members, over {radio}")

    # -- 1 -------------------------------------------------------------------------------------
    n.section("Identification: each device unlocks its keystore (its secure environment)")
    ctl = await lab.add("controller", extended=True)
    relay = await lab.add("relay", downlink=True)
    for name in members:
        await lab.add(name)
    eve = await lab.add("eavesdropper", extended=True)
    for node in lab.nodes.values():
        extra = f"  (and {node.downlink.address} facing the doors)" if node.downlink else ""
        n.say(f"   {node.name:<15} {node.address:<18} id {node.id[:16]}{extra}")
    summary["devices"] = {node.name: node.id for node in lab.nodes.values()}
    n.mark("identities")

    # -- 2 -------------------------------------------------------------------------------------
    n.section("Commissioning: every device joins the controller's cloud by PIN; the relay "
              "pairs with the doors, which the controller cannot reach")
    t0 = time.perf_counter()
    pairings = 0
    for name in ("relay", *members):
        await lab.commission(ctl, lab.nodes[name])
        pairings += 1
    for name in FAR:
        await lab.commission(lab.nodes[name], relay)
        pairings += 1
    n.say(f"   {pairings} pairings by PIN in {time.perf_counter() - t0:.2f} s; every link after "
          "this one is a 'resume' between known peers")
    summary["pairings"] = pairings
    n.mark("commissioned")

    def say(node: Node, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "queued":
            n.say(f"   relay: holds an envelope for {event['member']} ({event['group']}, "
                  f"epoch {event['epoch']}, {event['bytes']} bytes) that it cannot open")
        elif kind == "forwarded":
            n.say(f"   relay -> {event['member']}: envelope handed over ({event['group']}, "
                  f"epoch {event['epoch']})")
        elif kind == "unreachable":
            n.say(f"   relay: {event['member']} does not answer; the envelope stays queued")
        elif kind == "key":
            n.say(f"   {node.name}: opened the envelope inside its keystore: "
                  f"{event['group']} epoch {event['epoch']} (from {event['from']})")

    # Each member's owner names the controller of its groups (as 'pairkit group listen
    # NAME --controller controller' does): joining the controller's cloud gives the controller
    # no say over the member (docs/security.md, rule 2).
    for group, names in GROUPS.items():
        for name in names:
            G.pin_controller(lab.nodes[name].ks, group, ctl.id)
    for name in members:
        await lab.start_member(lab.nodes[name], say=say)
    await lab.start_relay(relay, say=say)

    # -- 3 -------------------------------------------------------------------------------------
    n.section("Groups: the controller makes one key per group, epoch 1, inside its keystore")
    for group in GROUPS:
        G.create_group(ctl.ks, group)
        n.say(f"   {group:<14} epoch 1: key made and kept; the API never returns it")

    # -- 4 -------------------------------------------------------------------------------------
    n.section("Delivery: each key sealed to the member's identity key (HPKE) and signed by the "
              "controller (Ed25519); the doors' go through the relay")
    reach = lab.reach(ctl)
    deliveries = []
    t0 = time.perf_counter()
    for group, names in GROUPS.items():
        # A group's members in one add (they share one route: the doors are all FAR), so one
        # round, all at epoch 1; added one by one, each add after the first would start a new
        # epoch, since the key would have left the controller (atk19g finding 3)
        via = relay.id if names[0] in FAR else None
        t1 = time.perf_counter()
        _, outcomes = await G.add_members(ctl.ks, group, [lab.nodes[m].id for m in names],
                                          via=via, reach=reach)
        ms = (time.perf_counter() - t1) * 1000
        for o in outcomes:
            route = f"via {o.via}" if o.via else "directly"
            n.say(f"   controller -> {o.name:<15} {group:<14} {route:<10} {o.status} "
                  f"({ms:.0f} ms for the group)")
            deliveries.append(o.as_json())
    everyone = [lab.nodes[m] for m in members]
    summary["deliveries"] = deliveries
    # The controller retries whoever has not confirmed (a busy radio can lose a first try),
    # until each member's own receipt is back.
    summary["confirmed"] = await _confirm(ctl, reach, n)
    await wait_for(lambda: all(_holds(node, group) for group, names in GROUPS.items()
                               for node in everyone if node.name in names), 15)
    n.say(f"   every member holds its group's key ({time.perf_counter() - t0:.2f} s)")

    # The relay's own state cannot open what it carried.
    # Distinct envelopes: one forwarded again while its receipt was on its way is the same one.
    carried = {e["envelope"] for e in relay.events if e["event"] == "queued"}
    opened = _relay_tries_to_open(relay)
    n.say(f"   the relay carried {len(carried)} envelopes; trying each with its own keystore: "
          f"{'opened!' if opened else 'none opens'}; keys it holds: "
          f"{sum(len(relay.ks.group_epochs(g)) for g in GROUPS)}")
    summary["relay"] = {"carried": len(carried), "could_open": opened,
                        "keys_held": sum(len(relay.ks.group_epochs(g)) for g in GROUPS)}
    n.mark("delivered")

    # -- 5 -------------------------------------------------------------------------------------
    n.section("Encrypted broadcasts: one command per group, in the manner of BLE Encrypted "
              "Advertising Data (randomizer, epoch, sequence number, tag)")
    broadcasts = []
    for group, command in COMMANDS.items():
        row = await _broadcast_and_tally(lab, ctl, group, command, everyone)
        broadcasts.append(row)
        n.say(f"   {group:<14} {command!r:<18} {row['bytes']} bytes "
              f"({'extended' if row['extended'] else 'legacy'} advertising, {ADVERT_OVERHEAD} of "
              f"overhead): read by {', '.join(row['read_by'])}; "
              f"{row['heard_not_read']} other devices heard it and could not read it")
    summary["broadcasts"] = [{k: v for k, v in b.items() if k != "payload"} for b in broadcasts]
    n.mark("broadcasts")

    # -- 6 -------------------------------------------------------------------------------------
    n.section("Attacks: an eavesdropper replays a captured broadcast and forges another")
    captured = broadcasts[1]["payload"]
    door = lab.nodes["door-1"]
    before = _rejections(door)
    await lab.broadcast(eve, "", "", payload=bytes.fromhex(captured),
                        until=lambda: _rejections(door) > before, timeout=3)
    forged = bytearray.fromhex(captured)
    forged[-1] ^= 0x01
    forged[9] ^= 0x40  # a fresh randomizer, so it is not the same advertisement again
    await lab.broadcast(eve, "", "", payload=bytes(forged),
                        until=lambda: _rejections(door) > before + 1, timeout=3)
    reasons = [e["reason"] for e in door.events if e["event"] == "rejected"][before:]
    n.say(f"   door-1 refused the replay ({_why(reasons, 0)}) and the forgery "
          f"({_why(reasons, 1)}); it read nothing new")
    summary["attacks"] = {"door-1": reasons[:2]}
    n.mark("attacks")

    # -- 7 -------------------------------------------------------------------------------------
    n.section("Removal and rekey: door-3 leaves fire-doors while door-2 is switched off")
    door2, door3 = lab.nodes["door-2"], lab.nodes["door-3"]
    await lab.power_off(door2)
    n.say("   door-2 is switched off")
    record, outcomes = await G.remove_member(ctl.ks, "fire-doors", door3.id, reach=reach)
    n.say(f"   fire-doors is now at epoch {record.epoch}, a new key; envelopes for "
          f"{', '.join(o.name for o in outcomes)} went to the relay")
    await wait_for(lambda: _holds(door, "fire-doors", record.epoch), 10)
    await wait_for(lambda: any(e["event"] == "unreachable" for e in relay.events), 10)
    row = await _broadcast_and_tally(lab, ctl, "fire-doors", "open door 4 for firefighters",
                                     [door, door3], expect=[door])
    door3_reasons = [e["reason"] for e in door3.events if e["event"] == "rejected"][-1:]
    n.say(f"   broadcast at epoch {record.epoch}: read by {', '.join(row['read_by'])}; door-3 "
          f"heard it and refused it ({_why(door3_reasons, 0)}): it holds only epoch "
          f"{G.held_groups(door3.ks)['fire-doors'].epoch}")
    summary["removal"] = {"removed": "door-3", "epoch": record.epoch,
                          "door-3_read": "open door 4 for firefighters" in door3.read(),
                          "door-3_rejected": door3_reasons, "read_by": row["read_by"]}

    n.say("   door-2 is switched back on; the relay's next round reaches it")
    await lab.power_on(door2, say=say)
    await wait_for(lambda: _holds(door2, "fire-doors", record.epoch), 15)
    row = await _broadcast_and_tally(lab, ctl, "fire-doors", "all clear", [door, door2, door3],
                                     expect=[door, door2])
    n.say(f"   broadcast 'all clear': read by {', '.join(row['read_by'])}; door-3 read "
          f"{'it!' if 'all clear' in door3.read() else 'nothing'}")
    summary["catch_up"] = {"member": "door-2", "epoch": record.epoch, "read_by": row["read_by"],
                           "confirmed": (await _confirm(ctl, reach, n))["fire-doors"]}
    summary["removal"]["door-3_read_after"] = "all clear" in door3.read()
    summary["relay"]["queued_at_end"] = len(relay.relay.queue) if relay.relay else 0
    n.mark("rekeyed")


#: the demo's controller asks again every few hundredths of a second
_DEMO_RETRY = RetryPolicy(first=0.3, cap=1.0, attempts=30)


async def _confirm(ctl: Node, reach: G.Reach, n: Narrator) -> dict[str, list[str]]:
    """The controller retries until every member's signed receipt is back (those behind the
    relay come through it); returns the confirmed members by group."""
    confirmed: dict[str, list[str]] = {}
    for group in GROUPS:
        record, outcomes = await G.confirm_all(ctl.ks, group, reach=reach, policy=_DEMO_RETRY)
        for o in outcomes:
            n.say(f"   controller: {o.name:<15} {group:<14} {o.state}: {o.status}")
        confirmed[group] = sorted(m.name for m in record.members
                                  if m.state(record.epoch) == "confirmed")
    n.say("   every member's receipt is signed by the member itself: the relay carries it and "
          "cannot make one")
    return confirmed


_REASONS = {
    "replay": "its sequence number was already received",
    "not-ours-or-forged": "its tag does not verify",
    "wrong-epoch": "not the epoch it listens to",
    "too-many-senders": "more senders than the group has members",
    "malformed": "malformed",
}


def _why(reasons: list[str], i: int) -> str:
    return _REASONS.get(reasons[i], reasons[i]) if len(reasons) > i else "?"


def _holds(node: Node, group: str, epoch: int | None = None) -> bool:
    held = G.held_groups(node.ks).get(group)
    return held is not None and (epoch is None or held.epoch == epoch)


def _rejections(node: Node) -> int:
    return sum(1 for e in node.events if e["event"] == "rejected")


async def _broadcast_and_tally(
    lab: GroupLab, sender: Node, group: str, command: str, hearers: list[Node],
    expect: list[Node] | None = None,
) -> dict[str, Any]:
    expect = expect if expect is not None else [n for n in hearers if _holds(n, group)]
    others = [n for n in hearers if n not in expect]
    read_before = {n.name: len(n.read()) for n in hearers}
    rejected_before = {n.name: _rejections(n) for n in hearers}

    def done() -> bool:
        return all(len(n.read()) > read_before[n.name] for n in expect) and all(
            _rejections(n) > rejected_before[n.name] for n in others
        )

    payload = await lab.broadcast(sender, group, command, until=done, timeout=15)
    read_by = [n.name for n in hearers if command in n.read()[read_before[n.name]:]]
    heard = sum(1 for n in others if _rejections(n) > rejected_before[n.name])
    return {"group": group, "command": command, "bytes": len(payload),
            "extended": G.needs_extended(command.encode()), "read_by": read_by,
            "heard_not_read": heard, "payload": payload.hex()}


def _relay_tries_to_open(relay: Node) -> bool:
    """Whether anything the relay carried opens with the relay's own keystore (it must not)."""
    opened = False
    for event in relay.events:
        if event["event"] != "queued":
            continue
        env = GroupEnvelope.decode_bytes(bytes.fromhex(event["envelope"]))
        info = envelope_info(env.controller, env.member, env.group, env.epoch)
        with contextlib.suppress(AuthenticationError):
            relay.ks.accept_group_key(env.group, env.epoch, env.enc, env.ct, info)
            opened = True
    return opened
