"""A pairing host under load (runtime/admission.py, ``pairkit host``): the paired guests it
serves at once (``concurrent``), and whether one known guest can take them all.

In this process over the loopback transport: Paul's host (``run_host``, as ``pairkit host``
runs it, serving files to paired guests) and devices that paired with it before as members of
its cloud, coming back by ``resume`` with no prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.flows import HostOptions, JoinOptions, run_host, run_join
from pairkit.cli.groupdemo import GroupLab, Node, wait_for
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.negotiation import Method


class Owner:
    async def allow_join(self, q: Any) -> Grant:
        return Grant(Role.MEMBER)

    async def join_cloud(self, q: Any) -> bool:
        return True

    async def allow_request(self, *_args: Any, **_kw: Any) -> bool:
        return True

    async def on_warning(self, event: Any) -> None:
        return None

    async def on_event(self, event: Any) -> None:
        return None


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[GroupLab]:
    lab = GroupLab(tmp_path, transport="loopback", connect_timeout=2, step_timeout=5)
    try:
        yield lab
    finally:
        await lab.close()


async def _back(lab: GroupLab, guest: Node, host: Node, hold: asyncio.Event | None,
                joined: list[str]) -> None:
    async def session(*_args: Any) -> None:
        joined.append(guest.name)
        if hold is not None:
            await hold.wait()

    await run_join(guest.ks, JoinOptions(target=host.name, transport="loopback",
                                         method=Method.RESUME, json=True, step_timeout=5),
                   on_session=session, transport_obj=guest.transport, address=host.address,
                   delegate=Owner())


async def test_one_member_cannot_take_every_place_of_a_host(lab: GroupLab) -> None:
    """Paul's host serves two paired guests at once.  George, a member, comes back twice and
    stays silent in both sessions; the lamp, another member, comes back: it must be served, not
    told "busy" for as long as George idles (a guest holds at most half of the places, its
    newest session closing its oldest)."""
    paul, george, lamp = [await lab.add(n) for n in ("paul", "george", "lamp")]
    for guest in (george, lamp):
        await lab.commission(paul, guest)
    opts = HostOptions(transport="loopback", pin="135790", quiet=True, json=True,
                       methods=frozenset({Method.PIN, Method.RESUME, Method.KK}),
                       step_timeout=5, concurrent=2)
    host = asyncio.create_task(run_host(paul.ks, opts, emit=lambda _r: None,
                                        transport_obj=paul.transport, delegate=Owner()))
    hold = asyncio.Event()
    joined: list[str] = []
    george_tasks = [asyncio.create_task(_back(lab, george, paul, hold, joined))
                    for _ in range(2)]
    try:
        # Both of George's returns are through (each holds its session, or the newer one
        # already closed the older before it was told of its session: sessions are counted
        # from the moment the device is proven, before its record is stored).
        def both_through() -> bool:
            return joined.count("george") + sum(t.done() for t in george_tasks) >= 2

        await wait_for(both_through, 10, quiet=True)
        assert both_through() and joined.count("george") >= 1
        await asyncio.wait_for(_back(lab, lamp, paul, None, joined), 10)
        assert "lamp" in joined
    finally:
        hold.set()
        for task in (*george_tasks, host):
            task.cancel()
        for task in (*george_tasks, host):
            with contextlib.suppress(BaseException):
                await task
