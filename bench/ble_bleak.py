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

Usage::

    .venv/bin/python bench/ble_bleak.py            # the table (about 10 s on 2 cores)
    .venv/bin/python bench/ble_bleak.py --json     # one JSON object
    .venv/bin/python bench/ble_bleak.py --quick    # one run of everything (smoke test)
    .venv/bin/python bench/ble_bleak.py --repeat 50
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
import platform
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
    hang_up,
    nproc,
    positive,
    render_goals,
    report,
    show,
    summary,
)

#: the bench's own goal (issue 13 names none): a pairing costs the guest on pairkit's bleak
#: backend at most this much more than the guest on bumble, on the same link
BLEAK_GOAL = 1.25
from pairkit.driver import drive  # noqa: E402
from pairkit.pairing.hello import Hello  # noqa: E402
from pairkit.pairing.methods import (  # noqa: E402
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Session,
)
from pairkit.pairing.negotiation import ALL_CAPS, Method  # noqa: E402
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


DEFAULT = Settings(repeat=20, warmup=2)
QUICK = Settings(repeat=1, warmup=0)


_YES = Yes()


class Pairings:
    """One host identity and one guest identity per guest transport, pairing again and again."""

    def __init__(self) -> None:
        self.config = PairingConfig()
        self.host_id = LocalIdentity.generate("Paul's phone")
        self.guest_ids = {g: LocalIdentity.generate(f"George's {g}") for g in GUESTS}
        self.host_known: dict[bytes, KnownPeer] = {}
        self.guest_known: dict[str, KnownPeer | None] = dict.fromkeys(GUESTS)
        self.state = HostState(known_peer=self.host_known.get)

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
        "goals": [report(f"{m} pair: bleak / bumble", rows[m]["pair"]["bleak_vs_bumble"],
                         BLEAK_GOAL) for m in METHODS],
        "seconds": round(time.perf_counter() - started, 1),
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # bumble logs the teardown races of virtual controllers; they are not results.
    logging.getLogger("bumble").setLevel(logging.CRITICAL)
    settings = QUICK if args.quick else DEFAULT
    if args.repeat is not None:
        settings = dataclasses.replace(settings, repeat=args.repeat)
    result = asyncio.run(measure(settings))
    show(result, render, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
