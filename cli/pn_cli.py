"""``pairkit pn``: personal networks, the OMA CPNS flows as commands (issue 14).

::

    pairkit pn gateway [-t T] [--setup 1-1|all|invited [--invite PNE_ID ...] [--wait-for N]]
    pairkit pn join TARGET [-t T] (--setup 1-1|all|invited [--invite PNE_ID ...] | --wait)
                    [--no-ui] [--pan-secured] [--stay]
    pairkit pn ls
    pairkit pn send MEMBER TEXT

The gateway and every PNE are enrolled with the same key server with a factory key first
(``pairkit ttp enroll --server HOST:PORT --ca ca.pem --new-eukey``): the gateway finds the
server from that enrolment.  This is the shell: the service is :mod:`pairkit.pn`, the machines
:mod:`pairkit.pairing.cpns`.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import click

from pairkit.pairing.errors import ConfigError, NotFoundError

from .common import PairkitGroup, emit_json, info, run_async, say, unlock
from .params import Number, Seconds, keystore_pin_option
from .show import safe
from .traceopt import trace_option

SETUPS = {"1-1": 1, "all": 2, "invited": 3}


@click.group(cls=PairkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
def pn() -> None:
    """Personal networks set up by a gateway and a key server.

    The OMA CPNS flows. A personal network (PN) is a gateway (a phone, a hub: a device
    with a display) and the elements (PNEs: a watch, a scale) it reaches. The key server
    (pairkit ttp) checks each element's factory key (EUKey) and gives each element-gateway
    link its own key, so the gateway never learns an element's factory key.

    \b
    Once, on every device (the same key server):
      pairkit ttp enroll --server HOST:8443 --ca ca.pem --new-eukey
    Then:
      pairkit pn gateway -t tcp:0.0.0.0:7100                  the gateway, until Ctrl-C
      pairkit pn join tcp:GW:7100 --setup all                 an element starts a PN
      pairkit pn join tcp:GW:7100 --wait --stay               an element waits to be asked
      pairkit pn ls                                           what this device keeps
      pairkit pn send "Paul's scale" "hello"                  routed through the gateway
    """


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print results as JSON (one object per line).")(f)


def _timeout_option(f: Any) -> Any:
    return click.option(
        "--timeout", type=Seconds(0.1, 3600), default=30.0, show_default=True,
        help="Longest wait, in seconds, for any one step (a message, the key server, a person "
             "answering); then exit code 4.  One exception: once `pn join` has answered the key "
             "server, it waits for the setup's outcome twice as long as its gateway says the "
             "key server waits for the other devices, when that is longer (a minute at "
             "most).")(f)


def _factory_key(ks: Any) -> bytes:
    from .ttp_cli import SETTING_EUKEY

    eukey = ks.setting(SETTING_EUKEY)
    if not isinstance(eukey, bytes) or len(eukey) != 32:
        raise NotFoundError(
            "this device has no factory key (EUKey): enrol it first with "
            "'pairkit ttp enroll --server HOST:PORT --ca ca.pem --new-eukey'"
        )
    return eukey


def _ids(values: tuple[str, ...]) -> tuple[bytes, ...]:
    from pairkit.pairing.ttp import parse_device_id

    ids = tuple(parse_device_id(v) for v in values)
    if len(set(ids)) != len(ids):
        raise ConfigError("a PNE is invited twice")
    if len(ids) > 15:
        raise ConfigError("at most 15 PNEs can be invited")
    return ids


class _Owner:
    """The gateway owner's and a PNE user's decisions, on the terminal or by flag."""

    def __init__(self, *, yes: bool, decline: bool = False, timeout: float = 30.0) -> None:
        from .prompt import Terminal

        self.yes = yes
        self.decline = decline
        self.timeout = timeout
        self.terminal = Terminal()

    async def _ask(self, header: str, question: str, flag_note: str) -> bool:
        if self.decline:
            info(header)
            info("  declined (--decline)")
            return False
        if self.yes:
            info(header)
            info(f"  yes ({flag_note})")
            return True
        if not self.terminal.interactive:
            info(header)
            info("  no terminal to ask on; answering no (use --yes in scripts)")
            return False
        return await self.terminal.choose(
            header, question, {"y": True, "yes": True, "n": False, "no": False}, no=False,
            timeout=self.timeout,
        )

    async def allow_pn_setup(self, name: str, setup: Any, invited: int) -> bool:
        what = {"1-1": "with this gateway only", "all": "with every element in reach",
                "invited": f"with {invited} invited element(s)"}[setup.label]
        return await self._ask(
            f"{name} asks to set up a personal network ({setup.label}: {what}).",
            "Allow it (the key server checks its factory key)? [y/N]", "--yes")

    async def allow_pn_join(self, q: Any) -> bool:
        from .show import safe

        by = (f"{safe(q.initiator_name)} ({q.initiator.hex()[:16]}) started it"
              if q.initiator is not None else "the gateway started it")
        return await self._ask(
            f"The gateway {safe(q.gw_name)} ({q.gw_id.hex()[:16]}) asks this device to join its "
            f"personal network ({q.setup_type.label}); {by}.",
            "Join it? [y/N]", "--yes")


# -- gateway ----------------------------------------------------------------------------------


@pn.command()
@keystore_pin_option
@trace_option
@click.option("--transport", "-t", default="tcp:127.0.0.1:7100", show_default=True,
              help="Where elements reach the gateway: tcp:HOST:PORT, bumble:usb:0, "
                   "bumble:tcp-client:HOST:PORT (a 'pairkit radio' port), ...")
@click.option("--setup", type=click.Choice(list(SETUPS)), default=None,
              help="Gateway-initiated: start a setup of this type once the elements it needs "
                   "are in reach ('pn join --wait'). Without it the gateway waits for an "
                   "element to start one.")
@click.option("--invite", "invite", multiple=True, metavar="PNE_ID",
              help="With --setup invited (or 1-1): an element to ask, by its id "
                   "('pairkit whoami' on it; repeat).")
@click.option("--wait-for", type=click.IntRange(1, 16), default=1, show_default=True,
              help="With --setup all or 1-1: how many elements must be in reach first.")
@click.option("--collect", type=Seconds(0.1, 600), default=5.0, show_default=True,
              help="Seconds the elements asked have to answer the setup notification.")
@click.option("--visible", type=Seconds(0, 30 * 86400), default=600.0, show_default=True,
              metavar="SECONDS",
              help="On BLE: broadcast a visible hello for SECONDS so elements find the gateway "
                   "('pairkit discover'); 0 keeps it private.")
@click.option("--pin-link", is_flag=True,
              help="Show a PIN that elements with a keypad type ('pn join --pin') to secure "
                   "their link to this gateway before anything else crosses it; good for one "
                   "try, then a new one is shown.")
@click.option("--pin", default=None, metavar="PIN",
              help="With --pin-link: show this 6-digit PIN first instead of a random one.")
@click.option("--once", is_flag=True,
              help="Stop after the first setup (its members' links close with it).")
@click.option("--yes", "-y", is_flag=True,
              help="Allow every element's setup request without asking (scripts, tests).")
@click.option("--reset-lockouts", is_flag=True,
              help="With --pin-link: lift the PIN lock before starting (the wrong PINs "
                   "counted so far are forgotten; they outlive a restart otherwise).")
@_timeout_option
@_json_option
def gateway(transport: str, setup: str | None, invite: tuple[str, ...], wait_for: int,
            collect: float, visible: float, pin_link: bool, pin: str | None, once: bool,
            yes: bool, reset_lockouts: bool, timeout: float, as_json: bool) -> None:
    """Be the gateway of a personal network: set up PNs and route between their members.

    Elements connect with 'pairkit pn join'. An element may start a setup (you are asked,
    or --yes), or wait to be asked (--setup here starts one once they are in reach). The
    key server is the one this device enrolled with ('pairkit ttp enroll'); it checks
    every element's factory key and gives each link its own key. The PN inventory, its
    routing table and the elements that failed or declined are kept in the keystore
    ('pairkit pn ls'), and read again when the gateway starts: members come back by
    themselves ('pairkit pn send', 'pairkit pn join --stay'). Runs until Ctrl-C, or --once.

    With --json, one line per setup: {"event": "setup", "pn", "setup", "members": [{"id",
    "name", "key_source", "session"}], "failed": [{"id", "name", "reason"}], "declined"}.
    """
    from pairkit.pairing.cpns import SetupType
    from pairkit.peers import local_identity
    from pairkit.pn import GatewayOptions, PnGateway

    from .ttp_cli import enrolled_server

    invited = _ids(invite)
    if pin is not None:
        from pairkit.pairing.methods.common import check_pin_strength

        if not pin_link:
            raise ConfigError("--pin goes with --pin-link")
        check_pin_strength(pin)
    if setup == "invited" and not invited:
        raise ConfigError("--setup invited needs the elements: --invite PNE_ID (repeat)")
    if invited and setup not in ("invited", "1-1"):
        raise ConfigError("--invite goes with --setup invited (or one element with --setup 1-1)")
    ks = unlock()
    eukey = _factory_key(ks)
    enrolled = enrolled_server(ks)
    if enrolled is None:
        raise NotFoundError("this device is not enrolled with a key server: "
                            "pairkit ttp enroll --server HOST:PORT --ca ca.pem --new-eukey")
    opts = GatewayOptions(
        server=enrolled[0], ca_file=enrolled[1], eukey=eukey,
        setup=SetupType(SETUPS[setup]) if setup else None, invited=invited,
        wait_for=wait_for, collect_window=collect, step_timeout=timeout, once=once,
    )
    owner = _Owner(yes=yes, timeout=timeout)
    pins = None
    if reset_lockouts and not pin_link:
        raise ConfigError("--reset-lockouts goes with --pin-link")
    if pin_link:
        from pairkit.lockouts import KeystoreLockJournal, forget_lockouts
        from pairkit.pn import PinDisplay

        if reset_lockouts:
            forget_lockouts(ks, ("pn-pin",))
            info("the PIN lockout for elements is cleared")
        # The PIN is for the owner's eyes (stderr, never --json): rule 8 allows it only there.
        pins = PinDisplay(pin, show=lambda p: info(
            f"PIN for elements: {p}   (type it there: pairkit pn join ... --pin {p})"),
            journal=KeystoreLockJournal(ks, "pn-pin"))
    service = PnGateway(ks, local_identity(ks), opts, delegate=owner,
                        emit=emit_json if as_json else None,
                        say=lambda text: info(text), pins=pins)
    if service.record is not None:
        info(f"PN {service.record.pn_id[:16]} reloaded from the keystore: "
             f"{len(service.record.members)} member(s)")
    run_async(lambda: _serve_gateway(service, transport, visible))


async def _serve_gateway(service: Any, spec: str, visible: float) -> None:
    from pairkit.presence import Presence
    from pairkit.session import accept_loop
    from pairkit.transports.registry import open_transport

    t = await open_transport(spec)
    listener = await t.listen() if hasattr(t, "listen") else t
    presence = Presence(t, service.ks, frozenset(), visible_for=visible or None,
                        on_change=lambda text: info(text))
    try:
        await presence.start()
        address = getattr(listener, "address", None) or getattr(t, "address", spec)
        if presence.can_broadcast:
            info("broadcasting a hello" + (f", visible for {visible:g} s" if visible else ""))
        info(f"{service.ks.name} is the PN gateway on {address} (key server "
             f"{service.opts.server}); Ctrl-C stops it")
        await accept_loop(listener, service.handle, concurrent=32, stop=service.stop,
                          on_error=lambda exc: info(f"error: {exc}"))
    finally:
        await presence.stop()
        if listener is not t:
            with contextlib.suppress(Exception):
                await listener.close()
        with contextlib.suppress(Exception):
            await t.close()


# -- join ---------------------------------------------------------------------------------------


@pn.command()
@keystore_pin_option
@trace_option
@click.argument("target")
@click.option("--transport", "-t", default=None,
              help="The radio, when TARGET is a BLE address from 'pairkit discover' "
                   "(bumble:usb:0, bumble:tcp-client:HOST:PORT, bleak).")
@click.option("--setup", type=click.Choice(list(SETUPS)), default=None,
              help="Start a PN (PNE-initiated): 1-1 with the gateway only, all with every "
                   "element in reach, invited with those named by --invite.")
@click.option("--invite", "invite", multiple=True, metavar="PNE_ID",
              help="With --setup invited: an element to include, by id (repeat).")
@click.option("--wait", "wait_", is_flag=True,
              help="Do not start a PN: wait to be asked (by the gateway, or by another "
                   "element's 'all' or 'invited' setup). You are asked to join, or --yes, "
                   "or --decline.")
@click.option("--decline", is_flag=True, help="With --wait: decline when asked.")
@click.option("--no-ui", "no_ui", is_flag=True,
              help="This element has no user interface: its link uses its pre-assigned key "
                   "(derived from its factory key) instead of a LocalEUKey.")
@click.option("--pan-secured", is_flag=True,
              help="Say the link to the gateway is already secured by the PAN (BLE LE Secure "
                   "Connections): no extra session if the gateway's side says so too.")
@click.option("--pin", default=None, metavar="PIN",
              help="The PIN the gateway shows ('pn gateway --pin-link'): it secures this "
                   "element's link to the gateway first (the PAN is then secured).")
@click.option("--stay", is_flag=True,
              help="After joining, stay connected and print the messages members route to "
                   "this element (until Ctrl-C or --count).")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=None,
              help="With --stay: stop after this many messages.")
@click.option("--yes", "-y", is_flag=True, help="With --wait: join when asked.")
@click.option("--pn", "pn_id", default=None, metavar="PN_ID[@GATEWAY]",
              help="Coming back (no --setup or --wait): which PN, when this device is in "
                   "several and joined none of them at TARGET (the gateway moved), as "
                   "'pn send --pn' names one.")
@_timeout_option
@_json_option
def join(target: str, transport: str | None, setup: str | None, invite: tuple[str, ...],
         wait_: bool, decline: bool, no_ui: bool, pan_secured: bool, pin: str | None,
         stay: bool,
         count: int | None, yes: bool, pn_id: str | None, timeout: float,
         as_json: bool) -> None:
    """Join the personal network of the gateway at TARGET, as an element (PNE).

    Three ways to secure the link to the gateway: --pin (the PIN the gateway shows, typed
    here), a LocalEUKey (the default, for an element with a user interface), or the
    pre-assigned key (--no-ui).

    TARGET is tcp:HOST:PORT, or (with -t naming the radio) a BLE address or the gateway's
    name, found by its hello as 'pairkit discover' lists it. Either start a
    setup (--setup) or wait to be asked (--wait). The key server checks this element's
    factory key; the gateway relays. An element with a user interface gets a LocalEUKey
    for its link to the gateway (even on a secured PAN, as the OMA source's R01 rule says);
    one without (--no-ui) uses its pre-assigned key. Unless the PIN (or the PAN) already
    secures the link, the link gets a secure session keyed from that key; either way this
    element keeps the key to come back later
    ('pairkit pn send'). If this device is already a member of the gateway's PN and gives
    neither --setup nor --wait, it reconnects with that key: the membership joined at TARGET,
    else the only one, else the one --pn names.

    With --json: {"ok", "pn", "gateway": {"id", "name"}, "members": [{"id", "name"}],
    "key_source", "session"}, or {"ok": false, "declined": true}; with --stay, then one
    line per message: {"event": "message", "from": {"id", "name"}, "text"}.
    """
    from pairkit.pairing.cpns import PneConfig, SetupType

    if setup and wait_:
        raise ConfigError("give --setup (start a PN) or --wait (be asked), not both")
    if invite and setup != "invited":
        raise ConfigError("--invite goes with --setup invited")
    if setup == "invited" and not invite:
        raise ConfigError("--setup invited needs the elements: --invite PNE_ID (repeat)")
    if decline and (not wait_ or yes):
        raise ConfigError("--decline goes with --wait, without --yes")
    if count is not None and not stay:
        raise ConfigError("--count goes with --stay")
    if pn_id is not None and (setup or wait_):
        raise ConfigError("--pn goes with coming back to a PN (without --setup or --wait)")
    if pin is not None:
        if no_ui:
            raise ConfigError("an element without a user interface (--no-ui) cannot type a PIN")
        if not (len(pin) == 6 and pin.isascii() and pin.isdigit()):
            raise ConfigError("a PIN is exactly 6 digits")
        if not setup and not wait_:
            raise ConfigError("--pin goes with --setup or --wait (a member comes back with its "
                              "link key, no PIN)")
    invited = _ids(invite)
    ks = unlock()
    from pairkit.pn import pne_caps
    from pairkit.session import resolve_target

    try:
        spec, address, _ = resolve_target(ks, target, transport)
    except NotFoundError:
        if not transport or not transport.startswith(("bumble:", "bleak")):
            raise
        # The gateway by name: its hello, then its hello response (pairkit discover's way).
        spec, address = transport, run_async(lambda: _gateway_named(transport, ks, target,
                                                                     as_json))
    resume = setup is None and not wait_
    if resume:
        record = _member_record(ks, pn_id, gateway=_route_text(spec, address))
        run_async(lambda: _resume_and_stay(ks, record, spec, address, stay, count, timeout,
                                           as_json))
        return
    eukey = _factory_key(ks)
    config = PneConfig(
        bytes.fromhex(ks.device_id), ks.name, eukey,
        caps=pne_caps(not no_ui, pan_secured or pin is not None),
        setup_type=SetupType(SETUPS[setup or "1-1"]), invited=invited,
        step_timeout=timeout, join="decline" if decline else ("accept" if yes else "ask"),
    )
    owner = _Owner(yes=yes, decline=decline, timeout=timeout)
    run_async(lambda: _join(ks, config, spec, address, listen=wait_, owner=owner, stay=stay,
                            count=count, timeout=timeout, as_json=as_json, pin=pin))


async def _gateway_named(spec: str, ks: Any, name: str, quiet: bool) -> str:
    from pairkit.transports.registry import open_transport

    from .flows import _host_named

    t = await open_transport(spec)
    try:
        return await _host_named(t, ks, name, quiet=quiet)
    finally:
        with contextlib.suppress(Exception):
            await t.close()


def _route_text(spec: str, address: str | None) -> str:
    return spec if address is None else f"{spec} {address}"


async def _connect(spec: str, address: str | None, timeout: float, *, ks: Any = None,
                   gateway_name: str | None = None) -> tuple[Any, Any]:
    """A link to the gateway; on a radio, a gateway that moved to another address (it
    rotates it) is looked for by its name (its hello response)."""
    from pairkit.pairing.errors import PairingTimeout, TransportError
    from pairkit.transports.registry import open_transport

    from .flows import _host_named

    t = await open_transport(spec)
    try:
        try:
            link = await t.connect(address, timeout=timeout)
        except (PairingTimeout, TransportError):
            if gateway_name is None or address is None or not hasattr(t, "scan"):
                raise
            info(f"the gateway is not at {address} any more; looking for {gateway_name!r}")
            link = await t.connect(await _host_named(t, ks, gateway_name, quiet=False),
                                   timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await t.close()
        raise
    return t, link


async def _join(ks: Any, config: Any, spec: str, address: str | None, *, listen: bool,
                owner: Any, stay: bool, count: int | None, timeout: float,
                as_json: bool, pin: str | None = None) -> None:
    from pairkit.pn import member_record, pne_setup

    t, link = await _connect(spec, address, timeout)
    channel = None
    try:
        if listen:
            info(f"in reach of the gateway at {_route_text(spec, address)}; waiting to be "
                 "asked", quiet=as_json)
        machine, channel = await pne_setup(link, config, listen=listen, delegate=owner,
                                           pin=pin)
        if machine.declined:
            if as_json:
                emit_json({"ok": False, "declined": True})
            else:
                say("declined the gateway's personal network")
            return
        m = machine.membership
        assert m is not None
        note = machine.notify
        gw_name = m.gw_name or (note.gw_name if note is not None else "the gateway")
        record = member_record(m, gw_name=gw_name or "the gateway",
                               setup=note.setup_type if note else config.setup_type,
                               gateway=_route_text(spec, address), now=time.time())
        with ks.update():
            ks.set_pn(record)
        _print_membership(record, m, as_json)
        if stay and channel is not None:
            await _stay(channel, record, count, as_json)
    finally:
        await _hang_up(channel, link, t)


async def _hang_up(channel: Any, link: Any, t: Any) -> None:
    """Close what a pn command opened: its channel to the gateway (if it got one), its link
    and its transport (those two quietly: they may be gone already)."""
    if channel is not None:
        await channel.close()
    with contextlib.suppress(Exception):
        await link.close()
    with contextlib.suppress(Exception):
        await t.close()


@contextlib.asynccontextmanager
async def _resumed(ks: Any, record: Any, spec: str, address: str | None,
                   timeout: float) -> AsyncIterator[Any]:
    """A member's secure channel to the gateway of ``record``'s PN, resumed from its stored
    link key; closed afterwards, with its link and transport."""
    from pairkit.pn import pne_resume

    t, link = await _connect(spec, address, timeout, ks=ks, gateway_name=record.gw_name)
    channel = None
    try:
        channel = await pne_resume(link, record, bytes.fromhex(ks.device_id),
                                   step_timeout=timeout)
        yield channel
    finally:
        await _hang_up(channel, link, t)


def _print_membership(record: Any, m: Any, as_json: bool) -> None:
    session = m.session.fingerprint if m.session else None
    if as_json:
        emit_json({"ok": True, "pn": record.pn_id,
                   "gateway": {"id": record.gw_id, "name": record.gw_name},
                   "members": [{"id": e.pne_id, "name": e.name} for e in record.members],
                   "key_source": record.key_source, "session": session})
        return
    names = ", ".join(e.name for e in record.members)
    say(f"joined PN {record.pn_id[:16]} of {record.gw_name}: members {names}")
    say(f"link key: {record.key_source}; "
        + (f"session {session}" if session else "no session of ours (the PAN secures the link)"))


def _member_record(ks: Any, pn: str | None, *, gateway: str | None = None) -> Any:
    """The membership ``pn`` names: ``PN_ID`` (a prefix of its id) or ``PN_ID@GATEWAY`` (and a
    prefix of its gateway's id, or the gateway's name), since two gateways' PNs may carry the
    same id (a PN is its gateway's: docs/security.md, the PN section, item 5)."""
    records = list(ks.pns("member"))
    if pn is not None:
        pn_part, at, gw_part = pn.strip().partition("@")
        records = [r for r in records if r.pn_id.startswith(pn_part.lower())]
        if at:
            # by the gateway's id first: a gateway's name is its own word, and one named
            # after another's id must not make the choice offered below ambiguous
            by_id = [r for r in records if gw_part and r.gw_id.startswith(gw_part.lower())]
            records = by_id or [r for r in records if r.gw_name == gw_part]
    if gateway is not None:
        # Coming back to the gateway at this address: the membership joined there.  When
        # none was (the gateway moved), the only one, or --pn's: before, the newest of all
        # was taken, another gateway's when this device is in its PN too, and the resume
        # failed against its own gateway (docs/security.md, the PN id scoping, item 4).
        here = [r for r in records if r.gateway == gateway]
        if here:
            return here[-1]
    if not records:
        if pn is not None and ks.pns("member"):
            raise NotFoundError(f"this device is in no PN that --pn {pn.strip()} names; "
                                "see 'pairkit pn ls'")
        raise NotFoundError("this device is a member of no personal network yet: "
                            "pairkit pn join TARGET --setup 1-1 (or --wait)")
    if len(records) > 1:
        shared = len({r.pn_id for r in records}) < len(records)
        raise ConfigError("this device is in several PNs: name one with --pn " + ", ".join(
            f"{r.pn_id[:16]}@{r.gw_id[:8]} ({r.gw_name})" if shared else r.pn_id[:16]
            for r in records))
    return records[-1]


async def _resume_and_stay(ks: Any, record: Any, spec: str, address: str | None, stay: bool,
                           count: int | None, timeout: float, as_json: bool) -> None:
    async with _resumed(ks, record, spec, address, timeout) as channel:
        if as_json:
            emit_json({"ok": True, "pn": record.pn_id, "resumed": True,
                       "gateway": {"id": record.gw_id, "name": record.gw_name}})
        else:
            say(f"back in PN {record.pn_id[:16]} of {record.gw_name}")
        if stay:
            await _stay(channel, record, count, as_json)


async def _stay(channel: Any, record: Any, count: int | None, as_json: bool) -> None:
    from pairkit.pn import pn_receive

    names = {e.pne_id: e.name for e in record.members}
    info("waiting for messages routed to this element (Ctrl-C stops)", quiet=as_json)

    async def show(msg: Any) -> None:
        src = msg.src.hex()
        text = msg.body.decode("utf-8", errors="replace")
        if as_json:
            emit_json({"event": "message", "from": {"id": src, "name": names.get(src, src)},
                       "text": text})
        else:
            # a member's text: one line (atk21c: a newline wrote a line from another member)
            say(f"{safe(names.get(src, src[:16]))}: {safe(text)}")

    await pn_receive(channel, show, count=count)


# -- ls -------------------------------------------------------------------------------------------


def _record_json(r: Any) -> dict[str, Any]:
    return {
        "pn": r.pn_id, "role": r.role, "setup": r.setup,
        "gateway": {"id": r.gw_id, "name": r.gw_name, "address": r.gateway},
        "members": [{"id": e.pne_id, "name": e.name, "key_source": e.key_source,
                     "route": e.route} for e in r.members],
        "failed": [{"id": e.pne_id, "name": e.name, "reason": e.reason} for e in r.failed],
        "declined": [{"id": e.pne_id, "name": e.name} for e in r.declined],
        "key_source": r.key_source,
    }


@pn.command(name="ls")
@keystore_pin_option
@_json_option
def ls_cmd(as_json: bool) -> None:
    """List the personal networks this device keeps: as gateway, its inventory and routing
    table (each member's last route) and the elements that failed or declined; as member,
    its gateway and the members the gateway listed. No key is shown.

    With --json: {"pns": [{"pn", "role", "setup", "gateway": {"id", "name", "address"},
    "members": [{"id", "name", "key_source", "route"}], "failed": [{"id", "name",
    "reason"}], "declined": [{"id", "name"}], "key_source"}]}.
    """
    ks = unlock()
    records = ks.pns()
    if as_json:
        emit_json({"pns": [_record_json(r) for r in records]})
        return
    if not records:
        info("no personal network yet: 'pairkit pn gateway', or 'pairkit pn join TARGET'")
    for r in records:
        if r.role == "gateway":
            say(f"PN {r.pn_id} (gateway, last setup {r.setup})")
            for e in r.members:
                say(f"  member   {e.pne_id[:16]}  {e.name:<24} {e.key_source:<12} "
                    f"route {e.route or '-'}")
            for e in r.failed:
                say(f"  failed   {e.pne_id[:16]}  {e.name:<24} {e.reason or ''}")
            for e in r.declined:
                say(f"  declined {e.pne_id[:16]}  {e.name}")
        else:
            # the gateway's id too: two gateways' PNs may share an id and a name, and
            # `--pn ID@GATEWAY` picks one by it (docs/security.md, the PN section)
            say(f"PN {r.pn_id} (member; gateway {r.gw_name} {r.gw_id[:16]} "
                f"at {r.gateway or '?'}; link key {r.key_source})")
            for e in r.members:
                say(f"  member   {e.pne_id[:16]}  {e.name}")


# -- send -----------------------------------------------------------------------------------------


@pn.command()
@keystore_pin_option
@trace_option
@click.argument("member")
@click.argument("text")
@click.option("--pn", "pn_id", default=None, metavar="PN_ID[@GATEWAY]",
              help="Which PN, when this device is in several: a prefix of its id, and when two "
                   "gateways' PNs share it, @ and a prefix of the gateway's id or its name.")
@click.option("--transport", "-t", default=None,
              help="Reach the gateway through this transport instead of where it was joined.")
@click.option("--repeat", type=Number(1, 1000), default=1, show_default=True,
              help="Send TEXT this many times (one delivery report each).")
@_timeout_option
@_json_option
def send(member: str, text: str, pn_id: str | None, transport: str | None, repeat: float,
         timeout: float, as_json: bool) -> None:
    """Send TEXT to MEMBER (a name or id from 'pairkit pn ls'), routed through the gateway.

    This element reconnects to its gateway with a fresh secure session from its link key;
    the gateway forwards TEXT on MEMBER's own secure link, so MEMBER must be connected
    ('pairkit pn join ... --stay'). Exit code 6 if MEMBER is not connected or not a member.

    With --json: {"ok", "to": {"id", "name"}, "delivered", "reason"} (one per --repeat).
    """
    body = text.encode("utf-8", errors="strict") if text else b""
    from pairkit.pairing.cpns.messages import MAX_BODY

    if not body:
        raise ConfigError("nothing to send: TEXT is empty")
    if len(body) > MAX_BODY:
        raise ConfigError(f"TEXT is {len(body)} bytes; a routed message holds {MAX_BODY}")
    ks = unlock()
    record = _member_record(ks, pn_id)
    target = record.member(member)
    if target.pne_id == ks.device_id:
        raise ConfigError("that is this device")
    route = record.gateway or ""
    spec, _, address = route.partition(" ")
    if transport is not None:
        spec = transport
    if not spec:
        raise NotFoundError("no address is known for the gateway; give --transport")
    reports = run_async(lambda: _send(ks, record, spec, address or None,
                                      bytes.fromhex(target.pne_id), body, int(repeat), timeout))
    for report in reports:
        if as_json:
            emit_json({"ok": report.delivered, "to": {"id": target.pne_id, "name": target.name},
                       "delivered": report.delivered, "reason": report.reason})
        elif report.delivered:
            say(f"delivered to {target.name}")
    failed = [r for r in reports if not r.delivered]
    if failed:
        raise NotFoundError(f"not delivered to {target.name}: {failed[0].reason}")


async def _send(ks: Any, record: Any, spec: str, address: str | None, dst: bytes, body: bytes,
                repeat: int, timeout: float) -> list[Any]:
    from pairkit.pn import pn_send

    async with _resumed(ks, record, spec, address, timeout) as channel:
        me = bytes.fromhex(ks.device_id)
        reports = []
        for msg_id in itertools.islice(itertools.count(1), repeat):
            reports.append(await pn_send(channel, record, me, dst, body, msg_id=msg_id,
                                         timeout=timeout))
        return reports


def main() -> None:
    pn(standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
