"""Shared pieces of the streaming tests: P and D agents over real layouts, the per-step oracle.

Why a per-step oracle: a streamed transfer is correct only if it is correct at every step —
after each layer is reported landed, that layer's bytes are P's and every other byte of
D is still what it was. The expected image at a step is built from the byte oracle's
final image (:func:`hybridxfer.synthetic.expected_destination`) and D's untouched
background, switched per layer by where D's layout places that layer's pieces of the
request's blocks — never from the planner or the stream under test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.execute import Agent, Peer
from hybridxfer.layout import Layout, RankLayout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, source_memory
from hybridxfer.transport import Transport
from hybridxfer.transport.registry import open_transport

U8 = npt.NDArray[np.uint8]
Memory = dict[str, U8]

OPTIONS: dict[str, dict[str, object]] = {"loopback": {}, "tcp": {"secret": "stream-tests"},
                                         "nixl": {"read_timeout": 30.0}, "ucxx": {"read_timeout": 30.0}}


def transport(kind: str, name: str) -> Transport:
    return open_transport(kind, name=name, **OPTIONS[kind])


@attrs.define
class Side:
    """One D rank with its memory, the P ranks it streams from, and the oracle's images."""

    d: Agent
    layout: RankLayout
    memory: Memory
    peers: list[Peer]
    dst_blocks: dict[str, list[int]]
    src_blocks: dict[str, list[int]]
    background: Memory
    final: Memory


def d_layout(layout: Layout, tp: int, rank: int, tokens: int) -> RankLayout:
    return layout.for_rank(tp, rank, num_blocks=blocks_for(layout, tp, tokens, rank=rank))


@contextlib.asynccontextmanager
async def prefill_ranks(layout: Layout, tp: int, kind: str, tokens: int,
                        transports: Sequence[Transport] | None = None) -> AsyncIterator[list[Agent]]:
    async with contextlib.AsyncExitStack() as stack:
        ranks = []
        for r in range(tp):
            rl = layout.for_rank(tp, r, num_blocks=blocks_for(layout, tp, tokens))
            t = transports[r] if transports else transport(kind, f"p{r}")
            p = await stack.enter_async_context(Agent(f"p{r}", transport=t, role="prefill", rank=r, tp_size=tp,
                                                      layout=rl))
            for name, mem in source_memory(rl, tokens).items():
                await p.register(name, mem)
            ranks.append(p)
        yield ranks


@contextlib.asynccontextmanager
async def decode_rank(layout: Layout, tp: int, rank: int, kind: str, tokens: int, metadata: Sequence[bytes],
                      src_layout: RankLayout, *, name: str = "", d_transport: Transport | None = None,
                      ) -> AsyncIterator[Side]:
    dl = d_layout(layout, tp, rank, tokens)
    name = name or f"d{rank}"
    async with Agent(name, transport=d_transport or transport(kind, name), role="decode", rank=rank, tp_size=tp,
                     layout=dl) as d:
        memory = destination_memory(dl)
        for region, mem in memory.items():
            await d.register(region, mem)
        peers = [await d.connect(blob) for blob in metadata]
        chunk = compile_plan(d.source_layouts(peers), dl).chunk_tokens
        yield Side(d, dl, memory, peers, contiguous_block_tables(dl, tokens), contiguous_block_tables(src_layout, tokens),
                   destination_memory(dl), expected_destination(dl, tokens, chunk))


def layer_mask(layout: RankLayout, layers: Iterable[str], dst_blocks: Mapping[str, Sequence[int]]) -> dict[str, npt.NDArray[np.bool_]]:
    """Per D region: True on the bytes of ``layers``' pieces of the request's blocks."""
    wanted = set(layers)
    mask = {name: np.zeros(size, dtype=bool) for name, size in zip(layout.region_names, layout.region_sizes,
                                                                       strict=True)}
    for p in layout.placements:
        if p.layer not in wanted:
            continue
        size = p.piece.nbytes * (layout.blocks_per_kernel if p.piece.has_tokens else 1)
        for block in dst_blocks.get(p.group, ()):
            if block >= 0:
                start = p.block_offset(block)
                mask[p.region][start:start + size] = True
    return mask


def step_image(side: Side, landed: Iterable[str]) -> Memory:
    """What D must hold when exactly ``landed`` layers have landed (and nothing else moved)."""
    mask = layer_mask(side.layout, landed, side.dst_blocks)
    return {name: np.where(mask[name], side.final[name], side.background[name]) for name in side.final}


def differing_regions(got: Mapping[str, U8], want: Mapping[str, U8]) -> list[str]:
    return [f"{name}: {int(np.count_nonzero(got[name] != want[name]))} bytes differ"
            for name in want if not np.array_equal(got[name], want[name])]


def written_blocks(side: Side, layers: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Per D group, the request's blocks into which the oracle says ``layers`` write some
    byte (the final image differs from the background there): what must be invalid when
    exactly those layers did not land."""
    wanted = set(layers)
    out: dict[str, set[int]] = {}
    for p in side.layout.placements:
        if p.layer not in wanted:
            continue
        size = p.piece.nbytes * (side.layout.blocks_per_kernel if p.piece.has_tokens else 1)
        for block in side.dst_blocks.get(p.group, ()):
            start = p.block_offset(block)
            if block >= 0 and not np.array_equal(side.final[p.region][start:start + size],
                                                 side.background[p.region][start:start + size]):
                out.setdefault(p.group, set()).add(block)
    return {g: tuple(sorted(b)) for g, b in out.items()}
