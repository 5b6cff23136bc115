"""Prefix-cache hits on D: the plan moves only the blocks D lacks, plus every running state.

Proved against the byte oracle (D's cached blocks keep D's own bytes, everything else is
exact) on the shipped hybrid layouts, across TP pairs and differing P/D block sizes, with
negative controls: a plan that writes a cached block — even with the right values — fails.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import BlockIdError, LayoutError
from hybridxfer.layout import Layout, RankLayout, load_layout, loads_layout
from hybridxfer.plan import TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import RankSpec, Request, blank_destination, expected_memory, fill_source_memory
from hybridxfer.testing.oracle import execute_memcpy

from ._oracle_run import check_pairing
from .test_properties import layouts

ROOT = Path(__file__).resolve().parents[2] / "layouts"
HYBRIDS = ["nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b", "jamba-v0.1", "granite-4.0-h-tiny", "falcon-h1-7b"]


@functools.lru_cache(maxsize=None)
def _load(model: str) -> Layout:
    return load_layout(ROOT / f"{model}.toml")


def _block_tokens(layout: Layout) -> int:
    return max(layout.for_rank(tp, 0, num_blocks=1).logical_block_tokens for tp in (1, 2, 4))


def _token_groups(layout: Layout) -> list[str]:
    return [g.name for g in layout.groups
            if layout.layer_spec(g.layers[0]).kind_name in ("attention", "sliding_window", "mla")]


def _plain_plan(layout: Layout, src_tp: int, dst_tp: int, tokens: int) -> TransferPlan:
    """The request without a hit, bound as :func:`check_pairing` binds it (its numbers only)."""
    src = [layout.for_rank(src_tp, r, num_blocks=4096) for r in range(src_tp)]
    dst = layout.for_rank(dst_tp, dst_tp - 1, num_blocks=4096)
    s_tab = {g: [b + 1 for b in ids] for g, ids in contiguous_block_tables(src[0], tokens).items()}
    return compile_plan(src, dst).bind(s_tab, contiguous_block_tables(dst, tokens), num_tokens=tokens)


@pytest.mark.parametrize("model", HYBRIDS)
@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 1), (1, 2), (2, 1), (2, 4), (4, 2)])
def test_hit_keeps_cached_blocks_and_moves_the_rest(model: str, src_tp: int, dst_tp: int) -> None:
    layout = _load(model)
    bs = _block_tokens(layout)
    tokens = 3 * bs + 7
    full = _plain_plan(layout, src_tp, dst_tp, tokens)
    bs_d = layout.for_rank(dst_tp, 0, num_blocks=1).logical_block_tokens
    for cached in (bs + bs // 2, 2 * bs_d, tokens):  # inside a block, on a boundary, everything
        plan = check_pairing(layout, layout, src_tp, dst_tp, tokens, dst_ranks=[dst_tp - 1],
                             dst_cached_tokens=cached)[0]
        stats = plan.statistics
        assert stats.skipped_cached_bytes == full.statistics.bytes - stats.bytes > 0
        assert full.statistics.skipped_cached_bytes == 0 and not full.cached_prefix
        # every running state still moves: a prefix hit never reuses a stale state
        states = {k: v for k, v in full.statistics.bytes_by_kind.items() if k not in ("attention", "mla")}
        assert {k: stats.bytes_by_kind.get(k) for k in states} == states
        kept_tokens = cached // bs_d * bs_d
        for group in _token_groups(layout):
            prefix = plan.cached_prefix[group]
            assert (prefix.requested_tokens, prefix.kept_tokens, prefix.block_tokens) == (cached, kept_tokens, bs_d)
            assert prefix.ends_inside_block == (cached != kept_tokens)
            assert len(prefix.blocks) == kept_tokens // bs_d
            # the blocks D keeps are not among those a failure would invalidate
            assert not set(prefix.blocks) & set(plan.dst_blocks.get(group, ()))
            assert set(prefix.blocks) | set(plan.dst_blocks.get(group, ())) == set(full.dst_blocks[group])


@pytest.mark.parametrize(
    ("model", "src_sizes", "dst_sizes"),
    [
        ("nemotron-3-nano-30b-a3b", (2096, 16), (2112, 32)),
        ("nemotron-3-nano-30b-a3b", (2096, 2096), (2096, 16)),
        ("jamba-v0.1", (80, 16), (96, 32)),
        ("jamba-v0.1", (96, 32), (64, 16)),
        ("qwen3-next-80b-a3b", (544, 32), (576, 64)),
        ("granite-4.0-h-tiny", (400, 16), (256, 64)),
    ],
)
@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 2), (2, 1)])
def test_hit_across_differing_block_sizes(model: str, src_sizes: tuple[int, int], dst_sizes: tuple[int, int],
                                          src_tp: int, dst_tp: int) -> None:
    """Hits count tokens: P's blocks do not matter, D keeps whole D blocks only."""
    layout = _load(model)
    tokens = max(src_sizes[0], dst_sizes[0]) * 3 + 5
    for cached in (dst_sizes[0] + 1, 2 * dst_sizes[0] - 1, src_sizes[0] + 3):
        plan = check_pairing(layout, layout, src_tp, dst_tp, tokens, src_sizes=src_sizes, dst_sizes=dst_sizes,
                             dst_ranks=[dst_tp - 1], dst_cached_tokens=cached)[0]
        prefix = plan.cached_prefix[_token_groups(layout)[0]]
        assert prefix.kept_tokens == cached // dst_sizes[0] * dst_sizes[0]


def test_per_group_hit_only_spares_that_group() -> None:
    layout = _load("jamba-v0.1")
    groups = _token_groups(layout)
    bs = _block_tokens(layout)
    hit = {groups[0]: 2 * bs + 1}
    plan = check_pairing(layout, layout, 2, 2, 4 * bs, dst_ranks=[1], dst_cached_tokens=hit)[0]
    assert list(plan.cached_prefix) == [groups[0]]
    full = check_pairing(layout, layout, 2, 2, 4 * bs, dst_ranks=[1])[0]
    assert plan.dst_blocks[groups[0]] == full.dst_blocks[groups[0]][2:]
    assert all(plan.dst_blocks[g] == full.dst_blocks[g] for g in plan.dst_blocks if g != groups[0])


def test_zero_hit_is_the_plain_plan() -> None:
    layout = _load("nemotron-3-nano-30b-a3b")
    a = check_pairing(layout, layout, 2, 1, 3000, dst_ranks=[0])[0]
    b = check_pairing(layout, layout, 2, 1, 3000, dst_ranks=[0], dst_cached_tokens=0)[0]
    assert a.descriptors.rows() == b.descriptors.rows() and a.statistics == b.statistics


# -- negative controls: the oracle catches plans that write D's cached blocks -----------------------

@pytest.mark.parametrize("model", ["nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b", "falcon-h1-7b"])
def test_a_plan_that_ignores_the_hit_is_caught(model: str) -> None:
    layout = _load(model)
    bs = _block_tokens(layout)
    with pytest.raises(AssertionError, match="bytes differ"):
        check_pairing(layout, layout, 1, 2, 3 * bs, dst_ranks=[1], oracle_cached_tokens=bs + 1)


@pytest.mark.parametrize("model", ["nemotron-3-nano-30b-a3b", "jamba-v0.1", "granite-4.0-h-tiny"])
def test_one_write_into_a_cached_block_is_caught(model: str) -> None:
    """Even a single row carrying P's right bytes into a kept block is a failure."""
    layout = _load(model)
    bs = _block_tokens(layout)
    tokens, cached = 3 * bs + 2, 2 * bs
    full = check_pairing(layout, layout, 2, 1, tokens, dst_ranks=[0], coalesce=False)[0]
    hit = check_pairing(layout, layout, 2, 1, tokens, dst_ranks=[0], coalesce=False, dst_cached_tokens=cached)[0]
    extra = sorted(set(full.descriptors.rows()) - set(hit.descriptors.rows()))
    assert extra

    def write_one_cached_row(plan: TransferPlan, dst: RankLayout) -> TransferPlan:
        sr, so, dr, do, n = extra[len(extra) // 2]
        one = Descriptors(*(np.array([v], dtype=np.int64) for v in (sr, so, dr, do, n)),
                          src_rank=np.array([0], dtype=np.int64))
        return attrs.evolve(plan, descriptors=Descriptors.concat([plan.descriptors, one]))

    with pytest.raises(AssertionError, match="bytes differ"):
        check_pairing(layout, layout, 2, 1, tokens, dst_ranks=[0], coalesce=False, dst_cached_tokens=cached,
                      tamper=write_one_cached_row)


# -- bad counts -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nano_pair() -> tuple[list[RankLayout], RankLayout]:
    nano = _load("nemotron-3-nano-30b-a3b")
    return [nano.for_rank(1, 0, num_blocks=8)], nano.for_rank(1, 0, num_blocks=8)


@pytest.mark.parametrize(
    ("cached", "message"),
    [
        (5000, r"D group 'attention.0': dst_cached_tokens=5000 exceeds the request's 3000 tokens \(D lists 2 blocks"),
        ({"mamba.0": 3001}, r"D group 'mamba.0': dst_cached_tokens=3001 exceeds the request's 3000 tokens"),
        (-1, r"D group 'attention.0' is -1: it must be >= 0"),
        ({"attention.0": -5}, r"D group 'attention.0' is -5"),
        ({"attention.9": 16}, r"D has no KV group\(s\) \['attention.9'\] \(counts \[16\]\)"),
        ({"attention.0": 1.5}, r"D group 'attention.0' must be an integer, got 1.5"),
        (True, r"must be an integer, got True"),
    ],
)
def test_bad_cached_counts_are_typed_errors(nano_pair: tuple[list[RankLayout], RankLayout], cached: object,
                                            message: str) -> None:
    src, dst = nano_pair
    tables = contiguous_block_tables(dst, 3000)
    with pytest.raises(BlockIdError, match=message):
        compile_plan(src, dst).bind(tables, tables, num_tokens=3000, dst_cached_tokens=cached)  # type: ignore[arg-type]


def test_numpy_counts_are_accepted(nano_pair: tuple[list[RankLayout], RankLayout]) -> None:
    src, dst = nano_pair
    tables = contiguous_block_tables(dst, 3000)
    plan = compile_plan(src, dst).bind(tables, tables, num_tokens=3000,
                                       dst_cached_tokens={"attention.0": int(np.int64(2100))})
    assert plan.cached_prefix["attention.0"].blocks == (0,)


def test_a_kept_block_written_through_shared_memory_is_refused(nano_pair: tuple[list[RankLayout], RankLayout]) -> None:
    """Groups sharing pages: D's cached block must not be another group's write target."""
    src, dst = nano_pair
    tables = contiguous_block_tables(dst, 3000)
    bad = dict(tables)
    bad["mamba.0"] = [tables["attention.0"][0]]  # the kept attention block, reused as a state block
    with pytest.raises(BlockIdError, match="holds block 0 cached, but group 'mamba.0'"):
        compile_plan(src, dst).bind(tables, bad, num_tokens=3000, dst_cached_tokens=2096)


# -- sliding windows and random layouts -------------------------------------------------------------

def _window_layout(window: int) -> Layout:
    return loads_layout(f"""
format = "hybridxfer.layout/1"
[model]
id = "window-hybrid"
pattern = "WSWS"
legend = {{ W = "win", S = "st" }}
[specs.win]
kind = "sliding_window"
num_kv_heads = 2
head_dim = 4
dtype = "bfloat16"
window = {window}
kv = "halves"
[specs.st]
kind = "mamba2"
num_heads = 4
head_dim = 2
n_groups = 2
d_state = 3
conv_kernel = 3
conv_dtype = "bfloat16"
ssm_dtype = "float32"
conv_layout = "DS"
[engine]
pooling = "hybrid-shared"
""")


@pytest.mark.parametrize(("cached", "spared"), [(8, 0), (40, 0), (48, 8), (64, 24), (70, 24)])
def test_sliding_window_hit_spares_only_window_blocks(cached: int, spared: int) -> None:
    """70 tokens, window 30, blocks of 8: tokens 40.. move without a hit (blocks 5..8); a hit
    spares the window's blocks it covers, never the last, partial one."""
    layout = _window_layout(30)
    src = [layout.for_rank(1, 0, num_blocks=40, logical_block_tokens=8, kernel_block_tokens=8)]
    dst = layout.for_rank(1, 0, num_blocks=40, logical_block_tokens=8, kernel_block_tokens=8)
    tables = contiguous_block_tables(dst, 70)
    template = compile_plan(src, dst)
    full = template.bind(tables, tables, num_tokens=70)
    plan = template.bind(tables, tables, num_tokens=70, dst_cached_tokens=cached)
    chunk_bytes = 2 * 2 * 4 * 2 * 8  # K,V x heads x head_dim x bf16 x tokens, per layer
    assert plan.statistics.skipped_cached_bytes == full.statistics.bytes - plan.statistics.bytes
    assert plan.statistics.skipped_cached_bytes == spared // 8 * chunk_bytes * 2  # two window layers
    s_mem = [fill_source_memory(layout, RankSpec(1, 0, 40, 8, 8), Request(tables, 70))]
    d_spec = RankSpec(1, 0, 40, 8, 8)
    d_mem = blank_destination(layout, d_spec)
    execute_memcpy(plan, s_mem, d_mem)
    groups = {g.name: cached for g in layout.groups}
    want = expected_memory(layout, d_spec, Request(tables, 70, groups), chunk_tokens=template.chunk_tokens)
    assert all(np.array_equal(d_mem[n], want[n]) for n in dst.region_names)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts(), tps=st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 4), (4, 2)]),
       kernels=st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([2, 4, 8])),
       ratios=st.tuples(st.integers(1, 3), st.integers(1, 3)), tokens=st.integers(1, 70),
       fraction=st.floats(0, 1), seed=st.integers(0, 2**16), coalesce=st.booleans())
def test_random_hits_are_byte_exact(layout: Layout, tps: tuple[int, int], kernels: tuple[int, int],
                                    ratios: tuple[int, int], tokens: int, fraction: float, seed: int,
                                    coalesce: bool) -> None:
    src_tp, dst_tp = tps
    rng = np.random.default_rng(seed)
    sizes = [(k * r, k) for k, r in zip(kernels, ratios, strict=True)]
    blocks = [math.ceil(tokens / bs) * len(layout.groups) + 3 for bs, _ in sizes]
    try:
        src = [layout.for_rank(src_tp, r, num_blocks=blocks[0], logical_block_tokens=sizes[0][0],
                               kernel_block_tokens=sizes[0][1]) for r in range(src_tp)]
        dst = layout.for_rank(dst_tp, dst_tp - 1, num_blocks=blocks[1], logical_block_tokens=sizes[1][0],
                              kernel_block_tokens=sizes[1][1])
    except LayoutError:
        assume(False)
    s_spec = [RankSpec(src_tp, r, blocks[0], *sizes[0]) for r in range(src_tp)]
    d_spec = RankSpec(dst_tp, dst_tp - 1, blocks[1], *sizes[1])
    s_tab, d_tab = (_shuffled(layout, spec, tokens, rng) for spec in (s_spec[0], d_spec))
    cached = {g.name: int(fraction * tokens) for g in layout.groups}
    template = compile_plan(src, dst, coalesce=coalesce)
    plan = template.bind(s_tab, d_tab, num_tokens=tokens, dst_cached_tokens=cached)
    src_mems = [fill_source_memory(layout, s, Request(s_tab, tokens)) for s in s_spec]
    dst_mem = blank_destination(layout, d_spec)
    execute_memcpy(plan, src_mems, dst_mem)
    want = expected_memory(layout, d_spec, Request(d_tab, tokens, cached), chunk_tokens=template.chunk_tokens)
    for name in dst.region_names:
        assert np.array_equal(dst_mem[name], want[name]), name
    full = template.bind(s_tab, d_tab, num_tokens=tokens)
    assert plan.statistics.skipped_cached_bytes == full.statistics.bytes - plan.statistics.bytes


def _shuffled(layout: Layout, rs: RankSpec, tokens: int, rng: np.random.Generator) -> dict[str, list[int]]:
    pool = rng.permutation(rs.num_blocks).tolist()
    out, pos = {}, 0
    for g in layout.groups:
        kind = layout.layer_spec(g.layers[0]).kind_name
        n = math.ceil(tokens / rs.logical_block_tokens) if kind in ("attention", "sliding_window", "mla") else 1
        out[g.name], pos = pool[pos:pos + n], pos + n
    return out


def test_sliding_window_blocks_outside_the_window_may_be_null() -> None:
    """Blocks that left the window are ``-1`` on both sides; a hit covering them keeps
    only real blocks, and every other byte is exact."""
    layout = _window_layout(30)
    src = [layout.for_rank(1, 0, num_blocks=40, logical_block_tokens=8, kernel_block_tokens=8)]
    dst = layout.for_rank(1, 0, num_blocks=40, logical_block_tokens=8, kernel_block_tokens=8)
    tables = contiguous_block_tables(dst, 70)
    window_group = "win.0"
    tables[window_group] = [-1] * 4 + tables[window_group][4:]  # tokens 0..31 left the window
    plan = compile_plan(src, dst).bind(tables, tables, num_tokens=70, dst_cached_tokens=50)
    assert plan.cached_prefix[window_group].blocks == tuple(tables[window_group][4:6])
    assert plan.dst_blocks[window_group] == tuple(tables[window_group][6:])
    spec = RankSpec(1, 0, 40, 8, 8)
    d_mem = blank_destination(layout, spec)
    execute_memcpy(plan, [fill_source_memory(layout, spec, Request(tables, 70))], d_mem)
    want = expected_memory(layout, spec, Request(tables, 70, {g.name: 50 for g in layout.groups}), chunk_tokens=8)
    assert all(np.array_equal(d_mem[n], want[n]) for n in dst.region_names)


def test_hit_without_num_tokens_reads_d_table_from_token_0(nano_pair: tuple[list[RankLayout], RankLayout]) -> None:
    """With a hit, D's table starts at token 0: the "D lists only P's last blocks" form of a
    plain bind does not apply, so a short D table is refused rather than misread."""
    src, dst = nano_pair
    tables = contiguous_block_tables(dst, 3000)
    plan = compile_plan(src, dst).bind(tables, tables, dst_cached_tokens=2096)
    assert plan.cached_prefix["attention.0"].blocks == (0,)
    assert plan.dst_blocks["attention.0"] == (1,)
    short = {**tables, "attention.0": [7]}
    long_src = {**tables, "attention.0": [0, 1, 2]}
    with pytest.raises(BlockIdError, match="pass num_tokens"):
        compile_plan(src, dst).bind(long_src, short, dst_cached_tokens=16)
