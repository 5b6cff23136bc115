"""The transfer specification's worked examples (its §9), number for number.

Nemotron-3-Nano-30B with FP8 KV cache and FlashInfer's 16-token kernel blocks — the
configuration vLLM's own tests use — so logical block sizes differ between TP sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybridxfer.layout import Layout, RankLayout, loads_layout
from hybridxfer.plan import TransferPlan, compile_plan

NANO_FP8 = """
format = "hybridxfer.layout/1"
[model]
id = "nemotron-3-nano-30b-a3b"
pattern = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
legend = { M = "mamba", "*" = "attention", E = "" }
[specs.attention]
kind = "attention"
num_kv_heads = 2
head_dim = 128
dtype = "float8_e4m3fn"
kv = "packed"
[specs.mamba]
kind = "mamba2"
num_heads = 64
head_dim = 64
n_groups = 8
d_state = 128
conv_kernel = 4
conv_dtype = "bfloat16"
ssm_dtype = "float32"
[engine]
pooling = "hybrid-shared"
block = { logical = "equalise", align = 16, kernel = 16 }
"""


@pytest.fixture(scope="module")
def layout() -> Layout:
    return loads_layout(NANO_FP8)


@pytest.mark.parametrize(
    ("tp", "block", "ratio", "kernel_page", "logical_page"),
    [(1, 4176, 261, 8192, 2_138_112), (2, 4176, 261, 4096, 1_069_056), (4, 2096, 131, 4096, 536_576)],
)
def test_page_geometry_table(layout: Layout, tp: int, block: int, ratio: int, kernel_page: int,
                             logical_page: int) -> None:
    """§1.2's table: block sizes, kernel/logical pages (the 261/261/131 ratios vLLM tests)."""
    r = layout.for_rank(tp, 0, num_blocks=2)
    assert r.logical_block_tokens == block
    assert r.blocks_per_kernel == ratio
    attn = r.placement("layers.5", "kv")
    assert attn.piece.nbytes == kernel_page
    assert r.region_page_bytes[r.region_index(attn.region)] == logical_page


def _ranks(layout: Layout, tp: int, blocks: int = 6) -> list[RankLayout]:
    return [layout.for_rank(tp, r, num_blocks=blocks) for r in range(tp)]


def _state_rows(plan: TransferPlan, src_block: int, src_page: int, dst_block: int, dst_page: int,
                region: str) -> dict[int, list[tuple[int, int, int]]]:
    """(src offset in P page, dst offset in D page, length) per source rank, for one region's state page."""
    s_idx = plan.src_region_names.index(region)
    d_idx = plan.dst_region_names.index(region)
    out: dict[int, list[tuple[int, int, int]]] = {}
    for read in plan.reads:
        for sr, so, dr, do, ln in read.rows():
            if sr == s_idx and dr == d_idx and dst_block * dst_page <= do < (dst_block + 1) * dst_page:
                out.setdefault(read.source_rank, []).append((so - src_block * src_page, do - dst_block * dst_page, ln))
    return {k: sorted(v, key=lambda t: t[1]) for k, v in out.items()}


@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_example_1_p1_to_d4_mamba_offsets(layout: Layout, d: int) -> None:
    """Example 1: x @6144d, B @24576+1536d, C @30720+1536d, SSM @36864+524288d."""
    src, dst = _ranks(layout, 1), layout.for_rank(4, d, num_blocks=6)
    # region kv_cache.0 holds layers.5 (attention), and layers.0 (mamba.0) etc.
    plan = compile_plan(src, dst, coalesce=False).bind(
        {"attention.0": [0], "mamba.0": [2], "mamba.1": [3], "mamba.2": [4], "mamba.3": [5]},
        {"attention.0": [0], "mamba.0": [1], "mamba.1": [3], "mamba.2": [2], "mamba.3": [4]},
        num_tokens=16,
    )
    assert plan.source_ranks == (0,) and plan.notify_ranks == (0,)
    rows = _state_rows(plan, 2, 2_138_112, 1, 536_576, "kv_cache.0")
    assert rows == {0: [(6144 * d, 0, 6144), (24576 + 1536 * d, 6144, 1536), (30720 + 1536 * d, 7680, 1536),
                        (36864 + 524288 * d, 9216, 524288)]}
    assert sum(ln for _, _, ln in rows[0]) == 533_504  # D's unpadded page; 3,072 B padding skipped


@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_example_1_attention_head_slice(layout: Layout, d: int) -> None:
    """FA: D rank d reads (k·8192 + f·4096, 4096) with f = 0,0,1,1 (replicated D heads)."""
    src, dst = _ranks(layout, 1), layout.for_rank(4, d, num_blocks=6)
    plan = compile_plan(src, dst, coalesce=False).bind(
        {"attention.0": [1], "mamba.0": [0], "mamba.1": [2], "mamba.2": [3], "mamba.3": [4]},
        {"attention.0": [2], "mamba.0": [0], "mamba.1": [1], "mamba.2": [3], "mamba.3": [4]},
        num_tokens=32,
    )
    f = [0, 0, 1, 1][d]
    idx = plan.src_region_names.index("kv_cache.0")
    fa = [row for row in plan.reads[0].rows()
          if row[0] == idx and 2 * 536_576 <= row[3] < 3 * 536_576 and row[4] == 4096]
    # tokens 0..31 = P kernel blocks 261, 262 of logical block 1; D kernel blocks 262, 263 of block 2
    assert [(so, do, ln) for _, so, _, do, ln in fa] == [
        (1 * 2_138_112 + k * 8192 + f * 4096, 2 * 536_576 + k * 4096, 4096) for k in (0, 1)]


@pytest.mark.parametrize("d", [0, 1])
def test_example_2_p4_to_d2_fan_in(layout: Layout, d: int) -> None:
    """Example 2: SSM fan-in from P ranks 2d, 2d+1; FA only from 2d (duplicate head skipped)."""
    src, dst = _ranks(layout, 4), layout.for_rank(2, d, num_blocks=6)
    template = compile_plan(src, dst, coalesce=False)
    assert template.notify_ranks == (2 * d, 2 * d + 1)
    plan = template.bind(
        {"attention.0": [0], "mamba.0": [1], "mamba.1": [2], "mamba.2": [3], "mamba.3": [4]},
        {"attention.0": [0], "mamba.0": [3], "mamba.1": [2], "mamba.2": [1], "mamba.3": [4]},
        num_tokens=16,
    )
    rows = _state_rows(plan, 1, 536_576, 3, 1_069_056, "kv_cache.0")
    for i, rank in enumerate((2 * d, 2 * d + 1)):
        assert rows[rank] == [(0, 6144 * i, 6144), (6144, 12288 + 1536 * i, 1536),
                              (7680, 15360 + 1536 * i, 1536), (9216, 18432 + 524288 * i, 524288)]
    attention_sources = {r.source_rank for r in plan.reads
                         for row in r.rows() if row[4] == 4096}
    assert attention_sources == {2 * d}


def test_example_4_fa_slots_k2_p4_to_d1() -> None:
    """Example 4 (toyB, K=2): P ranks hold heads 0,0,1,1 -> FA sources [0, 2], slots 0 and 1."""
    text = NANO_FP8.replace("float8_e4m3fn", "bfloat16")
    layout = loads_layout(text)
    src, dst = _ranks(layout, 4), layout.for_rank(1, 0, num_blocks=6)
    template = compile_plan(src, dst)
    fa_sources = sorted({j.src_rank for j in template.jobs if j.kind == "attention"})
    assert fa_sources == [0, 2]
    head_bytes = dst.placement("layers.5", "kv").piece.nbytes // 2
    for job in template.jobs:
        if job.kind == "attention":
            assert job.runs.dst.tolist() == [0 if job.src_rank == 0 else head_bytes]
            assert job.runs.length.tolist() == [head_bytes]
    assert sorted({j.src_rank for j in template.jobs if j.kind == "mamba2"}) == [0, 1, 2, 3]
    assert template.notify_ranks == (0, 1, 2, 3)


def test_coalescing_quarters_descriptors_for_contiguous_requests(layout: Layout) -> None:
    """Contiguous allocations: consecutive kernel blocks of a full-page read merge."""
    src, dst = _ranks(layout, 1, blocks=40), layout.for_rank(1, 0, num_blocks=40)
    tables = {"attention.0": list(range(8)), "mamba.0": [30], "mamba.1": [31], "mamba.2": [32], "mamba.3": [33]}
    merged = compile_plan(src, dst).bind(tables, tables, num_tokens=8 * 4176)
    plain = compile_plan(src, dst, coalesce=False).bind(tables, tables, num_tokens=8 * 4176)
    assert merged.statistics.bytes == plain.statistics.bytes
    assert merged.statistics.descriptor_count * 4 <= plain.statistics.descriptor_count
    assert np.sum([r.total_bytes for r in merged.reads]) == merged.statistics.bytes
