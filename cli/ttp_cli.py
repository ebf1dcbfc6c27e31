"""``pairkit ttp``: run a key server (the trusted third party) and enrol devices with it.

::

    pairkit ttp init   --dir D [--host NAME ...] [--enrol-token]
    pairkit ttp serve  --dir D --listen HOST:PORT [limits]
    pairkit ttp enrol --server HOST:PORT --ca D/ca.pem [--new-eukey | --eukey-file F]
    pairkit ttp list   --dir D
    pairkit ttp revoke DEVICE_ID --dir D [--yes]

``cli.main`` adds the group as ``pairkit ttp``; ``python -m pairkit.cli.ttp_cli`` runs it on its
own.  This is the shell: the server, its store and its directory are :mod:`pairkit.keyserver`
(which also runs standalone: ``python -m pairkit.keyserver``), the device's side :mod:`pairkit.ttp`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from pairkit.pairing.errors import ConfigError
from pairkit.pairing.keystore.records import clean_name

from .common import PairkitGroup, emit_json, info, run_async
from .params import Number, Seconds, keystore_pin_option

#: keystore settings written by ``ttp enrol`` (host/join may default to them)
SETTING_SERVER = "ttp.server"
SETTING_CA = "ttp.ca"
SETTING_EUKEY = "cpns.eukey"


def enrolled_server(ks: Any) -> tuple[str, str] | None:
    """(server, CA file) this device enrolled with (``ttp enrol``), for ``--ttp`` defaults."""
    server, ca = ks.setting(SETTING_SERVER), ks.setting(SETTING_CA)
    if isinstance(server, str) and isinstance(ca, str):
        return server, ca
    return None


@click.group(cls=PairkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
def ttp() -> None:
    """Run a key server (a trusted third party) and enrol devices with it.

    \b
    The key server hands two enrolled devices a fresh key when both ask to pair with each
    other (method ttp), and lets a gateway enrol factory-keyed devices (CPNS).
      pairkit ttp init --dir ./ttp                    CA, server certificate, database
      pairkit ttp serve --dir ./ttp --listen 0.0.0.0:8443
      pairkit ttp enrol --server HOST:8443 --ca ./ttp/ca.pem      (on each device)
      pairkit host --method ttp --ttp HOST:8443 --ttp-ca ca.pem    (then pair)
      pairkit ttp revoke DEVICE_ID --dir ./ttp        take a lost device out for good

    Devices trust only the CA in ca.pem: give that file to them (a manufacturer installs it).
    """


@ttp.command()
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the server's keys, certificates and database (created).")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="A host name or IP address devices will dial (repeat). localhost, 127.0.0.1, "
                   "::1 and this machine's name are always included.")
@click.option("--days", default=825, show_default=True,
              help="How long the server certificate is valid.")
@click.option("--enrol-token", is_flag=True,
              help="Close enrolment: devices must give the token written to DIR/enrol.token.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(directory: Path, hosts: tuple[str, ...], days: int, enrol_token: bool,
         as_json: bool) -> None:
    """Create a key server: a CA, its server certificate, a sealing key and the database.

    DIR/ca.pem is the CA certificate devices pin (a manufacturer would install it); keep
    DIR/ca-key.pem offline once the server certificate exists.  Private files are mode 0600.
    """
    from pairkit.keyserver.certs import cert_fingerprint, cert_hosts, init_server_dir, load_cert

    d = init_server_dir(directory, hosts=hosts, days=days, enrol_token=enrol_token)
    token_path = d.token if enrol_token else None
    cert = load_cert(d.cert)
    fp = cert_fingerprint(load_cert(d.ca_cert))
    if as_json:
        emit_json({"ok": True, "dir": str(d.root), "ca": str(d.ca_cert), "ca_fingerprint": fp,
                   "hosts": cert_hosts(cert), "enrol_token": str(token_path) if token_path
                   else None})
        return
    info(f"key server created in {d.root}")
    click.echo(f"CA certificate: {d.ca_cert}   (give this file to devices: --ca / --ttp-ca)")
    click.echo(f"CA fingerprint: {fp}")
    click.echo(f"server names:   {', '.join(cert_hosts(cert))}")
    if token_path:
        click.echo(f"enrolment token: {token_path}   (devices: --token-file)")
    click.echo(f"start it with:  pairkit ttp serve --dir {d.root} --listen 127.0.0.1:8443")


@ttp.command()
@click.option("--dir", "directory", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The directory 'pairkit ttp init' made.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0 picks a free one, printed).")
@click.option("--max-connections", default=512, show_default=True,
              help="Connections at once, from everyone.")
@click.option("--max-per-client", default=256, show_default=True,
              help="Connections at once from one address.")
@click.option("--rate", type=Number(0, 1e6, above=True), default=50.0, show_default=True,
              help="New connections per second one address may open (burst: twice that).")
@click.option("--max-wait", type=Seconds(0.1, 3600), default=60.0, show_default=True,
              help="Longest wait (seconds) for the other device's intent.")
@click.option("--db", "database", default=None, metavar="postgresql://...",
              help="Use this PostgreSQL database instead of DIR/ttp.sqlite3; any number of "
                   "servers may share it (needs: pip install 'pairkit[postgres]').")
@click.option("--quiet", "-q", is_flag=True, help="Log only errors, not each device served.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON line once listening (for scripts).")
def serve(directory: Path, listen: str, max_connections: int, max_per_client: int, rate: float,
          max_wait: float, database: str | None, quiet: bool, as_json: bool) -> None:
    """Serve devices until interrupted (Ctrl-C or SIGTERM): enrolments, keys, PN registrations.

    TLS 1.3 with DIR/server.pem.  Enrolled devices, pending intents and PN inventories live in
    DIR/ttp.sqlite3 (kept across restarts); keys in it are sealed under DIR/seal.key.
    Enrolment is open to any device that proves its key, unless DIR/enrol.token exists
    (ttp init --enrol-token): then devices must give that token.
    """
    from pairkit.keyserver.server import Limits, Listening, ServeConfig, serve, tune_gc
    from pairkit.transports.tcp import parse_host_port

    host, port = parse_host_port(listen)
    limits = Limits(
        max_connections=max_connections, max_per_client=max_per_client, rate=rate,
        burst=max(1, int(rate * 2)), max_wait=max_wait,
    )
    config = ServeConfig(directory, host=host, port=port, limits=limits, database=database)

    undo: list[Callable[[], None]] = []

    def ready(up: Listening) -> None:
        undo.append(tune_gc())
        if as_json:
            emit_json({"ok": True, "listening": up.address, "ca": str(up.ca_cert),
                       "ca_fingerprint": up.ca_fingerprint, "devices": up.devices})

    try:
        with _server_log_to_stderr(quiet=quiet):
            run_async(lambda: serve(config, ready=ready))
    finally:
        for step in undo:
            step()


class _Narrate(logging.Handler):
    """The key server's log lines, as narration on stderr (see :func:`.common.info`)."""

    def emit(self, record: logging.LogRecord) -> None:
        info(record.getMessage())


@contextlib.contextmanager
def _server_log_to_stderr(*, quiet: bool) -> Iterator[None]:
    """Show the ``pairkit.keyserver`` loggers on stderr while serving; ``quiet``: only errors
    of the devices served (the start and stop lines are always shown)."""
    top = logging.getLogger("pairkit.keyserver")
    conns = logging.getLogger("pairkit.keyserver.connections")
    handler = _Narrate()
    saved = top.level, conns.level, top.propagate
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    top.propagate = False
    conns.setLevel(logging.ERROR if quiet else logging.INFO)
    try:
        yield
    finally:
        top.removeHandler(handler)
        top.setLevel(saved[0])
        conns.setLevel(saved[1])
        top.propagate = saved[2]


def _read_eukey(path: str) -> bytes:
    from pairkit.smallfile import MAX_SECRET_FILE, read_small_file

    raw = read_small_file(Path(path), MAX_SECRET_FILE, "an EUKey file")
    if len(raw) == 32:
        return raw
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{path} must hold an EUKey: 32 bytes, or 64 hex digits")
    return key


@ttp.command(name="enrol")
@keystore_pin_option
@click.option("--server", required=True, metavar="HOST:PORT", help="The key server.")
@click.option("--ca", "ca_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The key server's CA certificate (its ca.pem): the only one trusted.")
@click.option("--eukey-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="This device's factory key for CPNS (32 bytes or 64 hex digits).")
@click.option("--new-eukey", is_flag=True,
              help="Draw a factory key for CPNS, keep it in the keystore and register it.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The server's enrolment token, when its enrolment is closed.")
@click.option("--timeout", type=Seconds(0.1, 3600), default=10.0, show_default=True,
              help="Seconds to wait for the key server.")
@click.option("--cert", "want_cert", is_flag=True,
              help="Also get a device certificate from the server's CA, for group keys "
                   "trusted through it ('pairkit group create NAME --trust ca').")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def enroll(server: str, ca_file: Path, eukey_file: str | None, new_eukey: bool,
           token_file: str | None, timeout: float, want_cert: bool, as_json: bool) -> None:
    """Register this device's identity key with a key server (and its factory key, for CPNS).

    The device proves it holds its key; the server's certificate must be signed by the CA in
    --ca, or nothing is sent.  The server and CA are remembered in the keystore.  Enrolling
    again refreshes the name (and the factory key when one is given).  With --cert the device
    also proves its signing key and gets a certificate for it, signed by the same CA: group
    members enrolled with that CA then trust this device as a group controller without having
    paired with it (and a controller can add this device by it: 'pairkit group cert').
    """
    from pairkit.keyserver.certs import read_token
    from pairkit.ttp import enrol

    from .common import unlock
    from .store import key_fingerprint, local_identity

    if eukey_file is not None and new_eukey:
        raise ConfigError("give --eukey-file or --new-eukey, not both")
    token = read_token(Path(token_file)) if token_file else None
    ks = unlock()
    eukey = _read_eukey(eukey_file) if eukey_file else (os.urandom(32) if new_eukey else None)
    me = local_identity(ks)
    done = run_async(lambda: enrol(server, ca_file, me, eukey=eukey, token=token,
                                   timeout=timeout))
    with ks.update():
        ks.set_setting(SETTING_SERVER, server)
        ks.set_setting(SETTING_CA, str(ca_file.resolve()))
        if eukey is not None:
            ks.set_setting(SETTING_EUKEY, eukey)
    cert = None
    if want_cert:
        from pairkit.groupcert import enrol_cert

        cert = run_async(lambda: enrol_cert(ks, server, ca_file, me, timeout=timeout))
    if as_json:
        extra = {"cert_valid_until": int(cert.not_after)} if cert is not None else {}
        emit_json({"ok": True, "id": me.device_id.hex(), "name": me.name, "server": server,
                   "updated": done.updated, "eukey": done.has_eukey,
                   "fingerprint": key_fingerprint(me.static_public), **extra})
        return
    again = "again " if done.updated else ""
    click.echo(f"{me.name} ({me.device_id.hex()}) enrolled {again}with the key server at {server}"
               + (" with a factory key" if done.has_eukey else ""))
    if cert is not None:
        import datetime

        until = datetime.datetime.fromtimestamp(cert.not_after, datetime.UTC)
        click.echo(f"device certificate from its CA kept, valid until {until:%Y-%m-%d}")


#: the spelling of earlier versions (and of US English), kept working but not listed
ttp.add_command(
    click.Command("enroll", callback=enroll.callback, params=enroll.params, help=enroll.help,
                  hidden=True),
    "enroll",
)


@ttp.command(name="list")
@click.option("--dir", "directory", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The key server's directory.")
@click.option("--db", "database", default=None, metavar="postgresql://...",
              help="Use this PostgreSQL database instead of DIR/ttp.sqlite3; any number of "
                   "servers may share it (needs: pip install 'pairkit[postgres]').")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def list_cmd(directory: Path, database: str | None, as_json: bool) -> None:
    """List the enrolled devices and registered PNs (no key material is shown)."""
    from pairkit.keyserver.store import open_store

    store = open_store(directory, database=database)
    try:
        devices = store.devices()
        pns = [store.pn(gw_id, pn_id) for gw_id, pn_id in store.pn_keys()]
        revoked = store.revoked()
    finally:
        store.close()
    pn_rows = [{"pn_id": p.pn_id.hex(), "gateway": p.gw_id.hex(), "gateway_name": p.gw_name,
                "setup": p.setup_type.label, "members": list(p.members)} for p in pns]
    if as_json:
        emit_json({"devices": devices, "pns": pn_rows, "revoked": revoked})
        return
    if not devices:
        info("no device enrolled yet: pairkit ttp enrol --server HOST:PORT --ca ca.pem")
    # Every name a device gave is printed cleaned, so each device is one line whatever name
    # it gave (a server of an earlier pairkit stored them as given: atk20r 1).
    for dev in devices:
        click.echo(f"{dev['id']}  {clean_name(dev['name'])}"
                   + ("  (factory key)" if dev["eukey"] else "") + _first(dev))
    for p in pn_rows:
        names = ", ".join(f"{clean_name(m['name'])} ({m['key_source']})" for m in p["members"])
        click.echo(f"PN {p['pn_id'][:16]} of {clean_name(p['gateway_name'])} "
                   f"({p['gateway'][:16]}, {p['setup']}): {names}")
    if revoked:
        click.echo("revoked (these ids cannot enrol again):")
    for dev in revoked:
        click.echo(f"{dev['id']}  {clean_name(dev['name'])}  (revoked {_utc(dev['revoked_at'])})")


def _first(dev: dict[str, Any]) -> str:
    """"  (first enrolled as NAME)" when the device enrolled again under another name."""
    first = clean_name(dev["first_name"])
    return "" if first == clean_name(dev["name"]) else f"  (first enrolled as {first})"


def _utc(seconds: float) -> str:
    import datetime

    return f"{datetime.datetime.fromtimestamp(seconds, datetime.UTC):%Y-%m-%d %H:%M} UTC"


def _device_id(text: str) -> bytes:
    """A whole device id (32 hex digits, as ``ttp list`` shows it): no prefix, so that a
    revoke never takes out a device the administrator did not name."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise ConfigError(
            "give the whole device id: 32 hex digits, as 'pairkit ttp list' shows it"
        )
    return raw


@ttp.command()
@click.argument("device", metavar="DEVICE_ID")
@click.option("--dir", "directory", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The key server's directory.")
@click.option("--db", "database", default=None, metavar="postgresql://...",
              help="Use this PostgreSQL database instead of DIR/ttp.sqlite3 (the one the "
                   "servers share).")
@click.option("--yes", "-y", is_flag=True, help="Revoke without asking (scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def revoke(device: str, directory: Path, database: str | None, yes: bool,
           as_json: bool) -> None:
    """Take an enrolled device out of this key server for good (a lost or stolen device, or
    one whose key leaked).

    \b
    DEVICE_ID is its whole id, as 'pairkit ttp list' shows it.  In one transaction, seen at
    once by every server on the database (running or not): its record and factory key are
    deleted, its intents and those naming it are cancelled (devices waiting are told it is
    not enrolled), the PNs it is the gateway of and its places in other PNs are deleted with
    their link keys, and its id is kept as revoked: whoever holds its key cannot enrol it
    again.  Sessions already made and certificates already issued are not undone
    (docs/security.md, "Revoking a device at the key server").  Asks first, unless --yes.
    """
    import time

    from pairkit.keyserver.store import open_store
    from pairkit.pairing.errors import NotFoundError, RefusedError

    device_id = _device_id(device)
    store = open_store(directory, database=database)
    try:
        record = store.device(device_id)
        if record is None:
            gone = {r["id"] for r in store.revoked()}
            if device_id.hex() in gone:
                raise NotFoundError(f"device {device_id.hex()} was revoked already")
            raise NotFoundError(f"no device {device_id.hex()} is enrolled with this key server")
        first = store.first_name(device_id) or record.name
        if not yes and not _confirm_revoke(
            record.name, first, device_id, store.has_eukey(device_id)
        ):
            raise RefusedError("not revoked")
        done = store.revoke(device_id, time.time())
    finally:
        store.close()
    if as_json:
        emit_json({"ok": True, "revoked": {
            "id": done.device_id.hex(), "name": done.name, "intents": done.intents,
            "pns": done.pns, "memberships": done.memberships, "eukey": done.eukey}})
        return
    click.echo(f"revoked {clean_name(done.name)} ({done.device_id.hex()}): it cannot enrol again")
    removed = [f"{done.intents} intent(s) cancelled"]
    if done.eukey:
        removed.append("its factory key deleted")
    if done.pns:
        removed.append(f"{done.pns} PN(s) it was the gateway of deleted")
    if done.memberships:
        removed.append(f"taken out of {done.memberships} other PN(s)")
    click.echo("  " + "; ".join(removed))
    info("sessions it already made and certificates already issued to it stand until they "
         "end (docs/security.md, \"Revoking a device at the key server\")")


def _confirm_revoke(name: str, first: str, device_id: bytes, eukey: bool) -> bool:
    """Ask at the terminal (no terminal: refused, and told to give --yes).  The device on one
    line: its name cleaned, its whole id, and the name it first enrolled with when it enrolled
    again under another (whoever holds its key may rename it: atk20r 1)."""
    from pairkit.pairing.errors import RefusedError

    from .prompt import Terminal

    terminal = Terminal()
    if not terminal.interactive:
        raise RefusedError("not revoked: no terminal to confirm on (give --yes in scripts)")
    name, first = clean_name(name), clean_name(first)
    renamed = f", first enrolled as {first}," if first != name else ""
    header = (f"{name} ({device_id.hex()}){renamed} is enrolled with this key server"
              f"{' with a factory key' if eukey else ''}.")
    question = "Revoke it for good (whoever holds its key cannot enrol it again)? [y/N]"
    return run_async(lambda: terminal.choose(
        header, question, {"y": True, "yes": True, "n": False, "no": False}, no=False,
        timeout=300.0,
    ))


def main() -> None:
    ttp(standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
