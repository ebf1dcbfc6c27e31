"""A host whose radio goes away, as a user meets it (issue 17, finding 6), with real processes.

The radio is ``pairkit radio`` in its own process; ``kill -9`` on it is every dongle pulled out
at once, and starting it again on the same ports is the dongles coming back (in another order,
each port comes back as another controller).  Paul's host and George's commands are real
``pairkit`` processes with their own homes; a guest mid-pairing is a bumble transport in this
process that connected and said nothing.  Every wait has a deadline (tests/cli_helpers.py); no
time is asserted.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit.pairing.errors import LinkClosedError
from pairkit.transports.bumble import open_bumble

from .cli_helpers import (
    Device,
    HostProcess,
    RadioProcess,
    assert_no_traceback,
)
from .pty_harness import PtyProcess

PIN = "482913"
NAMES = {"paul": "Paul's phone", "george": "George's phone"}
LOST = r"the Bluetooth controller 'tcp-client:127\.0\.0\.1:\d+' was lost; retrying in \d+ s"
BACK = r"the Bluetooth controller is back: Paul's phone \(.*\) is waiting on (\S+)"
#: the radio may take a while to come back on a loaded machine, and the host's pauses grow
BACK_TIMEOUT = 60.0


@pytest.fixture
def devices(tmp_path: Path, templates: dict[str, Device]) -> dict[str, Device]:
    """Fresh copies of the session's Paul and George (tests/cli_helpers.py ``templates``, made
    by ``pairkit init`` once a session), as ``Lab.device`` makes them."""
    made = {}
    for key, name in NAMES.items():
        assert templates[key].name == name
        shutil.copytree(templates[key].home, tmp_path / key)
        made[key] = Device(tmp_path / key, name)
    return made


@pytest.fixture
async def radio() -> AsyncIterator[RadioProcess]:
    async with RadioProcess() as running:
        yield running


def _no_third_party_text(host: HostProcess, since: int) -> None:
    """What the host printed about the loss is pairkit's words only: no traceback, no bumble
    log line, no repr."""
    later = "\n".join(host.lines[since:])
    assert_no_traceback("the host", later)
    assert "bumble" not in later.lower().replace("bumble:tcp-client", "")
    assert "<" not in later and "Exception" not in later


async def test_a_host_says_its_radio_was_lost_and_a_guest_pairs_once_it_is_back(
    radio: RadioProcess, devices: dict[str, Device]
) -> None:
    paul, george = devices["paul"], devices["george"]
    paul_radio, george_radio = radio.names
    host = await HostProcess.start(
        paul.home, "-t", paul_radio, "--visible", "300", "--yes", "--pin", PIN, "--json",
        "-m", "pin", "-m", "resume",
    )
    try:
        await host.wait_for("broadcasting a hello")
        mark = host.mark()
        await radio.kill()

        await host.wait_for(LOST, since=mark)
        assert host.proc.returncode is None  # it waits for the radio; it does not give up
        # Meanwhile a guest on the dead radio is told so at once, in words (exit 6).
        missing = await george.join(host.address, "-t", george_radio, "--pin", PIN)
        assert missing.rc == 6, missing
        assert "nothing listens at 127.0.0.1:" in missing.err

        await radio.start()
        back = await host.wait_for(BACK, since=mark, timeout=BACK_TIMEOUT)
        address = back.group(1)
        _no_third_party_text(host, mark)

        # Advertising again, still visible: a stranger finds it and pairs by the PIN.
        heard = (await george.run("discover", "-t", george_radio, "--timeout", "2", "--json"))
        assert address in {d["address"] for d in heard.ok().json()["devices"]}, heard
        joined = await george.join(address, "-t", george_radio, "-m", "pin", "--pin", PIN,
                                   "--json")
        mine = joined.ok().json()
        theirs = await host.next_result()
        assert mine["session"] == theirs["session"]
        assert theirs["peer"]["name"] == "George's phone"
    finally:
        await host.stop()
    assert_no_traceback("the host", host.stderr)


async def test_a_radio_killed_mid_pairing_ends_that_guest_and_a_known_peer_resumes_after(
    radio: RadioProcess, devices: dict[str, Device]
) -> None:
    """kill -9 while a guest is connected and mid-pairing: that guest's link ends with an
    error (not at some timeout), the host carries on; the radio comes back as other
    controllers (ports swapped), and George, paired before, resumes with no PIN: a guest, he
    holds no address key to recognise the host's fresh address by, so he asks the hosts nearby
    (``--ask-any-host``: README "Known peers come back")."""
    paul, george = devices["paul"], devices["george"]
    paul_radio, george_radio = radio.names
    host = await HostProcess.start(
        paul.home, "-t", paul_radio, "--visible", "300", "--yes", "--pin", PIN, "--json",
        "-m", "pin", "-m", "resume",
    )
    try:
        first = await george.join(host.address, "-t", george_radio, "-m", "pin", "--pin", PIN,
                                  "--json")
        first.ok()
        await host.next_result()

        # A guest that connected and has not finished pairing: this process, on George's port.
        stalled = await open_bumble(george_radio.removeprefix("bumble:"), open_timeout=10.0)
        try:
            link = await stalled.connect(host.address, timeout=15.0)
            mark = host.mark()
            await radio.kill()
            with pytest.raises(LinkClosedError) as ended:
                await asyncio.wait_for(link.recv(), 15.0)
            assert "Bluetooth controller was lost" in str(ended.value)
            assert stalled.lost is not None
        finally:
            await stalled.close()
        await host.wait_for(LOST, since=mark)

        await radio.start(list(reversed(radio.ports)))  # each port another controller now
        await host.wait_for(BACK, since=mark, timeout=BACK_TIMEOUT)
        _no_third_party_text(host, mark)

        again = await george.join("Paul's phone", "--ask-any-host", "--json", timeout=60.0)
        assert again.ok().json()["method"] == "resume"
        assert (await host.next_result())["method"] == "resume"
    finally:
        await host.stop()
    assert_no_traceback("the host", host.stderr)


@pytest.mark.parametrize(("retries", "says"), [
    ("0", "not retrying (--radio-retries 0)"),
    ("1", "did not come back after 1 attempt(s): nothing listens at 127.0.0.1:"),
])
async def test_told_not_to_retry_a_host_exits_with_the_not_found_code(
    radio: RadioProcess, devices: dict[str, Device], retries: str, says: str
) -> None:
    paul = devices["paul"]
    host = await HostProcess.start(
        paul.home, "-t", radio.names[0], "--yes", "-m", "pin", "--radio-retries", retries,
    )
    try:
        await radio.kill()
        with pytest.raises(AssertionError, match="host ended"):
            await host.wait_for("never printed", timeout=30.0)  # it ends by itself
        assert await host.stop() == 6
    finally:
        await host.stop()
    (error,) = [line for line in host.lines if line.startswith("error:")]
    assert re.match(r"error: the Bluetooth controller 'tcp-client:127\.0\.0\.1:\d+' was lost",
                    error), error
    assert says in error
    assert_no_traceback("the host", host.stderr)


async def test_discover_on_a_radio_that_goes_away_says_so(
    radio: RadioProcess, devices: dict[str, Device]
) -> None:
    """A scan whose radio goes away ends with that error, exit 6, instead of a list of
    nothing at the end of its timeout (or, had the radio gone before it opened, 'nothing
    listens': exit 6 too)."""
    george = devices["george"]
    scanning = asyncio.ensure_future(
        george.run("discover", "-t", radio.names[1], "--timeout", "25", timeout=60.0)
    )
    await asyncio.sleep(1.0)  # most likely scanning by now; either way the outcome is exit 6
    await radio.kill()
    done = await scanning
    assert done.rc == 6, done
    assert ("was lost" in done.err) or ("nothing listens" in done.err), done
    assert "no pairkit host heard" not in done.err


async def test_a_radio_killed_while_the_owner_is_asked_ends_both_sides_cleanly(
    radio: RadioProcess, devices: dict[str, Device]
) -> None:
    """A real guest mid-pairing: George's join waits while Paul's terminal asks whether to let
    him in, and the radio is killed then.  George's command ends at once with the reason (exit
    6); Paul's host drops the question, says what happened, and once the radio is back asks
    about the next guest on the same terminal, who pairs."""
    paul, george = devices["paul"], devices["george"]
    paul_radio, george_radio = radio.names
    host = PtyProcess(paul.home, "host", "-t", paul_radio, "--visible", "300", "--pin", PIN,
                      "-m", "pin", "--timeout", "120")
    try:
        address = (await asyncio.to_thread(host.expect, r"is waiting on (\S+)")).group(1)
        joining = asyncio.ensure_future(
            george.join(address, "-t", george_radio, "-m", "pin", "--pin", PIN, timeout=60.0)
        )
        await asyncio.to_thread(host.expect, r"Allow George's phone as \[g\]uest")
        await radio.kill()

        ended = await joining
        assert ended.rc == 6, ended
        assert re.search(r"the Bluetooth controller 'tcp-client:127\.0\.0\.1:\d+' was lost",
                         ended.err), ended
        await asyncio.to_thread(host.expect, LOST)

        await radio.start()
        back = await asyncio.to_thread(host.expect, BACK, timeout=BACK_TIMEOUT)
        joining = asyncio.ensure_future(
            george.join(back.group(1), "-t", george_radio, "-m", "pin", "--pin", PIN,
                        "--json", timeout=60.0)
        )
        await asyncio.to_thread(host.expect, r"Allow George's phone as \[g\]uest")
        host.line("g")
        assert (await joining).ok().json()["peer"]["name"] == "Paul's phone"
        host.ctrl_c()
        assert await asyncio.to_thread(host.wait) == 130
    finally:
        host.close()
    assert "Traceback" not in host.output
