"""A prefix-cache hit through the engine API: ``DecodeConnector.pull(dst_cached_tokens=...)``
moves only what D lacks over a real (loopback) transport, and D's kept blocks keep their bytes."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from hybridxfer.engine import DecodeConnector, PrefillConnector, RequestFailed
from hybridxfer.layout import load_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import (
    RankSpec,
    Request,
    blocks_for,
    destination_memory,
    expected_memory,
    mismatches,
    source_memory,
)

TOY = load_layout(Path(__file__).resolve().parents[2] / "docs" / "examples" / "toy_hybrid.toml")
TOKENS = 100
CACHED = 40  # D blocks hold 32 tokens: block 0 is kept, block 1 (tokens 32..63) moves whole


@pytest.mark.anyio
async def test_pull_with_a_hit_keeps_d_blocks_and_moves_the_rest() -> None:
    pl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
    dl = TOY.for_rank(2, 1, num_blocks=blocks_for(TOY, 2, TOKENS, rank=1))
    src, dst = contiguous_block_tables(pl, TOKENS), contiguous_block_tables(dl, TOKENS)
    memory = destination_memory(dl)
    original = {name: arr.copy() for name, arr in memory.items()}
    with anyio.fail_after(30):
        async with PrefillConnector(pl, name="p0", transport="loopback", decode_tp=2) as p, \
                DecodeConnector(dl, name="d1", transport="loopback") as dc:
            await p.register_caches(source_memory(pl, TOKENS))
            await dc.register_caches(memory)
            await dc.connect("P", [p.metadata()])
            with pytest.raises(RequestFailed, match="exceeds the request's 100 tokens"):
                await dc.pull("too-many", engine="P", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS,
                              dst_cached_tokens=TOKENS + 1)
            assert mismatches(memory, original) == []  # a refused plan moved nothing
            result = await dc.pull("req", engine="P", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS,
                                   dst_cached_tokens=CACHED)
    kept = result.plan.cached_prefix["attention.0"]
    assert (kept.kept_tokens, kept.blocks) == (32, (dst["attention.0"][0],))
    full = compile_plan([pl], dl).bind(src, dst, num_tokens=TOKENS)
    assert result.bytes == full.statistics.bytes - result.plan.statistics.skipped_cached_bytes < full.statistics.bytes
    spec = RankSpec(dl.tp, dl.rank, dl.num_blocks, dl.logical_block_tokens, dl.kernel_block_tokens)
    want = expected_memory(TOY, spec, Request(dst, TOKENS, {"attention.0": CACHED}),
                           chunk_tokens=compile_plan([pl], dl).chunk_tokens)
    assert mismatches(memory, want) == []
    # negative control: the oracle without the hit expects block 0 written, which it is not
    plain = expected_memory(TOY, spec, Request(dst, TOKENS), chunk_tokens=compile_plan([pl], dl).chunk_tokens)
    assert mismatches(memory, plain) != []
