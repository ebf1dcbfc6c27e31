"""A pairing host over TCP on 127.0.0.1 as production runs one (``accept_loop`` with an
:class:`~pairkit.admission.Admission`, each pairing driven over a ``MessagePipe``), and a
stranger's link to it: for the admission's attack tests (tests/attacks/test_attack_admission.py,
tests/attacks/test_attack_first_flight_links.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from pairkit.admission import Admission, AdmissionLimits
from pairkit.driver import MessagePipe, drive
from pairkit.pairing.methods import HostPairing, HostState, LocalIdentity, PairingConfig
from pairkit.session import accept_loop
from pairkit.transports.tcp import TcpListener, tcp_connect


@dataclasses.dataclass
class DrivenHost:
    """The stranger's link to the host, and how each of the host's pairings ended (its error,
    or None when it completed), in order."""

    stranger: Any
    ended: asyncio.Queue[BaseException | None]


@contextlib.asynccontextmanager
async def driven_tcp_host(limits: AdmissionLimits) -> AsyncIterator[DrivenHost]:
    """A host admitting links under ``limits``, a stranger connected to it; all closed after."""
    ended: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def pair(link: Any) -> None:
        machine = HostPairing(PairingConfig(), LocalIdentity.generate("host"), HostState())
        machine.start(asyncio.get_running_loop().time())
        try:
            await drive(machine, MessagePipe(link, guest=False))
        except BaseException as exc:
            ended.put_nowait(exc)
            raise
        ended.put_nowait(None)

    listener = await TcpListener.bind("127.0.0.1", 0)
    server = asyncio.create_task(accept_loop(listener, pair, admission=Admission(limits)))
    stranger = await tcp_connect("127.0.0.1", listener.port, timeout=5)
    try:
        yield DrivenHost(stranger, ended)
    finally:
        await stranger.close()
        server.cancel()
        with contextlib.suppress(BaseException):
            await server
        await listener.close()
