"""A first connection that fails over the air is retried (issue 15, item 3).

On real radios "Connection Failed to be Established" (HCI 0x3E) is common; one failed attempt
must not fail a join.  The virtual radio plays that interference
(:meth:`~transports.ble.virtual.VirtualRadio.fail_connections`), and both centrals pairkit has
(a bumble device; bleak on pairkit's bumble backend, which bleak-retry-connector drives) connect
on a later attempt, or end with a message a person can act on when every attempt failed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pairkit.pairing.errors import TransportError
from pairkit.transports.ble.guard import connect_failure_status, retry_pause
from pairkit.transports.bumble import BumbleConfig, BumbleTransport, VirtualRadio
from pairkit.transports.registry import open_transport
from tests.ble_harness import CENTRALS

HELLO = b"\x40" + bytes(9)


@pytest.fixture
async def radio() -> AsyncIterator[tuple[VirtualRadio, list[Any]]]:
    opened: list[Any] = []
    yield VirtualRadio(), opened
    for thing in reversed(opened):
        await thing.close()


async def host_and_guest(radio: VirtualRadio, opened: list[Any], central: str,
                         attempts: int = 3) -> tuple[BumbleTransport, Any, str]:
    host = await BumbleTransport("virtual", radio=radio, rng=random.Random(1).randbytes).open()
    opened.append(host)
    rng = random.Random(2).randbytes
    if central == "bumble":
        guest: Any = await BumbleTransport(
            "virtual", radio=radio, rng=rng, config=BumbleConfig(connect_attempts=attempts)
        ).open()
    else:
        guest = await open_transport("bleak:bumble:virtual", radio=radio, rng=rng,
                                     connect_attempts=attempts)
    opened.append(guest)
    await host.start_advertising(HELLO)
    async for sighting in guest.scan(2.0):
        return host, guest, sighting.address
    raise AssertionError("no hello")


@pytest.mark.parametrize("central", CENTRALS)
async def test_a_connection_that_failed_twice_succeeds_on_the_third_attempt(
    radio: tuple[VirtualRadio, list[Any]], central: str
) -> None:
    medium, opened = radio
    host, guest, address = await host_and_guest(medium, opened, central)
    medium.fail_connections(2)
    accepting = host.accept(timeout=10)
    link = await guest.connect(address, timeout=10)
    host_link = await accepting
    assert medium.connection_failures == []  # both failures were met, then it connected
    await link.send(b"through")
    assert await host_link.recv() == b"through"


@pytest.mark.parametrize("central", CENTRALS)
async def test_when_every_attempt_fails_the_message_says_what_to_do(
    radio: tuple[VirtualRadio, list[Any]], central: str
) -> None:
    medium, opened = radio
    _, guest, address = await host_and_guest(medium, opened, central, attempts=2)
    medium.fail_connections(5)
    with pytest.raises(TransportError) as failed:
        await guest.connect(address, timeout=10)
    text = str(failed.value)
    assert len(medium.connection_failures) == 3  # two attempts, no more
    assert "failed to be established" in text.lower() or "failed to connect" in text.lower()
    for raw in ("HCI_", "0x3E", "Traceback", "bumble."):
        assert raw not in text


def test_the_backoff_and_what_is_retried() -> None:
    assert [retry_pause(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]

    class HciFailure(Exception):
        error_namespace = "hci"

        def __init__(self, code: int) -> None:
            self.error_code = code

    assert connect_failure_status(HciFailure(0x3E)) == 0x3E
    assert connect_failure_status(HciFailure(0x05)) is None  # authentication failure: no
    assert connect_failure_status(ValueError()) is None
