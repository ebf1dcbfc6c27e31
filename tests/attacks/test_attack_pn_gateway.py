"""A PN gateway (``pairkit pn gateway``, docs/protocol.md §18) against strangers in reach: what
they can do to members that proved their link key.

The gateway is the real ``PnGateway`` behind the real accept loop over TCP on loopback
(tests/pn_harness.py), its PN holding members that come back by resume, as after a setup; the
strangers speak from 127.0.0.2, 127.0.0.3, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from pairkit.admission import Admission, AdmissionLimits
from pairkit.pairing.cpns import PnAttach
from pairkit.pn import pn_receive, pn_send
from pairkit.transports.tcp import TcpLink
from tests.flood_harness import attacker_addresses, frame, link_from, wait_until
from tests.pn_harness import gateway_in_process, member_online

#: a small gateway: four links not yet authenticated at once
SMALL = AdmissionLimits(max_pending=4, per_address=4, first_flight=5.0, idle_grace=0.2)


async def test_strangers_in_reach_cannot_push_an_online_member_off_its_gateway(
    tmp_path: Path,
) -> None:
    """The watch is online (it proved its link key: a resume and its READY records).  Strangers,
    one link each from six addresses, say "in reach, waiting" (``PnAttach``) and stay.  The
    watch is a proven member, not a link waiting for its first proof: it must not be the one
    evicted to make room for them, and the scale's message must reach it."""
    async with gateway_in_process(tmp_path, members=("watch", "scale"),
                                  admission=Admission(SMALL)) as gw:
        watch = await member_online(gw, "watch")
        await wait_until(lambda: any("watch is online" in s for s in gw.said), "watch online")
        strangers: list[TcpLink] = []
        try:
            for source in attacker_addresses(6):
                link = await link_from(source, "127.0.0.1", gw.port)
                strangers.append(link)
                await link.send(frame(PnAttach(os.urandom(16), "in reach", 1).encode())[4:])
                await wait_until(lambda: any("in reach, waiting" in s for s in gw.said),
                                 "attach")
                await asyncio.sleep(2 * SMALL.idle_grace)  # everyone silent a while
            got: list[Any] = []

            async def on_data(msg: Any) -> None:
                got.append(msg)

            receiving = asyncio.create_task(pn_receive(watch, on_data, count=1))
            scale = await member_online(gw, "scale")
            try:
                (record,) = gw.members["scale"].pns("member")
                report = await pn_send(scale, record, bytes.fromhex(gw.members["scale"].device_id),
                                       bytes.fromhex(gw.members["watch"].device_id), b"hello",
                                       timeout=10)
                assert report.delivered, report.reason
                await asyncio.wait_for(asyncio.shield(receiving), 10)
                assert [m.body for m in got] == [b"hello"]
            finally:
                await scale.close()
                receiving.cancel()
                with contextlib.suppress(BaseException):
                    await receiving
        finally:
            for link in strangers:
                with contextlib.suppress(Exception):
                    await link.close()
            await watch.close()
