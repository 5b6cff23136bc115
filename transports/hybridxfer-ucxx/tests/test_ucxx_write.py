"""UCXX writes (push), receiving side: exact bytes whatever either side's message options,
and the serving side refuses rows outside its own regions whatever the writer believes.

The public conformance suite's write checks go through ``UcxxTransport.write``, which
refuses bad rows before sending; a forged region table gets past that check to reach the
peer's own.
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from hybridxfer.errors import TransferError
from hybridxfer.transport import Descriptors, MemoryRegion

from hybridxfer_ucxx import UcxxTransport

SENTINEL = 0xAB


def _region(name: str, arr: np.ndarray) -> MemoryRegion:
    return MemoryRegion(name, int(arr.ctypes.data), int(arr.nbytes))


def _rows(rows: list[tuple[int, int, int, int, int]]) -> Descriptors:
    cols = np.array(rows, dtype=np.int64).reshape(-1, 5).T
    return Descriptors(*(np.ascontiguousarray(c) for c in cols))


@pytest.mark.asyncio
async def test_packed_and_zero_copy_rows_land_exactly_with_different_options_on_each_side() -> None:
    src = np.random.default_rng(1).integers(0, 256, 8 << 20, dtype=np.uint8)
    dst = np.full(8 << 20, SENTINEL, np.uint8)
    rng = np.random.default_rng(2)
    rows = [(0, int(rng.integers(0, 7 << 20)), 0, i * 4096, int(rng.integers(1, 4096))) for i in range(600)]
    rows += [(0, 5, 0, 3 << 20, 1 << 20), (0, 100, 0, 5 << 20, 70_000)]
    with anyio.fail_after(30):
        # the writer packs up to 256 KiB and sends rows >= 8 KiB alone; the target's own
        # options differ: the schedule the writer sends by travels in its WRITE frame
        async with UcxxTransport(zero_copy_bytes=1 << 20, pack_bytes=1 << 20) as target, \
                UcxxTransport(zero_copy_bytes=8192, pack_bytes=256 << 10) as writer:
            await target.register([_region("kv", dst)])
            await writer.register([_region("src", src)])
            peer = await writer.connect(target.local_metadata())
            await writer.write(peer, _rows(rows))
    expected = np.full_like(dst, SENTINEL)
    for _, so, _, do, n in rows:
        expected[do : do + n] = src[so : so + n]
    assert np.array_equal(dst, expected)


@pytest.mark.asyncio
async def test_serving_side_refuses_rows_outside_its_regions() -> None:
    src = np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8)
    backing = np.full(8192, SENTINEL, np.uint8)  # only the first 4096 bytes are registered
    with anyio.fail_after(30):
        async with UcxxTransport() as target, UcxxTransport() as writer:
            await target.register([_region("kv", backing[:4096])])
            await writer.register([_region("src", src)])
            peer = await writer.connect(target.local_metadata())
            peer.region_lengths = (8192, 64)  # the writer's view is wrong: its own check passes
            for rows in ([(0, 0, 0, 4000, 200)], [(0, 0, 0, 0, 8), (0, 0, 1, 0, 8)]):
                with pytest.raises(TransferError, match="refused the write: no byte written"):
                    await writer.write(peer, _rows(rows))
                assert (backing == SENTINEL).all()
            await writer.write(peer, _rows([(0, 100, 0, 0, 4096)]))  # still accepting writes
    assert np.array_equal(backing[:4096], src[100:4196]) and (backing[4096:] == SENTINEL).all()
