"""In-memory links, hellos and connections for tests and one-process demos (DESIGN.md "Links").

Two ways in:

* :func:`loopback_pair` gives two connected :class:`LoopbackLink` objects at once, the link
  equivalent of a socketpair.  It is what tests of the channel, the handshakes and the driver
  use::

      async with loopback_pair(mtu=20) as (guest, host):
          await guest.send(b"hello")
          assert await host.recv() == b"hello"

* :class:`LoopbackMedium` is a pretend radio shared by every endpoint of one test or one demo
  process.  ``medium.endpoint("host")`` returns a :class:`LoopbackEndpoint`, which advertises a
  hello (:class:`~transports.base.Advertiser`), scans (:class:`~transports.base.Scanner`),
  listens (``await endpoint.listen()`` returns a :class:`~transports.base.Listener`) and
  connects (:class:`~transports.base.Connector`), as a BLE host or guest would.

Sitting in the middle.  A test that plays a man in the middle has two choices:

* ``loopback_pair(tap=f)`` (or ``LoopbackMedium(tap=f)``): every message sent on the pair first
  goes through ``f(src, dst, data)``, where ``src`` and ``dst`` are the endpoints' names.  ``f``
  returns the bytes to deliver, ``None`` to drop the message, or a list of messages to deliver
  instead (empty to drop, several to inject); it may be ``async`` (to delay or reorder).  What
  the tap returns is delivered as is, even over the MTU, so a tap can test a receiver's checks.
* A relay of two pairs, for a middle that runs its own protocol (its own handshakes with each
  side)::

      guest, mitm_g = loopback_pair(names=("guest", "mitm"))
      mitm_h, host = loopback_pair(names=("mitm", "host"))
      # ... run your attacker between mitm_g and mitm_h, or pass everything through:
      task = asyncio.create_task(relay(mitm_g, mitm_h, tap=f))

Each direction of a loopback link is a :class:`~transports.queued.MessageQueue`, as the
receive side of a TCP link is; both links are :class:`~transports.queued.QueuedLink` objects.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from pairkit.pairing.errors import (
    ConfigError,
    LinkClosedError,
    PairingTimeout,
    TooLargeError,
    TransportError,
)

from .base import Link, Sighting
from .queued import (
    DEFAULT_QUEUE_SIZE,
    MessageQueue,
    QueuedLink,
    Signal,
    check_mtu,
    check_positive,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MTU",
    "DEFAULT_QUEUE_SIZE",
    "LinkPair",
    "LoopbackEndpoint",
    "LoopbackLink",
    "LoopbackListener",
    "LoopbackMedium",
    "LoopbackTarget",
    "MessageQueue",
    "Tap",
    "default_medium",
    "loopback_pair",
    "open",
    "relay",
]

DEFAULT_MTU = 512  #: the largest GATT attribute value, so loopback behaves like a good BLE link
DEFAULT_MAX_PAYLOAD = 255  #: an extended advertisement's worth; legacy BLE carries 31
DEFAULT_SCAN_INTERVAL = 0.05  #: seconds between repeated sightings of the same advertiser
DEFAULT_CONNECT_TIMEOUT = 10.0

TapResult = bytes | None | Sequence[bytes]
#: ``tap(src, dst, data)`` -> bytes to deliver, ``None`` to drop, or a list of messages.
Tap = Callable[[str, str, bytes], TapResult | Awaitable[TapResult]]


class LoopbackLink(QueuedLink):
    """One end of an in-memory :class:`~transports.base.Link`.

    Made by :func:`loopback_pair` or by :meth:`LoopbackEndpoint.connect`; not constructed
    directly.  ``closed`` is true once either side has closed (messages sent before the peer's
    close can still be received).
    """

    def __init__(
        self,
        *,
        local: str,
        peer: str,
        mtu: int,
        encrypted: bool,
        inbox: MessageQueue,
        outbox: MessageQueue,
        tap: Tap | None,
        mitm_protected: bool = False,
    ) -> None:
        super().__init__(peer=peer, mtu=mtu, inbox=inbox)
        self._local = local
        self._encrypted = encrypted
        self._mitm = encrypted and mitm_protected
        self._outbox = outbox
        self._tap = tap

    def _describe(self) -> str:
        return f"{self._local}->{self._peer}"

    @property
    def local(self) -> str:
        """This end's own name (the peer's ``peer``)."""
        return self._local

    @property
    def encrypted(self) -> bool:
        return self._encrypted

    @property
    def mitm_protected(self) -> bool:
        """What a MITM-protected link pairing would report (a test's choice)."""
        return self._mitm

    @property
    def closed(self) -> bool:
        return self._closed or self._outbox.ended

    async def send(self, data: bytes) -> None:
        data = self._check_send(data)
        if self._tap is None:
            await self._outbox.put(data)
            return
        result = self._tap(self._local, self._peer, data)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            return
        for message in [result] if isinstance(result, bytes | bytearray) else result:
            if self._closed:
                raise LinkClosedError("the link is closed")
            await self._outbox.put(bytes(message))

    def send_nowait(self, data: bytes) -> bool:
        """:meth:`send` if it need not wait: True once the message is queued for the peer,
        False (nothing sent) when the peer's queue is full or a tap sits on the link; raises
        as :meth:`send` would (a closed link, a message over the MTU)."""
        if self._tap is not None:
            return False  # a tap may wait, drop or inject: the ordinary path
        if type(data) is bytes and len(data) <= self._mtu and not self._closed:
            return self._outbox.try_put(data)  # what _check_send gives (issue 13: no calls)
        return self._outbox.try_put(self._check_send(data))

    async def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # What we sent stays readable by the peer; what the peer sent us and we did not read
        # is dropped, and the peer's next send fails.
        gone = LinkClosedError(f"the peer ({self._local}) closed the link")
        self._outbox.finish(gone)
        self._inbox.abort(gone)


class LinkPair(NamedTuple):
    """Two connected links; unpacks as ``a, b`` and closes both on ``async with`` exit."""

    a: LoopbackLink
    b: LoopbackLink

    async def aclose(self) -> None:
        await self.a.close()
        await self.b.close()

    async def __aenter__(self) -> LinkPair:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _make_pair(
    a_name: str,
    b_name: str,
    *,
    mtu: int,
    encrypted: bool,
    queue_size: int,
    tap: Tap | None,
    mitm_protected: bool = False,
) -> LinkPair:
    a_to_b = MessageQueue(queue_size)
    b_to_a = MessageQueue(queue_size)
    common = {"mtu": mtu, "encrypted": encrypted, "tap": tap, "mitm_protected": mitm_protected}
    a = LoopbackLink(local=a_name, peer=b_name, inbox=b_to_a, outbox=a_to_b, **common)
    b = LoopbackLink(local=b_name, peer=a_name, inbox=a_to_b, outbox=b_to_a, **common)
    return LinkPair(a, b)


def loopback_pair(
    *,
    mtu: int = DEFAULT_MTU,
    encrypted: bool = False,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    tap: Tap | None = None,
    names: tuple[str, str] = ("a", "b"),
    mitm_protected: bool = False,
) -> LinkPair:
    """Two connected in-memory links, ``(a, b)``; ``a.peer == names[1]``, ``b.peer == names[0]``.

    ``encrypted=True`` makes both links claim link-layer encryption (method ``clear`` needs it);
    ``mitm_protected=True`` also claims that its pairing was MITM-protected.
    ``tap`` sees every message in both directions (see the module docstring).  Needs no running
    event loop to be called.
    """
    check_mtu(mtu)
    check_positive("queue_size", queue_size)
    a_name, b_name = names
    if not a_name or not b_name or a_name == b_name:
        raise ConfigError(f"a pair needs two different non-empty names, not {names!r}")
    return _make_pair(
        a_name, b_name, mtu=mtu, encrypted=bool(encrypted), queue_size=queue_size, tap=tap,
        mitm_protected=bool(mitm_protected),
    )


async def relay(left: Link, right: Link, *, tap: Tap | None = None) -> None:
    """Pass every message from ``left`` to ``right`` and back until either side closes.

    Works for any two :class:`~transports.base.Link` objects (a loopback pair on one side and a
    TCP link on the other, say).  When one side ends, the other is closed after everything
    already received has been passed on, so close semantics carry through.  ``tap`` is called as
    ``tap(left.peer, right.peer, data)`` (or the reverse) as for :func:`loopback_pair`.  An error
    other than a close (a decode error on a TCP side, a tap that raised) closes both sides and
    is raised.
    """

    async def pump(src: Link, dst: Link) -> None:
        try:
            while True:
                data = await src.recv()
                result: TapResult = data
                if tap is not None:
                    result = tap(src.peer, dst.peer, data)
                    if inspect.isawaitable(result):
                        result = await result
                if result is None:
                    continue
                for message in [result] if isinstance(result, bytes | bytearray) else result:
                    await dst.send(bytes(message))
        except LinkClosedError:
            pass
        finally:
            await dst.close()
            await src.close()

    results = await asyncio.gather(pump(left, right), pump(right, left), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class LoopbackMedium:
    """A pretend radio: the endpoints that can hear and reach each other.

    Settings apply to every endpoint made from this medium; an endpoint may lower ``mtu`` or
    turn ``encrypted`` or ``mitm_protected`` off for itself (a link gets the smaller MTU of its
    two ends, and is encrypted, or MITM-protected, only if both ends are).  ``encrypted``
    pretends an LE Secure Connections link; ``mitm_protected`` pretends that its pairing was
    protected against a man in the middle (numeric comparison, passkey, OOB), and counts only
    on an encrypted link.  ``rssi`` is what every sighting reports.  ``tap`` is given
    to every link made by :meth:`LoopbackEndpoint.connect`.
    """

    def __init__(
        self,
        *,
        mtu: int = DEFAULT_MTU,
        encrypted: bool = False,
        mitm_protected: bool = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        rssi: int | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.mtu = check_mtu(mtu)
        self.encrypted = bool(encrypted)
        self.mitm_protected = bool(mitm_protected)
        self.queue_size = check_positive("queue_size", queue_size)
        self.max_payload = check_positive("max_payload", max_payload)
        if not scan_interval > 0:
            raise ConfigError(f"scan_interval must be positive, not {scan_interval!r}")
        self.scan_interval = float(scan_interval)
        self.rssi = rssi
        self.tap = tap
        self._endpoints: dict[str, LoopbackEndpoint] = {}
        self._changed = Signal()  # an endpoint came, went, started or stopped advertising
        self._counter = itertools.count(1)

    def __repr__(self) -> str:
        return f"<LoopbackMedium endpoints={sorted(self._endpoints)}>"

    @property
    def addresses(self) -> list[str]:
        """The addresses of the endpoints currently on the medium."""
        return list(self._endpoints)

    def endpoint(
        self,
        address: str | None = None,
        *,
        name: str | None = None,
        mtu: int | None = None,
        encrypted: bool | None = None,
        mitm_protected: bool | None = None,
    ) -> LoopbackEndpoint:
        """The endpoint called ``address`` (made if new; the same object if it exists).

        ``address=None`` makes a fresh one named ``loopback-N``.  ``name`` is what scanners see
        in :attr:`Sighting.name`.
        """
        if address is None:
            address = f"loopback-{next(self._counter)}"
            while address in self._endpoints:
                address = f"loopback-{next(self._counter)}"
        elif not isinstance(address, str) or not address:
            raise ConfigError(f"a loopback address is a non-empty string, not {address!r}")
        existing = self._endpoints.get(address)
        if existing is not None:
            return existing
        endpoint = LoopbackEndpoint(
            self,
            address,
            name=name,
            mtu=self.mtu if mtu is None else min(check_mtu(mtu), self.mtu),
            encrypted=self.encrypted if encrypted is None else bool(encrypted) and self.encrypted,
            mitm_protected=(
                self.mitm_protected
                if mitm_protected is None
                else bool(mitm_protected) and self.mitm_protected
            ),
        )
        self._endpoints[address] = endpoint
        self._changed.fire()
        return endpoint

    def _remove(self, endpoint: LoopbackEndpoint) -> None:
        if self._endpoints.get(endpoint.address) is endpoint:
            del self._endpoints[endpoint.address]
            self._changed.fire()


class LoopbackListener:
    """Links that guests opened to one endpoint, waiting to be accepted."""

    def __init__(self, endpoint: LoopbackEndpoint) -> None:
        self._endpoint = endpoint
        self._backlog: deque[LoopbackLink] = deque()
        self._changed = Signal()
        self._closed = False

    @property
    def address(self) -> str:
        return self._endpoint.address

    @property
    def closed(self) -> bool:
        return self._closed

    def _offer(self, link: LoopbackLink) -> None:
        self._backlog.append(link)
        self._changed.fire()

    def accept_nowait(self) -> LoopbackLink | None:
        """The next guest's link if one is waiting, else ``None`` (never waits): a host takes
        every waiting link in one turn of its loop (issue 17's admission, issue 13's bench)."""
        if self._closed or not self._backlog:
            return None
        return self._backlog.popleft()

    async def accept(self, timeout: float | None = None) -> LoopbackLink:
        """The next guest's link; PairingTimeout after ``timeout`` seconds (None: no limit).

        Raises LinkClosedError once the listener is closed.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed:
                raise LinkClosedError(f"the listener on {self.address} is closed")
            if self._backlog:
                return self._backlog.popleft()
            if deadline is None:
                await self._changed.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PairingTimeout(f"no guest connected to {self.address} within {timeout:g} s")
            await self._changed.wait(remaining)

    async def close(self) -> None:
        """Stop listening; guests whose links were not accepted see them closed."""
        if self._closed:
            return
        self._closed = True
        while self._backlog:
            await self._backlog.popleft().close()
        if self._endpoint._listener is self:
            self._endpoint._listener = None
        self._changed.fire()
        self._endpoint.medium._changed.fire()


class LoopbackEndpoint:
    """One device on a :class:`LoopbackMedium`: advertiser, scanner, listener and connector.

    Also the object ``open_transport("loopback")`` returns.
    """

    def __init__(
        self,
        medium: LoopbackMedium,
        address: str,
        *,
        name: str | None,
        mtu: int,
        encrypted: bool,
        mitm_protected: bool = False,
    ) -> None:
        self.medium = medium
        self.address = address
        self.name = name
        self.mtu = mtu
        self.encrypted = encrypted
        self.mitm_protected = mitm_protected
        self._payload: bytes | None = None
        self._listener: LoopbackListener | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<LoopbackEndpoint {self.address}>"

    @property
    def max_payload(self) -> int:
        return self.medium.max_payload

    @property
    def advertising(self) -> bool:
        return self._payload is not None

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"the loopback endpoint {self.address} is closed")

    async def start_advertising(self, payload: bytes) -> None:
        """Broadcast ``payload`` (replacing any earlier one) until :meth:`stop_advertising`."""
        self._check_open()
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"a hello payload is bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        if len(payload) > self.max_payload:
            raise TooLargeError(
                f"a hello of {len(payload)} bytes does not fit an advertisement "
                f"(at most {self.max_payload} bytes)"
            )
        self._payload = payload
        self.medium._changed.fire()

    async def stop_advertising(self) -> None:
        if self._payload is not None:
            self._payload = None
            self.medium._changed.fire()

    async def scan(self, timeout: float) -> AsyncIterator[Sighting]:
        """Yield a sighting of every other advertising endpoint, again every ``scan_interval``.

        A new advertisement is heard at once; the scan ends after ``timeout`` seconds.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for other in list(self.medium._endpoints.values()):
                if other is not self and other._payload is not None:
                    yield Sighting(
                        address=other.address,
                        payload=other._payload,
                        rssi=self.medium.rssi,
                        name=other.name,
                    )
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self.medium._changed.wait(min(self.medium.scan_interval, remaining))

    async def listen(self) -> LoopbackListener:
        """Start accepting links (idempotent: the same listener until it is closed)."""
        self._check_open()
        if self._listener is None:
            self._listener = LoopbackListener(self)
            self.medium._changed.fire()
        return self._listener

    async def connect(
        self, address: str | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> LoopbackLink:
        """Open a link to the endpoint ``address``, waiting up to ``timeout`` s for it to listen.

        As with a BLE peripheral that has not started advertising yet, a missing or
        non-listening endpoint is waited for; PairingTimeout when the time is up.
        """
        self._check_open()
        if not address:
            raise ConfigError("connect needs the loopback address of the host to reach")
        if address == self.address:
            raise ConfigError(f"{self.address} cannot connect to itself")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            target = self.medium._endpoints.get(address)
            if target is not None and target._listener is not None:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                why = "nothing is listening there" if target else "no such endpoint"
                raise PairingTimeout(
                    f"cannot reach loopback endpoint {address!r}: {why} (waited {timeout:g} s)"
                )
            await self.medium._changed.wait(remaining)
        guest, host = _make_pair(
            self.address,
            target.address,
            mtu=min(self.mtu, target.mtu),
            encrypted=self.encrypted and target.encrypted,
            queue_size=self.medium.queue_size,
            tap=self.medium.tap,
            mitm_protected=self.mitm_protected and target.mitm_protected,
        )
        target._listener._offer(host)
        return guest

    async def close(self) -> None:
        """Stop advertising and listening and leave the medium (links already made stay up)."""
        if self._closed:
            return
        self._payload = None
        if self._listener is not None:
            await self._listener.close()
        self._closed = True
        self.medium._remove(self)


_default_medium: LoopbackMedium | None = None


def default_medium() -> LoopbackMedium:
    """The process-wide medium ``open_transport("loopback")`` uses (tests pass their own)."""
    global _default_medium
    if _default_medium is None:
        _default_medium = LoopbackMedium()
    return _default_medium


class LoopbackTarget:
    """What ``open_transport("loopback:NAME")`` returns: the endpoint NAME from either side.

    As ``tcp:HOST:PORT`` names one address for the host (``listen``) and the guest
    (``connect``), ``loopback:NAME`` does: ``listen`` and ``start_advertising`` act as the
    endpoint NAME; ``connect`` (to NAME unless told otherwise) and ``scan`` act from a fresh
    endpoint of the same medium.  ``close`` closes the endpoints this object made.
    """

    def __init__(self, medium: LoopbackMedium, address: str, **endpoint_options: Any) -> None:
        self.medium = medium
        self.address = address
        self._options = endpoint_options
        self._host: LoopbackEndpoint | None = None
        self._guest: LoopbackEndpoint | None = None

    def __repr__(self) -> str:
        return f"<LoopbackTarget {self.address}>"

    @property
    def max_payload(self) -> int:
        return self.medium.max_payload

    def _as_host(self) -> LoopbackEndpoint:
        if self._host is None:
            self._host = self.medium.endpoint(self.address, **self._options)
        return self._host

    def _as_guest(self) -> LoopbackEndpoint:
        if self._guest is None:
            self._guest = self.medium.endpoint(None, **self._options)
        return self._guest

    async def listen(self) -> LoopbackListener:
        return await self._as_host().listen()

    async def start_advertising(self, payload: bytes) -> None:
        await self._as_host().start_advertising(payload)

    async def stop_advertising(self) -> None:
        if self._host is not None:
            await self._host.stop_advertising()

    def scan(self, timeout: float) -> AsyncIterator[Sighting]:
        return self._as_guest().scan(timeout)

    async def connect(
        self, address: str | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> LoopbackLink:
        target = self.address
        if address:
            target = address.removeprefix("loopback:")
        return await self._as_guest().connect(target, timeout)

    async def close(self) -> None:
        for endpoint in (self._guest, self._host):
            if endpoint is not None:
                await endpoint.close()


def open(
    args: str = "",
    *,
    medium: LoopbackMedium | None = None,
    name: str | None = None,
    mtu: int | None = None,
    encrypted: bool | None = None,
    mitm_protected: bool | None = None,
) -> LoopbackEndpoint | LoopbackTarget:
    """Registry entry point for ``loopback`` and ``loopback:NAME``.

    ``loopback`` gives a fresh :class:`LoopbackEndpoint` (every role; ``connect`` needs an
    address); ``loopback:NAME`` gives a :class:`LoopbackTarget` for NAME.  Both use
    :func:`default_medium` unless ``medium`` is given.
    """
    medium = medium or default_medium()
    if args:
        return LoopbackTarget(
            medium, args, name=name, mtu=mtu, encrypted=encrypted, mitm_protected=mitm_protected
        )
    return medium.endpoint(
        None, name=name, mtu=mtu, encrypted=encrypted, mitm_protected=mitm_protected
    )
