"""Smoke test of bench/concurrent_pairings.py: small levels run, and the bookkeeping holds.

No timing or memory figure is asserted (machines are noisy; the bench reports them for people
to read).  What is checked is what would make its figures meaningless: every guest of a level
pairs with the host in a child process, the host stored each, the goal lines are whole and
consistent, and the command's output has the shape bench/RESULTS.md describes.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bench.common import check_goals, render_goals

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "concurrent_pairings.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_concurrent_pairings", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def quick(bench: ModuleType) -> dict:
    return bench.measure([2, 3], "compare", 1, 120.0)


def test_every_guest_pairs_and_is_stored_by_the_host(quick: dict) -> None:
    sizes = [lv["n"] for lv in quick["levels"]]
    assert sizes == [2, 3]
    for level in quick["levels"]:
        assert level["ok"] and level["failures"] == 0 and level["paired"] == level["n"]
        for row in level["rounds"]:
            assert row["paired"] == row["host_confirmed"] == row["host_stored"] == level["n"]
            assert row["cpu_s"] > 0 and row["wall_s"] > 0
        assert level["peak_rss_kib"] >= level["rss_before_kib"] > 0
    # the smallest level ran before and after the others, one round each
    assert len(quick["levels"][0]["rounds"]) == 2
    assert len(quick["machine"]["loadavg_1min"]) == 3


def test_goal_lines_are_whole_and_read_the_largest_level(bench: ModuleType, quick: dict) -> None:
    check_goals(quick["goals"])
    small, large = quick["levels"]
    paired, cost, rss = quick["goals"]
    assert (paired["figure"], paired["goal"], paired["bound"]) == (3.0, 3.0, ">=")
    assert cost["figure"] == pytest.approx(
        large["cpu_us_per_pairing"] / small["cpu_us_per_pairing"])
    assert (cost["goal"], cost["bound"]) == (bench.GOAL_COST_RATIO, "<=")
    assert rss["figure"] == pytest.approx(large["peak_rss_kib"] / 1024)
    assert "\n".join(render_goals(quick["goals"])) in bench.render(quick)


def test_a_level_with_a_failure_meets_no_pairing_goal(bench: ModuleType, quick: dict) -> None:
    level = dict(quick["levels"][-1], ok=False)
    goals = bench.goals([quick["levels"][0], level])
    check_goals(goals)
    assert goals[0]["figure"] == 0 and goals[0]["met"] is False
    # nor the cost goal: what paired of a failed run is no figure
    assert goals[1]["met"] is False


def test_larger_runs_are_interleaved_and_each_read_against_its_neighbours(
    bench: ModuleType,
) -> None:
    result = bench.measure([2, 3], "compare", 2, 120.0, repeat=2)
    small, large = result["levels"]
    assert len(small["rounds"]) == 2 * 3 and len(large["rounds"]) == 2  # S L S L S, 2 rounds
    assert len(result["machine"]["loadavg_1min"]) == 1 + 2 * 2

    def cost(row: dict) -> float:
        return row["cpu_s"] / row["paired"]

    for i, ratio in enumerate(large["ratios"]):
        around = small["rounds"][2 * i: 2 * i + 4]  # the S runs just before and after
        assert ratio == pytest.approx(cost(large["rounds"][i]) / statistics.median(
            cost(r) for r in around))
    assert result["goals"][1]["figure"] == pytest.approx(statistics.median(large["ratios"]))
    # prekeys the pool made before a run and the run used are charged to it, never credited
    # beyond what the run itself made
    for row in small["rounds"] + large["rounds"]:
        assert "prekeys_charged_cpu_s" in row and row["cpu_s"] > 0


def test_script_runs_quick_json_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["settings"]["sizes"] == [2, 4]
    assert data["command"].endswith("bench/concurrent_pairings.py --quick --json")
    check_goals(data["goals"])


def test_bad_sizes_are_refused(bench: ModuleType) -> None:
    for bad in (["--sizes", "10"], ["--sizes", "100,10"], ["--sizes", "0,10"],
                ["--method", "pin"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    assert bench.parse_args(["--sizes", "5,50,500"]).sizes == [5, 50, 500]


def test_over_tcp_the_host_runs_alone_and_every_guest_pairs(bench: ModuleType) -> None:
    """--over tcp: the host in a process of its own on 127.0.0.1, the guests in another; the
    level is shaped as the loopback one, its CPU the host's alone."""
    level = bench._tcp_as_level(3, "compare", 1, 120.0)
    (row,) = level["rounds"]
    assert row["paired"] == row["host_confirmed"] == row["host_stored"] == 3
    assert row["failures"] == [] and row["cpu_s"] > 0 and row["guests_cpu_s"] > 0
    assert level["peak_rss_kib"] >= level["rss_before_kib"] > 0
    assert bench.parse_args(["--over", "tcp"]).over == "tcp"
    with pytest.raises(SystemExit):
        bench.parse_args(["--over", "carrier-pigeon"])
