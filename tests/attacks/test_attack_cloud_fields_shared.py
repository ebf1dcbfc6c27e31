"""A cloud field this version does not know, kept and written back (attack review atk18b;
docs/security.md rule 3; atk18 finding 2's fix).

Since session 18 a cloud record's fields this version does not know are kept as read and
written back at each save.  The body is decoded by ``cbor2``, which also reads value sharing
(RFC 8949 tags 28 and 29: one value, referred to again later): a field can then be a list that
holds itself, or a tree whose every node is the same small node twice.  The keystore opens; but
it is written back without sharing, so every save fails on the cycle (every join, resume,
forget: "cyclic data structure detected"), and the tree is written out in full: 2**depth
leaves from a file of a few hundred bytes, a save that takes seconds and, a few levels
deeper, a keystore over its size limit or a save that never ends.  Before session 18 such a
field was dropped at open.  Only a process with the PIN writes the body (a program of the same
user, another pairkit version, a bug), as for atk17 finding 2's tampered owner: what it wrote
must not make every later pairkit fail.

Kept as it was, or not at all: a field that is plain CBOR data, with no value met twice, is
written back as read; any other is dropped, the rest of the cloud kept.  Since session 19
(kvtree) a body holding value sharing anywhere is refused at open instead, before cbor2
decodes it (tests/attacks/test_attack_keystore_shared_tree.py: the settings, where the
lockouts are, cannot be dropped, and a shared tree as a map key costs 2**depth in cbor2
itself): such a cloud field is no longer dropped but refused, naming the clouds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing import cbor
from pairkit.pairing.errors import KeystoreCorruptError
from pairkit.pairing.keystore.seal import _seal

PIN = "482913-atk18b"
CLOUD = "0011223344556677"
PAUL = CLOUD + "8899aabbccddeeff"
#: levels of the shared tree: 2**20 leaves written back in full (about 3 MB, seconds), from a
#: field of some 60 bytes; the fixed keystore never walks it
DEPTH = 20


def a_cycle() -> Any:
    looped: list[Any] = ["later"]
    looped.append(looped)
    return looped


def a_shared_tree() -> Any:
    node: Any = [1]
    for _ in range(DEPTH):
        node = [node, node]
    return node


FIELDS = {"a-list-that-holds-itself": a_cycle, "a-tree-of-one-node-shared": a_shared_tree}


def member_keystore(path: Path) -> Keystore:
    ks = Keystore.create(path, PIN, name="George", kdf=Argon2Params.cheapest())
    with ks.update():
        ks.set_cloud(CLOUD, b"m" * 32, name="Paul's cloud", role="member", epoch=2, owner=PAUL)
    return ks


def write_with_field(ks: Keystore, value: Any, *, sharing: bool = True) -> bytes:
    """What a process with the PIN can write: the keystore's body with ``value`` as a cloud
    field named ``later``, encoded canonically (with value sharing in the clouds: every array
    and map marked shareable, one met again a reference to it); the body written."""
    data = cbor2.loads(ks._body())
    data["clouds"][CLOUD]["later"] = value
    keys = sorted(data, key=lambda key: (len(cbor.encode(key)), cbor.encode(key)))
    body = cbor.encode_head(5, len(keys)) + b"".join(
        cbor.encode(key)
        + cbor2.dumps(data[key], canonical=True, value_sharing=sharing and key == "clouds")
        for key in keys
    )
    ks.storage.replace(_seal(ks._header, ks._keys, body))
    return body


@pytest.mark.parametrize("field", list(FIELDS))
def test_a_shared_value_in_a_cloud_field_is_refused_at_open(tmp_path: Path, field: str) -> None:
    """Neither written back in full nor failing every save: the keystore does not open, and
    says which part holds what no pairkit writes (session 19; session 18 dropped the field)."""
    path = tmp_path / "keystore.pk"
    write_with_field(member_keystore(path), FIELDS[field]())
    on_disk = path.read_bytes()
    with pytest.raises(KeystoreCorruptError, match="is damaged: its clouds hold CBOR tag 28"):
        Keystore.open(path, PIN)
    assert path.read_bytes() == on_disk


def test_control_a_plain_later_field_is_written_back_as_read(tmp_path: Path) -> None:
    """A nested field of plain data (maps, lists, bytes, text, integers, a float) is kept
    byte for byte, so the test above drops only what cannot be written back as read."""
    path = tmp_path / "keystore.pk"
    value = {"keys": [b"k" * 32, b"l" * 32], "since": 1_700_000_000, "ratio": 0.5,
             "note": "from a later pairkit", "deep": [[[["x"]]]], 7: None}
    written = write_with_field(member_keystore(path), value, sharing=False)
    ks = Keystore.open(path, PIN)
    with ks.update():
        ks._dirty = True
    assert Keystore.open(path, PIN)._body() == written
