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

What pairkit stores sealed (the keystore's body, its lock records) holds floats and deeper
nesting, and is read by ``cbor2`` through :func:`decode_stored`, which first refuses every tag
but a bignum's: cbor2 also reads value sharing and string references (tags 28, 29, 256, 25),
which pairkit never writes and with which a few hundred bytes decode to a tree of 2**depth
nodes (session 19, kvtree).
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


class StoredTagError(DecodeError):
    """A stored record holds a CBOR tag pairkit does not write (:func:`decode_stored`)."""

    def __init__(self, tag: int, member: str | None) -> None:
        #: the tag met first, and the text key of the top-level map member holding it (None: the
        #: record is not such a map, or the tag is in a key)
        self.tag, self.member = tag, member
        #: the tag as a person reads it
        self.what = f"CBOR tag {tag}{_TAG_NAMES.get(tag, '')}"
        where = "the record" if member is None else f"its member {member!r}"
        super().__init__(f"{where} holds {self.what}, which pairkit does not write")


#: the deepest nesting a stored record may have (pairkit writes a handful of levels; cbor2 5.x
#: recurses once per level, and a few thousand raise a raw RecursionError: atk19z finding 2)
STORED_DEPTH = 100

#: the tags a stored record may hold (:func:`decode_stored`): an integer beyond 64 bits, which
#: cbor2 writes as a bignum (RFC 8949 §3.4.3)
STORED_TAGS = frozenset({2, 3})
_TAG_NAMES = {
    28: " (a value marked to be shared)",
    29: " (a reference to a shared value)",
    256: " (string references follow)",
    25: " (a reference to an earlier string)",
}


def decode_stored(data: bytes) -> Any:
    """Decode a record pairkit stored with ``cbor2`` (canonical, RFC 8949 §4.2.1): any CBOR that
    cbor2 reads, except that a tag other than :data:`STORED_TAGS` raises
    :class:`StoredTagError` before anything is decoded.

    cbor2 reads value sharing (tags 28 and 29: one array or map, referred to again) and string
    references (tags 256 and 25), none of which pairkit writes: with them a record of a few
    hundred bytes decodes to a tree whose every node is the same node twice, which every walk
    and every save goes through 2**depth times, and which cbor2 itself hashes 2**depth times
    where it is a map key.  Refused, the record is read in one pass over its heads, and what
    cbor2 returns is plain data, each array, map and string written out once in ``data``.
    Malformed CBOR raises :class:`DecodeError` here or :class:`cbor2.CBORDecodeError` in cbor2;
    pairkit writes none."""
    data = bytes(data)
    n = len(data)
    pos = 0
    refused: int | None = None  # a tag on the record itself, told after those in its members
    depth = STORED_DEPTH - 1  # under the record's own map
    while pos < n and 0xC0 <= data[pos] <= 0xDB:
        tag, pos = _head_argument(data, pos)
        if tag not in STORED_TAGS and refused is None:
            refused = tag
        depth -= 1  # a tag is a level too: cbor2 5.x recurses into it (atk19y finding 5)
        if depth < 0:
            raise DecodeError(_TOO_DEEP)
    if pos < n and 0xA0 <= data[pos] <= 0xBB:  # a map of definite length: name the member
        count, pos = _head_argument(data, pos)
        for _ in range(count):
            key_start = pos
            pos = _skip_stored(data, pos, None, depth)
            pos = _skip_stored(data, pos, _text_at(data, key_start, pos), depth)
    elif pos < n:
        pos = _skip_stored(data, pos, None, depth)
    if refused is not None:
        raise StoredTagError(refused, None)
    # One item to the last byte: cbor2 5.x reads a break where a map's value goes as a value
    # and reads on, past where the pass stopped (atk19z finding 1); cbor2 is then always a
    # level deeper than the pass, so a pass that read to the end leaves cbor2 nothing unread.
    if pos != n:
        raise DecodeError("malformed CBOR: bytes after the record")
    return cbor2.loads(data)


def _head_argument(data: bytes, pos: int) -> tuple[int, int]:
    """The argument of the head at ``pos`` (additional information under 28) and the position
    after the head."""
    info = data[pos] & 0x1F
    if info < 24:
        return info, pos + 1
    end = pos + 1 + (1 << (info - 24))
    if end > len(data):
        raise DecodeError(_TRUNCATED)
    return int.from_bytes(data[pos + 1 : end], "big"), end


def _text_at(data: bytes, start: int, end: int) -> str | None:
    """The text string encoded in ``data[start:end]`` when it is one (definite length)."""
    if not 0x60 <= data[start] <= 0x7B:
        return None
    _, body = _head_argument(data, start)
    try:
        return data[body:end].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _item_size(initial: int) -> int:
    """The whole size of an item whose head begins with ``initial``, when that byte alone says
    it (integers, floats and simple values; strings of under 24 bytes; empty arrays and maps),
    else 0."""
    major, info = initial >> 5, initial & 0x1F
    if major in (0, 1, 7) and info < 28:
        return 1 if info < 24 else 1 + (1 << (info - 24))
    if major in (2, 3) and info < 24:
        return 1 + info
    if major in (4, 5) and info == 0:
        return 1
    return 0


_TOO_DEEP = f"malformed CBOR: nested deeper than {STORED_DEPTH} levels (pairkit writes a few)"

#: :func:`_item_size` of each initial byte
_ITEM_SIZE = bytes(_item_size(initial) for initial in range(256))


def _skip_stored(data: bytes, pos: int, member: str | None, depth: int | None = None) -> int:
    """The position after the data item at ``pos``, its tags checked against
    :data:`STORED_TAGS` (``member`` names where it is, for the error).  Iterative, one step per
    head: ``left`` items still to skip at this level (-1: until a break, §3.2.2), the outer
    levels' on ``outer``.  The commonest items are skipped by their first byte alone: the pass
    costs about what cbor2's decoding does (3 ms for 1,000 peers' records).  ``depth``: the
    most arrays, maps, indefinite strings and tags inside one another (None: any)."""
    n = len(data)
    size_of = _ITEM_SIZE
    outer: list[int] = []
    left = 1
    while True:
        if not left:
            if not outer:
                break
            left = outer.pop()
            continue
        if pos >= n:
            raise DecodeError(_TRUNCATED)
        initial = data[pos]
        size = size_of[initial]
        if size:
            pos += size
            left -= 1
            continue
        if initial == 0x58 or initial == 0x78:  # a string of 24 to 255 bytes
            if pos + 1 >= n:
                raise DecodeError(_TRUNCATED)
            pos += 2 + data[pos + 1]
            left -= 1
            continue
        pos += 1
        if initial == 0xFF:  # "break": the end of an indefinite length
            if left >= 0:
                raise DecodeError("malformed CBOR: a break outside an indefinite length")
            left = outer.pop()
            continue
        if left > 0:
            left -= 1
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            arg = info
        elif info < 28:
            end = pos + (1 << (info - 24))
            if end > n:
                raise DecodeError(_TRUNCATED)
            arg = int.from_bytes(data[pos:end], "big")
            pos = end
        elif info == 31 and 2 <= major <= 5:
            outer.append(left)
            if depth is not None and len(outer) > depth:
                raise DecodeError(_TOO_DEEP)
            left = -1  # chunks, items or pairs until a break
            continue
        else:
            raise _refuse_info(info)
        if major <= 3:  # (integers and floats took the way above)
            pos += arg
        elif major == 6:
            if arg not in STORED_TAGS:
                raise StoredTagError(arg, member)
            outer.append(left)
            left = 1  # the tagged item
        else:  # an array or a map of ``arg`` items or pairs
            outer.append(left)
            left = arg if major == 4 else 2 * arg
        if depth is not None and len(outer) > depth:
            raise DecodeError(_TOO_DEEP)
    if pos > n:
        raise DecodeError(_TRUNCATED)
    return pos


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


# The decoder below is written for speed (issue 13: it was the largest pure-Python cost of a
# pairing): one function per item, the head read inline, and inside arrays and maps the
# commonest items (small integers, short strings; small integer keys) read without a call.
# Every check is the same, made in the same order: which refusal an input gets is unchanged.

_TRUNCATED = "message truncated"
_NOT_SHORTEST = "malformed CBOR: an integer or length is not in its shortest form"
#: the smallest argument each long head form (additional information 24 to 27) may carry
_SMALLEST = (24, 1 << 8, 1 << 16, 1 << 32)


def _refuse_info(info: int) -> DecodeError:
    # 28-30 are reserved; 31 is the indefinite-length marker (§3.2.2).
    what = "indefinite lengths are not allowed" if info == 31 else "reserved encoding"
    return DecodeError(f"malformed CBOR: {what}")


def _item(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """One data item at ``pos`` (RFC 8949 §3), at nesting ``depth``: (value, position after)."""
    if depth > MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    n = len(data)
    if pos >= n:
        raise DecodeError(_TRUNCATED)
    initial = data[pos]
    pos += 1
    major = initial >> 5
    arg = initial & 0x1F
    if arg >= 24:
        if arg > 27:
            raise _refuse_info(arg)
        info = arg
        end = pos + (1 << (info - 24))
        if end > n:
            raise DecodeError(_TRUNCATED)
        arg = data[pos] if info == 24 else int.from_bytes(data[pos:end], "big")
        pos = end
        if major == 7:
            raise DecodeError("floats and unknown simple values are not allowed")
        if arg < _SMALLEST[info - 24]:
            raise DecodeError(_NOT_SHORTEST)
    if major == 0:
        return arg, pos
    if major == 2:
        end = pos + arg
        if end > n:
            raise DecodeError(_TRUNCATED)
        return data[pos:end], end
    if major == 5:
        return _map(data, pos, depth, arg)
    if major == 4:
        if arg > n - pos:
            raise DecodeError(_TRUNCATED)
        if arg and depth >= MAX_DEPTH:
            raise DecodeError("message nested too deeply")
        items = []
        append = items.append
        for _ in range(arg):
            if pos < n:
                first = data[pos]
                if first < 0x18:  # a small unsigned integer: the whole item is this byte
                    append(first)
                    pos += 1
                    continue
                if 0x40 <= first <= 0x58:  # a byte string of under 256 bytes
                    value, pos = _short_bytes(data, pos, first, n)
                    append(value)
                    continue
            value, pos = _item(data, pos, depth + 1)
            append(value)
        return items, pos
    if major == 3:
        end = pos + arg
        if end > n:
            raise DecodeError(_TRUNCATED)
        try:
            return data[pos:end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError("a text field is not valid UTF-8") from None
    if major == 1:
        return -1 - arg, pos
    if major == 6:
        raise DecodeError("CBOR tags are not allowed")
    # major 7 with a one-byte head: false, true, null; nothing else
    if arg == 20:
        return False, pos
    if arg == 21:
        return True, pos
    if arg == 22:
        return None, pos
    raise DecodeError("floats and unknown simple values are not allowed")


def _map(data: bytes, pos: int, depth: int, count: int) -> tuple[dict[Any, Any], int]:
    """A map of ``count`` pairs from ``pos``: keys integers or text, each once, in the
    length-first canonical order (RFC 7049 §3.9)."""
    n = len(data)
    if count > (n - pos) // 2:
        raise DecodeError(_TRUNCATED)
    if count and depth >= MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    result: dict[Any, Any] = {}
    # the previous key's encoding, as where it starts and its length (0: no key yet)
    prev_start = prev_len = 0
    inner = depth + 1
    for _ in range(count):
        key_start = pos
        first = data[pos] if pos < n else 0xFF
        if first < 0x18:  # a small unsigned integer key, one byte (the commonest by far)
            key: Any = first
            pos += 1
            if prev_len:  # one byte sorts after a longer key never, after a byte if greater
                if prev_len > 1 or first <= data[prev_start]:
                    if prev_len == 1 and first == data[prev_start]:
                        raise DecodeError("duplicate key in a map")
                    raise DecodeError("map keys are not in canonical order")
            prev_start, prev_len = key_start, 1
        else:
            key, pos = _item(data, pos, inner)
            if not isinstance(key, int | str) or isinstance(key, bool):
                raise DecodeError("map keys must be integers or text")
            size = pos - key_start
            if prev_len and size <= prev_len:
                if size < prev_len:
                    raise DecodeError("map keys are not in canonical order")
                encoded = data[key_start:pos]
                before = data[prev_start : prev_start + prev_len]
                if encoded <= before:
                    if encoded == before:
                        raise DecodeError("duplicate key in a map")
                    raise DecodeError("map keys are not in canonical order")
            prev_start, prev_len = key_start, size
        if pos < n:
            first = data[pos]
            if first < 0x18:  # a small unsigned integer value
                result[key] = first
                pos += 1
                continue
            if 0x40 <= first <= 0x58:  # a byte string of under 256 bytes
                result[key], pos = _short_bytes(data, pos, first, n)
                continue
        value, pos = _item(data, pos, inner)
        result[key] = value
    return result, pos


def _short_bytes(data: bytes, pos: int, first: int, n: int) -> tuple[bytes, int]:
    """A byte string whose head is ``first``, 0x40 to 0x58 (under 256 bytes): what
    :func:`_item` does for it, with the same checks in the same order."""
    pos += 1
    if first == 0x58:
        if pos >= n:
            raise DecodeError(_TRUNCATED)
        size = data[pos]
        pos += 1
        if size < 24:
            raise DecodeError(_NOT_SHORTEST)
    else:
        size = first - 0x40
    end = pos + size
    if end > n:
        raise DecodeError(_TRUNCATED)
    return data[pos:end], end
