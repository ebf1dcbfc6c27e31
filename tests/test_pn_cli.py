"""``pairkit pn`` as processes over TCP, with a key server process (issue 14).

Every device is its own ``pairkit`` process with its own keystore, enrolled with the key server
with a factory key (``pairkit ttp enroll --new-eukey``).  The attacks run through a TCP relay in
the test process (tests/pn_harness.py), between the element's process and the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from pathlib import Path

import pytest

from pairkit.cli.common import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_USAGE
from pairkit.pairing import wire
from pairkit.pairing.cpns import LinkConfirm
from pairkit.pairing.errors import PairingError
from pairkit.pairing.framing import Reassembler, fragment
from tests.cli_helpers import radio_process, run_cli
from tests.pn_harness import free_port, pn_lab, tcp_relay
from tests.ttp_harness import flip

NAMES = {"gw": "Paul's phone", "watch": "Paul's watch", "scale": "Paul's scale",
         "lamp": "Paul's lamp"}


async def test_pne_initiated_all_decline_route_ls_and_restart(tmp_path: Path) -> None:
    async with pn_lab(tmp_path, NAMES) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--yes", "--json",
                             "--collect", "3")
        await gw.narration("is the PN gateway on")
        scale = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes", "--no-ui",
                                "--stay", "--count", "1", "--json")
        lamp = await lab.start("lamp", "pn", "join", gw_addr, "--wait", "--decline", "--json")
        await gw.narration("Paul's scale .* is in reach")
        await gw.narration("Paul's lamp .* is in reach")
        watch = await lab.run("watch", "pn", "join", gw_addr, "--setup", "all", "--json")
        joined = watch.ok().json()
        assert joined["ok"] and joined["key_source"] == "local_eukey" and joined["session"]
        assert sorted(m["name"] for m in joined["members"]) == ["Paul's scale", "Paul's watch"]
        setup = await gw.json_line("event", "setup")
        assert setup["setup"] == "all"
        by_name = {m["name"]: m for m in setup["members"]}
        assert by_name["Paul's scale"]["key_source"] == "preassigned"
        assert by_name["Paul's watch"]["session"] == joined["session"]
        assert [d["name"] for d in setup["declined"]] == ["Paul's lamp"]
        assert await lamp.finish() == 0
        assert lamp.lines == [{"ok": False, "declined": True}]
        # the scale joined and stays for routed messages
        await scale.json_line("ok", True)

        sent = await lab.run("watch", "pn", "send", "Paul's scale", "step on me", "--json")
        assert sent.ok().json() == {"ok": True, "delivered": True, "reason": None,
                                    "to": {"id": lab.ids["scale"], "name": "Paul's scale"}}
        msg = await scale.json_line("event", "message")
        assert msg["from"] == {"id": lab.ids["watch"], "name": "Paul's watch"}
        assert msg["text"] == "step on me"
        assert await scale.finish() == 0

        # pn ls on the gateway, while it runs: inventory, routing table, declined
        ls = (await lab.run("gw", "pn", "ls", "--json")).ok().json()
        (pn,) = ls["pns"]
        assert pn["role"] == "gateway" and pn["pn"] == setup["pn"]
        assert {m["name"]: m["key_source"] for m in pn["members"]} == {
            "Paul's scale": "preassigned", "Paul's watch": "local_eukey"}
        assert all(m["route"] and m["route"].startswith("127.0.0.1:") for m in pn["members"])
        assert [d["name"] for d in pn["declined"]] == ["Paul's lamp"] and pn["failed"] == []
        # no key material: members carry these fields only, and no 64-hex-digit value anywhere
        assert all(set(m) == {"id", "name", "key_source", "route"} for m in pn["members"])
        assert not re.search(r"[0-9a-f]{64}", json.dumps(ls))
        member_ls = (await lab.run("watch", "pn", "ls", "--json")).ok().json()
        assert member_ls["pns"][0]["role"] == "member"
        assert member_ls["pns"][0]["gateway"]["address"] == gw_addr
        assert member_ls["pns"][0]["gateway"]["name"] == "Paul's phone"  # the initiator too

        # The scale is offline now: not delivered, exit code 6, a sentence
        offline = await lab.run("watch", "pn", "send", "Paul's scale", "again")
        assert offline.rc == EXIT_NOT_FOUND
        assert "not connected" in offline.err

        # Restart the gateway: the inventory comes back from its keystore, members resume
        assert await gw.stop() in (0, 130)
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--json")
        await gw.narration("reloaded from the keystore: 2 member")
        scale = await lab.start("scale", "pn", "join", gw_addr, "--stay", "--count", "1",
                                "--json")
        await scale.json_line("resumed", True)
        await gw.narration("Paul's scale is online")
        sent = await lab.run("watch", "pn", "send", lab.ids["scale"][:12], "after restart")
        sent.ok()
        assert (await scale.json_line("event", "message"))["text"] == "after restart"
        assert await scale.finish() == 0
        await gw.stop()


async def test_gateway_initiated_invited_and_a_forged_link_confirmation(
    tmp_path: Path,
) -> None:
    """The gateway invites two elements; the link of one passes a relay that forges its link
    confirmation: it ends out of the PN and in the failed list; the other is in."""
    joiners: dict[tuple[str, str], Reassembler] = {}

    def forge(src: str, dst: str, data: bytes, n: int):
        joiner = joiners.setdefault((src, dst), Reassembler(64 * 1024))
        message = joiner.feed(data)
        if message is None:
            return []
        try:
            msg = wire.decode(message)
        except Exception:
            return fragment(message, 65535)
        if src == "pne" and isinstance(msg, LinkConfirm):
            message = LinkConfirm(flip(msg.mac), msg.nonce).encode()
        return fragment(message, 65535)

    async with pn_lab(tmp_path, {k: NAMES[k] for k in ("gw", "watch", "scale")}) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start(
            "gw", "pn", "gateway", "-t", gw_addr, "--json", "--once", "--setup", "invited",
            "--invite", lab.ids["watch"], "--invite", lab.ids["scale"])
        await gw.narration("is the PN gateway on")
        async with tcp_relay(port, forge) as relay_port:
            watch = await lab.start("watch", "pn", "join", f"tcp:127.0.0.1:{relay_port}",
                                    "--wait", "--yes", "--json")
            scale = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes",
                                    "--json")
            setup = await gw.json_line("event", "setup")
            assert [m["name"] for m in setup["members"]] == ["Paul's scale"]
            (failed,) = setup["failed"]
            assert failed["id"] == lab.ids["watch"]
            assert "link confirmation" in failed["reason"]
            assert await watch.finish() == EXIT_AUTH
            assert "link confirmation" in "\n".join(watch.err)
            assert await scale.finish() == 0
        assert await gw.finish() == 0
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert [m["name"] for m in pn["members"]] == ["Paul's scale"]
        assert [f["name"] for f in pn["failed"]] == ["Paul's watch"]
        # the watch keeps no membership
        assert (await lab.run("watch", "pn", "ls", "--json")).ok().json() == {"pns": []}


@pytest.mark.parametrize("attack", ["replay", "bitflip"])
async def test_routed_traffic_replayed_or_bit_flipped_on_the_way_is_not_delivered(
    tmp_path: Path, attack: str
) -> None:
    """The sender's 4th message to the gateway is its first routed record (after PnLinkResume,
    LinkConfirm and its READY): a relay replays it, or flips a bit of it.  The gateway ends
    that link; the recipient gets the message at most once, never altered."""

    def on_the_way(src: str, dst: str, data: bytes, n: int):
        if src == "pne" and n == 4:
            return [data, data] if attack == "replay" else [flip(data, len(data) - 5)]
        return data

    async with pn_lab(tmp_path, {k: NAMES[k] for k in ("gw", "watch", "scale")}) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--json", "--setup", "all",
                             "--wait-for", "2", "--collect", "3")
        await gw.narration("is the PN gateway on")
        a = await lab.start("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json")
        b = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes", "--stay",
                            "--json")
        await gw.json_line("event", "setup")
        assert await a.finish() == 0
        await b.json_line("ok", True)
        async with tcp_relay(port, on_the_way) as relay_port:
            sent = await lab.run("watch", "pn", "send", "Paul's scale", "open the door",
                                 "-t", f"tcp:127.0.0.1:{relay_port}", "--json")
        await gw.narration("Paul's watch's link ended")
        if attack == "replay":
            # delivered once (the first copy), then the replay ended the link
            await b.json_line("event", "message")
            await asyncio.sleep(0.5)
            assert [m["text"] for m in b.lines if m.get("event")] == ["open the door"]
        else:
            assert sent.rc != 0
            await asyncio.sleep(0.5)
            assert not [m for m in b.lines if m.get("event")]
        assert any("did not authenticate" in e or "replay" in e or "forged" in e
                   for e in gw.err if "link ended" in e)
        # the gateway goes on: the next send, not tampered with, is delivered
        (await lab.run("watch", "pn", "send", "Paul's scale", "second")).ok()
        assert (await b.wait_for(
            lambda: [m for m in b.lines if m.get("text") == "second"], "second message"))
        await b.stop()
        await gw.stop()


async def test_a_stranger_replaying_a_captured_record_or_resuming_without_the_key(
    tmp_path: Path,
) -> None:
    """A stranger replays what it captured (the member's resume, then its records) on a new
    connection: the gateway answers the resume with a fresh nonce, the stranger cannot
    confirm, and nothing is routed; the gateway stays up."""
    captured: list[bytes] = []

    def capture(src: str, dst: str, data: bytes, n: int):
        if src == "pne":
            captured.append(data)
        return data

    async with pn_lab(tmp_path, {k: NAMES[k] for k in ("gw", "watch", "scale")}) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--json", "--setup", "all",
                             "--wait-for", "2", "--collect", "3")
        await gw.narration("is the PN gateway on")
        a = await lab.start("watch", "pn", "join", gw_addr, "--wait", "--yes", "--json")
        b = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes", "--stay",
                            "--json")
        await gw.json_line("event", "setup")
        assert await a.finish() == 0
        async with tcp_relay(port, capture) as relay_port:
            (await lab.run("watch", "pn", "send", "Paul's scale", "one",
                           "-t", f"tcp:127.0.0.1:{relay_port}")).ok()
        await b.json_line("text", "one")
        from pairkit.transports.tcp import tcp_connect

        stranger = await tcp_connect("127.0.0.1", port, 10.0)
        for data in captured:
            await stranger.send(data)
        reply = []
        joiner = Reassembler(64 * 1024)
        with contextlib.suppress(PairingError, TimeoutError):
            while True:
                whole = joiner.feed(await asyncio.wait_for(stranger.recv(), 10))
                if whole is not None:
                    reply.append(wire.decode(whole))
        await stranger.close()
        names = [type(m).__name__ for m in reply]
        assert names[0] == "PnLinkAccept" and "Abort" in names[1:]
        assert "link confirmation failed" in reply[-1].reason
        await asyncio.sleep(0.5)
        assert [m["text"] for m in b.lines if m.get("event")] == ["one"]
        (await lab.run("watch", "pn", "send", "Paul's scale", "two")).ok()
        await b.json_line("text", "two")
        await b.stop()
        await gw.stop()


# -- help and hostile input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("gateway", ["--setup", "--invite", "ttp enroll", "pn ls", "--json"]),
        ("join", ["--wait", "--no-ui", "LocalEUKey", "pre-assigned", "--stay", "--json"]),
        ("ls", ["routing table", "failed or declined", "--json"]),
        ("send", ["MEMBER", "routed through the gateway", "--json"]),
    ],
)
async def test_every_pn_command_has_a_help_that_teaches(command: str, words: list[str]) -> None:
    r = await run_cli(None, "pn", command, "--help")
    text = " ".join(r.ok().out.split())
    for word in words:
        assert word in text, word


@pytest.fixture
async def one_device(tmp_path: Path) -> Path:
    home = tmp_path / "dev"
    (await run_cli(home, "init", "--name", "Lone device")).ok()
    return home


_BAD = [
    (("join", "tcp:127.0.0.1:9", "--setup", "invited"), EXIT_USAGE, "--invite"),
    (("join", "tcp:127.0.0.1:9", "--setup", "all", "--wait"), EXIT_USAGE, "not both"),
    (("join", "tcp:127.0.0.1:9", "--decline"), EXIT_USAGE, "--wait"),
    (("join", "tcp:127.0.0.1:9", "--setup", "invited", "--invite", "zz"), EXIT_USAGE,
     "not a device id"),
    (("join", "tcp:127.0.0.1:9", "--wait", "--count", "3"), EXIT_USAGE, "--stay"),
    (("join", "bumble:usb:0", "--wait"), EXIT_USAGE, "names a radio"),
    (("join", "tcp:127.0.0.1:9", "--setup", "all"), EXIT_NOT_FOUND, "factory key"),
    (("join", "tcp:127.0.0.1:9"), EXIT_NOT_FOUND, "member of no personal network"),
    (("join", "tcp:127.0.0.1:9", "--wait", "--no-ui", "--pin", "482913"), EXIT_USAGE,
     "cannot type a PIN"),
    (("join", "tcp:127.0.0.1:9", "--wait", "--pin", "48291"), EXIT_USAGE, "6 digits"),
    (("join", "tcp:127.0.0.1:9", "--pin", "482913"), EXIT_USAGE, "link key, no PIN"),
    (("gateway", "--pin", "482913"), EXIT_USAGE, "--pin-link"),
    (("gateway", "--pin-link", "--pin", "123456"), EXIT_USAGE, "too easy"),
    (("gateway", "--setup", "invited"), EXIT_USAGE, "--invite"),
    (("gateway", "--invite", "00" * 16), EXIT_USAGE, "--setup"),
    (("gateway",), EXIT_NOT_FOUND, "factory key"),
    (("send", "someone", "hi"), EXIT_NOT_FOUND, "member of no personal network"),
    (("send", "someone", ""), EXIT_USAGE, "empty"),
    (("send", "someone", "x" * 20000), EXIT_USAGE, "a routed message holds"),
]


@pytest.mark.parametrize(("args", "code", "words"), _BAD, ids=[" ".join(a)[:40] for a, *_ in _BAD])
async def test_bad_input_is_a_sentence_and_an_exit_code(
    one_device: Path, args: tuple[str, ...], code: int, words: str
) -> None:
    r = await run_cli(one_device, "pn", *args)
    assert r.rc == code, str(r)
    assert r.err.startswith("error: ") and words in r.err, r.err
    assert r.out == ""


async def test_ls_of_a_device_in_no_pn(one_device: Path) -> None:
    assert (await run_cli(one_device, "pn", "ls", "--json")).ok().json() == {"pns": []}
    r = (await run_cli(one_device, "pn", "ls")).ok()
    assert "no personal network yet" in r.err


async def test_a_hostile_gateway_gets_a_sentence_not_a_traceback(tmp_path: Path) -> None:
    """A 'gateway' that answers with garbage, or with an Abort whose reason tries to drive the
    terminal: the element ends with an error line and an exit code."""
    from pairkit.cli.ttp_cli import SETTING_EUKEY
    from pairkit.keystore import FILE_NAME, Keystore
    from pairkit.transports.tcp import TcpListener
    from tests.cli_helpers import KEYSTORE_PIN

    home = tmp_path / "dev"
    (await run_cli(home, "init", "--name", "Lone device")).ok()
    # a factory key, as 'ttp enroll --new-eukey' would keep it (no server needed here)
    ks = Keystore.open(home / FILE_NAME, KEYSTORE_PIN)
    with ks.update():
        ks.set_setting(SETTING_EUKEY, os.urandom(32))
    listener = await TcpListener.bind("127.0.0.1", 0)
    replies = [b"\xff" * 40, wire.Abort(code=3, reason="bad \x1b[2J day").encode()]

    async def serve() -> None:
        for reply in replies:
            link = await listener.accept()
            await link.recv()
            for piece in fragment(reply, 200):
                await link.send(piece)
            await asyncio.sleep(0.2)
            await link.close()

    task = asyncio.create_task(serve())
    try:
        for _ in replies:
            r = await run_cli(home, "pn", "join", f"tcp:127.0.0.1:{listener.port}", "--wait",
                              "--yes", "--timeout", "5")
            assert r.rc != 0 and r.err.splitlines()[-1].startswith("error: "), str(r)
            assert "\x1b" not in r.err
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await listener.close()


async def test_over_ble_with_pairkit_radio_elements_find_the_gateway_by_its_hello(
    tmp_path: Path,
) -> None:
    """The README's BLE walk-through: the gateway on a virtual controller of a `pairkit radio`
    process broadcasts a hello; `discover` lists it by name (its hello response); elements join
    it by that name and a message is routed over BLE."""
    async with radio_process(3) as radios, pn_lab(
        tmp_path, {k: NAMES[k] for k in ("gw", "watch", "scale")}
    ) as lab:
        gw = await lab.start("gw", "pn", "gateway", "-t", radios[0], "--yes", "--json")
        await gw.narration("is the PN gateway on")
        found = (await lab.run("scale", "discover", "-t", radios[2], "--json")).ok().json()
        assert "Paul's phone" in [d["name"] for d in found["devices"]]
        scale = await lab.start("scale", "pn", "join", "Paul's phone", "-t", radios[2],
                                "--wait", "--yes", "--no-ui", "--stay", "--count", "1",
                                "--json")
        await gw.narration("Paul's scale .* is in reach", timeout=60)
        joined = (await lab.run("watch", "pn", "join", "Paul's phone", "-t", radios[1],
                                "--setup", "all", "--json", timeout=60)).ok().json()
        assert sorted(m["name"] for m in joined["members"]) == ["Paul's scale", "Paul's watch"]
        await scale.json_line("ok", True)
        (await lab.run("watch", "pn", "send", "Paul's scale", "over the air",
                       timeout=60)).ok()
        assert (await scale.json_line("event", "message"))["text"] == "over the air"
        assert await scale.finish() == 0
        await gw.stop()


async def test_elements_that_type_the_gateways_pin(tmp_path: Path) -> None:
    """`pn gateway --pin-link` shows a PIN; a wrong one fails (exit 3) and a new PIN is shown;
    elements that type the right one run the setup inside the PIN's secure channel (no second
    session: the PAN is secured at both ends), still get their LocalEUKey (R01), and come back
    with it later without a PIN."""
    async with pn_lab(tmp_path, NAMES) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--yes", "--json",
                             "--pin-link", "--pin", "482913", "--collect", "3")
        await gw.narration("PIN for elements: 482913")
        wrong = await lab.run("lamp", "pn", "join", gw_addr, "--setup", "1-1", "--pin", "111112")
        assert wrong.rc == EXIT_AUTH and "did not match" in wrong.err, str(wrong)

        def latest_pin() -> str:
            pins = [re.search(r"PIN for elements: (\d{6})", e) for e in gw.err]
            return [m.group(1) for m in pins if m][-1]

        await gw.wait_for(lambda: latest_pin() != "482913", "a new PIN")
        scale = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes", "--stay",
                                "--count", "1", "--json", "--pin", latest_pin())
        await gw.narration("Paul's scale .* is in reach")
        joined = (await lab.run("watch", "pn", "join", gw_addr, "--setup", "all", "--json",
                                "--pin", latest_pin())).ok().json()
        assert joined["key_source"] == "local_eukey" and joined["session"] is None
        setup = await gw.json_line("event", "setup")
        assert sorted(m["name"] for m in setup["members"]) == ["Paul's scale", "Paul's watch"]
        assert all(m["session"] is None for m in setup["members"])
        assert "482913" not in json.dumps(gw.lines)  # the PIN is for the owner's eyes only
        await scale.json_line("ok", True)
        # back later over plain TCP with the LocalEUKey: no PIN
        (await lab.run("watch", "pn", "send", "Paul's scale", "weigh in")).ok()
        assert (await scale.json_line("event", "message"))["text"] == "weigh in"
        assert await scale.finish() == 0
        await gw.stop()


async def test_pne_initiated_invited_leaves_the_others_in_reach_for_the_next_setup(
    tmp_path: Path,
) -> None:
    async with pn_lab(tmp_path, NAMES) as lab:
        port = free_port()
        gw_addr = f"tcp:127.0.0.1:{port}"
        gw = await lab.start("gw", "pn", "gateway", "-t", gw_addr, "--yes", "--json",
                             "--collect", "3")
        await gw.narration("is the PN gateway on")
        scale = await lab.start("scale", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                                "--timeout", "120")
        lamp = await lab.start("lamp", "pn", "join", gw_addr, "--wait", "--yes", "--json",
                               "--timeout", "120")
        await gw.narration("Paul's scale .* is in reach")
        await gw.narration("Paul's lamp .* is in reach")
        first = (await lab.run("watch", "pn", "join", gw_addr, "--setup", "invited",
                               "--invite", lab.ids["scale"], "--json")).ok().json()
        assert sorted(m["name"] for m in first["members"]) == ["Paul's scale", "Paul's watch"]
        assert await scale.finish() == 0
        assert lamp.proc.returncode is None and lamp.lines == []  # not asked, still waiting
        # the next setup (the watch again, 'all') reaches the lamp
        second = (await lab.run("watch", "pn", "join", gw_addr, "--setup", "all",
                                "--json")).ok().json()
        assert "Paul's lamp" in [m["name"] for m in second["members"]]
        assert await lamp.finish() == 0
        (pn,) = (await lab.run("gw", "pn", "ls", "--json")).ok().json()["pns"]
        assert sorted(m["name"] for m in pn["members"]) == [
            "Paul's lamp", "Paul's scale", "Paul's watch"]
        await gw.stop()
