"""The write (push) half of the transport contract: who may write, what wrappers forward,
and that the conformance suite's write checks fail on deliberately broken writers.

The checks themselves run against every transport through the conformance classes
(``test_conformance.py``, the plugins' suites, the counting wrapper in ``test_wrapper.py``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
import pytest

from hybridxfer.errors import TransferError, UnsupportedOperationError
from hybridxfer.execute import CountingTransport
from hybridxfer.testing import _checks as checks
from hybridxfer.testing import _write_checks as write_checks
from hybridxfer.testing.checker import ConformanceFailure, check_transport
from hybridxfer.testing.faults import FaultInjectingTransport
from hybridxfer.transport import (
    DelegatingTransport,
    Descriptors,
    MemoryRegion,
    PeerHandle,
    Transport,
    TransportCapabilities,
    WritableTransport,
    writable,
)
from hybridxfer.transport.loopback import LoopbackPeer, LoopbackTransport
from hybridxfer.transport.registry import open_transport

SENTINEL = checks.SENTINEL


class NoWrites(LoopbackTransport):
    """A transport from before writes: capabilities say so (``write`` is left over)."""

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(one_sided=True)


class DropsLastWriteRow(LoopbackTransport):
    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        await super().write(peer, batch.slice(0, max(0, len(batch) - 1)))


class WriteNoBoundsCheck(LoopbackTransport):
    """Writes whatever is asked for (within the checks' own allocations) without checking."""

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        assert isinstance(peer, LoopbackPeer)
        src, dst = self.regions, peer.target.regions
        for sr, so, dr, do, ln in batch.rows():
            if 0 <= sr < len(src) and 0 <= so and 0 < ln <= 8192 and so + ln <= src[sr].length and 0 <= dr < len(dst) \
                    and 0 <= do and do + ln <= 8192:
                ctypes.memmove(dst[dr].address + do, src[sr].address + so, ln)
        await anyio.lowlevel.checkpoint()


class WritesOwnMemoryToo(LoopbackTransport):
    """Copies correctly, then scribbles on its own source: a writer must leave it alone."""

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        await super().write(peer, batch)
        ctypes.memset(self.regions[0].address, 0, 1)


Check = Callable[[checks.TransportFactory], Awaitable[None]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("broken", "check"),
    [
        (DropsLastWriteRow, write_checks.check_write_exact),
        (DropsLastWriteRow, write_checks.check_write_many_rows),
        (DropsLastWriteRow, write_checks.check_concurrent_writes),
        (WriteNoBoundsCheck, write_checks.check_write_out_of_bounds_refused),
        (WritesOwnMemoryToo, write_checks.check_write_exact),
    ],
)
async def test_write_checks_catch_broken_writers(broken: type[LoopbackTransport], check: Check) -> None:
    with anyio.fail_after(30):
        with pytest.raises(ConformanceFailure):
            await check(lambda name: broken(name=name))


@pytest.mark.anyio
async def test_checker_reports_broken_writes_without_pytest() -> None:
    with anyio.fail_after(60):
        results = await check_transport("loopback", factory=lambda n: DropsLastWriteRow(name=n), cross_process=False)
    failed = {r.name for r in results if not r.passed}
    assert {"write_exact", "write_many_rows"} <= failed
    assert "single_small_read" not in failed and "write_zero_length" not in failed


def _region(name: str, arr: np.ndarray) -> MemoryRegion:
    return checks.region_of(name, arr)


@pytest.mark.anyio
async def test_a_transport_without_writes_is_refused_typed_and_wrappers_follow_it() -> None:
    plain = NoWrites(name="old")
    assert isinstance(plain, Transport)
    with pytest.raises(UnsupportedOperationError, match="'loopback' does not support writes") as info:
        writable(plain)
    assert isinstance(info.value, NotImplementedError)
    wrapped = DelegatingTransport(NoWrites(name="old2"))
    assert not wrapped.capabilities.writes
    with pytest.raises(UnsupportedOperationError):
        writable(wrapped)
    with pytest.raises(UnsupportedOperationError):
        await wrapped.write(None, Descriptors.empty())  # type: ignore[arg-type]
    # every transport of this distribution that writes says so, and is a WritableTransport
    for name in ("loopback", "tcp"):
        t = open_transport(name, name="w")
        assert t.capabilities.writes and isinstance(t, WritableTransport) and writable(t) is t


@pytest.mark.anyio
async def test_wrappers_forward_writes_and_count_written_bytes_after_they_landed() -> None:
    src = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8)
    dst = np.full(10_000, SENTINEL, np.uint8)
    seen: list[tuple[int, bool]] = []

    def landed(n: int) -> None:  # the bytes reported must already be in the peer's memory
        done = sum(k for k, _ in seen) + n
        seen.append((n, bool(np.array_equal(dst[:done], src[:done]))))

    rows = [(0, i * 1000, 0, i * 1000, 1000) for i in range(10)]
    batch = Descriptors(*(np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)))
    with anyio.fail_after(10):
        async with open_transport("loopback", name="t") as target, \
                CountingTransport(DelegatingTransport(open_transport("loopback", name="w")), landed,
                                  step_bytes=2500) as w:
            assert w.capabilities.writes
            await target.register([_region("dst", dst)])
            await w.register([_region("src", src)])
            peer = await w.connect(target.local_metadata())
            await writable(w).write(peer, batch)
    assert np.array_equal(dst, src)
    assert sum(n for n, _ in seen) == 10_000 and all(ok for _, ok in seen) and len(seen) == 4


@pytest.mark.anyio
async def test_injected_write_faults() -> None:
    src = np.arange(4096, dtype=np.uint8)
    dst = np.full(4096, SENTINEL, np.uint8)
    rows = Descriptors(*(np.array(c, dtype=np.int64) for c in ([0, 0], [0, 2048], [0, 0], [0, 2048], [2048, 2048])))
    with anyio.fail_after(10):
        async with open_transport("loopback", name="t") as target, \
                FaultInjectingTransport(open_transport("loopback", name="w"), fail_write=1, break_write=2,
                                        stall_write=3, stall_seconds=0.01) as w:
            await target.register([_region("dst", dst)])
            await w.register([_region("src", src)])
            peer = await w.connect(target.local_metadata())
            with pytest.raises(TransferError, match="injected failure of write 1"):
                await w.write(peer, rows)
            assert (dst == SENTINEL).all()
            with pytest.raises(TransferError, match="injected connection loss during write 2"):
                await w.write(peer, rows)
            assert np.array_equal(dst[:2048], src[:2048]) and (dst[2048:] == SENTINEL).all()
            await w.write(peer, rows)  # stalled briefly, then written
            assert w.writes == 3 and w.reads == 0
    assert np.array_equal(dst, src)
