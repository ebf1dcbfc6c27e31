"""Attack 2 (rule 2, grants are one-way), with the CLI over TCP between processes.

George joins Paul's host and Paul grants him guest or member access.  Later Paul's device joins
George's host.  What Paul granted George is George's standing in Paul's cloud; it must never
give Paul anything on George's device: George's host must ask its own owner (here: no terminal
and no --yes, so the owner's answer is "refuse") and Paul must end with an error, nothing
stored on either side.
"""

from __future__ import annotations

import pytest

from tests.attack_harness import (
    answer_prompt,
    clouds_of,
    host_with_terminal,
    owned_cloud,
)
from tests.cli_helpers import Device, HostProcess, Lab

PIN = "482913"
PIN2 = "730529"


async def george_gets(lab: Lab, role: str) -> tuple[Device, Device]:
    """Paul hosts, George joins by PIN and gets ``role`` from Paul (and joins Paul's cloud)."""
    paul, george = lab.device("paul"), lab.device("george")
    if role == "guest":
        host = await lab.host(paul, "-m", "pin", "-m", "resume", "--pin", PIN, "--yes", "--json")
        (await george.join(host.target, "-m", "pin", "--pin", PIN, "--yes", "--json")).ok()
    else:
        host, master = await host_with_terminal(lab, paul, "-m", "pin", "-m", "resume",
                                                "--pin", PIN, "--json")
        joining = lab_task(george.join(host.target, "-m", "pin", "--pin", PIN, "--yes", "--json"))
        await answer_prompt(host, master, r"asks to join", "m\n")
        (await joining).ok()
    result = await host.next_result()
    assert result["role"] == role, result
    await host.stop()
    if role == "member":
        cloud_id, _ = owned_cloud(paul)
        assert clouds_of(george)[cloud_id][0] == "member", "George did not join Paul's cloud"
    return paul, george


def lab_task(coro: object) -> object:
    import asyncio

    return asyncio.ensure_future(coro)  # type: ignore[arg-type]


async def george_hosts(lab: Lab, george: Device) -> HostProcess:
    # No --yes and no terminal: George's owner refuses whoever asks.
    return await lab.host(george, "-m", "pin", "-m", "resume", "--pin", PIN2, "--json")


@pytest.mark.parametrize("role", ["guest", "member"])
async def test_paul_is_asked_by_georges_host_when_he_pairs_anew(lab: Lab, role: str) -> None:
    paul, george = await george_gets(lab, role)
    before = await george.peers()
    ghost = await george_hosts(lab, george)
    mark = ghost.mark()
    joined = await paul.join(ghost.target, "-m", "pin", "--pin", PIN2, "--json")
    assert joined.rc != 0, f"Paul got into George's host without George's owner:\n{joined}"
    assert joined.out == ""
    await ghost.wait_for(r"Paul's phone asks to join", since=mark)
    await ghost.wait_for(r"^error: guest ", since=mark)
    assert ghost.results == []
    assert await george.peers() == before
    (rec,) = await george.peers()
    assert rec["granted"] is None, rec  # George never granted Paul anything


@pytest.mark.parametrize("role", ["guest", "member"])
async def test_paul_gets_nothing_on_georges_host_by_resuming(lab: Lab, role: str) -> None:
    paul, george = await george_gets(lab, role)
    before = await george.peers()
    ghost = await george_hosts(lab, george)
    mark = ghost.mark()
    joined = await paul.join("George's phone", "-t", ghost.target, "--json")
    assert joined.rc != 0, (
        f"Paul resumed into George's host as {joined.out.strip()} with no grant from George's "
        f"owner:\n{joined}"
    )
    await ghost.wait_for(r"^error: guest ", since=mark)
    assert ghost.results == []
    assert await george.peers() == before


async def test_a_third_device_paul_made_a_member_gets_nothing_on_georges_host(lab: Lab) -> None:
    """Paul makes George and Ringo members of Paul's cloud.  Ringo then joins George's host:
    George's owner never granted Ringo anything, so George's host must ask (and, here, refuse);
    a member grant decided by Paul is not George's owner's grant (rule 2)."""
    paul, george = await george_gets(lab, "member")
    ringo = lab.device("ringo")
    host, master = await host_with_terminal(lab, paul, "-m", "pin", "--pin", PIN, "--json")
    joining = lab_task(ringo.join(host.target, "-m", "pin", "--pin", PIN, "--yes", "--json"))
    await answer_prompt(host, master, r"asks to join", "m\n")
    (await joining).ok()
    await host.stop()
    ghost = await george_hosts(lab, george)
    mark = ghost.mark()
    joined = await ringo.join(ghost.target, "-m", "pin", "--pin", PIN2, "--json")
    assert joined.rc != 0, (
        f"Ringo got into George's host with a grant George's owner never gave:\n{joined}"
    )
    await ghost.wait_for(r"Ringo's tablet asks to join", since=mark)
    assert ghost.results == []
    assert [p["name"] for p in await george.peers()] == ["Paul's phone"]
