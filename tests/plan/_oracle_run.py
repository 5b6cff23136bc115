"""Run one (layout, P TP, D TP) pairing through planner + memcpy and compare with the oracle."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from hybridxfer.layout import Layout, RankLayout
from hybridxfer.plan import TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import RankSpec, Request, blank_destination, expected_memory, fill_source_memory
from hybridxfer.testing.oracle import execute_memcpy


@functools.lru_cache(maxsize=1)
def _source_memories(layout: Layout, specs: tuple[RankSpec, ...], tokens: int, shift: int) -> list[dict[str, np.ndarray]]:
    """P ranks' memories; cached because consecutive cases share the same P side."""
    first = specs[0]
    probe = layout.for_rank(first.tp, 0, num_blocks=first.num_blocks, logical_block_tokens=first.logical_block_tokens,
                            kernel_block_tokens=first.kernel_block_tokens)
    blocks = {g: [b + shift for b in ids] for g, ids in contiguous_block_tables(probe, tokens).items()}
    return [fill_source_memory(layout, s, Request(blocks, tokens)) for s in specs]


def rank_spec(r: RankLayout) -> RankSpec:
    return RankSpec(r.tp, r.rank, r.num_blocks, r.logical_block_tokens, r.kernel_block_tokens)


def blocks_needed(r: RankLayout, tokens: int) -> int:
    per = -(-tokens // r.logical_block_tokens)
    from hybridxfer.layout._validate import is_token_spec

    return sum(per if is_token_spec(r.layout.layer_spec(g.layers[0]).kind_name) else 1 for g in r.layout.groups)


def check_pairing(
    src_layout: Layout,
    dst_layout: Layout,
    src_tp: int,
    dst_tp: int,
    tokens: int,
    *,
    src_sizes: tuple[int | None, int | None] = (None, None),
    dst_sizes: tuple[int | None, int | None] = (None, None),
    dst_ranks: list[int] | None = None,
    coalesce: bool = True,
    spare_blocks: int = 1,
    dst_cached_tokens: int | Mapping[str, int] | None = None,
    oracle_cached_tokens: int | Mapping[str, int] | None = None,
    tamper: Callable[[TransferPlan, RankLayout], TransferPlan] | None = None,
) -> list[TransferPlan]:
    """Assert every byte of every D rank equals the oracle's expectation; return the plans.

    ``dst_cached_tokens`` goes to the planner and (unless ``oracle_cached_tokens`` says
    otherwise, as negative controls do) to the oracle; ``tamper`` alters each plan before
    it runs (a deliberately wrong plan the oracle must catch).
    """
    probe = src_layout.for_rank(src_tp, 0, num_blocks=1, logical_block_tokens=src_sizes[0],
                                kernel_block_tokens=src_sizes[1])
    nb_src = blocks_needed(probe, tokens) + spare_blocks
    src = [src_layout.for_rank(src_tp, r, num_blocks=nb_src, logical_block_tokens=src_sizes[0],
                               kernel_block_tokens=src_sizes[1]) for r in range(src_tp)]
    src_blocks = contiguous_block_tables(src[0], tokens)
    # P holds the request at the *end* of its pool, D at the start: offsets must be right
    shift = spare_blocks
    src_blocks = {g: [b + shift for b in ids] for g, ids in src_blocks.items()}
    src_mems = _source_memories(src_layout, tuple(rank_spec(s) for s in src), tokens, shift)
    plans = []
    for d in dst_ranks if dst_ranks is not None else range(dst_tp):
        probe_d = dst_layout.for_rank(dst_tp, d, num_blocks=1, logical_block_tokens=dst_sizes[0],
                                      kernel_block_tokens=dst_sizes[1])
        dst = dst_layout.for_rank(dst_tp, d, num_blocks=blocks_needed(probe_d, tokens) + 2,
                                  logical_block_tokens=dst_sizes[0], kernel_block_tokens=dst_sizes[1])
        dst_blocks = contiguous_block_tables(dst, tokens)
        template = compile_plan(src, dst, coalesce=coalesce)
        plan = template.bind(src_blocks, dst_blocks, num_tokens=tokens, dst_cached_tokens=dst_cached_tokens)
        if tamper is not None:
            plan = tamper(plan, dst)
        dst_mem = blank_destination(dst_layout, rank_spec(dst))
        execute_memcpy(plan, src_mems, dst_mem)
        cached = dst_cached_tokens if oracle_cached_tokens is None else oracle_cached_tokens
        per_group = ({} if cached is None else dict(cached) if isinstance(cached, Mapping)
                     else {g.name: cached for g in dst_layout.groups})
        expected = expected_memory(dst_layout, rank_spec(dst), Request(dst_blocks, tokens, per_group),
                                   chunk_tokens=template.chunk_tokens)
        for name in dst.region_names:
            got, want = dst_mem[name], expected[name]
            if not np.array_equal(got, want):
                bad = np.flatnonzero(got != want)
                raise AssertionError(
                    f"P{src_tp}->D{dst_tp} rank {d}: region {name!r}: {bad.size} bytes differ, first at {bad[:8]}")
        plans.append(plan)
    return plans
