"""Attack review atk21b, finding A (medium): the progress line wrote a host's file name raw.

`pairkit get PEER --all` writes a hostile host's file name to the terminal
raw, past SafeStream.

cli/main.py get: with --all, the names fetched are the host's listing (box["listed"]), and each
is fetched with progress=Progress(wanted).  cli/show.py Progress.__call__ writes its line with
``stream.raw_write(f"\\r\\x1b[K{self.line(...)}")`` -- raw_write is SafeStream's door for
pairkit's *own* control characters, and self.line() starts with self.name, the host's file
name.  On a terminal (stderr a tty: the progress line is on) every ESC/OSC/BEL in a shared
file's name reaches the guest's terminal as it came: set the title, clear the screen, write
the clipboard (OSC 52), redraw the lines above.  A file name on the host's disk is enough: no
hostile code.
"""
from __future__ import annotations

import asyncio
import io
from pathlib import Path

from pairkit.cli.show import Progress, SafeStream
from tests.cli_helpers import Lab
from tests.pty_harness import on_terminal

PIN = "482913"
HOSTILE = "a\x1b]0;you were pwned\x07\x1b[2Jb.txt"
INTERPRETED = ("\x1b]", "\x07", "\x1b[2J")
#: a name --all no longer fetches (session 22: finding B's rule, bidirectional controls too)
#: that a terminal would interpret: a right-to-left override, which reorders the line
BIDI = "report\u202etxt.exe"
#: a name --all still fetches whose character the progress line must not write as it is: a
#: zero-width space (format, Cf), shown as U+FFFD
ZERO_WIDTH = "report\u200btxt.exe"


def test_progress_writes_the_name_past_safestream() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    inner = Tty()
    stream = SafeStream(inner)
    Progress(HOSTILE, stream=stream, enabled=True)(10, 10)
    shown = inner.getvalue()
    assert not any(c in shown for c in INTERPRETED), repr(shown)


async def test_get_all_on_a_terminal_shows_a_hostile_file_name_raw(
    lab: Lab, tmp_path: Path
) -> None:
    george = await lab.guest_of_a_share(tmp_path / "share",
                                        {HOSTILE: b"x" * 5000, BIDI: b"y" * 5000,
                                         ZERO_WIDTH: b"z" * 5000}, PIN)
    out = tmp_path / "out"
    out.mkdir()
    rc, screen = await asyncio.to_thread(on_terminal, george.home, None, "get", "Paul's phone",
                                         "--all", "-o", str(out))
    assert rc == 0, screen
    # the names with escapes or a bidirectional control are not fetched with --all (finding
    # B); the other one is, its progress line drawn, and shown safe
    assert sorted(p.name for p in out.iterdir()) == [ZERO_WIDTH], screen
    assert "5 kB/5 kB 100.0%" in screen, repr(screen)
    assert "report\ufffdtxt.exe" in screen, repr(screen)
    assert not any(c in screen for c in (*INTERPRETED, "\u202e", "\u200b")), repr(screen)
