"""Progress for long transfers: a counting transport wrapper and a one-line terminal bar.

Why a wrapper: the executor and transports report nothing until a read completes, and a
transport must stay small (style: metrics live in wrappers). :class:`CountingTransport`
delegates everything and, when asked for progress, splits each read into sub-batches of
about ``step_bytes`` so the bar moves during a single large request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import numpy as np

from hybridxfer.transport import MemoryRegion, Notification, PeerHandle, ReadBatch, Transport, TransportCapabilities

__all__ = ["CountingTransport", "ProgressBar"]


class CountingTransport:
    """``Transport`` that calls ``on_bytes(n)`` as reads land (see module docstring)."""

    def __init__(self, inner: Transport, on_bytes: Callable[[int], None], *, step_bytes: int = 16 << 20) -> None:
        self._inner = inner
        self._on_bytes = on_bytes
        self._step = step_bytes

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def capabilities(self) -> TransportCapabilities:
        return self._inner.capabilities

    async def __aenter__(self) -> CountingTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._inner.__aexit__(*exc_info)

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        await self._inner.register(regions)

    def local_metadata(self) -> bytes:
        return self._inner.local_metadata()

    async def connect(self, metadata: bytes) -> PeerHandle:
        return await self._inner.connect(metadata)

    async def read(self, peer: PeerHandle, batch: ReadBatch) -> None:
        """Sub-batches in order; cancellation leaves what the inner transport leaves."""
        ends = np.cumsum(batch.length) if len(batch) else np.zeros(0, dtype=np.int64)
        start = 0
        while start < len(batch):
            done_before = int(ends[start - 1]) if start else 0
            stop = int(np.searchsorted(ends, done_before + self._step, side="left")) + 1
            stop = min(max(stop, start + 1), len(batch))
            part = batch.slice(start, stop)
            await self._inner.read(peer, part)
            self._on_bytes(part.total_bytes)
            start = stop
        if not len(batch):
            await self._inner.read(peer, batch)

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        await self._inner.notify(peer, message)

    async def next_notification(self) -> Notification:
        return await self._inner.next_notification()

    async def aclose(self) -> None:
        await self._inner.aclose()


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
