"""NIXL transport between two real processes over loopback, host memory, exact bytes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import anyio
import numpy as np
import pytest

from hybridxfer.errors import ClosedTransportError, ConnectError, TransferError, TransferTimeout
from hybridxfer.transport import Descriptors, MemoryRegion, Transport

from nixl_harness import PeerProcess
from hybridxfer_nixl import NixlTransport
from nixl_peer_proc import pattern

Spawn = Callable[[list[int]], PeerProcess]
pytestmark = pytest.mark.asyncio

MiB = 1 << 20


def batch(rows: list[tuple[int, int, int, int, int]]) -> Descriptors:
    cols = np.array(rows, dtype=np.int64).reshape(-1, 5).T
    return Descriptors(*(np.ascontiguousarray(c) for c in cols))


def pieces_batch(total: int, piece: int, seed: int) -> tuple[Descriptors, np.ndarray]:
    n = total // piece
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    zeros = np.zeros(n, dtype=np.int64)
    rb = Descriptors(zeros, perm * piece, zeros, np.arange(n, dtype=np.int64) * piece, np.full(n, piece, np.int64))
    return rb, perm


async def test_satisfies_protocol() -> None:
    async with NixlTransport() as transport:
        assert isinstance(transport, Transport)
        assert transport.capabilities.one_sided
        assert "host" in transport.capabilities.memory_kinds


async def test_read_exact_bytes_from_another_process(spawn_peer: Spawn) -> None:
    sizes = [3 * MiB + 17, 1 * MiB]
    peer_proc = spawn_peer(sizes)
    sources = [pattern(s, seed) for seed, s in enumerate(sizes)]
    dst_a = np.zeros(2 * MiB, dtype=np.uint8)
    dst_b = np.full(5 * MiB, 7, dtype=np.uint8)
    rows = [
        (0, 0, 0, 0, 4096),
        (1, 12345, 1, 3 * MiB, 70000),
        (0, 3 * MiB + 17 - 999, 0, 4096, 999),  # last bytes of the odd-sized source region
        (1, 0, 0, 1 * MiB, 1 * MiB),
        (0, 5, 1, 0, 0),  # zero-length rows move nothing
    ]
    with anyio.fail_after(30):
        async with NixlTransport() as transport:
            await transport.register(
                [MemoryRegion("a", dst_a.ctypes.data, dst_a.nbytes), MemoryRegion("b", dst_b.ctypes.data, dst_b.nbytes)]
            )
            peer = await transport.connect(peer_proc.metadata)
            assert list(peer.region_names) == ["r0", "r1"]
            await transport.read(peer, batch(rows))
    expect_a = np.zeros_like(dst_a)
    expect_b = np.full_like(dst_b, 7)
    for sr, so, dr, do, ln in rows:
        target = expect_a if dr == 0 else expect_b
        target[do : do + ln] = sources[sr][so : so + ln]
    assert np.array_equal(dst_a, expect_a)
    assert np.array_equal(dst_b, expect_b)


async def test_many_permuted_pieces_and_reuse(spawn_peer: Spawn) -> None:
    total = 32 * MiB
    peer_proc = spawn_peer([total])
    src = pattern(total, 0)
    dst = np.zeros(total, dtype=np.uint8)
    with anyio.fail_after(60):
        async with NixlTransport() as transport:
            await transport.register([MemoryRegion("d", dst.ctypes.data, total)])
            peer = await transport.connect(peer_proc.metadata)
            for piece, seed in ((4096, 1), (256 * 1024, 2)):
                rb, perm = pieces_batch(total, piece, seed)
                dst[:] = 0
                await transport.read(peer, rb)
                assert np.array_equal(dst.reshape(-1, piece), src.reshape(-1, piece)[perm])


async def test_out_of_range_refused_without_moving_bytes(spawn_peer: Spawn) -> None:
    peer_proc = spawn_peer([MiB])
    dst = np.zeros(MiB, dtype=np.uint8)
    with anyio.fail_after(30):
        async with NixlTransport() as transport:
            await transport.register([MemoryRegion("d", dst.ctypes.data, MiB)])
            peer = await transport.connect(peer_proc.metadata)
            for rows in (
                [(0, 0, 0, 0, 4096), (0, MiB - 10, 0, 8192, 11)],  # source overrun
                [(0, 0, 0, 0, 4096), (0, 0, 0, MiB - 1, 2)],  # destination overrun
                [(0, 0, 0, 0, 4096), (1, 0, 0, 0, 1)],  # unknown source region
                [(0, -1, 0, 0, 1)],
            ):
                with pytest.raises(TransferError, match="refused"):
                    await transport.read(peer, batch(rows))
    assert not dst.any()


async def test_notifications_both_ways(spawn_peer: Spawn) -> None:
    peer_proc = spawn_peer([4096])
    with anyio.fail_after(30):
        async with NixlTransport() as transport:
            peer = await transport.connect(peer_proc.metadata)
            peer_proc.send("WAIT_NOTE")
            await transport.notify(peer, b"req-7:done")
            note = await anyio.to_thread.run_sync(peer_proc.expect, "NOTE")
            assert note[1:] == [transport.agent_name, b"req-7:done".hex()]
            peer_proc.send("CONNECT " + transport.local_metadata().hex())
            await anyio.to_thread.run_sync(peer_proc.expect, "CONNECTED")
            for message in (b"one", b"two"):
                peer_proc.send("NOTIFY " + message.hex())
                got = await transport.next_notification()
                assert (got.peer_name, got.message) == (peer.name, message)


async def test_peer_killed_mid_transfer_raises_transfer_error(spawn_peer: Spawn) -> None:
    total = 256 * MiB
    peer_proc = spawn_peer([total])
    dst = np.zeros(total, dtype=np.uint8)
    rb, _ = pieces_batch(total, 4096, 3)  # 65536 descriptors: a few hundred ms per READ
    async with NixlTransport(read_timeout=20) as transport:
        await transport.register([MemoryRegion("d", dst.ctypes.data, total)])
        peer = await transport.connect(peer_proc.metadata)
        await transport.read(peer, Descriptors(*(c[:1] for c in (rb.src_region, rb.src_offset, rb.dst_region, rb.dst_offset, rb.length))))

        killer = threading.Timer(0.05, os.kill, (peer_proc.pid, signal.SIGKILL))
        started = time.monotonic()
        killer.start()
        with anyio.fail_after(15), pytest.raises(TransferError) as info:
            for _ in range(100):  # keep reading until the death surfaces
                await transport.read(peer, rb)
        killer.join()
        assert not isinstance(info.value, TransferTimeout)
        assert info.value.__cause__ is not None
        assert time.monotonic() - started < 10


async def test_stalled_peer_raises_transfer_timeout(spawn_peer: Spawn) -> None:
    peer_proc = spawn_peer([MiB])
    dst = np.zeros(MiB, dtype=np.uint8)
    async with NixlTransport(read_timeout=2.0) as transport:
        await transport.register([MemoryRegion("d", dst.ctypes.data, MiB)])
        peer = await transport.connect(peer_proc.metadata)
        os.kill(peer_proc.pid, signal.SIGSTOP)  # hung, sockets open: NIXL itself never errors
        started = time.monotonic()
        with anyio.fail_after(15), pytest.raises(TransferTimeout):
            await transport.read(peer, batch([(0, 0, 0, 0, MiB)]))
        assert time.monotonic() - started < 10
        os.kill(peer_proc.pid, signal.SIGCONT)


async def test_cancelled_read_releases_and_transport_stays_usable(spawn_peer: Spawn) -> None:
    total = 128 * MiB
    peer_proc = spawn_peer([total])
    src = pattern(total, 0)
    dst = np.zeros(total, dtype=np.uint8)
    rb, _ = pieces_batch(total, 4096, 4)
    with anyio.fail_after(60):
        async with NixlTransport() as transport:
            await transport.register([MemoryRegion("d", dst.ctypes.data, total)])
            peer = await transport.connect(peer_proc.metadata)
            with anyio.move_on_after(0.01):
                await transport.read(peer, rb)
            dst[:] = 0
            await transport.read(peer, batch([(0, 0, 0, 0, MiB)]))
            assert np.array_equal(dst[:MiB], src[:MiB])


async def test_bad_metadata_and_closed_use() -> None:
    transport = NixlTransport()
    async with transport:
        with pytest.raises(ConnectError):
            await transport.connect(b"not metadata")
    await transport.aclose()
    with pytest.raises(ClosedTransportError):
        transport.local_metadata()
