"""Small-order Ed25519 signing keys (session 19 review of atk18c finding 1; docs/security.md
rule 1).

An Ed25519 public key of small order (one of the 8 points of order dividing 8, or one of
their non-canonical encodings: 14 strings of 32 bytes, worked out in
``tests/signing_harness.py``) takes signatures made with no key: `cryptography`'s verification
(OpenSSL's, cofactorless) passes R = a small-order point, S = 0 for about one message in eight
for each R, and for every message when the key is the neutral point.  A device that shows such
a key "signs" nothing: whoever relays or forges its group envelopes, receipts, agent commands
or cloud memberships passes for it.  Before session 19, nothing refused such a key: a pairing
by any method took it into the peer's record, the key server enrolled it (and would certify
it), a certificate naming it was believed, and the verifications took forgeries against it.

Played at the level where each key is decoded: the pairing machines for every method and both
sides (the identity payload), the real key server over TLS (enrolment), a certificate from the
CA, the keystore file, and the checks that verify a signature by a known key (a cloud
membership, a group envelope, a receipt, an agent command).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pairkit.keyserver.certs import make_ca, make_device_cert
from pairkit.keystore import Argon2Params, Keystore, Peer
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.groupcert import check_device_cert
from pairkit.pairing.groups import (
    ENC_SIZE,
    SEALED_KEY_SIZE,
    AgentCommand,
    GroupEnvelope,
    GroupReceipt,
    HeldGroup,
    check_agent_command,
    check_receipt,
    envelope_digest,
    envelope_info,
    open_group_envelope,
)
from pairkit.pairing.keystore.envelope import seal_envelope
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import (
    Membership,
    check_membership,
    cloud_id_of,
    membership_statement,
)
from pairkit.pairing.ttp import EnrolDone, EnrolRequest
from pairkit.ttp import call

from ..pair_harness import Pair, compare_codes, identities, known_pair, make_pair
from ..signing_harness import NEUTRAL_KEY, ZERO_KEY, forge, small_order_encodings
from ..ttp_harness import identity, running_server

ENCODINGS = small_order_encodings()
#: the two a device is likeliest to show: the neutral point, and the all-zero stand-in
WEAK = {"neutral": NEUTRAL_KEY, "all-zero": ZERO_KEY}
#: R = the neutral point, S = 0: verifies every message under the neutral key
NO_KEY = NEUTRAL_KEY + bytes(32)
PIN = "123456"


def refused_for_its_key(error: BaseException | None, key: bytes) -> None:
    """``error`` is the refusal of a small-order signing key, in words, without the key."""
    assert isinstance(error, AuthenticationError), f"not refused for its key: {error!r}"
    assert "signing key" in str(error), str(error)
    assert key.hex() not in str(error) and repr(key) not in str(error)


# -- the attack ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_a_small_order_key_takes_signatures_made_with_no_key(name: str) -> None:
    """Why it matters: under each of the 14 encodings, `cryptography` verifies a signature
    made with no private key for some of 16 messages (all 16 for the neutral point)."""
    passed = sum(forge(ENCODINGS[name], b"statement %d" % i) is not None for i in range(16))
    assert passed == 16 if name.startswith("order1") else passed > 0


# -- the identity payload: every method, both sides ------------------------------------------


def _pair(method: Method, side: str, key: bytes) -> Pair:
    known = known_pair(3) if method is Method.KK else None
    guest_me, host_me = (known.guest_me, known.host_me) if known else identities(3)
    if side == "guest":
        guest_me = dataclasses.replace(guest_me, signing_public=key)
    else:
        host_me = dataclasses.replace(host_me, signing_public=key)
    if known is not None:
        return make_pair(method, seed=4, guest_me=guest_me, host_me=host_me,
                         state=known.state, peer=known.guest_record)
    return make_pair(method, seed=3, guest_me=guest_me, host_me=host_me)


@pytest.mark.parametrize("key", list(WEAK))
@pytest.mark.parametrize("side", ["guest", "host"])
@pytest.mark.parametrize(
    "method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.KK],
    ids=lambda m: m.name.lower())
def test_a_peer_showing_a_small_order_signing_key_is_refused(
    method: Method, side: str, key: str,
) -> None:
    """``side`` shows a small-order signing key in its identity payload: the other side
    refuses it, and ends with no session (so nothing of it is stored)."""
    pair = _pair(method, side, WEAK[key])
    users = compare_codes if method is Method.COMPARE else True
    result = pair.run(answers={"guest": users, "host": users})
    other = "host" if side == "guest" else "guest"
    assert getattr(pair, other).session is None, (
        f"the {other} paired with a {side} whose signing key is small-order")
    refused_for_its_key(result.errors.get(other), WEAK[key])


def test_control_the_same_pairings_with_real_keys_work() -> None:
    """The harness pairs these identities when their keys are their own."""
    for method in (Method.PIN, Method.KK):
        pair = _pair(method, "guest", LocalIdentity.generate("x").signing_public)
        pair.run()
        assert pair.guest.session is not None and pair.host.session is not None


# -- the key server: enrolment (SQLite here; PostgreSQL shares the store and the machine) -----


@pytest.mark.parametrize("key", list(WEAK))
async def test_the_key_server_does_not_enrol_a_small_order_signing_key(
    tmp_path: Path, key: str,
) -> None:
    async with running_server(tmp_path / "srv") as h:
        me = identity("weak")
        with pytest.raises(PairingError) as caught:
            await call(h.address, h.ca, me, EnrolRequest(signing=WEAK[key]), EnrolDone)
        assert "signing key" in str(caught.value), str(caught.value)
        assert await h.server.db(h.server.store.device, me.device_id) is None, (
            "the key server enrolled a small-order signing key")


# -- a certificate from the CA ---------------------------------------------------------------


@pytest.mark.parametrize("key", list(WEAK))
def test_a_certificate_naming_a_small_order_key_is_refused(key: str) -> None:
    """The CA certified it (a key server from before the fix enrolled it): a member does not
    take it as a controller's or a member's key."""
    now = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)
    ca_key, ca = make_ca(now)
    who = LocalIdentity.generate("weak")
    der = make_device_cert(ca_key, ca, device_id=who.device_id, name="weak",
                           static=who.static_public, signing=WEAK[key], now=now)
    with pytest.raises(AuthenticationError) as caught:
        check_device_cert(der, ca.public_bytes(Encoding.DER), now=now.timestamp())
    refused_for_its_key(caught.value, WEAK[key])


# -- the keystore file -----------------------------------------------------------------------


def test_a_record_with_a_small_order_key_is_not_made() -> None:
    who = LocalIdentity.generate("weak")
    with pytest.raises(AuthenticationError) as caught:
        Peer.new("weak", who.static_public, signing_public=ZERO_KEY)
    refused_for_its_key(caught.value, ZERO_KEY)


def test_a_stored_small_order_key_is_read_as_no_key(tmp_path: Path) -> None:
    """A keystore written before the fix (the all-zero key a resume stored: atk18c finding 1)
    opens, and its record holds no key: it pins nothing, verifies nothing, and takes the key
    the device shows at its next full pairing."""
    ks = Keystore.create(tmp_path / "k.pk", PIN, name="me", kdf=Argon2Params.cheapest())
    who = LocalIdentity.generate("old")
    record = Peer.new("old", who.static_public, signing_public=who.signing_public)
    object.__setattr__(record, "signing_public", ZERO_KEY)  # as an older pairkit wrote it
    with ks.update():
        ks.add_peer(record)
    again = Keystore.open(tmp_path / "k.pk", PIN)
    found = again.peer_by_id(who.device_id.hex())
    assert found is not None and found.signing_public is None


# -- what is verified against a known key ----------------------------------------------------


def test_a_cloud_membership_signed_with_no_key_is_refused() -> None:
    """A host known by the all-zero stand-in (a resume with a record that holds no key gives
    the machines ``bytes(32)``): before, a membership forged with no key joined its cloud."""
    host = LocalIdentity.generate("host")
    me = os.urandom(16)
    for attempt in range(64):
        m = Membership(role=Role.MEMBER, cloud_id=cloud_id_of(host.device_id),
                       cloud_name=f"cloud {attempt}", secret=os.urandom(32))
        signature = forge(ZERO_KEY, membership_statement(m, me, "fp"))
        if signature is not None:
            break
    assert signature is not None
    with pytest.raises(AuthenticationError) as caught:
        check_membership(dataclasses.replace(m, signature=signature), host_id=host.device_id,
                         host_signing=ZERO_KEY, me=me, session_fingerprint="fp", held=())
    refused_for_its_key(caught.value, ZERO_KEY)


def test_a_group_envelope_signed_with_no_key_is_refused(tmp_path: Path) -> None:
    """Anyone can seal a group key to a member (HPKE needs only its public key); the
    controller's signature is what makes it the controller's.  Under a small-order controller
    key, a relay or a stranger hands the member a group key of its own choosing."""
    member = Keystore.create(tmp_path / "m.pk", PIN, name="member", kdf=Argon2Params.cheapest())
    controller = os.urandom(16)
    me = bytes.fromhex(member.device_id)
    info = envelope_info(controller, me, "doors", 1)
    enc, ct = seal_envelope(member.static_public, b"\x07" * 32, info)
    env = GroupEnvelope(controller, me, "doors", 1, enc, ct, NO_KEY)
    with pytest.raises(AuthenticationError) as caught:
        open_group_envelope(member, env, controller_key=lambda c: NEUTRAL_KEY,
                            pinned=controller.hex())
    refused_for_its_key(caught.value, NEUTRAL_KEY)
    assert member.group_epochs("doors") == (), "the member took a forged group key"


def test_a_receipt_signed_with_no_key_is_refused() -> None:
    """A relay that dropped the envelope answers with the member's forged receipt."""
    env = GroupEnvelope(os.urandom(16), os.urandom(16), "doors", 1, bytes(ENC_SIZE),
                        bytes(SEALED_KEY_SIZE), bytes(64))
    receipt = GroupReceipt(env.controller, env.member, "doors", 1, envelope_digest(env), True,
                           NO_KEY)
    with pytest.raises(AuthenticationError) as caught:
        check_receipt(receipt, expected=env, member_signing=NEUTRAL_KEY)
    refused_for_its_key(caught.value, NEUTRAL_KEY)


def test_an_agent_command_signed_with_no_key_is_refused() -> None:
    controller = os.urandom(16)
    command = AgentCommand("doors", 1, 1, b"open", 100, NO_KEY)
    with pytest.raises(AuthenticationError) as caught:
        check_agent_command(command, agent=os.urandom(16),
                            held=HeldGroup("doors", controller.hex(), 1),
                            controller_signing=NEUTRAL_KEY, last_number=0)
    refused_for_its_key(caught.value, NEUTRAL_KEY)
