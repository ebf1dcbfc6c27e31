"""A member forgotten by ``pairkit forget`` coming back by a method nobody answers (attack review
atk15, finding 2, session 15; fixed in session 16: docs/security.md "Renewing the cloud secret").

``forget`` cannot take back the cloud secret the member was given, and a proof of the host's own
cloud admits a member with no prompt (rule 2); ``clear`` over a link the link layer encrypts
(BLE Just Works) and ``ttp`` (the key server vouches) ask no person anything.  Together they let
the forgotten member back in as a member, with the renewed address key, the member list and file
access without prompts, while nobody was asked.  Now ``forget`` renews the cloud secret, and a
proof made with a retired secret counts only for a device that is a member now: the forgotten
one (under its old identity or a new one) is asked about as a stranger; the members kept still
come back unasked and get the new secret.

Played with the library's host and guest over the in-process loopback link claiming link-layer
encryption (as a BLE link after Just Works does), and the real ``pairkit forget`` process; and
with ``ttp`` between real ``pairkit`` processes and a real key server over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pairkit
from pairkit.pairing.cloud import Grant, Role
from pairkit.presence import IRK_SETTING, tag_keys

from .. import renewal_harness
from ..attack_harness import answer_prompt, host_with_terminal, open_ks
from ..cli_helpers import (
    PAIRKIT_CMD,
    ROOT,
    Device,
    Lab,
    cli_env,
    free_port,
    run_cli,
)

STEP = 10.0


class Owner(renewal_harness.Owner):
    """Paul: makes George a member once (the first pairing), and remembers what he was asked,
    requests on the channel too (refused)."""

    async def allow_request(self, q: Any) -> Any:
        from pairkit.pairing.service import Scope

        self.asked.append("request")
        return Scope.REFUSE


device = renewal_harness.device


async def pair(host_device: pairkit.Device, owner: Owner, guest: pairkit.Device, where: str,
               target: str | None = None,
               **join: Any) -> tuple[pairkit.Session | None, BaseException | None]:
    """:func:`renewal_harness.pair` with a host offering ``pin`` and ``clear``, whose own
    error is raised."""
    return await renewal_harness.pair(host_device, owner, guest, where, target=target,
                                      methods=("pin", "clear"), host_may_fail=False, **join)


def record(device: pairkit.Device, name: str) -> Any:
    ks = device.keystore
    ks.follow()
    return next((p for p in ks.peers() if p.name == name), None)


def paul_cloud(device: pairkit.Device, paul: pairkit.Device) -> tuple[bytes, int] | None:
    """What ``device`` holds of Paul's cloud: (a MAC under its secret, standing for the secret;
    its epoch), or None when it holds none."""
    ks = device.keystore
    ks.follow()
    (cloud_id,) = [c.cloud_id for c in paul.keystore.clouds() if c.role == "owner"]
    held = next((c for c in ks.clouds() if c.cloud_id == cloud_id), None)
    return None if held is None else (ks.cloud_mac(cloud_id, b"probe"), held.epoch)


async def members_paul_forgets_george(tmp_path: Path) -> tuple[
        pairkit.Device, Owner, pairkit.Device, pairkit.Device]:
    """Paul makes George and Ringo members by PIN (both hold his cloud secret), then forgets
    George with ``pairkit forget`` (the secret renewed); (Paul, his owner, George, Ringo)."""
    paul = device(tmp_path / "paul", "Paul")
    george, ringo = device(tmp_path / "george", "George"), device(tmp_path / "ringo", "Ringo")
    owner = Owner()
    for who, where in ((george, "m1"), (ringo, "m2")):
        session, error = await pair(paul, owner, who, where, pin="246810", wants="member")
        assert error is None and session is not None and session.role == "member", error
        await session.close()
    assert paul_cloud(george, paul) == paul_cloud(ringo, paul) == paul_cloud(paul, paul)
    forgot = (await run_cli(tmp_path / "paul", "forget", "George", "--json")).ok().json()
    assert forgot["cloud_secret_renewed"] is True
    owner.asked.clear()
    owner.grant = None  # Paul would refuse anyone he is asked about now
    return paul, owner, george, ringo


async def test_a_forgotten_member_is_not_let_back_in_by_a_pairing_nobody_answers(
    tmp_path: Path,
) -> None:
    """George paired with Paul's host by PIN and was made a member (he holds Paul's cloud
    secret and address key).  Paul forgets him (``pairkit forget``: the address key is
    renewed).  George comes back by ``clear`` over an encrypted link: his cloud proof admits
    him without a prompt and ``clear`` needs no person.  Nobody was asked, so he must not be a
    member again, nor hold the renewed address key."""
    paul = device(tmp_path / "paul", "Paul")
    george = device(tmp_path / "george", "George")
    owner = Owner()
    session, error = await pair(paul, owner, george, "fm1", pin="246810", wants="member")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    assert owner.asked == ["George"]
    assert any(c.role == "member" for c in george.keystore.clouds())  # he holds the secret
    first_key = paul.keystore.setting(IRK_SETTING)

    forgot = (await run_cli(tmp_path / "paul", "forget", "George", "--json")).ok().json()
    assert forgot["address_key_renewed"] is True
    assert forgot["cloud_secret_renewed"] is True
    paul.keystore.follow()
    renewed_key = paul.keystore.setting(IRK_SETTING)
    assert renewed_key != first_key and record(paul, "George") is None

    owner.asked.clear()
    owner.grant = None  # Paul would refuse George now, were he asked
    session, error = await pair(paul, owner, george, "fm2", method="clear")
    if session is not None:
        await session.close()
    back = record(paul, "George")
    held = record(george, "Paul")
    # Before the fix nobody was asked and George was a member again; now his proof (made with
    # the retired secret) counts as none, and Paul is asked about him as about a stranger.
    assert owner.asked == ["George"], "Paul was not asked about George"
    assert error is not None and session is None
    assert back is None or back.extra.get("granted") != "member", (
        "George is a member of Paul's cloud again and nobody was asked"
    )
    assert held is None or held.irk != renewed_key, "George holds the renewed address key"


@contextlib.asynccontextmanager
async def key_server(tmp_path: Path, devices: list[Device]) -> Any:
    """A real key server process (``pairkit ttp serve``), every device in ``devices`` enrolled
    with it (``pairkit ttp enroll``)."""
    srv = tmp_path / "srv"
    (await run_cli(devices[0].home, "ttp", "init", "--dir", str(srv))).ok()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *PAIRKIT_CMD, "ttp", "serve", "--dir", str(srv), "--listen", f"127.0.0.1:{port}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, cwd=ROOT, env=cli_env(None),
    )
    try:
        for device in devices:
            for _ in range(100):  # the server may still be starting
                enrolled = await run_cli(device.home, "ttp", "enroll", "--server",
                                         f"127.0.0.1:{port}", "--ca", str(srv / "ca.pem"))
                if enrolled.rc == 0:
                    break
                await asyncio.sleep(0.1)
            enrolled.ok()
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


async def test_a_forgotten_member_is_not_let_back_in_by_ttp_unasked(
    lab: Lab, tmp_path: Path,
) -> None:
    """The same with real processes and a real key server: George's phone, made a member of
    Paul's cloud by PIN (Paul answered "m" at his terminal), is forgotten by ``pairkit
    forget``; then Paul hosts by ``ttp`` with nobody to answer (no terminal, no ``--yes``: every
    question is refused).  George joins by ``ttp``: his cloud proof and the key server's word
    ask no one.  He must not be stored as a member again, let alone as authenticated (a ttp
    peer is, and a member that is authenticated may control Paul's groups, rule 2's
    ``_may_give_keys``)."""
    paul, george = lab.device("paul"), lab.device("george")
    async with key_server(tmp_path, [paul, george]):
        host, master = await host_with_terminal(lab, paul, "-m", "pin", "--pin", "482913",
                                                "--json")
        joining = asyncio.ensure_future(
            george.join(host.target, "-m", "pin", "--pin", "482913", "--yes", "--json"))
        await answer_prompt(host, master, r"asks to join", "m\n")
        (await joining).ok()
        assert (await host.next_result())["role"] == "member"
        await host.stop()
        forgot = (await run_cli(paul.home, "forget", "George's phone", "--json")).ok().json()
        assert forgot["address_key_renewed"] is True
        assert forgot["cloud_secret_renewed"] is True
        assert [p for p in await paul.peers() if p["name"] == "George's phone"] == []

        quiet = await lab.host(paul, "-m", "ttp", "--json")  # nobody to ask: refuses all
        mark = quiet.mark()
        came = await george.join(quiet.target, "-m", "ttp", "--yes", "--json")
        back = [p for p in await paul.peers() if p["name"] == "George's phone"]
        # Before the fix George was let in unasked; now his proof (made with the retired
        # secret) counts as none: the quiet host asks about him as about a stranger, and its
        # nobody-to-answer refuses.
        assert any("George's phone asks to join" in line for line in quiet.lines[mark:]), (
            quiet.lines[mark:])
        assert came.rc != 0 and came.err.startswith("error: "), came
        assert back == [] or back[0]["granted"] != "member", back


async def test_a_retired_proof_from_a_new_identity_is_asked_about(tmp_path: Path) -> None:
    """Remembering George's device id would not be enough: the retired secret he holds must not
    admit *any* identity.  George makes a new one ("George 2", the old secret copied into its
    keystore) and comes back by ``clear``: Paul is asked about it as about a stranger, refuses,
    and nothing is stored."""
    paul, owner, george, _ringo = await members_paul_forgets_george(tmp_path)
    twin = device(tmp_path / "twin", "George 2")
    (cloud_id,) = [c.cloud_id for c in paul.keystore.clouds() if c.role == "owner"]
    # George reads his own keystore: the attacker owns that device.
    retired = george.keystore._clouds[cloud_id]["secret"]
    twin.keystore.set_cloud(cloud_id, retired, name="Paul's cloud", role="member")
    twin.keystore.save()
    assert paul_cloud(twin, paul) != paul_cloud(paul, paul)  # the retired secret

    session, error = await pair(paul, owner, twin, "fm3", method="clear")
    if session is not None:
        await session.close()
    assert owner.asked == ["George 2"], "a retired proof let a new identity in unasked"
    assert error is not None and session is None
    assert record(paul, "George 2") is None
    assert paul_cloud(twin, paul) != paul_cloud(paul, paul)  # not handed the new secret


async def test_a_retired_proof_answered_guest_is_a_guest_with_no_verdict_sent(
    tmp_path: Path,
) -> None:
    """Control for the verdict rule (the Membership's role must be the JoinVerdict's): a
    guest back by its cloud proof hears no JoinVerdict, only the CloudVerdict "member"; when
    the proof was made with a retired secret and Paul answers "guest" after the pairing, the
    Membership says guest, and that is taken (a guest, no cloud stored), not refused as a
    mismatch."""
    paul, owner, george, _ringo = await members_paul_forgets_george(tmp_path)
    twin = device(tmp_path / "twin", "George 2")
    (cloud_id,) = [c.cloud_id for c in paul.keystore.clouds() if c.role == "owner"]
    retired = george.keystore._clouds[cloud_id]["secret"]
    twin.keystore.set_cloud(cloud_id, retired, name="Paul's cloud", role="member")
    twin.keystore.save()
    owner.grant = Grant(Role.GUEST, 3600)

    session, error = await pair(paul, owner, twin, "fm5", method="clear")
    assert error is None and session is not None, error
    await session.close()
    assert owner.asked == ["George 2"]
    assert session.role == "guest"
    assert paul_cloud(twin, paul) != paul_cloud(paul, paul)  # not handed the new secret


async def test_a_kept_member_resumes_and_gets_the_renewed_secret(tmp_path: Path) -> None:
    """Ringo, a member Paul keeps, still resumes after Paul forgot George (his proof, with the
    retired secret, counts: he is a member now), nobody is asked, he stays a member, and he
    comes out of that session holding the new secret (epoch 1), so that his hello tags and
    proofs follow it; George's copy of the old one is then his alone."""
    paul, owner, george, ringo = await members_paul_forgets_george(tmp_path)
    before = paul_cloud(ringo, paul)
    assert before is not None and before != paul_cloud(paul, paul)  # not renewed yet

    # Ringo resumes at the address he knows Paul by (the loopback endpoint of his pairing)
    session, error = await pair(paul, owner, ringo, "m2", target="Paul")
    assert error is None and session is not None, error
    assert session.method == "resume" and session.role == "member"
    await session.close()
    assert owner.asked == []
    assert record(paul, "Ringo").extra.get("granted") == "member"
    assert paul_cloud(ringo, paul) == paul_cloud(paul, paul)
    assert paul_cloud(ringo, paul)[1] == 1  # type: ignore[index]
    assert paul_cloud(george, paul) != paul_cloud(paul, paul)
    (cloud_id,) = [c.cloud_id for c in paul.keystore.clouds() if c.role == "owner"]
    assert tag_keys(ringo.keystore)[cloud_id] == tag_keys(paul.keystore)[cloud_id]
    assert tag_keys(george.keystore)[cloud_id] != tag_keys(paul.keystore)[cloud_id]

    # and the session after that, with the new secret: a member, nothing asked, nothing renewed
    session, error = await pair(paul, owner, ringo, "m2", target="Paul")
    assert error is None and session is not None and session.role == "member", error
    await session.close()
    assert owner.asked == [] and paul_cloud(ringo, paul) == paul_cloud(paul, paul)


async def test_a_running_host_process_renews_a_kept_member(lab: Lab) -> None:
    """The same between real processes over TCP: Paul's ``pairkit host`` makes George and Ringo
    members (Paul answers "m"); ``pairkit forget`` of George while it runs; Ringo's next
    ``pairkit join`` resumes with nobody asked, as a member, and leaves Ringo holding the
    renewed secret (epoch 1, the one Paul's keystore holds), George not."""
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    host, master = await host_with_terminal(lab, paul, "-m", "pin", "-m", "resume",
                                            "--pin", "482913", "--json")
    pin = await host.pin()  # 482913, shown once the host is up
    mark = host.mark()
    for who in (george, ringo):
        joining = asyncio.ensure_future(
            who.join(host.target, "-m", "pin", "--pin", pin, "--yes", "--json"))
        await answer_prompt(host, master, r"asks to join", "m\n", since=mark)
        (await joining).ok()
        assert (await host.next_result())["role"] == "member"
        # A --pin serves one guest: the next one shown (after the prompt, on its line)
        pin = (await host.wait_for(r"PIN: (\d{6})", since=mark)).group(1)
        mark = host.mark()
    forgot = (await run_cli(paul.home, "forget", george.name, "--json")).ok().json()
    assert forgot["cloud_secret_renewed"] is True

    mark = host.mark()
    again = (await ringo.join(paul.name, "--json")).ok()
    result = await host.next_result()
    assert result["method"] == "resume" and result["role"] == "member", again
    assert not any("asks to join" in line for line in host.lines[mark:]), host.lines[mark:]
    owner_ks, ringo_ks, george_ks = open_ks(paul), open_ks(ringo), open_ks(george)
    (cloud,) = [c for c in owner_ks.clouds() if c.role == "owner"]
    assert cloud.epoch == 1 and ringo_ks.cloud(cloud.cloud_id).epoch == 1
    assert ringo_ks.cloud_mac(cloud.cloud_id, b"p") == owner_ks.cloud_mac(cloud.cloud_id, b"p")
    assert george_ks.cloud_mac(cloud.cloud_id, b"p") != owner_ks.cloud_mac(cloud.cloud_id, b"p")
