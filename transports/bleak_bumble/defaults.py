"""bleak's own defaults pointed at pairkit's bumble backend, for code that picks none.

An application written the way bleak's examples are never names a backend:
``BleakScanner.find_device_by_name("thermo")``, ``BleakClient(address)``,
``await BleakAdapter.get()``.  bleak then asks ``get_platform_scanner_backend_type()`` (and the
client's, and the adapter's) for this machine's OS backend: BlueZ over D-Bus, CoreBluetooth,
WinRT.  :func:`bleak_defaults` answers those three questions with pairkit's bumble backend on
one :class:`~.adapter.BumbleAdapter` for as long as it is active, so that code runs unmodified
against virtual peripherals (or any bumble transport).  It changes bleak's module globals, so
it is for tests (the ``virtual_bleak`` fixture) and is undone on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import bleak

from .adapter import BumbleAdapter
from .client import BumbleClient
from .scanner import BumbleScanner

try:  # bleak >= 3.1
    from bleak.backends.adapter import BaseBleakAdapter
except ImportError:  # pragma: no cover - bleak 3.0 has no BleakAdapter
    BaseBleakAdapter = object  # type: ignore[assignment,misc]

__all__ = ["BACKEND_ID", "bleak_defaults"]

#: what ``BleakScanner(...).backend_id`` says while the defaults are active
BACKEND_ID = "pairkit-bumble"


def _bound(cls: type, adapter: BumbleAdapter) -> type:
    """``cls`` whose instances use ``adapter`` unless given another (``bumble=...``)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        args_ = dict(kwargs.pop("bumble", None) or {})
        args_.setdefault("adapter", adapter)
        cls.__init__(self, *args, bumble=args_, **kwargs)  # type: ignore[misc]

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


class BumbleBleakAdapter(BaseBleakAdapter):  # type: ignore[misc,valid-type]
    """bleak 3.1's ``BleakAdapter`` backend on a :class:`BumbleAdapter`: the devices it is
    connected to, filtered by the services a client discovered on them."""

    adapter: BumbleAdapter

    @classmethod
    async def get(cls, **kwargs: Any) -> BumbleBleakAdapter:
        return cls()

    async def get_connected_devices(self, service_uuids: frozenset[str]) -> list[Any]:
        return self.adapter.connected_devices(service_uuids)


@contextlib.contextmanager
def bleak_defaults(adapter: BumbleAdapter) -> Iterator[None]:
    """While active, bleak's scanners, clients and ``BleakAdapter.get()`` that name no backend
    run on ``adapter`` (module docstring)."""
    scanner = _bound(BumbleScanner, adapter)
    client = _bound(BumbleClient, adapter)
    bleak_adapter = type("BumbleBleakAdapter", (BumbleBleakAdapter,), {"adapter": adapter})
    replaced = {
        "get_platform_scanner_backend_type": lambda: (scanner, BACKEND_ID),
        "get_platform_client_backend_type": lambda: (client, BACKEND_ID),
    }
    if hasattr(bleak, "get_platform_adapter_backend_type"):
        replaced["get_platform_adapter_backend_type"] = lambda: (bleak_adapter, BACKEND_ID)
    saved = {name: getattr(bleak, name) for name in replaced}
    for name, value in replaced.items():
        setattr(bleak, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(bleak, name, value)
