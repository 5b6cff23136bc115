"""Load and soak: many concurrent hybrid requests, seeded random faults, flat resources.

Why: the bugs that hang serving engines under load (a lost notification among 64, a
stalled read holding a slot, a leaked registration per request) never show in a test
that moves one request. Everything here is bounded in time and checks *every* byte of
every successful transfer, and the type of every failure.
"""

from __future__ import annotations

import contextlib
import functools
import gc

import anyio
import pytest

from hybridxfer.errors import TransferError, TransferTimeout
from hybridxfer.execute import Agent
from hybridxfer.layout import loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import request_tables
from hybridxfer.testing._hybrid_check import spawn_hybrid_rank
from hybridxfer.testing.soak import RandomFaultTransport, resource_snapshot, wait_settled
from tests.reliability._support import (
    OPTIONS,
    blank,
    differences,
    expected_after,
    hybrid_text,
    hybrid_world,
    rank_layout,
    transport,
)

CONCURRENT = 64
P_TP = 4
TOKENS = 40


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["tcp", "nixl"])
async def test_64_concurrent_requests_from_4_ranks(kind: str) -> None:
    """64 requests at once, each fanned in from 4 P rank processes (P TP=4 -> D TP=1) into
    its own destination blocks: all 64 land byte-exact and every P rank hears of every
    request it served exactly once."""
    text = hybrid_text(kv_heads=4, n_groups=4)
    layout = loads_layout(text)
    dst = rank_layout(layout, 1, 0, TOKENS, requests=CONCURRENT)
    memory = blank(dst)
    tables = [request_tables(dst, TOKENS, i) for i in range(CONCURRENT)]
    with anyio.fail_after(150):
        async with contextlib.AsyncExitStack() as stack:
            ranks = [await stack.enter_async_context(spawn_hybrid_rank(
                text, tp=P_TP, rank=r, tokens=TOKENS, transport=kind, options=OPTIONS[kind])) for r in range(P_TP)]
            d = await stack.enter_async_context(Agent("d", transport=kind, transport_options=OPTIONS[kind],
                                                      role="decode", layout=dst))
            for name in dst.region_names:
                await d.register(name, memory[name])
            peers = [await d.connect(r.metadata) for r in ranks]
            src_tables = contiguous_block_tables(d.source_layouts(peers)[0], TOKENS)
            plans = [d.plan(peers, request_id=f"load-{i}", src_blocks=src_tables, dst_blocks=tables[i],
                            num_tokens=TOKENS) for i in range(CONCURRENT)]
            assert plans[0].plan.source_ranks == tuple(range(P_TP))
            async with anyio.create_task_group() as tg:
                for executable in plans:
                    tg.start_soon(functools.partial(executable.execute, timeout=60))
            chunk = compile_plan(d.source_layouts(peers), dst).chunk_tokens
            assert not differences(memory, expected_after(dst, TOKENS, chunk, tables))
            for rank in (ranks[r] for r in plans[0].plan.notify_ranks):
                seen = set()
                for _ in range(CONCURRENT):
                    with anyio.fail_after(30):
                        line = await rank.line()
                    assert line.startswith("DONE "), line
                    seen.add(line.split()[1])
                assert seen == {f"load-{i}" for i in range(CONCURRENT)}
            assert d.statistics().transfers == CONCURRENT and d.statistics().failures == 0


@pytest.mark.anyio
async def test_soak_with_seeded_random_faults() -> None:
    """400 hybrid requests (P TP=2 -> D TP=1, tcp) with reads failing, breaking half-way and
    stalling past the deadline at random (seed 1234): every success is byte-exact, every
    failure a ``TransferError`` naming exactly the request's blocks, and the counts add up."""
    faulty = RandomFaultTransport(transport("tcp", "d"), seed=1234, stall_seconds=30.0)
    outcomes = {"ok": 0, "failed": 0, "timeout": 0}
    with anyio.fail_after(90):
        async with hybrid_world("tcp", d_transport=faulty) as w:
            src = contiguous_block_tables(w.d.source_layouts(w.peers)[0], w.tokens)
            dst = contiguous_block_tables(w.dst, w.tokens)
            want = expected_after(w.dst, w.tokens, w.chunk, [dst])
            faulty.p_fail, faulty.p_break, faulty.p_stall = 0.04, 0.04, 0.01
            for i in range(400):
                w.reset()
                executable = w.d.plan(w.peers, request_id=f"soak-{i}", src_blocks=src, dst_blocks=dst,
                                      num_tokens=w.tokens)
                try:
                    await executable.execute(timeout=0.3)
                except TransferTimeout as exc:
                    assert exc.invalid_blocks == {g: tuple(ids) for g, ids in dst.items()}
                    outcomes["timeout"] += 1
                except TransferError as exc:
                    assert exc.invalid_blocks == {g: tuple(ids) for g, ids in dst.items()}
                    assert exc.request_id == f"soak-{i}"
                    outcomes["failed"] += 1
                else:
                    assert not differences(w.memory, want), f"request {i} reported successful but differs"
                    outcomes["ok"] += 1
    assert sum(outcomes.values()) == 400
    assert outcomes["timeout"] >= 1 and outcomes["failed"] >= 10 and outcomes["ok"] >= 300, (outcomes, faulty.injected)
    assert outcomes["timeout"] <= faulty.injected["stall"]
    assert outcomes["failed"] <= faulty.injected["fail"] + faulty.injected["break"]


@pytest.mark.anyio
@pytest.mark.parametrize(("kind", "executions"), [("tcp", 1000), ("nixl", 300), ("ucxx", 300)])
async def test_resources_flat_across_executions(kind: str, executions: int) -> None:
    """``executions`` hybrid requests, one in ten cancelled part-way: file descriptors,
    threads, tasks, RSS and registrations are the same at the end as after the first
    hundred, and P heard of every request that succeeded."""
    with anyio.fail_after(150):
        async with hybrid_world(kind) as w:
            src = contiguous_block_tables(w.d.source_layouts(w.peers)[0], w.tokens)
            dst = contiguous_block_tables(w.dst, w.tokens)
            regions = w.d.region_names
            baseline = resource_snapshot()
            for i in range(executions):
                executable = w.d.plan(w.peers, request_id=f"r{i}", src_blocks=src, dst_blocks=dst,
                                      num_tokens=w.tokens)
                if i % 10 == 5:
                    with anyio.move_on_after(0):
                        await executable.execute(timeout=30)
                    continue
                await executable.execute(timeout=30)
                for p in w.ps:
                    await p.wait_request_done(f"r{i}", timeout=30)
                if i == 99:
                    gc.collect()
                    baseline = resource_snapshot()
            gc.collect()
            after = await wait_settled(baseline, fds=2)
            assert not after.grew_beyond(baseline, fds=2), after.grew_beyond(baseline, fds=2)
            assert w.d.region_names == regions
            stats = w.d.statistics()
            assert stats.transfers == executions - executions // 10 and stats.failures == 0
            assert sum(p.statistics().requests_completed for p in w.ps) == 2 * stats.transfers
