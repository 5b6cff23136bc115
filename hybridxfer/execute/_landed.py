"""Which destination bytes of a request are known to have landed, read by read.

Why a record and not a byte count: after a failure the engine may keep the leading tokens
that arrived and recompute only the rest, but only if it knows *which* bytes arrived. A
transport reports nothing about a read that failed (some of its bytes may have been
written, others not), so the only bytes known to be in place are those of reads that
returned. :class:`LandedTransport` records exactly those, as destination byte ranges per
region name; :meth:`LandedBytes.missing` subtracts them from what a plan writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError
from hybridxfer.plan import TransferPlan
from hybridxfer.transport import DelegatingTransport, PeerHandle, Transport

__all__ = ["LandedBytes", "LandedTransport"]

Int64Array = npt.NDArray[np.int64]
#: Per destination region name: sorted, disjoint ``(start, end)`` byte ranges.
Ranges = dict[str, list[tuple[int, int]]]


class LandedBytes:
    """Destination ranges of reads that returned, per region name (registration order
    given by ``region_names``, which the transport's ``dst_region`` column indexes)."""

    def __init__(self, region_names: Sequence[str]) -> None:
        self._names = tuple(region_names)
        self._rows: list[tuple[Int64Array, Int64Array, Int64Array]] = []

    def add(self, batch: Descriptors) -> None:
        self._rows.append((batch.dst_region.copy(), batch.dst_offset.copy(), batch.length.copy()))

    @property
    def bytes(self) -> int:
        return sum(int(length.sum()) for _, _, length in self._rows)

    def ranges(self) -> Ranges:
        """What landed, merged."""
        if not self._rows:
            return {}
        region = np.concatenate([r for r, _, _ in self._rows])
        offset = np.concatenate([o for _, o, _ in self._rows])
        length = np.concatenate([n for _, _, n in self._rows])
        return _merge({self._names[int(i)]: (offset[region == i], length[region == i]) for i in np.unique(region)})

    def missing(self, plan: TransferPlan) -> Ranges:
        """Bytes ``plan`` writes that are not known to have landed, per destination region."""
        d = plan.descriptors
        wanted = _merge({name: (d.dst_offset[d.dst_region == i], d.length[d.dst_region == i])
                         for i, name in enumerate(plan.dst_region_names)})
        have = self.ranges()
        return {name: left for name, runs in wanted.items() if (left := _subtract(runs, have.get(name, [])))}


class LandedTransport(DelegatingTransport):
    """Forwards everything; each read that returns is recorded in ``landed``.

    With ``step_bytes`` a read is cut into pieces of at most that many bytes — rows longer
    than that are cut too (a row is a plain copy, so its parts move the same bytes) — so a
    failure part-way still leaves every piece before it recorded. Cancellation or a failed
    read records nothing of that piece.
    """

    def __init__(self, inner: Transport, landed: LandedBytes, *, step_bytes: int | None = None) -> None:
        super().__init__(inner)
        if step_bytes is not None and step_bytes < 1:
            raise InvalidArgumentError(f"step_bytes must be >= 1, got {step_bytes}")
        self._landed = landed
        self._step = step_bytes

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        if not self._step:
            await self.inner.read(peer, batch)
            self._landed.add(batch)
            return
        rows = _cut(batch, self._step)
        parts = math.ceil(rows.total_bytes / self._step)
        limit = self.inner.capabilities.max_descriptors_per_read
        for part in rows.split(parts=max(1, parts)):
            for piece in part.split(limit):  # cutting added rows: stay within the transport's limit
                await self.inner.read(peer, piece)
                self._landed.add(piece)


def _cut(batch: Descriptors, step: int) -> Descriptors:
    """``batch`` with every row longer than ``step`` bytes cut into rows of at most ``step``."""
    pieces = np.maximum(1, -(-batch.length // step))
    if int(pieces.max(initial=1)) == 1:
        return batch
    row = np.repeat(np.arange(len(batch), dtype=np.int64), pieces)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    within = (np.arange(row.size, dtype=np.int64) - first) * step
    length = np.minimum(step, batch.length[row] - within)
    return Descriptors(batch.src_region[row], batch.src_offset[row] + within, batch.dst_region[row],
                       batch.dst_offset[row] + within, length, src_rank=batch.src_rank[row])


def _merge(by_name: dict[str, tuple[Int64Array, Int64Array]]) -> Ranges:
    out: Ranges = {}
    for name, (offset, length) in by_name.items():
        keep = length > 0
        order = np.argsort(offset[keep], kind="stable")
        starts, ends = offset[keep][order], (offset[keep] + length[keep])[order]
        runs: list[tuple[int, int]] = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if runs and s <= runs[-1][1]:
                runs[-1] = (runs[-1][0], max(runs[-1][1], e))
            else:
                runs.append((s, e))
        if runs:
            out[name] = runs
    return out


def _subtract(runs: list[tuple[int, int]], have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``runs`` minus ``have`` (both sorted and disjoint)."""
    out: list[tuple[int, int]] = []
    j = 0
    for start, end in runs:
        cur = start
        while j < len(have) and have[j][1] <= cur:
            j += 1
        k = j
        while k < len(have) and have[k][0] < end:
            if have[k][0] > cur:
                out.append((cur, have[k][0]))
            cur = max(cur, have[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out
