"""Deadlines and error translation around bumble calls.

bumble reports failures as its own exceptions (HCI, ATT, L2CAP and SMP protocol errors, its own
``TimeoutError``), and aborts a wait on disconnection by *cancelling* it.  Nothing of that may
reach a pairkit caller: :func:`guarded` runs one bumble awaitable under a deadline and, when
given one, a "connection lost" future, and turns every outcome into a result or a pairkit error
(:class:`TransportError`, :class:`PairingTimeout` or :class:`LinkClosedError`) with a readable
text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from bumble import core, hci
from bumble.transport.common import TransportLostError

from pairkit.pairing.errors import LinkClosedError, PairingError, PairingTimeout, TransportError

__all__ = [
    "RETRY_STATUSES",
    "abandon",
    "connect_failure_status",
    "consume",
    "describe_connect_failure",
    "describe_reason",
    "guarded",
    "retry_pause",
    "translate",
]

_T = TypeVar("_T")

_REASONS = {
    hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR: "the peer closed the connection",
    hci.HCI_ErrorCode.CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR: "this side closed the connection",
    hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR: "the peer went out of range (connection timeout)",
    hci.HCI_ErrorCode.REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR: (
        "the peer's radio was switched off"
    ),
    # No controller ends a connection with "success": bumble does, for every connection, when
    # its HCI transport is lost (Host.on_transport_lost, Device.on_flush).
    hci.HCI_SUCCESS: "this side's Bluetooth controller was lost",
    hci.HCI_ErrorCode.CONNECTION_TERMINATED_DUE_TO_MIC_FAILURE_ERROR: (
        "the link-layer encryption check failed (MIC failure)"
    ),
}


def _humanise(name: str) -> str:
    text = name.lower()
    for prefix in ("hci_", "att_", "smp_", "l2cap_"):
        text = text.removeprefix(prefix)
    text = text.removesuffix("_error")
    return text.replace("_", " ")


def describe_reason(reason: int) -> str:
    """Plain words for an HCI disconnection reason (Core Vol 1 Part F)."""
    known = _REASONS.get(reason)  # type: ignore[call-overload]
    if known is not None:
        return known
    return f"the connection ended ({_humanise(hci.HCI_Constant.error_name(reason))})"


def translate(exc: BaseException, what: str) -> PairingError:
    """The pairkit error for a bumble (or OS) failure while doing ``what``."""
    if isinstance(exc, PairingError):
        return exc
    if isinstance(exc, core.TimeoutError | core.CommandTimeoutError | TimeoutError):
        return PairingTimeout(f"{what}: no answer in time")
    if isinstance(exc, TransportLostError):
        return TransportError(f"{what}: the connection to the Bluetooth controller was lost")
    if isinstance(exc, core.BaseError):
        namespace = exc.error_namespace or ""
        name = _humanise(exc.error_name) if exc.error_name else f"code 0x{exc.error_code or 0:X}"
        if namespace == "smp":
            return TransportError(f"{what}: link-layer pairing failed ({name})")
        if namespace == "att":
            return TransportError(f"{what}: the peer's GATT server refused ({name})")
        if namespace == "l2cap":
            return TransportError(f"{what}: the peer refused the L2CAP channel ({name})")
        return TransportError(f"{what}: the Bluetooth controller reported {name}")
    if isinstance(exc, core.BaseBumbleError):
        detail = str(exc) or type(exc).__name__
        return TransportError(f"{what} failed: {detail}")
    if isinstance(exc, OSError):
        return TransportError(f"{what}: {exc.strerror or exc}")
    detail = str(exc).strip()
    return TransportError(f"{what} failed: {detail}" if detail else f"{what} failed")


def consume(task: asyncio.Future[Any]) -> None:
    """Take the outcome of a task nobody waits for (a done callback), so that a failure is
    not reported as never retrieved."""
    if not task.cancelled():
        task.exception()


def abandon(task: asyncio.Future[Any]) -> None:
    """Call off an operation nobody will wait for: cancel it, and take whatever it ends with
    (a failure while it unwinds is nobody's to report)."""
    task.cancel()
    task.add_done_callback(consume)


async def guarded(
    awaitable: Awaitable[_T],
    *,
    what: str,
    timeout: float | None,
    lost: asyncio.Future[str] | None = None,
) -> _T:
    """Await a bumble operation; its outcome, or a pairkit error.

    * the operation fails: :func:`translate`;
    * ``timeout`` seconds pass: the operation is cancelled, :class:`PairingTimeout`;
    * ``lost`` completes first (its result says why), or bumble cancels the operation itself
      (it does so on disconnection): :class:`LinkClosedError`;
    * the caller is cancelled: the operation is cancelled too and the cancellation propagates.
    """
    task = asyncio.ensure_future(awaitable)
    waiters: set[asyncio.Future[object]] = {task}  # type: ignore[arg-type]
    if lost is not None:
        waiters.add(lost)  # type: ignore[arg-type]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        abandon(task)
        raise
    if task in done:
        try:
            return task.result()
        except asyncio.CancelledError:
            reason = (
                lost.result() if lost is not None and lost.done() else "the connection was lost"
            )
            raise LinkClosedError(f"{what}: {reason}") from None
        except Exception as exc:
            raise translate(exc, what) from exc
    abandon(task)
    if lost is not None and lost.done():
        raise LinkClosedError(f"{what}: {lost.result()}")
    raise PairingTimeout(f"{what}: no answer within {timeout:g} s")


#: HCI statuses of a failed connection attempt that another attempt may cure (Core 5.4 Vol 1
#: Part F): what a real radio says under interference, a busy controller or a peer that moved.
RETRY_STATUSES: dict[int, str] = {
    0x3E: "the connection failed to be established (interference, or the host moved away)",
    0x08: "the connection timed out",
    0x22: "the link layer stopped answering",
    0x0D: "the host's controller had no room for another connection",
    0x3A: "the controller was busy",
    0x1F: "the controller gave no reason",
}
_RETRY_BASE = 0.25
_RETRY_MAX = 2.0


def connect_failure_status(exc: BaseException) -> int | None:
    """The HCI status of a connection attempt that failed in a way a retry may cure, or None
    (``exc`` as :func:`guarded` raises it: the bumble error is its cause)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    code = getattr(cause, "error_code", None)
    if getattr(cause, "error_namespace", "hci") not in ("hci", None):
        return None
    return int(code) if isinstance(code, int) and code in RETRY_STATUSES else None


def retry_pause(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): 0.25 s doubling to 2 s,
    the shape of bleak-retry-connector's backoff, which the bleak path uses."""
    return min(_RETRY_MAX, _RETRY_BASE * 2 ** (attempt - 1))


def describe_connect_failure(status: int) -> str:
    """What a person can do about a failed connection attempt with HCI ``status``."""
    what = RETRY_STATUSES.get(status, f"HCI status 0x{status:02X}")
    return f"{what}; move closer to the host, or try again"
