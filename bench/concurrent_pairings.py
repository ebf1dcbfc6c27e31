"""Concurrent pairings in one host process over loopback (issue 13).

Goal (issue 13's table): one host process, concurrent pairings over loopback: 1,000 at once with
no failure; per-pairing cost at 1,000 <= 1.25x at 10; peak RSS <= 100 MB.

How it is measured.  Every level (``--sizes``, default 10 and 1000) runs in a child process of
its own (``bench/concurrent_pairings.py --child N``), so that the bench's own memory is not in
the figure and each level's peak starts from a fresh interpreter.  In the child, the host is the
real one of ``pairkit host`` (:func:`pairkit.cli.flows.run_host`: presence, admission through
``accept_loop``, the cloud step, the pairing, the confirmation, the peer stored in a keystore
*file*, as a host stores it), listening on a :class:`~transports.loopback.LoopbackMedium`
endpoint.  The N guests are N devices (each its own keystore, in memory) in the same process:
they connect all at once and each runs :func:`pairkit.session.open_session` by ``--method``
(``compare``, both people saying yes; or ``clear`` over a medium that pretends LE Secure
Connections).  Every session is held open until all N are confirmed, so the N sessions exist at
once; then each guest hangs up and the host's handler sees it leave.

* **failures**: guests whose pairing raised, or that did not end with the host's fingerprint
  and a session the host also confirmed; the goal is none at the largest level.
* **per-pairing cost**: the child's CPU time (``resource.getrusage``, user + system) from the
  first connect to the last session confirmed, divided by N; both sides' work (host and guests
  share the process and its one thread).  The smallest level runs ``--rounds`` times, each with
  a fresh host and guests, and its median is taken; a warm-up round of 10 pairings precedes
  every level.  ``ratio = cost at the largest level / cost at the smallest``.  Wall time per
  pairing is shown too.
* **peak RSS**: the child's ``ru_maxrss`` at the end (the peak of its life: host, the N guests,
  and the interpreter), next to its RSS once everything was set up and before the first connect
  (``/proc/self/statm``).  The host's and guests' memory are not separated: the figure is an
  upper bound on the host's.

Admission limits (runtime/admission.py): the host serves at most ``concurrent`` paired guests
(32 by default) and ``max_pending`` unauthenticated links (64) at once and turns the rest away
as busy; the bench raises both to N through :class:`~pairkit.cli.flows.HostOptions`
(``concurrent``, ``admission``).  The defaults are not touched; the per-address limit (8)
does not bind, as every guest has its own loopback address.

How to read the figures: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    command_line,
    cpu_model,
    nproc,
    positive,
    render_goals,
    report,
    show,
)

GOAL_AT_ONCE = 1000
GOAL_COST_RATIO = 1.25
GOAL_RSS_MB = 100.0
WARMUP = 10
METHODS = ("compare", "clear")


# -- the child: one level in a fresh process ----------------------------------------------------


def _rss_now_kib() -> int:
    """This process's resident set now, KiB (/proc/self/statm; 0 where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Round:
    """One host and ``n`` guests, made before the timing starts."""

    def __init__(self, n: int, method: str, folder: Path, tag: str) -> None:
        from pairkit.delegate import Agree
        from pairkit.keystore import Argon2Params, Keystore, MemoryStorage
        from pairkit.pairing.methods import PairingConfig
        from pairkit.pairing.negotiation import ALL_CAPS, Method
        from pairkit.session import GuestSide
        from pairkit.transports.loopback import LoopbackMedium

        cheap = Argon2Params.cheapest()
        self.n = n
        self.method = Method.COMPARE if method == "compare" else Method.CLEAR
        self.medium = LoopbackMedium(encrypted=self.method is Method.CLEAR)
        self.host_ks = Keystore.create(folder / f"host-{tag}.pk", "bench-passphrase",
                                       name=f"host {tag}", kdf=cheap)
        config = PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS)
        self.guests = []
        for i in range(n):
            ks = Keystore.create(MemoryStorage(), "bench-passphrase", name=f"guest {i}",
                                 kdf=cheap)
            self.guests.append(GuestSide(ks, config, self.method, transport="loopback"))
        # Both people say yes to everything, codes included (a bench, not a person).
        self.delegate = Agree(confirm_codes=True)

    async def run(self, timeout: float) -> dict[str, Any]:
        """Pair all guests at once; returns counts and the CPU and wall time it took."""
        from pairkit.admission import AdmissionLimits
        from pairkit.cli.flows import HostOptions, run_host
        from pairkit.pairing.errors import LinkClosedError, PairingError
        from pairkit.session import open_session

        n = self.n
        endpoint = self.medium.endpoint("host")
        # The host's admission limits (runtime/admission.py) raised to N through its options:
        # N paired guests and N unauthenticated links at once (the defaults, 32 and 64, turn
        # the rest away as busy); each guest comes from its own address, so the per-address
        # limit is left as it is, and so are the first-flight and refusal times.
        opts = HostOptions(
            transport="loopback", methods=frozenset({self.method}), quiet=True,
            concurrent=n, visible=3600.0,
            admission=AdmissionLimits(max_pending=max(n, AdmissionLimits.max_pending)),
        )
        confirmed: set[str] = set()  # session fingerprints the host confirmed
        host_left = 0
        all_paired = asyncio.Event()
        everyone_left = asyncio.Event()

        async def on_session(slink: Any, session: Any, membership: Any) -> None:
            nonlocal host_left
            confirmed.add(session.fingerprint)
            # Served until the guest hangs up (as serve_guest would), then the host closes.
            with contextlib.suppress(PairingError):
                while True:
                    await slink.recv()
            host_left += 1
            if host_left == n:
                everyone_left.set()

        host_task = asyncio.create_task(run_host(
            self.host_ks, opts, on_session=on_session, transport_obj=endpoint,
            delegate=self.delegate,
        ))
        await endpoint.listen()  # run_host listens too (the same listener): guests may connect
        paired = 0
        failures: list[str] = []
        sessions: list[Any] = []

        async def guest(i: int) -> None:
            nonlocal paired
            side = self.guests[i]
            try:
                link = await self.medium.endpoint(f"guest-{i}").connect("host", timeout=timeout)
                done = await open_session(link, side, delegate=self.delegate)
            except PairingError as exc:
                failures.append(f"guest {i}: {type(exc).__name__}: {exc}")
                return
            sessions.append(done)
            paired += 1
            if paired + len(failures) == n:
                all_paired.set()

        pool0 = _pool_state()
        cpu0, t0 = _cpu_s(), time.perf_counter()
        guests = [asyncio.create_task(guest(i)) for i in range(n)]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*guests)
            wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
            pool1 = _pool_state()
            rss_all = _rss_now_kib()
            # Every guest's session must be one the host confirmed, with the method planned.
            for done in sessions:
                if done.session.fingerprint not in confirmed:
                    failures.append("a guest's session is not one the host confirmed")
                if done.session.method is not self.method:
                    failures.append(f"a guest paired by {done.session.method.label}")
            for done in sessions:
                with contextlib.suppress(PairingError):
                    await done.channel.close()
            if sessions and len(sessions) == n:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await everyone_left.wait()
        except TimeoutError:
            wall, cpu, rss_all = time.perf_counter() - t0, _cpu_s() - cpu0, _rss_now_kib()
            pool1 = _pool_state()
            failures.append(f"{n - paired - len(failures)} guests still pairing after "
                            f"{timeout:g} s")
        finally:
            for task in guests:
                task.cancel()
            host_task.cancel()
            with contextlib.suppress(BaseException):
                await host_task
            with contextlib.suppress(LinkClosedError):
                await endpoint.close()
        stored = len(self.host_ks.peers())
        if paired == n and stored != n:
            failures.append(f"the host stored {stored} peers for {n} guests")
        return {"n": n, "paired": paired, "host_confirmed": len(confirmed),
                "host_stored": stored, "failures": failures, "wall_s": wall, "cpu_s": cpu,
                "pool_drawdown": _pool_charge(pool0, pool1), "rss_all_sessions_kib": rss_all}


async def _child(n: int, method: str, rounds: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pairkit-bench-") as tmp:
        folder = Path(tmp)
        warm = _Round(min(WARMUP, n), method, folder, "warm-up")
        await warm.run(timeout)
        del warm
        results = []
        rss_before = 0
        for r in range(rounds):
            one = _Round(n, method, folder, f"round-{r}")
            rss_before = max(rss_before, _rss_now_kib())
            results.append(await one.run(timeout))
            del one
    # Prekeys the pool made before a round and the round used are charged to it (_pool_charge).
    key_cost = _prekey_cost_s()
    for row in results:
        row["prekeys_charged_cpu_s"] = row["pool_drawdown"] * key_cost
        row["cpu_s"] += row["prekeys_charged_cpu_s"]
    # ru_maxrss: the peak of this process's life, KiB on Linux (statm's reading can round above)
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_before)
    return {"n": n, "method": method, "rounds": results, "rss_before_kib": rss_before,
            "peak_rss_kib": peak_kib}


# -- over TCP (--over tcp): the host alone in its process, the guests in another ---------------


def _pool_state() -> tuple[int, int]:
    """(prekeys ready in the process's pool, prekeys it made so far)."""
    from pairkit import prekeys

    pool = prekeys.pool()
    return len(pool), pool.made


def _prekey_cost_s(samples: int = 200) -> float:
    """CPU seconds one prekey of the pool costs here (its unit of work, timed in bulk)."""
    from pairkit.prekeys import PrekeyPool

    pool = PrekeyPool(capacity=samples, background=False)
    cpu0 = _cpu_s()
    for _ in range(samples):
        pool.make_one()
    return (_cpu_s() - cpu0) / samples


class _GcClock:
    """CPU time the garbage collector takes, by generation (gc.callbacks), while counting."""

    def __init__(self) -> None:
        import gc

        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self.counting = False
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        elif self.counting:
            generation = info["generation"]
            self.seconds[generation] += time.process_time() - self._t0
            self.runs[generation] += 1


def _commit_stats(ks: Any) -> list[int]:
    """[keystore updates written, sessions stored] by the host's group commit (runtime/peers)."""
    from pairkit import peers

    committer = getattr(peers, "committer_of", lambda _ks: None)(ks)
    return [committer.batches, committer.changes] if committer is not None else [0, 0]


def _pool_charge(before: tuple[int, int], after: tuple[int, int]) -> int:
    """Prekeys the window used that were made before it (the pool's net drawdown): they are
    charged to the window at :func:`_prekey_cost_s` each, so that keys made in idle time
    *before* the timing starts never make a level look cheaper (and keys left ready at its
    end, made inside it, are not charged twice: the drawdown is then negative)."""
    return before[0] - after[0]


#: --host-gc: what the host process does to its garbage collector once warmed up (an
#: experiment: pairkit itself sets nothing; bench/RESULTS.md)
HOST_GC = ("default", "freeze", "freeze-threshold")


def _tune_gc(mode: str) -> None:
    import gc

    if mode in ("freeze", "freeze-threshold"):
        gc.collect()
        gc.freeze()  # what exists now (interpreter, pairkit, the host's set-up) is never scanned
    if mode == "freeze-threshold":
        gc.set_threshold(7000, 20, 20)


async def _tcp_host(n: int, method: str, timeout: float, profile: str | None = None,
                    host_gc: str = "default") -> dict[str, Any]:
    """``pairkit host``'s loop on 127.0.0.1, in a process of its own: prints ``PORT p``, serves
    ``WARMUP`` warm-up guests, prints ``WARM`` once they have left (the timing starts there),
    then serves ``n`` guests, and reports its own CPU time and peak RSS (the host's alone)."""
    from pairkit.admission import AdmissionLimits
    from pairkit.cli.flows import HostOptions, run_host
    from pairkit.delegate import Agree
    from pairkit.keystore import Argon2Params, Keystore
    from pairkit.pairing.errors import PairingError
    from pairkit.pairing.negotiation import Method

    chosen = Method.COMPARE if method == "compare" else Method.CLEAR
    warm = min(WARMUP, n)
    total = warm + n
    confirmed = 0
    left = 0
    everyone_left = asyncio.Event()
    start: list[tuple[float, tuple[int, int]]] = []  # (CPU, pool) once warmed up
    end: list[tuple[float, tuple[int, int]]] = []  # (CPU, pool) at the last confirmation
    gc_clock = _GcClock()
    profiler: Any = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU time: waits are not work

    async def on_session(slink: Any, session: Any, membership: Any) -> None:
        nonlocal confirmed, left
        confirmed += 1
        if confirmed == total:
            end.append((_cpu_s(), _pool_state()))
            gc_clock.counting = False
            if profiler is not None:
                profiler.disable()
        with contextlib.suppress(PairingError):
            while True:
                await slink.recv()
        left += 1
        if left == warm:
            # The warm-up guests have come and gone: what comes now is the measured guests'.
            _tune_gc(host_gc)
            start.append((_cpu_s(), _pool_state()))
            gc_clock.counting = True
            print("WARM", flush=True)
            if profiler is not None:
                profiler.enable()
        if left == total:
            everyone_left.set()

    def ready(address: str, _state: Any) -> None:
        print(f"PORT {address.rsplit(':', 1)[1]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pairkit-bench-") as tmp:
        ks = Keystore.create(Path(tmp) / "host.pk", "bench-passphrase", name="host",
                             kdf=Argon2Params.cheapest())
        # Every guest comes from 127.0.0.1: the per-address limit is raised with the others.
        opts = HostOptions(
            transport="tcp:127.0.0.1:0", methods=frozenset({chosen}), quiet=True,
            concurrent=total, visible=3600.0,
            admission=AdmissionLimits(max_pending=max(total, AdmissionLimits.max_pending),
                                      per_address=max(total, AdmissionLimits.per_address)),
        )
        rss_before = _rss_now_kib()
        task = asyncio.create_task(run_host(ks, opts, on_session=on_session, ready=ready,
                                            delegate=Agree(confirm_codes=True)))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await everyone_left.wait()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        stored = len(ks.peers())
        commits = _commit_stats(ks)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile, f"host-{n}-{os.getpid()}.prof"))
    cpu = charged = 0.0
    if start:
        # a run that did not confirm every guest is charged up to its end (its figure is not
        # read against the goal: see goals())
        stop = end[0] if end else (_cpu_s(), _pool_state())
        cpu = stop[0] - start[0][0]
        charged = _pool_charge(start[0][1], stop[1]) * _prekey_cost_s()
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_before)
    return {"n": n, "host_confirmed": max(0, confirmed - warm), "host_left": max(0, left - warm),
            "host_stored": max(0, stored - warm), "host_cpu_s": cpu + charged,
            "prekeys_charged_cpu_s": charged, "rss_before_kib": rss_before,
            "peak_rss_kib": peak, "keystore_writes": commits,
            "gc_cpu_s": gc_clock.seconds, "gc_runs": gc_clock.runs}


async def _tcp_guests(n: int, method: str, timeout: float) -> dict[str, Any]:
    """``n`` guest devices made first; ``READY`` printed; then, given ``PORT p`` on stdin,
    all connect at once, pair, hold their sessions until all are paired, and hang up."""
    from pairkit.delegate import Agree
    from pairkit.keystore import Argon2Params, Keystore, MemoryStorage
    from pairkit.pairing.errors import PairingError
    from pairkit.pairing.methods import PairingConfig
    from pairkit.pairing.negotiation import ALL_CAPS, Method
    from pairkit.session import GuestSide, open_session
    from pairkit.transports.tcp import tcp_connect

    chosen = Method.COMPARE if method == "compare" else Method.CLEAR
    config = PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS)
    cheap = Argon2Params.cheapest()
    sides = [GuestSide(Keystore.create(MemoryStorage(), "bench-passphrase", name=f"guest {i}",
                                       kdf=cheap), config, chosen, transport="tcp")
             for i in range(n)]
    delegate = Agree(confirm_codes=True)
    warm_sides = [GuestSide(Keystore.create(MemoryStorage(), "bench-passphrase",
                                            name=f"warm-up {i}", kdf=cheap),
                            config, chosen, transport="tcp")
                  for i in range(min(WARMUP, n))]
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    port = int(line.split()[1])
    failures: list[str] = []
    sessions: list[Any] = []
    all_done = asyncio.Event()

    # The warm-up guests pair, hang up, and the host says WARM (relayed here as GO): the
    # host's first pairings (lazy set-up of every code path) are not in the figures.
    warm_ok = await asyncio.gather(*[_tcp_warm_guest(side, port, delegate)
                                     for side in warm_sides])
    if not all(warm_ok):
        return {"paired": 0, "failures": ["a warm-up guest failed"], "failed": n,
                "guests_cpu_s": 0.0, "wall_s": 0.0}
    go = await loop.run_in_executor(None, sys.stdin.readline)
    if go.strip() != "GO":
        return {"paired": 0, "failures": ["the host did not warm up"], "failed": n,
                "guests_cpu_s": 0.0, "wall_s": 0.0}

    async def guest(side: Any) -> None:
        try:
            # pairkit join's connect timeout (20 s); the kernel queues 100 connects at a time
            # (asyncio's listen backlog), the rest retry their SYN
            link = await tcp_connect("127.0.0.1", port, timeout=20.0)
            done = await open_session(link, side, delegate=delegate)
        except PairingError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        else:
            sessions.append(done)
        if len(sessions) + len(failures) == n:
            all_done.set()

    t0, cpu0 = time.perf_counter(), _cpu_s()
    tasks = [asyncio.create_task(guest(side)) for side in sides]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await all_done.wait()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    for done in sessions:
        with contextlib.suppress(PairingError):
            await done.channel.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"paired": len(sessions), "failures": failures[:20], "failed": len(failures),
            "guests_cpu_s": cpu, "wall_s": wall}


async def _tcp_warm_guest(side: Any, port: int, delegate: Any) -> bool:
    """One warm-up guest: pair, hang up; whether it paired."""
    from pairkit.pairing.errors import PairingError
    from pairkit.session import open_session
    from pairkit.transports.tcp import tcp_connect

    try:
        link = await tcp_connect("127.0.0.1", port, timeout=20.0)
        done = await open_session(link, side, delegate=delegate)
        await done.channel.close()
    except PairingError:
        return False
    return True


def run_level_tcp(n: int, method: str, timeout: float, profile: str | None = None,
                  host_gc: str = "default") -> dict[str, Any]:
    """One level over TCP: a guests process set up first, then the host process, then go."""
    script = str(Path(__file__).resolve())
    common = ["--method", method, "--timeout", str(timeout)]
    # stderr to files: the host writes a line per guest, more than a pipe holds while this
    # process waits on the other one
    with tempfile.TemporaryFile("w+") as g_err, tempfile.TemporaryFile("w+") as h_err:
        guests = subprocess.Popen(
            [sys.executable, script, "--child-tcp-guests", str(n), *common],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=g_err, text=True, cwd=ROOT,
        )
        host = None
        try:
            assert guests.stdout is not None and guests.stdin is not None
            if guests.stdout.readline().strip() != "READY":
                raise RuntimeError("the guests' process did not start")
            host = subprocess.Popen(
                [sys.executable, script, "--child-tcp-host", str(n), *common,
                 *(["--profile", profile] if profile else []), "--host-gc", host_gc],
                stdout=subprocess.PIPE, stderr=h_err, text=True, cwd=ROOT,
            )
            assert host.stdout is not None
            port_line = host.stdout.readline()
            if not port_line.startswith("PORT "):
                raise RuntimeError("the host did not start")
            guests.stdin.write(port_line)
            guests.stdin.flush()
            if host.stdout.readline().strip() == "WARM":
                guests.stdin.write("GO\n")
            else:
                guests.stdin.write("NO\n")
            guests.stdin.flush()
            g_out, _ = guests.communicate(timeout=timeout + 120)
            h_out, _ = host.communicate(timeout=timeout + 120)
        finally:
            for proc in (guests, host):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            g_err.seek(0)
            h_err.seek(0)
            errors = h_err.read() + g_err.read()
    level: dict[str, Any] = json.loads(h_out) | json.loads(g_out.splitlines()[-1])
    level["stderr_lines"] = [line for line in errors.splitlines()
                             if line.strip() and not line.startswith("paired with ")][:20]
    return level


# -- the parent: levels in child processes, the goals --------------------------------------------


def run_level(n: int, method: str, rounds: int, timeout: float) -> dict[str, Any]:
    """One level in a fresh child process: its JSON."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--method", method,
         "--rounds", str(rounds), "--timeout", str(timeout)],
        capture_output=True, text=True, cwd=ROOT, check=False,
        timeout=timeout * (rounds + 1) + 120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the child for {n} pairings failed:\n{proc.stderr[-4000:]}")
    level: dict[str, Any] = json.loads(proc.stdout)
    # run_host says "paired with ..." for each guest; anything else (errors) is shown.
    level["stderr_lines"] = [line for line in proc.stderr.splitlines()
                             if line.strip() and not line.startswith("paired with ")][:20]
    return level


def _summarise(level: dict[str, Any]) -> dict[str, Any]:
    """Counts over a level's rounds and its median costs per pairing (per guest paired)."""
    rows, n = level["rounds"], level["n"]
    level["failures"] = sum(len(r["failures"]) for r in rows)
    level["paired"] = min(r["paired"] for r in rows)
    level["cpu_us_per_pairing"] = statistics.median(
        r["cpu_s"] / max(r["paired"], 1) for r in rows) * 1e6
    level["wall_us_per_pairing"] = statistics.median(
        r["wall_s"] / max(r["paired"], 1) for r in rows) * 1e6
    level["ok"] = all(r["paired"] == n and not r["failures"] for r in rows)
    return level


def _tcp_as_level(n: int, method: str, rounds: int, timeout: float,
                  profile: str | None = None, host_gc: str = "default") -> dict[str, Any]:
    """``rounds`` TCP runs of ``n`` guests as one level, shaped as :func:`run_level`'s: the
    CPU counted is the host process's alone, the RSS the host's peak."""
    runs = [run_level_tcp(n, method, timeout, profile, host_gc) for _ in range(rounds)]
    rows = []
    for run in runs:
        failures = list(run["failures"])
        if run["failed"] > len(failures):
            failures += [f"and {run['failed'] - len(failures)} more"]
        if run["paired"] == n and not (run["host_confirmed"] == run["host_stored"] == n):
            failures.append(f"the host confirmed {run['host_confirmed']} and stored "
                            f"{run['host_stored']} for {n} guests")
        rows.append({"n": n, "paired": run["paired"], "host_confirmed": run["host_confirmed"],
                     "host_stored": run["host_stored"], "failures": failures,
                     "wall_s": run["wall_s"], "cpu_s": run["host_cpu_s"],
                     "prekeys_charged_cpu_s": run["prekeys_charged_cpu_s"],
                     "keystore_writes": run.get("keystore_writes", [0, 0]),
                     "gc_cpu_s": run.get("gc_cpu_s", [0.0] * 3),
                     "gc_runs": run.get("gc_runs", [0] * 3),
                     "guests_cpu_s": run["guests_cpu_s"]})
    return {"n": n, "method": method, "rounds": rows,
            "rss_before_kib": max(r["rss_before_kib"] for r in runs),
            "peak_rss_kib": max(r["peak_rss_kib"] for r in runs),
            "stderr_lines": [line for r in runs for line in r["stderr_lines"]][:20]}


def measure(sizes: list[int], method: str, rounds: int, timeout: float,
            over: str = "loopback", repeat: int = 1, profile: str | None = None,
            host_gc: str = "default") -> dict[str, Any]:
    """The levels interleaved: the smallest (``rounds`` rounds, each in a fresh child), then
    each larger one once, ``repeat`` times over, and the smallest once more at the end
    (``S L S L ... S``).  Every run of a larger level is read against the smallest level's
    runs just before and just after it (the median of their rounds): a machine that got busier
    or quieter midway moves both sides of that ratio.  The goal reads the median of these
    ratios; their spread is reported beside it."""
    start = time.perf_counter()
    loads = [os.getloadavg()[0]]

    def level_of(n: int, r: int) -> dict[str, Any]:
        if over == "loopback":
            return run_level(n, method, r, timeout)
        return _tcp_as_level(n, method, r, timeout, profile, host_gc)

    smalls = [level_of(sizes[0], rounds)]
    larger: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes[1:]}
    for _ in range(repeat):
        for n in sizes[1:]:
            larger[n].append(level_of(n, 1))
            loads.append(os.getloadavg()[0])
        smalls.append(level_of(sizes[0], rounds))
        loads.append(os.getloadavg()[0])
    ratios: dict[int, list[float]] = {}
    for n, runs in larger.items():
        ratios[n] = []
        for i, run in enumerate(runs):
            around = smalls[i]["rounds"] + smalls[i + 1]["rounds"]
            reference = statistics.median(r["cpu_s"] / max(r["paired"], 1) for r in around)
            cost = run["rounds"][0]["cpu_s"] / max(run["rounds"][0]["paired"], 1)
            ratios[n].append(cost / reference)
    first = _merge(smalls)
    levels = [first] + [_merge(runs) for runs in larger.values()]
    for level in levels:
        _summarise(level)
    for level in levels[1:]:
        level["ratios"] = ratios[level["n"]]
    return {
        "bench": "concurrent_pairings",
        "machine": {"nproc": nproc(), "cpu": cpu_model(), "python": sys.version.split()[0],
                    "loadavg_1min": loads},
        "settings": {"sizes": sizes, "method": method, "rounds": rounds, "timeout": timeout,
                     "over": over, "repeat": repeat, "host_gc": host_gc},
        "levels": levels,
        "goals": goals(levels),
        "seconds": time.perf_counter() - start,
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one level as one: their rounds together, the highest RSS figures."""
    merged = dict(runs[0])
    merged["rounds"] = [row for run in runs for row in run["rounds"]]
    merged["stderr_lines"] = [line for run in runs for line in run["stderr_lines"]][:20]
    merged["peak_rss_kib"] = max(run["peak_rss_kib"] for run in runs)
    merged["rss_before_kib"] = max(run["rss_before_kib"] for run in runs)
    return merged


def goals(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's three goals, read at the largest level against the smallest."""
    small, large = levels[0], levels[-1]
    n = large["n"]
    return [
        report(f"paired at once without a failure, of {n}",
               float(large["paired"] if large["ok"] else 0), float(n), at_most=False, unit=""),
        report(f"CPU per pairing at {n} / at {small['n']}"
               + (f", median of {len(large['ratios'])}" if len(large.get("ratios", ())) > 1
                  else ""),
               float("inf") if not (large["ok"] and small["ok"])  # a failed run is no figure
               else statistics.median(large["ratios"]) if large.get("ratios")
               else large["cpu_us_per_pairing"] / small["cpu_us_per_pairing"],
               GOAL_COST_RATIO),
        report(f"peak RSS at {n}", large["peak_rss_kib"] / 1024, GOAL_RSS_MB, unit=" MB"),
    ]


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_1min"])
    lines = [
        f"pairkit concurrent-pairings bench, {time.strftime('%Y-%m-%d')}: nproc {m['nproc']}, "
        f"{m['cpu']}, Python {m['python']}; load average (1 min) at each level {load}",
        (f"one host process (pairkit host's run_host) and N guests in one child process over "
         f"loopback, method {s['method']}, all N at once, every session held until all are "
         f"confirmed" if s.get("over", "loopback") == "loopback" else
         f"one host process (pairkit host's run_host) on TCP 127.0.0.1, N guests in another "
         f"process, method {s['method']}, all N at once, every session held until all are "
         f"confirmed; CPU and RSS are the host process's alone"),
        "",
        f"{'N':>6}  {'rounds':>6}  {'paired':>6}  {'failed':>6}  {'CPU us/pairing':>14}  "
        f"{'wall us/pairing':>15}  {'RSS before MB':>13}  {'peak RSS MB':>11}",
    ]
    for lv in result["levels"]:
        lines.append(
            f"{lv['n']:>6}  {len(lv['rounds']):>6}  {lv['paired']:>6}  {lv['failures']:>6}  "
            f"{lv['cpu_us_per_pairing']:>14.0f}  {lv['wall_us_per_pairing']:>15.0f}  "
            f"{lv['rss_before_kib'] / 1024:>13.1f}  {lv['peak_rss_kib'] / 1024:>11.1f}"
        )
    for lv in result["levels"]:
        for r in lv["rounds"]:
            for f in r["failures"][:5]:
                lines.append(f"  failure at {lv['n']}: {f}")
        for line in lv["stderr_lines"][:5]:
            lines.append(f"  stderr at {lv['n']}: {line}")
    small = result["levels"][0]["n"]
    if s.get("over", "loopback") == "loopback":
        lines.append("CPU = the child's CPU time (user + system, host and guests) from the first "
                     "connect to the last session confirmed, / guests paired")
    else:
        guests = ", ".join(
            f"{sum(r['guests_cpu_s'] for r in lv['rounds']) * 1e6 / paired:.0f} us at {lv['n']}"
            for lv in result["levels"]
            if (paired := sum(r["paired"] for r in lv["rounds"]))
        )
        lines.append("CPU = the host process's CPU time (user + system) from its warm-up "
                     "guests' leaving to the last session confirmed, / guests paired (the "
                     "guests' process: "
                     f"{guests} per pairing)")
    repeat = s.get("repeat", 1)
    lines.append(f"median of the rounds (the {small}-level: {s['rounds']} rounds in each of its "
                 f"{repeat + 1} runs, interleaved with the {repeat} run(s) of each larger level)")
    for lv in result["levels"][1:]:
        ratios = lv.get("ratios") or []
        if ratios:
            each = ", ".join(f"{x:.2f}" for x in ratios)
            lines.append(f"CPU ratio at {lv['n']}, each run against the {small}-level runs just "
                         f"before and after it: {each} (median {statistics.median(ratios):.2f}, "
                         f"spread {min(ratios):.2f} to {max(ratios):.2f}; "
                         f"{sum(x <= GOAL_COST_RATIO for x in ratios)} of {len(ratios)} "
                         f"<= {GOAL_COST_RATIO})")
    for lv in result["levels"]:
        writes = [r["keystore_writes"] for r in lv["rounds"] if r.get("keystore_writes")]
        if writes and any(w[0] for w in writes):
            each = ", ".join(f"{w[1]} in {w[0]}" for w in writes[:6])
            lines.append(f"host keystore at {lv['n']}: sessions stored in writes "
                         f"(warm-up included): {each}")
    for lv in result["levels"]:
        gcs = [(r["gc_cpu_s"], r["gc_runs"], r["paired"]) for r in lv["rounds"] if "gc_cpu_s" in r]
        if gcs:
            per = statistics.median(sum(t) * 1e6 / max(p, 1) for t, _, p in gcs)
            share = statistics.median(sum(t) / max(r["cpu_s"], 1e-9)
                                      for (t, _, _), r in zip(gcs, lv["rounds"], strict=False))
            runs = "/".join(str(x) for x in gcs[0][1])
            lines.append(f"garbage collector at {lv['n']}: {per:.0f} us per pairing "
                         f"({share:.1%} of the host's CPU; runs by generation, first run: {runs})")
    charged = [r.get("prekeys_charged_cpu_s", 0.0) * 1e6 / max(r["paired"], 1)
               for lv in result["levels"] for r in lv["rounds"]]
    if charged:
        lines.append("prekeys made before a run's timing and used in it are charged to it "
                     f"(from {min(charged):.0f} to {max(charged):.0f} us per pairing)")
    lines.append(f"total time {result['seconds']:.1f} s")
    lines.append("")
    lines.extend(render_goals(result["goals"]))
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    sizes = [positive(part) for part in text.split(",")]
    if len(sizes) < 2 or sizes != sorted(sizes):
        raise argparse.ArgumentTypeError("two or more sizes, smallest first: 10,1000")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_sizes, default=[10, GOAL_AT_ONCE],
                   help="pairings at once per level, smallest first (default 10,1000)")
    p.add_argument("--method", choices=METHODS, default="compare")
    p.add_argument("--rounds", type=positive, default=10,
                   help="rounds of the smallest level in each of its runs (default 10)")
    p.add_argument("--repeat", type=positive, default=3,
                   help="runs of each larger level, interleaved with runs of the smallest "
                        "(default 3)")
    p.add_argument("--host-gc", choices=HOST_GC, default="default",
                   help="--over tcp, an experiment: the host freezes its garbage collector's "
                        "objects once warmed up (freeze), and raises its thresholds "
                        "(freeze-threshold); default: as pairkit leaves it")
    p.add_argument("--profile", metavar="DIR",
                   help="--over tcp: cProfile the host over the timed part, stats into DIR")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds for a level's pairings (and each step's timeout)")
    p.add_argument("--quick", action="store_true", help="sizes 2,4, 1 round: a smoke run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--over", choices=("loopback", "tcp"), default="tcp",
                   help="tcp: the host alone in its process on 127.0.0.1, the guests in "
                        "another (default: the host's own cost); loopback: host and guests "
                        "in one child process (the guests' constant cost dilutes the ratio)")
    p.add_argument("--child", type=positive, help=argparse.SUPPRESS)
    p.add_argument("--child-tcp-host", type=positive, help=argparse.SUPPRESS)
    p.add_argument("--child-tcp-guests", type=positive, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.repeat = [2, 4], 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_tcp_host is not None:
        print(json.dumps(asyncio.run(_tcp_host(args.child_tcp_host, args.method,
                                               args.timeout, args.profile, args.host_gc))))
        return 0
    if args.child_tcp_guests is not None:
        print(json.dumps(asyncio.run(_tcp_guests(args.child_tcp_guests, args.method,
                                                 args.timeout))))
        return 0
    if args.child is not None:
        print(json.dumps(asyncio.run(_child(args.child, args.method, args.rounds,
                                            args.timeout))))
        return 0
    result = measure(args.sizes, args.method, args.rounds, args.timeout, args.over,
                     args.repeat, args.profile, args.host_gc)
    result["command"] = command_line("concurrent_pairings.py", argv)
    show(result, render, args.json)
    return 0 if all(lv["ok"] for lv in result["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
