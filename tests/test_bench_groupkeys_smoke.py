"""Smoke test of bench/groupkeys.py: it runs in --quick mode and its bookkeeping holds.

No timing is asserted.  What is checked is what would make the figures meaningless: every row
times what it claims (the member opens what the controller seals, reads what it broadcasts),
each row has its reference measured in the same run, the ratios are the ratios of the printed
medians, and the sizes are the protocol's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bench.common import check_goals, render_goals
from pairkit.pairing.groups import ADVERT_OVERHEAD

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "groupkeys.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_groupkeys", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def quick(bench: ModuleType) -> dict:
    return bench.measure(bench.Settings(blocks=2, per_block=2, warmup=1))


def test_every_row_has_its_reference_and_consistent_ratios(bench: ModuleType, quick: dict) -> None:
    assert [r["name"] for r in quick["rows"]] == list(bench.ROWS)
    for row in quick["rows"]:
        ours, ref = row["ours"], row["reference"]
        assert ours["median_us"] > 0 and ref["median_us"] > 0
        assert ours["q1_us"] <= ours["median_us"] <= ours["q3_us"]
        assert row["ratio"] == pytest.approx(ours["median_us"] / ref["median_us"])
        assert ours["per_s"] == pytest.approx(1e6 / ours["median_us"])
    envelopes = [r for r in quick["rows"] if r["name"].startswith("envelope")]
    for row in envelopes:  # the floor adds the signature primitive to raw HPKE
        assert row["floor_us"] == pytest.approx(
            row["reference"]["median_us"] + row["extra"]["median_us"])


def test_the_timed_operations_do_what_they_claim(quick: dict) -> None:
    assert quick["checks"] == {"envelope_opens": True, "broadcast_reads": True,
                               "sizes_add_up": True}


def test_sizes_are_the_protocols(quick: dict) -> None:
    sizes = quick["sizes"]
    assert sizes["advert_overhead"] == ADVERT_OVERHEAD == 41
    assert sizes["advert_for_20_byte_command"] == 61
    assert sizes["max_command_extended"] == 208 - 41
    assert sizes["max_command_legacy"] == 0 and sizes["legacy_service_data"] == 10
    # controller id, member id, group, epoch, enc (32), ct (48), signature (64), CBOR heads
    assert 16 + 16 + 32 + 48 + 64 < sizes["envelope"] < 230
    assert sizes["key_delivery_1"] > sizes["envelope"]


def test_every_row_has_a_goal_line(bench: ModuleType, quick: dict) -> None:
    check_goals(quick["goals"])
    assert len(quick["goals"]) == len(quick["rows"])
    for row, goal in zip(quick["rows"], quick["goals"], strict=True):
        assert goal["figure"] == row.get("ratio_floor", row["ratio"])
    assert "\n".join(render_goals(quick["goals"])) in bench.render(quick)


def test_table_renders_every_row(bench: ModuleType, quick: dict) -> None:
    text = bench.render(quick)
    for name in bench.ROWS:
        assert name in text
    for words in ("raw HPKE seal", "raw HPKE open", "ratio", "overhead 41 B", "167 B"):
        assert words in text


def test_script_runs_quick_json_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--blocks", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["settings"]["blocks"] == 1
    assert data["command"].endswith("bench/groupkeys.py --quick --json --blocks 1")
    assert {"nproc", "python", "cryptography"} <= set(data["machine"])


def test_bad_arguments_are_refused(bench: ModuleType) -> None:
    for args in (["--blocks", "0"], ["--per-block", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(args)
