"""A device's side of the key server (:mod:`pairkit.keyserver`): TLS with the pinned CA,
enrolment, intents, method ``ttp``.

The device trusts exactly one CA: the certificate file it was given (``--ttp-ca``, ``--ca``),
which a manufacturer would install.  No system root is loaded, TLS 1.3 is the minimum, and the
server's certificate must name the host the device dials.  A server with any other certificate is
refused with :class:`TtpTrustError` before a byte of pairkit's protocol is sent.

:func:`ttp_host_session` and :func:`ttp_guest_session` run method ``ttp`` over a link
(:mod:`pairkit.pairing.ttp`, step 3): they trade link hellos with the other device, ask the key
server for SK (stating the intent), and open the channel from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import ssl
import stat
from pathlib import Path
from typing import Any

from pairkit import prekeys
from pairkit.driver import LinkLike, MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.crypto import Rng
from pairkit.pairing.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConfigError,
    ErrorCode,
    LinkClosedError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    RemoteError,
    TransportError,
)
from pairkit.pairing.methods import LocalIdentity, Session
from pairkit.pairing.ttp import (
    WAIT_MARGIN,
    EnrolDone,
    EnrolRequest,
    IntentRequest,
    IntentRole,
    SkDelivery,
    TtpClient,
    TtpKeyNeeded,
    TtpLinkConfig,
    TtpLinkGuest,
    TtpLinkHost,
    cert_digest,
)
from pairkit.smallfile import MAX_CA_FILE
from pairkit.transports.tcp import format_host_port, parse_host_port
from pairkit.transports.tls import TlsLink, tls_connect

DEFAULT_TIMEOUT = 10.0
MAX_MESSAGE = 8192


class TtpTrustError(AuthenticationError):
    """The key server's certificate is not one the pinned CA signed for that host."""


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """TLS 1.3, trusting only ``ca_file`` (no system roots), host names checked.

    Contexts are reused while the file is unchanged (loading a CA costs about as much as a
    third of a TLS handshake); a replaced file is read again.
    """
    path = os.fspath(ca_file)  # (not a Path: this runs on every connection)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"the key server's CA certificate {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the CA certificate {path}: {exc.strerror}") from None
    # OpenSSL reads the file by its path, whole: a FIFO nobody writes to would hold it for
    # ever and a huge file fill memory, so those are refused first, by what the path is now.
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file (it should be a CA certificate)")
    if st.st_size > MAX_CA_FILE:
        raise ConfigError(f"{path} is too large to be a CA certificate")
    # The file is known by its device and inode (not by resolving the path, which costs a
    # system call per component on every connection), and read again once it changed.
    return _context(path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _context(path: str, dev: int, ino: int, mtime_ns: int, size: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        raise ConfigError(f"the key server's CA certificate {path} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror and not isinstance(
            exc, ssl.SSLError) else "no PEM certificate in it"
        raise ConfigError(f"{path} is not a usable CA certificate ({why})") from None
    return ctx


#: OpenSSL's certificate verification results (X509_V_ERR_*) a person can act on, in words
_VERIFY_WORDS: dict[int, str] = {
    9: "its certificate is not valid yet (is this device's clock right?)",
    10: "its certificate has expired (or this device's clock is wrong)",
    18: "its certificate is self-signed, not signed by the CA in {ca}",
    19: "its certificate chain ends in a CA other than the one in {ca}",
    20: "its certificate is not signed by the CA in {ca}",
    21: "its certificate is not signed by the CA in {ca}",
    62: "its certificate does not name {host}",
    64: "its certificate does not name {host}",
}


def _why_untrusted(exc: ssl.SSLCertVerificationError, host: str, ca_file: str | Path) -> str:
    """Why the server's certificate was refused, in pairkit's words (never OpenSSL's)."""
    words = _VERIFY_WORDS.get(exc.verify_code or 0, "its certificate is not signed by the CA "
                              "in {ca}")
    return words.format(host=host, ca=ca_file)


def _tls_failure(exc: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in pairkit's words (OpenSSL's reason codes, such as
    TLSV1_ALERT_PROTOCOL_VERSION, say nothing to a person)."""
    reason = (exc.reason or "").upper()
    if "VERSION" in reason or "PROTOCOL" in reason:
        return "it does not speak TLS 1.3"
    if "ALERT" in reason:
        return "the server ended the handshake"
    return "the handshake failed"


@dataclasses.dataclass
class ServerLink:
    """An open, verified TLS connection to the key server."""

    link: TlsLink
    pipe: MessagePipe
    #: SHA-256 of the server certificate, as the proof of possession binds it
    cert: bytes
    address: str

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.link.close()  # bounded by the link's close_timeout


class _TurnedAway(TransportError):
    """The key server closed the connection before this device proved who it is: busy, or
    making room for others behind the same address (it evicts unauthenticated connections)."""


#: how many times a request is made when the server turns the connection away before anything
#: was asked (issue 17, finding 12: a device behind the same NAT as a flood), and the pauses
_RETRY_PAUSES = (0.25, 0.5)
CALL_ATTEMPTS = len(_RETRY_PAUSES) + 1


async def connect(
    server: str, ca_file: str | Path, *, timeout: float = DEFAULT_TIMEOUT
) -> ServerLink:
    """Open TLS to ``server`` (``HOST:PORT``), pinning the CA in ``ca_file``."""
    host, port = parse_host_port(server)
    ctx = client_context(ca_file)
    where = format_host_port(host, port)
    try:
        link = await tls_connect(host, port, ctx, timeout=timeout, mtu=MAX_MESSAGE)
    except ssl.SSLCertVerificationError as exc:
        raise TtpTrustError(
            f"refusing the key server at {where}: {_why_untrusted(exc, host, ca_file)}; it may "
            "be another server, or someone in the middle"
        ) from None
    except TimeoutError:
        raise PairingTimeout(f"the key server at {where} did not answer within {timeout:g} s")\
            from None
    except ssl.SSLError as exc:
        raise _TurnedAway(
            f"TLS with the key server at {where} failed ({_tls_failure(exc)}); it may be busy "
            "or limiting this address, or not a pairkit key server"
        ) from None
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionRefusedError):
            reason = "the server closed the connection (busy, or limiting this address?)"
            raise _TurnedAway(f"cannot reach the key server at {where}: {reason}") from None
        raise TransportError(f"cannot reach the key server at {where}: {reason}") from None
    der = link.protocol.peer_certificate()
    if not der:  # pragma: no cover - TLS with CERT_REQUIRED always has one
        await link.close()
        raise TtpTrustError(f"the key server at {where} showed no certificate")
    # Nothing of what this pipe moves is bound into a session key (TLS binds its own): no
    # transcript to keep.
    pipe = MessagePipe(link, max_message=MAX_MESSAGE, transcript=False)
    return ServerLink(link, pipe, cert_digest(der), where)


#: wire codes whose class is not a LocalError (``local_error_for`` covers those)
_OTHER_CODES: dict[ErrorCode, type[PairingError]] = {
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.PERMISSION: AccessDeniedError,
    ErrorCode.CLOSED: LinkClosedError,
}


def from_server(exc: RemoteError) -> PairingError:
    """The server's Abort as the local error class of its code, in the server's words."""
    local = getattr(exc, "local", None)
    reason = str(local) if local is not None else str(exc)
    cls = _OTHER_CODES.get(ErrorCode(exc.code)) if exc.code in set(ErrorCode) else None
    if cls is None:
        cls = type(local) if isinstance(local, PairingError) else PairingError
    out = cls(f"the key server says: {reason}")
    out.code = exc.code
    return out


async def call(
    server: str,
    ca_file: str | Path,
    me: LocalIdentity,
    request: wire.Message,
    expect: type[wire.Message],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
) -> Any:
    """One request to the key server: connect, prove the identity key, ask, answer.

    A connection the server closes before the request went out (it evicts unauthenticated
    connections to make room, and a flood behind this device's own address makes it evict
    ours) is opened again, :data:`CALL_ATTEMPTS` times in all: nothing was asked, so nothing
    is asked twice."""
    for pause in (*_RETRY_PAUSES, None):
        try:
            return await _call_once(server, ca_file, me, request, expect, timeout=timeout,
                                    rng=rng)
        except _TurnedAway:
            if pause is None:
                raise
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


async def _call_once(
    server: str,
    ca_file: str | Path,
    me: LocalIdentity,
    request: wire.Message,
    expect: type[wire.Message],
    *,
    timeout: float,
    rng: Rng,
) -> Any:
    conn = await connect(server, ca_file, timeout=timeout)
    try:
        loop = asyncio.get_running_loop()
        client = TtpClient(
            me, cert=conn.cert, request=request, expect=expect, step_timeout=timeout, rng=rng
        )
        client.start(loop.time())
        try:
            await drive(client, conn.pipe, idle=timeout)
        except RemoteError as exc:
            raise from_server(exc) from None
        except LinkClosedError as exc:
            if not client.asked:  # closed before our request went out
                raise _TurnedAway(
                    f"the key server at {conn.address} closed the connection before it asked "
                    "who this device is (busy, or limiting this address?)"
                ) from exc
            raise
        return client.result
    finally:
        await conn.close()


async def enrol(
    server: str,
    ca_file: str | Path,
    me: LocalIdentity,
    *,
    eukey: bytes | None = None,
    token: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
) -> EnrolDone:
    """Register this device (and its factory EUKey for CPNS) with the key server."""
    if eukey is not None and len(eukey) != 32:
        raise ConfigError("an EUKey is 32 bytes")
    request = EnrolRequest(signing=me.signing_public, eukey=eukey, token=token)
    result: EnrolDone = await call(
        server, ca_file, me, request, EnrolDone, timeout=timeout, rng=rng
    )
    return result


async def request_key(
    server: str,
    ca_file: str | Path,
    me: LocalIdentity,
    *,
    peer_id: bytes,
    context: bytes,
    role: IntentRole,
    wait: int,
    timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
) -> SkDelivery:
    """State the intent to connect to ``peer_id`` and wait (at most ``wait`` s) for SK."""
    request = IntentRequest(peer_id=peer_id, context=context, role=role, wait=wait)
    result: SkDelivery = await call(
        server, ca_file, me, request, SkDelivery, timeout=timeout, rng=rng
    )
    return result


class _KeyFetcher:
    """The link machine's delegate: answers :class:`TtpKeyNeeded` from the key server."""

    def __init__(
        self, me: LocalIdentity, server: str, ca_file: str | Path, timeout: float, rng: Rng,
        inner: Any,
    ) -> None:
        self.me, self.server, self.ca_file = me, server, ca_file
        self.timeout, self.rng, self.inner = timeout, rng, inner

    async def ttp_key(self, q: TtpKeyNeeded) -> SkDelivery:
        return await request_key(
            self.server, self.ca_file, self.me, peer_id=q.peer_id, context=q.context,
            role=q.role, wait=q.wait, timeout=self.timeout, rng=self.rng,
        )

    def __getattr__(self, name: str) -> Any:
        if self.inner is None:
            raise AttributeError(name)
        return getattr(self.inner, name)


def _link_config(config: TtpLinkConfig | None, peer_hint: bytes | None) -> TtpLinkConfig:
    config = config or TtpLinkConfig()
    if peer_hint is not None:
        config = dataclasses.replace(config, peer_hint=peer_hint)
    return config


async def ttp_host_session(
    link: LinkLike | MessagePipe,
    *,
    me: LocalIdentity,
    peer_hint: bytes | None,
    server: str,
    ca_file: str | Path,
    config: TtpLinkConfig | None = None,
    first_message: bytes | None = None,
    delegate: Any = None,
    server_timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
    context: bytes = b"",
) -> Session:
    """Method ``ttp``, host side: the session with the guest on ``link``.

    ``peer_hint``: the guest's device id when only that device may pair (None: any enrolled
    device the owner let in).  ``first_message``: the guest's Offer when the caller has
    already read it (to choose the machine, see :func:`pairing.ttp.is_ttp_offer`).
    ``context``: the hash of what the two sides exchanged on the link before (the cloud step).
    """
    config = _link_config(config, peer_hint)
    loop = asyncio.get_running_loop()
    machine = TtpLinkHost(config, me, rng=rng, context=context,
                          prekeys=prekeys.source_for(rng))
    machine.start(loop.time())
    if first_message is not None:
        machine.receive(first_message, loop.time())
    fetcher = _KeyFetcher(me, server, ca_file, server_timeout, rng, delegate)
    await drive(
        machine, link, delegate=fetcher, idle=config.step_timeout,
        answer_time=config.wait + WAIT_MARGIN + 2 * server_timeout,
    )
    assert machine.session is not None
    return machine.session


async def ttp_guest_session(
    link: LinkLike | MessagePipe,
    *,
    me: LocalIdentity,
    peer_hint: bytes | None,
    server: str,
    ca_file: str | Path,
    config: TtpLinkConfig | None = None,
    delegate: Any = None,
    server_timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
    context: bytes = b"",
) -> Session:
    """Method ``ttp``, guest side: the session with the host on ``link``.

    ``peer_hint``: the host's device id when the user named it (a known peer, ``--ttp-peer``);
    None takes the host on the link, whoever the key server says it is.  ``context``: as for
    :func:`ttp_host_session`.
    """
    config = _link_config(config, peer_hint)
    loop = asyncio.get_running_loop()
    machine = TtpLinkGuest(config, me, rng=rng, context=context,
                           prekeys=prekeys.source_for(rng))
    machine.start(loop.time())
    fetcher = _KeyFetcher(me, server, ca_file, server_timeout, rng, delegate)
    await drive(
        machine, link, delegate=fetcher, idle=config.step_timeout,
        answer_time=config.wait + WAIT_MARGIN + 2 * server_timeout,
    )
    assert machine.session is not None
    return machine.session
