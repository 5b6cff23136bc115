"""``hybridxfer.descriptors``: coalesce, split and the bounds check, against plain references.

Why a byte-level reference: the one descriptor type is coalesced once by the planner and
split once by the executor, and every transport trusts both. So ``coalesce`` must move
exactly the bytes the rows move (checked by running both row sets as copies between
random buffers), ``split`` must give back exactly the rows in order, and the bounds check
must agree with a per-row Python check on hostile values, int64 extremes included.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridxfer.descriptors import Descriptors, bounds_problem, check_bounds, merge_ranges
from hybridxfer.errors import TransferError

REGION = 256
Row = tuple[int, int, int, int, int, int]


def _descriptors(rows: list[Row]) -> Descriptors:
    cols = np.array(rows, dtype=np.int64).reshape(-1, 6).T
    return Descriptors(*(np.ascontiguousarray(c) for c in cols[1:]), src_rank=np.ascontiguousarray(cols[0]))


def _copy(d: Descriptors, src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The reference executor: one slice copy per row. ``src`` is [rank, region, byte]."""
    out = dst.copy()
    for r, sr, so, dr, do, n in zip(d.src_rank.tolist(), d.src_region.tolist(), d.src_offset.tolist(),
                                     d.dst_region.tolist(), d.dst_offset.tolist(), d.length.tolist(), strict=True):
        out[dr, do:do + n] = src[r, sr, so:so + n]
    return out


@st.composite
def runs(draw: st.DrawFn) -> list[Row]:
    """Rows inside 2 ranks x 2 regions of REGION bytes, often continuing the previous row."""
    rows: list[Row] = []
    for _ in range(draw(st.integers(0, 40))):
        continues = draw(st.booleans())
        if rows and continues:
            r, sr, so, dr, do, n = rows[-1]
            same_rank = draw(st.booleans())
            rank = r if same_rank else 1 - r
            m = draw(st.integers(0, 16))
            if so + n + m <= REGION and do + n + m <= REGION:
                rows.append((rank, sr, so + n, dr, do + n, m))
                continue
        n = draw(st.integers(0, 32))
        rows.append((draw(st.integers(0, 1)), draw(st.integers(0, 1)), draw(st.integers(0, REGION - n)),
                     draw(st.integers(0, 1)), draw(st.integers(0, REGION - n)), n))
    return rows


@settings(max_examples=300, deadline=None)
@given(runs(), st.integers(0, 2**32 - 1))
def test_coalesce_moves_exactly_the_same_bytes(rows: list[Row], seed: int) -> None:
    d = _descriptors(rows)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (2, 2, REGION), dtype=np.uint8)
    dst = rng.integers(0, 256, (2, REGION), dtype=np.uint8)
    merged = d.coalesce()
    assert np.array_equal(_copy(merged, src, dst), _copy(d, src, dst))
    assert merged.total_bytes == d.total_bytes and len(merged) <= len(d)
    assert (merged.length > 0).all()
    # nothing left to merge: no row continues the previous one on both sides, same rank and regions
    again = merged.coalesce()
    assert len(again) == len(merged)
    for name in ("src_rank", "src_region", "src_offset", "dst_region", "dst_offset", "length"):
        assert np.array_equal(getattr(again, name), getattr(merged, name))


def test_coalesce_merges_only_across_both_sides_and_one_rank() -> None:
    d = _descriptors([(0, 0, 0, 0, 0, 8), (0, 0, 8, 0, 8, 8),   # continue on both sides: merge
                      (0, 0, 16, 0, 32, 8),                      # source continues, destination jumps
                      (1, 0, 24, 0, 40, 8),                      # other rank: never merges
                      (1, 1, 32, 0, 48, 8)])                     # other source region
    merged = d.coalesce()
    assert merged.length.tolist() == [16, 8, 8, 8]
    assert merged.src_rank.tolist() == [0, 0, 1, 1]


@settings(max_examples=200, deadline=None)
@given(runs(), st.integers(1, 7), st.integers(1, 5))
def test_split_gives_back_every_row_in_order(rows: list[Row], max_rows: int, parts: int) -> None:
    d = _descriptors(sorted(rows))
    pieces = d.split(max_rows, parts=parts)
    assert all(len(p) <= max_rows for p in pieces)
    back = Descriptors.concat(list(pieces))
    for name in ("src_rank", "src_region", "src_offset", "dst_region", "dst_offset", "length"):
        assert getattr(back, name).tolist() == getattr(d, name).tolist()
    by = d.by_source()
    assert list(by) == sorted(set(d.src_rank.tolist()))
    assert all(part.source_rank == rank for rank, part in by.items())
    assert sum(len(p) for p in by.values()) == len(d)


def test_split_balances_bytes_for_parallel_parts() -> None:
    d = _descriptors([(0, 0, 64 * i, 0, 64 * i, 64) for i in range(8)])
    assert [p.total_bytes for p in d.split(parts=4)] == [128, 128, 128, 128]
    assert [len(p) for p in d.split(3)] == [3, 3, 2]
    assert d.split() == (d,)


def _reference_problem(region: list[int], offset: list[int], length: list[int], sizes: list[int]) -> bool:
    return any(not 0 <= r < len(sizes) or o < 0 or n < 0 or o + n > sizes[r]
               for r, o, n in zip(region, offset, length, strict=True))


INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(-2, 3), INT64), st.one_of(st.integers(-4, 300), INT64),
                          st.one_of(st.integers(-4, 300), INT64)), max_size=8),
       st.lists(st.integers(0, 300), min_size=1, max_size=3))
def test_bounds_problem_agrees_with_a_per_row_check(rows: list[tuple[int, int, int]], sizes: list[int]) -> None:
    region, offset, length = (np.array([r[i] for r in rows], dtype=np.int64) for i in range(3))
    problem = bounds_problem(region, offset, length, sizes, side="source")
    expected = _reference_problem(region.tolist(), offset.tolist(), length.tolist(), sizes)
    assert (problem is not None) == expected, problem


def test_check_bounds_names_the_side_and_row() -> None:
    d = _descriptors([(0, 0, 0, 0, 0, 16), (0, 0, 0, 1, 100, 16)])
    check_bounds(d, src_lengths=[16], dst_lengths=[16, 116])
    with pytest.raises(TransferError, match=r"row 1: .*destination region 1 of 115 bytes"):
        check_bounds(d, src_lengths=[16], dst_lengths=[16, 115])
    with pytest.raises(TransferError, match="source region index 0 not registered"):
        check_bounds(d, src_lengths=[])
    assert bounds_problem(d.src_region, d.src_offset, d.length[:1], [16]) == "descriptor columns differ in length"


def test_merge_ranges_keeps_stream_order_and_drops_empty_rows() -> None:
    region = np.array([0, 0, 0, 1, 1, 0], dtype=np.int64)
    offset = np.array([0, 8, 100, 0, 4, 108], dtype=np.int64)
    length = np.array([8, 0, 8, 4, 4, 8], dtype=np.int64)
    r, o, n = merge_ranges(region, offset, length)
    assert (r.tolist(), o.tolist(), n.tolist()) == ([0, 0, 1, 0], [0, 100, 0, 108], [8, 8, 8, 8])
