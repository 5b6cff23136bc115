"""A plain per-descriptor Python loop computing what D reads: the planner's yardstick.

Written independently of ``hybridxfer.plan`` (it shares only the layout's geometry) and
as simply as possible: per layer, per token chunk, per sharded unit (a KV head, a block of
conv channels, an SSM head) one descriptor, offsets in Python ints. The planner is
meant to beat it by 20x; :func:`canonical` lets the benchmark check that both produce
the same byte mapping, so the comparison is honest.

Scope: pieces whose TP-sharded axis is outermost and whose token axis (if any) comes
right after it — true for every attention/Mamba2 piece of nemotron-3-nano-30b-a3b.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.layout import TOKEN_AXIS, PlacedPiece, RankLayout

__all__ = ["Row", "canonical", "reference_descriptors"]

#: (src_rank, src_region, src_offset, dst_region, dst_offset, length)
Row = tuple[int, int, int, int, int, int]


def _owner_units(pp: PlacedPiece, tp: int, rank: int) -> dict[int, int]:
    """Global unit index -> element offset along the sharded axis on this rank."""
    out: dict[int, int] = {}
    seg_base = 0
    for seg, units, pos in pp.piece.local_units(tp, rank):
        for i, u in enumerate(units):
            out[seg_base + u] = pos + i * seg.unit_extent
        seg_base += seg.units
    return out


def _unit_extents(pp: PlacedPiece) -> dict[int, int]:
    out: dict[int, int] = {}
    base = 0
    for seg in pp.piece.segments:
        for u in range(seg.units):
            out[base + u] = seg.unit_extent
        base += seg.units
    return out


def reference_descriptors(src: Sequence[RankLayout], dst: RankLayout,
                          src_blocks: Mapping[str, Sequence[int]], dst_blocks: Mapping[str, Sequence[int]],
                          tokens: int) -> list[Row]:
    """Every descriptor, one per (layer, token chunk, sharded unit), lowest P rank first."""
    rows: list[Row] = []
    s0 = src[0]
    chunk = math.gcd(s0.kernel_block_tokens, dst.kernel_block_tokens)
    src_by_key = {(pp.layer, pp.piece.tensor, r): pp for r, lay in enumerate(src) for pp in lay.placements}
    for dp in dst.placements:
        piece = dp.piece
        axis = piece.sharded_axis
        if axis is None or piece.axes[0] != axis:
            raise NotImplementedError(f"reference loop: piece {piece.name!r} is not outer-sharded")
        d_units = _owner_units(dp, dst.tp, dst.rank)
        extents = _unit_extents(dp)
        d_stride = piece.strides()[0]
        # the lowest P rank holding each unit provides it (replicas are never read twice)
        providers: dict[int, tuple[int, PlacedPiece, int]] = {}
        for r in range(len(src)):
            sp = src_by_key[(dp.layer, piece.tensor, r)]
            for u, off in _owner_units(sp, len(src), r).items():
                providers.setdefault(u, (r, sp, off))
        if piece.has_tokens:
            if piece.axes[1] != TOKEN_AXIS:
                raise NotImplementedError(f"reference loop: piece {piece.name!r} has tokens not second")
            d_tok = piece.strides()[1]
            s_bs, s_kb = s0.logical_block_tokens, s0.kernel_block_tokens
            d_bs, d_kb = dst.logical_block_tokens, dst.kernel_block_tokens
            s_ids, d_ids = src_blocks[dp.group], dst_blocks[dp.group]
            for t in range(0, tokens, chunk):
                n = min(chunk, tokens - t)  # the last chunk moves only the request's tokens
                s_blk, s_in = s_ids[t // s_bs], t % s_bs
                d_blk, d_in = d_ids[t // d_bs], t % d_bs
                for u, d_el in d_units.items():
                    r, sp, s_el = providers[u]
                    s_tok = sp.piece.strides()[1]
                    s_off = (sp.base + s_blk * sp.page_stride + (s_in // s_kb) * sp.piece.nbytes
                             + s_el * sp.piece.strides()[0] + (s_in % s_kb) * s_tok)
                    d_off = (dp.base + d_blk * dp.page_stride + (d_in // d_kb) * piece.nbytes
                             + d_el * d_stride + (d_in % d_kb) * d_tok)
                    rows.append((r, src[r].region_index(sp.region), s_off,
                                 dst.region_index(dp.region), d_off, n * d_tok * extents[u]))
        else:
            s_blk, d_blk = src_blocks[dp.group][-1], dst_blocks[dp.group][-1]
            for u, d_el in d_units.items():
                r, sp, s_el = providers[u]
                rows.append((r, src[r].region_index(sp.region),
                             sp.base + s_blk * sp.page_stride + s_el * sp.piece.strides()[0],
                             dst.region_index(dp.region), dp.base + d_blk * dp.page_stride + d_el * d_stride,
                             extents[u] * d_stride))
    return rows


def canonical(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Sort (rank, src region, dst region, src offset) and merge runs contiguous on both
    sides: two descriptor lists moving the same bytes to the same places become equal."""
    if rows.shape[0] == 0:
        return rows
    order = np.lexsort((rows[:, 2], rows[:, 3], rows[:, 1], rows[:, 0]))
    r = rows[order]
    same = (r[1:, 0] == r[:-1, 0]) & (r[1:, 1] == r[:-1, 1]) & (r[1:, 3] == r[:-1, 3])
    contiguous = same & (r[1:, 2] == r[:-1, 2] + r[:-1, 5]) & (r[1:, 4] == r[:-1, 4] + r[:-1, 5])
    starts = np.flatnonzero(np.concatenate(([True], ~contiguous)))
    out = r[starts].copy()
    out[:, 5] = np.add.reduceat(r[:, 5], starts)
    return out
