"""README "Use it from Python" runs as written (issue 12): each ```python block of that section
is run verbatim in a fresh interpreter, so an example that no longer works fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def section_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Use it from Python")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


BLOCKS = section_blocks()


def test_the_section_has_the_two_examples() -> None:
    assert len(BLOCKS) == 2
    assert all("import pairkit" in b for b in BLOCKS)
    # the loopback example is complete and at most 20 lines (issue 12)
    assert "loopback:" in BLOCKS[0] and len(BLOCKS[0].strip().splitlines()) <= 20
    assert "bumble:virtual" in BLOCKS[1]


@pytest.mark.parametrize("block", BLOCKS, ids=["loopback", "bumble-virtual"])
def test_readme_block_runs(block: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "George says b'hello" in proc.stdout
    assert "Traceback" not in proc.stderr
