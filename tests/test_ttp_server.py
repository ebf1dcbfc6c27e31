"""The key server for real: TLS 1.3 on 127.0.0.1, SQLite, method ttp end to end, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pairkit.keyserver.certs import init_server_dir, make_server_cert
from pairkit.keyserver.server import Limits, TtpServer
from pairkit.keyserver.store import StoreError
from pairkit.pairing.errors import (
    AuthenticationError,
    LockedOutError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    RefusedError,
    TransportError,
)
from pairkit.pairing.ttp import EnrolDone, EnrolRequest, IntentRole, TtpClient, TtpLinkConfig
from pairkit.securelink import SecureLink, confirm
from pairkit.transports.tcp import TcpListener, tcp_connect
from pairkit.ttp import (
    TtpTrustError,
    call,
    connect,
    enrol,
    request_key,
    ttp_guest_session,
    ttp_host_session,
)
from tests.ttp_harness import FAST, identity, running_server

CTX = b"\x42" * 32


async def test_method_ttp_end_to_end_over_tcp(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        paul, george = identity("Paul's laptop"), identity("George's laptop")
        await asyncio.gather(enrol(h.address, h.ca, paul), enrol(h.address, h.ca, george))
        listener = await TcpListener.bind("127.0.0.1", 0)
        try:
            accepted = asyncio.ensure_future(listener.accept(5))
            guest_link = await tcp_connect("127.0.0.1", listener.port)
            host_link = await accepted
            config = TtpLinkConfig(wait=5, step_timeout=5)
            host_session, guest_session = await asyncio.gather(
                ttp_host_session(host_link, me=paul, peer_hint=None, server=h.address,
                                 ca_file=h.ca, config=config),
                ttp_guest_session(guest_link, me=george, peer_hint=paul.device_id,
                                  server=h.address, ca_file=h.ca, config=config),
            )
            assert host_session.fingerprint == guest_session.fingerprint
            assert host_session.peer.name == "George's laptop"
            assert guest_session.peer.static_public == paul.static_public
            # The secure channel opens on the devices' own link.
            hs, gs = SecureLink(host_link, host_session), SecureLink(guest_link, guest_session)
            await asyncio.gather(confirm(hs), confirm(gs))
            await gs.send(b"hello Paul")
            assert await hs.recv(5) == b"hello Paul"
            await asyncio.gather(hs.close(), gs.close())
        finally:
            await listener.close()
        assert h.server.stats["deliveries"] == 1
        assert await h.server.db(h.server.store.pending_count) == 0  # nothing left behind


async def _pair_keys(h, a, b, *, a_peer=None, b_peer=None, a_ctx=CTX, b_ctx=CTX,
                     a_role=IntentRole.HOST, b_role=IntentRole.GUEST, wait=5):
    return await asyncio.gather(
        request_key(h.address, h.ca, a, peer_id=a_peer or b.device_id, context=a_ctx,
                    role=a_role, wait=wait),
        request_key(h.address, h.ca, b, peer_id=b_peer or a.device_id, context=b_ctx,
                    role=b_role, wait=wait),
        return_exceptions=True,
    )


async def test_matching_intents_get_the_same_key(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        ka, kb = await _pair_keys(h, a, b)
        assert ka.sk == kb.sk and ka.match_id == kb.match_id
        assert ka.peer.device_id == b.device_id and kb.peer.device_id == a.device_id
        assert ka.peer.static == b.static_public


@pytest.mark.parametrize("mismatch", ["peer", "context", "role"])
async def test_intents_that_do_not_match_time_out(tmp_path: Path, mismatch: str) -> None:
    async with running_server(tmp_path / "srv") as h:
        a, b, c = identity("a"), identity("b"), identity("c")
        for dev in (a, b, c):
            await enrol(h.address, h.ca, dev)
        kw = {"peer": {"b_peer": c.device_id}, "context": {"b_ctx": b"\x43" * 32},
              "role": {"b_role": IntentRole.HOST}}[mismatch]
        loop = asyncio.get_running_loop()
        started = loop.time()
        ra, rb = await _pair_keys(h, a, b, wait=1, **kw)
        assert isinstance(ra, PairingTimeout) and isinstance(rb, PairingTimeout)
        assert "no matching intent" in str(ra)
        assert loop.time() - started < 4
        assert h.server.stats["deliveries"] == 0
        assert await h.server.db(h.server.store.pending_count) == 0


async def test_an_intent_alone_times_out(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        with pytest.raises(PairingTimeout, match="within 1 s"):
            await request_key(h.address, h.ca, a, peer_id=b.device_id, context=CTX,
                              role=IntentRole.HOST, wait=1)
        assert h.server.stats["timeouts"] == 1


NOT_ENROLLED = "this device is not enrolled with the key server; run 'pairkit ttp enrol' first"


async def test_intent_toward_an_unknown_device(tmp_path: Path) -> None:
    """An intent from or toward a device the server does not know is refused, and stores
    nothing (not even for a moment: no intent row is ever written)."""
    async with running_server(tmp_path / "srv") as h:
        a, stranger = identity("a"), identity("stranger")
        written: list[str] = []

        def watch() -> None:  # every statement the store's connection runs, from now on
            h.server.store._db.set_trace_callback(written.append)  # type: ignore[attr-defined]

        await h.server.db(watch)
        with pytest.raises(NotFoundError, match=NOT_ENROLLED):
            await request_key(h.address, h.ca, a, peer_id=stranger.device_id, context=CTX,
                              role=IntentRole.HOST, wait=1)
        await enrol(h.address, h.ca, a)
        with pytest.raises(NotFoundError) as info:
            await request_key(h.address, h.ca, a, peer_id=stranger.device_id, context=CTX,
                              role=IntentRole.HOST, wait=1)
        assert str(info.value).endswith(  # after "the key server says: "
            f": device {stranger.device_id.hex()[:16]} is not enrolled with this key server"
        )
        assert await h.server.db(h.server.store.pending_count) == 0
        assert written and not [sql for sql in written if "INTO intents" in sql]
        assert h.server.stats["deliveries"] == 0


async def test_a_device_whose_enrolled_key_changed_is_refused(tmp_path: Path) -> None:
    """The row under a device's id holds another static key than the one the device proved
    (an edited or damaged database: the id is the key's hash): its intent is refused as not
    enrolled, and nothing is stored, so its peer's intent is not matched."""
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)

        def rewrite() -> None:
            with h.server.store._write() as db:
                db.run("UPDATE devices SET static_public = ? WHERE device_id = ?",
                       (identity("other").static_public, a.device_id))

        await h.server.db(rewrite)
        with pytest.raises(NotFoundError, match=NOT_ENROLLED):
            await request_key(h.address, h.ca, a, peer_id=b.device_id, context=CTX,
                              role=IntentRole.HOST, wait=1)
        assert await h.server.db(h.server.store.pending_count) == 0
        with pytest.raises(PairingTimeout):
            await request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                              role=IntentRole.GUEST, wait=1)
        assert h.server.stats["deliveries"] == 0


async def test_ttp_pairing_fails_on_both_sides_when_the_guest_names_another_host(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "srv") as h:
        paul, george = identity("Paul"), identity("George")
        await enrol(h.address, h.ca, paul)
        await enrol(h.address, h.ca, george)
        from pairkit.transports.loopback import loopback_pair

        g, p = loopback_pair()
        config = TtpLinkConfig(wait=1, step_timeout=3)
        host_r, guest_r = await asyncio.gather(
            ttp_host_session(p, me=paul, peer_hint=None, server=h.address, ca_file=h.ca,
                             config=config),
            ttp_guest_session(g, me=george, peer_hint=os.urandom(16), server=h.address,
                              ca_file=h.ca, config=config),
            return_exceptions=True,
        )
        assert isinstance(guest_r, AuthenticationError)
        assert isinstance(host_r, PairingError)


# -- trust ------------------------------------------------------------------------------------


async def test_a_server_signed_by_another_ca_is_refused(tmp_path: Path) -> None:
    other = init_server_dir(tmp_path / "other")
    async with running_server(tmp_path / "srv") as h:
        with pytest.raises(TtpTrustError, match="not signed by the CA") as info:
            await enrol(h.address, other.ca_cert, identity("a"))
        assert "refusing the key server" in str(info.value)
        _no_openssl_words(str(info.value))
        assert h.server.stats["enrolled"] == 0


def _no_openssl_words(text: str) -> None:
    """A person reads pairkit's words, never OpenSSL's (its reason codes and verify texts)."""
    for word in ("certificate verify failed", "unable to get", "self-signed", "self signed",
                 "CERTIFICATE_VERIFY_FAILED", "Hostname mismatch", "IP address mismatch",
                 "_ALERT_", "WRONG_VERSION", "SSL", "PEM lib", "X509"):
        assert word.lower() not in text.lower(), (word, text)


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "srv")
    ca_key = serialization.load_pem_private_key(d.ca_key.read_bytes(), None)
    from pairkit.keyserver.certs import load_cert

    key, cert = make_server_cert(ca_key, load_cert(d.ca_cert), ("ttp.example.org",),
                                 datetime.datetime.now(datetime.UTC))
    d.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    d.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    async with running_server(d.root, make=False) as h:
        with pytest.raises(TtpTrustError, match=r"does not name 127\.0\.0\.1") as info:
            await enrol(h.address, h.ca, identity("a"))
        _no_openssl_words(str(info.value))


async def test_a_missing_or_bad_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        bad = tmp_path / "bad.pem"
        bad.write_text("not a certificate")
        from pairkit.pairing.errors import ConfigError

        with pytest.raises(ConfigError) as info:
            await enrol(h.address, bad, identity("a"))
        _no_openssl_words(str(info.value))
        with pytest.raises(ConfigError):
            await enrol(h.address, tmp_path / "missing.pem", identity("a"))


# -- persistence ------------------------------------------------------------------------------


async def test_restart_keeps_enrolments(tmp_path: Path) -> None:
    a, b = identity("a"), identity("b")
    async with running_server(tmp_path / "srv") as h:
        await enrol(h.address, h.ca, a, eukey=b"\x01" * 32)
        await enrol(h.address, h.ca, b)
    async with running_server(tmp_path / "srv", make=False) as h2:
        assert await h2.server.db(h2.server.store.device_count) == 2
        ka, kb = await _pair_keys(h2, a, b)
        assert ka.sk == kb.sk
        again = await enrol(h2.address, h2.ca, a)  # no EUKey given: the stored one is kept
        assert again == EnrolDone(a.device_id, True, True)


async def test_keys_are_sealed_at_rest(tmp_path: Path) -> None:
    eukey = os.urandom(32)
    async with running_server(tmp_path / "srv") as h:
        await enrol(h.address, h.ca, identity("a"), eukey=eukey)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "srv").glob("ttp.sqlite3*"))
    assert eukey not in raw
    with sqlite3.connect(tmp_path / "srv" / "ttp.sqlite3") as db:
        (sealed,) = db.execute("SELECT eukey_sealed FROM devices").fetchone()
    assert len(sealed) == 12 + 32 + 16
    assert (tmp_path / "srv" / "ttp.sqlite3").stat().st_mode & 0o077 == 0


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrent_clients(tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, max_per_client=200, max_unauth_per_client=200, rate=1000,
                                 burst=1000)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        devices = [identity(f"d{i}") for i in range(40)]
        await asyncio.gather(*(enrol(h.address, h.ca, d) for d in devices))
        assert await h.server.db(h.server.store.device_count) == 40
        pairs = list(zip(devices[::2], devices[1::2], strict=True))
        results = await asyncio.gather(*(_pair_keys(h, a, b) for a, b in pairs))
        sks = set()
        for ka, kb in results:
            assert not isinstance(ka, BaseException) and not isinstance(kb, BaseException)
            assert ka.sk == kb.sk
            sks.add(ka.sk)
        assert len(sks) == len(pairs)  # every pair its own key
        assert h.server.stats["deliveries"] == len(pairs)


async def test_a_device_that_hangs_up_withdraws_its_intent(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        task = asyncio.ensure_future(request_key(h.address, h.ca, a, peer_id=b.device_id,
                                                 context=CTX, role=IntentRole.HOST, wait=30))
        for _ in range(100):
            if await h.server.db(h.server.store.pending_count) == 1:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if await h.server.db(h.server.store.pending_count) == 0:
                break
            await asyncio.sleep(0.05)
        assert await h.server.db(h.server.store.pending_count) == 0


# -- limits -----------------------------------------------------------------------------------


async def test_idle_connections_from_one_address_give_way_to_a_new_one(
    tmp_path: Path,
) -> None:
    # Two idle connections hold the address's two unauthenticated slots of a server half full:
    # a third connection (a neighbour behind the same NAT) evicts the oldest and enrols.
    limits = dataclasses.replace(FAST, max_unauth_per_client=2, max_connections=4)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        host, port = h.address.rsplit(":", 1)
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        try:
            for _ in range(50):
                if h.server.admission.unauthenticated == 2:
                    break
                await asyncio.sleep(0.02)
            await enrol(h.address, h.ca, identity("a"))
            assert h.server.admission.evicted >= 1 and h.server.stats["refused"] == 0
            assert await asyncio.wait_for(held[0][0].read(), 5) == b""  # evicted: closed
        finally:
            for _, w in held:
                w.close()


async def test_a_device_waiting_for_its_match_counts_as_authenticated(tmp_path: Path) -> None:
    # The device sends its proof and its request together, so the server reads the request
    # without waiting (the driver's fast path): the proof must count all the same, or a
    # waiting device would be evicted as if it had never proved anything.
    async with running_server(tmp_path / "srv") as h:
        a, b = identity("a"), identity("b")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, b)
        waiting = asyncio.ensure_future(request_key(
            h.address, h.ca, a, peer_id=b.device_id, context=CTX, role=IntentRole.HOST, wait=5,
        ))
        for _ in range(250):
            if await h.server.db(h.server.store.pending_count) == 1:
                break
            await asyncio.sleep(0.02)
        assert h.server.admission.total == 1
        assert h.server.admission.unauthenticated == 0
        kb = await request_key(h.address, h.ca, b, peer_id=a.device_id, context=CTX,
                               role=IntentRole.GUEST, wait=5)
        assert (await waiting).sk == kb.sk


async def test_the_store_threads_answer_fail_and_survive_a_caller_that_gave_up(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "srv") as h:
        assert await h.server.db(threading.current_thread) is not threading.current_thread()
        with pytest.raises(StoreError, match="database failed"):
            await h.server.db(sqlite3.connect(":memory:").execute, "not sql")
        slow = asyncio.ensure_future(h.server.db(time.sleep, 0.2))
        await asyncio.sleep(0.05)
        slow.cancel()  # the caller gives up; the call runs on, its answer goes nowhere
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await asyncio.wait_for(h.server.db(h.server.store.device_count), 5) == 0
        stopped = TtpServer(h.dir.root, limits=FAST)
    await stopped.close()  # never started: nothing to stop
    with pytest.raises(StoreError):
        await stopped.db(int)  # after close: refused, in the store's words


async def test_attempt_rate_is_bounded(tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, rate=0.5, burst=2)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        a = identity("a")
        await enrol(h.address, h.ca, a)
        await enrol(h.address, h.ca, a)
        with pytest.raises(TransportError):
            await enrol(h.address, h.ca, a)


async def test_failed_proofs_lock_the_address_out(tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, max_failures=2)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        a = identity("a")

        async def bad_proof() -> None:
            conn = await connect(h.address, h.ca)
            try:
                loop = asyncio.get_running_loop()
                client = TtpClient(a, cert=b"\x00" * 32, request=EnrolRequest(
                    signing=a.signing_public), expect=EnrolDone)
                client.start(loop.time())
                from pairkit.driver import drive

                await drive(client, conn.pipe, idle=5)
            finally:
                await conn.close()

        for _ in range(2):
            with pytest.raises(PairingError) as info:
                await bad_proof()
            assert info.value.code == AuthenticationError.code
        with pytest.raises(TransportError):
            await enrol(h.address, h.ca, a)


async def test_closed_enrolment_and_its_token(tmp_path: Path) -> None:
    token = b"0123456789abcdef0123"
    async with running_server(tmp_path / "srv", enrol_token=token) as h:
        with pytest.raises(RefusedError, match="token"):
            await enrol(h.address, h.ca, identity("a"))
        with pytest.raises(RefusedError):
            await enrol(h.address, h.ca, identity("a"), token=b"x" * 20)
        done = await enrol(h.address, h.ca, identity("a"), token=token)
        assert not done.updated


async def test_oversize_and_silent_clients_are_dropped(tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, step_timeout=0.5, max_message=1024)
    async with running_server(tmp_path / "srv", limits=limits) as h:
        loop = asyncio.get_running_loop()
        silent = await connect(h.address, h.ca)
        started = loop.time()
        with pytest.raises(PairingError):
            await asyncio.wait_for(silent.link.recv(), 5)
        assert loop.time() - started < 3
        await silent.close()
        big = await connect(h.address, h.ca)
        await big.link.send(b"\x00" * 2000)  # one frame over the server's 1024-byte limit
        with pytest.raises(PairingError):
            await asyncio.wait_for(big.link.recv(), 5)
        await big.close()
        await enrol(h.address, h.ca, identity("a"))  # and the server is still fine


async def test_unreachable_server(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "srv")
    listener = await TcpListener.bind("127.0.0.1", 0)
    port = listener.port
    await listener.close()
    with pytest.raises(TransportError, match="cannot reach"):
        await call(f"127.0.0.1:{port}", d.ca_cert, identity("a"),
                   EnrolRequest(signing=b"\x00" * 32), EnrolDone, timeout=2)


def test_admission_logic_with_an_injected_clock() -> None:
    from pairkit.keyserver.server import Admission, Ticket

    adm = Admission(Limits(max_per_client=3, max_unauth_per_client=3, rate=1.0, burst=2,
                           max_failures=2, lockout=10))
    first, second = adm.admit("a", 0.0), adm.admit("a", 0.0)
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    assert "per second" in str(adm.admit("a", 0.0))
    third = adm.admit("a", 1.0)  # a token came back
    assert isinstance(third, Ticket)
    for t in (first, second, third):
        adm.authenticated(t)
    assert "connections from one address" in str(adm.admit("a", 5.0))
    for t in (first, second, third):
        adm.release(t)
    assert adm.total == 0 and adm.unauthenticated == 0
    adm.failure("b", 0.0)
    adm.failure("b", 1.0)
    assert "locked out" in str(adm.admit("b", 2.0))
    assert isinstance(adm.admit("b", 10.5), Ticket)  # the first failure aged out
    assert LockedOutError  # the CLI maps a lockout at the TLS level to a transport error


async def test_a_host_that_allows_several_methods_dispatches_on_the_first_message(
    tmp_path: Path,
) -> None:
    """What run_host does: read the guest's first message, then run the machine it starts."""
    from pairkit.driver import MessagePipe, replay_first
    from pairkit.pairing.ttp import is_ttp_offer
    from pairkit.transports.loopback import loopback_pair

    async with running_server(tmp_path / "srv") as h:
        paul, george = identity("Paul"), identity("George")
        await enrol(h.address, h.ca, paul)
        await enrol(h.address, h.ca, george)
        g, p = loopback_pair(mtu=20)  # BLE's smallest MTU: messages arrive in fragments

        async def host() -> object:
            pipe = MessagePipe(p)
            first = await asyncio.wait_for(pipe.recv(), 5)
            assert is_ttp_offer(first)
            return await ttp_host_session(replay_first(pipe, first), me=paul, peer_hint=None,
                                          server=h.address, ca_file=h.ca)

        hs, gs = await asyncio.gather(
            host(), ttp_guest_session(g, me=george, peer_hint=None, server=h.address,
                                      ca_file=h.ca),
        )
        assert hs.fingerprint == gs.fingerprint


async def test_a_guest_whose_key_server_is_down_tells_the_host(tmp_path: Path) -> None:
    from pairkit.transports.loopback import loopback_pair

    d = init_server_dir(tmp_path / "srv")
    listener = await TcpListener.bind("127.0.0.1", 0)
    dead = f"127.0.0.1:{listener.port}"
    await listener.close()
    g, p = loopback_pair()
    config = TtpLinkConfig(wait=1, step_timeout=3)
    host_r, guest_r = await asyncio.gather(
        ttp_host_session(p, me=identity("h"), peer_hint=None, server=dead, ca_file=d.ca_cert,
                         config=config),
        ttp_guest_session(g, me=identity("g"), peer_hint=None, server=dead, ca_file=d.ca_cert,
                          config=config),
        return_exceptions=True,
    )
    assert isinstance(guest_r, TransportError) and isinstance(host_r, PairingError)
