"""The keystore's file: :class:`FileStorage`, the :class:`~pairkit.pairing.keystore.Storage`
the runtime gives the keystore (DESIGN.md "Identification"; the format is documented in
:mod:`pairkit.pairing.keystore`).

Writes are atomic: a temporary file (0600, ``O_EXCL``, ``O_NOFOLLOW``) in the same directory,
fsync, ``os.replace``, fsync the directory, so a crash at any point leaves either the old or the
new file.  The directory is made 0700.  Every pairkit process of the device shares one advisory
lock, ``<keystore>.lock`` (``fcntl.flock``; where there is no ``fcntl``, Windows, there is no
lock).  Failures are :class:`KeystoreError` naming the file, never an ``OSError``.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Final

import platformdirs

from .pairing.errors import KeystoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ENV_HOME", "FILE_NAME", "FileStorage", "default_path"]

FILE_NAME: Final = "keystore.pk"
ENV_HOME: Final = "PAIRKIT_HOME"
_TEMP_SUFFIX = ".tmp"
_HEX_RE = re.compile(r"[0-9a-f]+")
#: the most one read of the file asks for at once (:meth:`FileStorage.read`): a lock records'
#: file (a few hundred bytes) is read in one, a keystore of many peers in a few
_READ_PIECE: Final = 64 * 1024


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the keystore lives: ``$PAIRKIT_HOME/keystore.pk`` when ``PAIRKIT_HOME`` is set (and
    not empty), else ``keystore.pk`` in the platform's per-user data directory for "pairkit"."""
    env = os.environ if env is None else env
    home = env.get(ENV_HOME, "")
    if home:
        return Path(home).expanduser() / FILE_NAME
    return Path(platformdirs.user_data_dir("pairkit", appauthor=False)) / FILE_NAME



class FileStorage:
    """A keystore kept in the file at ``path`` (``None``: :func:`default_path`).

    ``before_replace`` is a test hook: it is called with the temporary file's path once that
    file is written and synced, just before it is renamed over the keystore (the crash test
    kills the process there).  Leftover temporary files from an interrupted save are removed
    after a successful one.  ``what`` names the file in errors (the keystore's lock records are
    kept the same way, :mod:`pairkit.runtime.lockouts`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        before_replace: Callable[[Path], None] | None = None,
        what: str = "keystore",
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.before_replace = before_replace
        #: what the file is, in the words of its errors ("could not save the keystore at ...")
        self.what = what

    def __repr__(self) -> str:
        return f"<FileStorage {self.path}>"

    @property
    def where(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def read(self, limit: int) -> bytes | None:
        """The file's first ``limit + 1`` bytes at most (so that a file longer than ``limit``
        is seen to be), or None when there is none.  Read in pieces of :data:`_READ_PIECE` up
        to the end or to that bound: a single read of ``limit + 1`` bytes made and dropped a
        buffer of the whole limit each time (256 KiB for the lock records' file, read at every
        check of a lock: about 17 us of the 20 of each read; issue 13, session 13)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeystoreError(
                f"could not read the {self.what} at {self.path}: {e.strerror or e}"
            ) from None
        try:
            pieces: list[bytes] = []
            left = limit + 1
            while left > 0:
                piece = os.read(fd, min(left, _READ_PIECE))
                if not piece:
                    break
                pieces.append(piece)
                left -= len(piece)
            return b"".join(pieces)
        except OSError as e:
            raise KeystoreError(
                f"could not read the {self.what} at {self.path}: {e.strerror or e}"
            ) from None
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise KeystoreError(
                f"could not lock the {self.what} at {self.path}: {e.strerror or e}"
            ) from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def replace(self, data: bytes) -> None:
        directory = self.path.parent
        prefix = f".{self.path.name}."
        try:
            if not directory.is_dir():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                # mkdir's mode is filtered by the umask; the keystore's directory is private.
                os.chmod(directory, 0o700)
            tmp, fd = self._open_temp(directory, prefix)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if self.before_replace is not None:
                    self.before_replace(tmp)
                os.replace(tmp, self.path)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_directory(directory)
        except OSError as e:
            raise KeystoreError(
                f"could not save the {self.what} at {self.path}: {e.strerror or e}"
            ) from None
        # Temporary files left by a save that was killed are garbage: the rename never happened.
        with suppress(OSError):
            for leftover in directory.iterdir():
                middle = leftover.name[len(prefix) : -len(_TEMP_SUFFIX)]
                if (
                    leftover.name.startswith(prefix)
                    and leftover.name.endswith(_TEMP_SUFFIX)
                    and len(middle) == 16
                    and _HEX_RE.fullmatch(middle)
                ):
                    with suppress(OSError):
                        leftover.unlink()

    @staticmethod
    def _open_temp(directory: Path, prefix: str) -> tuple[Path, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(8):
            tmp = directory / f"{prefix}{os.urandom(8).hex()}{_TEMP_SUFFIX}"
            try:
                return tmp, os.open(tmp, flags, stat.S_IRUSR | stat.S_IWUSR)
            except FileExistsError:
                continue
        raise KeystoreError(f"could not create a temporary file in {directory}")


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); platforms that cannot open a directory skip it.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
