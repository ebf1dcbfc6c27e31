"""A known device's signing key is the one it was first paired with (attack review atk18b,
finding 2; docs/security.md rule 1).

A device id is a hash of the static (X25519) key alone; the signing (Ed25519) key travels in the
identity payload of every full pairing (PIN, QR, compare, clear, ttp), and the record of a known
device keeps it: the owner's signature on a cloud renewal, a group controller's envelopes and
a resume are checked against it.  Whoever holds a device's static private key but not its
signing key (the static key is handed to every handshake; the signing key never leaves the
keystore) must not be able to swap in a signing key of its own by pairing again.

Here, over the library's host and guest on the encrypted loopback: George paired with Paul by
PIN; "Mallory" has George's identity and static key with a signing key of her own, and pairs
with Paul by PIN again.  The guest side of the same attack (a host with Paul's static key
renewing George's cloud) is played over TCP in ``test_attack_owner_signing_key.py``.
"""

from __future__ import annotations

from pathlib import Path

import pairkit

from ..cli_helpers import KEYSTORE_PIN
from ..renewal_harness import Owner, device, pair, paul_and_george
from ..signing_harness import with_another_signing_key

WHERE = "sk1"




async def test_a_known_guests_static_key_with_another_signing_key_is_refused(
    tmp_path: Path,
) -> None:
    paul, george, owner = await paul_and_george(tmp_path, WHERE)
    georges = george.keystore.signing_public
    mallory = with_another_signing_key(tmp_path / "george" / "keystore.pk", KEYSTORE_PIN)
    assert mallory.keystore.device_id == george.keystore.device_id
    assert mallory.keystore.signing_public != georges
    session, error = await pair(paul, owner, mallory, WHERE, pin="246810")
    if session is not None:
        await session.close()
    paul.keystore.follow()
    record = paul.keystore.peer_by_id(george.keystore.device_id)
    assert record is not None and record.signing_public == georges, "Paul took Mallory's key"
    assert error is not None, "Mallory paired as George with her own signing key"


async def test_control_george_pairs_again_with_his_own_keys(tmp_path: Path) -> None:
    """The same second pairing by George himself succeeds: the refusal above is the key's."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    for again in (george, pairkit.Device.open(tmp_path / "george" / "keystore.pk",
                                              KEYSTORE_PIN)):
        session, error = await pair(paul, owner, again, WHERE, pin="246810")
        assert error is None and session is not None, error
        await session.close()
