"""Agent-level faults for every transport: a lost notification, a P restarted with a new layout.

Why per transport: NIXL and UCXX deliver notifications and handle reconnects in their own
native ways; the guarantees (P's wait ends in a typed timeout while D holds valid bytes;
a restarted P with another model is refused at the handshake, one with another layout of
the same model is planned against its *new* layout) must hold whichever one carries them.
"""

from __future__ import annotations

import anyio
import pytest

from hybridxfer.errors import IncompatibleLayoutsError, TransferError, TransferTimeout
from hybridxfer.execute import Agent
from hybridxfer.layout import loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.testing._hybrid_check import spawn_hybrid_rank
from hybridxfer.testing.faults import FaultInjectingTransport
from tests.reliability._support import (
    CROSS_PROCESS,
    OPTIONS,
    blank,
    differences,
    expected_after,
    hybrid_text,
    hybrid_world,
    rank_layout,
    transport,
)

TOKENS = 40


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["loopback", *CROSS_PROCESS])
async def test_lost_notification(kind: str) -> None:
    """The 'done' notification is lost: D's bytes are valid, P's wait is a typed timeout
    naming the request, and the next request is notified normally."""
    lossy = FaultInjectingTransport(transport(kind, "d"), drop_notification=3)  # 1, 2: the hellos
    with anyio.fail_after(60):
        async with hybrid_world(kind, d_transport=lossy) as w:
            src = contiguous_block_tables(w.d.source_layouts(w.peers)[0], w.tokens)
            dst = contiguous_block_tables(w.dst, w.tokens)
            result = await w.d.plan(w.peers, request_id="lost", src_blocks=src, dst_blocks=dst, num_tokens=w.tokens).execute(timeout=30)
            assert not differences(w.memory, expected_after(w.dst, w.tokens, w.chunk, [dst]))
            assert result.notified_ranks == (0, 1)  # D cannot tell: the loss is silent
            lost = 0
            for p in w.ps:
                try:
                    await p.wait_request_done("lost", timeout=0.5)
                except TransferTimeout as exc:
                    assert exc.request_id == "lost"
                    lost += 1
            assert lost == 1, "exactly the dropped notification must be missing"
            w.reset()
            await w.d.plan(w.peers, request_id="next", src_blocks=src, dst_blocks=dst, num_tokens=w.tokens).execute(timeout=30)
            for p in w.ps:
                assert (await p.wait_request_done("next", timeout=10)).request_id == "next"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CROSS_PROCESS)
async def test_restart_with_new_layout(kind: str) -> None:
    """P (a real process) is restarted three times: same layout, another model, another
    layout of the same model. Stale plans fail typed; another model is refused at
    connect; a new layout is used for the next plan, byte-exact against the oracle."""
    base = hybrid_text()
    same_model_new_layout = hybrid_text(kernel=32)  # kernel block 32 instead of 16: same model digest
    other_model = hybrid_text(head_dim=32)
    dst_layout = rank_layout(loads_layout(base), 1, 0, TOKENS)
    memory = blank(dst_layout)
    dst_tables = contiguous_block_tables(dst_layout, TOKENS)
    with anyio.fail_after(120):
        async with Agent("d", transport=kind, transport_options=OPTIONS[kind], role="decode", layout=dst_layout) as d:
            for name in dst_layout.region_names:
                await d.register(name, memory[name])

            async def pull(text: str, request_id: str) -> None:
                async with spawn_hybrid_rank(text, tp=1, rank=0, tokens=TOKENS, transport=kind,
                                             options=OPTIONS[kind]) as proc:
                    peer = await d.connect(proc.metadata)
                    src_layouts = d.source_layouts([peer])
                    executable = d.plan([peer], request_id=request_id,
                                        src_blocks=contiguous_block_tables(src_layouts[0], TOKENS),
                                        dst_blocks=dst_tables, num_tokens=TOKENS)
                    for name, arr in blank(dst_layout).items():
                        memory[name][:] = arr
                    await executable.execute(timeout=30)
                    chunk = compile_plan(src_layouts, dst_layout).chunk_tokens
                    assert not differences(memory, expected_after(dst_layout, TOKENS, chunk, [dst_tables]))
                    assert src_layouts[0].kernel_block_tokens == loads_layout(text).for_rank(
                        1, 0, num_blocks=1).kernel_block_tokens
                    stale = d.prepare(executable.plan, [peer], f"{request_id}-stale")
                    proc.process.kill()
                    await proc.process.wait()
                with pytest.raises(TransferError) as info:  # the old P is gone: typed, blocks named
                    await stale.execute(timeout=10)
                assert info.value.invalid_blocks == {g: tuple(ids) for g, ids in executable.plan.dst_blocks.items()}

            await pull(base, "gen-0")
            async with spawn_hybrid_rank(other_model, tp=1, rank=0, tokens=TOKENS, transport=kind,
                                         options=OPTIONS[kind]) as proc:
                with pytest.raises(IncompatibleLayoutsError, match="model"):
                    await d.connect(proc.metadata)
            await pull(same_model_new_layout, "gen-2")
