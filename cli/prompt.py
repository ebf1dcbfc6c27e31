"""Questions on the terminal as a person expects them (issue 16).

* **One at a time**: questions queue (first come, first asked); a question is printed only when
  its turn comes, with a header naming who asks and for what, so an answer always goes to the
  question on the screen.
* **Typed-ahead input is discarded** before each question (``tcflush``): keys pressed while
  nothing was asked never answer a security question.
* **A question that times out says so and answers no.**
* **Read without a thread**: the terminal's file descriptor is watched by the event loop
  (``loop.add_reader``) in canonical mode, so Ctrl-C (SIGINT, which ``asyncio.run`` turns into
  cancelling the command) ends the command at once, and a question the peer withdrew (it
  cancelled, or left) disappears at once too.

A status line (:class:`StatusLine`) tells a waiting person what they wait for, updated in place
on a terminal and said once otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

__all__ = ["StatusLine", "Terminal"]


class Terminal:
    """The person's terminal: questions in a queue, read by the event loop."""

    def __init__(self, stdin: Any = None, out: TextIO | None = None) -> None:
        self._stdin = stdin if stdin is not None else sys.stdin
        self._out = out if out is not None else sys.stderr
        self._turn = asyncio.Lock()  # FIFO: questions are asked in the order they came
        self.status: StatusLine | None = None

    @property
    def interactive(self) -> bool:
        """Whether there is a person's terminal to ask on."""
        try:
            return bool(self._stdin.isatty())
        except (AttributeError, ValueError, OSError):
            return False

    def say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    async def choose(
        self,
        header: str,
        question: str,
        choices: Mapping[str, T],
        *,
        no: T,
        timeout: float,
    ) -> T:
        """Ask ``question`` (after ``header``) until one of ``choices``' keys is typed.

        An empty line, end of input or ``timeout`` seconds without an answer give ``no``
        (the last is said on the terminal)."""
        async with self._turn:
            if self.status is not None:
                self.status.clear()
            self.say(header)
            fd = self._stdin.fileno()
            _discard_typed_ahead(fd)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            keys = "/".join(choices)
            try:
                while True:
                    self._out.write(f"{question} ")
                    self._out.flush()
                    left = deadline - loop.time()
                    line = await _read_line(fd, left) if left > 0 else _TIMED_OUT
                    if line is not _TIMED_OUT and line is not None:
                        # the terminal echoed the person's Enter: the next write starts a row
                        getattr(self._out, "mark_line_start", lambda: None)()
                    if line is _TIMED_OUT:
                        self.say(f"\n  no answer within {timeout:g} s: answering no")
                        return no
                    if line is None or not str(line).strip():
                        if line is None:
                            self._out.write("\n")
                        self.say("  no")
                        return no
                    answer = str(line).strip().lower()
                    if answer in choices:
                        return choices[answer]
                    self.say(f"  please answer {keys}")
            except asyncio.CancelledError:
                # Ctrl-C, or the peer withdrew the question: leave the terminal tidy.
                self._out.write("\n")
                self._out.flush()
                raise


_TIMED_OUT = object()


def _discard_typed_ahead(fd: int) -> None:
    """Drop what was typed before the question was shown (a terminal only)."""
    try:
        import termios

        if os.isatty(fd):
            termios.tcflush(fd, termios.TCIFLUSH)
    except (ImportError, OSError):
        pass


async def _read_line(fd: int, timeout: float) -> object:
    """One line from ``fd`` (without its newline), ``None`` at end of input, or
    ``_TIMED_OUT``.  The terminal stays in canonical mode: the kernel edits the line (erase,
    kill) and reports the descriptor readable once a whole line is there."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes | None] = loop.create_future()
    buffer = bytearray()

    def readable() -> None:
        if done.done():
            return
        try:
            data = os.read(fd, 1024)
        except BlockingIOError:
            return
        except OSError:
            done.set_result(None)
            return
        if not data:
            done.set_result(None)
            return
        buffer.extend(data)
        if b"\n" in buffer:
            done.set_result(bytes(buffer.split(b"\n", 1)[0]))

    try:
        loop.add_reader(fd, readable)
    except (NotImplementedError, OSError, ValueError):
        # An event loop that cannot watch the descriptor (Windows' proactor): read the line
        # in a thread; Ctrl-C still ends the command, the thread ends with the process.
        try:
            return await asyncio.wait_for(_line_in_thread(fd), timeout)
        except TimeoutError:
            return _TIMED_OUT
    try:
        try:
            raw = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return _TIMED_OUT
    finally:
        loop.remove_reader(fd)
    return None if raw is None else raw.decode("utf-8", "replace")


async def _line_in_thread(fd: int) -> str | None:
    def read() -> str | None:
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 1)
            if not chunk:
                return None if not data else data.decode("utf-8", "replace")
            data.extend(chunk)
        return data[:-1].decode("utf-8", "replace")

    return await asyncio.to_thread(read)


class StatusLine:
    """``waiting for Paul's phone to let you in... 12 s``: rewritten in place every second on
    a terminal, said once (with the limit) when the output is not one."""

    def __init__(self, text: str, limit: float, out: TextIO | None = None) -> None:
        self._text = text
        self._limit = limit
        self._out = out if out is not None else sys.stderr
        self._task: asyncio.Task[None] | None = None
        self._shown = False

    def start(self) -> None:
        if _isatty(self._out):
            self._task = asyncio.get_running_loop().create_task(self._tick())
        else:
            self._out.write(f"{self._text} (at most {self._limit:g} s)\n")
            self._out.flush()

    async def _tick(self) -> None:
        seconds = 0
        while True:
            _raw(self._out, "\r\x1b[K")  # pairkit's own control sequence: past the filter
            self._out.write(f"{self._text}... {seconds} s")
            self._out.flush()
            self._shown = True
            await asyncio.sleep(1.0)
            seconds += 1

    def clear(self) -> None:
        """Stop and erase the line (before a question, a result or an error)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._shown:
            with contextlib.suppress(OSError, ValueError):
                _raw(self._out, "\r\x1b[K")
                self._out.flush()
            self._shown = False


def _raw(stream: Any, text: str) -> None:
    """Write pairkit's own control characters: past :class:`~cli.show.SafeStream`, which shows
    everything else (a peer's name in the status line) without letting the terminal obey it."""
    getattr(stream, "raw_write", stream.write)(text)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
