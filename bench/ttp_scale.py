"""Key server scale-out: key deliveries per second with one and with two server processes on
one PostgreSQL database (``pairkit ttp serve --db postgresql://...``), issue 17.

A real PostgreSQL 15 is started for the run (tests/pg_harness.py: Debian's binaries, as the
``postgres`` user when run as root, a unix socket in a temporary directory).  For one and then
two server processes (``python -m pairkit.keyserver --db URL``, each on a fresh database), the
devices run in this process under asyncio, ``pairs`` pairs at a time, each pair delivering keys
one after another; each device's connection goes to the servers in turn (round robin, as a load
balancer would), so with two servers half the matches are made across processes.  A delivery is
what ``bench/ttp.py`` counts: both devices open TLS 1.3, prove their key, state matching intents
and get the same SK.

The reference is the one-process figure of the same run: ``ratio = two / one``; the goal is a
ratio of 1.5 or more.  The CPU the machine had to give is reported beside it (busy cores during
each run, from /proc/stat, and how much of it went to the servers, the devices' process,
PostgreSQL and other jobs), since on a machine with few cores the devices' own process and
PostgreSQL take the cores a second server would need.

Usage::

    .venv/bin/python bench/ttp_scale.py            # 100 pairs, 400 deliveries per run
    .venv/bin/python bench/ttp_scale.py --json
    .venv/bin/python bench/ttp_scale.py --quick    # a smoke run (the test suite uses it)
    .venv/bin/python bench/ttp.py --scale-out      # the same, from the key server's bench
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    nproc,
    positive,
    process_cpu,
    start_key_server,
    stop_process,
)
from pairkit.keyserver.certs import init_server_dir  # noqa: E402
from pairkit.pairing.methods import LocalIdentity  # noqa: E402
from pairkit.pairing.ttp import IntentRole  # noqa: E402
from pairkit.ttp import enrol, request_key  # noqa: E402
from tests.pg_harness import PgUnavailable, running_cluster  # noqa: E402

#: two processes must deliver at least this many times as many keys per second as one
GOAL = 1.5


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (Linux /proc/stat); (0, 0) elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _postgres_cpu(data: Path) -> float:
    """CPU seconds used so far by the PostgreSQL cluster in ``data`` (its postmaster and the
    backends it started; Linux)."""
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = process_cpu(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                total += process_cpu(int(entry.name))
    return total


async def run_servers(
    directory: Path, url: str, servers: int, pairs: int, deliveries: int, pg_data: Path
) -> dict[str, Any]:
    """Deliveries per second with ``servers`` processes on the database at ``url``."""
    procs = [await start_key_server(directory, 2 * pairs, database=url)
             for _ in range(servers)]
    ca = directory / "ca.pem"
    turn = itertools.cycle([address for _, address in procs])
    try:
        devices = [LocalIdentity.generate(f"bench-{i}") for i in range(2 * pairs)]
        for i in range(0, len(devices), 50):
            await asyncio.gather(*(enrol(next(turn), ca, x, timeout=60)
                                   for x in devices[i : i + 50]))
        rounds = max(2, -(-deliveries // pairs))

        async def pair_loop(a: LocalIdentity, b: LocalIdentity, n: int) -> None:
            for _ in range(n):
                context = os.urandom(32)
                ka, kb = await asyncio.gather(
                    request_key(next(turn), ca, a, peer_id=b.device_id, context=context,
                                role=IntentRole.HOST, wait=30, timeout=60),
                    request_key(next(turn), ca, b, peer_id=a.device_id, context=context,
                                role=IntentRole.GUEST, wait=30, timeout=60),
                )
                if ka.sk != kb.sk:  # pragma: no cover - the tests check this
                    raise RuntimeError("a pair received different keys")

        couples = [(devices[2 * i], devices[2 * i + 1]) for i in range(pairs)]
        await asyncio.gather(*(pair_loop(a, b, 1) for a, b in couples))  # warm-up
        busy0, total0 = _cpu_ticks()
        servers0 = sum(process_cpu(p.pid) for p, _ in procs)
        pg0 = _postgres_cpu(pg_data)
        me0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(pair_loop(a, b, rounds) for a, b in couples))
        elapsed = time.perf_counter() - t0
        me1 = time.process_time()
        servers1 = sum(process_cpu(p.pid) for p, _ in procs)
        pg1 = _postgres_cpu(pg_data)
        busy1, total1 = _cpu_ticks()
    finally:
        for proc, _ in procs:
            await stop_process(proc)
    n = pairs * rounds
    busy = (busy1 - busy0) / (total1 - total0) * nproc() if total1 > total0 else 0.0
    return {"servers": servers, "pairs": pairs, "deliveries": n, "seconds": elapsed,
            "per_second": n / elapsed, "busy_cores": busy,
            "server_cores": (servers1 - servers0) / elapsed, "device_cores": (me1 - me0) / elapsed,
            "postgres_cores": (pg1 - pg0) / elapsed}


async def measure_async(pairs: int, deliveries: int) -> dict[str, Any]:
    """One and two server processes, each on a fresh database of one PostgreSQL."""
    with running_cluster() as pg, tempfile.TemporaryDirectory(prefix="pairkit-scale-") as tmp:
        d = init_server_dir(Path(tmp) / "srv")
        runs = [await run_servers(d.root, pg.create_database(), n, pairs, deliveries,
                                  pg.root / "data")
                for n in (1, 2)]
    ratio = runs[1]["per_second"] / runs[0]["per_second"]
    return {"date": datetime.date.today().isoformat(), "nproc": nproc(), "runs": runs,
            "ratio": ratio, "goal": GOAL, "met": ratio >= GOAL}


def render(result: dict[str, Any]) -> list[str]:
    """The figure, goal and met lines (and why, when the goal is not met)."""
    one = result["runs"][0]
    lines = [
        f"scale-out on one PostgreSQL database, {one['pairs']} pairs at once, connections "
        f"round robin over the servers (nproc {result['nproc']})",
    ]
    for run in result["runs"]:
        rest = max(0.0, run["busy_cores"] - run["server_cores"] - run["device_cores"]
                   - run["postgres_cores"])
        lines.append(
            f"  {run['servers']} server process(es): {run['per_second']:.1f} deliveries/s "
            f"({run['deliveries']} in {run['seconds']:.2f} s); cores busy: "
            f"{run['busy_cores']:.2f} of {result['nproc']}, of which servers "
            f"{run['server_cores']:.2f}, devices {run['device_cores']:.2f}, PostgreSQL "
            f"{run['postgres_cores']:.2f}, other jobs {rest:.2f}"
        )
    lines += [
        f"figure: two processes / one = {result['ratio']:.2f}",
        f"goal: >= {result['goal']:.1f}",
        f"met: {'yes' if result['met'] else 'no'}",
    ]
    if not result["met"]:
        two = result["runs"][1]
        if one["busy_cores"] >= 0.85 * result["nproc"]:
            others = max(0.0, two["busy_cores"] - two["server_cores"] - two["device_cores"]
                         - two["postgres_cores"])
            why = (
                f"the machine's {result['nproc']} cores were busy in both runs: with two "
                f"servers the devices' own process used {two['device_cores']:.2f} cores, "
                f"PostgreSQL {two['postgres_cores']:.2f} and other jobs {others:.2f}, leaving "
                f"the servers {one['server_cores']:.2f} cores with one process and "
                f"{two['server_cores']:.2f} with two: a second process adds deliveries only "
                "where it gets a core of its own"
            )
        else:
            why = (
                "the machine had idle cores: the limit is elsewhere (the database's round "
                "trips, or the devices' process)"
            )
        lines.append(f"why not: {why}")
    return lines


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        description="Key deliveries per second with one and two key server processes on one "
                    "PostgreSQL database.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 pairs, 4 keys")
    parser.add_argument("--pairs", type=positive, default=None, help="pairs at once (100)")
    parser.add_argument("--deliveries", type=positive, default=None,
                        help="deliveries per run (400)")
    args = parser.parse_args(argv)
    pairs = args.pairs or (2 if args.quick else 100)
    deliveries = args.deliveries or (4 if args.quick else 400)
    try:
        result = asyncio.run(measure_async(pairs, deliveries))
    except PgUnavailable as exc:
        out(f"scale-out: not measured: {exc}")
        return 3
    out(json.dumps(result, sort_keys=True) if args.json else "\n".join(render(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
