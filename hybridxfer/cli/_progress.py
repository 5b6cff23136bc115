"""A one-line terminal progress bar for long transfers.

The bytes it shows come from :class:`hybridxfer.execute.CountingTransport` (``pull``'s
progress events) — the same wrapper behind the API's per-request ``on_progress``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``[#####-----]  45%  transferring 23.1/50.3 MB  1.2 s`` redrawn in place on a TTY."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None, width: int = 28) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._width = width
        self._started = time.perf_counter()
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, total: int, phase: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.05:
            return
        self._last = now
        frac = min(1.0, done / total) if total > 0 else 0.0
        filled = int(frac * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        amount = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else ""
        line = f"[{bar}] {frac * 100:3.0f}%  {phase:<13} {amount:<22} {now - self._started:5.1f} s"
        self._stream.write("\r" + line)
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._stream.write("\r" + " " * 90 + "\r")
            self._stream.flush()
