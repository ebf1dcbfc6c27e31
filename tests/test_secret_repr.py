"""No secret in any repr (docs/security.md, rule 8): every wire message field that can carry key
material or a cloud secret is declared ``secret`` and stays out of ``repr()`` and ``str()``.

The list of such fields is found by name, so a new field called ``key``, ``secret``, ``sk``,
``psk``, ``eukey`` or ``*_key``/``*private*`` that is not declared secret fails here (public keys
and wrapped, already encrypted keys are listed as exceptions, each with the reason).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from pairkit.pairing import cloud, cpns, groups, messages, service, ttp, wire

# imported by name: run alone, this module must not rely on others having imported them
MODULES = [messages, service, ttp, cpns, groups, cloud]
SECRET_NAME = re.compile(r"^(key|secret|sk|psk|eukey|session_key)$|private|_secret$")
#: fields whose names look secret but hold public or already-encrypted values (none today;
#: CPNS's ``wrapped_key``/``key_for_*`` are AES-wrapped and do not match the pattern)
PUBLIC: dict[tuple[str, str], str] = {}


def message_classes() -> list[type]:
    out = []
    for module in MODULES:
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, wire.Message)
                    and dataclasses.is_dataclass(value) and value is not wire.Message):
                out.append(value)
    return sorted(set(out), key=lambda c: c.__name__)


SECRET_FIELDS = [
    (cls, f.name)
    for cls in message_classes()
    for f in dataclasses.fields(cls)
    if SECRET_NAME.search(f.name) and (cls.__name__, f.name) not in PUBLIC
]


def test_the_secret_fields_are_found() -> None:
    names = {(c.__name__, n) for c, n in SECRET_FIELDS}
    assert {("Accept", "key"), ("Membership", "secret"), ("SkDelivery", "sk")} <= names


@pytest.mark.parametrize(("cls", "name"), SECRET_FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n in SECRET_FIELDS])
def test_a_secret_field_is_hidden_from_repr(cls: type, name: str) -> None:
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    assert f.repr is False, f"{cls.__name__}.{name} carries a secret but shows in repr()"
    assert f.metadata.get("secret") is True


def test_a_message_with_a_secret_prints_none_of_it() -> None:
    secret = bytes.fromhex("a5" * 32)
    m = service.Membership(role=cloud.Role.MEMBER, cloud_id="c", secret=secret)
    for text in (repr(m), str(m)):
        assert secret.hex() not in text and repr(secret) not in text and "a5a5" not in text
    accept = messages.Accept(
        hello=messages.Announce(caps=0, methods=0, method=messages.Method.CLEAR,
                                        name="x", nonce=bytes(16)),
        key=secret,
    )
    assert "\\xa5" not in repr(accept)
    # and the wire still carries it, of course
    assert wire.decode(accept.encode()).key == secret
