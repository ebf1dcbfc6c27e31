"""Smoke test of bench/handshake.py: it runs, in --quick mode, and its bookkeeping holds.

No timing is asserted (machines are noisy; the bench reports ratios for people to read).  What is
checked is what would make the figures meaningless if it rotted: every exchange and method still
completes, the counts that make the floor follow the Noise rules and never claim more work than
the code does, and the output has the shape RESULTS.md describes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench.common import check_goals, machine_probe, probe_line, render_goals

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "handshake.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_handshake", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def quick(bench: ModuleType) -> dict:
    settings = bench.Settings(repeat=2, warmup=1, batch_target_s=0.0002, mtu=512)
    return bench.measure(settings)


def test_noise_counts_follow_the_section_5_rules(bench: ModuleType) -> None:
    # Worked by hand from Noise rev 34 §5.2/§5.3 for XX (-> e | <- e, ee, s, es | -> s, se):
    # per party 8 MixHash (prologue, e, payload | e, s, payload | s, payload), 3 MixKey and a
    # Split (4 HKDF), 4 AEAD (s and payload in messages 2 and 3), the peer's e and s loaded
    # once each (2 loads for 3 DH; KK: 2 for 4); doubled.
    xx = bench.noise_counts("Noise_XX_25519_ChaChaPoly_SHA256")
    assert xx == Counter(x25519_base=2, x25519_dh=6, x25519_load=4, sha256=16, noise_hkdf=8, aead=8)
    # XXpsk0 has a 36-byte name (hashed), a MixKeyAndHash and PSK-mode MixKeys on each e.
    psk = bench.noise_counts("Noise_XXpsk0_25519_ChaChaPoly_SHA256")
    assert psk == Counter(x25519_base=2, x25519_dh=6, x25519_load=4, sha256=20, noise_hkdf=14,
                          aead=10)
    kk = bench.noise_counts("Noise_KK_25519_ChaChaPoly_SHA256")
    assert kk == Counter(x25519_base=2, x25519_dh=8, x25519_load=4, sha256=14, noise_hkdf=10,
                         aead=4)
    with pytest.raises(ValueError):
        bench.noise_counts("Noise_XX_448_ChaChaPoly_SHA256")


def test_every_row_completes_with_positive_figures(bench: ModuleType, quick: dict) -> None:
    assert [r["name"] for r in quick["core"]] == [*bench.NOISE_CORE, bench.CPACE_CORE]
    assert [r["method"] for r in quick["methods"]] == list(bench.METHODS)
    assert set(quick["primitives"]) == set(bench.PRIMITIVE_NAMES)
    assert all(p["median_us"] > 0 for p in quick["primitives"].values())
    for row in quick["core"]:
        assert row["median_us"] > 0 and row["floor_us"] > 0
        assert row["ratio"] == pytest.approx(row["median_us"] / row["floor_us"])
    for row in quick["methods"]:
        assert row["floor_us"] > 0
        assert row["sansio"]["median_us"] > 0 and row["loopback"]["median_us"] > 0
        assert row["ratio_loopback"] == pytest.approx(
            row["loopback"]["median_us"] / row["floor_us"]
        )
        # Framing adds at least one header byte per link packet.
        assert row["link_packets"] >= row["flights"] >= 2
        assert row["link_bytes"] >= row["message_bytes"] + row["link_packets"]


def test_each_method_runs_the_whole_exchange(quick: dict) -> None:
    # The message sequences of pairing/methods.py's docstring: pin 2 round trips, qr and kk 1,
    # compare 6 flights (4, the last with the identity handshake's first message, then its 2
    # others), clear Offer/Accept and two
    # handshake messages, resume one round trip, kk-stale a refused resume and then kk.
    flights = {r["method"]: r["flights"] for r in quick["methods"]}
    assert flights == {
        "pin": 4,
        "qr": 2,
        "compare": 6,
        "clear": 4,
        "resume": 2,
        "kk": 2,
        "kk-stale": 4,
    }


def test_the_floor_claims_no_work_the_code_does_not_do(quick: dict) -> None:
    for row in [*quick["core"], *quick["methods"]]:
        name = row.get("name") or row["method"]
        for prim, count in row["counts"].items():
            assert row["calls"].get(prim, 0) >= count, (name, prim)
        assert row["calls_floor_us"] >= row["floor_us"] * 0.999, name


def test_noise_core_calls_equal_the_derived_counts(quick: dict) -> None:
    # The Noise module does exactly §5's hashing, HMACs, DHs and AEAD operations; only key
    # pairs differ (it loads raw private keys, which costs a fixed-base multiplication each).
    for row in quick["core"]:
        if not row["name"].startswith("Noise_"):
            continue
        for prim in ("x25519_dh", "x25519_load", "sha256", "noise_hkdf", "aead"):
            assert row["calls"].get(prim, 0) == row["counts"].get(prim, 0), (row["name"], prim)


def test_every_method_has_a_goal_line(bench: ModuleType, quick: dict) -> None:
    # Issue 13: each method over loopback against 2x its floor, as figure, goal and met.
    check_goals(quick["goals"])
    by_name = {g["name"]: g for g in quick["goals"]}
    for row in quick["methods"]:
        goal = by_name[f"{row['method']} loopback/floor"]
        assert goal["figure"] == row["ratio_loopback"]
        assert (goal["goal"], goal["bound"]) == (2.0, "<=")
    assert "\n".join(render_goals(quick["goals"])) in bench.render(quick)


def test_the_goals_figure_from_known_blocks(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three made-up blocks in place of the timed ones, so each figure is known exactly: every
    # primitive costs 1, 2 and 4 us in blocks 0, 1, 2 (batches s, 1.1 s, 0.9 s), and each
    # method's loopback median is 3.0, 1.5 and 2.5 times its block's floor.  The goal's figure is
    # the pooled ratio: the median of all nine runs (3.6 x the floor at 1 us) over the floor at
    # the median of all nine batches of each primitive, 2.0: 1.8.  (A median of the blocks' own
    # ratios would read 2.5; session 17's sceptic found that figure biased low by about 3% on
    # real runs, so it is not the goal's.)  Each block's prices and probes are kept, as
    # information.
    prices, ratios = (1.0, 2.0, 4.0), (3.0, 1.5, 2.5)
    unit = {name: 1.0 for name in bench.PRIMITIVE_NAMES}

    async def known_blocks(
        settings: object, timers: list[Any], cores: dict[str, object], method_bench: object
    ) -> list[dict[str, dict[str, list[float]]]]:
        out = []
        for s, r in zip(prices, ratios, strict=True):
            loop = {m: bench.floor_us(bench.method_counts(m), unit) * s * r for m in bench.METHODS}
            out.append({
                "primitives": {t.prim.name: [s, 1.1 * s, 0.9 * s] for t in timers},
                "probe": {
                    "python": [100 * s, 110 * s, 90 * s, 150 * s, 160 * s, 140 * s],
                    "c": [200 * s] * 6,
                    "syscall": [800 * s] * 6,
                },
                "core": {name: [10.0, 11.0, 9.0] for name in cores},
                "sansio": {m: [10.0, 11.0, 9.0] for m in bench.METHODS},
                "loopback": {m: [loop[m], 1.2 * loop[m], 0.8 * loop[m]] for m in bench.METHODS},
            })
        return out

    monkeypatch.setattr(bench, "_measure_blocks", known_blocks)
    result = bench.measure(bench.Settings(repeat=9, warmup=1, batch_target_s=0.0002, mtu=512))
    assert [b["runs"] for b in result["blocks"]] == [3, 3, 3]
    assert [b["per_op_us"] for b in result["blocks"]] == [
        {name: pytest.approx(s) for name in bench.PRIMITIVE_NAMES} for s in prices
    ]
    # The probes: three runs at a block's start, three at its end (the python probe 1.5x slower
    # there), each half's median kept apart as well as the median of all six.
    assert [b["probe_us"] for b in result["blocks"]] == [
        {"python": pytest.approx(125 * s), "c": pytest.approx(200 * s),
         "syscall": pytest.approx(800 * s)} for s in prices
    ]
    assert [(b["probe_start_us"]["python"], b["probe_end_us"]["python"])
            for b in result["blocks"]] == [
        (pytest.approx(100 * s), pytest.approx(150 * s)) for s in prices
    ]
    goals = {g["name"]: g for g in result["goals"]}
    for row in result["methods"]:
        assert row["ratio_loopback"] == pytest.approx(1.8)
        assert goals[f"{row['method']} loopback/floor"]["figure"] == row["ratio_loopback"]
    text = bench.render(result)
    assert "pin loopback/floor       figure 1.80x" in text
    assert "python/c 0.62 [0.62-0.62], 1,000 system calls 1600 us" in text
    assert "python probe, block's end over its start: 1.50, 1.50, 1.50" in text


def test_the_machine_probe_reads_each_probes_median_on_the_clock_given() -> None:
    # Each probe runs 3 times between two clock reads: python 1, 4, 2 us; c 2, 8, 4 us;
    # syscall 3, 1, 9 us.
    ticks = iter([0, 1000, 1000, 5000, 5000, 7000,
                  7000, 9000, 9000, 17000, 17000, 21000,
                  21000, 24000, 24000, 25000, 25000, 34000])
    probe = machine_probe(runs=3, clock=lambda: next(ticks))
    assert probe == {"python": 2.0, "c": 4.0, "syscall": 3.0, "python/c": 0.5}
    assert probe_line([probe, {**probe, "python/c": 0.75, "syscall": 7.0},
                       {**probe, "python/c": 0.6, "syscall": 1.0}]) == (
        "python/c 0.60 [0.50-0.75] over 3 probes; 1,000 system calls 3 us"
    )
    # probes from before the system-call probe (a JSON of an older run) print as before
    assert probe_line([{"python": 2.0, "c": 4.0, "python/c": 0.5}]) == (
        "python/c 0.50 [0.50-0.50] over 1 probes"
    )


def test_the_floor_leaves_prekeys_out(bench: ModuleType) -> None:
    # Prekeys are made ahead of need (issue 13): no full pairing's floor counts 16 key pairs.
    for method in ("pin", "qr", "compare", "clear", "kk"):
        assert bench.method_counts(method)["x25519_base"] <= 5, method
    assert bench.method_counts("resume")["x25519_base"] == 2
    assert bench.cpace_counts(confirmation=False)["fe_map"] == 2


def test_the_floor_counts_th_only_where_a_method_binds_it(bench: ModuleType) -> None:
    # docs/protocol.md §3: pin, compare and clear bind th (one HKDF per side); qr and kk bind
    # the announcements through hello_hash instead, so th is no work of theirs.
    noise = {
        "pin": bench.noise_counts(bench.PIN_NOISE), "clear": bench.noise_counts(bench.PIN_NOISE),
        "qr": bench.noise_counts(bench.QR_NOISE), "kk": bench.noise_counts(bench.KK_NOISE),
    }
    assert bench.method_counts("clear") - noise["clear"] == Counter(sha256=2, hkdf_sha256=6)
    assert bench.method_counts("qr") - noise["qr"] == Counter(sha256=3, hkdf_sha256=8)
    # kk: and the host's SHA-256 of the static key Noise IK decrypted (the id it finds the
    # guest by)
    assert bench.method_counts("kk") - noise["kk"] == Counter(sha256=3, hkdf_sha256=6)


def test_each_primitive_is_timed_at_the_fastest_way(bench: ModuleType) -> None:
    # Noise's HKDF has two implementations here (tests/test_noise.py checks they agree); the
    # timer keeps whichever is faster.
    prim = {p.name: p for p in bench.PRIMITIVES}["noise_hkdf"]
    fns = [prim.make(), *(make() for make in prim.alternatives)]
    assert len(fns) == 2
    timer = bench.PrimitiveTimer(prim, 0.0002)
    assert timer.chosen in (0, 1) and timer.sample() > 0


def test_table_renders_every_row(bench: ModuleType, quick: dict) -> None:
    text = bench.render(quick)
    for name in [*bench.NOISE_CORE, bench.CPACE_CORE, *bench.METHODS, *bench.PRIMITIVE_NAMES]:
        assert name in text
    assert "loop/sansio" in text and "ratio" in text


def test_script_runs_quick_json_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["settings"]["repeat"] == 1
    assert data["command"].endswith("bench/handshake.py --quick --json --repeat 1")
    assert {"nproc", "python", "cryptography"} <= set(data["machine"])


def test_bad_repeat_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeat", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--mtu", "10"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--clock", "sundial"])
    assert bench.parse_args(["--clock", "cpu"]).clock == "cpu"
