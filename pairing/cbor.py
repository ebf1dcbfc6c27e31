"""A strict decoder for the subset of CBOR (RFC 8949) that pairkit's wire format uses.

pairkit encodes with ``cbor2`` in canonical form (RFC 8949 §4.2.1, core deterministic encoding)
and decodes with this module, which accepts only what pairkit writes:

* major types 0 and 1 (integers within 64 bits), 2 (byte strings), 3 (UTF-8 text strings),
  4 (arrays), 5 (maps), and the simple values ``false``, ``true`` and ``null`` (major type 7,
  values 20 to 22);
* definite lengths only (RFC 8949 §3.2.2 indefinite lengths are refused);
* shortest-form heads only (§4.2.1 "preferred serialization": an argument that would fit a
  shorter head is refused, so every value has exactly one encoding);
* no tags (§3.4), no floats, no other simple values, no duplicate map keys, maps with integer or
  text keys only, keys in the length-first canonical order of RFC 7049 §3.9 (what ``cbor2``'s
  canonical mode writes: shorter encoded keys first, then bytewise);
* a nesting depth limit and a total length limit; no trailing bytes.

Every failure raises :class:`pairing.errors.DecodeError` with a readable reason.
"""

from __future__ import annotations

from typing import Any

import cbor2

from .errors import DecodeError

MAX_DEPTH = 8

_SIMPLE = {20: False, 21: True, 22: None}


def encode(value: Any) -> bytes:
    """Encode ``value`` deterministically (shortest heads, definite lengths, sorted map keys)."""
    return cbor2.dumps(value, canonical=True)


def encode_ordered(value: Any) -> bytes:
    """:func:`encode` for a value whose every map was built with non-negative integer keys in
    ascending order (what :mod:`pairing.wire` builds): then the canonical encoding is the plain
    one, and cbor2 need not sort (its canonical mode costs three times the encoding itself).
    Integers, lengths and heads are always shortest in cbor2; there are no floats here."""
    return cbor2.dumps(value)


def encode_head(major: int, argument: int) -> bytes:
    """An item head (RFC 8949 §3) in its shortest form: major type ``major`` (0 to 7) with
    ``argument`` (a length, for arrays and maps the number of items), so that items encoded
    apart can be put together into the encoding of their array or map."""
    if not 0 <= major <= 7 or not 0 <= argument < 1 << 64:
        raise ValueError("a CBOR head has a major type 0-7 and an argument within 64 bits")
    top = major << 5
    if argument < 24:
        return bytes((top | argument,))
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes((top | info,)) + argument.to_bytes(size, "big")
    raise AssertionError("unreachable")


def decode(data: bytes, *, max_size: int) -> Any:
    """Decode one CBOR data item from ``data`` strictly (see the module docstring)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("a message must be bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes is over its limit of {max_size} bytes")
    if not data:
        raise DecodeError("empty message")
    value, pos = _item(data, 0, 0)
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} unexpected bytes after the message")
    return value


def _head(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """Read an item head (RFC 8949 §3): returns (major type, additional info, argument, new pos)."""
    if pos >= len(data):
        raise DecodeError("message truncated")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, info, pos
    if info > 27:
        # 28-30 are reserved; 31 is the indefinite-length marker (§3.2.2).
        what = "indefinite lengths are not allowed" if info == 31 else "reserved encoding"
        raise DecodeError(f"malformed CBOR: {what}")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise DecodeError("message truncated")
    arg = int.from_bytes(data[pos : pos + size], "big")
    if major != 7:
        smallest = 0 if info == 24 else 1 << (8 * (size // 2))
        if (info == 24 and arg < 24) or (info > 24 and arg < smallest):
            raise DecodeError("malformed CBOR: an integer or length is not in its shortest form")
    return major, info, arg, pos + size


def _item(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    major, info, arg, pos = _head(data, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise DecodeError("message truncated")
        raw = data[pos:end]
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError("a text field is not valid UTF-8") from None
    if major == 4:
        if arg > len(data) - pos:
            raise DecodeError("message truncated")
        items = []
        for _ in range(arg):
            value, pos = _item(data, pos, depth + 1)
            items.append(value)
        return items, pos
    if major == 5:
        if arg > (len(data) - pos) // 2:
            raise DecodeError("message truncated")
        result: dict[Any, Any] = {}
        previous: tuple[int, bytes] | None = None
        for _ in range(arg):
            key_start = pos
            key, pos = _item(data, pos, depth + 1)
            encoded_key = (pos - key_start, data[key_start:pos])
            if not isinstance(key, int | str) or isinstance(key, bool):
                raise DecodeError("map keys must be integers or text")
            if previous is not None and encoded_key <= previous:
                if encoded_key == previous:
                    raise DecodeError("duplicate key in a map")
                raise DecodeError("map keys are not in canonical order")
            previous = encoded_key
            value, pos = _item(data, pos, depth + 1)
            result[key] = value
        return result, pos
    if major == 6:
        raise DecodeError("CBOR tags are not allowed")
    # major 7: simple values and floats
    if info >= 24 or arg not in _SIMPLE:
        raise DecodeError("floats and unknown simple values are not allowed")
    return _SIMPLE[arg], pos
