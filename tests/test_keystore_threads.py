"""Keystores opened, created, re-sealed under a new PIN or upgraded from scrypt from several
threads at once (a library user's worker threads, the group demo's ``asyncio.to_thread``):
every one must end.

With cryptography 50.0.2 two threads that derive Argon2id with more than one lane at the same
time never return (found in session 17: 4 lanes and 2 threads hang; 1 thread with 4 lanes, or
2 threads with 1 lane, end in milliseconds).  pairkit's keystores use 4 lanes by default.  The
pure core derives through the hook ``Keystore._derive``; the runtime's ``pairkit.keystore``
Keystore makes those derivations one at a time (a lock, which pairing/ may not take).  The
threads run in a child process, killed at its deadline, so a hang leaves nothing behind in the
test run.  A hang is likely, not certain, so a path that bypassed the lock is also caught
deterministically: :func:`test_every_derivation_goes_through_the_hook`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from pairkit.keystore import DEFAULT_SCRYPT_N, Argon2Params, Keystore, MemoryStorage, ScryptParams
from pairkit.pairing.keystore import Keystore as CoreKeystore
from pairkit.pairing.keystore.seal import Kdf, _derive_keys, _Keys

ROOT = Path(__file__).resolve().parents[1]
PIN = "135790"
NEW_PIN = "097531"
#: the default's lanes, at a memory cost small enough for a test
FOUR_LANES = Argon2Params(memory_kib=8 * 1024, iterations=1, lanes=4)
#: the child's deadline: its derivations take milliseconds, the upgrade's (the default Argon2id)
#: a fraction of a second each; a hang never ends
DEADLINE = 30

#: rounds of two derivations at once: one round of two unguarded 4-lane derivations hung in 9 of
#: 10 runs (session 18), so a path that bypassed the lock passes all rounds about once in 1,000
ROUNDS = 3

#: argv: what (create, open, open-and-save, change_pin), then 2 * ROUNDS keystore paths.  In
#: each round two threads, started together, do ``what`` on a keystore each (round r: paths 2r
#: and 2r + 1); prints the keystores' names, one a line, in the order of the paths.
TWO_THREADS = f"""
import sys, threading
from pairkit.keystore import Argon2Params, Keystore
four_lanes = Argon2Params(memory_kib=8 * 1024, iterations=1, lanes=4)
what, paths = sys.argv[1], sys.argv[2:]
opened = [Keystore.open(path, {PIN!r}) for path in paths] if what == "change_pin" else []
names = {{}}
def run(i, start):
    start.wait()
    if what == "create":
        ks = Keystore.create(paths[i], {PIN!r}, name=f"device {{i}}", kdf=four_lanes)
    elif what == "change_pin":
        ks = opened[i]
        ks.change_pin({NEW_PIN!r}, kdf=four_lanes)
    else:
        ks = Keystore.open(paths[i], {PIN!r})
        if what == "open-and-save":
            ks.save()
    names[i] = ks.name
for first in range(0, len(paths), 2):
    start = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(i, start)) for i in (first, first + 1)]
    for t in threads: t.start()
    for t in threads: t.join()
for i in range(len(paths)): print(names[i])
"""


def in_two_threads(what: str, paths: list[Path]) -> list[str]:
    """Run ``what`` on the keystores, two threads at once, in a child process; the names it
    printed.  Fails the test if the child has not ended by :data:`DEADLINE`."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", TWO_THREADS, what, *map(str, paths)],
            capture_output=True, text=True, timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"two keystore derivations at once ({what}) never returned")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def keystore_paths(tmp_path: Path) -> list[Path]:
    return [tmp_path / f"{i}.pk" for i in range(2 * ROUNDS)]


def test_keystores_opened_by_two_threads_at_once_both_open(tmp_path: Path) -> None:
    paths = keystore_paths(tmp_path)
    names = [f"device {i}" for i in range(len(paths))]
    for name, path in zip(names, paths, strict=True):
        Keystore.create(path, PIN, name=name, kdf=FOUR_LANES)
    assert in_two_threads("open", paths) == names


def test_keystores_created_by_two_threads_at_once_are_all_created(tmp_path: Path) -> None:
    paths = keystore_paths(tmp_path)
    names = [f"device {i}" for i in range(len(paths))]
    assert in_two_threads("create", paths) == names
    for name, path in zip(names, paths, strict=True):
        ks = Keystore.open(path, PIN)
        assert (ks.name, ks.kdf) == (name, FOUR_LANES)


def test_pins_changed_by_two_threads_at_once_all_change(tmp_path: Path) -> None:
    paths = keystore_paths(tmp_path)
    names = [f"device {i}" for i in range(len(paths))]
    for name, path in zip(names, paths, strict=True):
        Keystore.create(path, PIN, name=name, kdf=Argon2Params.cheapest())
    assert in_two_threads("change_pin", paths) == names
    for name, path in zip(names, paths, strict=True):
        ks = Keystore.open(path, NEW_PIN)
        assert (ks.name, ks.kdf) == (name, FOUR_LANES)


def test_scrypt_keystores_upgraded_by_two_threads_at_once_all_upgrade(tmp_path: Path) -> None:
    """An earlier version's scrypt keystore at the default cost derives the default Argon2id
    (4 lanes) when it is opened, and is re-sealed with it at its next write."""
    paths = keystore_paths(tmp_path)
    names = [f"device {i}" for i in range(len(paths))]
    for name, path in zip(names, paths, strict=True):
        Keystore.create(path, PIN, name=name, scrypt_n=DEFAULT_SCRYPT_N)
    assert in_two_threads("open-and-save", paths) == names
    for path in paths:
        assert b"argon2id" in path.read_bytes()[:64] and b"scrypt" not in path.read_bytes()[:64]
    ks = Keystore.open(paths[-1], PIN)  # one is enough to show the re-seal opens
    assert (ks.name, ks.kdf) == (names[-1], Argon2Params())


class Recording(Keystore):
    """The runtime's keystore, noting the cost of every derivation its hook is asked for."""

    derived: ClassVar[list[Kdf]] = []

    @staticmethod
    def _derive(pin: bytes, salt: bytes, kdf: Kdf) -> _Keys:
        Recording.derived.append(kdf)
        return Keystore._derive(pin, salt, kdf)


def test_every_derivation_goes_through_the_hook(tmp_path: Path) -> None:
    """create, open, the scrypt-to-Argon2id upgrade at open, and change_pin each derive through
    ``Keystore._derive`` (one that did not would not take the runtime's lock), and only there:
    the keystore they make opens as usual."""
    cheapest, old = Argon2Params.cheapest(), ScryptParams(n=2**10)
    Recording.derived = []
    ks = Recording.create(tmp_path / "a.pk", PIN, name="Paul", kdf=cheapest)
    assert Recording.derived == [cheapest]
    Recording.open(tmp_path / "a.pk", PIN)
    assert Recording.derived == [cheapest] * 2
    ks.change_pin(NEW_PIN, kdf=FOUR_LANES)
    assert Recording.derived == [cheapest] * 2 + [FOUR_LANES]
    Recording.create(tmp_path / "b.pk", PIN, name="George", scrypt_n=old.n)
    Recording.open(tmp_path / "b.pk", PIN)  # the scrypt seal, then the upgrade's Argon2id
    assert Recording.derived == [cheapest] * 2 + [FOUR_LANES] + [old, old, cheapest]
    assert Keystore.open(tmp_path / "a.pk", NEW_PIN).name == "Paul"


def test_the_pure_core_still_derives_the_keys_it_always_did(tmp_path: Path) -> None:
    """The pure core's default derivation opens tests/vectors/keystore-v1.pk (a known answer:
    tests/vectors/README.md), and the runtime's one-at-a-time derivation gives the same keys
    for Argon2id at 1 and 4 lanes and for scrypt."""
    frozen = (ROOT / "tests" / "vectors" / "keystore-v1.pk").read_bytes()
    core = CoreKeystore.open(MemoryStorage(frozen), "frozen-test-pin")
    assert (core.name, core.device_id) == ("Frozen device", "16c71363d958f603490ec56207253cda")
    runtime = Keystore.open(MemoryStorage(frozen), "frozen-test-pin")
    assert runtime._keys == core._keys
    for kdf in (Argon2Params.cheapest(), FOUR_LANES, ScryptParams(n=2**10)):
        assert Keystore._derive(b"a pin", bytes(16), kdf) == _derive_keys(b"a pin", bytes(16), kdf)
        assert CoreKeystore._derive(b"a pin", bytes(16), kdf) == _derive_keys(
            b"a pin", bytes(16), kdf)


#: a process holds the derivation lock (as a thread deriving would) when it forks; the forked
#: child derives (creates a keystore), which must not wait for a lock nobody will release
FORK_WHILE_DERIVING = """
import os
import pairkit.keystore as runtime
from pairkit.keystore import Argon2Params, Keystore, MemoryStorage
with runtime._KDF_LOCK:
    pid = os.fork()
    if pid == 0:
        Keystore.create(MemoryStorage(), "135790", name="child", kdf=Argon2Params.cheapest())
        os._exit(0)
    _, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_during_a_derivation_can_derive() -> None:
    # a session of its own, so that a hang is killed with the forked child (not left behind)
    child = subprocess.Popen([sys.executable, "-c", FORK_WHILE_DERIVING], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        out, err = child.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("a child forked while the derivation lock was held never derived")
    assert (child.returncode, out.strip()) == (0, "0"), err
