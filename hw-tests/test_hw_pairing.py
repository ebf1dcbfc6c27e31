"""The pairing and transfer scenarios on real radios (hw-tests/conftest.py says how to select them).

Two radios on one machine (``PAIRKIT_HW_HOST`` and ``PAIRKIT_HW_GUEST``): the host is ``pairkit
host``'s flow on the first, the guest ``pairkit discover`` then ``pairkit join``'s on the second;
every method pairs, a known peer resumes, a file travels with its SHA-256 checked, and the raw
link passes the conformance checks that make sense over the air.  One radio here and a host
elsewhere (``PAIRKIT_HW_PEER``, ``PAIRKIT_HW_PIN``): the guest joins it by PIN and, with
``PAIRKIT_HW_FILE``, fetches that file.

Nothing here runs without a radio: on a machine without the variables every test is collected
and skipped with the reason saying what to set.  Each test prints its timings (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.flows import HostOptions, JoinOptions, SessionHandler, run_host, run_join
from pairkit.files import get_file
from pairkit.keystore import Keystore
from pairkit.pairing.methods import HostState, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.qr import QrCode
from pairkit.pairing.service import Membership
from pairkit.presence import discover
from pairkit.transports.registry import open_transport
from tests.ble_harness import Person, make_keystore, reopen
from tests.transport_conformance import (
    check_bulk_both_ways,
    check_close_drains_then_raises,
    check_every_size,
    check_ordered_both_ways,
    check_properties,
)

pytestmark = pytest.mark.timeout(300)

#: Over the air everything takes longer than on virtual controllers.
CONNECT_TIMEOUT = 20.0
STEP_TIMEOUT = 30.0
SCAN_SECONDS = 5.0


@dataclass
class Host:
    task: asyncio.Task[int]
    address: str
    state: HostState
    person: Person
    results: list[dict[str, Any]]


@contextlib.asynccontextmanager
async def hosting(
    ks: Keystore, spec: str, methods: frozenset[Method], share: Path | None = None
) -> AsyncIterator[Host]:
    """``pairkit host -t SPEC --visible 600 --yes`` in this process, stopped afterwards."""
    person = Person()
    results: list[dict[str, Any]] = []
    ready: asyncio.Future[tuple[str, HostState]] = asyncio.get_running_loop().create_future()
    opts = HostOptions(
        transport=spec,
        methods=methods,
        quiet=True,
        visible=600.0,
        share=share,
        step_timeout=STEP_TIMEOUT,
    )
    task = asyncio.create_task(
        run_host(
            ks,
            opts,
            emit=results.append,
            delegate=person,
            ready=lambda a, s: ready.set_result((a, s)),
        )
    )
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=30, return_when="FIRST_COMPLETED")
        if ready not in done:
            task.cancel()
            raise AssertionError(f"the host on {spec} did not start: {task}")
        address, state = ready.result()
        yield Host(task, address, state, person, results)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def join(
    ks: Keystore,
    spec: str,
    address: str | None,
    *,
    method: Method | None,
    target: str | None = None,
    on_session: SessionHandler | None = None,
    **options: Any,
) -> tuple[Session, Membership]:
    opts = JoinOptions(
        target=target or address or "",
        transport=spec,
        method=method,
        json=True,
        connect_timeout=CONNECT_TIMEOUT,
        step_timeout=STEP_TIMEOUT,
        **options,
    )
    return await asyncio.wait_for(
        run_join(ks, opts, on_session=on_session, delegate=Person(), address=address), 120
    )


async def heard(ks: Keystore, spec: str, address: str) -> dict[str, Any]:
    """``pairkit discover -t SPEC``: the entry for ``address`` (fails if it was not heard)."""
    transport = await open_transport(spec)
    try:
        found, _ = await discover(transport, ks, SCAN_SECONDS)
    finally:
        await transport.close()
    entries = [f.as_json() for f in found if f.address.upper() == address.upper()]
    assert entries, (
        f"{address} was not heard in {SCAN_SECONDS} s; heard {[f.address for f in found]}"
    )
    return entries[0]


@pytest.fixture
def paul(tmp_path: Path) -> Keystore:
    return make_keystore(tmp_path / "paul" / "keystore.pk", "Paul's phone")


@pytest.fixture
def george(tmp_path: Path) -> Keystore:
    return make_keystore(tmp_path / "george" / "keystore.pk", "George's phone")


@pytest.mark.parametrize("method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR])
async def test_each_method_pairs_over_the_air(
    hw_host: str, hw_guest: str, paul: Keystore, george: Keystore, method: Method
) -> None:
    if method is Method.CLEAR and hw_guest == "bleak" and sys.platform == "darwin":
        pytest.skip("CoreBluetooth has no pair(): 'clear' cannot encrypt the link on macOS")
    async with hosting(paul, hw_host, frozenset({method, Method.RESUME})) as host:
        entry = await heard(george, hw_guest, host.address)
        assert entry["visible"] is True and method.label in entry["methods"]
        options: dict[str, Any] = {}
        if method is Method.PIN:
            options["pin"] = host.state.pin
        if method is Method.QR:
            assert host.state.last_qr is not None
            options["qr"] = QrCode.parse(host.state.last_qr.to_uri())
        started = time.perf_counter()
        session, _ = await join(george, hw_guest, host.address, method=method, **options)
        elapsed = time.perf_counter() - started
        print(f"\n{method.label}: {hw_guest} -> {hw_host} paired in {elapsed:.2f} s")
        async with asyncio.timeout(10):
            while not host.results:
                await asyncio.sleep(0.05)
        assert host.results[0]["session"] == session.fingerprint
        assert session.peer.name == "Paul's phone"


async def test_a_known_peer_resumes_over_the_air(
    hw_host: str, hw_guest: str, paul: Keystore, george: Keystore
) -> None:
    async with hosting(paul, hw_host, frozenset({Method.PIN, Method.RESUME})) as host:
        await join(george, hw_guest, host.address, method=Method.PIN, pin=host.state.pin)
        again, _ = await join(george, hw_guest, host.address, method=None, target="Paul's phone")
        assert again.method is Method.RESUME
        assert len(host.person.questions) == 1  # only the first join was asked about
        assert [p.name for p in reopen(george).peers()] == ["Paul's phone"]


async def test_a_file_travels_over_the_air(
    hw_host: str, hw_guest: str, paul: Keystore, george: Keystore, tmp_path: Path
) -> None:
    share = tmp_path / "videos"
    share.mkdir()
    content = os.urandom(512 * 1024)
    (share / "clip.mp4").write_bytes(content)
    dest = tmp_path / "clip.mp4"
    fetched: list[Any] = []

    async def fetch(slink: Any, session: Session, membership: Membership) -> None:
        fetched.append(await get_file(slink, "clip.mp4", dest))

    async with hosting(paul, hw_host, frozenset({Method.PIN}), share=share) as host:
        await join(
            george, hw_guest, host.address, method=Method.PIN, pin=host.state.pin, on_session=fetch
        )
    (result,) = fetched
    assert dest.read_bytes() == content
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    print(
        f"\n{len(content)} bytes {hw_host} -> {hw_guest} in {result.seconds:.2f} s "
        f"({len(content) / result.seconds / 1e3:.0f} kB/s)"
    )


async def test_the_raw_link_over_the_air(hw_host: str, hw_guest: str) -> None:
    host = await open_transport(hw_host)
    guest = await open_transport(hw_guest)
    try:
        await host.start_advertising(b"\x40" + bytes(9))
        accepting = asyncio.ensure_future(host.accept(timeout=CONNECT_TIMEOUT))
        guest_link = await guest.connect(host.address, timeout=CONNECT_TIMEOUT)
        host_link = await accepting
        print(f"\nlink: {type(guest_link).__name__}, MTU {guest_link.mtu}")
        await check_properties(guest_link, host_link)
        await check_ordered_both_ways(guest_link, host_link, count=100, step=60)
        await check_every_size(guest_link, host_link, step=120)
        started = time.perf_counter()
        await check_bulk_both_ways(guest_link, host_link, total=256 * 1024, step=120)
        print(f"256 KiB each way at once in {time.perf_counter() - started:.2f} s")
        await check_close_drains_then_raises(guest_link, host_link, step=30)
    finally:
        await guest.close()
        await host.close()


async def test_join_a_host_on_another_machine(
    hw_guest: str, hw_peer: tuple[str, str], george: Keystore, tmp_path: Path
) -> None:
    address, pin = hw_peer
    name = os.environ.get("PAIRKIT_HW_FILE")
    fetched: list[Any] = []

    async def fetch(slink: Any, session: Session, membership: Membership) -> None:
        if name:
            fetched.append(await get_file(slink, name, tmp_path / Path(name).name))

    entry = await heard(george, hw_guest, address)
    assert entry["visible"] is True, "open a visibility window on the host (--visible 600)"
    session, membership = await join(
        george, hw_guest, address, method=Method.PIN, pin=pin, on_session=fetch
    )
    print(
        f"\npaired with {session.peer.name} as {membership.role.name.lower()}; "
        f"session {session.fingerprint}"
    )
    if name:
        (result,) = fetched
        print(f"{name}: {result.size} bytes in {result.seconds:.2f} s, sha256 {result.sha256}")
