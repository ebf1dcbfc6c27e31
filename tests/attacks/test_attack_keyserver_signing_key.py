"""The key server's record of a device keeps the signing key it was enrolled with (attack review
atk18c, finding 2; docs/security.md rule 1 and "Groups trusted through a CA").

Session 18 pins a known device's signing key in each pairkit keystore: whoever holds a device's
static key but not its signing key cannot make itself that device to what it signed.  The key
server keeps the same pair for each enrolled device, and vouches for it twice: to a ``ttp``
pairing (the identity payload's signing key must be the one the server holds) and in a device
certificate, which a member of a group trusted through the CA believes for a controller's
envelopes in place of any pairing.  An enrolment proves the static key only (the signing key is
a field of the request), and before this a second enrolment of a device replaced its signing
key: Mallory, with Paul's static key (and the enrolment token, when enrolment is closed), had
the server vouch for her key as Paul's, certify it, and refuse Paul's own ``ttp`` pairings and
certificate.

Finding 5 (low): the key server vouches for the key of the first enrolment, so the holder of
a device's static key who enrols it first (a device that never enrolled with that server) is
certified with a key of her own; a member enrolled with the same CA then believes her
certificate over the key it paired with the device by, and takes her group keys as the
device's.

Played against a real key server on 127.0.0.1 (``tests/ttp_harness.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import pairkit
from pairkit.groupcert import enrol_cert, own_cert, request_cert
from pairkit.groups import Reach, add_member, controlled, create_group, held_groups, take_envelope
from pairkit.pairing.errors import AuthenticationError, PairingError
from pairkit.pairing.groupcert import cert_request_statement
from pairkit.pairing.groups import CA, GroupEnvelope, seal_group_envelope
from pairkit.peers import local_identity
from pairkit.ttp import connect, enrol

from ..renewal_harness import Owner, device, pair
from ..signing_harness import with_another_signing_key
from ..ttp_harness import ServerHarness, running_server


async def test_a_second_enrolment_with_another_signing_key_is_refused(tmp_path: Path) -> None:
    paul = device(tmp_path / "paul", "Paul")
    me = local_identity(paul.keystore)
    mallory = Ed25519PrivateKey.generate()
    posing = dataclasses.replace(me, signing_public=mallory.public_key().public_bytes_raw())
    async with running_server(tmp_path / "srv") as srv:
        assert not (await enrol(srv.address, srv.ca, me)).updated
        with pytest.raises(PairingError, match="signing key"):
            await enrol(srv.address, srv.ca, posing)
        # Nor is her key certified as Paul's ...
        probe = await connect(srv.address, srv.ca)
        await probe.close()
        statement = cert_request_statement(me.device_id, me.static_public,
                                           posing.signing_public, probe.cert)
        with pytest.raises(PairingError):
            await request_cert(srv.address, srv.ca, posing, mallory.sign(statement))
        # ... and Paul still gets his own certificate, for his own key.
        cert = await enrol_cert(paul.keystore, srv.address, srv.ca, me)
    assert cert.signing == me.signing_public


async def test_control_a_device_enrols_again_with_its_own_keys(tmp_path: Path) -> None:
    """The same second enrolment by Paul himself (a restored keystore, a new EUKey): taken."""
    paul = device(tmp_path / "paul", "Paul")
    me = local_identity(paul.keystore)
    async with running_server(tmp_path / "srv") as srv:
        await enrol(srv.address, srv.ca, me)
        again = await enrol(srv.address, srv.ca, me, eukey=bytes(range(32)))
        cert = await enrol_cert(paul.keystore, srv.address, srv.ca, me)
    assert again.updated and again.has_eukey
    assert cert.signing == me.signing_public


async def enrolled_with_cert(made: pairkit.Device, srv: ServerHarness) -> None:
    me = local_identity(made.keystore)
    await enrol(srv.address, srv.ca, me)
    await enrol_cert(made.keystore, srv.address, srv.ca, me)


def doors_key_for(controller: pairkit.Device, member: pairkit.Device) -> GroupEnvelope:
    """Group "doors", epoch 1, sealed to ``member`` and signed by ``controller``'s keystore,
    with its certificate (a group trusted through the CA)."""
    ks = controller.keystore
    ks.new_group_key("doors", 1)
    env = seal_group_envelope(ks, group="doors", epoch=1,
                              member_public=member.keystore.static_public)
    return dataclasses.replace(env, cert=own_cert(ks))


async def paul_and_george(tmp_path: Path) -> tuple[pairkit.Device, pairkit.Device]:
    """Paul and George, paired by PIN (George's record holds Paul's signing key)."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    session, error = await pair(paul, Owner(), george, "ksk", pin="246810")
    assert error is None and session is not None, error
    await session.close()
    return paul, george


async def test_a_certificate_of_a_known_device_with_another_key_gives_no_group_key(
    tmp_path: Path,
) -> None:
    paul, george = await paul_and_george(tmp_path)
    # Mallory: a copy of Paul's keystore file for its identity and static key (she saves her
    # settings in her copy), with a signing key of her own in memory.
    mallory = with_another_signing_key(tmp_path / "paul" / "keystore.pk",
                                       copy_to=tmp_path / "mallory")
    async with running_server(tmp_path / "srv") as srv:
        await enrolled_with_cert(mallory, srv)  # Paul never enrolled here: hers is the first
        await enrolled_with_cert(george, srv)
    env = doors_key_for(mallory, george)
    assert env.controller.hex() == paul.keystore.device_id
    ks = george.keystore
    with pytest.raises(AuthenticationError), ks.update():
        take_envelope(ks, env)
    assert "doors" not in held_groups(ks), "George took Mallory's group key as Paul's"


async def test_control_pauls_own_certificate_gives_the_group_key(tmp_path: Path) -> None:
    paul, george = await paul_and_george(tmp_path)
    async with running_server(tmp_path / "srv") as srv:
        await enrolled_with_cert(paul, srv)
        await enrolled_with_cert(george, srv)
    ks = george.keystore
    with ks.update():
        take_envelope(ks, doors_key_for(paul, george))
    assert held_groups(ks)["doors"].controller == paul.keystore.device_id


# -- session 19: the controller's side of finding 5 ---------------------------------------------
#
# A group controller adds a member by its certificate (``pairkit group add NAME --cert FILE``)
# and from then on checks that member's receipts against the certificate's key, not the key
# it paired with the device by.  Mallory, with George's static key, enrolled George's id first
# and holds a certificate naming her key: Paul, who paired with George, adds "George" by it,
# and Mallory's signatures pass for George's (a receipt saying George took the group key that
# he never got).  A certificate naming another signing key than the paired record's is refused,
# as a member refuses a controller's (above).




#: delivery to a member nobody serves gives up at once (the member stays pending)
QUICK = Reach(connect_timeout=1.0, step_timeout=1.0)


async def test_a_members_certificate_with_another_key_than_its_record_is_refused(
    tmp_path: Path,
) -> None:
    paul, george = await paul_and_george(tmp_path)
    mallory = with_another_signing_key(tmp_path / "george" / "keystore.pk",
                                       copy_to=tmp_path / "mallory")
    assert mallory.keystore.device_id == george.keystore.device_id
    async with running_server(tmp_path / "srv") as srv:
        await enrolled_with_cert(mallory, srv)  # George never enrolled here: hers is the first
        await enrolled_with_cert(paul, srv)
    ks = paul.keystore
    create_group(ks, "doors", trust=CA)
    cert = own_cert(mallory.keystore)
    assert cert is not None
    with pytest.raises(AuthenticationError, match="another signing key") as caught:
        await add_member(ks, "doors", None, cert=cert, reach=QUICK)
    assert "George" in str(caught.value)
    assert mallory.keystore.signing_public.hex() not in str(caught.value)
    members = controlled(ks, "doors").members
    assert not [m for m in members if m.device_id == george.keystore.device_id], (
        "Paul added George by Mallory's certificate: her receipts pass for George's")


async def test_control_the_members_own_certificate_is_taken(tmp_path: Path) -> None:
    paul, george = await paul_and_george(tmp_path)
    async with running_server(tmp_path / "srv") as srv:
        await enrolled_with_cert(george, srv)
        await enrolled_with_cert(paul, srv)
    ks = paul.keystore
    create_group(ks, "doors", trust=CA)
    cert = own_cert(george.keystore)
    assert cert is not None
    await add_member(ks, "doors", None, cert=cert, reach=QUICK)
    (member,) = controlled(ks, "doors").members
    assert (member.device_id, member.signing) == (george.keystore.device_id,
                                                  george.keystore.signing_public)
