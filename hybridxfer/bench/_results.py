"""Benchmark results as frozen values: one :class:`CaseResult` per measured case.

Why a value per case rather than a dict: the JSON contract of ``hybridxfer bench --json``
(``transport``, ``layout``, ``src_tp``, ``dst_tp``, ``tokens``, ``bytes``, ``seconds``,
``gbps``, ``ceiling_gbps``, ``ratio``) is checked by the smoke test against these field
names, and the table and the plot read the same objects.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import attrs

__all__ = ["CaseResult", "PlannerResult", "Spread", "spread"]


@attrs.frozen
class Spread:
    """Median, min and max of repeated timings (seconds)."""

    median: float
    min: float
    max: float
    runs: int


def spread(samples: Sequence[float]) -> Spread:
    if not samples:
        raise ValueError("no samples")
    return Spread(statistics.median(samples), min(samples), max(samples), len(samples))


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


@attrs.frozen
class CaseResult:
    """One hybridxfer end-to-end case beside its raw ceiling, both moving the same bytes.

    ``ceiling`` names the raw path (``raw-socket``, ``raw-nixl``, ``raw-ucxx``); it moves
    the plan's coalesced descriptors with the raw API, so ``ratio`` isolates hybridxfer's
    own overhead. ``memcpy`` is numpy copying the same byte count in one process.
    """

    transport: str
    layout: str
    src_tp: int
    dst_tp: int
    tokens: int
    requests: int
    bytes: int
    descriptors: int
    descriptors_uncoalesced: int
    padding_bytes_skipped: int
    duplicate_bytes: int
    hybridxfer: Spread
    ceiling_name: str
    ceiling: Spread
    memcpy: Spread
    plan_compile: Spread
    plan_bind: Spread
    plan_prepare: Spread
    verified: bool
    vllm_descriptors: Spread | None = None  # vLLM's per-kernel-block rows through raw NIXL (nixl only)
    vllm_descriptor_count: int = 0

    @property
    def gbps(self) -> float:
        return _gbps(self.bytes, self.hybridxfer.median)

    @property
    def ceiling_gbps(self) -> float:
        return _gbps(self.bytes, self.ceiling.median)

    @property
    def ratio(self) -> float:
        return self.ceiling.median / self.hybridxfer.median if self.hybridxfer.median > 0 else 0.0

    @property
    def vs_vllm(self) -> float | None:
        """vLLM-scheme time / hybridxfer time over the same bytes (> 1: hybridxfer is faster)."""
        if self.vllm_descriptors is None or self.hybridxfer.median <= 0:
            return None
        return self.vllm_descriptors.median / self.hybridxfer.median

    @property
    def planning_fraction(self) -> float:
        """(bind + prepare) per request over the transfer time; compile is cached per pair."""
        per_request = self.plan_bind.median + self.plan_prepare.median
        return per_request / self.hybridxfer.median if self.hybridxfer.median > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "transport": self.transport, "layout": self.layout, "src_tp": self.src_tp,
            "dst_tp": self.dst_tp, "tokens": self.tokens, "requests": self.requests,
            "bytes": self.bytes, "seconds": self.hybridxfer.median,
            "seconds_min": self.hybridxfer.min, "seconds_max": self.hybridxfer.max,
            "runs": self.hybridxfer.runs, "gbps": self.gbps,
            "gbps_min": _gbps(self.bytes, self.hybridxfer.max), "gbps_max": _gbps(self.bytes, self.hybridxfer.min),
            "ceiling": self.ceiling_name, "ceiling_gbps": self.ceiling_gbps,
            "ceiling_gbps_min": _gbps(self.bytes, self.ceiling.max),
            "ceiling_gbps_max": _gbps(self.bytes, self.ceiling.min),
            "ratio": self.ratio, "memcpy_gbps": _gbps(self.bytes, self.memcpy.median),
            "descriptors": self.descriptors, "descriptors_uncoalesced": self.descriptors_uncoalesced,
            "padding_bytes_skipped": self.padding_bytes_skipped, "duplicate_bytes": self.duplicate_bytes,
            "plan_compile_ms": self.plan_compile.median * 1e3, "plan_bind_ms": self.plan_bind.median * 1e3,
            "plan_prepare_ms": self.plan_prepare.median * 1e3, "planning_fraction": self.planning_fraction,
            "verified": self.verified,
            "vllm_descriptors_gbps": (None if self.vllm_descriptors is None
                                      else _gbps(self.bytes, self.vllm_descriptors.median)),
            "vllm_descriptor_count": self.vllm_descriptor_count, "vs_vllm": self.vs_vllm,
        }


@attrs.frozen
class PlannerResult:
    """The planner's cost: compile + bind beside a plain per-descriptor Python loop."""

    layout: str
    src_tp: int
    dst_tp: int
    tokens: int
    compile_coalesced: Spread
    bind_coalesced: Spread
    compile_uncoalesced: Spread
    bind_uncoalesced: Spread
    loop: Spread
    descriptors: int
    descriptors_uncoalesced: int
    loop_descriptors: int
    matches: bool

    @property
    def speedup(self) -> float:
        """Loop time over compile + bind (coalesced), both cold per request."""
        ours = self.compile_coalesced.median + self.bind_coalesced.median
        return self.loop.median / ours if ours > 0 else 0.0

    @property
    def bind_speedup(self) -> float:
        """Loop time over bind alone (what a request pays once the template is cached)."""
        return self.loop.median / self.bind_coalesced.median if self.bind_coalesced.median > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "layout": self.layout, "src_tp": self.src_tp, "dst_tp": self.dst_tp, "tokens": self.tokens,
            "compile_ms": self.compile_coalesced.median * 1e3, "bind_ms": self.bind_coalesced.median * 1e3,
            "compile_ms_min": self.compile_coalesced.min * 1e3, "compile_ms_max": self.compile_coalesced.max * 1e3,
            "bind_ms_min": self.bind_coalesced.min * 1e3, "bind_ms_max": self.bind_coalesced.max * 1e3,
            "compile_uncoalesced_ms": self.compile_uncoalesced.median * 1e3,
            "bind_uncoalesced_ms": self.bind_uncoalesced.median * 1e3,
            "loop_ms": self.loop.median * 1e3, "loop_ms_min": self.loop.min * 1e3, "loop_ms_max": self.loop.max * 1e3,
            "speedup": self.speedup, "bind_speedup": self.bind_speedup,
            "descriptors": self.descriptors, "descriptors_uncoalesced": self.descriptors_uncoalesced,
            "loop_descriptors": self.loop_descriptors, "coalesce_ratio": self.descriptors / max(1, self.descriptors_uncoalesced),
            "matches": self.matches,
        }
