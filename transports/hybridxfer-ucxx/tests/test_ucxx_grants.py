"""Grants on the UCXX transport's serving side: a READ outside the reader's grants sends nothing."""

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
async def test_reads_outside_a_grant_are_refused_and_send_nothing(caplog: pytest.LogCaptureFixture) -> None:
    src = np.random.default_rng(3).integers(0, 256, 1 << 16, dtype=np.uint8)
    dst = np.full(1 << 16, 0x5A, dtype=np.uint8)
    with anyio.fail_after(60):
        async with (UcxxTransport(name="p", require_grants=True, read_timeout=30.0) as p,
                    UcxxTransport(name="d", read_timeout=30.0) as d):
            await p.register([_region("src", src)])
            await d.register([_region("dst", dst)])
            peer = await d.connect(p.local_metadata())
            with pytest.raises(GrantRefusedError, match="no live grant"):
                await d.read(peer, _rows(0, 4096))
            assert (dst == 0x5A).all()
            assert "refused READ" in caplog.text and "'d'" in caplog.text
            p.grants.grant("r1", "d", ByteRanges([0], [0], [8192]))
            await d.read(peer, _rows(0, 8192))
            assert bytes(dst[:8192]) == bytes(src[:8192]) and (dst[8192:] == 0x5A).all()
            with pytest.raises(GrantRefusedError, match=r"bytes \[8192, 8193\)"):
                await d.read(peer, _rows(8192, 1))
            assert p.grants.revoke("r1") == 1
            dst[:] = 0x5A
            with pytest.raises(GrantRefusedError):
                await d.read(peer, _rows(0, 16))
            assert (dst == 0x5A).all()
