"""How the library's host serves links (runtime/api.py ``Host.accept``, README "Use it from
Python"): under the admission of ``pairkit host``, only while an ``accept`` waits, several
guests at once, the ones paired after an ``accept`` returned kept for the next.  Over the
in-process loopback."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import pairkit
from pairkit.admission import AdmissionLimits
from pairkit.keystore import Argon2Params
from pairkit.pairing.errors import LinkClosedError, PairingError
from pairkit.transports import loopback


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


async def test_a_silent_link_is_dropped_at_the_hosts_first_flight(tmp_path: Path) -> None:
    """``admission=`` sets the host's limits: with a 0.3 s first flight, a link that says
    nothing is closed by the host (told "busy" or timed out), while ``accept`` goes on."""
    paul = device(tmp_path, "Paul")
    limits = AdmissionLimits(first_flight=0.3)
    async with paul.host("loopback:h1", admission=limits, delegate=pairkit.Agree()) as host:
        accepting = asyncio.ensure_future(host.accept())
        silent = await loopback.open().connect("h1", timeout=5)  # type: ignore[union-attr]
        with pytest.raises(PairingError):
            # whatever the host says first (its Abort), then the close: 10 first flights
            async with asyncio.timeout(10 * limits.first_flight):
                while True:
                    await silent.recv()
        assert isinstance((await asyncio.wait_for(_closed(silent), 5)), LinkClosedError)
        assert not accepting.done()
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accepting


async def _closed(link: loopback.LoopbackLink) -> BaseException:
    try:
        while True:
            await link.recv()
    except PairingError as exc:
        return exc


async def test_no_guest_pairs_until_accept_is_called(tmp_path: Path) -> None:
    """A guest that joins before the application calls ``accept`` waits for it (its link is
    not served, nothing is stored), then pairs once ``accept`` waits."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:h2", delegate=pairkit.Agree()) as host:
        joining = asyncio.ensure_future(george.join("loopback:h2", pin=host.pin))
        await asyncio.sleep(0.5)
        assert not joining.done() and paul.peers() == []
        async with await host.accept(timeout=30) as on_paul, await joining as on_george:
            assert on_paul.fingerprint == on_george.fingerprint


async def test_guests_pair_at_once_and_the_next_accept_returns_the_other(
    tmp_path: Path,
) -> None:
    """Two guests join together by ``compare``: both are served while the first ``accept``
    waits; the one it did not return (paired meanwhile, or still pairing) is returned by the next
    ``accept`` (both sessions are
    open, both guests paired)."""
    paul = device(tmp_path, "Paul")
    guests = [device(tmp_path, "George"), device(tmp_path, "Ringo")]
    agree = pairkit.Agree(confirm_codes=True)
    async with paul.host("loopback:h3", methods=["compare"], delegate=agree) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        joining = [asyncio.ensure_future(g.join("loopback:h3", method="compare", delegate=agree))
                   for g in guests]
        first = await accepting
        second = await host.accept(timeout=30)
        on_guests = await asyncio.wait_for(asyncio.gather(*joining), 30)
        assert {first.peer.name, second.peer.name} == {"George", "Ringo"}
        assert {first.fingerprint, second.fingerprint} == {s.fingerprint for s in on_guests}
        for session in (first, second, *on_guests):
            await session.close()


async def test_a_guest_paired_and_not_accepted_is_closed_with_the_host(tmp_path: Path) -> None:
    paul = device(tmp_path, "Paul")
    guests = [device(tmp_path, "George"), device(tmp_path, "Ringo")]
    agree = pairkit.Agree(confirm_codes=True)
    async with paul.host("loopback:h4", methods=["compare"], delegate=agree) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        joining = [asyncio.ensure_future(g.join("loopback:h4", method="compare", delegate=agree))
                   for g in guests]
        first = await accepting
        on_guests = await asyncio.wait_for(asyncio.gather(*joining), 30)
    # The host closed with one guest paired and never returned by accept: its session ended.
    left = next(s for s in on_guests if s.fingerprint != first.fingerprint)
    with pytest.raises(LinkClosedError):
        await left.receive(timeout=5)
    await first.close()
    for session in on_guests:
        await session.close()


class Grumpy(pairkit.Agree):
    """Agrees, keeps what it is told, and fails when told of a guest that failed."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[object] = []

    async def on_event(self, event: object) -> None:
        self.events.append(event)
        if len(self.events) == 1:
            raise RuntimeError("the application's own bug")


async def test_what_the_host_contains_is_told_and_accept_goes_on(tmp_path: Path) -> None:
    """The delegate fails when told of a guest that failed (a link silent past the first
    flight): that failure is contained (told to the delegate as a guest's internal failure,
    which names no more than its kind), and the host goes on: the next guest pairs."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    told = Grumpy()
    limits = AdmissionLimits(first_flight=0.3)
    async with paul.host("loopback:h5", delegate=told, admission=limits) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        silent = await loopback.open().connect("h5", timeout=5)  # type: ignore[union-attr]
        for _ in range(500):
            if len(told.events) >= 2:
                break
            await asyncio.sleep(0.02)
        reasons = [getattr(e, "reason", "") for e in told.events]
        assert len(reasons) == 2 and "internal failure (RuntimeError)" in reasons[1], reasons
        assert "bug" not in reasons[1]
        assert not accepting.done()
        async with await george.join("loopback:h5", pin=host.pin) as on_george:
            on_paul = await accepting
            assert on_paul.fingerprint == on_george.fingerprint
            await on_paul.close()
        await silent.close()


async def test_a_lost_controller_ends_accept_with_its_error(tmp_path: Path) -> None:
    """On BLE, the radio going away (a real ``pairkit radio`` over TCP, stopped) ends a waiting
    ``accept`` with ``ControllerLostError``, as before the host served links in the
    background; and the next ``accept`` says so too."""
    from pairkit.transports.base import ControllerLostError
    from pairkit.transports.bumble import open_bumble
    from pairkit.transports.radio import start_radio

    paul = device(tmp_path, "Paul")
    radio = await start_radio([0, 0])
    transport = await open_bumble(f"tcp-client:127.0.0.1:{radio.ports[0]}", open_timeout=5.0)
    try:
        async with paul.host(transport, delegate=pairkit.Agree()) as host:
            accepting = asyncio.ensure_future(host.accept())
            await asyncio.sleep(0.1)
            await radio.close()  # the dongle unplugged
            with pytest.raises(ControllerLostError):
                await asyncio.wait_for(accepting, 10)
            with pytest.raises(ControllerLostError):
                await asyncio.wait_for(host.accept(), 10)
    finally:
        await radio.close()
        await transport.close()
