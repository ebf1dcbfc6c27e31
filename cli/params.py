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

__all__ = ["Number", "Seconds"]


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
