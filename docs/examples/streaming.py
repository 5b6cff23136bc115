"""Streaming: the decode rank loads each layer while the prefill engine still computes.

One prefill engine (TP 2) runs a toy forward pass layer by layer and reports each layer
ready (``layers_ready``); one decode rank (TP 1) starts the load before the prefill is
done (``pull_streamed``) and, like an engine's forward loop, waits only for the layer it
is about to run (``wait_for_layer_load``). It runs once in each mode: ``pull`` (D reads
what P reports ready) and ``push`` (P writes it into D's memory). Every byte D holds is
then checked against the byte oracle.

Run it: ``python docs/examples/streaming.py`` (the tests run it too).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio

from hybridxfer.engine import DecodeConnector, PrefillConnector
from hybridxfer.layout import load_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches, source_memory

LAYOUT = load_layout(Path(__file__).with_name("toy_hybrid.toml"))
TOKENS = 100
P_TP, D_TP = 2, 1
TRANSPORT = "loopback"  # "tcp" works the same across processes and hosts


async def prefill_forward(ranks: list[PrefillConnector], request_id: str) -> None:
    """The prefill engine's forward pass: each layer, once computed, is reported ready."""
    for layer in ranks[0].layout.layers:
        await anyio.sleep(0.01)  # "compute" the layer
        for p in ranks:  # every TP rank runs the same layer at the same time
            p.layers_ready(request_id, [layer], TOKENS)


async def run(mode: str) -> list[str]:
    """One request streamed in ``mode``; returns the layers in the order D ran them."""
    async with contextlib.AsyncExitStack() as stack:
        ranks = []
        for rank in range(P_TP):
            layout = LAYOUT.for_rank(P_TP, rank, num_blocks=blocks_for(LAYOUT, P_TP, TOKENS))
            p = await stack.enter_async_context(
                PrefillConnector(layout, name=f"p{rank}", transport=TRANSPORT, decode_tp=D_TP))
            await p.register_caches(source_memory(layout, TOKENS))
            ranks.append(p)
        d_layout = LAYOUT.for_rank(D_TP, 0, num_blocks=blocks_for(LAYOUT, D_TP, TOKENS))
        d = await stack.enter_async_context(DecodeConnector(d_layout, name="d0", transport=TRANSPORT))
        memory = destination_memory(d_layout)
        await d.register_caches(memory)
        await d.connect("prefill", [p.metadata() for p in ranks])

        # D starts loading as soon as it has allocated blocks: P has not finished yet
        load = d.pull_streamed("req-1", engine="prefill", src_blocks=contiguous_block_tables(ranks[0].layout, TOKENS),
                               dst_blocks=contiguous_block_tables(d_layout, TOKENS), num_tokens=TOKENS,
                               mode=mode, timeout=30)
        ran: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(prefill_forward, ranks, "req-1")
            for layer in d_layout.layers:  # D's forward loop: each layer waits for its own state only
                await load.wait_for_layer_load(layer)
                ran.append(layer)
        result = await load.wait()
        for p in ranks:  # both P ranks learn the request was read: they may free its blocks
            await p.wait_request_finished("req-1", timeout=10)
        chunk = compile_plan([p.layout for p in ranks], d_layout).chunk_tokens
        problems = mismatches(memory, expected_destination(d_layout, TOKENS, chunk))
        assert problems == [], problems
        print(f"{mode}: {result.bytes} bytes, layers landed in order {', '.join(ran)}; verified: every byte")
        return ran


async def main() -> dict[str, list[str]]:
    return {mode: await run(mode) for mode in ("pull", "push")}


if __name__ == "__main__":
    anyio.run(main)
