"""A link's pace: 2M PHY and a short connection interval while a transfer runs, relaxed after.

A BLE connection's throughput is set by its connection interval (how often the two radios meet)
and its PHY (1 or 2 Msym/s); an idle connection is best left slow, to spare power and the 2.4 GHz
band a Raspberry Pi shares with Wi-Fi.  The central chooses both at connect time, and bleak
centrals cannot ask for anything else: BlueZ and CoreBluetooth have no API for it (WinRT has a
connection-parameter preference bleak does not expose).  So pairkit's host, the *peripheral*,
asks, as accessories do:

* once a link has sent ``burst_bytes`` without a pause of ``relax_after`` seconds (a file, a
  long listing: pairing messages stay below it), the host asks for the fast connection
  parameters (``fast_interval_ms``, with the Connection Parameters Request procedure, Core 5.4
  Vol 6 Part B §5.1.7, through HCI LE Connection Update, Vol 4 Part E §7.8.18; falling back to
  the L2CAP Connection Parameter Update Request, Vol 3 Part A §4.20, when the central's link
  layer lacks the procedure), then for the 2M PHY (PHY Update procedure, Vol 6 Part B §5.1.10,
  through HCI LE Set PHY, Vol 4 Part E §7.8.49);
* once the link has sent nothing for ``relax_after`` seconds, it asks for the relaxed
  parameters, and for the 1M PHY back if it was the one that moved the link to 2M (a link the
  central had put on 2M itself stays there).

The defaults fit every central pairkit knows: 15 ms and 30-50 ms intervals, no peripheral
latency, a 4 s supervision timeout are within Apple's Accessory Design Guidelines (interval min
a multiple of 15 ms, min + 15 ms <= max unless max is 15 ms, timeout 2-6 s) and Linux's checks.

The requests are best effort and never hold a transfer back: they run beside it, each with a
deadline (``request_timeout``), and a refusal (the central's Negative Reply, an L2CAP reject,
a PHY left at 1M, no answer in time) is remembered for the connection, which is never asked
again.  :class:`PacePolicy` is the decision, with no I/O and no clock (``now`` is passed in);
:class:`Pacer` carries it out on a bumble connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from bumble import hci
from bumble.core import BaseBumbleError
from bumble.device import Connection

from pairkit.pairing.errors import ConfigError

__all__ = ["PaceConfig", "PacePolicy", "Pacer", "Speed"]

logger = logging.getLogger(__name__)

#: HCI statuses saying the central's link layer (or ours) lacks the Connection Parameters
#: Request procedure: then the L2CAP request is the way (Core 5.4 Vol 3 Part A §4.20).
_USE_L2CAP = frozenset({
    hci.HCI_ErrorCode.UNKNOWN_HCI_COMMAND_ERROR,
    hci.HCI_ErrorCode.UNSUPPORTED_FEATURE_OR_PARAMETER_VALUE_ERROR,
    hci.HCI_ErrorCode.UNSUPPORTED_REMOTE_FEATURE_ERROR,
    hci.HCI_ErrorCode.UNKNOWN_LMP_PDU_ERROR,
})


class Speed(enum.Enum):
    """What a link wants from its connection."""

    RELAXED = "relaxed"
    FAST = "fast"


def _check_interval(name: str, interval: tuple[float, float]) -> None:
    low, high = interval
    if not 7.5 <= low <= high <= 4000.0:
        raise ConfigError(f"{name} must be (min, max) with 7.5 <= min <= max <= 4000 ms")
    for value in (low, high):
        if abs(value / 1.25 - round(value / 1.25)) > 1e-9:
            raise ConfigError(f"{name}: connection intervals are multiples of 1.25 ms")


@dataclass(frozen=True)
class PaceConfig:
    """When a host link goes fast and what it asks for (module docstring); validated when built."""

    #: Bytes sent without a pause of ``relax_after`` that make a transfer.
    burst_bytes: int = 8192
    #: Seconds without sending after which the link relaxes.
    relax_after: float = 1.0
    #: Connection interval (min, max) in ms while fast, and after.
    fast_interval_ms: tuple[float, float] = (15.0, 15.0)
    relaxed_interval_ms: tuple[float, float] = (30.0, 50.0)
    peripheral_latency: int = 0
    supervision_timeout_ms: float = 4000.0
    #: Ask for the 2M PHY while fast (and 1M after).
    phy_2m: bool = True
    #: Deadline of each request.
    request_timeout: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.burst_bytes, bool) or not isinstance(self.burst_bytes, int) or (
            self.burst_bytes < 1
        ):
            raise ConfigError("burst_bytes must be a positive integer")
        if not self.relax_after > 0 or not self.request_timeout > 0:
            raise ConfigError("relax_after and request_timeout must be positive")
        _check_interval("fast_interval_ms", self.fast_interval_ms)
        _check_interval("relaxed_interval_ms", self.relaxed_interval_ms)
        if not 0 <= self.peripheral_latency <= 499:
            raise ConfigError("peripheral_latency must be 0 to 499")
        # Core 5.4 Vol 6 Part B §4.5.2: 100 ms to 32 s, longer than (1 + latency) * interval * 2.
        slowest = max(self.fast_interval_ms[1], self.relaxed_interval_ms[1])
        if not 100.0 <= self.supervision_timeout_ms <= 32000.0 or (
            self.supervision_timeout_ms <= (1 + self.peripheral_latency) * slowest * 2
        ):
            raise ConfigError(
                "supervision_timeout_ms must be 100 to 32000 and more than "
                "(1 + peripheral_latency) * the longest interval * 2"
            )


@dataclass
class PacePolicy:
    """Which :class:`Speed` a link wants, from what it sent and when (no I/O, no clock)."""

    config: PaceConfig
    want: Speed = Speed.RELAXED
    _burst: int = 0
    _last_sent: float | None = None

    def sent(self, nbytes: int, now: float) -> Speed:
        """``nbytes`` left at ``now``; what the link wants now."""
        if self._last_sent is not None and now - self._last_sent >= self.config.relax_after:
            self._burst = 0
        self._burst += nbytes
        self._last_sent = now
        if self._burst >= self.config.burst_bytes:
            self.want = Speed.FAST
        return self.want

    def deadline(self) -> float | None:
        """When the link relaxes if nothing more is sent (None: it is relaxed)."""
        if self.want is Speed.FAST and self._last_sent is not None:
            return self._last_sent + self.config.relax_after
        return None

    def on_timeout(self, now: float) -> Speed:
        """Called at or after :meth:`deadline`; what the link wants now."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            self.want = Speed.RELAXED
            self._burst = 0
        return self.want


@dataclass
class PaceStats:
    """What a :class:`Pacer` asked for and got (for tests, benches and diagnostics)."""

    fast: int = 0  #: times the link went fast
    relaxed: int = 0  #: times it relaxed
    interval_requests: int = 0
    phy_requests: int = 0
    #: what the central refused (never asked again on this connection): "interval", "phy"
    refused: set[str] = field(default_factory=set)
    phy: int = hci.Phy.LE_1M  #: the PHY as last reported


class Pacer:
    """Carries out a :class:`PacePolicy` on one bumble connection (module docstring).

    The link calls :meth:`sent` after each message; requests run in one background task that
    moves the connection towards what the policy wants, one request at a time.  :meth:`stop`
    ends it (the link is closing).
    """

    def __init__(self, connection: Connection, config: PaceConfig) -> None:
        self._connection = connection
        self._config = config
        self._policy = PacePolicy(config)
        self._loop = asyncio.get_running_loop()
        self._applied = Speed.RELAXED
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._moved_phy = False  # this pacer took the link from 1M to 2M
        self.stats = PaceStats()

    @property
    def want(self) -> Speed:
        return self._policy.want

    @property
    def applied(self) -> Speed:
        """The speed last asked for (whether or not the central agreed)."""
        return self._applied

    @property
    def idle(self) -> bool:
        """No request is running."""
        return self._task is None or self._task.done()

    def sent(self, nbytes: int) -> None:
        if self._stopped:
            return
        self._policy.sent(nbytes, self._loop.time())
        self._wake()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- internals -----------------------------------------------------------------------

    def _wake(self) -> None:
        if self._policy.want is not self._applied and self.idle:
            self._task = self._loop.create_task(self._converge())
        if self._timer is None:
            deadline = self._policy.deadline()
            if deadline is not None:
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._policy.on_timeout(self._loop.time())
        self._wake()

    def _gone(self) -> bool:
        connection = self._connection
        return self._stopped or connection.handle not in connection.device.connections

    async def _converge(self) -> None:
        while not self._gone() and self._policy.want is not self._applied:
            want = self._policy.want
            if want is Speed.FAST:
                self.stats.fast += 1
                await self._interval(self._config.fast_interval_ms)
                if await self._current_phy() != hci.Phy.LE_2M:
                    self._moved_phy = await self._phy(hci.Phy.LE_2M)
            else:
                self.stats.relaxed += 1
                await self._interval(self._config.relaxed_interval_ms)
                if self._moved_phy:
                    self._moved_phy = False
                    await self._phy(hci.Phy.LE_1M)
            self._applied = want

    async def _interval(self, interval: tuple[float, float]) -> None:
        if "interval" in self.stats.refused or self._gone():
            return
        config = self._config
        args = (interval[0], interval[1], config.peripheral_latency,
                config.supervision_timeout_ms)
        self.stats.interval_requests += 1
        try:
            try:
                await asyncio.wait_for(
                    self._connection.update_parameters(*args), config.request_timeout
                )
            except hci.HCI_Error as exc:
                if exc.error_code not in _USE_L2CAP:
                    raise
                await asyncio.wait_for(
                    self._connection.update_parameters(*args, use_l2cap=True),
                    config.request_timeout,
                )
        except (BaseBumbleError, TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and self._stopped:
                raise
            self._refused("interval", exc)

    async def _current_phy(self) -> int:
        """The PHY the connection uses (LE Read PHY), 1M if the controller cannot say."""
        if self._gone() or not self._config.phy_2m or "phy" in self.stats.refused:
            return self.stats.phy
        try:
            got = await asyncio.wait_for(self._connection.get_phy(), self._config.request_timeout)
        except (BaseBumbleError, TimeoutError):
            return self.stats.phy
        self.stats.phy = int(got.tx_phy) if got.tx_phy == got.rx_phy else hci.Phy.LE_1M
        return self.stats.phy

    async def _phy(self, phy: hci.Phy) -> bool:
        """Ask for ``phy`` both ways; True if the connection moved to it."""
        if not self._config.phy_2m or "phy" in self.stats.refused or self._gone():
            return False
        connection = self._connection
        host = connection.device.host
        if not host.supports_command(hci.HCI_LE_SET_PHY_COMMAND) or not (
            host.supports_le_features(hci.LeFeatureMask.LE_2M_PHY)
        ):
            self.stats.refused.add("phy")
            return False
        done: asyncio.Future[Any] = self._loop.create_future()

        def on_update(update: Any) -> None:
            if not done.done():
                done.set_result(update)

        def on_failure(status: int) -> None:
            if not done.done():
                done.set_exception(hci.HCI_Error(status))

        connection.on(connection.EVENT_CONNECTION_PHY_UPDATE, on_update)
        connection.on(connection.EVENT_CONNECTION_PHY_UPDATE_FAILURE, on_failure)
        self.stats.phy_requests += 1
        try:
            async with asyncio.timeout(self._config.request_timeout):
                await connection.set_phy(tx_phys=[phy], rx_phys=[phy])
                update = await done
            self.stats.phy = int(update.tx_phy)
            if update.tx_phy != phy or update.rx_phy != phy:
                self._refused("phy", None)
                return False
            return True
        except (BaseBumbleError, TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and self._stopped:
                raise
            self._refused("phy", exc)
            return False
        finally:
            connection.remove_listener(connection.EVENT_CONNECTION_PHY_UPDATE, on_update)
            connection.remove_listener(connection.EVENT_CONNECTION_PHY_UPDATE_FAILURE, on_failure)
            if done.done() and not done.cancelled():
                with contextlib.suppress(BaseException):
                    done.exception()

    def _refused(self, what: str, exc: BaseException | None) -> None:
        # Never asked again on this connection: a central that said no once (or did not
        # answer) says no again, and asking over and over costs it power.
        self.stats.refused.add(what)
        logger.debug("the central refused the %s request: %s", what, type(exc).__name__)
