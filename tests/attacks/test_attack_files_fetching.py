"""Attack review atk19f: what ``pairkit get`` lets others do to the device that fetches: a
local user who can write into the folder the files go to, and a hostile host (its listing,
its answers).  Every device a real ``pairkit`` process over TCP, or a host built from the
real machines (tests/attack_harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli_helpers import Lab, assert_no_traceback

PIN = "482913"
HOST_ARGS = ("--method", "pin", "--method", "resume", "--pin", PIN, "--yes")


async def test_a_planted_part_link_does_not_write_through(lab: Lab, tmp_path: Path) -> None:
    """A local user who can write into the folder ``get -o`` saves into (a shared folder, /tmp)
    plants ``a.txt.part`` as a link to a file of the victim's.  ``get`` took the link for a
    partial copy: it asked the host to resume from the victim file's size and appended the
    host's bytes to the victim's file (``open(part, "ab")`` follows links), then the SHA-256
    failed and it removed the link, leaving the victim's file grown."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_text("alpha " * 100)
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    out = tmp_path / "drop"
    out.mkdir()
    os.symlink(precious, out / "a.txt.part")
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    got = await george.run("get", host.target, "a.txt", "-m", "pin", "--pin", PIN,
                           "-o", str(out))
    assert_no_traceback("get", got.err)
    assert precious.read_text() == "mine\n", "get wrote through a planted .part link"
    # refused before connecting, as an existing file is (exit 2): the owner is not asked
    assert got.rc == 2, got
    assert "a.txt.part is not a partial file left by pairkit" in got.err, got
    assert "asks for" not in host.stderr and "paired with" not in host.stderr
    assert not (out / "a.txt").exists()
