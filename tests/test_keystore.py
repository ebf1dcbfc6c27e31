"""Tests for pairing/keystore/ and runtime/filestore.py: sealing at rest, atomic writes, the
storage interface, and the secure-environment API."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import inspect
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pairkit.pairing.keystore.seal as keystore_module
from pairkit.keystore import (
    DEFAULT_SCRYPT_N,
    MIN_PIN_LENGTH,
    Argon2Params,
    CloudInfo,
    Keystore,
    KeystoreNotFoundError,
    Peer,
    ScryptParams,
    default_path,
    device_id_of,
    fingerprint_of,
    seal_envelope,
)
from pairkit.pairing import keystore as ks_module
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    ExpiredError,
    KeystoreCorruptError,
    KeystoreError,
    NotFoundError,
    PairingError,
    WrongPinError,
)

ROOT = Path(__file__).resolve().parents[1]
PIN = "246813"
FAST_N = 2**10
#: the cheapest Argon2id (tests only); new keystores are Argon2id
FAST = Argon2Params.cheapest()
# The keystore fixture is created once per test; each example restores the file it damages.
FIXTURES_OK = [HealthCheck.function_scoped_fixture]


def seeded_rng(seed: int):
    gen = random.Random(seed)
    return lambda n: gen.randbytes(n)


def raw_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_peer(
    name: str = "george", *, now: float = 1000, **kw
) -> tuple[Peer, x25519.X25519PrivateKey]:
    priv = x25519.X25519PrivateKey.generate()
    return Peer.new(name, raw_public(priv), now=now, **kw), priv


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "keystore.pk"


@pytest.fixture
def store(store_path: Path) -> Keystore:
    return Keystore.create(store_path, PIN, name="paul's phone", kdf=FAST)


# -- paths -----------------------------------------------------------------------------------


def test_default_path_uses_pairkit_home(tmp_path: Path) -> None:
    assert default_path({"PAIRKIT_HOME": str(tmp_path)}) == tmp_path / "keystore.pk"


@pytest.mark.parametrize("env", [{}, {"PAIRKIT_HOME": ""}], ids=["unset", "empty"])
def test_default_path_falls_back_to_platform_data_dir(env: dict[str, str]) -> None:
    expected = Path(platformdirs.user_data_dir("pairkit", appauthor=False)) / "keystore.pk"
    assert default_path(env) == expected


def test_default_path_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAIRKIT_HOME", str(tmp_path / "h"))
    assert default_path() == tmp_path / "h" / "keystore.pk"


# -- create / open -----------------------------------------------------------------------------


def test_create_open_round_trip(store: Keystore, store_path: Path) -> None:
    again = Keystore.open(store_path, PIN)
    assert again.device_id == store.device_id
    assert again.name == "paul's phone"
    assert again.static_public == store.static_public
    assert again.signing_public == store.signing_public
    assert again.fingerprint == store.fingerprint
    assert again.kdf == FAST


def test_identifiers_are_derived_from_the_x25519_key(store: Keystore) -> None:
    digest = hashlib.sha256(store.static_public).hexdigest()
    assert store.device_id == digest[:32] == device_id_of(store.static_public)
    groups = store.fingerprint.split("-")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert "".join(groups) == digest
    assert fingerprint_of(store.static_public) == store.fingerprint


def test_rng_is_injected(tmp_path: Path) -> None:
    a = Keystore.create(tmp_path / "a.pk", PIN, name="a", rng=seeded_rng(7), kdf=FAST)
    b = Keystore.create(tmp_path / "b.pk", PIN, name="b", rng=seeded_rng(7), kdf=FAST)
    c = Keystore.create(tmp_path / "c.pk", PIN, name="c", rng=seeded_rng(8), kdf=FAST)
    assert a.device_id == b.device_id != c.device_id
    assert a.signing_public == b.signing_public


def test_create_refuses_to_overwrite(store: Keystore, store_path: Path) -> None:
    before = store_path.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        Keystore.create(store_path, PIN, name="other", kdf=FAST)
    assert store_path.read_bytes() == before
    fresh = Keystore.create(store_path, "999999", name="other", kdf=FAST, overwrite=True)
    assert fresh.device_id != store.device_id
    assert Keystore.open(store_path, "999999").device_id == fresh.device_id


def test_missing_file_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(KeystoreNotFoundError, match="pairkit init") as info:
        Keystore.open(tmp_path / "nope" / "keystore.pk", PIN)
    assert isinstance(info.value, KeystoreError)
    assert isinstance(info.value, NotFoundError)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("bad", ["", b""])
def test_empty_pin_is_refused(tmp_path: Path, bad: str | bytes) -> None:
    with pytest.raises(ConfigError):
        Keystore.create(tmp_path / "k.pk", bad, name="x", kdf=FAST)
    assert not (tmp_path / "k.pk").exists()


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    path = tmp_path / "k.pk"
    Keystore.create(path, "caf\u00e9 au lait", name="x", kdf=FAST)  # precomposed é
    assert Keystore.open(path, "cafe\u0301 au lait").name == "x"  # e + combining acute


@pytest.mark.parametrize("n", [2**9, 3 * 2**10, 2**21, 0])
def test_scrypt_parameters_are_bounded(tmp_path: Path, n: int) -> None:
    with pytest.raises(ConfigError):
        Keystore.create(tmp_path / "k.pk", PIN, name="x", scrypt_n=n)  # the earlier format
    assert not (tmp_path / "k.pk").exists()


def test_default_cost_is_argon2id_rfc9106(tmp_path: Path) -> None:
    assert Argon2Params() == Argon2Params(64 * 1024, 3, 4)  # RFC 9106 §4, second option
    assert inspect.signature(Keystore.create).parameters["kdf"].default is None
    path = tmp_path / "k.pk"
    Keystore.create(path, PIN, name="x")
    assert Keystore.open(path, PIN).kdf == Argon2Params()
    assert DEFAULT_SCRYPT_N >= 2**15 and ScryptParams().n >= 2**15  # what earlier versions used


@pytest.mark.parametrize("params", [(512, 1, 1), (2**21, 1, 1), (1024, 17, 1), (1024, 1, 200),
                                    (0, 1, 1)])
def test_argon2_parameters_are_bounded(tmp_path: Path, params: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError):
        Keystore.create(tmp_path / "k.pk", PIN, name="x", kdf=Argon2Params(*params))
    assert not (tmp_path / "k.pk").exists()


@pytest.mark.parametrize("short", ["12345", "abc", "\u00e9t\u00e9"])
def test_a_new_keystore_pin_has_at_least_six_characters(tmp_path: Path, short: str) -> None:
    assert MIN_PIN_LENGTH == 6
    with pytest.raises(ConfigError, match="at least 6 characters"):
        Keystore.create(tmp_path / "k.pk", short, name="x", kdf=FAST)
    assert not (tmp_path / "k.pk").exists()
    store = Keystore.create(tmp_path / "k.pk", "123456", name="x", kdf=FAST)
    with pytest.raises(ConfigError, match="at least 6 characters"):
        store.change_pin(short)
    assert Keystore.open(tmp_path / "k.pk", "123456").name == "x"  # unchanged


@pytest.mark.parametrize("n", [2**10, 2**15])
def test_an_earlier_scrypt_keystore_opens_and_is_resealed_on_its_next_write(
    tmp_path: Path, n: int
) -> None:
    """What an earlier pairkit wrote (scrypt) opens unchanged; opening writes nothing; the next
    write re-seals it with Argon2id, with nothing lost, and the old PIN still opens it."""
    path = tmp_path / "k.pk"
    store = _scrypt_keystore(path, n)
    peer = new_peer("George")[0]
    store.add_peer(peer)
    store.set_cloud("c1", b"s" * 32, name="Paul's cloud", role="owner")
    store.save()  # written by "the earlier version": still scrypt (created that way)
    before = path.read_bytes()
    opened = Keystore.open(path, "2468")  # a 4-character PIN of old still opens it
    assert isinstance(opened.kdf, ScryptParams) and path.read_bytes() == before
    with opened.update():
        opened.set_setting("touched", True)
    again = Keystore.open(path, "2468")
    assert isinstance(again.kdf, Argon2Params)
    assert again.kdf == (Argon2Params() if n >= 2**15 else Argon2Params.cheapest())
    assert again.device_id == store.device_id and again.static_public == store.static_public
    assert again.get_peer(peer.id).name == "George" and again.setting("touched") is True
    assert [c.cloud_id for c in again.clouds()] == ["c1"]
    assert b"scrypt" not in path.read_bytes()[:64] and b"argon2id" in path.read_bytes()[:64]


def _scrypt_keystore(path: Path, n: int) -> Keystore:
    """A keystore sealed as earlier versions did (scrypt), even with their 4-character PINs."""
    store = Keystore.create(path, "246800", name="x", scrypt_n=n)
    store._keys = keystore_module._derive_keys(b"2468", store._header.salt, store._header.kdf)
    store.save()
    return store


# -- wrong PIN, tampering, truncation ------------------------------------------------------------


def test_wrong_pin(store: Keystore, store_path: Path) -> None:
    before = store_path.read_bytes()
    with pytest.raises(WrongPinError, match="wrong PIN or passphrase") as info:
        Keystore.open(store_path, "246814")
    assert PIN not in str(info.value)
    assert store_path.read_bytes() == before


def _layout(data: bytes) -> tuple[int, int]:
    """(end of header, end of check) in a keystore file."""
    header_end = 6 + int.from_bytes(data[4:6], "big")
    return header_end, header_end + 32


def _open_tampered(path: Path, original: bytes, pos: int, mask: int) -> Exception:
    damaged = bytearray(original)
    damaged[pos] ^= mask
    path.write_bytes(bytes(damaged))
    try:
        Keystore.open(path, PIN)
    except (KeystoreCorruptError, WrongPinError) as e:
        assert path.read_bytes() == bytes(damaged)  # opening never writes
        return e
    raise AssertionError(f"a change at byte {pos} went unnoticed")


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_header_byte_is_protected(store: Keystore, store_path: Path, mask: int) -> None:
    original = store_path.read_bytes()
    _, check_end = _layout(original)
    for pos in range(check_end):
        _open_tampered(store_path, original, pos, mask)


def test_damaged_check_value_reads_as_wrong_pin(store: Keystore, store_path: Path) -> None:
    original = store_path.read_bytes()
    header_end, check_end = _layout(original)
    for pos in (header_end, check_end - 1):
        assert isinstance(_open_tampered(store_path, original, pos, 0x01), WrongPinError)


def test_damaged_body_is_corrupt(store: Keystore, store_path: Path) -> None:
    original = store_path.read_bytes()
    _, check_end = _layout(original)
    for pos in (check_end, check_end + 1, (check_end + len(original)) // 2, len(original) - 1):
        err = _open_tampered(store_path, original, pos, 0x01)
        assert isinstance(err, KeystoreCorruptError)


def test_damaged_magic_is_corrupt(store: Keystore, store_path: Path) -> None:
    original = store_path.read_bytes()
    err = _open_tampered(store_path, original, 0, 0x01)
    assert isinstance(err, KeystoreCorruptError)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_damage_never_crashes(
    store: Keystore, store_path: Path, data: st.DataObject
) -> None:
    original = store_path.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    try:
        _open_tampered(store_path, original, pos, mask)
    finally:
        store_path.write_bytes(original)


def test_truncated_file(store: Keystore, store_path: Path) -> None:
    original = store_path.read_bytes()
    header_end, check_end = _layout(original)
    for size in sorted({0, 1, 4, 5, 6, header_end, check_end, check_end + 15, len(original) - 1}):
        store_path.write_bytes(original[:size])
        with pytest.raises(KeystoreCorruptError):
            Keystore.open(store_path, PIN)
        assert store_path.read_bytes() == original[:size]


def test_appended_bytes_are_corrupt(store: Keystore, store_path: Path) -> None:
    store_path.write_bytes(store_path.read_bytes() + b"\x00")
    with pytest.raises(KeystoreCorruptError):
        Keystore.open(store_path, PIN)


def test_not_a_keystore(tmp_path: Path) -> None:
    path = tmp_path / "k.pk"
    path.write_text("hello, I am a text file\n" * 10)
    with pytest.raises(KeystoreCorruptError, match="not a pairkit keystore"):
        Keystore.open(path, PIN)


# -- files on disk -----------------------------------------------------------------------------


def test_permissions(tmp_path: Path) -> None:
    old = os.umask(0)  # the worst umask: nothing filtered out
    try:
        path = tmp_path / "a" / "b" / "keystore.pk"
        store = Keystore.create(path, PIN, name="x", kdf=FAST)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        os.chmod(path, 0o644)
        store.save()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_save_uses_a_fresh_nonce_and_keeps_the_salt(store: Keystore, store_path: Path) -> None:
    first = store_path.read_bytes()
    store.save()
    second = store_path.read_bytes()
    assert first != second
    import pairkit.pairing.cbor as cbor

    h1 = cbor.decode(first[6 : _layout(first)[0]], max_size=256)
    h2 = cbor.decode(second[6 : _layout(second)[0]], max_size=256)
    assert h1[6] == h2[6]  # salt
    assert h1[7] != h2[7]  # nonce


def test_failed_save_leaves_the_old_file(store: Keystore, store_path: Path) -> None:
    before = store_path.read_bytes()
    store.rename("changed")
    seen: list[Path] = []

    def boom(tmp: Path) -> None:
        seen.append(tmp)
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
        raise OSError(28, "No space left on device")

    with pytest.raises(KeystoreError, match="could not save"):
        store.storage.before_replace = boom
        store.save()
    assert store_path.read_bytes() == before
    assert seen and not seen[0].exists()
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["keystore.pk"]


_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pairkit.keystore import Keystore

store = Keystore.open(sys.argv[2], sys.argv[3])
store.rename("renamed in the child")

def pause(tmp):
    print("ready", tmp, flush=True)
    sys.stdin.readline()  # the parent kills us while we wait here

store.storage.before_replace = pause
store.save()
print("saved", flush=True)
"""


def test_kill_during_write(store: Keystore, store_path: Path) -> None:
    peer, _ = new_peer()
    store.add_peer(peer)
    store.save()
    before = store_path.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT), str(store_path), PIN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("ready "), line
        tmp = Path(line.split(" ", 1)[1].strip())
        assert tmp.parent == store_path.parent and tmp.exists()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    # The rename never happened: the old store is intact, a temp file is left behind.
    assert store_path.read_bytes() == before
    assert tmp.exists()
    old = Keystore.open(store_path, PIN)
    assert old.name == "paul's phone"
    assert old.get_peer(peer.id) == peer
    # The next save works and clears the leftover.
    old.rename("after the crash")
    old.save()
    assert not tmp.exists()
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["keystore.pk"]
    assert Keystore.open(store_path, PIN).name == "after the crash"


# -- contents persist ---------------------------------------------------------------------------


def test_save_open_preserves_everything(store: Keystore, store_path: Path) -> None:
    george, _ = new_peer(
        "george",
        signing_public=raw_public(ed25519.Ed25519PrivateKey.generate()),
        authenticated=True,
        method="pin",
        extra={"resume": {"epoch": 3, "keys": [b"\x01" * 32, b"\x02" * 32]}, "t": 1.5},
    )
    george = dataclasses.replace(
        george,
        last_seen=2000,
        their_prekeys=[{"id": 1, "pub": b"\x03" * 32}],
        our_prekeys=[{"id": 9, "priv": b"\x04" * 32}, b"raw"],
    )
    ringo, _ = new_peer("ringo", now=5)
    store.add_peer(george)
    store.add_peer(ringo)
    store.set_cloud("cloud-1", b"s" * 32, name="Paul's cloud", role="owner", expires=None)
    store.set_cloud("cloud-2", b"t" * 32, name="Work", role="guest", expires=99999)
    store.store_group_key("kitchen", 0, b"\x05" * 32)
    store.store_group_key("kitchen", 1, b"\x06" * 32)
    store.set_setting("visible_seconds", 120)
    store.set_setting("methods", ["pin", "qr"])
    store.rename("Paul")
    store.save()

    again = Keystore.open(store_path, PIN)
    assert again.name == "Paul"
    assert again.peers() == (george, ringo)
    got = again.get_peer("george")
    assert got.our_prekeys == ({"id": 9, "priv": b"\x04" * 32}, b"raw")
    assert got.extra["resume"]["keys"] == (b"\x01" * 32, b"\x02" * 32)
    assert again.clouds() == (
        CloudInfo("cloud-1", "Paul's cloud", "owner", None),
        CloudInfo("cloud-2", "Work", "guest", 99999),
    )
    assert again.cloud_mac("cloud-1", b"x") == store.cloud_mac("cloud-1", b"x")
    assert again.group_epochs("kitchen") == (0, 1)
    nonce = bytes(12)
    assert (
        again.group_decrypt("kitchen", 1, nonce, store.group_encrypt("kitchen", 1, nonce, b"hi"))
        == b"hi"
    )
    assert again.setting("visible_seconds") == 120
    assert again.setting("methods") == ("pin", "qr")
    assert again.setting("missing", "dflt") == "dflt"


def test_change_pin(store: Keystore, store_path: Path) -> None:
    store.add_peer(new_peer()[0])
    store.save()
    store.change_pin("new passphrase", scrypt_n=2 * FAST_N)
    with pytest.raises(WrongPinError):
        Keystore.open(store_path, PIN)
    again = Keystore.open(store_path, "new passphrase")
    assert again.scrypt.n == 2 * FAST_N
    assert again.device_id == store.device_id
    assert len(again.peers()) == 1
    store.save()  # later saves keep using the new key
    assert Keystore.open(store_path, "new passphrase").device_id == store.device_id


class FlakyRng:
    """os.urandom that can be told to fail after a number of further draws."""

    def __init__(self) -> None:
        self.draws_left: int | None = None

    def __call__(self, n: int) -> bytes:
        if self.draws_left is not None:
            if self.draws_left == 0:
                raise OSError("entropy source failed")
            self.draws_left -= 1
        return os.urandom(n)


def test_change_pin_that_fails_to_save_keeps_the_old_pin(tmp_path: Path) -> None:
    rng = FlakyRng()
    path = tmp_path / "k.pk"
    store = Keystore.create(path, PIN, name="x", rng=rng, kdf=FAST)
    before = path.read_bytes()
    rng.draws_left = 1  # the new salt is drawn, the save's nonce is not
    with pytest.raises(OSError, match="entropy"):
        store.change_pin("new pin")
    assert path.read_bytes() == before
    rng.draws_left = None
    store.save()  # still sealed under the old PIN
    assert Keystore.open(path, PIN).device_id == store.device_id
    with pytest.raises(WrongPinError):
        Keystore.open(path, "new pin")


# -- private-key operations ------------------------------------------------------------------


def test_dh_agrees_with_the_peer(store: Keystore) -> None:
    peer = x25519.X25519PrivateKey.generate()
    ours = store.dh(raw_public(peer))
    theirs = peer.exchange(x25519.X25519PublicKey.from_public_bytes(store.static_public))
    assert ours == theirs and len(ours) == 32


@pytest.mark.parametrize(
    "low_order",
    [
        bytes(32),
        (1).to_bytes(32, "little"),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ],
    ids=["zero", "one", "order-8"],
)
def test_dh_rejects_low_order_points(store: Keystore, low_order: bytes) -> None:
    with pytest.raises(AuthenticationError):
        store.dh(low_order)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_dh_rejects_wrong_lengths(store: Keystore, bad: bytes) -> None:
    with pytest.raises(DecodeError):
        store.dh(bad)


def test_sign_verifies(store: Keystore) -> None:
    sig = store.sign(b"message")
    public = ed25519.Ed25519PublicKey.from_public_bytes(store.signing_public)
    public.verify(sig, b"message")
    with pytest.raises(InvalidSignature):
        public.verify(sig, b"messagf")


def test_handshake_door_matches_the_public_key(store: Keystore) -> None:
    raw = store._static_private_for_handshake()
    assert raw_public(x25519.X25519PrivateKey.from_private_bytes(raw)) == store.static_public
    assert "_static_private_for_handshake" not in ks_module.__all__


def test_public_api_does_not_expose_private_keys(store: Keystore, store_path: Path) -> None:
    secret = store._static_private_for_handshake()
    store.set_cloud("c", b"k" * 32, name="c", role="member")
    store.store_group_key("g", 0, b"\x07" * 32)
    values = [repr(store), str(store)]
    for name in dir(store):
        if name.startswith("_"):
            continue
        value = getattr(store, name)
        if not callable(value):
            values.append(value)
    values += [store.cloud("c"), store.clouds(), store.settings(), store.peers()]
    blob = repr(values).encode() + b"".join(v for v in values if isinstance(v, bytes))
    for needle in (secret, secret.hex().encode(), b"k" * 32, (b"\x07" * 32).hex().encode()):
        assert needle not in blob
    assert not hasattr(store.cloud("c"), "secret")
    assert secret not in store_path.read_bytes()  # sealed at rest


def test_envelope_round_trip(store: Keystore) -> None:
    enc, ct = seal_envelope(store.static_public, b"the key", b"ctx", b"header")
    assert len(enc) == 32
    assert store.open_envelope(enc, ct, b"ctx", b"header") == b"the key"
    again = seal_envelope(store.static_public, b"the key", b"ctx", b"header")
    assert again[0] != enc  # a fresh ephemeral key each time


@pytest.mark.parametrize(
    "change",
    ["info", "aad", "enc", "ct", "recipient", "swap"],
)
def test_envelope_rejects_changes(store: Keystore, tmp_path: Path, change: str) -> None:
    enc, ct = seal_envelope(store.static_public, b"the key", b"ctx", b"header")
    info, aad, opener = b"ctx", b"header", store
    if change == "info":
        info = b"ctX"
    elif change == "aad":
        aad = b"headeR"
    elif change == "enc":
        enc = bytes([enc[0] ^ 1]) + enc[1:]
    elif change == "ct":
        ct = ct[:-1] + bytes([ct[-1] ^ 1])
    elif change == "recipient":
        opener = Keystore.create(tmp_path / "o.pk", PIN, name="o", kdf=FAST)
    elif change == "swap":  # info and aad are not interchangeable
        info, aad = aad, info
    with pytest.raises(AuthenticationError):
        opener.open_envelope(enc, ct, info, aad)


def test_envelope_input_checks(store: Keystore) -> None:
    with pytest.raises(DecodeError):
        store.open_envelope(bytes(31), bytes(20), b"", b"")
    with pytest.raises(DecodeError):
        seal_envelope(bytes(31), b"x", b"", b"")


def test_group_encrypt_decrypt(store: Keystore) -> None:
    store.store_group_key("g", 4, b"\x01" * 32)
    store.store_group_key("g", 5, b"\x02" * 32)
    nonce = b"\x09" * 12
    ct = store.group_encrypt("g", 5, nonce, b"broadcast", b"ad")
    assert store.group_decrypt("g", 5, nonce, ct, b"ad") == b"broadcast"
    for args in [
        ("g", 4, nonce, ct, b"ad"),
        ("g", 5, nonce, ct, b"aD"),
        ("g", 5, b"\x08" * 12, ct, b"ad"),
        ("g", 5, nonce, ct[:-1] + b"\x00", b"ad"),
    ]:
        with pytest.raises(AuthenticationError):
            store.group_decrypt(*args)
    with pytest.raises(NotFoundError):
        store.group_encrypt("g", 6, nonce, b"x")
    with pytest.raises(NotFoundError):
        store.group_decrypt("h", 5, nonce, ct)
    with pytest.raises(ConfigError):
        store.group_encrypt("g", 5, b"short", b"x")
    with pytest.raises(ConfigError):
        store.store_group_key("g", -1, b"\x01" * 32)
    with pytest.raises(ConfigError):
        store.store_group_key("g", 1, b"\x01" * 16)
    store.forget_group("g", 4)
    assert store.group_epochs("g") == (5,)
    store.forget_group("g")
    assert store.group_epochs("g") == ()


def test_cloud_mac_and_kdf(store: Keystore) -> None:
    secret = bytes(range(32))
    store.set_cloud("c1", secret, name="Home", role="member", expires=100)
    assert store.cloud("c1") == CloudInfo("c1", "Home", "member", 100)
    assert store.cloud_mac("c1", b"nonce") == hmac.new(secret, b"nonce", hashlib.sha256).digest()
    expected = HKDF(hashes.SHA256(), 42, salt=None, info=b"tag").derive(secret)
    assert store.cloud_kdf("c1", b"tag", 42) == expected
    assert store.cloud_kdf("c1", b"tag", 42, now=99) == expected
    with pytest.raises(ExpiredError):
        store.cloud_mac("c1", b"nonce", now=100)
    with pytest.raises(ExpiredError):
        store.cloud_kdf("c1", b"tag", now=101)
    with pytest.raises(NotFoundError):
        store.cloud_mac("c2", b"x")
    with pytest.raises(ConfigError):
        store.set_cloud("c3", b"short", name="x", role="member")
    store.forget_cloud("c1")
    with pytest.raises(NotFoundError):
        store.cloud("c1")


def test_renewing_a_cloud_secret_keeps_the_retired_ones_bounded_and_sealed(
    store: Keystore, store_path: Path,
) -> None:
    """docs/security.md "Renewing the cloud secret": the owner renews, one epoch up; the old
    secret stays usable only as a retired one of its epoch (the last 16); all of it is saved."""
    first = bytes(range(32))
    store.set_cloud("c1", first, name="Home", role="owner")
    tag = store.cloud_kdf("c1", b"tag")
    assert store.cloud("c1").epoch == 0 and store.retired_epochs("c1") == ()
    assert store.renew_cloud_secret("c1", b"n" * 32) == 1
    assert store.cloud("c1") == CloudInfo("c1", "Home", "owner", None, 1)
    assert store.cloud_kdf("c1", b"tag") != tag
    assert store.cloud_kdf("c1", b"tag", epoch=0) == tag  # the retired one, by its epoch
    with pytest.raises(NotFoundError):
        store.cloud_kdf("c1", b"tag", epoch=1)  # the current one is not retired
    with pytest.raises(ConfigError):
        store.renew_cloud_secret("c1", b"n" * 32)  # not a new secret
    for _ in range(20):
        store.renew_cloud_secret("c1", os.urandom(32))
    assert store.cloud("c1").epoch == 21
    assert store.retired_epochs("c1") == tuple(range(20, 4, -1))  # the last 16, newest first
    store.save()
    again = Keystore.open(store_path, PIN)
    assert again.cloud("c1").epoch == 21 and again.retired_epochs("c1") == tuple(range(20, 4, -1))
    assert again.cloud_kdf("c1", b"tag", epoch=5) == store.cloud_kdf("c1", b"tag", epoch=5)
    assert again.cloud_mac("c1", b"x") == store.cloud_mac("c1", b"x")
    assert b"n" * 32 not in repr(again).encode() and "retired" not in repr(again.cloud("c1"))
    store.set_cloud("m", b"m" * 32, name="Paul's", role="member")
    with pytest.raises(ConfigError):
        store.renew_cloud_secret("m", os.urandom(32))  # only the owner renews


def test_a_member_takes_a_renewal_only_with_a_higher_epoch(store: Keystore) -> None:
    """Rule 3's one exception: the secret and epoch of a cloud held as a member are replaced,
    name and role kept; never an owned cloud, never an equal or lower epoch."""
    store.set_cloud("m", b"m" * 32, name="Paul's", role="member", epoch=2)
    before = store.cloud_mac("m", b"x")
    for epoch in (0, 1, 2):
        with pytest.raises(ConfigError):
            store.take_renewed_cloud_secret("m", b"r" * 32, epoch)
    assert store.cloud_mac("m", b"x") == before
    store.take_renewed_cloud_secret("m", b"r" * 32, 3)
    assert store.cloud("m") == CloudInfo("m", "Paul's", "member", None, 3)
    assert store.cloud_mac("m", b"x") != before
    store.set_cloud("o", b"o" * 32, name="Mine", role="owner")
    with pytest.raises(ConfigError):
        store.take_renewed_cloud_secret("o", b"r" * 32, 1)


def test_a_member_cloud_keeps_the_full_id_of_the_owner_it_was_joined_from(
    store: Keystore, store_path: Path,
) -> None:
    """Rule 3: what binds a renewal made without the device's proof is the owner's full device
    id, kept with the cloud at the join; saved, kept through a renewal, absent (``None``) from a
    cloud stored without it, and written only when given (a cloud without one is stored byte for
    byte as before, in the same record an earlier version reads)."""
    import cbor2

    paul = "0011223344556677" + "8899aabbccddeeff"
    store.set_cloud("0011223344556677", b"m" * 32, name="Paul's", role="member", epoch=2,
                    owner=paul)
    assert store.cloud("0011223344556677") == CloudInfo(
        "0011223344556677", "Paul's", "member", None, 2, paul)
    store.take_renewed_cloud_secret("0011223344556677", b"r" * 32, 3)
    assert store.cloud("0011223344556677").owner == paul
    store.set_cloud("c2", b"o" * 32, name="Ringo's", role="member")
    assert store.cloud("c2").owner is None
    on_disk = cbor2.loads(store._body())["clouds"]
    assert on_disk["0011223344556677"]["owner"] == paul
    assert set(on_disk["c2"]) == {"secret", "name", "role", "expires"}
    store.save()
    again = Keystore.open(store_path, PIN)
    assert again.cloud("0011223344556677") == CloudInfo(
        "0011223344556677", "Paul's", "member", None, 3, paul)
    assert again.cloud("c2").owner is None


@pytest.mark.parametrize("owner", [
    "0011223344556677",  # 8 bytes, the cloud id, not the device id
    "0011223344556677" + "8899AABBCCDDEEFF",  # not lowercase
    "0011223344556678" + "8899aabbccddeeff",  # another cloud's owner
    bytes.fromhex("00112233445566778899aabbccddeeff"),  # bytes, not hex
], ids=["cloud-id-only", "uppercase", "another-clouds", "bytes"])
def test_a_clouds_owner_is_a_device_id_bound_to_the_cloud(store: Keystore, owner: object) -> None:
    """The owner kept must be a device id (32 lowercase hex digits) whose first 8 bytes are the
    cloud's id (rule 3): nothing else is stored."""
    with pytest.raises(ConfigError):
        store.set_cloud("0011223344556677", b"m" * 32, name="Paul's", role="member",
                        owner=owner)  # type: ignore[arg-type]
    assert store.clouds() == ()


# -- peers --------------------------------------------------------------------------------------


def test_peer_lookup_and_forget(store: Keystore) -> None:
    george, _ = new_peer("george")
    ringo, _ = new_peer("ringo")
    store.add_peer(george)
    store.add_peer(ringo)
    assert store.get_peer(george.id) is george
    assert store.get_peer(george.id.upper()) is george
    assert store.get_peer("ringo") is ringo
    assert store.get_peer(ringo.id[:8]) is ringo
    updated = dataclasses.replace(george, last_seen=3000, authenticated=True)
    store.add_peer(updated)
    assert store.peers() == (updated, ringo)
    assert store.forget_peer("george") == updated
    assert store.peers() == (ringo,)
    with pytest.raises(NotFoundError, match="pairkit peers"):
        store.get_peer("george")
    with pytest.raises(NotFoundError):
        store.forget_peer("nobody")


def test_ambiguous_peer_name(store: Keystore) -> None:
    store.add_peer(new_peer("twin")[0])
    store.add_peer(new_peer("twin")[0])
    with pytest.raises(ConfigError, match="more than one"):
        store.get_peer("twin")


def test_own_key_is_not_a_peer(store: Keystore) -> None:
    with pytest.raises(ConfigError):
        store.add_peer(Peer.new("me", store.static_public))


def test_peer_validation() -> None:
    peer, _ = new_peer()
    other, _ = new_peer()
    with pytest.raises(ConfigError, match="id"):
        dataclasses.replace(peer, id=other.id)
    with pytest.raises(DecodeError):
        dataclasses.replace(peer, signing_public=b"\x00" * 31)
    with pytest.raises(ConfigError):
        dataclasses.replace(peer, extra={"when": object()})
    with pytest.raises(ConfigError):
        dataclasses.replace(peer, extra={1: "non-text key"})
    with pytest.raises(ConfigError):
        dataclasses.replace(peer, last_seen=-1)
    with pytest.raises(ConfigError):
        dataclasses.replace(peer, name="")
    with pytest.raises(ConfigError):
        dataclasses.replace(peer, authenticated=1)


def test_peer_is_deeply_frozen() -> None:
    peer, _ = new_peer(extra={"list": [1, 2], "map": {"a": b"x"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        peer.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        peer.extra["new"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        peer.extra["map"]["a"] = b"y"  # type: ignore[index]
    assert peer.extra["list"] == (1, 2)


def test_peer_repr_hides_our_prekeys() -> None:
    peer, _ = new_peer()
    peer = dataclasses.replace(peer, our_prekeys=[{"priv": b"\xaa" * 32}])
    text = repr(peer)
    # the id and key fingerprints are random hex, so look for the secret's own encodings only
    assert (b"\xaa" * 32).hex() not in text and "\\xaa\\xaa" not in text


def test_errors_are_pairing_errors() -> None:
    for cls in (KeystoreNotFoundError, WrongPinError, KeystoreCorruptError):
        assert issubclass(cls, PairingError)


# -- settings (a codec: property test) ----------------------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 100), inner, max_size=4)
    ),
    max_leaves=12,
)


def _thawed(value):
    if isinstance(value, list | tuple):
        return [_thawed(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _thawed(v) for k, v in value.items()}
    return value


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=cbor_values)
def test_settings_round_trip(store: Keystore, store_path: Path, value: object) -> None:
    store.set_setting("k", value)
    store.save()
    got = Keystore.open(store_path, PIN).setting("k")
    assert _thawed(got) == _thawed(value)
    assert got == store.setting("k")


@pytest.mark.parametrize("bad", [{1, 2}, object(), float("nan"), {True: 1}])
def test_settings_refuse_non_cbor(store: Keystore, bad: object) -> None:
    with pytest.raises(ConfigError):
        store.set_setting("k", bad)


# -- two processes sharing one keystore ---------------------------------------------------------


def test_update_keeps_changes_made_by_another_process(store_path: Path) -> None:
    """A host and an `ls` on one device both save: neither loses the other's peer."""
    Keystore.create(store_path, PIN, name="paul's phone", kdf=FAST)
    host_view = Keystore.open(store_path, PIN)
    ls_view = Keystore.open(store_path, PIN)
    george, _ = new_peer(name="george")
    ringo, _ = new_peer(name="ringo")
    with host_view.update():
        host_view.add_peer(george)
    with ls_view.update():  # opened before the host saved: reloads, then adds
        ls_view.add_peer(ringo)
    names = {p.name for p in Keystore.open(store_path, PIN).peers()}
    assert names == {"george", "ringo"}
    assert {p.name for p in host_view.peers()} == {"george"}  # until its next update
    with host_view.update():
        pass
    assert {p.name for p in host_view.peers()} == {"george", "ringo"}


def test_update_refuses_after_the_pin_changed_elsewhere(store_path: Path) -> None:
    Keystore.create(store_path, PIN, name="paul's phone", kdf=FAST)
    stale = Keystore.open(store_path, PIN)
    other = Keystore.open(store_path, PIN)
    other.change_pin("another pin", kdf=FAST)
    before = store_path.read_bytes()
    with pytest.raises(KeystoreError, match="PIN was changed"), stale.update():
        stale.rename("should not be written")
    assert store_path.read_bytes() == before


# -- the storage interface (issue 12: the keystore reads no file; the runtime gives it one) -----


def test_a_keystore_in_memory_round_trips_without_touching_a_file(tmp_path: Path) -> None:
    from pairkit.pairing.keystore import Keystore as CoreKeystore
    from pairkit.pairing.keystore import MemoryStorage

    storage = MemoryStorage(where="test slot")
    made = CoreKeystore.create(storage, PIN, name="in memory", kdf=FAST)
    peer, _ = new_peer()
    made.add_peer(peer)
    made.save()
    assert storage.data is not None and storage.data.startswith(b"PKKS")
    opened = CoreKeystore.open(MemoryStorage(storage.data), PIN)
    assert opened.device_id == made.device_id and opened.get_peer(peer.id) == peer
    with pytest.raises(WrongPinError):
        CoreKeystore.open(MemoryStorage(storage.data), "999999")
    with pytest.raises(KeystoreError, match="already exists at test slot"):
        CoreKeystore.create(storage, PIN, name="again", kdf=FAST)
    with pytest.raises(KeystoreNotFoundError, match="no keystore at memory"):
        CoreKeystore.open(MemoryStorage(), PIN)
    assert list(tmp_path.iterdir()) == []


def test_the_same_sealed_bytes_open_from_a_file_and_from_memory(
    store: Keystore, store_path: Path
) -> None:
    """The file storage adds nothing to the format: its bytes open in memory, and back."""
    from pairkit.pairing.keystore import MemoryStorage

    in_memory = Keystore.open(MemoryStorage(store_path.read_bytes()), PIN)
    assert in_memory.device_id == store.device_id
    in_memory.rename("moved to memory")
    in_memory.save()
    assert isinstance(in_memory.storage, MemoryStorage) and in_memory.storage.data is not None
    store_path.write_bytes(in_memory.storage.data)
    assert Keystore.open(store_path, PIN).name == "moved to memory"
    with pytest.raises(AttributeError, match="not in a file"):
        _ = in_memory.path


def test_an_update_in_memory_cannot_nest(store: Keystore, store_path: Path) -> None:
    from pairkit.pairing.keystore import MemoryStorage

    ks = Keystore.open(MemoryStorage(store_path.read_bytes()), PIN)
    with ks.update(), pytest.raises(KeystoreError, match="already being updated"):
        with ks.update():
            pass


def test_a_keystore_too_large_to_open_again_is_not_saved(
    store: Keystore, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 9 of issue 17: the keystore saved what it then refused to open.  Now the limit
    on opening is checked before writing, and the file on disk stays as it was."""
    import pairkit.pairing.keystore.store as store_module

    before = store_path.read_bytes()
    monkeypatch.setattr(store_module, "MAX_FILE_SIZE", len(before) + 64)
    for _ in range(4):
        store.add_peer(new_peer()[0])
    with pytest.raises(KeystoreError, match="nothing was saved"):
        store.save()
    assert store_path.read_bytes() == before
    # what does fit is saved and opens again
    monkeypatch.undo()
    store.save()
    assert len(Keystore.open(store_path, PIN).peers()) == len(store.peers())


def test_reload_takes_what_another_process_saved(store: Keystore, store_path: Path) -> None:
    other = Keystore.open(store_path, PIN)
    peer, _ = new_peer()
    other.add_peer(peer)
    other.save()
    assert peer.id not in {p.id for p in store.peers()}
    store.reload()
    assert store.get_peer(peer.id) == peer


def test_a_reload_of_unchanged_bytes_still_drops_unsaved_changes(store: Keystore) -> None:
    """Issue 13: a reload of the very bytes this object wrote skips unsealing them, and must
    still give back exactly what was saved (nothing added, changed or forgotten meanwhile)."""
    kept, _ = new_peer(name="kept")
    store.add_peer(kept)
    store.set_cloud("c1", os.urandom(32), name="home", role="owner")
    store.save()
    store.add_peer(new_peer(name="unsaved")[0])
    store.forget_peer(kept.id)
    store.rename("unsaved name")
    store.set_cloud("c2", os.urandom(32), name="other", role="member")
    store.reload()
    assert [p.name for p in store.peers()] == ["kept"]
    assert store.name == "paul's phone"
    assert [c.cloud_id for c in store.clouds()] == ["c1"]
    # and again: the copy kept of the saved contents was not changed by the changes above
    store.forget_peer(kept.id)
    store.reload()
    assert [p.name for p in store.peers()] == ["kept"]


def test_a_reload_sees_a_file_changed_to_the_same_length(store: Keystore,
                                                         store_path: Path) -> None:
    """Bytes that differ from the ones written are unsealed and checked, never trusted: a
    flipped byte is a damaged keystore, another process's save is read."""
    store.add_peer(new_peer(name="mine")[0])
    store.save()
    other = Keystore.open(store_path, PIN)
    other.rename("renamed elsewhere")
    other.save()
    store.reload()
    assert store.name == "renamed elsewhere"
    data = bytearray(store_path.read_bytes())
    data[-5] ^= 0x01
    store_path.write_bytes(bytes(data))
    with pytest.raises(KeystoreCorruptError):
        store.reload()


def test_peer_records_encode_the_same_after_replace(store: Keystore, store_path: Path) -> None:
    """A record's CBOR map is made once; a changed copy (dataclasses.replace) gets its own."""
    peer, _ = new_peer(name="before")
    store.add_peer(peer)
    store.save()
    store.add_peer(dataclasses.replace(peer, name="after", last_seen=2000))
    store.save()
    again = Keystore.open(store_path, PIN).get_peer(peer.id)
    assert (again.name, again.last_seen) == ("after", 2000)


def test_the_body_put_together_is_the_canonical_encoding_of_the_whole(store: Keystore) -> None:
    """Issue 13: peers are encoded once each and spliced into the body; the bytes must be what
    encoding the whole map canonically gives (cbor2), so every keystore reads as before."""
    import cbor2

    for i in range(30):  # past 23 peers: a two-byte array head
        store.add_peer(new_peer(name=f"peer {i}", extra={"address": f"a{i}", "n": [i]})[0])
    store.set_cloud("cloud", os.urandom(32), name="home", role="owner", expires=5.5)
    store.set_setting("a setting", {"nested": [1, "two", b"3"]})
    body = store._body()
    assert cbor2.dumps(cbor2.loads(body), canonical=True) == body
    assert len(cbor2.loads(body)["peers"]) == 30


def test_the_peers_kept_from_the_last_save_follow_every_change(store: Keystore,
                                                                store_path: Path) -> None:
    """Issue 13: the peers' joined encodings are kept between saves and only new peers added;
    a changed, forgotten or reordered peer must still be written as it now is."""
    import cbor2

    def stored_names() -> list[str]:
        return [p.name for p in Keystore.open(store_path, PIN).peers()]

    made = [new_peer(name=f"p{i}")[0] for i in range(5)]
    for peer in made[:3]:
        store.add_peer(peer)
    store.save()
    store.add_peer(made[3])  # a new one at the end: added to what was kept
    store.save()
    assert stored_names() == ["p0", "p1", "p2", "p3"]
    store.add_peer(dataclasses.replace(made[1], name="p1 renamed"))  # a change in the middle
    store.save()
    assert stored_names() == ["p0", "p1 renamed", "p2", "p3"]
    store.forget_peer(made[0].id)
    store.add_peer(made[4])
    store.save()
    assert stored_names() == ["p1 renamed", "p2", "p3", "p4"]
    store.reload()
    store.add_peer(made[0])
    body = store._body()
    assert cbor2.dumps(cbor2.loads(body), canonical=True) == body
    assert [p["name"] for p in cbor2.loads(body)["peers"]] == [
        "p1 renamed", "p2", "p3", "p4", "p0"]


@pytest.mark.parametrize("argument", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                      2**64 - 1])
def test_encode_head_matches_cbor2(argument: int) -> None:
    import cbor2

    from pairkit.pairing import cbor

    assert cbor.encode_head(0, argument) == cbor2.dumps(argument)
    assert cbor.encode_head(2, argument)[1:] == cbor2.dumps(argument)[1:]
    with pytest.raises(ValueError):
        cbor.encode_head(8, 1)
    with pytest.raises(ValueError):
        cbor.encode_head(0, 2**64)


def test_the_core_keystore_asks_for_a_storage_not_a_path(tmp_path: Path) -> None:
    from pairkit.pairing.keystore import Keystore as CoreKeystore

    for call in (lambda: CoreKeystore.open(tmp_path / "ks", PIN),
                 lambda: CoreKeystore.create(tmp_path / "ks", PIN, name="x", kdf=FAST)):
        with pytest.raises(ConfigError, match=r"open one by path use pairkit\.keystore\.Keystore"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_a_keystore_written_before_the_split_opens_unchanged(tmp_path: Path) -> None:
    """tests/vectors/keystore-v1.pk was written by pairkit at 92ca9ab (one keystore.py, before
    the keystore was split and put behind a Storage; PIN "frozen-test-pin", a throwaway
    identity, the cheapest Argon2id).  It opens, from a file and from memory, with everything
    it held, and saves again in the same format."""
    from pairkit.pairing.keystore import MemoryStorage

    frozen = ROOT / "tests" / "vectors" / "keystore-v1.pk"
    copy = tmp_path / "keystore.pk"
    copy.write_bytes(frozen.read_bytes())
    for where in (copy, MemoryStorage(frozen.read_bytes())):
        ks = Keystore.open(where, "frozen-test-pin")
        assert (ks.name, ks.device_id) == ("Frozen device", "16c71363d958f603490ec56207253cda")
        (peer,) = ks.peers()
        assert (peer.name, peer.static_public, peer.method) == (
            "Paul's phone", bytes(range(32)), "pin")
        assert peer.authenticated and peer.extra == {"role": "guest"}
        assert peer.irk is None  # written before peers could hold an address key
        assert [(c.cloud_id, c.name, c.role) for c in ks.clouds()] == [
            ("0011223344556677", "Frozen cloud", "owner")]
        assert ks.cloud("0011223344556677").owner is None  # written before owners were kept
        assert ks.group_epochs("doors") == (3,)
        assert ks.setting("transport") == "tcp:127.0.0.1:7000"
    ks = Keystore.open(copy, "frozen-test-pin")
    ks.save()
    again = Keystore.open(copy, "frozen-test-pin")
    assert again.device_id == ks.device_id and copy.read_bytes()[:4] == b"PKKS"
    # A peer's address key (issue 15) is one more key of its record, in the same format.
    (peer,) = again.peers()
    again.add_peer(dataclasses.replace(peer, irk=b"\x07" * 16))
    again.save()
    assert Keystore.open(copy, "frozen-test-pin").peers()[0].irk == b"\x07" * 16


def test_a_peer_address_key_round_trips_and_stays_out_of_repr(
    store: Keystore, store_path: Path
) -> None:
    peer, _ = new_peer()
    without = peer._encoded()
    with_key = dataclasses.replace(peer, irk=b"\xab" * 16)
    assert without == dataclasses.replace(with_key, irk=None)._encoded()  # absent: as before
    # (the whole key, as hex or as a bytes repr: one \xab alone may be a byte of a random key)
    assert (b"\xab" * 16).hex() not in repr(with_key)
    assert "\\xab" * 16 not in repr(with_key)
    store.add_peer(with_key)
    store.save()
    assert Keystore.open(store_path, PIN).get_peer("george").irk == b"\xab" * 16
    for bad in (b"short", b"\x00" * 17, "not bytes"):
        with pytest.raises(ConfigError, match="identity resolving key"):
            dataclasses.replace(peer, irk=bad)
