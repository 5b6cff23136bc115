"""Tools for soak and leak tests: resource snapshots and seeded random faults.

Why public: an engine embedding hybridxfer wants the same proof we give in
``tests/reliability`` — that thousands of transfers, some of them failing, leave no file
descriptor, thread, task or memory behind. :func:`resource_snapshot` measures what a
process holds; :func:`wait_settled` gives threads that are already on their way out
(a transport's worker finishing its teardown) a moment to end before comparing;
:class:`RandomFaultTransport` injects :class:`~hybridxfer.testing.faults.FaultInjectingTransport`'s
faults at random, from a seed, so a failing soak run can be replayed exactly.
"""

from __future__ import annotations

import os
import random
import threading

import anyio
import attrs

from hybridxfer.testing.faults import FaultInjectingTransport
from hybridxfer.descriptors import Descriptors
from hybridxfer.transport import PeerHandle, Transport

__all__ = ["RandomFaultTransport", "ResourceSnapshot", "resource_snapshot", "wait_settled"]


@attrs.frozen
class ResourceSnapshot:
    """What this process holds at one moment (Linux ``/proc``; ``-1`` where unavailable)."""

    fds: int
    threads: int
    tasks: int
    rss_bytes: int

    def grew_beyond(self, baseline: ResourceSnapshot, *, fds: int = 0, rss_bytes: int = 32 << 20) -> list[str]:
        """Human-readable growth over ``baseline`` beyond the given slack (empty: flat).

        Threads and tasks get no slack: a leaked one is a bug, not noise.
        """
        out = []
        if self.fds > baseline.fds + fds:
            out.append(f"file descriptors {baseline.fds} -> {self.fds}")
        if self.threads > baseline.threads:
            out.append(f"threads {baseline.threads} -> {self.threads}")
        if self.tasks > baseline.tasks:
            out.append(f"tasks {baseline.tasks} -> {self.tasks}")
        if self.rss_bytes - baseline.rss_bytes > rss_bytes:
            out.append(f"RSS {baseline.rss_bytes >> 20} MiB -> {self.rss_bytes >> 20} MiB")
        return out


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return -1


def resource_snapshot() -> ResourceSnapshot:
    """Open fds, live threads, running anyio tasks (0 outside an event loop), and RSS."""
    try:
        tasks = len(anyio.get_running_tasks())
    except RuntimeError:  # no event loop in this thread
        tasks = 0
    return ResourceSnapshot(_fds(), threading.active_count(), tasks, _rss())


async def wait_settled(baseline: ResourceSnapshot, *, timeout: float = 5.0, fds: int = 0) -> ResourceSnapshot:
    """The first snapshot within ``timeout`` seconds that did not grow beyond ``baseline``
    (RSS ignored), else the last one taken — so the caller's assertion shows the leak.

    Why wait at all: closing a transport may signal a worker thread that is still
    returning from its loop; it is gone a few milliseconds later. A real leak stays.
    """
    deadline = anyio.current_time() + timeout
    while True:
        now = resource_snapshot()
        grew = now.grew_beyond(baseline, fds=fds, rss_bytes=1 << 62)
        if not grew or anyio.current_time() >= deadline:
            return now
        await anyio.sleep(0.05)


class RandomFaultTransport(FaultInjectingTransport):
    """Wraps ``inner``; each read fails, stalls or breaks with the given probabilities and
    each notification is lost with ``p_drop`` — drawn from ``random.Random(seed)``.

    ``injected`` counts what was injected by kind, so a soak test can check that the
    faults it asked for really happened.
    """

    def __init__(self, inner: Transport, *, seed: int, p_fail: float = 0.0, p_stall: float = 0.0,
                 p_break: float = 0.0, p_drop: float = 0.0, stall_seconds: float = 3600.0) -> None:
        super().__init__(inner, stall_seconds=stall_seconds)
        self._rng = random.Random(seed)
        self.p_fail, self.p_stall, self.p_break, self.p_drop = p_fail, p_stall, p_break, p_drop
        self.injected: dict[str, int] = {"fail": 0, "stall": 0, "break": 0, "drop": 0}

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """One read with at most one random fault. Cancellation: as the inner read."""
        n = self.reads + 1
        draw = self._rng.random()
        self.fail_read = self.stall_read = self.break_read = None
        if draw < self.p_fail:
            self.fail_read, kind = n, "fail"
        elif draw < self.p_fail + self.p_stall:
            self.stall_read, kind = n, "stall"
        elif draw < self.p_fail + self.p_stall + self.p_break:
            self.break_read, kind = n, "break"
        else:
            kind = ""
        if kind:
            self.injected[kind] += 1
        await super().read(peer, batch)

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Like the inner notify, unless this one is randomly lost."""
        drop = self._rng.random() < self.p_drop
        self.drop_notification = self.notifications + 1 if drop else None
        if drop:
            self.injected["drop"] += 1
        await super().notify(peer, message)
