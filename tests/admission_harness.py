"""A pairing host over TCP on 127.0.0.1, or over the in-process loopback, as production runs one
(``accept_loop`` with an :class:`~pairkit.admission.Admission`, each pairing driven over a
``MessagePipe``), and a stranger's link to it: for the admission's attack tests
(tests/attacks/test_attack_admission.py, tests/attacks/test_attack_first_flight_links.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from pairkit.admission import Admission, AdmissionLimits
from pairkit.driver import MessagePipe, drive
from pairkit.pairing.machine import Machine
from pairkit.pairing.methods import HostPairing, HostState, LocalIdentity, PairingConfig
from pairkit.session import accept_loop
from pairkit.transports.loopback import LoopbackMedium
from pairkit.transports.tcp import TcpListener, tcp_connect

#: the transports :func:`driven_host` runs on
DRIVEN_TRANSPORTS = ("tcp", "loopback")


@dataclasses.dataclass
class DrivenHost:
    """The stranger's link to the host, and how each of the host's pairings ended (its error,
    or None when it completed), in order."""

    stranger: Any
    ended: asyncio.Queue[BaseException | None]


def default_host_machine() -> Machine:
    """A host's pairing with the default configuration and nothing to pair by (it answers a
    guest's offer, or times out)."""
    return HostPairing(PairingConfig(), LocalIdentity.generate("host"), HostState())


@contextlib.asynccontextmanager
async def driven_host(
    limits: AdmissionLimits, transport: str = "tcp", *,
    machine: Callable[[], Machine] = default_host_machine,
) -> AsyncIterator[DrivenHost]:
    """A host on ``transport`` (one of :data:`DRIVEN_TRANSPORTS`) admitting links under
    ``limits`` and driving a ``machine()`` over each, a stranger connected to it; all closed
    after."""
    ended: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def pair(link: Any) -> None:
        run = machine()
        run.start(asyncio.get_running_loop().time())
        try:
            await drive(run, MessagePipe(link, guest=False))
        except BaseException as exc:
            ended.put_nowait(exc)
            raise
        ended.put_nowait(None)

    listener: Any
    if transport == "tcp":
        listener = await TcpListener.bind("127.0.0.1", 0)
    elif transport == "loopback":
        medium = LoopbackMedium()
        listener = await medium.endpoint("host").listen()
    else:
        raise ValueError(f"no driven host on {transport!r} (one of {DRIVEN_TRANSPORTS})")
    server = asyncio.create_task(accept_loop(listener, pair, admission=Admission(limits)))
    if transport == "tcp":
        stranger = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    else:
        stranger = await medium.endpoint().connect("host", timeout=5)
    try:
        yield DrivenHost(stranger, ended)
    finally:
        await stranger.close()
        server.cancel()
        with contextlib.suppress(BaseException):
            await server
        await listener.close()


def driven_tcp_host(limits: AdmissionLimits) -> contextlib.AbstractAsyncContextManager[DrivenHost]:
    """:func:`driven_host` over TCP."""
    return driven_host(limits, "tcp")
