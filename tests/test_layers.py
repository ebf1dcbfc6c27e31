"""The layering as a contract (issue 12, DESIGN.md): ``cli`` above the runtime (``runtime/``:
the asyncio driver and secure link), the runtime above ``transports``, ``transports`` above
``pairing``; and ``pairing`` imports no asyncio, socket, clock, click, bumble or bleak.

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
    ("runtime", "pairkit"),  # pairkit.driver, pairkit.securelink, ...
    ("transports", "pairkit.transports"),
    ("pairing", "pairkit.pairing"),
]
PURE_FORBIDDEN = {"asyncio", "socket", "time", "click", "bumble", "bleak"}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a pairkit module (None for anything else)."""
    if module == "pairkit" or not module.startswith("pairkit"):
        return 1 if module == "pairkit" else None
    for i, (_, prefix) in enumerate(LAYERS):
        if prefix != "pairkit" and (module == prefix or module.startswith(prefix + ".")):
            return i
    return 1  # pairkit.<runtime module>


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
    for line, module in imports_of(path, package):
        target = layer_of(module)
        if target is not None:
            assert target >= layer, (
                f"{path.relative_to(ROOT)}:{line} imports {module}, a higher layer"
            )


@pytest.mark.parametrize(("layer", "path", "package"),
                         [m for m in MODULES if m[0] == len(LAYERS) - 1],
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_pairing_is_pure(layer: int, path: Path, package: str) -> None:
    for line, module in imports_of(path, package):
        top = module.split(".")[0]
        assert top not in PURE_FORBIDDEN, f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_the_check_can_fail() -> None:
    """A module of the core that imported asyncio, or the runtime, would be caught."""
    assert layer_of("pairkit.driver") == 1 and layer_of("pairkit.cli.main") == 0
    assert layer_of("pairkit.transports.tcp") == 2 and layer_of("pairkit.pairing.wire") == 3
    assert layer_of("cryptography.x509") is None
    assert imports_of(ROOT / "runtime" / "driver.py", "pairkit")[0][1] in {
        "__future__", "asyncio"
    }
