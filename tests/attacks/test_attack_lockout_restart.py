"""A stranger's PIN guesses and compare's unconfirmed codes outlive the host process that counted
them (docs/security.md, rule 7, "The lock outlives the host process").

The lock's yearly bound (12,045 guesses at most) held only for a host that never stopped: its
failures were in the memory of one ``pairkit host`` process.  A host restarted (a Pi's service
restarting after its dongle went away, a reboot, a crash) forgot them, and so did a second host
process on the same keystore (another transport): each start gave a stranger five fresh guesses.
Played with real ``pairkit`` processes over TCP on 127.0.0.1.
"""

from __future__ import annotations

import re
import signal

import pytest

from tests.cli_helpers import Device, HostProcess, Lab

#: the stranger's guesses, none of them the PIN shown (the host draws its own)
GUESSES = [f"90000{i}" for i in range(6)]


async def guess_five(host: HostProcess, stranger: Device) -> None:
    """Five wrong guesses, each against the PIN on show then, each seen counted by the host."""
    for i in range(5):
        result = await stranger.join(host.target, "-m", "pin", "--pin", GUESSES[i])
        assert result.rc == 3 and "wrong PIN" in result.err, result
        await host.wait_count(r"^error: guest .*wrong PIN", i + 1)
        await host.wait_count(r"^PIN: \d{6}", i + 2)


async def shown_pin(host: HostProcess) -> str:
    """The PIN the host shows now (waiting for its first, as a host prints it once it waits)."""
    await host.wait_for(r"^PIN: \d{6}")
    return [m.group(1) for line in host.lines if (m := re.match(r"^PIN: (\d{6})", line))][-1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
async def test_a_restarted_host_keeps_its_pin_lock(lab: Lab, sig: int) -> None:
    """Five wrong guesses lock PIN pairing; the host stops (Ctrl-C, or killed as by a crash or
    a power cut) and starts again on the same keystore: the sixth guess is still refused as
    locked, and so is the right PIN on show, until the lock ends."""
    paul, george = lab.device("paul"), lab.device("george")
    first = await lab.host(paul, "-m", "pin", "-m", "qr", "--yes")
    await guess_five(first, george)
    await first.stop(sig=sig)
    again = await lab.host(paul, "-m", "pin", "-m", "qr", "--yes")
    sixth = await george.join(again.target, "-m", "pin", "--pin", GUESSES[5])
    assert sixth.rc == 5 and "locked" in sixth.err, sixth
    right = await george.join(again.target, "-m", "pin", "--pin", await shown_pin(again))
    assert right.rc == 5 and "locked" in right.err, right
    assert await george.peers() == []


async def test_a_second_host_process_on_the_keystore_shares_the_lock(lab: Lab) -> None:
    """Two ``pairkit host`` processes of one device (two ports, as two transports would be):
    five wrong guesses at one lock PIN pairing at the other too."""
    paul, george = lab.device("paul"), lab.device("george")
    one = await lab.host(paul, "-m", "pin", "--yes")
    other = await lab.host(paul, "-m", "pin", "--yes")
    await guess_five(one, george)
    sixth = await george.join(other.target, "-m", "pin", "--pin", await shown_pin(other))
    assert sixth.rc == 5 and "locked" in sixth.err, sixth


async def test_the_owner_lifts_the_lock_with_reset_lockouts(lab: Lab) -> None:
    """The owner who locked PIN pairing with their own typos lifts it at the next start with
    ``--reset-lockouts`` (a stranger cannot: it takes the keystore's PIN), and is told so."""
    paul, george = lab.device("paul"), lab.device("george")
    first = await lab.host(paul, "-m", "pin", "--yes")
    await guess_five(first, george)
    await first.stop()
    again = await lab.host(paul, "-m", "pin", "--yes", "--reset-lockouts")
    await again.wait_for(r"lockouts? .*cleared")
    paired = await george.join(again.target, "-m", "pin", "--pin", await shown_pin(again), "--json")
    assert paired.ok().json()["peer"]["name"]
