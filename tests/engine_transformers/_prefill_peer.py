"""P process: prefill every family's prompt once, serve it at every P TP size asked for.

``python _prefill_peer.py --transport T --families a,b --src-tps 1,2 --dst-tps 1,2,4 --out DIR``

Per family it writes ``DIR/<family>.ref.pt`` (the monolithic ``generate``: 17 greedy
steps' logits and tokens) and ``DIR/<family>.cache.pt`` (the whole prefilled cache, for
byte diagnostics), then prints one ``META {json}`` line per (family, P TP) with every P
rank's metadata, then ``READY``. At P TP 1 it registers the live ``DynamicCache``; at
P TP > 1 each rank serves the shard this test's own TP rules (``_tp.split``) cut for it.
It serves until stdin says ``exit`` (or closes), at most ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import anyio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from tests.engine_transformers._tp import split  # noqa: E402

from hybridxfer.engine import PrefillConnector, decode_consumers  # noqa: E402
from hybridxfer.engine.transformers import (  # noqa: E402
    cache_layout,
    cache_regions,
    prefill,
    rank_layout,
    region_tensors,
    tiny_model,
    weights_digest,
)

PROMPT_TOKENS = 40
DECODE_STEPS = 16


def prompt_ids(family: str) -> torch.Tensor:
    seed = sum(family.encode())
    return torch.randint(3, 512, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(seed))


async def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    async with contextlib.AsyncExitStack() as stack:
        for family in args.families.split(","):
            started = time.perf_counter()
            model = tiny_model(family)
            layout = cache_layout(model)
            prompt = prompt_ids(family)
            with torch.no_grad():
                generated = model.generate(  # type: ignore[operator]
                    prompt, max_new_tokens=DECODE_STEPS + 1, do_sample=False, output_logits=True,
                    return_dict_in_generate=True)
            ref_logits = torch.stack([step[0] for step in generated.logits])
            ref_tokens = generated.sequences[0, PROMPT_TOKENS:].tolist()
            torch.save({"logits": ref_logits, "tokens": ref_tokens}, out / f"{family}.ref.pt")
            cache, last = prefill(model, prompt)
            whole_layout = rank_layout(layout, PROMPT_TOKENS)
            live = cache_regions(cache, whole_layout)
            names = {(r.layer, r.piece): r.region for r in region_tensors(whole_layout)}
            whole = {key: live[region] for key, region in names.items()}
            torch.save({region: t.clone() for region, t in live.items()}, out / f"{family}.cache.pt")
            for src_tp in map(int, args.src_tps.split(",")):
                blobs = []
                for rank in range(src_tp):
                    rl = rank_layout(layout, PROMPT_TOKENS, tp=src_tp, rank=rank)
                    if src_tp == 1:
                        memory = live  # the live DynamicCache's own tensors
                    else:
                        mine = split(family, model.config, whole, src_tp, rank)
                        memory = {r.region: mine[r.layer, r.piece] for r in region_tensors(rl)}
                    p = await stack.enter_async_context(PrefillConnector(
                        rl, name=f"{family}-p{src_tp}r{rank}-{os.getpid()}", transport=args.transport))
                    await p.register_caches(memory)
                    for dst_tp in map(int, args.dst_tps.split(",")):  # D names its requests family-P-D
                        p.expect(f"{family}-{src_tp}-{dst_tp}", decode_consumers(src_tp, dst_tp, rank))
                    blobs.append(base64.b64encode(p.metadata()).decode())
                print("META " + json.dumps({
                    "family": family, "src_tp": src_tp, "blobs": blobs, "digest": weights_digest(model),
                    "first_token": int(last.argmax()), "prefill_equal": bool(torch.equal(last, ref_logits[0])),
                    "seconds": time.perf_counter() - started}), flush=True)
        print("READY", flush=True)
        with anyio.move_on_after(args.deadline):
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            while line and line.strip() != "exit":
                line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", required=True)
    parser.add_argument("--families", required=True)
    parser.add_argument("--src-tps", required=True)
    parser.add_argument("--dst-tps", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--deadline", type=float, default=300.0)
    torch.set_num_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)  # CPU kernels' fallback notes
    anyio.run(main, parser.parse_args())
    # NIXL's bundled libnl-route crashes in its exit-time destructor (see hybridxfer.cli._exit):
    # everything is closed and written, so leave without running native destructors.
    sys.stdout.flush()
    os._exit(0)
