"""Device certificates for group trust through the CA (pairing/groupcert.py, issue 14): what a
member accepts and refuses, the issuer's and the client's checks; a real key server issues
them, and refuses when its CA key is offline."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pairkit.keyserver.certs import init_server_dir, make_ca, make_device_cert
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing import wire
from pairkit.pairing.crypto import digest
from pairkit.pairing.errors import AuthenticationError, ProtocolError
from pairkit.pairing.groupcert import (
    CertAsked,
    CertClient,
    CertIssued,
    CertIssuer,
    CertRequest,
    cert_request_statement,
    check_device_cert,
)
from pairkit.pairing.ttp import TtpChallenge

NOW = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
T = NOW.timestamp()


@dataclasses.dataclass
class Dev:
    ks: Keystore

    @property
    def id(self) -> bytes:
        return bytes.fromhex(self.ks.device_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("certs")
    devs = {n: Dev(Keystore.create(base / f"{n}.pk", "123456", name=n,
                                   kdf=Argon2Params.cheapest())) for n in ("ctl", "door")}
    ca_key, ca = make_ca(NOW)
    other_key, other = make_ca(NOW, name="another key server CA")
    return {"devs": devs, "ca_key": ca_key, "ca": ca, "other_key": other_key, "other": other}


def _cert(world: dict, who: str = "ctl", *, key: str = "ca_key", ca: str = "ca",
          days: int = 365, static: bytes | None = None, when: datetime.datetime = NOW) -> bytes:
    d = world["devs"][who]
    return make_device_cert(world[key], world[ca], device_id=d.id, name=d.ks.name,
                            static=static or d.ks.static_public, signing=d.ks.signing_public,
                            now=when, days=days)


def _der(cert: object) -> bytes:
    return cert.public_bytes(Encoding.DER)  # type: ignore[attr-defined]


def test_a_certificate_from_the_pinned_ca_vouches_for_the_device(world: dict) -> None:
    ctl = world["devs"]["ctl"]
    found = check_device_cert(_cert(world), _der(world["ca"]), now=T, device_id=ctl.id)
    assert (found.device_id, found.name, found.static, found.signing) == (
        ctl.id, "ctl", ctl.ks.static_public, ctl.ks.signing_public)


@pytest.mark.parametrize(("case", "words"), [
    ("another CA", "not issued by the CA this device trusts"),
    ("expired", "not now"),
    ("not yet", "not now"),
    ("another device", "not 'ctl'"),
    ("static key of another", "does not match its static key"),
    ("the CA itself", "not a device's signing certificate"),
    ("garbage", "not an X.509 certificate"),
    ("empty", "missing"),
])
def test_what_a_member_refuses(world: dict, case: str, words: str) -> None:
    ca = _der(world["ca"])
    ctl = world["devs"]["ctl"]
    der = {
        "another CA": lambda: _cert(world, key="other_key", ca="other"),
        "expired": lambda: _cert(world, when=NOW - datetime.timedelta(days=400)),
        "not yet": lambda: _cert(world, when=NOW + datetime.timedelta(days=3)),
        "another device": lambda: _cert(world, "door"),
        "static key of another": lambda: _cert(
            world, static=world["devs"]["door"].ks.static_public),
        "the CA itself": lambda: _der(world["ca"]),
        "garbage": lambda: b"\x30\x03\x02\x01\x00",
        "empty": lambda: b"",
    }[case]()
    with pytest.raises(AuthenticationError) as info:
        check_device_cert(der, ca, now=T, device_id=ctl.id)
    if case == "another device":
        assert "not " + ctl.id.hex()[:8] in str(info.value)
    else:
        assert words in str(info.value)
    assert digest(ctl.ks.static_public) == ctl.id


def test_the_issuer_needs_a_proof_of_the_signing_key(world: dict) -> None:
    ctl, door = world["devs"]["ctl"], world["devs"]["door"]
    server_cert = bytes(range(32))
    good = ctl.ks.sign(cert_request_statement(ctl.id, ctl.ks.static_public,
                                              ctl.ks.signing_public, server_cert))
    issuer = CertIssuer(device_id=ctl.id, static=ctl.ks.static_public, name="ctl",
                        server_cert=server_cert)
    issuer.begin(CertRequest(ctl.ks.signing_public, good), 0.0)
    (asked,) = issuer.events()
    assert isinstance(asked, CertAsked) and asked.signing == ctl.ks.signing_public
    issuer.answer(asked, b"\x30\x00", 0.0)
    assert issuer.done and [wire.decode(m) for m in issuer.outgoing()] == [
        CertIssued(b"\x30\x00")]
    # Someone else's signing key, or a proof made for another server: refused.
    for signing, proof in [
        (door.ks.signing_public, good),
        (ctl.ks.signing_public, ctl.ks.sign(cert_request_statement(
            ctl.id, ctl.ks.static_public, ctl.ks.signing_public, bytes(32)))),
    ]:
        bad = CertIssuer(device_id=ctl.id, static=ctl.ks.static_public, name="ctl",
                         server_cert=server_cert)
        with pytest.raises(AuthenticationError, match="did not prove it holds the signing"):
            bad.begin(CertRequest(signing, proof), 0.0)
        assert bad.failed


def test_the_client_refuses_a_certificate_for_another_device(world: dict) -> None:
    from pairkit.cli.store import local_identity

    ctl = world["devs"]["ctl"]
    client = CertClient(local_identity(ctl.ks), cert=bytes(32), proof=bytes(64))
    client.start(0.0)
    client.outgoing()
    client.receive(TtpChallenge(bytes(16), world["devs"]["door"].ks.static_public).encode(), 0.0)
    client.outgoing()
    with pytest.raises(ProtocolError, match="certified another device"):
        client.receive(CertIssued(_cert(world, "door")).encode(), 0.0)
    assert client.failed


async def test_a_server_whose_ca_key_is_offline_issues_no_certificate(tmp_path: Path) -> None:
    from pairkit.cli.store import local_identity
    from pairkit.groupcert import enrol_cert
    from pairkit.keyserver.server import TtpServer
    from pairkit.pairing.errors import PairingError
    from pairkit.ttp import enrol

    d = init_server_dir(tmp_path / "srv")
    ks = Keystore.create(tmp_path / "k.pk", "123456", name="ctl", kdf=Argon2Params.cheapest())
    me = local_identity(ks)
    async with TtpServer(d.root, log=None) as server:
        address = await server.start()
        with pytest.raises(PairingError, match="not enrolled"):
            await enrol_cert(ks, address, d.ca_cert, me)
        await enrol(address, d.ca_cert, me)
        got = await enrol_cert(ks, address, d.ca_cert, me)
        assert got.device_id == me.device_id
        d.ca_key.rename(tmp_path / "offline-ca-key.pem")
        with pytest.raises(PairingError, match="CA key is kept offline"):
            await enrol_cert(ks, address, d.ca_cert, me)
