"""Bad pairings and bad block IDs fail before any byte moves, naming the cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridxfer.errors import BlockIdError, IncompatibleLayoutsError
from hybridxfer.layout import Layout, load_layout, loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables

LAYOUTS = Path(__file__).resolve().parents[2] / "layouts"


@pytest.fixture(scope="module")
def nano() -> Layout:
    return load_layout(LAYOUTS / "nemotron-3-nano-30b-a3b.toml")


def _tables(layout: Layout, tp: int, tokens: int = 100) -> dict[str, list[int]]:
    return contiguous_block_tables(layout.for_rank(tp, 0, num_blocks=8), tokens)


def test_other_model_is_refused(nano: Layout) -> None:
    other = load_layout(LAYOUTS / "jamba-v0.1.toml")
    with pytest.raises(IncompatibleLayoutsError, match="different models"):
        compile_plan([nano.for_rank(1, 0)], other.for_rank(1, 0))


def test_other_dtype_is_refused_naming_the_layer(nano: Layout) -> None:
    text = (LAYOUTS / "nemotron-3-nano-30b-a3b.toml").read_text().replace('ssm_dtype = "float32"', 'ssm_dtype = "bfloat16"')
    with pytest.raises(IncompatibleLayoutsError, match="layer 'layers.0' differs.*ssm_dtype"):
        compile_plan([nano.for_rank(1, 0)], loads_layout(text).for_rank(1, 0))


def test_indivisible_tp_is_refused() -> None:
    mla = load_layout(LAYOUTS / "deepseek-v2-lite.toml")
    with pytest.raises(IncompatibleLayoutsError, match="not divisible"):
        compile_plan([mla.for_rank(2, r) for r in range(2)], mla.for_rank(3, 0))


def test_source_ranks_must_be_a_whole_engine(nano: Layout) -> None:
    with pytest.raises(IncompatibleLayoutsError, match="ranks 0..1"):
        compile_plan([nano.for_rank(2, 1), nano.for_rank(2, 0)], nano.for_rank(1, 0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update({"attention.0": [0, 99]}), "out of range"),
        (lambda t: t.update({"attention.0": [-1]}), "out of range"),
        (lambda t: t.update({"attention.0": [3, 3]}), "appears twice"),
        (lambda t: t.pop("mamba.2"), "no block IDs given for KV group 'mamba.2'"),
        (lambda t: t.update({"nope": [1]}), "unknown KV group"),
        (lambda t: t.update({"mamba.1": []}), "no block given for the running state"),
        (lambda t: t.update({"mamba.1": [1, 2, 3]}), "differ by more than one slot"),
        (lambda t: t.update({"mamba.1": t["mamba.0"]}), "share memory but both use block"),
    ],
)
def test_bad_destination_blocks(nano: Layout, change: object, message: str) -> None:
    src = [nano.for_rank(1, 0, num_blocks=8)]
    dst = nano.for_rank(1, 0, num_blocks=8)
    good = contiguous_block_tables(src[0], 100)
    bad = {k: list(v) for k, v in contiguous_block_tables(dst, 100).items()}
    change(bad)  # type: ignore[operator]
    with pytest.raises(BlockIdError, match=message):
        compile_plan(src, dst).bind(good, bad, num_tokens=None if "twice" in message else 100)


def test_token_counts_that_cannot_be_bridged(nano: Layout) -> None:
    src = [nano.for_rank(1, 0, num_blocks=8)]
    dst = nano.for_rank(4, 0, num_blocks=12)
    s, d = contiguous_block_tables(src[0], 100), contiguous_block_tables(dst, 100)
    d["attention.0"] = [0, 5, 6, 7, 8]  # 5 blocks of 1056 tokens vs P's 1 block of 2096
    with pytest.raises(BlockIdError, match="pass num_tokens"):
        compile_plan(src, dst).bind(s, d)
    with pytest.raises(BlockIdError, match="fewer than num_tokens"):
        compile_plan(src, dst).bind(s, contiguous_block_tables(dst, 100), num_tokens=5000)


def test_prefix_cache_hit_keeps_p_tail(nano: Layout) -> None:
    """Equal block sizes and D listing fewer blocks: D's blocks receive P's last blocks."""
    src = [nano.for_rank(1, 0, num_blocks=8)]
    dst = nano.for_rank(1, 0, num_blocks=8)
    s = {"attention.0": [0, 1, 2], "mamba.0": [3], "mamba.1": [4], "mamba.2": [5], "mamba.3": [6]}
    d = {"attention.0": [7], "mamba.0": [3], "mamba.1": [4], "mamba.2": [5], "mamba.3": [6]}
    plan = compile_plan(src, dst).bind(s, d)
    page = src[0].region_page_bytes[0]
    attention = [row for row in plan.reads[0].rows() if row[3] // page == 7]
    assert attention and all(row[1] // page == 2 for row in attention)
