"""Attack 6 (rules 1 and 6): a relayed cloud proof, and one bit flipped in each flight.

(a) A man in the middle between a real member's ``pairkit join`` and a real ``pairkit host``
    forwards the cloud step (the member's proof of Paul's cloud) and then pairs with the host as
    itself: the host must refuse (the proof names the member's key, not Mallory's).
(b) A TCP proxy flips one bit in one flight per run, cloud step and READY records included
    (pin and resume over TCP between processes); both sides end with an error and neither stores
    anything.  The same sweep runs in memory for every method, over the cloud machines and the
    pairing machines, with the pre-pairing transcript computed as MessagePipe does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from pathlib import Path

import pytest

from pairkit.driver import MessagePipe, drive
from pairkit.pairing import wire
from pairkit.pairing.channel import ChannelConfig, SecureChannel
from pairkit.pairing.cloud import CloudGuest, CloudHost, CloudReply, Grant, Role
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import GuestPairing, LocalIdentity, PairingConfig
from pairkit.pairing.negotiation import Method
from pairkit.securelink import READY
from pairkit.transports.tcp import TcpListener, tcp_connect
from tests.attack_harness import (
    STEP,
    Proxy,
    Yes,
    address_of,
    flip_last_bit,
    open_ks,
    owned_cloud,
)
from tests.cli_helpers import Device, Lab
from tests.pair_harness import compare_codes, pair_for, run

PIN = "482913"


# -- (a) the relay -------------------------------------------------------------------------------


def make_member(paul: Device, george: Device) -> None:
    """George holds Paul's cloud (as if Paul had made him a member)."""
    cloud_id, secret = owned_cloud(paul)
    ks = open_ks(george)
    ks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member")
    ks.save()


@pytest.mark.parametrize("method", ["pin", "compare"])
async def test_a_relayed_cloud_proof_does_not_let_mallory_in(lab: Lab, method: str) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    make_member(paul, george)
    host = await lab.host(paul, "-m", method, "--pin", PIN, "--yes", "--json")
    relay = await TcpListener.bind("127.0.0.1", 0)
    outcome: dict[str, object] = {}

    async def mallory() -> None:
        g_link = await relay.accept(timeout=STEP)
        h_link = await tcp_connect(*address_of(host), timeout=STEP)
        try:
            to_george, to_host = MessagePipe(g_link, guest=False), MessagePipe(h_link, guest=True)
            for _ in range(2):  # CloudHello, CloudReply, CloudProof, CloudVerdict
                await to_host.send(await asyncio.wait_for(to_george.recv(), STEP))
                reply = await asyncio.wait_for(to_host.recv(), STEP)
                outcome.setdefault("reply", reply)
                await to_george.send(reply)
            await g_link.close()  # George is left behind; Mallory pairs as herself
            me = LocalIdentity.generate("Mallory")
            machine = GuestPairing(PairingConfig(step_timeout=STEP), me,
                                   method=Method.PIN if method == "pin" else Method.COMPARE,
                                   pin=PIN)
            machine.bind_context(to_host.transcript())
            machine.start(asyncio.get_running_loop().time())
            try:
                await drive(machine, to_host, delegate=Yes())
                outcome["mallory_session"] = machine.session
            except PairingError as exc:
                outcome["mallory_error"] = exc
            with contextlib.suppress(Exception):
                outcome["after"] = await asyncio.wait_for(h_link.recv(), STEP)
        finally:
            await h_link.close()

    task = asyncio.create_task(mallory())
    try:
        joined = await george.join(f"tcp:{relay.address}", "-m", method, "--pin", PIN, "--yes")
        await asyncio.wait_for(task, 3 * STEP)
    finally:
        await relay.close()
    reply = wire.decode(outcome["reply"], CloudReply)  # type: ignore[arg-type]
    assert reply.proof is not None, "the host did not recognise George as a member"
    assert joined.rc != 0
    line = await host.wait_for(r"^error: guest \S+: (.*)")
    assert "proved membership" in line.group(1), line.string
    assert host.results == []
    assert await paul.peers() == [] and await george.peers() == []


# -- (b) bit flips over TCP ----------------------------------------------------------------------


async def flipped_join(lab: Lab, paul: Device, george: Device, k: tuple[str, int], *join: str,
                       host_args: tuple[str, ...]) -> tuple[object, Proxy, object]:
    """Flip the last bit of the ``k[1]``-th frame going in direction ``k[0]``."""
    host = await lab.host(paul, *host_args)
    seen = {"g2h": 0, "h2g": 0}

    def hook(direction: str, index: int, piece: bytes) -> bytes | None:
        n = seen[direction]
        seen[direction] += 1
        return flip_last_bit(piece) if (direction, n) == k else piece

    proxy = await Proxy(address_of(host), hook).start()
    try:
        args = [a.replace("{proxy}", proxy.target) for a in join]
        joined = await george.join(*args, "--json", "--timeout", "5")
        with contextlib.suppress(AssertionError):
            await host.wait_for(r"^error: guest ", timeout=8)
    finally:
        await proxy.close()
        await host.stop()
    return joined, proxy, host


#: (direction, n): cloud step 2+2 (hello, join request / reply, verdict), pin 2+2, READY 1+1
PIN_FLIGHTS = [(d, n) for d in ("g2h", "h2g") for n in range(5)]
#: cloud step 2+2 (a known device), INIT / OKAY, READY 1+1
RESUME_FLIGHTS = [(d, n) for d in ("g2h", "h2g") for n in range(4)]


async def test_one_bit_flipped_in_each_pin_flight_over_tcp(lab: Lab) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    failures = []
    for k in PIN_FLIGHTS:
        for d in (paul, george):  # fresh devices for every flight
            shutil.rmtree(d.home)
            shutil.copytree(lab.templates[d.home.name].home, d.home)
        joined, proxy, host = await flipped_join(
            lab, paul, george, k, "{proxy}", "-m", "pin", "--pin", PIN,
            host_args=("-m", "pin", "--pin", PIN, "--yes", "--json"))
        assert len([f for f in proxy.frames if f[1] == k[0]]) > k[1], f"no flight {k}"
        if joined.rc == 0 or host.results or await paul.peers() or await george.peers():  # type: ignore[attr-defined]
            failures.append((k, joined.rc, joined.err.strip(),  # type: ignore[attr-defined]
                             host.results))  # type: ignore[attr-defined]
    assert failures == [], "\n".join(map(str, failures))


async def test_one_bit_flipped_in_each_resume_flight_over_tcp(lab: Lab, tmp_path: Path) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--pin", PIN, "--yes", "--json")
    (await george.join(host.target, "-m", "pin", "--pin", PIN)).ok()
    await host.stop()
    saved = [(d, tmp_path / d.home.name) for d in (paul, george)]
    for d, where in saved:
        shutil.copytree(d.home, where)
    before = (await paul.peers(), await george.peers())
    # Once George's INIT is sent (flipped or not, or a later flight), the digest it nominated is
    # spent whatever became of the attempt (docs/security.md rule 4, "A digest is spent once
    # sent"); a flip in the cloud step, before it, leaves it: nothing else changes either way
    spent = (before[0], [dict(p, prekeys=p["prekeys"] - 1) for p in before[1]])
    failures = []
    for k in RESUME_FLIGHTS:
        for d, where in saved:  # both devices as they were after the pairing
            shutil.rmtree(d.home)
            shutil.copytree(where, d.home)
        joined, proxy, host = await flipped_join(
            lab, paul, george, k, "Paul's phone", "-t", "{proxy}",
            host_args=("-m", "resume", "--yes", "--json"))
        assert len([f for f in proxy.frames if f[1] == k[0]]) > k[1], f"no flight {k}"
        after = (await paul.peers(), await george.peers())
        if joined.rc == 0 or host.results or after not in (before, spent):  # type: ignore[attr-defined]
            failures.append((k, joined.rc, joined.err.strip(),  # type: ignore[attr-defined]
                             host.results, after, spent))  # type: ignore[attr-defined]
    assert failures == [], "\n".join(map(str, failures))


# -- (b) bit flips in memory, every method, cloud step included ---------------------------------


class Transcript:
    """MessagePipe's transcript, computed from the messages one side sent and received."""

    def __init__(self, guest: bool) -> None:
        self.guest = guest
        self.sent = hashlib.sha256(b"pairkit/1 transcript direction")
        self.received = hashlib.sha256(b"pairkit/1 transcript direction")

    def absorb(self, h: object, message: bytes) -> None:
        h.update(len(message).to_bytes(4, "big"))  # type: ignore[attr-defined]
        h.update(message)  # type: ignore[attr-defined]

    def value(self) -> bytes:
        sent, received = self.sent.digest(), self.received.digest()
        g2h, h2g = (sent, received) if self.guest else (received, sent)
        return hashlib.sha256(b"pairkit/1 transcript" + g2h + h2g).digest()


EVERY = [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME, Method.KK]


def full_run(method: Method, flip: int | None, seed: int) -> tuple[bool, int]:
    """Cloud step then pairing, in memory; message ``flip`` (counted over both) has its last
    bit flipped.  (whether the two sides would both confirm the session, messages moved)."""
    count = [0]
    tg, th = Transcript(True), Transcript(False)

    def tamper(direction: str, data: bytes) -> bytes:
        sender, receiver = (tg, th) if direction == "g2h" else (th, tg)
        sender.absorb(sender.sent, data)
        out = flip_last_bit(data) if count[0] == flip else data
        count[0] += 1
        receiver.absorb(receiver.received, out)
        return out

    cloud_g = CloudGuest(name="George", clouds=(), mac=lambda _c, _d: bytes(32),
                         static=bytes(32))
    cloud_h = CloudHost(clouds=(), mac=lambda _c, _d: bytes(32), static=bytes(32))
    cloud_h.start(0.0)
    cloud_g.start(0.0)
    run({"guest": cloud_g, "host": cloud_h}, [("guest", "host")],
        answers={"host": Grant(Role.GUEST, 60)}, tamper=tamper)
    if not (cloud_g.done and cloud_h.done):
        return False, count[0]
    pair = pair_for(method, seed, start=False)
    pair.guest.bind_context(tg.value())
    pair.host._context = th.value()  # what run_host passes as ``context=``
    pair.guest.start(0.0)
    pair.run(answers={"guest": compare_codes, "host": compare_codes}, tamper=tamper)
    g, h = pair.guest.session, pair.host.session
    if g is None or h is None:
        return False, count[0]
    # confirm(): each side's READY, sealed under its send key with its own transcript,
    # must open under the other's receive key and carry the same transcript.
    ok = True
    for (a, ta), (b, tb) in (((g, tg), (h, th)), ((h, th), (g, tg))):
        sender = SecureChannel(ChannelConfig(mtu=65535), send_key=a.send_key,
                               recv_key=a.recv_key)
        receiver = SecureChannel(ChannelConfig(mtu=65535), send_key=b.send_key,
                                 recv_key=b.recv_key)
        try:
            got = None
            for piece in sender.seal(READY + ta.value()):
                got = receiver.open(piece)
        except PairingError:
            ok = False
            continue
        ok = ok and got == READY + tb.value()
    return ok, count[0]


@pytest.mark.parametrize("method", EVERY, ids=[m.label for m in EVERY])
def test_one_bit_flipped_in_each_flight_in_memory(method: Method) -> None:
    honest, total = full_run(method, None, seed=300)
    assert honest, "the honest run must confirm"
    assert total >= 6
    survived = [k for k in range(total) if full_run(method, k, seed=300)[0]]
    assert survived == [], f"{method.label}: flips in flights {survived} went unnoticed"


async def test_flipping_the_ninth_frame_of_a_pin_join_leaves_nothing_stored(lab: Lab) -> None:
    """Frame 8 counted over both directions (after cloud 4 and pin 4) is the host's READY in
    the runs seen.  Seen failing: the guest ends with 'a record failed authentication' and
    stores nothing, while the host received the guest's READY, sent the membership, stored
    George and printed a successful pairing (the host never learns its READY was lost)."""
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, "-m", "pin", "--pin", PIN, "--yes", "--json")
    proxy = await Proxy(address_of(host), lambda d, i, p: flip_last_bit(p) if i == 8 else p
                        ).start()
    try:
        joined = await george.join(proxy.target, "-m", "pin", "--pin", PIN, "--json")
        with contextlib.suppress(AssertionError):
            await host.wait_for(r"^error: guest ", timeout=8)
    finally:
        await proxy.close()
    assert joined.rc != 0
    assert host.results == [], f"the host stored a guest that failed: {host.results}"
    assert await paul.peers() == [] and await george.peers() == []
