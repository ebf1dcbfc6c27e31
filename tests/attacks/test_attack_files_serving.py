"""Attack review atk19f: what a paired guest gets from a host that shares a folder
(``pairkit host --share DIR``), over TCP against a real ``pairkit host`` process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli_helpers import Lab, assert_no_traceback

PIN = "482913"
HOST_ARGS = ("--method", "pin", "--method", "resume", "--pin", PIN, "--yes")


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "a.txt").write_text("alpha\n")
    return root


async def test_a_symlink_loop_in_the_share_is_refused_not_a_crash(
    lab: Lab, share: Path, tmp_path: Path
) -> None:
    """A link loop in the shared folder (``loop -> loop``) made ``Path.resolve`` raise
    RuntimeError (not OSError) on Python 3.11: ``resolve_shared`` and ``list_shared`` let it
    through, a guest's request for it or any listing of the folder ended with a traceback."""
    os.symlink("loop", share / "loop")
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "out"
    out.mkdir()
    asked = await george.run("get", host.target, "loop", "-m", "pin", "--pin", PIN,
                             "-o", str(out))
    assert asked.rc != 0, asked
    assert_no_traceback("get", asked.err)
    listed = await george.run("ls", "Paul's phone")
    assert listed.rc == 0, (listed, host.stderr)
    assert "a.txt" in listed.out and "loop" not in listed.out
    got = await george.run("get", "Paul's phone", "a.txt", "-o", str(out))
    assert got.rc == 0, got
    assert (out / "a.txt").read_text() == "alpha\n"
    assert_no_traceback("host", host.stderr)
    assert host.proc.returncode is None, host.stderr  # still serving


async def test_a_file_whose_part_name_is_too_long_here_is_refused_before_asking(
    lab: Lab, share: Path, tmp_path: Path
) -> None:
    """A shared name of 255 bytes fits the host's file system, but NAME.part (260) does not fit
    the guest's: ``get`` says so before connecting, as for a file that exists (exit 2), not
    with the OS's error after the owner was asked."""
    name = "n" * 251 + ".txt"
    (share / name).write_text("x")
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "out"
    out.mkdir()
    got = await george.run("get", host.target, name, "-m", "pin", "--pin", PIN, "-o", str(out))
    assert got.rc == 2, got
    assert "cannot keep a partial file at" in got.err and "-o another name" in got.err, got
    assert "paired with" not in host.stderr
    named = await george.run("get", host.target, name, "-m", "pin", "--pin", PIN,
                             "-o", str(out / "short.txt"))
    assert named.rc == 0, named
    assert (out / "short.txt").read_text() == "x"
