"""A host's lock records in a real keystore file (runtime/lockouts.py; docs/security.md, rule 7,
"The lock outlives the host process"): the keystore, a host process's side on it, and a disk
that fills up.  Used by tests/test_lockouts.py and tests/attacks/test_attack_lockout_*.py."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.keystore import Argon2Params
from pairkit.pairing.methods import PairingConfig, PinPolicy
from pairkit.session import HostSide

KS_PIN = "lockout-test-7391"
POLICY = PinPolicy()


@pytest.fixture
def ks_path(tmp_path: Path) -> Path:
    """Paul's keystore file, made cheaply (tests only)."""
    path = tmp_path / "keystore.pk"
    Keystore.create(path, KS_PIN, name="Paul", kdf=Argon2Params.cheapest())
    return path


def host(path: Path, clock: Any, config: PairingConfig | None = None) -> HostSide:
    """A host process's side on the keystore at ``path`` (a keystore object of its own)."""
    return HostSide.of(Keystore.open(path, KS_PIN), config or PairingConfig(), transport="tcp",
                       pin_policy=POLICY, clock=clock)


class DiskFull:
    """The keystore's disk: full while ``full`` (each save fails as ``ENOSPC`` does, in the real
    FileStorage's save, after its temporary file was written); a ``before_replace`` hook."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def __call__(self, tmp: Path) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
