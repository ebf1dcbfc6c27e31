"""Run README.md's command blocks as a person at several terminals would (issue 16, item 8).

Every fenced block of README.md carries an HTML comment on the line just before its opening
fence (blank lines between are allowed; GitHub shows nothing of it)::

    <!-- run: walk=tcp ports="7000" -->                      run it, in walk-through "tcp"
    <!-- run: skip reason="needs a USB dongle" -->           not run, and why (required)
    <!-- run: elsewhere=tests/test_readme_python.py -->      run by that test file
    <!-- run: synopsis -->                                   each option it names exists (click)
    <!-- run: config -->                                     a config.toml the tool accepts
    <!-- run: pytest -->                                     a test file: pytest runs it, passing

A block with no annotation fails :func:`annotation_problems`, naming its line: a new README
block is run or skipped on purpose, never by accident.

**Walk-throughs** (``walk=NAME``): the blocks of one walk run in README order in one lab (one
folder, one ``HOME``, shared terminals and servers).  Other keys of a walk block:

* ``ports="7000 7001"``: each of these numbers (as a whole word) becomes a free port, in the
  commands and in the output shown; ``sub="FROM=>TO"`` (repeatable) replaces text the same way;
* ``file="~/Videos/holiday.mp4:2000000"`` (repeatable): a file of that many bytes, made first;
* ``init="paul=>Paul's laptop"`` (repeatable): ``pairkit init`` of ``/tmp/paul`` first, for a
  walk that starts where an earlier section left off.

Inside a walk block:

* ``# terminal N ...`` switches to terminal N (each has its own environment; the lines before
  any marker are terminal ``0``); ``export K=V`` sets K in the current terminal;
  ``make venv`` and ``. .venv/bin/activate`` are done already (``pairkit`` is on ``PATH``);
* every other line is a command, run by ``bash -c`` on its own pseudo-terminal (so prompts are
  asked as on a keyboard), in the lab folder, with ``/tmp/`` moved into the lab;
  ``<PIN shown>`` is the PIN a host showed last;
* a command ending in ``&``, and the servers (``host`` without ``--once``, ``radio``, ``ttp
  serve``, ``group listen``, ``group relay``, ``group agent``) are left running once ready (a
  host once it says where it waits); their output is checked at the end of the walk; a server
  waits for an earlier command that listens on its port to end.  Any other command must end
  with exit code 0 within :data:`COMMAND_TIMEOUT` and print no traceback;
* ``#   text`` lines (a hash and three spaces) under a command are its output: each must match
  a line it printed, in order (other lines may come between).  In them ``...`` matches
  anything, ``<thing>`` any text, a trailing ``  # comment`` is ignored, runs of blanks match
  any blanks, and values that differ at every run match their kind: a 6-digit PIN, a time
  ``14:05`` (with its date before it or not: an end on another day says it), a fingerprint
  ``6cc3-6c5c-...``, a BLE address, a decimal ``1.61``, a negative number, a duration
  ``3 s`` and a hex run of 6 or more.  An output line in parentheses
  ``#   (...)`` is narration (what happens elsewhere), not output;
* the person at each terminal answers what pairkit asks: the keystore PIN (:data:`PIN`), the
  PIN a host shows, ``g`` to a stranger asking to join, ``s`` to a file request, ``y`` to a
  yes/no question.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pty
import re
import select
import shlex
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: the keystore PIN the person types
PIN = "135790"
#: how long one foreground command may run
COMMAND_TIMEOUT = 60.0
#: how long a server may take to be ready, and to print its expected output at the end
SERVER_TIMEOUT = 30.0

_FENCE = re.compile(r"^(\s*)(`{3,})([\w-]*)\s*$")
_ANNOTATION = re.compile(r"^\s*<!--\s*run:(.*?)-->\s*$")


_KINDS = ("walk", "skip", "elsewhere", "synopsis", "config", "pytest")


@dataclasses.dataclass
class Annotation:
    kind: str  # one of _KINDS
    walk: str = ""
    reason: str = ""
    target: str = ""
    ports: tuple[str, ...] = ()
    subs: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, int], ...] = ()
    inits: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class Block:
    line: int  # README line of the opening fence (1-based)
    lang: str
    lines: list[str]  # the block's lines, dedented to the fence
    annotation: Annotation | None
    problem: str = ""  # what is wrong with its annotation

    @property
    def first(self) -> str:
        first = next((line.strip() for line in self.lines if line.strip()), "")
        return first if len(first) <= 60 else first[:57] + "..."

    def where(self) -> str:
        return f"README.md:{self.line}: ```{self.lang} block starting {self.first!r}"


def parse_annotation(body: str) -> Annotation:
    """The annotation's words (``ValueError`` naming what is wrong)."""
    words = shlex.split(body)
    kinds = [w for w in words if "=" not in w]
    pairs = [w.split("=", 1) for w in words if "=" in w]
    keys = {k for k, _ in pairs}
    if "walk" in keys:
        kinds.append("walk")
    if "elsewhere" in keys:
        kinds.append("elsewhere")
    if len(kinds) != 1 or kinds[0] not in _KINDS:
        raise ValueError(
            f"say one of walk=NAME, skip reason=\"...\", elsewhere=TEST, synopsis, config, "
            f"pytest; got "
            f"{body.strip()!r}"
        )
    ann = Annotation(kinds[0])
    allowed = {"walk": {"walk", "ports", "sub", "file", "init"}, "skip": {"reason"},
               "elsewhere": {"elsewhere"}}.get(ann.kind, set())
    for key, value in pairs:
        if key not in allowed:
            raise ValueError(f"{key}= does not go with {ann.kind}")
        if key == "walk":
            ann.walk = value
        elif key == "reason":
            ann.reason = value.strip()
        elif key == "elsewhere":
            ann.target = value
        elif key == "ports":
            ann.ports += tuple(value.split())
        elif key in ("sub", "init"):
            old, sep, new = value.partition("=>")
            if not sep or not old:
                raise ValueError(f"{key}= takes FROM=>TO, got {value!r}")
            if key == "sub":
                ann.subs += ((old, new),)
            else:
                ann.inits += ((old, new),)
        elif key == "file":
            path, _, size = value.rpartition(":")
            if not path or not size.isdigit():
                raise ValueError(f"file= takes PATH:BYTES, got {value!r}")
            ann.files += ((path, int(size)),)
    if ann.kind == "skip" and not ann.reason:
        raise ValueError('a skip needs its reason: skip reason="..."')
    return ann


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, with its annotation."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                for line in lines[i + 1:end]]
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        ann: Annotation | None = None
        problem = ""
        found = _ANNOTATION.match(lines[j]) if j >= 0 else None
        if found:
            try:
                ann = parse_annotation(found.group(1))
            except ValueError as exc:
                problem = f"its annotation on line {j + 1} is wrong: {exc}"
        blocks.append(Block(i + 1, lang or "(none)", body, ann, problem))
        i = end + 1
    return blocks


def annotation_problems(blocks: list[Block]) -> list[str]:
    """One line per block that is neither run nor skipped on purpose."""
    problems = []
    for b in blocks:
        if b.problem:
            problems.append(f"{b.where()}: {b.problem}")
        elif b.annotation is None:
            problems.append(
                f'{b.where()} has no annotation: put <!-- run: walk=NAME --> (or skip reason="..."'
                f", elsewhere=TEST, synopsis, config, pytest) on the line before it "
                f"(see tests/readme_runner.py)"
            )
        elif b.annotation.kind == "elsewhere" and not (ROOT / b.annotation.target).is_file():
            problems.append(f"{b.where()}: elsewhere={b.annotation.target} does not exist")
    return problems


# ---------------------------------------------------------------------------------------------
# Output matching


_SHAPES = [  # (what it looks like in the README, what it matches)
    (r"\.\.\.|…", r".*?"),
    (r"<[^<>]+>", r".+?"),
    (r"\b[0-9a-f]{4}(?:-(?:[0-9a-f]{4}|\.\.\.))+", r"[0-9a-f]{4}(?:-[0-9a-f]{4})*(?:-.*?)?"),
    (r"\b(?:[0-9A-F]{2}:){5}[0-9A-F]{2}\b", r"(?:[0-9A-F]{2}:){5}[0-9A-F]{2}"),
    (r"\b\d{1,2}:\d{2}\b(?!:)", r"(?:\d{4}-\d{2}-\d{2} )?\d{1,2}:\d{2}"),  # a date if not today
    (r"\b\d{6}\b", r"\d{6}"),
    (r"\b\d+\.\d+\b", r"\d+\.\d+"),
    (r"-\d+\b", r"-\d+"),
    (r"\b\d+ s\b", r"\d+ s"),
    (r"\b[0-9a-f]{6,}\b", r"[0-9a-f]+"),
    (r"\s+", r"\s+"),
]
_SHAPE = re.compile("|".join(f"({p})" for p, _ in _SHAPES))


def expected_regex(text: str) -> re.Pattern[str]:
    """The regex an output line shown in the README stands for (see the module's docstring)."""
    text = re.sub(r"\s{2,}#\s.*$", "", text).strip()
    out, pos = [], 0
    for m in _SHAPE.finditer(text):
        out.append(re.escape(text[pos:m.start()]))
        out.append(_SHAPES[m.lastindex - 1][1])  # type: ignore[operator]
        pos = m.end()
    out.append(re.escape(text[pos:]))
    return re.compile("".join(out))


def screen_lines(raw: str) -> list[str]:
    """What a terminal showed, one entry per line and per carriage return (a status line
    rewritten in place shows each of its versions), escape sequences removed."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    return [line.strip() for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def unmatched(expected: list[tuple[int, str]], raw: str) -> tuple[int, str] | None:
    """The first expected line (README line, text) not found in order in ``raw``, if any."""
    shown = screen_lines(raw)
    at = 0
    for line, text in expected:
        rx = expected_regex(text)
        while at < len(shown) and not rx.fullmatch(shown[at]):
            at += 1
        if at == len(shown):
            return line, text
        at += 1
    return None


# ---------------------------------------------------------------------------------------------
# Walk-throughs


@dataclasses.dataclass
class Step:
    line: int
    terminal: str
    command: str
    expected: list[tuple[int, str]]


def steps_of(block: Block) -> list[Step]:
    """The commands of a walk block, each with the terminal it runs in and its output shown."""
    steps: list[Step] = []
    terminal = "0"
    current: Step | None = None
    narration = 0  # open parentheses of a narration line
    pending = ""
    for n, raw in enumerate(block.lines, start=block.line + 1):
        line = raw.rstrip()
        if pending:
            line, pending = pending + " " + line.strip(), ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            assert current is not None
            current.command = line
            continue
        if not line.strip():
            continue
        if marker := re.match(r"#\s*terminal\s+(\w+)", line):
            terminal, current = marker.group(1), None
            continue
        if out := re.match(r"#(\s{3,})(.*)$", line):
            text = out.group(2)
            if narration or text.startswith("("):
                narration = max(0, narration + text.count("(") - text.count(")"))
                continue
            if current is not None:
                current.expected.append((n, text))
            continue
        if line.startswith("#"):
            current = None
            continue
        current = Step(n, terminal, line.strip(), [])
        steps.append(current)
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
    return steps


_SERVERS = [  # a command that keeps running, and the line that says it is ready
    (re.compile(r"\bpairkit host\b"), r"is waiting on"),
    (re.compile(r"\bpairkit radio\b"), r"^radio: "),
    (re.compile(r"\bpairkit ttp serve\b|pairkit\.keyserver"), r"listening on"),
    (re.compile(r"\bpairkit group listen\b"), r"\blistening on\b"),
    (re.compile(r"\bpairkit group relay\b"), r"\brelaying on\b"),
    (re.compile(r"\bpairkit group agent\b"), r"\bis a group agent on\b"),
]

_PROMPTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(Choose a keystore PIN or passphrase|Repeat it|Keystore PIN): ?$"), "keystore"),
    (re.compile(r"PIN shown on the host: ?$"), "pin"),
    (re.compile(r"as \[g\]uest .*or \[r\]efuse\? ?$"), "g"),
    (re.compile(r"\[o\]nce, for this \[s\]ession, or \[r\]efuse\? ?$"), "s"),
    (re.compile(r"\[y/N\] ?$"), "y"),
]


class Terminal:
    """One command on its own pseudo-terminal (``bash -c COMMAND``), as typed by a person."""

    def __init__(self, step: Step, command: str, env: dict[str, str], cwd: Path) -> None:
        self.step = step
        self.command = command
        pid, fd = pty.fork()
        if pid == 0:  # the child: a session leader with the pty as its controlling terminal
            try:
                os.chdir(cwd)
                os.execvpe("bash", ["bash", "-c", command], env)
            finally:
                os._exit(127)
        with contextlib.suppress(OSError):  # wide, so nothing is wrapped
            import fcntl
            import termios

            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.pid, self.fd = pid, fd
        self.started = time.monotonic()
        self.ended = 0.0
        self.raw = ""
        self.answered = 0  # output before this index holds no open question
        self.rc: int | None = None
        self.eof = False

    def read(self) -> str:
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return ""
        text = data.decode("utf-8", "replace")
        self.raw += text
        return text

    def poll(self) -> int | None:
        if self.rc is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.ended = time.monotonic()
                self.rc = os.waitstatus_to_exitcode(status)
                if self.rc < 0:
                    self.rc = 128 - self.rc
        return self.rc

    def type(self, text: str) -> None:
        os.write(self.fd, (text + "\r").encode())

    def interrupt(self) -> None:
        """Ctrl-C, as a person stops a command left running."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGINT)

    def stop(self) -> None:
        """End the command (Ctrl-C, then SIGKILL after 5 s) and close its terminal."""
        self.interrupt()
        end = time.monotonic() + 5
        while self.poll() is None and time.monotonic() < end:
            with contextlib.suppress(OSError):
                if select.select([self.fd], [], [], 0.05)[0]:
                    self.read()
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.rc = -9
        with contextlib.suppress(OSError):
            os.close(self.fd)


class WalkFailure(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Walk:
    """One walk-through: its lab folder, its terminals' environments, its running commands."""

    def __init__(self, name: str, lab: Path, pycache: Path | None = None) -> None:
        self.name = name
        self.lab = lab
        self.work = lab / "work"
        self.home = lab / "home"
        for d in (self.work, self.home, lab / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        bindir = str(Path(sys.executable).parent)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PAIRKIT_")}
        base.update(PATH=f"{bindir}:{base.get('PATH', '/usr/bin:/bin')}", HOME=str(self.home),
                    TERM="xterm", PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8", LANG="C.UTF-8")
        base.pop("PYTHONWARNINGS", None)
        base.pop("VIRTUAL_ENV", None)
        if pycache is not None:
            base.pop("PYTHONDONTWRITEBYTECODE", None)
            base["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.base_env = base
        self.envs: dict[str, dict[str, str]] = {}
        self.ports: dict[str, str] = {}  # README port -> free port, for the whole walk
        self.subs: list[tuple[str, str]] = []  # text replaced, for the whole walk
        self.running: list[Terminal] = []
        self.done: list[Terminal] = []

    # -- text -----------------------------------------------------------------------------

    def substitute(self, text: str, ann: Annotation, *, command: bool) -> str:
        for port in ann.ports:
            if port not in self.ports:
                self.ports[port] = str(free_port())
        for port, real in self.ports.items():
            text = re.sub(rf"(?<![\w.]){port}\b", real, text)
        for sub in ann.subs:
            if sub not in self.subs:
                self.subs.append(sub)
        for old, new in self.subs:
            text = text.replace(old, new)
        if command:
            text = re.sub(r"(?<![\w.])/tmp/", f"{self.lab}/tmp/", text)
        return text

    def _fill(self, command: str, step: Step, block: Block) -> str:
        def placeholder(m: re.Match[str]) -> str:
            if m.group(1) == "PIN shown":  # the host says where it waits, then its PIN
                self.pump(SERVER_TIMEOUT, lambda: self.pin_shown() is not None)
                if (pin := self.pin_shown()) is None:
                    raise WalkFailure(f"{_at(block, step)}: no host has shown a PIN yet")
                return pin
            raise WalkFailure(f"{_at(block, step)}: unknown placeholder <{m.group(1)}>")

        return re.sub(r"<([^<>]+)>", placeholder, command)

    # -- the person -----------------------------------------------------------------------

    def pin_shown(self) -> str | None:
        """The PIN the host started last shows now (None until it shows one)."""
        for term in reversed(self.running):
            if re.search(r"\bpairkit host\b", term.command):
                pins = re.findall(r"^PIN: (\d{6})\b", term.raw, re.M)
                return str(pins[-1]) if pins else None
        return None

    def _answer(self, term: Terminal) -> None:
        tail = term.raw[term.answered:]
        last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", re.split(r"[\r\n]", tail)[-1])
        for rx, answer in _PROMPTS:
            if rx.search(last):
                if answer == "keystore":
                    answer = PIN
                elif answer == "pin":
                    if (pin := self.pin_shown()) is None:
                        return  # asked before any PIN was shown: wait for one
                    answer = pin
                term.type(answer)
                term.answered = len(term.raw)
                return
        if "\n" in tail:
            term.answered += tail.rindex("\n") + 1

    def pump(self, seconds: float, until: Callable[[], bool] = lambda: False) -> bool:
        """Read every terminal and answer its questions, for at most ``seconds`` or until
        ``until()``; whether ``until()`` came true."""
        end = time.monotonic() + seconds
        while True:
            if until():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            live = [t for t in self.running if not t.eof]
            if not live:
                time.sleep(min(left, 0.05))
            else:
                ready, _, _ = select.select([t.fd for t in live], [], [], min(left, 0.1))
                for term in live:
                    if term.fd in ready:
                        term.read()
            for term in self.running:
                self._answer(term)

    # -- commands -------------------------------------------------------------------------

    def env(self, terminal: str) -> dict[str, str]:
        return self.envs.setdefault(terminal, dict(self.base_env))

    def prepare(self, ann: Annotation) -> None:
        for path, size in ann.files:
            target = Path(path.replace("~", str(self.home), 1))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(i * 7 % 251 for i in range(size)))
        inits = [  # at once: each spends its time in the key derivation
            Terminal(Step(0, f"init-{key}", f"pairkit init --name {shlex.quote(name)}", []),
                     f"pairkit init --name {shlex.quote(name)}",
                     dict(self.base_env, PAIRKIT_HOME=f"{self.lab}/tmp/{key}"), self.work)
            for key, name in ann.inits
        ]
        self.running.extend(inits)
        try:
            self.pump(COMMAND_TIMEOUT, lambda: all(t.eof and t.poll() is not None for t in inits))
        finally:
            for term in inits:
                self.running.remove(term)
                term.stop()
                self.done.append(term)
        for term in inits:
            self._check(term, None, ended=True)

    def run_block(self, block: Block) -> None:
        ann = block.annotation
        assert ann is not None
        self.prepare(ann)
        for step in steps_of(block):
            command = self.substitute(step.command, ann, command=True)
            step.expected = [(n, self.substitute(t, ann, command=False)) for n, t in step.expected]
            env = self.env(step.terminal)
            if re.fullmatch(r"make venv|\.\s+\.venv/bin/activate|source\s+\.venv/bin/activate",
                            command.split("#")[0].strip()):
                continue
            if m := re.fullmatch(r"export\s+(\w+)=(\S+|'[^']*'|\"[^\"]*\")(\s+#.*)?", command):
                env[m.group(1)] = shlex.split(m.group(2))[0]
                continue
            command = self._fill(command, step, block)
            background = bool(re.search(r"&\s*(#.*)?$", command))
            if background:
                command = re.sub(r"&\s*(#.*)?$", "", command).rstrip()
            server = next((ready for rx, ready in _SERVERS if rx.search(command)), None)
            if background or (server and "--once" not in command):
                self._background(step, command, env, server, block)
            else:
                self._foreground(step, command, env, block)

    def _foreground(self, step: Step, command: str, env: dict[str, str],
                    block: Block | None) -> None:
        term = Terminal(step, command, env, self.work)
        self.running.append(term)
        try:
            if not self.pump(COMMAND_TIMEOUT, lambda: term.eof and term.poll() is not None):
                raise WalkFailure(
                    f"{_at(block, step)}: did not end within {COMMAND_TIMEOUT:g} s; it showed:"
                    f"\n{term.raw}{self._others(term)}"
                )
        finally:
            self.running.remove(term)
            term.stop()
            self.done.append(term)
        self._check(term, block, ended=True)

    def _background(self, step: Step, command: str, env: dict[str, str], ready: str | None,
                    block: Block) -> None:
        self._free_ports_of(command)
        term = Terminal(step, command, env, self.work)
        self.running.append(term)
        if ready is not None:
            rx = re.compile(ready, re.M)
            if not self.pump(SERVER_TIMEOUT, lambda: bool(rx.search(term.raw)) or term.eof):
                raise WalkFailure(f"{_at(block, step)}: not ready within {SERVER_TIMEOUT:g} s;"
                                  f" it showed:\n{term.raw}")
            if not rx.search(term.raw):
                self.pump(2, lambda: term.poll() is not None)
                raise WalkFailure(f"{_at(block, step)}: ended (exit {term.poll()}) before it "
                                  f"was ready; it showed:\n{term.raw}")

    def _free_ports_of(self, command: str) -> None:
        """A server about to take a port that an earlier command holds waits for it to end
        (``host --once &`` twice on one port, as a person waits for the first to finish)."""
        def ports_of(text: str) -> set[str]:  # the ports it listens on (not a radio's)
            ports = set(re.findall(r"(?:-t|--transport|--listen)[ =](?!bumble:)\S*:(\d+)\b",
                                   text))
            if radio := re.search(r"\bradio --ports((?: \d+)+)", text):
                ports.update(radio.group(1).split())
            return ports

        ports = ports_of(command)
        for term in list(self.running):
            if ports & ports_of(term.command) and any(
                    rx.search(term.command) for rx, _ in _SERVERS):
                if not self.pump(SERVER_TIMEOUT, lambda t=term: t.eof and t.poll() is not None):
                    raise WalkFailure(
                        f"{command!r} needs a port {term.command!r} still holds after "
                        f"{SERVER_TIMEOUT:g} s; it showed:\n{term.raw}"
                    )

    def _check(self, term: Terminal, block: Block | None, *, ended: bool) -> None:
        where = _at(block, term.step)
        if "Traceback" in term.raw:
            raise WalkFailure(f"{where}: printed a traceback:\n{term.raw}")
        if ended and term.rc != 0:
            raise WalkFailure(
                f"{where}: exited {term.rc}; it showed:\n{term.raw}{self._others(term)}")
        if miss := unmatched(term.step.expected, term.raw):
            raise WalkFailure(
                f"{where}: the output shown on README.md:{miss[0]} ({miss[1].strip()!r}) is not "
                f"what it printed:\n{term.raw}"
            )

    def _others(self, term: Terminal) -> str:
        return "".join(f"\n--- meanwhile {o.command!r} showed:\n{o.raw}"
                       for o in self.running if o is not term)

    def finish(self, blocks: dict[int, Block]) -> None:
        """Check what the commands left running printed, then stop them."""
        try:
            for term in list(self.running):
                self.pump(SERVER_TIMEOUT,
                          lambda t=term: unmatched(t.step.expected, t.raw) is None or t.eof)
                block = max((b for line, b in blocks.items() if line < term.step.line),
                            key=lambda b: b.line, default=None)
                self._check(term, block, ended=term.poll() is not None)  # ended by itself
        finally:
            self.close()

    def close(self) -> None:
        """Stop what is left running, the last started first (a host before its radio)."""
        for term in reversed(self.running):
            term.interrupt()
        for term in reversed(self.running):
            term.stop()
        self.done.extend(self.running)
        self.running = []


def _at(block: Block | None, step: Step) -> str:
    if block is None:
        return f"setup {step.command!r}"
    return f"README.md:{step.line} ({step.command!r}, in the block of line {block.line})"


def walks(blocks: list[Block]) -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for b in blocks:
        if b.annotation is not None and b.annotation.kind == "walk":
            out.setdefault(b.annotation.walk, []).append(b)
    return out


def run_walk(name: str, blocks: list[Block], lab: Path, pycache: Path | None = None) -> Walk:
    walk = Walk(name, lab, pycache)
    try:
        for block in blocks:
            walk.run_block(block)
        walk.finish({b.line: b for b in blocks})
    finally:
        walk.close()
    return walk
