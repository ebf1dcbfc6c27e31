"""``pairkit ttp``: init, a real ``serve`` subprocess, enroll, restart, list; errors and codes."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pairkit.cli.ttp_cli import SETTING_CA, SETTING_EUKEY, SETTING_SERVER, ttp
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.ttp import IntentRole
from pairkit.peers import local_identity
from pairkit.ttp import enrol, request_key
from tests.cli_helpers import KEYSTORE_PIN, ROOT, assert_no_traceback, cli_env
from tests.ttp_harness import TTP_CLI, ServeProcess


def make_keystore(home: Path, name: str) -> Keystore:
    cheap = Argon2Params.cheapest()
    return Keystore.create(home / "keystore.pk", KEYSTORE_PIN, name=name, kdf=cheap)


def test_init_makes_the_files_with_private_modes(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(ttp, ["init", "--dir", str(tmp_path / "srv"), "--host",
                                 "ttp.example.org", "--enrol-token", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] and "ttp.example.org" in out["hosts"] and "127.0.0.1" in out["hosts"]
    srv = tmp_path / "srv"
    for name in ("ca-key.pem", "server-key.pem", "seal.key", "enrol.token", "ttp.sqlite3"):
        assert stat.S_IMODE((srv / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(srv.stat().st_mode) == 0o700
    again = runner.invoke(ttp, ["init", "--dir", str(srv)])
    assert again.exit_code == 2
    assert "already holds a key server" in again.output


def test_serve_needs_an_initialised_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(ttp, ["serve", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "pairkit ttp init --dir" in result.output


def test_help_teaches() -> None:
    result = CliRunner().invoke(ttp, ["--help"])
    assert result.exit_code == 0
    for word in ("init", "serve", "enroll", "ca.pem"):
        assert word in result.output


async def run_module(home: Path | None, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *TTP_CLI, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(home),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert_no_traceback(" ".join(args), err.decode())
    return proc.returncode or 0, out.decode(), err.decode()


async def test_serve_subprocess_enroll_restart_and_pair(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    assert CliRunner().invoke(ttp, ["init", "--dir", str(srv)]).exit_code == 0
    ca = srv / "ca.pem"
    homes = {who: tmp_path / who for who in ("paul", "george")}
    stores = {who: make_keystore(home, f"{who}'s laptop") for who, home in homes.items()}

    server = await ServeProcess.start(srv)
    try:
        rc, out, err = await run_module(homes["paul"], "enroll", "--server", server.address,
                                        "--ca", str(ca), "--new-eukey", "--json")
        assert rc == 0, err
        paul = json.loads(out)
        assert paul["ok"] and paul["eukey"] and not paul["updated"]
        rc, _, err = await run_module(homes["george"], "enroll", "--server", server.address,
                                      "--ca", str(ca))
        assert rc == 0, err
    finally:
        log = await server.stop()
    assert "enrolled paul's laptop" in log and "key server stopping" in log
    assert "EUKey" not in log.replace("factory key", "")  # no secret, not even its name

    ks = Keystore.open(homes["paul"] / "keystore.pk", KEYSTORE_PIN)
    assert ks.setting(SETTING_SERVER) == server.address
    assert ks.setting(SETTING_CA) == str(ca.resolve())
    assert len(ks.setting(SETTING_EUKEY)) == 32

    # A new process on the same directory: the enrolments are still there.
    server = await ServeProcess.start(srv)
    try:
        rc, out, _ = await run_module(None, "list", "--dir", str(srv), "--json")
        names = sorted(d["name"] for d in json.loads(out)["devices"])
        assert names == ["george's laptop", "paul's laptop"]
        me = {who: local_identity(ks) for who, ks in stores.items()}
        ctx = b"\x33" * 32
        ka, kb = await asyncio.gather(
            request_key(server.address, ca, me["paul"], peer_id=me["george"].device_id,
                        context=ctx, role=IntentRole.HOST, wait=5),
            request_key(server.address, ca, me["george"], peer_id=me["paul"].device_id,
                        context=ctx, role=IntentRole.GUEST, wait=5),
        )
        assert ka.sk == kb.sk
        rc, out, _ = await run_module(homes["paul"], "enroll", "--server", server.address,
                                      "--ca", str(ca), "--json")
        assert rc == 0 and json.loads(out)["updated"] is True
    finally:
        log = await server.stop()
    assert "matched" in log
    assert ka.sk.hex() not in log


async def test_serve_quiet_logs_no_device_served(tmp_path: Path) -> None:
    """``serve -q`` shows the server's start and stop, not each device it serves."""
    assert CliRunner().invoke(ttp, ["init", "--dir", str(tmp_path / "srv")]).exit_code == 0
    server = await ServeProcess.start(tmp_path / "srv", "--quiet")
    try:
        await enrol(server.address, tmp_path / "srv" / "ca.pem", LocalIdentity.generate("dev"))
    finally:
        log = await server.stop()
    assert "pairkit key server listening on" in log and "key server stopping" in log
    assert "enrolled" not in log.replace("device(s) enrolled", "")


async def test_enroll_against_another_ca_fails_with_an_auth_exit_code(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(ttp, ["init", "--dir", str(tmp_path / "srv")]).exit_code == 0
    assert runner.invoke(ttp, ["init", "--dir", str(tmp_path / "evil")]).exit_code == 0
    make_keystore(tmp_path / "dev", "dev")
    server = await ServeProcess.start(tmp_path / "evil")  # a server the device's CA did not sign
    try:
        rc, _, err = await run_module(tmp_path / "dev", "enroll", "--server", server.address,
                                      "--ca", str(tmp_path / "srv" / "ca.pem"))
    finally:
        await server.stop()
    assert rc == 3
    assert err.startswith("error: refusing the key server")


@pytest.mark.parametrize(("args", "code", "text"), [
    (("enroll", "--server", "nonsense", "--ca", "{ca}"), 2, "is not HOST:PORT"),
    (("enroll", "--server", "127.0.0.1:9", "--ca", "{ca}"), 1, "cannot reach the key server"),
    (("enroll", "--server", "127.0.0.1:9", "--ca", "{ca}", "--eukey-file", "{ca}"), 2,
     "must hold an EUKey"),
])
async def test_enroll_errors(tmp_path: Path, args: tuple[str, ...], code: int, text: str) -> None:
    assert CliRunner().invoke(ttp, ["init", "--dir", str(tmp_path / "srv")]).exit_code == 0
    make_keystore(tmp_path / "dev", "dev")
    ca = str(tmp_path / "srv" / "ca.pem")
    rc, _, err = await run_module(tmp_path / "dev", *(a.format(ca=ca) for a in args))
    assert rc == code, err
    assert text in err
