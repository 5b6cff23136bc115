"""Cut whole cache tensors into what each TP rank holds, and put shards back together.

Why here: transformers runs a model on one device, so a TP-``n`` engine is emulated —
a prefill "rank" serves the shard TP rank ``r`` of a sharded engine would hold, and a
decode engine of TP ``n`` gathers its ranks' shards before decoding. The rules are the
layout's (each conv section sliced on its own, units replicated when fewer than ranks),
read from the rank layouts' segments; a gathered replica that disagrees is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hybridxfer.engine.transformers._layout import RegionTensor, rank_layout, region_tensors
from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout import Layout

__all__ = ["gather_regions", "shard_regions"]

#: (element offset in the whole tensor, in the shard, length) along the sharded dim.
_Span = tuple[int, int, int]


def _spans(whole: RegionTensor, part: RegionTensor, tp: int, rank: int) -> tuple[int, list[_Span]]:
    """The sharded tensor dim, and the spans ``rank`` holds of the whole tensor."""
    piece = part.placement.piece
    if piece.sharded_axis is None:
        return 0, [(0, 0, whole.shape[0])]
    axis = piece.axes.index(piece.sharded_axis)
    dim = axis if piece.axes[0] == "kv" else axis + 1
    starts = {seg.name: pos for seg, _, pos in whole.placement.piece.local_units(1, 0)}
    spans = [(starts[seg.name] + units.start * seg.unit_extent, pos, len(units) * seg.unit_extent)
             for seg, units, pos in piece.local_units(tp, rank)]
    return dim, spans


def shard_regions(layout: Layout, tensors: Mapping[str, torch.Tensor], num_tokens: int, *,
                  tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Copies of the parts of whole (TP-1) region tensors that TP rank ``rank`` of ``tp`` holds."""
    whole = {r.region: r for r in region_tensors(rank_layout(layout, num_tokens))}
    out: dict[str, torch.Tensor] = {}
    for part in region_tensors(rank_layout(layout, num_tokens, tp=tp, rank=rank)):
        source = tensors[part.region]
        shard = torch.empty(part.shape, dtype=source.dtype, device=source.device)
        dim, spans = _spans(whole[part.region], part, tp, rank)
        for at_whole, at_shard, length in spans:
            shard.narrow(dim, at_shard, length).copy_(source.narrow(dim, at_whole, length))
        out[part.region] = shard
    return out


def gather_regions(layout: Layout, shards: Sequence[Mapping[str, torch.Tensor]],
                   num_tokens: int) -> dict[str, torch.Tensor]:
    """Whole region tensors from the shards of every rank of one TP engine (rank 0 first).

    Raises :class:`LayoutError` when two ranks' replicas of a unit differ: replicas are
    copies of one state, and decoding from either must give the same tokens.
    """
    tp = len(shards)
    problems: list[LayoutProblem] = []
    out: dict[str, torch.Tensor] = {}
    filled: dict[str, set[tuple[int, int]]] = {}
    for whole in region_tensors(rank_layout(layout, num_tokens)):
        first = shards[0][whole.region]
        out[whole.region] = torch.zeros(whole.shape, dtype=first.dtype, device=first.device)
        filled[whole.region] = set()
    for rank, held in enumerate(shards):
        wholes = {r.region: r for r in region_tensors(rank_layout(layout, num_tokens))}
        for part in region_tensors(rank_layout(layout, num_tokens, tp=tp, rank=rank)):
            target, source = out[part.region], held[part.region]
            dim, spans = _spans(wholes[part.region], part, tp, rank)
            for at_whole, at_shard, length in spans:
                into, came = target.narrow(dim, at_whole, length), source.narrow(dim, at_shard, length)
                if (at_whole, length) in filled[part.region]:
                    if not torch.equal(into, came):
                        problems.append(LayoutProblem(
                            f"TP rank {rank} holds a replica of elements [{at_whole}, {at_whole + length}) that "
                            "differs from an earlier rank's", path=f"shards[{rank}].{part.region}"))
                    continue
                into.copy_(came)
                filled[part.region].add((at_whole, length))
    if problems:
        raise LayoutError(problems)
    return out
