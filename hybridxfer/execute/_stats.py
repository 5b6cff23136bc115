"""Counters an agent keeps, and the frozen snapshot ``Agent.statistics()`` returns."""

from __future__ import annotations

import collections

import attrs
import numpy as np

__all__ = ["AgentStatistics", "StatisticsRecorder"]

# Latency percentiles come from the most recent transfers only, so memory stays flat.
_LATENCY_WINDOW = 4096


@attrs.frozen
class AgentStatistics:
    """A point-in-time snapshot; latencies in seconds over the last 4,096 transfers.

    D side (this agent reads): ``transfers`` that succeeded, their ``bytes`` and
    ``descriptors``, ``failures`` (of which ``timeouts``), ``cancellations``, and the
    ``notifications_sent`` / ``notification_failures`` telling P. P side (peers read this
    agent): ``requests_completed`` (distinct request and D agent pairs reported done) and
    ``bytes_served``, the bytes those D agents reported reading from here.
    """

    transfers: int = 0
    failures: int = 0
    timeouts: int = 0
    cancellations: int = 0
    bytes: int = 0
    descriptors: int = 0
    notifications_sent: int = 0
    notification_failures: int = 0
    requests_completed: int = 0
    bytes_served: int = 0
    latency_p50: float | None = None
    latency_p90: float | None = None
    latency_p99: float | None = None
    latency_max: float | None = None


class StatisticsRecorder:
    """Mutable counters behind :class:`AgentStatistics` (one per agent)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)

    def transfer_done(self, nbytes: int, descriptors: int, seconds: float) -> None:
        self.counts["transfers"] += 1
        self.counts["bytes"] += nbytes
        self.counts["descriptors"] += descriptors
        self._latencies.append(seconds)

    def snapshot(self) -> AgentStatistics:
        c = self.counts
        lat: dict[str, float | None] = {"latency_p50": None, "latency_p90": None, "latency_p99": None, "latency_max": None}
        if self._latencies:
            arr = np.fromiter(self._latencies, dtype=np.float64)
            p50, p90, p99 = np.percentile(arr, [50, 90, 99]).tolist()
            lat = {"latency_p50": p50, "latency_p90": p90, "latency_p99": p99, "latency_max": float(arr.max())}
        return AgentStatistics(
            transfers=c["transfers"], failures=c["failures"], timeouts=c["timeouts"],
            cancellations=c["cancellations"], bytes=c["bytes"], descriptors=c["descriptors"],
            notifications_sent=c["notifications_sent"], notification_failures=c["notification_failures"],
            requests_completed=c["requests_completed"], bytes_served=c["bytes_served"], **lat,
        )
