"""The layering as a contract (issue 12, DESIGN.md): ``cli`` above the key server
(``keyserver/``, a server of its own), the key server above the runtime (``runtime/``: the
asyncio driver, secure link and the key server's client), the runtime above ``transports``,
``transports`` above ``pairing``; ``pairing`` imports no asyncio, socket, clock, click, bumble or
bleak, and does no file I/O (no ``open``, no ``os`` but ``os.urandom``, no ``fcntl``: the
keystore writes through a Storage the runtime provides); and the key server imports neither the
CLI nor click (the CLI may import it).

import-linter cannot check this layout: its graph builder walks the root package's folder, and
pairkit's subpackages live beside that folder (setuptools ``package-dir``).  So this test reads
every module's imports (``ast``, at any depth: a lazy import inside a function counts too) and
checks them against the same rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: folder -> the pairkit module prefix it installs as, highest layer first
LAYERS = [
    ("cli", "pairkit.cli"),
    ("keyserver", "pairkit.keyserver"),
    ("runtime", "pairkit"),  # pairkit.driver, pairkit.securelink, pairkit.ttp, ...
    ("transports", "pairkit.transports"),
    ("pairing", "pairkit.pairing"),
]
RUNTIME = [folder for folder, _ in LAYERS].index("runtime")
KEYSERVER = [folder for folder, _ in LAYERS].index("keyserver")
PURE_FORBIDDEN = {
    "asyncio", "socket", "time", "click", "bumble", "bleak",
    # no file I/O either: the keystore's bytes go through a Storage the runtime provides
    "fcntl", "tempfile", "pathlib", "shutil", "platformdirs", "io", "stat", "threading",
    "subprocess", "select", "signal",
}
#: the one use of ``os`` the core may make: a default randomness source, injected everywhere
PURE_OS_ALLOWED = {"urandom"}
#: the key server is a server, not a command: no click (nor pairkit.cli, by its layer)
KEYSERVER_FORBIDDEN = {"click"}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a pairkit module (None for anything else)."""
    if module == "pairkit" or not module.startswith("pairkit."):
        return RUNTIME if module == "pairkit" else None
    for i, (_, prefix) in enumerate(LAYERS):
        if prefix != "pairkit" and (module == prefix or module.startswith(prefix + ".")):
            return i
    return RUNTIME  # pairkit.<runtime module>


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
    return out


def modules() -> list[tuple[int, Path, str]]:
    out = []
    for i, (folder, prefix) in enumerate(LAYERS):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            package = ".".join([prefix, *parts[:-1]]) if path.name != "__init__.py" else ".".join(
                [prefix, *parts]
            )
            out.append((i, path, package))
    return out


MODULES = modules()


@pytest.mark.parametrize(("layer", "path", "package"), MODULES,
                         ids=[str(p.relative_to(ROOT)) for _, p, _ in MODULES])
def test_no_module_imports_a_higher_layer(layer: int, path: Path, package: str) -> None:
    assert higher_imports(path, layer, package) == []


def higher_imports(path: Path, layer: int, package: str) -> list[str]:
    """``file:line imports module`` for each import of a layer above ``layer``."""
    return [
        f"{path.name}:{line} imports {module}, a higher layer"
        for line, module in imports_of(path, package)
        if (target := layer_of(module)) is not None and target < layer
    ]


def forbidden_imports(path: Path, package: str, forbidden: set[str]) -> list[str]:
    """``file:line imports module`` for each import of a top-level name in ``forbidden``."""
    return [
        f"{path.name}:{line} imports {module}"
        for line, module in imports_of(path, package)
        if module.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize(("layer", "path", "package"),
                         [m for m in MODULES if m[0] == len(LAYERS) - 1],
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_pairing_is_pure(layer: int, path: Path, package: str) -> None:
    assert forbidden_imports(path, package, PURE_FORBIDDEN) == []
    assert io_uses(path) == []


def io_uses(path: Path) -> list[str]:
    """``file:line uses X`` for each use of the file system or the process in ``path``: the
    builtin ``open``, and any ``os`` name but :data:`PURE_OS_ALLOWED` (``os.path``, ``os.environ``,
    ``os.replace``, ``from os import ...``)."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Name) and func.id == "open":
            out.append(f"{path.name}:{node.lineno} uses open()")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "os" and node.attr not in PURE_OS_ALLOWED):
            out.append(f"{path.name}:{node.lineno} uses os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and not node.level:
            out.extend(f"{path.name}:{node.lineno} uses os.{a.name}" for a in node.names
                       if a.name not in PURE_OS_ALLOWED)
    return out


KEYSERVER_MODULES = [m for m in MODULES if m[0] == KEYSERVER]


@pytest.mark.parametrize(("layer", "path", "package"), KEYSERVER_MODULES,
                         ids=[str(p.relative_to(ROOT)) for _, p, _ in KEYSERVER_MODULES])
def test_the_key_server_imports_neither_the_cli_nor_click(layer: int, path: Path,
                                                         package: str) -> None:
    assert forbidden_imports(path, package, KEYSERVER_FORBIDDEN) == []
    assert [m for _, m in imports_of(path, package) if layer_of(m) == 0] == []


def test_the_key_server_is_a_layer_of_its_own() -> None:
    """Its modules are found (server, store, certs, the ``-m`` entry), and sit between the CLI
    and the runtime: the CLI may import it, it may import the runtime, not the other way."""
    names = {p.name for _, p, _ in KEYSERVER_MODULES}
    assert {"__init__.py", "__main__.py", "server.py", "store.py", "certs.py"} <= names
    assert layer_of("pairkit.cli.ttp_cli") < KEYSERVER < layer_of("pairkit.ttp")
    assert layer_of("pairkit.keyserver.server") == KEYSERVER
    assert layer_of("pairkit.keyserverx") == RUNTIME  # a prefix is not a package


def test_the_check_can_fail(tmp_path: Path) -> None:
    """A module of the core that imported asyncio, or the runtime, would be caught; so would a
    key server module that imported the CLI or click, eagerly or lazily."""
    assert layer_of("pairkit.driver") == RUNTIME and layer_of("pairkit.cli.main") == 0
    assert layer_of("pairkit.transports.tcp") == RUNTIME + 1
    assert layer_of("pairkit.pairing.wire") == RUNTIME + 2
    assert layer_of("cryptography.x509") is None
    assert imports_of(ROOT / "runtime" / "driver.py", "pairkit")[0][1] in {
        "__future__", "asyncio"
    }
    pure_bad = tmp_path / "pure_bad.py"
    pure_bad.write_text(
        "import os, fcntl\n"
        "from os import replace, urandom\n"
        "rng = os.urandom\n"
        "def save(p, data):\n"
        "    with open(p, 'wb') as f:\n"
        "        f.write(data)\n"
        "    os.fsync(3)\n"
    )
    assert forbidden_imports(pure_bad, "pairkit.pairing", PURE_FORBIDDEN) == [
        "pure_bad.py:1 imports fcntl"
    ]
    assert sorted(io_uses(pure_bad)) == [
        "pure_bad.py:2 uses os.replace", "pure_bad.py:5 uses open()", "pure_bad.py:7 uses os.fsync"
    ]
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import click\n"
        "from pairkit.driver import drive\n"
        "def later():\n"
        "    from ..cli.common import info\n"
        "    from pairkit.keyserver import server\n"
    )
    assert higher_imports(bad, KEYSERVER, "pairkit.keyserver") == [
        "bad.py:4 imports pairkit.cli.common, a higher layer"
    ]
    assert forbidden_imports(bad, "pairkit.keyserver", KEYSERVER_FORBIDDEN) == [
        "bad.py:1 imports click"
    ]
    assert higher_imports(bad, RUNTIME, "pairkit") == [
        "bad.py:4 imports pairkit.cli.common, a higher layer",
        "bad.py:5 imports pairkit.keyserver, a higher layer",
    ]
