"""pairkit from Python: devices, hosts and secure sessions (README "Use it from Python").

A :class:`Device` is a keystore: this device's identity, the peers it paired with, its clouds.
It hosts (:meth:`Device.host`, an async context manager whose :meth:`Host.accept` gives the next
paired guest) or joins (:meth:`Device.join`) over any transport pairkit has, named by the same
strings as on the command line (``tcp:HOST:PORT``, ``loopback:NAME``, ``bumble:usb:0``,
``bleak``) or given as an open transport object.  Either side ends with a :class:`Session`: an
encrypted, authenticated channel of whole messages (``send``, ``receive``, ``async for``,
``close``) and, towards a host that shares a folder, ``list_files`` and ``fetch``.

Everything runs the one session pipeline of :mod:`pairkit.session`, so an application gets the
same guarantees as ``pairkit host`` and ``pairkit join`` (docs/security.md).  The questions a
person answers go to a :class:`~pairkit.delegate.Delegate`; without one, every question is
refused (:class:`~pairkit.delegate.Refuse`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from . import peers
from .admission import Admission, AdmissionLimits
from .clock import SYSTEM_CLOCK, Clock
from .delegate import Delegate, Refuse
from .files import (
    Fetched,
    ServeStats,
    get_file,
    list_files,
    serve_guest,
)
from .keystore import Argon2Params, Keystore
from .pairing.cloud import HostInfo, Role, is_probe
from .pairing.errors import ConfigError, LinkClosedError, PairingError, PairingTimeout
from .pairing.methods import PairingConfig, PinPolicy
from .pairing.negotiation import ALL_CAPS, Method
from .pairing.qr import QrCode
from .pairing.service import FileEntry, GrantPolicy, Membership
from .presence import Presence
from .session import (
    Established,
    GuestSide,
    HostSide,
    accept_loop,
    accept_session,
    ask_host,
    open_session,
    resolve_target,
)

__all__ = ["Device", "Fetched", "FileEntry", "Host", "PeerInfo", "Session"]


@dataclasses.dataclass(frozen=True)
class PeerInfo:
    """Who is on the other end: what people compare, never a key."""

    name: str
    #: the device id, hex (what ``pairkit peers`` lists)
    device_id: str
    #: SHA-256 of its static key, grouped as people read it aloud
    fingerprint: str
    #: whether a person vouched for this pairing (False for 'clear' over Just Works)
    authenticated: bool


def _methods(methods: Iterable[str | Method]) -> frozenset[Method]:
    out = set()
    for m in methods:
        if isinstance(m, Method):
            out.add(m)
            continue
        try:
            out.add(Method.parse(m))
        except (ValueError, AttributeError):
            raise ConfigError(f"unknown pairing method {m!r}; expected pin, qr, compare, clear, "
                              "resume or ttp") from None
    if not out:
        raise ConfigError("give at least one pairing method")
    return frozenset(out)


class Session:
    """A confirmed secure session with one peer (made by :meth:`Host.accept` or
    :meth:`Device.join`).  Use it as an async context manager, or call :meth:`close`."""

    def __init__(self, established: Established, *, role: str, delegate: Any = None,
                 clock: Clock = SYSTEM_CLOCK, owned_transport: Any = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self._done = established
        self._owned = owned_transport
        # A host's session: frees its place in the host's admission once it ended.
        self._on_end = on_end
        self._channel = established.channel
        self._role = role
        self._closed = False
        self._delegate = delegate
        self._clock = clock
        peer = established.session.peer
        #: the peer, as people compare it
        self.peer = PeerInfo(
            name=peer.name, device_id=peer.device_id.hex(),
            fingerprint=peers.key_fingerprint(peer.static_public),
            authenticated=peer.authenticated,
        )
        #: the pairing method that made this session ("pin", "qr", "compare", "resume", ...)
        self.method: str = established.session.method.label
        #: the session's fingerprint (the same on both sides)
        self.fingerprint: str = established.session.fingerprint

    @property
    def membership(self) -> Membership | None:
        """What the guest is to the host ("guest" until a time, or "member" of its cloud)."""
        return self._done.membership

    @property
    def role(self) -> str | None:
        """``"guest"`` or ``"member"``: the guest's standing with the host (None between
        known peers without a cloud step)."""
        m = self._done.membership
        return None if m is None else m.role.name.lower()

    @property
    def max_message(self) -> int:
        """The largest message :meth:`send` takes, in bytes."""
        return self._channel.max_message

    async def send(self, data: bytes) -> None:
        """Send one whole message, encrypted and authenticated."""
        if self._closed:
            raise LinkClosedError("this session is closed")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigError(f"send() takes bytes, not {type(data).__name__}")
        await self._channel.send(bytes(data))

    async def receive(self, timeout: float | None = None) -> bytes:
        """The peer's next message.  :class:`~pairing.errors.LinkClosedError` when the peer
        closed the session (this session is then closed too: its link with it),
        :class:`~pairing.errors.PairingTimeout` after ``timeout`` seconds (default: the
        session's step timeout)."""
        if self._closed:
            raise LinkClosedError("this session is closed")
        try:
            return await self._channel.recv(timeout)
        except LinkClosedError:
            # The peer closed the session (its CLOSE record) or the link: the session is over,
            # and so is the link.  Its place in the host's admission is freed only with the
            # link closed: freed on the CLOSE record alone, a peer that keeps the link open
            # held more links than the host serves (atk20c, session 20).
            with contextlib.suppress(PairingError, OSError):
                await self.close()
            raise

    def _ended(self) -> None:
        end, self._on_end = self._on_end, None
        if end is not None:
            end()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Every message until the peer closes the session (a silent peer still ends in
        :class:`PairingTimeout` after the session's step timeout)."""
        while True:
            try:
                yield await self.receive()
            except LinkClosedError:
                return

    async def close(self) -> None:
        """Close the session (an authenticated close the peer sees); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._channel.close()
        finally:
            try:
                if self._owned is not None:
                    await _close_quietly(self._owned)
            finally:
                # Its place in the host's admission is free only once its link is closed: a
                # peer that sent CLOSE and holds its end open (no FIN) keeps the link open for
                # the close's deadline, and must not have its place taken meanwhile (atk21,
                # finding 5).
                self._ended()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- files (docs/protocol.md, the file service) -------------------------------------------

    async def list_files(self, *, timeout: float = 180.0) -> list[FileEntry]:
        """The host's shared files (its owner may be asked first: allow a person's time)."""
        return await list_files(self._channel, timeout=timeout)

    async def fetch(
        self, name: str, dest: str | os.PathLike[str], *,
        progress: Callable[[int, int], None] | None = None, timeout: float = 180.0,
    ) -> Fetched:
        """Fetch the shared file ``name`` into ``dest`` (resuming a cut transfer from
        ``dest`` + ``.part``); the SHA-256 is checked before ``dest`` appears."""
        return await get_file(self._channel, name, Path(dest), progress=progress, timeout=timeout)

    async def serve_files(self, folder: str | os.PathLike[str] | None) -> ServeStats:
        """Host side: answer the guest's list and fetch requests from ``folder`` until it says
        goodbye or closes, within what its grant allows (the delegate is asked otherwise).  A
        request after a guest's grant ended is refused and the session closed
        (:attr:`ServeStats.expired`)."""
        membership = self._done.membership
        if self._role != "host" or membership is None:
            raise ConfigError("only a host serves files to the guest it accepted")
        delegate = self._delegate or Refuse()
        stats = await serve_guest(
            self._channel, peer_name=self.peer.name,
            policy=GrantPolicy(membership.role, expires=membership.expires),
            share=Path(folder) if folder is not None else None,
            ask=delegate.allow_request, wall_clock=self._clock.wall,
            monotonic=self._clock.monotonic, guest=self.peer.fingerprint,
        )
        if stats.expired:  # its grant ended: the session ends, its place is free (atk20c)
            await self.close()
        return stats

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pairkit.Session {state} with {self.peer.name!r} by {self.method}>"


#: The delegate's hooks that ask the person something and wait for the answer
#: (runtime/delegate.py's table); the others only tell.
_QUESTIONS = frozenset({"confirm_code", "allow_join", "join_cloud", "allow_request"})


class _OneQuestionAtATime:
    """A host's delegate as its guests' pairings and sessions ask it: one question at a time,
    in the order they came, as ``pairkit host``'s Terminal asks (cli/prompt.py).  The host
    serves several guests at once; an application's dialog written for one question at a
    time must not see a second question while the first waits, or the person's answer to the
    code on the screen may go to another guest's question (attack review atk14a, finding 3).
    A question's wait for its turn counts in its answer time (the driver bounds the hook).

    Once asked, a question holds the turn for at most ``answer_within`` seconds (the host's
    step timeout) and is then answered no (:class:`~pairkit.delegate.Refuse`'s answer), as
    ``pairkit host``'s Terminal answers a question nobody answered within the step: one
    stranger's request nobody answers would otherwise hold every other guest's question for
    the driver's whole answer time (120 s; attack review atk14d, finding 1)."""

    def __init__(self, delegate: Any, answer_within: float) -> None:
        self._delegate = delegate
        self._within = answer_within
        self._turn = asyncio.Lock()  # FIFO

    def __getattr__(self, name: str) -> Any:
        hook = getattr(self._delegate, name)
        if name not in _QUESTIONS:
            return hook

        async def asked(question: Any) -> Any:
            async with self._turn:
                try:
                    async with asyncio.timeout(self._within) as turn:
                        return await hook(question)
                except TimeoutError:
                    if not turn.expired():
                        raise  # the delegate's own error
            # No answer within the step: no, as pairkit host answers.
            return await getattr(Refuse(), name)(question)

        return asked

    def __repr__(self) -> str:
        return repr(self._delegate)


class Host:
    """A device waiting for guests on one transport (from :meth:`Device.host`).

    ``async with device.host(...) as host``: the transport is opened (unless an object was
    given), the hello broadcast where the transport can broadcast, and :meth:`accept` returns
    the next guest once it is paired, confirmed and stored.  A guest that fails is told to
    the delegate (``on_event``) and never ends the host.

    While an :meth:`accept` waits, the host serves every link that comes as ``pairkit host``
    does (:func:`~pairkit.session.accept_loop` under an :class:`~pairkit.admission.Admission`:
    docs/security.md, "A pairing host's pending links"): several guests pair at once, a link
    that has sent no whole message within the first flight (5 s) is dropped, and on BLE so is
    a connection that opens no link within two first flights; a stranger who connects and
    says nothing never keeps a guest from pairing.  A guest still pairing when that
    :meth:`accept` returns goes on, and the next :meth:`accept` returns it (one not taken
    before the host closes is closed with it); an :meth:`accept` that ends without a guest
    (cancelled, or its timeout) while no other waits stops the pairings under way, as
    :meth:`close` does.  While no :meth:`accept` waits, links are taken under the same
    admission and held unserved (:meth:`_until_wanted`).  A session :meth:`accept` returned
    keeps its place in the admission (``max_sessions``, ``per_peer``: a peer's newest closing
    its oldest) until the application closes it or a ``receive`` finds its peer gone, as
    ``pairkit host`` counts a guest while it serves him.  The delegate is asked one question
    at a time, in the order they came, as ``pairkit host`` asks its owner."""

    def __init__(self, device: Device, transport: str | Any, *, methods: frozenset[Method],
                 pin: str | None, delegate: Any, visible: float | None, step_timeout: float,
                 qr_ttl: float, admission: AdmissionLimits | None = None) -> None:
        self._device = device
        self._spec = transport if isinstance(transport, str) else None
        self._given = None if isinstance(transport, str) else transport
        # Known peers always resume (Device.host): resume is among the methods this host runs
        # and says it runs, and kk, its fallback, with it (a pairing machine runs only the
        # methods its config allows: attack review atk19d, finding 1).
        self._methods = methods | {Method.RESUME}
        self._pin = pin
        self._delegate = _OneQuestionAtATime(delegate, answer_within=step_timeout)
        self._visible = visible
        self._step_timeout = step_timeout
        self._qr_ttl = qr_ttl
        self._transport: Any = None
        self._listener: Any = None
        self._presence: Presence | None = None
        self._side: HostSide | None = None
        self._limits = admission or AdmissionLimits()
        # One admission for the host's life: the sessions accept() returned count in it until
        # the application closes them, across the links' server's restarts (Session._ended).
        self._admission = Admission(self._limits)
        # The links served (accept_loop), while accept() waits (_wanted); the guests paired
        # and not yet returned by accept(), in the order they paired (_arrived: one more).
        self._wanted = asyncio.Event()
        self._waiting = 0
        self._serving: asyncio.Task[None] | None = None
        self._paired: collections.deque[Session] = collections.deque()
        self._arrived = asyncio.Event()
        self._telling: set[asyncio.Future[Any]] = set()  # _report's calls of the delegate
        self._closing = False
        #: where guests reach this host (a BLE address, ``tcp:HOST:PORT``, a loopback name)
        self.address: str = ""

    async def __aenter__(self) -> Host:
        from .transports.registry import open_transport

        ks, clock = self._device.keystore, self._device.clock
        self._transport = self._given or await open_transport(self._spec)
        try:
            t = self._transport
            self._listener = await t.listen() if hasattr(t, "listen") else t
            self.address = str(getattr(self._listener, "address", None)
                               or getattr(t, "address", self._spec))
            self._presence = Presence(t, ks, self._methods, visible_for=self._visible,
                                      wall_clock=clock.wall)
            config = PairingConfig(methods=self._methods, caps=ALL_CAPS,
                                   step_timeout=self._step_timeout)
            presence = self._presence
            self._side = HostSide.of(
                ks, config, transport=self._spec or self.address, pin_policy=PinPolicy(),
                step_timeout=self._step_timeout, open_to_strangers=lambda: presence.visible,
                clock=clock,
            )
            if Method.PIN in self._methods:
                state = self._side.state
                state.set_pin(self._pin) if self._pin is not None else state.new_pin()
            await self._presence.start()
            # On BLE the host moved to its first resolvable private address as it started.
            self.address = str(getattr(self._listener, "address", None)
                               or getattr(t, "address", self._spec))
            # The links' server starts now and takes every link as it comes, under the
            # admission (a BLE connection that opens no link dropped, accept_loop); a link is
            # served only while an accept() waits (_until_wanted).
            self._start_serving()
        except BaseException:
            await self._close_transport()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def pin(self) -> str | None:
        """The PIN a guest types now (each PIN serves one guest; a fresh one follows)."""
        return self._ready().state.pin

    def qr_code(self) -> str:
        """A new single-use QR code (its ``pairkit:`` URI) for a guest to scan."""
        side = self._ready()
        if Method.QR not in self._methods:
            raise ConfigError("this host does not offer method 'qr'")
        code = side.state.issue_qr(self._device.keystore.static_public, self._device.clock.wall(),
                                   ttl=self._qr_ttl, hint=self.address)
        return code.to_uri()

    async def accept(self, timeout: float | None = None) -> Session:
        """The next guest, paired, confirmed and stored.  :class:`PairingTimeout` if none
        completes within ``timeout`` seconds (None: wait until one does).

        While it waits, every link is served at once under the host's admission (the class
        docstring): a stranger who connects and says nothing is dropped at the first flight
        and keeps no guest waiting.

        On BLE, a radio that goes away (a dongle unplugged) ends the wait with
        ``pairkit.transports.base.ControllerLostError`` (code NOT_FOUND); open a new host once
        the radio is back (``pairkit host`` does that itself: README "When the dongle is
        unplugged")."""
        self._ready()
        try:
            async with asyncio.timeout(timeout):
                return await self._next_guest()
        except TimeoutError:
            if self._paired:
                # A guest was kept (stored) as the deadline passed, during its save: his, not
                # a timeout the application would take for "no guest" (atk14d, finding 2).
                return self._paired.popleft()
            raise PairingTimeout(f"no guest paired within {timeout:g} s") from None

    async def _next_guest(self) -> Session:
        """The next guest paired (serving links meanwhile, see :meth:`accept`)."""
        if self._paired:
            return self._paired.popleft()
        if self._closing:
            raise LinkClosedError("the host is closed")
        serving = self._server()
        self._waiting += 1
        self._wanted.set()
        try:
            while not self._paired:
                if serving.done():
                    if self._closing or self._listener is None:
                        raise LinkClosedError("the host is closed")
                    if serving.cancelled():  # stopped by an accept() that ended just before
                        serving = self._server()
                        continue
                    error = serving.exception()
                    raise error if error is not None else LinkClosedError("the host is closed")
                self._arrived.clear()
                arrived = asyncio.ensure_future(self._arrived.wait())
                try:
                    await asyncio.wait({arrived, serving}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    arrived.cancel()
            return self._paired.popleft()
        except BaseException:
            # Ended without a guest (cancelled, its timeout) and no other accept() waits: the
            # pairings under way stop, as before session 14 (atk14a finding 2); guests
            # already paired stay for the next accept(), which starts the server again.
            if self._waiting == 1 and not serving.done():
                serving.cancel()
                with contextlib.suppress(BaseException):
                    await serving
                if not self._closing and self._listener is not None:
                    # Links go on being taken under the admission while none is served: none
                    # waits in the transport with no deadline (hostq, doubt 2).
                    self._start_serving()
            raise
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._wanted.clear()

    def _server(self) -> asyncio.Task[None]:
        """The links' server, started again if the last accept() that ended stopped it."""
        if self._serving is None or self._serving.cancelled():
            return self._start_serving()
        return self._serving

    def _start_serving(self) -> asyncio.Task[None]:
        self._serving = asyncio.create_task(accept_loop(
            self._listener, self._serve, admission=self._admission,
            on_error=self._report,
        ))
        return self._serving

    def _report(self, exc: PairingError) -> None:
        """What accept_loop contained (a guest's internal failure, a failed accept): told to
        the delegate as a guest that failed, as :meth:`_serve` tells a pairing that failed."""
        told = asyncio.ensure_future(self._delegate.on_event(GuestFailed("", str(exc))))
        self._telling.add(told)
        told.add_done_callback(self._told)

    def _told(self, told: asyncio.Future[Any]) -> None:
        self._telling.discard(told)
        if not told.cancelled():
            told.exception()  # the delegate's own failure ends nothing

    async def _serve(self, link: Any) -> bool | None:
        """One link, as :func:`~pairkit.session.accept_loop` runs it: its guest paired and
        kept for :meth:`accept`, or its failure told to the delegate; False for a link that
        only asked who this host is."""
        side = self._ready()
        try:
            await self._until_wanted(link)
            done = await accept_session(
                link, side, delegate=self._delegate, clock=self._device.clock
            )
        except PairingError as exc:
            await _close_quietly(link)
            if is_probe(exc):  # one that only asked who we are did not fail
                return False
            # Closed: its place in the admission is free while the application hears of it
            # (its handler may take its time; attack review atk16).
            over = getattr(link, "over", None)
            if over is not None:
                over()
            await self._delegate.on_event(GuestFailed(str(link.peer), str(exc)))
            return None
        except BaseException:
            # Stopped (the host closing, the link evicted): the guest is not left on a link
            # nobody serves (accept_loop closes only what fails).
            await _close_quietly(link)
            raise
        finally:
            if Method.PIN in self._methods and side.state.pin is None:
                side.state.new_pin()
        # The session keeps its place in the admission after this handler returns, until the
        # application closes it or its peer is gone, as pairkit host counts a guest while it
        # serves him: max_sessions and per_peer (a peer's newest closing its oldest) hold for
        # the sessions the application holds (hostq, doubt 1).
        keep = getattr(link, "keep", None)
        self._paired.append(Session(done, role="host", delegate=self._delegate,
                                    clock=self._device.clock,
                                    on_end=keep() if keep is not None else None))
        self._arrived.set()
        return True

    async def _until_wanted(self, link: Any) -> None:
        """Hold ``link`` (admitted, pending) until an :meth:`accept` waits: no guest is paired
        that the application did not ask for.  The link counts in the admission meanwhile (per
        address, at most pending, evicted as any pending link is), and is dropped if its first
        whole message is not in within the first flight from its arrival (a fragment that
        starts one is not enough; an LE pairing under way extends it as it extends a served
        link's: attack review atk16), or if no :meth:`accept` came within the host's step
        timeout (its guest has given up waiting by then).  Before, such links waited in the
        transport, unlimited and with no deadline (hostq, doubt 2)."""
        if self._wanted.is_set():
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        wait = self._limits.first_flight
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wanted.wait()
                    return
            # Met by a whole first message, not by a fragment that starts one (atk13; attack
            # review atk16: a held stranger's half message kept its place for the step timeout);
            # an LE pairing under way extends it, as it extends a served link's (atk16).
            if getattr(link, "first_message_in", True):
                break
            wait = link.first_flight_more()
            if wait <= 0:
                raise link.first_flight_missed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(self._step_timeout - (loop.time() - start), 0.0)):
                await self._wanted.wait()
                return
        raise PairingTimeout(f"no accept() took {link.peer} within {self._step_timeout:g} s")

    async def __aiter__(self) -> AsyncIterator[Session]:
        """Guests one after another, as they pair."""
        while True:
            yield await self.accept()

    async def close(self) -> None:
        """Stop broadcasting and listening (and close the transport if the host opened it);
        guests still pairing are stopped, and those paired and not returned by
        :meth:`accept` are closed."""
        self._closing = True  # an accept() called meanwhile starts no server (atk14a, 1)
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving
        while self._paired:
            await _close_quietly(self._paired.popleft())
        for told in list(self._telling):  # the delegate told of a failure: not past close()
            told.cancel()
        if self._presence is not None:
            await self._presence.stop()
            self._presence = None
        await self._close_transport()

    async def _close_transport(self) -> None:
        if self._listener is not None and self._listener is not self._transport:
            await _close_quietly(self._listener)
        self._listener = None
        if self._transport is not None and self._given is None:
            await _close_quietly(self._transport)
        self._transport = None

    def _ready(self) -> HostSide:
        if self._side is None or self._listener is None:
            raise ConfigError("use the host inside 'async with device.host(...) as host'")
        return self._side

    def __repr__(self) -> str:
        return f"<pairkit.Host {self._device.name!r} on {self.address or self._spec!r}>"


@dataclasses.dataclass(frozen=True)
class GuestFailed:
    """Told to the host's delegate (``on_event``): a guest's pairing failed, the host goes on."""

    peer: str
    reason: str


def _label(transport: Any) -> str:
    """What is stored as the transport of a peer reached through a transport object."""
    spec = getattr(transport, "spec", None)
    return str(spec) if spec else type(transport).__name__


async def _close_quietly(thing: Any) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        await thing.close()


class Device:
    """This device: its identity, peers and clouds, kept in a sealed keystore file."""

    def __init__(self, keystore: Keystore, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.keystore = keystore
        self.clock = clock

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], passphrase: str, *, name: str,
        kdf: Argon2Params | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> Device:
        """Make a new identity sealed under ``passphrase`` (6 characters or more) at ``path``;
        refuses to replace an existing keystore.  ``kdf``: the Argon2id cost (default: 64 MiB,
        3 passes; ``Argon2Params.cheapest()`` for tests only)."""
        return cls(Keystore.create(path, passphrase, name=name, kdf=kdf), clock=clock)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], passphrase: str, *, clock: Clock = SYSTEM_CLOCK
    ) -> Device:
        """Unlock the keystore at ``path`` (one ``pairkit init`` made, or :meth:`create`)."""
        return cls(Keystore.open(path, passphrase), clock=clock)

    @property
    def name(self) -> str:
        return self.keystore.name

    @property
    def device_id(self) -> str:
        return self.keystore.device_id

    @property
    def fingerprint(self) -> str:
        return self.keystore.fingerprint

    def peers(self) -> list[PeerInfo]:
        """The devices this one paired with."""
        return [
            PeerInfo(p.name, p.id, p.fingerprint, peers.trusted(p))
            for p in self.keystore.peers()
        ]

    def host(
        self, transport: str | Any, *, methods: Iterable[str | Method] = ("pin",),
        pin: str | None = None, delegate: Delegate | None = None,
        visible: float | None = 600.0, step_timeout: float = 30.0, qr_ttl: float = 600.0,
        admission: AdmissionLimits | None = None,
    ) -> Host:
        """Wait for guests on ``transport`` (a name or an open transport object).

        ``methods``: what guests may pair by (``pin``, ``qr``, ``compare``, ``clear``; known
        peers always ``resume``, or ``kk`` when they hold no prekey: both are added).
        ``pin``: the first guest's PIN (default: a random one, :attr:`Host.pin`).
        ``visible``: seconds strangers may find and join this host on a broadcasting transport
        (None: only members of its cloud).  ``delegate`` answers the owner's questions: a
        stranger asking to join is refused without one.  ``admission``:
        the limits on links not yet paired (:class:`pairkit.admission.AdmissionLimits`: the
        first flight, how many at once and from one address), as ``pairkit host``'s; the
        defaults are its defaults (:meth:`Host.accept`)."""
        return Host(self, transport, methods=_methods(methods), pin=pin,
                    delegate=delegate or Refuse(), visible=visible,
                    step_timeout=step_timeout, qr_ttl=qr_ttl, admission=admission)

    async def join(
        self, target: str, *, transport: str | Any | None = None,
        method: str | Method | None = None, pin: str | None = None, qr: str | None = None,
        delegate: Delegate | None = None, wants: str = "guest",
        step_timeout: float = 30.0, connect_timeout: float = 20.0,
        expect_name: str | None = None,
    ) -> Session:
        """Pair with the host at ``target`` and return the session.

        ``target``: a transport name (``tcp:HOST:PORT``, ``loopback:NAME``), a BLE address
        with ``transport`` naming the radio (or an open transport object), or a known peer's
        name (it resumes).  ``method`` defaults to ``resume`` for a known peer, ``qr`` when a
        ``qr`` URI is given, else ``pin``.  ``wants``: ``"guest"`` or ``"member"``.
        ``expect_name``: join only if the host says it has this name (:meth:`ask`); the
        pairing then checks that the proven host carries it."""
        from .transports.registry import open_transport

        ks = self.keystore
        spec_hint = transport if isinstance(transport, str) else (
            None if transport is None else _label(transport)
        )
        spec, address, peer = resolve_target(ks, target, spec_hint)
        chosen = (_methods([method]) if method is not None else None)
        m = next(iter(chosen)) if chosen else (
            Method.RESUME if peer is not None else Method.QR if qr is not None else Method.PIN
        )
        if m is Method.PIN and pin is None:
            raise ConfigError("method 'pin' needs the PIN the host shows: pin='123456'")
        if m in (Method.RESUME, Method.KK) and peer is None:
            raise ConfigError("method 'resume' needs a known peer: give its name")
        try:
            role = {"guest": Role.GUEST, "member": Role.MEMBER}[wants]
        except KeyError:
            raise ConfigError(f"wants is 'guest' or 'member', not {wants!r}") from None
        config = PairingConfig(methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS,
                               step_timeout=step_timeout)
        side = GuestSide(
            ks, config, m, transport=spec, address=spec if spec.startswith("tcp:") else None,
            pin=pin, qr=QrCode.parse(qr) if qr is not None else None, peer=peer,
            wants=role, step_timeout=step_timeout, expect_name=expect_name,
        )
        given = None if transport is None or isinstance(transport, str) else transport
        t = given or await open_transport(spec)
        link = None
        try:
            link = await t.connect(address, timeout=connect_timeout)
            done = await open_session(link, side, delegate=delegate or Refuse(), clock=self.clock)
        except BaseException:
            if link is not None:
                await _close_quietly(link)
            if given is None:
                await _close_quietly(t)
            raise
        return Session(done, role="guest", clock=self.clock,
                       owned_transport=t if given is None else None)

    async def ask(
        self, target: str, *, transport: str | Any | None = None, timeout: float = 10.0,
    ) -> HostInfo | None:
        """Ask the host at ``target`` who it is, without asking to join (the webinos hello
        response): its name, methods and capabilities, or ``None`` from a host that is not
        open to strangers and does not know this device.  Its owner is asked nothing.  The
        answer is the host's claim; :meth:`join` with ``expect_name`` holds it to it."""
        from .transports.registry import open_transport

        spec_hint = transport if isinstance(transport, str) else (
            None if transport is None else _label(transport)
        )
        spec, address, _ = resolve_target(self.keystore, target, spec_hint)
        given = None if transport is None or isinstance(transport, str) else transport
        t = given or await open_transport(spec)
        try:
            link = await t.connect(address, timeout=timeout)
            return await ask_host(link, self.keystore, timeout=timeout, clock=self.clock)
        finally:
            if given is None:
                await _close_quietly(t)

    def __repr__(self) -> str:
        return f"<pairkit.Device {self.name!r} {self.fingerprint}>"
