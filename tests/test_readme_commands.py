"""README.md matches the tool (issue 16, item 8): every fenced block is run, checked or skipped
on purpose, so its commands, flags and output cannot drift from what pairkit does.

The runner and the annotation syntax are in tests/readme_runner.py.  The walk-throughs run as
separate ``pairkit`` processes on pseudo-terminals (TCP, and BLE through ``pairkit radio``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from tests.readme_runner import (
    Block,
    WalkFailure,
    annotation_problems,
    expected_regex,
    readme_blocks,
    run_walk,
    steps_of,
    unmatched,
    walks,
)

BLOCKS = readme_blocks()
WALKS = walks(BLOCKS)


def of_kind(kind: str) -> list[Block]:
    return [b for b in BLOCKS if b.annotation is not None and b.annotation.kind == kind]


def test_every_block_is_run_or_skipped_on_purpose() -> None:
    problems = annotation_problems(BLOCKS)
    assert not problems, "\n".join(problems)


def test_an_unannotated_block_is_named_by_its_line() -> None:
    text = "# t\n\n<!-- run: skip reason=\"x\" -->\n```sh\nls\n```\n\n```sh\npairkit new\n```\n"
    problems = annotation_problems(readme_blocks(text))
    assert len(problems) == 1
    assert problems[0].startswith("README.md:8: ```sh block starting 'pairkit new' has no")
    bad = readme_blocks('<!-- run: skip -->\n```sh\nls\n```\n')
    assert "needs its reason" in annotation_problems(bad)[0]


def test_the_walk_throughs_are_there() -> None:
    # the TCP and BLE walk-throughs, the key server's and the group keys' are run, not skipped
    assert {"tcp", "ble", "ttp", "groups"} <= set(WALKS)


def test_output_placeholders() -> None:
    rx = expected_regex("Paul's laptop (ab12-...) is waiting on 127.0.0.1:7000")
    assert rx.fullmatch("Paul's laptop (2461-c933-0a1b-77de) is waiting on 127.0.0.1:7000")
    assert not rx.fullmatch("Paul's laptop (2461-c933-0a1b-77de) is waiting on 127.0.0.1:7001")
    rx = expected_regex("paired with Paul's phone by pin (guest until 14:05)")
    assert rx.fullmatch("paired with Paul's phone by pin (guest until 09:41)")
    # a grant that ends on another day says its date (run just before midnight)
    assert rx.fullmatch("paired with Paul's phone by pin (guest until 2026-12-08 00:41)")
    assert not rx.fullmatch("paired with Paul's phone by qr (guest until 09:41)")
    rx = expected_regex("E9:84:19:A6:6E:44    rssi  -50  joinable  pin,qr  Paul's phone")
    assert rx.fullmatch("C0:11:22:33:44:55  rssi -61  joinable  pin,qr  Paul's phone")
    assert unmatched([(1, "PIN: 482913"), (2, "b")], "x\r\nPIN: 111111\r\nb\r\n") is None
    assert unmatched([(1, "b"), (2, "PIN: 482913")], "PIN: 111111\nb\n") == (2, "PIN: 482913")


def _command(path: list[str]) -> click.Command:
    from pairkit.cli.main import cli

    command: click.Command = cli
    ctx = click.Context(cli)
    for word in path:
        assert isinstance(command, click.Group), f"{' '.join(path)}: {word} is no subcommand"
        sub = command.get_command(ctx, word)
        assert sub is not None, f"pairkit {' '.join(path)}: no such command"
        command = sub
    return command


def _synopsis_entries(block: Block) -> list[tuple[int, list[str], str]]:
    """(README line, command path, the options part) for each command a synopsis names."""
    entries: list[tuple[int, list[str], str]] = []
    for n, raw in enumerate(block.lines, start=block.line + 1):
        text = re.split(r"\s{3,}", raw.strip(), maxsplit=1)[0] if raw.strip() else ""
        if not text:
            continue
        if not text.startswith("pairkit "):
            assert entries, f"README.md:{n}: a continuation with no command before it"
            entries[-1] = (entries[-1][0], entries[-1][1], entries[-1][2] + " " + text)
            continue
        segments, depth, start = [], 0, len("pairkit ")
        for i, ch in enumerate(text):
            depth += {"[": 1, "]": -1}.get(ch, 0)
            if ch == "|" and depth == 0:
                segments.append(text[start:i].strip())
                start = i + 1
        segments.append(text[start:].strip())
        prefix: list[str] = []
        first = segments[0].split()[0]
        if isinstance(_command([first]), click.Group):
            prefix = [first]
            segments[0] = segments[0].split(None, 1)[1]
        for seg in segments:
            word, _, rest = seg.partition(" ")
            entries.append((n, [*prefix, word], rest))
    return entries


@pytest.mark.parametrize("block", of_kind("synopsis"), ids=lambda b: f"line{b.line}")
def test_synopsis_names_real_options(block: Block) -> None:
    problems = []
    for n, path, rest in _synopsis_entries(block):
        command = _command(path)
        options: dict[str, click.Parameter] = {}
        for p in command.params:
            for name in (*p.opts, *p.secondary_opts):
                options[name] = p
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
            if flag not in options:
                problems.append(f"README.md:{n}: pairkit {' '.join(path)} has no option {flag}")
        for flag, values in re.findall(r"(--?[\w-]+) ([\w-]+(?:\|[\w-]+)+)", rest):
            kind = options[flag].type if flag in options else None
            if isinstance(kind, click.Choice):
                extra = set(values.split("|")) - set(map(str, kind.choices))
                if extra:
                    problems.append(f"README.md:{n}: {flag} takes no {sorted(extra)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", of_kind("config"), ids=lambda b: f"line{b.line}")
def test_config_blocks_are_accepted(block: Block, tmp_path: Path) -> None:
    from pairkit.cli.config import load_policy

    (tmp_path / "config.toml").write_text("\n".join(block.lines))
    policy = load_policy(tmp_path / "keystore")
    data = tomllib.loads("\n".join(block.lines))
    for section, values in data.items():
        assert set(values) <= set(policy[section]), f"README.md:{block.line}: {section}"


@pytest.mark.parametrize("block", of_kind("pytest"), ids=lambda b: f"line{b.line}")
def test_pytest_blocks_pass(block: Block, tmp_path: Path) -> None:
    (tmp_path / "test_readme_example.py").write_text("\n".join(block.lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme_example.py"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, f"{block.where()}:\n{proc.stdout}{proc.stderr}"
    assert re.search(r"\b1 passed\b", proc.stdout), proc.stdout


def _mini_walk(body: str, tmp_path: Path) -> None:
    text = f"# mini\n\n<!-- run: walk=mini -->\n```sh\n{body}\n```\n"
    run_walk("mini", walks(readme_blocks(text))["mini"], tmp_path)


def test_the_runner_fails_on_output_that_differs(tmp_path: Path) -> None:
    _mini_walk("echo hello   # a comment\n#   hello", tmp_path / "a")
    with pytest.raises(WalkFailure, match=r"README\.md:6 \('echo hello'.*README\.md:7 "):
        _mini_walk("echo one\necho hello\n#   goodbye", tmp_path / "b")
    with pytest.raises(WalkFailure, match=r"README\.md:5 \('false'.*exited 1"):
        _mini_walk("false", tmp_path / "c")


def test_the_runner_answers_as_a_person(tmp_path: Path) -> None:
    # a question on the terminal is answered; an export holds in its terminal only
    _mini_walk(
        "# terminal 1\nexport WHO=paul\nread -p 'Keystore PIN: ' x; echo \"$WHO typed $x\"\n"
        "#   paul typed 135790\n# terminal 2\necho \"[$WHO]\"\n#   []",
        tmp_path,
    )


def test_walk_blocks_have_commands() -> None:
    for blocks in WALKS.values():
        for b in blocks:
            assert steps_of(b), f"{b.where()}: no command in it"


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(WALKS))
def test_walk_through_runs_as_written(name: str, tmp_path: Path, pycache: Path) -> None:
    run_walk(name, WALKS[name], tmp_path, pycache)
