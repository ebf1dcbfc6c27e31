"""Attack review atk23, finding F2, across processes: a prekey digest is spent once sent.

The guest's next attempt must not nominate a digest an earlier one sent (a listener would link
the two attempts, and the host's two addresses: test_attack_privacy_prekey_digest.py), whatever
ended that attempt, and also when the next attempt is another ``pairkit join`` process: the
keystore says the digest is spent (docs/security.md, rule 4).  Real processes over TCP, with a
proxy on the path that records every frame and withholds the INIT or what follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from pairkit.pairing import wire
from pairkit.pairing.messages import ResumeKind, ResumeMessage
from tests.attack_harness import Proxy, address_of, message_of, peer_record
from tests.cli_helpers import PAIRKIT_CMD, ROOT, Device, HostProcess, Lab, cli_env

PIN = "482913"


def _init_of(piece: bytes) -> ResumeMessage | None:
    with contextlib.suppress(Exception):
        msg = message_of(piece)
        if msg is not None and isinstance(m := wire.decode(msg), ResumeMessage):
            if m.header.kind is ResumeKind.INIT:
                return m
    return None


def _nominated(proxy: Proxy, conn: int) -> list[bytes]:
    """The digests the guest's INITs nominated on connection ``conn`` (as the guest sent them)."""
    inits = [_init_of(f) for d, f in proxy.messages(conn) if d == "g2h"]
    return [m.header.dst_key_id for m in inits if m is not None]


class _Withhold:
    """Passes everything until the guest's INIT; then withholds what the guest sends (the INIT
    included) on the first connection, and sets ``sent``."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()
        self.on = True

    def __call__(self, direction: str, index: int, piece: bytes) -> bytes | None:
        if not self.on:
            return piece
        if self.sent.is_set():
            return None
        if direction == "g2h" and _init_of(piece) is not None:
            self.sent.set()
            return None
        return piece


async def _paired(lab: Lab) -> tuple[Device, Device, HostProcess]:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--yes", "--json", "--pin", PIN)
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok()
    await host.next_result()
    return paul, george, host


async def _the_next_process_nominates_another(
    george: Device, proxy: Proxy, withhold: _Withhold
) -> None:
    """The digest the first attempt sent is gone from George's keystore, and his next
    ``pairkit join``, let through, resumes with another."""
    (first,) = _nominated(proxy, 0)
    assert first not in peer_record(george, "Paul's phone").their_prekeys
    withhold.on = False
    again = (await george.join("Paul's phone", "-t", proxy.target, "--json")).ok().json()
    (second,) = _nominated(proxy, 1)
    assert second != first, "the next process nominated the digest already sent"
    assert again["method"] == "resume"


async def test_a_digest_sent_in_a_lost_init_is_not_nominated_by_the_next_process(
    lab: Lab,
) -> None:
    _, george, host = await _paired(lab)
    held = list(peer_record(george, "Paul's phone").their_prekeys)
    assert len(held) >= 2
    withhold = _Withhold()
    proxy = await Proxy(address_of(host), withhold).start()
    try:
        lost = await george.join("Paul's phone", "-t", proxy.target, "--json", "--timeout", "3")
        assert lost.rc != 0, "a session was made with no INIT delivered"
        (first,) = _nominated(proxy, 0)
        assert first == held[0]
        await _the_next_process_nominates_another(george, proxy, withhold)
    finally:
        await proxy.close()


async def test_a_digest_sent_before_ctrl_c_is_not_nominated_by_the_next_process(
    lab: Lab,
) -> None:
    _, george, host = await _paired(lab)
    withhold = _Withhold()
    proxy = await Proxy(address_of(host), withhold).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            *PAIRKIT_CMD, "join", "Paul's phone", "-t", proxy.target, "--json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=cli_env(george.home),
        )
        await asyncio.wait_for(withhold.sent.wait(), 15)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the guest waits for the host's answer
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 130, err.decode()
        await _the_next_process_nominates_another(george, proxy, withhold)
    finally:
        await proxy.close()
