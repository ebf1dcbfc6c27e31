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

Each class also gets a straight-line encoder and decoder generated from its definition (see
"Straight-line codecs" below): a fast path for the commonest form of each field only, which
gives up on anything else, so that every other input and every error is the general codec's.

Message classes are declared with :func:`message`::

    @message(type_id=7, max_size=256)
    class Ping:
        nonce: bytes = field(2, size=16)
        note: str | None = field(3, max_len=64, default=None)

A text a person reads (a ``reason``) is declared ``one_line=True``: it decodes with every
character that would end, break or reorder a line made a space (:func:`one_line`), so that a
peer's words shown on a line of pairkit's own never make a second one (attack review atk21,
finding 1).
"""

from __future__ import annotations

import dataclasses
import types
import typing
import unicodedata
from collections.abc import Callable
from enum import IntEnum
from struct import Struct
from typing import Any, ClassVar, TypeVar

from . import cbor
from .errors import DecodeError, ErrorCode, TooLargeError

VERSION = 1
K_VERSION = 0
K_TYPE = 1
MAX_INT = 2**64 - 1

#: characters that end a line or reorder what a terminal shows after them, beside the control
#: characters (Unicode category Cc): line and paragraph separators, bidirectional controls
LINE_BREAKING: typing.Final = frozenset(
    "\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2066\u2067\u2068\u2069"
)


def _breaks_line(ch: str) -> bool:
    return ch in LINE_BREAKING or unicodedata.category(ch) == "Cc"


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (Unicode category Cc: NUL, a newline, a
    carriage return, an escape, DEL, a C1 control)."""
    return not text.isprintable() and any(unicodedata.category(ch) == "Cc" for ch in text)


def breaks_lines(text: str) -> bool:
    """Whether ``text`` holds what :func:`one_line` replaces: a control character, a line or
    paragraph separator, a bidirectional control (:data:`LINE_BREAKING`)."""
    return not text.isprintable() and any(map(_breaks_line, text))


def one_line(text: str) -> str:
    """``text`` with each control character (newlines, carriage returns, escapes, C1 controls),
    line or paragraph separator and bidirectional control made a space: a peer's text that
    stays on the line it is shown on, whatever it holds.  Nothing else changes, so a clean text
    (non-ASCII included) is returned as it is."""
    if text.isprintable():  # (no Cc, Zl, Zp, bidi control: all are not printable)
        return text
    return "".join(" " if _breaks_line(ch) else ch for ch in text)

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
        kept = self.__dict__
        cached: bytes | None = kept.get(_ENCODED)
        if cached is not None:
            return cached
        cls = type(self)
        enc = _FAST_MESSAGE_ENC.get(cls)
        if enc is None:
            enc = _FAST_MESSAGE_ENC[cls] = _make_encoder(cls, message=True)
        if enc is not _NO_FAST:
            fast: bytes | None = enc(self)
            if fast is not None and len(fast) <= self.MAX_SIZE:
                kept[_ENCODED] = fast  # not a field: as object.__setattr__ would store it
                return fast
        return _encode_general(self)


def _encode_general(msg: Message) -> bytes:
    """:meth:`Message.encode` by the general encoder (when the generated one gives up)."""
    # Keys ascending (version, type, then the fields by key): the canonical order.
    body: dict[int, Any] = {K_VERSION: VERSION, K_TYPE: msg.TYPE}
    body.update(_encode_body(msg))
    data = cbor.encode_ordered(body)
    if len(data) > msg.MAX_SIZE:
        raise TooLargeError(
            f"{type(msg).__name__} encodes to {len(data)} bytes, over its limit "
            f"of {msg.MAX_SIZE}"
        )
    object.__setattr__(msg, _ENCODED, data)
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
    one_line: bool = False


def field(
    key: int,
    *,
    size: int | None = None,
    max_len: int | None = None,
    default: Any = dataclasses.MISSING,
    secret: bool = False,
    one_line: bool = False,
) -> Any:
    """Declare a message field with wire key ``key`` (2 or more).

    ``size`` fixes the exact length of a byte string; ``max_len`` bounds a string's length or a
    sequence's item count.  ``secret`` keeps the field out of ``repr()`` (keys, cloud secrets:
    docs/security.md, rule 8).  ``one_line`` (a text a person reads, such as a reason) decodes
    through :func:`one_line`.
    """
    if key < 2:
        raise ValueError("field keys 0 and 1 are reserved for version and type")
    meta = {"key": key, "size": size, "max_len": max_len, "secret": secret,
            "one_line": one_line}
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
        own_init = "__init__" in cls.__dict__
        dc = dataclasses.dataclass(frozen=True)(cls)
        if not own_init:
            _INIT_PENDING.add(dc)
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
    own_init = "__init__" in cls.__dict__
    dc = dataclasses.dataclass(frozen=True)(cls)
    if not own_init:
        _INIT_PENDING.add(dc)
    dc._FIELDS = _fields_of(dc)  # type: ignore[attr-defined]
    dc._KEY_ORDER = tuple(sorted(dc._FIELDS, key=lambda f: f.key))  # type: ignore[attr-defined]
    return dc


def stores_fields_directly(cls: type[T]) -> type[T]:
    """Class decorator, over ``@dataclasses.dataclass(frozen=True)``: the same class with an
    ``__init__`` that stores its fields straight into the instance's ``__dict__`` (see
    :func:`_store_fields_directly`); every message and struct class gets one."""
    init = cls.__init__  # type: ignore[misc]
    code = getattr(init, "__code__", None)
    # only over the __init__ dataclasses made (exec'd source), never one the class defines
    if code is not None and code.co_filename == "<string>" and code.co_name == "__init__":
        _store_fields_directly(cls)
    return cls


#: message and struct classes whose __init__ dataclasses made, not replaced yet: each gets its
#: direct-storing one with its codecs, on first use, so that importing the ~60 classes (the
#: ``pairkit`` command's start-up) does not compile one per class (issue 13)
_INIT_PENDING: set[type] = set()


def _direct_init(cls: type) -> None:
    """Give ``cls`` its direct-storing ``__init__`` if it awaits one (see _INIT_PENDING)."""
    if cls in _INIT_PENDING:
        _INIT_PENDING.discard(cls)
        _store_fields_directly(cls)


def _store_fields_directly(cls: type) -> None:
    """Give the frozen dataclass ``cls`` an ``__init__`` that stores its fields straight into
    the instance's ``__dict__``, where the one ``dataclasses`` makes calls
    ``object.__setattr__`` once per field (issue 13: a pairing builds about a dozen messages).
    The same parameters, defaults (the same objects), annotations and name, so the same calls
    are accepted and the same ``TypeError`` texts given; then ``__post_init__``, if any, as
    before.  Classes with anything else in their ``__init__`` (pseudo-fields, fields outside it
    or keyword-only, default factories) keep the one ``dataclasses`` made."""
    generated = cls.__init__  # type: ignore[misc]
    fields = dataclasses.fields(cls)
    if (
        not getattr(cls, "__dataclass_params__", None)
        or not cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        or len(fields) != len(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        or not all(f.name.isidentifier() for f in fields)
        or any(not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING
               for f in fields)
    ):
        return
    names: dict[str, Any] = {}
    params = ["self"]
    for i, f in enumerate(fields):
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            names[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
    lines = [f"def __init__({', '.join(params)}):", "    d = self.__dict__"]
    lines += [f"    d[{f.name!r}] = {f.name}" for f in fields]
    if hasattr(cls, "__post_init__"):
        lines.append("    self.__post_init__()")
    code = compile("\n".join(lines) + "\n", f"<pairing/wire.py: __init__ of {cls.__qualname__}>",
                   "exec")
    exec(code, names)  # noqa: S102 - generated from the class definition only
    init = names["__init__"]
    init.__qualname__ = generated.__qualname__
    init.__module__ = generated.__module__
    init.__annotations__ = dict(generated.__annotations__)
    cls.__init__ = init  # type: ignore[misc]


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
                one_line=bool(f.metadata.get("one_line")),
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
        return one_line(raw) if f.one_line else raw
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

        if f.one_line:

            def decode_line(raw: Any) -> Any:
                text = decode_sized(raw)
                return text if text is None else one_line(text)

            return decode_line
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


def _kind(value: Any) -> str:
    """What a peer's value is, for an error text: its kind and size, and an integer's number;
    never the peer's text or bytes, which could be anything and 64 KB long (atk20c finding 2).
    """
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(2**64) <= value < 2**64 else "(an integer out of range)"
    if isinstance(value, str):
        return f"(a text of {len(value)} characters)"
    if isinstance(value, bytes):
        return f"(a byte string of {len(value)} bytes)"
    if isinstance(value, dict):
        return f"(a map of {len(value)} entries)"
    if isinstance(value, list | tuple):
        return f"(a list of {len(value)} items)"
    return f"(a {type(value).__name__})"


def _decode_body(cls: type[Message], body: dict[Any, Any], skip: tuple[int, ...] = ()) -> Any:
    known, allowed, steps, direct = _plan(cls, skip)
    if not allowed.issuperset(body):
        for key in body:  # the first unknown key, in the map's order
            if key not in known and key not in skip:
                raise DecodeError(f"{cls.__name__} has an unknown field {_kind(key)}")
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
        cached = _struct_bytes(value)
    if cached is None:
        cached = _encode_struct_general(value)
    return cached


def _encode_struct_general(value: Message) -> bytes:
    """:func:`encode_struct` by the general encoder (when the generated one gives up)."""
    data = cbor.encode_ordered(_encode_body(value))
    object.__setattr__(value, _ENCODED_STRUCT, data)
    return data


def decode_struct(cls: type[T], data: bytes, *, max_size: int = 4096) -> T:
    """Decode a :func:`struct` value strictly (see :func:`decode`)."""
    if type(data) is bytes:
        fast = _fast_decode_struct(cls, data, max_size)
        if fast is not None:
            return fast  # type: ignore[no-any-return]
    return _decode_struct_general(cls, data, max_size=max_size)


def _decode_struct_general(cls: type[T], data: bytes, *, max_size: int = 4096) -> T:
    """:func:`decode_struct` by the general decoder (what the generated one does not take)."""
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
    if type(data) is bytes:
        fast = _fast_decode(data, expect)
        if fast is not None:
            return fast  # type: ignore[no-any-return]
    return _decode_general(data, expect)


def _decode_general(data: bytes, expect: type[T] | tuple[type, ...] | None = None) -> T:
    """:func:`decode` by the general decoder (what the generated one does not take)."""
    if len(data) > MAX_MESSAGE:
        raise DecodeError(f"message of {len(data)} bytes is over the limit of {MAX_MESSAGE}")
    body = cbor.decode(data, max_size=MAX_MESSAGE)
    if not isinstance(body, dict):
        raise DecodeError("a message must be a CBOR map")
    version = body.get(K_VERSION)
    # type() is not int for a bool: CBOR true must not pass for version 1 or type 1.
    if type(version) is not int or version != VERSION:
        raise DecodeError(
            f"unsupported protocol version {_kind(version)} (this side speaks {VERSION})"
        )
    type_id = body.get(K_TYPE)
    cls = _REGISTRY.get(type_id) if type(type_id) is int else None
    if cls is None:
        raise DecodeError(f"unknown message type {_kind(type_id)}")
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


# --------------------------------------------------------------------------------------------
# Straight-line codecs generated per class (issue 13)
# --------------------------------------------------------------------------------------------
#
# The general codec above builds a map and hands it to cbor2 (encoding), and decodes any CBOR
# into a map and then checks it field by field (decoding): about 8 and 13 us a message, 12 to
# 15% of a loopback pairing.  For each class, the first time it is encoded or decoded, a pair
# of functions is generated from its static definition alone (field keys, names, kinds, sizes:
# as ``dataclasses`` generates ``__init__``), never from input:
#
# * the encoder writes the canonical bytes of the fields in key order, each value of the
#   expected type (exact ``bytes`` of the declared size, ``str``, ``int`` within 64 bits, the
#   declared IntEnum, a struct, a tuple of those) straight after its precomputed key and head;
# * the decoder reads the bytes in the one form the general decoder accepts for each field
#   (shortest heads, the declared kind, size and bounds, keys in ascending order), counting the
#   pairs against the map's head and, for a message, ending exactly at the end of the data.
#
# Each is a fast path only: at the first byte or value that is not exactly what it expects it
# returns None, and the call goes through the general codec above, unchanged, which encodes
# the same bytes or raises the same error with the same text.  So the fast decoder accepts a
# subset of what the general decoder accepts, giving the same value (a map of exactly the pairs
# it read, each key a small unsigned integer above the previous one, each value in shortest
# form and within its field's limits), and everything else, every refusal included, is the
# general decoder's.  tests/test_wire_fastpath.py compares the two on mutated messages.

#: a message's map after its head: key 0, the version, key 1 (then the type, then the fields)
_TOP_KEYS = bytes((K_VERSION, VERSION, K_TYPE))
_MAP_HEADS = tuple(cbor.encode_head(5, i) for i in range(32))
_SMALL_HEADS = {m: tuple(cbor.encode_head(m, i) for i in range(256)) for m in (0, 2, 3, 4)}
#: a class's generated encoder (struct form, message form) and decoder, or _NO_FAST
_NO_FAST: Any = object()
_FAST_STRUCT_ENC: dict[type, Any] = {}
_FAST_MESSAGE_ENC: dict[type, Any] = {}
#: decoders by (class, whether for a struct inside a map)
_FAST_DEC: dict[tuple[type, bool], Any] = {}
#: a message type's class, size limit (its own or MAX_MESSAGE, the smaller) and decoder
_FAST_TOP: dict[int, tuple[type, int, Any]] = {}
#: classes whose decoder is being generated (a class nested in itself gets none)
_GENERATING: set[type] = set()


def _head(major: int, n: int) -> bytes:
    return _SMALL_HEADS[major][n] if n < 256 else cbor.encode_head(major, n)


def _enc_any(kind: Any, value: Any) -> bytes | None:
    """``value``'s encoding as :func:`_encode_value` and cbor2 make it, or None (then the
    general codec encodes the message)."""
    t = type(value)
    if t is bytes:
        return _head(2, len(value)) + value
    if t is str:
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return _head(3, len(raw)) + raw
    if t is int:
        return _head(0, value) if 0 <= value <= MAX_INT else None
    if t is bool:
        return b"\xf5" if value else b"\xf4"
    inner = _tuple_item(kind)
    if inner is not _NOT_A_TUPLE:
        if t is not tuple:
            return None
        parts = [_head(4, len(value))]
        for item in value:
            raw = _enc_any(inner, item)
            if raw is None:
                return None
            parts.append(raw)
        return b"".join(parts)
    if isinstance(value, Message):
        return _struct_bytes(value)
    if isinstance(value, IntEnum):
        number = int(value)
        return _head(0, number) if 0 <= number <= MAX_INT else None
    return None


def _struct_bytes(value: Message) -> bytes | None:
    """``encode_struct(value)`` by the generated encoder (kept as encode_struct keeps it)."""
    cached: bytes | None = value.__dict__.get(_ENCODED_STRUCT)
    if cached is not None:
        return cached
    cls = type(value)
    enc = _FAST_STRUCT_ENC.get(cls)
    if enc is None:
        enc = _FAST_STRUCT_ENC[cls] = _make_encoder(cls, message=False)
    if enc is _NO_FAST:
        return None
    data: bytes | None = enc(value)
    if data is not None:
        object.__setattr__(value, _ENCODED_STRUCT, data)
    return data


def _fast_kind(kind: Any) -> str | None:
    """What the generated code does with a field of ``kind``, or None when it cannot."""
    if kind is bytes:
        return "bytes"
    if kind is str:
        return "str"
    if kind is bool:
        return "bool"
    if kind is int:
        return "int"
    if isinstance(kind, type) and issubclass(kind, IntEnum):
        return "enum"
    if isinstance(kind, type) and issubclass(kind, Message) and _tuple_item(kind) is _NOT_A_TUPLE:
        return "struct"
    if _tuple_item(kind) is bytes:
        return "digests"
    return None


def _fast_fields(cls: type) -> tuple[_Field, ...] | None:
    """``cls``'s fields by key when every one can be generated, else None."""
    fields = getattr(cls, "_KEY_ORDER", None)
    if not isinstance(fields, tuple):
        return None
    for f in fields:
        if (
            type(f.key) is not int
            or not 2 <= f.key < 24
            or not f.name.isidentifier()
            or _fast_kind(f.kind) is None
            or not (f.size is None or (type(f.size) is int and 0 <= f.size < 1 << 16))
            or not (f.max_len is None or (type(f.max_len) is int and 0 <= f.max_len))
        ):
            return None
    return fields


def _make_encoder(cls: type, *, message: bool) -> Any:
    """Generate ``cls``'s encoder: the message's bytes (``message``) or the struct's, or None
    for any value it does not take as it is (see the section's comment).

    Each field's commonest value (of its declared kind; short) is written after a key and head
    worked out here; any other value goes through :func:`_enc_any`, which writes what the
    general encoder would, or gives up (None)."""
    _direct_init(cls)
    fields = _fast_fields(cls)
    type_id = getattr(cls, "TYPE", None) if message else 0
    if fields is None or type(type_id) is not int or not 0 <= type_id <= MAX_INT:
        return _NO_FAST
    names: dict[str, Any] = {
        "_enc_any": _enc_any,
        "_MAP_HEADS": _MAP_HEADS,
        "_set": object.__setattr__,
        "_ES": _ENCODED_STRUCT,
    }
    lines = ["def encode(msg):", "    c = 0"]
    if message:
        names["_TOP"] = _TOP_KEYS + _head(0, type_id)
        lines.append("    parts = [b'', _TOP]")
    else:
        lines.append("    parts = [b'']")
    for i, f in enumerate(fields):
        names[f"k{i}"] = kind = f.kind
        names[f"key{i}"] = key = bytes((f.key,))
        how = _fast_kind(kind)
        lines += [f"    v = msg.{f.name}", "    if v is not None:", "        c += 1"]
        fast: list[str] = []
        if how == "bytes" and f.size is not None:
            names[f"pre{i}"] = key + _head(2, f.size)
            fast = [f"if type(v) is bytes and len(v) == {f.size}:", f"    parts += (pre{i}, v)"]
        elif how in ("bytes", "str", "int"):
            major = {"bytes": 2, "str": 3, "int": 0}[how]
            names[f"kh{i}"] = tuple(key + _head(major, j) for j in range(256))
            if how == "bytes":
                fast = ["if type(v) is bytes and len(v) < 256:", f"    parts += (kh{i}[len(v)], v)"]
                if f.max_len is None or f.max_len >= 256:  # a Noise message with an identity
                    names[f"kl{i}"] = key + bytes((0x59,))  # a length in two bytes
                    fast += [
                        "elif type(v) is bytes and len(v) < 65536:",
                        f"    parts += (kl{i}, len(v).to_bytes(2, 'big'), v)",
                    ]
            elif how == "str":  # ASCII: as many bytes as characters
                fast = [
                    "if type(v) is str and len(v) < 256 and v.isascii():",
                    f"    parts += (kh{i}[len(v)], v.encode('ascii'))",
                ]
            else:
                fast = ["if type(v) is int and 0 <= v < 256:", f"    parts.append(kh{i}[v])"]
        elif how == "enum":
            names[f"ke{i}"] = {
                m: key + _head(0, int(m)) for m in kind if 0 <= int(m) <= MAX_INT
            }
            lines.append(f"        raw = ke{i}.get(v) if type(v) is k{i} else None")
            fast = ["if raw is not None:", "    parts.append(raw)"]
        elif how == "bool":
            names[f"kt{i}"], names[f"kf{i}"] = key + b"\xf5", key + b"\xf4"
            fast = ["if type(v) is bool:", f"    parts.append(kt{i} if v else kf{i})"]
        elif how == "struct":
            inner = _FAST_STRUCT_ENC.get(kind)
            if inner is None:
                inner = _FAST_STRUCT_ENC[kind] = _make_encoder(kind, message=False)
            if inner is not _NO_FAST:
                names[f"s{i}"] = inner
                fast = [
                    f"if type(v) is k{i}:",
                    "    raw = v.__dict__.get(_ES)",
                    "    if raw is None:",
                    f"        raw = s{i}(v)",
                    "        if raw is None:",
                    "            return None",
                    "        _set(v, _ES, raw)",
                    f"    parts += (key{i}, raw)",
                ]
        elif how == "digests" and f.size is not None:
            names[f"ka{i}"] = tuple(key + _head(4, j) for j in range(256))
            names[f"ih{i}"] = _head(2, f.size)
            lines += [
                "        ok = type(v) is tuple and len(v) < 256",
                "        if ok:",
                "            for x in v:",
                f"                if type(x) is not bytes or len(x) != {f.size}:",
                "                    ok = False",
                "                    break",
            ]
            fast = [
                "if ok:",
                f"    parts.append(ka{i}[len(v)])",
                "    if v:",
                f"        parts += (ih{i}, ih{i}.join(v))",
            ]
        generic = [
            f"raw = _enc_any(k{i}, v)",
            "if raw is None:",
            "    return None",
            f"parts += (key{i}, raw)",
        ]
        if fast:
            lines += ["        " + line for line in fast]
            lines += ["        else:", *("            " + line for line in generic)]
        else:
            lines += ["        " + line for line in generic]
    pairs = "c + 2" if message else "c"
    lines += [f"    parts[0] = _MAP_HEADS[{pairs}]", "    return b''.join(parts)"]
    return _compile(cls, "encode", lines, names)


def _compile(cls: type, what: str, lines: list[str], names: dict[str, Any]) -> Any:
    source = "\n".join(lines) + "\n"
    code = compile(source, f"<pairing/wire.py: {what} of {cls.__qualname__}>", "exec")
    exec(code, names)  # noqa: S102 - generated from the class definition only, never from input
    return names[what]


def _static_depth(cls: type, within: frozenset[type] = frozenset()) -> int:
    """How deep the maps and arrays of ``cls`` nest, at most (a struct field adds its own; a
    class nested in itself counts as too deep)."""
    if cls in within:
        return 1 << 10
    depth = 1
    for f in cls._KEY_ORDER:  # type: ignore[attr-defined]
        how = _fast_kind(f.kind)
        if how == "struct":
            depth = max(depth, 1 + _static_depth(f.kind, within | {cls}))
        elif how == "digests":
            depth = max(depth, 2)
    return depth


def _decoder(cls: type, nested: bool) -> Any:
    dec = _FAST_DEC.get((cls, nested))
    if dec is None:
        if cls in _GENERATING:
            return _NO_FAST
        _GENERATING.add(cls)
        try:
            dec = _make_decoder(cls, nested)
        finally:
            _GENERATING.discard(cls)
        _FAST_DEC[(cls, nested)] = dec
    return dec


def _long_uint(data: bytes, pos: int, n: int, first: int) -> tuple[int, int] | None:
    """An unsigned integer whose head ``first`` at ``data[pos]`` has additional information 25
    to 27 (2, 4 or 8 bytes follow), in its shortest form only: (value, position after), or
    None."""
    if not 25 <= first <= 27:
        return None
    width = 1 << (first - 24)
    end = pos + 1 + width
    if end > n:
        return None
    value = int.from_bytes(data[pos + 1 : end], "big")
    if value < 1 << (4 * width):  # would fit the head before: 256, 65,536, 2**32
        return None
    return value, end


def _uint(lines: list[str], var: str, indent: str) -> None:
    """Lines reading an unsigned integer whose head is at ``data[pos]`` into ``var``, shortest
    form only, and moving ``pos`` past it (the head's additional information 0 to 27; the
    long forms, seldom met, by :func:`_long_uint`, which keeps the generated code short)."""
    lines += [
        f"{indent}first = data[pos]",
        f"{indent}if first < 24:",
        f"{indent}    {var} = first",
        f"{indent}    pos += 1",
        f"{indent}elif first == 24:",
        f"{indent}    {var} = data[pos + 1]",
        f"{indent}    if {var} < 24:",
        f"{indent}        return None",
        f"{indent}    pos += 2",
        f"{indent}else:",
        f"{indent}    got_int = _long_uint(data, pos, n, first)",
        f"{indent}    if got_int is None:",
        f"{indent}        return None",
        f"{indent}    {var}, pos = got_int",
    ]


def _length(lines: list[str], major: int, indent: str) -> None:
    """Lines reading a string's head of major type ``major`` at ``data[pos]`` (shortest form,
    under 65,536) into ``ln``, and moving ``pos`` past it."""
    base = major << 5
    lines += [
        f"{indent}first = data[pos]",
        f"{indent}if {base} <= first < {base + 24}:",
        f"{indent}    ln = first - {base}",
        f"{indent}    pos += 1",
        f"{indent}elif first == {base + 24}:",
        f"{indent}    ln = data[pos + 1]",
        f"{indent}    if ln < 24:",
        f"{indent}        return None",
        f"{indent}    pos += 2",
        f"{indent}elif first == {base + 25}:",
        f"{indent}    ln = (data[pos + 1] << 8) | data[pos + 2]",
        f"{indent}    if ln < 256:",
        f"{indent}        return None",
        f"{indent}    pos += 3",
        f"{indent}else:",
        f"{indent}    return None",
    ]


def _make_decoder(cls: type, nested: bool) -> Any:
    """Generate ``cls``'s decoder: ``decode(data, pos, n, count)`` reads the ``count`` pairs of
    its map from ``data[pos]`` (the map's head already read) and returns (the value, the
    position after the map), or None for anything it does not take (see the section's
    comment).  A truncated input raises IndexError, which the caller takes as None.

    The value is made as :func:`_decode_body` makes it: directly, or by ``__init__`` when the
    class has checks of its own (``__post_init__``).  Such a check may raise, so a class with
    one is generated only for the outermost map (a message, or a struct decoded on its own),
    and runs it only once the map has ended exactly at the end of the data: the general
    decoder builds it last too, after every other check has passed (nested, or before the
    end, the general decoder would refuse the bytes after it first)."""
    _direct_init(cls)
    fields = _fast_fields(cls)
    if fields is None or _static_depth(cls) > cbor.MAX_DEPTH - 2:
        return _NO_FAST
    dc_fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    direct = (
        not hasattr(cls, "__post_init__")
        and {f.name for f in dc_fields} == {f.name for f in fields}
        and all(f.init for f in dc_fields)
    )
    if nested and not direct:
        return _NO_FAST
    names: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_long_uint": _long_uint}
    lines = ["def decode(data, pos, n, count):", "    got = 0"]
    if nested:  # the map's head, one byte (0xA0 to 0xB7), is just before ``pos``
        lines.append("    start = pos - 1")
    for i, f in enumerate(fields):
        how = _fast_kind(f.kind)
        v = f"v{i}"
        if f.optional:
            names[f"a{i}"] = f.default if f.has_default else None
        elif f.has_default:
            names[f"a{i}"] = f.default
        absent = ["    else:", f"        {v} = a{i}" if f"a{i}" in names else "        return None"]
        size, max_len = f.size, f.max_len
        if how == "bytes" and size is not None:
            if max_len is not None and size > max_len:
                return _NO_FAST
            names[f"pre{i}"] = prefix = bytes((f.key,)) + _head(2, size)
            lines += [
                f"    if data.startswith(pre{i}, pos):",
                f"        end = pos + {len(prefix) + size}",
                "        if end > n:",
                "            return None",
                f"        {v} = data[pos + {len(prefix)}:end]",
                "        pos = end",
                "        got += 1",
                *absent,
            ]
            continue
        lines += [f"    if pos < n and data[pos] == {f.key}:", "        pos += 1"]
        if how in ("bytes", "str"):
            _length(lines, 2 if how == "bytes" else 3, "        ")
            lines += ["        end = pos + ln", "        if end > n:", "            return None"]
            if how == "bytes":
                lines.append(f"        {v} = data[pos:end]")
            else:
                lines.append(f"        {v} = data[pos:end].decode('utf-8')")
            if size is not None:
                lines += [f"        if len({v}) != {size}:", "            return None"]
            if max_len is not None:
                lines += [f"        if len({v}) > {max_len}:", "            return None"]
            if how == "str" and f.one_line:
                # a text to be made one line is the general decoder's: a struct read here keeps
                # the bytes it was read from as its encoding, which the cleaned text is not
                lines += [f"        if not {v}.isprintable():", "            return None"]
            lines.append("        pos = end")
        elif how == "int":
            _uint(lines, v, "        ")
        elif how == "enum":
            names[f"m{i}"] = f.kind._value2member_map_
            _uint(lines, "number", "        ")
            lines += [f"        {v} = m{i}.get(number)", f"        if {v} is None:",
                      "            return None"]
        elif how == "bool":
            lines += [
                "        first = data[pos]",
                "        if first == 0xF5:",
                f"            {v} = True",
                "        elif first == 0xF4:",
                f"            {v} = False",
                "        else:",
                "            return None",
                "        pos += 1",
            ]
        elif how == "struct":
            inner = _decoder(f.kind, True)
            if inner is _NO_FAST:
                return _NO_FAST
            names[f"d{i}"] = inner
            lines += [
                "        first = data[pos]",
                "        if not 0xA0 <= first <= 0xB7:",
                "            return None",
                f"        got_inner = d{i}(data, pos + 1, n, first - 0xA0)",
                "        if got_inner is None:",
                "            return None",
                f"        {v}, pos = got_inner",
            ]
        else:  # digests: a tuple of byte strings, each exactly ``size`` or at most ``max_len``
            lines += [
                "        first = data[pos]",
                "        if 0x80 <= first <= 0x97:",
                "            items = first - 0x80",
                "            pos += 1",
                "        elif first == 0x98:",
                "            items = data[pos + 1]",
                "            if items < 24:",
                "                return None",
                "            pos += 2",
                "        else:",
                "            return None",
            ]
            if max_len is not None:
                lines += [f"        if items > {max_len}:", "            return None"]
            if size is not None and len(_head(2, size)) == 1:
                # every item a one-byte head and ``size`` bytes: the heads are checked at once,
                # as a strided slice of the data (the same items taken, the same refused)
                stride = 1 + size
                names[f"hs{i}"] = _head(2, size)
                lines += [
                    f"        end = pos + items * {stride}",
                    "        if end > n:",
                    "            return None",
                    f"        if data[pos:end:{stride}] != hs{i} * items:",
                    "            return None",
                ]
                if max_len is not None and max_len < 256:
                    # the items cut out in C: a head byte skipped, ``size`` bytes taken, per item
                    item = f"x{size}s"
                    names[f"st{i}"] = tuple(Struct("<" + item * k) for k in range(max_len + 1))
                    lines.append(f"        {v} = st{i}[items].unpack_from(data, pos)")
                else:
                    lines += [
                        f"        {v} = tuple([data[p:p + {size}]",
                        f"                     for p in range(pos + 1, end, {stride})])",
                    ]
                lines += [
                    "        pos = end",
                    "        got += 1",
                    *absent,
                ]
                continue
            lines += ["        got_items = []", "        for _ in range(items):"]
            if size is not None:
                names[f"h{i}"] = item_head = _head(2, size)
                lines += [
                    f"            if not data.startswith(h{i}, pos):",
                    "                return None",
                    f"            end = pos + {len(item_head) + size}",
                    "            if end > n:",
                    "                return None",
                    f"            got_items.append(data[pos + {len(item_head)}:end])",
                    "            pos = end",
                ]
            else:
                _length(lines, 2, "            ")
                lines += ["            end = pos + ln", "            if end > n:",
                          "                return None"]
                if max_len is not None:
                    lines += [f"            if ln > {max_len}:", "                return None"]
                lines += ["            got_items.append(data[pos:end])", "            pos = end"]
            lines.append(f"        {v} = tuple(got_items)")
        lines += ["        got += 1", *absent]
    # the instance as _decode_body makes it directly: the fields in declaration order
    order = {f.name: i for i, f in enumerate(fields)}
    values = ", ".join(f"{f.name!r}: v{order[f.name]}" for f in cls._FIELDS)  # type: ignore[attr-defined]
    lines += ["    if got != count:", "        return None"]
    if direct:
        lines += ["    msg = _new(_cls)", f"    msg.__dict__.update({{{values}}})"]
    else:  # the outermost map: its end must be the data's before the class's check may run
        lines += ["    if pos != n:", "        return None", f"    msg = _cls(**{{{values}}})"]
    if nested:
        # A struct read inside a message keeps the bytes it was read from as its encoding
        # (as encode_struct keeps the one it makes): the peer's announcement is encoded again
        # for ``th`` or ``hello_hash`` (issue 13).  They are the bytes the encoder would write,
        # as this decoder takes each field in the one form the encoder writes, keys ascending,
        # unless a field left out decodes to a value that is not None (a default the encoder
        # would write): then only when every field was there.
        names["_ES"] = _ENCODED_STRUCT
        keep = "    msg.__dict__[_ES] = data[start:pos]"
        if any(f"a{i}" in names and names[f"a{i}"] is not None for i in range(len(fields))):
            lines += [f"    if got == {len(fields)}:", "    " + keep]
        else:
            lines.append(keep)
    lines.append("    return msg, pos")
    return _compile(cls, "decode", lines, names)


def _fast_decode(data: bytes, expect: Any) -> Any:
    """:func:`decode` by the generated decoders, or None (see the section's comment)."""
    n = len(data)
    try:
        first = data[0]
        if not 0xA2 <= first <= 0xB7 or not data.startswith(_TOP_KEYS, 1):
            return None
        type_id = data[4]
        pos = 5
        if type_id >= 24:
            if type_id != 24:
                return None
            type_id = data[5]
            if type_id < 24:
                return None
            pos = 6
        top = _FAST_TOP.get(type_id)
        if top is None:
            cls = _REGISTRY.get(type_id)
            if cls is None:
                return None
            top = _FAST_TOP[type_id] = (cls, min(cls.MAX_SIZE, MAX_MESSAGE), _decoder(cls, False))
        cls, limit, dec = top
        if n > limit or dec is _NO_FAST:
            return None
        if expect is not None and not (expect is cls and type(cls) is type):
            # classes only, so that the test below has no effect of its own and the general
            # decoder's order of checks (this one before the fields) needs no keeping here
            allowed = expect if isinstance(expect, tuple) else (expect,)
            if not all(type(c) is type for c in allowed):
                return None
            if cls not in allowed and not issubclass(cls, Abort):
                return None
        got = dec(data, pos, n, first - 0xA2)
    except (IndexError, UnicodeDecodeError):
        return None
    if got is None or got[1] != n:
        return None
    return got[0]


def _fast_decode_struct(cls: type, data: bytes, max_size: Any) -> Any:
    """:func:`decode_struct` by the generated decoders, or None."""
    n = len(data)
    if not isinstance(cls, type) or type(max_size) is not int or n > max_size:
        return None
    dec = _FAST_DEC.get((cls, False)) or _decoder(cls, False)
    if dec is _NO_FAST:
        return None
    try:
        first = data[0]
        if not 0xA0 <= first <= 0xB7:
            return None
        got = dec(data, 1, n, first - 0xA0)
    except (IndexError, UnicodeDecodeError):
        return None
    if got is None or got[1] != n:
        return None
    return got[0]


def registry() -> dict[int, type[Message]]:
    """Every registered message class by type id (for tests and documentation)."""
    return dict(_REGISTRY)


@message(type_id=1, max_size=512)
class Abort(Message):
    """Sent by a side that stops a protocol: the error code and a reason a person can read."""

    code: ErrorCode = field(2)
    reason: str = field(3, max_len=200, one_line=True)
