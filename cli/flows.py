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
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pairkit.driver import MessagePipe, drive
from pairkit.pairing.cloud import CloudGuest, CloudHost, Grant, Role, auth_mac_from
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    PairingError,
    PairingTimeout,
    TransportError,
)
from pairkit.pairing.keystore import Keystore
from pairkit.pairing.methods import (
    GuestPairing,
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
    check_membership,
    membership_statement,
)
from pairkit.securelink import SecureLink, confirm

from . import store
from .common import CliDelegate, info
from .presence import Presence, discover, is_ble_address
from .service import ServeStats, receive_membership, say_bye, serve_guest

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
    concurrent: int = 4
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
) -> int:
    """Serve guests; returns the number of guests paired."""
    from pairkit.transports.registry import open_transport

    me = store.local_identity(ks)
    state = HostState(
        pin_policy=PinPolicy(opts.max_failures, opts.lockout_window),
        known_peer=lambda device_id: store.known_peer(ks, device_id),
        consume_prekey=lambda device_id, digest: store.consume_our_prekey(ks, device_id, digest),
    )
    config = PairingConfig(
        methods=opts.methods, caps=ALL_CAPS, step_timeout=opts.step_timeout,
        allow_insecure=opts.allow_insecure,
    )
    mac = auth_mac_from(lambda cloud_id, info_, n: ks.cloud_kdf(cloud_id, info_, n))
    # Only this device's own cloud admits members without a prompt: a cloud it joined is its
    # standing there, never a grant to that cloud's members here (docs/security.md, rule 2).
    clouds = tuple(c.cloud_id for c in ks.clouds() if c.role == "owner")
    owned = next((c for c in ks.clouds() if c.role == "owner"), None)

    def known_grant(device_id: bytes) -> Grant | None:
        return store.peer_grant(ks, device_id, time.time())

    transport = transport_obj or await open_transport(opts.transport)
    listener = await transport.listen() if hasattr(transport, "listen") else transport
    address = getattr(listener, "address", None) or getattr(transport, "address", opts.transport)
    quiet = opts.quiet
    presence = Presence(
        transport, ks, opts.methods, visible_for=opts.visible,
        l2cap=bool(getattr(getattr(transport, "config", None), "prefer_l2cap", False)),
        on_change=lambda text: info(text, quiet=quiet),
    )
    await presence.start()
    if presence_out is not None:
        presence_out.append(presence)
    if presence.can_broadcast:
        window = (f"visible to strangers for {opts.visible:g} s" if opts.visible
                  else "private: only members of its cloud can find it (--visible SECONDS)")
        info(f"broadcasting a hello; {window}", quiet=quiet)
    fp = store.key_fingerprint(me.static_public)
    info(f"{me.name} ({fp}) is waiting on {address}", quiet=quiet)

    def show_pin() -> None:
        if Method.PIN in opts.methods and state.pin is not None:
            info(f"PIN: {state.pin}   (type it on the guest: pairkit join ... --method pin)",
                 quiet=quiet)

    if Method.PIN in opts.methods:
        # A PIN is single use: a --pin serves one guest, then fresh ones are drawn.
        state.set_pin(opts.pin) if opts.pin is not None else state.new_pin()

    def show_qr() -> None:
        if Method.QR in opts.methods:
            code = state.issue_qr(me.static_public, time.time(), ttl=opts.qr_ttl, hint=address)
            uri = code.to_uri()
            info(store.qr_text(uri), quiet=quiet)
            info(f"QR code (valid {opts.qr_ttl:.0f} s): {uri}", quiet=quiet)
            if opts.qr_png is not None:
                store.qr_png(uri, opts.qr_png)
                info(f"QR code written to {opts.qr_png}")

    show_pin()
    show_qr()
    if ready is not None:
        ready(address, state)
    paired = 0
    delegate = delegate or CliDelegate(
        yes=opts.yes, quiet=quiet, guest_seconds=opts.guest_seconds
    )
    slots = asyncio.Semaphore(opts.concurrent)
    tasks: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()

    async def serve_one(link: Any) -> None:
        nonlocal paired
        loop = asyncio.get_running_loop()
        tried: list[HostPairing] = []  # the pairing machine, once made (see finally)
        try:
            pipe = MessagePipe(link, guest=False)
            cloud = CloudHost(
                clouds=clouds, mac=mac, static=me.static_public,
                known_grant=known_grant, open_to_strangers=lambda: presence.visible,
                timeout=opts.step_timeout,
            )
            cloud.start(loop.time())
            await drive(cloud, pipe, delegate=delegate)
            session = await _host_session(
                pipe, link, me, state, config, opts, delegate, tried, context=pipe.transcript()
            )
            if cloud.claimed is not None and cloud.claimed != session.peer.device_id:
                raise AuthenticationError("the guest claimed to be a known device but is not")
            cloud.bind(session.peer.static_public)  # its cloud proof names the key it paired with
            slink = SecureLink(link, session, timeout=opts.step_timeout)
            await confirm(slink, transcript=pipe.transcript(), first=True)
            membership = _membership_for(ks, cloud, owned, session)
            await slink.send(membership.encode())
            store.save_session(
                ks, session, address=str(link.peer), transport=opts.transport,
                granted=membership.role, granted_expires=membership.expires,
            )
            paired += 1
            if emit is not None:
                emit(result_json(session, membership))
            else:
                info(f"paired with {session.peer.name} by {session.method.label} as "
                     f"{membership.role.name.lower()}; session {session.fingerprint}")
            if on_session is not None:
                await on_session(slink, session, membership)
            else:
                policy = GrantPolicy(membership.role, expires=membership.expires)
                served = await serve_guest(
                    slink, peer_name=session.peer.name, policy=policy, share=opts.share,
                    ask=delegate.allow_request, stats=ServeStats(),
                )
                if served.files or served.listings:
                    info(f"{session.peer.name}: {served.listings} listing(s), "
                         f"{served.files} file(s), {served.bytes_sent} bytes", quiet=quiet)
            await slink.close()
            if opts.once:
                stop.set()
        except PairingError as exc:
            info(f"error: guest {link.peer}: {exc}")
            with contextlib.suppress(Exception):
                await link.close()
        finally:
            if not opts.once and Method.PIN in opts.methods and state.pin is None:
                state.new_pin()
                show_pin()
            if not opts.once and tried and tried[0].method is Method.QR:
                show_qr()  # a QR code is single use too: the next guest needs a fresh one
            slots.release()

    accept: asyncio.Future[Any] | None = None
    try:
        while not stop.is_set():
            await slots.acquire()
            accept = asyncio.ensure_future(listener.accept())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({accept, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if accept not in done:
                slots.release()
                break
            try:
                link = accept.result()
            except PairingError as exc:
                info(f"error: {exc}")
                slots.release()
                continue
            finally:
                accept = None
            task = asyncio.create_task(serve_one(link))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if opts.once:
                await task
    finally:
        if accept is not None:
            accept.cancel()
            with contextlib.suppress(BaseException):
                await accept
        for task in list(tasks):
            task.cancel()
        await presence.stop()
        if listener is not transport:
            with contextlib.suppress(Exception):
                await listener.close()
        if transport_obj is None:
            with contextlib.suppress(Exception):
                await transport.close()
    return paired


async def _host_session(
    pipe: MessagePipe, link: Any, me: Any, state: HostState, config: PairingConfig,
    opts: HostOptions, delegate: Any, tried: list[HostPairing], *, context: bytes = b"",
) -> Session:
    """The session key by the method the guest chose: ``ttp`` or one of pairing.methods."""
    loop = asyncio.get_running_loop()
    if Method.TTP in opts.methods:
        from pairkit.pairing.ttp import TtpLinkConfig, is_ttp_offer

        from .ttp_client import replay_first, ttp_host_session

        # The guest's Offer says which machine runs it; both check the proposal against this
        # host's table (ttp is negotiated like every method: docs/security.md, rule 6).
        try:
            first = await asyncio.wait_for(pipe.recv(), opts.step_timeout)
        except TimeoutError:
            raise PairingTimeout("the guest did not start pairing in time") from None
        pipe = replay_first(pipe, first)
        if is_ttp_offer(first):
            server, ca = _ttp_server(opts.ttp, opts.ttp_ca)
            return await ttp_host_session(
                pipe, me=me, peer_hint=opts.ttp_peer, server=server, ca_file=ca,
                config=TtpLinkConfig(step_timeout=opts.step_timeout, methods=opts.methods),
                delegate=delegate, context=context,
            )
    machine = HostPairing(
        config, me, state, link_encrypted=bool(link.encrypted),
        link_mitm=bool(getattr(link, "mitm_protected", False)), wall_now=time.time(),
        context=context,
    )
    machine.start(loop.time())
    tried.append(machine)
    await drive(machine, pipe, delegate=delegate)
    assert machine.session is not None
    return machine.session


def _ttp_server(server: str | None, ca: str | None) -> tuple[str, str]:
    if not server or not ca:
        raise ConfigError(
            "method 'ttp' needs the key server: --ttp HOST:PORT --ttp-ca FILE "
            "(or enrol first with 'pairkit ttp enroll')"
        )
    return server, ca


def _membership_for(
    ks: Keystore, cloud: CloudHost, owned: Any, session: Session
) -> Membership:
    """What the guest is to this host after the cloud step (sent first on the channel)."""
    if cloud.role is Role.MEMBER and cloud.grant is None:
        return Membership(role=Role.MEMBER, cloud_id=cloud.cloud_id)
    grant = cloud.grant
    assert grant is not None
    if grant.role is Role.MEMBER:
        if owned is None:
            raise ConfigError("this host owns no cloud to make members of")
        members = store.cloud_members(ks)
        unsigned = Membership(
            role=Role.MEMBER, cloud_id=owned.cloud_id, cloud_name=owned.name,
            secret=ks._cloud_secret_for_new_member(owned.cloud_id), members=members,
        )
        # Signed by the owner for this member and this session (docs/security.md, rule 3).
        statement = membership_statement(unsigned, session.peer.device_id, session.fingerprint)
        return dataclasses.replace(unsigned, signature=ks.sign(statement))
    expires = int(time.time() + (grant.seconds or 0))
    return Membership(role=Role.GUEST, expires=expires)


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


def resolve_target(ks: Keystore, opts: JoinOptions) -> tuple[str, str | None, KnownPeer | None]:
    """(transport spec, address on it, known peer or None) for ``TARGET``."""
    target = opts.target
    if target.startswith(("tcp:", "loopback")):
        return opts.transport or target, None, None
    if target.startswith(("bumble:", "bleak")):
        raise ConfigError(
            f"{target!r} names a radio, not a device: give the host's BLE address from "
            f"'pairkit discover --transport {target}' and --transport {target}"
        )
    if is_ble_address(target):
        if not opts.transport:
            raise ConfigError(
                "to reach a BLE address, say through which radio: --transport bumble:usb:0, "
                "bumble:tcp-client:HOST:PORT or bleak"
            )
        return opts.transport, (target.upper() if ":" in target else target), None
    peer = store.find_peer(ks, target)
    if peer is None:
        raise NotFoundError(
            f"no known peer or transport called {target!r}; use tcp:HOST:PORT, a BLE address "
            "from 'pairkit discover', or a name from 'pairkit peers'"
        )
    spec, address = store.peer_contact(ks, peer)
    spec = opts.transport or spec
    if not spec:
        raise NotFoundError(f"no address is known for {peer.name}; give --transport")
    return spec, (address if not spec.startswith(("tcp:", "loopback")) else None), peer


async def run_join(
    ks: Keystore,
    opts: JoinOptions,
    *,
    on_session: SessionHandler | None = None,
    transport_obj: Any = None,
    address: str | None = None,
    delegate: Any = None,
) -> tuple[Session, Membership]:
    """Connect, check the cloud, pair, confirm, store; the session and the guest's role."""
    from pairkit.transports.registry import open_transport

    spec, found_address, peer = resolve_target(ks, opts)
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
    me = store.local_identity(ks)
    config = PairingConfig(
        methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS, step_timeout=opts.step_timeout,
        allow_insecure=opts.allow_insecure,
    )
    if method is Method.PIN and opts.pin is None:
        raise ConfigError("method 'pin' needs the PIN shown on the host: --pin 123456")
    if opts.qr is not None:
        opts.qr.check_fresh(time.time())
    transport = transport_obj or await open_transport(spec)

    async def over(link: Any) -> tuple[Session, Membership]:
        if method is Method.CLEAR and not link.encrypted and hasattr(link, "encrypt"):
            # BLE: turn on LE Secure Connections first, so 'clear' runs over an
            # encrypted link (method b); over links that cannot, 'clear' is refused.
            await link.encrypt()
        if method is Method.CLEAR and not link.encrypted and opts.allow_insecure:
            # Forced by the user: say so loudly (DESIGN.md 4b), even with --json.
            info("warning: pairing with 'clear' over a link that is not encrypted: anyone "
                 "listening gets the session key (--allow-insecure)")
        # Built before the cloud step: a method this link cannot carry ('clear' without
        # link encryption) is refused before the host's owner is asked anything.
        machine = None if method is Method.TTP else GuestPairing(
            config, me, method=method, link_encrypted=bool(link.encrypted),
            link_mitm=bool(getattr(link, "mitm_protected", False)), pin=opts.pin,
            qr=opts.qr, peer=peer, wall_now=time.time(),
            rng=os.urandom,
        )
        loop = asyncio.get_running_loop()
        pipe = MessagePipe(link, guest=True)
        mac = auth_mac_from(lambda cloud_id, info_, n: ks.cloud_kdf(cloud_id, info_, n))
        clouds = opts.clouds if opts.clouds is not None else tuple(
            c.cloud_id for c in ks.clouds()
        )
        cloud = CloudGuest(
            name=me.name, clouds=clouds, mac=mac, static=me.static_public, wants=opts.wants,
            device_id=me.device_id if peer is not None else None,
            timeout=opts.step_timeout,
        )
        cloud.start(loop.time())
        guest_delegate = delegate or CliDelegate(yes=opts.yes, quiet=opts.json)
        await drive(cloud, pipe, delegate=guest_delegate)
        if machine is None:
            from pairkit.pairing.ttp import TtpLinkConfig

            from .ttp_client import ttp_guest_session

            server, ca = _ttp_server(opts.ttp, opts.ttp_ca)
            session = await ttp_guest_session(
                pipe, me=me, peer_hint=peer.device_id if peer is not None else opts.ttp_peer,
                server=server, ca_file=ca, config=TtpLinkConfig(step_timeout=opts.step_timeout),
                delegate=guest_delegate, context=pipe.transcript(),
            )
        else:
            machine.bind_context(pipe.transcript())  # the cloud step, bound into the key
            machine.start(loop.time())
            await drive(machine, pipe, delegate=guest_delegate)
            assert machine.session is not None
            session = machine.session
        if machine is not None and machine.stale_prekey is not None and peer is not None:
            store.drop_their_prekey(ks, peer.device_id, machine.stale_prekey)
        cloud.bind(session.peer.static_public)  # the host's cloud proof names its key
        slink = SecureLink(link, session, timeout=opts.step_timeout)
        await confirm(slink, transcript=pipe.transcript(), first=False)
        membership = await receive_membership(slink)
        await _take_membership(ks, membership, session, guest_delegate)
        store.save_session(
            ks, session, address=spec if spec.startswith("tcp:") else str(link.peer),
            transport=spec, standing=membership.role, standing_expires=membership.expires,
        )
        if on_session is not None:
            await on_session(slink, session, membership)
        await say_bye(slink)
        await slink.close()
        return session, membership

    async def connect_and_pair(addr: str | None) -> tuple[Session, Membership]:
        link = await transport.connect(addr, timeout=opts.connect_timeout)
        try:
            return await over(link)
        finally:
            with contextlib.suppress(Exception):
                await link.close()

    try:
        try:
            return await connect_and_pair(address)
        except (PairingTimeout, TransportError) as exc:
            # A known BLE host rotates its address (docs/hello.md): look for it nearby.
            if peer is None or address is None or not hasattr(transport, "scan"):
                raise
            first_error = exc
        info(f"{peer.name} is not at {address} any more; looking for it nearby", quiet=opts.json)
        for candidate in await _nearby_hosts(transport, ks, seconds=3.0):
            if candidate == address:
                continue
            try:
                return await connect_and_pair(candidate)
            except PairingError:
                continue
        raise NotFoundError(
            f"{peer.name} did not answer at {address} and was not found nearby; is it hosting "
            "and in range?"
        ) from first_error
    finally:
        if transport_obj is None:
            with contextlib.suppress(Exception):
                await transport.close()


async def _take_membership(
    ks: Keystore, membership: Membership, session: Session, delegate: Any
) -> None:
    """Join the host's cloud only if it is the host's own, signed, new to this device, and this
    device's user agrees (docs/security.md, rules 2 and 3); a refusal stores nothing."""
    question = check_membership(
        membership, host_id=session.peer.device_id, host_signing=session.peer.signing_public,
        me=bytes.fromhex(ks.device_id), session_fingerprint=session.fingerprint,
        held=[c.cloud_id for c in ks.clouds()],
    )
    if question is None:
        return
    question = dataclasses.replace(question, host_name=session.peer.name)
    hook = getattr(delegate, "join_cloud", None)
    if hook is None or not await hook(question):
        return
    assert membership.secret is not None and membership.cloud_id is not None
    with ks.update():
        if membership.cloud_id in {c.cloud_id for c in ks.clouds()}:
            return  # another process on this device joined it meanwhile: never overwrite
        ks.set_cloud(
            membership.cloud_id, membership.secret,
            name=membership.cloud_name or "a cloud", role="member",
        )


async def _nearby_hosts(transport: Any, ks: Keystore, *, seconds: float) -> list[str]:
    """Addresses of the pairkit hosts heard, those of our clouds first."""
    found, _ = await discover(transport, ks, seconds)
    return [f.address for f in sorted(found, key=lambda f: f.cloud is None)]
