"""pairkit's exit codes: the contract scripts rely on (cheap to import: `pairkit --help` shows it).

The mapping from errors to these codes is :func:`pairkit.cli.common.exit_code_for`, the one place
that decides; README.md ("Exit codes") and ``pairkit --help`` print :data:`EXIT_CODES`, and
tests/test_exit_codes.py drives every error a user can cause through the real command.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_TIMEOUT = 4
EXIT_REFUSED = 5
EXIT_NOT_FOUND = 6
EXIT_CLOSED = 7
EXIT_BUSY = 8
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

#: (code, meaning) in the order ``pairkit --help`` lists them
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "any other failure (a radio that cannot be used, a misbehaving peer)"),
    (EXIT_USAGE, "usage: a bad option, argument, transport, QR code or config.toml"),
    (EXIT_AUTH, "authentication: a wrong PIN or QR code, a locked keystore"),
    (EXIT_TIMEOUT, "timeout: the other side did not answer in time"),
    (EXIT_REFUSED, "refused: by the owner or a policy (lockout, method), cancelled, no permission"),
    (EXIT_NOT_FOUND, "not found: no such peer, host, file, identity or controller"),
    (EXIT_CLOSED, "connection lost: the other side went away mid-way"),
    (EXIT_BUSY, "busy: the host is serving as many peers as it can; try again in a moment"),
    (EXIT_INTERNAL, "internal error: a bug (rerun with --debug and report it)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def epilog() -> str:
    """The exit-code table as the help's epilog (click keeps lines after ``\\b`` as they are)."""
    rows = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)
    return f"\b\nExit codes:\n{rows}"
