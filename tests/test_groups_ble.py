"""Group keys and encrypted group broadcasts over BLE: bumble's host stack on virtual controllers.

A group broadcast is pairkit service data in an extended advertisement (it never fits a legacy
one); a scanner that looks for hellos sees it and refuses it cleanly.  The whole demo scenario
(``pairkit demo --scenario groupkeys``) runs here too, on BLE and on the loopback, and its
summary is checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit import groups as G
from pairkit.cli.groupdemo import GroupLab, run_groupkeys_demo, wait_for
from pairkit.pairing.errors import TooLargeError
from pairkit.pairing.groups import ADVERT_OVERHEAD, RetryPolicy
from pairkit.presence import discover
from pairkit.transports.ble.adv import EXTENDED_PAYLOAD_MAX, LEGACY_PAYLOAD_MAX

from .group_adversary import LyingRelay, LyingService


@pytest.fixture(autouse=True)
def _quiet_bumble() -> None:
    logging.getLogger("bumble").setLevel(logging.ERROR)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[GroupLab]:
    lab = GroupLab(tmp_path, transport="bumble:virtual", connect_timeout=2, step_timeout=5)
    yield lab
    await lab.close()


async def test_a_group_broadcast_travels_in_an_extended_advertisement(lab: GroupLab) -> None:
    ctl = await lab.add("controller", extended=True)
    member = await lab.add("member")
    await lab.commission(ctl, member)
    G.pin_controller(member.ks, "doors", ctl.id)  # the member's owner names its controller
    await lab.start_member(member)
    G.create_group(ctl.ks, "doors")
    _, outcomes = await G.add_member(ctl.ks, "doors", "member", reach=lab.reach(ctl))
    assert outcomes[0].ok
    assert ctl.transport.max_payload == EXTENDED_PAYLOAD_MAX == 208
    result = await G.broadcast(ctl.ks, ctl.transport, "doors", b"close all doors",
                               duration=0.4)
    assert result["bytes"] == ADVERT_OVERHEAD + 15 and result["extended"]
    await wait_for(lambda: "close all doors" in member.read(), 3)
    got = member.listener.received[-1]  # type: ignore[union-attr]
    assert (got.group, got.epoch, got.seq) == ("doors", 1, result["seq"])
    assert member.events[-1]["address"] == ctl.address
    # Heard again and again while advertised, read once: repeats are not replays.
    assert member.read().count("close all doors") == 1
    assert not any(e["event"] == "rejected" for e in member.events)


async def test_hello_scanners_refuse_group_broadcasts_and_legacy_has_no_room(
    lab: GroupLab,
) -> None:
    ctl = await lab.add("controller", extended=True)
    legacy = await lab.add("legacy")
    scanner = await lab.add("scanner")
    G.create_group(ctl.ks, "doors")
    G.create_group(legacy.ks, "doors")
    assert legacy.transport.max_payload == LEGACY_PAYLOAD_MAX == 10
    with pytest.raises(TooLargeError, match="0 bytes of command"):
        await G.broadcast(legacy.ks, legacy.transport, "doors", b"", duration=0.1)
    payload, _, _ = G.advert_for(ctl.ks, "doors", b"close", max_payload=208)
    await ctl.transport.start_advertising(payload)
    found, garbage = await discover(scanner.transport, scanner.ks, 0.5)
    await ctl.transport.stop_advertising()
    assert found == [] and garbage >= 1  # heard, and refused by the hello decoder


@pytest.mark.parametrize("transport", ["bumble:virtual", "loopback"])
async def test_the_groupkeys_demo(transport: str, capsys: pytest.CaptureFixture[str]) -> None:
    summary = await run_groupkeys_demo(transport=transport, quiet=transport == "loopback")
    json.dumps(summary)  # the --json summary is plain JSON
    assert summary["ok"] and summary["scenario"] == "groupkeys"
    assert len(summary["devices"]) >= 8  # controller, relay, six members, an eavesdropper
    # One first try per member (a busy machine may lose some: the retries confirm them all).
    assert len(summary["deliveries"]) == 6
    assert {d["via"] for d in summary["deliveries"]} == {None, "relay"}
    # Queued at the relay is not confirmed; every member's own receipt came back after.
    assert {d["state"] for d in summary["deliveries"] if d["via"]} == {"pending"}
    assert all(d["status"] != "confirmed" for d in summary["deliveries"] if d["via"])
    assert summary["confirmed"] == {"fire-sensors": ["sensor-1", "sensor-2"],
                                    "fire-doors": ["door-1", "door-2", "door-3"],
                                    "extinguishers": ["extinguisher-1"]}
    assert summary["relay"] == {"carried": 3, "could_open": False, "keys_held": 0,
                                "queued_at_end": 0}
    reads = {b["group"]: b["read_by"] for b in summary["broadcasts"]}
    assert reads == {"fire-sensors": ["sensor-1", "sensor-2"],
                     "fire-doors": ["door-1", "door-2", "door-3"],
                     "extinguishers": ["extinguisher-1"]}
    assert all(b["extended"] and b["heard_not_read"] == 6 - len(b["read_by"])
               for b in summary["broadcasts"])
    assert summary["attacks"]["door-1"] == ["replay", "not-ours-or-forged"]
    removal = summary["removal"]
    assert removal["epoch"] == 2 and removal["read_by"] == ["door-1"]
    assert removal["door-3_rejected"] == ["wrong-epoch"]
    assert not removal["door-3_read"] and not removal["door-3_read_after"]
    assert summary["catch_up"]["read_by"] == ["door-1", "door-2"]
    assert summary["catch_up"]["confirmed"] == ["door-1", "door-2"]
    err = capsys.readouterr().err
    if transport == "loopback":
        assert err == ""
    else:
        for words in ("Commissioning", "Delivery", "Encrypted broadcasts", "Attacks",
                      "Removal and rekey", "relay: holds an envelope", "none opens"):
            assert words in err
        assert "WARNING" not in err and "Traceback" not in err


@pytest.mark.parametrize("mode", ["forge-self", "drop"])
async def test_over_ble_a_receipt_comes_back_through_the_relay_and_a_liar_confirms_nobody(
    lab: GroupLab, mode: str,
) -> None:
    """Controller -> relay (two radios) -> member, every hop a secure link over BLE: the
    member's signed receipt confirms it; then the relay lies (forges the next receipts with its
    own key, or drops the envelopes) and the member ends unreachable, never confirmed."""
    ctl = await lab.add("controller")
    relay = await lab.add("relay", downlink=True)
    door = await lab.add("door")
    await lab.commission(ctl, relay)
    await lab.commission(ctl, door)
    await lab.commission(door, relay)
    G.pin_controller(door.ks, "doors", ctl.id)  # the door's owner names its controller
    await lab.start_member(door)
    await lab.start_relay(relay, retry=0.1, relay_type=LyingRelay, service_type=LyingService)
    G.create_group(ctl.ks, "doors")
    fast = RetryPolicy(first=0.1, cap=0.5, attempts=30)
    _, outcomes = await G.add_member(ctl.ks, "doors", "door", via="relay", reach=lab.reach(ctl),
                                     policy=fast)
    assert [o.state for o in outcomes] == ["pending"]
    record, outcomes = await G.confirm_all(ctl.ks, "doors", reach=lab.reach(ctl), policy=fast)
    assert [(o.name, o.state, o.status) for o in outcomes] == [
        ("door", "confirmed", "confirmed (receipt through relay)")]

    assert isinstance(relay.relay, LyingRelay)
    relay.relay.mode = mode
    short = RetryPolicy(first=0.1, cap=0.2, attempts=3)
    await G.rekey_group(ctl.ks, "doors", reach=lab.reach(ctl), policy=short)
    record, outcomes = await G.confirm_all(ctl.ks, "doors", reach=lab.reach(ctl), policy=short)
    (m,) = record.members
    assert (m.state(2), m.delivered, m.attempts) == ("unreachable", 1, 3)
    why = "not signed by its member" if mode == "forge-self" else "awaiting the member's receipt"
    assert why in outcomes[0].status
    assert G.held_groups(door.ks)["doors"].epoch == 1
