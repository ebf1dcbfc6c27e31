"""Smoke test of bench/layers.py: the layer profile runs and sorts time as documented.

No timing is asserted; what is checked is the bookkeeping a reader of bench/RESULTS.md relies
on: the timed region is the one bench/handshake.py times, every sample lands in one named layer,
and a primitive's native frames count as crypto, not as the Python that called it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_layers", ROOT / "bench" / "layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    return _load()


@pytest.mark.parametrize("sansio", [False, True])
def test_cprofile_view_names_every_layer_it_fills(layers: ModuleType, sansio: bool) -> None:
    import cProfile

    profile = cProfile.Profile()
    layers.run_pairings("clear", 2, sansio=sansio, profile=profile)
    table = layers.cprofile_layers(profile, 2)
    assert set(table) <= set(layers.LAYERS)
    for name in ("crypto (native)", "noise (py)", "wire/cbor", "machines"):
        assert table[name][0] > 0 and table[name][1] > 0, name
    # The driver and the link run only over loopback.
    assert ("driver+pipe" in table) is not sansio
    text = layers.render_cprofile("clear", "loopback", 2, table)
    assert "crypto (native)" in text and "calls/pairing" in text


def test_spy_view_counts_native_crypto_and_leaves_set_up_out(layers: ModuleType) -> None:
    run = "run (asyncio/runners.py:190);drive (runtime/driver.py:292)"
    raw = [
        # a DH: Python in noise.py, then OpenSSL below it: crypto
        f"{run};_dh (pairing/noise.py:194);exchange (_rust);X25519 (libcrypto.so.3) 7",
        # noise.py's own Python
        f"{run};SymmetricState.mix_key (pairing/noise.py:705) 3",
        # the strict decoder
        f"{run};_map (pairing/cbor.py:169) 2",
        # prekeys made before the timed region: left out
        f"{run};MethodBench.prepare (bench/handshake.py:591);x (libcrypto.so.3) 50",
        # the interpreter starting: left out
        "<module> (site.py:1) 9",
        "garbage without a count",
    ]
    samples = layers.spy_layers(raw)
    assert samples == {"crypto (native)": 7, "noise (py)": 3, "wire/cbor": 2}
    assert "12 samples" in layers.render_spy(samples)


def test_paths_map_to_layers(layers: ModuleType) -> None:
    assert layers.layer_of_path("/x/pairing/methods/pin.py") == "machines"
    assert layers.layer_of_path("/usr/lib/python3.11/asyncio/tasks.py") == "asyncio"
    assert layers.layer_of_path("/x/transports/queued.py") == "loopback link"
    assert layers.layer_of_path("/x/somewhere_else.py") == "other"
    # the code pairing/noise.py and pairing/wire.py generate, as cProfile and py-spy name it
    noise = "<pairing/noise.py: write message 0 of Noise_XXpsk0_25519_ChaChaPoly_SHA256, initiator>"
    assert layers.layer_of_path(noise) == "noise (py)"
    assert layers.layer_of_path(noise.replace("pairing/", "")) == "noise (py)"
    assert layers.layer_of_path("wire.py: decode of Identity>") == "wire/cbor"
