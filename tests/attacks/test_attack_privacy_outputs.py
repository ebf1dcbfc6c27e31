"""Attack review atk19p: no secret of the private broadcast in the outputs of the commands
that make and read it (docs/security.md rule 8; checked, found sound).

A private ``pairkit host`` on a radio process and a member's ``pairkit discover`` (which
recognises the host by its tag, groups its addresses by its address key, and connects to
ask it its name), both with ``--json`` and ``--trace``: the host's address key,
its cloud secret and the hello-tag key derived from it appear in no stdout, no stderr and no
HCI trace, in any of the forms a reader would find them in (bytes either way round, hex).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pairkit.keystore import FILE_NAME, Keystore, Peer
from pairkit.presence import identity_resolving_key, tag_keys
from tests.cli_helpers import KEYSTORE_PIN, Lab, radio_process

pytestmark = pytest.mark.timeout(120)


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret[::-1], secret.hex().encode(), secret.hex().upper().encode()]


async def test_host_and_a_members_discover_print_and_trace_no_broadcast_secret(
    lab: Lab, tmp_path: Path
) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    paul_ks = Keystore.open(paul.home / FILE_NAME, KEYSTORE_PIN)
    george_ks = Keystore.open(george.home / FILE_NAME, KEYSTORE_PIN)
    (cloud,) = [c for c in paul_ks.clouds() if c.role == "owner"]
    secret = paul_ks._cloud_secret_for_new_member(cloud.cloud_id)
    irk = identity_resolving_key(paul_ks)
    with george_ks.update():  # George is a member of Paul's cloud, holding Paul's address key
        george_ks.set_cloud(cloud.cloud_id, secret, name=cloud.name, role="member")
        george_ks.add_peer(dataclasses.replace(
            Peer.new("Paul's phone", paul_ks.static_public, now=1), irk=irk))
    secrets = {"address key": irk, "cloud secret": secret,
               "hello-tag key": tag_keys(paul_ks)[cloud.cloud_id]}
    traces = {side: tmp_path / f"{side}.btsnoop" for side in ("host", "discover")}
    async with radio_process(2) as radios:
        host = await lab.host(paul, "--trace", str(traces["host"]), "--method", "pin",
                              "--method", "resume", "--json", transport=radios[0])
        found = (await george.run("discover", "-t", radios[1], "--timeout", "1", "--json",
                                  "--trace", str(traces["discover"]))).ok()
        await host.stop()
    (row,) = found.json()["devices"]
    assert row["cloud"] == cloud.name and row["device"]["name"] == "Paul's phone"
    assert "asked who this host is" in host.stderr  # a connection: the traces hold a link
    outputs = {
        "host's stdout": "\n".join(host.results).encode(),
        "host's stderr": host.stderr.encode(),
        "discover's stdout": found.out.encode(),
        "discover's stderr": found.err.encode(),
        **{f"{side}'s trace": path.read_bytes() for side, path in traces.items()},
    }
    leaks = [f"{what} in {where}" for what, value in secrets.items()
             for where, text in outputs.items() if any(f in text for f in _forms(value))]
    assert leaks == []
