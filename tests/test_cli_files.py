"""``pairkit get`` as a person uses it (issue 16, item 6): several files in one session, -o as a
folder or a file, never replacing a local file without --force, and a stopped transfer that
says the command that resumes it; each device a real process, over TCP.

The owner's "for this session" is played here by the host's ``--yes`` (which answers
"session"); tests/test_file_prompts.py answers it on a real terminal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import signal
from pathlib import Path

import pytest

from pairkit.cli.show import Progress, human_size

from .cli_helpers import (
    PAIRKIT_CMD,
    ROOT,
    SHARE_HOST_ARGS,
    SHARE_PIN,
    Lab,
    assert_no_traceback,
    cli_env,
    run_cli,
)

PIN, HOST_ARGS = SHARE_PIN, SHARE_HOST_ARGS
EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 2, 6, 130


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("bravo bravo\n")
    (root / "sub" / "c.bin").write_bytes(os.urandom(70_000))
    (root / ".envrc").write_text("echo planted\n")  # hidden: fetched only when named
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_several_files_come_in_one_session_with_one_question(
    lab: Lab, share: Path, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "out"
    out.mkdir()
    result = await george.run("get", host.target, "a.txt", "b.txt", "sub/c.bin", "-m", "pin",
                              "--pin", PIN, "-o", str(out), "--json")
    assert result.rc == 0, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [r["name"] for r in lines] == ["a.txt", "b.txt", "sub/c.bin"]
    assert [r["path"] for r in lines] == [str(out / n) for n in ("a.txt", "b.txt", "c.bin")]
    for name, local in (("a.txt", "a.txt"), ("b.txt", "b.txt"), ("sub/c.bin", "c.bin")):
        assert sha(out / local) == sha(share / name)
    await host.wait_for(r"George's phone: 0 listing\(s\), 3 file\(s\)")
    asked = [line for line in host.lines if " asks for " in line]
    assert asked == ["George's phone asks for 'a.txt'."], host.stderr  # one session, one ask


async def test_get_all_fetches_every_listed_file_into_a_folder(
    lab: Lab, share: Path, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "all"
    out.mkdir()
    result = await george.run("get", host.target, "--all", "-m", "pin", "--pin", PIN,
                              "-o", str(out))
    assert result.rc == 0, result
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.bin"]
    assert len(result.out.splitlines()) == 3  # one result line per file
    # a host's listing does not plant a hidden file where the command runs
    assert "note: 1 hidden file(s) not fetched with --all (ask for them by name): '.envrc'" in (
        result.err)
    await host.wait_for(r"George's phone: 1 listing\(s\), 3 file\(s\)")
    asked = [line for line in host.lines if " asks for " in line]
    assert asked == ["George's phone asks for the list of shared files.",
                     "George's phone asks for 'a.txt'."], host.stderr


async def test_an_existing_file_is_kept_unless_force(
    lab: Lab, share: Path, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "a.txt").write_text("my own a.txt\n")
    kept = await george.run("get", host.target, "a.txt", "-m", "pin", "--pin", PIN,
                            "-o", str(out))
    assert kept.rc == EXIT_USAGE, kept
    assert kept.err.splitlines()[0] == (
        f"error: {out / 'a.txt'} exists; use --force to replace it, or -o another name"
    )
    assert (out / "a.txt").read_text() == "my own a.txt\n"
    assert "asks for" not in host.stderr and "paired with" not in host.stderr  # before asking
    # --all checks every listed name before fetching any: nothing is replaced, nothing fetched
    everything = await george.run("get", host.target, "--all", "-m", "pin", "--pin", PIN,
                                  "-o", str(out))
    assert everything.rc == EXIT_USAGE, everything
    assert "a.txt exists; use --force" in everything.err
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert (out / "a.txt").read_text() == "my own a.txt\n"
    replaced = await george.run("get", "Paul's phone", "a.txt", "-o", str(out), "--force")
    assert replaced.rc == 0, replaced
    assert replaced.out.startswith(f"{out / 'a.txt'}  6 bytes  sha256 ")
    assert (out / "a.txt").read_text() == "alpha\n"
    assert not (out / "a.txt.part").exists()


async def test_o_names_a_folder_or_a_file(lab: Lab, share: Path, tmp_path: Path) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    folder = tmp_path / "folder"
    folder.mkdir()
    into = await george.run("get", host.target, "sub/c.bin", "-m", "pin", "--pin", PIN,
                            "-o", str(folder))
    assert into.rc == 0, into
    assert sha(folder / "c.bin") == sha(share / "sub" / "c.bin")
    named = await george.run("get", "Paul's phone", "b.txt", "-o", str(folder / "bee.txt"))
    assert named.rc == 0, named
    assert (folder / "bee.txt").read_text() == "bravo bravo\n"


# (arguments after 'get PEER' or none, exit code, the error's first line); {d} is a folder
# that exists, {m} one that does not.  No host is needed: all are refused before connecting.
BAD_GETS = [
    (("a.txt", "-o", "{m}/x.txt"), EXIT_NOT_FOUND,
     "error: cannot save to {m}/x.txt: there is no folder {m}"),
    (("a.txt", "-o", "{m}/"), EXIT_NOT_FOUND,
     "error: cannot save into {m}: there is no such folder"),
    (("a.txt", "b.txt", "-o", "{m}/x.txt"), EXIT_USAGE,
     "error: -o {m}/x.txt: with several files, -o names an existing folder"),
    ((), EXIT_USAGE, "error: name the files to fetch (get PEER NAME...), or give --all"),
    (("a.txt", "--all"), EXIT_USAGE,
     "error: name the files to fetch (get PEER NAME...), or give --all"),
    (("a.txt", "a.txt"), EXIT_USAGE, "error: each NAME may be given once"),
    (("x/a.txt", "y/a.txt", "-o", "{d}"), EXIT_USAGE,
     "error: 'x/a.txt' and 'y/a.txt' would both be saved as 'a.txt'; fetch them one at a time "
     "with -o FILE"),
    (("..",), EXIT_USAGE, "error: '..' cannot be saved under that name; use -o FILE"),
    (("a.txt", "--retries", "-1"), EXIT_USAGE, None),
]


@pytest.mark.parametrize(("args", "rc", "first"), BAD_GETS)
async def test_bad_gets_are_refused_before_connecting(
    lab: Lab, tmp_path: Path, args: tuple[str, ...], rc: int, first: str | None
) -> None:
    george = lab.device("george")
    fill = {"d": str(tmp_path), "m": str(tmp_path / "missing")}
    result = await george.run("get", "tcp:127.0.0.1:9", *(a.format(**fill) for a in args))
    assert result.rc == rc, result
    if first is not None:
        assert result.err.splitlines()[0] == first.format(**fill), result
    assert ".part" not in result.err
    assert not (tmp_path / "missing").exists()


async def test_a_stopped_transfer_says_the_command_that_resumes_it(
    lab: Lab, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    share = tmp_path / "big"
    share.mkdir()
    (share / "big.bin").write_bytes(os.urandom(96_000_000))
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "got"
    out.mkdir()
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, "get", host.target, "big.bin", "-m", "pin", "--pin", PIN,
        "-o", str(out), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=cli_env(george.home),
    )
    part = out / "big.bin.part"
    async with asyncio.timeout(30):
        while not (part.exists() and part.stat().st_size > 0):
            assert proc.returncode is None, "the transfer ended before it could be stopped"
            await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # Ctrl-C mid-transfer
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    text = err.decode()
    assert proc.returncode == EXIT_INTERRUPTED, text
    assert_no_traceback("pairkit get", text)
    lines = text.splitlines()
    told = next(i for i, line in enumerate(lines) if line.startswith("stopped: "))
    assert lines[told].endswith(f"of 'big.bin' kept in {part}; resume with:"), text
    command = shlex.split(lines[told + 1])
    assert command == ["pairkit", "get", "Paul's phone", "big.bin", "-o", str(out)], command
    kept = part.stat().st_size
    assert 0 < kept < 96_000_000
    # the printed command, run as printed, finishes the file from where it stopped
    result = await run_cli(george.home, *command[1:], "--json", timeout=90)
    assert result.rc == 0, result
    got = result.json()
    assert got["resumed_from"] == kept
    assert got["sha256"] == sha(share / "big.bin") == sha(out / "big.bin")
    assert not part.exists()


async def test_a_get_stopped_between_files_says_how_to_fetch_the_rest(
    lab: Lab, share: Path, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    out = tmp_path / "some"
    out.mkdir()
    result = await george.run("get", host.target, "a.txt", "missing.txt", "b.txt", "-m", "pin",
                              "--pin", PIN, "-o", str(out))
    assert result.rc == EXIT_NOT_FOUND, result
    assert result.out.startswith(f"{out / 'a.txt'}  6 bytes")  # what came is kept and said
    lines = result.err.splitlines()
    told = next(i for i, line in enumerate(lines) if line.startswith("stopped: "))
    assert lines[told] == "stopped: 1 file(s) fetched, 1 to go; fetch the rest with:"
    command = shlex.split(lines[told + 1])
    assert command == ["pairkit", "get", "Paul's phone", "b.txt", "-o", str(out)]  # not missing
    rest = await run_cli(george.home, *command[1:])
    assert rest.rc == 0, rest
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]


class Sink:
    def __init__(self) -> None:
        self.shown: list[str] = []

    def write(self, text: str) -> None:
        self.shown.append(text)

    def flush(self) -> None:
        pass


def test_the_rate_leaves_out_the_wait_for_the_owner_and_the_resumed_bytes() -> None:
    now = [1000.0]
    sink = Sink()
    progress = Progress("film.mp4", stream=sink, enabled=True, clock=lambda: now[0])
    now[0] += 120.0  # the owner took two minutes to answer
    progress(5_000_000 + 16_384, 10_000_000)  # resumed at 5 MB: the first chunk arrives
    now[0] += 2.0
    progress(7_016_384, 10_000_000)  # 2 MB in 2 s
    assert progress.rate(7_016_384, now[0]) == 1_000_000
    assert sink.shown[-1].endswith("film.mp4: 7.02 MB/10.00 MB  70.2% 1.00 MB/s    3 s left")


def test_tiny_files_show_bytes_not_zero_megabytes() -> None:
    progress = Progress("notes.txt", enabled=False, clock=lambda: 5.0)
    progress(12, 12)
    assert progress.line(12, 12, 5.0) == "notes.txt: 12 B/12 B 100.0%"  # no rate from one chunk
    sizes = (0, 12, 999, 1_000, 34_567, 999_499, 2_000_000, 999_990_000, 1_500_000_000)
    assert [human_size(n) for n in sizes] == [
        "0 B", "12 B", "999 B", "1 kB", "35 kB", "999 kB", "2.00 MB", "999.99 MB", "1.50 GB"]
