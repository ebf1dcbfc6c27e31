"""How the CLI shows things: a transfer's progress line and a guest's standing in words."""

from __future__ import annotations

import sys
import time
from typing import Any

from pairkit.pairing.cloud import Role
from pairkit.pairing.service import Membership


class Progress:
    """A progress line on a terminal: bytes, rate, time left."""

    def __init__(self, name: str, *, stream: Any = None, enabled: bool | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self.first: int | None = None
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = done
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = (done - self.first) / elapsed
        left = (total - done) / rate if rate > 0 else 0
        pct = 100 * done / total if total else 100
        self.stream.write(
            f"\r{self.name}: {done / 1e6:.2f}/{total / 1e6:.2f} MB {pct:5.1f}% "
            f"{rate / 1e6:.2f} MB/s {left:4.0f} s left "
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def role_text(m: Membership) -> str:
    if m.role is Role.MEMBER:
        return f"member of {m.cloud_name or 'the cloud'}"
    if m.role is Role.GUEST and m.expires is not None:
        return f"guest until {time.strftime('%H:%M', time.localtime(m.expires))}"
    return "guest"


