"""A transfer asks for a short connection interval and the 2M PHY, and relaxes after (issue 15,
item 7); a central that refuses, or never answers, only leaves the transfer at its old pace.

The host is a bumble peripheral on a virtual radio; the guests are the two centrals pairkit has
(bleak on pairkit's bumble backend, and a bumble device).  What the central agreed to is read
from the *central's* side: its host's connection parameters (from the LE Connection Update
Complete its controller sent) and the PHY its controller reports (LE Read PHY), so a request
that never reached the peer cannot pass.  The refusing centrals are real stacks configured to
say no: their host answers the Connection Parameter Request with a Negative Reply (Core 5.4
Vol 4 Part E §7.8.32) and allows only the 1M PHY (LE Set Default PHY, §7.8.48).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bumble import hci
from bumble.device import Connection, Device

from pairkit.pairing.errors import ConfigError
from pairkit.transports.ble.pace import PaceConfig, PacePolicy, Speed
from pairkit.transports.bumble import VirtualRadio, open_bumble
from pairkit.transports.registry import open_transport
from tests.ble_harness import CENTRALS

HELLO = b"\x40" + bytes(9)
#: relaxes quickly, gives up on a silent central quickly
PACE = PaceConfig(relax_after=0.2, request_timeout=0.5)
FAST_MS = PACE.fast_interval_ms[1]
RELAXED_MS = PACE.relaxed_interval_ms[1]


# -- the decision, alone ------------------------------------------------------------------------


def test_small_exchanges_stay_relaxed_and_a_burst_goes_fast() -> None:
    policy = PacePolicy(PaceConfig(burst_bytes=1000, relax_after=1.0))
    for i in range(9):
        assert policy.sent(100, now=i * 0.1) is Speed.RELAXED
    assert policy.sent(100, now=0.95) is Speed.FAST
    assert policy.deadline() == pytest.approx(1.95)


def test_a_pause_resets_the_burst() -> None:
    policy = PacePolicy(PaceConfig(burst_bytes=1000, relax_after=1.0))
    policy.sent(900, now=0.0)
    assert policy.sent(900, now=1.0) is Speed.RELAXED  # a pause of relax_after: a new burst
    assert policy.deadline() is None


def test_the_link_relaxes_after_relax_after_without_sending() -> None:
    policy = PacePolicy(PaceConfig(burst_bytes=10, relax_after=1.0))
    policy.sent(10, now=5.0)
    assert policy.on_timeout(5.5) is Speed.FAST  # early: nothing changes
    policy.sent(1, now=5.9)
    assert policy.on_timeout(6.5) is Speed.FAST  # the deadline moved with the send
    assert policy.on_timeout(6.9) is Speed.RELAXED
    assert policy.deadline() is None
    assert policy.sent(9, now=7.0) is Speed.RELAXED  # the burst starts again from zero


@pytest.mark.parametrize(
    "kwargs",
    [
        {"burst_bytes": 0},
        {"relax_after": 0},
        {"fast_interval_ms": (5.0, 15.0)},
        {"fast_interval_ms": (30.0, 15.0)},
        {"relaxed_interval_ms": (30.0, 51.0)},  # not a multiple of 1.25 ms
        {"peripheral_latency": 500},
        {"supervision_timeout_ms": 50.0},
        {"supervision_timeout_ms": 100.0},  # not above (1 + latency) * 50 ms * 2
    ],
)
def test_bad_pace_settings_are_refused_with_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PaceConfig(**kwargs)


# -- over a virtual radio -----------------------------------------------------------------------


@pytest.fixture
async def radio() -> AsyncIterator[tuple[VirtualRadio, list[Any]]]:
    opened: list[Any] = []
    yield VirtualRadio(), opened
    for thing in reversed(opened):
        await thing.close()


def central_device(guest: Any) -> Device:
    return guest.adapter.device if hasattr(guest, "adapter") else guest.device


def central_controller(guest: Any) -> Any:
    return guest.adapter.controller if hasattr(guest, "adapter") else guest.controller


async def linked(
    medium: VirtualRadio, opened: list[Any], central: str, *, refuse: bool = False,
    silent: bool = False, no_ll_procedure: bool = False,
) -> tuple[Any, Any, Connection]:
    """A host link and a guest link, and the central's own bumble connection."""
    host = await open_bumble("virtual", radio=medium, rng=random.Random(1).randbytes,
                             prefer_l2cap=False, pace=PACE, name="host")
    opened.append(host)
    rng = random.Random(2).randbytes
    if central == "bumble":
        guest: Any = await open_bumble("virtual", radio=medium, rng=rng, prefer_l2cap=False,
                                       name="guest")
    else:
        guest = await open_transport("bleak:bumble:virtual", radio=medium, rng=rng)
    opened.append(guest)
    device = central_device(guest)
    if no_ll_procedure:
        controller = central_controller(guest)
        controller.le_features &= ~hci.LeFeatureMask.CONNECTION_PARAMETERS_REQUEST_PROCEDURE
    if refuse or silent:
        refuse_parameters(device, silent=silent)
        await device.set_default_phy(tx_phys=[hci.Phy.LE_1M], rx_phys=[hci.Phy.LE_1M])
    await host.start_advertising(HELLO)
    accepting = asyncio.ensure_future(host.accept(timeout=10))
    guest_link = await guest.connect(host.address, timeout=10)
    host_link = await accepting
    connection = next(iter(device.connections.values()))
    return host_link, guest_link, connection


def refuse_parameters(device: Device, *, silent: bool) -> None:
    """The central's host says no to every Connection Parameter Request (or never answers)."""
    host = device.host
    replies: set[asyncio.Future[Any]] = set()

    def on_request(event: hci.HCI_LE_Remote_Connection_Parameter_Request_Event) -> None:
        if silent:
            return
        reply = asyncio.ensure_future(
            host.send_sync_command(
                hci.HCI_LE_Remote_Connection_Parameter_Request_Negative_Reply_Command(
                    connection_handle=event.connection_handle,
                    reason=hci.HCI_ErrorCode.UNACCEPTABLE_CONNECTION_PARAMETERS_ERROR,
                )
            )
        )
        replies.add(reply)
        reply.add_done_callback(replies.discard)

    host.on_hci_le_remote_connection_parameter_request_event = on_request  # type: ignore[method-assign]


async def transfer(host_link: Any, guest_link: Any, size: int) -> None:
    """``size`` bytes in full-MTU messages, checked byte for byte on the guest."""
    data = os.urandom(size)
    step = host_link.mtu

    async def receive() -> bytes:
        got = bytearray()
        while len(got) < size:
            got += await guest_link.recv()
        return bytes(got)

    receiving = asyncio.ensure_future(receive())
    for offset in range(0, size, step):
        await host_link.send(data[offset:offset + step])
    assert await asyncio.wait_for(receiving, 30) == data


async def until(check: Any, what: str) -> None:
    async with asyncio.timeout(10):
        while not await check():
            await asyncio.sleep(0.01)


def parameters_are(connection: Connection, interval: float) -> Any:
    async def check() -> bool:
        return bool(connection.parameters.connection_interval == interval)

    return check


def phy_is(connection: Connection, phy: hci.Phy) -> Any:
    async def check() -> bool:
        got = await connection.get_phy()
        return bool(got.tx_phy == phy and got.rx_phy == phy)

    return check


@pytest.mark.parametrize("central", CENTRALS)
async def test_a_transfer_gets_a_short_interval_and_2m_then_relaxes(
    radio: tuple[VirtualRadio, list[Any]], central: str
) -> None:
    host_link, guest_link, connection = await linked(*radio, central)
    before = connection.parameters
    assert (await connection.get_phy()).tx_phy == hci.Phy.LE_1M
    await transfer(host_link, guest_link, 64 * 1024)
    # The central agreed to the fast interval and to 2M (its own view of the connection)...
    await until(parameters_are(connection, FAST_MS), "fast interval")
    assert connection.parameters.supervision_timeout == PACE.supervision_timeout_ms
    assert before.supervision_timeout != PACE.supervision_timeout_ms  # so it did change
    await until(phy_is(connection, hci.Phy.LE_2M), "2M PHY")
    # ...and after relax_after of silence, to the relaxed interval and 1M.
    await until(parameters_are(connection, RELAXED_MS), "relaxed interval")
    await until(phy_is(connection, hci.Phy.LE_1M), "1M PHY")
    stats = host_link.pacer.stats
    assert (stats.fast, stats.relaxed, stats.refused) == (1, 1, set())
    # The link still works at the relaxed pace, both ways.
    await guest_link.send(b"still here")
    assert await asyncio.wait_for(host_link.recv(), 10) == b"still here"


async def test_pairing_sized_exchanges_ask_for_nothing(
    radio: tuple[VirtualRadio, list[Any]],
) -> None:
    host_link, guest_link, connection = await linked(*radio, "bleak")
    before = connection.parameters
    for _ in range(4):
        await transfer(host_link, guest_link, 1000)
    assert host_link.pacer.stats.interval_requests == 0
    assert host_link.pacer.stats.phy_requests == 0
    assert connection.parameters == before


@pytest.mark.parametrize("central", CENTRALS)
async def test_a_central_that_refuses_leaves_the_transfer_whole_at_its_old_pace(
    radio: tuple[VirtualRadio, list[Any]], central: str
) -> None:
    host_link, guest_link, connection = await linked(*radio, central, refuse=True)
    before = connection.parameters
    await transfer(host_link, guest_link, 128 * 1024)
    pacer = host_link.pacer

    async def settled() -> bool:
        return pacer.idle and pacer.stats.refused == {"interval", "phy"}

    await until(settled, "both refusals")
    assert connection.parameters == before
    assert (await connection.get_phy()).tx_phy == hci.Phy.LE_1M
    asked = (pacer.stats.interval_requests, pacer.stats.phy_requests)
    # A second transfer, after the link relaxed, does not ask again on this connection.
    await until(lambda: _relaxed(pacer), "relaxed")
    await transfer(host_link, guest_link, 64 * 1024)
    await until(lambda: _relaxed(pacer), "relaxed again")
    assert (pacer.stats.interval_requests, pacer.stats.phy_requests) == asked
    assert pacer.stats.fast == 2


async def _relaxed(pacer: Any) -> bool:
    return pacer.idle and pacer.want is Speed.RELAXED and pacer.applied is Speed.RELAXED


async def test_a_central_that_never_answers_costs_the_transfer_nothing(
    radio: tuple[VirtualRadio, list[Any]],
) -> None:
    host_link, guest_link, connection = await linked(*radio, "bleak", silent=True)
    before = connection.parameters
    await transfer(host_link, guest_link, 64 * 1024)
    pacer = host_link.pacer

    async def gave_up() -> bool:
        return "interval" in pacer.stats.refused

    await until(gave_up, "the request's deadline")
    assert connection.parameters == before
    await transfer(host_link, guest_link, 16 * 1024)  # the link is unharmed


async def test_a_central_without_the_ll_procedure_is_asked_over_l2cap(
    radio: tuple[VirtualRadio, list[Any]],
) -> None:
    host_link, guest_link, connection = await linked(*radio, "bleak", no_ll_procedure=True)
    await transfer(host_link, guest_link, 64 * 1024)
    await until(parameters_are(connection, FAST_MS), "fast interval over L2CAP")
    assert "interval" not in host_link.pacer.stats.refused


async def test_pace_off_asks_for_nothing(radio: tuple[VirtualRadio, list[Any]]) -> None:
    medium, opened = radio
    host = await open_bumble("virtual", radio=medium, prefer_l2cap=False, pace=None)
    opened.append(host)
    guest = await open_transport("bleak:bumble:virtual", radio=medium)
    opened.append(guest)
    await host.start_advertising(HELLO)
    accepting = asyncio.ensure_future(host.accept(timeout=10))
    guest_link = await guest.connect(host.address, timeout=10)
    host_link = await accepting
    connection = next(iter(guest.adapter.device.connections.values()))
    before = connection.parameters
    await transfer(host_link, guest_link, 64 * 1024)
    assert host_link.pacer is None
    assert connection.parameters == before


async def test_a_link_the_central_put_on_2m_stays_there(
    radio: tuple[VirtualRadio, list[Any]],
) -> None:
    host_link, guest_link, connection = await linked(*radio, "bleak")
    await connection.set_phy(tx_phys=[hci.Phy.LE_2M], rx_phys=[hci.Phy.LE_2M])  # the central's
    await until(phy_is(connection, hci.Phy.LE_2M), "2M by the central")
    await transfer(host_link, guest_link, 64 * 1024)
    await until(parameters_are(connection, FAST_MS), "fast interval")
    await until(parameters_are(connection, RELAXED_MS), "relaxed interval")
    pacer = host_link.pacer
    await until(lambda: _relaxed(pacer), "relaxed")
    assert pacer.stats.phy_requests == 0  # nothing to ask: it was on 2M, and stays there
    assert (await connection.get_phy()).tx_phy == hci.Phy.LE_2M
