"""Attack 8 (rule 8): no secret in any output, JSON or repr.

Whole CLI scenarios run between processes over TCP (PIN, QR, a member join that hands over the
cloud secret, a file get); every stdout and stderr line and every --json output is scanned for
the PIN (allowed only on the host's own "PIN: ..." lines), the QR code's one-time secret
(allowed only where the host shows the code), the cloud secret and every private key and prekey
the keystores hold.  Session keys are checked in the repr of sessions, secure links and keystores.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pairkit.pairing.negotiation import Method
from pairkit.pairing.qr import _unb64
from pairkit.securelink import SecureLink
from tests.attack_harness import (
    answer_prompt,
    device_secrets,
    find_secrets,
    host_with_terminal,
    open_ks,
    owned_cloud,
)
from tests.cli_helpers import Lab
from tests.pair_harness import compare_codes, pair_for

PIN = "482913"


async def test_cli_scenarios_print_no_secret(lab: Lab, tmp_path: Path) -> None:
    paul, george, ringo = lab.device("paul"), lab.device("george"), lab.device("ringo")
    share = tmp_path / "share"
    share.mkdir()
    (share / "video.mp4").write_bytes(b"v" * 50_000)
    outputs: list[tuple[str, str]] = []  # (where, text)
    # PIN and QR, text and JSON.
    host = await lab.host(paul, "-m", "pin", "-m", "qr", "-m", "resume", "--pin", PIN, "--yes",
                          "--json", "--share", str(share))
    uri = (await host.wait_for(r"QR code \(valid \d+ s\): (\S+)")).group(1)
    qr_secret = _unb64(parse_qs(urlsplit(uri).query)["s"][0], 16, "secret")
    j1 = await george.join(host.target, "-m", "pin", "--pin", PIN, "--json")
    j2 = await ringo.join(host.target, "--qr", uri)
    got = await george.run("get", "Paul's phone", "video.mp4", "-o", str(tmp_path / "v.mp4"))
    ls = await george.run("ls", "Paul's phone", "--json")
    for name, r in (("join pin", j1), ("join qr", j2), ("get", got), ("ls", ls)):
        outputs += [(f"{name} stdout", r.out), (f"{name} stderr", r.err)]
    await host.stop()
    host_out = host.results
    host_err = [line for line in host.lines
                if not line.startswith("PIN: ") and "QR code (valid" not in line]
    # A member join: the host's owner grants membership on a terminal; the cloud secret moves.
    m_host, master = await host_with_terminal(lab, paul, "-m", "pin", "--pin", "730529",
                                              "--json", "--share", str(share))
    joining = asyncio.ensure_future(
        ringo.join(m_host.target, "-m", "pin", "--pin", "730529", "--yes", "--json"))
    await answer_prompt(m_host, master, r"asks to join", "m\n")
    member = await joining
    outputs += [("member join stdout", member.out), ("member join stderr", member.err)]
    await m_host.stop()
    outputs += [("host json", "\n".join(host_out + m_host.results)),
                ("host stderr", "\n".join(host_err + [
                    line for line in m_host.lines if not line.startswith("PIN: ")]))]
    for d in (paul, george, ringo):
        for cmd in (("peers", "--json"), ("peers",), ("whoami", "--json"), ("whoami",)):
            r = await d.run(*cmd)
            outputs += [(f"{d.name} {' '.join(cmd)}", r.out + r.err)]
    # The member holds Paul's address key now (scanned for below, as Paul's own copy is).
    assert open_ks(ringo).get_peer("Paul's phone").irk == open_ks(paul).setting("ble_irk")
    secrets = {"qr secret": qr_secret, "Paul's cloud secret": owned_cloud(paul)[1]}
    for d in (paul, george, ringo):
        secrets.update(device_secrets(d))
    leaks = []
    for where, text in outputs:
        for found in find_secrets(text, secrets):
            leaks.append(f"{found} in {where}")
        if where != "host stderr" and re.search(rf"\b{PIN}\b", text):
            leaks.append(f"the PIN in {where}")
    assert member.rc == 0, member
    assert owned_cloud(paul)[0] in {c.cloud_id for c in open_ks(ringo).clouds()}, "no secret moved"
    assert leaks == [], "\n".join(leaks)


def test_sessions_links_and_keystores_show_no_key(tmp_path: Path) -> None:
    for method in (Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME):
        pair = pair_for(method, 400)
        pair.run(answers={"guest": compare_codes, "host": compare_codes})
        for session in (pair.guest.session, pair.host.session):
            assert session is not None
            keys = {"send": session.send_key, "recv": session.recv_key}
            for p in session.new_our_prekeys:
                keys[f"prekey {p.digest.hex()}"] = p.private
            text = repr(session) + str(session) + repr(session.updated_peer(None))

            class _Link:
                mtu = 65535

            text += repr(SecureLink(_Link(), session))  # type: ignore[arg-type]
            assert find_secrets(text, keys) == [], (method.label, find_secrets(text, keys))
        errs = [repr(m.error) for m in (pair.guest, pair.host) if m.error is not None]
        assert errs == []
    del tmp_path


async def test_keystore_repr_shows_no_secret(lab: Lab) -> None:
    paul = lab.device("paul")
    ks = open_ks(paul)
    assert find_secrets(repr(ks) + str(ks), device_secrets(paul)) == []
