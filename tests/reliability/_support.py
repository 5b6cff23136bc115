"""Shared pieces of the reliability tests: transports, real hybrid layouts, the oracle.

Why real layouts: a fault or bad-input test that moves hand-made byte ranges proves the
transport, not the product. Here P and D hold the conformance-hybrid model (attention and
Mamba2 pooled in shared pages), plans come from the compiler, and every successful
transfer is compared byte for byte — untouched bytes included — with the oracle.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.execute import Agent, Peer
from hybridxfer.layout import Layout, RankLayout, loads_layout
from hybridxfer.plan import compile_plan
from hybridxfer.testing._hybrid_check import HYBRID_LAYOUT
from hybridxfer.synthetic import (
    RankSpec,
    Request,
    blank_destination,
    blocks_for,
    expected_memory,
    source_memory,
)
from hybridxfer.transport import Transport
from hybridxfer.transport.registry import open_transport

U8 = npt.NDArray[np.uint8]
Memory = dict[str, U8]

#: Options per transport; the same dict goes to peer processes (JSON-serialisable).
OPTIONS: dict[str, dict[str, object]] = {
    "tcp": {"secret": "reliability-secret"},
    "nixl": {"read_timeout": 30.0},
    "ucxx": {"read_timeout": 30.0},
    "loopback": {},
}
#: Transports whose peers can live in another process (and so be killed, stopped, closed).
CROSS_PROCESS = ("tcp", "nixl", "ucxx")


def transport(kind: str, name: str) -> Transport:
    return open_transport(kind, name=name, **OPTIONS[kind])


def hybrid_text(*, kv_heads: int = 2, n_groups: int = 2, mamba_heads: int = 8, head_dim: int = 64,
                attention_dtype: str = "bfloat16", kernel: int = 16) -> str:
    """The conformance-hybrid layout, with the knobs the tests turn (TP range, model, geometry)."""
    text = (HYBRID_LAYOUT.replace("num_kv_heads = 2", f"num_kv_heads = {kv_heads}")
            .replace("n_groups = 2", f"n_groups = {n_groups}")
            .replace("num_heads = 8", f"num_heads = {mamba_heads}")
            .replace("head_dim = 64", f"head_dim = {head_dim}")
            .replace('dtype = "bfloat16"\n[specs.mamba]', f'dtype = "{attention_dtype}"\n[specs.mamba]')
            .replace("kernel = 16", f"kernel = {kernel}"))
    return text


def hybrid_layout(**knobs: int | str) -> Layout:
    return loads_layout(hybrid_text(**knobs), source="<reliability-hybrid>")  # type: ignore[arg-type]


def rank_layout(layout: Layout, tp: int, rank: int, tokens: int, requests: int = 1) -> RankLayout:
    return layout.for_rank(tp, rank, num_blocks=blocks_for(layout, tp, tokens, requests=requests, rank=rank))


def _spec(r: RankLayout) -> RankSpec:
    return RankSpec(r.tp, r.rank, r.num_blocks, r.logical_block_tokens, r.kernel_block_tokens)


def blank(r: RankLayout) -> Memory:
    return blank_destination(r.layout, _spec(r))


def expected_after(r: RankLayout, tokens: int, chunk: int, tables: Sequence[Mapping[str, Sequence[int]]]) -> Memory:
    """D's memory after receiving one request per block table (requests never overlap).

    The oracle writes one request over the blank background; bytes where it differs from
    the background are that request's, so several requests combine without ambiguity.
    """
    background = blank(r)
    out = {name: a.copy() for name, a in background.items()}
    for table in tables:
        one = expected_memory(r.layout, _spec(r), Request(table, tokens), chunk_tokens=chunk)
        for name, arr in one.items():
            changed = arr != background[name]
            out[name][changed] = arr[changed]
    return out


def differences(got: Mapping[str, U8], want: Mapping[str, U8]) -> list[str]:
    out = []
    for name, expected in want.items():
        bad = np.flatnonzero(got[name] != expected)
        if bad.size:
            out.append(f"{name}: {bad.size} bytes differ, first at {int(bad[0])}")
    return out


@attrs.define
class HybridWorld:
    """In-process P ranks and one D rank of the hybrid model, connected and registered."""

    ps: list[Agent]
    d: Agent
    peers: list[Peer]
    dst: RankLayout
    memory: Memory
    tokens: int

    @property
    def chunk(self) -> int:
        return compile_plan(self.d.source_layouts(self.peers), self.dst).chunk_tokens

    def reset(self) -> None:
        """Put D's memory back to the blank background (in place: it stays registered)."""
        for name, arr in blank(self.dst).items():
            self.memory[name][:] = arr


@contextlib.asynccontextmanager
async def hybrid_world(kind: str, *, src_tp: int = 2, tokens: int = 40, requests: int = 1,
                       layout: Layout | None = None, d_transport: Transport | None = None) -> AsyncIterator[HybridWorld]:
    """P ranks 0..src_tp-1 holding one request; a TP-1 D rank with room for ``requests``."""
    layout = layout or hybrid_layout()
    dst = rank_layout(layout, 1, 0, tokens, requests)
    memory = blank(dst)
    async with contextlib.AsyncExitStack() as stack:
        ps = []
        for r in range(src_tp):
            rl = rank_layout(layout, src_tp, r, tokens)
            p = await stack.enter_async_context(Agent(f"p{r}", transport=transport(kind, f"p{r}"), role="prefill",
                                                      rank=r, tp_size=src_tp, layout=rl))
            for name, arr in source_memory(rl, tokens).items():
                await p.register(name, arr)
            ps.append(p)
        d = await stack.enter_async_context(Agent("d", transport=d_transport or transport(kind, "d"), role="decode",
                                                  layout=dst))
        for name in dst.region_names:
            await d.register(name, memory[name])
        peers = [await d.connect(p.metadata()) for p in ps]
        yield HybridWorld(ps, d, peers, dst, memory, tokens)
