"""The keystore: a device's identity, known peers, cloud secrets, group keys and settings, sealed
under its owner's PIN (DESIGN.md "Identification").

It plays the device's *secure environment*: its API uses the private keys (Diffie-Hellman,
signatures, HPKE opening, group AEAD, cloud MACs) but never returns them.  The one deliberate
exception is :meth:`Keystore._static_private_for_handshake`, the internal door through which the
Noise handshake module receives the static private key.  The sealed bytes go through a
:class:`~.storage.Storage`; this module reads no file and no clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import cbor
from ..errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ErrorCode,
    ExpiredError,
    KeystoreCorruptError,
    KeystoreError,
    NotFoundError,
    PairingError,
    WrongPinError,
)
from .envelope import open_envelope, seal_envelope
from .records import (
    CloudInfo,
    Peer,
    PnRecord,
    _check_name,
    _check_public_key,
    _check_time,
    _freeze,
    device_id_of,
    fingerprint_of,
    thaw,
)
from .seal import (
    CHECK_SIZE,
    DEFAULT_SCRYPT_P,
    DEFAULT_SCRYPT_R,
    FORMAT_VERSION,
    KEY_SIZE,
    MAGIC,
    MAX_FILE_SIZE,
    MAX_HEADER_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    Argon2Params,
    Kdf,
    ScryptParams,
    _check_new_pin,
    _derive_keys,
    _Header,
    _Keys,
    _parse_header,
    _pin_bytes,
    _seal,
    _upgrade_of,
    unseal,
)
from .storage import Storage

__all__ = ["Keystore", "KeystoreNotFoundError"]

Rng = Callable[[int], bytes]
#: derives a seal's check and body keys: ``(pin, salt, kdf) -> keys`` (:attr:`Keystore._derive`)
KeyDerivation = Callable[[bytes, bytes, Kdf], _Keys]
#: enough of a sealed keystore to parse its header (magic, length, header, check, a tag)
_HEADER_PREFIX = len(MAGIC) + 2 + MAX_HEADER_SIZE + CHECK_SIZE + 16
_HEX_RE = re.compile(r"[0-9a-f]+")
#: a device id (:func:`device_id_of`): 16 bytes in lowercase hex
_DEVICE_ID_RE = re.compile(r"[0-9a-f]{32}")


def _is_owner_of(owner: object, cloud_id: str) -> bool:
    """Whether ``owner`` can be the owner kept with ``cloud_id``: a device id whose first 16
    hex digits are the cloud's id (docs/security.md, rule 3)."""
    return (
        isinstance(owner, str) and bool(_DEVICE_ID_RE.fullmatch(owner))
        and owner[:16] == cloud_id
    )


def _is_epoch(value: object) -> bool:
    """Whether ``value`` is a cloud's epoch as pairkit writes one: an integer from 0, not a
    flag (``set_cloud``; docs/security.md "Renewing the cloud secret")."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unwritten(where: str, entry: Mapping[str, Any], what: str) -> KeystoreCorruptError:
    """A cloud record holds ``what`` (its parenthesis left open), which no reading makes safe:
    the keystore is refused, in words naming the cloud, never its secret (session 19)."""
    return KeystoreCorruptError(
        f"the keystore at {where} holds the cloud {str(entry['name'])!r} {what}; another "
        "program with its PIN may have written it): it is not opened. Put back a backup of "
        "the keystore"
    )


def _unwritten_group(where: str, group: object, what: str) -> KeystoreCorruptError:
    """The keys of ``group`` hold ``what``, which no pairkit writes: the keystore is refused,
    in words naming the group, never a key (session 20, as :func:`_unwritten` for clouds)."""
    named = f"group {group[:40]!r}" if isinstance(group, str) and group else "a group"
    return KeystoreCorruptError(
        f"the keystore at {where} holds the keys of {named} {what}, which no pairkit writes "
        "(another program with its PIN may have written it): it is not opened. Put back a "
        "backup of the keystore"
    )


def _group_keys_read(where: str, group: object, epochs: object) -> dict[int, bytes]:
    """A group's keys as :meth:`Keystore.store_group_key` writes them (a group name; an epoch
    from 0 to :data:`MAX_GROUP_EPOCH`, not a flag; a key of 32 bytes), else refused: read with
    ``int()`` and ``bytes()``, a text made up an epoch and the number 32 was 32 zero bytes, a
    key everyone knows (session 20)."""
    if not isinstance(group, str) or not group:
        raise _unwritten_group(where, group, "under a name that is not a text")
    if not isinstance(epochs, dict):
        raise _unwritten_group(where, group, "in a form that is not a map of epochs")
    for epoch, key in epochs.items():
        if not _is_epoch(epoch) or epoch > MAX_GROUP_EPOCH:
            raise _unwritten_group(where, group, f"at an epoch that is not a count from 0 to "
                                   f"{MAX_GROUP_EPOCH}")
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise _unwritten_group(where, group, f"with a key that is not {KEY_SIZE} bytes")
    return dict(epochs)


#: the last epoch a group key is kept for (``pairing.groups.MAX_EPOCH`` is this: a group's
#: epoch goes on the air in 4 bytes)
MAX_GROUP_EPOCH = 2**32 - 1

#: retired cloud secrets kept per owned cloud (docs/security.md "Renewing the cloud secret"): a
#: member that missed more renewals than this is asked about as a stranger once
MAX_RETIRED_SECRETS = 16

#: a keystore's contents as :meth:`Keystore._reload` replaces them: name, peers, clouds,
#: groups, settings
_Contents = tuple[str, dict[str, Peer], dict[str, dict[str, Any]], dict[str, dict[int, bytes]],
                  dict[str, Any]]


#: what each member of the body holds, as the keystore's owner reads it (:func:`_holds_a_tag`)
_MEMBERS_HOLD = {
    "settings": "its settings (where PIN lockouts are counted) hold",
    "peers": "its known peers hold",
    "clouds": "its clouds hold",
    "groups": "its group keys hold",
    "identity": "its identity holds",
}


def _holds_a_tag(where: str, exc: cbor.StoredTagError) -> str:
    """What the owner reads of a body that holds a tag no pairkit writes: above all a value
    shared by reference, which every read would walk 2**depth times and every save write out
    in full.  Refused, not dropped: the lockouts are among the settings (session 19, kvtree)."""
    holds = _MEMBERS_HOLD.get(exc.member or "", "its contents hold")
    return (
        f"the keystore at {where} is damaged: {holds} {exc.what}, which no pairkit writes; "
        "put back a copy of it from before it was changed"
    )


#: the fields of a cloud's record this version reads; any other is a later version's, kept
_CLOUD_FIELDS = frozenset({"secret", "name", "role", "expires", "epoch", "owner",
                           "owner_signing", "retired"})
#: how deep a later version's cloud field may nest (as a setting: records._freeze)
_LATER_FIELD_DEPTH = 32


def _written_back_as_read(value: object) -> bool:
    """Whether a cloud field this version does not know is plain CBOR data that a save writes
    back as it was read: integers within 64 bits, text, bytes, finite floats, booleans, null,
    and arrays and maps of them (text or integer keys), none met twice.  cbor2 reads value
    sharing (tags 28, 29), which a save does not write: a field that holds itself fails every
    save, and a tree of one shared node is written out in full (attack review atk18b)."""
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if item is None or isinstance(item, bool | str | bytes):
            continue
        if isinstance(item, int):
            if not -(1 << 64) <= item < 1 << 64:
                return False
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
            continue
        if type(item) not in (list, dict) or depth >= _LATER_FIELD_DEPTH or id(item) in seen:
            return False
        seen.add(id(item))
        if isinstance(item, list):
            todo.extend((child, depth + 1) for child in item)
            continue
        assert isinstance(item, dict)
        for key, child in item.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                return False
            todo.append((key, depth + 1))
            todo.append((child, depth + 1))
    return True


class KeystoreNotFoundError(KeystoreError, NotFoundError):
    """There is no keystore yet; run `pairkit init` to create one."""


def _raw_private(key: x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: x25519.X25519PublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_rng_output(data: bytes, size: int) -> bytes:
    if not isinstance(data, bytes) or len(data) != size:
        raise ConfigError(f"the random source must return {size} bytes when asked for {size}")
    return data


def _check_storage(storage: object) -> None:
    if not isinstance(storage, Storage):
        raise ConfigError(
            "this keystore is kept in a Storage (pairkit.pairing.keystore.MemoryStorage, "
            "pairkit.filestore.FileStorage); to open one by path use pairkit.keystore.Keystore"
        )


class Keystore:
    """The sealed keystore of one device (DESIGN.md "Identification").

    Create one with :meth:`create` or unlock one with :meth:`open`, on a :class:`Storage` (the
    runtime's :class:`pairkit.keystore.Keystore` takes a file path instead).  Changes (peers,
    clouds, group keys, settings, name) stay in memory until :meth:`save`.  Private keys never
    leave the object, except through :meth:`_static_private_for_handshake`.
    """

    #: How the seal's keys are derived from the PIN: every derivation (:meth:`create`,
    #: :meth:`open`, the scrypt-to-Argon2id upgrade at open, :meth:`change_pin`) goes through
    #: it.  Here the plain Argon2id or scrypt (:func:`.seal._derive_keys`); the runtime's
    #: :class:`pairkit.keystore.Keystore` makes derivations one at a time across threads, a
    #: lock this pure core may not take (pairkit.keystore explains why).
    _derive: ClassVar[KeyDerivation] = staticmethod(_derive_keys)

    def __init__(
        self,
        storage: Storage,
        *,
        static_key: x25519.X25519PrivateKey,
        signing_key: ed25519.Ed25519PrivateKey,
        name: str,
        header: _Header,
        keys: _Keys,
        rng: Rng,
    ) -> None:
        # Not for direct use: call Keystore.create or Keystore.open.
        self._storage = storage
        self._static = static_key
        self._signing = signing_key
        self._static_public = _raw_public(static_key.public_key())
        self._signing_public = _raw_public(signing_key.public_key())
        self._name = _check_name(name, "the device name")
        self._header = header
        self._keys = keys
        self._rng = rng
        #: the header this object held and the stored header's bytes that :meth:`follow` found
        #: naming it (None: none yet)
        self._followed: tuple[_Header, bytes] | None = None
        self._peers: dict[str, Peer] = {}
        self._clouds: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, dict[int, bytes]] = {}
        self._settings: dict[str, Any] = {}
        #: the Argon2id seal an earlier scrypt keystore takes at its next write
        self._upgrade: tuple[_Header, _Keys] | None = None
        #: the sealed bytes last read or written, and the contents they hold (_remember)
        self._stored: tuple[bytes, _Contents] | None = None
        #: the peers last encoded, and their encodings joined (_peers_encoded)
        self._peers_blob: tuple[tuple[Peer, ...], bytes] | None = None
        #: inside :meth:`update` (under the lock, just reloaded): :meth:`follow` has nothing to do
        self._updating = False
        #: changed in memory since the last save or reload (:meth:`follow` never drops that)
        self._dirty = False

    def __repr__(self) -> str:
        return f"<Keystore {self.device_id} {self._name!r} at {self._storage.where}>"

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        storage: Storage,
        pin: str | bytes,
        *,
        name: str,
        rng: Rng = os.urandom,
        kdf: Argon2Params | None = None,
        scrypt_n: int | None = None,
        scrypt_r: int = DEFAULT_SCRYPT_R,
        scrypt_p: int = DEFAULT_SCRYPT_P,
        overwrite: bool = False,
    ) -> Keystore:
        """Make a new identity, seal it under ``pin`` and store it in ``storage``.  Refuses to
        replace an existing keystore unless ``overwrite``.

        The seal is Argon2id at ``kdf`` (default: :class:`Argon2Params`'s defaults).
        ``scrypt_n`` instead writes the earlier versions' scrypt format (the upgrade's tests,
        and cheap test keystores: one with ``scrypt_n`` below the default is re-sealed at
        :meth:`Argon2Params.cheapest`).  The PIN needs :data:`MIN_PIN_LENGTH` characters."""
        _check_storage(storage)
        if not overwrite and storage.exists():
            raise KeystoreError(
                f"a keystore already exists at {storage.where}; refusing to replace it "
                "(that would lose this device's identity and its known peers)"
            )
        chosen: Kdf = (
            ScryptParams(scrypt_n, scrypt_r, scrypt_p) if scrypt_n is not None
            else kdf or Argon2Params()
        )
        pin_bytes = _check_new_pin(_pin_bytes(pin))
        _check_name(name, "the device name")
        salt = _check_rng_output(rng(SALT_SIZE), SALT_SIZE)
        store = cls(
            storage,
            static_key=x25519.X25519PrivateKey.from_private_bytes(
                _check_rng_output(rng(KEY_SIZE), KEY_SIZE)
            ),
            signing_key=ed25519.Ed25519PrivateKey.from_private_bytes(
                _check_rng_output(rng(KEY_SIZE), KEY_SIZE)
            ),
            name=name,
            header=_Header(FORMAT_VERSION, chosen, salt, bytes(NONCE_SIZE)),
            keys=cls._derive(pin_bytes, salt, chosen),
            rng=rng,
        )
        store.save()
        return store

    @classmethod
    def open(cls, storage: Storage, pin: str | bytes, *, rng: Rng = os.urandom) -> Keystore:
        """Unlock the keystore in ``storage`` with ``pin``.

        Raises :class:`KeystoreNotFoundError` if there is none, :class:`WrongPinError` for a wrong
        PIN (or a damaged header), :class:`KeystoreCorruptError` for a damaged or truncated file.
        """
        _check_storage(storage)
        pin_bytes = _pin_bytes(pin)
        data = storage.read(MAX_FILE_SIZE)
        if data is None:
            raise KeystoreNotFoundError(
                f"there is no keystore at {storage.where}; run `pairkit init` to create one"
            )
        header, _ = _parse_header(data, storage.where)
        keys = cls._derive(pin_bytes, header.salt, header.kdf)
        header, body = unseal(data, keys, storage.where)
        try:
            store = cls._from_body(storage, body, header, keys, rng)
        except cbor.StoredTagError as exc:
            raise KeystoreCorruptError(_holds_a_tag(storage.where, exc)) from None
        except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
            # The body is authenticated, so this is a pairkit bug or an unknown layout.
            raise KeystoreCorruptError(
                f"the keystore at {storage.where} has contents this pairkit cannot read"
            ) from None
        store._remember(data)
        if isinstance(header.kdf, ScryptParams):
            # An earlier version's seal: derive the Argon2id one now, while the PIN is here,
            # and use it at the next write (nothing is written just by opening).
            upgrade = _upgrade_of(header.kdf)
            salt = _check_rng_output(rng(SALT_SIZE), SALT_SIZE)
            store._upgrade = (
                _Header(FORMAT_VERSION, upgrade, salt, header.nonce),
                cls._derive(pin_bytes, salt, upgrade),
            )
        return store

    @classmethod
    def _from_body(
        cls, storage: Storage, body: bytes, header: _Header, keys: _Keys, rng: Rng
    ) -> Keystore:
        data = cbor.decode_stored(body)  # no value sharing: 2**depth (session 19, kvtree)
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise ValueError("unknown body layout")
        ident = data["identity"]
        store = cls(
            storage,
            static_key=x25519.X25519PrivateKey.from_private_bytes(ident["x25519"]),
            signing_key=ed25519.Ed25519PrivateKey.from_private_bytes(ident["ed25519"]),
            name=ident["name"],
            header=header,
            keys=keys,
            rng=rng,
        )
        for item in data["peers"]:
            peer = Peer._from_cbor(item)
            store._peers[peer.id] = peer
        for cloud_id, entry in data["clouds"].items():
            # A secret as set_cloud takes one (16 bytes or more), else refused: read with
            # bytes(), the number 32 was 32 zero bytes, a secret anyone knows (session 19).
            if not isinstance(entry["secret"], bytes) or len(entry["secret"]) < 16:
                raise _unwritten(storage.where, entry, "with a secret that is not one pairkit "
                                 "writes (16 bytes or more")
            # An expiry as set_cloud takes one (none, or seconds from 0, finite), else refused:
            # a text ended every join where it is compared, NaN never expired (session 20).
            if entry["expires"] is not None:
                try:
                    _check_time(entry["expires"], "a cloud's expiry")
                except ConfigError:
                    raise _unwritten(storage.where, entry, "with an expiry that is not a time "
                                     "pairkit writes (seconds from 0, finite") from None
            store._clouds[cloud_id] = {
                "secret": entry["secret"],
                "name": str(entry["name"]),
                "role": str(entry["role"]),
                "expires": entry["expires"],
            }
            # A renewed secret's epoch and the secrets it retired (docs/security.md "Renewing
            # the cloud secret"); absent from clouds never renewed, as in older keystores.
            # An epoch pairkit never writes (below 0, a flag, a text, a fraction) has no safe
            # reading: as 0 or rounded, a member would take an older secret from its owner as a
            # renewal (renew19 finding 2).  So it is refused, as contents this pairkit cannot
            # read are, in words naming the cloud.
            if "epoch" in entry:
                if not _is_epoch(entry["epoch"]):
                    raise _unwritten(storage.where, entry, "at an epoch that is not a count "
                                     "from 0 (its renewals are checked against it")
                store._clouds[cloud_id]["epoch"] = entry["epoch"]
            # The owner a member cloud was joined from (rule 3); absent from clouds joined
            # before it was kept, and from owned ones.  One that set_cloud would refuse (a
            # process with the PIN wrote it) is not kept: the cloud is then renewed only with
            # this device's proof, and every join does not fail on it (atk17 finding 2).
            if _is_owner_of(entry.get("owner"), cloud_id):
                store._clouds[cloud_id]["owner"] = entry["owner"]
                # and its signing key, kept with it since session 18 (atk18c finding 3)
                signing = entry.get("owner_signing")
                if isinstance(signing, bytes) and len(signing) == 32:
                    store._clouds[cloud_id]["owner_signing"] = signing
            # Only retired secrets as pairkit writes them are kept (an epoch from 0 below the
            # cloud's, 16 bytes or more): without one, a host asks about a guest that proves it
            # as about a stranger, as past the last 16 kept; never the other way round.
            if isinstance(entry.get("retired"), dict):
                below = store._clouds[cloud_id].get("epoch", 0)
                store._clouds[cloud_id]["retired"] = {
                    epoch: secret for epoch, secret in entry["retired"].items()
                    if _is_epoch(epoch) and epoch < below
                    and isinstance(secret, bytes) and len(secret) >= 16
                }
            # A field a later pairkit wrote, which this one does not know, is kept as it was
            # and written back at each save: a version that dropped such fields undid what a
            # later one kept, e.g. a member's owner (attack review atk18, finding 2).  Only
            # one a save writes back as read; any other is not kept (atk18b finding 1).
            for key, value in entry.items():
                if key not in _CLOUD_FIELDS and isinstance(key, str) \
                        and _written_back_as_read(value):
                    store._clouds[cloud_id][key] = value
        for group, epochs in data["groups"].items():
            store._groups[group] = _group_keys_read(storage.where, group, epochs)
        store._settings = {k: _freeze(v, "a setting") for k, v in data["settings"].items()}
        return store

    def _body(self) -> bytes:
        """The contents in canonical CBOR (RFC 8949 §4.2.1, cbor2's canonical mode).

        Each peer's encoding is made once per record (:meth:`Peer._encoded`) and the
        top-level map is put together from its members' encodings, in the canonical key
        order: the same bytes as encoding the whole map at once, without re-encoding and
        sorting every known peer at every save (issue 13)."""
        peers = tuple(self._peers.values())
        members = {
            "v": cbor.encode(FORMAT_VERSION),
            "identity": cbor.encode({
                "x25519": _raw_private(self._static),
                "ed25519": _raw_private(self._signing),
                "name": self._name,
            }),
            "peers": cbor.encode_head(4, len(peers)) + self._peers_encoded(peers),
            "clouds": cbor.encode(self._clouds),
            "groups": cbor.encode(self._groups),
            "settings": cbor.encode({k: thaw(v) for k, v in self._settings.items()}),
        }
        # canonical key order: shorter encoded keys first, then bytewise (as cbor2 sorts)
        keys = sorted(((cbor.encode(key), key) for key in members),
                      key=lambda item: (len(item[0]), item[0]))
        return cbor.encode_head(5, len(keys)) + b"".join(
            encoded + members[key] for encoded, key in keys
        )

    def _peers_encoded(self, peers: tuple[Peer, ...]) -> bytes:
        """The peers' encodings one after another.  What the last save wrote is kept: when
        the peers are those, plus new ones at the end (a host that met a new guest), only the
        new ones are added to it (issue 13); any other change joins them all again."""
        kept = self._peers_blob
        if kept is not None and peers[: len(kept[0])] == kept[0]:
            blob = kept[1] + b"".join([p._encoded() for p in peers[len(kept[0]) :]])
        else:
            blob = b"".join([p._encoded() for p in peers])
        self._peers_blob = (peers, blob)
        return blob

    def save(self) -> None:
        """Seal the current contents under a fresh nonce and replace the stored keystore
        atomically (:meth:`Storage.replace`).

        A keystore that would not open again (larger than :data:`MAX_FILE_SIZE`) is refused
        with :class:`KeystoreError` before anything is written: what was stored stays."""
        base, keys = self._upgrade or (self._header, self._keys)
        header = _Header(
            base.version,
            base.kdf,
            base.salt,
            _check_rng_output(self._rng(NONCE_SIZE), NONCE_SIZE),
        )
        sealed = _seal(header, keys, self._body())
        if len(sealed) > MAX_FILE_SIZE:
            raise KeystoreError(
                f"the keystore is full: it would grow to {len(sealed):,} bytes, over the "
                f"{MAX_FILE_SIZE >> 20} MiB ({MAX_FILE_SIZE:,} bytes) a keystore may hold, so "
                "nothing was saved; see what it holds with `pairkit peers`, remove devices "
                "you no longer need with `pairkit forget PEER`, then try again",
                code=ErrorCode.TOO_LARGE,
            )
        self._storage.replace(sealed)
        self._header, self._keys, self._upgrade = header, keys, None
        self._remember(sealed)
        self._dirty = False

    def _contents(self) -> _Contents:
        """A copy of what :meth:`_reload` replaces (records are immutable; the maps are not)."""
        return (
            self._name,
            dict(self._peers),
            {cloud_id: dict(entry) for cloud_id, entry in self._clouds.items()},
            {group: dict(epochs) for group, epochs in self._groups.items()},
            dict(self._settings),
        )

    def _restore(self, contents: _Contents) -> None:
        """Put back what :meth:`_contents` copied (the copy stays usable: the maps are copied
        again)."""
        self._name, peers, clouds, groups, settings = contents
        self._peers, self._clouds = dict(peers), {k: dict(v) for k, v in clouds.items()}
        self._groups = {k: dict(v) for k, v in groups.items()}
        self._settings = dict(settings)

    def _remember(self, sealed: bytes) -> None:
        """``sealed`` is what the storage holds now, and it holds exactly what is in memory."""
        self._stored = (sealed, self._contents())

    @contextlib.contextmanager
    def update(self) -> Iterator[Keystore]:
        """Change the keystore safely while other pairkit processes may use it too.

        Under the storage's exclusive lock (:meth:`Storage.lock`), the contents are reloaded
        (another process may have saved since this one opened it), the caller changes them, and
        they are saved before the lock is released: a running ``pairkit host`` and a ``pairkit
        ls`` on the same device never lose each other's changes.  If the block raises (or the
        save does), nothing is saved and the contents are read again: the update changed
        nothing.
        """
        with self._storage.lock():
            self._reload()
            self._updating = True
            try:
                yield self
                self._updating = False
                self.save()
            except BaseException:
                # A failed update changes nothing, on disk or here: what it changed in memory
                # is dropped (it must not be decided on, nor stop :meth:`follow`).
                self._updating = False
                with contextlib.suppress(PairingError):
                    self._reload()
                raise

    def follow(self) -> bool:
        """Take what another process saved since this one last read or wrote the keystore
        (docs/security.md, rule 4): a peer forgotten, a grant given or withdrawn, a cloud left.
        A host calls it before each decision it makes from the keystore, so that such a change
        counts from its next decision on.  Returns whether the keystore was read again.

        Every save seals under a fresh random nonce, which the header carries: when the stored
        header's nonce is still the one this object last read or wrote, nothing changed, and
        that costs one short read.  Otherwise this is :meth:`reload`, with two differences:
        inside :meth:`update` nothing is read (the contents were just reloaded under the lock),
        and changes made here and not saved are never dropped (:class:`KeystoreError`; changes
        made under :meth:`update` are saved at once, or dropped if the update fails).  A
        keystore that is gone, damaged, re-sealed under another PIN or replaced by another
        identity raises as :meth:`reload` does: every decision stops until it is opened again.
        """
        if self._updating:
            return False
        data = self._storage.read(_HEADER_PREFIX)
        if data is not None:
            # The very bytes found naming the header held now, found again: their parse would
            # say the same (issue 13: the parse was most of a lock check's CPU).
            followed = self._followed
            if followed is not None and followed[0] is self._header and followed[1] == data:
                return False
            header, _ = _parse_header(data, self._storage.where)
            if header.nonce == self._header.nonce and header.salt == self._header.salt:
                self._followed = (self._header, data)
                return False
        if self._dirty:
            # Neither copy may win: reading would drop this one's changes, keeping them would
            # decide on what another process has changed since (and could write it back).
            raise KeystoreError(
                "another pairkit command saved the keystore while this one had changes not "
                "saved yet; nothing was lost on disk: make changes inside Keystore.update()"
            )
        self.reload()
        return True

    def reload(self) -> None:
        """Read the stored keystore again, with the keys this one was unlocked with: what
        another process saved (a peer forgotten, a grant changed) replaces what is in memory.
        Changes made here and not saved are dropped."""
        with self._storage.lock():
            self._reload()

    def _reload(self) -> None:
        where = self._storage.where
        data = self._storage.read(MAX_FILE_SIZE)
        if data is None:
            raise KeystoreNotFoundError(
                f"the keystore at {where} is gone; run `pairkit init` to create one"
            )
        if self._stored is not None and data == self._stored[0]:
            # Nobody saved since this object last read or wrote these very bytes: what they
            # hold is known, without unsealing and parsing every record again (a host saves
            # after each pairing, and with 1,000 peers that parse was most of a pairing's
            # cost; issue 13).  Changes made here and not saved are dropped, as below.
            self._restore(self._stored[1])
            self._dirty = False
            return
        header, _ = _parse_header(data, where)
        if header.salt != self._header.salt or header.kdf != self._header.kdf:
            raise KeystoreError(
                "the keystore's PIN was changed by another pairkit command; run this one again"
            )
        try:
            header, body = unseal(data, self._keys, where)
            fresh = type(self)._from_body(self._storage, body, header, self._keys, self._rng)
        except cbor.StoredTagError as exc:
            raise KeystoreCorruptError(_holds_a_tag(where, exc)) from None
        except (WrongPinError, KeystoreCorruptError, ValueError, KeyError, TypeError,
                cbor2.CBORDecodeError):
            raise KeystoreCorruptError(f"the keystore at {where} was damaged meanwhile") from None
        if fresh.static_public != self.static_public:
            raise KeystoreError("the keystore was replaced by another identity meanwhile")
        self._header = header
        self._name = fresh._name
        self._peers = fresh._peers
        self._clouds = fresh._clouds
        self._groups = fresh._groups
        self._settings = fresh._settings
        self._remember(data)
        self._dirty = False

    def change_pin(
        self,
        new_pin: str | bytes,
        *,
        kdf: Argon2Params | None = None,
        scrypt_n: int | None = None,
    ) -> None:
        """Re-seal the keystore under ``new_pin`` with a fresh salt and save it, with Argon2id
        (at ``kdf``, or the upgrade of the current cost); ``scrypt_n`` keeps the earlier scrypt
        format at that cost instead (tests of the upgrade)."""
        current = self._header.kdf
        chosen: Kdf = kdf or _upgrade_of(current)
        if scrypt_n is not None:
            base = current if isinstance(current, ScryptParams) else ScryptParams()
            chosen = ScryptParams(scrypt_n, base.r, base.p)
        pin_bytes = _check_new_pin(_pin_bytes(new_pin))
        salt = _check_rng_output(self._rng(SALT_SIZE), SALT_SIZE)
        old_header, old_keys, old_upgrade = self._header, self._keys, self._upgrade
        self._header = _Header(FORMAT_VERSION, chosen, salt, old_header.nonce)
        self._keys = self._derive(pin_bytes, salt, chosen)
        self._upgrade = None
        try:
            self.save()
        except BaseException:
            self._header, self._keys, self._upgrade = old_header, old_keys, old_upgrade
            raise

    # -- identity -------------------------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        """Where the sealed keystore is kept."""
        return self._storage

    @property
    def scrypt(self) -> Kdf:
        """The key-derivation parameters the file is sealed with (kept under its old name;
        see :attr:`kdf`)."""
        return self._header.kdf

    @property
    def kdf(self) -> Kdf:
        """The key-derivation parameters the file is sealed with: :class:`Argon2Params`, or
        :class:`ScryptParams` for a keystore of an earlier version not written since."""
        return self._header.kdf

    @property
    def device_id(self) -> str:
        """This device's id (see :func:`device_id_of`)."""
        return device_id_of(self._static_public)

    @property
    def fingerprint(self) -> str:
        """This device's fingerprint (see :func:`fingerprint_of`)."""
        return fingerprint_of(self._static_public)

    @property
    def name(self) -> str:
        """This device's name, as shown to others."""
        return self._name

    def rename(self, name: str) -> None:
        """Change this device's name (saved on the next :meth:`save`)."""
        self._dirty = True
        self._name = _check_name(name, "the device name")

    @property
    def static_public(self) -> bytes:
        """This device's X25519 static public key (32 bytes)."""
        return self._static_public

    @property
    def signing_public(self) -> bytes:
        """This device's Ed25519 public key (32 bytes)."""
        return self._signing_public

    # -- private-key operations -----------------------------------------------------------------

    def dh(self, peer_public: bytes) -> bytes:
        """X25519(static private, ``peer_public``) (RFC 7748 §5).  A result of all zeros (a
        low-order public key, RFC 7748 §6.1) raises :class:`AuthenticationError`."""
        _check_public_key(peer_public, "X25519")
        try:
            shared = self._static.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise AuthenticationError("the peer's public key is not acceptable") from None
        if hmac.compare_digest(shared, bytes(32)):
            raise AuthenticationError("the peer's public key is not acceptable")
        return shared

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature (RFC 8032 §5.1.6) over ``data`` with this device's signing key."""
        return self._signing.sign(data)

    def _static_private_for_handshake(self) -> bytes:
        """The raw X25519 static private key, for ``pairing/noise.py`` only.

        The Noise handshake module takes its static key as bytes; this is the one internal door
        through which a private key leaves the keystore.  Nothing else may call it, and the
        bytes must not be stored, logged or sent.
        """
        return _raw_private(self._static)

    def open_envelope(self, enc: bytes, ct: bytes, info: bytes, aad: bytes = b"") -> bytes:
        """Open an HPKE base-mode envelope sealed to this device's static key by
        :func:`seal_envelope` (RFC 9180 §6.1).  Raises :class:`AuthenticationError` if it does
        not open (wrong recipient, info, associated data, or a damaged envelope)."""
        return open_envelope(self._static, enc, ct, info, aad)

    # -- peers ----------------------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """Remember ``peer``, replacing what was known under the same id."""
        if not isinstance(peer, Peer):
            raise ConfigError("add_peer expects a Peer")
        if peer.id == self.device_id:
            raise ConfigError("that is this device's own key, not a peer")
        self._dirty = True
        self._peers[peer.id] = peer

    def get_peer(self, id_or_name: str) -> Peer:
        """Find a known peer by its id, a unique prefix of it (4 hex digits or more), or its
        exact name.  Raises :class:`NotFoundError`, or :class:`ConfigError` if it is ambiguous."""
        return self._peers[self._find_peer(id_or_name)]

    def peer_by_id(self, device_id: str) -> Peer | None:
        """The known peer whose device id is exactly ``device_id`` (hex), or ``None``.

        For lookups by a device's id (the protocol's), unlike :meth:`get_peer`, which also
        takes a prefix or a name for people to type: a peer *named* like another device's id
        must never be taken for that device.  Constant time in the number of peers."""
        if not isinstance(device_id, str):
            return None
        return self._peers.get(device_id.lower())

    def peers(self) -> tuple[Peer, ...]:
        """Every known peer, in the order they were first added."""
        return tuple(self._peers.values())

    def forget_peer(self, id_or_name: str) -> Peer:
        """Forget a known peer (found as by :meth:`get_peer`); returns what was forgotten."""
        self._dirty = True
        return self._peers.pop(self._find_peer(id_or_name))

    def _find_peer(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ConfigError("name a peer by its id or name")
        lowered = key.lower()
        if lowered in self._peers:
            return lowered
        candidates: Iterable[str] = ()
        if len(lowered) >= 4 and _HEX_RE.fullmatch(lowered):
            candidates = [pid for pid in self._peers if pid.startswith(lowered)]
        if not candidates:
            candidates = [pid for pid, peer in self._peers.items() if peer.name == key]
        candidates = list(candidates)
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ConfigError(f"more than one known peer matches {key!r}; use its full id")
        raise NotFoundError(f"no known peer {key!r}; `pairkit peers` lists them")

    # -- clouds ---------------------------------------------------------------------------------

    def set_cloud(
        self,
        cloud_id: str,
        secret: bytes,
        *,
        name: str,
        role: str,
        expires: float | None = None,
        epoch: int = 0,
        owner: str | None = None,
        owner_signing: bytes | None = None,
    ) -> None:
        """Remember a personal cloud we belong to and its shared secret (DESIGN.md "Cloud
        join"); ``role`` is e.g. "owner", "member" or "guest", ``expires`` the caller's seconds,
        ``epoch`` the secret's renewal count its owner gave (docs/protocol.md §10), ``owner``
        the full device id of the owner it was joined from (32 lowercase hex digits, its first
        16 the cloud id: docs/security.md, rule 3), ``owner_signing`` that owner's Ed25519
        signing key (32 bytes; with an ``owner`` only), which a renewal must be signed by."""
        if not isinstance(cloud_id, str) or not cloud_id:
            raise ConfigError("a cloud id must be a non-empty text")
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ConfigError("a cloud secret must be at least 16 bytes")
        _check_name(name, "a cloud's name")
        if not isinstance(role, str) or not role:
            raise ConfigError("a cloud role must be a non-empty text")
        if expires is not None:
            _check_time(expires, "a cloud's expiry")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError("a cloud's epoch is a count from 0")
        if owner is not None and not _is_owner_of(owner, cloud_id):
            raise ConfigError(
                "a cloud's owner is a device id (32 lowercase hex digits) whose first 16 are "
                "the cloud's id"
            )
        if owner_signing is not None and (
            owner is None or not isinstance(owner_signing, bytes) or len(owner_signing) != 32
        ):
            raise ConfigError("a cloud's owner's signing key is 32 bytes, kept with its owner")
        self._dirty = True
        self._clouds[cloud_id] = {"secret": secret, "name": name, "role": role, "expires": expires}
        if epoch:
            self._clouds[cloud_id]["epoch"] = epoch
        if owner is not None:
            self._clouds[cloud_id]["owner"] = owner
        if owner_signing is not None:
            self._clouds[cloud_id]["owner_signing"] = owner_signing

    def cloud(self, cloud_id: str) -> CloudInfo:
        """What is known about a cloud (never its secret).  Raises :class:`NotFoundError`."""
        entry = self._cloud_entry(cloud_id, None)
        return CloudInfo(cloud_id, entry["name"], entry["role"], entry["expires"],
                         entry.get("epoch", 0), entry.get("owner"), entry.get("owner_signing"))

    def clouds(self) -> tuple[CloudInfo, ...]:
        """Every cloud we belong to."""
        return tuple(self.cloud(cloud_id) for cloud_id in self._clouds)

    def forget_cloud(self, cloud_id: str) -> None:
        """Forget a cloud and its secret.  Raises :class:`NotFoundError`."""
        self._cloud_entry(cloud_id, None)
        self._dirty = True
        del self._clouds[cloud_id]

    def cloud_mac(self, cloud_id: str, data: bytes, *, now: float | None = None) -> bytes:
        """HMAC-SHA256 (RFC 2104) of ``data`` under the cloud's secret.  With ``now``, an expired
        membership raises :class:`ExpiredError`."""
        secret = self._cloud_entry(cloud_id, now)["secret"]
        return hmac.new(secret, data, hashlib.sha256).digest()

    def cloud_kdf(
        self, cloud_id: str, info: bytes, length: int = 32, *, now: float | None = None,
        epoch: int | None = None,
    ) -> bytes:
        """HKDF-SHA256 (RFC 5869) of the cloud's secret with ``info``, ``length`` bytes (rotating
        hello tags, PSKs).  With ``now``, an expired membership raises :class:`ExpiredError`.
        With ``epoch``, of the *retired* secret of that epoch (:meth:`retired_epochs`; a host
        checking a proof made before a renewal: docs/security.md "Renewing the cloud secret")."""
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 255 * 32:
            raise ConfigError("a derived key must be from 1 to 8160 bytes long")
        entry = self._cloud_entry(cloud_id, now)
        if epoch is None:
            secret = entry["secret"]
        else:
            try:
                secret = entry.get("retired", {})[epoch]
            except (KeyError, TypeError):
                raise NotFoundError(f"no retired secret of epoch {epoch!r}") from None
        return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(secret)

    def retired_epochs(self, cloud_id: str) -> tuple[int, ...]:
        """The epochs of the retired secrets kept for ``cloud_id``, newest first (empty when
        its secret was never renewed)."""
        return tuple(sorted(self._cloud_entry(cloud_id, None).get("retired", {}), reverse=True))

    def renew_cloud_secret(self, cloud_id: str, secret: bytes) -> int:
        """Replace the secret of a cloud this device *owns* with ``secret`` (fresh, from the
        caller's ``os.urandom``), one epoch up; the replaced secret is kept as retired (the last
        :data:`MAX_RETIRED_SECRETS`).  Returns the new epoch.  Done when a member is forgotten
        (docs/security.md "Renewing the cloud secret")."""
        entry = self._cloud_entry(cloud_id, None)
        if entry["role"] != "owner":
            raise ConfigError("only the cloud's owner renews its secret")
        if not isinstance(secret, bytes) or len(secret) < 16 or secret == entry["secret"]:
            raise ConfigError("a renewed cloud secret must be a new one of at least 16 bytes")
        epoch = entry.get("epoch", 0)
        retired = dict(entry.get("retired", {}))
        retired[epoch] = entry["secret"]
        for old in sorted(retired)[:-MAX_RETIRED_SECRETS]:
            del retired[old]
        self._dirty = True
        self._clouds[cloud_id] = {**entry, "secret": secret, "epoch": epoch + 1,
                                  "retired": retired}
        return epoch + 1

    def take_renewed_cloud_secret(self, cloud_id: str, secret: bytes, epoch: int) -> None:
        """Replace the secret of a cloud this device holds *as a member* with its owner's
        renewal (rule 3's one exception, docs/security.md): only with a higher epoch; the
        cloud's name, role, expiry and owner stay.  The caller has checked the owner's signature
        (:func:`pairkit.pairing.service.check_membership`)."""
        entry = self._cloud_entry(cloud_id, None)
        if entry["role"] == "owner":
            raise ConfigError("a cloud this device owns is never renewed by a peer")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= entry.get("epoch", 0):
            raise ConfigError("a renewal must carry a higher epoch than the one held")
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ConfigError("a cloud secret must be at least 16 bytes")
        self._dirty = True
        self._clouds[cloud_id] = {**entry, "secret": secret, "epoch": epoch}

    def _cloud_secret_for_new_member(self, cloud_id: str) -> bytes:
        """The cloud secret, to hand to a device the owner just made a member (DESIGN.md step 3:
        "a member is given the cloud secret ... inside the secure channel").  The one door by
        which a cloud secret leaves the keystore; only the cloud's owner may use it."""
        entry = self._cloud_entry(cloud_id, None)
        if entry["role"] != "owner":
            raise ConfigError("only the cloud's owner hands out its secret")
        return bytes(entry["secret"])

    def _cloud_entry(self, cloud_id: str, now: float | None) -> dict[str, Any]:
        try:
            entry = self._clouds[cloud_id]
        except (KeyError, TypeError):
            raise NotFoundError(f"this device is not in a cloud {cloud_id!r}") from None
        if now is not None and entry["expires"] is not None and now >= entry["expires"]:
            raise ExpiredError(f"this device's membership of cloud {entry['name']!r} has expired")
        return entry

    # -- group keys -----------------------------------------------------------------------------

    def store_group_key(self, group: str, epoch: int, key: bytes) -> None:
        """Keep the 32-byte key of ``group`` for ``epoch`` (DESIGN.md: oneM2M group keys)."""
        self._check_group(group, epoch)
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ConfigError(f"a group key must be {KEY_SIZE} bytes")
        self._dirty = True
        self._groups.setdefault(group, {})[epoch] = key

    def group_epochs(self, group: str) -> tuple[int, ...]:
        """The epochs of ``group`` whose keys we hold, oldest first (empty if none)."""
        return tuple(sorted(self._groups.get(group, {})))

    def forget_group(self, group: str, epoch: int | None = None) -> None:
        """Drop one epoch's key of ``group``, or all of them.  Missing keys are not an error."""
        self._dirty = True
        if epoch is None:
            self._groups.pop(group, None)
            return
        epochs = self._groups.get(group, {})
        epochs.pop(epoch, None)
        if not epochs:
            self._groups.pop(group, None)

    def group_encrypt(
        self, group: str, epoch: int, nonce: bytes, plaintext: bytes, aad: bytes = b""
    ) -> bytes:
        """ChaCha20-Poly1305 (RFC 8439) under the group key of ``epoch``; the caller owns nonce
        uniqueness (12 bytes)."""
        return ChaCha20Poly1305(self._group_key(group, epoch)).encrypt(
            self._check_nonce(nonce), plaintext, aad
        )

    def group_decrypt(
        self, group: str, epoch: int, nonce: bytes, ciphertext: bytes, aad: bytes = b""
    ) -> bytes:
        """Open what :meth:`group_encrypt` sealed; raises :class:`AuthenticationError` if it
        does not authenticate."""
        aead = ChaCha20Poly1305(self._group_key(group, epoch))
        try:
            return aead.decrypt(self._check_nonce(nonce), ciphertext, aad)
        except InvalidTag:
            raise AuthenticationError(
                f"a message for group {group!r} did not authenticate"
            ) from None

    def new_group_key(self, group: str, epoch: int) -> None:
        """Draw a fresh 32-byte key for ``group`` at ``epoch`` from this keystore's random
        source and keep it (the group controller's side of DESIGN.md's oneM2M group keys).
        Nothing is returned: the key leaves the keystore only sealed, by
        :meth:`seal_group_key`."""
        self._check_group(group, epoch)
        self._dirty = True
        self._groups.setdefault(group, {})[epoch] = _check_rng_output(self._rng(KEY_SIZE), KEY_SIZE)

    def seal_group_key(
        self, group: str, epoch: int, recipient_public: bytes, info: bytes, aad: bytes = b""
    ) -> tuple[bytes, bytes]:
        """The group key of ``epoch`` sealed to ``recipient_public`` by HPKE base mode, as
        :func:`seal_envelope` seals (RFC 9180 §6.1); returns ``(enc, ct)``.  Raises
        :class:`NotFoundError` if no key is held for that epoch."""
        return seal_envelope(recipient_public, self._group_key(group, epoch), info, aad)

    def accept_group_key(
        self, group: str, epoch: int, enc: bytes, ct: bytes, info: bytes, aad: bytes = b""
    ) -> None:
        """Open an envelope sealed to this device by :meth:`seal_group_key` and keep the key
        it carries as ``group``'s key for ``epoch`` (RFC 9180 §6.1).  The key never comes out:
        the member's side of DESIGN.md's "secure environment".  Raises
        :class:`AuthenticationError` if the envelope does not open (not ours, another binding,
        or altered) and :class:`DecodeError` if what it carries is not a key."""
        self._check_group(group, epoch)
        key = self.open_envelope(enc, ct, info, aad)
        if len(key) != KEY_SIZE:
            raise DecodeError(f"an envelope for group {group!r} does not carry a group key")
        self._dirty = True
        self._groups.setdefault(group, {})[epoch] = key

    @staticmethod
    def _check_group(group: object, epoch: object) -> None:
        if not isinstance(group, str) or not group:
            raise ConfigError("a group name must be a non-empty text")
        if isinstance(epoch, bool) or not isinstance(epoch, int) \
                or not 0 <= epoch <= MAX_GROUP_EPOCH:
            raise ConfigError(f"a group epoch must be a whole number from 0 to {MAX_GROUP_EPOCH}")

    @staticmethod
    def _check_nonce(nonce: object) -> bytes:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ConfigError(f"a nonce must be {NONCE_SIZE} bytes")
        return nonce

    def _group_key(self, group: str, epoch: int) -> bytes:
        self._check_group(group, epoch)
        try:
            return self._groups[group][epoch]
        except KeyError:
            raise NotFoundError(f"no key for group {group!r} epoch {epoch}") from None

    # -- settings -------------------------------------------------------------------------------

    def setting(self, key: str, default: Any = None) -> Any:
        """A stored setting (read-only: lists come back as tuples), or ``default``."""
        return self._settings.get(key, default)

    def settings(self) -> Mapping[str, Any]:
        """All settings, read-only."""
        return MappingProxyType(dict(self._settings))

    def set_setting(self, key: str, value: Any) -> None:
        """Store a setting; ``value`` must be plain CBOR data (None, bool, int, float, text,
        bytes, lists, maps with text or integer keys)."""
        if not isinstance(key, str) or not key:
            raise ConfigError("a setting's name must be a non-empty text")
        self._dirty = True
        self._settings[key] = _freeze(value, f"setting {key!r}")

    def delete_setting(self, key: str) -> None:
        """Remove a setting; a missing one is not an error."""
        self._dirty = True
        self._settings.pop(key, None)

    # -- personal networks ------------------------------------------------------------------------

    #: the settings key prefix of the stored PNs (no new section: older keystores open as they
    #: were, and a keystore with PNs opens in a pairkit that knows none, as settings)
    PN_PREFIX = "cpns.pn."

    def _pn_key(self, role: str, pn_id: str, gw_id: str | None = None) -> str:
        """Where a PN record is kept: a gateway's own PN under its id; a membership under its
        gateway and PN id (``gw_id`` None: where a membership was kept before, by PN id alone)."""
        if role == "member" and gw_id is not None:
            return f"{self.PN_PREFIX}member.{gw_id}.{pn_id}"
        return f"{self.PN_PREFIX}{role}.{pn_id}"

    def set_pn(self, record: PnRecord) -> None:
        """Keep ``record`` (a PN this device is the gateway of, or a member of), replacing the
        one with the same PN id and role and, for a membership, the same gateway.

        A PN id names a PN among its gateway's only (the key server keeps a PN under its
        gateway and its id: security finding 5 of the registration's wait review), so a member
        of two gateways' PNs under one id keeps both.  A membership kept before under its PN
        id alone is this one when it is of the same gateway, and is replaced."""
        if not isinstance(record, PnRecord):
            raise ConfigError("set_pn takes a PnRecord")
        self._settings[self._pn_key(record.role, record.pn_id, record.gw_id)] = _freeze(
            record._to_cbor(), "a PN record"
        )
        if record.role == "member":
            legacy = self._pn_key("member", record.pn_id)
            old = self._settings.get(legacy)
            if old is not None and PnRecord._from_cbor(thaw(old)).gw_id == record.gw_id:
                del self._settings[legacy]

    def pns(self, role: str | None = None) -> tuple[PnRecord, ...]:
        """The stored PNs (of one ``role``: "gateway" or "member"), oldest update first."""
        out = []
        for key, value in self._settings.items():
            if not key.startswith(self.PN_PREFIX):
                continue
            record = PnRecord._from_cbor(thaw(value))
            if role is None or record.role == role:
                out.append(record)
        return tuple(sorted(out, key=lambda r: (r.updated, r.pn_id)))

    def forget_pn(self, pn_id: str, role: str, gw_id: str | None = None) -> None:
        """Drop a stored PN (a membership: of gateway ``gw_id``, or of every gateway when
        None); a missing one is not an error."""
        for key, value in list(self._settings.items()):
            if not key.startswith(self.PN_PREFIX):
                continue
            record = PnRecord._from_cbor(thaw(value))
            if record.role == role and record.pn_id == pn_id and gw_id in (None, record.gw_id):
                del self._settings[key]
