"""Reading a small file a person names (a certificate, a key, a token, a PIN), bounded.

A FIFO nobody writes to, /dev/zero or a huge file given where a certificate was expected must
be refused before a byte is read: a plain ``read_bytes`` waits for ever on the first and fills
memory with the others.  A PIN file may be a pipe (``--pin-file <(pass show pairkit)``): it is
read, no further than its limit.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .pairing.errors import ConfigError

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: the largest CA certificate file read (a private CA's PEM, or a small bundle of them)
MAX_CA_FILE = 1024 * 1024
#: the largest enrolment token or factory key file read (each holds at most 64 characters)
MAX_SECRET_FILE = 4096
#: the largest keystore PIN file read (a PIN or passphrase on one line)
MAX_PIN_FILE = 4096
#: the largest config.toml read (pairkit's own settings: a few hundred bytes)
MAX_CONFIG_FILE = 64 * 1024


def read_small_file(path: Path, limit: int, what: str, *, pipes: bool = False,
                    name: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (a file of the user's own: a certificate), at
    most ``limit`` of them.  Opened without waiting (a FIFO nobody writes to), refused unless
    it is a regular file (a FIFO, /dev/zero) or when larger than ``limit``, which is checked
    before a byte is read; the read itself stops past ``limit`` (the file may grow meanwhile).
    ``what`` names what the file should be, for :class:`ConfigError`'s text; ``name`` how the
    file is called there (its path by default).

    ``pipes``: a FIFO or a pipe is read too (process substitution names one as /dev/fd/N), to
    its end but no further than ``limit`` + 1 bytes.  A named FIFO is opened as ``cat`` opens
    it, waiting for its writer (``mkfifo p; pairkit ... --pin-file p & gpg -d pin.gpg > p``):
    a FIFO nobody ever writes to is waited on until Ctrl-C, as a prompt would be.
    """
    shown = name or str(path)
    nonblock = _NONBLOCK
    if pipes:
        with contextlib.suppress(OSError):  # the open below says why, if it fails too
            if stat.S_ISFIFO(os.stat(path).st_mode):
                nonblock = 0  # a named FIFO: wait for its writer
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | _CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {shown}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        try:
            st = os.fstat(fd)
            if pipes and stat.S_ISFIFO(st.st_mode):
                os.set_blocking(fd, True)  # wait for what its writer still has to write
            elif not stat.S_ISREG(st.st_mode):
                kinds = "a regular file or a pipe" if pipes else "a regular file"
                raise ConfigError(f"{shown} is not {kinds} (it should be {what})")
            elif st.st_size > limit:
                raise ConfigError(f"{shown} is too large to be {what}")
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {shown}: {exc.strerror}") from None
    if len(raw) > limit:
        raise ConfigError(f"{shown} is too large to be {what}")
    return raw
