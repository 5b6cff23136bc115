"""Push streams into a decode rank whose transport requires grants.

D grants each writing P rank exactly the D bytes of its own rows, for as long as the
stream runs. Real agents over real tcp (the first test over ucxx too), two P ranks writing slices of the same D blocks:
the push is byte-exact at every step; a P rank writing outside its rows (the other rank's
bytes, bytes outside the request) is refused with nothing written while its own rows are
accepted; once the stream ended — completed or cancelled — every late write is refused; a
grant names the writer's identity, so a stream told the wrong one fails with nothing of
that rank written.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs
import numpy as np
import numpy.typing as npt
import pytest

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import GrantRefusedError, StreamedTransferError
from hybridxfer.execute import Agent, StreamedTransfer
from hybridxfer.layout import load_layout
from hybridxfer.plan import Readiness, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, source_memory
from hybridxfer.transport import GrantTable, PeerHandle, writable
from hybridxfer.transport.registry import open_transport

from ._stream_support import Side, differing_regions, step_image

TOY = load_layout(Path(__file__).resolve().parents[2] / "docs" / "examples" / "toy_hybrid.toml")
TOKENS = 100
OPTIONS: dict[str, dict[str, object]] = {"tcp": {"secret": "stream-grant-tests"}, "ucxx": {"read_timeout": 30.0}}
U8 = npt.NDArray[np.uint8]


@attrs.define
class Cluster:
    ps: list[Agent]
    p_memory: list[dict[str, U8]]
    side: Side
    grants: GrantTable
    to_d: list[PeerHandle]  # each P rank's own connection to D, for writes of its own making


@contextlib.asynccontextmanager
async def cluster(src_tp: int = 2, kind: str = "tcp") -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        ps, p_memory = [], []
        for r in range(src_tp):
            rl = TOY.for_rank(src_tp, r, num_blocks=blocks_for(TOY, src_tp, TOKENS))
            p = await stack.enter_async_context(Agent(
                f"p{r}", transport=open_transport(kind, name=f"p{r}", **OPTIONS[kind]), role="prefill", rank=r,
                tp_size=src_tp, layout=rl))
            memory = source_memory(rl, TOKENS)
            for name, mem in memory.items():
                await p.register(name, mem)
            ps.append(p)
            p_memory.append(memory)
        dl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
        grants = GrantTable()
        d = await stack.enter_async_context(Agent(
            "d0", transport=open_transport(kind, name="d0", require_grants=True, grants=grants, **OPTIONS[kind]),
            role="decode", rank=0, tp_size=1, layout=dl))
        memory = destination_memory(dl)
        for name, mem in memory.items():
            await d.register(name, mem)
        peers = [await d.connect(p.metadata()) for p in ps]
        chunk = compile_plan(d.source_layouts(peers), dl).chunk_tokens
        side = Side(d, dl, memory, peers, contiguous_block_tables(dl, TOKENS),
                    contiguous_block_tables(ps[0].layout, TOKENS), destination_memory(dl),  # type: ignore[arg-type]
                    expected_destination(dl, TOKENS, chunk))
        to_d = [await p.transport.connect(d.transport.local_metadata()) for p in ps]
        yield Cluster(ps, p_memory, side, grants, to_d)


def _push(c: Cluster, request_id: str, **options: object) -> StreamedTransfer:
    s = c.side
    return s.d.plan_stream(s.peers, request_id=request_id, src_blocks=s.src_blocks, dst_blocks=s.dst_blocks,
                           num_tokens=TOKENS, mode="push", timeout=20, **options)  # type: ignore[arg-type]


def _rows_of(st: StreamedTransfer, c: Cluster, rank: int, group: str | None = None) -> Descriptors:
    """P rank ``rank``'s rows of the plan (of one layer group), as that rank writes them
    (its regions, D's)."""
    plan = st.plan
    d = plan.descriptors if group is None else st.schedule.group_rows(group)
    mine = d.take(np.flatnonzero(d.src_rank == rank))
    src = [list(c.ps[rank].region_names).index(n) for n in plan.src_region_names]
    dst = [list(c.side.d.region_names).index(n) for n in plan.dst_region_names]
    return attrs.evolve(mine, src_region=np.array(src, np.int64)[mine.src_region],
                        dst_region=np.array(dst, np.int64)[mine.dst_region])


def _one(rows: Descriptors, i: int = 0, *, src_offset: int | None = None) -> Descriptors:
    row = rows.take(np.array([i]))
    return row if src_offset is None else attrs.evolve(row, src_offset=np.array([src_offset], np.int64))


def _snapshot(side: Side) -> dict[str, U8]:
    return {k: v.copy() for k, v in side.memory.items()}


async def _refused(c: Cluster, rank: int, rows: Descriptors) -> None:
    before = _snapshot(c.side)
    with pytest.raises(GrantRefusedError):
        await writable(c.ps[rank].transport).write(c.to_d[rank], rows)
    assert differing_regions(c.side.memory, before) == []  # nothing written


@pytest.mark.anyio
@pytest.mark.parametrize(("anyio_backend", "kind"), [("asyncio", "tcp"), ("trio", "tcp"), ("asyncio", "ucxx")])
async def test_push_into_a_decoder_that_requires_grants_is_byte_exact_and_bounded_to_each_ranks_rows(
        anyio_backend: str, kind: str) -> None:
    with anyio.fail_after(40):
        async with cluster(kind=kind) as c:
            side = c.side
            st = _push(c, "req")
            by_peer = {g.peer: g for g in c.grants.grants()}
            assert sorted(by_peer) == ["p0", "p1"] and all(g.access == "write" for g in by_peer.values())
            assert {p: g.ranges.total_bytes for p, g in by_peer.items()} == {
                f"p{r}": n for r, n in st.plan.statistics.bytes_by_source.items()}
            own, other = _rows_of(st, c, 0), _rows_of(st, c, 1)
            # P0 may write its own rows (here: the right bytes of the first group, early), not
            # P1's, nor past the request
            early = _rows_of(st, c, 0, st.schedule.groups[0].name)
            await writable(c.ps[0].transport).write(c.to_d[0], _one(early))
            assert differing_regions(side.memory, side.background) != []
            await _refused(c, 0, attrs.evolve(_one(other), src_region=_one(own).src_region,
                                              src_offset=_one(own).src_offset))
            region = int(own.dst_region[0])
            end = int(side.memory[side.d.region_names[region]].nbytes)
            covered = (own.dst_region == region) & (own.dst_offset + own.length == end)
            assert not covered.any()  # the region's last byte is nobody's row
            await _refused(c, 0, attrs.evolve(_one(own), dst_offset=np.array([end - 1], np.int64),
                                              length=np.array([1], np.int64)))
            landed: list[str] = []
            for group in st.schedule.groups:
                for p in c.ps:
                    p.mark_ready("req", Readiness(frozenset(group.layers), TOKENS))
                for layer in group.layers:
                    await st.wait_for_layer(layer, timeout=20)
                landed.extend(group.layers)
                assert differing_regions(side.memory, step_image(side, landed)) == [], group.name
            await st.wait(timeout=20)
            assert differing_regions(side.memory, side.final) == []
            assert c.grants.grants() == ()  # withdrawn as the stream completed
            # a late write — P0 reused the source block for something else — is refused
            c.p_memory[0][c.ps[0].region_names[int(own.src_region[0])]][:] ^= 0xFF
            await _refused(c, 0, _one(own))


@pytest.mark.anyio
async def test_a_cancelled_push_withdraws_its_grants_at_once() -> None:
    with anyio.fail_after(30):
        async with cluster(src_tp=1) as c:
            st = _push(c, "req")
            own = _rows_of(st, c, 0)
            first = st.schedule.groups[0]
            c.ps[0].mark_ready("req", Readiness(frozenset(first.layers), TOKENS))
            await st.wait_for_layer(first.layers[0], timeout=20)
            assert len(c.grants.grants()) == 1
            st.cancel()
            assert c.grants.grants() == ()
            await _refused(c, 0, _one(own, len(own) - 1))
            with pytest.raises(StreamedTransferError):
                await st.wait(timeout=5)


@pytest.mark.anyio
async def test_a_grant_binds_the_writers_identity() -> None:
    """Granted to another identity than the one P authenticates as, P's writes are refused:
    the stream fails and nothing of P's reached D."""
    with anyio.fail_after(30):
        async with cluster(src_tp=1) as c:
            st = _push(c, "req", writers={0: "not-p0"})
            assert [g.peer for g in c.grants.grants()] == ["not-p0"]
            c.ps[0].mark_ready("req", Readiness(frozenset(c.side.layout.layers), TOKENS))
            with pytest.raises(StreamedTransferError) as info:
                await st.wait(timeout=20)
            assert "grant refused" in str(info.value) and st.landed_layers == frozenset()
            assert differing_regions(c.side.memory, c.side.background) == []
            assert c.grants.grants() == ()
