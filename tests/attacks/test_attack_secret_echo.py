"""The secret held, sent again (attack review atk17b; docs/security.md rule 3 and "Renewing the
cloud secret"), played over TCP against a real guest.

Since session 17 a member takes a Membership carrying, for a cloud it holds as a member, the
epoch and the secret it holds as nothing to store (no error): a member past the 8 clouds it
hints, joining its owner by address, is let in as a new member and sent what it holds.  The
guest now compares a secret a host sent with the one it holds, so the questions are: who gets
anything (a session, a secret stored, a name or epoch changed), and who learns whether a secret
it sends is the one held (an oracle).

George holds Paul's cloud as a member at epoch 1 (joined from Paul), as Ringo does.  The host is
built from the real machines on a real TCP listener with a real device's keys (Paul's: the
owner; Ringo's: a member, who knows the secret), and does not prove the cloud (George asks to
join, and is let in as a member, as the owner's yes does), or proves it with Ringo's copy.
George is a real ``pairkit join --yes`` process.  For each attack the host sends the secret
George holds, and, apart, a random one at the same epoch: both are refused, nothing is stored,
and what the host hears back is the same, so the check is no oracle to anyone but the owner
itself, who made the secret (and who, holding every key that signs, learns nothing new).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import Session
from pairkit.pairing.service import Membership, cloud_id_of, membership_statement
from pairkit.peers import renew_cloud_secret
from tests.attack_harness import EvilHost, Proxy, evil_host, flip_last_bit, open_ks, owned_cloud
from tests.cli_helpers import KEYSTORE_PIN, Device, Lab
from tests.renewal_harness import Owner, device, pair

EPOCH = 1  #: the epoch George and Ringo hold Paul's cloud at


def held(device: Device) -> dict[str, tuple[str, int, str, str | None, bytes]]:
    """Every cloud ``device`` holds: id -> (role, epoch, name, owner, a MAC for the secret)."""
    ks = open_ks(device)
    return {c.cloud_id: (c.role, c.epoch, c.name, c.owner, ks.cloud_mac(c.cloud_id, b"probe"))
            for c in ks.clouds()}


def not_paul(paul_id: str) -> str:
    """Another device id with Paul's cloud id (a second preimage of its 8 bytes, by hand)."""
    return paul_id[:16] + format(int(paul_id[16:], 16) ^ (2**64 - 1), "016x")


def setup(lab: Lab, joined_from: str) -> tuple[Device, Device, Device, str, bytes]:
    """Paul renewed his cloud once; George and Ringo hold it as members at :data:`EPOCH`,
    Ringo joined from Paul, George from ``joined_from`` ("paul", "another-owner" or
    "not-kept").  (Paul, George, Ringo, the cloud id, the secret they hold)."""
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    cloud_id, _ = owned_cloud(paul)
    secret = os.urandom(32)
    ks = open_ks(paul)
    paul_id = ks.device_id
    with ks.update():
        assert ks.renew_cloud_secret(cloud_id, secret) == EPOCH
    owners = {"paul": paul_id, "another-owner": not_paul(paul_id), "not-kept": None}
    for member in (george, ringo):
        ks = open_ks(member)
        with ks.update():
            ks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member", epoch=EPOCH,
                         owner=owners[joined_from] if member is george else paul_id)
    return paul, george, ringo, cloud_id, secret


def signed(host: EvilHost, m: Membership, s: Session, fingerprint: str | None = None,
           ) -> Membership:
    """``m`` signed by the host's key for the guest and this session (or ``fingerprint``)."""
    statement = membership_statement(m, s.peer.device_id, fingerprint or s.fingerprint)
    return dataclasses.replace(m, signature=host.signer.sign(statement))


def echo(cloud_id: str, secret: bytes, **changes: Any) -> Membership:
    """A new member's Membership of ``cloud_id`` with ``secret`` at :data:`EPOCH`."""
    m = Membership(role=Role.MEMBER, cloud_id=cloud_id, cloud_name="Paul's cloud",
                   secret=secret, epoch=EPOCH)
    return dataclasses.replace(m, **changes)


#: what the host sends: (host, session, cloud id, the secret) -> Membership
Craft = Callable[[EvilHost, Session, str, bytes], Membership]


async def play(lab: Lab, who: str, craft: Craft, *, send_held: bool, proves: bool = False,
               joined_from: str = "paul",
               ) -> tuple[Device, Any, EvilHost, dict[str, Any], dict[str, Any]]:
    """George joins a host with ``who``'s keys by PIN, by address, and is sent ``craft``'s
    Membership with the secret he holds (``send_held``) or a random one; each round with its
    own copies of the devices.  (George, his join, the host, his clouds before, after)."""
    devices = Lab(lab.base / ("held" if send_held else "random"), lab.templates)
    paul, george, ringo, cloud_id, secret = setup(devices, joined_from)
    before = held(george)
    sent = secret if send_held else os.urandom(32)
    grant = Grant(Role.GUEST, 3600) if proves else Grant(Role.MEMBER)
    host = await evil_host(grant, lambda s: craft(host, s, cloud_id, sent),
                           device={"paul": paul, "ringo": ringo}[who],
                           proves=(cloud_id,) if proves else ())
    pin = host.state.new_pin()
    try:
        joined = await george.join(host.target, "-m", "pin", "--pin", pin, "--yes", "--json",
                                   "--timeout", "10")
    finally:
        await host.close()
    assert host.sent, f"the host never got to send its membership: {host.errors}"
    return george, joined, host, before, held(george)


#: what the owner's own device may send that is nothing to store: (whether it proves the
#: cloud, whom George joined it from, the Membership)
NOTHING_TO_STORE: dict[str, tuple[bool, str, Craft]] = {
    "the-owners-echo": (False, "paul", lambda h, s, c, x: signed(h, echo(c, x), s)),
    "at-a-lower-epoch": (False, "paul", lambda h, s, c, x: signed(h, echo(c, x, epoch=None), s)),
    "proven-at-a-lower-epoch": (True, "paul",
                                lambda h, s, c, x: signed(h, echo(c, x, epoch=None), s)),
    # George joined before owners were kept: only his proof binds a renewal, and none counted
    # (atk17 finding 3).
    "owner-not-kept": (False, "not-kept", lambda h, s, c, x: signed(h, echo(c, x), s)),
}


@pytest.mark.parametrize("case", list(NOTHING_TO_STORE))
async def test_what_the_owner_sends_that_is_not_newer_stores_nothing_and_no_oracle(
    lab: Lab, case: str,
) -> None:
    """Paul's keys, signed for George and this session, the epoch George holds or an older one
    (after a backup of Paul's keystore was put back, atk18 finding 1), or a cloud George joined
    before owners were kept: the secret he holds and a random one are alike nothing to store.
    The join goes on as a member either way, George's clouds are as they were, and the host
    hears the same from him: the secret sent is never looked at, so no host, the owner
    included, learns whether one it sends is the one held (atk17b)."""
    proves, joined_from, craft = NOTHING_TO_STORE[case]
    heard = {}
    for send_held in (True, False):
        _, joined, host, before, after = await play(
            lab, "paul", craft, send_held=send_held, proves=proves, joined_from=joined_from)
        assert joined.ok().json()["role"] == "member", joined
        assert after == before, "George's clouds changed"
        heard[send_held] = host.heard
    assert heard[True] == heard[False] == ["a message"], heard


#: attack -> (whose keys the host has, whether it proves Paul's cloud with them, whom George
#: joined the cloud from, the Membership it sends, what George says)
ATTACKS: dict[str, tuple[str, bool, str, Craft, str]] = {
    # Ringo knows the secret (a member, or one forgotten before George was renewed) and proves
    # the cloud; he echoes it as Paul's cloud, signed with his key.
    "a-member-proving-the-cloud": (
        "ringo", True, "paul", lambda h, s, c, x: signed(h, echo(c, x), s), "not its own"),
    "a-member-not-proving-it": (
        "ringo", False, "paul", lambda h, s, c, x: signed(h, echo(c, x), s), "not its own"),
    # A host whose id shares Paul's 8 bytes (to George: he joined from such a device).
    "a-second-preimage": (
        "paul", False, "another-owner", lambda h, s, c, x: signed(h, echo(c, x), s),
        "not the owner"),
    "a-second-preimage-proving-it": (
        "paul", True, "another-owner", lambda h, s, c, x: signed(h, echo(c, x), s),
        "not the owner"),
    # Paul's static key without his signing key: the guess must not be checked unsigned.
    "unsigned": ("paul", False, "paul", lambda h, s, c, x: echo(c, x), ""),
    "signed-for-another-session": (
        "paul", False, "paul",
        lambda h, s, c, x: signed(h, echo(c, x), s, "0000-1111-2222-3333"), ""),
    "renamed": ("paul", False, "paul",
                lambda h, s, c, x: signed(h, echo(c, x, cloud_name="Mallory's cloud"), s), ""),
    # refused at the verdict's role now (told member, made a guest), before the grant's rule
    "as-a-guest-grant": ("paul", False, "paul",
                         lambda h, s, c, x: signed(h, echo(c, x, role=Role.GUEST), s),
                         "join request said member"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_the_secret_held_sent_back_by_anyone_else_is_refused_and_no_oracle(
    lab: Lab, attack: str,
) -> None:
    """The held secret, sent by a host that may not renew George's cloud or in a Membership
    that is not whole (``attack``), is refused, and so is a random one in its place; nothing
    is stored (no peer, George's clouds unchanged: secret, epoch, name, owner); and the host
    hears the same from George either way, so it cannot test a guessed secret."""
    who, proves, joined_from, craft, why = ATTACKS[attack]
    heard = {}
    for send_held in (True, False):
        george, joined, host, before, after = await play(
            lab, who, craft, send_held=send_held, proves=proves, joined_from=joined_from)
        assert joined.rc != 0, f"George took it ({attack}, held={send_held}):\n{joined}"
        assert joined.err.startswith("error: ") and why in joined.err, joined
        assert await george.peers() == []
        assert after == before, "George's clouds changed"
        heard[send_held] = [re.sub(r"\(127\.0\.0\.1:\d+\)", "(George)", h) for h in host.heard]
    assert len(heard[True]) == 1 and heard[True] == heard[False], heard


# -- another process of the member's device --------------------------------------------------


async def test_a_stale_process_taking_an_old_echo_puts_nothing_back(tmp_path: Path) -> None:
    """George's second process opened his keystore at epoch 0; his first then took Paul's
    renewal to epoch 1.  A host with Paul's keys (or a backup of them) lets the stale process
    in as a member and echoes epoch 0's secret, the one it holds in memory: nothing to store,
    and the join goes on; what is stored stays epoch 1 with its secret."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    session, error = await pair(paul, owner, george, "echo1", pin="246810", wants="member")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    (cloud,) = [c for c in paul.keystore.clouds() if c.role == "owner"]
    old = paul.keystore._cloud_secret_for_new_member(cloud.cloud_id)
    stale = pairkit.Device.open(tmp_path / "george" / "keystore.pk", KEYSTORE_PIN)
    with paul.keystore.update():
        assert renew_cloud_secret(paul.keystore) == 1
    session, error = await pair(paul, owner, george, "echo1", target="Paul", method="resume")
    assert error is None and session is not None, error
    await session.close()
    george.keystore.follow()
    assert george.keystore.cloud(cloud.cloud_id).epoch == 1
    mac = george.keystore.cloud_mac(cloud.cloud_id, b"probe")
    assert stale.keystore.cloud(cloud.cloud_id).epoch == 0

    def old_echo(s: Session) -> Membership:
        m = Membership(role=Role.MEMBER, cloud_id=cloud.cloud_id, cloud_name=cloud.name,
                       secret=old)
        return signed(host, m, s)

    host = await evil_host(Grant(Role.MEMBER), old_echo, device=Device(tmp_path / "paul", "Paul"))
    try:
        session = await stale.join(host.target, pin=host.state.new_pin(), wants="member",
                                   step_timeout=10.0)
        assert session.role == "member"  # nothing to store: the stale copy took the echo
        await session.close()
    except PairingError as exc:
        pytest.fail(f"the stale process refused its own secret: {exc}")
    finally:
        await host.close()
    george.keystore.follow()
    assert george.keystore.cloud(cloud.cloud_id).epoch == 1
    assert george.keystore.cloud_mac(cloud.cloud_id, b"probe") == mac
    assert george.keystore.cloud(cloud.cloud_id).owner == paul.keystore.device_id


# -- other methods by address ------------------------------------------------------------------


async def test_a_member_of_nine_clouds_back_by_clear_takes_the_echo(tmp_path: Path) -> None:
    """Joining by address with ``clear`` (as by PIN) a member past the 8 clouds it hints is
    asked about as a stranger; the owner's yes sends what it holds: the session is a member's
    and George's record of the cloud is unchanged (name, role, epoch, owner, secret)."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    with george.keystore.update():
        for i in range(7):
            george.keystore.set_cloud(os.urandom(8).hex(), os.urandom(32), name=f"band {i}",
                                      role="member")
    owner = Owner()
    session, error = await pair(paul, owner, george, "echo2", pin="246810", wants="member")
    assert error is None and session is not None, error
    await session.close()
    cloud_id = cloud_id_of(bytes.fromhex(paul.keystore.device_id))
    joined = george.keystore.cloud(cloud_id)
    mac = george.keystore.cloud_mac(cloud_id, b"probe")
    owner.asked.clear()
    session, error = await pair(paul, owner, george, "echo2", method="clear", wants="member")
    assert error is None and session is not None, error
    assert session.role == "member"
    await session.close()
    assert owner.asked == ["George"]  # asked about as a stranger: his proof was not hinted
    george.keystore.follow()
    assert george.keystore.cloud(cloud_id) == joined
    assert george.keystore.cloud_mac(cloud_id, b"probe") == mac


# -- on the path -------------------------------------------------------------------------------


async def echo_through_proxy(lab: Lab, run: str, flip: int | None,
                             ) -> tuple[Device, Any, dict[str, Any], dict[str, Any], int]:
    """George joins the owner's host (Paul's keys, George let in as a member and sent the
    secret he holds) through a proxy that flips the last bit of the host's ``flip``-th frame
    (None: none).  (George, his join, his clouds before, after, the frames the host sent)."""
    devices = Lab(lab.base / run, lab.templates)
    paul, george, _ringo, cloud_id, secret = setup(devices, "paul")
    before = held(george)
    host = await evil_host(Grant(Role.MEMBER),
                           lambda s: signed(host, echo(cloud_id, secret), s), device=paul)
    sent = [0]

    def hook(direction: str, index: int, piece: bytes) -> bytes | None:
        if direction == "h2g":
            sent[0] += 1
            if sent[0] == flip:
                return flip_last_bit(piece)
        return piece

    h, p = host.listener.address.rsplit(":", 1)
    proxy = await Proxy((h, int(p)), hook).start()
    try:
        joined = await george.join(proxy.target, "-m", "pin", "--pin", host.state.new_pin(),
                                   "--yes", "--json", "--timeout", "10")
    finally:
        await proxy.close()
        await host.close()
    assert host.sent, host.errors
    return george, joined, before, held(george), sent[0]


async def test_a_bit_flipped_echo_is_refused(lab: Lab) -> None:
    """An on-path attacker between George and the owner's host flips the last bit of the
    Membership that echoes George's secret (the last frame the host sends: counted in a clean
    run through the same proxy, which George takes).  George's secure link refuses it: no
    session, no peer, his clouds unchanged."""
    _, clean, before, after, frames = await echo_through_proxy(lab, "clean", None)
    assert clean.ok().json()["role"] == "member", clean
    assert after == before
    george, joined, before, after, _ = await echo_through_proxy(lab, "flipped", frames)
    assert joined.rc != 0, f"George took a flipped Membership:\n{joined}"
    assert "a record failed authentication" in joined.err, joined
    assert await george.peers() == []
    assert after == before
