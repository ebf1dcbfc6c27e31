"""Smoke test of bench/startup.py: it runs in --quick mode, every row has figures, the goal is
judged for pairkit's two commands only, and --help made no keystore.  (No time is asserted.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_startup_bench_runs_and_keeps_its_books() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    result = json.loads(done.stdout)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"python -c pass", "python -c 'import click'", "pairkit --help",
                         "pairkit --version", "pytest --version, no plugin", "pytest --version"}
    assert all(r["median_ms"] > 0 and r["runs"] == 3 for r in rows.values())
    assert {n for n, r in rows.items() if "goal_ms" in r} == {"pairkit --help",
                                                               "pairkit --version"}
    assert rows["python -c pass"]["ratio"] == 1.0
    assert isinstance(result["plugin_ms"], float)
    assert all(result["checks"].values())
