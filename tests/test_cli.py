"""End to end: the ``pairkit`` command as a user runs it, each device a real process.

Every device has its own ``PAIRKIT_HOME`` (a copy of a keystore made once per session by a real
``pairkit init``); hosts listen on port 0 and say where (no port is guessed); every wait has a
deadline (tests/cli_helpers.py) and every host is interrupted in teardown.  No command may print
a traceback: the helpers check every stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cbor2
from PIL import Image

from pairkit.keystore import Keystore
from pairkit.pairing.framing import fragment
from pairkit.pairing.messages import NONCE_LEN, Reveal

from .cli_helpers import (
    KEYSTORE_PIN,
    MODULE_CMD,
    Device,
    HostProcess,
    Lab,
    free_port,
    run_cli,
)

PIN = "482913"
SUBCOMMANDS = ("init", "whoami", "peers", "forget", "host", "join")


def their_prekeys(device: Device, peer: str) -> list[bytes]:
    """The prekey digests ``device`` holds for ``peer`` (read from its keystore file)."""
    ks = Keystore.open(device.home / "keystore.pk", KEYSTORE_PIN)
    return list(ks.get_peer(peer).their_prekeys)



def tcp_frame(message: bytes) -> bytes:
    """``message`` as the TCP transport and the handshake driver frame it (one fragment)."""
    (piece,) = fragment(message, 65535)
    return len(piece).to_bytes(4, "big") + piece


async def raw_guest(
    host: HostProcess, data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Connect a plain TCP socket to the host and send ``data``; (reader, writer, our address)."""
    address, port = host.address.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, int(port)), 5)
    ours = "{}:{}".format(*writer.get_extra_info("sockname")[:2])
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer, ours


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), 5)


# -- the command itself ------------------------------------------------------------------------


async def test_help_for_every_subcommand_and_version(tmp_path: Path) -> None:
    home = tmp_path / "unused"
    main, *subs = await asyncio.gather(
        run_cli(home, "--help"), *(run_cli(home, s, "--help") for s in SUBCOMMANDS)
    )
    assert main.rc == 0 and main.out.startswith("Usage: pairkit")
    for name in SUBCOMMANDS:
        assert name in main.out
    for name, result in zip(SUBCOMMANDS, subs, strict=True):
        assert result.rc == 0, result
        assert result.out.startswith(f"Usage: pairkit {name}"), result
        assert "--help" in result.out
    host_help = subs[SUBCOMMANDS.index("host")].out
    for option in ("--transport", "--method", "--pin", "--qr-png", "--qr-ttl", "--allow-insecure",
                   "--timeout", "--json", "--yes"):
        assert option in host_help
    join_help = subs[SUBCOMMANDS.index("join")].out
    for option in ("--qr", "--qr-image", "--pin", "--allow-insecure", "--ask-any-host", "--json"):
        assert option in join_help
    # The console script and ``python -m cli.main`` are the same command.
    script, module, unknown = await asyncio.gather(
        run_cli(home, "--version"), run_cli(home, "--version", cmd=MODULE_CMD),
        run_cli(home, "frobnicate"),
    )
    assert script.rc == module.rc == 0
    assert re.fullmatch(r"pairkit, version \S+\n", script.out), script
    assert script.out == module.out
    assert unknown.rc == 2 and "No such command 'frobnicate'" in unknown.err
    assert not home.exists(), "--help and --version must not create a keystore"


async def test_init_twice_is_refused_and_keeps_the_identity(tmp_path: Path) -> None:
    home = tmp_path / "dev"
    first = (await run_cli(home, "init", "--name", "Dev", "--json")).ok().json()
    assert first["ok"] is True and first["name"] == "Dev"
    assert first["keystore"] == str(home / "keystore.pk")
    before = (home / "keystore.pk").read_bytes()
    again = await run_cli(home, "init", "--name", "Other")
    assert again.rc == 2, again
    assert again.err.startswith("error: an identity already exists"), again
    assert "--force" in again.err
    assert (home / "keystore.pk").read_bytes() == before
    assert (await run_cli(home, "whoami", "--json")).ok().json()["id"] == first["id"]


async def test_init_with_pin_file_and_keystore_pin_errors(tmp_path: Path) -> None:
    home = tmp_path / "dev"
    pin_file = tmp_path / "pin.txt"
    pin_file.write_text("correct horse battery\n", encoding="utf-8")
    made = await run_cli(home, "init", "--name", "Filed", "--pin-file", str(pin_file), "--json",
                         pin=None)
    made.ok()
    right, wrong, locked = await asyncio.gather(
        # the file's trailing newline is not part of the PIN
        run_cli(home, "whoami", "--json", pin="correct horse battery"),
        run_cli(home, "whoami", pin="correct horse batter"),
        run_cli(home, "whoami", pin=None),
    )
    assert right.ok().json()["id"] == made.json()["id"]
    assert wrong.rc == 3 and wrong.err.startswith("error: wrong PIN"), wrong
    assert locked.rc != 0 and "set PAIRKIT_PIN" in locked.err, locked
    # PINs that cannot be used: nothing is created, and the message says why.
    empty, short = tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.write_text("\n", encoding="utf-8")
    short.write_text("12345\n", encoding="utf-8")
    other = tmp_path / "other"
    results = await asyncio.gather(
        run_cli(other, "init", "--pin-file", str(empty), pin=None),
        run_cli(other, "init", "--pin-file", str(short), pin=None),
        run_cli(other, "init", "--pin-file", str(tmp_path / "missing.txt"), pin=None),
        run_cli(other, "init", pin=None),  # no file, no PAIRKIT_PIN, no terminal
    )
    for result, text in zip(results, ("is empty", "at least 6", "cannot read the PIN file",
                                      "no terminal"), strict=True):
        assert result.rc == 2 and text in result.err and result.err.startswith("error: "), result
    assert not (other / "keystore.pk").exists()


async def test_whoami_json(lab: Lab) -> None:
    paul = lab.device("paul")
    data, text = await asyncio.gather(paul.whoami(), paul.run("whoami"))
    assert set(data) == {"ok", "id", "name", "fingerprint", "keystore", "transport",
                         "transport_from"}
    assert data["ok"] is True and data["name"] == "Paul's phone"
    assert re.fullmatch(r"[0-9a-f]{32}", data["id"])
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){15}", data["fingerprint"])
    assert data["fingerprint"].replace("-", "").startswith(data["id"])
    assert data["keystore"] == str(paul.home / "keystore.pk")
    text.ok()
    assert f"id:          {data['id']}" in text.out and data["fingerprint"] in text.out


async def test_wrong_keystore_pin_and_missing_keystore(lab: Lab, tmp_path: Path) -> None:
    paul = lab.device("paul")
    nobody = tmp_path / "nobody"
    commands = [("whoami",), ("host", "-t", "tcp:127.0.0.1:0", "--once"),
                ("join", "tcp:127.0.0.1:9", "-m", "pin", "--pin", PIN)]
    wrong = await asyncio.gather(*(paul.run(*c, pin="4321") for c in commands))
    missing = await asyncio.gather(*(run_cli(nobody, *c) for c in [("peers",), *commands[1:]]))
    for result in wrong:
        assert result.rc == 3 and result.err.startswith("error: wrong PIN"), result
        assert result.out == ""
    for result in missing:
        assert result.rc != 0 and result.err.startswith("error: no identity at"), result
        assert "run 'pairkit init'" in result.err
    assert not nobody.exists()


# -- PIN -----------------------------------------------------------------------------------------


async def test_pin_pairing_across_processes(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "compare", "-m", "resume", "--pin", PIN,
                          "--yes", "--json")
    assert await host.pin() == PIN
    mark = host.mark()
    joined = (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok().json()
    hosted = await host.next_result()
    paul_id, george_id = await asyncio.gather(paul.whoami(), george.whoami())
    assert joined["ok"] is hosted["ok"] is True
    assert joined["method"] == hosted["method"] == "pin"
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}", joined["session"])
    assert joined["session"] == hosted["session"]
    assert joined["peer"]["id"] == paul_id["id"]
    assert joined["peer"]["fingerprint"] == paul_id["fingerprint"]
    assert joined["peer"]["name"] == "Paul's phone"
    assert hosted["peer"]["id"] == george_id["id"]
    assert hosted["peer"]["fingerprint"] == george_id["fingerprint"]
    # A PIN is single use: the host shows a fresh one for the next guest.
    assert await host.pin(since=mark) != PIN
    on_george, on_paul, text = await asyncio.gather(george.peers(), paul.peers(),
                                                    paul.run("peers"))
    assert [(p["id"], p["authenticated"], p["method"]) for p in on_george] == [
        (paul_id["id"], True, "pin")]
    assert [(p["id"], p["authenticated"], p["method"]) for p in on_paul] == [
        (george_id["id"], True, "pin")]
    assert on_george[0]["prekeys"] == on_paul[0]["prekeys"] == 8
    assert "George's phone" in text.ok().out and "unauthenticated" not in text.out
    # Ctrl-C ends the host cleanly: a message and exit 130, no traceback.
    assert await host.stop() == 130
    assert "error: interrupted" in host.stderr


def fresh_line(host: object, pin: str) -> str:
    """The host's stderr line that showed ``pin``."""
    return next(line for line in host.lines if line.startswith(f"PIN: {pin}"))  # type: ignore[attr-defined]


async def test_wrong_pin_stores_nothing_and_the_host_carries_on(lab: Lab) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    bad = await george.join(host.target, "-m", "pin", "--pin", "111222", "--json")
    assert bad.rc == 3, bad
    assert bad.err.startswith("error: wrong PIN"), bad
    assert bad.out == ""
    await host.wait_for(r"^error: guest \S+: .*wrong PIN")
    # The PIN was good for that one attempt: the old one is refused, a new one is shown (as
    # soon as that pairing is over, which may be before its error line).
    asked = (await host.wait_for(r"asks to join")).string
    since = host.lines.index(asked)
    fresh = (await host.wait_for(r"^PIN: (\d{6})", since=since)).group(1)
    again = await ringo.join(host.target, "-m", "pin", "--pin", PIN, "--json")
    assert again.rc != 0 and PIN not in again.err, again
    await host.wait_for(r"^PIN: (\d{6})", since=host.lines.index(fresh_line(host, fresh)) + 1)
    newest = [m.group(1) for line in host.lines if (m := re.match(r"^PIN: (\d{6})", line))][-1]
    good = (await ringo.join(host.target, "-m", "pin", "--pin", newest, "--json")).ok().json()
    hosted = await host.next_result()
    assert good["session"] == hosted["session"]
    assert hosted["peer"]["name"] == "Ringo's tablet"
    on_george, on_paul = await asyncio.gather(george.peers(), paul.peers())
    assert on_george == []
    assert [p["name"] for p in on_paul] == ["Ringo's tablet"]
    assert host.proc.returncode is None


async def test_pin_lockout_after_five_wrong_guesses(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes")
    # A shown PIN is good for one attempt, so each guess is made against the PIN on show then
    # (guesses made at once find no PIN active: they are refused without being tried).
    for i in range(5):
        result = await george.join(host.target, "-m", "pin", "--pin", f"90000{i}")
        assert result.rc == 3 and "wrong PIN" in result.err, result
        # The host counts a failure when it sees the guest give up, then shows a new PIN.
        await host.wait_count(r"^error: guest .*wrong PIN", i + 1)
        await host.wait_count(r"^PIN: \d{6}", i + 2)
    shown = [m.group(1) for line in host.lines if (m := re.match(r"^PIN: (\d{6})", line))][-1]
    sixth, right = await asyncio.gather(
        george.join(host.target, "-m", "pin", "--pin", "900005"),
        george.join(host.target, "-m", "pin", "--pin", shown),  # even the right PIN, for now
    )
    for result in (sixth, right):
        assert result.rc == 5, result
        assert "locked" in result.err and "PINs on the two devices differ" not in result.err
    await host.wait_count(r"^error: guest .*locked", 2)


# -- QR ------------------------------------------------------------------------------------------


async def test_qr_uri_pairs_once(lab: Lab) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host = await lab.host(paul, "-m", "qr", "--yes", "--json")
    uri = await host.qr_uri()
    assert f"h={host.address}" in uri
    mark = host.mark()
    joined = (await george.join(host.target, "--qr", uri, "--json")).ok().json()
    hosted = await host.next_result()
    assert joined["method"] == hosted["method"] == "qr"
    assert joined["session"] == hosted["session"]
    assert joined["peer"]["id"] == (await paul.whoami())["id"]
    # The code is spent: the host shows a fresh one, and the old one is refused.
    fresh = await host.qr_uri(since=mark)
    assert fresh != uri
    mark = host.mark()
    reused = await ringo.join(host.target, "--qr", uri)
    assert reused.rc == 5, reused
    assert "already used" in reused.err, reused
    await host.wait_for(r"^error: guest .*already used", since=mark)
    assert await ringo.peers() == []
    # The host serves guests one after another: the next one pairs with the fresh code.
    second = (await ringo.join(host.target, "--qr", fresh, "--json")).ok().json()
    assert second["session"] == (await host.next_result())["session"]


async def test_qr_image_written_by_the_host_is_read_by_the_guest(lab: Lab, tmp_path: Path) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    png = tmp_path / "qr.png"
    host = await lab.host(paul, "-m", "qr", "--qr-png", str(png), "--yes", "--json")
    await host.wait_for(r"QR code written to")
    uri = await host.qr_uri()
    joined = (await george.join(host.target, "--qr-image", str(png), "--json")).ok().json()
    hosted = await host.next_result()
    assert joined["method"] == "qr" and joined["session"] == hosted["session"]
    # The picture held that very code: it is now used up.
    assert "already used" in (await george.join(host.target, "--qr", uri)).err
    # Pictures without a code: a plain error before any connection.
    blank, text = tmp_path / "blank.png", tmp_path / "not-a-picture.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    text.write_text("hello", encoding="utf-8")
    none, garbage = await asyncio.gather(
        george.join(host.target, "--qr-image", str(blank)),
        george.join(host.target, "--qr-image", str(text)),
    )
    assert none.rc != 0 and "no QR code found" in none.err, none
    assert garbage.rc != 0 and "cannot read" in garbage.err, garbage


async def test_expired_qr_is_refused_by_guest_and_by_host(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "qr", "--qr-ttl", "1", "--yes")
    uri = await host.qr_uri()
    assert "QR code (valid 1 s)" in host.stderr
    expires = int(parse_qs(urlsplit(uri).query)["x"][0])
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    mark = host.mark()
    stale = await george.join(host.target, "--qr", uri)
    assert stale.rc != 0 and "expired" in stale.err, stale
    # A guest whose clock is wrong (here: a code whose expiry was pushed out) still meets
    # the host's own check.
    forged = re.sub(r"([?&])x=\d+", r"\g<1>x=9999999999", uri)
    late = await george.join(host.target, "--qr", forged)
    assert late.rc != 0 and "expired" in late.err, late
    await host.wait_for(r"^error: guest .*expired", since=mark)
    assert await george.peers() == []


# -- compare and clear -----------------------------------------------------------------------


async def test_compare_with_yes_on_both_sides(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "compare", "--yes", "--json")
    # Without --yes and without a terminal the guest cannot confirm: it refuses, stores nothing.
    unsure = await george.join(host.target, "-m", "compare")
    assert unsure.rc == 5 and "not confirmed" in unsure.err, unsure
    assert await george.peers() == []
    mark = host.mark()
    joined = await george.join(host.target, "-m", "compare", "--yes", "--json")
    data = joined.ok().json()
    hosted = await host.next_result()
    assert data["method"] == hosted["method"] == "compare"
    assert data["session"] == hosted["session"]
    guest_code = re.search(r"Confirmation code: (\d{3} \d{3})", joined.err)
    assert guest_code is not None, joined
    host_code = await host.wait_for(r"Confirmation code: (\d{3} \d{3})", since=mark)
    assert guest_code.group(1) == host_code.group(1)
    assert (await george.peers())[0]["authenticated"] is True


async def test_clear_over_tcp_needs_allow_insecure_on_both_sides(lab: Lab) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    strict, lax = await asyncio.gather(
        lab.host(paul, "-m", "clear", "--yes", "--json"),
        lab.host(ringo, "-m", "clear", "--allow-insecure", "--yes", "--json"),
    )
    no_flag, guest_only, host_only = await asyncio.gather(
        george.join(strict.target, "-m", "clear"),
        george.join(strict.target, "-m", "clear", "--allow-insecure"),
        george.join(lax.target, "-m", "clear"),
    )
    for result in (no_flag, guest_only, host_only):
        assert result.rc != 0 and "--allow-insecure" in result.err, result
        assert "encrypted" in result.err
    await strict.wait_for(r"^error: guest .*--allow-insecure")
    assert await george.peers() == []
    joined = await george.join(lax.target, "-m", "clear", "--allow-insecure", "--json")
    data = joined.ok().json()
    hosted = await lax.next_result()
    assert data["method"] == hosted["method"] == "clear"
    assert data["session"] == hosted["session"]
    assert data["peer"]["authenticated"] is hosted["peer"]["authenticated"] is False
    assert "warning:" in joined.err and "not encrypted" in joined.err
    await lax.wait_for(r"^warning: .*not encrypted")
    on_george, on_ringo, text = await asyncio.gather(george.peers(), ringo.peers(),
                                                     ringo.run("peers"))
    assert [(p["name"], p["authenticated"]) for p in on_george] == [("Ringo's tablet", False)]
    assert [(p["name"], p["authenticated"]) for p in on_ringo] == [("George's phone", False)]
    assert "(unauthenticated)" in text.ok().out


# -- resume and forget -----------------------------------------------------------------------


async def test_resume_by_name_through_all_prekeys_and_the_kk_fallback(
    lab: Lab, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--pin", PIN, "--yes", "--json")
    (await george.join(host.target, "-m", "pin", "--pin", PIN)).ok()
    await host.next_result()
    backup = tmp_path / "george-backup"
    shutil.copytree(george.home, backup)
    original = their_prekeys(george, "Paul's phone")
    assert len(original) == 8

    async def resume(expected: str) -> str:
        # By name, no method, no --yes, no terminal: a known peer resumes without asking.
        joined = (await george.join("Paul's phone", "--json")).ok().json()
        hosted = await host.next_result()
        assert joined["method"] == hosted["method"] == expected, (joined, hosted)
        assert joined["session"] == hosted["session"]
        assert hosted["peer"]["name"] == "George's phone"
        return str(joined["session"])

    sessions = {await resume("resume") for _ in range(8)}
    assert len(sessions) == 8
    # Each resume used one prekey and the host gave a fresh one: all 8 first ones are gone.
    now = their_prekeys(george, "Paul's phone")
    assert len(now) == 8 and not set(now) & set(original)
    # A guest restored from a backup nominates prekeys the host has used: Noise KK instead,
    # which renews the prekeys, so the next one resumes again.
    shutil.rmtree(george.home)
    shutil.copytree(backup, george.home)
    await resume("kk")
    assert not set(their_prekeys(george, "Paul's phone")) & set(original)
    await resume("resume")
    # No prekey left at all: KK straight away.
    ks = Keystore.open(george.home / "keystore.pk", KEYSTORE_PIN)
    ks.add_peer(dataclasses.replace(ks.get_peer("Paul's phone"), their_prekeys=[]))
    ks.save()
    await resume("kk")
    assert len(their_prekeys(george, "Paul's phone")) == 8


async def test_forget_then_resume_fails_clearly(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--pin", PIN, "--yes", "--json")
    (await george.join(host.target, "-m", "pin", "--pin", PIN)).ok()
    await host.next_result()
    # The host forgets the guest (while stopped: one process owns a keystore at a time),
    # then listens again where the guest knows to find it.
    assert await host.stop() == 130
    forgot = (await paul.run("forget", "George's phone")).ok()
    assert "forgot" in forgot.err
    again = await lab.host(paul, "-m", "resume", "--yes", "--json", transport=host.target)
    refused = await george.join("Paul's phone")
    assert refused.rc == 6, refused
    assert "does not know" in refused.err, refused
    await again.wait_for(r"^error: guest .*does not know")
    # The guest forgets the host: joining it by name now says what to do instead.
    (await george.run("forget", "Paul's phone")).ok()
    unknown, nobody = await asyncio.gather(george.join("Paul's phone"),
                                           george.run("forget", "Paul's phone"))
    assert unknown.rc == 6 and "no known peer" in unknown.err, unknown
    assert "pairkit peers" in unknown.err
    assert nobody.rc != 0 and nobody.err.startswith("error: "), nobody


# -- a host among misbehaving guests -----------------------------------------------------------


async def test_host_survives_garbage_on_the_wire(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    huge_fragment = b"\x80\xff\xff\xff\x7f"  # FIRST, announcing a 256 MiB message
    garbage = {  # what is sent -> a word the host's reason must contain
        os.urandom(64): "",
        b"\xff\xff\xff\xff" + os.urandom(16): "framing",
        len(huge_fragment).to_bytes(4, "big") + huge_fragment: "limit",
        tcp_frame(cbor2.dumps([0, 1, 2])): "CBOR map",
        tcp_frame(Reveal(nonce=os.urandom(NONCE_LEN)).encode()): "not expected",
    }
    for data, reason in garbage.items():
        mark = host.mark()
        _, writer, ours = await raw_guest(host, data)
        await hang_up(writer)
        line = await host.wait_for(rf"^error: guest {re.escape(ours)}: (.+)", since=mark)
        assert reason in line.group(1), line.string
    assert host.proc.returncode is None
    joined = (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok().json()
    assert joined["session"] == (await host.next_result())["session"]


async def test_silent_guest_is_timed_out_and_the_host_carries_on(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json", "--timeout", "1")
    started = time.monotonic()
    reader, writer, ours = await raw_guest(host, b"")
    try:
        await host.wait_for(rf"^error: guest {re.escape(ours)}: .*(time|answer|nothing)",
                            timeout=10)
        waited = time.monotonic() - started
        assert 0.9 <= waited < 5, waited
        # The host hung up on it (it may say why first).
        await asyncio.wait_for(reader.read(), 5)
        assert reader.at_eof()
    finally:
        await hang_up(writer)
    joined = (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok().json()
    assert joined["session"] == (await host.next_result())["session"]


async def test_join_where_nothing_listens(lab: Lab) -> None:
    george = lab.device("george")
    port = free_port()
    started = time.monotonic()
    result = await george.join(f"tcp:127.0.0.1:{port}", "-m", "pin", "--pin", PIN, timeout=10)
    assert time.monotonic() - started < 5
    assert result.rc == 6, result  # not found, as an unknown peer name is
    assert result.err.startswith(f"error: no pairkit host answered at tcp:127.0.0.1:{port}"), result
    assert "refused" in result.err
    assert await george.peers() == []
