"""The QR code of method ``qr``: a versioned URI with the host key and a one-time secret.

Layout (version 1)::

    pairkit:qr?v=1&k=<host X25519 static key, base64url>&s=<128-bit secret, base64url>
              &x=<expiry, Unix seconds>&h=<hint: BLE discriminator or tcp:HOST:PORT>

The host keeps the secret until it is used once or expires; the guest checks the expiry before
it connects and the host checks it again (with its own clock) when the code is used.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from . import keyschedule
from .crypto import digest
from .errors import DecodeError, ExpiredError

SCHEME = "pairkit"
VERSION = 1
SECRET_LEN = 16
_HINT = re.compile(r"^[A-Za-z0-9:._\-\[\]]{0,80}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, length: int, what: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DecodeError(f"the QR code's {what} is not valid base64url") from None
    if len(raw) != length:
        raise DecodeError(f"the QR code's {what} should be {length} bytes, not {len(raw)}")
    return raw


@dataclasses.dataclass(frozen=True)
class QrCode:
    """What a ``qr`` pairing QR code carries."""

    host_static: bytes
    secret: bytes = dataclasses.field(repr=False)
    expires: int
    hint: str = ""

    def __post_init__(self) -> None:
        if len(self.host_static) != 32:
            raise ValueError("host_static must be a 32-byte X25519 public key")
        if len(self.secret) != SECRET_LEN:
            raise ValueError(f"secret must be {SECRET_LEN} bytes")
        if not _HINT.match(self.hint):
            raise ValueError("hint has characters a QR hint may not carry")

    @property
    def code_id(self) -> bytes:
        """Which code this is (the host looks the secret up by it); reveals nothing of it."""
        return digest(keyschedule.QR_ID + self.secret, 8)

    def to_uri(self) -> str:
        query = urlencode(
            {
                "v": VERSION,
                "k": _b64(self.host_static),
                "s": _b64(self.secret),
                "x": self.expires,
                "h": self.hint,
            },
            quote_via=quote,
            safe=":[]",
        )
        return f"{SCHEME}:qr?{query}"

    @classmethod
    def parse(cls, uri: str) -> QrCode:
        """Parse a QR URI strictly; :class:`DecodeError` says what is wrong."""
        uri = uri.strip()
        if len(uri) > 512:
            raise DecodeError("this QR code is too long to be a pairkit code")
        try:
            parts = urlsplit(uri)
        except ValueError:  # e.g. an unclosed IPv6 bracket ("https://[fe80::1/x")
            raise DecodeError(
                "this is not a pairkit QR code (it should start with 'pairkit:qr?')"
            ) from None
        if parts.scheme != SCHEME or parts.path != "qr":
            raise DecodeError("this is not a pairkit QR code (it should start with 'pairkit:qr?')")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise DecodeError("the QR code's parameters are malformed") from None
        unknown = set(query) - {"v", "k", "s", "x", "h"}
        if unknown:
            # counted, not named: the names are whoever made the code's text (atk20c finding 2)
            raise DecodeError(f"the QR code has {len(unknown)} unknown field(s)")
        if any(len(v) != 1 for v in query.values()):
            raise DecodeError("the QR code repeats a field")
        fields = {k: v[0] for k, v in query.items()}
        if fields.get("v") != str(VERSION):
            v = fields.get("v") or ""
            said = v if v.isdigit() and len(v) <= 6 else f"(a text of {len(v)} characters)"
            raise DecodeError(f"unsupported QR code version {said} (this side reads {VERSION})")
        for name in ("k", "s", "x"):
            if name not in fields:
                raise DecodeError(f"the QR code lacks its '{name}' field")
        if not fields["x"].isdigit() or len(fields["x"]) > 12:
            raise DecodeError("the QR code's expiry is not a time")
        try:
            return cls(
                host_static=_unb64(fields["k"], 32, "host key"),
                secret=_unb64(fields["s"], SECRET_LEN, "secret"),
                expires=int(fields["x"]),
                hint=fields.get("h", ""),
            )
        except ValueError as exc:
            raise DecodeError(f"the QR code is not valid: {exc}") from None

    def check_fresh(self, wall_now: float) -> None:
        if wall_now >= self.expires:
            raise ExpiredError("this QR code has expired; ask the host to show a new one")
