"""The Bluetooth controllers on this machine, and how to name each in ``--transport``.

``pairkit radio --list`` prints them.  USB controllers are found as bumble finds them (libusb,
the Bluetooth HCI USB class ``E0/01/01`` on the device or one of its interfaces, Core 5.4 Vol 4
Part B §2.1); Linux adapters (``hciN``) from ``/sys/class/bluetooth``.  A USB spec
``usb:VID:PID`` is checked here before bumble opens anything (:func:`parse_usb_spec`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pairkit.pairing.errors import ConfigError, NotFoundError

__all__ = [
    "LinuxAdapter",
    "UsbController",
    "UsbSpec",
    "format_controllers",
    "linux_adapters",
    "list_controllers",
    "parse_usb_spec",
    "probe_usb",
]

_HCI_CLASS = (0xE0, 0x01, 0x01)
_MISC_CLASSES = (0x00, 0xEF)  # "use the interfaces", Miscellaneous (composite devices)
_USB_SPEC = re.compile(
    r"^(?:(?P<index>[0-9]+)"
    r"|(?P<vid>[0-9A-Fa-f]{4}):(?P<pid>[0-9A-Fa-f]{4})"
    r"(?:/(?P<serial>[^/#!+]+)|#(?P<nth>[0-9]+))?)"
    r"(?P<sco>\+sco=[0-9]+)?(?P<forced>!)?$"
)
USB_FORMS = "usb:N, usb:VID:PID (hex, e.g. usb:0a12:0001), usb:VID:PID/SERIAL or usb:VID:PID#N"


@dataclass(frozen=True)
class UsbSpec:
    """A parsed bumble USB transport name (bumble's ``open_usb_transport`` syntax)."""

    index: int | None = None
    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    nth: int | None = None
    forced: bool = False


def parse_usb_spec(rest: str) -> UsbSpec:
    """The controller ``usb:REST`` names; :class:`ConfigError` when bumble could not read it."""
    match = _USB_SPEC.match(rest)
    if match is None:
        raise ConfigError(f"'usb:{rest}' names no USB controller: use {USB_FORMS}")
    if match["index"] is not None:
        return UsbSpec(index=int(match["index"]), forced=bool(match["forced"]))
    return UsbSpec(
        vendor_id=int(match["vid"], 16),
        product_id=int(match["pid"], 16),
        serial=match["serial"],
        nth=int(match["nth"]) if match["nth"] is not None else None,
        forced=bool(match["forced"]),
    )


@dataclass(frozen=True)
class UsbController:
    """A USB Bluetooth controller as libusb describes it."""

    vendor_id: int
    product_id: int
    serial: str | None = None
    manufacturer: str | None = None
    product: str | None = None


@dataclass(frozen=True)
class LinuxAdapter:
    """A Linux Bluetooth adapter (``hciN``), whoever drives it."""

    name: str
    bus: str | None = None


def _is_hci(device: object) -> bool:
    classes = (device.getDeviceClass(), device.getDeviceSubClass(), device.getDeviceProtocol())  # type: ignore[attr-defined]
    if classes == _HCI_CLASS:
        return True
    if classes[0] not in _MISC_CLASSES:
        return False
    for configuration in device:  # type: ignore[attr-defined]
        for interface in configuration:
            for setting in interface:
                if (setting.getClass(), setting.getSubClass(), setting.getProtocol()) == _HCI_CLASS:
                    return True
    return False


def probe_usb() -> list[UsbController]:
    """The USB Bluetooth controllers libusb sees, in bumble's ``usb:N`` order.

    :class:`NotFoundError` when USB cannot be read here at all (no libusb, no USB bus: a
    container), saying so."""
    try:
        import usb1
        from bumble.transport.usb import load_libusb

        load_libusb()
        context = usb1.USBContext()
        context.open()
    except Exception as exc:  # libusb missing or unable to start: nothing bumble can open
        raise NotFoundError(
            "no USB Bluetooth controller can be found here: USB is not readable on this "
            "machine (libusb could not start; in a container, pass the USB bus through)"
        ) from exc
    found: list[UsbController] = []
    try:
        for device in context.getDeviceIterator(skip_on_error=True):
            try:
                if not _is_hci(device):
                    continue
            except usb1.USBError:
                continue

            def text(read: Callable[[], str | None]) -> str | None:
                try:
                    return read()
                except usb1.USBError:
                    return None  # strings need the device opened: not allowed for this user

            found.append(UsbController(
                vendor_id=device.getVendorID(),
                product_id=device.getProductID(),
                serial=text(device.getSerialNumber),
                manufacturer=text(device.getManufacturer),
                product=text(device.getProduct),
            ))
    finally:
        context.close()
    return found


def linux_adapters(root: Path = Path("/sys/class/bluetooth")) -> list[LinuxAdapter]:
    """The ``hciN`` adapters Linux has (none elsewhere, or when /sys has no Bluetooth class)."""
    if not root.is_dir():
        return []
    adapters = []
    for entry in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
        if re.fullmatch(r"hci[0-9]+", entry.name):
            bus = None
            uevent = entry / "device" / "uevent"
            if uevent.is_file():
                for line in uevent.read_text(errors="replace").splitlines():
                    if line.startswith("DRIVER="):
                        bus = line.removeprefix("DRIVER=")
            adapters.append(LinuxAdapter(entry.name, bus))
    return adapters


def _usb_names(controllers: Iterable[UsbController]) -> list[list[str]]:
    """For each controller, its transport names, the steadiest first (bumble's own rules)."""
    names: list[list[str]] = []
    seen: dict[tuple[int, int], int] = {}
    for index, c in enumerate(controllers):
        ids = f"{c.vendor_id:04x}:{c.product_id:04x}"
        nth = seen.get((c.vendor_id, c.product_id), 0)
        seen[(c.vendor_id, c.product_id)] = nth + 1
        own = [f"bumble:usb:{ids}" if nth == 0 else f"bumble:usb:{ids}#{nth}"]
        if c.serial:
            own.insert(0 if nth else 1, f"bumble:usb:{ids}/{c.serial}")
        own.append(f"bumble:usb:{index}")
        names.append(own)
    return names


def format_controllers(
    usb: list[UsbController], adapters: list[LinuxAdapter]
) -> list[str]:
    """The lines ``pairkit radio --list`` prints for these controllers."""
    lines: list[str] = []
    for c, names in zip(usb, _usb_names(usb), strict=True):
        what = " ".join(x for x in (c.manufacturer, c.product) if x) or "USB Bluetooth controller"
        lines.append(f"USB {c.vendor_id:04x}:{c.product_id:04x}  {what}")
        lines.append(f"  -t {names[0]}   (recommended: the same controller wherever it is plugged)")
        for other in names[1:]:
            lines.append(f"  -t {other}")
    if usb:
        lines.append(
            "bumble detaches the kernel driver of the controller it opens: the system loses it "
            "while pairkit runs (usb:0 is often the laptop's built-in one)."
        )
    for a in adapters:
        driver = f" (driver {a.bus})" if a.bus else ""
        lines.append(f"Linux adapter {a.name}{driver}")
        lines.append(f"  -t bleak:{a.name}   (guest, through BlueZ; shares the adapter)")
        lines.append(
            f"  -t bumble:hci-socket:{a.name.removeprefix('hci')}   "
            "(host or guest; BlueZ must let go of it first)"
        )
    return lines


def controllers_json(
    usb: list[UsbController], adapters: list[LinuxAdapter]
) -> list[dict[str, object]]:
    """``pairkit radio --list --json``: each controller with the ``-t`` names that open it (the
    recommended one first)."""
    out: list[dict[str, object]] = []
    for c, names in zip(usb, _usb_names(usb), strict=True):
        out.append({"kind": "usb", "vendor_id": f"{c.vendor_id:04x}",
                    "product_id": f"{c.product_id:04x}", "manufacturer": c.manufacturer,
                    "product": c.product, "transports": names})
    for a in adapters:
        out.append({"kind": "linux", "name": a.name, "driver": a.bus,
                    "transports": [f"bleak:{a.name}",
                                   f"bumble:hci-socket:{a.name.removeprefix('hci')}"]})
    return out


def find_controllers(
    probe: Callable[[], list[UsbController]] = probe_usb,
    adapters: Callable[[], list[LinuxAdapter]] = linux_adapters,
) -> tuple[list[UsbController], list[LinuxAdapter], NotFoundError | None]:
    """(USB controllers, Linux adapters, why USB could not be read or None);
    :class:`NotFoundError` (saying why) when there is no controller at all."""
    try:
        usb = probe()
        unreadable = None
    except NotFoundError as exc:
        usb, unreadable = [], exc
    linux = adapters()
    if not usb and not linux:
        if unreadable is not None:
            raise NotFoundError(str(unreadable)) from None
        raise NotFoundError(
            "no Bluetooth controller found: plug in a USB Bluetooth dongle (lsusb lists it), "
            "or use the virtual radio (pairkit radio --ports 7001 7002)"
        )
    return usb, linux, unreadable


def list_controllers(
    probe: Callable[[], list[UsbController]] = probe_usb,
    adapters: Callable[[], list[LinuxAdapter]] = linux_adapters,
) -> list[str]:
    """What ``pairkit radio --list`` prints; :class:`NotFoundError` (saying why) when there is
    no controller at all."""
    usb, linux, unreadable = find_controllers(probe, adapters)
    lines = format_controllers(usb, linux)
    if unreadable is not None:
        lines.append(f"({unreadable})")
    return lines
