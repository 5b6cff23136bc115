"""Cutting a read into engine batches, checked by replaying them against plain numpy.

No engine here: each batch is "read" by copying the peer bytes it names into a slab, then
copied out with the plugin's own ``copy_out``; the result must equal copying every row
directly (an independent reference), including the bytes no row touches.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybridxfer.transport import Descriptors

from hybridxfer_mooncake._stage import copy_out, engine_batches


def _random_rows(rng: np.random.Generator, count: int, size: int) -> Descriptors:
    length = rng.integers(0, 300_000, count).astype(np.int64)
    src_offset = rng.integers(0, size - length + 1).astype(np.int64)
    dst_region = rng.integers(0, 2, count).astype(np.int64)
    dst_offset = rng.integers(0, size - length + 1).astype(np.int64)
    return Descriptors(np.zeros(count, np.int64), src_offset, dst_region, dst_offset, length)


@pytest.mark.parametrize("seed", range(6))
def test_batches_move_exactly_the_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = 1 << 20
    source = rng.integers(0, 256, size, dtype=np.uint8)
    rows = _random_rows(rng, 200, size)
    slab_bytes, max_entries = int(rng.choice([1 << 16, 1 << 18, 1 << 20])), int(rng.choice([1, 7, 1024]))
    base = 1 << 40  # a pretend peer address: batches name absolute addresses
    batches = engine_batches(rows, np.array([base], np.int64), slab_bytes=slab_bytes, max_entries=max_entries)
    got = [np.full(size, 0xAB, np.uint8) for _ in range(2)]
    slab = np.empty(slab_bytes, np.uint8)
    for batch in batches:
        assert 0 < len(batch.length) <= max_entries and batch.nbytes <= slab_bytes
        for remote, n, at in zip(batch.remote.tolist(), batch.length.tolist(), batch.slab_offset.tolist(),
                                 strict=True):
            slab[at:at + n] = source[remote - base:remote - base + n]  # what the engine does
        copy_out(slab, batch, got)
    want = [np.full(size, 0xAB, np.uint8) for _ in range(2)]
    for so, dr, do, n in zip(rows.src_offset.tolist(), rows.dst_region.tolist(), rows.dst_offset.tolist(),
                             rows.length.tolist(), strict=True):
        want[dr][do:do + n] = source[so:so + n]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert sum(b.nbytes for b in batches) == rows.total_bytes


def test_a_batch_that_drops_a_row_is_caught() -> None:
    """Negative control: the replay above notices one missing row."""
    rng = np.random.default_rng(99)
    size = 1 << 20
    source = rng.integers(0, 256, size, dtype=np.uint8)
    count = 50  # rows that do not overlap, so a lost one cannot be hidden by a later one
    rows = Descriptors(np.zeros(count, np.int64), rng.permutation(count).astype(np.int64) * 10_000,
                       np.zeros(count, np.int64), np.arange(count, dtype=np.int64) * 10_000,
                       np.full(count, 10_000, np.int64))
    batches = engine_batches(rows, np.array([0], np.int64), slab_bytes=1 << 16, max_entries=1024)
    assert len(batches) > 1
    got = [np.full(size, 0xAB, np.uint8) for _ in range(2)]
    slab = np.empty(1 << 16, np.uint8)
    for batch in batches[1:]:  # the first batch is "lost"
        for remote, n, at in zip(batch.remote.tolist(), batch.length.tolist(), batch.slab_offset.tolist(),
                                 strict=True):
            slab[at:at + n] = source[remote:remote + n]
        copy_out(slab, batch, got)
    want = [np.full(size, 0xAB, np.uint8) for _ in range(2)]
    for so, dr, do, n in zip(rows.src_offset.tolist(), rows.dst_region.tolist(), rows.dst_offset.tolist(),
                             rows.length.tolist(), strict=True):
        want[dr][do:do + n] = source[so:so + n]
    assert not all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
