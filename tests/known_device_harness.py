"""Known devices asking a library host to join (attack reviews atk15 and atk15b, session 15):
Paul's and George's devices, the day Paul joined George's host, Paul's owner who trusts his
laptop's name, an ``accept()`` kept waiting while a guest runs, and a guest paired by PIN
whom a library host serves a share, on a host whose wall clock a test moves.  Shared by
tests/attacks/test_attack_join_names.py, test_attack_kk_names.py,
test_attack_known_guest_repairs.py, test_attack_expired_guest_session.py,
test_attack_held_link_bytes.py, test_attack_expiry_midtransfer.py and
test_attack_get_hash_flood.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pairkit
from pairkit.delegate import Agree
from pairkit.keystore import Argon2Params
from pairkit.pairing.cloud import Grant, Role

from .attack_harness import STEP

#: the name of a device Paul trusts, which never asks anything in these tests
PAULS_LAPTOP = "Paul's laptop"


class TrustsHisLaptop:
    """Paul at his host: makes his own laptop a member, refuses everyone else, and notes the
    names he was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def allow_join(self, q: Any) -> Grant | None:
        self.asked.append(q.name)
        return Grant(Role.MEMBER) if q.name == PAULS_LAPTOP else None

    async def confirm_code(self, q: Any) -> bool:
        return False

    async def join_cloud(self, q: Any) -> bool:
        return False

    async def allow_request(self, q: Any) -> Any:
        from pairkit.pairing.service import Scope

        return Scope.REFUSE

    async def on_warning(self, event: Any) -> None:
        return None

    async def on_event(self, event: Any) -> None:
        return None


def device(tmp_path: Path, name: str, *, cloud: bool = True) -> pairkit.Device:
    """A device as ``pairkit init`` makes it: its identity and (``cloud``) a cloud of its own."""
    made = pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )
    if cloud:
        ks = made.keystore
        ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
        ks.save()
    return made


@contextlib.asynccontextmanager
async def accepting(
    host: pairkit.Host, timeout: float = STEP
) -> AsyncIterator[asyncio.Future[Any]]:
    """``host.accept(timeout)`` waiting while the body runs a guest; the body awaits it to take
    the guest's session, and whatever it did not take is cancelled on the way out."""
    waiting = asyncio.ensure_future(host.accept(timeout=timeout))
    try:
        yield waiting
    finally:
        waiting.cancel()
        with contextlib.suppress(BaseException):
            await waiting


async def paul_joined_georges_host(paul: pairkit.Device, george: pairkit.Device) -> None:
    """Yesterday: Paul joined George's host by PIN, as a guest (George's grant to Paul).  Each
    now knows the other's key; George has no grant on Paul's device (rule 2)."""
    async with george.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                           delegate=pairkit.delegate.Agree()) as at_george, \
            accepting(at_george) as accepted:
        async with await paul.join(f"tcp:{at_george.address.removeprefix('tcp:')}",
                                   pin="246810", step_timeout=STEP):
            pass
        async with await accepted:
            pass


def address_of(host: pairkit.Host) -> tuple[str, int]:
    """A TCP library host's address, as the hand-driven guests dial it."""
    h, p = host.address.removeprefix("tcp:").rsplit(":", 1)
    return h, int(p)


class MovableWall:
    """The machine's clocks, with the wall clock moved ``ahead`` seconds on demand (a
    :class:`pairkit.Device`'s ``clock=``): a guest's grant ends, or a file looks old, without
    waiting for it."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time() + self.ahead


class Served(NamedTuple):
    """A guest's session and the host's side of it, the host serving a share to it."""

    host: pairkit.Host
    session: Any  #: the guest's session
    at_host: Any  #: the host's session with the guest
    serving: asyncio.Future[Any]  #: ``at_host.serve_files(share)``; its stats when it ends


def share_of(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A folder ``share`` under ``tmp_path`` holding ``files``."""
    share = tmp_path / "share"
    share.mkdir()
    for name, data in files.items():
        (share / name).write_bytes(data)
    return share


@contextlib.asynccontextmanager
async def guest_served_by_pin(
    host_device: pairkit.Device, guest: pairkit.Device, share: Path, *,
    guest_seconds: int = 3600,
) -> AsyncIterator[Served]:
    """``host_device``'s library host on 127.0.0.1 (PIN only; a stranger it lets in becomes a
    guest for ``guest_seconds``); ``guest`` joins by PIN and the host serves it ``share``.  On
    the way out the service is cancelled and both sessions are closed."""
    async with host_device.host("tcp:127.0.0.1:0", methods=("pin",), pin="246810",
                                delegate=Agree(guest_seconds=guest_seconds),
                                step_timeout=STEP) as host, accepting(host) as accepted:
        session = await guest.join(f"tcp:{host.address.removeprefix('tcp:')}",
                                   pin="246810", step_timeout=STEP)
        at_host = await accepted
        serving = asyncio.ensure_future(at_host.serve_files(share))
        try:
            yield Served(host, session, at_host, serving)
        finally:
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving
            await session.close()
            await at_host.close()


def count_hash_passes(monkeypatch: Any) -> list[int]:
    """Each pass the host's file service makes hashing a file, by the size it hashes (the
    guest's check of what it received, in the same process, hashes its whole file: size None,
    not counted).  ``monkeypatch``: the test's pytest fixture."""
    import pairkit.files as files_module

    passes: list[int] = []
    real = files_module._sha256_open

    def counted(fh: Any, size: int | None, name: str) -> bytes:
        if size is not None:
            passes.append(size)
        return real(fh, size, name)

    monkeypatch.setattr(files_module, "_sha256_open", counted)
    return passes
