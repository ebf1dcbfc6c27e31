"""pairkit: Bluetooth Low Energy pairing, secure channels and personal clouds.

One import name (issue 12).  The repository's folders are its subpackages:

* :mod:`pairkit.pairing`: the sans-I/O protocol core (wire format, methods, keystore);
* :mod:`pairkit.transports`: links and broadcasts (loopback, TCP, bumble, bleak);
* :mod:`pairkit.keyserver`: the key server (``python -m pairkit.keyserver``); devices reach it
  through :mod:`pairkit.ttp`;
* :mod:`pairkit.cli`: the ``pairkit`` command.

This module stays cheap to import: importing :mod:`pairkit.pairing` must not pull in asyncio
transports, bumble or bleak (the pytest plugin is imported by every pytest run).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pairkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
