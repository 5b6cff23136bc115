"""vLLM's descriptor scheme as a peer baseline: the same bytes, one NIXL descriptor per kernel block.

vLLM's NIXL connector registers each layer's cache region, lists one descriptor per
(region, block) — address ``base + block_id * block_len``, length ``block_len``, sliced
per remote rank when TP differs — and posts a READ over the request's block indices. It
never merges neighbouring blocks. ``compile_plan(..., coalesce=False)`` yields exactly that
granularity here (one row per layer piece, kernel-block chunk and sharded head slice), so
moving its rows through raw NIXL — no hybridxfer executor, no notification — measures what
the scheme itself costs beside hybridxfer's coalesced plan over the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.bench._placement import HOST, Placement
from hybridxfer.bench._raw import NixlInitiator
from hybridxfer.descriptors import Descriptors
from hybridxfer.layout import RankLayout
from hybridxfer.plan import TransferPlan, compile_plan

__all__ = ["VllmDescriptorBaseline", "uncoalesced_reads"]

U8 = npt.NDArray[np.uint8]


def uncoalesced_reads(src_layouts: tuple[RankLayout, ...], dst: RankLayout,
                      tables: Sequence[tuple[dict[str, list[int]], dict[str, list[int]]]],
                      tokens: int) -> list[Descriptors]:
    """Every request's per-kernel-block rows, one table per source rank, in rank order."""
    template = compile_plan(src_layouts, dst, coalesce=False)
    plans = [template.bind(sb, db, num_tokens=tokens) for sb, db in tables]
    merged = Descriptors.concat([p.descriptors for p in plans if isinstance(p, TransferPlan)])
    return [part for _, part in sorted(merged.by_source().items())]


class VllmDescriptorBaseline:
    """A raw NIXL agent on D's arrays posting the uncoalesced rows (one prepared READ per P rank)."""

    def __init__(self, memory: Sequence[U8], reads: Sequence[Descriptors],
                 peers: Sequence[tuple[str, Sequence[int], Sequence[int]]], placement: Placement = HOST) -> None:
        """``peers[rank]`` = (the P rank's raw NIXL metadata hex, its region base addresses, their devices)."""
        self.descriptor_count = sum(len(rd) for rd in reads)
        self.bytes = sum(rd.total_bytes for rd in reads)
        self._initiator = NixlInitiator(memory, f"vllm-D-{time.monotonic_ns()}", placement)
        for rd in reads:
            meta, bases, devices = peers[rd.source_rank]
            self._initiator.prepare(meta, bases, rd, devices)

    def run_once(self) -> float:
        """One READ of every row (blocking; call from a worker thread); seconds taken."""
        t0 = time.perf_counter()
        self._initiator.read_all()
        return time.perf_counter() - t0

    def release(self) -> None:
        self._initiator.release()
