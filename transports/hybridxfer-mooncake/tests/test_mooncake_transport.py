"""The Mooncake transport against real peer processes on loopback: exact bytes, faults.

Every wait is bounded by ``anyio.fail_after``: a call that hangs fails the test instead
of hanging it. Peers are stopped with SIGSTOP (hung, sockets open: the engine itself
waits 30 s) or killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import anyio
import attrs
import numpy as np
import pytest

from hybridxfer.errors import (
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.transport import Descriptors, MemoryRegion, Transport
from hybridxfer.transport.registry import open_transport

from hybridxfer_mooncake import MooncakeTransport
from hybridxfer_mooncake._envelope import decode, encode
from hybridxfer_mooncake._native import MooncakeCallError
from mooncake_harness import PeerProcess
from mooncake_peer_proc import pattern

Spawn = Callable[[str, int], PeerProcess]
pytestmark = pytest.mark.anyio

MiB = 1 << 20
SENTINEL = 0xAB


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rows(*spec: tuple[int, int, int, int, int]) -> Descriptors:
    cols = np.array(spec, dtype=np.int64).reshape(-1, 5).T
    return Descriptors(*(np.ascontiguousarray(c) for c in cols))


def pieces(count: int, piece: int, seed: int) -> tuple[Descriptors, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(count).astype(np.int64)
    zeros = np.zeros(count, dtype=np.int64)
    return Descriptors(zeros, perm * piece, zeros, np.arange(count, dtype=np.int64) * piece,
                       np.full(count, piece, np.int64)), perm


def region(name: str, array: np.ndarray) -> MemoryRegion:
    return MemoryRegion(name, int(array.ctypes.data), int(array.nbytes))


async def test_registry_protocol_and_lifecycle_errors() -> None:
    transport = open_transport("mooncake", name="d")
    assert isinstance(transport, MooncakeTransport) and isinstance(transport, Transport)
    assert transport.capabilities.one_sided and transport.capabilities.memory_kinds == {"host"}
    with pytest.raises(NotStartedError):
        transport.local_metadata()
    memory = np.zeros(4096, np.uint8)
    async with transport:
        with pytest.raises(RegistrationError):
            await transport.register([MemoryRegion("gpu", int(memory.ctypes.data), 4096, kind="cuda")])
        await transport.register([region("a", memory)])
        with pytest.raises(RegistrationError):
            await transport.register([region("a", memory)])
        for junk in (b"", b"HXMC\x01\x00", transport.local_metadata()[:-3]):
            with pytest.raises(ConnectError):
                await transport.connect(junk)
    with pytest.raises(ClosedTransportError):
        transport.local_metadata()
    with pytest.raises(ValueError):
        MooncakeTransport(max_batch_entries=4096)  # more than the engine's lane queue holds


async def test_exact_bytes_odd_ranges_and_rows_longer_than_a_slab(spawn_peer: Spawn) -> None:
    size = 9 * MiB + 13
    peer_proc = spawn_peer("plugin", size)
    src = pattern(size, 0)
    dst_a = np.full(4 * MiB, SENTINEL, np.uint8)
    dst_b = np.full(6 * MiB, SENTINEL, np.uint8)
    spec = [
        (0, 0, 0, 0, 1),
        (0, 12345, 1, 3, 777),
        (0, size - 4096, 0, 8192, 4096),  # the last bytes of the odd-sized source
        (0, 2 * MiB + 1, 1, 1 * MiB, 5 * MiB - 7),  # longer than a 1 MiB slab: cut, over several engine calls
        (0, 5, 1, 0, 0),  # zero-length rows move nothing
        (0, 7 * MiB, 0, 3 * MiB, 1 * MiB),
    ]
    with anyio.fail_after(60):
        async with MooncakeTransport(staging_bytes=1 * MiB) as transport:
            await transport.register([region("a", dst_a), region("b", dst_b)])
            peer = await transport.connect(peer_proc.metadata)
            assert list(peer.region_names) == ["src"]
            await transport.read(peer, rows(*spec))
    expect_a = np.full_like(dst_a, SENTINEL)
    expect_b = np.full_like(dst_b, SENTINEL)
    for _, so, dr, do, ln in spec:
        (expect_a if dr == 0 else expect_b)[do:do + ln] = src[so:so + ln]
    assert np.array_equal(dst_a, expect_a)  # including every byte that must stay untouched
    assert np.array_equal(dst_b, expect_b)


async def test_more_descriptors_than_one_engine_batch_holds(spawn_peer: Spawn) -> None:
    """20,000 permuted 4 KiB rows in one read, and two concurrent reads of 3,000 rows on
    one peer: one raw engine batch of this size fails (test_mooncake_engine_faults)."""
    size = 20_000 * 4096
    peer_proc = spawn_peer("plugin", size)
    src = pattern(size, 0).reshape(-1, 4096)
    dst = np.zeros(size, np.uint8)
    big, perm = pieces(20_000, 4096, seed=1)
    with anyio.fail_after(120):
        async with MooncakeTransport(staging_bytes=8 * MiB) as transport:
            await transport.register([region("dst", dst)])
            peer = await transport.connect(peer_proc.metadata)
            await transport.read(peer, big)
            assert np.array_equal(dst.reshape(-1, 4096), src[perm])
            dst[:] = 0
            async with anyio.create_task_group() as tg:
                for part in (big.slice(0, 3000), big.slice(3000, 6000)):
                    tg.start_soon(transport.read, peer, part)
            assert np.array_equal(dst.reshape(-1, 4096)[:6000], src[perm[:6000]])
            assert not dst[6000 * 4096:].any()


async def test_stopped_peer_abandoned_read_never_writes_later(spawn_peer: Spawn) -> None:
    """SIGSTOP the peer; a read under a 1 s deadline returns at the deadline. After SIGCONT
    the abandoned engine call completes, into its staging slab only: the destination stays
    untouched. A fresh read then lands every byte. (A raw engine call, by contrast, goes on
    writing its destination: test_failed_batch_returns_while_its_entries_still_land.)"""
    size = 32 * MiB
    peer_proc = spawn_peer("plugin", size)
    dst = np.full(size, SENTINEL, np.uint8)
    batch, perm = pieces(size // 65536, 65536, seed=2)
    async with MooncakeTransport() as transport:
        await transport.register([region("dst", dst)])
        peer = await transport.connect(peer_proc.metadata)
        peer_proc.stop()
        with anyio.fail_after(10):
            with anyio.move_on_after(1.0) as scope:
                await transport.read(peer, batch)
        assert scope.cancelled_caught
        peer_proc.resume()
        assert peer_proc.holds(0, 4096, 0)  # the peer answers again, so its engine serves again
        await anyio.sleep(2.0)  # ample time for the abandoned call to finish landing
        assert (dst == SENTINEL).all(), "an abandoned read wrote the destination after it returned"
        with anyio.fail_after(60):
            await transport.read(peer, batch)
    assert np.array_equal(dst.reshape(-1, 65536), pattern(size, 0).reshape(-1, 65536)[perm])


async def test_stopped_peer_connect_and_notify_fail_within_call_timeout(spawn_peer: Spawn) -> None:
    stopped = spawn_peer("plugin", MiB)
    healthy = spawn_peer("plugin", MiB)
    dst = np.zeros(MiB, np.uint8)
    async with MooncakeTransport(call_timeout=2.0) as transport:
        await transport.register([region("dst", dst)])
        peer = await transport.connect(stopped.metadata)
        good = await transport.connect(healthy.metadata)
        stopped.stop()
        with anyio.fail_after(15), pytest.raises(TransferTimeout):
            await transport.notify(peer, b"req-1:done")
        fresh = spawn_peer("plugin", MiB)
        fresh.stop()
        with anyio.fail_after(15), pytest.raises(ConnectError):
            await transport.connect(fresh.metadata)
        # a frozen peer holds only its own engine: another peer is read at once
        with anyio.fail_after(15):
            await transport.read(good, rows((0, 0, 0, 0, MiB)))
        assert np.array_equal(dst, pattern(MiB, 0))
        with anyio.fail_after(15):
            await transport.aclose()  # an abandoned call in flight does not hold aclose


async def test_peer_killed_mid_read_raises_transfer_error(spawn_peer: Spawn) -> None:
    size = 128 * MiB
    peer_proc = spawn_peer("plugin", size)
    dst = np.zeros(size, np.uint8)
    batch, _ = pieces(size // 4096, 4096, seed=3)
    async with MooncakeTransport() as transport:
        await transport.register([region("dst", dst)])
        peer = await transport.connect(peer_proc.metadata)
        await transport.read(peer, batch.slice(0, 1))
        killer = threading.Timer(0.05, os.kill, (peer_proc.pid, signal.SIGKILL))
        killer.start()
        with anyio.fail_after(30), pytest.raises(TransferError) as info:
            for _ in range(100):  # read until the death surfaces
                await transport.read(peer, batch)
        killer.join()
        assert not isinstance(info.value, TransferTimeout)
        assert isinstance(info.value.__cause__, MooncakeCallError)
        with anyio.fail_after(30), pytest.raises(TransferError):
            await transport.read(peer, batch.slice(0, 1))
        restarted = spawn_peer("plugin", MiB)
        again = await transport.connect(restarted.metadata)
        with anyio.fail_after(30):
            await transport.read(again, rows((0, 0, 0, 0, MiB)))
    assert np.array_equal(dst[:MiB], pattern(MiB, 0))


async def test_metadata_of_another_process_at_that_address_is_refused(spawn_peer: Spawn) -> None:
    peer_proc = spawn_peer("plugin", MiB)
    forged = encode(attrs.evolve(decode(peer_proc.metadata), token=bytes(16)))
    async with MooncakeTransport() as transport:
        with anyio.fail_after(30), pytest.raises(ConnectError, match="identity token"):
            await transport.connect(forged)
        await transport.connect(peer_proc.metadata)  # the real metadata still connects


async def test_notification_reaches_the_peer_process(spawn_peer: Spawn) -> None:
    peer_proc = spawn_peer("plugin", 4096)
    async with MooncakeTransport(name="d-agent") as transport:
        peer = await transport.connect(peer_proc.metadata)
        peer_proc.send("WAIT_NOTE")
        with anyio.fail_after(30):
            await transport.notify(peer, b"req-7:done")
            note = await anyio.to_thread.run_sync(peer_proc.expect, "NOTE")
    assert note[1:] == ["d-agent", b"req-7:done".hex()]


def test_raw_ceiling_reads_the_same_bytes(spawn_peer: Spawn) -> None:
    """The benchmark's raw path (``hybridxfer.bench.raw`` entry point) moves exactly the
    rows it is given, from the serving engine of a plugin peer, in calls of <= 1024."""
    from importlib.metadata import entry_points

    from hybridxfer_mooncake.raw import RawMooncakeReader

    assert {ep.name: ep.value for ep in entry_points(group="hybridxfer.bench.raw")}["mooncake"] == \
        "hybridxfer_mooncake.raw"
    size = 3000 * 4096
    peer_proc = spawn_peer("plugin", size)
    dst = np.full(size + 4096, SENTINEL, np.uint8)
    batch, perm = pieces(3000, 4096, seed=5)
    reader = RawMooncakeReader([dst])
    reader.prepare(peer_proc.metadata, batch)
    reader.read_all()
    reader.close()
    assert np.array_equal(dst[:size].reshape(-1, 4096), pattern(size, 0).reshape(-1, 4096)[perm])
    assert (dst[size:] == SENTINEL).all()
