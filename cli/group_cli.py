"""``pairkit group``: group keys end to end through relays, and encrypted group broadcasts.

Three roles, each a terminal (README.md, "Group keys", walks through them):

* the **controller** (``create``, ``add``, ``remove``, ``sync``, ``send``) keeps its groups and
  their keys in its keystore and delivers each key to each member over a pairkit secure link,
  directly or through a relay;
* a **relay** (``relay``) stores what the controller forwards and delivers it to the members,
  retrying until they are reached; it cannot read it;
* a **member** (``listen``) accepts its keys when reached and prints the commands broadcast to
  its groups; it, too, may ``send``.

Whoever delivers connects: the controller reaches members and relays, a relay reaches members,
each where its keystore last saw the peer (``pairkit join`` stores that) unless ``-t`` says
otherwise.  Every device involved must have paired with the devices it talks to
(``pairkit host`` / ``pairkit join``); a member must also have paired with the controller,
whose signature it checks on every key.

Run as ``python -m cli.group_cli ...`` too (the same commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import click

from pairkit.pairing.errors import (
    ConfigError,
    NotFoundError,
    PairingTimeout,
    RefusedError,
    TooLargeError,
)

from .common import PairkitGroup, emit_json, info, run_async, unlock
from .params import Seconds, complete_peer, keystore_pin_option
from .show import safe
from .traceopt import trace_option


@click.group(cls=PairkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
def group() -> None:
    """Group keys delivered end to end (through relays), and encrypted group broadcasts.

    \b
    Controller:  pairkit group create fire-doors
                 pairkit group add fire-doors door-1 --via relay
                 pairkit group send fire-doors "close all doors" -t bumble:usb:0
                 pairkit group sync fire-doors      (retry until every member confirms)
                 pairkit group status fire-doors    (confirmed / pending / unreachable)
                 pairkit group remove fire-doors door-3       (new epoch, new key)
    Relay:       pairkit group relay -t tcp:0.0.0.0:7100
    Agent:       pairkit group agent -t tcp:0.0.0.0:7100 --radio bumble:usb:1
                 (then on the controller: pairkit group send fire-doors "close" --agent relay)
    Member:      pairkit group listen fire-doors -t tcp:0.0.0.0:7101 -t bumble:usb:0
    """


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(f)


def _report(record: Any, outcomes: list[Any], as_json: bool, what: str,
            extra: dict[str, Any] | None = None) -> None:
    if as_json:
        emit_json({"ok": all(o.ok for o in outcomes),
                   "confirmed": all(o.state == "confirmed" for o in outcomes),
                   "group": record.name, "epoch": record.epoch,
                   "deliveries": [o.as_json() for o in outcomes], **(extra or {})})
        return
    click.echo(f"{record.name}: epoch {record.epoch}, {len(record.members)} member(s); {what}")
    for o in outcomes:
        route = f"via {o.via}" if o.via else "directly"
        said = o.status if o.state == "confirmed" else (
            f"{_state_text(o.state, o.attempts, o.next_try)}  ({o.status})")
        click.echo(f"  {o.name:<24} {route:<20} {said}")
    pending = [o.name for o in outcomes if o.state == "pending"]
    lost = [o.name for o in outcomes if o.state == "unreachable"]
    if pending:
        info(f"not confirmed yet: {', '.join(pending)}; 'pairkit group sync {record.name}' "
             "retries until each confirms or is unreachable")
    if lost:
        info(f"unreachable: {', '.join(lost)}; 'pairkit group sync {record.name} "
             "--retry-unreachable' tries them again")


def _state_text(state: str, attempts: int, next_try: float | None) -> str:
    if state != "pending":
        return state
    when = ""
    if next_try is not None:
        left = next_try - time.time()
        when = f", next try in {left:.0f} s" if left > 0 else ", next try now"
    return f"pending ({attempts} attempt{'s' if attempts != 1 else ''}{when})"


def _policy_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--attempts", type=click.IntRange(1, 1000), default=6, show_default=True,
                     help="Attempts per member and epoch before it is reported unreachable."),
        click.option("--backoff", type=Seconds(0.01, 86400), default=2.0, show_default=True,
                     help="Seconds before the first retry; each later wait doubles."),
        click.option("--max-backoff", type=Seconds(0.01, 86400), default=300.0,
                     show_default=True, help="The longest wait between two attempts."),
    ]):
        f = opt(f)
    return f


def _policy(attempts: int, backoff: float, max_backoff: float) -> Any:
    from pairkit.pairing.groups import RetryPolicy

    return RetryPolicy(first=backoff, cap=max(backoff, max_backoff), attempts=attempts)


@group.command()
@keystore_pin_option
@click.argument("name")
@click.option("--trust", type=click.Choice(["paired", "ca"]), default="paired",
              show_default=True,
              help="How members trust this controller: 'paired' (they paired with it) or "
                   "'ca' (its certificate from the key server's CA: 'ttp enrol --cert').")
@_json_option
def create(name: str, trust: str, as_json: bool) -> None:
    """Create the group NAME, controlled by this device, with a fresh key (epoch 1).

    \b
    --trust paired  a member takes keys only from a controller it paired with (the default)
    --trust ca      every envelope carries this device's certificate from the key server's
                    CA; a member enrolled with the same CA takes it without a pairing, a
                    member enrolled with another CA refuses it.  Members can then be added
                    by their own certificate: 'pairkit group add NAME --cert FILE'.
    """
    from pairkit.groups import create_group

    ks = unlock()
    record = create_group(ks, name, trust=trust)
    if as_json:
        emit_json({"ok": True, "group": record.name, "epoch": record.epoch,
                   "trust": record.trust})
    else:
        click.echo(f"created group {record.name} (epoch {record.epoch}, trusted "
                   f"{'by pairing' if trust == 'paired' else 'through the CA'}); add members "
                   f"with 'pairkit group add {record.name} PEER'")


def _read_cert_file(path: Path) -> bytes:
    """A device certificate from a file: PEM (as 'pairkit group cert' writes) or DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from pairkit.smallfile import read_small_file

    # sized before it is read, and only a regular file (session 20: a FIFO held the command
    # for ever, /dev/zero filled its memory)
    raw = read_small_file(path, 16 * 1024, "a device certificate")
    try:
        cert = (x509.load_pem_x509_certificate(raw) if raw.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(raw))
    except ValueError:
        raise ConfigError(f"{path} is not a certificate (PEM or DER)") from None
    return cert.public_bytes(Encoding.DER)


def _link_options(f: Any) -> Any:
    """--timeout and --connect-timeout: how long a controller waits on the links it opens."""
    for opt in reversed([
        click.option("--timeout", type=Seconds(0.1, 3600), default=15.0, show_default=True,
                     help="Seconds to wait for each message on a link."),
        click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0,
                     show_default=True,
                     help="Seconds to wait for a peer to answer a connection."),
    ]):
        f = opt(f)
    return f


def _controller(timeout: float, connect_timeout: float, attempts: int, backoff: float,
                max_backoff: float) -> tuple[Any, Any, Any]:
    """What a command that delivers keys needs from its options (:func:`_link_options`,
    :func:`_policy_options`): the unlocked keystore, how to reach members, the retry policy."""
    from pairkit.groups import Reach

    policy = _policy(attempts, backoff, max_backoff)
    ks = unlock()
    return ks, Reach(connect_timeout=connect_timeout, step_timeout=timeout), policy


def _reach_options(f: Any) -> Any:
    f = _link_options(f)  # listed after the options below
    for opt in reversed([
        click.option("--transport", "-t", default=None,
                     help="Reach the first hop (the member, or RELAY) through this transport "
                          "instead of where it was last seen (tcp:HOST:PORT or a radio)."),
        click.option("--address", default=None,
                     help="The first hop's BLE address on that radio."),
    ]):
        f = opt(f)
    return f


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.argument("peers", nargs=-1, metavar="[PEER]...", shell_complete=complete_peer)
@click.option("--via", "via", default=None, metavar="RELAY",
              help="Deliver through this relay (a known peer running 'pairkit group relay').")
@click.option("--cert", "cert_files", multiple=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Add the device whose certificate this is ('pairkit group cert' on it), in "
                   "a group made with --trust ca: no pairing with it needed.  Repeatable.")
@_reach_options
@_policy_options
@_json_option
def add(name: str, peers: tuple[str, ...], via: str | None, cert_files: tuple[Path, ...],
        transport: str | None, address: str | None, timeout: float, connect_timeout: float,
        attempts: int, backoff: float, max_backoff: float, as_json: bool) -> None:
    """Add the known peers PEER... (or the devices of --cert FILE...) to group NAME and
    deliver the group key to them.

    The key travels sealed to each member's identity key and signed by this device; a relay
    (--via) forwards it and cannot open it.  A member is *confirmed* only when its own signed
    receipt comes back (directly, or through the relay on a later round); until then it is
    pending, and 'pairkit group sync NAME' retries it with growing waits until it confirms
    or is reported unreachable.  One round is made here.

    Once the group's current key has left this device (a member holds it) or this device
    broadcast under it, adding starts a new epoch with a new key, which every member gets
    (the others too): a new member cannot read what the group said before it joined.
    Members added in one command share one new epoch.

    \b
    --json prints {"ok", "confirmed", "group", "epoch", "deliveries": [one per member
    tried in this round, the others too], "added": [names], "new_epoch": true|false}.
    """
    from pairkit.groups import add_members, controlled

    if bool(peers) == bool(cert_files):
        raise ConfigError("name the members: known PEERs, or --cert FILE (not both)")
    certs = [_read_cert_file(f) for f in cert_files]
    ks, reach, policy = _controller(timeout, connect_timeout, attempts, backoff, max_backoff)
    before = controlled(ks, name)
    known = {m.device_id for m in before.members}
    record, outcomes = run_async(lambda: add_members(
        ks, name, peers, certs=certs, via=via, transport=transport, address=address,
        reach=reach, policy=policy,
    ))
    added = [m.name for m in record.members if m.device_id not in known]
    new_epoch = record.epoch != before.epoch
    if as_json:
        _report(record, outcomes, True, "", {"added": added, "new_epoch": new_epoch})
    elif new_epoch:
        _report(record, outcomes, False,
                f"a new epoch, so that {', '.join(added)} cannot read what the group said "
                "before: the new key sent to every member")
    else:
        _report(record, outcomes, False, "key sent")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.argument("peer", shell_complete=complete_peer)
@_link_options
@_policy_options
@_json_option
def remove(name: str, peer: str, timeout: float, connect_timeout: float, attempts: int,
           backoff: float, max_backoff: float, as_json: bool) -> None:
    """Remove PEER from group NAME: a new epoch and key go to every remaining member.

    PEER keeps the old key but cannot read anything sent after this: members refuse
    broadcasts of the old epoch once they have the new one.
    """
    from pairkit.groups import remove_member

    ks, reach, policy = _controller(timeout, connect_timeout, attempts, backoff, max_backoff)
    record, outcomes = run_async(lambda: remove_member(ks, name, peer, reach=reach,
                                                       policy=policy))
    _report(record, outcomes, as_json, "new key sent")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@_link_options
@_policy_options
@_json_option
def rekey(name: str, timeout: float, connect_timeout: float, attempts: int, backoff: float,
          max_backoff: float, as_json: bool) -> None:
    """Start a new epoch of group NAME with a new key, and deliver it to every member.

    One round is made here; 'pairkit group sync NAME' retries until every member confirms.
    """
    from pairkit.groups import rekey_group

    ks, reach, policy = _controller(timeout, connect_timeout, attempts, backoff, max_backoff)
    record, outcomes = run_async(lambda: rekey_group(ks, name, reach=reach, policy=policy))
    _report(record, outcomes, as_json, "new key sent")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@_link_options
@_policy_options
@click.option("--once", is_flag=True,
              help="One round only: try every pending member once, do not wait for retries.")
@click.option("--retry-unreachable", is_flag=True,
              help="Try members reported unreachable again, with a fresh count of attempts.")
@_json_option
def sync(name: str, timeout: float, connect_timeout: float, attempts: int, backoff: float,
         max_backoff: float, once: bool, retry_unreachable: bool, as_json: bool) -> None:
    """Deliver group NAME's current key until every member confirms or is unreachable.

    A member is confirmed only by its own signed receipt, which the controller checks: a
    relay cannot make one up, and its "queued" is not enough.  Members that have not
    confirmed are tried again after --backoff seconds, then twice as long each time (at most
    --max-backoff), until --attempts attempts; then they are reported unreachable.  Members
    behind a relay confirm on a later round, when the relay hands back their receipts.
    Progress is kept in the keystore: 'pairkit group status NAME' shows it at any time.

    \b
    Exit 0 when every member confirmed; 4 (timeout) when some are unreachable.
    """
    from pairkit.groups import confirm_all, deliver_pending

    ks, reach, policy = _controller(timeout, connect_timeout, attempts, backoff, max_backoff)

    def progress(outcomes: list[Any]) -> None:
        if not as_json:
            for o in outcomes:
                info(f"{o.name}: {_state_text(o.state, o.attempts, o.next_try)} ({o.status})")

    if once:
        if retry_unreachable:
            raise ConfigError("--retry-unreachable needs the full sync (without --once)")
        record, outcomes = run_async(lambda: deliver_pending(ks, name, reach=reach,
                                                             policy=policy))
    else:
        record, outcomes = run_async(lambda: confirm_all(
            ks, name, reach=reach, policy=policy, retry_unreachable=retry_unreachable,
            on_round=progress))
    _report(record, outcomes, as_json, "pending members tried" if outcomes else "nothing pending")
    if not once and any(o.state == "unreachable" for o in outcomes):
        lost = ", ".join(o.name for o in outcomes if o.state == "unreachable")
        raise PairingTimeout(f"not confirmed after {attempts} attempts: {lost}")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.argument("message")
@click.option("--transport", "-t", default=None,
              help="The radio to broadcast on: bumble:usb:0, bumble:tcp-client:HOST:PORT, ... "
                   "[default: the default transport, see 'pairkit whoami'].  With --agent: "
                   "where to reach the agent, when not where it was last seen.")
@click.option("--duration", type=Seconds(0.1, 60), default=2.0, show_default=True,
              help="Seconds to keep advertising the command.")
@click.option("--agent", default=None, metavar="PEER",
              help="Have this group agent broadcast it ('pairkit group agent' on a member of "
                   "NAME that confirmed the current epoch), signed end to end by this "
                   "controller, instead of broadcasting here.")
@click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0, show_default=True,
              help="With --agent: seconds to wait for the agent to answer a connection.")
@_json_option
def send(name: str, message: str, transport: str | None, duration: float, agent: str | None,
         connect_timeout: float, as_json: bool) -> None:
    """Broadcast MESSAGE to group NAME, encrypted under the group key, in one advertisement.

    The advertisement carries the group epoch, a randomizer, this device's sequence number and
    an authentication tag (41 bytes in all), so it needs extended advertising (BLE 5): a legacy
    advertisement has room for 10 bytes.  Members refuse replays, forgeries and old epochs.

    With --agent PEER, the controller of NAME sends the command end to end to its group agent
    (a relay that is also a member), which broadcasts it on its own radio: members out of the
    controller's reach hear the agent.
    """
    from pairkit.groups import broadcast, needs_extended
    from pairkit.transports.registry import open_transport

    command = message.encode("utf-8")
    ks = unlock()
    if agent is not None:
        from pairkit.groups import Reach, send_via_agent
        from pairkit.pairing.groups import MAX_COMMAND

        if len(command) > MAX_COMMAND:
            raise ConfigError(f"the command is {len(command)} bytes; an agent broadcasts at "
                              f"most {MAX_COMMAND} bytes in one advertisement")
        reach = Reach(connect_timeout=connect_timeout,
                      spec=transport if transport and transport.startswith("tcp:") else None)
        result = run_async(lambda: send_via_agent(ks, name, agent, command, air=duration,
                                                  reach=reach))
        if not result.ok:
            raise RefusedError(f"the agent refused: {result.reason}")
        if as_json:
            emit_json({"ok": True, "group": name, "agent": agent, "number": result.number,
                       "seq": result.seq})
        else:
            click.echo(f"sent to {name} through the agent {agent} (its #{result.seq}), on the "
                       f"air for {duration:g} s")
        return
    if transport is None:
        from .common import home_path
        from .config import default_transport, load_policy

        transport = default_transport(load_policy(home_path()))[0]
    spec = transport

    async def go() -> dict[str, Any]:
        extra = {"extended_advertising": True} if (
            spec.startswith("bumble:") and needs_extended(command)) else {}
        t = await open_transport(spec, **extra)
        try:
            return await broadcast(ks, t, name, command, duration=duration)
        except TooLargeError as exc:  # the user's MESSAGE, not a peer's: a usage error
            raise ConfigError(f"MESSAGE is too long: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await t.close()

    result = run_async(go)
    if as_json:
        emit_json(result)
    else:
        kind = "extended" if result["extended"] else "legacy"
        click.echo(f"sent to {name} (epoch {result['epoch']}, #{result['seq']}): "
                   f"{result['bytes']} bytes in one {kind} advertisement, for {duration:g} s")


def _open_all(specs: tuple[str, ...]) -> Any:
    from pairkit.transports.registry import open_transport

    async def go() -> list[tuple[str, Any]]:
        opened: list[tuple[str, Any]] = []
        try:
            for spec in specs:
                opened.append((spec, await open_transport(spec)))
        except BaseException:
            for _, t in opened:
                with contextlib.suppress(Exception):
                    await t.close()
            raise
        return opened

    return go()


def _can_accept(t: Any) -> bool:
    return hasattr(t, "listen") or hasattr(t, "accept")


def _say_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json({k: v for k, v in event.items() if v is not None})
        return
    kind = event["event"]
    if kind == "command":
        # a broadcast's command is its sender's text: one line (atk21c: a member's newline
        # wrote a line from "the controller")
        click.echo(f"[{event['group']}] {event['sender']} #{event['seq']}: "
                   f"{safe(event['command'])}")
    elif kind == "key":
        info(f"key for {event['group']} epoch {event['epoch']} (controller "
             f"{event['controller']}, delivered by {event['from']})")
    elif kind == "key-refused":
        info(f"refused a key for {event['group']} from {event['from']}: {event['reason']}")
    elif kind == "rejected" and event["reason"] == "not-ours-or-forged":
        info("heard a broadcast for another group (or a forged one); ignored")
    elif kind == "rejected":
        info(f"refused a broadcast ({event['reason']}): {safe(event['text'])}")
    elif kind == "queued":
        info(f"holding an envelope for {event['member']} ({event['group']} epoch "
             f"{event['epoch']}) from {event['from']}")
    elif kind == "forwarded":
        info(f"delivered {event['group']} epoch {event['epoch']} to {event['member']}")
    elif kind == "dropped":
        info(f"{event['member']} refused {event['group']} epoch {event['epoch']}: "
             f"{event['reason']}")
    elif kind == "unreachable":
        info(f"{event['member']} not reached ({event['reason']}); will retry")
    elif kind == "broadcast":
        info(f"broadcast for {event['from']} to {event['group']} (epoch {event['epoch']}, "
             f"#{event['seq']}): {safe(event['command'])}")
    elif kind == "command-refused":
        info(f"refused a command for {safe(event['group'])} from {event['from']}: "
             f"{event['reason']}")
    elif kind == "receipt-returned":
        info(f"handed {event['member']}'s receipt for {event['group']} epoch "
             f"{event['epoch']} to its controller")


def _pin_controller(names: tuple[str, ...], controller: str | None) -> Any:
    """Check NAMEs, unlock, and pin --controller for them (docs/security.md, "Group keys")."""
    from pairkit.groups import pin_controller
    from pairkit.pairing.groups import check_group_name

    for n in names:
        check_group_name(n)
    if controller is not None and not names:
        raise ConfigError("--controller needs the group NAMEs it applies to")
    ks = unlock()
    if controller is not None:
        peer = ks.get_peer(controller)
        for n in names:
            if pin_controller(ks, n, peer.id):
                info(f"{n}: dropped the key this device held from another controller; its keys "
                     f"now come only from {peer.name}")
    return ks


@group.command()
@keystore_pin_option
@trace_option
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--transport", "-t", "transports", multiple=True, required=True,
              help="Where to accept keys and hear broadcasts (repeat): tcp:HOST:PORT accepts "
                   "keys; a radio (bumble:...) does both.")
@click.option("--controller", default=None, metavar="PEER",
              help="Take these groups' keys only from this known peer, whatever this "
                   "device's owner granted it (a group held from another controller is "
                   "dropped).")
@click.option("--count", default=None, type=click.IntRange(min=1),
              help="Stop after this many commands.")
@click.option("--timeout", "seconds", default=None, type=Seconds(0.1, 30 * 86400),
              help="Stop after this many seconds.")
@_json_option
def listen(names: tuple[str, ...], transports: tuple[str, ...], controller: str | None,
           count: int | None, seconds: float | None, as_json: bool) -> None:
    """Be a group member: accept group keys when reached, print commands broadcast to NAME.

    With no NAME, every group this device holds a key for (and any it is given).  Keys arrive
    over pairkit secure links from the controller or a relay (known peers only); broadcasts are
    heard on every radio given.  Commands go to stdout, one per line (--json: one object per
    event: key, command, rejected).

    \b
    Whose keys are taken for a group this device does not hold yet:
      - with --controller PEER, only PEER's, for the NAMEs given;
      - without it, those of a peer this device's owner let in as a member ('pairkit host',
        answered "member"), or, in a group made with --trust ca, of a controller certified by
        this device's CA.  A guest (its grant running or ended) is refused: name it with
        --controller to make it the controller.
    Once a group is held, only its controller gives it new keys, until --controller names
    another (the group held is dropped) or 'pairkit forget' forgets its controller.  A relay
    only carries them.
    """
    from pairkit.groups import GroupService, Listener

    ks = _pin_controller(names, controller)

    async def go() -> int:
        stop = asyncio.Event()
        got = 0

        def on_event(event: dict[str, Any]) -> None:
            nonlocal got
            if event["event"] == "command" and names and event["group"] not in names:
                return
            _say_event(event, as_json)
            if event["event"] == "command":
                got += 1
                if count is not None and got >= count:
                    stop.set()

        listener = Listener(ks, groups=names or None, on_event=on_event)
        service = GroupService(ks, on_event=on_event, on_key=listener.on_key)
        opened = await _open_all(transports)
        tasks = []
        try:
            for spec, t in opened:
                if _can_accept(t):
                    tasks.append(_serve(ks, spec, service, t))
                if hasattr(t, "scan"):
                    tasks.append(asyncio.create_task(listener.scan(t, stop)))
            info(f"{ks.name} listening on {', '.join(transports)}"
                 + (f" for {', '.join(names)}" if names else ""))
            await _until_one_ends([asyncio.create_task(stop.wait()), *tasks], seconds)
            return got
        finally:
            await _shut_down(stop, tasks, opened)

    try:
        run_async(go)
    except KeyboardInterrupt:
        info("stopped listening")


@group.command()
@keystore_pin_option
@trace_option
@click.option("--transport", "-t", "transports", multiple=True, required=True,
              help="Where to accept the controller's envelopes (repeat): tcp:HOST:PORT or a "
                   "radio; members are reached where this device last saw them.")
@click.option("--retry", type=Seconds(0.1, 86400), default=15.0, show_default=True,
              help="Seconds between delivery rounds while envelopes wait.")
@click.option("--timeout", "seconds", default=None, type=Seconds(0.1, 30 * 86400),
              help="Stop after this many seconds.")
@click.option("--reach", "reach_spec", default=None, metavar="T",
              help="Reach members through this radio (a second one, facing them); by "
                   "default each member is reached where this device last saw it.")
@click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0,
              show_default=True,
              help="Seconds to wait for a member to answer a connection.")
@_json_option
def relay(transports: tuple[str, ...], retry: float, seconds: float | None,
          reach_spec: str | None, connect_timeout: float, as_json: bool) -> None:
    """Be a relay: store the envelopes a controller forwards and deliver them to members.

    The relay holds envelopes it cannot open (sealed to each member's identity key) and keeps
    trying members it cannot reach, every --retry seconds, across restarts (the queue lives in
    its keystore).  Over BLE, give it a second radio for the members (--reach): one radio
    then accepts the controller while the other connects to members.
    """
    from pairkit.groups import GroupService, Reach, Relay

    if retry <= 0:
        raise ConfigError("--retry must be positive")
    ks = unlock()

    async def go() -> None:
        stop = asyncio.Event()
        opened = await _open_all(transports + ((reach_spec,) if reach_spec else ()))
        down = opened[-1][1] if reach_spec else None
        if reach_spec:
            reach = Reach(transport_obj=down, spec=reach_spec, connect_timeout=connect_timeout)
        else:
            reach = Reach(open=dict(opened), connect_timeout=connect_timeout)
        the_relay = Relay(ks, reach=reach, on_event=lambda e: _say_event(e, as_json))
        service = GroupService(ks, member=False, relay=the_relay,
                               on_event=lambda e: _say_event(e, as_json))
        tasks = [asyncio.create_task(the_relay.run(retry, stop))]
        try:
            for spec, t in opened:
                if t is down:
                    continue
                tasks.append(_serve(ks, spec, service, t))
            held = len(the_relay.queue)
            info(f"{ks.name} relaying on {', '.join(transports)}; holding {held} envelope(s)")
            await _until_one_ends(tasks, seconds)
        finally:
            await _shut_down(stop, tasks, opened)

    try:
        run_async(go)
    except KeyboardInterrupt:
        info("relay stopped")


@group.command()
@keystore_pin_option
@trace_option
@click.option("--transport", "-t", "transports", multiple=True, required=True,
              help="Where to accept the controller (repeat): tcp:HOST:PORT or a radio.")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--controller", default=None, metavar="PEER",
              help="Take these groups' keys (and commands) only from this known peer (before "
                   "the first key), whatever this device's owner granted it.")
@click.option("--radio", required=True, metavar="RADIO",
              help="The radio to broadcast commands on (bumble:...; extended advertising is "
                   "turned on); it may also be --reach.")
@click.option("--reach", "reach_spec", default=None, metavar="T",
              help="Reach members through this radio; by default where each was last seen.")
@click.option("--retry", type=Seconds(0.1, 86400), default=15.0, show_default=True,
              help="Seconds between delivery rounds while envelopes wait.")
@click.option("--timeout", "seconds", default=None, type=Seconds(0.1, 30 * 86400),
              help="Stop after this many seconds.")
@click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0, show_default=True,
              help="Seconds to wait for a member to answer a connection.")
@_json_option
def agent(names: tuple[str, ...], controller: str | None, transports: tuple[str, ...],
          radio: str, reach_spec: str | None, retry: float, seconds: float | None,
          connect_timeout: float, as_json: bool) -> None:
    """Be a group agent: a relay that also holds its groups' keys and broadcasts for them.

    \b
    The oneM2M MN-CSE as group agent.  This device
      - relays envelopes and receipts, as 'pairkit group relay' does;
      - takes the keys of the groups whose controller adds it as a member (end to end, sealed
        to it, like any member: 'pairkit group add NAME AGENT' on the controller);
      - broadcasts on --radio the commands that controller sends it end to end
        ('pairkit group send NAME MESSAGE --agent AGENT'): each signed by the group's
        controller for this agent, numbered (a replay is refused), at the epoch it holds.
    Members out of the controller's reach then hear the agent.  It refuses commands from
    anyone else, for groups it holds no key of, or under an old epoch.  It takes a group's keys
    as 'pairkit group listen' does: from the --controller PEER named for NAME, or from a peer
    this device's owner let in as a member (never a guest), or a controller its CA certified.
    """
    from pairkit.groups import Agent, GroupService, Reach, Relay

    ks = _pin_controller(names, controller)

    async def go() -> None:
        from pairkit.transports.registry import open_transport

        stop = asyncio.Event()
        if not radio.startswith("bumble:"):
            raise ConfigError(f"--radio must be a BLE radio (bumble:...), not {radio!r}")
        # The broadcasting radio first, with extended advertising (a group broadcast never
        # fits a legacy advertisement); a -t or --reach naming the same radio shares it.
        air = await open_transport(radio, extended_advertising=True)
        others = tuple(x for x in transports + ((reach_spec,) if reach_spec else ())
                       if x != radio)
        try:
            opened = [(radio, air), *await _open_all(others)]
        except BaseException:
            with contextlib.suppress(Exception):
                await air.close()
            raise
        specs = dict(opened)
        down = specs.get(reach_spec) if reach_spec else None
        reach = (Reach(transport_obj=down, spec=reach_spec, connect_timeout=connect_timeout)
                 if reach_spec else Reach(open=specs, connect_timeout=connect_timeout))
        say = lambda e: _say_event(e, as_json)  # noqa: E731
        the_relay = Relay(ks, reach=reach, on_event=say)
        service = GroupService(ks, relay=the_relay, agent=Agent(ks, air, on_event=say),
                               on_event=say)
        tasks = [asyncio.create_task(the_relay.run(retry, stop))]
        try:
            for spec, t in opened:
                if t is down or (t is air and spec not in transports):
                    continue
                tasks.append(_serve(ks, spec, service, t))
            info(f"{ks.name} is a group agent on {', '.join(transports)}, broadcasting on "
                 f"{radio}")
            await _until_one_ends(tasks, seconds)
        finally:
            await _shut_down(stop, tasks, opened)

    try:
        run_async(go)
    except KeyboardInterrupt:
        info("agent stopped")


@group.command(name="cert")
@keystore_pin_option
@click.option("--out", "-o", "out", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Write the certificate (PEM) to FILE instead of stdout.")
@_json_option
def cert_cmd(out: Path | None, as_json: bool) -> None:
    """Show this device's certificate from the key server's CA ('ttp enrol --cert').

    A controller adds this device to a group trusted through the CA with
    'pairkit group add NAME --cert FILE': the certificate names this device, its signing key
    and the key envelopes are sealed to, signed by the CA.  It holds nothing secret.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from pairkit.groupcert import own_cert, trusted_ca
    from pairkit.pairing.groupcert import check_device_cert

    ks = unlock()
    der, ca = own_cert(ks), trusted_ca(ks)
    if der is None or ca is None:
        raise NotFoundError("this device has no certificate yet: pairkit ttp enrol --server "
                            "HOST:PORT --ca ca.pem --cert")
    found = check_device_cert(der, ca, now=time.time(), device_id=bytes.fromhex(ks.device_id))
    pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
    if out is not None:
        try:
            out.write_text(pem)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror}") from None
    if as_json:
        emit_json({"ok": True, "id": found.device_id.hex(), "name": found.name,
                   "valid_until": int(found.not_after), "file": str(out) if out else None,
                   "pem": pem})
    elif out is None:
        click.echo(pem, nl=False)
    else:
        info(f"wrote {found.name}'s certificate to {out}")


def _status(name: str | None, as_json: bool) -> None:
    from pairkit.groups import group_status

    status = group_status(unlock(), name)
    if as_json:
        emit_json(status)
        return
    for g in status["controls"]:
        trusted = "through the CA" if g["trust"] == "ca" else "by pairing"
        click.echo(f"controls {g['group']} (epoch {g['epoch']}, trusted {trusted})")
        for m in g["members"]:
            route = f" via {m['via']}" if m["via"] else ""
            state = _state_text(m["state"], m["attempts"], m["next_try"])
            last = f"  last: {m['last']}" if m["last"] and m["state"] != "confirmed" else ""
            click.echo(f"  {m['name']:<24}{route}  {state}{last}")
    for g in status["member_of"]:
        click.echo(f"member of {g['group']} (epoch {g['epoch']}, controller {g['controller']})")
    for e in status["relaying"]:
        click.echo(f"holding {e['group']} epoch {e['epoch']} for {e['member']}")
    for r in status["receipts_held"]:
        click.echo(f"holding {r['member']}'s receipt for {r['group']} epoch {r['epoch']} "
                   f"(for {r['controller']})")
    if not any(status.values()):
        info("no groups yet: 'pairkit group create NAME' makes one" if name is None
             else f"this device knows nothing of a group {name!r}")


@group.command()
@keystore_pin_option
@click.argument("name", required=False)
@_json_option
def status(name: str | None, as_json: bool) -> None:
    """Show each member's delivery state, and what this device holds and relays.

    \b
    For each group this device controls, each member is one of:
      confirmed    its signed receipt for the current epoch came back and verified
      pending      not confirmed yet: attempts so far, and when the next try is due
      unreachable  the attempts ran out ('pairkit group sync NAME --retry-unreachable')
    Then the groups whose key this device holds, the envelopes it relays and the receipts
    it holds for controllers.  NAME keeps only that group.  --json: one object, with
    "state", "attempts", "next_try" (Unix seconds) and "last" (what the last attempt gave)
    for each member.
    """
    _status(name, as_json)


@group.command(hidden=True)
@keystore_pin_option
@click.argument("name", required=False)
@_json_option
def show(name: str | None, as_json: bool) -> None:
    """The same as 'status' (its former name)."""
    _status(name, as_json)


def main() -> None:
    """``python -m cli.group_cli``: the same commands without the rest of pairkit."""
    group(prog_name="pairkit group")


def _serve(ks: Any, spec: str, service: Any, transport: Any) -> asyncio.Task[None]:
    """Accept known peers' sessions for ``service`` on ``transport`` (opened from ``spec``); each
    error is one line on stderr (listen, relay, agent)."""
    from pairkit.groups import serve

    return asyncio.create_task(serve(ks, spec, service, transport_obj=transport,
                                     on_error=lambda text: info(f"error: {text}")))


async def _until_one_ends(tasks: list[asyncio.Task[Any]], seconds: float | None) -> None:
    """Wait until one of ``tasks`` ends, or ``seconds`` pass; raise what it raised."""
    done, _ = await asyncio.wait(set(tasks), timeout=seconds,
                                 return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _shut_down(stop: asyncio.Event, tasks: Any, opened: Any) -> None:
    """Stop the serving tasks and close the transports they used (listen, relay)."""
    stop.set()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
    for _, t in opened:
        with contextlib.suppress(Exception):
            await t.close()


if __name__ == "__main__":
    sys.exit(main())
