"""Attacks on the key server's connection handling (issue 13's speed work changed it: TLS in
memory, no session tickets): a connection held open without TLS, a TLS session offered again
from another connection, a proof of possession replayed on a new connection.

Each against a real server on 127.0.0.1 (tests/ttp_harness.py), over real TLS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import ssl
from pathlib import Path

from pairkit.pairing import wire
from pairkit.pairing.crypto import x25519
from pairkit.pairing.errors import ErrorCode
from pairkit.pairing.ttp import (
    EnrolDone,
    EnrolRequest,
    TtpChallenge,
    TtpHello,
    TtpProof,
    auth_proof,
)
from pairkit.ttp import client_context, connect, enrol
from tests.ttp_harness import FAST, identity, running_server


async def _until(condition: object, seconds: float = 10.0) -> bool:
    """Poll ``condition()`` until it holds or ``seconds`` pass (no time is asserted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


async def test_a_connection_held_open_without_tls_is_dropped_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    limits = dataclasses.replace(FAST, handshake_timeout=0.5)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        host, port = h.address.rsplit(":", 1)
        held = [await asyncio.open_connection(host, int(port)) for _ in range(5)]
        assert await _until(lambda: h.server.admission.total == 5)
        for reader, _ in held:  # each is hung up on at the handshake's deadline
            assert await asyncio.wait_for(reader.read(), 10) == b""
        assert await _until(lambda: h.server.admission.total == 0)
        for _, writer in held:
            writer.close()
        await enrol(h.address, h.ca, identity("a"))  # the server still serves


def _handshake(address: str, ctx: ssl.SSLContext, session: ssl.SSLSession | None
               ) -> tuple[ssl.SSLSession | None, bool, bool]:
    """One blocking TLS handshake (offering ``session``); (session, reused, has a ticket)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host, session=session) as tls:
        tls.settimeout(0.5)
        try:  # TLS 1.3 sends its tickets after the handshake: read long enough to get them
            tls.recv(1)
        except (TimeoutError, ssl.SSLError, OSError):
            pass
        got = tls.session
        return got, tls.session_reused, bool(got is not None and got.has_ticket)


async def test_no_tls_session_can_be_resumed_from_another_connection(tmp_path: Path) -> None:
    """The server issues no session tickets: a session taken from one connection (another
    client's, say) resumes nothing, and every connection makes a full handshake (the server's
    certificate checked each time)."""
    async with running_server(tmp_path / "srv") as h:
        ctx = client_context(h.ca)
        first, reused, ticket = await asyncio.to_thread(_handshake, h.address, ctx, None)
        assert not reused and not ticket
        _, reused, ticket = await asyncio.to_thread(_handshake, h.address, ctx, first)
        assert not reused and not ticket


async def _recv(conn: object) -> wire.Message:
    data = await asyncio.wait_for(conn.pipe.recv(), 5)  # type: ignore[attr-defined]
    return wire.decode(data)


async def test_a_replayed_proof_does_not_open_a_new_connection(tmp_path: Path) -> None:
    """Someone who recorded a device's hello and proof (they are inside TLS, but say the
    device's own logs leaked) and sends them on a connection of their own: the challenge is
    fresh (nonce and ephemeral key), so the old proof fails, and counts toward the lockout."""
    async with running_server(tmp_path / "srv") as h:
        me = identity("victim")
        await enrol(h.address, h.ca, me)
        first = await connect(h.address, h.ca)
        nonce_c = os.urandom(16)
        hello = TtpHello(me.static_public, nonce_c, me.name)
        await first.pipe.send(hello.encode())
        challenge = await _recv(first)
        assert isinstance(challenge, TtpChallenge)
        proof = TtpProof(auth_proof(
            x25519(me.static_key(), challenge.eph), static=me.static_public,
            eph=challenge.eph, nonce_c=nonce_c, nonce_s=challenge.nonce, cert=first.cert))
        request = EnrolRequest(signing=me.signing_public)
        await first.pipe.send(proof.encode())
        await first.pipe.send(request.encode())
        assert isinstance(await _recv(first), EnrolDone)  # the genuine exchange works
        await first.close()

        replay = await connect(h.address, h.ca)
        await replay.pipe.send(hello.encode())
        fresh = await _recv(replay)
        assert isinstance(fresh, TtpChallenge)
        assert fresh.nonce != challenge.nonce and fresh.eph != challenge.eph
        await replay.pipe.send(proof.encode())
        await replay.pipe.send(request.encode())
        answer = await _recv(replay)
        assert isinstance(answer, wire.Abort) and answer.code == ErrorCode.AUTH_FAILED
        await replay.close()
        assert h.server.stats["failed"] >= 1
        assert h.server.admission._failures  # counted toward the address's lockout


def test_the_server_context_issues_no_tickets(tmp_path: Path) -> None:
    from pairkit.keyserver.certs import init_server_dir
    from pairkit.keyserver.server import server_context

    ctx = server_context(init_server_dir(tmp_path / "srv"))
    assert ctx.num_tickets == 0
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
