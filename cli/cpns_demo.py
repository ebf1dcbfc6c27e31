"""``pairkit demo --scenario cpns``: Paul's phone enrols his watch and scale through a CPNS server.

Everything is real but the radio: a key server process (``python -m pairkit.keyserver``) with
its own CA, TLS 1.3 and SQLite database in a temporary folder; devices that enrol their identity
keys and factory EUKeys with it; and the PAN links between the phone (the PN gateway) and its
PNEs as in-memory links whose messages are narrated as they pass.

1. PNE-initiated, setup type "all": the watch asks the phone to set up a PN with every PNE in
   reach.  The scale is reached too, but its factory key was lost in a bad firmware update, so
   it fails the server's authentication; the PN registers with the watch alone.  The watch has
   a screen and its link is open, so it asks for a LocalEUKey and sets up a secure session.
2. Gateway-initiated, setup type "invited": the repaired scale and the watch (now on a link the
   PAN secures) join the same PN; the watch still gets a LocalEUKey (the source's R01 note:
   regardless of the PAN) but no extra session; the scale, with no UI, uses its pre-assigned
   key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.keyserver.certs import init_server_dir
from pairkit.keyserver.store import open_store
from pairkit.pairing import wire
from pairkit.pairing.cpns import (
    AuthenticationRequest,
    AuthenticationResponse,
    GatewayConfig,
    LinkConfirm,
    PneCaps,
    PneConfig,
    PneDropped,
    PnEstablishmentNotify,
    PnInventory,
    PnSetupNotify,
    PnSetupNotifyResponse,
    PnSetupRequest,
    SetupType,
)
from pairkit.pairing.errors import PairingError, PairingTimeout, TransportError
from pairkit.pairing.framing import Reassembler
from pairkit.pairing.machine import Event
from pairkit.pairing.methods import LocalIdentity
from pairkit.transports.loopback import loopback_pair
from pairkit.ttp import enrol

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 20.0


class _Say:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.step = 0

    def __call__(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    def section(self, title: str) -> None:
        self.step += 1
        self(f"\n{self.step}. {title}")


def _describe(msg: wire.Message) -> str:
    """A message as the narration shows it: its name and what matters in it, no secret."""
    name = type(msg).__name__
    if isinstance(msg, PnSetupRequest):
        return (f"{name} (setup type {msg.setup_type.label}, rand_PNE, LocalEUKey "
                f"{'requested' if msg.local_key_request else 'not requested'})")
    if isinstance(msg, PnSetupNotify):
        return f"{name} (PN {msg.pn_id.hex()[:8]}, setup type {msg.setup_type.label})"
    if isinstance(msg, PnSetupNotifyResponse):
        return (f"{name} (accept, rand_PNE, LocalEUKey "
                f"{'requested' if msg.local_key_request else 'not requested'})")
    if isinstance(msg, AuthenticationRequest):
        return f"{name} (rand_server; relayed from the server by PN id)"
    if isinstance(msg, AuthenticationResponse):
        return f"{name} (hash_PNE; relayed to the server)"
    if isinstance(msg, PnEstablishmentNotify):
        if not msg.ok:
            return f"{name} (refused: {msg.reason})"
        source = msg.key_source.name.lower() if msg.key_source else "?"
        return f"{name} (hash_server, {len(msg.members)} member(s), link key: {source})"
    if isinstance(msg, LinkConfirm):
        return f"{name} (link session key confirmation)"
    if isinstance(msg, wire.Abort):
        return f"Abort ({msg.reason})"
    return name


def _tap(say: _Say, names: dict[str, str]) -> Any:
    """Narrate each whole message on a PAN link (the link carries fragments: rejoin them)."""
    joiners: dict[tuple[str, str], Reassembler] = {}

    def tap(src: str, dst: str, data: bytes) -> bytes:
        joiner = joiners.setdefault((src, dst), Reassembler(64 * 1024))
        try:
            message = joiner.feed(data)
            if message is None:
                return data
            text = _describe(wire.decode(message))
        except PairingError:
            joiners.pop((src, dst), None)
            text = f"{len(data)} bytes"
        say(f"   {names[src]} -> {names[dst]}: {text}")
        return data

    return tap


async def start_key_server(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pairkit.keyserver", "--dir", str(directory),
        "--listen", "127.0.0.1:0", "--json", "--quiet", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), SERVER_START_TIMEOUT)
    except TimeoutError:
        await stop_key_server(proc)
        raise PairingTimeout("the key server process did not start in time") from None
    try:
        return proc, str(json.loads(line)["listening"])
    except (ValueError, KeyError):
        err = b""
        if proc.stderr is not None:
            with contextlib.suppress(TimeoutError):
                err = await asyncio.wait_for(proc.stderr.read(), 5)
        await stop_key_server(proc)
        raise TransportError(
            f"the key server process failed to start: {err.decode(errors='replace').strip()}"
        ) from None


async def stop_key_server(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


def _inventory_json(inv: PnInventory, names: dict[bytes, str]) -> dict[str, Any]:
    return {
        "pn": inv.pn_id.hex(),
        "setup": inv.setup_type.label,
        "members": [
            {"name": m.name, "key_source": m.key_source.name.lower(),
             "session": m.session.fingerprint if m.session else None}
            for m in inv.members
        ],
        "failed": [{"name": names.get(i, i.hex()), "reason": r} for i, r in inv.failed.items()],
    }


async def run_cpns_demo(*, quiet: bool) -> dict[str, Any]:
    """Both CPNS flows against a real key server process; a JSON-able summary."""
    say = _Say(quiet)
    summary: dict[str, Any] = {"ok": True, "scenario": "cpns", "flows": []}
    with tempfile.TemporaryDirectory(prefix="pairkit-cpns-") as tmp_name:
        tmp = Path(tmp_name)
        say.section("The manufacturer sets up its CPNS server (the pairkit key server)")
        d = init_server_dir(tmp / "cpns-server")
        say(f"   CA certificate {d.ca_cert.name} goes into every device; the server runs apart")
        proc, address = await start_key_server(d.root)
        summary["server"] = address
        say(f"   key server process {proc.pid} listening on {address} (TLS 1.3)")
        try:
            summary["flows"] = await _flows(say, d, address)
        finally:
            summary["server_exit"] = await stop_key_server(proc)
        store = open_store(d.root)
        try:
            summary["server_inventory"] = [
                {"pn": p.pn_id.hex(), "gateway": p.gw_name, "setup": p.setup_type.label,
                 "members": [m["name"] for m in p.members]}
                for p in (store.pn(*k) for k in store.pn_keys())
            ]
        finally:
            store.close()
        say(f"\nThe server's inventory, read after it stopped: {summary['server_inventory']}")
    return summary


async def _flows(say: _Say, d: Any, address: str) -> list[dict[str, Any]]:
    phone = LocalIdentity.generate("Paul's phone")
    watch = LocalIdentity.generate("Paul's watch")
    scale = LocalIdentity.generate("Paul's scale")
    eukeys = {x.device_id: os.urandom(32) for x in (phone, watch, scale)}
    names = {x.device_id: x.name for x in (phone, watch, scale)}

    say.section("At the factory, each device is enrolled with its identity key and EUKey")
    for dev in (phone, watch, scale):
        done = await enrol(address, d.ca_cert, dev, eukey=eukeys[dev.device_id])
        say(f"   {dev.name} ({dev.device_id.hex()[:16]}) enrolled"
            + (" with a factory key" if done.has_eukey else ""))

    gw_config = GatewayConfig(phone.device_id, phone.name, eukeys[phone.device_id],
                              collect_window=3.0, step_timeout=10.0)
    flows: list[dict[str, Any]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, PneDropped):
            who = names.get(event.pne_id or b"", "a PNE")
            say(f"   the phone drops {who}: {event.reason}")

    # -- flow 1 --------------------------------------------------------------------------
    say.section("PNE-initiated setup: the watch asks for a PN with every PNE in reach ('all')")
    say("   the scale's firmware update lost its factory key: it now holds another one")
    label = {"phone": phone.name, "watch": watch.name, "scale": scale.name}
    w_gw, w_pne = loopback_pair(names=("phone", "watch"), tap=_tap(say, label))
    s_gw, s_pne = loopback_pair(names=("phone", "scale"), tap=_tap(say, label))
    watch_cfg = PneConfig(watch.device_id, watch.name, eukeys[watch.device_id],
                          caps=PneCaps.UI, contents=("heart rate", "steps"),
                          setup_type=SetupType.ALL, step_timeout=10.0)
    broken_scale = PneConfig(scale.device_id, scale.name, os.urandom(32), caps=PneCaps.NONE,
                             contents=("weight",), step_timeout=10.0)
    inventory, watch_result, scale_result = await asyncio.gather(
        run_gateway({"watch": PneLink(w_gw, watch.device_id),
                     "scale": PneLink(s_gw, scale.device_id)},
                    me=phone, config=gw_config, server=address, ca_file=d.ca_cert,
                    on_event=on_event),
        run_pne(w_pne, watch_cfg, listen=False),
        run_pne(s_pne, broken_scale, listen=True),
        return_exceptions=True,
    )
    for link in (w_gw, w_pne, s_gw, s_pne):
        await link.close()
    if isinstance(inventory, BaseException):
        raise inventory
    if isinstance(watch_result, BaseException):
        raise watch_result
    assert watch_result is not None
    if not isinstance(scale_result, PairingError):
        raise PairingError("the scale with a wrong factory key was let in: this is a bug")
    say(f"   the scale stops: {scale_result}")
    say(f"   the watch checked hash_server, holds its LocalEUKey; session "
        f"{watch_result.session.fingerprint if watch_result.session else '-'}")
    say(f"   the phone stores the PN inventory: {[m.name for m in inventory.members]}")
    flows.append({"flow": "pne-initiated", **_inventory_json(inventory, names)})

    # -- flow 2 --------------------------------------------------------------------------
    say.section("Gateway-initiated setup: the phone invites the repaired scale and the watch")
    say("   the watch is now on a link the PAN secures (BLE LE Secure Connections): a "
        "LocalEUKey all the same (R01), but no extra session")
    gw2 = GatewayConfig(phone.device_id, phone.name, eukeys[phone.device_id],
                        pn_id=inventory.pn_id, collect_window=3.0, step_timeout=10.0)
    w_gw, w_pne = loopback_pair(names=("phone", "watch"), encrypted=True, tap=_tap(say, label))
    s_gw, s_pne = loopback_pair(names=("phone", "scale"), tap=_tap(say, label))
    watch_pan = PneConfig(watch.device_id, watch.name, eukeys[watch.device_id],
                          caps=PneCaps.UI | PneCaps.PAN_SECURED, contents=("heart rate",),
                          step_timeout=10.0)
    scale_cfg = PneConfig(scale.device_id, scale.name, eukeys[scale.device_id],
                          caps=PneCaps.NONE, contents=("weight",), step_timeout=10.0)
    results = await asyncio.gather(
        run_gateway({"watch": PneLink(w_gw, watch.device_id),
                     "scale": PneLink(s_gw, scale.device_id)},
                    me=phone, config=gw2, server=address, ca_file=d.ca_cert,
                    initiate=(SetupType.INVITED, (watch.device_id, scale.device_id)),
                    on_event=on_event),
        run_pne(w_pne, watch_pan, listen=True),
        run_pne(s_pne, scale_cfg, listen=True),
        return_exceptions=True,
    )
    for link in (w_gw, w_pne, s_gw, s_pne):
        await link.close()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    inventory2, watch2, scale2 = results
    assert isinstance(inventory2, PnInventory)
    for who, membership in (("watch", watch2), ("scale", scale2)):
        assert membership is not None
        source = membership.key_source  # type: ignore[union-attr]
        session = membership.session  # type: ignore[union-attr]
        extra = f"session {session.fingerprint}" if session else "the PAN secures the link"
        say(f"   the {who} checked hash_server; link key: {source.name.lower()}; {extra}")
    say(f"   the phone's routing table now reaches PN {inventory2.pn_id.hex()[:8]}: "
        f"{[m.name for m in inventory2.members]}")
    flows.append({"flow": "gateway-initiated", **_inventory_json(inventory2, names)})
    return flows
