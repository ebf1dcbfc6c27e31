"""Open a transport from its name string (DESIGN.md "Links"), the way bumble names its own.

``loopback`` (or ``loopback:NAME``), ``tcp:HOST:PORT``, ``bumble:SPEC`` (``bumble:usb:0``,
``bumble:virtual``...) and ``bleak`` (or ``bleak:ARGS``).  The text is parsed into a
:class:`TransportSpec`; :func:`open_transport` then imports the transport's module only when it
is asked for (so ``tcp`` never loads bumble) and calls its opener (``open(args, **kwargs)``;
``open_bumble`` for bumble), where ``args`` is the text after ``KIND:`` ('' if none).  An
opener may be a coroutine function.  What it returns is the transport's object: some of
Advertiser, Scanner and Connector (``connect(address=None, timeout)``), an ``async listen()``
that returns a Listener (see :mod:`transports.base`), and ``async close()``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from pairkit.pairing.errors import ConfigError, TransportError

__all__ = ["KINDS", "USAGE", "TransportSpec", "open_transport", "parse_transport"]

#: kind -> (module, function): the function is called as ``function(args, **kwargs)``
_OPENERS: dict[str, tuple[str, str]] = {
    "loopback": ("pairkit.transports.loopback", "open"),
    "tcp": ("pairkit.transports.tcp", "open"),
    "bumble": ("pairkit.transports.bumble", "open_bumble"),
    "bleak": ("pairkit.transports.bleak", "open"),
}
KINDS: tuple[str, ...] = tuple(_OPENERS)
USAGE = "loopback, tcp:HOST:PORT, bumble:SPEC, bleak"


@dataclass(frozen=True)
class TransportSpec:
    """A parsed transport name: ``kind`` (one of :data:`KINDS`) and the ``args`` after ``kind:``.

    Validated when built: an unknown kind or a malformed ``tcp`` or ``bumble`` spec raises
    ConfigError.  ``str(spec)`` gives the text back.
    """

    kind: str
    args: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _OPENERS:
            raise ConfigError(f"unknown transport {self.kind!r}; expected one of: {USAGE}")
        if not isinstance(self.args, str):
            raise ConfigError(f"transport arguments are text, not {type(self.args).__name__}")
        if self.kind == "tcp":
            from .tcp import parse_host_port

            try:
                parse_host_port(self.args)
            except ConfigError:
                raise ConfigError(
                    f"malformed tcp transport {str(self)!r}; expected tcp:HOST:PORT with a port "
                    "from 0 to 65535, e.g. tcp:127.0.0.1:8765"
                ) from None
        elif self.kind == "bumble" and not self.args:
            raise ConfigError(
                "malformed bumble transport 'bumble': expected bumble:SPEC, "
                "e.g. bumble:usb:0 or bumble:virtual"
            )

    def __str__(self) -> str:
        return f"{self.kind}:{self.args}" if self.args else self.kind


def parse_transport(spec: str) -> TransportSpec:
    """Parse ``KIND`` or ``KIND:ARGS``; ConfigError names the accepted forms when it is wrong."""
    if not isinstance(spec, str):
        raise ConfigError(f"a transport is named by text, not {type(spec).__name__}")
    text = spec.strip()
    kind, _, args = text.partition(":")
    if kind not in _OPENERS:
        raise ConfigError(f"unknown transport {text!r}; expected one of: {USAGE}")
    return TransportSpec(kind, args)


async def open_transport(spec: str | TransportSpec, **kwargs: Any) -> Any:
    """Open the transport ``spec`` names, passing ``kwargs`` to its module's ``open``.

    ConfigError for a bad name; TransportError when the transport's module or its dependencies
    cannot be loaded on this machine.
    """
    parsed = spec if isinstance(spec, TransportSpec) else parse_transport(spec)
    module_name, function_name = _OPENERS[parsed.kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TransportError(f"the {parsed.kind} transport is not available here: {exc}") from exc
    opener = getattr(module, function_name, None)
    if opener is None:
        raise TransportError(f"the {parsed.kind} transport is not available here")
    result = opener(parsed.args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
