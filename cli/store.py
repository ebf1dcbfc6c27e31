"""QR code pictures for the terminal and files; the peer records are :mod:`pairkit.peers`
(re-exported here for the CLI's commands)."""

from __future__ import annotations

import io
from pathlib import Path

from pairkit.pairing.errors import DecodeError
from pairkit.peers import (
    cloud_members,
    consume_our_prekey,
    drop_their_prekey,
    find_peer,
    key_fingerprint,
    known_peer,
    local_identity,
    peer_contact,
    peer_grant,
    peer_rows,
    save_session,
    suspect,
    trusted,
)

__all__ = [
    "cloud_members",
    "consume_our_prekey",
    "drop_their_prekey",
    "find_peer",
    "key_fingerprint",
    "known_peer",
    "local_identity",
    "peer_contact",
    "peer_grant",
    "peer_rows",
    "qr_from_image",
    "qr_png",
    "qr_text",
    "save_session",
    "suspect",
    "trusted",
]


def qr_text(uri: str) -> str:
    """The QR code drawn with text blocks, for a terminal."""
    import qrcode

    code = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(uri)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def qr_png(uri: str, path: Path) -> None:
    import qrcode

    img = qrcode.make(uri, error_correction=qrcode.constants.ERROR_CORRECT_M)
    with open(path, "wb") as fh:
        img.save(fh)


def qr_from_image(path: str) -> str:
    """The text of the first QR code found in a picture."""
    import zxingcpp
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            results = zxingcpp.read_barcodes(img.convert("RGB"))
    except (OSError, UnidentifiedImageError):
        raise DecodeError(f"cannot read {path} as a picture") from None
    for r in results:
        if r.text:
            return str(r.text)
    raise DecodeError(f"no QR code found in {path}")
