"""Why a Bluetooth controller could not be opened, in words a person can act on.

The one translation of "the controller could not be opened" (no controller there, no permission,
busy, a ``pairkit radio`` port nobody serves or another process holds) for every transport that
opens one through bumble: ``bumble:`` (:mod:`transports.bumble`, whose errors reach the CLI) and
``bleak:bumble:`` (:mod:`transports.bleak_bumble.errors`, which turns the kind into bleak's
reason).  Each text ends with the next step to take.  No third-party text or repr is passed on
but an OS error's ``strerror`` or a last-resort detail for a failure none of these explain.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from typing import Literal

from bumble import core
from bumble.transport.common import (
    TransportInitError,
    TransportLostError,
    TransportSpecError,
)

from pairkit.pairing.errors import (
    ConfigError,
    ErrorCode,
    LinkClosedError,
    PairingError,
    PairingTimeout,
    TransportError,
)

__all__ = ["Kind", "describe_open_failure", "open_failure", "port_went_away"]

#: ``missing``: nothing there; ``denied``: no permission; ``busy``: another program has it;
#: None: it is there but failed otherwise
Kind = Literal["missing", "denied", "busy"] | None

_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}
_BUSY_ERRNOS = {errno.EBUSY, errno.EALREADY}
_MISSING_ERRNOS = {errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EADDRNOTAVAIL}

#: where README.md says how to set radios up
_README = "see 'Real radios' in README.md"
_OR_VIRTUAL = "or run 'pairkit radio --ports P1 P2' for virtual ones (-t bumble:tcp-client:...)"


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


def _port_name(rest: str) -> str:
    """The serial port of ``PORT,BAUD`` or ``PORT:BAUD``."""
    return rest.split(",")[0].rsplit(":", 1)[0] if ":" in rest.split(",")[0] else rest.split(",")[0]


def _libusb(exc: BaseException) -> bool:
    return any(cls.__name__ == "USBError" for cls in type(exc).__mro__)


def describe_open_failure(exc: BaseException, spec: str) -> tuple[str, Kind]:
    """Plain words for a failure to open the bumble HCI transport ``spec`` (``usb:0``,
    ``hci-socket:0``, ``serial:...``, ``tcp-client:HOST:PORT``), and its kind."""
    scheme, _, rest = spec.partition(":")
    usb = _usb_kind(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if scheme == "tcp-client":
        if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
            return (
                f"nothing listens at {rest}: start the virtual radio first "
                "(pairkit radio --ports P1 P2) and give one of its ports",
                "missing",
            )
        if isinstance(exc, LinkClosedError | TransportLostError):
            return (
                f"the radio port {rest} is taken: another pairkit process uses it (one process "
                "per port: give another port of 'pairkit radio', or start it with more ports)",
                "busy",
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
                f"access to it ({_README}), or run as root"
            )
        elif scheme == "serial":
            text = (
                f"no permission for the serial port {_port_name(rest)}: add your user to the "
                "dialout group (sudo usermod -aG dialout $USER, then log in again)"
            )
        else:
            text = f"no permission to open the Bluetooth controller {spec!r}"
        return text, "denied"
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
        return text, "busy"
    if (
        usb == "missing"
        or code in _MISSING_ERRNOS
        or (isinstance(exc, TransportInitError) and "not found" in str(exc))
    ):
        if scheme == "usb":
            text = (
                f"no Bluetooth controller found at usb:{rest}: plug in a USB Bluetooth dongle "
                f"(lsusb lists it) or pick another index, {_OR_VIRTUAL}; {_README}"
            )
        elif scheme == "hci-socket":
            text = f"no Bluetooth controller hci{rest or 0} (hciconfig -a lists them)"
        elif scheme == "serial":
            text = f"no serial port {_port_name(rest)}: is the HCI board plugged in?"
        else:
            text = f"no Bluetooth controller at {spec!r}"
        return text, "missing"
    if scheme == "hci-socket" and "not supported" in str(exc):
        return (
            "this Python has no Bluetooth sockets (AF_BLUETOOTH: Linux only, and Python built "
            "with the Bluetooth headers): use a USB dongle instead (usb:0)",
            "missing",
        )
    if _libusb(exc) and scheme == "usb" and sys.platform == "linux" and not os.path.isdir(
        "/dev/bus/usb"
    ):
        return (
            f"no Bluetooth controller found at usb:{rest}: no USB devices are visible here "
            "(/dev/bus/usb is missing; in a container, pass the dongle through), "
            f"{_OR_VIRTUAL}; {_README}",
            "missing",
        )
    if isinstance(exc, TimeoutError | core.TimeoutError | core.CommandTimeoutError):
        return (
            f"the Bluetooth controller {spec!r} did not answer (unplug and replug it, or check "
            "that it runs HCI firmware)",
            None,
        )
    if _libusb(exc):
        detail = type(exc).__name__.removeprefix("USBError") or "error"
        return (
            f"cannot open the USB Bluetooth dongle at usb:{rest} (libusb: {detail.lower()}): "
            f"unplug and replug it; {_README}",
            None,
        )
    detail = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    return f"cannot open the Bluetooth controller {spec!r}: {detail}", None


_CODES = {"missing": ErrorCode.NOT_FOUND, "denied": ErrorCode.PERMISSION}


def open_failure(exc: BaseException, spec: str) -> PairingError:
    """The pairkit error for a failure to open ``spec``: a TransportError whose code says the
    kind (NOT_FOUND, PERMISSION; the CLI's exit code follows), or the timeout as it was."""
    cause = exc.__cause__ if isinstance(exc, PairingError) and exc.__cause__ else exc
    if isinstance(cause, TransportSpecError):
        return ConfigError(
            f"bumble has no transport {spec!r}: give usb:N, hci-socket:N, serial:PORT:BAUD, "
            "tcp-client:HOST:PORT (a 'pairkit radio' port) or virtual"
        )
    if isinstance(exc, PairingTimeout) and cause is exc:
        return PairingTimeout(
            f"the Bluetooth controller {spec!r} did not answer in time (unplug and replug it, "
            "or check that it runs HCI firmware)"
        )
    text, kind = describe_open_failure(cause, spec)
    code = _CODES.get(kind or "")
    return TransportError(text, code=code) if code is not None else TransportError(text)


#: how long the check of a radio port that hung up waits for its connect to be answered
RECHECK_TIMEOUT = 2.0


async def port_went_away(exc: BaseException, spec: str) -> str | None:
    """The words for a ``pairkit radio`` port that hung up while it opened because the radio
    itself went away (killed, stopped), or None when that is not what happened.

    A radio refuses a second host on a port by closing the connection at once, and a radio
    that dies closes it too: the same hang-up.  One more TCP connect tells them apart: refused
    means nothing listens there any more (the radio is gone, NOT_FOUND like a port nobody
    served); accepted means the radio is there and the port is taken, as
    :func:`describe_open_failure` says.  Only asked for a failure that reads as "taken".
    """
    scheme, _, rest = spec.partition(":")
    cause = exc.__cause__ if isinstance(exc, PairingError) and exc.__cause__ else exc
    if scheme != "tcp-client" or describe_open_failure(cause, spec)[1] != "busy":
        return None
    host, _, port = rest.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), RECHECK_TIMEOUT
        )
    except (OSError, TimeoutError, ValueError) as error:
        if isinstance(error, ConnectionRefusedError) or getattr(
            error, "errno", None
        ) == errno.ECONNREFUSED:
            return (
                f"nothing listens at {rest} any more: the virtual radio went away while "
                "this opened it; start it again (pairkit radio --ports P1 P2) and give one "
                "of its ports"
            )
        return None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None
