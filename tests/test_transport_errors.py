"""A radio that cannot be used, said in words with the next step, through the real command.

Provoked for real where this machine can: a USB dongle that is not there (the real libusb path),
a ``pairkit radio`` port nobody serves, and a radio port another host process holds (a real
``pairkit radio`` and two real hosts).  The kinds no machine here can provoke (no permission, a
dongle claimed elsewhere) go through the same translation with libusb's and the OS's own error
types.  No output may hold a traceback, a third party's error text or an object's repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit.cli.common import exit_code_for
from pairkit.pairing.errors import ErrorCode, LinkClosedError, TransportError
from pairkit.transports.ble.open_errors import describe_open_failure, open_failure

from .cli_helpers import (
    PAIRKIT_CMD,
    ROOT,
    Device,
    HostProcess,
    Result,
    cli_env,
    free_port,
    init_devices,
    run_cli,
    use_bytecode_cache,
)

#: what no output of a failing command may contain
FORBIDDEN = (
    re.compile(r"Traceback"),
    re.compile(r"(?m)^(?!error: )\w*Error: "),
    re.compile(r"\bat 0x[0-9a-f]{6,}"),
    re.compile(r"LIBUSB_ERROR|Connect call failed|\x1b\["),  # libusb's, asyncio's, colours
)


def assert_clean(what: str, text: str) -> None:
    for rx in FORBIDDEN:
        assert not rx.search(text), f"{what} printed {rx.pattern!r}:\n{text}"


def assert_ends_with(result: Result, rc: int, error: str, what: str) -> None:
    """The command exited ``rc`` with ``error: ERROR`` as its first line and nothing unclean."""
    assert result.rc == rc, result
    assert result.err.splitlines()[0] == f"error: {error}", result
    assert_clean(what, result.out + result.err)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Device:
    use_bytecode_cache(tmp_path_factory.mktemp("pycache"))
    home = tmp_path_factory.mktemp("radio-errors") / "paul"
    init_devices({"paul": home}, {"paul": "Paul's phone"})
    return Device(home, "Paul's phone")



NO_USB = not os.path.isdir("/dev/bus/usb") or not any(Path("/dev/bus/usb").iterdir())


@pytest.mark.skipif(not NO_USB, reason="this machine has USB devices (a dongle may be there)")
@pytest.mark.parametrize(
    "args",
    [
        ("discover", "-t", "bumble:usb:0", "--timeout", "1"),
        ("group", "send", "door", "open"),  # bumble:usb:0 is its default transport
    ],
    ids=["discover", "group-send-default"],
)
async def test_no_dongle_says_what_to_do(device: Device, args: tuple[str, ...]) -> None:
    if args[0] == "group":
        await device.run("group", "create", "door")
    result = await device.run(*args)
    assert result.rc == 6, result  # not found
    first = result.err.splitlines()[0]
    assert first.startswith("error: no Bluetooth controller found at usb:0: "), result
    assert "pairkit radio" in first and "Real radios" in first
    assert_clean(" ".join(args), result.out + result.err)


async def test_a_radio_port_nobody_serves(device: Device) -> None:
    port = free_port()
    for args in (("discover", "-t", f"bumble:tcp-client:127.0.0.1:{port}", "--timeout", "1"),
                 ("host", "-t", f"bumble:tcp-client:127.0.0.1:{port}", "--once")):
        result = await device.run(*args)
        assert_ends_with(result, 6, (
            f"nothing listens at 127.0.0.1:{port}: start the virtual radio first "
            "(pairkit radio --ports P1 P2) and give one of its ports"
        ), " ".join(args))


async def test_a_radio_that_dies_while_a_command_opens_it_is_gone_not_taken(
    device: Device,
) -> None:
    """A radio killed while a command starts its controller hangs up just as a radio refusing a
    second host does.  The command must not send the person looking for the process that holds
    the port: nothing listens there any more, exit 6 (as for a port nobody serves).  The radio
    here is a real server on 127.0.0.1 that dies as a killed process does: it stops listening
    and drops the connection the moment the host's first HCI command arrives."""
    gone: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        server.close()
        writer.transport.abort()
        gone.append(True)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for args in (("discover", "-t", f"bumble:tcp-client:127.0.0.1:{port}", "--timeout", "5"),
                     ("host", "-t", f"bumble:tcp-client:127.0.0.1:{port}", "--once")):
            if not server.is_serving():
                server = await asyncio.start_server(serve, "127.0.0.1", port)
            result = await device.run(*args)
            assert gone, "the command never reached the radio"
            assert_ends_with(result, 6, (
                f"nothing listens at 127.0.0.1:{port} any more: the virtual radio went away "
                "while this opened it; start it again (pairkit radio --ports P1 P2) and give "
                "one of its ports"
            ), " ".join(args))
            gone.clear()
    finally:
        server.close()


async def test_an_unknown_bumble_transport_is_a_usage_error(device: Device) -> None:
    result = await device.run("discover", "-t", "bumble:carrier-pigeon", "--timeout", "1")
    assert result.rc == 2, result
    assert result.err.startswith("error: bumble has no transport 'carrier-pigeon': give usb:N")
    assert_clean("bumble:carrier-pigeon", result.err)


@contextlib.asynccontextmanager
async def radio() -> AsyncIterator[tuple[asyncio.subprocess.Process, list[int]]]:
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, "radio", "--ports", "0", "0", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=cli_env(None),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ports = [int(p) for p in re.findall(r"bumble:tcp-client:127\.0\.0\.1:(\d+)", line)]
        assert len(ports) == 2, line
        yield proc, ports
    finally:
        if proc.returncode is None:
            proc.send_signal(2)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_a_second_host_on_a_busy_radio_port(device: Device, tmp_path: Path) -> None:
    async with radio() as (proc, ports):
        transport = f"bumble:tcp-client:127.0.0.1:{ports[0]}"
        first = await HostProcess.start(device.home, "-t", transport)
        try:
            second = await run_cli(device.home, "host", "-t", transport, "--once", timeout=40)
        finally:
            await first.stop()
        proc.send_signal(2)
        _, radio_err = await asyncio.wait_for(proc.communicate(), 10)
    assert_ends_with(second, 1, (
        f"the radio port 127.0.0.1:{ports[0]} is taken: another pairkit process uses it "
        "(one process per port: give another port of 'pairkit radio', or start it with more "
        "ports)"
    ), "second host")
    assert_clean("first host", first.stderr)
    text = radio_err.decode()
    assert f"radio: refused a second host on port {ports[0]} (one host per port)" in text, text
    assert_clean("radio", text)


# -- the kinds this machine cannot provoke, through the same translation ----------------------


class USBErrorAccess(Exception):  # named as libusb1's classes are (matched by name)
    pass


class USBErrorBusy(Exception):
    pass


class USBErrorNoDevice(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "spec", "start", "code", "exit_code"),
    [
        (USBErrorNoDevice(), "usb:1", "no Bluetooth controller found at usb:1: plug in",
         ErrorCode.NOT_FOUND, 6),
        (USBErrorAccess(), "usb:0", "no permission for the USB Bluetooth dongle: add a udev rule",
         ErrorCode.PERMISSION, 5),
        (USBErrorBusy(), "usb:0", "the USB Bluetooth dongle is busy", ErrorCode.UNKNOWN, 1),
        (PermissionError(errno.EPERM, "Operation not permitted"), "hci-socket:0",
         "no permission for the HCI socket of hci0", ErrorCode.PERMISSION, 5),
        (OSError(errno.EBUSY, "Device or resource busy"), "hci-socket:0",
         "hci0 is in use by BlueZ", ErrorCode.UNKNOWN, 1),
        (PermissionError(errno.EACCES, "Permission denied"), "serial:/dev/ttyACM0:1000000",
         "no permission for the serial port /dev/ttyACM0: add your user to the dialout group",
         ErrorCode.PERMISSION, 5),
        (LinkClosedError("the controller closed the connection"), "tcp-client:127.0.0.1:7001",
         "the radio port 127.0.0.1:7001 is taken", ErrorCode.UNKNOWN, 1),
    ],
    ids=["usb-missing", "usb-denied", "usb-busy", "hci-denied", "hci-busy", "serial-denied",
         "radio-port-taken"],
)
def test_each_kind_has_words_a_next_step_and_an_exit_code(
    exc: BaseException, spec: str, start: str, code: ErrorCode, exit_code: int
) -> None:
    wrapped = TransportError("opening the Bluetooth controller: ...")
    wrapped.__cause__ = exc  # as bumble's guard raises it
    error = open_failure(wrapped, spec)
    assert str(error).startswith(start), error
    assert error.code == code and exit_code_for(error) == exit_code
    assert_clean(spec, str(error))
    if describe_open_failure(exc, spec)[1] == "denied":  # points to how to get permission
        assert any(w in str(error) for w in ("README", "dialout", "setcap")), error
