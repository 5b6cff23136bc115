"""The conformance suite's proof that a transport moves a *hybrid* cache byte-exactly.

P ranks of a small Nemotron-like model (attention + Mamba2 pooled in shared pages, kernel
blocks smaller than logical blocks) run in their own processes; a D rank with another TP
size plans against their published layouts, executes through the transport, and every
byte of its memory — untouched bytes included — must equal the oracle's expectation.
Both directions of heterogeneous TP are covered: fan-in (P2 -> D1) and slicing (P1 -> D2).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Mapping

import anyio

from hybridxfer._child import ChildLines, open_child
from hybridxfer.layout import loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.testing._checks import ConformanceFailure
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches

__all__ = ["HYBRID_LAYOUT", "check_full_hybrid_oracle", "spawn_hybrid_rank"]

#: A small hybrid model with the same structure as Nemotron-H (model form of the DSL).
HYBRID_LAYOUT = """
format = "hybridxfer.layout/1"
[model]
id = "conformance-hybrid"
pattern = "M*M-M*M"
legend = { M = "mamba", "*" = "attention", "-" = "" }
[specs.attention]
kind = "attention"
num_kv_heads = 2
head_dim = 64
dtype = "bfloat16"
[specs.mamba]
kind = "mamba2"
num_heads = 8
head_dim = 16
n_groups = 2
d_state = 16
conv_kernel = 4
conv_dtype = "bfloat16"
ssm_dtype = "float32"
[engine]
pooling = "hybrid-shared"
block = { logical = "equalise", align = 16, kernel = 16 }
"""


class HybridRank:
    """A running ``_hybrid_peer`` process and the metadata it published."""

    def __init__(self, child: ChildLines, metadata: bytes) -> None:
        self.child = child
        self.process = child.process
        self.metadata = metadata

    async def line(self) -> str:
        return await self.child.line()


def _exited(status: int | None) -> Exception:
    return ConformanceFailure(f"hybrid peer process exited (status {status})")


@contextlib.asynccontextmanager
async def spawn_hybrid_rank(layout_text: str, *, tp: int, rank: int, tokens: int, transport: str,
                            options: Mapping[str, object], start_timeout: float = 60.0) -> AsyncIterator[HybridRank]:
    """Start one P rank process and wait for its metadata; kill it on exit."""
    argv = [sys.executable, "-m", "hybridxfer.testing._hybrid_peer", "--layout", "-", "--layout-text", layout_text,
            "--tp", str(tp), "--rank", str(rank), "--tokens", str(tokens), "--transport", transport,
            "--options", json.dumps(dict(options)), "--name", f"hybrid-p{rank}"]
    async with open_child(argv, _exited) as child:
        with anyio.fail_after(start_timeout):
            line = await child.line()
        if not line.startswith("META "):
            raise ConformanceFailure(f"hybrid peer printed {line!r} instead of its metadata")
        yield HybridRank(child, bytes.fromhex(line[5:]))


async def _one_pairing(transport: str, options: Mapping[str, object], src_tp: int, dst_tp: int,
                       dst_rank: int, tokens: int) -> None:
    from hybridxfer.execute import Agent

    layout = loads_layout(HYBRID_LAYOUT, source="<conformance-hybrid>")
    dst = layout.for_rank(dst_tp, dst_rank, num_blocks=blocks_for(layout, dst_tp, tokens, rank=dst_rank))
    memory = destination_memory(dst)
    async with contextlib.AsyncExitStack() as stack:
        ranks = [await stack.enter_async_context(spawn_hybrid_rank(
            HYBRID_LAYOUT, tp=src_tp, rank=r, tokens=tokens, transport=transport, options=options))
            for r in range(src_tp)]
        agent = await stack.enter_async_context(Agent(
            f"hybrid-d{dst_rank}", transport=transport, transport_options=dict(options), role="decode",
            rank=dst_rank, tp_size=dst_tp, layout=dst))
        for name in dst.region_names:
            await agent.register(name, memory[name])
        peers = [await agent.connect(r.metadata) for r in ranks]
        src_layouts = agent.source_layouts(peers)
        executable = agent.plan(peers, request_id=f"hybrid-{src_tp}-{dst_tp}-{dst_rank}",
                                src_blocks=contiguous_block_tables(src_layouts[0], tokens),
                                dst_blocks=contiguous_block_tables(dst, tokens), num_tokens=tokens)
        await executable.execute(timeout=60)
        chunk = compile_plan(src_layouts, dst).chunk_tokens
        diff = mismatches(memory, expected_destination(dst, tokens, chunk))
        if diff:
            raise ConformanceFailure(f"P{src_tp}->D{dst_tp} rank {dst_rank}: " + "; ".join(diff))
        for r in (ranks[p] for p in executable.plan.notify_ranks):
            with anyio.fail_after(20):
                line = await r.line()
            if not line.startswith("DONE "):
                raise ConformanceFailure(f"P rank printed {line!r} instead of DONE")


async def check_full_hybrid_oracle(transport: str, options: Mapping[str, object]) -> None:
    """Fan-in (P2 -> D1) and slicing (P1 -> D2, rank 1), byte-exact against the oracle."""
    await _one_pairing(transport, options, src_tp=2, dst_tp=1, dst_rank=0, tokens=100)
    await _one_pairing(transport, options, src_tp=1, dst_tp=2, dst_rank=1, tokens=100)
