"""PrefillConnector / DecodeConnector end to end, byte-exact against the oracle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.engine import (
    DecodeConnector,
    PrefillConnector,
    RequestFailed,
    cache_nbytes,
    decode_consumers,
)
from hybridxfer.errors import LayoutError, TransferTimeout
from hybridxfer.layout import Layout, RankLayout, load_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.testing.faults import FaultInjectingTransport
from hybridxfer.synthetic import (
    blocks_for,
    destination_memory,
    expected_destination,
    mismatches,
    source_memory,
)
from hybridxfer.transport import Transport
from hybridxfer.transport.registry import open_transport

ROOT = Path(__file__).resolve().parents[2]
TOY = load_layout(ROOT / "docs" / "examples" / "toy_hybrid.toml")
OPTIONS: dict[str, dict[str, object]] = {"loopback": {}, "tcp": {"secret": "engine-tests"}}
TOKENS = 100


def _transport(kind: str, name: str) -> Transport:
    return open_transport(kind, name=name, **OPTIONS[kind])


@contextlib.asynccontextmanager
async def prefill_engine(layout: Layout, tp: int, kind: str, *, decode_tp: int,
                         tokens: int = TOKENS) -> AsyncIterator[list[PrefillConnector]]:
    async with contextlib.AsyncExitStack() as stack:
        ranks = []
        for r in range(tp):
            rl = layout.for_rank(tp, r, num_blocks=blocks_for(layout, tp, tokens))
            p = await stack.enter_async_context(
                PrefillConnector(rl, name=f"p{r}", transport=_transport(kind, f"p{r}"), decode_tp=decode_tp))
            await p.register_caches(source_memory(rl, tokens))
            ranks.append(p)
        yield ranks


def _d_layout(layout: Layout, tp: int, rank: int, tokens: int = TOKENS) -> RankLayout:
    return layout.for_rank(tp, rank, num_blocks=blocks_for(layout, tp, tokens, rank=rank))


def _expected(prefill: Sequence[PrefillConnector], d: RankLayout, tokens: int = TOKENS) -> dict[str, np.ndarray]:
    chunk = compile_plan([p.layout for p in prefill], d).chunk_tokens
    return expected_destination(d, tokens, chunk)


async def _pull_all(prefill: Sequence[PrefillConnector], layout: Layout, dst_tp: int, kind: str,
                    tokens: int = TOKENS) -> None:
    """Every D rank pulls one request; each is byte-exact; every P rank finishes it."""
    src_tables = contiguous_block_tables(prefill[0].layout, tokens)
    async with contextlib.AsyncExitStack() as stack:
        decoders = []
        for d in range(dst_tp):
            dl = _d_layout(layout, dst_tp, d, tokens)
            dc = await stack.enter_async_context(
                DecodeConnector(dl, name=f"d{d}", transport=_transport(kind, f"d{d}")))
            memory = destination_memory(dl)
            await dc.register_caches(memory)
            assert await dc.connect("P", [p.metadata() for p in prefill]) == tuple(range(len(prefill)))
            decoders.append((dc, dl, memory))

        async def one(dc: DecodeConnector, dl: RankLayout) -> None:
            result = await dc.pull("req", engine="P", src_blocks=src_tables,
                                   dst_blocks=contiguous_block_tables(dl, tokens), num_tokens=tokens, timeout=20)
            assert result.bytes == result.plan.total_bytes > 0

        async with anyio.create_task_group() as tg:
            for dc, dl, _ in decoders:
                tg.start_soon(one, dc, dl)
        for dc, dl, memory in decoders:
            assert mismatches(memory, _expected(prefill, dl, tokens)) == []
            assert dc.failed_requests() == ()
            stats = dc.statistics()
            assert (stats.requests_received, stats.requests_failed, stats.requests_in_flight) == (1, 0, 0)
            assert stats.agent.bytes > 0
        for p in prefill:
            done = await p.wait_request_finished("req", timeout=10)
            expect = decode_consumers(len(prefill), dst_tp, p.layout.rank)
            assert len(done.readers) == expect
            assert p.statistics().requests_finished == 1


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 2), (2, 1), (2, 2)])
async def test_toy_hybrid_heterogeneous_tp_is_byte_exact(kind: str, src_tp: int, dst_tp: int) -> None:
    with anyio.fail_after(30):
        async with prefill_engine(TOY, src_tp, kind, decode_tp=dst_tp) as prefill:
            await _pull_all(prefill, TOY, dst_tp, kind)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # one backend is enough for the larger case
async def test_real_model_jamba_p1_to_d2_over_tcp(anyio_backend: str) -> None:
    layout = load_layout(ROOT / "layouts" / "jamba-v0.1.toml")
    with anyio.fail_after(30):
        async with prefill_engine(layout, 1, "tcp", decode_tp=2, tokens=200) as prefill:
            await _pull_all(prefill, layout, 2, "tcp", tokens=200)


@pytest.mark.anyio
async def test_invalid_blocks_fail_the_request_before_any_byte_moves() -> None:
    with anyio.fail_after(30):
        async with prefill_engine(TOY, 1, "loopback", decode_tp=1) as prefill:
            dl = _d_layout(TOY, 1, 0)
            memory = destination_memory(dl)
            before = {k: v.copy() for k, v in memory.items()}
            async with DecodeConnector(dl, name="d", transport="loopback") as dc:
                await dc.register_caches(memory)
                await dc.connect("P", [prefill[0].metadata()])
                bad = {g: [b + 1000 for b in ids] for g, ids in contiguous_block_tables(dl, TOKENS).items()}
                with pytest.raises(RequestFailed) as info:
                    await dc.pull("bad", engine="P", src_blocks=contiguous_block_tables(prefill[0].layout, TOKENS),
                                  dst_blocks=bad, num_tokens=TOKENS)
                assert info.value.failure.reason == "plan"
                assert info.value.invalid_blocks == {g: tuple(ids) for g, ids in bad.items()}
                failed = dc.failed_requests()
                assert [f.request_id for f in failed] == ["bad"] and dc.failed_requests() == ()
                with pytest.raises(TransferTimeout):
                    await prefill[0].wait_request_finished("bad", timeout=0.2)  # P keeps its blocks
                assert mismatches(memory, before) == []


@pytest.mark.anyio
async def test_unknown_engine_is_a_failed_request() -> None:
    dl = _d_layout(TOY, 1, 0)
    async with DecodeConnector(dl, name="d", transport="loopback") as dc:
        await dc.register_caches(destination_memory(dl))
        with pytest.raises(RequestFailed, match="not connected to engine 'nowhere'"):
            await dc.pull("r", engine="nowhere", src_blocks={}, dst_blocks={"attention.0": [1]})
        [failed] = dc.failed_requests()
        assert failed.invalid_blocks == {"attention.0": (1,)} and failed.reason == "plan"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
async def test_dead_prefill_engine_fails_request_then_retry_on_another_succeeds(kind: str) -> None:
    """P closed after the handshake: the pull fails (never accepted); a retry elsewhere works."""
    with anyio.fail_after(30):
        async with prefill_engine(TOY, 1, kind, decode_tp=1) as good:
            dl = _d_layout(TOY, 1, 0)
            memory = destination_memory(dl)
            async with DecodeConnector(dl, name="d", transport=_transport(kind, "d"), default_timeout=10) as dc:
                await dc.register_caches(memory)
                async with prefill_engine(TOY, 1, kind, decode_tp=1) as doomed:
                    await dc.connect("doomed", [doomed[0].metadata()])
                src = contiguous_block_tables(good[0].layout, TOKENS)
                dst = contiguous_block_tables(dl, TOKENS)
                with pytest.raises(RequestFailed) as info:
                    await dc.pull("r1", engine="doomed", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS)
                assert info.value.failure.reason in ("transfer", "timeout")
                assert info.value.invalid_blocks == {g: tuple(ids) for g, ids in dst.items()}
                await dc.connect("good", [good[0].metadata()])
                await dc.pull("r1", engine="good", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS)
                assert dc.failed_requests() == ()  # the successful retry superseded the failure
                assert mismatches(memory, _expected(good, dl)) == []
                assert dc.statistics().requests_failed == 1


@pytest.mark.anyio
async def test_stalled_read_times_out_and_is_reported() -> None:
    with anyio.fail_after(30):
        async with prefill_engine(TOY, 1, "loopback", decode_tp=1) as prefill:
            dl = _d_layout(TOY, 1, 0)
            stalling = FaultInjectingTransport(_transport("loopback", "d"), stall_read=1)
            async with DecodeConnector(dl, name="d", transport=stalling) as dc:
                await dc.register_caches(destination_memory(dl))
                await dc.connect("P", [prefill[0].metadata()])
                with pytest.raises(RequestFailed) as info:
                    await dc.pull("slow", engine="P", src_blocks=contiguous_block_tables(prefill[0].layout, TOKENS),
                                  dst_blocks=contiguous_block_tables(dl, TOKENS), num_tokens=TOKENS, timeout=0.2)
                assert info.value.failure.reason == "timeout"
                assert isinstance(info.value.__cause__, TransferTimeout)
                assert [f.reason for f in dc.failed_requests()] == ["timeout"]


@pytest.mark.anyio
async def test_cancelled_pull_is_recorded_as_failed() -> None:
    with anyio.fail_after(30):
        async with prefill_engine(TOY, 1, "loopback", decode_tp=1) as prefill:
            dl = _d_layout(TOY, 1, 0)
            stalling = FaultInjectingTransport(_transport("loopback", "d"), stall_read=1)
            async with DecodeConnector(dl, name="d", transport=stalling) as dc:
                await dc.register_caches(destination_memory(dl))
                await dc.connect("P", [prefill[0].metadata()])
                with anyio.move_on_after(0.2):
                    await dc.pull("gone", engine="P", src_blocks=contiguous_block_tables(prefill[0].layout, TOKENS),
                                  dst_blocks=contiguous_block_tables(dl, TOKENS), num_tokens=TOKENS)
                [failed] = dc.failed_requests()
                assert (failed.request_id, failed.reason) == ("gone", "cancelled")
                assert dc.statistics().requests_in_flight == 0


@pytest.mark.anyio
async def test_register_caches_reports_every_mismatch_and_registers_nothing() -> None:
    dl = _d_layout(TOY, 1, 0)
    memory: Mapping[str, object] = {
        "kv_cache.0": np.zeros(10, np.uint8),     # too small
        "bogus": np.zeros(10, np.uint8),          # not in the layout
    }                                             # kv_cache.1 missing
    async with DecodeConnector(dl, name="d", transport="loopback") as dc:
        with pytest.raises(LayoutError) as info:
            await dc.register_caches(memory)
        paths = sorted(p.path or "" for p in info.value.problems)
        assert paths == ["caches.bogus", "caches.kv_cache.0", "caches.kv_cache.1"]
        assert dc.agent.region_names == ()


def test_cache_nbytes_accepts_what_the_agent_registers() -> None:
    import torch
    assert cache_nbytes(np.zeros((4, 8), np.float32)) == 128
    assert cache_nbytes(bytearray(7)) == 7
    assert cache_nbytes((12345, 64)) == 64
    assert cache_nbytes(torch.zeros(3, 5, dtype=torch.bfloat16)) == 30
    with pytest.raises(TypeError):
        cache_nbytes("not memory")


@pytest.mark.anyio
async def test_torch_tensors_as_caches() -> None:
    import torch
    with anyio.fail_after(30):
        async with prefill_engine(TOY, 2, "loopback", decode_tp=1) as prefill:
            dl = _d_layout(TOY, 1, 0)
            arrays = destination_memory(dl)
            tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}  # shares memory
            async with DecodeConnector(dl, name="d", transport="loopback") as dc:
                await dc.register_caches(tensors)
                await dc.connect("P", [p.metadata() for p in prefill])
                await dc.pull("t", engine="P", src_blocks=contiguous_block_tables(prefill[0].layout, TOKENS),
                              dst_blocks=contiguous_block_tables(dl, TOKENS), num_tokens=TOKENS)
            assert mismatches(arrays, _expected(prefill, dl)) == []


@pytest.mark.anyio
async def test_expect_overrides_reader_count() -> None:
    with anyio.fail_after(30):
        async with prefill_engine(TOY, 1, "loopback", decode_tp=1) as prefill:
            p = prefill[0]
            p.expect("req", 2)
            await _pull_one(p, "d0")
            with pytest.raises(TransferTimeout):
                await p.wait_request_finished("req", timeout=0.1)
            assert p.statistics().requests_partially_read == 1
            await _pull_one(p, "d1")
            done = await p.wait_request_finished("req", timeout=10)
            assert done.readers == ("d0", "d1")
            stream = p.finished_requests()
            assert (await stream.__anext__()).request_id == "req"


async def _pull_one(p: PrefillConnector, name: str) -> None:
    dl = _d_layout(TOY, 1, 0)
    async with DecodeConnector(dl, name=name, transport="loopback") as dc:
        await dc.register_caches(destination_memory(dl))
        await dc.connect("P", [p.metadata()])
        await dc.pull("req", engine="P", src_blocks=contiguous_block_tables(p.layout, TOKENS),
                      dst_blocks=contiguous_block_tables(dl, TOKENS), num_tokens=TOKENS)


@pytest.mark.parametrize(("src_tp", "dst_tp", "want"), [
    (1, 1, [1]), (1, 4, [4]), (2, 4, [2, 2]), (4, 2, [1, 1, 1, 1]), (4, 1, [1, 1, 1, 1]),
])
def test_decode_consumers(src_tp: int, dst_tp: int, want: list[int]) -> None:
    assert [decode_consumers(src_tp, dst_tp, r) for r in range(src_tp)] == want


def test_public_names_are_sorted_and_exported() -> None:
    import hybridxfer.engine as engine

    assert list(engine.__all__) == sorted(engine.__all__)
    assert all(hasattr(engine, n) for n in engine.__all__)
