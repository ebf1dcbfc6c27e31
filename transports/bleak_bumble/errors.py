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

import errno
import os
import sys
from typing import Any

from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakError,
    BleakGATTProtocolError,
)
from bumble import core, hci
from bumble.att import ATT_Error
from bumble.transport.common import TransportInitError, TransportLostError

__all__ = ["describe_open_error", "open_error", "to_bleak_error"]

Reason = BleakBluetoothNotAvailableReason

_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}
_BUSY_ERRNOS = {errno.EBUSY, errno.EALREADY}
_MISSING_ERRNOS = {errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EADDRNOTAVAIL}


def _humanise(name: str) -> str:
    text = name.lower()
    for prefix in ("hci_", "att_", "smp_", "l2cap_"):
        text = text.removeprefix(prefix)
    return text.removesuffix("_error").replace("_", " ")


def _usb_kind(exc: BaseException) -> str | None:
    """``access``, ``busy``, ``missing`` or None for a libusb error (matched by class name, so
    that this module does not import usb1)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "USBErrorAccess" in names:
        return "access"
    if "USBErrorBusy" in names:
        return "busy"
    if names & {"USBErrorNoDevice", "USBErrorNotFound"}:
        return "missing"
    return None


def describe_open_error(exc: BaseException, spec: str) -> tuple[str, Reason | None]:
    """Plain words for a failure to open the bumble HCI transport ``spec``, and a reason.

    The reason is None when the radio is not "unavailable" but failed otherwise (a plain
    :class:`BleakError`).  Covers the cases people meet: no controller there, no permission for
    the HCI socket, USB device or serial port, a controller that BlueZ (or another program)
    holds, and a ``pairkit radio`` port nobody serves.
    """
    scheme, _, rest = spec.partition(":")
    usb = _usb_kind(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if scheme == "tcp-client" and isinstance(exc, ConnectionRefusedError):
        return (
            f"nothing listens at {rest}: start the virtual radio first "
            "(pairkit radio --ports P1 P2) and give one of its ports",
            Reason.NO_BLUETOOTH,
        )
    if usb == "access" or code in _PERMISSION_ERRNOS:
        if scheme == "hci-socket":
            text = (
                f"no permission for the HCI socket of hci{rest or 0}: it needs CAP_NET_ADMIN; "
                "run pairkit as the pairkit-host service (contrib/systemd/install.sh, "
                "'A Raspberry Pi' in README.md) or with sudo"
            )
        elif scheme == "usb":
            text = (
                "no permission for the USB Bluetooth dongle: add a udev rule giving your user "
                "access to it (see 'Real radios' in README.md), or run as root"
            )
        elif scheme == "serial":
            text = (
                f"no permission for the serial port {rest.split(',')[0]}: add your user to the "
                "dialout group (sudo usermod -aG dialout $USER, then log in again)"
            )
        else:
            text = f"no permission to open the Bluetooth controller {spec!r}"
        return text, Reason.DENIED_BY_SYSTEM
    if usb == "busy" or code in _BUSY_ERRNOS:
        if scheme == "hci-socket":
            text = (
                f"hci{rest or 0} is in use by BlueZ: let go of it first "
                f"(sudo hciconfig hci{rest or 0} down, or sudo btmgmt --index {rest or 0} "
                "power off), or use bleak on BlueZ instead (-t bleak)"
            )
        elif scheme == "usb":
            text = (
                "the USB Bluetooth dongle is busy: another program has claimed it (a second "
                "pairkit, or bluetoothd through btusb: sudo rmmod btusb, or unplug and "
                "replug it)"
            )
        else:
            text = f"the Bluetooth controller {spec!r} is busy (another program uses it)"
        return text, Reason.UNKNOWN
    if (
        usb == "missing"
        or code in _MISSING_ERRNOS
        or (isinstance(exc, TransportInitError) and "not found" in str(exc))
    ):
        if scheme == "usb":
            text = (
                f"no USB Bluetooth dongle at usb:{rest}: plug one in (lsusb lists it), or pick "
                "another index"
            )
        elif scheme == "hci-socket":
            text = f"no Bluetooth controller hci{rest or 0} (hciconfig -a lists them)"
        elif scheme == "serial":
            text = f"no serial port {rest.split(',')[0]}: is the HCI board plugged in?"
        else:
            text = f"no Bluetooth controller at {spec!r}"
        return text, Reason.NO_BLUETOOTH
    if scheme == "hci-socket" and "not supported" in str(exc):
        return (
            "this Python has no Bluetooth sockets (AF_BLUETOOTH: Linux only, and Python built "
            "with the Bluetooth headers): use a USB dongle instead (usb:0)",
            Reason.NO_BLUETOOTH,
        )
    libusb = any(cls.__name__ == "USBError" for cls in type(exc).__mro__)
    if libusb and scheme == "usb" and sys.platform == "linux" and not os.path.isdir("/dev/bus/usb"):
        return (
            "no USB devices are visible here (/dev/bus/usb is missing; in a container, pass "
            "the dongle through)",
            Reason.NO_BLUETOOTH,
        )
    if isinstance(exc, TimeoutError | core.TimeoutError | core.CommandTimeoutError):
        return (
            f"the Bluetooth controller {spec!r} did not answer (unplug and replug it, or check "
            "that it runs HCI firmware)",
            None,
        )
    detail = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    return f"cannot open the Bluetooth controller {spec!r}: {detail}", None


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
