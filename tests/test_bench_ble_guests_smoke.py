"""Smoke test of bench/ble_guests.py: a few guests join one host at once on bumble virtual
controllers, and the bench's books hold.

No timing is asserted (machines are noisy; the bench reports figures for people to read).  What
is checked is what would make its figures meaningless: every guest pairs by the method planned,
the host reports and stores each, every guest's times are in order, the goal lines are whole and
read the figures printed, and the command's output has the shape bench/RESULTS.md describes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import ble_guests
from bench.common import check_goals, render_goals

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    run = asyncio.run(ble_guests.measure(3))
    return ble_guests.result_of(run, ["--guests", "3"])


def test_every_guest_pairs_and_the_host_stores_each(quick: dict[str, Any]) -> None:
    assert quick["paired"] == quick["host_paired"] == quick["host_stored"] == 3
    assert quick["failures"] == []
    assert quick["error_count"] == 0, quick["errors_logged"]  # no crossing terminations


def test_each_guests_times_are_in_order(quick: dict[str, Any]) -> None:
    run = asyncio.run(ble_guests.measure(2))
    for row in run["rows"]:
        assert row["method"] == "compare"
        assert 0 < row["connect_s"] < row["paired_s"]
    assert 1 <= ble_guests.result_of(run, None)["most_in_flight"] <= 2


def test_goal_lines_read_the_figures_printed(quick: dict[str, Any]) -> None:
    check_goals(quick["goals"])
    paired, connect, pairing = quick["goals"]
    assert (paired["figure"], paired["goal"], paired["bound"]) == (3.0, 3.0, ">=")
    assert connect["figure"] == pytest.approx(quick["connect_s"]["max"] / 20.0)
    assert pairing["figure"] == pytest.approx(quick["pairing_s"]["max"] / 30.0)
    text = ble_guests.render(quick)
    assert "\n".join(render_goals(quick["goals"])) in text
    assert "connect (queue included)" in text and "pairing (link up to stored)" in text


def test_a_failed_guest_meets_no_pairing_goal(quick: dict[str, Any]) -> None:
    failed = dict(quick, failures=["PairingTimeout: the host did not answer"])
    goals = ble_guests.goals(failed)
    check_goals(goals)
    assert goals[0]["figure"] == 0 and goals[0]["met"] is False


def test_script_runs_quick_json_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ble_guests.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["settings"]["guests"] == 3
    assert data["command"].endswith("bench/ble_guests.py --quick --json")
    check_goals(data["goals"])
    with pytest.raises(SystemExit):
        ble_guests.parse_args(["--guests", "0"])
