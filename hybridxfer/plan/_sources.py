"""Which source (P) rank provides which units of a destination (D) rank's shard.

The rule, for any kind: D rank ``d`` needs certain global units (heads, groups, channels).
Each unit is held by one or more P ranks (several when replicated). We take it from
D's *natural* P ranks when one holds it — ``d * P // D`` when D_TP >= P_TP, else the ``q``
ranks ``d*q .. d*q+q-1`` — preferring the lowest, which reproduces vLLM's choices (FA
sources deduplicated by head, SSM fan-in from every candidate) and extends them to
replicated B/C groups, Mamba1, GDN and MLA without special cases.
"""

from __future__ import annotations

import attrs

from hybridxfer.layout import Piece

__all__ = ["Interval", "natural_sources", "shard_intervals"]


@attrs.frozen
class Interval:
    """``count`` elements along the sharded axis from ``src_start`` (on P) to ``dst_start`` (on D)."""

    src_start: int
    dst_start: int
    count: int


def natural_sources(src_tp: int, dst_tp: int, dst_rank: int) -> tuple[int, ...]:
    """The P ranks D rank ``dst_rank`` reads from first (and notifies)."""
    if dst_tp >= src_tp:
        return (dst_rank * src_tp // dst_tp,)
    q = src_tp // dst_tp
    return tuple(range(dst_rank * q, dst_rank * q + q))


def shard_intervals(
    src_piece: Piece, src_tp: int, dst_piece: Piece, dst_tp: int, dst_rank: int,
    *, merge_segments: bool = True,
) -> dict[int, list[Interval]]:
    """Per source rank: element intervals of the sharded axis D takes from it.

    Consecutive units merge into one interval; across segment boundaries (x|B|C) only
    when ``merge_segments`` (adjacent sub-projections under equal TP). The caller handles
    unsharded (replicated) pieces: they come whole from ``natural_sources(...)[0]``.
    """
    natural = natural_sources(src_tp, dst_tp, dst_rank)
    preference = list(natural) + [p for p in range(src_tp) if p not in natural]
    src_layout = [src_piece.local_units(src_tp, p) for p in range(src_tp)]
    picks: list[tuple[int, int, int, int, bool]] = []  # dst_start, src_start, count, rank, segment start
    for si, (seg, units, dst_base) in enumerate(dst_piece.local_units(dst_tp, dst_rank)):
        todo = [(units.start, units.stop)]
        found: list[tuple[int, int, int]] = []  # (first unit, last unit + 1, source rank)
        for p in preference:
            _, held, _ = src_layout[p][si]
            rest = []
            for lo, hi in todo:
                a, b = max(lo, held.start), min(hi, held.stop)
                if a < b:
                    found.append((a, b, p))
                    if lo < a:
                        rest.append((lo, a))
                    if b < hi:
                        rest.append((b, hi))
                else:
                    rest.append((lo, hi))
            todo = rest
        for a, b, p in sorted(found):
            _, held, p_base = src_layout[p][si]
            picks.append((dst_base + (a - units.start) * seg.unit_extent,
                          p_base + (a - held.start) * seg.unit_extent,
                          (b - a) * seg.unit_extent, p, a == units.start))
    out: dict[int, list[Interval]] = {}
    for dst_start, src_start, count, p, seg_start in picks:
        ivs = out.setdefault(p, [])
        last = ivs[-1] if ivs else None
        if (last is not None and last.src_start + last.count == src_start
                and last.dst_start + last.count == dst_start and (merge_segments or not seg_start)):
            ivs[-1] = Interval(last.src_start, last.dst_start, last.count + count)
        else:
            ivs.append(Interval(src_start, dst_start, count))
    return out
