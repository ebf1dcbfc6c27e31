"""Attack 1 over TCP between processes: Mallory knows only a member's public key.

George paired with Paul's host (a real ``pairkit host`` process).  Mallory has George's public
static key, id and name (from a QR code George showed, or a peer list) and Paul's public key;
she runs the real guest machines over a real TCP link, announcing George's key with her own
private key, for every method, and, as a second try, pairs as herself while claiming George's
device id in the cloud step (to skip the owner's prompt).  Paul's host must end with an error,
store nothing, and keep its record of George exactly as it was.
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from pairkit.pairing.crypto import digest
from pairkit.pairing.errors import PairingError
from pairkit.pairing.methods import KnownPeer, LocalIdentity
from pairkit.pairing.negotiation import Method
from pairkit.pairing.qr import QrCode
from tests.attack_harness import (
    address_of,
    evil_join,
    identity_of,
    open_ks,
    peer_record,
    posing_as,
)
from tests.cli_helpers import HostProcess, Lab

PIN = "482913"
HOST_ARGS = ("-m", "pin", "-m", "qr", "-m", "compare", "-m", "clear", "-m", "resume",
             "--allow-insecure", "--pin", PIN, "--yes", "--json")
METHODS = ["pin", "qr", "compare", "clear", "resume", "resume-stolen-digests", "kk"]


async def paired(lab: Lab) -> tuple[HostProcess, object, object]:
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS)
    (await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")).ok()
    await host.next_result()
    return host, paul, george


def record_view(device: object, peer: str) -> dict[str, object]:
    rec = peer_record(device, peer)  # type: ignore[arg-type]
    return {
        "static": rec.static_public, "signing": rec.signing_public, "name": rec.name,
        "authenticated": rec.authenticated, "method": rec.method,
        "their_prekeys": list(rec.their_prekeys),
        "our_prekeys": [bytes(r[0]) for r in rec.our_prekeys], "extra": dict(rec.extra),
        "last_seen": rec.last_seen,
    }


QR_LINE = r"QR code \(valid \d+ s\): (pairkit:qr\?\S+)"


def latest(host: HostProcess, pattern: str) -> str:
    """What the host shows now (its last line matching ``pattern``)."""
    found = [m.group(1) for line in host.lines if (m := re.search(pattern, line))]
    return found[-1]


async def mallory_input(method: str, host: HostProcess, mark: int, paul: object,
                        george: object) -> dict[str, object]:
    """What Mallory has for ``method``: the PIN, the QR code shown now, Paul's public record."""
    ks = open_ks(paul)  # type: ignore[arg-type]
    paul_known = KnownPeer(
        device_id=bytes.fromhex(ks.device_id), name=ks.name, static_public=ks.static_public,
        signing_public=ks.signing_public,
        their_prekeys=tuple(os.urandom(16) for _ in range(2)),  # guessed: they were never public
    )
    if method == "pin":
        return {"method": Method.PIN, "pin": latest(host, r"^PIN: (\d{6})")}
    if method == "qr":
        return {"method": Method.QR, "qr": QrCode.parse(latest(host, QR_LINE))}
    if method == "compare":
        return {"method": Method.COMPARE}
    if method == "clear":
        return {"method": Method.CLEAR, "allow_insecure": True}
    if method == "resume":
        return {"method": Method.RESUME, "peer": paul_known}
    if method == "resume-stolen-digests":
        # The strongest Mallory: she somehow read George's prekey digests for Paul.
        stolen = tuple(peer_record(george, "Paul's phone").their_prekeys)  # type: ignore[arg-type]
        return {"method": Method.RESUME,
                "peer": dataclasses.replace(paul_known, their_prekeys=stolen)}
    assert method == "kk"
    return {"method": Method.KK, "peer": dataclasses.replace(paul_known, their_prekeys=())}


@pytest.mark.parametrize("method", METHODS)
async def test_mallory_with_a_members_public_key_is_refused(lab: Lab, method: str) -> None:
    host, paul, george = await paired(lab)
    george_id = identity_of(george)  # type: ignore[arg-type]
    before = record_view(paul, "George's phone")
    peers_before = await paul.peers()  # type: ignore[attr-defined]
    mark = host.mark()
    kwargs = await mallory_input(method, host, mark, paul, george)
    claim = george_id.device_id if kwargs["method"] in (Method.RESUME, Method.KK) else None
    out = await evil_join(address_of(host), posing_as(george_id), claim=claim, **kwargs)
    assert isinstance(out.error, PairingError), (method, out)
    assert out.membership is None
    await host.wait_for(r"^error: guest ", since=mark)
    assert len(host.results) == 1, host.results  # only George's real pairing
    after = record_view(paul, "George's phone")
    if method == "resume-stolen-digests":
        # With the real digest the host consumes that prekey before answering (rule 4):
        # the one thing Mallory can change.  Nothing else moves.
        used = set(before["our_prekeys"]) - set(after["our_prekeys"])  # type: ignore[arg-type]
        assert len(used) <= 1
        before = {k: v for k, v in before.items() if k != "our_prekeys"}
        after = {k: v for k, v in after.items() if k != "our_prekeys"}
    assert after == before, "Paul's record of George changed"
    peers_after = await paul.peers()  # type: ignore[attr-defined]
    if method != "resume-stolen-digests":
        assert peers_after == peers_before
    assert [p["id"] for p in peers_after] == [george_id.device_id.hex()]
    assert host.proc.returncode is None


@pytest.mark.parametrize("method", ["pin", "qr", "compare"])
async def test_mallory_claiming_a_members_id_in_the_cloud_step_then_pairing_as_herself(
    lab: Lab, method: str
) -> None:
    """The JoinRequest names George's id (a returning device: no owner prompt); the pairing
    that follows proves Mallory's own key.  The host must see the claim was not proven."""
    host, paul, george = await paired(lab)
    george_id = identity_of(george)  # type: ignore[arg-type]
    before = record_view(paul, "George's phone")
    mark = host.mark()
    kwargs = await mallory_input(method, host, mark, paul, george)
    mallory = LocalIdentity.generate("Mallory")
    out = await evil_join(address_of(host), mallory, claim=george_id.device_id,
                          claim_to=open_ks(paul).static_public,  # type: ignore[arg-type]
                          **kwargs)
    assert isinstance(out.error, PairingError), (method, out)
    line = await host.wait_for(r"^error: guest \S+: (.*)", since=mark)
    assert "claimed" in line.group(1) or "known device" in line.group(1), line.string
    assert len(host.results) == 1
    assert record_view(paul, "George's phone") == before
    ids = [p["id"] for p in await paul.peers()]  # type: ignore[attr-defined]
    assert ids == [george_id.device_id.hex()], "Mallory was stored"
    assert digest(mallory.static_public).hex() not in ids


async def test_control_the_hand_driven_guest_pairs_when_honest(lab: Lab) -> None:
    """The same hand-driven guest with its own keys pairs: the refusals above are the host's."""
    host, _paul, _ = await paired(lab)
    out = await evil_join(address_of(host), LocalIdentity.generate("Honest Mallory"), Method.PIN,
                          pin=latest(host, r"^PIN: (\d{6})"))
    assert out.error is None and out.session is not None and out.membership is not None
    assert (await host.next_result())["peer"]["name"] == "Honest Mallory"
