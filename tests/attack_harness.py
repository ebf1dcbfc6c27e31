"""Tools for the attack tests in tests/attacks/: devices, a malicious guest and host built from
the real machines, a frame-level TCP proxy (record, rewrite, relay) and a secret scanner.

Only the product's public pieces are used (pairing.*, transports.tcp, cli.store); nothing in
the product is patched.  Every network wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import pty
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit import peers as store
from pairkit.driver import MessagePipe, drive
from pairkit.keystore import Keystore, Peer
from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest, CloudHost, Grant, HostInfo, Role, auth_mac_from
from pairkit.pairing.crypto import digest
from pairkit.pairing.errors import PairingError
from pairkit.pairing.framing import Reassembler, fragment
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Session,
)
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.pairing.qr import QrCode
from pairkit.pairing.service import Membership
from pairkit.securelink import SecureLink, confirm
from pairkit.transports.tcp import TcpListener, tcp_connect

from .cli_helpers import (
    KEYSTORE_PIN,
    PAIRKIT_CMD,
    ROOT,
    Device,
    HostProcess,
    Lab,
    cli_env,
)

STEP = 10.0  #: seconds any single network step may take here


# -- devices -------------------------------------------------------------------------------------


def open_ks(device: Device) -> Keystore:
    return Keystore.open(device.home / "keystore.pk", KEYSTORE_PIN)


def identity_of(device: Device) -> LocalIdentity:
    return store.local_identity(open_ks(device))


def owned_cloud(device: Device) -> tuple[str, bytes]:
    """(cloud id, secret) of the cloud ``device`` owns (read from its keystore)."""
    ks = open_ks(device)
    (cloud,) = [c for c in ks.clouds() if c.role == "owner"]
    return cloud.cloud_id, ks._cloud_secret_for_new_member(cloud.cloud_id)


def clouds_of(device: Device) -> dict[str, tuple[str, bytes]]:
    """Every cloud ``device`` holds: id -> (role, a MAC under its key, standing for the secret)."""
    ks = open_ks(device)
    return {c.cloud_id: (c.role, ks.cloud_mac(c.cloud_id, b"probe")) for c in ks.clouds()}


def peer_record(device: Device, peer: str) -> Peer:
    return open_ks(device).get_peer(peer)


def posing_as(victim: LocalIdentity) -> LocalIdentity:
    """Mallory: the victim's public keys, id and name, her own private key."""
    mallory = LocalIdentity.generate("Mallory")
    return dataclasses.replace(victim, static_private=mallory.static_private)


class Yes:
    """A delegate that says yes to codes and joins, and refuses to join clouds."""

    def __init__(self, grant: Grant | None = None, join_cloud: bool = False) -> None:
        self.grant = grant or Grant(Role.GUEST, 3600)
        self._join = join_cloud

    async def confirm_code(self, q: Any) -> bool:
        return True

    async def allow_join(self, q: Any) -> Grant | None:
        return self.grant

    async def join_cloud(self, q: Any) -> bool:
        return self._join

    async def allow_request(self, q: Any) -> Any:
        from pairkit.pairing.service import Scope

        return Scope.SESSION

    async def on_warning(self, event: Any) -> None:
        return None


def address_of(host: HostProcess) -> tuple[str, int]:
    h, p = host.address.rsplit(":", 1)
    return h, int(p)


# -- a malicious guest ---------------------------------------------------------------------------


@dataclasses.dataclass
class EvilGuest:
    """What a hand-driven guest got: the session it derived (if any), the error it ended with."""

    session: Session | None = None
    error: PairingError | None = None
    membership: Membership | None = None


async def evil_join(
    address: tuple[str, int],
    me: LocalIdentity,
    method: Method,
    *,
    pin: str | None = None,
    qr: QrCode | None = None,
    peer: KnownPeer | None = None,
    claim: bytes | None = None,
    claim_to: bytes | None = None,
    allow_insecure: bool = False,
    link_encrypted: bool = False,
    link_mitm: bool = False,
    says_name: str | None = None,
    wants: Role = Role.GUEST,
    says_method: Method | None = None,
    then: Callable[[SecureLink], Awaitable[None]] | None = None,
) -> EvilGuest:
    """Run the guest's half of the real pipeline (cloud step, pairing, bind, confirm) with
    ``me`` over a real TCP link; the CLI's run_join, by hand.  ``says_name``: the name its join
    request gives (None: its own, as an honest guest's); ``wants`` and ``says_method``: what
    the request asks for and the method it says it pairs by (None: not said); ``then``: what
    it does on the secure link once the host's Membership came (file requests, say).  ``claim``:
    the device id its join request claims, sealed to ``claim_to`` (None: ``peer``'s static
    key), as a returning device seals its own (docs/protocol.md §10)."""
    out = EvilGuest()
    link = await tcp_connect(*address, timeout=STEP)
    loop = asyncio.get_running_loop()
    try:
        config = PairingConfig(
            methods=frozenset(Method) - {Method.TTP}, caps=ALL_CAPS, step_timeout=STEP,
            allow_insecure=allow_insecure,
        )
        machine = GuestPairing(config, me, method=method, pin=pin, qr=qr, peer=peer,
                               wall_now=time.time(), link_encrypted=link_encrypted,
                               link_mitm=link_mitm)
        pipe = MessagePipe(link, guest=True)
        cloud = CloudGuest(
            name=says_name or me.name, clouds=(), mac=lambda _c, _d: bytes(32),
            static=me.static_public, device_id=claim, timeout=STEP, wants=wants,
            host_static=claim_to or (peer.static_public if peer is not None else None),
            method=None if says_method is None else int(says_method),
        )
        cloud.start(loop.time())
        await drive(cloud, pipe, delegate=Yes())
        machine.bind_context(pipe.transcript())
        machine.start(loop.time())
        await drive(machine, pipe, delegate=Yes())
        out.session = machine.session
        assert out.session is not None
        cloud.bind(out.session.peer.static_public)
        slink = SecureLink(link, out.session, timeout=STEP)
        await confirm(slink, transcript=pipe.transcript())
        out.membership = wire.decode(await slink.recv(), Membership)
        if then is not None:
            await then(slink)
    except PairingError as exc:
        out.error = exc
    finally:
        with contextlib.suppress(Exception):
            await link.close()
    return out


# -- a malicious host ----------------------------------------------------------------------------


@dataclasses.dataclass
class EvilHost:
    """A host built from the machines; ``craft`` makes the Membership it sends."""

    me: LocalIdentity
    signer: Ed25519PrivateKey
    state: HostState
    listener: TcpListener
    grant: Grant
    craft: Callable[[Session], Membership]
    errors: list[PairingError] = dataclasses.field(default_factory=list)
    sent: list[Membership] = dataclasses.field(default_factory=list)
    #: what it heard from the guest after its Membership, one per guest: "a message", or the
    #: error its secure link ended with (type and text): all a host learns of the guest's check
    heard: list[str] = dataclasses.field(default_factory=list)
    task: asyncio.Task[None] | None = None
    #: the name its hello response gives (None: its own); a lie is the point of some attacks
    says_name: str | None = None
    #: the clouds its cloud step proves, and the MAC under their secrets (none by default: it
    #: proves nothing, and a guest asks to join)
    clouds: tuple[str, ...] = ()
    mac: Callable[[str, bytes], bytes] | None = None
    #: what it does on the secure link after its Membership (None: wait for one message):
    #: a hostile file service, say
    serve: Callable[[SecureLink], Awaitable[None]] | None = None

    @property
    def target(self) -> str:
        return f"tcp:{self.listener.address}"

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            link = await self.listener.accept()
            try:
                pipe = MessagePipe(link, guest=False)
                cloud = CloudHost(clouds=self.clouds,
                                  mac=self.mac or (lambda _c, _d: bytes(32)),
                                  static=self.me.static_public, timeout=STEP,
                                  info=HostInfo(self.says_name or self.me.name,
                                                frozenset({Method.PIN}), ALL_CAPS))
                cloud.start(loop.time())
                await drive(cloud, pipe, delegate=Yes(self.grant))
                machine = HostPairing(
                    PairingConfig(caps=ALL_CAPS, step_timeout=STEP), self.me, self.state,
                    wall_now=time.time(), context=pipe.transcript(),
                )
                machine.start(loop.time())
                await drive(machine, pipe, delegate=Yes(self.grant))
                assert machine.session is not None
                slink = SecureLink(link, machine.session, timeout=STEP)
                await confirm(slink, transcript=pipe.transcript())
                membership = self.craft(machine.session)
                self.sent.append(membership)
                await slink.send(membership.encode())
                if self.serve is not None:
                    await self.serve(slink)
                    continue
                try:
                    await slink.recv(STEP)  # the guest's Bye, or its hang-up
                    self.heard.append("a message")
                except PairingError as exc:
                    self.heard.append(f"{type(exc).__name__}: {exc}")
            except PairingError as exc:
                self.errors.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    await link.close()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.listener.close()


async def evil_host(grant: Grant, craft: Callable[[Session], Membership], *,
                    says_name: str | None = None, device: Device | None = None,
                    proves: tuple[str, ...] = (),
                    serve: Callable[[SecureLink], Awaitable[None]] | None = None) -> EvilHost:
    """Start a malicious host on a free port (PIN from ``state.pin``); ``says_name`` is the
    name its hello response claims.  ``device``: it runs with that device's identity and keys
    (its keystore read, as an owner turned hostile, or a thief, would), and its cloud step
    proves the clouds ``proves`` with that device's secrets.  ``serve``: what it does on each
    secure link once its Membership is sent."""
    if device is None:
        signer = Ed25519PrivateKey.generate()
        me = dataclasses.replace(
            LocalIdentity.generate("Evil host"),
            signing_public=signer.public_key().public_bytes_raw(),
        )
        mac = None
    else:
        ks = open_ks(device)
        signer, me = ks._signing, store.local_identity(ks)
        mac = auth_mac_from(lambda cloud_id, info, n: ks.cloud_kdf(cloud_id, info, n))
    state = HostState()
    listener = await TcpListener.bind("127.0.0.1", 0)
    host = EvilHost(me, signer, state, listener, grant, craft, says_name=says_name,
                    clouds=proves, mac=mac, serve=serve)
    host.task = asyncio.create_task(host._serve())
    return host


# -- a frame-level TCP proxy ---------------------------------------------------------------------

#: (direction "g2h"/"h2g", index of the frame in that connection (both directions), frame)
#: -> the frame to forward, or None to drop it
FrameHook = Callable[[str, int, bytes], bytes | None]


def frame(piece: bytes) -> bytes:
    return len(piece).to_bytes(4, "big") + piece


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    n = int.from_bytes(await reader.readexactly(4), "big")
    return await reader.readexactly(n)


def message_of(piece: bytes) -> bytes | None:
    """The whole message in one link frame (the TCP MTU fits every handshake message)."""
    return Reassembler(1 << 20).feed(piece)


def as_frame(message: bytes) -> bytes:
    (piece,) = fragment(message, 65535)
    return piece


class Proxy:
    """Listens on a free port and forwards each connection to ``upstream``, frame by frame,
    through ``hook``; every frame is recorded as (connection, direction, bytes)."""

    def __init__(self, upstream: tuple[str, int], hook: FrameHook | None = None,
                 *, hold: float = 0.0) -> None:
        self.upstream = upstream
        self.hook = hook
        #: seconds a rewritten frame is held back (an on-path attacker chooses the timing)
        self.hold = hold
        self.frames: list[tuple[int, str, bytes]] = []
        self._server: asyncio.Server | None = None
        self._conns = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        return self

    @property
    def target(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"tcp:127.0.0.1:{port}"

    async def _on_conn(self, g_reader: asyncio.StreamReader, g_writer: asyncio.StreamWriter
                       ) -> None:
        conn = self._conns
        self._conns += 1
        counter = [0]
        try:
            h_reader, h_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), STEP)
        except OSError:
            g_writer.close()
            return

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       direction: str) -> None:
            try:
                while True:
                    piece = await read_frame(reader)
                    index = counter[0]
                    counter[0] += 1
                    self.frames.append((conn, direction, piece))
                    out = piece if self.hook is None else self.hook(direction, index, piece)
                    if out is not None and out != piece and self.hold:
                        await asyncio.sleep(self.hold)
                    if out is not None:
                        writer.write(frame(out))
                        await writer.drain()
            except (asyncio.IncompleteReadError, OSError):
                pass
            finally:
                writer.close()

        tasks = [asyncio.create_task(pump(g_reader, h_writer, "g2h")),
                 asyncio.create_task(pump(h_reader, g_writer, "h2g"))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    def messages(self, conn: int = 0) -> list[tuple[str, bytes]]:
        return [(d, f) for c, d, f in self.frames if c == conn]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def flip_last_bit(piece: bytes) -> bytes:
    return piece[:-1] + bytes([piece[-1] ^ 0x01])


# -- a host process with a terminal on stdin (to grant membership as a person would) -------------


async def host_with_terminal(lab: Lab, device: Device, *args: str) -> tuple[HostProcess, int]:
    """``pairkit host`` whose stdin is a terminal; write answers to the returned fd."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, "host", "-t", "tcp:127.0.0.1:0", *args, stdin=slave,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=cli_env(device.home),
    )
    os.close(slave)
    host = HostProcess(proc, ("-t", "tcp:127.0.0.1:0", *args))
    lab.hosts.append(host)
    match = await host.wait_for(r"is waiting on (\S+)")
    host.address = match.group(1)
    return host, master


async def answer_prompt(host: HostProcess, master: int, pattern: str, text: str,
                        since: int = 0) -> None:
    await host.wait_for(pattern, since=since)
    await asyncio.sleep(0.2)  # the prompt itself has no newline: give it time to be read
    os.write(master, text.encode())


# -- secrets -------------------------------------------------------------------------------------


def encodings(secret: bytes) -> dict[str, str]:
    """The ways a secret could be printed."""
    return {
        "hex": secret.hex(),
        "HEX": secret.hex().upper(),
        "b64": base64.b64encode(secret).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(secret).decode().rstrip("="),
        "repr": repr(secret)[2:-1][:40],
    }


def find_secrets(text: str, secrets: dict[str, bytes]) -> list[str]:
    """Which named secrets (in which encoding) appear in ``text``."""
    found = []
    for name, secret in secrets.items():
        for how, enc in encodings(secret).items():
            if len(enc) >= 16 and enc in text:
                found.append(f"{name} ({how})")
    return found


def device_secrets(device: Device) -> dict[str, bytes]:
    """Every secret a device's keystore holds that we can read: its private keys, its clouds'
    secrets, its prekeys' private halves."""
    ks = open_ks(device)
    out = {f"{device.name} static private": ks._static_private_for_handshake()}
    for c in ks.clouds():
        with contextlib.suppress(Exception):
            out[f"{device.name} cloud {c.cloud_id} secret"] = ks._cloud_secret_for_new_member(
                c.cloud_id)
    for p in ks.peers():
        for i, record in enumerate(p.our_prekeys):
            out[f"{device.name} prekey {i} for {p.name}"] = bytes(record[1])
        if p.irk is not None:  # a host's address key, given to its members (issue 15)
            out[f"{device.name}'s copy of {p.name}'s address key"] = p.irk
    irk = ks.setting("ble_irk")
    if isinstance(irk, bytes):
        out[f"{device.name} address key"] = irk
    return out


async def until(pred: Callable[[], Awaitable[bool]], what: str, timeout: float = STEP) -> None:
    async with asyncio.timeout(timeout):
        while not await pred():
            await asyncio.sleep(0.1)
    del what


__all__ = ["digest"]
