"""Where a pairing's time goes, layer by layer (issue 13): the profile behind bench/RESULTS.md.

``bench/handshake.py`` gives each method's time against its floor; this script says which layer
the time above the floor is spent in.  It runs pairings of one method exactly as that bench's
loopback series does (``MethodBench``: prekeys made before, both sides driven by
``pairkit.driver.drive`` over a loopback link) or sans-I/O, and sorts the time into layers by
the file each piece of code lives in:

=========================  ===================================================================
crypto (native)            the primitives, inside ``cryptography``'s Rust/OpenSSL, ``_hashlib``
                           or Python's ``pow`` (CPace's field work)
noise (py)                 pairing/noise.py's Python, and the ``hmac`` module's
cpace (py)                 pairing/cpace.py's Python
wire/cbor                  pairing/wire.py, cbor.py, messages.py, dataclass ``__init__``, enums
machines                   pairing/methods/, machine.py, negotiation.py, keyschedule.py, crypto.py
cryptography wrappers      ``cryptography``'s Python layer (key loading, HKDF objects)
driver+pipe                runtime/driver.py (MessagePipe, transcript hashing) and framing.py
asyncio                    the event loop, tasks, futures, timeouts, the selector
loopback link              transports/loopback.py and queued.py
bench harness              the bench's own set-up inside the timed region
=========================  ===================================================================

Two views:

* ``--cprofile`` (the default): cProfile's own time per layer and the calls per pairing.  It
  adds a fixed cost per Python call, so it overstates layers made of many small calls; read
  the call counts, and the shares only roughly.
* ``--spy FILE``: the same layers from a sampling profiler's stacks (py-spy ``--native``,
  ``-f raw``), which does not slow the code down; native frames under a primitive are counted
  as crypto.  Record it with ``--run`` (pairings only, nothing printed)::

      py-spy record --native -r 1000 -f raw -o clear.raw -- \\
          .venv/bin/python bench/layers.py --method clear --runs 500 --run
      .venv/bin/python bench/layers.py --spy clear.raw

Set-up outside the timed region of ``bench/handshake.py`` (making prekeys, the first pairing,
checking the result) is left out of both views.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import positive  # noqa: E402
from bench.handshake import _YES, METHODS, PRIMITIVES, MethodBench  # noqa: E402
from pairkit.driver import drive  # noqa: E402
from pairkit.transports.loopback import DEFAULT_MTU, loopback_pair  # noqa: E402

LAYERS = (
    "crypto (native)",
    "noise (py)",
    "cpace (py)",
    "wire/cbor",
    "machines",
    "cryptography wrappers",
    "driver+pipe",
    "asyncio",
    "loopback link",
    "bench harness",
    "other",
)

#: path fragment -> layer, first match wins
_BY_PATH = (
    ("pairing/noise.py", "noise (py)"),  # with its generated messages, <pairing/noise.py: ...>
    ("noise.py: ", "noise (py)"),  # the same as py-spy names them (the file's last part)
    ("hmac.py", "noise (py)"),
    ("pairing/cpace.py", "cpace (py)"),
    ("pairing/wire.py", "wire/cbor"),  # with the codecs it generates, <pairing/wire.py: ...>
    ("wire.py: ", "wire/cbor"),  # the same as py-spy names them (the file's last part)
    ("pairing/cbor.py", "wire/cbor"),
    ("pairing/messages.py", "wire/cbor"),
    ("enum.py", "wire/cbor"),
    ("<string>", "wire/cbor"),  # dataclass __init__ (frozen: one __setattr__ per field)
    ("pairing/methods/", "machines"),
    ("pairing/machine.py", "machines"),
    ("pairing/negotiation.py", "machines"),
    ("pairing/keyschedule.py", "machines"),
    ("pairing/crypto.py", "machines"),
    ("pairing/qr.py", "machines"),
    ("cryptography/", "cryptography wrappers"),
    ("runtime/driver.py", "driver+pipe"),
    ("pairing/framing.py", "driver+pipe"),
    ("transports/loopback.py", "loopback link"),
    ("transports/queued.py", "loopback link"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("_weakrefset.py", "asyncio"),
    ("bench/", "bench harness"),
)
#: native frames below the last Python frame that make a sample a primitive's
_NATIVE_CRYPTO = ("libcrypto", "_rust", "_hashopenssl", "hmac_singleshot", "EVP_", "long_pow")
#: frames of the set-up outside the timed region
_SETUP = ("MethodBench.prepare", "MethodBench.finish", "MethodBench.__init__", "PrekeyPool.fill",
          "LinkPair.aclose")


def layer_of_path(path: str) -> str:
    """The layer of the code in ``path`` (a file name as a profiler gives it)."""
    for fragment, layer in _BY_PATH:
        if fragment in path:
            return layer
    return "other"


def _primitive_builtin(name: str) -> bool:
    return any(a in name and b in name for p in PRIMITIVES for a, b in p.profile)


# -- running pairings ---------------------------------------------------------------------


async def _loopback(bench: MethodBench, method: str, runs: int, profile: cProfile.Profile | None,
                    mtu: int) -> None:
    """``runs`` pairings as ``MethodBench.loopback_once`` times them, profiled in that region."""
    loop = asyncio.get_running_loop()
    for _ in range(runs):
        run = bench.prepare(method)
        pair = loopback_pair(mtu=mtu, encrypted=run.encrypted)
        if profile is not None:
            profile.enable()
        now = loop.time()
        guest, host = bench.make(run, now)
        guest.start(now)
        await asyncio.gather(drive(guest, pair.a, delegate=_YES), drive(host, pair.b,
                                                                       delegate=_YES))
        if profile is not None:
            profile.disable()
        await pair.aclose()
        bench.finish(run, guest, host)


def run_pairings(method: str, runs: int, *, sansio: bool, profile: cProfile.Profile | None,
                 mtu: int = DEFAULT_MTU) -> None:
    bench = MethodBench()
    gc.collect()
    gc.disable()  # as in bench/handshake.py's series
    try:
        if sansio:
            for _ in range(runs):
                bench.sansio_once(method, profile)
        else:
            asyncio.run(_loopback(bench, method, runs, profile, mtu))
    finally:
        gc.enable()


# -- the two views ------------------------------------------------------------------------


def cprofile_layers(profile: cProfile.Profile, runs: int) -> dict[str, tuple[float, float]]:
    """layer -> (microseconds of own time per pairing, calls per pairing), under cProfile."""
    stats: dict = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    time_by: Counter[str] = Counter()
    calls_by: Counter[str] = Counter()
    for (filename, _line, name), (_cc, ncalls, tottime, _ct, _callers) in stats.items():
        if filename == "~":
            # cProfile times built-ins apart from their caller: the primitives are crypto,
            # the rest (len, isinstance, dict methods...) are "other"
            layer = "crypto (native)" if _primitive_builtin(name) else "other"
        else:
            layer = layer_of_path(filename)
        time_by[layer] += tottime
        calls_by[layer] += ncalls
    return {k: (time_by[k] * 1e6 / runs, calls_by[k] / runs) for k in LAYERS if k in time_by}


def spy_layers(lines: Iterable[str]) -> Counter[str]:
    """layer -> samples, from py-spy's raw (collapsed) stacks: ``frame;frame;... count``."""
    out: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(s in f for f in frames for s in _SETUP):
            continue
        if not any(("asyncio/runners.py" in f or "sansio_once" in f) for f in frames):
            continue  # interpreter start-up, imports
        python = [i for i, f in enumerate(frames) if ".py:" in f or "<string>" in f]
        if not python:
            out["other"] += int(count)
            continue
        last = python[-1]
        below = frames[last + 1:]
        if any(c in f for f in below for c in _NATIVE_CRYPTO):
            out["crypto (native)"] += int(count)
        else:
            out[layer_of_path(frames[last].rsplit("(", 1)[-1])] += int(count)
    return out


def render_cprofile(method: str, mode: str, runs: int, layers: dict[str, tuple[float, float]]
                    ) -> str:
    total = sum(t for t, _ in layers.values()) or 1.0
    lines = [f"{method} {mode}, {runs} pairings under cProfile (own time per layer; cProfile "
             "adds a cost per call):",
             f"  {'layer':24s} {'us/pairing':>10s} {'share':>6s} {'calls/pairing':>14s}"]
    for name, (us, calls) in sorted(layers.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"  {name:24s} {us:10.1f} {100 * us / total:5.1f}% {calls:14.1f}")
    return "\n".join(lines)


def render_spy(samples: Counter[str]) -> str:
    total = sum(samples.values()) or 1
    lines = [f"{total} samples in the timed region", f"  {'layer':24s} {'share':>6s}"]
    for name in LAYERS:
        if samples[name]:
            lines.append(f"  {name:24s} {100 * samples[name] / total:5.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Where a pairing's time goes, by layer.")
    parser.add_argument("--method", choices=METHODS, default="clear")
    parser.add_argument("--runs", type=positive, default=200)
    parser.add_argument("--sansio", action="store_true", help="no link, no driver")
    parser.add_argument("--run", action="store_true",
                        help="only run the pairings (to record with a sampling profiler)")
    parser.add_argument("--spy", metavar="FILE", help="read py-spy raw stacks from FILE")
    args = parser.parse_args(argv)
    if args.spy:
        with open(args.spy, encoding="utf-8", errors="replace") as f:
            print(render_spy(spy_layers(f)))
        return 0
    if args.run:
        run_pairings(args.method, args.runs, sansio=args.sansio, profile=None)
        return 0
    profile = cProfile.Profile()
    run_pairings(args.method, args.runs, sansio=args.sansio, profile=profile)
    mode = "sans-I/O" if args.sansio else "loopback"
    print(render_cprofile(args.method, mode, args.runs, cprofile_layers(profile, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
