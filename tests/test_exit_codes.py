"""Every error a user can cause, through the real ``pairkit`` command: its exit code and words.

One row per cause: the command, what is wrong, the exit code the contract gives it
(cli/exitcodes.py, ``pairkit --help``, README "Exit codes") and the first line of stderr.  Each
command is a real process (tests/cli_helpers.py); hosts are real processes on TCP, and the
hostile "hosts" (one that never answers, one that hangs up) are real sockets.  No output may
hold a traceback, a third party's ``Error:``, or an object's repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from .cli_helpers import (
    KEYSTORE_PIN,
    PAIRKIT_CMD,
    ROOT,
    Lab,
    Result,
    cli_env,
    free_port,
    run_cli,
)

PIN = "482913"
WRONG_PIN = "111111"

#: what no output of a failing command may contain
FORBIDDEN = (
    re.compile(r"Traceback"),
    re.compile(r"(?m)^(?!error: )\w*Error: "),  # a third party's "SomethingError: ..." line
    re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>"),
    re.compile(r"\bat 0x[0-9a-f]{6,}"),
)


def assert_clean(what: str, text: str) -> None:
    for rx in FORBIDDEN:
        assert not rx.search(text), f"{what} printed {rx.pattern!r}:\n{text}"



@contextlib.asynccontextmanager
async def fake_host(behaviour: str) -> AsyncIterator[str]:
    """A TCP "host" that accepts and then says nothing (``silent``) or hangs up (``closer``)."""
    held: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "closer":
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readexactly(4)  # the guest's first frame has begun: hang up
            writer.close()
        else:
            held.append(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tcp:127.0.0.1:{port}"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


@dataclasses.dataclass(frozen=True)
class Row:
    """One cause: ``args`` may name ``{target}`` (the host of ``setup``) and ``{share}``."""

    id: str
    args: tuple[str, ...]
    code: int
    first: str  # a regular expression the first stderr line must match from its start
    setup: str | None = None  # None, "host", "host-asks" (no --yes), "silent", "closer"
    pin: str | None = KEYSTORE_PIN
    keystore: bool = True


ROWS = [
    # usage (2)
    Row("unknown-command", ("frobnicate",), 2, r"error: No such command 'frobnicate'"),
    Row("unknown-option", ("whoami", "--frobnicate"), 2, r"error: No such option '--frobnicate'"),
    Row("bad-method-name", ("join", "tcp:127.0.0.1:9", "-m", "carrier-pigeon"), 2,
        r"error: Invalid value for '--method' / '-m': 'carrier-pigeon' is not one of"),
    Row("init-twice", ("init", "--name", "again"), 2,
        r"error: an identity already exists at .*; use --force"),
    Row("unknown-transport", ("host", "-t", "smoke-signals"), 2,
        r"error: unknown transport 'smoke-signals'"),
    Row("malformed-tcp", ("join", "tcp:nowhere", "--pin", PIN), 2,
        r"error: (malformed tcp transport|no known peer)"),
    Row("resume-a-stranger", ("join", "tcp:127.0.0.1:9", "-m", "resume"), 2,
        r"error: method 'resume' needs a known peer"),
    Row("pin-without-pin", ("join", "tcp:127.0.0.1:9", "-m", "pin"), 2,
        r"error: method 'pin' needs the host's PIN"),
    Row("broken-qr-uri", ("join", "tcp:127.0.0.1:9", "--qr", "pairkit:qr?v=1&k=zz"), 2,
        r"error: --qr: not a pairkit QR code"),
    Row("not-a-qr-uri", ("join", "tcp:127.0.0.1:9", "--qr", "https://example.com"), 2,
        r"error: --qr: not a pairkit QR code"),
    Row("qr-and-qr-image", ("join", "tcp:127.0.0.1:9", "--qr", "x", "--qr-image", "README.md"),
        2, r"error: give --qr or --qr-image, not both"),
    Row("discover-on-tcp", ("discover", "-t", "tcp:127.0.0.1:9"), 2,
        r"error: discover listens for hellos on a radio, and tcp:127.0.0.1:9 is TCP"),
    Row("group-send-on-tcp", ("group", "send", "door", "open", "-t", "tcp:127.0.0.1:9"), 2,
        r"error: this transport cannot broadcast"),
    Row("group-message-too-long", ("group", "send", "door", "x" * 3000, "-t", "bumble:virtual",
                                   "--duration", "0.5"), 2,
        r"error: MESSAGE is too long: the command is 3000 bytes", setup="group"),
    Row("radio-one-port", ("radio", "--ports", "7001"), 2,
        r"error: a radio needs at least two ports"),
    Row("radio-port-text", ("radio", "--ports", "seven"), 2, r"error: ports are numbers"),
    # authentication (3)
    Row("wrong-keystore-pin", ("whoami",), 3, r"error: wrong PIN", pin="000000"),
    Row("locked-keystore-no-terminal", ("peers",), 3,
        r"error: the keystore is locked: set PAIRKIT_PIN", pin=None),
    Row("wrong-pairing-pin", ("join", "{target}", "-m", "pin", "--pin", WRONG_PIN), 3,
        r"error: .*(PIN|confirm|authenticat)", setup="host"),
    # timeout (4)
    Row("silent-host", ("join", "{target}", "-m", "pin", "--pin", PIN, "--timeout", "1"), 4,
        r"error: .*(in time|did not answer|timed out)", setup="silent"),
    # refused (5)
    Row("method-not-allowed", ("join", "{target}", "-m", "compare", "--yes"), 5,
        r"error: .*(compare|method)", setup="host"),
    Row("owner-refuses-stranger", ("join", "{target}", "-m", "pin", "--pin", PIN), 5,
        r"error: .*refused", setup="host-asks"),
    Row("no-shared-folder", ("ls", "{target}", "-m", "pin", "--pin", PIN, "--yes"), 5,
        r"error: the host refused the listing: this host shares no folder", setup="host-bare"),
    Row("file-outside-share", ("get", "{target}", "../secret.txt", "-m", "pin", "--pin", PIN,
                               "--yes"), 5,
        r"error: the host refused '../secret.txt'", setup="host"),
    # not found (6)
    Row("unknown-peer", ("join", "Ringo's tablet"), 6,
        r"error: no known peer or transport called \"Ringo's tablet\"|error: no known peer"),
    Row("forget-unknown", ("forget", "nobody"), 6, r"error: no known peer 'nobody'"),
    Row("get-from-unknown", ("get", "nobody", "x.txt"), 6, r"error: no known peer"),
    Row("nothing-listens", ("join", "tcp:127.0.0.1:{free}", "-m", "pin", "--pin", PIN), 6,
        r"error: no pairkit host answered at tcp:127.0.0.1:\d+"),
    Row("no-identity", ("whoami",), 6, r"error: no identity at .*run 'pairkit init'",
        keystore=False),
    Row("missing-file", ("get", "{target}", "nope.txt", "-m", "pin", "--pin", PIN, "--yes"), 6,
        r"error: the host has no shared file called 'nope.txt'", setup="host"),
    # connection lost (7)
    Row("host-hangs-up", ("join", "{target}", "-m", "pin", "--pin", PIN, "--timeout", "10"), 7,
        r"error: .*(closed|went away|lost)", setup="closer"),
]


async def _with_setup(
    row: Row, lab: Lab, tmp_path: Path, home: Path, run: Callable[[str], Awaitable[Result]]
) -> Result:
    if row.setup == "group":
        (await run_cli(home, "group", "create", "door")).ok()
    if row.setup in ("silent", "closer"):
        async with fake_host(row.setup) as target:
            return await run(target)
    if row.setup in ("host", "host-asks", "host-bare"):
        paul = lab.device("paul")
        share = tmp_path / "share"
        share.mkdir(exist_ok=True)
        (share / "notes.txt").write_text("hello\n")
        (tmp_path / "secret.txt").write_text("not shared\n")
        args = ["--method", "pin", "--pin", PIN, "--once"]
        if row.setup != "host-asks":
            args.append("--yes")
        if row.setup != "host-bare":
            args += ["--share", str(share)]
        host = await lab.host(paul, *args)
        return await run(host.target)
    return await run("")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_exit_code_and_first_line(row: Row, lab: Lab, tmp_path: Path) -> None:
    george = lab.device("george")
    home = george.home if row.keystore else tmp_path / "nobody"

    async def run(target: str) -> Result:
        args = [a.format(target=target, free=free_port()) for a in row.args]
        return await run_cli(home, *args, pin=row.pin, timeout=40)

    result = await _with_setup(row, lab, tmp_path, home, run)
    # the error's first line (narration such as "waiting for ... to let you in" may come before)
    lines = result.err.splitlines()
    first = next((line for line in lines if line.startswith("error:")), lines[0] if lines else "")
    assert result.rc == row.code, result
    assert re.match(row.first, first), result
    assert_clean(row.id, result.out + result.err)
    assert result.out == "", result  # errors go to stderr only


def test_every_contract_code_is_provoked_or_accounted_for() -> None:
    """The table covers each code of the contract but the ones no user can cause on demand."""
    from pairkit.cli.exitcodes import EXIT_BUSY, EXIT_CODES, EXIT_ERROR, EXIT_INTERNAL, EXIT_OK

    # 130: the test below; busy: tests/soak/test_admission.py (a host turning a guest away)
    provoked = {r.code for r in ROWS} | {130, EXIT_BUSY}
    # 1: a radio that fails, in tests/test_transport_errors.py; 70: a bug; 0: success
    assert {code for code, _ in EXIT_CODES} - provoked == {EXIT_OK, EXIT_ERROR, EXIT_INTERNAL}


async def test_ctrl_c_exits_130_without_a_traceback(lab: Lab) -> None:
    george = lab.device("george")
    async with fake_host("silent") as target:
        proc = await asyncio.create_subprocess_exec(
            *PAIRKIT_CMD, "join", target, "-m", "pin", "--pin", PIN, "--timeout", "30",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(george.home),
        )
        await asyncio.sleep(3)  # started and connected (the silent host holds it)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines()[-1] == "error: interrupted"
    assert_clean("join interrupted", out.decode() + err.decode())


def test_help_lists_the_exit_codes() -> None:
    from pairkit.cli._help import HELP
    from pairkit.cli.exitcodes import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    for code, text in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+{re.escape(text)}$", HELP, re.M), code
        assert f"| {code} | {text} |" in readme, f"README lacks exit code {code}"


def test_the_map_holds_for_errors_a_peer_reports() -> None:
    """An error the peer reports exits as the same error found here would (by wire code)."""
    from pairkit.cli.common import exit_code_for
    from pairkit.pairing.errors import ErrorCode, PairingError, RemoteError, local_error_for

    for code in ErrorCode:
        local = exit_code_for(PairingError("x", code=code))
        assert exit_code_for(RemoteError("x", code=code)) == local, code
        typed = local_error_for(int(code), "x")
        if typed.code == code:
            assert exit_code_for(typed) == local, code


#: a command that has ended (``--version``), and a thread the interpreter joins as it exits (as
#: bumble's and the keystore store's may be): a Ctrl-C then lands in the interpreter's shutdown
EXITING = """
import sys, threading, time
threading.Thread(target=time.sleep, args=(20,)).start()
sys.argv = ["pairkit", "--version"]
from pairkit.cli.main import main
main()
"""


async def test_ctrl_c_while_the_command_exits_ends_it_at_once_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A Ctrl-C (or a supervisor's SIGINT) that arrives while a command is already exiting, as
    the interpreter waits for its threads, ends it at once with 130 and no traceback; before,
    the interpreter printed "Exception ignored in: <module 'threading'>" and a traceback (seen
    in CI: tests/test_groups_agent_cli.py stopping a listener whose radio had gone)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EXITING, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=cli_env(tmp_path / "home"),
    )
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 15)  # the version: the command is done
    await asyncio.sleep(0.5)  # the interpreter is joining the thread
    proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.wait_for(proc.communicate(), 5)  # at once: not the thread's 20 s
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode() and "Exception ignored" not in err.decode(), err
