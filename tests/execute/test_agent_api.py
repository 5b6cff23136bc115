"""The agent's API contract: typed registration errors, not-started vs closed, per-request
progress, and P-side byte counts from D's completion notices."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

from hybridxfer.errors import (
    ClosedTransportError,
    HybridXferError,
    NotStartedError,
    RegistrationError,
    TransferError,
)
from hybridxfer.execute import Agent, Peer, TransferProgress
from hybridxfer.testing._cross_process import make_plan
from hybridxfer.testing._peer_process import StaticLayout
from hybridxfer.transport.registry import open_transport

ROW = 4096
ROWS = 64  # per source rank: 64 rows of 4 KiB, 256 KiB


@contextlib.asynccontextmanager
async def pair(sources: int = 2) -> AsyncIterator[tuple[list[Agent], Agent, list[Peer], list[np.ndarray], np.ndarray]]:
    srcs = [np.random.default_rng(10 + i).integers(0, 256, ROW * ROWS, dtype=np.uint8) for i in range(sources)]
    dst = np.zeros(ROW * ROWS * sources, np.uint8)
    async with contextlib.AsyncExitStack() as stack:
        ps = []
        for i in range(sources):
            p = await stack.enter_async_context(Agent(f"p{i}", transport="loopback", role="prefill", rank=i,
                                                      tp_size=sources, layout=StaticLayout(f"p{i}", "m")))
            await p.register("src", srcs[i])
            ps.append(p)
        d = await stack.enter_async_context(Agent("d", transport="loopback", role="decode",
                                                  layout=StaticLayout("d", "m")))
        await d.register("dst", dst)
        yield ps, d, [await d.connect(p.metadata()) for p in ps], srcs, dst


def _rows_plan(sources: int) -> object:
    """Every source rank's buffer, row by row (ROWS descriptors each), rank after rank in D."""
    offsets = np.arange(ROWS, dtype=np.int64) * ROW
    return make_plan({r: (0, offsets, 0, r * ROW * ROWS + offsets, ROW) for r in range(sources)})


# -- registration --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_registering_a_name_twice_is_a_registration_error_and_registers_nothing() -> None:
    with anyio.fail_after(10):
        async with Agent("a", transport="loopback") as agent:
            first = np.zeros(64, np.uint8)
            await agent.register("kv", first)
            with pytest.raises(RegistrationError, match="'kv' is already registered on agent 'a'") as info:
                await agent.register("kv", np.zeros(128, np.uint8))
            assert isinstance(info.value, HybridXferError) and isinstance(info.value, ValueError)
            assert agent.region_names == ("kv",)


@pytest.mark.anyio
async def test_memory_that_is_not_one_writable_range_is_a_registration_error() -> None:
    import torch

    strided = np.zeros((4, 4), np.uint8)[:, ::2]
    read_only = np.zeros(16, np.uint8)
    read_only.flags.writeable = False
    tensor = torch.zeros(4, 4, dtype=torch.float32).t()
    with anyio.fail_after(10):
        async with Agent("a", transport="loopback") as agent:
            for name, memory, why in (("strided", strided, "not contiguous"), ("ro", read_only, "read-only"),
                                      ("t", tensor, "not contiguous")):
                with pytest.raises(RegistrationError, match=f"region {name!r}: .*{why}"):
                    await agent.register(name, memory)
            with pytest.raises(TypeError):
                await agent.register("text", "not memory")
            assert agent.region_names == ()
            assert (await agent.register("ok", np.zeros(8, np.uint8))).length == 8


# -- lifecycle -------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_an_agent_not_entered_says_so_and_a_closed_one_says_closed() -> None:
    agent = Agent("life", transport="loopback")
    with pytest.raises(NotStartedError, match="'life' is not started"):
        await agent.register("kv", np.zeros(8, np.uint8))
    with pytest.raises(NotStartedError):
        agent.metadata()
    with pytest.raises(NotStartedError):
        await agent.wait_request_done("r", timeout=1)
    with anyio.fail_after(10):
        async with agent:
            assert agent.metadata()
        with pytest.raises(ClosedTransportError, match="'life' is closed"):
            agent.metadata()
        with pytest.raises(ClosedTransportError, match="cannot be re-entered"):
            await agent.__aenter__()
        await agent.aclose()  # idempotent


@pytest.mark.anyio
async def test_closing_wakes_a_waiter_with_closed_transport_error() -> None:
    outcome: list[BaseException] = []
    with anyio.fail_after(10):
        agent = Agent("p", transport="loopback")
        async with anyio.create_task_group() as tg:
            async with agent:

                async def wait() -> None:
                    try:
                        await agent.wait_request_done("never", timeout=None)
                    except ClosedTransportError as exc:
                        outcome.append(exc)

                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
    assert len(outcome) == 1 and "agent 'p' is closed" in str(outcome[0])


# -- progress --------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_progress_reports_every_landed_byte_once_in_steps() -> None:
    seen: list[TransferProgress] = []
    total = 2 * ROW * ROWS
    with anyio.fail_after(20):
        async with pair() as (ps, d, peers, srcs, dst):
            executable = d.prepare(_rows_plan(2), peers, "req-p",  # type: ignore[arg-type]
                                   on_progress=seen.append, progress_step_bytes=16 * ROW)
            result = await executable.execute(timeout=10)
    assert np.array_equal(dst, np.concatenate(srcs))
    assert result.bytes == total
    assert [p.bytes_done for p in seen] == [16 * ROW * k for k in range(1, 9)]  # 4 steps per rank, 2 ranks
    assert {p.request_id for p in seen} == {"req-p"} and {p.bytes_total for p in seen} == {total}
    assert seen[-1].fraction == 1.0


@pytest.mark.anyio
async def test_without_a_step_progress_comes_once_per_read() -> None:
    seen: list[int] = []
    with anyio.fail_after(20):
        async with pair() as (_, d, peers, _, _):
            await d.prepare(_rows_plan(2), peers, "req-q",  # type: ignore[arg-type]
                            on_progress=lambda p: seen.append(p.bytes_done)).execute(timeout=10)
    assert seen == [ROW * ROWS, 2 * ROW * ROWS]


@pytest.mark.anyio
async def test_a_failing_progress_callback_fails_the_transfer_and_notifies_nobody() -> None:
    def explode(progress: TransferProgress) -> None:
        raise RuntimeError("callback broke")

    with anyio.fail_after(20):
        async with pair(1) as ([p], d, peers, _, _):
            executable = d.prepare(_rows_plan(1), peers, "req-x", on_progress=explode)  # type: ignore[arg-type]
            with pytest.raises(TransferError) as info:
                await executable.execute(timeout=10)
            assert isinstance(info.value.__cause__, RuntimeError) and info.value.request_id == "req-x"
            assert d.statistics().failures == 1 and p.statistics().requests_completed == 0


# -- P-side counts ----------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_p_counts_the_bytes_each_d_reported_reading_from_it() -> None:
    with anyio.fail_after(20):
        async with pair() as (ps, d, peers, _, _):
            result = await d.prepare(_rows_plan(2), peers, "req-b").execute(timeout=10)  # type: ignore[arg-type]
            for p in ps:
                done = await p.wait_request_done("req-b", timeout=10)
                assert done.bytes == ROW * ROWS and done.peer_name == "d"
                assert done.seconds == result.seconds > 0  # D's transfer time, as D measured it
            stats = [p.statistics() for p in ps]
            assert [s.bytes_served for s in stats] == [ROW * ROWS, ROW * ROWS]
            assert [s.requests_completed for s in stats] == [1, 1] and [s.bytes for s in stats] == [0, 0]
            assert d.statistics().bytes == 2 * ROW * ROWS and d.statistics().bytes_served == 0
