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
from pairkit.pairing.errors import KeystoreCorruptError
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


# -- the epoch of a cloud, and of its retired secrets (session 19, renew19 finding 2) ------------

#: epochs ``set_cloud`` refuses, as a keystore written with the PIN may hold them: read as they
#: were (``int(...)``), a member held a cloud below epoch 0, and took its owner's secret at
#: epoch 0 as a renewal; or an epoch made up from a text, a flag or a fraction
BAD_EPOCHS: dict[str, object] = {
    "negative": -1,
    "very-negative": -(2**40),
    "true": True,
    "false": False,
    "text": "5",
    "fraction": 2.5,
    "float": 1.0,
}


def tamper_field(ks: Keystore, cloud_id: str, field: str, value: object) -> None:
    """What a process with the keystore's PIN can write: ``field`` of the cloud's record."""
    with ks.update():
        ks._clouds[cloud_id][field] = value
        ks._dirty = True


@pytest.mark.parametrize("how", list(BAD_EPOCHS))
def test_a_cloud_at_an_epoch_pairkit_never_writes_is_refused_at_open(
    tmp_path: Path, how: str,
) -> None:
    """No reading of such an epoch is safe (as 0 a member takes an older secret of its owner
    as a renewal), so the keystore is refused, as other contents this pairkit cannot read
    are, in words naming the cloud and its epoch; never its secret."""
    ks = member_keystore(tmp_path / "keystore.pk", PAUL)
    tamper_field(ks, CLOUD, "epoch", BAD_EPOCHS[how])
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(tmp_path / "keystore.pk", PIN)
    text = str(refused.value)
    assert "'Paul's cloud'" in text or '"Paul\'s cloud"' in text, text
    assert "epoch" in text and "backup" in text, text
    assert (b"m" * 32).hex() not in text and "m" * 32 not in text


def test_the_bad_epochs_are_what_set_cloud_refuses(tmp_path: Path) -> None:
    from pairkit.pairing.errors import ConfigError

    ks = member_keystore(tmp_path / "keystore.pk", None)
    for epoch in BAD_EPOCHS.values():
        with pytest.raises(ConfigError):
            ks.set_cloud(CLOUD, os.urandom(32), name="x", role="member", epoch=epoch)  # type: ignore[arg-type]


async def test_a_cloud_at_a_negative_epoch_is_told_at_the_cli(lab: Lab) -> None:
    """What George's person reads: an error naming the cloud and what to do, exit 3 (an
    authentication failure, as for a damaged keystore), no traceback, no secret."""
    paul, george = lab.device("paul"), lab.device("george")
    cloud_id, secret = owned_cloud(paul)
    ks = open_ks(george)
    with ks.update():
        ks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member", epoch=1,
                     owner=open_ks(paul).device_id)
    tamper_field(ks, cloud_id, "epoch", -1)
    told = await george.run("peers")
    assert told.rc == 3 and told.err.startswith("error: "), told
    assert "Paul's cloud" in told.err and "epoch" in told.err, told
    assert secret.hex() not in told.err + told.out


def owner_keystore(path: Path) -> tuple[Keystore, dict[int, bytes]]:
    """Paul's keystore, his cloud renewed three times: epoch 3, retired 0, 1 and 2."""
    ks = Keystore.create(path, PIN, name="Paul", kdf=Argon2Params.cheapest())
    with ks.update():
        ks.set_cloud(CLOUD, os.urandom(32), name="Paul's cloud", role="owner")
        for _ in range(3):
            ks.renew_cloud_secret(CLOUD, os.urandom(32))
    return ks, dict(ks._clouds[CLOUD]["retired"])


#: retired secrets pairkit never writes, beside the three it did (or in place of the one of the
#: epoch given: True is 1 as a key, and a bad secret stands at 0): each is not kept (a host that
#: holds fewer retired secrets only asks about more guests, as past the 16 kept)
BAD_RETIRED: dict[str, tuple[object, object, int | None]] = {
    "negative-epoch": (-1, b"r" * 32, None),
    "true-epoch": (True, b"r" * 32, 1),
    "text-epoch": ("7", b"r" * 32, None),
    "float-epoch": (0.5, b"r" * 32, None),
    "epoch-not-older": (3, b"r" * 32, None),
    "epoch-ahead": (9, b"r" * 32, None),
    "a-number-for-a-secret": (0, 32, 0),
    "a-short-secret": (0, b"r", 0),
    "text-for-a-secret": (0, "r" * 32, 0),
}


@pytest.mark.parametrize("how", list(BAD_RETIRED))
def test_a_retired_secret_pairkit_never_writes_is_not_kept(tmp_path: Path, how: str) -> None:
    ks, retired = owner_keystore(tmp_path / "keystore.pk")
    before = Keystore.open(tmp_path / "keystore.pk", PIN)
    epoch, secret, instead = BAD_RETIRED[how]
    kept = {e: s for e, s in retired.items() if e != instead}
    tamper_field(ks, CLOUD, "retired", {**kept, epoch: secret})
    assert epoch in ks._clouds[CLOUD]["retired"]  # written as meant
    again = Keystore.open(tmp_path / "keystore.pk", PIN)
    assert again.retired_epochs(CLOUD) == tuple(sorted(kept, reverse=True))
    assert again.cloud(CLOUD).epoch == 3
    for e in kept:  # those kept are the very secrets
        assert again.cloud_kdf(CLOUD, b"i", epoch=e) == before.cloud_kdf(CLOUD, b"i", epoch=e)


@pytest.mark.parametrize("value", [[1, 2], "retired", 5])
def test_retired_secrets_that_are_not_a_map_are_not_kept(tmp_path: Path, value: object) -> None:
    """Not a map of epochs: none is kept (the keystore opened with an AttributeError, no
    typed error at all)."""
    ks, _ = owner_keystore(tmp_path / "keystore.pk")
    tamper_field(ks, CLOUD, "retired", value)
    again = Keystore.open(tmp_path / "keystore.pk", PIN)
    assert again.retired_epochs(CLOUD) == ()
    assert again.cloud(CLOUD).epoch == 3


def test_a_renewed_owned_cloud_saves_unchanged(tmp_path: Path) -> None:
    """The epoch and retired secrets pairkit writes are read back as they were: opened and
    saved again, the body is the same bytes."""
    path = tmp_path / "keystore.pk"
    ks, _ = owner_keystore(path)
    body = ks._body()
    again = Keystore.open(path, PIN)
    with again.update():
        again._dirty = True
    assert Keystore.open(path, PIN)._body() == body


# -- the cloud's secret itself (session 19: found by renew19) ----------------------------------

#: secrets ``set_cloud`` refuses, as a keystore written with the PIN may hold them: read with
#: ``bytes(...)``, the number 32 became 32 zero bytes, a secret anyone knows
BAD_SECRETS: dict[str, object] = {
    "a-number": 32,
    "zero": 0,
    "short": b"s" * 15,
    "text": "s" * 32,
    "a-list": [1] * 32,
}


@pytest.mark.parametrize("how", list(BAD_SECRETS))
def test_a_cloud_secret_pairkit_never_writes_is_refused_at_open(
    tmp_path: Path, how: str,
) -> None:
    """No reading of such a secret is safe (a number read as that many zero bytes is a secret
    everyone knows: anyone would prove the cloud), so the keystore is refused in words naming
    the cloud, as for an epoch pairkit never writes."""
    ks = member_keystore(tmp_path / "keystore.pk", PAUL)
    tamper_field(ks, CLOUD, "secret", BAD_SECRETS[how])
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(tmp_path / "keystore.pk", PIN)
    text = str(refused.value)
    assert "Paul's cloud" in text and "secret" in text and "backup" in text, text


def test_the_bad_secrets_are_what_set_cloud_refuses(tmp_path: Path) -> None:
    from pairkit.pairing.errors import ConfigError

    ks = member_keystore(tmp_path / "keystore.pk", None)
    for secret in BAD_SECRETS.values():
        with pytest.raises(ConfigError):
            ks.set_cloud(CLOUD, secret, name="x", role="member")  # type: ignore[arg-type]


# -- a cloud's expiry, and the groups' epochs and keys (session 20) ----------------------------

#: expiries ``set_cloud`` refuses, as a keystore written with the PIN may hold them: read as
#: they were, a text ended every join in "internal error (TypeError)" where the expiry is
#: compared, NaN and infinity never expire, and a flag reads as 1 s after 1970
BAD_EXPIRIES: dict[str, object] = {
    "negative": -1,
    "true": True,
    "text": "soon",
    "bytes": b"\x00" * 8,
    "nan": float("nan"),
    "infinite": float("inf"),
}


@pytest.mark.parametrize("how", list(BAD_EXPIRIES))
def test_a_cloud_expiry_pairkit_never_writes_is_refused_at_open(
    tmp_path: Path, how: str,
) -> None:
    ks = member_keystore(tmp_path / "keystore.pk", PAUL)
    tamper_field(ks, CLOUD, "expires", BAD_EXPIRIES[how])
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(tmp_path / "keystore.pk", PIN)
    text = str(refused.value)
    assert "Paul's cloud" in text and "expir" in text and "backup" in text, text
    assert (b"m" * 32).hex() not in text and "m" * 32 not in text


def test_the_bad_expiries_are_what_set_cloud_refuses(tmp_path: Path) -> None:
    from pairkit.pairing.errors import ConfigError

    ks = member_keystore(tmp_path / "keystore.pk", None)
    for expires in BAD_EXPIRIES.values():
        with pytest.raises(ConfigError):
            ks.set_cloud(CLOUD, os.urandom(32), name="x", role="member", expires=expires)  # type: ignore[arg-type]


#: a group key as a keystore written with the PIN may hold it (pairkit writes 32 bytes)
GROUP_KEY = b"g" * 32
#: group epochs ``store_group_key`` refuses: read with ``int(...)``, a text or a fraction made
#: up an epoch, a flag was epoch 1, and an epoch past any a group reaches (``MAX_EPOCH``) was
#: held as if a controller had given it
BAD_GROUP_EPOCHS: dict[str, object] = {
    "negative": -1,
    "true": True,
    "text": "5",
    "fraction": 2.5,
    "past-max-epoch": 2**32,
    "absurd": 2**63,
}
#: group keys ``store_group_key`` refuses: read with ``bytes(...)``, the number 32 was 32 zero
#: bytes, a key everyone knows (anyone would forge the group's commands)
BAD_GROUP_KEYS: dict[str, object] = {
    "a-number": 32,
    "short": GROUP_KEY[:31],
    "long": GROUP_KEY + b"g",
    "text": "g" * 32,
}


def group_keystore(path: Path) -> Keystore:
    ks = Keystore.create(path, PIN, name="Paul", kdf=Argon2Params.cheapest())
    with ks.update():
        ks.store_group_key("doors", 1, GROUP_KEY)
    return ks


def tamper_group(ks: Keystore, epochs: dict[object, object]) -> None:
    """What a process with the keystore's PIN can write: the keys of group "doors"."""
    with ks.update():
        ks._groups["doors"] = epochs  # type: ignore[assignment]
        ks._dirty = True


@pytest.mark.parametrize("how", list(BAD_GROUP_EPOCHS))
def test_a_group_epoch_pairkit_never_writes_is_refused_at_open(tmp_path: Path, how: str) -> None:
    ks = group_keystore(tmp_path / "keystore.pk")
    tamper_group(ks, {BAD_GROUP_EPOCHS[how]: GROUP_KEY, 2: GROUP_KEY})  # True is 1 as a key
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(tmp_path / "keystore.pk", PIN)
    text = str(refused.value)
    assert "'doors'" in text and "epoch" in text and "backup" in text, text
    assert GROUP_KEY.hex() not in text and "g" * 32 not in text


@pytest.mark.parametrize("how", list(BAD_GROUP_KEYS))
def test_a_group_key_pairkit_never_writes_is_refused_at_open(tmp_path: Path, how: str) -> None:
    ks = group_keystore(tmp_path / "keystore.pk")
    tamper_group(ks, {1: GROUP_KEY, 2: BAD_GROUP_KEYS[how]})
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(tmp_path / "keystore.pk", PIN)
    text = str(refused.value)
    assert "'doors'" in text and "key" in text and "backup" in text, text
    assert GROUP_KEY.hex() not in text and "g" * 32 not in text


def test_the_bad_group_epochs_and_keys_are_what_store_group_key_refuses(tmp_path: Path) -> None:
    from pairkit.pairing.errors import ConfigError

    ks = group_keystore(tmp_path / "keystore.pk")
    for epoch in BAD_GROUP_EPOCHS.values():
        with pytest.raises(ConfigError):
            ks.store_group_key("doors", epoch, GROUP_KEY)  # type: ignore[arg-type]
    for key in BAD_GROUP_KEYS.values():
        with pytest.raises(ConfigError):
            ks.store_group_key("doors", 2, key)  # type: ignore[arg-type]


def test_groups_as_pairkit_writes_them_save_unchanged(tmp_path: Path) -> None:
    """The control: epochs 0, 1 and the last a group reaches, each a 32-byte key, are read
    back as they were (opened and saved again, the body is the same bytes)."""
    path = tmp_path / "keystore.pk"
    ks = group_keystore(path)
    with ks.update():
        ks.store_group_key("doors", 0, b"h" * 32)
        ks.store_group_key("doors", 2**32 - 1, b"i" * 32)
        ks.store_group_key("vents", 7, b"j" * 32)
    body = ks._body()
    again = Keystore.open(path, PIN)
    assert again.group_epochs("doors") == (0, 1, 2**32 - 1)
    with again.update():
        again._dirty = True
    assert Keystore.open(path, PIN)._body() == body
