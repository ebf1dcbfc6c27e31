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

Played against a real key server on 127.0.0.1 (``tests/ttp_harness.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pairkit.groupcert import enrol_cert, request_cert
from pairkit.pairing.errors import PairingError
from pairkit.pairing.groupcert import cert_request_statement
from pairkit.peers import local_identity
from pairkit.ttp import connect, enrol

from ..renewal_harness import device
from ..ttp_harness import running_server


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
