"""A bleak guest's write size is read when sending, not once (issue 15, item 7).

bleak says ``max_write_without_response_size`` can grow after connect: BlueZ may finish the ATT
MTU exchange after the connection is up, so a link made at once sees 20 bytes.  Here the guest
(bleak on pairkit's bumble backend, ATT MTU left at 23 when it connects) exchanges the MTU only
after its link and secure channel exist, as BlueZ does late; the messages it sends after that
travel in the larger pieces, and arrive whole.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pairkit.pairing.methods import PeerInfo, Session
from pairkit.pairing.negotiation import Method
from pairkit.securelink import SecureLink
from pairkit.transports.bumble import VirtualRadio, open_bumble
from pairkit.transports.registry import open_transport

HELLO = b"\x40" + bytes(9)
K1, K2 = bytes(range(32)), bytes(range(1, 33))


def sessions() -> tuple[Session, Session]:
    peer = PeerInfo(b"i" * 16, "peer", b"s" * 32, b"g" * 32, True)
    guest = Session(Method.PIN, True, peer, send_key=K1, recv_key=K2, fingerprint="x")
    host = Session(Method.PIN, False, peer, send_key=K2, recv_key=K1, fingerprint="x")
    return guest, host


class Sizes:
    """The host's link as its secure link sees it, noting the size of every piece received."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.sizes: list[int] = []

    @property
    def mtu(self) -> int:
        return int(self.link.mtu)

    async def send(self, data: bytes) -> None:
        await self.link.send(data)

    async def recv(self) -> bytes:
        data = await self.link.recv()
        self.sizes.append(len(data))
        return bytes(data)

    async def close(self) -> None:
        await self.link.close()


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def test_the_write_size_grows_when_the_mtu_exchange_completes_late(
    opened: list[Any],
) -> None:
    radio = VirtualRadio()
    host = await open_bumble("virtual", radio=radio, prefer_l2cap=False, name="host")
    opened.append(host)
    guest = await open_transport("bleak:bumble:virtual", radio=radio, att_mtu=23)
    opened.append(guest)
    await host.start_advertising(HELLO)
    accepting = asyncio.ensure_future(host.accept(timeout=10))
    guest_link = await guest.connect(host.address, timeout=10)
    host_link = Sizes(await accepting)
    guest_session, host_session = sessions()
    sender = SecureLink(guest_link, guest_session, timeout=10)
    receiver = SecureLink(host_link, host_session, timeout=10)
    assert guest_link.mtu == 20

    first = os.urandom(3000)
    await sender.send(first)
    assert await receiver.recv() == first
    assert max(host_link.sizes) == 20

    # The ATT MTU exchange completes now, with the link and its channel long made.
    connection = next(iter(guest.adapter.device.connections.values()))
    assert await connection.gatt_client.request_mtu(247) == 247
    assert guest_link.mtu == 244
    host_link.sizes.clear()
    second = os.urandom(3000)
    await sender.send(second)
    assert await receiver.recv() == second
    assert max(host_link.sizes) == 244
    assert len(host_link.sizes) < 3000 // 200  # not 150 pieces of 20 bytes
