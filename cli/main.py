"""The ``pairkit`` command.

Every subcommand has ``--help``; results go to stdout (``--json`` for scripts: one JSON object
per line), narration and errors to stderr as ``error: ...`` with a non-zero exit code.  No
traceback reaches the user unless ``--debug`` is given.

Start-up stays cheap (issue 12): this module imports click and nothing heavy, each command
imports what it needs when it runs, and the command groups defined elsewhere (``group``,
``ttp``) are imported only when named; ``pairkit --help`` lists them from :data:`LAZY_COMMANDS`.
tests/test_startup_imports.py checks that ``--help`` and ``--version`` import no cryptography,
cbor2, asyncio, bumble or bleak; ``bench/startup.py`` measures the time.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pairkit import __version__
from pairkit.pairing.errors import DecodeError  # cheap: enum only

from .exitcodes import epilog as exit_codes_epilog
from .params import Number, Seconds, complete_peer, keystore_pin_option
from .traceopt import trace_option

if TYPE_CHECKING:
    from pairkit.pairing.negotiation import Method

#: commands defined in other modules: name -> (module, attribute, the first line of its help),
#: imported on first use; tests/test_startup_imports.py checks the help against the command's
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "group": ("pairkit.cli.group_cli", "group",
              "Group keys delivered end to end (through relays), and encrypted group broadcasts."),
    "pn": ("pairkit.cli.pn_cli", "pn", "Personal networks set up by a gateway and a key server."),
    "ttp": ("pairkit.cli.ttp_cli", "ttp",
            "Run a key server (a trusted third party) and enrol devices with it."),
}


class PairkitCli(click.Group):
    """The root group: loads :data:`LAZY_COMMANDS` when named, maps errors to exit codes.

    The error mapping is :class:`pairkit.cli.common.PairkitGroup`'s, imported when a command
    runs (not for ``--help`` or ``--version``, which exit while the arguments are parsed).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, with the one-line help of commands not loaded yet from the table."""
        names = [n for n in self.list_commands(ctx)
                 if n not in self.commands or not self.commands[n].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(name, self._listed(name).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _listed(self, name: str) -> click.Command:
        """The command, or a stand-in carrying its help if it is not loaded yet."""
        return self.commands.get(name) or click.Command(name, help=LAZY_COMMANDS[name][2])

    def invoke(self, ctx: click.Context) -> Any:
        from .common import PairkitGroup

        return PairkitGroup.invoke_mapping_errors(ctx, lambda: super(PairkitCli, self).invoke(ctx))


METHOD_NAMES = ["pin", "qr", "compare", "clear", "resume", "ttp"]


def _ttp_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--ttp", "ttp_server", default=None, metavar="HOST:PORT",
                      help="Method ttp: the key server (default: the one from 'ttp enrol')."),
        click.option("--ttp-ca", default=None, type=click.Path(dir_okay=False),
                     help="Method ttp: the server's CA certificate (default: from enrolment)."),
        click.option("--ttp-peer", default=None, metavar="DEVICE_ID",
                     help="Method ttp: pair only with the device with this id."),
    ]):
        f = opt(f)
    return f


def _ttp_settings(ks: Any, server: str | None, ca: str | None, peer: str | None
                  ) -> dict[str, Any]:
    from pairkit.pairing.ttp import parse_device_id

    from .ttp_cli import enrolled_server

    enrolled = enrolled_server(ks) or (None, None)
    return {"ttp": server or enrolled[0], "ttp_ca": ca or enrolled[1],
            "ttp_peer": parse_device_id(peer) if peer else None}

@click.group(cls=PairkitCli, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_codes_epilog())
@click.version_option(__version__, "--version", prog_name="pairkit")
@click.option("--verbose", "-v", count=True,
              help="Say more: -v what pairkit does, -vv everything (its libraries too).")
@click.option("--quiet", "-q", is_flag=True, help="Say nothing on stderr but errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (for bug reports).")
def cli(verbose: int, quiet: bool, debug: bool) -> None:
    """pairkit pairs two devices over Bluetooth Low Energy (or TCP) and opens a secure channel.

    \b
    First steps:
      pairkit init --name "Paul's laptop"     create this device's identity
      pairkit host --transport tcp:127.0.0.1:7000 --method pin
      pairkit join tcp:127.0.0.1:7000 --method pin --pin 123456   (in another terminal)
      pairkit peers                           devices you have paired with

    The keystore lives in your user data directory; PAIRKIT_HOME moves it, a command's
    --pin-file FILE or PAIRKIT_PIN unlocks it without a prompt (for scripts).  Without -t,
    commands use the default transport (config.toml, PAIRKIT_TRANSPORT, else bumble:usb:0;
    see whoami).
    """


# -- identity ---------------------------------------------------------------------------------


@cli.command()
@click.option("--name", default=None, help="This device's name as others see it.")
@click.option(
    "--pin-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the keystore PIN/passphrase from this file instead of asking.",
)
@click.option("--force", is_flag=True, help="Replace an existing identity (its peers are lost).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(name: str | None, pin_file: str | None, force: bool, as_json: bool) -> None:
    """Create this device's identity and keystore.

    The keystore is sealed with a PIN or passphrase you choose (asked twice), from which a key
    is derived with Argon2id (at least 6 characters; about 0.5 s and 64 MiB on a Raspberry
    Pi 4).  Use --pin-file or PAIRKIT_PIN in scripts.
    """
    from pairkit.keystore import MIN_PIN_LENGTH, Keystore
    from pairkit.pairing.errors import ConfigError

    from .common import env_text, home_path, read_pin_file

    path = home_path()
    if path.exists() and not force:
        raise ConfigError(f"an identity already exists at {path}; use --force to replace it")
    if pin_file is not None:
        pin = read_pin_file(pin_file)
    elif env_text("PAIRKIT_PIN") is not None:
        pin = os.environ["PAIRKIT_PIN"]
    elif sys.stdin.isatty():
        pin = click.prompt(
            "Choose a keystore PIN or passphrase", hide_input=True,
            confirmation_prompt="Repeat it", err=True,
        )
    else:
        raise ConfigError("no terminal to ask a PIN on: use --pin-file FILE or PAIRKIT_PIN")
    if len(pin) < MIN_PIN_LENGTH:
        raise ConfigError(
            f"the keystore PIN or passphrase needs at least {MIN_PIN_LENGTH} characters"
        )
    name = name or _default_name()
    ks = Keystore.create(path, pin, name=name, overwrite=force)
    # Every device owns a personal cloud from the start; devices it grants membership join it.
    ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
    ks.save()
    _print_identity(ks, as_json, created=True)


def _default_name() -> str:
    import platform

    return f"{os.environ.get('USER', 'someone')}'s {platform.node() or 'device'}"


def _print_identity(ks: Any, as_json: bool, created: bool = False,
                    transport: tuple[str, str] | None = None) -> None:
    from .common import emit_json, info
    from .store import key_fingerprint

    fp = key_fingerprint(ks.static_public)
    if as_json:
        extra = {} if transport is None else {"transport": transport[0],
                                              "transport_from": transport[1]}
        emit_json({"ok": True, "id": ks.device_id, "name": ks.name, "fingerprint": fp,
                   "keystore": str(ks.path), **extra})
        return
    if created:
        info(f"created identity in {ks.path}")
    click.echo(f"name:        {ks.name}")
    click.echo(f"id:          {ks.device_id}")
    click.echo(f"fingerprint: {fp}")
    if transport is not None:
        click.echo(f"transport:   {transport[0]}   (default, from {transport[1]})")


@cli.command()
@keystore_pin_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def whoami(as_json: bool) -> None:
    """Show this device's name, id, key fingerprint and default transport.

    The default transport is what a command uses without -t: config.toml's section for the
    command, then its [defaults] transport, then PAIRKIT_TRANSPORT, then bumble:usb:0.
    Opening the keystore needs its PIN (--pin-file, PAIRKIT_PIN, or asked).
    """
    from .common import home_path, unlock
    from .config import default_transport, load_policy

    chosen = default_transport(load_policy(home_path()))
    _print_identity(unlock(), as_json, transport=chosen)


@cli.command()
@keystore_pin_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def peers(as_json: bool) -> None:
    """List the devices this one has paired with, as a table.

    \b
    THEIR ROLE / UNTIL  what you let the peer be in your cloud (guest, member), and until when
    YOUR ROLE / UNTIL   what the peer let this device be in its cloud
    VIA                 the pairing method; PREKEYS: the peer's one-time keys held
    FINGERPRINT         the peer's key fingerprint (compare it with its 'pairkit whoami')
    """
    from .common import emit_json, info, unlock
    from .store import peer_rows

    rows = peer_rows(unlock())
    if as_json:
        emit_json({"peers": rows})
        return
    if not rows:
        info("no known peers yet; pair with 'pairkit join' or 'pairkit host'")
        return
    from .show import peer_table

    for line in peer_table(rows):
        click.echo(line)


@cli.command()
@click.argument("peer", shell_complete=complete_peer)
@keystore_pin_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def forget(peer: str, as_json: bool) -> None:
    """Forget a known peer (by name or id): it will have to pair again.

    A member that was given this device's Bluetooth address key (so that it recognises this
    device across its rotating addresses) can follow it no longer: the key is renewed, and
    the members kept get the new one when they next connect.  A member that was given this
    device's cloud secret is shut out of the cloud the same way: the secret is renewed, the
    forgotten device's proof of the old one lets it in no more (this device's owner is asked
    about it, as about a stranger), and the members kept get the new secret when they next
    connect.  The groups this device holds from it as their controller are dropped, with their
    keys (it no longer says what this device obeys), and the groups this device controls lose
    it as a member, each at a new epoch: run 'pairkit group sync GROUP' to hand the new key to
    the members kept.
    """
    from pairkit.peers import forget as forget_peer

    from .common import emit_json, info, unlock

    done = forget_peer(unlock(), peer)
    removed, renewed = done.record, done.address_key_renewed
    secret_renewed = done.cloud_secret_renewed
    if as_json:
        emit_json({"ok": True, "forgot": {"name": removed.name, "id": removed.id},
                   "address_key_renewed": renewed, "cloud_secret_renewed": secret_renewed,
                   "groups_dropped": list(done.groups_dropped),
                   "groups_left": list(done.groups_left)})
    else:
        info(f"forgot {removed.name} ({removed.id})")
        if done.groups_dropped:
            info(f"dropped the groups it controlled here, with their keys: "
                 f"{', '.join(done.groups_dropped)}")
        for group in done.groups_left:
            info(f"took it out of your group {group} at a new epoch: 'pairkit group sync "
                 f"{group}' hands the new key to the members you keep (until then they obey "
                 "the old key, which it holds)")
        if renewed:
            info("this device's Bluetooth address key was renewed: the members you keep get "
                 "the new one when they next connect")
        if secret_renewed:
            info("this device's cloud secret was renewed: the members you keep get the new one "
                 "when they next connect; if the forgotten device comes back, you are asked")


# -- pairing ----------------------------------------------------------------------------------


def _methods(values: tuple[str, ...]) -> frozenset[Method]:
    from pairkit.pairing.errors import ConfigError
    from pairkit.pairing.negotiation import Method

    try:
        return frozenset(Method.parse(v) for v in values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@cli.command()
@trace_option
@click.option("--transport", "-t", default=None,
              help="Where to listen: tcp:HOST:PORT, bumble:usb:0, ... [default: the default "
                   "transport ('pairkit whoami' shows it)]")
@click.option("--method", "-m", "methods", multiple=True, type=click.Choice(METHOD_NAMES),
              help="Methods guests may use (repeat; default: pin, qr, compare, resume).")
@click.option("--pin", default=None, help="Use this 6-digit PIN once instead of a random one.")
@click.option("--qr-png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the QR code to this PNG file.")
@click.option("--qr-ttl", type=Seconds(1, 86400), default=600.0,
              show_default=True, metavar="SECONDS", help="How long each QR code stays valid.")
@click.option("--share", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Share this folder: guests may list it and fetch its files.")
@click.option("--private", is_flag=True,
              help="Open no visibility window, even if the policy (config.toml) says to.")
@click.option("--visible", "visible", type=Seconds(0, 30 * 86400), default=None, metavar="SECONDS",
              help="On BLE: let strangers see and join this host for SECONDS (private "
                   "otherwise: only members of its cloud recognise it).")
@click.option("--guest-hours", type=Number(0, 24 * 366, above=True, unit="hours"), default=None,
              help="How long a guest allowed with --yes (or 'g' at the prompt) keeps access "
                   "[default: 1].")
@click.option("--allow-insecure", is_flag=True,
              help="Let 'clear' send the key over an unencrypted link (anyone listening gets it).")
@click.option("--once", is_flag=True, help="Stop after the first guest paired.")
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (scripts, tests).")
@click.option("--timeout", type=Seconds(0.1, 3600), default=None,
              help="Longest wait, in seconds, for any one thing: a message from a guest, or "
                   "you answering a prompt (unanswered: 'no'); a guest that times out is "
                   "dropped, the host goes on [default: 30].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per paired guest.")
@click.option("--radio-retries", type=click.IntRange(0, 1_000_000), default=None, metavar="N",
              help="On BLE: times to reopen a lost Bluetooth controller (unplugged, reset) "
                   "before exiting with code 6; 0: exit at once [default: until it is back, "
                   "every 1, 2, 4 ... 30 s].")
@click.option("--reset-lockouts", is_flag=True,
              help="Lift the PIN and compare locks before starting: the wrong PINs and "
                   "unconfirmed codes counted so far are forgotten (they outlive a restart "
                   "otherwise; for the owner whose own typos locked PIN pairing).  Compare "
                   "codes still out stay counted until they end (a host that was killed holds "
                   "them a few minutes).")
@keystore_pin_option
@_ttp_options
def host(transport: str | None, methods: tuple[str, ...], pin: str | None,
         qr_png: Path | None, qr_ttl: float, share: Path | None, private: bool,
         visible: float | None, guest_hours: float | None, allow_insecure: bool, once: bool,
         yes: bool, timeout: float | None, as_json: bool, radio_retries: int | None,
         reset_lockouts: bool, ttp_server: str | None, ttp_ca: str | None,
         ttp_peer: str | None) -> None:
    """Wait for guests, pair with them, and serve the shared folder.

    Shows a PIN (method pin) and a QR code (method qr). A guest that is not a member of this
    device's cloud asks to join: you allow it as a guest for a while, as a member, or refuse.
    Each listing and file a guest asks for is asked too (once, for the session, or refuse).
    Serves guests until interrupted (Ctrl-C) or --once; a guest that fails never stops the host.

    Defaults can come from a policy, config.toml beside the keystore (section [host]:
    transport, visible, share, methods, guest_hours, timeout, and on BLE advertise_fast_ms,
    advertise_fast_seconds, advertise_slow_ms; section [pace]: the link pace during
    transfers); flags win over it.
    """
    from pairkit.pairing.errors import ConfigError
    from pairkit.pairing.negotiation import Method

    from .common import emit_json, home_path, run_async, unlock
    from .config import (
        advertising_options,
        default_transport,
        load_policy,
        pace_options,
        pick,
    )
    from .flows import HostOptions, run_host
    from .store import need_qr_pictures

    if qr_png is not None:  # before anything starts: the picture needs the qr extra
        need_qr_pictures("writing a QR code picture (--qr-png)", "PIL.Image")

    policies = load_policy(home_path())
    policy = policies["host"]
    transport = transport or default_transport(policies, "host")[0]
    names = methods or tuple(policy.get("methods", ()))
    chosen = _methods(names) if names else frozenset(
        {Method.PIN, Method.QR, Method.COMPARE, Method.RESUME}
    )
    policy_share = policy.get("share")
    if share is None and policy_share is not None:
        share = Path(policy_share)
        if not share.is_dir():
            raise ConfigError(f"the policy's shared folder {share} is not a folder")
    ks = unlock()
    opts = HostOptions(
        transport=transport, methods=chosen,
        pin=pin, yes=yes, once=once, json=as_json, allow_insecure=allow_insecure, qr_png=qr_png,
        qr_ttl=qr_ttl, step_timeout=pick(timeout, policy, "timeout", 30.0), share=share,
        guest_seconds=max(1, int(pick(guest_hours, policy, "guest_hours", 1.0) * 3600)),
        visible=None if private else pick(visible, policy, "visible", None),
        advertising=advertising_options(policy), pace=pace_options(policies),
        radio_retries=radio_retries, reset_lockouts=reset_lockouts,
        **_ttp_settings(ks, ttp_server, ttp_ca, ttp_peer),
    )
    run_async(lambda: run_host(ks, opts, emit=emit_json if as_json else None))


@cli.command()
@trace_option
@click.argument("target", shell_complete=complete_peer)
@click.option("--transport", "-t", default=None,
              help="Transport to reach TARGET through when it is a peer's name or address.")
@click.option("--method", "-m", type=click.Choice(METHOD_NAMES), default=None,
              help="Pairing method (default: resume for known peers, qr with --qr, else pin).")
@click.option("--pin", default=None, help="The PIN shown on the host (asked if not given).")
@click.option("--qr", "qr_uri", default=None, help="The host's QR code as a pairkit:qr?... URI.")
@click.option("--qr-image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A picture of the host's QR code (PNG/JPEG).")
@click.option("--allow-insecure", is_flag=True,
              help="Let 'clear' run over an unencrypted link (anyone listening gets the key).")
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (scripts, tests).")
@click.option("--timeout", type=Seconds(0.1, 3600), default=30.0, show_default=True,
              help="Longest wait, in seconds, for any one thing: a reply from the host, or a "
                   "person deciding (the host's owner letting you in, you comparing a code); "
                   "then join ends with exit code 4.")
@click.option("--ask-any-host", is_flag=True,
              help="A known BLE host not at its last address is looked for nearby, only "
                   "among the hosts this device recognises: by the address key a host gives "
                   "its members, else by the hello of one of this device's clouds. This also "
                   "asks every other pairkit host heard, telling each of them this device's id.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@keystore_pin_option
@_ttp_options
def join(target: str, transport: str | None, method: str | None, pin: str | None,
         qr_uri: str | None, qr_image: str | None, allow_insecure: bool, yes: bool,
         timeout: float, ask_any_host: bool, as_json: bool, ttp_server: str | None,
         ttp_ca: str | None, ttp_peer: str | None) -> None:
    """Pair with TARGET: tcp:HOST:PORT, a BLE address from 'discover', a known peer's name,
    or over a radio the name a visible host gives (its hello response).

    A known BLE host that moved (it rotates its address) is looked for nearby, but only
    among the hosts this device can recognise as it (see --ask-any-host).

    \b
    Examples:
      pairkit join tcp:127.0.0.1:7000 --method pin --pin 123456
      pairkit join tcp:127.0.0.1:7000 --qr 'pairkit:qr?v=1&k=...'
      pairkit join "Paul's phone"              (a known peer: resumes with no prompt)
      pairkit join "Paul's phone" -t bumble:usb:0 --pin 123456   (a stranger, by its name)
    """
    from pairkit.pairing.errors import ConfigError
    from pairkit.pairing.negotiation import Method
    from pairkit.pairing.qr import QrCode

    from .common import emit_json, run_async, unlock
    from .flows import JoinOptions, result_json, run_join
    from .store import qr_from_image

    qr = None
    if qr_uri is not None and qr_image is not None:
        raise ConfigError("give --qr or --qr-image, not both")
    try:  # the code is the user's input: a broken one is a usage error, as a bad option is
        if qr_uri is not None:
            qr = QrCode.parse(qr_uri)
        elif qr_image is not None:
            qr = QrCode.parse(qr_from_image(qr_image))
    except DecodeError as exc:
        which = "--qr" if qr_uri is not None else "--qr-image"
        raise ConfigError(f"{which}: not a pairkit QR code ({exc})") from None
    chosen = Method.parse(method) if method else None
    pin = _pairing_pin(chosen, pin)
    transport = _guest_transport(target, transport)
    ks = unlock()
    opts = JoinOptions(
        target=target, method=chosen, transport=transport, pin=pin, qr=qr, yes=yes,
        json=as_json, allow_insecure=allow_insecure, step_timeout=timeout,
        ask_any_host=ask_any_host, **_ttp_settings(ks, ttp_server, ttp_ca, ttp_peer),
    )
    session, membership = run_async(lambda: run_join(ks, opts))
    if as_json:
        emit_json(result_json(session, membership))
    else:
        from .show import role_text

        click.echo(f"paired with {session.peer.name} by {session.method.label} "
                   f"({role_text(membership)})")
        click.echo(f"session {session.fingerprint}")


def show_found(found: list[Any], *, names: bool) -> None:
    """``pairkit discover``'s table: the hosts heard, grouped by cloud, one row each.  A name a
    device broadcast or told is shown one line (atk21c: a stranger's name with a newline added
    rows of its choice)."""
    from .show import safe

    cloud: object = object()
    for f in found:
        if f.cloud_name != cloud:
            cloud = f.cloud_name
            click.echo(f"{safe(cloud)}:" if cloud else "strangers:")
        methods = ",".join(sorted(m.label for m in f.hello.methods)) or "-"
        state = "joinable" if f.hello.visible else "private"
        name = f.name or f.device_name or ("(did not say)" if names and f.hello.visible else "-")
        # One known device across its rotating addresses (its address key: docs/security.md)
        also = f" (also heard at {', '.join(f.addresses[:-1])})" if len(f.addresses) > 1 else ""
        click.echo(f"  {f.address:<20} rssi {f.rssi if f.rssi is not None else '?':>4}  "
                   f"{state:<9} {methods:<28} {safe(name)}{also}")


@cli.command()
@trace_option
@click.option("--transport", "-t", default=None,
              help="The radio to listen with: bumble:usb:0, bumble:tcp-client:HOST:PORT, ... "
                   "[default: the default transport ('pairkit whoami' shows it)]")
@click.option("--timeout", type=Seconds(0.1, 3600), default=None,
              help="Seconds to listen [default: 3].")
@click.option("--names/--no-names", default=True, show_default=True,
              help="Ask each joinable host (and each of your clouds' hosts) its name over a "
                   "short connection: its owner is asked nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
@keystore_pin_option
def discover(transport: str | None, timeout: float | None, names: bool, as_json: bool) -> None:
    """List the pairkit hosts around: your clouds' devices by cloud, then strangers.

    Hosts of your clouds are recognised by their rotating hello tag; other hosts appear only
    while their owner has opened a visibility window (private ones are listed as such).  A
    host whose cloud you are a member of is one line across its rotating Bluetooth
    addresses (it gave you its address key when you paired); any other host is one line per
    address.  A
    joinable host tells its name over a short connection (its hello response).  Join one with:
    pairkit join ADDRESS --transport T, or pairkit join NAME --transport T.
    """
    from pairkit.presence import discover as scan
    from pairkit.session import name_hosts
    from pairkit.transports.registry import open_transport

    from .common import emit_json, home_path, info, need_radio, run_async, unlock
    from .config import default_transport, load_policy, pick

    policies = load_policy(home_path())
    policy = policies["discover"]
    transport = transport or default_transport(policies, "discover")[0]
    timeout = pick(timeout, policy, "timeout", 3.0)
    need_radio(transport, "discover listens for hellos")
    ks = unlock()

    async def go() -> tuple[list[Any], int]:
        t = await open_transport(transport)
        try:
            found, garbage = await scan(t, ks, timeout)
            if names:
                found = await name_hosts(t, ks, found)
            return found, garbage
        finally:
            await t.close()

    found, garbage = run_async(go)
    if as_json:
        emit_json({"devices": [f.as_json() for f in found]})
        return
    if not found:
        info(f"no pairkit host heard in {timeout:g} s")
    show_found(found, names=names)
    if garbage:
        info(f"({garbage} malformed hello(s) ignored)")


@cli.command()
@click.option("--ports", "-p", "first", default=None, metavar="P1 P2 ...",
              help="One TCP port per virtual controller (0 picks a free port).")
@click.argument("more", nargs=-1, metavar="")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--list", "list_", is_flag=True,
              help="List this machine's Bluetooth controllers and their -t names, and exit.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"radio": [TRANSPORT, ...]} once listening (with --list: '
                   '{"controllers": [...]}).')
def radio(first: str | None, more: tuple[str, ...], host: str, list_: bool,
          as_json: bool) -> None:
    """Linked virtual BLE controllers, one per TCP port, until interrupted.

    \b
    Two or more pairkit processes on one machine then talk real BLE through bumble:
      pairkit radio --ports 7001 7002
      pairkit host -t bumble:tcp-client:127.0.0.1:7001 --visible 600 ...
      pairkit discover -t bumble:tcp-client:127.0.0.1:7002
    With --list: the real controllers here (USB, and Linux's hciN), each with its -t names;
    exit code 6 when there are none.
    """
    from pairkit.pairing.errors import ConfigError

    if list_:
        if first is not None or more:
            raise ConfigError("--list takes no ports")
        from pairkit.transports.controllers import (
            controllers_json,
            find_controllers,
            list_controllers,
        )

        if as_json:
            from .common import emit_json

            usb, linux, unreadable = find_controllers()
            emit_json({"controllers": controllers_json(usb, linux),
                       "usb_unreadable": str(unreadable) if unreadable else None})
            return
        for line in list_controllers():
            click.echo(line)
        return
    if first is None:
        raise ConfigError("a radio needs its ports: --ports P1 P2 (or --list)")
    from pairkit.transports.radio import serve_radio

    from .common import info, run_async

    try:
        ports = [int(p) for p in (first, *more) for p in p.replace(",", " ").split()]
    except ValueError:
        raise ConfigError("ports are numbers: --ports 7001 7002") from None
    if len(ports) < 2 or not all(0 <= p <= 65535 for p in ports):
        raise ConfigError("a radio needs at least two ports from 0 to 65535: --ports P1 P2")
    try:
        if as_json:
            from .common import emit_json

            def announce(names: list[str]) -> None:
                emit_json({"radio": names})
                sys.stdout.flush()

            run_async(lambda: serve_radio(list(ports), host, announce=announce))
        else:
            run_async(lambda: serve_radio(list(ports), host))
    except KeyboardInterrupt:
        info("radio stopped")


def _pairing_pin(method: Method | None, pin: str | None) -> str | None:
    """The host's pairing PIN for method pin: --pin, else asked on a terminal (join, ls and
    get alike); a usage error with no terminal to ask on."""
    from pairkit.pairing.errors import ConfigError
    from pairkit.pairing.negotiation import Method

    if method is not Method.PIN or pin is not None:
        return pin
    if not sys.stdin.isatty():
        raise ConfigError("method 'pin' needs the host's PIN: --pin 123456")
    return str(click.prompt("PIN shown on the host", err=True)).strip().replace(" ", "")


def _guest_transport(target: str, flag: str | None) -> str | None:
    """The transport ``join``, ``ls`` and ``get`` reach TARGET through: ``-t``, else
    config.toml's ``[join] transport``; else, for a BLE address (which says nothing of the
    radio), the default transport (``[defaults]``, ``PAIRKIT_TRANSPORT``, ``bumble:usb:0``).
    None otherwise: a ``tcp:`` target names its own, a known peer is reached where it was last
    seen."""
    from pairkit.presence import is_ble_address

    from .common import home_path
    from .config import default_transport, load_policy

    if flag:
        return flag
    policies = load_policy(home_path())
    if policies["join"].get("transport"):
        return str(policies["join"]["transport"])
    if is_ble_address(target):
        return default_transport(policies)[0]
    return None


def _peer_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--transport", "-t", default=None,
                     help="Transport to reach PEER through (default: where it was last seen)."),
        click.option("--method", "-m", type=click.Choice(METHOD_NAMES), default=None,
                     help="Pairing method when PEER is not known yet (default: resume)."),
        click.option("--pin", default=None, help="The host's PIN, when pairing first."),
        click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations."),
        click.option("--timeout", type=Seconds(0.1, 3600), default=30.0, show_default=True,
                     help="Longest wait, in seconds, for any one thing: a reply from PEER, or "
                          "a person deciding (its owner letting you in or allowing a file); "
                          "then the command ends with exit code 4."),
        click.option("--ask-any-host", is_flag=True,
                     help="When PEER moved (a BLE host rotates its address), also ask the "
                          "hosts nearby this device cannot recognise as it, telling each of "
                          "them this device's id (as 'join --ask-any-host')."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
        keystore_pin_option,
    ]):
        f = opt(f)
    return f


@cli.command(name="ls")
@trace_option
@click.argument("peer", shell_complete=complete_peer)
@_peer_options
def ls_cmd(peer: str, transport: str | None, method: str | None, pin: str | None, yes: bool,
           timeout: float, ask_any_host: bool, as_json: bool) -> None:
    """List the files PEER shares (name, size, type).

    PEER is a known peer's name or id (it resumes with no prompt), or tcp:HOST:PORT with
    --method and --pin to pair first.  The owner may be asked to allow the listing.
    """
    from pairkit.files import list_files
    from pairkit.pairing.negotiation import Method

    from .common import emit_json, info, run_async, unlock
    from .flows import JoinOptions, run_join

    box: dict[str, Any] = {}

    async def on_session(slink: Any, session: Any, membership: Any) -> None:
        box["files"] = await list_files(slink, timeout=timeout)  # --timeout, as get --all

    chosen = Method.parse(method) if method else None
    pin = _pairing_pin(chosen, pin)
    ks = unlock()
    transport = _guest_transport(peer, transport)
    opts = JoinOptions(target=peer, transport=transport, yes=yes, json=as_json,
                       method=chosen, pin=pin, step_timeout=timeout, ask_any_host=ask_any_host)
    run_async(lambda: run_join(ks, opts, on_session=on_session))
    files = box.get("files", [])
    if as_json:
        emit_json({"files": [{"name": f.name, "size": f.size, "type": f.type} for f in files],
                   "more": getattr(files, "more", 0),
                   "long_names": getattr(files, "long_names", 0)})
        return
    if not files:
        info("the peer shares no files")
    from .show import safe

    for f in files:  # the host's words, each shown one line (atk21b finding B)
        click.echo(f"{f.size:>12}  {safe(f.type):<24}  {safe(f.name)}")
    more, long_names = getattr(files, "more", 0), getattr(files, "long_names", 0)
    if more:
        click.echo(f"… and {more} more (the host lists the first {len(files)})")
    if long_names:
        click.echo(f"… and {long_names} with names too long to fetch (over 255 characters)")


@cli.command()
@trace_option
@click.argument("peer", shell_complete=complete_peer)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every file PEER lists.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Where to save: a folder (each file keeps its name), or, for one NAME, a "
                   "file name [default: the current folder].")
@click.option("--force", is_flag=True,
              help="Replace local files of the same name (never done without it).")
@click.option("--retries", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Reconnect and resume this many times if the link drops mid-transfer.")
@_peer_options
def get(peer: str, names: tuple[str, ...], fetch_all: bool, output: str | None, force: bool,
        retries: int, transport: str | None, method: str | None, pin: str | None,
        yes: bool, timeout: float, ask_any_host: bool, as_json: bool) -> None:
    """Fetch the shared files NAME... (or --all) from PEER, with progress and a SHA-256 check.

    All the files come in one session: an owner who allows "for this session" is asked once.
    An existing local file is never replaced without --force (checked before anyone is
    asked).  A transfer cut by a dropped link resumes from the last verified chunk:
    automatically up to --retries times, and again when you run the command it prints on
    stopping (the partial file is kept as NAME.part beside where the file goes).
    """
    from pairkit.files import get_file, list_files
    from pairkit.pairing.errors import (
        ConfigError,
        GrownFileError,
        LinkClosedError,
        PairingTimeout,
    )
    from pairkit.pairing.negotiation import Method

    from .common import info, run_async, unlock
    from .flows import JoinOptions, run_join
    from .show import Progress, safe

    if fetch_all == bool(names):
        raise ConfigError("name the files to fetch (get PEER NAME...), or give --all")
    if len(names) != len(set(names)):
        raise ConfigError("each NAME may be given once")
    into = _output_folder(output, several=fetch_all or len(names) > 1)
    dests: dict[str, Path] = {}
    if into is None:  # -o names the one file
        assert output is not None and len(names) == 1
        dests[names[0]] = Path(output)
    else:
        dests.update(_destinations(names, into))
    for dest in dests.values():
        _writable(dest, force)
    box: dict[str, Any] = {"fetched": []}
    done: set[str] = set()
    #: --all: the files refused for having grown on the host since it listed them
    grown: list[str] = []

    async def on_session(slink: Any, session: Any, membership: Any) -> None:
        box["peer"] = session.peer.device_id.hex()
        box["peer_name"] = session.peer.name
        if fetch_all and "listed" not in box:
            files = await list_files(slink, timeout=timeout)
            assert into is not None
            # A hidden file (.bashrc, .envrc) is fetched only when asked for by name: a host's
            # listing must not plant one in the folder the command runs in.
            hidden = [f.name for f in files if not _unsafe_base(_base_name(f.name)) and any(
                part.startswith(".") for part in f.name.replace("\\", "/").split("/"))]
            if hidden:
                info(f"note: {len(hidden)} hidden file(s) not fetched with --all (ask for them "
                     f"by name): {', '.join(safe(repr(h)) for h in hidden[:5])}"
                     f"{' ...' if len(hidden) > 5 else ''}", quiet=as_json)
            # One rule for a name that cannot be saved safely under its own name here (empty,
            # ".", "..", a control, line-breaking or bidirectional character, or two names for
            # one file): left out and said, to be fetched by name with -o FILE (atk21b B).
            left_out = set(hidden)
            unsavable = _unsavable([f.name for f in files if f.name not in left_out])
            left_out.update(unsavable)
            if unsavable:
                info(f"note: {len(unsavable)} file(s) not fetched with --all: their names "
                     "cannot be saved safely as they are (fetch one by name with -o FILE): "
                     f"{', '.join(safe(repr(u)) for u in unsavable[:5])}"
                     f"{' ...' if len(unsavable) > 5 else ''}", quiet=as_json)
            box["listed"] = [f.name for f in files if f.name not in left_out]
            # what was listed is what is fetched: a file announced larger is refused (atk19f)
            box["sizes"] = {f.name: f.size for f in files}
            dests.update(_destinations(box["listed"], into))
            for name in box["listed"]:
                _writable(dests[name], force)
            if not files:
                info("the peer shares no files")
            skipped = getattr(files, "more", 0) + getattr(files, "long_names", 0)
            if skipped:
                info(f"note: the peer listed {len(files)} file(s); {skipped} more cannot be "
                     "fetched with --all (ask for them by name)", quiet=as_json)
        for wanted in box.get("listed", names):
            if wanted in done or wanted in grown:
                continue
            box["current"] = wanted
            try:
                fetched = await get_file(slink, wanted, dests[wanted],
                                         progress=Progress(wanted), timeout=timeout,
                                         chunk_timeout=timeout, replace=force,
                                         listed=box.get("sizes", {}).get(wanted))
            except GrownFileError as exc:
                # The host streams what it announced: refusing it ends this session, and the
                # rest of the listing comes over a new one (atk19y finding 7).
                grown.append(wanted)
                _print_grown(wanted, exc, as_json)
                raise
            box["fetched"].append(fetched)
            done.add(wanted)
            _print_fetched(fetched, as_json)

    chosen = Method.parse(method) if method else None
    pin = _pairing_pin(chosen, pin)
    ks = unlock()
    transport = _guest_transport(peer, transport)
    target = peer
    try:
        attempt = 0
        while True:
            opts = JoinOptions(target=target, transport=transport, yes=yes, json=as_json,
                               method=chosen, pin=pin, step_timeout=timeout,
                               ask_any_host=ask_any_host)
            try:
                run_async(lambda o=opts: run_join(ks, o, on_session=on_session))
                break
            except GrownFileError:
                # Refused and said; the other files come over a new session (no retry spent:
                # each one refuses a file, so there are at most as many as files listed).
                if all(n in done or n in grown for n in box.get("listed", ())):
                    break
            except (LinkClosedError, PairingTimeout) as exc:
                current = box.get("current")
                part = _part(dests[current]) if current in dests else None
                if attempt == retries or current in done or part is None or not part.exists():
                    raise
                attempt += 1
                info(f"link lost ({exc}); resuming {current} from {part.stat().st_size} bytes")
            if "peer" in box and target != box["peer"]:
                # paired during the first try: reconnect to the now known peer by resume
                transport = transport or (peer if ":" in peer else None)
                target = box["peer"]
            chosen = None
    except BaseException as exc:
        _say_how_to_resume(box, dests, done, peer, transport, output, force, exc)
        raise
    if grown:
        info(f"not fetched: {len(grown)} file(s) that grew on the host since it listed them; "
             "fetch them by name with:", essential=True)
        info(f"  {_get_command(box, peer, transport, output, force, grown)}", essential=True)
        raise GrownFileError(
            f"{len(grown)} file(s) not fetched, grown on the host since it listed them: "
            f"{', '.join(repr(n) for n in grown[:5])}{' ...' if len(grown) > 5 else ''}; "
            f"{len(done)} other file(s) fetched"
        )


def _print_fetched(f: Any, as_json: bool) -> None:
    """One file's result line, printed as soon as it is there (stdout); the path, a host's
    name in it, shown one line."""
    from .common import emit_json, info
    from .show import safe

    if f.restarted_from is not None:
        info(f"note: {f.name} is now shorter on the host than the {f.restarted_from} bytes kept "
             "from an earlier try; fetched it again from the start", quiet=as_json)
    if as_json:
        emit_json({"ok": True, "name": f.name, "path": str(f.path), "size": f.size,
                   "sha256": f.sha256, "resumed_from": f.resumed_from,
                   "restarted_from": f.restarted_from})
    else:
        click.echo(f"{safe(str(f.path))}  {f.size} bytes  sha256 {f.sha256}")


def _print_grown(name: str, exc: BaseException, as_json: bool) -> None:
    """One refused file's line (stderr; with --json its result line on stdout too)."""
    from .common import emit_json, info

    if as_json:
        emit_json({"ok": False, "name": name, "error": str(exc)})
    info(str(exc), essential=True)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _output_folder(output: str | None, *, several: bool) -> Path | None:
    """The folder the files go into, or None when ``output`` names the one file (``-o``
    ending in a slash names a folder, which must exist)."""
    from pairkit.pairing.errors import ConfigError, NotFoundError

    if output is None:
        return Path(".")
    path = Path(output)
    if path.is_dir():
        return path
    if several:
        raise ConfigError(f"-o {output}: with several files, -o names an existing folder")
    if output.endswith(("/", os.sep)):
        raise NotFoundError(f"cannot save into {path}: there is no such folder")
    parent = path.parent
    if not parent.is_dir():
        raise NotFoundError(f"cannot save to {path}: there is no folder {parent}")
    return None


def _destinations(names: Any, into: Path) -> dict[str, Path]:
    """Where each shared name goes in the folder ``into``: its last part (``videos/a.mp4``
    becomes ``a.mp4``).  A name that cannot be saved safely under its own name
    (:func:`_unsafe_base`) or two names that could land on one file (:func:`_one_file`) are
    refused before anything is fetched."""
    from pairkit.pairing.errors import ConfigError

    out: dict[str, Path] = {}
    taken: dict[str, str] = {}  # _one_file key: the name that is that file
    partials: dict[str, str] = {}  # the key of a name's NAME.part: the name
    for name in names:
        base = _base_name(name)
        if _unsafe_base(base):
            raise ConfigError(f"{name!r} cannot be saved under that name; use -o FILE")
        key, part = _one_file(base)
        for other in (taken.get(key), partials.get(key), taken.get(part)):
            if other is None:
                continue
            if _base_name(other) == base:
                raise ConfigError(f"{other!r} and {name!r} would both be saved as {base!r}; "
                                  "fetch them one at a time with -o FILE")
            raise ConfigError(f"{other!r} and {name!r} could be saved as one file (case, "
                              "Unicode form, or NAME.part for NAME); fetch them one at a time "
                              "with -o FILE")
        taken[key], partials[part] = name, name
        out[name] = into / base
    return out


def _unsavable(names: list[str]) -> list[str]:
    """The ``names`` that ``get --all`` leaves out, in their order: each whose last part cannot
    be saved safely (:func:`_unsafe_base`), and every name of two or more whose last parts
    could be one file (:func:`_one_file`): which one the user wants is not for the host to
    say, nor is its listing's order."""
    keys: dict[str, list[str]] = {}  # _one_file key: the names that could be that file
    bad = set()
    for name in names:
        base = _base_name(name)
        if _unsafe_base(base):
            bad.add(name)
        else:
            keys.setdefault(_one_file(base)[0], []).append(name)
    for key, same in keys.items():
        if len(same) > 1:
            bad.update(same)
        partial = keys.get(key + ".part")  # NAME.part is where NAME's partial copy is kept
        if partial:
            bad.update(same + partial)
    return [n for n in names if n in bad]


def _one_file(base: str) -> tuple[str, str]:
    """What ``base`` (a last part) is as a file name wherever it may be saved or copied, and
    the same for the partial copy ``get`` keeps of it (``NAME.part``): two names with one key,
    or one's key the other's second, could be one file.  The key is the name's case folded
    and in one Unicode form (NFD, casefold, NFC: Python's canonical caseless match, which
    folds case as macOS's APFS and HFS+ and Windows' NTFS do, and some more: ``ß`` and ``ss``
    are one here, not on NTFS), trailing dots and spaces removed (Windows drops them).  A file
    system that folds more than that (NFKC: ``ﬁ`` and ``fi``) is not covered."""
    import unicodedata

    # dotless i (U+0131) first: NTFS upper-cases it to I, as i, where casefold keeps it apart
    # (atk23b F5; the one such pair in the Basic Multilingual Plane)
    folded = unicodedata.normalize(
        "NFC", unicodedata.normalize("NFD", base.replace("\u0131", "i")).casefold()
    ).rstrip(". ")
    return folded, folded + ".part"


#: the device names Windows keeps in every folder, with any extension (``con.txt``,
#: ``NUL.tar.gz``): a file so named opens the device
_WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{kind}{n}" for kind in ("com", "lpt") for n in [*"0123456789", "\u00b9", "\u00b2",
                                                          "\u00b3"]})


def _unsafe_base(base: str) -> bool:
    """Whether ``base`` (a shared name's last part) cannot be saved safely as a file name in
    the user's folder: empty, ``.`` or ``..``; or holding a control character (Cc: a newline,
    an escape), a line or paragraph separator, or a bidirectional control, which would reorder
    how the name shows (``invoice\\u202efdp.exe`` shows as "invoiceexe.pdf") wherever it is
    listed after (:data:`pairkit.pairing.wire.LINE_BREAKING`).  And, on every system (the
    folder may be copied to Windows later: atk22c finding F3), a name Windows would take for
    another file: one holding ``:`` (``a:b`` is the stream ``b`` of the file ``a``), ending in
    a dot or a space (Windows drops them: ``notes.txt.`` is ``notes.txt``), or a device's
    (``CON``, ``nul.txt``, ``COM1``: :data:`_WINDOWS_DEVICES`)."""
    from pairkit.pairing.wire import breaks_lines

    if base in ("", ".", "..") or breaks_lines(base):
        return True
    if ":" in base or base.endswith((".", " ")):
        return True
    return base.split(".", 1)[0].rstrip(" ").casefold() in _WINDOWS_DEVICES


def _base_name(name: str) -> str:
    """The last part of a shared name (``videos/a.mp4`` -> ``a.mp4``), ``\\`` a separator too."""
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _writable(dest: Path, force: bool) -> None:
    """ConfigError if ``dest`` exists and --force was not given (nothing is ever replaced
    silently); a folder is never replaced."""
    from pairkit.pairing.errors import ConfigError

    if dest.is_dir():
        raise ConfigError(f"{dest} is a folder; give -o another name")
    if dest.exists() and not force:
        raise ConfigError(f"{dest} exists; use --force to replace it, or -o another name")
    from pairkit.files import partial_size

    partial_size(_part(dest))  # a link planted as NAME.part is refused before connecting


def _say_how_to_resume(box: dict[str, Any], dests: dict[str, Path], done: set[str], peer: str,
                       transport: str | None, output: str | None, force: bool,
                       exc: BaseException) -> None:
    """After a stopped transfer: what is kept, and the exact command that resumes it (the files
    not fetched yet; not one the host refused or does not have, which ``exc`` reports)."""

    from pairkit.pairing.errors import ConfigError, ErrorCode, PairingError

    from .common import info
    from .show import human_size

    if isinstance(exc, ConfigError):
        return  # a local file in the way (it appeared meanwhile): its error says what to do
    current = box.get("current")
    answered = isinstance(exc, PairingError) and exc.code in (
        ErrorCode.NOT_FOUND, ErrorCode.REFUSED, ErrorCode.PERMISSION)
    left = [n for n in box.get("listed", dests)
            if n not in done and not (answered and n == current)]
    if current is None or not left:
        return  # nothing was fetched yet (the same command does it all), or all of it was
    part = None if answered or current not in dests or current in done else _part(dests[current])
    if part is not None and part.is_symlink():
        part = None  # not a partial file of ours: put there by someone else (atk19f)
    if (part is None or not part.exists()) and not done:
        return
    if part is not None and part.exists():
        info(f"stopped: {human_size(part.stat().st_size)} of {current!r} kept in {part}; "
             "resume with:", essential=True)
    else:
        info(f"stopped: {len(done)} file(s) fetched, {len(left)} to go; fetch the rest with:",
             essential=True)
    info(f"  {_get_command(box, peer, transport, output, force, left)}", essential=True)


def _get_command(box: dict[str, Any], peer: str, transport: str | None, output: str | None,
                 force: bool, names: list[str]) -> str:
    """The ``pairkit get`` command that fetches ``names`` from the peer of this run."""
    import shlex

    # a peer paired by this run is known now: by name, it resumes with no PIN
    who = box.get("peer_name") if ":" in peer and "peer_name" in box else peer
    options: list[str] = []
    if transport and who == peer:
        options += ["-t", transport]
    if output is not None:
        options += ["-o", output]
    if force:
        options.append("--force")
    if any(word.startswith("-") for word in (who, *names)):
        # The names are the host's (its listing) and so is its name: one that looks like an
        # option (--force, -o DIR) must stay a name in the command the user pastes (atk19f).
        args = ["pairkit", "get", *options, "--", who, *names]
    else:
        args = ["pairkit", "get", who, *names, *options]
    return shlex.join(args)


@cli.command()
@trace_option
@click.option("--scenario", "-s",
              type=click.Choice(["webinos", "resume", "cpns", "groupkeys"]), default="webinos",
              show_default=True,
              help="webinos: George plays Paul's videos; resume: then a member reconnects; "
                   "cpns: factory-keyed devices enrol through a gateway and a key server; "
                   "groupkeys: a controller hands group keys through a relay, then broadcasts.")
@click.option("--transport", "-t", type=click.Choice(["bumble:virtual", "loopback"]),
              default="bumble:virtual", show_default=True,
              help="Where the devices meet: BLE on virtual controllers, or in memory.")
@click.option("--method", "-m", type=click.Choice(["pin", "qr", "compare", "clear", "ttp"]),
              default="pin", show_default=True,
              help="How George and Paul agree a key (ttp: through a key server process the "
                   "demo starts and both phones enrol with).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def demo(scenario: str, transport: str, method: str, as_json: bool) -> None:
    """Run the Paul-and-George scenario in one process, narrated step by step.

    George, a stranger, finds Paul's phone, asks to join Paul's cloud, is let in as a guest,
    agrees a session key with it, lists Paul's videos and plays two.  Real keystores, real BLE
    frames through bumble on virtual controllers, real files; Paul's answers are scripted.
    Nothing is written outside a temporary directory.
    """
    from pairkit.pairing.negotiation import Method

    from .common import emit_json, run_async

    if scenario == "cpns":
        from .cpns_demo import run_cpns_demo

        summary = run_async(lambda: run_cpns_demo(quiet=False))
    elif scenario == "groupkeys":
        from .groupdemo import run_groupkeys_demo

        summary = run_async(lambda: run_groupkeys_demo(transport=transport, quiet=False))
    else:
        from .demo import run_demo

        summary = run_async(
            lambda: run_demo(scenario, transport, Method.parse(method), quiet=False)
        )
    if as_json:
        emit_json(summary)


def main() -> None:
    """Console-script entry point: click's parsing, with its errors said as ours are.

    A usage error prints ``error: ...`` (not click's ``Error: ...``) and exits 2; the exit
    codes are :mod:`pairkit.cli.exitcodes`'.
    """
    from .exitcodes import EXIT_INTERRUPTED, EXIT_USAGE
    from .show import MAX_LINE, SafeStream, TerminalRow, same_terminal

    # Nothing a peer sent reaches the terminal as a control sequence (issue 17, finding 5).
    streams = sys.stdout, sys.stderr
    # One terminal for both: one row counted by both, for folding (atk22b finding F2).
    row = TerminalRow() if same_terminal(*streams) else None
    sys.stdout = SafeStream(sys.stdout, row=row)  # type: ignore[assignment]
    # Nor a line longer than MAX_LINE to stderr, whatever error text made it (atk20c finding 2).
    sys.stderr = SafeStream(sys.stderr, max_line=MAX_LINE, row=row)  # type: ignore[assignment]
    try:
        rv = cli.main(standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        if exc.ctx is not None:
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        # The command is over: a Ctrl-C from here on (while the interpreter waits for threads
        # as it exits) ends the process at once, with no "Exception ignored" traceback.
        signal.signal(signal.SIGINT, _interrupted_while_exiting)
        # And the streams are the caller's again (an embedding script's own lines after
        # main() are not cut: they hold no peer text).
        for wrapped in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                wrapped.flush()
        sys.stdout, sys.stderr = streams
    sys.exit(rv if isinstance(rv, int) else 0)


def _interrupted_while_exiting(_signum: int, _frame: object) -> None:
    from .exitcodes import EXIT_INTERRUPTED

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
