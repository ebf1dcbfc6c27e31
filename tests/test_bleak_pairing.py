"""Every pairing method with the guest on bleak (``bleak:bumble:virtual``) and the host on bumble.

The host is ``pairkit host``'s flow (:func:`cli.flows.run_host`) on a bumble virtual controller;
the guest is ``pairkit join``'s (:func:`cli.flows.run_join`) and ``pairkit discover``'s over
:mod:`transports.bleak`, that is bleak's API on pairkit's bumble backend, on the same virtual
radio.  Then a file travels over the bleak link, and the commands themselves run as processes
through ``pairkit radio`` with the guest on ``bleak:bumble:tcp-client:...``.

The harness (keystores, scripted people, hosts on a radio) is tests/test_ble_pairing.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.flows import JoinOptions, SessionHandler, run_join
from pairkit.files import get_file
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import PairingError
from pairkit.pairing.keystore import Keystore
from pairkit.pairing.methods import Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import Membership
from pairkit.presence import discover
from pairkit.transports.bleak import BleakLink, BleakTransport
from pairkit.transports.registry import open_transport
from tests.cli_helpers import Device, Lab, init_devices, run_cli, use_bytecode_cache
from tests.test_ble_pairing import HostRun, Person, World, eventually, make_keystore, reopen

SPEC = "bleak:bumble:virtual"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
def paul(tmp_path: Path) -> Keystore:
    return make_keystore(tmp_path / "paul" / "keystore.pk", "Paul's phone")


@pytest.fixture
def george(tmp_path: Path) -> Keystore:
    return make_keystore(tmp_path / "george" / "keystore.pk", "George's phone")


async def bleak_guest(world: World) -> BleakTransport:
    guest = await open_transport(SPEC, radio=world.radio)
    world.transports.append(guest)  # closed with the world
    return guest


async def bleak_join(
    ks: Keystore,
    guest: BleakTransport,
    host: HostRun | None,
    *,
    method: Method | None = Method.PIN,
    person: Person | None = None,
    on_session: SessionHandler | None = None,
    target: str | None = None,
    **options: Any,
) -> tuple[Session, Membership]:
    """``pairkit join TARGET -t bleak:bumble:virtual`` through ``guest``, with a deadline."""
    if method is Method.PIN and "pin" not in options and host is not None:
        options["pin"] = host.state.pin
    if method is Method.QR and "qr" not in options and host is not None:
        options["qr"] = host.qr
    target = target or (host.address if host is not None else None)
    assert target is not None
    opts = JoinOptions(
        target=target, transport=SPEC, method=method, json=True, connect_timeout=5.0, **options
    )
    return await asyncio.wait_for(
        run_join(ks, opts, on_session=on_session, transport_obj=guest, delegate=person or Person()),
        15,
    )


# -- discovery and every method ------------------------------------------------------------------


async def test_discover_through_bleak_lists_the_host(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul, frozenset({Method.PIN, Method.QR, Method.RESUME}))
    guest = await bleak_guest(world)
    found, garbage = await discover(guest, george, 0.3)
    assert garbage == 0
    (entry,) = [f for f in found if f.address == host.address]
    assert entry.as_json() == {
        "address": host.address,
        "name": None,
        "rssi": -50,
        "methods": ["pin", "qr", "resume"],
        "visible": True,
        "cloud": None,
    }


@pytest.mark.parametrize("method", [Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR])
async def test_each_method_pairs_with_a_bleak_guest(
    world: World, paul: Keystore, george: Keystore, method: Method
) -> None:
    host = await world.start_host(paul, frozenset({method, Method.RESUME}))  # prefers L2CAP
    guest = await bleak_guest(world)
    seen: dict[str, Any] = {}

    async def look(slink: Any, session: Session, membership: Membership) -> None:
        seen["link"] = slink.link
        seen["guest_encrypted"] = slink.link.encrypted
        seen["host_encrypted"] = host.encrypted_connections()

    george_person = Person()
    session, membership = await bleak_join(
        george, guest, host, method=method, person=george_person, on_session=look
    )
    await eventually(lambda: len(host.results) == 1)
    result = host.results[0]
    assert session.method is method and result["method"] == method.label
    assert result["session"] == session.fingerprint
    assert result["peer"]["name"] == "George's phone" and result["role"] == "guest"
    assert session.peer.name == "Paul's phone"
    # 'clear' over a Just Works link is encrypted but vouched for by no one (rule 5).
    assert session.peer.authenticated is (method is not Method.CLEAR)
    assert membership.role is Role.GUEST
    assert type(seen["link"]) is BleakLink  # GATT: bleak has no L2CAP channels
    if method is Method.CLEAR:
        # run_join encrypted the link first, through bleak's pair() (LE Secure Connections).
        assert seen["guest_encrypted"] is True and seen["host_encrypted"] == [True]
    else:
        assert seen["guest_encrypted"] is False and seen["host_encrypted"] == [False]
    if method is Method.COMPARE:
        (guest_code,) = [c for kind, c in george_person.questions if kind == "code"]
        (host_code,) = [c for kind, c in host.person.questions if kind == "code"]
        assert guest_code == host_code and len(guest_code or "") == 6
    (stored_host,) = reopen(george).peers()
    (stored_guest,) = reopen(paul).peers()
    assert stored_host.name == "Paul's phone" and stored_host.method == method.label
    assert stored_guest.name == "George's phone" and stored_guest.method == method.label
    assert stored_host.extra["address"] == host.address


async def test_resume_and_the_kk_fallback_with_a_bleak_guest(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul)
    guest = await bleak_guest(world)
    first, _ = await bleak_join(george, guest, host)
    await eventually(lambda: len(host.results) == 1)
    asked = len(host.person.questions)
    again, _ = await bleak_join(george, guest, None, method=None, target="Paul's phone")
    await eventually(lambda: len(host.results) == 2)
    assert again.method is Method.RESUME and host.results[1]["session"] == again.fingerprint
    assert again.fingerprint != first.fingerprint
    record = george.get_peer("Paul's phone")
    george.add_peer(dataclasses.replace(record, their_prekeys=[]))
    george.save()
    kk, _ = await bleak_join(george, guest, None, method=None, target="Paul's phone")
    await eventually(lambda: len(host.results) == 3)
    assert kk.method is Method.KK and host.results[2]["session"] == kk.fingerprint
    assert len(host.person.questions) == asked  # a known peer is never asked about


async def test_a_wrong_pin_fails_on_both_sides_over_bleak(
    world: World, paul: Keystore, george: Keystore
) -> None:
    host = await world.start_host(paul)
    guest = await bleak_guest(world)
    wrong = "000000" if host.state.pin != "000000" else "111111"
    with pytest.raises(PairingError):
        await bleak_join(george, guest, host, pin=wrong)
    assert host.results == []
    assert reopen(george).peers() == () and reopen(paul).peers() == ()
    assert not host.task.done()  # the host keeps serving


async def test_a_file_travels_over_the_bleak_link(
    world: World, paul: Keystore, george: Keystore, tmp_path: Path
) -> None:
    share = tmp_path / "videos"
    share.mkdir()
    content = os.urandom(300_000)
    (share / "holiday.mp4").write_bytes(content)
    host = await world.start_host(paul, share=share)
    guest = await bleak_guest(world)
    dest = tmp_path / "got" / "holiday.mp4"
    dest.parent.mkdir()
    fetched: list[Any] = []

    async def fetch(slink: Any, session: Session, membership: Membership) -> None:
        fetched.append(await get_file(slink, "holiday.mp4", dest))

    await bleak_join(george, guest, host, on_session=fetch)
    (result,) = fetched
    assert result.size == len(content) and dest.read_bytes() == content
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    # Paul was asked to let George in, then for the file (DESIGN.md, service provision).
    assert host.person.questions == [("join", "George's phone"), ("get", "holiday.mp4")]


# -- the commands, as processes, through pairkit radio -------------------------------------------


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Device]:
    use_bytecode_cache(tmp_path_factory.mktemp("pycache"))
    base = tmp_path_factory.mktemp("bleak-templates")
    names = {"paul": "Paul's phone", "george": "George's phone"}
    homes = {key: base / key for key in names}
    init_devices(homes, names)
    return {key: Device(homes[key], names[key]) for key in names}


async def test_join_and_discover_on_bleak_through_pairkit_radio(
    tmp_path: Path, templates: dict[str, Device]
) -> None:
    radio = await asyncio.create_subprocess_exec(
        *_module("pairkit.transports.radio"),
        "--ports",
        "0",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    lab = Lab(tmp_path / "devices", templates)
    try:
        assert radio.stdout is not None
        line = (await asyncio.wait_for(radio.stdout.readline(), 20)).decode()
        host_spec, guest_spec = line.split()[1:3]
        guest_spec = "bleak:" + guest_spec  # bleak:bumble:tcp-client:127.0.0.1:P
        paul, george = lab.device("paul"), lab.device("george")
        host = await lab.host(
            paul,
            "--method",
            "pin",
            "--pin",
            "482913",
            "--visible",
            "60",
            "--yes",
            "--json",
            transport=host_spec,
        )
        found = (await george.run("discover", "-t", guest_spec, "--timeout", "1", "--json")).ok()
        (device,) = [d for d in found.json()["devices"] if d["address"] == host.address]
        assert device["visible"] is True and device["methods"] == ["pin"]
        joined = await george.join(
            host.address, "-t", guest_spec, "--method", "pin", "--pin", "482913", "--json"
        )
        result = joined.ok().json()
        assert result["ok"] is True and result["method"] == "pin"
        hosted = await host.next_result()
        assert hosted["session"] == result["session"]
        assert hosted["peer"]["name"] == "George's phone"
        (peer,) = await george.peers()
        assert peer["name"] == "Paul's phone"
        # And what the guest side says when the radio it names is not there.
        dead = await run_cli(george.home, "discover", "-t", "bleak:bumble:tcp-client:127.0.0.1:1")
        assert dead.rc != 0 and "error: " in dead.err and "nothing listens" in dead.err
    finally:
        await lab.close()
        radio.kill()
        await radio.wait()


def _module(name: str) -> tuple[str, ...]:
    return (sys.executable, "-m", name)


# -- bench/ble_bleak.py, smoke ---------------------------------------------------------------------


async def test_the_bleak_bench_runs_and_reports_ratios() -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_ble_bleak", ROOT / "bench" / "ble_bleak.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while being built
    spec.loader.exec_module(bench)
    result = await bench.measure(bench.QUICK)
    assert result["link_mtu"] == {"bumble": 512, "bleak": 512}
    assert set(result["methods"]) == {"pin", "qr", "compare", "resume"}
    for row in result["methods"].values():
        for phase in ("pair", "join"):
            cell = row[phase]
            assert cell["bleak_vs_bumble"] > 0
            assert cell["ms"]["bleak"]["median"] > 0 and cell["ms"]["bumble"]["n"] == 1
            if phase == "join":  # connecting is part of joining
                assert cell["ms"]["bleak"]["median"] > row["pair"]["ms"]["bleak"]["median"]
    assert "bleak/bumble" in bench.render(result)
