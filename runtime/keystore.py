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

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from .filestore import ENV_HOME, FILE_NAME, FileStorage, default_path
from .pairing import keystore as _core
from .pairing.errors import KeystoreError
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
from .pairing.keystore.seal import DEFAULT_SCRYPT_P, DEFAULT_SCRYPT_R, Kdf, _Keys

__all__ = [
    "DEFAULT_SCRYPT_N",
    "ENV_HOME",
    "FILE_NAME",
    "MAX_FILE_SIZE",
    "MIN_PIN_LENGTH",
    "Argon2Params",
    "CloudInfo",
    "FileStorage",
    "GroupCommit",
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
T = TypeVar("T")


def storage_of(where: Where) -> Storage:
    """The storage for ``where``: a :class:`Storage` as it is, a path (or ``None``, the
    :func:`default_path`) as a :class:`FileStorage`."""
    if isinstance(where, Storage):
        return where
    return FileStorage(where)


#: Held around each keystore key derivation in this process, and only around it (never
#: around file I/O or a file lock, so it cannot close a cycle with them).  A workaround:
#: with cryptography 50.0.2, two threads that derive Argon2id with more than one lane at the
#: same time never return (found in session 17; keystores use 4 lanes by default, so two
#: keystores opened from two threads hung).  scrypt, and one lane, do not hang; every
#: derivation is serialised all the same (simpler; a derivation is rare: create, open, a PIN
#: change), so two threads' derivations take twice as long as one's instead of as long.
_KDF_LOCK = threading.Lock()


def _new_kdf_lock() -> None:
    # A child forked while another thread derived must not inherit the lock held for ever.
    global _KDF_LOCK
    _KDF_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_kdf_lock)


def _derive_one_at_a_time(pin: bytes, salt: bytes, kdf: Kdf) -> _Keys:
    """The pure core's derivation, under :data:`_KDF_LOCK`: one at a time in this process."""
    with _KDF_LOCK:
        return _core.Keystore._derive(pin, salt, kdf)


class Keystore(_core.Keystore):
    """The keystore, opened and created by path; see :class:`pairkit.pairing.keystore.Keystore`
    for everything it does.

    Its key derivations (create, open, the scrypt-to-Argon2id upgrade at open, change of PIN)
    are made one at a time in the process, so that keystores may be opened and created from
    several threads at once (a workaround for cryptography 50.0.2, whose multi-lane Argon2id
    never returns when two threads run it together; see :data:`_KDF_LOCK`)."""

    _derive = staticmethod(_derive_one_at_a_time)

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


class GroupCommit(Generic[T]):
    """Changes to one keystore that are ready at the same time, saved together: one
    :meth:`~pairkit.pairing.keystore.Keystore.update` (one reload under the file lock, one seal,
    write and fsync) for all of them (issue 13: a host with 1,000 guests pairing at once).

    :meth:`apply` returns only once its change is stored durably (the update's save returned:
    the file was written, synced and renamed into place) or has failed: what the caller does
    next (confirm a pairing to its user or its peer) comes after the write, exactly as with an
    update of its own.  Each change runs against the keystore reloaded under the lock, in the
    order they came; one that raises is undone (the keystore's contents as before it) and its
    caller gets the error, the others are saved.  ``finish`` runs once per batch, after its
    changes, with what they returned (tidying that need not run once per change).  When the
    save itself fails (the disk, a keystore grown past its limit), each change of the batch is
    tried again in an update of its own, so the one that does not fit fails alone, as it would
    have without the batching.

    Changes are taken in batches on the running event loop: a change handed in while a batch
    is being written waits for the next one, and a batch starts one turn of the loop after its
    first change came (so that everything finishing in that turn joins it).  Nothing is ever
    held back longer than that: there is no timer.
    """

    def __init__(
        self, keystore: _core.Keystore,
        finish: Callable[[_core.Keystore, Sequence[T]], None] | None = None,
    ) -> None:
        # weakly: a registry keyed by the keystore (runtime/peers.py) must not keep it alive
        self._keystore = weakref.ref(keystore)
        self._finish = finish
        self._pending: list[tuple[Callable[[_core.Keystore], T], asyncio.Future[T]]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: batches written and changes saved so far (for benches and tests)
        self.batches = 0
        self.changes = 0

    def __repr__(self) -> str:
        return f"<GroupCommit {self._keystore()!r}: {len(self._pending)} waiting>"

    @property
    def keystore(self) -> _core.Keystore:
        """The keystore the changes go to."""
        ks = self._keystore()
        if ks is None:
            raise KeystoreError("the keystore of this group commit is gone")
        return ks

    async def apply(self, change: Callable[[_core.Keystore], T]) -> T:
        """Run ``change`` on the keystore with the others of its batch and save; its result,
        once stored durably (or its error, or the save's).  ``change`` runs inside the batch's
        update: it changes the keystore it is given and never calls ``update`` itself."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (the old one's batches died with it)
            self._loop, self._pending, self._task = loop, [], None
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((change, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        batch: list[tuple[Callable[[_core.Keystore], T], asyncio.Future[T]]] = []
        try:
            while self._pending:
                await asyncio.sleep(0)  # what else finishes in this turn joins the batch
                batch = [(c, f) for c, f in self._pending if not f.done()]
                self._pending = []
                if batch:
                    self._commit(batch)
                batch = []
        except BaseException as exc:  # cancelled with the loop, or worse: nobody waits for ever
            for _, future in batch + self._pending:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else asyncio.CancelledError())
            self._pending = []
            raise

    def _commit(self, batch: list[tuple[Callable[[_core.Keystore], T],
                                        asyncio.Future[T]]]) -> None:
        outcomes: list[tuple[asyncio.Future[T], bool, Any]] = []
        try:
            ks = self.keystore
            with ks.update():
                for change, future in batch:
                    before = ks._contents()
                    try:
                        outcomes.append((future, True, change(ks)))
                    except Exception as exc:
                        ks._restore(before)  # this change only is undone
                        outcomes.append((future, False, exc))
                if self._finish is not None:
                    self._finish(ks, [value for _, ok, value in outcomes if ok])
        except Exception as exc:
            if len(batch) > 1:
                for one in batch:  # each alone: only what cannot be saved fails
                    self._commit([one])
                return
            outcomes = [(future, False, exc) for _, future in batch]
        else:
            self.batches += 1
            self.changes += sum(ok for _, ok, _ in outcomes)
        for future, ok, value in outcomes:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
