"""The owner's id a member keeps with a cloud (docs/security.md rule 3), in the keystore file:
tampered with, or written by an older version (attack review atk17).

The body of a keystore is sealed, so only a process with its PIN writes it: another pairkit
process on this device (another version, or a bug), or a program of the same user that has the
PIN.  An ``owner`` field that ``set_cloud`` would refuse stood in the cloud's record as read,
and every ``pairkit join`` of that device, to any host, ended in "internal error (ValueError)"
(atk17 finding 2, fixed: such a field is not read as an owner).  A keystore written before
owners were kept opens and saves unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.service import Membership
from tests.attack_harness import evil_host, open_ks, owned_cloud
from tests.cli_helpers import Lab

PIN = "482913-atk17"
CLOUD = "0011223344556677"
PAUL = CLOUD + "8899aabbccddeeff"

#: owner fields set_cloud refuses, as a tampered (or foreign) keystore may hold them
TAMPERED: dict[str, object] = {
    "not-hex": "zz" * 16,
    "odd-length": PAUL[:-1],
    "cloud-id-only": CLOUD,
    "uppercase": PAUL.upper(),
    "another-clouds-owner": "ff" + PAUL[2:],
    "a-number": 12345,
    "bytes": bytes.fromhex(PAUL),
}


def tamper(ks: Keystore, cloud_id: str, owner: object) -> None:
    """What a process with the keystore's PIN can write: ``owner`` in the cloud's record."""
    with ks.update():
        ks._clouds[cloud_id]["owner"] = owner
        ks._dirty = True


def member_keystore(path: Path, owner: str | None) -> Keystore:
    ks = Keystore.create(path, PIN, name="George", kdf=Argon2Params.cheapest())
    with ks.update():
        ks.set_cloud(CLOUD, b"m" * 32, name="Paul's cloud", role="member", epoch=2, owner=owner)
    return ks


@pytest.mark.parametrize("how", list(TAMPERED))
def test_a_tampered_owner_field_is_not_read_as_an_owner(tmp_path: Path, how: str) -> None:
    """Read back, such a field is no owner (``None``: the cloud is renewed only with this
    device's proof, as one joined before owners were kept); the rest of the cloud is kept."""
    ks = member_keystore(tmp_path / "keystore.pk", PAUL)
    tamper(ks, CLOUD, TAMPERED[how])
    again = Keystore.open(tmp_path / "keystore.pk", PIN)
    info = again.cloud(CLOUD)
    assert (info.name, info.role, info.epoch, info.owner) == ("Paul's cloud", "member", 2, None)
    assert again.cloud_mac(CLOUD, b"x") == ks.cloud_mac(CLOUD, b"x")


def test_a_member_cloud_written_without_an_owner_saves_unchanged(tmp_path: Path) -> None:
    """A member cloud as an older pairkit wrote it (no owner field): opened and saved again,
    the body is the same bytes; the cloud reads with no owner."""
    path = tmp_path / "keystore.pk"
    ks = member_keystore(path, None)
    body = ks._body()
    again = Keystore.open(path, PIN)
    assert again.cloud(CLOUD).owner is None
    with again.update():
        again._dirty = True
    assert Keystore.open(path, PIN)._body() == body


@pytest.mark.parametrize("how", ["not-hex", "a-number"])
async def test_a_tampered_owner_field_does_not_cut_the_member_off(lab: Lab, how: str) -> None:
    """George holds Paul's cloud as a member; the owner field of it in his keystore was
    rewritten.  He joins a host that has nothing to do with Paul's cloud (a guest grant, no
    secret): the join goes through, and Paul's cloud is kept, with no owner."""
    paul, george = lab.device("paul"), lab.device("george")
    cloud_id, secret = owned_cloud(paul)
    ks = open_ks(george)
    with ks.update():
        ks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member",
                     owner=open_ks(paul).device_id)
    tamper(ks, cloud_id, TAMPERED[how])
    host = await evil_host(Grant(Role.GUEST, 3600),
                           lambda s: Membership(role=Role.GUEST, expires=2**31))
    try:
        joined = await george.join(host.target, "-m", "pin", "--pin", host.state.new_pin(),
                                   "--yes", "--json", "--timeout", "10")
    finally:
        await host.close()
    assert joined.ok().json()["role"] == "guest"
    kept = open_ks(george)
    assert (kept.cloud(cloud_id).role, kept.cloud(cloud_id).owner) == ("member", None)
    assert kept.cloud_mac(cloud_id, b"x") == ks.cloud_mac(cloud_id, b"x")


def test_the_fixtures_are_what_set_cloud_refuses(tmp_path: Path) -> None:
    """Each tampered field is one ``set_cloud`` itself refuses (so the load is the only way in)."""
    from pairkit.pairing.errors import ConfigError

    ks = member_keystore(tmp_path / "keystore.pk", None)
    for owner in TAMPERED.values():
        with pytest.raises(ConfigError):
            ks.set_cloud(CLOUD, os.urandom(32), name="x", role="member", owner=owner)  # type: ignore[arg-type]
