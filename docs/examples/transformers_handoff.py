"""A real model's cache moves between engines of different TP, and decoding goes on bit-identically.

A seeded tiny NemotronH (Mamba2, attention and stateless MLP/MoE layers; random weights,
nothing downloaded) prefills a 40-token prompt on a prefill engine of TP 2. A decode
engine of TP 1, holding its own copy of the model, pulls the cache over tcp into fresh
tensors, turns them into a ``DynamicCache`` and decodes 16 tokens. Its logits equal those
of one monolithic ``generate``, bit for bit.

Run it: ``python docs/examples/transformers_handoff.py`` (the tests run it too). Needs
``pip install 'hybridxfer[transformers]'``.
"""

from __future__ import annotations

import contextlib

import anyio
import torch

from hybridxfer.engine import DecodeConnector, PrefillConnector
from hybridxfer.engine.transformers import (
    allocate_regions,
    block_tables,
    build_cache,
    cache_layout,
    cache_regions,
    greedy_continue,
    prefill,
    rank_layout,
    shard_regions,
    tiny_model,
)

FAMILY = "nemotron_h"
PROMPT, STEPS = 40, 16
P_TP, D_TP = 2, 1


async def main() -> bool:
    model = tiny_model(FAMILY)
    layout = cache_layout(model)  # derived from the config, as `layout from-hf --engine transformers`
    prompt = torch.randint(3, 512, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the reference: one process, one generate
        reference = model.generate(prompt, max_new_tokens=STEPS + 1, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True)
    expected = torch.stack([step[0] for step in reference.logits])[1:]  # the steps after the first token

    # Prefill engine: run the prompt, serve the cache's own tensors as TP ranks would hold them.
    cache, last = prefill(model, prompt)
    whole = cache_regions(cache, rank_layout(layout, PROMPT))
    async with contextlib.AsyncExitStack() as stack:
        prefill_ranks = []
        for rank in range(P_TP):
            rank_view = rank_layout(layout, PROMPT, tp=P_TP, rank=rank)
            p = await stack.enter_async_context(
                PrefillConnector(rank_view, name=f"prefill-r{rank}", transport="tcp", decode_tp=D_TP))
            await p.register_caches(shard_regions(layout, whole, PROMPT, tp=P_TP, rank=rank))
            prefill_ranks.append(p)

        # Decode engine: its own model instance, empty tensors of the shape its rank holds.
        decoder = tiny_model(FAMILY)
        d_layout = rank_layout(layout, PROMPT, tp=D_TP)
        memory = allocate_regions(d_layout)
        d = await stack.enter_async_context(DecodeConnector(d_layout, name="decode-r0", transport="tcp"))
        await d.register_caches(memory)
        await d.connect("prefill", [p.metadata() for p in prefill_ranks])
        pulled = await d.pull("req-1", engine="prefill", src_blocks=block_tables(prefill_ranks[0].layout),
                              dst_blocks=block_tables(d_layout), num_tokens=PROMPT, timeout=30)
        print(f"pulled {pulled.bytes} bytes of {len(memory)} cache tensors from P ranks {pulled.source_ranks}")
        for p in prefill_ranks:
            await p.wait_request_finished("req-1", timeout=30)  # P may now drop its cache

    resumed = build_cache(decoder, d_layout, memory)
    tokens, logits = greedy_continue(decoder, resumed, int(last.argmax()), PROMPT, STEPS)
    identical = torch.equal(logits, expected)
    print(f"monolithic: {reference.sequences[0, PROMPT + 1:].tolist()}")
    print(f"decode:     {tokens}")
    print("logits identical" if identical else f"logits differ by {float((logits - expected).abs().max())}")
    return identical


if __name__ == "__main__":
    if not anyio.run(main):
        raise SystemExit("decoding after the transfer differs from the monolithic generate")
