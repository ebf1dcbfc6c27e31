"""What the signing-key attack tests share (docs/security.md rule 1; attack reviews atk18b and
atk18c): a device with another signing key than its own, and a member of Paul's cloud who knows
Paul by his real keys."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import pairkit
from pairkit.keystore import Peer

from .attack_harness import open_ks, owned_cloud
from .cli_helpers import KEYSTORE_PIN, Device, Lab


def with_another_signing_key(path: Path, pin: str = KEYSTORE_PIN) -> pairkit.Device:
    """The device at ``path``, opened again, with a fresh signing key in memory (never saved):
    its identity and static key, as a thief of the static key alone would hold them."""
    made = pairkit.Device.open(path, pin)
    forged = Ed25519PrivateKey.generate()
    made.keystore._signing = forged
    made.keystore._signing_public = forged.public_key().public_bytes_raw()
    return made


def held(device: Device) -> dict[str, tuple[str, int, bytes]]:
    """Every cloud ``device`` holds: id -> (role, epoch, a MAC standing for the secret)."""
    ks = open_ks(device)
    return {c.cloud_id: (c.role, c.epoch, ks.cloud_mac(c.cloud_id, b"probe"))
            for c in ks.clouds()}


def george_member_of_pauls_cloud(lab: Lab) -> tuple[Device, Device, str]:
    """Paul renewed his cloud once; George holds it at epoch 1, joined from Paul as a join
    stores it (the owner's id and signing key kept with the cloud), and knows Paul as a peer
    with Paul's real signing key.  (Paul, George, the cloud id)."""
    paul, george = lab.device("paul"), lab.device("george")
    cloud_id, _ = owned_cloud(paul)
    pks = open_ks(paul)
    secret = os.urandom(32)
    with pks.update():
        assert pks.renew_cloud_secret(cloud_id, secret) == 1
    gks = open_ks(george)
    with gks.update():
        gks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member", epoch=1,
                      owner=pks.device_id, owner_signing=pks.signing_public)
        now = time.time()
        gks.add_peer(Peer(id=pks.device_id, name=pks.name, static_public=pks.static_public,
                          signing_public=pks.signing_public, authenticated=True, method="pin",
                          first_seen=now, last_seen=now))
    return paul, george, cloud_id
