"""One set of limits, checked when building as well as when reading (issue 17, finding 7;
docs/protocol.md §13), over TCP between real ``pairkit`` processes.

A share of 600 files with long names (a listing of about 140 kB, over the 64 kB message limit)
is listed: the guest gets the first ones and "... and M more".  One 313-character nested path
is left out (counted), not a reason to reject the whole listing.  A name the host refuses, or
one over the limits, is a refusal (exit 5) with the reason, never a decode error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pairkit.cli.common import EXIT_NOT_FOUND, EXIT_REFUSED

from .cli_helpers import Device, Lab

PIN = "482913"


async def paired(lab: Lab, share: Path) -> Device:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--pin", PIN, "--share",
                          str(share), "--yes")
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--yes", "--json")).ok()
    return george


async def test_a_big_share_is_listed_in_part_with_a_note(lab: Lab, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    for i in range(600):
        (share / f"{i:04d}-{'a-very-long-descriptive-file-name-' * 6}.txt").write_text("x")
    deep = share / ("d" * 100) / ("e" * 100) / ("f" * 100)
    deep.mkdir(parents=True)
    (deep / "nested.bin").write_bytes(b"12345")  # a 313-character relative path
    george = await paired(lab, share)
    listed = (await george.run("ls", "Paul's phone", "--yes", "--json")).ok().json()
    names = [f["name"] for f in listed["files"]]
    assert 100 < len(names) < 600, len(names)
    assert names == sorted(names) and names[0].startswith("0000-")
    assert listed["more"] == 600 - len(names), listed["more"]
    assert listed["long_names"] == 1
    text = (await george.run("ls", "Paul's phone", "--yes")).ok()
    assert f"… and {600 - len(names)} more" in text.out, text.out
    assert "1 with names too long" in text.out


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("x" * 250, EXIT_NOT_FOUND),  # fits every limit: the host just has no such file
        ("日" * 130, EXIT_NOT_FOUND),  # 390 bytes: within the protocol's 400, and not there
        ("日" * 250, EXIT_REFUSED),  # over the protocol's 400 bytes
        ("y" * 300, EXIT_REFUSED),  # over the protocol's 255 characters
    ],
)
async def test_long_names_are_refused_with_the_reason(lab: Lab, tmp_path: Path,
                                                      name: str, code: int) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_text("a")
    george = await paired(lab, share)
    got = await george.run("get", "Paul's phone", name, "-o", str(tmp_path / "out"), "--yes")
    assert got.rc == code, got
    assert "decode" not in got.err.lower() and "closed" not in got.err, got.err
    if len(name) > 255:
        assert "at most 255 characters" in got.err, got.err


async def test_a_part_that_no_longer_fits_the_source_is_fetched_again(
    lab: Lab, tmp_path: Path
) -> None:
    """Finding 8: the source shrank since a cut transfer; every rerun used to be refused
    ("offset N is past the end").  Now the guest starts again from 0 and says so."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "v.bin").write_bytes(b"new" * 10_000)
    out = tmp_path / "v.bin"
    out.with_name("v.bin.part").write_bytes(b"old" * 20_000)
    george = await paired(lab, share)
    got = await george.run("get", "Paul's phone", "v.bin", "-o", str(out), "--yes")
    assert got.rc == 0, got
    assert "fetched it again from the start" in got.err, got.err
    assert out.read_bytes() == b"new" * 10_000
    assert not out.with_name("v.bin.part").exists()
