"""A P rank of a hybrid model in its own process, serving a synthetic request.

Run as ``python -m hybridxfer.testing._hybrid_peer --layout FILE --tp P --rank R --tokens N
--transport NAME [--options JSON]``. It resolves the layout for its rank, fills its
regions with :func:`~hybridxfer.synthetic.source_memory`, registers them, prints
``META <hex>``, then ``DONE <request> <peer>`` per completed request, until stdin closes.
``hybridxfer serve`` and the conformance suite's hybrid check both run this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from hybridxfer.execute import Agent

__all__ = ["main", "serve_rank", "synthetic_prefill_agent"]


@contextlib.asynccontextmanager
async def synthetic_prefill_agent(layout_text: str, *, tp: int, rank: int, tokens: int, transport: str,
                                  options: dict[str, object], name: str) -> AsyncIterator[Agent]:
    """An entered prefill :class:`~hybridxfer.execute.Agent` for P rank ``rank`` of ``tp``
    whose regions hold one synthetic request of ``tokens`` tokens, registered."""
    from hybridxfer.execute import Agent
    from hybridxfer.layout import loads_layout
    from hybridxfer.synthetic import blocks_for, source_memory

    layout = loads_layout(layout_text)
    rank_layout = layout.for_rank(tp, rank, num_blocks=blocks_for(layout, tp, tokens, rank=rank))
    memory = source_memory(rank_layout, tokens)
    async with Agent(name, transport=transport, transport_options=options, role="prefill",
                     rank=rank, tp_size=tp, layout=rank_layout) as agent:
        for region in rank_layout.region_names:
            await agent.register(region, memory[region])
        yield agent


async def serve_rank(layout_text: str, *, tp: int, rank: int, tokens: int, transport: str,
                     options: dict[str, object], name: str) -> None:
    """Serve one synthetic request of ``tokens`` tokens as P rank ``rank`` of ``tp``."""
    from hybridxfer.testing._peer_process import announce_and_serve

    async with synthetic_prefill_agent(layout_text, tp=tp, rank=rank, tokens=tokens, transport=transport,
                                       options=options, name=name) as agent:
        await announce_and_serve(agent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybridxfer.testing._hybrid_peer")
    parser.add_argument("--layout", required=True, help="layout file, or '-' to read TOML from --layout-text")
    parser.add_argument("--layout-text", default="")
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--transport", default="tcp")
    parser.add_argument("--options", default="{}")
    parser.add_argument("--name", default="")
    args = parser.parse_args(argv)
    text = args.layout_text if args.layout == "-" else Path(args.layout).read_text(encoding="utf-8")
    anyio.run(lambda: serve_rank(text, tp=args.tp, rank=args.rank, tokens=args.tokens, transport=args.transport,
                                 options=json.loads(args.options), name=args.name or f"p{args.rank}"))


if __name__ == "__main__":
    main()
