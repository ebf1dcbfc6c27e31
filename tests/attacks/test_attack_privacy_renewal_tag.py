"""Attack review atk19p, finding 2: a running host keeps its hello tag under the cloud secret
that ``pairkit forget`` retired.

docs/security.md ("Recognising a host across addresses", "Renewing the cloud secret"): when
the owner forgets a member, the cloud secret is renewed and "the forgotten member then
recognises the host's cloud by its hello tag no more (the tag follows the new secret)"; a
running host (another process) moves to a renewed address key at its next rotation.  The
hello-tag key did not move: :class:`presence.Presence` derived it once, when the host
started, so a host left running kept sending tags (and private hellos) that the forgotten
member's old secret recognises and decrypts, for as long as the process runs, while the
members kept, once renewed, recognised it no more.

Over bumble virtual controllers: ``pairkit host``'s flow, private, Paul's TV holding the
secret as the forgotten member does; ``pairkit forget``'s renewal made through another
keystore handle, as another process makes it.
"""

from __future__ import annotations

import time

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.hello import decode_hello
from pairkit.peers import renew_cloud_secret
from pairkit.presence import tag_keys
from pairkit.transports.bumble import BumbleTransport
from tests.ble_harness import World, reopen

pytestmark = pytest.mark.timeout(60)


async def _clouds_recognised(
    scanner: BumbleTransport, address: str, keys: dict[str, bytes]
) -> list[str | None]:
    """For each hello heard from ``address`` for a while: the cloud ``keys`` recognise it by."""
    seen = []
    async for s in scanner.scan(0.3):
        if s.address == address:
            seen.append(decode_hello(s.payload, keys, time.time()).cloud)
    assert seen, f"nothing heard from {address}"
    return seen


async def test_a_running_host_tags_with_the_renewed_secret_after_its_next_rotation(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    (cloud_id,) = [c.cloud_id for c in paul.clouds() if c.role == "owner"]
    # what a forgotten member holds: Paul's cloud secret before the renewal
    forgotten_keys = {cloud_id: tag_keys(tv)[cloud_id]}
    host = await world.start_host(paul, visible=None)  # private
    scanner = await world.device()
    assert set(await _clouds_recognised(scanner, host.address, forgotten_keys)) == {cloud_id}

    other_process = reopen(paul)  # `pairkit forget` of a member, beside the running host
    with other_process.update():
        assert renew_cloud_secret(other_process) == 1
    renewed_keys = tag_keys(reopen(paul))
    assert renewed_keys[cloud_id] != forgotten_keys[cloud_id]

    await host.presence.open_window(0)  # the host's next rotation; it stays private
    assert not host.presence.visible
    assert set(await _clouds_recognised(scanner, host.address, forgotten_keys)) == {None}, (
        "the forgotten member's retired secret still recognises the running host's hello"
    )
    assert set(await _clouds_recognised(scanner, host.address, renewed_keys)) == {cloud_id}, (
        "a member holding the renewed secret does not recognise the running host"
    )
