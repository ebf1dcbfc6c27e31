"""HCI traces (issue 15 item 9): where ``--trace FILE`` writes, and what is blanked out of it.

A trace is every HCI packet between a bumble host and its controller, in the btsnoop format
(RFC 1761 framing; datalink 1002, HCI UART H4) that Wireshark and ``btmon -r`` open.  The
writer is bumble's :class:`bumble.snoop.BtSnooper` (:mod:`transports.ble.trace`); this module
has no bumble import, so the CLI can take the option without loading bumble.

**Keys are blanked.**  The HCI sees link-layer secrets in clear even when the air is encrypted:
the long-term key given to the controller (LE Enable Encryption, LE Long Term Key Request
Reply: Core 5.4 Vol 4 Part E §7.8.24, §7.8.25), keys for the controller's AES (LE Encrypt,
§7.8.22), identity resolving keys (LE Add Device To Resolving List, §7.8.38), the Diffie-Hellman
key (LE Generate DHKey Complete, §7.7.65.9) and the keys SMP distributes over the link (Vol 3
Part H §3.6: Encryption Information, Central Identification, Identity Information, Signing
Information).  :func:`redact` overwrites those bytes with zeros, so a trace attached to a bug
report does not unlock the link it recorded or identify the device afterwards.  pairkit's own
messages travel inside its Noise channel and appear as ciphertext.

One process may open several transports (``pairkit demo``, ``group relay``): the first writes
to FILE, the next to ``FILE-2``, ``FILE-3``... (before the suffix).
"""

from __future__ import annotations

import threading
from pathlib import Path

__all__ = ["claim_trace_path", "default_trace", "redact", "set_default_trace"]

_lock = threading.Lock()
_default: Path | None = None
_claimed: set[Path] = set()

#: HCI command opcode (OGF 0x08: LE) -> (start, end) of a secret in its parameters
_SECRET_COMMANDS: dict[int, tuple[int, int]] = {
    0x2017: (0, 16),  # LE Encrypt: Key
    0x2019: (12, 28),  # LE Enable Encryption: Connection_Handle, Random, EDIV, Long_Term_Key
    0x201A: (2, 18),  # LE Long Term Key Request Reply: Connection_Handle, Long_Term_Key
    0x2027: (7, 39),  # LE Add Device To Resolving List: type, address, Peer_IRK, Local_IRK
}
#: SMP codes (Vol 3 Part H §3.6) whose PDU is a secret after the code byte
_SECRET_SMP = {0x06, 0x07, 0x08, 0x0A}
_SMP_CID = 0x0006
_LE_META = 0x3E
_DHKEY_COMPLETE = 0x09


def set_default_trace(path: str | Path | None) -> None:
    """Trace every bumble transport this process opens from now on to ``path`` (None: off)."""
    global _default
    with _lock:
        _default = Path(path) if path is not None else None
        _claimed.clear()


def default_trace() -> Path | None:
    return _default


def claim_trace_path(path: str | Path | None = None) -> Path | None:
    """The file the next transport traces to: ``path``, else the default; a path already
    claimed by this process gets ``-2``, ``-3``... before its suffix."""
    with _lock:
        base = Path(path) if path is not None else _default
        if base is None:
            return None
        candidate, n = base, 1
        while candidate in _claimed:
            n += 1
            candidate = base.with_name(f"{base.stem}-{n}{base.suffix}")
        _claimed.add(candidate)
        return candidate


def redact(packet: bytes) -> bytes:
    """``packet`` (H4: type byte, then the HCI packet) with every key in it set to zeros."""
    if len(packet) < 2:
        return packet
    kind = packet[0]
    if kind == 0x01 and len(packet) >= 4:  # command: opcode (2), length (1), parameters
        span = _SECRET_COMMANDS.get(int.from_bytes(packet[1:3], "little"))
        if span is not None:
            return _zero(packet, 4 + span[0], 4 + span[1])
    elif kind == 0x04 and len(packet) >= 5:  # event: code, length, parameters
        if packet[1] == _LE_META and packet[3] == _DHKEY_COMPLETE:
            return _zero(packet, 5, 5 + 32)  # subevent, status, DHKey
    elif kind == 0x02 and len(packet) >= 10:  # ACL: handle+flags (2), length (2), L2CAP
        boundary = (packet[2] >> 4) & 0x03
        if boundary != 0x01:  # the first fragment carries the L2CAP header
            cid = int.from_bytes(packet[7:9], "little")
            if cid == _SMP_CID and packet[9] in _SECRET_SMP:
                return _zero(packet, 10, len(packet))
    return packet


def _zero(packet: bytes, start: int, end: int) -> bytes:
    end = min(end, len(packet))
    if start >= end:
        return packet
    return packet[:start] + bytes(end - start) + packet[end:]
