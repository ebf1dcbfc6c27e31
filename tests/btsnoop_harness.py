"""Reading btsnoop files back (the format of ``--trace``), written here from the format itself.

A btsnoop file (RFC 1761 framing, as Wireshark reads it): 16 bytes of header, ``btsnoop\\0``,
version 1 and datalink type 1002 (HCI UART H4: each packet starts with its type byte), all
big-endian; then records of original length, included length, flags (bit 0: received by the
host, bit 1: command or event), cumulative drops and a 64-bit timestamp in microseconds, each
followed by the packet.  Used by tests/test_hci_trace.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"btsnoop\0"
DATALINK_H4 = 1002
COMMAND, ACL, EVENT = 0x01, 0x02, 0x04
CID_ATT, CID_SIGNALLING, CID_SMP = 0x0004, 0x0005, 0x0006


@dataclass(frozen=True)
class Record:
    received: bool  # controller to host
    packet: bytes  # H4: type byte first

    @property
    def kind(self) -> int:
        return self.packet[0]

    @property
    def opcode(self) -> int | None:
        return int.from_bytes(self.packet[1:3], "little") if self.kind == COMMAND else None

    @property
    def parameters(self) -> bytes:
        """A command's or event's parameters (after opcode/code and length)."""
        if self.kind == COMMAND:
            return self.packet[4:]
        if self.kind == EVENT:
            return self.packet[3:]
        raise ValueError("not a command or an event")

    @property
    def le_subevent(self) -> int | None:
        if self.kind == EVENT and self.packet[1] == 0x3E:
            return self.packet[3]
        return None

    @property
    def l2cap_cid(self) -> int | None:
        """The L2CAP channel of an ACL packet that starts an L2CAP PDU."""
        if self.kind != ACL or len(self.packet) < 9 or (self.packet[2] >> 4) & 0x03 == 0x01:
            return None
        return int.from_bytes(self.packet[7:9], "little")


def read_btsnoop(path: Path) -> list[Record]:
    """Every record of the file; AssertionError if the file is not a whole btsnoop H4 file."""
    data = path.read_bytes()
    assert data[:8] == MAGIC, "no btsnoop identification pattern"
    version, datalink = struct.unpack(">II", data[8:16])
    assert version == 1 and datalink == DATALINK_H4, (version, datalink)
    records, at = [], 16
    while at < len(data):
        assert at + 24 <= len(data), "a truncated record header"
        original, included, flags, _drops, _stamp = struct.unpack(">IIIIQ", data[at:at + 24])
        at += 24
        assert included == original and at + included <= len(data), "a truncated packet"
        packet = data[at:at + included]
        at += included
        assert packet and packet[0] in (COMMAND, ACL, EVENT), f"packet type {packet[:1]!r}"
        is_control = bool(flags & 0x02)
        assert is_control == (packet[0] in (COMMAND, EVENT)), "flags disagree with the type"
        records.append(Record(received=bool(flags & 0x01), packet=packet))
    return records
