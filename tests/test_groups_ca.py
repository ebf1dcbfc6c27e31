"""Group keys trusted through the key server's CA (issue 14): a controller and a door that never
paired, each enrolled with the same real key server process (``pairkit ttp enroll --cert``),
the key through a relay that paired with both; a device enrolled with another key server's CA
refuses the controller, and the controller refuses to add it by its certificate.  Every device
is its own process, the key servers too; keys travel over TCP.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pairkit.cli.group_cli import group
from pairkit.keyserver.certs import init_server_dir
from pairkit.keystore import Keystore

from .cli_helpers import (
    KEYSTORE_PIN,
    free_port,
    make_devices,
    run_cli,
    use_bytecode_cache,
)
from .group_harness import GROUP_CMD, NAMES_CA, TTP_CMD, Running, pair, stop_all
from .ttp_harness import ServeProcess

NAMES = NAMES_CA


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    await stop_all(procs)

async def test_a_controller_trusted_through_the_ca_and_a_member_of_another_ca_refuses(
    tmp_path: Path, running: list[Running],
) -> None:
    use_bytecode_cache(tmp_path / "pycache")
    dev = make_devices(tmp_path, NAMES)
    ours, theirs = init_server_dir(tmp_path / "ttp-a"), init_server_dir(tmp_path / "ttp-b")
    server_a, server_b = await ServeProcess.start(ours.root), await ServeProcess.start(
        theirs.root)
    try:
        for key, d in (("ctl", ours), ("door", ours), ("stranger", theirs)):
            server = server_a if d is ours else server_b
            enrolled = await run_cli(dev[key].home, "enroll", "--server", server.address,
                                     "--ca", str(d.ca_cert), "--cert", "--json", cmd=TTP_CMD)
            assert "cert_valid_until" in enrolled.ok().json(), key
    finally:
        log_a = await server_a.stop()
        await server_b.stop()
    assert "certified controller" in log_a and "certified door-1" in log_a

    # Hop by hop: the relay paired with everyone; the controller with the relay and, only to
    # show that a pairing does not override a certificate that fails, with the stranger.
    # The controller and door-1 never meet.
    door_port, relay_port, stranger_port = free_port(), free_port(), free_port()
    await pair(dev["relay"], dev["ctl"], relay_port, "482913")
    await pair(dev["door"], dev["relay"], door_port, "507264")
    await pair(dev["stranger"], dev["relay"], stranger_port, "639180")
    await pair(dev["stranger"], dev["ctl"], stranger_port, "615243")
    peers = (await dev["ctl"].run("peers", "--json")).ok().json()["peers"]
    assert "door-1" not in {p["name"] for p in peers}

    door_pem, stranger_pem = tmp_path / "door.pem", tmp_path / "stranger.pem"
    shown = (await run_cli(dev["door"].home, "cert", "-o", str(door_pem), "--json",
                           cmd=GROUP_CMD)).ok().json()
    assert shown["name"] == "door-1" and door_pem.read_text().startswith("-----BEGIN")
    (await run_cli(dev["stranger"].home, "cert", "-o", str(stranger_pem), cmd=GROUP_CMD)).ok()

    for key, port in (("door", door_port), ("stranger", stranger_port)):
        member = await Running.start(dev[key], "listen", "doors", "-t",
                                     f"tcp:127.0.0.1:{port}", "--json", "--timeout", "90")
        running.append(member)
        await member.wait("start", lambda m=member: any("listening on" in x for x in m.err))
    relay = await Running.start(dev["relay"], "relay", "-t", f"tcp:127.0.0.1:{relay_port}",
                                "--retry", "0.2", "--json")
    running.append(relay)
    await relay.wait("start", lambda: any("relaying on" in x for x in relay.err))

    ctl = dev["ctl"].home
    created = (await run_cli(ctl, "create", "doors", "--trust", "ca", "--json",
                             cmd=GROUP_CMD)).ok().json()
    assert created == {"ok": True, "group": "doors", "epoch": 1, "trust": "ca"}
    added = (await run_cli(ctl, "add", "doors", "--cert", str(door_pem), "--via", "relay",
                           "--json", cmd=GROUP_CMD)).ok().json()
    assert added["deliveries"][0]["name"] == "door-1"
    # The stranger's certificate is from another CA: the controller will not add it by it.
    refused = await run_cli(ctl, "add", "doors", "--cert", str(stranger_pem), "--json",
                            cmd=GROUP_CMD)
    assert refused.rc == 3, refused
    assert "not issued by the CA this device trusts" in refused.err
    # Added as the paired peer it is, it refuses the controller: its CA did not issue the
    # controller's certificate.
    direct = (await run_cli(ctl, "add", "doors", "stranger", "--json",
                            cmd=GROUP_CMD)).ok().json()
    row = next(d for d in direct["deliveries"] if d["name"] == "stranger")
    assert row["state"] == "pending" and row["status"].startswith("refused by the member: ")
    assert "certificate was not issued by the CA this device trusts" in row["status"]

    synced = await run_cli(ctl, "sync", "doors", "--attempts", "4", "--backoff", "0.2",
                           "--json", cmd=GROUP_CMD)
    assert synced.rc == 4, synced  # the stranger: unreachable
    assert {d["name"]: d["state"] for d in synced.json()["deliveries"]}["stranger"] == (
        "unreachable")
    status = (await run_cli(ctl, "status", "doors", "--json", cmd=GROUP_CMD)).ok().json()
    (doors,) = status["controls"]
    assert doors["trust"] == "ca"
    assert {m["name"]: m["state"] for m in doors["members"]} == {
        "door-1": "confirmed", "stranger": "unreachable"}
    assert "not issued by the CA" in next(m["last"] for m in doors["members"]
                                          if m["name"] == "stranger")
    door = running[0]
    await door.wait("key", lambda: any(e["event"] == "key" for e in door.events))
    key = next(e for e in door.events if e["event"] == "key")
    assert (key["group"], key["epoch"], key["from"]) == ("doors", 1, "relay")
    stranger_ks = Keystore.open(dev["stranger"].home / "keystore.pk", KEYSTORE_PIN)
    assert stranger_ks.group_epochs("doors") == ()


def test_ca_trust_needs_a_certificate_and_cert_files_are_checked(tmp_path: Path) -> None:
    from pairkit.keystore import Argon2Params

    Keystore.create(tmp_path / "keystore.pk", KEYSTORE_PIN, name="solo",
                    kdf=Argon2Params.cheapest())
    env = {"PAIRKIT_HOME": str(tmp_path), "PAIRKIT_PIN": KEYSTORE_PIN}

    def run(*args: str) -> Any:
        return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)

    no_cert = run("create", "doors", "--trust", "ca")
    assert no_cert.exit_code == 2 and "ttp enrol" in no_cert.output and "--cert" in no_cert.output
    assert run("create", "doors", "--trust", "nobody").exit_code == 2
    assert run("cert").exit_code == 6
    assert run("create", "doors").exit_code == 0
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    bad = run("add", "doors", "--cert", str(junk))
    assert bad.exit_code == 2 and "is not a certificate" in bad.output
    both = run("add", "doors", "someone", "--cert", str(junk))
    assert both.exit_code == 2 and "not both" in both.output
    neither = run("add", "doors")
    assert neither.exit_code == 2 and "name the member" in neither.output
    big = tmp_path / "big.der"
    big.write_bytes(b"\x30" * 20000)
    assert "too large" in run("add", "doors", "--cert", str(big)).output
    for result in (no_cert, bad, both, neither):
        assert "Traceback" not in result.output


#: a cap on the address space of the ``group add`` process below: a read of the whole of
#: /dev/zero or of a 1 GiB file ends in a MemoryError under it, not in a machine out of memory
MEMORY_CAP = ("prlimit", f"--as={800 * 2**20}")


@pytest.mark.skipif(shutil.which("prlimit") is None or not hasattr(os, "mkfifo"),
                    reason="needs prlimit (util-linux) and FIFOs")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "sparse-1GiB"])
async def test_a_cert_file_is_sized_before_it_is_read(tmp_path: Path, kind: str) -> None:
    """``group add --cert FILE`` read the whole file before checking its size: a FIFO nobody
    writes to held it for ever, and /dev/zero or a large file filled its memory.  The file
    must be a regular one, its size is checked before a byte is read, and the read is bounded
    (session 19 doubt, fixed in session 20)."""
    from pairkit.keystore import Argon2Params

    Keystore.create(tmp_path / "keystore.pk", KEYSTORE_PIN, name="solo",
                    kdf=Argon2Params.cheapest())
    (await run_cli(tmp_path, "create", "doors", cmd=GROUP_CMD)).ok()
    path = {"fifo": tmp_path / "cert.fifo", "dev-zero": Path("/dev/zero"),
            "sparse-1GiB": tmp_path / "sparse.der"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse-1GiB":
        with open(path, "wb") as fh:
            fh.truncate(2**30)
    refused = await run_cli(tmp_path, "add", "doors", "--cert", str(path),
                            cmd=(*MEMORY_CAP, *GROUP_CMD))
    assert refused.rc == 2 and refused.err.startswith("error: "), refused
    said = "too large" if kind == "sparse-1GiB" else "not a regular file"
    assert str(path) in refused.err and said in refused.err, refused
