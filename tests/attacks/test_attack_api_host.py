"""The library's host (``pairkit.Device.host``, ``Host.accept``: runtime/api.py; README "Use it
from Python") against a stranger who connects and says nothing (docs/security.md, "A pairing
host's pending links").

``pairkit host`` serves every link at once under the admission (runtime/admission.py): a link
that says nothing is dropped at the first flight (5 s) and never keeps a guest from pairing
meanwhile, and on BLE a connection that opens no link is dropped after two first flights.
Before, ``Host.accept`` took one link at a time, with no admission and no first flight: a
stranger's silent link held it for the pairing's whole step (30 s), again and again, and no
honest guest could pair meanwhile; on BLE a connection that opened no link was never dropped.

Played over real links: the in-process loopback, TCP on 127.0.0.1, bumble virtual controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.keystore import Argon2Params
from pairkit.transports import loopback
from pairkit.transports.tcp import tcp_connect
from tests.ble_harness import World, eventually, world  # noqa: F401

#: how long the test waits for the guest: a third of the pairing's own step timeout (30 s)
ACCEPT_WITHIN = 10.0


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


@contextlib.asynccontextmanager
async def silent_stranger(transport: str, host: pairkit.Host) -> AsyncIterator[Any]:
    """A link to ``host`` over ``transport`` that says nothing; closed after."""
    if transport == "loopback":
        link = await loopback.open().connect(host.address, timeout=5)  # type: ignore[union-attr]
    else:
        address, port = host.address.rsplit(":", 1)
        link = await tcp_connect(address, int(port), timeout=5)
    try:
        yield link
    finally:
        await link.close()


async def george_pairs(
    host: pairkit.Host, join: Callable[[], Awaitable[pairkit.Session]], within: float
) -> None:
    """The host accepts (``within`` seconds) while George joins once the host has had time to
    take the stranger's link first: both get the same session, with George."""
    accepting = asyncio.ensure_future(host.accept(timeout=within))
    await asyncio.sleep(0.1)  # the host has taken the stranger's link first
    joining = asyncio.ensure_future(join())
    try:
        async with await accepting as on_paul, await joining as on_george:
            assert on_paul.peer.name == "George"
            assert on_paul.fingerprint == on_george.fingerprint
    finally:
        for task in (accepting, joining):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@pytest.mark.parametrize("transport", ["loopback", "tcp"])
async def test_a_silent_stranger_does_not_keep_a_guest_from_pairing_with_a_library_host(
    tmp_path: Path, transport: str
) -> None:
    """The stranger connects first and says nothing; George joins by PIN after it.  The host's
    ``accept`` must give George well within the pairing's step (30 s), not after it."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    spec = "loopback:api-silent" if transport == "loopback" else "tcp:127.0.0.1:0"
    async with paul.host(spec, methods=["pin"], delegate=pairkit.Agree()) as host:
        target = f"{transport}:{host.address}"
        async with silent_stranger(transport, host):
            await george_pairs(host, lambda: george.join(target, pin=host.pin), ACCEPT_WITHIN)


async def test_a_silent_ble_stranger_does_not_keep_a_guest_from_pairing_with_a_library_host(
    tmp_path: Path, world: World  # noqa: F811
) -> None:
    """The same over bumble virtual controllers: the stranger connects, opens its link
    (subscribes to TX over GATT) and says nothing; George joins after it."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    radio = await world.device(prefer_l2cap=False)
    async with paul.host(radio, methods=["pin"], delegate=pairkit.Agree()) as host:
        stranger = await world.device(prefer_l2cap=False)
        silent = await stranger.connect(host.address, timeout=5)
        guest = await world.device(prefer_l2cap=False)
        try:
            await george_pairs(
                host, lambda: george.join(host.address, transport=guest, pin=host.pin),
                2 * ACCEPT_WITHIN,
            )
        finally:
            await silent.close()


async def test_a_ble_connection_that_never_opens_a_link_is_dropped_by_a_library_host(
    tmp_path: Path, world: World  # noqa: F811
) -> None:
    """A stranger's device connects to the library host (LE, at the controller) and does
    nothing more, whether or not an ``accept`` waits: the host drops that connection as
    ``pairkit host`` does, after two first flights (10 s with the default limits; the test
    allows twice that), not never."""
    paul = device(tmp_path, "Paul")
    radio = await world.device(prefer_l2cap=False)
    async with paul.host(radio, methods=["pin"], delegate=pairkit.Agree()) as host:
        stranger = await world.device(prefer_l2cap=False)
        stranger.device.remove_all_listeners(stranger.device.EVENT_CONNECTION)  # its own
        connection = await asyncio.wait_for(stranger.device.connect(host.address), 5)
        assert connection.handle is not None
        assert len(radio.device.connections) == 1
        await eventually(lambda: not radio.device.connections, 4 * 5.0)
