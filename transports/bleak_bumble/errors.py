"""bumble's failures as bleak's exceptions, with texts a person can act on.

bleak's contract (bleak 3.x ``bleak/__init__.py`` docstrings): an ATT Error Response becomes
:class:`~bleak.exc.BleakGATTProtocolError` carrying the ATT error code (Core 5.4 Vol 3 Part F
§3.4.1.1); a radio that cannot be used becomes
:class:`~bleak.exc.BleakBluetoothNotAvailableError` with a reason; a timeout is
:class:`TimeoutError`; everything else is a :class:`~bleak.exc.BleakError`.  No bumble exception
leaves this package.

:func:`describe_open_error` is the one place that turns "the controller could not be opened"
(no device, no permission, busy, nothing listening) into plain words; pairkit's ``bumble:``
transport can use it too.
"""

from __future__ import annotations

from typing import Any

from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakError,
    BleakGATTProtocolError,
)
from bumble import core, hci
from bumble.att import ATT_Error
from bumble.transport.common import TransportLostError

from pairkit.transports.ble.open_errors import describe_open_failure

__all__ = ["describe_open_error", "open_error", "to_bleak_error"]

Reason = BleakBluetoothNotAvailableReason

def _humanise(name: str) -> str:
    text = name.lower()
    for prefix in ("hci_", "att_", "smp_", "l2cap_"):
        text = text.removeprefix(prefix)
    return text.removesuffix("_error").replace("_", " ")


_REASONS: dict[str, Reason] = {
    "missing": Reason.NO_BLUETOOTH,
    "denied": Reason.DENIED_BY_SYSTEM,
    "busy": Reason.UNKNOWN,
}


def describe_open_error(exc: BaseException, spec: str) -> tuple[str, Reason | None]:
    """Plain words for a failure to open the bumble HCI transport ``spec``, and a reason.

    The words are :func:`pairkit.transports.ble.open_errors.describe_open_failure`'s (shared with
    the ``bumble:`` transport); the reason is None when the radio is not "unavailable" but
    failed otherwise (a plain :class:`BleakError`).
    """
    text, kind = describe_open_failure(exc, spec)
    return text, _REASONS.get(kind) if kind is not None else None


def open_error(exc: BaseException, spec: str) -> BleakError:
    """The bleak exception for a failure to open ``spec`` (see :func:`describe_open_error`)."""
    text, reason = describe_open_error(exc, spec)
    if reason is None:
        return BleakError(text)
    return BleakBluetoothNotAvailableError(text, reason)


def to_bleak_error(exc: BaseException, what: str) -> BaseException:
    """The exception bleak's API promises for a bumble failure while doing ``what``.

    ATT errors keep their code (:class:`BleakGATTProtocolError`); timeouts stay
    :class:`TimeoutError` (bleak-retry-connector counts those as timeouts); the rest become
    :class:`BleakError` with a readable text.
    """
    if isinstance(exc, BleakError | TimeoutError):
        return exc
    if isinstance(exc, ATT_Error):
        return BleakGATTProtocolError(int(exc.error_code))
    if isinstance(exc, core.TimeoutError | core.CommandTimeoutError):
        return TimeoutError(f"{what}: no answer in time")
    if isinstance(exc, TransportLostError):
        return BleakError(f"{what}: the connection to the Bluetooth controller was lost")
    if isinstance(exc, core.BaseError):
        namespace = exc.error_namespace or ""
        name = _humanise(exc.error_name) if exc.error_name else f"code 0x{exc.error_code or 0:X}"
        if namespace == "smp":
            return BleakError(f"{what}: pairing failed ({name})")
        if namespace == "hci" and exc.error_code == hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR:
            return BleakError(f"{what}: the peer went out of range (connection timeout)")
        return BleakError(f"{what}: the Bluetooth controller reported {name}")
    if isinstance(exc, core.BaseBumbleError | OSError):
        detail = str(exc).strip() or type(exc).__name__
        return BleakError(f"{what} failed: {detail}")
    return exc


def error_detail(exc: Any) -> str:
    """A short text for logs: the exception's class and message, never a traceback."""
    return f"{type(exc).__name__}: {exc}"
