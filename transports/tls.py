"""Links over TLS on one TCP connection, with the TLS done by :class:`ssl.SSLObject` in memory
(the key server and its devices, docs/protocol.md §9).

Framing inside TLS is :mod:`transports.tcp`'s: each message is a 4-byte big-endian length and
that many bytes; a length over the receiver's ``mtu`` closes the connection and ``recv`` raises
:class:`~pairing.errors.DecodeError` once the messages before it are read.

Why not asyncio's own TLS (``open_connection(ssl=...)``, ``start_tls``): its transport allocates
a fresh 256 KiB read buffer for every connection and moves each record through a stream reader
and a reading task before a message reaches its reader; a key server opens two connections per
key delivered, each a few small messages, and that machinery cost more CPU than the TLS
handshake itself (bench/RESULTS.md, "key server, connection costs").  Here one
:class:`asyncio.Protocol` feeds the bytes to OpenSSL and the whole frames it decrypts straight
into the link's bounded queue.  The TLS itself is unchanged: OpenSSL's handshake, certificate
checks and records, with the caller's :class:`ssl.SSLContext`.

Deadlines: :func:`tls_connect` bounds the connect and the handshake together;
:meth:`TlsProtocol.begin` on the accepting side takes the handshake's deadline (a client that
opens a connection and says nothing, or says it slowly, is cut off when it runs out).  Every
later wait is the caller's (the driver's idle and step timeouts).  A peer that stops reading
holds at most what the transport buffers: our ``send`` waits (flow control) and the caller's
send deadline ends it.

Closing: :meth:`TlsLink.close` sends TLS's close_notify and our FIN after everything we sent,
then waits (at most ``close_timeout`` seconds in all) for the peer's FIN, so that data the peer
sent and we did not read does not turn our close into a reset that destroys what it is still
owed, and for what we sent to leave the transport (a close with nothing left to send does not
wait for the connection's end: the transport has scheduled it).
The peer's close_notify ends the link at once (after the messages before it).  A peer's FIN
without close_notify ends the link like a clean close at a message boundary (every message is
whole or refused: a truncation cannot shorten one), and as a
:class:`~pairing.errors.TransportError` in the middle of a message or of a TLS record (RFC 8446
§5.1: a stream cut there carried a message that never arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from pairkit.pairing.errors import DecodeError, LinkClosedError, PairingError, TransportError

from .queued import DEFAULT_QUEUE_SIZE, MessageQueue, QueuedLink, check_mtu
from .tcp import DEFAULT_CLOSE_TIMEOUT, DEFAULT_MTU, HEADER_SIZE, format_host_port

__all__ = ["TlsLink", "TlsProtocol", "tls_connect"]

#: the most TLS plaintext read at once (one record is at most 16 KiB)
_READ_SIZE = 1 << 16
#: TLS records waiting for the end of the event loop's turn are written at once past this
#: many bytes (a sender that never yields still meets flow control)
_FLUSH_AT = 1 << 14


class TlsProtocol(asyncio.Protocol):
    """One TCP connection's TLS, in memory, and the frames it carries (module docstring).

    Made by the event loop (``loop.create_connection``, ``loop.create_server``); TLS starts
    with :meth:`begin` (on the accepting side once the connection is admitted: a connection
    refused costs no TLS work).  :attr:`handshake` is done once TLS is up, or with the error
    that ended it (:class:`ssl.SSLError` and its certificate errors as OpenSSL raised them,
    :class:`ConnectionResetError` when the peer closed first, :class:`TimeoutError` when the
    deadline given to :meth:`begin` passed).
    """

    def __init__(self, *, mtu: int = DEFAULT_MTU, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._loop = asyncio.get_running_loop()
        self.mtu = check_mtu(mtu)
        self.inbox = MessageQueue(queue_size)
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        #: the connection is gone (the transport's connection_lost); cancelled instead if a
        #: close waiting for it was cut short (done either way)
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._plain = bytearray()  # decrypted bytes not yet a whole frame
        # Where the peer's bytes are in TLS's record layer (RFC 8446 §5.1: a 5-byte header,
        # the last two its length): a FIN inside a record cut a message on its way.
        self._record_head = b""
        self._record_left = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._ended = False  # no more messages will come (end of stream, garbage, error)
        #: the peer sent its FIN (or the connection is gone); cancelled instead as ``lost``
        self.peer_eof: asyncio.Future[None] = self._loop.create_future()
        self._flush_scheduled = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._reading_paused = False
        #: called once the connection is made (the accepting side's admission)
        self.on_connection: Callable[[TlsProtocol], None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.on_connection is not None:
            self.on_connection(self)

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self._track_records(data)
        self._incoming.write(data)
        if self._tls is None:
            return  # TLS not started yet: kept for it
        if not self.handshake.done():
            if not self._step_handshake():
                return
        self._read_records()

    def _track_records(self, data: bytes) -> None:
        n = len(data)
        left = self._record_left
        if left >= n:  # all of it inside the record under way
            self._record_left = left - n
            return
        i = left
        head = self._record_head
        if head:  # a header cut by the last read: complete it first
            need = 5 - len(head)
            head += data[i:i + need]
            i += need
            if len(head) < 5:
                self._record_head, self._record_left = head, 0
                return
            i += head[3] << 8 | head[4]
        # Whole headers in ``data``: jump from one to the next.
        while i + 5 <= n:
            i += 5 + (data[i + 3] << 8 | data[i + 4])
        if i >= n:
            self._record_head, self._record_left = b"", i - n
        else:  # a header cut by the end of this read
            self._record_head, self._record_left = data[i:], 0

    def eof_received(self) -> bool:
        if not self.peer_eof.done():
            self.peer_eof.set_result(None)
        if not self.handshake.done():
            self._fail_handshake(
                ConnectionResetError("the peer closed the connection during the TLS handshake")
            )
        elif self._plain or self._record_head or self._record_left:
            # Bytes of a TLS record not yet whole count too: a stream cut inside a record
            # (the peer's message on its way) is not the peer's close.
            self._end(TransportError("the connection ended in the middle of a message"))
        else:
            self._end(LinkClosedError("the peer closed the link"))
        return True  # keep our side open: close() sends what is left, then our FIN

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if not self.handshake.done():
            self._fail_handshake(exc if isinstance(exc, OSError) else ConnectionResetError(
                "the connection closed during the TLS handshake"))
        if not self._ended:
            if exc is not None:
                self._end(TransportError(f"the connection failed: {_reason(exc)}"))
            else:
                self._end(LinkClosedError("the peer closed the link"))
        self._can_write.set()  # a waiting send finds the transport closing
        for done in (self.peer_eof, self.lost):
            if not done.done():
                done.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- TLS ------------------------------------------------------------------------------

    def begin(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Start TLS with ``context``; ``timeout``: the handshake's deadline, in seconds."""
        if self._tls is not None:
            raise RuntimeError("TLS already started")
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )
        if timeout is not None:
            self._deadline = self._loop.call_later(timeout, self._handshake_timed_out)
        if not server_side:
            self._step_handshake()  # the ClientHello

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if not self.handshake.done():
            self._fail_handshake(TimeoutError("the TLS handshake did not complete in time"))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _step_handshake(self) -> bool:
        """Feed the handshake; True once it is complete."""
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert, if OpenSSL wrote one
            self._fail_handshake(exc)
            return False
        self._cancel_deadline()
        if self.handshake.done():  # the waiter gave up (cancelled) meanwhile
            return False
        self.handshake.set_result(None)
        self._flush_soon()  # after the waiter's first message, if it sends one at once
        return True

    def _fail_handshake(self, exc: BaseException) -> None:
        self._cancel_deadline()
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: the caller may have gone already
        self._end(LinkClosedError("TLS was not established"))
        if self.transport is not None:
            self.transport.abort()

    def _read_records(self) -> None:
        tls = self._tls
        assert tls is not None
        incoming = self._incoming
        while not self._ended:
            if not incoming.pending and not tls.pending():
                # Every byte received is OpenSSL's already and it holds no plaintext: a read
                # could only say "want more" (an exception made and caught, per read).  (No
                # read-ahead: OpenSSL takes a record from the BIO as it processes it, so an
                # unread record, even a close_notify or a key update, keeps ``pending``.)
                break
            try:
                chunk = tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                if self._plain:
                    self._end(TransportError("the connection ended in the middle of a message"))
                else:
                    self._end(LinkClosedError("the peer closed the link"))
                break
            except (ssl.SSLError, OSError) as exc:
                self._end(TransportError(f"TLS failed ({_reason(exc)})"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if not chunk:  # SSLObject.read says the peer's close_notify so (ssl module docs)
                if self._plain:
                    self._end(TransportError("the connection ended in the middle of a message"))
                else:
                    self._end(LinkClosedError("the peer closed the link"))
                break
            self._plain += chunk
            self._take_frames()
            if self._reading_paused:
                break  # the rest stays encrypted until the reader catches up
        if self._outgoing.pending:
            # What OpenSSL answers on its own (a key update; a client's last handshake
            # flight, written as the server's flight completed it), at the end of this turn:
            # a reader woken by what was read here writes its answer into the same write.
            self._flush_soon()

    def _take_frames(self) -> None:
        plain = self._plain
        while len(plain) >= HEADER_SIZE and not self._ended:
            if len(self.inbox) >= self.inbox.capacity:
                # The reader is behind: stop reading until it catches up (backpressure).
                if not self._reading_paused and self.transport is not None:
                    self._reading_paused = True
                    self.transport.pause_reading()
                return
            length = int.from_bytes(plain[:HEADER_SIZE], "big")
            if length > self.mtu:
                self._end(DecodeError(
                    f"the peer sent a message of {length} bytes where this link allows at most "
                    f"{self.mtu}, so the connection was closed"
                ))
                if self.transport is not None:
                    self.transport.abort()
                return
            if len(plain) < HEADER_SIZE + length:
                return
            message = bytes(plain[HEADER_SIZE:HEADER_SIZE + length])
            del plain[:HEADER_SIZE + length]
            self.inbox.put_nowait(message)

    def taken(self) -> None:
        """The reader took a message: read on if reading was paused for it."""
        if self._reading_paused and len(self.inbox) < self.inbox.capacity:
            self._reading_paused = False
            self._take_frames()
            if not self._reading_paused:
                self._read_records()
            if not self._reading_paused and self.transport is not None:
                self.transport.resume_reading()

    def _end(self, exc: BaseException) -> None:
        if not self._ended:
            self._ended = True
            self.inbox.finish(exc)

    def _flush_soon(self) -> None:
        """Send what TLS wrote once this turn of the event loop is over: the records written
        in one turn (the handshake's last flight and the first message; two messages sent
        back to back) leave in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._outgoing.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- for the link ---------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._ended

    def write(self, data: bytes) -> None:
        assert self._tls is not None
        self._tls.write(data)
        if self._outgoing.pending >= _FLUSH_AT:
            self._flush()  # now: the transport calls pause_writing before send's drain
        else:
            self._flush_soon()

    async def drain(self) -> None:
        await self._can_write.wait()

    @property
    def can_write(self) -> bool:
        """The transport takes more now (False while it holds back: flow control)."""
        return self._can_write.is_set()

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER) as TLS checked it, or None."""
        if self._tls is None:
            return None
        return self._tls.getpeercert(binary_form=True)

    def discard(self) -> None:
        """Read on and drop what arrives (the link is closing: nobody reads any more)."""
        if not self._ended:
            self._end(LinkClosedError("the link is closed"))
        self._plain.clear()
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def close_notify(self) -> None:
        """Send TLS's close_notify (once TLS is up)."""
        if self._tls is not None and self.handshake.done() and not self.handshake.exception():
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._tls.unwrap()
            self._flush()


class TlsLink(QueuedLink):
    """A :class:`~transports.base.Link` over a :class:`TlsProtocol` whose TLS is up.

    ``recv`` raises LinkClosedError after the peer's clean close, DecodeError after a frame over
    the MTU and TransportError after a reset or a close in the middle of a frame, each once the
    messages received before are read.  ``closed`` is true once we closed or the connection
    ended.
    """

    def __init__(
        self, protocol: TlsProtocol, *, peer: str, close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        super().__init__(peer=peer, mtu=protocol.mtu, inbox=protocol.inbox)
        self.protocol = protocol
        self._close_timeout = close_timeout
        self._aborted = False

    @property
    def closed(self) -> bool:
        return self._closed or self.protocol.ended

    async def recv(self) -> bytes:
        message = await super().recv()
        self.protocol.taken()
        return message

    def recv_nowait(self) -> bytes | None:
        """:meth:`recv` if a message is already there, else None (never waits)."""
        if self._closed:
            raise LinkClosedError("the link is closed")
        message = self._inbox.get_nowait()
        if message is not None:
            self.protocol.taken()
        return message

    async def send(self, data: bytes) -> None:
        self._write_frame(data)
        await self.protocol.drain()
        if self._aborted:  # close() gave up on flushing: this message may not have gone out
            raise LinkClosedError(
                f"the link to {self._peer} was closed before the message went out"
            )

    def send_nowait(self, data: bytes) -> bool:
        """:meth:`send` if it need not wait: True once the frame is handed to TLS, False
        (nothing sent) while the transport holds back (flow control: a peer that does not
        read); raises as :meth:`send` would (a closed link, a message over the MTU)."""
        if not self.protocol.can_write:
            return False
        self._write_frame(data)
        return True

    def _write_frame(self, data: bytes) -> None:
        data = self._check_send(data)
        transport = self.protocol.transport
        if self.protocol.ended or transport is None or transport.is_closing():
            raise LinkClosedError(f"the link to {self._peer} is closed")
        # One write per frame keeps frames whole when several tasks send at once.
        self.protocol.write(len(data).to_bytes(HEADER_SIZE, "big") + data)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.abort(LinkClosedError("the link is closed"))
        transport = self.protocol.transport
        if transport is None:
            return
        # One deadline for every wait below; a wait that need not wait has no timer.
        deadline = asyncio.get_running_loop().time() + self._close_timeout
        try:
            if not transport.is_closing():
                self.protocol.close_notify()
                if transport.can_write_eof():
                    transport.write_eof()
                # Wait for the peer's FIN, so unread data does not make the kernel reset
                # (what arrives meanwhile is dropped: the inbox is aborted).  (Awaited
                # directly, not shielded: a close cut short leaves it cancelled, which is
                # done, and nothing else waits for it.)
                if not self.protocol.peer_eof.done():
                    self.protocol.discard()
                    async with asyncio.timeout_at(deadline):
                        await self.protocol.peer_eof
                transport.close()
            if not self.protocol.lost.done() and transport.get_write_buffer_size():
                # What we sent is still leaving: the connection ends once it has left.  (With
                # nothing left to send, the transport has already scheduled its end.)
                async with asyncio.timeout_at(deadline):
                    await self.protocol.lost
        except (TimeoutError, ConnectionError, OSError):
            # A peer that neither reads nor closes: give up on a graceful close.
            self._aborted = True
            transport.abort()
        finally:
            if not transport.is_closing():
                self._aborted = True
                transport.abort()


async def tls_connect(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    timeout: float,
    server_hostname: str | None = None,
    mtu: int = DEFAULT_MTU,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> TlsLink:
    """Connect to ``host:port`` and complete TLS with ``context`` within ``timeout`` seconds.

    Raises what the connect or OpenSSL raised (:class:`OSError`, :class:`ssl.SSLError` and its
    :class:`ssl.SSLCertVerificationError`), :class:`ConnectionResetError` when the server closed
    the connection during the handshake, :class:`TimeoutError` when the time ran out; the
    caller words them for people (``runtime/ttp.py``).
    """
    loop = asyncio.get_running_loop()
    protocol: TlsProtocol | None = None
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                lambda: TlsProtocol(mtu=mtu, queue_size=queue_size), host, port
            )
            protocol.begin(context, server_side=False,
                           server_hostname=host if server_hostname is None else server_hostname)
            await protocol.handshake  # cancelled by the timeout: the protocol ignores it
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    peername = transport.get_extra_info("peername")
    peer = (format_host_port(str(peername[0]), int(peername[1]))
            if isinstance(peername, tuple) else format_host_port(host, port))
    return TlsLink(protocol, peer=peer, close_timeout=close_timeout)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or type(exc).__name__)
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if isinstance(exc, PairingError):
        return str(exc)
    return type(exc).__name__
