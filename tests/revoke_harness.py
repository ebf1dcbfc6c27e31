"""What revoking a device must do to the key server's store, whichever database holds it
(SQLite: tests/test_ttp_store.py; PostgreSQL: tests/test_ttp_postgres.py), and the texts a
device reads about it (tests/test_ttp_revoke.py).

The attacker holds a revoked device's static key (a lost or stolen device, a leaked key): she
must not enrol it again, get a ``ttp`` key with it or about it, nor use its PN registrations or
factory key; the devices that name it must learn no more than "not enrolled" tells them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pairkit.pairing.cpns import KeySource, ServerInventory, ServerMember, SetupType
from pairkit.pairing.errors import NotFoundError, RefusedError
from pairkit.pairing.ttp import DeviceRecord, IntentRole
from tests.cli_helpers import ROOT, assert_no_traceback, cli_env
from tests.ttp_harness import TTP_CLI

#: what a revoked device is told when it enrols again
REVOKED = "this device was revoked by the key server's administrator"
#: what a device whose own intent fails is told (revoked or never enrolled: the same words)
NOT_ENROLLED = "this device is not enrolled with the key server; run 'pairkit ttp enrol' first"


def peer_not_enrolled(device_id: bytes) -> str:
    """What a device whose intent names a device the server does not serve is told."""
    return f"device {device_id.hex()[:16]} is not enrolled with this key server"


async def revoke_cli(directory: Path, device: str, *extra: str) -> tuple[int, str, str]:
    """``pairkit ttp revoke DEVICE --dir DIRECTORY EXTRA...`` as a process of its own, with no
    terminal: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *TTP_CLI, "revoke", device, "--dir", str(directory), *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(None),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert_no_traceback(f"ttp revoke {device}", err.decode())
    return proc.returncode or 0, out.decode(), err.decode()


A, B, C = (bytes([n]) * 16 for n in (0x0A, 0x0B, 0x0C))
CTX, CTX2 = b"\x09" * 32, b"\x0e" * 32
PN_A, PN_C = b"\x71" * 16, b"\x72" * 16


def rec(device_id: bytes, name: str) -> DeviceRecord:
    # (the store does not recompute ids; a signing key of large order)
    return DeviceRecord(device_id, name, device_id * 2, b"\x05" * 32)


def check_revoke(s: Any) -> None:
    """``s`` (an empty store): A (a factory key, the gateway of PN_A, a member of C's PN_C),
    B and C enrolled, intents from, toward and already matched with A; then A is revoked."""
    s.enrol(rec(A, "lost phone"), b"\xaa" * 32, 1.0)
    s.enrol(rec(B, "b"), b"\xbb" * 32, 1.0)
    s.enrol(rec(C, "c"), None, 1.0)
    s.register_pn(ServerInventory(PN_A, A, "lost phone", SetupType.ALL, (
        ServerMember(B, "b", 1, (), KeySource.LOCAL_EUKEY, b"\x1b" * 32),
    )), 2.0)
    s.register_pn(ServerInventory(PN_C, C, "c", SetupType.ALL, (
        ServerMember(A, "lost phone", 1, (), KeySource.LOCAL_EUKEY, b"\x1a" * 32),
        ServerMember(B, "b", 1, (), KeySource.LOCAL_EUKEY, b"\x1c" * 32),
    )), 2.0)
    kw = {"now": 3.0, "expires": 100.0}
    own = s.post_intent(A, B, CTX, IntentRole.HOST, **kw)             # A's own, waiting
    toward = s.post_intent(C, A, CTX, IntentRole.GUEST, **kw)         # C names A, waiting
    matched = s.post_intent(B, A, CTX2, IntentRole.GUEST, **kw)       # B names A ...
    assert type(s.post_intent(A, B, CTX2, IntentRole.HOST, **kw)).__name__ == "Matched"
    # ... and A matched it: B's key about A waits, sealed, for B to take it
    assert s.pending_count() == 3

    with pytest.raises(NotFoundError, match="no device"):
        s.revoke(b"\x99" * 16, 4.0)
    done = s.revoke(A, 4.0)
    assert (done.device_id, done.name, done.revoked_at) == (A, "lost phone", 4.0)
    assert (done.intents, done.pns, done.memberships, done.eukey) == (3, 1, 1, True)
    assert "aa" * 8 not in repr(done)

    # Gone from what the server serves and lists, remembered as revoked
    assert s.device(A) is None and not s.has_eukey(A)
    assert [d["id"] for d in s.devices()] == [B.hex(), C.hex()]
    assert s.device_count() == 2
    assert s.revoked() == [{"id": A.hex(), "name": "lost phone", "revoked_at": 4.0}]
    # No intent from, toward or matched with it is left; the one matched is not delivered
    assert s.pending_count() == 0
    for row in (own.row, toward.row, matched.row):
        with pytest.raises(RefusedError):
            s.take_match(row)
    # Its factory key and its PN registrations are gone, link keys with them
    assert s.eukeys((A, B)) == {B: b"\xbb" * 32}
    assert s.pn_keys() == [(C, PN_C)]
    assert [m["name"] for m in s.pn(C, PN_C).members] == ["b"]
    assert s.local_eukey(C, PN_C, A) is None
    assert s.local_eukey(C, PN_C, B) == b"\x1c" * 32

    # The holder of its key cannot enrol it again, whatever it gives
    for again in (rec(A, "lost phone"), rec(A, "someone else")):
        with pytest.raises(RefusedError, match=f"^{REVOKED}$"):
            s.enrol(again, b"\xcc" * 32, 5.0)
    assert s.device(A) is None and s.eukeys((A,)) == {}
    # No intent from it, nor toward it, is stored or matched
    with pytest.raises(NotFoundError, match=f"^{NOT_ENROLLED}$"):
        s.post_intent(A, B, CTX, IntentRole.HOST, **kw)
    with pytest.raises(NotFoundError, match=f"^{peer_not_enrolled(A)}$"):
        s.post_intent(B, A, CTX, IntentRole.GUEST, **kw)
    assert s.pending_count() == 0
    # Nor is it registered in a PN again, as a gateway or as a member
    with pytest.raises(NotFoundError):
        s.register_pn(ServerInventory(PN_A, A, "lost phone", SetupType.ALL, (
            ServerMember(B, "b", 1, (), KeySource.LOCAL_EUKEY, b"\x1b" * 32),)), 6.0)
    with pytest.raises(NotFoundError):
        s.register_pn(ServerInventory(PN_C, C, "c", SetupType.ALL, (
            ServerMember(A, "lost phone", 1, (), KeySource.LOCAL_EUKEY, b"\x1a" * 32),)), 6.0)
    assert s.pn_keys() == [(C, PN_C)] and s.local_eukey(C, PN_C, A) is None
    # Revoked once: again is "not found", and it stays revoked
    with pytest.raises(NotFoundError, match="revoked already"):
        s.revoke(A, 7.0)
    assert [r["revoked_at"] for r in s.revoked()] == [4.0]
    # The others are served as before
    assert s.enrol(dataclasses.replace(rec(B, "b2")), None, 8.0) is True
    assert type(s.post_intent(B, C, CTX, IntentRole.HOST, **kw)).__name__ == "Pending"


def check_a_revoked_ids_row_is_not_served(
    s: Any, put_row: Callable[[DeviceRecord, bytes], None]
) -> None:
    """``s`` (an empty store): A is revoked, then ``put_row(record, sealed_eukey)`` writes a
    row for A in ``devices`` again, as a server of an earlier pairkit, still running on the
    database during an upgrade, enrols it (it knows no ``revoked`` table).  ``revoked`` is
    what counts (atk20r 4): no key is drawn for A nor about it, its factory key is not given
    out, it joins no PN and is not looked up as enrolled (certificates, the server's checks)."""
    s.enrol(rec(A, "lost phone"), b"\xaa" * 32, 1.0)
    s.enrol(rec(B, "b"), b"\xbb" * 32, 1.0)
    s.enrol(rec(C, "c"), None, 1.0)
    s.revoke(A, 2.0)
    put_row(rec(A, "lost phone"), s._sealer.seal(b"\xaa" * 32, "eukey", A))

    assert s.device(A) is None
    assert s.enrolled(A, B) == {B}
    assert [d["id"] for d in s.devices()] == [B.hex(), C.hex()] and s.device_count() == 2
    assert [r["id"] for r in s.revoked()] == [A.hex()]
    kw = {"now": 3.0, "expires": 100.0}
    with pytest.raises(NotFoundError, match=f"^{peer_not_enrolled(A)}$"):
        s.post_intent(B, A, CTX, IntentRole.HOST, **kw)
    with pytest.raises(NotFoundError, match=f"^{NOT_ENROLLED}$"):
        s.post_intent(A, B, CTX, IntentRole.GUEST, **kw)
    assert s.pending_count() == 0
    assert s.eukeys((A, B)) == {B: b"\xbb" * 32}
    with pytest.raises(NotFoundError):
        s.register_pn(ServerInventory(PN_A, A, "lost phone", SetupType.ALL, (
            ServerMember(B, "b", 1, (), KeySource.LOCAL_EUKEY, b"\x1b" * 32),)), 4.0)
    with pytest.raises(NotFoundError):
        s.register_pn(ServerInventory(PN_C, C, "c", SetupType.ALL, (
            ServerMember(A, "lost phone", 1, (), KeySource.LOCAL_EUKEY, b"\x1a" * 32),)), 4.0)
    assert s.pn_keys() == []
    # Its enrolment is refused still; the others are served as before
    with pytest.raises(RefusedError, match=f"^{REVOKED}$"):
        s.enrol(rec(A, "lost phone"), None, 5.0)
    assert type(s.post_intent(B, C, CTX, IntentRole.HOST, **kw)).__name__ == "Pending"
