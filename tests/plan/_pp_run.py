"""Run one (layout, P PP x TP, D PP x TP) pairing through planner + memcpy against the oracle.

The oracle (:mod:`hybridxfer.synthetic`) models each pipeline stage from the layout's
declarative description on its own: which layers the stage runs, which regions and slabs
it allocates, what their bytes hold. Nothing here asks the planner or ``RankLayout``.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from hybridxfer.layout import Layout, RankLayout, is_token_spec
from hybridxfer.plan import TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import RankSpec, Request, blank_destination, expected_memory, fill_source_memory
from hybridxfer.synthetic import region_bytes
from hybridxfer.testing.oracle import execute_memcpy

U8 = npt.NDArray[np.uint8]
Memory = dict[str, U8]


def rank_spec(r: RankLayout) -> RankSpec:
    return RankSpec(r.tp, r.rank, r.num_blocks, r.logical_block_tokens, r.kernel_block_tokens,
                    pp=r.pp, stage=r.stage, partition=r.partition)


def blocks_needed(layout: Layout, tp: int, tokens: int) -> int:
    """Blocks a request takes in every group (all stages share one block table)."""
    per = -(-tokens // layout.for_rank(tp, 0, num_blocks=1).logical_block_tokens)
    return sum(per if is_token_spec(layout.layer_spec(g.layers[0]).kind_name) else 1 for g in layout.groups)


@functools.lru_cache(maxsize=1)
def source_side(layout: Layout, pp: int, tp: int, tokens: int,
                partition: tuple[int, ...] | None = None) -> tuple[tuple[RankLayout, ...], dict[str, list[int]],
                                                                    tuple[Memory, ...]]:
    """Every P rank (global order: stage * tp + tp rank), the request's blocks, their memory.

    P holds the request one block into its pool, D at the start: offsets must be right.
    """
    nb = blocks_needed(layout, tp, tokens) + 1
    src = tuple(layout.for_rank(tp, t, num_blocks=nb, pp=pp, stage=s, partition=partition)
                for s in range(pp) for t in range(tp))
    blocks = {g: [b + 1 for b in ids] for g, ids in contiguous_block_tables(src[0], tokens).items()}
    mems = tuple(fill_source_memory(layout, rank_spec(r), Request(blocks, tokens)) for r in src)
    return src, blocks, mems


def destination(layout: Layout, pp: int, tp: int, stage: int, rank: int, tokens: int,
                partition: tuple[int, ...] | None = None) -> RankLayout:
    return layout.for_rank(tp, rank, num_blocks=blocks_needed(layout, tp, tokens) + 2, pp=pp, stage=stage,
                           partition=partition)


def mismatches(plan: TransferPlan, src_mems: tuple[Memory, ...], dst: RankLayout, tokens: int,
               chunk_tokens: int) -> dict[str, int]:
    """Run ``plan`` with plain copies; per D region, how many bytes differ from the oracle."""
    layout = dst.layout
    spec = rank_spec(dst)
    sizes = region_bytes(layout, spec)
    # the rank layout allocates exactly what the oracle says this stage holds
    assert dict(zip(dst.region_names, dst.region_sizes, strict=True)) == sizes
    dst_mem = blank_destination(layout, spec)
    execute_memcpy(plan, src_mems, dst_mem)
    expected = expected_memory(layout, spec, Request(contiguous_block_tables(dst, tokens), tokens),
                               chunk_tokens=chunk_tokens)
    return {name: int(np.count_nonzero(dst_mem[name] != expected[name])) for name in sizes
            if not np.array_equal(dst_mem[name], expected[name])}


def run_pairing(layout: Layout, src_pp: int, src_tp: int, dst_pp: int, dst_tp: int, tokens: int,
                *, dst_ranks: tuple[int, ...] | None = None) -> list[TransferPlan]:
    """Plan and check every D stage (the given TP ranks of each); return the plans."""
    src, src_blocks, src_mems = source_side(layout, src_pp, src_tp, tokens)
    plans = []
    for stage in range(dst_pp):
        for rank in dst_ranks if dst_ranks is not None else range(dst_tp):
            dst = destination(layout, dst_pp, dst_tp, stage, rank, tokens)
            template = compile_plan(src, dst)
            plan = template.bind(src_blocks, contiguous_block_tables(dst, tokens), num_tokens=tokens)
            bad = mismatches(plan, src_mems, dst, tokens, template.chunk_tokens)
            assert not bad, (f"P PP{src_pp}xTP{src_tp} -> D PP{dst_pp}xTP{dst_tp} (stage {stage}, "
                             f"TP rank {rank}): bytes differ per region {bad}")
            plans.append(plan)
    return plans
