"""Attack 9 (issue 11): a private host's advert tells a stranger nothing (docs/hello.md,
docs/security.md rule 8): no capabilities, no methods, no flag, nothing that survives a
rotation; members still find it and read what it offers.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.hello import (
    HELLO_LEN,
    Hello,
    decode_hello,
    encode_private,
    make_tag,
    match_tag,
)
from pairkit.pairing.negotiation import ALL_CAPS, Caps, Method
from pairkit.transports.ble.virtual import VirtualRadio
from pairkit.transports.bumble import BumbleConfig, BumbleTransport

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = 1_800_000_000.0
METHODS = frozenset({Method.PIN, Method.QR, Method.RESUME})


def private_adverts(n: int, key: bytes | None = KEY, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed).randbytes
    out = []
    for i in range(n):
        now = NOW + i * 900  # one per rotation
        hello = Hello(False, ALL_CAPS, METHODS, make_tag(key, now, rng), l2cap=True)
        out.append(encode_private(hello, key, now, rng))
    return out


def test_a_private_advert_has_the_length_of_a_clear_one() -> None:
    clear = Hello(True, ALL_CAPS, METHODS, bytes(8)).encode()
    assert all(len(a) == len(clear) == HELLO_LEN for a in private_adverts(50))


def test_a_stranger_reads_nothing_but_that_it_is_private() -> None:
    for advert in private_adverts(200):
        hello = decode_hello(advert)  # no keys: a stranger
        assert hello.private and not hello.visible and not hello.l2cap
        assert hello.caps == Caps.NONE and hello.methods == frozenset()
        assert hello.cloud is None
        assert decode_hello(advert, {"other": OTHER}, NOW) == hello  # nor another cloud


def test_a_member_reads_the_methods_and_recognises_the_cloud() -> None:
    for i, advert in enumerate(private_adverts(20)):
        now = NOW + i * 900
        hello = decode_hello(advert, {"pauls-cloud": KEY}, now)
        assert hello.cloud == "pauls-cloud" and hello.private and not hello.visible
        assert hello.methods == METHODS and hello.caps == ALL_CAPS and hello.l2cap
        assert match_tag(hello.tag, {"pauls-cloud": KEY}, now) == "pauls-cloud"


def test_every_bit_is_balanced_and_nothing_survives_a_rotation() -> None:
    """Over 4000 adverts of one host, every bit after byte 0's two form bits is set about half
    the time, and byte 0's form bits only ever say "not a clear hello"; two hosts' adverts
    share no fixed value either."""
    adverts = private_adverts(4000)
    others = private_adverts(4000, key=OTHER, seed=2)
    for batch in (adverts, others):
        for bit in range(6, HELLO_LEN * 8):
            ones = sum((a[bit // 8] >> (7 - bit % 8)) & 1 for a in batch)
            assert 1700 < ones < 2300, bit  # ~7 standard deviations of a fair coin
        assert all(a[0] >> 6 != 1 for a in batch)
        assert len(set(batch)) == len(batch)
    assert {a[0] >> 6 for a in adverts} == {a[0] >> 6 for a in others} == {0, 2, 3}


def test_a_host_in_no_cloud_sends_random_bytes() -> None:
    adverts = private_adverts(500, key=None)
    assert len(set(adverts)) == 500
    assert all(decode_hello(a).methods == frozenset() for a in adverts)


# -- over bumble virtual radios, through the host's real broadcast -----------------------------


def keystore(path: Path, name: str) -> Keystore:
    ks = Keystore.create(path, "246813", name=name, kdf=Argon2Params.cheapest())
    ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
    ks.save()
    return ks


async def heard(scanner: BumbleTransport, seconds: float) -> list[bytes]:
    out = []
    async for s in scanner.scan(seconds):
        out.append(s.payload)
    return out


async def test_a_private_host_on_air_tells_a_stranger_nothing_and_a_member_everything(
    tmp_path: Path,
) -> None:
    from pairkit.presence import Presence, discover

    radio = VirtualRadio()
    seeds = iter(range(100))

    def open_device() -> BumbleTransport:
        return BumbleTransport("virtual", radio=radio,
                               rng=random.Random(next(seeds)).randbytes, config=BumbleConfig())

    paul = keystore(tmp_path / "paul.pk", "Paul")
    stranger = keystore(tmp_path / "george.pk", "George")
    member = keystore(tmp_path / "tv.pk", "TV")
    cloud = next(c for c in paul.clouds() if c.role == "owner")
    member.set_cloud(cloud.cloud_id, paul._cloud_secret_for_new_member(cloud.cloud_id),
                     name=cloud.name, role="member")
    host, scanner = await open_device().open(), await open_device().open()
    presence = Presence(host, paul, METHODS, visible_for=None, rotate_every=0.2)
    try:
        await presence.start()
        payloads = await heard(scanner, 1.0)
        assert len(set(payloads)) >= 3  # rotated, and nothing repeats
        for p in payloads:
            seen = decode_hello(p)
            assert seen.private and seen.methods == frozenset() and not seen.visible
        found, garbage = await discover(scanner, stranger, 0.5)
        assert garbage == 0 and found
        assert all(f.as_json()["methods"] == [] and f.cloud is None for f in found)
        found, _ = await discover(scanner, member, 0.5)
        assert found and all(f.cloud == cloud.cloud_id for f in found)
        assert all(set(f.as_json()["methods"]) == {"pin", "qr", "resume"} for f in found)
        # opening a window switches to the clear form, which strangers read
        await presence.open_window(5)
        assert presence.visible
        found, _ = await discover(scanner, stranger, 0.5)
        assert any(f.hello.visible and f.as_json()["methods"] for f in found)
    finally:
        await presence.stop()
        await scanner.close()
        await host.close()
