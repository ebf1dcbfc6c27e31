"""The owner's "allow this file?" prompt on a real terminal (issue 16): one "for this session"
answer covers every file of one ``get``, and a guest that cancels (Ctrl-C) or vanishes withdraws
the question at once, as a pairing prompt is withdrawn (tests/test_prompts.py).

Hosts run under a pseudo-terminal (tests/pty_harness.py); so does the guest that presses
Ctrl-C.  Other guests run with no terminal, as scripts do.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import (
    PAIRKIT_CMD,
    ROOT,
    Device,
    assert_no_traceback,
    cli_env,
)
from tests.pty_harness import WAIT, PtyProcess

EXIT_INTERRUPTED = 130


class Devices:
    """Fresh copies of the templates, a shared folder, and every process started (stopped at
    the end)."""

    def __init__(self, base: Path, templates: dict[str, Device]) -> None:
        self.base, self.templates = base, templates
        self.ptys: list[PtyProcess] = []
        self.guests: list[subprocess.Popen[bytes]] = []
        self.share = base / "share"
        self.share.mkdir()
        for name in ("a.txt", "b.txt", "c.txt"):
            (self.share / name).write_text(f"{name}\n")

    def home(self, key: str) -> Path:
        home = self.base / key
        if not home.exists():
            shutil.copytree(self.templates[key].home, home)
        return home

    def out(self, key: str) -> Path:
        folder = self.base / f"{key}-files"
        folder.mkdir(exist_ok=True)
        return folder

    def host(self, *methods: str) -> tuple[PtyProcess, str]:
        """Paul hosts the share on a terminal, by PIN (and ``methods``); (the process, its
        target)."""
        more = [arg for m in methods for arg in ("--method", m)]
        host = PtyProcess(self.home("paul"), "host", "-t", "tcp:127.0.0.1:0", "--method", "pin",
                          *more, "--share", str(self.share), "--timeout", "60")
        self.ptys.append(host)
        address = host.expect(r"is waiting on (\S+)").group(1)
        return host, f"tcp:{address}"

    def guest(self, key: str, *args: str) -> subprocess.Popen[bytes]:
        """``pairkit get ARGS -o FOLDER`` with no terminal (started, not awaited)."""
        proc = subprocess.Popen(
            [*PAIRKIT_CMD, "get", *args, "-o", str(self.out(key)), "--timeout", "60"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env=cli_env(self.home(key)),
        )
        self.guests.append(proc)
        return proc

    def guest_on_terminal(self, key: str, *args: str) -> PtyProcess:
        proc = PtyProcess(self.home(key), "get", *args, "-o", str(self.out(key)),
                          "--timeout", "60")
        self.ptys.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.ptys:
            proc.close()
        for guest in self.guests:
            if guest.poll() is None:
                guest.kill()
            guest.communicate()


def finished(proc: subprocess.Popen[bytes], timeout: float = WAIT) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the guest did not end within {timeout:g} s:\n{err.decode()}"
                             ) from None
    text = err.decode()
    assert_no_traceback("pairkit get", text)
    return proc.returncode, text


@pytest.fixture
def devices(tmp_path: Path, templates: dict[str, Device]) -> Iterator[Devices]:
    d = Devices(tmp_path, templates)
    yield d
    d.close()


def let_in(host: PtyProcess, who: str) -> None:
    host.expect(rf"{who} asks to join")
    host.expect(r"\[r\]efuse\? ")
    host.line("g")


def test_one_answer_for_this_session_covers_every_file_of_one_get(devices: Devices) -> None:
    host, target = devices.host()
    pin = host.expect(r"PIN: (\d{6})").group(1)
    george = devices.guest("george", target, "a.txt", "b.txt", "c.txt", "-m", "pin",
                           "--pin", pin)
    let_in(host, "George's phone")
    host.expect(r"George's phone asks for 'a\.txt'\.")
    host.expect(r"for this \[s\]ession, or \[r\]efuse\? ")
    host.line("s")
    rc, err = finished(george)
    assert rc == 0, err
    for name in ("a.txt", "b.txt", "c.txt"):
        assert (devices.out("george") / name).read_text() == f"{name}\n"
    host.expect(r"George's phone: 0 listing\(s\), 3 file\(s\)")
    assert host.output.count(" asks for ") == 1, host.output


def test_a_guest_that_cancels_withdraws_the_file_prompt(devices: Devices) -> None:
    host, target = devices.host()
    pin = host.expect(r"PIN: (\d{6})").group(1)
    george = devices.guest_on_terminal("george", target, "a.txt", "-m", "pin", "--pin", pin)
    let_in(host, "George's phone")
    pin = host.expect(r"PIN: (\d{6})").group(1)  # the next guest's, shown once George paired
    host.expect(r"George's phone asks for 'a\.txt'\.")
    host.expect(r"\[r\]efuse\? ")
    george.expect(r"waiting|asks|\S")  # the guest is running and waits for the owner
    george.ctrl_c()
    assert george.wait() == EXIT_INTERRUPTED
    # The question goes at once, the guest named, and the host serves on.
    host.expect(r"error: guest George's phone \(\S+\): the other side cancelled")
    assert not (devices.out("george") / "a.txt").exists()
    ringo = devices.guest("ringo", target, "b.txt", "-m", "pin", "--pin", pin)
    let_in(host, "Ringo's tablet")
    host.expect(r"Ringo's tablet asks for 'b\.txt'\.")
    host.expect(r"\[r\]efuse\? ")
    host.line("o")
    rc, err = finished(ringo)
    assert rc == 0, err


def test_a_guest_that_vanishes_withdraws_the_file_prompt(devices: Devices) -> None:
    host, target = devices.host()
    pin = host.expect(r"PIN: (\d{6})").group(1)
    george = devices.guest("george", target, "a.txt", "-m", "pin", "--pin", pin)
    let_in(host, "George's phone")
    pin = host.expect(r"PIN: (\d{6})").group(1)  # the next guest's, shown once George paired
    host.expect(r"George's phone asks for 'a\.txt'\.")
    host.expect(r"\[r\]efuse\? ")
    george.send_signal(signal.SIGKILL)  # no Abort: only the link closes
    george.communicate()
    # Were George's question still up, Ringo's would wait behind it for its 60 s.
    ringo = devices.guest("ringo", target, "b.txt", "-m", "pin", "--pin", pin)
    let_in(host, "Ringo's tablet")
    host.expect(r"Ringo's tablet asks for 'b\.txt'\.")
    host.expect(r"\[r\]efuse\? ")
    host.line("o")
    rc, err = finished(ringo)
    assert rc == 0, err


def test_a_file_that_grew_since_the_listing_is_refused_and_get_all_goes_on(
    devices: Devices,
) -> None:
    """atk19y finding 7 (low): ``get --all`` holds the host to the sizes it listed, and a file
    that grew on the host between the listing and its fetch ended the whole command there.  The
    one file is refused, in words that say what happened and how to fetch it; the others come
    (over a new session: the refusal ends the one the grown file was streaming on), and the
    command ends with the refusal's exit code (1).  The owner answers "once" each time, so
    b.txt grows after the listing and before it is sent, as the owner allows it."""
    host, target = devices.host("resume")
    pin = host.expect(r"PIN: (\d{6})").group(1)
    george = devices.guest("george", target, "--all", "-m", "pin", "--pin", pin)
    let_in(host, "George's phone")
    for name in ("the list of shared files", "'a\\.txt'", "'b\\.txt'", "'c\\.txt'"):
        host.expect(rf"George's phone asks for {name}\.")
        host.expect(r"\[r\]efuse\? ")
        if "b" in name:
            with open(devices.share / "b.txt", "a") as grown:
                grown.write("and more\n")
        host.line("o")
    rc, err = finished(george)
    assert rc == 1, err
    out = devices.out("george")
    for name in ("a.txt", "c.txt"):
        assert (out / name).read_text() == f"{name}\n", err
    assert not (out / "b.txt").exists(), err
    assert "'b.txt'" in err and "listed it as 6 bytes" in err, err
    (again,) = [line for line in err.splitlines() if line.startswith("  pairkit get ")]
    assert again.split()[-3:] == ["b.txt", "-o", str(out)], again
