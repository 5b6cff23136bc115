"""The compiled, bound transfer plan: plain columnar data, inspectable and serialisable.

A :class:`TransferPlan` says, for one destination (D) rank and one request, which bytes
to read from which source (P) rank and where they land. It holds no addresses and no
sockets: its :class:`~hybridxfer.descriptors.Descriptors` name regions by index into
``src_region_names`` / ``dst_region_names`` and offsets are bytes from each region's base,
so the same plan can be executed by any transport, dumped as JSON, or checked by the oracle.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from hybridxfer.descriptors import Descriptors
from hybridxfer.plan._prefix import CachedPrefix

__all__ = ["PlanStatistics", "TransferPlan"]


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
    #: bytes not moved because D's prefix cache already holds them (0 without a hit)
    skipped_cached_bytes: int = 0


@attrs.frozen(eq=False)
class TransferPlan:
    """Descriptors for one request on one D rank, ordered by source rank (ascending).

    ``descriptors`` holds every row, coalesced; ``reads`` the same rows per source rank.
    ``notify_ranks`` lists every P rank that must be told the request is done, including
    ranks D reads nothing from (so they can free the request's blocks).
    ``dst_blocks`` lists, per destination KV group, the block IDs this plan writes: on a
    failure exactly these must be treated as invalid.
    ``cached_prefix`` lists, per D group with a prefix-cache hit, what the plan leaves
    untouched because D already holds it (never written, valid whatever happens).
    """

    src_tp: int
    dst_tp: int
    dst_rank: int
    descriptors: Descriptors
    src_region_names: tuple[str, ...]
    dst_region_names: tuple[str, ...]
    notify_ranks: tuple[int, ...]
    dst_blocks: Mapping[str, tuple[int, ...]]
    statistics: PlanStatistics
    #: pipeline parallelism: P's and D's stage counts, and the stage of this D rank
    #: (source ranks are global: ``stage * src_tp + tp_rank``)
    src_pp: int = 1
    dst_pp: int = 1
    dst_stage: int = 0
    cached_prefix: Mapping[str, CachedPrefix] = attrs.field(factory=dict)

    @property
    def reads(self) -> tuple[Descriptors, ...]:
        """The descriptors per source rank (ascending), as views of :attr:`descriptors`."""
        return tuple(self.descriptors.by_source().values())

    @property
    def source_ranks(self) -> tuple[int, ...]:
        return tuple(self.descriptors.by_source())

    def source_address(self, rank: int) -> tuple[int, int]:
        """``(stage, tp_rank)`` of global source rank ``rank``."""
        return divmod(rank, self.src_tp)

    @property
    def total_bytes(self) -> int:
        return self.statistics.bytes
