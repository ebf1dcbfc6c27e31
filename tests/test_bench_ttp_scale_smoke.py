"""Smoke test of bench/ttp_scale.py (issue 17): one and two key server processes on one real
PostgreSQL database, in --quick mode.  No timing is asserted; what is checked is that both runs
delivered every key through real server processes, and that the output states figure, goal and
met (and why, when not met).  Skipped, with the reason, where no PostgreSQL can start."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.pg_harness import why_unavailable

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    path = ROOT / "bench" / "ttp_scale.py"
    spec = importlib.util.spec_from_file_location("bench_ttp_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_scale_out_run(tmp_path: Path) -> None:
    why = why_unavailable()
    if why is not None:
        pytest.skip(why)
    bench = _load()
    lines: list[str] = []
    rc = bench.main(["--quick", "--json"], out=lines.append)
    if rc == 3:  # initdb or pg_ctl failed here: the bench said why
        pytest.skip(lines[0])
    assert rc == 0, lines
    result = json.loads(lines[0])
    assert [r["servers"] for r in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["deliveries"] >= 4 and run["per_second"] > 0
    assert result["ratio"] == pytest.approx(
        result["runs"][1]["per_second"] / result["runs"][0]["per_second"])
    assert result["met"] is (result["ratio"] >= result["goal"] == 1.5)
    text = bench.render(result)
    assert any(line.startswith("figure: ") for line in text)
    assert "goal: >= 1.5" in text and any(line.startswith("met: ") for line in text)
    assert result["met"] or any(line.startswith("why not: ") for line in text)
