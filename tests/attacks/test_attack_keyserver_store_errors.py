"""What a device learns when the key server's database fails (issue 17's rule: no third-party
error text, no path, reaches anyone but the operator; attack review of the registration's wait,
"other observation").

A key server whose store fails (SQLite busy past its timeout, PostgreSQL down) answered the
device with its own error text in the Abort: the database's words ("database is locked") and,
for PostgreSQL, where the database is (host, port, name); a PN gateway then relayed that reason
to every element of its setup, strangers included.  Played over TLS to the real key server on
127.0.0.1, its SQLite database held by another writer past the store's busy timeout.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from pairkit.pairing.errors import PairingError
from pairkit.pairing.ttp import IntentRole
from pairkit.ttp import enrol, request_key
from tests.ttp_harness import identity, running_server


async def test_a_device_is_not_told_what_the_key_servers_database_said(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        for d in (a, b):
            await enrol(h.address, h.ca, d, eukey=os.urandom(32))
        holder = sqlite3.connect(h.dir.db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            with pytest.raises(PairingError) as caught:
                await asyncio.wait_for(request_key(
                    h.address, h.ca, a, peer_id=b.device_id, context=bytes(32),
                    role=IntentRole.GUEST, wait=1,
                ), 30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        text = str(caught.value)
        assert "locked" not in text and "sqlite" not in text.lower(), text
        assert str(h.dir.root) not in text and "ttp.sqlite3" not in text, text
        assert "database" in text or "try again" in text, text
