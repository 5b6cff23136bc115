"""Bad input from an engine or a peer: a precise typed error, and not one byte moved.

Why through ``Agent.plan``: that is the call an engine makes with its block tables, so
this is where block 10**9 or a peer running another model must stop. Each test snapshots
D's registered memory and proves it unchanged, and that no P was told anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.errors import BlockIdError, IncompatibleLayoutsError, LayoutError, TransferTimeout
from hybridxfer.execute import Agent
from hybridxfer.layout import Mamba2Spec, loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from tests.reliability._support import HybridWorld, hybrid_layout, hybrid_world, rank_layout

TOKENS = 40

Tables = Mapping[str, Sequence[int]]


def _bad_tables(src: dict[str, list[int]], dst: dict[str, list[int]], case: str) -> tuple[Tables, Tables, str]:
    """(src, dst, message fragment) for one kind of bad block table."""
    if case == "dst_out_of_range":
        return src, {**dst, "attention.0": [0, 10**9]}, "out of range"
    if case == "src_out_of_range":
        return {**src, "mamba.0": [10**9]}, dst, "out of range"
    if case == "negative":
        return src, {**dst, "attention.0": [-5, 1]}, "out of range"
    if case == "duplicated":
        return src, {**dst, "attention.0": [1, 1]}, "appears twice"
    if case == "too_few_blocks":
        return src, {**dst, "attention.0": [0]}, "fewer than num_tokens"
    if case == "state_counts_mismatch":
        return src, {**dst, "mamba.0": [3, 1, 2]}, "differ by more than one"
    if case == "unknown_group":
        return src, {**dst, "no-such-group": [0]}, "unknown KV group"
    if case == "missing_group":
        return src, {g: ids for g, ids in dst.items() if g != "mamba.1"}, "no block IDs given"
    if case == "aliasing_groups":  # attention and mamba pool the same pages: one block for both
        return src, {**dst, "mamba.0": [0]}, "share memory"
    raise AssertionError(case)


BAD_TABLES = ["dst_out_of_range", "src_out_of_range", "negative", "duplicated", "too_few_blocks",
              "state_counts_mismatch", "unknown_group", "missing_group", "aliasing_groups"]


async def _nothing_moved(w: HybridWorld, before: dict[str, np.ndarray], request_id: str) -> None:
    for name, arr in before.items():
        assert np.array_equal(w.memory[name], arr), f"region {name} changed"
    stats = w.d.statistics()
    assert stats.transfers == 0 and stats.bytes == 0
    for p in w.ps:
        with pytest.raises(TransferTimeout):
            await p.wait_request_done(request_id, timeout=0.05)


@pytest.mark.anyio
@pytest.mark.parametrize("case", BAD_TABLES)
async def test_bad_block_ids(case: str) -> None:
    """Block tables that are out of range, negative, duplicated, of mismatched counts, for
    unknown or missing groups, or aliasing pooled groups: ``BlockIdError`` naming the
    problem, from ``Agent.plan`` (before any byte moves) and from the bare planner."""
    with anyio.fail_after(30):
        async with hybrid_world("loopback") as w:
            src = contiguous_block_tables(w.d.source_layouts(w.peers)[0], TOKENS)
            dst = contiguous_block_tables(w.dst, TOKENS)
            bad_src, bad_dst, fragment = _bad_tables(src, dst, case)
            before = {name: arr.copy() for name, arr in w.memory.items()}
            with pytest.raises(BlockIdError, match=fragment):
                w.d.plan(w.peers, request_id=case, src_blocks=bad_src, dst_blocks=bad_dst, num_tokens=TOKENS)
            template = compile_plan(w.d.source_layouts(w.peers), w.dst)
            with pytest.raises(BlockIdError, match=fragment):
                template.bind(bad_src, bad_dst, num_tokens=TOKENS)
            await _nothing_moved(w, before, case)
            # The agent is unharmed: the same request with good tables goes through.
            await w.d.plan(w.peers, request_id=case, src_blocks=src, dst_blocks=dst, num_tokens=TOKENS).execute(timeout=10)
            assert w.d.statistics().transfers == 1


INCOMPATIBLE: dict[str, tuple[dict[str, int | str], int, int, str]] = {
    "other_model": ({"head_dim": 32}, 1, 1, "model"),
    "other_dtype": ({"attention_dtype": "float16"}, 1, 1, "model"),
    "indivisible_tp": ({"kv_heads": 6, "n_groups": 6, "mamba_heads": 12}, 2, 3, "not divisible"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
async def test_incompatible_peer(case: str) -> None:
    """A P of another model, dtype or an indivisible TP size: ``IncompatibleLayoutsError``
    from ``compile_plan`` and from the agent (at ``connect`` when the model digests differ,
    at ``plan`` for TP), with D's memory unchanged."""
    knobs, src_tp, dst_tp, fragment = INCOMPATIBLE[case]
    d_layout = hybrid_layout(**({"kv_heads": 6, "n_groups": 6, "mamba_heads": 12} if case == "indivisible_tp" else {}))
    p_layout = hybrid_layout(**knobs)
    dst = rank_layout(d_layout, dst_tp, 0, TOKENS)
    srcs = [rank_layout(p_layout, src_tp, r, TOKENS) for r in range(src_tp)]
    with pytest.raises(IncompatibleLayoutsError, match=fragment):
        compile_plan(srcs, dst)
    memory = np.full(dst.total_bytes, 0xAB, np.uint8)
    with anyio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            ps = [await stack.enter_async_context(
                Agent(f"p{r}", transport="loopback", role="prefill", rank=r, tp_size=src_tp, layout=rl))
                for r, rl in enumerate(srcs)]
            d = await stack.enter_async_context(
                Agent("d", transport="loopback", role="decode", rank=0, tp_size=dst_tp, layout=dst))
            await d.register(dst.region_names[0], memory)
            if case == "indivisible_tp":
                peers = [await d.connect(p.metadata()) for p in ps]
                with pytest.raises(IncompatibleLayoutsError, match=fragment):
                    d.plan(peers, request_id="x", src_blocks=contiguous_block_tables(srcs[0], TOKENS),
                           dst_blocks=contiguous_block_tables(dst, TOKENS), num_tokens=TOKENS)
            else:
                with pytest.raises(IncompatibleLayoutsError, match=fragment):
                    await d.connect(ps[0].metadata())
    assert (memory == 0xAB).all()


NEMOTRON_TEXT = (Path(__file__).resolve().parents[2] / "layouts" / "nemotron-3-nano-30b-a3b.toml").read_text()

OVERSIZED = {
    "d_state_1e20": ("d_state = 128 ", "d_state = 100000000000000000000 ", "specs.mamba.d_state",
                     "must be at most 1,048,576"),
    "d_state_1e9": ("d_state = 128 ", "d_state = 1000000000 ", "specs.mamba.d_state", "must be at most 1,048,576"),
    "num_spec": ("conv_layout = \"DS\"", "conv_layout = \"DS\"\nnum_spec = 1048577", "specs.mamba.num_spec",
                 "must be an integer in [0, 1,048,576]"),
    "state_page": ("d_state = 128 ", "d_state = 1000000 ", "specs.mamba", "the most a page may hold is 4,294,967,296"),
    "kv_page": ("num_kv_heads = 2 ", "num_kv_heads = 1000000 ", "specs.attention",
                "the most a page may hold is 4,294,967,296"),
    "align": ("align = 16", "align = 2000000", "block.align", "must be at most 1,048,576 tokens"),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_oversized_numbers_are_layout_errors(case: str) -> None:
    """A number no model has is refused when the file is loaded — one ``LayoutError``
    naming the key — never an ``OverflowError`` or a multi-terabyte allocation later."""
    old, new, path, fragment = OVERSIZED[case]
    assert old in NEMOTRON_TEXT
    with pytest.raises(LayoutError) as caught:
        loads_layout(NEMOTRON_TEXT.replace(old, new, 1), source="big.toml")
    [problem] = [p for p in caught.value.problems if p.path == path]
    assert fragment in problem.message and problem.file == "big.toml"
    # block keys are checked on the expanded memory form, which the model form has no line for
    assert problem.line is not None or path.startswith("block.")


def test_numbers_at_the_bounds_load() -> None:
    """The negative control: the bounds themselves are allowed."""
    layout = loads_layout(NEMOTRON_TEXT.replace("n_groups = 8 ", "n_groups = 1048576 ", 1)
                          .replace("num_kv_heads = 2 ", "num_kv_heads = 1 ", 1), source="edge.toml")
    mamba = dict(layout.specs)["mamba"]
    assert isinstance(mamba, Mamba2Spec) and mamba.n_groups == 1 << 20
