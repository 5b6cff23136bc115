"""Hostile input: whatever text or data arrives, the loader gives a sound layout or a LayoutError.

Not only "no crash". For every generated input:

- a refusal is a :class:`LayoutError` whose every problem has a message and names the
  source it was given (and a line inside the text, when it names one); anything else
  (KeyError, TypeError, RecursionError...) is a bug: the CLI would print a traceback;
- a layout that loads survives ``dump_layout`` -> ``loads_layout`` unchanged (equal
  value, equal digests, the dump a fixed point);
- each rank it resolves to keeps every piece of every block inside its region, and
  survives the handshake's JSON form unchanged.

Inputs are cheap to generate, so over 10,000 cases run in well under a minute.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hybridxfer.errors import LayoutError
from hybridxfer.layout import FORMAT, Layout, RankLayout, dump_layout, layout_from_dict, load_layout, loads_layout
from hybridxfer.layout import rank_layout_from_json

LAYOUTS_DIR = Path(__file__).resolve().parents[2] / "layouts"
BROKEN_DIR = Path(__file__).resolve().parent / "broken"
#: Small seeds (both forms), so each mutated case stays cheap to load and resolve.
SEEDS = [(LAYOUTS_DIR / n).read_text(encoding="utf-8")
         for n in ("deepseek-v2-lite.toml", "granite-4.0-h-tiny.toml", "examples/granite-4.0-h-tiny-vllm-gen1-halves.toml")]
SEEDS += [p.read_text(encoding="utf-8") for p in sorted(BROKEN_DIR.glob("*.toml"))]
REAL = [load_layout(LAYOUTS_DIR / n) for n in ("granite-4.0-h-tiny.toml", "deepseek-v2-lite.toml",
                                               "examples/nemotron-3-nano-sglang-state-pools.toml")]
FUZZ = settings(deadline=None, database=None)
SOURCE = "fuzz.toml"
#: Kinds whose pieces grow with the sequence (one piece per kernel block), per the DSL reference.
TOKEN_KINDS = frozenset({"attention", "sliding_window", "mla"})

KEYS = ("format", "model", "id", "pattern", "legend", "layers", "specs", "engine", "pooling",
        "block", "logical", "kernel", "align", "uniform_page", "kind", "num_kv_heads", "head_dim",
        "dtype", "kv", "order", "window", "latent_dim", "num_heads", "n_groups", "d_state",
        "conv_kernel", "conv_dtype", "ssm_dtype", "conv_layout", "d_inner", "k_heads", "k_dim",
        "v_heads", "v_dim", "num_spec", "groups", "regions", "views", "layer", "pieces", "offset",
        "slab", "slabs", "name", "spec", "layer_name", "M", "A", "*")
WORDS = ("attention", "mla", "mamba1", "mamba2", "gdn", "sliding_window", "bfloat16", "float32",
         "packed", "halves", "separate", "DS", "SD", "equalise", "logical", "hybrid-shared",
         "per-layer", "state-pools", "conv", "ssm", "kv", "k", "v", "latent", "M*-", "layers.{i}",
         "{spec}{i}{", "A", "M", "", FORMAT)

SCALARS: tuple[Any, ...] = (0, 1, 2, 3, 16, 64, -1, 2**40, -(2**63), True, False, 1.5, "", "x") + WORDS


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.55:
        return rng.choice(SCALARS)
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_document(rng: random.Random) -> dict[str, Any]:
    """A random nest of layout-ish keys and values; mostly with the right format string."""
    doc: dict[str, Any] = {rng.choice(KEYS): _value(rng, 1) for _ in range(rng.randrange(7))}
    if rng.random() < 0.9:
        doc["format"] = FORMAT  # mostly well-formed at the top, so the fuzz reaches deeper
    return doc


def _check_refusal(exc: LayoutError, text: str | None) -> None:
    assert exc.problems, "a LayoutError names at least one problem"
    for problem in exc.problems:
        assert problem.message.strip(), exc
        assert problem.file == SOURCE, f"problem does not name its source: {problem!r}"
        if text is not None and problem.line is not None:
            assert 1 <= problem.line <= text.count("\n") + 1, problem
    assert all(str(p) in str(exc) for p in exc.problems)


def _check_rank(rank: RankLayout, tp: int, rank_id: int, num_blocks: int) -> None:
    assert (rank.tp, rank.rank, rank.num_blocks) == (tp, rank_id, num_blocks)
    assert 0 <= rank_id < tp
    assert rank.kernel_block_tokens >= 1
    assert rank.logical_block_tokens % rank.kernel_block_tokens == 0
    assert len(rank.region_names) == len(rank.region_page_bytes) == len(rank.region_sizes)
    assert rank.total_bytes == sum(rank.region_sizes)
    for page, size in zip(rank.region_page_bytes, rank.region_sizes, strict=True):
        assert size >= page * num_blocks
    for placed in rank.placements:
        # a token piece repeats once per kernel block inside the logical block
        span = placed.piece.nbytes * (rank.blocks_per_kernel if placed.kind in TOKEN_KINDS else 1)
        size = rank.region_sizes[rank.region_index(placed.region)]
        assert placed.piece.nbytes > 0 and placed.base >= 0, placed
        assert placed.block_offset(num_blocks - 1) + span <= size, f"{placed} runs past its region ({size} B)"
    assert rank_layout_from_json(rank.to_json()) == rank


def _check_layout(layout: Layout) -> None:
    text = dump_layout(layout)
    again = loads_layout(text, source=SOURCE)
    assert again == layout
    assert (again.digest, again.model_digest) == (layout.digest, layout.model_digest)
    assert dump_layout(again) == text
    for tp in (1, 2, 3):
        try:
            rank = layout.for_rank(tp, tp - 1, num_blocks=2)
        except LayoutError as exc:
            assert exc.problems
            continue
        _check_rank(rank, tp, tp - 1, 2)


def _load_text(text: str) -> None:
    try:
        layout = loads_layout(text, source=SOURCE)
    except LayoutError as exc:
        _check_refusal(exc, text)
        return
    _check_layout(layout)


@settings(FUZZ, max_examples=4000)
@given(st.text(alphabet='[]{}="\'.,#\n abcdefgklmnoprstuvy0123456789-_*', max_size=120))
def test_random_text(text: str) -> None:
    _load_text(text)


@settings(FUZZ, max_examples=3000)
@given(st.sampled_from(SEEDS), st.integers(0, 10**6), st.integers(0, 40), st.text(max_size=8))
def test_mutated_real_files(seed: str, where: int, cut: int, insert: str) -> None:
    at = where % (len(seed) + 1)
    _load_text(seed[:at] + insert + seed[at + cut:])


@settings(FUZZ, max_examples=3000)
@given(st.randoms(use_true_random=False))
def test_random_structured_data(rng: random.Random) -> None:
    try:
        layout = layout_from_dict(random_document(rng), source=SOURCE)
    except LayoutError as exc:
        _check_refusal(exc, None)
        return
    _check_layout(layout)


@settings(FUZZ, max_examples=1000)
@given(st.sampled_from(REAL), st.integers(-2, 9), st.integers(-2, 9),
       st.one_of(st.integers(-3, 64), st.integers(2**20, 2**70)))
def test_any_rank_request(layout: Layout, tp: int, rank_id: int, num_blocks: int) -> None:
    """Any (tp, rank, num_blocks) gives a sound rank or a LayoutError saying why (never ValueError)."""
    try:
        rank = layout.for_rank(tp, rank_id, num_blocks=num_blocks)
    except LayoutError as exc:
        assert exc.problems and all(p.message.strip() for p in exc.problems)
        return
    _check_rank(rank, tp, rank_id, num_blocks)


def test_properties_reject_a_broken_rank() -> None:
    """Negative control: the rank check catches a piece moved past its region's end."""
    import attrs

    rank = REAL[0].for_rank(1, 0, num_blocks=2)
    _check_rank(rank, 1, 0, 2)
    last = rank.placements[-1]
    moved = attrs.evolve(last, base=rank.region_sizes[rank.region_index(last.region)])
    broken = attrs.evolve(rank, placements=(*rank.placements[:-1], moved))
    try:
        _check_rank(broken, 1, 0, 2)
    except AssertionError as exc:
        assert "runs past its region" in str(exc)
    else:
        raise AssertionError("a piece past its region's end went unnoticed")
