"""A keystore whose settings or known peers hold a tree of one shared node (session 19, kvtree;
the doubt atk18b left open).

The keystore's body is read by ``cbor2``, which also reads value sharing (RFC 8949 tags 28
and 29: an array or map marked once, referred to again later).  A body of a few hundred bytes
then decodes to a tree whose every node is the same node twice: as a setting (the PIN
lockouts are settings) or a peer's ``extra`` or prekeys, each open copied it node by node
(``records._freeze``: 2**depth steps; open took 1 s at depth 18, doubling with each level,
and a save wrote the tree out in full), and as a map's key cbor2 itself hashed it 2**depth
times before anything else ran.  Only a process with the PIN writes the body (another program
of the same user, a bug), as for atk18b.

Refused, not dropped: dropping the settings would reset a lockout.  Every open finishes with
:class:`KeystoreCorruptError` naming the part, after a bounded number of steps: the steps are
counted (each copy of a node, each hash of the tree's leaf), not timed; a keystore that walked
the tree would pass the budget within its first levels.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from pairkit.keystore import Argon2Params, Keystore
from pairkit.lockouts import _AD, _MAGIC, lock_file
from pairkit.pairing import cbor
from pairkit.pairing.errors import KeystoreCorruptError, KeystoreError
from pairkit.pairing.keystore import records, store
from pairkit.pairing.keystore.records import Peer
from pairkit.pairing.keystore.seal import NONCE_SIZE, _seal

PIN = "482913-kvtree"
#: levels of the shared tree: 2**30 leaves, from about 100 bytes
DEPTH = 30
#: steps an open may take (a plain keystore like these takes under 50)
BUDGET = 2_000


class OverBudget(Exception):
    """The keystore walked the shared tree."""


class Steps:
    """Counts every copy of a node (``records._freeze``, as the settings and a peer's records
    are read) and every hash of the tree's leaf (a :class:`uuid.UUID`, which cbor2 reads from
    tag 37: its hash runs in Python while cbor2 hashes a map key); past :data:`BUDGET`, raises
    :class:`OverBudget` (which cbor2 may turn into its own error: the count says it anyway)."""

    def __init__(self) -> None:
        self.taken = 0

    def counted(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def counted_step(*args: Any, **kwargs: Any) -> Any:
            self.taken += 1
            if self.taken > BUDGET:
                raise OverBudget(f"over {BUDGET} steps")
            return step(*args, **kwargs)

        return counted_step


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[Steps]:
    counter = Steps()
    monkeypatch.setattr(records, "_freeze", counter.counted(records._freeze))
    monkeypatch.setattr(store, "_freeze", records._freeze)
    monkeypatch.setattr(uuid.UUID, "__hash__", counter.counted(uuid.UUID.__hash__))
    yield counter


def a_shared_tree() -> Any:
    node: Any = [1]
    for _ in range(DEPTH):
        node = [node, node]
    return node


#: stands for :func:`a_shared_key` in what is encoded, then replaced by it
HERE = b"a-shared-key-goes-here"


def a_shared_key() -> bytes:
    """A map whose one key is the tree (an array as a key: cbor2 reads it as a tuple), written
    by hand: made in Python, the map would hash its key 2**depth times here.  Each level is
    marked shareable (tag 28, numbered in the order met) and holds the next level, then a
    reference to it (tag 29); the last level holds two leaves, each a UUID (tag 37)."""
    leaf = b"\xd8\x25\x50" + uuid.UUID(int=7).bytes
    node = b"\xd8\x1c\x82" + leaf + leaf
    for level in reversed(range(DEPTH - 1)):
        node = b"\xd8\x1c\x82" + node + b"\xd8\x1d" + cbor.encode(level + 1)
    return b"\xa1" + node + b"\x01"


def a_keystore(path: Path) -> Keystore:
    ks = Keystore.create(path, PIN, name="Paul", kdf=Argon2Params.cheapest())
    with ks.update():
        ks.add_peer(Peer.new("George", os.urandom(32), authenticated=True, method="pin",
                             now=1_800_000_000, extra={"seen": 1}))
        ks.set_setting("lockout.pin", {"failures": [1_800_000_000.5], "streak": 1})
    return ks


def write_shared(ks: Keystore, member: str, change: Callable[[dict[str, Any]], None]) -> None:
    """What a process with the PIN can write: the body with ``change`` made, its member
    ``member`` encoded with value sharing (every array and map marked, one met again a
    reference), the others as pairkit writes them; :data:`HERE` becomes
    :func:`a_shared_key`."""
    data = cbor2.loads(ks._body())
    change(data)
    keys = sorted(data, key=lambda key: (len(cbor.encode(key)), cbor.encode(key)))
    body = cbor.encode_head(5, len(keys)) + b"".join(
        cbor.encode(key) + cbor2.dumps(data[key], canonical=True, value_sharing=key == member)
        for key in keys
    )
    body = body.replace(cbor.encode(HERE), a_shared_key())
    # under a fresh nonce, as every save: a process that has the keystore open reads it again
    header = dataclasses.replace(ks._header, nonce=os.urandom(NONCE_SIZE))
    ks.storage.replace(_seal(header, ks._keys, body))


def in_settings(value: Callable[[], Any]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["settings"]["lockout.pin"]["failures"] = value()
    return change


def in_extra(data: dict[str, Any]) -> None:
    data["peers"][0]["extra"]["seen"] = a_shared_tree()


def in_prekeys(data: dict[str, Any]) -> None:
    data["peers"][0]["their_prekeys"] = [a_shared_tree()]


def key_in_settings(data: dict[str, Any]) -> None:
    data["settings"]["later"] = HERE


CASES = {
    "a-lockout-holding-the-tree": ("settings", in_settings(a_shared_tree), "its settings"),
    "a-peers-extra-holding-the-tree": ("peers", in_extra, "its known peers"),
    "a-peers-prekeys-holding-the-tree": ("peers", in_prekeys, "its known peers"),
    # (the only sharing in the body: the tree numbers its levels from 0)
    "a-setting-keyed-by-the-tree": ("", key_in_settings, "its settings"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_shared_tree_in_the_keystore_is_refused_at_open_in_few_steps(
    tmp_path: Path, steps: Steps, case: str,
) -> None:
    member, change, part = CASES[case]
    path = tmp_path / "keystore.pk"
    write_shared(a_keystore(path), member, change)
    steps.taken = 0
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(path, PIN)
    assert steps.taken <= BUDGET, "the open walked the shared tree"
    text = str(refused.value)
    assert f"the keystore at {path} is damaged: {part}" in text
    assert "CBOR tag 28" in text


def test_a_shared_tree_written_while_a_process_has_the_keystore_open_is_refused_at_its_reload(
    tmp_path: Path, steps: Steps,
) -> None:
    """A host process already running reads the keystore again when another saved it
    (``Keystore.follow``, before each decision): the same refusal, not a walk."""
    path = tmp_path / "keystore.pk"
    running = a_keystore(path)
    write_shared(Keystore.open(path, PIN), "settings", in_settings(a_shared_tree))
    steps.taken = 0
    with pytest.raises(KeystoreCorruptError, match="damaged: its settings"):
        running.follow()
    assert steps.taken <= BUDGET


def test_lock_records_holding_a_shared_tree_do_not_open(tmp_path: Path, steps: Steps) -> None:
    """The lock records beside the keystore (``KEYSTORE.locks``) are sealed under a key the
    keystore keeps and read by cbor2 too: a record keyed by the tree is refused as records
    that do not open (every check stops until ``pairkit host --reset-lockouts``, as for a
    damaged file; docs/security.md rule 7), not hashed 2**depth times."""
    path = tmp_path / "keystore.pk"
    ks = a_keystore(path)
    records = lock_file(ks)
    with records.update() as kept:
        kept.set_setting("lockout.compare", {"failures": [], "streak": 0})
    body = cbor2.dumps({"lockout.compare": {"failures": [], "streak": 0}, "later": HERE},
                       canonical=True).replace(cbor.encode(HERE), a_shared_key())
    nonce = os.urandom(12)
    records._storage.replace(_MAGIC + nonce + records._cipher().encrypt(nonce, body, _AD))
    steps.taken = 0
    with pytest.raises(KeystoreError, match="do not open"):
        lock_file(Keystore.open(path, PIN)).setting("lockout.compare")
    assert steps.taken <= BUDGET


def test_control_a_plain_keystore_with_a_large_integer_opens_as_it_was(tmp_path: Path) -> None:
    """The one tag a plain keystore holds: an integer beyond 64 bits (a bignum, tag 2 or 3, as
    cbor2 writes it) among the settings.  It opens, reads back the same values, and writes the
    same bytes, so the refusal above is of sharing alone."""
    path = tmp_path / "keystore.pk"
    ks = a_keystore(path)
    with ks.update():
        ks.set_setting("app.big", [1 << 70, -(1 << 80), {"deep": [[["x", 0.5, None]]]}])
    again = Keystore.open(path, PIN)
    assert again.setting("app.big")[:2] == (1 << 70, -(1 << 80))
    assert again.setting("lockout.pin")["streak"] == 1
    assert again.peers()[0].extra["seen"] == 1
    assert again._body() == ks._body()


def test_a_setting_nested_thousands_deep_is_refused_at_open_as_damage(tmp_path: Path) -> None:
    """atk19z finding 2 (low): under cbor2 5.x (pyproject allows it), 2,000 nested arrays in a
    setting escaped the open as a raw RecursionError.  The pass before cbor2 refuses nesting
    deeper than pairkit writes: the keystore is refused as damaged, in words."""
    path = tmp_path / "keystore.pk"
    ks = a_keystore(path)
    with ks.update():
        ks.set_setting("later", "x")
    body = ks._body().replace(cbor.encode("x"), b"\x81" * 2_000 + b"\x00")
    header = dataclasses.replace(ks._header, nonce=os.urandom(NONCE_SIZE))
    ks.storage.replace(_seal(header, ks._keys, body))
    with pytest.raises(KeystoreCorruptError) as refused:
        Keystore.open(path, PIN)
    assert str(refused.value) == f"the keystore at {path} has contents this pairkit cannot read"
