"""Attack review atk19p, finding 1: a stranger links a private host across address rotations
by pairing the link layer (Core 5.4 Vol 3 Part H §3.6.4, key distribution).

A private host's Bluetooth address is a resolvable private address, a fresh one at every
rotation, and only the members holding its identity resolving key link two of them
(docs/hello.md "Privacy", docs/security.md "Recognising a host across addresses").  But the
host accepts LE pairing (Just Works) from anyone who connects, and bumble's responder
distributes whatever key the initiator asks for: its Identity Address Information is the
device's random static address, drawn once when the transport opens and kept for the life of
the process (across rotations and radio losses).  A stranger who connects to each advert and
pairs the link reads the same identity address every time, and so follows the host across
every rotation, with no pairkit pairing and without the owner being asked.

Over bumble's real stack on virtual controllers: the host runs ``pairkit host``'s flow,
private (no visibility window); the stranger is a plain bumble device asking, as any phone
bonding would, for the host's identity key.
"""

from __future__ import annotations

import asyncio

import pytest
from bumble.pairing import PairingConfig, PairingDelegate

from pairkit.keystore import Keystore
from pairkit.transports.ble.privacy import is_resolvable
from tests.ble_harness import World

pytestmark = pytest.mark.timeout(60)


def _bonding_stranger(_connection: object) -> PairingConfig:
    """What any bonding central asks for: Secure Connections, bonding, and the peer's keys
    (the encryption key and the identity key: bumble's default distribution)."""
    return PairingConfig(sc=True, mitm=False, bonding=True, delegate=PairingDelegate())


async def test_pairing_the_link_tells_a_stranger_nothing_that_outlives_a_rotation(
    world: World, paul: Keystore
) -> None:
    host = await world.start_host(paul, visible=None)  # private: no visibility window
    assert not host.presence.visible
    stranger = await world.device()
    stranger.device.pairing_config_factory = _bonding_stranger
    heard_at, identities = [], []
    for _ in range(2):
        address = host.address
        assert is_resolvable(address)
        link = await stranger.connect(address, timeout=5)
        connection = link.connection
        await asyncio.wait_for(connection.pair(), 5)
        heard_at.append(address)
        # bumble replaces the peer's address with the identity address it was given, if any
        identities.append(str(connection.peer_address))
        await link.close()
        await host.presence.open_window(0)  # a rotation that leaves the host private
        assert not host.presence.visible
    assert heard_at[0] != heard_at[1], "the host did not rotate"
    assert identities[0] != identities[1], (
        f"both addresses gave the stranger the identity address {identities[0]}: the host is "
        "linked across its rotations by anyone who pairs the link"
    )
