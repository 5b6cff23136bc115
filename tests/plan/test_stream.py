"""Streaming schedules: the union of the steps is the bulk plan, rows wait for their layer,
readiness is checked, and the schedule answers what an executor needs to know.

The byte-level proof (every step against the oracle, with negative controls) is in
``test_stream_oracle.py``; here the destination byte maps of all steps together are
compared with the bulk plan's, on real layouts at realistic sizes, with prefix hits,
pipeline stages and heterogeneous TP.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import BlockIdError, InvalidArgumentError
from hybridxfer.layout import Layout, is_token_spec, load_layout
from hybridxfer.plan import (
    LayerGroup,
    PlanTemplate,
    Readiness,
    StreamSchedule,
    compile_plan,
    contiguous_block_tables,
    stream_schedule,
)

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Layout:
    path = ROOT / "docs" / "examples" / "toy_hybrid.toml" if name == "toy" else ROOT / "layouts" / f"{name}.toml"
    return load_layout(path)


def _pair(model: str, src_tp: int, dst_tp: int, dst_rank: int, tokens: int) -> tuple[PlanTemplate, dict[str, list[int]],
                                                                                     dict[str, list[int]]]:
    layout = _load(model)
    src = [layout.for_rank(src_tp, r, num_blocks=4096) for r in range(src_tp)]
    dst = layout.for_rank(dst_tp, dst_rank, num_blocks=4096)
    s_tab = {g: [b + 3 for b in ids] for g, ids in contiguous_block_tables(src[0], tokens).items()}
    return compile_plan(src, dst), s_tab, contiguous_block_tables(dst, tokens)


def canonical(rows: Descriptors) -> list[tuple[int, ...]]:
    """The destination byte map as maximal runs: equal lists <=> the same bytes from the same
    places. Fails when two rows write the same destination byte."""
    order = np.lexsort((rows.dst_offset, rows.dst_region))
    d = rows.take(order)
    same = d.dst_region[1:] == d.dst_region[:-1]
    overlap = same & (d.dst_offset[:-1] + d.length[:-1] > d.dst_offset[1:])
    assert not overlap.any(), f"{int(overlap.sum())} rows write destination bytes another row writes"
    merged = d.coalesce()
    return list(zip(merged.src_rank.tolist(), *(c.tolist() for c in (
        merged.src_region, merged.src_offset, merged.dst_region, merged.dst_offset, merged.length)), strict=True))


def _layers(schedule: StreamSchedule) -> list[str]:
    return [layer for g in schedule.groups for layer in g.layers]


def _drain(schedule: StreamSchedule, boundaries: Sequence[int], seed: int) -> list[Descriptors]:
    """Chunked prefill with layers reporting in shuffled order, some twice."""
    rng = random.Random(seed)
    steps = []
    layers = _layers(schedule)
    for t in boundaries:
        order = layers[:]
        rng.shuffle(order)
        for i in range(0, len(order), 3):
            part = order[i:i + rng.randint(1, 3)]
            steps.append(schedule.advance(Readiness(frozenset(part), t)))
            assert not len(schedule.advance(Readiness(frozenset(part[:1]), t)))  # a repeat: nothing new
        for layer in layers:  # stragglers the random slicing skipped
            steps.append(schedule.advance(Readiness(frozenset([layer]), t)))
    return steps


CASES = [
    ("nemotron-3-nano-30b-a3b", 1, 1, 0, 32_000),
    ("nemotron-3-nano-30b-a3b", 1, 4, 3, 32_000),
    ("nemotron-3-nano-30b-a3b", 4, 2, 1, 9_999),
    ("qwen3-next-80b-a3b", 1, 4, 2, 5_000),
    ("qwen3-next-80b-a3b", 4, 2, 0, 5_000),
    ("toy", 4, 1, 0, 301),
    ("deepseek-v2-lite", 4, 1, 0, 1_000),  # MLA latents spread over four P ranks
    ("jamba-v0.1", 2, 1, 0, 3_000),
]


@pytest.mark.parametrize(("model", "src_tp", "dst_tp", "dst_rank", "tokens"), CASES)
@pytest.mark.parametrize("group_layers", [1, 3])
def test_steps_together_are_exactly_the_bulk_plan(model: str, src_tp: int, dst_tp: int, dst_rank: int,
                                                  tokens: int, group_layers: int) -> None:
    template, s_tab, d_tab = _pair(model, src_tp, dst_tp, dst_rank, tokens)
    schedule = template.stream(s_tab, d_tab, num_tokens=tokens, group_layers=group_layers)
    assert schedule.pending_blocks() == dict(schedule.plan.dst_blocks)
    steps = _drain(schedule, [tokens // 3, tokens // 2 + 1, tokens - 1, tokens], seed=tokens)
    assert schedule.complete() and not schedule.pending_blocks() and not schedule.pending_groups()
    union = Descriptors.concat(steps)
    assert union.total_bytes == schedule.plan.statistics.bytes
    assert canonical(union) == canonical(schedule.plan.descriptors)
    assert not len(schedule.advance(Readiness(frozenset(_layers(schedule)), tokens)))


@pytest.mark.parametrize(("model", "src_tp", "dst_tp"), [("nemotron-3-nano-30b-a3b", 1, 4), ("toy", 4, 2),
                                                         ("qwen3-next-80b-a3b", 2, 1)])
def test_one_group_of_every_layer_binds_the_bulk_rows(model: str, src_tp: int, dst_tp: int) -> None:
    """Coalescing within a step loses nothing: all layers in one step give the bulk plan's rows."""
    template, s_tab, d_tab = _pair(model, src_tp, dst_tp, dst_tp - 1, 3_001)
    schedule = template.stream(s_tab, d_tab, num_tokens=3_001, group_layers=10_000)
    assert len(schedule.groups) == 1
    rows = schedule.advance(Readiness(frozenset(_layers(schedule)), 3_001))
    assert rows.rows() == schedule.plan.descriptors.rows()
    assert rows.src_rank.tolist() == schedule.plan.descriptors.src_rank.tolist()


def test_steps_are_coalesced_in_layer_group_order() -> None:
    template, s_tab, d_tab = _pair("nemotron-3-nano-30b-a3b", 1, 4, 3, 32_000)
    schedule = template.stream(s_tab, d_tab, num_tokens=32_000)
    step = schedule.advance_step(Readiness(frozenset(_layers(schedule)), 20_000))
    assert np.all(np.diff(step.group) >= 0)  # group by group, in layer order
    # attention rows merge across the 16-token chunks: D rank 3's pages (one replicated head)
    # follow each other, P's head slice breaks only at P's 2096-token blocks, so one row per
    # (layer, P block), not one per chunk (1250 per layer)
    attention = [i for i, g in enumerate(schedule.groups) if not g.state]
    rows = step.rows.take(np.isin(step.group, attention))
    assert template.src[0].logical_block_tokens == 2096
    assert len(rows) == len(attention) * -(-20_000 // 2096)
    merged = rows.coalesce()
    assert len(merged) == len(rows)  # nothing left to merge within a group
    assert step.completed == ()  # state layers are still withheld


def test_state_rows_wait_for_the_whole_prompt() -> None:
    template, s_tab, d_tab = _pair("nemotron-3-nano-30b-a3b", 2, 1, 0, 9_000)
    schedule = template.stream(s_tab, d_tab, num_tokens=9_000)
    state = [g for g in schedule.groups if g.state]
    assert len(state) == 23 and all(len(g.layers) == 1 for g in state)
    every = frozenset(_layers(schedule))
    for t in (0, 1, 4_000, 8_999):
        step = schedule.advance_step(Readiness(every, t))
        assert not set(step.group.tolist()) & {schedule.groups.index(g) for g in state}
    # everything but the states and the attention layers' last token (8999 < 9000) has moved
    assert set(schedule.pending_groups()) == set(_layers(schedule))
    pending = schedule.pending_blocks()
    assert pending.pop("attention.0") == (schedule.plan.dst_blocks["attention.0"][-1],)
    assert pending == {g: schedule.plan.dst_blocks[g] for g in ("mamba.0", "mamba.1", "mamba.2", "mamba.3")}
    schedule.advance(Readiness(frozenset(g.layers[0] for g in schedule.groups if not g.state), 9_000))
    assert set(schedule.pending_groups()) == {g.name for g in state}
    one = state[0]
    step = schedule.advance_step(Readiness(frozenset(one.layers), 9_000))
    assert step.completed == (one.name,) and step.rows.total_bytes == schedule.group_rows(one.name).total_bytes
    assert step.rows.total_bytes == sum(v for k, v in schedule.plan.statistics.bytes_by_kind.items()
                                        if k == "mamba2") // 23


def test_token_rows_follow_chunks_and_the_tail_waits_for_the_end() -> None:
    """P1 -> D1 toy: 32-token blocks; a row of the 5-token tail moves only at tokens_through = 37."""
    template, s_tab, d_tab = _pair("toy", 1, 1, 0, 37)
    schedule = template.stream(s_tab, d_tab, num_tokens=37)
    attention = next(g for g in schedule.groups if not g.state)
    per_token = 2 * 2 * 16 * 2  # K and V, 2 heads x 16 dims x bf16
    moved = [schedule.advance(Readiness(frozenset(attention.layers), t)).total_bytes for t in (31, 32, 36, 37)]
    assert moved == [0, 32 * per_token, 0, 5 * per_token]


def test_prefix_hit_blocks_never_appear() -> None:
    template, s_tab, d_tab = _pair("nemotron-3-nano-30b-a3b", 1, 4, 0, 5_000)
    schedule = template.stream(s_tab, d_tab, num_tokens=5_000, dst_cached_tokens=2_500)
    kept = schedule.plan.cached_prefix["attention.0"].blocks
    assert kept == (0, 1)
    assert not set(kept) & set(schedule.pending_blocks()["attention.0"])
    union = Descriptors.concat(_drain(schedule, [1_000, 2_112, 4_000, 5_000], seed=1))
    assert canonical(union) == canonical(schedule.plan.descriptors)
    # nothing moved for tokens D holds whole: rows of the cached blocks' tokens never become due
    fresh = template.stream(s_tab, d_tab, num_tokens=5_000, dst_cached_tokens=2_500)
    assert not len(fresh.advance(Readiness(frozenset(_layers(fresh)), 2_112)))


def test_pending_blocks_after_k_of_l_groups() -> None:
    """A stream that stops after k groups: exactly the blocks the other groups write are invalid."""
    template, s_tab, d_tab = _pair("qwen3-next-80b-a3b", 1, 2, 1, 2_000)
    schedule = template.stream(s_tab, d_tab, num_tokens=2_000, group_layers=4)
    done = schedule.groups[:5]
    for g in done:
        schedule.advance(Readiness(frozenset(g.layers), 2_000))
    expected: dict[str, set[int]] = {}
    for g in schedule.groups[5:]:
        for group, blocks in schedule.group_blocks(g.name).items():
            expected.setdefault(group, set()).update(blocks)
    assert schedule.pending_blocks() == {g: tuple(sorted(b)) for g, b in sorted(expected.items())}
    assert schedule.pending_groups() == tuple(g.name for g in schedule.groups[5:])


def test_pipeline_stage_schedule_has_only_its_layers() -> None:
    layout = _load("nemotron-h-8b")
    src = [layout.for_rank(2, t, pp=2, stage=s, num_blocks=64) for s in range(2) for t in range(2)]
    s_tab = contiguous_block_tables(src[0], 700)
    for stage in range(2):
        dst = layout.for_rank(1, 0, pp=2, stage=stage, num_blocks=64)
        schedule = stream_schedule(compile_plan(src, dst), s_tab, contiguous_block_tables(dst, 700), num_tokens=700)
        mine = [name for name in layout.stage_layers(2, stage) if name in {lay.name for lay in layout.layers}]
        assert _layers(schedule) == mine
        every = frozenset(lay.name for lay in layout.layers)  # P reports both stages' layers: the other is ignored
        union = Descriptors.concat([schedule.advance(Readiness(every, t)) for t in (350, 700)])
        assert schedule.complete() and canonical(union) == canonical(schedule.plan.descriptors)


def test_groups_are_consecutive_layers_in_model_order() -> None:
    template, s_tab, d_tab = _pair("nemotron-3-nano-30b-a3b", 1, 1, 0, 100)
    schedule = template.stream(s_tab, d_tab, num_tokens=100, group_layers=4)
    layout = _load("nemotron-3-nano-30b-a3b")
    names = [lay.name for lay in layout.layers]
    assert _layers(schedule) == names and [len(g.layers) for g in schedule.groups] == [4] * 7 + [1]
    assert schedule.groups[0] == LayerGroup("layers.0..layers.5", ("layers.0", "layers.2", "layers.4", "layers.5"),
                                            True)
    assert schedule.group_of_layer("layers.5") is schedule.groups[0]
    kinds = [is_token_spec(layout.layer_spec(n).kind_name) for n in names]
    assert [g.state for g in template.stream(s_tab, d_tab, num_tokens=100).groups] == [not k for k in kinds]


def test_fork_and_deepcopy_are_independent_and_builds_are_deterministic() -> None:
    template, s_tab, d_tab = _pair("toy", 2, 1, 0, 100)
    a = template.stream(s_tab, d_tab, num_tokens=100)
    b = copy.deepcopy(a)
    layers = frozenset(_layers(a))
    first = a.advance(Readiness(layers, 64))
    assert len(first) and not b.reported() and a.reported() == dict.fromkeys(_layers(a), 64)
    c = a.fork()
    assert not len(c.advance(Readiness(layers, 64)))
    assert b.advance(Readiness(layers, 64)).rows() == first.rows()
    again = template.stream(s_tab, d_tab, num_tokens=100)
    assert again.advance(Readiness(layers, 64)).rows() == first.rows()
    assert again.advance(Readiness(layers, 100)).rows() == b.advance(Readiness(layers, 100)).rows()
    assert not a.complete() and c.advance(Readiness(layers, 100)).total_bytes and c.complete()


# -- bad input ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_schedule_args() -> tuple[PlanTemplate, dict[str, list[int]], dict[str, list[int]]]:
    return _pair("toy", 1, 2, 0, 100)


def test_backwards_readiness_names_the_layer_and_both_counts(
        toy_schedule_args: tuple[PlanTemplate, dict[str, list[int]], dict[str, list[int]]]) -> None:
    template, s_tab, d_tab = toy_schedule_args
    schedule = template.stream(s_tab, d_tab, num_tokens=100)
    schedule.advance(Readiness(frozenset(["layers.1"]), 64))
    handed = schedule.reported()
    with pytest.raises(InvalidArgumentError, match=r"layer 'layers.1': readiness went backwards, "
                                                   r"tokens_through=40 after 64"):
        schedule.advance(Readiness(frozenset(["layers.0", "layers.1"]), 40))
    assert schedule.reported() == handed  # a refused readiness changes nothing


@pytest.mark.parametrize(("layers", "through", "message"), [
    (["layers.9"], 10, r"readiness names layer\(s\) \['layers.9'\] the model does not have"),
    (["layers.0", "mamba"], 10, r"\['mamba'\]"),
    (["layers.0"], 101, r"tokens_through=101 is outside \[0, 100\]"),
    (["layers.0"], -1, r"tokens_through=-1 is outside"),
    (["layers.0"], True, r"tokens_through must be an integer, got True"),
    (["layers.0"], 1.5, r"tokens_through must be an integer, got 1.5"),
])
def test_bad_readiness_is_a_typed_error(
        toy_schedule_args: tuple[PlanTemplate, dict[str, list[int]], dict[str, list[int]]],
        layers: list[str], through: object, message: str) -> None:
    template, s_tab, d_tab = toy_schedule_args
    schedule = template.stream(s_tab, d_tab, num_tokens=100)
    with pytest.raises(InvalidArgumentError, match=message):
        schedule.advance(Readiness(frozenset(layers), through))  # type: ignore[arg-type]
    assert not schedule.reported()


def test_bad_arguments_are_typed_errors(
        toy_schedule_args: tuple[PlanTemplate, dict[str, list[int]], dict[str, list[int]]]) -> None:
    template, s_tab, d_tab = toy_schedule_args
    for bad in (0, -2, True, 1.0):
        with pytest.raises(InvalidArgumentError, match="group_layers must be an integer >= 1"):
            template.stream(s_tab, d_tab, num_tokens=100, group_layers=bad)  # type: ignore[arg-type]
    with pytest.raises(BlockIdError, match="fewer than num_tokens=999"):
        template.stream(s_tab, d_tab, num_tokens=999)
    schedule = template.stream(s_tab, d_tab, num_tokens=100)
    with pytest.raises(InvalidArgumentError, match="no layer group 'layers.7'"):
        schedule.group_rows("layers.7")
    with pytest.raises(InvalidArgumentError, match="layer 'layers.7' is not in this schedule"):
        schedule.group_of_layer("layers.7")


def test_positions_must_be_known() -> None:
    """Without num_tokens, fewer D blocks would be read as P's last ones: refused for streaming."""
    template, s_tab, d_tab = _pair("toy", 1, 1, 0, 100)
    short = {g: ids[1:] if len(ids) > 1 else ids for g, ids in d_tab.items()}
    template.bind(s_tab, short)  # bulk accepts it (a partial prefix hit, by block count)
    with pytest.raises(InvalidArgumentError, match="pass num_tokens"):
        template.stream(s_tab, short)
    whole = template.stream(s_tab, d_tab)  # num_tokens taken from the token groups
    assert whole.num_tokens == 4 * 32


def test_a_model_without_token_layers_needs_num_tokens() -> None:
    layout = _load("mamba2-2.7b")
    src, dst = [layout.for_rank(1, 0, num_blocks=4)], layout.for_rank(2, 1, num_blocks=4)
    tables = contiguous_block_tables(dst, 10)
    with pytest.raises(InvalidArgumentError, match="no token layers, so num_tokens must say"):
        stream_schedule(compile_plan(src, dst), tables, tables)
    schedule = stream_schedule(compile_plan(src, dst), tables, tables, num_tokens=10)
    assert all(g.state for g in schedule.groups)
    every = frozenset(_layers(schedule))
    assert not len(schedule.advance(Readiness(every, 9)))
    assert schedule.advance(Readiness(every, 10)).total_bytes == schedule.plan.statistics.bytes
