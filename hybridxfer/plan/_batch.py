"""Jobs that bind together: one set of numpy operations per batch, not per layer.

Jobs of one source rank that read the same KV-group pair with the same token slicing
(window, spread) take their block offsets from the same chunk arrays, so their
per-job constants (bases, page strides, token strides) are stacked into columns at
compile time and binding a request is a handful of broadcasts per batch. Row order is
job-major then run-major then chunk-major, as a per-job loop would emit, so coalescing
merges the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.layout import TOKEN_AXIS, PlacedPiece
from hybridxfer.plan._job import Job
from hybridxfer.plan._runs import Runs

__all__ = ["Batch", "RunTable", "make_batches"]

Int64Array = npt.NDArray[np.int64]


def _col(values: Sequence[int]) -> Int64Array:
    return np.asarray(values, dtype=np.int64)


@attrs.frozen(eq=False)
class RunTable:
    """Runs of several jobs stacked: ``job`` says which job (within the batch) each run is of."""

    job: Int64Array
    src: Int64Array
    dst: Int64Array
    length: Int64Array

    @classmethod
    def stack(cls, runs: Sequence[Runs]) -> RunTable:
        job = np.repeat(np.arange(len(runs), dtype=np.int64), [len(r) for r in runs])
        if not runs:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty)
        return cls(job, np.concatenate([r.src for r in runs]), np.concatenate([r.dst for r in runs]),
                   np.concatenate([r.length for r in runs]))


@attrs.frozen(eq=False)
class Batch:
    """Jobs bound with one set of chunk (or state block) offsets."""

    src_rank: int
    src_group: str
    dst_group: str
    has_tokens: bool
    window: int | None
    spread: tuple[int, int]
    jobs: tuple[Job, ...]
    runs: RunTable
    #: per job: regions, and the affine map block/kernel-sub-block/token -> byte offset
    src_region: Int64Array
    dst_region: Int64Array
    src_base: Int64Array
    src_page: Int64Array
    src_kernel: Int64Array
    src_token: Int64Array
    dst_base: Int64Array
    dst_page: Int64Array
    dst_kernel: Int64Array
    dst_token: Int64Array
    kind: Int64Array
    _tails: dict[int, RunTable] = attrs.field(factory=dict, repr=False)

    def tail(self, tokens: int, runs_for: Callable[[Job, int], Runs]) -> RunTable:
        """Stacked runs for a last chunk of ``tokens`` tokens (cached per size)."""
        if tokens not in self._tails:
            self._tails[tokens] = RunTable.stack([runs_for(job, tokens) for job in self.jobs])
        return self._tails[tokens]


def _token_stride(pp: PlacedPiece) -> int:
    piece = pp.piece
    return int(piece.strides()[piece.axes.index(TOKEN_AXIS)]) if piece.has_tokens else 0


def make_batches(jobs: Sequence[Job], kinds: Sequence[str]) -> tuple[Batch, ...]:
    """Group jobs (already in emission order) into batches, keeping first-seen order."""
    groups: dict[tuple[int, str, str, bool, int | None, tuple[int, int]], list[Job]] = {}
    for job in jobs:
        key = (job.src_rank, job.src_group, job.dst_group, job.has_tokens, job.window, job.spread)
        groups.setdefault(key, []).append(job)
    out = []
    for (rank, sg, dg, tokens, window, spread), members in groups.items():
        def col(get: Callable[[Job], int], members: list[Job] = members) -> Int64Array:
            return _col([get(j) for j in members])

        out.append(Batch(
            src_rank=rank, src_group=sg, dst_group=dg, has_tokens=tokens, window=window, spread=spread,
            jobs=tuple(members), runs=RunTable.stack([j.runs for j in members]),
            src_region=col(lambda j: j.src_region), dst_region=col(lambda j: j.dst_region),
            src_base=col(lambda j: j.src.base), src_page=col(lambda j: j.src.page_stride),
            src_kernel=col(lambda j: j.src.piece.nbytes), src_token=col(lambda j: _token_stride(j.src)),
            dst_base=col(lambda j: j.dst.base), dst_page=col(lambda j: j.dst.page_stride),
            dst_kernel=col(lambda j: j.dst.piece.nbytes), dst_token=col(lambda j: _token_stride(j.dst)),
            kind=col(lambda j: kinds.index(j.kind)),
        ))
    return tuple(out)
