"""A known guest pairing again: by PIN, by name; by resume with a stale prekey, falling back to
kk (attack review atk15b, session 15).

Since session 15 (hostq doubt 3) a host honours a known device's id in a join request only for
``resume``, ``kk`` or ``ttp``, and refuses the claim for any other method; the guest says its
id only for those.  A device the host knows, still holding a valid grant, that pairs again by
PIN (its user chose ``pin``, by the host's name) must then ask as anyone does: the owner is
asked, and it pairs.  Played over TCP against the library's ``Host``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pairkit

from ..attack_harness import STEP
from ..known_device_harness import accepting, device


class Owner(pairkit.Agree):
    """Says yes to everyone, noting whom it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def allow_join(self, q: Any) -> Any:
        self.asked.append(q.name)
        return await super().allow_join(q)


async def test_a_known_guest_pairing_again_by_pin_by_name_is_asked_and_pairs(
    tmp_path: Path,
) -> None:
    paul, george = device(tmp_path, "Paul", cloud=False), device(tmp_path, "George", cloud=False)
    owner = Owner()
    async with george.host("tcp:127.0.0.1:0", methods=("pin", "resume"), delegate=owner,
                           step_timeout=STEP) as host:
        spec = "tcp:" + host.address.removeprefix("tcp:")
        for target in (spec, "George"):  # first as a stranger, then by the host's name
            async with accepting(host) as accepted:
                async with await paul.join(target, transport=spec, method="pin", pin=host.pin,
                                           step_timeout=STEP) as session:
                    assert session.method == "pin"
                async with await accepted:
                    pass
    assert owner.asked == ["Paul", "Paul"]  # asked again: a PIN pairing proves no known key


async def test_a_resume_whose_prekey_went_stale_falls_back_to_kk_through_the_method_check(
    tmp_path: Path,
) -> None:
    """Paul, a guest George's host knows, comes back by ``resume`` (his join request says
    resume) holding only prekeys the host no longer has: the host says stale, Paul falls back
    to ``kk`` on the same link, and the host's method check (the join request's method, from
    the first message: session 15) must take kk as resume's and let him in."""
    paul, george = device(tmp_path, "Paul", cloud=False), device(tmp_path, "George", cloud=False)
    async with george.host("tcp:127.0.0.1:0", methods=("pin", "resume"),
                           delegate=pairkit.Agree(), step_timeout=STEP) as host:
        spec = "tcp:" + host.address.removeprefix("tcp:")
        for target in (spec, "George"):
            if target == "George":  # the prekeys Paul holds for George: none George has
                ks = paul.keystore
                record = ks.get_peer("George")
                ks.add_peer(dataclasses.replace(
                    record, their_prekeys=[os.urandom(len(d)) for d in record.their_prekeys]
                ))
                ks.save()
            async with accepting(host) as accepted:
                async with await paul.join(target, transport=spec, pin=host.pin,
                                           step_timeout=STEP) as session:
                    method = session.method
                async with await accepted:
                    pass
    assert method == "kk"
