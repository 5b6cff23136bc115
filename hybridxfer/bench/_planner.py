"""Planner benchmark: compile + bind against a per-descriptor loop.

For each TP pairing it times, in one interleaved loop so both see the same machine load:
an uncached ``compile`` and a ``bind`` with and without coalescing, and the plain Python
loop of :mod:`hybridxfer.bench._reference`. It then checks that the loop and the plan
describe the same bytes (after canonical merging) — otherwise the speed-up means nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hybridxfer.bench._reference import canonical, reference_descriptors
from hybridxfer.bench._results import PlannerResult, spread
from hybridxfer.layout import RankLayout, load_layout
from hybridxfer.plan import PlanTemplate, TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for

__all__ = ["plan_rows", "run_planner_benchmark"]


def plan_rows(plan: TransferPlan) -> npt.NDArray[np.int64]:
    """The plan's descriptors as an (n, 6) array: rank, src region/offset, dst region/offset, length."""
    d = plan.descriptors
    return np.stack([d.src_rank, d.src_region, d.src_offset, d.dst_region, d.dst_offset, d.length], axis=1)


def _compile_cold(src: Sequence[RankLayout], dst: RankLayout, coalesce: bool) -> PlanTemplate:
    # bypass the per-pair cache: we measure what the first request of a pair pays
    return compile_plan(src, dst, coalesce=coalesce, cache=False)


def run_planner_benchmark(layout_path: Path, pairs: list[tuple[int, int]], tokens: int,
                          repeats: int) -> list[PlannerResult]:
    layout = load_layout(layout_path)
    out: list[PlannerResult] = []
    for src_tp, dst_tp in pairs:
        src = tuple(layout.for_rank(src_tp, r, num_blocks=blocks_for(layout, src_tp, tokens, rank=r))
                    for r in range(src_tp))
        dst = layout.for_rank(dst_tp, 0, num_blocks=blocks_for(layout, dst_tp, tokens))
        sb, db = contiguous_block_tables(src[0], tokens), contiguous_block_tables(dst, tokens)
        times: dict[str, list[float]] = {k: [] for k in ("cc", "bc", "cu", "bu", "loop")}
        plans: dict[bool, TransferPlan] = {}
        loop_rows: list[tuple[int, int, int, int, int, int]] = []
        for i in range(repeats + 1):  # first round warms caches and is discarded
            for coalesce, ck, bk in ((True, "cc", "bc"), (False, "cu", "bu")):
                t0 = time.perf_counter()
                template = _compile_cold(src, dst, coalesce)
                t1 = time.perf_counter()
                plan = template.bind(sb, db, num_tokens=tokens)
                t2 = time.perf_counter()
                assert isinstance(plan, TransferPlan)
                plans[coalesce] = plan
                if i:
                    times[ck].append(t1 - t0)
                    times[bk].append(t2 - t1)
            t0 = time.perf_counter()
            loop_rows = reference_descriptors(src, dst, sb, db, tokens)
            if i:
                times["loop"].append(time.perf_counter() - t0)
        ref = canonical(np.array(loop_rows, dtype=np.int64).reshape(-1, 6))
        matches = all(np.array_equal(ref, canonical(plan_rows(p))) for p in plans.values())
        stats = plans[True].statistics
        out.append(PlannerResult(
            layout=layout.model, src_tp=src_tp, dst_tp=dst_tp, tokens=tokens,
            compile_coalesced=spread(times["cc"]), bind_coalesced=spread(times["bc"]),
            compile_uncoalesced=spread(times["cu"]), bind_uncoalesced=spread(times["bu"]),
            loop=spread(times["loop"]), descriptors=stats.descriptor_count,
            descriptors_uncoalesced=plans[False].statistics.descriptor_count,
            loop_descriptors=len(loop_rows), matches=matches))
    return out
