"""Keystores opened from several threads at once (a library user's worker threads, the group
demo's ``asyncio.to_thread``): every open ends.

With cryptography 50.0.2 two threads that derive Argon2id with more than one lane at the same
time never return (found in session 17: 4 lanes and 2 threads hang; 1 thread with 4 lanes, or
2 threads with 1 lane, end in milliseconds).  pairkit's keystores use 4 lanes by default, so
the key derivations of its keystores are made one at a time.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pairkit.keystore import Argon2Params, Keystore

PIN = "135790"
#: the default's lanes, at a memory cost small enough for a test
FOUR_LANES = Argon2Params(memory_kib=8 * 1024, iterations=1, lanes=4)


def test_keystores_opened_by_two_threads_at_once_both_open(tmp_path: Path) -> None:
    paths = []
    for name in ("Paul", "George"):
        path = tmp_path / f"{name}.pk"
        Keystore.create(path, PIN, name=name, kdf=FOUR_LANES).save()
        paths.append(path)
    opened: dict[int, str] = {}
    start = threading.Barrier(2)

    def open_one(i: int) -> None:
        start.wait()
        opened[i] = Keystore.open(paths[i], PIN).name

    # daemon: a hung derivation must not keep the test process alive after the test failed
    threads = [threading.Thread(target=open_one, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # for a hang, not a time asserted: each open takes ms
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a keystore open never returned"
    assert opened == {0: "Paul", 1: "George"}
