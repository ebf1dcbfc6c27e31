"""``pairkit demo``: George plays Paul's videos, end to end, narrated (the webinos scenario).

Everything is real but the people: three devices with real keystores in a temporary folder, real
BLE frames through bumble's host stack on virtual controllers (or the loopback transport), real
files, and Paul's answers scripted where a person would be asked.  The steps follow DESIGN.md:
identification, visibility and discovery, cloud check and join, session key, service provision;
``--scenario resume`` then shows a member of Paul's cloud reconnecting with no prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pairkit.files import get_file, list_files
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.cloud import AllowJoin, CloudChecked, Grant, Role
from pairkit.pairing.methods import ConfirmCode, InsecureWarning, Session
from pairkit.pairing.negotiation import Method
from pairkit.pairing.service import AllowRequest, JoinCloud, Membership, Scope
from pairkit.presence import Presence, discover
from pairkit.securelink import SecureLink
from pairkit.session import name_hosts

from .cpns_demo import stop_key_server
from .flows import HostOptions, JoinOptions, run_host, run_join
from .show import Narrator, Progress, role_text

DEMO_PIN = "246813"  # the keystores' own PIN (throwaway keystores in a temporary folder)
VIDEOS = {"holiday.mp4": 1_500_000, "birthday.mp4": 400_000}


def make_mp4_like(path: Path, size: int, seed: bytes) -> None:
    """A file that starts like an MP4 (an ftyp box) followed by reproducible bytes."""
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    body = bytearray()
    block = seed
    while len(head) + len(body) < size:
        block = hashlib.sha256(block).digest()
        body += block * 64
    path.write_bytes((head + bytes(body))[:size])


class Person:
    """Scripted answers to the questions a device asks its owner, narrated."""

    def __init__(self, who: str, n: Narrator, *, join: Grant | None = None) -> None:
        self.who = who
        self.n = n
        self.join = join
        self.prompts: list[str] = []
        #: the outcomes of this device's cloud checks (True: proved membership)
        self.checks: list[bool] = []

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        self.prompts.append(f"join:{q.name}")
        self.n.say(f'   {self.who}\'s screen: "{q.name} asks to join. Allow as guest for '
                   f'1 hour / as member / refuse?"')
        answer = "as guest for 1 hour" if self.join and self.join.role is Role.GUEST else (
            "as member" if self.join else "refuse")
        self.n.say(f"   {self.who} answers: {answer}")
        return self.join

    async def allow_request(self, q: AllowRequest) -> Scope:
        what = "the list of shared files" if q.what == "list" else repr(q.name)
        self.prompts.append(f"{q.what}:{q.name or ''}")
        self.n.say(f'   {self.who}\'s screen: "{q.peer_name} asks for {what}. Allow once / '
                   f'for this session / refuse?"')
        self.n.say(f"   {self.who} answers: for this session")
        return Scope.SESSION

    async def join_cloud(self, q: JoinCloud) -> bool:
        self.prompts.append(f"cloud:{q.cloud_name}")
        self.n.say(f'   {self.who}\'s screen: "{q.host_name} made this device a member of '
                   f'{q.cloud_name!r}. Join?"')
        self.n.say(f"   {self.who} answers: join")
        return True

    async def confirm_code(self, q: ConfirmCode) -> bool:
        self.n.say(f"   {self.who}'s screen shows {q.code[:3]} {q.code[3:]}; {self.who} confirms")
        return True

    async def on_warning(self, event: InsecureWarning) -> None:
        self.n.say(f"   warning: {event.text}")

    async def on_event(self, event: object) -> None:
        if isinstance(event, CloudChecked):
            self.checks.append(event.member)
            if event.member:
                self.n.say(f"   {self.who}'s device proves membership of the host's cloud: it is "
                           "let in without asking anyone")
            else:
                clouds = "cloud" if event.tried == 1 else "clouds"
                self.n.say(f"   {self.who}'s device tries its {event.tried} {clouds}: the host "
                           "proves membership of none of them, so authentication through the "
                           f"cloud fails and {self.who} asks to join instead")


async def _open_devices(transport: str, method: Method, names: list[str]) -> tuple[list[Any], Any]:
    """One transport per device on one pretend or virtual radio, and a closer."""
    devices: list[Any] = []
    if transport == "loopback":
        from pairkit.transports.loopback import LoopbackMedium

        # For 'clear', pretend the link layer encrypts, as BLE LE Secure Connections would.
        medium = LoopbackMedium(encrypted=method is Method.CLEAR)
        devices = [medium.endpoint(n.lower().replace("'s ", "-"), name=n) for n in names]
    elif transport == "bumble:virtual":
        from pairkit.transports.ble.virtual import VirtualRadio
        from pairkit.transports.bumble import open_bumble

        radio = VirtualRadio()
        for _ in names:
            devices.append(await open_bumble("virtual", radio=radio, prefer_l2cap=True))
    else:
        raise click.UsageError(f"the demo runs on loopback or bumble:virtual, not {transport!r}")

    async def close() -> None:
        for d in reversed(devices):
            with contextlib.suppress(Exception):
                await d.close()

    return devices, close


def _address(t: Any) -> str:
    return str(t.address)


async def run_demo(
    scenario: str, transport: str, method: Method, *, quiet: bool
) -> dict[str, Any]:
    n = Narrator(quiet)
    summary: dict[str, Any] = {
        "ok": True, "scenario": scenario, "transport": transport, "method": method.label,
    }
    with tempfile.TemporaryDirectory(prefix="pairkit-demo-") as tmp_name:
        tmp = Path(tmp_name)
        # -- 1 -------------------------------------------------------------------------------
        n.section("Identification: each device unlocks its keystore with its owner's PIN")
        paths = {who: tmp / who / "keystore.pk" for who in ("paul", "tv", "george")}
        for who, name in (("paul", "Paul's phone"), ("tv", "Paul's TV"),
                          ("george", "George's phone")):
            ks = Keystore.create(paths[who], DEMO_PIN, name=name, kdf=Argon2Params.cheapest())
            ks.set_cloud(ks.device_id[:16], os.urandom(32), name=f"{name}'s cloud", role="owner")
            ks.save()
        paul = Keystore.open(paths["paul"], DEMO_PIN)
        george = Keystore.open(paths["george"], DEMO_PIN)
        tv = Keystore.open(paths["tv"], DEMO_PIN)
        cloud = next(c for c in paul.clouds() if c.role == "owner")
        # Paul's TV joined Paul's cloud earlier (as 'host --yes' + 'join' with a member grant does).
        tv.set_cloud(cloud.cloud_id, paul._cloud_secret_for_new_member(cloud.cloud_id),
                     name="Paul's cloud", role="member", owner=paul.device_id,
                     owner_signing=paul.signing_public)
        tv.save()
        for who, ks in (("Paul's phone", paul), ("Paul's TV", tv), ("George's phone", george)):
            n.say(f"   {who:<15} unlocked; id {ks.device_id}")
        n.say("   Paul's phone and Paul's TV share Paul's personal cloud; George is a stranger")
        n.mark("identities")

        share = tmp / "videos"
        share.mkdir()
        for i, (name, size) in enumerate(VIDEOS.items()):
            make_mp4_like(share / name, size, bytes([i]) * 32)

        ttp: dict[str, str] = {}
        server_proc = None
        if method is Method.TTP:
            n.section("A key server both trust (method d): Paul's phone and George's phone enrol")
            server_proc = await _start_key_server(tmp, ttp, n, {"Paul's phone": paul,
                                                              "George's phone": george})
            summary["key_server"] = ttp["server"]
        (host_t, tv_t, guest_t), close = await _open_devices(
            transport, method, ["Paul's phone", "Paul's TV", "George's phone"]
        )
        paul_person = Person("Paul", n, join=Grant(Role.GUEST, 3600))
        george_person = Person("George", n)
        host_task: asyncio.Task[int] | None = None
        try:
            # -- 2 ---------------------------------------------------------------------------
            n.section("Visibility and discovery: Paul's phone is private until Paul opens it")
            state_box: dict[str, Any] = {}
            presences: list[Presence] = []
            started = asyncio.Event()

            def ready(addr: str, state: Any) -> None:
                state_box["state"] = state
                started.set()

            host_results: list[dict[str, Any]] = []
            host_opts = HostOptions(
                transport=transport, methods=frozenset({method, Method.PIN, Method.RESUME}),
                once=False,
                json=True, quiet=True, share=share, visible=None,
                allow_insecure=method is Method.CLEAR,
                ttp=ttp.get("server"), ttp_ca=ttp.get("ca"),
            )
            host_task = asyncio.create_task(run_host(
                paul, host_opts, emit=host_results.append, ready=ready, transport_obj=host_t,
                delegate=paul_person, presence_out=presences,
            ))
            await asyncio.wait_for(started.wait(), 10)
            found, _ = await discover(guest_t, george, 0.3)
            n.say(f"   George's phone scans: {_describe(found)}")
            found_tv, _ = await discover(tv_t, tv, 0.3)
            n.say(f"   Paul's TV scans:      {_describe(found_tv)}")
            await presences[0].open_window(120)
            n.say("   Paul opens a 120-second visibility window (pairkit host --visible 120);")
            n.say("   the hello gets a new tag and the phone a new address")
            found, _ = await discover(guest_t, george, 0.3)
            n.say(f"   George's phone scans: {_describe(found)}")
            found = await name_hosts(guest_t, george, found)
            for f in found:
                if f.hello.visible and f.name:
                    n.say(f"   George's phone asks {f.address} who it is (its hello response): "
                          f"{f.name!r}; George picks it by that name")
            joinable = [f for f in found if f.hello.visible]
            if not joinable:
                raise click.ClickException("George's phone did not hear a joinable host")
            target = joinable[0].address
            summary["discovered"] = [f.as_json() for f in found]
            n.mark("discovered")

            # -- 3, 4, 5 ---------------------------------------------------------------------
            n.section("Cloud check and join: George's phone is not in Paul's cloud, so it asks")
            george_box: dict[str, Any] = {}
            step_box = {"n": n}

            async def george_uses(slink: SecureLink, session: Session, m: Membership) -> None:
                n.say(f"   George's phone is now Paul's {role_text(m)}")
                n.section("Service provision: George lists Paul's videos and plays two")
                files = await list_files(slink)
                george_box["files"] = [
                    {"name": f.name, "size": f.size, "type": f.type} for f in files
                ]
                for f in files:
                    n.say(f"   {f.name:<14} {f.size:>9} bytes  {f.type}")
                fetched = []
                for f in sorted(files, key=lambda f: -f.size):
                    dest = tmp / "george-downloads" / f.name
                    dest.parent.mkdir(exist_ok=True)
                    got = await get_file(slink, f.name, dest, progress=Progress(
                        f"   {f.name}", enabled=False))
                    same = got.sha256 == hashlib.sha256((share / f.name).read_bytes()).hexdigest()
                    rate = got.size / max(got.seconds, 1e-6) / 1e6
                    n.say(f"   played {f.name}: {got.size} bytes in {got.seconds:.2f} s "
                          f"({rate:.2f} MB/s), SHA-256 {'matches' if same else 'DIFFERS'}")
                    fetched.append({"name": f.name, "bytes": got.size, "sha256": got.sha256,
                                    "sha256_match": same, "seconds": round(got.seconds, 4)})
                george_box["fetched"] = fetched
                step_box["n"].mark("served")

            pin = state_box["state"].pin
            qr = None
            if method is Method.QR:
                from pairkit.pairing.qr import QrCode

                qr = QrCode.parse(state_box["state"].last_qr.to_uri())
            join_opts = JoinOptions(
                target=target if transport != "loopback" else "loopback",
                transport=transport, method=method, pin=pin, qr=qr, yes=True, json=True,
                allow_insecure=method is Method.CLEAR, wants=Role.GUEST,
                ttp=ttp.get("server"), ttp_ca=ttp.get("ca"),
            )
            # Paul's answers are narrated as they are asked; the PIN step comes between.
            original_join = paul_person.allow_join

            async def join_then_key(q: AllowJoin) -> Grant | None:
                grant = await original_join(q)
                n.section(f"Session key: George's phone and Paul's phone agree on one by "
                          f"'{method.label}'")
                if method is Method.PIN:
                    n.say(f"   Paul's screen shows PIN {pin}; George types it")
                elif method is Method.QR:
                    n.say("   George scans the QR code on Paul's screen")
                elif method is Method.TTP:
                    n.say("   each phone asks the key server for a key for the other; the server "
                          "hands it to both, sealed to each phone's enrolled key")
                return grant

            paul_person.allow_join = join_then_key  # type: ignore[method-assign]
            t0 = time.perf_counter()
            session, membership = await run_join(
                george, join_opts, on_session=george_uses, transport_obj=guest_t,
                address=None if transport != "loopback" else _address(host_t),
                delegate=george_person,
            )
            summary["pairing_and_service_seconds"] = round(time.perf_counter() - t0, 4)
            await _wait_for(lambda: len(host_results) >= 1)
            summary["session"] = {"george": session.fingerprint,
                                  "paul": host_results[0]["session"]}
            summary["sessions_match"] = session.fingerprint == host_results[0]["session"]
            summary["role"] = membership.role.name.lower()
            summary["files_listed"] = george_box.get("files", [])
            summary["fetched"] = george_box.get("fetched", [])
            summary["bytes_fetched"] = sum(f["bytes"] for f in summary["fetched"])
            summary["sha256_match"] = all(f["sha256_match"] for f in summary["fetched"])
            summary["prompts"] = list(paul_person.prompts)
            summary["cloud_checks"] = {"george": ["member" if m else "failed"
                                                  for m in george_person.checks]}
            n.say(f"   Paul was asked {len(paul_person.prompts)} times: join, the listing and "
                  "the first video; the session grant covered the second")
            n.say(f"   session fingerprints: George {session.fingerprint}, "
                  f"Paul {host_results[0]['session']}")

            if scenario == "resume":
                n.section("Resume: Paul's TV, a member of Paul's cloud, reconnects with no prompt")
                prompts_before = len(paul_person.prompts)
                state = state_box["state"]
                if state.pin is None:
                    state.new_pin()
                tv_opts = JoinOptions(
                    target=_address(host_t) if transport != "loopback" else "loopback",
                    transport=transport, method=Method.PIN, pin=state.pin, yes=True, json=True,
                )
                tv_person = Person("Paul's TV", n)
                await run_join(tv, tv_opts, transport_obj=tv_t, delegate=tv_person,
                               address=None if transport != "loopback" else _address(host_t))
                n.say("   first visit: the cloud check proves membership (no join prompt), "
                      "then a PIN")
                t1 = time.perf_counter()
                again, _ = await run_join(
                    tv, JoinOptions(target="Paul's phone", transport=transport, yes=True,
                                    json=True),
                    transport_obj=tv_t, delegate=tv_person,
                    address=_address(host_t),
                )
                asked = len(paul_person.prompts) - prompts_before
                summary["cloud_checks"]["tv"] = ["member" if m else "failed"
                                                 for m in tv_person.checks]
                summary["resume"] = {"method": again.method.label, "prompts": asked,
                                     "seconds": round(time.perf_counter() - t1, 4),
                                     "session": again.fingerprint}
                n.say(f"   later: reconnected by '{again.method.label}' in "
                      f"{summary['resume']['seconds'] * 1000:.0f} ms; Paul was asked "
                      f"{asked} times")
        finally:
            if host_task is not None:
                host_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await host_task
            await close()
            if server_proc is not None:
                await stop_key_server(server_proc)
    summary["timings"] = n.timings
    n.say("\nDone: George played Paul's videos." if summary.get("sha256_match") else "\nDone.")
    return summary


async def _start_key_server(
    tmp: Path, out: dict[str, str], n: Narrator, devices: dict[str, Keystore]
) -> asyncio.subprocess.Process:
    """A key server process in ``tmp`` (as ``pairkit ttp init`` and ``ttp serve`` make one), and
    ``devices`` enrolled with it (as ``pairkit ttp enrol`` does); its address and CA in ``out``."""
    from pairkit.keyserver.certs import init_server_dir
    from pairkit.peers import local_identity
    from pairkit.ttp import enrol

    from .cpns_demo import start_key_server

    d = init_server_dir(tmp / "keyserver")
    proc, address = await start_key_server(d.root)
    out.update(server=address, ca=str(d.ca_cert))
    n.say(f"   the key server runs apart (process {proc.pid}, {address}, TLS 1.3); its CA "
          "certificate is in every device")
    try:
        for who, ks in devices.items():
            await enrol(address, d.ca_cert, local_identity(ks))
            n.say(f"   {who} enrols: it proves it holds its key, the server remembers it")
    except BaseException:
        await stop_key_server(proc)
        raise
    return proc


def _describe(found: list[Any]) -> str:
    if not found:
        return "nothing"
    parts = []
    for f in found:
        who = f"member of {f.cloud_name}" if f.cloud_name else "a stranger's device"
        state = "joinable" if f.hello.visible else "private, not joinable"
        parts.append(f"{f.address} ({who}, {state})")
    return "; ".join(parts)


async def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
