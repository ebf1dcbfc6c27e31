"""The name a guest's join request gives against the identity its pairing proves (attack review
atk15, session 15; docs/security.md, rules 1, 3 and 6).

When a guest asks to join, the host's owner is asked "NAME asks to join this device's cloud (as
member)": NAME is the one the guest's ``JoinRequest`` gives, a claim of the cloud step.  The
pairing that follows proves a static key, and the host stores the grant under the name that
identity carries.  The guest holds the host to its hello-response name
(``CloudGuest.check_name``: a host cannot be picked as "Paul's phone" and pair as another); the
host must hold the guest the same way, or the owner's consent goes to whichever device dares to
borrow the name of one the owner trusts.  With ``resume`` or ``kk`` the borrower needs no PIN,
code or QR: being known to the host (a device the owner once joined, a guest whose grant ended)
is enough, and the owner's yes is the only check left.

Played over TCP against the library's ``Host`` (runtime/api.py) and a real ``pairkit host``
process, the guest driven by hand from the real machines (tests/attack_harness.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit import peers as store
from pairkit.pairing.cloud import Role
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method

from ..attack_harness import (
    STEP,
    answer_prompt,
    evil_join,
    host_with_terminal,
    identity_of,
    open_ks,
)
from ..attack_harness import address_of as host_address
from ..cli_helpers import Lab
from ..known_device_harness import (
    PAULS_LAPTOP,
    accepting,
    address_of,
    device,
    paul_joined_georges_host,
)
from ..known_device_harness import TrustsHisLaptop as Owner


def granted(device: pairkit.Device, name: str) -> str | None:
    ks = device.keystore
    ks.follow()
    return ks.get_peer(name).extra.get("granted")


async def george_asks_as(
    paul: pairkit.Device, george: pairkit.Device, owner: Owner, method: Method, says: str
) -> Any:
    """George's hand-driven guest asks Paul's library host to join as a member under the name
    ``says``, then pairs by ``method`` with his own keys (resume and kk: as the device Paul
    knows; pin: with the PIN Paul's host shows, as a stranger would)."""
    me: LocalIdentity = store.local_identity(george.keystore)
    async with paul.host("tcp:127.0.0.1:0", methods=("pin", "resume"), pin="135790",
                         delegate=owner, visible=600.0, step_timeout=STEP) as host, \
            accepting(host) as accepted:
        kwargs: dict[str, Any] = {}
        if method is Method.PIN:
            kwargs["pin"] = "135790"
        else:
            kwargs["peer"] = store.known_peer(george.keystore, bytes.fromhex(paul.device_id))
        out = await evil_join(
            address_of(host), me, method, says_name=says, wants=Role.MEMBER,
            says_method=Method.RESUME if method is Method.KK else method, **kwargs,
        )
        if out.membership is not None:  # the host stored him first: take his session
            async with await accepted:
                pass
        return out


@pytest.mark.parametrize("method", [Method.RESUME, Method.KK, Method.PIN],
                         ids=["resume", "kk", "pin"])
async def test_a_guest_cannot_ask_under_one_name_and_pair_as_another(
    tmp_path: Path, method: Method
) -> None:
    """George, whom Paul knows (Paul joined George's host once), asks Paul's host to join as a
    member under the name "Paul's laptop", then pairs as himself.  Paul's owner, asked about
    his own laptop, says member.  The host must see that the device it paired with is not the
    one it asked about, and grant nothing: before, George left a member of Paul's cloud (its
    secret, its member list, the host's address key) with no PIN, code or QR (resume, kk)."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    assert granted(paul, "George") is None
    owner = Owner()
    out = await george_asks_as(paul, george, owner, method, says=PAULS_LAPTOP)
    assert owner.asked == [PAULS_LAPTOP]  # the owner's yes went to the name he trusts
    assert out.membership is None or out.membership.role is not Role.MEMBER, out
    assert out.error is not None, "George's pairing under another's name went through"
    assert granted(paul, "George") != "member"


@pytest.mark.parametrize("method", [Method.RESUME, Method.PIN], ids=["resume", "pin"])
async def test_control_under_his_own_name_george_is_refused(
    tmp_path: Path, method: Method
) -> None:
    """The same hand-driven guest under his own name: Paul's owner refuses George (so the
    grant above came from the borrowed name alone), and nothing is granted."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    await paul_joined_georges_host(paul, george)
    owner = Owner()
    out = await george_asks_as(paul, george, owner, method, says="George")
    assert owner.asked == ["George"]
    assert out.error is not None and out.membership is None
    assert granted(paul, "George") is None


async def test_control_an_honest_stranger_asking_under_its_own_name_pairs(
    tmp_path: Path,
) -> None:
    """Paul's laptop itself (a stranger to the host so far) asks under its own name by PIN:
    asked about, made a member, stored under that name (the name check refuses no honest
    guest)."""
    paul, laptop = device(tmp_path, "Paul"), device(tmp_path, PAULS_LAPTOP)
    owner = Owner()
    out = await george_asks_as(paul, laptop, owner, Method.PIN, says=PAULS_LAPTOP)
    assert owner.asked == [PAULS_LAPTOP]
    assert out.error is None and out.membership is not None, out
    assert out.membership.role is Role.MEMBER
    assert granted(paul, PAULS_LAPTOP) == "member"


async def test_a_pairkit_host_process_refuses_a_guest_under_a_borrowed_name(lab: Lab) -> None:
    """The same against a real ``pairkit host`` process over TCP, its owner at a terminal:
    Paul's phone once joined George's host; George's hand-driven guest asks Paul's host as
    "Paul's laptop" (member) and resumes as himself.  Paul answers "m" to his laptop's name;
    the host must refuse George and store no grant for him."""
    paul, george = lab.device("paul"), lab.device("george")
    at_george = await lab.host(george, "-m", "pin", "--pin", "246810", "--yes", "--json")
    (await paul.join(at_george.target, "-m", "pin", "--pin", "246810", "--yes",
                     "--json")).ok()
    await at_george.stop()
    host, master = await host_with_terminal(lab, paul, "-m", "pin", "-m", "resume",
                                            "--pin", "135790", "--json")
    mark = host.mark()
    ks = open_ks(george)
    joining = asyncio.ensure_future(evil_join(
        host_address(host), store.local_identity(ks), Method.RESUME,
        peer=store.known_peer(ks, identity_of(paul).device_id), says_name=PAULS_LAPTOP,
        wants=Role.MEMBER, says_method=Method.RESUME,
    ))
    await answer_prompt(host, master, r"Paul's laptop asks to join", "m\n", since=mark)
    out = await joining
    assert out.membership is None and out.error is not None, out
    await host.wait_for(r"error: guest \S+: the guest asked to join as", since=mark)
    assert host.results == []
    (record,) = [p for p in await paul.peers() if p["name"] == "George's phone"]
    assert record["granted"] is None, record
