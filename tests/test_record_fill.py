"""File chunks fill the link's messages (issue 15, item 7): no record ends in a nearly empty
fragment, which on BLE is a packet on the air for a few bytes.

bench/ble_bleak.py found a 16 KiB chunk sealed at MTU 512 to be 33 fragments, the last nearly
empty: 3% more notifications than the bytes need.  :meth:`SecureLink.fitting` picks the size
that carries the most bytes per fragment, and the file service sizes its chunks with it.
"""

from __future__ import annotations

import pytest

from pairkit.pairing import framing
from pairkit.pairing.methods import PeerInfo, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import CHUNK, Chunk
from pairkit.securelink import SecureLink
from pairkit.transports.loopback import loopback_pair

K1, K2 = bytes(range(32)), bytes(range(1, 33))
MTUS = (20, 23, 185, 244, 247, 500, 512, 2048, 65535)


def session() -> Session:
    peer = PeerInfo(b"i" * 16, "peer", b"s" * 32, b"g" * 32, True)
    return Session(Method.PIN, True, peer, send_key=K1, recv_key=K2, fingerprint="x")


@pytest.mark.parametrize("mtu", MTUS)
def test_fragment_count_is_what_fragment_makes(mtu: int) -> None:
    for total in [*range(0, 3 * mtu + 5), 16_384, 16_409, 70_000, 1 << 20]:
        assert framing.fragment_count(total, mtu) == len(framing.fragment(bytes(total), mtu))


@pytest.mark.parametrize("mtu", MTUS)
async def test_a_fitted_record_carries_at_least_as_much_per_fragment(mtu: int) -> None:
    a, _ = loopback_pair(mtu=mtu)
    slink = SecureLink(a, session())
    for size in (1, 100, 1000, 4096, CHUNK, CHUNK + 40, 60_000):
        fitted = slink.fitting(size)
        assert 1 <= fitted <= size
        before = len(slink.channel.seal(bytes(size)))
        after = len(slink.channel.seal(bytes(fitted)))
        assert after <= before
        assert fitted / after >= size / before


async def test_a_file_chunk_at_mtu_512_is_32_fragments_not_33() -> None:
    a, _ = loopback_pair(mtu=512)
    slink = SecureLink(a, session())
    around = len(Chunk(1 << 30, bytes(CHUNK)).encode()) - CHUNK
    assert len(slink.channel.seal(Chunk(0, bytes(CHUNK)).encode())) == 33
    chunk = slink.fitting(CHUNK + around) - around
    assert CHUNK - 512 < chunk < CHUNK
    assert len(slink.channel.seal(Chunk(1 << 30, bytes(chunk)).encode())) == 32
