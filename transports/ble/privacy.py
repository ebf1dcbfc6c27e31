"""Resolvable private addresses (issue 15 item 1; Core 5.4 Vol 6 Part B §1.3.2.2, §1.3.2.3).

A resolvable private address (RPA) is 48 bits, most significant first: ``prand`` (24 bits: the
two most significant are ``01``, the other 22 random and neither all 0 nor all 1), then
``hash = ah(IRK, prand)`` (24 bits).  Whoever holds the identity resolving key (IRK) can tell
that two RPAs belong to one device; anyone else sees unrelated random addresses.

``ah`` is Vol 3 Part H §2.2.2: ``e(k, r')`` modulo 2^24, ``r'`` being ``r`` padded with 104
zero bits in front and ``e`` AES-128 (Vol 3 Part H §2.2.1), here from ``cryptography``.  All
values big-endian, as the spec writes them (bumble keeps them little-endian).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pairkit.pairing.errors import ConfigError

__all__ = ["IRK_SIZE", "ah", "is_resolvable", "resolvable_private_address", "resolves"]

IRK_SIZE = 16
_TOP_MASK = 0xC0
_RESOLVABLE_TOP = 0x40  # the two most significant bits of an RPA are 01


def ah(irk: bytes, prand: bytes) -> bytes:
    """The random address hash function (Vol 3 Part H §2.2.2): 3 bytes, big-endian."""
    if len(irk) != IRK_SIZE or len(prand) != 3:
        raise ConfigError("ah needs a 16-byte key and a 3-byte prand")
    encryptor = Cipher(algorithms.AES(irk), modes.ECB()).encryptor()  # noqa: S305 (one block, by the spec)
    block = encryptor.update(bytes(13) + prand) + encryptor.finalize()
    return block[-3:]


def resolvable_private_address(irk: bytes, rng: Callable[[int], bytes]) -> str:
    """A fresh RPA under ``irk``, as ``AA:BB:CC:DD:EE:FF`` (§1.3.2.2)."""
    for _ in range(64):
        raw = rng(3)
        if len(raw) != 3:
            raise ConfigError("the random source returned the wrong number of bytes")
        prand = bytes([(raw[0] & ~_TOP_MASK & 0xFF) | _RESOLVABLE_TOP]) + raw[1:]
        random_part = int.from_bytes(prand, "big") & ((1 << 22) - 1)
        if random_part not in (0, (1 << 22) - 1):
            return _text(prand + ah(irk, prand))
    raise ConfigError("the random source keeps returning an invalid prand")


def is_resolvable(address: str) -> bool:
    """Whether ``address`` has the form of an RPA (top two bits 01)."""
    raw = _raw(address)
    return raw is not None and raw[0] & _TOP_MASK == _RESOLVABLE_TOP


def resolves(address: str, irk: bytes) -> bool:
    """Whether ``address`` is an RPA made with ``irk`` (§1.3.2.3; the hashes compared in
    constant time)."""
    raw = _raw(address)
    if raw is None or raw[0] & _TOP_MASK != _RESOLVABLE_TOP:
        return False
    return hmac.compare_digest(ah(irk, raw[:3]), raw[3:])


def _raw(address: str) -> bytes | None:
    try:
        raw = bytes.fromhex(address.removesuffix("/P").replace(":", ""))
    except ValueError:
        return None
    return raw if len(raw) == 6 else None


def _text(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)
