"""Streaming benchmark results: one :class:`StreamCaseResult` per (case, mode).

JSON contract (``hybridxfer bench --streaming --json``, checked by ``tests/bench``): the case
identity (``transport``, ``layout``, ``src_tp``, ``dst_tp``, ``tokens``, ``bytes``) plus
``mode`` (``bulk`` | ``pull-stream`` | ``push-stream``), ``tail_s`` (prefill end → D holds
every byte), ``ttd_s`` (prefill start → D holds every byte: time to decode) and
``ttd_speedup`` (bulk ``ttd_s`` / this mode's; 1.0 for bulk), all medians over the runs.
"""

from __future__ import annotations

from typing import Literal

import attrs

from hybridxfer.bench._results import Spread

__all__ = ["StreamCaseResult", "StreamMode"]

StreamMode = Literal["bulk", "pull-stream", "push-stream"]


@attrs.frozen
class StreamCaseResult:
    """One request moved in one mode while P runs a simulated prefill."""

    transport: str
    layout: str
    src_tp: int
    dst_tp: int
    tokens: int
    bytes: int
    mode: StreamMode
    prefill: Spread  # P's simulated prefill, start to end
    tail: Spread
    ttd: Spread
    bulk_transfer: Spread  # the bulk mode's transfer alone (D starts reading -> every byte), same rounds
    last_group_bytes: int  # what the last cache layer's readiness releases
    bulk_ttd_s: float
    verified: bool

    @property
    def ttd_speedup(self) -> float:
        return self.bulk_ttd_s / self.ttd.median if self.ttd.median > 0 else 0.0

    @property
    def last_group_s(self) -> float:
        """The last layer group's share of the bulk transfer time (bytes-proportional estimate)."""
        return self.bulk_transfer.median * self.last_group_bytes / self.bytes if self.bytes else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "transport": self.transport, "layout": self.layout, "src_tp": self.src_tp, "dst_tp": self.dst_tp,
            "tokens": self.tokens, "bytes": self.bytes, "mode": self.mode,
            "tail_s": self.tail.median, "tail_s_min": self.tail.min, "tail_s_max": self.tail.max,
            "ttd_s": self.ttd.median, "ttd_s_min": self.ttd.min, "ttd_s_max": self.ttd.max,
            "ttd_speedup": 1.0 if self.mode == "bulk" else self.ttd_speedup,
            "prefill_s": self.prefill.median, "bulk_transfer_s": self.bulk_transfer.median,
            "last_group_bytes": self.last_group_bytes, "last_group_s": self.last_group_s,
            "tail_over_last_group": self.tail.median / self.last_group_s if self.last_group_s > 0 else None,
            "runs": self.tail.runs, "verified": self.verified,
        }
