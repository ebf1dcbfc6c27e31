"""Known-answer vectors for pairkit's own protocols (docs/protocol.md): make and replay them.

Every exchange runs the real machines with deterministic randomness: the guest, the host and
the host's state each draw from their own seeded stream (``seeded(seed, "guest")`` and so on),
so that either side can be replayed alone against the other side's recorded messages.

    python -m tests.vector_harness --write     # regenerate tests/vectors/pairkit-methods.json

Run it only when a change to the protocol is intended; the vectors then change in the same
commit, and docs/protocol.md with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from pairkit.pairing import wire
from pairkit.pairing.cloud import CloudGuest, CloudHost, Grant, Role
from pairkit.pairing.crypto import hkdf
from pairkit.pairing.machine import Machine, Question
from pairkit.pairing.methods import (
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    Session,
)
from pairkit.pairing.negotiation import Method
from tests.pair_harness import seeded

VECTORS = Path(__file__).with_name("vectors") / "pairkit-methods.json"
WALL_NOW = 1_800_000_000.0
#: a non-empty pre-pairing context (what a cloud step would give; see docs/protocol.md §2)
CONTEXT = bytes(range(32))

CASES: list[dict[str, Any]] = [
    {"id": "pin", "method": "pin", "seed": 1, "context": ""},
    {"id": "pin-context", "method": "pin", "seed": 2, "context": CONTEXT.hex()},
    {"id": "qr", "method": "qr", "seed": 3, "context": ""},
    {"id": "qr-context", "method": "qr", "seed": 4, "context": CONTEXT.hex()},
    {"id": "compare", "method": "compare", "seed": 5, "context": ""},
    {"id": "compare-context", "method": "compare", "seed": 6, "context": CONTEXT.hex()},
    {"id": "clear", "method": "clear", "seed": 7, "context": "", "mitm": False},
    {"id": "clear-mitm-context", "method": "clear", "seed": 8, "context": CONTEXT.hex(),
     "mitm": True},
    {"id": "resume", "method": "resume", "seed": 9, "context": ""},
    {"id": "resume-context", "method": "resume", "seed": 10, "context": CONTEXT.hex()},
    {"id": "resume-stale-kk", "method": "resume", "seed": 11, "context": "", "stale": True},
    {"id": "kk-context", "method": "kk", "seed": 12, "context": CONTEXT.hex()},
    {"id": "cloud-member-then-pin", "method": "pin", "seed": 13, "cloud": "member"},
    {"id": "cloud-join-then-qr", "method": "qr", "seed": 14, "cloud": "join"},
]


# -- building the two sides ------------------------------------------------------------------


def identity(name: str, seed: int) -> LocalIdentity:
    return LocalIdentity.generate(name, seeded(seed, f"identity {name}"))


def _known(session: Session) -> KnownPeer:
    return session.updated_peer(None)


@dataclasses.dataclass
class Setup:
    """Everything one case needs: identities, host state, what the guest knows."""

    case: dict[str, Any]
    guest_me: LocalIdentity
    host_me: LocalIdentity
    state: HostState
    guest_kwargs: dict[str, Any]
    link_encrypted: bool
    link_mitm: bool
    context: bytes


def setup(case: dict[str, Any]) -> Setup:
    seed = case["seed"]
    method = next(m for m in Method if m.label == case["method"])
    guest_me, host_me = identity("George", seed), identity("Paul", seed)
    records: dict[bytes, KnownPeer] = {}
    state = HostState(rng=seeded(seed, "state"), known_peer=records.get)
    kwargs: dict[str, Any] = {"method": method, "wall_now": WALL_NOW}
    if method is Method.PIN:
        kwargs["pin"] = state.new_pin()
    elif method is Method.QR:
        kwargs["qr"] = state.issue_qr(host_me.static_public, WALL_NOW, ttl=600, hint="tcp")
    elif method in (Method.RESUME, Method.KK):
        first = _run_pair(
            _machines(guest_me, host_me, HostState(rng=seeded(seed, "first state")),
                      {"method": Method.PIN, "pin": "482913"}, seed=seed, label="first",
                      context=b"", enc=False, mitm=False, pin="482913")
        )
        g, h = first
        records[guest_me.device_id] = _known(h)
        peer = _known(g)
        if case.get("stale"):
            peer = dataclasses.replace(peer, their_prekeys=(b"\x00" * 16, *peer.their_prekeys))
        if method is Method.KK:
            peer = dataclasses.replace(peer, their_prekeys=())
        kwargs["method"] = Method.RESUME
        kwargs["peer"] = peer
    encrypted = method is Method.CLEAR
    return Setup(case, guest_me, host_me, state, kwargs, encrypted,
                 bool(case.get("mitm")), bytes.fromhex(case.get("context", "")))


def _machines(
    guest_me: LocalIdentity, host_me: LocalIdentity, state: HostState, kwargs: dict[str, Any],
    *, seed: int, label: str, context: bytes, enc: bool, mitm: bool, pin: str | None = None,
) -> tuple[GuestPairing, HostPairing]:
    if pin is not None:
        state.set_pin(pin)
    guest = GuestPairing(PairingConfig(), guest_me, link_encrypted=enc, link_mitm=mitm,
                         context=context, rng=seeded(seed, f"{label} guest"), **kwargs)
    host = HostPairing(PairingConfig(), host_me, state, now=0.0, link_encrypted=enc,
                       link_mitm=mitm, wall_now=WALL_NOW, context=context,
                       rng=seeded(seed, f"{label} host"))
    return guest, host


def _run_pair(pair: tuple[GuestPairing, HostPairing]) -> tuple[Session, Session]:
    guest, host = pair
    guest.start(0.0)
    transcript = shuttle({"guest": guest, "host": host})
    assert guest.session is not None and host.session is not None, transcript
    return guest.session, host.session


def shuttle(machines: dict[str, Machine]) -> list[tuple[str, bytes]]:
    """Deliver every message in order, answering every question yes as soon as it is asked
    (a person answers before the next message is read); (sender, bytes) in order."""
    out: list[tuple[str, bytes]] = []
    queue: list[tuple[str, bytes]] = []

    def collect() -> None:
        for machine in machines.values():
            for event in machine.events():
                if isinstance(event, Question) and not (machine.done or machine.failed):
                    machine.answer(event, _answer(event), 0.0)
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


def _answer(event: Question) -> Any:
    if event.hook == "allow_join":
        return Grant(Role.GUEST, 3600)
    return True


# -- the cloud step ----------------------------------------------------------------------------


def cloud_step(case: dict[str, Any], s: Setup) -> tuple[list[tuple[str, bytes]], bytes]:
    """Run the cloud step (member proof or join request); its messages and the transcript
    hash both sides compute (MessagePipe.transcript, docs/protocol.md §2)."""
    seed = case["seed"]
    secret = seeded(seed, "cloud secret")(32)

    def mac(cloud_id: str, data: bytes) -> bytes:
        import hashlib
        import hmac

        key = hkdf(secret, salt=b"", info=b"pairkit/1 cloud auth")
        return hmac.new(key, data, hashlib.sha256).digest()

    clouds = ("paul-cloud",) if case["cloud"] == "member" else ()
    guest = CloudGuest(name="George", clouds=clouds, mac=mac, static=s.guest_me.static_public,
                       rng=seeded(seed, "cloud guest"))
    host = CloudHost(clouds=("paul-cloud",), mac=mac, static=s.host_me.static_public, now=0.0,
                     rng=seeded(seed, "cloud host"))
    guest.start(0.0)
    messages = shuttle({"guest": guest, "host": host})
    assert guest.done and host.done
    return messages, transcript_of(messages)


def transcript_of(messages: list[tuple[str, bytes]]) -> bytes:
    """The pre-pairing transcript hash of docs/protocol.md §2."""
    import hashlib

    g2h = hashlib.sha256(b"pairkit/1 transcript direction")
    h2g = hashlib.sha256(b"pairkit/1 transcript direction")
    for sender, data in messages:
        h = g2h if sender == "guest" else h2g
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return hashlib.sha256(b"pairkit/1 transcript" + g2h.digest() + h2g.digest()).digest()


# -- making a vector ----------------------------------------------------------------------------


def make(case: dict[str, Any]) -> dict[str, Any]:
    s = setup(case)
    cloud: list[tuple[str, bytes]] = []
    if case.get("cloud"):
        cloud, s.context = cloud_step(case, s)
    guest, host = _machines(s.guest_me, s.host_me, s.state, s.guest_kwargs, seed=case["seed"],
                            label="vector", context=s.context, enc=s.link_encrypted,
                            mitm=s.link_mitm)
    guest.start(0.0)
    messages = shuttle({"guest": guest, "host": host})
    g, h = guest.session, host.session
    assert g is not None and h is not None, (guest.error, host.error)
    kw = s.guest_kwargs
    return {
        "id": case["id"],
        "case": case,
        "inputs": {
            "guest_static_private": s.guest_me.static_private.hex(),
            "host_static_private": s.host_me.static_private.hex(),
            "guest_signing_public": s.guest_me.signing_public.hex(),
            "host_signing_public": s.host_me.signing_public.hex(),
            "pin": kw.get("pin"),
            "qr_uri": kw["qr"].to_uri() if kw.get("qr") else None,
            "context": s.context.hex(),
            "link_encrypted": s.link_encrypted,
            "link_mitm": s.link_mitm,
        },
        "cloud_step": [[who, data.hex()] for who, data in cloud],
        "messages": [[who, data.hex()] for who, data in messages],
        "message_types": [type(wire.decode(data)).__name__ for _, data in messages],
        "method": g.method.label,
        "fingerprint": g.fingerprint,
        "guest_send_key": g.send_key.hex(),
        "guest_recv_key": g.recv_key.hex(),
        "host_send_key": h.send_key.hex(),
        "host_recv_key": h.recv_key.hex(),
        "guest_authenticated_host": g.peer.authenticated,
        "host_authenticated_guest": h.peer.authenticated,
    }


def replay(vector: dict[str, Any], side: str) -> tuple[list[bytes], Session]:
    """Rebuild ``side`` from the vector's inputs and feed it the other side's recorded
    messages; what it sends, and its session."""
    case = vector["case"]
    s = setup(case)
    if case.get("cloud"):
        s.context = bytes.fromhex(vector["inputs"]["context"])
    guest, host = _machines(s.guest_me, s.host_me, s.state, s.guest_kwargs, seed=case["seed"],
                            label="vector", context=s.context, enc=s.link_encrypted,
                            mitm=s.link_mitm)
    me: Machine = guest if side == "guest" else host
    if side == "guest":
        guest.start(0.0)
    sent: list[bytes] = []
    theirs = [bytes.fromhex(d) for who, d in vector["messages"] if who != side]

    def drain() -> None:
        for event in me.events():
            if isinstance(event, Question):
                me.answer(event, _answer(event), 0.0)
        sent.extend(me.outgoing())

    drain()
    for data in theirs:
        me.receive(data, 0.0)
        drain()
    drain()
    session = me.session  # type: ignore[attr-defined]
    assert session is not None, me.error
    return sent, session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write the vectors file")
    args = parser.parse_args()
    vectors = [make(c) for c in CASES]
    text = json.dumps({"version": 1, "vectors": vectors}, indent=1, sort_keys=True) + "\n"
    if args.write:
        VECTORS.write_text(text)
        print(f"wrote {len(vectors)} vectors to {VECTORS}")
    else:
        print(text)


if __name__ == "__main__":
    main()
