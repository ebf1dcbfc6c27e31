"""Smoke test of bench/ble.py, bench/transfer.py and bench/ble_bleak.py: each runs with --quick,
and their books hold.

No timing is asserted (machines are noisy; the benches report ratios for people to read).  What is
checked is what would make the figures meaningless if it rotted: every method, SMP mode and path
still completes, the byte counts add up the way the bench's docstring says they do, the ratios
are the ratios of the medians printed, and the output has the shape bench/RESULTS.md describes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import ble as ble_bench
from bench import ble_bleak as bleak_bench
from bench import transfer as transfer_bench
from bench.common import check_goals, render_goals
from pairkit.transports.bumble import BumbleConfig

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    result["stderr"] = proc.stderr
    return result


@pytest.fixture(scope="module")
def ble() -> dict[str, Any]:
    return _run("ble.py", "--quick", "--json")


@pytest.fixture(scope="module")
def transfer() -> dict[str, Any]:
    return _run("transfer.py", "--quick", "--json")


def test_ble_runs_every_section(ble: dict[str, Any]) -> None:
    assert ble["command"] == ".venv/bin/python bench/ble.py --quick --json"
    assert ble["acl_bytes"] == 251
    assert {"nproc", "cpu", "python", "bumble"} <= set(ble["machine"])
    assert ble["hello_ms"]["n"] == ble_bench.QUICK.hello_reps and ble["hello_ms"]["median"] > 0
    assert set(ble["smp"]) == set(ble_bench.SMP_MODES)
    for row in ble["smp"].values():
        assert row["ms"]["median"] > 0
        # Counted while pair() ran: at least the 9 SMP PDUs of LE Secure Connections.
        assert row["l2cap_pdus"] >= 9 and row["air_bytes"] > row["l2cap_bytes"]
    # Passkey entry repeats confirm/random for each of the passkey's 20 bits.
    assert ble["smp"]["passkey"]["l2cap_pdus"] > 4 * 20
    assert set(ble["pairing"]) == set(ble["goodput"]) == {"l2cap", "gatt"}
    # The links' messages fill their 251-byte ACL packets (transports/ble/fill.py): 495 bytes at
    # ATT MTU 517, 2,002 on a channel of MTU and MPS 2,048; the goodput reference writes a plain
    # application's chunks: the ATT MTU less 3, the channel's MTU.
    assert ble["pairing"]["gatt"]["mtu"] == ble["goodput"]["gatt"]["mtu"] == 495
    assert ble["pairing"]["l2cap"]["mtu"] == ble["goodput"]["l2cap"]["mtu"] == 2002
    assert ble["goodput"]["gatt"]["plain_size"] == 512
    assert ble["goodput"]["l2cap"]["plain_size"] == BumbleConfig().l2cap_mtu == 2048


def test_ble_pairing_rows_and_ratios(ble: dict[str, Any]) -> None:
    jw = ble["smp"]["just-works"]["ms"]["median"]
    numeric = ble["smp"]["numeric"]["ms"]["median"]
    passkey = ble["smp"]["passkey"]["ms"]["median"]
    for block in ble["pairing"].values():
        assert list(block["methods"]) == [*ble_bench.METHODS, *ble_bench.CLOUD_ROWS]
        for row in block["methods"].values():
            assert row["ms"]["median"] > 0
            assert row["vs_smp_just_works"] == pytest.approx(row["ms"]["median"] / jw)
            assert row["vs_smp_numeric"] == pytest.approx(row["ms"]["median"] / numeric)
            assert row["vs_smp_passkey"] == pytest.approx(row["ms"]["median"] / passkey)


def test_ble_goal_lines(ble: dict[str, Any]) -> None:
    # Issue 13: pin vs passkey, compare vs numeric, qr and resume vs Just Works, on each link,
    # and the secure channel's goodput vs bumble alone, each as figure, goal and met.
    check_goals(ble["goals"])
    by_name = {g["name"]: g for g in ble["goals"]}
    # A goal's figure is the median of the rounds' own ratios (the method's time over its SMP
    # reference's in the same round, timed beside it, one of each per round), on the wall
    # clock or the CPU clock, whichever is higher.
    reps = ble["settings"]["pair_reps"]

    def paired(method: list[float], reference: list[float]) -> float:
        return statistics.median(m / r for m, r in zip(method, reference, strict=True))

    for name, mode, goal in ble_bench.PAIRING_GOALS:
        for kind in ble_bench.LINKS:
            line = by_name[f"{name} over {kind} / SMP {mode} (paired rounds, worse clock)"]
            row, reference = ble["pairing"][kind]["methods"][name], ble["smp"][mode]
            assert len(row["rounds"]) == len(reference["rounds"]) == reps
            assert len(row["cpu_rounds"]) == len(reference["cpu_rounds"]) == reps
            assert line["figure"] == pytest.approx(max(
                paired(row["rounds"], reference["rounds"]),
                paired(row["cpu_rounds"], reference["cpu_rounds"])))
            assert (line["goal"], line["bound"]) == (goal, "<=")
    for kind in ble_bench.LINKS:
        g = ble["goodput"][kind]
        line = by_name[f"secure goodput over {kind} / bumble alone (wall, paired rounds)"]
        assert line["figure"] == g["secure_vs_bumble"]
        assert (line["goal"], line["bound"]) == (0.95, ">=")
        line = by_name[f"secure goodput over {kind} / bumble alone (CPU, paired rounds)"]
        assert line["figure"] == g["secure_vs_bumble_cpu"]
        assert (line["goal"], line["bound"]) == (0.95, ">=")
    assert len(ble["goals"]) == 2 * len(ble_bench.PAIRING_GOALS) + 2 * len(ble_bench.LINKS)
    assert "\n".join(render_goals(ble["goals"])) in ble_bench.render(ble)


def test_bumble_logs_no_errors(ble: dict[str, Any]) -> None:
    # The benches hang up one end first (bench.common.hang_up): no crossing LL terminations,
    # so bumble's controller logs no "Cannot find a connection" errors.
    assert "Cannot find a connection" not in ble["stderr"]
    assert "ERROR" not in ble["stderr"]


def test_ble_bytes_on_air_add_up(ble: dict[str, Any]) -> None:
    # The flights of pairing/methods.py; a pairkit message fits one PDU at MTU 512 or more.
    flights = {"pin": 4, "qr": 2, "compare": 6, "clear": 4, "resume": 2, "kk": 2, "kk-stale": 4,
               "cloud-member": 4, "cloud-join": 4}
    # But kk's Offer, padded to one length (506 bytes framed, docs/protocol.md §8; atk23 F1),
    # is over the 495 bytes the GATT link sends at once to fill 251-byte ACL packets
    # (transports/ble/fill.py): it goes as two writes there.
    split = {("gatt", "kk"): 1, ("gatt", "kk-stale"): 1}
    # Per PDU: the L2CAP header (4), then ATT's opcode and handle (3) or the SDU length (2).
    header = {"gatt": 4 + 3, "l2cap": 4 + 2}
    for kind, block in ble["pairing"].items():
        for name, row in block["methods"].items():
            assert row["link_messages"] == flights[name] + split.get((kind, name), 0), (
                kind, name)
            assert row["l2cap_pdus"] >= row["link_messages"], (kind, name)
            if row["l2cap_pdus"] == row["link_messages"]:
                assert row["l2cap_bytes"] == row["link_bytes"] + header[kind] * row["l2cap_pdus"]
            per_packet = 10 + (4 if name == "clear" else 0)  # only 'clear' runs encrypted
            assert row["air_bytes"] >= row["l2cap_bytes"] + per_packet * row["l2cap_pdus"]
    # The same messages over both links: only the headers differ (and a CBOR integer or two).
    for name in flights:
        assert (ble["pairing"]["gatt"]["methods"][name]["link_bytes"]
                == pytest.approx(ble["pairing"]["l2cap"]["methods"][name]["link_bytes"], abs=4))


def test_ble_goodput_paths_and_ratios(ble: dict[str, Any]) -> None:
    # Every path runs once per round; the goal figures are medians of the rounds' own ratios
    # (secure / bumble of the same round), on the wall clock and on the CPU clock.
    reps = ble["settings"]["bulk_reps"]
    for block in ble["goodput"].values():
        wall, cpu = block["rounds"]["wall_mb_s"], block["rounds"]["cpu_mb_s"]
        for samples, table in ((wall, block["mb_s"]), (cpu, block["mb_cpu_s"])):
            assert set(samples) == set(table) == set(ble_bench.GOODPUT_PATHS) == {
                "bumble", "sized", "link", "secure"}
            assert all(len(v) == reps and min(v) > 0 for v in samples.values())
            assert all(table[p]["median"] == statistics.median(samples[p]) for p in samples)

        def paired(samples: dict[str, list[float]], a: str, b: str) -> float:
            return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

        assert block["secure_vs_link"] == pytest.approx(paired(wall, "secure", "link"))
        assert block["secure_vs_bumble"] == pytest.approx(paired(wall, "secure", "bumble"))
        assert block["secure_vs_bumble_cpu"] == pytest.approx(paired(cpu, "secure", "bumble"))
        assert block["secure_vs_sized_rounds"]["median"] == pytest.approx(
            paired(wall, "secure", "sized"))
        assert block["secure_vs_sized_cpu_rounds"]["median"] == pytest.approx(
            paired(cpu, "secure", "sized"))


@pytest.mark.parametrize("kind", ["gatt", "l2cap"])
def test_ble_goodput_paths_write_their_sizes(ble: dict[str, Any], kind: str) -> None:
    # What each path sent on the radio (the bench's untimed pass): the reference ('bumble') in
    # a plain application's chunks, one PDU per notification (its 3-byte ATT header and the
    # 4-byte L2CAP header), or per K-frame of the channel's MPS (an SDU of the channel's MTU and
    # its 2-byte length: two K-frames); 'sized' exactly what pairkit's link sends ('link');
    # those fill every ACL packet but the last.
    total, acl = ble["settings"]["bulk_bytes"], ble["acl_bytes"]
    g = ble["goodput"][kind]
    air = g["on_air"]
    assert set(air) == set(ble_bench.GOODPUT_PATHS)
    plain, size = g["plain_size"], g["mtu"]
    sdus = -(-total // plain)
    if kind == "gatt":
        assert air["bumble"]["pdus"] == sdus
        assert air["bumble"]["largest_pdu"] == plain + 3 + 4
        assert air["bumble"]["l2cap_bytes"] == total + 7 * sdus
        assert air["sized"]["largest_pdu"] == size + 3 + 4
    else:
        mps = BumbleConfig().l2cap_mps
        assert air["bumble"]["pdus"] == sdus * -(-(plain + 2) // mps)
        assert air["bumble"]["largest_pdu"] == min(plain + 2, mps) + 4
        assert air["bumble"]["l2cap_bytes"] == total + 2 * sdus + 4 * air["bumble"]["pdus"]
        assert air["sized"]["largest_pdu"] == size + 2 + 4
    assert air["sized"] == air["link"]
    assert air["sized"]["largest_pdu"] % acl == 0
    assert air["sized"]["acl_packets"] <= -(-air["sized"]["l2cap_bytes"] // acl) + 1
    assert air["bumble"]["acl_packets"] > air["sized"]["acl_packets"]
    assert all(row["acl_packets"] >= -(-row["l2cap_bytes"] // acl) for row in air.values())
    assert ble_bench.ACL_LINE in ble_bench.render(ble)


def test_ble_table_renders(ble: dict[str, Any]) -> None:
    text = ble_bench.render(ble)
    for word in (*ble_bench.METHODS, *ble_bench.CLOUD_ROWS, *ble_bench.SMP_MODES, "Hello",
                 "Goodput", "secure/link", "/SMP-JW", "air B", "bumble sized",
                 *(f"sceptic's reference, no goal: secure over {kind}" for kind in ble_bench.LINKS),
                 *(f"the goal's figure over {kind}, secure / bumble alone"
                   for kind in ble_bench.LINKS)):
        assert word in text


def test_transfer_runs_every_path(transfer: dict[str, Any]) -> None:
    assert transfer["command"] == ".venv/bin/python bench/transfer.py --quick --json"
    assert transfer["settings"] == {"size": transfer_bench.QUICK.size, "repeat": 1}
    assert set(transfer["links"]) == {"l2cap", "gatt"}
    for row in transfer["links"].values():
        g = row["mb_s"]
        assert set(g) == set(transfer_bench.PATHS)
        assert all(v["median"] > 0 for v in g.values())
        assert row["get_vs_link"] == pytest.approx(g["get"]["median"] / g["link"]["median"])
    text = transfer_bench.render(transfer)
    assert "get/link" in text and "l2cap" in text and "gatt" in text
    check_goals(transfer["goals"])
    assert {g["name"] for g in transfer["goals"]} == {
        f"{what} over {kind} / bumble alone" for kind in ("l2cap", "gatt")
        for what in ("secure", "get")}
    assert "\n".join(render_goals(transfer["goals"])) in text


def test_air_estimate_cuts_pdus_into_link_layer_packets() -> None:
    assert ble_bench.air_estimate([251], encrypted=False) == 251 + 10
    assert ble_bench.air_estimate([252], encrypted=False) == 252 + 2 * 10
    assert ble_bench.air_estimate([100, 600], encrypted=True) == 700 + (1 + 3) * 14


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        ble_bench.parse_args(["--repeat", "0"])
    with pytest.raises(SystemExit):
        transfer_bench.parse_args(["--size", "-1"])


async def test_the_bleak_bench_runs_and_reports_ratios() -> None:
    result = await bleak_bench.measure(bleak_bench.QUICK)
    # bumble's host link fills its ACL packets (transports/ble/fill.py); bleak's guest writes
    # what bleak allows
    assert result["link_mtu"] == {"bumble": 495, "bleak": 512}
    assert set(result["methods"]) == {"pin", "qr", "compare", "resume"}
    for row in result["methods"].values():
        for phase in ("pair", "join"):
            cell = row[phase]
            assert cell["bleak_vs_bumble"] > 0
            assert cell["ms"]["bleak"]["median"] > 0 and cell["ms"]["bumble"]["n"] == 1
            if phase == "join":  # connecting is part of joining
                assert cell["ms"]["bleak"]["median"] > row["pair"]["ms"]["bleak"]["median"]
    assert "bleak/bumble" in bleak_bench.render(result)
    check_goals(result["goals"])
    assert [g["figure"] for g in result["goals"]] == [
        *(result["methods"][m]["pair"]["bleak_vs_bumble"]
          for m in ("pin", "qr", "compare", "resume")),
        result["goodput"]["secure_vs_raw"]]
    # Issue 15 item 7: file goodput to the bleak guest against bumble's raw notify, same link.
    goodput = result["goodput"]
    assert goodput["bytes"] == bleak_bench.QUICK.goodput_bytes and goodput["mtu"] == 512
    mb_s = goodput["mb_s"]
    assert set(mb_s) == {"raw", "raw_paced", "secure"} == set(goodput["cpu_s_per_mib"])
    assert all(row["median"] > 0 for row in goodput["cpu_s_per_mib"].values())
    assert {row["n"] for row in mb_s.values()} == {bleak_bench.QUICK.goodput_runs}
    # quick: one run, so the medians are the samples and the ratio is that run's
    assert goodput["secure_vs_raw_runs"] == [goodput["secure_vs_raw"]]
    assert goodput["secure_vs_raw"] == mb_s["secure"]["median"] / max(
        mb_s["raw"]["median"], mb_s["raw_paced"]["median"])
    goal = result["goals"][-1]
    assert (goal["bound"], goal["goal"]) == (">=", bleak_bench.GOODPUT_GOAL)
    # The transfer asked for the fast pace and the central (bumble) agreed.
    assert goodput["pace_during_transfer"] == {"interval_ms": 15.0, "phy": 2, "refused": []}
    assert "bumble raw notify" in bleak_bench.render(result)


def test_ble_reports_discovery_at_each_advertising_rate(ble: dict[str, Any]) -> None:
    """Issue 15 item 2: the discovery latency line at each rate (figure, goal, met)."""
    rows = ble["discovery_ms"]
    assert set(rows) == {"fast", "slow"}
    assert rows["fast"]["interval_ms"] == 20.0 and rows["slow"]["interval_ms"] == 1000.0
    assert rows["fast"]["goal_ms"] == ble_bench.DISCOVERY_FAST_GOAL_MS
    assert rows["fast"]["met"] == (rows["fast"]["median"] <= rows["fast"]["goal_ms"])
    for row in rows.values():
        assert row["median"] > 0 and row["vs_interval"] == row["median"] / row["interval_ms"]


def test_each_goal_is_timed_beside_its_reference() -> None:
    # Every goal's method sits in the block of the SMP mode it is read against, and every
    # method and SMP mode is timed once a round.
    blocks = dict(ble_bench.BLOCKS)
    for name, mode, _goal in ble_bench.PAIRING_GOALS:
        assert name in blocks[mode]
    timed = [n for _mode, names in ble_bench.BLOCKS for n in names]
    assert sorted(timed) == sorted((*ble_bench.METHODS, *ble_bench.CLOUD_ROWS))
    assert sorted(m for m in blocks if m is not None) == sorted(ble_bench.SMP_MODES)
    forward, backward = ble_bench.round_order(False), ble_bench.round_order(True)
    assert backward == forward[::-1]
    assert ble_bench.round_order(True, True) == ble_bench.round_order(False, True)[::-1]
    for _name, mode, _goal in ble_bench.PAIRING_GOALS:
        at = forward.index((mode, None))
        assert forward[at + 1:at + 1 + len(blocks[mode]) * len(ble_bench.LINKS)] == [
            (n, kind) for n in blocks[mode] for kind in ble_bench.LINKS]


def test_no_link_is_always_timed_next_to_its_reference() -> None:
    # Over a cycle of rounds, each link's pairing of a goal's method is the one timed right
    # after its SMP reference, and the one right before it, equally often: what the reference
    # leaves behind (or the pairing leaves for it) falls on both links alike.
    cycle = [ble_bench.round_order(*ble_bench.round_shape(i)) for i in range(4)]
    for _name, mode, _goal in ble_bench.PAIRING_GOALS:
        after = {kind: 0 for kind in ble_bench.LINKS}
        before = {kind: 0 for kind in ble_bench.LINKS}
        for order in cycle:
            at = order.index((mode, None))
            if at + 1 < len(order) and order[at + 1][1] is not None:
                after[order[at + 1][1]] += 1
            if at > 0 and order[at - 1][1] is not None:
                before[order[at - 1][1]] += 1
        assert len(set(after.values())) == 1 and len(set(before.values())) == 1, (mode, after,
                                                                                  before)
        assert sum(after.values()) > 0 and sum(before.values()) > 0


def test_the_rounds_right_after_a_reference() -> None:
    # The caveat line's rounds: those in which the goal's pairing is the item timed right
    # after its own SMP reference; by round_shape, one round in four for the first method of
    # each reference's block, on each link, and never for the others (qr follows resume).
    d = ble_bench.DEFAULT
    assert d.pair_reps % 4 == 0
    blocks = dict(ble_bench.BLOCKS)
    for name, mode, _goal in ble_bench.PAIRING_GOALS:
        for kind in ble_bench.LINKS:
            cold = ble_bench.after_reference(d.warmup, d.pair_reps, name, kind, mode)
            assert len(cold) == (d.pair_reps // 4 if blocks[mode][0] == name else 0)
            for j in range(d.pair_reps):
                order = ble_bench.round_order(*ble_bench.round_shape(d.warmup + 1 + j))
                at = order.index((mode, None))
                assert (j in cold) == (order[at + 1:at + 2] == [(name, kind)])
