"""What every pairkit subcommand shares: the keystore, output, prompts and error mapping."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from pairkit.pairing.cloud import AllowJoin, Grant, Role
from pairkit.pairing.errors import (
    BusyError,
    ConfigError,
    ErrorCode,
    KeystoreError,
    LockedOutError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    RefusedError,
    WrongPinError,
)
from pairkit.pairing.keystore import Keystore, KeystoreNotFoundError, default_path
from pairkit.pairing.methods import ConfirmCode, InsecureWarning
from pairkit.pairing.service import AllowRequest, JoinCloud, Scope

T = TypeVar("T")

#: exit codes, one per kind of failure (scripts can tell them apart)
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_TIMEOUT = 4
EXIT_REFUSED = 5
EXIT_NOT_FOUND = 6
EXIT_BUSY = 7  #: the host turned us away for load: try again in a moment
EXIT_INTERRUPTED = 130

PIN_TRIES = 3


def exit_code_for(exc: BaseException) -> int:
    """The one place that maps typed errors to exit codes (STYLE.md rule 11)."""
    if isinstance(exc, ConfigError | click.UsageError):
        return EXIT_USAGE
    # By wire code too, so that an error the peer reports ("the peer stopped: ...", a
    # RemoteError) exits as the same error found here would.
    code = exc.code if isinstance(exc, PairingError) else None
    if isinstance(exc, BusyError) or code == ErrorCode.BUSY:
        return EXIT_BUSY
    if isinstance(exc, PairingTimeout) or code == ErrorCode.TIMEOUT:
        return EXIT_TIMEOUT
    if isinstance(exc, RefusedError | LockedOutError) or code in _REFUSALS:
        return EXIT_REFUSED
    if isinstance(exc, NotFoundError) or code == ErrorCode.NOT_FOUND:
        return EXIT_NOT_FOUND
    if code == ErrorCode.AUTH_FAILED:
        return EXIT_AUTH
    return EXIT_ERROR


_REFUSALS = frozenset({ErrorCode.REFUSED, ErrorCode.LOCKED_OUT})


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def info(message: str, *, quiet: bool = False) -> None:
    """Narration for a person: stderr, so stdout stays for results."""
    if not quiet:
        click.echo(message, err=True)


def emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


def home_path() -> Path:
    return default_path(os.environ)


def read_pin_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the PIN file {path}: {exc.strerror}") from None
    pin = text.strip("\r\n")
    if not pin:
        raise ConfigError(f"the PIN file {path} is empty")
    return pin


def unlock(path: Path | None = None) -> Keystore:
    """Open the keystore with ``PAIRKIT_PIN`` or by asking (three tries)."""
    path = path or home_path()
    if not path.exists():
        raise KeystoreNotFoundError(f"no identity at {path}; run 'pairkit init' first")
    env_pin = os.environ.get("PAIRKIT_PIN")
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
            info(f"wrong PIN, {PIN_TRIES - attempt} tries left")
    raise AssertionError("unreachable")


class CliDelegate:
    """The user's decisions, asked on the terminal (or answered by ``--yes``)."""

    def __init__(self, *, yes: bool = False, quiet: bool = False, guest_seconds: int = 3600):
        self.yes = yes
        self.quiet = quiet
        self.guest_seconds = guest_seconds

    async def confirm_code(self, q: ConfirmCode) -> bool:
        info(f"Confirmation code: {q.code[:3]} {q.code[3:]}  (on {q.peer_name})")
        if self.yes:
            info("  confirmed (--yes)")
            return True
        if not sys.stdin.isatty():
            info("  no terminal to confirm on; refusing (use --yes in scripts)")
            return False
        return await asyncio.to_thread(
            click.confirm, "Does the other device show the same code?", err=True
        )

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        hours = self.guest_seconds / 3600
        info(f"{q.name} asks to join (as {q.wants.name.lower()}).")
        if self.yes:
            info(f"  allowed as guest for {hours:g} hour(s) (--yes)")
            return Grant(Role.GUEST, self.guest_seconds)
        if not sys.stdin.isatty():
            info("  no terminal to ask on; refusing (use --yes in scripts)")
            return None
        choice = await asyncio.to_thread(
            click.prompt,
            f"Allow as [g]uest for {hours:g} hour(s), as [m]ember, or [r]efuse?",
            type=click.Choice(["g", "m", "r"]), default="r", err=True,
        )
        if choice == "g":
            return Grant(Role.GUEST, self.guest_seconds)
        return Grant(Role.MEMBER) if choice == "m" else None

    async def join_cloud(self, q: JoinCloud) -> bool:
        info(f"{q.host_name} made this device a member of {q.cloud_name!r}.")
        if self.yes:
            info("  joined (--yes)")
            return True
        if not sys.stdin.isatty():
            info("  no terminal to ask on; not joining (use --yes in scripts)")
            return False
        return await asyncio.to_thread(
            click.confirm, "Join that cloud (its members will know this device)?", err=True
        )

    async def allow_request(self, q: AllowRequest) -> Scope:
        what = "the list of shared files" if q.what == "list" else repr(q.name)
        info(f"{q.peer_name} asks for {what}.")
        if self.yes:
            info("  allowed for this session (--yes)")
            return Scope.SESSION
        if not sys.stdin.isatty():
            info("  no terminal to ask on; refusing (use --yes in scripts)")
            return Scope.REFUSE
        choice = await asyncio.to_thread(
            click.prompt, "Allow [o]nce, for this [s]ession, or [r]efuse?",
            type=click.Choice(["o", "s", "r"]), default="r", err=True,
        )
        return {"o": Scope.ONCE, "s": Scope.SESSION}.get(choice, Scope.REFUSE)

    async def on_warning(self, event: InsecureWarning) -> None:
        click.echo(f"warning: {event.text}", err=True)

    async def on_event(self, event: object) -> None:
        return None


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
        debug = ctx.params.get("debug") or os.environ.get("PAIRKIT_DEBUG") == "1"
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
            ctx.exit(1)
        except Exception as exc:  # a bug: say so plainly, show the trace only with --debug
            if debug:
                traceback.print_exc()
            fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it")
            ctx.exit(70)
