"""The row table behind a :class:`~hybridxfer.plan.StreamSchedule`: every bound row of a
request, uncoalesced, with the layer, token end and D block it depends on.

Rows are sorted by layer group once, at build time, so a step is one mask over the table
and each group's rows are one slice; coalescing a step never merges two groups' rows, so
every returned row belongs to exactly one group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.plan._batch import Batch
from hybridxfer.plan._bind import TaggedRows

__all__ = ["RowTable", "coalesce_in_groups", "tag_rows"]

Int64Array = npt.NDArray[np.int64]


@attrs.frozen(eq=False)
class RowTable:
    """The request's rows, uncoalesced, sorted by layer group (then source rank, plan order),
    with what each depends on. Immutable; shared by forks of a schedule."""

    rows: Descriptors
    group: Int64Array  # index into groups
    layer: Int64Array  # index into the schedule's layers
    need: Int64Array  # tokens_through that makes the row final
    dst_group: Int64Array  # index into dst_groups
    dst_block: Int64Array
    dst_groups: tuple[str, ...]
    group_bounds: Int64Array  # rows of group g: [bounds[g], bounds[g + 1])


def tag_rows(parts: Sequence[TaggedRows], groups: Sequence[Sequence[str]], layers: Sequence[str],
             dst_groups: Sequence[str], tokens: int) -> RowTable:
    """Stack the tagged parts, resolve each row's layer and group, sort by group."""
    index = {layer: i for i, layer in enumerate(layers)}
    group_of_layer = np.array([gi for gi, g in enumerate(groups) for _ in g], dtype=np.int64)
    dst_group_index = {g: i for i, g in enumerate(dst_groups)}
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return RowTable(Descriptors.empty(), z, z, z, z, z, tuple(dst_groups), np.zeros(len(groups) + 1, dtype=np.int64))
    rows = Descriptors.concat([p.rows for p in parts])
    layer = np.concatenate([_job_layers(p.batch, index)[p.job] for p in parts])
    need = np.concatenate([p.token_end for p in parts])
    need[need < 0] = tokens  # running states: final once the whole prompt is consumed
    dst_group = np.concatenate([np.full(len(p.job), dst_group_index[p.batch.dst_group], dtype=np.int64)
                                for p in parts])
    dst_block = np.concatenate([p.dst_block for p in parts])
    keep = rows.length > 0
    group = group_of_layer[layer]
    order = np.flatnonzero(keep)[np.argsort(group[keep], kind="stable")]
    group = group[order]
    bounds = np.searchsorted(group, np.arange(len(groups) + 1), side="left").astype(np.int64)
    return RowTable(rows.take(order), group, layer[order], need[order], dst_group[order], dst_block[order],
                    tuple(dst_groups), bounds)


def _job_layers(batch: Batch, index: Mapping[str, int]) -> Int64Array:
    """Per job of ``batch``, its layer's index (a loop over jobs, not rows)."""
    return np.array([index[j.layer] for j in batch.jobs], dtype=np.int64)


def coalesce_in_groups(rows: Descriptors, group: Int64Array) -> tuple[Descriptors, Int64Array]:
    """:meth:`Descriptors.coalesce`, never merging rows of different layer groups."""
    n = len(rows)
    if n <= 1:
        return rows, group
    ln = rows.length
    cont = ((rows.src_offset[:-1] + ln[:-1] == rows.src_offset[1:])
            & (rows.dst_offset[:-1] + ln[:-1] == rows.dst_offset[1:])
            & (rows.src_region[:-1] == rows.src_region[1:]) & (rows.dst_region[:-1] == rows.dst_region[1:])
            & (rows.src_rank[:-1] == rows.src_rank[1:]) & (group[:-1] == group[1:]))
    starts = np.flatnonzero(np.concatenate(([True], ~cont)))
    if starts.shape[0] == n:
        return rows, group
    merged = rows.take(starts)
    return attrs.evolve(merged, length=np.add.reduceat(ln, starts).astype(np.int64)), group[starts]
