"""The compiled, bound transfer plan: plain columnar data, inspectable and serialisable.

A :class:`TransferPlan` says, for one destination (D) rank and one request, which bytes
to read from which source (P) rank and where they land. It holds no addresses and no
sockets: region references are indices into ``src_region_names`` / ``dst_region_names``
and offsets are bytes from each region's base, so the same plan can be executed by any
transport, dumped as JSON, or checked by the oracle.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
import numpy.typing as npt

__all__ = ["PlanStatistics", "SourceReads", "TransferPlan"]

Int64Array = npt.NDArray[np.int64]


@attrs.frozen(eq=False)
class SourceReads:
    """All descriptors D reads from one source rank, as parallel ``int64`` columns."""

    src_rank: int
    src_region: Int64Array
    src_offset: Int64Array
    dst_region: Int64Array
    dst_offset: Int64Array
    length: Int64Array

    def __len__(self) -> int:
        return int(self.length.shape[0])

    @property
    def total_bytes(self) -> int:
        return int(self.length.sum()) if len(self) else 0

    def rows(self) -> list[tuple[int, int, int, int, int]]:
        """Descriptors as Python tuples (for JSON and debugging; not for the hot path)."""
        cols = (self.src_region, self.src_offset, self.dst_region, self.dst_offset, self.length)
        return [tuple(int(v) for v in row) for row in zip(*cols, strict=True)]  # type: ignore[misc]


@attrs.frozen
class PlanStatistics:
    """What a plan moves and what it avoids moving."""

    bytes: int
    bytes_by_kind: Mapping[str, int]
    padding_bytes_skipped: int
    descriptor_count: int
    descriptor_count_uncoalesced: int
    bytes_by_source: Mapping[int, int]
    descriptors_by_source: Mapping[int, int]


@attrs.frozen(eq=False)
class TransferPlan:
    """Descriptors for one request on one D rank, grouped by source rank (ascending).

    ``notify_ranks`` lists every P rank that must be told the request is done, including
    ranks D reads nothing from (so they can free the request's blocks).
    ``dst_blocks`` lists, per destination KV group, the block IDs this plan writes: on a
    failure exactly these must be treated as invalid.
    """

    src_tp: int
    dst_tp: int
    dst_rank: int
    reads: tuple[SourceReads, ...]
    src_region_names: tuple[str, ...]
    dst_region_names: tuple[str, ...]
    notify_ranks: tuple[int, ...]
    dst_blocks: Mapping[str, tuple[int, ...]]
    statistics: PlanStatistics

    @property
    def source_ranks(self) -> tuple[int, ...]:
        return tuple(r.src_rank for r in self.reads)

    @property
    def total_bytes(self) -> int:
        return self.statistics.bytes
