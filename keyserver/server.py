"""The key server: an asyncio TLS 1.3 server over its store, SQLite or PostgreSQL (``pairkit ttp
serve``, ``python -m pairkit.keyserver``).

Each connection: admission (:class:`Admission`: failure lockout and attempt rate per address,
then room made by evicting unauthenticated connections, per address and in all; refused before
any TLS work), the TLS 1.3 handshake with the server certificate (a short deadline), then
:class:`pairkit.pairing.ttp.TtpServerConn` run by :func:`pairkit.driver.drive`
(every message bounded in size and in time), and for a CPNS registration
:class:`pairkit.pairing.cpns.CpnsServer` on the same connection.  The machines decide; this module
answers their questions from the store (:mod:`pairkit.keyserver.store`, run on worker threads
so the event loop never waits on the disk or the database) and waits for matching intents.

A waiting intent is woken at once when its match arrives in this process or, on PostgreSQL,
in any process (the store's :meth:`~pairkit.keyserver.store.Store.listen`), and polls the store
otherwise (another server process sharing the SQLite file), and is withdrawn when its device
hangs up.  A match made in this process hands the key to the waiting intent in memory: the
matching transaction deletes the waiting row (it cannot be matched again, and the key is never
stored), and the waiter takes the key without another trip to the store (:class:`_Waiting`).
Nothing secret is logged: device ids, names and outcomes only.

:func:`serve` runs one server from a :class:`ServeConfig` until it is told to stop (SIGINT or
SIGTERM by default).  It reports through :mod:`logging`: the server's start and stop on the
``pairkit.keyserver`` logger, each device served on ``pairkit.keyserver.connections`` (INFO;
failures at ERROR, their text starting with ``error:``).  It prints nothing itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import functools
import gc
import logging
import os
import queue
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.serialization import Encoding

from pairkit.driver import MessagePipe, drive
from pairkit.pairing.cpns import (
    CpnsKeys,
    CpnsKeysAsked,
    CpnsRegisterAsked,
    CpnsServer,
    PnRegistrationRequest,
)
from pairkit.pairing.crypto import Rng, same
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    LinkClosedError,
    NotFoundError,
    PairingError,
    RefusedError,
)
from pairkit.pairing.groupcert import CertAsked, CertIssuer, CertRequest
from pairkit.pairing.keystore.records import clean_name
from pairkit.pairing.ttp import (
    BadTokenError,
    DeviceRecord,
    EnrolAsked,
    EnrolDone,
    IntentAsked,
    ServerConfig,
    SkDelivery,
    TtpServerConn,
    cert_digest,
)
from pairkit.transports.tcp import format_host_port
from pairkit.transports.tls import TlsLink, TlsProtocol

from .certs import ServerDir, cert_fingerprint, load_ca_key, load_cert, make_device_cert
from .store import (
    NOT_ENROLLED,
    Matched,
    Pending,
    Store,
    StoreError,
    open_store,
    peer_not_enrolled,
)

T = TypeVar("T")

#: how often a waiting intent looks at the store for a match made by another process ...
POLL_INTERVAL = 0.2
#: ... and where the store announces matches (PostgreSQL's NOTIFY): only in case one was lost
SLOW_POLL_INTERVAL = 2.0
#: the store's threads (each with its own connection) on PostgreSQL
PG_STORE_THREADS = 4
#: connections the kernel holds for us before we accept them: at least this many, and at least
#: as many as admission allows at once (``Limits.max_connections``), so that a burst the server
#: would admit reaches admission instead of losing its SYNs to a full listen queue (the client
#: retries only a second later; bench/RESULTS.md, session 12).  The kernel caps it
#: (``net.core.somaxconn``: 4096 on Linux since 5.4).
SERVER_BACKLOG = 100

#: the server's start and stop
log = logging.getLogger("pairkit.keyserver")
#: each device served (INFO), failures (ERROR, text starting with "error:")
connection_log = logging.getLogger("pairkit.keyserver.connections")


def log_connection(text: str) -> None:
    """The default ``log`` of :class:`TtpServer`: ``text`` on :data:`connection_log`."""
    level = logging.ERROR if text.startswith("error:") else logging.INFO
    connection_log.log(level, "%s", text)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server allows; validated when built.

    Admission favours progress (docs/security.md, "The key server: who gets in under load"): a
    connection is *unauthenticated* from its accept until the device's proof checks, and only
    such connections are bounded per address and evicted under load, so that an authenticated
    device is never dropped for someone else's flood, and a fresh connection gets its chance.
    """

    #: connections at once, from everyone
    max_connections: int = 512
    #: connections at once from one client address (authenticated or not; a NAT shares one)
    max_per_client: int = 256
    #: unauthenticated connections at once from one address once the server is half full;
    #: beyond it, the address's oldest one is evicted to make room for a new one
    max_unauth_per_client: int = 64
    #: new connections per second one client address may open, sustained ...
    rate: float = 50.0
    #: ... and in a burst
    burst: int = 100
    #: failed proofs or enrolment tokens from one address before it is locked out ...
    max_failures: int = 10
    #: ... for this many seconds (also the window the failures are counted in)
    lockout: float = 60.0
    #: the largest message a device may send (bytes)
    max_message: int = 8192
    #: seconds for the TLS handshake (a TLS 1.3 handshake is one round trip)
    handshake_timeout: float = 4.0
    #: seconds to wait for each message from a device
    step_timeout: float = 10.0
    #: the longest wait for a matching intent the server grants (seconds)
    max_wait: float = 60.0
    #: seconds this process's lease runs (renewed every third of it): an intent waiting in a
    #: process that died is never matched once its lease ran out (keyserver/store.py)
    lease: float = 15.0

    def __post_init__(self) -> None:
        if (
            self.max_connections < 1 or self.max_per_client < 1 or self.burst < 1
            or self.max_unauth_per_client < 1
        ):
            raise ConfigError("connection limits must be 1 or more")
        if self.rate <= 0 or self.lockout <= 0 or self.max_failures < 1:
            raise ConfigError("rate, lockout and max_failures must be positive")
        if not 1024 <= self.max_message <= 65535:
            raise ConfigError("max_message must be from 1024 to 65535 bytes")
        if min(self.handshake_timeout, self.step_timeout) <= 0 or not 1 <= self.max_wait <= 300:
            raise ConfigError("timeouts must be positive and max_wait from 1 to 300 seconds")
        if not 1 <= self.lease <= 300:
            raise ConfigError("lease must be from 1 to 300 seconds")


@dataclasses.dataclass(eq=False)
class Ticket:
    """One admitted connection (``evict`` ends it when the server needs its slot)."""

    client: str
    evict: Callable[[], None] | None = None
    #: the device's proof checked: never evicted, no longer counted as unauthenticated
    authenticated: bool = False
    released: bool = False


class Admission:
    """Who may open a connection now (no clock read: ``now`` is an argument).

    In order: the address's failure lockout, its token bucket (attempt rate), its count of
    unauthenticated connections (over :attr:`Limits.max_unauth_per_client` while the server is
    half full or more, its own oldest unauthenticated connection is evicted: below that, many
    devices behind one NAT handshaking at once hurt nobody), the total (when full, the oldest
    unauthenticated connection of the address that holds the most of them is evicted; refused
    only when every connection is authenticated), and the address's total.  A flood of idle or
    garbage connections from other addresses thus evicts its own connections first, and a
    legitimate device with one connection is evicted only when the flood comes from as many
    addresses as the server has slots.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        #: connections evicted to make room (for people and tests)
        self.evicted = 0
        self._open: dict[str, int] = {}
        # unauthenticated tickets, oldest first (dicts keep insertion order)
        self._unauth: dict[Ticket, None] = {}
        self._unauth_by_client: dict[str, dict[Ticket, None]] = {}
        self._tokens: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._failures: dict[str, list[float]] = {}

    def admit(
        self, client: str, now: float, evict: Callable[[], None] | None = None
    ) -> Ticket | str:
        """A :class:`Ticket` for ``client`` (counted until :meth:`release`), else why not."""
        lim = self.limits
        recent = [t for t in self._failures.get(client, []) if now - t < lim.lockout]
        self._failures[client] = recent
        if not recent:
            self._failures.pop(client, None)
        if len(recent) >= lim.max_failures:
            return f"locked out after {len(recent)} failed attempts"
        tokens, at = self._tokens.get(client, (float(lim.burst), now))
        tokens = min(float(lim.burst), tokens + max(0.0, now - at) * lim.rate)
        if tokens < 1:
            self._tokens[client] = (tokens, now)
            return "too many attempts per second"
        mine = self._unauth_by_client.get(client, {})
        if self._open.get(client, 0) >= lim.max_per_client and not mine:
            return f"more than {lim.max_per_client} connections from one address"
        if self.total >= lim.max_connections and not self._unauth:
            return "too many connections"
        # Admitted: make room, evicting this address's own oldest unauthenticated connection
        # first, then the oldest of whoever holds the most.
        crowded = 2 * self.total >= lim.max_connections
        if (crowded and len(mine) >= lim.max_unauth_per_client) or (
            self._open.get(client, 0) >= lim.max_per_client
        ):
            self._evict(next(iter(mine)))
        if self.total >= lim.max_connections:
            self._evict(self._victim())
        self._tokens[client] = (tokens - 1, now)
        if len(self._tokens) > 4 * lim.max_connections:
            # Forget the buckets that are full again (an address idle for burst/rate seconds).
            full = lim.burst / lim.rate
            self._tokens = {c: v for c, v in self._tokens.items() if now - v[1] < full}
        ticket = Ticket(client, evict)
        self._open[client] = self._open.get(client, 0) + 1
        self.total += 1
        self._unauth[ticket] = None
        self._unauth_by_client.setdefault(client, {})[ticket] = None
        return ticket

    def _victim(self) -> Ticket:
        """The oldest unauthenticated connection of the address holding the most of them."""
        most = max(len(t) for t in self._unauth_by_client.values())
        for ticket in self._unauth:  # oldest first
            if len(self._unauth_by_client[ticket.client]) == most:
                return ticket
        raise AssertionError("unreachable: an address holds the most")  # pragma: no cover

    def _evict(self, ticket: Ticket) -> None:
        self.evicted += 1
        self.release(ticket)
        if ticket.evict is not None:
            ticket.evict()

    def _forget_unauth(self, ticket: Ticket) -> None:
        self._unauth.pop(ticket, None)
        mine = self._unauth_by_client.get(ticket.client)
        if mine is not None:
            mine.pop(ticket, None)
            if not mine:
                del self._unauth_by_client[ticket.client]

    def authenticated(self, ticket: Ticket) -> None:
        """The device on ``ticket`` proved its key: it is no longer evicted."""
        if not ticket.released and not ticket.authenticated:
            ticket.authenticated = True
            self._forget_unauth(ticket)

    def release(self, ticket: Ticket) -> None:
        """The connection ended (or was evicted); calling it again does nothing."""
        if ticket.released:
            return
        ticket.released = True
        self._forget_unauth(ticket)
        n = self._open.get(ticket.client, 0) - 1
        if n > 0:
            self._open[ticket.client] = n
        else:
            self._open.pop(ticket.client, None)
        self.total = max(0, self.total - 1)

    @property
    def unauthenticated(self) -> int:
        """Connections whose device has not proved its key yet."""
        return len(self._unauth)

    def failure(self, client: str, now: float) -> None:
        self._failures.setdefault(client, []).append(now)


def server_context(d: ServerDir) -> ssl.SSLContext:
    """TLS 1.3 only, the server's certificate and key, and no session tickets: a device opens
    a full handshake each time (nothing resumes a session: a ticket would be work for nothing
    on both ends, and a secret to keep)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(d.cert, d.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the server certificate from {d.root}: {exc}") from None
    return ctx


class TtpServer:
    """One key server (see the module docstring).  ``async with TtpServer(dir) as s:``."""

    def __init__(
        self,
        directory: Path,
        *,
        limits: Limits | None = None,
        enrol_token: bytes | None = None,
        database: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: Rng = os.urandom,
        log: Callable[[str], None] | None = log_connection,
    ) -> None:
        self.dir = ServerDir(Path(directory))
        self.dir.check()
        self.limits = limits or Limits()
        self._clock = clock
        self._rng = rng
        self._log = log or (lambda _text: None)
        self._ssl = server_context(self.dir)
        self.cert_digest = cert_digest(load_cert(self.dir.cert).public_bytes(Encoding.DER))
        self._config = ServerConfig(
            cert=self.cert_digest, enrol_token=enrol_token, max_wait=self.limits.max_wait,
            step_timeout=self.limits.step_timeout,
        )
        self.admission = Admission(self.limits)
        #: a PostgreSQL URL (``postgresql://...``), or None for the directory's SQLite file
        self.database = database
        # SQLite: one connection, one thread.  PostgreSQL: a connection per thread, and
        # several threads, so that the round trips to the database overlap.
        self._executor = _StoreThreads(1 if database is None else PG_STORE_THREADS, "ttp-store")
        self._store: Store | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiters: dict[int, _Waiting] = {}
        self._hand_lock = threading.Lock()
        self._janitor: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        #: this process's lease on the store (its intents are matched only while it holds it)
        self._server_id = os.urandom(16)
        self._leaser: asyncio.Task[None] | None = None
        self._poll = POLL_INTERVAL
        self.address = ""
        #: counters for people and benchmarks (no secrets); failures are logged as "error: ..."
        self.stats: dict[str, int] = {
            "connections": 0, "refused": 0, "enrolled": 0, "deliveries": 0, "timeouts": 0,
            "failed": 0, "pns": 0, "evicted": 0,
        }

    async def __aenter__(self) -> TtpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the store's thread."""
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await self._executor.run(call)
        except PairingError:
            raise
        except Exception as exc:  # sqlite3.Error: report it as the store's, typed
            raise StoreError(f"the key server's database failed: {exc}") from None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ConfigError("the server is not started")
        return self._store

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Open the store and listen; the address (``HOST:PORT``) it listens on."""
        loop = asyncio.get_running_loop()
        self._store = await self._executor.run(
            functools.partial(open_store, self.dir.root, rng=self._rng, database=self.database),
        )
        await self.db(self.store.purge, self._clock())
        await self.db(self.store.lease, self._server_id, self._clock(), self.limits.lease)
        self._leaser = asyncio.create_task(self._renew_lease())
        try:
            self._server = await loop.create_server(
                self._protocol, host, port,
                backlog=max(SERVER_BACKLOG, self.limits.max_connections),
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {format_host_port(host, port)}: {exc.strerror}"
            ) from None
        sock = self._server.sockets[0].getsockname()
        self.address = format_host_port(str(sock[0]), int(sock[1]))
        self._janitor = asyncio.create_task(self._purge_now_and_then())
        self._unlisten = self.store.listen(
            functools.partial(loop.call_soon_threadsafe, self._wake)
        )
        self._poll = POLL_INTERVAL if self._unlisten is None else SLOW_POLL_INTERVAL
        return self.address

    async def close(self) -> None:
        """Stop listening, end every connection, close the store."""
        if self._server is not None:
            self._server.close()
        if self._janitor is not None:
            self._janitor.cancel()
        if self._leaser is not None:
            self._leaser.cancel()
        if self._unlisten is not None:
            unlisten, self._unlisten = self._unlisten, None
            await asyncio.get_running_loop().run_in_executor(None, unlisten)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self._store is not None:
            store, self._store = self._store, None
            if self._leaser is not None:  # a stopped process holds no lease
                with contextlib.suppress(Exception):
                    await self._executor.run(functools.partial(store.end_lease, self._server_id))
            await self._executor.run(store.close)
        self._executor.shutdown()

    async def _renew_lease(self) -> None:
        """Keep this process's lease (a third of its time apart): a process killed stops
        renewing, and the intents left in it are not matched once the lease ran out."""
        while True:
            await asyncio.sleep(self.limits.lease / 3)
            with contextlib.suppress(PairingError):
                await self.db(self.store.lease, self._server_id, self._clock(), self.limits.lease)

    async def _purge_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(30)
            with contextlib.suppress(PairingError):
                await self.db(self.store.purge, self._clock())

    # -- one connection -------------------------------------------------------------------

    def _protocol(self) -> TlsProtocol:
        """A new connection's protocol (TLS starts once :meth:`_connected` admits it)."""
        protocol = TlsProtocol(mtu=self.limits.max_message)
        protocol.on_connection = self._connected
        return protocol

    def _connected(self, protocol: TlsProtocol) -> None:
        """A connection was accepted: admission first (refused before any TLS work), then TLS
        with its deadline, and the device served on a task of its own."""
        transport = protocol.transport
        assert transport is not None
        peername = transport.get_extra_info("peername")
        client = str(peername[0]) if isinstance(peername, tuple) else "?"
        where = (
            format_host_port(client, int(peername[1])) if isinstance(peername, tuple) else "?"
        )
        tasks: list[asyncio.Task[None]] = []

        def evict() -> None:
            # Another connection needs this one's slot: end it now, whatever it was doing.
            self.stats["evicted"] += 1
            transport.abort()
            for task in tasks:
                task.cancel()

        ticket = self.admission.admit(client, self._clock(), evict)
        if isinstance(ticket, str):
            # Refused before any TLS work: an over-eager client costs us next to nothing.
            self.stats["refused"] += 1
            self._log(f"refused {where}: {ticket}")
            transport.abort()
            return
        self.stats["connections"] += 1
        protocol.begin(self._ssl, server_side=True, timeout=self.limits.handshake_timeout)
        task = asyncio.get_running_loop().create_task(
            self._accept(protocol, client, where, ticket))
        tasks.append(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(
        self, protocol: TlsProtocol, client: str, where: str, ticket: Ticket
    ) -> None:
        link: TlsLink | None = None
        try:
            try:
                await protocol.handshake
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                self._log(f"{where}: TLS handshake failed ({type(exc).__name__})")
                if protocol.transport is not None:
                    protocol.transport.abort()
                return
            link = TlsLink(protocol, peer=where)
            await self._serve(link, client, ticket)
        except asyncio.CancelledError:
            if link is None and protocol.transport is not None:
                protocol.transport.abort()
        except PairingError as exc:
            self.stats["failed"] += 1
            self._log(f"error: {where}: {exc}")
        except Exception as exc:
            # A bug must cost one connection, not the server every other device relies on;
            # it is counted and reported (type only: the text could quote a secret).
            self.stats["failed"] += 1
            self._log(f"error: {where}: internal error ({type(exc).__name__}); please report it")
        finally:
            self.admission.release(ticket)
            if link is not None:
                with contextlib.suppress(Exception):
                    await link.close()  # bounded by the link's close_timeout

    async def _serve(self, link: TlsLink, client: str, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        lim = self.limits
        machine = TtpServerConn(
            self._config, handover=(PnRegistrationRequest, CertRequest), rng=self._rng
        )
        pipe = _AdmittedPipe(
            link, max_message=lim.max_message, machine=machine,
            proved=functools.partial(self.admission.authenticated, ticket),
        )
        conn = _Conn(self, link)
        machine.start(loop.time())
        try:
            await drive(
                machine, pipe, delegate=conn, idle=lim.step_timeout, answer_time=lim.max_wait + 10
            )
        except (AuthenticationError, BadTokenError) as exc:
            if isinstance(exc, BadTokenError) or machine.device_id is None:
                # A failed proof or a wrong enrolment token: counted toward the lockout.
                self.admission.failure(client, self._clock())
            raise
        if isinstance(machine.handover, CertRequest):
            assert machine.device_id is not None and machine.static is not None
            issuer = CertIssuer(
                device_id=machine.device_id, static=machine.static, name=machine.name or "",
                server_cert=self.cert_digest,
            )
            issuer.begin(machine.handover, loop.time())
            await drive(issuer, pipe, delegate=conn, idle=lim.step_timeout,
                        answer_time=lim.step_timeout)
            return
        if isinstance(machine.handover, PnRegistrationRequest):
            assert machine.device_id is not None
            cpns = CpnsServer(machine.device_id, step_timeout=lim.step_timeout * 3, rng=self._rng)
            cpns.begin(machine.handover, loop.time())
            await drive(
                cpns, pipe, delegate=conn, idle=lim.step_timeout * 3,
                answer_time=lim.step_timeout * 3,
            )

    def _wake(self, row: int) -> None:
        waiting = self._waiters.get(row)
        if waiting is not None:
            waiting.event.set()

    # -- the hand-over of a key to an intent waiting in this process (store's thread) ----------

    def _claim(self, row: int) -> bool:
        with self._hand_lock:
            waiting = self._waiters.get(row)
            if waiting is None or waiting.state != _WAITING:
                return False
            waiting.state = _CLAIMED
            return True

    def _unclaim(self, row: int) -> None:
        with self._hand_lock:
            waiting = self._waiters.get(row)
            if waiting is not None and waiting.state == _CLAIMED:
                waiting.state = _WAITING

    def _hand(self, row: int, sk: bytes, match_id: bytes) -> None:
        with self._hand_lock:
            waiting = self._waiters.get(row)
            if waiting is not None and waiting.state == _CLAIMED:
                waiting.sk, waiting.match_id = sk, match_id


#: a store call and the future its outcome settles
_Call = tuple[Callable[[], Any], asyncio.Future[Any]]


class _StoreThreads:
    """The store's threads: each call runs on one of them, and its outcome wakes the waiting
    coroutine on the event loop.  (``run_in_executor`` on a ``ThreadPoolExecutor`` spent twice
    the CPU per call, a concurrent future with its lock and condition chained to an asyncio
    future: bench/RESULTS.md, "2026-12-06".)  Threads start with the first call;
    :meth:`shutdown` lets the calls already queued run, then stops them.

    Hand-offs are shared between calls (bench/RESULTS.md, session 13: the queue's wake-ups and
    the GIL passing back and forth were a tenth of the key server's CPU): with one thread
    (SQLite), the calls made in one turn of the event loop go to it together, in order, at the
    end of the turn; and outcomes that are ready before the loop has taken the last ones wake
    it once.  With several threads (PostgreSQL) each call goes to a thread of its own, so that
    their round trips to the database overlap.  Every call is still its own transaction.
    """

    def __init__(self, count: int, name: str) -> None:
        self._calls: queue.SimpleQueue[list[_Call] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(count)
        ]
        self._together = count == 1
        #: calls made in this turn of the loop, for the one thread (handed over at its end)
        self._batch: list[_Call] = []
        #: outcomes the threads have ready, and whether the loop has been told of them
        self._done: collections.deque[tuple[asyncio.Future[Any], tuple[bool, Any]]] = (
            collections.deque())
        self._told = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopped = False

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn()`` on a store thread; awaiting the future gives its value or raises its
        exception.  Cancelling the future does not stop ``fn`` (as with an executor).  Every
        call comes from the one event loop that made the first."""
        if self._stopped:
            raise RuntimeError("the store's threads have stopped")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("the store's threads serve the event loop of their first call")
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        future: asyncio.Future[T] = loop.create_future()
        if not self._together:
            self._calls.put([(fn, future)])
        else:
            if not self._batch:
                loop.call_soon(self._hand_over)
            self._batch.append((fn, future))
        return future

    def _hand_over(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._calls.put(batch)

    def _work(self) -> None:
        while (batch := self._calls.get()) is not None:
            for fn, future in batch:
                try:
                    outcome: tuple[bool, Any] = (True, fn())
                except StopIteration as exc:  # a future cannot carry it
                    outcome = (False, RuntimeError(f"a store call raised {type(exc).__name__}"))
                except BaseException as exc:
                    outcome = (False, exc)
                self._done.append((future, outcome))
                del fn, future, outcome
                if not self._told:
                    # Outcomes added before the loop takes them ride on this wake-up:
                    # _settle_done clears the flag before it empties the deque.
                    self._told = True
                    assert self._loop is not None
                    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                        self._loop.call_soon_threadsafe(self._settle_done)
            del batch

    def _settle_done(self) -> None:
        self._told = False
        done = self._done
        while done:
            future, outcome = done.popleft()
            _settle(future, outcome)

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads (waits for them)."""
        self._stopped = True
        if not self._started:
            return
        self._hand_over()
        for _ in self._threads:
            self._calls.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _AdmittedPipe(MessagePipe):
    """The connection's pipe, which tells admission once the device's proof checked (the
    machine has a device id when it next reads): from then on the connection is not evicted."""

    def __init__(
        self, link: TlsLink, *, max_message: int, machine: TtpServerConn,
        proved: Callable[[], None],
    ) -> None:
        super().__init__(link, max_message=max_message, transcript=False)  # nothing binds it
        self._machine = machine
        self._proved: Callable[[], None] | None = proved

    def _check_proved(self) -> None:
        if self._proved is not None and self._machine.device_id is not None:
            self._proved()
            self._proved = None

    async def recv(self) -> bytes:
        self._check_proved()
        return await super().recv()

    def poll_unabsorbed(self) -> bytes | None:
        """A message already there (the driver reads it without a timer): read like
        :meth:`recv`, so the proof is counted before it."""
        self._check_proved()
        return super().poll_unabsorbed()


#: a waiting intent's states (:class:`_Waiting`)
_WAITING, _CLAIMED, _TAKING, _GONE = "waiting", "claimed", "taking", "gone"


@dataclasses.dataclass(eq=False)
class _Waiting:
    """An intent waiting in this process, and its hand-over.

    ``waiting``: a match made in this process may claim it (:meth:`TtpServer._claim`, on the
    store's thread, inside the matching transaction, which then deletes its row); ``claimed``:
    such a match is committing, and the key is put in :attr:`sk` once it committed (or the
    claim is released if it failed); ``taking``: its waiter is asking the store (a match made
    meanwhile stores the key sealed, for the store to answer); ``gone``: its waiter gave up
    (or its task ended before its intent was stored).  Changed only under
    :attr:`TtpServer._hand_lock` (the loop's thread and the store's).

    It is made before the intent goes to the store and put among the waiters by the store's
    thread as soon as the intent's row is committed (:func:`_post_intent`), not once its
    coroutine runs again: both intents of a pair often reach the store's thread together
    (under load, nearly always: bench/RESULTS.md, session 13), and the second then finds the
    first waiting and hands it the key in memory.
    """

    event: asyncio.Event
    state: str = _WAITING
    sk: bytes | None = dataclasses.field(default=None, repr=False)
    match_id: bytes = b""
    #: the intent's row, once stored and waiting
    row: int | None = None


def _post_intent(
    s: TtpServer, q: IntentAsked, now: float, waiting: _Waiting | None = None,
) -> tuple[DeviceRecord, DeviceRecord, Pending | Matched]:
    """On the store's thread: the device (enrolled with the static key it proved), its peer,
    and the intent posted (:meth:`Store.post_intent`); :class:`NotFoundError` when either
    device is not enrolled (and nothing is posted).  A match with an intent waiting in this
    process hands its key over in memory (:class:`_Waiting`).  An intent stored to wait is
    among the waiters as ``waiting`` from its commit on; if its task has ended meanwhile
    (``waiting`` gone), it is withdrawn instead."""
    store = s.store
    me = store.device(q.device_id)
    if me is None or not same(me.static, q.static):
        raise NotFoundError(NOT_ENROLLED)
    peer = store.device(q.peer_id)
    if peer is None:
        raise NotFoundError(peer_not_enrolled(q.peer_id))
    claimed: list[int] = []

    def claim(row: int) -> bool:
        if row in claimed or s._claim(row):
            claimed.append(row)
            return True
        return False

    try:
        outcome = store.post_intent(
            q.device_id, q.peer_id, q.context, q.role, now=now, expires=now + q.wait,
            server=s._server_id, claim=claim,
        )
    except BaseException:
        for row in claimed:  # nothing was committed: the waiter waits on
            s._unclaim(row)
        raise
    if isinstance(outcome, Matched):
        if outcome.handed:
            s._hand(outcome.partner_row, outcome.sk, outcome.match_id)
    elif waiting is not None:
        with s._hand_lock:
            if waiting.state == _WAITING:
                waiting.row = outcome.row
                s._waiters[outcome.row] = waiting
                return me, peer, outcome
        # Its task ended before the intent was stored: nobody would take a key handed to it.
        store.cancel_intent(outcome.row)
    return me, peer, outcome


def _take_match(s: TtpServer, q: IntentAsked, row: int) -> tuple[bytes, bytes] | None:
    """On the store's thread: :meth:`Store.take_match` for the waiting intent ``row`` of
    ``q``.  A row that is gone because one of the two devices was revoked meanwhile (``pairkit
    ttp revoke``, in any process) fails as an intent from or toward a device not enrolled
    does, in the same words (so a device learns no more of a revoke than of a device never
    enrolled)."""
    try:
        return s.store.take_match(row)
    except RefusedError:
        if s.store.device(q.device_id) is None:
            raise NotFoundError(NOT_ENROLLED) from None
        if s.store.device(q.peer_id) is None:
            raise NotFoundError(peer_not_enrolled(q.peer_id)) from None
        raise


def _still_enrolled(s: TtpServer, q: IntentAsked) -> None:
    """On the store's thread: :class:`NotFoundError`, in the words of an intent from or toward
    a device not enrolled, unless both devices of ``q`` are still served (one read)."""
    found = s.store.enrolled(q.device_id, q.peer_id)
    if q.device_id not in found:
        raise NotFoundError(NOT_ENROLLED)
    if q.peer_id not in found:
        raise NotFoundError(peer_not_enrolled(q.peer_id))


def _withdraw(s: TtpServer, row: int) -> None:
    """On the store's thread: withdraw the waiting intent ``row`` whose task has ended (a
    match made meanwhile has its key dropped, as for a waiter that gave up)."""
    store = s._store
    if store is not None:
        with contextlib.suppress(Exception):  # best effort: the intent expires anyway
            store.cancel_intent(row)


class _Conn:
    """Answers one connection's machine questions (the delegate)."""

    def __init__(self, server: TtpServer, link: TlsLink) -> None:
        self.s = server
        self.link = link

    async def ttp_enrol(self, q: EnrolAsked) -> EnrolDone:
        s = self.s

        def enrol() -> tuple[bool, bool]:  # on the store's thread, in one trip
            updated = s.store.enrol(q.device, q.eukey, s._clock())
            return updated, s.store.has_eukey(q.device.device_id)

        updated, has_eukey = await s.db(enrol)
        s.stats["enrolled"] += 1
        s._log(f"{'re-' if updated else ''}enrolled {clean_name(q.device.name)} "
               f"({q.device.device_id.hex()[:16]}){' with a factory key' if q.eukey else ''}")
        return EnrolDone(q.device.device_id, updated, has_eukey)

    async def ttp_intent(self, q: IntentAsked) -> SkDelivery | None:
        s = self.s
        # One trip to the store's thread: both devices looked up, then the intent posted
        # (only once the device is known to be enrolled with the key it proved).
        waiting = _Waiting(asyncio.Event())
        try:
            me, peer, outcome = await s.db(_post_intent, s, q, s._clock(), waiting)
        except BaseException:
            # Ended (cancelled) while the store had the intent: stored and waiting already,
            # it is withdrawn; not stored yet, the store's thread withdraws it (gone).
            with s._hand_lock:
                row = waiting.row
                if waiting.state == _WAITING:
                    waiting.state = _GONE
                if row is not None:
                    s._waiters.pop(row, None)
            if row is not None:
                with contextlib.suppress(RuntimeError):  # the store's threads have stopped
                    s._executor.run(functools.partial(_withdraw, s, row))
            raise
        if isinstance(outcome, Matched):
            s._wake(outcome.partner_row)
            s.stats["deliveries"] += 1
            s._log(f"matched {clean_name(me.name)} ({q.role.name.lower()}) with "
                   f"{clean_name(peer.name)}: key delivered")
            return SkDelivery(outcome.match_id, outcome.sk, peer)
        row = outcome.row  # waiting among s._waiters since its commit (_post_intent)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + q.wait
        taken = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    with s._hand_lock:
                        if waiting.state == _WAITING:
                            waiting.state = _GONE  # no match in this process can claim it now
                    if waiting.state == _GONE:
                        break
                    remaining = s._poll  # claimed: its key is on its way (one store call)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(s._poll, remaining)):
                        await waiting.event.wait()
                waiting.event.clear()
                with s._hand_lock:
                    sk, match_id = waiting.sk, waiting.match_id
                if sk is not None:  # matched in this process: handed over in memory
                    taken = True
                    # Both still served: a revoke that committed since the match (another
                    # process) deleted no row this key waited in, and must still keep it in,
                    # as it does a key waiting in the store (_take_match; atk20r 3).
                    await s.db(_still_enrolled, s, q)
                    return SkDelivery(match_id, sk, peer)
                with s._hand_lock:
                    if waiting.state == _CLAIMED:
                        continue
                    waiting.state = _TAKING  # a claim now would race the store's answer
                try:
                    found = await s.db(_take_match, s, q, row)
                finally:
                    with s._hand_lock:
                        if waiting.state == _TAKING:
                            waiting.state = _WAITING
                if found is not None:
                    taken = True
                    return SkDelivery(found[1], found[0], peer)
                if self.link.closed:
                    raise LinkClosedError("the device hung up while waiting for its match")
            if not await s.db(s.store.cancel_intent, row):
                found = await s.db(_take_match, s, q, row)  # matched at the last instant
                if found is not None:
                    taken = True
                    return SkDelivery(found[1], found[0], peer)
            taken = True  # withdrawn
            s.stats["timeouts"] += 1
            s._log(f"no match for {clean_name(me.name)}'s intent toward "
                   f"{clean_name(peer.name)} within {q.wait:g} s")
            return None
        finally:
            with s._hand_lock:
                s._waiters.pop(row, None)  # a key handed over from now on is dropped
            if not taken:
                with contextlib.suppress(PairingError):
                    await s.db(s.store.cancel_intent, row)

    async def ttp_cert(self, q: CertAsked) -> bytes:
        """A device certificate for an enrolled device's signing key (issue 14), signed with
        the CA key when it is in the server's directory."""
        s = self.s

        def check() -> DeviceRecord:
            me = s.store.device(q.device_id)
            if me is None or not same(me.static, q.static) or not same(me.signing, q.signing):
                raise NotFoundError(
                    "this device is not enrolled with this signing key; run 'pairkit ttp "
                    "enrol' first"
                )
            return me

        me = await s.db(check)
        ca_key = load_ca_key(s.dir)
        if ca_key is None:
            raise RefusedError(
                "this key server issues no device certificates: its CA key is kept offline"
            )
        der = make_device_cert(
            ca_key, load_cert(s.dir.ca_cert), device_id=q.device_id, name=me.name,
            static=q.static, signing=q.signing,
            now=datetime.datetime.fromtimestamp(s._clock(), datetime.UTC),
        )
        # Looked up again once signed: a revoke that committed meanwhile (another process, in
        # the time the look-up and the signature took) keeps the certificate in (atk20r 2).
        # One committed after this check is a revoke after the issue: the certificate stands
        # until it expires (docs/security.md, "Revoking a device at the key server").
        me = await s.db(check)
        s.stats["certified"] = s.stats.get("certified", 0) + 1
        s._log(f"certified {clean_name(me.name)} ({q.device_id.hex()[:16]}) for group trust")
        return der

    async def cpns_keys(self, q: CpnsKeysAsked) -> CpnsKeys:
        s = self.s
        keys = await s.db(s.store.eukeys, (q.gw_id, *q.pne_ids))
        gw = keys.pop(q.gw_id, None)
        return CpnsKeys(gw, keys)

    async def cpns_register(self, q: CpnsRegisterAsked) -> bool:
        s = self.s
        await s.db(s.store.register_pn, q.inventory, s._clock())
        s.stats["pns"] += 1
        names = ", ".join(clean_name(m.name) for m in q.inventory.members)
        inv = q.inventory
        # the PN by its gateway too: another gateway may register the same id, under the same
        # name (a PN is its gateway's: docs/security.md, the PN section, item 5)
        s._log(f"registered PN {inv.pn_id.hex()[:16]} of {clean_name(inv.gw_name)} "
               f"({inv.gw_id.hex()[:16]}): {names}")
        return True


# -- running one server ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How to run one key server (:func:`serve`); ``pairkit ttp serve`` and
    ``python -m pairkit.keyserver`` build one from their options."""

    #: the directory ``pairkit ttp init`` (:func:`pairkit.keyserver.certs.init_server_dir`) made
    directory: Path
    #: the address to listen on; port 0 picks a free one (see :attr:`Listening.address`)
    host: str = "127.0.0.1"
    port: int = 8443
    limits: Limits = dataclasses.field(default_factory=Limits)
    #: ``postgresql://...``: serve from that PostgreSQL database, shared with any number of
    #: other server processes (:mod:`pairkit.keyserver.pgstore`); None: the SQLite file
    database: str | None = None


@dataclasses.dataclass(frozen=True)
class Listening:
    """What a started server tells its caller (no secrets)."""

    #: ``HOST:PORT`` it listens on
    address: str
    #: the CA certificate devices pin, and its fingerprint for people to compare
    ca_cert: Path
    ca_fingerprint: str
    #: devices enrolled when it started
    devices: int
    #: the token file devices must give when enrolment is closed; None when it is open
    enrol_token: Path | None


#: the collector's young generation runs once allocations exceed frees by this many (Python's
#: default is 700).  With the default the collector took 6.8% of the key server's CPU in a
#: bench run (a young collection every third delivery, an older one every thirty, three full
#: ones), 2.5% with this and :func:`gc.freeze` (bench/RESULTS.md, session 14, "keysrv3").
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> Callable[[], None]:
    """For a process that serves: once listening, hide what start-up made (modules, the TLS
    context, the store) from the collector (:func:`gc.freeze`) and collect the young generation
    less often.  Cyclic garbage is still collected, later.  Gives a function that undoes both
    (for a process that goes on after serving)."""
    saved = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, saved[1], saved[2])

    def undo() -> None:
        gc.unfreeze()
        gc.set_threshold(*saved)

    return undo


async def serve(
    config: ServeConfig,
    *,
    ready: Callable[[Listening], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a key server until ``stop`` is set (by default: until SIGINT or SIGTERM).

    ``ready`` is called once it listens.  A directory that is not a key server's, an unreadable
    enrolment token or an address that cannot be bound raise :class:`ConfigError` before any
    device is served.
    """
    d = ServerDir(Path(config.directory))
    d.check()
    token = d.enrol_token()
    fp = cert_fingerprint(load_cert(d.ca_cert))
    server = TtpServer(d.root, limits=config.limits, enrol_token=token, database=config.database)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        address = await server.start(config.host, config.port)
        count = await server.db(server.store.device_count)
        log.info("pairkit key server listening on %s (TLS 1.3); %d device(s) enrolled",
                 address, count)
        log.info("database: %s", server.store.where)
        log.info("devices pin %s (CA fingerprint %s); enrolment %s", d.ca_cert, fp,
                 f"needs the token in {d.token}" if token else "is open")
        if ready is not None:
            ready(Listening(address, d.ca_cert, fp, count, d.token if token else None))
        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
                    handled.append(sig)
        await stop.wait()
        log.info("key server stopping")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.close()
