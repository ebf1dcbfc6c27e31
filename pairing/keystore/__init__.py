"""The device's keystore: its identity, known peers, cloud secrets and group keys, sealed at rest.

DESIGN.md "Identification": each device has an identity (an X25519 static key and an Ed25519
signing key) in a local keystore sealed under a key derived from the owner's PIN or passphrase
with Argon2id (RFC 9106); keystores written by earlier versions with scrypt (RFC 7914) still
open, and are re-sealed with Argon2id on their next write.  The keystore plays the device's
*secure environment*: its API uses the private keys (Diffie-Hellman, signatures, HPKE
opening, group AEAD, cloud MACs) but never returns them.  The one deliberate exception is
:meth:`Keystore._static_private_for_handshake`, the internal door through which the Noise
handshake module receives the static private key.

The keystore is split along its jobs: :mod:`.records` (peers and what may be shown of a cloud),
:mod:`.seal` (the sealed format below), :mod:`.envelope` (HPKE envelopes), :mod:`.storage` (where
the sealed bytes live: the runtime's file, or memory) and :mod:`.store` (the keystore itself).
This package reads no file: the file, its atomic replace and its lock are
:class:`pairkit.filestore.FileStorage`, and :class:`pairkit.keystore.Keystore` opens one by path.

File format (one file, ``keystore.pk``)::

    magic "PKKS" (4) | header length (2, big endian) | header | check (32) | body

* ``header`` is a canonical CBOR map (RFC 8949 §4.2.1) ``{1: format version, 2: "argon2id",
  3: memory (KiB), 4: iterations, 5: lanes, 6: salt (16), 7: nonce (12)}``, or, as earlier
  versions wrote it, ``{..., 2: "scrypt", 3: n, 4: r, 5: p, ...}``.  The parameters live in the
  file so that a later version can raise them (:meth:`Keystore.change_pin` accepts new ones).
* ``master = Argon2id(PIN, salt, memory, iterations, lanes)`` (RFC 9106 §3), or
  ``scrypt(PIN, salt, n, r, p)`` (RFC 7914 §6) for an earlier keystore; two subkeys are
  expanded from it with HKDF-Expand (RFC 5869 §2.3): a *check key* and a *body key*.

The default Argon2id cost is RFC 9106 §4's second recommended setting: 64 MiB of memory, 3
passes, 4 lanes.  It takes about 0.17 s on the machines pairkit is developed on and about 0.5 s
on a Raspberry Pi 4, which bounds an offline search of a stolen keystore file to a few guesses
per second per core and per 64 MiB; with the required 6 characters or more, a passphrase of
letters and digits is out of reach.  An earlier scrypt keystore is re-sealed the first time it
is written after being opened (its new Argon2id keys are derived when it is opened, while the
PIN is at hand; nothing else changes).
* ``check = HMAC-SHA256(check key, magic | length | header)``: a key-check value, so that a
  wrong PIN (check mismatch: :class:`WrongPinError`) is told apart from a damaged body (AEAD
  failure with the right PIN: :class:`KeystoreCorruptError`).  A damaged header reads as a wrong
  PIN, which is the best anyone can tell without the key.
* ``body`` is ChaCha20-Poly1305 (RFC 8439) under the body key and the header's nonce, with
  everything before it (magic to check) as associated data.  The plaintext is canonical CBOR
  with no tag but a bignum's: a body holding another (value sharing, string references) is
  refused at open with :class:`KeystoreCorruptError` naming the part, before it is decoded
  (:func:`pairkit.pairing.cbor.decode_stored`).

Salt and nonce policy: the salt is drawn when the store is created and again on every
:meth:`~Keystore.change_pin`; a plain :meth:`~Keystore.save` keeps the salt (so the PIN need
not be kept in memory and scrypt need not run again) and draws a fresh 96-bit random nonce, which
is safe for far more saves than a keystore will ever see.

A :class:`~pairkit.filestore.FileStorage` writes atomically (a temporary file in the same
directory, fsync, ``os.replace``, fsync the directory); the file is created 0600 and its
directory 0700.  Reading or failing to read never changes the file.
"""

from __future__ import annotations

from .envelope import open_envelope, seal_envelope
from .records import (
    MAX_NAME_LENGTH,
    CloudInfo,
    Peer,
    PnEntry,
    PnRecord,
    device_id_of,
    fingerprint_of,
)
from .seal import (
    DEFAULT_SCRYPT_N,
    FORMAT_VERSION,
    MAX_FILE_SIZE,
    MIN_PIN_LENGTH,
    Argon2Params,
    Kdf,
    ScryptParams,
)
from .storage import MemoryStorage, Storage
from .store import MAX_GROUP_EPOCH, Keystore, KeystoreNotFoundError

__all__ = [
    "DEFAULT_SCRYPT_N",
    "FORMAT_VERSION",
    "MAX_FILE_SIZE",
    "MAX_GROUP_EPOCH",
    "MAX_NAME_LENGTH",
    "MIN_PIN_LENGTH",
    "Argon2Params",
    "CloudInfo",
    "Kdf",
    "Keystore",
    "KeystoreNotFoundError",
    "MemoryStorage",
    "Peer",
    "PnEntry",
    "PnRecord",
    "ScryptParams",
    "Storage",
    "device_id_of",
    "fingerprint_of",
    "open_envelope",
    "seal_envelope",
]
