"""What the key server's store must keep of PNs made before schema version 4, whichever
database holds them (SQLite: tests/test_ttp_store.py; PostgreSQL: tests/test_ttp_postgres.py).

A PN is its gateway's (docs/security.md, the PN section, item 5): after the migration each PN
and its members sit under their gateway, LocalEUKeys sealed before still open, another gateway
may register the same id and the owner extends its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from pairkit.pairing.cpns import KeySource, ServerInventory, ServerMember, SetupType
from pairkit.pairing.errors import NotFoundError


def check_pns_kept_under_their_gateways(
    s: Any, *, gws: tuple[bytes, bytes], member: bytes, ids: tuple[bytes, bytes],
) -> None:
    """``s`` (a store just migrated) held PN ``ids[0]`` of gateway ``gws[0]`` and PN
    ``ids[1]`` of ``gws[1]``, each with ``member`` ("b", its LocalEUKey the PN id itself)."""
    (a, c), b, (one, two) = gws, member, ids
    assert s.pn_keys() == [(a, one), (c, two)]
    assert [m["name"] for m in s.pn(a, one).members] == ["b"]
    assert s.local_eukey(a, one, b) == one and s.local_eukey(c, two, b) == two
    with pytest.raises(NotFoundError):
        s.pn(c, one)
    s.register_pn(ServerInventory(one, c, "other", SetupType.ALL, (
        ServerMember(b, "b", 1, (), KeySource.LOCAL_EUKEY, b"\x0c" * 32),
    )), 2.0)
    s.register_pn(ServerInventory(one, a, "gw", SetupType.ALL, (
        ServerMember(c, "c", 0, (), KeySource.PREASSIGNED, None),
    )), 3.0)
    assert [m["name"] for m in s.pn(a, one).members] == ["b", "c"]
    assert s.local_eukey(a, one, b) == one and s.local_eukey(c, one, b) == b"\x0c" * 32
