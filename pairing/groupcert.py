"""Device certificates from the key server's CA: end-to-end trust in a group controller without
a direct pairing (issue 14; the oneM2M seed, TR-0012 §5.1.x.3: "IN-CSE, MN-CSEs and ADN-AEs are
all issued with a public key certificate ... pre-provisioned with a CA certificate that is used
to verify other public key certificates").

Sans-I/O: no socket, no clock (``now`` is passed in), no randomness.

**Issuing** (``pairkit ttp enrol --cert``).  On a key-server connection, after the device has
proved its identity key (:mod:`pairing.ttp`, :class:`~pairing.ttp.TtpProof`), it sends
:class:`CertRequest` (type 112) in place of another request: its Ed25519 signing key and a proof
that it holds it, an Ed25519 signature over::

    CBOR ["pairkit/1 device certificate request", device id, static key, signing key,
          SHA-256(server certificate)]

The server (:class:`CertIssuer`, after the TTP machine hands the connection over) checks the
signature and that the device is enrolled with exactly this signing key, then answers
:class:`CertIssued` (type 113): an X.509 certificate signed by the CA whose ``ca.pem`` devices pin
(:func:`pairkit.keyserver.certs.make_device_cert`)::

    subject      O=pairkit, CN=<device name>, UID=<device id, 32 hex digits>
    public key   the device's Ed25519 signing key
    extension    2.25.124990699415728044066408632822762699332 (non-critical): the device's X25519
                 static key (32 bytes, DER OCTET STRING): whoever checks the certificate can seal
                 an envelope to the device
    constraints  BasicConstraints(ca=False) critical; KeyUsage(digitalSignature) critical

:class:`CertClient` checks that the certificate names this device and its keys before keeping it.

**Checking** (:func:`check_device_cert`): issued by the pinned CA (signature and issuer name,
``cryptography``'s ``verify_directly_issued_by``), within its validity at ``now``, not a CA, fit
for signatures, naming the expected device id, and its static key hashing to that id.  A
certificate from another CA, expired, or for another device is an
:class:`~pairing.errors.AuthenticationError` whose text says which.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from . import cbor
from .crypto import Rng, check_ed25519_public, digest, ed25519_public
from .errors import AuthenticationError, ConfigError, ProtocolError
from .machine import DONE, Machine, Question, Step, step
from .messages import ID_LEN, KEY_LEN
from .methods import LocalIdentity
from .ttp import S_RESPONSE, TtpClient
from .wire import Message, field, message

__all__ = [
    "CERT_MAX",
    "STATIC_KEY_OID",
    "CertAsked",
    "CertClient",
    "CertIssued",
    "CertIssuer",
    "CertRequest",
    "DeviceCert",
    "cert_request_statement",
    "check_device_cert",
    "read_device_cert",
]

#: the largest certificate (DER) the wire and the keystore accept
CERT_MAX = 1024
#: the extension that carries the device's X25519 static key (a UUID OID, ITU-T X.667)
STATIC_KEY_OID = x509.ObjectIdentifier("2.25.124990699415728044066408632822762699332")
_REQUEST_LABEL = "pairkit/1 device certificate request"
SIGNATURE_SIZE = 64


@message(type_id=112, max_size=512)
class CertRequest(Message):
    """Device -> key server, after its proof: certify my signing key (module docstring)."""

    signing: bytes = field(2, size=KEY_LEN)
    proof: bytes = field(3, size=SIGNATURE_SIZE)


@message(type_id=113, max_size=CERT_MAX + 64)
class CertIssued(Message):
    """Key server -> device: its certificate (DER), signed by the server's CA."""

    cert: bytes = field(2, max_len=CERT_MAX)


def cert_request_statement(
    device_id: bytes, static: bytes, signing: bytes, server_cert: bytes
) -> bytes:
    """What a device signs with its signing key to ask for a certificate."""
    return cbor.encode([_REQUEST_LABEL, device_id, static, signing, server_cert])


@dataclasses.dataclass(frozen=True)
class DeviceCert:
    """What a checked certificate vouches for."""

    device_id: bytes
    name: str
    static: bytes  #: X25519, for sealing envelopes to the device
    signing: bytes  #: Ed25519, for checking its signatures
    not_after: float  #: Unix seconds


def _load(der: bytes, what: str) -> x509.Certificate:
    if not isinstance(der, bytes) or not der or len(der) > 4 * CERT_MAX:
        raise AuthenticationError(f"{what} is missing or too large")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthenticationError(f"{what} is not an X.509 certificate") from None


def read_device_cert(cert: x509.Certificate) -> DeviceCert:
    """The device a certificate names (no trust decided: see :func:`check_device_cert`)."""
    try:
        uid = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        device_id = bytes.fromhex(str(uid[0].value))
        ext = cert.extensions.get_extension_for_oid(STATIC_KEY_OID).value
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        # DER OCTET STRING of 32 bytes: 0x04 0x20 || key
        if len(raw) != 2 + KEY_LEN or raw[:2] != b"\x04\x20":
            raise ValueError("static key")
        public = cert.public_key()
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("not Ed25519")
        signing = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    except (IndexError, ValueError, x509.ExtensionNotFound):
        raise AuthenticationError(
            "the certificate is not a pairkit device certificate (no device id, static key or "
            "Ed25519 key in it)"
        ) from None
    if len(device_id) != ID_LEN:
        raise AuthenticationError("the certificate's device id is not 16 bytes")
    # A CA that certified a small-order key (enrolled before the key server refused them)
    # vouches for a key that signs nothing: not believed (docs/security.md rule 1).
    check_ed25519_public(signing, "the certificate's")
    name = str(names[0].value) if names else device_id.hex()[:16]
    return DeviceCert(device_id, name, raw[2:], signing, cert.not_valid_after_utc.timestamp())


def check_device_cert(
    der: bytes, ca_der: bytes, *, now: float, device_id: bytes | None = None
) -> DeviceCert:
    """Check ``der`` against the pinned CA ``ca_der`` at ``now`` (Unix seconds) and return what
    it vouches for; with ``device_id``, it must name that device (module docstring)."""
    cert = _load(der, "the device certificate")
    ca = _load(ca_der, "the CA certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise AuthenticationError(
            "the certificate was not issued by the CA this device trusts (another key "
            "server's, or forged)"
        ) from None
    when = datetime.datetime.fromtimestamp(now, datetime.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise AuthenticationError(
            f"the certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise AuthenticationError("the certificate lacks its constraints or key usage") from None
    if basic.ca or not usage.digital_signature:
        raise AuthenticationError("the certificate is not a device's signing certificate")
    found = read_device_cert(cert)
    if digest(found.static) != found.device_id:
        raise AuthenticationError("the certificate's device id does not match its static key")
    if device_id is not None and found.device_id != device_id:
        raise AuthenticationError(
            f"the certificate is {found.device_id.hex()[:8]}'s, not {device_id.hex()[:8]}'s"
        )
    return found


# ---------------------------------------------------------------------------------------------
# The device's side: TtpClient with one more answer


class CertClient(TtpClient):
    """:class:`~pairing.ttp.TtpClient` asking for a certificate: after its proof it sends the
    :class:`CertRequest` and takes the :class:`CertIssued`, which must name this device and its
    keys (:attr:`result`)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        **TtpClient.TABLE,
        (S_RESPONSE, CertIssued): step("_on_cert", DONE),
    }

    def __init__(
        self, me: LocalIdentity, *, cert: bytes, proof: bytes, step_timeout: float = 10.0,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(me, cert=cert, request=CertRequest(me.signing_public, proof),
                         expect=CertIssued, step_timeout=step_timeout, rng=rng)

    def _on_cert(self, msg: CertIssued, now: float) -> None:
        try:
            found = read_device_cert(_load(msg.cert, "the certificate the key server issued"))
        except AuthenticationError as exc:
            raise ProtocolError(str(exc)) from None
        me = self.me
        if (found.device_id, found.static, found.signing) != (
            me.device_id, me.static_public, me.signing_public
        ):
            raise ProtocolError("the key server certified another device or other keys")
        self.result = msg
        self._finish()


# ---------------------------------------------------------------------------------------------
# The key server's side, after TtpServerConn handed the connection over


@dataclasses.dataclass(frozen=True)
class CertAsked(Question):
    """Certify this device's signing key, if it is enrolled with it (the delegate answers the
    certificate's DER, or raises)."""

    hook: ClassVar[str] = "ttp_cert"
    device_id: bytes
    name: str
    static: bytes
    signing: bytes


S_BEGIN = "begin"
S_ASK = "ask"


class CertIssuer(Machine):
    """The key server's answer to a :class:`CertRequest` on a connection whose device proved
    its identity key (``device_id``, ``static``, ``name`` from that proof; ``server_cert``: the
    digest of the server's certificate the proof bound)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (S_BEGIN, CertRequest): step("_on_request", S_ASK),
    }
    ANSWERS: ClassVar[dict[str, Step]] = {S_ASK: step("_on_answer", DONE)}
    STARTS: ClassVar[frozenset[str]] = frozenset({S_BEGIN})

    def __init__(
        self, *, device_id: bytes, static: bytes, name: str, server_cert: bytes
    ) -> None:
        super().__init__(initial_state=S_BEGIN)
        if len(device_id) != ID_LEN or len(static) != KEY_LEN or len(server_cert) != 32:
            raise ConfigError("a certificate issuer needs the proved device id, key and cert")
        self.device_id = device_id
        self.static = static
        self.name = name
        self.server_cert = server_cert

    def begin(self, request: CertRequest, now: float) -> None:
        """Take the request :class:`pairing.ttp.TtpServerConn` already read."""
        if not self.started:
            self.start(now)
        self.receive(request.encode(), now)

    def _on_request(self, msg: CertRequest, now: float) -> None:
        statement = cert_request_statement(self.device_id, self.static, msg.signing,
                                           self.server_cert)
        key = ed25519_public(msg.signing, "the device's")  # nothing certified for no key
        try:
            key.verify(msg.proof, statement)
        except (InvalidSignature, ValueError):
            raise AuthenticationError(
                "the device did not prove it holds the signing key it wants certified"
            ) from None
        self.state = S_ASK
        self._expect_by(None)
        self._emit(CertAsked(self.device_id, self.name, self.static, msg.signing))

    def _on_answer(self, question: Any, value: Any, now: float) -> None:
        if not isinstance(value, bytes) or not value or len(value) > CERT_MAX:
            raise ProtocolError("the answer to a certificate request is the certificate")
        self._send(CertIssued(value))
        self._finish()
