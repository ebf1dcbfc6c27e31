"""A device certificate from the key server (``pairkit ttp enrol --cert``), and the CA a device
checks certificates against (issue 14; pairing/groupcert.py specifies both)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .clock import SYSTEM_CLOCK, Clock
from .driver import drive
from .pairing.crypto import Rng
from .pairing.errors import ConfigError, RemoteError
from .pairing.groupcert import CertClient, CertIssued, DeviceCert, check_device_cert
from .pairing.keystore import Keystore
from .pairing.methods import LocalIdentity
from .smallfile import MAX_CA_FILE, read_small_file
from .ttp import DEFAULT_TIMEOUT, connect, from_server

#: keystore settings: this device's certificate (DER) and the CA certificate (DER) it enrolled
#: with, which it checks other devices' certificates against
SETTING_CERT = "ttp.cert"
SETTING_CA_DER = "ttp.ca_der"
SETTING_CA_PATH = "ttp.ca"  # written by 'pairkit ttp enrol' (cli/ttp_cli.py)


async def request_cert(
    server: str,
    ca_file: str | Path,
    me: LocalIdentity,
    proof: bytes,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
) -> bytes:
    """Ask the key server to certify this device's signing key; the certificate's DER.

    ``proof`` is the device's signature over
    :func:`pairing.groupcert.cert_request_statement` for this server's certificate: make it
    with :func:`proof_for` once :func:`pairkit.ttp.connect` told the certificate's digest, or
    use :func:`enrol_cert`, which does both."""
    conn = await connect(server, ca_file, timeout=timeout)
    try:
        client = CertClient(me, cert=conn.cert, proof=proof, step_timeout=timeout, rng=rng)
        client.start(asyncio.get_running_loop().time())
        try:
            await drive(client, conn.pipe, idle=timeout)
        except RemoteError as exc:
            raise from_server(exc) from None
        assert isinstance(client.result, CertIssued)
        return client.result.cert
    finally:
        await conn.close()


async def enrol_cert(
    ks: Keystore, server: str, ca_file: str | Path, me: LocalIdentity, *,
    timeout: float = DEFAULT_TIMEOUT, clock: Clock = SYSTEM_CLOCK,
) -> DeviceCert:
    """Get this device's certificate and keep it, with the CA's, in the keystore."""
    from .pairing.groupcert import cert_request_statement

    # The proof binds the server's certificate: learn its digest on a first connection (the
    # TLS handshake only), then ask on a second one to the same, pinned, server.
    probe = await connect(server, ca_file, timeout=timeout)
    await probe.close()
    statement = cert_request_statement(me.device_id, me.static_public, me.signing_public,
                                       probe.cert)
    der = await request_cert(server, ca_file, me, ks.sign(statement), timeout=timeout)
    ca_der = _read_ca(ca_file)
    cert = check_device_cert(der, ca_der, now=clock.wall(), device_id=me.device_id)
    with ks.update():
        ks.set_setting(SETTING_CERT, der)
        ks.set_setting(SETTING_CA_DER, ca_der)
    return cert


def _read_ca(ca_file: str | Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = read_small_file(Path(ca_file), MAX_CA_FILE, "a CA certificate")
    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    except ValueError:
        raise ConfigError(f"{ca_file} is not a PEM certificate") from None


def own_cert(ks: Keystore) -> bytes | None:
    """This device's certificate (DER), if it enrolled with ``--cert``."""
    der = ks.setting(SETTING_CERT)
    return der if isinstance(der, bytes) else None


def trusted_ca(ks: Keystore) -> bytes | None:
    """The CA (DER) this device checks certificates against: the one it enrolled with."""
    der = ks.setting(SETTING_CA_DER)
    if isinstance(der, bytes):
        return der
    path = ks.setting(SETTING_CA_PATH)
    if isinstance(path, str):
        try:
            return _read_ca(path)
        except ConfigError:
            return None
    return None
