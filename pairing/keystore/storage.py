"""Where a sealed keystore's bytes live: the small interface the keystore writes through.

The keystore itself (:class:`~pairkit.pairing.keystore.Keystore`) reads no file and takes no
lock: it seals and unseals bytes and hands them to a :class:`Storage`.  The runtime provides the
file one (:class:`pairkit.filestore.FileStorage`: atomic replace, fsync, an advisory lock shared
by every pairkit process of the device); :class:`MemoryStorage` keeps them in memory, for tests
and for applications that keep the sealed bytes somewhere of their own (a secure element's
storage, a database row).

What a storage promises (DESIGN.md "Identification": the keystore loses nothing):

* :meth:`Storage.replace` is atomic: after a crash at any point, :meth:`Storage.read` returns
  either the old bytes or the new ones, never a mixture.
* :meth:`Storage.lock` is exclusive among everyone who shares the storage, so that
  :meth:`Keystore.update` can reload, change and save without losing another writer's change.
* Errors are :class:`~pairkit.pairing.errors.KeystoreError` with a message a person can act on
  (naming :attr:`Storage.where`), never an ``OSError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from ..errors import KeystoreError

__all__ = ["MemoryStorage", "Storage"]


@runtime_checkable
class Storage(Protocol):
    """The sealed bytes of one keystore, wherever they are kept."""

    @property
    def where(self) -> str:
        """Where the keystore is, for messages (a path, or a description)."""
        ...

    def exists(self) -> bool:
        """Whether something (a keystore, or anything else) is stored there already."""
        ...

    def read(self, limit: int) -> bytes | None:
        """The stored bytes, or ``None`` when there are none.  At most ``limit + 1`` bytes are
        returned, so the caller can tell an over-long file from one of exactly ``limit``."""
        ...

    def replace(self, data: bytes) -> None:
        """Store ``data`` in place of what was there, atomically."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock among all users of this storage, held for the ``with`` block."""
        ...


class MemoryStorage:
    """A :class:`Storage` in memory: for tests, and for callers that keep the sealed bytes
    themselves (read them with :attr:`data`, which is always a complete sealed keystore)."""

    def __init__(self, data: bytes | None = None, *, where: str = "memory") -> None:
        self.data: bytes | None = data
        self._where = where
        self._locked = False

    def __repr__(self) -> str:
        size = "empty" if self.data is None else f"{len(self.data)} bytes"
        return f"<MemoryStorage {self._where!r}: {size}>"

    @property
    def where(self) -> str:
        return self._where

    def exists(self) -> bool:
        return self.data is not None

    def read(self, limit: int) -> bytes | None:
        return None if self.data is None else self.data[: limit + 1]

    def replace(self, data: bytes) -> None:
        self.data = bytes(data)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        # One object, one owner at a time: a nested update would lose the outer one's changes.
        if self._locked:
            raise KeystoreError(f"the keystore at {self._where} is already being updated")
        self._locked = True
        try:
            yield
        finally:
            self._locked = False
