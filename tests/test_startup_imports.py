"""Start-up and packaging behaviour of the ``pairkit`` command (issue 12, items 6 and 7).

``pairkit --help`` and ``--version`` import click and nothing heavy (no cryptography, cbor2,
asyncio, bumble, bleak, Pillow): checked through ``sys.modules`` in a fresh interpreter, never by
timing (bench/startup.py measures the time).  The ``group`` and ``ttp`` commands are listed from a
static table: its one-line help must be the commands' own.  Pictures of QR codes need the
optional extra ``qr``; without it the CLI says how to install it, with no traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

import pairkit
from pairkit.cli.main import LAZY_COMMANDS, cli

#: modules that ``pairkit --help`` and ``--version`` must not import
HEAVY = ("cryptography", "cbor2", "asyncio", "bumble", "bleak", "bleak_retry_connector", "PIL",
         "zxingcpp", "qrcode", "platformdirs", "pairkit.pairing.keystore",
         "pairkit.pairing.methods", "pairkit.cli.common", "pairkit.cli.group_cli",
         "pairkit.cli.ttp_cli")


def loaded_after(args: list[str], *, preload: bool = False) -> tuple[str, set[str]]:
    """Run ``pairkit ARGS`` in a fresh interpreter; its output and the modules it imported.

    ``preload`` loads every lazily listed command first (as after running one of them).
    """
    code = (
        "import sys, json\n"
        "import click\n"
        "from pairkit.cli.main import LAZY_COMMANDS, cli\n"
        f"if {preload!r}:\n"
        "    for name in LAZY_COMMANDS: cli.get_command(click.Context(cli), name)\n"
        "try:\n"
        f"    cli({args!r}, prog_name='pairkit')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)),"
        " file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, env=env)
    return done.stdout, set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["-h"]])
def test_help_and_version_import_nothing_heavy(args: list[str]) -> None:
    out, modules = loaded_after(args)
    assert out.startswith(("Usage: pairkit", "pairkit, version"))
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []


def test_a_command_still_loads_what_it_needs() -> None:
    """The check above can fail: running a real command's help imports its module."""
    _, modules = loaded_after(["ttp", "--help"])
    assert "pairkit.cli.ttp_cli" in modules and "cryptography" in modules


def test_version_is_the_package_version() -> None:
    out, _ = loaded_after(["--version"])
    assert out == f"pairkit, version {pairkit.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", pairkit.__version__)


def test_the_version_is_the_installed_distributions() -> None:
    """pyproject.toml reads the version from pairkit.__version__ (no second copy to forget)."""
    from importlib.metadata import version

    assert version("pairkit") == pairkit.__version__


def test_the_static_table_matches_the_commands() -> None:
    """Every command is listed by ``--help``, with the one-line help the command itself has."""
    import importlib

    ctx = click.Context(cli, info_name="pairkit")
    for name, (module, attr, line) in LAZY_COMMANDS.items():
        command = getattr(importlib.import_module(module), attr)
        assert command.name == name
        stand_in = click.Command(name, help=line)  # what ``pairkit --help`` lists
        for width in (30, 45, 80, 200):
            assert stand_in.get_short_help_str(width) == command.get_short_help_str(width), name
    listed = cli.list_commands(ctx)
    assert set(LAZY_COMMANDS) <= set(listed)
    for name in listed:
        assert cli.get_command(ctx, name) is not None, name


def test_help_lists_the_same_whether_or_not_commands_are_loaded() -> None:
    cold, cold_modules = loaded_after(["--help"])
    loaded, loaded_modules = loaded_after(["--help"], preload=True)
    assert "pairkit.cli.ttp_cli" not in cold_modules and "pairkit.cli.ttp_cli" in loaded_modules
    assert cold == loaded
    for name in LAZY_COMMANDS:
        assert re.search(rf"^  {name} +\S", cold, re.MULTILINE), name


# -- the optional extra qr ----------------------------------------------------------------------


def run_blocked(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("blocked", [("PIL",), ("zxingcpp",)])
def test_reading_a_qr_picture_without_the_extra_says_how_to_install_it(
    tmp_path: Path, blocked: tuple[str, ...]
) -> None:
    picture = tmp_path / "qr.png"
    picture.write_bytes(b"not really a picture")
    code = (
        "from pairkit.cli.store import qr_from_image\n"
        "from pairkit.pairing.errors import ConfigError\n"
        "try:\n"
        f"    qr_from_image({str(picture)!r})\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = run_blocked(code, blocked)
    assert done.returncode == 0, done.stderr
    missing = {"PIL": "Pillow", "zxingcpp": "zxing-cpp"}[blocked[0]]
    assert done.stdout.strip() == (
        f"reading a QR code from a picture (--qr-image) needs {missing}, which is not "
        "installed: pip install 'pairkit[qr]'"
    )


def test_writing_a_qr_picture_without_pillow_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from pairkit.cli.store import qr_png\n"
        "from pairkit.pairing.errors import ConfigError\n"
        "try:\n"
        f"    qr_png('pairkit:qr?v=1', Path({str(tmp_path / 'out.png')!r}))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = run_blocked(code, ("PIL",))
    assert done.returncode == 0, done.stderr
    assert "pip install 'pairkit[qr]'" in done.stdout and "Pillow" in done.stdout
    assert not (tmp_path / "out.png").exists()


def test_the_cli_maps_the_missing_extra_to_an_exit_code(tmp_path: Path) -> None:
    """``pairkit join --qr-image`` without Pillow: exit 2 and one line, no traceback."""
    picture = tmp_path / "qr.png"
    picture.write_bytes(b"\x89PNG")
    code = (
        "from pairkit.cli.main import main\n"
        f"sys.argv = ['pairkit', 'join', 'tcp:127.0.0.1:9', '--qr-image', {str(picture)!r}]\n"
        "main()\n"
    )
    env_home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nsys.modules['PIL'] = None\n" + code],
        capture_output=True, text=True, timeout=60,
        env={**_clean_env(), "PAIRKIT_HOME": str(env_home)},
    )
    assert done.returncode == 2, done
    assert done.stderr == (
        "error: reading a QR code from a picture (--qr-image) needs Pillow, which is not "
        "installed: pip install 'pairkit[qr]'\n"
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PAIRKIT_")}


# -- the console script's own answers (no click) ------------------------------------------------


def script_modules(args: list[str], env: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """Run the console script's ``main`` with ``args``; its output and the modules it imported."""
    code = (
        "import sys, json\n"
        f"sys.argv = ['pairkit', *{args!r}]\n"
        "from pairkit.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)),"
        " file=sys.stderr)\n"
    )
    run_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    run_env.update(env or {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, env=run_env)
    return done.stdout, set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"]])
def test_the_script_answers_help_and_version_without_click(args: list[str]) -> None:
    out, modules = script_modules(args)
    assert "click" not in modules and "pairkit.cli.main" not in modules
    assert out.startswith(("Usage: pairkit", "pairkit, version"))


def test_the_kept_help_is_clicks_own() -> None:
    """Change a command's help and this fails until `python -m pairkit.cli._help` is run."""
    from pairkit.cli._help import HELP, render

    assert render() == HELP
    out, _ = loaded_after(["--help"])
    assert out == HELP


def test_a_narrow_terminal_gets_clicks_layout() -> None:
    from pairkit.cli._help import HELP

    out, modules = script_modules(["--help"], {"COLUMNS": "60"})
    assert "click" in modules
    assert out.startswith("Usage: pairkit") and out != HELP  # laid out again for 60 columns
