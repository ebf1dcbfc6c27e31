"""Helpers for the key server and CPNS tests: a real server on 127.0.0.1, devices, taps.

``ServerHarness`` runs :class:`pairkit.keyserver.server.TtpServer` in-process on port 0 over a
directory made by ``init_server_dir`` (certificates made here, never committed); ``ServeProcess``
runs it as its own process (``pairkit ttp serve`` or ``python -m pairkit.keyserver``).
``run_cpns_machines``
joins the CPNS machines in memory (no server process, no TLS) for the protocol-level tests, with a
``tamper`` hook on every message.  ``rewrite_tap`` edits whole messages on a fragmenting link.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path
from typing import Any

from pairkit.api import Device
from pairkit.delegate import Agree, Grant, Role
from pairkit.keyserver.certs import ServerDir, init_server_dir
from pairkit.keyserver.server import Limits, TtpServer
from pairkit.keystore import Argon2Params
from pairkit.pairing import wire
from pairkit.pairing.cpns import (
    SERVER,
    CpnsKeys,
    CpnsKeysAsked,
    CpnsRegisterAsked,
    CpnsServer,
    Gateway,
    GatewayConfig,
    PneCaps,
    PneConfig,
    PneMachine,
    PnRegistrationRequest,
    ServerInventory,
)
from pairkit.pairing.errors import PairingError
from pairkit.pairing.framing import Reassembler, fragment
from pairkit.pairing.methods import LocalIdentity, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.ttp import TtpLinkConfig, TtpLinkGuest
from pairkit.peers import local_identity
from pairkit.ttp import ttp_host_session
from tests.cli_helpers import ROOT, assert_no_traceback, cli_env

FAST = Limits(step_timeout=5.0, max_wait=5.0, handshake_timeout=5.0)
#: ``pairkit ttp`` run on its own
TTP_CLI = (sys.executable, "-m", "pairkit.cli.ttp_cli")
#: the two ways to run the key server as a process: the CLI's command, the server's own module
SERVE_CLI = (*TTP_CLI, "serve")
SERVE_STANDALONE = (sys.executable, "-m", "pairkit.keyserver")


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@dataclasses.dataclass
class ServerHarness:
    server: TtpServer
    dir: ServerDir
    address: str

    @property
    def ca(self) -> Path:
        return self.dir.ca_cert


@contextlib.asynccontextmanager
async def running_server(
    root: Path, *, limits: Limits = FAST, make: bool = True, **kw: Any
) -> AsyncIterator[ServerHarness]:
    """A key server over ``root`` (made first unless ``make=False``), stopped on exit."""
    d = init_server_dir(root) if make else ServerDir(root)
    server = TtpServer(d.root, limits=limits, **kw)
    try:
        address = await server.start("127.0.0.1", 0)
        yield ServerHarness(server, d, address)
    finally:
        await server.close()


class ServeProcess:
    """The key server as a real process on 127.0.0.1 (a free port), started with ``--json``."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str, ready: dict[str, Any]):
        self.proc = proc
        self.address = address
        #: the JSON line it printed once listening
        self.ready = ready

    @classmethod
    async def start(cls, directory: Path, *extra: str,
                    command: tuple[str, ...] = SERVE_CLI) -> ServeProcess:
        proc = await asyncio.create_subprocess_exec(
            *command, "--dir", str(directory), "--listen", "127.0.0.1:0", "--json",
            *extra, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(None),
        )
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            err = await asyncio.wait_for(proc.stderr.read(), 10)
            await asyncio.wait_for(proc.wait(), 10)
            raise AssertionError(f"the key server did not start: {err.decode()}")
        ready = json.loads(line)
        return cls(proc, ready["listening"], ready)

    async def stop(self) -> str:
        """SIGTERM; it must exit 0 without a traceback.  What it logged (stderr)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.proc.communicate(), 10)
        assert self.proc.returncode == 0, err.decode()
        text = err.decode()
        assert_no_traceback("the key server", text)
        return text


def identity(name: str) -> LocalIdentity:
    return LocalIdentity.generate(name)


# --------------------------------------------------------------------------------------------
# Whole messages on fragmenting links
# --------------------------------------------------------------------------------------------


def rewrite_tap(
    edit: Callable[[str, str, wire.Message], wire.Message | None], mtu: int = 65535
) -> Callable[[str, str, bytes], list[bytes]]:
    """A loopback tap that rejoins fragments, lets ``edit(src, dst, msg)`` change a whole
    message (None keeps it), and fragments the result again."""
    joiners: dict[tuple[str, str], Reassembler] = {}

    def tap(src: str, dst: str, data: bytes) -> list[bytes]:
        joiner = joiners.setdefault((src, dst), Reassembler(64 * 1024))
        message = joiner.feed(data)
        if message is None:
            return []
        try:
            decoded = wire.decode(message)
        except PairingError:
            return fragment(message, mtu)
        changed = edit(src, dst, decoded)
        return fragment(changed.encode() if changed is not None else message, mtu)

    return tap


def flip(data: bytes, index: int = 0) -> bytes:
    """``data`` with one bit flipped (a tampered MAC or ciphertext)."""
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# --------------------------------------------------------------------------------------------
# CPNS machines joined in memory
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CpnsWorld:
    gw: Gateway
    pnes: dict[Hashable, PneMachine]
    server: CpnsServer
    stored: list[ServerInventory]
    errors: dict[Hashable, PairingError]
    trace: list[tuple[Hashable, Hashable, str]]
    #: the EUKeys the server's store knows (gateway and enrolled PNEs)
    server_keys: dict[bytes, bytes] = dataclasses.field(default_factory=dict)


def make_world(
    *,
    n: int = 2,
    caps: tuple[PneCaps, ...] | None = None,
    wrong: tuple[int, ...] = (),
    pan_secured: tuple[int, ...] = (),
    pne_claims: tuple[int, ...] | None = None,
    link_secured: tuple[int, ...] | None = None,
    enrolled: tuple[int, ...] | None = None,
    initiator: int | None = 0,
    pne_kw: dict[int, dict[str, Any]] | None = None,
    seed: int = 1,
    gw_step: float = 30.0,
    server_step: float = 30.0,
) -> tuple[CpnsWorld, dict[bytes, bytes], list[bytes]]:
    """A gateway, ``n`` PNEs (ports 0..n-1) and a CPNS server whose store knows the EUKeys of
    the ``enrolled`` PNEs (all by default); PNEs in ``wrong`` hold another EUKey.  PNEs in
    ``pan_secured`` both claim a secured PAN and are on a link the gateway sees as secured;
    ``pne_claims`` and ``link_secured`` set the two apart.  ``gw_step`` and ``server_step``
    are the gateway's and the server's step timeouts."""
    rng = seeded(seed)
    gw_id = rng(16)
    ids = [rng(16) for _ in range(n)]
    eukeys = {i: rng(32) for i in (gw_id, *ids)}
    caps = caps or tuple(PneCaps.UI for _ in range(n))
    gw = Gateway(GatewayConfig(gw_id, "gateway", eukeys[gw_id], collect_window=1.0,
                               step_timeout=gw_step), rng=rng)
    gw.start(0.0)
    pnes: dict[Hashable, PneMachine] = {}
    for k, pne_id in enumerate(ids):
        claims = pan_secured if pne_claims is None else pne_claims
        cap = caps[k] | (PneCaps.PAN_SECURED if k in claims else PneCaps.NONE)
        kw = (pne_kw or {}).get(k, {})
        key = rng(32) if k in wrong else eukeys[pne_id]
        config = PneConfig(pne_id, f"pne{k}", key, caps=cap, **kw)
        pnes[k] = PneMachine(config, listen=k != initiator, rng=rng)
        if k != initiator:  # the initiator starts with start_initiator()
            pnes[k].start(0.0)
        secured = pan_secured if link_secured is None else link_secured
        gw.attach(k, pne_id=pne_id, pan_secured=k in secured)
    store_keys = {
        i: eukeys[i] for k, i in enumerate(ids) if enrolled is None or k in enrolled
    }
    store_keys[gw_id] = eukeys[gw_id]
    world = CpnsWorld(gw, pnes, CpnsServer(gw_id, step_timeout=server_step, rng=rng), [], {}, [],
                      store_keys)
    return world, eukeys, ids


Tamper = Callable[[Hashable, Hashable, wire.Message], wire.Message | None]


def run_cpns_machines(
    world: CpnsWorld,
    *,
    start: Callable[[CpnsWorld], None] | None = None,
    tamper: Tamper | None = None,
    now: float = 0.0,
    max_rounds: int = 50,
) -> CpnsWorld:
    """Move messages until nothing moves; errors are collected per party, not raised."""
    keys = world.server_keys

    def deliver(src: Hashable, dst: Hashable, data: bytes) -> None:
        msg = wire.decode(data)
        if tamper is not None:
            changed = tamper(src, dst, msg)
            if changed is not None:
                msg, data = changed, changed.encode()
        world.trace.append((src, dst, type(msg).__name__))
        try:
            if dst == SERVER:
                if isinstance(msg, PnRegistrationRequest):
                    world.server.begin(msg, now)
                else:
                    world.server.receive(data, now)
            elif dst == "gw":
                if not (world.gw.done or world.gw.failed):
                    world.gw.receive(data, now, port=src)
            else:
                pne = world.pnes[dst]
                if not (pne.done or pne.failed):
                    pne.receive(data, now)
        except PairingError as exc:
            world.errors.setdefault(dst, exc)

    if start is not None:
        start(world)
    for _ in range(max_rounds):
        moved = False
        for port, pne in world.pnes.items():
            for data in pne.outgoing():
                moved = True
                deliver(port, "gw", data)
        for port, data in world.gw.outgoing():
            moved = True
            deliver("gw", port, data)
        for event in world.server.events():
            moved = True
            try:
                if isinstance(event, CpnsKeysAsked):
                    world.server.answer(event, CpnsKeys(
                        keys.get(event.gw_id), {i: keys[i] for i in event.pne_ids if i in keys}
                    ), now)
                elif isinstance(event, CpnsRegisterAsked):
                    world.stored.append(event.inventory)
                    world.server.answer(event, True, now)
            except PairingError as exc:
                world.errors.setdefault(SERVER, exc)
        for data in world.server.outgoing():
            moved = True
            deliver(SERVER, "gw", data)
        world.gw.events()
        if not moved:
            return world
    raise AssertionError("too many rounds: the CPNS machines ping-pong forever")


def start_initiator(port: Hashable = 0) -> Callable[[CpnsWorld], None]:
    def start(world: CpnsWorld) -> None:
        world.pnes[port].start(0.0)

    return start


# -- a host that pairs by ttp, as `pairkit host --ttp` does (the ttp join attacks) ---------------

#: the ttp join attacks' host methods: a PIN and the key server
PIN_AND_TTP = frozenset({Method.PIN, Method.TTP})


class LetsEveryoneIn(Agree):
    """Paul at his host: lets every stranger in as a guest for an hour, and records whom he was
    asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def allow_join(self, q: Any) -> Grant | None:
        self.asked.append(q.name)
        return Grant(Role.GUEST, 3600)


def plain_device(tmp_path: Path, name: str) -> Device:
    """A library device with its identity only (no cloud), its keystore cheap to open."""
    return Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


async def ttp_host_part(paul: Device, srv: ServerHarness, pipe: Any, context: bytes,
                        step: float) -> Session:
    """The key server's part of Paul's host for one guest (``ttp_host_session`` against
    ``srv``), as ``pairkit host --ttp`` hands a ttp Offer to it."""
    return await ttp_host_session(
        pipe, me=local_identity(paul.keystore), peer_hint=None, server=srv.address,
        ca_file=srv.ca, config=TtpLinkConfig(step_timeout=step, wait=5, methods=PIN_AND_TTP),
        context=context,
    )


class NoKeyServerAccount:
    """A claimer's delegate: she has no account at the key server, so she never asks it."""

    def __init__(self, step: float) -> None:
        self.step = step

    async def ttp_key(self, q: Any) -> None:
        await asyncio.sleep(3 * self.step)


async def claim_by_ttp(
    pipe: Any, poser: LocalIdentity, step: float, host_static: bytes
) -> TtpLinkGuest:
    """On a guest's ``pipe``: a join request claiming ``poser``'s device id by ttp (with no
    cloud proof; the id sealed to ``host_static``, the host's key), then a ttp guest machine
    under that id, started and ready to drive."""
    from pairkit.driver import drive
    from pairkit.pairing.cloud import CloudGuest

    from .attack_harness import Yes

    loop = asyncio.get_running_loop()
    cloud = CloudGuest(
        name=poser.name, clouds=(), mac=lambda _c, _d: bytes(32), static=poser.static_public,
        device_id=poser.device_id, host_static=host_static, timeout=step, wants=Role.GUEST,
        method=int(Method.TTP),
    )
    cloud.start(loop.time())
    await drive(cloud, pipe, delegate=Yes())
    machine = TtpLinkGuest(TtpLinkConfig(step_timeout=step), poser, context=pipe.transcript())
    machine.start(loop.time())
    return machine

