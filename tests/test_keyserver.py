"""``pairkit.keyserver`` as a server of its own: ``python -m pairkit.keyserver`` serves devices as a
real process, refuses bad configurations with exit code 2, and neither it nor :func:`serve`
needs click or the CLI."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from pairkit.keyserver.certs import init_server_dir, read_token
from pairkit.keyserver.server import (
    GC_YOUNG_THRESHOLD,
    Listening,
    ServeConfig,
    TtpServer,
    serve,
    tune_gc,
)
from pairkit.pairing.errors import RefusedError
from pairkit.pairing.ttp import IntentRole
from pairkit.ttp import enrol, request_key
from tests.cli_helpers import ROOT, assert_no_traceback, cli_env
from tests.ttp_harness import FAST, SERVE_STANDALONE, ServeProcess, identity


def run_standalone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVE_STANDALONE, *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=cli_env(None), check=False)


async def test_the_standalone_server_enrols_and_pairs_two_devices(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "srv")
    server = await ServeProcess.start(d.root, command=SERVE_STANDALONE)
    try:
        assert server.ready["ok"] and server.ready["devices"] == 0
        assert server.ready["ca"] == str(d.ca_cert)
        paul, george = identity("paul's laptop"), identity("george's phone")
        first = await enrol(server.address, d.ca_cert, paul)
        await enrol(server.address, d.ca_cert, george)
        assert not first.updated
        ctx = b"\x44" * 32
        ka, kb = await asyncio.gather(
            request_key(server.address, d.ca_cert, paul, peer_id=george.device_id,
                        context=ctx, role=IntentRole.HOST, wait=5),
            request_key(server.address, d.ca_cert, george, peer_id=paul.device_id,
                        context=ctx, role=IntentRole.GUEST, wait=5),
        )
    finally:
        log = await server.stop()
    assert ka.sk == kb.sk
    assert ka.peer.device_id == george.device_id and kb.peer.device_id == paul.device_id
    assert f"pairkit key server listening on {server.address} (TLS 1.3)" in log
    assert "enrolment is open" in log
    assert "enrolled paul's laptop" in log and "enrolled george's phone" in log
    assert ("matched paul's laptop (host) with george's phone: key delivered" in log
            or "matched george's phone (guest) with paul's laptop: key delivered" in log)
    assert log.rstrip().endswith("key server stopping")
    assert ka.sk.hex() not in log


async def test_closed_enrolment_and_quiet_logging(tmp_path: Path) -> None:
    """The token file ``init_server_dir(enrol_token=True)`` writes closes enrolment; ``-q``
    hides each device served but not the failures, nor the start and stop lines."""
    d = init_server_dir(tmp_path / "srv", enrol_token=True)
    token = read_token(d.token)
    server = await ServeProcess.start(d.root, "--quiet", command=SERVE_STANDALONE)
    try:
        with pytest.raises(RefusedError, match="token"):
            await enrol(server.address, d.ca_cert, identity("stranger"))
        done = await enrol(server.address, d.ca_cert, identity("invited"), token=token)
    finally:
        log = await server.stop()
    assert not done.updated
    assert f"needs the token in {d.token}" in log
    assert "enrolled invited" not in log  # quiet
    assert "error:" in log and "token" in log  # the refusal is still logged
    assert token.decode() not in log
    assert "pairkit key server listening on" in log and "key server stopping" in log


@pytest.mark.parametrize(("args", "text"), [
    (("--dir", "{empty}"), "is not a key server directory"),
    (("--dir", "{srv}", "--listen", "nonsense"), "is not HOST:PORT"),
    (("--dir", "{srv}", "--max-wait", "0"), "max_wait from 1 to 300"),
    (("--dir", "{srv}", "--listen", "{busy}"), "cannot listen on"),
])
def test_bad_configurations_exit_2(tmp_path: Path, args: tuple[str, ...], text: str) -> None:
    d = init_server_dir(tmp_path / "srv")
    (tmp_path / "empty").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        values = {"empty": str(tmp_path / "empty"), "srv": str(d.root),
                  "busy": f"127.0.0.1:{port}"}
        done = run_standalone(*(a.format(**values) for a in args))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and text in done.stderr
    assert_no_traceback("python -m pairkit.keyserver", done.stderr)
    assert done.stdout == ""


def test_help_runs_without_click() -> None:
    done = run_standalone("--help")
    assert done.returncode == 0, done.stderr
    for word in ("--dir", "--listen", "--max-connections", "--quiet", "--json",
                 "pairkit ttp init"):
        assert word in done.stdout
    code = ("import sys, pairkit.keyserver.__main__, pairkit.keyserver.server;"
            "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('pairkit.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=ROOT).stdout
    assert out.strip() == "[]"


async def test_serve_in_process_until_stopped(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """:func:`serve` reports through ``ready`` and the ``pairkit.keyserver`` loggers, and returns
    once ``stop`` is set, its port closed."""
    d = init_server_dir(tmp_path / "srv")
    async with TtpServer(d.root, limits=FAST) as earlier:  # one device enrolled before
        await enrol(await earlier.start("127.0.0.1", 0), d.ca_cert, identity("already here"))
    stop, listening = asyncio.Event(), asyncio.Event()
    seen: list[Listening] = []

    def ready(up: Listening) -> None:
        seen.append(up)
        listening.set()

    config = ServeConfig(d.root, host="127.0.0.1", port=0, limits=FAST)
    caplog.set_level(logging.INFO, logger="pairkit.keyserver")
    task = asyncio.create_task(serve(config, ready=ready, stop=stop))
    await asyncio.wait_for(listening.wait(), 10)
    (up,) = seen
    assert up.devices == 1 and up.enrol_token is None and up.ca_cert == d.ca_cert
    await enrol(up.address, d.ca_cert, identity("newcomer"))
    stop.set()
    await asyncio.wait_for(task, 10)
    host, port = up.address.rsplit(":", 1)
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("pairkit.keyserver", "key server stopping") in lines
    assert any(name == "pairkit.keyserver.connections" and text.startswith("enrolled newcomer")
               for name, text in lines)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_served_process_collector_still_collects_cycles_and_is_given_back() -> None:
    """tune_gc (once listening) freezes what start-up made and raises the young threshold; a
    reference cycle made afterwards is still collected once that many objects are allocated,
    without anyone calling gc.collect; undo gives the old threshold back and unfreezes."""
    before = gc.get_threshold()
    undo = tune_gc()
    try:
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None  # only the collector frees it
        kept = [[] for _ in range(3 * GC_YOUNG_THRESHOLD)]
        assert gone() is None
        del kept
    finally:
        undo()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
