"""The bytes a request occupies on one P rank: what a grant to its decoder must cover.

Why from the layout and P's block table, not from a plan: P grants before any D has
planned, and it must not depend on which D TP size or rank will read — every D rank's
plan reads a subset of these bytes (its head slice, its tokens), whatever the pairing.
So the ranges are every piece of every layer this rank holds, at every block of the
request's table in that layer's group: token pieces all kernel sub-blocks of a logical
block, state pieces their running-state page. Page padding and the blocks of other
requests are outside — a neighbouring request's blocks stay unreadable.

Pure arithmetic over the :class:`~hybridxfer.layout.RankLayout` (numpy, sans-IO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import merge_ranges
from hybridxfer.errors import BlockIdError
from hybridxfer.layout import RankLayout

__all__ = ["RequestRanges", "request_ranges"]

Int64Array = npt.NDArray[np.int64]


@attrs.frozen(eq=False)
class RequestRanges:
    """Byte ranges of one request on one rank: ``region`` indexes ``region_names`` (the
    rank layout's), sorted by (region, offset), ranges that continue each other joined."""

    region_names: tuple[str, ...]
    region: Int64Array
    offset: Int64Array
    length: Int64Array

    def __len__(self) -> int:
        return int(self.length.shape[0])

    @property
    def total_bytes(self) -> int:
        return int(self.length.sum()) if len(self) else 0

    def by_name(self) -> dict[str, list[tuple[int, int]]]:
        """``{region name: [(offset, length), ...]}`` (for messages and tests)."""
        out: dict[str, list[tuple[int, int]]] = {}
        for r, o, n in zip(self.region.tolist(), self.offset.tolist(), self.length.tolist(), strict=True):
            out.setdefault(self.region_names[r], []).append((o, n))
        return out


def request_ranges(layout: RankLayout, blocks: Mapping[str, Sequence[int] | Int64Array]) -> RequestRanges:
    """The bytes of the request whose block table (KV group -> logical block IDs, as P
    passes it to the planner; ``-1`` for blocks outside a sliding window) is ``blocks``.

    Raises :class:`~hybridxfer.errors.BlockIdError` for a group the layout does not have
    or an ID outside ``[0, num_blocks)``. Groups of layers this rank does not hold (a
    pipeline stage's) contribute nothing.
    """
    groups = {g.name for g in layout.layout.groups}
    unknown = sorted(set(blocks) - groups)
    if unknown:
        raise BlockIdError(f"rank {layout.rank}: block table names groups {unknown} the layout lacks "
                           f"(it has {sorted(groups)})")
    ids: dict[str, Int64Array] = {}
    for group, table in blocks.items():
        arr = np.asarray(table, dtype=np.int64).reshape(-1)
        bad = arr[(arr < -1) | (arr >= layout.num_blocks)]
        if len(bad):
            raise BlockIdError(f"rank {layout.rank}: group {group!r} lists block {int(bad[0])}, outside "
                               f"[0, {layout.num_blocks})")
        ids[group] = np.unique(arr[arr >= 0])
    index = {name: i for i, name in enumerate(layout.region_names)}
    ratio = layout.blocks_per_kernel
    regions: list[Int64Array] = []
    starts: list[Int64Array] = []
    lengths: list[Int64Array] = []
    for placed in layout.placements:
        held = ids.get(placed.group)
        if held is None or len(held) == 0:
            continue
        size = placed.piece.nbytes * (ratio if placed.piece.has_tokens else 1)
        regions.append(np.full(len(held), index[placed.region], dtype=np.int64))
        starts.append(placed.base + held * placed.page_stride)
        lengths.append(np.full(len(held), size, dtype=np.int64))
    if not regions:
        z = np.zeros(0, dtype=np.int64)
        return RequestRanges(layout.region_names, z, z, z)
    region, offset, length = np.concatenate(regions), np.concatenate(starts), np.concatenate(lengths)
    order = np.lexsort((offset, region))
    region, offset, length = merge_ranges(region[order], offset[order], length[order])
    return RequestRanges(layout.region_names, region, offset, length)
