"""Key server benchmark: key deliveries per second at 1, 10 and 100 concurrent pairs, vs a floor.

A *key delivery* is one pair of devices served: each device opens TLS 1.3 to the key server
(pinned CA), proves its identity key, states its intent naming the other, and both receive the
same fresh SK (``pairing/ttp.py``, steps 1 and 2).  The server runs as its own process
(``python -m pairkit.keyserver``, :func:`bench.common.start_key_server`), its database on disk,
as in production; the devices run under asyncio in ``nproc`` processes of their own (below),
``pairs`` pairs at a time, each pair delivering ``rounds`` keys one after another.

The *floor* is the cryptography on the critical path of a delivery, each piece at the fastest
implementation here and made of the primitives alone (``ssl``, ``cryptography``, ``hmac``: no
pairkit code runs in it, ``tests/test_bench_ttp_smoke.py`` checks), without the server: per
device, one TLS 1.3 handshake (both ends, in memory through ``ssl.MemoryBIO``, with the
server's real certificate and key and contexts set as the server's and the device's are:
ECDHE X25519, ECDSA P-256 signature, the chain and the signature verified, no session tickets)
and the protocol's messages through it (encoded beforehand: encoding is not cryptography), the
proof of possession (the server's fresh X25519 key, one DH on each side with keys already
loaded, HKDF and HMAC on each side); per delivery, SK drawn (not sealed: a match in the
server's own process hands it to the waiting device in memory).  No sockets, no event loop,
no SQLite, no Python protocol machinery.

The figure issue 13 sets a goal for is a *rate* on the same cores: the **floor rate** is that
same cryptography run by as many processes as this machine gives us CPUs (``nproc``), all at
once.  A shared machine's speed moves by tens of percent within a run, so the two are measured
**interleaved in short blocks**: each level runs server blocks (``deliveries`` each), and
before the first and after each one a floor block (``floor_seconds``, the same ``nproc`` floor
processes, forked once and warm, asleep while the server works): F S F S ... S F.  Each
server block's ``of floor = deliveries/s / floor rate`` is against the mean of the two floor
blocks around it.  What interleaving cannot even out is another job taking a core: it halves
the floor rate (two processes on two cores) and slows the server's two processes by some other
share, so the two are not hit alike.  The bench therefore measures, from ``/proc/stat``, the
CPU the machine's *other* jobs took during every block; a server block is *quiet* when they
took at most ``quiet`` (0.1) of a core in it and in its two floor blocks, and the bench runs
blocks until ``blocks`` are quiet (at most ``max_blocks``).  The level's figure is the **median
over its quiet blocks**, printed with its range (goal at least 0.5 at 100 pairs); with no quiet
block at all it is the median over all of them, and the output says so.  The CPU both sides
spent is counted the same way: the server process's (its threads' time on a CPU, ``/proc``)
and the devices' processes' (and this one's, which waits meanwhile), per delivery, against the
floor's CPU per delivery in the two floor blocks around it (the second goal line).  The load
averages and where each process's threads spent each block are in the JSON.

**The devices in ``nproc`` processes** (session 14; bench/RESULTS.md).  The floor gets
``nproc`` processes; until session 14 the 200 devices got one, under one event loop.  That
process's one thread then ran 0.92 to 0.98 of a core while the server's event loop ran 0.5 to
0.75 and slept the rest: the line read the bench's devices' process, not the server (rate /
floor rate ~= s F / 2D, s the devices' thread's share of a core, F and D the floor's and the
devices' CPU per delivery: the server's own cost is not in it; RESULTS.md, session 10).  The
devices now run in a :class:`DevicePool` of ``nproc`` processes (forked before the server
starts, every ``nproc``-th pair each, all at the same priority as the server and the floor),
so that the server, its devices and the floor have the same cores, and the CPU of every one of
them is counted.  This cannot make the line flatter the server: on the same ``nproc`` cores,
rate / floor rate = (cores the server and devices kept busy / cores the floor kept busy) x
(floor CPU / CPU per delivery), and the floor's processes keep every core busy, so the rate
line is at most (about) the CPU line read in the same blocks; what it adds to the CPU line is
whether the server, competing with its own devices for the cores, keeps them busy.  The
yardstick before (the devices in this one process) still runs, in server blocks alternating
with the goal's (the order swapped every cycle), each against its own floor blocks, and is
printed as a shape line (``one_process`` in the JSON), not the goal.

``ratio = (wall time per delivery) / floor``, the floor timed in one process at the start: at
1 pair it is the full latency over the floor's; at more pairs it is for reading the shape only
(two processes' wall time over one process's floor), not a goal.

Usage::

    .venv/bin/python bench/ttp.py                # 1, 10, 100 pairs, 5 quiet blocks each
    .venv/bin/python bench/ttp.py --json
    .venv/bin/python bench/ttp.py --quick        # a smoke run (the test suite uses it)
    .venv/bin/python bench/ttp.py --pairs 100 --deliveries 400 --blocks 7
    .venv/bin/python bench/ttp.py --scale-out    # 1 and 2 servers on PostgreSQL (ttp_scale.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import hmac
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
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl import backend as openssl_backend  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: E402
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from bench.common import (  # noqa: E402
    load_average,
    machine_probe,
    nproc,
    positive,
    probe_line,
    process_cpu,
    render_goals,
    report,
    start_key_server,
    stop_process,
    summary,
    summary_us,
    thread_schedstat,
    thread_shares,
)
from pairkit.keyserver.certs import init_server_dir, load_cert  # noqa: E402
from pairkit.pairing.keyschedule import TTP_AUTH  # noqa: E402
from pairkit.pairing.methods import LocalIdentity  # noqa: E402
from pairkit.pairing.ttp import (  # noqa: E402
    DeviceRecord,
    IntentRequest,
    IntentRole,
    SkDelivery,
    TtpChallenge,
    TtpHello,
    TtpProof,
    cert_digest,
)
from pairkit.ttp import enrol, request_key  # noqa: E402

DEFAULT_PAIRS = (1, 10, 100)
QUICK_PAIRS = (1, 2)
#: issue 13: at 100 concurrent pairs (the most this bench runs), at least this share of the
#: floor rate on the same cores
RATE_GOAL = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to measure: ``deliveries`` per server block (at least 2 rounds per pair),
    ``blocks`` server blocks per concurrency level, each between two floor blocks of
    ``floor_seconds``."""

    pairs: tuple[int, ...] = DEFAULT_PAIRS
    deliveries: int = 300
    floor_runs: int = 60
    warmup: int = 1
    #: quiet server blocks wanted per level, each set against the floor blocks right before
    #: and after it
    blocks: int = 5
    #: at most this many server blocks per level, quiet or not
    max_blocks: int = 15
    #: how long each floor block runs (all ``nproc`` floor processes at once)
    floor_seconds: float = 0.75
    #: a block is quiet when the machine's other jobs took at most this much of a core during
    #: it and during the floor blocks around it
    quiet: float = 0.1

    def __post_init__(self) -> None:
        if (not self.pairs or min(self.pairs) < 1 or self.deliveries < 1 or self.floor_runs < 1
                or self.blocks < 1 or self.max_blocks < self.blocks):
            raise ValueError("pairs, deliveries, floor_runs and blocks must be 1 or more, "
                             "max_blocks at least blocks")

    def rounds(self, pairs: int) -> int:
        return max(2, -(-self.deliveries // pairs))


# --------------------------------------------------------------------------------------------
# The floor: the same cryptography without the server, made of the primitives alone
# --------------------------------------------------------------------------------------------


def floor_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The floor's TLS contexts, made here with ``ssl`` alone (nothing of pairkit in them):
    the server's, TLS 1.3 only with the server's certificate and key and no session tickets
    (what ``keyserver.server.server_context`` sets), and the device's, TLS 1.3 trusting the CA
    file alone, certificate and host name checked (what ``ttp.client_context`` sets).  Both
    files are the key server's own: the same certificate chain, key type and signature."""
    root = Path(directory)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.num_tickets = 0
    server.load_cert_chain(root / "server.pem", root / "server-key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.check_hostname = True
    client.verify_mode = ssl.CERT_REQUIRED
    client.load_verify_locations(cafile=str(root / "ca.pem"))
    return server, client


def _pump(a_out: ssl.MemoryBIO, b_in: ssl.MemoryBIO) -> None:
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
            _pump(self.c_out, self.s_in)
            _pump(self.s_out, self.c_in)
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


_SHA256 = hashes.SHA256()


def floor_proof(shared: bytes, *, static: bytes, eph: bytes, nonce_c: bytes, nonce_s: bytes,
                cert: bytes) -> bytes:
    """The proof of possession (``pairing/ttp.py``, ``auth_proof``) from the primitives alone:
    HKDF-SHA256 (``cryptography``) and one HMAC-SHA256 over the length-prefixed parts."""
    key = HKDF(algorithm=_SHA256, length=32, salt=nonce_c + nonce_s,
               info=TTP_AUTH).derive(shared)
    return hmac.digest(key, b"".join(len(p).to_bytes(4, "big") + p for p in (
        b"client", static, eph, nonce_c, nonce_s, cert)), "sha256")


@dataclasses.dataclass(frozen=True)
class FloorKit:
    """What a floor delivery works with, made before any timing: the two TLS contexts, the
    two devices' static keys (loaded once, as a device does) and public keys, the server
    certificate's digest the proof binds, and the messages' bytes."""

    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext
    keys: tuple[X25519PrivateKey, X25519PrivateKey]
    publics: tuple[bytes, bytes]
    cert: bytes
    messages: FloorMessages

    @classmethod
    def make(cls, directory: Path, cert: bytes) -> FloorKit:
        devices = (LocalIdentity.generate("a"), LocalIdentity.generate("b"))
        server_ctx, client_ctx = floor_contexts(directory)
        return cls(server_ctx, client_ctx,
                   tuple(X25519PrivateKey.from_private_bytes(d.static_private)
                         for d in devices),  # type: ignore[arg-type]
                   (devices[0].static_public, devices[1].static_public), cert,
                   FloorMessages.of(devices))


def floor_delivery(kit: FloorKit) -> None:
    """One delivery's cryptography, both devices and the server, in this process, from the
    primitives alone (``ssl``, ``cryptography``, ``hmac``; no pairkit code runs here).

    Counted: per device, one TLS 1.3 handshake (both ends) and the protocol's messages through
    it, the server's fresh X25519 key (one fixed-base multiplication), one DH on each side
    with keys already loaded (a device loads its static key once), HKDF and HMAC on each side,
    the constant-time comparison; per delivery, SK drawn.  Not counted: encoding the messages
    (``kit.messages``, made beforehand); sealing SK at rest (a match made in the server's own
    process hands it over in memory).  X25519's all-zero check is OpenSSL's (``exchange``
    refuses a low-order key).
    """
    msgs = kit.messages
    sk = os.urandom(32)
    for i, (key, public) in enumerate(zip(kit.keys, kit.publics, strict=True)):
        tls = TlsPair(kit.server_ctx, kit.client_ctx)
        nonce_c = os.urandom(16)
        tls.send(True, msgs.hello[i])
        eph_key = X25519PrivateKey.from_private_bytes(os.urandom(32))
        eph_public = eph_key.public_key().public_bytes_raw()
        nonce_s = os.urandom(16)
        tls.send(False, msgs.challenge)
        made = floor_proof(key.exchange(X25519PublicKey.from_public_bytes(eph_public)),
                           static=public, eph=eph_public, nonce_c=nonce_c, nonce_s=nonce_s,
                           cert=kit.cert)
        tls.send(True, msgs.proof_and_intent[i])
        checked = floor_proof(eph_key.exchange(X25519PublicKey.from_public_bytes(public)),
                              static=public, eph=eph_public, nonce_c=nonce_c,
                              nonce_s=nonce_s, cert=kit.cert)
        if not hmac.compare_digest(made, checked):  # pragma: no cover
            raise RuntimeError("proof mismatch")
        tls.send(False, msgs.delivery[i])
    del sk


def time_floor(settings: Settings, directory: Path, cert: bytes) -> dict[str, float]:
    kit = FloorKit.make(directory, cert)

    def once() -> float:
        t0 = time.perf_counter()
        floor_delivery(kit)
        return time.perf_counter() - t0

    for _ in range(settings.warmup + 2):
        once()
    samples = [once() for _ in range(settings.floor_runs)]
    tls_samples = []
    for _ in range(max(5, settings.floor_runs // 2)):
        t0 = time.perf_counter()
        TlsPair(kit.server_ctx, kit.client_ctx)
        tls_samples.append(time.perf_counter() - t0)
    floor = summary_us([s * 1e6 for s in samples])
    return {
        "us": floor["median_us"],
        "q1_us": floor["q1_us"],
        "q3_us": floor["q3_us"],
        "tls_handshake_us": statistics.median(tls_samples) * 1e6,
    }


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (every CPU, not idle and not
    waiting for I/O: user, nice, system, interrupts, stolen; Linux ``/proc/stat``), 0 where
    there is none.  Less what this bench's processes spent, it is what *other jobs* took."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _floor_worker(directory: str, cert: bytes, conn: Any) -> None:
    """One of the :class:`FloorPool`'s processes: set up and warm once, then for each job
    ``(start, seconds)`` on ``conn`` do floor deliveries from ``start`` (wall clock) for
    ``seconds``, and answer (deliveries, CPU seconds, wall seconds); ``None`` ends it.
    Between jobs it sleeps in ``recv`` (no CPU taken from the server's blocks)."""
    kit = FloorKit.make(Path(directory), cert)
    for _ in range(3):
        floor_delivery(kit)
    conn.send("ready")
    while (job := conn.recv()) is not None:
        start, seconds = job
        while time.time() < start:
            time.sleep(0.001)
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < seconds:
            floor_delivery(kit)
            n += 1
        conn.send((n, time.process_time() - c0, time.perf_counter() - t0))


class _Workers:
    """Forked worker processes, each with a pipe (``_procs``, ``_conns``), told to stop by a
    ``None`` and joined on :meth:`close` (or as the ``with`` block ends)."""

    _conns: list[Any]
    _procs: list[Any]

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():  # pragma: no cover - a stuck worker
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FloorPool(_Workers):
    """The floor rate on the same cores: ``workers`` (``nproc``) processes, forked once and
    warmed, that do floor deliveries all at once when :meth:`run` says so, for a short block
    of wall time, and sleep in between (while the server's blocks run).  Kept for the whole
    bench, so every floor block is measured by the same warm processes."""

    def __init__(self, directory: Path, cert: bytes, workers: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.workers = workers
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        try:
            for _ in range(workers):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_floor_worker, args=(str(directory), cert, theirs),
                                   daemon=True)
                proc.start()
                theirs.close()
                self._conns.append(mine)
                self._procs.append(proc)
            for conn in self._conns:
                if not conn.poll(60) or conn.recv() != "ready":  # pragma: no cover
                    raise RuntimeError("a floor worker did not start")
        except BaseException:
            self.close()
            raise

    def run(self, seconds: float) -> dict[str, float]:
        """One floor block: every worker at once for ``seconds``; deliveries per second (the
        workers' rates added up) and the CPU they spent per delivery."""
        busy, own, t0 = machine_busy(), time.process_time(), time.perf_counter()
        start = time.time() + 0.02
        for conn in self._conns:
            conn.send((start, seconds))
        got = []
        for conn in self._conns:
            if not conn.poll(60 + seconds):  # pragma: no cover - a stuck worker
                raise RuntimeError("a floor worker did not answer")
            got.append(conn.recv())
        wall = time.perf_counter() - t0
        deliveries = sum(n for n, _, _ in got)
        cpu = sum(c for _, c, _ in got)
        others = machine_busy() - busy - cpu - (time.process_time() - own)
        return {
            "workers": self.workers,
            "deliveries": deliveries,
            "seconds": max(w for _, _, w in got),
            "per_second": sum(n / w for n, _, w in got),
            "cpu_us_per_delivery": cpu / max(1, deliveries) * 1e6,
            "others": max(0.0, others) / wall,
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


def _device_worker(devices: list[LocalIdentity], index: int, workers: int, conn: Any) -> None:
    """One of the :class:`DevicePool`'s processes: for each job ``(address, ca, pairs, rounds,
    start)`` on ``conn``, the pairs ``index``, ``index + workers``, ... of the level (devices
    ``2i`` and ``2i + 1``, as :func:`run_level` pairs them), ``rounds`` deliveries each, all at
    once under a fresh event loop from ``start`` (wall clock); answers (deliveries, CPU
    seconds, wall clock at the end).  The CPU counted is the whole job's, the event loop's
    making and closing included.  ``None`` ends it; between jobs it sleeps in ``recv``."""
    while (job := conn.recv()) is not None:
        address, ca, pairs, rounds, start = job
        couples = [(devices[2 * i], devices[2 * i + 1]) for i in range(index, pairs, workers)]
        c0 = time.process_time()
        asyncio.run(_worker_level(address, Path(ca), couples, rounds, start))
        conn.send((len(couples) * rounds, time.process_time() - c0, time.time()))


async def _worker_level(address: str, ca: Path, couples: list[tuple[LocalIdentity,
                        LocalIdentity]], rounds: int, start: float) -> None:
    async def pair_loop(a: LocalIdentity, b: LocalIdentity) -> None:
        for _ in range(rounds):
            await deliver(address, ca, a, b)

    await asyncio.sleep(max(0.0, start - time.time()))
    await asyncio.gather(*(pair_loop(a, b) for a, b in couples))


class DevicePool(_Workers):
    """The devices in ``workers`` (``nproc``) processes, as the floor has its ``nproc``
    processes (bench/RESULTS.md, session 14): forked once, before the key server starts (they
    hold none of its pipes), with every device's identity; the parent enrols them.  A block
    gives each process every ``workers``-th pair of the level, all processes starting at
    once; its deliveries are all of theirs, its time from the start to the last one's end,
    and its CPU all of theirs (and the parent's, which only waits)."""

    def __init__(self, devices: list[LocalIdentity], workers: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.workers = workers
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        try:
            for index in range(workers):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_device_worker,
                                   args=(devices, index, workers, theirs), daemon=True)
                proc.start()
                theirs.close()
                self._conns.append(mine)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def run(self, address: str, ca: Path, pairs: int, rounds: int) -> dict[str, float]:
        """``pairs`` pairs, ``rounds`` deliveries each, spread over the processes; blocks
        the caller (whose event loop has nothing to do meanwhile)."""
        start = time.time() + 0.02
        for conn in self._conns:
            conn.send((address, str(ca), pairs, rounds, start))
        got = []
        for conn in self._conns:
            if not conn.poll(600):  # pragma: no cover - a stuck worker
                raise RuntimeError("a device worker did not answer")
            got.append(conn.recv())
        n = sum(k for k, _, _ in got)
        if n != pairs * rounds:  # pragma: no cover - the bench must not lie
            raise RuntimeError("the device workers did not make every delivery")
        elapsed = max(end for _, _, end in got) - start
        return {"pairs": pairs, "deliveries": n, "seconds": elapsed,
                "per_second": n / elapsed, "us_per_delivery": elapsed / n * 1e6,
                "workers_cpu": sum(c for _, c, _ in got)}


def spread(values: list[float]) -> dict[str, float]:
    """min, quartiles, median and max of per-block figures (quartiles as :func:`summary`)."""
    s = summary(values)
    return {"min": min(values), "q1": s["q1"], "median": s["median"], "q3": s["q3"],
            "max": max(values), "n": len(values)}


async def server_block(proc_pid: int, address: str, ca: Path, devices: list[LocalIdentity],
                       pairs: int, rounds: int,
                       device_pool: DevicePool | None = None) -> dict[str, Any]:
    """One server block: ``pairs`` pairs, ``rounds`` deliveries each, with the CPU the server
    process and the devices spent, and where their threads spent it.  The devices run in this
    process, or in ``device_pool``'s processes (their CPU and this process's counted)."""
    load_before = load_average()
    device_pids = device_pool.pids if device_pool is not None else [os.getpid()]
    busy, t0 = machine_busy(), time.perf_counter()
    server_cpu, own_cpu = process_cpu(proc_pid), time.process_time()
    sched = (thread_schedstat(proc_pid), [thread_schedstat(pid) for pid in device_pids])
    if device_pool is None:
        block = await run_level(address, ca, devices, pairs, rounds)
        workers_cpu = 0.0
    else:
        block = device_pool.run(address, ca, pairs, rounds)
        workers_cpu = block.pop("workers_cpu")
    after = thread_schedstat(proc_pid)
    own_cpu = time.process_time() - own_cpu + workers_cpu
    busy, wall = machine_busy() - busy, time.perf_counter() - t0
    server_cpu = process_cpu(proc_pid) - server_cpu
    if sched[0] and after:
        # The server's threads' time on a CPU, in nanoseconds (/proc's clock ticks are 10 ms:
        # 1% of a block); its threads live as long as the server.
        server_cpu = sum(run - sched[0].get(tid, (0, 0))[0]
                         for tid, (run, _) in after.items()) / 1e9
    # Where each process's threads spent the block: running, waiting for a core, or asleep
    # (bench/RESULTS.md, "session 10": the rate line is the devices' process's, whose one
    # thread runs nearly all the time).
    block["threads"] = {
        "server": thread_shares(proc_pid, sched[0], after, block["seconds"]),
        "devices": _added([thread_shares(pid, before, thread_schedstat(pid), block["seconds"])
                           for pid, before in zip(device_pids, sched[1], strict=True)]),
    }
    block["device_processes"] = len(device_pids)
    n = block["deliveries"]
    # What other jobs on the machine took meanwhile, in cores (bench/RESULTS.md, session 12:
    # a job that takes a core halves the floor rate, and slows the server's two processes by
    # another share, so a block they ran in measures them, not the server).
    block["others"] = max(0.0, busy - server_cpu - own_cpu) / wall
    block["load"] = [load_before, load_average()]
    block["server_cpu_us_per_delivery"] = server_cpu / n * 1e6
    block["devices_cpu_us_per_delivery"] = own_cpu / n * 1e6
    block["cpu_us_per_delivery"] = (server_cpu + own_cpu) / n * 1e6
    return block


def _added(shares: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """:func:`thread_shares` of several processes added up (in cores: the main threads of
    all, the other threads of all); empty when any is."""
    if not shares or not all(shares):
        return {}
    return {which: {k: sum(s[which][k] for s in shares) for k in ("running", "waiting")}
            for which in ("main", "others")}


async def measure_level(settings: Settings, pool: FloorPool, device_pool: DevicePool,
                        proc_pid: int, address: str, ca: Path, devices: list[LocalIdentity],
                        pairs: int, floor_us: float) -> dict[str, Any]:
    """One concurrency level as server blocks interleaved with floor blocks (F S F S ... S F):
    each server block is set against the mean of the floor blocks right before and right
    after it, so that what the machine's other jobs do to one, they do to the other.  Server
    blocks are of two kinds, alternating (the order swapped every cycle): the devices in
    ``device_pool``'s ``nproc`` processes (the goal's) and the devices in this one process
    (the yardstick before session 14, kept as a shape line), until each kind has ``blocks``
    quiet ones (at most ``max_blocks``).  Each kind's figures are the medians over its
    blocks, with their spread."""
    rounds = settings.rounds(pairs)
    if settings.warmup:
        await run_level(address, ca, devices, pairs, settings.warmup)
        device_pool.run(address, ca, pairs, settings.warmup)
    floors = [pool.run(settings.floor_seconds)]
    kinds: dict[str, list[dict[str, Any]]] = {"processes": [], "one": []}

    def wanted(kind: str) -> bool:
        blocks = kinds[kind]
        return (sum(b["quiet"] for b in blocks) < settings.blocks
                and len(blocks) < settings.max_blocks)

    cycle = 0
    while any(wanted(kind) for kind in kinds):
        order = ("processes", "one") if cycle % 2 == 0 else ("one", "processes")
        cycle += 1
        for kind in order:
            if not wanted(kind):
                continue
            # the machine's state, outside every timed block, on this thread's CPU time: on
            # wall time a 1-2 ms probe reads the scheduler, not the interpreter, once other
            # jobs want the cores (session 17: python/c 0.31-1.46 at load 4-5)
            probe = machine_probe(clock=time.thread_time_ns)
            block = await server_block(proc_pid, address, ca, devices, pairs, rounds,
                                       device_pool if kind == "processes" else None)
            block["probe"] = probe
            floors.append(pool.run(settings.floor_seconds))
            block["floor_index"] = len(floors) - 2  # its floor blocks: this one and the next
            around = floors[-2:]
            block["floor_per_second"] = statistics.fmean(f["per_second"] for f in around)
            block["floor_cpu_us_per_delivery"] = statistics.fmean(
                f["cpu_us_per_delivery"] for f in around)
            block["of_floor"] = block["per_second"] / block["floor_per_second"]
            block["cpu_line"] = (block["floor_cpu_us_per_delivery"]
                                 / block["cpu_us_per_delivery"])
            block["quiet"] = (max(block["others"], *(f["others"] for f in around))
                              <= settings.quiet)
            kinds[kind].append(block)
    blocks = kinds["processes"]
    n = sum(b["deliveries"] for b in blocks)
    seconds = sum(b["seconds"] for b in blocks)
    floor_rates = [f["per_second"] for f in floors]
    in_order = sorted(blocks + kinds["one"], key=lambda b: b["floor_index"])
    return {
        "pairs": pairs,
        "rounds": rounds,
        "deliveries": n,
        "seconds": seconds,
        "per_second": n / seconds,
        "us_per_delivery": seconds / n * 1e6,
        "ratio": seconds / n * 1e6 / floor_us,
        "device_processes": device_pool.workers,
        **figures(blocks),
        "floor": {
            "workers": pool.workers,
            "blocks": floors,
            "deliveries": sum(f["deliveries"] for f in floors),
            "per_second": statistics.median(floor_rates),
            "per_second_spread": spread(floor_rates),
            "cpu_us_per_delivery": statistics.median(f["cpu_us_per_delivery"] for f in floors),
        },
        "one_process": figures(kinds["one"]),
        "load": [in_order[0]["load"][0], in_order[-1]["load"][1]],
    }


def figures(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """A kind of server blocks' figures: the medians over its quiet blocks (none of the
    machine's other jobs took more than ``settings.quiet`` of a core in the block or in its
    two floor blocks), over all its blocks when none was (and the output says so); CPU per
    delivery over all its blocks."""
    quiet = [b for b in blocks if b["quiet"]]
    counted = quiet or blocks
    n = sum(b["deliveries"] for b in blocks)

    def per_delivery(key: str) -> float:
        return sum(b[key] * b["deliveries"] for b in blocks) / n

    return {
        "cpu_us_per_delivery": per_delivery("cpu_us_per_delivery"),
        "server_cpu_us_per_delivery": per_delivery("server_cpu_us_per_delivery"),
        "devices_cpu_us_per_delivery": per_delivery("devices_cpu_us_per_delivery"),
        "blocks": blocks,
        "quiet_blocks": len(quiet),
        "of_floor": statistics.median(b["of_floor"] for b in counted),
        "of_floor_spread": spread([b["of_floor"] for b in counted]),
        "cpu_line": statistics.median(b["cpu_line"] for b in counted),
        "cpu_line_spread": spread([b["cpu_line"] for b in counted]),
        "of_floor_all": statistics.median(b["of_floor"] for b in blocks),
        "cpu_line_all": statistics.median(b["cpu_line"] for b in blocks),
    }


async def measure_async(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pairkit-bench-ttp-") as tmp:
        d = init_server_dir(Path(tmp) / "srv")
        # The certificate's digest, as the proof binds it (made here: setting up, not timed).
        cert = cert_digest(load_cert(d.cert).public_bytes(Encoding.DER))
        floor = time_floor(settings, d.root, cert)
        most = max(settings.pairs)
        devices = [LocalIdentity.generate(f"bench-{i}") for i in range(2 * most)]
        # The floor's processes and the devices' are forked before the server starts (they
        # inherit none of its pipes) and live until the end.
        with FloorPool(d.root, cert, nproc() or 1) as pool, \
                DevicePool(devices, nproc() or 1) as device_pool:
            proc, address = await start_key_server(d.root, 2 * most)
            try:
                for i in range(0, len(devices), 50):
                    await asyncio.gather(*(enrol(address, d.ca_cert, x, timeout=60)
                                           for x in devices[i : i + 50]))
                levels = [await measure_level(settings, pool, device_pool, proc.pid, address,
                                              d.ca_cert, devices, pairs, floor["us"])
                          for pairs in settings.pairs]
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
    """The goal lines, at the most pairs measured, each the median over the level's blocks:
    the rate against the floor's rate on the same cores, and the floor's CPU per delivery
    against the CPU both sides spent per delivery."""
    top = max(levels, key=lambda lv: lv["pairs"])
    # With no quiet block the figures are medians over blocks other jobs ran in, and those
    # need not slow the two sides alike (the server and its nproc device processes have more
    # runnable threads than the floor's nproc, so a fair scheduler can give them a larger
    # share of the contended cores): the goal line itself says so.
    unquiet = "" if top["quiet_blocks"] else " (NO QUIET BLOCK: read with other jobs)"
    return [
        report(f"{top['pairs']} pairs: deliveries/s / floor rate{unquiet}", top["of_floor"],
               RATE_GOAL, at_most=False),
        report(f"{top['pairs']} pairs: floor CPU / CPU per delivery{unquiet}", top["cpu_line"],
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
    s = result["settings"]
    lines = [
        f"pairkit key-server bench, {result['date']}: nproc {m['nproc']}, {m['cpu']}, "
        f"Python {m['python']}, cryptography {m['cryptography']} ({m['openssl']}); "
        f"Python ssl on {m['ssl']}",
        "a delivery: two devices each open TLS 1.3, prove their key, state matching intents, "
        "and get the same SK",
        f"floor (the critical path's cryptography in one process, no server): {f['us']:.0f} us per "
        f"delivery (q1 {f['q1_us']:.0f}, q3 {f['q3_us']:.0f}); of which one TLS 1.3 "
        f"handshake, both ends: {f['tls_handshake_us']:.0f} us (two per delivery)",
        f"each level: server blocks of {s['deliveries']} deliveries, each between two floor "
        f"blocks of {s['floor_seconds']:g} s ({result['levels'][0]['floor']['workers']} floor "
        "processes at once, nproc), until "
        f"{s['blocks']} are quiet (other jobs took at most {s['quiet']:g} of a core in the block "
        f"and in its floor blocks) or {s['max_blocks']} ran; a block's figures are against the "
        "mean of its two floor blocks; the level's are the medians over its quiet blocks "
        "[min-max]",
        f"the devices run in {result['levels'][0]['device_processes']} processes (nproc, as the "
        "floor), their CPU all counted; blocks with the devices in this one process (the "
        "yardstick before session 14) alternate with them and are shown as a shape line, "
        "not the goal",
        "",
        f"{'pairs':>5}  {'deliveries':>10}  {'seconds':>7}  {'deliveries/s':>12}  "
        f"{'us/delivery':>11}  {'ratio':>5}  {'floor/s':>7}  {'of floor':>16}  "
        f"{'CPU us/dlv':>10}  {'floor CPU':>9}  {'floor CPU/CPU':>16}",
    ]
    for lv in result["levels"]:
        fl, rate, cpu = lv["floor"], lv["of_floor_spread"], lv["cpu_line_spread"]
        lines.append(
            f"{lv['pairs']:>5}  {lv['deliveries']:>10}  {lv['seconds']:>7.2f}  "
            f"{lv['per_second']:>12.1f}  {lv['us_per_delivery']:>11.0f}  {lv['ratio']:>5.2f}  "
            f"{fl['per_second']:>7.1f}  {_median_range(rate):>16}  "
            f"{lv['cpu_us_per_delivery']:>10.0f}  {fl['cpu_us_per_delivery']:>9.0f}  "
            f"{_median_range(cpu):>16}"
        )
    lines.append("ratio = us/delivery (wall time, server process and devices together) / the "
                 "one-process floor (latency; not a goal at more than 1 pair)")
    lines.append("floor/s = the floor's deliveries/s in its processes at once (median of the "
                 "level's floor blocks); of floor = a block's deliveries/s / its floor/s")
    lines.append("CPU us/dlv = CPU of the server process and of the devices' processes per "
                 "delivery; floor CPU = the same for the floor")
    for lv in result["levels"]:
        fs, load = lv["floor"]["per_second_spread"], lv["load"]
        lines.append(
            f"  {lv['pairs']} pairs: floor/s {fs['min']:.0f} to {fs['max']:.0f} over "
            f"{fs['n']} floor blocks; load average {_load(load[0])} at the start, "
            f"{_load(load[1])} at the end; CPU us/dlv: server "
            f"{lv['server_cpu_us_per_delivery']:.0f}, devices "
            f"{lv['devices_cpu_us_per_delivery']:.0f}")
        one = lv["one_process"]
        lines.append(
            f"  {lv['pairs']} pairs, the devices in one process (shape, not the goal): of floor "
            f"{_median_range(one['of_floor_spread'])}, floor CPU/CPU "
            f"{_median_range(one['cpu_line_spread'])} over "
            + (f"{one['quiet_blocks']} quiet blocks of {len(one['blocks'])}" if one["quiet_blocks"]
               else f"all {len(one['blocks'])} blocks (NO QUIET BLOCK)")
            + f"; CPU us/dlv: server {one['server_cpu_us_per_delivery']:.0f}, devices "
            f"{one['devices_cpu_us_per_delivery']:.0f}")
        n = len(lv["blocks"])
        if lv["quiet_blocks"]:
            lines.append(
                f"  {lv['pairs']} pairs: {lv['quiet_blocks']} quiet blocks of {n}; over all "
                f"{n}: of floor {lv['of_floor_all']:.2f}, floor CPU/CPU {lv['cpu_line_all']:.2f}")
        else:
            lines.append(
                f"  {lv['pairs']} pairs: NO QUIET BLOCK in {n} (other jobs ran throughout): "
                "the figures are the medians over all blocks and measure the other jobs too")
        probes = [b["probe"] for b in lv["blocks"] + one["blocks"] if "probe" in b]
        if probes:
            lines.append(
                f"  {lv['pairs']} pairs: the machine before each server block (fixed Python, C "
                f"and system-call work in this process, CPU time, bench/common.py): "
                f"{probe_line(probes)}")
        in_order = sorted([(b, "") for b in lv["blocks"]]
                          + [(b, ", devices in one process") for b in one["blocks"]],
                          key=lambda x: x[0]["floor_index"])
        for i, (b, kind) in enumerate(in_order, 1):
            th = b.get("threads", {})
            where = ""
            if th.get("server") and th.get("devices"):
                srv, dev = th["server"], th["devices"]
                threads = ("devices' thread" if b["device_processes"] == 1 else
                           f"devices' {b['device_processes']} threads (cores)")
                where = (f"; running / waiting for a core: {threads} "
                         f"{_share(dev['main'])}, server's event loop {_share(srv['main'])}, "
                         f"its store thread(s) {_share(srv['others'])}")
            k = b["floor_index"]
            floors = lv["floor"]["blocks"][k : k + 2]
            lines.append(
                f"    block {i}{kind}{'' if b['quiet'] else ' (not quiet)'}: other jobs "
                f"{b['others']:.2f} of a core (floor blocks {floors[0]['others']:.2f}, "
                f"{floors[1]['others']:.2f}); {b['per_second']:.1f}/s, floor/s "
                f"{b['floor_per_second']:.1f}, "
                f"of floor {b['of_floor']:.2f}; CPU us/dlv {b['cpu_us_per_delivery']:.0f} "
                f"(server {b['server_cpu_us_per_delivery']:.0f}, devices "
                f"{b['devices_cpu_us_per_delivery']:.0f}), floor "
                f"{b['floor_cpu_us_per_delivery']:.0f}, floor CPU/CPU {b['cpu_line']:.2f}"
                + (f"; python/c {b['probe']['python/c']:.2f}" if "probe" in b else "")
                + where)
    lines += render_goals(result["goals"])
    lines.append(f"total time {result['total_s']:.1f} s")
    return "\n".join(lines)


def _median_range(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


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
                        help="deliveries per server block (default 300)")
    parser.add_argument("--blocks", type=positive, default=None,
                        help="quiet server blocks wanted per level, between floor blocks "
                             "(default 5; at most 3 times as many run)")
    parser.add_argument("--scale-out", action="store_true",
                        help="one and two server processes on one PostgreSQL database")
    args = parser.parse_args(argv)
    if args.scale_out:
        return scale_out(args.quick, out)
    if args.quick:
        settings = Settings(pairs=tuple(args.pairs or QUICK_PAIRS),
                            deliveries=args.deliveries or 4, floor_runs=3, warmup=0,
                            blocks=args.blocks or 2, max_blocks=args.blocks or 2,
                            floor_seconds=0.2)
    else:
        blocks = args.blocks or 5
        settings = Settings(pairs=tuple(args.pairs or DEFAULT_PAIRS),
                            deliveries=args.deliveries or 300, blocks=blocks,
                            max_blocks=3 * blocks)
    result = measure(settings)
    out(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
