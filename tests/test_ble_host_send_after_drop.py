"""A host streaming over GATT notices that its guest has gone (LinkClosedError, no hang)."""

from __future__ import annotations

import asyncio

import pytest

from pairkit.pairing.errors import LinkClosedError
from pairkit.transports.bumble import VirtualRadio, open_bumble


async def test_host_sending_to_a_gone_guest_gets_link_closed() -> None:
    radio = VirtualRadio()
    host = await open_bumble("virtual", radio=radio, prefer_l2cap=False)
    guest = await open_bumble("virtual", radio=radio, prefer_l2cap=False)
    try:
        await host.start_advertising(bytes(10))
        accept = asyncio.create_task(host.accept(5))
        guest_link = await guest.connect(host.address, 5)
        host_link = await accept
        await host_link.send(b"hello")
        assert await guest_link.recv() == b"hello"
        await guest.close()  # the guest's radio goes away

        async def stream() -> None:
            while True:
                await host_link.send(b"x" * 100)

        with pytest.raises(LinkClosedError):
            await asyncio.wait_for(stream(), 5)
    finally:
        await host.close()
        await guest.close()
