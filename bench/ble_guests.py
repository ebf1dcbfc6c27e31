"""One host, many guests at once, on bumble virtual controllers (issue 13).

Goal (issue 13's table): one host on bumble virtual controllers: 100 guests paired concurrently,
no failure, every one within its timeout.

How it is measured.  One :class:`~transports.bumble.VirtualRadio`; the host is ``pairkit
host``'s flow (:func:`pairkit.cli.flows.run_host`, method ``compare``, at most ``--guests``
paired guests at once) on a bumble device of its own, as ``tests/ble_harness.py`` starts it;
each guest is a device of its own (its own virtual controller and keystore file) running
``pairkit join``'s flow (:func:`pairkit.cli.flows.run_join`) with the command's default
timeouts (connect 20 s, each step 30 s), both people saying yes.  All guests start at once.
Each holds its session open until every guest has paired (so the host serves them all at the
same time), then hangs up; the host sees each leave.

One thing is not as on a radio: bumble's virtual controller establishes one connection at a
time to a peripheral (several centrals connecting to one device at once make the ATT exchange
time out), so the guests' link-layer connects (bumble's ``Device.connect``) queue for the
host's controller, one at a time; everything after (ATT MTU, GATT or L2CAP set-up, the
pairing) runs concurrently.  The time spent in that queue is counted in the guest's connect
time, against its connect timeout.  "in flight at once" is the most guests between link up and
session stored at one moment.

Goal lines: every guest paired without a failure; the slowest guest's connect (queue included)
over its connect timeout <= 1; the slowest guest's pairing (from its link up to its session
stored) over one step's timeout <= 1 (a pairing has several steps, each with that timeout: this
is stricter than the guest's own bound).  How to read the figures: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/ble_guests.py` finds tests/ (its harness)
    sys.path.insert(0, str(ROOT))

import bumble  # noqa: E402

from bench.common import (  # noqa: E402
    command_line,
    cpu_model,
    nproc,
    positive,
    render_goals,
    report,
    show,
    summary,
)
from pairkit.cli.flows import JoinOptions, run_join  # noqa: E402
from pairkit.pairing.errors import PairingError  # noqa: E402
from pairkit.pairing.negotiation import Method  # noqa: E402
from tests.ble_harness import SPEC, Person, World, make_keystore  # noqa: E402

GOAL_GUESTS = 100


class _ErrorCount(logging.Handler):
    """Counts ERROR records (bumble's controller logs crossing terminations at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


async def measure(guests: int, *, hold: float = 120.0) -> dict[str, Any]:
    """Pair ``guests`` guests at once with one host; per-guest times and failures."""
    defaults = JoinOptions(target="")
    errors = _ErrorCount()
    logging.getLogger().addHandler(errors)
    start = time.perf_counter()
    world = World()
    try:
        with tempfile.TemporaryDirectory(prefix="pairkit-bench-") as tmp:
            folder = Path(tmp)
            host_ks = make_keystore(folder / "host.pk", "host")
            host = await world.start_host(
                host_ks, frozenset({Method.COMPARE}), concurrent=guests, visible=3600.0,
            )
            devices = []
            for i in range(guests):
                ks = make_keystore(folder / f"guest-{i}.pk", f"guest {i}")
                devices.append((ks, await world.device()))
            set_up = time.perf_counter() - start
            queue = asyncio.Lock()  # the host's virtual controller: one connect at a time
            all_paired = asyncio.Event()
            rows: list[dict[str, Any]] = []

            async def guest(i: int) -> None:
                ks, device = devices[i]
                row: dict[str, Any] = {"guest": i}
                rows.append(row)
                t0 = time.perf_counter()
                radio_connect = device.device.connect  # bumble's: the link layer's connect

                async def queued(*args: Any, **kwargs: Any) -> Any:
                    async with queue:
                        return await radio_connect(*args, **kwargs)

                device.device.connect = queued  # type: ignore[method-assign]
                connect = device.connect

                async def timed_connect(*args: Any, **kwargs: Any) -> Any:
                    link = await connect(*args, **kwargs)
                    row["connect_s"] = time.perf_counter() - t0
                    return link

                device.connect = timed_connect  # type: ignore[method-assign]

                async def on_session(slink: Any, session: Any, membership: Any) -> None:
                    row["paired_s"] = time.perf_counter() - t0
                    row["method"] = session.method.label
                    if sum("paired_s" in r for r in rows) == guests:
                        all_paired.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(hold):
                            await all_paired.wait()

                opts = JoinOptions(target=host.address, transport=SPEC, method=Method.COMPARE,
                                   json=True)
                try:
                    await run_join(ks, opts, on_session=on_session, transport_obj=device,
                                   delegate=Person())
                except PairingError as exc:
                    row["failure"] = f"{type(exc).__name__}: {exc}"
                    if sum("paired_s" in r or "failure" in r for r in rows) == guests:
                        all_paired.set()
                finally:
                    device.connect = connect  # type: ignore[method-assign]
                    device.device.connect = radio_connect  # type: ignore[method-assign]

            t_all = time.perf_counter()
            await asyncio.gather(*(guest(i) for i in range(guests)))
            wall = time.perf_counter() - t_all
            # The host saw every guest leave: its results list one line per guest paired.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while len(host.results) < sum("paired_s" in r for r in rows):
                        await asyncio.sleep(0.05)
            host_paired = len(host.results)
            host_stored = len(host_ks.peers())
    finally:
        await world.close()
        logging.getLogger().removeHandler(errors)
    return {
        "guests": guests, "rows": sorted(rows, key=lambda r: r["guest"]), "wall_s": wall,
        "set_up_s": set_up, "host_paired": host_paired, "host_stored": host_stored,
        "errors_logged": errors.lines[:20],
        "error_count": len(errors.lines),
        "connect_timeout": defaults.connect_timeout, "step_timeout": defaults.step_timeout,
    }


def result_of(run: dict[str, Any], argv: list[str] | None) -> dict[str, Any]:
    rows = run["rows"]
    paired = [r for r in rows if "paired_s" in r and "failure" not in r]
    failures = [r["failure"] for r in rows if "failure" in r]
    connects = [r["connect_s"] for r in rows if "connect_s" in r]
    pairings = [r["paired_s"] - r["connect_s"] for r in paired if "connect_s" in r]
    events = sorted([(r["connect_s"], 1) for r in paired if "connect_s" in r]
                    + [(r["paired_s"], -1) for r in paired if "connect_s" in r])
    in_flight = most = 0
    for _, step in events:
        in_flight += step
        most = max(most, in_flight)
    result = {
        "bench": "ble_guests",
        "most_in_flight": most,
        "machine": {"nproc": nproc(), "cpu": cpu_model(), "python": sys.version.split()[0],
                    "bumble": bumble.__version__, "loadavg_1min": os.getloadavg()[0]},
        "settings": {"guests": run["guests"]},
        "paired": len(paired),
        "host_paired": run["host_paired"],
        "host_stored": run["host_stored"],
        "failures": failures,
        "connect_s": summary(connects) | {"max": max(connects)} if connects else None,
        "pairing_s": summary(pairings) | {"max": max(pairings)} if pairings else None,
        "whole_s_max": max((r["paired_s"] for r in paired), default=0.0),
        "wall_s": run["wall_s"],
        "set_up_s": run["set_up_s"],
        "error_count": run["error_count"],
        "errors_logged": run["errors_logged"],
        "connect_timeout": run["connect_timeout"],
        "step_timeout": run["step_timeout"],
        "command": command_line("ble_guests.py", argv),
    }
    result["goals"] = goals(result)
    return result


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    n = result["settings"]["guests"]
    ok = (not result["failures"]
          and result["paired"] == n == result["host_paired"] == result["host_stored"])
    slow_connect = result["connect_s"]["max"] if result["connect_s"] else 0.0
    slow_pairing = result["pairing_s"]["max"] if result["pairing_s"] else 0.0
    return [
        report(f"guests paired at once without a failure, of {n}",
               float(result["paired"] if ok else 0), float(n), at_most=False, unit=""),
        report("slowest connect (queue included) / connect timeout",
               slow_connect / result["connect_timeout"], 1.0),
        report("slowest pairing / one step's timeout",
               slow_pairing / result["step_timeout"], 1.0),
    ]


def render(result: dict[str, Any]) -> str:
    m = result["machine"]

    def row(name: str, s: dict[str, float] | None) -> str:
        if s is None:
            return f"{name:<28} -"
        return (f"{name:<28} median {s['median']:7.3f}  q1 {s['q1']:7.3f}  q3 {s['q3']:7.3f}  "
                f"max {s['max']:7.3f}")

    lines = [
        f"pairkit one host, many guests on bumble virtual controllers, "
        f"{time.strftime('%Y-%m-%d')}: nproc {m['nproc']}, {m['cpu']}, Python {m['python']}, "
        f"bumble {m['bumble']}; load average (1 min) {m['loadavg_1min']:.2f}",
        f"{result['settings']['guests']} guests (a device each) join one host at once by "
        "compare; connects queue for the host's virtual controller, pairings run concurrently",
        "",
        f"paired {result['paired']} (the host reported {result['host_paired']} and stored "
        f"{result['host_stored']}), "
        f"failed {len(result['failures'])}; all in {result['wall_s']:.2f} s "
        f"(set-up {result['set_up_s']:.1f} s)",
        "seconds per guest:",
        row("connect (queue included)", result["connect_s"]),
        row("pairing (link up to stored)", result["pairing_s"]),
        f"pairings in flight at once, at most: {result['most_in_flight']}; sessions held "
        f"at once: {result['paired']}",
        f"{'whole join, slowest':<28} {result['whole_s_max']:.3f}   (timeouts: connect "
        f"{result['connect_timeout']:g} s, each step {result['step_timeout']:g} s)",
    ]
    for failure in result["failures"][:5]:
        lines.append(f"  failure: {failure}")
    if result["error_count"]:
        lines.append(f"ERROR lines logged: {result['error_count']}, first: "
                     f"{result['errors_logged'][0]}")
    lines.append("")
    lines.extend(render_goals(result["goals"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guests", type=positive, default=GOAL_GUESTS,
                   help=f"guests joining at once (default {GOAL_GUESTS})")
    p.add_argument("--quick", action="store_true", help="3 guests: a smoke run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.guests = 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = asyncio.run(measure(args.guests))
    result = result_of(run, argv)
    show(result, render, args.json)
    return 0 if not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
