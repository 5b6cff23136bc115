"""Turn a box of elements (a slice per axis) into contiguous byte runs on both sides.

Both sides hold the same logical axes, possibly in different memory orders and with
different extents (a TP slice, a kernel block of other size). We walk the axes in the
destination's memory order, absorb inner axes while they are contiguous on *both* sides
(CuTe-style coalescing), and enumerate the remaining outer axes with numpy broadcasting.
A DS conv slice therefore becomes one run, an SD slice one run per conv row, a head slice
of a packed K‖V page one run — all without a Python loop over elements.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors

__all__ = ["AxisSpan", "Runs", "box_runs", "concat_runs"]

Int64Array = npt.NDArray[np.int64]


@attrs.frozen
class AxisSpan:
    """One axis of a box: ``count`` elements from ``src_start`` (source) and ``dst_start``."""

    count: int
    src_start: int
    dst_start: int


@attrs.frozen(eq=False)
class Runs:
    """Byte runs relative to a piece's block start: parallel ``int64`` columns."""

    src: Int64Array
    dst: Int64Array
    length: Int64Array

    def __len__(self) -> int:
        return int(self.length.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.length.sum())


def box_runs(
    spans: Mapping[str, AxisSpan],
    src_strides: Mapping[str, int],
    dst_strides: Mapping[str, int],
    dst_order: tuple[str, ...],
    itemsize: int,
) -> Runs:
    """Runs covering ``spans`` (every axis named), ordered by destination address."""
    base_src = sum(s.src_start * src_strides[a] for a, s in spans.items())
    base_dst = sum(s.dst_start * dst_strides[a] for a, s in spans.items())
    if any(s.count == 0 for s in spans.values()):
        empty = np.zeros(0, dtype=np.int64)
        return Runs(empty, empty, empty)
    outer = [a for a in dst_order if spans[a].count > 1]
    run = itemsize
    while outer and src_strides[outer[-1]] == run and dst_strides[outer[-1]] == run:
        run *= spans[outer.pop()].count
    src = np.array([base_src], dtype=np.int64)
    dst = np.array([base_dst], dtype=np.int64)
    for axis in outer:
        idx = np.arange(spans[axis].count, dtype=np.int64)
        src = (src[:, None] + idx[None, :] * src_strides[axis]).ravel()
        dst = (dst[:, None] + idx[None, :] * dst_strides[axis]).ravel()
    return Runs(src, dst, np.full(src.shape[0], run, dtype=np.int64))


def concat_runs(parts: list[Runs], coalesce: bool) -> Runs:
    """Concatenate, then (optionally) merge rows contiguous on both sides, in destination order."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Runs(empty, empty, empty)
    src = np.concatenate([p.src for p in parts])
    dst = np.concatenate([p.dst for p in parts])
    length = np.concatenate([p.length for p in parts])
    if coalesce and src.shape[0] > 1:
        order = np.argsort(dst, kind="stable")
        zero = np.zeros_like(src)
        merged = Descriptors(zero, src[order], zero, dst[order], length[order]).coalesce()
        src, dst, length = merged.src_offset, merged.dst_offset, merged.length
    return Runs(src, dst, length)
