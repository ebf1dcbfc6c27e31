"""Link messages sized to fill their ACL packets (transports/ble/fill.py; issue 13's goodput).

The size a BLE link picks is checked against a brute-force search of every size, then on
bumble's virtual radio: each message of the link's size crosses in L2CAP PDUs that end exactly
at the end of an ACL packet, in both directions, GATT and L2CAP, and arrives whole.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from fractions import Fraction

import pytest

from pairkit.transports.ble.fill import acl_packets, filling_size
from pairkit.transports.ble.links import GattLink, L2capLink
from pairkit.transports.ble.virtual import VIRTUAL_ACL_LENGTH
from pairkit.transports.bumble import VirtualRadio
from tests.ble_harness import OpenDevice, bumble_devices, linked_pair, on_air

ATT_HEADER, SDU_LENGTH = 3, 2


def brute_force(limit: int, acl: int, first_header: int, mps: int | None) -> int:
    """The size that carries the most bytes per ACL packet, by trying every size (the larger
    on a tie): what filling_size must find."""
    def per_packet(size: int) -> Fraction:
        return Fraction(size, acl_packets(size, acl, first_header=first_header, mps=mps))

    return max(range(20, limit + 1), key=lambda size: (per_packet(size), size))


def test_acl_packets_counts_the_pdus_and_their_headers() -> None:
    # an SDU of 2,048 bytes with an MPS of 2,048: K-frames of 2,048 and 2 bytes, each with a
    # 4-byte L2CAP header, in 251-byte ACL packets: 9 + 1
    assert acl_packets(2048, 251, first_header=SDU_LENGTH, mps=2048) == 10
    assert acl_packets(2002, 251, first_header=SDU_LENGTH, mps=2048) == 8
    # a notification of 512 bytes: 3 + 512 + 4 = 519 bytes, three packets; 495: two
    assert acl_packets(512, 251, first_header=ATT_HEADER) == 3
    assert acl_packets(495, 251, first_header=ATT_HEADER) == 2


@pytest.mark.parametrize(
    ("limit", "acl", "first_header", "mps", "want"),
    [
        (2048, 251, SDU_LENGTH, 2048, 2002),  # bumble's defaults here: one K-frame, 8 packets
        (512, 251, ATT_HEADER, None, 495),  # GATT at ATT MTU 517: two packets, not three
        (182, 251, ATT_HEADER, None, 182),  # ATT MTU 185 already fits one packet
        (512, 251, SDU_LENGTH, 247, 492),  # a phone's MPS of 247: two K-frames of one packet
        (2048, 27, SDU_LENGTH, 2048, 2046),  # no data length extension: 27-byte packets
        (2048, 0, SDU_LENGTH, 2048, 2048),  # ACL length unknown: the limit
        (2048, 251, SDU_LENGTH, 100, 1998),  # K-frames smaller than a packet: whole ones
        (298, 251, SDU_LENGTH, 100, 298),  # three whole K-frames already
        (4000, 251, SDU_LENGTH, 1000, 3998),  # four K-frames of four full packets
    ],
)
def test_filling_size_picks_the_size_that_fills_its_packets(
    limit: int, acl: int, first_header: int, mps: int | None, want: int
) -> None:
    assert filling_size(limit, acl, first_header=first_header, mps=mps) == want


def test_filling_size_is_the_best_of_every_size() -> None:
    draw = random.Random(1613)
    for _ in range(300):
        acl = draw.choice([27, 64, 100, 251, 255, 1021, draw.randint(23, 300)])
        limit = draw.randint(20, 1200)
        if draw.random() < 0.5:
            first_header, mps = ATT_HEADER, None
        else:
            first_header, mps = SDU_LENGTH, draw.randint(23, 1300)
        got = filling_size(limit, acl, first_header=first_header, mps=mps)
        assert got == brute_force(limit, acl, first_header, mps), (limit, acl, mps)


def test_filling_size_never_exceeds_the_limit_nor_goes_below_the_floor() -> None:
    assert filling_size(65535, 251, first_header=SDU_LENGTH, mps=65533) <= 65535
    assert filling_size(20, 251, first_header=ATT_HEADER) == 20
    # an MTU and MPS of 23: 21 bytes in one K-frame, not 23 in two
    assert filling_size(23, 251, first_header=SDU_LENGTH, mps=23) == 21


# -- on bumble's virtual radio --------------------------------------------------------------


@pytest.fixture
def radio() -> VirtualRadio:
    return VirtualRadio()


@pytest.fixture
async def open_device(radio: VirtualRadio) -> AsyncIterator[OpenDevice]:
    async with bumble_devices(radio) as factory:
        yield factory


@pytest.mark.parametrize(("l2cap", "size"), [(False, 495), (True, 2002)],
                         ids=["gatt", "l2cap"])
async def test_messages_of_the_link_size_fill_their_acl_packets(
    radio: VirtualRadio, open_device: OpenDevice, l2cap: bool, size: int
) -> None:
    """Every PDU a full-size message makes ends at the end of an ACL packet, both ways."""
    guest, host = await linked_pair(open_device, 70, prefer_l2cap=l2cap)
    assert isinstance(guest, L2capLink if l2cap else GattLink)
    assert guest.mtu == host.mtu == size
    for sender, receiver in ((host, guest), (guest, host)):
        air = on_air(radio)
        messages = [bytes([i]) * size for i in range(6)]
        for message in messages:
            await asyncio.wait_for(sender.send(message), 2)
        got = [await asyncio.wait_for(receiver.recv(), 2) for _ in messages]
        assert got == messages
        data = [pdu for pdu in air if len(pdu) > 100]  # not the credits going back
        assert len(data) == len(messages)
        assert all(len(pdu) % VIRTUAL_ACL_LENGTH == 0 for pdu in data), [len(p) for p in data]


async def test_k_frames_smaller_than_a_packet_are_sent_whole(
    radio: VirtualRadio, open_device: OpenDevice
) -> None:
    """An MPS of 100: a message of the channel's MTU (600) would end in a K-frame of 2 bytes;
    the link's size (598) is six whole K-frames, six PDUs of 104 bytes."""
    guest, host = await linked_pair(open_device, 74, l2cap_mtu=600, l2cap_mps=100,
                                    l2cap_credits=20)
    assert isinstance(host, L2capLink)
    assert guest.mtu == host.mtu == 598
    air = on_air(radio)
    await host.send(bytes(598))
    assert await asyncio.wait_for(guest.recv(), 2) == bytes(598)
    assert [len(pdu) for pdu in air if len(pdu) > 20] == [104] * 6
