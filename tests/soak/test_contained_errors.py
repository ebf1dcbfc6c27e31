"""Issue 17, finding 3: an error in one guest's task ends that guest, with a message to it and
one line on the host's stderr (no traceback, no path), never another guest or the host; a
broken stdout ends the host cleanly.  Played against real ``pairkit host`` processes over TCP
and, for the accept loop itself, a real listener in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pairkit.pairing.errors import ErrorCode, PairingError
from pairkit.session import accept_loop
from pairkit.transports.tcp import TcpListener, tcp_connect
from tests.cli_helpers import PAIRKIT_CMD, ROOT, Lab, cli_env

pytestmark = pytest.mark.soak

PIN = "482913"
#: 200 characters, 400 bytes: a name the protocol allows, over ext4's 255-byte limit
LONG_NAME = "é" * 200


async def test_a_failing_handler_ends_its_guest_only_and_is_reported_once() -> None:
    problems: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    reported: list[PairingError] = []
    served: list[bytes] = []

    async def handle(link: Any) -> None:
        data = await link.recv()
        if data == b"boom":
            raise RuntimeError("/srv/secret/path exploded")
        served.append(data)
        await link.send(data)
        await link.close()

    listener = await TcpListener.bind("127.0.0.1", 0)
    task = asyncio.create_task(accept_loop(listener, handle, on_error=reported.append))
    try:
        bad = await tcp_connect("127.0.0.1", listener.port)
        await bad.send(b"boom")
        with pytest.raises(PairingError):
            await asyncio.wait_for(bad.recv(), 5)  # closed at once, not left hanging
        await bad.close()
        good = await tcp_connect("127.0.0.1", listener.port)
        await good.send(b"fine")
        assert await asyncio.wait_for(good.recv(), 5) == b"fine"
        await good.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.close()
    assert len(reported) == 1 and reported[0].code == ErrorCode.INTERNAL
    assert "RuntimeError" in str(reported[0]) and "/srv" not in str(reported[0])
    assert served == [b"fine"]
    assert problems == [], problems


@pytest.mark.parametrize("case", ["long name", "vanished", "unreadable"])
async def test_cli_a_file_the_host_cannot_open_is_refused_and_the_host_goes_on(
    lab: Lab, tmp_path: Path, case: str
) -> None:
    if case == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    share = tmp_path / "share"
    share.mkdir()
    (share / "gone.txt").write_text("soon gone")
    (share / "locked.txt").write_text("nobody may read this")
    (share / "locked.txt").chmod(0)
    name = {"long name": LONG_NAME, "vanished": "gone.txt", "unreadable": "locked.txt"}[case]
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json",
                          "--share", str(share))
    if case == "vanished":
        (share / "gone.txt").unlink()
    started = time.monotonic()
    result = await george.run("get", host.target, name, "-m", "pin", "--pin", PIN,
                              "-o", str(tmp_path / "out.bin"), "--retries", "0")
    assert result.rc not in (0, 70), result
    assert time.monotonic() - started < 25, "the guest was left waiting"
    assert "Traceback" not in result.err and "internal error" not in result.err, result
    # The host is still there for the next guest, and said nothing it should not have.
    fresh = [m.group(1) for line in host.lines if (m := re.match(r"^PIN: (\d{6})", line))][-1]
    ok = await ringo.join(host.target, "-m", "pin", "--pin", fresh, "--json")
    assert ok.rc == 0, f"{ok}\nhost:\n{host.stderr}"
    assert "Task exception" not in host.stderr and str(share) not in host.stderr, host.stderr


async def test_cli_host_json_into_head_ends_cleanly(lab: Lab) -> None:
    """``pairkit host --json | head -1`` in a real shell: the second result cannot be written,
    and the host stops with one error line and exit 1, no traceback."""
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host_cmd = " ".join([*PAIRKIT_CMD, "host", "-t", "tcp:127.0.0.1:0", "-m", "pin", "--yes",
                         "--json"])
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f'{host_cmd} | head -1; echo "host-exit=${{PIPESTATUS[0]}}" >&2',
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(paul.home),
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def line_matching(prefix: str) -> str:
        async with asyncio.timeout(20):
            while True:
                for line in lines:
                    if line.startswith(prefix) or prefix in line:
                        return line
                raw = await proc.stderr.readline()  # type: ignore[union-attr]
                if not raw:
                    raise AssertionError(f"no {prefix!r}; stderr:\n" + "\n".join(lines))
                lines.append(raw.decode(errors="replace").rstrip("\n"))

    try:
        address = (await line_matching("is waiting on")).rsplit(" ", 1)[1]
        pin = (await line_matching("PIN: ")).split()[1]
        first = await george.join(f"tcp:{address}", "-m", "pin", "--pin", pin, "--json")
        assert first.rc == 0, first
        lines.clear()
        pin = (await line_matching("PIN: ")).split()[1]
        second = await ringo.join(f"tcp:{address}", "-m", "pin", "--pin", pin, "--json")
        assert second.rc == 0, second
        exit_line = await line_matching("host-exit=")
        out = await asyncio.wait_for(proc.stdout.read(), 10)  # type: ignore[union-attr]
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = "\n".join(lines)
    assert exit_line == "host-exit=1", err
    assert "standard output was closed" in err, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert out.count(b"\n") == 1  # the first guest's result, read by head
