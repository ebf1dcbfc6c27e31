"""What the signing-key attack tests share (docs/security.md rule 1; attack reviews atk18b and
atk18c): a device with another signing key than its own, and a member of Paul's cloud who knows
Paul by his real keys."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import pairkit
from pairkit.keystore import Peer

from .attack_harness import open_ks, owned_cloud
from .cli_helpers import KEYSTORE_PIN, Device, Lab


def with_another_signing_key(
    path: Path, pin: str = KEYSTORE_PIN, *, copy_to: Path | None = None,
) -> pairkit.Device:
    """The device at ``path``, opened again, with a fresh signing key in memory (never saved):
    its identity and static key, as a thief of the static key alone would hold them.
    ``copy_to``: a folder (made here) the keystore file is copied into first, so that what the
    thief saves (settings, peers) stays in her copy."""
    if copy_to is not None:
        copy_to.mkdir()
        path = Path(shutil.copy(path, copy_to / path.name))
    made = pairkit.Device.open(path, pin)
    forged = Ed25519PrivateKey.generate()
    made.keystore._signing = forged
    made.keystore._signing_public = forged.public_key().public_bytes_raw()
    return made


def held(device: Device) -> dict[str, tuple[str, int, bytes]]:
    """Every cloud ``device`` holds: id -> (role, epoch, a MAC standing for the secret)."""
    ks = open_ks(device)
    return {c.cloud_id: (c.role, c.epoch, ks.cloud_mac(c.cloud_id, b"probe"))
            for c in ks.clouds()}


def george_member_of_pauls_cloud(lab: Lab) -> tuple[Device, Device, str]:
    """Paul renewed his cloud once; George holds it at epoch 1, joined from Paul as a join
    stores it (the owner's id and signing key kept with the cloud), and knows Paul as a peer
    with Paul's real signing key.  (Paul, George, the cloud id)."""
    paul, george = lab.device("paul"), lab.device("george")
    cloud_id, _ = owned_cloud(paul)
    pks = open_ks(paul)
    secret = os.urandom(32)
    with pks.update():
        assert pks.renew_cloud_secret(cloud_id, secret) == 1
    gks = open_ks(george)
    with gks.update():
        gks.set_cloud(cloud_id, secret, name="Paul's cloud", role="member", epoch=1,
                      owner=pks.device_id, owner_signing=pks.signing_public)
        now = time.time()
        gks.add_peer(Peer(id=pks.device_id, name=pks.name, static_public=pks.static_public,
                          signing_public=pks.signing_public, authenticated=True, method="pin",
                          first_seen=now, last_seen=now))
    return paul, george, cloud_id


# -- Ed25519's small-order points, worked out here from the curve (RFC 8032 §5.1) --------------
#
# A public key A of small order (8A = 0) takes signatures made with no key: with R one of the
# eight small-order points and S = 0, cofactorless verification (OpenSSL's, so `cryptography`'s)
# checks R = -k·A, k = SHA-512(R || A || M), which holds whenever k·A lands on -R: for about one
# message in eight for each R, so nearly every message has a forgery among the eight R.

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
#: the order of the base point (RFC 8032 §5.1: L)
ORDER = 2**252 + 27742317777372353535851937790883648493
Point = tuple[int, int]
NEUTRAL: Point = (0, 1)


def _add(a: Point, b: Point) -> Point:
    """Edwards addition on -x² + y² = 1 + d·x²·y² (RFC 8032 §5.1.4, affine)."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def times(k: int, point: Point) -> Point:
    out = NEUTRAL
    while k:
        if k & 1:
            out = _add(out, point)
        point, k = _add(point, point), k >> 1
    return out


def x_for(y: int) -> int | None:
    """An x with (x, y) on the curve, or None (RFC 8032 §5.1.3, steps 2 and 3)."""
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x2 = u * pow(v, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    return None if (x * x - x2) % P else x


@functools.cache
def small_order_points() -> frozenset[Point]:
    """All eight points of order dividing 8: L times points of the curve (whose order is 8·L)
    fall in that subgroup; taken until eight distinct ones are found."""
    found: set[Point] = set()
    y = 2
    while len(found) < 8:
        x = x_for(y)
        if x is not None:
            found.add(times(ORDER, (x, y)))
        y += 1
    assert all(times(8, q) == NEUTRAL for q in found)
    return frozenset(found)


def encode(y: int, sign: int) -> bytes:
    """32 bytes: y little-endian, the sign of x in the top bit (RFC 8032 §5.1.2)."""
    return (y | sign << 255).to_bytes(32, "little")


def order(point: Point) -> int:
    """The order of a small-order point (1, 2, 4 or 8)."""
    return next(n for n in (1, 2, 4, 8) if times(n, point) == NEUTRAL)


def small_order_encodings() -> dict[str, bytes]:
    """Every 32-byte string that names a small-order point to OpenSSL: the eight canonical
    encodings; x = 0 with the sign bit set (a non-canonical "negative zero"); and y + p in
    place of y where that is below 2^255 (y = 0 and y = 1; also non-canonical).  Keyed by a
    readable id: the point's order, the sign of its x, and the variant."""
    out: dict[str, bytes] = {}
    for x, y in sorted(small_order_points(), key=lambda q: (order(q), q[1], q[0] & 1)):
        ident = f"order{order((x, y))}-y{y % 1000:03d}{'-' if x & 1 else '+'}"
        signs = (0, 1) if x == 0 else (x & 1,)
        for sign in signs:
            for value in (y, y + P):
                if value < 2**255:
                    variant = ("" if (value, sign) == (y, x & 1) else
                               "-negzero" if value == y else
                               "-y+p" + "-negzero" * (sign != x & 1))
                    out[ident + variant] = encode(value, sign)
    assert len(set(out.values())) == len(out)
    return out


#: the neutral point (y = 1): every message has a forgery with R = the neutral point, S = 0
NEUTRAL_KEY = encode(1, 0)
#: the all-zero key of the resume stand-in (y = 0, a point of order 4)
ZERO_KEY = bytes(32)


def forge(public: bytes, message: bytes) -> bytes | None:
    """A signature of ``message`` under ``public`` made with no private key (R a small-order
    point, S = 0) that `cryptography` verifies, or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(public)
    for x, y in sorted(small_order_points()):
        signature = encode(y, x & 1) + bytes(32)
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return signature
    return None
