"""Attack review atk19f: an on-path attacker between ``pairkit get`` and ``pairkit host
--share`` (a TCP proxy, tests/attack_harness.py) flips, drops or replays records of a file
transfer.  Nothing it does may leave a file that looks complete and is not the host's: the
fetched file is the host's byte for byte or is not there, and a partial file kept for a
resume holds only a prefix of the host's file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.attack_harness import Proxy, address_of, flip_last_bit
from tests.cli_helpers import SHARE_HOST_ARGS, SHARE_PIN, Lab, assert_no_traceback

PIN, HOST_ARGS = SHARE_PIN, SHARE_HOST_ARGS
BIG = 4000  #: a frame this long from the host carries a chunk of the file


class Tamper:
    """Acts once, on the ``nth`` chunk frame from the host: ``flip`` a bit, ``drop`` it, or
    ``replay`` the chunk frame before it in its place."""

    def __init__(self, how: str, nth: int = 2) -> None:
        self.how, self.nth = how, nth
        self.seen: list[bytes] = []
        self.done = False

    def __call__(self, direction: str, index: int, piece: bytes) -> bytes | None:
        if self.done or direction != "h2g" or len(piece) < BIG:
            return piece
        self.seen.append(piece)
        if len(self.seen) < self.nth:
            return piece
        self.done = True
        if self.how == "flip":
            return flip_last_bit(piece)
        if self.how == "drop":
            return None
        return self.seen[-2]  # replay


@pytest.mark.parametrize("how", ["flip", "drop", "replay"])
async def test_a_tampered_transfer_never_leaves_a_wrong_file(
    lab: Lab, tmp_path: Path, how: str
) -> None:
    """Each is seen by the secure channel (a record that fails authentication, a sequence
    number out of turn): the command stops, keeps the chunks verified before it in
    NAME.part, and prints the command that resumes."""
    share = tmp_path / "share"
    share.mkdir()
    data = os.urandom(200_000)
    (share / "big.bin").write_bytes(data)
    paul, george = lab.device("paul"), lab.device("george")
    host = await lab.host(paul, *HOST_ARGS, "--share", str(share))
    tamper = Tamper(how)
    proxy = await Proxy(address_of(host), tamper).start()
    out = tmp_path / "out"
    out.mkdir()
    try:
        got = await george.run("get", proxy.target, "big.bin", "-m", "pin", "--pin", PIN,
                               "-o", str(out), "--retries", "2", "--timeout", "5")
    finally:
        await proxy.close()
    assert tamper.done, "the transfer never got to its second chunk"
    assert_no_traceback("get", got.err)
    assert_no_traceback("host", host.stderr)
    fetched, part = out / "big.bin", out / "big.bin.part"
    assert got.rc != 0, got
    assert not fetched.exists(), got
    assert got.err.splitlines()[-1].startswith("error: "), got
    kept = part.read_bytes()
    assert kept and data.startswith(kept), "the partial file holds bytes the host never sent"
    assert "resume with:" in got.err, got
    assert sorted(p.name for p in out.iterdir()) in ([], ["big.bin"], ["big.bin.part"])
