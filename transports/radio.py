"""A virtual BLE radio for several processes: linked virtual controllers served over TCP.

``pairkit radio --ports P1 P2 ...`` (and ``python -m transports.radio --ports P1 P2 ...``) runs
one :class:`~transports.ble.virtual.VirtualRadio` with one virtual controller per port; each
port serves the HCI of its controller to one bumble host, which opens it as
``bumble:tcp-client:127.0.0.1:P``.  It is bumble's ``controllers`` app for two or more ports,
with the corrections of :mod:`transports.ble.virtual`, plus one: when a host process goes away
(its TCP connection closes), its controller's connections end as a supervision timeout would
end them (Core 5.4 Vol 6 Part B §4.5.2) and its advertising stops, so peers are not left
talking to nobody; the next process on that port finds a clean controller.

HCI packets travel over TCP as over a UART (H4: a packet type byte, then the packet; Core 5.4
Vol 4 Part A §2).  One host per port at a time; a second connection is closed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence

from bumble.transport.common import PacketParser

from pairkit.pairing.errors import ConfigError, TransportError

from .ble.virtual import VirtualController, VirtualRadio

__all__ = ["RadioServer", "main", "serve_radio", "start_radio"]

logger = logging.getLogger(__name__)


class _Port:
    """One TCP port and the controller behind it."""

    def __init__(self, controller: VirtualController) -> None:
        self.controller = controller
        self.client: _HciConnection | None = None
        self.server: asyncio.Server | None = None

    @property
    def number(self) -> int | None:
        """The bound TCP port (what a person typed, or the one port 0 picked)."""
        if self.server is None or not self.server.sockets:
            return None
        return int(self.server.sockets[0].getsockname()[1])


class _HciConnection(asyncio.Protocol):
    """A bumble host's HCI over one TCP connection: bytes in are parsed into packets for the
    controller; the controller's packets are written back."""

    def __init__(self, port: _Port) -> None:
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._parser = PacketParser(port.controller)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._port.client is not None:
            logger.warning("radio: refused a second host on port %s (one host per port)",
                           self._port.number)
            transport.close()
            return
        self._transport = transport
        self._port.client = self
        self._port.controller.host = self

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._port.client is not self:
            return
        self._port.client = None
        self._port.controller.host = None
        # The host process is gone: its radio is as good as switched off.
        self._port.controller.reset_link_state()
        self._transport = None

    def on_packet(self, packet: bytes) -> None:
        """Packet sink of the controller (controller -> host)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(packet)


class RadioServer:
    """A running radio: ``ports`` are the bound TCP ports, in the order asked for."""

    def __init__(self, radio: VirtualRadio, host: str, ports: list[_Port]) -> None:
        self.radio = radio
        self.host = host
        self._ports = ports

    @property
    def ports(self) -> list[int]:
        return [p.server.sockets[0].getsockname()[1] for p in self._ports if p.server]

    @property
    def transport_names(self) -> list[str]:
        """What each process passes as ``--transport``: ``bumble:tcp-client:HOST:PORT``."""
        return [f"bumble:tcp-client:{self.host}:{port}" for port in self.ports]

    async def unplug(self, index: int) -> None:
        """Stop serving the ``index``-th port and hang up on its host, as if that dongle were
        pulled out: the host process sees its controller lost, and the controller's peers see
        their connections time out."""
        port = self._ports[index]
        if port.server is not None:
            port.server.close()
            with contextlib.suppress(Exception):
                await port.server.wait_closed()
        client = port.client
        if client is not None and client._transport is not None:
            client._transport.close()
            client.connection_lost(None)

    async def plug(self, index: int, number: int) -> None:
        """Serve the ``index``-th port again on TCP port ``number`` (the dongle is back)."""
        port = self._ports[index]
        try:
            port.server = await asyncio.get_running_loop().create_server(
                lambda: _HciConnection(port), host=self.host, port=number
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {self.host}: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        for port in self._ports:
            if port.server is not None:
                port.server.close()
            if port.client is not None and port.client._transport is not None:
                port.client._transport.close()
            self.radio.unplug(port.controller)
        for port in self._ports:
            if port.server is not None:
                with contextlib.suppress(Exception):
                    await port.server.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self.close()

    async def __aenter__(self) -> RadioServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_radio(
    ports: Sequence[int], host: str = "127.0.0.1", *, radio: VirtualRadio | None = None
) -> RadioServer:
    """Start serving one linked virtual controller per port (0 picks a free port)."""
    ports = list(ports)
    if len(ports) < 2:
        raise ConfigError("a radio needs at least two ports (one per process)")
    if any(not 0 <= p <= 65535 for p in ports):
        raise ConfigError("ports must be 0 to 65535")
    fixed = [p for p in ports if p]
    if len(fixed) != len(set(fixed)):
        raise ConfigError("each port may be given once")
    radio = radio or VirtualRadio()
    entries = [_Port(radio.create_controller(f"radio-{i + 1}")) for i in range(len(ports))]
    server = RadioServer(radio, host, entries)
    loop = asyncio.get_running_loop()
    try:
        for entry, number in zip(entries, ports, strict=True):
            entry.server = await loop.create_server(
                lambda entry=entry: _HciConnection(entry), host=host, port=number
            )
    except OSError as exc:
        await server.close()
        raise TransportError(f"cannot listen on {host}: {exc.strerror or exc}") from exc
    return server


async def serve_radio(
    ports: list[int],
    host: str = "127.0.0.1",
    *,
    ready: Callable[[list[int]], None] | None = None,
    announce: Callable[[list[str]], None] | None = None,
) -> None:
    """Run a radio until cancelled (for ``pairkit radio``).

    Once listening it prints one line, ``radio: bumble:tcp-client:HOST:P1 ...``, naming each
    bound port's transport in the order given (or gives those names to ``announce``), and
    calls ``ready`` with the bound ports (port 0 picks a free one).  Code that needs the ports
    without a task can use :func:`start_radio`.
    """
    server = await start_radio(ports, host)
    if announce is not None:
        announce(list(server.transport_names))
    else:
        print("radio: " + " ".join(server.transport_names), flush=True)
    if ready is not None:
        ready(server.ports)
    await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pairkit radio",
        description="Linked virtual BLE controllers, one TCP port per process.",
    )
    parser.add_argument("--ports", type=int, nargs="+", required=True, help="TCP ports (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_radio(args.ports, args.host))
    except KeyboardInterrupt:
        return 0
    except (ConfigError, TransportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
