"""The real-radio tests rehearsed without a radio (issue 15, item 10), so their own code cannot
rot where nobody has a dongle.

``pairkit radio`` gives three linked virtual controllers in a process of its own, each behind a
TCP port, which pairkit reaches as it reaches a real controller over HCI
(``bumble:tcp-client:HOST:PORT``).  ``hw-tests/`` then runs in a process of its own, as
README.md "The real-radio tests" tells a person to, with every variable set:

* ``PAIRKIT_HW_HOST``: the first controller (the host's flow in the test process);
* ``PAIRKIT_HW_GUEST``: the second, through pairkit's bleak backend (``bleak:bumble:...``), the
  path a laptop's BlueZ guest takes;
* ``PAIRKIT_HW_PEER``, ``PAIRKIT_HW_PIN``, ``PAIRKIT_HW_FILE``: a ``pairkit host`` process on
  the third controller, sharing a file: the "Pi on the shelf" of the remote-host recipe.

Every hw-test must pass and none may be skipped, except hw-tests/test_hw_bluez.py's, which need
BlueZ itself as the guest (a laptop's own stack) and say so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT, HostProcess, init_devices, radio_process

PIN = "482913"

pytestmark = pytest.mark.timeout(600)


async def test_the_hw_tests_pass_against_pairkit_radio(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "holiday.mp4").write_bytes(os.urandom(64 * 1024))
    home = tmp_path / "pi"
    init_devices({"pi": home}, {"pi": "Paul's Pi"})
    async with radio_process(3) as (host_radio, guest_radio, pi_radio):
        pi = await HostProcess.start(
            home, "-t", pi_radio, "--method", "pin", "--pin", PIN, "--visible", "600",
            "--yes", "--share", str(share),
        )
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PAIRKIT_")}
            env.update(
                # the guest through pairkit's bleak backend: bleak:bumble:tcp-client:...
                PAIRKIT_HW_HOST=host_radio, PAIRKIT_HW_GUEST="bleak:" + guest_radio,
                PAIRKIT_HW_PEER=pi.address, PAIRKIT_HW_PIN=PIN, PAIRKIT_HW_FILE="holiday.mp4",
            )
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "hw-tests", "-q", "-s", "-rA", "-p",
                 "no:cacheprovider"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False,
            )
        finally:
            await pi.stop()
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\b8 passed, 2 skipped\b", summary), summary
    skips = [line for line in report.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("test_hw_bluez.py" in line and "needs BlueZ" in line
                         for line in skips), report[-4000:]
    # the timings each test prints (-s): the remote host's file came, every method paired
    assert "paired with Paul's Pi as guest" in report
    assert "holiday.mp4: 65536 bytes" in report
    for method in ("pin", "qr", "compare", "clear"):
        assert f"\n{method}: {env['PAIRKIT_HW_GUEST']} -> {host_radio} paired in" in report
    assert "paired with George's phone by pin" in pi.stderr  # the Pi really served the guest
