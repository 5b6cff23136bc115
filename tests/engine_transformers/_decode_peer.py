"""D process: pull every (family, P TP, D TP) asked for, rebuild the cache, decode 16 tokens.

``python _decode_peer.py --transport T --jobs JSON --controls JSON --out DIR`` with P's
``META`` lines on stdin (ending with ``READY``). For each job it runs D TP ranks, each
allocating the shard its rank holds and pulling it from every P rank it needs; puts the
shards back together with this test's own inverse (``_tp.join``); decodes greedily from
P's first token and writes ``DIR/<family>.p<P>d<D>.pt`` (logits, tokens, the rebuilt
cache). A control job rebuilds the same pull with one deliberate mistake and writes
``DIR/<family>.control.pt``. One ``DONE {json}`` line per job, then ``END``.
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
from typing import Any

import anyio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from tests.engine_transformers._prefill_peer import DECODE_STEPS, PROMPT_TOKENS  # noqa: E402
from tests.engine_transformers._tp import Key, Mistake, join  # noqa: E402

from hybridxfer.engine import DecodeConnector  # noqa: E402
from hybridxfer.engine.transformers import (  # noqa: E402
    allocate_regions,
    block_tables,
    build_cache,
    cache_layout,
    greedy_continue,
    rank_layout,
    region_tensors,
    tiny_model,
    weights_digest,
)


async def pull_all(family: str, layout: Any, meta: dict[str, Any], dst_tp: int,
                   transport: str) -> tuple[list[dict[Key, torch.Tensor]], int, float]:
    """Every D rank's shard of one request, as this test keys them; bytes and seconds."""
    shards: list[dict[Key, torch.Tensor]] = []
    moved, started = 0, time.perf_counter()
    engine = f"{family}-p{meta['src_tp']}"
    blobs = [base64.b64decode(b) for b in meta["blobs"]]
    async with contextlib.AsyncExitStack() as stack:
        for rank in range(dst_tp):
            rl = rank_layout(layout, PROMPT_TOKENS, tp=dst_tp, rank=rank)
            d = await stack.enter_async_context(DecodeConnector(
                rl, name=f"{family}-d{dst_tp}r{rank}-p{meta['src_tp']}-{os.getpid()}", transport=transport))
            memory = allocate_regions(rl)
            await d.register_caches(memory)
            await d.connect(engine, blobs)
            src = rank_layout(layout, PROMPT_TOKENS, tp=meta["src_tp"], rank=0)
            result = await d.pull(f"{family}-{meta['src_tp']}-{dst_tp}", engine=engine, src_blocks=block_tables(src),
                                  dst_blocks=block_tables(rl), num_tokens=PROMPT_TOKENS, timeout=30)
            moved += result.bytes
            shards.append({(r.layer, r.piece): memory[r.region] for r in region_tensors(rl)})
    return shards, moved, time.perf_counter() - started


def decode(model: Any, layout: Any, whole: dict[Key, torch.Tensor], first_token: int) -> tuple[list[int], torch.Tensor]:
    one = rank_layout(layout, PROMPT_TOKENS)
    tensors = {r.region: whole[r.layer, r.piece] for r in region_tensors(one)}
    cache = build_cache(model, one, tensors)
    return greedy_continue(model, cache, first_token, PROMPT_TOKENS, DECODE_STEPS)


async def main(args: argparse.Namespace) -> None:
    metas: dict[tuple[str, int], dict[str, Any]] = {}
    for line in sys.stdin:
        if line.startswith("META "):
            meta = json.loads(line[5:])
            metas[meta["family"], meta["src_tp"]] = meta
        elif line.strip() == "READY":
            break
    jobs: list[list[Any]] = json.loads(args.jobs)
    controls: dict[str, list[Any]] = json.loads(args.controls)
    models: dict[str, tuple[Any, Any]] = {}
    out = Path(args.out)
    for family, src_tp, dst_tp in jobs:
        started = time.perf_counter()
        if family not in models:
            model = tiny_model(family)
            models[family] = (model, cache_layout(model))
        model, layout = models[family]
        meta = metas[family, src_tp]
        if weights_digest(model) != meta["digest"]:
            raise SystemExit(f"{family}: D's weights differ from P's")
        shards, moved, seconds = await pull_all(family, layout, meta, dst_tp, args.transport)
        whole = join(family, model.config, shards)
        tokens, logits = decode(model, layout, whole, meta["first_token"])
        regions = {r.region: whole[r.layer, r.piece] for r in region_tensors(rank_layout(layout, PROMPT_TOKENS))}
        torch.save({"logits": logits, "tokens": tokens, "cache": regions}, out / f"{family}.p{src_tp}d{dst_tp}.pt")
        control = controls.get(family)
        if control is not None and [src_tp, dst_tp] == control[:2]:
            mistake: Mistake = control[2]
            wrong = join(family, model.config, shards, mistake)
            c_tokens, c_logits = decode(model, layout, wrong, meta["first_token"])
            torch.save({"logits": c_logits, "tokens": c_tokens, "mistake": mistake}, out / f"{family}.control.pt")
        print("DONE " + json.dumps({"family": family, "src_tp": src_tp, "dst_tp": dst_tp, "bytes": moved,
                                    "pull_seconds": seconds, "seconds": time.perf_counter() - started}), flush=True)
    print("END", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--controls", default="{}")
    parser.add_argument("--out", required=True)
    torch.set_num_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)  # CPU kernels' fallback notes
    anyio.run(main, parser.parse_args())
    # NIXL's bundled libnl-route crashes in its exit-time destructor (see hybridxfer.cli._exit):
    # everything is closed and written, so leave without running native destructors.
    sys.stdout.flush()
    os._exit(0)
