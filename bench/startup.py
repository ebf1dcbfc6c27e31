"""Start-up benchmark: ``pairkit --help`` and ``pairkit --version`` beside an empty interpreter.

Goal (issue 12, item 7): each command answers within 100 ms on this machine.  Every figure is
the wall-clock time of a whole process, measured with ``time.perf_counter`` around
``subprocess.run``, the way a person or a script starting ``pairkit`` sees it.

References, measured in the same run and interleaved with pairkit's runs (each round runs every
command once, in a rotated order, so all of them see the same machine):

* ``python -c pass`` with the same interpreter: the floor nothing can beat (interpreter start,
  ``site``, the venv's ``.pth`` files);
* ``python -c "import click"``: the floor of any click program (informational; pairkit's own
  cost is the distance from it).

``ratio = median / median of python -c pass``.  Each process gets the environment of this one,
except that compiled bytecode is kept under a temporary ``PYTHONPYCACHEPREFIX`` (and
PYTHONDONTWRITEBYTECODE, which this machine sets, is dropped): an installed pairkit has its
bytecode compiled, and without it every run would compile pairkit's sources again.  Warm-up runs
fill that cache before the timed rounds.

Usage::

    .venv/bin/python bench/startup.py             # 40 rounds (about 20 s)
    .venv/bin/python bench/startup.py --json      # one JSON object
    .venv/bin/python bench/startup.py --quick     # 3 rounds (the smoke test)
    .venv/bin/python bench/startup.py --rounds 100

Figures and the commands that produced them are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, nproc, positive  # noqa: E402

#: the goal for each pairkit command, milliseconds of wall-clock time (median)
GOAL_MS = 100.0
ROUNDS = 40
WARMUP = 3

_SCRIPT = Path(sys.executable).with_name("pairkit")
PAIRKIT: list[str] = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "pairkit.cli.main"]
)
#: name -> (argv, what its stdout must start with: checked on every run)
COMMANDS: dict[str, tuple[list[str], str]] = {
    "python -c pass": ([sys.executable, "-c", "pass"], ""),
    "python -c 'import click'": ([sys.executable, "-c", "import click"], ""),
    "pairkit --help": ([*PAIRKIT, "--help"], "Usage: pairkit"),
    "pairkit --version": ([*PAIRKIT, "--version"], "pairkit, version "),
    # pairkit's pytest plugin is loaded by every pytest run where pairkit is installed: its
    # cost is the distance between these two (issue 12, item 1)
    "pytest --version, no plugin": (
        [sys.executable, "-m", "pytest", "--version", "-p", "no:pairkit"], "pytest "),
    "pytest --version": ([sys.executable, "-m", "pytest", "--version"], "pytest "),
}
REFERENCE = "python -c pass"
TARGETS = ("pairkit --help", "pairkit --version")


def run_once(argv: list[str], expect: str, env: dict[str, str]) -> float:
    """One process, start to exit, in milliseconds; its output checked."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                          cwd=tempfile.gettempdir())
    ms = (time.perf_counter() - t0) * 1000
    if done.returncode != 0 or not done.stdout.startswith(expect):
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")
    return ms


def _summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": round(statistics.median(samples), 1), "q1_ms": round(q[0], 1),
            "q3_ms": round(q[2], 1), "min_ms": round(min(samples), 1), "runs": len(samples)}


def measure(rounds: int, warmup: int) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pairkit-startup-") as cache:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAIRKIT_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache
        env["PAIRKIT_HOME"] = str(Path(cache) / "home")  # --help must not need (or make) one
        names = list(COMMANDS)
        for _ in range(warmup):
            for name in names:
                run_once(*COMMANDS[name], env)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                samples[name].append(run_once(*COMMANDS[name], env))
        home_made = (Path(cache) / "home").exists()
    ref = statistics.median(samples[REFERENCE])
    rows = []
    for name in names:
        s = _summary(samples[name])
        row: dict[str, Any] = {"name": name, **s,
                               "ratio": round(statistics.median(samples[name]) / ref, 2)}
        if name in TARGETS:
            row["goal_ms"] = GOAL_MS
            row["met"] = statistics.median(samples[name]) <= GOAL_MS
        rows.append(row)
    plugin_ms = round(statistics.median(samples["pytest --version"])
                      - statistics.median(samples["pytest --version, no plugin"]), 1)
    return {
        "plugin_ms": plugin_ms,
        "date": datetime.date.today().isoformat(),
        "machine": {"nproc": nproc(), "cpu": cpu_model(), "python": platform.python_version(),
                    "implementation": platform.python_implementation(),
                    "load": round(os.getloadavg()[0], 2)},
        "settings": {"rounds": rounds, "warmup": warmup, "command": " ".join(PAIRKIT)},
        "rows": rows,
        "checks": {"outputs checked on every run": True,
                   "no keystore made by --help/--version": not home_made},
        "seconds": round(time.perf_counter() - started, 1),
    }


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"pairkit start-up bench, {result['date']}: nproc {m['nproc']}, {m['cpu']}, "
        f"{m['implementation']} {m['python']}, load average {m['load']}",
        f"each figure: wall-clock ms of a whole process, median [q1-q3] of {s['rounds']} "
        f"interleaved rounds after {s['warmup']} warm-up rounds; ratio = median / median of "
        f"'{REFERENCE}' (same run); goal: median <= {GOAL_MS:g} ms",
        f"pairkit is run as: {s['command']}",
        "",
        f"{'command':<28} {'median':>7} {'[q1-q3]':>15} {'min':>6} {'ratio':>6} "
        f"{'goal':>8} {'met':>4}",
    ]
    for row in result["rows"]:
        spread = f"[{row['q1_ms']:.1f}-{row['q3_ms']:.1f}]"
        goal = f"<={row['goal_ms']:g} ms" if "goal_ms" in row else ""
        met = ("yes" if row["met"] else "NO") if "met" in row else ""
        lines.append(f"{row['name']:<28} {row['median_ms']:>7.1f} {spread:>15} "
                     f"{row['min_ms']:>6.1f} {row['ratio']:>6.2f} {goal:>8} {met:>4}")
    lines += [
        "",
        f"pairkit's pytest plugin adds {result['plugin_ms']:.1f} ms to pytest's start-up "
        "(median difference of the two pytest rows)",
        f"checks: {', '.join(k for k, v in result['checks'].items() if v)}"
        + ("" if all(result["checks"].values()) else " -- SOME FAILED"),
        f"total time {result['seconds']} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up (smoke test)")
    parser.add_argument("--rounds", type=positive, default=None,
                        help=f"timed rounds (default {ROUNDS})")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else ROUNDS)
    result = measure(rounds, 1 if args.quick else WARMUP)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
