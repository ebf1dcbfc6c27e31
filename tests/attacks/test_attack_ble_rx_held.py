"""Attacks on the BLE host's RX writes held behind an Execute Write Request (transports/bumble.py
``_RxWrites``, session 13): a malicious guest on the same virtual radio sends raw ATT PDUs on
the ATT channel (CID 4) through bumble's own send calls, and checks that what is held for one
connection is let go once bumble's handler ran (no queue or task left behind, every later
write delivered), each write reaches its own connection's link in the order sent, and each
Write Request is answered once.  Real bumble stacks on virtual controllers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import pytest

from pairkit.transports.bumble import VirtualRadio
from tests.ble_harness import (
    OpenDevice,
    bumble_devices,
    eventually,
    gatt_guests,
    record_att_responses,
    u16,
)


@pytest.fixture
async def open_device() -> AsyncIterator[OpenDevice]:
    """GATT only: every device made without L2CAP."""
    async with bumble_devices(VirtualRadio()) as factory:
        yield functools.partial(factory, prefer_l2cap=False)


def release_tasks() -> list[asyncio.Task[object]]:
    """The tasks that let held RX writes go (``_RxWrites._release``) still alive."""
    return [
        task for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "").endswith("_release")
    ]


async def test_writes_held_behind_execute_writes_are_all_let_go_per_connection(
    open_device: OpenDevice,
) -> None:
    """Two guests of one host.  The attacker sends, without waiting for any answer, rounds of
    a long write on RX (Prepare, Execute) followed by a flood of Write Commands and Write
    Requests on RX, and a last Execute with nothing prepared; the victim writes between.  Each
    host link gets exactly its own guest's values in the order sent, every request is answered
    once, nothing stays held (no task left; a write sent afterwards arrives at once)."""
    host = await open_device(211)
    guests = [await open_device(212), await open_device(213)]
    pairs = await gatt_guests(host, guests)
    (victim, victim_host), (attacker, attacker_host) = pairs
    assert victim_host.connection.handle != attacker_host.connection.handle
    client = attacker.connection.gatt_client
    rx = attacker._rx_handle
    responses: list[bytes] = []
    record_att_responses(attacker, responses.append)
    expected: list[bytes] = []
    requests = 0
    for round_ in range(5):
        long_value = b"long%d" % round_
        # (a Prepare Write is a request: sent once the last Execute Write was answered, Vol 3
        # Part F §3.3.2; what follows the Execute Write is sent without waiting)
        await eventually(lambda: responses.count(b"\x19") == round_, 5.0)  # noqa: B023
        client.send_gatt_pdu(b"\x16" + u16(rx) + u16(0) + long_value)
        await eventually(lambda: responses[-1:] == [b"\x17" + u16(rx) + u16(0) + long_value], 5.0)  # noqa: B023
        client.send_gatt_pdu(b"\x18\x01")  # Execute Write: what follows is held
        expected.append(long_value)
        for index in range(40):
            value = b"r%d.%d" % (round_, index)
            if index % 3 == 0:
                client.send_gatt_pdu(b"\x12" + u16(rx) + value)
                requests += 1
            else:
                client.send_gatt_pdu(b"\x52" + u16(rx) + value)
            expected.append(value)
            if index == 20:
                victim.send_nowait(b"victim%d" % round_)
    client.send_gatt_pdu(b"\x18\x01")  # an Execute Write with nothing prepared
    got = [await asyncio.wait_for(attacker_host.recv(), 5) for _ in expected]
    assert got == expected
    assert [await asyncio.wait_for(victim_host.recv(), 5) for _ in range(5)] == [
        b"victim%d" % round_ for round_ in range(5)
    ]
    # prepares, executes, requests
    await eventually(lambda: len(responses) == 5 + 6 + requests, 5.0)
    assert responses.count(b"\x13") == requests  # each Write Request answered once
    assert responses.count(b"\x19") == 6  # each Execute Write once
    await eventually(lambda: not release_tasks(), 5.0)
    # Nothing is held any more: a write now is delivered at once, on both connections.
    client.send_gatt_pdu(b"\x52" + u16(rx) + b"after")
    victim.send_nowait(b"victim after")
    assert await asyncio.wait_for(attacker_host.recv(), 2) == b"after"
    assert await asyncio.wait_for(victim_host.recv(), 2) == b"victim after"
    assert attacker_host.recv_nowait() is None and victim_host.recv_nowait() is None


async def test_writes_held_for_a_guest_that_left_reach_no_link(
    open_device: OpenDevice,
) -> None:
    """The attacker sends a long write, an Execute Write and writes behind it, then drops the
    connection at once; a second guest connects (its connection may reuse the handle).  Nothing
    the first sent after leaving reaches the second's link, and the second's own writes arrive
    alone and in order."""
    host = await open_device(221)
    attacker_device = await open_device(222)
    second_device = await open_device(223)
    [(attacker, attacker_host)] = await gatt_guests(host, [attacker_device])
    client = attacker.connection.gatt_client
    rx = attacker._rx_handle
    client.send_gatt_pdu(b"\x16" + u16(rx) + u16(0) + b"long")
    client.send_gatt_pdu(b"\x18\x01")
    for index in range(30):
        client.send_gatt_pdu(b"\x52" + u16(rx) + b"held%d" % index)
    await attacker.close()
    await eventually(lambda: attacker_host.closed, 5.0)
    [(second, second_host)] = await gatt_guests(host, [second_device])
    await second.send(b"mine")
    assert await asyncio.wait_for(second_host.recv(), 2) == b"mine"
    assert second_host.recv_nowait() is None
    await eventually(lambda: not release_tasks(), 5.0)


async def test_a_prepare_write_pipelined_behind_an_execute_write_keeps_the_order_sent(
    open_device: OpenDevice,
) -> None:
    """Attack review atk13 (low; fixed in session 15): a guest sends a long write (Prepare,
    Execute), a Write Command, and a second long write whose Prepare goes before the first
    Execute's answer (breaking Vol 3 Part F §3.3.2).  bumble queued that Prepare at once while
    the Execute it follows was held, so the first Execute committed BBBB over AAAA, ahead of
    the command ([BBBB, cmd], AAAA lost).  The Prepare is now held behind it too: the link
    gets the three values in the order sent, and the guest the answers in that order."""
    host = await open_device(301)
    guest = await open_device(302)
    [(guest_link, host_link)] = await gatt_guests(host, [guest])
    client = guest_link.connection.gatt_client
    rx = guest_link._rx_handle
    responses: list[bytes] = []
    record_att_responses(guest_link, responses.append)
    client.send_gatt_pdu(b"\x16" + u16(rx) + u16(0) + b"AAAA")
    client.send_gatt_pdu(b"\x18\x01")
    client.send_gatt_pdu(b"\x52" + u16(rx) + b"cmd")
    client.send_gatt_pdu(b"\x16" + u16(rx) + u16(0) + b"BBBB")
    client.send_gatt_pdu(b"\x18\x01")
    got = [await asyncio.wait_for(host_link.recv(), 2) for _ in range(2)]
    await asyncio.sleep(0.1)
    while (more := host_link.recv_nowait()) is not None:
        got.append(more)
    assert got == [b"AAAA", b"cmd", b"BBBB"]
    # ... and each answer in the order its request came (the second Prepare's after the first
    # Execute's: bumble had answered it at once, ahead of the Execute it follows).
    await eventually(lambda: len(responses) == 4, 5.0)
    assert responses == [b"\x17" + u16(rx) + u16(0) + b"AAAA", b"\x19",
                         b"\x17" + u16(rx) + u16(0) + b"BBBB", b"\x19"]

