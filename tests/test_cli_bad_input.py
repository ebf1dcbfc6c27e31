"""Bad input is a usage error, never an internal one (issue 17, finding 10), through the real
``pairkit`` command: numbers that are not finite or out of range, QR codes that are not URIs a
parser survives, a picture that would decode to gigabytes, an environment variable that is not
text.  Each ends with its own message and exit code, no traceback, no third-party text."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tests.cli_helpers import Device, init_devices, run_cli

USAGE = 2


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Device:
    home = tmp_path_factory.mktemp("bad-input") / "paul"
    init_devices({"paul": home}, {"paul": "Paul"})
    return Device(home, "Paul")


def bomb_png(path: Path, side: int) -> Path:
    """A one-bit PNG of ``side`` x ``side`` pixels, all zero: a few kB that decode to
    side * side pixels (the decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + bytes((side + 7) // 8) for _ in range(side))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--guest-hours", "nan", "is not a finite number"),
    ("--guest-hours", "inf", "is not a finite number"),
    ("--guest-hours", "1e300", "is not from more than 0 to 8784 hours"),
    ("--guest-hours", "-1", "is not from more than 0 to 8784 hours"),
    ("--visible", "-5", "is not from 0 to 2592000 seconds"),
    ("--visible", "nan", "is not a finite number"),
    ("--visible", "1e30", "is not from 0 to 2592000 seconds"),
    ("--qr-ttl", "nan", "is not a finite number"),
    ("--timeout", "inf", "is not a finite number"),
])
async def test_numbers_are_checked_when_parsed(device: Device, option: str, value: str,
                                               says: str) -> None:
    done = await run_cli(device.home, "host", "-t", "tcp:127.0.0.1:0", "--once", option, value)
    assert done.rc == USAGE, done.err
    assert f"Invalid value for '{option}': '{value}' {says}" in done.err


async def test_join_timeouts_are_checked_too(device: Device) -> None:
    done = await run_cli(device.home, "join", "tcp:127.0.0.1:9", "--timeout", "nan")
    assert done.rc == USAGE and "Invalid value for '--timeout'" in done.err


@pytest.mark.parametrize("uri", ["https://[fe80::1/x", "pairkit://[::1", "pairkit:qr?v=1&h=[x"])
async def test_a_qr_code_that_breaks_the_url_parser_is_just_not_a_qr_code(
    device: Device, uri: str
) -> None:
    done = await run_cli(device.home, "join", "tcp:127.0.0.1:9", "--qr", uri)
    assert done.rc not in (0, 70), done.err
    assert "internal error" not in done.err and done.err.startswith("error: ")


async def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    device: Device, tmp_path: Path
) -> None:
    for side, says in ((10_000, "10000x10000 pixels, more than a QR code photo needs"),
                       (30_000, "cannot read")):
        picture = bomb_png(tmp_path / f"bomb-{side}.png", side)
        assert picture.stat().st_size < 200_000
        done = await run_cli(device.home, "join", "tcp:127.0.0.1:9", "--qr-image", str(picture))
        assert done.rc not in (0, 70), done.err
        assert says in done.err
        assert "DecompressionBomb" not in done.err and "warn" not in done.err


async def test_a_pin_in_the_environment_that_is_not_text(device: Device) -> None:
    done = await run_cli(device.home, "whoami", pin="\udcff\udcfe")  # bytes ff fe
    assert done.rc == USAGE
    assert "PAIRKIT_PIN is not valid UTF-8 text" in done.err
