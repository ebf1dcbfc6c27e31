"""HCI traces (issue 15 item 9): ``--trace FILE`` writes btsnoop files that hold what happened.

Read back with tests/btsnoop_harness.py (the format parsed from its definition, not by
bumble): the commands, as processes on ``pairkit radio``, leave a trace with the hello advert
and the pairing's ATT or L2CAP packets; and no link key reaches a trace (an attacker handed a
bug report's trace cannot decrypt the link it recorded).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from bumble.keys import PairingKeys

from pairkit.pairing.errors import ConfigError
from pairkit.transports.ble.adv import PAIRKIT_SERVICE_UUID
from pairkit.transports.bumble import BumbleTransport, VirtualRadio, open_bumble
from pairkit.transports.tracing import claim_trace_path, redact, set_default_trace

from .btsnoop_harness import ACL, CID_ATT, CID_SIGNALLING, COMMAND, EVENT, Record, read_btsnoop
from .cli_helpers import Device, Lab, init_devices, run_cli

pytestmark = pytest.mark.timeout(120)

SERVICE_DATA = bytes([0x21]) + PAIRKIT_SERVICE_UUID.bytes[::-1]  # AD type, 128-bit UUID (LE)
SET_ADV_DATA = {0x2008, 0x2037}  # LE Set (Extended) Advertising Data
ADV_REPORTS = {0x02, 0x0D}  # LE (Extended) Advertising Report
LE_ENABLE_ENCRYPTION, LE_LTK_REPLY = 0x2019, 0x201A


def adverts_sent(records: list[Record]) -> list[bytes]:
    return [r.parameters for r in records
            if r.kind == COMMAND and r.opcode in SET_ADV_DATA and SERVICE_DATA in r.parameters]


def adverts_heard(records: list[Record]) -> list[bytes]:
    return [r.parameters for r in records
            if r.le_subevent in ADV_REPORTS and SERVICE_DATA in r.parameters]


def channels(records: list[Record]) -> set[int]:
    return {cid for r in records if (cid := r.l2cap_cid) is not None}


# -- the commands -----------------------------------------------------------------------------


async def test_host_discover_and_join_write_traces_wireshark_reads(
    tmp_path: Path, templates: dict[str, Device]
) -> None:
    radio = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pairkit.transports.radio", "--ports", "0", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    lab = Lab(tmp_path / "devices", templates)
    traces = {name: tmp_path / f"{name}.btsnoop" for name in ("host", "discover", "join")}
    try:
        assert radio.stdout is not None
        line = (await asyncio.wait_for(radio.stdout.readline(), 20)).decode()
        host_spec, guest_spec = line.split()[1:3]
        paul, george = lab.device("paul"), lab.device("george")
        host = await lab.host(
            paul, "--trace", str(traces["host"]), "--method", "pin", "--pin", "482913",
            "--visible", "60", "--yes", "--json", transport=host_spec,
        )
        found = (await george.run("discover", "--trace", str(traces["discover"]), "-t",
                                  guest_spec, "--timeout", "1", "--json")).ok()
        assert any(d["address"] == host.address for d in found.json()["devices"])
        joined = await george.join(host.address, "--trace", str(traces["join"]), "-t",
                                   guest_spec, "--method", "pin", "--pin", "482913", "--json")
        assert joined.ok().json()["ok"] is True
        await host.next_result()
    finally:
        await lab.close()
        radio.kill()
        await radio.wait()
    host_trace = read_btsnoop(traces["host"])
    # The host told its controller to advertise pairkit's hello...
    assert adverts_sent(host_trace)
    # ...the guest's controller reported it...
    assert adverts_heard(read_btsnoop(traces["discover"]))
    # ...and the pairing ran over the link: ATT (GATT) and L2CAP (signalling, then the
    # credit-based channel on a dynamic CID), seen from both ends.
    for trace in (host_trace, read_btsnoop(traces["join"])):
        cids = channels(trace)
        assert CID_ATT in cids and CID_SIGNALLING in cids
        assert any(cid >= 0x0040 for cid in cids)
        assert any(r.received for r in trace) and any(not r.received for r in trace)


async def test_an_unwritable_trace_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_devices({"me": home}, {"me": "Me"})
    result = await run_cli(home, "discover", "--trace", str(tmp_path / "no" / "such" / "x"),
                           "-t", "bumble:virtual", "--timeout", "0.1")
    assert result.rc != 0
    assert "error: cannot write the HCI trace" in result.err
    assert "Traceback" not in result.err


# -- no key in a trace ------------------------------------------------------------------------


async def test_no_link_key_reaches_a_trace(tmp_path: Path) -> None:
    """LE Secure Connections on a traced link: the LTK both sides derive is nowhere in either
    file; the commands that carried it are there, with zeros where the key was."""
    radio = VirtualRadio()
    host = await open_bumble("virtual", radio=radio, trace=str(tmp_path / "host.btsnoop"),
                             rng=_seeded(1))
    guest = await open_bumble("virtual", radio=radio, trace=str(tmp_path / "guest.btsnoop"),
                              rng=_seeded(2))
    keys: list[PairingKeys] = []
    try:
        await host.start_advertising(b"hello")
        accepting = asyncio.ensure_future(host.accept(timeout=5))
        link = await guest.connect(host.address, timeout=5)
        await accepting
        link.connection.on("pairing", keys.append)
        await asyncio.wait_for(link.connection.pair(), 5)
        assert link.connection.is_encrypted
    finally:
        await guest.close()
        await host.close()
    (pairing,) = keys
    assert pairing.ltk is not None
    ltk = pairing.ltk.value
    assert (tmp_path / "host.btsnoop").stat().st_mode & 0o077 == 0  # its owner's alone
    host_trace = read_btsnoop(tmp_path / "host.btsnoop")
    guest_trace = read_btsnoop(tmp_path / "guest.btsnoop")
    for path in ("host.btsnoop", "guest.btsnoop"):
        raw = (tmp_path / path).read_bytes()
        assert ltk not in raw and ltk[::-1] not in raw
    (enable,) = [r for r in guest_trace if r.opcode == LE_ENABLE_ENCRYPTION]
    assert enable.parameters[12:28] == bytes(16)
    (reply,) = [r for r in host_trace if r.opcode == LE_LTK_REPLY]
    assert reply.parameters[2:18] == bytes(16)


def _seeded(seed: int):  # type: ignore[no-untyped-def]
    import random

    draw = random.Random(seed)
    return lambda n: bytes(draw.getrandbits(8) for _ in range(n))


def test_redact_blanks_each_kind_of_key_and_nothing_else() -> None:
    key = os.urandom(16)
    handle = b"\x40\x00"
    cases = {
        # LE Enable Encryption: handle, Random (8), EDIV (2), LTK
        bytes([COMMAND, 0x19, 0x20, 28]) + handle + b"R" * 8 + b"E" * 2 + key: (16, 32),
        # LE Long Term Key Request Reply: handle, LTK
        bytes([COMMAND, 0x1A, 0x20, 18]) + handle + key: (6, 22),
        # LE Encrypt: key, plaintext
        bytes([COMMAND, 0x17, 0x20, 32]) + key + b"P" * 16: (4, 20),
        # LE Add Device To Resolving List: type, address, peer IRK, local IRK
        bytes([COMMAND, 0x27, 0x20, 39]) + b"\x01" + b"A" * 6 + key + key: (11, 43),
        # LE Generate DHKey Complete: subevent, status, DHKey (32)
        bytes([EVENT, 0x3E, 34, 0x09, 0x00]) + key + key: (5, 37),
        # SMP Identity Information over ACL (first fragment): IRK
        bytes([ACL]) + handle + (21).to_bytes(2, "little") + (17).to_bytes(2, "little")
        + b"\x06\x00" + b"\x08" + key: (10, 26),
    }
    for packet, (start, end) in cases.items():
        out = redact(packet)
        assert len(out) == len(packet) and key not in out
        assert out[start:end] == bytes(end - start)
        assert out[:start] == packet[:start] and out[end:] == packet[end:]
    # Not secrets: an ATT write, an SMP Pairing Public Key, an advertising report.
    for packet in (
        bytes([ACL]) + handle + (21).to_bytes(2, "little") + (17).to_bytes(2, "little")
        + b"\x04\x00" + b"\x52" + key,
        bytes([ACL]) + handle + (69).to_bytes(2, "little") + (65).to_bytes(2, "little")
        + b"\x06\x00" + b"\x0c" + key * 4,
        bytes([EVENT, 0x3E, 20, 0x02]) + key + b"\x00",
    ):
        assert redact(packet) == packet
    # A continuation fragment has no L2CAP header to read: left alone.
    continuation = bytes([ACL, 0x40, 0x10, 17, 0]) + b"\x06\x00\x08" + key[:14]
    assert redact(continuation) == continuation
    assert redact(b"") == b"" and redact(b"\x01") == b"\x01"


def test_a_second_transport_of_one_process_gets_its_own_file(tmp_path: Path) -> None:
    set_default_trace(tmp_path / "run.btsnoop")
    try:
        first, second, third = (claim_trace_path() for _ in range(3))
        assert [first, second, third] == [
            tmp_path / "run.btsnoop", tmp_path / "run-2.btsnoop", tmp_path / "run-3.btsnoop"
        ]
    finally:
        set_default_trace(None)
    assert claim_trace_path() is None


async def test_a_trace_that_cannot_be_opened_leaves_nothing_running(tmp_path: Path) -> None:
    radio = VirtualRadio()
    with pytest.raises(ConfigError, match="cannot write the HCI trace"):
        await open_bumble("virtual", radio=radio, trace=str(tmp_path / "missing" / "t"))
    assert radio.controllers == []
    transport = BumbleTransport("virtual", radio=radio)
    await transport.open()  # no default trace: nothing written, nothing refused
    await transport.close()


async def test_bleak_on_bumble_is_traced_too(tmp_path: Path) -> None:
    """``-t bleak:bumble:SPEC`` opens a bumble host as well: ``--trace`` covers it."""
    from pairkit.transports.registry import open_transport

    radio = VirtualRadio()
    host = await open_bumble("virtual", radio=radio)
    set_default_trace(tmp_path / "bleak.btsnoop")
    try:
        guest = await open_transport("bleak:bumble:virtual", radio=radio)
        try:
            await host.start_advertising(b"hello")
            heard = [s async for s in guest.scan(0.3)]
            assert any(s.address == host.address for s in heard)
        finally:
            await guest.close()
    finally:
        set_default_trace(None)
        await host.close()
    assert adverts_heard(read_btsnoop(tmp_path / "bleak.btsnoop"))
