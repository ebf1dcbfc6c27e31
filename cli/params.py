"""Option types that check a value when the command line is parsed, naming the option.

click's ``float`` and ``FloatRange`` let ``nan``, ``inf`` and ``1e300`` through (``nan`` fails
no comparison), and those then failed deep inside as internal errors (issue 17, finding 10).
:class:`Seconds` and :class:`Number` refuse them with a usage error (exit 2):
``Invalid value for '--guest-hours': 'nan' is not a finite number``.
"""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = ["KEYSTORE_PIN_FILE", "Number", "Seconds", "complete_peer", "keystore_pin_option"]


class Number(click.ParamType):
    """A finite number from ``low`` to ``high`` (``low`` itself excluded with ``above``)."""

    name = "number"

    def __init__(self, low: float, high: float, *, above: bool = False, unit: str = "") -> None:
        self.low, self.high, self.above, self.unit = low, high, above, unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_ok = number > self.low if self.above else number >= self.low
        if not low_ok or number > self.high:
            unit = f" {self.unit}" if self.unit else ""
            lowest = f"more than {self.low:.10g}" if self.above else f"{self.low:.10g}"
            self.fail(f"{value!r} is not from {lowest} to {self.high:.10g}{unit}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Number({self.low:.10g}, {self.high:.10g})"


class Seconds(Number):
    """A finite number of seconds, from ``low`` to ``high``."""

    name = "seconds"

    def __init__(self, low: float = 0.1, high: float = 86400.0, *, above: bool = False) -> None:
        super().__init__(low, high, above=above, unit="seconds")


#: where :func:`keystore_pin_option` leaves the file it was given (``click.Context.meta``)
KEYSTORE_PIN_FILE = "pairkit.keystore_pin_file"


def _remember_pin_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[KEYSTORE_PIN_FILE] = value


def keystore_pin_option(f: Any) -> Any:
    """``--pin-file FILE`` on every command that opens the keystore: the keystore PIN or
    passphrase is read from FILE.  It comes first, then ``PAIRKIT_PIN``, then a prompt on a
    terminal (:func:`pairkit.cli.common.unlock`); the same meaning as ``init --pin-file``."""
    return click.option(
        "--pin-file", type=click.Path(dir_okay=False), default=None, expose_value=False,
        callback=_remember_pin_file, metavar="FILE",
        help="Read the keystore PIN or passphrase from FILE (before PAIRKIT_PIN and the "
             "prompt).",
    )(f)


def complete_peer(ctx: click.Context, param: click.Parameter, incomplete: str
                  ) -> list[Any]:
    """Shell completion of a known peer's name (``_PAIRKIT_COMPLETE``, README "Shell
    completion").  The peers are inside the sealed keystore: they are completed when
    ``PAIRKIT_PIN`` is set in the shell, and nothing is offered otherwise (a completion never
    asks for a PIN, never prints an error)."""
    import os

    from click.shell_completion import CompletionItem

    pin = os.environ.get("PAIRKIT_PIN")
    if not pin:
        return []
    try:
        from pairkit.keystore import Keystore, default_path

        ks = Keystore.open(default_path(os.environ), pin)
        names = sorted({p.name for p in ks.peers()})
    except Exception:  # a completion must never break the shell's line
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]
