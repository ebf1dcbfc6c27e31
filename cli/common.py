"""What every pairkit subcommand shares: the keystore, output, prompts and error mapping."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from pairkit.keystore import Keystore, KeystoreNotFoundError, default_path
from pairkit.pairing.cloud import AllowJoin, Grant, Role
from pairkit.pairing.errors import (
    ConfigError,
    ErrorCode,
    KeystoreError,
    NotFoundError,
    PairingError,
    WrongPinError,
)
from pairkit.pairing.methods import ConfirmCode, InsecureWarning
from pairkit.pairing.service import AllowRequest, JoinCloud, Scope

from .exitcodes import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_CLOSED,
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)
from .show import safe

T = TypeVar("T")

PIN_TRIES = 3

#: wire codes -> exit codes, so that an error the peer reports ("the peer stopped: ...", a
#: RemoteError) exits as the same error found here would
_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.TIMEOUT: EXIT_TIMEOUT,
    ErrorCode.REFUSED: EXIT_REFUSED,
    ErrorCode.LOCKED_OUT: EXIT_REFUSED,
    ErrorCode.UNSUPPORTED: EXIT_REFUSED,
    ErrorCode.INSECURE: EXIT_REFUSED,
    ErrorCode.PERMISSION: EXIT_REFUSED,
    ErrorCode.NOT_FOUND: EXIT_NOT_FOUND,
    ErrorCode.AUTH_FAILED: EXIT_AUTH,
    ErrorCode.EXPIRED: EXIT_AUTH,
    ErrorCode.REPLAY: EXIT_AUTH,
    ErrorCode.CLOSED: EXIT_CLOSED,
    ErrorCode.CANCELLED: EXIT_REFUSED,  # the person on the other side said no, by Ctrl-C
    ErrorCode.BUSY: EXIT_BUSY,
    ErrorCode.TOO_LARGE: EXIT_ERROR,  # a full keystore too: not a locked one (issue 17)
}

_OS_ERRNOS: dict[int, int] = {
    errno.ENOENT: EXIT_NOT_FOUND,
    errno.ENOTDIR: EXIT_NOT_FOUND,
    errno.EACCES: EXIT_REFUSED,
    errno.EPERM: EXIT_REFUSED,
}


def exit_code_for(exc: BaseException) -> int:
    """The one place that maps errors to exit codes (STYLE.md rule 11; table :data:`EXIT_CODES`).

    A usage error first (ConfigError, click's), then a locked keystore (no PIN to open it is an
    authentication failure), then the error's wire code, then an OS error's errno.
    """
    if isinstance(exc, ConfigError | click.UsageError):
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, PairingError):
        if isinstance(exc, KeystoreError) and not isinstance(exc, NotFoundError):
            return _BY_CODE.get(exc.code, EXIT_AUTH)
        return _BY_CODE.get(exc.code, EXIT_ERROR)
    if isinstance(exc, OSError):
        return _OS_ERRNOS.get(exc.errno or 0, EXIT_ERROR)
    return EXIT_INTERNAL


class _LogLines(logging.Handler):
    """Log records as lines a person reads: ``warning: ...`` for pairkit's warnings, the
    logger's name before anything else; a traceback only when asked for (-vv or --debug)."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed log call must not end the command
            text = str(record.msg)
        if record.levelno >= logging.WARNING and record.name.startswith("pairkit"):
            line = f"{record.levelname.lower()}: {text}"
        else:
            line = f"{record.name}: {text}"
        if self.tracebacks and record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        click.echo(line, err=True)


def configure_logging(verbose: int = 0, *, quiet: bool = False, debug: bool = False) -> None:
    """Who may write to the terminal, by ``-v`` level (see ``pairkit --help``).

    pairkit's own loggers print warnings (``--quiet``: errors only; ``-v``: what they narrate;
    ``-vv``: everything).  Third-party loggers (bumble, bleak, asyncio) stay silent below
    ``-vv`` or ``--debug``: their lines (coloured tracebacks, object reprs) are for a bug
    report, and what they mean reaches the person as pairkit's own error.
    """
    global _QUIET
    _QUIET = quiet
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _LogLines)]:
        root.removeHandler(h)
    loud = verbose >= 2 or debug
    root.addHandler(_LogLines(tracebacks=loud))
    root.setLevel(logging.DEBUG if loud else logging.CRITICAL + 1)
    ours = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    logging.getLogger("pairkit").setLevel(ours)
    if not loud:
        # the root's level does not silence a logger that sets its own: bumble's does
        for name in ("bumble", "bleak", "asyncio", "usb1"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def need_radio(spec: str, what: str) -> None:
    """ConfigError unless ``spec`` names a broadcasting transport (a radio): TCP has no
    advertisements to hear or send."""
    from pairkit.transports.registry import parse_transport

    if parse_transport(spec).kind == "tcp":
        raise ConfigError(
            f"{what} on a radio, and {spec} is TCP: give a Bluetooth transport "
            "(-t bumble:usb:0, or -t bumble:tcp-client:HOST:PORT for a 'pairkit radio' port)"
        )


def fail(message: str) -> None:
    click.echo(f"error: {safe(message, lines=True)}", err=True)


#: ``pairkit --quiet``: no narration (see :func:`info`)
_QUIET = False


def info(message: str, *, quiet: bool = False, essential: bool = False,
         whole: bool = False) -> None:
    """Narration for a person: stderr, so stdout stays for results.

    ``pairkit --quiet`` silences it but for what the person must act on (``essential``: a PIN,
    a QR code, where a host waits); ``quiet`` silences this call (a caller that narrates for
    itself, or ``--json``).  Whatever a peer put in it is shown, never interpreted
    (:func:`~cli.show.safe`).  On a terminal a line wider than it is folded, each further row
    marked (:meth:`~cli.show.SafeStream.write`); ``whole``: not folded, for a line of
    pairkit's own, holding no peer's words, that a person copies (the QR code's link).
    """
    if not quiet and (essential or not _QUIET):
        write_whole = getattr(sys.stderr, "write_whole", None) if whole else None
        if write_whole is None:
            click.echo(safe(message, lines=True), err=True)
        else:  # not folded on a terminal (cli.show.SafeStream): a line to copy whole
            write_whole(safe(message, lines=True) + "\n")
            sys.stderr.flush()


def say(message: str) -> None:
    """A result line for a person on stdout, made safe as :func:`info`'s."""
    click.echo(safe(message, lines=True))


def emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


def home_path() -> Path:
    return default_path(os.environ)


def env_text(name: str) -> str | None:
    """An environment variable as text, or None; one that is not UTF-8 (the shell put bytes
    there that no keyboard types) is a usage error naming it, not an internal one."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} is not valid UTF-8 text; set it again") from None
    return value


def read_pin_file(path: str) -> str:
    """The keystore PIN in ``--pin-file``: a regular file or a pipe (``<(...)``) of at most
    :data:`~pairkit.smallfile.MAX_PIN_FILE` bytes, its line end left out.  Anything else (a
    device, /dev/zero, a huge file) is refused before it is read whole (atk21 finding 6)."""
    from pairkit.smallfile import MAX_PIN_FILE, read_small_file

    raw = read_small_file(Path(path), MAX_PIN_FILE, "a keystore PIN", pipes=True,
                          name=f"the PIN file {path}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the PIN file {path} is not UTF-8 text") from None
    pin = text.strip("\r\n")
    if not pin:
        raise ConfigError(f"the PIN file {path} is empty")
    return pin


def unlock(path: Path | None = None) -> Keystore:
    """Open the keystore: with the command's ``--pin-file``, else ``PAIRKIT_PIN``, else by
    asking on a terminal (three tries)."""
    from .params import KEYSTORE_PIN_FILE

    path = path or home_path()
    if not path.exists():
        raise KeystoreNotFoundError(f"no identity at {path}; run 'pairkit init' first")
    ctx = click.get_current_context(silent=True)
    pin_file = ctx.meta.get(KEYSTORE_PIN_FILE) if ctx is not None else None
    if pin_file is not None:
        return Keystore.open(path, read_pin_file(pin_file))
    env_pin = env_text("PAIRKIT_PIN")
    if env_pin is not None:
        return Keystore.open(path, env_pin)
    if not sys.stdin.isatty():
        raise KeystoreError("the keystore is locked: set PAIRKIT_PIN or run in a terminal")
    for attempt in range(1, PIN_TRIES + 1):
        pin = click.prompt("Keystore PIN", hide_input=True, err=True)
        try:
            return Keystore.open(path, pin)
        except WrongPinError:
            if attempt == PIN_TRIES:
                raise WrongPinError(f"wrong PIN {PIN_TRIES} times; giving up") from None
            left = PIN_TRIES - attempt
            info(f"wrong PIN, {left} {'try' if left == 1 else 'tries'} left")
    raise AssertionError("unreachable")


class CliDelegate:
    """The user's decisions, asked on the terminal (or answered by ``--yes``).

    Questions go through one :class:`~pairkit.cli.prompt.Terminal`: one at a time, each
    naming who asks and for what, typed-ahead input discarded, ``timeout`` seconds to answer
    (then "no"), Ctrl-C ends the command (issue 16).  A guest waiting for the host's owner sees
    a status line naming ``host_label``.
    """

    def __init__(
        self, *, yes: bool = False, quiet: bool = False, guest_seconds: int = 3600,
        timeout: float = 30.0, host_label: str = "the host",
    ) -> None:
        from .prompt import Terminal

        self.yes = yes
        self.quiet = quiet
        self.guest_seconds = guest_seconds
        self.timeout = timeout
        self.host_label = host_label
        self.terminal = Terminal()

    async def confirm_code(self, q: ConfirmCode) -> bool:
        header = (f"{safe(q.peer_name)} is pairing by numeric comparison. Confirmation code: "
                  f"{q.code[:3]} {q.code[3:]}")
        if self.yes:
            info(header)
            info("  confirmed (--yes)")
            return True
        if not self.terminal.interactive:
            info(header)
            info("  no terminal to confirm on; refusing (use --yes in scripts)")
            return False
        return await self.terminal.choose(
            header, f"Does {safe(q.peer_name)} show the same code? [y/N]",
            {"y": True, "yes": True, "n": False, "no": False}, no=False, timeout=self.timeout,
        )

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        hours = self.guest_seconds / 3600
        header = f"{safe(q.name)} asks to join this device's cloud (as {q.wants.name.lower()})."
        if self.yes:
            info(header)
            info(f"  allowed as guest for {hours:g} hour(s) (--yes)")
            return Grant(Role.GUEST, self.guest_seconds)
        if not self.terminal.interactive:
            info(header)
            info("  no terminal to ask on; refusing (use --yes in scripts)")
            return None
        guest, member = Grant(Role.GUEST, self.guest_seconds), Grant(Role.MEMBER)
        return await self.terminal.choose(
            header, f"Allow {safe(q.name)} as [g]uest for {hours:g} hour(s), as [m]ember, "
            "or [r]efuse?",
            {"g": guest, "m": member, "r": None}, no=None, timeout=self.timeout,
        )

    async def join_cloud(self, q: JoinCloud) -> bool:
        header = f"{safe(q.host_name)} made this device a member of {safe(repr(q.cloud_name))}."
        if self.yes:
            info(header)
            info("  joined (--yes)")
            return True
        if not self.terminal.interactive:
            info(header)
            info("  no terminal to ask on; not joining (use --yes in scripts)")
            return False
        return await self.terminal.choose(
            header, "Join that cloud (its members will know this device)? [y/N]",
            {"y": True, "yes": True, "n": False, "no": False}, no=False, timeout=self.timeout,
        )

    async def allow_request(self, q: AllowRequest) -> Scope:
        what = "the list of shared files" if q.what == "list" else safe(repr(q.name))
        header = f"{safe(q.peer_name)} asks for {what}."
        if self.yes:
            info(header)
            info("  allowed for this session (--yes)")
            return Scope.SESSION
        if not self.terminal.interactive:
            info(header)
            info("  no terminal to ask on; refusing (use --yes in scripts)")
            return Scope.REFUSE
        return await self.terminal.choose(
            header, f"Allow {safe(q.peer_name)} [o]nce, for this [s]ession, or [r]efuse?",
            {"o": Scope.ONCE, "s": Scope.SESSION, "r": Scope.REFUSE}, no=Scope.REFUSE,
            timeout=self.timeout,
        )

    async def on_warning(self, event: InsecureWarning) -> None:
        click.echo(f"warning: {safe(event.text, lines=True)}", err=True)

    async def on_event(self, event: object) -> None:
        from pairkit.pairing.cloud import OwnerDecided, WaitingForOwner
        from pairkit.pairing.service import CloudBehind

        if isinstance(event, CloudBehind):
            self.close()
            click.echo(f"warning: {safe(event.text, lines=True)}", err=True)
            return

        from .prompt import StatusLine

        if isinstance(event, WaitingForOwner) and not self.quiet:
            self.close()
            self.terminal.status = StatusLine(
                f"waiting for {self.host_label} to let you in", event.seconds
            )
            self.terminal.status.start()
        elif isinstance(event, OwnerDecided):
            self.close()

    def close(self) -> None:
        """Erase the status line, if one is shown (the command ends, or the wait is over)."""
        if self.terminal.status is not None:
            self.terminal.status.clear()
            self.terminal.status = None


class PairkitGroup(click.Group):
    """A group whose commands' errors end as ``error: ...`` and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        return self.invoke_mapping_errors(ctx, lambda: super(PairkitGroup, self).invoke(ctx))

    @staticmethod
    def invoke_mapping_errors(ctx: click.Context, invoke: Callable[[], Any]) -> Any:
        """Run ``invoke`` (a group's ``click.Group.invoke``), its errors mapped to exit codes.

        Also used by the ``pairkit`` root group (cli/main.py), which imports this module only
        when a command runs.
        """
        top = ctx.find_root().params
        debug = bool(top.get("debug")) or os.environ.get("PAIRKIT_DEBUG") == "1"
        if ctx.parent is None:
            configure_logging(top.get("verbose") or 0, quiet=bool(top.get("quiet")), debug=debug)
        try:
            return invoke()
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            fail("interrupted")
            ctx.exit(EXIT_INTERRUPTED)
        except PairingError as exc:
            if debug:
                traceback.print_exc()
            fail(str(exc))
            ctx.exit(exit_code_for(exc))
        except OSError as exc:
            if debug:
                traceback.print_exc()
            fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
            ctx.exit(exit_code_for(exc))
        except Exception as exc:  # a bug: say so plainly, show the trace only with --debug
            if debug:
                traceback.print_exc()
            fail(f"internal error ({type(exc).__name__}); rerun with --debug and report it")
            ctx.exit(EXIT_INTERNAL)
