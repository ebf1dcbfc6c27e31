"""Smoke test of bench/ttp.py: it runs in --quick mode, and its bookkeeping holds.

No timing is asserted (machines are noisy; the bench reports ratios for people to read).  What
is checked: a real key server process serves every delivery, the floor does the cryptography it
claims (two TLS handshakes and two proofs per delivery), and the output has the shape
bench/RESULTS.md describes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import ssl
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench.common import check_goals, render_goals

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "ttp.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ttp", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_json_shape(bench: ModuleType) -> None:
    lines: list[str] = []
    assert bench.main(["--quick", "--json"], out=lines.append) == 0
    result = json.loads(lines[0])
    assert [lv["pairs"] for lv in result["levels"]] == [1, 2]
    blocks = result["settings"]["blocks"]
    assert blocks == 2
    for lv in result["levels"]:
        # Two kinds of server blocks: the devices in nproc processes (the goal's, session 14)
        # and in this one process (a shape line), each as many.
        workers = lv["device_processes"]
        assert workers == lv["floor"]["workers"] >= 1
        one = lv["one_process"]
        assert len(lv["blocks"]) == len(one["blocks"]) == blocks
        assert all(b["device_processes"] == workers for b in lv["blocks"])
        assert all(b["device_processes"] == 1 for b in one["blocks"])
        for b in lv["blocks"] + one["blocks"]:
            assert b["deliveries"] >= 4 and b["deliveries"] % lv["pairs"] == 0
            assert b["deliveries"] == lv["pairs"] * lv["rounds"]
            assert abs(b["us_per_delivery"] * b["deliveries"] / 1e6 - b["seconds"]) < 1e-6
        assert lv["deliveries"] == sum(b["deliveries"] for b in lv["blocks"])
        assert lv["seconds"] == pytest.approx(sum(b["seconds"] for b in lv["blocks"]))
        assert lv["per_second"] > 0 and lv["ratio"] > 0
    for lv in result["levels"]:
        # Interleaved: F S F S F S F S F, each server block (of either kind) against the mean
        # of its two neighbours.
        floors = lv["floor"]["blocks"]
        both = lv["blocks"] + lv["one_process"]["blocks"]
        assert len(floors) == 2 * blocks + 1
        assert sorted(b["floor_index"] for b in both) == list(range(2 * blocks))
        assert all(f["workers"] >= 1 and f["deliveries"] >= 1 for f in floors)
        for b in both:
            i = b["floor_index"]
            around = floors[i : i + 2]
            assert b["floor_per_second"] == pytest.approx(
                sum(f["per_second"] for f in around) / 2)
            assert b["floor_cpu_us_per_delivery"] == pytest.approx(
                sum(f["cpu_us_per_delivery"] for f in around) / 2)
            assert b["of_floor"] == pytest.approx(b["per_second"] / b["floor_per_second"])
            assert b["cpu_line"] == pytest.approx(
                b["floor_cpu_us_per_delivery"] / b["cpu_us_per_delivery"])
            # The CPU of both sides is counted.
            assert b["cpu_us_per_delivery"] == pytest.approx(
                b["server_cpu_us_per_delivery"] + b["devices_cpu_us_per_delivery"])
            assert b["server_cpu_us_per_delivery"] > 0 and b["devices_cpu_us_per_delivery"] > 0
        # A block is quiet when the other jobs took at most `quiet` of a core in it and in its
        # two floor blocks; the level's figures are the medians over its quiet blocks (over
        # all when none was), with their spread.
        quiet_at = result["settings"]["quiet"]
        for b in both:
            i = b["floor_index"]
            others = [b["others"], *(f["others"] for f in floors[i : i + 2])]
            assert all(x >= 0 for x in others)
            assert b["quiet"] == (max(others) <= quiet_at)
        for kind in (lv, lv["one_process"]):
            quiet = [b for b in kind["blocks"] if b["quiet"]]
            assert kind["quiet_blocks"] == len(quiet)
            for key in ("of_floor", "cpu_line"):
                values = sorted(b[key] for b in quiet or kind["blocks"])
                assert kind[key] == pytest.approx(statistics.median(values))
                assert kind[f"{key}_spread"]["min"] == values[0]
                assert kind[f"{key}_spread"]["max"] == values[-1]
                assert kind[f"{key}_all"] == pytest.approx(
                    statistics.median(b[key] for b in kind["blocks"]))
            n = sum(b["deliveries"] for b in kind["blocks"])
            assert kind["devices_cpu_us_per_delivery"] == pytest.approx(
                sum(b["devices_cpu_us_per_delivery"] * b["deliveries"] for b in kind["blocks"])
                / n)
        assert lv["floor"]["deliveries"] == sum(f["deliveries"] for f in floors)
        assert len(lv["load"]) == 2
    check_goals(result["goals"])
    top = result["levels"][-1]
    assert [g["figure"] for g in result["goals"]] == [top["of_floor"], top["cpu_line"]]
    assert all(g["bound"] == ">=" and g["goal"] == 0.5 for g in result["goals"])
    # A goal line read from no quiet block says so on the line itself.
    assert all(("NO QUIET BLOCK" in g["name"]) == (top["quiet_blocks"] == 0)
               for g in result["goals"])
    for lv in result["levels"]:
        # Where the threads spent each block (Linux): shares of its wall time; a thread runs
        # and waits for a core for at most all of it, and the server's store thread did its
        # calls.
        if not sys.platform.startswith("linux"):
            break
        for b in lv["blocks"] + lv["one_process"]["blocks"]:
            server, devices = b["threads"]["server"], b["threads"]["devices"]
            # (the devices' main threads added up: at most one core each)
            for main, most in ((server["main"], 1), (devices["main"], b["device_processes"])):
                assert main["running"] > 0 and main["waiting"] >= 0
                assert main["running"] + main["waiting"] <= 1.05 * most
            assert server["others"]["running"] > 0
            # The devices' CPU counted is their processes' (not only this one's, which waits
            # while they work): what their threads ran, by the scheduler's account (the same
            # kernel counter as the processes' CPU clocks: 1.00 to 1.02 measured; with one of
            # two workers' CPU dropped the counted share read 0.36 to 0.39, too near 0.5).
            ran = devices["main"]["running"] * b["seconds"]
            assert b["devices_cpu_us_per_delivery"] * b["deliveries"] / 1e6 >= 0.9 * ran
    floor = result["floor"]
    assert floor["us"] > 0 and floor["tls_handshake_us"] > 0
    text = bench.render(result)
    assert "deliveries/s" in text and "ratio" in text and "floor" in text
    assert text.count("    block 1") == len(result["levels"])
    assert text.count("devices in one process (shape, not the goal)") == len(result["levels"])
    assert sys.platform != "linux" or "waiting for a core" in text
    assert "\n".join(render_goals(result["goals"])) in text
    # The machine's state before every server block (session 17): its probes, in no figure.
    for lv in result["levels"]:
        for b in lv["blocks"] + lv["one_process"]["blocks"]:
            p = b["probe"]
            assert p["python"] > 0 and p["c"] > 0
            assert p["python/c"] == pytest.approx(p["python"] / p["c"])
    assert text.count("the machine before each server block") == len(result["levels"])


def test_the_floor_does_real_tls_13(bench: ModuleType, tmp_path: Path) -> None:
    from pairkit.keyserver.certs import ServerDir, init_server_dir

    d: ServerDir = init_server_dir(tmp_path / "srv")
    pair = bench.TlsPair(*bench.floor_contexts(d.root))
    assert pair.client.version() == "TLSv1.3"
    assert pair.send(True, b"ping") == b"ping"
    assert pair.send(False, b"pong") == b"pong"
    other = init_server_dir(tmp_path / "other")
    server_ctx, _ = bench.floor_contexts(other.root)
    _, client_ctx = bench.floor_contexts(d.root)
    with pytest.raises(ssl.SSLCertVerificationError):
        bench.TlsPair(server_ctx, client_ctx)


def test_the_floor_contexts_are_the_servers(bench: ModuleType, tmp_path: Path) -> None:
    """The floor makes its TLS contexts with ``ssl`` alone, set as the key server's and the
    device's are (no tickets, TLS 1.3 only, the same certificate; the CA checked)."""
    from pairkit.keyserver.certs import init_server_dir
    from pairkit.keyserver.server import server_context
    from pairkit.ttp import client_context

    d = init_server_dir(tmp_path / "srv")
    floor_server, floor_client = bench.floor_contexts(d.root)
    real_server, real_client = server_context(d), client_context(d.ca_cert)
    for floor, real in ((floor_server, real_server), (floor_client, real_client)):
        assert floor.minimum_version == real.minimum_version == ssl.TLSVersion.TLSv1_3
        assert floor.num_tickets == real.num_tickets
        assert floor.verify_mode == real.verify_mode
        assert floor.check_hostname == real.check_hostname
        assert floor.options == real.options
        assert floor.get_ca_certs() == real.get_ca_certs()
    # The same certificate and cipher: the floor's server is what a real device connects to.
    mixed = bench.TlsPair(real_server, floor_client)
    pure = bench.TlsPair(floor_server, floor_client)
    assert mixed.server.cipher() == pure.server.cipher()
    assert mixed.client.getpeercert(binary_form=True) == pure.client.getpeercert(
        binary_form=True)


def test_the_floor_proof_is_the_protocols(bench: ModuleType) -> None:
    """The floor's proof of possession, from the primitives alone, is pairkit's."""
    from pairkit.pairing.ttp import auth_proof

    args = {"static": os.urandom(32), "eph": os.urandom(32), "nonce_c": os.urandom(16),
            "nonce_s": os.urandom(16), "cert": os.urandom(32)}
    shared = os.urandom(32)
    assert bench.floor_proof(shared, **args) == auth_proof(shared, **args)
    assert bench.floor_proof(os.urandom(32), **args) != auth_proof(shared, **args)


def test_the_floor_runs_no_pairkit_code(bench: ModuleType, tmp_path: Path) -> None:
    """No pairkit function runs inside a floor delivery (encoding, wrappers, contexts): it is
    the primitives alone."""
    from pairkit.keyserver.certs import init_server_dir

    d = init_server_dir(tmp_path / "srv")
    kit = bench.FloorKit.make(d.root, b"c" * 32)
    called: list[str] = []

    def tracer(frame: Any, event: str, arg: object) -> None:
        module = frame.f_globals.get("__name__", "")
        if event == "call" and (module == "pairkit" or module.startswith("pairkit.")):
            called.append(f"{module}.{frame.f_code.co_name}")

    sys.setprofile(tracer)
    try:
        bench.floor_delivery(kit)
    finally:
        sys.setprofile(None)
    assert called == []


def test_the_floor_counts_no_encoding(bench: ModuleType, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor carries messages encoded beforehand: encoding is not cryptography."""
    from pairkit.keyserver.certs import init_server_dir
    from pairkit.pairing import wire

    d = init_server_dir(tmp_path / "srv")
    kit = bench.FloorKit.make(d.root, b"c" * 32)
    messages = kit.messages
    assert all(len(m) > 0 for m in (*messages.hello, messages.challenge,
                                    *messages.proof_and_intent, *messages.delivery))

    def no_encoding(self: object) -> bytes:
        raise AssertionError("the floor encoded a message")

    monkeypatch.setattr(wire.Message, "encode", no_encoding)
    bench.floor_delivery(kit)
    with pytest.raises(AssertionError, match="encoded"):
        bench.FloorKit.make(d.root, b"c" * 32)


def test_the_floor_pool_runs_blocks(bench: ModuleType, tmp_path: Path) -> None:
    from pairkit.keyserver.certs import init_server_dir

    d = init_server_dir(tmp_path / "srv")
    with bench.FloorPool(d.root, b"c" * 32, 2) as pool:
        blocks = [pool.run(0.05), pool.run(0.05)]
    for block in blocks:
        assert block["workers"] == 2 and block["deliveries"] >= 2
        assert block["per_second"] > 0 and block["cpu_us_per_delivery"] > 0


def test_rounds_cover_the_deliveries(bench: ModuleType) -> None:
    with pytest.raises(ValueError):
        bench.Settings(blocks=5, max_blocks=4)
    s = bench.Settings(pairs=(1, 10, 100), deliveries=300)
    assert [s.rounds(p) * p for p in s.pairs] == [300, 300, 300]
    assert bench.Settings(pairs=(7,), deliveries=10).rounds(7) == 2
    with pytest.raises(ValueError):
        bench.Settings(pairs=())
