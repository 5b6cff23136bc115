"""Pipeline parallelism: P and D may split layers over different PP stages and TP sizes.

The proof is the oracle matrix: every hybrid layout x every (PP, TP) in {1, 2} x {1, 2, 4}
on each side, every D stage, byte-exact — each stage modelled by the oracle as holding only
its layers' memory. The negative control reads a layer from the wrong P stage.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import attrs
import numpy as np
import pytest

from hybridxfer.errors import IncompatibleLayoutsError, LayoutError
from hybridxfer.layout import Layout, load_layout, rank_layout_from_json, stage_partition, stage_range
from hybridxfer.plan import compile_plan, contiguous_block_tables

from ._pp_run import destination, mismatches, run_pairing, source_side

ROOT = Path(__file__).resolve().parents[2] / "layouts"
HYBRID = ["nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b", "jamba-v0.1", "granite-4.0-h-tiny", "falcon-h1-7b",
          "nemotron-h-8b", "examples/nemotron-3-nano-sglang-state-pools"]
PPS, TPS = (1, 2), (1, 2, 4)


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Layout:
    return load_layout(ROOT / f"{name}.toml")


def _allowed(layout: Layout, tp: int) -> bool:
    try:
        layout.for_rank(tp, 0, num_blocks=1)
    except LayoutError:
        return False
    return True


def _tokens(layout: Layout) -> int:
    """Spans a block boundary at every TP; one value per layout so P's memory is reused."""
    bs = max(layout.for_rank(tp, 0, num_blocks=1).logical_block_tokens for tp in TPS if _allowed(layout, tp))
    return bs + bs // 2 + 3


# -- the split rule ------------------------------------------------------------------------------

@pytest.mark.parametrize(("layers", "pp", "want"), [
    (52, 2, (26, 26)), (5, 2, (3, 2)), (10, 4, (2, 3, 3, 2)), (7, 4, (2, 2, 2, 1)), (48, 1, (48,)),
    (3, 3, (1, 1, 1)), (11, 3, (4, 4, 3)),
])
def test_default_split_is_vllms_rule(layers: int, pp: int, want: tuple[int, ...]) -> None:
    """Remainder layers go to the stages before the last, nearest the last first."""
    assert stage_partition(layers, pp) == want
    assert [len(stage_range(layers, pp, s)) for s in range(pp)] == list(want)
    assert stage_range(layers, pp, pp - 1).stop == layers


def test_explicit_partition_replaces_the_rule() -> None:
    assert stage_partition(52, 2, (30, 22)) == (30, 22)
    assert stage_range(52, 2, 1, (30, 22)) == range(30, 52)


@pytest.mark.parametrize(("layers", "pp", "partition", "message"), [
    (52, 2, (30, 21), "adds up to 51 layers but the model has 52"),
    (52, 2, (52,), "names 1 stages but PP is 2"),
    (52, 2, (52, 0), "positive number of layers"),
    (3, 4, None, "PP=4 needs at least 4 model layers"),
    (3, 0, None, "pp must be a positive integer"),
])
def test_bad_split_is_a_layout_error(layers: int, pp: int, partition: tuple[int, ...] | None, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        stage_partition(layers, pp, partition)


def test_cacheless_layers_count_in_the_split() -> None:
    """Nemotron-H's MLP-only layers are hidden layers too: stage 1 starts at model layer 26."""
    layout = _load("nemotron-h-8b")
    assert layout.num_model_layers() == 52
    first = layout.stage_layers(2, 1)[0]
    assert first == "layers.26"
    assert layout.layer_indices()[layout.stage_layers(2, 0)[-1]] < 26


def test_parallel_hybrid_block_stays_in_one_stage() -> None:
    """Falcon-H1 runs attention and Mamba in one block: both land in the same stage."""
    layout = _load("falcon-h1-7b")
    s0, s1 = layout.stage_layers(2, 0), layout.stage_layers(2, 1)
    assert len(s0) == len(s1) == len(layout.layers) // 2
    assert {n.rsplit(".", 1)[0] for n in s0}.isdisjoint({n.rsplit(".", 1)[0] for n in s1})


def test_stage_holds_only_its_layers_memory() -> None:
    """A layer-major pool (SGLang) allocates only the stage's slabs; views of other stages vanish."""
    layout = _load("examples/nemotron-3-nano-sglang-state-pools")
    whole = layout.for_rank(1, 0, num_blocks=4)
    stages = [layout.for_rank(1, 0, num_blocks=4, pp=2, stage=s) for s in range(2)]
    assert sum(sum(s.region_sizes) for s in stages) == sum(whole.region_sizes)
    assert set(stages[0].layers).isdisjoint(stages[1].layers)
    assert set(stages[0].layers) | set(stages[1].layers) == set(whole.layers)
    for s in stages:
        assert s.global_rank == s.stage
        assert {p.layer for p in s.placements} == set(s.layers)


def test_pipelined_rank_layout_travels_and_tp_only_json_is_unchanged() -> None:
    layout = _load("jamba-v0.1")
    r = layout.for_rank(2, 1, num_blocks=3, pp=2, stage=1, partition=(20, 12))
    back = rank_layout_from_json(r.to_json())
    assert (back.pp, back.stage, back.partition, back.global_rank) == (2, 1, (20, 12), 3)
    assert back.region_sizes == r.region_sizes and back.layers == r.layers
    assert "pp" not in layout.for_rank(2, 1, num_blocks=3).instance_dict()


# -- the oracle matrix ---------------------------------------------------------------------------

SIDES = list(itertools.product(PPS, TPS))
CASES = [pytest.param(name, sp, st, dp, dt, id=f"{name.rsplit('/', 1)[-1]}-P{sp}x{st}-D{dp}x{dt}")
         for name in HYBRID for (sp, st) in SIDES for (dp, dt) in SIDES]


@pytest.mark.parametrize(("name", "src_pp", "src_tp", "dst_pp", "dst_tp"), CASES)
def test_every_byte_matches_the_oracle(name: str, src_pp: int, src_tp: int, dst_pp: int, dst_tp: int) -> None:
    layout = _load(name)
    for tp in (src_tp, dst_tp):
        if not _allowed(layout, tp):
            # the model cannot run at this TP at all (heads do not shard): nothing to transfer
            with pytest.raises(LayoutError, match=f"TP={tp}"):
                layout.for_rank(tp, 0, num_blocks=1)
            return
    ranks = None if dst_tp <= 2 else (0, dst_tp - 1)
    plans = run_pairing(layout, src_pp, src_tp, dst_pp, dst_tp, _tokens(layout), dst_ranks=ranks)
    # each D stage reads only from the P stages that hold its layers, and all of them together
    # read every layer exactly once per TP slice
    read_stages = {r // src_tp for p in plans for r in p.source_ranks}
    assert read_stages == set(range(src_pp))
    for p in plans:
        assert (p.src_pp, p.dst_pp) == (src_pp, dst_pp)
        assert set(p.source_ranks) <= set(p.notify_ranks)


def test_reading_a_layer_from_the_wrong_stage_is_caught() -> None:
    """Negative control: the same offsets on the other P stage hold other layers' bytes."""
    layout = _load("nemotron-h-8b")
    tokens = _tokens(layout)
    src, src_blocks, src_mems = source_side(layout, 2, 2, tokens)
    dst = destination(layout, 1, 2, 0, 1, tokens)
    template = compile_plan(src, dst)
    plan = template.bind(src_blocks, contiguous_block_tables(dst, tokens), num_tokens=tokens)
    assert not mismatches(plan, src_mems, dst, tokens, template.chunk_tokens)
    d = plan.descriptors
    assert set(d.source_ranks) == {1, 3}  # TP rank 1 of stage 0 and of stage 1
    wrong = attrs.evolve(d, src_rank=np.where(d.src_rank == 3, 1, d.src_rank))
    bad = mismatches(attrs.evolve(plan, descriptors=wrong), src_mems, dst, tokens, template.chunk_tokens)
    assert bad and sum(bad.values()) > 0


def test_a_stage_missing_from_the_sources_is_rejected() -> None:
    layout = _load("nemotron-h-8b")
    src = [layout.for_rank(2, t, num_blocks=4, pp=2, stage=0) for t in range(2)]
    with pytest.raises(IncompatibleLayoutsError, match="all 4 ranks of one PP-2 x TP-2 engine"):
        compile_plan(src, layout.for_rank(2, 0, num_blocks=4))
    shuffled = [layout.for_rank(2, t, num_blocks=4, pp=2, stage=s) for t in range(2) for s in range(2)]
    with pytest.raises(IncompatibleLayoutsError, match=r"position 1 holds \(stage 1, TP rank 0\)"):
        compile_plan(shuffled, layout.for_rank(2, 0, num_blocks=4))
