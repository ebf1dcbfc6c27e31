"""Issue 17, finding 4: the host follows its keystore (docs/security.md, rule 4).

Real processes on Paul's device share one keystore: a running ``pairkit host``, and another
pairkit process that forgets a peer (``pairkit forget``), withdraws a grant, or is a second
host that lets someone in.  What that other process saved counts at the running host's next
decision, and the host's later saves never undo it.

The attacker is George, a guest Paul no longer wants: once forgotten, or once his grant is
withdrawn, he tries to come back with no prompt, by a prekey (``resume``) or by Noise KK
(which needs no prekey, so no write under the lock stops it).
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.attack_harness import open_ks
from tests.cli_helpers import Device, HostProcess, Lab

PIN = "482913"


def spend_prekeys(guest: Device, host: Device) -> None:
    """Leave ``guest`` no prekey of ``host``: its next resume is the Noise KK fallback."""
    ks = open_ks(guest)
    with ks.update():
        record = ks.get_peer(host.name)
        ks.add_peer(dataclasses.replace(record, their_prekeys=[]))


def withdraw_grant(host: Device, guest: Device) -> None:
    """What another pairkit process on the host's device does to take a grant back (this test
    process is not the ``pairkit host`` process): the peer stays known, its grant goes."""
    ks = open_ks(host)
    with ks.update():
        record = ks.get_peer(guest.name)
        extra = {k: v for k, v in record.extra.items()
                 if k not in ("granted", "granted_expires")}
        ks.add_peer(dataclasses.replace(record, extra=extra))


async def paired_guest(lab: Lab, paul: Device, george: Device, *extra: str) -> HostProcess:
    """A running host on Paul's device that George paired with (a guest for an hour)."""
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--pin", PIN, "--json", *extra)
    first = await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")
    assert first.rc == 0, f"{first}\nhost:\n{host.stderr}"
    assert (await host.next_result())["peer"]["name"] == george.name
    return host


async def comes_back(george: Device, paul: Device, host: HostProcess, method: str) -> None:
    """The control: George resumes (or falls back to KK) with no prompt."""
    if method == "kk":
        spend_prekeys(george, paul)
    again = await george.join(paul.name, "--json")
    assert again.rc == 0, f"{again}\nhost:\n{host.stderr}"
    assert (await host.next_result())["method"] == method


@pytest.mark.parametrize("method", ["resume", "kk"])
async def test_a_forgotten_peer_cannot_resume_with_a_running_host(lab: Lab, method: str) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host = await paired_guest(lab, paul, george, "--yes")
    await comes_back(george, paul, host, method)

    forgot = await paul.run("forget", george.name)
    assert forgot.rc == 0, forgot
    mark = host.mark()
    if method == "kk":
        spend_prekeys(george, paul)
    retry = await george.join(paul.name, "--json")
    assert retry.rc != 0, f"the forgotten peer resumed:\n{retry}\nhost:\n{host.stderr}"
    assert not any("paired" in line for line in host.lines[mark:]), host.stderr
    assert george.name not in {row["name"] for row in await paul.peers()}

    # The host saves Ringo: its keystore still does not list George.
    pin = [line.split()[1] for line in host.lines if line.startswith("PIN: ")][-1]
    third = await ringo.join(host.target, "-m", "pin", "--pin", pin, "--json")
    assert third.rc == 0, f"{third}\nhost:\n{host.stderr}"
    listed = {row["name"] for row in await paul.peers()}
    assert ringo.name in listed and george.name not in listed, listed


async def test_a_withdrawn_grant_stops_a_returning_guest(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await paired_guest(lab, paul, george, "--yes")
    await comes_back(george, paul, host, "resume")

    withdraw_grant(paul, george)
    mark = host.mark()
    retry = await george.join(paul.name, "--json")
    assert retry.rc != 0, f"a guest whose grant was withdrawn came back:\n{retry}\n{host.stderr}"
    assert not any("paired" in line for line in host.lines[mark:]), host.stderr
    # Known still, granted nothing: the running host wrote nothing back.
    (row,) = [r for r in await paul.peers() if r["name"] == george.name]
    assert row["granted"] is None, row


async def test_a_grant_given_by_another_host_process_counts_at_once(lab: Lab) -> None:
    """Paul runs two hosts on one keystore (say TCP and BLE; two TCP ports here).  George pairs
    with the second; the first, started before George was known, lets him resume with no
    prompt (it has no --yes and no terminal: a prompt would refuse him)."""
    paul, george = lab.device("paul"), lab.device("george")
    first = await lab.host(paul, "-m", "pin", "-m", "resume", "--json")
    second = await paired_guest(lab, paul, george, "--yes")
    # George comes back through the first host, by the name he knows Paul by.
    again = await george.join(paul.name, "-t", first.target, "--json")
    assert again.rc == 0, f"{again}\nfirst host:\n{first.stderr}\nsecond:\n{second.stderr}"
    assert (await first.next_result())["method"] == "resume"
