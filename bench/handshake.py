"""Handshake benchmarks: each exchange against the summed cost of its primitives, same run.

Machines are noisy, so no figure here is an absolute promise.  Every exchange is reported next
to its *floor*: the number of primitive operations the exchange must perform (derived from the
specification, not from the code), each timed in isolation in the same run with ``cryptography``
or ``hashlib`` (or Python's ``pow`` for CPace's Elligator 2 map), multiplied and summed.  The
ratio ``exchange / floor`` is the figure to compare across machines and commits: 1.0 would mean
all time goes into the primitives the protocol needs; 1.5 means half as much again is spent
elsewhere (Python glue, CBOR, state machines, the event loop, and primitive calls the code makes
beyond what the protocol needs, which the ``calls`` counts show).

Two issues are measured:

1. *Handshake core*: ``Noise_XX/IK/KK_25519_ChaChaPoly_SHA256`` (pairing/noise.py, Noise rev 34)
   and CPACE-X25519-SHA512 with key confirmation (pairing/cpace.py, draft-irtf-cfrg-cpace-21),
   both parties in one process.
2. *Pairing methods*: pin, qr, compare, clear, resume, and the kk fallback of resume (Noise
   IK; ``kk``: no prekey left; ``kk-stale``: the nominated prekey is refused, then kk), each as a
   complete pairing of :class:`~pairing.methods.GuestPairing` and
   :class:`~pairing.methods.HostPairing`, once over an in-memory loopback link with the asyncio
   driver (``drive``) and once with no link at all (``tests/pair_harness.shuttle``), so
   ``loopback / sans-I/O`` shows the driver's and the link's share.

Counts: the Noise counts are derived from the handshake pattern by the rules of Noise rev 34 §5
(:func:`noise_counts`); CPace's from draft-irtf-cfrg-cpace-21 §7.2, §8.2 and §10.4
(:func:`cpace_counts`); each method's from the module docstring of pairing/methods.py
(:func:`method_counts`).  The ``calls`` columns are what the code actually called in one run
(counted with cProfile), shown where they differ from the spec-derived counts.

Usage::

    .venv/bin/python bench/handshake.py              # the table (25 to 45 s on 2 cores)
    .venv/bin/python bench/handshake.py --json       # one JSON object
    .venv/bin/python bench/handshake.py --quick      # a few runs of everything (smoke test)
    .venv/bin/python bench/handshake.py --repeat 1000 --mtu 20

The measuring scheme and how to read the figures are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import datetime
import gc
import hashlib
import hmac
import itertools
import os
import platform
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/handshake.py` finds tests.pair_harness
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl import backend as openssl_backend  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives import hmac as crypto_hmac  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: E402
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

from bench.common import (  # noqa: E402
    PROBES,
    Yes,
    command_line,
    cpu_model,
    nproc,
    positive,
    render_goals,
    report,
    show,
    summary_us,
)
from pairkit.driver import drive  # noqa: E402
from pairkit.pairing.cpace import CPace  # noqa: E402
from pairkit.pairing.cpace import P as FIELD_P  # noqa: E402
from pairkit.pairing.methods import (  # noqa: E402
    HPKE_SUITE,
    KK_NOISE,
    PIN_NOISE,
    QR_NOISE,
    GuestPairing,
    HostPairing,
    HostState,
    KnownPeer,
    LocalIdentity,
    PairingConfig,
    prekey_holder,
)
from pairkit.pairing.negotiation import Method  # noqa: E402
from pairkit.pairing.noise import HandshakeState, generate_keypair, parse_protocol_name  # noqa: E402
from pairkit.prekeys import PrekeyPool  # noqa: E402
from pairkit.transports.loopback import DEFAULT_MTU, loopback_pair  # noqa: E402
from tests.pair_harness import shuttle  # noqa: E402

NOISE_CORE = (
    "Noise_XX_25519_ChaChaPoly_SHA256",
    "Noise_IK_25519_ChaChaPoly_SHA256",
    "Noise_KK_25519_ChaChaPoly_SHA256",
)
CPACE_CORE = "CPACE-X25519-SHA512"
METHODS = ("pin", "qr", "compare", "clear", "resume", "kk", "kk-stale")
#: issue 13: every method over loopback within this many times its floor
LOOPBACK_GOAL = 2.0

DEFAULT_REPEAT = 500
QUICK_REPEAT = 3
#: batches of each primitive per block (each about ``batch_target_s`` long)
PRIMITIVE_BATCHES = 5


# --------------------------------------------------------------------------------------------
# Primitives: what one operation costs, timed in isolation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Primitive:
    """One primitive operation: how to time it and how to recognise it in a profile."""

    name: str
    what: str
    #: builds the timed callable (inputs prepared outside the timing)
    make: Callable[[], Callable[[], object]]
    #: how many operations one call of the timed callable performs
    ops_per_call: int
    #: (substring, substring) pairs: a cProfile built-in whose name holds both is one call
    profile: tuple[tuple[str, str], ...]
    #: how many such calls make one operation
    calls_per_op: int = 1
    #: other ways to the same result: the primitive is timed at whichever is fastest here
    #: (issue 13, "the floor, honestly": the fastest implementation available)
    alternatives: tuple[Callable[[], Callable[[], object]], ...] = ()
    #: a profile call counts only when made from a file whose path holds this (``!``: does
    #: not hold it); empty: from anywhere
    caller: str = ""


def _x25519_base() -> Callable[[], object]:
    raw = os.urandom(32)
    # from_private_bytes computes the public key (one fixed-base scalar multiplication).
    return lambda: X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


def _x25519_dh() -> Callable[[], object]:
    # The scalar multiplication alone, with the peer's key loaded already: a party that uses
    # one peer key in two DH loads it once (``x25519_load``, counted per key).
    private = X25519PrivateKey.generate()
    public = X25519PrivateKey.generate().public_key()
    return lambda: private.exchange(public)


def _x25519_load() -> Callable[[], object]:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return lambda: X25519PublicKey.from_public_bytes(public)


def _fe_map() -> Callable[[], object]:
    # The two field operations of one Elligator 2 map (RFC 9380 §6.7.1), each at the fastest
    # implementation here: inv0 as Python's modular inverse (pow(u, -1, P), an extended gcd,
    # not Fermat's exponentiation) and is_square as Euler's criterion (one exponentiation:
    # Python has no faster Legendre symbol).
    u = int.from_bytes(os.urandom(32), "little") % FIELD_P
    legendre = (FIELD_P - 1) // 2
    return lambda: (pow(u, -1, FIELD_P), pow(u, legendre, FIELD_P))


def _sha256() -> Callable[[], object]:
    data = os.urandom(96)  # MixHash input: h (32 bytes) || a key or a short ciphertext
    return lambda: hashlib.sha256(data).digest()


def _sha512() -> Callable[[], object]:
    data = os.urandom(192)  # CPace's generator string / ISK input: one to two blocks
    return lambda: hashlib.sha512(data).digest()


def _hmac_sha256() -> Callable[[], object]:
    key, data = os.urandom(32), os.urandom(64)
    return lambda: hmac.digest(key, data, hashlib.sha256)


def _hmac_sha512() -> Callable[[], object]:
    key, data = os.urandom(64), os.urandom(64)

    def op() -> bytes:
        mac = crypto_hmac.HMAC(key, hashes.SHA512())
        mac.update(data)
        return mac.finalize()

    return op


def _hkdf_sha256() -> Callable[[], object]:
    ikm, salt = os.urandom(64), os.urandom(32)
    return lambda: HKDF(hashes.SHA256(), 32, salt=salt, info=b"pairkit/1 bench").derive(ikm)


def _noise_hkdf_rfc5869() -> Callable[[], object]:
    # Noise rev 34 §4.3 HKDF(ck, ikm, 2) as RFC 5869 HKDF (salt ck, empty info, 64 bytes out),
    # one cryptography call: what pairing/noise.py does.
    ck, ikm, algorithm = os.urandom(32), os.urandom(32), hashes.SHA256()
    return lambda: HKDF(algorithm, 64, ck, None).derive(ikm)


def _noise_hkdf_hmac() -> Callable[[], object]:
    # The same three HMACs as §4.3 writes them, each a one-shot hmac.digest.
    ck, ikm, sha256 = os.urandom(32), os.urandom(32), hashlib.sha256

    def op() -> tuple[bytes, bytes]:
        temp = hmac.digest(ck, ikm, sha256)
        out1 = hmac.digest(temp, b"\x01", sha256)
        return out1, hmac.digest(temp, out1 + b"\x02", sha256)

    return op


def _aead() -> Callable[[], object]:
    key, nonce, plaintext, ad = os.urandom(32), bytes(12), os.urandom(128), os.urandom(32)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)
    # One seal and one open, each with its key set-up (Noise sets a key per MixKey).
    return lambda: (
        ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad),
        ChaCha20Poly1305(key).decrypt(nonce, sealed, ad),
    )


def _hpke_seal() -> Callable[[], object]:
    public = X25519PrivateKey.generate().public_key()
    secret, info = os.urandom(32), b"pairkit/1 compare" + os.urandom(32)
    return lambda: HPKE_SUITE.encrypt(secret, public, info=info)


def _hpke_open() -> Callable[[], object]:
    private = X25519PrivateKey.generate()
    info = b"pairkit/1 compare" + os.urandom(32)
    sealed = HPKE_SUITE.encrypt(os.urandom(32), private.public_key(), info=info)
    return lambda: HPKE_SUITE.decrypt(sealed, private, info=info)


PRIMITIVES: tuple[Primitive, ...] = (
    Primitive(
        "x25519_base",
        "X25519 fixed-base scalar mult: a key pair from 32 random bytes",
        _x25519_base,
        1,
        (("x25519.from_private_bytes", ""), ("x25519.generate_key", "")),
    ),
    Primitive(
        "x25519_dh",
        "X25519 variable-base scalar mult: DH with a loaded key (or a CPace share)",
        _x25519_dh,
        1,
        (("'exchange'", "X25519PrivateKey"),),
    ),
    Primitive(
        "x25519_load",
        "an X25519 public key loaded from its 32 bytes (cryptography), once per peer key used",
        _x25519_load,
        1,
        (("x25519.from_public_bytes", ""),),
    ),
    Primitive(
        "fe_map",
        "one Elligator 2 map's field work: pow(u, -1, P) and a Legendre symbol (Python pow)",
        _fe_map,
        1,
        (("builtins.pow", ""),),
        2,
    ),
    Primitive("sha256", "SHA-256 of 96 bytes (hashlib)", _sha256, 1, (("openssl_sha256", ""),)),
    Primitive("sha512", "SHA-512 of 192 bytes (hashlib)", _sha512, 1, (("openssl_sha512", ""),)),
    Primitive(
        "hmac_sha256",
        "HMAC-SHA256 of 64 bytes (hmac: compare's commitment and code, resume's verifier)",
        _hmac_sha256,
        1,
        (("_hashlib.hmac_digest", ""), ("_hashlib.hmac_new", "")),
    ),
    Primitive(
        "hmac_sha512",
        "HMAC-SHA512 of 64 bytes (cryptography; CPace key confirmation)",
        _hmac_sha512,
        1,
        (("'finalize'", "hmac.HMAC"),),
    ),
    Primitive(
        "hkdf_sha256",
        "HKDF-SHA256 extract+expand, 32 bytes out (cryptography, RFC 5869)",
        _hkdf_sha256,
        1,
        (("'derive'", "HKDF"),),
        caller="!pairing/noise.py",
    ),
    Primitive(
        "noise_hkdf",
        "Noise's HKDF, 2 outputs (MixKey, Split; also counts MixKeyAndHash): the faster of "
        "cryptography's HKDF-SHA256 and 3 hmac.digest",
        _noise_hkdf_rfc5869,
        1,
        (("'derive'", "HKDF"),),
        alternatives=(_noise_hkdf_hmac,),
        caller="pairing/noise.py",
    ),
    Primitive(
        "aead",
        "ChaCha20-Poly1305 seal or open of 128 bytes, key set-up included",
        _aead,
        2,
        (("'encrypt'", "ChaCha20Poly1305"), ("'decrypt'", "ChaCha20Poly1305")),
    ),
    Primitive(
        "hpke_seal",
        "HPKE base-mode seal, X25519/HKDF-SHA256/ChaCha20-Poly1305 (RFC 9180)",
        _hpke_seal,
        1,
        (("'encrypt'", "hpke.Suite"),),
    ),
    Primitive(
        "hpke_open",
        "HPKE base-mode open, same suite",
        _hpke_open,
        1,
        (("'decrypt'", "hpke.Suite"),),
    ),
)
PRIMITIVE_NAMES = tuple(p.name for p in PRIMITIVES)


#: probe runs at a block's start and again at its end (the probes: bench/common.py)
PROBE_RUNS = 3


#: the clock every figure is read from: wall time (``perf_counter``), or with ``--clock cpu``
#: this thread's CPU time, which leaves out the time other jobs on a shared machine take the
#: core (every exchange, the loopback ones included, runs on this one thread)
_CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}
_clock: list[Callable[[], int]] = [time.perf_counter_ns]


def _now_ns() -> int:
    return _clock[0]()


def _batch_ns(fn: Callable[[], object], number: int) -> int:
    loop = itertools.repeat(None, number)
    start = _now_ns()
    for _ in loop:
        fn()
    return _now_ns() - start


class PrimitiveTimer:
    """Times one primitive in batches sized to about ``batch_target_s`` seconds each."""

    def __init__(self, prim: Primitive, batch_target_s: float) -> None:
        self.prim = prim
        self._fn = prim.make()
        self._empty: Callable[[], object] = lambda: None
        #: which implementation is timed: 0 for ``make``, i for ``alternatives[i - 1]``
        self.chosen = 0
        if prim.alternatives:
            # The fastest way here: a few interleaved batches of each, the lowest median wins.
            candidates = [self._fn, *(make() for make in prim.alternatives)]
            spent: list[list[int]] = [[] for _ in candidates]
            for _ in range(5):
                for i, fn in enumerate(candidates):
                    spent[i].append(_batch_ns(fn, 200))
            best = min(range(len(candidates)), key=lambda i: statistics.median(spent[i]))
            self._fn = candidates[best]
            self.chosen = best
        number = 1
        while _batch_ns(self._fn, number) < batch_target_s * 1e8 and number < 1 << 20:
            number *= 2
        spent = max(1, _batch_ns(self._fn, number * 10))
        self.number = max(1, int(number * 10 * batch_target_s * 1e9 / spent))

    def sample(self) -> float:
        """One batch: microseconds per operation, less the cost of an empty call."""
        spent = _batch_ns(self._fn, self.number) - _batch_ns(self._empty, self.number)
        return max(spent, 0) / self.number / self.prim.ops_per_call / 1000


def floor_us(counts: Counter[str], per_op: dict[str, float]) -> float:
    """The floor: sum over primitives of count x per-operation time."""
    return sum(n * per_op[name] for name, n in counts.items())


# --------------------------------------------------------------------------------------------
# Counts derived from the specifications
# --------------------------------------------------------------------------------------------


def noise_counts(protocol_name: str) -> Counter[str]:
    """The primitive operations of one complete handshake, both parties (Noise rev 34 §5).

    Per party: InitializeSymmetric hashes the name only if it is longer than HASHLEN (§5.2);
    MixHash(prologue) and one MixHash per pre-message key (§5.3); per message token: ``e`` is a
    MixHash (and with a PSK also a MixKey, §9.2), ``s`` an EncryptAndHash, a DH token a DH and a
    MixKey, ``psk`` a MixKeyAndHash; each payload an EncryptAndHash; Split() at the end.
    MixKey, MixKeyAndHash and Split are each one §4.3 HKDF (``noise_hkdf``: §4.3's HKDF is
    RFC 5869's with the chaining key as salt and an empty info, so one HKDF call computes it;
    timed at 2 outputs, so a MixKeyAndHash's third output is not counted); EncryptAndHash is
    one AEAD operation once a key is set (§5.1) and one MixHash.  Both parties process every
    message (one writes, one reads), so the per-party counts double; each party generates the
    ephemeral keys it sends, once.
    """
    proto = parse_protocol_name(protocol_name)
    if (proto.dh, proto.cipher, proto.hash) != ("25519", "ChaChaPoly", "SHA256"):
        raise ValueError("the bench counts only 25519/ChaChaPoly/SHA256 protocols")
    pattern = proto.pattern
    party: Counter[str] = Counter()
    if len(proto.name) > proto.hashlen:
        party["sha256"] += 1
    party["sha256"] += 1  # MixHash(prologue)
    for token in pattern.initiator_premessage + pattern.responder_premessage:
        party["sha256"] += 1
        if token == "e" and pattern.has_psk:
            party["noise_hkdf"] += 1
    has_key = False
    ephemerals = 0
    for tokens in pattern.messages:
        for token in tokens:
            if token == "e":
                ephemerals += 1
                party["sha256"] += 1
                if pattern.has_psk:
                    party["noise_hkdf"] += 1
                    has_key = True
            elif token == "s":
                party["sha256"] += 1
                party["aead"] += int(has_key)
            elif token == "psk":
                party["noise_hkdf"] += 1
                party["sha256"] += 1
                has_key = True
            else:  # ee, es, se, ss
                party["x25519_dh"] += 1
                party["noise_hkdf"] += 1
                has_key = True
        party["sha256"] += 1  # the payload's EncryptAndHash
        party["aead"] += int(has_key)
    party["noise_hkdf"] += 1  # Split()
    total = Counter({name: 2 * n for name, n in party.items()})
    # Each party loads each peer key its DH tokens use once (§5.3: ``ee`` the peer's e; ``es``
    # the initiator's rs, the responder's re; ``se`` the other way; ``ss`` rs).
    for initiator in (True, False):
        remote = {"ee": "re", "ss": "rs",
                  "es": "rs" if initiator else "re", "se": "re" if initiator else "rs"}
        total["x25519_load"] += len({remote[t] for tokens in pattern.messages
                                     for t in tokens if t in remote})
    total["x25519_base"] += ephemerals
    return +total


def cpace_counts(*, confirmation: bool) -> Counter[str]:
    """CPACE-X25519-SHA512, both parties (draft-irtf-cfrg-cpace-21).

    Per party: calculate_generator is one SHA-512 and one Elligator 2 map, i.e. one field
    inversion and one Legendre symbol (§8.2, RFC 9380 §6.7.1: ``fe_map``); Y = X25519(y, g)
    and K = X25519(y, Y_peer) are two variable-base scalar multiplications (§7.2, §8.2); ISK
    is one SHA-512 (§7.2).  With key confirmation (§10.4) each party derives mac_key once
    (SHA-512) and computes two HMAC-SHA512 tags, its own and the one it checks.
    """
    counts = Counter(sha512=4, fe_map=2, x25519_dh=4, x25519_load=4)  # each DH its own point
    if confirmation:
        counts.update(sha512=2, hmac_sha512=4)
    return counts


def _full_pairing_counts() -> Counter[str]:
    """What every full (non-resume) pairing adds, both sides (docs/protocol.md §3).

    Each side checks the peer's device id (the SHA-256 of its static key) and derives the
    session fingerprint (HKDF).  ``th`` (one HKDF per side) is counted only by the methods that
    bind it (:data:`_TH_METHODS`; qr and kk bind the announcements through ``hello_hash``).  The
    prekeys each side hands out for later resumes are *not* counted: they are not on the
    critical path of the exchange (the runtime's pool, ``pairkit.prekeys``, makes them ahead of
    need in idle time; issue 13, "The floor, honestly"), so the bench hands both machines
    prekeys made before the timing starts, and prints what making them costs (``prekeys``).
    """
    return Counter(sha256=2, hkdf_sha256=2)


#: the methods that bind ``th`` (docs/protocol.md §3): one HKDF per side
_TH_METHODS = frozenset({"pin", "compare", "clear"})
_TH = Counter(hkdf_sha256=2)


def method_counts(method: str) -> Counter[str]:
    """The primitive operations of one complete pairing, guest and host together.

    From the module docstring of pairing/methods.py: pin = CPace (no separate confirmation)
    feeding Noise XXpsk0; qr = Noise IKpsk2 with a PSK from the code (HKDF per side), the code id
    (SHA-256) and each announcement's hash bound in (4 HKDF); compare = the guest's ephemeral
    key, one HPKE seal and open, the commitment (2 HMAC), the code (2 HMAC), the identity PSK
    (1 HKDF per side) and the identity handshake (Noise XXpsk0, which proves both static keys);
    clear = the identity PSK and the identity handshake only; resume = one ephemeral for the
    guest and a fresh key for the host (2 key pairs; the host's prekey is one it holds and its
    replacement prekey is made ahead of need, like every prekey), 3 SHA-256 key ids (the guest's
    made and checked, the host's checked), four DH on each side, th, SK, keys and fingerprint
    (one HKDF each per side), the host's verifier (2 HMAC) and the sealed new prekey digest
    (2 AEAD); kk = Noise IK (the guest's static key sent encrypted, session 22) with the
    announcements' hashes bound in, and the host's SHA-256 of the key it decrypted (the device
    id it finds the guest by); kk-stale = a refused resume (one ephemeral, its key id made and
    checked) and then kk.
    """
    full = _full_pairing_counts()
    if method in _TH_METHODS:
        full += _TH
    if method == "pin":
        return full + cpace_counts(confirmation=False) + noise_counts(PIN_NOISE)
    if method == "qr":
        return full + noise_counts(QR_NOISE) + Counter(hkdf_sha256=6, sha256=1)
    if method == "compare":
        return full + noise_counts(PIN_NOISE) + Counter(
            x25519_base=1, hpke_seal=1, hpke_open=1, hmac_sha256=4, hkdf_sha256=2
        )
    if method == "clear":
        return full + noise_counts(PIN_NOISE) + Counter(hkdf_sha256=2)
    if method == "resume":
        # Peer keys (docs/protocol.md §8): the guest uses the host's prekey, static key and
        # fresh key (3), the host the guest's ephemeral and static key (2).
        return Counter(x25519_base=2, x25519_dh=8, x25519_load=5, sha256=3, hkdf_sha256=8,
                       hmac_sha256=2, aead=2)
    if method == "kk":
        return full + noise_counts(KK_NOISE) + Counter(hkdf_sha256=4, sha256=1)
    if method == "kk-stale":
        return method_counts("kk") + Counter(x25519_base=1, sha256=2)
    raise ValueError(f"unknown method {method!r}")


def observed_counts(run: Callable[[cProfile.Profile], object]) -> Counter[str]:
    """The primitive calls made while ``run(profile)`` has the profiler enabled (cProfile).

    ``run`` enables and disables the profile itself around the part that is timed, so set-up
    (a fresh PIN, a QR code) is not counted.  Only built-ins are looked at: every primitive is
    a call into ``cryptography``'s Rust, ``_hashlib`` or ``pow``.
    """
    profile = cProfile.Profile()
    run(profile)
    calls: Counter[str] = Counter()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, ncalls, _tt, _ct, callers) in stats.items():
        if filename != "~":
            continue
        for prim in PRIMITIVES:
            if not any(a in name and b in name for a, b in prim.profile):
                continue
            if not prim.caller:
                calls[prim.name] += ncalls
                continue
            wanted = prim.caller.lstrip("!")
            inside = not prim.caller.startswith("!")
            calls[prim.name] += sum(
                counts[1] for (caller_file, _, _), counts in callers.items()
                if (wanted in caller_file) == inside
            )
    by_name = {p.name: p for p in PRIMITIVES}
    return Counter({name: n // by_name[name].calls_per_op for name, n in calls.items()})


# --------------------------------------------------------------------------------------------
# The handshake core
# --------------------------------------------------------------------------------------------


def _run_noise(init: HandshakeState, resp: HandshakeState) -> bytes:
    while not (init.complete and resp.complete):
        writer, reader = (init, resp) if init.my_turn else (resp, init)
        reader.read_message(writer.write_message(b""))
    i_send, _ = init.split()
    r_recv, _ = resp.split()
    if i_send.key != r_recv.key:
        raise RuntimeError("the Noise handshake did not agree on a key")
    return i_send.key or b""


def _noise_runner(protocol_name: str) -> Callable[[], object]:
    # Static keys are made once, outside the timing: a device has them before it pairs.
    init_s, _ = generate_keypair("25519")
    resp_s, _ = generate_keypair("25519")
    # The publics are looked up once too (a known peer's key is stored, not recomputed).
    pattern = parse_protocol_name(protocol_name).pattern
    keys = {True: init_s, False: resp_s}
    publics = {
        role: X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()
        for role, k in keys.items()
    }
    kwargs: dict[bool, dict[str, bytes]] = {}
    for role in (True, False):
        needed = pattern.required_keys(role)
        kwargs[role] = {"s": keys[role]} if "s" in needed else {}
        if "rs" in needed:
            kwargs[role]["rs"] = publics[not role]

    def run() -> bytes:
        return _run_noise(
            HandshakeState(protocol_name, True, **kwargs[True]),
            HandshakeState(protocol_name, False, **kwargs[False]),
        )

    return run


def _cpace_runner() -> Callable[[], object]:
    pin, ci = b"402913", b"pairkit/1 pin"

    def run() -> bytes:
        a = CPace("initiator", pin, ci=ci, ad_self=b"guest announcement")
        b = CPace("responder", pin, ci=ci, ad_self=b"host announcement")
        ya, yb = a.message(), b.message()
        b.receive(ya, a.ad_self)
        a.receive(yb, b.ad_self)
        ta, tb = a.confirmation(), b.confirmation()
        b.verify_confirmation(ta)
        a.verify_confirmation(tb)
        if a.isk != b.isk:
            raise RuntimeError("CPace did not agree on a key")
        return a.isk

    return run


def core_runners() -> dict[str, tuple[Callable[[], object], Counter[str]]]:
    runners: dict[str, tuple[Callable[[], object], Counter[str]]] = {
        name: (_noise_runner(name), noise_counts(name)) for name in NOISE_CORE
    }
    runners[CPACE_CORE] = (_cpace_runner(), cpace_counts(confirmation=True))
    return runners


# --------------------------------------------------------------------------------------------
# The pairing methods
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """What one pairing needs that is prepared outside the timing."""

    name: str
    guest_kwargs: dict[str, Any]
    encrypted: bool


class MethodBench:
    """A guest and a host that pair again and again, keeping their known-peer records fresh."""

    def __init__(self) -> None:
        self.config = PairingConfig()
        self.guest_id = LocalIdentity.generate("George")
        self.host_id = LocalIdentity.generate("Paul")
        self.host_state = HostState(
            known_peer=lambda _id: self.host_known,
            peer_by_prekey=lambda d: prekey_holder([self.host_known] if self.host_known else [], d),
        )
        self.guest_known: KnownPeer | None = None
        self.host_known: KnownPeer | None = None
        # Prekeys made outside the timing (issue 13: off the critical path), refilled per run.
        self.guest_prekeys = PrekeyPool(self.config.prekeys, background=False)
        self.host_prekeys = PrekeyPool(self.config.prekeys, background=False)
        # A first pairing (untimed) so that resume and kk have a known peer on both sides.
        run = self.prepare("pin")
        guest, host = self.make(run, 0.0)
        guest.start(0.0)
        result = shuttle(guest, host)
        if result.guest_error or result.host_error:
            raise RuntimeError(
                f"the first pairing failed: {result.guest_error or result.host_error}"
            )
        self.finish(run, guest, host)

    def prepare(self, name: str) -> _Run:
        """Per-run inputs a user or a store supplies (a fresh PIN or QR code, the known peer),
        and each side's prekeys, made ahead of need as the runtime's pool does in idle time."""
        self.guest_prekeys.fill()
        self.host_prekeys.fill()
        if name == "pin":
            return _Run(name, {"method": Method.PIN, "pin": self.host_state.new_pin()}, False)
        if name == "qr":
            code = self.host_state.issue_qr(self.host_id.static_public, 1000, ttl=60, hint="")
            return _Run(name, {"method": Method.QR, "qr": code}, False)
        if name == "compare":
            return _Run(name, {"method": Method.COMPARE}, False)
        if name == "clear":
            return _Run(name, {"method": Method.CLEAR}, True)
        assert self.guest_known is not None
        if name == "resume":
            peer = self.guest_known
        elif name == "kk":  # no prekey left: the guest goes straight to kk (Noise IK)
            peer = dataclasses.replace(self.guest_known, their_prekeys=())
        elif name == "kk-stale":  # the host no longer holds the nominated prekey
            peer = dataclasses.replace(self.guest_known, their_prekeys=(os.urandom(16),))
        else:
            raise ValueError(f"unknown method {name!r}")
        return _Run(name, {"method": Method.RESUME, "peer": peer}, False)

    def make(self, run: _Run, now: float) -> tuple[GuestPairing, HostPairing]:
        host = HostPairing(
            self.config,
            self.host_id,
            self.host_state,
            link_encrypted=run.encrypted,
            wall_now=1000,
            prekeys=self.host_prekeys.take,
        )
        host.start(now)
        guest = GuestPairing(
            self.config,
            self.guest_id,
            link_encrypted=run.encrypted,
            wall_now=1000,
            prekeys=self.guest_prekeys.take,
            **run.guest_kwargs,
        )
        return guest, host

    def finish(self, run: _Run, guest: GuestPairing, host: HostPairing) -> None:
        """Check that both sides agree, and store the updated peer records (new prekeys)."""
        gs, hs = guest.session, host.session
        if not (guest.done and host.done and gs is not None and hs is not None):
            raise RuntimeError(
                f"{run.name}: the pairing did not complete "
                f"(guest: {guest.error}, host: {host.error})"
            )
        if gs.send_key != hs.recv_key or gs.fingerprint != hs.fingerprint:
            raise RuntimeError(f"{run.name}: the two sides did not agree on a session")
        # A resume that silently fell back to kk (prekeys out of step) would time the wrong thing.
        expected = {"resume": Method.RESUME, "kk": Method.KK, "kk-stale": Method.KK}.get(
            run.name, run.guest_kwargs["method"]
        )
        if gs.method is not expected or hs.method is not expected:
            raise RuntimeError(f"{run.name}: the pairing ran as {gs.method.label}, not as planned")
        old_guest = run.guest_kwargs.get("peer", self.guest_known)
        self.guest_known = gs.updated_peer(old_guest)
        self.host_known = hs.updated_peer(self.host_known)

    # -- sans-I/O --------------------------------------------------------------------------

    def sansio_once(
        self, name: str, profile: cProfile.Profile | None = None
    ) -> tuple[int, int, int]:
        """One pairing shuttled in memory; (ns, flights, bytes)."""
        run = self.prepare(name)
        if profile is not None:
            profile.enable()
        start = _now_ns()
        guest, host = self.make(run, 0.0)
        guest.start(0.0)
        result = shuttle(guest, host, answers={"guest": True, "host": True})
        spent = _now_ns() - start
        if profile is not None:
            profile.disable()
        if result.guest_error or result.host_error:
            raise RuntimeError(f"{name}: {result.guest_error or result.host_error}")
        self.finish(run, guest, host)
        return spent, len(result.flights), result.bytes_total

    # -- over the loopback link with the asyncio driver ----------------------------------

    async def loopback_once(self, name: str, mtu: int, tap: Any = None) -> int:
        """One pairing over a loopback link pair, both sides driven concurrently; ns."""
        run = self.prepare(name)
        pair = loopback_pair(mtu=mtu, encrypted=run.encrypted, tap=tap)
        loop = asyncio.get_running_loop()
        start = _now_ns()
        now = loop.time()
        guest, host = self.make(run, now)
        guest.start(now)
        await asyncio.gather(
            drive(guest, pair.a, delegate=_YES), drive(host, pair.b, delegate=_YES)
        )
        spent = _now_ns() - start
        await pair.aclose()
        self.finish(run, guest, host)
        return spent

    async def link_traffic(self, name: str, mtu: int) -> tuple[int, int]:
        """(link packets, link bytes) of one pairing over loopback, framing included."""
        packets: list[int] = []

        def tap(_src: str, _dst: str, data: bytes) -> bytes:
            packets.append(len(data))
            return data

        await self.loopback_once(name, mtu, tap)
        return len(packets), sum(packets)


_YES = Yes()


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to measure.

    ``repeat`` timed runs of every exchange (in blocks, see :func:`_measure_blocks`), each
    series after ``warmup`` untimed runs; primitive batches last about ``batch_target_s``;
    ``mtu`` is the loopback link's.
    """

    repeat: int
    warmup: int
    batch_target_s: float
    mtu: int


def _profiled(fn: Callable[[], object], profile: cProfile.Profile) -> None:
    profile.enable()
    try:
        fn()
    finally:
        profile.disable()


def _block_sizes(repeat: int) -> list[int]:
    """Split ``repeat`` runs into up to 10 blocks of at least 20 runs (one block if fewer)."""
    blocks = max(1, min(10, repeat // 20))
    return [repeat // blocks + (i < repeat % blocks) for i in range(blocks)]


def _empty_block(
    timers: list[PrimitiveTimer], cores: Iterable[str]
) -> dict[str, dict[str, list[float]]]:
    return {
        "primitives": {t.prim.name: [] for t in timers},
        "probe": {name: [] for name in PROBES},
        "core": {name: [] for name in cores},
        "sansio": {name: [] for name in METHODS},
        "loopback": {name: [] for name in METHODS},
    }


async def _measure_blocks(
    settings: Settings,
    timers: list[PrimitiveTimer],
    cores: dict[str, Callable[[], object]],
    bench: MethodBench,
) -> list[dict[str, dict[str, list[float]]]]:
    """All samples, in microseconds, taken in blocks; one dict of series per block.

    Within a block every item (a primitive, a core exchange, a method each way) runs back to
    back, after ``warmup`` untimed runs: repeated runs of the same code are faster than a run
    that follows other work (warm caches and branch predictors), and the primitives are timed
    back to back too, so both sides of a ratio are measured alike.  The blocks follow one
    another, so a machine that gets busier or quieter midway moves exchanges and floors alike.
    The garbage collector runs between series, never inside one.
    """
    blocks: list[dict[str, dict[str, list[float]]]] = []
    out = _empty_block(timers, cores)

    def series(kind: str, name: str, run: Callable[[], float], size: int) -> None:
        gc.collect()
        gc.disable()
        try:
            for _ in range(settings.warmup):
                run()
            out[kind][name].extend(run() for _ in range(size))
        finally:
            gc.enable()

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            start = _now_ns()
            fn()
            return (_now_ns() - start) / 1000

        return run

    probes = {name: timed(make()) for name, make in PROBES.items()}
    for size in _block_sizes(settings.repeat):
        out = _empty_block(timers, cores)
        blocks.append(out)
        for name, probe in probes.items():
            series("probe", name, probe, PROBE_RUNS)
        for timer in timers:
            series("primitives", timer.prim.name, timer.sample, min(size, PRIMITIVE_BATCHES))
        for name, run in cores.items():
            series("core", name, timed(run), size)
        for name in METHODS:
            series("sansio", name, lambda name=name: bench.sansio_once(name)[0] / 1000, size)
            # The loopback runs need the event loop, so their series is written out here.
            gc.collect()
            gc.disable()
            try:
                for _ in range(settings.warmup):
                    await bench.loopback_once(name, settings.mtu)
                for _ in range(size):
                    spent = await bench.loopback_once(name, settings.mtu)
                    out["loopback"][name].append(spent / 1000)
            finally:
                gc.enable()
        for name, probe in probes.items():
            series("probe", name, probe, PROBE_RUNS)
    return blocks


def _pooled(blocks: list[dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """Every block's samples of each series, one list per series."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for block in blocks:
        for kind, series in block.items():
            for name, values in series.items():
                pooled.setdefault(kind, {}).setdefault(name, []).extend(values)
    return pooled


def _counts_dict(counts: Counter[str]) -> dict[str, int]:
    return {name: counts[name] for name in PRIMITIVE_NAMES if counts[name]}


def machine_info() -> dict[str, Any]:
    return {
        "nproc": nproc(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "platform": platform.platform(),
    }


def measure(settings: Settings) -> dict[str, Any]:
    """Run everything; return the JSON-able result."""
    started = time.perf_counter()
    timers = [PrimitiveTimer(p, settings.batch_target_s) for p in PRIMITIVES]
    cores = core_runners()
    bench = MethodBench()

    # Traffic and calls come from single untimed runs (a tap or a profiler would skew timing).
    core_rows: list[dict[str, Any]] = [
        {
            "name": name,
            "counts": _counts_dict(counts),
            "calls": _counts_dict(observed_counts(partial(_profiled, runner))),
        }
        for name, (runner, counts) in cores.items()
    ]
    method_rows: list[dict[str, Any]] = []
    for name in METHODS:
        _, flights, msg_bytes = bench.sansio_once(name)
        packets, link_bytes = asyncio.run(bench.link_traffic(name, settings.mtu))
        calls = observed_counts(lambda profile, name=name: bench.sansio_once(name, profile))
        method_rows.append(
            {
                "method": name,
                "flights": flights,
                "message_bytes": msg_bytes,
                "link_packets": packets,
                "link_bytes": link_bytes,
                "counts": _counts_dict(method_counts(name)),
                "calls": _counts_dict(calls),
            }
        )

    runs = {name: runner for name, (runner, _) in cores.items()}
    blocks = asyncio.run(_measure_blocks(settings, timers, runs, bench))
    samples = _pooled(blocks)
    per_op = {name: statistics.median(v) for name, v in samples["primitives"].items()}
    block_per_op = [
        {name: statistics.median(v) for name, v in b["primitives"].items()} for b in blocks
    ]

    for row in core_rows:
        row.update(summary_us(samples["core"][row["name"]]))
        row["floor_us"] = floor_us(Counter(row["counts"]), per_op)
        row["calls_floor_us"] = floor_us(Counter(row["calls"]), per_op)
        row["ratio"] = row["median_us"] / row["floor_us"]
    for row in method_rows:
        row["sansio"] = summary_us(samples["sansio"][row["method"]])
        row["loopback"] = summary_us(samples["loopback"][row["method"]])
        row["floor_us"] = floor_us(Counter(row["counts"]), per_op)
        row["calls_floor_us"] = floor_us(Counter(row["calls"]), per_op)
        row["ratio_sansio"] = row["sansio"]["median_us"] / row["floor_us"]
        row["ratio_loopback"] = row["loopback"]["median_us"] / row["floor_us"]
        row["loopback_over_sansio"] = row["loopback"]["median_us"] / row["sansio"]["median_us"]

    prekey_us = per_op["x25519_base"] + per_op["sha256"]
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        # Off the critical path, in neither the exchange's floor nor (once made ahead) its time.
        "prekeys": {"per_full_pairing": 2 * bench.config.prekeys, "us_each": prekey_us,
                    "us_per_full_pairing": 2 * bench.config.prekeys * prekey_us},
        "goals": [
            report(f"{r['method']} loopback/floor", r["ratio_loopback"], LOOPBACK_GOAL)
            for r in method_rows
        ],
        "blocks": [
            {
                "runs": len(b["loopback"][METHODS[0]]),
                "per_op_us": bpo,
                "probe_us": {name: statistics.median(v) for name, v in b["probe"].items()},
                # the start's runs and the end's apart: a block whose machine changed midway
                # prices its later methods' runs at primitives timed in another state
                "probe_start_us": {
                    name: statistics.median(v[:PROBE_RUNS]) for name, v in b["probe"].items()
                },
                "probe_end_us": {
                    name: statistics.median(v[PROBE_RUNS:]) for name, v in b["probe"].items()
                },
            }
            for b, bpo in zip(blocks, block_per_op, strict=True)
        ],
        "primitives": {
            t.prim.name: {
                "what": t.prim.what, "implementation": t.chosen,
                **summary_us(samples["primitives"][t.prim.name]),
            }
            for t in timers
        },
        "core": core_rows,
        "methods": method_rows,
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt_counts(counts: dict[str, int], calls: dict[str, int]) -> str:
    parts = []
    for name in PRIMITIVE_NAMES:
        n, c = counts.get(name, 0), calls.get(name, 0)
        if not n and not c:
            continue
        parts.append(f"{name} {n}" + (f" [{c}]" if c != n else ""))
    return ", ".join(parts)


def _table(
    header: list[str], rows: Iterable[list[str]], left: frozenset[int] = frozenset({0})
) -> list[str]:
    """Columns padded to their widest cell: text columns (``left``) flush left, numbers right."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = []
    for r in table:
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _machine_lines(blocks: list[dict[str, Any]]) -> list[str]:
    """The machine's state per block (information: no figure or goal depends on it)."""
    speed = [b["probe_us"]["python"] / b["probe_us"]["c"] for b in blocks]
    python = [b["probe_us"]["python"] for b in blocks]
    lines = [
        "the machine per block (fixed work at each block's start and end, in no floor): "
        f"python probe {statistics.median(python):.0f} us [{min(python):.0f}-{max(python):.0f}], "
        f"python/c {statistics.median(speed):.2f} [{min(speed):.2f}-{max(speed):.2f}]"
    ]
    calls = [b["probe_us"]["syscall"] for b in blocks if "syscall" in b["probe_us"]]
    if calls:
        lines[0] += f", 1,000 system calls {statistics.median(calls):.0f} us"
    if "probe_start_us" in blocks[0]:
        drift = [b["probe_end_us"]["python"] / b["probe_start_us"]["python"] for b in blocks]
        lines.append(
            "  python probe, block's end over its start: "
            + ", ".join(f"{d:.2f}" for d in drift)
        )
    return lines


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"pairkit handshake bench, {result['date']}: nproc {m['nproc']}, {m['cpu']}, "
        f"Python {m['python']}, cryptography {m['cryptography']} ({m['openssl']})",
        f"each figure ({result.get('clock', 'wall')} time): median of {s['repeat']} runs in "
        "blocks, each series after "
        f"{s['warmup']} warm-up runs; "
        f"ratio = median / floor (the spec's primitive count x per-op time, same run)",
        "",
        "Primitives (us per operation; median and quartiles over the batches)",
    ]
    lines += _table(
        ["primitive", "us/op", "q1", "q3", "what"],
        (
            [name, f"{p['median_us']:.2f}", f"{p['q1_us']:.2f}", f"{p['q3_us']:.2f}", p["what"]]
            for name, p in result["primitives"].items()
        ),
        left=frozenset({0, 4}),
    )
    lines += ["", "1. Handshake core: one complete exchange, both parties, one process"]
    lines += _table(
        ["exchange", "median us", "floor us", "ratio", "calls-floor us"],
        (
            [
                r["name"],
                f"{r['median_us']:.1f}",
                f"{r['floor_us']:.1f}",
                f"{r['ratio']:.2f}",
                f"{r['calls_floor_us']:.1f}",
            ]
            for r in result["core"]
        ),
    )
    lines += ["counts per exchange, both parties, from the spec [the code's calls if different]:"]
    lines += [f"  {r['name']}: {_fmt_counts(r['counts'], r['calls'])}" for r in result["core"]]
    lines += [
        "",
        "2. Pairing methods: complete pairing, guest + host in one process "
        f"(loopback MTU {s['mtu']})",
    ]
    lines += _table(
        [
            "method",
            "flights",
            "msg B",
            "link pkts",
            "link B",
            "sans-I/O us",
            "loopback us",
            "floor us",
            "sansio/floor",
            "loop/floor",
            "loop/sansio",
        ],
        (
            [
                r["method"],
                str(r["flights"]),
                str(r["message_bytes"]),
                str(r["link_packets"]),
                str(r["link_bytes"]),
                f"{r['sansio']['median_us']:.1f}",
                f"{r['loopback']['median_us']:.1f}",
                f"{r['floor_us']:.1f}",
                f"{r['ratio_sansio']:.2f}",
                f"{r['ratio_loopback']:.2f}",
                f"{r['loopback_over_sansio']:.2f}",
            ]
            for r in result["methods"]
        ),
    )
    lines += _machine_lines(result["blocks"])
    lines += ["counts per pairing, both sides, from the spec [the code's calls if different]:"]
    lines += [f"  {r['method']}: {_fmt_counts(r['counts'], r['calls'])}" for r in result["methods"]]
    lines += [
        "calls-floor (the code's calls x per-op time) per method, us: "
        + ", ".join(f"{r['method']} {r['calls_floor_us']:.0f}" for r in result["methods"]),
        f"prekeys (not on the critical path, not in any floor): "
        f"{result['prekeys']['per_full_pairing']} per full pairing, both sides, "
        f"{result['prekeys']['us_each']:.1f} us each (x25519_base + sha256): "
        f"{result['prekeys']['us_per_full_pairing']:.0f} us",
        "",
        *render_goals(result["goals"]),
        f"total time {result['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time pairkit's handshakes against the summed cost of their primitives.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--quick", action="store_true", help="a few runs of everything (the smoke test)"
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        default=None,
        help=f"timed runs per exchange (default {DEFAULT_REPEAT}, {QUICK_REPEAT} with --quick)",
    )
    parser.add_argument(
        "--mtu", type=int, default=DEFAULT_MTU, help=f"loopback link MTU (default {DEFAULT_MTU})"
    )
    parser.add_argument(
        "--clock", choices=sorted(_CLOCKS), default="wall",
        help="wall time (default) or this thread's CPU time (steadier on a shared machine)",
    )
    args = parser.parse_args(argv)
    if not 20 <= args.mtu <= 65535:
        parser.error("--mtu must be from 20 to 65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        settings = Settings(
            repeat=args.repeat or QUICK_REPEAT,
            warmup=1,
            batch_target_s=0.0002,
            mtu=args.mtu,
        )
    else:
        settings = Settings(
            repeat=args.repeat or DEFAULT_REPEAT,
            warmup=3,
            batch_target_s=0.002,
            mtu=args.mtu,
        )
    _clock[0] = _CLOCKS[args.clock]
    result = measure(settings)
    result["clock"] = args.clock
    result["command"] = command_line("handshake.py", argv)
    show(result, render, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
