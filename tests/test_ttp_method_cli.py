"""`pairkit host/join --method ttp` across real processes, with a real key server process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cli_helpers import free_port

PAIRKIT = [sys.executable, "-m", "pairkit.cli.main"]
ROOT = Path(__file__).resolve().parent.parent


def run(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PAIRKIT_HOME=str(home), PAIRKIT_PIN="135790")
    return subprocess.run([*PAIRKIT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def start(home: Path | None, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PAIRKIT_PIN="135790")
    if home is not None:
        env["PAIRKIT_HOME"] = str(home)
    return subprocess.Popen([*PAIRKIT, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_line(proc: subprocess.Popen[str], pattern: str, deadline: float = 20) -> str:
    end = time.monotonic() + deadline
    assert proc.stderr is not None
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if re.search(pattern, line):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line matching {pattern!r}")


@pytest.fixture
def procs():
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def test_method_ttp_between_two_processes_through_a_key_server(tmp_path: Path, procs) -> None:
    srv, paul, george = tmp_path / "srv", tmp_path / "paul", tmp_path / "george"
    assert run(paul, "ttp", "init", "--dir", str(srv)).returncode == 0
    server_port, host_port = free_port(), free_port()
    server = start(None, "ttp", "serve", "--dir", str(srv), "--listen", f"127.0.0.1:{server_port}")
    procs.append(server)
    for home, name in ((paul, "Paul's phone"), (george, "George's phone")):
        assert run(home, "init", "--name", name).returncode == 0
        for _ in range(50):  # the server may still be starting
            r = run(home, "ttp", "enroll", "--server", f"127.0.0.1:{server_port}",
                    "--ca", str(srv / "ca.pem"))
            if r.returncode == 0:
                break
            time.sleep(0.1)
        assert r.returncode == 0, r.stderr
    host = start(paul, "host", "-t", f"tcp:127.0.0.1:{host_port}", "-m", "ttp", "--yes",
                 "--json", "--once")
    procs.append(host)
    wait_line(host, "is waiting on")
    joined = run(george, "join", f"tcp:127.0.0.1:{host_port}", "-m", "ttp", "--json")
    assert joined.returncode == 0, joined.stderr
    assert "Traceback" not in joined.stderr
    guest_view = json.loads(joined.stdout)
    host_out, _ = host.communicate(timeout=20)
    host_view = json.loads(host_out.splitlines()[0])
    assert guest_view["method"] == host_view["method"] == "ttp"
    assert guest_view["session"] == host_view["session"]
    assert guest_view["peer"]["name"] == "Paul's phone"
    assert host_view["peer"]["name"] == "George's phone"


def test_method_ttp_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "george"
    assert run(home, "init", "--name", "George's phone").returncode == 0
    r = run(home, "join", "tcp:127.0.0.1:9", "-m", "ttp")
    assert r.returncode == 2
    assert "--ttp HOST:PORT" in r.stderr and "Traceback" not in r.stderr
