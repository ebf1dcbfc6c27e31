"""pairkit.cli: the ``pairkit`` command (click; the commands are :mod:`pairkit.cli.main`'s).

:func:`main` is the console script.  ``pairkit --version`` and ``pairkit --help`` are answered
here without importing click (issue 12: both within 100 ms; click alone costs about 50 ms):
the help is click's own text, kept in :mod:`pairkit.cli._help` and checked against click's
rendering by tests/test_startup_imports.py (``python -m pairkit.cli._help`` writes it anew).
Everything else, and a terminal narrower than the text, goes to click.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args == ["--version"]:
        from pairkit import __version__

        sys.stdout.write(f"pairkit, version {__version__}\n")
        return
    if args in (["--help"], ["-h"]) and _wide_enough():
        from ._help import HELP

        sys.stdout.write(HELP)
        return
    from .main import main as run

    run()


def _wide_enough() -> bool:
    """Whether click would lay the help out at its full width of 80 columns."""
    if "COLUMNS" in os.environ:
        try:
            return int(os.environ["COLUMNS"]) >= 80
        except ValueError:
            return False
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns >= 80
    except (OSError, ValueError):
        return True  # not a terminal: click uses 80 columns
