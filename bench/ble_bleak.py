"""Guest on bleak beside guest on bumble: pairing time on the same virtual link, as a ratio.

One host (:class:`~transports.bumble.BumbleTransport`, pairkit's GATT service) on a virtual radio
with two guests on the same radio: one on bumble (``bumble:virtual`` with ``prefer_l2cap=False``,
so that both guests use the same GATT link: writes without response up, notifications down,
ATT MTU 517, 251-byte ACL packets) and one on bleak (``bleak:bumble:virtual``: bleak's
``BleakClient`` on pairkit's bumble backend, :mod:`transports.bleak`).  Runs alternate between the
two guests, so that both see the same machine.  What is timed, per method (pin, qr, compare,
resume), with a fresh connection each run:

* ``pair``: the complete :class:`~pairing.methods.GuestPairing` /
  :class:`~pairing.methods.HostPairing` exchange run by :func:`pairkit.driver.drive` over an open
  link (no cloud step);
* ``join``: from the host's address to an agreed session: connect (bleak: with
  bleak-retry-connector, service discovery and the subscription; bumble: MTU, discovery,
  subscription), then the same pairing.

The figure to compare across machines and commits is the ratio ``bleak / bumble``: what
bleak's API, bleak-retry-connector and the backend add over bumble's own GATT client on an
identical link.  Expect ``pair`` near 1 (the same ATT PDUs either way) and ``join`` above it:
bleak discovers the peer's whole GATT database (every service, characteristic and descriptor,
as BleakClient.connect promises) where pairkit's bumble guest looks up its one service.

**Goodput to the bleak guest** (issue 15, item 7), on one GATT link between the host and the
bleak guest, runs alternating on that same connection:

* ``raw``: bumble alone on the sending side: GATT notifications of the link's MTU with
  ``device.notify_subscriber``, no pairkit code (the guest reads them from its link: the same
  receiving side as below), in two ways: all queued at once, as bench/ble.py's reference and
  bumble's ``apps/bench.py`` do (``raw``), and paced by HCI flow control, each notification
  once the host holds at most two controller buffers' worth of ACL packets (``raw_paced``,
  pairkit's own flow control written out with bumble's API); in each run the faster of the
  two is the reference;
* ``secure``: a file transfer as ``pairkit get`` makes it: the file service's ``Chunk`` messages
  (at most 16 KiB of file each, sized as the file service sizes them to fill the link's
  messages: ``pairkit.files.chunk_size``) over a :class:`~pairkit.securelink.SecureLink` after a
  pin pairing,
  with the host's pace on (:mod:`transports.ble.pace`: the transfer asks for a short connection
  interval and the 2M PHY); goodput counts file bytes only.

Goal: the median over the runs of ``secure / the faster raw of the same run`` >= 0.95 (issue
13's goodput goal; a ratio per run, so that other jobs slowing one run slow both sides of it).
A virtual link has no air time, so neither the PHY nor the connection interval changes its
speed: what is measured is what pairkit costs on top of bumble and bleak.  On a radio the pace
is what moves the figure (a 2M PHY halves the air time of each packet; a 15 ms interval
against BlueZ's 30-50 ms default doubles to triples the connection events); the JSON records
what the central agreed to.

Usage::

    .venv/bin/python bench/ble_bleak.py            # the table (about 10 s on 2 cores)
    .venv/bin/python bench/ble_bleak.py --json     # one JSON object
    .venv/bin/python bench/ble_bleak.py --quick    # one run of everything (smoke test)
    .venv/bin/python bench/ble_bleak.py --repeat 50
    .venv/bin/python bench/ble_bleak.py --goodput-runs 9 --goodput-bytes 2097152
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/ble_bleak.py` finds pairing/, transports/
    sys.path.insert(0, str(ROOT))

import bleak  # noqa: E402
import bumble  # noqa: E402

from bench.common import (  # noqa: E402
    Yes,
    drain,
    hang_up,
    nproc,
    plain_notify_size,
    positive,
    render_goals,
    report,
    show,
    summary,
    timed_transfer,
    tx_characteristic,
)

#: the bench's own goal (issue 13 names none): a pairing costs the guest on pairkit's bleak
#: backend at most this much more than the guest on bumble, on the same link
BLEAK_GOAL = 1.25
#: a file transfer to the bleak guest reaches at least this share of bumble's raw notify
#: goodput on the same link (issue 13's goodput goal)
GOODPUT_GOAL = 0.95

from pairkit.driver import drive  # noqa: E402
from pairkit.files import chunk_size  # noqa: E402
from pairkit.pairing.hello import Hello  # noqa: E402
from pairkit.pairing.methods import (  # noqa: E402
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Session,
    prekey_holder,
)
from pairkit.pairing.negotiation import ALL_CAPS, Method  # noqa: E402
from pairkit.pairing.service import Chunk  # noqa: E402
from pairkit.pairing.wire import decode  # noqa: E402
from pairkit.securelink import SecureLink, confirm  # noqa: E402
from pairkit.transports.ble.pace import Speed  # noqa: E402
from pairkit.transports.ble.virtual import VirtualRadio  # noqa: E402
from pairkit.transports.bleak import BleakTransport  # noqa: E402
from pairkit.transports.bumble import BumbleTransport, open_bumble  # noqa: E402
from pairkit.transports.registry import open_transport  # noqa: E402

METHODS = ("pin", "qr", "compare", "resume")
GUESTS = ("bumble", "bleak")
PHASES = ("pair", "join")


@dataclasses.dataclass(frozen=True)
class Settings:
    repeat: int
    warmup: int
    goodput_runs: int = 9
    goodput_bytes: int = 1 << 20


DEFAULT = Settings(repeat=20, warmup=2)
QUICK = Settings(repeat=1, warmup=0, goodput_runs=1, goodput_bytes=128 * 1024)


_YES = Yes()


class Pairings:
    """One host identity and one guest identity per guest transport, pairing again and again."""

    def __init__(self) -> None:
        self.config = PairingConfig()
        self.host_id = LocalIdentity.generate("Paul's phone")
        self.guest_ids = {g: LocalIdentity.generate(f"George's {g}") for g in GUESTS}
        self.host_known: dict[bytes, KnownPeer] = {}
        self.guest_known: dict[str, KnownPeer | None] = dict.fromkeys(GUESTS)
        self.state = HostState(
            known_peer=self.host_known.get,
            peer_by_prekey=lambda d: prekey_holder(self.host_known.values(), d),
        )

    def _guest_kwargs(self, guest: str, method: str) -> dict[str, Any]:
        if method == "pin":
            return {"method": Method.PIN, "pin": self.state.new_pin()}
        if method == "qr":
            code = self.state.issue_qr(self.host_id.static_public, time.time(), ttl=60, hint="")
            return {"method": Method.QR, "qr": code}
        if method == "compare":
            return {"method": Method.COMPARE}
        peer = self.guest_known[guest]
        if peer is None:
            raise RuntimeError("resume needs a first pairing")
        return {"method": Method.RESUME, "peer": peer}

    async def run(self, guest: str, method: str, guest_link: Any, host_link: Any) -> None:
        """One complete exchange; checks that both sides agreed, remembers the peers."""
        kwargs = self._guest_kwargs(guest, method)
        now = asyncio.get_running_loop().time()
        host = HostPairing(self.config, self.host_id, self.state, wall_now=time.time())
        host.start(now)
        machine = GuestPairing(self.config, self.guest_ids[guest], wall_now=time.time(), **kwargs)
        machine.start(now)
        await asyncio.wait_for(
            asyncio.gather(
                drive(machine, guest_link, delegate=_YES), drive(host, host_link, delegate=_YES)
            ),
            30,
        )
        self._check(guest, method, kwargs, machine.session, host.session)
        assert machine.session is not None and host.session is not None
        #: the sessions of the last exchange: (guest's, host's)
        self.last = (machine.session, host.session)

    def _check(
        self,
        guest: str,
        method: str,
        kwargs: dict[str, Any],
        gs: Session | None,
        hs: Session | None,
    ) -> None:
        if gs is None or hs is None or gs.fingerprint != hs.fingerprint:
            raise RuntimeError(f"{guest} {method}: the two sides did not agree on a session")
        if gs.method is not kwargs["method"]:
            raise RuntimeError(f"{guest} {method}: ran as {gs.method.label}")
        self.guest_known[guest] = gs.updated_peer(kwargs.get("peer", self.guest_known[guest]))
        previous = self.host_known.get(hs.peer.device_id)
        self.host_known[hs.peer.device_id] = hs.updated_peer(previous)


@dataclasses.dataclass
class Bench:
    radio: VirtualRadio
    host: BumbleTransport
    guests: dict[str, BumbleTransport | BleakTransport]

    async def close(self) -> None:
        for guest in self.guests.values():
            await guest.close()
        await self.host.close()


async def open_bench() -> Bench:
    radio = VirtualRadio()
    host = await open_bumble("virtual", radio=radio, prefer_l2cap=False, name="host")
    hello = Hello(visible=True, caps=ALL_CAPS, methods=frozenset({Method.PIN}), tag=os.urandom(8))
    await host.start_advertising(hello.encode())
    guests: dict[str, Any] = {
        "bumble": await open_bumble("virtual", radio=radio, prefer_l2cap=False, name="bumble"),
        "bleak": await open_transport("bleak:bumble:virtual", radio=radio),
    }
    return Bench(radio, host, guests)


async def connect(bench: Bench, guest: str) -> tuple[Any, Any]:
    accepting = asyncio.ensure_future(bench.host.accept(timeout=10))
    guest_link = await bench.guests[guest].connect(bench.host.address, timeout=10)
    host_link = await accepting
    if guest_link.kind != "gatt" or host_link.kind != "gatt":
        raise RuntimeError(f"{guest}: not a GATT link on both sides")
    return guest_link, host_link


async def measure(settings: Settings) -> dict[str, Any]:
    """Milliseconds per guest, method and phase; medians and the bleak/bumble ratios."""
    started = time.perf_counter()
    bench = await open_bench()
    pairings = Pairings()
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        g: {m: {p: [] for p in PHASES} for m in METHODS} for g in GUESTS
    }
    try:
        for guest in GUESTS:  # a first pairing each, so that resume has a prekey
            links = await connect(bench, guest)
            await pairings.run(guest, "pin", *links)
            await hang_up(*links)
        for run in range(settings.warmup + settings.repeat):
            for method in METHODS:
                for guest in GUESTS if run % 2 == 0 else GUESTS[::-1]:
                    t0 = time.perf_counter()
                    guest_link, host_link = await connect(bench, guest)
                    t1 = time.perf_counter()
                    await pairings.run(guest, method, guest_link, host_link)
                    t2 = time.perf_counter()
                    await hang_up(guest_link, host_link)
                    if run >= settings.warmup:
                        samples[guest][method]["pair"].append((t2 - t1) * 1e3)
                        samples[guest][method]["join"].append((t2 - t0) * 1e3)
        mtu = {g: (await _mtu(bench, g)) for g in GUESTS}
        goodput = await measure_goodput(bench, pairings, settings)
    finally:
        await bench.close()
    rows: dict[str, Any] = {}
    for method in METHODS:
        row: dict[str, Any] = {}
        for phase in PHASES:
            ms = {g: summary(samples[g][method][phase]) for g in GUESTS}
            row[phase] = {
                "ms": ms,
                "bleak_vs_bumble": ms["bleak"]["median"] / ms["bumble"]["median"],
            }
        rows[method] = row
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        "link_mtu": mtu,
        "methods": rows,
        "goodput": goodput,
        "goals": [
            *(report(f"{m} pair: bleak / bumble", rows[m]["pair"]["bleak_vs_bumble"],
                     BLEAK_GOAL) for m in METHODS),
            report("file goodput to bleak / bumble raw notify", goodput["secure_vs_raw"],
                   GOODPUT_GOAL, at_most=False),
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


# -- goodput to the bleak guest ----------------------------------------------------------------


async def raw_notify(bench: Bench, guest_link: Any, host_link: Any, data: bytes,
                     *, paced: bool = False) -> float:
    """bumble alone on the sending side: MTU-sized notifications, no pairkit code; ``paced``:
    each once the host's ACL queue holds at most two controller buffers (HCI flow control)."""
    device = bench.host.device
    characteristic = tx_characteristic(device)
    connection = host_link.connection
    mtu = plain_notify_size(connection)
    queue = connection.data_packet_queue
    loop = asyncio.get_running_loop()

    async def room() -> None:
        while queue is not None and queue.pending > 2 * queue.max_in_flight:
            flow: asyncio.Future[None] = loop.create_future()

            def on_flow(flow: asyncio.Future[None] = flow) -> None:
                if not flow.done():
                    flow.set_result(None)

            queue.on("flow", on_flow)
            try:
                await asyncio.wait_for(flow, 30)
            finally:
                queue.remove_listener("flow", on_flow)

    async def send() -> None:
        for i in range(0, len(data), mtu):
            if paced:
                await room()
            await device.notify_subscriber(connection, characteristic, data[i:i + mtu])

    return await timed_transfer(send, lambda: drain(guest_link, len(data)), len(data))


async def file_transfer(guest: SecureLink, host: SecureLink, data: bytes) -> float:
    """The file service's Chunk messages, host to guest, over the secure link."""

    step = chunk_size(host, len(data))

    async def send() -> None:
        for offset in range(0, len(data), step):
            await host.send(Chunk(offset, data[offset:offset + step]).encode())

    async def receive() -> int:
        got = 0
        while got < len(data):
            got += len(decode(await guest.recv(), Chunk).data)
        return got

    return await timed_transfer(send, receive, len(data))


async def _quiet(pacer: Any) -> None:
    """Until the host's pace has relaxed: every run starts from the same connection state."""
    async with asyncio.timeout(30):
        while not (pacer.idle and pacer.want is pacer.applied is Speed.RELAXED):
            await asyncio.sleep(0.02)


async def measure_goodput(bench: Bench, pairings: Pairings, settings: Settings) -> dict[str, Any]:
    """MB/s of bumble's raw notify and of a file transfer, alternating on one bleak link."""
    data = os.urandom(settings.goodput_bytes)
    guest_link, host_link = await connect(bench, "bleak")
    samples: dict[str, list[float]] = {"raw": [], "raw_paced": [], "secure": []}
    cpu: dict[str, list[float]] = {path: [] for path in samples}
    pace: dict[str, Any] = {}
    try:
        await pairings.run("bleak", "pin", guest_link, host_link)
        session = pairings.last
        guest = SecureLink(guest_link, session[0], timeout=60)
        host = SecureLink(host_link, session[1], timeout=60)
        await asyncio.gather(confirm(guest, first=False), confirm(host, first=True))
        pacer = host_link.pacer
        central = next(iter(bench.guests["bleak"].adapter.device.connections.values()))
        for run in range(settings.goodput_runs):
            order = ("raw", "raw_paced", "secure")
            order = order if run % 2 == 0 else order[::-1]
            for path in order:
                if pacer is not None:
                    await _quiet(pacer)
                cpu0 = time.process_time()
                if path != "secure":
                    spent = await raw_notify(bench, guest_link, host_link, data,
                                             paced=path == "raw_paced")
                else:
                    spent = await file_transfer(guest, host, data)
                    if not pace and pacer is not None:
                        phy = await central.get_phy()
                        pace = {
                            "interval_ms": central.parameters.connection_interval,
                            "phy": int(phy.tx_phy),
                            "refused": sorted(pacer.stats.refused),
                        }
                cpu[path].append((time.process_time() - cpu0) / (len(data) / (1 << 20)))
                samples[path].append(len(data) / spent / 1e6)
    finally:
        await hang_up(guest_link, host_link)
    mb_s = {path: summary(v) for path, v in samples.items()}
    ratios = [secure / max(raw, paced)
              for secure, raw, paced in zip(samples["secure"], samples["raw"],
                                            samples["raw_paced"], strict=True)]
    return {
        "bytes": len(data),
        "runs": settings.goodput_runs,
        "mtu": guest_link.mtu,
        "mb_s": mb_s,
        "secure_vs_raw_runs": ratios,
        "secure_vs_raw": statistics.median(ratios),
        "pace_during_transfer": pace,
        #: CPU seconds per MiB of this process (both devices), which other jobs move less
        "cpu_s_per_mib": {path: summary(v) for path, v in cpu.items()},
    }


async def _mtu(bench: Bench, guest: str) -> int:
    guest_link, host_link = await connect(bench, guest)
    mtu = int(guest_link.mtu)
    await hang_up(guest_link, host_link)
    return mtu


def machine_info() -> dict[str, Any]:
    return {
        "nproc": nproc(),
        "python": platform.python_version(),
        "bumble": getattr(bumble, "__version__", "?"),
        "bleak": _version("bleak", bleak),
        "platform": platform.platform(),
    }


def _version(name: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return getattr(module, "__version__", "?")


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    out = [
        f"pairkit guest on bleak vs on bumble, {result['date']}: nproc {m['nproc']}, Python "
        f"{m['python']}, bumble {m['bumble']}, bleak {m['bleak']}",
        f"one host, one virtual radio, GATT link MTU {result['link_mtu']['bumble']} (bumble) / "
        f"{result['link_mtu']['bleak']} (bleak); {s['repeat']} runs per row, alternating",
        "ms: median (q1-q3); pair = the exchange on an open link, join = connect + pair",
        "",
        f"{'method':<9}{'phase':<6}{'bumble ms':>22}{'bleak ms':>22}{'bleak/bumble':>14}",
    ]
    for method, row in result["methods"].items():
        for phase in PHASES:
            cell = row[phase]
            text = [
                f"{cell['ms'][g]['median']:>7.2f} ({cell['ms'][g]['q1']:.2f}-"
                f"{cell['ms'][g]['q3']:.2f})"
                for g in GUESTS
            ]
            out.append(
                f"{method:<9}{phase:<6}{text[0]:>22}{text[1]:>22}{cell['bleak_vs_bumble']:>14.2f}"
            )
    g = result["goodput"]
    mb = g["mb_s"]
    pace = g["pace_during_transfer"]
    out += [
        "",
        f"goodput to the bleak guest, one GATT link (MTU {g['mtu']}), {g['bytes']} bytes per "
        f"run, {g['runs']} runs alternating; MB/s median (q1-q3)",
        *(f"  {label:<28}{mb[path]['median']:6.2f} ({mb[path]['q1']:.2f}-{mb[path]['q3']:.2f})"
          for path, label in (("raw", "bumble raw notify, queued"),
                              ("raw_paced", "bumble raw notify, paced"),
                              ("secure", "file over SecureLink"))),
        f"  secure / the faster raw of each run: median {g['secure_vs_raw']:.2f} (runs: "
        f"{' '.join(f'{r:.2f}' for r in g['secure_vs_raw_runs'])})",
        "  CPU s per MiB (both devices, one process; other jobs move it less): "
        + ", ".join(f"{path} {g['cpu_s_per_mib'][path]['median']:.2f}"
                    for path in ("raw", "raw_paced", "secure")),
        f"  during the transfer the central had: interval {pace.get('interval_ms')} ms, PHY "
        f"{'2M' if pace.get('phy') == 2 else '1M'}, refused {pace.get('refused') or 'nothing'}",
    ]
    out += ["", *render_goals(result["goals"]), f"total time {result['seconds']} s"]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pairkit's guest on bleak beside its guest on bumble, same virtual link.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="one run of everything")
    parser.add_argument(
        "--repeat", type=positive, default=None, help=f"runs per row (default {DEFAULT.repeat})"
    )
    parser.add_argument(
        "--goodput-runs", type=positive, default=None,
        help=f"goodput runs per path (default {DEFAULT.goodput_runs})",
    )
    parser.add_argument(
        "--goodput-bytes", type=positive, default=None,
        help=f"bytes per goodput run (default {DEFAULT.goodput_bytes})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # bumble logs the teardown races of virtual controllers; they are not results.
    logging.getLogger("bumble").setLevel(logging.CRITICAL)
    settings = QUICK if args.quick else DEFAULT
    if args.repeat is not None:
        settings = dataclasses.replace(settings, repeat=args.repeat)
    if args.goodput_runs is not None:
        settings = dataclasses.replace(settings, goodput_runs=args.goodput_runs)
    if args.goodput_bytes is not None:
        settings = dataclasses.replace(settings, goodput_bytes=args.goodput_bytes)
    result = asyncio.run(measure(settings))
    show(result, render, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
