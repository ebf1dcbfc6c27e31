"""Attack review atk19p, finding 3: what a passive listener in radio range reads in the clear
when a known device comes back over BLE.

A private host rotates its resolvable private address and its hello tag so that a listener in
radio range can follow it across nothing (docs/hello.md "Privacy", docs/security.md rule 8).
But a BLE link is not encrypted at the link layer unless the method is ``clear``
(``runtime/session.open_session``), and the messages before the pairing carried static
identifiers: a ``resume`` opened with ``ResumeMessage {src_id: G, dst_id: H}`` and the host
answered with ``src_id: H`` (docs/protocol.md §8); the host's ``CloudReply`` to a member carried
the host's name (§10); ``kk``'s Offer carries ``guest_id``; a known device's ``JoinRequest`` its
``device_id``.  So a listener who hears one reconnect learns the host's device id, and links every
address the host rotates through at which a known guest reconnects, for as long as the devices
live; and it tracks the guest device (its id is the same in every session), and who meets whom.

One test per message, each of a flow a known device really takes: a member resuming (the usual
reconnect), a member with no prekey left (kk), a guest granted an hour coming back (its
JoinRequest).  Over bumble virtual controllers: every L2CAP PDU the radio carries is what the
listener has.
"""

from __future__ import annotations

import dataclasses

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.negotiation import Method
from tests.ble_harness import World, on_air, reopen

pytestmark = pytest.mark.timeout(60)


def _leaked(air: list[bytes], identifying: dict[str, bytes]) -> list[str]:
    heard = b"".join(air)
    assert heard, "nothing was heard on air"
    return [what for what, value in identifying.items() if value in heard]


async def _paired_then_private(world: World, host_ks: Keystore, guest_ks: Keystore) -> object:
    """``guest_ks`` pairs with ``host_ks``'s host by PIN while it is visible; then the host's
    window closes (a private host from now on)."""
    host = await world.start_host(host_ks, visible=60.0)
    await world.join(reopen(guest_ks), await world.device(), host, method=Method.PIN)
    await host.presence.open_window(0)
    assert not host.presence.visible
    return host


@pytest.mark.xfail(strict=True, reason=(
    "atk19p finding 3, reported: a known guest's resume carries both device ids in the clear on "
    "an unencrypted BLE link; a passive listener links the private host across rotations and "
    "tracks the guest (severity: high for privacy, passive)"))
async def test_a_listener_hears_no_device_id_when_a_member_resumes(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await _paired_then_private(world, paul, tv)
    air = on_air(world.radio)  # the listener, from now on
    for _ in range(2):
        session, _ = await world.join(reopen(tv), await world.device(), host,
                                      method=Method.RESUME, target="Paul's phone",
                                      address=host.address)
        assert session.method is Method.RESUME
        await host.presence.open_window(0)  # a rotation between the two sessions
    leaked = _leaked(air, {
        "the host's device id": bytes.fromhex(paul.device_id),
        "the guest's device id": bytes.fromhex(tv.device_id),
    })
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


async def test_a_listener_hears_not_the_hosts_name_when_a_member_comes_back(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await _paired_then_private(world, paul, tv)
    air = on_air(world.radio)
    await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                     target="Paul's phone", address=host.address)
    leaked = _leaked(air, {"the host's name": paul.name.encode()})
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


@pytest.mark.xfail(strict=True, reason=(
    "atk19p finding 3, reported: kk's Offer (a known guest with no prekey of the host left) "
    "carries the guest's device id in the clear (severity: medium for privacy, passive: "
    "kk runs when a guest ran out of prekeys or its nominated one was stale)"))
async def test_a_listener_hears_no_device_id_when_a_member_without_prekeys_reconnects(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await _paired_then_private(world, paul, tv)
    ks = reopen(tv)
    record = ks.peer_by_id(paul.device_id)
    assert record is not None and record.their_prekeys
    ks.add_peer(dataclasses.replace(record, their_prekeys=()))  # none left: kk
    ks.save()
    air = on_air(world.radio)
    session, _ = await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                                  target="Paul's phone", address=host.address)
    assert session.method is Method.KK
    leaked = _leaked(air, {
        "the host's device id": bytes.fromhex(paul.device_id),
        "the guest's device id": bytes.fromhex(tv.device_id),
    })
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"


@pytest.mark.xfail(strict=True, reason=(
    "atk19p finding 3, reported: a known device with a guest grant coming back sends its "
    "device id in its JoinRequest in the clear (severity: medium for privacy, passive)"))
async def test_a_listener_hears_no_device_id_when_a_guest_comes_back(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await _paired_then_private(world, paul, george)
    air = on_air(world.radio)
    session, _ = await world.join(reopen(george), await world.device(), host,
                                  method=Method.RESUME, target="Paul's phone",
                                  address=host.address)
    assert session.method is Method.RESUME
    leaked = _leaked(air, {
        "the host's device id": bytes.fromhex(paul.device_id),
        "the guest's device id": bytes.fromhex(george.device_id),
    })
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"
