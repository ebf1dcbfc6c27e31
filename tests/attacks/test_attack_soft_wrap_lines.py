"""Attack review atk22, finding A (medium): a peer's one-line text padded to the end of the
terminal's row made the next row, as the terminal wraps it, a line of the peer's choosing.

The one-line rules (atk21 finding 1: every reason decodes as one line; :func:`cli.show.safe`)
keep spaces: a stranger connecting to ``pairkit host`` over TCP, with no pairing and no prompt,
sent one Abort whose reason was "bye", spaces to the end of the owner's 80-column row, then
"paired with Paul's laptop by pin as member; session ...": one line of stderr, two rows on
the terminal, the second as pairkit's own lines look.  The stranger knows the length of what
the host writes before its reason (it names the stranger's own source port).  Now, on a
terminal, every row a line is folded into after the first starts with a mark
(:data:`cli.show.FOLD_MARK`) no line of pairkit's starts with.  Played against a real ``pairkit
host`` on an 80-column pseudo-terminal, the stranger over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from pathlib import Path

import pytest

from pairkit.cli.show import FOLD_MARK, SafeStream, TerminalRow
from pairkit.driver import MessagePipe
from pairkit.pairing import wire
from pairkit.pairing.errors import ErrorCode
from pairkit.transports.tcp import tcp_connect
from tests.cli_helpers import free_port, make_devices
from tests.pty_harness import PtyProcess, terminal_rows

pytestmark = pytest.mark.timeout(60)

COLUMNS = 80
FORGED = "paired with Paul's laptop by pin as member; session 6cc3-6c5c-59a2-6618"


async def test_a_strangers_padded_abort_reason_makes_no_row_of_its_own(tmp_path: Path) -> None:
    paul = make_devices(tmp_path, {"paul": "Paul's laptop"})["paul"]
    port = free_port()
    host = PtyProcess(paul.home, "host", "-t", f"tcp:127.0.0.1:{port}", "-m", "pin",
                      "--pin", "482913", columns=COLUMNS)
    try:
        await asyncio.to_thread(host.expect, "waiting")
        link = await tcp_connect("127.0.0.1", port, timeout=10)
        try:
            own_port = link._writer.get_extra_info("sockname")[1]  # type: ignore[attr-defined]
            # what the host writes before the reason (the aim is checked below)
            prefix = f"error: guest 127.0.0.1:{own_port}: the peer stopped: "
            reason = "bye"
            reason += " " * (COLUMNS - len(prefix) - len(reason)) + FORGED
            assert len(reason) <= 200
            pipe = MessagePipe(link, guest=True)
            await pipe.send(wire.Abort(code=ErrorCode.UNKNOWN, reason=reason).encode())
            await asyncio.to_thread(host.expect, "the peer stopped: bye")
            shown = await asyncio.to_thread(host.settle, 1.0)
        finally:
            with contextlib.suppress(Exception):
                await link.close()
    finally:
        host.close()
    line = next(x for x in host.output.split("\n") if "the peer stopped: bye" in x)
    # The attack was aimed right: unfolded, the forged text would start the second row.
    assert line.startswith(prefix), (line, prefix)
    rows = terminal_rows(host.output, COLUMNS)
    forged = [row for row in rows if row.lstrip().startswith("paired with")]
    assert forged == [], f"a row of the stranger's making: {forged}\n{shown}"
    assert any(row.startswith(FOLD_MARK + "paired with") for row in rows), rows


class _Terminal:
    """A text stream that says it is a terminal COLUMNS wide (the fold reads its size)."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return _FD


#: the descriptor the stand-in terminal gives (no real one: its size is answered below)
_FD = 1_000_001


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> _Terminal:
    real = os.get_terminal_size

    def size(fd: int = 1) -> os.terminal_size:
        return os.terminal_size((COLUMNS, 24)) if fd == _FD else real(fd)

    monkeypatch.setattr(os, "get_terminal_size", size)
    return _Terminal()


@pytest.mark.parametrize("padding", [" ", "\u2800", "\u3164", "-"],
                         ids=["space", "braille-blank", "hangul-filler", "dash"])
def test_whatever_pads_the_row_the_next_row_starts_with_the_mark(
    terminal: _Terminal, padding: str
) -> None:
    stream = SafeStream(terminal)
    stream.write("error: the peer stopped: bye" + padding * 60 + FORGED + "\n")
    rows = terminal.text.split("\n")
    assert all(len(row) <= COLUMNS for row in rows), rows
    assert [r for r in rows[1:] if r and not r.startswith(FOLD_MARK)] == [], rows


def test_wide_characters_count_two_columns_and_a_full_row_is_not_folded(
    terminal: _Terminal,
) -> None:
    stream = SafeStream(terminal)
    stream.write("x" * COLUMNS + "\n")  # exactly the width: the terminal does not wrap it
    stream.write("电" * (COLUMNS // 2) + "脑\n")  # 82 columns: one more row
    rows = terminal.text.split("\n")
    assert rows[0] == "x" * COLUMNS
    assert rows[1] == "电" * (COLUMNS // 2) and rows[2] == FOLD_MARK + "脑", rows


def test_a_row_written_in_several_writes_is_folded_where_it_ends(terminal: _Terminal) -> None:
    stream = SafeStream(terminal)
    for _ in range(9):
        stream.write("0123456789")
    stream.write("\n")
    assert terminal.text == "0123456789" * 8 + "\n" + FOLD_MARK + "0123456789\n"


def test_not_a_terminal_nothing_is_folded() -> None:
    out = io.StringIO()
    SafeStream(out).write("y" * 300 + "\n")
    assert out.getvalue() == "y" * 300 + "\n"


def test_pairkits_own_line_to_copy_is_not_folded_and_the_next_row_counts_from_zero(
    terminal: _Terminal,
) -> None:
    stream = SafeStream(terminal)
    link = "QR code (valid 60 s): pairkit:qr?v=1&k=" + "A" * 120
    stream.write_whole(link + "\n")
    stream.write("z" * COLUMNS + "\n")  # a full row after it: not folded either
    assert terminal.text == link + "\n" + "z" * COLUMNS + "\n"


def test_after_the_person_pressed_enter_a_row_counts_from_zero(terminal: _Terminal) -> None:
    stream = SafeStream(terminal)
    stream.write("Allow George as [g]uest for 1 hour(s), as [m]ember, or [r]efuse? ")
    stream.mark_line_start()  # the terminal echoed the Enter
    stream.write("  allowed as guest for one hour; the rest of the row fits" + "\n")
    assert FOLD_MARK not in terminal.text


# -- attack review atk22b: what terminals draw wider than one column each, and two streams ------


def _drawn(row: str, *, ambiguous_wide: bool) -> int:
    """The columns a modern terminal draws ``row`` in, counting on the wide side: a character
    followed by U+FE0F (emoji presentation) two, East Asian wide two, ambiguous two when
    ``ambiguous_wide`` (a CJK locale), combining marks none."""
    import unicodedata

    width = 0
    for i, ch in enumerate(row):
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
            continue
        eaw = unicodedata.east_asian_width(ch)
        emoji = row[i + 1:i + 2] == "\ufe0f"
        width += 2 if emoji or eaw in ("W", "F") or (ambiguous_wide and eaw == "A") else 1
    return width


@pytest.mark.parametrize(("padding", "locale"), [
    ("\u263a\ufe0f", "en_US.UTF-8"),  # ☺️: text-presentation base drawn as an emoji, 2 wide
    ("\u2460", "ja_JP.UTF-8"),  # ①: ambiguous width, 2 wide in a CJK locale
    ("\u0434", "zh_CN.UTF-8"),  # Cyrillic д: ambiguous too
], ids=["emoji-selector", "circled-digit-cjk", "cyrillic-cjk"])
def test_characters_a_terminal_draws_two_wide_are_counted_so(
    terminal: _Terminal, monkeypatch: pytest.MonkeyPatch, padding: str, locale: str
) -> None:
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", locale)
    stream = SafeStream(terminal)
    stream.write("error: peer said: " + padding * 40 + FORGED + "\n")
    rows = terminal.text.rstrip("\n").split("\n")
    wide = [r for r in rows if _drawn(r, ambiguous_wide=True) > COLUMNS]
    assert wide == [], wide  # no row the terminal wraps again, with no mark
    assert all(r.startswith(FOLD_MARK) for r in rows[1:]), rows


def test_cyrillic_is_one_column_outside_a_cjk_locale(
    terminal: _Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting on the wide side only where the terminal draws so: a Russian line is not
    folded at half the width."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "ru_RU.UTF-8")
    stream = SafeStream(terminal)
    stream.write("\u0434" * COLUMNS + "\n")
    assert terminal.text == "\u0434" * COLUMNS + "\n"


def test_two_streams_on_one_terminal_count_one_row(terminal: _Terminal) -> None:
    """stdout left mid-row ("Compare on both devices: "), then stderr writes a peer's words:
    both count the same row, so stderr folds where the terminal would wrap."""
    row = TerminalRow()
    out, err = SafeStream(terminal, row=row), SafeStream(terminal, row=row)
    out.write("Compare on both devices: ")
    err.write("x" * (COLUMNS - len("Compare on both devices: ")) + FORGED + "\n")
    rows = terminal.text.rstrip("\n").split("\n")
    assert rows[0] == "Compare on both devices: " + "x" * (COLUMNS - 25), rows
    assert rows[1] == FOLD_MARK + FORGED, rows


def test_stdout_and_stderr_on_one_pty_are_one_terminal_and_a_pipe_is_not() -> None:
    from pairkit.cli.show import same_terminal

    master, slave = os.openpty()
    other_master, other_slave = os.openpty()
    r, w = os.pipe()
    files = [os.fdopen(fd, "w", closefd=True) for fd in (slave, os.dup(slave), other_slave, w)]
    try:
        one, same, other, pipe = files
        assert same_terminal(one, same)
        assert not same_terminal(one, other)
        assert not same_terminal(one, pipe)
    finally:
        for f in files:
            f.close()
        for fd in (master, other_master, r):
            os.close(fd)


# -- attack review atk23: characters newer Unicode made wide, and a terminal of no known size -----


def _drawn_by_a_newer_terminal(row: str) -> int:
    """The columns a terminal following a newer Unicode than this Python's may draw ``row`` in:
    Unicode 16 made 188 characters wide (U+2630-2637, U+268A-268F, U+4DC0-4DFF, U+1D300-1D356,
    U+1D360-1D376), each one column in Python 3.11's tables (Unicode 14)."""
    newly_wide = ((0x2630, 0x2637), (0x268A, 0x268F), (0x4DC0, 0x4DFF), (0x1D300, 0x1D356),
                  (0x1D360, 0x1D376))
    return sum(2 if any(lo <= ord(ch) <= hi for lo, hi in newly_wide) else 1 for ch in row)


@pytest.mark.parametrize("padding", ["\u4dc0", "\u2630", "\U0001d360"],
                         ids=["hexagram", "trigram", "counting-rod"])
def test_characters_newer_unicode_made_wide_are_counted_two(
    terminal: _Terminal, monkeypatch: pytest.MonkeyPatch, padding: str
) -> None:
    """atk23 F3: a stranger's reason of spaces then 38 hexagrams, one column each to this
    Python, two to a terminal on Unicode 16: the terminal wrapped the row again itself and the
    forged line came unmarked.  Whatever a newer table may draw wide is counted two."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    stream = SafeStream(terminal)
    stream.write("error: peer said: bye" + " " * 59 + padding * 38 + FORGED + "\n")
    rows = terminal.text.rstrip("\n").split("\n")
    assert [r for r in rows if _drawn_by_a_newer_terminal(r) > COLUMNS] == [], rows
    assert all(r.startswith(FOLD_MARK) for r in rows[1:]), rows


def test_latin_text_is_still_one_column_a_character(terminal: _Terminal) -> None:
    """Counting on the wide side stops where every table agrees: accented Latin, Greek and
    Cyrillic are one column, so a person's name is not folded at half the row."""
    stream = SafeStream(terminal)
    stream.write("é" * 40 + "λ" * 20 + "д" * 20 + "\n")
    assert terminal.text == "é" * 40 + "λ" * 20 + "д" * 20 + "\n"


def test_a_terminal_of_no_known_size_is_folded_at_eighty_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """atk23 F4: a tty that reports 0 columns (a serial console, `screen /dev/ttyUSB0` to a Pi;
    a pty nobody sized) was taken for no terminal, and nothing was folded."""
    real = os.get_terminal_size

    def size(fd: int = 1) -> os.terminal_size:
        return os.terminal_size((0, 0)) if fd == _FD else real(fd)

    monkeypatch.setattr(os, "get_terminal_size", size)
    tty = _Terminal()
    SafeStream(tty).write("error: the peer stopped: bye" + " " * 52 + FORGED + "\n")
    rows = tty.text.rstrip("\n").split("\n")
    assert rows[1:] == [FOLD_MARK + FORGED], rows


def test_spacing_combining_marks_take_their_column(terminal: _Terminal) -> None:
    """Attack review atk23b, finding F1: a spacing combining mark (category Mc, with a
    combining class: U+1D165 MUSICAL SYMBOL COMBINING STEM) was counted no column, as a mark
    drawn over the character before it is; terminals (wcwidth) give it one.  46 of them
    between "bye" and the forged text made a line pairkit counted 76 columns and the terminal
    drew in 122: its second row was the stranger's, unmarked."""
    stream = SafeStream(terminal)
    stream.write("error: peer said: bye" + "\U0001d165" * 46 + FORGED + "\n")
    rows = terminal.text.rstrip("\n").split("\n")
    assert len(rows) > 1 and all(r.startswith(FOLD_MARK) for r in rows[1:]), rows
    assert [r for r in rows if len(r) > COLUMNS] == [], rows  # one column each, at least
