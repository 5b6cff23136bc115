"""Cut one read into engine batches that fit a staging slab, and copy a slab out.

Why here and not in the executor: the limits are the engine's (at most 1024 entries in
flight per peer, see :mod:`._link`) and the slab's (bytes), not the transport
contract's, so a read of any size is accepted and cut where this engine needs it. Rows
longer than a slab are cut into slab-sized pieces; every piece keeps its place, so the
bytes land exactly where the row says.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.transport import Descriptors

__all__ = ["EngineBatch", "copy_out", "engine_batches"]

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


@attrs.frozen(eq=False)
class EngineBatch:
    """Rows for one engine call: where each comes from, and where it goes from the slab."""

    remote: I64  # peer addresses
    length: I64
    slab_offset: I64
    dst_region: I64
    dst_offset: I64

    @property
    def nbytes(self) -> int:
        return int(self.length.sum())


def _cut_long_rows(src: I64, dst_region: I64, dst_offset: I64, length: I64,
                   limit: int) -> tuple[I64, I64, I64, I64]:
    pieces = (length + (limit - 1)) // limit
    if bool((pieces <= 1).all()):
        return src, dst_region, dst_offset, length
    row = np.repeat(np.arange(len(length)), pieces)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    skip = (np.arange(int(pieces.sum())) - first).astype(np.int64) * limit
    return (src[row] + skip, dst_region[row], dst_offset[row] + skip,
            np.minimum(length[row] - skip, limit).astype(np.int64))


#: The engine spreads a call's entries over its TCP lanes to the peer (4 by default), one
#: entry per lane at a time: a call of two 14 MB rows keeps two lanes idle. Rows are cut
#: so that a full slab is at least this many entries.
ENTRIES_PER_SLAB = 16


def engine_batches(batch: Descriptors, remote_bases: I64, *, slab_bytes: int, max_entries: int) -> list[EngineBatch]:
    """Consecutive batches of at most ``max_entries`` rows and ``slab_bytes`` bytes each.

    Rows longer than ``slab_bytes / ENTRIES_PER_SLAB`` (at least 64 KiB) are cut into
    pieces of that size. Rows must already be bounds-checked; empty rows are dropped.
    """
    keep = batch.length > 0
    length = batch.length[keep].astype(np.int64)
    if not len(length):
        return []
    src = remote_bases[batch.src_region[keep]] + batch.src_offset[keep]
    piece = min(slab_bytes, max(64 << 10, slab_bytes // ENTRIES_PER_SLAB))
    src, dst_region, dst_offset, length = _cut_long_rows(
        src, batch.dst_region[keep], batch.dst_offset[keep], length, piece)
    end_at = np.cumsum(length)
    out: list[EngineBatch] = []
    start, done = 0, 0
    while start < len(length):
        stop = int(np.searchsorted(end_at, done + slab_bytes, side="right"))
        stop = max(start + 1, min(stop, start + max_entries))
        ln = length[start:stop]
        out.append(EngineBatch(src[start:stop], ln, end_at[start:stop] - ln - done,
                               dst_region[start:stop], dst_offset[start:stop]))
        done = int(end_at[stop - 1])
        start = stop
    return out


def copy_out(slab: U8, batch: EngineBatch, regions: list[U8]) -> None:
    """Copy every row of ``batch`` from the slab to its destination (synchronous: no await)."""
    rows = zip(batch.dst_region.tolist(), batch.dst_offset.tolist(), batch.length.tolist(),
               batch.slab_offset.tolist(), strict=True)
    for region, offset, n, at in rows:
        regions[region][offset:offset + n] = slab[at:at + n]
