"""Attacks on the hello response (issue 14, item 3): a host says its name, methods and
capabilities before any join request, so a person can pick "Paul's phone" by name.

The name is a claim.  What it must not buy an attacker:

* a host that calls itself "Paul's phone" in its hello response and pairs as another identity:
  the guest checks, once the pairing proved who the host is, that the proven identity carries
  the name it was shown (``CloudGuest.check_name``);
* an on-path attacker that rewrites the name on the way: the hello response is part of the
  cloud step, hashed into the pairing's transcript (docs/protocol.md §2), so the pairing fails;
* a stranger reading a private host's name: a host says nothing of itself to a device it does
  not know unless its visibility window is open.

Each side stores nothing when it fails.  Real links: a pairkit host process behind a TCP proxy,
a malicious host built from the machines on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest

import pairkit
from pairkit.keystore import Argon2Params
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudReply, Grant, Role
from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.service import Membership
from tests.attack_harness import (
    Proxy,
    address_of,
    as_frame,
    evil_host,
    message_of,
    open_ks,
)
from tests.cli_helpers import Lab

PIN = "482913"


def george(tmp_path: Path) -> pairkit.Device:
    return pairkit.Device.create(tmp_path / "george.keystore", "a passphrase", name="George",
                                 kdf=Argon2Params.cheapest())


async def test_a_host_that_shows_one_name_and_pairs_as_another_is_refused(
    tmp_path: Path,
) -> None:
    mallory = await evil_host(Grant(Role.GUEST, 600), lambda s: Membership(role=Role.GUEST),
                              says_name="Paul's phone")
    try:
        me = george(tmp_path)
        shown = await me.ask(mallory.target)
        assert shown is not None and shown.name == "Paul's phone"  # the lie is told...
        mallory.state.set_pin(PIN)
        with pytest.raises(AuthenticationError, match="said it was \"Paul's phone\" but paired"):
            await me.join(mallory.target, pin=PIN, expect_name="Paul's phone")
        mallory.state.set_pin(PIN)
        with pytest.raises(AuthenticationError, match="paired as 'Evil host'"):
            await me.join(mallory.target, pin=PIN)  # ...and caught with or without a name
    finally:
        await mallory.close()
    assert me.peers() == []


def rename_host(new: str):  # type: ignore[no-untyped-def]
    def hook(direction: str, index: int, piece: bytes) -> bytes | None:
        if direction != "h2g":
            return piece
        with contextlib.suppress(Exception):
            msg = message_of(piece)
            if msg is not None and isinstance(m := wire.decode(msg), CloudReply):
                if m.name is not None:
                    return as_frame(dataclasses.replace(m, name=new).encode())
        return piece

    return hook


async def test_a_name_rewritten_on_the_way_breaks_the_pairing(lab: Lab, tmp_path: Path) -> None:
    paul = lab.device("paul")
    host = await lab.host(paul, "-m", "pin", "--yes", "--json", "--pin", PIN)
    proxy = await Proxy(address_of(host), rename_host("Paul's TV")).start()
    me = george(tmp_path)
    try:
        shown = await me.ask(proxy.target)
        assert shown is not None and shown.name == "Paul's TV"  # what the attacker shows
        with pytest.raises(PairingError):
            await me.join(proxy.target, pin=PIN, expect_name="Paul's TV")
    finally:
        await proxy.close()
    rewritten = [f for c, d, f in proxy.frames if c == 1 and d == "h2g"]
    assert any(rename_host("Paul's TV")("h2g", 0, f) != f for f in rewritten), \
        "the hello response never passed the proxy"
    assert me.peers() == []
    # the host is not fooled either: the guest failed there too, and nothing was stored
    await host.wait_for(r"error: guest .*(PIN|transcript|authentic)")
    assert not any(p.name == "George" for p in open_ks(paul).peers())
