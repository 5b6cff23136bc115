"""Which global units (heads, groups, channels) a TP rank holds.

Engines shard a dimension made of ``units`` (KV heads, Mamba heads, B/C groups, channels)
contiguously across TP ranks. When there are fewer units than ranks and the engine allows
it (KV heads, Mamba2 B/C groups), each rank holds one unit and ranks share it: rank ``r``
of ``tp`` holds unit ``r * units // tp``. Everything else must divide evenly.
"""

from __future__ import annotations

import attrs

__all__ = ["Segment", "ShardingError", "owned_units"]


class ShardingError(ValueError):
    """``units`` cannot be spread over ``tp`` ranks under the engine's rules."""


@attrs.frozen
class Segment:
    """A run of units along a sharded axis, sharded independently of its neighbours.

    A Mamba2 conv state's channel axis is three segments, ``x`` (heads × head_dim),
    ``B`` and ``C`` (groups × d_state): each rank holds its slice of every segment, so a
    rank's channels are ``[x_r | B_r | C_r]`` — not one contiguous slice of the whole.
    """

    name: str
    units: int
    unit_extent: int
    replicable: bool = False


def owned_units(segment: Segment, tp: int, rank: int) -> range:
    """Global unit indices that ``rank`` of ``tp`` holds, in local order."""
    if not 0 <= rank < tp:
        raise ShardingError(f"rank {rank} is outside TP size {tp}")
    n = segment.units
    if n % tp == 0:
        per = n // tp
        return range(rank * per, (rank + 1) * per)
    if segment.replicable and tp % n == 0:
        unit = rank * n // tp
        return range(unit, unit + 1)
    rule = " (or TP a multiple of it)" if segment.replicable else ""
    raise ShardingError(
        f"{segment.name}: {n} units cannot be split over TP={tp}; units must be divisible by TP{rule}"
    )
