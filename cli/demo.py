"""``pairkit demo``: the Paul-and-George scenario in one process, narrated.

Paul's phone hosts; George's phone, a stranger, finds it, pairs by the chosen method, and they
talk over the secure channel; with ``--scenario resume`` George then reconnects as a known peer
with no prompt.  Both devices get real keystores in a temporary directory; Paul's answers are
scripted.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pairing.keystore import Keystore
from pairing.methods import Session
from pairing.negotiation import Method
from pairing.securelink import SecureLink

from .flows import HostOptions, JoinOptions, run_host, run_join

DEMO_PIN = "1234"  # the demo keystores' own PIN (throwaway keystores in a temporary directory)


class Narrator:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.step = 0
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    def section(self, title: str) -> None:
        self.step += 1
        self.say(f"\n{self.step}. {title}")

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.perf_counter() - self.t0, 4)


async def _open_pair(
    transport: str, method: Method
) -> tuple[Any, Any, str, Callable[[], Any]]:
    """(host transport, guest transport, host address, closer) on one pretend or virtual radio."""
    if transport == "loopback":
        from transports.loopback import LoopbackMedium

        # For method clear, pretend the link layer encrypts (as BLE LE Secure Connections would).
        medium = LoopbackMedium(encrypted=method is Method.CLEAR)
        host_t = medium.endpoint("paul-phone", name="Paul's phone")
        guest_t = medium.endpoint("george-phone", name="George's phone")

        async def close() -> None:
            for t in (host_t, guest_t):
                with contextlib.suppress(Exception):
                    await t.close()

        return host_t, guest_t, "paul-phone", close
    if transport == "bumble:virtual":
        from transports.bumble import VirtualRadio, open_bumble

        radio = VirtualRadio()
        host_t = await open_bumble("virtual", radio=radio, name="Paul's phone")
        guest_t = await open_bumble("virtual", radio=radio, name="George's phone")

        async def close_ble() -> None:
            for t in (guest_t, host_t):
                with contextlib.suppress(Exception):
                    await t.close()

        return host_t, guest_t, host_t.address, close_ble
    raise click.UsageError(f"the demo runs on loopback or bumble:virtual, not {transport!r}")


async def run_demo(
    scenario: str, transport: str, method: Method, *, quiet: bool
) -> dict[str, Any]:
    n = Narrator(quiet)
    summary: dict[str, Any] = {"ok": True, "scenario": scenario, "transport": transport,
                               "method": method.label}
    with tempfile.TemporaryDirectory(prefix="pairkit-demo-") as tmp:
        n.section("Identification: each phone gets an identity in a keystore sealed by its PIN")
        paul = Keystore.create(Path(tmp) / "paul" / "keystore.pk", DEMO_PIN, name="Paul's phone")
        george = Keystore.create(
            Path(tmp) / "george" / "keystore.pk", DEMO_PIN, name="George's phone"
        )
        n.say(f"   Paul's phone   id {paul.device_id}")
        n.say(f"   George's phone id {george.device_id}")
        n.mark("identities")

        host_t, guest_t, address, close = await _open_pair(transport, method)
        try:
            n.section(f"Discovery: Paul's phone is waiting on {transport} at {address}")
            pin_box: dict[str, str] = {}
            started = asyncio.Event()
            messages: dict[str, str] = {}

            def ready(addr: str, state: Any) -> None:
                if state.pin is not None:
                    pin_box["pin"] = state.pin
                if method is Method.QR:
                    pin_box["qr"] = state.last_qr.to_uri()
                started.set()

            async def paul_serves(slink: SecureLink, session: Session, membership: Any) -> None:
                request = await slink.recv()
                messages["paul_got"] = request.decode()
                await slink.send(b"Here are my videos: holiday.mp4, birthday.mp4")

            host_opts = HostOptions(
                transport=transport, methods=frozenset({method, Method.RESUME}), yes=True,
                once=False, json=True, quiet=True,
            )
            host_results: list[dict[str, Any]] = []
            host_task = asyncio.create_task(
                run_host(paul, host_opts, on_session=paul_serves, emit=host_results.append,
                         ready=ready, transport_obj=host_t)
            )
            await asyncio.wait_for(started.wait(), 10)

            async def george_asks(slink: SecureLink, session: Session, membership: Any) -> None:
                await slink.send(b"Hello Paul, may I see your videos?")
                messages["george_got"] = (await slink.recv()).decode()

            n.section(f"Session key: George pairs with Paul by '{method.label}'")
            if method is Method.PIN:
                n.say(f"   Paul's screen shows PIN {pin_box['pin']}; George types it")
            qr = None
            if method is Method.QR:
                from pairing.qr import QrCode

                qr = QrCode.parse(pin_box["qr"])
                n.say("   George scans the QR code on Paul's screen")
            join_opts = JoinOptions(
                target=f"{transport}" if transport == "loopback" else transport, method=method,
                pin=pin_box.get("pin"), qr=qr, yes=True, json=True,
            )
            t0 = time.perf_counter()
            session, _ = await run_join(
                george, join_opts, on_session=george_asks, transport_obj=guest_t, address=address
            )
            summary["pairing_seconds"] = round(time.perf_counter() - t0, 4)
            n.mark("paired")
            await _wait_for(lambda: len(host_results) >= 1)
            n.say(f"   George's session fingerprint: {session.fingerprint}")
            n.say(f"   Paul's session fingerprint:   {host_results[0]['session']}")
            summary["session"] = {"george": session.fingerprint,
                                  "paul": host_results[0]["session"]}
            summary["sessions_match"] = session.fingerprint == host_results[0]["session"]

            n.section("Secure channel: George and Paul talk over encrypted records")
            n.say(f"   Paul received:   {messages.get('paul_got')!r}")
            n.say(f"   George received: {messages.get('george_got')!r}")
            summary["messages"] = messages

            if scenario == "resume":
                n.section("Resume: George comes back later; the phones know each other")
                t1 = time.perf_counter()
                again, _ = await run_join(
                    george,
                    JoinOptions(target="Paul's phone", transport=transport, yes=True, json=True),
                    on_session=george_asks, transport_obj=guest_t, address=address,
                )
                summary["resume"] = {"method": again.method.label,
                                     "seconds": round(time.perf_counter() - t1, 4),
                                     "session": again.fingerprint}
                n.say(f"   reconnected by '{again.method.label}' with no prompt; "
                      f"session {again.fingerprint}")
            host_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await host_task
        finally:
            await close()
    summary["timings"] = n.timings
    n.say("\nDone.")
    return summary


async def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
