"""Which D blocks of a streamed request hold a planned byte that has not landed.

Why bytes and not layers: a streamed request fails part-way, with some layers wholly in
place, others partly (attention rows move block by block as P's tokens become final).
A block ID indexes every layer of its KV group, so the block must be recomputed if *any*
byte the plan writes into it for *any* layer is not known to have landed — and only then.
The answer comes from the bytes recorded as landed (:class:`~hybridxfer.execute.LandedBytes`)
and D's layout (where each layer's piece of each block lies), never from the schedule that
decided what to move, so it cannot inherit a scheduling mistake.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hybridxfer.execute._landed import LandedBytes
from hybridxfer.layout import RankLayout
from hybridxfer.plan import TransferPlan

__all__ = ["unlanded_blocks"]


def unlanded_blocks(layout: RankLayout, plan: TransferPlan, landed: LandedBytes,
                    dst_blocks: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Per D KV group: the blocks (of ``dst_blocks``) into which ``plan`` writes some byte
    that ``landed`` does not hold. Groups with none are left out."""
    missing = landed.missing(plan)
    if not missing:
        return {}
    runs = {name: (np.array([s for s, _ in r], dtype=np.int64), np.array([e for _, e in r], dtype=np.int64))
            for name, r in missing.items()}
    out: dict[str, tuple[int, ...]] = {}
    for group, ids in dst_blocks.items():
        blocks = np.array([int(b) for b in ids if int(b) >= 0], dtype=np.int64)
        if blocks.size == 0:
            continue
        bad = np.zeros(blocks.size, dtype=bool)
        for p in layout.placements:
            if p.group != group or p.region not in runs:
                continue
            starts_m, ends_m = runs[p.region]
            size = p.piece.nbytes * (layout.blocks_per_kernel if p.piece.has_tokens else 1)
            start = p.base + blocks * p.page_stride
            # the first missing run ending after the block's start overlaps it iff it begins before its end
            i = np.searchsorted(ends_m, start, side="right")
            inside = i < ends_m.size
            bad[inside] |= starts_m[i[inside]] < start[inside] + size
        if bad.any():
            out[group] = tuple(int(b) for b in blocks[bad])
    return out
