"""Ways around "a known device's signing key is pinned" (attack review atk18c, session 18;
docs/security.md rule 1).

Session 18 refuses a known device that shows another signing key than its record's, on both
sides before confirm and again under the keystore's lock at save (``peers.check_signing_key``).
This file holds what that check does not cover:

* finding 1: a record that holds no signing key (``Peer.signing_public`` None: a record the
  library's ``Keystore.add_peer`` made, as the check's docstring allows) is given a key by a
  ``resume`` that nobody showed: ``_known`` fills in ``bytes(32)`` for the machines (a resume
  carries no identity payload; ``kk`` does, and stores the key the peer showed), and the save
  stores it.  All zeros is a small-order Ed25519 point: signatures "by" it are
  forged with no key at all (R = the neutral point, S = 0 passes for about one message in
  four), and the device itself, pairing again by a code, is refused from then on as one that
  "signs with another key".
* finding 4: a guest checks the host's signing key against its keystore as it last read it,
  and joins the host's cloud (or takes its renewal) before the save checks again under the
  lock.  A device with two pairkit processes (an app on the library, a ``pairkit join``): the
  first one opened before the second paired with Paul, and then joins "Paul" (Mallory: Paul's
  static key, her own signing key) as a member; its save is refused, but the cloud she gave
  was joined already.

Played with the library's host and guest over the encrypted loopback
(``tests/renewal_harness.py``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import pairkit
from pairkit.pairing.cloud import Grant, Role

from ..cli_helpers import KEYSTORE_PIN
from ..renewal_harness import Owner, device, pair, paul_and_george
from ..signing_harness import with_another_signing_key

WHERE = "sk2"
#: R = the neutral point (y = 1), S = 0
FORGED = bytes([1]) + bytes(31) + bytes(32)


def forged_signatures_pass(public: bytes) -> int:
    """How many of 64 messages a signature made with no key passes for under ``public``."""
    key = Ed25519PublicKey.from_public_bytes(public)
    passed = 0
    for i in range(64):
        try:
            key.verify(FORGED, b"group envelope %d" % i)
        except InvalidSignature:
            continue
        passed += 1
    return passed


def drop_signing_key(holder: pairkit.Device, of: pairkit.Device) -> None:
    """``holder``'s record of ``of`` as one without a signing key (the rest kept)."""
    ks = holder.keystore
    with ks.update():
        record = ks.peer_by_id(of.keystore.device_id)
        assert record is not None
        ks.add_peer(dataclasses.replace(record, signing_public=None))


def test_the_all_zero_key_takes_signatures_made_with_no_key() -> None:
    """Why finding 1 matters beyond the refusal: what ``bytes(32)`` verifies."""
    assert forged_signatures_pass(bytes(32)) > 0


@pytest.mark.parametrize("method", ["resume", "kk"])
@pytest.mark.parametrize("side", ["host", "guest"])
async def test_a_resume_gives_a_record_without_a_signing_key_no_key_nobody_showed(
    tmp_path: Path, side: str, method: str,
) -> None:
    """George paired with Paul by PIN; ``side``'s record of the other holds no signing key;
    George comes back by ``method``, then pairs again by PIN with his own keys.  The record
    must not take the all-zero key (nobody showed it), and George's PIN pairing must work.
    (``kk``, whose identity payload shows the peer's key, is the control.)"""
    paul, george, owner = await paul_and_george(tmp_path, WHERE)
    holder, held = (paul, george) if side == "host" else (george, paul)
    drop_signing_key(holder, held)
    session, error = await pair(paul, owner, george, WHERE, target="Paul", method=method)
    assert error is None and session is not None, error
    await session.close()
    holder.keystore.follow()
    record = holder.keystore.peer_by_id(held.keystore.device_id)
    assert record is not None
    assert record.signing_public in (None, held.keystore.signing_public), (
        f"the {side}'s record took a signing key nobody showed: {record.signing_public!r}")
    session, error = await pair(paul, owner, george, WHERE, pin="246810")
    assert error is None and session is not None, f"George's own keys refused: {error}"
    await session.close()


@pytest.mark.parametrize("kept", ["owner-signing-kept", "no-owner-signing-kept"])
async def test_a_host_known_by_no_signing_key_is_refused_in_words_that_say_so(
    tmp_path: Path, kept: str,
) -> None:
    """George is a member of Paul's cloud; his record of Paul holds no signing key (a record
    the library's ``add_peer`` made); Paul renewed his cloud's secret; George resumes.  The
    renewal is refused, as no signature means anything without a key, but in words that say
    what is wrong and what to do: no key is known for Paul here, pair with him again.  Before,
    George read of a "small order" key (the all-zero stand-in of ``_known``), or, where the
    cloud kept Paul's key, that someone may hold a copy of Paul's device key.  Pairing again by
    PIN then takes the renewal."""
    paul, george, owner = await paul_and_george(tmp_path, WHERE, member=True)
    cloud_id = paul.keystore.device_id[:16]
    if kept == "no-owner-signing-kept":  # a cloud joined before session 18 kept the key
        ks = george.keystore
        with ks.update():
            info = ks.cloud(cloud_id)
            secret = ks._clouds[cloud_id]["secret"]
            ks.set_cloud(cloud_id, secret, name=info.name, role=info.role, epoch=info.epoch,
                         owner=info.owner)
    drop_signing_key(george, paul)
    with paul.keystore.update():
        paul.keystore.renew_cloud_secret(cloud_id, os.urandom(32))
    session, error = await pair(paul, owner, george, WHERE, target="Paul", method="resume")
    if session is not None:
        await session.close()
    assert error is not None, "George took a renewal from a host he knows by no key"
    text = str(error)
    assert "no signing key" in text and "pair with it again" in text, text
    assert "small order" not in text and "copy" not in text, text
    george.keystore.follow()
    assert george.keystore.cloud(cloud_id).epoch == 0, "the renewal was taken"
    session, error = await pair(paul, owner, george, WHERE, pin="246810", wants="member")
    assert error is None and session is not None, f"pairing again was refused: {error}"
    await session.close()
    george.keystore.follow()
    assert george.keystore.cloud(cloud_id).epoch == 1


def clouds(path: Path) -> dict[str, tuple[str, str | None]]:
    """The clouds the keystore at ``path`` holds now: id -> (role, owner)."""
    ks = pairkit.Device.open(path, KEYSTORE_PIN).keystore
    return {c.cloud_id: (c.role, c.owner) for c in ks.clouds()}


async def test_a_refused_host_leaves_no_cloud_in_a_second_process_of_the_guest(
    tmp_path: Path,
) -> None:
    paul = device(tmp_path / "paul", "Paul")
    first = device(tmp_path / "george", "George")  # George's app, open all along
    second = pairkit.Device.open(tmp_path / "george" / "keystore.pk", KEYSTORE_PIN)
    owner = Owner()
    owner.grant = Grant(Role.GUEST, 3600)
    session, error = await pair(paul, owner, second, WHERE, pin="246810")
    assert error is None and session is not None, error
    await session.close()
    before = clouds(tmp_path / "george" / "keystore.pk")
    mallory = with_another_signing_key(tmp_path / "paul" / "keystore.pk")
    session, error = await pair(mallory, Owner(), first, WHERE, pin="246810", wants="member")
    if session is not None:
        await session.close()
    assert error is not None, "George's app paired with Mallory as Paul"
    assert clouds(tmp_path / "george" / "keystore.pk") == before, (
        f"a session refused for its signing key joined George to a cloud ({error})")


async def test_a_known_guests_static_key_with_another_signing_key_is_refused_by_kk(
    tmp_path: Path,
) -> None:
    """``kk`` needs the static keys alone (no code, and no owner asked for a known member):
    the cheapest way for a thief of George's static key to show Paul another signing key.
    Refused as a PIN pairing is (test_attack_signing_key_pinned.py), the record unchanged."""
    paul, george, owner = await paul_and_george(tmp_path, WHERE)
    georges = george.keystore.signing_public
    mallory = with_another_signing_key(tmp_path / "george" / "keystore.pk")
    session, error = await pair(paul, owner, mallory, WHERE, target="Paul", method="kk")
    if session is not None:
        await session.close()
    assert error is not None, "Mallory resumed as George by kk with her own signing key"
    paul.keystore.follow()
    record = paul.keystore.peer_by_id(george.keystore.device_id)
    assert record is not None and record.signing_public == georges, "Paul took Mallory's key"
    # George himself still comes back by kk
    session, error = await pair(paul, owner, george, WHERE, target="Paul", method="kk")
    assert error is None and session is not None, error
    await session.close()
