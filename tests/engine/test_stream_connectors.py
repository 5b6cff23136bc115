"""Streamed pulls through the engine adapter: layers_ready on P, pull_streamed on D.

Byte-exact at every layer (the per-step oracle), P finishes the request only after the
whole stream, and a failed stream is recorded once, with exactly its invalid blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import anyio
import pytest

from hybridxfer.engine import DecodeConnector, PrefillConnector, RequestFailed
from hybridxfer.errors import StreamedTransferError
from hybridxfer.layout import load_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, source_memory
from tests.execute._stream_support import Side, differing_regions, step_image, transport, written_blocks

ROOT = Path(__file__).resolve().parents[2]
TOY = load_layout(ROOT / "docs" / "examples" / "toy_hybrid.toml")
TOKENS = 100


@contextlib.asynccontextmanager
async def engines(kind: str, src_tp: int, dst_tp: int, dst_rank: int
                  ) -> AsyncIterator[tuple[list[PrefillConnector], DecodeConnector, Side]]:
    async with contextlib.AsyncExitStack() as stack:
        ranks = []
        for r in range(src_tp):
            rl = TOY.for_rank(src_tp, r, num_blocks=blocks_for(TOY, src_tp, TOKENS))
            p = await stack.enter_async_context(
                PrefillConnector(rl, name=f"p{r}", transport=transport(kind, f"p{r}"), decode_tp=dst_tp))
            await p.register_caches(source_memory(rl, TOKENS))
            ranks.append(p)
        dl = TOY.for_rank(dst_tp, dst_rank, num_blocks=blocks_for(TOY, dst_tp, TOKENS, rank=dst_rank))
        d = await stack.enter_async_context(DecodeConnector(dl, name=f"d{dst_rank}",
                                                            transport=transport(kind, f"d{dst_rank}")))
        memory = destination_memory(dl)
        await d.register_caches(memory)
        await d.connect("P", [p.metadata() for p in ranks])
        chunk = compile_plan([p.layout for p in ranks], dl).chunk_tokens
        side = Side(d.agent, dl, memory, [], contiguous_block_tables(dl, TOKENS),
                    contiguous_block_tables(ranks[0].layout, TOKENS), destination_memory(dl),
                    expected_destination(dl, TOKENS, chunk))
        yield ranks, d, side


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize(("kind", "src_tp", "dst_tp", "dst_rank"), [("loopback", 2, 1, 0), ("tcp", 1, 2, 0)])
async def test_pull_streamed_lands_layer_by_layer(kind: str, src_tp: int, dst_tp: int, dst_rank: int,
                                                  mode: Literal["pull", "push"]) -> None:
    with anyio.fail_after(60):
        async with engines(kind, src_tp, dst_tp, dst_rank) as (ranks, d, side):
            load = d.pull_streamed("req", engine="P", src_blocks=side.src_blocks, dst_blocks=side.dst_blocks,
                                   num_tokens=TOKENS, mode=mode, timeout=30)
            landed: list[str] = []
            for layer in side.layout.layers:
                for p in ranks:
                    p.layers_ready("req", [layer], TOKENS)
                await load.wait_for_layer_load(layer)
                landed.append(layer)
                assert differing_regions(side.memory, step_image(side, landed)) == [], layer
            result = await load.wait(timeout=20)
            for p in ranks:  # only this one of the D_TP ranks reads here
                p.expect("req", 1)
            assert result.bytes == result.plan.total_bytes > 0 and result.engine == "P"
            assert differing_regions(side.memory, side.final) == []
            readers = [(await p.wait_request_finished("req", timeout=10)).readers for p in ranks]
            assert all(r == (side.d.name,) for r in readers)
            stats = d.statistics()
            assert (stats.requests_received, stats.requests_failed, stats.requests_in_flight) == (1, 0, 0)
            assert d.failed_requests() == ()


@pytest.mark.anyio
async def test_a_stream_that_misses_its_deadline_is_recorded_once_with_exact_blocks() -> None:
    with anyio.fail_after(30):
        async with engines("loopback", 1, 1, 0) as (ranks, d, side):
            load = d.pull_streamed("req", engine="P", src_blocks=side.src_blocks, dst_blocks=side.dst_blocks,
                                   num_tokens=TOKENS, timeout=0.5, on_failure="recompute", mode="pull")
            first = side.layout.layers[0]
            ranks[0].layers_ready("req", [first], TOKENS)
            await load.wait_for_layer_load(first)
            with pytest.raises(RequestFailed) as info:
                await load.wait()  # nobody reports the other layers: the stream's deadline ends it
            failure = info.value.failure
            assert failure.reason == "timeout" and failure.intact_tokens == 0
            rest = [layer for layer in side.layout.layers if layer != first]
            assert dict(failure.invalid_blocks) == written_blocks(side, rest) != {}
            cause = info.value.__cause__
            assert isinstance(cause, StreamedTransferError) and cause.landed_layers == (first,)
            assert differing_regions(side.memory, step_image(side, [first])) == []
            assert d.failed_requests() == (failure,) and d.failed_requests() == ()
            assert d.statistics().requests_in_flight == 0
            with pytest.raises(RequestFailed) as again:
                await load.wait_for_layer_load(rest[0])
            assert again.value is info.value
