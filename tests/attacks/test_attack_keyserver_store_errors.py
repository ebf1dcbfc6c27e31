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

from pairkit.cpns import PneLink, run_gateway, run_pne
from pairkit.pairing.cpns import GatewayConfig, PneCaps, PneConfig, SetupType
from pairkit.pairing.errors import PairingError
from pairkit.pairing.ttp import IntentRole
from pairkit.transports.loopback import loopback_pair
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


async def test_elements_are_not_told_that_a_sealed_key_in_the_database_did_not_open(
    tmp_path: Path,
) -> None:
    """Finding of this review (fixed): the store's other error, a sealed value in the database that
    does not open (the operator replaced ``seal.key``, or someone altered the database) is an
    ``AuthenticationError`` whose text is the operator's ("a sealed eukey in the key server's
    database did not open (wrong seal.key, or the database was altered)"), not a
    ``StoreError``: the key server sends it as is, and a PN gateway relays it to every element
    of its setup. One element's row altered here; a gateway and two elements over loopback PAN
    links, TLS to the real key server."""
    async with running_server(tmp_path / "srv") as h:
        gw, pnes = identity("gateway"), [identity(f"pne{k}") for k in range(2)]
        eukeys = {d.device_id: os.urandom(32) for d in (gw, *pnes)}
        for d in (gw, *pnes):
            await enrol(h.address, h.ca, d, eukey=eukeys[d.device_id])
        db = sqlite3.connect(h.dir.db, isolation_level=None)
        db.execute("UPDATE devices SET eukey_sealed = randomblob(60) WHERE device_id = ?",
                   (pnes[1].device_id,))
        db.close()
        links = [loopback_pair(names=("gw", f"pne{k}")) for k in range(2)]
        runs = [
            run_pne(links[k].b, PneConfig(
                p.device_id, p.name, eukeys[p.device_id], caps=PneCaps.UI, step_timeout=5.0,
                **({"setup_type": SetupType.ALL, "invited": ()} if k == 0 else {}),
            ), listen=k != 0)
            for k, p in enumerate(pnes)
        ]
        gateway = run_gateway(
            {k: PneLink(links[k].a, p.device_id) for k, p in enumerate(pnes)}, me=gw,
            config=GatewayConfig(gw.device_id, "gateway", eukeys[gw.device_id],
                                 collect_window=2.0, step_timeout=5.0),
            server=h.address, ca_file=h.ca,
        )
        outcomes = await asyncio.wait_for(
            asyncio.gather(gateway, *runs, return_exceptions=True), 30)
        for pair in links:
            await pair.aclose()
    texts = [str(o) for o in outcomes if isinstance(o, PairingError)]
    assert texts, outcomes
    for text in texts:
        assert "seal" not in text and "altered" not in text, text
