"""The library host's paired sessions against its admission (runtime/api.py ``Host.accept``;
runtime/admission.py ``max_sessions``, ``per_peer``; session 15, helper hostq, doubt 1).

``pairkit host`` counts a paired guest's session while it serves it: "while max_sessions paired
guests are being served, new links are refused; one peer holds at most per_peer of them, its
newest closing its oldest" (runtime/admission.py; docs/security.md, "A pairing host's pending
links"; tests/attacks/test_attack_host_sessions.py).  The library host hands each session to
its application, which serves it; the host's admission must count it until the application
closes it (or its peer is gone), or a known device that resumes again and again gets as many
live sessions on the host as it likes, past both limits, and the application sees more
sessions than its limits say.

Played over the in-process loopback, real links end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.admission import AdmissionLimits
from pairkit.keystore import Argon2Params
from pairkit.pairing.errors import ErrorCode, LinkClosedError, PairingError


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


async def _pair(host: pairkit.Host, join: Any) -> tuple[pairkit.Session, pairkit.Session]:
    """One guest through ``host.accept``: (the host's session, the guest's)."""
    accepting = asyncio.ensure_future(host.accept(timeout=15))
    joining = asyncio.ensure_future(join())
    try:
        on_host, on_guest = await asyncio.gather(accepting, joining)
    except BaseException:
        for task in (accepting, joining):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        raise
    assert on_host.fingerprint == on_guest.fingerprint
    return on_host, on_guest


async def _close_all(sessions: list[pairkit.Session]) -> None:
    for s in sessions:
        with contextlib.suppress(Exception):
            await s.close()


async def test_a_peer_resuming_again_and_again_holds_at_most_per_peer_live_sessions(
    tmp_path: Path,
) -> None:
    """George pairs by PIN, then resumes twice; the application keeps every session it was
    given.  With ``per_peer=2`` his third session must close his first on the host, as
    ``pairkit host`` closes a peer's oldest: the host's first session with him reads a closed
    link (not a silent one that is still open)."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    limits = AdmissionLimits(per_peer=2, max_sessions=8)
    kept: list[pairkit.Session] = []
    async with paul.host("loopback:api-per-peer", methods=["pin"], delegate=pairkit.Agree(),
                         admission=limits) as host:
        try:
            first, g1 = await _pair(
                host, lambda: george.join("loopback:api-per-peer", pin=host.pin))
            kept += [first, g1]
            for _ in range(2):
                on_host, on_george = await _pair(
                    host, lambda: george.join("Paul", transport="loopback:api-per-peer"))
                kept += [on_host, on_george]
            # His first session gave way to his third: closed on the host (its link dropped).
            with pytest.raises(LinkClosedError):
                await first.receive(timeout=5)
            # The second and third still carry messages.
            for on_host, on_george in ((kept[2], kept[3]), (kept[4], kept[5])):
                await on_george.send(b"still here")
                assert await on_host.receive(timeout=5) == b"still here"
        finally:
            await _close_all(kept)


async def test_a_library_host_refuses_new_links_while_max_sessions_are_open(
    tmp_path: Path,
) -> None:
    """``max_sessions=2``: George and Ringo pair and the application keeps both sessions open;
    John is told "busy" (as ``pairkit host`` tells a guest beyond ``--concurrent``), and pairs
    once the application closed George's session."""
    paul = device(tmp_path, "Paul")
    george, ringo, john = (device(tmp_path, n) for n in ("George", "Ringo", "John"))
    spec = "loopback:api-max-sessions"
    kept: list[pairkit.Session] = []
    async with paul.host(spec, methods=["pin"], delegate=pairkit.Agree(),
                         admission=AdmissionLimits(max_sessions=2)) as host:
        try:
            for guest in (george, ringo):
                kept += await _pair(host, lambda g=guest: g.join(spec, pin=host.pin))
            accepting = asyncio.ensure_future(host.accept(timeout=15))
            try:
                with pytest.raises(PairingError) as refused:
                    await john.join(spec, pin=host.pin, step_timeout=10)
                assert refused.value.code is ErrorCode.BUSY, refused.value
                assert not accepting.done()
                await kept[0].close()  # the application is done with George
                on_host, on_john = await asyncio.gather(
                    accepting, john.join(spec, pin=host.pin))
                kept += [on_host, on_john]
                assert on_host.peer.name == "John"
            finally:
                accepting.cancel()
                with contextlib.suppress(BaseException):
                    await accepting
        finally:
            await _close_all(kept)


async def test_a_peers_close_record_on_a_link_it_keeps_open_does_not_free_its_place(
    tmp_path: Path,
) -> None:
    """``max_sessions=2``.  George pairs, then sends the secure channel's CLOSE record but keeps
    the link open.  The application reads the close (``receive`` raises LinkClosedError) and,
    as an application may, keeps the session object for later.  The host freed George's
    place at that close while his link stayed open, so Ringo and John got in too: three open
    links to a host that serves two (atk20c, suspected; session 20).  A link whose peer closed
    its session is closed by the host, so the links open never exceed the limit."""
    paul = device(tmp_path, "Paul")
    george, ringo, john = (device(tmp_path, n) for n in ("George", "Ringo", "John"))
    spec = "loopback:api-close-record"
    kept: list[pairkit.Session] = []
    async with paul.host(spec, methods=["pin"], delegate=pairkit.Agree(),
                         admission=AdmissionLimits(max_sessions=2)) as host:
        try:
            on_host, on_george = await _pair(host, lambda: george.join(spec, pin=host.pin))
            kept += [on_host, on_george]
            # George's CLOSE record, sent on a link he does not close.
            slink = on_george._channel
            for fragment in slink.channel.seal_close():
                await slink.link.send(fragment)
            with pytest.raises(LinkClosedError):
                await on_host.receive(timeout=5)
            for guest in (ringo, john):
                kept += await _pair(host, lambda g=guest: g.join(spec, pin=host.pin))
            on_hosts = kept[0::2]
            still_open = [s.peer.name for s in on_hosts if not s._channel.link.closed]
            assert len(still_open) <= 2, f"{still_open} hold links on a host that serves 2"
        finally:
            await _close_all(kept)
