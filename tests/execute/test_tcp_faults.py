"""TCP faults with real peers: P stops (SIGSTOP), P closes mid-transfer, nothing leaks.

P killed at 0/50/99 % and P restarted are covered by the conformance suite
(tests/transport/test_conformance.py::TestTcpConformance).
"""

from __future__ import annotations

import gc
import os
import signal
import threading

import anyio
import anyio.abc
import numpy as np
import pytest

from hybridxfer.errors import TransferError, TransferTimeout
from hybridxfer.execute import Agent
from hybridxfer.testing._cross_process import PeerProcess, make_plan
from hybridxfer.testing._peer_process import StaticLayout, pattern_bytes

OPTIONS = {"secret": "fault-tests"}


def _agent(name: str) -> Agent:
    return Agent(name, transport="tcp", transport_options=OPTIONS, layout=StaticLayout(name, "conformance-model"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_stalled_peer_times_out_then_healthy_peer_works() -> None:
    size = 64 << 20
    dst = np.zeros(size, np.uint8)
    with anyio.fail_after(60):
        async with _agent("d") as d, PeerProcess.spawn("tcp", OPTIONS, size=size, seed=3) as stalled, \
                PeerProcess.spawn("tcp", OPTIONS, size=size, seed=4, name="healthy") as healthy:
            await d.register("dst", dst)
            stalled_peer = await d.connect(stalled.metadata)
            healthy_peer = await d.connect(healthy.metadata)
            plan = make_plan({0: (0, 0, 0, 0, size)})
            os.kill(stalled.process.pid, signal.SIGSTOP)
            try:
                started = anyio.current_time()
                with pytest.raises(TransferTimeout) as info:
                    await d.prepare(plan, {0: stalled_peer}, "stalled").execute(timeout=0.5)
                assert anyio.current_time() - started < 3
                assert info.value.request_id == "stalled" and info.value.source_rank == 0
            finally:
                os.kill(stalled.process.pid, signal.SIGCONT)
            await d.prepare(plan, {0: healthy_peer}, "healthy").execute(timeout=20)
            assert np.array_equal(dst, pattern_bytes(4, size))


@pytest.mark.anyio
async def test_peer_closing_mid_transfer_is_transfer_error() -> None:
    size = 128 << 20
    # every other source piece: the reply is 32 chunks of 1,023 views, and the server yields
    # between chunks, so the close lands mid-reply (one contiguous run can leave in a
    # single sendmsg while the reader drains it)
    src = np.random.default_rng(5).integers(0, 256, 2 * size, dtype=np.uint8)
    dst = np.zeros(size, np.uint8)
    piece = 4096
    n = size // piece
    close_now = anyio.Event()

    async def serve_p(*, task_status: anyio.abc.TaskStatus[bytes]) -> None:
        async with _agent("p") as p:
            await p.register("src", src)
            task_status.started(p.metadata())
            await close_now.wait()  # leaving the block closes every connection mid-reply

    with anyio.fail_after(60):
        async with _agent("d") as d, anyio.create_task_group() as tg:
            await d.register("dst", dst)
            peer = await d.connect(await tg.start(serve_p))
            plan = make_plan({0: (0, np.arange(n) * 2 * piece, 0, np.arange(n) * piece, piece)})
            outcome: list[BaseException | None] = []

            async def run() -> None:
                try:
                    await d.prepare(plan, [peer], "closing").execute(timeout=20)
                    outcome.append(None)
                except TransferError as exc:
                    outcome.append(exc)

            tg.start_soon(run)
            while not outcome and dst[size // 4] == 0 and dst[size // 4 + 1] == 0:
                await anyio.sleep(0)
            close_now.set()
        assert isinstance(outcome[0], TransferError), outcome


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.anyio
async def test_no_leak_across_repeated_executions() -> None:
    """200 executions (with some cancelled): fds, threads, tasks and RSS stay flat."""
    size = 256 << 10
    src = np.random.default_rng(6).integers(0, 256, size, dtype=np.uint8)
    dst = np.zeros(size, np.uint8)

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    with anyio.fail_after(120):
        async with _agent("d") as d, _agent("p") as p:
            await p.register("src", src)
            await d.register("dst", dst)
            peer = await d.connect(p.metadata())
            plan = make_plan({0: (0, 0, 0, 0, size)})
            marks = []
            for i in range(200):
                if i % 10 == 5:
                    with anyio.move_on_after(0):
                        await d.prepare(plan, [peer], f"r{i}").execute(timeout=10)
                else:
                    await d.prepare(plan, [peer], f"r{i}").execute(timeout=10)
                    await p.wait_request_done(f"r{i}", timeout=10)
                if i in (50, 199):
                    gc.collect()
                    marks.append((_open_fds(), threading.active_count(), len(_tasks()), rss()))
            assert np.array_equal(dst, src)
            (fd0, th0, tk0, rss0), (fd1, th1, tk1, rss1) = marks
            assert fd1 <= fd0 + 2, (fd0, fd1)
            assert th1 <= th0, (th0, th1)
            assert tk1 <= tk0, (tk0, tk1)
            assert rss1 - rss0 < 32 << 20, (rss0, rss1)
    baseline_tasks = len(_tasks())
    assert baseline_tasks <= 2  # only the test itself (and the runner) remain


def _tasks() -> set[object]:
    import asyncio

    return {t for t in asyncio.all_tasks() if not t.done()}
