"""Naming a controller: ``bumble:usb:VID:PID`` parsed before libusb is touched, ``bleak:hciN``
reaching bleak as BlueZ's adapter, serial with RTS/CTS passed to bumble as it reads it, and
``pairkit radio --list`` (run for real; its formatting also from a probe result given to it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from pairkit.pairing.errors import ConfigError, NotFoundError, TransportError
from pairkit.transports import bleak as bleak_transport
from pairkit.transports.bleak import BleakTransport, parse_bluez_adapter
from pairkit.transports.bumble import BumbleTransport, bumble_transport_spec
from pairkit.transports.controllers import (
    LinuxAdapter,
    UsbController,
    UsbSpec,
    format_controllers,
    linux_adapters,
    list_controllers,
    parse_usb_spec,
)
from pairkit.transports.registry import open_transport

from .cli_helpers import PAIRKIT_CMD, ROOT

# -- bumble:usb:... ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "spec"),
    [
        ("0", UsbSpec(index=0)),
        ("12", UsbSpec(index=12)),
        ("0a12:0001", UsbSpec(vendor_id=0x0A12, product_id=0x0001)),
        ("0B05:17CB!", UsbSpec(vendor_id=0x0B05, product_id=0x17CB, forced=True)),
        ("2fe3:000b/00E04C239987",
         UsbSpec(vendor_id=0x2FE3, product_id=0x000B, serial="00E04C239987")),
        ("04b4:f901#2", UsbSpec(vendor_id=0x04B4, product_id=0xF901, nth=2)),
    ],
)
def test_usb_specs_are_parsed(rest: str, spec: UsbSpec) -> None:
    assert parse_usb_spec(rest) == spec
    assert bumble_transport_spec(f"usb:{rest}") == f"usb:{rest}"  # bumble gets it unchanged


@pytest.mark.parametrize("rest", ["", "0a12", "0a12:", "zz12:0001", "0a12:00011", "0a12:0001/",
                                  "0a12:0001#", "-1", "0a12-0001", "usb:0"])
async def test_a_malformed_usb_spec_is_refused_before_usb_is_opened(rest: str) -> None:
    with pytest.raises(ConfigError, match=r"names no USB controller: use usb:N, usb:VID:PID"):
        parse_usb_spec(rest)
    with pytest.raises(ConfigError, match="names no USB controller"):
        BumbleTransport(f"usb:{rest}")
    with pytest.raises(ConfigError, match="names no USB controller"):
        await open_transport(f"bumble:usb:{rest}")


# -- serial with flow control -------------------------------------------------------------------


def test_serial_flow_control_reaches_bumble_in_its_syntax() -> None:
    # bumble's serial transport: <device-path>[,<speed>][,rtscts][,dsrdtr][,delay][,resync]
    assert bumble_transport_spec("serial:/dev/ttyACM0,1000000,rtscts") == (
        "serial:/dev/ttyACM0,1000000,rtscts"
    )
    assert bumble_transport_spec("serial:/dev/ttyACM0:115200") == "serial:/dev/ttyACM0,115200"
    assert bumble_transport_spec("serial:/dev/ttyACM0") == "serial:/dev/ttyACM0"


async def test_a_serial_port_that_does_not_exist_is_said_plainly(tmp_path: Path) -> None:
    missing = tmp_path / "ttyACM9"
    with pytest.raises(TransportError) as failed:
        await open_transport(f"bumble:serial:{missing},1000000,rtscts", open_timeout=2)
    assert str(missing) in str(failed.value) and "Traceback" not in str(failed.value)


# -- bleak:hciN ---------------------------------------------------------------------------------


def test_bluez_adapters_are_parsed() -> None:
    assert parse_bluez_adapter("hci0") == "hci0" and parse_bluez_adapter("hci12") == "hci12"
    for bad in ("hci", "hcix", "hci01", "HCI1", "hci1 ", "bumble:virtual", ""):
        assert parse_bluez_adapter(bad) is None
    assert BleakTransport("hci1").name == "bleak:hci1"
    for bad in ("hci", "hci01", "hcix", "hci1:x"):
        with pytest.raises(ConfigError, match=r"bleak:hciN"):
            BleakTransport(bad)
    with pytest.raises(ConfigError, match="only goes with bleak:bumble:SPEC"):
        BleakTransport("hci1", radio=object())


class Recorded(Exception):
    pass


async def test_the_adapter_reaches_bleaks_scanner_and_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bleak:hci1`` builds bleak's scanner and client with ``bluez={"adapter": "hci1"}``
    (bleak 3.1's form of ``adapter="hci1"``).  bleak's classes are replaced by subclasses that
    record their keywords and fail at once (there is no BlueZ here)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    class Scanner(BleakScanner):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(("scanner", kwargs))

        async def start(self) -> None:
            raise BleakError("no BlueZ in this test")

        async def stop(self) -> None:
            return None

    class Client(BleakClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(("client", kwargs))

        async def connect(self, *args: Any, **kwargs: Any) -> None:
            raise BleakError("no BlueZ in this test")

    monkeypatch.setattr(bleak_transport, "BleakScanner", Scanner)
    monkeypatch.setattr(bleak_transport, "BleakClient", Client)
    transport = await open_transport("bleak:hci1", connect_attempts=1)
    try:
        with pytest.raises(TransportError):
            async for _ in transport.scan(0.5):
                pass
        transport._remember(BLEDevice("C1:22:33:44:55:66", "host", None))
        with pytest.raises(TransportError):
            await transport.connect("C1:22:33:44:55:66", timeout=5)
    finally:
        await transport.close()
    assert ("scanner", {"bluez": {"adapter": "hci1"}}) in seen
    clients = [kwargs for kind, kwargs in seen if kind == "client"]
    assert clients and all(k.get("bluez") == {"adapter": "hci1"} for k in clients)


# -- pairkit radio --list -----------------------------------------------------------------------


def test_a_listing_names_each_controller_the_steadiest_way_first() -> None:
    usb = [
        UsbController(0x8087, 0x0A2B, None, "Intel Corp.", None),
        UsbController(0x0A12, 0x0001, "ABC123", None, "CSR8510 A10"),
        UsbController(0x0A12, 0x0001, "DEF456", None, "CSR8510 A10"),
    ]
    lines = list_controllers(lambda: usb, lambda: [LinuxAdapter("hci0", "btusb")])
    assert lines == [
        "USB 8087:0a2b  Intel Corp.",
        "  -t bumble:usb:8087:0a2b   (recommended: the same controller wherever it is plugged)",
        "  -t bumble:usb:0",
        "USB 0a12:0001  CSR8510 A10",
        "  -t bumble:usb:0a12:0001   (recommended: the same controller wherever it is plugged)",
        "  -t bumble:usb:0a12:0001/ABC123",
        "  -t bumble:usb:1",
        "USB 0a12:0001  CSR8510 A10",
        "  -t bumble:usb:0a12:0001/DEF456   (recommended: the same controller wherever it is "
        "plugged)",
        "  -t bumble:usb:0a12:0001#1",
        "  -t bumble:usb:2",
        "bumble detaches the kernel driver of the controller it opens: the system loses it "
        "while pairkit runs (usb:0 is often the laptop's built-in one).",
        "Linux adapter hci0 (driver btusb)",
        "  -t bleak:hci0   (guest, through BlueZ; shares the adapter)",
        "  -t bumble:hci-socket:0   (host or guest; BlueZ must let go of it first)",
    ]
    for line in lines:
        if line.lstrip().startswith("-t "):
            name = line.split()[1]
            if name.startswith("bumble:usb:"):
                parse_usb_spec(name.removeprefix("bumble:usb:"))  # every name it prints parses
    assert format_controllers([], []) == []


def test_none_found_is_said() -> None:
    with pytest.raises(NotFoundError, match="no Bluetooth controller found: plug in"):
        list_controllers(lambda: [], lambda: [])


def test_linux_adapters_are_read_from_sysfs(tmp_path: Path) -> None:
    assert linux_adapters(tmp_path / "absent") == []
    for name in ("hci10", "hci1", "rfkill0"):
        (tmp_path / name).mkdir()
    (tmp_path / "hci1" / "device").mkdir()
    (tmp_path / "hci1" / "device" / "uevent").write_text("DRIVER=hci_uart_bcm\nX=1\n")
    assert linux_adapters(tmp_path) == [
        LinuxAdapter("hci1", "hci_uart_bcm"), LinuxAdapter("hci10", None)
    ]


def test_pairkit_radio_list_runs_for_real() -> None:
    """The command itself, on this machine: a listing (exit 0), or none found (exit 6) with a
    sentence saying why, never a traceback."""
    done = subprocess.run(
        [*PAIRKIT_CMD, "radio", "--list"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr + done.stdout
    if done.returncode == 0:
        assert "  -t bumble:" in done.stdout or "  -t bleak:hci" in done.stdout
    else:
        assert done.returncode == 6, done
        assert done.stdout == ""
        assert done.stderr.startswith("error: no ") and "Bluetooth controller" in done.stderr
    refused = subprocess.run(
        [*PAIRKIT_CMD, "radio", "--list", "--ports", "1", "2"], capture_output=True, text=True,
        timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 2 and "--list takes no ports" in refused.stderr
