"""CPNS over real links: a PNE on its PAN link, and the gateway between its PNEs and the server.

:func:`run_pne` drives :class:`pairing.cpns.PneMachine` over one link with
:func:`pairkit.driver.drive`.  :func:`run_gateway` pumps the multi-port
:class:`pairing.cpns.Gateway`: one reader per PNE link feeds one queue, the machine's deadline
bounds every wait, and the connection to the CPNS server (the key server, TLS with the pinned
CA, the device's proof of its identity key) is opened when the machine first has a message for
it: the PN Registration Request, sent right after the proof.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from .driver import LinkLike, MessagePipe, drive
from .pairing import wire
from .pairing.cpns import (
    SERVER,
    Gateway,
    GatewayConfig,
    PneConfig,
    PneMachine,
    PnInventory,
    PnMembership,
    SetupType,
)
from .pairing.crypto import Rng
from .pairing.errors import LinkClosedError, PairingError, RemoteError
from .pairing.machine import Event
from .pairing.methods import LocalIdentity
from .pairing.ttp import TtpClient
from .ttp import DEFAULT_TIMEOUT, ServerLink, connect, from_server


async def run_pne(
    link: LinkLike | MessagePipe,
    config: PneConfig,
    *,
    listen: bool,
    delegate: Any = None,
    rng: Rng = os.urandom,
) -> PnMembership | None:
    """Take part in a PN setup on ``link``: start it (``listen=False``), or wait for the
    gateway's notify.  The PNE's membership; None when it declined the gateway's notify
    (``config.join``, or its delegate's ``allow_pn_join`` answered no); or the error that kept
    it out."""
    loop = asyncio.get_running_loop()
    machine = PneMachine(config, listen=listen, rng=rng)
    machine.start(loop.time())
    await drive(machine, link, delegate=delegate, idle=config.step_timeout)
    if machine.declined:
        return None
    assert machine.membership is not None
    return machine.membership


@dataclasses.dataclass(frozen=True)
class PneLink:
    """One PNE as the gateway reaches it."""

    link: LinkLike
    #: the PNE's id when the PAN told it (needed for invited setups)
    pne_id: bytes | None = None
    #: the message pipe on ``link`` when the caller already reads it (``pairkit pn gateway``
    #: keeps using it after the setup: its transcript binds the setup into the link session)
    pipe: MessagePipe | None = None
    #: a first message the caller already read from the pipe (the PNE's setup request)
    first: bytes | None = None

    @property
    def pan_secured(self) -> bool:
        return bool(getattr(self.link, "encrypted", False))


async def run_gateway(
    pnes: Mapping[Hashable, PneLink],
    *,
    me: LocalIdentity,
    config: GatewayConfig,
    server: str,
    ca_file: str | Path,
    initiate: tuple[SetupType, tuple[bytes, ...]] | None = None,
    on_event: Callable[[Event], None] | None = None,
    server_timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
) -> PnInventory:
    """Run the gateway until its PN is set up; its inventory (also in the routing table).

    ``initiate`` starts a gateway-initiated setup; without it the gateway waits for a PNE's
    PN Setup Request.  ``me`` is the gateway's identity as enrolled with the server.
    """
    loop = asyncio.get_running_loop()
    gw = Gateway(config, rng=rng)
    gw.start(loop.time())
    pipes: dict[Hashable, MessagePipe] = {}
    inbox: asyncio.Queue[tuple[Hashable, bytes | PairingError]] = asyncio.Queue()
    readers: list[asyncio.Task[None]] = []
    conn: ServerLink | None = None

    async def read(port: Hashable, pipe: MessagePipe) -> None:
        while True:
            try:
                data = await pipe.recv()
            except PairingError as exc:
                await inbox.put((port, exc))
                return
            await inbox.put((port, data))

    firsts: list[tuple[Hashable, bytes]] = []
    for port, pne in pnes.items():
        gw.attach(port, pne_id=pne.pne_id, pan_secured=pne.pan_secured)
        pipes[port] = pne.pipe or MessagePipe(pne.link, guest=False)
        readers.append(asyncio.create_task(read(port, pipes[port])))
        if pne.first is not None:
            firsts.append((port, pne.first))

    async def open_server(first: bytes) -> ServerLink:
        c = await connect(server, ca_file, timeout=server_timeout)
        client = TtpClient(
            me, cert=c.cert, request=wire.decode(first), expect=None,
            step_timeout=server_timeout, rng=rng,
        )
        client.start(loop.time())
        try:
            await drive(client, c.pipe, idle=server_timeout)
        except BaseException:
            await c.close()
            raise
        readers.append(asyncio.create_task(read(SERVER, c.pipe)))
        return c

    # Each element's link has a sender of its own: a link that takes no data (an L2CAP
    # receiver granting no credits) holds its own messages for a step, never the relay of the
    # others' (attack review of the registration's wait, finding 2).
    outboxes: dict[Hashable, asyncio.Queue[bytes]] = {}
    senders: list[asyncio.Task[None]] = []

    async def send_to(port: Hashable, outbox: asyncio.Queue[bytes]) -> None:
        failed = False
        while True:
            data = await outbox.get()
            try:
                if not failed:  # after a failure, what is posted to the link is dropped
                    await asyncio.wait_for(pipes[port].send(data), config.step_timeout)
            except (PairingError, TimeoutError):
                failed = True
                # Told to the machine by the main loop, as a closed link is.
                inbox.put_nowait((port, LinkClosedError("the link to the PNE took no data")))
            finally:
                outbox.task_done()

    def post(port: Hashable, data: bytes) -> None:
        outbox = outboxes.get(port)
        if outbox is None:
            outbox = outboxes[port] = asyncio.Queue()
            senders.append(asyncio.create_task(send_to(port, outbox)))
        outbox.put_nowait(data)

    async def sent() -> None:
        """Every message posted to an element has gone, or its link failed (each send is
        bounded by a step)."""
        await asyncio.gather(*(o.join() for o in outboxes.values()))

    async def flush() -> None:
        nonlocal conn
        for port, data in gw.outgoing():
            if port != SERVER:
                post(port, data)
            elif conn is None:
                conn = await open_server(data)
            else:
                try:
                    await conn.pipe.send(data)
                except LinkClosedError:
                    # The server hung up (any other failure still ends the run): it may have
                    # answered the registration before (a PNE's late answer relayed after
                    # it), and its answer waits in the inbox; its reader reports the closed
                    # connection after it, which ends the run only if the server had not
                    # answered (attack review of the registration's wait).
                    pass

    try:
        if initiate is not None:
            gw.initiate(loop.time(), *initiate)
        for port, data in firsts:
            gw.receive(data, loop.time(), port=port)
        while True:
            await flush()
            for event in gw.events():
                if on_event is not None:
                    on_event(event)
            if gw.done:
                assert gw.inventory is not None
                await sent()  # the outcome reaches every element before the pipes go back
                return gw.inventory
            deadline = gw.next_deadline()
            wait = config.step_timeout if deadline is None else max(0.0, deadline - loop.time())
            try:
                port, item = await asyncio.wait_for(inbox.get(), wait)
            except TimeoutError:
                gw.on_timeout(loop.time())
                continue
            if isinstance(item, PairingError):
                if port == SERVER:
                    if gw.server_done:
                        continue  # it answered the registration and hung up, as it should
                    raise LinkClosedError("the CPNS server closed the connection") from item
                gw.link_closed(port, loop.time())
                continue
            gw.receive(item, loop.time(), port=port)
    except PairingError as exc:
        gw.abort(exc)
        # Each element's abort goes after what was posted to it before, on its own sender: a
        # link that takes no data holds its own abort, not the others'.
        to_server: list[bytes] = []
        for port, data in gw.outgoing():
            if port == SERVER:
                to_server.append(data)
            elif port in pipes:
                post(port, data)
        with contextlib.suppress(PairingError, OSError, TimeoutError):
            await asyncio.wait_for(sent(), 2.0)
        if conn is not None and to_server:
            with contextlib.suppress(PairingError, OSError, TimeoutError):
                await asyncio.wait_for(_send_all(conn.pipe, to_server), 2.0)
        if isinstance(exc, RemoteError):
            raise from_server(exc) from None
        raise
    finally:
        for task in (*readers, *senders):
            task.cancel()
        await asyncio.gather(*readers, *senders, return_exceptions=True)
        if conn is not None:
            await conn.close()


async def _send_all(pipe: MessagePipe, messages: list[bytes]) -> None:
    for data in messages:
        await pipe.send(data)
