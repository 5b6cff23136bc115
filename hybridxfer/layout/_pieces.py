"""Per-rank tensor geometry: a *piece* is one physical array of one layer's cache.

A piece names its axes in memory order (row-major), their local extents, and which axis
is TP-sharded (made of :class:`Segment` s). The planner needs nothing else: byte strides,
the slice a rank holds and the runs to copy all follow from this.
"""

from __future__ import annotations

import math

import attrs

from hybridxfer.layout._sharding import Segment, owned_units

__all__ = ["Piece", "TOKEN_AXIS"]

#: The axis along which attention caches grow with the sequence; split into kernel blocks.
TOKEN_AXIS = "token"


@attrs.frozen
class Piece:
    """One physical array of a layer's cache on one rank, for one (kernel) block.

    ``tensor`` names the logical tensor the piece belongs to (``kv``, ``latent``, ``conv``,
    ``ssm``); ``starts`` places the piece inside it — K and V stored in separate regions are
    two pieces of tensor ``kv`` with ``kv`` starts 0 and 1.
    """

    name: str
    tensor: str
    axes: tuple[str, ...]
    extents: tuple[int, ...]
    starts: tuple[int, ...]
    dtype: str
    itemsize: int
    sharded_axis: str | None = None
    segments: tuple[Segment, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of the piece (per kernel block for token pieces, per sequence otherwise)."""
        return math.prod(self.extents) * self.itemsize

    @property
    def has_tokens(self) -> bool:
        return TOKEN_AXIS in self.axes

    def strides(self) -> tuple[int, ...]:
        """Byte strides of each axis, row-major."""
        out = [0] * len(self.axes)
        acc = self.itemsize
        for i in range(len(self.axes) - 1, -1, -1):
            out[i] = acc
            acc *= self.extents[i]
        return tuple(out)

    def extent(self, axis: str) -> int:
        return self.extents[self.axes.index(axis)]

    def start(self, axis: str) -> int:
        return self.starts[self.axes.index(axis)]

    def local_units(self, tp: int, rank: int) -> tuple[tuple[Segment, range, int], ...]:
        """For each segment: the global units this rank holds and where they begin locally.

        The third element is the element offset of the segment along the sharded axis.
        """
        out: list[tuple[Segment, range, int]] = []
        pos = 0
        for seg in self.segments:
            units = owned_units(seg, tp, rank)
            out.append((seg, units, pos))
            pos += len(units) * seg.unit_extent
        return tuple(out)
