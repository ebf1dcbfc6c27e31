"""Small files a person names are sized before they are read (session 20, after the bounded
read of ``group add --cert``): a key server's CA (``ttp enrol --ca``, and the path kept from
it), a factory key (``--eukey-file``), an enrolment token (``--token-file``, and a key server's
own ``enrol.token``).  A FIFO nobody writes to held each of them for ever, /dev/zero or a large
file filled memory; each must be refused, naming the file, before a byte is read.  Session 21
(atk21 finding 6): the keystore's ``--pin-file`` and ``$PAIRKIT_HOME/config.toml`` too; a PIN
file may still be a pipe (``--pin-file <(...)``), read no further than its limit.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from pairkit.keyserver.certs import init_server_dir
from pairkit.keystore import Argon2Params, Keystore

from .cli_helpers import KEYSTORE_PIN, PAIRKIT_CMD, run_cli

#: a cap on the address space of the processes below: a read of the whole of /dev/zero or of
#: a 1 GiB file ends in a MemoryError under it, not in a machine out of memory
MEMORY_CAP = ("prlimit", f"--as={800 * 2**20}")
KINDS = ["fifo", "dev-zero", "sparse-1GiB"]

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None or not hasattr(os, "mkfifo"),
                                reason="needs prlimit (util-linux) and FIFOs")


def bad_file(tmp_path: Path, kind: str) -> Path:
    """A FIFO nobody writes to, /dev/zero, or a sparse file of 1 GiB."""
    if kind == "dev-zero":
        return Path("/dev/zero")
    path = tmp_path / f"bad.{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as fh:
            fh.truncate(2**30)
    return path


def said(kind: str) -> str:
    return "too large" if kind == "sparse-1GiB" else "not a regular file"


def make_keystore(home: Path) -> Keystore:
    return Keystore.create(home / "keystore.pk", KEYSTORE_PIN, name="solo",
                           kdf=Argon2Params.cheapest())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", ["--ca", "--eukey-file", "--token-file"])
async def test_ttp_enrol_files_are_sized_before_they_are_read(
    tmp_path: Path, option: str, kind: str
) -> None:
    """``pairkit ttp enrol`` read its --ca (through OpenSSL), --eukey-file and --token-file
    whole: each is refused (exit 2, the file named) before the key server is dialled (the
    server given listens nowhere, so a refusal can only come from the file)."""
    make_keystore(tmp_path)
    path = bad_file(tmp_path, kind)
    good_ca = tmp_path / "ca.pem"
    good_ca.write_text("not dialled\n")
    files = {"--ca": str(good_ca), option: str(path)}
    args = [a for pair in files.items() for a in pair]
    refused = await run_cli(tmp_path, "ttp", "enrol", "--server", "127.0.0.1:9", *args,
                            cmd=(*MEMORY_CAP, *PAIRKIT_CMD))
    assert refused.rc == 2 and refused.err.startswith("error: "), refused
    assert str(path) in refused.err and said(kind) in refused.err, refused


@pytest.mark.parametrize("kind", KINDS)
async def test_a_kept_ca_path_is_sized_before_it_is_read(tmp_path: Path, kind: str) -> None:
    """The CA path ``ttp enrol`` kept in the keystore is read again (``group cert``, group
    keys trusted through the CA) when no copy of the CA is kept: a file since replaced by a
    FIFO or a huge one is not a CA (no certificate), it does not hang or fill memory."""
    path = bad_file(tmp_path, kind)
    ks = make_keystore(tmp_path)
    with ks.update():
        ks.set_setting("ttp.ca", str(path))
    result = await run_cli(tmp_path, "group", "cert", cmd=(*MEMORY_CAP, *PAIRKIT_CMD))
    assert result.rc != 0 and "no certificate yet" in result.err, result
    assert "MemoryError" not in result.err, result


@pytest.mark.parametrize("kind", KINDS)
async def test_a_key_servers_token_file_is_sized_before_it_is_read(
    tmp_path: Path, kind: str
) -> None:
    """``pairkit ttp serve --dir D`` reads D/enrol.token: a FIFO or a huge file put there is
    refused before the server listens."""
    d = init_server_dir(tmp_path / "ttp", enrol_token=True)
    path = bad_file(tmp_path, kind)
    d.token.unlink()
    d.token.symlink_to(path)
    refused = await run_cli(None, "ttp", "serve", "--dir", str(d.root), "--listen",
                            "127.0.0.1:0", cmd=(*MEMORY_CAP, *PAIRKIT_CMD))
    assert refused.rc == 2 and refused.err.startswith("error: "), refused
    assert str(d.token) in refused.err and said(kind) in refused.err, refused


async def test_a_key_servers_sealing_key_is_sized_before_it_is_read(tmp_path: Path) -> None:
    """``pairkit ttp serve --dir D`` reads D/seal.key (32 bytes): a 1 GiB file put there is
    refused before the server listens, not read whole (a FIFO or /dev/zero there is refused
    as a missing file already: the directory's files must be regular ones)."""
    d = init_server_dir(tmp_path / "ttp")
    with open(d.seal_key, "r+b") as fh:
        fh.truncate(2**30)
    refused = await run_cli(None, "ttp", "serve", "--dir", str(d.root), "--listen",
                            "127.0.0.1:0", cmd=(*MEMORY_CAP, *PAIRKIT_CMD))
    assert refused.rc == 2 and refused.err.startswith("error: "), refused
    assert str(d.seal_key) in refused.err and "too large" in refused.err, refused


#: what a ``--pin-file`` may be, and what the command says of each: a FIFO or a pipe is read
#: (``--pin-file <(pass show pairkit)``), at most a few KiB of it
PIN_FILE_REFUSALS = {
    "dev-zero": "not a regular file or a pipe",
    "sparse-1GiB": "too large",
    "not-utf8": "not UTF-8 text",
}


def pin_file(tmp_path: Path, kind: str) -> Path:
    if kind == "not-utf8":
        path = tmp_path / "pin.latin1"
        path.write_bytes("passé-135790\n".encode("latin-1"))
        return path
    return bad_file(tmp_path, kind)


@pytest.mark.parametrize("kind", sorted(PIN_FILE_REFUSALS))
@pytest.mark.parametrize("command", ["whoami", "init"])
async def test_a_pin_file_is_sized_before_it_is_read(
    tmp_path: Path, command: str, kind: str
) -> None:
    """``--pin-file`` was read whole (atk21 finding 6): /dev/zero under a memory limit ended in
    a MemoryError, a FIFO nobody writes to held the command for ever.  Each is refused with a
    usage error naming the file, before the keystore is opened or made."""
    home = tmp_path / "home"
    home.mkdir()
    if command == "whoami":
        make_keystore(home)
    path = pin_file(tmp_path, kind)
    refused = await run_cli(home, command, "--pin-file", str(path), pin=None,
                            cmd=(*MEMORY_CAP, *PAIRKIT_CMD))
    assert refused.rc == 2 and refused.err.startswith("error: "), refused
    assert f"the PIN file {path}" in refused.err, refused
    assert PIN_FILE_REFUSALS[kind] in refused.err, refused
    if command == "init":
        assert not (home / "keystore.pk").exists()


def with_pipe(writer: str) -> tuple[str, ...]:
    """``pairkit ARGS --pin-file <(WRITER)`` as bash runs it, under the memory cap."""
    return (*MEMORY_CAP, "bash", "-c", f'exec "$@" --pin-file <({writer})', "bash", *PAIRKIT_CMD)


async def test_a_pin_file_may_be_a_pipe_of_a_few_kib_at_most(tmp_path: Path) -> None:
    """Process substitution (a pipe named /dev/fd/N) keeps working, and so does a named FIFO
    whose writer comes after the command opened it; a pipe that never ends is read no further
    than the limit, then refused."""
    made = await run_cli(tmp_path, "init", "--name", "piped", "--json", pin=None,
                         cmd=with_pipe(f"echo {KEYSTORE_PIN}"))
    made.ok()
    opened = await run_cli(tmp_path, "whoami", "--json", pin=None,
                           cmd=with_pipe(f"printf '{KEYSTORE_PIN}\\r\\n'"))
    assert opened.ok().json()["id"] == made.json()["id"]
    endless = await run_cli(tmp_path, "whoami", pin=None,
                            cmd=with_pipe(f"yes {KEYSTORE_PIN}"))
    assert endless.rc == 2 and endless.err.startswith("error: the PIN file /dev/fd/"), endless
    assert "too large" in endless.err, endless

    fifo = tmp_path / "pin.fifo"
    os.mkfifo(fifo)
    # the writer's open waits for the command's (no sleep: the order is the kernel's)
    writer = threading.Thread(target=fifo.write_text, args=(f"{KEYSTORE_PIN}\n",))
    writer.start()
    try:
        named = await run_cli(tmp_path, "whoami", "--json", "--pin-file", str(fifo), pin=None)
    finally:
        if writer.is_alive():  # the command never opened it: let the writer's open end
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join()
    assert named.ok().json()["id"] == made.json()["id"]


@pytest.mark.parametrize("kind", KINDS)
async def test_config_toml_is_sized_before_it_is_read(tmp_path: Path, kind: str) -> None:
    """``$PAIRKIT_HOME/config.toml`` (read by every command that picks a transport) was read
    whole too: a link from it to a FIFO, /dev/zero or a huge file is refused, naming it."""
    make_keystore(tmp_path)
    path = bad_file(tmp_path, kind)
    (tmp_path / "config.toml").symlink_to(path)
    refused = await run_cli(tmp_path, "whoami", cmd=(*MEMORY_CAP, *PAIRKIT_CMD))
    assert refused.rc == 2 and refused.err.startswith("error: "), refused
    assert str(tmp_path / "config.toml") in refused.err and said(kind) in refused.err, refused
