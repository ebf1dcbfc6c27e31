"""Group commit (issue 13): keystore changes that are ready together share one update (one
reload under the lock, one seal, write and fsync), and none is weakened by the sharing.

What could go wrong, and is checked here: a caller told "stored" before its change is on the
storage; one caller's refused change taking the others down with it, or leaving half of itself
behind; a save that fails for the batch (a full keystore) failing changes that fit on their
own; another process's change being written over; and a waiter left hanging.  The crash test
with a real process killed is tests/test_keystore_crash_confirmed.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pairkit.keystore import (
    Argon2Params,
    GroupCommit,
    Keystore,
    MemoryStorage,
    Peer,
    device_id_of,
)
from pairkit.pairing.errors import KeystoreError, RefusedError

PIN = "group-commit-pin"


def _peer(i: int) -> Peer:
    public = os.urandom(32)
    return Peer(id=device_id_of(public), name=f"peer {i}", static_public=public,
                signing_public=os.urandom(32), authenticated=True, method="compare",
                first_seen=1.0, last_seen=1.0)


class _WatchedStorage(MemoryStorage):
    """A storage that records each write (and can refuse large ones, as a full disk would)."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.limit = limit

    def replace(self, data: bytes) -> None:
        if self.limit is not None and len(data) > self.limit:
            raise KeystoreError("the keystore is full")
        super().replace(data)
        self.writes.append(bytes(data))


def _store(storage: MemoryStorage) -> Keystore:
    return Keystore.create(storage, PIN, name="host", kdf=Argon2Params.cheapest())


def _stored_ids(storage: MemoryStorage) -> set[str]:
    return {p.id for p in Keystore.open(MemoryStorage(storage.data), PIN).peers()}


def test_changes_ready_together_share_one_write_and_each_is_stored_when_told() -> None:
    storage = _WatchedStorage()
    ks = _store(storage)
    commit: GroupCommit[str] = GroupCommit(ks)
    peers = [_peer(i) for i in range(20)]
    told: list[set[str]] = []

    async def one(p: Peer) -> None:
        def change(k: Keystore) -> str:
            k.add_peer(p)
            return p.id

        assert await commit.apply(change) == p.id
        told.append(_stored_ids(storage))  # on the storage by the time we are told
        assert p.id in told[-1]

    async def main() -> None:
        await asyncio.gather(*(one(p) for p in peers))

    writes_before = len(storage.writes)
    asyncio.run(main())
    assert _stored_ids(storage) == {p.id for p in peers}
    assert commit.changes == 20
    assert len(storage.writes) - writes_before == commit.batches < 20


def test_a_refused_change_is_undone_alone_and_its_caller_gets_the_error() -> None:
    storage = _WatchedStorage()
    ks = _store(storage)
    commit: GroupCommit[None] = GroupCommit(ks)
    good, bad = _peer(1), _peer(2)

    def add_then_refuse(k: Keystore) -> None:
        k.add_peer(bad)  # half done, then refused: nothing of it may stay
        raise RefusedError("withdrawn meanwhile")

    async def main() -> list[object]:
        return await asyncio.gather(commit.apply(lambda k: k.add_peer(good)),
                                    commit.apply(add_then_refuse), return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None and isinstance(results[1], RefusedError)
    assert _stored_ids(storage) == {good.id}
    assert ks.peer_by_id(bad.id) is None


def test_a_batch_too_large_to_save_fails_only_the_change_that_does_not_fit() -> None:
    storage = _WatchedStorage()
    ks = _store(storage)
    size = len(storage.data or b"")
    commit: GroupCommit[None] = GroupCommit(ks)
    peers = [_peer(i) for i in range(3)]
    # room for the first two peers (and the array's longer head), not for the third
    storage.limit = size + len(peers[0]._encoded()) + len(peers[1]._encoded()) + 8

    async def main() -> list[object]:
        return await asyncio.gather(*(commit.apply(lambda k, p=p: k.add_peer(p)) for p in peers),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert results[:2] == [None, None] and isinstance(results[2], KeystoreError)
    assert _stored_ids(storage) == {peers[0].id, peers[1].id}


def test_another_process_saving_meanwhile_is_not_written_over(tmp_path: Path) -> None:
    path = tmp_path / "host.pk"
    ks = Keystore.create(path, PIN, name="host", kdf=Argon2Params.cheapest())
    other = Keystore.open(path, PIN)  # another pairkit process's view of the same file
    commit: GroupCommit[None] = GroupCommit(ks)
    mine, theirs = _peer(1), _peer(2)

    async def main() -> None:
        waiter = asyncio.ensure_future(commit.apply(lambda k: k.add_peer(mine)))
        with other.update():  # saved while the batch is gathering
            other.add_peer(theirs)
        await waiter

    asyncio.run(main())
    assert {p.id for p in Keystore.open(path, PIN).peers()} == {mine.id, theirs.id}


def test_a_failed_save_reaches_every_waiter_and_stores_nothing() -> None:
    storage = _WatchedStorage()
    ks = _store(storage)
    storage.limit = 0  # every write fails
    commit: GroupCommit[None] = GroupCommit(ks)
    peers = [_peer(i) for i in range(4)]

    async def main() -> list[object]:
        async with asyncio.timeout(30):
            return await asyncio.gather(
                *(commit.apply(lambda k, p=p: k.add_peer(p)) for p in peers),
                return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, KeystoreError) for r in results)
    assert _stored_ids(storage) == set() and ks.peers() == ()


def test_finish_runs_once_per_batch_with_what_the_changes_returned() -> None:
    ks = _store(_WatchedStorage())
    seen: list[list[str]] = []
    commit: GroupCommit[str] = GroupCommit(ks, lambda _k, done: seen.append(list(done)))
    peers = [_peer(i) for i in range(5)]

    async def main() -> None:
        def change(k: Keystore, p: Peer) -> str:
            k.add_peer(p)
            return p.id

        await asyncio.gather(*(commit.apply(lambda k, p=p: change(k, p)) for p in peers))

    asyncio.run(main())
    assert sorted(i for batch in seen for i in batch) == sorted(p.id for p in peers)
    assert len(seen) == commit.batches


@pytest.mark.parametrize("loops", [2])
def test_a_keystore_used_from_a_new_event_loop_still_commits(loops: int) -> None:
    ks = _store(_WatchedStorage())
    commit: GroupCommit[None] = GroupCommit(ks)
    for i in range(loops):
        p = _peer(i)
        asyncio.run(commit.apply(lambda k, p=p: k.add_peer(p)))
        assert ks.peer_by_id(p.id) is not None


def test_the_registry_of_group_commits_does_not_keep_a_keystore_alive() -> None:
    import gc
    import weakref

    from pairkit import peers

    ks = _store(_WatchedStorage())
    peers._COMMITTERS[ks] = GroupCommit(ks)
    gone = weakref.ref(ks)
    del ks
    gc.collect()
    assert gone() is None
