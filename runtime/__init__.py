"""pairkit: Bluetooth Low Energy pairing, secure channels and personal clouds.

``pairkit.Device``, ``pairkit.Session``, ``pairkit.Delegate``: the Python API (:mod:`pairkit.api`,
README "Use it from Python").  One import name (issue 12); the repository's folders are its
subpackages:

* :mod:`pairkit.pairing`: the sans-I/O protocol core (wire format, methods, keystore);
* :mod:`pairkit.transports`: links and broadcasts (loopback, TCP, bumble, bleak);
* :mod:`pairkit.keyserver`: the key server (``python -m pairkit.keyserver``); devices reach it
  through :mod:`pairkit.ttp`;
* :mod:`pairkit.cli`: the ``pairkit`` command.

This module stays cheap to import: importing :mod:`pairkit.pairing` must not pull in asyncio
transports, bumble or bleak (the pytest plugin is imported by every pytest run).
"""

from __future__ import annotations

#: the one place the version is written: pyproject.toml reads it (setuptools ``dynamic``), so
#: ``pairkit --version`` needs no package metadata (importlib.metadata costs ~50 ms at start-up)
__version__ = "0.1.0"

__all__ = [
    "Agree",
    "Clock",
    "Delegate",
    "Device",
    "Host",
    "HostInfo",
    "PeerInfo",
    "Refuse",
    "Session",
    "__version__",
]

#: the Python API, imported on first use (``import pairkit`` stays cheap: the pytest plugin and
#: ``pairkit --help`` import this module)
_LAZY = {
    "Device": "pairkit.api",
    "Host": "pairkit.api",
    "Session": "pairkit.api",
    "PeerInfo": "pairkit.api",
    "HostInfo": "pairkit.api",
    "Delegate": "pairkit.delegate",
    "Agree": "pairkit.delegate",
    "Refuse": "pairkit.delegate",
    "Clock": "pairkit.clock",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pairkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
