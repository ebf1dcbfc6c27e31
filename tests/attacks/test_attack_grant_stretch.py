"""Attack review atk20c, finding 1 (medium): a guest stretched its time-limited grant by coming
back slowly.

A known guest's grant is stored as an absolute expiry.  When the guest came back, the host
turned it into the seconds left at the cloud step (``JoinVerdict``), and after the pairing
made the guest's Membership, and the stored expiry, from *now* plus those seconds: every
second the guest spent between the verdict and the Membership was added to its grant, and
the guest sets that time (each of its messages may wait up to a step).  A guest whose
20 s grant ended resumed and listed files 71 s later, and a one-hour grant could be kept for
days, the owner asked nothing.  The same arithmetic cut an honest guest's grant by up to a
second at each quick return (the seconds rounded down twice).

Real code: a library host and a library guest over TCP on 127.0.0.1; the guest's link waits
before its resume INIT and its READY, as a slow (or slowed) guest's does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pairkit
from pairkit.delegate import Agree
from pairkit.transports.tcp import TcpTransport

from ..attack_harness import STEP
from ..known_device_harness import accepting, address_of, device

GRANT = 600  # seconds of guest access Paul gave George
DELAY = 1.2  # seconds the guest waits before its resume INIT and before its READY


class _WaitsAfterItsJoinRequest:
    """A guest's TCP link that sends its CloudHello and JoinRequest at once and waits
    ``delay`` seconds before each of its next two messages (resume's INIT, its READY)."""

    def __init__(self, link: Any, delay: float) -> None:
        self._link, self._delay, self._sent = link, delay, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)

    async def send(self, data: bytes) -> None:
        self._sent += 1
        if self._sent in (3, 4):
            await asyncio.sleep(self._delay)
        await self._link.send(data)


class _SlowTransport(TcpTransport):
    def __init__(self, host: str, port: int, delay: float) -> None:
        super().__init__(host, port)
        self._delay = delay

    async def connect(self, address: str | None = None, timeout: float = 10.0) -> Any:
        return _WaitsAfterItsJoinRequest(await super().connect(address, timeout), self._delay)


class _Guest(NamedTuple):
    paul: pairkit.Device
    host: pairkit.Host
    george: pairkit.Device
    share: Path
    granted: Any  # the end of George's grant, as Paul's keystore holds it


def _stored_expiry(host: pairkit.Device, guest: pairkit.Device) -> Any:
    ks = host.keystore
    ks.follow()
    record = ks.peer_by_id(guest.device_id)
    assert record is not None
    return record.extra.get("granted_expires")


async def _comes_back(paul: pairkit.Host, george: pairkit.Device, share: Path,
                      delay: float) -> Any:
    """George comes back by name (resume, no question) and lists; his Membership's expiry."""
    async with accepting(paul) as accepted:
        session = await george.join("Paul's host", transport=_SlowTransport(
            *address_of(paul), delay), step_timeout=STEP)
        at_host = await accepted
        serving = asyncio.ensure_future(at_host.serve_files(share))
        async with session:
            expires = session._done.membership.expires
            assert session._done.method.label == "resume"
            await session.list_files(timeout=STEP)
        with contextlib.suppress(Exception):
            await serving
        await at_host.close()
    return expires


@contextlib.asynccontextmanager
async def _george_a_guest_of_paul(tmp_path: Path) -> AsyncIterator[_Guest]:
    """Paul's library host, George paired with it by PIN as a guest for GRANT seconds."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "plans.txt").write_text("for guests, until the grant ends\n")
    paul_dev, george = device(tmp_path, "Paul's host"), device(tmp_path, "George")
    async with paul_dev.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                             delegate=Agree(guest_seconds=GRANT), step_timeout=STEP) as paul:
        async with accepting(paul) as accepted:
            async with await george.join(f"tcp:{paul.address.removeprefix('tcp:')}",
                                         pin="246810", step_timeout=STEP):
                pass
            async with await accepted:
                pass
        yield _Guest(paul_dev, paul, george, share, _stored_expiry(paul_dev, george))


async def test_a_slow_return_does_not_move_the_guests_grant_later(tmp_path: Path) -> None:
    async with _george_a_guest_of_paul(tmp_path) as g:
        shown = await _comes_back(g.host, g.george, g.share, DELAY)
        assert _stored_expiry(g.paul, g.george) == g.granted, (
            "the guest's 2.4 s of waiting were added to the grant Paul gave")
        assert shown == g.granted


async def test_a_quick_return_does_not_shorten_an_honest_guests_grant(tmp_path: Path) -> None:
    async with _george_a_guest_of_paul(tmp_path) as g:
        for _ in range(3):
            assert await _comes_back(g.host, g.george, g.share, 0.0) == g.granted
        assert _stored_expiry(g.paul, g.george) == g.granted
