"""The keystore on disk: :class:`Keystore` opened and created by path (DESIGN.md
"Identification").

:class:`pairkit.pairing.keystore.Keystore` seals and unseals and reads no file; this one gives
it a :class:`~pairkit.filestore.FileStorage` for a path (``None``: the default path, under
``$PAIRKIT_HOME`` or the platform's per-user data directory).  It takes a
:class:`~pairkit.pairing.keystore.Storage` too, so one class serves both.  Everything else of
the keystore (records, parameters, errors) is re-exported here, so an application imports from
one place::

    from pairkit.keystore import Keystore, Argon2Params

    ks = Keystore.open("~/.local/share/pairkit/keystore.pk", pin)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .filestore import ENV_HOME, FILE_NAME, FileStorage, default_path
from .pairing import keystore as _core
from .pairing.keystore import (
    DEFAULT_SCRYPT_N,
    MAX_FILE_SIZE,
    MIN_PIN_LENGTH,
    Argon2Params,
    CloudInfo,
    KeystoreNotFoundError,
    MemoryStorage,
    Peer,
    ScryptParams,
    Storage,
    device_id_of,
    fingerprint_of,
    seal_envelope,
)
from .pairing.keystore.seal import DEFAULT_SCRYPT_P, DEFAULT_SCRYPT_R

__all__ = [
    "DEFAULT_SCRYPT_N",
    "ENV_HOME",
    "FILE_NAME",
    "MAX_FILE_SIZE",
    "MIN_PIN_LENGTH",
    "Argon2Params",
    "CloudInfo",
    "FileStorage",
    "Keystore",
    "KeystoreNotFoundError",
    "MemoryStorage",
    "Peer",
    "ScryptParams",
    "Storage",
    "default_path",
    "device_id_of",
    "fingerprint_of",
    "seal_envelope",
]

Where = str | os.PathLike[str] | Storage | None
Rng = Callable[[int], bytes]


def storage_of(where: Where) -> Storage:
    """The storage for ``where``: a :class:`Storage` as it is, a path (or ``None``, the
    :func:`default_path`) as a :class:`FileStorage`."""
    if isinstance(where, Storage):
        return where
    return FileStorage(where)


class Keystore(_core.Keystore):
    """The keystore, opened and created by path; see :class:`pairkit.pairing.keystore.Keystore`
    for everything it does."""

    @classmethod
    def create(  # type: ignore[override]
        cls,
        path: Where,
        pin: str | bytes,
        *,
        name: str,
        rng: Rng = os.urandom,
        kdf: Argon2Params | None = None,
        scrypt_n: int | None = None,
        scrypt_r: int = DEFAULT_SCRYPT_R,
        scrypt_p: int = DEFAULT_SCRYPT_P,
        overwrite: bool = False,
    ) -> Keystore:
        """Make a new identity and write it to ``path`` (``None``: :func:`default_path`; or a
        :class:`Storage`); see :meth:`pairkit.pairing.keystore.Keystore.create`."""
        store = super().create(
            storage_of(path), pin, name=name, rng=rng, kdf=kdf, scrypt_n=scrypt_n,
            scrypt_r=scrypt_r, scrypt_p=scrypt_p, overwrite=overwrite,
        )
        assert isinstance(store, Keystore)
        return store

    @classmethod
    def open(  # type: ignore[override]
        cls, path: Where, pin: str | bytes, *, rng: Rng = os.urandom
    ) -> Keystore:
        """Unlock the keystore at ``path`` (``None``: :func:`default_path`; or a
        :class:`Storage`) with ``pin``; see :meth:`pairkit.pairing.keystore.Keystore.open`."""
        store = super().open(storage_of(path), pin, rng=rng)
        assert isinstance(store, Keystore)
        return store

    @property
    def path(self) -> Path:
        """The keystore file (a :class:`FileStorage`'s path)."""
        storage = self.storage
        if not isinstance(storage, FileStorage):
            raise AttributeError(f"this keystore is kept in {storage.where}, not in a file")
        return storage.path
