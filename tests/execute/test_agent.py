"""The Agent end to end over loopback and tcp: handshake, plans, notifications, faults."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

from hybridxfer.errors import ConnectError, IncompatibleLayoutsError, TransferError, TransferTimeout
from hybridxfer.execute import Agent, Peer
from hybridxfer.testing._cross_process import make_plan
from hybridxfer.testing._peer_process import StaticLayout
from hybridxfer.testing.faults import FaultInjectingTransport
from hybridxfer.transport import Transport
from hybridxfer.transport.registry import open_transport

SIZE = 1 << 20
OPTIONS = {"tcp": {"secret": "agent-tests"}, "loopback": {}}


def _transport(kind: str, name: str) -> Transport:
    return open_transport(kind, name=name, **OPTIONS[kind])


@contextlib.asynccontextmanager
async def cluster(kind: str, sources: int = 2, *, d_transport: Transport | None = None,
                  model: str = "m") -> AsyncIterator[tuple[list[Agent], Agent, list[Peer], list[np.ndarray], np.ndarray]]:
    srcs = [np.random.default_rng(i).integers(0, 256, SIZE, dtype=np.uint8) for i in range(sources)]
    dst = np.zeros(SIZE * sources, np.uint8)
    async with contextlib.AsyncExitStack() as stack:
        ps = []
        for i in range(sources):
            p = await stack.enter_async_context(Agent(f"p{i}", transport=_transport(kind, f"p{i}"), role="prefill",
                                                      rank=i, tp_size=sources, layout=StaticLayout(f"p{i}", model)))
            await p.register("src", srcs[i])
            ps.append(p)
        d = await stack.enter_async_context(Agent("d", transport=d_transport or _transport(kind, "d"), role="decode",
                                                  layout=StaticLayout("d", "m")))
        await d.register("dst", dst)
        peers = [await d.connect(p.metadata()) for p in ps]
        yield ps, d, peers, srcs, dst


def _plan(sources: int) -> object:
    return make_plan({r: (0, 0, 0, r * SIZE, SIZE) for r in range(sources)}, dst_blocks={"kv": (3, 4), "ssm": (1,)})


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
async def test_execute_reads_all_sources_and_notifies(kind: str) -> None:
    with anyio.fail_after(30):
        async with cluster(kind) as (ps, d, peers, srcs, dst):
            result = await d.prepare(_plan(2), peers, "req-1").execute(timeout=10)  # type: ignore[arg-type]
            assert np.array_equal(dst, np.concatenate(srcs))
            assert result.bytes == 2 * SIZE and result.notified_ranks == (0, 1)
            for p in ps:
                done = await p.wait_request_done("req-1", timeout=10)
                assert done.peer_name == "d" and done.dst_rank == 0
            stats = d.statistics()
            assert stats.transfers == 1 and stats.bytes == 2 * SIZE and stats.failures == 0
            assert stats.latency_p50 is not None and ps[0].statistics().requests_completed == 1


@pytest.mark.anyio
async def test_completed_requests_iterator_yields_each_once() -> None:
    with anyio.fail_after(30):
        async with cluster("loopback", 1) as ([p], d, peers, _, _):
            stream = p.completed_requests()
            for i in range(3):
                await d.prepare(_plan(1), peers, f"r{i}").execute(timeout=10)  # type: ignore[arg-type]
            got = [(await stream.__anext__()).request_id for _ in range(3)]
            assert got == ["r0", "r1", "r2"]
            with anyio.move_on_after(0.1):
                await stream.__anext__()
                pytest.fail("a completion was delivered twice")


@pytest.mark.anyio
async def test_incompatible_model_refused_before_connecting() -> None:
    with anyio.fail_after(30):
        with pytest.raises(IncompatibleLayoutsError):
            async with cluster("tcp", 1, model="other-model"):
                pass


@pytest.mark.anyio
async def test_same_request_twice_is_refused() -> None:
    with anyio.fail_after(30):
        async with cluster("tcp", 1) as ([p], d, peers, _, _):
            executable = d.prepare(_plan(1), peers, "twice")  # type: ignore[arg-type]
            await executable.execute(timeout=10)
            with pytest.raises(TransferError, match="already completed"):
                await executable.execute(timeout=10)
            with pytest.raises(TransferError):
                d.prepare(_plan(1), peers, "twice")  # type: ignore[arg-type]
            with pytest.raises(ConnectError):
                d.prepare(_plan(2), peers, "other")  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
@pytest.mark.parametrize("fault", ["fail_read", "break_read"])
async def test_read_fault_names_request_rank_and_blocks(kind: str, fault: str) -> None:
    faulty = FaultInjectingTransport(_transport(kind, "d"), **{fault: 2})
    with anyio.fail_after(30):
        async with cluster(kind, d_transport=faulty) as (ps, d, peers, srcs, dst):
            with pytest.raises(TransferError) as info:
                await d.prepare(_plan(2), peers, "bad").execute(timeout=10)  # type: ignore[arg-type]
            err = info.value
            assert err.request_id == "bad" and err.source_rank in (0, 1)  # whichever ran second
            assert err.invalid_blocks == {"kv": (3, 4), "ssm": (1,)}
            with pytest.raises(TransferTimeout):
                await ps[0].wait_request_done("bad", timeout=0.2)  # P was not told: keeps its blocks
            dst[:] = 0
            await d.prepare(_plan(2), peers, "good").execute(timeout=10)  # type: ignore[arg-type]
            assert np.array_equal(dst, np.concatenate(srcs))
            assert d.statistics().failures == 1


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
async def test_stall_past_timeout_is_transfer_timeout(kind: str) -> None:
    faulty = FaultInjectingTransport(_transport(kind, "d"), stall_read=1)
    with anyio.fail_after(30):
        async with cluster(kind, d_transport=faulty) as (_, d, peers, _, _):
            started = anyio.current_time()
            with pytest.raises(TransferTimeout) as info:
                await d.prepare(_plan(2), peers, "slow").execute(timeout=0.3)  # type: ignore[arg-type]
            assert anyio.current_time() - started < 2
            assert info.value.source_rank in (0, 1) and info.value.invalid_blocks
            await d.prepare(_plan(2), peers, "next").execute(timeout=10)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
async def test_lost_notification_times_out_on_p(kind: str) -> None:
    faulty = FaultInjectingTransport(_transport(kind, "d"), drop_notification=2)  # 1 is the hello
    with anyio.fail_after(30):
        async with cluster(kind, 1, d_transport=faulty) as ([p], d, peers, _, _):
            await d.prepare(_plan(1), peers, "lost").execute(timeout=10)  # type: ignore[arg-type]
            with pytest.raises(TransferTimeout) as info:
                await p.wait_request_done("lost", timeout=0.3)
            assert info.value.request_id == "lost"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
async def test_cancelled_execute_can_be_retried(kind: str) -> None:
    with anyio.fail_after(30):
        async with cluster(kind) as (ps, d, peers, srcs, dst):
            executable = d.prepare(_plan(2), peers, "cancel-me")  # type: ignore[arg-type]
            with anyio.CancelScope() as scope:
                scope.cancel()
                await executable.execute(timeout=10)
            assert executable.state == "failed"
            with pytest.raises(TransferTimeout):
                await ps[0].wait_request_done("cancel-me", timeout=0.1)
            await executable.execute(timeout=10)
            assert np.array_equal(dst, np.concatenate(srcs))


@pytest.mark.anyio
async def test_register_raw_pointer_bytearray_and_torch_tensor() -> None:
    import torch
    tensor = torch.arange(1024, dtype=torch.int32)
    raw = np.arange(4096, dtype=np.uint8)
    async with Agent("a", transport="loopback") as agent:
        region = await agent.register("t", tensor)
        assert region.length == 4096 and region.address == tensor.data_ptr() and region.kind == "host"
        assert (await agent.register("raw", (raw.ctypes.data, raw.nbytes))).length == 4096
        assert (await agent.register("ba", bytearray(10))).length == 10
        with pytest.raises(ValueError):
            await agent.register("strided", np.zeros((4, 4), np.uint8)[:, ::2])
        with pytest.raises(TypeError):
            await agent.register("bad", "not memory")
