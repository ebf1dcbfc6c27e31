"""``--trace FILE``: the option of every command that may open a bumble transport.

Cheap to import (click and :mod:`pairkit.transports.tracing`, no bumble): the option only
records the path; :class:`pairkit.transports.bumble.BumbleTransport` opens the file when it
opens its controller (virtual controllers included).  Other transports (TCP, loopback, bleak
on the OS stack) have no HCI to trace and ignore it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pairkit.transports.tracing import set_default_trace

__all__ = ["trace_option"]

HELP = ("Write the HCI traffic of each bumble transport to FILE (btsnoop: Wireshark, "
        "btmon -r), with link keys blanked; a second transport writes FILE-2, ...")


def _remember(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    set_default_trace(value)


def trace_option(f: Any) -> Any:
    return click.option(
        "--trace", type=click.Path(dir_okay=False, writable=True, path_type=Path),
        default=None, metavar="FILE", expose_value=False, callback=_remember, help=HELP,
    )(f)
