"""The Raspberry Pi service (issue 15 item 5): contrib/systemd/pairkit-host.service and its
installer give pairkit exactly CAP_NET_ADMIN, as a dedicated user, with the venv's own
interpreter, and nothing in the repository tells anyone to ``setcap`` an interpreter.

The unit is parsed as systemd reads it (systemd.syntax(7): sections, ``Key=value`` lines, ``#``
and ``;`` comments, a key given twice is a list), by a small parser here.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "systemd" / "pairkit-host.service"
INSTALL = ROOT / "contrib" / "systemd" / "install.sh"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: keep each setting on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: a setting before any section"
        key, sep, value = line.partition("=")
        assert sep, f"line {number}: not Key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def test_the_unit_has_its_sections(unit: dict[str, dict[str, list[str]]]) -> None:
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["Conflicts"] == ["bluetooth.service"]  # bumble needs hci0 alone


def test_exactly_cap_net_admin_and_no_way_to_more(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        (value,) = service[key]
        assert value.split() == ["CAP_NET_ADMIN"], key
    text = UNIT.read_text(encoding="utf-8")
    settings = "\n".join(f"{k}={v}" for k, values in service.items() for v in values)
    assert "CAP_NET_RAW" not in settings and "CAP_SYS_ADMIN" not in settings
    assert service["NoNewPrivileges"] == ["yes"]
    assert "setcap" not in settings and "sudo" not in text


def test_a_dedicated_user_and_the_venvs_own_interpreter(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    assert service["User"] == ["pairkit"] and service["Group"] == ["pairkit"]
    assert "DynamicUser" not in service and service["User"] != ["root"]
    (command,) = service["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == "/opt/pairkit/venv/bin/python"  # not /usr/bin/python3
    assert argv[1:3] == ["/opt/pairkit/venv/bin/pairkit", "host"]
    assert service["Environment"] == ["PAIRKIT_HOME=/var/lib/pairkit"]
    assert service["StateDirectory"] == ["pairkit"]
    assert service["ProtectSystem"] == ["strict"]
    # Only the pre-start steps run with privileges ('+'), and they may fail ('-').
    for step in service.get("ExecStartPre", []):
        assert step.startswith("-+/")


def test_the_installer_matches_the_unit_and_sets_no_capability() -> None:
    text = INSTALL.read_text(encoding="utf-8")
    subprocess.run(["sh", "-n", str(INSTALL)], check=True)  # parses
    assert INSTALL.stat().st_mode & 0o111, "the installer is executable"
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    body = "\n".join(commands)
    assert "setcap" not in body
    assert "useradd --system" in body and "pairkit" in body
    assert 'PREFIX/venv' in body and "pairkit-host.service" in body
    assert 'chmod 0600 "$CONF/host.env"' in body


def test_nothing_tells_anyone_to_setcap_an_interpreter() -> None:
    """The README and the error texts send people to the unit, not to setcap."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for line in readme.splitlines():
        if "setcap" in line:
            assert line.lstrip().startswith("Do not `setcap`") or "No `setcap`" in line, line
    assert "cap_net_raw" not in readme.lower().replace("`cap_net_raw` is not needed", "")
    assert "contrib/systemd/install.sh" in readme
    from pairkit.transports.bleak_bumble.errors import open_error

    text = str(open_error(PermissionError(1, "Operation not permitted"), "hci-socket:0"))
    assert "setcap" not in text and "CAP_NET_ADMIN" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_reads_the_unit() -> None:
    """systemd's own check; on a machine without the venv it may only miss the interpreter."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    problems = [
        line for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "/opt/pairkit/venv/bin/python is not executable" not in line
    ]
    assert problems == []


def test_a_lost_controller_is_waited_for_then_left_to_systemd(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """Issue 17, finding 6: the host retries a lost controller a bounded number of times in the
    process, then exits (code 6, a failure); systemd starts it again, with no start limit, so
    that the pre-start steps free the adapter each time, until the controller is back."""
    service = unit["Service"]
    (command,) = service["ExecStart"]
    argv = shlex.split(command)
    retries = int(argv[argv.index("--radio-retries") + 1])
    assert 1 <= retries <= 10  # a bounded wait in the process, not forever
    assert service["Restart"] == ["on-failure"]
    assert float(service["RestartSec"][0]) > 0
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    from click.testing import CliRunner

    from pairkit.cli.main import cli

    helped = CliRunner().invoke(cli, ["host", "--help"])
    assert helped.exit_code == 0 and "--radio-retries" in helped.output
