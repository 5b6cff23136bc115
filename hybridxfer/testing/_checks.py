"""In-process conformance checks: each an ``async def check_*(factory)`` that raises
:class:`ConformanceFailure` when the transport breaks the contract.

Why plain functions: the pytest base class and the pytest-free checker both call these,
so a plugin author debugging one failure can run exactly that check in a REPL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import ClosedTransportError, ConnectError, TransferError
from hybridxfer.transport import Descriptors, MemoryRegion, PeerHandle, Transport

__all__ = ["ConformanceFailure", "TransportFactory", "batch", "region_of"]

#: ``factory(agent_name)`` returns a fresh, not yet entered transport.
TransportFactory = Callable[[str], Transport]

U8 = npt.NDArray[np.uint8]
SENTINEL = 0xAB


class ConformanceFailure(AssertionError):
    """A transport broke the contract (the message says which rule)."""


def region_of(name: str, array: U8) -> MemoryRegion:
    return MemoryRegion(name, int(array.ctypes.data), int(array.nbytes))


def batch(src_region: object, src_offset: object, dst_region: object, dst_offset: object,
          length: object) -> Descriptors:
    cols = [np.atleast_1d(np.asarray(c, dtype=np.int64)) for c in (src_region, src_offset, dst_region, dst_offset, length)]
    n = max(len(c) for c in cols)
    full = [np.broadcast_to(c, (n,)).copy() for c in cols]
    return Descriptors(*full)


def _random(size: int, seed: int) -> U8:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceFailure(message)


def expect_bytes(actual: U8, expected: U8, what: str) -> None:
    if not np.array_equal(actual, expected):
        bad = np.flatnonzero(actual != expected)
        raise ConformanceFailure(f"{what}: {len(bad)} bytes differ, first at {int(bad[0])}")


@contextlib.asynccontextmanager
async def world(factory: TransportFactory, sources: int = 1) -> AsyncIterator[tuple[list[Transport], Transport]]:
    """``sources`` serving transports and one reading transport, all entered."""
    async with contextlib.AsyncExitStack() as stack:
        ps = [await stack.enter_async_context(factory(f"conf-p{i}")) for i in range(sources)]
        d = await stack.enter_async_context(factory("conf-d"))
        yield ps, d


async def _setup(p: Transport, d: Transport, src: U8, dst: U8) -> PeerHandle:
    await p.register([region_of("src", src)])
    await d.register([region_of("dst", dst)])
    return await d.connect(p.local_metadata())


async def check_single_small_read(factory: TransportFactory) -> None:
    src, dst = _random(4096, 1), np.full(4096, SENTINEL, np.uint8)
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        await d.read(peer, batch(0, 100, 0, 2000, 777))
    expected = np.full(4096, SENTINEL, np.uint8)
    expected[2000:2777] = src[100:877]
    expect_bytes(dst, expected, "single small read (including untouched bytes)")


async def check_large_read(factory: TransportFactory, size: int = 256 << 20) -> None:
    src, dst = _random(size, 2), np.zeros(size, np.uint8)
    quarter = size // 4
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        order = np.array([2, 0, 3, 1], dtype=np.int64)
        await d.read(peer, batch(0, order * quarter, 0, np.arange(4) * quarter, quarter))
    expected = src.reshape(4, quarter)[order].reshape(-1)
    expect_bytes(dst, expected, f"large read of {size} bytes")


async def check_many_tiny_descriptors(factory: TransportFactory, count: int = 100_000, piece: int = 16) -> None:
    src, dst = _random(count * piece, 3), np.full(count * piece, SENTINEL, np.uint8)
    rng = np.random.default_rng(4)
    src_perm, dst_perm = rng.permutation(count), rng.permutation(count)
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        await d.read(peer, batch(0, src_perm * piece, 0, dst_perm * piece, piece))
    expected = np.empty((count, piece), np.uint8)
    expected[dst_perm] = src.reshape(count, piece)[src_perm]
    expect_bytes(dst, expected.reshape(-1), f"{count} tiny descriptors")


async def check_several_sources(factory: TransportFactory, sources: int = 3, size: int = 1 << 20) -> None:
    srcs = [_random(size, 10 + i) for i in range(sources)]
    dst = np.zeros(size * sources, np.uint8)
    async with world(factory, sources) as (ps, d):
        await d.register([region_of("dst", dst)])
        peers = []
        for p, src in zip(ps, srcs, strict=True):
            await p.register([region_of("src", src)])
            peers.append(await d.connect(p.local_metadata()))
        async with anyio.create_task_group() as tg:
            for i, peer in enumerate(peers):
                tg.start_soon(d.read, peer, batch(0, 0, 0, i * size, size))
    expect_bytes(dst, np.concatenate(srcs), "reads from several sources at once")


async def check_zero_length(factory: TransportFactory) -> None:
    src, dst = _random(1024, 5), np.full(1024, SENTINEL, np.uint8)
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        await d.read(peer, Descriptors.empty())
        await d.read(peer, batch(0, [0, 10], 0, [0, 20], 0))
    expect_bytes(dst, np.full(1024, SENTINEL, np.uint8), "zero-length reads must move nothing")


async def check_out_of_bounds_refused(factory: TransportFactory) -> None:
    backing = _random(8192, 6)  # bytes 4096.. are *not* registered: a secret to protect
    src = backing[:4096]
    dst = np.full(8192, SENTINEL, np.uint8)
    hostile = [
        batch(0, [0, 4000], 0, [0, 100], [100, 200]),  # second row crosses the region end
        batch(0, 4096, 0, 0, 1),  # starts at the end
        batch([0, 1], 0, 0, [0, 8], 8),  # region 1 does not exist
        batch(0, -8, 0, 0, 16),  # negative offset
        batch(0, (1 << 62), 0, 0, (1 << 62)),  # offset + length overflows 63 bits
        batch(0, 0, 0, 0, -1),  # negative length
    ]
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        for i, hostile_batch in enumerate(hostile):
            try:
                await d.read(peer, hostile_batch)
            except TransferError:
                pass
            else:
                raise ConformanceFailure(f"hostile batch {i} outside registered memory was not refused")
            expect_bytes(dst, np.full(8192, SENTINEL, np.uint8), f"hostile batch {i} moved bytes")
        await d.read(peer, batch(0, 0, 0, 0, 4096))  # still serving after refusals
    expect_bytes(dst[:4096], src, "valid read after refusals")


async def check_notification_exactly_once(factory: TransportFactory, count: int = 10) -> None:
    async with world(factory) as ([p], d):
        peer = await d.connect(p.local_metadata())
        for i in range(count):
            await d.notify(peer, f"req-{i}:done".encode())
        got = []
        with anyio.move_on_after(5):
            for _ in range(count):
                got.append(await p.next_notification())
        expect(len(got) == count, f"only {len(got)} of {count} notifications arrived within 5s")
        with anyio.move_on_after(0.2):
            extra = await p.next_notification()
            raise ConformanceFailure(f"notification delivered more than once: {extra}")
    expect(sorted(n.message for n in got) == sorted(f"req-{i}:done".encode() for i in range(count)),
           f"notifications differ: {got}")
    expect(all(n.peer_name == "conf-d" for n in got), f"peer_name must be the sender's agent name: {got}")


async def check_concurrent_reads(factory: TransportFactory, plans: int = 8, size: int = 2 << 20) -> None:
    src, dst = _random(size * plans, 7), np.zeros(size * plans, np.uint8)
    order = np.random.default_rng(8).permutation(plans)
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        async with anyio.create_task_group() as tg:
            for i in range(plans):
                tg.start_soon(d.read, peer, batch(0, int(order[i]) * size, 0, i * size, size))
    expect_bytes(dst, src.reshape(plans, size)[order].reshape(-1), "concurrent reads on one peer")


async def check_cancellation(factory: TransportFactory, size: int = 64 << 20, piece: int = 4096) -> None:
    src, dst = _random(size, 9), np.zeros(size, np.uint8)
    n = size // piece
    perm = np.random.default_rng(9).permutation(n)
    async with world(factory) as ([p], d):
        peer = await _setup(p, d, src, dst)
        for delay in (0.0, 0.005, 0.05):
            with anyio.fail_after(30):
                with anyio.move_on_after(delay):
                    await d.read(peer, batch(0, perm * piece, 0, np.arange(n) * piece, piece))
        dst[:] = 0
        with anyio.fail_after(30):
            await d.read(peer, batch(0, perm * piece, 0, np.arange(n) * piece, piece))
    expect_bytes(dst, src.reshape(n, piece)[perm].reshape(-1), "read after cancelled reads")


async def check_aclose_twice(factory: TransportFactory) -> None:
    p, d = factory("conf-p0"), factory("conf-d")
    async with p:
        await d.__aenter__()
        peer = await d.connect(p.local_metadata())
        await d.aclose()
        await d.aclose()
        try:
            await d.read(peer, batch(0, 0, 0, 0, 1))
        except ClosedTransportError:
            pass
        else:
            raise ConformanceFailure("read after aclose() must raise ClosedTransportError")
    await p.aclose()


async def check_bad_metadata(factory: TransportFactory) -> None:
    async with world(factory) as (_, d):
        for junk in (b"", b"\x00garbage", b'{"v": 99}'):
            try:
                await d.connect(junk)
            except ConnectError:
                continue
            raise ConformanceFailure(f"connect({junk!r}) must raise ConnectError")


IN_PROCESS_CHECKS: dict[str, Callable[[TransportFactory], Awaitable[None]]] = {
    "single_small_read": check_single_small_read,
    "large_read": check_large_read,
    "many_tiny_descriptors": check_many_tiny_descriptors,
    "several_sources": check_several_sources,
    "zero_length": check_zero_length,
    "out_of_bounds_refused": check_out_of_bounds_refused,
    "notification_exactly_once": check_notification_exactly_once,
    "concurrent_reads": check_concurrent_reads,
    "cancellation": check_cancellation,
    "aclose_twice": check_aclose_twice,
    "bad_metadata": check_bad_metadata,
}
