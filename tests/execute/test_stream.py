"""Streamed transfers on the Agent: byte-exact at every step, replay, chunks, cancellation.

Every test drives real agents over real transports; after each layer group is reported
landed, D's memory is compared with the per-step oracle image (landed layers hold P's
bytes, everything else is still D's background).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.errors import InvalidArgumentError, StreamedTransferError
from hybridxfer.execute import StreamedTransfer
from hybridxfer.layout import Layout, load_layout
from hybridxfer.plan import Readiness

from ._stream_support import Side, decode_rank, differing_regions, layer_mask, prefill_ranks, step_image, written_blocks

ROOT = Path(__file__).resolve().parents[2]
TOY = load_layout(ROOT / "docs" / "examples" / "toy_hybrid.toml")
TOKENS = 100


def _start(side: Side, request_id: str, mode: str, *, timeout: float = 20, tokens: int = TOKENS) -> StreamedTransfer:
    return side.d.plan_stream(side.peers, request_id=request_id, src_blocks=side.src_blocks,
                              dst_blocks=side.dst_blocks, num_tokens=tokens, mode="push" if mode == "push" else "pull",
                              timeout=timeout)


async def _stream_layer_by_layer(layout: Layout, src_tp: int, dst_tp: int, dst_rank: int, kind: str, mode: str,
                                 tokens: int = TOKENS) -> None:
    async with prefill_ranks(layout, src_tp, kind, tokens) as ps:
        async with decode_rank(layout, dst_tp, dst_rank, kind, tokens, [p.metadata() for p in ps],
                               ps[0].layout) as side:  # type: ignore[arg-type]
            st = _start(side, "req", mode, tokens=tokens)
            assert differing_regions(side.memory, side.background) == []
            landed: set[str] = set()
            for group in st.schedule.groups:
                for p in ps:
                    p.mark_ready("req", Readiness(frozenset(group.layers), tokens))
                for layer in group.layers:
                    await st.wait_for_layer(layer, timeout=20)
                landed.update(group.layers)
                assert st.landed_layers == landed
                assert differing_regions(side.memory, step_image(side, landed)) == [], f"after {group.name}"
            result = await st.wait(timeout=20)
            assert differing_regions(side.memory, side.final) == []
            assert result.bytes == st.plan.statistics.bytes > 0
            assert result.notified_ranks == st.plan.notify_ranks
            for rank in st.plan.notify_ranks:
                done = await ps[rank].wait_request_done("req", timeout=10)
                assert done.peer_name == side.d.name
            assert st.state == "done" and st.invalid_blocks() == {}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("kind", ["loopback", "tcp"])
@pytest.mark.parametrize(("src_tp", "dst_tp", "dst_rank"), [(1, 1, 0), (2, 1, 0), (1, 2, 1)])
async def test_stream_is_byte_exact_at_every_step(kind: str, src_tp: int, dst_tp: int, dst_rank: int,
                                                  mode: str) -> None:
    with anyio.fail_after(60):
        await _stream_layer_by_layer(TOY, src_tp, dst_tp, dst_rank, kind, mode)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(("name", "src_tp", "dst_tp", "dst_rank", "mode"),
                         [("qwen3-next-80b-a3b", 1, 1, 0, "pull"), ("nemotron-h-8b", 4, 2, 1, "pull"),
                          ("qwen3-next-80b-a3b", 1, 4, 3, "push")])
async def test_stream_real_hybrid_models_over_tcp(anyio_backend: str, name: str, src_tp: int, dst_tp: int,
                                                  dst_rank: int, mode: str) -> None:
    with anyio.fail_after(90):
        await _stream_layer_by_layer(load_layout(ROOT / "layouts" / f"{name}.toml"), src_tp, dst_tp, dst_rank,
                                     "tcp", mode, tokens=64)


@pytest.mark.anyio
async def test_readiness_before_the_subscription_is_replayed() -> None:
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 2, "tcp", TOKENS) as ps:
            for p in ps:  # the whole prompt is done before D even subscribes
                assert isinstance(p.layout, type(ps[0].layout))
                p.mark_ready("req", Readiness(frozenset(p.layout.layers), TOKENS))  # type: ignore[union-attr]
            async with decode_rank(TOY, 1, 0, "tcp", TOKENS, [p.metadata() for p in ps],
                                   ps[0].layout) as side:  # type: ignore[arg-type]
                st = _start(side, "req", "pull")
                await st.wait(timeout=20)
                assert differing_regions(side.memory, side.final) == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_partial_readiness_moves_no_state_and_lands_no_layer(mode: str) -> None:
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 1, "loopback", TOKENS) as ps:
            async with decode_rank(TOY, 1, 0, "loopback", TOKENS, [ps[0].metadata()],
                                   ps[0].layout) as side:  # type: ignore[arg-type]
                st = _start(side, "req", mode)
                layers = side.layout.layers
                ps[0].mark_ready("req", Readiness(frozenset(layers), TOKENS // 2))
                with anyio.move_on_after(0.5):  # give the stream every chance to move too much
                    await st.wait_for_layer(layers[0])
                assert st.landed_layers == frozenset() and st.state == "running"
                state = {p.layer for p in side.layout.placements if not p.piece.has_tokens}
                untouched = layer_mask(side.layout, state, side.dst_blocks)
                for region, mask in untouched.items():
                    assert np.array_equal(side.memory[region][mask], side.background[region][mask]), region
                ps[0].mark_ready("req", Readiness(frozenset(layers), TOKENS // 2))  # a repeat: nothing new
                ps[0].mark_ready("req", Readiness(frozenset(layers), TOKENS + 7))  # past the prompt: the prompt
                await st.wait(timeout=20)
                assert differing_regions(side.memory, side.final) == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_cancelled_stream_leaves_nothing_parked_and_a_new_stream_works(mode: str) -> None:
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 1, "tcp", TOKENS) as ps:
            async with decode_rank(TOY, 1, 0, "tcp", TOKENS, [ps[0].metadata()],
                                   ps[0].layout) as side:  # type: ignore[arg-type]
                st = _start(side, "old", mode)
                first = st.schedule.groups[0]
                ps[0].mark_ready("old", Readiness(frozenset(first.layers), TOKENS))
                await st.wait_for_layer(first.layers[0], timeout=20)
                st.cancel()
                with pytest.raises(StreamedTransferError) as info:
                    await st.wait(timeout=5)
                assert st.cancelled and st.state == "failed"
                assert set(info.value.landed_layers) == set(first.layers)
                assert set(info.value.invalid_layers) == set(side.layout.layers) - set(first.layers)
                while side.d._streams or ps[0]._stream_source._subscribers:  # both sides let go
                    await anyio.sleep(0.01)
                # the landed group is still P's bytes; nothing else moved
                assert differing_regions(side.memory, step_image(side, first.layers)) == []
                new = _start(side, "new", mode)
                ps[0].mark_ready("new", Readiness(frozenset(side.layout.layers), TOKENS))
                await new.wait(timeout=20)
                assert differing_regions(side.memory, side.final) == []
        # leaving both agents above was prompt: the fail_after bounds it


@pytest.mark.anyio
async def test_a_wait_that_times_out_fails_the_stream_with_exact_blocks() -> None:
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 1, "loopback", TOKENS) as ps:
            async with decode_rank(TOY, 1, 0, "loopback", TOKENS, [ps[0].metadata()],
                                   ps[0].layout) as side:  # type: ignore[arg-type]
                st = _start(side, "req", "pull")
                with pytest.raises(StreamedTransferError) as info:
                    await st.wait(timeout=0.2)
                err = info.value
                assert err.timed_out and err.request_id == "req" and err.landed_layers == ()
                assert err.invalid_blocks == written_blocks(side, side.layout.layers) != {}
                with pytest.raises(StreamedTransferError):
                    await st.wait_for_layer(side.layout.layers[0])
                with pytest.raises(InvalidArgumentError):
                    await st.wait_for_layer("no-such-layer")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("kind", ["nixl", "ucxx"])
async def test_stream_over_the_plugin_transports(anyio_backend: str, kind: str, mode: str) -> None:
    with anyio.fail_after(60):
        await _stream_layer_by_layer(TOY, 1, 2, 1, kind, mode)


@pytest.mark.anyio
async def test_a_read_broken_mid_stream_reports_exactly_what_did_not_land() -> None:
    """D's second read moves half its rows, then fails (a connection lost mid-transfer)."""
    from hybridxfer.testing.faults import FaultInjectingTransport

    from ._stream_support import transport

    d_transport = FaultInjectingTransport(transport("loopback", "d0"), break_read=2)
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 1, "loopback", TOKENS) as ps:
            async with decode_rank(TOY, 1, 0, "loopback", TOKENS, [ps[0].metadata()], ps[0].layout,  # type: ignore[arg-type]
                                   d_transport=d_transport) as side:
                st = _start(side, "req", "pull")
                first, second = st.schedule.groups[:2]
                ps[0].mark_ready("req", Readiness(frozenset(first.layers), TOKENS))
                await st.wait_for_layer(first.layers[0], timeout=20)
                ps[0].mark_ready("req", Readiness(frozenset(second.layers), TOKENS))
                with pytest.raises(StreamedTransferError) as info:
                    await st.wait_for_layer(second.layers[0], timeout=20)
                err = info.value
                rest = [layer for layer in side.layout.layers if layer not in first.layers]
                assert set(err.landed_layers) == set(first.layers) and set(err.invalid_layers) == set(rest)
                assert err.invalid_blocks == written_blocks(side, rest)
                # every block that really holds wrong bytes is among those reported invalid
                wrong: dict[str, set[int]] = {}
                for p in side.layout.placements:
                    size = p.piece.nbytes * (side.layout.blocks_per_kernel if p.piece.has_tokens else 1)
                    for block in side.dst_blocks.get(p.group, ()):
                        start = p.block_offset(block)
                        if not np.array_equal(side.memory[p.region][start:start + size],
                                              side.final[p.region][start:start + size]):
                            wrong.setdefault(p.group, set()).add(block)
                assert wrong and all(set(b) <= set(err.invalid_blocks.get(g, ())) for g, b in wrong.items())
                # the landed group is exactly P's bytes
                landed_mask = layer_mask(side.layout, first.layers, side.dst_blocks)
                for region, mask in landed_mask.items():
                    assert np.array_equal(side.memory[region][mask], side.final[region][mask]), region


@pytest.mark.anyio
async def test_the_per_step_oracle_catches_a_byte_out_of_place() -> None:
    """Negative control: one byte changed in a landed layer, or in one not landed, is seen."""
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 1, "loopback", TOKENS) as ps:
            async with decode_rank(TOY, 1, 0, "loopback", TOKENS, [ps[0].metadata()],
                                   ps[0].layout) as side:  # type: ignore[arg-type]
                st = _start(side, "req", "pull")
                first = st.schedule.groups[0]
                ps[0].mark_ready("req", Readiness(frozenset(first.layers), TOKENS))
                await st.wait_for_layer(first.layers[0], timeout=20)
                assert differing_regions(side.memory, step_image(side, first.layers)) == []
                for layers in (first.layers, [n for n in side.layout.layers if n not in first.layers]):
                    mask = layer_mask(side.layout, layers, side.dst_blocks)
                    region = next(r for r, m in mask.items() if m.any())
                    at = int(np.flatnonzero(mask[region])[0])
                    side.memory[region][at] ^= 0xFF
                    assert differing_regions(side.memory, step_image(side, first.layers)) != []
                    side.memory[region][at] ^= 0xFF
                st.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_layer_groups_of_two_land_together(mode: str) -> None:
    with anyio.fail_after(30):
        async with prefill_ranks(TOY, 2, "tcp", TOKENS) as ps:
            async with decode_rank(TOY, 1, 0, "tcp", TOKENS, [p.metadata() for p in ps],
                                   ps[0].layout) as side:  # type: ignore[arg-type]
                st = side.d.plan_stream(side.peers, request_id="req", src_blocks=side.src_blocks,
                                        dst_blocks=side.dst_blocks, num_tokens=TOKENS, group_layers=2,
                                        mode="push" if mode == "push" else "pull", timeout=20)
                assert all(len(g.layers) == 2 for g in st.schedule.groups)
                landed: list[str] = []
                for group in st.schedule.groups:
                    for i, layer in enumerate(group.layers):  # it moves only once both of its layers are ready
                        if i:
                            await anyio.sleep(0.05)  # every chance to land the group early
                            assert not set(group.layers) & st.landed_layers
                        for p in ps:
                            p.mark_ready("req", Readiness(frozenset([layer]), TOKENS))
                    await st.wait_for_layer(group.layers[0], timeout=20)
                    landed.extend(group.layers)
                    assert st.landed_layers == frozenset(landed)
                    assert differing_regions(side.memory, step_image(side, landed)) == []
                await st.wait(timeout=20)
                assert differing_regions(side.memory, side.final) == []
