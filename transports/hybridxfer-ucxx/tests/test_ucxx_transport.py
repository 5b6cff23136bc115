"""UCXX transport between two real processes over loopback, host memory, exact bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.errors import ConnectError, TransferError, TransportError
from hybridxfer.transport import Descriptors, MemoryRegion, Transport

from hybridxfer_ucxx import UcxxTransport
from ucxx_peer_proc import pattern

MiB = 1 << 20
SCRIPT = Path(__file__).with_name("ucxx_peer_proc.py")


class Peer:
    def __init__(self, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SCRIPT.parent)},
        )
        self.metadata = bytes.fromhex(self.expect("META")[1])

    def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if line.split()[:1] == [word]:
                return line.split()
        raise RuntimeError(f"peer exited before {word}")


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer(64 * MiB)
    yield p
    assert p.proc.stdin is not None and p.proc.stdout is not None
    p.proc.stdin.close()
    try:
        p.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait(timeout=10)
    p.proc.stdout.close()


def rows_batch(rows: list[tuple[int, int, int, int, int]]) -> Descriptors:
    cols = np.array(rows, dtype=np.int64).reshape(-1, 5).T
    return Descriptors(*(np.ascontiguousarray(c) for c in cols))


@pytest.mark.asyncio
async def test_mixed_rows_exact_bytes(peer: Peer) -> None:
    src = pattern(64 * MiB, 0)
    dst = np.full(16 * MiB, 3, dtype=np.uint8)
    rng = np.random.default_rng(5)
    rows = [(0, int(rng.integers(0, 60 * MiB)), 0, i * 8192, int(rng.integers(1, 8192))) for i in range(500)]
    rows += [(0, 7, 0, 8 * MiB, 3 * MiB), (0, 33 * MiB, 0, 12 * MiB, 70000), (0, 0, 0, 15 * MiB, 0)]
    with anyio.fail_after(60):
        async with UcxxTransport() as transport:
            assert isinstance(transport, Transport)
            await transport.register([MemoryRegion("d", dst.ctypes.data, dst.nbytes)])
            remote = await transport.connect(peer.metadata)
            await transport.read(remote, rows_batch(rows))
            await transport.notify(remote, b"req-1:done")
            note = await anyio.to_thread.run_sync(peer.expect, "NOTE")
            assert note[1:] == [transport.agent_name, b"req-1:done".hex()]
    expect = np.full_like(dst, 3)
    for _, so, _, do, ln in rows:
        expect[do : do + ln] = src[so : so + ln]
    assert np.array_equal(dst, expect)


@pytest.mark.asyncio
async def test_out_of_range_refused(peer: Peer) -> None:
    dst = np.zeros(MiB, dtype=np.uint8)
    with anyio.fail_after(30):
        async with UcxxTransport() as transport:
            await transport.register([MemoryRegion("d", dst.ctypes.data, MiB)])
            remote = await transport.connect(peer.metadata)
            with pytest.raises(TransferError, match="refused"):
                await transport.read(remote, rows_batch([(0, 0, 0, 0, 10), (0, 64 * MiB - 1, 0, 10, 2)]))
            with pytest.raises(ConnectError):
                await transport.connect(b"HXUC garbage")
    assert not dst.any()


@pytest.mark.asyncio
async def test_peer_killed_mid_read_raises_transfer_error(peer: Peer) -> None:
    dst = np.zeros(64 * MiB, dtype=np.uint8)
    n = 64 * MiB // 4096
    batch = Descriptors(
        np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * 4096, np.zeros(n, np.int64),
        np.arange(n, dtype=np.int64) * 4096, np.full(n, 4096, np.int64),
    )
    async with UcxxTransport(read_timeout=20) as transport:
        await transport.register([MemoryRegion("d", dst.ctypes.data, dst.nbytes)])
        remote = await transport.connect(peer.metadata)
        killer = threading.Timer(0.05, os.kill, (peer.proc.pid, signal.SIGKILL))
        started = time.monotonic()
        killer.start()
        with anyio.fail_after(20), pytest.raises(TransferError):
            for _ in range(200):
                await transport.read(remote, batch)
        killer.join()
        assert time.monotonic() - started < 15


def test_trio_is_refused_with_a_clear_error() -> None:
    async def enter() -> None:
        async with UcxxTransport():
            pass

    with pytest.raises(TransportError, match="asyncio"):
        anyio.run(enter, backend="trio")
