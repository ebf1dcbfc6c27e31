"""Two devices in separate processes talking BLE through ``pairkit radio``, as README.md shows.

Four kinds of process, each a real ``pairkit`` command with its own ``PAIRKIT_HOME``: the radio
(``pairkit radio --ports 0 0``, which names the ports it bound), Paul's host on the first port,
and George's ``discover``, ``join``, ``ls`` and ``get``, one after another on the second.  Every
wait has a deadline (tests/cli_helpers.py) and every process is killed in teardown.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .cli_helpers import (
    Device,
    HostProcess,
    make_devices,
    radio_process,
    use_bytecode_cache,
)

PIN = "482913"
NAMES = {"paul": "Paul's phone", "george": "George's phone"}


@pytest.fixture
async def radio() -> AsyncIterator[list[str]]:
    """``pairkit radio --ports 0 0`` in its own process; the two transport names it prints."""
    async with radio_process(2) as names:
        yield names


@pytest.fixture
async def devices(tmp_path: Path) -> dict[str, Device]:
    use_bytecode_cache(tmp_path / "pycache")
    return await asyncio.to_thread(make_devices, tmp_path, NAMES)  # pairkit init, for real


async def test_host_and_guest_processes_pair_list_and_fetch_over_the_radio(
    radio: list[str], devices: dict[str, Device], tmp_path: Path
) -> None:
    paul_radio, george_radio = radio
    paul, george = devices["paul"], devices["george"]
    share = tmp_path / "videos"
    share.mkdir()
    video = share / "holiday.mp4"
    video.write_bytes(os.urandom(200_000))
    (share / "notes.txt").write_text("bring the camera\n")

    host = await HostProcess.start(
        paul.home, "-t", paul_radio, "--visible", "60", "--yes", "--pin", PIN,
        "--share", str(share), "--json",
    )
    try:
        await host.wait_for("broadcasting a hello; visible to strangers for 60 s")
        address = host.address
        assert ":" in address and len(address) == 17, address  # a BLE address, not tcp

        found = (await george.run("discover", "-t", george_radio, "--timeout", "1", "--json"))
        devices_heard = found.ok().json()["devices"]
        (entry,) = [d for d in devices_heard if d["address"] == address]
        assert entry["visible"] is True and entry["cloud"] is None
        assert {"pin", "resume"} <= set(entry["methods"])
        # the hello response: a short connection, and the stranger knows the host's name
        assert entry["name"] == "Paul's phone"
        await host.wait_for("asked who this host is")

        joined = await george.join(address, "-t", george_radio, "-m", "pin", "--pin", PIN,
                                   "--json")
        mine = joined.ok().json()
        theirs = await host.next_result()
        assert mine["ok"] and mine["method"] == "pin" and mine["peer"]["name"] == "Paul's phone"
        assert theirs["peer"]["name"] == "George's phone" and theirs["role"] == "guest"
        assert mine["session"] == theirs["session"]

        # Later commands find Paul's phone by name (its radio and address were stored).
        listed = (await george.run("ls", "Paul's phone", "--json")).ok().json()
        assert {(f["name"], f["size"]) for f in listed["files"]} == {
            ("holiday.mp4", 200_000), ("notes.txt", 17),
        }
        out = tmp_path / "fetched.mp4"
        got = (await george.run("get", "Paul's phone", "holiday.mp4", "-o", str(out),
                                "--json")).ok().json()
        assert got["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(
            video.read_bytes()).digest()
        assert got["resumed_from"] == 0
        # ls and get resumed: Paul's host printed one line per session, each by resume.
        later = [await host.next_result(), await host.next_result()]
        assert [r["method"] for r in later] == ["resume", "resume"]
        peers = await george.peers()
        assert [p["transport"] for p in peers] == [george_radio]
    finally:
        await host.stop()
    assert "Traceback" not in host.stderr


async def test_a_stranger_joins_a_visible_host_by_the_name_it_gives(
    radio: list[str], devices: dict[str, Device]
) -> None:
    """The webinos George picks Paul's phone by name: ``join NAME -t RADIO`` asks the visible
    hosts nearby who they are, joins the one of that name, and holds it to the name once the
    pairing proved who it is.  A name nobody nearby gives ends as not found (exit 6)."""
    paul_radio, george_radio = radio
    paul, george = devices["paul"], devices["george"]
    host = await HostProcess.start(
        paul.home, "-t", paul_radio, "--visible", "60", "--yes", "--pin", PIN, "--json",
    )
    try:
        await host.wait_for("broadcasting a hello")
        missing = await george.join("Paul's TV", "-t", george_radio, "--pin", PIN)
        assert missing.rc == 6, missing.err
        assert "no host called \"Paul's TV\" is open to new devices nearby" in missing.err
        assert "heard: \"Paul's phone\"" in missing.err
        joined = await george.join("Paul's phone", "-t", george_radio, "-m", "pin",
                                   "--pin", PIN, "--json")
        mine = joined.ok().json()
        assert mine["peer"]["name"] == "Paul's phone"
        assert (await host.next_result())["peer"]["name"] == "George's phone"
    finally:
        await host.stop()
    assert "Traceback" not in host.stderr and "error: guest" not in host.stderr
