"""Attack review atk19p, finding 3 (reported, not fixed: the fix changes the wire format or the
BLE link's security): a passive listener reads both devices' permanent ids, and their names,
in the clear whenever a known guest comes back over BLE.

A private host rotates its resolvable private address and its hello tag so that a listener in
radio range can follow it across nothing (docs/hello.md "Privacy", docs/security.md rule 8).
But a BLE link is not encrypted at the link layer unless the method is ``clear``
(``runtime/session.open_session``), and the messages before the pairing carry static
identifiers: a ``resume`` opens with ``ResumeMessage {src_id: G, dst_id: H}`` and the host
answers with ``src_id: H`` (docs/protocol.md §8); ``kk``'s Offer carries ``guest_id``; a known
device's ``JoinRequest`` its ``device_id`` (§10); the host's ``CloudReply`` to a member carries
the host's name.  So a listener who hears one reconnect learns the host's device id, and links
every address the host rotates through at which a known guest reconnects, for as long as the
devices live; and it tracks the guest device (its id is the same in every session), and who
meets whom.  The hello's and the address's privacy are undone by the first message after them.

Over bumble virtual controllers: every L2CAP PDU the radio carries is what the listener has.
"""

from __future__ import annotations

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.negotiation import Method
from tests.ble_harness import World, on_air, reopen

pytestmark = pytest.mark.timeout(60)


@pytest.mark.xfail(strict=True, reason=(
    "atk19p finding 3, reported: a known guest's resume carries both device ids (and the host "
    "its name) in the clear on an unencrypted BLE link; a passive listener links the private "
    "host across rotations and tracks the guest (severity: high for privacy, passive)"))
async def test_a_listener_hears_no_device_id_nor_name_when_a_known_guest_resumes(
    world: World, paul: Keystore, tv: Keystore
) -> None:
    host = await world.start_host(paul, visible=60.0)
    await world.join(reopen(tv), await world.device(), host, method=Method.PIN)
    await host.presence.open_window(0)  # the window closes: a private host from now on
    assert not host.presence.visible
    air = on_air(world.radio)  # the listener, from now on
    for _ in range(2):
        await world.join(reopen(tv), await world.device(), host, method=Method.RESUME,
                         target="Paul's phone", address=host.address)
        await host.presence.open_window(0)  # a rotation between the two sessions
    heard = b"".join(air)
    assert heard, "nothing was heard on air"
    identifying = {
        "the host's device id": bytes.fromhex(paul.device_id),
        "the guest's device id": bytes.fromhex(tv.device_id),
        "the host's name": b"Paul's phone",
    }
    leaked = [what for what, value in identifying.items() if value in heard]
    assert leaked == [], f"on air in the clear: {', '.join(leaked)}"
