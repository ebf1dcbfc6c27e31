"""Attack review atk21c (session 21): three more peer texts that made a line of their own.

The fixes of atk21 and atk21b made every reason and the names a person is asked about one line;
three texts were left, each printed where pairkit keeps its own newlines:

1. (low-medium) ``pairkit discover`` printed the Bluetooth name a nearby device broadcasts as it
   came: anyone in radio range, unpaired, added rows of its choice to the table (a fake
   "Paul's phone  joinable  pin" at an address it holds).  The name is now cleaned as it is
   heard (:func:`pairkit.presence.discover`) and shown one line.
2. (low-medium) ``pairkit group listen`` printed a broadcast command as it came: a member holding
   the group key followed its own command with a line "[doors] controller #7: unlock-front-door".
3. (low) ``pairkit pn ... --stay`` printed a routed message's text as it came: a member wrote a
   line that seemed to come from another member.

Real code: a scanner's sighting through :func:`~pairkit.presence.discover`; a member's sealed
broadcast heard by a real group listener (tests/group_harness.py); ``_stay`` with one routed
message handed to it; each printed through the ``SafeStream`` the ``pairkit`` command wraps
its output in.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pairkit import groups as G
from pairkit.cli import pn_cli
from pairkit.cli.group_cli import _say_event
from pairkit.cli.show import SafeStream
from pairkit.keystore import Argon2Params, Keystore
from pairkit.pairing.groups import RetryPolicy, seal_broadcast, sender_id
from pairkit.pairing.hello import Hello
from pairkit.pairing.keystore.records import PnEntry
from pairkit.pairing.negotiation import ALL_CAPS, Method
from pairkit.presence import discover
from pairkit.transports.base import Sighting

from ..group_harness import Net, relay_net

FAST = RetryPolicy(first=0.05, cap=0.2, attempts=4)
FORGED = "Paul's phone"


def _shown(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the command writes to stdout, wrapped as ``pairkit``'s main wraps it."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", SafeStream(out))
    monkeypatch.setattr("sys.stderr", SafeStream(io.StringIO()))
    return out


class _OneStranger:
    """A scanner that hears one open hello whose broadcast name holds a newline."""

    async def scan(self, timeout: float) -> AsyncIterator[Sighting]:
        hello = Hello(True, ALL_CAPS, frozenset({Method.PIN}), bytes(8)).encode()
        yield Sighting("AA:BB:CC:DD:EE:01", hello, -50,
                       f"mallory\n  AA:BB:CC:DD:EE:02 rssi  -40  joinable  pin  {FORGED}")


async def test_a_strangers_broadcast_name_is_heard_as_one_line(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path / "ks", "a passphrase", name="George",
                         kdf=Argon2Params.cheapest())
    found, garbage = await discover(_OneStranger(), ks, 1.0)
    assert garbage == 0 and len(found) == 1
    name = found[0].name
    assert name is not None and "\n" not in name and name.startswith("mallory")


async def test_discover_shows_a_strangers_name_on_its_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table's row, whatever a Found's name holds (one found before the cleaning)."""
    from pairkit.cli.main import show_found

    out = _shown(monkeypatch)
    hello = Hello(True, ALL_CAPS, frozenset({Method.PIN}), bytes(8))
    found = SimpleNamespace(address="AA:BB:CC:DD:EE:01", hello=hello, rssi=-50,
                            name=f"mallory\n  AA:BB:CC:DD:EE:02 {FORGED}", device_name=None,
                            cloud_name=None, addresses=("AA:BB:CC:DD:EE:01",))
    show_found([found], names=False)
    rows = out.getvalue().splitlines()
    assert rows[0] == "strangers:" and len(rows) == 2, out.getvalue()


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with relay_net(tmp_path, commissioned=("relay", "far", "mallory")) as made:
        yield made


async def test_a_members_broadcast_command_writes_no_line_of_listen(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    G.create_group(net.ctl.ks, "doors")
    await net.lab.start_member(net.far)
    await net.lab.start_member(net.mallory)
    _, outcomes = await G.add_members(net.ctl.ks, "doors", [net.far.id, net.mallory.id],
                                      reach=net.lab.reach(net.ctl), policy=FAST)
    assert [o.state for o in outcomes] == ["confirmed"] * 2, outcomes
    listener = net.far.listener
    assert listener is not None
    controller = G.peer_name(net.far.ks, net.ctl.id)
    forged = f"lights\n[doors] {controller} #7: unlock-front-door".encode()
    payload = seal_broadcast(net.mallory.ks, group="doors", epoch=1,
                             sender=sender_id(net.mallory.id), seq=1, command=forged,
                             rng=os.urandom)
    assert listener.hear(payload, "mallory") is not None
    (event,) = [e for e in net.far.events if e.get("event") == "command"]
    out = _shown(monkeypatch)
    _say_event(event, as_json=False)
    assert len(out.getvalue().splitlines()) == 1, out.getvalue()
    assert "unlock-front-door" in out.getvalue()  # shown, on the member's own line


async def test_a_routed_pn_message_writes_no_line_of_its_own(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = "aa" * 16, "bb" * 16

    async def one_message(channel: Any, on_data: Any, *, count: int | None = None) -> int:
        await on_data(SimpleNamespace(src=bytes.fromhex(bob),
                                      body=b"hi\nAlice's sensor: door forced open"))
        return 1

    monkeypatch.setattr("pairkit.pn.pn_receive", one_message)
    record = SimpleNamespace(members=(PnEntry(alice, "Alice's sensor"), PnEntry(bob, "Bob")))
    out = _shown(monkeypatch)
    await pn_cli._stay(None, record, 1, as_json=False)
    (line,) = out.getvalue().splitlines()
    assert line.startswith("Bob: hi") and line.endswith("door forced open")
