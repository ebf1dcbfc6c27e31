"""``python -m pairkit.keyserver``: run the key server on its own (no click, no keystore).

Options mirror ``pairkit ttp serve``; the directory is made by ``pairkit ttp init`` (or
:func:`pairkit.keyserver.certs.init_server_dir`).  Log lines go to stderr; with ``--json`` one
JSON line goes to stdout once it listens.  Exit codes: 0 after SIGINT or SIGTERM, 2 for a
configuration error (bad directory, token or address), 1 for any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pairkit.pairing.errors import ConfigError, PairingError
from pairkit.transports.tcp import parse_host_port

from .server import Limits, Listening, ServeConfig, serve, tune_gc

EXIT_ERROR = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    defaults = Limits()
    p = argparse.ArgumentParser(
        prog="python -m pairkit.keyserver",
        description="Run pairkit's key server (TLS 1.3, SQLite or PostgreSQL) until SIGINT or "
                    "SIGTERM: "
                    "enrolments, keys for method ttp, CPNS registrations.",
        epilog="Make the directory first with: pairkit ttp init --dir DIR",
    )
    p.add_argument("--dir", dest="directory", required=True, type=Path, metavar="DIR",
                   help="the directory 'pairkit ttp init' made")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT",
                   help="address to listen on; port 0 picks a free one (default: %(default)s)")
    p.add_argument("--max-connections", type=int, default=defaults.max_connections, metavar="N",
                   help="connections at once, from everyone (default: %(default)s)")
    p.add_argument("--max-per-client", type=int, default=defaults.max_per_client, metavar="N",
                   help="connections at once from one address (default: %(default)s)")
    p.add_argument("--rate", type=float, default=defaults.rate, metavar="PER_SECOND",
                   help="new connections per second one address may open, burst twice that "
                        "(default: %(default)s)")
    p.add_argument("--max-wait", type=float, default=defaults.max_wait, metavar="SECONDS",
                   help="longest wait in seconds for the other device's intent "
                        "(default: %(default)s)")
    p.add_argument("--db", dest="database", default=None, metavar="postgresql://...",
                   help="use this PostgreSQL database instead of DIR/ttp.sqlite3; any number "
                        "of servers may share it (needs: pip install 'pairkit[postgres]')")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="log only errors, not each device served")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="print one JSON line once listening (for scripts)")
    return p


def config_from(args: argparse.Namespace) -> ServeConfig:
    host, port = parse_host_port(args.listen)
    limits = Limits(
        max_connections=args.max_connections, max_per_client=args.max_per_client,
        rate=args.rate, burst=max(1, int(args.rate * 2)), max_wait=args.max_wait,
    )
    return ServeConfig(Path(args.directory), host=host, port=port, limits=limits,
                       database=args.database)


def listening_json(up: Listening) -> str:
    """The ``--json`` line: the same keys ``pairkit ttp serve --json`` prints."""
    return json.dumps({"ok": True, "listening": up.address, "ca": str(up.ca_cert),
                       "ca_fingerprint": up.ca_fingerprint, "devices": up.devices},
                      sort_keys=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    top = logging.getLogger("pairkit.keyserver")
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    if args.quiet:
        logging.getLogger("pairkit.keyserver.connections").setLevel(logging.ERROR)

    def ready(up: Listening) -> None:
        tune_gc()  # this process only serves: the collector is not given back
        if args.as_json:
            print(listening_json(up), flush=True)

    try:
        asyncio.run(serve(config_from(args), ready=ready))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PairingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
