"""In-process conformance checks of writes (push): each an ``async def check_*(factory)``
that raises :class:`~hybridxfer.testing._checks.ConformanceFailure` when a transport
breaks the write contract (:class:`~hybridxfer.transport.WritableTransport`).

Why a module of their own: writes are optional. A check holds a transport to the write
contract only when its ``capabilities.writes`` is true; for one without writes it checks,
on a fresh transport it never enters, that :func:`~hybridxfer.transport.writable` refuses
it with :class:`~hybridxfer.errors.UnsupportedOperationError`, and starts nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import ClosedTransportError, TransferError, TransportError, UnsupportedOperationError
from hybridxfer.testing._checks import (
    SENTINEL,
    ConformanceFailure,
    TransportFactory,
    batch,
    expect,
    expect_bytes,
    region_of,
    world,
)
from hybridxfer.transport import Descriptors, PeerHandle, Transport, WritableTransport, writable

__all__ = ["WRITE_CHECKS", "declines_writes"]

U8 = npt.NDArray[np.uint8]


def _random(size: int, seed: int) -> U8:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def declines_writes(probe: Transport) -> bool:
    """True when ``probe`` (fresh, never entered: nothing to close) declares no writes and
    ``writable`` refuses it with :class:`UnsupportedOperationError` as it must — the write
    checks then have nothing more to hold it to, and start nothing."""
    if probe.capabilities.writes:
        return False
    try:
        writable(probe)
    except UnsupportedOperationError:
        return True
    raise ConformanceFailure("writable() accepted a transport whose capabilities.writes is false")


async def _write_all(w: WritableTransport, peer: PeerHandle, rows: Descriptors) -> None:
    """One write, split at ``max_descriptors_per_read`` as the executor splits."""
    for part in rows.split(w.capabilities.max_descriptors_per_read):
        await w.write(peer, part)


async def check_write_exact(factory: TransportFactory) -> None:
    """Rows from two of our regions into two of the peer's, out of order; every other byte
    of the peer's regions (neighbours included) and our own stays as it was."""
    if declines_writes(factory("conf-probe")):
        return
    a, b = _random(64 << 10, 50), _random(16 << 10, 51)
    x, y = np.full(32 << 10, SENTINEL, np.uint8), np.full(48 << 10, SENTINEL, np.uint8)
    a0, b0 = a.copy(), b.copy()
    rows = batch([1, 0, 0, 1, 0], [100, 0, 40_000, 9_000, 65_000], [1, 0, 1, 0, 1],
                 [47_000, 1, 0, 20_000, 1_000], [1_000, 4_096, 777, 3, 536])
    async with world(factory) as ([target], w):
        writer = writable(w)
        await target.register([region_of("x", x), region_of("y", y)])
        await w.register([region_of("a", a), region_of("b", b)])
        peer = await w.connect(target.local_metadata())
        expect(list(peer.region_names) == ["x", "y"], f"peer.region_names {list(peer.region_names)} != ['x', 'y']")
        await writer.write(peer, rows)
    ex, ey = np.full_like(x, SENTINEL), np.full_like(y, SENTINEL)
    for sr, so, dr, do, n in rows.rows():
        (ex, ey)[dr][do:do + n] = (a0, b0)[sr][so:so + n]
    expect_bytes(x, ex, "write into the peer's first region (including untouched bytes)")
    expect_bytes(y, ey, "write into the peer's second region (including untouched bytes)")
    expect_bytes(a, a0, "a write must not change the writer's own memory")
    expect_bytes(b, b0, "a write must not change the writer's own memory")


async def check_write_many_rows(factory: TransportFactory, count: int = 40_000, piece: int = 16) -> None:
    if declines_writes(factory("conf-probe")):
        return
    src, dst = _random(count * piece, 52), np.full(count * piece + 64, SENTINEL, np.uint8)
    rng = np.random.default_rng(53)
    src_perm, dst_perm = rng.permutation(count), rng.permutation(count)
    async with world(factory) as ([target], w):
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        await w.register([region_of("src", src)])
        peer = await w.connect(target.local_metadata())
        await _write_all(writer, peer, batch(0, src_perm * piece, 0, 32 + dst_perm * piece, piece))
    expected = np.full_like(dst, SENTINEL)
    expected[32:32 + count * piece].reshape(count, piece)[dst_perm] = src.reshape(count, piece)[src_perm]
    expect_bytes(dst, expected, f"write of {count} tiny rows")


async def check_write_large(factory: TransportFactory, size: int = 32 << 20) -> None:
    if declines_writes(factory("conf-probe")):
        return
    src, dst = _random(size, 54), np.zeros(size, np.uint8)
    quarter = size // 4
    order = np.array([3, 1, 0, 2], dtype=np.int64)
    async with world(factory) as ([target], w):
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        await w.register([region_of("src", src)])
        peer = await w.connect(target.local_metadata())
        await writer.write(peer, batch(0, order * quarter, 0, np.arange(4) * quarter, quarter))
    expected = np.empty_like(src)
    expected.reshape(4, quarter)[:] = src.reshape(4, quarter)[order]
    expect_bytes(dst, expected, f"write of {size} bytes")


async def check_write_zero_length(factory: TransportFactory) -> None:
    if declines_writes(factory("conf-probe")):
        return
    src, dst = _random(1024, 55), np.full(1024, SENTINEL, np.uint8)
    async with world(factory) as ([target], w):
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        await w.register([region_of("src", src)])
        peer = await w.connect(target.local_metadata())
        await writer.write(peer, Descriptors.empty())
        await writer.write(peer, batch(0, [0, 10], 0, [0, 20], 0))
    expect_bytes(dst, np.full(1024, SENTINEL, np.uint8), "zero-length writes must move nothing")


async def check_write_out_of_bounds_refused(factory: TransportFactory) -> None:
    """Rows outside either side's registered memory refuse the whole write: not a byte of
    the peer's memory changes, nor the unregistered bytes right after its region."""
    if declines_writes(factory("conf-probe")):
        return
    src = _random(4096, 56)
    backing = np.full(8192, SENTINEL, np.uint8)  # bytes 4096.. are *not* registered on the peer
    dst = backing[:4096]
    hostile = [
        batch(0, [0, 100], 0, [0, 4000], [100, 200]),  # second row crosses the peer's region end
        batch(0, 0, 0, 4096, 1),  # starts at the peer's region end
        batch(0, 0, [0, 1], [0, 8], 8),  # the peer has no region 1
        batch(0, 0, 0, -8, 16),  # negative destination offset
        batch(0, 0, 0, (1 << 62), (1 << 62)),  # destination offset + length overflows 63 bits
        batch(0, 0, 0, 0, -1),  # negative length
        batch(0, [0, 4000], 0, [0, 200], [100, 200]),  # second row crosses OUR region end
        batch(1, 0, 0, 0, 8),  # we have no region 1
    ]
    async with world(factory) as ([target], w):
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        await w.register([region_of("src", src)])
        peer = await w.connect(target.local_metadata())
        for i, hostile_batch in enumerate(hostile):
            try:
                await writer.write(peer, hostile_batch)
            except TransferError:
                pass
            else:
                raise ConformanceFailure(f"hostile write {i} outside registered memory was not refused")
            expect_bytes(backing, np.full(8192, SENTINEL, np.uint8), f"hostile write {i} moved bytes")
        await writer.write(peer, batch(0, 0, 0, 0, 4096))  # still accepting writes after refusals
    expect_bytes(backing[:4096], src, "valid write after refusals")
    expect_bytes(backing[4096:], np.full(4096, SENTINEL, np.uint8), "bytes after the peer's region")


async def check_concurrent_writes(factory: TransportFactory, plans: int = 8, size: int = 1 << 20,
                                  sources: int = 3) -> None:
    """Concurrent writes on one peer, and several writers into one peer at once."""
    if declines_writes(factory("conf-probe")):
        return
    src = _random(size * plans, 57)
    dst = np.zeros(size * (plans + sources), np.uint8)
    extra = [_random(size, 60 + i) for i in range(sources)]
    order = np.random.default_rng(58).permutation(plans)
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(factory("conf-target"))
        writers = [await stack.enter_async_context(factory(f"conf-w{i}")) for i in range(sources)]
        ws = [writable(w) for w in writers]
        await target.register([region_of("dst", dst)])
        await writers[0].register([region_of("src", src), region_of("extra", extra[0])])
        for w, data in zip(writers[1:], extra[1:], strict=True):
            await w.register([region_of("extra", data)])
        peers = [await w.connect(target.local_metadata()) for w in writers]
        async with anyio.create_task_group() as tg:
            first = ws[0]
            for i in range(plans):
                tg.start_soon(first.write, peers[0], batch(0, int(order[i]) * size, 0, i * size, size))
            for k, (writer, peer) in enumerate(zip(ws, peers, strict=True)):
                tg.start_soon(writer.write, peer, batch(1 if k == 0 else 0, 0, 0, (plans + k) * size, size))
    expected = np.concatenate([src.reshape(plans, size)[order].reshape(-1), *extra])
    expect_bytes(dst, expected, "concurrent writes (one peer, several writers)")


async def check_write_cancellation(factory: TransportFactory, size: int = 16 << 20, piece: int = 4096) -> None:
    if declines_writes(factory("conf-probe")):
        return
    src, dst = _random(size, 59), np.zeros(size, np.uint8)
    n = size // piece
    perm = np.random.default_rng(59).permutation(n)
    rows = batch(0, perm * piece, 0, np.arange(n) * piece, piece)
    async with world(factory) as ([target], w):
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        await w.register([region_of("src", src)])
        peer = await w.connect(target.local_metadata())
        for delay in (0.0, 0.002, 0.02):
            with anyio.fail_after(30):
                with anyio.move_on_after(delay):
                    await _write_all(writer, peer, rows)
        with anyio.fail_after(30):
            await _write_all(writer, peer, batch(0, 0, 0, 0, size))  # overwrite whatever landed
            await _write_all(writer, peer, rows)
    expect_bytes(dst, src.reshape(n, piece)[perm].reshape(-1), "write after cancelled writes")


async def check_write_after_aclose(factory: TransportFactory) -> None:
    if declines_writes(factory("conf-probe")):
        return
    target, w = factory("conf-p0"), factory("conf-d")
    dst = np.full(64, SENTINEL, np.uint8)
    async with target:
        await w.__aenter__()
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        peer = await w.connect(target.local_metadata())
        await w.aclose()
        try:
            await writer.write(peer, batch(0, 0, 0, 0, 1))
        except ClosedTransportError:
            pass
        else:
            raise ConformanceFailure("write after aclose() must raise ClosedTransportError")
    expect_bytes(dst, np.full(64, SENTINEL, np.uint8), "a write after aclose() moved bytes")


async def check_write_to_closed_peer(factory: TransportFactory, deadline: float = 20.0) -> None:
    """A write to a peer that has closed raises a transport error, within the deadline.

    Held to two-sided transports only (their peer's server is gone). A one-sided WRITE
    needs no cooperation from the peer, so a peer that closed but whose process lives on
    may not be detectable (NIXL over cma writes to any live process's memory): one-sided
    transports are held to a real death instead, by the cross-process write checks.
    """
    probe = factory("conf-probe")
    if declines_writes(probe) or probe.capabilities.one_sided:
        return
    src = _random(1 << 20, 61)
    dst = np.zeros(1 << 20, np.uint8)
    # the target is entered last, so closing it first respects task nesting (tcp, ucxx)
    async with factory("conf-d") as w, factory("conf-p0") as target:
        writer = writable(w)
        await target.register([region_of("dst", dst)])
        await w.register([region_of("src", src)])
        peer = await w.connect(target.local_metadata())
        await writer.write(peer, batch(0, 0, 0, 0, 1 << 20))
        await target.aclose()
        with anyio.move_on_after(deadline) as scope:
            try:
                await writer.write(peer, batch(0, 0, 0, 0, 1 << 20))
            except TransportError:
                pass
            else:
                raise ConformanceFailure("a write to a closed peer succeeded")
        if scope.cancelled_caught:
            raise ConformanceFailure(f"a write to a closed peer did not fail within {deadline} s")
    expect_bytes(dst, src, "the write before the peer closed")


WRITE_CHECKS: dict[str, Callable[[TransportFactory], Awaitable[None]]] = {
    "write_exact": check_write_exact,
    "write_many_rows": check_write_many_rows,
    "write_large": check_write_large,
    "write_zero_length": check_write_zero_length,
    "write_out_of_bounds_refused": check_write_out_of_bounds_refused,
    "concurrent_writes": check_concurrent_writes,
    "write_cancellation": check_write_cancellation,
    "write_after_aclose": check_write_after_aclose,
    "write_to_closed_peer": check_write_to_closed_peer,
}
