"""Attack review atk20c, finding 6 (low): the guest's "join this cloud?" question had no
deadline.

Every question the driver asks a person ends at the answer time (120 s by default) with a
"no".  The question a guest's person gets after the pairing, when the host made it a member
(``JoinCloud``: take the host's cloud secret?), was awaited as is: a library guest whose
delegate never answered stayed in ``join()`` for ever, its session with the host open.  Now
it ends at the same answer time, taken as a no (nothing stored), and the join goes on.

Real code: a library host and guest over TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import pairkit.session as session_module
from pairkit.delegate import Agree, Refuse

from ..attack_harness import STEP
from ..known_device_harness import accepting, device


class _NeverAnswers(Refuse):
    def __init__(self) -> None:
        self.asked = 0

    async def join_cloud(self, q: Any) -> bool:
        self.asked += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_join_cloud_question_nobody_answers_ends_as_a_no(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "JOIN_CLOUD_ANSWER_TIME", 1.0)
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    person = _NeverAnswers()
    async with paul.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                         delegate=Agree(members=True), step_timeout=STEP) as host, \
            accepting(host) as accepted:
        joining = asyncio.ensure_future(george.join(
            f"tcp:{host.address.removeprefix('tcp:')}", pin="246810", wants="member",
            step_timeout=STEP, delegate=person))
        done, _ = await asyncio.wait({joining}, timeout=STEP + 5)
        if not done:
            joining.cancel()
        assert done, "the guest still waits for its person's answer"
        async with joining.result():
            pass
        async with await accepted:
            pass
    assert person.asked == 1
    ks = george.keystore
    ks.follow()
    assert [c.role for c in ks.clouds()] == ["owner"]  # Paul's cloud was not taken
