"""A relay between a device and the key server, holding a certificate the pinned CA signed for
the name the device dials (attack review atk15c; docs/security.md "The key server";
pairing/ttp.py step 1, runtime/ttp.py).

The device trusts one CA and checks the name (tests/test_ttp_server.py refuses another CA's
certificate and one for another host).  A certificate the same CA signed for the name the device
dials passes both checks: another server of the same operator, or a sibling certificate that
leaked.  Such a relay decrypts what the device sends and could forward it to the real key
server under its own TLS session.  The device's proof of its identity key binds the SHA-256 of
the certificate its own TLS session saw, so the real server, checking it against its own
certificate, refuses it: a relay cannot enrol a device, or state an intent for it, at the real
server.  Until now this was checked on the machines in memory only
(tests/test_ttp_machines.py::test_a_proof_made_for_another_server_certificate_fails); here over
real TLS on TCP, the relay forwarding every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pairkit.keyserver.certs import load_ca_key, load_cert, make_server_cert
from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.ttp import IntentRole
from pairkit.transports.tcp import parse_host_port
from pairkit.ttp import client_context, enrol, request_key

from ..ttp_harness import ServerHarness, running_server

STEP = 10.0


class Relay:
    """A TLS server on 127.0.0.1 with a certificate the key server's CA signed for 127.0.0.1,
    forwarding every byte it decrypts to the real key server over its own TLS session."""

    def __init__(self, srv: ServerHarness, root: Path) -> None:
        self.srv = srv
        ca_key = load_ca_key(srv.dir)
        assert ca_key is not None
        key, cert = make_server_cert(ca_key, load_cert(srv.ca), ("127.0.0.1",),
                                     datetime.datetime.now(datetime.UTC))
        root.mkdir(parents=True, exist_ok=True)
        (root / "relay.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (root / "relay.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(root / "relay.pem", root / "relay.key")
        self.forwarded = 0  #: connections relayed to the real server
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = parse_host_port(self.srv.address)
        up_r, up_w = await asyncio.open_connection(
            host, port, ssl=client_context(self.srv.ca), server_hostname=host
        )
        self.forwarded += 1

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        tasks = {asyncio.ensure_future(pump(reader, up_w)),
                 asyncio.ensure_future(pump(up_r, writer))}
        self.tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.difference_update(tasks)


@contextlib.asynccontextmanager
async def relayed(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with running_server(tmp_path / "srv") as srv:
        relay = Relay(srv, tmp_path / "relay")
        address = await relay.start()
        try:
            yield srv, relay, address
        finally:
            await relay.close()


async def test_a_relay_with_a_certificate_of_the_same_ca_cannot_enrol_a_device(
    tmp_path: Path,
) -> None:
    """George dials the relay (its certificate passes his pinned CA and names the host he
    dials): the real key server refuses his proof, and nothing is enrolled there; dialled
    directly, he enrols."""
    george = LocalIdentity.generate("George")
    async with relayed(tmp_path) as (srv, relay, address):
        with pytest.raises(AuthenticationError, match="did not prove"):
            await enrol(address, srv.ca, george, timeout=STEP)
        assert relay.forwarded >= 1, "the relay never reached the real server"
        assert srv.server.store.device(george.device_id) is None
        done = await enrol(srv.address, srv.ca, george, timeout=STEP)
        assert not done.updated


async def test_a_relay_with_a_certificate_of_the_same_ca_cannot_state_an_intent(
    tmp_path: Path,
) -> None:
    """George and Paul are enrolled; George's intent toward Paul goes through the relay and
    Paul's straight to the server in the same context: no key is handed to either through
    the relay, George's intent being refused at its proof."""
    george, paul = LocalIdentity.generate("George"), LocalIdentity.generate("Paul")
    async with relayed(tmp_path) as (srv, relay, address):
        for me in (george, paul):
            await enrol(srv.address, srv.ca, me, timeout=STEP)
        context = bytes(32)
        through_relay = asyncio.ensure_future(request_key(
            address, srv.ca, george, peer_id=paul.device_id, context=context,
            role=IntentRole.GUEST, wait=2, timeout=STEP,
        ))
        direct = asyncio.ensure_future(request_key(
            srv.address, srv.ca, paul, peer_id=george.device_id, context=context,
            role=IntentRole.HOST, wait=2, timeout=STEP,
        ))
        got = await asyncio.gather(through_relay, direct, return_exceptions=True)
        assert isinstance(got[0], AuthenticationError), got[0]
        assert isinstance(got[1], PairingError), got[1]  # Paul's intent waited in vain
        assert relay.forwarded >= 1
