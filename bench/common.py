"""What every bench shares: argument types, summaries of samples, the machine, the command line.

Each bench (``bench/*.py``) measures its own thing and renders its own table; the pieces here
are the ones they all wrote out again: a positive-integer argument, the median and quartiles
of a list of samples (:func:`summary` in the samples' unit with a count, :func:`summary_us` in
microseconds), the machine's CPU count and model, the command line recorded in the JSON (as
bench/RESULTS.md quotes it), printing the result as JSON or as a table, the scripted person
who says yes to everything, the goal lines every bench ends with (:func:`report`: the
figure, the goal of issue 13's table, met or not; :func:`render_goals`), and for the key
server's benches the server process itself (:func:`start_key_server`, :func:`stop_process`,
:func:`process_cpu`, and where its threads' time went: :func:`thread_schedstat`,
:func:`thread_shares`).  How the figures are read is in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import LinkClosedError, PairingTimeout

ROOT = Path(__file__).resolve().parents[1]


def positive(text: str) -> int:
    """argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median and quartiles (in the samples' unit: ms, MB/s), over at least one sample, and n.

    Quartiles need four samples; with fewer, ``q1`` and ``q3`` are the extremes.
    """
    ordered = sorted(samples)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4)
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "n": len(ordered)}


def summary_us(
    samples_us: Sequence[float], *, method: Literal["exclusive", "inclusive"] = "exclusive"
) -> dict[str, float]:
    """Median and quartiles of samples in microseconds (one sample: all three are it)."""
    if len(samples_us) >= 2:
        q1, _, q3 = statistics.quantiles(samples_us, n=4, method=method)
    else:
        q1 = q3 = samples_us[0]
    return {"median_us": statistics.median(samples_us), "q1_us": q1, "q3_us": q3}


# --------------------------------------------------------------------------------------------
# The machine's state: fixed work, timed between or around a bench's blocks (in no floor)
# --------------------------------------------------------------------------------------------


def _probe_python() -> Callable[[], object]:
    """Interpreter-bound work of pairkit's kind (dicts, bytes, small ints, calls): no C library."""

    def step(d: dict[int, bytes], i: int) -> int:
        d[i & 63] = i.to_bytes(4, "big")
        return len(d.get((i * 7) & 63, b""))

    def op() -> int:
        d: dict[int, bytes] = {}
        return sum(step(d, i) for i in range(4000))

    return op


def _probe_c() -> Callable[[], object]:
    """C-bound work: 40 X25519 key pairs (``cryptography``), about as long as the Python probe."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    seeds = [os.urandom(32) for _ in range(40)]

    def op() -> None:
        for seed in seeds:
            X25519PrivateKey.from_private_bytes(seed).public_key()

    return op


def _probe_syscall() -> Callable[[], object]:
    """Kernel entry and exit: 1,000 ``getppid`` calls, the cheapest system call (no C library
    work, no cache of the answer).  Session 19 found this VM a nested guest (``nested_pvm=1``
    on the kernel's command line) whose system calls cost about 0.8 us each; the key server's
    processes spend about a tenth of their CPU in the kernel, the loopback pairings almost none
    (bench/RESULTS.md)."""

    def op() -> None:
        for _ in range(1000):
            os.getppid()

    return op


#: issue 13, a noisy machine: a shared VM can switch, for seconds at a time, between states in
#: which the interpreter slows more than C code does (measured in session 17: a Python loop
#: 1.75x slower, X25519 1.5x).  A bench's ratio of Python-heavy work to a floor of C
#: primitives moves with ``python/c``, the interpreter's time over C's on these two probes.
PROBES: dict[str, Callable[[], Callable[[], object]]] = {
    "python": _probe_python,
    "c": _probe_c,
    "syscall": _probe_syscall,
}


def machine_probe(
    runs: int = 3, clock: Callable[[], int] = time.perf_counter_ns
) -> dict[str, float]:
    """Each probe's median time over ``runs`` runs, in microseconds, and ``python/c``."""
    out: dict[str, float] = {}
    for name, make in PROBES.items():
        op = make()
        spent = []
        for _ in range(runs):
            start = clock()
            op()
            spent.append((clock() - start) / 1000)
        out[name] = statistics.median(spent)
    out["python/c"] = out["python"] / out["c"]
    return out


def probe_line(probes: Sequence[dict[str, float]]) -> str:
    """``python/c`` over a run's probes: median [min-max]; and the system-call probe's median
    (1,000 calls, us) when the probes have it."""
    speed = [p["python/c"] for p in probes]
    line = (f"python/c {statistics.median(speed):.2f} [{min(speed):.2f}-{max(speed):.2f}] "
            f"over {len(speed)} probes")
    calls = [p["syscall"] for p in probes if "syscall" in p]
    if calls:
        line += f"; 1,000 system calls {statistics.median(calls):.0f} us"
    return line


def nproc() -> int | None:
    """CPUs this process may run on (the affinity mask where there is one)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return affinity or os.cpu_count()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform.processor()`` says."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii",
                                            errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return model or platform.processor()


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How the bench was run, as the JSON records it (``.venv/bin/python bench/SCRIPT ARGS``)."""
    given = sys.argv[1:] if argv is None else argv
    return " ".join([f".venv/bin/python bench/{script}", *given])


def show(
    result: dict[str, Any], render: Callable[[dict[str, Any]], str], as_json: bool
) -> None:
    """Print ``result`` as indented JSON (``--json``) or as the bench's table."""
    print(json.dumps(result, indent=2) if as_json else render(result))


def report(name: str, figure: float, goal: float, *, at_most: bool = True,
           unit: str = "x") -> dict[str, Any]:
    """One goal line: ``figure`` against ``goal`` (an upper bound, or a lower one), met or not.

    Each bench ends with these lines (issue 13: "each printed by its bench as: figure, goal,
    met or not"); bench/RESULTS.md records them with the command.
    """
    met = figure <= goal if at_most else figure >= goal
    return {"name": name, "figure": figure, "goal": goal,
            "bound": "<=" if at_most else ">=", "unit": unit, "met": met}


def render_goals(goals: Sequence[dict[str, Any]]) -> list[str]:
    """The goal lines as text: ``goal NAME: figure F, goal <= G, met yes|no``."""
    lines = ["goals (figure, goal, met):"]
    width = max((len(g["name"]) for g in goals), default=0)
    for g in goals:
        unit = g["unit"]
        lines.append(
            f"  {g['name']:<{width}}  figure {g['figure']:.2f}{unit}  goal {g['bound']} "
            f"{g['goal']:g}{unit}  met {'yes' if g['met'] else 'no'}"
        )
    return lines


def check_goals(goals: Sequence[dict[str, Any]]) -> None:
    """The bookkeeping every bench smoke test checks: each goal line is whole and consistent."""
    if not goals:
        raise AssertionError("no goal lines")
    for g in goals:
        if set(g) != {"name", "figure", "goal", "bound", "unit", "met"}:
            raise AssertionError(f"goal line {g.get('name')!r} has fields {sorted(g)}")
        if g["figure"] < 0 or g["goal"] <= 0:
            raise AssertionError(f"goal line {g['name']!r}: figure or goal out of range")
        want = g["figure"] <= g["goal"] if g["bound"] == "<=" else g["figure"] >= g["goal"]
        if g["met"] is not want:
            raise AssertionError(f"goal line {g['name']!r}: met says {g['met']}")
    text = "\n".join(render_goals(goals))
    for g in goals:
        if f"  {g['name']}" not in text or "met " not in text:
            raise AssertionError(f"goal line {g['name']!r} is not rendered")


# -- a timed one-way transfer over one link (bench/ble.py, bench/ble_bleak.py) ---------------


@overload
async def timed_transfer(
    send: Callable[[], Awaitable[None]], receive: Callable[[], Awaitable[int]], total: int
) -> float: ...


@overload
async def timed_transfer(
    send: Callable[[], Awaitable[None]], receive: Callable[[], Awaitable[int]], total: int,
    *, cpu: Literal[True],
) -> tuple[float, float]: ...


async def timed_transfer(
    send: Callable[[], Awaitable[None]], receive: Callable[[], Awaitable[int]], total: int,
    *, cpu: bool = False,
) -> float | tuple[float, float]:
    """Seconds from the first byte sent to the last byte read; checks the count.

    With ``cpu``, also this process's CPU seconds over the same span (both ends and the
    virtual controllers run in it): ``(wall, cpu)``.
    """
    t0 = time.perf_counter()
    c0 = time.process_time()
    sending = asyncio.ensure_future(send())
    try:
        got = await asyncio.wait_for(receive(), 120)
        await asyncio.wait_for(sending, 30)
    finally:
        sending.cancel()
    spent = time.perf_counter() - t0
    used = time.process_time() - c0
    if got != total:
        raise RuntimeError(f"received {got} bytes of {total}")
    return (spent, used) if cpu else spent


async def drain(link: Any, total: int) -> int:
    """Read messages from ``link`` until ``total`` bytes came; how many did."""
    got = 0
    while got < total:
        got += len(await link.recv())
    return got


def plain_notify_size(connection: Any) -> int:
    """The notification a plain bumble application sends on ``connection``: the ATT MTU less
    the 3-byte opcode and handle, at most an attribute value's 512 bytes (Core 5.4 Vol 3 Part F
    §3.2.9, §3.4.7.1)."""
    return max(20, min(int(connection.att_mtu) - 3, 512))


def tx_characteristic(device: Any) -> Any:
    """The GATT server's pairkit TX characteristic on a bumble ``device`` (what a plain bumble
    application notifies on, with no pairkit code on the sending side)."""
    from bumble import core

    from pairkit.transports.ble.adv import PAIRKIT_SERVICE_UUID, PAIRKIT_TX_CHAR_UUID

    found = device.gatt_server.get_characteristic_attributes(
        core.UUID(str(PAIRKIT_SERVICE_UUID)), core.UUID(str(PAIRKIT_TX_CHAR_UUID))
    )
    if found is None:
        raise RuntimeError("pairkit's TX characteristic is missing")
    return found[1]


class Yes:
    """Both people say yes (compare: the codes match; join: let the guest in, for an hour)."""

    async def confirm_code(self, question: object) -> bool:
        return True

    async def allow_join(self, question: object) -> Grant:
        return Grant(Role.GUEST, 3600)


async def hang_up(first: Any, second: Any, *, timeout: float = 5.0) -> None:
    """Close two ends of one BLE link the way devices do: ``first`` hangs up, then ``second``.

    Closing both ends at once makes both controllers send LL_TERMINATE_IND; the second to
    arrive finds its connection already gone, and bumble's virtual controller logs "Cannot find
    a connection" at ERROR for each (a crossing termination, harmless on a radio).  So the
    second end closes only once it has seen the disconnection (its ``recv`` ends).
    """
    await first.close()

    async def until_closed() -> None:
        while True:
            await second.recv()

    with contextlib.suppress(LinkClosedError, PairingTimeout, asyncio.TimeoutError):
        await asyncio.wait_for(until_closed(), timeout)
    await second.close()


# -- the key server as its own process (bench/ttp.py, bench/ttp_scale.py) -----------------------


async def start_key_server(
    directory: Path, clients: int, *, database: str | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m pairkit.keyserver`` on ``directory`` (its SQLite file, or the PostgreSQL
    ``database``), listening on a free loopback port, with room for ``clients`` devices
    connected at once from one address and no attempt rate that binds; (process, HOST:PORT).

    Its JSON line says where it listens; it logs errors only (on its stderr, read at the end).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    limit = str(2 * clients + 64)
    args = ["--dir", str(directory), "--listen", "127.0.0.1:0", "--json", "--quiet",
            "--max-connections", limit, "--max-per-client", limit, "--rate", "1000000",
            "--max-wait", "60"]
    if database is not None:
        args += ["--db", database]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pairkit.keyserver", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        raise RuntimeError(f"the key server did not start: {(await proc.stderr.read()).decode()}")
    return proc, json.loads(line)["listening"]


async def stop_process(proc: asyncio.subprocess.Process, *, timeout: float = 10.0) -> None:
    """SIGTERM, then wait (at most ``timeout`` seconds before SIGKILL)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:  # pragma: no cover - a server that does not stop
        proc.kill()
        await proc.wait()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far (Linux /proc); 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


#: one thread's scheduler counters: (nanoseconds it ran on a CPU, nanoseconds it waited for one
#: while runnable), as ``/proc/PID/task/TID/schedstat`` gives them
SchedStat = dict[int, tuple[int, int]]


def thread_schedstat(pid: int) -> SchedStat:
    """Each thread of process ``pid`` (by thread id): the time it ran on a CPU and the time it
    waited for one while runnable, so far (Linux /proc; empty elsewhere or when unreadable)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    out: SchedStat = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                run, wait = f.read().split()[:2]
            out[int(tid)] = (int(run), int(wait))
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return out


def thread_shares(
    pid: int, before: SchedStat, after: SchedStat, seconds: float
) -> dict[str, dict[str, float]]:
    """Where process ``pid``'s threads spent ``seconds`` of wall time between two
    :func:`thread_schedstat` readings, as shares of it: ``running`` on a CPU and ``waiting``
    for one while runnable, for its main thread (``main``: an asyncio process's event loop;
    what is left of its time it slept, with nothing to do or waiting on a lock) and for its
    other threads added up (``others``: a key server's store threads).  Empty when the
    counters are not there (not Linux)."""
    if not before or not after or seconds <= 0:
        return {}
    shares = {"main": {"running": 0.0, "waiting": 0.0},
              "others": {"running": 0.0, "waiting": 0.0}}
    for tid, (run, wait) in after.items():
        run0, wait0 = before.get(tid, (0, 0))
        share = shares["main" if tid == pid else "others"]
        share["running"] += (run - run0) / 1e9 / seconds
        share["waiting"] += (wait - wait0) / 1e9 / seconds
    return shares


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
