"""A :class:`~pairing.channel.SecureChannel` run over a link with asyncio (DESIGN.md step 5).

After a pairing, both sides wrap their link in a :class:`SecureLink` built from the
:class:`~pairing.methods.Session`; whole application messages go in and come out, encrypted,
authenticated, fragmented to the link's MTU and rekeyed as the channel's config says.  Every
receive has a deadline.

:func:`confirm` is the first exchange on every new secure link: each side sends a "ready" record
and waits for the peer's.  Receiving it proves the peer derived the same keys (explicit key
confirmation for every method, including the ones whose handshake ends with a flight from the
other side), so neither side stores a peer before both hold the same session.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from .driver import LinkLike
from .pairing import framing, keyschedule
from .pairing.channel import HEADER_SIZE, TAG_SIZE, ChannelConfig, SecureChannel
from .pairing.crypto import same
from .pairing.errors import AuthenticationError, LinkClosedError, PairingError, PairingTimeout
from .pairing.methods import Session

if TYPE_CHECKING:
    from .pairing.cpns import LinkSession

READY = keyschedule.READY
DEFAULT_TIMEOUT = 30.0


class SecureLink:
    """Whole messages over a secure channel on ``link``, keyed by a pairing's
    :class:`~pairing.methods.Session` or a CPNS link session (:class:`~pairing.cpns.LinkSession`,
    the PNE-gateway link of a personal network)."""

    def __init__(
        self,
        link: LinkLike,
        session: Session | LinkSession,
        *,
        rekey_after: int = 2**20,
        max_record: int = 64 * 1024,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.link = link
        self.session = session
        self.timeout = timeout
        self.channel = SecureChannel(
            ChannelConfig(mtu=link.mtu, rekey_after=rekey_after, max_record=max_record),
            send_key=session.send_key,
            recv_key=session.recv_key,
        )
        self._send_lock = asyncio.Lock()
        #: a record's send was cut part way (a timeout, a cancel): the fragments sent so far
        #: are on the link, so nothing more may follow them (atk20c, session 20)
        self._cut = False
        #: why: the peer stopped reading (the text of the send's timeout), or None (a cancel,
        #: the link failing)
        self._stalled: str | None = None

    @property
    def max_message(self) -> int:
        return self.channel.config.max_record

    def fitting(self, size: int) -> int:
        """The plaintext size, at most ``size``, that carries the most bytes per link message.

        A record whose last fragment holds a few bytes costs a whole link message for them (on
        BLE, a packet on the air): a 16 KiB file chunk at MTU 512 is 33 fragments, the last
        nearly empty.  One fragment fewer, filled, carries more per fragment; this says which
        of the two sizes does (the link's MTU as it is now).
        """
        mtu = self.link.mtu
        count = framing.fragment_count(HEADER_SIZE + size + TAG_SIZE, mtu)
        if count == 1:
            return size
        # The largest record in count - 1 fragments (the length prefix can only shrink).
        length = len(framing.encode_leb128(HEADER_SIZE + size + TAG_SIZE))
        fewer = (mtu - 1 - length) + (count - 2) * (mtu - 1) - HEADER_SIZE - TAG_SIZE
        if fewer > 0 and fewer * count > size * (count - 1):
            return fewer
        return size

    async def send(self, data: bytes, timeout: float | None = None) -> None:
        """Send one message (at most :attr:`max_message` bytes), fragmented to the link's MTU
        as it is now (it can grow after connect: a late ATT MTU exchange);
        :class:`PairingTimeout` when the peer does not take it within ``timeout`` seconds
        (default: :attr:`timeout`), the link's flow control holding it back: a peer that stops
        reading is dropped, not waited on (issue 17).

        A send cut part way (its timeout, the task cancelled, the link failing) leaves part of
        a record on the link, and its sequence number spent: any record after it would reach
        the peer as a framing or authentication error.  So the link is then done with: every
        later send raises the same :class:`PairingTimeout` after a timeout (the peer still
        reads nothing: that is what a caller must hear, not a link closed), else
        :class:`LinkClosedError`; and :meth:`close` sends no CLOSE record before it closes the
        link (the peer reads the end of the link)."""
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                async with self._send_lock:
                    self._check_not_cut()
                    mtu = self.link.mtu
                    if mtu != self.channel.config.mtu:
                        self.channel.set_mtu(mtu)
                    fragments = self.channel.seal(data)
                    try:
                        for fragment in fragments:
                            await self.link.send(fragment)
                    except BaseException:
                        self._cut = True
                        raise
        except TimeoutError:
            # Not closed here: the caller learns of the stall from this error, and closes
            # (closing first had the driver, which reads the link meanwhile, report a closed
            # link instead: the host said nothing of a peer that stopped reading).
            stalled = f"the peer stopped reading for {wait:.0f} s"
            if self._cut and self._stalled is None:
                self._stalled = stalled
            raise PairingTimeout(stalled) from None

    def _check_not_cut(self) -> None:
        if self._stalled is not None:
            raise PairingTimeout(self._stalled)
        if self._cut:
            raise LinkClosedError(
                "the secure link is closed: an earlier message was cut part way through"
            )

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next message; :class:`PairingTimeout` if none comes within ``timeout``."""
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                while True:
                    message = self.channel.open(await self.link.recv())
                    if message is not None:
                        return message
        except TimeoutError:
            raise PairingTimeout(f"the peer sent nothing for {wait:.0f} s") from None

    def request_rekey(self) -> None:
        self.channel.request_rekey()

    async def close(self) -> None:
        """Send an authenticated close, then close the link (idempotent, never raises)."""
        with contextlib.suppress(PairingError, OSError, TimeoutError):
            async with self._send_lock:
                if not self.channel.closed and not self._cut:
                    for fragment in self.channel.seal_close():
                        await asyncio.wait_for(self.link.send(fragment), 2.0)
        with contextlib.suppress(PairingError, OSError):
            await self.link.close()  # type: ignore[attr-defined]


async def confirm(
    slink: SecureLink,
    timeout: float | None = None,
    *,
    transcript: bytes = b"",
    first: bool | None = None,
) -> None:
    """Both sides send READY and wait for the peer's (see the module docstring).

    ``transcript`` is the hash of every message the two sides exchanged on the link before
    the secure channel (:meth:`pairkit.driver.MessagePipe.transcript`): each side's READY
    carries its own, so a byte changed anywhere on the way, in a field no method checks
    itself, ends both sides with an error before anything is stored (docs/security.md,
    rule 6).

    ``first`` orders the two records: the host (``True``) sends its READY and waits; the guest
    (``False``) sends its own only after checking the host's.  So a READY changed on the way
    stops both sides: the guest never answers a bad one, and the host stores nothing until the
    guest's arrives.  ``None`` sends and waits at once (both sides must use the same form).
    """
    if first is not False:
        await slink.send(READY + transcript)
    try:
        message = await slink.recv(timeout)
    except LinkClosedError:
        raise LinkClosedError("the peer left before confirming the session") from None
    _check_ready(message, transcript)
    if first is False:
        await slink.send(READY + transcript)


def _check_ready(message: bytes, transcript: bytes) -> None:
    if not message.startswith(READY):
        raise AuthenticationError("the peer did not confirm the session")
    if not same(message[len(READY):], transcript):
        raise AuthenticationError(
            "the two sides saw different messages before the session: something on the way "
            "changed them"
        )
