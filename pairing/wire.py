"""pairkit's wire format: frozen dataclasses with a strict CBOR encoding.

Every message is a CBOR map (RFC 8949 §3.1 major type 5) with small integer keys:

======  ==========================================================
key     value
======  ==========================================================
0       protocol version (unsigned integer, :data:`VERSION`)
1       message type (unsigned integer, unique per message class)
2...    the message's own fields, numbered in its class definition
======  ==========================================================

A field whose value is ``None`` or its default is still written unless it is ``None`` (absent
keys decode to ``None``).  Decoding is strict: the whole encoding must pass
:func:`pairing.cbor.decode` (definite lengths, shortest form, no tags, no floats), the message
must fit its type's size limit, every key must be known to its type, every field must have the
declared type and length, and every failure is a :class:`~pairing.errors.DecodeError`.

Message classes are declared with :func:`message`::

    @message(type_id=7, max_size=256)
    class Ping:
        nonce: bytes = field(2, size=16)
        note: str | None = field(3, max_len=64, default=None)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from . import cbor
from .errors import DecodeError, ErrorCode, TooLargeError

VERSION = 1
K_VERSION = 0
K_TYPE = 1
MAX_INT = 2**64 - 1

_REGISTRY: dict[int, type[Message]] = {}

T = TypeVar("T")


class Message:
    """Base class of every wire message (see :func:`message`)."""

    TYPE: ClassVar[int]
    MAX_SIZE: ClassVar[int]
    _FIELDS: ClassVar[tuple[_Field, ...]]
    #: the fields by ascending key, the order every encoded map is built in (canonical CBOR)
    _KEY_ORDER: ClassVar[tuple[_Field, ...]]

    def encode(self) -> bytes:
        """The message's CBOR encoding (never larger than its type's ``MAX_SIZE``)."""
        cached: bytes | None = self.__dict__.get(_ENCODED)
        if cached is not None:
            return cached
        # Keys ascending (version, type, then the fields by key): the canonical order.
        body: dict[int, Any] = {K_VERSION: VERSION, K_TYPE: self.TYPE}
        body.update(_encode_body(self))
        data = cbor.encode_ordered(body)
        if len(data) > self.MAX_SIZE:
            raise TooLargeError(
                f"{type(self).__name__} encodes to {len(data)} bytes, over its limit "
                f"of {self.MAX_SIZE}"
            )
        object.__setattr__(self, _ENCODED, data)
        return data


# A message is a frozen dataclass of immutable values, so its encoding never changes: each is
# made once and kept in the instance (issue 13: a pairing encoded each Announce up to four
# times, for the message, ``th``, ``hello_hash`` and CPace's associated data).  The keys are
# not fields: equality, hashing and ``repr`` never see them; ``dataclasses.replace`` makes a
# new instance, which encodes afresh.
_ENCODED = "_wire_encoded"
_ENCODED_STRUCT = "_wire_encoded_struct"
_BODY = "_wire_body"


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    key: int
    kind: Any
    size: int | None
    max_len: int | None
    optional: bool
    has_default: bool
    default: Any


def field(
    key: int,
    *,
    size: int | None = None,
    max_len: int | None = None,
    default: Any = dataclasses.MISSING,
    secret: bool = False,
) -> Any:
    """Declare a message field with wire key ``key`` (2 or more).

    ``size`` fixes the exact length of a byte string; ``max_len`` bounds a string's length or a
    sequence's item count.  ``secret`` keeps the field out of ``repr()`` (keys, cloud secrets:
    docs/security.md, rule 8).
    """
    if key < 2:
        raise ValueError("field keys 0 and 1 are reserved for version and type")
    meta = {"key": key, "size": size, "max_len": max_len, "secret": secret}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def message(*, type_id: int, max_size: int) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a frozen dataclass message with wire type ``type_id``."""

    def wrap(cls: type[T]) -> type[T]:
        if type_id in _REGISTRY:
            raise ValueError(f"message type {type_id} is already {_REGISTRY[type_id].__name__}")
        if not issubclass(cls, Message):
            cls = type(cls.__name__, (cls, Message), dict(cls.__dict__))  # type: ignore[assignment]
        dc = dataclasses.dataclass(frozen=True)(cls)
        dc.TYPE = type_id  # type: ignore[attr-defined]
        dc.MAX_SIZE = max_size  # type: ignore[attr-defined]
        dc._FIELDS = _fields_of(dc)  # type: ignore[attr-defined]
        dc._KEY_ORDER = tuple(sorted(dc._FIELDS, key=lambda f: f.key))  # type: ignore[attr-defined]
        _REGISTRY[type_id] = dc  # type: ignore[assignment]
        return dc

    return wrap


def struct(cls: type[T]) -> type[T]:
    """Class decorator for a nested structure (a CBOR map inside a message, no version/type)."""
    if not issubclass(cls, Message):
        cls = type(cls.__name__, (cls, Message), dict(cls.__dict__))  # type: ignore[assignment]
    dc = dataclasses.dataclass(frozen=True)(cls)
    dc._FIELDS = _fields_of(dc)  # type: ignore[attr-defined]
    dc._KEY_ORDER = tuple(sorted(dc._FIELDS, key=lambda f: f.key))  # type: ignore[attr-defined]
    return dc


def _fields_of(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    keys: set[int] = set()
    for f in dataclasses.fields(cls):
        if "key" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} needs wire.field(key)")
        key = f.metadata["key"]
        if key in keys:
            raise TypeError(f"{cls.__name__}: duplicate field key {key}")
        keys.add(key)
        kind = hints[f.name]
        optional = False
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            optional = len(args) < len(typing.get_args(kind))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: unions are not supported")
            kind = args[0]
        out.append(
            _Field(
                name=f.name,
                key=key,
                kind=kind,
                size=f.metadata["size"],
                max_len=f.metadata["max_len"],
                optional=optional,
                has_default=f.default is not dataclasses.MISSING,
                default=f.default,
            )
        )
    return tuple(out)


def _encode_body(msg: Message) -> dict[int, Any]:
    """The message's map, its keys inserted in ascending order (see cbor.encode_ordered).

    Made once per instance (see ``_ENCODED``); callers must not change the map they get."""
    cache = msg.__dict__
    body: dict[int, Any] | None = cache.get(_BODY)
    if body is not None:
        return body
    body = {}
    plain = _PLAIN
    for f in msg._KEY_ORDER:
        value = getattr(msg, f.name)
        if value is None:
            continue
        body[f.key] = value if type(value) in plain else _encode_value(f.kind, value)
    object.__setattr__(msg, _BODY, body)
    return body


_NOT_A_TUPLE: Any = object()
#: field kind -> the item kind of a ``tuple[X, ...]`` kind, or _NOT_A_TUPLE (typing's
#: get_origin/get_args cost more than the rest of a field's encoding: asked once per kind)
_TUPLE_ITEMS: dict[Any, Any] = {}


def _tuple_item(kind: Any) -> Any:
    try:
        return _TUPLE_ITEMS[kind]
    except KeyError:
        pass
    item = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else _NOT_A_TUPLE
    _TUPLE_ITEMS[kind] = item
    return item


#: values encoded as they are (an IntEnum's type is its own class, never one of these)
_PLAIN: frozenset[type] = frozenset({bytes, str, int, bool})


def _encode_value(kind: Any, value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    inner = _tuple_item(kind)
    if inner is not _NOT_A_TUPLE:
        return [_encode_value(inner, v) for v in value]
    if isinstance(value, Message):
        return _encode_body(value)
    if isinstance(value, IntEnum):
        return int(value)
    return value


def _decode_value(owner: str, f: _Field, kind: Any, raw: Any, top: bool = True) -> Any:
    # ``where`` names the field in an error only; made once an error is certain (issue 13)
    if kind is bytes and type(raw) is bytes:
        if f.size is not None or f.max_len is not None:
            _check_len(f"{owner}.{f.name}", f, len(raw), top)
        return raw
    where = f"{owner}.{f.name}"
    inner = _tuple_item(kind)
    if inner is not _NOT_A_TUPLE and top:
        if not isinstance(raw, list):
            raise DecodeError(f"{where} should be a list")
        if f.max_len is not None and len(raw) > f.max_len:
            raise DecodeError(f"{where} has {len(raw)} items, more than {f.max_len}")
        return tuple(_decode_value(owner, f, inner, item, top=False) for item in raw)
    if kind is bytes:
        if not isinstance(raw, bytes):
            raise DecodeError(f"{where} should be bytes")
        _check_len(where, f, len(raw), top)
        return raw
    if kind is str:
        if not isinstance(raw, str):
            raise DecodeError(f"{where} should be text")
        _check_len(where, f, len(raw), top)
        return raw
    if kind is bool:
        if not isinstance(raw, bool):
            raise DecodeError(f"{where} should be true or false")
        return raw
    if kind is int:
        if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= MAX_INT:
            raise DecodeError(f"{where} should be an unsigned integer")
        return raw
    if isinstance(kind, type) and issubclass(kind, IntEnum):
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise DecodeError(f"{where} should be a number")
        try:
            return kind(raw)
        except ValueError:
            raise DecodeError(f"{where}: unknown value {raw}") from None
    if isinstance(kind, type) and issubclass(kind, Message):
        if not isinstance(raw, dict):
            raise DecodeError(f"{where} should be a map")
        return _decode_body(kind, raw)
    raise TypeError(f"{where}: unsupported field type {kind!r}")


def _check_len(where: str, f: _Field, n: int, top: bool) -> None:
    if f.size is not None and n != f.size:
        raise DecodeError(f"{where} should be {f.size} bytes long, not {n}")
    if top and f.max_len is not None and n > f.max_len:
        raise DecodeError(f"{where} is {n} long, over its limit of {f.max_len}")
    if not top and f.max_len is not None and f.size is None and n > f.max_len:
        raise DecodeError(f"{where} has an item {n} long, over its limit of {f.max_len}")


#: what a field missing from a map decodes to when it may be missing; else _REQUIRED
_REQUIRED: Any = object()
_ABSENT: Any = object()
#: (message class, keys skipped) -> its fields' keys, the keys allowed in its map, each field
#: as (key, name, decoder, value when absent), and whether to build it directly: worked out
#: once (issue 13)
_PLANS: dict[tuple[type, tuple[int, ...]], tuple[Any, ...]] = {}


def _plan(cls: type[Message], skip: tuple[int, ...]) -> tuple[Any, ...]:
    """How to decode ``cls`` from a map that may also hold the keys ``skip``: (the keys of its
    fields, the keys allowed, each field as (key, name, decoder, value when absent), whether an
    instance may be made without calling ``__init__``).

    A field's decoder takes a value of the right type and length (the commonest by far) as it
    is, and gives anything else to :func:`_decode_value`, which makes every check and raises
    every error in the same order as always.  An instance is put together directly (its
    ``__dict__`` filled) when ``__init__`` would only store the fields: a frozen dataclass's
    ``__init__`` stores each through ``object.__setattr__``, four times the cost (issue 13); a
    class with a ``__post_init__`` (a check of its own) is always built by it.
    """
    plan = _PLANS.get((cls, skip))
    if plan is None:
        fields = cls._FIELDS
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        direct = (
            not hasattr(cls, "__post_init__")
            and names == {f.name for f in fields}
            and all(f.init for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        )
        steps = []
        for f in fields:
            if f.optional:
                absent = f.default if f.has_default else None
            elif f.has_default:
                absent = f.default
            else:
                absent = _REQUIRED
            steps.append((f.key, f.name, _field_decoder(cls.__name__, f), absent))
        known = frozenset(f.key for f in fields)
        plan = _PLANS[(cls, skip)] = (known, known | frozenset(skip), tuple(steps), direct)
    return plan


def _field_decoder(owner: str, f: _Field) -> Callable[[Any], Any]:
    kind = f.kind
    if kind is bytes or kind is str:
        size, max_len = f.size, f.max_len

        def decode_sized(raw: Any) -> Any:
            if (
                type(raw) is kind
                and (size is None or len(raw) == size)
                and (max_len is None or len(raw) <= max_len)
            ):
                return raw
            return _decode_value(owner, f, kind, raw)

        return decode_sized
    if isinstance(kind, type) and issubclass(kind, Message) and _tuple_item(kind) is _NOT_A_TUPLE:

        def decode_struct(raw: Any) -> Any:
            if type(raw) is dict:
                return _decode_body(kind, raw)
            return _decode_value(owner, f, kind, raw)

        return decode_struct
    if isinstance(kind, type) and issubclass(kind, IntEnum):
        members = kind._value2member_map_

        def decode_enum(raw: Any) -> Any:
            member = members.get(raw) if type(raw) is int else None
            if member is not None:
                return member
            return _decode_value(owner, f, kind, raw)

        return decode_enum
    if kind is int:

        def decode_int(raw: Any) -> Any:
            if type(raw) is int and 0 <= raw <= MAX_INT:  # a bool's type is not int
                return raw
            return _decode_value(owner, f, kind, raw)

        return decode_int
    if _tuple_item(kind) is bytes:
        size, max_len = f.size, f.max_len
        # an item's length: exactly ``size``, or without one at most ``max_len`` (_check_len)
        item_max = max_len if size is None else None

        def decode_digests(raw: Any) -> Any:
            if type(raw) is list and (max_len is None or len(raw) <= max_len):
                for item in raw:
                    if (
                        type(item) is not bytes
                        or (size is not None and len(item) != size)
                        or (item_max is not None and len(item) > item_max)
                    ):
                        break
                else:
                    return tuple(raw)
            return _decode_value(owner, f, kind, raw)

        return decode_digests
    return lambda raw: _decode_value(owner, f, kind, raw)


def _decode_body(cls: type[Message], body: dict[Any, Any], skip: tuple[int, ...] = ()) -> Any:
    known, allowed, steps, direct = _plan(cls, skip)
    if not allowed.issuperset(body):
        for key in body:  # the first unknown key, in the map's order
            if key not in known and key not in skip:
                raise DecodeError(f"{cls.__name__} has an unknown field {key!r}")
    kwargs = {}
    for key, name, decode_field, absent in steps:
        raw = body.get(key, _ABSENT)
        if raw is _ABSENT:
            if absent is _REQUIRED:
                raise DecodeError(f"{cls.__name__} is missing its field {name}")
            kwargs[name] = absent
        else:
            kwargs[name] = decode_field(raw)
    if direct:
        msg = object.__new__(cls)
        msg.__dict__.update(kwargs)
        return msg
    return cls(**kwargs)


def encode_struct(value: Message) -> bytes:
    """Encode a :func:`struct` value on its own (to put inside an encrypted payload)."""
    cached: bytes | None = value.__dict__.get(_ENCODED_STRUCT)
    if cached is None:
        cached = cbor.encode_ordered(_encode_body(value))
        object.__setattr__(value, _ENCODED_STRUCT, cached)
    return cached


def decode_struct(cls: type[T], data: bytes, *, max_size: int = 4096) -> T:
    """Decode a :func:`struct` value strictly (see :func:`decode`)."""
    body = cbor.decode(data, max_size=max_size)
    if not isinstance(body, dict):
        raise DecodeError(f"{cls.__name__} must be a CBOR map")
    return _decode_body(cls, body)  # type: ignore[arg-type, no-any-return]


def peek_type(data: bytes) -> int | None:
    """The message type of ``data`` if it looks like a pairkit message, else ``None``."""
    try:
        body = cbor.decode(data, max_size=MAX_MESSAGE)
    except DecodeError:
        return None
    if not isinstance(body, dict):
        return None
    t = body.get(K_TYPE)
    return t if type(t) is int else None


MAX_MESSAGE = 64 * 1024


def decode(data: bytes, expect: type[T] | tuple[type, ...] | None = None) -> T:
    """Decode one message strictly; with ``expect``, only those classes are accepted.

    :raises DecodeError: for anything that is not a well-formed, known, in-limit message.
    """
    if len(data) > MAX_MESSAGE:
        raise DecodeError(f"message of {len(data)} bytes is over the limit of {MAX_MESSAGE}")
    body = cbor.decode(data, max_size=MAX_MESSAGE)
    if not isinstance(body, dict):
        raise DecodeError("a message must be a CBOR map")
    version = body.get(K_VERSION)
    # type() is not int for a bool: CBOR true must not pass for version 1 or type 1.
    if type(version) is not int or version != VERSION:
        raise DecodeError(f"unsupported protocol version {version!r} (this side speaks {VERSION})")
    type_id = body.get(K_TYPE)
    cls = _REGISTRY.get(type_id) if type(type_id) is int else None
    if cls is None:
        raise DecodeError(f"unknown message type {type_id!r}")
    if len(data) > cls.MAX_SIZE:
        raise DecodeError(
            f"{cls.__name__} of {len(data)} bytes is over its limit of {cls.MAX_SIZE}"
        )
    if expect is not None:
        allowed = expect if isinstance(expect, tuple) else (expect,)
        if cls not in allowed and not issubclass(cls, Abort):
            names = " or ".join(c.__name__ for c in allowed)
            raise DecodeError(f"expected {names}, got {cls.__name__}")
    return _decode_body(cls, body, skip=(K_VERSION, K_TYPE))  # type: ignore[no-any-return]


def registry() -> dict[int, type[Message]]:
    """Every registered message class by type id (for tests and documentation)."""
    return dict(_REGISTRY)


@message(type_id=1, max_size=512)
class Abort(Message):
    """Sent by a side that stops a protocol: the error code and a reason a person can read."""

    code: ErrorCode = field(2)
    reason: str = field(3, max_len=200)
