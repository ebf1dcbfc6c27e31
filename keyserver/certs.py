"""The key server's directory: its CA, its TLS certificate, its sealing key (``pairkit ttp init``).

::

    D/ca.pem           the CA certificate: the file a manufacturer installs on devices, which
                       pin it (a server whose certificate it did not sign is refused)
    D/ca-key.pem       the CA's private key (0600; keep it offline once the server cert exists)
    D/server.pem       the server's certificate, signed by the CA, naming its host names
    D/server-key.pem   the server's private key (0600)
    D/seal.key         32 random bytes sealing the keys the database holds (0600)
    D/ttp.sqlite3      the database (created by the first ``serve``, or here)
    D/enrol.token      optional (``pairkit ttp init --enrol-token``, 0600): when present,
                       enrolment is closed and devices must give this token

Certificates are made with ``cryptography``'s x509 builder: ECDSA P-256 with SHA-256, the CA
with ``BasicConstraints(ca=True, path_length=0)`` and only ``keyCertSign``/``cRLSign``, the
server with ``serverAuth``, its names as subject alternative names (DNS names and IP addresses,
since TLS clients check those, not the common name: RFC 6125 §6.4.4).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pairkit.pairing.errors import ConfigError
from pairkit.smallfile import MAX_CA_FILE, MAX_SECRET_FILE, read_small_file

from .store import SEAL_KEY_LEN, open_store

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
#: the enrolment token's file name in a server directory
TOKEN_FILE = "enrol.token"


def read_token(path: Path) -> bytes:
    """An enrolment token from ``path``: 16 to 64 characters, surrounding blanks dropped."""
    raw = read_small_file(path, MAX_SECRET_FILE, "an enrolment token")
    try:
        token = raw.decode("utf-8").strip().encode()
    except UnicodeDecodeError:
        raise ConfigError(f"the enrolment token in {path} is not UTF-8 text") from None
    if not 16 <= len(token) <= 64:
        raise ConfigError(f"the enrolment token in {path} must be 16 to 64 characters")
    return token


@dataclasses.dataclass(frozen=True)
class ServerDir:
    """The files of one key server (see the module docstring)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def key(self) -> Path:
        return self.root / "server-key.pem"

    @property
    def seal_key(self) -> Path:
        return self.root / "seal.key"

    @property
    def db(self) -> Path:
        return self.root / "ttp.sqlite3"

    @property
    def token(self) -> Path:
        return self.root / TOKEN_FILE

    def enrol_token(self) -> bytes | None:
        """The enrolment token when enrolment is closed (``D/enrol.token`` exists), else None."""
        return read_token(self.token) if self.token.exists() else None

    def check(self) -> None:
        """Refuse a directory that ``pairkit ttp init`` did not make."""
        for path in (self.ca_cert, self.cert, self.key, self.seal_key):
            if not path.is_file():
                raise ConfigError(
                    f"{self.root} is not a key server directory ({path.name} is missing); "
                    f"make one with: pairkit ttp init --dir {self.root}"
                )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pairkit"),
        x509.NameAttribute(NameOID.COMMON_NAME, common),
    ])


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(now: datetime.datetime, *, name: str = "pairkit key server CA",
            days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: tuple[str, ...],
    now: datetime.datetime,
    *,
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate for ``hosts``, signed by the CA."""
    if not hosts:
        raise ConfigError("the server certificate needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def default_hosts() -> tuple[str, ...]:
    """The names a server on this machine answers to by default."""
    hosts = list(DEFAULT_HOSTS)
    node = socket.gethostname()
    if node and node not in hosts:
        hosts.append(node)
    return tuple(hosts)


def init_server_dir(
    root: Path,
    *,
    hosts: tuple[str, ...] = (),
    days: int = 825,
    now: datetime.datetime | None = None,
    enrol_token: bool = False,
) -> ServerDir:
    """Make a key server directory (refusing to overwrite one); with ``enrol_token``, close
    enrolment: write a fresh random token to ``D/enrol.token`` (0600) that devices must give."""
    d = ServerDir(root)
    if d.ca_cert.exists() or d.seal_key.exists():
        raise ConfigError(
            f"{root} already holds a key server; use another --dir (replacing it would "
            "lock out every device that pinned its CA)"
        )
    if not 1 <= days <= 3650:
        raise ConfigError("--days must be from 1 to 3650")
    names = tuple(dict.fromkeys((*hosts, *default_hosts())))
    for h in names:
        if not h or any(c.isspace() for c in h) or "/" in h:
            raise ConfigError(f"{h!r} is not a host name or IP address")
    now = now or datetime.datetime.now(datetime.UTC)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(now)
    key, cert = make_server_cert(ca_key, ca_cert, names, now, days=days)
    _write_private(d.ca_key, _pem_key(ca_key))
    _write_private(d.key, _pem_key(key))
    _write_private(d.seal_key, os.urandom(SEAL_KEY_LEN))
    d.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    d.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    open_store(root).close()  # create and migrate the database now, so errors show here
    if enrol_token:
        _write_private(d.token, (secrets.token_hex(16) + "\n").encode())
    return d


def load_cert(path: Path) -> x509.Certificate:
    pem = read_small_file(path, MAX_CA_FILE, "a certificate")
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, grouped for people to compare."""
    h = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


def cert_hosts(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


#: how long a device certificate (``pairkit ttp enrol --cert``) is valid
DEVICE_DAYS = 365


def load_ca_key(d: ServerDir) -> ec.EllipticCurvePrivateKey | None:
    """The CA's private key, or None when it is kept offline (not in the directory)."""
    if not d.ca_key.is_file():
        return None
    pem = read_small_file(d.ca_key, MAX_SECRET_FILE, "the CA's key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{d.ca_key} is not a readable CA key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{d.ca_key} is not the CA's EC key")
    return key


def make_device_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    device_id: bytes,
    name: str,
    static: bytes,
    signing: bytes,
    now: datetime.datetime,
    days: int = DEVICE_DAYS,
) -> bytes:
    """A device certificate (DER) for the device's Ed25519 signing key, naming its id and
    carrying its X25519 static key (pairing/groupcert.py says what each field means)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pairkit.pairing.groupcert import STATIC_KEY_OID

    # A name is the device's own words: keep it printable and short in a certificate.
    shown = "".join(ch for ch in name if ch.isprintable())[:64] or device_id.hex()[:16]
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pairkit"),
        x509.NameAttribute(NameOID.COMMON_NAME, shown),
        x509.NameAttribute(NameOID.USER_ID, device_id.hex()),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(Ed25519PublicKey.from_public_bytes(signing))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.UnrecognizedExtension(STATIC_KEY_OID, b"\x04\x20" + static), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)

