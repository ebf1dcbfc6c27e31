"""The same options with the same meaning on every subcommand (issue 16, item 7), through the
real ``pairkit`` command: ``--json`` everywhere, ``--pin-file`` wherever the keystore is
opened, one default transport chosen one way (and printed by ``whoami``), ``peers`` as a table,
the QR picture written 0600, one spelling of enrol, and peer names completed by the shell.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from pathlib import Path

import pytest

from .cli_helpers import (
    PAIRKIT_CMD,
    ROOT,
    Device,
    Lab,
    Result,
    assert_no_traceback,
    cli_env,
    run_cli,
)

PIN = "482913"
EXIT_USAGE, EXIT_AUTH = 2, 3


async def run_with_env(home: Path, extra: dict[str, str], *args: str) -> Result:
    """``pairkit ARGS`` with ``extra`` in its environment (cli_env keeps out the developer's
    own PAIRKIT_* variables)."""
    env = {**cli_env(home), **extra}
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    result = Result(args, proc.returncode or 0, out.decode(), err.decode())
    assert_no_traceback(f"pairkit {' '.join(args)}", result.err)
    return result


#: every subcommand, and whether it opens the keystore (then it takes --pin-file)
SUBCOMMANDS = [
    ("init", True), ("whoami", True), ("peers", True), ("forget", True), ("host", True),
    ("join", True), ("discover", True), ("ls", True), ("get", True), ("radio", False),
    ("demo", False), ("ttp init", False), ("ttp serve", False), ("ttp enrol", True),
    ("ttp list", False), ("group create", True), ("group add", True), ("group remove", True),
    ("group rekey", True), ("group sync", True), ("group send", True), ("group listen", True),
    ("group relay", True), ("group show", True), ("group agent", True), ("group cert", True),
    ("group status", True), ("pn gateway", True), ("pn join", True), ("pn ls", True),
    ("pn send", True),
]


async def test_every_subcommand_has_json_and_pin_file_where_it_opens_the_keystore() -> None:
    lanes = asyncio.Semaphore(3)  # a small machine: a few processes at a time

    async def help_of(command: str) -> Result:
        async with lanes:
            return await run_cli(None, *command.split(), "--help", pin=None)

    helps = await asyncio.gather(*(help_of(c) for c, _ in SUBCOMMANDS))
    for (command, opens), result in zip(SUBCOMMANDS, helps, strict=True):
        assert result.rc == 0, result
        assert "--json" in result.out, f"pairkit {command} has no --json"
        assert ("--pin-file" in result.out) is opens, f"pairkit {command}: --pin-file"
        # the commands that look for a moved known peer nearby (atk19p finding 4)
        assert ("--ask-any-host" in result.out) is (command in ("join", "ls", "get")), command
    # every subcommand is in the table: none was forgotten
    top = await run_cli(None, "--help", pin=None)
    commands = top.out.split("Commands:")[1].split("Exit codes:")[0]
    listed = {line.split()[0] for line in commands.splitlines()
              if line.startswith("  ") and line.split()}
    assert listed == {c.split()[0] for c, _ in SUBCOMMANDS}


async def test_one_spelling_of_enrol_and_the_old_one_still_works() -> None:
    listed = await run_cli(None, "ttp", "--help", pin=None)
    assert "  enrol " in listed.out and "  enroll " not in listed.out
    old = await run_cli(None, "ttp", "enroll", "--help", pin=None)
    assert old.rc == 0 and "--server" in old.out


async def test_pin_file_comes_before_pairkit_pin(lab: Lab, tmp_path: Path) -> None:
    george = lab.device("george")
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("135790\n")
    wrong.write_text("000000\n")
    by_file = await run_cli(george.home, "whoami", "--pin-file", str(right), "--json", pin=None)
    assert by_file.rc == 0, by_file
    assert by_file.json()["name"] == "George's phone"
    # the file wins over PAIRKIT_PIN (which is right here)
    file_first = await run_cli(george.home, "peers", "--pin-file", str(wrong))
    assert file_first.rc == EXIT_AUTH, file_first
    missing = await run_cli(george.home, "peers", "--pin-file", str(tmp_path / "nope"))
    assert missing.rc == EXIT_USAGE, missing
    assert missing.err.startswith(f"error: cannot read the PIN file {tmp_path / 'nope'}")


async def test_the_default_transport_is_chosen_one_way_and_whoami_says_it(
    lab: Lab, tmp_path: Path
) -> None:
    george = lab.device("george")

    async def whoami(**env: str) -> dict[str, str]:
        result = await run_with_env(george.home, env, "whoami", "--json")
        assert result.rc == 0, result
        got = result.json()
        return {"transport": got["transport"], "from": got["transport_from"]}

    assert await whoami() == {"transport": "bumble:usb:0", "from": "built-in default"}
    assert await whoami(PAIRKIT_TRANSPORT="bumble:tcp-client:127.0.0.1:7001") == {
        "transport": "bumble:tcp-client:127.0.0.1:7001", "from": "PAIRKIT_TRANSPORT"}
    (george.home / "config.toml").write_text(
        '[defaults]\ntransport = "tcp:127.0.0.1:7100"\n')
    assert await whoami(PAIRKIT_TRANSPORT="bumble:tcp-client:127.0.0.1:7001") == {
        "transport": "tcp:127.0.0.1:7100", "from": "config.toml [defaults]"}
    text = await george.run("whoami")
    assert "transport:   tcp:127.0.0.1:7100   (default, from config.toml [defaults])" in text.out
    (george.home / "config.toml").unlink()
    bad = await run_with_env(george.home, {"PAIRKIT_TRANSPORT": "usb"}, "whoami")
    assert bad.rc == EXIT_USAGE, bad
    assert bad.err.startswith("error: PAIRKIT_TRANSPORT: unknown transport 'usb'"), bad


async def test_host_takes_the_default_transport(lab: Lab, tmp_path: Path) -> None:
    paul = lab.device("paul")
    (paul.home / "config.toml").write_text(
        '[defaults]\ntransport = "tcp:127.0.0.1:0"\n')
    from .cli_helpers import HostProcess

    host = await HostProcess.start(paul.home, "--method", "pin", "--once")
    lab.hosts.append(host)
    assert host.address.startswith("127.0.0.1:")


async def test_peers_is_a_table_with_roles_and_expiry_and_forget_has_json(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "--method", "pin", "--pin", PIN, "--yes")
    joined = await george.join(host.target, "--method", "pin", "--pin", PIN)
    assert joined.rc == 0, joined
    on_paul, on_george = await asyncio.gather(paul.run("peers"), george.run("peers"))
    head, row = on_paul.ok().out.splitlines()[:2]
    assert head.split() == ["NAME", "ID", "THEIR", "ROLE", "UNTIL", "YOUR", "ROLE", "UNTIL",
                            "VIA", "PREKEYS", "FINGERPRINT"]
    assert row.startswith("George's phone ")
    cells = row.removeprefix("George's phone").split()
    assert cells[1] == "guest" and cells[4] == "-" and cells[5] == "-" and cells[6] == "pin"
    assert cells[2].count("-") == 2  # a date: 2026-12-05 14:05
    g_head, g_row = on_george.ok().out.splitlines()[:2]
    assert g_head.split() == head.split()
    g_cells = g_row.removeprefix("Paul's phone").split()
    assert g_cells[1] == "-" and g_cells[2] == "-" and g_cells[3] == "guest"
    forgot = await george.run("forget", "Paul's phone", "--json")
    assert forgot.rc == 0, forgot
    assert forgot.json() == {"ok": True, "forgot": {
        "name": "Paul's phone", "id": json.loads((await paul.run("whoami", "--json")).out)["id"]},
        "address_key_renewed": False,  # George was never given Paul's: nothing to renew
        "cloud_secret_renewed": False,  # nor his cloud secret
        "groups_dropped": [],  # nor holds a group of Paul's
        "groups_left": []}  # nor controls a group Paul is in
    assert await george.peers() == []


async def test_the_qr_picture_is_readable_by_its_owner_only(lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("qrcode")
    paul = lab.device("paul")
    fresh, old = tmp_path / "fresh.png", tmp_path / "old.png"
    old.write_bytes(b"")
    old.chmod(0o644)
    for picture in (fresh, old):
        host = await lab.host(paul, "--method", "qr", "--qr-png", str(picture))
        await host.wait_for(r"QR code written to")
        await host.stop()
        assert picture.read_bytes().startswith(b"\x89PNG")
        assert stat.S_IMODE(picture.stat().st_mode) == 0o600, oct(picture.stat().st_mode)


async def test_radio_json_names_its_transports() -> None:
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, "radio", "--ports", "0", "0", "--json", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=cli_env(None, pin=None),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        names = json.loads(line)["radio"]
        assert len(names) == 2
        assert all(n.startswith("bumble:tcp-client:127.0.0.1:") for n in names)
    finally:
        proc.kill()
        await proc.wait()


async def test_the_shell_completes_known_peer_names(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "--method", "pin", "--pin", PIN, "--yes")
    assert (await george.join(host.target, "--method", "pin", "--pin", PIN)).rc == 0

    async def complete(words: str, *, pin: str | None) -> list[str]:
        env = cli_env(george.home, pin=pin)
        env.update(_PAIRKIT_COMPLETE="bash_complete", COMP_WORDS=words,
                   COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
        proc = await asyncio.create_subprocess_exec(
            *PAIRKIT_CMD, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert not err, err.decode()
        return [line for line in out.decode().splitlines() if line]

    assert await complete("pairkit get Pa", pin="135790") == ["plain,Paul's phone"]
    assert await complete("pairkit forget ", pin="135790") == ["plain,Paul's phone"]
    assert await complete("pairkit get Pa", pin=None) == []  # no PIN: nothing, no prompt


def test_the_keystore_pin_prompt_counts_tries_in_good_english(
    tmp_path: Path, templates: dict[str, Device]
) -> None:
    from .pty_harness import PtyProcess

    home = tmp_path / "george"
    shutil.copytree(templates["george"].home, home)
    proc = PtyProcess(home, "whoami", pin=None)
    try:
        for left in ("2 tries left", "1 try left"):
            proc.expect(r"Keystore PIN: ")
            proc.line("000000")
            proc.expect(rf"wrong PIN, {left}\n")
        proc.expect(r"Keystore PIN: ")
        proc.line("135790")
        proc.expect(r"name: +George's phone")
        assert proc.wait() == 0
    finally:
        proc.close()
