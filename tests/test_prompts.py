"""The person at the keyboard (issue 16): prompts under a real terminal, Ctrl-C, the guest's
wait, and the checks that need nobody made before anybody is asked.

Hosts (and the guest whose compare prompt is tested) run under a pseudo-terminal
(tests/pty_harness.py); other guests run with no terminal, as scripts do.
"""

from __future__ import annotations

import shutil
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

CLEAR = ("--method", "clear", "--allow-insecure")
EXIT_TIMEOUT, EXIT_REFUSED, EXIT_INTERRUPTED = 4, 5, 130


class Devices:
    """Fresh copies of the templates, and every process started, stopped at the end."""

    def __init__(self, base: Path, templates: dict[str, Device]) -> None:
        self.base, self.templates = base, templates
        self.ptys: list[PtyProcess] = []
        self.guests: list[subprocess.Popen[bytes]] = []

    def home(self, key: str) -> Path:
        home = self.base / key
        if not home.exists():
            shutil.copytree(self.templates[key].home, home)
        return home

    def on_terminal(self, key: str, *args: str) -> PtyProcess:
        proc = PtyProcess(self.home(key), *args)
        self.ptys.append(proc)
        return proc

    def host(self, key: str, *args: str) -> tuple[PtyProcess, str]:
        """``pairkit host`` on a terminal; (the process, the target a guest joins)."""
        host = self.on_terminal(key, "host", "-t", "tcp:127.0.0.1:0", *args)
        address = host.expect(r"is waiting on (\S+)").group(1)
        return host, f"tcp:{address}"

    def guest(self, key: str, *args: str) -> subprocess.Popen[bytes]:
        """``pairkit join ARGS`` with no terminal (started, not awaited)."""
        proc = subprocess.Popen(
            [*PAIRKIT_CMD, "join", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=ROOT, env=cli_env(self.home(key)),
        )
        self.guests.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.ptys:
            proc.close()
        for guest in self.guests:
            if guest.poll() is None:
                guest.kill()
            guest.communicate()


def finished(proc: subprocess.Popen[bytes], timeout: float = WAIT) -> tuple[int, str]:
    """(exit code, stderr) of a guest, once it ended."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(
            f"the guest did not end within {timeout:g} s:\n{err.decode()}"
        ) from None
    text = err.decode()
    assert_no_traceback("pairkit join", text)
    return proc.returncode, text


@pytest.fixture
def devices(tmp_path: Path, templates: dict[str, Device]) -> Iterator[Devices]:
    d = Devices(tmp_path, templates)
    yield d
    d.close()


def test_two_guests_are_asked_one_at_a_time_and_each_answer_goes_to_the_prompt_shown(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", *CLEAR, "--timeout", "60")
    george = devices.guest("george", target, *CLEAR, "--timeout", "60")
    ringo = devices.guest("ringo", target, *CLEAR, "--timeout", "60")
    first = host.expect(r"(George's phone|Ringo's tablet) asks to join").group(1)
    host.expect(r"\[r\]efuse\? ")
    # Both requests are in; the second is not printed while the first is asked.
    assert "asks to join" not in host.settle(2.0)
    host.line("r")
    second = host.expect(r"(George's phone|Ringo's tablet) asks to join").group(1)
    assert second != first
    host.expect(r"\[r\]efuse\? ")
    host.line("g")
    by_name = {"George's phone": george, "Ringo's tablet": ringo}
    rc_first, err_first = finished(by_name[first])
    rc_second, err_second = finished(by_name[second])
    assert rc_first == EXIT_REFUSED, err_first
    assert "refused" in err_first
    assert rc_second == 0, err_second
    host.expect(rf"paired with {second} by clear as guest")


def test_keys_typed_before_a_prompt_do_not_answer_it(devices: Devices) -> None:
    host, target = devices.host("paul", *CLEAR, "--timeout", "60")
    host.line("g")  # typed while nothing is asked
    host.settle(0.5)
    george = devices.guest("george", target, *CLEAR, "--timeout", "60")
    host.expect(r"George's phone asks to join")
    host.expect(r"\[r\]efuse\? ")
    host.line("r")
    rc, err = finished(george)
    assert rc == EXIT_REFUSED, err
    assert "paired with" not in host.settle(0.5)


def test_a_prompt_that_times_out_says_so_answers_no_and_the_next_prompt_gets_its_answer(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", *CLEAR, "--timeout", "3")
    george = devices.guest("george", target, *CLEAR, "--timeout", "30")
    host.expect(r"George's phone asks to join")
    host.expect(r"no answer within 3 s: answering no")
    rc, err = finished(george)
    assert rc == EXIT_REFUSED, err
    ringo = devices.guest("ringo", target, *CLEAR, "--timeout", "30")
    host.expect(r"Ringo's tablet asks to join")
    host.expect(r"\[r\]efuse\? ")
    host.line("g")
    rc, err = finished(ringo)
    assert rc == 0, err


def test_ctrl_c_at_the_hosts_allow_prompt_ends_it_and_the_guest_hears_it_was_cancelled(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", *CLEAR, "--timeout", "60")
    george = devices.guest("george", target, *CLEAR, "--timeout", "60")
    host.expect(r"George's phone asks to join")
    host.expect(r"\[r\]efuse\? ")
    host.ctrl_c()
    assert host.wait() == EXIT_INTERRUPTED
    rc, err = finished(george)
    assert rc != 0
    assert "the other side cancelled" in err, err


def test_ctrl_c_at_the_guests_compare_prompt_ends_it_and_the_host_hears_it_was_cancelled(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", "--method", "compare", "--yes", "--once",
                                "--timeout", "60")
    guest = devices.on_terminal("george", "join", target, "--method", "compare",
                                "--timeout", "60")
    guest.expect(r"Confirmation code: \d{3} \d{3}")
    guest.expect(r"\[y/N\] ")
    guest.ctrl_c()
    assert guest.wait() == EXIT_INTERRUPTED
    host.expect(r"George's phone: the other side cancelled|the other side cancelled")
    host.wait()


def test_ctrl_c_at_the_hosts_compare_prompt_ends_it_and_the_guest_hears_it_was_cancelled(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", "--method", "compare", "--timeout", "60")
    george = devices.guest("george", target, "--method", "compare", "--yes",
                           "--timeout", "60")
    host.expect(r"George's phone asks to join")
    host.expect(r"\[r\]efuse\? ")
    host.line("g")
    host.expect(r"Confirmation code: \d{3} \d{3}")
    host.expect(r"\[y/N\] ")
    host.ctrl_c()
    assert host.wait() == EXIT_INTERRUPTED
    rc, err = finished(george)
    assert rc != 0
    assert "the other side cancelled" in err, err


def test_a_guest_waiting_for_an_owner_who_never_answers_ends_at_its_timeout(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", *CLEAR, "--timeout", "120")
    george = devices.guest("george", target, *CLEAR, "--timeout", "5")
    host.expect(r"George's phone asks to join")
    rc, err = finished(george, timeout=WAIT)
    assert rc == EXIT_TIMEOUT, err
    assert f"waiting for {target} to let you in" in err
    assert "did not answer within 5 s" in err
    # The host's prompt is withdrawn: the guest said it stopped waiting.
    host.expect(r"error: guest .*did not answer within 5 s")


def test_the_guests_status_line_counts_on_a_terminal(devices: Devices) -> None:
    host, target = devices.host("paul", *CLEAR, "--timeout", "60")
    guest = devices.on_terminal("george", "join", target, *CLEAR, "--timeout", "60")
    guest.expect(rf"waiting for {target} to let you in\.\.\. 0 s")
    guest.expect(rf"\r\x1b\[Kwaiting for {target} to let you in\.\.\. [1-9]\d* s")
    host.expect(r"\[r\]efuse\? ")
    host.line("g")
    assert guest.wait() == 0
    assert "paired with Paul's phone by clear" in guest.output


def test_a_method_the_host_does_not_allow_is_refused_before_the_owner_is_asked(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", "--method", "qr", "--timeout", "60")
    stranger = devices.guest("george", target, "--method", "pin", "--pin", "482913",
                             "--timeout", "60")
    rc, err = finished(stranger)
    assert rc != 0
    assert "does not allow pairing by pin" in err, err
    shown = host.settle(1.0)
    assert "asks to join" not in host.output and "efuse?" not in shown, host.output


def test_during_a_pin_lockout_a_strangers_join_asks_nobody_and_is_refused(
    devices: Devices,
) -> None:
    host, target = devices.host("paul", "--method", "pin", "--timeout", "60")
    for i in range(5):  # five wrong PINs, each let in by the owner first (a stranger's join)
        guess = devices.guest("george", target, "--method", "pin", "--pin", f"90817{i}",
                              "--timeout", "60")
        host.expect(r"George's phone asks to join")
        host.expect(r"\[r\]efuse\? ")
        host.line("g")
        rc, err = finished(guess)
        assert rc != 0 and "wrong PIN" in err, err
    pin = host.expect(r"PIN: (\d{6})").group(1)
    stranger = devices.guest("ringo", target, "--method", "pin", "--pin", pin,
                             "--timeout", "60")
    rc, err = finished(stranger)
    assert rc == EXIT_REFUSED and "locked" in err, err
    host.settle(1.0)
    assert "Ringo's tablet asks to join" not in host.output, host.output
