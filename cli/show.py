"""How the CLI shows things: a transfer's progress line, a guest's standing in words, text
from a peer made safe for a terminal, and the demos' numbered narration."""

from __future__ import annotations

import codecs
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

import click

from pairkit.pairing.cloud import Role
from pairkit.pairing.service import Membership

#: what a character the terminal must not receive from a peer is shown as
REPLACEMENT = "\ufffd"
#: Unicode categories a terminal interprets rather than shows: control characters (C0, C1,
#: DEL: escape sequences, carriage return, backspace), format characters (bidirectional
#: overrides and isolates, zero-width joiners), line and paragraph separators, unassigned and
#: private-use code points and lone surrogates
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn", "Co", "Cs"})


def safe(text: object, *, lines: bool = False) -> str:
    """``text`` with every character a terminal would interpret replaced by U+FFFD, so that
    nothing a peer sent (a name, a file name, a reason) can clear the screen, move the cursor,
    recolour, reorder or fake a line of what the owner reads (issue 17, finding 5).

    ``lines``: keep newlines and tabs (pairkit's own multi-line messages); otherwise the text is
    made one line, as a peer's name must be."""
    keep = "\n\t" if lines else ""
    return "".join(
        ch if ch in keep or unicodedata.category(ch) not in _UNSAFE else REPLACEMENT
        for ch in str(text)
    )


#: the longest line pairkit writes to stderr, in characters: a longer one (an error text that
#: carries a peer's words, whatever made it) is cut there and says how much was cut (atk20c
#: finding 2).  pairkit's own lines are far shorter; the QR code's link is under 200.
MAX_LINE = 500
#: room kept at the end of a cut line for the note saying so
_CUT_NOTE_ROOM = 40
#: what SafeStream does not hand on from the stream it wraps: each is a way to write around it
#: (its ``buffer`` is replaced by :class:`SafeBuffer`).  ``fileno`` stays: a number, asked for
#: isatty-like checks, the terminal's size and to point a closed stdout at /dev/null; writing
#: through it is never done by accident.
_HIDDEN = frozenset({"detach", "raw"})
#: encodings that carry every character :func:`safe` lets through
_UNICODE = frozenset({"utf-8", "utf-16", "utf-32"})
#: what starts each further row a line is folded into on a terminal (:meth:`SafeStream._fold`);
#: no line of pairkit's own starts with it.  The second on a terminal that cannot show the first
FOLD_MARK = "  \u21b3 "
FOLD_MARK_ASCII = "  ~> "
#: the width a terminal is folded at when it reports none (0 columns: a serial console, a
#: pty nobody sized), as terminals start (attack review atk23, finding F4)
_UNSIZED_WIDTH = 80
#: from here on, Unicode's newer versions made characters wide that Python 3.11's tables
#: (Unicode 14) call narrow: U+2630 trigrams, U+4DC0 hexagrams, U+1D360 counting rods in
#: Unicode 16 (atk23 F3); everything before it is the same in every version's tables
_NEWLY_WIDE_FROM = "\u1100"


#: U+FE0F VARIATION SELECTOR-16: the character before it is drawn as an emoji, two columns
_EMOJI_SELECTOR = "\ufe0f"
#: locales whose terminals draw East Asian ambiguous-width characters two columns wide
_CJK = ("zh", "ja", "ko")


class TerminalRow:
    """The columns the terminal's current row takes so far, shared by pairkit's stdout and
    stderr when both are the same terminal (attack review atk22b, finding F2: each counting its
    own, a line stdout left unfinished made stderr fold late)."""

    def __init__(self) -> None:
        self.cells = 0


def same_terminal(a: Any, b: Any) -> bool:
    """Whether the streams ``a`` and ``b`` write to one terminal (the same tty device)."""
    try:
        if not (a.isatty() and b.isatty()):
            return False
        return bool(os.fstat(a.fileno()).st_rdev == os.fstat(b.fileno()).st_rdev)
    except (AttributeError, OSError, ValueError):
        return False


def _ambiguous_wide() -> bool:
    """Whether East Asian ambiguous-width characters (①, Greek, Cyrillic, box drawing) are
    drawn two columns wide: in a Chinese, Japanese or Korean locale."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = os.environ.get(name)
        if value:
            return value.lower().startswith(_CJK)
    return False


def _cells(ch: str, ambiguous_wide: bool = False) -> int:
    """The columns a terminal gives ``ch``, on the wide side when terminals differ (a fold too
    early is harmless, one too late is the hole: atk22b finding F1): 2 for a wide or
    full-width character (East Asian Width W or F) and, when ``ambiguous_wide``, an ambiguous
    one (A), 0 for a non-spacing or enclosing mark (Mn, Me), and 2 for any other character
    from U+1100 on, where a newer Unicode than this Python's may have made it wide (atk23 F3:
    38 hexagrams, one column each here, two on a terminal following Unicode 16, put a row of
    the peer's making on the screen unmarked); 1 otherwise (Latin, Greek, Cyrillic and the
    rest below U+1100: a person's name is not folded at half the row).  A character followed
    by U+FE0F is counted 2 by the caller."""
    if ch < "\u00a1":
        return 1
    # Only a mark drawn over the character before it (Mn, Me) takes no column: a spacing
    # combining mark (Mc) takes one, combining class or not (atk23b F1: U+1D165 counted none)
    if unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    if ch >= _NEWLY_WIDE_FROM:
        return 2
    eaw = unicodedata.east_asian_width(ch)
    return 2 if eaw in ("W", "F") or (ambiguous_wide and eaw == "A") else 1


def _width(text: str, ambiguous_wide: bool) -> int:
    """The columns ``text`` (no newline) takes, as :meth:`SafeStream._fold` counts them."""
    return sum(
        2 if text[i + 1:i + 2] == _EMOJI_SELECTOR and _cells(ch, ambiguous_wide) else
        _cells(ch, ambiguous_wide)
        for i, ch in enumerate(text)
    )


class SafeStream:
    """A text stream that shows everything and interprets nothing: each write passes through
    :func:`safe` (newlines and tabs kept).  The ``pairkit`` command wraps its stdout and stderr
    in it, so no text from a peer (a name, a file name, a reason in an error) reaches the
    terminal as a control sequence, wherever it is printed.  :meth:`raw_write` is for pairkit's
    own control characters (the progress line's carriage return).

    ``max_line`` (stderr's): a line longer than that is cut to it, ending in a note of how many
    characters were cut, however many writes it came in.

    Nothing here leads around it (atk21 finding 3): with an ASCII stdio encoding
    (``PYTHONIOENCODING=ascii``, ``LC_ALL=C`` without UTF-8 mode) click.echo writes to
    ``buffer``, in a text stream of its own, and shell completion writes bytes there: it is a
    :class:`SafeBuffer`, whose bytes pass through :meth:`write` too; so does ``writelines``;
    ``detach`` is not handed on (:data:`_HIDDEN`).  What the stream's encoding cannot carry
    (an accent, U+FFFD, on an ASCII stream) is written as ``?``, never as an error, nor as
    UTF-8 bytes some of which an 8-bit terminal takes for C1 controls; nor is a
    character whose encoding has a byte in 0x80-0x9F (atk21b finding C): a person with
    ``LC_ALL=C`` reads the rest.
    """

    def __init__(
        self, inner: Any, *, max_line: int | None = None, row: TerminalRow | None = None
    ) -> None:
        self._inner = inner
        self._max_line = max_line
        self._column = 0  # characters of the current line written so far
        self._cut = 0  # characters of the current line left out so far
        #: the terminal row's columns taken so far (folding), shared with the other stream
        #: on the same terminal (:class:`TerminalRow`)
        self._row = row if row is not None else TerminalRow()
        self.buffer = SafeBuffer(self)

    def write(self, text: str) -> int:
        return self._write(text, fold=True)

    def write_whole(self, text: str) -> int:
        """Write ``text`` as :meth:`write` does but never folded: for pairkit's own lines that
        a person copies whole (the QR code's link), which hold no peer's words."""
        return self._write(text, fold=False)

    def _write(self, text: str, *, fold: bool) -> int:
        if not isinstance(text, str):  # a text stream takes text (click probes with bytes)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        shown = safe(text, lines=True)
        if self._max_line is not None:
            shown = self._cut_lines(shown, self._max_line)
        width = self._terminal_width() if fold else None
        if width is not None:
            shown = self._fold(shown, width)
        elif not fold:  # unfolded, the row still moves: the next fold counts from its end
            _, newline, tail = shown.rpartition("\n")
            start = 0 if newline else self._row.cells
            self._row.cells = start + _width(tail, _ambiguous_wide())
        self._inner.write(self._encodable(shown))
        return len(text)

    def mark_line_start(self) -> None:
        """The cursor is at the start of a row, put there by something that did not write
        here (the person pressed Enter after a prompt: the terminal echoed the newline)."""
        self._row.cells = 0

    def _terminal_width(self) -> int | None:
        """The terminal's width in columns when this stream is a terminal's (80 when it
        reports none), else None."""
        try:
            if not self._inner.isatty():
                return None
            columns = os.get_terminal_size(self._inner.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return None
        return columns if columns > 0 else _UNSIZED_WIDTH

    def _fold(self, text: str, width: int) -> str:
        """``text`` with every row the terminal would wrap it into after the first started by
        :data:`FOLD_MARK`, so that no row a line wraps into looks like a line of its own.

        One line of pairkit's may carry a peer's words (a reason, a name, a message), and
        one_line text still holds spaces: padded to the end of the row, it put words of the
        peer's choosing at the start of the next row, as a line of pairkit's own shows (attack
        review atk22, finding A: "paired with Paul's laptop by pin as member" under a stranger's
        Abort).  No line pairkit writes starts with the mark."""
        mark = self._fold_mark()
        ambiguous_wide = _ambiguous_wide()
        out: list[str] = []
        cells = self._row.cells
        for i, ch in enumerate(text):
            if ch == "\n":
                cells = 0
                out.append(ch)
                continue
            if ch == "\t":
                need = 8 - cells % 8
            else:
                need = _cells(ch, ambiguous_wide)
                if need and text[i + 1:i + 2] == _EMOJI_SELECTOR:
                    need = 2  # drawn as an emoji: two columns (atk22b finding F1)
            if need and cells and cells + need > width:
                out.append("\n" + mark)
                cells = _width(mark, ambiguous_wide)
            out.append(ch)
            cells += need
        self._row.cells = cells
        return "".join(out)

    def _fold_mark(self) -> str:
        encoding = getattr(self._inner, "encoding", None)
        try:
            FOLD_MARK.encode(encoding if isinstance(encoding, str) else "utf-8")
        except (LookupError, UnicodeEncodeError):
            return FOLD_MARK_ASCII
        return FOLD_MARK

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def _encodable(self, text: str) -> str:
        """``text`` with what the wrapped stream's encoding cannot carry as ``?`` (its own
        error handler may be strict, or surrogateescape: either raises for U+FFFD), and, on a
        non-Unicode encoding, each character it encodes with a byte in 0x80-0x9F as ``?`` too:
        a printable character can (U+2321 is 0x9B in KOI8-R, U+203A in CP1251 and CP1252), and
        an 8-bit terminal takes 0x9B for CSI, as ESC [ (atk21b finding C)."""
        encoding = getattr(self._inner, "encoding", None)
        if not isinstance(encoding, str):
            return text  # a stream of text only (StringIO)
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            return text
        if name in _UNICODE:
            return text
        return "".join(_eight_bit(ch, name) for ch in text)

    def _cut_lines(self, text: str, max_line: int) -> str:
        room = max(1, max_line - _CUT_NOTE_ROOM)
        out: list[str] = []
        for i, piece in enumerate(text.split("\n")):
            if i:  # a line ends here
                if self._cut:
                    out.append(f" ... ({self._cut} characters cut)")
                out.append("\n")
                self._column = self._cut = 0
            keep = piece[: max(0, room - self._column)]
            self._column += len(keep)
            self._cut += len(piece) - len(keep)
            out.append(keep)
        return "".join(out)

    def raw_write(self, text: str) -> int:
        if "\r" in text or "\n" in text:  # pairkit's own status line starts again
            self._column = self._cut = self._row.cells = 0
        return int(self._inner.write(self._encodable(text)))

    def __getattr__(self, name: str) -> Any:
        if name in _HIDDEN:
            raise AttributeError(f"SafeStream hands out no {name!r}: all writes pass through it")
        return getattr(self._inner, name)


def _eight_bit(ch: str, encoding: str) -> str:
    """``ch`` if ``encoding`` carries it with no byte in the C1 range 0x80-0x9F, else ``?``."""
    try:
        data = ch.encode(encoding)
    except UnicodeEncodeError:
        return "?"
    return "?" if any(0x80 <= b <= 0x9F for b in data) else ch


class SafeBuffer:
    """:class:`SafeStream`'s ``buffer``: bytes written here are read as UTF-8 (what click
    writes to a buffer it finds, as it does on an ASCII terminal, and shell completion's lines),
    a character cut between two writes kept for the next, and written to the SafeStream as
    text."""

    def __init__(self, text: SafeStream) -> None:
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if isinstance(data, str):  # a binary stream takes bytes (click probes with text)
            raise TypeError("a bytes-like object is required, not 'str'")
        chunk = bytes(data)
        self._text.write(self._decoder.decode(chunk))
        return len(chunk)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._text.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return bool(self._text.isatty())

    def fileno(self) -> int:
        return int(self._text.fileno())

    @property
    def closed(self) -> bool:
        return bool(self._text.closed)


def human_size(n: float) -> str:
    """``12 B``, ``35 kB``, ``2.00 MB``, ``1.50 GB`` (powers of 1000, as drives are sold), so a
    tiny file does not show as ``0.00 MB``."""
    if n < 999.5:
        return f"{n:.0f} B"
    if n < 999.5e3:
        return f"{n / 1e3:.0f} kB"
    if n < 999.995e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"


class Progress:
    """A progress line on a terminal: bytes, rate, time left.

    The rate counts from the first chunk that arrived: neither the wait for the owner's answer
    nor the bytes a resumed transfer already had make it up.  ``clock`` is for tests.
    """

    def __init__(self, name: str, *, stream: Any = None, enabled: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.clock = clock
        #: when the first chunk came, and how many bytes the file then had
        self.t0: float | None = None
        self.first: int | None = None
        self._last = 0.0

    def rate(self, done: int, now: float) -> float | None:
        """Bytes per second since the first chunk, or None before there is anything to say."""
        if self.t0 is None or self.first is None or now <= self.t0 or done <= self.first:
            return None
        return (done - self.first) / (now - self.t0)

    def line(self, done: int, total: int, now: float) -> str:
        """``film.mp4: 7.02 MB/10.00 MB  70.2% 1.00 MB/s    3 s left``: the name shown
        :func:`safe`, one line, whatever stream the line goes to."""
        pct = 100 * done / total if total else 100.0
        text = f"{safe(self.name)}: {human_size(done)}/{human_size(total)} {pct:5.1f}%"
        rate = self.rate(done, now)
        if rate is not None:
            text += f" {human_size(rate)}/s {(total - done) / rate:4.0f} s left"
        return text

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first, self.t0 = done, now
        if not self.enabled:
            return
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        # the one control sequence pairkit itself sends goes past the terminal's filter; the
        # line, which starts with a peer's file name, through it (atk21b finding A)
        getattr(self.stream, "raw_write", self.stream.write)("\r\x1b[K")
        self.stream.write(self.line(done, total, now))
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def role_text(m: Membership, *, now: float | None = None) -> str:
    """The role `pairkit join` reports: a guest's end with its date when it is not today
    (attack review atk23, finding F6: "until 00:34" read the same for 1 hour and for 25)."""
    if m.role is Role.MEMBER:
        # the host's cloud name, shown one line (atk21b finding B)
        return f"member of {safe(m.cloud_name) if m.cloud_name else 'the cloud'}"
    if m.role is Role.GUEST and m.expires is not None:
        end = time.localtime(m.expires)
        today = time.localtime(time.time() if now is None else now)
        same_day = (end.tm_year, end.tm_yday) == (today.tm_year, today.tm_yday)
        return f"guest until {time.strftime('%H:%M' if same_day else '%Y-%m-%d %H:%M', end)}"
    return "guest"




PEER_COLUMNS = ("NAME", "ID", "THEIR ROLE", "UNTIL", "YOUR ROLE", "UNTIL", "VIA", "PREKEYS",
                "FINGERPRINT")


def _until(role: str | None, expires: float | None, now: float) -> str:
    if role is None:
        return "-"
    if expires is None:
        return "always"
    if expires <= now:
        return "expired"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(expires))


def peer_table(rows: list[dict[str, Any]], *, now: float | None = None) -> list[str]:
    """``pairkit peers``: a header, then one line per peer, columns padded to their widest
    cell (a peer's name is shown safe, and cut at 28 characters); a warning about a peer goes
    on the line after it."""
    now = time.time() if now is None else now
    cells = []
    for r in rows:
        name = safe(r["name"])
        name = name if len(name) <= 28 else name[:27] + "…"
        if not r["authenticated"]:
            name += " (unauthenticated)"
        cells.append((
            name, r["id"][:16], r.get("granted") or "-",
            _until(r.get("granted"), r.get("granted_expires"), now),
            r.get("standing") or "-",
            _until(r.get("standing"), r.get("standing_expires"), now),
            r["method"] or "-", str(r["prekeys"]), r["fingerprint"],
        ))
    widths = [max(len(PEER_COLUMNS[i]), *(len(c[i]) for c in cells)) for i in range(9)]

    def line(values: tuple[str, ...]) -> str:
        padded = [v.rjust(widths[i]) if PEER_COLUMNS[i] == "PREKEYS" else v.ljust(widths[i])
                  for i, v in enumerate(values)]
        return "  ".join(padded).rstrip()

    out = [line(PEER_COLUMNS)]
    for r, c in zip(rows, cells, strict=True):
        out.append(line(c))
        if r["warning"]:
            out.append(f"  warning: {safe(r['warning'])}")
    return out


class Narrator:
    """A demo's story on stderr, in numbered sections (nothing with ``quiet``), and the time
    from its start to each named moment (:meth:`mark`, for ``--json``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.step = 0
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    def section(self, title: str) -> None:
        self.step += 1
        self.say(f"\n{self.step}. {title}")

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.perf_counter() - self.t0, 4)
