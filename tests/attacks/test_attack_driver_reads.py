"""Attacks on the driver reading a machine directly (attack review atk14c, session 14: merge
3459a77).  :func:`pairkit.driver.drive` reads a machine's ``_out``, ``_events``, ``state`` and
``_deadline`` itself when the machine's class keeps all five of Machine's accessors
(``outgoing``, ``events``, ``done``, ``failed``, ``next_deadline``), checked once per class.  A
class that overrides any one of them must be read through all of them: a machine whose
accessor does work (pulls from an inner queue, keeps its deadline elsewhere) would otherwise
have messages never sent, questions never asked or a deadline never kept.

Each accessor alone is overridden on the real compare host (counting its calls, then doing
Machine's work), over real TCP, paired and refused: the override must be called, and the
exchange ends as it does for the plain class.  Held on main at 3459a77 (no finding); fails
against a check that looks at fewer than the five accessors (the existing
tests/test_driver.py test overrides three at once, so a check of ``outgoing`` alone passed it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pairkit.driver import drive
from pairkit.pairing.errors import RefusedError, RemoteError
from pairkit.pairing.methods import (
    ConfirmCode,
    GuestPairing,
    HostPairing,
    HostState,
    LocalIdentity,
    PairingConfig,
)
from pairkit.pairing.negotiation import Method
from pairkit.transports.tcp import TcpListener, tcp_connect

GEORGE = LocalIdentity.generate("George's phone")
PAUL = LocalIdentity.generate("Paul's phone")
ACCESSORS = ("outgoing", "events", "done", "failed", "next_deadline")


class _Person:
    def __init__(self, answer: bool) -> None:
        self.answer = answer

    async def confirm_code(self, q: ConfirmCode) -> bool:
        return self.answer


def _host_class(name: str, calls: list[str]) -> type[HostPairing]:
    """HostPairing with accessor ``name`` alone of its own (Machine's work, its calls counted)."""
    if name in ("done", "failed"):
        base = getattr(HostPairing, name)

        def get(self: Any) -> bool:
            calls.append(name)
            return bool(base.fget(self))

        return type("Own_" + name, (HostPairing,), {name: property(get)})

    def method(self: Any) -> Any:
        calls.append(name)
        return getattr(super(cls, self), name)()

    cls = type("Own_" + name, (HostPairing,), {name: method})
    return cls


@pytest.mark.parametrize("answer", [True, False], ids=["paired", "refused"])
@pytest.mark.parametrize("accessor", ACCESSORS)
async def test_a_machine_overriding_one_accessor_is_read_through_it(
    accessor: str, answer: bool
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    cfg = PairingConfig(step_timeout=5.0)
    host = _host_class(accessor, calls)(cfg, PAUL, HostState(), wall_now=time.time())
    guest = GuestPairing(cfg, GEORGE, method=Method.COMPARE, wall_now=time.time())
    listener = await TcpListener.bind("127.0.0.1", 0)
    try:
        accept = asyncio.create_task(listener.accept(5))
        a = await tcp_connect("127.0.0.1", listener.port, 5)
        b = await accept
        host.start(loop.time())
        guest.start(loop.time())
        ends = await asyncio.wait_for(asyncio.gather(
            drive(guest, a, delegate=_Person(True)), drive(host, b, delegate=_Person(answer)),
            return_exceptions=True), 15)
        await a.close()
        await b.close()
    finally:
        await listener.close()
    assert accessor in calls, f"{accessor} of its own was never called: read directly"
    if answer:
        assert ends == [None, None], ends
        assert guest.session is not None and host.session is not None
        assert host.done and guest.done
    else:
        assert isinstance(ends[1], RefusedError), ends
        assert isinstance(ends[0], RemoteError), ends
        assert guest.session is None and host.session is None
        assert host.failed and guest.failed
