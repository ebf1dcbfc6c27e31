"""The advertising policy (issue 15 item 2): fast after start and after a window opens, then slow.

Read from the virtual controller's own state (the HCI parameters the host sent: Core Vol 4
Part E §7.8.5 and §7.8.53, intervals in units of 0.625 ms), never by timing.  The fast period is
configured short (``fast_advertising_seconds``) and each wait has a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pairkit.cli.config import advertising_options, load_policy
from pairkit.cli.flows import HostOptions, _advertising_kwargs
from pairkit.pairing.errors import ConfigError
from pairkit.pairing.keystore import Keystore
from pairkit.pairing.negotiation import Method
from pairkit.presence import Presence
from pairkit.transports.bumble import BumbleConfig, BumbleTransport, VirtualRadio, open_bumble

from .ble_harness import World, eventually

pytestmark = pytest.mark.timeout(30)

FAST_UNITS = 32  # 20 ms / 0.625 ms
SLOW_UNITS = 1600  # 1000 ms / 0.625 ms
HELLO = bytes(range(10))


def controller_interval(transport: BumbleTransport) -> int | None:
    """The advertising interval the controller runs, in 0.625 ms units (None: not advertising).

    bumble sends legacy advertising as an extended advertising set with legacy PDUs when the
    controller has the extended commands (the virtual one does), else the legacy commands.
    """
    controller = transport.controller
    assert controller is not None
    advertiser = controller.le_legacy_advertiser
    if advertiser.enabled:
        assert advertiser.advertising_interval_min == advertiser.advertising_interval_max
        return int(advertiser.advertising_interval_min)
    running = [s for s in controller.advertising_sets.values() if s.enabled and s.parameters]
    if not running:
        return None
    (adv_set,) = running
    assert adv_set.parameters is not None
    low = adv_set.parameters.primary_advertising_interval_min
    assert low == adv_set.parameters.primary_advertising_interval_max
    return int(low)


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    yield VirtualRadio()


async def test_fast_then_slow_then_fast_again_when_asked(radio: VirtualRadio) -> None:
    host = await open_bumble("virtual", radio=radio, fast_advertising_seconds=0.3)
    try:
        await host.start_advertising(HELLO)
        assert controller_interval(host) == FAST_UNITS
        await eventually(lambda: controller_interval(host) == SLOW_UNITS, within=5)
        # A visibility window opens: fast again, at once, then slow again.
        await host.advertise_fast()
        assert controller_interval(host) == FAST_UNITS
        await eventually(lambda: controller_interval(host) == SLOW_UNITS, within=5)
        # Rotation keeps the rate it found.
        await host.rotate_address()
        assert controller_interval(host) == SLOW_UNITS
    finally:
        await host.close()


async def test_extended_advertising_follows_the_same_policy(radio: VirtualRadio) -> None:
    host = await open_bumble(
        "virtual", radio=radio, extended_advertising=True, fast_advertising_seconds=0.3,
        slow_advertising_interval_ms=500.0,
    )
    try:
        await host.start_advertising(HELLO)
        assert controller_interval(host) == FAST_UNITS
        await eventually(lambda: controller_interval(host) == 800, within=5)
    finally:
        await host.close()


async def test_advertising_started_after_the_fast_period_is_slow(radio: VirtualRadio) -> None:
    host = await open_bumble("virtual", radio=radio, fast_advertising_seconds=0.0)
    try:
        await eventually(lambda: host.advertising_interval_ms == 1000.0, within=5)
        await host.start_advertising(HELLO)
        assert controller_interval(host) == SLOW_UNITS
        await host.stop_advertising()
        assert controller_interval(host) is None
        # Asking for fast while not advertising starts nothing.
        await host.advertise_fast()
        assert controller_interval(host) is None
    finally:
        await host.close()


async def test_always_fast_when_configured(radio: VirtualRadio) -> None:
    host = await open_bumble("virtual", radio=radio, fast_advertising_seconds=None)
    try:
        await host.start_advertising(HELLO)
        assert controller_interval(host) == FAST_UNITS
        assert host.advertising_interval_ms == 20.0
    finally:
        await host.close()


async def test_a_guest_connecting_does_not_speed_a_slow_host_up(world: World) -> None:
    """A stranger cannot keep a host on the fast (power-hungry) rate by connecting to it:
    advertising resumes after a connection at the rate the policy says."""
    host = await world.device(fast_advertising_seconds=0.2)
    guest = await world.device()
    await host.start_advertising(HELLO)
    await eventually(lambda: controller_interval(host) == SLOW_UNITS, within=5)
    link = await guest.connect(host.address, timeout=5)
    # The host advertises again (for more guests), still slowly.
    await eventually(lambda: controller_interval(host) is not None, within=5)
    assert controller_interval(host) == SLOW_UNITS
    await link.close()


async def test_opening_a_window_makes_the_host_fast_again(world: World, paul: Keystore) -> None:
    host = await world.device(fast_advertising_seconds=0.2)
    presence = Presence(host, paul, frozenset({Method.PIN}), visible_for=None)
    await presence.start()
    await eventually(lambda: controller_interval(host) == SLOW_UNITS, within=5)
    await presence.open_window(60)
    assert controller_interval(host) == FAST_UNITS
    await presence.stop()


@pytest.mark.parametrize(
    "options",
    [
        {"slow_advertising_interval_ms": 10.0},
        {"slow_advertising_interval_ms": 20000.0},
        {"advertising_interval_ms": 100.0, "slow_advertising_interval_ms": 50.0},
        {"fast_advertising_seconds": -1.0},
        {"fast_advertising_seconds": float("nan")},
    ],
)
def test_bad_advertising_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        BumbleConfig(**options)


def test_policy_keys_reach_the_bumble_transport_only(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        "[host]\nadvertise_fast_ms = 30\nadvertise_slow_ms = 2000\nadvertise_fast_seconds = 10\n"
    )
    policy = load_policy(tmp_path / "keystore")["host"]
    options = advertising_options(policy)
    assert options == {
        "advertising_interval_ms": 30.0,
        "slow_advertising_interval_ms": 2000.0,
        "fast_advertising_seconds": 10.0,
    }
    BumbleConfig(**options)  # a valid configuration
    on_ble = HostOptions(transport="bumble:virtual", methods=frozenset(), advertising=options)
    assert _advertising_kwargs(on_ble) == options
    on_tcp = HostOptions(transport="tcp:127.0.0.1:0", methods=frozenset(), advertising=options)
    assert _advertising_kwargs(on_tcp) == {}


@pytest.mark.parametrize(
    "line", ["advertise_slow_ms = 0", "advertise_fast_seconds = -1", 'advertise_fast_ms = "x"',
             "advertise_fast_ms = 5", "advertise_slow_ms = 20000",
             "advertise_fast_ms = 500\nadvertise_slow_ms = 100"]
)
def test_bad_policy_values_are_refused(tmp_path: Path, line: str) -> None:
    (tmp_path / "config.toml").write_text(f"[host]\n{line}\n")
    with pytest.raises(ConfigError, match="advertise_") as caught:
        load_policy(tmp_path / "keystore")
    assert "_interval_" not in str(caught.value)  # the file's words, not the radio's fields
