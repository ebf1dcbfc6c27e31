"""Links over TCP, for tests across processes and for demos between machines (DESIGN.md "Links").

TCP targets are explicit (``tcp:HOST:PORT``), so this transport neither advertises nor scans.
The host binds a :class:`TcpListener` and accepts; the guest calls :func:`tcp_connect`.

Wire format: each message is one frame, a 4-byte big-endian unsigned length followed by that
many bytes.  A length over the receiver's ``mtu`` is garbage (a peer that does not speak this
framing, or a broken one): the receiver closes the connection and its ``recv`` raises
:class:`~pairing.errors.DecodeError` once the messages before it are read.  Four bytes rather
than two so that such garbage is caught even at the largest MTU.  There is no MTU negotiation:
both ends should use the same ``mtu`` (the default, 65535, unless a test says otherwise).

Closing is graceful: the closing side sends its FIN after everything it sent, then reads and
discards until the peer's FIN (for at most ``close_timeout`` seconds), so that data the peer
sent and we never read does not turn our close into a reset that could destroy messages the
peer is still owed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket

from pairkit.pairing.errors import (
    ConfigError,
    DecodeError,
    LinkClosedError,
    PairingTimeout,
    TransportError,
)

from .queued import DEFAULT_QUEUE_SIZE, MAX_MTU, MessageQueue, QueuedLink, check_mtu

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MTU",
    "HEADER_SIZE",
    "TcpLink",
    "TcpListener",
    "TcpTransport",
    "format_host_port",
    "open",
    "parse_host_port",
    "tcp_connect",
]

DEFAULT_MTU = MAX_MTU
#: the bytes of received messages a link queues unread before it stops reading (TCP then holds
#: the sender back): two whole messages.  The queue's 16 messages alone let one link hold a
#: megabyte, and a library host holds up to 64 links nobody reads yet (attack review atk20c,
#: finding 4).
DEFAULT_MAX_BUFFER = 2 * MAX_MTU
HEADER_SIZE = 4  #: big-endian length before each message
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CLOSE_TIMEOUT = 2.0
#: connections waiting for accept() before new ones are turned away.  A burst arrives within one
#: turn of the event loop, before the accept loop runs (which then takes them all and lets the
#: admission choose, issue 17): 128 turned a legitimate guest away behind 180 garbage connects.
DEFAULT_BACKLOG = 1024
_STREAM_LIMIT = 1 << 17  # StreamReader buffer: must exceed one whole frame (MAX_MTU + header)


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) into a host and a port from 0 to 65535.

    Raises ConfigError with an example when the text is not of that shape.
    """
    if not isinstance(text, str):
        raise ConfigError(_usage(text))
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(_usage(text))
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(_usage(text))
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"the port in {text!r} is not from 0 to 65535")
    return host, port


def _usage(text: object) -> str:
    return f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8765)"


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_name(writer: asyncio.StreamWriter, fallback: str) -> str:
    peername = writer.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return format_host_port(str(peername[0]), int(peername[1]))
    return fallback


class TcpLink(QueuedLink):
    """A :class:`~transports.base.Link` over one TCP connection (4-byte length framing).

    Made by :func:`tcp_connect` and :meth:`TcpListener.accept`.  A background task reads frames
    into a bounded queue of ``queue_size`` messages and ``max_buffer`` bytes (one message larger
    than that passes alone); when it is full the task stops reading, TCP flow control fills up,
    and the peer's ``send`` waits: that is the backpressure.

    ``recv`` raises LinkClosedError after the peer's clean close, DecodeError after a garbage
    frame and TransportError after a reset or a close in the middle of a frame, each once the
    messages received before are read.  ``closed`` is true once we closed or the connection
    ended.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        mtu: int = DEFAULT_MTU,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        super().__init__(peer=peer, mtu=check_mtu(mtu),
                         inbox=MessageQueue(queue_size, max_bytes=max_buffer))
        self._reader = reader
        self._writer = writer
        self._close_timeout = close_timeout
        #: who the peer is for admission control (runtime/admission.py)
        self.admission_key = _admission_key(writer.get_extra_info("peername"), peer)
        self._ended = False  # the read side saw the end: the peer's FIN, garbage or a reset
        self._aborted = False  # close() dropped unsent data
        self._reading = asyncio.get_running_loop().create_task(self._read_frames())

    def _describe(self) -> str:
        return self._peer

    @property
    def closed(self) -> bool:
        return self._closed or self._ended

    async def _read_frames(self) -> None:
        end: BaseException
        try:
            while True:
                try:
                    header = await self._reader.readexactly(HEADER_SIZE)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    end = LinkClosedError(f"the peer ({self._peer}) closed the link")
                    break
                length = int.from_bytes(header, "big")
                if length > self._mtu:
                    end = DecodeError(
                        f"{self._peer} sent a message of {length} bytes where this link "
                        f"allows at most {self._mtu}; it does not speak pairkit's TCP framing, "
                        "so the connection was closed"
                    )
                    break
                await self._inbox.put(await self._reader.readexactly(length))
        except asyncio.IncompleteReadError:
            end = TransportError(f"the connection to {self._peer} ended in the middle of a message")
        except (ConnectionError, OSError) as exc:
            end = TransportError(f"the connection to {self._peer} failed: {_reason(exc)}")
        except LinkClosedError:  # we closed: the inbox is aborted and nobody reads any more
            return
        self._ended = True
        self._inbox.finish(end)
        # Our side cannot be used any more either; closing the writer sends our FIN (after any
        # queued data), which also ends a closing peer's wait for it.
        self._writer.close()

    async def send(self, data: bytes) -> None:
        data = self._check_send(data)
        if self._ended or self._writer.is_closing():
            raise LinkClosedError(f"the link to {self._peer} is closed")
        # One write per frame keeps frames whole when several tasks send at once.
        self._writer.write(len(data).to_bytes(HEADER_SIZE, "big") + data)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise LinkClosedError(
                f"the connection to {self._peer} was lost: {_reason(exc)}"
            ) from exc
        if self._aborted:  # close() gave up on flushing: this message may not have gone out
            raise LinkClosedError(
                f"the link to {self._peer} was closed before the message went out"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.abort(LinkClosedError("the link is closed"))
        self._reading.cancel()
        await asyncio.wait({self._reading})
        transport = self._writer.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        try:
            async with asyncio.timeout_at(deadline):
                if not transport.is_closing() and self._writer.can_write_eof():
                    self._writer.write_eof()
                    # Read to the peer's FIN so unread data does not make the kernel reset.
                    while await self._reader.read(1 << 16):
                        pass
                self._writer.close()
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            # A peer that neither reads nor closes: give up on a graceful close.
            self._aborted = True
            transport.abort()
        finally:
            if not transport.is_closing():
                self._aborted = True
                transport.abort()


def _admission_key(peername: object, fallback: str) -> str:
    """The peer's IPv4 address, or its IPv6 /64 (one host holds a whole /64), for the per-address
    limit of admission control."""
    if not isinstance(peername, tuple) or not peername:
        return fallback
    try:
        address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return str(peername[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or f"[Errno {errno.ECONNREFUSED}]" in str(exc):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


async def tcp_connect(
    host: str,
    port: int,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    *,
    mtu: int = DEFAULT_MTU,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    max_buffer: int = DEFAULT_MAX_BUFFER,
) -> TcpLink:
    """Connect to a :class:`TcpListener` at ``host:port``.

    Raises PairingTimeout when nothing answers within ``timeout`` seconds and TransportError
    when the connection fails ("cannot reach 127.0.0.1:9: connection refused").
    """
    check_mtu(mtu)
    where = format_host_port(host, port)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=_STREAM_LIMIT), timeout
        )
    except TimeoutError:
        raise PairingTimeout(f"cannot reach {where}: no answer within {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise TransportError(f"cannot reach {where}: {_reason(exc)}") from exc
    return TcpLink(
        reader,
        writer,
        peer=_peer_name(writer, where),
        mtu=mtu,
        queue_size=queue_size,
        close_timeout=close_timeout,
        max_buffer=max_buffer,
    )


class TcpListener:
    """The host side: a bound TCP server handing out one :class:`TcpLink` per connection.

    Make it with ``await TcpListener.bind(host, port)``; ``port=0`` picks a free port, which
    :attr:`port` then tells.  A connection whose peer misbehaves fails on its own link only.
    """

    def __init__(
        self,
        *,
        mtu: int = DEFAULT_MTU,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        backlog: int = DEFAULT_BACKLOG,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        self._mtu = check_mtu(mtu)
        self._max_buffer = max_buffer
        self._queue_size = queue_size
        self._close_timeout = close_timeout
        self._backlog = backlog
        self._waiting: asyncio.Queue[TcpLink] = asyncio.Queue()
        self._closed_event = asyncio.Event()
        self._links: dict[int, TcpLink] = {}  # accepted or not, by id, for close()
        self._server: asyncio.Server | None = None
        self._host = ""
        self._port = 0

    @classmethod
    async def bind(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mtu: int = DEFAULT_MTU,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        backlog: int = DEFAULT_BACKLOG,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> TcpListener:
        """Listen on ``host:port`` (``port`` 0: any free port).  TransportError if it cannot."""
        self = cls(mtu=mtu, queue_size=queue_size, close_timeout=close_timeout, backlog=backlog,
                   max_buffer=max_buffer)
        await self._start(host, port)
        return self

    async def _start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(
                self._on_connection, host, port, limit=_STREAM_LIMIT
            )
        except (OSError, UnicodeError) as exc:
            where = format_host_port(host, port)
            raise TransportError(f"cannot listen on {where}: {_reason(exc)}") from exc
        sockname = self._server.sockets[0].getsockname()
        self._host, self._port = str(sockname[0]), int(sockname[1])

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when asked for port 0)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as a guest would connect to it."""
        return format_host_port(self._host, self._port)

    @property
    def closed(self) -> bool:
        return self._server is None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._server is None or self._waiting.qsize() >= self._backlog:
            # Nobody will accept it: turn it away at once (a reset), rather than queue it or
            # hold its socket for a graceful close (issue 17).  A host's accept loop takes
            # every waiting link each turn, so this happens only when it has stopped accepting.
            writer.transport.abort()
            return
        link = TcpLink(
            reader,
            writer,
            peer=_peer_name(writer, "unknown peer"),
            mtu=self._mtu,
            queue_size=self._queue_size,
            close_timeout=self._close_timeout,
            max_buffer=self._max_buffer,
        )
        self._links[id(link)] = link
        self._waiting.put_nowait(link)

    def accept_nowait(self) -> TcpLink | None:
        """The next guest's link if one is waiting, else None (an accept loop drains them all
        in one turn, so that a flood of connections cannot outpace it: issue 17)."""
        if self._server is None or self._waiting.empty():
            return None
        link = self._waiting.get_nowait()
        self._links.pop(id(link), None)
        return link

    async def accept(self, timeout: float | None = None) -> TcpLink:
        """The next guest's link; PairingTimeout after ``timeout`` seconds (None: no limit).

        Raises LinkClosedError once the listener is closed.
        """
        if self._server is None:
            raise LinkClosedError(f"the listener on {self.address} is closed")
        get = asyncio.ensure_future(self._waiting.get())
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            done, _ = await asyncio.wait(
                {get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            # Cancelled just after ``get`` read a link off the queue: the link goes back for
            # the next accept, not lost unadmitted and open until the listener closes (attack
            # review atk15b; the library host cancels its accept loop at every accept() that
            # ends without a guest).
            if get.done() and not get.cancelled() and get.exception() is None:
                self._waiting.put_nowait(get.result())
            raise
        finally:
            closed.cancel()
            if not get.done():
                get.cancel()
        if get in done:
            link = get.result()
            self._links.pop(id(link), None)
            return link
        if closed in done:
            raise LinkClosedError(f"the listener on {self.address} is closed")
        raise PairingTimeout(f"no guest connected to {self.address} within {timeout:g} s")

    async def close(self) -> None:
        """Stop listening and close the links nobody accepted (accepted ones stay up)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        # Not wait_closed(): from Python 3.12 it also waits for accepted connections to end.
        server.close()
        self._closed_event.set()
        waiting = list(self._links.values())
        self._links.clear()
        while not self._waiting.empty():
            self._waiting.get_nowait()
        await asyncio.gather(*(link.close() for link in waiting), return_exceptions=True)


class TcpTransport:
    """What ``open_transport("tcp:HOST:PORT")`` returns: the host and guest sides of one address.

    ``listen()`` binds ``HOST:PORT`` (the host); ``connect()`` connects to it (the guest).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        mtu: int = DEFAULT_MTU,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        self.host = host
        self.port = port
        self.mtu = check_mtu(mtu)
        self._options = {"mtu": mtu, "queue_size": queue_size, "close_timeout": close_timeout,
                         "max_buffer": max_buffer}
        self._listeners: list[TcpListener] = []

    def __repr__(self) -> str:
        return f"<TcpTransport {self.address}>"

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)

    async def listen(self) -> TcpListener:
        """Bind ``HOST:PORT`` and return the listener (its ``port`` is the real one)."""
        listener = await TcpListener.bind(self.host, self.port, **self._options)
        self._listeners.append(listener)
        return listener

    async def connect(
        self, address: str | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> TcpLink:
        """Connect to ``HOST:PORT``, or to ``address`` (``HOST:PORT`` or ``tcp:HOST:PORT``)."""
        host, port = self.host, self.port
        if address is not None:
            host, port = parse_host_port(address.removeprefix("tcp:"))
        if port == 0:
            raise ConfigError("cannot connect to port 0; give the port the host listens on")
        return await tcp_connect(host, port, timeout, **self._options)

    async def close(self) -> None:
        """Close the listeners this transport opened."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()


def open(
    args: str,
    *,
    mtu: int = DEFAULT_MTU,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> TcpTransport:
    """Registry entry point for ``tcp:HOST:PORT`` (``args`` is ``HOST:PORT``)."""
    host, port = parse_host_port(args)
    return TcpTransport(host, port, mtu=mtu, queue_size=queue_size, close_timeout=close_timeout)
