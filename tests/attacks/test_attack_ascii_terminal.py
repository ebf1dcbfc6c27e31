"""Attack review atk21, finding 3 (low): with an ASCII stdio encoding, click wrote around
:class:`~pairkit.cli.show.SafeStream`.

``pairkit``'s main() wraps stdout and stderr in SafeStream: nothing a peer sent reaches the
terminal as a control sequence, and a stderr line is cut at :data:`~pairkit.cli.show.MAX_LINE`.
click.echo writes to ``sys.stdout`` as it is only when its encoding is not ASCII; with
``PYTHONIOENCODING=ascii``, or ``LC_ALL=C`` without UTF-8 mode, it took the inner binary
``buffer`` that SafeStream handed on and wrapped it in a text stream of its own, so every
click.echo went around the filter: ``pairkit ls`` put a hostile host's file name on the terminal
raw (a window-title sequence, a screen clear) and no stderr line was cut.  Now SafeStream's
``buffer`` is its own, whose bytes pass through the filter too (shell completion writes bytes
there), ``writelines`` filters, ``detach`` is not handed on, and what the stream's encoding
cannot carry is written as ``?``: a person with ``LC_ALL=C`` reads the listing, and no
traceback.

Real code: a ``pairkit host`` process sharing the files, ``pairkit ls`` on a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import click
import pytest

from pairkit.cli.show import MAX_LINE, SafeStream, safe
from tests.cli_helpers import Lab
from tests.pty_harness import on_terminal

PIN = "482913"
#: a file name that sets the terminal's title, rings its bell and clears its screen
HOSTILE = "a\x1b]0;you were pwned\x07\x1b[2Jb.txt"
#: a name a person with an ASCII terminal must still be shown (as ``caf?.txt``)
ACCENTED = "café.txt"
#: the stdio encodings under which click looked for the inner buffer, and UTF-8 for contrast
ENCODINGS: dict[str, dict[str, str]] = {
    "PYTHONIOENCODING=ascii": {"PYTHONIOENCODING": "ascii"},
    "LC_ALL=C": {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""},
    "utf-8": {"PYTHONIOENCODING": "utf-8"},
}
ASCII_ENCODINGS = [name for name in ENCODINGS if name != "utf-8"]
INTERPRETED = ("\x1b", "\x07", "\x9b")
#: the one control sequence pairkit itself sends (it erases its "waiting for ..." line)
OWN_ERASE = "\x1b[K"


def shown(text: str, encoding: str) -> str:
    """``text`` as the terminal should show it: made safe, then what the encoding carries."""
    return safe(text).encode(encoding, "replace").decode(encoding)


async def test_ls_shows_a_hostile_file_name_harmlessly_whatever_the_encoding(
    lab: Lab, tmp_path: Path
) -> None:
    george = await lab.guest_of_a_share(tmp_path / "share",
                                        {HOSTILE: b"x" * 10, ACCENTED: b"y"}, PIN)
    for name, env in ENCODINGS.items():
        rc, screen = await asyncio.to_thread(on_terminal, george.home, env, "ls",
                                             "Paul's phone")
        assert rc == 0, (name, screen)
        assert not any(c in screen.replace(OWN_ERASE, "") for c in INTERPRETED), (name, screen)
        encoding = "utf-8" if name == "utf-8" else "ascii"
        assert shown(HOSTILE, encoding) in screen, (name, screen)
        assert shown(ACCENTED, encoding) in screen, (name, screen)


@pytest.mark.parametrize("name", ASCII_ENCODINGS)
async def test_a_long_stderr_line_is_cut_and_filtered_with_an_ascii_encoding(
    tmp_path: Path, name: str
) -> None:
    """click's own usage error carries the option as typed: 700 characters and an escape."""
    option = "--x\x1b[2J" + "x" * 700
    rc, screen = await asyncio.to_thread(on_terminal, tmp_path, ENCODINGS[name], "whoami",
                                         option)
    assert rc == 2, screen
    assert "error: No such option" in screen and "characters cut)" in screen, screen
    assert not any(c in screen for c in INTERPRETED), screen
    assert max(len(line) for line in screen.split("\n")) <= MAX_LINE, screen


def test_safestream_hands_out_no_way_around_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process: what click.echo (text, and bytes as shell completion writes them),
    writelines, print and the stream's buffer do with an ASCII stream wrapped."""
    raw = io.BytesIO()
    inner = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    stream = SafeStream(inner, max_line=MAX_LINE)
    assert stream.buffer is not inner.buffer
    with pytest.raises(AttributeError):
        stream.detach()  # would hand out the inner buffer
    monkeypatch.setattr(sys, "stdout", stream)
    click.echo(f"1  {HOSTILE}", color=True)  # as on a terminal: click strips nothing
    click.echo(f"2  {HOSTILE}".encode(), color=True)  # bytes: to the buffer click finds
    stream.writelines([f"3  {ACCENTED}\n", "4  \x1b[31mred\n"])
    data = "5  caf\u00e9 \x1b[2J\n".encode()
    stream.buffer.write(data[:7])  # é cut between two writes
    stream.buffer.write(data[7:])
    print("6  " + "e" * 700)
    lines = raw.getvalue().decode("ascii").split("\n")
    hostile = shown(HOSTILE, "ascii")
    assert lines[:5] == [f"1  {hostile}", f"2  {hostile}", "3  caf?.txt", "4  ?[31mred",
                         "5  caf? ?[2J"]
    assert len(lines[5]) <= MAX_LINE and lines[5].endswith("characters cut)")
    assert stream.isatty() is False and stream.encoding == "ascii"  # read as the inner's
