"""``pairkit`` under a real pseudo-terminal, as a person at a keyboard runs it (issue 16).

The child is a session leader whose controlling terminal is the pty (``pty.fork``), so what is
written here arrives as typed keys: ``\\x03`` is Ctrl-C (the terminal driver sends SIGINT to the
foreground process), a line ends with ``\\r``.  Every wait has a deadline and fails with what
the terminal showed so far.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from pathlib import Path

from tests.cli_helpers import KEYSTORE_PIN, PAIRKIT_CMD, ROOT, assert_no_traceback, cli_env

#: how long to wait for something to appear on a terminal, or a process to end
WAIT = 20.0


#: the width of a test's terminal unless it says another: wide enough for every line the tests
#: read whole (pairkit folds a line wider than its terminal, and one of no known size at 80)
WIDE = 200


class PtyProcess:
    """One ``pairkit`` command on its own terminal: stdin, stdout and stderr are the pty."""

    def __init__(self, home: Path, *args: str, pin: str | None = KEYSTORE_PIN,
                 env: dict[str, str] | None = None, columns: int | None = WIDE) -> None:
        """``pin``: the keystore PIN in PAIRKIT_PIN (None: none, so pairkit asks for it);
        ``env``: more environment variables, set over the device's (a locale, an encoding);
        ``columns``: the terminal's width, :data:`WIDE` unless said (None: the size a pty
        starts with, 0 by 0, which pairkit folds at 80 as a terminal of no known size)."""
        self.args = args
        env = {**cli_env(home, pin=pin), "TERM": "xterm", **(env or {})}
        pid, fd = pty.fork()
        if pid == 0:  # the child: become pairkit
            try:
                os.chdir(ROOT)
                if columns is not None:  # sized before pairkit runs: no race with its output
                    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
                os.execvpe(PAIRKIT_CMD[0], [*PAIRKIT_CMD, *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self._seen = 0
        self.rc: int | None = None

    def _pump(self, timeout: float) -> bool:
        """Read what the terminal shows, for at most ``timeout`` s; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    def expect(self, pattern: str, *, timeout: float = WAIT) -> re.Match[str]:
        """Wait for ``pattern`` in what appeared since the last match; returns the match."""
        end = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.output, self._seen)
            if found is not None:
                self._seen = found.end()
                return found
            left = end - time.monotonic()
            if left <= 0 or not self._pump(min(left, 0.2)):
                raise AssertionError(
                    f"pairkit {' '.join(self.args)}: {pattern!r} did not appear; the terminal "
                    f"showed:\n{self.output}"
                )

    def settle(self, seconds: float) -> str:
        """Read for ``seconds`` (no more is awaited); what appeared since the last match."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self._pump(end - time.monotonic()):
            pass
        return self.output[self._seen:]

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def line(self, text: str) -> None:
        self.type(text + "\r")

    def ctrl_c(self) -> None:
        self.type("\x03")

    def wait(self, *, timeout: float = WAIT) -> int:
        """The exit code (130 for SIGINT as the shell reports it), once the process ended."""
        end = time.monotonic() + timeout
        while self.rc is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
                if self.rc < 0:
                    self.rc = 128 - self.rc
                break
            if time.monotonic() > end:
                raise AssertionError(
                    f"pairkit {' '.join(self.args)} did not end within {timeout:g} s; the "
                    f"terminal showed:\n{self.output}"
                )
            self._pump(0.1)
        while self._pump(0.05):
            pass
        assert_no_traceback(f"pairkit {' '.join(self.args)}", self.output)
        return self.rc

    def close(self) -> None:
        if self.rc is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.rc = -9
        with contextlib.suppress(OSError):
            os.close(self.fd)


def on_terminal(home: Path, env: dict[str, str] | None, *args: str) -> tuple[int, str]:
    """``pairkit ARGS`` on a pseudo-terminal of its own, run to its end, with ``env`` set over
    the device's environment: (exit code, everything the terminal showed).  Blocking: run it
    with ``asyncio.to_thread`` beside a host in the test's loop."""
    proc = PtyProcess(home, *args, env=env)
    try:
        return proc.wait(), proc.output
    finally:
        proc.close()


def terminal_rows(shown: str, columns: int) -> list[str]:
    """The rows a terminal ``columns`` wide shows ``shown`` (a terminal's output, one
    character a column: the tests' texts are ASCII) in: each line wrapped at ``columns``."""
    rows: list[str] = []
    for line in shown.split("\n"):
        rows.extend(line[i:i + columns] for i in range(0, max(1, len(line)), columns))
    return rows
