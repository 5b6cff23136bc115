"""Prometheus metrics for ``serve``: bytes, requests, failures and a transfer-time histogram.

Why these sources: counters come from each agent's public :meth:`Agent.statistics`
snapshot, read at scrape time, so the exporter keeps no second count that could drift
from the agent's; the histogram is fed per completed request (P learns D's transfer time
and bytes from D's ``done`` notification). ``prometheus_client`` is an optional extra
(``pip install 'hybridxfer[metrics]'``) imported only here, when the exporter is created.

Why the endpoint runs on the event loop, not in ``prometheus_client``'s HTTP thread: a
scrape then reads ``statistics()`` on the loop that updates it, with no lock, and the
endpoint closes with the command like every other task. It answers ``GET /metrics`` (and
``/``) with the text exposition format, one request per connection, each bounded in time
and size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from hybridxfer.errors import HybridXferError

if TYPE_CHECKING:
    from hybridxfer.execute import Agent, CompletedRequest

__all__ = ["DEFAULT_BUCKETS", "MetricsUnavailableError", "ServeMetrics", "require_prometheus"]

log = logging.getLogger("hybridxfer.cli")

#: Transfer-time buckets in seconds: 1 ms (a few blocks on loopback) to 2 min (a deadline).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

_MAX_REQUEST_HEAD = 8192
_REQUEST_DEADLINE = 10.0


class MetricsUnavailableError(HybridXferError):
    """The Prometheus exporter was asked for, but ``prometheus_client`` is not installed."""


def require_prometheus() -> Any:
    """The ``prometheus_client`` module, or :class:`MetricsUnavailableError` saying how to install it."""
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as exc:
        raise MetricsUnavailableError(
            "metrics need the optional 'metrics' extra: pip install 'hybridxfer[metrics]' "
            f"(prometheus_client is missing: {exc})") from exc
    return prometheus_client


# (metric name, help, AgentStatistics field)
_COUNTERS = (
    ("hybridxfer_bytes_read", "Bytes this agent read from peers (D side).", "bytes"),
    ("hybridxfer_bytes_served", "Bytes peers reported reading from this agent (P side).", "bytes_served"),
    ("hybridxfer_transfers", "Requests this agent transferred successfully (D side).", "transfers"),
    ("hybridxfer_transfer_failures", "Requests whose transfer failed (D side).", "failures"),
    ("hybridxfer_transfer_timeouts", "Requests whose transfer missed its deadline (D side).", "timeouts"),
    ("hybridxfer_requests_completed", "Requests peers reported done with this agent's blocks (P side).",
     "requests_completed"),
    ("hybridxfer_notification_failures", "Done notifications that could not be delivered.", "notification_failures"),
)


class _StatisticsCollector:
    """A custom collector: one sample per agent of each counter, from ``statistics()`` at scrape time."""

    def __init__(self, agents: Sequence[Agent], core: Any) -> None:
        self._agents = agents
        self._core = core

    def collect(self) -> Any:
        snapshots = [(agent, agent.statistics()) for agent in self._agents]
        for name, doc, field in _COUNTERS:
            family = self._core.CounterMetricFamily(name, doc, labels=["agent", "rank"])
            for agent, stats in snapshots:
                family.add_metric([agent.name, str(agent.rank)], float(getattr(stats, field)))
            yield family

    def describe(self) -> Any:
        return []


class ServeMetrics:
    """The exporter of one ``serve`` process: its agents' counters and a transfer-time histogram."""

    def __init__(self, agents: Sequence[Agent], *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        prometheus = require_prometheus()
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        self.registry.register(_StatisticsCollector(list(agents), prometheus.core))
        self._seconds = prometheus.Histogram(
            "hybridxfer_transfer_seconds", "Time D took to transfer one request from this agent, in seconds.",
            ["agent", "rank"], buckets=tuple(buckets), registry=self.registry)
        for agent in agents:  # every served rank's series exists from the first scrape, at zero
            self._seconds.labels(agent.name, str(agent.rank))

    def request_completed(self, agent: Agent, done: CompletedRequest) -> None:
        """Record one completed request (called for each item of ``agent.completed_requests()``)."""
        self._seconds.labels(agent.name, str(agent.rank)).observe(done.seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The current metrics in the text format, and its content type."""
        return self._prometheus.generate_latest(self.registry), str(self._prometheus.CONTENT_TYPE_LATEST)

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Answer scrapes on ``listener`` until cancelled."""
        await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = bytearray()
            try:
                with anyio.fail_after(_REQUEST_DEADLINE):
                    while b"\r\n\r\n" not in head and b"\n\n" not in head:
                        if len(head) > _MAX_REQUEST_HEAD:
                            await stream.send(_response(431, b"request head too large\n", "text/plain"))
                            return
                        head += await stream.receive()
                    method, _, rest = bytes(head).partition(b" ")
                    path = rest.partition(b" ")[0].partition(b"?")[0]
                    if method != b"GET":
                        await stream.send(_response(405, b"only GET\n", "text/plain"))
                    elif path not in (b"/metrics", b"/"):
                        await stream.send(_response(404, b"metrics are at /metrics\n", "text/plain"))
                    else:
                        body, content_type = self.exposition()
                        await stream.send(_response(200, body, content_type))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                log.debug("metrics request dropped: %s", exc or "timeout")


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large"}


def _response(status: int, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body
