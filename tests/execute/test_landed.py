"""``LandedBytes`` / ``LandedTransport``: what a failed request can still trust, checked
against a byte-per-byte model (a boolean mask per region) over random rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridxfer.descriptors import Descriptors
from hybridxfer.execute import LandedBytes
from hybridxfer.execute._landed import _cut
from hybridxfer.testing._cross_process import make_plan

SIZE = 512

rows = st.lists(st.tuples(st.integers(0, 1), st.integers(0, SIZE - 1), st.integers(0, 64)), max_size=12)


def _descriptors(spec: list[tuple[int, int, int]]) -> Descriptors:
    region = np.array([r for r, _, _ in spec], dtype=np.int64)
    offset = np.array([o for _, o, _ in spec], dtype=np.int64)
    length = np.array([min(n, SIZE - o) for _, o, n in spec], dtype=np.int64)
    return Descriptors(region, offset, region, offset, length)


def _mask(spec: list[tuple[int, int, int]]) -> np.ndarray:
    out = np.zeros((2, SIZE), dtype=bool)
    for r, o, n in spec:
        out[r, o : min(SIZE, o + n)] = True
    return out


@settings(max_examples=300, deadline=None)
@given(planned=st.lists(st.tuples(st.integers(0, 1), st.integers(0, SIZE - 1), st.integers(0, 64)),
                        min_size=1, max_size=12),
       landed=st.lists(rows, max_size=4))
def test_missing_is_planned_minus_landed(planned: list[tuple[int, int, int]],
                                         landed: list[list[tuple[int, int, int]]]) -> None:
    names = ("a", "b")
    record = LandedBytes(names)
    for part in landed:
        record.add(_descriptors(part))
    d = _descriptors(planned)
    plan = make_plan({0: (d.src_region, d.src_offset, d.dst_region, d.dst_offset, d.length)},
                     src_region_names=names, dst_region_names=names)
    want = _mask(planned) & ~_mask([row for part in landed for row in part])
    got = np.zeros((2, SIZE), dtype=bool)
    for name, runs in record.missing(plan).items():
        for start, end in runs:
            assert start < end
            got[names.index(name), start:end] = True
    assert np.array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(spec=rows, step=st.integers(1, 40))
def test_cut_moves_the_same_bytes_in_rows_of_at_most_step(spec: list[tuple[int, int, int]], step: int) -> None:
    d = _descriptors(spec)
    cut = _cut(d, step)
    assert cut.total_bytes == d.total_bytes
    assert int(cut.length.max(initial=0)) <= step
    src = np.zeros((2, SIZE), dtype=np.int64)
    dst = np.zeros((2, SIZE), dtype=np.int64)
    for table, rows_ in ((src, d), (dst, cut)):
        for r, o, n in zip(rows_.dst_region.tolist(), rows_.dst_offset.tolist(), rows_.length.tolist(), strict=True):
            table[r, o : o + n] += 1
    assert np.array_equal(src, dst)
    assert np.array_equal(cut.src_offset - cut.dst_offset, np.zeros(len(cut), dtype=np.int64))


def test_step_must_be_positive() -> None:
    from hybridxfer.execute import LandedTransport
    from hybridxfer.transport.loopback import LoopbackTransport

    with pytest.raises(ValueError):
        LandedTransport(LoopbackTransport(name="x"), LandedBytes(()), step_bytes=0)
