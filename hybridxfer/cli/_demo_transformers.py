"""``hybridxfer demo --engine transformers``: a real model's cache crosses processes, decoding goes on.

Why a demo of its own: the byte-level demo proves the bytes; this one proves what an
engine author cares about. A P process builds a seeded tiny model of one Hugging Face
family, runs one monolithic ``generate`` (the reference), prefills the prompt and serves
its ``DynamicCache`` as TP ranks; a D process pulls the cache into the shards its TP
ranks hold, puts them together, and decodes 16 tokens. The verdict compares D's logits
with the reference, bit for bit. The conductor (this command) imports neither torch nor
transformers; the two children do, and speak one JSON line each way.

Children: ``python -m hybridxfer.cli._demo_transformers prefill|decode ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio

from hybridxfer._child import open_child
from hybridxfer.errors import HybridXferError, TransferError

__all__ = ["FAMILIES", "add_arguments", "report_text", "run"]

#: The families the demo builds a tiny model of, by Hugging Face ``model_type`` (the same
#: list as ``hybridxfer.engine.transformers.TINY_FAMILIES``, kept here so the conductor
#: starts without importing torch).
FAMILIES = ("llama", "nemotron_h", "bamba", "granitemoehybrid", "falcon_h1", "zamba2", "mamba2", "mamba",
            "jamba", "qwen3_next")
PROMPT_TOKENS = 48
DECODE_STEPS = 16
_REQUEST = "demo-request"


class DemoError(HybridXferError):
    """A demo child reported a failure (its message is the child's error)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's ``--engine`` switch and the transformers engine's own options."""
    parser.add_argument("--engine", choices=("synthetic", "transformers"), default="synthetic",
                        help="synthetic: patterned caches, every byte verified (default); transformers: a real "
                             "tiny model's cache, decoding compared with one monolithic generate")
    parser.add_argument("--family", choices=FAMILIES, default="nemotron_h", metavar="NAME",
                        help=f"with --engine transformers: the model family, by model_type ({', '.join(FAMILIES)}; "
                             "default nemotron_h)")


def _child(verbose: int, role: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "hybridxfer.cli._demo_transformers", role, "--family", args.family,
            "--src-tp", str(args.src_tp), "--dst-tp", str(args.dst_tp), "--transport", args.transport,
            "--timeout", str(args.timeout), *(["-" + "v" * verbose] if verbose else [])]


def run(args: argparse.Namespace) -> int:
    """Conduct one demo; 0 when D's logits are identical to the monolithic ones, else 1."""
    from hybridxfer.cli._usage import UsageError

    if args.src_tp < 1 or args.dst_tp < 1:
        raise UsageError("--src-tp and --dst-tp must be >= 1")
    if not 0 < args.timeout < float("inf"):
        raise UsageError("--timeout must be a positive number of seconds")
    if args.layout:
        raise UsageError("--engine transformers derives its layout from the model's config; drop --layout")
    started = time.perf_counter()
    result = anyio.run(_conduct, args)
    doc = {"engine": "transformers", "family": args.family, "src_tp": args.src_tp, "dst_tp": args.dst_tp,
           "transport": args.transport, **result, "wall_seconds": time.perf_counter() - started}
    print(json.dumps(doc) if args.json else report_text(doc))
    return 0 if doc["identical"] else 1


async def _conduct(args: argparse.Namespace) -> dict[str, Any]:
    def exited(who: str) -> Any:
        return lambda status: TransferError(f"the {who} process exited (status {status}) before finishing")

    try:
        with anyio.fail_after(args.timeout):
            # Both start at once: D imports and builds its model while P prefills.
            async with open_child(_child(args.verbose, "prefill", args), exited("prefill")) as p, \
                    open_child(_child(args.verbose, "decode", args), exited("decode")) as d:
                meta = _expect(await p.line(), "META")
                assert d.process.stdin is not None and p.process.stdin is not None
                await d.process.stdin.send(b"META " + json.dumps(meta).encode() + b"\n")
                result = _expect(await d.line(), "RESULT")
                _expect(await p.line(), "FINISHED")  # every P rank saw its readers finish
                await p.process.stdin.aclose()
                return {"prompt_tokens": meta["prompt_tokens"], "monolithic": meta["tokens"][1:],
                        "first_token": meta["tokens"][0], **result}
    except TimeoutError:
        raise TransferError(f"demo did not finish within {args.timeout} s") from None


def _expect(line: str, kind: str) -> dict[str, Any]:
    word, _, rest = line.partition(" ")
    if word == "ERROR":
        raise DemoError(rest)
    if word != kind:
        raise TransferError(f"a demo process said {line[:200]!r}, expected {kind}")
    doc: dict[str, Any] = json.loads(rest)
    return doc


def report_text(doc: dict[str, Any]) -> str:
    lines = [
        f"transformers demo: {doc['family']} (random weights, no tokenizer: token ids), "
        f"P TP {doc['src_tp']} -> D TP {doc['dst_tp']} over {doc['transport']}",
        f"P prefilled {doc['prompt_tokens']} prompt tokens and chose token {doc['first_token']}; "
        f"D decoded {len(doc['decoded'])} more from the moved cache",
        "",
        f"{'step':>4}  {'monolithic generate':>19}  {'D after transfer':>16}",
    ]
    for step, (mono, dec) in enumerate(zip(doc["monolithic"], doc["decoded"], strict=True), start=1):
        lines.append(f"{step:>4}  {mono:>19}  {dec:>16}{'' if mono == dec else '   <- differs'}")
    verdict = "logits identical" if doc["identical"] else "logits DIFFER"
    lines += ["", f"moved {doc['bytes']:,} bytes from P ranks {tuple(doc['source_ranks'])} in "
                  f"{doc['seconds']:.3f} s; {doc['wall_seconds']:.1f} s in all",
              f"verdict: {verdict} (max |logit difference| {doc['max_abs_logit_diff']:g})"]
    return "\n".join(lines)


# -- the two children --------------------------------------------------------------------------------

def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hybridxfer.cli._demo_transformers")
    parser.add_argument("role", choices=("prefill", "decode"))
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--src-tp", type=int, required=True)
    parser.add_argument("--dst-tp", type=int, required=True)
    parser.add_argument("--transport", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO if args.verbose == 1 else logging.DEBUG, stream=sys.stderr)
    try:
        import logging

        import torch

        if not args.verbose:  # "falling back to the reference PyTorch kernel" is expected on CPU
            logging.getLogger("transformers").setLevel(logging.ERROR)

        torch.set_num_threads(1)  # P's reference and D's decoding run the same kernels
        anyio.run(_prefill if args.role == "prefill" else _decode, args)
    except Exception as exc:  # noqa: BLE001 - reported to the conductor as one line, never a traceback
        message = " ".join(line.strip() for line in str(exc).splitlines())
        print(f"ERROR {type(exc).__name__}: {message}", flush=True)
        return 1
    return 0


def _prompt() -> Any:
    import torch

    return torch.randint(3, 512, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(2026))


async def _prefill(args: argparse.Namespace) -> None:
    import base64
    import contextlib

    import torch

    from hybridxfer.engine import PrefillConnector
    from hybridxfer.engine.transformers import (
        cache_layout,
        cache_regions,
        prefill,
        rank_layout,
        shard_regions,
        tiny_model,
        weights_digest,
    )

    model = tiny_model(args.family)
    layout = cache_layout(model)
    prompt = _prompt()
    with torch.no_grad():
        reference = model.generate(  # type: ignore[operator]
            prompt, max_new_tokens=DECODE_STEPS + 1, do_sample=False, output_logits=True,
            return_dict_in_generate=True)
    logits = torch.stack([step[0] for step in reference.logits])[1:]  # the steps D decodes
    cache, _ = prefill(model, prompt)
    whole = cache_regions(cache, rank_layout(layout, PROMPT_TOKENS))
    async with contextlib.AsyncExitStack() as stack:
        ranks = []
        for rank in range(args.src_tp):
            rl = rank_layout(layout, PROMPT_TOKENS, tp=args.src_tp, rank=rank)
            memory = whole if args.src_tp == 1 else shard_regions(layout, whole, PROMPT_TOKENS, tp=args.src_tp,
                                                                  rank=rank)
            p = await stack.enter_async_context(PrefillConnector(
                rl, name=f"demo-prefill-r{rank}", transport=args.transport, decode_tp=args.dst_tp))
            await p.register_caches(memory)
            ranks.append(p)
        meta = {"blobs": [base64.b64encode(p.metadata()).decode() for p in ranks], "digest": weights_digest(model),
                "prompt_tokens": PROMPT_TOKENS, "tokens": reference.sequences[0, PROMPT_TOKENS:].tolist(),
                "logits": base64.b64encode(logits.contiguous().numpy().tobytes()).decode()}
        print("META " + json.dumps(meta), flush=True)
        for p in ranks:
            await p.wait_request_finished(_REQUEST, timeout=args.timeout)
        print("FINISHED {}", flush=True)


async def _decode(args: argparse.Namespace) -> None:
    import base64
    import contextlib

    import numpy as np
    import torch

    from hybridxfer.engine import DecodeConnector
    from hybridxfer.engine.transformers import (
        allocate_regions,
        block_tables,
        build_cache,
        cache_layout,
        gather_regions,
        greedy_continue,
        rank_layout,
        tiny_model,
        weights_digest,
    )

    model = tiny_model(args.family)  # while P prefills
    layout = cache_layout(model)
    line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    meta = _expect(line.strip(), "META")
    if weights_digest(model) != meta["digest"]:
        raise DemoError("D built other weights than P (the same seed must give the same model)")
    blobs = [base64.b64decode(b) for b in meta["blobs"]]
    shards: list[dict[str, torch.Tensor]] = []
    moved, seconds, sources = 0, 0.0, set[int]()
    async with contextlib.AsyncExitStack() as stack:
        for rank in range(args.dst_tp):
            rl = rank_layout(layout, PROMPT_TOKENS, tp=args.dst_tp, rank=rank)
            d = await stack.enter_async_context(DecodeConnector(rl, name=f"demo-decode-r{rank}",
                                                                transport=args.transport))
            memory = allocate_regions(rl)
            await d.register_caches(memory)
            await d.connect("prefill", blobs)
            src = rank_layout(layout, PROMPT_TOKENS, tp=args.src_tp)
            pulled = await d.pull(_REQUEST, engine="prefill", src_blocks=block_tables(src),
                                  dst_blocks=block_tables(rl), num_tokens=PROMPT_TOKENS, timeout=args.timeout)
            moved, seconds = moved + pulled.bytes, seconds + pulled.seconds
            sources.update(pulled.source_ranks)
            shards.append(memory)
    whole = shards[0] if args.dst_tp == 1 else gather_regions(layout, shards, PROMPT_TOKENS)
    cache = build_cache(model, rank_layout(layout, PROMPT_TOKENS), whole)
    tokens, logits = greedy_continue(model, cache, meta["tokens"][0], PROMPT_TOKENS, DECODE_STEPS)
    reference = torch.from_numpy(np.frombuffer(base64.b64decode(meta["logits"]), dtype=np.float32).copy())
    reference = reference.reshape(logits.shape)
    result = {"decoded": tokens, "bytes": moved, "seconds": seconds, "source_ranks": sorted(sources),
              "identical": bool(torch.equal(logits, reference)),
              "max_abs_logit_diff": float((logits - reference).abs().max())}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    status = _child_main(sys.argv[1:])
    from hybridxfer.cli._exit import exit_process

    exit_process(status)
