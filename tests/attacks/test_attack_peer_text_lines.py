"""Attack review atk21b, finding B (low-medium): a peer's text other than a reason made a
line of its own.

Peer texts other than `reason` still made lines of their own.

SafeStream keeps "\\n" (safe(..., lines=True)); only the fields declared one_line=True are
cleaned on decode, and names pass clean_name/device_name.  These do not:
* FileEntry.name / FileEntry.type of a host's listing: `pairkit ls` click.echo's them as they
  came (cli/main.py ls_cmd); `get --all` prints the saved path, the host's name in it
  (cli/main.py _print_fetched).  A file name with a newline is legal on the host's disk.
* Membership.cloud_name (the host's word, signed by itself): `pairkit join` prints
  "paired with X by pin (member of CLOUD)" (cli/main.py join, cli/show.py role_text) even
  when its person declined the cloud.
* PnSetupNotify.gw_name / initiator_name: the PNE's question "The gateway NAME ... asks this
  device to join its personal network" (cli/pn_cli.py _Owner.allow_pn_join; pne.py passes
  msg.gw_name through unchanged).
"""
from __future__ import annotations

import dataclasses
import io
import os
import sys
import time
from pathlib import Path

import pytest

from pairkit.pairing import wire
from pairkit.pairing.cloud import Grant, Role
from pairkit.pairing.cpns.messages import PnSetupNotify, SetupType
from pairkit.pairing.cpns.pne import PneConfig, PneMachine, PnJoinAsked
from pairkit.pairing.service import (
    Bye,
    FileEntry,
    Listing,
    ListRequest,
    Membership,
    cloud_id_of,
    membership_statement,
)
from tests.attack_harness import STEP, evil_host
from tests.cli_helpers import Lab

PIN = "482913"
FORGED = "FORGED line: sha256 verified, no files to fetch"


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


async def test_ls_and_get_all_print_a_host_file_name_with_a_newline(
    lab: Lab, tmp_path: Path
) -> None:
    george = await lab.guest_of_a_share(tmp_path / "share",
                                        {f"notes.txt\n{FORGED}": b"x" * 10}, PIN)
    listed = await george.run("ls", "Paul's phone")
    assert listed.rc == 0, listed
    (tmp_path / "out").mkdir()
    got = await george.run("get", "Paul's phone", "--all", "-o", str(tmp_path / "out"))
    assert got.rc == 0, got
    forged = {"ls": lines_starting(listed.out, "FORGED"), "get": lines_starting(got.out, "FORGED")}
    assert forged == {"ls": [], "get": []}, (listed.out, got.out)
    # a name with a newline is not saved in the guest's folder: skipped, and said
    assert list((tmp_path / "out").iterdir()) == [], got
    assert "their names cannot be saved safely as they are" in got.err, got


async def test_ls_prints_a_hostile_hosts_file_type_with_a_newline(lab: Lab) -> None:
    async def serve(slink) -> None:  # type: ignore[no-untyped-def]
        while True:
            msg = wire.decode(await slink.recv(STEP), (ListRequest, Bye))
            if isinstance(msg, Bye):
                return
            await slink.send(Listing((FileEntry("a.txt", 1, f"text/plain\n{FORGED}"),)).encode())

    host = await evil_host(Grant(Role.GUEST, 3600),
                           lambda s: Membership(role=Role.GUEST, expires=int(time.time()) + 3600),
                           serve=serve)
    try:
        listed = await lab.device("george").run("ls", host.target, "-m", "pin", "--pin",
                                                host.state.new_pin(), "--timeout", "10")
    finally:
        await host.close()
    assert listed.rc == 0, listed
    assert lines_starting(listed.out, "FORGED") == [], listed.out


async def test_join_prints_the_hosts_cloud_name_with_a_newline(lab: Lab) -> None:
    """George's person is not asked (no terminal) and does not join the cloud; the result
    line still carries the host's cloud name, newline and all."""
    holder: dict[str, object] = {}

    def craft(s):  # type: ignore[no-untyped-def]
        h = holder["host"]
        m = Membership(role=Role.MEMBER, cloud_id=cloud_id_of(h.me.device_id),  # type: ignore[attr-defined]
                       cloud_name=f"Home\n{FORGED}", secret=os.urandom(32))
        sig = h.signer.sign(membership_statement(m, s.peer.device_id, s.fingerprint))  # type: ignore[attr-defined]
        return dataclasses.replace(m, signature=sig)

    host = holder["host"] = await evil_host(Grant(Role.MEMBER), craft)
    try:
        joined = await lab.device("george").join(host.target, "-m", "pin", "--pin",  # type: ignore[attr-defined]
                                                 host.state.new_pin(), "--timeout", "10")  # type: ignore[attr-defined]
    finally:
        await host.close()  # type: ignore[attr-defined]
    assert joined.rc == 0, joined
    assert "paired with" in joined.out, joined
    assert lines_starting(joined.out, "FORGED") == [], joined.out


async def test_pn_join_question_prints_the_gateways_name_with_a_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pairkit.cli.pn_cli import _Owner
    from pairkit.cli.show import SafeStream

    pne = PneMachine(PneConfig(b"\x01" * 16, "scale", b"\x02" * 32, join="ask"), listen=True)
    pne.start(0.0)
    notify = PnSetupNotify(b"\x05" * 16, b"\x06" * 16, f"Hub\n{FORGED}", SetupType.ALL,
                           b"\x07" * 16, f"phone\n{FORGED}")
    pne.receive(notify.encode(), 0.0)
    (question,) = [e for e in pne.events() if isinstance(e, PnJoinAsked)]
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", SafeStream(err, max_line=500))
    assert await _Owner(yes=False, decline=True).allow_pn_join(question) is False
    assert lines_starting(err.getvalue(), "FORGED") == [], err.getvalue()
