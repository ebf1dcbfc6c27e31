"""Key server benchmark: key deliveries per second at 1, 10 and 100 concurrent pairs, vs a floor.

A *key delivery* is one pair of devices served: each device opens TLS 1.3 to the key server
(pinned CA), proves its identity key, states its intent naming the other, and both receive the
same fresh SK (``pairing/ttp.py``, steps 1 and 2).  The server runs as its own process
(``python -m pairkit.keyserver``, :func:`bench.common.start_key_server`), its database on disk,
as in production; the devices run in this process under asyncio, ``pairs`` pairs at a time,
each pair delivering ``rounds`` keys one after another.

The *floor* is the cryptography on the critical path of a delivery, each piece at the fastest
implementation here, in one process without the server: per device, one TLS 1.3 handshake
(both ends, in memory through ``ssl.MemoryBIO``, with the server's real certificate and
context and the device's context: ECDHE X25519, ECDSA P-256 signature, the chain and the
signature verified) and the protocol's messages through it (encoded beforehand: encoding is
not cryptography), the proof of possession (the server's fresh X25519 key, one DH on each side
with keys already loaded, HKDF and HMAC on each side); per delivery, SK drawn (not sealed: a
match in the server's own process hands it to the waiting device in memory).  No sockets, no
event loop, no SQLite, no Python protocol machinery.

The figure issue 13 sets a goal for is a *rate* on the same cores: the **floor rate** is that
same cryptography run by as many processes as this machine gives us CPUs (``nproc``), all at
once for ``floor_seconds``, measured right before and right after every level and averaged
(so a machine that gets busier or quieter during the level moves both sides); ``of floor =
deliveries/s / floor rate``, goal at least 0.5 at 100 pairs.  The CPU both sides spent is
counted too: the server process's (from ``/proc``) and this process's (the devices), per
delivery, against the floor's CPU per delivery (the second goal line: less moved by other jobs
on a shared machine).  The load averages before and after each level are in the JSON.

``ratio = (wall time per delivery) / floor``, the floor timed in one process at the start: at
1 pair it is the full latency over the floor's; at more pairs it is for reading the shape only
(two processes' wall time over one process's floor), not a goal.

Usage::

    .venv/bin/python bench/ttp.py                # 1, 10 and 100 pairs (15 to 30 s)
    .venv/bin/python bench/ttp.py --json
    .venv/bin/python bench/ttp.py --quick        # a smoke run (the test suite uses it)
    .venv/bin/python bench/ttp.py --pairs 1 10 100 --deliveries 300
    .venv/bin/python bench/ttp.py --scale-out    # 1 and 2 servers on PostgreSQL (ttp_scale.py)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl import backend as openssl_backend  # noqa: E402

from bench.common import (  # noqa: E402
    load_average,
    nproc,
    positive,
    process_cpu,
    render_goals,
    report,
    start_key_server,
    stop_process,
    summary_us,
    thread_schedstat,
    thread_shares,
)
from pairkit.keyserver.certs import init_server_dir  # noqa: E402
from pairkit.keyserver.server import server_context  # noqa: E402
from pairkit.keyserver.store import Sealer  # noqa: E402
from pairkit.pairing.crypto import same, x25519, x25519_loaded  # noqa: E402
from pairkit.pairing.methods import LocalIdentity  # noqa: E402
from pairkit.pairing.ttp import (  # noqa: E402
    DeviceRecord,
    IntentRequest,
    IntentRole,
    SkDelivery,
    TtpChallenge,
    TtpHello,
    TtpProof,
    auth_proof,
)
from pairkit.ttp import client_context, enrol, request_key  # noqa: E402

DEFAULT_PAIRS = (1, 10, 100)
QUICK_PAIRS = (1, 2)
#: issue 13: at 100 concurrent pairs (the most this bench runs), at least this share of the
#: floor rate on the same cores
RATE_GOAL = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to measure: ``deliveries`` per concurrency level (at least 2 rounds per pair)."""

    pairs: tuple[int, ...] = DEFAULT_PAIRS
    deliveries: int = 300
    floor_runs: int = 60
    warmup: int = 1
    #: how long the parallel floor runs before each level
    floor_seconds: float = 1.5

    def __post_init__(self) -> None:
        if not self.pairs or min(self.pairs) < 1 or self.deliveries < 1 or self.floor_runs < 1:
            raise ValueError("pairs, deliveries and floor_runs must be 1 or more")

    def rounds(self, pairs: int) -> int:
        return max(2, -(-self.deliveries // pairs))


# --------------------------------------------------------------------------------------------
# The floor: the same cryptography in one process
# --------------------------------------------------------------------------------------------


def _pump(a: ssl.SSLObject, a_out: ssl.MemoryBIO, b_in: ssl.MemoryBIO) -> None:
    data = a_out.read()
    if data:
        b_in.write(data)


class TlsPair:
    """A TLS 1.3 client and server joined in memory."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname="127.0.0.1")
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        done = {"c": False, "s": False}
        for _ in range(10):
            for key, side in (("c", self.client), ("s", self.server)):
                if not done[key]:
                    try:
                        side.do_handshake()
                        done[key] = True
                    except ssl.SSLWantReadError:
                        pass
            _pump(self.client, self.c_out, self.s_in)
            _pump(self.server, self.s_out, self.c_in)
            if done["c"] and done["s"]:
                break
        else:  # pragma: no cover - a broken TLS set-up
            raise RuntimeError("the in-memory TLS handshake did not complete")

    def send(self, client_to_server: bool, data: bytes) -> bytes:
        src, dst = (self.client, self.server) if client_to_server else (self.server, self.client)
        out, into = (self.c_out, self.s_in) if client_to_server else (self.s_out, self.c_in)
        src.write(data)
        into.write(out.read())
        got = b""
        while len(got) < len(data):
            try:
                got += dst.read(65536)
            except ssl.SSLWantReadError:  # pragma: no cover - all bytes were moved
                break
        return got


@dataclasses.dataclass(frozen=True)
class FloorMessages:
    """The protocol's messages of one delivery, encoded once before any timing: the floor
    carries their bytes through TLS (record encryption is cryptography on the path), but
    encoding them is Python work, not cryptography, so it is not counted in the floor."""

    hello: tuple[bytes, ...]
    challenge: bytes
    proof_and_intent: tuple[bytes, ...]
    delivery: tuple[bytes, ...]

    @classmethod
    def of(cls, devices: tuple[LocalIdentity, LocalIdentity]) -> FloorMessages:
        pair = (devices, devices[::-1])
        return cls(
            hello=tuple(TtpHello(me.static_public, os.urandom(16), me.name).encode()
                        for me, _ in pair),
            challenge=TtpChallenge(os.urandom(16), os.urandom(32)).encode(),
            proof_and_intent=tuple(
                TtpProof(os.urandom(32)).encode()
                + IntentRequest(peer.device_id, b"\x00" * 32, IntentRole.HOST, 5).encode()
                for _, peer in pair),
            delivery=tuple(
                SkDelivery(os.urandom(16), os.urandom(32), DeviceRecord(
                    peer.device_id, peer.name, peer.static_public, peer.signing_public)).encode()
                for _, peer in pair),
        )


def floor_delivery(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    devices: tuple[LocalIdentity, LocalIdentity],
    cert: bytes,
    sealer: Sealer,
    messages: FloorMessages | None = None,
) -> None:
    """One delivery's cryptography, both devices and the server, in this process.

    Counted: per device, one TLS 1.3 handshake (both ends) and the protocol's messages through
    it, the server's fresh X25519 key (one fixed-base multiplication), one DH on each side
    with keys already loaded (a device loads its static key once: ``LocalIdentity.static_key``),
    HKDF and HMAC on each side, the constant-time comparison; per delivery, SK drawn.  Not
    counted: encoding the messages (``messages``, made beforehand); sealing SK at rest (a match
    made in the server's own process, as here, hands it over in memory; ``sealer`` is unused).
    """
    msgs = messages or FloorMessages.of(devices)
    sk = os.urandom(32)
    for i, me in enumerate(devices):
        tls = TlsPair(server_ctx, client_ctx)
        nonce_c = os.urandom(16)
        tls.send(True, msgs.hello[i])
        eph_key, eph_public = x25519_loaded(os.urandom)
        nonce_s = os.urandom(16)
        tls.send(False, msgs.challenge)
        made = auth_proof(x25519(me.static_key(), eph_public), static=me.static_public,
                          eph=eph_public, nonce_c=nonce_c, nonce_s=nonce_s, cert=cert)
        tls.send(True, msgs.proof_and_intent[i])
        checked = auth_proof(x25519(eph_key, me.static_public), static=me.static_public,
                             eph=eph_public, nonce_c=nonce_c, nonce_s=nonce_s, cert=cert)
        if not same(made, checked):  # pragma: no cover
            raise RuntimeError("proof mismatch")
        tls.send(False, msgs.delivery[i])
    del sk, sealer  # a match in the server's own process hands SK over in memory: not sealed


def time_floor(settings: Settings, directory: Path, cert: bytes) -> dict[str, float]:
    from pairkit.keyserver.certs import ServerDir

    d = ServerDir(directory)
    server_ctx, client_ctx = server_context(d), client_context(d.ca_cert)
    devices = (LocalIdentity.generate("a"), LocalIdentity.generate("b"))
    sealer = Sealer(os.urandom(32))
    messages = FloorMessages.of(devices)

    def once() -> float:
        t0 = time.perf_counter()
        floor_delivery(server_ctx, client_ctx, devices, cert, sealer, messages)
        return time.perf_counter() - t0

    for _ in range(settings.warmup + 2):
        once()
    samples = [once() for _ in range(settings.floor_runs)]
    tls_samples = []
    for _ in range(max(5, settings.floor_runs // 2)):
        t0 = time.perf_counter()
        TlsPair(server_ctx, client_ctx)
        tls_samples.append(time.perf_counter() - t0)
    floor = summary_us([s * 1e6 for s in samples])
    return {
        "us": floor["median_us"],
        "q1_us": floor["q1_us"],
        "q3_us": floor["q3_us"],
        "tls_handshake_us": statistics.median(tls_samples) * 1e6,
    }


def _floor_worker(directory: str, cert: bytes, start: float, seconds: float,
                  out: Any) -> None:
    """One of ``nproc`` processes of the parallel floor: deliveries from ``start`` for
    ``seconds`` (wall clock), then (deliveries, CPU seconds, wall seconds) on ``out``."""
    from pairkit.keyserver.certs import ServerDir

    d = ServerDir(Path(directory))
    server_ctx, client_ctx = server_context(d), client_context(d.ca_cert)
    devices = (LocalIdentity.generate("a"), LocalIdentity.generate("b"))
    sealer = Sealer(os.urandom(32))
    messages = FloorMessages.of(devices)
    for _ in range(2):
        floor_delivery(server_ctx, client_ctx, devices, cert, sealer, messages)
    while time.time() < start:
        time.sleep(0.001)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < seconds:
        floor_delivery(server_ctx, client_ctx, devices, cert, sealer, messages)
        n += 1
    out.put((n, time.process_time() - c0, time.perf_counter() - t0))


def parallel_floor(directory: Path, cert: bytes, seconds: float,
                   workers: int) -> dict[str, float]:
    """The floor rate on the same cores: ``workers`` processes doing floor deliveries at once.

    Forked (the workers only compute and exit); they start together on the wall clock after
    their set-up, so the window is one and the same for all of them.
    """
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 1.0
    procs = [ctx.Process(target=_floor_worker, args=(str(directory), cert, start, seconds,
                                                     queue), daemon=True)
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        got = [queue.get(timeout=60 + seconds) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():  # pragma: no cover - a stuck worker
                proc.kill()
    deliveries = sum(n for n, _, _ in got)
    return {
        "workers": workers,
        "deliveries": deliveries,
        "per_second": sum(n / wall for n, _, wall in got),
        "cpu_us_per_delivery": sum(cpu for _, cpu, _ in got) / max(1, deliveries) * 1e6,
    }


# --------------------------------------------------------------------------------------------
# The server, for real
# --------------------------------------------------------------------------------------------


async def deliver(address: str, ca: Path, a: LocalIdentity, b: LocalIdentity) -> None:
    context = os.urandom(32)
    ka, kb = await asyncio.gather(
        request_key(address, ca, a, peer_id=b.device_id, context=context, role=IntentRole.HOST,
                    wait=30, timeout=60),
        request_key(address, ca, b, peer_id=a.device_id, context=context, role=IntentRole.GUEST,
                    wait=30, timeout=60),
    )
    if ka.sk != kb.sk:  # pragma: no cover - the tests check this; the bench must not lie
        raise RuntimeError("a pair received different keys")


async def run_level(address: str, ca: Path, devices: list[LocalIdentity], pairs: int,
                    rounds: int) -> dict[str, float]:
    couples = [(devices[2 * i], devices[2 * i + 1]) for i in range(pairs)]

    async def pair_loop(a: LocalIdentity, b: LocalIdentity) -> None:
        for _ in range(rounds):
            await deliver(address, ca, a, b)

    t0 = time.perf_counter()
    await asyncio.gather(*(pair_loop(a, b) for a, b in couples))
    elapsed = time.perf_counter() - t0
    n = pairs * rounds
    return {"pairs": pairs, "deliveries": n, "seconds": elapsed, "per_second": n / elapsed,
            "us_per_delivery": elapsed / n * 1e6}


async def measure_async(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pairkit-bench-ttp-") as tmp:
        d = init_server_dir(Path(tmp) / "srv")
        from cryptography.hazmat.primitives.serialization import Encoding

        from pairkit.keyserver.certs import load_cert
        from pairkit.pairing.ttp import cert_digest

        cert = cert_digest(load_cert(d.cert).public_bytes(Encoding.DER))
        floor = time_floor(settings, d.root, cert)
        most = max(settings.pairs)
        proc, address = await start_key_server(d.root, 2 * most)
        try:
            devices = [LocalIdentity.generate(f"bench-{i}") for i in range(2 * most)]
            for i in range(0, len(devices), 50):
                await asyncio.gather(*(enrol(address, d.ca_cert, x, timeout=60)
                                       for x in devices[i : i + 50]))
            levels = []
            for pairs in settings.pairs:
                if settings.warmup:
                    await run_level(address, d.ca_cert, devices, pairs, settings.warmup)
                load_before = load_average()
                before = parallel_floor(d.root, cert, settings.floor_seconds, nproc() or 1)
                server_cpu, own_cpu = process_cpu(proc.pid), time.process_time()
                sched = (thread_schedstat(proc.pid), thread_schedstat(os.getpid()))
                level = await run_level(address, d.ca_cert, devices, pairs,
                                        settings.rounds(pairs))
                server_cpu = process_cpu(proc.pid) - server_cpu
                own_cpu = time.process_time() - own_cpu
                # Where each process's threads spent the level: running, waiting for a core,
                # or asleep (bench/RESULTS.md, "session 10": the rate line is the devices'
                # process's, whose one thread runs nearly all the time).
                level["threads"] = {
                    "server": thread_shares(proc.pid, sched[0], thread_schedstat(proc.pid),
                                            level["seconds"]),
                    "devices": thread_shares(os.getpid(), sched[1],
                                             thread_schedstat(os.getpid()), level["seconds"]),
                }
                cpu = server_cpu + own_cpu
                after = parallel_floor(d.root, cert, settings.floor_seconds, nproc() or 1)
                fair = {
                    "workers": before["workers"],
                    "deliveries": before["deliveries"] + after["deliveries"],
                    "per_second": (before["per_second"] + after["per_second"]) / 2,
                    "cpu_us_per_delivery": (before["cpu_us_per_delivery"]
                                            + after["cpu_us_per_delivery"]) / 2,
                    "before": before,
                    "after": after,
                }
                level["load"] = [load_before, load_average()]
                level["ratio"] = level["us_per_delivery"] / floor["us"]
                level["floor"] = fair
                level["of_floor"] = level["per_second"] / fair["per_second"]
                level["cpu_us_per_delivery"] = cpu / level["deliveries"] * 1e6
                level["server_cpu_us_per_delivery"] = server_cpu / level["deliveries"] * 1e6
                level["devices_cpu_us_per_delivery"] = own_cpu / level["deliveries"] * 1e6
                level["cpu_vs_floor"] = (level["cpu_us_per_delivery"]
                                         / fair["cpu_us_per_delivery"])
                levels.append(level)
        finally:
            await stop_process(proc)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "settings": dataclasses.asdict(settings),
        "floor": floor,
        "levels": levels,
        "goals": goals(levels),
        "total_s": time.perf_counter() - started,
    }


def goals(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The goal lines, at the most pairs measured: the rate against the floor's rate on the
    same cores, and (less moved by other jobs on a shared machine) the floor's CPU per
    delivery against the CPU both sides spent per delivery."""
    top = max(levels, key=lambda lv: lv["pairs"])
    return [
        report(f"{top['pairs']} pairs: deliveries/s / floor rate", top["of_floor"], RATE_GOAL,
               at_most=False),
        report(f"{top['pairs']} pairs: floor CPU / CPU per delivery", 1 / top["cpu_vs_floor"],
               RATE_GOAL, at_most=False),
    ]


def measure(settings: Settings) -> dict[str, Any]:
    return asyncio.run(measure_async(settings))


def scale_out(quick: bool, out: Callable[[str], None]) -> int:
    """Deliveries per second with one and with two server processes on one PostgreSQL
    database: figure, goal (two >= 1.5 x one), met (bench/ttp_scale.py, issue 17)."""
    from bench import ttp_scale

    return ttp_scale.main(["--quick"] if quick else [], out=out)


def machine() -> dict[str, Any]:
    return {
        "nproc": nproc(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "ssl": ssl.OPENSSL_VERSION,
    }


def render(result: dict[str, Any]) -> str:
    m, f = result["machine"], result["floor"]
    lines = [
        f"pairkit key-server bench, {result['date']}: nproc {m['nproc']}, {m['cpu']}, "
        f"Python {m['python']}, cryptography {m['cryptography']} ({m['openssl']}); "
        f"Python ssl on {m['ssl']}",
        "a delivery: two devices each open TLS 1.3, prove their key, state matching intents, "
        "and get the same SK",
        f"floor (the critical path's cryptography in one process, no server): {f['us']:.0f} us per "
        f"delivery (q1 {f['q1_us']:.0f}, q3 {f['q3_us']:.0f}); of which one TLS 1.3 "
        f"handshake, both ends: {f['tls_handshake_us']:.0f} us (two per delivery)",
        "",
        f"{'pairs':>5}  {'deliveries':>10}  {'seconds':>7}  {'deliveries/s':>12}  "
        f"{'us/delivery':>11}  {'ratio':>5}  {'floor/s':>7}  {'of floor':>8}  "
        f"{'CPU us/dlv':>10}  {'floor CPU':>9}  {'CPU/floor':>9}",
    ]
    for lv in result["levels"]:
        fl = lv["floor"]
        lines.append(
            f"{lv['pairs']:>5}  {lv['deliveries']:>10}  {lv['seconds']:>7.2f}  "
            f"{lv['per_second']:>12.1f}  {lv['us_per_delivery']:>11.0f}  {lv['ratio']:>5.2f}  "
            f"{fl['per_second']:>7.1f}  {lv['of_floor']:>8.2f}  "
            f"{lv['cpu_us_per_delivery']:>10.0f}  {fl['cpu_us_per_delivery']:>9.0f}  "
            f"{lv['cpu_vs_floor']:>9.2f}"
        )
    lines.append("ratio = us/delivery (wall time, server process and devices together) / the "
                 "one-process floor (latency; not a goal at more than 1 pair)")
    lines.append(f"floor/s = the floor's deliveries/s in {result['levels'][0]['floor']['workers']} "
                 "processes at once (nproc), measured right before and right after each level "
                 "(the mean); of floor = deliveries/s / floor/s")
    for lv in result["levels"]:
        fl, load = lv["floor"], lv["load"]
        lines.append(
            f"  {lv['pairs']} pairs: floor/s before {fl['before']['per_second']:.1f}, after "
            f"{fl['after']['per_second']:.1f}; load average {_load(load[0])} before, "
            f"{_load(load[1])} after; CPU us/dlv: server {lv['server_cpu_us_per_delivery']:.0f},"
            f" devices {lv['devices_cpu_us_per_delivery']:.0f}")
    lines.append("CPU us/dlv = CPU of the server process and of the devices' process per "
                 "delivery; floor CPU = the same for the floor")
    for lv in result["levels"]:
        th = lv.get("threads", {})
        if th.get("server") and th.get("devices"):
            srv, dev = th["server"], th["devices"]
            lines.append(
                f"  {lv['pairs']} pairs, share of the level's time running / waiting for a "
                f"core: devices' thread {_share(dev['main'])}; server's event loop "
                f"{_share(srv['main'])}, its store thread(s) {_share(srv['others'])}")
    lines += render_goals(result["goals"])
    lines.append(f"total time {result['total_s']:.1f} s")
    return "\n".join(lines)


def _share(share: dict[str, float]) -> str:
    return f"{share['running']:.2f} / {share['waiting']:.2f}"


def _load(load: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load) or "unknown"


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        description="Key deliveries per second of the pairkit key server, against a floor.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 pairs")
    parser.add_argument("--pairs", type=positive, nargs="+", default=None,
                        help="concurrency levels (pairs at once); default 1 10 100")
    parser.add_argument("--deliveries", type=positive, default=None,
                        help="deliveries per level (default 300)")
    parser.add_argument("--scale-out", action="store_true",
                        help="one and two server processes on one PostgreSQL database")
    args = parser.parse_args(argv)
    if args.scale_out:
        return scale_out(args.quick, out)
    if args.quick:
        settings = Settings(pairs=tuple(args.pairs or QUICK_PAIRS),
                            deliveries=args.deliveries or 4, floor_runs=3, warmup=0,
                            floor_seconds=0.2)
    else:
        settings = Settings(pairs=tuple(args.pairs or DEFAULT_PAIRS),
                            deliveries=args.deliveries or 300)
    result = measure(settings)
    out(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
