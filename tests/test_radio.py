"""``pairkit radio``: linked virtual controllers served over TCP to separate bumble hosts.

The main test runs three processes, as a user would: the radio (``python -m transports.radio``),
a host in a child process, and the guest in the test process; then it kills the host and checks
that the guest's link ends (the radio turns a vanished host process into a connection timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairkit.pairing.errors import ConfigError, LinkClosedError, TransportError
from pairkit.transports.bumble import BumbleTransport, open_bumble
from pairkit.transports.radio import main, serve_radio, start_radio

ROOT = Path(__file__).resolve().parent.parent

HOST_SCRIPT = """
import asyncio, sys
from pairkit.transports.bumble import open_bumble

async def run(spec):
    host = await open_bumble(spec)
    await host.start_advertising(b"radio-host")
    print("address", host.address, flush=True)
    link = await host.accept(timeout=20)
    while True:
        message = await link.recv()
        await link.send(message.upper())

asyncio.run(run(sys.argv[1]))
"""


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.wait()


async def _line(process: asyncio.subprocess.Process, timeout: float = 20.0) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    assert line, "the child process exited early"
    return line.decode().strip()


@pytest.fixture
async def radio_process() -> AsyncIterator[list[str]]:
    """A radio with two ports in a subprocess; yields the two bumble transport names."""
    process = await _spawn("-m", "pairkit.transports.radio", "--ports", "0", "0")
    try:
        line = await _line(process)
        names = [
            word.removeprefix("bumble:") for word in line.split() if word.startswith("bumble:")
        ]
        assert line.startswith("radio:") and len(names) == 2, line
        yield names
    finally:
        await _stop(process)


async def test_host_and_guest_in_separate_processes(radio_process: list[str]) -> None:
    host_spec, guest_spec = radio_process
    host_process = await _spawn("-c", HOST_SCRIPT, host_spec)
    guest: BumbleTransport | None = None
    try:
        host_address = (await _line(host_process)).split()[1]
        guest = await open_bumble(guest_spec)
        async for sighting in guest.scan(5.0):
            if sighting.address == host_address:
                assert sighting.payload == b"radio-host"
                break
        else:
            raise AssertionError("the host's hello was not heard through the radio")
        link = await guest.connect(host_address, timeout=5)
        for word in (b"hello", b"over", b"tcp", bytes(range(97, 123)) * 40):
            await link.send(word)
            assert await asyncio.wait_for(link.recv(), 5) == word.upper()
        # The host process dies without a word: the radio ends its connections.
        host_process.kill()
        with pytest.raises(LinkClosedError, match="out of range"):
            await asyncio.wait_for(link.recv(), 5)
    finally:
        await _stop(host_process)
        if guest is not None:
            await guest.close()


async def test_in_process_radio_serves_three_devices() -> None:
    async with await start_radio([0, 0, 0]) as radio:
        assert len(radio.ports) == 3 and all(radio.ports)
        names = [name.removeprefix("bumble:") for name in radio.transport_names]
        async with contextlib.AsyncExitStack() as stack:
            host, *guests = [
                await stack.enter_async_context(BumbleTransport(name)) for name in names
            ]
            await host.start_advertising(b"three")
            links = [await guest.connect(host.address, timeout=5) for guest in guests]
            accepted = {}
            for _ in guests:
                link = await host.accept(timeout=5)
                accepted[link.peer] = link
            for guest, link in zip(guests, links, strict=True):
                await link.send(guest.address.encode())
                assert await accepted[guest.address].recv() == guest.address.encode()


async def test_a_port_serves_one_host_at_a_time() -> None:
    async with await start_radio([0, 0]) as radio:
        first = await open_bumble(f"tcp-client:127.0.0.1:{radio.ports[0]}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", radio.ports[0])
            assert await asyncio.wait_for(reader.read(1), 5) == b"", "a second host is refused"
            writer.close()
        finally:
            await first.close()


async def test_bad_ports_are_refused() -> None:
    with pytest.raises(ConfigError):
        await start_radio([0])
    with pytest.raises(ConfigError):
        await start_radio([5000, 5000])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(TransportError):
            await start_radio([busy.getsockname()[1], 0])


async def test_serve_radio_prints_its_ports_and_stops_when_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bound: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(serve_radio([0, 0], ready=bound.set_result))
    ports = await asyncio.wait_for(bound, 5)
    assert len(ports) == 2 and all(ports)
    assert capsys.readouterr().out.strip() == "radio: " + " ".join(
        f"bumble:tcp-client:127.0.0.1:{port}" for port in ports
    )
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    with pytest.raises(OSError):  # the ports are closed
        await asyncio.open_connection("127.0.0.1", ports[0])


def test_cli_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ports", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
