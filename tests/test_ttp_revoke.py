"""``pairkit ttp revoke``: the key server's administrator takes a device out for good.

The attacker holds the revoked device's static key (a lost or stolen device, a leaked key).
Over a real server process on 127.0.0.1 (and an in-process one for the certificate), with the
revoke run as a process of its own on the same database, as an administrator runs it: her
waiting intent and those naming her device fail, she cannot enrol again, get a key or a
certificate, and the devices that name her learn no more than "not enrolled" tells them.
The store's side, on both engines: tests/revoke_harness.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from pairkit.cli.ttp_cli import ttp
from pairkit.groupcert import enrol_cert
from pairkit.keyserver.certs import init_server_dir
from pairkit.keyserver.store import open_store
from pairkit.pairing.errors import NotFoundError, RefusedError
from pairkit.pairing.ttp import IntentRole
from pairkit.peers import local_identity
from pairkit.ttp import enrol, request_key
from tests.pty_harness import PtyProcess
from tests.renewal_harness import device
from tests.revoke_harness import NOT_ENROLLED, REVOKED, peer_not_enrolled, rec, revoke_cli
from tests.ttp_harness import ServeProcess, identity, running_server

CTX = b"\x44" * 32


async def _list(directory: Path) -> dict[str, list[dict[str, object]]]:
    result = CliRunner().invoke(ttp, ["list", "--dir", str(directory), "--json"])
    assert result.exit_code == 0, result.output
    out: dict[str, list[dict[str, object]]] = json.loads(result.stdout)
    return out


async def test_revoke_while_the_server_runs(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "srv")
    server = await ServeProcess.start(d.root)
    try:
        lost, b, c, stranger = (identity(n) for n in ("lost phone", "b", "c", "stranger"))
        for dev in (lost, b, c):
            await enrol(server.address, d.ca_cert, dev)
        # Made before the revoke, waiting in the server: b's toward the lost phone, and the
        # lost phone's own toward c.
        b_waits = asyncio.ensure_future(request_key(
            server.address, d.ca_cert, b, peer_id=lost.device_id, context=CTX,
            role=IntentRole.HOST, wait=30))
        lost_waits = asyncio.ensure_future(request_key(
            server.address, d.ca_cert, lost, peer_id=c.device_id, context=CTX,
            role=IntentRole.HOST, wait=30))
        store = open_store(d.root)
        try:
            for _ in range(400):
                if store.pending_count() == 2:
                    break
                await asyncio.sleep(0.05)
            assert store.pending_count() == 2
        finally:
            store.close()

        rc, out, err = await revoke_cli(d.root, lost.device_id.hex(), "--yes", "--json")
        assert rc == 0, err
        assert json.loads(out) == {"ok": True, "revoked": {
            "id": lost.device_id.hex(), "name": "lost phone", "intents": 2, "pns": 0,
            "memberships": 0, "eukey": False}}

        # Both waiting intents fail, as for a device that is not enrolled: neither is matched
        with pytest.raises(NotFoundError) as told_b:
            await b_waits
        assert str(told_b.value).endswith(f": {peer_not_enrolled(lost.device_id)}")
        with pytest.raises(NotFoundError) as told_lost:
            await lost_waits
        assert str(told_lost.value).endswith(f": {NOT_ENROLLED}")

        # A device naming it now is told what it is told of a device never enrolled
        with pytest.raises(NotFoundError) as about_stranger:
            await request_key(server.address, d.ca_cert, c, peer_id=stranger.device_id,
                              context=CTX, role=IntentRole.GUEST, wait=1)
        with pytest.raises(NotFoundError) as about_lost:
            await request_key(server.address, d.ca_cert, c, peer_id=lost.device_id,
                              context=CTX, role=IntentRole.GUEST, wait=1)
        assert str(about_lost.value).replace(lost.device_id.hex()[:16], "ID") == str(
            about_stranger.value).replace(stranger.device_id.hex()[:16], "ID")
        # Its own intent, as a device never enrolled; its enrolment, refused for good
        with pytest.raises(NotFoundError, match=f": {NOT_ENROLLED}$"):
            await request_key(server.address, d.ca_cert, lost, peer_id=c.device_id,
                              context=CTX, role=IntentRole.HOST, wait=1)
        with pytest.raises(RefusedError, match=f"^the key server says: {REVOKED}$"):
            await enrol(server.address, d.ca_cert, lost)
        with pytest.raises(RefusedError, match=REVOKED):
            await enrol(server.address, d.ca_cert, lost, eukey=bytes(32))
        # The others pair as before
        kb, kc = await asyncio.gather(
            request_key(server.address, d.ca_cert, b, peer_id=c.device_id, context=CTX,
                        role=IntentRole.HOST, wait=10),
            request_key(server.address, d.ca_cert, c, peer_id=b.device_id, context=CTX,
                        role=IntentRole.GUEST, wait=10),
        )
        assert kb.sk == kc.sk
    finally:
        await server.stop()
    listed = await _list(d.root)
    assert [x["name"] for x in listed["devices"]] == ["b", "c"]
    assert [(x["id"], x["name"]) for x in listed["revoked"]] == [
        (lost.device_id.hex(), "lost phone")]


async def test_a_revoked_device_gets_no_certificate(tmp_path: Path) -> None:
    """docs/protocol.md §16: the key server certifies enrolled devices' signing keys; not a
    revoked one's, not even with the keys it enrolled with."""
    paul = device(tmp_path / "paul", "Paul")
    me = local_identity(paul.keystore)
    async with running_server(tmp_path / "srv") as srv:
        await enrol(srv.address, srv.ca, me)
        await enrol_cert(paul.keystore, srv.address, srv.ca, me)  # before: certified
        rc, _, err = await revoke_cli(srv.dir.root, me.device_id.hex(), "--yes")
        assert rc == 0, err
        with pytest.raises(NotFoundError, match="not enrolled"):
            await enrol_cert(paul.keystore, srv.address, srv.ca, me)
        assert srv.server.stats.get("certified") == 1


def _enrolled(root: Path, *names: str) -> list[bytes]:
    """Devices enrolled straight into a fresh server directory's store (no server needed)."""
    init_server_dir(root)
    store = open_store(root)
    try:
        ids = [bytes([0x10 + i]) * 16 for i in range(len(names))]
        for device_id, name in zip(ids, names, strict=True):
            store.enrol(rec(device_id, name), bytes(32), 1.0)
        return ids
    finally:
        store.close()


def test_revoke_asks_at_a_terminal(tmp_path: Path) -> None:
    (lost,) = _enrolled(tmp_path / "srv", "lost phone")
    args = ("ttp", "revoke", lost.hex(), "--dir", str(tmp_path / "srv"))
    proc = PtyProcess(tmp_path, *args, pin=None)
    try:
        proc.expect(r"lost phone \(" + lost.hex() + r"\)")
        proc.expect(r"\[y/N\] ")
        proc.line("n")
        assert proc.wait() == 5
    finally:
        proc.close()
    assert "not revoked" in proc.output
    proc = PtyProcess(tmp_path, *args, pin=None)
    try:
        proc.expect(r"\[y/N\] ")
        proc.line("y")
        proc.expect(r"revoked lost phone \(" + lost.hex() + r"\)")
        assert proc.wait() == 0
    finally:
        proc.close()
    assert "factory key" in proc.output  # what it removed


async def test_revoke_from_a_script(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    lost, kept = _enrolled(root, "lost phone", "kept")
    # No terminal and no --yes: nothing is revoked
    rc, out, err = await revoke_cli(root, lost.hex())
    assert rc == 5 and out == "" and "--yes" in err
    assert [x["name"] for x in (await _list(root))["devices"]] == ["lost phone", "kept"]
    # --yes: the text says what was removed
    rc, out, err = await revoke_cli(root, lost.hex().upper(), "--yes")
    assert rc == 0, err
    assert f"revoked lost phone ({lost.hex()})" in out + err
    listed = await _list(root)
    assert [x["name"] for x in listed["devices"]] == ["kept"]
    assert [x["id"] for x in listed["revoked"]] == [lost.hex()]
    text = CliRunner().invoke(ttp, ["list", "--dir", str(root)])
    assert text.exit_code == 0
    assert text.stdout.index(kept.hex()) < text.stdout.index("revoked") < text.stdout.index(
        lost.hex())


@pytest.mark.parametrize(("which", "code", "text"), [
    ("unknown", 6, "no device"),
    ("again", 6, "revoked already"),
    ("prefix", 2, "the whole device id"),
    ("nonsense", 2, "the whole device id"),
])
async def test_revoke_errors(tmp_path: Path, which: str, code: int, text: str) -> None:
    root = tmp_path / "srv"
    (lost,) = _enrolled(root, "lost phone")
    if which == "again":
        assert (await revoke_cli(root, lost.hex(), "--yes"))[0] == 0
    arg = {"unknown": "ab" * 16, "again": lost.hex(), "prefix": lost.hex()[:16],
           "nonsense": "lost phone"}[which]
    rc, out, err = await revoke_cli(root, arg, "--yes", "--json")
    assert rc == code, err
    assert out == ""
    assert text in err and err.startswith("error: ")


def _store_raw(root: Path, device_id: bytes, name: str) -> None:
    """A device row with ``name`` as it is, written as a server of an earlier pairkit wrote it
    (it kept the name a device gave, control characters and all)."""
    import sqlite3

    r = rec(device_id, name)
    db = sqlite3.connect(root / "ttp.sqlite3")
    try:
        db.execute(
            "INSERT INTO devices (device_id, name, static_public, signing_public, eukey_sealed, "
            "enrolled_at, updated_at) VALUES (?, ?, ?, ?, NULL, 2, 2)",
            (r.device_id, r.name, r.static, r.signing))
        db.commit()
    finally:
        db.close()


async def test_ttp_list_prints_one_line_per_device_whatever_its_name(tmp_path: Path) -> None:
    """atk20r 1: the holder of a lost phone's key enrols it again as "kitchen tv", then a line
    break, the kitchen tv's id and "lost phone": `ttp list` showed the tv's id beside the lost
    phone's name, and the administrator revoked the tv.  Whatever name a device gave (now, or
    to an earlier server that kept it as it was), each device is one line, its id first."""
    lost, tv = identity("lost phone"), identity("kitchen tv")
    logs: list[str] = []
    forged = f"kitchen tv\n{tv.device_id.hex()}  lost phone\r\x1b[2K\x85\u2028\u202e"
    async with running_server(tmp_path / "srv", log=logs.append) as srv:
        for dev in (lost, tv):
            await enrol(srv.address, srv.ca, dev)
        await enrol(srv.address, srv.ca, dataclasses.replace(lost, name=forged[:64]))
        assert len(logs[-1].splitlines()) == 1 and "\x1b" not in logs[-1], logs[-1]
        root = srv.dir.root
    old, gone = b"\x61" * 16, b"\x62" * 16
    _store_raw(root, old, forged[:64])
    _store_raw(root, gone, f"x\n{tv.device_id.hex()}  y\x1b[1A")
    store = open_store(root)
    try:
        store.revoke(gone, 3.0)
        # stored cleaned, by the server that enrolled it (its first name kept)
        listed = {d["id"]: d for d in store.devices()}
        assert listed[lost.device_id.hex()]["name"] == (
            f"kitchen tv {tv.device_id.hex()}  lost phone  [2K")
        assert listed[lost.device_id.hex()]["first_name"] == "lost phone"
    finally:
        store.close()
    text = CliRunner().invoke(ttp, ["list", "--dir", str(root)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 5, lines
    assert [line[:32] for line in lines] == [
        old.hex(), lost.device_id.hex(), tv.device_id.hex(), "revoked (these ids cannot enrol ",
        gone.hex()]  # (the oldest enrolment first: the rows stored straight are dated 2)
    assert lines[1].endswith("(first enrolled as lost phone)")
    rest = text.stdout.replace("\n", "")
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in rest), lines
    assert "\u202e" not in rest
    # every id at the start of its own line, and the tv's on one line only
    assert sum(line.startswith(tv.device_id.hex()) for line in lines) == 1
    assert sum(tv.device_id.hex() in line for line in lines) == 4  # named in the others


def test_the_revoke_prompt_shows_the_name_on_the_ids_line_and_the_first_name(
    tmp_path: Path,
) -> None:
    """atk20r 1: the prompt names the device on one line with its whole id, cleaned, and the
    name it first enrolled with when it enrolled again under another."""
    root = tmp_path / "srv"
    (lost,) = _enrolled(root, "lost phone")
    store = open_store(root)
    try:
        store.enrol(rec(lost, "kitchen tv\x1b[1A\nX"), None, 2.0)
    finally:
        store.close()
    proc = PtyProcess(tmp_path, "ttp", "revoke", lost.hex(), "--dir", str(root), pin=None)
    try:
        proc.expect(re.escape(f"kitchen tv [1A X ({lost.hex()}), first enrolled as lost phone,"))
        proc.expect(r"\[y/N\] ")
        proc.line("n")
        assert proc.wait() == 5
    finally:
        proc.close()


async def test_no_certificate_leaves_after_a_revoke_committed_while_it_was_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """atk20r 2: the administrator's revoke (another process, its own connection) commits
    between the server's look-up of the device and its signature: the certificate signed
    meanwhile is not handed out."""
    import pairkit.keyserver.server as server_module

    paul = device(tmp_path / "paul", "Paul")
    me = local_identity(paul.keystore)
    async with running_server(tmp_path / "srv") as srv:
        await enrol(srv.address, srv.ca, me)
        signing_key = server_module.load_ca_key

        def revoked_as_it_signs(directory: object) -> object:
            admin = open_store(srv.dir.root)
            try:
                admin.revoke(me.device_id, 2.0)
            finally:
                admin.close()
            return signing_key(directory)  # type: ignore[arg-type]

        monkeypatch.setattr(server_module, "load_ca_key", revoked_as_it_signs)
        with pytest.raises(NotFoundError, match="not enrolled"):
            await enrol_cert(paul.keystore, srv.address, srv.ca, me)
        assert srv.server.stats.get("certified", 0) == 0


async def test_a_key_handed_over_in_memory_is_not_delivered_after_a_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """atk20r 3: both devices wait in one server process, so the waiter's key is handed over
    in memory; the lost phone's revoke commits after the match and before the waiter takes the
    key.  The waiter is told its peer is not enrolled, as when the key waits in the store."""
    from pairkit.keyserver.server import TtpServer

    lost, b = identity("lost phone"), identity("b")
    async with running_server(tmp_path / "srv") as srv:
        for dev in (lost, b):
            await enrol(srv.address, srv.ca, dev)
        hand = TtpServer._hand

        def hand_then_revoke(self: TtpServer, row: int, sk: bytes, match_id: bytes) -> None:
            hand(self, row, sk, match_id)
            admin = open_store(srv.dir.root)
            try:
                admin.revoke(lost.device_id, 2.0)
            finally:
                admin.close()

        monkeypatch.setattr(TtpServer, "_hand", hand_then_revoke)
        b_waits = asyncio.ensure_future(request_key(
            srv.address, srv.ca, b, peer_id=lost.device_id, context=CTX,
            role=IntentRole.HOST, wait=30))
        for _ in range(400):
            if await srv.server.db(srv.server.store.pending_count) == 1:
                break
            await asyncio.sleep(0.05)
        await request_key(srv.address, srv.ca, lost, peer_id=b.device_id, context=CTX,
                          role=IntentRole.GUEST, wait=5)
        with pytest.raises(NotFoundError) as told_b:
            await b_waits
        assert str(told_b.value).endswith(f": {peer_not_enrolled(lost.device_id)}")
        assert srv.server.stats["deliveries"] == 1  # the lost phone's, matched before
