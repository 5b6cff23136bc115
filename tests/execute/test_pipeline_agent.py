"""A pipelined P over real agents: D plans against every (stage, TP rank) and reads each
layer from the stage that holds it, over loopback and tcp; the oracle checks every byte."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.errors import ConnectError
from hybridxfer.execute import Agent
from hybridxfer.layout import load_layout
from hybridxfer.plan import contiguous_block_tables
from hybridxfer.synthetic import Request, blank_destination, expected_memory
from hybridxfer.transport.registry import open_transport
from tests.plan._pp_run import destination, rank_spec, source_side

LAYOUT = Path(__file__).resolve().parents[2] / "layouts" / "examples" / "nemotron-3-nano-sglang-state-pools.toml"
OPTIONS = {"tcp": {"secret": "pp-tests"}, "loopback": {}}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
async def test_d_reads_each_layer_from_its_p_stage(kind: str) -> None:
    layout = load_layout(LAYOUT)
    tokens = 5  # one-token pages: five blocks; the state pools size with the block count
    src, src_blocks, src_mems = source_side(layout, 2, 2, tokens)
    dst = destination(layout, 1, 2, 0, 1, tokens)
    # stages hold different regions (layer-major pools keep only their layers' slabs)
    assert {r.region_sizes for r in src[:2]} != {r.region_sizes for r in src[2:]}
    dst_mem = blank_destination(layout, rank_spec(dst))
    with anyio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            ps = []
            for r, (rl, mem) in enumerate(zip(src, src_mems, strict=True)):
                p = await stack.enter_async_context(Agent(
                    f"p{r}", transport=open_transport(kind, name=f"p{r}", **OPTIONS[kind]), role="prefill",
                    rank=r, tp_size=2, layout=rl))
                for name in rl.region_names:
                    await p.register(name, mem[name])
                ps.append(p)
            d = await stack.enter_async_context(Agent(
                "d", transport=open_transport(kind, name="d", **OPTIONS[kind]), role="decode", rank=1, tp_size=2,
                layout=dst))
            for name in dst.region_names:
                await d.register(name, dst_mem[name])
            peers = {r: await d.connect(p.metadata()) for r, p in enumerate(ps)}
            with pytest.raises(ConnectError, match="missing ranks \\[3\\]"):
                d.plan({r: peers[r] for r in range(3)}, request_id="short", src_blocks=src_blocks,
                       dst_blocks=contiguous_block_tables(dst, tokens), num_tokens=tokens)
            ex = d.plan(peers, request_id="req", src_blocks=src_blocks,
                        dst_blocks=contiguous_block_tables(dst, tokens), num_tokens=tokens)
            result = await ex.execute(timeout=30)
            assert set(ex.plan.source_ranks) == {1, 3} and result.notified_ranks == (1, 3)
    want = expected_memory(layout, rank_spec(dst), Request(contiguous_block_tables(dst, tokens), tokens),
                           chunk_tokens=math.gcd(src[0].kernel_block_tokens, dst.kernel_block_tokens))
    for name in dst.region_names:
        assert np.array_equal(dst_mem[name], want[name]), name
