"""A streaming P rank of a hybrid model in its own process, driven line by line.

Run as ``python -m hybridxfer.testing._stream_peer --layout FILE --tp P --rank R --tokens N
--transport NAME [--options JSON]``. It serves like :mod:`hybridxfer.testing._hybrid_peer`
(synthetic caches, ``META <hex>`` first), then reads commands from stdin, one per line:
``READY <request> <tokens_through> <layer>[,<layer>...]`` reports those layers ready
(what an engine's forward loop does per layer) and answers ``MARKED``. It exits when stdin
closes. Why a process: a streaming P that is SIGKILLed after some layers is the failure a
streamed transfer must report exactly, and only a real process death shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio

__all__ = ["main"]


async def _serve(layout_text: str, *, tp: int, rank: int, tokens: int, transport: str,
                 options: dict[str, object], name: str) -> None:
    from hybridxfer.plan import Readiness
    from hybridxfer.testing._hybrid_peer import synthetic_prefill_agent

    async with synthetic_prefill_agent(layout_text, tp=tp, rank=rank, tokens=tokens, transport=transport,
                                       options=options, name=name) as agent:
        print("META", agent.metadata().hex(), flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            words = line.split()
            if len(words) == 4 and words[0] == "READY":
                agent.mark_ready(words[1], Readiness(frozenset(words[3].split(",")), int(words[2])))
                print("MARKED", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybridxfer.testing._stream_peer")
    parser.add_argument("--layout", required=True)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--transport", default="tcp")
    parser.add_argument("--options", default="{}")
    parser.add_argument("--name", default="")
    args = parser.parse_args(argv)
    text = Path(args.layout).read_text(encoding="utf-8")
    anyio.run(lambda: _serve(text, tp=args.tp, rank=args.rank, tokens=args.tokens, transport=args.transport,
                             options=json.loads(args.options), name=args.name or f"p{args.rank}"))


if __name__ == "__main__":
    main()
