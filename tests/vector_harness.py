"""Known-answer vectors for pairkit's own protocols (docs/protocol.md): make and replay them.

    python -m tests.vector_harness --write     # regenerate tests/vectors/pairkit-methods.json

Run it only when a change to the protocol is intended; the vectors then change in the same
commit, and docs/protocol.md with them.

Every exchange runs the real machines.  Their randomness comes from :class:`Stream`, a
counter-based generator any implementation can rebuild: the byte stream of ``(seed, label)`` is

    SHA-256("pairkit/1 test vectors" || seed (4 bytes, big-endian) || label || 0x00 || i (4 bytes,
    big-endian))  for i = 0, 1, 2, ...  concatenated

and each draw of n bytes takes the next n bytes.  Each party has its own stream (``guest``,
``host``, ``cloud guest``, ``cloud host``), so either side can be replayed alone against the
other side's recorded messages; every draw is recorded in the vector too (``draws``).  The
long-term inputs (identity keys, the PIN, the QR code, the cloud secret, the records of a known
peer, the key server's answer for ``ttp``) are made once by :func:`make_inputs` and stored;
:func:`build` makes the machines from the stored inputs only, for making and replaying alike.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from pairkit.driver import MessagePipe
from pairkit.pairing import wire
from pairkit.pairing.channel import ChannelConfig, SecureChannel
from pairkit.pairing.cloud import CloudGuest, CloudHost, Grant, HostInfo, Role
from pairkit.pairing.crypto import hkdf
from pairkit.pairing.machine import Machine, Question
from pairkit.pairing.messages import Accept, Offer
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Prekey,
    Session,
    _qr_psk,
    _th,
    prekey_holder,
)
from pairkit.pairing.negotiation import Caps, Method, methods_from_mask, methods_mask
from pairkit.pairing.qr import QrCode
from pairkit.pairing.ttp import (
    DeviceRecord,
    SkDelivery,
    TtpKeyNeeded,
    TtpLinkConfig,
    TtpLinkGuest,
    TtpLinkHost,
    link_context,
)

VECTORS = Path(__file__).with_name("vectors") / "pairkit-methods.json"
#: the wall clock (Unix seconds) both sides read; every monotonic clock reads 0
WALL_NOW = 1_800_000_000
QR_TTL = 600
QR_HINT = "tcp:127.0.0.1:7000"
#: a non-empty pre-pairing context for the cases without a cloud step (docs/protocol.md §2)
CONTEXT = bytes(range(32))
#: the link MTU the transcript pipes run over (every message is fragmented, as on BLE)
PIPE_MTU = 20
READY = b"\x00pairkit/1 ready"
CLOUD = "paul-cloud"

CASES: list[dict[str, Any]] = [
    {"id": "pin", "method": "pin", "seed": 1},
    {"id": "pin-context", "method": "pin", "seed": 2, "context": True},
    {"id": "qr", "method": "qr", "seed": 3},
    {"id": "qr-context", "method": "qr", "seed": 4, "context": True},
    {"id": "compare", "method": "compare", "seed": 5},
    {"id": "compare-context", "method": "compare", "seed": 6, "context": True},
    {"id": "clear-justworks", "method": "clear", "seed": 7},
    {"id": "clear-mitm-context", "method": "clear", "seed": 8, "context": True, "mitm": True},
    {"id": "resume", "method": "resume", "seed": 9},
    {"id": "resume-context", "method": "resume", "seed": 10, "context": True},
    {"id": "resume-stale-kk", "method": "resume", "seed": 11, "stale": True},
    {"id": "resume-stale-kk-context", "method": "resume", "seed": 12, "stale": True,
     "context": True},
    {"id": "kk", "method": "kk", "seed": 13},
    {"id": "kk-context", "method": "kk", "seed": 14, "context": True},
    {"id": "ttp", "method": "ttp", "seed": 15},
    {"id": "ttp-context", "method": "ttp", "seed": 16, "context": True},
    {"id": "cloud-member-then-pin", "method": "pin", "seed": 17, "cloud": "member"},
    {"id": "cloud-join-then-qr", "method": "qr", "seed": 18, "cloud": "join"},
    {"id": "cloud-member-then-compare", "method": "compare", "seed": 19, "cloud": "member"},
    {"id": "cloud-join-then-ttp", "method": "ttp", "seed": 20, "cloud": "join"},
]


# -- randomness ---------------------------------------------------------------------------------


class Stream:
    """The counter-based deterministic rng of the module docstring; records every draw."""

    def __init__(self, seed: int, label: str) -> None:
        self.seed, self.label = seed, label
        self._buf = b""
        self._counter = 0
        self.draws: list[str] = []

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += hashlib.sha256(
                b"pairkit/1 test vectors" + self.seed.to_bytes(4, "big") + self.label.encode()
                + b"\x00" + self._counter.to_bytes(4, "big")
            ).digest()
            self._counter += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        self.draws.append(out.hex())
        return out


# -- inputs ---------------------------------------------------------------------------------------


def _identity_json(me: LocalIdentity) -> dict[str, str]:
    return {
        "name": me.name, "static_private": me.static_private.hex(),
        "static_public": me.static_public.hex(), "signing_public": me.signing_public.hex(),
        "device_id": me.device_id.hex(),
    }


def identity_of(data: dict[str, str]) -> LocalIdentity:
    """A LocalIdentity from the stored inputs (the public values follow from the private)."""
    private = bytes.fromhex(data["static_private"])
    return LocalIdentity.generate(
        data["name"], _Fixed(private, bytes.fromhex(data["signing_public"]))
    )


class _Fixed:
    """An rng that hands out given values in order (to rebuild stored inputs)."""

    def __init__(self, *values: bytes) -> None:
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        value = self._values.pop(0)
        assert len(value) == n
        return value


def make_inputs(case: dict[str, Any]) -> dict[str, Any]:
    """The long-term inputs of a case, drawn once from the case's streams and then stored."""
    seed, method = case["seed"], case["method"]
    guest_me = LocalIdentity.generate("George", Stream(seed, "identity guest"))
    host_me = LocalIdentity.generate("Paul", Stream(seed, "identity host"))
    state = HostState(rng=Stream(seed, "host state"))
    inputs: dict[str, Any] = {
        "seed": seed,
        "guest": _identity_json(guest_me),
        "host": _identity_json(host_me),
        "method": method,
        "wall_now": WALL_NOW,
        "link_encrypted": method == "clear",
        "link_mitm": bool(case.get("mitm")),
        "context": CONTEXT.hex() if case.get("context") else "",
    }
    if method == "pin":
        inputs["pin"] = state.new_pin()
    if method == "qr":
        code = state.issue_qr(host_me.static_public, WALL_NOW, ttl=QR_TTL, hint=QR_HINT)
        inputs["qr_uri"] = code.to_uri()
        inputs["qr_secret"] = code.secret.hex()
    if method in ("resume", "kk"):
        inputs["known"] = _known_records(case, guest_me, host_me)
    if method == "ttp":
        ttp = Stream(seed, "key server")
        inputs["ttp"] = {"match_id": ttp(16).hex(), "sk": ttp(32).hex()}
    if case.get("cloud"):
        inputs["context"] = None  # the cloud step's transcript, filled in by make()
        inputs["cloud"] = {
            "secret": Stream(seed, "cloud secret")(32).hex(),
            "guest_clouds": [CLOUD] if case["cloud"] == "member" else [],
            "host_clouds": [CLOUD],
            "wants": int(Role.GUEST),
            "grant_seconds": 3600,
            # the host's hello response (§10): its name is the host identity's; sealed to a
            # member, in the clear to a stranger (the host is open to strangers here)
            "host_says": {"methods": methods_mask({Method.parse(method)}),
                          "caps": int(Caps.DISPLAY)},
        }
    return inputs


def _known_records(
    case: dict[str, Any], guest_me: LocalIdentity, host_me: LocalIdentity
) -> dict[str, Any]:
    """What each side keeps of the other after an earlier ``pin`` pairing (its prekeys)."""
    seed = case["seed"]
    state = HostState(rng=Stream(seed, "first state"))
    state.set_pin("482913")
    guest = GuestPairing(PairingConfig(), guest_me, method=Method.PIN, pin="482913",
                         rng=Stream(seed, "first guest"))
    host = HostPairing(PairingConfig(), host_me, state,
                       rng=Stream(seed, "first host"))
    host.start(0.0)
    guest.start(0.0)
    shuttle({"guest": guest, "host": host}, {})
    assert guest.session is not None and host.session is not None
    theirs = list(guest.session.new_their_prekeys)
    if case.get("stale"):
        theirs.insert(0, bytes(16))  # a digest the host never gave (or already used)
    if case["method"] == "kk":
        theirs = []  # no prekey left: the guest goes straight to KK
    return {
        "guest_their_prekeys": [d.hex() for d in theirs],
        "host_our_prekeys": [
            {"digest": p.digest.hex(), "private": p.private.hex()}
            for p in host.session.new_our_prekeys
        ],
        "authenticated": True,
    }


# -- building the machines from the inputs ----------------------------------------------------


@dataclasses.dataclass
class Exchange:
    inputs: dict[str, Any]
    guest_me: LocalIdentity
    host_me: LocalIdentity
    streams: dict[str, Stream]
    guest: Machine | None = None
    host: Machine | None = None
    cloud_guest: CloudGuest | None = None
    cloud_host: CloudHost | None = None


def _cloud_mac(secret: bytes) -> Any:
    key = hkdf(secret, salt=b"", info=b"pairkit/1 cloud auth")

    def mac(cloud_id: str, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    return mac


def build(inputs: dict[str, Any]) -> Exchange:
    """The cloud machines (if any); the pairing machines come from :func:`build_pairing` once
    the context is known."""
    seed = inputs["seed"]
    ex = Exchange(inputs, identity_of(inputs["guest"]), identity_of(inputs["host"]),
                  {label: Stream(seed, label)
                   for label in ("guest", "host", "cloud guest", "cloud host")})
    cloud = inputs.get("cloud")
    if cloud:
        mac = _cloud_mac(bytes.fromhex(cloud["secret"]))
        ex.cloud_guest = CloudGuest(
            name=ex.guest_me.name, clouds=tuple(cloud["guest_clouds"]), mac=mac,
            static=ex.guest_me.static_public, wants=Role(cloud["wants"]),
            rng=ex.streams["cloud guest"],
        )
        says = cloud["host_says"]
        ex.cloud_host = CloudHost(
            clouds=tuple(cloud["host_clouds"]), mac=mac, static=ex.host_me.static_public,
            info=HostInfo(ex.host_me.name, methods_from_mask(says["methods"]),
                          Caps(says["caps"])),
            rng=ex.streams["cloud host"],
        )
        ex.cloud_host.start(0.0)
    return ex


def build_pairing(ex: Exchange, context: bytes) -> None:
    inputs = ex.inputs
    method = Method.parse(inputs["method"])
    guest_rng, host_rng = ex.streams["guest"], ex.streams["host"]
    if method is Method.TTP:
        ex.guest = TtpLinkGuest(TtpLinkConfig(), ex.guest_me, rng=guest_rng, context=context)
        ex.host = TtpLinkHost(TtpLinkConfig(), ex.host_me, rng=host_rng,
                              context=context)
        ex.host.start(0.0)
        return
    kwargs: dict[str, Any] = {}
    state = HostState(rng=_Fixed())
    if method is Method.PIN:
        kwargs["pin"] = inputs["pin"]
        state.set_pin(inputs["pin"])
    if method is Method.QR:
        code = QrCode.parse(inputs["qr_uri"])
        kwargs["qr"] = code
        issuer = HostState(rng=_Fixed(code.secret))
        issued = issuer.issue_qr(code.host_static, WALL_NOW, ttl=code.expires - WALL_NOW,
                                 hint=code.hint)
        assert issued == code
        state = issuer
    known_guest: KnownPeer | None = None
    if method in (Method.RESUME, Method.KK):
        known = inputs["known"]
        h, g = ex.host_me, ex.guest_me
        kwargs["peer"] = KnownPeer(
            h.device_id, h.name, h.static_public, h.signing_public,
            their_prekeys=tuple(bytes.fromhex(d) for d in known["guest_their_prekeys"]),
            authenticated=known["authenticated"],
        )
        known_guest = KnownPeer(
            g.device_id, g.name, g.static_public, g.signing_public,
            our_prekeys=tuple(Prekey(bytes.fromhex(p["digest"]), bytes.fromhex(p["private"]))
                              for p in known["host_our_prekeys"]),
            authenticated=known["authenticated"],
        )
        state = HostState(rng=_Fixed(), known_peer=lambda i: known_guest
                          if known_guest and i == known_guest.device_id else None,
                          peer_by_prekey=lambda d: prekey_holder(
                              [known_guest] if known_guest else [], d))
        method = Method.RESUME  # the guest asks for resume; with no prekey left it runs kk
    enc, mitm = inputs["link_encrypted"], inputs["link_mitm"]
    ex.guest = GuestPairing(PairingConfig(), ex.guest_me, method=method, link_encrypted=enc,
                            link_mitm=mitm, wall_now=inputs["wall_now"], context=context,
                            rng=guest_rng, **kwargs)
    ex.host = HostPairing(PairingConfig(), ex.host_me, state, link_encrypted=enc,
                          link_mitm=mitm, wall_now=inputs["wall_now"], context=context,
                          rng=host_rng)
    ex.host.start(0.0)


def answer_for(ex: Exchange, side: str, question: Question) -> Any:
    """Every question answered yes: codes confirmed, a join granted, the key server's SK."""
    if question.hook == "allow_join":
        return Grant(Role.GUEST, ex.inputs["cloud"]["grant_seconds"])
    if isinstance(question, TtpKeyNeeded):
        ttp = ex.inputs["ttp"]
        other = ex.host_me if side == "guest" else ex.guest_me
        return SkDelivery(
            match_id=bytes.fromhex(ttp["match_id"]), sk=bytes.fromhex(ttp["sk"]),
            peer=DeviceRecord(other.device_id, other.name, other.static_public,
                              other.signing_public),
        )
    return True


# -- running ------------------------------------------------------------------------------------


def shuttle(machines: dict[str, Machine], answer: Any) -> list[tuple[str, bytes]]:
    """Deliver every message in order, answering every question as soon as it is asked (a
    person answers before the next message is read); (sender, bytes) in order."""
    out: list[tuple[str, bytes]] = []
    queue: list[tuple[str, bytes]] = []
    answer = answer or (lambda side, q: True)

    def collect() -> None:
        for name, machine in machines.items():
            for event in machine.events():
                if isinstance(event, Question) and not (machine.done or machine.failed):
                    machine.answer(event, answer(name, event), 0.0)
        for name, machine in machines.items():
            queue.extend((name, data) for data in machine.outgoing())

    for _ in range(64):
        collect()
        if not queue:
            return out
        name, data = queue.pop(0)
        out.append((name, data))
        other = machines["host" if name == "guest" else "guest"]
        if not other.failed and not other.done:
            other.receive(data, 0.0)
    raise AssertionError("too many round trips")


class _MemLink:
    def __init__(self, out: asyncio.Queue[bytes], into: asyncio.Queue[bytes]) -> None:
        self.mtu = PIPE_MTU
        self._out, self._in = out, into

    async def send(self, data: bytes) -> None:
        await self._out.put(data)

    async def recv(self) -> bytes:
        return await self._in.get()


def pipe_transcript(messages: list[tuple[str, bytes]]) -> bytes:
    """The messages through two real MessagePipes (fragmented at MTU 20); the transcript both
    compute (docs/protocol.md §2)."""

    async def go() -> tuple[bytes, bytes]:
        a: asyncio.Queue[bytes] = asyncio.Queue()
        b: asyncio.Queue[bytes] = asyncio.Queue()
        guest = MessagePipe(_MemLink(a, b), guest=True)
        host = MessagePipe(_MemLink(b, a), guest=False)
        for who, data in messages:
            src, dst = (guest, host) if who == "guest" else (host, guest)
            await src.send(data)
            assert await dst.recv() == data
        return guest.transcript(), host.transcript()

    g, h = asyncio.run(go())
    assert g == h
    return g


def ready_records(guest: Session, host: Session, transcript: bytes) -> dict[str, str]:
    """The first record each way on the secure channel (READY, docs/protocol.md §11), as the
    product's channel seals them, each checked by the peer's channel."""
    out = {}
    for name, me, peer in (("host", host, guest), ("guest", guest, host)):
        cfg = ChannelConfig(mtu=65535)
        (fragment,) = SecureChannel(cfg, send_key=me.send_key, recv_key=me.recv_key).seal(
            READY + transcript
        )
        opened = SecureChannel(cfg, send_key=peer.send_key, recv_key=peer.recv_key).open(fragment)
        assert opened == READY + transcript
        record = fragment[1 + len(_leb128(len(fragment))):]
        assert fragment[0] == 0xC0 and fragment[1:] == _leb128(len(record)) + record
        out[name] = record.hex()
    return out


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _flight(who: str, data: bytes) -> dict[str, str]:
    return {"from": who, "type": type(wire.decode(data)).__name__, "hex": data.hex()}


def run_cloud(ex: Exchange) -> list[tuple[str, bytes]]:
    if ex.cloud_guest is None or ex.cloud_host is None:
        return []
    ex.cloud_guest.start(0.0)
    msgs = shuttle({"guest": ex.cloud_guest, "host": ex.cloud_host},
                   lambda side, q: answer_for(ex, side, q))
    assert ex.cloud_guest.done and ex.cloud_host.done
    return msgs


def make(case: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a case from its inputs (made afresh unless given) and record everything."""
    inputs = json.loads(json.dumps(inputs or make_inputs(case)))
    ex = build(inputs)
    cloud = run_cloud(ex)
    if cloud:
        inputs["context"] = pipe_transcript(cloud).hex()
    context = bytes.fromhex(inputs["context"])
    build_pairing(ex, context)
    assert ex.guest is not None and ex.host is not None
    ex.guest.start(0.0)  # type: ignore[attr-defined]
    messages = shuttle({"guest": ex.guest, "host": ex.host},
                       lambda side, q: answer_for(ex, side, q))
    g, h = ex.guest.session, ex.host.session  # type: ignore[attr-defined]
    assert g is not None and h is not None, (ex.guest.error, ex.host.error)
    if ex.cloud_guest is not None and ex.cloud_host is not None:
        ex.cloud_guest.bind(g.peer.static_public)  # the proofs name the proven keys
        ex.cloud_host.bind(h.peer.static_public)
    transcript = pipe_transcript(cloud + messages)
    vector: dict[str, Any] = {
        "id": case["id"],
        "inputs": inputs,
        "cloud_step": [_flight(w, d) for w, d in cloud],
        "messages": [_flight(w, d) for w, d in messages],
        "method": g.method.label,
        **_secrets(ex, context, messages),
        "guest_send_key": g.send_key.hex(),
        "guest_recv_key": g.recv_key.hex(),
        "host_send_key": h.send_key.hex(),
        "host_recv_key": h.recv_key.hex(),
        "fingerprint": g.fingerprint,
        "host_fingerprint": h.fingerprint,
        "guest_authenticated_host": g.peer.authenticated,
        "host_authenticated_guest": h.peer.authenticated,
        "transcript": transcript.hex(),
        "ready": ready_records(g, h, transcript),
        "draws": {k: s.draws for k, s in ex.streams.items() if s.draws},
    }
    return vector


def _secrets(ex: Exchange, context: bytes, messages: list[tuple[str, bytes]]) -> dict[str, Any]:
    """th, the Noise handshake hash and each method's intermediate values (for checking a new
    implementation step by step; the test recomputes them from the spec)."""
    out: dict[str, Any] = {}
    guest, host = ex.guest, ex.host
    decoded = [wire.decode(d) for _, d in messages]
    offers = [m for m in decoded if isinstance(m, Offer)]
    accepts = [m for m in decoded if isinstance(m, Accept)]
    if offers and accepts:
        out["th"] = _th(offers[-1].hello, accepts[-1].hello, context).hex()
        assert getattr(guest, "_th", bytes.fromhex(out["th"])).hex() == out["th"]
    hs = getattr(guest, "_hs", None)
    if hs is not None and hs.complete:
        out["noise_handshake_hash"] = hs.handshake_hash.hex()
        assert host._hs.handshake_hash == hs.handshake_hash  # type: ignore[union-attr]
    inter: dict[str, str] = {}
    method = guest.session.method  # type: ignore[union-attr]
    if method is Method.PIN:
        inter["cpace_isk"] = guest._cpace.isk.hex()  # type: ignore[union-attr]
    elif method is Method.QR:
        inter["qr_psk"] = _qr_psk(guest._qr).hex()  # type: ignore[union-attr]
    elif method is Method.COMPARE:
        inter["guest_ephemeral_private"] = guest._eph.private_bytes_raw().hex()  # type: ignore[union-attr]
        inter["sk"] = guest._sk.hex()  # type: ignore[union-attr]
        assert host._sk == guest._sk  # type: ignore[union-attr]
    elif method is Method.CLEAR:
        inter["sk"] = host._sk.hex()  # type: ignore[union-attr]
    elif method is Method.RESUME:
        inter["guest_ephemeral_private"] = guest._eph.private_bytes_raw().hex()  # type: ignore[union-attr]
        # the host's first draw is its fresh key F_H (docs/protocol.md §8)
        inter["host_fresh_private"] = ex.streams["host"].draws[0]
    elif method is Method.TTP:
        inter["ttp_context"] = guest._context.hex()  # type: ignore[union-attr]
        inter["session_key"] = host._session_key.hex()  # type: ignore[union-attr]
        offer = next(m for m in offers)
        accept = next(m for m in accepts)
        assert link_context(offer, accept, context) == guest._context  # type: ignore[union-attr]
    if inter:
        out["intermediate"] = inter
    return out


def replay(vector: dict[str, Any], side: str) -> tuple[list[bytes], list[bytes], Session]:
    """Rebuild ``side`` from the vector's stored inputs and feed it the other side's recorded
    messages: (what it sent in the cloud step, what it sent in the pairing, its session)."""
    inputs = vector["inputs"]
    ex = build(inputs)
    other = "host" if side == "guest" else "guest"

    def play(me: Machine, recorded: list[dict[str, str]], start: bool) -> list[bytes]:
        sent: list[bytes] = []

        def drain() -> None:
            for event in me.events():
                if isinstance(event, Question):
                    me.answer(event, answer_for(ex, side, event), 0.0)
            sent.extend(me.outgoing())

        if start:
            me.start(0.0)  # type: ignore[attr-defined]
        drain()
        for m in recorded:
            if m["from"] == other:
                me.receive(bytes.fromhex(m["hex"]), 0.0)
                drain()
        assert me.done, me.error
        return sent

    cloud_sent: list[bytes] = []
    if ex.cloud_guest is not None and ex.cloud_host is not None:
        cloud_me = ex.cloud_guest if side == "guest" else ex.cloud_host
        cloud_sent = play(cloud_me, vector["cloud_step"], side == "guest")
    build_pairing(ex, bytes.fromhex(inputs["context"]))
    me = ex.guest if side == "guest" else ex.host
    assert me is not None
    sent = play(me, vector["messages"], side == "guest")
    session = me.session  # type: ignore[attr-defined]
    assert session is not None
    return cloud_sent, sent, session


def load() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write the vectors file")
    args = parser.parse_args()
    vectors = [make(c) for c in CASES]
    doc = {
        "about": "pairkit protocol version 1 known-answer vectors; see tests/vectors/README.md "
                 "and docs/protocol.md",
        "version": 1,
        "vectors": vectors,
    }
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.write:
        VECTORS.write_text(text)
        print(f"wrote {len(vectors)} vectors to {VECTORS}")
    else:
        print(text)


if __name__ == "__main__":
    main()
