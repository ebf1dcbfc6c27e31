"""QR code pictures for the terminal and files; the peer records are :mod:`pairkit.peers`
(re-exported here for the CLI's commands)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

from pairkit.pairing.errors import ConfigError, DecodeError
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


#: how to get what QR code pictures need (Pillow, zxing-cpp): the optional extra ``qr``
QR_EXTRA = "pip install 'pairkit[qr]'"


def need_qr_pictures(what: str, *modules: str) -> list[Any]:
    """Import the ``qr`` extra's ``modules`` for ``what``, or say how to install them.

    Pillow and zxing-cpp are an optional extra (issue 12): a missing one raises ConfigError
    (an exit code and a one-line message from the CLI) rather than an ImportError's traceback.
    """
    import importlib

    out = []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError as exc:
            missing = {"PIL": "Pillow", "zxingcpp": "zxing-cpp"}.get(
                (exc.name or name).split(".")[0], exc.name or name
            )
            raise ConfigError(
                f"{what} needs {missing}, which is not installed: {QR_EXTRA}"
            ) from None
    return out


def qr_png(uri: str, path: Path) -> None:
    """Write the QR code for ``uri`` to a PNG file (needs the ``qr`` extra)."""
    need_qr_pictures("writing a QR code picture (--qr-png)", "PIL.Image")
    import qrcode

    img = qrcode.make(uri, error_correction=qrcode.constants.ERROR_CORRECT_M)
    # The picture holds a one-time secret (the QR code's key): only its owner may read it,
    # from the moment it exists (created 0600, and an older file's mode tightened too).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)
    with open(fd, "wb") as fh:
        img.save(fh, format="PNG")


#: the largest picture --qr-image decodes: a 48-megapixel phone photo, no more
MAX_QR_IMAGE_PIXELS = 50_000_000


def qr_from_image(path: str) -> str:
    """The text of the first QR code found in a picture (needs the ``qr`` extra)."""
    zxingcpp, image = need_qr_pictures(
        "reading a QR code from a picture (--qr-image)", "zxingcpp", "PIL.Image"
    )
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: ours below says it better
            warnings.simplefilter("ignore", image.DecompressionBombWarning)
            img = image.open(path)
        with img:
            # Image.open reads only the header: the size is known before anything is decoded,
            # so a small file that would decode to gigabytes (a decompression bomb) is refused
            # here, not after it filled the memory (issue 17, finding 10).
            width, height = img.size
            if width * height > MAX_QR_IMAGE_PIXELS:
                raise DecodeError(
                    f"{path} is {width}x{height} pixels, more than a QR code photo needs "
                    f"({MAX_QR_IMAGE_PIXELS // 1_000_000} megapixels at most): crop it"
                )
            results = zxingcpp.read_barcodes(img.convert("RGB"))
    except (OSError, image.UnidentifiedImageError, image.DecompressionBombError):
        raise DecodeError(f"cannot read {path} as a picture") from None
    for r in results:
        if r.text:
            return str(r.text)
    raise DecodeError(f"no QR code found in {path}")
