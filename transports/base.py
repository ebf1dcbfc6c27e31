"""The shapes every pairkit transport offers (DESIGN.md "Links").

A transport is a thin adapter: it moves opaque byte messages and hello payloads; it knows
nothing of handshakes.  Every transport passes the same conformance suite
(``tests/transport_conformance.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pairkit.pairing.errors import ErrorCode, LinkClosedError


@runtime_checkable
class Link(Protocol):
    """A reliable, ordered, message-oriented, duplex link.

    * ``send(data)`` sends one message of at most ``mtu`` bytes (a longer one raises
      ``ValueError``: fragmenting is the caller's job, see ``pairing.framing``).  It waits while
      the peer is not reading (backpressure) and raises ``LinkClosedError`` once the link is
      closed from either side.
    * ``recv()`` returns the next message, in order; after the peer closes, it raises
      ``LinkClosedError`` once everything sent before the close has been returned.
    * ``close()`` is idempotent; the peer's ``recv`` sees it.
    """

    @property
    def mtu(self) -> int:
        """Largest message ``send`` accepts, in bytes (20 to 65535)."""
        ...

    @property
    def peer(self) -> str:
        """The peer's address as this transport names it (BLE address, ``host:port``...)."""
        ...

    @property
    def encrypted(self) -> bool:
        """True when the link layer already encrypts with keys from an LE Secure Connections
        pairing (legacy pairing does not count); method b needs it."""
        ...

    @property
    def mitm_protected(self) -> bool:
        """True when that link-layer pairing was protected against a man in the middle
        (numeric comparison, passkey, OOB); only then does ``clear`` authenticate the peer."""
        ...

    @property
    def closed(self) -> bool: ...

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self) -> None: ...


class ControllerLostError(LinkClosedError):
    """This device's radio went away: a Bluetooth controller unplugged, reset or switched off,
    or a ``pairkit radio`` that stopped.  Every link and wait on it ends with this error; the
    transport can try to open the controller again (``reopen``).  Its code is NOT_FOUND: to a
    script, a radio that is gone is a radio that is not there (exit code 6)."""

    code = ErrorCode.NOT_FOUND


@dataclass(frozen=True)
class Sighting:
    """One hello heard by a scanner."""

    address: str
    payload: bytes
    rssi: int | None = None
    name: str | None = None


@runtime_checkable
class Advertiser(Protocol):
    """Broadcasts a hello payload of bounded size (``max_payload`` bytes)."""

    @property
    def max_payload(self) -> int: ...

    async def start_advertising(self, payload: bytes) -> None: ...

    async def stop_advertising(self) -> None: ...


@runtime_checkable
class Scanner(Protocol):
    """Listens for hello payloads."""

    def scan(self, timeout: float) -> AsyncIterator[Sighting]:
        """Yield hellos heard until ``timeout`` seconds pass (duplicates allowed)."""
        ...


@runtime_checkable
class Listener(Protocol):
    """The host side: accepts incoming links."""

    async def accept(self, timeout: float | None = None) -> Link: ...

    async def close(self) -> None: ...


@runtime_checkable
class Connector(Protocol):
    """The guest side: opens a link to an address."""

    async def connect(self, address: str, timeout: float) -> Link: ...


async def sightings_until(
    queue: asyncio.Queue[Sighting | None], deadline: float
) -> AsyncIterator[Sighting]:
    """What a scanner's callback queued, until ``deadline`` (loop time) or a ``None`` (closed)."""
    loop = asyncio.get_running_loop()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            sighting = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            return
        if sighting is None:
            return  # the transport closed
        yield sighting
