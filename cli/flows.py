"""The asyncio flows behind ``pairkit host`` and ``pairkit join``.

The host accepts guests one after another (or at once) until interrupted or ``--once``; a guest
that fails or misbehaves is reported and never takes the host down.  Each guest runs the pairing
machine through :func:`pairkit.driver.drive`, then the secure link's ``ready`` confirmation,
and only then is the peer stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pairkit.admission import Admission, AdmissionLimits, RateLimitedLog
from pairkit.clock import SYSTEM_CLOCK, Clock
from pairkit.files import ServeStats, say_bye, serve_guest
from pairkit.keystore import Keystore
from pairkit.lockouts import forget_lockouts
from pairkit.pairing.cloud import Role, is_probe
from pairkit.pairing.errors import (
    ConfigError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    TransportError,
)
from pairkit.pairing.files import SERVE_IDLE
from pairkit.pairing.methods import (
    HostPairing,
    HostState,
    KnownPeer,
    PairingConfig,
    PinPolicy,
    Session,
)
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.pairing.qr import QrCode
from pairkit.pairing.service import (
    GrantPolicy,
    Membership,
)
from pairkit.presence import Presence, discover, regain_radio
from pairkit.securelink import SecureLink
from pairkit.session import (
    GuestSide,
    HostSide,
    TtpHook,
    accept_loop,
    accept_session,
    name_hosts,
    open_session,
)
from pairkit.session import resolve_target as resolve
from pairkit.transports.ble.privacy import is_resolvable

from . import store
from .common import CliDelegate, info


class HostNotFoundError(NotFoundError):
    """Nothing answered at the address a guest connects to."""


#: what a side does once the session is confirmed and the membership known
SessionHandler = Callable[[SecureLink, Session, Membership], Awaitable[None]]


@dataclasses.dataclass
class HostOptions:
    transport: str
    methods: frozenset[Method]
    pin: str | None = None
    yes: bool = False
    once: bool = False
    json: bool = False
    allow_insecure: bool = False
    qr_png: Path | None = None
    qr_ttl: float = 600.0
    step_timeout: float = 30.0
    max_failures: int = 5
    lockout_window: float = 300.0
    #: forget the PIN and compare failures the keystore kept before starting (runtime/lockouts.py)
    reset_lockouts: bool = False
    #: paired guests served at once (new links are told "busy" beyond: runtime/admission.py)
    concurrent: int = 32
    #: the other limits of runtime/admission.py (unauthenticated links at once and per
    #: address, first-flight time, ...); ``concurrent`` stands for its ``max_sessions``
    admission: AdmissionLimits = dataclasses.field(default_factory=AdmissionLimits)
    #: seconds a paired guest may stay silent, or leave what the host sends unread
    serve_idle: float = SERVE_IDLE
    #: say nothing on stderr but errors (the demo narrates for itself)
    quiet: bool = False
    #: the folder shared with guests (None: nothing shared)
    share: Path | None = None
    #: how long a guest grant given with --yes lasts
    guest_seconds: int = 3600
    #: seconds strangers may see and join this host (broadcasting transports); None: private
    visible: float | None = None
    #: method ttp: the key server, its CA file, and optionally the one guest allowed
    ttp: str | None = None
    ttp_ca: str | None = None
    ttp_peer: bytes | None = None
    #: bumble transport options from the policy's advertising keys (cli.config)
    advertising: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the bumble transport's ``pace`` from the policy's [pace] section (cli.config.pace_options;
    #: empty: the transport's default)
    pace: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: attempts to reopen a lost Bluetooth controller before exiting (None: until it is back)
    radio_retries: int | None = None


def result_json(session: Session, membership: Membership | None = None) -> dict[str, Any]:
    """The JSON shape DESIGN.md gives for a completed pairing (plus the guest's role)."""
    peer = session.peer
    extra: dict[str, Any] = {}
    if membership is not None:
        extra["role"] = membership.role.name.lower()
        if membership.expires is not None:
            extra["expires"] = membership.expires
    return extra | {
        "ok": True,
        "method": session.method.label,
        "peer": {
            "id": peer.device_id.hex(),
            "name": peer.name,
            "fingerprint": store.key_fingerprint(peer.static_public),
            "authenticated": peer.authenticated,
        },
        "session": session.fingerprint,
    }


def _advertising_kwargs(opts: HostOptions) -> dict[str, Any]:
    """The advertising and pace policies go to transports that advertise on a radio
    (bumble)."""
    from pairkit.transports.registry import parse_transport

    if not (opts.advertising or opts.pace) or parse_transport(opts.transport).kind != "bumble":
        return {}
    return dict(opts.advertising) | dict(opts.pace)


async def run_host(
    ks: Keystore,
    opts: HostOptions,
    *,
    on_session: SessionHandler | None = None,
    emit: Callable[[dict[str, Any]], None] | None = None,
    ready: Callable[[str, HostState], None] | None = None,
    transport_obj: Any = None,
    delegate: Any = None,
    presence_out: list[Presence] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Serve guests; returns the number of guests paired."""
    from pairkit.transports.registry import open_transport

    me = store.local_identity(ks)
    config = PairingConfig(
        methods=opts.methods, caps=ALL_CAPS, step_timeout=opts.step_timeout,
        allow_insecure=opts.allow_insecure,
    )
    transport = transport_obj or await open_transport(
        opts.transport, **_advertising_kwargs(opts)
    )
    listener = await transport.listen() if hasattr(transport, "listen") else transport
    address = getattr(listener, "address", None) or getattr(transport, "address", opts.transport)
    quiet = opts.quiet
    presence = Presence(
        transport, ks, opts.methods, visible_for=opts.visible,
        l2cap=bool(getattr(getattr(transport, "config", None), "prefer_l2cap", False)),
        on_change=lambda text: info(text, quiet=quiet),
    )
    delegate = delegate or CliDelegate(
        yes=opts.yes, quiet=quiet, guest_seconds=opts.guest_seconds, timeout=opts.step_timeout
    )
    if opts.reset_lockouts:
        cleared = forget_lockouts(ks)
        info("PIN and compare lockouts cleared" if cleared else
             "PIN and compare lockouts cleared (there were none)", quiet=quiet)
    side = HostSide.of(
        ks, config, transport=opts.transport,
        pin_policy=PinPolicy(opts.max_failures, opts.lockout_window), clock=clock,
        step_timeout=opts.step_timeout, open_to_strangers=lambda: presence.visible,
        ttp=_host_ttp(opts, me, delegate) if Method.TTP in opts.methods else None,
    )
    state = side.state
    await presence.start()
    # On BLE the host moved to its first resolvable private address as it started.
    address = getattr(listener, "address", None) or getattr(transport, "address", opts.transport)
    if presence_out is not None:
        presence_out.append(presence)
    if presence.can_broadcast:
        window = (f"visible to strangers for {opts.visible:g} s" if opts.visible
                  else "private: only members of its cloud can find it (--visible SECONDS)")
        info(f"broadcasting a hello; {window}", quiet=quiet)
    fp = store.key_fingerprint(me.static_public)
    info(f"{me.name} ({fp}) is waiting on {address}", quiet=quiet, essential=True)

    def show_pin() -> None:
        if Method.PIN in opts.methods and state.pin is not None:
            info(f"PIN: {state.pin}   (type it on the guest: pairkit join ... --method pin)",
                 quiet=quiet, essential=True)

    if Method.PIN in opts.methods:
        # A PIN is single use: a --pin serves one guest, then fresh ones are drawn.
        state.set_pin(opts.pin) if opts.pin is not None else state.new_pin()

    def show_qr() -> None:
        if Method.QR in opts.methods:
            code = state.issue_qr(me.static_public, clock.wall(), ttl=opts.qr_ttl, hint=address)
            uri = code.to_uri()
            info(store.qr_text(uri), quiet=quiet, essential=True)
            info(f"QR code (valid {opts.qr_ttl:.0f} s): {uri}", quiet=quiet, essential=True,
                 whole=True)  # copied whole: never folded
            if opts.qr_png is not None:
                store.qr_png(uri, opts.qr_png)
                info(f"QR code written to {opts.qr_png}")

    show_pin()
    show_qr()
    # What asyncio itself reports (a failed accept when the process is out of file descriptors,
    # a stray task's error): one line a second at most, never a traceback (issue 17).
    resources = RateLimitedLog(lambda line: info(line))  # one line a second for all of them
    asyncio.get_running_loop().set_exception_handler(loop_problem_reporter(resources))
    if ready is not None:
        ready(address, state)
    paired = 0
    stop = asyncio.Event()
    output_lost: list[OSError] = []

    async def serve_one(link: Any) -> bool | None:
        nonlocal paired
        tried: list[HostPairing] = []  # the pairing machine, once made (see renew)
        who = f"guest {link.peer}"  # by its name once it paired (its errors say who failed)

        def renew() -> None:
            # As soon as this guest's pairing is over (not its session: a guest served for
            # long must not keep the next one from pairing), the next guest gets a fresh PIN.
            if not opts.once and Method.PIN in opts.methods and state.pin is None:
                state.new_pin()
                show_pin()
            if not opts.once and tried and tried[0].method is Method.QR:
                show_qr()  # a QR code is single use too: the next guest needs a fresh one

        try:
            try:
                done = await accept_session(
                    link, side, delegate=delegate, clock=clock, tried=tried
                )
            finally:
                renew()
            slink, session, membership = done.channel, done.session, done.membership
            assert membership is not None
            paired += 1
            who = f"guest {session.peer.name} ({link.peer})"
            if emit is not None:
                try:
                    emit(result_json(session, membership))
                except OSError as exc:  # stdout's reader went away (host --json | head -1)
                    output_lost.append(exc)
                    stop.set()
                    await slink.close()
                    return
            else:
                info(f"paired with {session.peer.name} by {session.method.label} as "
                     f"{membership.role.name.lower()}; session {session.fingerprint}")
            if on_session is not None:
                await on_session(slink, session, membership)
            else:
                policy = GrantPolicy(membership.role, expires=membership.expires)
                served = await serve_guest(
                    slink, peer_name=session.peer.name, policy=policy, share=opts.share,
                    ask=delegate.allow_request, stats=ServeStats(), wall_clock=clock.wall,
                    monotonic=clock.monotonic, idle=opts.serve_idle,
                    guest=store.key_fingerprint(session.peer.static_public),
                )
                if served.files or served.listings:
                    info(f"{session.peer.name}: {served.listings} listing(s), "
                         f"{served.files} file(s), {served.bytes_sent} bytes", quiet=quiet)
                if served.expired:
                    info(f"{session.peer.name}'s guest access has ended: session closed",
                         quiet=quiet)
            await slink.close()
            if opts.once:
                stop.set()
        except PairingError as exc:
            with contextlib.suppress(Exception):
                await link.close()
            if is_probe(exc):  # it only asked who this host is (discover, join NAME)
                info(f"{link.peer} asked who this host is", quiet=quiet)
                return False
            if _out_of_resources(exc):
                # The whole host is out of file descriptors (a flood): one line a second for
                # all guests, not one each (issue 17, finding 11).
                resources(f"error: {who}: this host is out of open files (too many "
                          "connections at once)")
            else:
                info(f"error: {who}: {exc}")
        return None

    from pairkit.transports.base import ControllerLostError

    try:
        limits = dataclasses.replace(opts.admission, max_sessions=opts.concurrent)
        while True:
            try:
                # A fresh admission each time round: accept_loop closes its own on the way out.
                await accept_loop(
                    listener, serve_one, stop=stop, once=opts.once, admission=Admission(limits),
                    on_error=lambda exc: info(f"error: {exc}"),
                )
                break
            except ControllerLostError as exc:
                # The radio went away (unplugged, reset; issue 17): the guests on it have
                # ended; say so, wait for it with growing pauses, and carry on where it was.
                await presence.pause()
                await regain_radio(transport, exc, retries=opts.radio_retries,
                                   say=lambda text: info(f"warning: {text}", essential=True))
                await presence.resume()
                address = getattr(transport, "address", address)
                info(f"the Bluetooth controller is back: {me.name} ({fp}) is waiting on "
                     f"{address}", quiet=quiet, essential=True)
    finally:
        await presence.stop()
        if listener is not transport:
            with contextlib.suppress(Exception):
                await listener.close()
        if transport_obj is None:
            with contextlib.suppress(Exception):
                await transport.close()
    if output_lost:
        _silence_stdout()
        raise OutputClosedError(
            "standard output was closed (whatever read it has gone); the host stopped"
        )
    return paired


class OutputClosedError(PairingError):
    """The results could not be written: standard output is a pipe whose reader has gone."""


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit does not fail too."""
    import os
    import sys

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _out_of_resources(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the process running out of file descriptors."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if "Too many open files" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def loop_problem_reporter(
    log: RateLimitedLog | None = None,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event loop exception handler for a host: one line on stderr per second at most (the
    rest counted), naming the condition and the OS's reason, without a traceback or a path.
    ``log``: a limiter shared with the host's other reports of the same condition."""
    log = log if log is not None else RateLimitedLog(lambda line: info(line))

    def report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        what = str(context.get("message") or "a background task failed")
        if isinstance(exc, OSError) and exc.strerror:
            what = f"{what}: {exc.strerror}"
        elif isinstance(exc, PairingError):
            what = f"{what}: {exc}"
        elif exc is not None:
            what = f"{what}: {type(exc).__name__}"
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            what += " (too many connections at once: new ones wait until some close)"
        log(f"warning: {what}")

    return report


def _host_ttp(opts: HostOptions, me: Any, delegate: Any) -> TtpHook:
    """Method ttp on the host: the key server's part of :func:`pairkit.session.accept_session`."""
    server, ca = _ttp_server(opts.ttp, opts.ttp_ca)

    async def run(pipe: Any, context: bytes) -> Session:
        from pairkit.pairing.ttp import TtpLinkConfig
        from pairkit.ttp import ttp_host_session

        return await ttp_host_session(
            pipe, me=me, peer_hint=opts.ttp_peer, server=server, ca_file=ca,
            config=TtpLinkConfig(step_timeout=opts.step_timeout, methods=opts.methods),
            delegate=delegate, context=context,
        )

    return run


def _ttp_server(server: str | None, ca: str | None) -> tuple[str, str]:
    if not server or not ca:
        raise ConfigError(
            "method 'ttp' needs the key server: --ttp HOST:PORT --ttp-ca FILE "
            "(or enrol first with 'pairkit ttp enrol')"
        )
    return server, ca


@dataclasses.dataclass
class JoinOptions:
    target: str
    method: Method | None = None
    transport: str | None = None
    pin: str | None = None
    qr: QrCode | None = None
    yes: bool = False
    json: bool = False
    allow_insecure: bool = False
    step_timeout: float = 30.0
    connect_timeout: float = 20.0
    #: what to ask for when the host's cloud does not know us
    wants: Role = Role.GUEST
    #: the clouds to prove membership of (None: every cloud this device is in)
    clouds: tuple[str, ...] | None = None
    #: method ttp: the key server, its CA file, and optionally the host's device id
    ttp: str | None = None
    ttp_ca: str | None = None
    ttp_peer: bytes | None = None
    #: a known BLE host not at its last address: also ask the hosts nearby this device cannot
    #: recognise as it, telling each this device's id (``--ask-any-host``; :func:`_nearby_hosts`)
    ask_any_host: bool = False


def resolve_target(ks: Keystore, opts: JoinOptions) -> tuple[str, str | None, KnownPeer | None]:
    """(transport spec, address on it, known peer or None) for ``TARGET``."""
    return resolve(ks, opts.target, opts.transport)


async def run_join(
    ks: Keystore,
    opts: JoinOptions,
    *,
    on_session: SessionHandler | None = None,
    transport_obj: Any = None,
    address: str | None = None,
    delegate: Any = None,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[Session, Membership]:
    """Connect, check the cloud, pair, confirm, store; the session and the guest's role."""
    from pairkit.transports.registry import open_transport

    by_name: str | None = None
    try:
        spec, found_address, peer = resolve_target(ks, opts)
    except NotFoundError:
        if not opts.transport or not opts.transport.startswith(("bumble:", "bleak")):
            raise
        # A stranger's name (the hello response): look for a visible host of that name.
        spec, found_address, peer, by_name = opts.transport, None, None, opts.target
    address = address or found_address
    method = opts.method or (Method.RESUME if peer is not None else None)
    if method is None:
        method = Method.QR if opts.qr is not None else Method.PIN
    if method is Method.TTP and (not opts.ttp or not opts.ttp_ca):
        from .ttp_cli import enrolled_server

        enrolled = enrolled_server(ks)
        if enrolled is not None:
            opts = dataclasses.replace(opts, ttp=opts.ttp or enrolled[0],
                                       ttp_ca=opts.ttp_ca or enrolled[1])
        _ttp_server(opts.ttp, opts.ttp_ca)
    if method in (Method.RESUME, Method.KK) and peer is None:
        raise ConfigError("method 'resume' needs a known peer: give its name from 'pairkit peers'")
    config = PairingConfig(
        methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS, step_timeout=opts.step_timeout,
        allow_insecure=opts.allow_insecure,
    )
    if method is Method.PIN and opts.pin is None:
        raise ConfigError("method 'pin' needs the PIN shown on the host: --pin 123456")
    if opts.qr is not None:
        opts.qr.check_fresh(clock.wall())
    guest_delegate = delegate or CliDelegate(
        yes=opts.yes, quiet=opts.json, timeout=opts.step_timeout,
        host_label=peer.name if peer is not None else opts.target,
    )
    side = GuestSide(
        ks, config, method, transport=spec,
        address=spec if spec.startswith("tcp:") else None, pin=opts.pin, qr=opts.qr,
        peer=peer, wants=opts.wants, clouds=opts.clouds, step_timeout=opts.step_timeout,
        allow_insecure=opts.allow_insecure, expect_name=by_name,
        ttp=_guest_ttp(opts, ks, peer, guest_delegate) if method is Method.TTP else None,
    )
    transport = transport_obj or await open_transport(spec)

    async def connect_and_pair(addr: str | None) -> tuple[Session, Membership]:
        try:
            link = await transport.connect(addr, timeout=opts.connect_timeout)
        except (PairingTimeout, TransportError) as exc:
            # Nobody answered at that address: "not found" whatever the transport (a refused
            # TCP connection, a BLE address that does not answer), as for an unknown name.
            raise HostNotFoundError(f"no pairkit host answered at {addr or spec}: {exc}") from exc
        try:
            done = await open_session(link, side, delegate=guest_delegate, clock=clock)
            assert done.membership is not None
            if on_session is not None:
                await on_session(done.channel, done.session, done.membership)
            await say_bye(done.channel)
            await done.channel.close()
            return done.session, done.membership
        finally:
            with contextlib.suppress(Exception):
                await link.close()

    try:
        if by_name is not None and address is None:
            address = await _host_named(transport, ks, by_name, quiet=opts.json)
        try:
            return await connect_and_pair(address)
        except (PairingTimeout, TransportError, HostNotFoundError) as exc:
            # A known BLE host rotates its address (docs/hello.md): look for it nearby.
            if peer is None or address is None or not hasattr(transport, "scan"):
                raise
            first_error = exc
        info(f"{peer.name} is not at {address} any more; looking for it nearby", quiet=opts.json)
        record = ks.peer_by_id(peer.device_id.hex())
        has_key = record is not None and record.irk is not None
        candidates, skipped = await _nearby_hosts(
            transport, ks, seconds=3.0, device=peer.device_id, has_key=has_key,
            any_host=opts.ask_any_host,
        )
        for candidate in candidates:
            if candidate == address:
                continue
            try:
                return await connect_and_pair(candidate)
            except PairingError:
                continue
        raise NotFoundError(
            f"{peer.name} did not answer at {address} and was not found nearby; is it hosting "
            f"and in range?{_skipped_text(peer.name, has_key) if skipped else ''}"
        ) from first_error
    except PairingError as exc:
        lost = getattr(transport, "lost", None)
        if lost is None or not isinstance(lost, str):
            raise
        # This side's radio went away mid-way: that, not what it broke, is the news.
        from pairkit.transports.base import ControllerLostError

        if isinstance(exc, ControllerLostError):
            raise
        raise ControllerLostError(f"{lost} while joining: {exc}") from exc
    finally:
        if isinstance(guest_delegate, CliDelegate):
            guest_delegate.close()
        if transport_obj is None:
            with contextlib.suppress(Exception):
                await transport.close()


def _guest_ttp(
    opts: JoinOptions, ks: Keystore, peer: KnownPeer | None, delegate: Any
) -> TtpHook:
    """Method ttp on the guest: the key server's part of :func:`pairkit.session.open_session`."""
    server, ca = _ttp_server(opts.ttp, opts.ttp_ca)
    me = store.local_identity(ks)

    async def run(pipe: Any, context: bytes) -> Session:
        from pairkit.pairing.ttp import TtpLinkConfig
        from pairkit.ttp import ttp_guest_session

        return await ttp_guest_session(
            pipe, me=me, peer_hint=peer.device_id if peer is not None else opts.ttp_peer,
            server=server, ca_file=ca, config=TtpLinkConfig(step_timeout=opts.step_timeout),
            delegate=delegate, context=context,
        )

    return run


async def _host_named(transport: Any, ks: Keystore, name: str, *, quiet: bool,
                      seconds: float = 3.0) -> str:
    """The address of the visible host nearby that says it is called ``name``."""
    info(f"looking for a host called {name!r} nearby", quiet=quiet)
    found, _ = await discover(transport, ks, seconds)
    named = await name_hosts(transport, ks, found)
    matches = [f.address for f in named if f.name == name]
    if not matches:
        heard = sorted({f.name for f in named if f.name})
        also = f" (heard: {', '.join(repr(n) for n in heard)})" if heard else ""
        raise NotFoundError(
            f"no host called {name!r} is open to new devices nearby{also}; ask its owner to "
            "open a visibility window (pairkit host --visible SECONDS)"
        )
    if len(matches) > 1:
        raise ConfigError(
            f"{len(matches)} hosts nearby are called {name!r}: join one by its address "
            f"({', '.join(matches)})"
        )
    return matches[0]


async def _nearby_hosts(
    transport: Any, ks: Keystore, *, seconds: float, device: bytes, has_key: bool,
    any_host: bool = False,
) -> tuple[list[str], bool]:
    """(addresses to try, whether hosts were heard and left out) when looking for the known
    host ``device`` that is not at its last address (attack review atk19p, finding 4).

    Joining a host as the known device this one is tells it this device's id in the clear
    (``JoinRequest``, docs/protocol.md §10), so only a host recognisably ours is asked: with
    the host's address key (``has_key``: a member's), only the addresses that resolve to it
    (docs/security.md "Recognising a host across addresses"); without it (a guest, a record
    older than the key), only hosts whose hello tag says they are in one of our clouds, so
    members of it.  The key judges only addresses of an RPA's form: a host whose controller
    refused RPAs (random static addresses) or a scanner that hides addresses (CoreBluetooth's
    UUIDs) leaves the tag to judge, as without the key.  A host recognised as another known
    device is never the one looked for.  ``any_host`` (``--ask-any-host``, typed by the
    person) also asks the rest, after those."""
    found, _ = await discover(transport, ks, seconds)
    wanted = device.hex()

    def ours(f: Any) -> bool:
        if f.device is not None:
            return bool(f.device == wanted)
        key_judges = has_key and is_resolvable(f.address)
        return not key_judges and f.cloud is not None

    tried = [f for f in found if ours(f)]
    rest = [f for f in found if not ours(f) and f.device is None]
    if any_host:
        tried += rest
    order = sorted(tried, key=lambda f: (f.device != wanted, f.cloud is None))
    return [f.address for f in order], bool(rest) and not any_host


def _skipped_text(name: str, has_key: bool) -> str:
    """The clause a failed search adds when it left hosts out: it names and counts none."""
    if has_key:
        return f" (hosts nearby not recognised as {name} by its address key were not asked)"
    return (f" (hosts nearby not recognisable as {name} were not asked: this device holds no "
            "address key of it, which a host gives only to its members; --ask-any-host "
            "asks them too, telling each of them this device's id)")
