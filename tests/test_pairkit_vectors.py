"""pairkit's own protocols against their frozen transcripts (tests/vectors/pairkit-methods.json).

Two kinds of check:

* **Replay.**  Each side is rebuilt from the vector's stored inputs (tests/vector_harness.py) and
  fed the other side's recorded messages: what it sends must be the recorded bytes, and its keys,
  fingerprint and conclusion the recorded ones.  A change to a label, a field, the encoding or
  the key schedule therefore fails here.  One exception, by necessity: ``compare``'s host seals
  SK with HPKE, whose ephemeral key ``cryptography`` draws itself, so the host's Accept (and only
  it) cannot be reproduced; the guest replay checks that recorded Accept instead (and the
  independent check below opens it).
* **Consistency from the spec alone.**  The stored values are recomputed from docs/protocol.md
  with ``cbor2``, ``hashlib`` and ``cryptography`` only, not pairkit's code: the CBOR form, th,
  the transcript and READY records, fingerprints, and each method's secrets where they can be
  rebuilt without a Noise or CPace implementation (compare's commitment and HPKE box, qr's id
  and PSK, the CPace ISK, resume's whole key schedule, ttp's channel and final keys, the cloud
  step's hints and proofs), and kk's two Noise IK messages, opened as the host (their
  identity payloads: no name, padded to one length).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pairkit.pairing import wire
from tests.vector_harness import CASES, CONTEXT, READY, load, make, make_inputs, replay

DATA = load()
VECTORS: list[dict[str, Any]] = DATA["vectors"]
BY_ID = {v["id"]: v for v in VECTORS}
IDS = [v["id"] for v in VECTORS]

TYPE_IDS = {
    "Abort": 1, "Offer": 10, "Accept": 11, "NoiseMessage": 12, "Reveal": 13,
    "ResumeMessage": 20, "CloudHello": 30, "CloudReply": 31, "CloudProof": 32,
    "CloudVerdict": 33, "JoinRequest": 34, "JoinVerdict": 35, "SessionKeyOffer": 68,
    "SessionKeyAck": 69,
}


def by_id(fn: Any) -> Any:
    return pytest.mark.parametrize("vector", VECTORS, ids=IDS)(fn)


# -- the primitives of docs/protocol.md, written out independently ------------------------------


def kdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, salt or None, info).derive(ikm)


def mac(key: bytes, *parts: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.digest()


def h16(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def fp(secret: bytes, salt: bytes) -> str:
    v = kdf(secret, salt, b"pairkit/1 session fingerprint", 8).hex()
    return "-".join(v[i : i + 4] for i in range(0, 16, 4))


def aead(key: bytes, nonce: int, data: bytes, ad: bytes, *, open_: bool = False) -> bytes:
    box = ChaCha20Poly1305(key)
    n = nonce.to_bytes(12, "little")
    return box.decrypt(n, data, ad) if open_ else box.encrypt(n, data, ad)


def enc(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def transcript(messages: list[tuple[str, bytes]]) -> bytes:
    g2h = hashlib.sha256(b"pairkit/1 transcript direction")
    h2g = hashlib.sha256(b"pairkit/1 transcript direction")
    for who, data in messages:
        (g2h if who == "guest" else h2g).update(len(data).to_bytes(4, "big") + data)
    return hashlib.sha256(b"pairkit/1 transcript" + g2h.digest() + h2g.digest()).digest()


def flights(vector: dict[str, Any], part: str = "messages") -> list[tuple[str, str, dict]]:
    return [(m["from"], m["type"], cbor2.loads(bytes.fromhex(m["hex"]))) for m in vector[part]]


def the(vector: dict[str, Any], kind: str, who: str | None = None, n: int = 0) -> dict:
    found = [m for w, t, m in flights(vector) + flights(vector, "cloud_step")
             if t == kind and (who is None or w == who)]
    return found[n]


def last(vector: dict[str, Any], kind: str) -> dict:
    return [m for _, t, m in flights(vector) if t == kind][-1]


def context_of(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["inputs"]["context"])


def key(vector: dict[str, Any], side: str, name: str) -> bytes:
    return bytes.fromhex(vector["inputs"][side][name])


# -- the set of vectors ---------------------------------------------------------------------------


def test_every_case_has_a_frozen_vector() -> None:
    assert IDS == [c["id"] for c in CASES]
    assert {v["method"] for v in VECTORS} == {"pin", "qr", "compare", "clear", "resume", "kk",
                                             "ttp"}
    for method in ("pin", "qr", "compare", "clear", "resume", "kk", "ttp"):
        contexts = [len(context_of(v)) for v in VECTORS if v["method"] == method]
        assert 0 in contexts or method in ("clear",), method
        assert 32 in contexts, f"{method} has no case with a non-empty context"
    assert any(v["cloud_step"] and v["cloud_step"][2]["type"] == "CloudProof" for v in VECTORS)
    assert any(v["cloud_step"] and v["cloud_step"][2]["type"] == "JoinRequest" for v in VECTORS)


# -- replay ----------------------------------------------------------------------------------------


@by_id
def test_the_guest_reproduces_its_messages_and_keys(vector: dict[str, Any]) -> None:
    cloud_sent, sent, session = replay(vector, "guest")
    assert [d.hex() for d in cloud_sent] == [
        m["hex"] for m in vector["cloud_step"] if m["from"] == "guest"
    ]
    assert [d.hex() for d in sent] == [m["hex"] for m in vector["messages"] if m["from"] == "guest"]
    assert session.send_key.hex() == vector["guest_send_key"]
    assert session.recv_key.hex() == vector["guest_recv_key"]
    assert session.fingerprint == vector["fingerprint"]
    assert session.method.label == vector["method"]
    assert session.peer.authenticated is vector["guest_authenticated_host"]


@by_id
def test_the_host_reproduces_its_messages_and_keys(vector: dict[str, Any]) -> None:
    cloud_sent, sent, session = replay(vector, "host")
    assert [d.hex() for d in cloud_sent] == [
        m["hex"] for m in vector["cloud_step"] if m["from"] == "host"
    ]
    recorded = [m["hex"] for m in vector["messages"] if m["from"] == "host"]
    got = [d.hex() for d in sent]
    if vector["method"] == "compare":
        # HPKE's own ephemeral is in the Accept's sealed key and commitment (module docstring):
        # only its announcement can match; everything after it must.
        assert len(got) == len(recorded)
        mine, theirs = cbor2.loads(bytes.fromhex(got[0])), cbor2.loads(bytes.fromhex(recorded[0]))
        assert mine[2] == theirs[2] and sorted(mine) == sorted(theirs)
        got, recorded = got[1:], recorded[1:]
    assert got == recorded
    assert session.send_key.hex() == vector["host_send_key"]
    assert session.recv_key.hex() == vector["host_recv_key"]
    assert session.fingerprint == vector["fingerprint"]
    assert session.peer.authenticated is vector["host_authenticated_guest"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_regenerating_gives_the_same_vector(case: dict[str, Any]) -> None:
    """The generator is deterministic, so --write changes the file only when the protocol did;
    for compare, all but the host's Accept and what hashes it (transcript, READY records)."""
    stored = json.loads(json.dumps(BY_ID[case["id"]]))  # a copy: edited below
    inputs = make_inputs(case)
    if case.get("cloud"):
        inputs["context"] = stored["inputs"]["context"]
    assert inputs == stored["inputs"]
    fresh = make(case)
    if case["method"] == "compare":
        for v in (fresh, stored):
            v["messages"] = [m for m in v["messages"] if m["type"] != "Accept"]
            del v["transcript"], v["ready"]
    assert fresh == {k: v for k, v in stored.items() if k in fresh}


def test_a_changed_byte_is_caught() -> None:
    """The check can fail: one flipped byte in a recorded host message breaks the guest's
    replay."""
    vector = json.loads(json.dumps(BY_ID["pin"]))
    raw = bytearray(bytes.fromhex(vector["messages"][1]["hex"]))
    raw[-1] ^= 1
    vector["messages"][1]["hex"] = raw.hex()
    with pytest.raises(Exception):  # noqa: B017 - any failure to reproduce is the point
        test_the_guest_reproduces_its_messages_and_keys(vector)


# -- consistency: §1 wire, §2 transcript, §11 READY, keys -----------------------------------------


@by_id
def test_every_message_is_canonical_cbor_with_its_type(vector: dict[str, Any]) -> None:
    for part in ("cloud_step", "messages"):
        for m in vector[part]:
            data = bytes.fromhex(m["hex"])
            body = cbor2.loads(data)
            assert body[0] == 1 and body[1] == TYPE_IDS[m["type"]], m["type"]
            assert enc(body) == data  # canonical: integer keys ascending, shortest heads
            assert wire.decode(data).encode() == data


@by_id
def test_identities_follow_from_their_private_keys(vector: dict[str, Any]) -> None:
    for side in ("guest", "host"):
        assert public(key(vector, side, "static_private")) == key(vector, side, "static_public")
        assert h16(key(vector, side, "static_public")) == key(vector, side, "device_id")


@by_id
def test_the_keys_cross(vector: dict[str, Any]) -> None:
    assert vector["guest_send_key"] == vector["host_recv_key"]
    assert vector["guest_recv_key"] == vector["host_send_key"]
    assert vector["guest_send_key"] != vector["guest_recv_key"]
    assert vector["fingerprint"] == vector["host_fingerprint"]


@by_id
def test_the_transcript_and_the_context(vector: dict[str, Any]) -> None:
    cloud = [(m["from"], bytes.fromhex(m["hex"])) for m in vector["cloud_step"]]
    pairing = [(m["from"], bytes.fromhex(m["hex"])) for m in vector["messages"]]
    assert transcript(cloud + pairing).hex() == vector["transcript"]
    if cloud:
        assert context_of(vector) == transcript(cloud)
    else:
        assert context_of(vector) in (b"", CONTEXT)


@by_id
def test_the_ready_records(vector: dict[str, Any]) -> None:
    plaintext = READY + bytes.fromhex(vector["transcript"])
    for side in ("host", "guest"):
        header = b"\x00" + (0).to_bytes(8, "big")
        body = aead(bytes.fromhex(vector[f"{side}_send_key"]), 0, plaintext, header)
        assert (header + body).hex() == vector["ready"][side]


@by_id
def test_th_binds_both_announcements_and_the_context(vector: dict[str, Any]) -> None:
    if vector["method"] == "resume":
        assert "th" not in vector
        return
    offer, accept = last(vector, "Offer"), last(vector, "Accept")
    assert offer[2][4] == accept[2][4]  # the same method
    th = kdf(enc(offer[2]) + enc(accept[2]), context_of(vector), b"pairkit/1 negotiation")
    assert th.hex() == vector["th"]


@by_id
def test_noise_fingerprints(vector: dict[str, Any]) -> None:
    if vector["method"] in ("resume", "ttp"):
        assert "noise_handshake_hash" not in vector
        return
    hh = bytes.fromhex(vector["noise_handshake_hash"])
    assert fp(hh, b"noise") == vector["fingerprint"]


# -- consistency: each method ----------------------------------------------------------------------


def check_pin(vector: dict[str, Any]) -> None:
    offer, accept = the(vector, "Offer"), the(vector, "Accept")
    ya, yb = offer[3], accept[3]
    scalar = bytes.fromhex(vector["draws"]["guest"][1])  # after the Announce nonce

    def lv(*parts: bytes) -> bytes:  # CPace lv_cat; every length here is below 128
        return b"".join(bytes([len(p)]) + p for p in parts)

    k = dh(scalar, yb)
    ir = lv(ya, enc(offer[2])) + lv(yb, enc(accept[2]))
    isk = hashlib.sha512(lv(b"CPace255_ISK", b"", k) + ir).digest()
    assert isk.hex() == vector["intermediate"]["cpace_isk"]
    assert public(scalar) != ya  # Ya is scalar * (the PIN's generator), not the base point
    assert vector["inputs"]["pin"].isdigit() and len(vector["inputs"]["pin"]) == 6


def check_qr(vector: dict[str, Any]) -> None:
    uri = vector["inputs"]["qr_uri"]
    parts = urlsplit(uri)
    q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    secret = bytes.fromhex(vector["inputs"]["qr_secret"])
    unb64 = lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))  # noqa: E731
    assert (parts.scheme, parts.path, q["v"]) == ("pairkit", "qr", "1")
    assert unb64(q["k"]) == key(vector, "host", "static_public") and unb64(q["s"]) == secret
    assert int(q["x"]) > vector["inputs"]["wall_now"]
    offer = the(vector, "Offer")
    assert offer[6] == hashlib.sha256(b"pairkit/1 qr id" + secret).digest()[:8]
    psk = kdf(secret, key(vector, "host", "static_public"), b"pairkit/1 qr psk")
    assert psk.hex() == vector["intermediate"]["qr_psk"]


def check_compare(vector: dict[str, Any]) -> None:
    inter, th = vector["intermediate"], bytes.fromhex(vector["th"])
    offer, accept = the(vector, "Offer"), the(vector, "Accept")
    ng, nh = the(vector, "Reveal", "guest")[2], the(vector, "Reveal", "host")[2]
    eph = bytes.fromhex(inter["guest_ephemeral_private"])
    assert offer[5] == public(eph)
    sealed, enc_ = accept[5], accept[5][:32]
    assert accept[6] == mac(nh, b"pairkit/1 commit", offer[5], enc_, th)
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    sk = suite.decrypt(sealed, X25519PrivateKey.from_private_bytes(eph),
                       info=b"pairkit/1 compare" + th)
    assert sk.hex() == inter["sk"]
    code = int.from_bytes(mac(th, b"pairkit/1 code", offer[5], enc_, ng, nh)[:8], "big")
    assert 0 <= code % 1_000_000 < 1_000_000
    # The host's Reveal carries Noise XX message 1 (§5), the guest's does not.
    assert sorted(the(vector, "Reveal", "guest")) == [0, 1, 2]
    first = the(vector, "Reveal", "host")[3]
    e_private = bytes.fromhex(vector["draws"]["host"][3])  # Announce nonce, SK, N_H, then e
    psk = kdf(sk, th, b"pairkit/1 identity psk compare")
    assert first == noise_xxpsk0_message_1(th, psk, e_private)
    kinds = [(w, t) for w, t, _ in flights(vector)]
    assert kinds == [("guest", "Offer"), ("host", "Accept"), ("guest", "Reveal"),
                     ("host", "Reveal"), ("guest", "NoiseMessage"), ("host", "NoiseMessage")]


def noise_hkdf(ck: bytes, ikm: bytes, n: int) -> list[bytes]:
    """Noise's HKDF (rev 34 §4.3) over HMAC-SHA256: ``n`` outputs of 32 bytes."""
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.new(temp, prev + bytes([i]), hashlib.sha256).digest()
        out.append(prev)
    return out


def noise_xxpsk0_message_1(prologue: bytes, psk: bytes, e_private: bytes) -> bytes:
    """Message 1 (``psk, e``, empty payload) of Noise_XXpsk0_25519_ChaChaPoly_SHA256, written
    out from Noise rev 34 §5 and §9 (a name over 32 bytes is hashed; ``e`` is also mixed into
    the key in a PSK handshake)."""
    h = hashlib.sha256(b"Noise_XXpsk0_25519_ChaChaPoly_SHA256").digest()
    ck = h
    h = hashlib.sha256(h + prologue).digest()
    ck, temp_h, k = noise_hkdf(ck, psk, 3)
    h = hashlib.sha256(h + temp_h).digest()
    e = public(e_private)
    h = hashlib.sha256(h + e).digest()
    ck, k = noise_hkdf(ck, e, 2)
    return e + aead(k, 0, b"", h)


def check_clear(vector: dict[str, Any]) -> None:
    accept = the(vector, "Accept")
    assert accept[7].hex() == vector["intermediate"]["sk"]
    assert accept[2][2] & 16 and the(vector, "Offer")[2][2] & 16  # both: an encrypted link
    mitm = vector["inputs"]["link_mitm"]
    assert vector["guest_authenticated_host"] is mitm is vector["host_authenticated_guest"]


def check_resume(vector: dict[str, Any]) -> None:
    inter, ctx = vector["intermediate"], context_of(vector)
    init, okay = the(vector, "ResumeMessage", "guest"), the(vector, "ResumeMessage", "host")
    hi, ho = init[2], okay[2]
    e_g = bytes.fromhex(inter["guest_ephemeral_private"])
    f_h = bytes.fromhex(inter["host_fresh_private"])
    nominated = bytes.fromhex(vector["inputs"]["known"]["guest_their_prekeys"][0])
    prekey = next(bytes.fromhex(p["private"]) for p in vector["inputs"]["known"]["host_our_prekeys"]
                  if p["digest"] == nominated.hex())
    assert sorted(init) == [0, 1, 2]
    # no device id: fields 2 and 4 are retired (§8, §14)
    assert hi == {3: h16(public(e_g)), 5: nominated, 6: 0, 7: 1, 8: public(e_g)}
    assert ho == {3: nominated, 5: h16(public(e_g)), 6: 1, 7: 2, 8: public(prekey)}
    assert okay[6] == public(f_h)
    th = kdf(enc(hi) + public(prekey) + public(f_h), ctx, b"pairkit/1 resume th")
    s_g, s_h = key(vector, "guest", "static_private"), key(vector, "host", "static_private")
    ikm = (dh(prekey, public(s_g)) + dh(s_h, public(e_g)) + dh(prekey, public(e_g))
           + dh(f_h, public(e_g)))
    assert ikm == (dh(s_g, public(prekey)) + dh(e_g, public(s_h)) + dh(e_g, public(prekey))
                   + dh(e_g, public(f_h)))  # the guest's side of the same four
    sk = kdf(ikm, th, b"pairkit/1 resume")
    okm = kdf(sk, th, b"pairkit/1 keys", 128)
    g2h, h2g, kv, ks = okm[:32], okm[32:64], okm[64:96], okm[96:]
    assert (g2h.hex(), h2g.hex()) == (vector["guest_send_key"], vector["guest_recv_key"])
    assert okay[3] == mac(kv, b"host", th)
    assert kv != ks  # one key per primitive
    new = cbor2.loads(aead(ks, 1, okay[4], th, open_=True))
    assert set(new) == {2} and len(new[2]) == 1 and len(new[2][0]) == 16
    assert fp(sk, th) == vector["fingerprint"]


def check_kk(vector: dict[str, Any]) -> None:
    kinds = [t for _, t, _ in flights(vector)]
    if kinds[0] == "ResumeMessage":  # the stale prekey: INIT, FAIL, then kk
        fail = the(vector, "ResumeMessage", "host")
        assert the(vector, "ResumeMessage", "guest")[2][5] == bytes(16)
        assert fail[2][7] == 3 and fail[5] == "ephemeral key mismatch"
        assert sorted(fail) == [0, 1, 2, 5] and 8 not in fail[2]
    offer, accept = the(vector, "Offer"), the(vector, "Accept")
    # Noise IK: the guest's id is in no field, its static key only encrypted (-> e, es, s, ss:
    # e, then s sealed with its tag, then the sealed payload)
    assert offer[2][4] == 6 and 7 not in offer
    assert sorted(offer) == [0, 1, 2, 4] and sorted(accept) == [0, 1, 2, 4]
    guest_id = key(vector, "guest", "device_id")
    guest_static = key(vector, "guest", "static_public")
    assert guest_id not in offer[4] and guest_static not in offer[4]
    # Opened as the host: the guest's static key, then both identity payloads, each of one
    # length (369 bytes the guest's, 404 the host's), with no name and a pad of zeros (§8)
    ctx = context_of(vector)
    s_g, plain_g, plain_h = noise_ik_open(vector)
    assert s_g == guest_static
    hosts_hash = kdf(enc(accept[2]), ctx, b"pairkit/1 hello")
    for plain, length, side, hello_hash in ((plain_g, 369, "guest", None),
                                            (plain_h, 404, "host", hosts_hash)):
        payload = cbor2.loads(plain)
        assert len(plain) == length and enc(payload) == plain
        assert payload.get(3) == hello_hash
        assert set(payload) == ({2, 3, 4} if hello_hash else {2, 4})
        assert payload[4] == bytes(len(payload[4]))
        ident = payload[2]
        assert ident[2] == key(vector, side, "device_id") == h16(ident[4])
        assert ident[3] == "" and ident[4] == key(vector, side, "static_public")
        assert ident[5] == key(vector, side, "signing_public") and 1 <= len(ident[6]) <= 16


def noise_ik_open(vector: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """kk's Noise_IK_25519_ChaChaPoly_SHA256 messages opened by the host's keys (its static
    key, its ``e`` among its draws), written out from Noise rev 34 §5 and §7.5: the guest's
    static key and the two payloads' plaintexts.  The name is 32 bytes: ``h`` is the name."""
    s_h = key(vector, "host", "static_private")
    offer, accept = the(vector, "Offer"), the(vector, "Accept")
    h = ck = b"Noise_IK_25519_ChaChaPoly_SHA256"

    def mix_hash(h: bytes, data: bytes) -> bytes:
        return hashlib.sha256(h + data).digest()

    h = mix_hash(h, kdf(enc(offer[2]), context_of(vector), b"pairkit/1 hello"))  # prologue
    h = mix_hash(h, public(s_h))  # <- s
    m1 = offer[4]
    e_g, sealed_s, sealed_1 = m1[:32], m1[32:80], m1[80:]
    h = mix_hash(h, e_g)  # -> e
    ck, k = noise_hkdf(ck, dh(s_h, e_g), 2)  # es
    s_g = aead(k, 0, sealed_s, h, open_=True)  # s
    h = mix_hash(h, sealed_s)
    ck, k = noise_hkdf(ck, dh(s_h, s_g), 2)  # ss
    plain_g = aead(k, 0, sealed_1, h, open_=True)
    h = mix_hash(h, sealed_1)
    m2 = accept[4]
    e_h = next(d for d in map(bytes.fromhex, vector["draws"]["host"])
               if len(d) == 32 and public(d) == m2[:32])
    h = mix_hash(h, m2[:32])  # <- e
    ck, k = noise_hkdf(ck, dh(e_h, e_g), 2)  # ee
    ck, k = noise_hkdf(ck, dh(e_h, s_g), 2)  # se
    plain_h = aead(k, 0, m2[32:], h, open_=True)
    return s_g, plain_g, plain_h


def check_ttp(vector: dict[str, Any]) -> None:
    inter, th = vector["intermediate"], bytes.fromhex(vector["th"])
    offer, accept = the(vector, "Offer"), the(vector, "Accept")
    guest_id, host_id = key(vector, "guest", "device_id"), key(vector, "host", "device_id")
    assert (offer[2][4], offer[7], accept[9]) == (7, guest_id, host_id)
    ctx = kdf(th + guest_id + host_id, b"", b"pairkit/1 ttp context")
    assert ctx.hex() == inter["ttp_context"]
    server = vector["inputs"]["ttp"]
    okm = kdf(bytes.fromhex(server["sk"]), ctx,
              b"pairkit/1 ttp channel" + bytes.fromhex(server["match_id"]), 64)
    k_h2g, k_g2h = okm[:32], okm[32:]
    body = cbor2.loads(aead(k_h2g, 0, the(vector, "SessionKeyOffer")[2], ctx, open_=True))
    assert body[2].hex() == inter["session_key"]
    assert body[3][2] == host_id and body[3][4] == key(vector, "host", "static_public")
    s_g = key(vector, "guest", "static_private")
    secret = body[2] + dh(s_g, key(vector, "host", "static_public"))
    final = kdf(secret, ctx, b"pairkit/1 ttp session", 96)
    assert (final[:32].hex(), final[32:64].hex()) == (vector["guest_send_key"],
                                                      vector["guest_recv_key"])
    ack = cbor2.loads(aead(k_g2h, 0, the(vector, "SessionKeyAck")[2], ctx, open_=True))
    assert ack[2] == mac(final[64:], b"guest", ctx) and ack[3][2] == guest_id
    assert fp(secret, ctx) == vector["fingerprint"]


CHECKS = {"pin": check_pin, "qr": check_qr, "compare": check_compare, "clear": check_clear,
          "resume": check_resume, "kk": check_kk, "ttp": check_ttp}


@by_id
def test_the_method_s_values_follow_from_the_spec(vector: dict[str, Any]) -> None:
    CHECKS[vector["method"]](vector)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["cloud_step"]],
                         ids=[v["id"] for v in VECTORS if v["cloud_step"]])
def test_the_cloud_step_follows_from_the_spec(vector: dict[str, Any]) -> None:
    cloud = vector["inputs"]["cloud"]
    k = kdf(bytes.fromhex(cloud["secret"]), b"", b"pairkit/1 cloud auth")

    def m(data: bytes) -> bytes:
        return hmac.new(k, data, hashlib.sha256).digest()

    hello, reply = the(vector, "CloudHello"), the(vector, "CloudReply")
    ng, nh = hello[2], reply[2]
    # Always 8 hints (§10): each cloud the guest names once, at a random place, and fillers.
    real = [m(b"pairkit/1 cloud hint" + ng)[:8] for _ in cloud["guest_clouds"]]
    hints = hello[3]
    assert len(hints) == 8 and len(set(hints)) == 8
    assert all(hints.count(h) == 1 for h in real)
    says = cloud["host_says"]
    described = {2: vector["inputs"]["host"]["name"], 3: says["methods"], 4: says["caps"]}
    if cloud["guest_clouds"]:
        s_g, s_h = key(vector, "guest", "static_public"), key(vector, "host", "static_public")
        assert reply[3] == m(b"pairkit/1 cloud host" + ng + nh + s_h)
        assert reply[4] == hints.index(real[0])
        # the hello response to a member: sealed only (§10), under M("...reply" || n_G || n_H),
        # with the reply's other fields as associated data
        assert sorted(reply) == [0, 1, 2, 3, 4, 8]
        ad = enc({k: v for k, v in reply.items() if k != 8})
        plain = aead(m(b"pairkit/1 cloud reply" + ng + nh), 0, reply[8], ad, open_=True)
        body = cbor2.loads(plain)
        assert enc(body) == plain and body == {**described, 5: bytes(len(body[5]))}
        # padded with the fewest zero bytes that make a multiple of 64
        assert len(plain) % 64 == 0
        assert all(len(enc({**described, 5: bytes(n)})) % 64 for n in range(len(body[5])))
        assert the(vector, "CloudProof")[2] == m(b"pairkit/1 cloud guest" + ng + nh + s_g)
        assert the(vector, "CloudVerdict")[2] is True
    else:
        # no proof, no index; the host is open to strangers: its hello response in the clear
        assert reply == {0: 1, 1: 31, 2: nh, 5: described[2], 6: described[3], 7: described[4]}
        request = the(vector, "JoinRequest")
        assert request == {0: 1, 1: 34, 2: vector["inputs"]["guest"]["name"],
                           3: cloud["wants"], 5: False}
        assert the(vector, "JoinVerdict") == {0: 1, 1: 35, 2: 1, 3: cloud["grant_seconds"]}
