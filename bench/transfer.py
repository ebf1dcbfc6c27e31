"""File-transfer goodput over BLE (bumble virtual controllers) beside raw throughput, same link.

Issue 5 ("Personal cloud"): a guest fetches a shared file with :func:`cli.service.get_file` from
a host running :func:`cli.service.serve_guest` (as ``pairkit get`` and ``pairkit host --share``
do), over a :class:`~pairkit.securelink.SecureLink` on one BLE link, GATT and L2CAP, with
251-byte ACL packets.  On the same link and interleaved run by run, the references of
``bench/ble.py``: bumble alone on the sending side (``bumble``), pairkit's link without crypto
(``link``), and the secure channel without the file service (``secure``).  The figure to read is
``get/link``: what the secure channel, the file protocol (16 KiB chunks, each acknowledged by
nothing but the channel), the writes to disk and the SHA-256 checks cost, as a share of what the
link itself can carry.

``get`` is timed from the request to the verified file (the host hashes the file before it
answers, the guest hashes what it stored at the end); the guest is a member, so nobody is asked.

Usage::

    .venv/bin/python bench/transfer.py            # 2 MiB, 4 runs per path (about 40 s)
    .venv/bin/python bench/transfer.py --json
    .venv/bin/python bench/transfer.py --quick    # the smoke test
    .venv/bin/python bench/transfer.py --size 4194304 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/transfer.py` finds the packages
    sys.path.insert(0, str(ROOT))

from bench.ble import (  # noqa: E402
    LINKS,
    Pair,
    bumble_raw,
    link_raw,
    machine_info,
    open_pair,
    secure,
    secure_pair,
)
from bench.common import command_line, positive, render_goals, report, show, summary  # noqa: E402
from pairkit.files import get_file, say_bye, serve_guest  # noqa: E402
from pairkit.pairing.cloud import Role  # noqa: E402
from pairkit.pairing.service import AllowRequest, GrantPolicy, Scope  # noqa: E402
from pairkit.securelink import SecureLink  # noqa: E402
from pairkit.transports.ble.virtual import VIRTUAL_ACL_LENGTH  # noqa: E402

PATHS = ("bumble", "link", "secure", "get")
#: issue 13: goodput at least this share of bumble alone on the same link
GOODPUT_GOAL = 0.95


@dataclasses.dataclass(frozen=True)
class Settings:
    size: int
    repeat: int


DEFAULT = Settings(size=2 << 20, repeat=4)
QUICK = Settings(size=128 << 10, repeat=1)


async def _nobody(request: AllowRequest) -> Scope:
    raise RuntimeError(f"a member's request prompted the owner: {request}")


async def fetch(
    guest: SecureLink, host: SecureLink, share: Path, name: str, dest: Path, digest: str
) -> float:
    """One ``get_file`` of ``name`` from a fresh ``serve_guest``; seconds to the verified file."""
    dest.unlink(missing_ok=True)
    serving = asyncio.ensure_future(serve_guest(
        host, peer_name="George's phone", policy=GrantPolicy(Role.MEMBER), share=share,
        ask=_nobody, idle=60,
    ))
    try:
        t0 = time.perf_counter()
        got = await asyncio.wait_for(get_file(guest, name, dest, timeout=60), 180)
        spent = time.perf_counter() - t0
        await say_bye(guest)
        stats = await asyncio.wait_for(serving, 10)
    finally:
        serving.cancel()
    if got.sha256 != digest or got.resumed_from != 0 or stats.files != 1:
        raise RuntimeError("the fetched file is not the shared one")
    return spent


async def measure(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    pairs: dict[str, Pair] = {kind: await open_pair(kind) for kind in LINKS}
    mtus = {kind: pair.guest_link.mtu for kind, pair in pairs.items()}  # (none once closed)
    samples = {kind: {p: [] for p in PATHS} for kind in LINKS}
    data = os.urandom(settings.size)
    digest = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="pairkit-transfer-") as tmp_name:
        tmp = Path(tmp_name)
        share = tmp / "share"
        share.mkdir()
        (share / "film.mp4").write_bytes(data)
        try:
            slinks = {kind: await secure_pair(p) for kind, p in pairs.items()}
            for _ in range(settings.repeat):
                for kind, pair in pairs.items():
                    guest, host = slinks[kind]
                    got = samples[kind]
                    # wall-clock seconds (bench/ble.py reports the CPU clock as well)
                    wall = (await bumble_raw(pair, data))[0]
                    got["bumble"].append(settings.size / wall / 1e6)
                    wall = (await link_raw(pair, data))[0]
                    got["link"].append(settings.size / wall / 1e6)
                    wall = (await secure(guest, host, data))[0]
                    got["secure"].append(settings.size / wall / 1e6)
                    seconds = await fetch(guest, host, share, "film.mp4", tmp / "got.mp4",
                                          digest)
                    got["get"].append(settings.size / seconds / 1e6)
        finally:
            for pair in pairs.values():
                await pair.close()
    links: dict[str, Any] = {}
    for kind in LINKS:
        mb_s = {p: summary(v) for p, v in samples[kind].items()}
        links[kind] = {
            "mtu": mtus[kind],
            "mb_s": mb_s,
            "get_vs_link": mb_s["get"]["median"] / mb_s["link"]["median"],
            "get_vs_bumble": mb_s["get"]["median"] / mb_s["bumble"]["median"],
            "get_vs_secure": mb_s["get"]["median"] / mb_s["secure"]["median"],
            "secure_vs_bumble": mb_s["secure"]["median"] / mb_s["bumble"]["median"],
        }
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        "acl_bytes": VIRTUAL_ACL_LENGTH,
        "links": links,
        "goals": [
            report(f"{what} over {kind} / bumble alone", links[kind][key], GOODPUT_GOAL,
                   at_most=False)
            for kind in LINKS
            for what, key in (("secure", "secure_vs_bumble"), ("get", "get_vs_bumble"))
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["settings"]
    out = [
        f"pairkit file-transfer bench, {result['date']}: nproc {m['nproc']}, {m['cpu']}, Python "
        f"{m['python']}, bumble {m['bumble']}; virtual controllers, {result['acl_bytes']}-byte ACL",
        f"{s['size']} bytes host -> guest, {s['repeat']} runs per path, interleaved; MB/s, "
        "median (q1-q3)",
        f"{'link':<7}{'MTU':>5}" + "".join(f"{p:>19}" for p in PATHS)
        + f"{'get/link':>10}{'get/bumble':>12}{'get/secure':>12}",
    ]
    for kind, row in result["links"].items():
        cells = "".join(
            f"{row['mb_s'][p]['median']:>7.2f} ({row['mb_s'][p]['q1']:.2f}-"
            f"{row['mb_s'][p]['q3']:.2f})".rjust(19)
            for p in PATHS
        )
        out.append(f"{kind:<7}{row['mtu']:>5}{cells}{row['get_vs_link']:>10.2f}"
                   f"{row['get_vs_bumble']:>12.2f}{row['get_vs_secure']:>12.2f}")
    out += render_goals(result["goals"])
    out.append(f"total time {result['seconds']} s")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="File-transfer goodput over BLE beside raw throughput on the same link.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a small file, one run (smoke test)")
    parser.add_argument("--size", type=positive, default=None,
                        help=f"file size in bytes (default {DEFAULT.size})")
    parser.add_argument("--repeat", type=positive, default=None,
                        help=f"runs per path (default {DEFAULT.repeat})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    if args.size is not None:
        settings = dataclasses.replace(settings, size=args.size)
    if args.repeat is not None:
        settings = dataclasses.replace(settings, repeat=args.repeat)
    result = asyncio.run(measure(settings))
    result["command"] = command_line("transfer.py", argv)
    show(result, render, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
