"""Write grants on the UCXX transport's serving side: a WRITE outside the writer's write
grants receives nothing (push mode into a decoder that requires grants)."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from hybridxfer.errors import GrantRefusedError
from hybridxfer.transport import ByteRanges, Descriptors, MemoryRegion

from hybridxfer_ucxx import UcxxTransport


def _region(name: str, a: np.ndarray) -> MemoryRegion:
    return MemoryRegion(name, int(a.ctypes.data), int(a.nbytes))


def _rows(offset: int, length: int) -> Descriptors:
    one = np.array([0], dtype=np.int64)
    return Descriptors(one * 0, one * 0 + offset, one * 0, one * 0 + offset, one * 0 + length)


@pytest.mark.asyncio
async def test_writes_outside_a_write_grant_are_refused_and_write_nothing() -> None:
    src = np.random.default_rng(5).integers(0, 256, 1 << 16, dtype=np.uint8)
    dst = np.full(1 << 16, 0x5A, dtype=np.uint8)
    with anyio.fail_after(60):
        async with (UcxxTransport(name="p", read_timeout=30.0) as p,
                    UcxxTransport(name="d", require_grants=True, read_timeout=30.0) as d):
            await p.register([_region("src", src)])
            await d.register([_region("dst", dst)])
            peer = await p.connect(d.local_metadata())
            with pytest.raises(GrantRefusedError, match="no live write grant"):
                await p.write(peer, _rows(0, 4096))
            d.grants.grant("r1", "p", ByteRanges([0], [0], [8192]))  # a read grant: not a write grant
            with pytest.raises(GrantRefusedError):
                await p.write(peer, _rows(0, 4096))
            assert (dst == 0x5A).all()
            d.grants.grant("r1", "p", ByteRanges([0], [0], [8192]), access="write")
            await p.write(peer, _rows(0, 8192))
            assert bytes(dst[:8192]) == bytes(src[:8192]) and (dst[8192:] == 0x5A).all()
            with pytest.raises(GrantRefusedError, match=r"bytes \[8191, 8193\)"):
                await p.write(peer, _rows(8191, 2))
            assert (dst[8192:] == 0x5A).all()
            assert d.grants.revoke("r1") == 2
            dst[:] = 0x5A
            with pytest.raises(GrantRefusedError):
                await p.write(peer, _rows(0, 16))
            assert (dst == 0x5A).all()
