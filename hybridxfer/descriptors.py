"""Descriptors: the one shape byte ranges take from the planner to the wire.

A :class:`Descriptors` value is six parallel ``int64`` columns — source rank, source
region, source offset, destination region, destination offset, length — one row per
contiguous range to copy. ``bind`` produces it (coalesced once), the executor splits it
once (per source rank, at the transport's descriptor limit) and each transport receives
its part as it is. Region columns index a region list the holder knows: the plan's region
names in a :class:`~hybridxfer.plan.TransferPlan`, the peer's and our registration order
in a transport read.

Why a module of its own: the planner (sans-IO) and every transport, in-tree or plugin,
use it, so it depends on nothing but numpy, attrs and the error tree. Why columns: a plan
can carry 10^5..10^6 rows, so every check, merge and split is a numpy expression.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import HybridXferError, TransferError

__all__ = ["Descriptors", "bounds_problem", "check_bounds", "merge_ranges"]

Int64Array = npt.NDArray[np.int64]


def _zeros_like_length(self: Descriptors) -> Int64Array:
    return np.zeros(self.length.shape[0], dtype=np.int64)


@attrs.frozen(eq=False)
class Descriptors:
    """Rows of (src rank, src region, src offset, dst region, dst offset, length).

    The five range columns come first so ``Descriptors(src_region, src_offset,
    dst_region, dst_offset, length)`` describes a read from one peer; ``src_rank``
    (keyword, all zeros by default) says which source rank each row reads from when
    several are held together, as in a plan.
    """

    src_region: Int64Array
    src_offset: Int64Array
    dst_region: Int64Array
    dst_offset: Int64Array
    length: Int64Array
    src_rank: Int64Array = attrs.field(
        kw_only=True, default=attrs.Factory(_zeros_like_length, takes_self=True))

    @classmethod
    def empty(cls) -> Descriptors:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, z, src_rank=z)

    @classmethod
    def concat(cls, parts: Sequence[Descriptors]) -> Descriptors:
        """The rows of every part, in order."""
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _RANGE_FIELDS),
                   src_rank=np.concatenate([p.src_rank for p in parts]))

    def __len__(self) -> int:
        return int(self.length.shape[0])

    @property
    def total_bytes(self) -> int:
        return int(self.length.sum()) if len(self) else 0

    @property
    def source_ranks(self) -> tuple[int, ...]:
        """The distinct source ranks, ascending."""
        return tuple(int(r) for r in np.unique(self.src_rank))

    @property
    def source_rank(self) -> int:
        """The one source rank every row reads from (a part returned by :meth:`by_source`)."""
        ranks = self.source_ranks
        if len(ranks) != 1:
            raise HybridXferError(f"descriptors read from {len(ranks)} source ranks, not one: {list(ranks)}")
        return ranks[0]

    def rows(self) -> list[tuple[int, int, int, int, int]]:
        """``(src_region, src_offset, dst_region, dst_offset, length)`` per row, as Python ints.

        For JSON and debugging (the rank is the key rows are listed under); not for the
        hot path.
        """
        cols = [c.tolist() for c in (self.src_region, self.src_offset, self.dst_region, self.dst_offset,
                                     self.length)]
        return list(zip(*cols, strict=True))

    def slice(self, start: int, stop: int) -> Descriptors:
        """Rows ``[start, stop)``, sharing memory with these descriptors."""
        return Descriptors(*(getattr(self, f)[start:stop] for f in _RANGE_FIELDS),
                           src_rank=self.src_rank[start:stop])

    def take(self, rows: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Descriptors:
        """The rows selected by an index or mask array (a copy)."""
        return Descriptors(*(getattr(self, f)[rows] for f in _RANGE_FIELDS), src_rank=self.src_rank[rows])

    def coalesce(self) -> Descriptors:
        """Merge each row into the previous one when it continues it on *both* sides.

        Order is kept (callers order rows by destination first when they want the most
        merges); rows of different source ranks or regions never merge; empty rows are
        dropped. The result moves exactly the same bytes to the same places.
        """
        keep = self.length > 0
        d = self if keep.all() else self.take(keep)
        n = len(d)
        if n <= 1:
            return d
        ln = d.length
        cont = ((d.src_offset[:-1] + ln[:-1] == d.src_offset[1:]) & (d.dst_offset[:-1] + ln[:-1] == d.dst_offset[1:])
                & (d.src_region[:-1] == d.src_region[1:]) & (d.dst_region[:-1] == d.dst_region[1:])
                & (d.src_rank[:-1] == d.src_rank[1:]))
        starts = np.flatnonzero(np.concatenate(([True], ~cont)))
        if starts.shape[0] == n:
            return d
        merged = d.take(starts)
        return attrs.evolve(merged, length=np.add.reduceat(ln, starts).astype(np.int64))

    def by_source(self) -> dict[int, Descriptors]:
        """Per source rank (ascending), its rows in order; views when rows are grouped by rank."""
        if not len(self):
            return {}
        rank = self.src_rank
        change = np.flatnonzero(rank[1:] != rank[:-1]) + 1
        if not change.size or bool(np.all(np.diff(rank) >= 0)):
            bounds = [0, *change.tolist(), len(self)]
            return {int(rank[a]): self.slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)}
        return {int(r): self.take(rank == r) for r in np.unique(rank)}

    def split(self, max_rows: int | None = None, *, parts: int = 1) -> tuple[Descriptors, ...]:
        """At least ``parts`` pieces of about equal bytes, none longer than ``max_rows`` rows.

        Pieces are consecutive slices (no copy) in order; their concatenation is
        ``self``. Rows are never cut. ``max_rows`` of ``None`` means no limit.
        """
        rows = len(self)
        limit = max(1, max_rows) if max_rows is not None else max(rows, 1)
        if rows <= limit and (parts <= 1 or rows <= 1):
            return (self,)
        cuts = [0, rows]
        if parts > 1:
            # cut where the cumulative byte count crosses each 1/parts mark
            cum = np.cumsum(self.length)
            marks = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="right")
            cuts = sorted({0, rows, *(int(m) for m in marks)})
        out: list[Descriptors] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            out.extend(self.slice(s, min(b, s + limit)) for s in range(a, b, limit))
        return tuple(out)


_RANGE_FIELDS = ("src_region", "src_offset", "dst_region", "dst_offset", "length")


def bounds_problem(region: Int64Array, offset: Int64Array, length: Int64Array,
                   region_lengths: Sequence[int] | Int64Array, *, side: str = "") -> str | None:
    """Why some row does not lie inside its region, or ``None`` when every row does.

    ``region_lengths[i]`` is the size of region ``i``. Never forms ``offset + length``,
    which hostile values could overflow: ``offset <= size - length`` is only evaluated
    once ``0 <= length <= size`` is known. ``side`` ("source", "destination") names the
    side in the message.
    """
    if not len(region) and not len(offset) and not len(length):
        return None
    if not (len(region) == len(offset) == len(length)):
        return "descriptor columns differ in length"
    where = f"{side} region" if side else "region"
    sizes_all = np.asarray(region_lengths, dtype=np.int64)
    n = sizes_all.shape[0]
    bad = (region < 0) | (region >= n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"row {i}: {where} index {int(region[i])} not registered ({n} regions)"
    bad = (offset < 0) | (length < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"row {i}: negative offset or length ({int(offset[i])}, {int(length[i])})"
    sizes = sizes_all[region]
    bad = (length > sizes) | (offset > sizes - np.minimum(length, sizes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return (f"row {i}: range [{int(offset[i])}, +{int(length[i])}) outside {where} "
                f"{int(region[i])} of {int(sizes[i])} bytes")
    return None


def check_bounds(descriptors: Descriptors, *, src_lengths: Sequence[int] | Int64Array | None = None,
                 dst_lengths: Sequence[int] | Int64Array | None = None, operation: str = "read") -> None:
    """Refuse descriptors that leave the regions they name, before any byte moves.

    Checks the source columns against ``src_lengths`` (the peer's region sizes) and the
    destination columns against ``dst_lengths`` (ours), each when given. Raises
    :class:`~hybridxfer.errors.TransferError` naming the first bad row: every transport
    calls this on what it is asked to read (and, when it serves, on what it is asked to
    send), so a wrong plan or a hostile peer is refused the same way everywhere.
    ``operation`` ("read", "write") names what was refused in the message.
    """
    d = descriptors
    problem = None
    if src_lengths is not None:
        problem = bounds_problem(d.src_region, d.src_offset, d.length, src_lengths, side="source")
    if problem is None and dst_lengths is not None:
        problem = bounds_problem(d.dst_region, d.dst_offset, d.length, dst_lengths, side="destination")
    if problem is not None:
        raise TransferError(f"{operation} refused, no byte moved: {problem}")


def merge_ranges(region: Int64Array, offset: Int64Array,
                 length: Int64Array) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Ranges of *one* side, with each merged into the previous one it continues; empty dropped.

    What a byte stream can send (or receive) as one buffer: the order of bytes is kept,
    so the two ends of a stream may merge their own side independently and still agree
    on which byte goes where. (:meth:`Descriptors.coalesce` merges on both sides.)
    """
    keep = length > 0
    if not keep.all():
        region, offset, length = region[keep], offset[keep], length[keep]
    if len(length) <= 1:
        return region, offset, length
    starts = np.ones(len(length), dtype=bool)
    starts[1:] = (region[1:] != region[:-1]) | (offset[1:] != offset[:-1] + length[:-1])
    idx = np.flatnonzero(starts)
    if len(idx) == len(length):
        return region, offset, length
    return region[idx], offset[idx], np.add.reduceat(length, idx).astype(np.int64)

