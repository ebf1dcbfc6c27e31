"""The btsnoop writer of ``--trace`` (:mod:`transports.tracing` says what and why).

bumble's :class:`~bumble.snoop.BtSnooper` writes the file (header ``btsnoop\\0``, version 1,
datalink 1002, then one record per packet); :class:`RedactingSnooper` hands it each packet with
its keys blanked out.  The file is unbuffered: every record is on disk when the packet has
passed, so a trace of a process that was killed is still whole up to that point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from bumble.snoop import BtSnooper, Snooper

from pairkit.pairing.errors import ConfigError

from ..tracing import redact

__all__ = ["RedactingSnooper", "open_trace"]


class RedactingSnooper(BtSnooper):
    """bumble's btsnoop writer, fed packets with their keys set to zeros."""

    def __init__(self, output: BinaryIO) -> None:
        super().__init__(output)
        self.records = 0

    def snoop(self, hci_packet: bytes, direction: Snooper.Direction) -> None:
        if self.output.closed:
            return
        super().snoop(redact(bytes(hci_packet)), direction)
        self.records += 1

    def close(self) -> None:
        self.output.close()


def open_trace(path: Path) -> RedactingSnooper:
    """A snooper writing to ``path`` (created 0600, or truncated); ConfigError if it cannot be."""
    try:
        # Readable by its owner only: a trace shows addresses, names and timing.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        output = open(fd, "wb", buffering=0)  # closed by RedactingSnooper.close
    except OSError as exc:
        raise ConfigError(f"cannot write the HCI trace {path}: {exc.strerror or exc}") from None
    return RedactingSnooper(output)
