"""Issue 17, finding 9: the keystore never writes what it cannot read, over real processes.

The attacker makes the owner's keystore grow (strangers let in as guests with ``--yes``, one
after another) until it could not be opened again, which would lose the device's identity.
Old guests are forgotten at the host's next save; a keystore that is full all the same is
refused before anything is written, and the person at the terminal is told what to do.
"""

from __future__ import annotations

import os
import time

from pairkit import peers as store
from pairkit.keystore import MAX_FILE_SIZE, Keystore, Peer
from pairkit.pairing.crypto import digest, x25519_keypair
from tests.attack_harness import open_ks
from tests.cli_helpers import Device, Lab

PIN = "482913"
DAY = 24 * 3600.0


def fill_to(device: Device, size: int) -> bytes:
    """Pad ``device``'s keystore (a setting of filler bytes) to ``size`` bytes; its bytes."""
    ks = open_ks(device)
    with ks.update():
        ks.set_setting("filler", bytes(size // 2))
    for _ in range(3):  # the CBOR length's own size moves by a few bytes: settle
        missing = size - ks.path.stat().st_size
        with ks.update():
            ks.set_setting("filler", bytes(len(ks.setting("filler")) + missing))
    assert ks.path.stat().st_size == size
    return ks.path.read_bytes()


def contents(device: Device) -> tuple[object, ...]:
    """What ``device``'s keystore holds: its peers and its settings (but the key of its lock
    records, made by the host's first lock change: nothing of any peer)."""
    ks = open_ks(device)
    settings = {k: v for k, v in ks.settings().items() if k != "lockouts.key"}
    return tuple(ks.peers()), settings


def stranger(name: str, seen: float, **extra: object) -> Peer:
    _, public = x25519_keypair(os.urandom)
    return Peer(id=digest(public).hex(), name=name, static_public=public,
                signing_public=os.urandom(32), authenticated=True, method="pin",
                first_seen=seen, last_seen=seen, extra=extra)


def says_what_to_do(text: str) -> bool:
    return "keystore is full" in text and "`pairkit peers`" in text and "`pairkit forget" in text


async def test_a_full_keystore_tells_the_guest_what_to_do_and_keeps_its_file(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    before = fill_to(george, MAX_FILE_SIZE - 64)
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    joined = await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")
    assert joined.rc == 1, joined
    assert says_what_to_do(joined.err), joined
    assert (george.home / "keystore.pk").read_bytes() == before
    assert (await george.run("whoami", "--json")).rc == 0  # it still opens


async def test_a_full_keystore_on_the_host_is_one_line_and_the_host_goes_on(lab: Lab) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    fill_to(paul, MAX_FILE_SIZE - 64)
    held = contents(paul)
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    mark = host.mark()
    joined = await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")
    assert joined.rc != 0, joined
    line = (await host.wait_for(r"^error: .*keystore is full", since=mark)).string
    assert says_what_to_do(line), host.stderr
    # Nothing of George was kept (the PIN attempt, counted as it started and taken back once
    # won, was written and removed: the lock's record, docs/security.md rule 7).
    assert contents(paul) == held
    # The owner makes room as told; the same host, still running, takes the next guest.
    ks = open_ks(paul)
    with ks.update():
        ks.delete_setting("filler")
    pin = [ln.split()[1] for ln in host.lines if ln.startswith("PIN: ")][-1]
    third = await ringo.join(host.target, "-m", "pin", "--pin", pin, "--json")
    assert third.rc == 0, f"{third}\nhost:\n{host.stderr}"


async def test_old_guests_expire_when_the_host_saves(lab: Lab) -> None:
    """Paul's keystore holds guests whose grants ended long ago (the residue of a flood of
    strangers let in with --yes), a recent one and a member: George's pairing saves, and only
    the old guests are gone."""
    paul, george = lab.device("paul"), lab.device("george")
    now = time.time()
    long_ago = now - store.GUEST_RETENTION - DAY
    old = [stranger(f"stranger {i}", long_ago, granted="guest", granted_expires=long_ago)
           for i in range(50)]
    kept = [stranger("recent guest", now - DAY, granted="guest", granted_expires=now - DAY),
            stranger("old member", long_ago, granted="member")]
    ks: Keystore = open_ks(paul)
    with ks.update():
        for p in old + kept:
            ks.add_peer(p)
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    joined = await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")
    assert joined.rc == 0, f"{joined}\nhost:\n{host.stderr}"
    await host.next_result()
    names = {row["name"] for row in await paul.peers()}
    assert names == {"recent guest", "old member", george.name}, names
