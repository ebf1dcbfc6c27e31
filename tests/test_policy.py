"""The owner's policy file (cli/config.py) and what it changes for the commands."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pairkit.cli.config import load_policy
from pairkit.pairing.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PAIRKIT = [sys.executable, "-m", "pairkit.cli.main"]


def keystore_in(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path / "keystore.pk"


def test_no_file_means_no_policy(tmp_path: Path) -> None:
    assert load_policy(tmp_path / "keystore.pk")["host"] == {}


def test_a_good_policy_is_read(tmp_path: Path) -> None:
    policy = load_policy(keystore_in(tmp_path, """
[host]
transport = "bumble:usb:0"
visible = 600
share = "~/Videos"
methods = ["pin", "qr"]

[discover]
timeout = 5
"""))
    assert policy["host"]["visible"] == 600
    assert policy["host"]["share"] == str(Path("~/Videos").expanduser())
    assert policy["discover"]["timeout"] == 5


@pytest.mark.parametrize(
    "text, why",
    [
        ("[hots]\nvisible = 5\n", "unknown section"),
        ("[host]\nvisibel = 5\n", "no setting 'visibel'"),
        ("[host]\nvisible = 'soon'\n", "wrong type"),
        ("[host]\nvisible = true\n", "wrong type"),
        ("[host]\nvisible = -1\n", "positive"),
        ("[host]\nmethods = [1]\n", "method names"),
        ("[host\n", "not valid TOML"),
    ],
)
def test_a_bad_policy_is_refused_and_named(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_policy(keystore_in(tmp_path, text))


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, PAIRKIT_HOME=str(home), PAIRKIT_PIN="135790")


def test_the_cli_reports_a_bad_policy_without_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "paul"
    subprocess.run([*PAIRKIT, "init", "--name", "Paul"], cwd=ROOT, env=_env(home), check=True,
                   capture_output=True, timeout=60)
    (home / "config.toml").write_text("[host]\nvisibel = 60\n")
    r = subprocess.run([*PAIRKIT, "host"], cwd=ROOT, env=_env(home), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "visibel" in r.stderr and "Traceback" not in r.stderr


def test_a_policy_makes_the_host_discoverable_with_no_flag(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        radio = subprocess.Popen([*PAIRKIT, "radio", "--ports", "0", "0"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(radio)
        assert radio.stdout is not None
        line = radio.stdout.readline()
        ports = re.findall(r"bumble:tcp-client:\S+", line)
        assert len(ports) == 2, line
        paul, george = tmp_path / "paul", tmp_path / "george"
        for home, name in ((paul, "Paul's Pi"), (george, "George's laptop")):
            subprocess.run([*PAIRKIT, "init", "--name", name], cwd=ROOT, env=_env(home),
                           check=True, capture_output=True, timeout=60)
        (paul / "config.toml").write_text(f'[host]\ntransport = "{ports[0]}"\nvisible = 120\n')
        (george / "config.toml").write_text(f'[discover]\ntransport = "{ports[1]}"\n')
        host = subprocess.Popen([*PAIRKIT, "host", "--yes"], cwd=ROOT, env=_env(paul),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(host)
        assert host.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = host.stderr.readline()
            if "visible to strangers for 120 s" in text:
                break
        else:
            raise AssertionError("the host did not open the policy's window")
        found = subprocess.run([*PAIRKIT, "discover", "--json"], cwd=ROOT, env=_env(george),
                               capture_output=True, text=True, timeout=60)
        devices = json.loads(found.stdout)["devices"]
        assert devices and devices[0]["visible"] is True
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.parametrize(
    "text, ok",
    [("E9:84:19:A6:6E:44", True), ("1D0E4B6A-7C1F-4E0B-9A7E-2B2A1C3D4E5F", True),
     ("Paul's phone", False), ("E9:84:19:A6:6E", False)],
)
def test_ble_targets_include_macos_device_uuids(text: str, ok: bool) -> None:
    from pairkit.presence import is_ble_address

    assert is_ble_address(text) is ok


# -- [pace]: the bumble host's link pace during transfers (transports/ble/pace.py) -------------


def test_a_pace_section_becomes_the_hosts_pace_config(tmp_path: Path) -> None:
    from pairkit.cli.config import pace_options
    from pairkit.transports.ble.pace import PaceConfig

    policy = load_policy(keystore_in(tmp_path, """
[pace]
burst_bytes = 4096
relax_after = 2
fast_interval_ms = [7.5, 15]
relaxed_interval_ms = [45, 60]
peripheral_latency = 1
supervision_timeout_ms = 5000
phy_2m = false
request_timeout = 3
"""))
    assert pace_options(policy) == {"pace": PaceConfig(
        burst_bytes=4096, relax_after=2.0, fast_interval_ms=(7.5, 15.0),
        relaxed_interval_ms=(45.0, 60.0), peripheral_latency=1, supervision_timeout_ms=5000.0,
        phy_2m=False, request_timeout=3.0)}
    off = load_policy(keystore_in(tmp_path, "[pace]\nenabled = false\n"))
    assert pace_options(off) == {"pace": None}  # the host never asks
    assert pace_options(load_policy(keystore_in(tmp_path, "[host]\nvisible = 5\n"))) == {}


@pytest.mark.parametrize(
    "text, why",
    [
        ("enabled = 'yes'", r"\[pace\] enabled must be true or false"),
        ("phy_2m = 1", r"\[pace\] phy_2m must be true or false"),
        ("burst_bytes = 0", r"\[pace\] burst_bytes must be a positive integer"),
        ("burst_bytes = 1.5", r"\[pace\] burst_bytes has the wrong type"),
        ("burst_bytes = true", r"\[pace\] burst_bytes has the wrong type"),
        ("relax_after = 0", r"\[pace\] relax_after and request_timeout must be positive"),
        ("fast_interval_ms = [15]", r"\[pace\] fast_interval_ms must be \[min, max\] in ms"),
        ("fast_interval_ms = ['a', 15]", r"\[pace\] fast_interval_ms must be \[min, max\]"),
        ("fast_interval_ms = [16, 16]", r"\[pace\] fast_interval_ms: .*multiples of 1.25 ms"),
        ("relaxed_interval_ms = [50, 30]", r"\[pace\] relaxed_interval_ms must be \(min, max\)"),
        ("peripheral_latency = 500", r"\[pace\] peripheral_latency must be 0 to 499"),
        ("supervision_timeout_ms = 50", r"\[pace\] supervision_timeout_ms must be 100 to 32000"),
        ("burst = 10", r"\[pace\] has no setting 'burst'"),
    ],
)
def test_a_bad_pace_is_refused_and_named(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_policy(keystore_in(tmp_path, f"[pace]\n{text}\n"))


def test_the_cli_refuses_a_bad_pace_with_exit_2_and_names_it(tmp_path: Path) -> None:
    home = tmp_path / "paul"
    home.mkdir()
    (home / "config.toml").write_text("[pace]\nburst_bytes = -5\n")
    # The policy is checked before the keystore is even unlocked (no keystore here at all).
    r = subprocess.run([*PAIRKIT, "host", "-t", "bumble:virtual"], cwd=ROOT, env=_env(home),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "config.toml: [pace] burst_bytes must be a " \
        "positive integer" in r.stderr
    assert "Traceback" not in r.stderr and "PaceConfig" not in r.stderr


@pytest.mark.parametrize("section", ["burst_bytes = 4096\nrelax_after = 0.5", "enabled = false"])
async def test_the_policys_pace_reaches_the_hosts_transport(tmp_path: Path, section: str) -> None:
    """``pairkit host``'s way (cli/main.py): the policy's [pace] into HostOptions, into the
    bumble transport run_host opens, and into the links it accepts."""
    import asyncio

    from pairkit.cli.config import pace_options
    from pairkit.cli.flows import HostOptions, run_host
    from pairkit.keystore import Argon2Params, Keystore
    from pairkit.pairing.negotiation import Method
    from pairkit.presence import Presence

    policy = load_policy(keystore_in(tmp_path, f"[pace]\n{section}\n"))
    (expected,) = pace_options(policy).values()
    ks = Keystore.create(tmp_path / "keystore.pk", "135790", name="Paul",
                         kdf=Argon2Params.cheapest())
    opts = HostOptions(transport="bumble:virtual", methods=frozenset({Method.PIN}), quiet=True,
                       pace=pace_options(policy))
    presences: list[Presence] = []
    started = asyncio.Event()
    task = asyncio.create_task(run_host(ks, opts, presence_out=presences,
                                        ready=lambda _a, _s: started.set()))
    try:
        await asyncio.wait_for(started.wait(), 10)
        transport = presences[0].transport
        assert transport.config.pace == expected
        assert transport.config.link_options.pace == expected
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
