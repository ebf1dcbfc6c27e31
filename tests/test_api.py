"""The Python API (issue 12, README "Use it from Python") played by an application and by the
people it must not serve: a stranger the host's owner never let in, a wrong PIN, a replayed
PIN, a guest asking for files outside the shared folder.  Real links: loopback, a real
``pairkit host`` process over TCP, bumble virtual controllers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import pairkit
from pairkit.keystore import Argon2Params
from pairkit.pairing.errors import (
    AuthenticationError,
    ConfigError,
    ErrorCode,
    LinkClosedError,
    PairingError,
    PairingTimeout,
    RefusedError,
    RemoteError,
)
from tests.cli_helpers import KEYSTORE_PIN, HostProcess, init_devices

PASS = "a passphrase"


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", PASS, name=name, kdf=Argon2Params.cheapest()
    )


class Recorder(pairkit.Agree):
    """Agrees, and keeps what it was told."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.events: list[object] = []
        self.asked: list[object] = []

    async def allow_join(self, q):  # type: ignore[no-untyped-def]
        self.asked.append(q)
        return await super().allow_join(q)

    async def on_event(self, event: object) -> None:
        self.events.append(event)


async def test_pin_pairing_over_loopback_gives_both_sides_one_session(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:t1", methods=["pin"], delegate=pairkit.Agree()) as host:
        joining = asyncio.create_task(george.join("loopback:t1", pin=host.pin))
        async with await host.accept(timeout=30) as on_paul, await joining as on_george:
            assert on_paul.fingerprint == on_george.fingerprint
            assert (on_paul.peer.name, on_george.peer.name) == ("George", "Paul")
            assert on_george.peer.fingerprint == paul.fingerprint
            assert on_paul.method == on_george.method == "pin"
            assert on_george.role == "guest"
            await on_george.send(b"one")
            await on_paul.send(b"two")
            assert await on_paul.receive() == b"one"
            assert await on_george.receive() == b"two"
    assert [p.name for p in paul.peers()] == ["George"]
    assert [p.name for p in george.peers()] == ["Paul"]


async def test_async_iteration_ends_when_the_peer_closes(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:t2", delegate=pairkit.Agree()) as host:
        joining = asyncio.create_task(george.join("loopback:t2", pin=host.pin))
        on_paul, on_george = await host.accept(timeout=30), await joining
        for n in range(3):
            await on_george.send(b"%d" % n)
        await on_george.close()
        got = [m async for m in on_paul]
        assert got == [b"0", b"1", b"2"]
        with pytest.raises(LinkClosedError):
            await on_george.send(b"after close")
        await on_paul.close()


async def test_a_silent_peer_ends_in_a_timeout_not_a_hang(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:t3", delegate=pairkit.Agree()) as host:
        joining = asyncio.create_task(george.join("loopback:t3", pin=host.pin))
        async with await host.accept(timeout=30) as on_paul, await joining:
            with pytest.raises(PairingTimeout):
                await on_paul.receive(timeout=0.2)


async def test_without_a_delegate_a_stranger_is_refused_and_nothing_stored(
    tmp_path: Path,
) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:t4") as host:  # nobody to say yes: Refuse
        accepting = asyncio.create_task(host.accept(timeout=30))
        with pytest.raises(RemoteError, match="refused the request to join") as refused:
            await george.join("loopback:t4", pin=host.pin)
        assert refused.value.code is ErrorCode.REFUSED
        assert not accepting.done()  # the host goes on waiting
        accepting.cancel()
    assert paul.peers() == [] and george.peers() == []


async def test_a_wrong_pin_fails_and_the_pin_is_not_good_twice(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    told = Recorder()
    async with paul.host("loopback:t5", delegate=told) as host:
        shown = host.pin
        assert shown is not None
        wrong = "000000" if shown != "000000" else "111111"
        accepting = asyncio.create_task(host.accept(timeout=30))
        with pytest.raises(AuthenticationError):
            await george.join("loopback:t5", pin=wrong)
        for _ in range(100):  # the host's side of the failure, then a fresh PIN
            if told.events:
                break
            await asyncio.sleep(0.02)
        assert [type(e).__name__ for e in told.events] == ["GuestFailed"]
        assert host.pin != shown  # the shown PIN served its one attempt
        with pytest.raises(PairingError):
            await george.join("loopback:t5", pin=shown)  # a guess of the old PIN is refused
        assert not accepting.done()
        accepting.cancel()
    assert paul.peers() == [] and george.peers() == []


async def test_a_known_peer_resumes_without_asking_anyone(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    told = Recorder()
    async with paul.host("loopback:t6", delegate=told) as host:
        joining = asyncio.create_task(george.join("loopback:t6", pin=host.pin))
        async with await host.accept(timeout=30), await joining:
            pass
        assert len(told.asked) == 1
        joining = asyncio.create_task(george.join("Paul", transport="loopback:t6"))
        async with await host.accept(timeout=30) as on_paul, await joining as on_george:
            assert on_george.method == on_paul.method == "resume"
            assert on_george.role == "guest"  # the grant given the first time, still valid
        assert len(told.asked) == 1  # nobody was asked again


async def test_files_are_served_only_from_the_shared_folder(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "notes.txt").write_bytes(b"shared notes\n")
    (tmp_path / "secret.txt").write_bytes(b"not shared")
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:t7", delegate=pairkit.Agree()) as host:
        joining = asyncio.create_task(george.join("loopback:t7", pin=host.pin))
        on_paul, on_george = await host.accept(timeout=30), await joining
        serving = asyncio.create_task(on_paul.serve_files(share))
        assert [f.name for f in await on_george.list_files()] == ["notes.txt"]
        got = await on_george.fetch("notes.txt", tmp_path / "got.txt")
        assert (tmp_path / "got.txt").read_bytes() == b"shared notes\n" and got.size == 13
        with pytest.raises(RefusedError, match="out of the shared folder"):
            await on_george.fetch("../secret.txt", tmp_path / "stolen.txt")
        assert not (tmp_path / "stolen.txt").exists()
        await on_george.close()
        stats = await asyncio.wait_for(serving, 10)
        assert (stats.files, stats.listings, stats.refused) == (1, 1, 1)
        await on_paul.close()


async def test_a_guest_cannot_serve_files(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:t8", delegate=pairkit.Agree()) as host:
        joining = asyncio.create_task(george.join("loopback:t8", pin=host.pin))
        async with await host.accept(timeout=30), await joining as on_george:
            with pytest.raises(ConfigError):
                await on_george.serve_files(tmp_path)


async def test_repr_and_bad_arguments_say_what_is_wrong(tmp_path: Path) -> None:
    paul = device(tmp_path, "Paul")
    assert "Paul" in repr(paul) and paul.fingerprint in repr(paul)
    with pytest.raises(ConfigError, match="unknown pairing method"):
        paul.host("loopback:t9", methods=["telepathy"])
    with pytest.raises(ConfigError, match="needs the PIN"):
        await paul.join("loopback:t9")
    with pytest.raises(ConfigError, match="inside 'async with"):
        _ = paul.host("loopback:t9").pin
    with pytest.raises(ConfigError, match="'guest' or 'member'"):
        await paul.join("loopback:t9", pin="123456", wants="owner")


async def test_the_api_joins_a_pairkit_host_process_over_tcp(tmp_path: Path) -> None:
    """The application pairs with the command line's host: one protocol, two front ends."""
    home = tmp_path / "paul"
    init_devices({"paul": home}, {"paul": "Paul"})
    host = await HostProcess.start(
        home, "--transport", "tcp:127.0.0.1:0", "--method", "pin", "--pin", "246810", "--yes",
        "--once",
    )
    try:
        george = device(tmp_path, "George")
        async with await george.join(host.target, pin="246810") as on_george:
            assert on_george.peer.name == "Paul" and on_george.role == "guest"
        await host.wait_for(r"paired with George by pin")
    finally:
        if host.proc.returncode is None:
            host.proc.terminate()
        await host.proc.wait()
    assert KEYSTORE_PIN  # the host's keystore was unlocked with the helpers' PIN


async def test_pin_pairing_over_bumble_virtual_controllers(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("bumble:virtual", delegate=pairkit.Agree()) as host:
        joining = asyncio.create_task(
            george.join(host.address, transport="bumble:virtual", pin=host.pin)
        )
        async with await host.accept(timeout=60) as on_paul, await joining as on_george:
            await on_george.send(b"over the air")
            assert await on_paul.receive() == b"over the air"
            assert on_paul.fingerprint == on_george.fingerprint


async def test_ask_gets_the_hello_response_and_the_owner_is_asked_nothing(
    tmp_path: Path,
) -> None:
    """The webinos hello response: a stranger learns a visible host's name, methods and
    capabilities before any join request; the host's owner is not asked, nor told of a failed
    guest; then the stranger joins that host by name."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    told = Recorder()
    async with paul.host("loopback:hr", methods=["pin", "qr"], delegate=told) as host:
        accepting = asyncio.create_task(host.accept(timeout=30))
        shown = await george.ask("loopback:hr")
        assert shown is not None and shown.name == "Paul"
        assert {m.label for m in shown.methods} >= {"pin", "qr"}
        assert shown.as_json()["name"] == "Paul"
        assert told.asked == [] and told.events == []
        with pytest.raises(pairkit.pairing.errors.NotFoundError,
                           match=r"this host is 'Paul', not \"Paul's TV\""):
            await george.join("loopback:hr", pin=host.pin, expect_name="Paul's TV")
        assert told.asked == []  # the wrong host was left before anyone was asked
        async with await george.join("loopback:hr", pin=host.pin, expect_name="Paul") as s:
            assert s.peer.name == "Paul"
            async with await accepting:
                pass
    assert [p.name for p in george.peers()] == ["Paul"]


async def test_a_private_host_tells_a_stranger_nothing(tmp_path: Path) -> None:
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    async with paul.host("loopback:hp", visible=0, delegate=pairkit.Agree()) as host:
        accepting = asyncio.create_task(host.accept(timeout=30))
        assert await george.ask("loopback:hp") is None
        accepting.cancel()
    assert george.peers() == []


async def test_ask_a_pairkit_host_process_over_tcp(tmp_path: Path) -> None:
    home = tmp_path / "paul"
    init_devices({"paul": home}, {"paul": "Paul"})
    host = await HostProcess.start(
        home, "--transport", "tcp:127.0.0.1:0", "--method", "pin", "--pin", "246810", "--yes",
        "--once",
    )
    try:
        george = device(tmp_path, "George")
        shown = await george.ask(host.target)
        assert shown is not None and shown.name == "Paul"
        # the host did not count the question as a guest: its one (--once) guest is still to come
        async with await george.join(host.target, pin="246810", expect_name="Paul") as s:
            assert s.peer.name == "Paul"
        await host.wait_for(r"paired with George by pin")
    finally:
        if host.proc.returncode is None:
            host.proc.terminate()
        await host.proc.wait()
    assert "asked who this host is" in host.stderr and "error" not in host.stderr
