"""Layer-wise streaming against the byte oracle, at every step of a chunked prefill.

P's memory is modelled mid-prefill (:mod:`._stream_sim`): token layers hold only the
tokens they computed, state layers a partial state until they consumed the whole
prompt. After every readiness the step's rows are copied from that memory into D's, and
D must hold the oracle's final bytes wherever it was written, its own bytes elsewhere,
and exactly the schedule's pending blocks must still be wrong. Negative controls: the
rows a schedule withholds, copied early, give bytes the oracle rejects.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hybridxfer.errors import LayoutError
from hybridxfer.layout import Layout, RankLayout, is_token_spec, load_layout
from hybridxfer.plan import Readiness, StreamSchedule, compile_plan, contiguous_block_tables

from ._stream_sim import Prefill, Receiver, check_step, rank_spec
from .test_properties import layouts

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = {
    "toy": ROOT / "docs" / "examples" / "toy_hybrid.toml",
    "nemotron": ROOT / "layouts" / "nemotron-3-nano-30b-a3b.toml",
    "qwen3-next": ROOT / "layouts" / "qwen3-next-80b-a3b.toml",
}


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Layout:
    return load_layout(LAYOUTS[name])


def _blocks_needed(r: RankLayout, tokens: int) -> int:
    per = -(-tokens // r.logical_block_tokens)
    return sum(per if is_token_spec(r.layout.layer_spec(g.layers[0]).kind_name) else 1 for g in r.layout.groups)


class Stream:
    """One request streamed from every P rank to one D rank, checked at every step."""

    def __init__(self, layout: Layout, src_tp: int, dst_tp: int, dst_rank: int, tokens: int, *,
                 cached: int | None = None, group_layers: int = 1, coalesce: bool = True,
                 src_sizes: tuple[int | None, int | None] = (None, None),
                 dst_sizes: tuple[int | None, int | None] = (None, None)) -> None:
        def rank(tp: int, r: int, nb: int, sizes: tuple[int | None, int | None]) -> RankLayout:
            return layout.for_rank(tp, r, num_blocks=nb, logical_block_tokens=sizes[0], kernel_block_tokens=sizes[1])

        nb = _blocks_needed(rank(src_tp, 0, 1, src_sizes), tokens) + 1
        self.src = [rank(src_tp, r, nb, src_sizes) for r in range(src_tp)]
        self.src_blocks = {g: [b + 1 for b in ids] for g, ids in contiguous_block_tables(self.src[0], tokens).items()}
        self.dst = rank(dst_tp, dst_rank, _blocks_needed(rank(dst_tp, dst_rank, 1, dst_sizes), tokens) + 2, dst_sizes)
        self.dst_blocks = contiguous_block_tables(self.dst, tokens)
        template = compile_plan(self.src, self.dst, coalesce=coalesce)
        self.schedule = template.stream(self.src_blocks, self.dst_blocks, num_tokens=tokens,
                                        dst_cached_tokens=cached, group_layers=group_layers)
        g = template.chunk_tokens
        self.prefill = [Prefill(layout, rank_spec(s), self.src_blocks, tokens, g) for s in self.src]
        hits = None if cached is None else {grp.name: cached for grp in layout.groups}
        self.receiver = Receiver(layout, self.dst, self.dst_blocks, tokens, g, hits)
        self.layers = [layer for grp in self.schedule.groups for layer in grp.layers]
        self.steps = 0
        check_step(self.schedule, self.receiver)

    def report(self, layers: Sequence[str], t: int) -> None:
        """P's layers got to ``t`` tokens; D applies what the schedule hands out, then checks."""
        for p in self.prefill:
            for layer in layers:
                p.report(layer, t)
        rows = self.schedule.advance(Readiness(frozenset(layers), t))
        self.receiver.apply(rows, [p.mem for p in self.prefill], self.schedule.plan.src_region_names)
        self.steps += 1
        check_step(self.schedule, self.receiver)

    def run(self, boundaries: Sequence[int], *, per: int = 1) -> None:
        """A chunked prefill: every ``per`` layers report at each chunk boundary, in layer order."""
        for t in boundaries:
            for i in range(0, len(self.layers), per):
                self.report(self.layers[i:i + per], t)
        assert self.schedule.complete() and not self.schedule.pending_blocks()
        assert self.receiver.matches_final()


def _boundaries(tokens: int, chunk: int) -> list[int]:
    return [*range(chunk, tokens, chunk), tokens]


@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 1), (1, 4), (4, 2), (2, 1)])
@pytest.mark.parametrize("group_layers", [1, 2])
def test_toy_chunked_prefill_every_step(src_tp: int, dst_tp: int, group_layers: int) -> None:
    layout = _load("toy")
    for dst_rank in range(dst_tp):
        s = Stream(layout, src_tp, dst_tp, dst_rank, 77, group_layers=group_layers)
        s.run(_boundaries(77, 20))  # chunks that end inside P's and D's blocks
        assert s.steps == 4 * len(s.layers)


@pytest.mark.parametrize(("model", "src_tp", "dst_tp", "dst_rank", "chunk", "group_layers"),
                         [("nemotron", 1, 4, 3, 1500, 1), ("qwen3-next", 4, 2, 1, 400, 4)])
def test_real_layouts_every_step(model: str, src_tp: int, dst_tp: int, dst_rank: int, chunk: int,
                                 group_layers: int) -> None:
    """Nemotron-3-Nano P1 -> D4 (split x|B|C conv, replicated KV head), Qwen3-Next P4 -> D2 (GDN
    gathered from two P ranks): chunks that end inside blocks, every layer or group reporting."""
    layout = _load(model)
    tokens = 2 * layout.for_rank(max(src_tp, dst_tp), 0, num_blocks=1).logical_block_tokens + 37
    s = Stream(layout, src_tp, dst_tp, dst_rank, tokens, group_layers=group_layers)
    assert all(len(g.layers) == group_layers for g in s.schedule.groups)
    s.run(_boundaries(tokens, chunk), per=group_layers)


@pytest.mark.parametrize(("src_tp", "dst_tp", "cached"), [(1, 2, 40), (2, 1, 32), (4, 2, 77)])
def test_prefix_hit_every_step(src_tp: int, dst_tp: int, cached: int) -> None:
    """D's cached blocks are never written at any step; every state still moves, once final."""
    layout = _load("toy")
    s = Stream(layout, src_tp, dst_tp, dst_tp - 1, 77, cached=cached)
    kept = {g: p.blocks for g, p in s.schedule.plan.cached_prefix.items()}
    assert kept and all(kept.values())
    s.run(_boundaries(77, 16), per=2)
    for group, blocks in kept.items():
        for b in blocks:
            for region, a, z in s.receiver.block_ranges[(group, b)]:
                assert not s.receiver.covered[region][a:z].any()


def test_one_readiness_of_everything_is_the_bulk_plan() -> None:
    layout = _load("toy")
    s = Stream(layout, 2, 4, 1, 77, group_layers=len(layout.layers))
    s.report(s.layers, 77)
    assert s.schedule.complete() and s.receiver.matches_final()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts(), tps=st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 4), (4, 2)]),
       kernels=st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([2, 4, 8])),
       ratios=st.tuples(st.integers(1, 3), st.integers(1, 3)), tokens=st.integers(1, 60),
       fraction=st.floats(0, 1), chunk=st.integers(1, 25), group_layers=st.integers(1, 3),
       coalesce=st.booleans())
def test_random_layouts_every_step(layout: Layout, tps: tuple[int, int], kernels: tuple[int, int],
                                   ratios: tuple[int, int], tokens: int, fraction: float, chunk: int,
                                   group_layers: int, coalesce: bool) -> None:
    """Any kind (sliding windows, MLA, Mamba1/2, GDN), pooling, TP pair, block sizes, prefix hit."""
    src_tp, dst_tp = tps
    sizes = [(k * r, k) for k, r in zip(kernels, ratios, strict=True)]
    try:
        s = Stream(layout, src_tp, dst_tp, dst_tp - 1, tokens, cached=int(fraction * tokens) or None,
                   group_layers=group_layers, coalesce=coalesce, src_sizes=sizes[0], dst_sizes=sizes[1])
    except LayoutError:
        assume(False)
        return
    s.run(_boundaries(tokens, chunk), per=group_layers)


# -- negative controls ------------------------------------------------------------------------------

def _withheld(schedule: StreamSchedule, layers: Sequence[str], tokens: int) -> StreamSchedule:
    """A copy of ``schedule`` told (falsely) that every layer is done: it hands out what was held back."""
    other = schedule.fork()
    other.advance(Readiness(frozenset(layers), tokens))
    return other


@pytest.mark.parametrize(("model", "src_tp", "dst_tp", "chunk"),
                         [("toy", 1, 4, 20), ("toy", 4, 2, 24), ("nemotron", 1, 4, 1500), ("qwen3-next", 4, 2, 400)])
def test_state_rows_moved_mid_prefill_are_rejected(model: str, src_tp: int, dst_tp: int, chunk: int) -> None:
    """Halfway through the prompt every state row is withheld; copying them anyway moves a
    partial state, which the oracle rejects for the final state, byte by byte."""
    layout = _load(model)
    tokens = 2 * layout.for_rank(max(src_tp, dst_tp), 0, num_blocks=1).logical_block_tokens + 37
    s = Stream(layout, src_tp, dst_tp, dst_tp - 1, tokens)
    for t in _boundaries(tokens, chunk)[:-1]:
        for layer in s.layers:
            s.report([layer], t)
    state_groups = [g for g in s.schedule.groups if g.state]
    assert state_groups and set(s.schedule.pending_groups()) >= {g.name for g in state_groups}
    # the withheld rows of state groups: exactly what the schedule refused to hand out so far
    early = _withheld(s.schedule, s.layers, tokens)
    state_rows = [early.group_rows(g.name) for g in state_groups]
    assert all(len(r) for r in state_rows)
    for rows in state_rows:
        s.receiver.apply(rows, [p.mem for p in s.prefill], s.schedule.plan.src_region_names)
    problems = s.receiver.problems()
    assert problems and all("not final" in p for p in problems), problems
    # every state byte is wrong, not just some: the partial state differs everywhere
    for rows in state_rows:
        for dr, do, n in zip(rows.dst_region.tolist(), rows.dst_offset.tolist(), rows.length.tolist(), strict=True):
            name = s.receiver.region_names[dr]
            assert not np.any(s.receiver.mem[name][do:do + n] == s.receiver.final[name][do:do + n])


def test_token_rows_of_an_unfinished_chunk_are_rejected() -> None:
    """Attention rows of tokens P has not computed yet carry noise: the oracle rejects them."""
    layout = _load("toy")
    s = Stream(layout, 1, 2, 0, 77)
    for layer in s.layers:
        s.report([layer], 40)
    attention = [g for g in s.schedule.groups if not g.state]
    early = _withheld(s.schedule, s.layers, 77)
    rows = early.advance(Readiness(frozenset(attention[0].layers), 77))  # already advanced: nothing new
    assert not len(rows)
    pending = s.schedule.fork()
    rows = pending.advance(Readiness(frozenset(attention[0].layers), 77))
    assert len(rows)
    s.receiver.apply(rows, [p.mem for p in s.prefill], s.schedule.plan.src_region_names)
    assert any("not final" in p for p in s.receiver.problems())
