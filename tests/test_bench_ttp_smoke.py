"""Smoke test of bench/ttp.py: it runs in --quick mode, and its bookkeeping holds.

No timing is asserted (machines are noisy; the bench reports ratios for people to read).  What
is checked: a real key server process serves every delivery, the floor does the cryptography it
claims (two TLS handshakes and two proofs per delivery), and the output has the shape
bench/RESULTS.md describes.
"""

from __future__ import annotations

import importlib.util
import json
import ssl
import sys
from pathlib import Path
from types import ModuleType

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
    for lv in result["levels"]:
        assert lv["deliveries"] >= 4 and lv["deliveries"] % lv["pairs"] == 0
        assert lv["per_second"] > 0 and lv["ratio"] > 0
        assert abs(lv["us_per_delivery"] * lv["deliveries"] / 1e6 - lv["seconds"]) < 1e-6
    for lv in result["levels"]:
        # The fair floor: nproc processes at once, measured again before each level.
        assert lv["floor"]["workers"] >= 1 and lv["floor"]["deliveries"] >= 1
        assert lv["of_floor"] == pytest.approx(lv["per_second"] / lv["floor"]["per_second"])
        # The CPU of both sides is counted: at least the floor's cryptography per delivery.
        assert lv["cpu_us_per_delivery"] > 0 and lv["floor"]["cpu_us_per_delivery"] > 0
    check_goals(result["goals"])
    top = result["levels"][-1]
    assert [g["figure"] for g in result["goals"]] == [
        top["of_floor"], pytest.approx(1 / top["cpu_vs_floor"])]
    assert all(g["bound"] == ">=" and g["goal"] == 0.5 for g in result["goals"])
    for lv in result["levels"]:
        # The floor rate is measured before and after the level; the mean is the one used.
        fl = lv["floor"]
        assert fl["per_second"] == pytest.approx(
            (fl["before"]["per_second"] + fl["after"]["per_second"]) / 2)
        assert fl["deliveries"] == fl["before"]["deliveries"] + fl["after"]["deliveries"]
        assert len(lv["load"]) == 2
    for lv in result["levels"]:
        # Where the threads spent the level (Linux): shares of its wall time; a thread runs and
        # waits for a core for at most all of it, and the server's store thread did its calls.
        if not sys.platform.startswith("linux"):
            break
        server, devices = lv["threads"]["server"], lv["threads"]["devices"]
        for main in (server["main"], devices["main"]):
            assert main["running"] > 0 and main["waiting"] >= 0
            assert main["running"] + main["waiting"] <= 1.05
        assert server["others"]["running"] > 0
    floor = result["floor"]
    assert floor["us"] > 0 and floor["tls_handshake_us"] > 0
    text = bench.render(result)
    assert "deliveries/s" in text and "ratio" in text and "floor" in text
    assert sys.platform != "linux" or "waiting for a core" in text
    assert "\n".join(render_goals(result["goals"])) in text


def test_the_floor_does_real_tls_13(bench: ModuleType, tmp_path: Path) -> None:
    from pairkit.keyserver.certs import ServerDir, init_server_dir
    from pairkit.keyserver.server import server_context
    from pairkit.ttp import client_context

    d: ServerDir = init_server_dir(tmp_path / "srv")
    pair = bench.TlsPair(server_context(d), client_context(d.ca_cert))
    assert pair.client.version() == "TLSv1.3"
    assert pair.send(True, b"ping") == b"ping"
    assert pair.send(False, b"pong") == b"pong"
    other = init_server_dir(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        bench.TlsPair(server_context(other), client_context(d.ca_cert))


def test_the_floor_counts_no_encoding(bench: ModuleType, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor carries messages encoded beforehand: encoding is not cryptography."""
    import os

    from pairkit.keyserver.certs import init_server_dir
    from pairkit.keyserver.server import server_context
    from pairkit.keyserver.store import Sealer
    from pairkit.pairing import wire
    from pairkit.pairing.methods import LocalIdentity
    from pairkit.ttp import client_context

    d = init_server_dir(tmp_path / "srv")
    devices = (LocalIdentity.generate("a"), LocalIdentity.generate("b"))
    messages = bench.FloorMessages.of(devices)
    assert all(len(m) > 0 for m in (*messages.hello, messages.challenge,
                                    *messages.proof_and_intent, *messages.delivery))

    def no_encoding(self: object) -> bytes:
        raise AssertionError("the floor encoded a message")

    monkeypatch.setattr(wire.Message, "encode", no_encoding)
    bench.floor_delivery(server_context(d), client_context(d.ca_cert), devices, b"c" * 32,
                         Sealer(os.urandom(32)), messages)
    with pytest.raises(AssertionError, match="encoded"):
        bench.floor_delivery(server_context(d), client_context(d.ca_cert), devices, b"c" * 32,
                             Sealer(os.urandom(32)))


def test_rounds_cover_the_deliveries(bench: ModuleType) -> None:
    s = bench.Settings(pairs=(1, 10, 100), deliveries=300)
    assert [s.rounds(p) * p for p in s.pairs] == [300, 300, 300]
    assert bench.Settings(pairs=(7,), deliveries=10).rounds(7) == 2
    with pytest.raises(ValueError):
        bench.Settings(pairs=())
