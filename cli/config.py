"""The owner's policy: ``config.toml`` beside the keystore (``$PAIRKIT_HOME/config.toml``).

Flags always win; the file gives the defaults a device should start with, e.g. a Raspberry Pi
that should be discoverable whenever its host starts::

    [host]
    transport = "bumble:hci-socket:0"
    visible = 600            # open a visibility window of 600 s at every start
    share = "~/Videos"
    methods = ["pin", "qr", "resume"]
    guest_hours = 2
    advertise_fast_ms = 20        # BLE (bumble): fast advertising for the first
    advertise_fast_seconds = 30   # 30 s after start and after a visibility window opens,
    advertise_slow_ms = 1000      # then slow

    [pace]                        # BLE (bumble host): faster links while a file goes out
    enabled = true
    burst_bytes = 8192            # bytes sent without a pause that make a transfer
    relax_after = 1.0             # seconds without sending before the link relaxes
    fast_interval_ms = [15, 15]   # connection interval (min, max) while fast ...
    relaxed_interval_ms = [30, 50]  # ... and after

    [discover]
    transport = "bumble:usb:0"
    timeout = 5

    [defaults]
    transport = "bumble:tcp-client:127.0.0.1:7001"   # every command's, unless its section says

The transport a command uses when ``-t`` is not given is chosen the same way everywhere
(:func:`default_transport`): its own section's ``transport``, then ``[defaults] transport``, then
the environment's ``PAIRKIT_TRANSPORT``, then :data:`DEFAULT_TRANSPORT`; ``pairkit whoami``
prints the result and where it came from.

Unknown sections or keys, or values of the wrong type, are refused with a message naming them:
a typo in a policy must not silently leave a device private (or public).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pairkit.pairing.errors import ConfigError
from pairkit.smallfile import MAX_CONFIG_FILE, read_small_file

FILE_NAME = "config.toml"

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "host": {
        "transport": str,
        "visible": (int, float),
        "share": str,
        "methods": list,
        "guest_hours": (int, float),
        "timeout": (int, float),
        "advertise_fast_ms": (int, float),
        "advertise_slow_ms": (int, float),
        "advertise_fast_seconds": (int, float),
    },
    "pace": {
        "enabled": bool,
        "burst_bytes": int,
        "relax_after": (int, float),
        "fast_interval_ms": list,
        "relaxed_interval_ms": list,
        "peripheral_latency": int,
        "supervision_timeout_ms": (int, float),
        "phy_2m": bool,
        "request_timeout": (int, float),
    },
    "discover": {"transport": str, "timeout": (int, float)},
    "join": {"transport": str, "timeout": (int, float)},
    "defaults": {"transport": str},
}

#: settings that are true or false (every other setting refuses true and false)
_FLAGS = frozenset({("pace", "enabled"), ("pace", "phy_2m")})

#: the transport of every command when neither -t, config.toml nor PAIRKIT_TRANSPORT names one:
#: the first USB Bluetooth dongle (pairkit is a BLE toolkit; TCP is named: -t tcp:HOST:PORT)
DEFAULT_TRANSPORT = "bumble:usb:0"
#: the environment variable that names the default transport
ENV_TRANSPORT = "PAIRKIT_TRANSPORT"


def config_path(keystore_path: Path) -> Path:
    return keystore_path.parent / FILE_NAME


def load_policy(keystore_path: Path) -> dict[str, dict[str, Any]]:
    """The checked policy, or empty sections when there is no file."""
    path = config_path(keystore_path)
    policy: dict[str, dict[str, Any]] = {section: {} for section in _SCHEMA}
    if not path.exists():
        return policy
    # sized before it is read: a link from it to a FIFO, /dev/zero or a huge file is refused
    # (atk21 finding 6)
    raw = read_small_file(path, MAX_CONFIG_FILE, "pairkit's settings (TOML)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for section, values in data.items():
        if section not in _SCHEMA or not isinstance(values, dict):
            known = ", ".join(f"[{s}]" for s in _SCHEMA)
            raise ConfigError(f"{path}: unknown section [{section}]; known: {known}")
        for key, value in values.items():
            kind = _SCHEMA[section].get(key)
            if kind is None:
                known = ", ".join(_SCHEMA[section])
                raise ConfigError(f"{path}: [{section}] has no setting {key!r}; known: {known}")
            if (isinstance(value, bool) and (section, key) not in _FLAGS) or not isinstance(
                value, kind
            ):
                if kind is bool:
                    raise ConfigError(f"{path}: [{section}] {key} must be true or false "
                                      f"(not {value!r})")
                raise ConfigError(f"{path}: [{section}] {key} has the wrong type ({value!r})")
            if key in ("visible", "guest_hours", "timeout", "advertise_fast_ms",
                       "advertise_slow_ms") and value <= 0:
                raise ConfigError(f"{path}: [{section}] {key} must be positive")
            if key == "advertise_fast_seconds" and value < 0:
                raise ConfigError(f"{path}: [{section}] {key} must be 0 or more")
            if key in ("advertise_fast_ms", "advertise_slow_ms") and not 20 <= value <= 10240:
                # checked here, in the file's words (the radio's own check names its fields)
                raise ConfigError(f"{path}: [{section}] {key} must be from 20 to 10240 (ms)")
            if key == "methods" and not all(isinstance(m, str) for m in value):
                raise ConfigError(f"{path}: [{section}] methods is a list of method names")
            if key == "share":
                value = str(Path(value).expanduser())
            policy[section][key] = value
    host = policy["host"]
    if host.get("advertise_slow_ms", 10240) < host.get("advertise_fast_ms", 20):
        raise ConfigError(f"{path}: [host] advertise_slow_ms must be at least advertise_fast_ms")
    if policy["pace"]:
        # Checked now, in the file's words, so that a bad value stops every command at once.
        _pace_config(path, policy["pace"])
    return policy


def _pace_config(path: Path, values: dict[str, Any]) -> Any:
    """The [pace] section as the bumble host's :class:`~transports.ble.pace.PaceConfig` (None:
    ``enabled = false``, the host never asks); a bad value is a ConfigError naming it."""
    from pairkit.transports.ble.pace import PaceConfig

    fields = dict(values)
    if not fields.pop("enabled", True):
        return None
    for key in ("fast_interval_ms", "relaxed_interval_ms"):
        if key in fields:
            pair = fields[key]
            if len(pair) != 2 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in pair
            ):
                raise ConfigError(f"{path}: [pace] {key} must be [min, max] in ms, e.g. [15, 15]")
            fields[key] = (float(pair[0]), float(pair[1]))
    for key in ("relax_after", "supervision_timeout_ms", "request_timeout"):
        if key in fields:
            fields[key] = float(fields[key])
    try:
        return PaceConfig(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [pace] {exc}") from None


def pace_options(policy: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The bumble host's ``pace`` option when config.toml has a [pace] section (else nothing:
    the transport's default pace)."""
    section = policy.get("pace", {})
    return {"pace": _pace_config(Path(FILE_NAME), section)} if section else {}


#: [host] policy keys -> the bumble transport's options (transports.bumble.BumbleConfig)
ADVERTISING_KEYS = {
    "advertise_fast_ms": "advertising_interval_ms",
    "advertise_slow_ms": "slow_advertising_interval_ms",
    "advertise_fast_seconds": "fast_advertising_seconds",
}


def advertising_options(policy: dict[str, Any]) -> dict[str, float]:
    """The bumble advertising options a [host] policy sets (the advertising policy)."""
    return {option: float(policy[key]) for key, option in ADVERTISING_KEYS.items() if key in policy}


def pick(flag: Any, policy: dict[str, Any], key: str, default: Any) -> Any:
    """The flag if given, else the policy's value, else the built-in default."""
    if flag is not None and flag != ():
        return flag
    return policy.get(key, default)


def default_transport(
    policy: dict[str, dict[str, Any]], section: str | None = None
) -> tuple[str, str]:
    """(transport, where it came from) when ``-t`` is not given: ``[section] transport``, then
    ``[defaults] transport`` in config.toml, then ``PAIRKIT_TRANSPORT``, then
    :data:`DEFAULT_TRANSPORT`.  A PAIRKIT_TRANSPORT that names no transport is a usage error
    naming it."""
    import os

    from pairkit.transports.registry import parse_transport

    if section is not None and policy.get(section, {}).get("transport"):
        return policy[section]["transport"], f"config.toml [{section}]"
    if policy.get("defaults", {}).get("transport"):
        return policy["defaults"]["transport"], "config.toml [defaults]"
    env = os.environ.get(ENV_TRANSPORT, "").strip()
    if env:
        try:
            parse_transport(env)
        except ConfigError as exc:
            raise ConfigError(f"{ENV_TRANSPORT}: {exc}") from None
        return env, ENV_TRANSPORT
    return DEFAULT_TRANSPORT, "built-in default"
