"""``pairkit forget`` of a member is one change of the keystore, never half of one.

Forgetting a member that was given this device's address key (``Membership.irk``) must renew
the key: otherwise the forgotten device keeps telling this device's resolvable private
addresses apart from everyone's, for as long as it lives (docs/security.md "Recognising a host
across addresses").  Until session 20 the key was renewed in a second keystore save after the
save that forgot the peer; a process ended between the two (Ctrl-C, a full disk, a power cut)
left the peer forgotten, no longer listed by ``pairkit peers``, and the old key in place: the
owner believed it done, and nothing would ever renew it.

Here the storage's second write fails (as a full disk or a killed process would leave it):
whatever is on disk afterwards must be all of ``forget`` or none of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pairkit.pairing.keystore import Keystore, Peer
from pairkit.peers import forget
from pairkit.presence import identity_resolving_key
from tests.ble_harness import make_keystore, reopen


class _DiskFull(OSError):
    pass


def _paul_with_a_member(tmp_path: Path) -> tuple[Keystore, bytes]:
    """Paul's keystore with a member that was given his address key; and that key."""
    paul = make_keystore(tmp_path / "paul" / "keystore.pk", "Paul's phone")
    old_key = identity_resolving_key(paul)
    with paul.update():
        paul.add_peer(Peer.new("Paul's TV", os.urandom(32), now=1,
                               extra={"granted": "member", "irk_given": True}))
    return paul, old_key


def _count_writes(ks: Keystore, monkeypatch: pytest.MonkeyPatch,
                  fail_from: int | None = None) -> list[int]:
    """The keystore's writes from now on (their sizes); the ``fail_from``-th and later fail."""
    storage = ks._storage
    writes: list[int] = []
    real_replace = storage.replace

    def replace(data: bytes) -> None:
        writes.append(len(data))
        if fail_from is not None and len(writes) >= fail_from:
            raise _DiskFull(28, "No space left on device")
        real_replace(data)

    monkeypatch.setattr(storage, "replace", replace)
    return writes


def test_a_forget_that_fails_half_way_leaves_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paul, old_key = _paul_with_a_member(tmp_path)
    _count_writes(paul, monkeypatch, fail_from=2)  # the disk fills (or the process ends)
    try:
        forget(paul, "Paul's TV")
    except _DiskFull:
        pass
    monkeypatch.undo()
    after = reopen(paul)
    forgotten = not any(p.name == "Paul's TV" for p in after.peers())
    renewed = identity_resolving_key(after) != old_key
    assert (forgotten, renewed) in {(True, True), (False, False)}, (
        f"half a forget on disk: peer forgotten {forgotten}, address key renewed {renewed}")


def test_forget_forgets_the_member_and_renews_its_key_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paul, old_key = _paul_with_a_member(tmp_path)
    writes = _count_writes(paul, monkeypatch)
    done = forget(paul, "Paul's TV")
    assert done.address_key_renewed
    assert len(writes) == 1
    after = reopen(paul)
    assert not any(p.name == "Paul's TV" for p in after.peers())
    assert identity_resolving_key(after) != old_key
