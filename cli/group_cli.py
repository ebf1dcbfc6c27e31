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
from typing import Any

import click

from pairkit.pairing.errors import ConfigError, TooLargeError

from .common import PairkitGroup, emit_json, info, run_async, unlock
from .params import Seconds, complete_peer, keystore_pin_option
from .traceopt import trace_option


@click.group(cls=PairkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
def group() -> None:
    """Group keys delivered end to end (through relays), and encrypted group broadcasts.

    \b
    Controller:  pairkit group create fire-doors
                 pairkit group add fire-doors door-1 --via relay
                 pairkit group send fire-doors "close all doors" -t bumble:usb:0
                 pairkit group remove fire-doors door-3       (new epoch, new key)
    Relay:       pairkit group relay -t tcp:0.0.0.0:7100
    Member:      pairkit group listen fire-doors -t tcp:0.0.0.0:7101 -t bumble:usb:0
    """


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(f)


def _report(record: Any, outcomes: list[Any], as_json: bool, what: str) -> None:
    if as_json:
        emit_json({"ok": all(o.ok for o in outcomes), "group": record.name,
                   "epoch": record.epoch, "deliveries": [o.as_json() for o in outcomes]})
        return
    click.echo(f"{record.name}: epoch {record.epoch}, {len(record.members)} member(s); {what}")
    for o in outcomes:
        route = f"via {o.via}" if o.via else "directly"
        click.echo(f"  {o.name:<24} {route:<20} {o.status}")
    waiting = [o.name for o in outcomes if not o.ok]
    if waiting:
        info(f"not reached now: {', '.join(waiting)}; they get epoch {record.epoch} when next "
             f"reached (pairkit group sync {record.name})")


@group.command()
@keystore_pin_option
@click.argument("name")
@_json_option
def create(name: str, as_json: bool) -> None:
    """Create the group NAME, controlled by this device, with a fresh key (epoch 1)."""
    from pairkit.groups import create_group

    ks = unlock()
    record = create_group(ks, name)
    if as_json:
        emit_json({"ok": True, "group": record.name, "epoch": record.epoch})
    else:
        click.echo(f"created group {record.name} (epoch {record.epoch}); add members with "
                   f"'pairkit group add {record.name} PEER'")


def _reach_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--transport", "-t", default=None,
                     help="Reach the first hop (the member, or RELAY) through this transport "
                          "instead of where it was last seen (tcp:HOST:PORT or a radio)."),
        click.option("--address", default=None,
                     help="The first hop's BLE address on that radio."),
        click.option("--timeout", type=Seconds(0.1, 3600), default=15.0, show_default=True,
                     help="Seconds to wait for each message on a link."),
        click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0,
              show_default=True,
                     help="Seconds to wait for a peer to answer a connection."),
    ]):
        f = opt(f)
    return f


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.argument("peer", shell_complete=complete_peer)
@click.option("--via", "via", default=None, metavar="RELAY",
              help="Deliver through this relay (a known peer running 'pairkit group relay').")
@_reach_options
@_json_option
def add(name: str, peer: str, via: str | None, transport: str | None, address: str | None,
        timeout: float, connect_timeout: float, as_json: bool) -> None:
    """Add the known peer PEER to group NAME and deliver the group key to it.

    The key travels sealed to PEER's identity key and signed by this device; a relay
    (--via) forwards it and cannot open it.  A member out of reach stays pending and gets the
    current key when next reached ('pairkit group sync NAME').
    """
    from pairkit.groups import Reach, add_member

    ks = unlock()
    reach = Reach(connect_timeout=connect_timeout, step_timeout=timeout)
    record, outcomes = run_async(lambda: add_member(
        ks, name, peer, via=via, transport=transport, address=address, reach=reach,
    ))
    _report(record, outcomes, as_json, "key sent")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.argument("peer", shell_complete=complete_peer)
@click.option("--timeout", type=Seconds(0.1, 3600), default=15.0, show_default=True,
              help="Seconds to wait for each message on a link.")
@click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0,
              show_default=True,
              help="Seconds to wait for a peer to answer a connection.")
@_json_option
def remove(name: str, peer: str, timeout: float, connect_timeout: float, as_json: bool) -> None:
    """Remove PEER from group NAME: a new epoch and key go to every remaining member.

    PEER keeps the old key but cannot read anything sent after this: members refuse
    broadcasts of the old epoch once they have the new one.
    """
    from pairkit.groups import Reach, remove_member

    ks = unlock()
    reach = Reach(connect_timeout=connect_timeout, step_timeout=timeout)
    record, outcomes = run_async(lambda: remove_member(ks, name, peer, reach=reach))
    _report(record, outcomes, as_json, "new key sent")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.option("--timeout", type=Seconds(0.1, 3600), default=15.0, show_default=True,
              help="Seconds to wait for each message on a link.")
@click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0,
              show_default=True,
              help="Seconds to wait for a peer to answer a connection.")
@_json_option
def rekey(name: str, timeout: float, connect_timeout: float, as_json: bool) -> None:
    """Start a new epoch of group NAME with a new key, and deliver it to every member."""
    from pairkit.groups import Reach, rekey_group

    ks = unlock()
    reach = Reach(connect_timeout=connect_timeout, step_timeout=timeout)
    record, outcomes = run_async(lambda: rekey_group(ks, name, reach=reach))
    _report(record, outcomes, as_json, "new key sent")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.option("--timeout", type=Seconds(0.1, 3600), default=15.0, show_default=True,
              help="Seconds to wait for each message on a link.")
@click.option("--connect-timeout", type=Seconds(0.1, 600), default=10.0,
              show_default=True,
              help="Seconds to wait for a peer to answer a connection.")
@_json_option
def sync(name: str, timeout: float, connect_timeout: float, as_json: bool) -> None:
    """Deliver group NAME's current key to every member that does not have it yet."""
    from pairkit.groups import Reach, deliver_pending

    ks = unlock()
    reach = Reach(connect_timeout=connect_timeout, step_timeout=timeout)
    record, outcomes = run_async(lambda: deliver_pending(ks, name, reach=reach))
    _report(record, outcomes, as_json, "pending members tried" if outcomes else "nothing pending")


@group.command()
@keystore_pin_option
@trace_option
@click.argument("name")
@click.argument("message")
@click.option("--transport", "-t", default=None,
              help="The radio to broadcast on: bumble:usb:0, bumble:tcp-client:HOST:PORT, ... "
                   "[default: the default transport, see 'pairkit whoami']")
@click.option("--duration", type=Seconds(0.1, 3600), default=2.0, show_default=True,
              help="Seconds to keep advertising the command.")
@_json_option
def send(name: str, message: str, transport: str | None, duration: float,
         as_json: bool) -> None:
    """Broadcast MESSAGE to group NAME, encrypted under the group key, in one advertisement.

    The advertisement carries the group epoch, a randomizer, this device's sequence number and
    an authentication tag (41 bytes in all), so it needs extended advertising (BLE 5): a legacy
    advertisement has room for 10 bytes.  Members refuse replays, forgeries and old epochs.
    """
    from pairkit.groups import broadcast, needs_extended
    from pairkit.transports.registry import open_transport

    if duration <= 0:
        raise ConfigError("--duration must be positive")
    if transport is None:
        from .common import home_path
        from .config import default_transport, load_policy

        transport = default_transport(load_policy(home_path()))[0]
    command = message.encode("utf-8")
    ks = unlock()

    async def go() -> dict[str, Any]:
        extra = {"extended_advertising": True} if (
            transport.startswith("bumble:") and needs_extended(command)) else {}
        t = await open_transport(transport, **extra)
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
        click.echo(f"[{event['group']}] {event['sender']} #{event['seq']}: {event['command']}")
    elif kind == "key":
        info(f"key for {event['group']} epoch {event['epoch']} (controller "
             f"{event['controller']}, delivered by {event['from']})")
    elif kind == "key-refused":
        info(f"refused a key for {event['group']} from {event['from']}: {event['reason']}")
    elif kind == "rejected" and event["reason"] == "not-ours-or-forged":
        info("heard a broadcast for another group (or a forged one); ignored")
    elif kind == "rejected":
        info(f"refused a broadcast ({event['reason']}): {event['text']}")
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


@group.command()
@keystore_pin_option
@trace_option
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--transport", "-t", "transports", multiple=True, required=True,
              help="Where to accept keys and hear broadcasts (repeat): tcp:HOST:PORT accepts "
                   "keys; a radio (bumble:...) does both.")
@click.option("--controller", default=None, metavar="PEER",
              help="Take these groups' keys only from this known peer (before the first one).")
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
    """
    from pairkit.groups import GroupService, Listener, pin_controller, serve
    from pairkit.pairing.groups import check_group_name

    for n in names:
        check_group_name(n)
    if controller is not None and not names:
        raise ConfigError("--controller needs the group NAMEs it applies to")
    ks = unlock()
    if controller is not None:
        controller_id = ks.get_peer(controller).id
        for n in names:
            pin_controller(ks, n, controller_id)

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
                    tasks.append(asyncio.create_task(serve(
                        ks, spec, service, transport_obj=t,
                        on_error=lambda text: info(f"error: {text}"),
                    )))
                if hasattr(t, "scan"):
                    tasks.append(asyncio.create_task(listener.scan(t, stop)))
            info(f"{ks.name} listening on {', '.join(transports)}"
                 + (f" for {', '.join(names)}" if names else ""))
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({waiter, *tasks}, timeout=seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
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
    from pairkit.groups import GroupService, Reach, Relay, serve

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
                tasks.append(asyncio.create_task(serve(
                    ks, spec, service, transport_obj=t,
                    on_error=lambda text: info(f"error: {text}"),
                )))
            held = len(the_relay.queue)
            info(f"{ks.name} relaying on {', '.join(transports)}; holding {held} envelope(s)")
            done, _ = await asyncio.wait(set(tasks), timeout=seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await _shut_down(stop, tasks, opened)

    try:
        run_async(go)
    except KeyboardInterrupt:
        info("relay stopped")


@group.command()
@keystore_pin_option
@_json_option
def show(as_json: bool) -> None:
    """Show the groups this device controls, holds keys for, and relays envelopes of."""
    from pairkit.groups import group_status

    status = group_status(unlock())
    if as_json:
        emit_json(status)
        return
    for g in status["controls"]:
        click.echo(f"controls {g['group']} (epoch {g['epoch']})")
        for m in g["members"]:
            route = f" via {m['via']}" if m["via"] else ""
            state = "pending" if m["pending"] else f"has epoch {m['delivered']}"
            click.echo(f"  {m['name']:<24}{route}  {state}")
    for g in status["member_of"]:
        click.echo(f"member of {g['group']} (epoch {g['epoch']}, controller {g['controller']})")
    for e in status["relaying"]:
        click.echo(f"holding {e['group']} epoch {e['epoch']} for {e['member']}")
    if not any(status.values()):
        info("no groups yet: 'pairkit group create NAME' makes one")


def main() -> None:
    """``python -m cli.group_cli``: the same commands without the rest of pairkit."""
    group(prog_name="pairkit group")


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
