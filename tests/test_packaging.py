"""Packaging (issue 12): installing pairkit adds exactly one top-level import name, ``pairkit``,
with the repository's folders as its subpackages; the pytest plugin stays cheap to import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy without build/: setuptools keeps build/lib between builds, so a file
    # moved away since the last build would still be packed from there.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", "build", "dist", "*.egg-info", ".git", "__pycache__", ".hypothesis",
    ))
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = out.glob("pairkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"pairkit"}, tops
    for path in ("pairkit/__init__.py", "pairkit/py.typed", "pairkit/pairing/methods/__init__.py",
                 "pairkit/transports/ble/links.py", "pairkit/pairing/cpns/gateway.py",
                 "pairkit/transports/bleak_bumble/client.py",
                 "pairkit/keyserver/__init__.py", "pairkit/keyserver/__main__.py",
                 "pairkit/keyserver/server.py", "pairkit/keyserver/store.py",
                 "pairkit/keyserver/certs.py", "pairkit/ttp.py", "pairkit/cli/main.py"):
        assert path in names, path
    assert not any(n.startswith(("tests/", "bench/", "hw-tests/")) for n in names)
    # the key server is not under the CLI any more (issue 12)
    assert not any(n.startswith("pairkit/cli/ttp_") and n != "pairkit/cli/ttp_cli.py"
                   for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA")))
    assert b"License-Expression: Apache-2.0" in metadata
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "pairkit = pairkit.cli:main" in text
    assert "pairkit = pairkit.transports.pytest_plugin" in text


def test_the_old_top_level_names_are_gone(tmp_path: Path) -> None:
    """Run from elsewhere (not the repository root), only ``pairkit`` is importable."""
    code = (
        "import importlib.util, pairkit.pairing.methods, pairkit.transports, pairkit.cli,"
        " pairkit.keyserver;"
        "print([n for n in ('pairing', 'transports', 'cli', 'keyserver')"
        " if importlib.util.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_the_pytest_plugin_imports_neither_bumble_nor_bleak(tmp_path: Path) -> None:
    code = (
        "import sys, pairkit.transports.pytest_plugin;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'bumble', 'bleak'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"
