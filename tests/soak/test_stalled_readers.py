"""Issue 17, finding 2: paired guests that ask for a big file and never read do not block
anyone, and the host drops each of them once it has waited the idle limit on its send.

The host is pairkit's own host flow (cli.flows.run_host) on a real TCP listener in this process;
the stalled guests are real guests (the session pipeline over real TCP) that pair by PIN, ask for
a 48 MB file and stop reading; the legitimate guest is a ``pairkit join`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from pairkit.admission import AdmissionLimits
from pairkit.cli.common import CliDelegate
from pairkit.cli.flows import HostOptions, run_host
from pairkit.pairing.methods import PairingConfig
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.pairing.service import GetRequest
from pairkit.session import GuestSide, open_session
from pairkit.transports.tcp import tcp_connect
from tests.attack_harness import open_ks
from tests.cli_helpers import Lab

pytestmark = pytest.mark.soak

#: stalled guests, all of one device (George's keystore): as many sessions as one device may
#: hold at once (a fifth would close its first: attack review, finding 8)
STALLED = AdmissionLimits().per_peer
IDLE = 3.0


async def stalled_reader(ks: Any, host: str, port: int, pin: str) -> Any:
    """Pair by ``pin``, ask for big.bin, and read nothing more; the secure link."""
    link = await tcp_connect(host, port, timeout=10)
    config = PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS,
                           step_timeout=10)
    side = GuestSide(ks, config, Method.PIN, transport="tcp", pin=pin, step_timeout=10)
    done = await open_session(link, side, delegate=CliDelegate(yes=True, quiet=True))
    await done.channel.send(GetRequest("big.bin", 0).encode())
    return done.channel


async def test_stalled_readers_neither_block_a_join_nor_stay(
    lab: Lab, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "big.bin").write_bytes(bytes(48 << 20))
    paul_ks = open_ks(lab.device("paul"))
    george, ringo = lab.device("george"), lab.device("ringo")
    george_ks = open_ks(george)
    where: dict[str, Any] = {}
    ready = asyncio.Event()

    def on_ready(address: str, state: Any) -> None:
        where["address"], where["state"] = address, state
        ready.set()

    opts = HostOptions(transport="tcp:127.0.0.1:0", methods=frozenset({Method.PIN}), yes=True,
                       quiet=True, share=share, serve_idle=IDLE, json=True)
    host = asyncio.create_task(run_host(paul_ks, opts, ready=on_ready, emit=lambda _r: None))
    held = []
    try:
        await asyncio.wait_for(ready.wait(), 10)
        h, p = where["address"].rsplit(":", 1)
        state = where["state"]
        for _ in range(STALLED):
            pin = state.pin
            held.append(await asyncio.wait_for(stalled_reader(george_ks, h, int(p), pin), 20))
            for _ in range(100):  # the host draws the next PIN once a guest is served
                if state.pin is not None and state.pin != pin:
                    break
                await asyncio.sleep(0.02)
        # Every stalled guest now holds its session, its receive window full.
        result = await ringo.join(f"tcp:{where['address']}", "-m", "pin", "--pin", state.pin,
                                  "--json")
        assert result.rc == 0, result
        # And the host gives up on each stalled guest after the idle limit.
        err = ""
        for _ in range(200):
            err += capfd.readouterr().err
            if err.count("stopped reading") >= STALLED:
                break
            await asyncio.sleep(0.1)
        assert err.count("stopped reading") >= STALLED, err
        assert "Traceback" not in err
    finally:
        host.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await host
        for slink in held:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slink.link.close(), 3)
